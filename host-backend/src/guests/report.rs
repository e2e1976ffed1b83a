//! What a lifecycle command did to each guest: one [`Report`] per guest
//! (JSON, one object per line on `--json`), and the human table.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One thing tried on a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What was tried: `connect`, `save`, `cont`, `system_powerdown`,
    /// `quit`, `sigterm`, `sigkill`, `spawn`, `migrate-incoming`, ...
    pub action: String,
    /// When it started, milliseconds after the command began.
    pub at_ms: u64,
    /// How long it took, milliseconds.
    pub took_ms: u64,
    pub ok: bool,
    /// What came of it (QEMU's error text, bytes saved, ...).
    pub detail: String,
}

/// What a command did to one guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub guest: String,
    /// `shutdown` or `restore`.
    pub command: String,
    /// QEMU's pid, when known (config `pid_file` or the QMP socket's peer).
    pub pid: Option<u32>,
    pub steps: Vec<Step>,
    /// How it ended. Shutdown: `saved`, `powered_off` (ACPI), `quit`,
    /// `terminated` (its QMP did not answer; it exited on SIGTERM),
    /// `killed` (SIGKILL at the deadline), `not_running` (no QEMU on the
    /// socket), `still_running` (pid unknown, could not be stopped),
    /// `refused` (not acted on: the error says why). Restore: `restored`,
    /// `no_state`, `failed`, `refused`.
    pub outcome: String,
    /// From the command's start until this guest was done, milliseconds.
    pub total_ms: u64,
    /// The saved state (shutdown `saved`, restore's input).
    pub state_file: Option<String>,
    /// The first thing that went wrong, in words, if anything did.
    pub error: Option<String>,
}

impl Report {
    pub(crate) fn new(guest: &str, command: &str) -> Self {
        Self {
            guest: guest.to_owned(),
            command: command.to_owned(),
            pid: None,
            steps: Vec::new(),
            outcome: String::new(),
            total_ms: 0,
            state_file: None,
            error: None,
        }
    }

    /// Records a step that started at `started` (the command began at `t0`).
    pub(crate) fn step(
        &mut self,
        t0: Instant,
        started: Instant,
        action: &str,
        r: Result<String, String>,
    ) {
        let ok = r.is_ok();
        let detail = match r {
            Ok(d) => d,
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(format!("{action}: {e}"));
                }
                e
            }
        };
        self.steps.push(Step {
            action: action.to_owned(),
            at_ms: ms(started.saturating_duration_since(t0)),
            took_ms: ms(started.elapsed()),
            ok,
            detail,
        });
    }

    pub(crate) fn finish(mut self, t0: Instant, outcome: &str) -> Self {
        self.outcome = outcome.to_owned();
        self.total_ms = ms(t0.elapsed());
        self
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The human table: one line per guest, the steps tried in order.
pub fn table(reports: &[Report]) -> String {
    let mut out = format!(
        "{:<16} {:<13} {:>8} {:<7} STEPS\n",
        "GUEST", "OUTCOME", "TIME s", "PID"
    );
    for r in reports {
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|s| format!("{}{}", s.action, if s.ok { "" } else { "(failed)" }))
            .collect();
        out.push_str(&format!(
            "{:<16} {:<13} {:>8.1} {:<7} {}\n",
            r.guest,
            r.outcome,
            r.total_ms as f64 / 1000.0,
            r.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            steps.join(" > ")
        ));
        if let Some(e) = &r.error {
            out.push_str(&format!("{:<16} ! {e}\n", ""));
        }
    }
    if reports.is_empty() {
        out.push_str("(no guests configured: [[guests.guest]] in the daemon's config)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_and_renders() {
        let t0 = Instant::now();
        let mut r = Report::new("vm1", "shutdown");
        r.pid = Some(42);
        r.step(t0, t0, "save", Err("migration blocked: ivshmem".into()));
        r.step(t0, t0, "system_powerdown", Ok(String::new()));
        let r = r.finish(t0, "powered_off");
        let text = serde_json::to_string(&r).expect("json");
        let back: Report = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, r);
        assert_eq!(r.error.as_deref(), Some("save: migration blocked: ivshmem"));
        let t = table(&[r]);
        let line = t.lines().nth(1).expect("row");
        for needle in [
            "vm1",
            "powered_off",
            "42",
            "save(failed) > system_powerdown",
        ] {
            assert!(line.contains(needle), "{needle} in {line}");
        }
        assert!(t.contains("! save: migration blocked"), "{t}");
        assert!(table(&[]).contains("no guests"));
    }
}
