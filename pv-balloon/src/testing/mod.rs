//! Fakes of the other side (`test-utils`): a virtio-balloon device on a
//! fake transport ([`virtio`]), a Xen reservation platform ([`xen`]), and
//! the drivers of the fuzz targets ([`fuzz`]).
//!
//! The virtio fake is built on pv-virtq's `FakeTransport` (`virtio-drivers`
//! 0.13 keeps its own under `#[cfg(test)]`, so other crates cannot use it).

pub mod fuzz;
pub mod virtio;
pub mod xen;
