//! The guest scenario of the `pvblkd` VM tests, for either export: the
//! kernel NBD driver (`/dev/nbdN`, the 6.1 kernel) or ublk (`/dev/ublkbN`,
//! bookworm-backports' 6.12 kernel). One script, one set of host checks,
//! so both exports are held to exactly the same bar.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pv_blk::pattern;

use crate::kernel::KernelChoice;
use crate::{Guest, GuestBuilder};

const BLOCK: usize = 4096;
const MIB: u64 = 1 << 20;
/// Size of the data image (pattern, discard, write-zeroes).
pub const DATA_MIB: u64 = 32;
/// Size of the filesystem image.
pub const FS_MIB: u64 = 64;
/// Discarded after the pattern: reads back as the pattern or as zeroes
/// (discard is advisory; QEMU's `-drive` ignores it by default).
const DISCARD: (u64, u64) = (4 * MIB, 2 * MIB);
/// Zeroed after the pattern (BLKZEROOUT: WRITE_ZEROES where the export
/// passes it on, writes of zeroes where it does not): zeroes.
const ZERO: (u64, u64) = (10 * MIB, MIB);

/// Shell helpers for any guest disk: `reads DEV` prints how many read
/// requests the block device `DEV` (no `/dev/`) has completed;
/// `verify_direct DEV ARGS...` runs `pvio verify /dev/DEV --direct ARGS...`
/// and fails unless the device itself completed at least one read request
/// per block verified, so the check cannot be served by the page cache
/// (cached blocks cost no request; buffered reads of uncached blocks are
/// batched by readahead).
pub const DIRECT_VERIFY_SH: &str = r#"
reads() { awk '{print $1}' /sys/block/$1/stat; }
verify_direct() {
  vd_dev=$1; shift
  vd_before=$(reads $vd_dev)
  vd_out=$(pvio verify /dev/$vd_dev --direct "$@") || { echo "$vd_out"; return 1; }
  vd_done=$(( $(reads $vd_dev) - vd_before ))
  echo "$vd_out"
  vd_blocks=$(echo "$vd_out" | sed -n 's/^pvio: verified \([0-9]*\) blocks.*/\1/p')
  [ -n "$vd_blocks" ] && [ $vd_done -ge $vd_blocks ] || {
    echo "pvtest: verifying $vd_blocks blocks of $vd_dev took only $vd_done device reads"; return 1; }
  echo "pvtest: $vd_dev completed $vd_done reads for $vd_blocks blocks verified"
}
"#;

/// How `pvblkd` exports the disk to the guest kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// `/dev/nbdN` through the kernel NBD driver (any kernel).
    Nbd,
    /// `/dev/ublkbN` through the kernel's ublk driver (6.12 here).
    Ublk,
}

impl Export {
    /// The block device name of export `n`, without `/dev/`.
    pub fn dev(self, n: u32) -> String {
        match self {
            Export::Nbd => format!("nbd{n}"),
            Export::Ublk => format!("ublkb{n}"),
        }
    }

    /// The guest's kernel module that provides the export.
    fn module(self) -> &'static str {
        match self {
            Export::Nbd => "nbd",
            Export::Ublk => "ublk_drv",
        }
    }

    /// The kernel the export needs.
    fn kernel(self) -> KernelChoice {
        match self {
            Export::Nbd => KernelChoice::Current,
            Export::Ublk => KernelChoice::Backports,
        }
    }

    /// Shell helpers: `start_pvblkd DISK N` exports the disk `/dev/DISK`
    /// as export `N` and waits until it has a size; `stop_pvblkd N` sends
    /// SIGTERM, checks the exit status (and, for ublk, that the device is
    /// deleted), and waits until the kernel's virtio_blk has the device
    /// again (under the first free vdX name), writing that name to
    /// /tmp/diskN.
    pub fn helpers(self) -> String {
        let (args, up, gone) = match self {
            Export::Nbd => (
                "--export nbd --nbd $n",
                r#"[ "$(cat /sys/block/nbd$n/size)" != 0 ]"#,
                "",
            ),
            Export::Ublk => (
                "--export ublk --ublk-id $n",
                r#"[ -b /dev/ublkb$n ] && [ "$(cat /sys/block/ublkb$n/size 2>/dev/null)" != 0 ] && grep -q "serving /dev/ublkb$n" /tmp/pvblkd$n.log"#,
                r#"  [ ! -e /sys/block/ublkb$n ] || { echo "pvtest: ublkb$n still there"; return 1; }
  [ ! -e /dev/ublkc$n ] || { echo "pvtest: /dev/ublkc$n still there"; return 1; }
"#,
            ),
        };
        let dev = self.dev(0).trim_end_matches('0').to_owned();
        format!(
            r#"{DIRECT_VERIFY_SH}
bdf_of() {{ basename "$(readlink -f /sys/block/$1/device/..)"; }}
export_up() {{ n=$1; {up}; }}
start_pvblkd() {{
  disk=$1; n=$2; bdf=$(bdf_of $disk)
  echo $bdf > /tmp/bdf$n
  echo "pvtest: $disk is $bdf"
  pvblkd --pci $bdf {args} > /tmp/pvblkd$n.log 2>&1 &
  echo $! > /tmp/pvblkd$n.pid
  i=0
  while ! export_up $n; do
    i=$((i+1))
    if [ $i -gt 300 ] || ! kill -0 $(cat /tmp/pvblkd$n.pid) 2>/dev/null; then
      echo "pvtest: pvblkd for $disk did not come up"; cat /tmp/pvblkd$n.log; return 1
    fi
    sleep 0.2
  done
  [ ! -e /dev/$disk ] || {{ echo "pvtest: /dev/$disk still there"; return 1; }}
  echo "pvtest: {dev}$n up ($(cat /sys/block/{dev}$n/size) sectors)"
}}
stop_pvblkd() {{
  n=$1; pid=$(cat /tmp/pvblkd$n.pid); bdf=$(cat /tmp/bdf$n)
  kill -TERM $pid
  rc=0; wait $pid || rc=$?
  cat /tmp/pvblkd$n.log
  [ $rc = 0 ] || {{ echo "pvtest: pvblkd exit status $rc"; return 1; }}
{gone}  i=0
  while ! ls /sys/bus/pci/devices/$bdf/virtio*/block/ >/dev/null 2>&1; do
    i=$((i+1)); [ $i -le 150 ] || {{ echo "pvtest: no disk came back on $bdf"; return 1; }}
    sleep 0.2
  done
  back=$(ls /sys/bus/pci/devices/$bdf/virtio*/block/)
  i=0
  while [ ! -b /dev/$back ]; do
    i=$((i+1)); [ $i -le 150 ] || {{ echo "pvtest: /dev/$back did not appear"; return 1; }}
    sleep 0.2
  done
  echo $back > /tmp/disk$n
  echo "pvtest: $bdf is back as /dev/$back ($(basename $(readlink /sys/bus/pci/devices/$bdf/driver)))"
}}
"#
        )
    }

    /// The whole scenario on the guest disks `vda` (data, export 0) and
    /// `vdb` (filesystem, export 1): whole-disk pattern write and verify
    /// (buffered and O_DIRECT), discard, write-zeroes, flush, ext2 created,
    /// written, remounted read-only and checked; SIGTERM hands both disks
    /// back and the kernel's driver re-reads the pattern. Ends with
    /// `pvtest: runtime scenario done`.
    pub fn scenario(self, seed: u64) -> String {
        let (d0, d1) = (self.dev(0), self.dev(1));
        let name = format!("{self:?}");
        format!(
            r#"{helpers}
start_pvblkd vda 0
start_pvblkd vdb 1
[ "$(cat /sys/block/{d0}/size)" = {data_sectors} ]
grep -q "export: {name}" /tmp/pvblkd0.log
{data}{fs}# SIGTERM: drain, flush, release; the kernel driver takes the disks back
stop_pvblkd 1
stop_pvblkd 0
# what the runtime wrote, read through the kernel's own driver
pvio verify /dev/$(cat /tmp/disk0) --seed {seed} --start 0 --count 256
echo "pvtest: runtime scenario done"
"#,
            helpers = self.helpers(),
            data_sectors = DATA_MIB * MIB / 512,
            data = data_disk_checks(&d0, seed),
            fs = fs_disk_checks(&d1),
        )
    }

    /// SIGTERM while four readers are busy on export 0 (disk `vda`): the
    /// daemon drains, flushes, exits 0 and hands the device back; the
    /// kernel driver reads the data intact, and the device can be exported
    /// again. Ends with `pvtest: handback done`.
    ///
    /// The readers are shown to be in flight across the SIGTERM: it is
    /// sent once they have completed 400 reads and are still running, and
    /// they (set to run for an hour) must then end on a failed read, which
    /// only the export going away causes.
    pub fn sigterm_scenario(self, seed: u64) -> String {
        let d0 = self.dev(0);
        format!(
            r#"{helpers}
start_pvblkd vda 0
pvio write /dev/{d0} --seed {seed} --count 1024
# readers busy on the export while the daemon is told to stop
r0=$(reads {d0})
pvio randread /dev/{d0} --seconds 3600 --jobs 4 > /tmp/reader.log 2>&1 &
reader=$!
i=0
while [ $(( $(reads {d0}) - r0 )) -lt 400 ]; do
  i=$((i+1))
  if [ $i -gt 3000 ] || ! kill -0 $reader 2>/dev/null; then
    echo "pvtest: the readers did not get going"; cat /tmp/reader.log; exit 1
  fi
  sleep 0.1
done
kill -0 $reader 2>/dev/null || {{ echo "pvtest: the readers died before the stop"; cat /tmp/reader.log; exit 1; }}
echo "pvtest: readers busy ($(( $(reads {d0}) - r0 )) reads done); stopping pvblkd"
stop_pvblkd 0
rc=0; wait $reader || rc=$?
cat /tmp/reader.log
[ $rc != 0 ] || {{ echo "pvtest: the readers ended on their own: the stop was not under load"; exit 1; }}
grep -q "pvio: read at" /tmp/reader.log || {{ echo "pvtest: the readers failed, but not on a read"; exit 1; }}
echo "pvtest: readers cut off by the stop (exit status $rc)"
grep -q "device cache flushed" /tmp/pvblkd0.log
grep -q "released to the kernel" /tmp/pvblkd0.log
[ "$(cat /sys/bus/pci/devices/$(cat /tmp/bdf0)/driver_override)" = "(null)" ]
pvio verify /dev/$(cat /tmp/disk0) --seed {seed} --count 1024
# the device can be claimed again
start_pvblkd $(cat /tmp/disk0) 0
verify_direct {d0} --seed {seed} --count 1024
stop_pvblkd 0
echo "pvtest: handback done"
"#,
            helpers = self.helpers(),
        )
    }

    /// A guest for the scenarios: the export's kernel and module, 2 vCPUs,
    /// `pvblkd` and `pvio`.
    pub fn guest(self, name: &str) -> GuestBuilder {
        Guest::builder(name)
            .kernel(self.kernel())
            .cpus(2)
            .memory_mib(768)
            .modules(["virtio_pci", "virtio_blk", self.module(), "uio_pci_generic"])
            .binary("pvio")
            .binary("pvblkd")
            .timeout(Duration::from_secs(900))
    }
}

impl Export {
    /// [`Export::scenario`] on two QEMU built-in virtio-blk disks, then
    /// the host checks. `extra` are console lines the export must show.
    pub fn run_on_qemu_virtio_blk(self, name: &str, seed: u64, extra: &[&str]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data_img, fs_img) = make_images(dir.path());
        let out = self
            .guest(name)
            .virtio_blk_disk(&data_img)
            .virtio_blk_disk(&fs_img)
            .script(&self.scenario(seed))
            .run()
            .expect("harness");
        out.expect_pass();
        assert!(out.console_has("pvtest: runtime scenario done"));
        assert!(out.console_has(&format!("pvblkd: serving /dev/{}", self.dev(0))));
        assert!(out.console_has("device cache flushed"));
        for needle in extra {
            assert!(out.console_has(needle), "{needle:?} not on the console");
        }
        check_images(&data_img, &fs_img, seed);
    }

    /// [`Export::sigterm_scenario`] on one QEMU built-in virtio-blk disk:
    /// the device ends up back under `virtio-pci` with the data intact.
    pub fn run_sigterm_under_load(self, name: &str, seed: u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (data_img, _) = make_images(dir.path());
        let out = self
            .guest(name)
            .virtio_blk_disk(&data_img)
            .script(&self.sigterm_scenario(seed))
            .run()
            .expect("harness");
        out.expect_pass();
        assert!(out.console_has("pvtest: handback done"));
        assert!(out.console_has("pvtest: readers cut off by the stop"));
        assert!(out.console_has("is back as /dev/vd"));
        assert!(out.console_has("(virtio-pci)"));
    }
}

/// Guest script for the data disk `/dev/DEV` (any block driver): whole-disk
/// pattern write and verify (buffered, then O_DIRECT with
/// [`DIRECT_VERIFY_SH`]'s `verify_direct`, which the script must define),
/// discard, write-zeroes and flush; [`check_images`] checks the result.
pub fn data_disk_checks(dev: &str, seed: u64) -> String {
    format!(
        r#"# whole-disk pattern through the export, read back from the device
pvio write /dev/{dev} --seed {seed}
echo 3 > /proc/sys/vm/drop_caches
pvio verify /dev/{dev} --seed {seed}
verify_direct {dev} --seed {seed} --start 100 --count 200
# discard, write-zeroes, flush
blkdiscard -o {d_off} -l {d_len} /dev/{dev}
pvio zeroout /dev/{dev} --offset {z_off} --len {z_len}
sync
"#,
        d_off = DISCARD.0,
        d_len = DISCARD.1,
        z_off = ZERO.0,
        z_len = ZERO.1,
    )
}

/// Guest script for the filesystem disk `/dev/DEV`: a filesystem created,
/// written, unmounted, remounted read-only and checked; [`check_images`]
/// runs the host's e2fsck on it.
pub fn fs_disk_checks(dev: &str) -> String {
    format!(
        r#"# a filesystem, written, unmounted, remounted read-only and checked
mke2fs -q -b 4096 /dev/{dev}
mount -t ext2 /dev/{dev} /mnt
dd if=/dev/urandom of=/mnt/blob bs=64k count=64 2>/dev/null
sha256sum /mnt/blob > /tmp/blob.sum
mkdir /mnt/dir && for i in $(seq 1 50); do echo "file $i" > /mnt/dir/f$i; done
umount /mnt
echo 3 > /proc/sys/vm/drop_caches
mount -t ext2 -o ro /dev/{dev} /mnt
sha256sum -c /tmp/blob.sum
[ "$(cat /mnt/dir/f50)" = "file 50" ]
umount /mnt
"#
    )
}

/// The data and filesystem images, sparse, in `dir`.
pub fn make_images(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data.img");
    let fs = dir.join("fs.img");
    for (img, size) in [(&data, DATA_MIB * MIB), (&fs, FS_MIB * MIB)] {
        std::fs::File::create(img)
            .and_then(|f| f.set_len(size))
            .expect("image");
    }
    (data, fs)
}

/// Host-side checks after the guest powered off: the pattern everywhere
/// but the zeroed range (zeroes) and the discarded range (pattern or
/// zeroes); the filesystem clean by the host's e2fsck.
pub fn check_images(data_img: &Path, fs_img: &Path, seed: u64) {
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
