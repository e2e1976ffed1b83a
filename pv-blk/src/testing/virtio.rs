//! A fake virtio-blk device: a [`Transport`] whose device side runs in the
//! test's own thread, over identity-mapped DMA ([`TestHal`]). It can play an
//! honest disk ([`FakeVirtioBlk::process`]) or a hostile one (write any used
//! element, run the used index ahead, scribble status bytes, refuse reset).
//!
//! `virtio-drivers` has a fake transport and HAL too, but only under its own
//! `#[cfg(test)]`, so other crates cannot use them.

use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::boxed::Box;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::vec;
use std::vec::Vec;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::virtio::{config, VirtioFeatures, S_IOERR, S_OK, S_UNSUPP};
use crate::virtio::{T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES};
use xenbus::virtq::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

/// A [`Hal`] for tests: physical address = virtual address, and shared
/// buffers are bounced through a fresh allocation so a driver that forgets
/// to unshare (or unshares the wrong buffer) loses data and fails its test.
#[derive(Debug)]
pub struct TestHal;

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
    }
}

/// Device-side copy of `len` bytes at device address `addr`.
///
/// The fake only follows addresses the driver under test wrote into its
/// queues (identity-mapped by [`TestHal`]); a wrong address there is the bug
/// the test exists to find.
fn dev_read(addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // SAFETY: see above: `addr..addr+len` is DMA memory or a bounce buffer
    // the driver handed to the device and has not reclaimed; the test is
    // single-threaded, so nothing writes it concurrently.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, v.as_mut_ptr(), len) };
    v
}

/// Device-side write; same contract as [`dev_read`].
fn dev_write(addr: u64, bytes: &[u8]) {
    // SAFETY: as for `dev_read`: the driver handed this range to the device.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
}

fn le16(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[off..off + 2]);
    u16::from_le_bytes(a)
}

fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
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
            addr: le64(b, 0),
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

/// A request chain taken off the available ring.
#[derive(Clone, Debug)]
pub struct Chain {
    /// Queue.
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
    /// The request header bytes (first descriptor).
    pub fn header(&self) -> Vec<u8> {
        self.descs
            .first()
            .map(SeenDesc::contents)
            .unwrap_or_default()
    }

    /// Total device-writable bytes.
    pub fn writable(&self) -> u32 {
        self.descs
            .iter()
            .filter(|d| d.writable())
            .map(|d| d.len)
            .sum()
    }

    /// The status descriptor (last).
    pub fn status_desc(&self) -> Option<&SeenDesc> {
        self.descs.last()
    }
}

#[derive(Debug, Default, Clone)]
struct FakeQueue {
    size: u32,
    desc: u64,
    driver: u64,
    device: u64,
    notified: u64,
    last_avail: u16,
    used_idx: u16,
}

#[derive(Debug)]
struct DevState {
    device_features: u64,
    driver_features: u64,
    status: DeviceStatus,
    config: [u8; 64],
    generation: u32,
    max_queue_size: u32,
    queues: Vec<FakeQueue>,
    disk: Vec<u8>,
    refuse_reset: bool,
    resets: u32,
}

/// The fake device and its transport. Cloning gives another handle on the
/// same device: hand one to the driver, keep one to play the device.
#[derive(Debug, Clone)]
pub struct FakeVirtioBlk {
    st: Arc<Mutex<DevState>>,
}

impl FakeVirtioBlk {
    /// A device offering `features` with a disk of `sectors` 512-byte
    /// sectors, `queues` queues of at most `max_queue_size` entries.
    pub fn new(features: VirtioFeatures, sectors: u64, queues: u16, max_queue_size: u32) -> Self {
        let mut cfg = [0u8; 64];
        cfg[config::CAPACITY..config::CAPACITY + 8].copy_from_slice(&sectors.to_le_bytes());
        cfg[config::SEG_MAX..config::SEG_MAX + 4].copy_from_slice(&126u32.to_le_bytes());
        cfg[config::SIZE_MAX..config::SIZE_MAX + 4].copy_from_slice(&(1u32 << 20).to_le_bytes());
        cfg[config::BLK_SIZE..config::BLK_SIZE + 4].copy_from_slice(&512u32.to_le_bytes());
        cfg[config::NUM_QUEUES..config::NUM_QUEUES + 2].copy_from_slice(&queues.to_le_bytes());
        cfg[config::MAX_DISCARD_SECTORS..config::MAX_DISCARD_SECTORS + 4]
            .copy_from_slice(&(1u32 << 16).to_le_bytes());
        cfg[config::MAX_WRITE_ZEROES_SECTORS..config::MAX_WRITE_ZEROES_SECTORS + 4]
            .copy_from_slice(&(1u32 << 16).to_le_bytes());
        let disk_len = usize::try_from(sectors).unwrap_or(0).saturating_mul(512);
        Self {
            st: Arc::new(Mutex::new(DevState {
                device_features: features.bits(),
                driver_features: 0,
                status: DeviceStatus::empty(),
                config: cfg,
                generation: 0,
                max_queue_size,
                queues: vec![FakeQueue::default(); usize::from(queues.max(1))],
                disk: vec![0u8; disk_len],
                refuse_reset: false,
                resets: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DevState> {
        self.st.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> VirtioFeatures {
        VirtioFeatures::from_bits_retain(self.lock().driver_features)
    }

    /// Device status as the driver last set it.
    pub fn status(&self) -> DeviceStatus {
        self.lock().status
    }

    /// Times the driver reset the device (wrote status 0).
    pub fn resets(&self) -> u32 {
        self.lock().resets
    }

    /// Notifications the driver sent on queue `q`.
    pub fn notifications(&self, q: u16) -> u64 {
        self.lock()
            .queues
            .get(usize::from(q))
            .map_or(0, |x| x.notified)
    }

    /// Overwrite config-space bytes (bumps the generation).
    pub fn set_config(&self, off: usize, bytes: &[u8]) {
        let mut s = self.lock();
        s.config[off..off + bytes.len()].copy_from_slice(bytes);
        s.generation = s.generation.wrapping_add(1);
    }

    /// Make the device ignore resets (hostile).
    pub fn set_refuse_reset(&self, on: bool) {
        self.lock().refuse_reset = on;
    }

    /// Read disk bytes.
    pub fn disk(&self, off: usize, len: usize) -> Vec<u8> {
        let s = self.lock();
        s.disk
            .get(off..off + len)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    /// Write disk bytes.
    pub fn set_disk(&self, off: usize, bytes: &[u8]) {
        let mut s = self.lock();
        if let Some(d) = s.disk.get_mut(off..off + bytes.len()) {
            d.copy_from_slice(bytes);
        }
    }

    fn queue(&self, q: u16) -> Option<FakeQueue> {
        self.lock().queues.get(usize::from(q)).cloned()
    }

    /// Available chains not yet taken by the device.
    pub fn available(&self, q: u16) -> u16 {
        let Some(fq) = self.queue(q) else { return 0 };
        if fq.desc == 0 {
            return 0;
        }
        let idx = le16(&dev_read(fq.driver + 2, 2), 0);
        idx.wrapping_sub(fq.last_avail)
    }

    /// The device's consumer index on the available ring.
    pub fn last_avail(&self, q: u16) -> u16 {
        self.queue(q).map_or(0, |x| x.last_avail)
    }

    /// Take the next available chain (descriptors as the device sees them),
    /// or `None`.
    pub fn take_chain(&self, q: u16) -> Option<Chain> {
        if self.available(q) == 0 {
            return None;
        }
        let mut s = self.lock();
        let fq = s.queues.get_mut(usize::from(q))?;
        let size = fq.size as usize;
        let slot = usize::from(fq.last_avail) & (size - 1);
        let head = le16(&dev_read(fq.driver + 4 + 2 * slot as u64, 2), 0);
        fq.last_avail = fq.last_avail.wrapping_add(1);
        let table = fq.desc;
        drop(s);
        let read_desc =
            |base: u64, i: u16| SeenDesc::from_raw(&dev_read(base + 16 * u64::from(i), 16));
        let ring_desc = read_desc(table, head);
        let (base, first, indirect, limit) = if ring_desc.flags & DESC_F_INDIRECT != 0 {
            (ring_desc.addr, 0u16, true, (ring_desc.len / 16) as usize)
        } else {
            (table, head, false, size)
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
            queue: q,
            head,
            ring_desc,
            indirect,
            descs,
        })
    }

    /// Write `status` into the chain's status byte.
    pub fn write_status(&self, chain: &Chain, status: u8) {
        if let Some(d) = chain.status_desc() {
            dev_write(d.addr, &[status]);
        }
    }

    /// Publish a used element `(id, len)` on queue `q` and advance the used
    /// index by one. Honest devices use [`FakeVirtioBlk::process`]; this is
    /// also how a hostile one lies.
    pub fn push_used(&self, q: u16, id: u32, len: u32) {
        let mut s = self.lock();
        let Some(fq) = s.queues.get_mut(usize::from(q)) else {
            return;
        };
        if fq.device == 0 {
            return;
        }
        let slot = u64::from(fq.used_idx) & u64::from(fq.size - 1);
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&id.to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        dev_write(fq.device + 4 + 8 * slot, &e);
        fq.used_idx = fq.used_idx.wrapping_add(1);
        dev_write(fq.device + 2, &fq.used_idx.to_le_bytes());
    }

    /// Hostile: set the used index to anything.
    pub fn set_used_idx(&self, q: u16, idx: u16) {
        let mut s = self.lock();
        let Some(fq) = s.queues.get_mut(usize::from(q)) else {
            return;
        };
        if fq.device == 0 {
            return;
        }
        fq.used_idx = idx;
        dev_write(fq.device + 2, &idx.to_le_bytes());
    }

    /// Hostile: write `bytes` at byte `off` of queue `q`'s used ring.
    pub fn write_used_raw(&self, q: u16, off: u64, bytes: &[u8]) {
        let Some(fq) = self.queue(q) else { return };
        let len = 6 + 8 * u64::from(fq.size);
        if fq.device != 0 && off + bytes.len() as u64 <= len {
            dev_write(fq.device + off, bytes);
        }
    }

    /// Set `avail_event` (EVENT_IDX) on queue `q`.
    pub fn set_avail_event(&self, q: u16, v: u16) {
        let Some(fq) = self.queue(q) else { return };
        self.write_used_raw(q, 4 + 8 * u64::from(fq.size), &v.to_le_bytes());
    }

    /// `used_event` as the driver last wrote it.
    pub fn used_event(&self, q: u16) -> u16 {
        let Some(fq) = self.queue(q) else { return 0 };
        le16(&dev_read(fq.driver + 4 + 2 * u64::from(fq.size), 2), 0)
    }

    /// Carry out `chain` against the disk: returns (status, bytes written
    /// into device-writable buffers including the status byte). Does not
    /// publish anything.
    pub fn execute(&self, chain: &Chain) -> (u8, u32) {
        let hdr = chain.header();
        if hdr.len() < 16 || chain.descs.len() < 2 {
            return (S_IOERR, 0);
        }
        let ty = le32(&hdr, 0);
        let sector = le64(&hdr, 8);
        let data = &chain.descs[1..chain.descs.len() - 1];
        let mut s = self.lock();
        let disk_len = s.disk.len() as u64;
        let mut written = 1u32;
        let status = match ty {
            T_IN | T_OUT => {
                let mut off = sector.saturating_mul(512);
                let mut st = S_OK;
                for d in data {
                    let end = off.saturating_add(u64::from(d.len));
                    if end > disk_len {
                        st = S_IOERR;
                        break;
                    }
                    let r = off as usize..end as usize;
                    if ty == T_IN {
                        dev_write(d.addr, &s.disk[r]);
                        written += d.len;
                    } else {
                        let bytes = d.contents();
                        s.disk[r].copy_from_slice(&bytes);
                    }
                    off = end;
                }
                st
            }
            T_FLUSH => S_OK,
            T_GET_ID => {
                if let Some(d) = data.first() {
                    let mut id = [0u8; 20];
                    id[..8].copy_from_slice(b"fake-blk");
                    let n = (d.len as usize).min(20);
                    dev_write(d.addr, &id[..n]);
                    written += n as u32;
                }
                S_OK
            }
            T_DISCARD | T_WRITE_ZEROES => match data.first().map(SeenDesc::contents) {
                Some(seg) if seg.len() == 16 => {
                    let start = le64(&seg, 0).saturating_mul(512);
                    let end = start.saturating_add(u64::from(le32(&seg, 8)) * 512);
                    if end > disk_len {
                        S_IOERR
                    } else {
                        s.disk[start as usize..end as usize].fill(0);
                        S_OK
                    }
                }
                _ => S_IOERR,
            },
            _ => S_UNSUPP,
        };
        (status, written)
    }

    /// Honest device: take every available chain on queue `q`, execute it,
    /// write its status and publish it. Returns how many.
    pub fn process(&self, q: u16) -> usize {
        let mut n = 0;
        while let Some(c) = self.take_chain(q) {
            let (status, len) = self.execute(&c);
            self.write_status(&c, status);
            self.push_used(q, u32::from(c.head), len);
            n += 1;
        }
        n
    }
}

impl Transport for FakeVirtioBlk {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
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
            for q in &mut s.queues {
                *q = FakeQueue::default();
            }
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
            *q = FakeQueue {
                size,
                desc: descriptors,
                driver: driver_area,
                device: device_area,
                ..FakeQueue::default()
            };
        }
    }

    fn queue_unset(&mut self, queue: u16) {
        if let Some(q) = self.lock().queues.get_mut(usize::from(queue)) {
            *q = FakeQueue::default();
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.lock()
            .queues
            .get(usize::from(queue))
            .is_some_and(|q| q.desc != 0)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }

    fn read_config_generation(&self) -> u32 {
        self.lock().generation
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
