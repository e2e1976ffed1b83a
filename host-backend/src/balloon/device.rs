//! One guest's balloon, seen through its QMP socket: find the balloon
//! device, turn on statistics polling, read `query-balloon` and
//! `guest-stats`, set targets.
//!
//! Every figure here comes from the guest (through QEMU) and is untrusted:
//! the guest may report anything. Values are parsed without panicking,
//! QEMU's "not reported" marker (all ones) becomes `None`, and figures that
//! contradict each other (available or free above total) are dropped. A
//! lying guest can only steer its own allocation, and only within the
//! per-guest min/max the operator set.

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use serde_json::{json, Value};

use super::qmp::QmpError;
use crate::guests::mux::{QmpMux, Registry};

const MIB: u64 = 1 << 20;

/// The guest's statistics as QEMU last received them (bytes, or counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestStats {
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    pub free: Option<u64>,
    pub total: Option<u64>,
    pub available: Option<u64>,
    pub disk_caches: Option<u64>,
    /// Host time (Unix seconds) QEMU received these figures; 0 = never.
    pub last_update: u64,
}

impl GuestStats {
    /// Parses `qom-get guest-stats`'s value. Unknown keys are ignored,
    /// missing or malformed ones become `None`.
    pub fn parse(v: &Value) -> Self {
        let stats = v.get("stats");
        let get = |k: &str| {
            stats
                .and_then(|s| s.get(k))
                .and_then(Value::as_u64)
                // QEMU initialises every stat to -1 (as u64): not reported.
                .filter(|&n| n != u64::MAX)
        };
        let mut s = Self {
            swap_in: get("stat-swap-in"),
            swap_out: get("stat-swap-out"),
            major_faults: get("stat-major-faults"),
            minor_faults: get("stat-minor-faults"),
            free: get("stat-free-memory"),
            total: get("stat-total-memory"),
            available: get("stat-available-memory"),
            disk_caches: get("stat-disk-caches"),
            last_update: v.get("last-update").and_then(Value::as_u64).unwrap_or(0),
        };
        if let Some(t) = s.total {
            if s.free.is_some_and(|f| f > t) {
                s.free = None;
            }
            if s.available.is_some_and(|a| a > t) {
                s.available = None;
            }
        }
        s
    }
}

/// One sample of a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSample {
    /// Memory the guest has now (`query-balloon` actual), bytes.
    pub actual: u64,
    pub stats: GuestStats,
}

/// A guest's QMP session with its balloon found: the daemon's one
/// connection to that guest, shared with the lifecycle commands.
#[derive(Debug)]
pub struct GuestConn {
    qmp: QmpMux,
    events: Receiver<(String, Value)>,
    timeout: Duration,
    /// QOM path of the balloon device (properties `guest-stats` and
    /// `guest-stats-polling-interval`).
    balloon_path: String,
    /// Guest RAM size (`query-memory-size-summary` base-memory), bytes.
    ram: u64,
    /// Latest actual size reported by a `BALLOON_CHANGE` event.
    event_actual: Option<u64>,
}

fn unexpected(command: &str, v: &Value) -> QmpError {
    QmpError::Unexpected {
        command: command.to_owned(),
        reply: v.to_string(),
    }
}

/// Finds the balloon device's QOM path: a child of type
/// `child<virtio-balloon-...>` under `/machine/peripheral` (devices with an
/// `id=`: `/machine/peripheral/<id>`) or `/machine/peripheral-anon` (devices
/// without one: `/machine/peripheral-anon/device[N]`).
pub fn find_balloon(qmp: &QmpMux, timeout: Duration) -> Result<Option<String>, QmpError> {
    for container in ["/machine/peripheral", "/machine/peripheral-anon"] {
        let list = match qmp.execute("qom-list", Some(json!({ "path": container })), timeout) {
            Ok(l) => l,
            // The container is absent when no device of that kind exists.
            Err(QmpError::Command { .. }) => continue,
            Err(e) => return Err(e),
        };
        let Some(items) = list.as_array() else {
            return Err(unexpected("qom-list", &list));
        };
        for item in items {
            let (Some(name), Some(ty)) = (
                item.get("name").and_then(Value::as_str),
                item.get("type").and_then(Value::as_str),
            ) else {
                continue;
            };
            if ty.starts_with("child<virtio-balloon") {
                return Ok(Some(format!("{container}/{name}")));
            }
        }
    }
    Ok(None)
}

/// Why a guest could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// The VM has no virtio-balloon device: nothing to manage.
    #[error("the VM has no virtio-balloon device")]
    NoBalloon,
}

impl GuestError {
    /// A stable snake_case name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Qmp(e) => e.kind(),
            Self::NoBalloon => "no_balloon",
        }
    }
}

impl GuestConn {
    /// Takes the guest's connection from `registry` (connecting when there
    /// is none), finds the balloon and asks QEMU to poll the guest's
    /// statistics every `stats_interval` (at least one second).
    pub fn open(
        registry: &Registry,
        socket: &Path,
        timeout: Duration,
        stats_interval: Duration,
    ) -> Result<Self, GuestError> {
        let qmp = registry.get(socket, timeout).map_err(|e| e.error)?;
        let events = qmp.subscribe();
        let balloon_path = find_balloon(&qmp, timeout)?.ok_or(GuestError::NoBalloon)?;
        let secs = stats_interval.as_secs().max(1);
        qmp.execute(
            "qom-set",
            Some(json!({
                "path": balloon_path,
                "property": "guest-stats-polling-interval",
                "value": secs,
            })),
            timeout,
        )?;
        let summary = qmp.execute("query-memory-size-summary", None, timeout)?;
        let ram = summary
            .get("base-memory")
            .and_then(Value::as_u64)
            .ok_or_else(|| unexpected("query-memory-size-summary", &summary))?;
        Ok(Self {
            qmp,
            events,
            timeout,
            balloon_path,
            ram,
            event_actual: None,
        })
    }

    /// Guest RAM size, bytes (the most the balloon can give it).
    pub fn ram(&self) -> u64 {
        self.ram
    }

    /// The balloon device's QOM path.
    pub fn balloon_path(&self) -> &str {
        &self.balloon_path
    }

    /// Reads `query-balloon` and `guest-stats`.
    pub fn sample(&mut self) -> Result<GuestSample, QmpError> {
        let b = self.qmp.execute("query-balloon", None, self.timeout)?;
        let actual = b
            .get("actual")
            .and_then(Value::as_u64)
            .ok_or_else(|| unexpected("query-balloon", &b))?;
        let s = self.qmp.execute(
            "qom-get",
            Some(json!({ "path": self.balloon_path, "property": "guest-stats" })),
            self.timeout,
        )?;
        self.drain_events();
        Ok(GuestSample {
            actual,
            stats: GuestStats::parse(&s),
        })
    }

    /// Asks the guest to hold `bytes` of memory (QMP `balloon`), rounded
    /// down to whole MiB and clamped to 1 MiB..=RAM.
    pub fn set_target(&mut self, bytes: u64) -> Result<(), QmpError> {
        let value = (bytes / MIB * MIB).clamp(MIB, self.ram.max(MIB));
        self.qmp
            .execute("balloon", Some(json!({ "value": value })), self.timeout)
            .map(|_| ())
    }

    /// The latest actual size from a `BALLOON_CHANGE` event, if any.
    pub fn event_actual(&self) -> Option<u64> {
        self.event_actual
    }

    fn drain_events(&mut self) {
        for (name, data) in self.events.try_iter() {
            if name == "BALLOON_CHANGE" {
                if let Some(a) = data.get("actual").and_then(Value::as_u64) {
                    self.event_actual = Some(a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_parse_untrusted_values() {
        let v = json!({
            "stats": {
                "stat-swap-in": 0, "stat-swap-out": 4096,
                "stat-major-faults": 12, "stat-minor-faults": 18446744073709551615u64,
                "stat-free-memory": 100, "stat-total-memory": 1000,
                "stat-available-memory": 5000, "stat-disk-caches": "x",
            },
            "last-update": 1_700_000_000u64
        });
        let s = GuestStats::parse(&v);
        assert_eq!(s.swap_out, Some(4096));
        assert_eq!(s.major_faults, Some(12));
        assert_eq!(s.minor_faults, None, "all-ones means not reported");
        assert_eq!(s.free, Some(100));
        assert_eq!(s.available, None, "available above total is dropped");
        assert_eq!(s.disk_caches, None);
        assert_eq!(s.last_update, 1_700_000_000);
        assert_eq!(GuestStats::parse(&json!(null)), GuestStats::default());
        assert_eq!(GuestStats::parse(&json!({"stats": 3})).total, None);
    }
}
