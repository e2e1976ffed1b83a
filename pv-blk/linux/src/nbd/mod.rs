//! Export a block device to the guest kernel through its NBD driver
//! (`nbd.ko`) over a `socketpair`, no network involved.
//!
//! [`NbdKernel::connect`] hands one end of the pair to `/dev/nbdN`
//! (`NBD_SET_SOCK`), sets the geometry (`NBD_SET_BLKSIZE`,
//! `NBD_SET_SIZE_BLOCKS`) and transmission flags (`NBD_SET_FLAGS`: flush,
//! trim, write-zeroes as the device offers them), then runs `NBD_DO_IT` in
//! a named thread with SIGTERM/SIGINT blocked (a signal would abort the
//! ioctl and drop the connection). The caller serves requests on the other
//! end with [`wire::Decoder`] and [`wire::encode_reply`]. Stopping:
//! [`NbdKernel::disconnect`] (`NBD_DISCONNECT`: the kernel sends
//! `NBD_CMD_DISC` after the requests already sent), then
//! [`NbdKernel::finish`] joins the thread and clears the socket
//! (`NBD_CLEAR_SOCK`).

pub mod server;
pub mod wire;

use std::fs::{File, OpenOptions};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::{Error, Result};

const fn nbd_io(n: u64) -> u64 {
    (0xab << 8) | n
}
/// `NBD_SET_SOCK`.
const NBD_SET_SOCK: u64 = nbd_io(0);
/// `NBD_SET_BLKSIZE`.
const NBD_SET_BLKSIZE: u64 = nbd_io(1);
/// `NBD_DO_IT`.
const NBD_DO_IT: u64 = nbd_io(3);
/// `NBD_CLEAR_SOCK`.
const NBD_CLEAR_SOCK: u64 = nbd_io(4);
/// `NBD_SET_SIZE_BLOCKS`.
const NBD_SET_SIZE_BLOCKS: u64 = nbd_io(7);
/// `NBD_DISCONNECT`.
const NBD_DISCONNECT: u64 = nbd_io(8);
/// `NBD_SET_TIMEOUT`.
const NBD_SET_TIMEOUT: u64 = nbd_io(9);
/// `NBD_SET_FLAGS`.
const NBD_SET_FLAGS: u64 = nbd_io(10);

fn ioctl(f: &File, req: u64, arg: u64, what: &'static str) -> Result<()> {
    // SAFETY: the NBD ioctls used here take an integer argument (no
    // pointer), on an fd we own.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), req as _, arg as libc::c_ulong) };
    if rc < 0 {
        return Err(Error::last_os(what));
    }
    Ok(())
}

/// A connected socket pair: (our end, the kernel's end).
pub fn socketpair() -> Result<(UnixStream, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error::last_os("socketpair"));
    }
    // SAFETY: the descriptor was just created and is owned by nobody else.
    let ours = unsafe { UnixStream::from_raw_fd(fds[0]) };
    // SAFETY: as above, for the other end.
    let theirs = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((ours, theirs))
}

/// Raise (or lower) the largest request the kernel sends to
/// `/dev/nbd{index}` to `kb` KiB, capped at the device's hardware limit
/// (`queue/max_sectors_kb`, bounded by `max_hw_sectors_kb`). Returns the
/// value in force. The kernel's default (128 KiB on 6.1) splits a 1 MiB
/// read into eight NBD round trips.
pub fn set_max_request_kb(index: u32, kb: u32) -> Result<u32> {
    let q = PathBuf::from(format!("/sys/block/nbd{index}/queue"));
    let read = |name: &str| -> Result<u32> {
        let p = q.join(name);
        let s = std::fs::read_to_string(&p).map_err(|e| Error::io("read", &p, e))?;
        s.trim()
            .parse()
            .map_err(|_| Error::Nbd(format!("{}: not a number: {s:?}", p.display())))
    };
    let hw = read("max_hw_sectors_kb")?;
    let want = kb.clamp(4, hw.max(4));
    let p = q.join("max_sectors_kb");
    std::fs::write(&p, want.to_string()).map_err(|e| Error::io("write", &p, e))?;
    read("max_sectors_kb")
}

/// Write `value` to `/sys/block/nbd{index}/queue/{name}` (e.g.
/// `rq_affinity`, `nomerges`) and return what reads back.
pub fn set_queue_attr(index: u32, name: &str, value: &str) -> Result<String> {
    let p = PathBuf::from(format!("/sys/block/nbd{index}/queue/{name}"));
    std::fs::write(&p, value).map_err(|e| Error::io("write", &p, e))?;
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io("read", &p, e))?;
    Ok(s.trim().to_owned())
}

/// Geometry and features of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportConfig {
    /// Size in bytes (a multiple of `block_size`).
    pub size: u64,
    /// Logical block size: a power of two from 512 to 4096.
    pub block_size: u32,
    /// Transmission flags ([`wire::flags`]); `HAS_FLAGS` is added.
    pub flags: u16,
}

/// The kernel side of one `/dev/nbdN`; see the module docs.
#[derive(Debug)]
pub struct NbdKernel {
    dev: Arc<File>,
    path: PathBuf,
    thread: Option<JoinHandle<Result<()>>>,
}

impl NbdKernel {
    /// Attach `sock` (the kernel's end of a [`socketpair`]) to `/dev/nbd{index}`
    /// and start the transmission thread. Needs `nbd.ko` loaded.
    pub fn connect(index: u32, sock: OwnedFd, cfg: ExportConfig) -> Result<Self> {
        let path = PathBuf::from(format!("/dev/nbd{index}"));
        if !cfg.block_size.is_power_of_two()
            || !(512..=4096).contains(&cfg.block_size)
            || !cfg.size.is_multiple_of(u64::from(cfg.block_size))
        {
            return Err(Error::Nbd(format!(
                "bad geometry: {} bytes in {}-byte blocks",
                cfg.size, cfg.block_size
            )));
        }
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open (is the nbd module loaded? modprobe nbd)", &path, e))?;
        ioctl(
            &dev,
            NBD_SET_SOCK,
            sock.as_raw_fd() as u64,
            "NBD_SET_SOCK (device busy?)",
        )?;
        // The kernel holds its own reference to the socket now.
        drop(sock);
        ioctl(
            &dev,
            NBD_SET_BLKSIZE,
            u64::from(cfg.block_size),
            "NBD_SET_BLKSIZE",
        )?;
        ioctl(
            &dev,
            NBD_SET_SIZE_BLOCKS,
            cfg.size / u64::from(cfg.block_size),
            "NBD_SET_SIZE_BLOCKS",
        )?;
        ioctl(&dev, NBD_SET_TIMEOUT, 0, "NBD_SET_TIMEOUT")?;
        ioctl(
            &dev,
            NBD_SET_FLAGS,
            u64::from(cfg.flags | wire::flags::HAS_FLAGS),
            "NBD_SET_FLAGS",
        )?;
        let dev = Arc::new(dev);
        let d2 = Arc::clone(&dev);
        let thread = pv_linux::signal::spawn_blocked(&format!("nbd{index}-do-it"), move || {
            ioctl(&d2, NBD_DO_IT, 0, "NBD_DO_IT")
        })
        .map_err(|e| Error::sys("spawn the NBD_DO_IT thread", e))?;
        Ok(Self {
            dev,
            path,
            thread: Some(thread),
        })
    }

    /// The device node.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// True while the `NBD_DO_IT` thread runs (the export is live).
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Ask the kernel to disconnect: it sends `NBD_CMD_DISC` after the
    /// requests already on the socket, and fails later I/O.
    pub fn disconnect(&self) -> Result<()> {
        ioctl(&self.dev, NBD_DISCONNECT, 0, "NBD_DISCONNECT")
    }

    /// Wait for the transmission thread (returns after a disconnect or when
    /// our end of the socket closes), then clear the socket.
    pub fn finish(mut self) -> Result<()> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Result<()> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        let r = t
            .join()
            .map_err(|_| Error::Nbd("NBD_DO_IT thread panicked".into()))?;
        // Already cleared by most kernels when DO_IT returns; harmless then.
        let _ = ioctl(&self.dev, NBD_CLEAR_SOCK, 0, "NBD_CLEAR_SOCK");
        if let Err(e) = r {
            log::info!("{}: NBD_DO_IT ended: {e}", self.path.display());
        }
        Ok(())
    }
}

impl Drop for NbdKernel {
    fn drop(&mut self) {
        if self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            let _ = self.disconnect();
        }
        let _ = self.finish_inner();
    }
}
