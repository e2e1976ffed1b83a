//! `pvbench-balloon`: how fast a guest's balloon driver inflates and
//! deflates, and how much host memory inflating really releases, on QEMU's
//! virtio-balloon (TCG, same machine, same run for every driver).
//!
//! ```text
//! cargo run --release -p pvdrivers-tests --bin pvbench-balloon -- --rounds 5
//! ```
//!
//! One guest runs every driver, interleaved: each round runs the Linux
//! kernel's own virtio_balloon and then each `--variant` of our guest
//! runtime (`pvballoond`, pv-balloon's Linux daemon, with those extra
//! arguments; by default its defaults and `--huge-pages`), starting one
//! further along that list every round, so load from elsewhere on the
//! machine falls on all of them alike. pvballoond takes the device from the
//! kernel driver when it starts and hands it back on SIGTERM.
//!
//! Per driver and round: the guest touches and frees `--fill-mib` of its
//! memory (so the host has resident pages to get back) and starts the
//! driver; the bench sets the balloon target `--mib` below the guest's RAM
//! with QMP `balloon` and times until `query-balloon` reports it (polled
//! every 10 ms: QEMU rate-limits `BALLOON_CHANGE` events to one a second),
//! reads QEMU's `VmRSS` before and after, then sets the target back to the
//! full RAM and times the deflate the same way (after the guest has seen
//! the inflate, untimed). The guest sees an inflate in `MemTotal` for the
//! kernel driver and in `Mlocked` for pvballoond (its balloon is pinned
//! process memory). The ratio column is each pvballoond variant against
//! the kernel driver (median inflate and deflate rates; released memory is
//! shown as is). pvballoond logs where its time went (pinning, device,
//! releasing); those lines are printed after the table's rounds.

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
    /// pvballoond runs, each with these extra arguments (the kernel driver
    /// always runs: it is the peer).
    variants: Vec<String>,
    /// Extra guest kernel arguments (for analysis, e.g. `clearcpuid=erms`).
    kernel_args: Vec<String>,
    /// Before the rounds: pvballoond's pinning alone (`--pin-bench`).
    pin_bench: bool,
}

fn usage() -> &'static str {
    "pvbench-balloon [--rounds N] [--mib N] [--ram-mib N] [--fill-mib N] [--interval-ms N]\n\
     \x20               [--variant ARGS]... [--kernel-arg ARG]... [--pin-bench]\n\
     Times inflating and deflating N MiB (default 256) with the kernel virtio_balloon\n\
     driver and with pvballoond (idle poll --interval-ms, default 50) in one guest of\n\
     --ram-mib (default 768) that touched --fill-mib (default 400) first, and measures\n\
     QEMU's resident memory released. Default 3 rounds. Each --variant is one\n\
     pvballoond run with those extra arguments (default: \"\" and \"--huge-pages\");\n\
     the kernel driver always runs. --kernel-arg adds a guest kernel argument.\n\
     --pin-bench first times pvballoond's pinning alone (no device), each method."
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rounds: 3,
        mib: 256,
        ram_mib: 768,
        fill_mib: 400,
        interval_ms: 50,
        variants: Vec::new(),
        kernel_args: Vec::new(),
        pin_bench: false,
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
            "--pin-bench" => a.pin_bench = true,
            "--kernel-arg" => a.kernel_args.push(
                it.next()
                    .ok_or_else(|| format!("--kernel-arg takes an argument\n{}", usage()))?,
            ),
            "--variant" => a.variants.push(
                it.next()
                    .ok_or_else(|| format!("--variant takes an argument\n{}", usage()))?,
            ),
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    if a.variants.is_empty() {
        a.variants = vec![String::new(), "--huge-pages".to_owned()];
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

/// Runs every driver in one guest, interleaved: round `i` runs each
/// driver once, starting one further along the list each round, so a load
/// change on the machine falls on all of them alike. Returns the rounds of
/// each driver (index 0: the kernel driver, then `args.variants`).
fn run_all(args: &Args) -> Result<Vec<Vec<Round>>, String> {
    let drivers = 1 + args.variants.len();
    let mut cases = String::new();
    for (k, v) in args.variants.iter().enumerate() {
        if v.contains('\'') {
            return Err(format!("--variant {v:?}: no quotes, please"));
        }
        cases.push_str(&format!("\x20 {}) a='{v}';;\n", k + 1));
    }
    // The order of every round, shared by the guest script and the host.
    let order: Vec<(u32, usize)> = (1..=args.rounds)
        .flat_map(|i| (0..drivers).map(move |k| (i, (k + i as usize - 1) % drivers)))
        .collect();
    let calls: String = order
        .iter()
        .map(|(i, d)| format!("one {d} {i}\n"))
        .collect();
    // `bal` is what the guest sees of the balloon in kB: the drop of
    // MemTotal for the kernel driver (MemTotal is below the RAM size, kernel
    // reserved), Mlocked for pvballoond. "Inflated" means a quarter of the
    // ballooned amount is visible, "back" that it no longer is. pvballoond
    // takes the device from the kernel driver and gives it back on SIGTERM.
    let script = format!(
        "mkdir -p /fill\n\
         mount -t tmpfs -o size={fill}m tmpfs /fill\n\
         mi() {{ sed -n \"s/^$1: *\\([0-9]*\\).*/\\1/p\" /proc/meminfo; }}\n\
         full=$(mi MemTotal)\n\
         quarter=$(({mib} * 1024 / 4))\n\
         bound() {{ ls /sys/bus/virtio/drivers/virtio_balloon | grep -q virtio; }}\n\
         one() {{\n\
         \x20 d=$1; i=$2\n\
         \x20 until bound; do sleep 0.2; done\n\
         \x20 dd if=/dev/zero of=/fill/blob bs=1M count={fill} 2>/dev/null; rm /fill/blob\n\
         \x20 if [ $d -eq 0 ]; then\n\
         \x20   bal() {{ echo $((full - $(mi MemTotal))); }}\n\
         \x20 else\n\
         \x20   case $d in\n{cases}\x20   esac\n\
         \x20   bal() {{ mi Mlocked; }}\n\
         \x20   pvballoond --interval-ms {interval} $a --log-level info > /tmp/pvb.out &\n\
         \x20   pid=$!\n\
         \x20   until grep -q driving /tmp/pvb.out; do sleep 0.1; done\n\
         \x20 fi\n\
         \x20 echo \"pvbench: ready $d $i.\"\n\
         \x20 while [ $(bal) -lt $quarter ]; do sleep 1; done\n\
         \x20 echo \"pvbench: inflated $d $i.\"\n\
         \x20 while [ $(bal) -ge $quarter ]; do sleep 1; done\n\
         \x20 if [ $d -ne 0 ]; then kill -TERM $pid; wait $pid || echo \"pvbench: pvballoond failed\"; fi\n\
         }}\n\
         {pin_bench}\
         {calls}\
         echo pvbench: done; sleep 5\n",
        fill = args.fill_mib,
        mib = args.mib,
        interval = args.interval_ms,
        pin_bench = if args.pin_bench {
            format!(
                "dd if=/dev/zero of=/fill/blob bs=1M count={} 2>/dev/null; rm /fill/blob\n\
                 pvballoond --pin-bench {} --pin-bench-rounds {}\n",
                args.fill_mib, args.mib, args.rounds
            )
        } else {
            String::new()
        },
    );
    let mut builder = Guest::builder("pvbench-balloon");
    for k in &args.kernel_args {
        builder = builder.kernel_arg(k);
    }
    let mut guest = builder
        .memory_mib(u32::try_from(args.ram_mib).map_err(|e| e.to_string())?)
        .modules(["virtio_pci", "virtio_balloon", "uio_pci_generic"])
        .virtio_balloon()
        .qmp()
        .binary("pvballoond")
        .script(&script)
        .timeout(Duration::from_secs(
            600 + 300 * u64::from(args.rounds) * drivers as u64,
        ))
        .start()
        .map_err(|e| e.to_string())?;
    let pid = guest.qemu_pid().ok_or("no QEMU pid")?;
    let sock = guest.qmp_socket().ok_or("no QMP socket")?.to_owned();
    let mut qmp = Qmp::connect(&sock, Duration::from_secs(60)).map_err(|e| e.to_string())?;
    let full = args.ram_mib * MIB;
    let mut rounds: Vec<Vec<Round>> = (0..drivers).map(|_| Vec::new()).collect();
    let names: Vec<String> = std::iter::once("kernel".to_owned())
        .chain(args.variants.iter().map(|v| format!("pvballoond {v}")))
        .collect();
    for (i, d) in order {
        let mut wait = |what: &str| {
            guest
                .wait_for_console(
                    &format!("pvbench: {what} {d} {i}."),
                    Duration::from_secs(600),
                )
                .map_err(|e| e.to_string())
        };
        wait("ready")?;
        // Let the guest's writeback and QEMU settle before measuring.
        std::thread::sleep(Duration::from_secs(2));
        let before = rss_mib(pid)?;
        let inflate = move_to(&mut qmp, full - args.mib * MIB)?;
        let after = rss_mib(pid)?;
        // The guest must see the inflate before the deflate (the next
        // driver refills once the memory is back), outside the timed part.
        wait("inflated")?;
        let deflate = move_to(&mut qmp, full)?;
        eprintln!(
            "round {i} {:<40} inflate {} MiB in {:.3} s, deflate in {:.3} s, RSS {before:.0} -> {after:.0} MiB",
            names[d].trim_end(),
            args.mib,
            inflate.as_secs_f64(),
            deflate.as_secs_f64()
        );
        rounds[d].push(Round {
            inflate,
            deflate,
            released_mib: before - after,
        });
    }
    guest
        .wait_for_console("pvbench: done", Duration::from_secs(300))
        .map_err(|e| e.to_string())?;
    // Where pvballoond's time went, as it logs it when the balloon
    // settles (one line per inflate and per deflate).
    for l in guest.drain_console().lines() {
        if l.contains("pin-bench")
            || (l.contains("since the last report") && !l.contains(": 0 ms in all"))
        {
            eprintln!("  guest: {}", l.trim());
        }
    }
    if guest.console().contains("pvbench: pvballoond failed") {
        return Err("pvballoond did not exit cleanly (see the console log)".into());
    }
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
    let mut all = run_all(args)?.into_iter();
    let kernel = all.next().unwrap_or_default();
    let ours: Vec<(&String, Vec<Round>)> = args.variants.iter().zip(all).collect();
    let (ki, kd, kr) = medians(args, &kernel);
    println!(
        "pvbench-balloon: {} MiB, guest {} MiB (touched {} MiB first), {} round(s), medians; TCG",
        args.mib, args.ram_mib, args.fill_mib, args.rounds
    );
    println!(
        "{:<32} {:>14} {:>14} {:>14} {:>20}",
        format!("driver (pvballoond polls {} ms)", args.interval_ms),
        "inflate MiB/s",
        "deflate MiB/s",
        "released MiB",
        "vs kernel (in/de)"
    );
    println!(
        "{:<32} {:>14.1} {:>14.1} {:>14.0} {:>20}",
        "kernel virtio_balloon", ki, kd, kr, "1.00x / 1.00x"
    );
    for (v, rounds) in &ours {
        let (i, d, r) = medians(args, rounds);
        println!(
            "{:<32} {:>14.1} {:>14.1} {:>14.0} {:>20}",
            format!("pvballoond {v}").trim_end(),
            i,
            d,
            r,
            format!("{:.2}x / {:.2}x", i / ki, d / kd)
        );
    }
    Ok(())
}
