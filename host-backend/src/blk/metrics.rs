//! Metrics of the block devices, on the daemon's Prometheus endpoint
//! ([`crate::metrics_server`]).
//!
//! Every series carries the `disk` label (the disk's name from the config)
//! and, when the disk names its guest (`guest = "vm1"`, `guest=vm1`), the
//! `guest` label last ([`crate::metrics_server`]: the guest label), shown
//! as `(guest)` below.
//!
//! | series | type | labels | meaning |
//! |---|---|---|---|
//! | `pvbackend_blk_requests_total` | counter | disk, op, (guest) | requests completed, by op: `read`, `write`, `flush`, `get_id`, `discard`, `write_zeroes` |
//! | `pvbackend_blk_bytes_total` | counter | disk, op, (guest) | data bytes moved by successful `read` and `write` requests |
//! | `pvbackend_blk_errors_total` | counter | disk, kind, (guest) | failed or dropped requests: `io` (the disk failed), `dropped_chain` (no status byte: returned with used length 0), `worker_panic` and `io_panic` (a panic, see `resets`), `stop_timeout` (a request stuck in the disk past `stop-timeout-ms` when QEMU stopped the queue: the queue is reset, see `resets`), `not_owner` (a request from a connection that does not own the disk, failed with an I/O error: a frontend resumed after handing the disk over, see `blk::handover`), `signal` (notifying the driver failed), and one kind per guest mistake (`short_header`, `out_of_range`, `misaligned`, `too_many_segments`, `wrong_direction`, `read_only`, `unsupported`, `guest_memory`, ...) |
//! | `pvbackend_blk_inflight` | gauge | disk, (guest) | requests being executed now |
//! | `pvbackend_blk_request_duration_seconds` | histogram | disk, op, (guest) | time from taking a request off the queue to completing it |
//! | `pvbackend_blk_kicks_total` | counter | disk, queue, (guest) | queue notifications from the driver handled |
//! | `pvbackend_blk_interrupts_total` | counter | disk, queue, (guest) | used-buffer notifications sent to the driver |
//! | `pvbackend_blk_connections_total` | counter | disk, (guest) | frontend (QEMU) connections accepted |
//! | `pvbackend_blk_resets_total` | counter | disk, (guest) | device resets after a panic in a queue worker (`errors{kind="worker_panic"}`) or an I/O thread (`errors{kind="io_panic"}`): the connection is dropped and QEMU's `reconnect=` resubmits the unfinished requests |
//!
//! Every data-path error that is logged also increments an error counter.
//! The `errors` series of the kinds in [`PRESET_ERROR_KINDS`] (the
//! daemon's own failures) exist from the disk's start, at 0, so a scrape
//! tells "no error" from "no such series"; the guest-mistake kinds appear
//! with their first occurrence.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::metrics_server::GuestLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskLabels {
    disk: String,
    #[prometheus(flatten)]
    guest: GuestLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskOpLabels {
    disk: String,
    op: String,
    #[prometheus(flatten)]
    guest: GuestLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskKindLabels {
    disk: String,
    kind: String,
    #[prometheus(flatten)]
    guest: GuestLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskQueueLabels {
    disk: String,
    queue: String,
    #[prometheus(flatten)]
    guest: GuestLabel,
}

/// The `errors` kinds created at 0 for every disk (see the module docs).
pub const PRESET_ERROR_KINDS: [&str; 5] =
    ["io", "dropped_chain", "worker_panic", "io_panic", "signal"];

fn latency_histogram() -> Histogram {
    // 10 us .. ~2.6 s in 19 doubling buckets.
    Histogram::new(exponential_buckets(1e-5, 2.0, 19))
}

/// Block operations, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkOp {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
}

impl BlkOp {
    pub const ALL: [BlkOp; 6] = [
        Self::Read,
        Self::Write,
        Self::Flush,
        Self::GetId,
        Self::Discard,
        Self::WriteZeroes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Flush => "flush",
            Self::GetId => "get_id",
            Self::Discard => "discard",
            Self::WriteZeroes => "write_zeroes",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The metric families of all block devices.
#[derive(Debug)]
pub struct BlkFamilies {
    requests: Family<DiskOpLabels, Counter>,
    bytes: Family<DiskOpLabels, Counter>,
    errors: Family<DiskKindLabels, Counter>,
    inflight: Family<DiskLabels, Gauge>,
    latency: Family<DiskOpLabels, Histogram, fn() -> Histogram>,
    kicks: Family<DiskQueueLabels, Counter>,
    interrupts: Family<DiskQueueLabels, Counter>,
    connections: Family<DiskLabels, Counter>,
    resets: Family<DiskLabels, Counter>,
}

impl BlkFamilies {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let f = Self {
            requests: Family::default(),
            bytes: Family::default(),
            errors: Family::default(),
            inflight: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            kicks: Family::default(),
            interrupts: Family::default(),
            connections: Family::default(),
            resets: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("pvbackend_blk");
        r.register(
            "requests",
            "Requests completed, by operation",
            f.requests.clone(),
        );
        r.register(
            "bytes",
            "Data bytes moved by successful reads and writes",
            f.bytes.clone(),
        );
        r.register(
            "errors",
            "Failed or dropped requests, by kind",
            f.errors.clone(),
        );
        r.register(
            "inflight",
            "Requests being executed now",
            f.inflight.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from dequeue to completion",
            f.latency.clone(),
        );
        r.register(
            "kicks",
            "Queue notifications from the driver handled",
            f.kicks.clone(),
        );
        r.register(
            "interrupts",
            "Used-buffer notifications sent to the driver",
            f.interrupts.clone(),
        );
        r.register(
            "connections",
            "Frontend connections accepted",
            f.connections.clone(),
        );
        r.register(
            "resets",
            "Device resets (connection dropped) after a worker or I/O thread panic",
            f.resets.clone(),
        );
        f
    }

    /// Handles for one disk of no named guest (see [`Self::guest_disk`]).
    pub fn disk(&self, disk: &str, queues: u16) -> Arc<DiskMetrics> {
        self.guest_disk(disk, None, queues)
    }

    /// Handles for one disk with `queues` queues, of `guest` when it names
    /// one, resolved once so the data path never looks up a label set.
    pub fn guest_disk(&self, disk: &str, guest: Option<&str>, queues: u16) -> Arc<DiskMetrics> {
        let guest = GuestLabel::new(guest);
        // Each handle is cloned out in its own statement: `get_or_create`
        // returns a read guard, and a guard still alive (a temporary of the
        // same statement) while the next call takes the family's write lock
        // to insert a new label set would deadlock.
        fn counter<L: Clone + std::hash::Hash + Eq>(f: &Family<L, Counter>, l: &L) -> Counter {
            let c = f.get_or_create(l).clone();
            c
        }
        let op = |o: BlkOp| DiskOpLabels {
            disk: disk.to_owned(),
            op: o.name().to_owned(),
            guest: guest.clone(),
        };
        let queue = |q: u16| DiskQueueLabels {
            disk: disk.to_owned(),
            queue: q.to_string(),
            guest: guest.clone(),
        };
        let d = DiskLabels {
            disk: disk.to_owned(),
            guest: guest.clone(),
        };
        let requests = BlkOp::ALL.map(|o| counter(&self.requests, &op(o)));
        let latency = BlkOp::ALL.map(|o| {
            let h = self.latency.get_or_create(&op(o)).clone();
            h
        });
        let bytes_read = counter(&self.bytes, &op(BlkOp::Read));
        let bytes_written = counter(&self.bytes, &op(BlkOp::Write));
        let inflight = {
            let g = self.inflight.get_or_create(&d).clone();
            g
        };
        let kicks = (0..queues)
            .map(|q| counter(&self.kicks, &queue(q)))
            .collect();
        let interrupts = (0..queues)
            .map(|q| counter(&self.interrupts, &queue(q)))
            .collect();
        let connections = counter(&self.connections, &d);
        let resets = counter(&self.resets, &d);
        for kind in PRESET_ERROR_KINDS {
            let labels = DiskKindLabels {
                disk: disk.to_owned(),
                kind: kind.to_owned(),
                guest: guest.clone(),
            };
            counter(&self.errors, &labels);
        }
        Arc::new(DiskMetrics {
            disk: disk.to_owned(),
            guest,
            requests,
            bytes_read,
            bytes_written,
            latency,
            inflight,
            kicks,
            interrupts,
            connections,
            resets,
            errors: self.errors.clone(),
        })
    }
}

/// One disk's metric handles.
#[derive(Debug)]
pub struct DiskMetrics {
    disk: String,
    guest: GuestLabel,
    requests: [Counter; 6],
    bytes_read: Counter,
    bytes_written: Counter,
    latency: [Histogram; 6],
    pub inflight: Gauge,
    kicks: Vec<Counter>,
    interrupts: Vec<Counter>,
    pub connections: Counter,
    pub resets: Counter,
    errors: Family<DiskKindLabels, Counter>,
}

impl DiskMetrics {
    /// A request of `op` finished after `seconds`.
    pub fn completed(&self, op: BlkOp, seconds: f64) {
        self.requests[op.index()].inc();
        self.latency[op.index()].observe(seconds);
    }

    pub fn read_bytes(&self, n: u64) {
        self.bytes_read.inc_by(n);
    }

    pub fn written_bytes(&self, n: u64) {
        self.bytes_written.inc_by(n);
    }

    /// An error of `kind` (a stable snake_case name). Errors are rare, so
    /// the label lookup is acceptable here.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&DiskKindLabels {
                disk: self.disk.clone(),
                kind: kind.to_owned(),
                guest: self.guest.clone(),
            })
            .inc();
    }

    pub fn kick(&self, queue: usize) {
        if let Some(c) = self.kicks.get(queue) {
            c.inc();
        }
    }

    pub fn interrupt(&self, queue: usize) {
        if let Some(c) = self.interrupts.get(queue) {
            c.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics_server::{render, MetricsServer};

    #[test]
    fn disk_series_are_rendered_and_served() {
        let mut registry = Registry::default();
        let families = BlkFamilies::register(&mut registry);
        let d = families.disk("vm1", 2);
        d.completed(BlkOp::Read, 0.0002);
        d.read_bytes(4096);
        d.error("short_header");
        d.kick(1);
        d.interrupt(1);
        let text = render(&registry);
        for needle in [
            r#"pvbackend_blk_requests_total{disk="vm1",op="read"} 1"#,
            r#"pvbackend_blk_bytes_total{disk="vm1",op="read"} 4096"#,
            r#"pvbackend_blk_errors_total{disk="vm1",kind="short_header"} 1"#,
            r#"pvbackend_blk_kicks_total{disk="vm1",queue="1"} 1"#,
            r#"pvbackend_blk_interrupts_total{disk="vm1",queue="1"} 1"#,
            r#"pvbackend_blk_request_duration_seconds_count{disk="vm1",op="read"} 1"#,
            r#"pvbackend_blk_inflight{disk="vm1"} 0"#,
            r#"pvbackend_blk_errors_total{disk="vm1",kind="io"} 0"#,
            r#"pvbackend_blk_errors_total{disk="vm1",kind="worker_panic"} 0"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        let server = MetricsServer::start("127.0.0.1:0", Arc::new(registry)).expect("server");
        let body = http_get(server.addr(), "/metrics");
        assert!(
            body.contains(r#"pvbackend_blk_requests_total{disk="vm1",op="read"} 1"#),
            "{body}"
        );
        let other = http_get(server.addr(), "/other");
        assert!(
            other.lines().next().is_some_and(|l| l.contains(" 404")),
            "{other}"
        );
        server.stop();
    }

    #[test]
    fn a_disk_of_a_guest_carries_the_guest_label_on_every_series() {
        let mut registry = Registry::default();
        let families = BlkFamilies::register(&mut registry);
        let d = families.guest_disk("vm1-root", Some("vm1"), 1);
        d.completed(BlkOp::Write, 0.001);
        d.error("short_header");
        let _plain = families.disk("scratch", 1);
        let text = render(&registry);
        for needle in [
            r#"pvbackend_blk_requests_total{disk="vm1-root",op="write",guest="vm1"} 1"#,
            r#"pvbackend_blk_errors_total{disk="vm1-root",kind="short_header",guest="vm1"} 1"#,
            r#"pvbackend_blk_errors_total{disk="vm1-root",kind="io",guest="vm1"} 0"#,
            r#"pvbackend_blk_inflight{disk="vm1-root",guest="vm1"} 0"#,
            r#"pvbackend_blk_kicks_total{disk="vm1-root",queue="0",guest="vm1"} 0"#,
            r#"pvbackend_blk_request_duration_seconds_count{disk="vm1-root",op="write",guest="vm1"} 1"#,
            r#"pvbackend_blk_inflight{disk="scratch"} 0"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        // Every series of the guest's disk names the guest; no series of
        // the guestless disk has an empty guest label.
        for line in text.lines().filter(|l| l.contains(r#"disk="vm1-root""#)) {
            assert!(line.contains(r#"guest="vm1""#), "{line}");
        }
        assert!(!text.contains("guest=\"\""), "{text}");
    }

    fn http_get(addr: &str, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }
}
