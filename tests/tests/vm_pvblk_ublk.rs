//! `pvblkd` exporting its disk through ublk (`/dev/ublkbN`) instead of NBD,
//! on bookworm-backports' 6.12 kernel (6.1 has no `ublk_drv`): the same
//! scenario as the NBD test on QEMU's built-in virtio-blk
//! (`pvtest::pvblkd_scenario`), then SIGTERM hands the device back to the
//! kernel's virtio_blk.

use std::time::Duration;

use pvtest::pvblkd_scenario::Export;
use pvtest::{Guest, KernelChoice};

/// The NBD test's scenario, through /dev/ublkb0 and /dev/ublkb1.
#[test]
fn ublk_export_on_qemu_virtio_blk() {
    Export::Ublk.run_on_qemu_virtio_blk("pvblk-ublk-qemu", 0x0B1C_0001, &["ublk device 0 deleted"]);
}

/// SIGTERM with readers busy on the export: STOP_DEV drains while the
/// daemon serves, the daemon exits 0, the kernel driver has the device
/// back with the data intact, and the device can be exported again.
#[test]
fn ublk_sigterm_under_load_hands_the_device_back() {
    Export::Ublk.run_sigterm_under_load("pvblk-ublk-sigterm", 0x0B1C_0003);
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
