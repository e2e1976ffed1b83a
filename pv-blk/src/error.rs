//! The one error type of the block core. Variants are named after who did
//! what wrong; callers decide with [`BlkError::is_device_fault`] and
//! [`BlkError::needs_reset`].

use core::fmt;

use pv_virtq::VirtqError;
use xenbus::platform::PlatformError;
use xenbus::ring::RingError;

use crate::frontend::OpKind;

/// Everything a block frontend can fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkError {
    // ---- the caller asked for something impossible ----
    /// Caller: a write, discard or write-zeroes on a read-only device.
    ReadOnly,
    /// Caller: the request reaches past the end of the disk.
    OutOfRange {
        /// First 512-byte sector of the request.
        sector: u64,
        /// Length in 512-byte sectors.
        sectors: u64,
        /// Disk size in 512-byte sectors.
        capacity: u64,
    },
    /// Caller: a buffer is empty, misaligned, not a whole number of sectors,
    /// or the buffers do not fit the operation (e.g. data on a flush).
    BadBuffer,
    /// Caller: more segments than the transport can carry in one request.
    TooManySegments {
        /// Segments the request needs.
        needed: usize,
        /// Segments the transport allows.
        max: usize,
    },
    /// Caller: the device did not offer this operation (check
    /// [`Features`](crate::Features) first).
    Unsupported(OpKind),
    /// Local: every slot is in flight; poll completions and retry.
    QueueFull,
    /// Local: the frontend is stopped after a device fault (see
    /// [`BlkError::needs_reset`]); call `reset`.
    Stopped,
    /// Local: the request was in flight when the frontend was reset; it may
    /// or may not have reached the disk.
    Aborted,
    /// Local: the platform (DMA, grants, event channels) refused.
    Platform(PlatformError),
    /// Local: the virtio transport refused during set-up.
    Transport,

    // ---- the device reported a failure (protocol kept) ----
    /// Device: the request failed (`VIRTIO_BLK_S_IOERR`, `BLKIF_RSP_ERROR`).
    IoError,
    /// Device: the device refused an operation it may refuse
    /// (`VIRTIO_BLK_S_UNSUPP`, `BLKIF_RSP_EOPNOTSUPP`).
    DeviceUnsupported(OpKind),

    // ---- the device broke the protocol ----
    /// Device: a completion names a request that was never issued.
    UnknownCompletion {
        /// The id or descriptor index the device wrote.
        id: u64,
    },
    /// Device: a completion names a request that was already completed.
    DuplicateCompletion {
        /// The id or descriptor index the device wrote.
        id: u64,
    },
    /// Device: the used length is impossible for the request (more than the
    /// device-writable bytes, or short of a successful read).
    BadLength {
        /// Length the device reported.
        len: u32,
        /// Device-writable bytes of the request.
        writable: u32,
    },
    /// Device: a status value outside the spec.
    BadStatus {
        /// The status the device wrote (virtio: a byte; Xen: an `i16`).
        status: i32,
    },
    /// Device: a response's operation differs from its request's.
    OperationMismatch {
        /// Operation sent.
        sent: u8,
        /// Operation the backend echoed.
        got: u8,
    },
    /// Device: the used (response) index runs ahead of what was submitted.
    IndexOverrun {
        /// Completions the device claims.
        claimed: u32,
        /// Requests outstanding.
        outstanding: u32,
    },
    /// Device: the shared ring was broken by the backend.
    Ring(RingError),
    /// Device: the backend still maps a grant after answering the request.
    GrantStillMapped,
    /// Device: the device did not accept the features we set, did not come
    /// out of reset, or flagged `DEVICE_NEEDS_RESET`.
    DeviceFailed,
}

impl BlkError {
    /// True when the device (or backend) is at fault: it reported a failure
    /// or broke the protocol. False when the caller or the local platform is.
    pub fn is_device_fault(&self) -> bool {
        matches!(
            self,
            Self::IoError
                | Self::DeviceUnsupported(_)
                | Self::UnknownCompletion { .. }
                | Self::DuplicateCompletion { .. }
                | Self::BadLength { .. }
                | Self::BadStatus { .. }
                | Self::OperationMismatch { .. }
                | Self::IndexOverrun { .. }
                | Self::GrantStillMapped
                | Self::DeviceFailed
        ) || matches!(self, Self::Ring(e) if e.is_peer_fault())
    }

    /// True when the error stopped the frontend: nothing more is accepted
    /// until `reset` (the device can no longer be trusted to have left the
    /// rings consistent).
    pub fn needs_reset(&self) -> bool {
        matches!(
            self,
            Self::UnknownCompletion { .. }
                | Self::DuplicateCompletion { .. }
                | Self::IndexOverrun { .. }
                | Self::Ring(_)
                | Self::GrantStillMapped
                | Self::DeviceFailed
                | Self::Stopped
        )
    }
}

impl From<PlatformError> for BlkError {
    fn from(e: PlatformError) -> Self {
        Self::Platform(e)
    }
}

impl From<RingError> for BlkError {
    fn from(e: RingError) -> Self {
        match e {
            RingError::Full | RingError::IdsExhausted => Self::QueueFull,
            RingError::UnknownResponseId { id } => Self::UnknownCompletion { id },
            RingError::DuplicateResponseId { id } => Self::DuplicateCompletion { id },
            e => Self::Ring(e),
        }
    }
}

impl From<VirtqError> for BlkError {
    fn from(e: VirtqError) -> Self {
        match e {
            VirtqError::BadSize | VirtqError::DmaExhausted => Self::Transport,
            VirtqError::TooManyParts { needed, max } => Self::TooManySegments { needed, max },
            VirtqError::BadBuffer => Self::BadBuffer,
            VirtqError::Full => Self::QueueFull,
            VirtqError::UnknownId { id } => Self::UnknownCompletion { id: u64::from(id) },
            VirtqError::DuplicateId { id } => Self::DuplicateCompletion { id: u64::from(id) },
            VirtqError::IndexOverrun { claimed, in_flight } => Self::IndexOverrun {
                claimed: u32::from(claimed),
                outstanding: u32::from(in_flight),
            },
            VirtqError::BadLength { len, writable } => Self::BadLength { len, writable },
        }
    }
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReadOnly => f.write_str("the device is read-only"),
            Self::OutOfRange {
                sector,
                sectors,
                capacity,
            } => write!(
                f,
                "request of {sectors} sectors at {sector} reaches past the disk end ({capacity} sectors)"
            ),
            Self::BadBuffer => f.write_str(
                "buffer empty, misaligned, not whole sectors, or wrong for the operation",
            ),
            Self::TooManySegments { needed, max } => {
                write!(f, "request needs {needed} segments; at most {max} fit")
            }
            Self::Unsupported(op) => write!(f, "the device does not offer {op}"),
            Self::QueueFull => f.write_str("queue full: poll completions first"),
            Self::Stopped => f.write_str("frontend stopped after a device fault: reset it"),
            Self::Aborted => f.write_str("request aborted by a reset"),
            Self::Platform(e) => write!(f, "platform: {e}"),
            Self::Transport => f.write_str("virtio transport refused the set-up"),
            Self::IoError => f.write_str("device reported an I/O error"),
            Self::DeviceUnsupported(op) => write!(f, "device refused {op} as unsupported"),
            Self::UnknownCompletion { id } => {
                write!(f, "device completed id {id:#x}, which was never issued")
            }
            Self::DuplicateCompletion { id } => {
                write!(f, "device completed id {id:#x} twice")
            }
            Self::BadLength { len, writable } => write!(
                f,
                "device reported {len} bytes used for a request with {writable} writable bytes"
            ),
            Self::BadStatus { status } => write!(f, "device wrote status {status}, outside the spec"),
            Self::OperationMismatch { sent, got } => {
                write!(f, "backend answered operation {sent} as operation {got}")
            }
            Self::IndexOverrun {
                claimed,
                outstanding,
            } => write!(
                f,
                "device claims {claimed} completions with {outstanding} requests outstanding"
            ),
            Self::Ring(e) => write!(f, "ring: {e}"),
            Self::GrantStillMapped => {
                f.write_str("backend still maps a grant of a request it answered")
            }
            Self::DeviceFailed => {
                f.write_str("device refused the features, failed its reset, or needs a reset")
            }
        }
    }
}
