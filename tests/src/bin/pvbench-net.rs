//! `pvbench-net`: request/response latency and stream throughput between
//! two guests running the Linux kernel's virtio-net driver, over
//! (a) QEMU's built-in `-netdev stream` (a unix socket between the two
//! QEMUs: the path users have without a switch) and (b) our switch
//! (`pvbackend --net-port`, vhost-user-net), in one run, same guests, same
//! tool (`pvrr`, UDP round trips of 1 and 64 bytes, then a TCP stream).
//! and (c) our guest runtime (`pvnetd`: the pv-net core driving the
//! virtio-net device from userspace, the guest stack on its TAP) in both
//! guests over our switch. Reports p50/p99/p99.9 and MB/s, and the ratios
//! (b)/(a) and (c)/(a).
//!
//! ```text
//! cargo run --release -p pvdrivers-tests --bin pvbench-net -- --count 5000
//! ```
//!
//! Every guest has one vCPU under TCG on a shared host: the figures
//! compare network paths on one machine, they are not absolute speeds.
//! The (c) guests get 512 MiB instead of 256 (hugepages for pvnetd's DMA
//! pool); `pvnetd` runs with its default settings plus `--runtime-args`.
//! `--compare-runtime ARGS` adds a case (c0) in the same run, before (c):
//! pvnetd with `ARGS` instead (e.g. `--irq off`, the timed-sleep wake-ups
//! of the previous build), so a change to pvnetd is measured back to back
//! against the old behaviour. `--skip-b` leaves (b) out (it does not
//! involve pvnetd).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pvtest::peers::PvBackend;
use pvtest::{Guest, GuestBuilder};

const IP_S: &str = "169.254.20.1";
const IP_C: &str = "169.254.20.2";
const MAC_S: &str = "52:54:00:00:20:01";
const MAC_C: &str = "52:54:00:00:20:02";

struct Args {
    count: usize,
    sizes: Vec<usize>,
    stream_mib: u64,
    runtime_args: String,
    compare_runtime: Option<String>,
    skip_b: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        count: 5000,
        sizes: vec![1, 64],
        stream_mib: 16,
        runtime_args: String::new(),
        compare_runtime: None,
        skip_b: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--count" => a.count = v()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--sizes" => {
                a.sizes = v()?
                    .split(',')
                    .map(|s| s.parse().map_err(|e| format!("--sizes: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--stream-mib" => {
                a.stream_mib = v()?.parse().map_err(|e| format!("--stream-mib: {e}"))?
            }
            "--runtime-args" => a.runtime_args = v()?,
            "--compare-runtime" => a.compare_runtime = Some(v()?),
            "--skip-b" => a.skip_b = true,
            "-h" | "--help" => {
                return Err("pvbench-net [--count N] [--sizes 1,64] [--stream-mib N]\n\
                     \x20          [--runtime-args ARGS] [--compare-runtime ARGS] [--skip-b]\n\
                     RR latency and throughput between two guests: (a) kernel virtio-net over\n\
                     QEMU's -netdev stream, (b) kernel virtio-net over our switch, (c) pvnetd\n\
                     (with --runtime-args) over our switch; --compare-runtime adds (c0), pvnetd\n\
                     with ARGS instead, in the same run; --skip-b leaves (b) out. Defaults:\n\
                     5000 round trips, sizes 1 and 64 bytes, 16 MiB stream."
                    .into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// Figures of one path: per size (p50, p99, p99.9, lost) and the stream's MB/s.
#[derive(Debug, Default)]
struct Figures {
    rr: BTreeMap<usize, (f64, f64, f64, u64)>,
    mbps: f64,
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn parse(console: &str) -> Figures {
    let mut f = Figures::default();
    for l in console.lines().filter(|l| l.contains("pvrr: mode=")) {
        if l.contains("mode=rr") {
            if let (Some(size), Some(p50), Some(p99), Some(p999)) = (
                field(l, "size"),
                field(l, "p50_us"),
                field(l, "p99_us"),
                field(l, "p999_us"),
            ) {
                let lost = field(l, "lost").unwrap_or(0.0) as u64;
                f.rr.insert(size as usize, (p50, p99, p999, lost));
            }
        } else if let Some(m) = field(l, "mb_per_s") {
            f.mbps = m;
        }
    }
    f
}

/// Bring the guest's interface up with `ip`: the kernel driver's eth0, or
/// (runtime, with these pvnetd arguments) `pvnetd`'s TAP pvnet0 once it has
/// carrier.
fn iface_up(ip: &str, runtime: Option<&str>) -> String {
    if let Some(args) = runtime {
        format!(
            "pvnetd --ifname pvnet0 {args} > /tmp/pvnetd.log 2>&1 &\n\
             i=0; while [ \"$(cat /sys/class/net/pvnet0/carrier 2>/dev/null)\" != 1 ]; do \
             i=$((i+1)); [ $i -le 300 ] || {{ cat /tmp/pvnetd.log; exit 1; }}; sleep 0.2; done\n\
             ip addr add {ip}/16 dev pvnet0\n"
        )
    } else {
        format!("ip link set eth0 up\nip addr add {ip}/16 dev eth0\n")
    }
}

fn server_script(ip: &str, runtime: Option<&str>) -> String {
    format!(
        "{}echo pvbench: server up\nexec pvrr server\n",
        iface_up(ip, runtime)
    )
}

fn client_script(a: &Args, ip: &str, server: &str, runtime: Option<&str>) -> String {
    let mut s = format!(
        "{}n=0; until ping -c 1 -W 1 {server} >/dev/null; do n=$((n+1)); [ $n -lt 240 ] || exit 1; done\n\
         until pvrr rr {server} --count 10 --warmup 0 >/dev/null 2>&1; do sleep 1; done\n",
        iface_up(ip, runtime)
    );
    for size in &a.sizes {
        s.push_str(&format!(
            "pvrr rr {server} --size {size} --count {}\n",
            a.count
        ));
    }
    s.push_str(&format!(
        "pvrr stream {server} --bytes {}\n",
        a.stream_mib << 20
    ));
    if runtime.is_some() {
        // pvnetd's counters (interrupts, poller, core) on the console.
        s.push_str("kill -TERM $(pidof pvnetd); sleep 2; cat /tmp/pvnetd.log\n");
    }
    s
}

fn guest(name: &str, script: &str) -> GuestBuilder {
    Guest::builder(name)
        .memory_mib(256)
        .modules(["virtio_pci", "virtio_net"])
        .binary("pvrr")
        .script(script)
        .timeout(Duration::from_secs(1200))
}

/// A guest for slot (c): our runtime instead of the kernel driver.
fn runtime_guest(name: &str, script: &str) -> GuestBuilder {
    Guest::builder(name)
        .memory_mib(512)
        .modules(["virtio_pci", "virtio_net", "tun", "uio_pci_generic"])
        .binary("pvrr")
        .binary("pvnetd")
        .script(script)
        .timeout(Duration::from_secs(1200))
}

fn wait_for_file(p: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.exists() {
        if Instant::now() >= deadline {
            return Err(format!("{} never appeared", p.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn run_pair(
    server: GuestBuilder,
    client: GuestBuilder,
    wait_sock: Option<&Path>,
) -> Result<Figures, String> {
    let mut s = server.start().map_err(|e| e.to_string())?;
    if let Some(p) = wait_sock {
        wait_for_file(p)?;
    }
    s.wait_for_console("pvbench: server up", Duration::from_secs(600))
        .map_err(|e| e.to_string())?;
    let c = client.start().map_err(|e| e.to_string())?;
    let out = c.wait();
    drop(s);
    if !out.passed() {
        return Err(out.failure_report());
    }
    // The client's pvnetd counters (runtime cases), for the record.
    for l in out
        .console
        .lines()
        .filter(|l| l.contains("interrupts, poller"))
    {
        eprintln!("pvbench-net: client {l}");
    }
    Ok(parse(&out.console))
}

/// One case over our switch (a fresh switch per case): the kernel driver
/// in both guests, or pvnetd with `runtime` arguments.
fn switch_case(dir: &Path, tag: &str, a: &Args, runtime: Option<&str>) -> Result<Figures, String> {
    let (ps, pc) = (
        dir.join(format!("{tag}-s.sock")),
        dir.join(format!("{tag}-c.sock")),
    );
    // At info level: the harness waits for its "ready:" line.
    let backend = PvBackend::start_with(
        &[],
        &[
            format!("socket={},name=server", ps.display()),
            format!("socket={},name=client", pc.display()),
        ],
        &["--log-level", "info"],
        &dir.join(format!("backend-{tag}.log")),
    )
    .map_err(|e| e.to_string())?;
    let (sname, cname) = (
        format!("bench-net-{tag}-server"),
        format!("bench-net-{tag}-client"),
    );
    let (sscript, cscript) = (
        server_script(IP_S, runtime),
        client_script(a, IP_C, IP_S, runtime),
    );
    let (sb, cb) = if runtime.is_some() {
        (
            runtime_guest(&sname, &sscript),
            runtime_guest(&cname, &cscript),
        )
    } else {
        (guest(&sname, &sscript), guest(&cname, &cscript))
    };
    let r = run_pair(
        sb.vhost_user_net(&ps, MAC_S),
        cb.vhost_user_net(&pc, MAC_C),
        None,
    );
    drop(backend);
    r
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tempdir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut results: Vec<(String, Result<Figures, String>)> = Vec::new();
    // (a) QEMU's stream netdev: the server guest listens, the client connects.
    eprintln!("pvbench-net: (a) kernel virtio-net over QEMU -netdev stream");
    let sock = dir.path().join("stream.sock");
    let a_res = run_pair(
        guest("bench-net-a-server", &server_script(IP_S, None))
            .virtio_net_stream(&sock, true, MAC_S),
        guest("bench-net-a-client", &client_script(&a, IP_C, IP_S, None))
            .virtio_net_stream(&sock, false, MAC_C),
        Some(&sock),
    );
    results.push(("(a) QEMU -netdev stream".into(), a_res));
    if !a.skip_b {
        eprintln!("pvbench-net: (b) kernel virtio-net over our switch");
        let r = switch_case(dir.path(), "b", &a, None);
        results.push(("(b) our switch (vhost-user)".into(), r));
    }
    if let Some(args) = &a.compare_runtime {
        eprintln!("pvbench-net: (c0) pvnetd {args} over our switch");
        let r = switch_case(dir.path(), "c0", &a, Some(args));
        results.push(("(c0) pvnetd, compared args".into(), r));
    }
    // (c) our runtime in both guests, over our switch.
    eprintln!(
        "pvbench-net: (c) our runtime (pvnetd {}) over our switch",
        a.runtime_args
    );
    let r = switch_case(dir.path(), "c", &a, Some(&a.runtime_args));
    results.push(("(c) our runtime over our switch".into(), r));
    let mut figs = Vec::new();
    let mut failed = false;
    for (name, r) in results {
        match r {
            Ok(f) => figs.push((name, f)),
            Err(e) => {
                eprintln!("{name} failed: {e}");
                failed = true;
            }
        }
    }
    if failed {
        return ExitCode::FAILURE;
    }
    println!(
        "pvbench-net: UDP request/response ({} round trips), TCP stream ({} MiB)",
        a.count, a.stream_mib
    );
    if let Some(c0) = &a.compare_runtime {
        println!(
            "(c0) pvnetd args: {c0:?}; (c) pvnetd args: {:?}",
            a.runtime_args
        );
    }
    println!(
        "{:<34} {:>6} {:>9} {:>9} {:>9} {:>5}",
        "path", "bytes", "p50 us", "p99 us", "p99.9 us", "lost"
    );
    for (name, f) in &figs {
        for (size, (p50, p99, p999, lost)) in &f.rr {
            println!("{name:<34} {size:>6} {p50:>9.1} {p99:>9.1} {p999:>9.1} {lost:>5}");
        }
    }
    let Some(((_, fa), rest)) = figs.split_first() else {
        return ExitCode::FAILURE;
    };
    for (name, f) in rest {
        let slot = name.split_whitespace().next().unwrap_or("?");
        for size in &a.sizes {
            if let (Some(x), Some(y)) = (fa.rr.get(size), f.rr.get(size)) {
                println!(
                    "ratio {slot}/(a), {size} bytes: p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x  (target p99 <= 0.70x)",
                    y.0 / x.0,
                    y.1 / x.1,
                    y.2 / x.2
                );
            }
        }
    }
    let mut line = format!("stream MB/s: (a) {:.2}", fa.mbps);
    for (name, f) in rest {
        let slot = name.split_whitespace().next().unwrap_or("?");
        line.push_str(&format!(
            "  {slot} {:.2} ({:.2}x)",
            f.mbps,
            f.mbps / fa.mbps
        ));
    }
    println!("{line}");
    ExitCode::SUCCESS
}
