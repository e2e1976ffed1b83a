//! Block protocol entries (`xen/io/blkif.h`).
//!
//! Two ABIs exist. The native 64-bit one (`protocol = "x86_64-abi"`, also what
//! a frontend that writes no `protocol` key means on a 64-bit host) aligns
//! `u64` fields to 8; the `x86_32-abi` one aligns them to 4, so `id` moves
//! from offset 8 to 4 and the request shrinks from 112 to 108 bytes. A backend
//! must pick the layout from the frontend's `protocol` key.
//!
//! Fields are in the guest's native byte order, as Xen defines them. The
//! 32-bit layouts use zerocopy's unaligned native-endian integers for the
//! `u64` fields that sit at 4-aligned offsets.

use core::mem::{offset_of, size_of};

use zerocopy::byteorder::native_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `BLKIF_OP_READ`.
pub const OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`.
pub const OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER` (optional, `feature-barrier`).
pub const OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE` (optional, `feature-flush-cache`).
pub const OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_DISCARD` (optional, `feature-discard`); the entry is a
/// [`BlkifRequestDiscard`].
pub const OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT` (optional, `feature-max-indirect-segments`); the entry
/// is a [`BlkifRequestIndirect`].
pub const OP_INDIRECT: u8 = 6;

/// `BLKIF_RSP_OKAY`.
pub const RSP_OKAY: i16 = 0;
/// `BLKIF_RSP_ERROR`.
pub const RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_EOPNOTSUPP`: an optional operation may return it at any time.
pub const RSP_EOPNOTSUPP: i16 = -2;

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`.
pub const MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`.
pub const MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segments held by one indirect page (4096 / 8).
pub const SEGMENTS_PER_INDIRECT_FRAME: usize = 512;
/// `BLKIF_DISCARD_SECURE`, bit 0 of [`BlkifRequestDiscard::flag`].
pub const DISCARD_SECURE: u8 = 1 << 0;

/// `struct blkif_request_segment`: one granted page and the inclusive sector
/// range (`first_sect..=last_sect`, 512-byte sectors) used within it.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BlkifSegment {
    /// Grant reference of the data page.
    pub gref: u32,
    /// First sector within the page, inclusive.
    pub first_sect: u8,
    /// Last sector within the page, inclusive.
    pub last_sect: u8,
    /// Implicit C padding, made explicit.
    pub _pad: [u8; 2],
}

/// `struct blkif_request`, 64-bit ABI (112 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Number of valid entries in `seg`; the peer may lie (check it).
    pub nr_segments: u8,
    /// Virtual device handle.
    pub handle: u16,
    /// Implicit C padding, made explicit.
    pub _pad: [u8; 4],
    /// Frontend's cookie, echoed in the response.
    pub id: u64,
    /// Start sector.
    pub sector_number: u64,
    /// Segments; only the first `nr_segments` are meaningful.
    pub seg: [BlkifSegment; MAX_SEGMENTS_PER_REQUEST],
}

/// `struct blkif_request_discard`, 64-bit ABI (32 bytes); shares a slot with
/// [`BlkifRequest`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BlkifRequestDiscard {
    /// [`OP_DISCARD`].
    pub operation: u8,
    /// [`DISCARD_SECURE`] or zero.
    pub flag: u8,
    /// Virtual device handle.
    pub handle: u16,
    /// Implicit C padding, made explicit.
    pub _pad: [u8; 4],
    /// Frontend's cookie, echoed in the response.
    pub id: u64,
    /// Start sector.
    pub sector_number: u64,
    /// Number of contiguous sectors to discard.
    pub nr_sectors: u64,
}

/// `struct blkif_request_indirect`, 64-bit ABI (64 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BlkifRequestIndirect {
    /// [`OP_INDIRECT`].
    pub operation: u8,
    /// [`OP_READ`] or [`OP_WRITE`].
    pub indirect_op: u8,
    /// Total segments described by the indirect pages.
    pub nr_segments: u16,
    /// Implicit C padding, made explicit.
    pub _pad0: [u8; 4],
    /// Frontend's cookie, echoed in the response.
    pub id: u64,
    /// Start sector.
    pub sector_number: u64,
    /// Virtual device handle.
    pub handle: u16,
    /// Implicit C padding, made explicit.
    pub _pad1: [u8; 2],
    /// Grants of the pages holding [`BlkifSegment`] arrays.
    pub indirect_grefs: [u32; MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Implicit C tail padding, made explicit.
    pub _pad2: [u8; 4],
}

/// `struct blkif_response`, 64-bit ABI (16 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BlkifResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's `operation`.
    pub operation: u8,
    /// Implicit C padding, made explicit.
    pub _pad0: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    /// Implicit C tail padding, made explicit.
    pub _pad1: [u8; 4],
}

/// `struct blkif_request` as a 32-bit (`x86_32-abi`) guest lays it out (108
/// bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BlkifRequest32 {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Number of valid entries in `seg`; the peer may lie (check it).
    pub nr_segments: u8,
    /// Virtual device handle.
    pub handle: u16,
    /// Frontend's cookie, echoed in the response.
    pub id: U64,
    /// Start sector.
    pub sector_number: U64,
    /// Segments; only the first `nr_segments` are meaningful.
    pub seg: [BlkifSegment; MAX_SEGMENTS_PER_REQUEST],
}

/// `struct blkif_request_discard`, 32-bit ABI (28 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BlkifRequestDiscard32 {
    /// [`OP_DISCARD`].
    pub operation: u8,
    /// [`DISCARD_SECURE`] or zero.
    pub flag: u8,
    /// Virtual device handle.
    pub handle: u16,
    /// Frontend's cookie, echoed in the response.
    pub id: U64,
    /// Start sector.
    pub sector_number: U64,
    /// Number of contiguous sectors to discard.
    pub nr_sectors: U64,
}

/// `struct blkif_request_indirect`, 32-bit ABI (64 bytes: i386 guests carry
/// an explicit trailing `pad` to keep it 64).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BlkifRequestIndirect32 {
    /// [`OP_INDIRECT`].
    pub operation: u8,
    /// [`OP_READ`] or [`OP_WRITE`].
    pub indirect_op: u8,
    /// Total segments described by the indirect pages.
    pub nr_segments: u16,
    /// Frontend's cookie, echoed in the response.
    pub id: U64,
    /// Start sector.
    pub sector_number: U64,
    /// Virtual device handle.
    pub handle: u16,
    /// Implicit C padding, made explicit.
    pub _pad1: [u8; 2],
    /// Grants of the pages holding [`BlkifSegment`] arrays.
    pub indirect_grefs: [u32; MAX_INDIRECT_PAGES_PER_REQUEST],
    /// The header's explicit `uint64_t pad` (i386 only).
    pub pad: U64,
}

/// `struct blkif_response`, 32-bit ABI (12 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BlkifResponse32 {
    /// The request's `id`.
    pub id: U64,
    /// The request's `operation`.
    pub operation: u8,
    /// Implicit C padding, made explicit.
    pub _pad0: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
}

const _: () = {
    assert!(size_of::<BlkifSegment>() == 8);
    assert!(offset_of!(BlkifSegment, first_sect) == 4);
    assert!(offset_of!(BlkifSegment, last_sect) == 5);

    assert!(size_of::<BlkifRequest>() == 112);
    assert!(offset_of!(BlkifRequest, nr_segments) == 1);
    assert!(offset_of!(BlkifRequest, handle) == 2);
    assert!(offset_of!(BlkifRequest, id) == 8);
    assert!(offset_of!(BlkifRequest, sector_number) == 16);
    assert!(offset_of!(BlkifRequest, seg) == 24);

    assert!(size_of::<BlkifRequestDiscard>() == 32);
    assert!(offset_of!(BlkifRequestDiscard, flag) == 1);
    assert!(offset_of!(BlkifRequestDiscard, id) == 8);
    assert!(offset_of!(BlkifRequestDiscard, nr_sectors) == 24);

    assert!(size_of::<BlkifRequestIndirect>() == 64);
    assert!(offset_of!(BlkifRequestIndirect, nr_segments) == 2);
    assert!(offset_of!(BlkifRequestIndirect, id) == 8);
    assert!(offset_of!(BlkifRequestIndirect, sector_number) == 16);
    assert!(offset_of!(BlkifRequestIndirect, handle) == 24);
    assert!(offset_of!(BlkifRequestIndirect, indirect_grefs) == 28);

    assert!(size_of::<BlkifResponse>() == 16);
    assert!(offset_of!(BlkifResponse, operation) == 8);
    assert!(offset_of!(BlkifResponse, status) == 10);

    assert!(size_of::<BlkifRequest32>() == 108);
    assert!(offset_of!(BlkifRequest32, id) == 4);
    assert!(offset_of!(BlkifRequest32, sector_number) == 12);
    assert!(offset_of!(BlkifRequest32, seg) == 20);

    assert!(size_of::<BlkifRequestDiscard32>() == 28);
    assert!(offset_of!(BlkifRequestDiscard32, id) == 4);
    assert!(offset_of!(BlkifRequestDiscard32, nr_sectors) == 20);

    assert!(size_of::<BlkifRequestIndirect32>() == 64);
    assert!(offset_of!(BlkifRequestIndirect32, id) == 4);
    assert!(offset_of!(BlkifRequestIndirect32, handle) == 20);
    assert!(offset_of!(BlkifRequestIndirect32, indirect_grefs) == 24);
    assert!(offset_of!(BlkifRequestIndirect32, pad) == 56);

    assert!(size_of::<BlkifResponse32>() == 12);
    assert!(offset_of!(BlkifResponse32, operation) == 8);
    assert!(offset_of!(BlkifResponse32, status) == 10);
};
