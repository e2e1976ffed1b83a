//! DMA memory for a userspace virtio driver: [`LinuxHal`], the
//! `virtio_drivers::Hal` of this process.
//!
//! # Where the memory comes from
//!
//! The pool is made of 2 MiB hugetlb pages (`mmap` with `MAP_HUGETLB`,
//! which uses the kernel's internal hugetlbfs mount, so no mount is needed),
//! populated and locked at map time. A hugetlb page is physically contiguous
//! and is neither swapped nor moved by reclaim while mapped, so the physical
//! address read once from `/proc/self/pagemap` stays right for the life of
//! the process. When no free hugepage is left, the pool raises
//! `vm.nr_hugepages` by one (root only; errors say what to set). The pool
//! only grows, up to a limit ([`init`]); freed pages are reused, never
//! unmapped.
//!
//! # Addresses
//!
//! There is no IOMMU in the guests this runs in (the PCI layer refuses a
//! device with an IOMMU group), so the bus address the device uses is the
//! guest-physical address.
//!
//! # Buffers from outside the pool
//!
//! [`Hal::share`] of a buffer inside the pool (e.g. a [`DmaBuf`]) returns its
//! physical address directly. Any other buffer is bounced: copied into pool
//! pages on share (for device-readable buffers) and back on unshare (for
//! device-writable ones). A bounce of more than one hugepage, or one the
//! pool cannot satisfy, cannot be reported through `Hal::share` (it returns
//! an address, no error): the process aborts with a log line rather than
//! hand the device a wrong address. Runtimes keep their data in
//! [`DmaBuf`]s so this never happens on the data path.
//!
//! # MMIO
//!
//! [`Hal::mmio_phys_to_virt`] maps a BAR physical address to the mapping the
//! PCI layer made of the sysfs `resourceN` file (see [`crate::pci`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, RwLock};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::{Error, Result};

/// Bytes of one hugepage.
pub const HUGEPAGE_SIZE: usize = 2 << 20;
/// 4 KiB pages per hugepage.
const PAGES_PER_CHUNK: usize = HUGEPAGE_SIZE / PAGE_SIZE;
/// Default pool limit in hugepages (64 MiB).
pub const DEFAULT_LIMIT: usize = 32;

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const FREE_HUGEPAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

/// One mapped hugepage and which of its 4 KiB pages are in use.
#[derive(Debug)]
struct Chunk {
    vaddr: usize,
    paddr: u64,
    used: [u64; PAGES_PER_CHUNK / 64],
}

impl Chunk {
    fn is_used(&self, i: usize) -> bool {
        self.used[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, first: usize, n: usize, on: bool) {
        for i in first..first + n {
            if on {
                self.used[i / 64] |= 1 << (i % 64);
            } else {
                self.used[i / 64] &= !(1 << (i % 64));
            }
        }
    }

    /// First fit of `n` free pages.
    fn find(&self, n: usize) -> Option<usize> {
        let mut run = 0;
        for i in 0..PAGES_PER_CHUNK {
            if self.is_used(i) {
                run = 0;
            } else {
                run += 1;
                if run == n {
                    return Some(i + 1 - n);
                }
            }
        }
        None
    }

    fn contains(&self, vaddr: usize, len: usize) -> bool {
        vaddr >= self.vaddr && vaddr.saturating_add(len) <= self.vaddr + HUGEPAGE_SIZE
    }
}

#[derive(Debug)]
struct Pool {
    chunks: Vec<Chunk>,
    limit: usize,
    /// Bounce buffers in use: physical address -> (virtual address, pages).
    bounces: Vec<(u64, usize, usize)>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    chunks: Vec::new(),
    limit: DEFAULT_LIMIT,
    bounces: Vec::new(),
});

/// Registered MMIO mappings: (physical address, length, virtual address).
static MMIO: RwLock<Vec<(u64, usize, usize)>> = RwLock::new(Vec::new());

fn pool() -> MutexGuard<'static, Pool> {
    // A panic while holding the lock leaves the bitmap consistent (every
    // update is a plain store sequence with no early exit), so poisoning is
    // ignored.
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Set the pool limit (in 2 MiB hugepages) and map `prealloc` hugepages now,
/// so a missing hugepage shows up as an error at start rather than as a
/// failed allocation later.
pub fn init(limit_hugepages: usize, prealloc: usize) -> Result<()> {
    let mut p = pool();
    p.limit = limit_hugepages.max(1);
    while p.chunks.len() < prealloc.min(p.limit) {
        let c = map_hugepage()?;
        p.chunks.push(c);
    }
    Ok(())
}

/// Hugepages mapped by the pool so far.
pub fn pool_hugepages() -> usize {
    pool().chunks.len()
}

fn read_number(path: &str) -> Result<u64> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    s.trim().parse().map_err(|_| Error::Parse {
        path: path.into(),
        detail: format!("not a number: {s:?}"),
    })
}

/// Make sure one hugepage is free, raising `vm.nr_hugepages` if needed.
fn reserve_hugepage() -> Result<()> {
    let free = read_number(FREE_HUGEPAGES).map_err(|e| {
        Error::Hugepages(format!(
            "{e}; the kernel needs CONFIG_HUGETLBFS with 2 MiB pages"
        ))
    })?;
    if free > 0 {
        return Ok(());
    }
    let nr = read_number(NR_HUGEPAGES)?;
    std::fs::write(NR_HUGEPAGES, format!("{}\n", nr + 1)).map_err(|e| {
        Error::Hugepages(format!(
            "raising {NR_HUGEPAGES} to {}: {e} (run as root, or set vm.nr_hugepages beforehand)",
            nr + 1
        ))
    })?;
    if read_number(FREE_HUGEPAGES)? == 0 {
        return Err(Error::Hugepages(format!(
            "the kernel could not find a free 2 MiB page after raising {NR_HUGEPAGES} to {}; \
             memory too fragmented or too small: reserve hugepages at boot (hugepages=N)",
            nr + 1
        )));
    }
    Ok(())
}

/// Physical address of the page holding `vaddr`, from `/proc/self/pagemap`
/// (bits 0-54 PFN, bit 63 present; PFNs read as 0 without CAP_SYS_ADMIN).
pub fn virt_to_phys(vaddr: usize) -> Result<u64> {
    const PATH: &str = "/proc/self/pagemap";
    let f = File::open(PATH).map_err(|e| Error::io("open", PATH, e))?;
    let mut entry = [0u8; 8];
    f.read_exact_at(&mut entry, (vaddr / PAGE_SIZE * 8) as u64)
        .map_err(|e| Error::io("read", PATH, e))?;
    let e = u64::from_le_bytes(entry);
    let pfn = e & ((1 << 55) - 1);
    if e & (1 << 63) == 0 || pfn == 0 {
        return Err(Error::NoPhysAddr { vaddr });
    }
    Ok(pfn * PAGE_SIZE as u64 + (vaddr % PAGE_SIZE) as u64)
}

fn map_hugepage() -> Result<Chunk> {
    reserve_hugepage()?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's
    // choosing; it aliases nothing, and is never unmapped (the pool lives
    // until the process exits).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            HUGEPAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_HUGETLB
                | libc::MAP_POPULATE
                | libc::MAP_LOCKED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::Hugepages(format!(
            "mmap of a 2 MiB hugetlb page: {}",
            std::io::Error::last_os_error()
        )));
    }
    let vaddr = p as usize;
    let paddr = virt_to_phys(vaddr)?;
    if !paddr.is_multiple_of(HUGEPAGE_SIZE as u64) || !vaddr.is_multiple_of(HUGEPAGE_SIZE) {
        return Err(Error::Hugepages(format!(
            "mapping {vaddr:#x} -> {paddr:#x} is not a 2 MiB page"
        )));
    }
    log::debug!("dma: hugepage {vaddr:#x} at physical {paddr:#x}");
    Ok(Chunk {
        vaddr,
        paddr,
        used: [0; PAGES_PER_CHUNK / 64],
    })
}

/// Allocate `pages` contiguous 4 KiB pages: (physical, virtual address).
fn alloc_pages(pages: usize) -> Result<(u64, usize)> {
    let mut p = pool();
    if pages == 0 || pages > PAGES_PER_CHUNK {
        return Err(Error::DmaExhausted {
            bytes: pages * PAGE_SIZE,
            limit_pages: p.limit,
        });
    }
    for c in &mut p.chunks {
        if let Some(i) = c.find(pages) {
            c.set(i, pages, true);
            let off = i * PAGE_SIZE;
            return Ok((c.paddr + off as u64, c.vaddr + off));
        }
    }
    if p.chunks.len() >= p.limit {
        return Err(Error::DmaExhausted {
            bytes: pages * PAGE_SIZE,
            limit_pages: p.limit,
        });
    }
    let mut c = map_hugepage()?;
    c.set(0, pages, true);
    let r = (c.paddr, c.vaddr);
    p.chunks.push(c);
    Ok(r)
}

/// Return pages from [`alloc_pages`]. Unknown addresses are ignored
/// (returns false).
fn free_pages(vaddr: usize, pages: usize) -> bool {
    let mut p = pool();
    for c in &mut p.chunks {
        if c.contains(vaddr, pages * PAGE_SIZE) {
            c.set((vaddr - c.vaddr) / PAGE_SIZE, pages, false);
            return true;
        }
    }
    false
}

/// Physical address of `[vaddr, vaddr + len)` if it lies in one pool page.
fn pool_phys(vaddr: usize, len: usize) -> Option<u64> {
    let p = pool();
    p.chunks
        .iter()
        .find(|c| c.contains(vaddr, len))
        .map(|c| c.paddr + (vaddr - c.vaddr) as u64)
}

/// Record an MMIO mapping for [`Hal::mmio_phys_to_virt`].
pub(crate) fn register_mmio(paddr: u64, len: usize, vaddr: usize) {
    let mut m = MMIO.write().unwrap_or_else(|p| p.into_inner());
    m.push((paddr, len, vaddr));
}

/// Forget an MMIO mapping (before it is unmapped).
pub(crate) fn unregister_mmio(vaddr: usize) {
    let mut m = MMIO.write().unwrap_or_else(|p| p.into_inner());
    m.retain(|(_, _, v)| *v != vaddr);
}

/// A DMA buffer in the pool, freed on drop. Its memory is physically
/// contiguous, so [`Hal::share`] hands it to the device without a bounce.
/// Contents are not zeroed (they hold whatever the last user left).
#[derive(Debug)]
pub struct DmaBuf {
    vaddr: NonNull<u8>,
    paddr: u64,
    pages: usize,
    len: usize,
}

// SAFETY: the buffer is exclusively owned memory (no other alias exists in
// this process); moving it to another thread moves that ownership.
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    /// A buffer of `len` bytes (at most one hugepage).
    pub fn new(len: usize) -> Result<Self> {
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        let (paddr, vaddr) = alloc_pages(pages)?;
        let vaddr = NonNull::new(vaddr as *mut u8).ok_or(Error::DmaExhausted {
            bytes: len,
            limit_pages: 0,
        })?;
        Ok(Self {
            vaddr,
            paddr,
            pages,
            len,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty (never: a buffer has at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bus (= physical) address of the first byte.
    pub fn paddr(&self) -> u64 {
        self.paddr
    }

    /// First byte, for building device requests.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.vaddr
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `vaddr` points at `pages` pool pages (>= len bytes) owned
        // by this buffer until drop; pool memory is always initialised (the
        // kernel zeroes hugepages).
        unsafe { std::slice::from_raw_parts(self.vaddr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`; `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.vaddr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        free_pages(self.vaddr.as_ptr() as usize, self.pages);
    }
}

/// The `virtio_drivers::Hal` for a Linux process; see the module docs.
#[derive(Debug)]
pub struct LinuxHal;

fn abort_with(msg: &str) -> ! {
    log::error!("{msg}");
    eprintln!("pv-linux: fatal: {msg}");
    std::process::abort()
}

// SAFETY: `dma_alloc` returns zeroed, physically contiguous pool pages that
// no one else uses until `dma_dealloc`, with their true physical address
// (pagemap of a locked hugetlb page); `mmio_phys_to_virt` returns mappings
// of the BAR the address belongs to, made by `pci` and kept until the
// device is dropped; `share` returns an address the device can use for the
// whole buffer (pool memory, or a bounce copy), valid until `unshare`.
unsafe impl Hal for LinuxHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match alloc_pages(pages) {
            Ok((paddr, vaddr)) => {
                // SAFETY: `vaddr` is `pages` pool pages just reserved for this
                // caller.
                unsafe { std::ptr::write_bytes(vaddr as *mut u8, 0, pages * PAGE_SIZE) };
                match NonNull::new(vaddr as *mut u8) {
                    Some(v) => (paddr as PhysAddr, v),
                    None => (0, NonNull::dangling()),
                }
            }
            Err(e) => {
                log::error!("dma_alloc of {pages} pages: {e}");
                // The callers in this workspace treat physical address 0 as
                // failure.
                (0, NonNull::dangling())
            }
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        if free_pages(vaddr.as_ptr() as usize, pages) {
            0
        } else {
            -1
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let m = MMIO.read().unwrap_or_else(|p| p.into_inner());
        for &(base, len, vaddr) in m.iter() {
            if paddr >= base && paddr.saturating_add(size as u64) <= base + len as u64 {
                let v = vaddr + (paddr - base) as usize;
                if let Some(p) = NonNull::new(v as *mut u8) {
                    return p;
                }
            }
        }
        // The PCI layer answers BAR reads from the same sysfs resource list
        // it maps, and virtio-drivers checks regions against the BAR size, so
        // this is an invariant violation, not device input.
        abort_with(&format!(
            "MMIO region {paddr:#x}+{size:#x} is in no mapped BAR"
        ))
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let vaddr = buffer.cast::<u8>().as_ptr() as usize;
        let len = buffer.len();
        if let Some(p) = pool_phys(vaddr, len) {
            return p as PhysAddr;
        }
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        let (paddr, bounce) = match alloc_pages(pages) {
            Ok(x) => x,
            Err(e) => abort_with(&format!("bounce buffer of {len} bytes: {e}")),
        };
        if matches!(
            direction,
            BufferDirection::DriverToDevice | BufferDirection::Both
        ) {
            // SAFETY: the caller guarantees `buffer` is valid for reads of
            // `len` bytes; `bounce` is `pages` (>= len bytes) fresh pool pages.
            unsafe { std::ptr::copy_nonoverlapping(vaddr as *const u8, bounce as *mut u8, len) };
        }
        pool().bounces.push((paddr, bounce, pages));
        paddr
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let found = {
            let mut p = pool();
            let i = p.bounces.iter().position(|b| b.0 == paddr);
            i.map(|i| p.bounces.swap_remove(i))
        };
        let Some((_, bounce, pages)) = found else {
            return; // pool memory: shared in place
        };
        if matches!(
            direction,
            BufferDirection::DeviceToDriver | BufferDirection::Both
        ) {
            // SAFETY: the caller guarantees `buffer` is valid for writes of
            // its length and unaliased; the bounce holds at least that many
            // bytes and the device is done with it (unshare comes after
            // completion).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bounce as *const u8,
                    buffer.cast::<u8>().as_ptr(),
                    buffer.len(),
                )
            };
        }
        free_pages(bounce, pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_first_fit_and_free() {
        let mut c = Chunk {
            vaddr: 0,
            paddr: 0,
            used: [0; PAGES_PER_CHUNK / 64],
        };
        assert_eq!(c.find(3), Some(0));
        c.set(0, 3, true);
        assert_eq!(c.find(1), Some(3));
        c.set(3, 70, true);
        c.set(1, 1, false);
        assert_eq!(c.find(1), Some(1));
        assert_eq!(c.find(2), Some(73));
        c.set(0, PAGES_PER_CHUNK, true);
        assert_eq!(c.find(1), None);
        c.set(PAGES_PER_CHUNK - 2, 2, false);
        assert_eq!(c.find(2), Some(PAGES_PER_CHUNK - 2));
        assert_eq!(c.find(3), None);
    }
}
