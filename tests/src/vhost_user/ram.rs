//! Guest RAM shared with a vhost-user backend: one memfd, mapped
//! `MAP_SHARED` here (through `vm-memory`) and sent to the backend with
//! `SET_MEM_TABLE`, which maps the same pages.
//!
//! Every access goes through `vm-memory`'s bounds-checked `Bytes` API, so
//! the only `unsafe` is creating the memfd. The backend writes this memory
//! concurrently: callers copy what they read into locals and validate the
//! copy (never re-read a validated field).

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest-physical address where guest RAM starts. Not zero on purpose: a
/// backend that treats address 0 (or a small offset) as valid is caught by
/// the malformed-request tests.
pub const RAM_BASE: u64 = 0x4000_0000;

/// An error touching guest RAM (the address range is not inside it).
#[derive(Debug, thiserror::Error)]
#[error("guest RAM access at {addr:#x} (+{len}) is outside guest RAM")]
pub struct RamError {
    pub addr: u64,
    pub len: usize,
}

/// Guest RAM: a memfd mapped shared, at guest-physical [`RAM_BASE`].
#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap<()>,
    size: u64,
}

/// A new memfd (close-on-exec) named `name`.
pub(crate) fn memfd(name: &std::ffi::CStr) -> io::Result<File> {
    // SAFETY: memfd_create reads a NUL-terminated string that lives for the
    // call and returns a new descriptor or -1; no memory is shared.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create, is open and owned by
    // nothing else, so OwnedFd may take sole ownership of it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(File::from(owned))
}

impl GuestRam {
    /// Creates `size` bytes of guest RAM (a multiple of 4 KiB). The memfd is
    /// sparse: pages cost nothing until touched.
    pub fn new(size: u64) -> io::Result<Self> {
        if size == 0 || !size.is_multiple_of(4096) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "guest RAM size must be a non-zero multiple of 4096",
            ));
        }
        let file = memfd(c"pvtest-guest-ram")?;
        file.set_len(size)?;
        let len = usize::try_from(size).map_err(io::Error::other)?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(RAM_BASE),
            len,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(io::Error::other)?;
        Ok(Self { mem, size })
    }

    /// First guest-physical address of RAM.
    pub fn base(&self) -> u64 {
        RAM_BASE
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// One past the last guest-physical address of RAM.
    pub fn end(&self) -> u64 {
        RAM_BASE + self.size
    }

    /// The region description `SET_MEM_TABLE` sends (with the memfd).
    pub fn region_info(&self) -> io::Result<VhostUserMemoryRegionInfo> {
        let region = self
            .mem
            .find_region(GuestAddress(RAM_BASE))
            .ok_or_else(|| io::Error::other("guest RAM has no region"))?;
        VhostUserMemoryRegionInfo::from_guest_region(region)
            .map_err(|e| io::Error::other(format!("memory region: {e}")))
    }

    /// The address of guest-physical `gpa` in this process: what vhost-user
    /// calls a "user address" (`SET_VRING_ADDR` carries these).
    pub fn user_addr(&self, gpa: u64) -> Result<u64, RamError> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|_| RamError { addr: gpa, len: 0 })
    }

    fn check(&self, addr: u64, len: usize) -> Result<(), RamError> {
        let end = addr.checked_add(len as u64);
        match end {
            Some(end) if addr >= RAM_BASE && end <= self.end() => Ok(()),
            _ => Err(RamError { addr, len }),
        }
    }

    /// Copies `data` into guest RAM at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), RamError> {
        self.check(addr, data.len())?;
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|_| RamError {
                addr,
                len: data.len(),
            })
    }

    /// Copies guest RAM at `addr` into `out`.
    pub fn read_into(&self, addr: u64, out: &mut [u8]) -> Result<(), RamError> {
        self.check(addr, out.len())?;
        self.mem
            .read_slice(out, GuestAddress(addr))
            .map_err(|_| RamError {
                addr,
                len: out.len(),
            })
    }

    /// Copies `len` bytes of guest RAM at `addr` out.
    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, RamError> {
        let mut v = vec![0u8; len];
        self.read_into(addr, &mut v)?;
        Ok(v)
    }

    /// Fills `len` bytes at `addr` with `byte`.
    pub fn fill(&self, addr: u64, len: usize, byte: u8) -> Result<(), RamError> {
        self.write(addr, &vec![byte; len])
    }

    /// Atomic little-endian u16 load (ring indices).
    pub fn load_u16(&self, addr: u64, order: Ordering) -> Result<u16, RamError> {
        self.mem
            .load::<u16>(GuestAddress(addr), order)
            .map(u16::from_le)
            .map_err(|_| RamError { addr, len: 2 })
    }

    /// Atomic little-endian u16 store (ring indices).
    pub fn store_u16(&self, addr: u64, val: u16, order: Ordering) -> Result<(), RamError> {
        self.mem
            .store(val.to_le(), GuestAddress(addr), order)
            .map_err(|_| RamError { addr, len: 2 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_bounds_checked_and_round_trips() {
        let ram = GuestRam::new(1 << 20).expect("ram");
        ram.write(RAM_BASE + 10, b"hello").expect("write");
        assert_eq!(ram.read(RAM_BASE + 10, 5).expect("read"), b"hello");
        assert!(ram.write(RAM_BASE - 1, b"x").is_err());
        assert!(ram.write(ram.end() - 2, b"xyz").is_err());
        assert!(ram.read(u64::MAX - 1, 4).is_err());
        ram.store_u16(RAM_BASE + 64, 0xBEEF, Ordering::Release)
            .expect("store");
        assert_eq!(
            ram.load_u16(RAM_BASE + 64, Ordering::Acquire)
                .expect("load"),
            0xBEEF
        );
        let info = ram.region_info().expect("info");
        assert_eq!(info.guest_phys_addr, RAM_BASE);
        assert_eq!(info.memory_size, 1 << 20);
        assert!(info.mmap_handle >= 0);
    }
}
