//! Fakes of the other side for tests and fuzzers (feature `test-utils`):
//! a virtio-net device on a fake transport ([`virtio`]) and a netback on
//! xenbus's in-process platform ([`xen`]); [`fuzz`] drives both with
//! hostile scripts.

pub mod fuzz;
pub mod virtio;
pub mod xen;
