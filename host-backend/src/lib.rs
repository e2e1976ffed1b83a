//! The pvdrivers host backend daemon.
//!
//! Today: vhost-user-blk disks for QEMU ([`blk`]); the host memory-balance
//! manager for guests' virtio-balloons ([`balloon`]); the vhost-user-net L2
//! switch ([`net`]); Xen blkback and the toolstack's vbd commands
//! ([`xen`]), on the loopback fabric.
//!
//! Every device is a folder with the same file roles: `mod.rs` says what it
//! is for and what it refuses; `config` holds its tables and command-line
//! spec; `device` what it serves (the vhost-user backend of one connection;
//! for the balloon manager, one guest's balloon seen through QMP); `server`
//! its threads, started and stopped by the daemon; `metrics` its series,
//! each documented there. A new device copies this shape.
//!
//! Daemon-wide: the configuration file that gathers every device's tables
//! ([`config`]), the daemon that starts and stops the devices ([`daemon`]),
//! the Prometheus endpoint ([`metrics_server`]) and its reader, the
//! `pvbackend top` load view ([`top`]), and the two helpers every
//! device's server uses: its socket ([`listener`]) and its threads, named,
//! with panics turned into a device reset ([`worker`]) and their liveness
//! watched for systemd's watchdog ([`liveness`]); and the guest
//! memory every vhost-user device writes through, which marks QEMU's dirty
//! log during a migration ([`dirty_log`]).

pub mod balloon;
pub mod blk;
pub mod check;
pub mod config;
pub mod daemon;
pub mod dirty_log;
pub mod guests;
pub mod listener;
pub mod liveness;
pub mod metrics_server;
pub mod net;
pub mod sandbox;
pub mod top;
pub mod worker;
pub mod xen;
