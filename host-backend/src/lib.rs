//! The pvdrivers host backend daemon.
//!
//! Today: vhost-user-blk disks for QEMU ([`blk`]); the host memory-balance
//! manager for guests' virtio-balloons ([`balloon`]); the vhost-user-net L2
//! switch ([`net`]). Each device owns its config, server and metrics
//! (every series is documented in the device's `metrics` module). Xen
//! backends arrive with their issue.
//!
//! Daemon-wide: the configuration file that gathers every device's tables
//! ([`config`]), the daemon that starts and stops the devices ([`daemon`]),
//! the Prometheus endpoint ([`metrics_server`]), and the two helpers every
//! device's server uses: its socket ([`listener`]) and its threads, named,
//! with panics turned into a device reset ([`worker`]).

pub mod balloon;
pub mod blk;
pub mod config;
pub mod daemon;
pub mod listener;
pub mod metrics_server;
pub mod net;
pub mod worker;
