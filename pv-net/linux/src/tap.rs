//! The guest kernel's side of `pvnetd`: a TAP interface (`/dev/net/tun`,
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) carrying Ethernet frames, each
//! preceded by a 12-byte `virtio_net_hdr` (the `VERSION_1` layout, set with
//! `TUNSETVNETHDRSZ`), and the interface settings (MAC, MTU, up/down,
//! carrier) through the usual socket ioctls.
//!
//! The header is how checksum offload crosses the TAP: with `TUN_F_CSUM`
//! the kernel hands us `CHECKSUM_PARTIAL` frames (`NEEDS_CSUM`, start and
//! offset), and accepts frames we mark `NEEDS_CSUM` or `DATA_VALID`; see
//! `pv_net::tap_hdr` for the mapping to the pv-net core.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use pv_net::virtio::HDR_LEN;

/// Errors of the TAP side; each names the call that failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// A system call on the TAP or the control socket failed.
    #[error("{what}: {source}")]
    Sys {
        /// The call and its purpose.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The interface name does not fit `IFNAMSIZ` or has a NUL.
    #[error("bad interface name {0:?} (at most 15 bytes, no NUL)")]
    BadName(String),
}

fn last(what: &'static str) -> TapError {
    TapError::Sys {
        what,
        source: io::Error::last_os_error(),
    }
}

/// An open TAP interface (non-persistent: it goes away when dropped).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    /// `AF_INET` datagram socket for the `SIOC*IF*` ioctls.
    ctl: OwnedFd,
    name: String,
}

/// A zeroed `ifreq` naming `name` (which [`Tap::open`] checked).
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of
    // plain data); all-zero bytes are a valid value of it.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    r
}

impl Tap {
    /// Create (or attach to) TAP `name` with a virtio-net header of
    /// [`HDR_LEN`] bytes on every frame, non-blocking. With `csum_offload`
    /// the kernel may hand over frames with partial checksums.
    pub fn open(name: &str, csum_offload: bool) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(TapError::BadName(name.to_owned()));
        }
        let path = CString::new("/dev/net/tun").map_err(|_| TapError::BadName(name.into()))?;
        // SAFETY: `path` is a NUL-terminated string living across the call.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(last("open /dev/net/tun (is the tun module loaded?)"));
        }
        // SAFETY: `raw` is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives
        // across the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(last("TUNSETIFF"));
        }
        let hdr_len = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int`, which lives across it.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(last("TUNSETVNETHDRSZ"));
        }
        let offload: libc::c_uint = if csum_offload { libc::TUN_F_CSUM } else { 0 };
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, offload) } < 0 {
            return Err(last("TUNSETOFFLOAD"));
        }
        // The kernel may have picked another name (e.g. for "tap%d").
        let got: Vec<u8> = req
            .ifr_name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        // SAFETY: plain socket(2) call, no pointers.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if s < 0 {
            return Err(last("socket for interface ioctls"));
        }
        // SAFETY: `s` is a descriptor we just opened and own alone.
        let ctl = unsafe { OwnedFd::from_raw_fd(s) };
        Ok(Self {
            fd,
            ctl,
            name: String::from_utf8_lossy(&got).into_owned(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor to `poll` for readability.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn ctl_ioctl(
        &self,
        what: &'static str,
        op: libc::Ioctl,
        req: &mut libc::ifreq,
    ) -> Result<(), TapError> {
        // SAFETY: every `SIOC*IF*` request used here reads or writes one
        // `ifreq`, which lives across the call.
        if unsafe { libc::ioctl(self.ctl.as_raw_fd(), op, req as *mut libc::ifreq) } < 0 {
            return Err(last(what));
        }
        Ok(())
    }

    /// Set the interface's MAC address.
    pub fn set_mac(&self, mac: [u8; 6]) -> Result<(), TapError> {
        let mut req = ifreq(&self.name);
        // SAFETY: writing the `sockaddr` member of a zeroed union.
        let sa = unsafe { &mut req.ifr_ifru.ifru_hwaddr };
        sa.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in sa.sa_data.iter_mut().zip(mac) {
            *d = s as libc::c_char;
        }
        self.ctl_ioctl("SIOCSIFHWADDR", libc::SIOCSIFHWADDR as _, &mut req)
    }

    /// Set the interface's MTU.
    pub fn set_mtu(&self, mtu: u16) -> Result<(), TapError> {
        let mut req = ifreq(&self.name);
        req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
        self.ctl_ioctl("SIOCSIFMTU", libc::SIOCSIFMTU as _, &mut req)
    }

    /// Bring the interface up or down (`IFF_UP`).
    pub fn set_up(&self, up: bool) -> Result<(), TapError> {
        let mut req = ifreq(&self.name);
        self.ctl_ioctl("SIOCGIFFLAGS", libc::SIOCGIFFLAGS as _, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the `flags` member.
        let mut flags = unsafe { req.ifr_ifru.ifru_flags };
        if up {
            flags |= libc::IFF_UP as libc::c_short;
        } else {
            flags &= !(libc::IFF_UP as libc::c_short);
        }
        req.ifr_ifru.ifru_flags = flags;
        self.ctl_ioctl("SIOCSIFFLAGS", libc::SIOCSIFFLAGS as _, &mut req)
    }

    /// Carrier (link) on or off, as the device reports it.
    pub fn set_carrier(&self, on: bool) -> Result<(), TapError> {
        let v: libc::c_int = on.into();
        // SAFETY: TUNSETCARRIER reads one `int`, which lives across the call.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETCARRIER, &v) } < 0 {
            return Err(last("TUNSETCARRIER"));
        }
        Ok(())
    }

    /// Read one frame (header included) into `buf`; `None` when there is
    /// none now.
    pub fn read(&self, buf: &mut [u8]) -> Result<Option<usize>, TapError> {
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(TapError::Sys {
                what: "read from the TAP",
                source: e,
            }),
        }
    }

    /// Write one frame with its header (one `writev`, no copy).
    pub fn write(&self, hdr: &[u8; HDR_LEN], frame: &[u8]) -> Result<(), TapError> {
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs point at live buffers of the stated lengths,
        // which the kernel only reads.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(last("write to the TAP"));
        }
        Ok(())
    }
}
