//! The one error type of the balloon core. Variants are named after who did
//! what wrong; callers decide with [`BalloonError::is_device_fault`],
//! [`BalloonError::is_caller_fault`] and [`BalloonError::needs_reset`].

use core::fmt;

use xenbus::platform::PlatformError;

/// Everything the balloon core can fail with or warn about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalloonError {
    // ---- the OS glue asked for something impossible ----
    /// Caller: the [`Limits`](crate::Limits) make no sense (page size not a
    /// power of two between 4 KiB and 1 MiB, floor above guest memory).
    BadLimits,
    /// Caller: a page is not aligned to the guest page size, or (virtio) its
    /// frame numbers do not fit the protocol's 32 bits.
    BadPage {
        /// Guest-physical address of the page.
        addr: u64,
    },
    /// Caller: more pages (or ranges) than one buffer carries.
    TooManyPages {
        /// Pages given.
        given: usize,
        /// Most one buffer takes.
        max: usize,
    },
    /// Caller: the inflate would take the guest below its floor.
    BeyondFloor {
        /// Balloon size in 4 KiB frames the inflate would reach.
        would_be: u64,
        /// Largest balloon the floor allows.
        max: u64,
    },
    /// Caller: the device handed over is not the traditional memory balloon
    /// (virtio device ID 5); ID 13, which virtio-drivers' transport decodes
    /// as a balloon too, has no interface in the spec. Nothing was touched.
    NotTraditionalBalloon {
        /// The virtio device ID the glue read from the bus.
        id: u32,
    },
    /// Caller: the queue already has its one buffer outstanding; poll first.
    Busy,
    /// Caller: the device did not negotiate the feature this call needs.
    NotNegotiated,
    /// Caller: stats were supplied while the device holds the stats buffer
    /// (it did not ask for fresh ones).
    StatsNotRequested,
    /// Caller: a free-page range is empty or not whole 4 KiB frames.
    BadRange,
    /// Local: the balloon stopped after a device fault; call `reset`.
    Stopped,
    /// Local: the virtio transport refused during set-up (queue too small,
    /// config space too small).
    Transport,
    /// Local: the Xen platform refused a reservation change.
    Platform(PlatformError),
    /// Local or peer: a xenstore operation failed (`peer` tells whether the
    /// daemon broke the protocol).
    Xenstore {
        /// The daemon (or the node's writer) is at fault.
        peer: bool,
    },

    // ---- the device or host broke the protocol ----
    /// Device: a queue completed a buffer while none was outstanding (a
    /// stats request out of turn, a used index run ahead).
    UnexpectedCompletion {
        /// Queue index.
        queue: u16,
    },
    /// Device: the used element names a buffer that was never posted.
    WrongCompletion {
        /// Queue index.
        queue: u16,
    },
    /// Device: a used length for a buffer the device may only read (must be
    /// 0). The buffer is taken back regardless; warning only.
    BadLength {
        /// Queue index.
        queue: u16,
        /// Length the device wrote.
        len: u32,
    },
    /// Device or host: a target larger than the guest's memory. Clamped;
    /// warning only.
    TargetBeyondMemory {
        /// Requested balloon size (virtio) or memory size (Xen), 4 KiB
        /// frames.
        requested: u64,
        /// Guest memory in 4 KiB frames.
        guest: u64,
    },
    /// Host: `memory/target` is not a decimal number of KiB.
    BadTarget,
    /// Hypervisor: a reservation call claims more frames than asked for.
    ReservationOverrun {
        /// Frames asked for.
        asked: usize,
        /// Frames claimed done.
        done: usize,
    },
    /// Device: config space never held still across a generation check.
    ConfigUnstable,
    /// Device: refused the features, did not come out of reset, or flagged
    /// `DEVICE_NEEDS_RESET`.
    DeviceFailed,
}

impl BalloonError {
    /// True when the device, host or hypervisor is at fault.
    pub fn is_device_fault(&self) -> bool {
        matches!(
            self,
            Self::UnexpectedCompletion { .. }
                | Self::WrongCompletion { .. }
                | Self::BadLength { .. }
                | Self::TargetBeyondMemory { .. }
                | Self::BadTarget
                | Self::ReservationOverrun { .. }
                | Self::ConfigUnstable
                | Self::DeviceFailed
                | Self::Xenstore { peer: true }
        ) || matches!(self, Self::Platform(e) if e.is_peer_fault())
    }

    /// True when the OS glue called wrongly (nothing was changed).
    pub fn is_caller_fault(&self) -> bool {
        matches!(
            self,
            Self::BadLimits
                | Self::BadPage { .. }
                | Self::TooManyPages { .. }
                | Self::BeyondFloor { .. }
                | Self::NotTraditionalBalloon { .. }
                | Self::Busy
                | Self::NotNegotiated
                | Self::StatsNotRequested
                | Self::BadRange
        )
    }

    /// True when the error stopped the balloon: nothing more is accepted
    /// until `reset` (the queues can no longer be trusted).
    pub fn needs_reset(&self) -> bool {
        matches!(
            self,
            Self::UnexpectedCompletion { .. }
                | Self::WrongCompletion { .. }
                | Self::ConfigUnstable
                | Self::DeviceFailed
                | Self::Stopped
        )
    }
}

impl From<PlatformError> for BalloonError {
    fn from(e: PlatformError) -> Self {
        Self::Platform(e)
    }
}

impl fmt::Display for BalloonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadLimits => f.write_str("balloon limits make no sense"),
            Self::BadPage { addr } => write!(
                f,
                "page at {addr:#x} is misaligned or beyond what the protocol can name"
            ),
            Self::TooManyPages { given, max } => {
                write!(f, "{given} pages given; one buffer takes at most {max}")
            }
            Self::BeyondFloor { would_be, max } => write!(
                f,
                "inflating to {would_be} frames would cross the floor (at most {max})"
            ),
            Self::NotTraditionalBalloon { id } => write!(
                f,
                "virtio device ID {id} is not the traditional memory balloon (5)"
            ),
            Self::Busy => f.write_str("queue busy: poll completions first"),
            Self::NotNegotiated => f.write_str("the device did not negotiate this feature"),
            Self::StatsNotRequested => {
                f.write_str("stats supplied while the device holds the stats buffer")
            }
            Self::BadRange => f.write_str("free range empty or not whole 4 KiB frames"),
            Self::Stopped => f.write_str("balloon stopped after a device fault: reset it"),
            Self::Transport => f.write_str("virtio transport refused the set-up"),
            Self::Platform(e) => write!(f, "platform: {e}"),
            Self::Xenstore { peer } => write!(
                f,
                "xenstore operation failed ({})",
                if *peer { "peer fault" } else { "local" }
            ),
            Self::UnexpectedCompletion { queue } => write!(
                f,
                "device completed a buffer on queue {queue} while none was outstanding"
            ),
            Self::WrongCompletion { queue } => write!(
                f,
                "device completed a buffer on queue {queue} that was never posted"
            ),
            Self::BadLength { queue, len } => write!(
                f,
                "device reported {len} bytes written to a read-only buffer on queue {queue}"
            ),
            Self::TargetBeyondMemory { requested, guest } => write!(
                f,
                "target of {requested} frames beyond guest memory of {guest} frames (clamped)"
            ),
            Self::BadTarget => f.write_str("memory/target is not a decimal number of KiB"),
            Self::ReservationOverrun { asked, done } => write!(
                f,
                "reservation call claims {done} frames done of {asked} asked"
            ),
            Self::ConfigUnstable => f.write_str("device config space never held still"),
            Self::DeviceFailed => {
                f.write_str("device refused the features, failed its reset, or needs a reset")
            }
        }
    }
}
