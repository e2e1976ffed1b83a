//! pvbackend's least privilege, driven by the native vhost-user driver:
//! the default seccomp filter (`--seccomp=trap`) ends the daemon when a
//! queue worker makes a syscall outside its allow-list, and a restarted
//! daemon serves every acknowledged write; with `[daemon] user` the daemon
//! runs as that user with no capability left, and with `landlock = true`
//! it cannot open files outside its configured set.
//!
//! Both use test-only hooks armed by the daemon's environment (no guest
//! controls them): `PVBACKEND_FAULT_SECCOMP_SECTOR` (a read covering the
//! sector makes the thread executing it call `socket(2)`) and
//! `PVBACKEND_FAULT_LANDLOCK_OPEN` (the sandboxed main thread tries to
//! open each path of the list and logs the outcome).

use std::path::Path;
use std::time::Duration;

use pvtest::peers::PvBackend;
use pvtest::vhost_user::blk::{BlkRequest, Layout, NativeBlkDriver, SECTOR};

const MIB: u64 = 1 << 20;
const DISK_BYTES: u64 = 8 * MIB;
const TRAP_SECTOR: u64 = 5000;
const TIMEOUT: Duration = Duration::from_secs(120);

/// A block stamped with where and when it was written, so a lost or
/// misplaced write reads back differently.
fn stamp(sector: u64, round: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (sector.wrapping_mul(31).wrapping_add(i as u64 * 7) as u8) ^ round.wrapping_mul(0x5b)
        })
        .collect()
}

fn at(sector: u64, len: usize) -> std::ops::Range<usize> {
    let s = (sector * SECTOR) as usize;
    s..s + len
}

/// The first `bytes` of the disk through queue `q`, in 256 KiB reads
/// (the driver's largest request).
fn read_back(drv: &mut NativeBlkDriver, q: u16, bytes: u64) -> Vec<u8> {
    const CHUNK: u64 = 256 * 1024;
    let mut out = Vec::with_capacity(bytes as usize);
    for off in (0..bytes).step_by(CHUNK as usize) {
        out.extend(
            drv.queue(q)
                .expect("queue")
                .read(off / SECTOR, CHUNK as u32)
                .expect("read back"),
        );
    }
    out
}

fn image(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(DISK_BYTES))
        .expect("image");
    img
}

/// Writes `rounds` stamped blocks on each queue, each acknowledged, into
/// the shadow too.
fn stamped_writes(drv: &mut NativeBlkDriver, shadow: &mut [u8], first: u64, round: u8) {
    for q in 0..2u16 {
        for i in 0..8u64 {
            let sector = first + u64::from(q) * 512 + i * 8;
            let data = stamp(sector, round, 4096);
            drv.queue(q)
                .expect("queue")
                .write(sector, &data)
                .expect("stamped write");
            shadow[at(sector, 4096)].copy_from_slice(&data);
        }
    }
}

#[test]
fn a_forbidden_syscall_in_a_queue_worker_ends_the_daemon_and_the_restart_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path());
    let sock = dir.path().join("sb.sock");
    let log = dir.path().join("backend.log");
    // io=sync: the read executes in the queue worker itself.
    let spec = vec![format!(
        "path={},socket={},name=sb,queues=2,io=sync",
        img.display(),
        sock.display()
    )];
    // Inherited by the daemon (nextest runs each test in its own process).
    std::env::set_var("PVBACKEND_FAULT_SECCOMP_SECTOR", TRAP_SECTOR.to_string());
    // No --seccomp: the default is what is tested.
    let mut backend = PvBackend::start(&spec, &[], &log).expect("backend");
    let mut shadow = vec![0u8; DISK_BYTES as usize];

    let mut drv = NativeBlkDriver::connect(&sock, 2, 128).expect("connect");
    stamped_writes(&mut drv, &mut shadow, 100, 1);
    // The forbidden syscall, with writes queued behind it on the same
    // queue: none of them is acknowledged by a dying daemon.
    let behind: Vec<(u64, Vec<u8>)> = (0..4u64)
        .map(|i| {
            let sector = 3000 + i * 8;
            (sector, stamp(sector, 2, 4096))
        })
        .collect();
    let q = drv.queue(1).expect("queue");
    q.enqueue(
        &BlkRequest::Read {
            sector: TRAP_SECTOR,
            len: 4096,
        },
        Layout::Indirect,
    )
    .expect("enqueue the trapping read");
    for (sector, data) in &behind {
        q.enqueue(
            &BlkRequest::Write {
                sector: *sector,
                data: data.clone(),
            },
            Layout::Indirect,
        )
        .expect("enqueue a write behind it");
    }
    q.notify().expect("notify");
    let st = backend
        .wait_exit(TIMEOUT)
        .expect("wait")
        .unwrap_or_else(|| {
            panic!(
                "the daemon survived a forbidden syscall; log:\n{}",
                backend.log()
            )
        });
    let text = backend.log();
    assert_eq!(st.code(), Some(159), "exit status {st:?}; log:\n{text}");
    let line = format!(
        ", class queue-worker) made forbidden syscall {} ",
        libc::SYS_socket
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("pvbackend: seccomp: thread 'vring_worker' (tid ")
                && l.contains(&line)
        ),
        "the violation line (thread 'vring_worker' ... {line}) is not in the log:\n{text}"
    );
    let mut done = Vec::new();
    drv.queue(1).expect("queue").poll(&mut done).expect("poll");
    assert!(
        done.is_empty(),
        "completions published by a daemon that died at the request before them: {done:?}"
    );
    drop(drv);

    // The supervisor's restart (no fault armed this time), and the
    // frontend's reconnect redoing what was not acknowledged.
    std::env::remove_var("PVBACKEND_FAULT_SECCOMP_SECTOR");
    let backend = PvBackend::start(&spec, &[], &log).expect("restarted backend");
    let mut drv = NativeBlkDriver::connect(&sock, 2, 128).expect("reconnect");
    let got = drv
        .queue(1)
        .expect("queue")
        .read(TRAP_SECTOR, 4096)
        .expect("the read that trapped");
    assert!(
        got == shadow[at(TRAP_SECTOR, 4096)],
        "the trapped sector reads wrong"
    );
    for (sector, data) in &behind {
        drv.queue(1)
            .expect("queue")
            .write(*sector, data)
            .expect("redo a write");
        shadow[at(*sector, 4096)].copy_from_slice(data);
    }
    stamped_writes(&mut drv, &mut shadow, 200, 3);
    // Every acknowledged write, before and after the crash, reads back.
    for q in 0..2u16 {
        let got = read_back(&mut drv, q, 4 * MIB);
        assert!(
            got == shadow[..4 * MIB as usize],
            "queue {q}: the disk differs from the acknowledged writes"
        );
    }
    drv.flush().expect("flush");
    assert!(
        std::fs::read(&img).expect("image") == shadow,
        "the image differs from the acknowledged writes"
    );
    let st = backend.stop(TIMEOUT).expect("stop");
    assert!(st.is_some_and(|s| s.success()), "graceful stop: {st:?}");
}

/// One line of `/proc/PID/status`, without its label.
fn status_field(pid: u32, label: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label} in the status:\n{text}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The daemon started as root with `[daemon] user = "nobody"` (and
/// Landlock when asked), serving one disk; returns it with the paths.
struct Dropped {
    backend: PvBackend,
    sock: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start_dropped(landlock: bool, probe: &[&Path]) -> Dropped {
    assert_eq!(
        status_field(std::process::id(), "Uid:").split(' ').nth(1),
        Some("0"),
        "the privilege drop is tested from root (the packaged daemon's start)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path());
    let sock = dir.path().join("pd.sock");
    let cfg = dir.path().join("pvbackend.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nuser = \"nobody\"\nlandlock = {landlock}\n\n[[disk]]\nname = \"pd\"\npath = \"{}\"\nsocket = \"{}\"\nnum_queues = 2\n",
            img.display(),
            sock.display()
        ),
    )
    .expect("config");
    let list = probe
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    std::env::set_var("PVBACKEND_FAULT_LANDLOCK_OPEN", list);
    let cfg = cfg.display().to_string();
    let backend = PvBackend::start(&[], &["--config", &cfg], &dir.path().join("backend.log"))
        .expect("backend");
    Dropped {
        backend,
        sock,
        _dir: dir,
    }
}

fn io_works(sock: &Path) {
    let mut drv = NativeBlkDriver::connect(sock, 2, 128).expect("connect");
    let mut shadow = vec![0u8; DISK_BYTES as usize];
    stamped_writes(&mut drv, &mut shadow, 64, 9);
    let got = read_back(&mut drv, 0, 2 * MIB);
    assert!(
        got == shadow[..2 * MIB as usize],
        "I/O after the drop reads back wrong"
    );
    drv.flush().expect("flush");
}

#[test]
fn the_dropped_daemon_has_the_users_ids_no_capability_and_serves() {
    let d = start_dropped(false, &[]);
    let pid = d.backend.pid().expect("pid");
    let nobody = nix_ids("nobody");
    assert_eq!(
        status_field(pid, "Uid:"),
        format!("{0} {0} {0} {0}", nobody.0)
    );
    assert_eq!(
        status_field(pid, "Gid:"),
        format!("{0} {0} {0} {0}", nobody.1)
    );
    assert_eq!(status_field(pid, "Groups:"), nobody.1.to_string());
    for caps in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
        assert_eq!(
            status_field(pid, caps),
            "0000000000000000",
            "{caps} after the drop; log:\n{}",
            d.backend.log()
        );
    }
    // Every thread too (each one switched), and each runs its filter.
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let tid = task.expect("task").file_name();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/task/{}/status", tid.to_string_lossy()))
                .expect("task status");
        let field = |label: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(label))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert_eq!(
            field("Uid:"),
            format!("{0} {0} {0} {0}", nobody.0),
            "task {tid:?}"
        );
        assert_eq!(field("CapEff:"), "0000000000000000", "task {tid:?}");
        assert_eq!(field("Seccomp:"), "2", "task {tid:?} runs without a filter");
    }
    io_works(&d.sock);
    assert!(
        !d.backend.log().contains("landlock"),
        "landlock is off by default"
    );
}

#[test]
fn landlock_refuses_a_file_outside_the_allowed_set() {
    let outside_dir = tempfile::tempdir().expect("tempdir");
    let outside = outside_dir.path().join("secret");
    std::fs::write(&outside, b"not for the daemon").expect("outside file");
    // World-readable, so only Landlock (not the uid) can refuse it.
    std::fs::set_permissions(
        outside_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let d = start_dropped(true, &[&outside, Path::new("/proc/self/status")]);
    let log = d.backend.log();
    assert!(
        log.contains("landlock: file access restricted to"),
        "landlock not on; log:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "fault injection: open {} refused: Permission denied",
            outside.display()
        )),
        "a file outside the allowed set was not refused; log:\n{log}"
    );
    // The probe itself works: a path in the allowed set opens.
    assert!(
        log.contains("fault injection: opened /proc/self/status (allowed)"),
        "an allowed path was refused; log:\n{log}"
    );
    io_works(&d.sock);
}

/// The uid and primary gid of `user`, from the passwd database.
fn nix_ids(user: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&user))
                .then(|| (f[2].parse().expect("uid"), f[3].parse().expect("gid")))
        })
        .unwrap_or_else(|| panic!("no user {user}"))
}
