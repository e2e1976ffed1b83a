//! The virtio driver side pvdrivers frontends share: a validated split
//! virtqueue (virtio 1.2 §2.7) on `virtio-drivers`' [`Hal`] DMA boundary and
//! its transports, and the typed little-endian wire structs of the device
//! requests the frontends build ([`wire`]).
//!
//! The queue is device-neutral: a request is a chain of caller buffers,
//! each either read or written by the device ([`Part`]), named by a caller
//! token until it comes back. pv-blk, pv-net and pv-balloon use it.
//!
//! The crate is `no_std` + `alloc`; `test-utils` adds the device side of
//! virtio (`testing`: HALs, a device queue, the fake transport every
//! device fake is built on) and the queue's fuzz driver.
//!
//! # Why not `virtio_drivers::queue::VirtQueue`
//!
//! `VirtQueue` 0.13 is built for one request at a time from a trusted
//! device. With many buffers outstanding at a hostile device it falls short:
//! it truncates used ids to `u16` (an out-of-range id aliases an outstanding
//! buffer), never exposes the used index (a device that runs it ahead goes
//! unseen), reads each used element twice (`peek_used` then `pop_used`: a
//! double fetch), uses a non-wrapping EVENT_IDX test (after the 16-bit index
//! wraps a needed kick is skipped and the queue hangs), and takes its size
//! as a const generic where the device decides it at run time.
//!
//! # What this queue guarantees
//!
//! - The descriptor table is written from a shadow copy and never read back;
//!   a chain is freed from our own record, not from what the device left in
//!   the table.
//! - Every used element is copied once; its id must be the head of a chain
//!   in flight ([`VirtqError::UnknownId`], [`VirtqError::DuplicateId`]), and
//!   the used index may not claim more completions than are in flight
//!   ([`VirtqError::IndexOverrun`]). These three are fatal: the device can no
//!   longer be trusted to keep the ring straight; the caller resets it.
//! - The used length is checked against the chain's device-writable bytes;
//!   a bad one is reported on that completion only ([`Used::len`]), and the
//!   buffers still come back to the caller.
//! - EVENT_IDX uses the wrapping `vring_need_event`; kicks are decided once
//!   for everything made available since the last decision
//!   ([`VirtQueue::kick_needed`]), so a batch costs at most one kick.
//! - Going to sleep is [`VirtQueue::enable_interrupts`]: publish the request
//!   for an interrupt, full fence, re-check the used index. No lost wake-up.
//!
//! # Memory
//!
//! One DMA region in the legacy layout (descriptors, available ring, used
//! ring on the next page), which also serves modern transports, and with
//! indirect descriptors one region of per-head tables of [`INDIRECT_MAX`]
//! entries. Caller buffers go through [`Hal::share`] / [`Hal::unshare`];
//! small per-request structures a driver keeps in its own [`DmaRegion`]
//! (virtio-blk's header and status byte) are named by device address
//! ([`Part::DmaOut`], [`Part::DmaIn`]) and not shared again.

#![no_std]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "test-utils")]
pub mod testing;
pub mod wire;

use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU8, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// `VIRTQ_DESC_F_NEXT`.
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
pub const DESC_F_INDIRECT: u16 = 4;
/// `VIRTQ_USED_F_NO_NOTIFY` (device → driver: do not kick).
pub const USED_F_NO_NOTIFY: u16 = 1;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT` (driver → device: do not interrupt).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Bytes of one descriptor.
pub const DESC_SIZE: usize = 16;
/// Entries of each head's indirect table.
pub const INDIRECT_MAX: usize = 64;

/// What the queue can fail with. Variants name who is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtqError {
    /// Local: the size is zero or not a power of two.
    BadSize,
    /// Local: the HAL could not allocate DMA memory.
    DmaExhausted,
    /// Caller: no buffers, or more than one request may have.
    TooManyParts {
        /// Parts asked for.
        needed: usize,
        /// Most parts a request may have.
        max: usize,
    },
    /// Caller: a buffer longer than 4 GiB.
    BadBuffer,
    /// Local: not enough free descriptors; pop completions first.
    Full,
    /// Device: a used id that is not the head of any chain issued.
    UnknownId {
        /// The id the device wrote.
        id: u32,
    },
    /// Device: a used id whose chain was already completed.
    DuplicateId {
        /// The id the device wrote.
        id: u32,
    },
    /// Device: the used index claims more completions than are in flight.
    IndexOverrun {
        /// Completions the device claims.
        claimed: u16,
        /// Chains in flight.
        in_flight: u16,
    },
    /// Device: a used length beyond the chain's device-writable bytes.
    BadLength {
        /// Length the device wrote.
        len: u32,
        /// Device-writable bytes of the chain.
        writable: u32,
    },
}

impl VirtqError {
    /// True when the device broke the protocol.
    pub fn is_device_fault(&self) -> bool {
        matches!(
            self,
            Self::UnknownId { .. }
                | Self::DuplicateId { .. }
                | Self::IndexOverrun { .. }
                | Self::BadLength { .. }
        )
    }

    /// True when the queue can no longer be trusted: reset the device and
    /// [`VirtQueue::drain`] the queue.
    pub fn needs_reset(&self) -> bool {
        matches!(
            self,
            Self::UnknownId { .. } | Self::DuplicateId { .. } | Self::IndexOverrun { .. }
        )
    }
}

impl fmt::Display for VirtqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadSize => f.write_str("queue size is zero or not a power of two"),
            Self::DmaExhausted => f.write_str("out of DMA memory"),
            Self::TooManyParts { needed, max } => {
                write!(f, "request of {needed} buffers; 1..={max} fit")
            }
            Self::BadBuffer => f.write_str("buffer longer than 4 GiB"),
            Self::Full => f.write_str("queue full: pop completions first"),
            Self::UnknownId { id } => write!(f, "device used id {id}, never issued"),
            Self::DuplicateId { id } => write!(f, "device used id {id} twice"),
            Self::IndexOverrun { claimed, in_flight } => write!(
                f,
                "device claims {claimed} completions with {in_flight} in flight"
            ),
            Self::BadLength { len, writable } => write!(
                f,
                "device used {len} bytes of a chain with {writable} writable bytes"
            ),
        }
    }
}

/// Byte offsets of the rings in the queue region for `size` entries:
/// (available ring, used ring, total length).
pub const fn layout(size: u16) -> (usize, usize, usize) {
    let n = size as usize;
    let avail = DESC_SIZE * n;
    let avail_end = avail + 6 + 2 * n;
    let used = avail_end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    (avail, used, used + 6 + 8 * n)
}

/// The wrapping `vring_need_event`: notify iff `event` lies in `[old, new)`.
#[inline]
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// DMA memory from [`Hal::dma_alloc`], freed on drop. Only touched through
/// atomics: the device may write any of it at any time, so every read is a
/// single load the caller copies and validates.
///
/// Offsets are the owner's (computed from masked indices and constants,
/// never from device data): one out of range or misaligned is a bug in the
/// owner and panics.
#[derive(Debug)]
pub struct DmaRegion<H: Hal> {
    paddr: PhysAddr,
    vaddr: NonNull<u8>,
    pages: usize,
    _hal: PhantomData<H>,
}

impl<H: Hal> DmaRegion<H> {
    /// At least `len` bytes (whole pages, zeroed by the HAL or by
    /// [`DmaRegion::zero`]).
    pub fn new(len: usize) -> Result<Self, VirtqError> {
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        let (paddr, vaddr) = H::dma_alloc(pages, BufferDirection::Both);
        if paddr == 0 {
            return Err(VirtqError::DmaExhausted);
        }
        Ok(Self {
            paddr,
            vaddr,
            pages,
            _hal: PhantomData,
        })
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    /// Never empty (at least one page); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Device address of byte `off`.
    pub fn paddr(&self, off: usize) -> PhysAddr {
        self.paddr + off as PhysAddr
    }

    fn ptr(&self, off: usize, size: usize) -> *mut u8 {
        // Offsets come from masked indices and constants, never from device
        // data; this is an invariant check, not input validation.
        assert!(
            off.is_multiple_of(size) && off + size <= self.len(),
            "DMA offset {off} out of range"
        );
        self.vaddr.as_ptr().wrapping_add(off)
    }

    fn u8(&self, off: usize) -> &AtomicU8 {
        let p = self.ptr(off, 1);
        // SAFETY: `p` is inside the allocation (checked by `ptr`), which
        // `dma_alloc` keeps valid and unaliased until `dma_dealloc` in
        // `Drop`, i.e. for as long as `&self`; it is only accessed
        // atomically in this process, so concurrent device writes are
        // defined.
        unsafe { AtomicU8::from_ptr(p) }
    }

    fn u16(&self, off: usize) -> &AtomicU16 {
        let p = self.ptr(off, 2).cast::<u16>();
        // SAFETY: as for `u8`, with 2-alignment checked by `ptr` (the base
        // is page-aligned).
        unsafe { AtomicU16::from_ptr(p) }
    }

    fn u32(&self, off: usize) -> &AtomicU32 {
        let p = self.ptr(off, 4).cast::<u32>();
        // SAFETY: as for `u8`, with 4-alignment checked by `ptr`.
        unsafe { AtomicU32::from_ptr(p) }
    }

    /// Store a byte (relaxed: publication is ordered by the ring index).
    pub fn put_u8(&self, off: usize, v: u8) {
        self.u8(off).store(v, Ordering::Relaxed);
    }

    /// Load a byte once (relaxed: read after an acquire of the used index).
    pub fn get_u8(&self, off: usize) -> u8 {
        self.u8(off).load(Ordering::Relaxed)
    }

    /// Store a little-endian u16.
    pub fn put_u16(&self, off: usize, v: u16) {
        self.u16(off).store(v.to_le(), Ordering::Relaxed);
    }

    /// Load a little-endian u16 once.
    pub fn get_u16(&self, off: usize) -> u16 {
        u16::from_le(self.u16(off).load(Ordering::Relaxed))
    }

    /// Store a little-endian u32.
    pub fn put_u32(&self, off: usize, v: u32) {
        self.u32(off).store(v.to_le(), Ordering::Relaxed);
    }

    /// Load a little-endian u32 once.
    pub fn get_u32(&self, off: usize) -> u32 {
        u32::from_le(self.u32(off).load(Ordering::Relaxed))
    }

    /// Store a little-endian u64 as two u32 (4-aligned is enough).
    pub fn put_u64(&self, off: usize, v: u64) {
        self.put_u32(off, v as u32);
        self.put_u32(off + 4, (v >> 32) as u32);
    }

    /// Store the wire bytes of `v` (a [`wire`] struct) at `off`, relaxed as
    /// the `put_*` above: four bytes at a time where aligned, else one.
    pub fn write<T: IntoBytes + Immutable>(&self, off: usize, v: &T) {
        let mut at = off;
        let mut rest = v.as_bytes();
        while let Some((&b, tail)) = rest.split_first() {
            if let (true, Some(w)) = (at.is_multiple_of(4), rest.first_chunk::<4>()) {
                // The bytes are already in wire order: store them as they are.
                self.u32(at)
                    .store(u32::from_ne_bytes(*w), Ordering::Relaxed);
                at += 4;
                rest = rest.get(4..).unwrap_or_default();
            } else {
                self.u8(at).store(b, Ordering::Relaxed);
                at += 1;
                rest = tail;
            }
        }
    }

    /// Copy a `T` (a [`wire`] struct) out of `off`, every byte loaded once:
    /// the copy is the caller's to validate.
    pub fn read<T: FromBytes + IntoBytes>(&self, off: usize) -> T {
        let mut v = T::new_zeroed();
        for (i, b) in v.as_mut_bytes().iter_mut().enumerate() {
            *b = self.get_u8(off + i);
        }
        v
    }

    fn put_desc(&self, off: usize, d: &Desc) {
        self.put_u64(off, d.addr);
        self.put_u32(off + 8, d.len);
        self.put_u16(off + 12, d.flags);
        self.put_u16(off + 14, d.next);
    }

    /// Zero the whole region.
    pub fn zero(&self) {
        for off in (0..self.len()).step_by(4) {
            self.u32(off).store(0, Ordering::Relaxed);
        }
    }
}

impl<H: Hal> Drop for DmaRegion<H> {
    fn drop(&mut self) {
        // SAFETY: allocated by `dma_alloc` in `new` with these values and not
        // freed since; the owner (a queue or driver whose device was reset
        // before it is dropped) no longer lets the device use it.
        let _ = unsafe { H::dma_dealloc(self.paddr, self.vaddr, self.pages) };
    }
}

/// A descriptor as we wrote it (the shadow copy; never read back).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Device address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// `VIRTQ_DESC_F_*`.
    pub flags: u16,
    /// Next descriptor when `flags` has NEXT.
    pub next: u16,
}

/// One caller buffer of a chain and who writes it.
#[derive(Clone, Copy, Debug)]
pub enum Part {
    /// The device reads it.
    Out(NonNull<[u8]>),
    /// The device writes it.
    In(NonNull<[u8]>),
    /// The device reads `len` bytes at device address `paddr`, in memory
    /// the caller already shares with the device (its own [`DmaRegion`]);
    /// not passed through [`Hal::share`].
    DmaOut {
        /// Device address.
        paddr: PhysAddr,
        /// Bytes.
        len: u32,
    },
    /// The device writes `len` bytes at `paddr`, as for [`Part::DmaOut`].
    /// Counts towards the chain's device-writable bytes.
    DmaIn {
        /// Device address.
        paddr: PhysAddr,
        /// Bytes.
        len: u32,
    },
}

impl Part {
    /// The caller buffer to share and its direction, or `None` for
    /// memory already shared.
    fn to_share(self) -> Option<(NonNull<[u8]>, BufferDirection)> {
        match self {
            Part::Out(b) => Some((b, BufferDirection::DriverToDevice)),
            Part::In(b) => Some((b, BufferDirection::DeviceToDriver)),
            Part::DmaOut { .. } | Part::DmaIn { .. } => None,
        }
    }
}

#[derive(Debug)]
struct SharedBuf {
    paddr: PhysAddr,
    buf: NonNull<[u8]>,
    dir: BufferDirection,
}

#[derive(Debug)]
struct Rec {
    token: u32,
    chain: Vec<u16>,
    shared: Vec<SharedBuf>,
    writable: u32,
}

#[derive(Debug)]
enum HeadState {
    /// Not the head of a chain since the queue was (re)built.
    Never,
    InFlight(Rec),
    /// Was a head; its completion was delivered.
    Done,
}

/// A completion taken off the used ring; the buffers are unshared and the
/// caller's again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// The token given to [`VirtQueue::add`].
    pub token: u32,
    /// The head descriptor (the id the device used).
    pub head: u16,
    /// Bytes the device says it wrote, checked against the chain's
    /// device-writable bytes ([`VirtqError::BadLength`] otherwise).
    pub len: Result<u32, VirtqError>,
    /// Device-writable bytes of the chain.
    pub writable: u32,
}

/// A split virtqueue; see the module docs.
#[derive(Debug)]
pub struct VirtQueue<H: Hal> {
    index: u16,
    size: u16,
    ring: DmaRegion<H>,
    tables: Option<DmaRegion<H>>,
    avail_off: usize,
    used_off: usize,
    shadow: Vec<Desc>,
    free: Vec<u16>,
    heads: Vec<HeadState>,
    avail_idx: u16,
    /// `avail_idx` at the last kick decision.
    avail_notified: u16,
    last_used: u16,
    in_flight: u16,
    event_idx: bool,
    /// Scratch for `add` and emptied per-chain records kept for reuse, so
    /// the data path does not allocate once warm.
    scratch: Vec<Desc>,
    spare: Vec<(Vec<u16>, Vec<SharedBuf>)>,
}

impl<H: Hal> VirtQueue<H> {
    /// A queue of `size` entries (a power of two) for queue `index`, with
    /// EVENT_IDX and indirect tables if negotiated.
    pub fn new(index: u16, size: u16, event_idx: bool, indirect: bool) -> Result<Self, VirtqError> {
        if size == 0 || !size.is_power_of_two() {
            return Err(VirtqError::BadSize);
        }
        let (avail_off, used_off, len) = layout(size);
        let ring = DmaRegion::new(len)?;
        let tables = if indirect {
            Some(DmaRegion::new(
                usize::from(size) * INDIRECT_MAX * DESC_SIZE,
            )?)
        } else {
            None
        };
        let mut q = Self {
            index,
            size,
            ring,
            tables,
            avail_off,
            used_off,
            shadow: Vec::new(),
            free: Vec::new(),
            heads: Vec::new(),
            avail_idx: 0,
            avail_notified: 0,
            last_used: 0,
            in_flight: 0,
            event_idx,
            scratch: Vec::new(),
            // At most `size` records exist (each in-flight chain holds a
            // head), so pushing every one back never grows this: `drain`
            // and completions stay allocation-free.
            spare: Vec::with_capacity(usize::from(size)),
        };
        q.rebuild();
        Ok(q)
    }

    fn rebuild(&mut self) {
        self.ring.zero();
        if let Some(t) = &self.tables {
            t.zero();
        }
        let n = usize::from(self.size);
        self.shadow.clear();
        self.shadow.resize(n, Desc::default());
        // In place: after the first build these keep their capacity, so a
        // rebuild after a device reset allocates nothing (a Windows
        // miniport resets at DIRQL, where no allocation is allowed).
        self.free.clear();
        self.free.extend((0..self.size).rev());
        self.heads.clear();
        self.heads.resize_with(n, || HeadState::Never);
        self.avail_idx = 0;
        self.avail_notified = 0;
        self.last_used = 0;
        self.in_flight = 0;
    }

    /// Queue index on the device.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Chains in flight.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Whether indirect tables are in use.
    pub fn indirect(&self) -> bool {
        self.tables.is_some()
    }

    /// Whether EVENT_IDX is in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Descriptor, driver and device area addresses (for
    /// `Transport::queue_set`).
    pub fn addresses(&self) -> (PhysAddr, PhysAddr, PhysAddr) {
        (
            self.ring.paddr(0),
            self.ring.paddr(self.avail_off),
            self.ring.paddr(self.used_off),
        )
    }

    /// Most parts one chain may have.
    pub fn max_parts(&self) -> usize {
        if self.tables.is_some() {
            INDIRECT_MAX
        } else {
            usize::from(self.size)
        }
    }

    fn descs_needed(&self, parts: usize) -> usize {
        if self.tables.is_some() && parts > 1 {
            1
        } else {
            parts
        }
    }

    /// Whether a chain of `parts` parts fits now.
    pub fn fits(&self, parts: usize) -> bool {
        parts >= 1 && parts <= self.max_parts() && self.free.len() >= self.descs_needed(parts)
    }

    /// Free descriptors.
    pub fn free_descs(&self) -> usize {
        self.free.len()
    }

    /// The head the next [`VirtQueue::add`] will use, if a descriptor is
    /// free: lets a driver fill per-head structures (a request header in
    /// its own [`DmaRegion`]) before adding the chain that names them.
    pub fn next_head(&self) -> Option<u16> {
        self.free.last().copied()
    }

    /// Build the chain for `parts`, share the buffers with the device and
    /// make the chain available (published at once; the kick decision is
    /// [`VirtQueue::kick_needed`], once per batch). Returns the head.
    ///
    /// # Safety
    ///
    /// Every buffer is valid for reads and writes of its length and is not
    /// accessed by anything but the device until this chain comes back from
    /// [`VirtQueue::pop`] or [`VirtQueue::drain`] (or the queue is dropped
    /// after the device was reset). A [`Part::DmaOut`] / [`Part::DmaIn`]
    /// names `len` bytes of DMA memory the caller owns and shares with the
    /// device for that long.
    pub unsafe fn add(&mut self, parts: &[Part], token: u32) -> Result<u16, VirtqError> {
        if parts.is_empty() || parts.len() > self.max_parts() {
            return Err(VirtqError::TooManyParts {
                needed: parts.len(),
                max: self.max_parts(),
            });
        }
        if !self.fits(parts.len()) {
            return Err(VirtqError::Full);
        }
        let mut writable = 0u32;
        let mut descs = core::mem::take(&mut self.scratch);
        descs.clear();
        for p in parts {
            let (len, write) = match *p {
                Part::Out(b) => (u32::try_from(b.len()).ok(), false),
                Part::In(b) => (u32::try_from(b.len()).ok(), true),
                Part::DmaOut { len, .. } => (Some(len), false),
                Part::DmaIn { len, .. } => (Some(len), true),
            };
            let total = match (len, write) {
                (Some(l), true) => writable.checked_add(l),
                (Some(_), false) => Some(writable),
                (None, _) => None,
            };
            let (Some(len), Some(total)) = (len, total) else {
                self.scratch = descs;
                return Err(VirtqError::BadBuffer);
            };
            writable = total;
            let addr = match *p {
                Part::DmaOut { paddr, .. } | Part::DmaIn { paddr, .. } => paddr,
                Part::Out(_) | Part::In(_) => 0,
            };
            descs.push(Desc {
                addr,
                len,
                flags: if write { DESC_F_WRITE } else { 0 },
                next: 0,
            });
        }
        // Only now, with every check passed, share the caller buffers.
        let (mut chain, mut shared) = self.spare.pop().unwrap_or_default();
        for (p, d) in parts.iter().zip(descs.iter_mut()) {
            let Some((b, dir)) = p.to_share() else {
                continue;
            };
            // SAFETY: the caller guarantees the buffer is valid and untouched
            // by anyone but the device until the chain comes back, when
            // `unshare_all` undoes this.
            let paddr = unsafe { H::share(b, dir) };
            shared.push(SharedBuf { paddr, buf: b, dir });
            d.addr = paddr;
        }

        let head;
        match (&self.tables, descs.len()) {
            (Some(t), n) if n > 1 => {
                let Some(h) = self.free.pop() else {
                    self.unshare_all(&mut shared);
                    self.spare.push((chain, shared));
                    self.scratch = descs;
                    return Err(VirtqError::Full);
                };
                head = h;
                let base = usize::from(h) * INDIRECT_MAX * DESC_SIZE;
                for (i, d) in descs.iter_mut().enumerate() {
                    if i + 1 < n {
                        d.flags |= DESC_F_NEXT;
                        d.next = (i + 1) as u16;
                    }
                    t.put_desc(base + i * DESC_SIZE, d);
                }
                let d = Desc {
                    addr: t.paddr(base),
                    len: (n * DESC_SIZE) as u32,
                    flags: DESC_F_INDIRECT,
                    next: 0,
                };
                self.shadow[usize::from(h)] = d;
                self.ring.put_desc(usize::from(h) * DESC_SIZE, &d);
                chain.push(h);
            }
            _ => {
                for _ in 0..descs.len() {
                    match self.free.pop() {
                        Some(i) => chain.push(i),
                        None => {
                            // `fits` checked the count; never leave
                            // descriptors or shares behind anyway.
                            self.free.extend(chain.iter().rev());
                            chain.clear();
                            self.unshare_all(&mut shared);
                            self.spare.push((chain, shared));
                            self.scratch = descs;
                            return Err(VirtqError::Full);
                        }
                    }
                }
                for (k, d) in descs.iter_mut().enumerate() {
                    if let Some(&nx) = chain.get(k + 1) {
                        d.flags |= DESC_F_NEXT;
                        d.next = nx;
                    }
                    let id = chain[k];
                    self.shadow[usize::from(id)] = *d;
                    self.ring.put_desc(usize::from(id) * DESC_SIZE, d);
                }
                head = chain[0];
            }
        }
        self.scratch = descs;

        let slot = usize::from(self.avail_idx & (self.size - 1));
        self.ring.put_u16(self.avail_off + 4 + 2 * slot, head);
        self.heads[usize::from(head)] = HeadState::InFlight(Rec {
            token,
            chain,
            shared,
            writable,
        });
        self.in_flight += 1;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release (virtio 1.2 §2.7.13.3.1): the device reads `avail.idx`,
        // then the ring entry and descriptors; it must see those written
        // above before the new index.
        self.ring
            .u16(self.avail_off + 2)
            .store(self.avail_idx.to_le(), Ordering::Release);
        Ok(head)
    }

    /// Decide whether the device wants a kick for what was made available
    /// since the last decision (§2.7.10, §2.7.13.4). Call once after a
    /// batch of [`VirtQueue::add`]; a true answer must be followed by a
    /// notification.
    pub fn kick_needed(&mut self) -> bool {
        let old = self.avail_notified;
        let new = self.avail_idx;
        if old == new {
            return false;
        }
        // Full fence: our store of `avail.idx` must be visible to the device
        // before we read its suppression state; the device does the mirror
        // image (write `avail_event` or clear NO_NOTIFY, fence, re-read
        // `avail.idx`), so one of us sees the other and no kick is lost.
        fence(Ordering::SeqCst);
        self.avail_notified = new;
        if self.event_idx {
            let event = self
                .ring
                .get_u16(self.used_off + 4 + 8 * usize::from(self.size));
            need_event(event, new, old)
        } else {
            self.ring.get_u16(self.used_off) & USED_F_NO_NOTIFY == 0
        }
    }

    fn used_idx(&self) -> u16 {
        // Acquire: the used elements (and buffer contents) the device wrote
        // before publishing this index are visible to the loads that follow.
        u16::from_le(self.ring.u16(self.used_off + 2).load(Ordering::Acquire))
    }

    /// Completions the device claims to have published and not yet popped
    /// (as the device wrote it: [`VirtQueue::pop`] still validates each).
    pub fn used_pending(&self) -> u16 {
        self.used_idx().wrapping_sub(self.last_used)
    }

    /// Completions published and not yet popped (unchecked count).
    pub fn has_used(&self) -> bool {
        self.used_idx() != self.last_used
    }

    /// Pop the next completion. `Err` is a fatal device fault (see
    /// [`VirtqError::needs_reset`]); the caller resets the device and
    /// [`VirtQueue::drain`]s.
    pub fn pop(&mut self) -> Result<Option<Used>, VirtqError> {
        let used_idx = self.used_idx();
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.in_flight {
            return Err(VirtqError::IndexOverrun {
                claimed: pending,
                in_flight: self.in_flight,
            });
        }
        let slot = usize::from(self.last_used & (self.size - 1));
        let e = self.used_off + 4 + 8 * slot;
        // Copy the element once; only the copy is used from here on.
        let id = u32::from_le(self.ring.u32(e).load(Ordering::Relaxed));
        let len = u32::from_le(self.ring.u32(e + 4).load(Ordering::Relaxed));
        let Some(state) = self.heads.get_mut(id as usize) else {
            return Err(VirtqError::UnknownId { id });
        };
        let mut rec = match core::mem::replace(state, HeadState::Done) {
            HeadState::InFlight(r) => r,
            HeadState::Never => {
                *state = HeadState::Never;
                return Err(VirtqError::UnknownId { id });
            }
            HeadState::Done => return Err(VirtqError::DuplicateId { id }),
        };
        self.last_used = self.last_used.wrapping_add(1);
        // Back on the free list, last first so the head is reused first.
        // The chain is our record, not the table the device could change.
        for &d in rec.chain.iter().rev() {
            self.free.push(d);
        }
        self.in_flight -= 1;
        self.unshare_all(&mut rec.shared);
        rec.chain.clear();
        self.spare.push((rec.chain, rec.shared));
        let len = if len > rec.writable {
            Err(VirtqError::BadLength {
                len,
                writable: rec.writable,
            })
        } else {
            Ok(len)
        };
        Ok(Some(Used {
            token: rec.token,
            head: id as u16,
            len,
            writable: rec.writable,
        }))
    }

    fn unshare_all(&self, shared: &mut Vec<SharedBuf>) {
        for s in shared.drain(..) {
            // SAFETY: `paddr` came from `H::share` of this very buffer, which
            // the `add` contract keeps valid until now; the device is done
            // with it (it completed, or it was reset).
            unsafe { H::unshare(s.paddr, s.buf, s.dir) };
        }
    }

    /// After the device was reset: hand back the token of every chain in
    /// flight (buffers unshared) and rebuild the queue empty.
    ///
    /// Allocates nothing: the records go back to the spare pool and the
    /// queue is rebuilt in its existing memory.
    pub fn drain(&mut self, f: &mut dyn FnMut(u32)) {
        for i in 0..self.heads.len() {
            if let HeadState::InFlight(mut r) =
                core::mem::replace(&mut self.heads[i], HeadState::Never)
            {
                self.unshare_all(&mut r.shared);
                r.chain.clear();
                let token = r.token;
                self.spare.push((r.chain, r.shared));
                f(token);
            }
        }
        self.rebuild();
    }

    fn used_event_off(&self) -> usize {
        self.avail_off + 4 + 2 * usize::from(self.size)
    }

    /// Ask for an interrupt at the next completion, then re-check (virtio
    /// 1.2 §2.7.10). Returns true if completions are already pending: poll
    /// instead of sleeping.
    pub fn enable_interrupts(&mut self) -> bool {
        if self.event_idx {
            self.ring.put_u16(self.used_event_off(), self.last_used);
        } else {
            self.ring.put_u16(self.avail_off, 0);
        }
        // Full fence: the device must see our `used_event` (or cleared flag)
        // before we re-read `used.idx`; it does the mirror image after
        // publishing, so either we see its completion here or it sees our
        // request and interrupts.
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// With EVENT_IDX, ask for an interrupt at the next completion without
    /// the fence and re-check of [`VirtQueue::enable_interrupts`]: cheap
    /// enough for every poll, for callers that go on polling or call
    /// `enable_interrupts` before they sleep. No-op without EVENT_IDX.
    pub fn set_used_event(&mut self) {
        if self.event_idx {
            self.ring.put_u16(self.used_event_off(), self.last_used);
        }
    }

    /// Ask the device not to interrupt (while polling). With EVENT_IDX the
    /// used event is put just behind the last completion popped, which the
    /// device cannot reach again before we poll.
    pub fn disable_interrupts(&mut self) {
        if self.event_idx {
            self.ring
                .put_u16(self.used_event_off(), self.last_used.wrapping_sub(1));
        } else {
            self.ring.put_u16(self.avail_off, AVAIL_F_NO_INTERRUPT);
        }
    }

    /// Test and fuzz access: the raw queue region (device view).
    #[cfg(feature = "test-utils")]
    pub fn ring_ptr(&self) -> (NonNull<u8>, usize) {
        (self.ring.vaddr, self.ring.len())
    }
}

#[cfg(all(test, feature = "test-utils"))]
mod tests;
