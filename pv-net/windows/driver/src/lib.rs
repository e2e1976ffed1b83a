//! The pvdrivers virtio-net driver for Windows: an NDIS 6.0 miniport on
//! the `pv-net` core and the `pv-windows` kernel runtime.
//!
//! It only translates: OID answers, send and receive decisions are
//! `pv-net-windows`' (host-tested); the virtio-net protocol is `pv-net`'s
//! `VirtioNet` on virtio-drivers' PCI transport. The Windows part
//! (`driver`, `target_os = "windows"` only): `DriverEntry` →
//! `NdisMRegisterMiniportDriver`; `MiniportInitializeEx` (config space
//! with `NdisMGetBusData`, BARs from the allocated resources mapped with
//! `NdisMMapIoSpace`, device bring-up, receive NBL pool, attributes, a
//! line interrupt with `NdisMRegisterInterruptEx` whose DPC does receive
//! and transmit completion); Halt, Pause, Restart, SendNetBufferLists,
//! ReturnNetBufferLists, OidRequest, Reset, Shutdown, DevicePnPEvent,
//! CancelSend, CancelOidRequest. See docs/WINDOWS.md for what is emulated
//! and what has never run on Windows.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "windows")]
extern crate alloc;

#[cfg(target_os = "windows")]
mod driver;
