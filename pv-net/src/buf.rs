//! Frontend-owned packet buffers: one allocation cut into equal slots that
//! never move, so a slot can be shared with a device while the frontend
//! keeps working on the others.
//!
//! The memory comes from the heap ([`BufArena::new`]) or from a caller's
//! page allocator ([`BufArena::from_pages`]), e.g. a virtio `Hal`'s DMA
//! memory, so a HAL that bounces heap buffers can share slots in place.

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
    /// Memory from [`BufArena::from_pages`]: how to give it back.
    pages: Option<PageMem>,
}

/// Frees `pages` 4 KiB pages at `vaddr` that an allocator handed out with
/// the handle `cookie` (e.g. a physical address).
///
/// # Safety
///
/// Called once, with exactly what the allocator returned, after every use
/// of the memory has ended.
pub type FreePages = unsafe fn(cookie: u64, vaddr: NonNull<u8>, pages: usize);

/// Arena memory owned by a page allocator.
#[derive(Debug)]
struct PageMem {
    cookie: u64,
    pages: usize,
    free: FreePages,
}

/// Page size [`BufArena::from_pages`] allocates in.
pub const PAGE_SIZE: usize = 4096;

// SAFETY: the arena owns its allocation outright; moving it to another
// thread moves that ownership (slots shared with a device are a device
// concern, not a thread one).
unsafe impl Send for BufArena {}

impl BufArena {
    /// Slot stride and total layout for `count` slots of `len` bytes.
    fn geometry(count: usize, len: usize) -> Result<(usize, usize, Layout), NetError> {
        let len = len.max(1);
        let stride = if len <= PAGE_SIZE {
            len.next_power_of_two()
        } else {
            len.div_ceil(PAGE_SIZE) * PAGE_SIZE
        };
        let size = stride
            .checked_mul(count.max(1))
            .ok_or(NetError::Transport)?;
        let layout = Layout::from_size_align(size, PAGE_SIZE).map_err(|_| NetError::Transport)?;
        Ok((len, stride, layout))
    }

    /// Allocate `count` zeroed slots of `len` bytes from the heap.
    pub fn new(count: usize, len: usize) -> Result<Self, NetError> {
        let (len, stride, layout) = Self::geometry(count, len)?;
        // SAFETY: `size` is non-zero (`stride >= 1`, `count.max(1) >= 1`).
        let p = unsafe { alloc_zeroed(layout) };
        let base = NonNull::new(p).ok_or(NetError::Transport)?;
        Ok(Self {
            base,
            layout,
            stride,
            len,
            count,
            pages: None,
        })
    }

    /// Allocate `count` slots of `len` bytes as whole pages from `alloc`,
    /// which returns `(cookie, vaddr)` of that many zeroed, page-aligned,
    /// exclusively owned pages, or `None`; `free` gives them back on drop.
    /// Falls back to the heap ([`BufArena::new`]) when `alloc` fails.
    ///
    /// # Safety
    ///
    /// Memory `alloc` returns is valid for reads and writes of the asked
    /// pages until it is passed to `free`.
    pub unsafe fn from_pages(
        count: usize,
        len: usize,
        alloc: impl FnOnce(usize) -> Option<(u64, NonNull<u8>)>,
        free: FreePages,
    ) -> Result<Self, NetError> {
        let (len, stride, layout) = Self::geometry(count, len)?;
        let pages = layout.size().div_ceil(PAGE_SIZE);
        let Some((cookie, base)) = alloc(pages) else {
            return Self::new(count, len);
        };
        Ok(Self {
            base,
            layout,
            stride,
            len,
            count,
            pages: Some(PageMem {
                cookie,
                pages,
                free,
            }),
        })
    }

    /// True if the slots live in memory from [`BufArena::from_pages`].
    pub fn is_paged(&self) -> bool {
        self.pages.is_some()
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
        match self.pages.take() {
            // SAFETY: exactly what the allocator returned in `from_pages`,
            // freed once; the owner drained (unshared) every slot first.
            Some(m) => unsafe { (m.free)(m.cookie, self.base, m.pages) },
            // SAFETY: allocated in `new` with this layout; the owner drained
            // (unshared) every slot before dropping the arena.
            None => unsafe { dealloc(self.base.as_ptr(), self.layout) },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicUsize, Ordering};

    static FREED: AtomicUsize = AtomicUsize::new(0);

    fn page_layout(pages: usize) -> Layout {
        Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).unwrap()
    }

    unsafe fn free(cookie: u64, vaddr: NonNull<u8>, pages: usize) {
        assert_eq!(cookie, 0xabc);
        FREED.fetch_add(pages, Ordering::SeqCst);
        // SAFETY: allocated below with this layout.
        unsafe { dealloc(vaddr.as_ptr(), page_layout(pages)) };
    }

    #[test]
    fn from_pages_uses_and_frees_the_allocator() {
        let mut asked = 0;
        let alloc = |pages| {
            asked = pages;
            // SAFETY: non-zero size.
            let p = unsafe { alloc_zeroed(page_layout(pages)) };
            NonNull::new(p).map(|p| (0xabc, p))
        };
        // SAFETY: the allocator returns zeroed pages owned by the arena.
        let a = unsafe { BufArena::from_pages(256, 1526, alloc, free) }.unwrap();
        assert!(a.is_paged());
        // 1526 bytes round up to a 2048-byte stride: 256 slots in 128 pages.
        assert_eq!(asked, 128);
        // SAFETY: nothing is shared.
        unsafe { a.slot_mut(255)[1525] = 7 };
        // SAFETY: as above.
        assert_eq!(unsafe { a.slot(255) }[1525], 7);
        let before = FREED.load(Ordering::SeqCst);
        drop(a);
        assert_eq!(FREED.load(Ordering::SeqCst) - before, 128);
    }

    #[test]
    fn from_pages_falls_back_to_the_heap() {
        // SAFETY: the allocator never returns memory.
        let a = unsafe { BufArena::from_pages(4, 100, |_| None, free) }.unwrap();
        assert!(!a.is_paged());
        // SAFETY: nothing is shared.
        assert!(unsafe { a.slot(3) }.iter().all(|&b| b == 0));
    }
}
