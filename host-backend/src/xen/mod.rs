//! Xen backends, as a dom0 userspace daemon (like QEMU's `qdisk`, but ours),
//! and the toolstack side that sets devices up.
//!
//! - [`toolstack`]: `pvbackend xen create-vbd | destroy-vbd` write the
//!   frontend and backend xenstore directories and their permissions the
//!   way `xl` does (libxl's `libxl__device_generic_add`).
//! - [`request`]: blkif requests read once from the ring, validated into a
//!   [`request::BlkRequest`] before anything acts on them (the fuzz target's
//!   entry point).
//! - [`device`]: one vbd: the xenbus handshake (InitWait, map the ring,
//!   bind the event channel, Connected), the request loop on the disk engine
//!   of the vhost-user disks ([`crate::blk::disk::Disk`]), and the close.
//! - [`server`]: `pvbackend xen blkback` watches `backend/vbd` and runs a
//!   device thread per directory.
//!
//! The platform is [`xenbus::platform::loopback`] today: grants and event
//! channels between processes through a broker, xenstore the real C
//! `xenstored`. On real Xen only the platform object changes (gntdev and
//! evtchn); `docs/XEN.md` lists what ran where.
//!
//! Refused: requests whose segments leave their page, run past the disk or
//! name grants the frontend did not give us; a frontend that overruns the
//! ring is disconnected (its device goes to Closed), never trusted again.
//! Not yet: indirect segments, persistent grants, multi-queue, the 32-bit
//! ABI (the device refuses a `protocol` other than `x86_64-abi`).

pub mod cli;
pub mod device;
pub mod request;
pub mod server;
pub mod toolstack;

use xenbus::xenstore::client::Error as XsError;

/// Why a Xen device or command failed; who is at fault is in the variant.
#[derive(Debug, thiserror::Error)]
pub enum XenError {
    /// Xenstore said no, or the connection failed.
    #[error("xenstore: {0}")]
    Xenstore(#[from] XsError),
    /// The grant/event-channel platform refused (see the source for whose
    /// fault).
    #[error("platform: {0}")]
    Platform(xenbus::platform::PlatformError),
    /// The frontend published something unusable (missing or malformed key).
    #[error("the frontend published a bad {key}: {why}")]
    Frontend {
        /// The key.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// The frontend broke the ring protocol; the device was disconnected.
    #[error("the frontend broke the ring: {0}")]
    Ring(xenbus::ring::RingError),
    /// The toolstack's entries for this device are missing or malformed.
    #[error("bad toolstack entry {key}: {why}")]
    Toolstack {
        /// The key.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// The disk image could not be opened.
    #[error("disk: {0}")]
    Disk(String),
    /// Local I/O (sockets, threads).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Waited too long for the other side.
    #[error("timed out waiting for {0}")]
    TimedOut(String),
}

impl XenError {
    /// True when the guest side (frontend) caused it.
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::Frontend { .. } | Self::Ring(_) => true,
            Self::Platform(e) => e.is_peer_fault(),
            _ => false,
        }
    }
}

impl From<xenbus::platform::PlatformError> for XenError {
    fn from(e: xenbus::platform::PlatformError) -> Self {
        Self::Platform(e)
    }
}
