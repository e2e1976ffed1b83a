//! The optional host uplink: a TAP device the switch reads frames from and
//! writes frames to, one frame per read or write (`IFF_NO_PI`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::time::Duration;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Why the uplink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("uplink TAP '{name}': the name is empty or longer than 15 bytes")]
    BadName { name: String },
    #[error("uplink TAP '{name}': cannot open /dev/net/tun: {source} (is the tun module loaded and the device accessible?)")]
    Open {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("uplink TAP '{name}': TUNSETIFF failed: {source} (creating a TAP needs CAP_NET_ADMIN, or a persistent TAP owned by this user: ip tuntap add {name} mode tap user $USER)")]
    Create {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Opens (creating if needed) the TAP device `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(TapError::BadName {
                name: name.to_owned(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::Open {
                name: name.to_owned(),
                source,
            })?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq` (40 bytes,
        // name then flags, which `IfReq` lays out) that lives on this stack
        // frame for the call; the fd is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(TapError::Create {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self {
            file,
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one frame to the host.
    pub fn write(&self, frame: &[u8]) -> io::Result<()> {
        (&self.file).write(frame).map(|_| ())
    }

    /// Waits up to `timeout` for a frame and reads it into `buf`; `Ok(0)`
    /// when none came.
    pub fn read_timeout(&self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll(2) on one pollfd that lives on this stack frame.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 || pfd.revents & libc::POLLIN == 0 {
            return Ok(0);
        }
        (&self.file).read(buf)
    }
}
