//! QEMU's dirty log (vhost-user `LOG_SHMFD`), marked at the cost of one
//! load and one fence while no log is set.
//!
//! During a migration or a live save QEMU hands the backend a shared bitmap
//! (`SET_LOG_BASE`): one bit per 4 KiB page of guest-physical address space,
//! bit `p % 8` of byte `p / 8` for page `p`. Every byte the backend writes
//! into guest memory must set its page's bit before QEMU can see the write
//! as finished (the used ring entry), or QEMU may send a stale page.
//!
//! [`DirtyBitmap`] is the per-region bitmap vm-memory carries in
//! `GuestMemoryMmap<DirtyBitmap>`; vm-memory marks through it on every
//! `write_obj`/`write_slice`, and `blk::device`'s raw iovecs mark through
//! it explicitly. vhost-user-backend's own `BitmapMmapRegion` clones an
//! `Arc` per slice and takes a read lock per mark even with no log set,
//! which cost 12-17% of the native QD32 IOPS (docs/BENCHMARKS.md). Here:
//! - a slice ([`DirtySlice`]) is a reference and an offset: no refcount;
//! - a mark with no log set is one `SeqCst` fence and one load of a null
//!   pointer;
//! - a mark with a log set is a short reader section (an epoch counter
//!   taken and dropped) and one relaxed atomic OR per log byte it touches
//!   (8 pages per OR), as QEMU's own vhost code marks;
//! - the log is replaced (`SET_LOG_BASE`, [`BitmapReplace`]) or switched
//!   off ([`DirtyBitmap::clear`], when the frontend acks features without
//!   `VHOST_F_LOG_ALL`) while other threads mark: the old log is released
//!   only once no marker can still hold it (see `Shared::swap`).
//!
//! What it refuses: a log too small for a region (`SET_LOG_BASE` fails, as
//! vhost-user-backend's bitmap would). Known gap, shared with
//! vhost-user-backend: a memory table replaced during a migration gets
//! fresh, unlogged regions until the frontend sends `SET_LOG_BASE` again.

use std::fmt;
use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use vhost_user_backend::bitmap::{AtomicBitmapMmap, BitmapReplace, MemRegionBitmap, MmapLogReg};
use vm_memory::bitmap::{Bitmap, BitmapSlice, WithBitmapSlice};
use vm_memory::mmap::NewBitmap;
use vm_memory::{
    Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

/// Bytes of guest-physical address space per bit of the log
/// (`VHOST_LOG_PAGE`).
pub const LOG_PAGE: u64 = 4096;

/// Guest memory whose regions each carry a [`DirtyBitmap`].
pub type LoggedMemory = GuestMemoryMmap<DirtyBitmap>;

/// What keeps a log's bytes mapped.
enum Backing {
    /// The frontend's shared log (`SET_LOG_BASE`), mapped by
    /// vhost-user-backend.
    Frontend(#[allow(dead_code)] Arc<MmapLogReg>),
    /// A log in this process's memory ([`RegionLog::in_memory`]).
    Memory(#[allow(dead_code)] Arc<[AtomicU8]>),
}

/// Where one memory region's pages land in a dirty log.
pub struct RegionLog {
    /// The log bytes that hold this region's bits: `words[0]` is byte
    /// `first_word` of the whole log. Valid while `_backing` lives.
    words: NonNull<[AtomicU8]>,
    first_word: u64,
    /// Guest-physical address of the region's first byte.
    start: u64,
    /// Region length in bytes (> 0).
    len: u64,
    _backing: Backing,
}

// SAFETY: `words` points into memory owned by `_backing` (an `Arc` of a
// mapping or of a heap slice, both `Send + Sync`) that lives as long as
// `self`; it is only accessed through `&AtomicU8`, whose operations are
// atomic, so sharing and sending a `RegionLog` cannot race.
unsafe impl Send for RegionLog {}
// SAFETY: as for `Send`.
unsafe impl Sync for RegionLog {}

impl fmt::Debug for RegionLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionLog")
            .field("start", &self.start)
            .field("len", &self.len)
            .field("first_word", &self.first_word)
            .field("words", &self.words.len())
            .finish()
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The first and last log byte of a region, or an error when it is empty
/// or its end overflows.
fn word_span(start: u64, len: u64) -> io::Result<(u64, u64)> {
    if len == 0 {
        return Err(invalid("empty memory region"));
    }
    let last = start
        .checked_add(len - 1)
        .ok_or_else(|| invalid("memory region ends past the address space"))?;
    Ok((start / LOG_PAGE / 8, last / LOG_PAGE / 8))
}

impl RegionLog {
    /// A region of `len` bytes at guest-physical `start` logged into `log`
    /// (byte `p / 8`, bit `p % 8` for page `p`, from address 0). For tests
    /// and tools that keep their own log; fails when the log is too short.
    pub fn in_memory(start: u64, len: u64, log: Arc<[AtomicU8]>) -> io::Result<Self> {
        let (first, last) = word_span(start, len)?;
        let first_i = usize::try_from(first).map_err(|_| invalid("region beyond the log"))?;
        let last_i = usize::try_from(last).map_err(|_| invalid("region beyond the log"))?;
        let words = log
            .get(first_i..=last_i)
            .ok_or_else(|| invalid("dirty log too small for the memory region"))?;
        let words = NonNull::from(words);
        Ok(Self {
            words,
            first_word: first,
            start,
            len,
            _backing: Backing::Memory(log),
        })
    }

    fn words(&self) -> &[AtomicU8] {
        // SAFETY: `words` spans bytes of one log allocation or mapping (a
        // sub-slice in `in_memory`, two bounds-checked ends of one mapping
        // in `MemRegionBitmap::new`) that `_backing` keeps alive as long as
        // `self`; the bytes are only accessed as atomics.
        unsafe { self.words.as_ref() }
    }

    /// Sets the bit of every page that `[offset, offset + len)` of the
    /// region touches. Bytes past the region's end are ignored.
    fn mark(&self, offset: usize, len: usize) {
        let Ok(offset) = u64::try_from(offset) else {
            return;
        };
        if len == 0 || offset >= self.len {
            return;
        }
        let end = offset
            .saturating_add(u64::try_from(len).unwrap_or(u64::MAX))
            .min(self.len);
        // Page numbers relative to the first page of `words`.
        let base = self.first_word * 8;
        let mut page = (self.start + offset) / LOG_PAGE - base;
        let last = (self.start + end - 1) / LOG_PAGE - base;
        let words = self.words();
        while page <= last {
            let bit = page % 8;
            let n = (8 - bit).min(last - page + 1);
            // n bits from `bit` (1 <= n <= 8 - bit): fits a u8 by construction.
            let mask = (((1u16 << n) - 1) << bit) as u8;
            // Relaxed: the log is only a set of bits, read by QEMU after the
            // backend's reply or used-ring update that follows (which
            // orders it); QEMU marks its own log the same way.
            if let Some(w) = usize::try_from(page / 8).ok().and_then(|i| words.get(i)) {
                w.fetch_or(mask, Ordering::Relaxed);
            }
            page += n;
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        let Ok(offset) = u64::try_from(offset) else {
            return false;
        };
        if offset >= self.len {
            return false;
        }
        let page = (self.start + offset) / LOG_PAGE - self.first_word * 8;
        usize::try_from(page / 8)
            .ok()
            .and_then(|i| self.words().get(i))
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (page % 8)) != 0)
    }
}

impl MemRegionBitmap for RegionLog {
    fn new<R: GuestMemoryRegion>(region: &R, logmem: Arc<MmapLogReg>) -> io::Result<Self> {
        // vhost-user-backend keeps the log's length private; its own bitmap
        // checks that the region's last log byte is inside the log, so that
        // check decides here too.
        AtomicBitmapMmap::new(region, Arc::clone(&logmem))?;
        let start = region.start_addr().raw_value();
        let len = region.len();
        let (first, last) = word_span(start, len)?;
        let first_i = usize::try_from(first).map_err(|_| invalid("region beyond the log"))?;
        let last_i = usize::try_from(last).map_err(|_| invalid("region beyond the log"))?;
        // Indexing asserts in bounds; `last_i` is (checked just above).
        let first_ptr: *const AtomicU8 = &logmem[first_i];
        let _ = &logmem[last_i];
        let n = last_i - first_i + 1;
        // The invariant `words()` relies on: bytes `first_i..=last_i` of the
        // log are inside one contiguous mapping (`MmapLogReg` maps the whole
        // log at once and indexes it as `addr + i`; both ends were
        // bounds-checked above), which `logmem`, kept in `_backing`, holds
        // mapped as long as the returned `RegionLog` lives.
        let words = ptr::slice_from_raw_parts(first_ptr, n);
        let words = NonNull::new(words.cast_mut()).ok_or_else(|| invalid("null dirty log"))?;
        Ok(Self {
            words,
            first_word: first,
            start,
            len,
            _backing: Backing::Frontend(logmem),
        })
    }
}

/// The state shared by a region's bitmap and all its slices.
#[derive(Default)]
pub struct Shared {
    /// The current log, or null (no log set: marks are dropped). Owned:
    /// made by `Box::into_raw`, freed by [`Shared::swap`] or `Drop`.
    log: AtomicPtr<RegionLog>,
    /// Which of `readers` new markers announce themselves in.
    epoch: AtomicUsize,
    /// Markers inside their section, by the epoch they read.
    readers: [AtomicUsize; 2],
    /// Serialises replacers.
    swap_lock: Mutex<()>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("logging", &!self.log.load(Ordering::Relaxed).is_null())
            .finish()
    }
}

impl Shared {
    fn mark(&self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        // Who must see what: the bytes just written into guest memory must
        // be visible to QEMU before it can see this mark skipped. A
        // frontend that sets a log waits for `swap` (SET_LOG_BASE's reply)
        // before it reads guest pages for migration; the fence keeps the
        // guest-memory stores of this thread from being reordered after the
        // load below (store-load order), so if the load still sees no log,
        // the data was globally visible before the log was installed and
        // QEMU's later copy of the page has it.
        fence(Ordering::SeqCst);
        if self.log.load(Ordering::Relaxed).is_null() {
            return;
        }
        // A log is set: mark inside a reader section, so `swap` does not
        // free the log this thread reads.
        let e = self.epoch.load(Ordering::SeqCst) & 1;
        self.readers[e].fetch_add(1, Ordering::SeqCst);
        let log = self.log.load(Ordering::SeqCst);
        // SAFETY: `log` is null or a `Box` installed by `swap`; `swap`
        // frees a log only after replacing it (SeqCst) and then seeing both
        // parities of readers drain, each after its own flip. This thread
        // announced itself (SeqCst) in `readers[e]` before loading `log`:
        // if the load returned the old log, the increment precedes the
        // replacement, so one of the two waits is on `readers[e]` after it
        // and lasts until the decrement below.
        if let Some(log) = unsafe { log.as_ref() } {
            log.mark(offset, len);
        }
        // Release: the marks above happen before a replacer that sees the
        // count drop frees the log.
        self.readers[e].fetch_sub(1, Ordering::Release);
    }

    fn dirty_at(&self, offset: usize) -> bool {
        let e = self.epoch.load(Ordering::SeqCst) & 1;
        self.readers[e].fetch_add(1, Ordering::SeqCst);
        let log = self.log.load(Ordering::SeqCst);
        // SAFETY: as in `mark`.
        let dirty = unsafe { log.as_ref() }.is_some_and(|l| l.dirty_at(offset));
        self.readers[e].fetch_sub(1, Ordering::Release);
        dirty
    }

    /// Installs `new` (or no log) and frees the previous log once no marker
    /// can still be using it.
    ///
    /// The replacement is made before the epoch flips, and the epoch then
    /// flips twice, each flip followed by a wait for the parity it left to
    /// drain (as userspace RCU does). A marker that loads the old log
    /// announced itself (in `readers[p]`, `p` the parity it read) before
    /// that load, so before the replacement, so before both flips: whichever
    /// parity `p` is (a marker may have read the epoch long before, even
    /// several flips before), one of the two waits is on `readers[p]` after
    /// its announcement, and lasts until it leaves. Each wait is bounded:
    /// markers that read the epoch after a flip count in the other parity,
    /// so only markers already in flight (at most one per thread) delay it.
    fn swap(&self, new: Option<RegionLog>) {
        let new = new.map_or(ptr::null_mut(), |l| Box::into_raw(Box::new(l)));
        let _serial = self
            .swap_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.log.swap(new, Ordering::SeqCst);
        for _ in 0..2 {
            let e = self.epoch.fetch_add(1, Ordering::SeqCst) & 1;
            while self.readers[e].load(Ordering::SeqCst) != 0 {
                std::thread::yield_now();
            }
        }
        if !old.is_null() {
            // SAFETY: `old` came from `Box::into_raw` in an earlier `swap`,
            // is no longer reachable through `log`, and no marker holds it
            // (the wait above).
            drop(unsafe { Box::from_raw(old) });
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let log = *self.log.get_mut();
        if !log.is_null() {
            // SAFETY: `log` came from `Box::into_raw`; `&mut self` means no
            // marker is left.
            drop(unsafe { Box::from_raw(log) });
        }
    }
}

/// The bitmap of one guest memory region: QEMU's dirty log when the
/// frontend has set one, nothing otherwise. Clones share the log.
#[derive(Debug, Default, Clone)]
pub struct DirtyBitmap {
    shared: Arc<Shared>,
    /// Offset of this bitmap's byte 0 in its region (0 for a region's own).
    base: usize,
}

impl DirtyBitmap {
    /// Stops logging: marks are dropped until a log is set again.
    pub fn clear(&self) {
        self.shared.swap(None);
    }

    /// Whether a log is set.
    pub fn logging(&self) -> bool {
        !self.shared.log.load(Ordering::Acquire).is_null()
    }
}

impl BitmapReplace for DirtyBitmap {
    type InnerBitmap = RegionLog;

    fn replace(&self, bitmap: RegionLog) {
        self.shared.swap(Some(bitmap));
    }
}

impl<'a> WithBitmapSlice<'a> for DirtyBitmap {
    type S = DirtySlice<'a>;
}

impl Bitmap for DirtyBitmap {
    fn mark_dirty(&self, offset: usize, len: usize) {
        self.shared.mark(self.base.saturating_add(offset), len);
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.shared.dirty_at(self.base.saturating_add(offset))
    }

    fn slice_at(&self, offset: usize) -> DirtySlice<'_> {
        DirtySlice {
            shared: &self.shared,
            base: self.base.saturating_add(offset),
        }
    }
}

impl NewBitmap for DirtyBitmap {
    fn with_len(_len: usize) -> Self {
        Self::default()
    }
}

/// A view of a region's [`DirtyBitmap`] from an offset: what vm-memory
/// carries in every `VolatileSlice`. Copying it costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct DirtySlice<'a> {
    shared: &'a Shared,
    base: usize,
}

impl<'a> WithBitmapSlice<'_> for DirtySlice<'a> {
    type S = DirtySlice<'a>;
}

impl BitmapSlice for DirtySlice<'_> {}

impl<'a> Bitmap for DirtySlice<'a> {
    fn mark_dirty(&self, offset: usize, len: usize) {
        self.shared.mark(self.base.saturating_add(offset), len);
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.shared.dirty_at(self.base.saturating_add(offset))
    }

    fn slice_at(&self, offset: usize) -> DirtySlice<'a> {
        DirtySlice {
            shared: self.shared,
            base: self.base.saturating_add(offset),
        }
    }
}

/// A region's own bitmap. (`GuestMemoryRegion::bitmap` returns a slice of
/// it; the log is set and cleared on the bitmap itself, as
/// vhost-user-backend's `SET_LOG_BASE` does.)
pub fn region_bitmap(region: &GuestRegionMmap<DirtyBitmap>) -> &DirtyBitmap {
    MmapRegion::bitmap(region)
}

/// Applies the frontend's `VHOST_F_LOG_ALL` bit to `mem`: without it the
/// log is dropped from every region (QEMU sends features without the bit
/// when a migration ends or is cancelled, after its last read of the log,
/// and sends `SET_LOG_BASE` again before the next one). With it, nothing
/// changes: the log arrives with `SET_LOG_BASE`.
pub fn apply_log_all(mem: &LoggedMemory, features: u64) {
    let log_all = vhost::vhost_user::message::VhostUserVirtioFeatures::LOG_ALL.bits();
    if features & log_all != 0 {
        return;
    }
    for region in mem.iter() {
        let b = region_bitmap(region);
        if b.logging() {
            b.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use vm_memory::{Bytes, GuestAddress, GuestRegionMmap};

    const PAGE: usize = LOG_PAGE as usize;

    fn log_of(bytes: usize) -> Arc<[AtomicU8]> {
        (0..bytes).map(|_| AtomicU8::new(0)).collect()
    }

    fn bit(log: &[AtomicU8], addr: u64) -> bool {
        let p = addr / LOG_PAGE;
        log[(p / 8) as usize].load(Ordering::Relaxed) & (1 << (p % 8)) != 0
    }

    fn dirty_pages(log: &[AtomicU8]) -> Vec<u64> {
        (0..log.len() as u64 * 8)
            .filter(|p| log[(p / 8) as usize].load(Ordering::Relaxed) & (1 << (p % 8)) != 0)
            .collect()
    }

    /// Two adjacent regions: 3 pages at 0x5000 (page 5, in the middle of a
    /// log byte), then 20 pages at 0x8000.
    fn memory() -> LoggedMemory {
        let r1 = GuestRegionMmap::<DirtyBitmap>::from_range(GuestAddress(0x5000), 3 * PAGE, None)
            .expect("region 1");
        let r2 = GuestRegionMmap::<DirtyBitmap>::from_range(GuestAddress(0x8000), 20 * PAGE, None)
            .expect("region 2");
        GuestMemoryMmap::from_regions(vec![r1, r2]).expect("memory")
    }

    fn set_log(mem: &LoggedMemory, log: &Arc<[AtomicU8]>) {
        for r in mem.iter() {
            let l = RegionLog::in_memory(r.start_addr().raw_value(), r.len(), Arc::clone(log))
                .expect("log covers the region");
            region_bitmap(r).replace(l);
        }
    }

    #[test]
    fn writes_mark_every_page_they_touch_across_regions() {
        let mem = memory();
        let log = log_of(8);
        set_log(&mem, &log);
        // From the last 2 bytes of page 6 (region 1) to the first byte of
        // page 0x11 (region 2): pages 6, 7 (region 1), 8..=0x11 (region 2).
        let from = 0x7000 - 2;
        let to = 0x11000; // inclusive
        let buf = vec![1u8; (to - from + 1) as usize];
        mem.write_slice(&buf, GuestAddress(from)).expect("write");
        assert_eq!(dirty_pages(&log), (6..=0x11).collect::<Vec<_>>());
        // A one-byte write marks exactly its page.
        mem.write_obj(7u8, GuestAddress(0x5fff)).expect("write");
        assert!(bit(&log, 0x5000));
        assert_eq!(
            dirty_pages(&log),
            [5].into_iter().chain(6..=0x11).collect::<Vec<_>>()
        );
    }

    #[test]
    fn slices_mark_relative_to_their_offset() {
        let mem = memory();
        let log = log_of(8);
        set_log(&mem, &log);
        // A slice from 0x9ffe; marking 3 bytes at its offset 1 covers
        // 0x9fff..=0xa001: pages 9 and 10.
        let s = mem.get_slice(GuestAddress(0x9ffe), 100).expect("slice");
        s.bitmap().mark_dirty(1, 3);
        assert_eq!(dirty_pages(&log), [9, 10]);
        // A slice of a slice adds both offsets.
        s.subslice(10, 50)
            .expect("subslice")
            .bitmap()
            .mark_dirty(0, 1);
        assert_eq!(dirty_pages(&log), [9, 10]);
        s.bitmap().slice_at(PAGE).mark_dirty(PAGE, 1); // 0x9ffe + 8 KiB
        assert_eq!(dirty_pages(&log), [9, 10, 11]);
        assert!(s.bitmap().dirty_at(2) && s.bitmap().dirty_at(2 * PAGE));
        assert!(!s.bitmap().dirty_at(2 + 2 * PAGE));
    }

    #[test]
    fn a_mark_past_the_region_end_stops_at_the_end() {
        let mem = memory();
        let log = log_of(8);
        set_log(&mem, &log);
        let r1 = mem.find_region(GuestAddress(0x5000)).expect("region 1");
        r1.bitmap().mark_dirty(2 * PAGE, 10 * PAGE);
        assert_eq!(dirty_pages(&log), [7]);
    }

    #[test]
    fn nothing_is_marked_without_a_log_or_after_it_is_cleared() {
        let mem = memory();
        mem.write_slice(&[1u8; 3 * PAGE], GuestAddress(0x8000))
            .expect("write");
        let log = log_of(8);
        set_log(&mem, &log);
        assert!(dirty_pages(&log).is_empty(), "marks from before the log");
        mem.write_obj(1u8, GuestAddress(0x8000)).expect("write");
        assert_eq!(dirty_pages(&log), [8]);
        // Features without LOG_ALL switch logging off.
        apply_log_all(&mem, 0);
        mem.write_slice(&[1u8; 3 * PAGE], GuestAddress(0x9000))
            .expect("write");
        assert_eq!(dirty_pages(&log), [8], "marked after the log was cleared");
        assert!(mem.iter().all(|r| !region_bitmap(r).logging()));
    }

    #[test]
    fn log_all_set_keeps_the_log() {
        let mem = memory();
        let log = log_of(8);
        set_log(&mem, &log);
        let log_all = vhost::vhost_user::message::VhostUserVirtioFeatures::LOG_ALL.bits();
        apply_log_all(&mem, log_all);
        mem.write_obj(1u8, GuestAddress(0xa000)).expect("write");
        assert_eq!(dirty_pages(&log), [10]);
    }

    #[test]
    fn a_log_too_small_for_a_region_is_refused() {
        // Region 2 ends at page 0x1b: its byte 3 is past a 3-byte log.
        assert!(RegionLog::in_memory(0x8000, 20 * LOG_PAGE, log_of(3)).is_err());
        assert!(RegionLog::in_memory(0x8000, 20 * LOG_PAGE, log_of(4)).is_ok());
        assert!(RegionLog::in_memory(0x8000, 0, log_of(4)).is_err());
        assert!(RegionLog::in_memory(u64::MAX - 10, 20, log_of(4)).is_err());
    }

    /// Markers on several threads while the log is replaced, cleared and
    /// set again: every mark made after a log was installed lands in it;
    /// none made after a clear lands anywhere; nothing is freed under a
    /// marker (a use-after-free here is caught by running under Miri or
    /// ASan; without them the bits checked below still must add up).
    #[test]
    fn switching_the_log_while_threads_mark() {
        const THREADS: usize = 4;
        const ROUNDS: usize = 25;
        let mem = Arc::new(memory());
        // Generation g: 0 = no log, else log number g installed. Each
        // marker, after reading generation g, marks its own page and
        // reports g in `seen[t]`.
        let generation = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Vec<AtomicUsize>> =
            Arc::new((0..THREADS).map(|_| AtomicUsize::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let markers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (mem, generation, seen, stop) =
                    (mem.clone(), generation.clone(), seen.clone(), stop.clone());
                std::thread::spawn(move || {
                    // Thread t owns page 8 + t (region 2).
                    let addr = GuestAddress(0x8000 + (t * PAGE) as u64);
                    while !stop.load(Ordering::Acquire) {
                        let g = generation.load(Ordering::Acquire);
                        mem.write_obj(1u8, addr).expect("write");
                        // Also a spread of other pages, to keep the log busy.
                        mem.write_slice(&[2u8; 2 * PAGE], GuestAddress(0x10000))
                            .expect("write");
                        seen[t].store(g, Ordering::Release);
                    }
                })
            })
            .collect();
        let wait_all_saw = |g: usize| {
            for s in seen.iter() {
                while s.load(Ordering::Acquire) != g {
                    std::thread::yield_now();
                }
            }
        };
        for round in 1..=ROUNDS {
            // A log replaced while set (SET_LOG_BASE again), then the one
            // checked.
            set_log(&mem, &log_of(8));
            let log = log_of(8);
            set_log(&mem, &log);
            let g = round * 2;
            generation.store(g, Ordering::Release);
            wait_all_saw(g);
            for t in 0..THREADS {
                assert!(
                    bit(&log, 0x8000 + (t * PAGE) as u64),
                    "round {round}: thread {t} marked after the log was set, not in it"
                );
            }
            // Off: marks after this must not reach `log`.
            for r in mem.iter() {
                region_bitmap(r).clear();
            }
            for w in log.iter() {
                w.store(0, Ordering::Relaxed);
            }
            generation.store(g + 1, Ordering::Release);
            wait_all_saw(g + 1);
            assert!(
                dirty_pages(&log).is_empty(),
                "round {round}: marked after the log was cleared"
            );
        }
        stop.store(true, Ordering::Release);
        for m in markers {
            m.join().expect("marker thread");
        }
    }
}
