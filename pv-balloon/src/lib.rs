//! Memory balloon core for pvdrivers.
//!
//! Transport-neutral protocol logic for virtio-balloon and the Xen balloon.
//! `no_std` + `alloc`. Nothing in here is written yet beyond the crate
//! itself; see the project's open issues.
#![no_std]

#[cfg(feature = "std")]
extern crate std;
