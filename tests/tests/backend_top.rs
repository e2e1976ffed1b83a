//! `pvbackend top` against a real daemon serving two guests' disks to the
//! native vhost-user driver (no VM).
//!
//! The rates are checked exactly, without timing: `top` reaches the daemon
//! through a proxy of this test, which lets `top`'s first scrape through,
//! then holds its second one while the test scrapes the daemon itself (S0),
//! drives a known load (the only I/O there is), and scrapes again (S1). So
//! `top`'s interval holds exactly the load between S0 and S1, and its
//! figures must equal the counters' differences (and the percentiles fall
//! in the buckets the histogram differences put them in).
//!
//! The live view runs in a real terminal (tmux, its own server socket):
//! it draws, sorts on a key, expands a guest, quits and gives the terminal
//! back. Bad input (no daemon, garbage, a terminal too small) gets one line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pvtest::guest_bins::host_path_of;
use pvtest::peers::PvBackend;
use pvtest::vhost_user::blk::NativeBlkDriver;
use serde_json::Value;

/// Hang guard for anything that waits (not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(120);
const IMAGE_BYTES: usize = 4 << 20;

/// (guest, disk) of the daemon's three disks.
const DISKS: [(&str, &str); 3] = [
    ("vm-busy", "busy-root"),
    ("vm-busy", "busy-data"),
    ("vm-calm", "calm-root"),
];

struct Daemon {
    backend: PvBackend,
    addr: String,
    sockets: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

fn start_daemon() -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut specs = Vec::new();
    let mut sockets = Vec::new();
    for (guest, disk) in DISKS {
        let img = dir.path().join(format!("{disk}.img"));
        std::fs::write(&img, vec![0u8; IMAGE_BYTES]).expect("image");
        let sock = dir.path().join(format!("{disk}.sock"));
        specs.push(format!(
            "path={},socket={},name={disk},guest={guest},queues=1,queue-size=64",
            img.display(),
            sock.display()
        ));
        sockets.push(sock);
    }
    let backend = PvBackend::start(
        &specs,
        &["--log-level", "info", "--metrics", "127.0.0.1:0"],
        &dir.path().join("backend.log"),
    )
    .expect("start pvbackend");
    let addr = backend.metrics_addr().expect("metrics address in the log");
    Daemon {
        backend,
        addr,
        sockets,
        _dir: dir,
    }
}

fn connect(sock: &Path) -> NativeBlkDriver {
    NativeBlkDriver::connect(sock, 1, 64).expect("connect")
}

/// The body of a scrape (the harness returns the whole HTTP answer).
fn scrape(d: &Daemon) -> String {
    let raw = d.backend.fetch_metrics().expect("scrape");
    raw.split_once("\r\n\r\n")
        .map_or(raw.clone(), |(_, b)| b.to_owned())
}

fn series(text: &str, name: &str, labels: &str) -> f64 {
    PvBackend::metric(text, &format!("{name}{{{labels}}}"))
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in:\n{text}"))
}

/// The guest's latency buckets (every op of every disk), le -> count.
fn buckets(text: &str, guest: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    let tag = format!(",guest=\"{guest}\"}}");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("pvbackend_blk_request_duration_seconds_bucket{") else {
            continue;
        };
        if !line.contains(&tag) {
            continue;
        }
        let le = rest
            .split("le=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("le");
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().expect("le number")
        };
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value");
        match out.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += v,
            None => out.push((le, v)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The bucket bounds (lower, upper] that hold the `q` rank of the
/// difference of two cumulative histograms.
fn bucket_of_rank(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> (f64, f64) {
    let d: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, v)| *v);
            (*le, c - b)
        })
        .collect();
    let total = d.last().expect("buckets").1;
    let rank = q * total;
    let mut lower = 0.0;
    for (le, c) in &d {
        if *c >= rank && *c > 0.0 {
            return (lower, *le);
        }
        lower = *le;
    }
    panic!("rank {rank} beyond {d:?}");
}

/// A proxy that forwards `top`'s first scrape at once and holds the second
/// until told; it reports when the first went through.
fn gated_proxy(daemon: String) -> (String, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
    let addr = listener.local_addr().expect("proxy addr").to_string();
    let (first_tx, first_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut client) = conn else { return };
            if n == 1 && go_rx.recv_timeout(PATIENCE).is_err() {
                return;
            }
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => req.extend_from_slice(&buf[..k]),
                }
            }
            let Ok(mut up) = TcpStream::connect(&daemon) else {
                return;
            };
            let mut answer = Vec::new();
            if up.write_all(&req).is_err() || up.read_to_end(&mut answer).is_err() {
                return;
            }
            let _ = client.write_all(&answer);
            drop(client);
            if n == 0 {
                let _ = first_tx.send(());
            }
        }
    });
    (addr, first_rx, go_tx)
}

fn pvbackend() -> PathBuf {
    host_path_of("pvbackend").expect("build pvbackend")
}

#[test]
fn once_json_rates_match_the_counters_over_the_same_interval() {
    let d = start_daemon();
    let mut drivers: Vec<NativeBlkDriver> = d.sockets.iter().map(|s| connect(s)).collect();
    // Some history before the interval, so it is not all of the counters.
    for drv in &mut drivers {
        for i in 0..20 {
            drv.write(i * 8, &[0x5a; 4096]).expect("warm-up write");
        }
    }
    // Two tops over the same interval: --json (checked to the unit) and
    // the --once text table (checked for order; the README shows it).
    let (proxy, first, go) = gated_proxy(d.addr.clone());
    let (text_proxy, text_first, text_go) = gated_proxy(d.addr.clone());
    let top_at = |proxy: &str, json: bool| {
        Command::new(pvbackend())
            .args(["top", "--once", "--every", "1", "--timeout", "600"])
            .args(if json { &["--json"][..] } else { &[][..] })
            .args(["--metrics", proxy])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn top")
    };
    let top = top_at(&proxy, true);
    let text_top = top_at(&text_proxy, false);
    for f in [&first, &text_first] {
        f.recv_timeout(PATIENCE)
            .expect("top's first scrape never came");
    }
    let s0 = scrape(&d);
    // The load: vm-busy reads 4 KiB x 400 on its root disk and writes
    // 8 KiB x 200 on its data disk; vm-calm writes 4 KiB x 50.
    let [root, data, calm] = &mut drivers[..] else {
        panic!("three drivers")
    };
    for i in 0..400 {
        root.read((i % 64) * 8, 4096).expect("read");
    }
    for i in 0..200 {
        data.write((i % 64) * 16, &[0xa5; 8192]).expect("write");
    }
    for i in 0..50 {
        calm.write(i * 8, &[0x3c; 4096]).expect("write");
    }
    let s1 = scrape(&d);
    go.send(()).expect("release the second scrape");
    text_go.send(()).expect("release the second scrape");
    let text = text_top.wait_with_output().expect("top output");
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let table = String::from_utf8(text.stdout).expect("utf-8");
    assert!(table.contains("2 guest(s), rates over"), "{table}");
    let row = |n: &str| table.lines().position(|l| l.starts_with(&format!(" {n} ")));
    assert!(
        row("vm-busy").is_some() && row("vm-busy") < row("vm-calm"),
        "{table}"
    );
    assert!(
        table.contains(" disk busy-data "),
        "devices under their guest: {table}"
    );
    // The README's `top --once` output comes from here.
    let _ = std::fs::write(
        pvtest::guest_bins::target_dir().join("pvbackend-top-once.txt"),
        &table,
    );
    let out = top.wait_with_output().expect("top output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "top failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "--once --json prints one object: {stdout}");
    let report: Value = serde_json::from_str(lines[0]).expect("JSON");
    let secs = report["interval_secs"].as_f64().expect("interval_secs");
    assert!(secs > 0.0, "{report}");
    let guests = report["guests"].as_array().expect("guests");
    let names: Vec<&str> = guests
        .iter()
        .map(|g| g["guest"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["vm-busy", "vm-calm"], "busier guest first by IOPS");

    let delta = |name: &str, labels: &str| series(&s1, name, labels) - series(&s0, name, labels);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    for g in guests {
        let guest = g["guest"].as_str().expect("guest");
        let (mut reads, mut writes, mut rbytes, mut wbytes) = (0.0, 0.0, 0.0, 0.0);
        for disk in g["disks"].as_array().expect("disks") {
            let name = disk["disk"].as_str().expect("disk name");
            assert!(DISKS.contains(&(guest, name)), "{guest}/{name}");
            let l = |op: &str| format!("disk=\"{name}\",op=\"{op}\",guest=\"{guest}\"");
            let expect = [
                ("reads", delta("pvbackend_blk_requests_total", &l("read"))),
                ("writes", delta("pvbackend_blk_requests_total", &l("write"))),
                ("read_bytes", delta("pvbackend_blk_bytes_total", &l("read"))),
                (
                    "write_bytes",
                    delta("pvbackend_blk_bytes_total", &l("write")),
                ),
            ];
            for (field, want) in expect {
                assert_eq!(disk[field].as_f64(), Some(want), "{guest}/{name} {field}");
            }
            let f = |k: &str| disk[k].as_f64().expect(k);
            assert!(close(f("read_iops") * secs, f("reads")), "{disk}");
            assert!(close(f("write_iops") * secs, f("writes")), "{disk}");
            assert!(
                close(f("read_mbps") * 1e6 * secs, f("read_bytes")),
                "{disk}"
            );
            assert!(
                close(f("write_mbps") * 1e6 * secs, f("write_bytes")),
                "{disk}"
            );
            assert_eq!(f("errors"), 0.0, "{disk}");
            reads += f("reads");
            writes += f("writes");
            rbytes += f("read_bytes");
            wbytes += f("write_bytes");
        }
        let f = |k: &str| g[k].as_f64().expect(k);
        assert!(close(f("read_iops") * secs, reads), "{g}");
        assert!(close(f("write_iops") * secs, writes), "{g}");
        assert!(close(f("read_mbps") * 1e6 * secs, rbytes), "{g}");
        assert!(close(f("write_mbps") * 1e6 * secs, wbytes), "{g}");
        // The counters moved by exactly the load this test drove.
        let want = match guest {
            "vm-busy" => (400.0, 200.0, 400.0 * 4096.0, 200.0 * 8192.0),
            _ => (0.0, 50.0, 0.0, 50.0 * 4096.0),
        };
        assert_eq!((reads, writes, rbytes, wbytes), want, "{guest}");
        // Percentiles of the interval: in the buckets of S1 - S0.
        let (b0, b1) = (buckets(&s0, guest), buckets(&s1, guest));
        for (q, key) in [(0.5, "p50_ms"), (0.99, "p99_ms")] {
            let (lo, hi) = bucket_of_rank(&b0, &b1, q);
            let got = f(key) / 1e3;
            let hi = if hi.is_infinite() { lo } else { hi };
            assert!(
                got >= lo - 1e-12 && got <= hi + 1e-12,
                "{guest} {key} {got} s not in ({lo}, {hi}]"
            );
        }
        assert!(f("p50_ms") <= f("p99_ms"), "{g}");
    }
    drop(drivers);
    let st = d.backend.stop(Duration::from_secs(30)).expect("stop");
    assert!(st.is_some_and(|s| s.success()), "graceful stop: {st:?}");
}

/// A tmux server of this test only (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(tag: &str) -> Self {
        Self {
            socket: format!("pvtop-{tag}-{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            // CI has no terminal of its own; the panes need a TERM.
            .env("TERM", "xterm-256color")
            .output()
            .expect("run tmux (./dev.sh setup installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `cmd` in a detached session of `w` x `h` cells; the shell
    /// prints the exit status and stays, so the screen can be read after.
    fn start(&self, w: u16, h: u16, cmd: &str) {
        let shell = format!("{cmd}; echo TOP-EXIT=$?; sleep 600");
        self.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &w.to_string(),
            "-y",
            &h.to_string(),
            "sh",
            "-c",
            &shell,
        ]);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Waits until the screen satisfies `ok` (hang guard: PATIENCE).
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "never saw {what}; screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

fn row_of(screen: &str, needle: &str) -> Option<usize> {
    screen.lines().position(|l| l.contains(needle))
}

#[test]
fn the_live_view_draws_sorts_expands_and_gives_the_terminal_back() {
    let d = start_daemon();
    let mut drivers: Vec<NativeBlkDriver> = d.sockets.iter().map(|s| connect(s)).collect();
    for drv in &mut drivers {
        drv.write(0, &[1; 4096]).expect("write");
    }
    let t = Tmux::new("live");
    let cmd = format!(
        "{} top --every 1 --metrics {}",
        pvbackend().display(),
        d.addr
    );
    t.start(200, 40, &cmd);
    let s = t.wait_for("the first interval drawn", |s| s.contains("rates over"));
    assert!(
        t.run(&["display", "-p", "-t", "top", "#{alternate_on}"])
            .trim()
            == "1",
        "the view is on the alternate screen"
    );
    assert!(s.contains("GUEST") && s.contains("P99 ms"), "{s}");
    assert!(s.contains("vm-busy") && s.contains("vm-calm"), "{s}");
    assert!(
        s.contains("q quit") && s.contains("9 p99"),
        "keys shown: {s}"
    );

    // Sort by guest: ascending, then the same key reverses.
    t.keys(&["g"]);
    let s = t.wait_for("sorted by guest", |s| s.contains("GUEST^"));
    assert!(row_of(&s, "vm-busy") < row_of(&s, "vm-calm"), "{s}");
    t.keys(&["g"]);
    let s = t.wait_for("reversed", |s| s.contains("GUESTv"));
    assert!(row_of(&s, "vm-calm") < row_of(&s, "vm-busy"), "{s}");

    // Expand the selected guest (the first row after the resort keeps the
    // selection on its guest, so select the top one explicitly).
    t.keys(&["Up", "Up", "Enter"]);
    let s = t.wait_for("expanded", |s| s.contains("disk calm-root"));
    assert!(
        !s.contains("disk busy-root"),
        "only the selected guest: {s}"
    );
    assert!(s.contains("q0 kick/irq"), "its queues too: {s}");
    let screenshot = s;

    t.keys(&["q"]);
    let s = t.wait_for("top's exit", |s| s.contains("TOP-EXIT="));
    assert!(s.contains("TOP-EXIT=0"), "{s}");
    assert!(
        !s.contains("GUEST"),
        "the table is gone with the alternate screen: {s}"
    );
    assert_eq!(
        t.run(&["display", "-p", "-t", "top", "#{alternate_on}"])
            .trim(),
        "0",
        "terminal restored"
    );
    // The README's screenshot comes from here.
    let shot = pvtest::guest_bins::target_dir().join("pvbackend-top-screen.txt");
    let _ = std::fs::write(shot, screenshot);
    drop(drivers);
    drop(d);
}

#[test]
fn a_terminal_too_small_gets_one_line() {
    let d = start_daemon();
    let t = Tmux::new("small");
    let cmd = format!("{} top --metrics {}", pvbackend().display(), d.addr);
    t.start(60, 10, &cmd);
    let s = t.wait_for("top's exit", |s| s.contains("TOP-EXIT="));
    assert!(s.contains("TOP-EXIT=1"), "{s}");
    assert!(s.contains("terminal too small: 60x10"), "{s}");
    assert!(!s.contains("panicked"), "{s}");
}

/// Runs `top --once` (and `--json`) against `addr`: it must fail with one
/// line on stderr containing `needle`, never a panic.
fn fails_with_one_line(addr: &str, needle: &str) {
    for extra in [&[][..], &["--json"][..]] {
        let out = Command::new(pvbackend())
            .args(["top", "--once", "--every", "1", "--metrics", addr])
            .args(extra)
            .output()
            .expect("run top");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{addr}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(out.stdout.is_empty(), "nothing on stdout");
    }
}

/// A server answering every connection with `answer`.
fn serve(answer: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let mut r = BufReader::new(c.try_clone().expect("clone"));
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = c.write_all(answer);
        }
    });
    addr
}

#[test]
fn bad_endpoints_get_one_line_errors() {
    // Nothing listening (a port just freed).
    let free = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr").to_string();
    drop(free);
    fails_with_one_line(&addr, "no pvbackend daemon answers");
    fails_with_one_line("not-an-address", "not a host:port");
    fails_with_one_line(
        &serve(b"HTTP/1.0 200 OK\r\n\r\n<html><body>hello</body></html>\n"),
        "not pvbackend metrics: line 1",
    );
    fails_with_one_line(
        &serve(b"HTTP/1.0 200 OK\r\n\r\ngo_goroutines 12\n# EOF\n"),
        "no pvbackend series",
    );
    fails_with_one_line(
        &serve(b"HTTP/1.0 404 Not Found\r\n\r\nsee /metrics\n"),
        "HTTP status 404",
    );
    fails_with_one_line(&serve(b"\x00\x01garbage without a header"), "not HTTP");
    // --sort with no such column: usage error.
    let out = Command::new(pvbackend())
        .args(["top", "--once", "--sort", "colour"])
        .output()
        .expect("run top");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a column"));
}

fn dashboards() -> PathBuf {
    pvtest::guest_bins::workspace_root().join("host-backend/dashboards")
}

/// Every `pvbackend_*` name in `text`.
fn pvbackend_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("pvbackend_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// True when `name` is a series the exposition `text` has: a sample of
/// that name, or a sample name its family's `# TYPE` line implies (a
/// family with no sample yet, e.g. a gauge set on the first QMP answer).
fn exposed(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        if let Some(t) = l.strip_prefix("# TYPE ") {
            let family = t.split(' ').next().unwrap_or_default();
            ["", "_total", "_bucket", "_sum", "_count"]
                .iter()
                .any(|s| format!("{family}{s}") == name)
        } else {
            l.split(['{', ' ']).next() == Some(name)
        }
    })
}

/// A QEMU's QMP monitor with a virtio-balloon, enough for the balloon
/// manager to publish every per-guest series: a guest of `ram` bytes with
/// most of it available (idle), served until the test ends.
fn fake_qmp(path: &Path, ram: u64) {
    use std::os::unix::net::UnixListener;
    let listener = UnixListener::bind(path).expect("bind qmp");
    std::thread::spawn(move || {
        let mut actual = ram;
        for conn in listener.incoming() {
            let Ok(s) = conn else { return };
            let Ok(mut w) = s.try_clone() else { return };
            let _ = w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n");
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    break;
                };
                // Statistics received just now (old ones make the manager
                // wait for fresh ones before it decides).
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let ret = match v["execute"].as_str().unwrap_or("") {
                    "qom-list" => serde_json::json!([
                        {"name": "bal0", "type": "child<virtio-balloon-pci>"}
                    ]),
                    "query-memory-size-summary" => serde_json::json!({"base-memory": ram}),
                    "query-balloon" => serde_json::json!({"actual": actual}),
                    "qom-get" => serde_json::json!({"stats": {
                        "stat-available-memory": actual * 3 / 4,
                        "stat-free-memory": actual / 2,
                        "stat-total-memory": actual,
                        "stat-major-faults": 0,
                        "stat-minor-faults": 0},
                        "last-update": stamp}),
                    "balloon" => {
                        actual = v["arguments"]["value"].as_u64().unwrap_or(actual);
                        serde_json::json!({})
                    }
                    _ => serde_json::json!({}),
                };
                let reply = serde_json::json!({"return": ret, "id": v["id"]});
                if w.write_all(format!("{reply}\n").as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
}

#[test]
fn the_dashboard_and_alert_rules_name_only_series_the_daemon_has() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("d.img");
    std::fs::write(&img, vec![0u8; IMAGE_BYTES]).expect("image");
    let disk = format!(
        "path={},socket={},name=vm1-root,guest=vm1,queues=1",
        img.display(),
        dir.path().join("d.sock").display()
    );
    let port = format!(
        "socket={},name=vm1-eth0,guest=vm1",
        dir.path().join("n.sock").display()
    );
    // A balloon guest (a fake QMP monitor) above its maximum while the host
    // is short of memory: the manager publishes the guest's figures and
    // decides to shrink it (so the decisions series exists too).
    let qmp = dir.path().join("vm1.qmp");
    fake_qmp(&qmp, 2048 << 20);
    let host_available = dir.path().join("host-available-mib");
    std::fs::write(&host_available, "64\n").expect("host available");
    let balloon = format!("name=vm1,qmp={},min=512,max=1024", qmp.display());
    let backend = PvBackend::start_with(
        &[disk],
        &[port],
        &[
            "--log-level",
            "info",
            "--metrics",
            "127.0.0.1:0",
            "--balloon-guest",
            &balloon,
            "--balloon-interval",
            "1",
            "--host-available-file",
            host_available.to_str().expect("utf-8 path"),
        ],
        &dir.path().join("backend.log"),
    )
    .expect("start pvbackend");
    // The manager's first rounds come after start-up: wait for its first
    // decision (hang guard only).
    let deadline = Instant::now() + PATIENCE;
    let raw = loop {
        let raw = backend.fetch_metrics().expect("scrape");
        if raw.contains("pvbackend_balloon_decisions_total{") || Instant::now() > deadline {
            break raw;
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    let json_path = dashboards().join("pvbackend-guests.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).expect("read"))
        .expect("the dashboard is JSON");
    assert!(
        dash["title"].is_string() && dash["panels"].is_array(),
        "{dash}"
    );
    let mut exprs = Vec::new();
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => collect(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dash, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let rules = std::fs::read_to_string(dashboards().join("pvbackend-alerts.yml")).expect("rules");
    let mut names = pvbackend_names(&exprs.join("\n"));
    assert!(names.contains("pvbackend_blk_request_duration_seconds_bucket"));
    assert!(names.contains("pvbackend_net_drops_total"));
    names.extend(pvbackend_names(&rules));
    let missing: Vec<&String> = names.iter().filter(|n| !exposed(&raw, n)).collect();
    assert!(
        missing.is_empty(),
        "not in the daemon's metrics: {missing:?}\n{raw}"
    );
    // The panels grouped per guest select on the label the daemon exports.
    assert!(
        raw.contains(r#"pvbackend_blk_inflight{disk="vm1-root",guest="vm1"}"#),
        "{raw}"
    );
    assert!(exprs.iter().any(|e| e.contains(r#"guest="$guest""#)));
    drop(backend);

    for args in [
        &["check", "rules", "pvbackend-alerts.yml"][..],
        &["test", "rules", "pvbackend-alerts.test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dashboards())
            .output()
            .expect("promtool (Debian's prometheus package; ./dev.sh setup installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
