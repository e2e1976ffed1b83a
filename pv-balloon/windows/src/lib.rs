//! The pvdrivers virtio-balloon driver for Windows: a WDM function driver
//! on the `pv-balloon` core and the `pv-windows` kernel runtime.
//!
//! The driver only translates between the kernel and the core; what it
//! decides is here, OS-independent and tested on the host:
//!
//! - [`kstats`]: the kernel's own memory figures
//!   (`ZwQuerySystemInformation`: basic and performance information) turned
//!   into virtio-balloon statistics, and the balloon's limits (guest memory,
//!   the floor it never takes) derived from them.
//! - [`step`]: one round of the balloon loop (poll, stats, inflate or
//!   deflate, reset after a device fault) over a [`step::Kernel`] that
//!   hands out pages and figures.
//!
//! The Windows part (`driver`, built for `target_os = "windows"` only):
//! `DriverEntry`, `AddDevice`, the PnP and power dispatch, the start that
//! maps the virtio PCI BARs and reads config space, the interrupt (ISR →
//! DPC → worker event), D0/D3 quiesce and rebuild, pages from
//! `MmAllocatePagesForMdlEx`, and the worker thread that runs [`step`].
//! See `README.md` beside this crate for what is implemented and what is
//! not.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;
#[cfg(test)]
extern crate std;

#[cfg(target_os = "windows")]
mod driver;
pub mod kstats;
pub mod step;
