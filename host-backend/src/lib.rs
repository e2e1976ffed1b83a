//! The pvdrivers host backend daemon.
//!
//! Today: vhost-user-blk disks for QEMU ([`blk`]), configured from a TOML
//! file or the command line ([`config`]), served by [`daemon`], with a
//! Prometheus endpoint ([`metrics`], where every series is documented),
//! and the vhost-user-net L2 switch ([`net`]). Xen
//! backends, the balloon policy and metrics arrive with
//! their issues.

pub mod blk;
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod net;
