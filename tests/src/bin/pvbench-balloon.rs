//! `pvbench-balloon`: how fast a guest's balloon driver inflates and
//! deflates, and how much host memory inflating really releases, on QEMU's
//! virtio-balloon (TCG, same machine, same run for every driver).
//!
//! ```text
//! cargo run --release -p pvdrivers-tests --bin pvbench-balloon -- --rounds 3
//! ```
//!
//! Per round: the guest touches and frees `--fill-mib` of its memory (so the
//! host has resident pages to get back), the bench sets the balloon target
//! `--mib` below the guest's RAM with QMP `balloon` and times until
//! `query-balloon` reports it (polled every 10 ms: QEMU rate-limits
//! `BALLOON_CHANGE` events to one a second), reads QEMU's `VmRSS` before
//! and after, then sets the target back to the full RAM and times the
//! deflate the same way (after the guest has seen the inflate, untimed).
//! The guest refills before the next round when its MemTotal is back.
//!
//! Drivers: the Linux kernel's own virtio_balloon, and our guest runtime
//! (`pvballoond`, pv-balloon's Linux daemon, polling the device every
//! `--interval-ms`, its default 50 ms, when idle) in a second guest of the
//! same size on the same QEMU. The guest sees an inflate in `MemTotal` for
//! the kernel driver and in `Mlocked` for our runtime (its balloon is
//! pinned process memory). The ratio column is ours against the kernel
//! driver (inflate and deflate rates; released memory is shown as is).
//! `pvballoond` runs twice: with its default 4 KiB pages and with
//! `--huge-pages` (transparent huge pages).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pvtest::process::vm_rss_kib;
use pvtest::{Guest, Qmp};
use serde_json::json;

const MIB: u64 = 1 << 20;

struct Args {
    rounds: u32,
    mib: u64,
    ram_mib: u64,
    fill_mib: u64,
    interval_ms: u64,
}

/// The guest driver under test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Driver {
    /// The Linux kernel's virtio_balloon.
    Kernel,
    /// pv-balloon's `pvballoond`; `true`: with `--huge-pages`.
    Runtime(bool),
}

fn usage() -> &'static str {
    "pvbench-balloon [--rounds N] [--mib N] [--ram-mib N] [--fill-mib N] [--interval-ms N]\n\
     Times inflating and deflating N MiB (default 256) with the kernel virtio_balloon\n\
     driver and with pvballoond (idle poll --interval-ms, default 50) in guests of\n\
     --ram-mib (default 768) that touched --fill-mib (default 400) first, and measures\n\
     QEMU's resident memory released. Default 3 rounds."
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rounds: 3,
        mib: 256,
        ram_mib: 768,
        fill_mib: 400,
        interval_ms: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = |what: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{what} takes a number\n{}", usage()))
        };
        match k.as_str() {
            "--rounds" => a.rounds = u32::try_from(num("--rounds")?).map_err(|e| e.to_string())?,
            "--mib" => a.mib = num("--mib")?,
            "--ram-mib" => a.ram_mib = num("--ram-mib")?,
            "--fill-mib" => a.fill_mib = num("--fill-mib")?,
            "--interval-ms" => a.interval_ms = num("--interval-ms")?,
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    if a.mib + 128 > a.ram_mib || a.fill_mib + 128 > a.ram_mib || a.rounds == 0 {
        return Err(format!(
            "need --mib and --fill-mib at least 128 MiB below --ram-mib, and --rounds >= 1\n{}",
            usage()
        ));
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvbench-balloon: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One round's figures.
struct Round {
    inflate: Duration,
    deflate: Duration,
    released_mib: f64,
}

fn actual(qmp: &mut Qmp) -> Result<u64, String> {
    let b = qmp
        .execute("query-balloon", json!({}))
        .map_err(|e| e.to_string())?;
    b["actual"]
        .as_u64()
        .ok_or_else(|| format!("query-balloon: no actual in {b}"))
}

/// Sets the target and times until `query-balloon` reports it.
fn move_to(qmp: &mut Qmp, bytes: u64) -> Result<Duration, String> {
    let t0 = Instant::now();
    qmp.execute("balloon", json!({ "value": bytes }))
        .map_err(|e| e.to_string())?;
    loop {
        if actual(qmp)? == bytes {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(600) {
            return Err(format!("balloon never reached {} MiB", bytes / MIB));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn rss_mib(pid: u32) -> Result<f64, String> {
    vm_rss_kib(pid)
        .map(|k| k as f64 / 1024.0)
        .ok_or_else(|| "QEMU's VmRSS is unreadable".to_owned())
}

fn run_driver(args: &Args, driver: Driver) -> Result<Vec<Round>, String> {
    // `bal` is what the guest sees of the balloon in kB: the drop of
    // MemTotal for the kernel driver (MemTotal is below the RAM size, kernel
    // reserved), Mlocked for pvballoond. "Inflated" means a quarter of the
    // ballooned amount is visible, "back" that it no longer is.
    let (name, bal, start, stop) = match driver {
        Driver::Kernel => (
            "pvbench-balloon-kernel",
            "bal() { echo $((full - $(mi MemTotal))); }",
            String::new(),
            "",
        ),
        Driver::Runtime(huge) => (
            if huge {
                "pvbench-balloon-pvballoond-huge"
            } else {
                "pvbench-balloon-pvballoond"
            },
            "bal() { mi Mlocked; }",
            format!(
                "pvballoond --interval-ms {}{} --log-level warn &\npid=$!\n",
                args.interval_ms,
                if huge { " --huge-pages" } else { "" }
            ),
            "kill -TERM $pid; wait $pid\n",
        ),
    };
    let script = format!(
        "mkdir -p /fill\n\
         mount -t tmpfs -o size={fill}m tmpfs /fill\n\
         mi() {{ sed -n \"s/^$1: *\\([0-9]*\\).*/\\1/p\" /proc/meminfo; }}\n\
         full=$(mi MemTotal)\n\
         {bal}\n\
         quarter=$(({mib} * 1024 / 4))\n\
         {start}\
         i=0\n\
         while [ $i -lt {rounds} ]; do\n\
         \x20 dd if=/dev/zero of=/fill/blob bs=1M count={fill} 2>/dev/null; rm /fill/blob\n\
         \x20 i=$((i + 1)); echo \"pvbench: filled $i\"\n\
         \x20 while [ $(bal) -lt $quarter ]; do sleep 1; done\n\
         \x20 echo \"pvbench: inflated $i\"\n\
         \x20 while [ $(bal) -ge $quarter ]; do sleep 1; done\n\
         done\n\
         {stop}\
         echo pvbench: done; sleep 5\n",
        fill = args.fill_mib,
        mib = args.mib,
        rounds = args.rounds,
    );
    let mut builder = Guest::builder(name)
        .memory_mib(u32::try_from(args.ram_mib).map_err(|e| e.to_string())?)
        .modules(["virtio_pci", "virtio_balloon"])
        .virtio_balloon()
        .qmp()
        .script(&script)
        .timeout(Duration::from_secs(600 + 300 * u64::from(args.rounds)));
    if driver != Driver::Kernel {
        builder = builder.binary("pvballoond");
    }
    let mut guest = builder.start().map_err(|e| e.to_string())?;
    if driver != Driver::Kernel {
        guest
            .wait_for_console("pvballoond: driving", Duration::from_secs(600))
            .map_err(|e| e.to_string())?;
    }
    let pid = guest.qemu_pid().ok_or("no QEMU pid")?;
    let sock = guest.qmp_socket().ok_or("no QMP socket")?.to_owned();
    let mut qmp = Qmp::connect(&sock, Duration::from_secs(60)).map_err(|e| e.to_string())?;
    let full = args.ram_mib * MIB;
    let mut rounds = Vec::new();
    for i in 1..=args.rounds {
        guest
            .wait_for_console(&format!("pvbench: filled {i}"), Duration::from_secs(600))
            .map_err(|e| e.to_string())?;
        // Let the guest's writeback and QEMU settle before measuring.
        std::thread::sleep(Duration::from_secs(2));
        let before = rss_mib(pid)?;
        let inflate = move_to(&mut qmp, full - args.mib * MIB)?;
        let after = rss_mib(pid)?;
        // The guest must see the inflate before the deflate (it refills
        // once its memory is back), outside the timed part.
        guest
            .wait_for_console(&format!("pvbench: inflated {i}"), Duration::from_secs(600))
            .map_err(|e| e.to_string())?;
        let deflate = move_to(&mut qmp, full)?;
        eprintln!(
            "round {i}: inflate {} MiB in {:.3} s, deflate in {:.3} s, RSS {before:.0} -> {after:.0} MiB",
            args.mib,
            inflate.as_secs_f64(),
            deflate.as_secs_f64()
        );
        rounds.push(Round {
            inflate,
            deflate,
            released_mib: before - after,
        });
    }
    // The scenario's end (for pvballoond: SIGTERM, a clean exit).
    guest
        .wait_for_console("pvbench: done", Duration::from_secs(300))
        .map_err(|e| e.to_string())?;
    let _ = qmp.execute("quit", json!({}));
    let _ = guest.wait();
    Ok(rounds)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median inflate rate, deflate rate (MiB/s) and released MiB.
fn medians(args: &Args, rounds: &[Round]) -> (f64, f64, f64) {
    let mib = args.mib as f64;
    let inflate = median(
        rounds
            .iter()
            .map(|r| mib / r.inflate.as_secs_f64())
            .collect(),
    );
    let deflate = median(
        rounds
            .iter()
            .map(|r| mib / r.deflate.as_secs_f64())
            .collect(),
    );
    let released = median(rounds.iter().map(|r| r.released_mib).collect());
    (inflate, deflate, released)
}

fn bench(args: &Args) -> Result<(), String> {
    eprintln!("kernel virtio_balloon:");
    let kernel = run_driver(args, Driver::Kernel)?;
    eprintln!("pvballoond:");
    let ours = run_driver(args, Driver::Runtime(false))?;
    eprintln!("pvballoond --huge-pages:");
    let huge = run_driver(args, Driver::Runtime(true))?;
    let (ki, kd, kr) = medians(args, &kernel);
    let (oi, od, or) = medians(args, &ours);
    let (hi, hd, hr) = medians(args, &huge);
    println!(
        "pvbench-balloon: {} MiB, guest {} MiB (touched {} MiB first), {} round(s), medians; TCG",
        args.mib, args.ram_mib, args.fill_mib, args.rounds
    );
    println!(
        "{:<32} {:>14} {:>14} {:>14} {:>20}",
        "driver", "inflate MiB/s", "deflate MiB/s", "released MiB", "vs kernel (in/de)"
    );
    println!(
        "{:<32} {:>14.1} {:>14.1} {:>14.0} {:>20}",
        "kernel virtio_balloon", ki, kd, kr, "1.00x / 1.00x"
    );
    println!(
        "{:<32} {:>14.1} {:>14.1} {:>14.0} {:>20}",
        format!("pvballoond (poll {} ms)", args.interval_ms),
        oi,
        od,
        or,
        format!("{:.2}x / {:.2}x", oi / ki, od / kd)
    );
    println!(
        "{:<32} {:>14.1} {:>14.1} {:>14.0} {:>20}",
        "pvballoond --huge-pages",
        hi,
        hd,
        hr,
        format!("{:.2}x / {:.2}x", hi / ki, hd / kd)
    );
    Ok(())
}
