//! A panic in our backend's data path resets the device, never kills the
//! daemon or parks the device: driven by the native vhost-user driver.
//!
//! The daemon is started with the test-only fault injection
//! `PVBACKEND_FAULT_PANIC_SECTOR` (armed by the environment of the daemon,
//! which no guest controls): the first read starting at that sector panics
//! on each disk. Disk `hy` runs in hybrid mode, where the read panics in the
//! queue worker; disk `po` in pool mode, where it panics in an I/O thread;
//! disk `victim` never reads that sector. For each panicking disk the test
//! checks that the connection is dropped (the reset), the panic and reset
//! are counted, the daemon survives, a new connection reads the very sector
//! correctly and writes round-trip to the image, and the victim disk's
//! connection kept serving throughout.

use std::path::Path;
use std::time::{Duration, Instant};

use pvtest::peers::PvBackend;
use pvtest::vhost_user::blk::{BlkRequest, Layout, NativeBlkDriver, SECTOR};

const MIB: u64 = 1 << 20;
const DISK_BYTES: u64 = 8 * MIB;
const PANIC_SECTOR: u64 = 4321;
const TIMEOUT: Duration = Duration::from_secs(120);

fn pattern(seed: u8) -> Vec<u8> {
    (0..DISK_BYTES as usize)
        .map(|i| {
            (i as u64)
                .wrapping_mul(2654435761)
                .wrapping_add(u64::from(seed)) as u8
                ^ seed
        })
        .collect()
}

fn at(sector: u64, len: usize) -> std::ops::Range<usize> {
    let s = (sector * SECTOR) as usize;
    s..s + len
}

fn metric(backend: &PvBackend, series: &str) -> f64 {
    let text = backend.fetch_metrics().expect("metrics");
    PvBackend::metric(&text, series).unwrap_or(0.0)
}

/// Waits (generously) until `series` reaches `want`.
fn wait_metric(backend: &PvBackend, series: &str, want: f64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if metric(backend, series) >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} did not reach {want}; log:\n{}",
            backend.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The disk that never panics, with the content it should have.
struct Victim {
    drv: NativeBlkDriver,
    shadow: Vec<u8>,
}

impl Victim {
    fn io(&mut self, round: u8) {
        let sector = 64 + u64::from(round) * 8;
        let data = vec![round ^ 0xC3; 4096];
        self.drv.write(sector, &data).expect("victim write");
        self.shadow[at(sector, 4096)].copy_from_slice(&data);
        assert!(
            self.drv.read(0, 64 * 1024).expect("victim read") == self.shadow[..64 * 1024],
            "victim disk reads back differently"
        );
    }
}

fn panic_and_recover(
    backend: &PvBackend,
    name: &str,
    img: &Path,
    sock: &Path,
    shadow: &mut [u8],
    victim: &mut Victim,
    round: u8,
) {
    let mut a = NativeBlkDriver::connect(sock, 2, 128).expect("connect");
    // Correct I/O first, on both queues.
    for q in 0..2u16 {
        let sector = 1024 + u64::from(q) * 8;
        let got = a.queue(q).expect("queue").read(sector, 4096).expect("read");
        assert!(
            got == shadow[at(sector, 4096)],
            "{name}: read before the panic"
        );
    }
    // The read that panics, with other requests in flight behind it on the
    // same queue: none of them may be completed by a device being reset.
    let q = a.queue(1).expect("queue");
    q.enqueue(
        &BlkRequest::Read {
            sector: PANIC_SECTOR,
            len: 4096,
        },
        Layout::Indirect,
    )
    .expect("enqueue panic read");
    for i in 0..8u64 {
        q.enqueue(
            &BlkRequest::Read {
                sector: 2048 + i * 8,
                len: 4096,
            },
            Layout::Indirect,
        )
        .expect("enqueue");
    }
    q.notify().expect("notify");
    let series = |s: &str| format!("pvbackend_blk_{s}{{disk=\"{name}\"}}");
    wait_metric(backend, &series("resets_total"), 1.0);
    let mut done = Vec::new();
    q.poll(&mut done).expect("poll");
    // In-order publication: nothing at or behind the request that panicked
    // is published by the device being reset (the reconnection redoes them).
    assert!(
        done.is_empty(),
        "{name}: completions published by a device being reset: {done:?}"
    );
    // The daemon lives, the other disk is unaffected (same connection).
    let pid = backend.pid().expect("pid");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "daemon died; log:\n{}",
        backend.log()
    );
    victim.io(round);
    // The reset dropped the connection: a new one (what QEMU's reconnect=
    // does) serves correct data, the panicking sector included.
    drop(a);
    let mut a = NativeBlkDriver::connect(sock, 2, 128).expect("reconnect after reset");
    for q in 0..2u16 {
        let got = a
            .queue(q)
            .expect("queue")
            .read(PANIC_SECTOR, 4096)
            .expect("read the sector that panicked");
        assert!(
            got == shadow[at(PANIC_SECTOR, 4096)],
            "{name}: wrong data after the reset"
        );
        let sector = 3000 + u64::from(q) * 16;
        let data = vec![0x40 | round | q as u8; 8192];
        a.queue(q)
            .expect("queue")
            .write(sector, &data)
            .expect("write");
        shadow[at(sector, 8192)].copy_from_slice(&data);
        assert!(
            a.queue(q).expect("queue").read(sector, 8192).expect("read") == data,
            "{name}: write after the reset reads back differently"
        );
    }
    a.flush().expect("flush");
    assert!(
        std::fs::read(img).expect("image") == shadow,
        "{name}: image differs from what the driver wrote"
    );
    let kind = if name == "po" {
        "io_panic"
    } else {
        "worker_panic"
    };
    assert_eq!(
        metric(
            backend,
            &format!("pvbackend_blk_errors_total{{disk=\"{name}\",kind=\"{kind}\"}}")
        ),
        1.0,
        "{name}: panic not counted as {kind}"
    );
    assert_eq!(
        metric(backend, &series("resets_total")),
        1.0,
        "{name}: resets"
    );
    assert_eq!(
        metric(backend, &series("inflight")),
        0.0,
        "{name}: in-flight gauge after the reset"
    );
}

#[test]
fn worker_and_io_thread_panics_reset_the_device_and_the_daemon_lives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut specs = Vec::new();
    let mut disks = Vec::new();
    for (i, (name, io)) in [("hy", "hybrid"), ("po", "pool"), ("victim", "pool")]
        .into_iter()
        .enumerate()
    {
        let img = dir.path().join(format!("{name}.img"));
        let sock = dir.path().join(format!("{name}.sock"));
        let bytes = pattern(i as u8 + 1);
        std::fs::write(&img, &bytes).expect("image");
        specs.push(format!(
            "path={},socket={},queues=2,queue-size=128,io={io},io-threads=2",
            img.display(),
            sock.display()
        ));
        disks.push((name, img, sock, bytes));
    }
    // Inherited by the daemon only (nextest runs each test in its own
    // process).
    std::env::set_var("PVBACKEND_FAULT_PANIC_SECTOR", PANIC_SECTOR.to_string());
    let backend = PvBackend::start(
        &specs,
        &["--log-level", "info", "--metrics", "127.0.0.1:0"],
        &dir.path().join("backend.log"),
    )
    .expect("start pvbackend");
    assert!(
        backend.log().contains("FAULT INJECTION ARMED"),
        "fault injection not announced"
    );
    let (_, _, vsock, shadow) = disks.pop().expect("victim");
    let mut victim = Victim {
        drv: NativeBlkDriver::connect(&vsock, 1, 64).expect("connect victim"),
        shadow,
    };
    victim.io(0);
    for (round, (name, img, sock, mut shadow)) in disks.into_iter().enumerate() {
        panic_and_recover(
            &backend,
            name,
            &img,
            &sock,
            &mut shadow,
            &mut victim,
            round as u8 + 1,
        );
    }
    victim.io(9);
    assert_eq!(
        metric(&backend, "pvbackend_blk_resets_total{disk=\"victim\"}"),
        0.0
    );
    assert_eq!(
        metric(&backend, "pvbackend_blk_connections_total{disk=\"victim\"}"),
        1.0,
        "the victim's connection was never dropped"
    );
    drop(victim);
    let st = backend.stop(Duration::from_secs(60)).expect("stop");
    assert!(st.is_some_and(|s| s.success()), "graceful stop: {st:?}");
}
