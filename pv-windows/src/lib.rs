//! The Windows kernel runtime shared by the pvdrivers Windows drivers: the
//! Windows analogue of `pv-linux` (the Linux guest runtime).
//!
//! - [`ffi`]: our own bindings of the kernel surfaces the drivers use
//!   (`ntoskrnl.exe` and `hal.dll` today; StorPort and NDIS are added beside
//!   it by the drivers that need them). Every `repr(C)` type carries `const`
//!   size/offset asserts for x86-64 and names the WDK header it comes from;
//!   functions are imported with `raw-dylib` from the module that exports
//!   them, so no import library is needed to link.
//! - [`pci`]: PCI config space as a snapshot, with the BARs emulated from
//!   the resources Plug and Play assigned (a `virtio_drivers`
//!   [`ConfigurationAccess`](virtio_drivers::transport::pci::bus::ConfigurationAccess)),
//!   and the resource-list parser. Host-testable.
//! - `hal` (Windows only): [`virtio_drivers::Hal`] for the kernel: DMA
//!   memory from `MmAllocateContiguousMemorySpecifyCache`, addresses from
//!   `MmGetPhysicalAddress`, bounce buffers for pool memory that is not
//!   physically contiguous, MMIO through the BAR mappings the driver
//!   registered (`hal::register_mmio`).
//! - `logger` (Windows only): `log` records to `DbgPrintEx`.
//! - `runtime` (feature `runtime`, Windows only): the global allocator
//!   (`ExAllocatePool2(POOL_FLAG_NON_PAGED)` with the pool tag `PVdr`,
//!   `ExFreePoolWithTag`), the panic handler (`KeBugCheckEx` with
//!   [`BUGCHECK_PVDRIVERS`]) and `_fltused`.
//!
//! # Why not `wdk-sys` (windows-drivers-rs)
//!
//! `wdk-build` stops with `compile_error!` anywhere but Windows with the WDK
//! installed, and its maintainers do not ship pregenerated bindings, so a
//! driver on `wdk-sys` cannot be built, linted or emulated on the Linux
//! machines this project tests on. Its API subsets also have no NDIS (the
//! network driver needs it), and its Storage subset binds `storport.h`
//! without linking a library. This crate binds only what the drivers call,
//! checks every layout it declares with `const` asserts, and imports each
//! function from the kernel module that exports it (`raw-dylib`), which the
//! PE lint of the test command then checks against a curated export list
//! (`pv-windows/exports/`). On Windows CI the layouts are meant to be
//! diffed against `wdk-sys`' generated bindings; that step is not written,
//! and the Windows CI (`.github/workflows/windows.yml`) has never run.
//!
//! # Targets
//!
//! The FFI types, the PCI module and their tests build everywhere (the
//! asserts hold for any 64-bit little-endian target). Imports, the `Hal`
//! and the runtime exist only for `target_os = "windows"`; a driver builds
//! them with `-Zbuild-std=core,alloc` for `x86_64-pc-windows-msvc` (see
//! `docs/WINDOWS.md`).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod arena;
pub mod ffi;
#[cfg(target_os = "windows")]
pub mod hal;
#[cfg(target_os = "windows")]
pub mod logger;
pub mod ndis;
pub mod pci;
#[cfg(all(feature = "runtime", target_os = "windows"))]
mod runtime;
pub mod storport;

/// Bug-check code of a pvdrivers panic (`KeBugCheckEx` first argument): a
/// code in the range Microsoft leaves to drivers' own use is not
/// documented; we pick an unused value and say so. The four parameters are
/// the panic's source line, a pointer to its file name, the file name's
/// length and 0.
pub const BUGCHECK_PVDRIVERS: u32 = 0x5056_4452; // "PVDR"

/// Pool tag of every allocation the drivers make (`PVdr`, little-endian as
/// `poolmon` shows it).
pub const POOL_TAG: u32 = u32::from_le_bytes(*b"PVdr");
