//! The one error type of the block runtime, named after what failed.

use std::path::PathBuf;

use pv_blk::BlkError;

use crate::nbd::wire::WireError;

/// Everything `pvblkd` can stop with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared Linux plumbing failed (claiming the device, sysfs, BARs,
    /// DMA memory, signals, the device's interrupt).
    #[error(transparent)]
    Linux(#[from] pv_linux::Error),
    /// The user asked for a CPU outside the kernel's CPU set.
    #[error("--cpu {0}: above the CPU set size")]
    CpuOutOfRange(usize),
    /// The NBD kernel driver refused something.
    #[error("nbd: {0}")]
    Nbd(String),
    /// The kernel's NBD client sent a request stream out of spec.
    #[error("NBD stream: {0}")]
    NbdStream(#[source] WireError),
    /// A ublk control command's helper thread panicked.
    #[error("ublk {0} thread panicked")]
    ControlPanicked(&'static str),
    /// The block core refused to start on the device.
    #[error("virtio-blk init: {0}")]
    Init(BlkError),
    /// The device faulted and resetting it failed too.
    #[error("device reset failed: {0}")]
    Reset(BlkError),
    /// The flush before giving the device back failed.
    #[error("final flush: {0}")]
    Flush(BlkError),
    /// The device did not answer the final flush.
    #[error("final flush: no answer within 60 s")]
    FlushTimeout,
}

/// The kernel-side plumbing of the exports fails like the shared one
/// does: an OS error on a file or a system call.
impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        pv_linux::Error::io(what, path, source).into()
    }

    pub(crate) fn sys(what: &'static str, source: std::io::Error) -> Self {
        pv_linux::Error::sys(what, source).into()
    }

    pub(crate) fn last_os(what: &'static str) -> Self {
        pv_linux::Error::last_os(what).into()
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
