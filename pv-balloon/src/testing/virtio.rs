//! A fake virtio-balloon device: a [`Transport`] whose device side runs in
//! the test's own thread, over identity-mapped DMA ([`IdentityHal`]). It
//! can play an honest balloon ([`FakeBalloon::process`]) or a hostile one
//! (complete buffers never posted, run the used index ahead, write any used
//! length, change `num_pages` to anything).

use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::vec;
use std::vec::Vec;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::virtio::{config, VirtioFeatures, DEFLATEQ, INFLATEQ, STATSQ};

/// A [`Hal`] for tests: physical address = virtual address, buffers shared
/// in place (so the device sees the real addresses of reported ranges).
#[derive(Debug)]
pub struct IdentityHal;

// SAFETY: `dma_alloc` returns fresh zeroed page-aligned allocations owned by
// the caller until `dma_dealloc`; `share` returns the buffer's own address,
// which is valid as long as the caller keeps the buffer (its contract).
unsafe impl Hal for IdentityHal {
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

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Device-side copy of `len` bytes at device address `addr`.
///
/// The fake only follows addresses the driver under test wrote into its
/// queues (identity-mapped by [`IdentityHal`]); a wrong address there is
/// the bug the test exists to find.
fn dev_read(addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // SAFETY: see above: `addr..addr+len` is queue memory or a buffer the
    // driver handed to the device and has not reclaimed; the test is
    // single-threaded, so nothing writes it concurrently.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, v.as_mut_ptr(), len) };
    v
}

/// Device-side write into queue memory; same contract as [`dev_read`].
fn dev_write(addr: u64, bytes: &[u8]) {
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenDesc {
    /// Address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Flags.
    pub flags: u16,
}

/// A buffer chain taken off an available ring.
#[derive(Clone, Debug)]
pub struct Chain {
    /// Head descriptor index (the used id to complete it with).
    pub head: u16,
    /// The chain in order.
    pub descs: Vec<SeenDesc>,
}

impl Chain {
    /// The bytes of every descriptor, concatenated.
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for d in &self.descs {
            v.extend(dev_read(d.addr, d.len as usize));
        }
        v
    }

    /// The chain read as an array of le32 frame numbers.
    pub fn pfns(&self) -> Vec<u32> {
        self.bytes().chunks_exact(4).map(|c| le32(c, 0)).collect()
    }

    /// True if any descriptor is device-writable.
    pub fn any_writable(&self) -> bool {
        self.descs.iter().any(|d| d.flags & 2 != 0)
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
    config: [u8; config::LEN],
    generation: u32,
    max_queue_size: u32,
    queues: Vec<FakeQueue>,
    balloon: BTreeSet<u32>,
    reported: Vec<(u64, u32)>,
    stats_head: Option<u16>,
    last_stats: Vec<u8>,
    resets: u32,
    unstable_config: bool,
}

/// The fake device and its transport. Cloning gives another handle on the
/// same device: hand one to the driver, keep one to play the device.
#[derive(Debug, Clone)]
pub struct FakeBalloon {
    st: Arc<Mutex<DevState>>,
}

/// Queues the fake creates (inflate, deflate, stats, and two more for the
/// hint and reporting numbering cases).
pub const FAKE_QUEUES: usize = 5;

impl FakeBalloon {
    /// A device offering `features`, queues of at most `max_queue_size`.
    pub fn new(features: VirtioFeatures, max_queue_size: u32) -> Self {
        Self {
            st: Arc::new(Mutex::new(DevState {
                device_features: features.bits(),
                driver_features: 0,
                status: DeviceStatus::empty(),
                config: [0u8; config::LEN],
                generation: 0,
                max_queue_size,
                queues: vec![FakeQueue::default(); FAKE_QUEUES],
                balloon: BTreeSet::new(),
                reported: Vec::new(),
                stats_head: None,
                last_stats: Vec::new(),
                resets: 0,
                unstable_config: false,
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

    /// Flag DEVICE_NEEDS_RESET (hostile or broken device).
    pub fn set_needs_reset(&self) {
        let mut s = self.lock();
        s.status |= DeviceStatus::DEVICE_NEEDS_RESET;
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

    /// True if the driver set queue `q` up.
    pub fn queue_ready(&self, q: u16) -> bool {
        self.lock()
            .queues
            .get(usize::from(q))
            .is_some_and(|x| x.desc != 0)
    }

    /// Set `num_pages` (le32) and bump the generation: a config change.
    pub fn set_num_pages(&self, n: u32) {
        let mut s = self.lock();
        s.config[config::NUM_PAGES..config::NUM_PAGES + 4].copy_from_slice(&n.to_le_bytes());
        s.generation = s.generation.wrapping_add(1);
    }

    /// Make the config generation change on every read (never stable).
    pub fn set_unstable_config(&self, on: bool) {
        self.lock().unstable_config = on;
    }

    /// `actual` as the driver last wrote it.
    pub fn actual(&self) -> u32 {
        le32(&self.lock().config, config::ACTUAL)
    }

    /// `poison_val` as the driver wrote it.
    pub fn poison_val(&self) -> u32 {
        le32(&self.lock().config, config::POISON_VAL)
    }

    /// Frames the device holds in its balloon (honest processing).
    pub fn balloon(&self) -> BTreeSet<u32> {
        self.lock().balloon.clone()
    }

    /// Ranges reported through free page reporting (address, length).
    pub fn reported(&self) -> Vec<(u64, u32)> {
        self.lock().reported.clone()
    }

    /// The last stats buffer the device consumed.
    pub fn last_stats(&self) -> Vec<u8> {
        self.lock().last_stats.clone()
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
        le16(&dev_read(fq.driver + 2, 2), 0).wrapping_sub(fq.last_avail)
    }

    /// Take the next available chain, or `None`.
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
        let mut descs = Vec::new();
        let mut i = head;
        loop {
            let b = dev_read(table + 16 * u64::from(i), 16);
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[..8]);
            let d = SeenDesc {
                addr: u64::from_le_bytes(a),
                len: le32(&b, 8),
                flags: le16(&b, 12),
            };
            descs.push(d);
            i = le16(&b, 14);
            if d.flags & 1 == 0 || descs.len() >= size {
                break;
            }
        }
        Some(Chain { head, descs })
    }

    /// Publish a used element `(id, len)` on queue `q` and advance the used
    /// index by one. Honest devices use [`FakeBalloon::process`]; this is
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

    /// Hostile: set the used index of queue `q` to anything.
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

    /// Honest device: take every available chain on queue `q` and complete
    /// it (inflate adds its frames to the balloon, deflate removes them,
    /// reporting records the ranges). The stats queue is different: the
    /// device keeps the buffer until [`FakeBalloon::request_stats`]. Returns
    /// how many chains were taken.
    pub fn process(&self, q: u16) -> usize {
        let reporting = self.reporting_queue();
        let mut n = 0;
        while let Some(c) = self.take_chain(q) {
            n += 1;
            if q == STATSQ && self.driver_features().contains(VirtioFeatures::STATS_VQ) {
                let bytes = c.bytes();
                let mut s = self.lock();
                s.last_stats = bytes;
                s.stats_head = Some(c.head);
                continue;
            }
            {
                let mut s = self.lock();
                match q {
                    INFLATEQ => s.balloon.extend(c.pfns()),
                    DEFLATEQ => {
                        for p in c.pfns() {
                            s.balloon.remove(&p);
                        }
                    }
                    _ if Some(q) == reporting => {
                        s.reported.extend(c.descs.iter().map(|d| (d.addr, d.len)));
                    }
                    _ => {}
                }
            }
            self.push_used(q, u32::from(c.head), 0);
        }
        n
    }

    /// Honest device asking for fresh stats: take any posted stats buffer,
    /// then give it back. Returns false if the driver has none posted.
    pub fn request_stats(&self) -> bool {
        self.process(STATSQ);
        let head = self.lock().stats_head.take();
        match head {
            Some(h) => {
                self.push_used(STATSQ, u32::from(h), 0);
                true
            }
            None => false,
        }
    }

    /// Where an honest device has its reporting queue, from the negotiated
    /// features (dense numbering, as QEMU and Linux do).
    pub fn reporting_queue(&self) -> Option<u16> {
        let f = self.driver_features();
        if !f.contains(VirtioFeatures::PAGE_REPORTING) {
            return None;
        }
        let mut q = 2;
        if f.contains(VirtioFeatures::STATS_VQ) {
            q += 1;
        }
        if f.contains(VirtioFeatures::FREE_PAGE_HINT) {
            q += 1;
        }
        Some(q)
    }
}

impl Transport for FakeBalloon {
    fn device_type(&self) -> DeviceType {
        DeviceType::MemoryBalloon
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
            for q in &mut s.queues {
                *q = FakeQueue::default();
            }
            s.balloon.clear();
            s.stats_head = None;
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
