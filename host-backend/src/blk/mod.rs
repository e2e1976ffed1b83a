//! The vhost-user-blk device: one disk served to one QEMU at a time over a
//! vhost-user socket (two while one hands the disk over to the other, see
//! [`handover`]), one worker thread per virtqueue, requests executed
//! concurrently on a bounded per-disk I/O pool and completed in ring order
//! ([`io`] explains the design and its trade-off). A panic in a worker or
//! an I/O thread resets the device (drops the connection; QEMU's
//! `reconnect=` resubmits), never the daemon.
//!
//! Wire facts it relies on (virtio 1.2 §5.2, vhost-user spec, QEMU 7.2):
//! QEMU's vhost-user-blk needs the CONFIG protocol feature and asks for
//! `num-queues` queues (default: one per vCPU), so the device offers MQ;
//! it does not offer the STATUS protocol feature (QEMU < 8.1 resets the
//! device before GET_VRING_BASE when it is offered).

pub mod config;
pub mod device;
pub mod disk;
pub mod fault;
pub mod handover;
pub mod io;
pub mod metrics;
pub mod request;
pub mod server;

pub use config::{parse_disk_spec, BlkConfigError, DiskConfig};
pub use device::{BlkBackend, BlkParams};
pub use disk::{Disk, DiskError};
pub use io::{IoMode, IoPool};
pub use server::{BlkError, BlkService};
