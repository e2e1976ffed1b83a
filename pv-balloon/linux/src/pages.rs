//! Balloon pages from a Linux process: anonymous memory pinned so its
//! page frames hold still while the device has them.
//!
//! [`pin`] maps private anonymous memory, `mlock`s it (which faults every
//! page in and keeps it out of swap and reclaim) and reads each page's
//! frame from `/proc/self/pagemap` in one read. The process never reads or
//! writes the memory afterwards. Compaction still migrates mlocked pages
//! unless `vm.compact_unevictable_allowed` is 0, which the daemon sets
//! while it runs. [`release`] gives pages back to the kernel with `munmap`
//! (which also unlocks them), coalescing adjacent pages into one call.
//!
//! # Huge pages ([`Backing::Huge`])
//!
//! Faulting 4 KiB pages in one at a time is most of an inflate's cost. With
//! [`Backing::Huge`] the mapping is aligned to the PMD size and marked
//! `MADV_HUGEPAGE` before the `mlock`, so one fault fills a transparent huge
//! page (512 frames on x86-64), then `MADV_NOHUGEPAGE` so that khugepaged
//! never collapses (copies) any part of it that fell back to small pages.
//! Why the frames still hold still (Linux 6.1):
//!
//! - compaction skips compound pages outright (`isolate_migratepages_block`
//!   outside `alloc_contig_range`), and mlocked small pages while
//!   `compact_unevictable_allowed` is 0;
//! - khugepaged does not scan a `VM_NOHUGEPAGE` area;
//! - splitting a huge page (a partial `munmap` when part of it is deflated,
//!   the deferred-split shrinker) keeps every physical address;
//! - NUMA balancing and `migrate_pages` can move it, as they can a small
//!   mlocked page (the test guests have one node);
//! - one difference: once part of a huge page is unmapped, the rest is
//!   PTE-mapped, and Linux 6.1 does not count a PTE-mapped large folio as
//!   mlocked, so it is evictable until the shrinker splits it. Without
//!   swap, anonymous memory is never reclaimed, so the daemon only uses
//!   huge pages when `SwapTotal` is 0 (see `daemon`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use pv_balloon::GuestPage;

use crate::Error;

/// One pinned page: where this process maps it and its guest-physical
/// address.
#[derive(Debug, PartialEq, Eq)]
pub struct PinnedPage {
    vaddr: usize,
    paddr: u64,
}

impl PinnedPage {
    /// Where this process maps the page.
    pub fn vaddr(&self) -> usize {
        self.vaddr
    }
}

impl GuestPage for PinnedPage {
    fn phys_addr(&self) -> u64 {
        self.paddr
    }
}

/// How [`pin`] backs the balloon's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// `MADV_NOHUGEPAGE`: one fault per page.
    Small,
    /// Transparent huge pages of this many bytes (the PMD size), then
    /// `MADV_NOHUGEPAGE` (see the module docs).
    Huge(usize),
}

/// How [`pin`] faults in and locks small pages ([`Backing::Small`]; huge
/// pages always take the `Mlock` path, which has to advise before the
/// faults). Every method ends with the same pages present, locked and out of
/// transparent huge pages; they differ in system calls per chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinMethod {
    /// `mmap`, `madvise(MADV_NOHUGEPAGE)`, `mlock` (which faults the pages
    /// in): three calls per chunk.
    Mlock,
    /// One `mmap(MAP_POPULATE | MAP_LOCKED)` per chunk. Needs transparent
    /// huge pages off for the whole process ([`disable_thp`]), since no
    /// advice can come between the mapping and its faults.
    Populate,
    /// `mmap`, `madvise(MADV_NOHUGEPAGE)`, `madvise(MADV_POPULATE_WRITE)`
    /// (Linux 5.14+), `mlock` (of pages already present).
    PopulateWrite,
}

/// Turn transparent huge pages off for this process (`PR_SET_THP_DISABLE`,
/// inherited by children): no fault builds a huge page and khugepaged skips
/// the process, whatever a mapping's advice. [`PinMethod::Populate`] relies
/// on it.
pub fn disable_thp() -> Result<(), Error> {
    // SAFETY: a prctl that only sets a flag on this process's mm.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        return Err(Error::last_os("prctl(PR_SET_THP_DISABLE)"));
    }
    Ok(())
}

/// Map, pin and look up `n` pages of `page_size` bytes. All or nothing:
/// on error every page mapped here is unmapped again.
pub fn pin(
    n: usize,
    page_size: usize,
    backing: Backing,
    method: PinMethod,
) -> Result<Vec<PinnedPage>, Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let overflow = || {
        Error::Sys(
            "mmap size overflows",
            std::io::Error::from_raw_os_error(libc::EINVAL),
        )
    };
    let len = n.checked_mul(page_size).ok_or_else(overflow)?;
    let align = match backing {
        Backing::Huge(h) if h.is_power_of_two() && h > page_size && len >= h => h,
        _ => page_size,
    };
    let huge = align > page_size;
    let method = if huge { PinMethod::Mlock } else { method };
    // MAP_POPULATE with MAP_LOCKED faults every page in and locks it inside
    // the mmap call (`mm_populate`, as `mlock` does). mmap ignores a failed
    // population: a page it could not fault in shows as absent in pagemap,
    // which `lookup` refuses.
    let populate = if method == PinMethod::Populate {
        libc::MAP_POPULATE | libc::MAP_LOCKED
    } else {
        0
    };
    // Map `align - page_size` more than needed, to cut an aligned `len` out.
    let slack = align - page_size;
    let map_len = len.checked_add(slack).ok_or_else(overflow)?;
    // SAFETY: a fresh private anonymous mapping at an address of the
    // kernel's choosing: it aliases no Rust object, and only `release` (or
    // the error path below) unmaps it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | populate,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::last_os("mmap balloon pages"));
    }
    let start = p as usize;
    let base = start.next_multiple_of(align);
    let head = base - start;
    let tail = slack - head;
    for (at, n) in [(start, head), (base + len, tail)] {
        if n > 0 {
            // SAFETY: the unaligned head or tail of the mapping made above,
            // never touched; nothing refers to it.
            unsafe { libc::munmap(at as *mut libc::c_void, n) };
        }
    }
    let p = base as *mut libc::c_void;
    let fail = |e: Error| {
        // SAFETY: `base..base+len` is the mapping made above; nothing
        // refers to it yet.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
        Err(e)
    };
    let advise = |advice: libc::c_int, what: &'static str| {
        // SAFETY: advice on our own fresh mapping; it changes no memory any
        // Rust object refers to.
        if unsafe { libc::madvise(p, len, advice) } != 0 {
            return Err(Error::last_os(what));
        }
        Ok(())
    };
    if method != PinMethod::Populate {
        let first = if huge {
            advise(libc::MADV_HUGEPAGE, "madvise(MADV_HUGEPAGE)")
        } else {
            advise(libc::MADV_NOHUGEPAGE, "madvise(MADV_NOHUGEPAGE)")
        };
        if let Err(e) = first {
            return fail(e);
        }
        if method == PinMethod::PopulateWrite {
            if let Err(e) = advise(libc::MADV_POPULATE_WRITE, "madvise(MADV_POPULATE_WRITE)") {
                return fail(e);
            }
        }
        // SAFETY: as above; `mlock` faults the pages in (zeroed) and pins
        // them.
        if unsafe { libc::mlock(p, len) } != 0 {
            return fail(Error::last_os("mlock balloon pages"));
        }
    }
    if huge {
        // From now on no huge page is built over it (khugepaged copies).
        if let Err(e) = advise(libc::MADV_NOHUGEPAGE, "madvise(MADV_NOHUGEPAGE)") {
            return fail(e);
        }
    }
    match lookup(base, n, page_size) {
        Ok(paddrs) => Ok(paddrs
            .into_iter()
            .enumerate()
            .map(|(i, paddr)| PinnedPage {
                vaddr: base + i * page_size,
                paddr,
            })
            .collect()),
        Err(e) => fail(e),
    }
}

/// Guest-physical addresses of `n` pages from `base`, from one read of
/// `/proc/self/pagemap` (8 bytes per 4 KiB page: bit 63 present, bits 0-54
/// the frame; frames read as 0 without `CAP_SYS_ADMIN`).
fn lookup(base: usize, n: usize, page_size: usize) -> Result<Vec<u64>, Error> {
    const PATH: &str = "/proc/self/pagemap";
    const FRAME: usize = 4096;
    let f = File::open(PATH).map_err(|e| Error::Io(PATH, e))?;
    let frames = n * (page_size / FRAME);
    let mut raw = std::vec![0u8; frames * 8];
    f.read_exact_at(&mut raw, (base / FRAME * 8) as u64)
        .map_err(|e| Error::Io(PATH, e))?;
    let per = page_size / FRAME;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let first = pagemap_frame(&raw, i * per).ok_or(Error::NoFrame {
            vaddr: base + i * page_size,
        })?;
        // A page bigger than a frame must be physically contiguous: each of
        // its frames must follow the first.
        for j in 1..per {
            if pagemap_frame(&raw, i * per + j) != Some(first + j as u64) {
                return Err(Error::NoFrame {
                    vaddr: base + i * page_size,
                });
            }
        }
        out.push(first * FRAME as u64);
    }
    Ok(out)
}

/// The frame of pagemap entry `i`, if present and known.
fn pagemap_frame(raw: &[u8], i: usize) -> Option<u64> {
    let b: [u8; 8] = raw.get(i * 8..i * 8 + 8)?.try_into().ok()?;
    let e = u64::from_le_bytes(b);
    let pfn = e & ((1 << 55) - 1);
    (e & (1 << 63) != 0 && pfn != 0).then_some(pfn)
}

/// Give pages back to the kernel: `munmap` each run of adjacent pages
/// (unlocking them). The caller got them from [`pin`] and the balloon no
/// longer holds them.
pub fn release(mut pages: Vec<PinnedPage>, page_size: usize) {
    pages.sort_unstable_by_key(|p| p.vaddr);
    let mut run: Option<(usize, usize)> = None;
    let unmap = |(start, len): (usize, usize)| {
        // SAFETY: `start..start+len` are pages `pin` mapped that the device
        // is done with (the balloon handed them back) and that this process
        // never referenced through Rust objects.
        unsafe { libc::munmap(start as *mut libc::c_void, len) };
    };
    for p in pages {
        run = match run {
            Some((s, l)) if s + l == p.vaddr => Some((s, l + page_size)),
            Some(r) => {
                unmap(r);
                Some((p.vaddr, page_size))
            }
            None => Some((p.vaddr, page_size)),
        };
    }
    if let Some(r) = run {
        unmap(r);
    }
}

/// `--pin-bench`: the methods interleaved round by round (so load from
/// elsewhere falls on all alike), pinning then releasing each chunk as the
/// daemon does; prints each round and the medians in MiB/s.
pub fn bench(mib: usize, rounds: usize) -> Result<(), Error> {
    const CHUNK: usize = 4096;
    // Populate needs THP off for the process; the other methods ask for
    // small pages per mapping anyway, so all run under the same setting.
    disable_thp()?;
    let methods = [
        PinMethod::Mlock,
        PinMethod::PopulateWrite,
        PinMethod::Populate,
    ];
    let total = mib * 256;
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    for r in 0..rounds {
        for k in 0..methods.len() {
            let k = (k + r) % methods.len();
            let m = methods[k];
            let mut held = Vec::with_capacity(total);
            let t = Instant::now();
            while held.len() < total {
                let n = CHUNK.min(total - held.len());
                held.extend(pin(n, 4096, Backing::Small, m)?);
            }
            let pin = t.elapsed();
            let t = Instant::now();
            release(held, 4096);
            let release = t.elapsed();
            let rate = mib as f64 / pin.as_secs_f64();
            println!(
                "pin-bench round {} {m:?}: pin {mib} MiB in {} ms ({rate:.1} MiB/s), release in {} ms",
                r + 1,
                pin.as_millis(),
                release.as_millis()
            );
            rates[k].push(rate);
        }
    }
    for (m, mut v) in methods.iter().zip(rates) {
        v.sort_by(f64::total_cmp);
        let med = v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
        println!("pin-bench median {m:?}: {med:.1} MiB/s");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_entries() {
        let mut raw = std::vec![0u8; 24];
        raw[..8].copy_from_slice(&((1u64 << 63) | 0x1234).to_le_bytes());
        raw[8..16].copy_from_slice(&0x1234u64.to_le_bytes()); // not present
        raw[16..24].copy_from_slice(&(1u64 << 63).to_le_bytes()); // no PFN (not root)
        assert_eq!(pagemap_frame(&raw, 0), Some(0x1234));
        assert_eq!(pagemap_frame(&raw, 1), None);
        assert_eq!(pagemap_frame(&raw, 2), None);
        assert_eq!(pagemap_frame(&raw, 3), None);
    }

    /// This process's locked memory (`VmLck` in /proc/self/status), KiB.
    fn vm_lck_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("VmLck:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Pins 8 MiB every way and checks every page got a distinct, aligned
    /// frame (needs root for pagemap frames: skipped otherwise).
    #[test]
    fn pin_small_and_huge() {
        // Populate last: it turns THP off for the whole test process.
        for (backing, method) in [
            (Backing::Huge(2 << 20), PinMethod::Mlock),
            (Backing::Small, PinMethod::Mlock),
            (Backing::Small, PinMethod::PopulateWrite),
            (Backing::Small, PinMethod::Populate),
        ] {
            if method == PinMethod::Populate {
                if let Err(e) = disable_thp() {
                    std::eprintln!("Populate skipped: {e}");
                    continue;
                }
            }
            let locked_before = vm_lck_kib();
            let v = match pin(2048, 4096, backing, method) {
                Ok(v) => v,
                Err(Error::NoFrame { .. }) => {
                    std::eprintln!("skipped: no pagemap frames (not root)");
                    return;
                }
                Err(e) => panic!("{backing:?} {method:?}: {e}"),
            };
            assert_eq!(v.len(), 2048);
            assert!(
                vm_lck_kib() >= locked_before + 8192,
                "{method:?}: the pages are locked"
            );
            if let Backing::Huge(h) = backing {
                assert_eq!(v[0].vaddr() % h, 0, "huge mapping is PMD-aligned");
            }
            let mut frames: Vec<u64> = v.iter().map(|p| p.phys_addr()).collect();
            assert!(frames.iter().all(|f| f % 4096 == 0 && *f != 0));
            frames.sort_unstable();
            frames.dedup();
            assert_eq!(frames.len(), 2048);
            release(v, 4096);
        }
    }
}
