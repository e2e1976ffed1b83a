//! A native vhost-user frontend: plays the VMM and the guest's driver over a
//! vhost-user socket, so backends (ours, `qemu-storage-daemon`) can be
//! driven without QEMU, at full speed, with well-formed and deliberately
//! malformed requests.
//!
//! Layers, bottom up:
//! - [`ram`]: guest RAM, one memfd shared with the backend (`SET_MEM_TABLE`);
//! - [`split`]: the driver side of a split virtqueue in that RAM, which
//!   validates everything the device writes;
//! - [`frontend`]: the vhost-user connection (features, protocol features,
//!   config space, vrings, kick and call eventfds), device-independent;
//! - [`blk`]: a virtio-blk driver ([`NativeBlkDriver`]) with a raw API for
//!   hand-built descriptor chains;
//! - [`net`]: a virtio-net driver ([`NativeNetDriver`]) with the same kind
//!   of raw API for TX chains.
//!
//! What it is not: a guest. No IOMMU, no live migration, no packed rings,
//! no inflight tracking (`INFLIGHT_SHMFD`), and it never sends
//! `SET_VRING_ENABLE 0` or re-negotiates on an open connection.

pub mod blk;
pub mod frontend;
pub mod net;
pub mod ram;
pub mod split;

pub use blk::{
    BlkConfig, BlkQueue, BlkRequest, Completion, DriverError, DriverOptions, DwzRange, Layout,
    NativeBlkDriver, Token,
};
pub use frontend::{DirtyLog, FrontendError, VhostUserDevice};
pub use net::{NativeNetDriver, NetConfig, NetDriverError, NetOptions, Received};
pub use ram::GuestRam;
pub use split::{ChainDesc, Descriptor, Next};
