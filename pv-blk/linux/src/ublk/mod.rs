//! Export a block device to the guest kernel through ublk (`ublk_drv`,
//! Linux 6.0+; Debian ships it from 6.12): the kernel's `/dev/ublkbN` sends
//! each request to this process as the completion of an io_uring
//! `URING_CMD`, and takes the answer back with the next command on the same
//! tag. No socket, no copy through a stream: the driver copies request data
//! straight between the bio pages and the tag's buffer, which the runtime
//! puts in DMA memory so the device reads and writes it directly.
//!
//! - [`Control`]: `/dev/ublk-control` commands (ADD_DEV, SET_PARAMS,
//!   START_DEV, STOP_DEV, DEL_DEV) on a small SQE128 ring of its own.
//!   START_DEV and STOP_DEV block in the kernel until I/O is served (START
//!   reads the partition table; STOP drains), so they run on a helper
//!   thread while the queue's thread serves ([`Control::spawn`]).
//! - [`Queue`]: one hardware queue: `/dev/ublkcN`, its descriptor area
//!   (mmapped read-only; the driver writes it, we copy each descriptor out
//!   once and validate the copy with [`wire::decode`]), and the io_uring the
//!   FETCH / COMMIT_AND_FETCH commands go through. All of a queue's commands
//!   must come from one thread (the driver records it at the first fetch).
//!
//! Stopping: STOP_DEV removes the disk (the kernel waits for requests in
//! flight, which the queue thread must keep serving), then every tag's
//! pending fetch completes with [`wire::IO_RES_ABORT`]; close the queue,
//! then DEL_DEV.

pub mod server;
pub mod wire;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::{Error, Result};
use wire::{CtrlCmd, DevInfo, IoCmd, IoDesc, Params};

/// The control device.
pub const CONTROL: &str = "/dev/ublk-control";

/// True when this kernel has ublk (the control device exists).
pub fn available() -> bool {
    std::path::Path::new(CONTROL).exists()
}

fn sys(what: &'static str, source: std::io::Error) -> Error {
    Error::sys(what, source)
}

/// The control ring on `/dev/ublk-control`.
pub struct Control {
    file: File,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// Opens the control device (needs `ublk_drv` loaded and root).
    pub fn open() -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map_err(|source| Error::io("open ublk control", CONTROL, source))?;
        let ring = IoUring::builder()
            .build(4)
            .map_err(|e| sys("io_uring_setup (ublk control)", e))?;
        Ok(Self { file, ring })
    }

    /// Sends one control command and waits for its result (>= 0).
    fn command(&mut self, what: &'static str, op: u32, cmd: &CtrlCmd) -> Result<i32> {
        let mut payload = [0u8; 80];
        // SAFETY: CtrlCmd is a repr(C) struct of integers (32 bytes, no
        // padding) read as bytes into the first 32 bytes of the payload.
        let bytes = unsafe {
            std::slice::from_raw_parts((cmd as *const CtrlCmd).cast::<u8>(), size_of::<CtrlCmd>())
        };
        payload[..bytes.len()].copy_from_slice(bytes);
        let sqe = opcode::UringCmd80::new(types::Fd(self.file.as_raw_fd()), op)
            .cmd(payload)
            .build()
            .user_data(u64::from(op));
        // SAFETY: the command's buffer (`cmd.addr`, when set) points at
        // memory the caller keeps alive and untouched until this function
        // returns, which is after the command completed (we wait for it).
        unsafe {
            self.ring
                .submission()
                .push(&sqe)
                .map_err(|_| sys(what, std::io::Error::other("control ring full")))?;
        }
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(sys(what, e)),
            }
            if let Some(cqe) = self.ring.completion().next() {
                let res = cqe.result();
                if res < 0 {
                    return Err(sys(what, std::io::Error::from_raw_os_error(-res)));
                }
                return Ok(res);
            }
        }
    }

    /// ADD_DEV: creates `/dev/ublkcN` for `info` (`dev_id` u32::MAX lets
    /// the kernel choose); returns the device's info as the kernel set it.
    pub fn add_dev(&mut self, info: &DevInfo) -> Result<DevInfo> {
        let mut info = *info;
        let cmd = CtrlCmd {
            dev_id: info.dev_id,
            queue_id: u16::MAX,
            len: size_of::<DevInfo>() as u16,
            addr: (&mut info as *mut DevInfo) as u64,
            ..CtrlCmd::default()
        };
        self.command("ublk ADD_DEV", wire::ctrl::ADD_DEV, &cmd)?;
        Ok(info)
    }

    /// SET_PARAMS (before START_DEV).
    pub fn set_params(&mut self, dev_id: u32, params: &Params) -> Result<()> {
        let mut p = *params;
        p.len = size_of::<Params>() as u32;
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len: size_of::<Params>() as u16,
            addr: (&mut p as *mut Params) as u64,
            ..CtrlCmd::default()
        };
        self.command("ublk SET_PARAMS", wire::ctrl::SET_PARAMS, &cmd)
            .map(|_| ())
    }

    fn simple(&mut self, what: &'static str, op: u32, dev_id: u32, data: u64) -> Result<()> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            data: [data],
            ..CtrlCmd::default()
        };
        self.command(what, op, &cmd).map(|_| ())
    }

    /// START_DEV: blocks until every tag has a fetch pending and the disk
    /// is added (which reads it): the queue must be served meanwhile.
    pub fn start_dev(&mut self, dev_id: u32) -> Result<()> {
        let pid = u64::from(std::process::id());
        self.simple("ublk START_DEV", wire::ctrl::START_DEV, dev_id, pid)
    }

    /// STOP_DEV: removes the disk (waiting for requests in flight, which
    /// must be served meanwhile); pending fetches then complete aborted.
    pub fn stop_dev(&mut self, dev_id: u32) -> Result<()> {
        self.simple("ublk STOP_DEV", wire::ctrl::STOP_DEV, dev_id, 0)
    }

    /// DEL_DEV: removes `/dev/ublkcN`; waits until the char device is
    /// closed (drop the [`Queue`] first).
    pub fn del_dev(&mut self, dev_id: u32) -> Result<()> {
        self.simple("ublk DEL_DEV", wire::ctrl::DEL_DEV, dev_id, 0)
    }

    /// Runs one blocking control step on a named helper thread (with the
    /// stop signals blocked there, so they reach the serving thread).
    pub fn spawn<F>(name: &str, f: F) -> Result<std::thread::JoinHandle<Result<()>>>
    where
        F: FnOnce(&mut Control) -> Result<()> + Send + 'static,
    {
        pv_linux::signal::spawn_blocked(name, move || {
            let mut c = Control::open()?;
            f(&mut c)
        })
        .map_err(|e| sys("spawn ublk control thread", e))
    }
}

/// What a queue completion was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The tag holds a request: copy its descriptor with [`Queue::desc`].
    Request(u16),
    /// The tag is done: the device is stopping.
    Aborted(u16),
    /// The fetch/commit failed with this errno (the tag is dead).
    Failed(u16, i32),
}

/// One ublk hardware queue, served from one thread.
pub struct Queue {
    char_dev: File,
    ring: IoUring,
    descs: *const IoDesc,
    map_len: usize,
    depth: u16,
    q_id: u16,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("q_id", &self.q_id)
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Opens `/dev/ublkc<dev_id>` (waiting up to 5 s for devtmpfs to show
    /// it) and maps queue `q_id`'s descriptors. `coop`: the ring is set up
    /// with `COOP_TASKRUN | TASKRUN_FLAG`, so the driver's hand-over of a
    /// request does not interrupt a spinning server; [`Queue::has_completions`]
    /// sees the flag and runs the pending work with one `io_uring_enter`.
    pub fn open(dev_id: u32, q_id: u16, depth: u16, coop: bool) -> Result<Self> {
        let path = PathBuf::from(format!("/dev/ublkc{dev_id}"));
        let mut tries = 0;
        let char_dev = loop {
            match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 500 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(source) => return Err(Error::io("open ublk char device", path, source)),
            }
        };
        let page = 4096;
        let stride = (wire::MAX_QUEUE_DEPTH * IoDesc::SIZE).div_ceil(page) * page;
        let map_len = (usize::from(depth) * IoDesc::SIZE).div_ceil(page) * page;
        // SAFETY: a fresh shared read-only mapping of the driver's
        // descriptor area for this queue (offset = queue index × the
        // driver's per-queue stride); no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                char_dev.as_raw_fd(),
                (usize::from(q_id) * stride) as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(sys(
                "mmap ublk descriptors",
                std::io::Error::last_os_error(),
            ));
        }
        let entries = u32::from(depth).next_power_of_two().max(8) * 2;
        let mut builder = IoUring::builder();
        builder.setup_cqsize(entries * 2);
        if coop {
            builder.setup_coop_taskrun().setup_taskrun_flag();
        }
        let ring = builder.build(entries).map_err(|e| {
            // SAFETY: unmapping the mapping made above, not used since.
            unsafe { libc::munmap(p, map_len) };
            sys("io_uring_setup (ublk queue)", e)
        })?;
        Ok(Self {
            char_dev,
            ring,
            descs: p.cast::<IoDesc>(),
            map_len,
            depth,
            q_id,
        })
    }

    /// Queue depth (tags 0..depth).
    pub fn depth(&self) -> u16 {
        self.depth
    }

    /// The ring's fd: readable when completions wait (for `poll`).
    pub fn ring_fd(&self) -> i32 {
        self.ring.as_raw_fd()
    }

    fn push(&mut self, op: u32, tag: u16, result: i32, addr: u64) -> Result<()> {
        let cmd = IoCmd {
            q_id: self.q_id,
            tag,
            result,
            addr,
        };
        let mut payload = [0u8; 16];
        payload[0..2].copy_from_slice(&cmd.q_id.to_ne_bytes());
        payload[2..4].copy_from_slice(&cmd.tag.to_ne_bytes());
        payload[4..8].copy_from_slice(&cmd.result.to_ne_bytes());
        payload[8..16].copy_from_slice(&cmd.addr.to_ne_bytes());
        let sqe = opcode::UringCmd16::new(types::Fd(self.char_dev.as_raw_fd()), op)
            .cmd(payload)
            .build()
            .user_data(u64::from(tag));
        loop {
            // SAFETY: the command carries no pointer the kernel reads at
            // submission; `addr` is the tag's buffer, which the caller keeps
            // alive (and does not touch while the kernel owns the tag) until
            // the tag's next completion or the queue is dropped.
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_ok() {
                return Ok(());
            }
            // Full submission ring: hand what is queued to the kernel.
            self.submit()?;
        }
    }

    /// Queues FETCH_REQ for `tag` with its buffer at `buf` (the caller
    /// keeps the buffer alive until the queue is dropped).
    pub fn fetch(&mut self, tag: u16, buf: u64) -> Result<()> {
        self.push(wire::io::FETCH_REQ, tag, 0, buf)
    }

    /// Queues COMMIT_AND_FETCH_REQ: answers `tag`'s request with `result`
    /// (bytes done, or a negative errno) and asks for the next one.
    pub fn commit(&mut self, tag: u16, result: i32, buf: u64) -> Result<()> {
        self.push(wire::io::COMMIT_AND_FETCH_REQ, tag, result, buf)
    }

    /// Hands queued commands to the kernel without waiting.
    pub fn submit(&mut self) -> Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(sys("io_uring_enter (ublk queue)", e)),
        }
    }

    /// Submits, then waits up to `timeout` for a completion (a signal
    /// ends the wait early).
    pub fn wait(&mut self, timeout: Duration) -> Result<()> {
        let ts = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::ETIME | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(sys("io_uring_enter wait (ublk queue)", e)),
        }
    }

    /// True when completions wait (no system call, unless the kernel
    /// flagged deferred work for us: then one `io_uring_enter` runs it).
    pub fn has_completions(&mut self) -> bool {
        if !self.ring.completion().is_empty() {
            return true;
        }
        if self.ring.submission().taskrun() {
            let _ = self.ring.submit();
            return !self.ring.completion().is_empty();
        }
        false
    }

    /// Takes every waiting completion.
    pub fn reap(&mut self, out: &mut Vec<Event>) {
        for cqe in self.ring.completion() {
            let Ok(tag) = u16::try_from(cqe.user_data()) else {
                continue;
            };
            if tag >= self.depth {
                continue;
            }
            out.push(match cqe.result() {
                wire::IO_RES_OK => Event::Request(tag),
                wire::IO_RES_ABORT => Event::Aborted(tag),
                e => Event::Failed(tag, e),
            });
        }
    }

    /// A copy of `tag`'s descriptor (read once; validate the copy).
    pub fn desc(&self, tag: u16) -> Option<IoDesc> {
        if tag >= self.depth {
            return None;
        }
        let entry = self.descs.wrapping_add(usize::from(tag));
        // SAFETY: `tag < depth`, so `entry` lies inside the mapping of
        // `depth` descriptors (aligned: the mapping is page-aligned and
        // entries are 24 bytes of u32/u64), which lives as long as `self`.
        // The driver writes it before completing the tag's fetch (the CQE
        // we just reaped orders it); a volatile read copies it once.
        Some(unsafe { std::ptr::read_volatile(entry) })
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no reference into it outlives
        // `self` (descriptors are handed out by value).
        unsafe { libc::munmap(self.descs as *mut libc::c_void, self.map_len) };
    }
}
