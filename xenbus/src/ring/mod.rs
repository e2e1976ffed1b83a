//! The Xen shared ring (`xen/io/ring.h`), both ends, for an untrusted peer.
//!
//! # What it is and what it refuses
//!
//! One region of shared memory (one page, or `2^order` pages with
//! `ring-page-order`) holds a 64-byte header — `req_prod`, `req_event`,
//! `rsp_prod`, `rsp_event` — and an array of slots, each as large as the larger
//! of the request and response types. The frontend ([`FrontRing`]) produces
//! requests and consumes responses; the backend ([`BackRing`]) consumes
//! requests and answers each in turn. All four indices run free modulo 2^32 and
//! a slot is `index & (size - 1)`.
//!
//! Like `ring.h`, the ring itself has no interlocks: the two ends agree through
//! the indices alone. Unlike `ring.h`, both ends here assume the peer is
//! hostile and can write anything at any time:
//!
//! - shared memory is only touched through atomic loads and stores of 32-bit
//!   words, or (entry bodies on x86_64 with SSE2) through 16-byte `movdqu`
//!   moves in inline assembly, which the compiler cannot see into and which
//!   act as runs of relaxed byte-sized atomic accesses; never through
//!   references to plain data or ordinary Rust loads and stores, so a racing
//!   peer cannot cause undefined behaviour in this process;
//! - every entry is copied out of its slot exactly once and the copy is what
//!   the caller gets; nothing is read back from shared memory after it has been
//!   checked (the double-fetch class of XSA-155);
//! - every index the peer writes is checked before it is used: a backend
//!   rejects a frontend that claims more than `size` unanswered requests or
//!   moves `req_prod` backwards; a frontend rejects a backend that claims more
//!   responses than it has requests outstanding. The check fails into a
//!   *stopped* state: the error is latched, every later call returns it, and
//!   nothing is read from or written to the ring again. Reconnecting means a
//!   new ring;
//! - the frontend never has more than `size` requests outstanding
//!   ([`RingError::Full`]), which is the flow control `ring.h` leaves to its
//!   users;
//! - slot offsets are always masked, so no index value can reach outside the
//!   region.
//!
//! Whether an *entry's contents* make sense (a response id that was never
//! issued, a segment count above 11) is for the protocol code to decide on the
//! copy it was given; [`IdTracker`] does the id part for frontends and
//! [`FrontRing::stop`] lets the caller latch such a fault into the ring.
//!
//! # Notification hold-off
//!
//! A producer only needs to raise an event if the consumer asked for one at an
//! index it has just passed: the consumer, before sleeping, writes
//! `*_event = consumer index + 1` and re-checks for work; the producer, after
//! publishing, notifies iff the event index lies in `(old, new]` modulo 2^32
//! ([`notify_needed`]). Each side has a full fence between its store and its
//! load, and that pair of fences is what makes it impossible for both to miss
//! each other (see `tests/ring_wakeup_model.rs`).

use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::wire::sring::SRING_HEADER_SIZE;

mod back;
mod front;
mod ids;

pub use back::BackRing;
pub use front::FrontRing;
pub use ids::IdTracker;

/// Size of a Xen page; ring regions are made of these.
pub const PAGE_SIZE: usize = 4096;
/// Largest `ring-page-order` this crate offers or accepts (16 pages).
pub const MAX_RING_PAGE_ORDER: u32 = 4;

/// A type that can sit in a ring slot: plain data, any byte pattern valid, a
/// multiple of 4 bytes long (checked when a ring is built) so it can be moved
/// as whole 32-bit atomic words.
pub trait RingEntry: FromBytes + IntoBytes + Immutable + KnownLayout + Copy {}
impl<T: FromBytes + IntoBytes + Immutable + KnownLayout + Copy> RingEntry for T {}

/// Everything that can go wrong on a ring. Variants say whose fault it is;
/// callers decide with [`RingError::is_peer_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// Local: the region is not 4-byte aligned, or too small for the header
    /// and one slot, or too large for 32-bit indices.
    BadRegion {
        /// Length of the region offered.
        len: usize,
    },
    /// Local: `size` requests are already outstanding; consume responses first.
    Full,
    /// Local: every consumed request has been answered already.
    NoRequestToAnswer,
    /// Local: every id is in flight.
    IdsExhausted,
    /// Peer (frontend): `req_prod` claims more than `size` requests beyond
    /// the last response (`RING_REQUEST_PROD_OVERFLOW`).
    RequestOverrun {
        /// The producer index the frontend wrote.
        req_prod: u32,
        /// The backend's private response producer.
        rsp_prod_pvt: u32,
    },
    /// Peer (frontend): `req_prod` moved back behind requests already consumed.
    RequestProducerRewound {
        /// The producer index the frontend wrote.
        req_prod: u32,
        /// The backend's private request consumer.
        req_cons: u32,
    },
    /// Peer (backend): `rsp_prod` claims more responses than there are
    /// requests outstanding (covers `RING_RESPONSE_PROD_OVERFLOW`).
    ResponseOverrun {
        /// The producer index the backend wrote.
        rsp_prod: u32,
        /// The frontend's private response consumer.
        rsp_cons: u32,
        /// Requests published and not yet answered.
        outstanding: u32,
    },
    /// Peer (backend): a response carries an id that is not outstanding and
    /// never was.
    UnknownResponseId {
        /// The id the backend wrote.
        id: u64,
    },
    /// Peer (backend): a response answers an id that was already answered.
    DuplicateResponseId {
        /// The id the backend wrote.
        id: u64,
    },
}

impl RingError {
    /// True when the other end broke the protocol: the connection should be
    /// torn down (and may be rebuilt); the local side did nothing wrong.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Self::RequestOverrun { .. }
                | Self::RequestProducerRewound { .. }
                | Self::ResponseOverrun { .. }
                | Self::UnknownResponseId { .. }
                | Self::DuplicateResponseId { .. }
        )
    }

    /// True when the ring is stopped for good and a new connection is needed.
    pub fn should_reconnect(&self) -> bool {
        self.is_peer_fault()
    }
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadRegion { len } => write!(
                f,
                "ring region of {len} bytes is misaligned or cannot hold the header and one slot"
            ),
            Self::Full => f.write_str("ring full: every slot has a request outstanding"),
            Self::NoRequestToAnswer => f.write_str("no consumed request is waiting for a response"),
            Self::IdsExhausted => f.write_str("every request id is in flight"),
            Self::RequestOverrun { req_prod, rsp_prod_pvt } => write!(
                f,
                "frontend overran the ring: req_prod {req_prod:#x} is more than a ring beyond responses at {rsp_prod_pvt:#x}"
            ),
            Self::RequestProducerRewound { req_prod, req_cons } => write!(
                f,
                "frontend moved req_prod back to {req_prod:#x}, behind consumed requests at {req_cons:#x}"
            ),
            Self::ResponseOverrun { rsp_prod, rsp_cons, outstanding } => write!(
                f,
                "backend overran the ring: rsp_prod {rsp_prod:#x} is beyond {outstanding} outstanding requests from {rsp_cons:#x}"
            ),
            Self::UnknownResponseId { id } => {
                write!(f, "backend answered id {id:#x}, which was never issued")
            }
            Self::DuplicateResponseId { id } => {
                write!(f, "backend answered id {id:#x} twice")
            }
        }
    }
}

/// The notify rule of `RING_PUSH_{REQUESTS,RESPONSES}_AND_CHECK_NOTIFY`: after
/// moving a producer index from `old` to `new`, the consumer must be notified
/// iff its `event` index lies in `(old, new]` modulo 2^32.
#[inline]
pub fn notify_needed(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// `__RING_SIZE`: slots that fit in `region_bytes` after the 64-byte header,
/// with slots of `entry_size` bytes, rounded down to a power of two. Zero if
/// not even one fits.
pub const fn ring_size(region_bytes: usize, entry_size: usize) -> u32 {
    if entry_size == 0 || region_bytes < SRING_HEADER_SIZE + entry_size {
        return 0;
    }
    let n = (region_bytes - SRING_HEADER_SIZE) / entry_size;
    let n = if n > u32::MAX as usize {
        u32::MAX
    } else {
        n as u32
    };
    1 << (31 - n.leading_zeros())
}

/// The slot size of a ring of `Req` and `Rsp`: the size of their union.
pub const fn slot_size<Req, Rsp>() -> usize {
    let (a, b) = (core::mem::size_of::<Req>(), core::mem::size_of::<Rsp>());
    if a > b {
        a
    } else {
        b
    }
}

/// Shared ring memory, borrowed for `'a`: the only way this crate touches it
/// is through the atomic accessors below.
#[derive(Debug)]
pub struct RingRegion<'a> {
    base: NonNull<u8>,
    len: usize,
    _mem: PhantomData<&'a [AtomicU32]>,
}

// SAFETY: the region is only ever accessed through `AtomicU32` operations,
// which are sound from any thread; the constructor's contract keeps the memory
// valid for `'a` wherever the value is moved.
unsafe impl Send for RingRegion<'_> {}
// SAFETY: as for `Send`: shared access from several threads is atomic only.
unsafe impl Sync for RingRegion<'_> {}

impl<'a> RingRegion<'a> {
    /// Wraps `len` bytes of shared memory at `base`.
    ///
    /// Fails with [`RingError::BadRegion`] if `base` is not 4-byte aligned or
    /// `len` cannot hold the header and one 4-byte word.
    ///
    /// # Safety
    ///
    /// For all of `'a`:
    /// - `base..base + len` is valid for reads and writes (mapped, and not
    ///   unmapped, revoked or freed until `'a` ends);
    /// - in this address space that memory is only accessed through atomic or
    ///   volatile operations (never through `&`/`&mut` to non-atomic data),
    ///   which is what makes concurrent writes by the peer defined behaviour.
    ///
    /// The peer (another domain, another thread, C code) may write any bytes
    /// at any time: that is allowed and the ring code is built for it.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Result<Self, RingError> {
        if base.as_ptr() as usize & 3 != 0 || len < SRING_HEADER_SIZE + 4 || len > u32::MAX as usize
        {
            return Err(RingError::BadRegion { len });
        }
        Ok(Self {
            base,
            len,
            _mem: PhantomData,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region holds at least a header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The 32-bit word at byte offset `off`.
    ///
    /// Callers guarantee `off % 4 == 0` and `off + 4 <= len`: header offsets
    /// are constants below 64, and slot offsets are `64 + (idx & mask) *
    /// slot + 4k` with `64 + size * slot <= len` by construction of `size`.
    #[inline]
    fn word(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off & 3 == 0 && off + 4 <= self.len);
        let ptr = self.base.as_ptr().wrapping_add(off).cast::<u32>();
        // SAFETY: `off + 4 <= len` (see above), so the pointer stays inside
        // the region; `base` and `off` are 4-aligned, as `AtomicU32` needs; the
        // constructor's contract keeps the memory valid for `'a` (which
        // outlives `&self`) and accessed only atomically, so viewing it as an
        // `AtomicU32` is sound even while the peer writes to it.
        unsafe { AtomicU32::from_ptr(ptr) }
    }

    /// Copies a `T` out of the region at byte offset `off` with relaxed
    /// atomic loads (16-byte [`wide`] moves where available, 32-bit words for
    /// the rest; ordering comes from the caller's acquire of the producer
    /// index). The copy is taken once; the peer may change the slot afterwards
    /// without affecting it.
    ///
    /// Callers guarantee `off % 4 == 0` and `off + size_of::<T>() <= len` (a
    /// slot offset, see [`Geometry::slot_offset`]).
    #[inline]
    fn read_entry<T: RingEntry>(&self, off: usize) -> T {
        debug_assert!(off & 3 == 0 && off + core::mem::size_of::<T>() <= self.len);
        let mut out = T::new_zeroed();
        let bytes = out.as_mut_bytes();
        let wide = wide::load_prefix(self, off, bytes);
        for (i, chunk) in bytes[wide..].chunks_exact_mut(4).enumerate() {
            let w = self.word(off + wide + 4 * i).load(Ordering::Relaxed);
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        out
    }

    /// Stores `value` at byte offset `off` with relaxed atomic stores (as in
    /// [`RingRegion::read_entry`]; the caller's release store of the producer
    /// index publishes them). Same contract on `off`.
    #[inline]
    fn write_entry<T: RingEntry>(&self, off: usize, value: &T) {
        debug_assert!(off & 3 == 0 && off + core::mem::size_of::<T>() <= self.len);
        let bytes = value.as_bytes();
        let wide = wide::store_prefix(self, off, bytes);
        for (i, chunk) in bytes[wide..].chunks_exact(4).enumerate() {
            let mut w = [0u8; 4];
            w.copy_from_slice(chunk);
            self.word(off + wide + 4 * i)
                .store(u32::from_ne_bytes(w), Ordering::Relaxed);
        }
    }
}

/// Entry copies in 16-byte moves, where the target has them.
///
/// Why: a 112-byte blkif entry is 28 separate 32-bit atomic accesses, against
/// 7 16-byte moves in C's struct copy. When the slot's cache lines sit in the
/// peer core's cache (always, on a busy ring), each access holds a load- or
/// store-queue entry while the line is fetched; with four times as many
/// entries per line, fewer lines are in flight at once and a burst of
/// entries takes longer (measured: about 0.7x C's rate at batch 32 with
/// 32-bit words, at least 1.0x with 16-byte moves; 64-bit atomics did not
/// help enough).
///
/// How, soundly: the move is one `movdqu` in inline assembly. The compiler
/// treats the block as opaque, so no Rust-level plain access to the racing
/// memory exists; what the instruction does is what a run of relaxed
/// byte-sized atomic accesses would do (x86 gives no tearing guarantee
/// across the 16 bytes, and none is needed: the bytes are copied once, then
/// validated). It is an ordinary write-back load/store, so x86's ordering
/// applies as to the atomics it replaces: the blocks are not `nomem`, which
/// keeps them after the caller's acquire load of the producer index and
/// before its release store. Bounds are the same as for 32-bit words: only
/// whole 16-byte pieces of the entry are moved, inside `off..off + len`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2", not(miri)))]
mod wide {
    use core::arch::asm;
    use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};

    use super::RingRegion;

    /// Copies the longest 16-byte-multiple prefix of `out` from the region at
    /// `off`; returns its length. Same contract on `off` as `read_entry`.
    #[inline(always)]
    pub(super) fn load_prefix(mem: &RingRegion<'_>, off: usize, out: &mut [u8]) -> usize {
        let n = out.len() & !15;
        debug_assert!(off + n <= mem.len);
        for (i, chunk) in out[..n].chunks_exact_mut(16).enumerate() {
            let src = mem.base.as_ptr().wrapping_add(off + 16 * i);
            let v: __m128i;
            // SAFETY: `src..src + 16` lies inside the region (`off + n <=
            // len`, the caller's contract), which the constructor's contract
            // keeps valid for reads; `movdqu` needs no alignment. The region
            // is never accessed by plain Rust code, so the peer's concurrent
            // writes race only with this opaque instruction (see the module
            // comment). Not `pure`: each block runs exactly once.
            unsafe {
                asm!(
                    "movdqu {v}, xmmword ptr [{src}]",
                    src = in(reg) src,
                    v = out(xmm_reg) v,
                    options(nostack, preserves_flags, readonly),
                );
            }
            // SAFETY: `chunk` is 16 bytes of `out`, ours alone; unaligned
            // stores are what `_mm_storeu_si128` is for.
            unsafe { _mm_storeu_si128(chunk.as_mut_ptr().cast(), v) };
        }
        n
    }

    /// Stores the longest 16-byte-multiple prefix of `bytes` into the region
    /// at `off`; returns its length. Same contract on `off` as `write_entry`.
    #[inline(always)]
    pub(super) fn store_prefix(mem: &RingRegion<'_>, off: usize, bytes: &[u8]) -> usize {
        let n = bytes.len() & !15;
        debug_assert!(off + n <= mem.len);
        for (i, chunk) in bytes[..n].chunks_exact(16).enumerate() {
            let dst = mem.base.as_ptr().wrapping_add(off + 16 * i);
            // SAFETY: `chunk` is 16 bytes of the caller's value (plain local
            // data); unaligned loads are what `_mm_loadu_si128` is for.
            let v = unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) };
            // SAFETY: as in `load_prefix`: `dst..dst + 16` is inside the
            // region, valid for writes, and only this opaque instruction
            // touches it.
            unsafe {
                asm!(
                    "movdqu xmmword ptr [{dst}], {v}",
                    dst = in(reg) dst,
                    v = in(xmm_reg) v,
                    options(nostack, preserves_flags),
                );
            }
        }
        n
    }
}

/// Elsewhere (no SSE2, e.g. bare-metal x86_64 without vector registers; other
/// architectures; Miri): no wide moves, everything goes in 32-bit atomics.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2", not(miri))))]
mod wide {
    use super::RingRegion;

    #[inline(always)]
    pub(super) fn load_prefix(_: &RingRegion<'_>, _: usize, _: &mut [u8]) -> usize {
        0
    }

    #[inline(always)]
    pub(super) fn store_prefix(_: &RingRegion<'_>, _: usize, _: &[u8]) -> usize {
        0
    }
}

/// Geometry shared by both ends.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    size: u32,
    slot: usize,
}

impl Geometry {
    fn new<Req: RingEntry, Rsp: RingEntry>(region: &RingRegion<'_>) -> Result<Self, RingError> {
        const {
            assert!(core::mem::size_of::<Req>() & 3 == 0 && core::mem::size_of::<Req>() > 0);
            assert!(core::mem::size_of::<Rsp>() & 3 == 0 && core::mem::size_of::<Rsp>() > 0);
        }
        let slot = slot_size::<Req, Rsp>();
        let size = ring_size(region.len(), slot);
        if size == 0 {
            return Err(RingError::BadRegion { len: region.len() });
        }
        Ok(Self { size, slot })
    }

    /// Byte offset of the slot that `idx` maps to; always inside the region.
    #[inline]
    fn slot_offset(&self, idx: u32) -> usize {
        SRING_HEADER_SIZE + (idx & (self.size - 1)) as usize * self.slot
    }
}
