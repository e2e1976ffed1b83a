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

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

#[test]
fn ready_after_the_sockets_listen_and_a_wedged_thread_stops_the_watchdog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let image = dir.path().join("d0.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    let (disk_sock, port_sock) = (dir.path().join("d0.sock"), dir.path().join("p0.sock"));
    let gid = std::fs::metadata(dir.path()).expect("stat").gid();
    let config = dir.path().join("pvbackend.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nstall_timeout_secs = 1\nmetrics_listen = \"127.0.0.1:0\"\n\n\
             [[disk]]\nname = \"d0\"\npath = \"{}\"\nsocket = \"{}\"\nsocket_group = \"{gid}\"\nsocket_mode = \"0660\"\n\n\
             [[net_port]]\nname = \"p0\"\nsocket = \"{}\"\nsocket_mode = \"0600\"\n",
            image.display(),
            disk_sock.display(),
            port_sock.display()
        ),
    )
    .expect("config");
    let bin = pvtest::guest_bins::host_path_of("pvbackend").expect("pvbackend");
    let log = dir.path().join("backend.log");
    let out = std::fs::File::create(&log).expect("log");
    let err = out.try_clone().expect("log");
    // WATCHDOG_PID must be the daemon's own pid (sd_watchdog_enabled(3)):
    // the shell exports its pid and execs the daemon in its place.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(&bin)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
        .env("PVBACKEND_FAULT_WEDGE_MS", "4000")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut daemon = ChildGuard::spawn("pvbackend", &mut cmd).expect("spawn");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + TIMEOUT;

    // READY=1, and at that moment every socket listens with its access.
    loop {
        let msg = recv(&notify, deadline)
            .unwrap_or_else(|| panic!("no READY=1 within {TIMEOUT:?}; log:\n{}", log_text()));
        assert!(
            !msg.contains("WATCHDOG=1"),
            "a watchdog ping before READY=1: {msg}"
        );
        if msg.lines().any(|l| l == "READY=1") {
            break;
        }
    }
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
    let mut pings = 0;
    let stalled = loop {
        let msg = recv(&notify, deadline).unwrap_or_else(|| {
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
    assert!(pings >= 2, "only {pings} watchdog pings before the wedge");
    assert!(stalled.contains("disk-d0"), "stalled: {stalled}");
    // Ten ping periods of silence: any ping here is the regression.
    let quiet_until = Instant::now() + Duration::from_micros(WATCHDOG_USEC * 5);
    while let Some(msg) = recv(&notify, quiet_until) {
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
}
