//! `pvblkd` exporting its disk through ublk (`/dev/ublkbN`) instead of NBD,
//! on bookworm-backports' 6.12 kernel (6.1 has no `ublk_drv`): the same
//! checks as the NBD test on QEMU's built-in virtio-blk, then SIGTERM
//! hands the device back to the kernel's virtio_blk.

use std::time::Duration;

use pvtest::{Guest, KernelChoice};

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
