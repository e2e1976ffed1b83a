//! The pv-blk Linux guest runtime (`pvblkd`) in a guest: it claims a
//! virtio-blk PCI device from the kernel, drives it with the pv-blk core and
//! exports it as `/dev/nbdN`; the guest's own tools and filesystems then use
//! it. Against QEMU's built-in virtio-blk and against our host backend's
//! vhost-user-blk; then SIGTERM hands the device back to the kernel driver.
//! The scenario is shared with the ublk test (`pvtest::pvblkd_scenario`).

use std::time::Duration;

use pvtest::peers::PvBackend;
use pvtest::pvblkd_scenario::{check_images, make_images, Export};

#[test]
fn runtime_on_qemu_virtio_blk() {
    Export::Nbd.run_on_qemu_virtio_blk("pvblk-runtime-qemu", 0x9B1C_0001, &[]);
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
    let out = Export::Nbd
        .guest("pvblk-runtime-pvbackend")
        .vhost_user_blk(&sock_data, 1)
        .vhost_user_blk(&sock_fs, 1)
        .script(&Export::Nbd.scenario(SEED))
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
    for disk in ["data", "fs"] {
        let problems = PvBackend::blk_error_problems(&m, disk);
        assert!(problems.is_empty(), "{problems:?} in:\n{m}");
    }
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
    Export::Nbd.run_sigterm_under_load("pvblk-runtime-sigterm", 0x9B1C_0003);
}
