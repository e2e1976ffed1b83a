//! Network frontend core for pvdrivers.
//!
//! Transport-neutral protocol logic for a paravirtual NIC, over virtio-net
//! queues and Xen netif rings. `no_std` + `alloc`: the same code serves the
//! Linux guest runtime and the Windows NDIS glue. Nothing in here is written
//! yet beyond the crate itself; see the project's open issues.
#![no_std]

#[cfg(feature = "std")]
extern crate std;
