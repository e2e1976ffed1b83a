//! Guest lifecycle on pvbackend: a guest whose disk pvbackend serves is
//! saved to a file while it writes and reads its disk, its QEMU quits, a
//! new QEMU restores it (`-incoming`), and the guest carries on: every
//! block verifies in the guest (first through the page cache the save left
//! behind, then from the disk) and in the image on the host. A second run
//! adds a switch NIC, and the guest pings a peer guest on the switch before
//! the save and after the restore. A third runs the passes through our
//! guest runtime `pvblkd` (the disk exported as `/dev/nbd0`), which keeps
//! serving across the save and restore, then hands the device back to the
//! kernel's driver, which reads the last pass intact.
//!
//! The save is the one operators make: `virsh save` (libvirt) pauses the
//! domain (QMP `stop`), then migrates it to the file and quits it; the
//! restoring QEMU starts paused (`-S -incoming`) and the guest is resumed
//! with `cont` once the incoming migration has completed. The guest is
//! stopped in the middle of a pass, with requests in flight in pvbackend:
//! `stop` makes QEMU stop the vhost-user queues (GET_VRING_BASE), which
//! pvbackend answers only once every request it took off a ring is
//! completed and published, so the saved rings hold no half-done request
//! and the restored guest carries on with the next one. The save still
//! needs pvbackend's dirty logging: QEMU refuses to `migrate` a guest with
//! a vhost-user device that lacks `LOG_SHMFD` (a migration blocker), paused
//! or not.
//!
//! The guest tells the two QEMU processes apart by a `fw_cfg` string that
//! only the command line sets (`fw_cfg` contents are not part of the saved
//! state): "original" in the first, "restored" in the second.
//!
//! Why not a live save (migrate while the guest runs): QEMU 7.2 under TCG
//! sometimes restores a guest whose RAM is a shared memfd (which vhost-user
//! needs) with stale pages, whatever serves its disk: the restored kernel
//! oopses or finds page-cache blocks holding other blocks' stamps. A live
//! save of this scenario failed about 2 of 16 runs on pvbackend; the same
//! scenario on QEMU's own virtio-blk failed 3 of 12 runs with
//! `memory-backend-memfd,share=on` and 0 of 12 with private RAM. A test
//! that fails for a QEMU bug proves nothing about pvbackend, so the live
//! variant is not in the test command; the paused save is deterministic.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use pvtest::peers::PvBackend;
use pvtest::pvblkd_scenario::Export;
use pvtest::qmp::Qmp;
use pvtest::{Guest, GuestBuilder};
use serde_json::json;

const BLOCK: usize = 4096;
/// Blocks stamped in each pass (32 MiB).
const BLOCKS: u64 = 8192;
const SEED: u64 = 0x5a7e_0000;
const FW_CFG: &str = "opt/pvtest/phase";

/// Saves the guest behind `qmp` to `state` as `virsh save` does: pauses
/// it (`stop`), raises the bandwidth cap, migrates it to the file and waits
/// until the migration completes. Returns QEMU's own figure for the
/// migration's duration (`total-time`).
fn save(qmp: &mut Qmp, state: &Path) -> Duration {
    qmp.execute("stop", json!({})).expect("stop");
    let status = qmp.execute("query-status", json!({})).expect("status");
    assert_eq!(status["running"], json!(false), "not paused: {status}");
    qmp.execute(
        "migrate-set-parameters",
        json!({ "max-bandwidth": 1u64 << 30 }),
    )
    .expect("raise max-bandwidth");
    let uri = format!("exec:cat > '{}'", state.display());
    qmp.execute("migrate", json!({ "uri": uri }))
        .expect("migrate starts");
    let info = wait_for_migration(qmp, "save");
    Duration::from_millis(info["total-time"].as_u64().unwrap_or(0))
}

/// Polls `query-migrate` until the migration (outgoing, or incoming in a
/// QEMU started with `-incoming`) has completed, and returns its last
/// answer; a failed or cancelled migration panics.
fn wait_for_migration(qmp: &mut Qmp, what: &str) -> serde_json::Value {
    match qmp.wait_for_migration(what, Duration::from_secs(600)) {
        Ok(info) => info,
        Err(e) => panic!("{e}"),
    }
}

/// Resumes the restored guest behind `qmp` (started with `-S -incoming`)
/// once its incoming migration has completed, as libvirt does.
fn resume(qmp: &mut Qmp) {
    wait_for_migration(qmp, "restore");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = qmp.execute("query-status", json!({})).expect("status");
        match status["status"].as_str() {
            Some("paused") => break,
            Some("inmigrate") | Some("prelaunch") | Some("postmigrate") => {}
            _ => panic!("restored guest in an unexpected state: {status}"),
        }
        assert!(Instant::now() < deadline, "restore not done: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    qmp.execute("cont", json!({})).expect("cont");
}

/// Who drives the disk inside the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    /// The kernel's virtio_blk (`/dev/vda`).
    Kernel,
    /// Our userspace runtime `pvblkd` (uio_pci_generic) exporting the disk
    /// as `/dev/nbd0`: its rings and buffers are its own guest memory.
    Pvblkd,
}

#[test]
fn disk_guest_is_saved_and_restored_in_a_new_qemu() {
    save_and_restore("lifecycle-save-restore", false, Driver::Kernel);
}

/// The guest runtime `pvblkd` keeps serving its disk across a save and
/// restore of its guest (issue 14, item 6): its virtqueues, their
/// in-flight requests and its DMA buffers are guest memory, saved and
/// restored with the rest; the stamped passes it carries verify after the
/// restore through it, and through the kernel's driver once it handed the
/// device back.
#[test]
fn pvblkd_guest_is_saved_and_restored_in_a_new_qemu() {
    save_and_restore("lifecycle-save-restore-pvblkd", false, Driver::Pvblkd);
}

/// The same with a switch NIC as well: before the save the guest pings a
/// peer guest on the switch, after the restore it pings it again (the
/// NIC's rings were saved with the guest and the port serves the new
/// QEMU), then tells the peer it is done.
#[test]
fn disk_and_switch_nic_guest_is_saved_and_restored() {
    save_and_restore("lifecycle-save-restore-net", true, Driver::Kernel);
}

const IP_GUEST: &str = "169.254.20.1";
const IP_PEER: &str = "169.254.20.2";

fn save_and_restore(name: &str, with_nic: bool, driver: Driver) {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    fs::File::create(&image)
        .and_then(|f| f.set_len(BLOCKS * BLOCK as u64))
        .expect("image");
    let sock = dir.path().join("disk.sock");
    let state = dir.path().join("guest.state");
    let (port_a, port_b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let ports: Vec<String> = if with_nic {
        [&port_a, &port_b]
            .iter()
            .zip(["a", "b"])
            .map(|(s, n)| format!("socket={},name={n}", s.display()))
            .collect()
    } else {
        Vec::new()
    };
    let backend = PvBackend::start_with(
        &[format!(
            "path={},socket={},serial=pv-lifecycle",
            image.display(),
            sock.display()
        )],
        &ports,
        &["--log-level", "info"],
        &dir.path().join("backend.log"),
    )
    .expect("backend");
    // The peer: up until the saved guest connects to its port 5001.
    let peer = with_nic.then(|| {
        Guest::builder(&format!("{name}-peer"))
            .memory_mib(256)
            .modules(["virtio_pci", "virtio_net"])
            .vhost_user_net(&port_b, "52:54:00:00:14:02")
            .script(&format!(
                r#"
nc -l -p 5001 > /tmp/bye &
BYE=$!
until grep -q ':1389 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6; do sleep 0.2; done
ip link set eth0 up
ip addr add {IP_PEER}/16 dev eth0
wait $BYE
echo "pvtest: told $(cat /tmp/bye)"
"#
            ))
            .timeout(Duration::from_secs(1200))
            .start()
            .expect("start peer")
    });
    let (net_up, net_after) = if with_nic {
        (
            format!(
                r#"
ip link set eth0 up
ip addr add {IP_GUEST}/16 dev eth0
n=0; until ping -c 1 -W 1 {IP_PEER} >/dev/null; do n=$((n+1)); [ $n -lt 240 ] || exit 1; done
echo "pvtest: peer answers"
"#
            ),
            format!(
                r#"
ping -c 3 -W 10 {IP_PEER}
echo "pvtest: peer answers after the restore"
echo bye | nc {IP_PEER} 5001
"#
            ),
        )
    } else {
        (String::new(), String::new())
    };

    let (driver_up, dev, driver_down) = match driver {
        Driver::Kernel => (String::new(), "/dev/vda", String::new()),
        Driver::Pvblkd => (
            format!("{}\nstart_pvblkd vda 0\n", Export::Nbd.helpers()),
            "/dev/nbd0",
            format!(
                r#"stop_pvblkd 0
pvio verify /dev/$(cat /tmp/disk0) --seed $seed --count {BLOCKS} --direct
echo "pvtest: every block verified through virtio_blk after pvblkd"
"#
            ),
        ),
    };
    // Each pass stamps the disk with a new seed (O_DIRECT), drops the page
    // cache and reads it all back through the cache: when QEMU stops the
    // guest the backend is copying disk data into guest memory, and every
    // page it filled must be in the saved state (dirty-logged) or be read
    // again after the restore. A new seed per pass makes a page left over
    // from an earlier pass fail the stamp check.
    let script = format!(
        r#"
phase() {{ cat /sys/firmware/qemu_fw_cfg/by_name/{FW_CFG}/raw; }}
[ "$(phase)" = original ]
{driver_up}{net_up}
i=0
seed={SEED}
while [ "$(phase)" = original ]; do
  seed=$(({SEED} + i))
  pvio write {dev} --seed $seed --count {BLOCKS} --direct
  echo 3 > /proc/sys/vm/drop_caches
  echo "pvtest: pass $i reading"
  pvio verify {dev} --seed $seed --count {BLOCKS}
  echo "pvtest: pass $i done"
  i=$((i + 1))
done
echo "pvtest: restored after $i passes, seed $seed"
# The page cache as the save left it, then the disk itself.
pvio verify {dev} --seed $seed --count {BLOCKS}
echo 3 > /proc/sys/vm/drop_caches
pvio verify {dev} --seed $seed --count {BLOCKS} --direct
echo "pvtest: every block verified"
{driver_down}{net_after}"#
    );
    // One machine, booted with one fw_cfg phase and restored with the
    // other (same length: the guest sized the entry when it booted).
    let machine = |phase: &str| -> GuestBuilder {
        let b = Guest::builder(name)
            .memory_mib(256)
            .modules(["virtio_pci", "virtio_blk", "qemu_fw_cfg"])
            // The kernel zeroes every page it allocates by default: a CPU
            // write QEMU tracks itself, which would re-send most page-cache
            // pages the device filled and hide a page the device left
            // unmarked. Off, the device is the only writer of those pages.
            .kernel_arg("init_on_alloc=0")
            .binary("pvio")
            .vhost_user_blk(&sock, 1)
            .qmp()
            .qemu_args(["-fw_cfg", &format!("name={FW_CFG},string={phase}")])
            .script(&script)
            .timeout(Duration::from_secs(1200));
        let b = match driver {
            Driver::Kernel => b,
            Driver::Pvblkd => b.modules(["nbd", "uio_pci_generic"]).binary("pvblkd"),
        };
        if with_nic {
            b.module("virtio_net")
                .vhost_user_net(&port_a, "52:54:00:00:14:01")
        } else {
            b
        }
    };

    let mut first = machine("original").start().expect("boot");
    // Pause as the guest starts reading its disk into the page cache: the
    // backend is copying disk data into guest memory when QEMU stops it.
    backend.expect_console(
        &mut first,
        "pvtest: pass 0 reading",
        Duration::from_secs(900),
    );
    let qmp_path = first.qmp_socket().expect("qmp socket").to_owned();
    let mut qmp = Qmp::connect(&qmp_path, Duration::from_secs(30)).expect("qmp");
    let took = save(&mut qmp, &state);
    let size = fs::metadata(&state).expect("state file").len();
    eprintln!(
        "pvtest: saved in {} ms (QEMU total-time), state {} bytes",
        took.as_millis(),
        size
    );
    qmp.execute("quit", json!({})).ok();
    let second = machine("restored")
        .qemu_args(["-S"])
        .restore(&first, &state)
        .expect("restore builder");
    let out = first.wait();
    assert!(
        !out.console_has("pvtest: restored after"),
        "the first QEMU ran past the save:\n{}",
        out.console
    );

    // The new QEMU connects to pvbackend only after the first has quit.
    let second = second.start().expect("restore");
    let restored_qmp = second.qmp_socket().expect("qmp socket").to_owned();
    let mut qmp = Qmp::connect(&restored_qmp, Duration::from_secs(60)).expect("qmp");
    resume(&mut qmp);
    let out = second.wait();
    backend.expect_guest_pass(&out);
    assert!(out.console_has("pvtest: every block verified"));
    if driver == Driver::Pvblkd {
        assert!(out.console_has("pvtest: every block verified through virtio_blk after pvblkd"));
    }
    if let Some(peer) = peer {
        assert!(out.console_has("pvtest: peer answers after the restore"));
        let p = peer.wait();
        if !p.passed() {
            panic!(
                "{}\n--- backend log ---\n{}",
                p.failure_report(),
                backend.log()
            );
        }
        assert!(p.console_has("pvtest: told bye"), "{}", p.console);
    }
    let seed = out
        .console
        .lines()
        .find_map(|l| {
            l.split_once("pvtest: restored after ")?
                .1
                .split_once(", seed ")
        })
        .and_then(|(_, s)| s.trim().parse::<u64>().ok())
        .expect("the guest's last seed");

    // The image holds the last pass, every block of it.
    backend.stop_cleanly();
    pvtest::peers::verify_image(&image, BLOCK, seed);
}
