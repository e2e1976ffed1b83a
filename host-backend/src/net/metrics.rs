//! Metrics of the switch, on the daemon's Prometheus endpoint
//! ([`crate::metrics_server`]).
//!
//! `rx` and `tx` are seen from the switch: `rx` = frames the guest sent.
//!
//! Every series carries the `port` label and, when the port names its guest
//! (`guest = "vm1"`, `guest=vm1`), the `guest` label last
//! ([`crate::metrics_server`]: the guest label), shown as `(guest)` below.
//!
//! | series | type | labels | meaning |
//! |---|---|---|---|
//! | `pvbackend_net_rx_packets_total` | counter | port, (guest) | frames the switch took from the port (after validation and rate limit) |
//! | `pvbackend_net_rx_bytes_total` | counter | port, (guest) | their bytes (Ethernet frame, no virtio header) |
//! | `pvbackend_net_tx_packets_total` | counter | port, (guest) | frames delivered to the port |
//! | `pvbackend_net_tx_bytes_total` | counter | port, (guest) | their bytes |
//! | `pvbackend_net_drops_total` | counter | port, reason, (guest) | dropped frames: `runt`, `oversized`, `bad_header`, `malformed_chain`, `rate_limited`, `same_port` (counted on the ingress port); `no_rx_buffer`, `rx_chain` (bad or small RX buffers), `oversized` for the destination's MTU (counted on the destination); `uplink` (TAP errors); malformed offload headers on the ingress port: `gso_size` (zero, or segments beyond the MTU), `hdr_len` (past the frame), `csum_offsets` (past the frame, or a TSO frame's not at its TCP checksum), `gso_frame` (not the TCP/IP packet its GSO type names) |
//! | `pvbackend_net_flooded_total` | counter | port, (guest) | frames from the port flooded to every other port |
//! | `pvbackend_net_learned_macs` | gauge | port, (guest) | MAC addresses learned on the port |
//! | `pvbackend_net_worker_panics_total` | counter | port, (guest) | worker panics (the port was reset) |
//! | `pvbackend_net_connections_total` | counter | port, (guest) | frontend connections accepted |
//! | `pvbackend_net_poll_hits_total` | counter | port, (guest) | polling windows (`poll_us`) after a TX burst that found the guest's next frame |
//! | `pvbackend_net_poll_misses_total` | counter | port, (guest) | polling windows that ended empty or out of budget (the worker went back to sleep) |
//! | `pvbackend_net_offload_passed_total` | counter | port, (guest) | frames delivered to the port with their offload as sent (partial checksum, TSO): the port's guest took it |
//! | `pvbackend_net_offload_segmented_total` | counter | port, (guest) | TSO frames segmented in software for the port (its guest did not take that TSO) |
//! | `pvbackend_net_csum_completed_total` | counter | port, (guest) | partial checksums completed in software for the port (one per frame or segment) |
//! | `pvbackend_switch_mac` | gauge | port, mac, (guest) | 1 for each address in the MAC table |
//!
//! The uplink's port is labelled `uplink:<tap name>`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::frame::{format_mac, DropReason, Mac};
use crate::metrics_server::GuestLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: String,
    #[prometheus(flatten)]
    guest: GuestLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    port: String,
    reason: String,
    #[prometheus(flatten)]
    guest: GuestLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MacLabels {
    port: String,
    mac: String,
    #[prometheus(flatten)]
    guest: GuestLabel,
}

/// The metric families of every switch port.
#[derive(Debug, Clone)]
pub struct NetFamilies {
    rx_packets: Family<PortLabels, Counter>,
    rx_bytes: Family<PortLabels, Counter>,
    tx_packets: Family<PortLabels, Counter>,
    tx_bytes: Family<PortLabels, Counter>,
    drops: Family<ReasonLabels, Counter>,
    flooded: Family<PortLabels, Counter>,
    learned: Family<PortLabels, Gauge>,
    panics: Family<PortLabels, Counter>,
    connections: Family<PortLabels, Counter>,
    poll_hits: Family<PortLabels, Counter>,
    poll_misses: Family<PortLabels, Counter>,
    offload_passed: Family<PortLabels, Counter>,
    offload_segmented: Family<PortLabels, Counter>,
    csum_completed: Family<PortLabels, Counter>,
    macs: Family<MacLabels, Gauge>,
}

impl NetFamilies {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let f = Self {
            rx_packets: Family::default(),
            rx_bytes: Family::default(),
            tx_packets: Family::default(),
            tx_bytes: Family::default(),
            drops: Family::default(),
            flooded: Family::default(),
            learned: Family::default(),
            panics: Family::default(),
            connections: Family::default(),
            poll_hits: Family::default(),
            poll_misses: Family::default(),
            offload_passed: Family::default(),
            offload_segmented: Family::default(),
            csum_completed: Family::default(),
            macs: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("pvbackend_net");
        r.register(
            "rx_packets",
            "Frames the switch received from the port",
            f.rx_packets.clone(),
        );
        r.register(
            "rx_bytes",
            "Frame bytes the switch received from the port",
            f.rx_bytes.clone(),
        );
        r.register(
            "tx_packets",
            "Frames the switch delivered to the port",
            f.tx_packets.clone(),
        );
        r.register(
            "tx_bytes",
            "Frame bytes the switch delivered to the port",
            f.tx_bytes.clone(),
        );
        r.register(
            "drops",
            "Frames dropped, by port and reason",
            f.drops.clone(),
        );
        r.register(
            "flooded",
            "Frames from the port flooded to every other port",
            f.flooded.clone(),
        );
        r.register(
            "learned_macs",
            "MAC addresses learned on the port",
            f.learned.clone(),
        );
        r.register(
            "worker_panics",
            "Port workers that panicked (the port was reset)",
            f.panics.clone(),
        );
        r.register(
            "connections",
            "Frontend connections accepted on the port",
            f.connections.clone(),
        );
        r.register(
            "poll_hits",
            "Polling windows after a TX burst that found the next frame",
            f.poll_hits.clone(),
        );
        r.register(
            "poll_misses",
            "Polling windows after a TX burst that ended empty (the worker went back to sleep)",
            f.poll_misses.clone(),
        );
        r.register(
            "offload_passed",
            "Frames delivered to the port with their checksum or TSO offload as sent",
            f.offload_passed.clone(),
        );
        r.register(
            "offload_segmented",
            "TSO frames segmented in software for the port",
            f.offload_segmented.clone(),
        );
        r.register(
            "csum_completed",
            "Partial checksums completed in software for the port",
            f.csum_completed.clone(),
        );
        registry.register(
            "pvbackend_switch_mac",
            "1 for each MAC address in the switch's table, by the port it was learned on",
            f.macs.clone(),
        );
        f
    }

    /// Handles for one port of no named guest (see [`Self::guest_port`]).
    pub fn port(&self, port: &str) -> Arc<PortMetrics> {
        self.guest_port(port, None)
    }

    /// Handles for one port, of `guest` when it names one, resolved once.
    pub fn guest_port(&self, port: &str, guest: Option<&str>) -> Arc<PortMetrics> {
        let guest = GuestLabel::new(guest);
        fn c(f: &Family<PortLabels, Counter>, l: &PortLabels) -> Counter {
            let c = f.get_or_create(l).clone();
            c
        }
        let l = PortLabels {
            port: port.to_owned(),
            guest: guest.clone(),
        };
        let drops = DropReason::ALL.map(|r| {
            let c = self
                .drops
                .get_or_create(&ReasonLabels {
                    port: port.to_owned(),
                    reason: r.label().to_owned(),
                    guest: guest.clone(),
                })
                .clone();
            c
        });
        let learned = {
            let g = self.learned.get_or_create(&l).clone();
            g
        };
        Arc::new(PortMetrics {
            port: port.to_owned(),
            guest,
            rx_packets: c(&self.rx_packets, &l),
            rx_bytes: c(&self.rx_bytes, &l),
            tx_packets: c(&self.tx_packets, &l),
            tx_bytes: c(&self.tx_bytes, &l),
            flooded: c(&self.flooded, &l),
            panics: c(&self.panics, &l),
            connections: c(&self.connections, &l),
            poll_hits: c(&self.poll_hits, &l),
            poll_misses: c(&self.poll_misses, &l),
            offload_passed: c(&self.offload_passed, &l),
            offload_segmented: c(&self.offload_segmented, &l),
            csum_completed: c(&self.csum_completed, &l),
            drops,
            learned,
            macs: self.macs.clone(),
        })
    }
}

/// One port's metric handles.
#[derive(Debug)]
pub struct PortMetrics {
    port: String,
    guest: GuestLabel,
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    pub flooded: Counter,
    pub panics: Counter,
    pub connections: Counter,
    pub poll_hits: Counter,
    pub poll_misses: Counter,
    pub offload_passed: Counter,
    pub offload_segmented: Counter,
    pub csum_completed: Counter,
    drops: [Counter; DropReason::ALL.len()],
    pub learned: Gauge,
    macs: Family<MacLabels, Gauge>,
}

impl PortMetrics {
    pub fn dropped(&self, reason: DropReason) {
        if let Some(c) = self.drops.get(reason.index()) {
            c.inc();
        }
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.index()).map_or(0, Counter::get)
    }

    /// `mac` is now in the table on this port.
    pub fn mac_learned(&self, mac: &Mac) {
        self.macs
            .get_or_create(&MacLabels {
                port: self.port.clone(),
                mac: format_mac(mac),
                guest: self.guest.clone(),
            })
            .set(1);
    }

    /// `mac` left the table (aged, moved away or forgotten).
    pub fn mac_gone(&self, mac: &Mac) {
        self.macs.remove(&MacLabels {
            port: self.port.clone(),
            mac: format_mac(mac),
            guest: self.guest.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics_server::render;

    #[test]
    fn a_port_of_a_guest_carries_the_guest_label_on_every_series() {
        let mut registry = Registry::default();
        let families = NetFamilies::register(&mut registry);
        let p = families.guest_port("vm1-eth0", Some("vm1"));
        p.rx_packets.inc();
        p.dropped(DropReason::ALL[0]);
        p.mac_learned(&[0x52, 0x54, 0, 0, 0, 1]);
        let _plain = families.port("uplink:tap0");
        let text = render(&registry);
        for needle in [
            r#"pvbackend_net_rx_packets_total{port="vm1-eth0",guest="vm1"} 1"#,
            r#"pvbackend_switch_mac{port="vm1-eth0",mac="52:54:00:00:00:01",guest="vm1"} 1"#,
            r#"pvbackend_net_rx_packets_total{port="uplink:tap0"} 0"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        for line in text.lines().filter(|l| l.contains(r#"port="vm1-eth0""#)) {
            assert!(line.contains(r#"guest="vm1""#), "{line}");
        }
        p.mac_gone(&[0x52, 0x54, 0, 0, 0, 1]);
        assert!(!render(&registry).contains("pvbackend_switch_mac{"));
    }
}
