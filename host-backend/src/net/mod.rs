//! The network switch: vhost-user-net ports joined by an L2 learning
//! switch, with an optional host uplink through a TAP device.
//!
//! Each `[[net_port]]` is one guest NIC on its own vhost-user socket
//! (QEMU: `-chardev socket,id=n0,path=SOCK -netdev vhost-user,id=net0,chardev=n0
//! -device virtio-net-pci,netdev=net0,mac=...`; with QEMU 7.2 under TCG add
//! `vectors=0`: it crashes once the guest unmasks a vhost-user NIC's MSI-X
//! vector, fixed in QEMU 8.0). The switch learns
//! source MACs per port (aging after `mac_aging_secs`, at most
//! [`switch::MAX_MACS_PER_PORT`] per port), forwards unicast to the learned
//! port, floods broadcast, multicast and unknown unicast to every other
//! port (never back to the ingress port), checks frame sizes against each
//! port's MTU, and applies a per-port ingress token bucket (`rate_mbps`,
//! off by default).
//!
//! It is event-driven: a guest's TX kick makes the port's worker copy each
//! frame out of the guest, and the same thread copies it into each
//! destination's RX queue and signals that guest. Nothing busy-polls (on a
//! small host a polling switch starves TCG guests of CPU): a port with
//! `poll_us` set watches its guest's TX queue for at most that long after a
//! burst, within a CPU budget ([`switch::PollBudget`]), then sleeps again.
//!
//! Offloads ([`offload`]): a guest that negotiated checksum offload or TSO
//! may send partial checksums and 64 KiB TSO frames; each egress port gets
//! them as sent when its guest negotiated the same, and checksummed or
//! segmented in software otherwise (the uplink TAP always the latter).
//! RX buffers may be merged (MRG_RXBUF).
//!
//! What a guest cannot do: reach another port with a malformed frame or
//! chain (runt, oversized, offload flags it did not negotiate, GSO and
//! checksum fields that do not fit the frame, looping or
//! escaping chains, writable TX descriptors: each is dropped, counted and
//! its buffer returned), make the switch read or write outside its own
//! memory (every access goes through vm-memory's checked API), fill the MAC
//! table, or take down another port: a worker panic is caught, counted, and
//! stops that port only until its driver resets it.
//!
//! Its metrics are documented in [`metrics`].

pub mod config;
pub mod device;
pub mod frame;
pub mod metrics;
pub mod offload;
pub mod port;
pub mod proxy;
pub mod server;
pub mod switch;
pub mod tap;

pub use config::{parse_net_port_spec, NetConfigError, NetPortConfig, SwitchConfig};
pub use server::{NetError, NetService};
