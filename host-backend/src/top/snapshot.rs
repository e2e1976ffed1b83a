//! One scrape turned into the counters `top` computes with, keyed by guest
//! and device. A series' guest is its `guest` label; a device without one
//! is a guest of its own, named after the device (see the guest label in
//! [`crate::metrics_server`]).

use std::collections::BTreeMap;

use super::expo::Sample;

/// A histogram's cumulative buckets: upper bound (`le`) to count, the last
/// one `+Inf`.
pub type Buckets = BTreeMap<Le, f64>;

/// A bucket bound, ordered as a number (`+Inf` last).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Le(pub f64);

impl Eq for Le {}
impl PartialOrd for Le {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Le {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One disk's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskCounters {
    pub reads: f64,
    pub writes: f64,
    pub read_bytes: f64,
    pub write_bytes: f64,
    /// Every error kind, summed.
    pub errors: f64,
    /// Requests in flight now (a gauge).
    pub inflight: f64,
    /// Latency of every operation, merged (same bucket bounds).
    pub latency: Buckets,
}

/// One queue's notification counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueCounters {
    pub kicks: f64,
    pub interrupts: f64,
}

/// One switch port's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortCounters {
    pub rx_packets: f64,
    pub rx_bytes: f64,
    pub tx_packets: f64,
    pub tx_bytes: f64,
    pub drops: BTreeMap<String, f64>,
}

/// One guest's balloon gauges (bytes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    pub target: Option<f64>,
    pub actual: Option<f64>,
    pub available: Option<f64>,
    pub min: Option<f64>,
}

/// (guest, device).
pub type DevKey = (String, String);

/// Everything one scrape says, by guest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub disks: BTreeMap<DevKey, DiskCounters>,
    /// (guest, disk, queue number).
    pub queues: BTreeMap<(String, String, u32), QueueCounters>,
    pub ports: BTreeMap<DevKey, PortCounters>,
    pub memory: BTreeMap<String, Memory>,
}

impl Snapshot {
    /// Collects the samples `top` uses; others are ignored.
    pub fn from_samples(samples: &[Sample]) -> Self {
        let mut s = Self::default();
        for x in samples {
            let v = x.value;
            if let Some(field) = x.name.strip_prefix("pvbackend_blk_") {
                let Some(disk) = x.label("disk") else {
                    continue;
                };
                let guest = x.label("guest").unwrap_or(disk);
                let key = (guest.to_owned(), disk.to_owned());
                if let Some(kind) = field.strip_suffix("s_total") {
                    if kind == "kick" || kind == "interrupt" {
                        let Some(q) = x.label("queue").and_then(|q| q.parse().ok()) else {
                            continue;
                        };
                        let c = s.queues.entry((key.0, key.1, q)).or_default();
                        if kind == "kick" {
                            c.kicks = v;
                        } else {
                            c.interrupts = v;
                        }
                        continue;
                    }
                }
                let d = s.disks.entry(key).or_default();
                match (field, x.label("op")) {
                    ("requests_total", Some("read")) => d.reads = v,
                    ("requests_total", Some("write")) => d.writes = v,
                    ("bytes_total", Some("read")) => d.read_bytes = v,
                    ("bytes_total", Some("write")) => d.write_bytes = v,
                    ("errors_total", _) => d.errors += v,
                    ("inflight", _) => d.inflight = v,
                    ("request_duration_seconds_bucket", _) => {
                        if let Some(le) = x.label("le").and_then(parse_le) {
                            *d.latency.entry(Le(le)).or_default() += v;
                        }
                    }
                    _ => {}
                }
            } else if let Some(field) = x.name.strip_prefix("pvbackend_net_") {
                let Some(port) = x.label("port") else {
                    continue;
                };
                let guest = x.label("guest").unwrap_or(port);
                let p = s
                    .ports
                    .entry((guest.to_owned(), port.to_owned()))
                    .or_default();
                match field {
                    "rx_packets_total" => p.rx_packets = v,
                    "rx_bytes_total" => p.rx_bytes = v,
                    "tx_packets_total" => p.tx_packets = v,
                    "tx_bytes_total" => p.tx_bytes = v,
                    "drops_total" => {
                        let reason = x.label("reason").unwrap_or("unknown");
                        *p.drops.entry(reason.to_owned()).or_default() += v;
                    }
                    _ => {}
                }
            } else if let Some(field) = x.name.strip_prefix("pvbackend_balloon_") {
                let Some(guest) = x.label("guest") else {
                    continue;
                };
                let m = s.memory.entry(guest.to_owned()).or_default();
                let slot = match field {
                    "target_bytes" => &mut m.target,
                    "actual_bytes" => &mut m.actual,
                    "guest_available_bytes" => &mut m.available,
                    "min_bytes" => &mut m.min,
                    _ => continue,
                };
                *slot = Some(v);
            }
        }
        s
    }
}

fn parse_le(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        _ => s.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blk::metrics::{BlkFamilies, BlkOp};
    use crate::metrics_server::render;
    use crate::net::metrics::NetFamilies;
    use prometheus_client::registry::Registry;

    #[test]
    fn the_daemons_own_exposition_groups_by_guest() {
        let mut registry = Registry::default();
        let blk = BlkFamilies::register(&mut registry);
        let net = NetFamilies::register(&mut registry);
        let root = blk.guest_disk("vm1-root", Some("vm1"), 2);
        let data = blk.guest_disk("vm1-data", Some("vm1"), 1);
        let lone = blk.disk("scratch", 1);
        root.completed(BlkOp::Read, 0.0002);
        root.read_bytes(4096);
        data.completed(BlkOp::Write, 0.004);
        data.written_bytes(8192);
        data.error("io");
        lone.kick(0);
        let port = net.guest_port("vm1-eth0", Some("vm1"));
        port.rx_packets.inc_by(7);
        let samples = crate::top::expo::parse(&render(&registry)).expect("parses");
        let s = Snapshot::from_samples(&samples);
        let k = |g: &str, d: &str| (g.to_owned(), d.to_owned());
        let r = &s.disks[&k("vm1", "vm1-root")];
        assert_eq!((r.reads, r.read_bytes, r.errors), (1.0, 4096.0, 0.0));
        let d = &s.disks[&k("vm1", "vm1-data")];
        assert_eq!((d.writes, d.write_bytes, d.errors), (1.0, 8192.0, 1.0));
        // Every op of the disk merged: its one write.
        assert_eq!(d.latency.get(&Le(f64::INFINITY)), Some(&1.0));
        assert!(
            s.disks.contains_key(&k("scratch", "scratch")),
            "guestless: its own guest"
        );
        assert_eq!(
            s.queues[&("scratch".into(), "scratch".into(), 0)].kicks,
            1.0
        );
        assert_eq!(s.queues.len(), 4);
        assert_eq!(s.ports[&k("vm1", "vm1-eth0")].rx_packets, 7.0);
    }
}
