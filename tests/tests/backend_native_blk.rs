//! vhost-user-blk backends driven by the native frontend driver
//! (`pvtest::vhost_user`), no VM: read, write, flush, GET_ID, discard and
//! write-zeroes round trips checked against the image file, on every queue,
//! with direct and indirect descriptors and many requests in flight.
//!
//! The same exercise runs against QEMU's `qemu-storage-daemon` (the
//! reference backend), which checks the driver itself against a real peer.

use std::path::Path;
use std::time::Duration;

use pvtest::peers::PvBackend;
use pvtest::vhost_user::blk::{
    BlkRequest, DriverOptions, DwzRange, Layout, NativeBlkDriver, SECTOR, S_IOERR, S_OK, S_UNSUPP,
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_WRITE_ZEROES,
};
use pvtest::vhost_user::frontend::VIRTIO_RING_F_EVENT_IDX;
use pvtest::QemuStorageDaemon;

const MIB: u64 = 1 << 20;
const IMAGE_BYTES: u64 = 16 * MIB;
const TIMEOUT: Duration = Duration::from_secs(60);

/// Deterministic bytes (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn make_image(path: &Path, seed: u64) -> Vec<u8> {
    let bytes = Rng(seed).bytes(IMAGE_BYTES as usize);
    std::fs::write(path, &bytes).expect("write image");
    bytes
}

fn image(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read image")
}

fn range(sector: u64, len: usize) -> std::ops::Range<usize> {
    let start = (sector * SECTOR) as usize;
    start..start + len
}

/// What both backends must get right. `shadow` is the image content the
/// driver expects; it is checked against the file after flushes.
fn exercise(
    drv: &mut NativeBlkDriver,
    img: &Path,
    shadow: &mut [u8],
    seed: u64,
    discard_deallocates: bool,
) {
    let mut rng = Rng(seed);
    let cfg = drv.config().clone();
    assert_eq!(cfg.capacity_sectors, IMAGE_BYTES / SECTOR, "capacity");
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert!(drv.has_feature(bit), "feature {bit} not agreed");
    }
    let queues = drv.num_queues() as u16;

    // Reads of what the host wrote, every queue, both layouts.
    for q in 0..queues {
        for layout in [Layout::Direct, Layout::Indirect] {
            for len in [512u32, 4096, 65536] {
                let sector = rng.below(cfg.capacity_sectors - u64::from(len) / SECTOR);
                let queue = drv.queue(q).expect("queue");
                let c = queue
                    .run(&BlkRequest::Read { sector, len }, layout)
                    .expect("read");
                assert_eq!(c.status, Some(S_OK), "read status q{q} {layout:?}");
                assert_eq!(c.used_len, len + 1, "used length of a read");
                assert!(
                    c.data == shadow[range(sector, len as usize)],
                    "read q{q} {layout:?} sector {sector} len {len} differs from the image"
                );
            }
        }
    }

    // Writes of various sizes on every queue, then flush and compare files.
    for q in 0..queues {
        for layout in [Layout::Direct, Layout::Indirect] {
            for len in [512usize, 4096, 12288, 256 << 10] {
                let sector = rng.below(cfg.capacity_sectors - (len as u64) / SECTOR);
                let data = rng.bytes(len);
                let c = drv
                    .queue(q)
                    .expect("queue")
                    .run(
                        &BlkRequest::Write {
                            sector,
                            data: data.clone(),
                        },
                        layout,
                    )
                    .expect("write");
                assert_eq!(c.status, Some(S_OK), "write status");
                shadow[range(sector, len)].copy_from_slice(&data);
            }
        }
    }
    drv.flush().expect("flush");
    assert!(image(img) == shadow, "image differs after writes and flush");

    // Many requests in flight on every queue at once (indirect: one ring
    // descriptor each), non-overlapping 4 KiB blocks.
    let mut blocks: Vec<u64> = (0..cfg.capacity_sectors / 8).collect();
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut next_block = blocks.into_iter();
    for q in 0..queues {
        let mut tokens = Vec::new();
        let queue = drv.queue(q).expect("queue");
        for _ in 0..100 {
            let sector = next_block.next().expect("block") * 8;
            let data = rng.bytes(4096);
            shadow[range(sector, 4096)].copy_from_slice(&data);
            let t = queue
                .enqueue(&BlkRequest::Write { sector, data }, Layout::Indirect)
                .expect("enqueue");
            tokens.push(t);
        }
        queue.notify().expect("notify");
        let mut done = Vec::new();
        while done.len() < tokens.len() {
            queue.wait(&mut done, TIMEOUT).expect("wait");
        }
        for c in &done {
            assert_eq!(c.status, Some(S_OK), "batched write status");
        }
        let mut got: Vec<u64> = done.iter().map(|c| c.token).collect();
        got.sort_unstable();
        assert_eq!(got, tokens, "every token completes exactly once");
    }
    drv.queue(queues - 1)
        .expect("queue")
        .flush()
        .expect("flush");
    assert!(image(img) == shadow, "image differs after batched writes");

    // Write-zeroes (with and without unmap) and discard: the ranges read
    // back as zeros, from the device and from the file. Discarded data is
    // unspecified by virtio: only a backend known to deallocate (ours
    // punches a hole) must read back zeros; qemu-storage-daemon ignores
    // discards unless its blockdev has discard=unmap.
    let zero = |shadow: &mut [u8], r: DwzRange| {
        shadow[range(r.sector, r.sectors as usize * SECTOR as usize)].fill(0);
    };
    let wz = [
        DwzRange {
            sector: 2048,
            sectors: 64,
            unmap: false,
        },
        DwzRange {
            sector: 4096,
            sectors: 128,
            unmap: true,
        },
    ];
    drv.write_zeroes(&wz[..1]).expect("write zeroes");
    drv.write_zeroes(&wz[1..]).expect("write zeroes unmap");
    for r in wz {
        zero(shadow, r);
        let got = drv.read(r.sector, r.sectors * 512).expect("read zeroes");
        assert!(got.iter().all(|&b| b == 0), "write-zeroes range not zero");
    }
    let dis = DwzRange {
        sector: 8192,
        sectors: 256,
        unmap: false,
    };
    drv.discard(&[dis]).expect("discard");
    if discard_deallocates {
        zero(shadow, dis);
    }
    drv.flush().expect("flush");
    assert!(
        image(img) == shadow,
        "image differs after discard / write-zeroes"
    );

    // Errors the device must report, not act on.
    let q0 = drv.queue(0).expect("queue");
    let past_end = BlkRequest::Read {
        sector: cfg.capacity_sectors - 1,
        len: 1024,
    };
    assert_eq!(
        q0.run(&past_end, Layout::Direct).expect("run").status,
        Some(S_IOERR)
    );
    let unsupported = BlkRequest::Custom {
        req_type: 0x7777,
        sector: 0,
        readable: Vec::new(),
        writable_len: 0,
    };
    assert_eq!(
        q0.run(&unsupported, Layout::Direct).expect("run").status,
        Some(S_UNSUPP)
    );
    let c = q0.run(&BlkRequest::GetId, Layout::Direct).expect("get id");
    assert_eq!(c.status, Some(S_OK), "GET_ID status");
    assert!(image(img) == shadow, "refused requests changed the image");
}

/// Both queues busy at the same time, one driver thread each, 32 requests
/// in flight per queue: every queue gets exactly its own completions (the
/// backend keeps one completion-order window per queue) and the data is
/// right.
fn both_queues_at_once(drv: &mut NativeBlkDriver, img: &Path, shadow: &mut [u8]) {
    const PER_QUEUE: u64 = 600;
    let writes: Vec<Vec<(u64, Vec<u8>)>> = (0..2u64)
        .map(|q| {
            let mut rng = Rng(0xC0FFEE + q);
            (0..PER_QUEUE)
                .map(|i| ((q * PER_QUEUE + i) * 8 + 20480, rng.bytes(4096)))
                .collect()
        })
        .collect();
    std::thread::scope(|s| {
        for (q, list) in drv.queues_mut().iter_mut().zip(&writes) {
            s.spawn(move || {
                let mut tokens = Vec::new();
                let mut done = Vec::new();
                for (sector, data) in list {
                    while q.in_flight() >= 32 {
                        q.wait(&mut done, TIMEOUT).expect("wait");
                    }
                    let req = BlkRequest::Write {
                        sector: *sector,
                        data: data.clone(),
                    };
                    tokens.push(q.submit(&req, Layout::Indirect).expect("submit"));
                }
                while q.in_flight() > 0 {
                    q.wait(&mut done, TIMEOUT).expect("wait");
                }
                assert!(done.iter().all(|c| c.status == Some(S_OK)), "write status");
                let mut got: Vec<u64> = done.iter().map(|c| c.token).collect();
                got.sort_unstable();
                tokens.sort_unstable();
                assert_eq!(got, tokens, "queue {}: its own completions", q.index());
            });
        }
    });
    for (sector, data) in writes.iter().flatten() {
        shadow[range(*sector, 4096)].copy_from_slice(data);
    }
    drv.flush().expect("flush");
    assert!(image(img) == shadow, "image differs after two-queue writes");
}

/// A connection that agrees neither EVENT_IDX nor INDIRECT_DESC: writes
/// and reads with many requests in flight, checked against the image.
fn plain_rings(sock: &Path, img: &Path, shadow: &mut [u8]) {
    let mut opts = DriverOptions::new(1, 128);
    opts.event_idx = false;
    opts.indirect = false;
    let mut drv = NativeBlkDriver::connect_with(sock, &opts).expect("connect plain");
    assert!(
        !drv.has_feature(VIRTIO_RING_F_EVENT_IDX),
        "EVENT_IDX agreed"
    );
    let mut rng = Rng(0x0123);
    let q = drv.queue(0).expect("queue");
    let mut expect = Vec::new();
    for i in 0..40u64 {
        let sector = 16384 + i * 16;
        let data = rng.bytes(8192);
        q.enqueue(
            &BlkRequest::Write {
                sector,
                data: data.clone(),
            },
            Layout::Direct,
        )
        .expect("enqueue");
        shadow[range(sector, 8192)].copy_from_slice(&data);
        expect.push((sector, data));
    }
    q.notify().expect("notify");
    let mut done = Vec::new();
    while done.len() < 40 {
        q.wait(&mut done, TIMEOUT).expect("wait");
    }
    assert!(
        done.iter().all(|c| c.status == Some(S_OK)),
        "plain-ring writes"
    );
    for (sector, data) in expect {
        assert!(
            q.read(sector, 8192).expect("read") == data,
            "plain-ring read back"
        );
    }
    q.flush().expect("flush");
    assert!(
        image(img) == shadow,
        "image differs after plain-ring writes"
    );
}

#[test]
fn native_driver_on_pvbackend() {
    on_pvbackend("hybrid");
}

#[test]
fn native_driver_on_pvbackend_pool_mode() {
    on_pvbackend("pool");
}

#[test]
fn native_driver_on_pvbackend_sync_mode() {
    on_pvbackend("sync");
}

/// The whole exercise on our backend with one I/O mode (see
/// `host_backend::blk::io`).
fn on_pvbackend(io: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.img");
    let mut shadow = make_image(&img, 0x5EED_0001);
    let sock = dir.path().join("disk.sock");
    let backend = PvBackend::start(
        &[format!(
            "path={},socket={},serial=pv-native-disk,queues=2,queue-size=256,io={io}",
            img.display(),
            sock.display()
        )],
        &["--log-level", "info"],
        &dir.path().join("backend.log"),
    )
    .expect("start pvbackend");
    let mut drv = NativeBlkDriver::connect(&sock, 2, 256).expect("connect");
    let cfg = drv.config().clone();
    assert_eq!(cfg.num_queues, 2, "config num_queues");
    assert_eq!(cfg.blk_size, 512, "config blk_size");
    assert!(
        cfg.seg_max >= 1 && cfg.size_max >= 4096,
        "config limits {cfg:?}"
    );
    let id = drv.get_id().expect("get id");
    assert_eq!(&id[..14], b"pv-native-disk");
    assert!(id[14..].iter().all(|&b| b == 0), "id is NUL padded");
    exercise(&mut drv, &img, &mut shadow, 0xA11CE, true);
    both_queues_at_once(&mut drv, &img, &mut shadow);
    // A second connection after the first goes away (the VMM restarting).
    drop(drv);
    let mut drv = NativeBlkDriver::connect(&sock, 1, 64).expect("reconnect");
    assert!(
        drv.read(0, 4096).expect("read") == shadow[..4096],
        "after reconnect"
    );
    drop(drv);
    let st = backend.stop(Duration::from_secs(30)).expect("stop");
    assert!(st.is_some_and(|s| s.success()), "graceful stop: {st:?}");
}

#[test]
fn native_driver_on_qemu_storage_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.img");
    let mut shadow = make_image(&img, 0x5EED_0002);
    let sock = dir.path().join("qsd.sock");
    let qsd = QemuStorageDaemon::start(&img, &sock, 2).expect("start qemu-storage-daemon");
    let mut drv = NativeBlkDriver::connect(qsd.socket(), 2, 256).expect("connect");
    exercise(&mut drv, &img, &mut shadow, 0xB0B, false);
    drop(drv);
    plain_rings(qsd.socket(), &img, &mut shadow);
}
