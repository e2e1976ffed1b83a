//! The pv-blk Linux guest runtime (`pvblkd`) in a guest: it claims a
//! virtio-blk PCI device from the kernel, drives it with the pv-blk core and
//! exports it as `/dev/nbdN`; the guest's own tools and filesystems then use
//! it. Against QEMU's built-in virtio-blk and against our host backend's
//! vhost-user-blk; then SIGTERM hands the device back to the kernel driver.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pv_blk::pattern;
use pvtest::peers::PvBackend;
use pvtest::{Guest, GuestBuilder};

const BLOCK: usize = 4096;
const MIB: u64 = 1 << 20;
const DATA_MIB: u64 = 32;
const FS_MIB: u64 = 64;
/// Discarded after the pattern: reads back as the pattern or as zeroes
/// (discard is advisory; QEMU's `-drive` ignores it by default).
const DISCARD: (u64, u64) = (4 * MIB, 2 * MIB);
/// Zeroed after the pattern (WRITE_ZEROES through BLKZEROOUT): zeroes.
const ZERO: (u64, u64) = (10 * MIB, MIB);

/// Shell helpers: start `pvblkd` for the disk `/dev/$1` on `/dev/nbd$2`
/// and wait until the export has a size; stop it with SIGTERM and wait
/// until the kernel's virtio_blk has the device again (its disk may come
/// back under another vdX name: the name is the first free index), writing
/// that name to /tmp/disk$2.
const HELPERS: &str = r#"
bdf_of() { basename "$(readlink -f /sys/block/$1/device/..)"; }
start_pvblkd() {
  disk=$1; n=$2; bdf=$(bdf_of $disk)
  echo $bdf > /tmp/bdf$n
  echo "pvtest: $disk is $bdf"
  pvblkd --pci $bdf --nbd $n > /tmp/pvblkd$n.log 2>&1 &
  echo $! > /tmp/pvblkd$n.pid
  i=0
  while [ "$(cat /sys/block/nbd$n/size)" = 0 ]; do
    i=$((i+1))
    if [ $i -gt 300 ] || ! kill -0 $(cat /tmp/pvblkd$n.pid) 2>/dev/null; then
      echo "pvtest: pvblkd for $disk did not come up"; cat /tmp/pvblkd$n.log; return 1
    fi
    sleep 0.2
  done
  [ ! -e /dev/$disk ] || { echo "pvtest: /dev/$disk still there"; return 1; }
  echo "pvtest: nbd$n up ($(cat /sys/block/nbd$n/size) sectors)"
}
stop_pvblkd() {
  n=$1; pid=$(cat /tmp/pvblkd$n.pid); bdf=$(cat /tmp/bdf$n)
  kill -TERM $pid
  rc=0; wait $pid || rc=$?
  cat /tmp/pvblkd$n.log
  [ $rc = 0 ] || { echo "pvtest: pvblkd exit status $rc"; return 1; }
  i=0
  while ! ls /sys/bus/pci/devices/$bdf/virtio*/block/ >/dev/null 2>&1; do
    i=$((i+1)); [ $i -le 150 ] || { echo "pvtest: no disk came back on $bdf"; return 1; }
    sleep 0.2
  done
  back=$(ls /sys/bus/pci/devices/$bdf/virtio*/block/)
  i=0
  while [ ! -b /dev/$back ]; do
    i=$((i+1)); [ $i -le 150 ] || { echo "pvtest: /dev/$back did not appear"; return 1; }
    sleep 0.2
  done
  echo $back > /tmp/disk$n
  echo "pvtest: $bdf is back as /dev/$back ($(basename $(readlink /sys/bus/pci/devices/$bdf/driver)))"
}
"#;

fn make_images(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("data.img");
    let fs = dir.join("fs.img");
    for (img, size) in [(&data, DATA_MIB * MIB), (&fs, FS_MIB * MIB)] {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(size))
            .expect("image");
    }
    (data, fs)
}

/// The whole scenario on the guest disks `vda` (data) and `vdb` (fs).
fn scenario(seed: u64) -> String {
    format!(
        r#"{HELPERS}
start_pvblkd vda 0
start_pvblkd vdb 1
[ "$(cat /sys/block/nbd0/size)" = {data_sectors} ]
# whole-disk pattern through the export, read back from the device
pvio write /dev/nbd0 --seed {seed}
echo 3 > /proc/sys/vm/drop_caches
pvio verify /dev/nbd0 --seed {seed}
pvio verify /dev/nbd0 --seed {seed} --direct --start 100 --count 200
# discard, write-zeroes, flush
blkdiscard -o {d_off} -l {d_len} /dev/nbd0
pvio zeroout /dev/nbd0 --offset {z_off} --len {z_len}
sync
# a filesystem, written, unmounted, remounted read-only and checked
mke2fs -q -b 4096 /dev/nbd1
mount -t ext2 /dev/nbd1 /mnt
dd if=/dev/urandom of=/mnt/blob bs=64k count=64 2>/dev/null
sha256sum /mnt/blob > /tmp/blob.sum
mkdir /mnt/dir && for i in $(seq 1 50); do echo "file $i" > /mnt/dir/f$i; done
umount /mnt
echo 3 > /proc/sys/vm/drop_caches
mount -t ext2 -o ro /dev/nbd1 /mnt
sha256sum -c /tmp/blob.sum
[ "$(cat /mnt/dir/f50)" = "file 50" ]
umount /mnt
# SIGTERM: flush, release, the kernel driver takes the disks back
stop_pvblkd 1
stop_pvblkd 0
# what the runtime wrote, read through the kernel's own driver
pvio verify /dev/$(cat /tmp/disk0) --seed {seed} --start 0 --count 256
echo "pvtest: runtime scenario done"
"#,
        data_sectors = DATA_MIB * MIB / 512,
        d_off = DISCARD.0,
        d_len = DISCARD.1,
        z_off = ZERO.0,
        z_len = ZERO.1,
    )
}

fn runtime_guest(name: &str) -> GuestBuilder {
    Guest::builder(name)
        .cpus(2)
        .memory_mib(768)
        .modules(["virtio_pci", "virtio_blk", "nbd", "uio_pci_generic"])
        .binary("pvio")
        .binary("pvblkd")
        .timeout(Duration::from_secs(900))
}

/// Host-side checks after the guest powered off: the pattern everywhere
/// but the zeroed range (zeroes) and the discarded range (pattern or
/// zeroes); the filesystem clean by the host's e2fsck.
fn check_images(data_img: &Path, fs_img: &Path, seed: u64) {
    let data = std::fs::read(data_img).expect("read image");
    let mut bad = Vec::new();
    for (i, block) in data.chunks_exact(BLOCK).enumerate() {
        let at = i as u64 * BLOCK as u64;
        let in_range = |(o, l): (u64, u64)| at >= o && at < o + l;
        let zero = block.iter().all(|b| *b == 0);
        let stamped = pattern::verify(block, seed, i as u64).is_ok();
        let ok = if in_range(ZERO) {
            zero
        } else if in_range(DISCARD) {
            zero || stamped
        } else {
            stamped
        };
        if !ok && bad.len() < 5 {
            bad.push(i);
        }
    }
    assert!(bad.is_empty(), "bad blocks in the host image: {bad:?}");
    assert_eq!(data.len() as u64, DATA_MIB * MIB);

    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(fs_img)
        .output()
        .expect("run e2fsck (e2fsprogs)");
    assert!(
        fsck.status.success(),
        "e2fsck found problems:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

#[test]
fn runtime_on_qemu_virtio_blk() {
    const SEED: u64 = 0x9B1C_0001;
    let dir = tempfile::tempdir().expect("tempdir");
    let (data_img, fs_img) = make_images(dir.path());
    let out = runtime_guest("pvblk-runtime-qemu")
        .virtio_blk_disk(&data_img)
        .virtio_blk_disk(&fs_img)
        .script(&scenario(SEED))
        .run()
        .expect("harness");
    out.expect_pass();
    assert!(out.console_has("pvtest: runtime scenario done"));
    assert!(out.console_has("pvblkd: serving /dev/nbd0"));
    assert!(out.console_has("device cache flushed"));
    check_images(&data_img, &fs_img, SEED);
}

#[test]
fn runtime_on_our_vhost_user_backend() {
    const SEED: u64 = 0x9B1C_0002;
    let dir = tempfile::tempdir().expect("tempdir");
    let (data_img, fs_img) = make_images(dir.path());
    let (sock_data, sock_fs) = (dir.path().join("data.sock"), dir.path().join("fs.sock"));
    let backend = PvBackend::start(
        &[
            format!(
                "path={},socket={},serial=pv-data-disk,queues=1",
                data_img.display(),
                sock_data.display()
            ),
            format!(
                "path={},socket={},serial=pv-fs-disk,queues=1",
                fs_img.display(),
                sock_fs.display()
            ),
        ],
        &["--log-level", "info", "--metrics", "127.0.0.1:0"],
        &dir.path().join("backend.log"),
    )
    .expect("backend");
    let out = runtime_guest("pvblk-runtime-pvbackend")
        .vhost_user_blk(&sock_data, 1)
        .vhost_user_blk(&sock_fs, 1)
        .script(&scenario(SEED))
        .run()
        .expect("harness");
    if !out.passed() {
        panic!(
            "{}\n--- backend log ---\n{}",
            out.failure_report(),
            backend.log()
        );
    }
    assert!(out.console_has("pvtest: runtime scenario done"));

    // The backend saw the runtime's reads, writes, discard and flushes, and
    // no errors. (No write-zeroes: the 6.1 kernel's nbd driver has no
    // NBD_CMD_WRITE_ZEROES, so BLKZEROOUT arrives as writes of zeroes; the
    // host check below still sees the range zeroed.)
    let m = backend.fetch_metrics().expect("metrics");
    let v = |series: &str| PvBackend::metric(&m, series).unwrap_or(0.0);
    for op in ["read", "write", "discard", "flush"] {
        let s = format!("pvbackend_blk_requests_total{{disk=\"data\",op=\"{op}\"}}");
        assert!(v(&s) >= 1.0, "{s} is {} in:\n{m}", v(&s));
    }
    assert!(
        !m.contains("pvbackend_blk_errors_total{"),
        "unexpected errors:\n{m}"
    );
    let status = backend
        .stop(Duration::from_secs(30))
        .expect("signal")
        .expect("backend exits after SIGTERM");
    assert!(status.success(), "backend exit status {status}");
    check_images(&data_img, &fs_img, SEED);
}

/// SIGTERM in the middle of I/O: the daemon disconnects NBD, finishes what
/// is in flight, flushes, exits 0, and the kernel driver takes the device
/// back with the data written before intact.
#[test]
fn sigterm_hands_the_device_back() {
    const SEED: u64 = 0x9B1C_0003;
    let dir = tempfile::tempdir().expect("tempdir");
    let (data_img, _) = make_images(dir.path());
    let script = format!(
        r#"{HELPERS}
start_pvblkd vda 0
pvio write /dev/nbd0 --seed {SEED} --count 1024
# readers busy on the export while the daemon is told to stop
pvio randread /dev/nbd0 --seconds 30 --jobs 4 > /tmp/reader.log 2>&1 &
reader=$!
sleep 3
stop_pvblkd 0
wait $reader || echo "pvtest: reader ended with an error after the disconnect (expected)"
grep -q "device cache flushed" /tmp/pvblkd0.log
grep -q "released to the kernel" /tmp/pvblkd0.log
[ "$(cat /sys/bus/pci/devices/$(cat /tmp/bdf0)/driver_override)" = "(null)" ]
pvio verify /dev/$(cat /tmp/disk0) --seed {SEED} --count 1024
# the device can be claimed again
start_pvblkd $(cat /tmp/disk0) 0
pvio verify /dev/nbd0 --seed {SEED} --count 1024 --direct
stop_pvblkd 0
echo "pvtest: handback done"
"#
    );
    let out = runtime_guest("pvblk-runtime-sigterm")
        .virtio_blk_disk(&data_img)
        .script(&script)
        .run()
        .expect("harness");
    out.expect_pass();
    assert!(out.console_has("pvtest: handback done"));
    assert!(out.console_has("is back as /dev/vd"));
    assert!(out.console_has("(virtio-pci)"));
}
