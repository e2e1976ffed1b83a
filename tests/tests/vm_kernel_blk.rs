//! The `pv_blk` kernel module (pv-blk/kernel) in the Rust guest kernel
//! ([`KernelChoice::Rust`]): a blk-mq driver built by the harness from our
//! `no_std` crates (tests/src/kernel/extmod.rs) on the pv-blk core, the
//! validated virtqueue and our virtio-pci transport.
//!
//! The pvblkd scenario's data-disk checks (tests/src/pvblkd_scenario.rs),
//! run through the module: the module binds one disk by PCI address (the C
//! `virtio_pci` keeps the other), the checks run on it, `rmmod` hands it
//! back and the C `virtio_blk` re-reads the pattern; then the module binds
//! the second disk and a filesystem is made on it. The host checks both
//! images (pattern, zeroes, e2fsck) after the guest is gone.

use std::path::Path;
use std::time::Duration;

use pvtest::kernel::extmod;
use pvtest::peers::PvBackend;
use pvtest::pvblkd_scenario::{
    check_images, data_disk_checks, make_images, DATA_MIB, DIRECT_VERIFY_SH,
};
use pvtest::{Guest, GuestBuilder, KernelChoice};

const MIB: u64 = 1 << 20;

/// What the guest's kernel log may never hold.
const DMESG_BAD: &str = "Oops|BUG|WARNING|Call Trace|pv_blk: (device fault|reset failed)";

fn module() -> Vec<u8> {
    let ko = extmod::build_module(&extmod::pv_blk()).expect("build pv_blk.ko");
    std::fs::read(&ko).expect("read pv_blk.ko")
}

/// `bind_pv BDF` frees the disk at `BDF` from `virtio-pci`, loads the
/// module for it and waits for `/dev/pvblk0`; `unbind_pv` unloads it,
/// gives the device back to `virtio-pci` and writes the name the C driver
/// gives the disk to /tmp/back. Every wait is bounded.
const BIND_SH: &str = r#"
bdf_of() { basename "$(readlink -f /sys/block/$1/device/..)"; }
pci_id() {
  bus=$((0x$(echo $1 | cut -d: -f2)))
  slot=$((0x$(echo $1 | cut -d: -f3 | cut -d. -f1)))
  fn=$(echo $1 | cut -d. -f2)
  echo $(( (bus << 8) | (slot << 3) | fn ))
}
drv() { basename "$(readlink /sys/bus/pci/devices/$1/driver)"; }
bind_pv() {
  bdf=$1; echo $bdf > /tmp/bdf
  echo $bdf > /sys/bus/pci/devices/$bdf/driver/unbind
  insmod /lib/modules/pv_blk.ko pci_dev_id=$(pci_id $bdf)
  i=0
  while [ ! -b /dev/pvblk0 ]; do
    i=$((i+1)); [ $i -le 300 ] || { echo "pvtest: no /dev/pvblk0"; dmesg | tail -20; return 1; }
    sleep 0.2
  done
  echo "pvtest: $bdf is pvblk0 ($(cat /sys/block/pvblk0/size) sectors), driver $(drv $bdf)"
}
unbind_pv() {
  bdf=$(cat /tmp/bdf)
  rmmod pv_blk
  [ ! -e /sys/block/pvblk0 ] || { echo "pvtest: pvblk0 still there"; return 1; }
  echo $bdf > /sys/bus/pci/drivers/virtio-pci/bind
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
  echo $back > /tmp/back
  echo "pvtest: $bdf is back as /dev/$back ($(drv $bdf))"
}
"#;

/// The guest script: data checks on the first disk through the module,
/// the C driver re-verifies, a filesystem made on the second disk through
/// the module, and a clean kernel log. Ends with `pvtest: kernel blk done`.
fn scenario(seed: u64) -> String {
    format!(
        r#"{DIRECT_VERIFY_SH}{BIND_SH}
set -e
bdf0=$(bdf_of vda); bdf1=$(bdf_of vdb)
bind_pv $bdf0
echo "pvtest: vdb stays with $(drv $bdf1)"
[ "$(cat /sys/block/pvblk0/size)" = {data_sectors} ]
echo "pvtest: pvblk0 write cache: $(cat /sys/block/pvblk0/queue/write_cache)"
{data}unbind_pv
# what the module wrote, read through the kernel's own driver
pvio verify /dev/$(cat /tmp/back) --seed {seed} --start 0 --count 256
bind_pv $bdf1
# a filesystem made through the module; the host's e2fsck checks it (the
# guest kernel has no ext2/ext4 driver to mount it yet)
mke2fs -q -b 4096 /dev/pvblk0
sync
unbind_pv
if dmesg | grep -E '{DMESG_BAD}'; then echo "pvtest: kernel log not clean"; exit 1; fi
dmesg | grep pv_blk
echo "pvtest: kernel blk done"
"#,
        data_sectors = DATA_MIB * MIB / 512,
        data = data_disk_checks("pvblk0", seed),
    )
}

fn guest(name: &str, seed: u64) -> GuestBuilder {
    Guest::builder(name)
        .kernel(KernelChoice::Rust)
        .cpus(2)
        .memory_mib(512)
        .binary("pvio")
        .file("/lib/modules/pv_blk.ko", 0o644, &module())
        .script(&scenario(seed))
        .timeout(Duration::from_secs(1200))
}

fn check(out: &pvtest::Outcome, data_img: &Path, fs_img: &Path, seed: u64) {
    out.expect_pass();
    for needle in [
        "is pvblk0 (",
        "driver pv_blk",
        "pvtest: vdb stays with virtio-pci",
        "pvtest: pvblk0 write cache: write back",
        "(virtio-pci)",
        "pvtest: kernel blk done",
    ] {
        assert!(
            out.console_has(needle),
            "missing '{needle}'\n{}",
            out.failure_report()
        );
    }
    check_images(data_img, fs_img, seed);
}

/// Against QEMU's built-in virtio-blk.
#[test]
fn module_drives_qemu_virtio_blk_and_hands_it_back() {
    const SEED: u64 = 0x6B62_6C6B_0001;
    let dir = tempfile::tempdir().expect("tempdir");
    let (data_img, fs_img) = make_images(dir.path());
    let out = guest("kernel-blk-qemu", SEED)
        .virtio_blk_disk(&data_img)
        .virtio_blk_disk(&fs_img)
        .run()
        .expect("harness");
    check(&out, &data_img, &fs_img, SEED);
}

/// Against our host backend (vhost-user-blk, served by `pvbackend`).
#[test]
fn module_drives_pvbackend_and_hands_it_back() {
    const SEED: u64 = 0x6B62_6C6B_0002;
    let dir = tempfile::tempdir().expect("tempdir");
    let (data_img, fs_img) = make_images(dir.path());
    let (sock_data, sock_fs) = (dir.path().join("data.sock"), dir.path().join("fs.sock"));
    let backend = PvBackend::start(
        &[
            format!(
                "path={},socket={},serial=pv-data-disk",
                data_img.display(),
                sock_data.display()
            ),
            format!(
                "path={},socket={},serial=pv-fs-disk",
                fs_img.display(),
                sock_fs.display()
            ),
        ],
        &["--log-level", "info"],
        &dir.path().join("backend.log"),
    )
    .expect("backend");
    let out = guest("kernel-blk-pvbackend", SEED)
        .vhost_user_blk(&sock_data, 1)
        .vhost_user_blk(&sock_fs, 1)
        .run()
        .expect("harness");
    drop(backend);
    check(&out, &data_img, &fs_img, SEED);
}
