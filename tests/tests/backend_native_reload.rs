//! `systemctl reload pvbackend` (SIGHUP) re-reads the config file: a disk
//! with a new socket is added, running disks are untouched, a disk that
//! is no longer listed is removed only when no frontend is connected (a
//! connected one is refused with a log line saying what to do). Driven by
//! the native vhost-user driver.

use std::path::Path;
use std::time::{Duration, Instant};

use pvtest::peers::PvBackend;
use pvtest::vhost_user::blk::NativeBlkDriver;

const TIMEOUT: Duration = Duration::from_secs(120);

fn config(dir: &Path, disks: &[&str]) -> String {
    let mut text = String::from("[daemon]\nmetrics_listen = \"127.0.0.1:0\"\n");
    for d in disks {
        text.push_str(&format!(
            "\n[[disk]]\nname = \"{d}\"\npath = \"{}\"\nsocket = \"{}\"\nnum_queues = 1\n",
            dir.join(format!("{d}.img")).display(),
            dir.join(format!("{d}.sock")).display()
        ));
    }
    text
}

/// Sends SIGHUP and waits for the `n`-th "reload: done" in the log.
fn reload(backend: &PvBackend, n: usize) {
    let pid = libc::pid_t::try_from(backend.pid().expect("pid")).expect("pid range");
    // SAFETY: kill(2) on the daemon we spawned and still hold (not reaped).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0, "SIGHUP");
    let deadline = Instant::now() + TIMEOUT;
    while backend.log().matches("reload: done").count() < n {
        assert!(
            Instant::now() < deadline,
            "no reload {n}; log:\n{}",
            backend.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn reload_adds_a_disk_and_never_removes_one_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    for d in ["d0", "d1"] {
        std::fs::File::create(dir.path().join(format!("{d}.img")))
            .and_then(|f| f.set_len(1 << 20))
            .expect("image");
    }
    let file = dir.path().join("pvbackend.toml");
    std::fs::write(&file, config(dir.path(), &["d0"])).expect("config");
    let backend = PvBackend::start(
        &[],
        &["--config", &file.to_string_lossy(), "--log-level", "info"],
        &dir.path().join("backend.log"),
    )
    .expect("pvbackend");
    let (s0, s1) = (dir.path().join("d0.sock"), dir.path().join("d1.sock"));
    let mut d0 = NativeBlkDriver::connect(&s0, 1, 64).expect("connect d0");
    let data0 = vec![0xd0u8; 4096];
    d0.write(8, &data0).expect("write d0");

    // d0 removed from the file while connected, d1 added.
    std::fs::write(&file, config(dir.path(), &["d1"])).expect("config");
    reload(&backend, 1);
    let log = backend.log();
    assert!(
        log.contains("disk 'd0' not removed: a frontend is connected"),
        "no refusal; log:\n{log}"
    );
    assert_eq!(d0.read(8, 4096).expect("d0 still serves"), data0);
    let mut d1 = NativeBlkDriver::connect(&s1, 1, 64).expect("connect the added d1");
    let data1 = vec![0xd1u8; 4096];
    d1.write(16, &data1).expect("write d1");
    assert_eq!(d1.read(16, 4096).expect("read d1"), data1);

    // Once its frontend is gone, the same reload removes d0; d1's
    // connection is untouched.
    drop(d0);
    // The disconnect reaches d0's thread asynchronously: reload until the
    // reload sees it (a refusal while it still counts as connected is the
    // right answer then).
    let deadline = Instant::now() + TIMEOUT;
    let mut n = 1;
    while !backend.log().contains("reload: disk 'd0' removed") {
        assert!(
            Instant::now() < deadline,
            "d0 never removed; log:\n{}",
            backend.log()
        );
        std::thread::sleep(Duration::from_millis(200));
        n += 1;
        reload(&backend, n);
    }
    let log = backend.log();
    assert!(log.contains("reload: disk 'd0' removed"), "log:\n{log}");
    assert!(!s0.exists(), "d0's socket is still there");
    assert_eq!(d1.read(16, 4096).expect("d1 after reload"), data1);
    assert_eq!(
        log.matches("disk 'd1': frontend connected").count(),
        1,
        "d1 was reconnected; log:\n{log}"
    );
}
