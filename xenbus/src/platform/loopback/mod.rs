//! The loopback Xen fabric (`loopback` feature, Linux): Xen's grant tables
//! and event channels between processes on a machine without a hypervisor.
//!
//! Each domain is a process (or, in tests, a connection) that joins a
//! [`Broker`] over a unix socket. The broker plays the hypervisor:
//!
//! - it creates each domain's memory (a memfd) and grant table (a memfd of
//!   v1 entries shared with the domain), and hands both to the domain;
//! - the granting domain writes entries exactly as a Xen guest does
//!   (frame, then flags+domid with release order) and revokes by
//!   compare-and-swapping the flags to zero while neither `GTF_reading`
//!   nor `GTF_writing` is set;
//! - a map request is checked against the granter's table on every call
//!   as Xen's `_set_status` checks it: permit-access type, the grantee is
//!   the caller's domid, no writable map of a read-only grant, the frame
//!   inside the granter's memory, then an atomic pin (the flags+domid word
//!   compare-and-swapped with `GTF_reading`, plus `GTF_writing` when
//!   writable) that a concurrent revoke either beats or sees;
//! - the mapper gets a descriptor of the granter's memory (a read-only
//!   open file description for a read-only map, so the kernel refuses any
//!   later attempt to write through it) and maps just the granted frames;
//! - event channels are pairs of eventfds the broker creates and passes
//!   over the socket; after that, notifications go straight between the
//!   processes;
//! - when a domain disconnects its maps are released and its ports closed.
//!
//! What differs from Xen is written down in `docs/XEN.md`: the mapper holds
//! a descriptor of the granter's whole memory (the broker only hands out
//! frames it checked, but a malicious mapper process could map others;
//! Xen's page tables stop that), a closed port's eventfds stay open in the
//! peer, and there is no grant copy.

mod broker;
mod domain;
mod proto;
mod sys;

pub use broker::{Broker, GRANT_ENTRIES, GRANT_TABLE_PAGES, MAX_DOMAIN_PAGES};
pub use domain::{FabricError, LoopbackDomain};
pub use proto::{Err as BrokerRefusal, MAX_MAP_PAGES};
