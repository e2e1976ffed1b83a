//! A split virtqueue (virtio 1.2 §2.7) for one untrusted device, on
//! `virtio-drivers`' [`Hal`] DMA boundary.
//!
//! # Why not `virtio_drivers::queue::VirtQueue`
//!
//! `VirtQueue` 0.13 is built for one request at a time from a trusted
//! device. Driving a queue of outstanding requests against a hostile device
//! needs what it does not give:
//!
//! - it truncates used ids to `u16` (`id as u16`), so an out-of-range id
//!   aliases an outstanding request instead of being rejected;
//! - it never exposes the used index, so a device that runs it ahead of what
//!   was submitted cannot be detected;
//! - `peek_used` and `pop_used` each read the used element (a double fetch);
//! - its EVENT_IDX check (`avail_idx >= avail_event + 1`) is not the
//!   wrapping `vring_need_event`, so after the 16-bit index wraps a needed
//!   notification can be skipped and the queue hangs;
//! - the queue size is a const generic, where the device decides it at run
//!   time; a reset cannot reuse the queue.
//!
//! This queue keeps the good parts of that design (a shadow descriptor table
//! that is never read back, DMA through [`Hal::share`]/[`Hal::unshare`]) and
//! adds the checks: every used element is copied once, its id must be the
//! head of a chain in flight, and the used index may not claim more
//! completions than are outstanding.
//!
//! # Memory
//!
//! One DMA region in the legacy layout (descriptors, available ring, then
//! the used ring on the next page), which also serves modern transports; and
//! one region of per-head blocks holding each request's header, discard
//! segment, status byte and indirect table, so a request needs no allocation
//! the device can see beyond the caller's buffers.

use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU8, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::BlkError;

/// `VIRTQ_DESC_F_NEXT`.
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
pub const DESC_F_INDIRECT: u16 = 4;
/// `VIRTQ_USED_F_NO_NOTIFY`.
const USED_F_NO_NOTIFY: u16 = 1;

/// Bytes of one descriptor.
pub const DESC_SIZE: usize = 16;
/// Descriptors in each head's indirect table.
pub const INDIRECT_MAX: usize = 64;
/// Offsets inside a per-head block.
pub const BLOCK_HDR: usize = 0;
/// The discard / write-zeroes segment.
pub const BLOCK_SEG: usize = 16;
/// The status byte.
pub const BLOCK_STATUS: usize = 32;
/// The indirect table.
pub const BLOCK_INDIRECT: usize = 64;
/// Bytes of a per-head block.
pub const BLOCK_SIZE: usize = BLOCK_INDIRECT + INDIRECT_MAX * DESC_SIZE;

/// Byte offsets of the rings inside the queue region for `size` entries:
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
/// atomics: the device may write any of it at any time.
#[derive(Debug)]
struct Dma<H: Hal> {
    paddr: PhysAddr,
    vaddr: NonNull<u8>,
    pages: usize,
    _hal: PhantomData<H>,
}

impl<H: Hal> Dma<H> {
    fn new(len: usize) -> Result<Self, BlkError> {
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        let (paddr, vaddr) = H::dma_alloc(pages, BufferDirection::Both);
        if paddr == 0 {
            return Err(BlkError::Transport);
        }
        Ok(Self {
            paddr,
            vaddr,
            pages,
            _hal: PhantomData,
        })
    }

    fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    fn paddr(&self, off: usize) -> PhysAddr {
        self.paddr + off as PhysAddr
    }

    fn ptr(&self, off: usize, size: usize) -> *mut u8 {
        // Offsets are computed from masked indices and constants, never from
        // device data; this is an invariant check, not input validation.
        assert!(
            off.is_multiple_of(size) && off + size <= self.len(),
            "DMA offset {off} out of range"
        );
        self.vaddr.as_ptr().wrapping_add(off)
    }

    fn u8(&self, off: usize) -> &AtomicU8 {
        let p = self.ptr(off, 1);
        // SAFETY: `p` is inside the allocation (checked by `ptr`), which
        // `dma_alloc` guarantees valid and unaliased until `dma_dealloc` in
        // `Drop`, i.e. for as long as `&self`; it is only ever accessed
        // atomically in this process, so concurrent device writes are defined.
        unsafe { AtomicU8::from_ptr(p) }
    }

    fn u16(&self, off: usize) -> &AtomicU16 {
        let p = self.ptr(off, 2).cast::<u16>();
        // SAFETY: as for `u8`; `ptr` checked 2-alignment (the base is
        // page-aligned).
        unsafe { AtomicU16::from_ptr(p) }
    }

    fn u32(&self, off: usize) -> &AtomicU32 {
        let p = self.ptr(off, 4).cast::<u32>();
        // SAFETY: as for `u8`; `ptr` checked 4-alignment (the base is
        // page-aligned).
        unsafe { AtomicU32::from_ptr(p) }
    }

    fn put_u16(&self, off: usize, v: u16) {
        self.u16(off).store(v.to_le(), Ordering::Relaxed);
    }

    fn put_u32(&self, off: usize, v: u32) {
        self.u32(off).store(v.to_le(), Ordering::Relaxed);
    }

    fn put_u64(&self, off: usize, v: u64) {
        self.put_u32(off, v as u32);
        self.put_u32(off + 4, (v >> 32) as u32);
    }

    fn zero(&self) {
        for off in (0..self.len()).step_by(4) {
            self.u32(off).store(0, Ordering::Relaxed);
        }
    }
}

impl<H: Hal> Drop for Dma<H> {
    fn drop(&mut self) {
        // SAFETY: allocated by `dma_alloc` in `new` with these values and not
        // freed since; the owner (the queue, whose device was reset before
        // it is dropped) no longer lets the device use it.
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

/// One caller buffer shared with the device.
#[derive(Debug)]
struct SharedBuf {
    paddr: PhysAddr,
    buf: NonNull<[u8]>,
    dir: BufferDirection,
}

/// What a request in flight needs at completion.
#[derive(Debug)]
pub struct InFlight {
    /// Caller's token value.
    pub token: u32,
    /// Ring descriptors held (the head first).
    chain: Vec<u16>,
    shared: Vec<SharedBuf>,
    /// Device-writable bytes (data in + status).
    pub writable: u32,
    /// Data bytes moved on success.
    pub data: u32,
    /// True when the device writes the data (read, get-id).
    pub data_in: bool,
    /// Operation kind, for errors.
    pub op: crate::OpKind,
}

impl InFlight {
    /// A record for `token`, before `add` fills in the chain.
    pub fn new(token: u32, op: crate::OpKind, data: u32, data_in: bool, writable: u32) -> Self {
        Self {
            token,
            chain: Vec::new(),
            shared: Vec::new(),
            writable,
            data,
            data_in,
            op,
        }
    }
}

#[derive(Debug)]
enum HeadState {
    /// Never the head of a chain since the queue was (re)built.
    Never,
    InFlight(InFlight),
    /// Was a head; its completion was delivered.
    Done,
}

/// One buffer of a request as [`SplitQueue::add`] takes it.
#[derive(Clone, Copy, Debug)]
pub enum Part {
    /// A caller buffer the device reads.
    Out(NonNull<[u8]>),
    /// A caller buffer the device writes.
    In(NonNull<[u8]>),
    /// The head's request header (16 bytes, device reads).
    Header,
    /// The head's discard / write-zeroes segment (16 bytes, device reads).
    Segment,
    /// The head's status byte (device writes).
    Status,
}

/// A completion popped from the used ring, id already matched.
#[derive(Debug)]
pub struct Used {
    /// The request.
    pub req: InFlight,
    /// Length the device reported, unchecked.
    pub len: u32,
    /// The status byte, read once.
    pub status: u8,
}

/// A split virtqueue; see the module docs.
#[derive(Debug)]
pub struct SplitQueue<H: Hal> {
    index: u16,
    size: u16,
    ring: Dma<H>,
    blocks: Dma<H>,
    avail_off: usize,
    used_off: usize,
    shadow: Vec<Desc>,
    free: Vec<u16>,
    heads: Vec<HeadState>,
    avail_idx: u16,
    /// `avail_idx` at the last notification decision.
    avail_notified: u16,
    last_used: u16,
    in_flight: u16,
    event_idx: bool,
    indirect: bool,
}

impl<H: Hal> SplitQueue<H> {
    /// A queue of `size` entries (a power of two) for queue `index`.
    pub fn new(index: u16, size: u16, event_idx: bool, indirect: bool) -> Result<Self, BlkError> {
        if size == 0 || !size.is_power_of_two() {
            return Err(BlkError::Transport);
        }
        let (avail_off, used_off, len) = layout(size);
        let ring = Dma::new(len)?;
        let blocks = Dma::new(BLOCK_SIZE * usize::from(size))?;
        let mut q = Self {
            index,
            size,
            ring,
            blocks,
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
            indirect,
        };
        q.rebuild();
        Ok(q)
    }

    /// Forget everything and zero the rings. Only after the device was reset
    /// and every request in flight taken back with [`SplitQueue::drain`].
    fn rebuild(&mut self) {
        self.ring.zero();
        self.blocks.zero();
        let n = usize::from(self.size);
        self.shadow.clear();
        self.shadow.resize(n, Desc::default());
        self.free = (0..self.size).rev().collect();
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

    /// Requests in flight.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Whether indirect tables are used.
    pub fn indirect(&self) -> bool {
        self.indirect
    }

    /// Descriptor area, driver area, device area (for `Transport::queue_set`).
    pub fn addresses(&self) -> (PhysAddr, PhysAddr, PhysAddr) {
        (
            self.ring.paddr(0),
            self.ring.paddr(self.avail_off),
            self.ring.paddr(self.used_off),
        )
    }

    /// Most parts (including header and status) one request may have.
    pub fn max_parts(&self) -> usize {
        if self.indirect {
            INDIRECT_MAX
        } else {
            usize::from(self.size)
        }
    }

    /// Whether a request of `parts` parts fits now.
    pub fn fits(&self, parts: usize) -> bool {
        let needed = if self.indirect { 1 } else { parts };
        parts <= self.max_parts() && self.free.len() >= needed
    }

    /// Header bytes of the head's block (written by the caller before `add`).
    pub fn write_header(&self, head: u16, ty: u32, sector: u64) {
        let b = usize::from(head) * BLOCK_SIZE;
        self.blocks.put_u32(b + BLOCK_HDR, ty);
        self.blocks.put_u32(b + BLOCK_HDR + 4, 0);
        self.blocks.put_u64(b + BLOCK_HDR + 8, sector);
    }

    /// The discard / write-zeroes segment of the head's block.
    pub fn write_segment(&self, head: u16, sector: u64, sectors: u32, flags: u32) {
        let b = usize::from(head) * BLOCK_SIZE;
        self.blocks.put_u64(b + BLOCK_SEG, sector);
        self.blocks.put_u32(b + BLOCK_SEG + 8, sectors);
        self.blocks.put_u32(b + BLOCK_SEG + 12, flags);
    }

    /// The head the next `add` will use, if one is free.
    pub fn next_head(&self) -> Option<u16> {
        self.free.last().copied()
    }

    fn write_desc_at(&self, off: usize, d: &Desc) {
        self.blocks_or_ring_put(off, d, false);
    }

    fn blocks_or_ring_put(&self, off: usize, d: &Desc, in_blocks: bool) {
        let m = if in_blocks { &self.blocks } else { &self.ring };
        m.put_u64(off, d.addr);
        m.put_u32(off + 8, d.len);
        m.put_u16(off + 12, d.flags);
        m.put_u16(off + 14, d.next);
    }

    /// Build the chain for `parts`, share the caller buffers, and publish it
    /// on the available ring. The header (and segment) must already be in
    /// the head's block (see [`SplitQueue::next_head`]). Returns whether the
    /// device must be notified.
    ///
    /// # Safety
    ///
    /// Every `In`/`Out` buffer is valid for reads and writes of its length
    /// and untouched by anything but the device until this request comes
    /// back from [`SplitQueue::pop`] or [`SplitQueue::drain`].
    pub unsafe fn add(
        &mut self,
        parts: &[Part],
        mut req: InFlight,
    ) -> Result<(u16, bool), BlkError> {
        if parts.is_empty() || parts.len() > self.max_parts() {
            return Err(BlkError::TooManySegments {
                needed: parts.len(),
                max: self.max_parts(),
            });
        }
        if !self.fits(parts.len()) {
            return Err(BlkError::QueueFull);
        }
        let Some(&head) = self.free.last() else {
            return Err(BlkError::QueueFull);
        };
        let block = usize::from(head) * BLOCK_SIZE;
        // Descriptors as the device will see them, in order.
        let mut descs: Vec<Desc> = Vec::with_capacity(parts.len());
        for p in parts {
            let (addr, len, flags) = match *p {
                Part::Header => (self.blocks.paddr(block + BLOCK_HDR), 16, 0),
                Part::Segment => (self.blocks.paddr(block + BLOCK_SEG), 16, 0),
                Part::Status => (self.blocks.paddr(block + BLOCK_STATUS), 1, DESC_F_WRITE),
                Part::Out(b) | Part::In(b) => {
                    let Ok(len) = u32::try_from(b.len()) else {
                        self.unshare_all(&mut req.shared);
                        return Err(BlkError::BadBuffer);
                    };
                    let dir = if matches!(p, Part::In(_)) {
                        BufferDirection::DeviceToDriver
                    } else {
                        BufferDirection::DriverToDevice
                    };
                    // SAFETY: the caller guarantees the buffer is valid and
                    // not accessed by anyone else until the request comes
                    // back, when `unshare_all` undoes this.
                    let paddr = unsafe { H::share(b, dir) };
                    req.shared.push(SharedBuf { paddr, buf: b, dir });
                    let flags = if dir == BufferDirection::DeviceToDriver {
                        DESC_F_WRITE
                    } else {
                        0
                    };
                    (paddr, len, flags)
                }
            };
            descs.push(Desc {
                addr,
                len,
                flags,
                next: 0,
            });
        }
        // Status byte starts as a value the device never legitimately
        // leaves, so a device that "completes" without writing it is caught.
        self.blocks
            .u8(block + BLOCK_STATUS)
            .store(0xff, Ordering::Relaxed);

        if self.indirect {
            let n = descs.len();
            for (i, d) in descs.iter_mut().enumerate() {
                if i + 1 < n {
                    d.flags |= DESC_F_NEXT;
                    d.next = (i + 1) as u16;
                }
                self.blocks_or_ring_put(block + BLOCK_INDIRECT + i * DESC_SIZE, d, true);
            }
            self.free.pop();
            let d = Desc {
                addr: self.blocks.paddr(block + BLOCK_INDIRECT),
                len: (n * DESC_SIZE) as u32,
                flags: DESC_F_INDIRECT,
                next: 0,
            };
            self.shadow[usize::from(head)] = d;
            self.write_desc_at(usize::from(head) * DESC_SIZE, &d);
            req.chain.push(head);
        } else {
            let mut ids = Vec::with_capacity(descs.len());
            for _ in 0..descs.len() {
                match self.free.pop() {
                    Some(i) => ids.push(i),
                    None => {
                        // `fits` checked the count; unreachable, but never
                        // leave descriptors or shares behind.
                        self.free.extend(ids.iter().rev());
                        self.unshare_all(&mut req.shared);
                        return Err(BlkError::QueueFull);
                    }
                }
            }
            for (k, d) in descs.iter_mut().enumerate() {
                if let Some(&nx) = ids.get(k + 1) {
                    d.flags |= DESC_F_NEXT;
                    d.next = nx;
                }
                let id = ids[k];
                self.shadow[usize::from(id)] = *d;
                self.write_desc_at(usize::from(id) * DESC_SIZE, d);
            }
            req.chain = ids;
        }

        let slot = usize::from(self.avail_idx & (self.size - 1));
        self.ring.put_u16(self.avail_off + 4 + 2 * slot, head);
        self.heads[usize::from(head)] = HeadState::InFlight(req);
        self.in_flight += 1;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release (virtio 1.2 §2.7.13.3.1): the device, which reads
        // `avail.idx` and then the ring entry and descriptors, must see the
        // descriptors and ring entry written above before the new index.
        self.ring
            .u16(self.avail_off + 2)
            .store(self.avail_idx.to_le(), Ordering::Release);
        Ok((head, self.kick_needed()))
    }

    /// Decide whether the device wants a notification for what was made
    /// available since the last decision (§2.7.10 and §2.7.13.4).
    fn kick_needed(&mut self) -> bool {
        // Full fence: our store of `avail.idx` must be visible to the device
        // before we read its suppression state; the device does the mirror
        // image (write `avail_event`, fence, re-read `avail.idx`), so one of
        // us sees the other and no notification is lost.
        fence(Ordering::SeqCst);
        let old = self.avail_notified;
        let new = self.avail_idx;
        self.avail_notified = new;
        if self.event_idx {
            let off = self.used_off + 4 + 8 * usize::from(self.size);
            let event = u16::from_le(self.ring.u16(off).load(Ordering::Relaxed));
            need_event(event, new, old)
        } else {
            let flags = u16::from_le(self.ring.u16(self.used_off).load(Ordering::Relaxed));
            flags & USED_F_NO_NOTIFY == 0
        }
    }

    fn used_idx(&self) -> u16 {
        // Acquire: the used elements and the status bytes the device wrote
        // before publishing this index are visible to the loads that follow.
        u16::from_le(self.ring.u16(self.used_off + 2).load(Ordering::Acquire))
    }

    /// True if the device has published completions not yet popped.
    pub fn has_used(&self) -> bool {
        self.used_idx() != self.last_used
    }

    /// Pop the next completion. Fatal faults (the queue can no longer be
    /// trusted) are returned as `Err`; the caller stops the device.
    pub fn pop(&mut self) -> Result<Option<Used>, BlkError> {
        let used_idx = self.used_idx();
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.in_flight {
            return Err(BlkError::IndexOverrun {
                claimed: u32::from(pending),
                outstanding: u32::from(self.in_flight),
            });
        }
        let slot = usize::from(self.last_used & (self.size - 1));
        let e = self.used_off + 4 + 8 * slot;
        // Copy the element once; only the copy is used from here on.
        let id = u32::from_le(self.ring.u32(e).load(Ordering::Relaxed));
        let len = u32::from_le(self.ring.u32(e + 4).load(Ordering::Relaxed));
        let Some(state) = self.heads.get_mut(id as usize) else {
            return Err(BlkError::UnknownCompletion { id: u64::from(id) });
        };
        let req = match core::mem::replace(state, HeadState::Done) {
            HeadState::InFlight(r) => r,
            HeadState::Never => {
                *state = HeadState::Never;
                return Err(BlkError::UnknownCompletion { id: u64::from(id) });
            }
            HeadState::Done => return Err(BlkError::DuplicateCompletion { id: u64::from(id) }),
        };
        self.last_used = self.last_used.wrapping_add(1);
        let status = self
            .blocks
            .u8(id as usize * BLOCK_SIZE + BLOCK_STATUS)
            .load(Ordering::Relaxed);
        Ok(Some(self.retire(req, len, status)))
    }

    fn retire(&mut self, mut req: InFlight, len: u32, status: u8) -> Used {
        // Descriptors back on the free list, last first so the head is
        // reused first. The chain comes from our own record, not from the
        // descriptor table the device could have changed.
        for &d in req.chain.iter().rev() {
            self.free.push(d);
        }
        self.in_flight -= 1;
        self.unshare_all(&mut req.shared);
        Used { req, len, status }
    }

    fn unshare_all(&self, shared: &mut Vec<SharedBuf>) {
        for s in shared.drain(..) {
            // SAFETY: `paddr` came from `H::share` of this very buffer, which
            // the `add` contract keeps valid until now; the device is done
            // with it (it completed, or it was reset).
            unsafe { H::unshare(s.paddr, s.buf, s.dir) };
        }
    }

    /// After a device reset: hand back every request in flight (buffers
    /// unshared) and rebuild the queue empty.
    pub fn drain(&mut self, f: &mut dyn FnMut(InFlight)) {
        let heads = core::mem::take(&mut self.heads);
        for h in heads {
            if let HeadState::InFlight(mut r) = h {
                self.unshare_all(&mut r.shared);
                f(r);
            }
        }
        self.rebuild();
    }

    /// With EVENT_IDX: ask for an interrupt at the next completion (no
    /// re-check; see [`SplitQueue::prepare_wait`] before sleeping).
    pub fn update_used_event(&mut self) {
        if self.event_idx {
            let off = self.avail_off + 4 + 2 * usize::from(self.size);
            self.ring.put_u16(off, self.last_used);
        }
    }

    /// Ask for an interrupt at the next completion, then re-check (virtio
    /// 1.2 §2.7.10). Returns true if completions are already pending.
    pub fn prepare_wait(&mut self) -> bool {
        if self.event_idx {
            let off = self.avail_off + 4 + 2 * usize::from(self.size);
            self.ring.put_u16(off, self.last_used);
        } else {
            self.ring.put_u16(self.avail_off, 0);
        }
        // Full fence: the device must see our `used_event` before we re-read
        // `used.idx`; it does the mirror image after publishing, so either we
        // see its completion here or it sees our request for an interrupt.
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// Test and fuzz access: the raw queue region (device view).
    #[cfg(feature = "test-utils")]
    pub fn ring_ptr(&self) -> (NonNull<u8>, usize) {
        (self.ring.vaddr, self.ring.len())
    }
}
