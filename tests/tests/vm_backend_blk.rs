//! Our host backend's vhost-user-blk device against the guest Linux
//! kernel's own virtio-blk driver (a real peer): data, flush, discard,
//! write-zeroes, GET_ID, a filesystem, multiqueue, graceful stop.

use std::process::Command;
use std::time::Duration;

use pv_blk::pattern;
use pvtest::peers::PvBackend;
use pvtest::Guest;

const BLOCK: usize = 4096;
const MIB: u64 = 1 << 20;

#[test]
fn kernel_virtio_blk_on_our_backend() {
    const SEED: u64 = 0xB10C_0001;
    const DATA_MIB: u64 = 32;
    const BLOCKS: u64 = DATA_MIB * MIB / BLOCK as u64;
    // Ranges the guest discards and zeroes after writing the pattern.
    const DISCARD: (u64, u64) = (4 * MIB, 2 * MIB);
    const ZERO: (u64, u64) = (10 * MIB, MIB);

    let dir = tempfile::tempdir().expect("tempdir");
    let data_img = dir.path().join("data.img");
    let fs_img = dir.path().join("fs.img");
    for (img, size) in [(&data_img, DATA_MIB * MIB), (&fs_img, 64 * MIB)] {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(size))
            .expect("image");
    }
    let (sock_data, sock_fs) = (dir.path().join("data.sock"), dir.path().join("fs.sock"));
    let backend = PvBackend::start(
        &[
            format!(
                "path={},socket={},serial=pv-data-disk,queues=2",
                data_img.display(),
                sock_data.display()
            ),
            format!(
                "path={},socket={},serial=pv-fs-disk,queues=2",
                fs_img.display(),
                sock_fs.display()
            ),
        ],
        &["--log-level", "info", "--metrics", "127.0.0.1:0"],
        &dir.path().join("backend.log"),
    )
    .expect("backend");

    let script = format!(
        r#"
echo "pvtest: vda serial $(cat /sys/block/vda/serial) queues $(ls /sys/block/vda/mq | wc -l)"
[ "$(cat /sys/block/vda/serial)" = pv-data-disk ]
[ "$(cat /sys/block/vdb/serial)" = pv-fs-disk ]
[ "$(ls /sys/block/vda/mq | wc -l)" = 2 ]
[ "$(cat /sys/block/vda/queue/discard_max_bytes)" != 0 ]
[ "$(cat /sys/block/vda/queue/write_zeroes_max_bytes)" != 0 ]
# whole-disk pattern, read back from the device (not the page cache)
pvio write /dev/vda --seed {SEED}
echo 3 > /proc/sys/vm/drop_caches
pvio verify /dev/vda --seed {SEED}
# discard and write-zeroes
blkdiscard -o {d_off} -l {d_len} /dev/vda
pvio zeroout /dev/vda --offset {z_off} --len {z_len}
sync
# a filesystem, written, unmounted, remounted and checked
mke2fs -q /dev/vdb
mount -t ext2 /dev/vdb /mnt
dd if=/dev/urandom of=/mnt/blob bs=64k count=64 2>/dev/null
sha256sum /mnt/blob > /tmp/blob.sum
mkdir /mnt/dir && for i in $(seq 1 50); do echo "file $i" > /mnt/dir/f$i; done
umount /mnt
echo 3 > /proc/sys/vm/drop_caches
mount -t ext2 -o ro /dev/vdb /mnt
sha256sum -c /tmp/blob.sum
[ "$(cat /mnt/dir/f50)" = "file 50" ]
umount /mnt
echo "pvtest: backend scenario done"
"#,
        d_off = DISCARD.0,
        d_len = DISCARD.1,
        z_off = ZERO.0,
        z_len = ZERO.1,
    );
    let out = Guest::builder("backend-blk-kernel-driver")
        .cpus(2)
        .modules(["virtio_pci", "virtio_blk"])
        .binary("pvio")
        .vhost_user_blk(&sock_data, 2)
        .vhost_user_blk(&sock_fs, 2)
        .script(&script)
        .timeout(Duration::from_secs(600))
        .run()
        .expect("harness");
    if !out.passed() {
        panic!(
            "{}\n--- backend log ---\n{}",
            out.failure_report(),
            backend.log()
        );
    }
    assert!(out.console_has("pvtest: backend scenario done"));

    // The metrics endpoint saw every operation the scenario issued, on the
    // disks it issued them to, and both queues of the data disk worked.
    let m = backend.fetch_metrics().expect("metrics");
    let v = |series: &str| PvBackend::metric(&m, series).unwrap_or(0.0);
    for (disk, op) in [
        ("data", "read"),
        ("data", "write"),
        ("data", "get_id"),
        ("data", "discard"),
        ("data", "write_zeroes"),
        ("fs", "write"),
        ("fs", "flush"),
    ] {
        let s = format!("pvbackend_blk_requests_total{{disk=\"{disk}\",op=\"{op}\"}}");
        assert!(v(&s) >= 1.0, "{s} is {} in:\n{m}", v(&s));
    }
    let written = v(r#"pvbackend_blk_bytes_total{disk="data",op="write"}"#);
    assert!(
        written >= (DATA_MIB * MIB) as f64,
        "data disk wrote only {written} bytes"
    );
    for q in 0..2 {
        let s = format!("pvbackend_blk_kicks_total{{disk=\"data\",queue=\"{q}\"}}");
        assert!(v(&s) >= 1.0, "queue {q} never kicked:\n{m}");
    }
    for disk in ["data", "fs"] {
        let problems = PvBackend::blk_error_problems(&m, disk);
        assert!(problems.is_empty(), "{problems:?} in:\n{m}");
    }

    // Graceful stop: exit status 0, sockets removed.
    let status = backend
        .stop(Duration::from_secs(30))
        .expect("signal")
        .expect("backend exits after SIGTERM");
    assert!(status.success(), "backend exit status {status}");
    assert!(
        !sock_data.exists() && !sock_fs.exists(),
        "sockets removed on stop"
    );

    // Host checks: the pattern everywhere except the discarded and zeroed
    // ranges, which read back as zeroes.
    let data = std::fs::read(&data_img).expect("read image");
    let zero_ranges = [DISCARD, ZERO];
    let mut bad = Vec::new();
    for (i, block) in data.chunks_exact(BLOCK).enumerate().take(BLOCKS as usize) {
        let at = i as u64 * BLOCK as u64;
        let zeroed = zero_ranges.iter().any(|(o, l)| at >= *o && at < o + l);
        let ok = if zeroed {
            block.iter().all(|b| *b == 0)
        } else {
            pattern::verify(block, SEED, i as u64).is_ok()
        };
        if !ok && bad.len() < 5 {
            bad.push((i, zeroed));
        }
    }
    assert!(
        bad.is_empty(),
        "bad blocks in the host image (index, in zeroed range): {bad:?}"
    );

    // The guest's filesystem is clean by the host's e2fsck.
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&fs_img)
        .output()
        .expect("run e2fsck (e2fsprogs)");
    assert!(
        fsck.status.success(),
        "e2fsck found problems:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}
