//! `pvtest`: the QEMU guest harness of pvdrivers.
//!
//! Every VM-booting test and the demo go through one type, [`Guest`]:
//!
//! ```no_run
//! use std::time::Duration;
//! use pvtest::Guest;
//!
//! let disk = tempfile::NamedTempFile::new().unwrap();
//! disk.as_file().set_len(16 << 20).unwrap();
//! Guest::builder("write-pattern")
//!     .modules(["virtio_pci", "virtio_blk"])
//!     .binary("pvio")
//!     .virtio_blk_disk(disk.path())
//!     .script("pvio write /dev/vda --seed 1")
//!     .timeout(Duration::from_secs(300))
//!     .run()
//!     .unwrap()
//!     .expect_pass();
//! ```
//!
//! What it does for a scenario:
//! - resolves the current Debian cloud kernel through the
//!   `linux-image-cloud-amd64` metapackage and caches it outside the work
//!   tree ([`kernel`], [`cache`]);
//! - builds an initramfs with busybox-static, the requested kernel modules
//!   and their `depends=` closure ([`modules`]), our static guest binaries
//!   ([`guest_bins`]) and the scenario script ([`initramfs`]);
//! - boots `qemu-system-x86_64 -accel tcg -cpu max` (KVM by option) with the
//!   devices asked for, streams the serial console, decides pass/fail from
//!   explicit markers carrying the scenario's exit status, enforces a hard
//!   timeout and always kills QEMU and helpers ([`process`]);
//! - keeps the full console log when a scenario does not pass and prints its
//!   path.

pub mod cache;
pub mod guest;
pub mod guest_bins;
pub mod inf_lint;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod package;
pub mod pe_lint;
pub mod peers;
pub mod process;
pub mod pvblkd_scenario;
pub mod qmp;
pub mod rootfs;
pub mod vhost_user;
pub mod windows;

pub use guest::{Accel, Guest, GuestBuilder, Outcome, Verdict};
pub use kernel::KernelChoice;
pub use peers::QemuStorageDaemon;
pub use process::ChildGuard;
pub use qmp::Qmp;

/// Harness failures (not scenario failures: those are a [`Verdict`]).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The machine lacks something the harness needs, or a setup step failed.
    #[error("setup: {0}")]
    Setup(String),
    /// An I/O operation of the harness itself failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl HarnessError {
    pub(crate) fn io(what: String, source: std::io::Error) -> Self {
        Self::Io { what, source }
    }
}
