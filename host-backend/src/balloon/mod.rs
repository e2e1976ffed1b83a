//! The host memory-balance manager: watches every guest's virtio-balloon
//! through QEMU's QMP socket and moves memory between the host and the
//! guests (issue 7, host half).
//!
//! Each round (every `interval_secs`) the manager
//! 1. picks up guests: the configured `[[balloon.guest]]` list, plus every
//!    `*.qmp` socket in `watch_dir` (new ones are added, vanished ones
//!    dropped with their gauges);
//! 2. (re)connects to any guest it has no connection to — a QEMU that went
//!    away and came back on the same socket is picked up again — finds its
//!    balloon device, turns on QEMU's statistics polling, and reads
//!    `query-balloon` and `guest-stats` ([`device`]);
//! 3. reads the host's available memory (`/proc/meminfo` `MemAvailable`,
//!    or `host_available_file` holding a number of MiB, which tests use to
//!    simulate a shortage deterministically);
//! 4. runs the pure [`policy::decide`] and applies its targets with QMP
//!    `balloon` (or only logs them in dry-run mode);
//! 5. publishes every figure on the metrics endpoint ([`metrics`]), which
//!    `pvbackend guests` ([`cli`]) shows as a table.
//!
//! A guest's statistics are only used when QEMU received them after the
//! manager last changed that guest's target, so a decision never rests on
//! figures from before the previous one. The manager reaches each guest
//! through the daemon's one QMP connection to it ([`crate::guests::mux`]),
//! shared with the lifecycle commands, so the VM needs a single `-qmp`.
//!
//! What it refuses: targets outside a guest's `[min, max]` (max defaults to
//! the guest's RAM, min to `default_min_mib`), changes larger than
//! `step_mib` per round, and changes below `noise_floor_mib`.

pub mod cli;
pub mod config;
pub mod device;
pub mod metrics;
pub mod policy;
pub mod qmp;
pub mod server;

pub use config::{BalloonConfig, BalloonGuestConfig};
pub use server::{host_available_mib, meminfo_available_mib, spawn, Manager};
