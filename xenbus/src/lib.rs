//! Xen transports for pvdrivers: the shared ring (both ends), grant and
//! event-channel abstractions, the xenstore wire protocol and client, and the
//! xenbus state machine.
//!
//! The crate is `no_std` + `alloc`; the `std` feature adds host-side pieces
//! (a xenstore client over a unix socket) and `test-utils` adds in-process
//! fakes of the other side for tests and fuzzers. On Linux, `loopback` adds
//! the loopback Xen fabric (`platform::loopback`: grants and event channels
//! between processes through a broker standing in for the hypervisor) and
//! `xenstored-fixture` the real C `xenstored` as a test fixture
//! (`xenstore::daemon`).
#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod platform;
pub mod ring;
pub mod wire;
pub mod xenstore;
