//! Block frontend core for pvdrivers.
//!
//! Transport-neutral protocol logic for a paravirtual disk over virtio-blk
//! queues and Xen blkif rings. `no_std` + `alloc`: the same code serves the
//! Linux guest runtime and the Windows StorPort glue. So far it holds the
//! block stamp format ([`pattern`]) shared by the guest I/O tool and the
//! host-side checks; the frontend itself arrives with its issue.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub mod pattern;
