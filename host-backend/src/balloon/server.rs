//! Running the manager: [`Manager`] holds every managed guest and runs
//! one policy round ([`Manager::round`]); [`spawn`] runs the rounds on the
//! daemon's `balloon` thread until asked to stop. What a round does is
//! described in [`super`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};

use super::config::BalloonConfig;
use super::device::{GuestConn, GuestSample};
use super::metrics::{BalloonMetrics, G};
use super::policy::{self, GuestInput, HostInput, PolicyConfig};
use crate::guests::mux::Registry;

const MIB: u64 = 1 << 20;

/// Reads the host's available memory in MiB: `file` holds a plain number
/// of MiB when given (a test or operator override), else `/proc/meminfo`'s
/// `MemAvailable`.
pub fn host_available_mib(file: Option<&Path>) -> Result<u64, String> {
    match file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            text.trim()
                .parse()
                .map_err(|_| format!("{}: expected a number of MiB", f.display()))
        }
        None => {
            let text = std::fs::read_to_string("/proc/meminfo")
                .map_err(|e| format!("cannot read /proc/meminfo: {e}"))?;
            meminfo_available_mib(&text).ok_or_else(|| "no MemAvailable in /proc/meminfo".into())
        }
    }
}

/// `MemAvailable` from `/proc/meminfo` text, in MiB.
pub fn meminfo_available_mib(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One managed guest.
#[derive(Debug)]
struct Managed {
    socket: PathBuf,
    watched: bool,
    min_mib: Option<u64>,
    max_mib: Option<u64>,
    conn: Option<GuestConn>,
    /// The target the manager last set, bytes (None: never, or since the
    /// last reconnect).
    target: Option<u64>,
    /// Unix time of that change.
    changed_at: u64,
    last: Option<GuestSample>,
    prev_major: Option<u64>,
    /// The last error logged, so a guest that stays down is logged once.
    last_error: Option<String>,
}

impl Managed {
    fn new(socket: PathBuf, watched: bool, min_mib: Option<u64>, max_mib: Option<u64>) -> Self {
        Self {
            socket,
            watched,
            min_mib,
            max_mib,
            conn: None,
            target: None,
            changed_at: 0,
            last: None,
            prev_major: None,
            last_error: None,
        }
    }
}

/// The manager's state; [`Manager::round`] runs one policy round.
#[derive(Debug)]
pub struct Manager {
    cfg: BalloonConfig,
    policy: PolicyConfig,
    guests: BTreeMap<String, Managed>,
    metrics: Arc<BalloonMetrics>,
    registry: Arc<Registry>,
}

impl Manager {
    /// A manager for `cfg` (already validated), publishing to `metrics`,
    /// reaching guests through the daemon's QMP `registry`.
    pub fn new(cfg: BalloonConfig, metrics: Arc<BalloonMetrics>, registry: Arc<Registry>) -> Self {
        let mut guests = BTreeMap::new();
        for g in &cfg.guests {
            guests.insert(
                g.name.clone(),
                Managed::new(g.qmp.clone(), false, g.min_mib, g.max_mib),
            );
        }
        Self {
            policy: cfg.policy(),
            cfg,
            guests,
            metrics,
            registry,
        }
    }

    /// Names of the guests currently managed.
    pub fn guest_names(&self) -> Vec<String> {
        self.guests.keys().cloned().collect()
    }

    fn refresh_watch_dir(&mut self) {
        let Some(dir) = self.cfg.watch_dir.clone() else {
            return;
        };
        let mut present = BTreeMap::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "qmp") {
                        if let Some(stem) = p.file_stem() {
                            present.insert(stem.to_string_lossy().into_owned(), p);
                        }
                    }
                }
            }
            Err(e) => {
                self.metrics.error("", "watch_dir");
                warn!("balloon: cannot read watch_dir {}: {e}", dir.display());
            }
        }
        let gone: Vec<String> = self
            .guests
            .iter()
            .filter(|(n, g)| g.watched && !present.contains_key(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            info!("balloon: guest '{name}': socket gone, dropped");
            self.guests.remove(&name);
            self.metrics.forget(&name);
        }
        for (name, path) in present {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                self.guests.entry(name.clone())
            {
                info!("balloon: guest '{name}': found {}", path.display());
                slot.insert(Managed::new(path, true, None, None));
            }
        }
    }

    fn fail(metrics: &BalloonMetrics, name: &str, g: &mut Managed, kind: &str, msg: String) {
        metrics.error(name, kind);
        if g.last_error.as_deref() != Some(msg.as_str()) {
            warn!("balloon: guest '{name}': {msg}");
            g.last_error = Some(msg);
        }
    }

    fn sample_all(&mut self) {
        let timeout = Duration::from_secs(self.cfg.qmp_timeout_secs);
        let stats_every = Duration::from_secs(self.cfg.stats_interval_secs);
        for (name, g) in &mut self.guests {
            if g.conn.is_none() {
                match GuestConn::open(&self.registry, &g.socket, timeout, stats_every) {
                    Ok(c) => {
                        info!(
                            "balloon: guest '{name}': connected to {} ({} MiB RAM, balloon {})",
                            g.socket.display(),
                            c.ram() / MIB,
                            c.balloon_path()
                        );
                        g.conn = Some(c);
                        g.target = None;
                        // Statistics QEMU holds from before we watched this
                        // guest (e.g. the buffer the driver fills at probe,
                        // when the guest had just booted) describe another
                        // guest: only figures received after now count.
                        g.changed_at = unix_now();
                        g.last_error = None;
                        self.metrics.set(name, G::Connected, 1);
                    }
                    Err(e) => {
                        g.last = None;
                        let kind = e.kind();
                        Self::fail(&self.metrics, name, g, kind, e.to_string());
                        continue;
                    }
                }
            }
            let Some(conn) = g.conn.as_mut() else {
                continue;
            };
            match conn.sample() {
                Ok(s) => {
                    self.metrics.set(name, G::Actual, s.actual);
                    self.metrics
                        .set(name, G::Target, g.target.unwrap_or(s.actual));
                    self.metrics.stats(name, &s.stats);
                    g.last = Some(s);
                }
                Err(e) => {
                    g.last = None;
                    let reconnect = e.should_reconnect();
                    if reconnect {
                        g.conn = None;
                        self.metrics.set(name, G::Connected, 0);
                    }
                    Self::fail(&self.metrics, name, g, e.kind(), e.to_string());
                }
            }
        }
    }

    fn inputs(&mut self) -> Vec<GuestInput> {
        let mut out = Vec::new();
        for (name, g) in &mut self.guests {
            let (Some(s), Some(conn)) = (&g.last, &g.conn) else {
                continue;
            };
            let ram_mib = conn.ram() / MIB;
            let max_mib = g.max_mib.unwrap_or(ram_mib).min(ram_mib);
            let min_mib = g.min_mib.unwrap_or(self.cfg.default_min_mib).min(max_mib);
            self.metrics.set(name, G::Min, min_mib * MIB);
            self.metrics.set(name, G::Max, max_mib * MIB);
            let major = s.stats.major_faults;
            let delta = match (g.prev_major, major) {
                (Some(p), Some(m)) => Some(m.saturating_sub(p)),
                _ => None,
            };
            g.prev_major = major.or(g.prev_major);
            // Only figures QEMU received after our last change count.
            let fresh = s.stats.last_update > g.changed_at;
            out.push(GuestInput {
                name: name.clone(),
                current_mib: g.target.unwrap_or(s.actual) / MIB,
                min_mib,
                max_mib,
                available_mib: s.stats.available.filter(|_| fresh).map(|b| b / MIB),
                major_faults_delta: delta,
            });
        }
        out
    }

    /// Runs one round: discover, sample, decide, apply.
    pub fn round(&mut self) {
        self.refresh_watch_dir();
        self.sample_all();
        let host = match host_available_mib(self.cfg.host_available_file.as_deref()) {
            Ok(h) => h,
            Err(e) => {
                self.metrics.error("", "host_meminfo");
                warn!("balloon: {e}; no decisions this round");
                return;
            }
        };
        self.metrics.host_available(host.saturating_mul(MIB));
        let inputs = self.inputs();
        let mut decisions = policy::decide(
            &self.policy,
            HostInput {
                available_mib: host,
            },
            &inputs,
        );
        // Shrink before growing: memory is taken back before it is handed
        // out, so at no point of a round do the targets add up to more
        // than they did before it.
        decisions.sort_by_key(|d| d.to_mib > d.from_mib);
        for d in decisions {
            self.metrics.decision(&d.name, d.reason.name());
            let dry = if self.cfg.dry_run { " (dry run)" } else { "" };
            info!(
                "balloon: guest '{}': {} MiB -> {} MiB ({}, host available {host} MiB){dry}",
                d.name,
                d.from_mib,
                d.to_mib,
                d.reason.name()
            );
            if self.cfg.dry_run {
                continue;
            }
            let Some(g) = self.guests.get_mut(&d.name) else {
                continue;
            };
            let Some(conn) = g.conn.as_mut() else {
                continue;
            };
            match conn.set_target(d.to_mib * MIB) {
                Ok(()) => {
                    g.target = Some(d.to_mib * MIB);
                    g.changed_at = unix_now();
                    self.metrics.set(&d.name, G::Target, d.to_mib * MIB);
                }
                Err(e) => {
                    if e.should_reconnect() {
                        g.conn = None;
                        self.metrics.set(&d.name, G::Connected, 0);
                    }
                    Self::fail(&self.metrics, &d.name, g, e.kind(), e.to_string());
                }
            }
        }
        self.metrics.round();
    }
}

/// Runs the manager on its own thread until `stop` is set.
pub fn spawn(
    cfg: BalloonConfig,
    metrics: Arc<BalloonMetrics>,
    registry: Arc<Registry>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    crate::worker::spawn("balloon".into(), move || {
        crate::sandbox::enter(crate::sandbox::Class::Balloon);
        let every = Duration::from_secs(cfg.interval_secs.max(1));
        let dry = cfg.dry_run;
        let mut m = Manager::new(cfg, metrics, registry);
        info!(
            "balloon: manager started ({} configured guest(s), round every {} s{})",
            m.guests.len(),
            every.as_secs(),
            if dry { ", dry run" } else { "" }
        );
        while !stop.load(Ordering::Acquire) {
            let started = Instant::now();
            // A panic in one round (a bug) must not end the manager.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.round()));
            if r.is_err() {
                log::error!("balloon: round panicked; continuing");
            }
            while !stop.load(Ordering::Acquire) && started.elapsed() < every {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        info!("balloon: manager stopped");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use serde_json::{json, Value};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::Mutex;

    /// A fake QEMU with a virtio-balloon: serves QMP on `path` (one client
    /// at a time, as QEMU does) until `stop` is set; the guest's size is
    /// `actual` and it reports `available` bytes free for use.
    struct FakeQemu {
        stop: Arc<AtomicBool>,
        actual: Arc<Mutex<u64>>,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeQemu {
        fn start(path: &Path, ram: u64, available: u64) -> Self {
            Self::start_inner(path, ram, available, false)
        }

        /// As [`FakeQemu::start`], but every statistic QEMU reports is
        /// old: received long before the manager connected.
        fn start_stale(path: &Path, ram: u64, available: u64) -> Self {
            Self::start_inner(path, ram, available, true)
        }

        fn start_inner(path: &Path, ram: u64, available: u64, stale: bool) -> Self {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path).expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            let stop = Arc::new(AtomicBool::new(false));
            let actual = Arc::new(Mutex::new(ram));
            let (st, act) = (stop.clone(), actual.clone());
            let path = path.to_owned();
            let thread = std::thread::spawn(move || {
                let mut stamp = unix_now();
                while !st.load(Ordering::Acquire) {
                    let Ok((s, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    s.set_nonblocking(false).expect("blocking");
                    s.set_read_timeout(Some(Duration::from_millis(50)))
                        .expect("timeout");
                    let mut w = s.try_clone().expect("clone");
                    let _ = w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n");
                    let mut r = BufReader::new(s);
                    let mut line = String::new();
                    while !st.load(Ordering::Acquire) {
                        match r.read_line(&mut line) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(_) => continue,
                        }
                        let v: Value = serde_json::from_str(&line).expect("json");
                        line.clear();
                        stamp += 1;
                        let mut a = act.lock().expect("lock");
                        let ret = match v["execute"].as_str().unwrap_or("") {
                            "qom-list" if v["arguments"]["path"] == "/machine/peripheral" => {
                                json!([{"name": "type", "type": "string"},
                                       {"name": "bal0", "type": "child<virtio-balloon-pci>"}])
                            }
                            "query-memory-size-summary" => json!({"base-memory": ram}),
                            "query-balloon" => json!({"actual": *a}),
                            "qom-get" => json!({"stats": {
                                "stat-available-memory": available.min(*a),
                                "stat-total-memory": *a,
                                "stat-major-faults": 0},
                                "last-update": if stale { 1_000 } else { stamp }}),
                            "balloon" => {
                                *a = v["arguments"]["value"].as_u64().expect("value");
                                json!({})
                            }
                            _ => json!({}),
                        };
                        let reply = json!({"return": ret, "id": v["id"]});
                        if w.write_all(format!("{reply}\n").as_bytes()).is_err() {
                            break;
                        }
                    }
                }
                let _ = std::fs::remove_file(&path);
            });
            Self {
                stop,
                actual,
                thread: Some(thread),
            }
        }

        fn actual(&self) -> u64 {
            *self.actual.lock().expect("lock")
        }

        fn stop(mut self) {
            self.stop.store(true, Ordering::Release);
            if let Some(t) = self.thread.take() {
                t.join().expect("fake qemu");
            }
        }
    }

    /// One configured guest `vm` (min 512 MiB) on `sock`, 64 MiB steps,
    /// the host's available memory read from a file that says 100 MiB (a
    /// shortage).
    fn one_guest_in_a_shortage(dir: &Path, sock: &Path) -> BalloonConfig {
        let host = dir.join("host");
        std::fs::write(&host, "100").expect("host file");
        BalloonConfig {
            enabled: true,
            step_mib: 64,
            host_available_file: Some(host),
            qmp_timeout_secs: 5,
            guests: vec![crate::balloon::config::parse_guest_spec(&format!(
                "name=vm,qmp={},min=512",
                sock.display()
            ))
            .expect("spec")],
            ..BalloonConfig::default()
        }
    }

    #[test]
    fn manager_reclaims_reconnects_and_honours_dry_run() {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("vm.qmp");
        let qemu = FakeQemu::start(&sock, 1024 * MIB, 900 * MIB);
        let mut registry = Registry::default();
        let metrics = Arc::new(BalloonMetrics::register(&mut registry));
        let mut cfg = one_guest_in_a_shortage(dir.path(), &sock);
        let mut m = Manager::new(cfg.clone(), metrics.clone(), Arc::default());
        m.round();
        assert_eq!(qemu.actual(), 960 * MIB, "one step reclaimed");
        m.round();
        assert_eq!(qemu.actual(), 896 * MIB, "and another");
        let text = crate::metrics_server::render(&registry);
        for needle in [
            r#"pvbackend_balloon_target_bytes{guest="vm"} 939524096"#,
            r#"pvbackend_balloon_connected{guest="vm"} 1"#,
            r#"pvbackend_balloon_decisions_total{guest="vm",reason="reclaim"} 2"#,
            r#"pvbackend_balloon_min_bytes{guest="vm"} 536870912"#,
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }

        // QEMU goes away: the manager notices, counts it, and reconnects
        // when a QEMU is back on the same socket.
        qemu.stop();
        m.round();
        let text = crate::metrics_server::render(&registry);
        assert!(
            text.contains(r#"pvbackend_balloon_connected{guest="vm"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"pvbackend_balloon_errors_total{guest="vm",kind="closed"}"#)
                || text.contains(r#"pvbackend_balloon_errors_total{guest="vm",kind="io"}"#),
            "{text}"
        );
        m.round();
        assert!(crate::metrics_server::render(&registry)
            .contains(r#"pvbackend_balloon_errors_total{guest="vm",kind="connect"}"#));
        let qemu = FakeQemu::start(&sock, 1024 * MIB, 900 * MIB);
        m.round();
        assert_eq!(qemu.actual(), 960 * MIB, "reconnected and acting again");
        assert!(crate::metrics_server::render(&registry)
            .contains(r#"pvbackend_balloon_connected{guest="vm"} 1"#));
        drop(m);

        // Dry run: decisions are counted and logged, nothing is applied.
        cfg.dry_run = true;
        let mut m = Manager::new(cfg, metrics, Arc::default());
        m.round();
        m.round();
        assert_eq!(qemu.actual(), 960 * MIB, "dry run changes nothing");
        drop(m);
        qemu.stop();
    }

    /// The stale-statistics race `vm_balloon_mgr` hit: QEMU still held
    /// the statistics the guest driver reported at boot (much memory
    /// free), so the first round reclaimed from a guest that was by then
    /// under pressure. Figures older than the connection are ignored.
    #[test]
    fn statistics_from_before_the_connection_drive_no_decision() {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("vm.qmp");
        let qemu = FakeQemu::start_stale(&sock, 1024 * MIB, 900 * MIB);
        let mut registry = Registry::default();
        let metrics = Arc::new(BalloonMetrics::register(&mut registry));
        let cfg = one_guest_in_a_shortage(dir.path(), &sock);
        let mut m = Manager::new(cfg, metrics, Arc::default());
        m.round();
        m.round();
        assert_eq!(
            qemu.actual(),
            1024 * MIB,
            "a host shortage, but only stale statistics: no change"
        );
        let text = crate::metrics_server::render(&registry);
        assert!(
            text.contains(r#"pvbackend_balloon_connected{guest="vm"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"pvbackend_balloon_decisions_total{guest="vm""#),
            "{text}"
        );
        drop(m);
        qemu.stop();
    }

    #[test]
    fn watched_directory_adds_and_drops_guests() {
        let dir = tempfile::tempdir().expect("dir");
        let host = dir.path().join("host");
        std::fs::write(&host, "2000").expect("host file");
        let qemu = FakeQemu::start(&dir.path().join("a.qmp"), 1024 * MIB, 900 * MIB);
        std::fs::write(dir.path().join("not-a-socket.txt"), "x").expect("file");
        let mut registry = Registry::default();
        let metrics = Arc::new(BalloonMetrics::register(&mut registry));
        let mut m = Manager::new(
            BalloonConfig {
                enabled: true,
                watch_dir: Some(dir.path().to_owned()),
                host_available_file: Some(host),
                qmp_timeout_secs: 5,
                ..BalloonConfig::default()
            },
            metrics,
            Arc::default(),
        );
        m.round();
        assert_eq!(m.guest_names(), vec!["a".to_owned()]);
        let text = crate::metrics_server::render(&registry);
        assert!(
            text.contains(r#"pvbackend_balloon_actual_bytes{guest="a"} 1073741824"#),
            "{text}"
        );
        assert_eq!(
            qemu.actual(),
            1024 * MIB,
            "normal host, idle guest: no change"
        );
        qemu.stop();
        m.round();
        assert!(m.guest_names().is_empty(), "socket gone, guest dropped");
        let text = crate::metrics_server::render(&registry);
        assert!(
            !text.contains(r#"pvbackend_balloon_actual_bytes{guest="a"}"#),
            "{text}"
        );
    }

    #[test]
    fn meminfo_and_override_file() {
        let text = "MemTotal:       16384000 kB\nMemFree: 1 kB\nMemAvailable:    2097152 kB\n";
        assert_eq!(meminfo_available_mib(text), Some(2048));
        assert_eq!(meminfo_available_mib("MemFree: 1 kB\n"), None);
        assert!(
            host_available_mib(None).is_ok(),
            "this host has /proc/meminfo"
        );
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("avail");
        std::fs::write(&f, "512\n").expect("write");
        assert_eq!(host_available_mib(Some(&f)), Ok(512));
        std::fs::write(&f, "lots").expect("write");
        assert!(host_available_mib(Some(&f)).is_err());
    }
}
