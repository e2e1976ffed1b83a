//! `pvbench-switch`: port-to-port throughput of our switch (`pvbackend`
//! with two `--net-port`s) against DPDK's `dpdk-testpmd` (two vhost-user
//! ports, io forwarding, one forwarding core), both driven by the same
//! native vhost-user-net driver (`pvtest::vhost_user::NativeNetDriver`).
//!
//! For each peer and frame size the driver pushes frames into port 0's TX
//! queue as fast as it can for `--secs` seconds, in bursts of 32 with one
//! kick per burst, while draining port 1's RX queue (buffers re-posted
//! after every burst). It counts frames received at port 1, checks the
//! sequence numbers rise and verifies every 1024th payload byte for byte,
//! and reads the peer process's CPU time (`/proc/<pid>/stat`
//! utime+stime) over the run. Reported: pps, backend cores used
//! (cpu seconds / wall seconds), pps per backend core, and drops (sent
//! minus received after a drain).
//!
//! testpmd busy-polls (a full core by design) while the switch is
//! event-driven: pps per core is the comparison; raw pps is printed too.
//!
//! ```text
//! cargo run --release -p pvdrivers-tests --bin pvbench-switch -- --secs 5
//! ```
//!
//! testpmd runs without hugepages: `dpdk-testpmd --lcores 0@(0,1),1@(0,1) --no-huge -m 1024
//! --no-pci --no-shconf --file-prefix P --vdev net_vhost0,iface=A --vdev
//! net_vhost1,iface=B -- --forward-mode=io --auto-start --nb-cores=1
//! --total-num-mbufs=16384` (Debian's `dpdk-dev` package).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pvtest::peers::PvBackend;
use pvtest::vhost_user::net::NET_HDR_LEN;
use pvtest::vhost_user::{GuestRam, NativeNetDriver, NetDriverError, NetOptions};

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0x30, 1];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0x30, 2];
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const BURST: usize = 32;
const SAMPLE_EVERY: u64 = 1024;
const TESTPMD: &str = "dpdk-testpmd";

struct Args {
    secs: f64,
    sizes: Vec<usize>,
    queue_size: u16,
    peers: Vec<PeerKind>,
    event_idx: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKind {
    Switch,
    Testpmd,
}

impl PeerKind {
    fn name(self) -> &'static str {
        match self {
            PeerKind::Switch => "pvbackend switch",
            PeerKind::Testpmd => "dpdk-testpmd io",
        }
    }
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        secs: 5.0,
        sizes: vec![64, 1500],
        queue_size: 256,
        peers: vec![PeerKind::Switch, PeerKind::Testpmd],
        event_idx: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| anyhow!("{k} needs a value"));
        match k.as_str() {
            "--secs" => a.secs = v()?.parse().context("--secs")?,
            "--sizes" => {
                a.sizes = v()?
                    .split(',')
                    .map(|s| s.parse().context("--sizes"))
                    .collect::<Result<_>>()?
            }
            "--no-event-idx" => a.event_idx = false,
            "--queue-size" => a.queue_size = v()?.parse().context("--queue-size")?,
            "--only" => {
                a.peers = match v()?.as_str() {
                    "switch" => vec![PeerKind::Switch],
                    "testpmd" => vec![PeerKind::Testpmd],
                    o => bail!("--only switch|testpmd, not {o}"),
                }
            }
            "-h" | "--help" => {
                println!(
                    "pvbench-switch [--secs 5] [--sizes 64,1500] [--queue-size 256] \
                     [--only switch|testpmd] [--no-event-idx]"
                );
                std::process::exit(0);
            }
            o => bail!("unknown argument {o}"),
        }
    }
    for &s in &a.sizes {
        if !(60..=1514).contains(&s) {
            bail!("frame size {s}: 60..=1514 bytes (header and MTU of the ports)");
        }
    }
    Ok(a)
}

/// utime + stime of `pid` in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at
    // field 3 (state); utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        f.get(n - 3)
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: no field {n}"))?
            .parse::<u64>()
            .context("stat field")
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok((field(14)? + field(15)?) as f64 / hz)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The fixed payload byte at frame offset `i` (after the sequence number).
fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(31) ^ 0xa5
}

/// A frame of `size` bytes from A to `dst`, sequence number `seq`.
fn frame(size: usize, dst: [u8; 6], src: [u8; 6], seq: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(size);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(&seq.to_le_bytes());
    for i in f.len()..size {
        f.push(pattern(i));
    }
    f
}

/// The peer under test: a running process with two vhost-user sockets.
enum Peer {
    Switch(PvBackend),
    Testpmd(Child),
}

impl Peer {
    fn pid(&self) -> Option<u32> {
        match self {
            Peer::Switch(b) => b.pid(),
            Peer::Testpmd(c) => Some(c.id()),
        }
    }

    fn stop(self) {
        match self {
            Peer::Switch(b) => b.kill(),
            Peer::Testpmd(mut c) => {
                // Non-interactive testpmd exits on a line from stdin.
                if let Some(mut stdin) = c.stdin.take() {
                    let _ = stdin.write_all(b"\n");
                }
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn wait_path(path: &Path, child: &mut Child, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        if let Some(st) = child.try_wait()? {
            bail!(
                "{TESTPMD} exited ({st}) before creating {}; log:\n{}",
                path.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() >= deadline {
            bail!("{TESTPMD} did not create {} in 60 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn start_peer(kind: PeerKind, dir: &Path, sa: &Path, sb: &Path) -> Result<Peer> {
    match kind {
        PeerKind::Switch => {
            let b = PvBackend::start_with(
                &[],
                &[
                    format!("socket={},name=a", sa.display()),
                    format!("socket={},name=b", sb.display()),
                ],
                &["--log-level", "info"],
                &dir.join("pvbackend.log"),
            )
            .context("start pvbackend")?;
            Ok(Peer::Switch(b))
        }
        PeerKind::Testpmd => {
            let log = dir.join("testpmd.log");
            let out = std::fs::File::create(&log).context("testpmd log")?;
            let err = out.try_clone()?;
            let mut child = Command::new(TESTPMD)
                .args(testpmd_args(sa, sb))
                .stdin(Stdio::piped())
                .stdout(out)
                .stderr(err)
                .spawn()
                .with_context(|| format!("spawn {TESTPMD} (apt-get install dpdk-dev)"))?;
            let r = wait_path(sa, &mut child, &log).and_then(|()| wait_path(sb, &mut child, &log));
            if let Err(e) = r {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            Ok(Peer::Testpmd(child))
        }
    }
}

fn testpmd_args(sa: &Path, sb: &Path) -> Vec<String> {
    [
        // Two lcores (main, forwarding), each free to run on either CPU:
        // on a shared machine a pinned poller starves when its CPU is busy,
        // while the switch's threads migrate.
        "--lcores",
        "0@(0,1),1@(0,1)",
        "--no-huge",
        "-m",
        "1024",
        "--no-pci",
        "--no-shconf",
        "--file-prefix",
        &format!("pvbench-switch-{}", std::process::id()),
        "--vdev",
        &format!("net_vhost0,iface={},queues=1", sa.display()),
        "--vdev",
        &format!("net_vhost1,iface={},queues=1", sb.display()),
        "--",
        "--forward-mode=io",
        "--auto-start",
        "--nb-cores=1",
        "--total-num-mbufs=16384",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    sent: u64,
    received_in_window: u64,
    received: u64,
    wall: f64,
    cpu: f64,
    driver_cpu: f64,
    verified: u64,
    bad: u64,
    out_of_order: u64,
}

impl Outcome {
    fn pps(&self) -> f64 {
        self.received_in_window as f64 / self.wall
    }
    fn cores(&self) -> f64 {
        self.cpu / self.wall
    }
    fn pps_per_core(&self) -> f64 {
        if self.cpu > 0.0 {
            self.received_in_window as f64 / self.cpu
        } else {
            f64::NAN
        }
    }
    fn drops(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

/// Checks received frames: rising sequence numbers, full payload of a
/// sample.
struct Checker {
    size: usize,
    expect: Vec<u8>,
    last_seq: Option<u64>,
    count: u64,
    verified: u64,
    bad: u64,
    out_of_order: u64,
    buf: Vec<u8>,
}

impl Checker {
    fn new(size: usize) -> Self {
        let mut expect = vec![0u8; NET_HDR_LEN];
        expect.extend_from_slice(&frame(size, MAC_B, MAC_A, 0));
        Self {
            size,
            expect,
            last_seq: None,
            count: 0,
            verified: 0,
            bad: 0,
            out_of_order: 0,
            buf: vec![0u8; NET_HDR_LEN + size],
        }
    }

    fn check(&mut self, ram: &GuestRam, slot: u64, len: u32) -> Result<(), NetDriverError> {
        self.count += 1;
        if len as usize != NET_HDR_LEN + self.size {
            self.bad += 1;
            return Ok(());
        }
        let seq_at = (NET_HDR_LEN + 14) as u64;
        let mut seq = [0u8; 8];
        ram.read_into(slot + seq_at, &mut seq)?;
        let seq = u64::from_le_bytes(seq);
        if self.last_seq.is_some_and(|l| seq <= l) {
            self.out_of_order += 1;
        }
        self.last_seq = Some(seq);
        if self.count.is_multiple_of(SAMPLE_EVERY) {
            ram.read_into(slot, &mut self.buf)?;
            // The header: no offloads; num_buffers (bytes 10..12) is the
            // device's to set, so it is not compared.
            let s = seq_at as usize;
            let ok = self.buf[..10] == self.expect[..10]
                && self.buf[NET_HDR_LEN..s] == self.expect[NET_HDR_LEN..s]
                && self.buf[s + 8..] == self.expect[s + 8..];
            if ok {
                self.verified += 1;
            } else {
                self.bad += 1;
            }
        }
        Ok(())
    }
}

fn run_one(kind: PeerKind, size: usize, args: &Args) -> Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let peer = start_peer(kind, dir.path(), &sa, &sb)?;
    let r = drive(&peer, kind, size, args, &sa, &sb);
    peer.stop();
    if r.is_err() {
        for f in ["pvbackend.log", "testpmd.log"] {
            let p: PathBuf = dir.path().join(f);
            if let Ok(t) = std::fs::read_to_string(&p) {
                eprintln!("--- {f} ---\n{t}");
            }
        }
    }
    r
}

fn drive(
    peer: &Peer,
    kind: PeerKind,
    size: usize,
    args: &Args,
    sa: &Path,
    sb: &Path,
) -> Result<Outcome> {
    let pid = peer.pid().ok_or_else(|| anyhow!("peer has no pid"))?;
    // testpmd's vhost library offers no CONFIG protocol feature.
    let read_config = kind == PeerKind::Switch;
    let opts = NetOptions {
        queue_size: args.queue_size,
        read_config,
        event_idx: args.event_idx,
    };
    let mut a = NativeNetDriver::connect_with(sa, &opts).context("connect port 0")?;
    let mut b = NativeNetDriver::connect_with(sb, &opts).context("connect port 1")?;
    let ei = |d: &NativeNetDriver| d.config().features & (1 << 29) != 0;
    if ei(&a) != args.event_idx || ei(&b) != args.event_idx {
        bail!(
            "EVENT_IDX asked {} but not agreed on both ports",
            args.event_idx
        );
    }

    // Warm up: B announces itself (the switch learns MAC_B), A sends one
    // frame to B; both must arrive before the clock starts.
    let wait = Duration::from_secs(30);
    b.send(&frame(size, [0xff; 6], MAC_B, 0))?;
    a.recv(wait)?
        .ok_or_else(|| anyhow!("warm-up frame B->A lost"))?;
    a.send(&frame(size, MAC_B, MAC_A, 0))?;
    b.recv(wait)?
        .ok_or_else(|| anyhow!("warm-up frame A->B lost"))?;
    a.wait_tx_done(wait)?;
    b.wait_tx_done(wait)?;

    let template = {
        let mut t = vec![0u8; NET_HDR_LEN];
        t.extend_from_slice(&frame(size, MAC_B, MAC_A, 0));
        t
    };
    let seq_at = (NET_HDR_LEN + 14) as u64;
    let mut filled: HashSet<u64> = HashSet::new();
    let mut seq: u64 = 1;
    let mut checker = Checker::new(size);
    let mut o = Outcome::default();

    let dur = Duration::from_secs_f64(args.secs);
    let cpu0 = cpu_seconds(pid)?;
    let me = std::process::id();
    let dcpu0 = cpu_seconds(me)?;
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        let s = a.send_burst(BURST, |ram, slot| {
            // Each slot gets the whole frame once; then only its sequence
            // number changes.
            if filled.insert(slot) {
                ram.write(slot, &template)?;
            }
            ram.write(slot + seq_at, &seq.to_le_bytes())?;
            seq += 1;
            Ok(Some(template.len() as u32))
        })?;
        let r = b.recv_burst(usize::MAX, |ram, slot, len| checker.check(ram, slot, len))?;
        o.sent += s as u64;
        o.received_in_window += r as u64;
        if s == 0 && r == 0 {
            b.wait_rx_call(Duration::from_millis(1))?;
        }
    }
    o.wall = t0.elapsed().as_secs_f64();
    o.cpu = cpu_seconds(pid)? - cpu0;
    o.driver_cpu = cpu_seconds(me)? - dcpu0;
    // Drain what is in flight: until 500 ms pass without a frame.
    o.received = o.received_in_window;
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(500) {
        let r = b.recv_burst(usize::MAX, |ram, slot, len| checker.check(ram, slot, len))?;
        if r > 0 {
            o.received += r as u64;
            quiet = Instant::now();
        } else {
            b.wait_rx_call(Duration::from_millis(10))?;
        }
    }
    o.verified = checker.verified;
    o.bad = checker.bad;
    o.out_of_order = checker.out_of_order;
    if o.bad > 0 {
        bail!("{} received frames were wrong ({o:?})", o.bad);
    }
    if o.verified == 0 {
        bail!("no frame was verified ({o:?})");
    }
    Ok(o)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvbench-switch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let args = parse_args()?;
    println!(
        "pvbench-switch: {} s per run, queue size {}, bursts of {BURST}, EVENT_IDX {}, \
         load average at start {}",
        args.secs,
        args.queue_size,
        args.event_idx,
        loadavg()
    );
    let mut results = Vec::new();
    for &size in &args.sizes {
        for &kind in &args.peers {
            let o = run_one(kind, size, &args)
                .with_context(|| format!("{} with {size}-byte frames", kind.name()))?;
            println!(
                "{:>17} {size:>5} B: {:>10.0} pps  backend {:.2} cores  {:>10.0} pps/core  \
                 sent {} received {} drops {} ({:.2}%)  out-of-order {}  verified {}  \
                 driver {:.2} cores  load {}",
                kind.name(),
                o.pps(),
                o.cores(),
                o.pps_per_core(),
                o.sent,
                o.received,
                o.drops(),
                100.0 * o.drops() as f64 / (o.sent.max(1)) as f64,
                o.out_of_order,
                o.verified,
                o.driver_cpu / o.wall,
                loadavg()
            );
            results.push((kind, size, o));
        }
    }
    if args.peers.len() == 2 {
        println!("\nratios (switch / testpmd, same run):");
        for &size in &args.sizes {
            let get = |k: PeerKind| {
                results
                    .iter()
                    .find(|(kk, s, _)| *kk == k && *s == size)
                    .map(|(_, _, o)| o.clone())
            };
            if let (Some(s), Some(t)) = (get(PeerKind::Switch), get(PeerKind::Testpmd)) {
                println!(
                    "  {size:>5} B: pps {:.2}x  pps/core {:.2}x",
                    s.pps() / t.pps(),
                    s.pps_per_core() / t.pps_per_core()
                );
            }
        }
    }
    Ok(())
}
