//! Boot-to-scenario benchmark: boots the same small guest N times in a row
//! and reports each time from QEMU's start to the scenario script starting,
//! and the median. Figures go to docs/BENCHMARKS.md with this command:
//!
//!     cargo run --release -p pvdrivers-tests --bin pvbench-boot -- --runs 5

use std::process::ExitCode;
use std::time::Duration;

use pvtest::Guest;

fn main() -> ExitCode {
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => runs = n,
                _ => {
                    eprintln!("pvbench-boot: --runs takes a positive number");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!(
                    "usage: pvbench-boot [--runs N]   (default 5; PVTEST_ACCEL=kvm to use KVM)"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("pvbench-boot: unknown argument {other} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let disk = match tempfile::NamedTempFile::new()
            .and_then(|d| d.as_file().set_len(8 << 20).map(|()| d))
        {
            Ok(d) => d,
            Err(e) => {
                eprintln!("pvbench-boot: disk image: {e}");
                return ExitCode::FAILURE;
            }
        };
        let out = Guest::builder("bench-boot")
            .modules(["virtio_pci", "virtio_blk", "virtio_net", "virtio_balloon"])
            .virtio_blk_disk(disk.path())
            .virtio_net_isolated("52:54:00:be:00:01")
            .virtio_balloon()
            .script("test -b /dev/vda\n")
            .timeout(Duration::from_secs(300))
            .run();
        match out {
            Ok(o) if o.passed() => match o.boot_to_scenario {
                Some(t) => {
                    println!(
                        "run {}: boot to scenario {:.2} s (whole run {:.2} s)",
                        i + 1,
                        t.as_secs_f64(),
                        o.elapsed.as_secs_f64()
                    );
                    times.push(t);
                }
                None => {
                    eprintln!("pvbench-boot: run {} passed without a begin marker", i + 1);
                    return ExitCode::FAILURE;
                }
            },
            Ok(o) => {
                eprintln!("{}", o.failure_report());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("pvbench-boot: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "boot to scenario over {runs} runs: median {:.2} s, min {:.2} s, max {:.2} s",
        median.as_secs_f64(),
        times.first().map_or(0.0, Duration::as_secs_f64),
        times.last().map_or(0.0, Duration::as_secs_f64)
    );
    ExitCode::SUCCESS
}
