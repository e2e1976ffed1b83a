//! [`virtio_drivers::Hal`] for the Windows kernel.
//!
//! - DMA memory: `MmAllocateContiguousMemorySpecifyCache` (physically
//!   contiguous, cached: x86 DMA is coherent), zeroed; its address from
//!   `MmGetPhysicalAddress`.
//! - Sharing a buffer: the driver's buffers live in non-paged pool, which is
//!   resident but not necessarily physically contiguous across a page
//!   boundary. A buffer whose pages are contiguous is shared in place;
//!   any other is bounced through a fresh DMA allocation (copied in for the
//!   device to read, copied out on `unshare` for the device to have
//!   written). The bounce is found again on `unshare` because its address
//!   differs from the buffer's.
//! - MMIO: the driver maps its BARs with `MmMapIoSpaceEx` and registers
//!   each mapping ([`register_mmio`]); `mmio_phys_to_virt` answers from
//!   that table and refuses (a panic, hence a bug check) any address the
//!   driver did not map: virtio-drivers only asks for ranges inside BARs
//!   the driver's own resources name.
//!
//! # Implementation safety (what `Hal` requires of us)
//!
//! `dma_alloc` returns zeroed, page-aligned memory that stays valid and is
//! not used by anything else until `dma_dealloc`; `share` returns an
//! address the device can use for the whole buffer; `mmio_phys_to_virt`
//! returns a mapping of at least `size` bytes that lives as long as the
//! registration. The driver guarantees registrations outlive every
//! transport built on them (it drops the balloon, which resets the device,
//! before unmapping).

use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::ffi;

/// Registered BAR mappings: (physical start, length, virtual start); a
/// zero length is a free slot. Four devices of six BARs each.
const SLOTS: usize = 24;
static MMIO: [[AtomicU64; 3]; SLOTS] = [const { [const { AtomicU64::new(0) }; 3] }; SLOTS];

/// Make `[phys, phys + len)` mapped at `virt` known to `mmio_phys_to_virt`.
/// Returns false when the table is full.
pub fn register_mmio(phys: u64, len: u64, virt: *mut c_void) -> bool {
    for slot in &MMIO {
        // Claim a free slot by its length, then publish the rest; readers
        // see a slot only once `len` is non-zero and `virt` is set
        // (Release below, Acquire in `lookup`).
        if slot[1]
            .compare_exchange(0, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot[0].store(phys, Ordering::Relaxed);
            slot[2].store(virt as u64, Ordering::Relaxed);
            slot[1].store(len, Ordering::Release);
            return true;
        }
    }
    false
}

/// Forget the mapping at `virt` (before unmapping it).
pub fn unregister_mmio(virt: *mut c_void) {
    for slot in &MMIO {
        let len = slot[1].load(Ordering::Acquire);
        if len != 0 && len != u64::MAX && slot[2].load(Ordering::Relaxed) == virt as u64 {
            slot[1].store(0, Ordering::Release);
        }
    }
}

fn lookup(phys: u64, size: u64) -> Option<u64> {
    MMIO.iter().find_map(|slot| {
        let len = slot[1].load(Ordering::Acquire);
        if len == 0 || len == u64::MAX {
            return None;
        }
        let start = slot[0].load(Ordering::Relaxed);
        let end = start.checked_add(len)?;
        let want_end = phys.checked_add(size)?;
        (phys >= start && want_end <= end).then(|| slot[2].load(Ordering::Relaxed) + (phys - start))
    })
}

fn phys_of(p: *const u8) -> u64 {
    // SAFETY: MmGetPhysicalAddress takes any resident kernel address; the
    // callers pass non-paged memory.
    unsafe { ffi::MmGetPhysicalAddress(p as *mut c_void) as u64 }
}

/// Is `[p, p + len)` physically contiguous?
fn contiguous(p: *const u8, len: usize) -> bool {
    let first = phys_of(p);
    let mut off = PAGE_SIZE - (p as usize % PAGE_SIZE);
    while off < len {
        // SAFETY (pointer arithmetic only): `off < len`, inside the buffer.
        if phys_of(p.wrapping_add(off)) != first + off as u64 {
            return false;
        }
        off += PAGE_SIZE;
    }
    true
}

/// The kernel's `Hal`.
#[derive(Debug)]
pub struct KernelHal;

// SAFETY: see the module docs, "Implementation safety".
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let bytes = pages * PAGE_SIZE;
        // SAFETY: any size; null on failure.
        let p = unsafe {
            ffi::MmAllocateContiguousMemorySpecifyCache(bytes, 0, i64::MAX, 0, ffi::MM_CACHED)
        };
        let Some(p) = NonNull::new(p.cast::<u8>()) else {
            // virtio-drivers' Hal has no failure path for dma_alloc.
            panic!("out of contiguous memory for {pages} DMA pages");
        };
        // SAFETY: `p` is a fresh allocation of `bytes` bytes.
        unsafe { core::ptr::write_bytes(p.as_ptr(), 0, bytes) };
        (phys_of(p.as_ptr()) as PhysAddr, p)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: `vaddr` came from `dma_alloc` with this many pages
        // (the trait's contract).
        unsafe {
            ffi::MmFreeContiguousMemorySpecifyCache(
                vaddr.as_ptr().cast(),
                pages * PAGE_SIZE,
                ffi::MM_CACHED,
            )
        };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        match lookup(paddr as u64, size as u64).and_then(|v| NonNull::new(v as *mut u8)) {
            Some(v) => v,
            None => panic!("MMIO {paddr:#x}+{size:#x} is in no BAR the driver mapped"),
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let p = buffer.as_ptr() as *const u8;
        let len = buffer.len();
        if contiguous(p, len) {
            return phys_of(p) as PhysAddr;
        }
        let pages = len.div_ceil(PAGE_SIZE);
        let (paddr, bounce) = Self::dma_alloc(pages, direction);
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the buffer is `len` readable bytes (the trait's
            // contract), the bounce at least `len` fresh bytes.
            unsafe { core::ptr::copy_nonoverlapping(p, bounce.as_ptr(), len) };
        }
        paddr
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let p = buffer.as_ptr() as *mut u8;
        let len = buffer.len();
        if phys_of(p) as PhysAddr == paddr {
            return; // Shared in place.
        }
        // SAFETY: `paddr` is a bounce `share` allocated; the kernel maps it
        // back to its (non-paged) virtual address.
        let bounce = unsafe { ffi::MmGetVirtualForPhysical(paddr as i64) }.cast::<u8>();
        let Some(bounce) = NonNull::new(bounce) else {
            return;
        };
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: the device is done with the bounce (unshare's
            // contract); both regions are `len` bytes.
            unsafe { core::ptr::copy_nonoverlapping(bounce.as_ptr(), p, len) };
        }
        // SAFETY: the bounce came from `dma_alloc` with this many pages.
        unsafe { Self::dma_dealloc(paddr, bounce, len.div_ceil(PAGE_SIZE)) };
    }
}
