//! The Rust guest kernel ([`KernelChoice::Rust`]): built once by the harness
//! (minutes, the first time on a machine) and cached; it boots, is the
//! release the harness says, runs its virtio-balloon through the built-in C
//! driver, and ends the VM with the init's `reboot -f`.

use std::time::Duration;

use pvtest::{Guest, KernelChoice};

#[test]
fn rust_kernel_boots_with_its_virtio_drivers() {
    let kernel = KernelChoice::Rust.resolve().expect("rust guest kernel");
    assert!(
        kernel.release.starts_with("7.3"),
        "release {}",
        kernel.release
    );
    let out = Guest::builder("rust-kernel-boot")
        .kernel(KernelChoice::Rust)
        .virtio_balloon()
        .script(
            r#"
echo "pvtest: uname $(uname -r)"
for d in /sys/bus/virtio/devices/*; do
  echo "pvtest: virtio $(cat $d/device) $(basename "$(readlink $d/driver)")"
done
"#,
        )
        .timeout(Duration::from_secs(300))
        .run()
        .expect("harness");
    out.expect_pass();
    assert!(
        out.console_has(&format!("pvtest: uname {}", kernel.release)),
        "{}",
        out.failure_report()
    );
    assert!(
        out.console_has("pvtest: virtio 0x0005 virtio_balloon"),
        "{}",
        out.failure_report()
    );
}
