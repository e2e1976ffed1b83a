//! Crash safety of our vhost-user-blk backend: SIGKILL it again and again
//! while the guest kernel writes with O_DIRECT, restart it, and check that
//! no write the guest saw acknowledged is lost and the guest's I/O finishes.
//!
//! How it holds without VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD (which QEMU
//! 7.2 only uses when offered, and rust-vmm's framework does not
//! implement): each queue completes requests in avail order, so the used
//! ring in guest memory is itself the durable record of what finished. When
//! the backend dies, QEMU cannot GET_VRING_BASE and resynchronises the
//! queue's next-avail index to the used index; the restarted backend then
//! redoes exactly the requests that had not completed (a write that reached
//! the disk but not the used ring is rewritten with the same data) and none
//! that had.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pv_blk::pattern;
use pvtest::peers::PvBackend;
use pvtest::Guest;

const BLOCK: usize = 4096;
const KILLS: u32 = 20;

/// Passes of write-all then verify-all with O_DIRECT until the host
/// writes "stop" into the control disk (QEMU's own virtio-blk).
const SCRIPT: &str = r#"
D=; C=
for b in /sys/block/vd*; do
  case "$(cat $b/serial)" in
    restart-data) D=/dev/${b##*/} ;;
    pvtest-*) C=/dev/${b##*/} ;;
  esac
done
[ -n "$D" ] && [ -n "$C" ]
echo "pvtest: writing to $D, control $C"
pass=0
while :; do
  pass=$((pass + 1))
  pvio write $D --direct --seed $pass
  pvio verify $D --direct --seed $pass
  echo "pvtest: pass $pass verified"
  if dd if=$C bs=512 count=1 iflag=direct 2>/dev/null | grep -q stop; then break; fi
done
echo "pvtest: final seed $pass"
"#;

/// What both tests share: an 8 MiB data image served by our backend on
/// `sock`, QEMU's own virtio-blk control disk, and the backend log.
struct Rig {
    /// Holds the images, socket and log; removed on drop.
    _dir: tempfile::TempDir,
    data: PathBuf,
    ctl: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    /// The backend's disk spec.
    spec: Vec<String>,
}

impl Rig {
    fn new() -> Self {
        const BLOCKS: u64 = 2048; // 8 MiB
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data.img");
        let ctl = dir.path().join("ctl.img");
        std::fs::File::create(&data)
            .and_then(|f| f.set_len(BLOCKS * BLOCK as u64))
            .expect("data image");
        std::fs::File::create(&ctl)
            .and_then(|f| f.set_len(1 << 20))
            .expect("control image");
        let sock = dir.path().join("data.sock");
        let log = dir.path().join("backend.log");
        let spec = vec![format!(
            "path={},socket={},serial=restart-data,queues=1",
            data.display(),
            sock.display()
        )];
        Self {
            _dir: dir,
            data,
            ctl,
            sock,
            log,
            spec,
        }
    }

    /// The backend with extra `args`, logging to the rig's log.
    fn backend(&self, args: &[&str]) -> PvBackend {
        PvBackend::start(&self.spec, args, &self.log).expect("backend")
    }

    /// A guest running [`SCRIPT`] on the backend's disk (QEMU reconnects
    /// after 1 s) and the control disk.
    fn guest(&self, name: &str) -> Guest {
        Guest::builder(name)
            .modules(["virtio_pci", "virtio_blk"])
            .binary("pvio")
            .vhost_user_blk_reconnecting(&self.sock, 1)
            .virtio_blk_disk(&self.ctl)
            .script(SCRIPT)
            .timeout(Duration::from_secs(1200))
            .start()
            .expect("harness")
    }

    /// Tell the guest to stop after its current pass.
    fn stop_guest(&self) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.ctl)
            .and_then(|f| f.write_all_at(b"stop\n", 0).and_then(|()| f.sync_all()))
            .expect("write stop");
    }

    /// Blocks of the image (at most 10) that do not hold pass `seed`.
    fn bad_blocks(&self, seed: u64) -> Vec<usize> {
        let image = std::fs::read(&self.data).expect("read image");
        image
            .chunks_exact(BLOCK)
            .enumerate()
            .filter(|(i, b)| pattern::verify(b, seed, *i as u64).is_err())
            .map(|(i, _)| i)
            .take(10)
            .collect()
    }
}

/// The seed of the guest's last pass, from its console.
fn final_seed(console: &str) -> u64 {
    console
        .lines()
        .find_map(|l| l.split("pvtest: final seed ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .expect("final seed line")
}

#[test]
fn backend_sigkilled_during_writes_loses_nothing() {
    let rig = Rig::new();
    let mut backend = rig.backend(&[]);
    let mut guest = rig.guest("backend-restart");
    guest
        .wait_for_console("pvtest: writing to", Duration::from_secs(300))
        .expect("guest started writing");

    let connections = |b: &PvBackend| b.log().matches("frontend connected").count();
    let wait_connected = |b: &PvBackend, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while connections(b) < n {
            assert!(
                Instant::now() < deadline,
                "QEMU did not reconnect (connection {n}):\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let started = Instant::now();
    for i in 0..KILLS {
        // Kill only a connected backend, so each kill interrupts a live
        // device; the kill points spread deterministically over 0.3-1.8 s.
        wait_connected(&backend, i as usize + 1);
        std::thread::sleep(Duration::from_millis(300 + u64::from(i * 373 % 1500)));
        backend.kill();
        backend = rig.backend(&[]);
    }
    wait_connected(&backend, KILLS as usize + 1);
    let passes_before = guest.drain_console().matches("verified\n").count();
    eprintln!(
        "{KILLS} kills in {:.1} s; the guest verified {passes_before} pass(es) meanwhile",
        started.elapsed().as_secs_f64()
    );
    // Let the guest finish at least one whole pass after the last restart.
    guest
        .wait_for_console(
            &format!("pvtest: pass {} verified", passes_before + 1),
            Duration::from_secs(600),
        )
        .expect("guest I/O finishes after the last restart");
    rig.stop_guest();
    let out = guest.wait();
    // QEMU came back after every restart (reconnect=1), so the kills did
    // interrupt a live device each time.
    let connects = backend.log().matches("frontend connected").count();
    assert!(
        connects > KILLS as usize,
        "only {connects} connections for {KILLS} restarts"
    );
    if !out.passed() {
        panic!(
            "{}\n--- backend log ---\n{}",
            out.failure_report(),
            backend.log()
        );
    }
    let final_seed = final_seed(&out.console);
    assert!(
        final_seed >= 2,
        "the guest completed only {final_seed} pass(es)"
    );

    // Every pass was verified in the guest after its writes were
    // acknowledged; the host image holds the last pass entirely.
    drop(backend);
    let bad = rig.bad_blocks(final_seed);
    assert!(
        bad.is_empty(),
        "blocks of the last pass missing from the image: {bad:?}"
    );
}

/// A panic in the backend's data path resets the device: the daemon drops
/// the connection (it does not die and does not park the device), QEMU
/// reconnects (`reconnect=1`) and resubmits the unfinished requests, and
/// the guest kernel's I/O finishes with every block correct.
///
/// The panic comes from the test-only fault injection armed in the
/// daemon's environment (`PVBACKEND_FAULT_PANIC_SECTOR`): the first read
/// covering sector 4096, which the guest's first verify pass reads.
#[test]
fn worker_panic_resets_the_device_and_the_guest_carries_on() {
    let rig = Rig::new();
    // Inherited by the daemon (nextest runs each test in its own process).
    std::env::set_var("PVBACKEND_FAULT_PANIC_SECTOR", "4096");
    let backend = rig.backend(&["--metrics", "127.0.0.1:0"]);
    let pid = backend.pid().expect("pid");
    let mut guest = rig.guest("backend-panic");
    guest
        .wait_for_console("pvtest: pass 2 verified", Duration::from_secs(900))
        .expect("guest verified two passes across the reset");
    rig.stop_guest();
    let out = guest.wait();
    if !out.passed() {
        panic!(
            "{}\n--- backend log ---\n{}",
            out.failure_report(),
            backend.log()
        );
    }
    // The same daemon process served throughout: one reset, one panic, a
    // second connection from QEMU.
    assert_eq!(backend.pid(), Some(pid));
    let m = backend.fetch_metrics().expect("metrics");
    let v = |series: &str| PvBackend::metric(&m, series).unwrap_or(0.0);
    assert_eq!(v("pvbackend_blk_resets_total{disk=\"data\"}"), 1.0, "{m}");
    assert_eq!(
        v("pvbackend_blk_errors_total{disk=\"data\",kind=\"worker_panic\"}")
            + v("pvbackend_blk_errors_total{disk=\"data\",kind=\"io_panic\"}"),
        1.0,
        "{m}"
    );
    assert!(
        v("pvbackend_blk_connections_total{disk=\"data\"}") >= 2.0,
        "QEMU did not reconnect after the reset: {m}"
    );
    let final_seed = final_seed(&out.console);
    let st = backend.stop(Duration::from_secs(60)).expect("stop");
    assert!(st.is_some_and(|s| s.success()), "graceful stop: {st:?}");
    let bad = rig.bad_blocks(final_seed);
    assert!(
        bad.is_empty(),
        "blocks of the last pass wrong in the image: {bad:?}"
    );
}
