//! Our balloon runtime (`pvballoond`, pv-balloon's Linux guest daemon) on
//! QEMU's own virtio-balloon: the host moves the target over QMP and
//! checks `query-balloon`, QEMU's resident memory and `guest-stats`; the
//! guest checks its side (pinned memory, the device handed back to the
//! kernel on SIGTERM). A second guest runs a memory hog against the
//! runtime's free-memory floor. Bounds are generous timeouts, never timing
//! assertions.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pvtest::process::vm_rss_kib;
use pvtest::{Guest, Qmp};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const RAM: u64 = 512;
const BALLOON: u64 = 256;

/// Finds the balloon's PCI address, prints the kernel driver that has it,
/// and defines helpers on /proc/meminfo (kB).
const GUEST_PRELUDE: &str = "\
bdf=\n\
for d in /sys/bus/pci/devices/*; do\n\
\x20 case $(cat $d/vendor):$(cat $d/device) in 0x1af4:0x1002|0x1af4:0x1045) bdf=${d##*/};; esac\n\
done\n\
[ -n \"$bdf\" ] || { echo 'pvtest: no virtio-balloon PCI device'; exit 1; }\n\
drv() { basename $(readlink /sys/bus/pci/devices/$bdf/driver) 2>/dev/null || echo none; }\n\
echo \"pvtest: balloon $bdf bound to $(drv)\"\n\
mi() { sed -n \"s/^$1: *\\([0-9]*\\).*/\\1/p\" /proc/meminfo; }\n\
";

/// SIGTERM, exit status 0, the kernel drivers back on the device (waited
/// for: the kernel binds them after the daemon hands the device back).
const GUEST_STOP: &str = "\
kill -TERM $pid\n\
rc=0; wait $pid || rc=$?\n\
echo \"pvtest: pvballoond exited $rc\"\n\
[ $rc -eq 0 ]\n\
n=0\n\
until [ $(drv) = virtio-pci ] && ls /sys/bus/virtio/drivers/virtio_balloon | grep -q virtio; do\n\
\x20 n=$((n + 1)); [ $n -le 300 ] || break; sleep 1\n\
done\n\
echo \"pvtest: after exit $bdf bound to $(drv), virtio_balloon has $(ls /sys/bus/virtio/drivers/virtio_balloon | grep -c virtio)\"\n\
[ $(drv) = virtio-pci ]\n\
ls /sys/bus/virtio/drivers/virtio_balloon | grep -q virtio\n\
echo \"pvtest: Mlocked $(mi Mlocked) kB after exit\"\n\
if dmesg | grep -q 'Out of memory'; then echo 'pvtest: OOM in dmesg'; exit 1; fi\n\
echo pvtest: no OOM\n\
";

fn actual(qmp: &mut Qmp) -> u64 {
    let b = qmp
        .execute("query-balloon", json!({}))
        .expect("query-balloon");
    b["actual"].as_u64().expect("actual")
}

fn guest_stats(qmp: &mut Qmp, path: &str) -> Value {
    qmp.execute(
        "qom-get",
        json!({ "path": path, "property": "guest-stats" }),
    )
    .expect("guest-stats")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Polls `f` every 200 ms until it returns Some, or panics with `what` and
/// the console after `limit`.
fn wait_until<T>(
    limit: Duration,
    what: &str,
    guest: &mut Guest,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what}: not reached within {} s\n--- console ---\n{}",
                limit.as_secs(),
                guest.drain_console()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The runtime's and the scenario's lines, for the test log.
fn show_log(console: &str) {
    for l in console
        .lines()
        .filter(|l| l.contains("pvballoond") || l.contains("pvtest:"))
    {
        eprintln!("  | {l}");
    }
}

fn console_wait(guest: &mut Guest, needle: &str, secs: u64) -> String {
    match guest.wait_for_console(needle, Duration::from_secs(secs)) {
        Ok(l) => l,
        Err(e) => panic!("{e}\n--- console ---\n{}", guest.drain_console()),
    }
}

/// Lower the target: `query-balloon` reaches it, QEMU's RSS drops (the
/// guest touched its memory first), the guest sees the memory pinned,
/// statistics arrive with fresh timestamps; raise it: the memory comes
/// back; SIGTERM: the device goes back to the kernel. QEMU's device has its
/// defaults (no deflate-on-oom).
#[test]
fn pvballoond_inflates_deflates_reports_and_hands_back() {
    let script = format!(
        "{GUEST_PRELUDE}\
         mkdir -p /fill\n\
         mount -t tmpfs -o size=400m tmpfs /fill\n\
         dd if=/dev/zero of=/fill/blob bs=1M count=300 2>/dev/null\n\
         rm /fill/blob\n\
         echo pvtest: touched and freed 300 MiB\n\
         pvballoond --interval-ms 50 &\n\
         pid=$!\n\
         while [ $(mi Mlocked) -lt $(({BALLOON} * 1024 * 3 / 4)) ]; do sleep 1; done\n\
         echo \"pvtest: inflated: Mlocked $(mi Mlocked) kB, MemAvailable $(mi MemAvailable) kB, $bdf bound to $(drv)\"\n\
         while [ $(mi Mlocked) -ge 16384 ]; do sleep 1; done\n\
         echo \"pvtest: deflated: Mlocked $(mi Mlocked) kB, MemAvailable $(mi MemAvailable) kB\"\n\
         {GUEST_STOP}\
         echo pvtest: handed back\n"
    );
    // uio_pci_generic: the daemon sleeps on the device's INTx (the
    // pressure test below runs without it: timed polling).
    let mut guest = Guest::builder("balloon-runtime")
        .memory_mib(RAM as u32)
        .modules(["virtio_pci", "virtio_balloon", "uio_pci_generic"])
        .virtio_balloon()
        .qmp()
        .binary("pvballoond")
        .script(&script)
        .timeout(Duration::from_secs(1200))
        .start()
        .expect("harness");
    let bound = console_wait(&mut guest, "pvtest: balloon ", 400);
    assert!(bound.contains("bound to virtio-pci"), "{bound}");
    console_wait(&mut guest, "pvballoond: driving", 400);
    let setup = console_wait(&mut guest, ", interrupts ", 60);
    assert!(
        setup.contains("interrupts INTx"),
        "pvballoond did not take the device's INTx through uio_pci_generic: {setup}"
    );
    let pid = guest.qemu_pid().expect("qemu pid");
    let sock = guest.qmp_socket().expect("qmp").to_owned();
    let mut qmp = Qmp::connect(&sock, Duration::from_secs(30)).expect("qmp");
    assert_eq!(actual(&mut qmp), RAM * MIB);
    let rss_before = vm_rss_kib(pid).expect("VmRSS") / 1024;
    assert!(
        rss_before >= 300,
        "the guest touched 300 MiB but QEMU's RSS is {rss_before} MiB"
    );

    // Statistics: QEMU asks every 2 s; last-update advances and is fresh.
    let path = "/machine/peripheral/balloon1";
    qmp.execute(
        "qom-set",
        json!({ "path": path, "property": "guest-stats-polling-interval", "value": 2 }),
    )
    .expect("stats polling");

    // Lower the target by 256 MiB.
    let target = (RAM - BALLOON) * MIB;
    qmp.execute("balloon", json!({ "value": target }))
        .expect("balloon");
    let mut lowest = u64::MAX;
    wait_until(
        Duration::from_secs(400),
        "query-balloon actual at the lowered target",
        &mut guest,
        || {
            let a = actual(&mut qmp);
            lowest = lowest.min(a);
            (a == target).then_some(())
        },
    );
    assert!(lowest >= target, "went below the target: {lowest}");
    let line = console_wait(&mut guest, "pvtest: inflated", 300);
    assert!(line.contains("bound to uio_pci_generic"), "{line}");
    let rss_low = vm_rss_kib(pid).expect("VmRSS") / 1024;
    let released = rss_before.saturating_sub(rss_low);
    eprintln!("QEMU RSS {rss_before} MiB -> {rss_low} MiB after ballooning {BALLOON} MiB");
    // The guest touched 300 MiB before, so every page the balloon takes
    // was resident: nearly all of it must leave QEMU (measured 253-256 of
    // 256 MiB); a driver that reports pages it does not give up falls short.
    assert!(
        released >= BALLOON * 9 / 10,
        "ballooning {BALLOON} MiB released only {released} MiB of QEMU's RSS ({rss_before} -> {rss_low})"
    );

    // QEMU stamps each statistics update with its wall clock (seconds).
    // An update newer than the one we saw was stamped after we asked for
    // that one and before we saw it: between the host clock read before
    // the first query and the one after the second, however slow the run.
    let (s1, asked) = wait_until(
        Duration::from_secs(120),
        "first guest-stats",
        &mut guest,
        || {
            let asked = unix_now();
            let s = guest_stats(&mut qmp, path);
            (s["last-update"].as_u64()? > 0).then_some((s, asked))
        },
    );
    let t1 = s1["last-update"].as_u64().expect("last-update");
    let s2 = wait_until(
        Duration::from_secs(120),
        "a newer guest-stats last-update",
        &mut guest,
        || {
            let s = guest_stats(&mut qmp, path);
            (s["last-update"].as_u64()? > t1).then_some(s)
        },
    );
    let seen = unix_now();
    let t2 = s2["last-update"].as_u64().expect("last-update");
    assert!(
        (asked..=seen).contains(&t2),
        "last-update {t2} is not the time of an update between {asked} and {seen}"
    );
    let stats = &s2["stats"];
    eprintln!("guest-stats: {stats}");
    for tag in [
        "stat-swap-in",
        "stat-swap-out",
        "stat-major-faults",
        "stat-minor-faults",
        "stat-free-memory",
        "stat-total-memory",
        "stat-available-memory",
        "stat-disk-caches",
        "stat-htlb-pgalloc",
        "stat-htlb-pgfail",
    ] {
        let v = stats[tag].as_i64().unwrap_or(-1);
        assert!(v >= 0, "{tag} not reported: {stats}");
    }
    let total = stats["stat-total-memory"].as_u64().expect("total");
    let avail = stats["stat-available-memory"].as_u64().expect("available");
    assert!(
        total > (RAM - 128) * MIB && total <= RAM * MIB,
        "MemTotal {total}"
    );
    // The balloon's pages are pinned in the guest: not available.
    assert!(
        avail < total - (BALLOON * 3 / 4) * MIB,
        "MemAvailable {avail} of {total} should exclude the balloon"
    );
    assert!(
        stats["stat-minor-faults"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );

    // Raise it again: the memory comes back to the guest.
    qmp.execute("balloon", json!({ "value": RAM * MIB }))
        .expect("balloon");
    wait_until(
        Duration::from_secs(400),
        "query-balloon actual back at the guest's RAM",
        &mut guest,
        || (actual(&mut qmp) == RAM * MIB).then_some(()),
    );
    console_wait(&mut guest, "pvtest: deflated", 300);
    let _ = qmp.execute(
        "qom-set",
        json!({ "path": path, "property": "guest-stats-polling-interval", "value": 0 }),
    );
    // Past the stop script's own 300 s wait for the rebind, so its report shows.
    console_wait(&mut guest, "pvtest: handed back", 420);
    let outcome = guest.wait();
    outcome.expect_pass();
    show_log(&outcome.console);
    assert!(
        outcome.console_has("stopped cleanly"),
        "{}",
        outcome.failure_report()
    );
}

/// A guest process allocating past what the guest has free, with 256 MiB
/// in the balloon: the runtime deflates below the host's target
/// (deflate-on-oom) to keep its free-memory floor, the process gets its
/// memory and lives, nothing is OOM-killed; when the process exits, the
/// runtime inflates back to the target. The guest then waits for the host
/// to raise the target (the host's last `query-balloon` is behind that),
/// so it never exits under a query.
#[test]
fn pvballoond_deflates_under_memory_pressure() {
    let script = format!(
        "{GUEST_PRELUDE}\
         pvballoond --interval-ms 50 --floor-mib 64 &\n\
         pid=$!\n\
         while [ $(mi Mlocked) -lt $(({BALLOON} * 1024 - 4096)) ]; do sleep 1; done\n\
         avail=$(mi MemAvailable)\n\
         hog=$((avail / 1024 + 64))\n\
         echo \"pvtest: inflated: MemAvailable $avail kB, allocating $hog MiB\"\n\
         pvmemhog --mib $hog --step-mib 4 --pause-ms 50 --hold-secs 5\n\
         echo \"pvtest: hog done: Mlocked $(mi Mlocked) kB\"\n\
         while [ $(mi Mlocked) -lt $(({BALLOON} * 1024 - 4096)) ]; do sleep 1; done\n\
         echo \"pvtest: reinflated: Mlocked $(mi Mlocked) kB\"\n\
         while [ $(mi Mlocked) -ge 16384 ]; do sleep 1; done\n\
         echo \"pvtest: deflated on the host's request: Mlocked $(mi Mlocked) kB\"\n\
         {GUEST_STOP}\
         echo pvtest: handed back\n"
    );
    let mut guest = Guest::builder("balloon-runtime-pressure")
        .memory_mib(RAM as u32)
        .modules(["virtio_pci", "virtio_balloon"])
        .qemu_args([
            "-device",
            "virtio-balloon-pci,id=pvballoon,deflate-on-oom=on",
        ])
        .qmp()
        .binary("pvballoond")
        .binary("pvmemhog")
        .script(&script)
        .timeout(Duration::from_secs(1200))
        .start()
        .expect("harness");
    console_wait(&mut guest, "pvballoond: driving", 400);
    let sock = guest.qmp_socket().expect("qmp").to_owned();
    let mut qmp = Qmp::connect(&sock, Duration::from_secs(30)).expect("qmp");
    let target = (RAM - BALLOON) * MIB;
    qmp.execute("balloon", json!({ "value": target }))
        .expect("balloon");
    wait_until(
        Duration::from_secs(400),
        "query-balloon actual at the lowered target",
        &mut guest,
        || (actual(&mut qmp) == target).then_some(()),
    );
    let line = console_wait(&mut guest, "pvtest: inflated", 300);
    eprintln!("{line}");
    // The hog needs 64 MiB more than was available: only the balloon can
    // give it.
    console_wait(&mut guest, "pvmemhog: holding", 600);
    let highest = actual(&mut qmp);
    eprintln!(
        "under pressure the balloon went from {BALLOON} MiB to {} MiB",
        (RAM * MIB).saturating_sub(highest) / MIB
    );
    assert!(
        highest >= target + 64 * MIB,
        "the balloon gave back only {} MiB under pressure",
        highest.saturating_sub(target) / MIB
    );
    assert!(
        guest.console().contains("memory pressure"),
        "no pressure logged:\n{}",
        guest.console()
    );
    console_wait(&mut guest, "pvtest: hog done", 300);
    // Pressure over: back to the host's target.
    console_wait(&mut guest, "pvtest: reinflated", 400);
    wait_until(
        Duration::from_secs(120),
        "query-balloon actual back at the target",
        &mut guest,
        || (actual(&mut qmp) == target).then_some(()),
    );
    // The guest stays up until the host has seen the target (it waits for
    // this request before it stops the daemon, so QEMU cannot exit under
    // the query above): hand all the memory back.
    qmp.execute("balloon", json!({ "value": RAM * MIB }))
        .expect("balloon");
    wait_until(
        Duration::from_secs(400),
        "query-balloon actual back at the guest's RAM",
        &mut guest,
        || (actual(&mut qmp) == RAM * MIB).then_some(()),
    );
    console_wait(&mut guest, "pvtest: deflated on the host's request", 300);
    // Past the stop script's own 300 s wait for the rebind, so its report shows.
    console_wait(&mut guest, "pvtest: handed back", 420);
    let outcome = guest.wait();
    outcome.expect_pass();
    let console = &outcome.console;
    show_log(console);
    assert!(!console.contains("Out of memory"), "{console}");
    assert!(!console.contains("Killed"), "{console}");
}
