//! Cost of validation: one buffer's round trip (add, device takes it and
//! publishes a used element, pop) through pv-virtq's validated `VirtQueue`
//! and through `virtio_drivers::queue::VirtQueue` 0.13, in the same run,
//! over the same minimal in-process device and an identity-mapped HAL (no
//! bounce copies), so the difference is the queues' own work.
//!
//! `cargo bench -p pv-virtq --bench virtq`

use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};

use criterion::{criterion_group, criterion_main, Criterion};
use pv_virtq::{Part, VirtQueue};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

const SIZE: u16 = 256;

/// Identity-mapped DMA, no bounce buffers.
struct BenchHal;

// SAFETY: fresh zeroed page-aligned allocations owned until `dma_dealloc`;
// `share` hands out the buffer's own address, valid while the caller keeps
// the buffer alive (the queue contracts).
unsafe impl Hal for BenchHal {
    fn dma_alloc(pages: usize, _d: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE)
            .unwrap_or(Layout::new::<u8>());
        // SAFETY: non-zero size.
        let p = NonNull::new(unsafe { alloc_zeroed(layout) }).unwrap_or(NonNull::dangling());
        (p.as_ptr() as PhysAddr, p)
    }

    unsafe fn dma_dealloc(_p: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        if let Ok(layout) = Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE) {
            // SAFETY: from `dma_alloc` with this layout.
            unsafe { dealloc(vaddr.as_ptr(), layout) };
        }
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _d: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as PhysAddr
    }

    unsafe fn unshare(_p: PhysAddr, _b: NonNull<[u8]>, _d: BufferDirection) {}
}

/// The device side of one queue: take one available head, publish it used.
#[derive(Default, Clone, Copy)]
struct Dev {
    driver: u64,
    device: u64,
    last_avail: u16,
    used_idx: u16,
}

impl Dev {
    fn serve(&mut self) {
        let n = u64::from(SIZE);
        let slot = (self.driver + 4 + 2 * (u64::from(self.last_avail) % n)) as *const u16;
        // SAFETY: the addresses are the queue's own DMA rings (identity
        // mapped), alive while the queue is; offsets are masked by the ring
        // size, so each access is inside its ring (same for the writes).
        let head = unsafe { slot.read_volatile() };
        self.last_avail = self.last_avail.wrapping_add(1);
        let e = self.device + 4 + 8 * (u64::from(self.used_idx) % n);
        // SAFETY: as above.
        unsafe { (e as *mut u32).write_volatile(u32::from(head)) };
        // SAFETY: as above.
        unsafe { ((e + 4) as *mut u32).write_volatile(64) };
        self.used_idx = self.used_idx.wrapping_add(1);
        // SAFETY: as above.
        unsafe { ((self.device + 2) as *mut u16).write_volatile(self.used_idx) };
    }
}

/// Just enough transport for `virtio_drivers::queue::VirtQueue::new`.
#[derive(Default)]
struct BenchTransport {
    dev: Dev,
    used: bool,
}

impl Transport for BenchTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::Network
    }
    fn read_device_features(&mut self) -> u64 {
        0
    }
    fn write_driver_features(&mut self, _f: u64) {}
    fn max_queue_size(&mut self, _q: u16) -> u32 {
        u32::from(SIZE)
    }
    fn notify(&mut self, _q: u16) {}
    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::empty()
    }
    fn set_status(&mut self, _s: DeviceStatus) {}
    fn set_guest_page_size(&mut self, _s: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(&mut self, _q: u16, _size: u32, _d: PhysAddr, driver: PhysAddr, device: PhysAddr) {
        self.dev = Dev {
            driver,
            device,
            ..Dev::default()
        };
        self.used = true;
    }
    fn queue_unset(&mut self, _q: u16) {
        self.used = false;
    }
    fn queue_used(&mut self, _q: u16) -> bool {
        self.used
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }
    fn read_config_generation(&self) -> u32 {
        0
    }
    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        _o: usize,
    ) -> Result<T, virtio_drivers::Error> {
        Err(virtio_drivers::Error::ConfigSpaceMissing)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _o: usize,
        _v: T,
    ) -> Result<(), virtio_drivers::Error> {
        Err(virtio_drivers::Error::ConfigSpaceMissing)
    }
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtq_round_trip_1buf");
    let mut buf = vec![0u8; 2048];

    let mut ours = VirtQueue::<BenchHal>::new(0, SIZE, true, false).expect("queue");
    let (_, a, u) = ours.addresses();
    let mut dev = Dev {
        driver: a,
        device: u,
        ..Dev::default()
    };
    g.bench_function("pv_virtq", |b| {
        b.iter(|| {
            let p = NonNull::from(&mut buf[..]);
            // SAFETY: `buf` outlives the round trip, which ends at `pop`.
            unsafe { ours.add(&[Part::In(p)], 7) }.expect("add");
            let _ = ours.kick_needed();
            dev.serve();
            let used = ours.pop().expect("pop").expect("used");
            std::hint::black_box(used);
        })
    });

    let mut t = BenchTransport::default();
    let mut theirs = virtio_drivers::queue::VirtQueue::<BenchHal, { SIZE as usize }>::new(
        &mut t, 0, false, true,
    )
    .expect("queue");
    let mut dev = t.dev;
    g.bench_function("virtio_drivers_virtqueue", |b| {
        b.iter(|| {
            // SAFETY: `buf` outlives the round trip, which ends at `pop_used`.
            let token = unsafe { theirs.add(&[], &mut [&mut buf[..]]) }.expect("add");
            let _ = theirs.should_notify();
            dev.serve();
            // SAFETY: same buffer as added.
            let n = unsafe { theirs.pop_used(token, &[], &mut [&mut buf[..]]) }.expect("pop");
            std::hint::black_box(n);
        })
    });
    g.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
