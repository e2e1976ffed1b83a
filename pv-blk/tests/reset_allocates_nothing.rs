//! A device reset allocates nothing once the frontend is warm: a Windows
//! StorPort miniport resets the device from `HwResetBus`/`HwAdapterControl`
//! at DIRQL, where no pool or contiguous allocation is allowed, so the
//! queues must be drained and handed to the device again in their own
//! memory.
//!
//! A counting global allocator counts every heap and DMA allocation (the
//! test HAL's DMA memory comes from the heap) made by this thread while
//! counting is on; the fake device's own bookkeeping is left out by a
//! transport wrapper that pauses counting around each transport call.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use pv_blk::testing::virtio::FakeVirtioBlk;
use pv_blk::virtio::{VirtioBlk, VirtioBlkConfig, VirtioFeatures};
use pv_blk::{BlkError, BlockFrontend, IoBuf, Request, Token};
use pv_virtq::testing::IdentityHal;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use zerocopy::{FromBytes, Immutable, IntoBytes};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; counting
// touches only an atomic and a const-initialised thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded: `ptr` came from this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded: `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with counting paused (the fake device's own allocations).
fn paused<R>(f: impl FnOnce() -> R) -> R {
    let was = COUNTING.with(|c| c.replace(false));
    let r = f();
    COUNTING.with(|c| c.set(was));
    r
}

/// Allocations made by this thread during `f`.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.load(Ordering::Relaxed) - before
}

/// The fake device with counting paused inside every transport call.
#[derive(Debug)]
struct Quiet(FakeVirtioBlk);

impl Transport for Quiet {
    fn device_type(&self) -> DeviceType {
        paused(|| self.0.device_type())
    }
    fn read_device_features(&mut self) -> u64 {
        paused(|| self.0.read_device_features())
    }
    fn write_driver_features(&mut self, f: u64) {
        paused(|| self.0.write_driver_features(f))
    }
    fn max_queue_size(&mut self, q: u16) -> u32 {
        paused(|| self.0.max_queue_size(q))
    }
    fn notify(&mut self, q: u16) {
        paused(|| self.0.notify(q))
    }
    fn get_status(&self) -> DeviceStatus {
        paused(|| self.0.get_status())
    }
    fn set_status(&mut self, s: DeviceStatus) {
        paused(|| self.0.set_status(s))
    }
    fn set_guest_page_size(&mut self, n: u32) {
        paused(|| self.0.set_guest_page_size(n))
    }
    fn requires_legacy_layout(&self) -> bool {
        paused(|| self.0.requires_legacy_layout())
    }
    fn queue_set(&mut self, q: u16, size: u32, d: PhysAddr, a: PhysAddr, u: PhysAddr) {
        paused(|| self.0.queue_set(q, size, d, a, u))
    }
    fn queue_unset(&mut self, q: u16) {
        paused(|| self.0.queue_unset(q))
    }
    fn queue_used(&mut self, q: u16) -> bool {
        paused(|| self.0.queue_used(q))
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        paused(|| self.0.ack_interrupt())
    }
    fn read_config_generation(&self) -> u32 {
        paused(|| self.0.read_config_generation())
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, off: usize) -> virtio_drivers::Result<T> {
        paused(|| self.0.read_config_space(off))
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        off: usize,
        v: T,
    ) -> virtio_drivers::Result<()> {
        paused(|| self.0.write_config_space(off, v))
    }
}

type Blk = VirtioBlk<IdentityHal, Quiet>;

const SECTORS: u64 = 2048;

fn setup(cfg: VirtioBlkConfig) -> (FakeVirtioBlk, Blk) {
    let dev = FakeVirtioBlk::new(VirtioFeatures::all() - VirtioFeatures::RO, SECTORS, 2, 16);
    let blk = Blk::new(Quiet(dev.clone()), cfg).expect("init");
    (dev, blk)
}

fn complete_all(dev: &FakeVirtioBlk, blk: &mut Blk) -> Vec<(Token, Result<usize, BlkError>)> {
    for q in 0..2 {
        dev.process(q);
    }
    let mut done = Vec::new();
    blk.poll_completions(&mut |t, r| done.push((t, r)))
        .expect("poll");
    done
}

fn reset_with_requests_in_flight(cfg: VirtioBlkConfig) {
    // Buffers outlive the frontend (dropping it hands them back).
    let mut bufs = vec![[0u8; 512]; 8];
    let (dev, mut blk) = setup(cfg);

    // Warm up: every queue has carried requests and completed them.
    for round in 0..2u8 {
        for (i, b) in bufs.iter_mut().enumerate() {
            b.fill(round ^ i as u8);
            let io = [IoBuf::from_slice(b)];
            // SAFETY: `bufs` outlives every request.
            unsafe { blk.submit(&Request::write(i as u64 * 8, &io)) }.expect("write");
        }
        let done = complete_all(&dev, &mut blk);
        assert_eq!(done.len(), bufs.len());
        assert!(done.iter().all(|(_, r)| r.is_ok()), "{done:?}");
    }

    // Requests in flight when the reset comes.
    for (i, b) in bufs.iter_mut().enumerate() {
        let io = [IoBuf::from_slice(b)];
        // SAFETY: `bufs` outlives every request.
        unsafe { blk.submit(&Request::read(i as u64 * 8, &io)) }.expect("read");
    }
    assert_eq!(blk.in_flight(), bufs.len());

    let resets = dev.resets();
    let mut aborted = 0usize;
    let mut other = 0usize;
    let n = allocations_in(|| {
        blk.reset(&mut |_, r| match r {
            Err(BlkError::Aborted) => aborted += 1,
            _ => other += 1,
        })
        .expect("reset");
    });
    assert!(dev.resets() > resets, "the device was not reset");
    assert_eq!((aborted, other), (bufs.len(), 0));
    assert_eq!(blk.in_flight(), 0);
    assert_eq!(n, 0, "the reset allocated {n} times");

    // The queues work after the reset, and the data is the last written.
    let mut back = [0u8; 512];
    let io = [IoBuf::from_slice(&mut back)];
    // SAFETY: `back` outlives the request.
    unsafe { blk.submit(&Request::read(3 * 8, &io)) }.expect("read after reset");
    let done = complete_all(&dev, &mut blk);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1, Ok(512));
    drop(blk);
    assert!(back.iter().all(|&b| b == 1 ^ 3), "{:?}", &back[..8]);
}

#[test]
fn reset_allocates_nothing_with_indirect_tables() {
    reset_with_requests_in_flight(VirtioBlkConfig {
        max_queues: 2,
        ..VirtioBlkConfig::default()
    });
}

#[test]
fn reset_allocates_nothing_with_direct_descriptors() {
    reset_with_requests_in_flight(VirtioBlkConfig {
        max_queues: 2,
        refuse: VirtioFeatures::INDIRECT_DESC,
        ..VirtioBlkConfig::default()
    });
}
