//! A request stuck in the disk cannot hang the frontend's stop: pvbackend
//! bounds GET_VRING_BASE with the disk's `stop-timeout-ms`, then resets the
//! device (drops the connection without answering), so the frontend takes
//! its used index as the queue's base (QEMU: "ring restore failed", last
//! avail idx := used idx) and the next owner redoes the stuck request. The
//! stuck request's completion is never published into the old ring, and the
//! next connection is served only once it finished in the disk (a stale
//! write cannot land after the redo).
//!
//! Driven by the native vhost-user driver. The daemon's test-only fault
//! injection (`PVBACKEND_FAULT_STALL_SECTOR` and
//! `PVBACKEND_FAULT_STALL_UNTIL`, armed by the daemon's environment, which
//! no guest controls) holds the read of one sector until a file exists: no
//! sleeps decide the outcome; the only bound is the generous one on the
//! stop returning at all.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pvtest::peers::PvBackend;
use pvtest::vhost_user::blk::{BlkRequest, Layout, NativeBlkDriver, SECTOR};

const STALL_SECTOR: u64 = 2048;
const TIMEOUT: Duration = Duration::from_secs(120);
/// The stop deadline given to the disk (far below `TIMEOUT`).
const STOP_TIMEOUT_MS: u32 = 1000;

fn image(path: &Path) -> Vec<u8> {
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(path, &data).expect("image");
    data
}

/// Waits (generously) until the daemon's log contains `needle`.
fn wait_log(backend: &PvBackend, needle: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !backend.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no '{needle}' in the log:\n{}",
            backend.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stuck_request_does_not_hang_get_vring_base_and_is_never_completed_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.img");
    let data = image(&img);
    let sock = dir.path().join("disk.sock");
    let release = dir.path().join("release-the-read");
    std::env::set_var("PVBACKEND_FAULT_STALL_SECTOR", STALL_SECTOR.to_string());
    std::env::set_var("PVBACKEND_FAULT_STALL_UNTIL", &release);
    let backend = PvBackend::start(
        &[format!(
            "path={},socket={},queues=1,io=pool,stop-timeout-ms={STOP_TIMEOUT_MS}",
            img.display(),
            sock.display()
        )],
        &["--log-level", "info", "--metrics", "127.0.0.1:0"],
        &dir.path().join("backend.log"),
    )
    .expect("backend");

    let mut drv = NativeBlkDriver::connect(&sock, 1, 64).expect("connect");
    // A read before the stuck one completes normally.
    assert_eq!(
        drv.read(8, 4096).expect("read"),
        data[8 * SECTOR as usize..][..4096]
    );
    let q = drv.queue(0).expect("queue");
    let stuck = q
        .submit(
            &BlkRequest::Read {
                sector: STALL_SECTOR,
                len: 4096,
            },
            Layout::Indirect,
        )
        .expect("submit");
    // The read is in the disk (the fault logs when it starts holding it).
    wait_log(&backend, "fault injection: read of sector");

    // Stop the queue as QEMU does on `stop` / migration: it must return
    // (the device resets at the deadline) rather than wait for the disk.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = drv.device().stop_queue(0);
        let _ = tx.send((r.map_err(|e| e.to_string()), drv));
    });
    let got = rx.recv_timeout(TIMEOUT);
    // Whatever happened, let the disk finish (and the daemon clean up).
    std::fs::write(&release, b"").expect("release");
    let (stop, mut drv) = got.unwrap_or_else(|_| {
        panic!(
            "GET_VRING_BASE did not return while a request was stuck; log:\n{}",
            backend.log()
        )
    });
    // The device reset instead of answering with a base that counts the
    // unfinished request as taken.
    assert!(
        stop.is_err(),
        "GET_VRING_BASE answered {stop:?} with a request still in the disk"
    );
    wait_log(&backend, "stop deadline");

    // The next owner: served only once the stuck read finished in the disk,
    // and it redoes the read.
    let mut next = NativeBlkDriver::connect(&sock, 1, 64).expect("reconnect");
    assert_eq!(
        next.read(STALL_SECTOR, 4096).expect("redo"),
        data[(STALL_SECTOR * SECTOR) as usize..][..4096],
        "the next owner reads the stuck request's data"
    );
    // The old ring never got the stuck request's completion, even though
    // it finished in the disk before `next` was served.
    let mut late = Vec::new();
    drv.queue(0).expect("queue").poll(&mut late).expect("poll");
    assert!(
        late.iter().all(|c| c.token != stuck),
        "the stuck request was completed into the stopped ring: {late:?}"
    );
    assert!(late.is_empty(), "completions after the stop: {late:?}");
    let text = backend.fetch_metrics().expect("metrics");
    assert!(
        PvBackend::metric(
            &text,
            "pvbackend_blk_errors_total{disk=\"disk\",kind=\"stop_timeout\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "stop timeout not counted:\n{text}"
    );
}
