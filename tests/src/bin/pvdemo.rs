//! The pvdrivers demo: boots a guest under QEMU with virtio devices, shows
//! what the guest sees, does real block I/O with the guest I/O tool and
//! checks the written data from the host.
//!
//! For now the guest uses QEMU's own virtio devices and the kernel's
//! drivers; as the backend and frontends land, the demo switches to them.
//! Run through `./dev.sh demo`, which installs what it needs first.

use std::process::ExitCode;
use std::time::Duration;

use pv_blk::pattern;
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
    eprintln!(
        "pvdemo: booting a guest (QEMU TCG) with virtio-blk on {}, virtio-net and virtio-balloon",
        image.display()
    );
    let script = format!(
        r#"
echo "== virtio devices the guest sees"
for d in /sys/bus/virtio/devices/*; do
  echo "  $(basename $d): device id $(cat $d/device), driver $(basename "$(readlink $d/driver)")"
done
echo "== block: /dev/vda, $(cat /sys/block/vda/size) sectors"
echo "== network:"
ip -br link 2>/dev/null || ip link
echo "== balloon: $(cat /sys/bus/virtio/drivers/virtio_balloon/*/features 2>/dev/null | head -c 64)"
echo "== I/O: stamp {IO_BLOCKS} blocks of {BLOCK} bytes, drop caches, verify"
time pvio write /dev/vda --seed {SEED} --count {IO_BLOCKS}
echo 3 > /proc/sys/vm/drop_caches
time pvio verify /dev/vda --seed {SEED} --count {IO_BLOCKS}
"#
    );
    let out = Guest::builder("demo")
        .modules(["virtio_pci", "virtio_blk", "virtio_net", "virtio_balloon"])
        .binary("pvio")
        .virtio_blk_disk(&image)
        .virtio_net_isolated("52:54:00:de:00:01")
        .virtio_balloon()
        .script(&script)
        .timeout(Duration::from_secs(300))
        .echo_console(true)
        .run()?;
    if !out.passed() {
        anyhow::bail!("{}", out.failure_report());
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
