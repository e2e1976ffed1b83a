//! Bounded parallel shutdown and restore of every configured guest.
//!
//! Shutdown runs every guest on its own thread, all under ONE overall
//! deadline T counted from the command's start (never a per-guest sum):
//!
//! 1. **save** until the save deadline ([`Plan::save`], default 45% of T):
//!    `stop`, `migrate-set-parameters max-bandwidth` (raised: QEMU's
//!    default cap is 128 MiB/s), the state file opened by the daemon and
//!    handed over with `getfd`, `migrate fd:`; a migration blocker makes
//!    `migrate` itself fail, so it is reported at once and nothing waits on
//!    it. Completed: the daemon fsyncs the file, renames it to
//!    `NAME.state`, fsyncs the directory, then `quit`s QEMU. Failed or past
//!    the save deadline: `migrate_cancel`, `cont`, the partial file removed;
//! 2. **ACPI** `system_powerdown`, waiting for QEMU to exit until T minus
//!    the margin ([`Plan::margin`], default min(5 s, T/5));
//! 3. **`quit`**, waiting until T;
//! 4. **SIGKILL at T** (pid from `pid_file`, or the QMP socket's peer).
//!
//! A guest whose QMP does not answer gets SIGTERM at once (QEMU exits
//! cleanly on it) and SIGKILL at T. Every QMP wait is cut at the end of
//! its phase, so no guest can hold the command past T (plus the few
//! milliseconds of the final kill and report).
//!
//! Restore starts every guest that has a `NAME.state` in parallel under
//! one deadline: its `restore_command` plus `-S -incoming defer`, the
//! state file handed over with `getfd` + `migrate-incoming fd:`, `cont`
//! once the incoming migration completed; the state file is then renamed
//! `NAME.state.restored` so it is never restored twice.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::config::{GuestEntry, GuestsConfig};
use super::mux::{QmpMux, Registry};
use super::report::Report;
use crate::balloon::qmp::QmpError;

const MIB: u64 = 1 << 20;
/// How often migration status and QEMU's exit are polled.
const POLL: Duration = Duration::from_millis(50);

/// The deadlines of one shutdown, all counted from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// T: every guest is gone by then.
    pub deadline: Duration,
    /// Saving stops here.
    pub save: Duration,
    /// ACPI powerdown waits until `deadline - margin`; `quit` gets the rest.
    pub margin: Duration,
}

impl Plan {
    /// The plan for deadline `t`, with the save deadline `save` when given
    /// (clamped so the ACPI phase keeps at least one margin).
    pub fn new(t: Duration, save: Option<Duration>) -> Self {
        let margin = (t / 5).min(Duration::from_secs(5));
        let latest_save = t.saturating_sub(margin * 2);
        let save = save.unwrap_or(t * 45 / 100).min(latest_save);
        Self {
            deadline: t,
            save,
            margin,
        }
    }
}

/// The daemon's guests and what acts on them.
#[derive(Debug)]
pub struct Guests {
    cfg: GuestsConfig,
    registry: Arc<Registry>,
}

fn duplicate_report(g: &GuestEntry, index: usize, command: &str) -> Report {
    let t0 = Instant::now();
    let mut r = Report::new(&g.name, command);
    r.step(
        t0,
        t0,
        "check",
        Err(format!(
            "duplicate guest name '{}' ([[guests.guest]] entry {}, qmp {}): only the first entry \
             with this name is handled; give this one its own name",
            g.name,
            index + 1,
            g.qmp.display()
        )),
    );
    r.finish(t0, "refused")
}

impl Guests {
    /// The guests of `cfg` (validated), reached through `registry`.
    pub fn new(cfg: GuestsConfig, registry: Arc<Registry>) -> Self {
        Self { cfg, registry }
    }

    /// Entries in order; a name already used is `Err(index)`.
    fn entries(&self) -> Vec<Result<&GuestEntry, (usize, &GuestEntry)>> {
        let mut seen = BTreeSet::new();
        self.cfg
            .guests
            .iter()
            .enumerate()
            .map(|(i, g)| {
                if seen.insert(g.name.as_str()) {
                    Ok(g)
                } else {
                    Err((i, g))
                }
            })
            .collect()
    }

    fn qmp_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.qmp_timeout_secs)
    }

    /// Stops every guest in parallel under `plan`; one report per entry,
    /// in configuration order.
    pub fn shutdown(&self, plan: Plan) -> Vec<Report> {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .entries()
                .into_iter()
                .map(|e| match e {
                    Ok(g) => Ok(s.spawn(move || Shutdown::new(self, g, plan, t0).run())),
                    Err((i, g)) => Err(Box::new(duplicate_report(g, i, "shutdown"))),
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h {
                    Ok(h) => h.join().unwrap_or_else(|_| {
                        Report::new("?", "shutdown").finish(t0, "still_running")
                    }),
                    Err(r) => *r,
                })
                .collect()
        })
    }

    /// Restores every guest with a saved state in parallel, within
    /// `deadline`; one report per entry, in configuration order.
    pub fn restore(&self, deadline: Duration) -> Vec<Report> {
        let t0 = Instant::now();
        let end = t0 + deadline;
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .entries()
                .into_iter()
                .map(|e| match e {
                    Ok(g) => Ok(s.spawn(move || self.restore_one(g, t0, end))),
                    Err((i, g)) => Err(Box::new(duplicate_report(g, i, "restore"))),
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|_| Report::new("?", "restore").finish(t0, "failed")),
                    Err(r) => *r,
                })
                .collect()
        })
    }

    /// One row per entry for `pvbackend guests list`: name, QEMU's run
    /// state (`query-status`) or why it is unknown, pid, saved state.
    pub fn list(&self) -> Vec<Value> {
        let timeout = self.qmp_timeout().min(Duration::from_secs(2));
        self.cfg
            .guests
            .iter()
            .map(|g| {
                let (status, pid) = match self.registry.get(&g.qmp, timeout) {
                    Ok(m) => (
                        m.execute("query-status", None, timeout)
                            .ok()
                            .and_then(|v| v["status"].as_str().map(str::to_owned))
                            .unwrap_or_else(|| "no answer".into()),
                        m.peer_pid(),
                    ),
                    Err(e) => (format!("down ({})", e.error.kind()), e.peer_pid),
                };
                let saved = self
                    .cfg
                    .state_dir_of(g)
                    .map(|d| d.join(format!("{}.state", g.name)))
                    .filter(|p| p.exists());
                json!({
                    "guest": g.name,
                    "status": status,
                    "pid": pid,
                    "saved_state": saved.map(|p| p.display().to_string()),
                })
            })
            .collect()
    }

    fn restore_one(&self, g: &GuestEntry, t0: Instant, end: Instant) -> Report {
        let mut r = Report::new(&g.name, "restore");
        let Some(dir) = self.cfg.state_dir_of(g) else {
            r.step(t0, t0, "check", Err("no state_dir configured".into()));
            return r.finish(t0, "refused");
        };
        let state = dir.join(format!("{}.state", g.name));
        if !state.exists() {
            return r.finish(t0, "no_state");
        }
        r.state_file = Some(state.display().to_string());
        if g.restore_command.is_empty() {
            r.step(
                t0,
                t0,
                "check",
                Err("no restore_command for this guest in [[guests.guest]]".into()),
            );
            return r.finish(t0, "refused");
        }
        let at = Instant::now();
        if let Ok(m) = self.registry.get(&g.qmp, Duration::from_secs(1)) {
            r.pid = m.peer_pid();
            r.step(
                t0,
                at,
                "check",
                Err(format!(
                    "a QEMU already answers on {}: not starting a second one",
                    g.qmp.display()
                )),
            );
            return r.finish(t0, "refused");
        }
        match self.restore_steps(g, &state, dir, &mut r, t0, end) {
            Ok(()) => r.finish(t0, "restored"),
            Err(child) => {
                if let Some(pid) = child {
                    let at = Instant::now();
                    kill(pid, libc::SIGKILL);
                    r.step(t0, at, "sigkill", Ok(format!("pid {pid}")));
                }
                r.finish(t0, "failed")
            }
        }
    }

    /// Err carries the pid of a QEMU this restore started and must stop.
    fn restore_steps(
        &self,
        g: &GuestEntry,
        state: &Path,
        dir: &Path,
        r: &mut Report,
        t0: Instant,
        end: Instant,
    ) -> Result<(), Option<u32>> {
        let at = Instant::now();
        let log_path = dir.join(format!("{}.console.log", g.name));
        let child = spawn_restore(&g.restore_command, &log_path);
        let child_pid = match child {
            Ok(mut c) => {
                let pid = c.id();
                // Reap it whenever it exits (it outlives this command).
                let _ = std::thread::Builder::new()
                    .name("restore-reaper".into())
                    .spawn(move || {
                        let _ = c.wait();
                    });
                r.step(
                    t0,
                    at,
                    "spawn",
                    Ok(format!("pid {pid}, console {}", log_path.display())),
                );
                pid
            }
            Err(e) => {
                r.step(t0, at, "spawn", Err(e));
                return Err(None);
            }
        };
        let at = Instant::now();
        let qmp = loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                r.step(
                    t0,
                    at,
                    "connect",
                    Err(format!("{} never answered", g.qmp.display())),
                );
                return Err(Some(child_pid));
            }
            if !alive(child_pid) {
                r.step(
                    t0,
                    at,
                    "connect",
                    Err(format!(
                        "the restore command exited before its QMP answered (see {})",
                        log_path.display()
                    )),
                );
                return Err(None);
            }
            match self.registry.get(&g.qmp, left.min(self.qmp_timeout())) {
                Ok(m) => break m,
                Err(_) => std::thread::sleep(POLL * 2),
            }
        };
        r.pid = qmp.peer_pid().or(Some(child_pid));
        r.step(t0, at, "connect", Ok(String::new()));
        let tmo = |end: Instant| {
            end.saturating_duration_since(Instant::now())
                .min(self.qmp_timeout())
        };
        let at = Instant::now();
        let res = File::open(state)
            .map_err(|e| format!("cannot read {}: {e}", state.display()))
            .and_then(|f| {
                qmp.execute_with_fd(
                    "getfd",
                    Some(json!({"fdname": "pvrestore"})),
                    f.as_raw_fd(),
                    tmo(end),
                )
                .map_err(|e| e.to_string())?;
                qmp.execute(
                    "migrate-incoming",
                    Some(json!({"uri": "fd:pvrestore"})),
                    tmo(end),
                )
                .map_err(|e| e.to_string())?;
                wait_migration(&qmp, end, &tmo).and_then(|v| match v["status"].as_str() {
                    Some("completed") => Ok(()),
                    _ => Err(format!("incoming migration did not complete: {v}")),
                })
            });
        let ok = res.is_ok();
        r.step(t0, at, "migrate-incoming", res.map(|()| String::new()));
        if !ok {
            return Err(Some(child_pid));
        }
        // QEMU leaves `inmigrate` for `paused` (it was started with -S)
        // once the state is loaded.
        let at = Instant::now();
        let res = loop {
            match qmp.execute("query-status", None, tmo(end)) {
                Ok(v) if v["status"] == "paused" || v["status"] == "running" => break Ok(()),
                Ok(v) if Instant::now() >= end => break Err(format!("still {}", v["status"])),
                Ok(_) => std::thread::sleep(POLL),
                Err(e) => break Err(e.to_string()),
            }
        }
        .and_then(|()| {
            qmp.execute("cont", None, tmo(end))
                .map(|_| String::new())
                .map_err(|e| e.to_string())
        });
        let ok = res.is_ok();
        r.step(t0, at, "cont", res);
        if !ok {
            return Err(Some(child_pid));
        }
        let done = state.with_extension("state.restored");
        if let Err(e) = std::fs::rename(state, &done) {
            // The guest runs; a state left in place would be restored
            // again over newer disks, so say it loudly.
            r.step(
                t0,
                Instant::now(),
                "retire-state",
                Err(format!(
                    "cannot rename {} to {}: {e}; remove it before the next restore",
                    state.display(),
                    done.display()
                )),
            );
        }
        Ok(())
    }
}

fn spawn_restore(cmd: &[String], log: &Path) -> Result<std::process::Child, String> {
    use std::os::unix::process::CommandExt;
    let (prog, args) = cmd.split_first().ok_or("empty restore_command")?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    std::process::Command::new(prog)
        .args(args)
        .args(["-S", "-incoming", "defer"])
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a signal to the daemon's group (Ctrl-C)
        // does not reach the guest.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {prog}: {e}"))
}

/// Polls `query-migrate` until it is no longer active or `end`; returns
/// the last answer.
fn wait_migration(
    qmp: &QmpMux,
    end: Instant,
    tmo: &dyn Fn(Instant) -> Duration,
) -> Result<Value, String> {
    loop {
        let v = qmp
            .execute("query-migrate", None, tmo(end))
            .map_err(|e| e.to_string())?;
        match v["status"].as_str() {
            Some("completed" | "failed" | "cancelled") => return Ok(v),
            _ if Instant::now() >= end => return Ok(v),
            _ => std::thread::sleep(POLL),
        }
    }
}

fn kill(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) has no memory effects; `pid` is a single positive
    // process id (never 0 or -1, which would signal groups).
    unsafe { libc::kill(pid, sig) == 0 }
}

/// True while `pid` runs: it exists and is not a zombie (QEMU a test or
/// another parent has not reaped yet counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// After SIGKILL: the kernel tears the process down (a large guest's
/// memory takes a moment); wait for that, at most 2 s, so the report is
/// written when the guest is really gone.
fn wait_gone(pid: u32, closed: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(2);
    while !closed() && alive(pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_pid_file(p: &Path) -> Result<u32, String> {
    std::fs::read_to_string(p)
        .map_err(|e| format!("cannot read pid_file {}: {e}", p.display()))?
        .trim()
        .parse()
        .map_err(|_| format!("pid_file {} does not hold a pid", p.display()))
}

/// Why a save did not happen, and what undoing it takes.
struct SaveFailure {
    why: String,
    /// A migration may still run: `migrate_cancel` it.
    cancel: bool,
    /// The guest was running before the save paused it: `cont`.
    resume: bool,
}

/// One guest's shutdown.
struct Shutdown<'a> {
    guests: &'a Guests,
    g: &'a GuestEntry,
    t0: Instant,
    save_end: Instant,
    acpi_end: Instant,
    end: Instant,
    r: Report,
    pid: Option<u32>,
}

impl<'a> Shutdown<'a> {
    fn new(guests: &'a Guests, g: &'a GuestEntry, plan: Plan, t0: Instant) -> Self {
        Self {
            guests,
            g,
            t0,
            save_end: t0 + plan.save,
            acpi_end: t0 + plan.deadline.saturating_sub(plan.margin),
            end: t0 + plan.deadline,
            r: Report::new(&g.name, "shutdown"),
            pid: None,
        }
    }

    fn tmo(&self, until: Instant) -> Duration {
        until
            .saturating_duration_since(Instant::now())
            .min(self.guests.qmp_timeout())
            .max(Duration::from_millis(1))
    }

    fn step(&mut self, at: Instant, action: &str, r: Result<String, String>) {
        self.r.step(self.t0, at, action, r);
    }

    fn run(mut self) -> Report {
        if let Some(p) = &self.g.pid_file {
            match read_pid_file(p) {
                Ok(pid) => self.pid = Some(pid),
                Err(e) => self.step(Instant::now(), "pid_file", Err(e)),
            }
        }
        let at = Instant::now();
        let qmp = match self
            .guests
            .registry
            .get(&self.g.qmp, self.tmo(self.acpi_end))
        {
            Ok(m) => {
                self.pid = self.pid.or(m.peer_pid());
                m
            }
            Err(e) => {
                self.pid = self.pid.or(e.peer_pid);
                let nobody = matches!(e.error, QmpError::Connect { .. })
                    && self.pid.is_none_or(|p| !alive(p));
                self.step(at, "connect", Err(e.error.to_string()));
                if nobody {
                    return self.done("not_running");
                }
                return self.no_qmp();
            }
        };
        self.r.pid = self.pid;
        let saved = if self.save_end > self.t0 {
            self.save(&qmp)
        } else {
            None
        };
        if let Some(path) = saved {
            {
                self.r.state_file = Some(path.display().to_string());
                let at = Instant::now();
                let q = qmp
                    .execute("quit", None, self.tmo(self.end))
                    .map(|_| String::new())
                    .map_err(|e| e.to_string());
                self.step(at, "quit", q);
                if !self.wait_exit(&qmp, self.end) {
                    self.kill_at_end(&qmp);
                }
                // The state is durable whatever became of the process.
                return self.done("saved");
            }
        }
        let at = Instant::now();
        let p = qmp
            .execute("system_powerdown", None, self.tmo(self.acpi_end))
            .map(|_| String::new())
            .map_err(|e| e.to_string());
        self.step(at, "system_powerdown", p);
        if self.wait_exit(&qmp, self.acpi_end) {
            return self.done("powered_off");
        }
        let at = Instant::now();
        let q = qmp
            .execute("quit", None, self.tmo(self.end))
            .map(|_| String::new())
            .map_err(|e| e.to_string());
        self.step(at, "quit", q);
        if self.wait_exit(&qmp, self.end) {
            return self.done("quit");
        }
        if self.kill_at_end(&qmp) {
            self.done("killed")
        } else {
            self.done("still_running")
        }
    }

    fn done(mut self, outcome: &str) -> Report {
        self.r.pid = self.pid;
        self.r.finish(self.t0, outcome)
    }

    /// QMP unusable: SIGTERM now, SIGKILL at T.
    fn no_qmp(mut self) -> Report {
        let Some(pid) = self.pid else {
            self.step(
                Instant::now(),
                "sigterm",
                Err("no pid known (set pid_file): cannot stop this guest".into()),
            );
            return self.done("still_running");
        };
        let at = Instant::now();
        let sent = kill(pid, libc::SIGTERM);
        self.step(
            at,
            "sigterm",
            if sent {
                Ok(format!("pid {pid}"))
            } else {
                Err(format!("pid {pid}: no such process"))
            },
        );
        while Instant::now() < self.end {
            if !alive(pid) {
                return self.done("terminated");
            }
            std::thread::sleep(POLL);
        }
        let at = Instant::now();
        kill(pid, libc::SIGKILL);
        self.step(at, "sigkill", Ok(format!("pid {pid} at the deadline")));
        wait_gone(pid, || false);
        self.done("killed")
    }

    /// SIGKILL at T; false when no pid is known.
    fn kill_at_end(&mut self, qmp: &QmpMux) -> bool {
        let at = Instant::now();
        let Some(pid) = self.pid else {
            self.step(
                at,
                "sigkill",
                Err("no pid known (set pid_file): the guest still runs".into()),
            );
            return false;
        };
        kill(pid, libc::SIGKILL);
        self.step(at, "sigkill", Ok(format!("pid {pid} at the deadline")));
        wait_gone(pid, || qmp.is_closed());
        true
    }

    /// Waits for QEMU to exit until `until`: its QMP connection closes
    /// (QEMU exited; a zombie's sockets are closed too) or its pid is gone.
    fn wait_exit(&self, qmp: &QmpMux, until: Instant) -> bool {
        loop {
            if qmp.is_closed() || self.pid.is_some_and(|p| !alive(p)) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }

    /// The save phase, every step recorded; Some is the durable state
    /// file, None means the guest runs on (resumed if it was paused here).
    fn save(&mut self, qmp: &QmpMux) -> Option<PathBuf> {
        let at = Instant::now();
        match self.try_save(qmp) {
            Ok((path, bytes)) => {
                let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                self.step(
                    at,
                    "save",
                    Ok(format!(
                        "guest RAM {} MiB, state {} MiB in {}",
                        bytes / MIB,
                        size / MIB,
                        path.display()
                    )),
                );
                Some(path)
            }
            Err(f) => {
                self.step(at, "save", Err(f.why));
                if f.cancel {
                    let at = Instant::now();
                    let c = qmp
                        .execute("migrate_cancel", None, self.tmo(self.acpi_end))
                        .map_err(|e| e.to_string())
                        .and_then(|_| {
                            // Cancelling is asynchronous: wait for QEMU to
                            // leave the migration before resuming.
                            let until = Instant::now()
                                + Duration::from_secs(5).min(self.tmo(self.acpi_end));
                            let v = wait_migration(qmp, until, &|u| self.tmo(u))?;
                            Ok(format!("status {}", v["status"].as_str().unwrap_or("?")))
                        });
                    self.step(at, "migrate_cancel", c);
                }
                if f.resume {
                    let at = Instant::now();
                    let c = qmp
                        .execute("cont", None, self.tmo(self.acpi_end))
                        .map(|_| String::new())
                        .map_err(|e| e.to_string());
                    self.step(at, "cont", c);
                }
                None
            }
        }
    }

    fn try_save(&mut self, qmp: &QmpMux) -> Result<(PathBuf, u64), SaveFailure> {
        let plain = |why: String| SaveFailure {
            why,
            cancel: false,
            resume: false,
        };
        let dir = self
            .guests
            .cfg
            .state_dir_of(self.g)
            .ok_or_else(|| plain("no state_dir configured: not saved".into()))?
            .to_owned();
        let part = dir.join(format!("{}.state.part", self.g.name));
        let fin = dir.join(format!("{}.state", self.g.name));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)
            .map_err(|e| {
                plain(format!(
                    "cannot write the state file {}: {e}",
                    part.display()
                ))
            })?;
        let r = self.migrate(qmp, &file).and_then(|bytes| {
            file.sync_all()
                .and_then(|()| std::fs::rename(&part, &fin))
                .and_then(|()| File::open(&dir)?.sync_all())
                .map(|()| bytes)
                .map_err(|e| SaveFailure {
                    why: format!("cannot make {} durable: {e}", fin.display()),
                    cancel: false,
                    resume: true,
                })
        });
        if r.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        r.map(|bytes| (fin, bytes))
    }

    /// stop, raise the bandwidth, getfd, migrate, wait until the save
    /// deadline; Ok is the bytes of RAM saved.
    fn migrate(&mut self, qmp: &QmpMux, file: &File) -> Result<u64, SaveFailure> {
        let plain = |why: String| SaveFailure {
            why,
            cancel: false,
            resume: false,
        };
        let status = qmp
            .execute("query-status", None, self.tmo(self.save_end))
            .map_err(|e| plain(e.to_string()))?;
        let was_running = status["running"] == json!(true);
        qmp.execute("stop", None, self.tmo(self.save_end))
            .map_err(|e| plain(e.to_string()))?;
        let mib = self
            .g
            .save_bandwidth_mib
            .unwrap_or(self.guests.cfg.save_bandwidth_mib);
        self.start_migration(qmp, file, mib.saturating_mul(MIB))
            .map_err(|why| SaveFailure {
                why,
                cancel: false,
                resume: was_running,
            })?;
        let v = wait_migration(qmp, self.save_end, &|u| self.tmo(u));
        let status = v
            .as_ref()
            .ok()
            .and_then(|v| v["status"].as_str())
            .unwrap_or("");
        if status == "completed" {
            return Ok(v
                .as_ref()
                .ok()
                .and_then(|v| v["ram"]["total"].as_u64())
                .unwrap_or(0));
        }
        let why = match &v {
            Ok(v) if status == "failed" => format!(
                "migration failed: {}",
                v["error-desc"].as_str().unwrap_or("(no reason given)")
            ),
            Ok(v) => format!(
                "not done by the save deadline ({} of {} MiB sent)",
                v["ram"]["transferred"].as_u64().unwrap_or(0) / MIB,
                v["ram"]["total"].as_u64().unwrap_or(0) / MIB
            ),
            Err(e) => format!("query-migrate: {e}"),
        };
        Err(SaveFailure {
            why,
            cancel: status != "failed" && status != "cancelled",
            resume: was_running,
        })
    }

    fn start_migration(&self, qmp: &QmpMux, file: &File, bandwidth: u64) -> Result<(), String> {
        let t = self.tmo(self.save_end);
        qmp.execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": bandwidth })),
            t,
        )
        .map_err(|e| e.to_string())?;
        qmp.execute_with_fd(
            "getfd",
            Some(json!({ "fdname": "pvsave" })),
            file.as_raw_fd(),
            t,
        )
        .map_err(|e| e.to_string())?;
        // A migration blocker makes `migrate` itself fail: reported now.
        qmp.execute("migrate", Some(json!({ "uri": "fd:pvsave" })), t)
            .map_err(|e| match e {
                QmpError::Command { desc, .. } => format!("migration refused: {desc}"),
                other => other.to_string(),
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_keeps_every_phase_inside_the_deadline() {
        let p = Plan::new(Duration::from_secs(20), None);
        assert_eq!(p.margin, Duration::from_secs(4));
        assert_eq!(p.save, Duration::from_secs(9));
        let p = Plan::new(Duration::from_secs(300), Some(Duration::from_secs(600)));
        assert_eq!(p.margin, Duration::from_secs(5));
        assert_eq!(p.save, Duration::from_secs(290), "save clamped");
        let p = Plan::new(Duration::ZERO, None);
        assert_eq!((p.save, p.margin), (Duration::ZERO, Duration::ZERO));
    }

    use std::io::Write;
    use std::os::unix::net::UnixListener;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    /// How a fake QEMU behaves.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Fake {
        /// `migrate` completes at once (after writing state into the fd).
        Saves,
        /// `migrate` is refused (a blocker); ACPI powers it off or not.
        Blocked { acpi: bool },
        /// `migrate` stays active forever; ACPI powers it off.
        Throttled,
    }

    /// Serves one QMP client as `kind` does; returns the commands seen.
    fn fake_qemu(path: &Path, kind: Fake) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).expect("bind");
        std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            let mut w = s.try_clone().expect("clone");
            let _ = w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n");
            let (mut buf, mut fd, mut seen) = (Vec::new(), None::<File>, Vec::new());
            let (mut running, mut migration) = (true, "none");
            loop {
                let mut chunk = [0u8; 4096];
                let Ok((n, f)) = s.recv_with_fd(&mut chunk[..]) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                fd = f.or(fd);
                buf.extend_from_slice(&chunk[..n]);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let v: Value = serde_json::from_slice(&line).expect("json");
                    let cmd = v["execute"].as_str().unwrap_or("").to_owned();
                    seen.push(cmd.clone());
                    let mut exit = false;
                    let ret = match cmd.as_str() {
                        "query-status" => Ok(
                            json!({"running": running, "status": if running {"running"} else {"paused"}}),
                        ),
                        "stop" => {
                            running = false;
                            Ok(json!({}))
                        }
                        "cont" => {
                            running = true;
                            Ok(json!({}))
                        }
                        "getfd" if fd.is_none() => Err("no fd passed"),
                        "migrate" => match kind {
                            Fake::Blocked { .. } => Err("Migration is disabled: fake blocker"),
                            Fake::Saves => {
                                let f = fd.as_mut().expect("fd");
                                f.write_all(&[7u8; 4096]).expect("write state");
                                migration = "completed";
                                Ok(json!({}))
                            }
                            Fake::Throttled => {
                                migration = "active";
                                Ok(json!({}))
                            }
                        },
                        "query-migrate" => Ok(
                            json!({"status": migration, "ram": {"total": 4096, "transferred": 0}}),
                        ),
                        "migrate_cancel" => {
                            migration = "cancelled";
                            Ok(json!({}))
                        }
                        "system_powerdown" => {
                            // A guest handles the button only while it runs.
                            exit = running
                                && matches!(kind, Fake::Throttled | Fake::Blocked { acpi: true });
                            Ok(json!({}))
                        }
                        "quit" => {
                            exit = true;
                            Ok(json!({}))
                        }
                        _ => Ok(json!({})),
                    };
                    let reply = match ret {
                        Ok(r) => json!({"return": r, "id": v["id"]}),
                        Err(d) => {
                            json!({"error": {"class": "GenericError", "desc": d}, "id": v["id"]})
                        }
                    };
                    if w.write_all(format!("{reply}\n").as_bytes()).is_err() || exit {
                        return seen;
                    }
                }
            }
            seen
        })
    }

    /// Four fake guests failing four ways, and one whose QMP never
    /// answers, under one deadline: each report is right and the whole
    /// command ends by T (plus the kill's bounded wait), not by a sum.
    #[test]
    fn every_guest_is_handled_in_parallel_under_one_deadline() {
        let dir = tempfile::tempdir().expect("dir");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("state");
        // Each guest's "QEMU" pid (pid_file): a process the daemon may
        // kill (the fakes' socket peer is this test process).
        let mut sleepers = Vec::new();
        let kinds = [
            ("saves", Some(Fake::Saves)),
            ("blocked", Some(Fake::Blocked { acpi: true })),
            ("stubborn", Some(Fake::Blocked { acpi: false })),
            ("throttled", Some(Fake::Throttled)),
            ("hung", None),
        ];
        let mut fakes = Vec::new();
        let mut entries = Vec::new();
        let mut _hung_listener = None;
        for (name, kind) in kinds {
            let qmp = dir.path().join(format!("{name}.qmp"));
            match kind {
                Some(k) => fakes.push((name, fake_qemu(&qmp, k))),
                // Accepts (the kernel queues the connection) and never greets.
                None => _hung_listener = Some(UnixListener::bind(&qmp).expect("bind")),
            }
            // The hung one ignores SIGTERM, as a stopped QEMU does.
            let sleeper = std::process::Command::new("sh")
                .arg("-c")
                .arg(if name == "hung" {
                    "trap '' TERM; exec sleep 600"
                } else {
                    "exec sleep 600"
                })
                .spawn()
                .expect("sleep");
            let pid_file = dir.path().join(format!("{name}.pid"));
            std::fs::write(&pid_file, sleeper.id().to_string()).expect("pid file");
            sleepers.push((name, sleeper));
            entries.push(GuestEntry {
                name: name.into(),
                qmp,
                pid_file: Some(pid_file),
                state_dir: None,
                save_bandwidth_mib: None,
                restore_command: Vec::new(),
            });
        }
        let cfg = GuestsConfig {
            state_dir: Some(state.clone()),
            qmp_timeout_secs: 1,
            guests: entries,
            ..GuestsConfig::default()
        };
        let guests = Guests::new(cfg, Arc::new(Registry::new()));
        let t = Duration::from_secs(4);
        let plan = Plan::new(t, None);
        let t0 = Instant::now();
        let reports = guests.shutdown(plan);
        let took = t0.elapsed();
        let by = |n: &str| reports.iter().find(|r| r.guest == n).expect("report");
        let actions = |n: &str| {
            by(n)
                .steps
                .iter()
                .map(|s| format!("{}{}", s.action, if s.ok { "" } else { "!" }))
                .collect::<Vec<_>>()
        };
        let all = format!("{reports:#?}");
        assert_eq!(by("saves").outcome, "saved", "{all}");
        assert_eq!(actions("saves"), ["save", "quit"]);
        assert_eq!(
            std::fs::read(state.join("saves.state")).expect("state"),
            vec![7u8; 4096],
            "the bytes QEMU wrote through the passed fd"
        );
        assert_eq!(by("blocked").outcome, "powered_off", "{all}");
        assert_eq!(actions("blocked"), ["save!", "cont", "system_powerdown"]);
        assert!(by("blocked").steps[0].detail.contains("fake blocker"));
        assert!(
            by("blocked").steps[0].at_ms + by("blocked").steps[0].took_ms
                < plan.save.as_millis() as u64,
            "a blocker is reported at once, not at the save deadline: {all}"
        );
        assert_eq!(by("stubborn").outcome, "quit", "{all}");
        assert_eq!(
            actions("stubborn"),
            ["save!", "cont", "system_powerdown", "quit"]
        );
        assert_eq!(by("throttled").outcome, "powered_off", "{all}");
        assert_eq!(
            actions("throttled"),
            ["save!", "migrate_cancel", "cont", "system_powerdown"],
            "{all}"
        );
        assert_eq!(by("hung").outcome, "killed", "{all}");
        assert_eq!(actions("hung"), ["connect!", "sigterm", "sigkill"], "{all}");
        for (name, mut sleeper) in sleepers {
            let gone = sleeper.try_wait().expect("wait").is_some();
            assert_eq!(
                gone,
                name == "hung",
                "{name}: only the hung guest is killed"
            );
            let _ = sleeper.kill();
            let _ = sleeper.wait();
        }
        // The bound: T plus the kill's own bounded wait (2 s), never a
        // sum of per-guest times (a sequential run takes over 2 T here).
        assert!(took < t + Duration::from_secs(3), "took {took:?}: {all}");
        for (name, f) in fakes {
            let seen = f.join().expect("fake");
            assert!(!seen.is_empty(), "{name}");
        }
    }

    /// A QEMU that exited but is not reaped yet (a zombie of its parent)
    /// is gone: waiting on it until the deadline would be a bug.
    #[test]
    fn a_zombie_is_not_alive() {
        assert!(alive(std::process::id()));
        let mut c = std::process::Command::new("true").spawn().expect("true");
        let pid = c.id();
        let t0 = Instant::now();
        while alive(pid) {
            assert!(t0.elapsed() < Duration::from_secs(30), "true never exited");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_ok(),
            "still a zombie, not reaped"
        );
        c.wait().expect("wait");
        assert!(!alive(pid));
    }
}
