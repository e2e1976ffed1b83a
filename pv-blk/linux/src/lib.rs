//! The pv-blk Linux guest runtime (`pvblkd`) and guest I/O tool (`pvio`).
//!
//! `pvblkd` claims a virtio-blk PCI device from the kernel, drives it from
//! userspace with the pv-blk core (`pv_blk::virtio`), and exports it back
//! to the guest kernel, so guest filesystems and tools work unchanged: as
//! `/dev/ublkbN` through the kernel's ublk driver where the kernel has it
//! (io_uring commands, no socket hop: [`ublk::server`]), else as
//! `/dev/nbdN` through the kernel NBD driver over a socketpair
//! ([`nbd::server`]); `--export` picks.
//!
//! # Layout
//!
//! The same file roles as the other runtimes (`pv-net/linux`,
//! `pv-balloon/linux`): [`config`] (the command line), [`device`] (claim
//! the PCI function, start the core, hand it back), [`server`] (the
//! serving loop both exports share), [`error`]; and this device's own
//! kernel interfaces: [`nbd`] and [`ublk`] (the kernel side, the wire
//! codecs, host-testable and fuzzed in `fuzz/`, and each export's half of
//! the server); and [`pvio`], the guest I/O tool's commands. The binaries
//! in `src/bin/` are thin: parse, log, run.
//!
//! # How it runs
//!
//! One thread serves everything: requests from the kernel become device
//! requests on the core's queue, up to its depth, and are answered when
//! they complete. Completions are found by adaptive polling
//! (`pv_linux::poll`): spin for `--spin-us` after the last work, then
//! sleep with the sleep doubling from `--min-sleep-us` to
//! `--max-sleep-us`. By default (`--irq intx`) the device is bound to
//! `uio_pci_generic` while we hold it, and a sleep also ends on the
//! device's INTx interrupt (`/dev/uioN`, armed after `prepare_wait` asks
//! the device for an interrupt at the next completion); new requests from
//! the kernel end it too. When uio is missing (or `--irq off`) sleeps are
//! timed only. With nothing in flight the thread blocks on the kernel side.
//!
//! # Failure handling
//!
//! A device the core stops trusting (bad completion, index overrun) is
//! reset: requests in flight fail with EIO to the kernel and service goes
//! on. A reset that fails, or a broken request stream from the kernel, ends
//! the daemon (exit 1) after giving the device back.
//!
//! # Stopping
//!
//! SIGTERM/SIGINT: the export is taken down (NBD: `NBD_DISCONNECT`, the
//! kernel sends its disconnect after the requests already sent; ublk:
//! STOP_DEV, then DEL_DEV), every request in flight is finished, the
//! device cache flushed, the device reset and handed back to the kernel
//! driver (`drivers_probe`: `virtio-pci`, then `virtio_blk`, and `/dev/vdX`
//! reappears). Exit 0.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod device;
pub mod error;
pub mod nbd;
pub mod pvio;
pub mod server;
pub mod ublk;
pub mod xen;

pub use config::Cli;
pub use device::run;
pub use error::{Error, Result};
