//! Fakes of the other side (`test-utils`): a virtio-balloon device on a
//! fake transport ([`virtio`]), a Xen reservation platform ([`xen`]), and
//! the drivers of the fuzz targets ([`fuzz`]).
//!
//! `virtio-drivers` 0.13 keeps its `FakeTransport` under `#[cfg(test)]`, so
//! other crates cannot use it; this one is written after pv-blk's.

pub mod fuzz;
pub mod virtio;
pub mod xen;
