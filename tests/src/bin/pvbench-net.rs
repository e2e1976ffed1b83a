//! `pvbench-net`: request/response latency and stream throughput between
//! two guests running the Linux kernel's virtio-net driver, over
//! (a) QEMU's built-in `-netdev stream` (a unix socket between the two
//! QEMUs: the path users have without a switch) and (b) our switch
//! (`pvbackend --net-port`, vhost-user-net), in one run, same guests, same
//! tool (`pvrr`, UDP round trips of 1 and 64 bytes, then a TCP stream).
//! (a-intx) is (a) with the NIC on INTx (`vectors=0`), the interrupt mode
//! (b) is forced into by QEMU 7.2 (see `GuestBuilder::vhost_user_net`):
//! (a-intx)/(a) is the cost of that asymmetry alone.
//! (c) our guest runtime (`pvnetd`: the pv-net core driving the
//! virtio-net device from userspace, the guest stack on its TAP) in both
//! guests over our switch. Reports p50/p99/p99.9 and MB/s, and the ratios
//! (b)/(a) and (c)/(a).
//!
//! ```text
//! cargo run --release -p pvdrivers-tests --bin pvbench-net -- --count 5000
//! ```
//!
//! `--cases` picks the paths among a, a-intx, b, b-poll, b-msix and c
//! (default a,a-intx,b,c). (b-poll) is (b) with the switch ports polling
//! `--poll-us` (default 50) after each burst; (b-msix) is (b) on MSI-X,
//! which needs QEMU 8.0 or later (7.2 crashes, see
//! `pvtest::guest::vhost_user_net_nic_opts`). `--b-nic-opts` replaces
//! (b)'s extra `virtio-net-pci` properties (default: the harness's choice,
//! `vectors=0` before QEMU 8.0, none after) and `--b-qemu-arg` adds a QEMU
//! argument to both (b) guests, to try (b) in other interrupt modes;
//! `--b-port-opts` adds keys to (b)'s `--net-port` specs (e.g. `poll-us=50`).
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
    cases: Vec<String>,
    b_nic_opts: String,
    b_qemu_args: Vec<String>,
    b_port_opts: String,
    poll_us: u32,
    runtime_args: String,
    compare_runtime: Option<String>,
}

const CASES: [&str; 7] = ["a", "a-intx", "b", "b-poll", "b-msix", "c0", "c"];
/// Run unless `--cases` says otherwise (b-poll and b-msix are opt-in).
const DEFAULT_CASES: [&str; 4] = ["a", "a-intx", "b", "c"];

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        count: 5000,
        sizes: vec![1, 64],
        stream_mib: 16,
        cases: DEFAULT_CASES.iter().map(|c| (*c).to_owned()).collect(),
        b_nic_opts: pvtest::guest::vhost_user_net_nic_opts()
            .trim_start_matches(',')
            .to_owned(),
        b_qemu_args: Vec::new(),
        b_port_opts: String::new(),
        poll_us: 50,
        runtime_args: String::new(),
        compare_runtime: None,
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
            "--cases" => {
                a.cases = v()?.split(',').map(str::to_owned).collect();
                if let Some(bad) = a.cases.iter().find(|c| !CASES.contains(&c.as_str())) {
                    return Err(format!("--cases: unknown case {bad} (known: {CASES:?})"));
                }
            }
            "--b-nic-opts" => a.b_nic_opts = v()?,
            "--b-qemu-arg" => a.b_qemu_args.push(v()?),
            "--b-port-opts" => a.b_port_opts = v()?,
            "--poll-us" => a.poll_us = v()?.parse().map_err(|e| format!("--poll-us: {e}"))?,
            "--runtime-args" => a.runtime_args = v()?,
            "--compare-runtime" => a.compare_runtime = Some(v()?),
            "--skip-b" => a.cases.retain(|c| c != "b"),
            "-h" | "--help" => return Err(
                "pvbench-net [--count N] [--sizes 1,64] [--stream-mib N] [--cases a,a-intx,b,c]\n\
                     [--b-nic-opts vectors=0] [--b-qemu-arg ARG]... [--b-port-opts poll-us=N]\n\
                     [--poll-us N (b-poll's window, default 50)]\n\
                     [--runtime-args ARGS] [--compare-runtime ARGS] [--skip-b]\n\
                     RR latency and throughput between two guests: (a) kernel virtio-net over\n\
                     QEMU's -netdev stream, (b) kernel virtio-net over our switch, (c) pvnetd\n\
                     (with --runtime-args) over our switch; --compare-runtime adds (c0), pvnetd\n\
                     with ARGS instead, in the same run; --skip-b leaves (b) out. Defaults:\n\
                     cases a,a-intx,b,c, 5000 round trips, sizes 1 and 64 bytes, 16 MiB stream."
                    .into(),
            ),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.compare_runtime.is_some() && !a.cases.iter().any(|c| c == "c0") {
        a.cases.push("c0".into());
    }
    Ok(a)
}

/// Figures of one path: per size (p50, p99, p99.9, lost) and the stream's MB/s.
#[derive(Debug, Default)]
struct Figures {
    rr: BTreeMap<usize, (f64, f64, f64, u64)>,
    mbps: f64,
    /// The client's virtio interrupt lines (`/proc/interrupts`): shows
    /// which interrupt mode the run really used.
    irqs: String,
    /// The switch's polling windows (hits, misses), for switch cases.
    polls: Option<(f64, f64)>,
    /// The switch's offload counters over both ports, for switch cases:
    /// frames delivered with their offload as sent, TSO frames segmented
    /// in software, checksums completed in software. Shows whether a run
    /// really moved 64 KiB segments.
    offloads: Option<(f64, f64, f64)>,
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn parse(console: &str) -> Figures {
    let mut f = Figures::default();
    if let Some(l) = console.lines().find_map(|l| l.split_once("pvbench: irqs ")) {
        f.irqs = l.1.trim().to_owned();
    }
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
            "pvnetd --ifname pvnet0 --stats-every-s 2 {args} > /tmp/pvnetd.log 2>&1 &\n\
             i=0; while [ \"$(cat /sys/class/net/pvnet0/carrier 2>/dev/null)\" != 1 ]; do \
             i=$((i+1)); [ $i -le 300 ] || {{ cat /tmp/pvnetd.log; exit 1; }}; sleep 0.2; done\n\
             ip addr add {ip}/16 dev pvnet0\n"
        )
    } else {
        format!("ip link set eth0 up\nip addr add {ip}/16 dev eth0\n")
    }
}

fn server_script(ip: &str, runtime: Option<&str>) -> String {
    // With our runtime, its periodic counters go to the console (the
    // server is never stopped cleanly, so there is no exit log).
    let stats = if runtime.is_some() {
        "(while sleep 2; do grep 'stats:' /tmp/pvnetd.log | tail -n 1; done) &\n"
    } else {
        ""
    };
    format!(
        "{}{stats}echo pvbench: server up\nexec pvrr server\n",
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
    // Interrupt names and counts of the NIC (virtioN-config/-input.0/
    // -output.0 with MSI-X, one shared virtioN line with INTx).
    s.push_str(
        "echo \"pvbench: irqs $(grep virtio /proc/interrupts | \
         awk '{printf \"%s=%s \", $NF, $2}')\"\n",
    );
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
    // The server's last periodic pvnetd counters (runtime cases).
    if let Some(l) = s.drain_console().lines().rfind(|l| l.contains("stats:")) {
        eprintln!("pvbench-net: server {l}");
    }
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

/// QEMU's virtio-net on `-netdev stream` with extra device properties
/// (`nic_opts`, e.g. `vectors=0`).
fn stream_nic(
    b: GuestBuilder,
    sock: &Path,
    listen: bool,
    mac: &str,
    nic_opts: &str,
) -> GuestBuilder {
    b.qemu_args([
        "-netdev".to_owned(),
        format!(
            "stream,id=nst,server={},addr.type=unix,addr.path={}",
            if listen { "on" } else { "off" },
            sock.display()
        ),
        "-device".to_owned(),
        format!("virtio-net-pci,netdev=nst,mac={mac}{}", opts(nic_opts)),
    ])
}

/// A vhost-user NIC on our switch with extra device properties: the
/// harness's `vhost_user_net` with `vectors=0` made a parameter.
fn switch_nic(
    b: GuestBuilder,
    sock: &Path,
    mac: &str,
    nic_opts: &str,
    extra: &[String],
) -> GuestBuilder {
    b.shared_memory()
        .qemu_args([
            "-chardev".to_owned(),
            format!("socket,id=vunc,path={}", sock.display()),
            "-netdev".to_owned(),
            "vhost-user,id=vun,chardev=vunc".to_owned(),
            "-device".to_owned(),
            format!("virtio-net-pci,netdev=vun,mac={mac}{}", opts(nic_opts)),
        ])
        .qemu_args(extra)
}

fn opts(nic_opts: &str) -> String {
    if nic_opts.is_empty() {
        String::new()
    } else {
        format!(",{nic_opts}")
    }
}

/// Runs one path (a name from [`CASES`]).
fn run_case(a: &Args, case: &str, dir: &Path) -> Result<Figures, String> {
    match case {
        // (a) QEMU's stream netdev: the server guest listens, the client
        // connects. (a-intx): the same on INTx.
        "a" | "a-intx" => {
            let nic = if case == "a" { "" } else { "vectors=0" };
            let sock = dir.join(format!("stream-{case}.sock"));
            run_pair(
                stream_nic(
                    guest(
                        &format!("bench-net-{case}-server"),
                        &server_script(IP_S, None),
                    ),
                    &sock,
                    true,
                    MAC_S,
                    nic,
                ),
                stream_nic(
                    guest(
                        &format!("bench-net-{case}-client"),
                        &client_script(a, IP_C, IP_S, None),
                    ),
                    &sock,
                    false,
                    MAC_C,
                    nic,
                ),
                Some(&sock),
            )
        }
        // (b) kernel driver, (c) our runtime, both over our switch. At info
        // level: the harness waits for the backend's "ready:" line.
        "b" | "b-poll" | "b-msix" | "c0" | "c" => {
            let runtime = match case {
                "c" => Some(a.runtime_args.as_str()),
                "c0" => a.compare_runtime.as_deref(),
                _ => None,
            };
            let nic_opts = if case == "b-msix" { "" } else { &a.b_nic_opts };
            let mut b_port_opts = a.b_port_opts.clone();
            if case == "b-poll" {
                if !b_port_opts.is_empty() {
                    b_port_opts.push(',');
                }
                b_port_opts.push_str(&format!("poll-us={}", a.poll_us));
            }
            let (ps, pc) = (
                dir.join(format!("{case}s.sock")),
                dir.join(format!("{case}c.sock")),
            );
            let port_opts = if runtime.is_some() || b_port_opts.is_empty() {
                String::new()
            } else {
                format!(",{b_port_opts}")
            };
            let backend = PvBackend::start_with(
                &[],
                &[
                    format!("socket={},name=server{port_opts}", ps.display()),
                    format!("socket={},name=client{port_opts}", pc.display()),
                ],
                &["--log-level", "info", "--metrics", "127.0.0.1:0"],
                &dir.join(format!("backend-{case}.log")),
            )
            .map_err(|e| e.to_string())?;
            let r = if runtime.is_some() {
                run_pair(
                    runtime_guest(
                        &format!("bench-net-{case}-server"),
                        &server_script(IP_S, runtime),
                    )
                    .vhost_user_net(&ps, MAC_S),
                    runtime_guest(
                        &format!("bench-net-{case}-client"),
                        &client_script(a, IP_C, IP_S, runtime),
                    )
                    .vhost_user_net(&pc, MAC_C),
                    None,
                )
            } else {
                run_pair(
                    switch_nic(
                        guest(
                            &format!("bench-net-{case}-server"),
                            &server_script(IP_S, None),
                        ),
                        &ps,
                        MAC_S,
                        nic_opts,
                        &a.b_qemu_args,
                    ),
                    switch_nic(
                        guest(
                            &format!("bench-net-{case}-client"),
                            &client_script(a, IP_C, IP_S, None),
                        ),
                        &pc,
                        MAC_C,
                        nic_opts,
                        &a.b_qemu_args,
                    ),
                    None,
                )
            };
            let mut r = r.map_err(|e| format!("{e}\n--- backend log ---\n{}", backend.log()));
            if let (Ok(f), Ok(m)) = (&mut r, backend.fetch_metrics()) {
                // How often the switch's polling windows caught the next
                // frame (both ports; zero without poll-us).
                let sum = |k: &str| -> f64 {
                    ["server", "client"]
                        .iter()
                        .filter_map(|p| {
                            PvBackend::metric(
                                &m,
                                &format!(r#"pvbackend_net_poll_{k}_total{{port="{p}"}}"#),
                            )
                        })
                        .sum()
                };
                f.polls = Some((sum("hits"), sum("misses")));
                let total = |family: &str| -> f64 {
                    ["server", "client"]
                        .iter()
                        .filter_map(|p| {
                            PvBackend::metric(
                                &m,
                                &format!(r#"pvbackend_net_{family}{{port="{p}"}}"#),
                            )
                        })
                        .sum()
                };
                f.offloads = Some((
                    total("offload_passed_total"),
                    total("offload_segmented_total"),
                    total("csum_completed_total"),
                ));
            }
            drop(backend);
            r
        }
        other => Err(format!("unknown case {other}")),
    }
}

fn label(case: &str) -> &'static str {
    match case {
        "a" => "(a) QEMU -netdev stream",
        "a-intx" => "(a-intx) stream, vectors=0",
        "b" => "(b) our switch (vhost-user)",
        "b-poll" => "(b-poll) switch, poll-us",
        "b-msix" => "(b-msix) switch, MSI-X",
        "c0" => "(c0) pvnetd, compared args",
        _ => "(c) our runtime over our switch",
    }
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
    let mut results: Vec<(&str, Figures)> = Vec::new();
    let mut failed = false;
    for case in CASES.iter().filter(|c| a.cases.iter().any(|x| x == *c)) {
        eprintln!("pvbench-net: {}", label(case));
        match run_case(&a, case, dir.path()) {
            Ok(f) => results.push((case, f)),
            Err(e) => {
                eprintln!("{} failed: {e}", label(case));
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
    for (case, f) in &results {
        let name = label(case);
        for (size, (p50, p99, p999, lost)) in &f.rr {
            println!("{name:<34} {size:>6} {p50:>9.1} {p99:>9.1} {p999:>9.1} {lost:>5}");
        }
    }
    for (case, f) in &results {
        println!("interrupts ({case}): {}", f.irqs);
        if let Some((hits, misses)) = f.polls {
            println!("switch polling windows ({case}): {hits} hits, {misses} misses");
        }
        if let Some((passed, segmented, completed)) = f.offloads {
            println!(
                "switch offloads ({case}): {passed} frames passed as sent, {segmented} segmented, {completed} checksums completed"
            );
        }
    }
    let base = results.iter().find(|(c, _)| *c == "a").map(|(_, f)| f);
    for (case, f) in results.iter().filter(|(c, _)| *c != "a") {
        let Some(fa) = base else { break };
        for size in &a.sizes {
            if let (Some(x), Some(y)) = (fa.rr.get(size), f.rr.get(size)) {
                println!(
                    "ratio ({case})/(a), {size} bytes: p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x  (target p99 <= 0.70x)",
                    y.0 / x.0,
                    y.1 / x.1,
                    y.2 / x.2
                );
            }
        }
    }
    for (case, f) in &results {
        match base {
            Some(fa) if *case != "a" => println!(
                "stream MB/s ({case}): {:.2}  ratio ({case})/(a) {:.2}x",
                f.mbps,
                f.mbps / fa.mbps
            ),
            _ => println!("stream MB/s ({case}): {:.2}", f.mbps),
        }
    }
    ExitCode::SUCCESS
}
