//! The one error type of the network core. Variants are named after who did
//! what wrong; callers decide with [`NetError::is_device_fault`] and
//! [`NetError::needs_reset`]. Per-packet device faults (a bad header, a bad
//! length) are not errors: the packet is dropped and counted in
//! [`Stats`](crate::Stats).

use core::fmt;

use pv_virtq::VirtqError;
use xenbus::platform::PlatformError;
use xenbus::ring::RingError;

/// Everything a network frontend can fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    // ---- the caller asked for something impossible ----
    /// Caller: a frame longer than the MTU allows (plus the Ethernet and
    /// VLAN headers).
    FrameTooLong {
        /// Frame length.
        len: usize,
        /// Most bytes a frame may have.
        max: usize,
    },
    /// Caller: a frame shorter than an Ethernet header.
    FrameTooShort {
        /// Frame length.
        len: usize,
    },
    /// Caller: a checksum request whose field lies outside the frame.
    BadChecksumRequest,
    /// Caller: the device did not offer what was asked (e.g. a control
    /// command without the control queue).
    Unsupported,
    /// Local: every transmit slot is in use; poll TX completions and retry.
    TxFull,
    /// Local: a control command is still in flight.
    CtrlBusy,
    /// Local: the frontend is stopped after a device fault; call `reset`.
    Stopped,
    /// Local: the platform (grants, event channels, pages) refused.
    Platform(PlatformError),
    /// Local: the virtio transport or DMA refused during set-up.
    Transport,

    // ---- the device broke the protocol or refused ----
    /// Device: the virtqueue was broken (unknown or duplicate used id,
    /// used index run ahead).
    Queue(VirtqError),
    /// Device: the shared ring was broken by the backend (response producer
    /// run ahead, unknown or duplicate tx id).
    Ring(RingError),
    /// Device: the device rejected our features, did not come out of reset,
    /// flagged `DEVICE_NEEDS_RESET`, or offers nothing usable (a Xen backend
    /// without `feature-rx-copy`).
    DeviceFailed,
    /// Device: a control command was answered with an error (or not at all
    /// within the polling bound).
    CtrlFailed,
}

impl NetError {
    /// True when the device (or backend) is at fault.
    pub fn is_device_fault(&self) -> bool {
        match self {
            Self::Queue(e) => e.is_device_fault(),
            Self::Ring(e) => e.is_peer_fault(),
            Self::Platform(e) => e.is_peer_fault(),
            Self::DeviceFailed | Self::CtrlFailed => true,
            _ => false,
        }
    }

    /// True when the error stopped the frontend: nothing more is accepted
    /// until `reset`.
    pub fn needs_reset(&self) -> bool {
        matches!(
            self,
            Self::Queue(_) | Self::Ring(_) | Self::DeviceFailed | Self::Stopped
        )
    }
}

impl From<PlatformError> for NetError {
    fn from(e: PlatformError) -> Self {
        Self::Platform(e)
    }
}

impl From<RingError> for NetError {
    fn from(e: RingError) -> Self {
        match e {
            RingError::Full | RingError::IdsExhausted => Self::TxFull,
            e => Self::Ring(e),
        }
    }
}

impl From<VirtqError> for NetError {
    fn from(e: VirtqError) -> Self {
        match e {
            VirtqError::Full => Self::TxFull,
            VirtqError::BadSize | VirtqError::DmaExhausted => Self::Transport,
            e => Self::Queue(e),
        }
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FrameTooLong { len, max } => {
                write!(f, "frame of {len} bytes; at most {max} fit the MTU")
            }
            Self::FrameTooShort { len } => {
                write!(f, "frame of {len} bytes is shorter than an Ethernet header")
            }
            Self::BadChecksumRequest => f.write_str("checksum offload field outside the frame"),
            Self::Unsupported => f.write_str("the device does not offer this"),
            Self::TxFull => f.write_str("transmit queue full: poll TX completions first"),
            Self::CtrlBusy => f.write_str("a control command is still in flight"),
            Self::Stopped => f.write_str("frontend stopped after a device fault: reset it"),
            Self::Platform(e) => write!(f, "platform: {e}"),
            Self::Transport => f.write_str("virtio transport or DMA refused the set-up"),
            Self::Queue(e) => write!(f, "virtqueue: {e}"),
            Self::Ring(e) => write!(f, "ring: {e}"),
            Self::DeviceFailed => f.write_str(
                "device refused the features, failed its reset, needs a reset, or lacks rx-copy",
            ),
            Self::CtrlFailed => f.write_str("device failed a control command"),
        }
    }
}
