//! pvbackend's dirty logging (`LOG_SHMFD`, the log a migration reads),
//! driven by the native vhost-user frontend: once the frontend hands over a
//! log, every page the backend writes into guest memory is marked, and the
//! pages it only reads are not.

use std::time::Duration;

use pvtest::peers::PvBackend;
use pvtest::vhost_user::frontend::LOG_PAGE;
use pvtest::vhost_user::{ChainDesc, NativeBlkDriver, NativeNetDriver, Next};

const WAIT: Duration = Duration::from_secs(60);
/// Data bytes of the hand-built requests: 16 pages.
const DATA: u32 = 64 * 1024;

fn pages(addr: u64, len: u64) -> impl Iterator<Item = u64> {
    (addr / LOG_PAGE..(addr + len).div_ceil(LOG_PAGE)).map(|p| p * LOG_PAGE)
}

/// A disk read copies data into guest buffers through raw iovecs (not
/// vm-memory): every page of them is marked, and the status byte's. A
/// write's data pages, which the device only reads, stay clean.
#[test]
fn disk_reads_mark_every_page_they_fill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0x5au8; 1 << 20]).expect("image");
    let sock = dir.path().join("disk.sock");
    let _backend = PvBackend::start(
        &[format!(
            "path={},socket={}",
            image.display(),
            sock.display()
        )],
        &["--log-level", "info"],
        &dir.path().join("backend.log"),
    )
    .expect("backend");
    let mut drv = NativeBlkDriver::connect(&sock, 1, 64).expect("connect");
    let log = drv.device().start_dirty_log().expect("dirty log");
    let (scratch, scratch_len) = drv.scratch();
    // Header on its own page, then the data pages, then the status page.
    let hdr = scratch.div_ceil(LOG_PAGE) * LOG_PAGE;
    let data = hdr + LOG_PAGE;
    let status = data + u64::from(DATA);
    assert!(status < scratch + scratch_len, "scratch too small");
    let ram = drv.ram().clone();

    for (kind, write) in [("read", false), ("write", true)] {
        log.clear().expect("clear log");
        // virtio-blk header: type (IN 0, OUT 1), reserved, sector 0.
        let mut h = [0u8; 16];
        h[0] = u8::from(write);
        ram.write(hdr, &h).expect("header");
        let data_desc = if write {
            ChainDesc::readable(data, DATA)
        } else {
            ChainDesc::writable(data, DATA)
        };
        let chain = [
            ChainDesc::readable(hdr, 16).then(Next::Chain(1)),
            data_desc.then(Next::Chain(2)),
            ChainDesc::writable(status, 1),
        ];
        let q = drv.queue(0).expect("queue");
        let t = q.submit_raw(&chain, DATA + 1).expect("submit");
        q.wait_for(t, WAIT).expect("completion");
        assert_eq!(ram.read(status, 1).expect("status"), [0], "{kind} failed");

        assert!(log.is_dirty(status).expect("log"), "{kind}: status page");
        assert!(!log.is_dirty(hdr).expect("log"), "{kind}: header page");
        for p in pages(data, u64::from(DATA)) {
            assert_eq!(
                log.is_dirty(p).expect("log"),
                !write,
                "{kind}: data page {p:#x} (the device {} it)",
                if write { "only read" } else { "wrote" }
            );
        }
    }
}

/// A frame the switch copies into a guest's receive buffer marks the pages
/// it filled (header and frame).
#[test]
fn switch_rx_marks_the_receive_buffers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_backend, socks) = PvBackend::switch(dir.path(), &["a", "b"]).expect("backend");
    let mut a = NativeNetDriver::connect(&socks[0], 64).expect("connect a");
    let mut b = NativeNetDriver::connect(&socks[1], 64).expect("connect b");
    let log = b.device().start_dirty_log().expect("dirty log");
    log.clear().expect("clear log");
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x52, 0x54, 0, 0, 0xaa, 1, 0x88, 0xb5]);
    frame.extend_from_slice(&[7u8; 1000]);
    a.send(&frame).expect("send");
    let got = b.recv(WAIT).expect("recv").expect("b got the frame");
    assert_eq!(got.frame, frame);
    // The first receive buffer posted is the first one used.
    for p in pages(b.rx_base(), (12 + frame.len()) as u64) {
        assert!(
            log.is_dirty(p).expect("log"),
            "receive page {p:#x} not marked"
        );
    }
}
