//! The parts only an OS or a hypervisor can provide, one `unsafe trait` per
//! concern: shared pages, grants (both ends) and event channels.
//!
//! Each trait is `unsafe` because ring and protocol code relies on what its
//! implementation promises for memory safety (a page stays mapped while a
//! ring uses it) or for correctness that cannot be checked at run time (an
//! event is ordered after the ring writes it announces). Every method says
//! what the caller must guarantee ("Safety") and what the implementation must
//! guarantee ("Implementation safety"). An in-process implementation lives in
//! `platform::inproc` behind the `test-utils` feature.

use core::fmt;
use core::ptr::NonNull;

#[cfg(feature = "test-utils")]
pub mod inproc;
#[cfg(all(feature = "loopback", target_os = "linux"))]
pub mod loopback;

/// A domain id (`domid_t`).
pub type DomId = u16;
/// A grant reference (`grant_ref_t`).
pub type GrantRef = u32;
/// An event-channel port (`evtchn_port_t`).
pub type Port = u32;

/// What a platform operation can fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// Local: out of pages, grant entries or ports.
    Exhausted,
    /// Peer: the grant is still mapped or being accessed by the other domain,
    /// so it cannot be revoked yet (`GTF_reading`/`GTF_writing` set).
    GrantInUse,
    /// Peer: the grant reference or port the other domain published does not
    /// name anything we can map or bind.
    BadPeerReference,
    /// Local: the platform refused for another reason (its own error code).
    Os(i32),
}

impl PlatformError {
    /// True when the other domain caused the failure.
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, Self::GrantInUse | Self::BadPeerReference)
    }
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exhausted => f.write_str("out of pages, grant entries or ports"),
            Self::GrantInUse => f.write_str("the peer still has the granted page mapped"),
            Self::BadPeerReference => {
                f.write_str("the peer published a grant reference or port that does not exist")
            }
            Self::Os(e) => write!(f, "platform error {e}"),
        }
    }
}

/// Page-aligned memory that can be shared with another domain.
///
/// # Implementation safety
///
/// [`SharedPages::alloc_pages`] returns a pointer aligned to 4096 bytes,
/// valid for reads and writes of `count * 4096` bytes, zero-filled, used by
/// nothing else in this address space, and it stays valid until it is passed
/// to [`SharedPages::free_pages`].
pub unsafe trait SharedPages {
    /// Allocate `count` contiguous (in this address space) pages.
    fn alloc_pages(&self, count: usize) -> Result<NonNull<u8>, PlatformError>;

    /// Free pages.
    ///
    /// # Safety
    ///
    /// `pages` came from `alloc_pages(count)` on this object, every grant of
    /// them has been revoked and no ring or other reference still uses them.
    unsafe fn free_pages(&self, pages: NonNull<u8>, count: usize);
}

/// Granting our pages to another domain (the frontend side).
///
/// # Implementation safety
///
/// After [`GrantTable::grant`] returns `Ok(r)`, domain `domid` can access the
/// page through `r` (read-only if asked), and it can no longer access it once
/// [`GrantTable::end_access`] returns `Ok`. The grant entry's `domid` and
/// `frame` are visible to the hypervisor before its `flags` (release order).
pub unsafe trait GrantTable {
    /// Grant `domid` access to the page at `page`.
    fn grant(
        &self,
        domid: DomId,
        page: NonNull<u8>,
        readonly: bool,
    ) -> Result<GrantRef, PlatformError>;

    /// Revoke a grant. Fails with [`PlatformError::GrantInUse`] while the peer
    /// still has it mapped: the page must then not be freed or reused.
    ///
    /// # Safety
    ///
    /// `gref` was returned by `grant` on this object and not revoked yet.
    unsafe fn end_access(&self, gref: GrantRef) -> Result<(), PlatformError>;
}

/// Mapping another domain's granted pages (the backend side).
///
/// # Implementation safety
///
/// On `Ok(p)`, `p` is aligned to 4096 and valid for reads (and writes if
/// asked) of `grefs.len() * 4096` bytes, pages in the order of `grefs`,
/// until [`GrantMapper::unmap`]. The peer may write the memory at any time;
/// it can never make it invalid while mapped.
pub unsafe trait GrantMapper {
    /// Map `grefs` from `domid` contiguously.
    fn map(
        &self,
        domid: DomId,
        grefs: &[GrantRef],
        writable: bool,
    ) -> Result<NonNull<u8>, PlatformError>;

    /// Unmap a mapping.
    ///
    /// # Safety
    ///
    /// `mapping` came from `map` with the same number of `pages` and nothing
    /// (no ring, no reference) still uses it.
    unsafe fn unmap(&self, mapping: NonNull<u8>, pages: usize);
}

/// Event channels.
///
/// # Implementation safety
///
/// [`EventChannels::notify`] is ordered after every memory write the caller
/// made before it (it acts as a release fence), so a peer woken by it sees the
/// ring indices it was woken for. A port that was notified while nobody
/// waited stays pending until the next wait, so wake-ups are never lost.
pub unsafe trait EventChannels {
    /// Frontend: allocate a port the backend domain `remote` may bind.
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, PlatformError>;

    /// Backend: bind to `remote_port` of domain `remote`. The new port starts
    /// pending: check the ring right after binding.
    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, PlatformError>;

    /// Send an event to the peer of `port`.
    fn notify(&self, port: Port) -> Result<(), PlatformError>;

    /// Close a port.
    fn close(&self, port: Port);
}
