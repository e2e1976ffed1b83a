//! The device side of virtio, for fakes of virtio devices in tests and
//! fuzzers: the HALs ([`TestHal`], identity-mapped DMA with bounce buffers;
//! [`IdentityHal`], buffers shared in place), [`DeviceQueue`] (take chains,
//! publish used elements honestly or not, read and write the suppression
//! fields) and [`FakeTransport`], the one fake virtio [`Transport`] every
//! device fake (pv-blk, pv-net, pv-balloon) is built on: features, status
//! and reset, config space and generation, queues, kicks and interrupts,
//! with the device-specific part in a [`FakeModel`].
//!
//! `virtio-drivers` has a fake transport and HAL too, but only under its own
//! `#[cfg(test)]`, so other crates cannot use them.

use core::fmt::Debug;
use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::boxed::Box;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::vec;
use std::vec::Vec;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

#[doc(hidden)]
pub use virtio_drivers as __virtio_drivers;
#[doc(hidden)]
pub use zerocopy as __zerocopy;

use super::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

pub mod fuzz;

/// A [`Hal`] for tests: physical address = virtual address, and shared
/// buffers are bounced through a fresh allocation, so a driver that forgets
/// to unshare (or unshares the wrong buffer) loses data and fails its test,
/// and a device cannot reach a buffer after it was handed back.
///
/// Unshared bounce buffers are not freed at once but kept in a quarantine
/// of the last [`QUARANTINE`] ones: a hostile fake device that writes a
/// chain the driver already took back (as a real device can) then writes
/// dead memory that still exists, not freed heap.
#[derive(Debug)]
pub struct TestHal;

/// Bounce buffers kept alive after `unshare`.
pub const QUARANTINE: usize = 8192;

static RETIRED: Mutex<VecDeque<Box<[u8]>>> = Mutex::new(VecDeque::new());

// SAFETY: `dma_alloc` returns fresh zeroed page-aligned allocations owned by
// the caller until `dma_dealloc`; `share` returns the address of a fresh
// allocation of the buffer's length that lives until `unshare`.
unsafe impl Hal for TestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Ok(layout) = Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE) else {
            return (0, NonNull::dangling());
        };
        // SAFETY: non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        match NonNull::new(p) {
            Some(p) => (p.as_ptr() as PhysAddr, p),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        if let Ok(layout) = Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE) {
            // SAFETY: the caller promises `vaddr` came from `dma_alloc(pages)`,
            // i.e. from `alloc_zeroed` with this layout.
            unsafe { dealloc(vaddr.as_ptr(), layout) };
        }
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let mut bounce = vec![0u8; buffer.len()].into_boxed_slice();
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller promises `buffer` is valid for its length
            // and not accessed concurrently; `bounce` is a fresh allocation.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    buffer.as_ptr().cast::<u8>(),
                    bounce.as_mut_ptr(),
                    buffer.len(),
                )
            };
        }
        Box::into_raw(bounce).cast::<u8>() as PhysAddr
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let raw = core::ptr::slice_from_raw_parts_mut(paddr as *mut u8, buffer.len());
        // SAFETY: `paddr` is what `share` returned for this buffer: a leaked
        // boxed slice of the same length, reclaimed exactly once here.
        let bounce = unsafe { Box::from_raw(raw) };
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: the caller promises `buffer` is valid and unaliased.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    bounce.as_ptr(),
                    buffer.as_ptr().cast::<u8>(),
                    buffer.len(),
                )
            };
        }
        let mut q = RETIRED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        q.push_back(bounce);
        while q.len() > QUARANTINE {
            q.pop_front();
        }
    }
}

/// A [`Hal`] for tests that share buffers in place: physical address =
/// virtual address for DMA memory and for shared buffers alike, so the
/// device sees the real addresses (e.g. of the ranges a balloon reports).
#[derive(Debug)]
pub struct IdentityHal;

// SAFETY: `dma_alloc` is `TestHal`'s (fresh zeroed page-aligned allocations
// owned by the caller until `dma_dealloc`); `share` returns the buffer's own
// address, valid as long as the caller keeps the buffer (its contract).
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        TestHal::dma_alloc(pages, direction)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: forwarded: `vaddr` came from `dma_alloc(pages)`, i.e. from
        // `TestHal::dma_alloc`.
        unsafe { TestHal::dma_dealloc(paddr, vaddr, pages) }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Device-side copy of `len` bytes at device address `addr`.
///
/// Fakes only follow addresses the driver under test wrote into its queues
/// (identity-mapped by [`TestHal`]); a wrong address there is the bug the
/// test exists to find.
pub fn dev_read(addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // SAFETY: see above: `addr..addr+len` is DMA memory or a bounce buffer
    // the driver handed to the device and has not reclaimed; the device side
    // runs in the test's thread between driver calls.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, v.as_mut_ptr(), len) };
    v
}

/// Device-side write; same contract as [`dev_read`].
pub fn dev_write(addr: u64, bytes: &[u8]) {
    // SAFETY: as for `dev_read`: the driver handed this range to the device.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// One descriptor as the device read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenDesc {
    /// The 16 bytes in the table.
    pub raw: [u8; 16],
    /// Address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Flags.
    pub flags: u16,
    /// Next.
    pub next: u16,
}

impl SeenDesc {
    fn from_raw(b: &[u8]) -> Self {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&b[..16]);
        Self {
            raw,
            addr: u64::from(le32(b, 0)) | (u64::from(le32(b, 4)) << 32),
            len: le32(b, 8),
            flags: le16(b, 12),
            next: le16(b, 14),
        }
    }

    /// Device-writable.
    pub fn writable(&self) -> bool {
        self.flags & DESC_F_WRITE != 0
    }

    /// Contents of the buffer it names.
    pub fn contents(&self) -> Vec<u8> {
        dev_read(self.addr, self.len as usize)
    }
}

/// A chain taken off the available ring.
#[derive(Clone, Debug)]
pub struct Chain {
    /// The queue it was taken from ([`FakeTransport::take_chain`]; 0 from
    /// a bare [`DeviceQueue`]).
    pub queue: u16,
    /// Head descriptor index (the used id to complete it with).
    pub head: u16,
    /// The ring descriptor of the head (for indirect: the table pointer).
    pub ring_desc: SeenDesc,
    /// True when the chain was in an indirect table.
    pub indirect: bool,
    /// The chain in order.
    pub descs: Vec<SeenDesc>,
}

impl Chain {
    /// Total device-writable bytes.
    pub fn writable(&self) -> u32 {
        self.descs
            .iter()
            .filter(|d| d.writable())
            .map(|d| d.len)
            .sum()
    }

    /// Concatenated bytes of every buffer, in order.
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for d in &self.descs {
            v.extend_from_slice(&d.contents());
        }
        v
    }

    /// Whether any buffer is device-writable.
    pub fn any_writable(&self) -> bool {
        self.descs.iter().any(SeenDesc::writable)
    }

    /// Concatenated device-readable bytes.
    pub fn readable_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for d in self.descs.iter().filter(|d| !d.writable()) {
            v.extend_from_slice(&d.contents());
        }
        v
    }

    /// Write `bytes` across the device-writable buffers in order; returns
    /// how many fitted.
    pub fn write_in(&self, bytes: &[u8]) -> usize {
        let mut off = 0;
        for d in self.descs.iter().filter(|d| d.writable()) {
            if off >= bytes.len() {
                break;
            }
            let n = (d.len as usize).min(bytes.len() - off);
            dev_write(d.addr, &bytes[off..off + n]);
            off += n;
        }
        off
    }
}

/// The device's view of one queue: the addresses the driver gave the
/// transport, plus the device's private indices.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceQueue {
    /// Entries (0: not set up).
    pub size: u32,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver (available ring) address.
    pub driver: u64,
    /// Device (used ring) address.
    pub device: u64,
    /// Kicks the driver sent.
    pub notified: u64,
    /// Device's next available-ring index to take.
    pub last_avail: u16,
    /// Device's used index.
    pub used_idx: u16,
}

impl DeviceQueue {
    /// A queue at the given addresses.
    pub fn new(size: u32, desc: u64, driver: u64, device: u64) -> Self {
        Self {
            size,
            desc,
            driver,
            device,
            ..Self::default()
        }
    }

    /// True once the driver set the queue up.
    pub fn ready(&self) -> bool {
        self.desc != 0 && self.size != 0
    }

    /// `avail.idx` as the driver published it.
    pub fn avail_idx(&self) -> u16 {
        if !self.ready() {
            return 0;
        }
        le16(&dev_read(self.driver + 2, 2), 0)
    }

    /// `avail.flags`.
    pub fn avail_flags(&self) -> u16 {
        if !self.ready() {
            return 0;
        }
        le16(&dev_read(self.driver, 2), 0)
    }

    /// Chains available and not yet taken.
    pub fn available(&self) -> u16 {
        self.avail_idx().wrapping_sub(self.last_avail)
    }

    /// Take the next available chain (descriptors as the device sees them).
    pub fn take_chain(&mut self) -> Option<Chain> {
        if self.available() == 0 {
            return None;
        }
        let size = self.size as usize;
        let slot = usize::from(self.last_avail) & (size - 1);
        let head = le16(&dev_read(self.driver + 4 + 2 * slot as u64, 2), 0);
        self.last_avail = self.last_avail.wrapping_add(1);
        let read_desc =
            |base: u64, i: u16| SeenDesc::from_raw(&dev_read(base + 16 * u64::from(i), 16));
        let ring_desc = read_desc(self.desc, head);
        let (base, first, indirect, limit) = if ring_desc.flags & DESC_F_INDIRECT != 0 {
            (ring_desc.addr, 0u16, true, (ring_desc.len / 16) as usize)
        } else {
            (self.desc, head, false, size)
        };
        let mut descs = Vec::new();
        let mut i = first;
        loop {
            let d = read_desc(base, i);
            let more = d.flags & DESC_F_NEXT != 0;
            i = d.next;
            descs.push(d);
            if !more || descs.len() >= limit {
                break;
            }
        }
        Some(Chain {
            queue: 0,
            head,
            ring_desc,
            indirect,
            descs,
        })
    }

    /// Publish a used element `(id, len)` and advance the used index. Honest
    /// devices pass a chain's head and bytes written; a hostile one lies.
    pub fn push_used(&mut self, id: u32, len: u32) {
        self.write_used(id, len);
        self.publish(1);
    }

    /// Write a used element at the used index without publishing it.
    pub fn write_used(&mut self, id: u32, len: u32) {
        if !self.ready() {
            return;
        }
        let slot = u64::from(self.used_idx) & u64::from(self.size - 1);
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&id.to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        dev_write(self.device + 4 + 8 * slot, &e);
        self.used_idx = self.used_idx.wrapping_add(1);
    }

    /// Make written elements visible: store the used index (`n` is only
    /// for readability; the private index already counts them).
    pub fn publish(&mut self, _n: u16) {
        if self.ready() {
            dev_write(self.device + 2, &self.used_idx.to_le_bytes());
        }
    }

    /// Whether the device must interrupt after moving the used index from
    /// `old` to the current one (EVENT_IDX or NO_INTERRUPT).
    pub fn interrupt_needed(&self, old: u16, event_idx: bool) -> bool {
        if event_idx {
            super::need_event(self.used_event(), self.used_idx, old)
        } else {
            self.avail_flags() & super::AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// Hostile: set the used index to anything.
    pub fn set_used_idx(&mut self, idx: u16) {
        self.used_idx = idx;
        self.publish(0);
    }

    /// Hostile: write `bytes` at byte `off` of the used ring.
    pub fn write_used_raw(&self, off: u64, bytes: &[u8]) {
        let len = 6 + 8 * u64::from(self.size);
        if self.ready() && off + bytes.len() as u64 <= len {
            dev_write(self.device + off, bytes);
        }
    }

    /// Set `avail_event` (EVENT_IDX).
    pub fn set_avail_event(&self, v: u16) {
        self.write_used_raw(4 + 8 * u64::from(self.size), &v.to_le_bytes());
    }

    /// Set `used.flags` (e.g. [`super::USED_F_NO_NOTIFY`]).
    pub fn set_used_flags(&self, v: u16) {
        self.write_used_raw(0, &v.to_le_bytes());
    }

    /// `used_event` as the driver last wrote it.
    pub fn used_event(&self) -> u16 {
        if !self.ready() {
            return 0;
        }
        le16(&dev_read(self.driver + 4 + 2 * u64::from(self.size), 2), 0)
    }
}

/// `VIRTIO_F_EVENT_IDX`, for the fake's interrupt suppression.
const F_EVENT_IDX: u64 = 1 << 29;

/// The device-specific part of a [`FakeTransport`]: its own state (a disk,
/// a balloon, a control log) and the hooks the transport calls.
pub trait FakeModel: Debug + Send + Sized + 'static {
    /// The driver kicked queue `q` (already counted). QEMU answers some
    /// queues on the kick (virtio-net's control queue); default: nothing.
    fn kicked(_dev: &FakeTransport<Self>, _q: u16) {}

    /// The driver reset the device (status 0 written and not refused).
    fn reset(&mut self) {}
}

impl FakeModel for () {}

/// What a [`FakeTransport`] holds; the device plays with it through
/// [`FakeTransport::lock`].
#[derive(Debug)]
pub struct FakeState<M> {
    /// Device type reported to the driver.
    pub device_type: DeviceType,
    /// Features offered.
    pub device_features: u64,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// Device status as the driver last set it (plus what the device set).
    pub status: DeviceStatus,
    /// Config space.
    pub config: Vec<u8>,
    /// Config generation.
    pub generation: u32,
    /// Largest queue size offered.
    pub max_queue_size: u32,
    /// The device's view of each queue.
    pub queues: Vec<DeviceQueue>,
    /// Interrupts raised per queue (after suppression; honest paths).
    pub interrupts: Vec<u64>,
    /// Hostile: ignore resets.
    pub refuse_reset: bool,
    /// Times the driver wrote status 0.
    pub resets: u32,
    /// Hostile: the config generation changes on every read.
    pub unstable_config: bool,
    /// The device-specific part.
    pub model: M,
}

/// A fake virtio [`Transport`] whose device side runs in the test's own
/// thread: cloning gives another handle on the same device (hand one to
/// the driver, keep one to play the device). Device fakes wrap it in a
/// newtype made a `Transport` that derefs to it by
/// [`fake_transport!`](crate::fake_transport).
#[derive(Debug)]
pub struct FakeTransport<M> {
    st: Arc<Mutex<FakeState<M>>>,
}

impl<M> Clone for FakeTransport<M> {
    fn clone(&self) -> Self {
        Self {
            st: Arc::clone(&self.st),
        }
    }
}

impl<M: FakeModel> FakeTransport<M> {
    /// A device of `device_type` offering `features`, with `config` as its
    /// config space and `queues` queues of at most `max_queue_size`.
    pub fn with_model(
        device_type: DeviceType,
        features: u64,
        config: Vec<u8>,
        queues: usize,
        max_queue_size: u32,
        model: M,
    ) -> Self {
        Self {
            st: Arc::new(Mutex::new(FakeState {
                device_type,
                device_features: features,
                driver_features: 0,
                status: DeviceStatus::empty(),
                config,
                generation: 0,
                max_queue_size,
                queues: vec![DeviceQueue::default(); queues],
                interrupts: vec![0; queues],
                refuse_reset: false,
                resets: 0,
                unstable_config: false,
                model,
            })),
        }
    }

    /// The device's state (do not hold it across driver calls).
    pub fn lock(&self) -> MutexGuard<'_, FakeState<M>> {
        self.st.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Features the driver accepted (raw bits; device fakes type them).
    pub fn driver_feature_bits(&self) -> u64 {
        self.lock().driver_features
    }

    /// Device status as the driver last set it.
    pub fn status(&self) -> DeviceStatus {
        self.lock().status
    }

    /// Flag DEVICE_NEEDS_RESET (hostile or broken device).
    pub fn set_needs_reset(&self) {
        self.lock().status |= DeviceStatus::DEVICE_NEEDS_RESET;
    }

    /// Times the driver reset the device (wrote status 0).
    pub fn resets(&self) -> u32 {
        self.lock().resets
    }

    /// Make the device ignore resets (hostile).
    pub fn set_refuse_reset(&self, on: bool) {
        self.lock().refuse_reset = on;
    }

    /// Make the config generation change on every read (never stable).
    pub fn set_unstable_config(&self, on: bool) {
        self.lock().unstable_config = on;
    }

    /// Overwrite config-space bytes (bumps the generation: a config change).
    pub fn set_config(&self, off: usize, bytes: &[u8]) {
        let mut s = self.lock();
        if let Some(c) = s.config.get_mut(off..off + bytes.len()) {
            c.copy_from_slice(bytes);
        }
        s.generation = s.generation.wrapping_add(1);
    }

    /// Config-space bytes (e.g. what the driver wrote).
    pub fn config_bytes(&self, off: usize, len: usize) -> Vec<u8> {
        let s = self.lock();
        s.config
            .get(off..off + len)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    /// Kicks the driver sent on queue `q`.
    pub fn notifications(&self, q: u16) -> u64 {
        self.lock()
            .queues
            .get(usize::from(q))
            .map_or(0, |x| x.notified)
    }

    /// Interrupts the device raised on queue `q` (honest paths only).
    pub fn interrupts(&self, q: u16) -> u64 {
        self.lock()
            .interrupts
            .get(usize::from(q))
            .copied()
            .unwrap_or(0)
    }

    /// True if the driver set queue `q` up.
    pub fn queue_ready(&self, q: u16) -> bool {
        self.lock()
            .queues
            .get(usize::from(q))
            .is_some_and(DeviceQueue::ready)
    }

    /// Chains available on queue `q` and not yet taken.
    pub fn available(&self, q: u16) -> u16 {
        self.lock()
            .queues
            .get(usize::from(q))
            .map_or(0, DeviceQueue::available)
    }

    /// The device's consumer index on queue `q`'s available ring.
    pub fn last_avail(&self, q: u16) -> u16 {
        self.lock()
            .queues
            .get(usize::from(q))
            .map_or(0, |x| x.last_avail)
    }

    /// Take the next available chain on queue `q` (descriptors as the
    /// device sees them), or `None`.
    pub fn take_chain(&self, q: u16) -> Option<Chain> {
        let mut c = self.lock().queues.get_mut(usize::from(q))?.take_chain()?;
        c.queue = q;
        Some(c)
    }

    /// Give back the last `n` chains taken on queue `q` (a device that
    /// found too few buffers; a real one would wait).
    pub fn untake(&self, q: u16, n: u16) {
        if let Some(dq) = self.lock().queues.get_mut(usize::from(q)) {
            dq.last_avail = dq.last_avail.wrapping_sub(n);
        }
    }

    /// Publish used elements on queue `q` with one index update (honest or
    /// not); counts an interrupt if the driver asked for one.
    pub fn push_used_batch(&self, q: u16, elems: &[(u32, u32)]) {
        let mut s = self.lock();
        let event_idx = s.driver_features & F_EVENT_IDX != 0;
        let Some(dq) = s.queues.get_mut(usize::from(q)) else {
            return;
        };
        if !dq.ready() {
            return;
        }
        let old = dq.used_idx;
        for &(id, len) in elems {
            dq.write_used(id, len);
        }
        dq.publish(elems.len() as u16);
        if dq.interrupt_needed(old, event_idx) {
            if let Some(i) = s.interrupts.get_mut(usize::from(q)) {
                *i += 1;
            }
        }
    }

    /// Publish one used element `(id, len)` on queue `q`. Honest devices
    /// pass a chain's head and bytes written; a hostile one lies.
    pub fn push_used(&self, q: u16, id: u32, len: u32) {
        self.push_used_batch(q, &[(id, len)]);
    }

    /// Hostile: set queue `q`'s used index to anything.
    pub fn set_used_idx(&self, q: u16, idx: u16) {
        if let Some(dq) = self.lock().queues.get_mut(usize::from(q)) {
            dq.set_used_idx(idx);
        }
    }

    /// Hostile: write `bytes` at byte `off` of queue `q`'s used ring.
    pub fn write_used_raw(&self, q: u16, off: u64, bytes: &[u8]) {
        if let Some(dq) = self.lock().queues.get(usize::from(q)) {
            dq.write_used_raw(off, bytes);
        }
    }

    /// Set `avail_event` (EVENT_IDX) on queue `q`.
    pub fn set_avail_event(&self, q: u16, v: u16) {
        if let Some(dq) = self.lock().queues.get(usize::from(q)) {
            dq.set_avail_event(v);
        }
    }

    /// Set `used.flags` on queue `q` (e.g. `USED_F_NO_NOTIFY`).
    pub fn set_used_flags(&self, q: u16, v: u16) {
        if let Some(dq) = self.lock().queues.get(usize::from(q)) {
            dq.set_used_flags(v);
        }
    }

    /// `used_event` on queue `q` as the driver last wrote it.
    pub fn used_event(&self, q: u16) -> u16 {
        self.lock()
            .queues
            .get(usize::from(q))
            .map_or(0, DeviceQueue::used_event)
    }

    /// An honest device that has drained queue `q` asks to be kicked for
    /// the next chain (`avail_event` = its consumer index, with EVENT_IDX).
    pub fn want_kick(&self, q: u16) {
        if let Some(dq) = self.lock().queues.get(usize::from(q)) {
            dq.set_avail_event(dq.last_avail);
        }
    }
}

impl<M: FakeModel> Transport for FakeTransport<M> {
    fn device_type(&self) -> DeviceType {
        self.lock().device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.lock().device_features
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.lock().driver_features = driver_features;
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        let s = self.lock();
        if usize::from(queue) < s.queues.len() {
            s.max_queue_size
        } else {
            0
        }
    }

    fn notify(&mut self, queue: u16) {
        if let Some(q) = self.lock().queues.get_mut(usize::from(queue)) {
            q.notified += 1;
        }
        M::kicked(self, queue);
    }

    fn get_status(&self) -> DeviceStatus {
        self.lock().status
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut s = self.lock();
        if status.is_empty() {
            s.resets += 1;
            if s.refuse_reset {
                return;
            }
            // Kick counts survive a reset (tests count kicks across one).
            for q in &mut s.queues {
                let notified = q.notified;
                *q = DeviceQueue::default();
                q.notified = notified;
            }
            s.model.reset();
        }
        s.status = status;
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        if let Some(q) = self.lock().queues.get_mut(usize::from(queue)) {
            let notified = q.notified;
            *q = DeviceQueue::new(size, descriptors, driver_area, device_area);
            q.notified = notified;
        }
    }

    fn queue_unset(&mut self, queue: u16) {
        if let Some(q) = self.lock().queues.get_mut(usize::from(queue)) {
            *q = DeviceQueue::default();
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.queue_ready(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }

    fn read_config_generation(&self) -> u32 {
        let mut s = self.lock();
        if s.unstable_config {
            s.generation = s.generation.wrapping_add(1);
        }
        s.generation
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> Result<T, virtio_drivers::Error> {
        let s = self.lock();
        let bytes = s
            .config
            .get(offset..offset + core::mem::size_of::<T>())
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        T::read_from_bytes(bytes).map_err(|_| virtio_drivers::Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), virtio_drivers::Error> {
        let mut s = self.lock();
        let bytes = s
            .config
            .get_mut(offset..offset + core::mem::size_of::<T>())
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        bytes.copy_from_slice(value.as_bytes());
        Ok(())
    }
}

/// Make a device fake `$t`, a newtype whose field 0 is a
/// `FakeTransport<$m>`, a `Transport` (every call forwarded) that derefs to
/// its `FakeTransport` (queues, kicks, resets and hostile knobs).
#[macro_export]
macro_rules! fake_transport {
    ($t:ty, $m:ty) => {
        impl ::core::ops::Deref for $t {
            type Target = $crate::testing::FakeTransport<$m>;

            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl $crate::testing::__virtio_drivers::transport::Transport for $t {
            fn device_type(&self) -> $crate::testing::__virtio_drivers::transport::DeviceType {
                $crate::testing::__virtio_drivers::transport::Transport::device_type(&self.0)
            }
            fn read_device_features(&mut self) -> u64 {
                $crate::testing::__virtio_drivers::transport::Transport::read_device_features(
                    &mut self.0,
                )
            }
            fn write_driver_features(&mut self, f: u64) {
                $crate::testing::__virtio_drivers::transport::Transport::write_driver_features(
                    &mut self.0,
                    f,
                )
            }
            fn max_queue_size(&mut self, q: u16) -> u32 {
                $crate::testing::__virtio_drivers::transport::Transport::max_queue_size(
                    &mut self.0,
                    q,
                )
            }
            fn notify(&mut self, q: u16) {
                $crate::testing::__virtio_drivers::transport::Transport::notify(&mut self.0, q)
            }
            fn get_status(&self) -> $crate::testing::__virtio_drivers::transport::DeviceStatus {
                $crate::testing::__virtio_drivers::transport::Transport::get_status(&self.0)
            }
            fn set_status(
                &mut self,
                s: $crate::testing::__virtio_drivers::transport::DeviceStatus,
            ) {
                $crate::testing::__virtio_drivers::transport::Transport::set_status(&mut self.0, s)
            }
            fn set_guest_page_size(&mut self, p: u32) {
                $crate::testing::__virtio_drivers::transport::Transport::set_guest_page_size(
                    &mut self.0,
                    p,
                )
            }
            fn requires_legacy_layout(&self) -> bool {
                $crate::testing::__virtio_drivers::transport::Transport::requires_legacy_layout(
                    &self.0,
                )
            }
            fn queue_set(
                &mut self,
                q: u16,
                size: u32,
                d: $crate::testing::__virtio_drivers::PhysAddr,
                a: $crate::testing::__virtio_drivers::PhysAddr,
                u: $crate::testing::__virtio_drivers::PhysAddr,
            ) {
                $crate::testing::__virtio_drivers::transport::Transport::queue_set(
                    &mut self.0,
                    q,
                    size,
                    d,
                    a,
                    u,
                )
            }
            fn queue_unset(&mut self, q: u16) {
                $crate::testing::__virtio_drivers::transport::Transport::queue_unset(&mut self.0, q)
            }
            fn queue_used(&mut self, q: u16) -> bool {
                $crate::testing::__virtio_drivers::transport::Transport::queue_used(&mut self.0, q)
            }
            fn ack_interrupt(
                &mut self,
            ) -> $crate::testing::__virtio_drivers::transport::InterruptStatus {
                $crate::testing::__virtio_drivers::transport::Transport::ack_interrupt(&mut self.0)
            }
            fn read_config_generation(&self) -> u32 {
                $crate::testing::__virtio_drivers::transport::Transport::read_config_generation(
                    &self.0,
                )
            }
            fn read_config_space<
                T: $crate::testing::__zerocopy::FromBytes + $crate::testing::__zerocopy::IntoBytes,
            >(
                &self,
                offset: usize,
            ) -> Result<T, $crate::testing::__virtio_drivers::Error> {
                $crate::testing::__virtio_drivers::transport::Transport::read_config_space(
                    &self.0, offset,
                )
            }
            fn write_config_space<
                T: $crate::testing::__zerocopy::IntoBytes + $crate::testing::__zerocopy::Immutable,
            >(
                &mut self,
                offset: usize,
                value: T,
            ) -> Result<(), $crate::testing::__virtio_drivers::Error> {
                $crate::testing::__virtio_drivers::transport::Transport::write_config_space(
                    &mut self.0,
                    offset,
                    value,
                )
            }
        }
    };
}
