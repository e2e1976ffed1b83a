//! pvbackend under a fake systemd: the test binds the `$NOTIFY_SOCKET`
//! datagram socket systemd would, starts the daemon with a disk and a
//! switch port and `WATCHDOG_USEC` set, and reads what it says.
//!
//! - `READY=1` arrives only once every configured socket listens: when it
//!   arrives, both sockets accept a connection and carry the configured
//!   group and mode.
//! - `WATCHDOG=1` arrives while every device thread is live.
//! - The test-only fault `PVBACKEND_FAULT_WEDGE_MS` (environment only)
//!   wedges the first disk's server thread: the daemon reports the stalled
//!   thread in `STATUS=` and no `WATCHDOG=1` follows, while the process
//!   lives on (systemd, not the daemon, ends it).
//! - A queue worker stuck in a request (the test-only
//!   `PVBACKEND_FAULT_DELAY_US`, far longer than the stall limit, on a
//!   disk in `io = "sync"` mode, driven by the native vhost-user driver)
//!   stops the pings the same way, naming that queue's worker.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pvtest::vhost_user::blk::NativeBlkDriver;
use pvtest::ChildGuard;

/// The watchdog period systemd would give (pings every half of it).
const WATCHDOG_USEC: u64 = 400_000;
const TIMEOUT: Duration = Duration::from_secs(120);

fn recv(sock: &UnixDatagram, until: Instant) -> Option<String> {
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        match sock.recv(&mut buf) {
            Ok(n) => return Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv on the notify socket: {e}"),
        }
    }
    None
}

fn listens(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

/// Starts pvbackend on `config` under a fake systemd (`NOTIFY_SOCKET`
/// bound here, `WATCHDOG_USEC`) with the extra environment `env`.
fn start_under_fake_systemd(
    dir: &Path,
    config: &str,
    env: &[(&str, &str)],
) -> (ChildGuard, UnixDatagram, std::path::PathBuf) {
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let config_path = dir.join("pvbackend.toml");
    std::fs::write(&config_path, config).expect("config");
    let bin = pvtest::guest_bins::host_path_of("pvbackend").expect("pvbackend");
    let log = dir.join("backend.log");
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    // WATCHDOG_PID must be the daemon's own pid (sd_watchdog_enabled(3)):
    // the shell exports its pid and execs the daemon in its place.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(&bin)
        .arg("--config")
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let daemon = ChildGuard::spawn("pvbackend", &mut cmd).expect("spawn");
    (daemon, notify, log)
}

/// Reads until `STATUS=stalled: ...` (returned), counting pings; then
/// checks that no ping follows for five ping periods and that the daemon
/// still runs.
fn expect_stall_then_silence(
    notify: &UnixDatagram,
    daemon: &mut ChildGuard,
    log: &Path,
    min_pings: usize,
) -> String {
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + TIMEOUT;
    let mut pings = 0;
    let stalled = loop {
        let msg = recv(notify, deadline).unwrap_or_else(|| {
            panic!(
                "no stall reported within {TIMEOUT:?} ({pings} pings); log:\n{}",
                log_text()
            )
        });
        if msg.lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
        if let Some(s) = msg.lines().find_map(|l| l.strip_prefix("STATUS=stalled: ")) {
            break s.to_owned();
        }
    };
    assert!(
        pings >= min_pings,
        "only {pings} watchdog pings before the stall"
    );
    // Five ping periods of silence: any ping here is the regression.
    let quiet_until = Instant::now() + Duration::from_micros(WATCHDOG_USEC * 5 / 2);
    while let Some(msg) = recv(notify, quiet_until) {
        assert!(
            !msg.contains("WATCHDOG=1"),
            "a watchdog ping after the stall: {msg}; log:\n{}",
            log_text()
        );
    }
    assert!(
        daemon.try_wait().expect("wait").is_none(),
        "the daemon exited by itself; log:\n{}",
        log_text()
    );
    assert!(log_text().contains("stopping the systemd watchdog pings"));
    stalled
}

/// Waits for READY=1 (no ping may come before it).
fn wait_ready(notify: &UnixDatagram, log: &Path) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let msg = recv(notify, deadline).unwrap_or_else(|| {
            panic!(
                "no READY=1 within {TIMEOUT:?}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
        assert!(
            !msg.contains("WATCHDOG=1"),
            "a watchdog ping before READY=1: {msg}"
        );
        if msg.lines().any(|l| l == "READY=1") {
            return;
        }
    }
}

#[test]
fn a_queue_worker_stuck_in_a_request_stops_the_watchdog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("q0.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    let sock = dir.path().join("q0.sock");
    let config = format!(
        "[daemon]\nstall_timeout_secs = 1\n\n[[disk]]\nname = \"q0\"\npath = \"{}\"\nsocket = \"{}\"\nnum_queues = 1\nio_mode = \"sync\"\n",
        image.display(),
        sock.display()
    );
    // Every disk operation first sleeps ten minutes: the read below keeps
    // its queue worker busy far past the stall limit.
    let (mut daemon, notify, log) = start_under_fake_systemd(
        dir.path(),
        &config,
        &[("PVBACKEND_FAULT_DELAY_US", "600000000")],
    );
    wait_ready(&notify, &log);
    let reader = std::thread::spawn(move || {
        let mut drv = NativeBlkDriver::connect(&sock, 1, 64).expect("connect");
        // Never completes within the test; its error is of no interest.
        let _ = drv.read(0, 4096);
    });
    let stalled = expect_stall_then_silence(&notify, &mut daemon, &log, 1);
    assert!(stalled.contains("disk-q0 queue 0"), "stalled: {stalled}");
    assert!(!reader.is_finished(), "the stuck read completed");
}

#[test]
fn ready_after_the_sockets_listen_and_a_wedged_thread_stops_the_watchdog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("d0.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    let (disk_sock, port_sock) = (dir.path().join("d0.sock"), dir.path().join("p0.sock"));
    let gid = std::fs::metadata(dir.path()).expect("stat").gid();
    let config = format!(
        "[daemon]\nstall_timeout_secs = 1\nmetrics_listen = \"127.0.0.1:0\"\n\n\
         [[disk]]\nname = \"d0\"\npath = \"{}\"\nsocket = \"{}\"\nsocket_group = \"{gid}\"\nsocket_mode = \"0660\"\n\n\
         [[net_port]]\nname = \"p0\"\nsocket = \"{}\"\nsocket_mode = \"0600\"\n",
        image.display(),
        disk_sock.display(),
        port_sock.display()
    );
    let (mut daemon, notify, log) =
        start_under_fake_systemd(dir.path(), &config, &[("PVBACKEND_FAULT_WEDGE_MS", "4000")]);

    // READY=1, and at that moment every socket listens with its access.
    wait_ready(&notify, &log);
    assert!(
        listens(&disk_sock),
        "READY=1 before the disk socket listens"
    );
    assert!(
        listens(&port_sock),
        "READY=1 before the port socket listens"
    );
    let meta = std::fs::metadata(&disk_sock).expect("disk socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
    let meta = std::fs::metadata(&port_sock).expect("port socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // Pings while live; then the wedge: a STATUS naming the thread, and
    // never a ping after it.
    let stalled = expect_stall_then_silence(&notify, &mut daemon, &log, 2);
    assert!(stalled.contains("disk-d0"), "stalled: {stalled}");
}
