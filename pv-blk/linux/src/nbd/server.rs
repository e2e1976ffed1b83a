//! The NBD export of `pvblkd`: `/dev/nbdN` through the kernel NBD driver
//! over a socketpair, where the kernel has no ublk.
//!
//! One thread serves everything: it reads NBD requests from the socket,
//! splits them into device requests (data in 256 KiB hugepage DMA buffers,
//! discards at the device's limit), keeps up to the queue's depth of them in
//! flight on the core's queue, and answers each NBD request when all its
//! parts completed (the kernel keeps up to 128 NBD requests outstanding, so
//! the device sees real queue depth). A second thread only sits in the
//! kernel's `NBD_DO_IT` ioctl. The polling is the shared loop's
//! ([`crate::server`]); new NBD requests and room in the socket end its
//! sleeps too, and with nothing in flight it blocks on the socket.
//!
//! SIGTERM/SIGINT: `NBD_DISCONNECT` (the kernel sends its disconnect after
//! the requests already sent), then every request in flight is finished;
//! the caller flushes and resets the device and hands it back.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use pv_blk::{BlkError, BlockFrontend, DeviceInfo, IoBuf, Op, Request, SECTOR_SIZE};
use pv_linux::dma::DmaBuf;
use pv_linux::pci::PciDevice;
use pv_linux::poll::AdaptivePoller;
use pv_linux::signal;

use super::wire::{self, errno, Command, Decoder};
use super::{ExportConfig, NbdKernel};
use crate::config::Cli;
use crate::server::{self, discard_limit, Blk, Completion, DeviceSide, Export};
use crate::{Error, Result};

/// Largest data buffer of one device request.
const CHUNK: usize = 256 * 1024;
/// Largest NBD write accepted (the kernel's own limit for nbd is 32 MiB).
const MAX_PAYLOAD: u32 = 32 << 20;

/// Serves `blk` as `/dev/nbdN` (`--nbd`) until SIGTERM or the kernel drops
/// the connection (or a fatal error), in `block_size` blocks. The caller
/// flushes and resets `blk`.
pub(crate) fn serve(cli: &Cli, blk: &mut Blk, dev: &PciDevice, block_size: u32) -> Result<()> {
    let di = blk.info();
    let bs = block_size;
    let size_bytes = di.capacity_sectors * SECTOR_SIZE as u64;
    let mut flags = 0;
    if di.features.read_only {
        flags |= wire::flags::READ_ONLY;
    }
    if di.features.flush {
        flags |= wire::flags::SEND_FLUSH;
    }
    if di.features.discard {
        flags |= wire::flags::SEND_TRIM;
    }
    if di.features.write_zeroes {
        flags |= wire::flags::SEND_WRITE_ZEROES;
    }
    let (sock, kernel_end) = super::socketpair()?;
    sock.set_nonblocking(true)
        .map_err(|e| Error::sys("NBD socket: O_NONBLOCK", e))?;
    // Room for a whole large read reply in the socket, so replies rarely
    // wait for the kernel's receiver (best effort: the kernel caps it at
    // net.core.wmem_max unless we are root, which we are).
    set_sndbuf(&sock, 8 << 20);
    let kernel = NbdKernel::connect(
        cli.nbd,
        kernel_end,
        ExportConfig {
            size: size_bytes - size_bytes % u64::from(bs),
            block_size: bs,
            flags,
        },
    )?;
    if cli.max_request_kb > 0 {
        match super::set_max_request_kb(cli.nbd, cli.max_request_kb) {
            Ok(kb) => info!("largest NBD request: {kb} KiB"),
            Err(e) => warn!("max_sectors_kb: {e}"),
        }
    }
    if let Some(a) = cli.rq_affinity {
        match super::set_queue_attr(cli.nbd, "rq_affinity", &a.to_string()) {
            Ok(v) => info!("rq_affinity: {v}"),
            Err(e) => warn!("rq_affinity: {e}"),
        }
    }
    info!(
        "serving {} ({} bytes, {bs}-byte blocks, flags {flags:#x})",
        kernel.path().display(),
        size_bytes
    );
    println!(
        "pvblkd: serving {} from {}",
        kernel.path().display(),
        dev.address()
    );

    let poller = AdaptivePoller::new(
        Duration::from_micros(cli.spin_us.unwrap_or(200)),
        Duration::from_micros(cli.min_sleep_us),
        Duration::from_micros(cli.max_sleep_us),
    );
    let mut server = Server::new(
        DeviceSide::new(
            blk,
            dev.irq(),
            poller,
            Duration::from_micros(cli.idle_spin_us.unwrap_or(200)),
        ),
        sock,
        di,
        &kernel,
    );
    let served = server::serve(&mut server);
    let stats = server.finish();
    info!(
        "served {} NBD requests ({} errors); core {:?}",
        stats.0, stats.1, stats.2
    );
    // Our end is closed now (the server dropped it): NBD_DO_IT returns.
    if let Err(e) = kernel.finish() {
        warn!("nbd finish: {e}");
    }
    served
}

fn set_sndbuf(sock: &UnixStream, bytes: libc::c_int) {
    // SAFETY: setsockopt reads one c_int from a live local for the call's
    // duration, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        warn!(
            "SO_SNDBUFFORCE {bytes}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// One device request, queued or in flight.
#[derive(Debug)]
struct Part {
    parent: u64,
    /// Index of this part's buffer in the parent's read data.
    index: usize,
    op: Op,
    sector: u64,
    buf: Option<DmaBuf>,
}

/// One NBD request being served.
#[derive(Debug)]
struct Parent {
    handle: u64,
    remaining: usize,
    error: u32,
    /// For reads: the parts' buffers in disk order, as they complete.
    read: Option<Vec<Option<DmaBuf>>>,
    /// When the request was decoded (service time statistics).
    since: Instant,
}

struct Server<'a> {
    dev: DeviceSide<'a>,
    kernel: &'a NbdKernel,
    sock: Option<UnixStream>,
    /// The socket's fd (the sleeps wait on it).
    fd: RawFd,
    info: DeviceInfo,
    decoder: Decoder,
    out: Vec<u8>,
    backlog: VecDeque<Part>,
    /// Parts on the device, with when they were submitted.
    in_flight: HashMap<u32, (Part, Instant, bool)>,
    /// Device times (submit to completion seen) in µs, for the exit log.
    device_us: Vec<u32>,
    /// The same for parts submitted alone (nothing else in flight).
    device_alone_us: Vec<u32>,
    parents: HashMap<u64, Parent>,
    next_parent: u64,
    /// The client said NBD_CMD_DISC or closed the socket.
    client_gone: bool,
    disconnect_sent: bool,
    requests: u64,
    errors: u64,
    /// Service times (decode to reply queued) in µs, for the exit log.
    service_us: Vec<u32>,
    /// Socket writes that could not take all queued replies (the kernel's
    /// receiver was behind), for the exit log.
    write_blocked: u64,
    /// When the last reply left with nothing else in flight (the device
    /// and pvblkd idle: what follows is the kernel's and the client's time).
    idle_from: Option<Instant>,
    /// Idle gaps in µs: last reply written, nothing in flight, to the next
    /// request decoded (the rest of a synchronous client's round trip).
    gap_us: Vec<u32>,
    /// Socket writes of replies: (µs spent in the `write` calls, bytes) per
    /// `write_socket` call that wrote something, for the exit log.
    write_us: Vec<(u32, usize)>,
}

impl std::fmt::Debug for Server<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("in_flight", &self.in_flight.len())
            .field("backlog", &self.backlog.len())
            .finish()
    }
}

impl<'a> Export<'a> for Server<'a> {
    fn device(&mut self) -> &mut DeviceSide<'a> {
        &mut self.dev
    }

    fn control(&mut self) -> Result<()> {
        if signal::stop_requested() && !self.disconnect_sent {
            info!(
                "stop requested: disconnecting {}",
                self.kernel.path().display()
            );
            self.disconnect_sent = true;
            if let Err(e) = self.kernel.disconnect() {
                warn!("NBD_DISCONNECT: {e}");
                self.client_gone = true;
            }
        }
        if !self.kernel.running() && !self.client_gone {
            info!("NBD_DO_IT ended: the kernel dropped the connection");
            self.client_gone = true;
        }
        Ok(())
    }

    fn take_requests(&mut self) -> Result<bool> {
        if self.client_gone {
            return Ok(false);
        }
        let read = self.read_socket()?;
        Ok(read | self.decode_requests()?)
    }

    fn submit_backlog(&mut self) -> Result<bool> {
        Ok(self.submit_parts())
    }

    fn complete(&mut self, (t, r): Completion) -> Result<()> {
        match self.in_flight.remove(&t.raw()) {
            Some((part, since, alone)) => {
                let v = if alone {
                    &mut self.device_alone_us
                } else {
                    &mut self.device_us
                };
                if v.len() < 1 << 22 {
                    let us = since.elapsed().as_micros();
                    v.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
                self.complete_part(part, r)
            }
            None => warn!("completion for unknown token {:#x}", t.raw()),
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<bool> {
        self.write_socket()
    }

    fn finished(&mut self) -> bool {
        if self.client_gone && self.in_flight.is_empty() && self.backlog.is_empty() {
            // Best effort: deliver the last replies.
            let _ = self.write_socket();
            return true;
        }
        false
    }

    fn idle(&self) -> bool {
        self.in_flight.is_empty() && self.out.is_empty()
    }

    fn block(&mut self) -> Result<()> {
        self.dev.poller.wait(&[self.fd], Duration::from_millis(100));
        Ok(())
    }

    fn pause(&mut self) {
        std::hint::spin_loop();
    }

    /// The socket readable (new requests), and writable while replies
    /// wait for room in it; the interrupt only while parts are on the
    /// device.
    fn wake_on(&self) -> ((RawFd, i16), bool) {
        let sock_ev = if self.out.is_empty() {
            libc::POLLIN
        } else {
            libc::POLLIN | libc::POLLOUT
        };
        ((self.fd, sock_ev), !self.in_flight.is_empty())
    }
}

impl<'a> Server<'a> {
    fn new(dev: DeviceSide<'a>, sock: UnixStream, info: DeviceInfo, kernel: &'a NbdKernel) -> Self {
        Self {
            dev,
            kernel,
            fd: sock.as_raw_fd(),
            sock: Some(sock),
            info,
            decoder: Decoder::new(MAX_PAYLOAD),
            out: Vec::with_capacity(1 << 20),
            backlog: VecDeque::new(),
            in_flight: HashMap::new(),
            parents: HashMap::new(),
            next_parent: 0,
            client_gone: false,
            disconnect_sent: false,
            requests: 0,
            errors: 0,
            service_us: Vec::new(),
            write_blocked: 0,
            device_us: Vec::new(),
            device_alone_us: Vec::new(),
            idle_from: None,
            gap_us: Vec::new(),
            write_us: Vec::new(),
        }
    }

    /// Close our end of the socket; returns (requests, errors, core stats).
    /// Requests still in flight (after an error) are taken back from the
    /// device by a reset first, so their buffers are not freed under it.
    fn finish(&mut self) -> (u64, u64, pv_blk::Stats) {
        self.sock = None;
        if !self.in_flight.is_empty() {
            warn!(
                "{} requests still in flight: resetting the device",
                self.in_flight.len()
            );
            if let Err(e) = self.dev.blk.reset(&mut |_, _| {}) {
                error!("reset: {e}; leaking the buffers still in flight");
                for (_, part) in self.in_flight.drain() {
                    std::mem::forget(part);
                }
            }
            self.in_flight.clear();
        }
        if !self.service_us.is_empty() {
            let v = &mut self.service_us;
            v.sort_unstable();
            let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
            info!(
                "device service time (NBD request decoded to reply queued): p50 {} us, p99 {} us; poller {:?}; {} interrupts; {} socket writes blocked",
                pct(0.5),
                pct(0.99),
                self.dev.poller.stats,
                self.dev.interrupts,
                self.write_blocked
            );
        }
        for (what, v) in [
            ("alone", &mut self.device_alone_us),
            ("with others in flight", &mut self.device_us),
        ] {
            if v.is_empty() {
                continue;
            }
            v.sort_unstable();
            let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
            info!(
                "device time (part submitted to its completion seen), {what}: {} parts, p50 {} us, p99 {} us",
                v.len(),
                pct(0.5),
                pct(0.99)
            );
        }
        if !self.gap_us.is_empty() {
            let v = &mut self.gap_us;
            v.sort_unstable();
            let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
            info!(
                "idle gap (last reply written, nothing in flight, to the next request decoded): {} gaps, p50 {} us, p99 {} us",
                v.len(),
                pct(0.5),
                pct(0.99)
            );
        }
        if !self.write_us.is_empty() {
            let v = &mut self.write_us;
            let bytes: usize = v.iter().map(|w| w.1).sum();
            let total_us: u64 = v.iter().map(|w| u64::from(w.0)).sum();
            // Big writes (a large read's reply) apart from small ones.
            let big: Vec<u32> = v.iter().filter(|w| w.1 >= 64 * 1024).map(|w| w.0).collect();
            v.sort_unstable();
            let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].0;
            info!(
                "socket writes (replies): {} calls, {} bytes, {} us in write() in all, p50 {} us, p99 {} us; {} of 64 KiB or more took {} us in all",
                v.len(),
                bytes,
                total_us,
                pct(0.5),
                pct(0.99),
                big.len(),
                big.iter().map(|&u| u64::from(u)).sum::<u64>()
            );
        }
        (self.requests, self.errors, self.dev.blk.stats())
    }

    fn read_socket(&mut self) -> Result<bool> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(false);
        };
        let mut got = false;
        loop {
            let want = self.decoder.wanted().max(64 * 1024);
            let room = self.decoder.spare(want);
            match sock.read(room) {
                Ok(0) => {
                    info!("client closed the socket");
                    self.client_gone = true;
                    return Ok(got);
                }
                Ok(n) => {
                    self.decoder.commit(n);
                    got = true;
                    if n < want {
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(got),
                Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(got),
                Err(source) => return Err(Error::sys("read from the NBD socket", source)),
            }
        }
    }

    fn write_socket(&mut self) -> Result<bool> {
        if self.out.is_empty() {
            return Ok(false);
        }
        let Some(sock) = self.sock.as_mut() else {
            self.out.clear();
            return Ok(false);
        };
        let mut done = 0;
        let started = Instant::now();
        while done < self.out.len() {
            match sock.write(&self.out[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.write_blocked += 1;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => break,
                Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                    self.client_gone = true;
                    self.out.clear();
                    return Ok(true);
                }
                Err(source) => return Err(Error::sys("write to the NBD socket", source)),
            }
        }
        if done > 0 && self.write_us.len() < 1 << 22 {
            let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            self.write_us.push((us, done));
        }
        self.out.drain(..done);
        if done > 0 && self.out.is_empty() && self.in_flight.is_empty() && self.backlog.is_empty() {
            self.idle_from = Some(Instant::now());
        }
        Ok(done > 0)
    }

    fn reply(&mut self, handle: u64, error: u32, data: &[Option<DmaBuf>]) {
        self.requests += 1;
        if error != 0 {
            self.errors += 1;
        }
        self.out
            .extend_from_slice(&wire::encode_reply(handle, error));
        if error == 0 {
            for b in data.iter().flatten() {
                self.out.extend_from_slice(b.as_slice());
            }
        }
    }

    /// Turn every whole request in the decoder into parts on the backlog.
    fn decode_requests(&mut self) -> Result<bool> {
        let mut any = false;
        loop {
            let (req, payload) = match self.decoder.next_request() {
                Ok(Some((r, p))) => (r, p),
                Ok(None) => return Ok(any),
                Err(e) => return Err(Error::NbdStream(e)),
            };
            any = true;
            if let Some(t) = self.idle_from.take() {
                if self.gap_us.len() < 1 << 22 {
                    let us = t.elapsed().as_micros();
                    self.gap_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            let f = self.info.features;
            let size = self.info.capacity_sectors * SECTOR_SIZE as u64;
            let range = wire::check_range(&req, size, SECTOR_SIZE as u32);
            let mut parts: Vec<(Op, u64, Option<DmaBuf>)> = Vec::new();
            let mut read = false;
            let err: Result<(), u32> = match req.command {
                Command::Disconnect => {
                    info!("client sent NBD_CMD_DISC");
                    self.client_gone = true;
                    continue;
                }
                Command::Read | Command::Write => range.and_then(|()| {
                    let write = req.command == Command::Write;
                    if write && f.read_only {
                        return Err(errno::EPERM);
                    }
                    read = !write;
                    let mut off = 0usize;
                    while off < req.len as usize {
                        let n = CHUNK.min(req.len as usize - off);
                        let mut b = DmaBuf::new(n).map_err(|e| {
                            warn!("{e}");
                            errno::ENOMEM
                        })?;
                        if write {
                            // The decoder hands out exactly `len` payload bytes.
                            let src = payload.get(off..off + n).ok_or(errno::EINVAL)?;
                            b.as_mut_slice().copy_from_slice(src);
                        }
                        let sector = (req.offset + off as u64) / SECTOR_SIZE as u64;
                        parts.push((if write { Op::Write } else { Op::Read }, sector, Some(b)));
                        off += n;
                    }
                    Ok(())
                }),
                Command::Flush => {
                    if f.flush {
                        parts.push((Op::Flush, 0, None));
                    }
                    Ok(())
                }
                Command::Trim | Command::WriteZeroes => range.and_then(|()| {
                    let zero = req.command == Command::WriteZeroes;
                    if f.read_only {
                        return Err(errno::EPERM);
                    }
                    if (zero && !f.write_zeroes) || (!zero && !f.discard) {
                        return Err(errno::ENOTSUP);
                    }
                    // Whole logical blocks per part.
                    let max = discard_limit(&self.info, self.info.block_size);
                    let mut sector = req.offset / SECTOR_SIZE as u64;
                    let mut left = u64::from(req.len) / SECTOR_SIZE as u64;
                    while left > 0 {
                        let n = left.min(u64::from(max)) as u32;
                        let op = if zero {
                            Op::WriteZeroes {
                                sectors: n,
                                unmap: req.flags & wire::CMD_FLAG_NO_HOLE == 0,
                            }
                        } else {
                            Op::Discard {
                                sectors: n,
                                secure: false,
                            }
                        };
                        parts.push((op, sector, None));
                        sector += u64::from(n);
                        left -= u64::from(n);
                    }
                    Ok(())
                }),
                Command::Unknown(t) => {
                    warn!("unknown NBD command {t}");
                    Err(errno::ENOTSUP)
                }
            };
            if let Err(e) = err {
                self.reply(req.handle, e, &[]);
                continue;
            }
            if parts.is_empty() {
                self.reply(req.handle, 0, &[]);
                continue;
            }
            let id = self.next_parent;
            self.next_parent += 1;
            let n = parts.len();
            self.parents.insert(
                id,
                Parent {
                    handle: req.handle,
                    remaining: n,
                    error: 0,
                    read: read.then(|| (0..n).map(|_| None).collect()),
                    since: Instant::now(),
                },
            );
            for (index, (op, sector, buf)) in parts.into_iter().enumerate() {
                self.backlog.push_back(Part {
                    parent: id,
                    index,
                    op,
                    sector,
                    buf,
                });
            }
        }
    }

    /// Submit queued parts until the queue is full.
    fn submit_parts(&mut self) -> bool {
        let mut any = false;
        while let Some(part) = self.backlog.pop_front() {
            let bufs: Vec<IoBuf> = part
                .buf
                .iter()
                .map(|b| IoBuf::new(b.as_ptr(), b.len()))
                .collect();
            let req = Request {
                op: part.op,
                sector: part.sector,
                buffers: &bufs,
            };
            // SAFETY: the buffer is a DmaBuf owned by `part`, which moves into
            // `in_flight` and stays there (its memory does not move with it)
            // until the token completes or a reset aborts it; nothing reads or
            // writes it meanwhile.
            match unsafe { self.dev.blk.submit(&req) } {
                Ok(tok) => {
                    let alone = self.in_flight.is_empty();
                    self.in_flight
                        .insert(tok.raw(), (part, Instant::now(), alone));
                    any = true;
                }
                Err(BlkError::QueueFull) => {
                    self.backlog.push_front(part);
                    break;
                }
                Err(e) => {
                    warn!("submit {:?} at {}: {e}", part.op, part.sector);
                    self.complete_part(part, Err(e));
                    any = true;
                }
            }
        }
        any
    }

    fn complete_part(&mut self, part: Part, r: Result<usize, BlkError>) {
        let Some(p) = self.parents.get_mut(&part.parent) else {
            return;
        };
        if let Err(e) = r {
            if p.error == 0 {
                warn!("{:?} at sector {}: {e}", part.op, part.sector);
            }
            p.error = match e {
                BlkError::Unsupported(_) | BlkError::DeviceUnsupported(_) => errno::ENOTSUP,
                BlkError::ReadOnly => errno::EPERM,
                BlkError::OutOfRange { .. } => errno::ENOSPC,
                _ => errno::EIO,
            };
        }
        if let (Some(read), Some(buf)) = (p.read.as_mut(), part.buf) {
            if let Some(slot) = read.get_mut(part.index) {
                *slot = Some(buf);
            }
        }
        p.remaining = p.remaining.saturating_sub(1);
        if p.remaining == 0 {
            if let Some(p) = self.parents.remove(&part.parent) {
                let data = p.read.unwrap_or_default();
                if self.service_us.len() < 1 << 22 {
                    let us = p.since.elapsed().as_micros();
                    self.service_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
                self.reply(p.handle, p.error, &data);
            }
        }
    }
}
