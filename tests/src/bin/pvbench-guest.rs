//! Guest-level block benchmark: the Linux guest's own virtio-blk driver
//! doing 4 KiB O_DIRECT random reads (`pvio randread`) on the same image,
//! served three ways in one run: our pvbackend (vhost-user-blk),
//! qemu-storage-daemon (vhost-user-blk), and QEMU's built-in virtio-blk.
//!
//!     cargo run --release -p pvdrivers-tests --bin pvbench-guest -- --seconds 10
//!
//! Under TCG the guest's emulated CPU bounds every figure; the ratios
//! between the three are what this measures.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use pvtest::peers::PvBackend;
use pvtest::{Guest, GuestBuilder, QemuStorageDaemon};

const JOBS: [u32; 2] = [1, 4];

#[derive(Debug, Clone, Copy)]
struct Figures {
    iops: u64,
    p50: u64,
    p99: u64,
}

fn parse(console: &str, jobs: u32) -> Option<Figures> {
    let line = console
        .lines()
        .find(|l| l.contains(&format!("pvio: randread jobs={jobs} ")))?;
    let field = |k: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    Some(Figures {
        iops: field("iops=")?,
        p50: field("p50_us=")?,
        p99: field("p99_us=")?,
    })
}

fn run_guest(name: &str, builder: GuestBuilder, seconds: u64) -> Result<Vec<Figures>, String> {
    let script: String = JOBS
        .iter()
        .map(|j| format!("pvio randread /dev/vda --seconds {seconds} --jobs {j}\n"))
        .collect();
    let out = builder
        .modules(["virtio_pci", "virtio_blk"])
        .binary("pvio")
        .script(&script)
        .timeout(Duration::from_secs(120 + 4 * seconds))
        .run()
        .map_err(|e| format!("{name}: {e}"))?;
    if !out.passed() {
        return Err(out.failure_report());
    }
    JOBS.iter()
        .map(|j| parse(&out.console, *j).ok_or_else(|| format!("{name}: no result for jobs={j}")))
        .collect()
}

fn main() -> ExitCode {
    let mut seconds = 10u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--seconds", Some(s)) if s > 0 => seconds = s,
            _ => {
                eprintln!("usage: pvbench-guest [--seconds S]   (default 10)");
                return ExitCode::from(2);
            }
        }
    }
    match bench(seconds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvbench-guest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(seconds: u64) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("pvbench-guest-")
        .tempdir_in(Path::new("/dev/shm"))
        .map_err(|e| e.to_string())?;
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(256 << 20))
        .map_err(|e| e.to_string())?;

    let sock = dir.path().join("ours.sock");
    let backend = PvBackend::start(
        &[format!(
            "path={},socket={},queues=1",
            image.display(),
            sock.display()
        )],
        &[],
        &dir.path().join("pvbackend.log"),
    )
    .map_err(|e| e.to_string())?;
    let ours = run_guest(
        "pvbackend",
        Guest::builder("bench-guest-ours").vhost_user_blk(&sock, 1),
        seconds,
    )?;
    drop(backend);

    let qsock = dir.path().join("qsd.sock");
    let qsd = QemuStorageDaemon::start(&image, &qsock, 1).map_err(|e| e.to_string())?;
    let theirs = run_guest(
        "qsd",
        Guest::builder("bench-guest-qsd").vhost_user_blk(&qsock, 1),
        seconds,
    )?;
    drop(qsd);

    let builtin = run_guest(
        "builtin",
        Guest::builder("bench-guest-builtin").virtio_blk_disk(&image),
        seconds,
    )?;

    println!("guest: 1 vCPU TCG, kernel virtio-blk, 4 KiB O_DIRECT random reads, {seconds} s per case, 256 MiB image on /dev/shm");
    println!("| jobs (QD) | pvbackend IOPS | qsd IOPS | built-in IOPS | ours/qsd | ours/built-in | p50/p99 µs ours | qsd | built-in |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, j) in JOBS.iter().enumerate() {
        let (o, q, b) = (ours[i], theirs[i], builtin[i]);
        println!(
            "| {j} | {} | {} | {} | {:.2} | {:.2} | {}/{} | {}/{} | {}/{} |",
            o.iops,
            q.iops,
            b.iops,
            o.iops as f64 / q.iops.max(1) as f64,
            o.iops as f64 / b.iops.max(1) as f64,
            o.p50,
            o.p99,
            q.p50,
            q.p99,
            b.p50,
            b.p99
        );
    }
    Ok(())
}
