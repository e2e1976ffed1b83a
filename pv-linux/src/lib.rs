//! Linux userspace plumbing shared by the pvdrivers guest runtimes
//! (`pv-blk/linux`, `pv-net/linux`, `pv-balloon/linux`).
//!
//! A guest runtime drives a virtio PCI device from a normal Linux process,
//! with the protocol logic in a `no_std` core (`pv-blk`, `pv-net`, ...), and
//! hands the result back to the guest kernel. This crate is the part every
//! such runtime needs, and nothing device-specific (a device's own kernel
//! interface lives in its runtime: NBD and ublk in `pv-blk/linux`, TAP in
//! `pv-net/linux`, pinned pages in `pv-balloon/linux`):
//!
//! - [`pci`]: find a PCI function in `/sys/bus/pci/devices` (by BDF or by
//!   vendor/device id), claim it from its kernel driver (`driver_override` +
//!   unbind), give it back on drop (clear `driver_override`,
//!   `drivers_probe`); config space through the sysfs `config` file as a
//!   `virtio_drivers` [`ConfigurationAccess`](virtio_drivers::transport::pci::bus::ConfigurationAccess);
//!   BARs mmapped from the sysfs `resourceN` files; bus mastering enabled.
//!   [`pci::PciDevice::virtio_transport`] gives a ready
//!   `virtio_drivers::transport::pci::PciTransport`.
//! - [`dma`]: [`dma::LinuxHal`], the `virtio_drivers::Hal` of this process:
//!   DMA memory from 2 MiB hugetlb pages (physically contiguous, locked),
//!   guest-physical addresses from `/proc/self/pagemap`, bounce buffers for
//!   memory outside the pool; [`dma::DmaBuf`] for data buffers that need no
//!   bounce.
//! - [`poll`]: [`poll::AdaptivePoller`], busy-poll then back off to sleeps,
//!   with a bounded CPU budget.
//! - [`logger`]: a minimal stderr logger for the daemons.
//! - [`signal`]: SIGTERM/SIGINT as a flag, and blocking them in helper
//!   threads.
//!
//! # Writing a runtime on it
//!
//! The order matters: the core (which owns the transport, whose pointers
//! are into the BAR mappings, and whose queues are in pool memory the device
//! writes) must be dropped — which resets the device — before the
//! [`pci::PciDevice`] gives the device back.
//!
//! ```no_run
//! use pv_linux::pci::{self, Binding, PciDevice};
//!
//! # fn main() -> Result<(), pv_linux::Error> {
//! pv_linux::logger::init("pvnetd", log::LevelFilter::Info);
//! pv_linux::signal::install()?;
//! pv_linux::dma::init(16, 1)?; // up to 16 hugepages, map one now
//! let addr = pci::find(pci::VIRTIO_VENDOR, &[0x1000, 0x1041])?
//!     .into_iter()
//!     .find(|i| i.driver_override.is_none())
//!     .map(|i| i.address)
//!     .ok_or_else(|| pv_linux::Error::NoDevice("virtio-net".into()))?;
//! let dev = PciDevice::claim_with(addr, Binding::UioPciGeneric)?;
//! let transport = dev.virtio_transport()?;
//! // Build the core on `transport` with `pv_linux::dma::LinuxHal` as its
//! // `Hal`; poll it with `pv_linux::poll::AdaptivePoller`, sleeping on
//! // `dev.irq()` when it is `Some`, until `signal::stop_requested()`.
//! drop(transport); // (the core, in a real runtime)
//! dev.release()?;
//! # Ok(())
//! # }
//! ```
//!
//! `pvballoond` (`pv-balloon/linux/src/device.rs`) is the worked example;
//! `pvio direct` (`pv-blk/linux/src/bin/pvio.rs`) the minimal one.
//!
//! # What it refuses
//!
//! - Devices behind an IOMMU: the DMA addresses handed to the device are
//!   guest-physical addresses (bus address = physical address), which is
//!   only right without an IOMMU. A device with an `iommu_group` is refused
//!   ([`Error::IommuPresent`]).
//! - Running without root (sysfs writes, pagemap PFNs, hugepages).
//!
//! Everything here is Linux-only and `std`.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod dma;
pub mod logger;
pub mod pci;
pub mod poll;
pub mod signal;

use std::path::PathBuf;

/// Errors of the Linux runtime plumbing. Each names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or sysfs attribute could not be read or written.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// The call and its purpose.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No PCI function matched.
    #[error("no PCI device matches {0}")]
    NoDevice(String),
    /// Every function of the kind asked for is claimed already (has a
    /// `driver_override`).
    #[error("no unclaimed {0} PCI device")]
    NoneUnclaimed(String),
    /// Claiming a PCI function from its kernel driver failed.
    #[error("claim {address}: {source}")]
    Claim {
        /// The function.
        address: pci::PciAddress,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// The user named a malformed PCI address.
    #[error("bad PCI address {0:?} (want DDDD:BB:DD.F or BB:DD.F)")]
    BadAddress(String),
    /// A sysfs file did not have the format the kernel documents.
    #[error("unexpected contents in {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The device sits behind an IOMMU: physical addresses are not bus
    /// addresses there, and this runtime does not program the IOMMU.
    #[error("PCI device {0} is in an IOMMU group; this runtime assumes bus address = physical address and refuses to run")]
    IommuPresent(String),
    /// Hugepages could not be had.
    #[error("hugepages: {0}")]
    Hugepages(String),
    /// The DMA pool is exhausted or the request is larger than one hugepage.
    #[error("DMA pool: cannot allocate {bytes} bytes (pool limit {limit_pages} hugepages)")]
    DmaExhausted {
        /// Bytes asked for.
        bytes: usize,
        /// Pool limit in 2 MiB pages.
        limit_pages: usize,
    },
    /// `/proc/self/pagemap` did not give a physical address (not root?).
    #[error("pagemap gave no physical address for {vaddr:#x} (need root / CAP_SYS_ADMIN)")]
    NoPhysAddr {
        /// The virtual address.
        vaddr: usize,
    },
    /// The virtio PCI transport refused the device.
    #[error("virtio PCI transport: {0}")]
    Virtio(#[from] virtio_drivers::transport::pci::VirtioPciError),
}

impl Error {
    /// `what` on the file `path` failed with `source`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// The system call `what` failed with `source`.
    pub fn sys(what: &'static str, source: std::io::Error) -> Self {
        Error::Sys { what, source }
    }

    /// The system call `what` just failed (`errno`).
    pub fn last_os(what: &'static str) -> Self {
        Self::sys(what, std::io::Error::last_os_error())
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
