//! The error types of the block runtime (`pvblkd`) and of the guest I/O
//! tool (`pvio`), named after what failed.

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

/// Everything the guest I/O tool `pvio` can stop with (exit 2): the user
/// asked for something impossible, the OS refused a file operation, or the
/// device (claimed by `pvio direct`) failed.
#[derive(Debug, thiserror::Error)]
pub enum PvioError {
    /// The user gave `--direct` with a block size O_DIRECT cannot use.
    #[error("--direct needs a block size that is a multiple of 512, not {0}")]
    DirectBlockSize(usize),
    /// The user gave a read size O_DIRECT cannot use.
    #[error("block size {0} is not a multiple of 512")]
    BlockSize(usize),
    /// The user gave `pvio direct` a read size its DMA buffers cannot hold.
    #[error("block size {0}: want a multiple of 512 up to 2 MiB")]
    DmaBlockSize(usize),
    /// The user asked for more blocks than the device has.
    #[error("{} has {avail} blocks of {block_size} bytes after block {start}, {asked} asked", .path.display())]
    RangeTooLong {
        path: PathBuf,
        avail: u64,
        block_size: u64,
        start: u64,
        asked: u64,
    },
    /// The device or file holds not even one block of the size asked.
    #[error("{} is smaller than one block", .0.display())]
    SmallerThanOneBlock(PathBuf),
    /// The user asked for more requests in flight than the device's queue takes.
    #[error("qd {qd} above the queue depth {depth}")]
    QdAboveDepth { qd: u32, depth: u32 },
    /// Opening the device or file failed.
    #[error("open {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Finding the size of the device or file failed.
    #[error("size of {}: {source}", .path.display())]
    Size {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Seeking on the device or file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Writing a block failed.
    #[error("write block {block}: {source}")]
    Write { block: u64, source: std::io::Error },
    /// Reading a block failed.
    #[error("read block {block}: {source}")]
    Read { block: u64, source: std::io::Error },
    /// Reading at a byte offset failed.
    #[error("read at {offset}: {source}")]
    ReadAt { offset: u64, source: std::io::Error },
    /// The fsync after the writes failed.
    #[error("fsync {}: {source}", .path.display())]
    Fsync {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The kernel refused BLKZEROOUT.
    #[error("BLKZEROOUT {}: {source}", .path.display())]
    ZeroOut {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A block could not be stamped (its size is not a stamp's).
    #[error("{0}")]
    Stamp(pv_blk::pattern::StampError),
    /// A reader thread panicked.
    #[error("a reader thread panicked")]
    ReaderPanicked,
    /// The run ended without one completed read.
    #[error("no read completed")]
    NoReadCompleted,
    /// The shared Linux plumbing failed (PCI address, DMA memory, releasing
    /// the device, its transport).
    #[error(transparent)]
    Linux(#[from] pv_linux::Error),
    /// Claiming the PCI device failed.
    #[error("claim {addr}: {source}")]
    Claim {
        addr: pv_linux::pci::PciAddress,
        source: pv_linux::Error,
    },
    /// The block core refused to start on the device.
    #[error("virtio-blk init: {0}")]
    Init(BlkError),
    /// The core refused a request.
    #[error("submit: {0}")]
    Submit(BlkError),
    /// The device broke the protocol; the core stopped trusting it.
    #[error("device fault: {0}")]
    DeviceFault(BlkError),
    /// The device reports a capacity below one block.
    #[error("device smaller than one block")]
    DeviceTooSmall,
    /// The device left requests unanswered past the drain deadline.
    #[error("{0} requests never completed")]
    NeverCompleted(usize),
    /// The device failed reads.
    #[error("{0} reads failed")]
    ReadsFailed(u64),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
