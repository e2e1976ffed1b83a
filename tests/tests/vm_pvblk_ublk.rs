//! `pvblkd` exporting its disk through ublk (`/dev/ublkbN`) instead of NBD,
//! on bookworm-backports' 6.12 kernel (6.1 has no `ublk_drv`): the same
//! checks as the NBD test on QEMU's built-in virtio-blk, then SIGTERM
//! hands the device back to the kernel's virtio_blk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pv_blk::pattern;
use pvtest::{Guest, GuestBuilder, KernelChoice};

const BLOCK: usize = 4096;
const MIB: u64 = 1 << 20;
const DATA_MIB: u64 = 32;
const FS_MIB: u64 = 64;
/// Discarded after the pattern: reads back as the pattern or as zeroes
/// (discard is advisory; QEMU's `-drive` ignores it by default).
const DISCARD: (u64, u64) = (4 * MIB, 2 * MIB);
/// Zeroed after the pattern (BLKZEROOUT: ublk passes WRITE_ZEROES on to
/// the device): zeroes.
const ZERO: (u64, u64) = (10 * MIB, MIB);

/// Shell helpers: start `pvblkd --export ublk` for the disk `/dev/$1` as
/// `/dev/ublkb$2` and wait until the export has a size; stop it with
/// SIGTERM and wait until the kernel's virtio_blk has the device again
/// (under the first free vdX name), writing that name to /tmp/disk$2.
const HELPERS: &str = r#"
bdf_of() { basename "$(readlink -f /sys/block/$1/device/..)"; }
start_pvblkd() {
  disk=$1; n=$2; bdf=$(bdf_of $disk)
  echo $bdf > /tmp/bdf$n
  echo "pvtest: $disk is $bdf"
  pvblkd --pci $bdf --export ublk --ublk-id $n > /tmp/pvblkd$n.log 2>&1 &
  echo $! > /tmp/pvblkd$n.pid
  i=0
  while [ ! -b /dev/ublkb$n ] || [ "$(cat /sys/block/ublkb$n/size 2>/dev/null)" = 0 ] || ! grep -q "serving /dev/ublkb$n" /tmp/pvblkd$n.log; do
    i=$((i+1))
    if [ $i -gt 300 ] || ! kill -0 $(cat /tmp/pvblkd$n.pid) 2>/dev/null; then
      echo "pvtest: pvblkd for $disk did not come up"; cat /tmp/pvblkd$n.log; return 1
    fi
    sleep 0.2
  done
  [ ! -e /dev/$disk ] || { echo "pvtest: /dev/$disk still there"; return 1; }
  echo "pvtest: ublkb$n up ($(cat /sys/block/ublkb$n/size) sectors)"
}
stop_pvblkd() {
  n=$1; pid=$(cat /tmp/pvblkd$n.pid); bdf=$(cat /tmp/bdf$n)
  kill -TERM $pid
  rc=0; wait $pid || rc=$?
  cat /tmp/pvblkd$n.log
  [ $rc = 0 ] || { echo "pvtest: pvblkd exit status $rc"; return 1; }
  [ ! -e /sys/block/ublkb$n ] || { echo "pvtest: ublkb$n still there"; return 1; }
  [ ! -e /dev/ublkc$n ] || { echo "pvtest: /dev/ublkc$n still there"; return 1; }
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

fn make_images(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data.img");
    let fs = dir.join("fs.img");
    for (img, size) in [(&data, DATA_MIB * MIB), (&fs, FS_MIB * MIB)] {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(size))
            .expect("image");
    }
    (data, fs)
}

fn ublk_guest(name: &str) -> GuestBuilder {
    Guest::builder(name)
        .kernel(KernelChoice::Backports)
        .cpus(2)
        .memory_mib(768)
        .modules(["virtio_pci", "virtio_blk", "ublk_drv", "uio_pci_generic"])
        .binary("pvio")
        .binary("pvblkd")
        .timeout(Duration::from_secs(900))
}

/// Host-side checks after the guest powered off: the pattern everywhere
/// but the zeroed range (zeroes) and the discarded range (pattern or
/// zeroes); the filesystem clean by the host's e2fsck.
fn check_images(data_img: &Path, fs_img: &Path, seed: u64) {
    let data = std::fs::read(data_img).expect("read image");
    assert_eq!(data.len() as u64, DATA_MIB * MIB);
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

/// The NBD test's scenario, through /dev/ublkb0 and /dev/ublkb1.
#[test]
fn ublk_export_on_qemu_virtio_blk() {
    const SEED: u64 = 0x0B1C_0001;
    let dir = tempfile::tempdir().expect("tempdir");
    let (data_img, fs_img) = make_images(dir.path());
    let script = format!(
        r#"{HELPERS}
start_pvblkd vda 0
start_pvblkd vdb 1
[ "$(cat /sys/block/ublkb0/size)" = {data_sectors} ]
grep -q "export: Ublk" /tmp/pvblkd0.log
# whole-disk pattern through the export, read back from the device
pvio write /dev/ublkb0 --seed {SEED}
echo 3 > /proc/sys/vm/drop_caches
pvio verify /dev/ublkb0 --seed {SEED}
pvio verify /dev/ublkb0 --seed {SEED} --direct --start 100 --count 200
# discard, write-zeroes, flush
blkdiscard -o {d_off} -l {d_len} /dev/ublkb0
pvio zeroout /dev/ublkb0 --offset {z_off} --len {z_len}
sync
# a filesystem, written, unmounted, remounted read-only and checked
mke2fs -q -b 4096 /dev/ublkb1
mount -t ext2 /dev/ublkb1 /mnt
dd if=/dev/urandom of=/mnt/blob bs=64k count=64 2>/dev/null
sha256sum /mnt/blob > /tmp/blob.sum
mkdir /mnt/dir && for i in $(seq 1 50); do echo "file $i" > /mnt/dir/f$i; done
umount /mnt
echo 3 > /proc/sys/vm/drop_caches
mount -t ext2 -o ro /dev/ublkb1 /mnt
sha256sum -c /tmp/blob.sum
[ "$(cat /mnt/dir/f50)" = "file 50" ]
umount /mnt
# SIGTERM: stop and delete the ublk device, flush, the kernel driver
# takes the disks back
stop_pvblkd 1
stop_pvblkd 0
# what the runtime wrote, read through the kernel's own driver
pvio verify /dev/$(cat /tmp/disk0) --seed {SEED} --start 0 --count 256
echo "pvtest: ublk scenario done"
"#,
        data_sectors = DATA_MIB * MIB / 512,
        d_off = DISCARD.0,
        d_len = DISCARD.1,
        z_off = ZERO.0,
        z_len = ZERO.1,
    );
    let out = ublk_guest("pvblk-ublk-qemu")
        .virtio_blk_disk(&data_img)
        .virtio_blk_disk(&fs_img)
        .script(&script)
        .run()
        .expect("harness");
    out.expect_pass();
    assert!(out.console_has("pvtest: ublk scenario done"));
    assert!(out.console_has("pvblkd: serving /dev/ublkb0"));
    assert!(out.console_has("ublk device 0 deleted"));
    assert!(out.console_has("device cache flushed"));
    check_images(&data_img, &fs_img, SEED);
}

/// SIGTERM with readers busy on the export: STOP_DEV drains while the
/// daemon serves, the daemon exits 0, the kernel driver has the device
/// back with the data intact, and the device can be exported again.
#[test]
fn ublk_sigterm_under_load_hands_the_device_back() {
    const SEED: u64 = 0x0B1C_0003;
    let dir = tempfile::tempdir().expect("tempdir");
    let (data_img, _) = make_images(dir.path());
    let script = format!(
        r#"{HELPERS}
start_pvblkd vda 0
pvio write /dev/ublkb0 --seed {SEED} --count 1024
pvio randread /dev/ublkb0 --seconds 30 --jobs 4 > /tmp/reader.log 2>&1 &
reader=$!
sleep 3
stop_pvblkd 0
wait $reader || echo "pvtest: reader ended with an error after the stop (expected)"
grep -q "device cache flushed" /tmp/pvblkd0.log
grep -q "released to the kernel" /tmp/pvblkd0.log
[ "$(cat /sys/bus/pci/devices/$(cat /tmp/bdf0)/driver_override)" = "(null)" ]
pvio verify /dev/$(cat /tmp/disk0) --seed {SEED} --count 1024
start_pvblkd $(cat /tmp/disk0) 0
pvio verify /dev/ublkb0 --seed {SEED} --count 1024 --direct
stop_pvblkd 0
echo "pvtest: ublk handback done"
"#
    );
    let out = ublk_guest("pvblk-ublk-sigterm")
        .virtio_blk_disk(&data_img)
        .script(&script)
        .run()
        .expect("harness");
    out.expect_pass();
    assert!(out.console_has("pvtest: ublk handback done"));
    assert!(out.console_has("is back as /dev/vd"));
    assert!(out.console_has("(virtio-pci)"));
}

/// The 6.12 kernel boots under the harness and `ublk_drv` (with its
/// dependencies, resolved from the decompressed modules) gives the
/// control device.
#[test]
fn backports_kernel_boots_with_ublk() {
    Guest::builder("ublk-kernel")
        .kernel(KernelChoice::Backports)
        .cpus(2)
        .modules(["virtio_pci", "virtio_blk", "ublk_drv"])
        .script(
            "uname -r | grep -q '^6\\.12\\.'\n\
             test -c /dev/ublk-control\n\
             echo pvtest: ublk-control present on $(uname -r)\n",
        )
        .timeout(Duration::from_secs(300))
        .run()
        .expect("harness")
        .expect_pass();
}
