//! Live migration between two QEMU processes on this host, the guest's
//! disk on pvbackend: the destination QEMU connects to the disk's socket
//! while the source still runs (pvbackend accepts it as a second
//! connection), the guest writes stamped blocks throughout, QEMU moves it
//! over a unix socket, and the disk is handed over where
//! `host-backend/src/blk/handover.rs` says: the source's queues stopped
//! (GET_VRING_BASE), the destination's started.
//!
//! Proved here:
//! - every block the guest wrote verifies on the destination (read back
//!   from the disk with O_DIRECT) and in the image on the host;
//! - the source can no longer write: it is resumed (`cont`) after the
//!   migration, while the destination runs, and its next write fails
//!   (pvbackend completes it with an I/O error, `errors{kind="not_owner"}`);
//!   the destination reads every block back intact after that, and the
//!   image holds the destination's data.
//!
//! The guest tells the two QEMU processes apart by a `fw_cfg` string set
//! only on the command line ("original" / "migrated"). The destination
//! waits for the test to write "go" into a control disk (QEMU's own
//! virtio-blk on an image both QEMU processes open, never written by the
//! guest) once the source has been refused, before it checks the disk
//! again and ends.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pvtest::peers::PvBackend;
use pvtest::qmp::Qmp;
use pvtest::{Guest, GuestBuilder};
use serde_json::json;

const BLOCK: usize = 4096;
/// Blocks stamped in each pass (16 MiB).
const BLOCKS: u64 = 4096;
const SEED: u64 = 0x3163_0000;
const FW_CFG: &str = "opt/pvtest/phase";

/// Waits until the guest behind `qmp` reports `running`.
fn wait_running(qmp: &mut Qmp, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = qmp.execute("query-status", json!({})).expect("status");
        if status["status"] == json!("running") {
            return;
        }
        assert!(Instant::now() < deadline, "{what} not running: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The guest's seed of its last pass, from its console.
fn last_seed(console: &str) -> u64 {
    console
        .lines()
        .find_map(|l| {
            l.split_once("pvtest: migrated after ")?
                .1
                .split_once(", seed ")
        })
        .and_then(|(_, s)| s.trim().parse::<u64>().ok())
        .expect("the guest's last seed")
}

/// A work directory with an empty disk image; the paths of the image, the
/// disk's socket and the migration socket in it.
fn workdir() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    fs::File::create(&image)
        .and_then(|f| f.set_len(BLOCKS * BLOCK as u64))
        .expect("image");
    let (sock, migration) = (
        dir.path().join("disk.sock"),
        dir.path().join("migration.sock"),
    );
    (dir, image, sock, migration)
}

/// Starts `machine` as the destination of `source`'s migration over the
/// unix socket `migration`; returns it, QMP to both and the URI.
fn start_destination(
    machine: GuestBuilder,
    source: &Guest,
    migration: &Path,
) -> (Guest, Qmp, Qmp, String) {
    let uri = format!("unix:{}", migration.display());
    let dest = machine
        .migrate_from(source, &uri)
        .expect("destination builder")
        .start()
        .expect("destination");
    let dst = Qmp::connect(dest.qmp_socket().expect("qmp"), Duration::from_secs(60))
        .expect("destination qmp");
    let src = Qmp::connect(source.qmp_socket().expect("qmp"), Duration::from_secs(30))
        .expect("source qmp");
    (dest, dst, src, uri)
}

#[test]
fn disk_guest_live_migrates_between_two_qemus_and_the_source_cannot_write() {
    let name = "migrate-live";
    let (dir, image, sock, migration) = workdir();
    let backend = PvBackend::start_with(
        &[format!(
            "path={},socket={},serial=pv-migrate,name=pv-migrate",
            image.display(),
            sock.display()
        )],
        &[],
        &["--log-level", "info", "--metrics", "127.0.0.1:0"],
        &dir.path().join("backend.log"),
    )
    .expect("backend");

    // Each pass stamps every block with a new seed (O_DIRECT, so every
    // write goes to pvbackend). The pass running when the guest moves is
    // finished on the destination, which then leaves the loop.
    let script = format!(
        r#"
phase() {{ cat /sys/firmware/qemu_fw_cfg/by_name/{FW_CFG}/raw; }}
[ "$(phase)" = original ]
D=; C=
for b in /sys/block/vd*; do
  case "$(cat $b/serial)" in
    pv-migrate) D=/dev/${{b##*/}} ;;
    pvtest-ctl) C=/dev/${{b##*/}} ;;
  esac
done
[ -n "$D" ] && [ -n "$C" ]
i=0
seed={SEED}
while [ "$(phase)" = original ]; do
  seed=$(({SEED} + i))
  if ! pvio write $D --seed $seed --count {BLOCKS} --direct; then
    echo "pvtest: write refused in $(phase), pass $i"
    exit 0
  fi
  echo "pvtest: pass $i written"
  i=$((i + 1))
done
echo "pvtest: migrated after $i passes, seed $seed"
pvio verify $D --seed $seed --count {BLOCKS} --direct
echo "pvtest: every block verified on the destination"
until dd if=$C bs=512 count=1 iflag=direct 2>/dev/null | grep -q go; do sleep 0.2; done
echo "pvtest: told to go on"
pvio verify $D --seed $seed --count {BLOCKS} --direct
echo "pvtest: every block verified after the source resumed"
"#
    );
    let ctl = dir.path().join("ctl.img");
    fs::File::create(&ctl)
        .and_then(|f| f.set_len(1 << 20))
        .expect("control image");
    let machine = |phase: &str| -> GuestBuilder {
        Guest::builder(name)
            .memory_mib(256)
            .modules(["virtio_pci", "virtio_blk", "qemu_fw_cfg"])
            .binary("pvio")
            .vhost_user_blk(&sock, 1)
            .qmp()
            .qemu_args([
                "-fw_cfg".to_owned(),
                format!("name={FW_CFG},string={phase}"),
                // Both QEMU processes open it (the destination while the
                // source runs): no image locks. The guest reads it with
                // O_DIRECT, so each read reaches the file.
                "-drive".to_owned(),
                format!(
                    "file={},format=raw,if=none,id=ctl,cache=writeback,aio=threads,file.locking=off",
                    ctl.display()
                ),
                "-device".to_owned(),
                "virtio-blk-pci,drive=ctl,serial=pvtest-ctl".to_owned(),
            ])
            .script(&script)
            .timeout(Duration::from_secs(1500))
    };
    let mut source = machine("original").start().expect("boot");
    backend.expect_console(
        &mut source,
        "pvtest: pass 0 written",
        Duration::from_secs(900),
    );
    // The destination connects to the disk while the source runs.
    let (dest, mut dst_qmp, mut src_qmp, uri) =
        start_destination(machine("migrated"), &source, &migration);
    // QEMU listens on the migration socket once it has started.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !migration.exists() {
        assert!(Instant::now() < deadline, "no migration socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    src_qmp
        .execute(
            "migrate-set-parameters",
            json!({ "max-bandwidth": 1u64 << 30 }),
        )
        .expect("raise max-bandwidth");
    src_qmp
        .execute("migrate", json!({ "uri": uri }))
        .expect("migrate starts");
    let info = src_qmp
        .wait_for_migration("live migration", Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}\n--- backend log ---\n{}", backend.log()));
    eprintln!(
        "pvtest: migrated in {} ms, downtime {} ms (QEMU's figures)",
        info["total-time"], info["downtime"]
    );
    // The destination has started its device once it reports running
    // (QEMU answers QMP only after its start handlers have run).
    wait_running(&mut dst_qmp, "destination");
    let before = source.drain_console().to_owned();
    assert!(
        !before.contains("pvtest: write refused"),
        "a write failed before the migration ended:\n{before}"
    );

    // The source resumes after handing the disk over: its next write must
    // fail, not reach the disk.
    src_qmp
        .execute("cont", json!({}))
        .expect("cont on the source");
    backend.expect_console(
        &mut source,
        "pvtest: write refused in original",
        Duration::from_secs(600),
    );
    let metrics = backend.fetch_metrics().expect("metrics");
    let refused = PvBackend::metric(
        &metrics,
        r#"pvbackend_blk_errors_total{disk="pv-migrate",kind="not_owner"}"#,
    );
    assert!(
        refused.is_some_and(|n| n >= 1.0),
        "no not_owner error counted: {refused:?}\n{metrics}"
    );
    src_qmp.execute("quit", json!({})).ok();
    drop(source.wait());

    // The destination checks the disk again and ends.
    fs::OpenOptions::new()
        .write(true)
        .open(&ctl)
        .and_then(|f| f.write_all_at(b"go\n", 0).and_then(|()| f.sync_all()))
        .expect("tell the destination");
    let out = dest.wait();
    backend.expect_guest_pass(&out);
    assert!(out.console_has("pvtest: every block verified after the source resumed"));
    assert!(!out.console_has("pvtest: write refused"), "{}", out.console);
    let seed = last_seed(&out.console);

    backend.stop_cleanly();
    pvtest::peers::verify_image(&image, BLOCK, seed);
}

/// Where the benchmark's guest disk lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BenchDisk {
    /// pvbackend (vhost-user-blk).
    PvBackend,
    /// QEMU's built-in virtio-blk on the same image (same-host migration
    /// of a file both QEMU processes open; QEMU hands the image over).
    QemuVirtioBlk,
}

/// One live migration of a guest writing stamped blocks (O_DIRECT) to its
/// disk, source and destination on this host over a unix socket, 256 MiB
/// of shared-memfd RAM both ways; returns QEMU's `downtime` and
/// `total-time` (ms) and checks that the destination verifies its disk.
fn migrate_once(disk: BenchDisk, run: u32) -> (u64, u64) {
    let name = format!("migrate-bench-{disk:?}-{run}");
    let (dir, image, sock, migration) = workdir();
    let backend = (disk == BenchDisk::PvBackend).then(|| {
        PvBackend::start_with(
            &[format!(
                "path={},socket={}",
                image.display(),
                sock.display()
            )],
            &[],
            &["--log-level", "info"],
            &dir.path().join("backend.log"),
        )
        .expect("backend")
    });
    let script = format!(
        r#"
phase() {{ cat /sys/firmware/qemu_fw_cfg/by_name/{FW_CFG}/raw; }}
i=0
while [ "$(phase)" = original ]; do
  seed=$(({SEED} + i))
  pvio write /dev/vda --seed $seed --count {BLOCKS} --direct
  echo "pvtest: pass $i written"
  i=$((i + 1))
done
pvio verify /dev/vda --seed $seed --count {BLOCKS} --direct
echo "pvtest: every block verified on the destination"
"#
    );
    let machine = |phase: &str| -> GuestBuilder {
        let b = Guest::builder(&name)
            .memory_mib(256)
            .shared_memory()
            .modules(["virtio_pci", "virtio_blk", "qemu_fw_cfg"])
            .binary("pvio")
            .qmp()
            .qemu_args(["-fw_cfg", &format!("name={FW_CFG},string={phase}")])
            .script(&script)
            .timeout(Duration::from_secs(1500));
        match disk {
            BenchDisk::PvBackend => b.vhost_user_blk(&sock, 1),
            BenchDisk::QemuVirtioBlk => b.virtio_blk_disk(&image),
        }
    };
    let mut source = machine("original").start().expect("boot");
    source
        .wait_for_console("pvtest: pass 0 written", Duration::from_secs(900))
        .expect("guest writing");
    let (dest, _dst_qmp, mut qmp, uri) =
        start_destination(machine("migrated"), &source, &migration);
    qmp.execute(
        "migrate-set-parameters",
        json!({ "max-bandwidth": 1u64 << 30 }),
    )
    .expect("raise max-bandwidth");
    qmp.execute("migrate", json!({ "uri": uri }))
        .expect("migrate starts");
    let info = qmp
        .wait_for_migration("live migration", Duration::from_secs(600))
        .expect("migration");
    qmp.execute("quit", json!({})).ok();
    drop(source.wait());
    let out = dest.wait();
    out.expect_pass();
    assert!(out.console_has("pvtest: every block verified on the destination"));
    drop(backend);
    (
        info["downtime"].as_u64().unwrap_or(0),
        info["total-time"].as_u64().unwrap_or(0),
    )
}

/// Live-migration downtime (QEMU's own `downtime` figure: the source's
/// stop to the destination's start) of a guest writing to its disk, on
/// pvbackend and on QEMU's built-in virtio-blk, alternating, three runs
/// each. Prints a table for docs/BENCHMARKS.md:
///
/// cargo nextest run -p pvdrivers-tests --test vm_migrate --run-ignored ignored-only --no-capture
#[test]
#[ignore = "benchmark: run by hand"]
fn bench_live_migration_downtime_pvbackend_vs_qemu_virtio_blk() {
    let mut rows = Vec::new();
    for run in 1..=3 {
        for disk in [BenchDisk::PvBackend, BenchDisk::QemuVirtioBlk] {
            let (downtime, total) = migrate_once(disk, run);
            eprintln!("pvtest: run {run} {disk:?}: downtime {downtime} ms, total {total} ms");
            rows.push((run, disk, downtime, total));
        }
    }
    eprintln!("| run | disk | downtime ms | total ms |");
    eprintln!("| --- | --- | --- | --- |");
    for (run, disk, downtime, total) in rows {
        eprintln!("| {run} | {disk:?} | {downtime} | {total} |");
    }
}
