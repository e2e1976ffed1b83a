//! From two snapshots to per-second rates and interval percentiles.
//!
//! Counters are differenced (a counter that went down was reset, e.g. by a
//! daemon restart: its new value is the whole interval's delta, as
//! Prometheus's `rate()` does); the latency percentiles come from the
//! difference of the cumulative histogram buckets, so they describe the
//! requests completed in the interval only, interpolated linearly within a
//! bucket as Prometheus's `histogram_quantile()` does.

use std::collections::BTreeMap;

use serde::Serialize;

use super::snapshot::{Buckets, Le, Snapshot};

/// The increase of a counter from `prev` to `cur` (a drop is a reset).
pub fn delta(prev: f64, cur: f64) -> f64 {
    if cur >= prev {
        cur - prev
    } else {
        cur
    }
}

/// Bucket-wise increase of a cumulative histogram.
pub fn bucket_delta(prev: &Buckets, cur: &Buckets) -> Buckets {
    let reset = cur
        .iter()
        .any(|(le, c)| prev.get(le).is_some_and(|p| c < p));
    cur.iter()
        .map(|(le, c)| {
            let p = if reset {
                0.0
            } else {
                prev.get(le).copied().unwrap_or(0.0)
            };
            (*le, (c - p).max(0.0))
        })
        .collect()
}

/// The `q` quantile (0..=1) of cumulative buckets, as `histogram_quantile`:
/// `None` with no observation. A rank in the `+Inf` bucket is the highest
/// finite bound (the histogram cannot say more).
pub fn quantile(q: f64, buckets: &Buckets) -> Option<f64> {
    let total = buckets
        .get(&Le(f64::INFINITY))
        .copied()
        .or_else(|| buckets.values().last().copied())?;
    if total <= 0.0 || !q.is_finite() {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, &cum) in buckets {
        if cum >= rank && cum > below {
            if le.0.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (le.0 - lower) * (rank - below) / (cum - below));
        }
        lower = le.0;
        below = cum;
    }
    Some(lower)
}

/// Adds `b` into `into` bucket by bucket.
fn merge(into: &mut Buckets, b: &Buckets) {
    for (le, c) in b {
        *into.entry(*le).or_default() += c;
    }
}

/// One disk over the interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DiskRates {
    pub disk: String,
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_mbps: f64,
    pub write_mbps: f64,
    /// Latency percentiles of the requests completed in the interval (ms).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub inflight: f64,
    /// Errors counted in the interval (every kind).
    pub errors: f64,
    /// The interval's counter increases the rates come from.
    pub reads: f64,
    pub writes: f64,
    pub read_bytes: f64,
    pub write_bytes: f64,
    #[serde(skip)]
    latency: Buckets,
}

/// One queue of a disk over the interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueRates {
    pub disk: String,
    pub queue: u32,
    pub kicks_per_sec: f64,
    pub interrupts_per_sec: f64,
}

/// One switch port over the interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PortRates {
    pub port: String,
    pub rx_pps: f64,
    pub tx_pps: f64,
    pub rx_mbitps: f64,
    pub tx_mbitps: f64,
    /// Frames dropped in the interval, and by reason (reasons with none
    /// left out).
    pub drops: f64,
    pub drops_by_reason: BTreeMap<String, f64>,
    pub rx_packets: f64,
    pub tx_packets: f64,
}

/// One guest: its devices summed, its memory, and whether it jumped.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GuestRow {
    pub guest: String,
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_mbps: f64,
    pub write_mbps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub inflight: f64,
    pub errors: f64,
    pub rx_pps: f64,
    pub tx_pps: f64,
    pub rx_mbitps: f64,
    pub tx_mbitps: f64,
    pub drops: f64,
    pub mem_target_mib: Option<f64>,
    pub mem_actual_mib: Option<f64>,
    pub mem_available_mib: Option<f64>,
    /// Change of the guest's actual memory over the interval (MiB; the
    /// balloon inflating is negative).
    pub balloon_moved_mib: Option<f64>,
    /// The guest's p99 or drops jumped against the previous interval.
    pub jumped: bool,
    pub disks: Vec<DiskRates>,
    pub queues: Vec<QueueRates>,
    pub ports: Vec<PortRates>,
}

impl GuestRow {
    /// Read plus write requests per second.
    pub fn iops(&self) -> f64 {
        self.read_iops + self.write_iops
    }
}

/// Everything `top` shows for one interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Unix time of the second scrape.
    pub unix_time: f64,
    /// Seconds between the two scrapes.
    pub interval_secs: f64,
    pub guests: Vec<GuestRow>,
}

const MIB: f64 = 1_048_576.0;

fn mib(v: Option<f64>) -> Option<f64> {
    v.map(|b| b / MIB)
}

/// The rates between `prev` and `cur`, `secs` apart (guests by name).
pub fn compute(prev: &Snapshot, cur: &Snapshot, secs: f64) -> Report {
    let secs = if secs > 0.0 { secs } else { f64::MIN_POSITIVE };
    let mut guests: BTreeMap<String, GuestRow> = BTreeMap::new();
    let mut latency: BTreeMap<String, Buckets> = BTreeMap::new();
    for ((guest, disk), c) in &cur.disks {
        let p = prev.disks.get(&(guest.clone(), disk.clone()));
        let d = |f: fn(&super::snapshot::DiskCounters) -> f64| delta(p.map_or(0.0, f), f(c));
        let lat = bucket_delta(p.map_or(&Buckets::new(), |p| &p.latency), &c.latency);
        let r = DiskRates {
            disk: disk.clone(),
            reads: d(|x| x.reads),
            writes: d(|x| x.writes),
            read_bytes: d(|x| x.read_bytes),
            write_bytes: d(|x| x.write_bytes),
            errors: d(|x| x.errors),
            inflight: c.inflight,
            p50_ms: quantile(0.5, &lat).map(|s| s * 1e3),
            p99_ms: quantile(0.99, &lat).map(|s| s * 1e3),
            latency: lat,
            ..DiskRates::default()
        };
        let r = DiskRates {
            read_iops: r.reads / secs,
            write_iops: r.writes / secs,
            read_mbps: r.read_bytes / 1e6 / secs,
            write_mbps: r.write_bytes / 1e6 / secs,
            ..r
        };
        merge(latency.entry(guest.clone()).or_default(), &r.latency);
        entry(&mut guests, guest).disks.push(r);
    }
    for ((guest, disk, queue), c) in &cur.queues {
        let p = prev.queues.get(&(guest.clone(), disk.clone(), *queue));
        entry(&mut guests, guest).queues.push(QueueRates {
            disk: disk.clone(),
            queue: *queue,
            kicks_per_sec: delta(p.map_or(0.0, |p| p.kicks), c.kicks) / secs,
            interrupts_per_sec: delta(p.map_or(0.0, |p| p.interrupts), c.interrupts) / secs,
        });
    }
    for ((guest, port), c) in &cur.ports {
        let p = prev.ports.get(&(guest.clone(), port.clone()));
        let d = |f: fn(&super::snapshot::PortCounters) -> f64| delta(p.map_or(0.0, f), f(c));
        let drops_by_reason: BTreeMap<String, f64> = c
            .drops
            .iter()
            .map(|(reason, v)| {
                let before = p.and_then(|p| p.drops.get(reason)).copied().unwrap_or(0.0);
                (reason.clone(), delta(before, *v))
            })
            .filter(|(_, v)| *v > 0.0)
            .collect();
        let r = PortRates {
            port: port.clone(),
            rx_packets: d(|x| x.rx_packets),
            tx_packets: d(|x| x.tx_packets),
            rx_pps: d(|x| x.rx_packets) / secs,
            tx_pps: d(|x| x.tx_packets) / secs,
            rx_mbitps: d(|x| x.rx_bytes) * 8.0 / 1e6 / secs,
            tx_mbitps: d(|x| x.tx_bytes) * 8.0 / 1e6 / secs,
            drops: drops_by_reason.values().sum(),
            drops_by_reason,
        };
        entry(&mut guests, guest).ports.push(r);
    }
    for (guest, m) in &cur.memory {
        let before = prev.memory.get(guest).and_then(|m| m.actual);
        let g = entry(&mut guests, guest);
        g.mem_target_mib = mib(m.target);
        g.mem_actual_mib = mib(m.actual);
        g.mem_available_mib = mib(m.available);
        g.balloon_moved_mib = match (before, m.actual) {
            (Some(b), Some(a)) => Some((a - b) / MIB),
            _ => None,
        };
    }
    for g in guests.values_mut() {
        for d in &g.disks {
            g.read_iops += d.read_iops;
            g.write_iops += d.write_iops;
            g.read_mbps += d.read_mbps;
            g.write_mbps += d.write_mbps;
            g.inflight += d.inflight;
            g.errors += d.errors;
        }
        for p in &g.ports {
            g.rx_pps += p.rx_pps;
            g.tx_pps += p.tx_pps;
            g.rx_mbitps += p.rx_mbitps;
            g.tx_mbitps += p.tx_mbitps;
            g.drops += p.drops;
        }
        if let Some(lat) = latency.get(&g.guest) {
            g.p50_ms = quantile(0.5, lat).map(|s| s * 1e3);
            g.p99_ms = quantile(0.99, lat).map(|s| s * 1e3);
        }
    }
    Report {
        unix_time: 0.0,
        interval_secs: secs,
        guests: guests.into_values().collect(),
    }
}

fn entry<'a>(guests: &'a mut BTreeMap<String, GuestRow>, name: &str) -> &'a mut GuestRow {
    guests.entry(name.to_owned()).or_insert_with(|| GuestRow {
        guest: name.to_owned(),
        ..GuestRow::default()
    })
}

/// A p99 this many times the previous interval's, and at least
/// [`JUMP_MIN_MS`] above it, is a jump.
pub const JUMP_FACTOR: f64 = 2.0;
/// Smaller p99 changes are noise, whatever the ratio.
pub const JUMP_MIN_MS: f64 = 1.0;

/// Marks the guests whose p99 or drops jumped against `previous` (the
/// report of the interval before). A guest not in `previous` never jumps:
/// there is nothing to compare with.
pub fn mark_jumps(report: &mut Report, previous: &Report) {
    let before: BTreeMap<&str, &GuestRow> = previous
        .guests
        .iter()
        .map(|g| (g.guest.as_str(), g))
        .collect();
    for g in &mut report.guests {
        let Some(b) = before.get(g.guest.as_str()) else {
            continue;
        };
        let p99 = match (b.p99_ms, g.p99_ms) {
            (Some(then), Some(now)) => now >= then * JUMP_FACTOR && now - then >= JUMP_MIN_MS,
            _ => false,
        };
        let drops = g.drops > 0.0 && g.drops >= b.drops * JUMP_FACTOR;
        g.jumped = p99 || drops;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::snapshot::{DiskCounters, Memory, PortCounters};

    fn buckets(pairs: &[(f64, f64)]) -> Buckets {
        pairs.iter().map(|&(le, c)| (Le(le), c)).collect()
    }

    #[test]
    fn a_counter_that_went_down_was_reset() {
        assert_eq!(delta(10.0, 15.0), 5.0);
        assert_eq!(delta(10.0, 3.0), 3.0);
        assert_eq!(delta(0.0, 0.0), 0.0);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_histogram_quantile() {
        // 100 observations: 50 in (0, 1], 40 in (1, 2], 10 in (2, 4].
        let b = buckets(&[
            (1.0, 50.0),
            (2.0, 90.0),
            (4.0, 100.0),
            (f64::INFINITY, 100.0),
        ]);
        assert_eq!(quantile(0.5, &b), Some(1.0));
        assert_eq!(quantile(0.25, &b), Some(0.5));
        assert_eq!(quantile(0.7, &b), Some(1.5));
        assert_eq!(quantile(0.99, &b), Some(2.0 + 2.0 * 9.0 / 10.0));
        // Nothing observed: no percentile.
        assert_eq!(
            quantile(0.5, &buckets(&[(1.0, 0.0), (f64::INFINITY, 0.0)])),
            None
        );
        // A rank past the last finite bound is that bound.
        let slow = buckets(&[(1.0, 0.0), (2.0, 1.0), (f64::INFINITY, 10.0)]);
        assert_eq!(quantile(0.99, &slow), Some(2.0));
        // Empty buckets below the rank are skipped, not divided by.
        let gap = buckets(&[(1.0, 0.0), (2.0, 0.0), (4.0, 4.0), (f64::INFINITY, 4.0)]);
        assert_eq!(quantile(0.5, &gap), Some(3.0));
    }

    #[test]
    fn interval_percentiles_come_from_the_bucket_deltas() {
        // Before: 1000 fast requests. In the interval: 10 more, all slow.
        let before = buckets(&[(0.001, 1000.0), (0.1, 1000.0), (f64::INFINITY, 1000.0)]);
        let after = buckets(&[(0.001, 1000.0), (0.1, 1010.0), (f64::INFINITY, 1010.0)]);
        let d = bucket_delta(&before, &after);
        let p50 = quantile(0.5, &d).expect("observations");
        assert!(p50 > 0.001 && p50 <= 0.1, "{p50}");
        // The cumulative histogram alone would say fast.
        assert!(quantile(0.5, &after).expect("obs") <= 0.001);
        // A reset histogram counts whole.
        let reset = buckets(&[(0.001, 5.0), (0.1, 5.0), (f64::INFINITY, 5.0)]);
        assert_eq!(bucket_delta(&after, &reset), reset);
    }

    fn disk(reads: f64, writes: f64, bytes: f64, lat: &[(f64, f64)]) -> DiskCounters {
        DiskCounters {
            reads,
            writes,
            read_bytes: bytes,
            write_bytes: bytes,
            errors: 0.0,
            inflight: 1.0,
            latency: buckets(lat),
        }
    }

    #[test]
    fn rates_are_deltas_over_the_interval_summed_per_guest() {
        let mut a = Snapshot::default();
        let mut b = Snapshot::default();
        let k = |g: &str, d: &str| (g.to_owned(), d.to_owned());
        a.disks.insert(
            k("vm1", "root"),
            disk(100.0, 0.0, 0.0, &[(0.001, 100.0), (f64::INFINITY, 100.0)]),
        );
        b.disks.insert(
            k("vm1", "root"),
            disk(300.0, 50.0, 4e6, &[(0.001, 300.0), (f64::INFINITY, 350.0)]),
        );
        b.disks.insert(
            k("vm1", "data"),
            disk(0.0, 100.0, 2e6, &[(0.001, 100.0), (f64::INFINITY, 100.0)]),
        );
        a.ports.insert(
            k("vm1", "eth0"),
            PortCounters {
                rx_packets: 10.0,
                rx_bytes: 1000.0,
                ..Default::default()
            },
        );
        let mut drops = BTreeMap::new();
        drops.insert("no_rx_buffer".to_owned(), 6.0);
        drops.insert("runt".to_owned(), 0.0);
        b.ports.insert(
            k("vm1", "eth0"),
            PortCounters {
                rx_packets: 30.0,
                rx_bytes: 251_000.0,
                drops,
                ..Default::default()
            },
        );
        a.memory.insert(
            "vm1".into(),
            Memory {
                actual: Some(2048.0 * MIB),
                ..Default::default()
            },
        );
        b.memory.insert(
            "vm1".into(),
            Memory {
                actual: Some(1920.0 * MIB),
                target: Some(1920.0 * MIB),
                ..Default::default()
            },
        );
        let r = compute(&a, &b, 2.0);
        assert_eq!(r.guests.len(), 1);
        let g = &r.guests[0];
        // vm1/root: 200 reads, 50 writes; vm1/data: 100 writes (new disk).
        assert_eq!((g.read_iops, g.write_iops), (100.0, 75.0));
        assert_eq!(g.read_mbps, (4e6 + 2e6) / 1e6 / 2.0);
        assert_eq!(g.write_mbps, (4e6 + 2e6) / 1e6 / 2.0);
        assert_eq!(g.inflight, 2.0);
        // 350 requests in the interval: 300 fast, 50 slow: p50 fast, p99 slow.
        assert!(g.p50_ms.expect("p50") <= 1.0);
        assert_eq!(
            g.p99_ms,
            Some(1.0),
            "a rank in +Inf is the last finite bound"
        );
        assert_eq!((g.rx_pps, g.rx_mbitps), (10.0, 250_000.0 * 8.0 / 1e6 / 2.0));
        assert_eq!(g.drops, 6.0);
        assert_eq!(
            g.ports[0].drops_by_reason.len(),
            1,
            "reasons with none left out"
        );
        assert_eq!(g.balloon_moved_mib, Some(-128.0));
        assert_eq!(g.mem_target_mib, Some(1920.0));
    }

    #[test]
    fn a_p99_or_drops_jump_marks_the_guest() {
        let row = |name: &str, p99: Option<f64>, drops: f64| GuestRow {
            guest: name.into(),
            p99_ms: p99,
            drops,
            ..GuestRow::default()
        };
        let before = Report {
            guests: vec![
                row("a", Some(2.0), 0.0),
                row("b", Some(2.0), 10.0),
                row("c", Some(0.1), 0.0),
            ],
            ..Report::default()
        };
        let mut now = Report {
            guests: vec![
                row("a", Some(5.0), 0.0),  // p99 x2.5, +3 ms: jumped
                row("b", Some(3.0), 12.0), // neither doubled
                row("c", Some(0.5), 1.0),  // p99 x5 but +0.4 ms (noise); drops from 0: jumped
                row("d", Some(90.0), 9.0), // new: nothing to compare
            ],
            ..Report::default()
        };
        mark_jumps(&mut now, &before);
        let jumped: Vec<bool> = now.guests.iter().map(|g| g.jumped).collect();
        assert_eq!(jumped, [true, false, true, false]);
    }
}
