//! A bump arena for crash-dump and hibernation mode, where a driver may not
//! allocate: StorPort hands the dump instance of a miniport one region of
//! memory (`PORT_CONFIGURATION_INFORMATION.DumpRegion`, sized by the
//! normal instance's `RequestedDumpBufferSize`), and everything the driver
//! needs comes out of it. Installed once ([`Arena::install`]); blocks are
//! never freed (the dump instance lives until the machine stops). The
//! global allocator of the `runtime` feature serves from [`DUMP`] once it
//! is installed, and the block driver's `Hal` takes its DMA pages from it.
//!
//! Plain atomics, host-tested.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A region: virtual start, physical start, length, next free offset.
#[derive(Debug)]
pub struct Arena {
    virt: AtomicUsize,
    phys: AtomicU64,
    len: AtomicUsize,
    next: AtomicUsize,
}

/// The arena of the dump instance (empty until installed).
pub static DUMP: Arena = Arena::new();

impl Arena {
    /// An empty arena: every allocation from it fails.
    pub const fn new() -> Self {
        Self {
            virt: AtomicUsize::new(0),
            phys: AtomicU64::new(0),
            len: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
        }
    }

    /// Serve from `[virt, virt + len)` (physically contiguous from
    /// `phys`). False when already installed or `virt` is null.
    pub fn install(&self, virt: usize, phys: u64, len: usize) -> bool {
        if virt == 0 || self.virt.load(Ordering::Acquire) != 0 {
            return false;
        }
        self.phys.store(phys, Ordering::Relaxed);
        self.len.store(len, Ordering::Relaxed);
        self.next.store(0, Ordering::Relaxed);
        self.virt.store(virt, Ordering::Release);
        true
    }

    /// Installed?
    pub fn active(&self) -> bool {
        self.virt.load(Ordering::Acquire) != 0
    }

    /// `size` bytes aligned to `align` (a power of two): (virtual,
    /// physical), or `None` when not installed or full.
    pub fn alloc(&self, size: usize, align: usize) -> Option<(usize, u64)> {
        let virt = self.virt.load(Ordering::Acquire);
        if virt == 0 || !align.is_power_of_two() {
            return None;
        }
        let len = self.len.load(Ordering::Relaxed);
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = (virt.checked_add(cur)?.checked_add(align - 1)? & !(align - 1)) - virt;
            let end = start.checked_add(size.max(1))?;
            if end > len {
                return None;
            }
            match self
                .next
                .compare_exchange(cur, end, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    let phys = self.phys.load(Ordering::Relaxed) + start as u64;
                    return Some((virt + start, phys));
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Is `p` inside the arena?
    pub fn contains(&self, p: usize) -> bool {
        let virt = self.virt.load(Ordering::Acquire);
        virt != 0 && p >= virt && p - virt < self.len.load(Ordering::Relaxed)
    }

    /// Bytes handed out so far.
    pub fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bumps_aligned_until_full_and_never_before_install() {
        let a = Arena::new();
        assert_eq!(a.alloc(8, 8), None);
        assert!(!a.contains(0x1000));
        assert!(a.install(0x10_0010, 0x8000_0010, 0x3000));
        assert!(!a.install(0x20_0000, 0, 0x1000), "installed once");
        assert_eq!(a.alloc(24, 8), Some((0x10_0010, 0x8000_0010)));
        // Page-aligned: virtual and physical move together.
        assert_eq!(a.alloc(0x1000, 0x1000), Some((0x10_1000, 0x8000_1000)));
        assert_eq!(a.used(), 0x2000 - 0x10);
        assert!(a.contains(0x10_1fff));
        assert!(!a.contains(0x10_0010 + 0x3000));
        assert_eq!(a.alloc(0x1000, 0x1000), Some((0x10_2000, 0x8000_2000)));
        // No room for another page (the region ends at 0x10_3010), but for
        // the last 16 bytes.
        assert_eq!(a.alloc(0x1000, 0x1000), None);
        assert_eq!(a.alloc(16, 1), Some((0x10_3000, 0x8000_3000)));
        assert_eq!(a.alloc(1, 1), None);
        assert_eq!(a.alloc(1, 3), None, "alignment must be a power of two");
    }
}
