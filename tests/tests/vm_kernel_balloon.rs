//! The `pv_balloon` kernel module (pv-balloon/kernel) in the Rust guest
//! kernel ([`KernelChoice::Rust`]): built by the harness from our `no_std`
//! crates as one composite module (tests/src/kernel/extmod.rs): Rust's
//! `alloc` on the kernel allocator, the crates.io dependencies, the
//! validated virtqueue, the balloon core, the virtio-pci transport.
//!
//! The module binds only the balloon whose PCI id is its `pci_dev_id`
//! parameter; the C `virtio_pci` keeps every other device, and gets the
//! balloon back after `rmmod`.

use std::time::{Duration, Instant};

use pvtest::kernel::extmod;
use pvtest::process::vm_rss_kib;
use pvtest::{Guest, KernelChoice, Outcome, Qmp};
use serde_json::json;

const MIB: u64 = 1 << 20;
/// Guest memory and the balloon the test asks for.
const RAM: u64 = 512;
const BALLOON: u64 = 128;

/// What the guest's kernel log may never hold (the module's pr_err lines
/// say "device fault", "inflate", "deflate": covered by the same check).
const DMESG_BAD: &str =
    "Oops|BUG|WARNING|Call Trace|pv_balloon: device fault|pv_balloon: (inflate|deflate|reset)";

fn module() -> Vec<u8> {
    let ko = extmod::build_module(&extmod::pv_balloon()).expect("build pv_balloon.ko");
    std::fs::read(&ko).expect("read pv_balloon.ko")
}

/// Finds the balloon's PCI address and id (`bus << 8 | devfn`) in the guest.
const FIND_BALLOON: &str = r#"
bdf=""
for d in /sys/bus/pci/devices/*; do
  v=$(cat $d/vendor); p=$(cat $d/device)
  if [ "$v" = 0x1af4 ] && { [ "$p" = 0x1002 ] || [ "$p" = 0x1045 ]; }; then bdf=$(basename $d); fi
done
[ -n "$bdf" ] || { echo "pvtest: no balloon"; exit 1; }
drv() { basename "$(readlink /sys/bus/pci/devices/$bdf/driver)"; }
bus=$((0x$(echo $bdf | cut -d: -f2)))
slot=$((0x$(echo $bdf | cut -d: -f3 | cut -d. -f1)))
fn=$(echo $bdf | cut -d. -f2)
id=$(( (bus << 8) | (slot << 3) | fn ))
echo "pvtest: balloon $bdf (id $id) bound to $(drv)"
"#;

/// `wait_settled N`: waits (bounded) until the module's latest "balloon
/// at" line says N frames. The latest line, not a count of lines: the
/// host moves the target as soon as it sees the guest's previous step, so
/// the next settle can be logged before the guest looks (a count taken
/// then already includes it, and the wait for one more never ends: the
/// hang a CI run once showed, 13 minutes idle after the target was set).
const WAIT_SETTLED: &str = r#"
settled() { dmesg | grep 'pv_balloon: balloon at' | tail -n 1 | grep -q "balloon at $1 frames"; }
wait_settled() {
  ws=0
  while ! settled $1; do
    ws=$((ws+1))
    [ $ws -le 900 ] || { echo "pvtest: the balloon never settled at $1 frames"; dmesg | grep pv_balloon; exit 1; }
    sleep 1
  done
}
"#;

fn clean_log_check() -> String {
    format!(
        "if dmesg | grep -E '{DMESG_BAD}'; then echo \"pvtest: kernel log not clean\"; exit 1; fi\n\
         echo pvtest: clean\n"
    )
}

/// Loaded without a `pci_dev_id`, the module binds nothing, not even the
/// balloon freed from the C driver first; it unloads, the C driver takes
/// the balloon back, and the kernel log stays clean.
#[test]
fn module_without_an_address_binds_nothing_and_unloads_cleanly() {
    let data = module();
    let script = format!(
        "{FIND_BALLOON}\
         echo $bdf > /sys/bus/pci/devices/$bdf/driver/unbind\n\
         insmod /lib/modules/pv_balloon.ko\n\
         grep -q '^pv_balloon ' /proc/modules\n\
         echo \"pvtest: loaded, free $bdf bound to $(drv)\"\n\
         rmmod pv_balloon\n\
         if grep -q '^pv_balloon ' /proc/modules; then echo \"pvtest: still loaded\"; exit 1; fi\n\
         echo $bdf > /sys/bus/pci/drivers/virtio-pci/bind\n\
         echo \"pvtest: back to $(drv)\"\n\
         {}",
        clean_log_check()
    );
    let out = Guest::builder("kernel-balloon-unbound")
        .kernel(KernelChoice::Rust)
        .virtio_balloon()
        .file("/lib/modules/pv_balloon.ko", 0o644, &data)
        .script(&script)
        .timeout(Duration::from_secs(300))
        .run()
        .expect("harness");
    out.expect_pass();
    for needle in [
        "bound to virtio-pci",
        "pvtest: loaded, ",
        "pvtest: back to virtio-pci",
        "pvtest: clean",
    ] {
        assert!(
            out.console_has(needle),
            "missing '{needle}'\n{}",
            out.failure_report()
        );
    }
    assert!(
        !out.console_has("bound to pv_balloon"),
        "the module took a device it was not given\n{}",
        out.failure_report()
    );
}

fn console_wait(guest: &mut Guest, needle: &str, secs: u64) -> String {
    match guest.wait_for_console(needle, Duration::from_secs(secs)) {
        Ok(l) => l,
        Err(e) => panic!("{e}\n--- console ---\n{}", guest.drain_console()),
    }
}

fn actual(qmp: &mut Qmp) -> u64 {
    let b = qmp
        .execute("query-balloon", json!({}))
        .expect("query-balloon");
    b["actual"].as_u64().expect("actual")
}

/// Polls `query-balloon` until `actual` is `want`, or panics after `limit`.
fn wait_actual(qmp: &mut Qmp, guest: &mut Guest, want: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let a = actual(qmp);
        if a == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "query-balloon actual {a}, not {want}, after {} s\n--- console ---\n{}",
            limit.as_secs(),
            guest.drain_console()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Bound by address: the QMP target moves down (query-balloon follows,
/// QEMU's RSS falls by about the balloon, as the guest touched its memory
/// first) and back up (the pages return); `rmmod` hands the device back to
/// `virtio-pci` and the C `virtio_balloon`; the kernel log stays clean.
#[test]
fn balloon_follows_the_qmp_target_and_hands_the_device_back() {
    follow_the_target("kernel-balloon", "");
}

/// Every interrupt lost (the module's test-only `test_lose_irqs` makes its
/// handler acknowledge and ignore them): the periodic poll alone moves the
/// balloon down and up, so a lost configuration-change or used-buffer
/// interrupt can never wedge it (a CI run once sat idle for 13 minutes
/// after the QMP target was set, its balloon waiting for an interrupt).
#[test]
fn balloon_follows_the_target_with_every_interrupt_lost() {
    let out = follow_the_target("kernel-balloon-lost-irqs", " test_lose_irqs=1000000");
    assert!(
        out.console_has("pv_balloon: caught up by polling ("),
        "the poll never did the balloon's work\n{}",
        out.failure_report()
    );
    assert!(
        !out.console_has("pv_balloon: caught up by polling (0 interrupts"),
        "no interrupt was ignored: the case was not exercised\n{}",
        out.failure_report()
    );
}

/// Touches 250 MiB, binds the module (with `insmod_args`), moves the QMP
/// target down by [`BALLOON`] and back, unbinds, and checks the device went
/// back to the C driver with a clean kernel log.
fn follow_the_target(name: &str, insmod_args: &str) -> Outcome {
    let data = module();
    let frames = BALLOON * MIB / 4096;
    let script = format!(
        "{FIND_BALLOON}{WAIT_SETTLED}\
         mkdir -p /fill\n\
         mount -t tmpfs -o size=300m tmpfs /fill\n\
         dd if=/dev/zero of=/fill/blob bs=1M count=250 2>/dev/null\n\
         rm /fill/blob\n\
         echo $bdf > /sys/bus/pci/devices/$bdf/driver/unbind\n\
         insmod /lib/modules/pv_balloon.ko pci_dev_id=$id{insmod_args}\n\
         echo \"pvtest: touched 250 MiB, insmod done, $bdf bound to $(drv)\"\n\
         wait_settled {frames}\n\
         echo pvtest: inflated\n\
         wait_settled 0\n\
         echo pvtest: deflated\n\
         rmmod pv_balloon\n\
         echo $bdf > /sys/bus/pci/drivers/virtio-pci/bind\n\
         echo \"pvtest: handed back to $(drv)\"\n\
         for d in /sys/bus/virtio/devices/*; do\n\
         \x20 echo \"pvtest: virtio $(cat $d/device) $(basename \"$(readlink $d/driver)\")\"\n\
         done\n\
         dmesg | grep pv_balloon\n\
         {}",
        clean_log_check()
    );
    let mut guest = Guest::builder(name)
        .kernel(KernelChoice::Rust)
        .memory_mib(RAM as u32)
        .virtio_balloon()
        .qmp()
        .file("/lib/modules/pv_balloon.ko", 0o644, &data)
        .script(&script)
        .timeout(Duration::from_secs(1200))
        .start()
        .expect("harness");
    let bound = console_wait(&mut guest, "insmod done", 600);
    assert!(bound.contains("bound to pv_balloon"), "{bound}");
    let pid = guest.qemu_pid().expect("qemu pid");
    let sock = guest.qmp_socket().expect("qmp").to_owned();
    let mut qmp = Qmp::connect(&sock, Duration::from_secs(30)).expect("qmp");
    assert_eq!(actual(&mut qmp), RAM * MIB);
    let rss_before = vm_rss_kib(pid).expect("VmRSS") / 1024;
    assert!(
        rss_before >= 250,
        "the guest touched 250 MiB but QEMU's RSS is {rss_before} MiB"
    );

    let target = (RAM - BALLOON) * MIB;
    qmp.execute("balloon", json!({ "value": target }))
        .expect("balloon");
    wait_actual(&mut qmp, &mut guest, target, Duration::from_secs(400));
    console_wait(&mut guest, "pvtest: inflated", 300);
    let rss_low = vm_rss_kib(pid).expect("VmRSS") / 1024;
    let released = rss_before.saturating_sub(rss_low);
    eprintln!("QEMU RSS {rss_before} MiB -> {rss_low} MiB after ballooning {BALLOON} MiB");
    // Free pages the guest had touched: nearly all the balloon leaves QEMU.
    assert!(
        released >= BALLOON * 9 / 10,
        "ballooning {BALLOON} MiB released only {released} MiB of QEMU's RSS ({rss_before} -> {rss_low})"
    );

    qmp.execute("balloon", json!({ "value": RAM * MIB }))
        .expect("balloon");
    // The guest ends as soon as it sees its balloon back at 0 frames
    // (after writing `actual`), so QEMU may be gone before the next poll:
    // then the guest's "pvtest: deflated" (checked below) is the proof.
    let deadline = Instant::now() + Duration::from_secs(400);
    while let Ok(b) = qmp.execute("query-balloon", json!({})) {
        if b["actual"].as_u64() == Some(RAM * MIB) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "query-balloon {b} after the target went back up\n--- console ---\n{}",
            guest.drain_console()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = guest.wait();
    out.expect_pass();
    for needle in [
        "pvtest: deflated",
        "pvtest: handed back to virtio-pci",
        "pvtest: virtio 0x0005 virtio_balloon",
        "pvtest: clean",
    ] {
        assert!(
            out.console_has(needle),
            "missing '{needle}'\n{}",
            out.failure_report()
        );
    }
    out
}
