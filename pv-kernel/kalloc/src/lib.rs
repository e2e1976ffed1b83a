//! The global allocator of Rust's `alloc` inside a kernel module: the
//! kernel ships no `alloc` crate (it has its own `KVec`/`KBox`), and our
//! `no_std` crates use `alloc::vec::Vec` and `Box`. The module builds
//! `alloc` from the toolchain's library source as one of its objects and
//! this crate gives it the symbols it calls: `__rust_alloc` and friends, on
//! the kernel's `Kmalloc` with `GFP_KERNEL`.
//!
//! These are internal symbols of the standard library (their names are
//! mangled the compiler's way), so this crate needs `rustc_attrs`; it is
//! built by the harness's unstable rule (tests/src/kernel/extmod.rs) and is
//! not a Cargo package.
//!
//! `GFP_KERNEL` may sleep: our crates allocate only in process context
//! (probe, the module's work items), never under a spinlock or in an
//! interrupt handler.

#![no_std]
#![feature(rustc_attrs)]
#![allow(internal_features, missing_docs)]

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use kernel::alloc::{allocator::Kmalloc, flags::GFP_KERNEL, Allocator, NumaNode};

fn layout(size: usize, align: usize) -> Option<Layout> {
    Layout::from_size_align(size, align).ok()
}

/// # Safety
/// `alloc`'s contract for `GlobalAlloc::alloc`.
#[rustc_std_internal_symbol]
pub unsafe fn __rust_alloc(size: usize, align: usize) -> *mut u8 {
    let Some(l) = layout(size, align) else {
        return ptr::null_mut();
    };
    Kmalloc::alloc(l, GFP_KERNEL, NumaNode::NO_NODE)
        .map_or(ptr::null_mut(), |p| p.as_ptr().cast())
}

/// # Safety
/// `alloc`'s contract for `GlobalAlloc::alloc_zeroed`.
#[rustc_std_internal_symbol]
pub unsafe fn __rust_alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    let Some(l) = layout(size, align) else {
        return ptr::null_mut();
    };
    Kmalloc::alloc(l, GFP_KERNEL | kernel::alloc::flags::__GFP_ZERO, NumaNode::NO_NODE)
        .map_or(ptr::null_mut(), |p| p.as_ptr().cast())
}

/// # Safety
/// `alloc`'s contract for `GlobalAlloc::dealloc`: `ptr` came from
/// [`__rust_alloc`] (or realloc) with this layout.
#[rustc_std_internal_symbol]
pub unsafe fn __rust_dealloc(ptr: *mut u8, size: usize, align: usize) {
    let (Some(p), Some(l)) = (NonNull::new(ptr), layout(size, align)) else {
        return;
    };
    // SAFETY: the caller passes a live allocation of this allocator and its layout.
    unsafe { Kmalloc::free(p, l) };
}

/// # Safety
/// `alloc`'s contract for `GlobalAlloc::realloc`.
#[rustc_std_internal_symbol]
pub unsafe fn __rust_realloc(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8 {
    let (Some(old), Some(new)) = (layout(size, align), layout(new_size, align)) else {
        return ptr::null_mut();
    };
    // SAFETY: the caller passes a live allocation of this allocator (or
    // null) and its layout.
    unsafe { Kmalloc::realloc(NonNull::new(ptr), new, old, GFP_KERNEL, NumaNode::NO_NODE) }
        .map_or(ptr::null_mut(), |p| p.as_ptr().cast())
}

/// `alloc` calls it before every allocation (a guard against linking
/// `alloc` without a shim); nothing to do.
#[rustc_std_internal_symbol]
pub fn __rust_no_alloc_shim_is_unstable_v2() {}

/// An infallible allocation (`Vec::push`, `vec![]`) failed. The kernel has
/// no unwinding: this is a `BUG()` in the module, as in the kernel's own
/// Rust before it dropped `alloc`.
#[rustc_std_internal_symbol]
pub fn __rust_alloc_error_handler(size: usize, _align: usize) -> ! {
    panic!("pv_kalloc: out of memory allocating {size} bytes");
}
