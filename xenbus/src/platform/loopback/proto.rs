//! The broker's messages: native-endian `u32` words in one
//! `SOCK_SEQPACKET` packet, descriptors attached with `SCM_RIGHTS`.
//!
//! | request | words | reply words | reply descriptors |
//! |---|---|---|---|
//! | hello | `domid, pages` | `0, grant entries` | grant table, memory (if pages > 0) |
//! | map | `granter, writable, gref...` | `0, handle, frame...` | granter's memory (read-only descriptor unless writable) |
//! | unmap | `handle` | `0` | |
//! | alloc unbound | `remote domid` | `0, port` | this end's eventfd, the other end's |
//! | bind interdomain | `remote domid, remote port` | `0, port` | this end's eventfd, the other end's |
//! | close | `port` | `0` | |
//!
//! A failed request's reply is one word, the [`Err`] code.

use std::vec::Vec;

/// Most grefs in one map request (a 16-page ring, or an indirect request's
/// data pages).
pub const MAX_MAP_PAGES: usize = 4096;

/// Request codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Op {
    Hello = 1,
    Map = 2,
    Unmap = 3,
    AllocUnbound = 4,
    BindInterdomain = 5,
    Close = 6,
}

impl Op {
    pub(crate) fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Map,
            3 => Self::Unmap,
            4 => Self::AllocUnbound,
            5 => Self::BindInterdomain,
            6 => Self::Close,
            _ => return None,
        })
    }
}

/// Why the broker refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Err {
    /// The request was malformed.
    Invalid = 1,
    /// The grant reference is out of range, not a permit-access grant (never
    /// granted or revoked), or names a frame outside the granter's memory;
    /// or the port is not one we may bind.
    BadRef = 2,
    /// The grant was made to another domain.
    WrongDomain = 3,
    /// A writable map of a read-only grant.
    ReadOnly = 4,
    /// No such domain.
    NoDomain = 5,
    /// The domid is already connected.
    Busy = 6,
    /// The broker ran out of resources.
    Exhausted = 7,
}

impl Err {
    pub(crate) fn from_u32(v: u32) -> Self {
        match v {
            2 => Self::BadRef,
            3 => Self::WrongDomain,
            4 => Self::ReadOnly,
            5 => Self::NoDomain,
            6 => Self::Busy,
            7 => Self::Exhausted,
            _ => Self::Invalid,
        }
    }
}

pub(crate) fn encode(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

pub(crate) fn decode(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
