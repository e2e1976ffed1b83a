//! Guest runtime benchmark: in ONE guest boot, two identical QEMU
//! virtio-blk devices on tmpfs images; the guest kernel's virtio_blk driver
//! on one, our runtime on the other, measured three ways:
//!
//! - `kernel`: the kernel's virtio_blk, `pvio randread`/`seqread` (O_DIRECT)
//!   on `/dev/vda`;
//! - `nbd`: `pvblkd` driving the other device, the same `pvio` runs on
//!   `/dev/nbd0`;
//! - `direct`: `pvio direct`, the pv-blk core driving the device itself (no
//!   kernel block layer, no NBD hop), busy-polling;
//! - `ublk` (with `--kernel backports`: bookworm-backports' 6.12 kernel,
//!   which has ublk_drv): `pvblkd --export ublk`, the same `pvio` runs on
//!   `/dev/ublkb0`. The other three cases run in the same boot.
//!
//! 4 KiB random reads at QD1 and QD32 (`pvio randread --jobs N`: N threads
//! with one read each; `pvio direct --qd N`), and 1 MiB sequential reads at
//! QD1.
//!
//!     cargo run --release -p pvdrivers-tests --bin pvbench-guestrt -- --seconds 10
//!     cargo run --release -p pvdrivers-tests --bin pvbench-guestrt -- --seconds 10 --kernel backports
//!
//! Under TCG the emulated guest CPU bounds every figure; the ratios are
//! what this measures.
//!
//! Experiment knobs: `PVBENCH_CPUS` (guest vCPUs, default 2),
//! `PVBENCH_PIN=1` (pin pvio, pvblkd and the unbound workqueues to vCPU 0
//! in all three cases),
//! `PVBENCH_PVBLKD_ARGS` adds options to pvblkd (e.g.
//! `--irq off --spin-us 1000`); `PVBENCH_ONLY` is a shell line run before the
//! direct cases (e.g. `exit 0` to skip them), and prints the raw console
//! instead of the table.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use pvtest::{Guest, KernelChoice};

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    iops: u64,
    p50: u64,
    p99: u64,
    mib_s: f64,
}

/// The figures on the console line tagged `tag` (e.g. `kernel-qd1 `).
fn parse(console: &str, tag: &str) -> Option<Figures> {
    let line = console.lines().find(|l| l.starts_with(tag))?;
    let field =
        |k: &str| -> Option<&str> { line.split_whitespace().find_map(|w| w.strip_prefix(k)) };
    Some(Figures {
        iops: field("iops=")?.parse().ok()?,
        p50: field("p50_us=").and_then(|v| v.parse().ok()).unwrap_or(0),
        p99: field("p99_us=").and_then(|v| v.parse().ok()).unwrap_or(0),
        mib_s: field("mib_s=").and_then(|v| v.parse().ok()).unwrap_or(0.0),
    })
}

fn main() -> ExitCode {
    let mut seconds = 10u64;
    let mut kernel = KernelChoice::Current;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match (a.as_str(), v.as_deref()) {
            ("--seconds", Some(s)) if s.parse::<u64>().is_ok_and(|s| s > 0) => {
                seconds = s.parse().unwrap_or(10);
            }
            ("--kernel", Some("current")) => kernel = KernelChoice::Current,
            ("--kernel", Some("backports")) => kernel = KernelChoice::Backports,
            _ => {
                eprintln!(
                    "usage: pvbench-guestrt [--seconds S] [--kernel current|backports]   (default 10 s, current; backports adds the ublk case)"
                );
                return ExitCode::from(2);
            }
        }
    }
    match bench(seconds, kernel) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvbench-guestrt: {e}");
            ExitCode::FAILURE
        }
    }
}

const CASES: [(&str, &str); 3] = [
    ("qd1", "4 KiB random read, QD1"),
    ("qd32", "4 KiB random read, QD32"),
    ("seq", "1 MiB sequential read, QD1"),
];

fn bench(seconds: u64, kernel: KernelChoice) -> Result<(), String> {
    let ublk = kernel == KernelChoice::Backports;
    let dir = tempfile::Builder::new()
        .prefix("pvbench-guestrt-")
        .tempdir_in(Path::new("/dev/shm"))
        .map_err(|e| e.to_string())?;
    let (a, b) = (dir.path().join("kernel.img"), dir.path().join("ours.img"));
    for img in [&a, &b] {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(256 << 20))
            .map_err(|e| e.to_string())?;
    }
    let s = seconds;
    // Extra pvblkd options (e.g. polling knobs) for experiments.
    let extra = std::env::var("PVBENCH_PVBLKD_ARGS").unwrap_or_default();
    let only = std::env::var("PVBENCH_ONLY").unwrap_or_default();
    // Pin every party (pvio, pvblkd, the unbound workqueues nbd receives
    // on) to vCPU 0, for all three cases alike.
    let pin = std::env::var("PVBENCH_PIN").is_ok_and(|v| v == "1");
    let (ts, pin_wq) = if pin {
        (
            "taskset 1 ",
            "echo 1 > /sys/devices/virtual/workqueue/cpumask",
        )
    } else {
        ("", "")
    };
    // The ublk case: pvblkd exports the second device as /dev/ublkb0,
    // then hands it back for the NBD and direct cases.
    let ublk_case = if ublk {
        format!(
            r#"
{ts}pvblkd --pci $bdf --export ublk --ublk-id 0 {extra} > /tmp/pvblkd-ublk.log 2>&1 &
pid=$!
i=0
while ! grep -q "serving /dev/ublkb0" /tmp/pvblkd-ublk.log; do
  i=$((i+1)); [ $i -le 300 ] || {{ cat /tmp/pvblkd-ublk.log; exit 1; }}
  sleep 0.2
done
{ts}pvio randread /dev/ublkb0 --seconds {s} --jobs 1 | tag ublk-qd1
{ts}pvio randread /dev/ublkb0 --seconds {s} --jobs 32 | tag ublk-qd32
{ts}pvio seqread /dev/ublkb0 --seconds {s} | tag ublk-seq
kill -TERM $pid || true
rc=0; wait $pid || rc=$?
cat /tmp/pvblkd-ublk.log
[ $rc = 0 ]
while [ ! -e /sys/bus/pci/devices/$bdf/driver ]; do sleep 0.2; done
"#
        )
    } else {
        String::new()
    };
    let script = format!(
        r#"
tag() {{ sed "s/^pvio: /$1 /"; }}
echo "kernel-release $(uname -r)"
{pin_wq}
bdf=$(basename "$(readlink -f /sys/block/vdb/device/..)")
{ts}pvio randread /dev/vda --seconds {s} --jobs 1 | tag kernel-qd1
{ts}pvio randread /dev/vda --seconds {s} --jobs 32 | tag kernel-qd32
{ts}pvio seqread /dev/vda --seconds {s} | tag kernel-seq
{ublk_case}
{ts}pvblkd --pci $bdf --export nbd --nbd 0 {extra} > /tmp/pvblkd.log 2>&1 &
pid=$!
i=0
while [ "$(cat /sys/block/nbd0/size)" = 0 ]; do
  i=$((i+1)); [ $i -le 300 ] || {{ cat /tmp/pvblkd.log; exit 1; }}
  sleep 0.2
done
{ts}pvio randread /dev/nbd0 --seconds {s} --jobs 1 | tag nbd-qd1
{ts}pvio randread /dev/nbd0 --seconds {s} --jobs 32 | tag nbd-qd32
{ts}pvio seqread /dev/nbd0 --seconds {s} | tag nbd-seq
kill -TERM $pid || true
rc=0; wait $pid || rc=$?
cat /tmp/pvblkd.log
[ $rc = 0 ]
while [ ! -e /sys/bus/pci/devices/$bdf/driver ]; do sleep 0.2; done
{only}
{ts}pvio direct --pci $bdf --mode rand --qd 1 --seconds {s} | tag direct-qd1
{ts}pvio direct --pci $bdf --mode rand --qd 32 --seconds {s} | tag direct-qd32
{ts}pvio direct --pci $bdf --mode seq --qd 1 --block-size 1048576 --seconds {s} | tag direct-seq
"#
    );
    let cpus: u32 = std::env::var("PVBENCH_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut modules = vec!["virtio_pci", "virtio_blk", "nbd", "uio_pci_generic"];
    if ublk {
        modules.push("ublk_drv");
    }
    let out = Guest::builder("bench-guestrt")
        .kernel(kernel)
        .cpus(cpus)
        .memory_mib(1024)
        .modules(modules)
        .binary("pvio")
        .binary("pvblkd")
        .virtio_blk_disk(&a)
        .virtio_blk_disk(&b)
        .script(&script)
        .timeout(Duration::from_secs(300 + 16 * seconds))
        .run()
        .map_err(|e| e.to_string())?;
    if !out.passed() {
        return Err(out.failure_report());
    }
    if !only.is_empty() {
        println!("{}", out.console);
        return Ok(());
    }
    let get = |who: &str, case: &str| {
        parse(&out.console, &format!("{who}-{case} "))
            .ok_or_else(|| format!("no result for {who}-{case}"))
    };
    let mut ours: Vec<(&str, &str)> = Vec::new();
    if ublk {
        ours.push(("ublk", "ours via /dev/ublkb0"));
    }
    ours.extend([("nbd", "ours via /dev/nbd0"), ("direct", "ours direct")]);
    let release = out
        .console
        .lines()
        .find_map(|l| l.strip_prefix("kernel-release "))
        .unwrap_or("?")
        .trim()
        .to_owned();
    println!(
        "guest: kernel {release}, {cpus} vCPU TCG, two QEMU virtio-blk devices (256 MiB images on /dev/shm), {seconds} s per case, one boot"
    );
    let mut head = String::from("| case | kernel virtio_blk |");
    let mut rule = String::from("|---|---|");
    for (who, label) in &ours {
        head.push_str(&format!(" {label} | {who}/kernel |"));
        rule.push_str("---|---|");
    }
    head.push_str(" p50/p99 µs kernel |");
    rule.push_str("---|");
    for (who, _) in &ours {
        head.push_str(&format!(" {who} |"));
        rule.push_str("---|");
    }
    println!("{head}\n{rule}");
    for (case, what) in CASES {
        let k = get("kernel", case)?;
        let mut row = if case == "seq" {
            format!("| {what} | {:.1} MiB/s |", k.mib_s)
        } else {
            format!("| {what} | {} IOPS |", k.iops)
        };
        let mut lat = if case == "seq" {
            " - |".to_owned()
        } else {
            format!(" {}/{} |", k.p50, k.p99)
        };
        for (who, _) in &ours {
            let f = get(who, case)?;
            if case == "seq" {
                row.push_str(&format!(
                    " {:.1} MiB/s | {:.2} |",
                    f.mib_s,
                    f.mib_s / k.mib_s.max(0.001)
                ));
                lat.push_str(" - |");
            } else {
                row.push_str(&format!(
                    " {} IOPS | {:.2} |",
                    f.iops,
                    f.iops as f64 / k.iops.max(1) as f64
                ));
                lat.push_str(&format!(" {}/{} |", f.p50, f.p99));
            }
        }
        println!("{row}{lat}");
    }
    // pvblkd's own account (device service time, poller, request size).
    for l in out.console.lines().filter(|l| {
        l.contains("service time")
            || l.contains("idle gap")
            || l.contains("device time")
            || l.contains("largest NBD request")
            || l.contains("served ")
            || l.contains("export: ")
    }) {
        println!("{}", l.trim());
    }
    Ok(())
}
