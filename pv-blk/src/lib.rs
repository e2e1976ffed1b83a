//! Block frontend core for pvdrivers.
//!
//! Transport-neutral protocol logic for a paravirtual disk over virtio-blk
//! queues and Xen blkif rings. `no_std` + `alloc`: the same code serves the
//! Linux guest runtime and the Windows StorPort glue; the OS glue only
//! provides DMA ([`virtio_drivers::Hal`]), a transport, or the Xen platform
//! traits, and calls [`BlockFrontend`].
//!
//! # What it is for and what it refuses
//!
//! - A queue of outstanding requests up to the ring size, each named by a
//!   [`Token`], completed in whatever order the device chooses.
//! - Read, write, flush, discard, write-zeroes and get-id, checked against
//!   the device's geometry and features before anything reaches the device
//!   (caller mistakes are [`BlkError`] variants the caller is blamed for).
//! - The device is untrusted. Every completion is copied once and validated:
//!   unknown or duplicate ids, used lengths the request cannot have, status
//!   values outside the spec, used/response indices that run ahead of what
//!   was submitted. A bad completion fails its request or stops the
//!   frontend until [`BlockFrontend::reset`]; it never panics, never hands a
//!   buffer back while the device may still use it, and never loops.
//!
//! Modules: [`frontend`] (the API), [`virtio`] (virtio-blk on `pv-virtq`
//! and `virtio-drivers` transports), [`xen`] (blkif on `xenbus` rings and
//! grants), [`pattern`] (block stamps for the guest I/O tool), and behind
//! `test-utils` the fakes of the other side (`testing`).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod error;
pub mod frontend;
pub mod pattern;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod virtio;
pub mod xen;

pub use error::BlkError;
pub use frontend::{
    BlockFrontend, DeviceInfo, Features, IoBuf, Op, OpKind, Request, Stats, Token, ID_BYTES,
    SECTOR_SIZE,
};
