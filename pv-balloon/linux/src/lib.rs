//! The pv-balloon Linux guest runtime (`pvballoond`): the balloon core
//! driving QEMU's virtio-balloon PCI device from a normal root process,
//! through `pv-linux` (PCI claim, sysfs BARs and config space, DMA memory
//! for the queues); and `pvmemhog`, the memory-pressure load of its tests.
//!
//! # Layout
//!
//! The same file roles as the other runtimes (`pv-blk/linux`,
//! `pv-net/linux`): [`config`] (the command line), [`device`] (claim the
//! PCI function and drive the core until stopped), [`error`]; and this
//! device's own kernel interfaces: [`pages`] (pinned anonymous memory and
//! its page frames) and [`procfs`] (the `/proc` parsers, host-testable and
//! fuzzed in `fuzz/`). The binaries in `src/bin/` are thin: parse, log,
//! run.
//!
//! # What it does
//!
//! - **Inflate**: allocates anonymous memory in chunks of up to 16 MiB,
//!   faulted in and locked by one `mmap(MAP_POPULATE | MAP_LOCKED)` each
//!   with transparent huge pages off for the daemon (or with `--huge-pages`
//!   transparent huge pages where that is safe; see [`pages`]), reads the
//!   page frames from `/proc/self/pagemap` and hands them to the core
//!   (`pages`); the memory is never touched again while the balloon holds
//!   it. `vm.compact_unevictable_allowed` is 0 while the daemon runs
//!   (restored on exit), so compaction does not migrate the pinned pages.
//! - **Deflate**: the core tells the device first; the pages come back as
//!   [`Event::Released`](pv_balloon::Event::Released) and are `munmap`ped.
//! - **Stats**: every standard tag, from `/proc/meminfo` and `/proc/vmstat`
//!   ([`procfs::mem_stats`]), whenever the device asks.
//! - **Free-memory floor**: never inflates while `MemAvailable` would fall
//!   below the floor plus a margin (`--floor-mib`, default the larger of
//!   64 MiB and 5 % of `MemTotal`; margin half the floor). Below the floor
//!   (or with PSI `full avg10` above `--psi-full-pct`, where the kernel
//!   exposes `/proc/pressure/memory`) it deflates under `DEFLATE_ON_OOM`
//!   ([`VirtioBalloon::oom_deflate`](pv_balloon::VirtioBalloon::oom_deflate))
//!   and holds inflation off until `MemAvailable` is back above floor plus
//!   margin. Without `DEFLATE_ON_OOM` (QEMU's `deflate-on-oom=off`, its
//!   default) the spec does not let the driver take pages back below the
//!   host's target: the daemon then only stops inflating and logs it.
//! - **SIGTERM/SIGINT**: deflates everything, resets the device and hands
//!   it back to the kernel (`virtio-pci`, then `virtio_balloon`), exit 0.
//!
//! # What a userspace runtime cannot do
//!
//! - **Free page reporting** (`PAGE_REPORTING`) is refused: it reports
//!   ranges that are free in the kernel's page allocator, which only kernel
//!   code can see and hold still (the Windows driver, a kernel module).
//! - It takes whole pages from the kernel as a process would, so
//!   `MemTotal` does not shrink (the kernel driver lowers it); the balloon
//!   shows as `Mlocked` and `Unevictable` memory instead, and `MemAvailable`
//!   drops by its size.
//! - Interrupts only through `uio_pci_generic` (`--irq intx`, the
//!   default): the device is bound to it and the idle daemon sleeps on its
//!   INTx (config change: a new target; a used stats buffer: a stats
//!   request), still waking every `--interval-ms` at the latest for the
//!   floor and PSI (and because INTx wake-ups under TCG can come late).
//!   Without the module (or with `--irq off`) the target is polled every
//!   `--interval-ms` when idle; INTx stays disabled in the command
//!   register. While moving the daemon does not sleep either way.
//! - The OOM killer does not know the balloon is elastic: the daemon has to
//!   deflate before the kernel runs out, which the floor's margin is for.
//!   Its own memory is small and its pages are locked, and the kernel may
//!   still pick it under extreme pressure (its exit then gives every
//!   balloon page back at once).
//! - Devices behind an IOMMU are refused (see `pv-linux`).

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod device;
pub mod error;
pub mod pages;
pub mod procfs;

pub use config::Cli;
pub use device::run;
pub use error::{Error, Result};
