//! The kernel's memory figures as virtio-balloon statistics, and the
//! balloon's limits from them.
//!
//! The figures come from `ZwQuerySystemInformation`, which the driver calls
//! at `PASSIVE_LEVEL` in its worker thread: no user-mode service is
//! involved. The information classes and their layouts are not in the WDK
//! headers (`winternl.h` declares the structures opaque); the offsets below
//! are those of System Informer's `phnt` (`ntexapi.h`:
//! `SYSTEM_BASIC_INFORMATION`, `SYSTEM_PERFORMANCE_INFORMATION`), stable
//! since Windows XP for the fields used. They are parsed from byte buffers
//! with bounds checks, so a shorter structure yields fewer statistics, not
//! a bad read.
//!
//! | virtio tag | from |
//! |---|---|
//! | `MEMTOT` | `NumberOfPhysicalPages × PageSize` |
//! | `AVAIL` | `AvailablePages × PageSize` (free, zeroed and standby lists) |
//! | `MAJFLT` | `PageReadIoCount` (hard faults: page-in I/Os) |
//! | `MINFLT` | `PageFaultCount − PageReadIoCount` |
//! | `SWAP_OUT` | `DirtyPagesWriteCount × PageSize` (pages written to the paging file) |
//!
//! Not sent: `MEMFREE` (Windows counts free and standby pages together in
//! the figure above; the split needs another undocumented class),
//! `SWAP_IN` (page-ins mix paging file and mapped files), `CACHES` and the
//! hugetlb counters (no equivalent).

use pv_balloon::{Limits, MemStats, StatTag, FRAME_SIZE};

/// `SystemBasicInformation` (class 0): bytes the driver asks for.
pub const BASIC_BYTES: usize = 0x40;
/// `SystemPerformanceInformation` (class 2): bytes the driver asks for
/// (the structure has grown across releases; 0x158 on Windows 7, more
/// since; the fields used are all below 0x70).
pub const PERF_BYTES: usize = 0x200;

mod basic {
    pub const PAGE_SIZE: usize = 0x08;
    pub const PHYSICAL_PAGES: usize = 0x0C;
}

mod perf {
    pub const AVAILABLE_PAGES: usize = 0x2C;
    pub const PAGE_FAULT_COUNT: usize = 0x3C;
    pub const PAGE_READ_IO_COUNT: usize = 0x54;
    pub const DIRTY_PAGES_WRITE_COUNT: usize = 0x60;
}

fn u32_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off + 4)?;
    Some(u64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]])))
}

/// Guest memory in bytes, from the basic information.
pub fn total_bytes(basic: &[u8]) -> Option<u64> {
    let ps = u32_at(basic, basic::PAGE_SIZE)?;
    let pages = u32_at(basic, basic::PHYSICAL_PAGES)?;
    (ps != 0).then(|| pages.saturating_mul(ps))
}

/// The statistics the kernel's figures give (see the module docs).
pub fn mem_stats(basic: &[u8], perf: &[u8]) -> MemStats {
    let mut s = MemStats::default();
    let Some(ps) = u32_at(basic, basic::PAGE_SIZE).filter(|&p| p != 0) else {
        return s;
    };
    if let Some(t) = total_bytes(basic) {
        s.set(StatTag::MemTot, t);
    }
    if let Some(a) = u32_at(perf, perf::AVAILABLE_PAGES) {
        s.set(StatTag::Avail, a.saturating_mul(ps));
    }
    let faults = u32_at(perf, perf::PAGE_FAULT_COUNT);
    let hard = u32_at(perf, perf::PAGE_READ_IO_COUNT);
    if let Some(h) = hard {
        s.set(StatTag::MajFlt, h);
    }
    if let (Some(f), Some(h)) = (faults, hard) {
        s.set(StatTag::MinFlt, f.saturating_sub(h));
    }
    if let Some(w) = u32_at(perf, perf::DIRTY_PAGES_WRITE_COUNT) {
        s.set(StatTag::SwapOut, w.saturating_mul(ps));
    }
    s
}

/// Smallest floor: memory the balloon never takes, whatever the host asks.
pub const MIN_FLOOR_BYTES: u64 = 256 << 20;

/// The balloon's limits for a guest of `total` bytes: it keeps an eighth of
/// memory, and at least [`MIN_FLOOR_BYTES`], out of the balloon (Windows
/// needs headroom for its own working sets and the non-paged pool, which a
/// balloon cannot see).
pub fn limits(total: u64) -> Limits {
    let floor = (total / 8).max(MIN_FLOOR_BYTES).min(total);
    let mut l = Limits::new(total, floor);
    l.page_size = FRAME_SIZE;
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn kernel_figures_become_virtio_stats() {
        let mut basic = [0u8; BASIC_BYTES];
        put(&mut basic, basic::PAGE_SIZE, 4096);
        put(&mut basic, basic::PHYSICAL_PAGES, 262_144); // 1 GiB
        let mut perf = [0u8; PERF_BYTES];
        put(&mut perf, perf::AVAILABLE_PAGES, 100_000);
        put(&mut perf, perf::PAGE_FAULT_COUNT, 5000);
        put(&mut perf, perf::PAGE_READ_IO_COUNT, 300);
        put(&mut perf, perf::DIRTY_PAGES_WRITE_COUNT, 7);
        let s = mem_stats(&basic, &perf);
        assert_eq!(s.get(StatTag::MemTot), Some(1 << 30));
        assert_eq!(s.get(StatTag::Avail), Some(100_000 * 4096));
        assert_eq!(s.get(StatTag::MajFlt), Some(300));
        assert_eq!(s.get(StatTag::MinFlt), Some(4700));
        assert_eq!(s.get(StatTag::SwapOut), Some(7 * 4096));
        assert_eq!(s.get(StatTag::MemFree), None);
        assert_eq!(s.get(StatTag::SwapIn), None);
    }

    #[test]
    fn short_or_empty_buffers_give_fewer_stats() {
        let mut basic = [0u8; BASIC_BYTES];
        put(&mut basic, basic::PAGE_SIZE, 4096);
        put(&mut basic, basic::PHYSICAL_PAGES, 1000);
        let mut perf = [0u8; 0x40];
        put(&mut perf, perf::AVAILABLE_PAGES, 10);
        let s = mem_stats(&basic, &perf);
        assert_eq!(s.get(StatTag::Avail), Some(40_960));
        assert_eq!(s.get(StatTag::MajFlt), None);
        assert_eq!(mem_stats(&basic[..8], &perf), MemStats::default());
        assert_eq!(mem_stats(&[0u8; BASIC_BYTES], &perf), MemStats::default());
    }

    #[test]
    fn floor_is_an_eighth_and_at_least_256_mib() {
        let l = limits(8 << 30);
        assert_eq!(l.floor_frames, (1 << 30) / FRAME_SIZE);
        assert_eq!(l.validate(), Ok(()));
        let small = limits(1 << 30);
        assert_eq!(small.floor_frames, MIN_FLOOR_BYTES / FRAME_SIZE);
        let tiny = limits(128 << 20);
        assert_eq!(tiny.max_balloon(), 0);
        assert_eq!(tiny.validate(), Ok(()));
    }
}
