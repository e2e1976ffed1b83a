//! Frontend-owned packet buffers: one allocation cut into equal slots that
//! never move, so a slot can be shared with a device while the frontend
//! keeps working on the others.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::NonNull;

use crate::NetError;

/// `count` slots of `len` bytes. The stride is `len` rounded up to a power
/// of two (or to whole pages above 4 KiB), and the base is page-aligned, so
/// a slot of up to a page never crosses a page boundary: a HAL that shares
/// by physical address sees one contiguous range.
#[derive(Debug)]
pub struct BufArena {
    base: NonNull<u8>,
    layout: Layout,
    stride: usize,
    len: usize,
    count: usize,
}

// SAFETY: the arena owns its allocation outright; moving it to another
// thread moves that ownership (slots shared with a device are a device
// concern, not a thread one).
unsafe impl Send for BufArena {}

impl BufArena {
    /// Allocate `count` zeroed slots of `len` bytes.
    pub fn new(count: usize, len: usize) -> Result<Self, NetError> {
        let len = len.max(1);
        let stride = if len <= 4096 {
            len.next_power_of_two()
        } else {
            len.div_ceil(4096) * 4096
        };
        let size = stride
            .checked_mul(count.max(1))
            .ok_or(NetError::Transport)?;
        let layout = Layout::from_size_align(size, 4096).map_err(|_| NetError::Transport)?;
        // SAFETY: `size` is non-zero (`stride >= 1`, `count.max(1) >= 1`).
        let p = unsafe { alloc_zeroed(layout) };
        let base = NonNull::new(p).ok_or(NetError::Transport)?;
        Ok(Self {
            base,
            layout,
            stride,
            len,
            count,
        })
    }

    /// Slots.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes per slot.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a slot holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn ptr(&self, i: usize) -> *mut u8 {
        // Slot indices come from our own free lists and tokens checked
        // against `count` by the callers; an invariant, not input checking.
        assert!(i < self.count, "buffer slot {i} out of range");
        self.base.as_ptr().wrapping_add(i * self.stride)
    }

    /// The first `n` bytes (at most the slot) of slot `i`, raw, for sharing.
    pub fn raw(&self, i: usize, n: usize) -> NonNull<[u8]> {
        let p = NonNull::new(self.ptr(i)).unwrap_or(self.base);
        NonNull::slice_from_raw_parts(p, n.min(self.len))
    }

    /// Slot `i` for reading.
    ///
    /// # Safety
    ///
    /// Slot `i` is not shared with a device now (never posted, or its
    /// completion was popped or the queue drained).
    pub unsafe fn slot(&self, i: usize) -> &[u8] {
        // SAFETY: `ptr` checked `i`, so `len` bytes lie inside the
        // allocation, which lives as long as `&self`; the caller guarantees
        // nobody writes the slot meanwhile.
        unsafe { core::slice::from_raw_parts(self.ptr(i), self.len) }
    }

    /// Slot `i` for writing.
    ///
    /// # Safety
    ///
    /// As for [`BufArena::slot`]; and no other reference to slot `i` lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slot_mut(&self, i: usize) -> &mut [u8] {
        // SAFETY: as for `slot`; the caller guarantees exclusivity.
        unsafe { core::slice::from_raw_parts_mut(self.ptr(i), self.len) }
    }
}

impl Drop for BufArena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the owner drained
        // (unshared) every slot before dropping the arena.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}
