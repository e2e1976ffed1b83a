//! The miniport's [`Hal`]: the kernel's ([`KernelHal`]) in normal mode; in
//! crash-dump and hibernation mode, where nothing may be allocated, DMA
//! pages come from the dump region StorPort handed over
//! ([`pv_windows::arena::DUMP`]) and buffers are shared in place (the
//! driver only ever hands over physically contiguous runs).

use core::ffi::c_void;
use core::ptr::NonNull;

use pv_windows::arena::DUMP;
use pv_windows::ffi;
use pv_windows::hal::KernelHal;
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// See the module docs.
#[derive(Debug)]
pub struct DriverHal;

// SAFETY: in normal mode every call is KernelHal's. In dump mode
// `dma_alloc` returns zeroed, page-aligned arena pages, never reused (the
// arena does not free); `share` returns the physical address of a buffer
// the driver guarantees is physically contiguous (translate::contiguous_runs),
// valid as long as the buffer is.
unsafe impl Hal for DriverHal {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        if !DUMP.active() {
            return KernelHal::dma_alloc(pages, direction);
        }
        let bytes = pages * PAGE_SIZE;
        let Some((v, p)) = DUMP
            .alloc(bytes, PAGE_SIZE)
            .and_then(|(v, p)| NonNull::new(v as *mut u8).map(|v| (v, p)))
        else {
            // virtio-drivers' Hal has no failure path: a dump region too
            // small is a bug (RequestedDumpBufferSize).
            panic!("dump region exhausted: {pages} DMA pages");
        };
        // SAFETY: fresh arena memory of `bytes` bytes.
        unsafe { core::ptr::write_bytes(v.as_ptr(), 0, bytes) };
        (p as PhysAddr, v)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        if DUMP.contains(vaddr.as_ptr() as usize) {
            return 0; // Never freed.
        }
        // SAFETY: forwarded: the pages came from KernelHal::dma_alloc.
        unsafe { KernelHal::dma_dealloc(paddr, vaddr, pages) }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // SAFETY: forwarded; the BARs are registered in both modes.
        unsafe { KernelHal::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        if !DUMP.active() {
            // SAFETY: forwarded.
            return unsafe { KernelHal::share(buffer, direction) };
        }
        // SAFETY: MmGetPhysicalAddress takes any resident kernel address.
        unsafe { ffi::MmGetPhysicalAddress(buffer.as_ptr() as *mut u8 as *mut c_void) as PhysAddr }
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        if !DUMP.active() {
            // SAFETY: forwarded.
            unsafe { KernelHal::unshare(paddr, buffer, direction) }
        }
    }
}
