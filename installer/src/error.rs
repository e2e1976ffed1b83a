//! What `pv-install` refuses or fails at. Each message is one line that
//! names the device and the fix.

use std::path::PathBuf;

/// Everything `pv-install` can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller is not root: every change writes sysfs, systemd and /etc.
    #[error("pv-install must run as root to change devices (try: sudo pv-install {0})")]
    NotRoot(String),
    /// The user named a device this guest does not have.
    #[error(
        "no {kind} device {device} in this guest (see `pv-install status` for the ones there are)"
    )]
    UnknownDevice {
        /// The kind asked for.
        kind: &'static str,
        /// What the user typed.
        device: String,
    },
    /// The device exists but is another kind.
    #[error(
        "{device} is a {actual} device, not {kind} (use: pv-install enable {actual} {device})"
    )]
    WrongKind {
        /// The kind asked for.
        kind: &'static str,
        /// The kind it is.
        actual: &'static str,
        /// The device.
        device: String,
    },
    /// Taking the disk `/` is on would pull the root filesystem away.
    #[error(
        "refusing {device}: the root filesystem is on it ({dev}); pvdrivers serves data disks only"
    )]
    RootDisk {
        /// The PCI function.
        device: String,
        /// The block device `/` is mounted from.
        dev: String,
    },
    /// A filesystem on the disk is mounted.
    #[error("refusing {device}: {dev} is mounted on {mountpoint}; unmount it first")]
    Mounted {
        /// The PCI function.
        device: String,
        /// The block device.
        dev: String,
        /// Where.
        mountpoint: String,
    },
    /// The configuration already claims it.
    #[error("{device} is already enabled for pvdrivers (see `pv-install status`)")]
    AlreadyEnabled {
        /// The device.
        device: String,
    },
    /// Someone else (not our config) holds it: a `driver_override`.
    #[error("{device} is claimed by another program (driver_override {by:?}); release it first")]
    ClaimedElsewhere {
        /// The device.
        device: String,
        /// Its `driver_override`.
        by: String,
    },
    /// The configuration does not name it.
    #[error("{device} is not enabled for pvdrivers; nothing to disable")]
    NotEnabled {
        /// The device.
        device: String,
    },
    /// Xen PV devices are the kernel frontends' (xen-blkfront, xen-netfront).
    #[error("{device} is a Xen PV device; the kernel's Xen frontends serve it and pv-install manages virtio PCI functions only")]
    XenDevice {
        /// The device.
        device: String,
    },
    /// A runtime binary is missing or of another version than this tool.
    #[error("{binary} is version {found}, pv-install is {ours}: reinstall the pvdrivers-guest package so they match")]
    VersionMismatch {
        /// The runtime.
        binary: PathBuf,
        /// What it says.
        found: String,
        /// Ours.
        ours: &'static str,
    },
    /// A runtime binary could not be run.
    #[error("cannot run {binary} --version: {detail}; reinstall the pvdrivers-guest package")]
    RuntimeMissing {
        /// The runtime.
        binary: PathBuf,
        /// Why.
        detail: String,
    },
    /// `/etc/pvdrivers/guest.toml` does not parse.
    #[error("{path}: {detail}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the line).
        detail: String,
    },
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// systemctl failed.
    #[error("systemctl {args}: {detail}")]
    Systemctl {
        /// Its arguments.
        args: String,
        /// Its output or the spawn error.
        detail: String,
    },
    /// A change failed and was rolled back.
    #[error("{failed}; rolled back, nothing changed")]
    RolledBack {
        /// The failure.
        #[source]
        failed: Box<Error>,
    },
    /// A change failed and so did undoing part of it.
    #[error("{failed}; rolling back also failed: {undo}")]
    RollbackFailed {
        /// The failure.
        failed: Box<Error>,
        /// The undo step's failure.
        undo: Box<Error>,
    },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
