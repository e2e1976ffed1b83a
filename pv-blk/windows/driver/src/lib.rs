//! The pvdrivers virtio-blk StorPort miniport for Windows (`pvblk.sys`).
//!
//! Every SCSI and SRB decision is made in `pv-blk-windows` (host-tested
//! and fuzzed); the block protocol is the `pv-blk` core's virtio-blk
//! frontend on virtio-drivers' PCI transport. This crate only translates:
//!
//! - [`translate`]: a `SCSI_REQUEST_BLOCK` into the plain types of
//!   `pv-blk-windows` and a completion back into the SRB. Host-tested.
//! - `driver` (built for `target_os = "windows"` only): `DriverEntry` →
//!   `StorPortInitialize`, `HwFindAdapter` (PCI config space, the virtio
//!   capabilities, BARs through `StorPortGetDeviceBase`), `HwInitialize`
//!   (bring-up at `PASSIVE_LEVEL` through
//!   `StorPortEnablePassiveInitialization`), `HwStartIo`, `HwInterrupt`
//!   and polled completion, `HwResetBus` (device reset before the SRBs
//!   come back), `HwAdapterControl` (stop/restart), crash-dump mode
//!   (everything from the dump region, polled).
//! - `hal` (Windows only): the kernel `Hal`, or in dump mode DMA pages
//!   from the dump region and buffers shared in place.
//!
//! See `README.md` beside `pv-blk-windows` for what is implemented and
//! what is not, and docs/WINDOWS.md for what was emulated.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(test)]
extern crate std;

#[cfg(target_os = "windows")]
mod driver;
#[cfg(target_os = "windows")]
mod hal;
pub mod translate;
