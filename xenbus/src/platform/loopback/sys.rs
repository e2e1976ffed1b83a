//! The OS edge of the loopback fabric: memfds, shared mappings, eventfds and
//! `SOCK_SEQPACKET` unix sockets carrying file descriptors (`SCM_RIGHTS`).
//! Every `unsafe` block of the fabric is in this file.

use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;
use std::vec::Vec;

use crate::ring::PAGE_SIZE;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: `fd` was just returned by a successful system call that
    // creates a descriptor, so it is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A sealed-size anonymous memory file of `pages` pages (zero-filled).
pub(crate) fn memfd(name: &str, pages: usize) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    let fd = owned(unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) })?;
    let len = pages
        .checked_mul(PAGE_SIZE)
        .and_then(|l| libc::off_t::try_from(l).ok())
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fd` is an open memfd we own.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    Ok(fd)
}

/// A read-only descriptor of the same memory file: a new open file
/// description with `O_RDONLY`, so the kernel refuses a writable shared
/// mapping made through it (what makes a read-only grant read-only).
pub(crate) fn reopen_read_only(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let path = CString::new(format_proc_fd(fd.as_raw_fd()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is a valid NUL-terminated string for the call.
    owned(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })
}

fn format_proc_fd(fd: RawFd) -> std::string::String {
    std::format!("/proc/self/fd/{fd}")
}

/// A mapping owned by this value, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every user in this module
// reaches it through atomics or copies, and the other side of the fabric
// writes it concurrently anyway, so no thread-affinity exists.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map `pages` pages of `fd` from page `first`, shared.
    pub(crate) fn shared(
        fd: &OwnedFd,
        first: usize,
        pages: usize,
        writable: bool,
    ) -> io::Result<Self> {
        let len = pages
            .checked_mul(PAGE_SIZE)
            .filter(|l| *l > 0)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let off = first
            .checked_mul(PAGE_SIZE)
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh mapping at an address the kernel chooses; it
        // overlaps nothing of ours, and the result is checked.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        Self::checked(p, len)
    }

    /// Reserve `pages` inaccessible pages, to be filled with [`Self::place`].
    pub(crate) fn reserve(pages: usize) -> io::Result<Self> {
        let len = pages
            .checked_mul(PAGE_SIZE)
            .filter(|l| *l > 0)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh private anonymous mapping at an address the kernel
        // chooses; the result is checked.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        Self::checked(p, len)
    }

    fn checked(p: *mut libc::c_void, len: usize) -> io::Result<Self> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { ptr, len })
    }

    /// Replace page `index` of this mapping with page `frame` of `fd`.
    pub(crate) fn place(
        &self,
        index: usize,
        fd: &OwnedFd,
        frame: usize,
        writable: bool,
    ) -> io::Result<()> {
        if index >= self.len / PAGE_SIZE {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let off = frame
            .checked_mul(PAGE_SIZE)
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let at = self.ptr.as_ptr().wrapping_add(index * PAGE_SIZE);
        // SAFETY: `at` is a page inside this reservation (index checked
        // above), which this value owns and nothing else references yet;
        // MAP_FIXED replaces exactly that page.
        let p = unsafe {
            libc::mmap(
                at.cast(),
                PAGE_SIZE,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Ask the kernel to make the mapping writable (fails for a mapping of
    /// a read-only descriptor: used to show read-only grants hold).
    pub(crate) fn make_writable(&self) -> io::Result<()> {
        // SAFETY: the range is exactly this mapping, owned by this value.
        cvt(unsafe {
            libc::mprotect(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        })
        .map(drop)
    }

    /// The 4-aligned word at byte `off`, if it lies inside the mapping.
    pub(crate) fn word(&self, off: usize) -> Option<&AtomicU32> {
        if !off.is_multiple_of(4) || off.checked_add(4)? > self.len {
            return None;
        }
        let p = self.ptr.as_ptr().wrapping_add(off).cast::<u32>();
        // SAFETY: `off + 4 <= len` and `off` is 4-aligned from a page-aligned
        // base (checked above); the mapping lives as long as `&self`, and
        // every party (both domains and the broker) touches shared words
        // only atomically.
        Some(unsafe { AtomicU32::from_ptr(p) })
    }

    /// The flags+domid word and the frame word of grant entry `gref` in a
    /// mapped v1 grant table of `entries` entries.
    pub(crate) fn grant_entry(&self, entries: u32, gref: u32) -> Option<(&AtomicU32, &AtomicU32)> {
        if gref >= entries {
            return None;
        }
        let off = gref as usize * 8;
        Some((self.word(off)?, self.word(off + 4)?))
    }

    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range is the mapping this value owns; borrows of it
        // ended with `&mut self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A non-blocking eventfd.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain system call with constant flags.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

/// Add one to an eventfd's counter.
pub(crate) fn eventfd_signal(fd: &OwnedFd) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writing 8 bytes from a local buffer to an open descriptor.
    let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    if n == 8 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Wait up to `timeout` for an eventfd to be signalled and consume it.
/// Returns whether it was.
pub(crate) fn eventfd_wait(fd: &OwnedFd, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = timeout.map_or(-1, |t| {
        libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX)
    });
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(false);
        }
        break;
    }
    let mut buf = [0u8; 8];
    // SAFETY: reading 8 bytes into a local buffer from an open descriptor.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n == 8 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        // Someone else consumed it between poll and read.
        return Ok(false);
    }
    Err(e)
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: `sockaddr_un` is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = core::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call with constant arguments.
    owned(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })
}

/// A listening `SOCK_SEQPACKET` socket at `path`.
pub(crate) fn listen(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket()?;
    let (addr, len) = sockaddr(path)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
    // SAFETY: `fd` is a bound socket we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
    Ok(fd)
}

/// Accept one connection.
pub(crate) fn accept(fd: &OwnedFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `fd` is a listening socket; no address is asked for.
        let r = unsafe {
            libc::accept4(
                fd.as_raw_fd(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        match owned(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Wake a thread blocked in [`accept`] on `fd` (it then fails).
pub(crate) fn shutdown(fd: &OwnedFd) {
    // SAFETY: `fd` is a socket we own; shutdown has no memory effects.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
}

/// Connect to the listening socket at `path`.
pub(crate) fn connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket()?;
    let (addr, len) = sockaddr(path)?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
    Ok(fd)
}

/// Most descriptors one message carries.
pub(crate) const MAX_FDS: usize = 4;
/// Largest message, in bytes.
pub(crate) const MAX_MSG: usize = 64 * 1024;

const CMSG_BUF: usize = 64;

/// Send one message with `fds` attached.
pub(crate) fn send(sock: &OwnedFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // u64 elements keep the control buffer aligned for `cmsghdr`.
    let mut cbuf = [0u64; CMSG_BUF / 8];
    // SAFETY: `msghdr` is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = core::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: `msg` points at a control buffer of `space` <= CMSG_BUF
        // bytes (at most MAX_FDS descriptors), so the first header fits.
        let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        if cmsg.is_null() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: CMSG_LEN only computes a size.
        let cmsg_len = unsafe { libc::CMSG_LEN(payload) } as usize;
        let header = libc::cmsghdr {
            cmsg_len,
            cmsg_level: libc::SOL_SOCKET,
            cmsg_type: libc::SCM_RIGHTS,
        };
        // SAFETY: `cmsg` points at the first header inside `cbuf`, aligned
        // for `cmsghdr` (u64 buffer) with room for it (CMSG_SPACE).
        unsafe { cmsg.write(header) };
        // SAFETY: CMSG_DATA only computes the address after the header.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        // SAFETY: `data` has room for `payload` bytes inside `cbuf`
        // (CMSG_SPACE(payload) bytes were reserved); `fds` is `payload`
        // bytes long; the two do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), data, payload as usize)
        };
    }
    loop {
        // SAFETY: `msg` describes live local buffers for the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(());
    }
}

/// Receive one message and the descriptors attached to it. An empty message
/// means the peer closed the connection.
pub(crate) fn recv(sock: &OwnedFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = std::vec![0u8; MAX_MSG];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut cbuf = [0u64; CMSG_BUF / 8];
    // SAFETY: `msghdr` is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_BUF;
    let n = loop {
        // SAFETY: `msg` describes live local buffers for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break n as usize;
    };
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by recvmsg; the CMSG_* macros walk its
    // control buffer within `msg_controllen`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is a header inside the control buffer (non-null
        // from CMSG_FIRSTHDR/NXTHDR, which check the bounds), read as a copy.
        let h = unsafe { cmsg.read_unaligned() };
        let (level, ty, len) = (h.cmsg_level, h.cmsg_type, h.cmsg_len);
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN only computes a size.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = len.saturating_sub(header) / core::mem::size_of::<RawFd>();
            // SAFETY: CMSG_DATA only computes the address after the header.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                let at = data.wrapping_add(i);
                // SAFETY: the kernel wrote `count` descriptors after the
                // header inside the control buffer; read each as a copy.
                let fd: RawFd = unsafe { at.read_unaligned() };
                // SAFETY: SCM_RIGHTS gave us a fresh descriptor we now own.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as above; NXTHDR returns null past the buffer's end.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    data.truncate(n);
    Ok((data, fds))
}
