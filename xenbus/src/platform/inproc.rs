//! In-process stand-ins for the platform, for tests and fuzzers
//! (`test-utils` feature): page-aligned shared memory that a [`FrontRing`]
//! and a [`BackRing`] (or C code) can attach to from two threads, an
//! event-channel stand-in (a notify counter plus a condition variable), and
//! an implementation of the [`platform`](crate::platform) traits on top.
//!
//! [`FrontRing`]: crate::ring::FrontRing
//! [`BackRing`]: crate::ring::BackRing

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::vec::Vec;

use super::{
    DomId, EventChannels, GrantMapper, GrantRef, GrantTable, PlatformError, Port, SharedPages,
};
use crate::ring::{RingRegion, PAGE_SIZE};
use crate::wire::grant::NR_RESERVED_ENTRIES;

/// Zeroed, page-aligned memory of whole pages, freed on drop. Plays the
/// shared page(s) of a ring: hand [`SharedMem::region`] to each end (from
/// as many threads as you like), and poke at it as a hostile peer would with
/// [`SharedMem::store_u32`].
#[derive(Debug)]
pub struct SharedMem {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the memory is owned by this value and only ever accessed through
// atomics (by `RingRegion` and the accessors below) or by raw pointer users
// who promised the same in `as_ptr`'s contract; sharing it across threads is
// the point.
unsafe impl Send for SharedMem {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedMem {}

impl SharedMem {
    /// `pages` zeroed pages (at least one).
    pub fn new(pages: usize) -> Self {
        let size = pages.max(1) * PAGE_SIZE;
        let layout = match Layout::from_size_align(size, PAGE_SIZE) {
            Ok(l) => l,
            Err(_) => panic!("shared memory of {pages} pages is too large"),
        };
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        Self { ptr, layout }
    }

    /// `2^order` pages, as `ring-page-order` describes a ring.
    pub fn with_order(order: u32) -> Self {
        Self::new(1 << order)
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole memory as a ring region.
    pub fn region(&self) -> RingRegion<'_> {
        // SAFETY: `ptr` is valid for reads and writes of `len()` bytes for as
        // long as `self` is borrowed (it is freed only by `Drop`), and this
        // type only lets safe code reach it through atomics.
        match unsafe { RingRegion::new(self.ptr, self.len()) } {
            Ok(r) => r,
            Err(e) => panic!("page-aligned memory rejected as a ring region: {e}"),
        }
    }

    /// Raw pointer to the first byte, e.g. for a C peer.
    ///
    /// Whoever uses it must only access the memory with atomic or volatile
    /// operations (or, for C, while no Rust thread touches the same bytes
    /// concurrently) and not past `len()` or after `self` is dropped.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        assert!(
            off & 3 == 0 && off + 4 <= self.len(),
            "offset {off} out of range"
        );
        let ptr = self.ptr.as_ptr().wrapping_add(off).cast::<u32>();
        // SAFETY: the offset is checked just above to lie inside the
        // allocation and is 4-aligned (the base is page-aligned); the memory
        // lives as long as `&self` and is only accessed atomically.
        unsafe { AtomicU32::from_ptr(ptr) }
    }

    /// Atomically store `value` at byte offset `off` (4-aligned), as a peer
    /// would.
    pub fn store_u32(&self, off: usize, value: u32) {
        self.word(off).store(value, Ordering::SeqCst);
    }

    /// Atomically load the word at byte offset `off` (4-aligned).
    pub fn load_u32(&self, off: usize) -> u32 {
        self.word(off).load(Ordering::SeqCst)
    }

    /// Write `bytes` at `off` with atomic word stores. Both the offset and
    /// the length must be multiples of 4.
    pub fn write_bytes(&self, off: usize, bytes: &[u8]) {
        assert!(
            bytes.len() & 3 == 0,
            "length {} is not a multiple of 4",
            bytes.len()
        );
        for (i, c) in bytes.chunks_exact(4).enumerate() {
            let mut w = [0u8; 4];
            w.copy_from_slice(c);
            self.store_u32(off + 4 * i, u32::from_ne_bytes(w));
        }
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; borrows of `self`
        // (regions, rings) have ended, as `Drop` takes `&mut self`.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An event-channel stand-in: a counter of notifications and a condition
/// variable. A notification sent while nobody waits is not lost: `wait`
/// returns as soon as the counter differs from what the waiter last saw.
#[derive(Debug, Default)]
pub struct Event {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Event {
    /// A fresh event with count 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Send one notification.
    pub fn notify(&self) {
        *lock(&self.count) += 1;
        self.cv.notify_all();
    }

    /// Notifications sent so far.
    pub fn count(&self) -> u64 {
        *lock(&self.count)
    }

    /// Wait until the count differs from `seen` (or `timeout` passes) and
    /// return the count.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let guard = lock(&self.count);
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |c| *c == seen)
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }
}

#[derive(Debug, Default)]
struct Tables {
    next_gref: GrantRef,
    grants: BTreeMap<GrantRef, (DomId, usize, bool)>,
    mapped: BTreeMap<GrantRef, usize>,
    next_port: Port,
    /// port -> (its event, the peer port once bound)
    ports: BTreeMap<Port, (Arc<Event>, Option<Port>)>,
}

/// One in-process "hypervisor" shared by both ends: grants are addresses in
/// this process, mapping returns the granted page itself, and event channels
/// are [`Event`]s.
#[derive(Debug, Default)]
pub struct LocalPlatform {
    t: Mutex<Tables>,
}

impl LocalPlatform {
    /// An empty platform.
    pub fn new() -> Self {
        Self::default()
    }

    /// The [`Event`] that [`EventChannels::notify`] on `port`'s peer signals.
    pub fn event(&self, port: Port) -> Option<Arc<Event>> {
        lock(&self.t).ports.get(&port).map(|(e, _)| e.clone())
    }
}

// SAFETY: `alloc_pages` hands out fresh zeroed page-aligned allocations of
// exactly `count` pages, freed only by `free_pages`.
unsafe impl SharedPages for LocalPlatform {
    fn alloc_pages(&self, count: usize) -> Result<NonNull<u8>, PlatformError> {
        let layout = Layout::from_size_align(count.max(1) * PAGE_SIZE, PAGE_SIZE)
            .map_err(|_| PlatformError::Exhausted)?;
        // SAFETY: non-zero size.
        NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or(PlatformError::Exhausted)
    }

    unsafe fn free_pages(&self, pages: NonNull<u8>, count: usize) {
        if let Ok(layout) = Layout::from_size_align(count.max(1) * PAGE_SIZE, PAGE_SIZE) {
            // SAFETY: the caller promises `pages` came from `alloc_pages(count)`,
            // i.e. from `alloc_zeroed` with this very layout, and is unused.
            unsafe { dealloc(pages.as_ptr(), layout) }
        }
    }
}

// SAFETY: a grant records the page address; revocation refuses while the
// grant is mapped, so a mapping never outlives its grant.
unsafe impl GrantTable for LocalPlatform {
    fn grant(
        &self,
        domid: DomId,
        page: NonNull<u8>,
        readonly: bool,
    ) -> Result<GrantRef, PlatformError> {
        let mut t = lock(&self.t);
        let gref = t.next_gref.max(NR_RESERVED_ENTRIES);
        t.next_gref = gref.checked_add(1).ok_or(PlatformError::Exhausted)?;
        t.grants
            .insert(gref, (domid, page.as_ptr() as usize, readonly));
        Ok(gref)
    }

    unsafe fn end_access(&self, gref: GrantRef) -> Result<(), PlatformError> {
        let mut t = lock(&self.t);
        if t.mapped.get(&gref).copied().unwrap_or(0) > 0 {
            return Err(PlatformError::GrantInUse);
        }
        t.grants.remove(&gref);
        Ok(())
    }
}

// SAFETY: `map` only returns the address of granted pages, which the granting
// side must keep allocated until `end_access` succeeds, and that fails while
// the mapping exists.
unsafe impl GrantMapper for LocalPlatform {
    fn map(
        &self,
        _domid: DomId,
        grefs: &[GrantRef],
        writable: bool,
    ) -> Result<NonNull<u8>, PlatformError> {
        let mut t = lock(&self.t);
        let mut addrs = Vec::with_capacity(grefs.len());
        for g in grefs {
            let &(_, addr, ro) = t.grants.get(g).ok_or(PlatformError::BadPeerReference)?;
            if ro && writable {
                return Err(PlatformError::BadPeerReference);
            }
            addrs.push(addr);
        }
        let first = *addrs.first().ok_or(PlatformError::BadPeerReference)?;
        // In-process there is no remapping: the pages must already be
        // contiguous.
        if addrs
            .iter()
            .enumerate()
            .any(|(i, a)| *a != first + i * PAGE_SIZE)
        {
            return Err(PlatformError::BadPeerReference);
        }
        for g in grefs {
            *t.mapped.entry(*g).or_insert(0) += 1;
        }
        NonNull::new(first as *mut u8).ok_or(PlatformError::BadPeerReference)
    }

    unsafe fn unmap(&self, mapping: NonNull<u8>, pages: usize) {
        let mut t = lock(&self.t);
        let base = mapping.as_ptr() as usize;
        let hits: Vec<GrantRef> = t
            .grants
            .iter()
            .filter(|(_, (_, a, _))| *a >= base && *a < base + pages * PAGE_SIZE)
            .map(|(g, _)| *g)
            .collect();
        for g in hits {
            if let Some(n) = t.mapped.get_mut(&g) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

// SAFETY: `notify` takes the event's mutex, which orders it after the
// caller's earlier writes for whoever takes the mutex in `wait`; a
// notification bumps a counter, so none is lost.
unsafe impl EventChannels for LocalPlatform {
    fn alloc_unbound(&self, _remote: DomId) -> Result<Port, PlatformError> {
        let mut t = lock(&self.t);
        let port = t.next_port.max(1);
        t.next_port = port.checked_add(1).ok_or(PlatformError::Exhausted)?;
        t.ports.insert(port, (Arc::new(Event::new()), None));
        Ok(port)
    }

    fn bind_interdomain(&self, _remote: DomId, remote_port: Port) -> Result<Port, PlatformError> {
        let mut t = lock(&self.t);
        if !matches!(t.ports.get(&remote_port), Some((_, None))) {
            return Err(PlatformError::BadPeerReference);
        }
        let port = t.next_port.max(1);
        t.next_port = port.checked_add(1).ok_or(PlatformError::Exhausted)?;
        let ev = Arc::new(Event::new());
        // A freshly bound port starts pending.
        ev.notify();
        t.ports.insert(port, (ev, Some(remote_port)));
        if let Some(p) = t.ports.get_mut(&remote_port) {
            p.1 = Some(port);
        }
        Ok(port)
    }

    fn notify(&self, port: Port) -> Result<(), PlatformError> {
        let t = lock(&self.t);
        let peer = t
            .ports
            .get(&port)
            .and_then(|(_, p)| *p)
            .ok_or(PlatformError::BadPeerReference)?;
        let ev = t
            .ports
            .get(&peer)
            .map(|(e, _)| e.clone())
            .ok_or(PlatformError::BadPeerReference)?;
        drop(t);
        ev.notify();
        Ok(())
    }

    fn close(&self, port: Port) {
        let mut t = lock(&self.t);
        if let Some((_, Some(peer))) = t.ports.remove(&port) {
            if let Some(p) = t.ports.get_mut(&peer) {
                p.1 = None;
            }
        }
    }
}
