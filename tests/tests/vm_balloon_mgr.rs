//! The host memory-balance manager (`pvbackend`'s balloon manager) against
//! the Linux kernel's own virtio_balloon driver in real QEMU guests.
//!
//! Each guest has two QMP monitors: one for the manager, one for the test's
//! own independent checks (`query-balloon`, `guest-stats`), because QEMU's
//! QMP monitor serves one client at a time. The host's available memory is
//! simulated through the manager's `--host-available-file`, so a shortage
//! happens exactly when the test says. Bounds are generous timeouts, never
//! timing assertions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pvtest::peers::PvBackend;
use pvtest::process::vm_rss_kib;
use pvtest::{Guest, Qmp};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
/// Host figures the tests write into the simulated MemAvailable file,
/// against the thresholds in `policy_toml` (low 1024, high 8192).
const HOST_SHORTAGE: &str = "512";
const HOST_NORMAL: &str = "2048";
const HOST_PLENTY: &str = "100000";

fn policy_toml(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("pvbackend.toml");
    std::fs::write(
        &p,
        format!(
            "[balloon]\nhost_low_mib = 1024\nhost_high_mib = 8192\nstep_mib = 64\n\
             noise_floor_mib = 16\nstats_interval_secs = 1\nqmp_timeout_secs = 30\n{extra}"
        ),
    )
    .expect("write config");
    p
}

fn actual(qmp: &mut Qmp) -> u64 {
    let b = qmp
        .execute("query-balloon", json!({}))
        .expect("query-balloon");
    b["actual"].as_u64().expect("actual")
}

fn guest_stats(qmp: &mut Qmp, path: &str) -> Value {
    qmp.execute(
        "qom-get",
        json!({ "path": path, "property": "guest-stats" }),
    )
    .expect("guest-stats")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn set_host(file: &Path, mib: &str) {
    // Written whole then renamed: the manager never reads half a number.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, mib).expect("write host figure");
    std::fs::rename(&tmp, file).expect("rename host figure");
}

fn metric(backend: &PvBackend, series: &str) -> Option<f64> {
    let m = backend.fetch_metrics().expect("metrics");
    PvBackend::metric(&m, series)
}

/// Every "guest 'NAME': A MiB -> B MiB (reason" the manager logged.
fn decisions(log: &str, name: &str) -> Vec<(u64, u64, String)> {
    let needle = format!("balloon: guest '{name}': ");
    log.lines()
        .filter_map(|l| {
            let rest = l.split(&needle).nth(1)?;
            let (from, rest) = rest.split_once(" MiB -> ")?;
            let (to, rest) = rest.split_once(" MiB (")?;
            let reason = rest.split([',', ')']).next()?;
            Some((from.parse().ok()?, to.parse().ok()?, reason.to_owned()))
        })
        .collect()
}

/// Polls `f` every second until it returns Some, or panics with `what`
/// (and the console and backend log) after `limit`.
fn wait_until<T>(
    limit: Duration,
    what: &str,
    guests: &mut [&mut Guest],
    backend: &PvBackend,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            let consoles: Vec<String> = guests
                .iter_mut()
                .map(|g| g.drain_console().to_owned())
                .collect();
            panic!(
                "{what}: not reached within {} s\n--- consoles ---\n{}\n--- backend log ---\n{}",
                limit.as_secs(),
                consoles.join("\n---\n"),
                backend.log()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One guest: the manager lowers its target in a host shortage, the
/// kernel driver inflates, QEMU's resident memory drops; with plenty the
/// manager gives it back; statistics arrive with fresh timestamps; the
/// `guests` table shows it.
#[test]
fn kernel_virtio_balloon_under_the_manager() {
    const RAM: u64 = 512;
    // 256 MiB ballooned, less than the 300 MiB the guest touched.
    const MIN: u64 = 256;
    let dir = tempfile::tempdir().expect("tempdir");
    let test_qmp = dir.path().join("test.qmp");
    let host_file = dir.path().join("host-available-mib");
    set_host(&host_file, HOST_NORMAL);
    let mut guest = Guest::builder("balloon-mgr-kernel")
        .memory_mib(RAM as u32)
        .modules(["virtio_pci", "virtio_balloon"])
        .virtio_balloon()
        .qmp()
        .qemu_args([
            "-qmp".to_owned(),
            format!("unix:{},server=on,wait=off", test_qmp.display()),
        ])
        .script(
            "mkdir -p /fill\n\
             mount -t tmpfs -o size=400m tmpfs /fill\n\
             dd if=/dev/zero of=/fill/blob bs=1M count=300 2>/dev/null\n\
             rm /fill/blob\n\
             echo pvtest: touched and freed 300 MiB\n\
             sleep 1000\n",
        )
        .timeout(Duration::from_secs(1100))
        .start()
        .expect("harness");
    guest
        .wait_for_console("pvtest: touched and freed", Duration::from_secs(400))
        .expect("guest filled its memory");
    let pid = guest.qemu_pid().expect("qemu pid");
    let rss_before = vm_rss_kib(pid).expect("VmRSS") / 1024;
    assert!(
        rss_before >= 300,
        "the guest touched 300 MiB but QEMU's RSS is {rss_before} MiB"
    );
    let mut qmp = Qmp::connect(&test_qmp, Duration::from_secs(30)).expect("test qmp");
    assert_eq!(actual(&mut qmp), RAM * MIB);

    let manager_qmp = guest.qmp_socket().expect("qmp").to_owned();
    let cfg = policy_toml(dir.path(), "");
    let backend = PvBackend::start(
        &[],
        &[
            "-c",
            cfg.to_str().expect("utf-8 path"),
            "--balloon-guest",
            &format!("name=vm1,qmp={},min={MIN},max={RAM}", manager_qmp.display()),
            "--balloon-interval",
            "1",
            "--host-available-file",
            host_file.to_str().expect("utf-8 path"),
            "--metrics",
            "127.0.0.1:0",
        ],
        &dir.path().join("backend.log"),
    )
    .expect("backend");

    // Connected, statistics flowing; host normal and guest idle: no change.
    let first_update = wait_until(
        Duration::from_secs(120),
        "manager connected with guest statistics",
        &mut [&mut guest],
        &backend,
        || {
            metric(
                &backend,
                r#"pvbackend_balloon_stats_last_update_seconds{guest="vm1"}"#,
            )
            .filter(|t| *t > 0.0)
        },
    );
    assert_eq!(
        metric(&backend, r#"pvbackend_balloon_connected{guest="vm1"}"#),
        Some(1.0)
    );
    assert_eq!(actual(&mut qmp), RAM * MIB, "no change in normal mode");
    assert!(decisions(&backend.log(), "vm1").is_empty());

    // Host shortage: the manager takes the idle guest down to its minimum.
    set_host(&host_file, HOST_SHORTAGE);
    let mut lowest = u64::MAX;
    wait_until(
        Duration::from_secs(400),
        "query-balloon actual at the guest's minimum",
        &mut [&mut guest],
        &backend,
        || {
            let a = actual(&mut qmp);
            lowest = lowest.min(a);
            (a == MIN * MIB).then_some(())
        },
    );
    assert!(lowest >= MIN * MIB, "went below min: {lowest}");
    let rss_low = vm_rss_kib(pid).expect("VmRSS") / 1024;
    let released = rss_before.saturating_sub(rss_low);
    eprintln!(
        "QEMU RSS {rss_before} MiB -> {rss_low} MiB after ballooning {} MiB",
        RAM - MIN
    );
    // The guest touched 300 MiB before, more than the balloon takes, so
    // nearly every ballooned page must leave QEMU (both drivers measured
    // 253-256 of 256 MiB); a driver that reports pages it does not give up
    // falls short.
    assert!(
        released >= (RAM - MIN) * 9 / 10,
        "ballooning {} MiB released only {released} MiB of QEMU's RSS ({rss_before} -> {rss_low})",
        RAM - MIN
    );
    let log = backend.log();
    let steps = decisions(&log, "vm1");
    assert!(!steps.is_empty(), "{log}");
    for (from, to, reason) in &steps {
        assert_eq!(reason, "reclaim", "{log}");
        assert!(from - to <= 64 && *to >= MIN, "step {from} -> {to}:\n{log}");
    }

    // Fresh statistics: QEMU keeps stamping new ones with its wall clock
    // (seconds). An update newer than the one we saw was stamped after we
    // asked for that one and before we saw it: between the host clock read
    // before the first query and the one after the second, however slow
    // the run.
    let path = "/machine/peripheral/balloon1";
    let asked = unix_now();
    let s1 = guest_stats(&mut qmp, path);
    let t1 = s1["last-update"].as_u64().expect("last-update");
    let t2 = wait_until(
        Duration::from_secs(60),
        "a newer guest-stats last-update",
        &mut [&mut guest],
        &backend,
        || {
            let t = guest_stats(&mut qmp, path)["last-update"].as_u64()?;
            (t > t1).then_some(t)
        },
    );
    let seen = unix_now();
    assert!(
        (asked..=seen).contains(&t2),
        "last-update {t2} is not the time of an update between {asked} and {seen}"
    );
    let total = guest_stats(&mut qmp, path)["stats"]["stat-total-memory"]
        .as_u64()
        .expect("stat-total-memory");
    assert!(
        total <= (MIN + 16) * MIB,
        "guest MemTotal {total} should have shrunk with the balloon"
    );
    let later = metric(
        &backend,
        r#"pvbackend_balloon_stats_last_update_seconds{guest="vm1"}"#,
    )
    .expect("last update metric");
    assert!(later > first_update, "metrics stats timestamp advanced");

    // The operator's table.
    let addr = backend.metrics_addr().expect("metrics addr");
    let bin = pvtest::guest_bins::host_path_of("pvbackend").expect("pvbackend");
    let out = std::process::Command::new(bin)
        .args(["guests", "--once", "--metrics", &addr])
        .output()
        .expect("pvbackend guests");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("vm1 "))
        .unwrap_or_else(|| panic!("no vm1 row:\n{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], MIN.to_string(), "target column: {table}");
    assert_eq!(cols[2], MIN.to_string(), "actual column: {table}");
    assert_eq!(cols.last().copied(), Some("up"), "{table}");

    // Plenty: the memory is given back up to the maximum.
    set_host(&host_file, HOST_PLENTY);
    wait_until(
        Duration::from_secs(400),
        "query-balloon actual back at the guest's RAM",
        &mut [&mut guest],
        &backend,
        || (actual(&mut qmp) == RAM * MIB).then_some(()),
    );
    let log = backend.log();
    assert!(
        decisions(&log, "vm1")
            .iter()
            .any(|(f, t, r)| r == "give_back" && t > f && t - f <= 64),
        "{log}"
    );
    let reclaims = metric(
        &backend,
        r#"pvbackend_balloon_decisions_total{guest="vm1",reason="reclaim"}"#,
    );
    assert!(reclaims.is_some_and(|n| n >= 1.0));

    let status = backend
        .stop(Duration::from_secs(30))
        .expect("signal")
        .expect("backend exits after SIGTERM");
    assert!(status.success(), "backend exit status {status}");
    qmp.execute("quit", json!({})).expect("quit");
    let _ = guest.wait();
}

/// Two guests in one watched directory, a simulated host shortage: memory
/// moves from the idle guest to the busy one, within the policy's bounds
/// (per-guest min, step per round, the total never grows); a guest whose
/// socket vanishes is dropped.
#[test]
fn shortage_moves_memory_from_idle_to_busy_guest() {
    const RAM: u64 = 640;
    const MIN: u64 = 320;
    const BUSY_START: u64 = 400;
    let dir = tempfile::tempdir().expect("tempdir");
    let watch = dir.path().join("qmp");
    std::fs::create_dir(&watch).expect("watch dir");
    let host_file = dir.path().join("host-available-mib");
    set_host(&host_file, HOST_SHORTAGE);
    let start = |name: &str, script: &str, anon_balloon: bool| {
        let mut b = Guest::builder(&format!("balloon-mgr-{name}"))
            .memory_mib(RAM as u32)
            .modules(["virtio_pci", "virtio_balloon"])
            .qmp()
            .qemu_args([
                "-qmp".to_owned(),
                format!(
                    "unix:{},server=on,wait=off",
                    dir.path().join(format!("{name}-test.qmp")).display()
                ),
            ])
            .script(script)
            .timeout(Duration::from_secs(1100));
        // One balloon with an id (/machine/peripheral/<id>), one without
        // (/machine/peripheral-anon/device[N]): the manager finds both.
        b = if anon_balloon {
            b.qemu_args(["-device", "virtio-balloon-pci"])
        } else {
            b.virtio_balloon()
        };
        b.start().expect("harness")
    };
    let mut idle = start("idle", "echo pvtest: idle\nsleep 1000\n", false);
    let mut busy = start(
        "busy",
        "mkdir -p /work\n\
         mount -t tmpfs -o size=400m tmpfs /work\n\
         dd if=/dev/zero of=/work/data bs=1M count=240 2>/dev/null\n\
         echo pvtest: busy holding 240 MiB\n\
         sleep 1000\n",
        true,
    );
    idle.wait_for_console("pvtest: idle", Duration::from_secs(400))
        .expect("idle guest up");
    busy.wait_for_console("pvtest: busy holding", Duration::from_secs(400))
        .expect("busy guest up");
    let mut qi =
        Qmp::connect(&dir.path().join("idle-test.qmp"), Duration::from_secs(30)).expect("idle qmp");
    let mut qb =
        Qmp::connect(&dir.path().join("busy-test.qmp"), Duration::from_secs(30)).expect("busy qmp");
    // The busy guest starts squeezed (an earlier shortage): 240 MiB of its
    // 400 are pinned in tmpfs.
    qb.execute("balloon", json!({ "value": BUSY_START * MIB }))
        .expect("balloon busy");
    let t0 = Instant::now();
    while actual(&mut qb) != BUSY_START * MIB {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "busy guest never reached {BUSY_START} MiB"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    let cfg = policy_toml(
        dir.path(),
        &format!("default_min_mib = {MIN}\npressure_pct = 40\nidle_pct = 50\n"),
    );
    let backend = PvBackend::start(
        &[],
        &[
            "-c",
            cfg.to_str().expect("utf-8 path"),
            "--balloon-watch",
            watch.to_str().expect("utf-8 path"),
            "--balloon-interval",
            "1",
            "--host-available-file",
            host_file.to_str().expect("utf-8 path"),
            "--metrics",
            "127.0.0.1:0",
        ],
        &dir.path().join("backend.log"),
    )
    .expect("backend");
    // The guests' manager sockets appear in the watched directory while the
    // manager runs, as a toolstack starting VMs would make them (symlinks
    // to the harness's sockets: a unix socket is reached by any path).
    for (name, g) in [("idle", &idle), ("busy", &busy)] {
        let sock = g.qmp_socket().expect("qmp socket");
        std::os::unix::fs::symlink(sock, watch.join(format!("{name}.qmp"))).expect("symlink");
    }

    // Both targets from one scrape: two scrapes could straddle a round.
    let targets = || {
        let m = backend.fetch_metrics().expect("metrics");
        let t = |name: &str| {
            PvBackend::metric(
                &m,
                &format!("pvbackend_balloon_target_bytes{{guest=\"{name}\"}}"),
            )
        };
        (t("idle"), t("busy"))
    };
    let mut samples = Vec::new();
    wait_until(
        Duration::from_secs(500),
        "busy guest grown by two steps from the idle guest's memory",
        &mut [&mut idle, &mut busy],
        &backend,
        || {
            let (ai, ab) = (actual(&mut qi), actual(&mut qb));
            let (ti, tb) = targets();
            samples.push((ai, ab, ti, tb));
            (ab >= (BUSY_START + 128) * MIB).then_some(())
        },
    );
    let log = backend.log();
    for (ai, ab, ti, tb) in &samples {
        assert!(*ai >= MIN * MIB, "idle below its min: {ai}\n{log}");
        assert!(*ab <= RAM * MIB, "busy above its max: {ab}");
        if let (Some(ti), Some(tb)) = (ti, tb) {
            assert!(
                (*ti + *tb) as u64 <= (RAM + BUSY_START) * MIB,
                "targets {ti} + {tb} exceed what the two guests had\n{log}"
            );
        }
    }
    let idle_steps = decisions(&log, "idle");
    let busy_steps = decisions(&log, "busy");
    assert!(
        idle_steps
            .iter()
            .all(|(f, t, r)| r == "reclaim" && f - t <= 64 && *t >= MIN),
        "{log}"
    );
    assert!(
        busy_steps
            .iter()
            .all(|(f, t, r)| r == "pressure" && t - f <= 64 && *t <= RAM),
        "{log}"
    );
    eprintln!("idle guest steps: {idle_steps:?}\nbusy guest steps: {busy_steps:?}");
    let taken: u64 = idle_steps.iter().map(|(f, t, _)| f - t).sum();
    let given: u64 = busy_steps.iter().map(|(f, t, _)| t - f).sum();
    assert!(
        given >= 128 && given <= taken,
        "given {given}, taken {taken}:\n{log}"
    );
    assert!(actual(&mut qi) < RAM * MIB, "idle guest gave memory");

    // The idle VM goes away and its socket with it: dropped, gauges gone.
    qi.execute("quit", json!({})).expect("quit idle");
    let _ = idle.wait();
    std::fs::remove_file(watch.join("idle.qmp")).expect("remove socket link");
    wait_until(
        Duration::from_secs(60),
        "vanished guest dropped",
        &mut [&mut busy],
        &backend,
        || targets().0.is_none().then_some(()),
    );
    assert!(backend.log().contains("guest 'idle': socket gone, dropped"));

    let status = backend
        .stop(Duration::from_secs(30))
        .expect("signal")
        .expect("backend exits after SIGTERM");
    assert!(status.success(), "backend exit status {status}");
    qb.execute("quit", json!({})).expect("quit busy");
    let _ = busy.wait();
}
