//! Fakes of the other side, for tests and fuzz targets (`test-utils`).

pub mod fuzz;
pub mod virtio;
pub mod xen;
