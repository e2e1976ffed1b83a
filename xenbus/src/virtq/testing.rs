//! The device side of a split virtqueue, for fakes of virtio devices in
//! tests and fuzzers: [`TestHal`] (identity-mapped DMA with bounce buffers)
//! and [`DeviceQueue`] (take chains, publish used elements honestly or not,
//! read and write the suppression fields).
//!
//! `virtio-drivers` has a fake transport and HAL too, but only under its own
//! `#[cfg(test)]`, so other crates cannot use them.

use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::boxed::Box;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::vec;
use std::vec::Vec;

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use super::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

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
