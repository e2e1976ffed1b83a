//! The one error type of the balloon runtime, named after what failed.

use pv_balloon::BalloonError;

/// Errors of the Linux runtime, named after what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The PCI or DMA plumbing failed (claim, BARs, hugepages).
    #[error(transparent)]
    Linux(#[from] pv_linux::Error),
    /// The balloon core failed (device fault, set-up refused).
    #[error("virtio-balloon: {0}")]
    Balloon(BalloonError),
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
    /// The PCI function's vendor and device ID name no virtio device.
    #[error("PCI function {vendor:04x}:{device:04x} is not a virtio device")]
    NotVirtio {
        /// PCI vendor ID.
        vendor: u16,
        /// PCI device ID.
        device: u16,
    },
    /// A kernel file did not have the documented format.
    #[error("{0}: unexpected contents")]
    Parse(&'static str),
}

impl Error {
    pub(crate) fn last_os(what: &'static str) -> Self {
        Self::Sys(what, std::io::Error::last_os_error())
    }
}

impl From<BalloonError> for Error {
    fn from(e: BalloonError) -> Self {
        Self::Balloon(e)
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
