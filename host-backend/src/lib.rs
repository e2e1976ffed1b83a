//! The pvdrivers host backend daemon.
//!
//! Today: vhost-user-blk disks for QEMU ([`blk`]), configured from a TOML
//! file or the command line ([`config`]), served by [`daemon`], with a
//! Prometheus endpoint ([`metrics`], where every series is documented); the
//! host memory-balance manager for guests' virtio-balloons ([`balloon`]). Xen
//! backends and the network switch arrive with their issues.

pub mod balloon;
pub mod blk;
pub mod config;
pub mod daemon;
pub mod metrics;
