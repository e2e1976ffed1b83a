//! The one error type of the network runtime, named after what failed.

use pv_net::NetError;

use crate::tap::TapError;

/// Everything `pvnetd` can stop with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared Linux plumbing failed (claiming the device, sysfs, BARs,
    /// DMA memory, signals, the device's interrupt).
    #[error(transparent)]
    Linux(#[from] pv_linux::Error),
    /// The TAP interface could not be made or set up.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The network core refused to start on the device.
    #[error("virtio-net init: {0}")]
    Init(NetError),
    /// The core refused a call that is not a device fault (a bug in how
    /// this runtime drives it).
    #[error("virtio-net: {0}")]
    Core(NetError),
    /// The device faulted and resetting it failed too.
    #[error("device reset failed: {0}")]
    Reset(NetError),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
