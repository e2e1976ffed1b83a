//! Balloon manager metrics, on the daemon's Prometheus endpoint.
//!
//! Per-guest series carry the `guest` label (the configured name, or the
//! socket's file stem for watched guests); they are removed when a watched
//! guest's socket goes away. Figures the guest reports are absent until it
//! first reports them.
//!
//! | series | type | labels | meaning |
//! |---|---|---|---|
//! | `pvbackend_balloon_target_bytes` | gauge | guest | target the manager last set (or, before it set one, the guest's actual size) |
//! | `pvbackend_balloon_actual_bytes` | gauge | guest | memory the guest has now (`query-balloon`) |
//! | `pvbackend_balloon_min_bytes` / `_max_bytes` | gauge | guest | the policy's limits for the guest |
//! | `pvbackend_balloon_guest_free_bytes` | gauge | guest | guest-reported free memory |
//! | `pvbackend_balloon_guest_available_bytes` | gauge | guest | guest-reported available memory |
//! | `pvbackend_balloon_guest_total_bytes` | gauge | guest | guest-reported total memory |
//! | `pvbackend_balloon_guest_swap_in_bytes` / `_swap_out_bytes` | gauge | guest | guest-reported cumulative swap traffic |
//! | `pvbackend_balloon_guest_major_faults` / `_minor_faults` | gauge | guest | guest-reported cumulative page faults |
//! | `pvbackend_balloon_stats_last_update_seconds` | gauge | guest | Unix time QEMU last received the guest's statistics (0: never) |
//! | `pvbackend_balloon_connected` | gauge | guest | 1 while the manager holds the guest's QMP connection |
//! | `pvbackend_balloon_decisions_total` | counter | guest, reason | targets changed by the policy (`reclaim`, `pressure`, `give_back`, `below_min`, `above_max`), also counted in dry-run |
//! | `pvbackend_balloon_errors_total` | counter | guest, kind | QMP failures (`connect`, `timeout`, `closed`, `io`, `malformed`, `command`, `no_balloon`, ...); each is logged |
//! | `pvbackend_balloon_host_available_bytes` | gauge | | the host's available memory the policy used this round |
//! | `pvbackend_balloon_rounds_total` | counter | | policy rounds run |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::device::GuestStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GuestLabels {
    guest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GuestReasonLabels {
    guest: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GuestKindLabels {
    guest: String,
    kind: String,
}

/// Names of the per-guest gauges, in [`BalloonMetrics::gauges`] order.
const GAUGES: [(&str, &str); 13] = [
    ("target_bytes", "Balloon target the manager last set"),
    ("actual_bytes", "Memory the guest has now (query-balloon)"),
    ("min_bytes", "The policy's minimum for the guest"),
    ("max_bytes", "The policy's maximum for the guest"),
    ("guest_free_bytes", "Guest-reported free memory"),
    ("guest_available_bytes", "Guest-reported available memory"),
    ("guest_total_bytes", "Guest-reported total memory"),
    ("guest_swap_in_bytes", "Guest-reported cumulative swap-in"),
    ("guest_swap_out_bytes", "Guest-reported cumulative swap-out"),
    (
        "guest_major_faults",
        "Guest-reported cumulative major faults",
    ),
    (
        "stats_last_update_seconds",
        "Unix time QEMU last received the guest's statistics",
    ),
    (
        "connected",
        "1 while the manager holds the guest's QMP connection",
    ),
    (
        "guest_minor_faults",
        "Guest-reported cumulative minor faults",
    ),
];

/// Index of each gauge in the `GAUGES` table.
#[derive(Debug, Clone, Copy)]
pub enum G {
    Target = 0,
    Actual,
    Min,
    Max,
    Free,
    Available,
    Total,
    SwapIn,
    SwapOut,
    MajorFaults,
    LastUpdate,
    Connected,
    MinorFaults,
}

/// The balloon manager's metric families.
#[derive(Debug)]
pub struct BalloonMetrics {
    gauges: Vec<Family<GuestLabels, Gauge>>,
    decisions: Family<GuestReasonLabels, Counter>,
    errors: Family<GuestKindLabels, Counter>,
    host_available: Gauge,
    rounds: Counter,
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl BalloonMetrics {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("pvbackend_balloon");
        let gauges: Vec<Family<GuestLabels, Gauge>> =
            GAUGES.iter().map(|_| Family::default()).collect();
        for ((name, help), f) in GAUGES.iter().zip(&gauges) {
            r.register(*name, *help, f.clone());
        }
        let m = Self {
            gauges,
            decisions: Family::default(),
            errors: Family::default(),
            host_available: Gauge::default(),
            rounds: Counter::default(),
        };
        r.register(
            "decisions",
            "Targets changed by the policy, by reason",
            m.decisions.clone(),
        );
        r.register("errors", "QMP failures, by kind", m.errors.clone());
        r.register(
            "host_available_bytes",
            "Host available memory the policy used",
            m.host_available.clone(),
        );
        r.register("rounds", "Policy rounds run", m.rounds.clone());
        m
    }

    fn labels(guest: &str) -> GuestLabels {
        GuestLabels {
            guest: guest.to_owned(),
        }
    }

    /// Sets one per-guest gauge.
    pub fn set(&self, guest: &str, which: G, value: u64) {
        if let Some(f) = self.gauges.get(which as usize) {
            f.get_or_create(&Self::labels(guest)).set(clamp_i64(value));
        }
    }

    /// Publishes a guest's statistics (figures it did not report are left
    /// as they were).
    pub fn stats(&self, guest: &str, s: &GuestStats) {
        for (which, v) in [
            (G::Free, s.free),
            (G::Available, s.available),
            (G::Total, s.total),
            (G::SwapIn, s.swap_in),
            (G::SwapOut, s.swap_out),
            (G::MajorFaults, s.major_faults),
            (G::MinorFaults, s.minor_faults),
            (G::LastUpdate, Some(s.last_update)),
        ] {
            if let Some(v) = v {
                self.set(guest, which, v);
            }
        }
    }

    /// Counts a policy decision.
    pub fn decision(&self, guest: &str, reason: &str) {
        self.decisions
            .get_or_create(&GuestReasonLabels {
                guest: guest.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a QMP failure.
    pub fn error(&self, guest: &str, kind: &str) {
        self.errors
            .get_or_create(&GuestKindLabels {
                guest: guest.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn host_available(&self, bytes: u64) {
        self.host_available.set(clamp_i64(bytes));
    }

    pub fn round(&self) {
        self.rounds.inc();
    }

    /// Removes a guest's gauges (its socket went away). Its counters stay:
    /// counters must not go backwards while a scraper watches them.
    pub fn forget(&self, guest: &str) {
        for f in &self.gauges {
            f.remove(&Self::labels(guest));
        }
    }
}
