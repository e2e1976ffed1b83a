//! The shared ring header that `DEFINE_RING_TYPES` puts at the start of every
//! ring page (`xen/io/ring.h`). Entries start at [`SRING_HEADER_SIZE`].
//!
//! This type documents the layout; the ring code never forms a reference to
//! it, because every field is written concurrently by the peer and is only
//! touched through atomics (see `crate::ring`).

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes before the first entry.
pub const SRING_HEADER_SIZE: usize = 64;

/// `struct *_sring` without the trailing entry array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SringHeader {
    /// Requests published by the frontend.
    pub req_prod: u32,
    /// The backend wants an event when `req_prod` passes this.
    pub req_event: u32,
    /// Responses published by the backend.
    pub rsp_prod: u32,
    /// The frontend wants an event when `rsp_prod` passes this.
    pub rsp_event: u32,
    /// `pvt` union (netif `smartpoll_active`, ...).
    pub pvt: [u8; 4],
    /// `__pad`.
    pub pad: [u8; 44],
}

/// Byte offset of `req_prod`.
pub const REQ_PROD: usize = offset_of!(SringHeader, req_prod);
/// Byte offset of `req_event`.
pub const REQ_EVENT: usize = offset_of!(SringHeader, req_event);
/// Byte offset of `rsp_prod`.
pub const RSP_PROD: usize = offset_of!(SringHeader, rsp_prod);
/// Byte offset of `rsp_event`.
pub const RSP_EVENT: usize = offset_of!(SringHeader, rsp_event);
/// Byte offset of `pvt`.
pub const PVT: usize = offset_of!(SringHeader, pvt);

const _: () = {
    assert!(size_of::<SringHeader>() == SRING_HEADER_SIZE);
    assert!(REQ_PROD == 0);
    assert!(REQ_EVENT == 4);
    assert!(RSP_PROD == 8);
    assert!(RSP_EVENT == 12);
    assert!(PVT == 16);
};
