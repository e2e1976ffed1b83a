//! The disk behind a vhost-user-blk device: a raw image file or a block
//! device, with vectored positional I/O straight into guest memory, flush,
//! discard and write-zeroes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::fault::{DiskFaults, Faults};

/// `_IO(0x12, 119)`: discard a byte range of a block device.
const BLKDISCARD: libc::c_ulong = 0x1277;
/// `_IO(0x12, 127)`: zero a byte range of a block device.
const BLKZEROOUT: libc::c_ulong = 0x127f;
/// Most iovecs one preadv/pwritev takes (Linux UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk image {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot open disk {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk {path} is {size} bytes, not a multiple of 512")]
    BadSize { path: PathBuf, size: u64 },
    #[error("{path} is neither a regular file nor a block device")]
    NotADisk { path: PathBuf },
}

/// An open disk.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    block_device: bool,
    /// Cleared when the file refuses `RWF_NOWAIT` (EOPNOTSUPP), so the
    /// attempt is not repeated for every request.
    nowait: AtomicBool,
    /// The file lives in memory (tmpfs, ramfs): a transfer never waits for
    /// a device, so it is done in place even where `RWF_NOWAIT` is refused
    /// (tmpfs refuses it).
    memory_backed: bool,
    /// Test-only fault state (see [`super::fault`]).
    pub faults: DiskFaults,
}

/// Outcome of a non-blocking transfer attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoWait {
    /// All of it was transferred.
    Done,
    /// It would have blocked (or was short, or the file cannot do it):
    /// nothing can be assumed; redo it with the blocking call.
    WouldBlock,
}

impl Disk {
    /// Opens `path` (read-only when asked) and reads its size.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        if !path.exists() {
            return Err(DiskError::Missing {
                path: path.to_owned(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_owned(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| DiskError::Open {
            path: path.to_owned(),
            source,
        })?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.is_file() {
            return Err(DiskError::NotADisk {
                path: path.to_owned(),
            });
        }
        let size = if block_device {
            use std::io::Seek;
            (&file)
                .seek(io::SeekFrom::End(0))
                .map_err(|source| DiskError::Open {
                    path: path.to_owned(),
                    source,
                })?
        } else {
            meta.len()
        };
        if size % 512 != 0 {
            return Err(DiskError::BadSize {
                path: path.to_owned(),
                size,
            });
        }
        let memory_backed = !block_device && memory_backed(&file);
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            read_only,
            block_device,
            nowait: AtomicBool::new(true),
            memory_backed,
            faults: DiskFaults::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads `iovs` from byte `offset`, all of it or an error.
    ///
    /// # Safety
    /// Every iovec must describe memory that is valid for writes of its
    /// length for the duration of the call (guest memory mapped in this
    /// process; other threads may change it concurrently, which only
    /// affects the data's value).
    pub unsafe fn read_at(&self, offset: u64, iovs: &mut [libc::iovec]) -> io::Result<()> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.rw_at(offset, iovs, false) }
    }

    /// Writes `iovs` at byte `offset`, all of it or an error.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for reads of its length for
    /// the duration of the call.
    pub unsafe fn write_at(&self, offset: u64, iovs: &mut [libc::iovec]) -> io::Result<()> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.rw_at(offset, iovs, true) }
    }

    /// One `preadv2`/`pwritev2` with `RWF_NOWAIT`: succeeds only when the
    /// whole transfer can be done without blocking (page cache hit, no
    /// allocation needed). A short or refused transfer reports
    /// [`NoWait::WouldBlock`]; a write may then have been partly done, which
    /// the blocking redo overwrites with the same bytes.
    ///
    /// # Safety
    /// As for [`Disk::read_at`] (reads) and [`Disk::write_at`] (writes).
    pub unsafe fn try_rw_nowait(
        &self,
        offset: u64,
        iovs: &[libc::iovec],
        write: bool,
    ) -> io::Result<NoWait> {
        if Faults::get().delay.is_some() {
            return Ok(NoWait::WouldBlock);
        }
        if self.memory_backed {
            let mut iovs = iovs.to_vec();
            // SAFETY: forwarded from this function's contract.
            unsafe { self.rw_at(offset, &mut iovs, write) }?;
            return Ok(NoWait::Done);
        }
        if !self.nowait.load(Ordering::Relaxed) || iovs.len() > IOV_MAX {
            return Ok(NoWait::WouldBlock);
        }
        let total: usize = iovs.iter().map(|v| v.iov_len).sum();
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // At most IOV_MAX (checked above), which fits in c_int.
        let count = iovs.len() as libc::c_int;
        let fd = self.file.as_raw_fd();
        let n = if write {
            // SAFETY: the iovecs point to memory valid for reads (caller's
            // contract); pwritev2 does not retain them past the call.
            unsafe { libc::pwritev2(fd, iovs.as_ptr(), count, off, libc::RWF_NOWAIT) }
        } else {
            // SAFETY: the iovecs point to memory valid for writes (caller's
            // contract); preadv2 does not retain them.
            unsafe { libc::preadv2(fd, iovs.as_ptr(), count, off, libc::RWF_NOWAIT) }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(NoWait::WouldBlock),
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) => {
                    self.nowait.store(false, Ordering::Relaxed);
                    Ok(NoWait::WouldBlock)
                }
                _ => Err(e),
            };
        }
        if n as usize == total {
            Ok(NoWait::Done)
        } else {
            Ok(NoWait::WouldBlock)
        }
    }

    /// # Safety
    /// See [`Disk::read_at`] / [`Disk::write_at`].
    unsafe fn rw_at(
        &self,
        mut offset: u64,
        iovs: &mut [libc::iovec],
        write: bool,
    ) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        let mut first = 0usize;
        while first < iovs.len() {
            if iovs[first].iov_len == 0 {
                first += 1;
                continue;
            }
            let batch = &iovs[first..iovs.len().min(first + IOV_MAX)];
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // `batch.len()` is at most IOV_MAX, which fits in c_int.
            let count = batch.len() as libc::c_int;
            let n = if write {
                // SAFETY: the iovecs point to memory valid for reads (caller's
                // contract); pwritev does not retain them past the call.
                unsafe { libc::pwritev(fd, batch.as_ptr(), count, off) }
            } else {
                // SAFETY: the iovecs point to memory valid for writes
                // (caller's contract); preadv does not retain them.
                unsafe { libc::preadv(fd, batch.as_ptr(), count, off) }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short transfer at end of disk",
                ));
            }
            let mut n = n as usize;
            offset += n as u64;
            // Advance past fully transferred iovecs and trim a partial one.
            while n > 0 && first < iovs.len() {
                let iov = &mut iovs[first];
                if n >= iov.iov_len {
                    n -= iov.iov_len;
                    iov.iov_len = 0;
                    first += 1;
                } else {
                    // SAFETY: n < iov_len, so the advanced pointer stays inside
                    // the same buffer.
                    iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                    iov.iov_len -= n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: fallocate(2) on an fd we own; no pointers are passed.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn blk_ioctl(&self, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKDISCARD/BLKZEROOUT read a `u64[2]` from the pointer,
        // which points to a live local array for the call's duration.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), req, range.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Deallocates a byte range (reads return zeroes afterwards on files).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.block_device {
            self.blk_ioctl(BLKDISCARD, offset, len)
        } else {
            self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        }
    }

    /// Zeroes a byte range, deallocating it when `unmap` allows.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if self.block_device {
            return self.blk_ioctl(BLKZEROOUT, offset, len);
        }
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zero_bytes(offset, len)
            }
            other => other,
        }
    }

    fn write_zero_bytes(&self, mut offset: u64, len: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let zeroes = vec![0u8; 1 << 20];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

/// Whether `file` is on a memory file system (tmpfs or ramfs).
fn memory_backed(file: &File) -> bool {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs(2) fills the statfs buffer it is given, which lives
    // on this stack frame for the call; the fd is ours.
    if unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so it initialised the buffer.
    let st = unsafe { st.assume_init() };
    // f_type's integer type differs between libc targets.
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as u64;
    t == TMPFS_MAGIC || t == RAMFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    #[test]
    fn vectored_round_trip_and_zeroing() {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        f.as_file().set_len(1 << 20).expect("size");
        let disk = Disk::open(f.path(), false).expect("open");
        assert_eq!(disk.size(), 1 << 20);
        let (mut a, mut b) = (vec![1u8; 512], vec![2u8; 3584]);
        let mut iovs = [iov(&mut a), iov(&mut b)];
        // SAFETY: the iovecs point to live local buffers.
        unsafe { disk.write_at(8192, &mut iovs) }.expect("write");
        let mut back = vec![0u8; 4096];
        let mut iovs = [iov(&mut back)];
        // SAFETY: as above.
        unsafe { disk.read_at(8192, &mut iovs) }.expect("read");
        assert!(back[..512].iter().all(|x| *x == 1) && back[512..].iter().all(|x| *x == 2));
        disk.write_zeroes(8192, 512, false).expect("zero");
        disk.discard(8192 + 512, 512).expect("discard");
        let mut iovs = [iov(&mut back)];
        // SAFETY: as above.
        unsafe { disk.read_at(8192, &mut iovs) }.expect("read");
        assert!(back[..1024].iter().all(|x| *x == 0));
        assert!(back[1024..].iter().all(|x| *x == 2));
        // Reading past the end is an error, not a hang or a short success.
        let mut iovs = [iov(&mut back)];
        // SAFETY: as above.
        assert!(unsafe { disk.read_at((1 << 20) - 512, &mut iovs) }.is_err());
    }

    #[test]
    fn open_errors_name_the_problem() {
        let e = Disk::open(Path::new("/nonexistent/disk.img"), false).expect_err("missing");
        assert!(e.to_string().contains("does not exist"));
        let f = tempfile::NamedTempFile::new().expect("tmp");
        f.as_file().set_len(1000).expect("size");
        let e = Disk::open(f.path(), false).expect_err("odd size");
        assert!(e.to_string().contains("not a multiple of 512"));
        let e = Disk::open(Path::new("/dev/null"), true).expect_err("char device");
        assert!(e.to_string().contains("neither"));
    }
}
