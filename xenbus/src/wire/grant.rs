//! Grant table v1 entries (`xen/grant_table.h`).
//!
//! The guest writes `domid` and `frame`, then (after a release barrier) the
//! `flags`; the hypervisor sets [`GTF_READING`]/[`GTF_WRITING`] while the
//! page is mapped, so a grant may only be revoked by compare-and-swapping
//! `flags` to zero while neither is set.

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `GTF_invalid`.
pub const GTF_INVALID: u16 = 0;
/// `GTF_permit_access`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_accept_transfer`.
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// `GTF_transitive`.
pub const GTF_TRANSITIVE: u16 = 3;
/// `GTF_type_mask`.
pub const GTF_TYPE_MASK: u16 = 3;
/// `GTF_readonly`.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading` (set by the hypervisor).
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing` (set by the hypervisor).
pub const GTF_WRITING: u16 = 1 << 4;
/// `GNTTAB_NR_RESERVED_ENTRIES`: refs below this are never handed out.
pub const NR_RESERVED_ENTRIES: u32 = 8;
/// `GNTTAB_RESERVED_CONSOLE`.
pub const RESERVED_CONSOLE: u32 = 0;
/// `GNTTAB_RESERVED_XENSTORE`.
pub const RESERVED_XENSTORE: u32 = 1;

/// `struct grant_entry_v1` (8 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct GrantEntryV1 {
    /// `GTF_*`; written last when granting.
    pub flags: u16,
    /// The domain being granted access.
    pub domid: u16,
    /// The guest frame number being granted.
    pub frame: u32,
}

const _: () = {
    assert!(size_of::<GrantEntryV1>() == 8);
    assert!(offset_of!(GrantEntryV1, domid) == 2);
    assert!(offset_of!(GrantEntryV1, frame) == 4);
};
