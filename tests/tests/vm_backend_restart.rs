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
//!
//! Every pass writes its own region with its own seed, so the host checks
//! every pass's data in the image afterwards, not only the last one's. The
//! backend logs where each connection restarts its queue and every request
//! it takes (`pvbackend::blk::ring`); from that log the test counts the
//! kills that cut a request off after the dead daemon took it and before it
//! completed, and requires some: a request taken again by the next daemon
//! at the same ring index. Every other daemon runs as a slow device (a
//! test-only 10 ms delay per disk operation) so that kills land inside
//! requests; the others run the normal fast path.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pv_blk::pattern;
use pvtest::peers::PvBackend;
use pvtest::pvblkd_scenario::DIRECT_VERIFY_SH;
use pvtest::Guest;

const BLOCK: usize = 4096;
const KILLS: u32 = 20;
/// Blocks of one pass's region (2 MiB).
const REGION: u64 = 512;
/// Regions in the (sparse) data image: far more passes than the guest can
/// run in the test's time (a pass is 1024 requests).
const REGIONS: u64 = 1024;
/// The backend's log filter: info, and a line per request taken.
const RING_TRACE: &str = "info,pvbackend::blk::ring=trace";

/// Passes until the host writes "stop" into the control disk (QEMU's own
/// virtio-blk): pass P writes region P-1 with seed P, then verifies it
/// from the device; everything with O_DIRECT.
fn script() -> String {
    format!(
        r#"{DIRECT_VERIFY_SH}
D=; C=
for b in /sys/block/vd*; do
  case "$(cat $b/serial)" in
    restart-data) D=${{b##*/}} ;;
    pvtest-*) C=/dev/${{b##*/}} ;;
  esac
done
[ -n "$D" ] && [ -n "$C" ]
echo "pvtest: writing to /dev/$D, control $C"
pass=0
while :; do
  pass=$((pass + 1))
  [ $pass -le {REGIONS} ] || {{ echo "pvtest: no region left for pass $pass"; exit 1; }}
  start=$(( (pass - 1) * {REGION} ))
  pvio write /dev/$D --direct --seed $pass --start $start --count {REGION}
  verify_direct $D --seed $pass --start $start --count {REGION}
  echo "pvtest: pass $pass verified"
  if dd if=$C bs=512 count=1 iflag=direct 2>/dev/null | grep -q stop; then break; fi
done
echo "pvtest: final seed $pass"
"#
    )
}

/// What both tests share: a data image of [`REGIONS`] regions served by
/// our backend on `sock`, QEMU's own virtio-blk control disk, and the
/// backend log.
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
        const BLOCKS: u64 = REGIONS * REGION;
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

    /// A guest running [`script`] on the backend's disk (QEMU reconnects
    /// after 1 s) and the control disk.
    fn guest(&self, name: &str) -> Guest {
        Guest::builder(name)
            .modules(["virtio_pci", "virtio_blk"])
            .binary("pvio")
            .vhost_user_blk_reconnecting(&self.sock, 1)
            .virtio_blk_disk(&self.ctl)
            .script(&script())
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

    /// Blocks of the image (at most 10, as (pass, block)) that do not hold
    /// their pass's stamp: region P-1 must hold seed P for every pass P of
    /// 1..=`passes`.
    fn bad_blocks(&self, passes: u64) -> Vec<(u64, u64)> {
        let image = std::fs::File::open(&self.data).expect("open image");
        let mut region = vec![0u8; REGION as usize * BLOCK];
        let mut bad = Vec::new();
        for pass in 1..=passes {
            let first = (pass - 1) * REGION;
            image
                .read_exact_at(&mut region, first * BLOCK as u64)
                .expect("read image");
            bad.extend(
                region
                    .chunks_exact(BLOCK)
                    .zip(first..)
                    .filter(|(b, i)| pattern::verify(b, pass, *i).is_err())
                    .map(|(_, i)| (pass, i)),
            );
        }
        bad.truncate(10);
        bad
    }
}

/// One daemon's ring log lines, from [`RING_TRACE`]: where it started the
/// queue, and the ring index of every request it took, in order.
#[derive(Debug, Default)]
struct Ring {
    start: Option<u16>,
    took: Vec<u16>,
}

/// The ring log of each daemon in `log` (one after another: each starts
/// with its "ready:" line).
fn rings(log: &str) -> Vec<Ring> {
    let mut out: Vec<Ring> = Vec::new();
    for line in log.lines() {
        if line.contains(" ready: ") {
            out.push(Ring::default());
        }
        let Some(r) = out.last_mut() else { continue };
        let field = |key: &str| -> Option<u16> {
            let rest = line.split(key).nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        if let Some(i) = field("took the request at ring index ") {
            r.took.push(i);
        } else if let Some(b) = field("started at ring index ") {
            r.start.get_or_insert(b);
        }
    }
    out
}

/// The kills (daemon numbers) that cut a request off: the dead daemon's
/// last request taken (ring index I) is at or after the index its
/// successor restarted the queue at (QEMU's used index: I had not
/// completed), and the successor took I again.
fn interrupted_and_redone(rings: &[Ring]) -> Vec<usize> {
    rings
        .windows(2)
        .enumerate()
        .filter_map(|(k, pair)| {
            let last = *pair[0].took.last()?;
            let start = pair[1].start?;
            // Ring indexes wrap at 2^16: I >= B when I - B is small.
            let not_completed = last.wrapping_sub(start) < 1 << 15;
            (not_completed && pair[1].took.contains(&last)).then_some(k)
        })
        .collect()
}

/// The last 60 lines of a (ring-traced, long) backend log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The seed of the guest's last pass, from its console.
fn final_seed(console: &str) -> u64 {
    console
        .lines()
        .find_map(|l| l.split("pvtest: final seed ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .expect("final seed line")
}

/// Daemon number `i` of the kill test: with the ring log, and every other
/// one a slow device.
fn restart_backend(rig: &Rig, i: u32) -> PvBackend {
    // Inherited by the daemon (nextest runs each test in its own process).
    if i.is_multiple_of(2) {
        std::env::set_var("PVBACKEND_FAULT_DELAY_US", "10000");
    } else {
        std::env::remove_var("PVBACKEND_FAULT_DELAY_US");
    }
    rig.backend(&["--log-level", RING_TRACE])
}

#[test]
fn backend_sigkilled_during_writes_loses_nothing() {
    let rig = Rig::new();
    let mut backend = restart_backend(&rig, 0);
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
                tail(&b.log())
            );
            // The log grows by a line per request: read it at a calm pace.
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let started = Instant::now();
    for i in 0..KILLS {
        // Kill only a connected backend, so each kill interrupts a live
        // device; the kill points spread deterministically over 0.3-1.8 s.
        wait_connected(&backend, i as usize + 1);
        std::thread::sleep(Duration::from_millis(300 + u64::from(i * 373 % 1500)));
        backend.kill();
        backend = restart_backend(&rig, i + 1);
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
            "{}\n--- backend log (end) ---\n{}",
            out.failure_report(),
            tail(&backend.log())
        );
    }
    let final_seed = final_seed(&out.console);
    assert!(
        final_seed >= 2,
        "the guest completed only {final_seed} pass(es)"
    );

    // Some kills cut requests off in the middle, and the next daemon did
    // them again.
    let log = backend.log();
    let rings = rings(&log);
    assert_eq!(
        rings.len(),
        KILLS as usize + 1,
        "one ring log per daemon expected"
    );
    let cut = interrupted_and_redone(&rings);
    eprintln!(
        "{} of {KILLS} kills cut a request off that the next daemon redid (daemons {cut:?})",
        cut.len()
    );
    assert!(
        !cut.is_empty(),
        "no kill interrupted a request in flight; starts and last requests: {:?}",
        rings
            .iter()
            .map(|r| (r.start, r.took.last()))
            .collect::<Vec<_>>()
    );

    // Every pass was verified in the guest after its writes were
    // acknowledged; the host image holds every pass's region entirely.
    drop(backend);
    let bad = rig.bad_blocks(final_seed);
    assert!(
        bad.is_empty(),
        "blocks missing from the image, as (pass, block): {bad:?}"
    );
}

/// A panic in the backend's data path resets the device: the daemon drops
/// the connection (it does not die and does not park the device), QEMU
/// reconnects (`reconnect=1`) and resubmits the unfinished requests, and
/// the guest kernel's I/O finishes with every block correct.
///
/// The panic comes from the test-only fault injection armed in the
/// daemon's environment (`PVBACKEND_FAULT_PANIC_SECTOR`): the first read
/// covering sector 4096 (block 512), which the guest's second pass
/// verifies.
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
        "blocks wrong in the image, as (pass, block): {bad:?}"
    );
}

/// The log analysis of the kill test, on a made-up log of three daemons:
/// the first is killed after taking index 7 while its successor restarts
/// at 7 (7 never completed) and takes 7 again: counted; the second is
/// killed after taking index 9 whose completion was published (the third
/// restarts at 10): not counted.
#[test]
fn ring_log_tells_interrupted_requests_from_finished_ones() {
    let log = "\
[t INFO host_backend::daemon] ready: 1 disk(s)
[t INFO pvbackend::blk::ring] /d.img: queue 0 started at ring index 0: 1 request(s) waiting
[t TRACE pvbackend::blk::ring] /d.img: queue 0: took the request at ring index 6
[t TRACE pvbackend::blk::ring] /d.img: queue 0: took the request at ring index 7
[t INFO host_backend::daemon] ready: 1 disk(s)
[t INFO pvbackend::blk::ring] /d.img: queue 0 started at ring index 7: 1 request(s) waiting
[t TRACE pvbackend::blk::ring] /d.img: queue 0: took the request at ring index 7
[t TRACE pvbackend::blk::ring] /d.img: queue 0: took the request at ring index 8
[t TRACE pvbackend::blk::ring] /d.img: queue 0: took the request at ring index 9
[t INFO host_backend::daemon] ready: 1 disk(s)
[t INFO pvbackend::blk::ring] /d.img: queue 0 started at ring index 10: 0 request(s) waiting
[t TRACE pvbackend::blk::ring] /d.img: queue 0: took the request at ring index 10
";
    let r = rings(log);
    assert_eq!(r.len(), 3);
    assert_eq!(
        (r[1].start, r[1].took.as_slice()),
        (Some(7), &[7, 8, 9][..])
    );
    assert_eq!(interrupted_and_redone(&r), [0]);
    // Across the wrap of the 16-bit ring index.
    let wrapped = [
        Ring {
            start: Some(65530),
            took: vec![65535, 0, 1],
        },
        Ring {
            start: Some(0),
            took: vec![0, 1, 2],
        },
    ];
    assert_eq!(interrupted_and_redone(&wrapped), [0]);
}
