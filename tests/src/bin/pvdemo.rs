//! The pvdrivers demo: our host backend (`pvbackend`) serves a disk to a
//! QEMU guest over vhost-user-blk; in the guest our block runtime
//! (`pvblkd`, the pv-blk core on the claimed virtio-blk PCI device) takes
//! the disk from the kernel's driver and exports it as `/dev/nbd0`; the
//! guest does real block I/O through it, a filesystem included, then
//! `pvblkd` hands the device back on SIGTERM. The host checks the written
//! data in the image, reads the backend's metrics and stops it gracefully.
//!
//! Run through `./dev.sh demo`, which installs what it needs first.

use std::process::ExitCode;
use std::time::Duration;

use pv_blk::pattern;
use pvtest::peers::PvBackend;
use pvtest::Guest;

const BLOCK: usize = 4096;
const DISK_BLOCKS: u64 = 16384; // 64 MiB
const IO_BLOCKS: u64 = 4096; // 16 MiB written and verified
const SEED: u64 = 0xDE30;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pvdemo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)?.set_len(DISK_BLOCKS * BLOCK as u64)?;
    let socket = dir.path().join("demo-disk.sock");
    let log = dir.path().join("pvbackend.log");
    eprintln!(
        "pvdemo: starting pvbackend on {} (image {})",
        socket.display(),
        image.display()
    );
    let backend = PvBackend::start(
        &[format!(
            "path={},socket={},serial=pvdemo-disk,queues=1",
            image.display(),
            socket.display()
        )],
        &["--metrics", "127.0.0.1:0"],
        &log,
    )?;
    eprintln!(
        "pvdemo: booting a guest (QEMU TCG): vhost-user-blk from pvbackend, driven by our pvblkd"
    );
    let script = format!(
        r#"
echo "== virtio devices the guest sees"
for d in /sys/bus/virtio/devices/*; do
  echo "  $(basename $d): device id $(cat $d/device), driver $(basename "$(readlink $d/driver)")"
done
bdf=$(basename "$(readlink -f /sys/block/vda/device/..)")
echo "== block: /dev/vda (PCI $bdf), serial '$(cat /sys/block/vda/serial)', $(cat /sys/block/vda/size) sectors, kernel driver"
echo "== pvblkd takes $bdf from the kernel's virtio_blk and exports it as /dev/nbd0"
pvblkd --pci $bdf --nbd 0 > /tmp/pvblkd.log 2>&1 &
pid=$!
i=0
while [ "$(cat /sys/block/nbd0/size)" = 0 ]; do
  i=$((i+1))
  if [ $i -gt 300 ] || ! kill -0 $pid 2>/dev/null; then cat /tmp/pvblkd.log; exit 1; fi
  sleep 0.2
done
[ ! -e /dev/vda ]
echo "  /dev/nbd0: $(cat /sys/block/nbd0/size) sectors; /dev/vda is gone (the kernel driver let go)"
echo "== I/O through pvblkd and pvbackend: stamp {IO_BLOCKS} blocks of {BLOCK} bytes with O_DIRECT, verify"
time pvio write /dev/nbd0 --direct --seed {SEED} --count {IO_BLOCKS}
time pvio verify /dev/nbd0 --direct --seed {SEED} --count {IO_BLOCKS}
echo "== a filesystem in the rest of the disk"
blkdiscard -o $((32 << 20)) -l $((32 << 20)) /dev/nbd0
losetup -o $((32 << 20)) /dev/loop0 /dev/nbd0
mke2fs -q /dev/loop0 >/dev/null
mount /dev/loop0 /mnt
dd if=/dev/urandom of=/mnt/file bs=64k count=32 2>/dev/null
sha256sum /mnt/file > /tmp/sum
umount /mnt
mount -o ro /dev/loop0 /mnt
sha256sum -c /tmp/sum
ls -l /mnt
umount /mnt
losetup -d /dev/loop0
echo "== SIGTERM: pvblkd flushes and hands the device back to virtio_blk"
kill -TERM $pid
rc=0; wait $pid || rc=$?
cat /tmp/pvblkd.log
[ $rc = 0 ]
i=0
while ! ls /sys/bus/pci/devices/$bdf/virtio*/block/ >/dev/null 2>&1; do
  i=$((i+1)); [ $i -le 150 ] || {{ echo "no disk came back on $bdf"; exit 1; }}
  sleep 0.2
done
back=$(ls /sys/bus/pci/devices/$bdf/virtio*/block/)
echo "  the kernel's virtio_blk has it again as /dev/$back"
pvio verify /dev/$back --direct --seed {SEED} --count {IO_BLOCKS}
"#
    );
    let out = Guest::builder("demo")
        .modules([
            "virtio_pci",
            "virtio_blk",
            "virtio_net",
            "virtio_balloon",
            "loop",
            "nbd",
            "uio_pci_generic",
        ])
        .binary("pvio")
        .binary("pvblkd")
        .vhost_user_blk(&socket, 1)
        .virtio_net_isolated("52:54:00:de:00:01")
        .virtio_balloon()
        .memory_mib(768)
        .script(&script)
        .timeout(Duration::from_secs(600))
        .echo_console(true)
        .run()?;
    if !out.passed() {
        anyhow::bail!(
            "{}\n--- pvbackend log ---\n{}",
            out.failure_report(),
            backend.log()
        );
    }
    let metrics = backend.fetch_metrics()?;
    eprintln!("pvdemo: pvbackend metrics for disk 'demo-disk':");
    for op in [
        "read",
        "write",
        "flush",
        "get_id",
        "discard",
        "write_zeroes",
    ] {
        let series = format!("pvbackend_blk_requests_total{{disk=\"demo-disk\",op=\"{op}\"}}");
        let n = PvBackend::metric(&metrics, &series).unwrap_or(0.0);
        eprintln!("  {op:>12}: {n} requests");
    }
    match backend.stop(Duration::from_secs(30))? {
        Some(st) if st.success() => eprintln!("pvdemo: pvbackend stopped on SIGTERM ({st})"),
        Some(st) => anyhow::bail!("pvbackend did not exit cleanly on SIGTERM ({st})"),
        None => anyhow::bail!("pvbackend did not exit within 30 s of SIGTERM"),
    }
    let data = std::fs::read(&image)?;
    let bad = data
        .chunks_exact(BLOCK)
        .take(IO_BLOCKS as usize)
        .enumerate()
        .filter(|(i, b)| pattern::verify(b, SEED, *i as u64).is_err())
        .count();
    if bad > 0 {
        anyhow::bail!(
            "host check: {bad} of {IO_BLOCKS} blocks in {} are wrong",
            image.display()
        );
    }
    eprintln!(
        "pvdemo: host check: all {IO_BLOCKS} blocks the guest wrote are in {} intact",
        image.display()
    );
    if let Some(t) = out.boot_to_scenario {
        eprintln!(
            "pvdemo: boot to scenario {:.1} s, whole run {:.1} s",
            t.as_secs_f64(),
            out.elapsed.as_secs_f64()
        );
    }
    eprintln!("pvdemo: OK");
    Ok(())
}
