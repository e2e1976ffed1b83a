//! What a Rust kernel image needs once: the global allocator, the panic
//! handler and `_fltused` (feature `runtime`, Windows only).

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use crate::ffi;

/// The kernel pool as Rust's global allocator: `ExAllocatePool2` from
/// non-paged, non-executable pool (usable at any IRQL up to
/// `DISPATCH_LEVEL`) with our pool tag, freed with `ExFreePoolWithTag`.
/// Pool blocks are 16-byte aligned on x64; larger alignments are refused
/// (null), which Rust turns into an allocation-failure panic.
struct KernelPool;

/// Pool alignment on x64 (`MEMORY_ALLOCATION_ALIGNMENT`, `wdm.h`).
const POOL_ALIGN: usize = 16;

// SAFETY: `alloc` returns null or a fresh block of at least `size` bytes,
// 16-byte aligned, refusing stricter alignments; `dealloc` frees only
// blocks `alloc` returned, with the same tag.
unsafe impl GlobalAlloc for KernelPool {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Crash-dump mode: from the dump region only (zeroed).
        if crate::arena::DUMP.active() {
            return arena_alloc(layout);
        }
        if layout.align() > POOL_ALIGN {
            return core::ptr::null_mut();
        }
        // SAFETY: any size is valid; the kernel returns null on failure.
        unsafe {
            ffi::ExAllocatePool2(
                ffi::POOL_FLAG_NON_PAGED | ffi::POOL_FLAG_UNINITIALIZED,
                layout.size().max(1),
                crate::POOL_TAG,
            )
        }
        .cast()
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if crate::arena::DUMP.active() {
            return arena_alloc(layout);
        }
        if layout.align() > POOL_ALIGN {
            return core::ptr::null_mut();
        }
        // SAFETY: as `alloc`; without POOL_FLAG_UNINITIALIZED the pool
        // zeroes the block.
        unsafe {
            ffi::ExAllocatePool2(
                ffi::POOL_FLAG_NON_PAGED,
                layout.size().max(1),
                crate::POOL_TAG,
            )
        }
        .cast()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        if crate::arena::DUMP.contains(ptr as usize) {
            return; // Arena blocks are never freed.
        }
        // SAFETY: `ptr` came from `alloc`/`alloc_zeroed` (GlobalAlloc's
        // contract) with our tag.
        unsafe { ffi::ExFreePoolWithTag(ptr.cast::<c_void>(), crate::POOL_TAG) }
    }
}

/// A block of the dump arena (zeroed when the arena was installed, never
/// reused), or null when it is full.
fn arena_alloc(layout: Layout) -> *mut u8 {
    crate::arena::DUMP
        .alloc(layout.size(), layout.align())
        .map_or(core::ptr::null_mut(), |(v, _)| v as *mut u8)
}

#[global_allocator]
static ALLOCATOR: KernelPool = KernelPool;

/// A panic in a driver is a bug in the driver: stop the machine with our
/// bug-check code (see [`crate::BUGCHECK_PVDRIVERS`]) rather than run on
/// with broken invariants in kernel mode. The parameters let a crash dump
/// name the place: line, file name pointer, file name length.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let (line, file, len) = info
        .location()
        .map(|l| {
            (
                l.line() as usize,
                l.file().as_ptr() as usize,
                l.file().len(),
            )
        })
        .unwrap_or((0, 0, 0));
    // SAFETY: KeBugCheckEx takes any values and never returns.
    unsafe { ffi::KeBugCheckEx(crate::BUGCHECK_PVDRIVERS, line, file, len, 0) }
}

/// The MSVC toolchain emits a reference to `_fltused` from any code that
/// uses floating point (core's formatting does); the CRT or wdk-sys
/// normally defines it. Its value is never read.
#[unsafe(no_mangle)]
#[used]
pub static _fltused: i32 = 0;
