//! The first guest scenarios, and the harness's tests of itself: a failing
//! scenario and a hanging one must be reported as such, with the log kept,
//! and QEMU must never outlive a guest.

use std::path::Path;
use std::time::Duration;

use pv_blk::pattern;
use pvtest::{Guest, Verdict};

const BLOCK: usize = 4096;

fn process_alive(pid: u32) -> bool {
    // A zombie would still have /proc/<pid>; the harness reaps, so gone means gone.
    Path::new(&format!("/proc/{pid}")).exists()
}

/// (a) The guest sees QEMU's virtio-blk, virtio-net and virtio-balloon
/// devices, each bound to its kernel driver.
#[test]
fn guest_sees_qemu_virtio_devices() {
    let disk = tempfile::NamedTempFile::new().expect("disk image");
    disk.as_file().set_len(8 << 20).expect("size disk");
    let out = Guest::builder("virtio-devices")
        .modules(["virtio_pci", "virtio_blk", "virtio_net", "virtio_balloon"])
        .virtio_blk_disk(disk.path())
        .virtio_net_isolated("52:54:00:a0:00:01")
        .virtio_balloon()
        .script(
            r#"
want() { # <virtio device id> <driver>
  for d in /sys/bus/virtio/devices/*; do
    [ "$(cat $d/device)" = "$1" ] || continue
    drv=$(basename "$(readlink $d/driver)")
    if [ "$drv" = "$2" ]; then echo "pvtest: found $2 at $(basename $d)"; return 0; fi
  done
  echo "pvtest: no virtio device $1 bound to $2"; return 1
}
want 0x0002 virtio_blk
want 0x0001 virtio_net
want 0x0005 virtio_balloon
test -b /dev/vda
echo "pvtest: vda sectors $(cat /sys/block/vda/size)"
for n in /sys/class/net/*; do
  if [ "$(basename "$(readlink $n/device/driver)")" = virtio_net ]; then
    echo "pvtest: nic $(basename $n) mac $(cat $n/address)"
  fi
done
"#,
        )
        .run()
        .expect("harness");
    out.expect_pass();
    for needle in [
        "pvtest: found virtio_blk",
        "pvtest: found virtio_net",
        "pvtest: found virtio_balloon",
        "pvtest: vda sectors 16384",
        "mac 52:54:00:a0:00:01",
    ] {
        assert!(
            out.console_has(needle),
            "console lacks '{needle}':\n{}",
            out.failure_report()
        );
    }
}

/// (b) The guest writes a known pattern to QEMU's virtio-blk disk; the host
/// reads the image back and checks every block.
#[test]
fn guest_pattern_reaches_host_image() {
    const SEED: u64 = 0x5eed_0001;
    const BLOCKS: u64 = 4096; // 16 MiB
    let disk = tempfile::NamedTempFile::new().expect("disk image");
    disk.as_file()
        .set_len(BLOCKS * BLOCK as u64)
        .expect("size disk");
    let out = Guest::builder("pattern-to-image")
        .modules(["virtio_pci", "virtio_blk"])
        .binary("pvio")
        .virtio_blk_disk(disk.path())
        .script(&format!(
            "pvio write /dev/vda --seed {SEED} --block-size {BLOCK}\n\
             echo 3 > /proc/sys/vm/drop_caches\n\
             pvio verify /dev/vda --seed {SEED} --block-size {BLOCK}\n"
        ))
        .run()
        .expect("harness");
    out.expect_pass();
    assert!(
        out.console_has(&format!("pvio: verified {BLOCKS} blocks")),
        "{}",
        out.failure_report()
    );

    let image = std::fs::read(disk.path()).expect("read image");
    assert_eq!(image.len() as u64, BLOCKS * BLOCK as u64);
    let bad: Vec<(usize, pattern::StampError)> = image
        .chunks_exact(BLOCK)
        .enumerate()
        .filter_map(|(i, b)| pattern::verify(b, SEED, i as u64).err().map(|e| (i, e)))
        .take(5)
        .collect();
    assert!(bad.is_empty(), "host image has bad blocks: {bad:?}");
}

/// (c) A scenario that fails is reported as failed with its exit status,
/// and the console log is kept at the path the report names.
#[test]
fn failing_scenario_is_reported_with_log_kept() {
    let guest = Guest::builder("deliberately-failing")
        .script("echo pvtest: before the failure\nexit 7\necho pvtest: never printed\n")
        .timeout(Duration::from_secs(180))
        .start()
        .expect("harness");
    let pid = guest.qemu_pid().expect("qemu pid");
    let out = guest.wait();
    assert_eq!(
        out.verdict,
        Verdict::Failed { exit_code: 7 },
        "{}",
        out.failure_report()
    );
    assert!(!out.passed());
    let log = out.log_path.as_ref().expect("log kept on failure");
    let text = std::fs::read_to_string(log).expect("read kept log");
    assert!(
        text.contains("pvtest: before the failure"),
        "log lacks the scenario output"
    );
    assert!(!text.contains("pvtest: never printed"));
    assert!(out.failure_report().contains(&log.display().to_string()));
    let panic = std::panic::catch_unwind(|| {
        out.expect_pass();
    });
    assert!(
        panic.is_err(),
        "expect_pass must panic on a failed scenario"
    );
    assert!(!process_alive(pid), "QEMU {pid} outlived the guest");
}

/// (d) A guest that hangs is killed at the timeout and reported as such.
#[test]
fn hanging_guest_is_killed_at_timeout() {
    let mut guest = Guest::builder("deliberately-hanging")
        .script("echo pvtest: hanging now\nwhile true; do sleep 1000; done\n")
        .timeout(Duration::from_secs(75))
        .start()
        .expect("harness");
    let pid = guest.qemu_pid().expect("qemu pid");
    // Proves the guest booted and hung, rather than booting slowly.
    guest
        .wait_for_console("pvtest: hanging now", Duration::from_secs(70))
        .expect("scenario started");
    let out = guest.wait();
    assert_eq!(
        out.verdict,
        Verdict::TimedOut {
            after: Duration::from_secs(75)
        },
        "{}",
        out.failure_report()
    );
    assert!(
        out.log_path.as_ref().is_some_and(|p| p.exists()),
        "log kept on timeout"
    );
    assert!(!process_alive(pid), "QEMU {pid} survived the timeout");
}

/// QEMU dies with the guest handle even when the test panics mid-scenario.
#[test]
fn panic_while_guest_runs_kills_qemu() {
    let mut guest = Guest::builder("panic-mid-scenario")
        .script("echo pvtest: up\nwhile true; do sleep 1000; done\n")
        .timeout(Duration::from_secs(180))
        .start()
        .expect("harness");
    let pid = guest.qemu_pid().expect("qemu pid");
    guest
        .wait_for_console("pvtest: up", Duration::from_secs(170))
        .expect("scenario started");
    assert!(process_alive(pid));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _g = guest;
        panic!("simulated test failure");
    }));
    assert!(r.is_err());
    assert!(!process_alive(pid), "QEMU {pid} outlived a panicking test");
}

/// A guest whose kernel cannot reach the scenario (bad init) is reported as
/// having no result rather than passing.
#[test]
fn guest_without_result_is_not_a_pass() {
    let out = Guest::builder("no-result")
        // Powers off without the end marker.
        .script("poweroff -f\nsleep 100\n")
        .timeout(Duration::from_secs(180))
        .run()
        .expect("harness");
    assert!(
        matches!(out.verdict, Verdict::NoResult { .. }),
        "{}",
        out.failure_report()
    );
    assert!(out.log_path.is_some());
}

/// vhost-user devices work through the harness: guest RAM is a shared memfd
/// and the reference backend, qemu-storage-daemon, serves the disk; the
/// guest's pattern reaches the image.
#[test]
fn vhost_user_blk_with_shared_memory() {
    const SEED: u64 = 0x5eed_0002;
    const BLOCKS: u64 = 2048; // 8 MiB
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(BLOCKS * BLOCK as u64))
        .expect("disk image");
    let socket = dir.path().join("vhost-user-blk.sock");
    let qsd = pvtest::QemuStorageDaemon::start(&image, &socket, 1).expect("qemu-storage-daemon");
    let out = Guest::builder("vhost-user-blk-qsd")
        .modules(["virtio_pci", "virtio_blk"])
        .binary("pvio")
        .vhost_user_blk(qsd.socket(), 1)
        .script(&format!(
            "pvio write /dev/vda --seed {SEED}\necho 3 > /proc/sys/vm/drop_caches\npvio verify /dev/vda --seed {SEED}\n"
        ))
        .run()
        .expect("harness");
    out.expect_pass();
    drop(qsd);
    let data = std::fs::read(&image).expect("read image");
    let bad = data
        .chunks_exact(BLOCK)
        .enumerate()
        .filter(|(i, b)| pattern::verify(b, SEED, *i as u64).is_err())
        .count();
    assert_eq!(
        bad, 0,
        "{bad} blocks wrong in the image served by qemu-storage-daemon"
    );
}

/// The QMP socket works: the host sees the guest's balloon through it while
/// the guest runs.
#[test]
fn qmp_socket_reaches_running_guest() {
    let mut guest = Guest::builder("qmp")
        .modules(["virtio_pci", "virtio_balloon"])
        .virtio_balloon()
        .memory_mib(384)
        .qmp()
        .script("echo pvtest: ready\nsleep 170\n")
        .timeout(Duration::from_secs(180))
        .start()
        .expect("harness");
    guest
        .wait_for_console("pvtest: ready", Duration::from_secs(170))
        .expect("guest up");
    let path = guest.qmp_socket().expect("qmp socket").to_owned();
    let mut qmp = pvtest::Qmp::connect(&path, Duration::from_secs(30)).expect("qmp connect");
    let status = qmp
        .execute("query-status", serde_json::json!({}))
        .expect("query-status");
    assert_eq!(status["status"], "running", "{status}");
    let balloon = qmp
        .execute("query-balloon", serde_json::json!({}))
        .expect("query-balloon");
    assert_eq!(balloon["actual"].as_u64(), Some(384 << 20), "{balloon}");
    qmp.execute("quit", serde_json::json!({})).expect("quit");
    let out = guest.wait();
    assert!(
        matches!(out.verdict, Verdict::NoResult { .. }),
        "quit ends the guest: {}",
        out.failure_report()
    );
}
