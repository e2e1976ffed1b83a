//! A vhost-user message relay between QEMU and the port's rust-vmm
//! backend, to bridge one incompatibility.
//!
//! QEMU 7.2's virtio-net sends `SET_VRING_ENABLE` when the guest writes its
//! features (`peer_attach`), before `SET_FEATURES` reaches the backend. The
//! rust-vmm `vhost` crate refuses that message until the backend has seen
//! PROTOCOL_FEATURES acked, and ends the connection. Without PROTOCOL_FEATURES
//! QEMU refuses to start vhost-net at all (its later "restore vring enable
//! state" fails with EINVAL). So the relay holds `SET_VRING_ENABLE` back
//! until `SET_FEATURES` has passed (answering it if QEMU asked for a reply),
//! and right after each `SET_FEATURES` (which leaves the backend's rings
//! disabled) replays the last state QEMU asked for, per ring: QEMU 7.2
//! sends even its start-time enables before `SET_FEATURES`. Everything else
//! is relayed unchanged, file descriptors included. Only the control plane crosses the relay: rings and eventfds
//! are shared directly between QEMU and the backend.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `VHOST_USER_SET_FEATURES`.
const SET_FEATURES: u32 = 2;
/// `VHOST_USER_SET_VRING_ENABLE`.
const SET_VRING_ENABLE: u32 = 18;
const HDR: usize = 12;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest payload relayed (the biggest QEMU 7.2 sends is far smaller).
const MAX_PAYLOAD: usize = 64 * 1024;
const MAX_FDS: usize = 32;

/// Owned file descriptors received with a message; closed on drop.
struct Fds(Vec<RawFd>);

impl Drop for Fds {
    fn drop(&mut self) {
        for fd in &self.0 {
            // SAFETY: each fd was received by recvmsg and is owned by us
            // only; it is closed exactly once, here.
            unsafe { libc::close(*fd) };
        }
    }
}

/// Control buffer for SCM_RIGHTS, aligned for `struct cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; CMSG_HDR + MAX_FDS * 4 + 8]);

/// `struct cmsghdr` on 64-bit Linux: `cmsg_len: usize`, level, type (i32).
const CMSG_HDR: usize = 16;

fn recv_some(fd: RawFd, buf: &mut [u8], fds: &mut Fds) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = Control([0; CMSG_HDR + MAX_FDS * 4 + 8]);
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len();
    // SAFETY: `msg` points at `iov` (over `buf`) and `control`, all alive
    // and writable for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // Walk the control messages the kernel wrote, as plain bytes.
    let c = &control.0[..msg.msg_controllen.min(control.0.len())];
    let mut off = 0;
    while off + CMSG_HDR <= c.len() {
        let len = usize::from_ne_bytes(c[off..off + 8].try_into().unwrap_or([0; 8]));
        let level = i32::from_ne_bytes(c[off + 8..off + 12].try_into().unwrap_or([0; 4]));
        let kind = i32::from_ne_bytes(c[off + 12..off + 16].try_into().unwrap_or([0; 4]));
        if len < CMSG_HDR || off + len > c.len() {
            break;
        }
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            for chunk in c[off + CMSG_HDR..off + len].chunks_exact(4) {
                fds.0
                    .push(RawFd::from_ne_bytes(chunk.try_into().unwrap_or([0xff; 4])));
            }
        }
        off += len.div_ceil(8) * 8;
    }
    Ok(n as usize)
}

fn recv_exact(fd: RawFd, buf: &mut [u8], fds: &mut Fds) -> io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        let n = recv_some(fd, &mut buf[at..], fds)?;
        if n == 0 {
            return Ok(false);
        }
        at += n;
    }
    Ok(true)
}

fn send_all(fd: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut at = 0;
    let mut first = true;
    while at < data.len() {
        let mut iov = libc::iovec {
            iov_base: data[at..].as_ptr().cast_mut().cast(),
            iov_len: data.len() - at,
        };
        let mut control = Control([0; CMSG_HDR + MAX_FDS * 4 + 8]);
        // SAFETY: an all-zero msghdr is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if first && !fds.is_empty() {
            let fds = &fds[..fds.len().min(MAX_FDS)];
            let len = CMSG_HDR + 4 * fds.len();
            let c = &mut control.0;
            c[0..8].copy_from_slice(&len.to_ne_bytes());
            c[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
            c[12..16].copy_from_slice(&libc::SCM_RIGHTS.to_ne_bytes());
            for (i, f) in fds.iter().enumerate() {
                c[CMSG_HDR + 4 * i..CMSG_HDR + 4 * i + 4].copy_from_slice(&f.to_ne_bytes());
            }
            msg.msg_control = c.as_mut_ptr().cast();
            msg.msg_controllen = len.div_ceil(8) * 8;
        }
        // SAFETY: `msg` points at `iov` (over `data`) and `control`, alive
        // for the call; sendmsg only reads them.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        at += n as usize;
        first = false;
    }
    Ok(())
}

/// Reads one message: header, payload, and every fd that came with them.
/// `None` at end of stream.
fn read_msg(fd: RawFd) -> io::Result<Option<(Vec<u8>, Fds)>> {
    let mut fds = Fds(Vec::new());
    let mut hdr = [0u8; HDR];
    if !recv_exact(fd, &mut hdr, &mut fds)? {
        return Ok(None);
    }
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD || fds.0.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "vhost-user message of {size} bytes with {} fds",
            fds.0.len()
        )));
    }
    let mut msg = vec![0u8; HDR + size];
    msg[..HDR].copy_from_slice(&hdr);
    if !recv_exact(fd, &mut msg[HDR..], &mut fds)? {
        return Ok(None);
    }
    if fds.0.len() > MAX_FDS {
        return Err(io::Error::other("too many fds"));
    }
    Ok(Some((msg, fds)))
}

fn word(m: &[u8], at: usize) -> u32 {
    m.get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Relays messages between `qemu` and `backend` until either side closes
/// or `stop` is set; then shuts both down.
pub fn relay(qemu: &UnixStream, backend: &UnixStream, stop: &AtomicBool) -> io::Result<()> {
    let (q, b) = (qemu.as_raw_fd(), backend.as_raw_fd());
    let mut features_seen = false;
    // Last enable state QEMU asked for, per vring: (index, num).
    let mut enabled: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
    let result = loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        let mut pfd = [
            libc::pollfd {
                fd: q,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = Duration::from_millis(200).as_millis() as libc::c_int;
        // SAFETY: poll(2) on two pollfds on this stack frame.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break Err(e);
        }
        if pfd[0].revents != 0 {
            let Some((msg, fds)) = (match read_msg(q) {
                Ok(m) => m,
                Err(e) => break Err(e),
            }) else {
                break Ok(());
            };
            let req = word(&msg, 0);
            let flags = word(&msg, 4);
            log::debug!("relay: request {req} flags {flags:#x} fds {}", fds.0.len());
            if req == SET_VRING_ENABLE {
                enabled.insert(word(&msg, HDR), word(&msg, HDR + 4));
            }
            if req == SET_VRING_ENABLE && !features_seen {
                log::debug!("relay: early SET_VRING_ENABLE held back");
                if flags & FLAG_NEED_REPLY != 0 {
                    let mut reply = Vec::with_capacity(HDR + 8);
                    reply.extend_from_slice(&req.to_le_bytes());
                    reply.extend_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
                    reply.extend_from_slice(&8u32.to_le_bytes());
                    reply.extend_from_slice(&0u64.to_le_bytes());
                    if let Err(e) = send_all(q, &reply, &[]) {
                        break Err(e);
                    }
                }
                continue;
            }
            if let Err(e) = send_all(b, &msg, &fds.0) {
                break Err(e);
            }
            if req == SET_FEATURES {
                features_seen = true;
                // SET_FEATURES with PROTOCOL_FEATURES leaves every ring
                // disabled; QEMU 7.2 sent its enables before it, so they
                // are replayed now (no reply requested).
                let mut failed = None;
                for (index, num) in &enabled {
                    let mut m = Vec::with_capacity(HDR + 8);
                    m.extend_from_slice(&SET_VRING_ENABLE.to_le_bytes());
                    m.extend_from_slice(&FLAG_VERSION.to_le_bytes());
                    m.extend_from_slice(&8u32.to_le_bytes());
                    m.extend_from_slice(&index.to_le_bytes());
                    m.extend_from_slice(&num.to_le_bytes());
                    if let Err(e) = send_all(b, &m, &[]) {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(e) = failed {
                    break Err(e);
                }
            }
        }
        if pfd[1].revents != 0 {
            let Some((msg, fds)) = (match read_msg(b) {
                Ok(m) => m,
                Err(e) => break Err(e),
            }) else {
                break Ok(());
            };
            if let Err(e) = send_all(q, &msg, &fds.0) {
                break Err(e);
            }
        }
    };
    let _ = qemu.shutdown(std::net::Shutdown::Both);
    let _ = backend.shutdown(std::net::Shutdown::Both);
    result
}
