//! Bounded parallel host shutdown and restore (`pvbackend guests
//! shutdown|restore`, issue 14) against real QEMU guests.
//!
//! The 2008 report's worst night was three guests that could not be
//! saved, 300 s each, one after another. Here four guests meet one
//! overall deadline T = 20 s, each failing a different way:
//! - `saves`: saved to a state file (8 MiB of random data in its RAM);
//! - `blocked`: has an ivshmem device (a migration blocker: QEMU refuses
//!   `migrate` at once), listens for the ACPI power button and powers off;
//! - `stubborn`: the same blocker, no power button driver (ACPI ignored),
//!   so it is stopped by `quit` at the end;
//! - `throttled`: its save is capped at 1 MiB/s with 64 MiB of random
//!   data in RAM, so it cannot finish by the save deadline: cancelled,
//!   resumed (`cont`: its console shows it handled the power button
//!   afterwards), powered off.
//!
//! The command's wall time is bounded by T plus a generous margin (a
//! correctness bound: the daemon cuts every wait at its phase's end, so
//! four guests cost T, not four times anything), each report says what
//! was tried and how it ended, and `restore` brings `saves` back with its
//! data (its RAM's random blob has the same checksum).
//!
//! The second test feeds bad input: a state directory that cannot be
//! written, a guest whose QEMU is stopped (SIGSTOP: its QMP never
//! answers), a duplicate name; each gets its own clear error and the
//! others are still handled.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pvtest::peers::PvBackend;
use pvtest::{Guest, GuestBuilder};
use serde_json::Value;

/// T of the first test, seconds.
const T: u64 = 20;
/// Generous slack on top of T for process start-up and the final kills
/// on a loaded host (the daemon itself ends every wait at T).
const SLACK: Duration = Duration::from_secs(15);

/// Waits for the ACPI power button, then powers the guest off.
const POWER_BUTTON: &str = r#"
ev=
while [ -z "$ev" ]; do
  for e in /sys/class/input/event*; do
    grep -q "Power Button" "$e/device/name" 2>/dev/null && ev=/dev/input/${e##*/}
  done
  [ -n "$ev" ] || sleep 0.2
done
( dd if="$ev" bs=24 count=1 >/dev/null 2>&1; echo "pvtest: power button"; poweroff -f ) &
"#;

fn guest(name: &str, dir: &Path, fill_mib: u32, acpi: bool, blocker: bool) -> GuestBuilder {
    let mut b = Guest::builder(&format!("guests-{name}"))
        .memory_mib(256)
        .qmp()
        .timeout(Duration::from_secs(1500));
    if acpi {
        b = b.modules(["button", "evdev"]);
    }
    if blocker {
        let shm = dir.join(format!("{name}.ivshmem"));
        b = b.qemu_args([
            "-object".to_owned(),
            format!(
                "memory-backend-file,id=shm,mem-path={},size=1M,share=on",
                shm.display()
            ),
            "-device".to_owned(),
            "ivshmem-plain,memdev=shm".to_owned(),
        ]);
    }
    b.script(&format!(
        r#"{}
dd if=/dev/urandom of=/tmp/blob bs=1M count={fill_mib} 2>/dev/null
sum=$(md5sum /tmp/blob | cut -d' ' -f1)
echo "pvtest: ready $sum"
while :; do echo "pvtest: alive $(md5sum /tmp/blob | cut -d' ' -f1)"; sleep 1; done
"#,
        if acpi { POWER_BUTTON } else { "" }
    ))
}

fn ready(g: &mut Guest) -> String {
    let line = g
        .wait_for_console("pvtest: ready ", Duration::from_secs(900))
        .unwrap_or_else(|e| panic!("{e}\n{}", g.drain_console()));
    line.split("pvtest: ready ")
        .nth(1)
        .expect("sum")
        .trim()
        .to_owned()
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// `pvbackend guests ARGS --json --control SOCK`: the reports by guest
/// name, the exit status, and the command's wall time.
fn guests_cmd(control: &Path, args: &[&str]) -> (Vec<Value>, bool, Duration, String) {
    let bin = pvtest::guest_bins::host_path_of("pvbackend").expect("pvbackend");
    let t0 = Instant::now();
    let out = Command::new(bin)
        .arg("guests")
        .args(args)
        .arg("--json")
        .arg("--control")
        .arg(control)
        .output()
        .expect("run pvbackend guests");
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let reports = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (reports, out.status.success(), took, all)
}

fn report<'a>(reports: &'a [Value], name: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r["guest"] == name)
        .unwrap_or_else(|| panic!("no report for {name}: {reports:?}"))
}

/// The actions a report tried, `action` or `action!` when it failed.
fn steps(r: &Value) -> Vec<String> {
    r["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            let a = s["action"].as_str().expect("action");
            if s["ok"] == true {
                a.to_owned()
            } else {
                format!("{a}!")
            }
        })
        .collect()
}

fn step<'a>(r: &'a Value, action: &str) -> &'a Value {
    r["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["action"] == action)
        .unwrap_or_else(|| panic!("no {action} step: {r}"))
}

/// QEMU has exited (gone, or a zombie its parent, the harness, has not
/// reaped yet), waiting up to 30 s for the kernel to tear a killed one
/// down.
fn exited(pid: u32) -> bool {
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .is_some_and(|st| st == "Z" || st == "X")
        })
    };
    let t0 = Instant::now();
    while !gone() {
        if t0.elapsed() > Duration::from_secs(30) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Kills a QEMU the daemon started (restore) when the test ends.
struct KillOnDrop(Option<u32>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) on one positive pid this test learnt from the
            // daemon's report; no memory is involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

#[test]
fn four_guests_stop_in_parallel_under_one_deadline_and_the_saved_one_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let mut saves = guest("saves", dir.path(), 8, false, false)
        .start()
        .expect("saves");
    let mut blocked = guest("blocked", dir.path(), 1, true, true)
        .start()
        .expect("blocked");
    let mut stubborn = guest("stubborn", dir.path(), 1, false, true)
        .start()
        .expect("stubborn");
    let mut throttled = guest("throttled", dir.path(), 64, true, false)
        .start()
        .expect("throttled");
    let sum = ready(&mut saves);
    for g in [&mut blocked, &mut stubborn, &mut throttled] {
        ready(g);
    }
    let control = dir.path().join("control.sock");
    let restore: Vec<String> = saves
        .command_line()
        .iter()
        .map(|a| format!("{a:?}"))
        .collect();
    let entry = |name: &str, g: &Guest, extra: &str| {
        format!(
            "[[guests.guest]]\nname = \"{name}\"\nqmp = {}\n{extra}\n",
            toml_str(g.qmp_socket().expect("qmp"))
        )
    };
    let cfg = dir.path().join("pvbackend.toml");
    std::fs::write(
        &cfg,
        format!(
            "[guests]\nstate_dir = {}\ncontrol_socket = {}\n{}{}{}{}",
            toml_str(&state),
            toml_str(&control),
            entry(
                "saves",
                &saves,
                &format!("restore_command = [{}]", restore.join(", "))
            ),
            entry("blocked", &blocked, ""),
            entry("stubborn", &stubborn, ""),
            entry("throttled", &throttled, "save_bandwidth_mib = 1"),
        ),
    )
    .expect("config");
    let backend = PvBackend::start(
        &[],
        &["-c", cfg.to_str().expect("utf-8"), "--log-level", "info"],
        &dir.path().join("backend.log"),
    )
    .expect("backend");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&control)
            .expect("control socket")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "control socket mode");

    let (reports, ok, took, out) =
        guests_cmd(&control, &["shutdown", "--deadline", &T.to_string()]);
    eprintln!("shutdown of four guests took {took:?}:\n{out}");
    let ctx = || format!("{out}\n--- backend log ---\n{}", backend.log());
    assert!(ok, "every guest stopped: {}", ctx());
    assert!(
        took <= Duration::from_secs(T) + SLACK,
        "took {took:?}, deadline {T} s: {}",
        ctx()
    );
    assert_eq!(reports.len(), 4, "{}", ctx());
    let save_deadline_ms = T * 1000 * 45 / 100;

    let r = report(&reports, "saves");
    assert_eq!(r["outcome"], "saved", "{}", ctx());
    assert_eq!(steps(r), ["save", "quit"], "{}", ctx());
    assert_eq!(r["pid"].as_u64(), saves.qemu_pid().map(u64::from));
    let state_file = state.join("saves.state");
    assert_eq!(r["state_file"], state_file.display().to_string());
    assert!(std::fs::metadata(&state_file).expect("state").len() > 8 << 20);
    assert!(!state.join("saves.state.part").exists());

    // The blocker is reported from `migrate`'s own error, well before the
    // save deadline, and the guest goes on to power off.
    let r = report(&reports, "blocked");
    assert_eq!(r["outcome"], "powered_off", "{}", ctx());
    assert_eq!(steps(r), ["save!", "cont", "system_powerdown"], "{}", ctx());
    let s = step(r, "save");
    assert!(
        s["detail"].as_str().is_some_and(|d| d.contains("ivshmem")),
        "{r}"
    );
    let done = s["at_ms"].as_u64().expect("at") + s["took_ms"].as_u64().expect("took");
    assert!(
        done < save_deadline_ms,
        "blocker known at {done} ms: waited for the save deadline ({save_deadline_ms} ms)"
    );
    assert!(r["error"]
        .as_str()
        .is_some_and(|e| e.contains("migration refused")));

    let r = report(&reports, "stubborn");
    assert_eq!(r["outcome"], "quit", "{}", ctx());
    assert_eq!(
        steps(r),
        ["save!", "cont", "system_powerdown", "quit"],
        "{}",
        ctx()
    );

    let r = report(&reports, "throttled");
    assert_eq!(r["outcome"], "powered_off", "{}", ctx());
    assert_eq!(
        steps(r),
        ["save!", "migrate_cancel", "cont", "system_powerdown"],
        "{}",
        ctx()
    );
    assert!(
        step(r, "save")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not done by the save deadline")),
        "{r}"
    );
    assert!(
        step(r, "migrate_cancel")["at_ms"].as_u64().expect("at") >= save_deadline_ms,
        "cancelled before the save deadline: {r}"
    );
    for g in [&blocked, &stubborn, &throttled, &saves] {
        let pid = g.qemu_pid().expect("pid");
        assert!(exited(pid), "QEMU {pid} still runs");
    }
    let b = blocked.wait();
    assert!(b.console_has("pvtest: power button"), "{}", b.console);
    let t = throttled.wait();
    assert!(
        t.console_has("pvtest: power button"),
        "the throttled guest ran again after the cancelled save: {}",
        t.console
    );
    let _ = stubborn.wait();

    // Restore: the saved guest (only) comes back, with its RAM's data.
    let (reports, ok, took, out) = guests_cmd(&control, &["restore", "--deadline", "300"]);
    eprintln!("restore took {took:?}:\n{out}");
    let restored = KillOnDrop(report(&reports, "saves")["pid"].as_u64().map(|p| p as u32));
    assert!(ok, "{}", ctx());
    let r = report(&reports, "saves");
    assert_eq!(r["outcome"], "restored", "{}", ctx());
    assert_eq!(
        steps(r),
        ["spawn", "connect", "migrate-incoming", "cont"],
        "{}",
        ctx()
    );
    for name in ["blocked", "stubborn", "throttled"] {
        assert_eq!(report(&reports, name)["outcome"], "no_state", "{}", ctx());
    }
    assert!(!state_file.exists(), "a restored state is retired");
    assert!(state.join("saves.state.restored").exists());
    let console = state.join("saves.console.log");
    let want = format!("pvtest: alive {sum}");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&console).is_ok_and(|c| c.contains(&want)) {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "restored guest never printed '{want}':\n{}",
            std::fs::read_to_string(&console).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The daemon's one connection to the restored guest answers the table.
    let (rows, ok, _, out) = guests_cmd(&control, &["list"]);
    assert!(ok, "{out}");
    assert_eq!(report(&rows, "saves")["status"], "running", "{out}");
    assert_eq!(
        report(&rows, "blocked")["status"],
        "down (connect)",
        "{out}"
    );
    // Restoring again refuses: the guest runs (and its state is retired).
    let (reports, _, _, out) = guests_cmd(&control, &["restore", "--deadline", "60"]);
    assert_eq!(report(&reports, "saves")["outcome"], "no_state", "{out}");

    // The restored guest is the daemon's to stop, like any other.
    let (reports, ok, _, out) = guests_cmd(
        &control,
        &["shutdown", "--deadline", "20", "--save-deadline", "0"],
    );
    assert!(ok, "{out}");
    assert_eq!(report(&reports, "saves")["outcome"], "quit", "{out}");
    drop(restored);
    drop(saves);
    let status = backend
        .stop(Duration::from_secs(30))
        .expect("signal")
        .expect("backend exits");
    assert!(status.success());
}

/// Makes `dir` unwritable, even for root (chmod, plus the immutable
/// attribute when running as root), until dropped.
struct Unwritable(PathBuf);
impl Unwritable {
    fn new(dir: &Path) -> Self {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        // SAFETY: geteuid(2) only returns a value.
        if unsafe { libc::geteuid() } == 0 {
            let st = Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .status()
                .expect("chattr (e2fsprogs)");
            assert!(st.success(), "chattr +i {} failed", dir.display());
        }
        assert!(
            std::fs::write(dir.join("probe"), b"x").is_err(),
            "{} is still writable",
            dir.display()
        );
        Self(dir.to_owned())
    }
}
impl Drop for Unwritable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn bad_input_gives_per_guest_errors_and_the_others_are_handled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("locked dir");
    let mut nosave = guest("nosave", dir.path(), 1, false, false)
        .start()
        .expect("nosave");
    let mut hung = guest("hung", dir.path(), 1, false, false)
        .start()
        .expect("hung");
    let mut fine = guest("fine", dir.path(), 1, false, false)
        .start()
        .expect("fine");
    for g in [&mut nosave, &mut hung, &mut fine] {
        ready(g);
    }
    let _locked = Unwritable::new(&locked);
    let control = dir.path().join("control.sock");
    let q = |g: &Guest| toml_str(g.qmp_socket().expect("qmp"));
    let cfg = dir.path().join("pvbackend.toml");
    std::fs::write(
        &cfg,
        format!(
            "[guests]\nstate_dir = {}\ncontrol_socket = {}\nqmp_timeout_secs = 3\n\
             [[guests.guest]]\nname = \"nosave\"\nqmp = {}\nstate_dir = {}\n\
             [[guests.guest]]\nname = \"hung\"\nqmp = {}\n\
             [[guests.guest]]\nname = \"fine\"\nqmp = {}\n\
             [[guests.guest]]\nname = \"fine\"\nqmp = {}\n",
            toml_str(&state),
            toml_str(&control),
            q(&nosave),
            toml_str(&locked),
            q(&hung),
            q(&fine),
            toml_str(&dir.path().join("elsewhere.qmp")),
        ),
    )
    .expect("config");
    let backend = PvBackend::start(
        &[],
        &["-c", cfg.to_str().expect("utf-8")],
        &dir.path().join("backend.log"),
    )
    .expect("backend");
    let hung_pid = hung.qemu_pid().expect("pid");
    // SAFETY: kill(2) on the harness's own QEMU child; no memory involved.
    let stopped = unsafe { libc::kill(hung_pid as libc::pid_t, libc::SIGSTOP) };
    assert_eq!(stopped, 0, "SIGSTOP the hung guest's QEMU");

    let (reports, ok, took, out) = guests_cmd(&control, &["shutdown", "--deadline", "12"]);
    eprintln!("took {took:?}:\n{out}");
    let ctx = || format!("{out}\n--- backend log ---\n{}", backend.log());
    assert!(
        took <= Duration::from_secs(12) + SLACK,
        "{took:?} {}",
        ctx()
    );
    assert!(!ok, "a refused duplicate is not success: {}", ctx());
    assert_eq!(reports.len(), 4, "{}", ctx());

    let r = report(&reports, "nosave");
    assert_eq!(r["outcome"], "quit", "{}", ctx());
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot write the state file")
                && e.contains(&locked.display().to_string())),
        "{r}"
    );

    let r = report(&reports, "hung");
    assert_eq!(r["outcome"], "killed", "{}", ctx());
    assert_eq!(r["pid"].as_u64(), Some(u64::from(hung_pid)), "{r}");
    assert_eq!(steps(r), ["connect!", "sigterm", "sigkill"], "{}", ctx());
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("no QMP reply")),
        "{r}"
    );

    let fines: Vec<&Value> = reports.iter().filter(|r| r["guest"] == "fine").collect();
    assert_eq!(fines.len(), 2);
    assert_eq!(fines[0]["outcome"], "saved", "{}", ctx());
    assert_eq!(fines[1]["outcome"], "refused", "{}", ctx());
    assert!(
        fines[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("duplicate guest name 'fine'") && e.contains("entry 4")),
        "{}",
        fines[1]
    );
    for g in [&nosave, &hung, &fine] {
        let pid = g.qemu_pid().expect("pid");
        assert!(exited(pid), "QEMU {pid} still runs: {}", ctx());
    }
    let _ = (nosave.wait(), hung.wait(), fine.wait());

    // A daemon that is gone: one line naming the fix.
    let status = backend
        .stop(Duration::from_secs(30))
        .expect("signal")
        .expect("backend exits");
    assert!(status.success());
    let (_, ok, _, out) = guests_cmd(&control, &["list"]);
    assert!(!ok);
    let err = out.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("pvbackend is not running") && err.contains("--control"),
        "{err}"
    );
}

/// Benchmark (not part of the test command): N = 1, 2, 4 guests saved and
/// restored one after another (one daemon per guest, commands run in
/// turn: what a sequential tool does) and all at once (one daemon, one
/// command). Prints a table for docs/BENCHMARKS.md:
///
/// ```text
/// cargo nextest run -p pvdrivers-tests --test vm_guests_shutdown --run-ignored ignored-only --no-capture
/// ```
#[test]
#[ignore = "benchmark: run by hand"]
fn bench_sequential_vs_parallel_save_and_restore() {
    let mut rows = Vec::new();
    for n in [1usize, 2, 4] {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("state");
        let mut guests: Vec<Guest> = (0..n)
            .map(|i| {
                guest(&format!("bench{i}"), dir.path(), 32, false, false)
                    .start()
                    .expect("guest")
            })
            .collect();
        for g in &mut guests {
            ready(g);
        }
        let entry = |i: usize, g: &Guest| {
            let cmd: Vec<String> = g.command_line().iter().map(|a| format!("{a:?}")).collect();
            format!(
                "[[guests.guest]]\nname = \"bench{i}\"\nqmp = {}\nrestore_command = [{}]\n",
                toml_str(g.qmp_socket().expect("qmp")),
                cmd.join(", ")
            )
        };
        let daemon = |tag: &str, which: &[usize]| {
            let control = dir.path().join(format!("{tag}.sock"));
            let cfg = dir.path().join(format!("{tag}.toml"));
            let mut text = format!(
                "[guests]\nstate_dir = {}\ncontrol_socket = {}\n",
                toml_str(&state),
                toml_str(&control)
            );
            for &i in which {
                text.push_str(&entry(i, &guests[i]));
            }
            std::fs::write(&cfg, text).expect("config");
            let b = PvBackend::start(
                &[],
                &["-c", cfg.to_str().expect("utf-8")],
                &dir.path().join(format!("{tag}.log")),
            )
            .expect("backend");
            (b, control)
        };
        let mut restored: Vec<KillOnDrop> = Vec::new();
        let check = |reports: &[Value], outcome: &str, out: &str| {
            for r in reports {
                assert_eq!(r["outcome"], outcome, "{out}");
            }
        };
        // Sequential: one daemon per guest, one command after another.
        let singles: Vec<_> = (0..n).map(|i| daemon(&format!("seq{i}"), &[i])).collect();
        let (mut seq_save, mut seq_restore) = (Duration::ZERO, Duration::ZERO);
        for (_, control) in &singles {
            let (r, ok, took, out) = guests_cmd(control, &["shutdown", "--deadline", "600"]);
            assert!(ok, "{out}");
            check(&r, "saved", &out);
            seq_save += took;
        }
        for (_, control) in &singles {
            let (r, ok, took, out) = guests_cmd(control, &["restore", "--deadline", "600"]);
            assert!(ok, "{out}");
            check(&r, "restored", &out);
            restored.extend(
                r.iter()
                    .map(|r| KillOnDrop(r["pid"].as_u64().map(|p| p as u32))),
            );
            seq_restore += took;
        }
        // The restored guests' QMP is held by the single daemons: stop them.
        for (b, _) in singles {
            b.stop(Duration::from_secs(30)).expect("stop");
        }
        let all: Vec<usize> = (0..n).collect();
        let (b, control) = daemon("par", &all);
        let (r, ok, par_save, out) = guests_cmd(&control, &["shutdown", "--deadline", "600"]);
        assert!(ok, "{out}");
        check(&r, "saved", &out);
        let (r, ok, par_restore, out) = guests_cmd(&control, &["restore", "--deadline", "600"]);
        assert!(ok, "{out}");
        // Where a parallel restore's time goes, per guest and step.
        for rep in &r {
            let steps: Vec<String> = rep["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| format!("{} {}+{} ms", s["action"], s["at_ms"], s["took_ms"]))
                .collect();
            println!(
                "N={n} parallel restore {}: {}",
                rep["guest"],
                steps.join(", ")
            );
        }
        check(&r, "restored", &out);
        restored.extend(
            r.iter()
                .map(|r| KillOnDrop(r["pid"].as_u64().map(|p| p as u32))),
        );
        let (r, _, _, out) = guests_cmd(
            &control,
            &["shutdown", "--deadline", "20", "--save-deadline", "0"],
        );
        check(&r, "quit", &out);
        b.stop(Duration::from_secs(30)).expect("stop");
        drop(restored);
        drop(guests);
        rows.push((n, seq_save, par_save, seq_restore, par_restore));
    }
    println!("| N | save sequential s | save parallel s | ratio | restore sequential s | restore parallel s | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for (n, ss, ps, sr, pr) in rows {
        println!(
            "| {n} | {:.2} | {:.2} | {:.2}x | {:.2} | {:.2} | {:.2}x |",
            ss.as_secs_f64(),
            ps.as_secs_f64(),
            ss.as_secs_f64() / ps.as_secs_f64(),
            sr.as_secs_f64(),
            pr.as_secs_f64(),
            sr.as_secs_f64() / pr.as_secs_f64()
        );
    }
}
