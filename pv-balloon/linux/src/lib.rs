//! The Linux guest runtime (`pvballoond`): the balloon core driving QEMU's
//! virtio-balloon PCI device from a normal root process, through
//! `pv-linux` (PCI claim, sysfs BARs and config space, DMA memory for the
//! queues).
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
//!   [`Event::Released`](crate::Event::Released) and are `munmap`ped.
//! - **Stats**: every standard tag, from `/proc/meminfo` and `/proc/vmstat`
//!   ([`procfs::mem_stats`]), whenever the device asks.
//! - **Free-memory floor**: never inflates while `MemAvailable` would fall
//!   below the floor plus a margin (`--floor-mib`, default the larger of
//!   64 MiB and 5 % of `MemTotal`; margin half the floor). Below the floor
//!   (or with PSI `full avg10` above `--psi-full-pct`, where the kernel
//!   exposes `/proc/pressure/memory`) it deflates under `DEFLATE_ON_OOM`
//!   ([`VirtioBalloon::oom_deflate`](crate::VirtioBalloon::oom_deflate))
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

//!
//! The `/proc` parsers ([`procfs`]) need only the `std` feature (host tests
//! and the fuzz target use them); the rest needs `linux`.

#[cfg(feature = "linux")]
pub mod daemon;
#[cfg(feature = "linux")]
pub mod pages;
pub mod procfs;

/// Errors of the Linux runtime, named after what failed.
#[cfg(feature = "linux")]
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The PCI or DMA plumbing failed (claim, BARs, hugepages).
    #[error(transparent)]
    Linux(#[from] pv_linux::Error),
    /// The balloon core failed (device fault, set-up refused).
    #[error("virtio-balloon: {0}")]
    Balloon(crate::BalloonError),
    /// A file under /proc or /sys could not be read or written.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    /// A system call failed.
    #[error("{0}: {1}")]
    Sys(&'static str, #[source] std::io::Error),
    /// pagemap gave no frame for a page: not present (an
    /// `mmap(MAP_POPULATE)` that could not fault everything in) or hidden
    /// (not root).
    #[error(
        "no page frame for {vaddr:#x} in /proc/self/pagemap (not faulted in, or not root / \
         CAP_SYS_ADMIN)"
    )]
    NoFrame {
        /// The page's address in this process.
        vaddr: usize,
    },
    /// No virtio-balloon PCI function is free to claim.
    #[error("no unclaimed virtio-balloon PCI device")]
    NoDevice,
    /// A kernel file did not have the documented format.
    #[error("{0}: unexpected contents")]
    Parse(&'static str),
}

#[cfg(feature = "linux")]
impl RuntimeError {
    pub(crate) fn last_os(what: &'static str) -> Self {
        Self::Sys(what, std::io::Error::last_os_error())
    }
}

#[cfg(feature = "linux")]
impl From<crate::BalloonError> for RuntimeError {
    fn from(e: crate::BalloonError) -> Self {
        Self::Balloon(e)
    }
}
