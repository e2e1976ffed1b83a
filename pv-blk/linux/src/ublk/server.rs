//! The ublk export of `pvblkd`: `/dev/ublkbN` instead of `/dev/nbdN`.
//!
//! Each ublk tag (one request slot of the kernel's queue) owns a buffer in
//! the hugepage DMA pool (`--ublk-buf-kb`, default 256 KiB). The driver copies a write's data into it before
//! it hands us the request, and copies a read's data out of it when we
//! commit; the device DMAs straight to and from it, so the data is copied
//! once (by the kernel, as for any userspace block device), and there is
//! no socket between us and the block layer. One request is one device
//! request: the export's limits (largest request, largest discard) are the
//! tag buffer and the device's own.
//!
//! One thread serves everything, with the same polling as the NBD export:
//! busy-poll the used ring and the io_uring completion queue while requests
//! are on the device, sleep on INTx + the ring fd when the spin budget is
//! spent, and block in `io_uring_enter` when nothing is in flight.
//! START_DEV and STOP_DEV block in the kernel until I/O is served, so they
//! run on helper threads ([`Control::spawn`]).
//!
//! A device fault resets the device and fails the tags that were on it
//! with EIO; a descriptor that does not validate fails that tag alone.
//! SIGTERM: STOP_DEV (the kernel drains the disk while we serve), every
//! tag's fetch comes back aborted, the queue is closed, DEL_DEV; the caller
//! then flushes and resets the device and hands it back.

use std::collections::{HashMap, VecDeque};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::unix::io::RawFd;

use log::{error, info, warn};
use pv_blk::{BlkError, BlockFrontend, DeviceInfo, IoBuf, Op, Request, SECTOR_SIZE};
use pv_linux::dma::DmaBuf;
use pv_linux::pci;
use pv_linux::poll::AdaptivePoller;
use pv_linux::signal;

use super::wire::{self, DevInfo, IoRequest, Params};
use super::{Control, Event, Queue};
use crate::config::Cli;
use crate::server::{self, discard_limit, Blk, Completion, DeviceSide, Export};
use crate::{Error, Result};

/// Default spin budgets (µs) of the ublk export: see `--spin-us`.
const SPIN_US: u64 = 5000;

/// How long the daemon waits for the tags to come back aborted after
/// STOP_DEV returned, before closing the queue anyway (closing cancels
/// them too).
const ABORT_GRACE: Duration = Duration::from_secs(10);

/// The export's parameters for a device.
fn params(info: &DeviceInfo, block_size: u32, buf_bytes: u32) -> Params {
    let f = info.features;
    let mut attrs = 0;
    if f.read_only {
        attrs |= wire::attr::READ_ONLY;
    }
    if f.flush {
        attrs |= wire::attr::VOLATILE_CACHE;
    }
    let shift = block_size.trailing_zeros() as u8;
    let mut p = Params {
        len: 0,
        types: wire::PARAM_TYPE_BASIC,
        basic: wire::ParamBasic {
            attrs,
            logical_bs_shift: shift,
            physical_bs_shift: shift,
            io_opt_shift: 0,
            io_min_shift: shift,
            max_sectors: buf_bytes / SECTOR_SIZE as u32,
            chunk_sectors: 0,
            dev_sectors: info.capacity_sectors,
            virt_boundary_mask: 0,
        },
        discard: wire::ParamDiscard::default(),
    };
    if (f.discard || f.write_zeroes) && !f.read_only {
        // Whole logical blocks per request.
        let max = discard_limit(info, block_size);
        p.types |= wire::PARAM_TYPE_DISCARD;
        p.discard = wire::ParamDiscard {
            discard_alignment: 0,
            discard_granularity: block_size,
            max_discard_sectors: if f.discard { max } else { 0 },
            max_write_zeroes_sectors: if f.write_zeroes { max } else { 0 },
            max_discard_segments: 1,
            reserved0: 0,
        };
    }
    p
}

/// Serves `blk` as `/dev/ublkbN` until SIGTERM (or a fatal error). The
/// ublk device is deleted before this returns; the caller flushes and
/// resets `blk`.
pub(crate) fn serve(
    cli: &Cli,
    blk: &mut Blk,
    irq: Option<&pci::UioIrq>,
    block_size: u32,
) -> Result<()> {
    let di = blk.info();
    let depth = cli
        .ublk_depth
        .min(u16::try_from(di.queue_depth).unwrap_or(u16::MAX))
        .max(1);
    let buf_bytes = cli.ublk_buf_kb.clamp(4, 2048) * 1024;
    let mut ctrl = Control::open()?;
    let added = ctrl.add_dev(&DevInfo {
        nr_hw_queues: 1,
        queue_depth: depth,
        max_io_buf_bytes: buf_bytes,
        dev_id: cli.ublk_id.unwrap_or(u32::MAX),
        flags: wire::F_CMD_IOCTL_ENCODE,
        ..DevInfo::default()
    })?;
    let dev_id = added.dev_id;
    info!(
        "ublk device {dev_id} added: queue depth {}, {} KiB per request",
        added.queue_depth,
        added.max_io_buf_bytes / 1024
    );
    let served = (|| {
        ctrl.set_params(dev_id, &params(&di, block_size, buf_bytes))?;
        let mut bufs = Vec::with_capacity(usize::from(depth));
        for _ in 0..depth {
            bufs.push(DmaBuf::new(buf_bytes as usize)?);
        }
        let mut queue = Queue::open(dev_id, 0, depth, cli.ublk_coop)?;
        for (tag, b) in bufs.iter().enumerate() {
            queue.fetch(tag as u16, b.as_ptr().as_ptr() as u64)?;
        }
        queue.submit()?;
        let starter = Control::spawn("ublk-start", move |c| c.start_dev(dev_id))?;
        let poller = AdaptivePoller::new(
            Duration::from_micros(cli.spin_us.unwrap_or(SPIN_US)),
            Duration::from_micros(cli.min_sleep_us),
            Duration::from_micros(cli.max_sleep_us),
        );
        let mut server = Server {
            dev: DeviceSide::new(
                blk,
                irq,
                poller,
                Duration::from_micros(cli.idle_spin_us.unwrap_or(SPIN_US)),
            ),
            q: &mut queue,
            bufs: &bufs,
            info: di,
            dev_id,
            live: usize::from(depth),
            on_device: HashMap::new(),
            backlog: VecDeque::new(),
            events: Vec::new(),
            starter: Some(starter),
            stop: Stop::NotAsked,
            requests: 0,
            errors: 0,
        };
        let r = server::serve(&mut server);
        let device_idle = server.finish();
        // Close the ring and the char device before the buffers go and
        // before DEL_DEV (which waits for the char device to be closed).
        drop(queue);
        if device_idle {
            drop(bufs);
        } else {
            // The device may still write them: never hand them back.
            std::mem::forget(bufs);
        }
        r
    })();
    let deleted = ctrl
        .del_dev(dev_id)
        .map(|()| info!("ublk device {dev_id} deleted"));
    served.and(deleted)
}

/// Where the SIGTERM path is.
enum Stop {
    NotAsked,
    /// STOP_DEV running on its helper thread.
    Stopping(JoinHandle<Result<()>>),
    /// STOP_DEV returned at this time.
    Stopped(Instant),
}

struct Server<'a> {
    dev: DeviceSide<'a>,
    /// The queue's ring and descriptors.
    q: &'a mut Queue,
    /// Each tag's data buffer, by tag.
    bufs: &'a [DmaBuf],
    info: DeviceInfo,
    dev_id: u32,
    /// Tags whose fetch has not come back aborted.
    live: usize,
    /// Device token → (tag, result to commit on success).
    on_device: HashMap<u32, (u16, i32)>,
    /// Validated requests waiting for room on the device.
    backlog: VecDeque<(u16, IoRequest)>,
    events: Vec<Event>,
    starter: Option<JoinHandle<Result<()>>>,
    stop: Stop,
    requests: u64,
    errors: u64,
}

/// One step of the idle spin (nothing on the device): give the vCPU to any
/// thread that wants it. The reader this export serves is often woken on
/// our vCPU (by our own commit), and a pure busy loop then holds its next
/// request off for a whole time slice (measured: QD1 p50 7.9 ms in one
/// boot, 243 us in another, depending on where the scheduler put the
/// reader; 241 us with this yield). Not while requests are on the device:
/// yielding there to a QD32 reader's threads cost throughput (3344 IOPS
/// against 5036-6618 without it, one boot each).
fn spin_pause() {
    std::thread::yield_now();
}

fn errno_of(e: &BlkError) -> i32 {
    match e {
        BlkError::Unsupported(_) | BlkError::DeviceUnsupported(_) => -libc::EOPNOTSUPP,
        BlkError::ReadOnly => -libc::EROFS,
        BlkError::OutOfRange { .. } => -libc::ENOSPC,
        _ => -libc::EIO,
    }
}

impl<'a> Export<'a> for Server<'a> {
    fn device(&mut self) -> &mut DeviceSide<'a> {
        &mut self.dev
    }

    fn control(&mut self) -> Result<()> {
        self.control_threads()?;
        // Runs deferred driver work (COOP_TASKRUN) when flagged.
        self.q.has_completions();
        Ok(())
    }

    fn take_requests(&mut self) -> Result<bool> {
        self.take_tags()
    }

    fn submit_backlog(&mut self) -> Result<bool> {
        self.submit_tags()
    }

    fn complete(&mut self, (t, r): Completion) -> Result<()> {
        let Some((tag, ok)) = self.on_device.remove(&t.raw()) else {
            warn!("completion for unknown token {:#x}", t.raw());
            return Ok(());
        };
        let result = match r {
            Ok(_) => ok,
            Err(e) => {
                warn!("tag {tag}: {e}");
                errno_of(&e)
            }
        };
        self.commit(tag, result)
    }

    /// Commits go out with the next submission of the ring.
    fn flush(&mut self) -> Result<bool> {
        self.q.submit()?;
        Ok(false)
    }

    fn finished(&mut self) -> bool {
        if self.live == 0 && self.on_device.is_empty() && self.backlog.is_empty() {
            return true;
        }
        if let Stop::Stopped(t) = self.stop {
            if t.elapsed() > ABORT_GRACE && self.on_device.is_empty() {
                warn!(
                    "{} tags not aborted {} s after STOP_DEV; closing the queue",
                    self.live,
                    ABORT_GRACE.as_secs()
                );
                return true;
            }
        }
        false
    }

    fn idle(&self) -> bool {
        self.on_device.is_empty()
    }

    /// Blocks in io_uring_enter (a signal ends it).
    fn block(&mut self) -> Result<()> {
        self.q.wait(Duration::from_millis(100))?;
        Ok(())
    }

    fn pause(&mut self) {
        if !self.q.has_completions() {
            spin_pause();
        }
    }

    fn kernel_ready(&mut self) -> bool {
        self.q.has_completions()
    }

    fn wake_on(&self) -> ((RawFd, i16), bool) {
        ((self.q.ring_fd(), libc::POLLIN), true)
    }
}

impl Server<'_> {
    /// Starts STOP_DEV on SIGTERM; reports START_DEV's and STOP_DEV's ends.
    fn control_threads(&mut self) -> Result<()> {
        if signal::stop_requested() && matches!(self.stop, Stop::NotAsked) {
            info!("stop requested: stopping /dev/ublkb{}", self.dev_id);
            let id = self.dev_id;
            self.stop = Stop::Stopping(Control::spawn("ublk-stop", move |c| c.stop_dev(id))?);
        }
        if self.starter.as_ref().is_some_and(JoinHandle::is_finished) {
            if let Some(h) = self.starter.take() {
                match h.join() {
                    Ok(Ok(())) => {
                        info!("serving /dev/ublkb{}", self.dev_id);
                        println!("pvblkd: serving /dev/ublkb{}", self.dev_id);
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(Error::ControlPanicked("START_DEV")),
                }
            }
        }
        if matches!(&self.stop, Stop::Stopping(h) if h.is_finished()) {
            if let Stop::Stopping(h) =
                std::mem::replace(&mut self.stop, Stop::Stopped(Instant::now()))
            {
                match h.join() {
                    Ok(Ok(())) => info!("ublk device {} stopped", self.dev_id),
                    Ok(Err(e)) => warn!("ublk STOP_DEV: {e}"),
                    Err(_) => warn!("ublk STOP_DEV thread panicked"),
                }
            }
        }
        Ok(())
    }

    /// Takes the ring's completions: new requests go to the backlog
    /// (validated), aborted tags are counted out.
    fn take_tags(&mut self) -> Result<bool> {
        self.q.reap(&mut self.events);
        if self.events.is_empty() {
            return Ok(false);
        }
        let capacity = self.info.capacity_sectors;
        for ev in std::mem::take(&mut self.events) {
            match ev {
                Event::Request(tag) => {
                    self.requests += 1;
                    let Some(d) = self.q.desc(tag) else { continue };
                    let buf_bytes = self.bufs.get(usize::from(tag)).map_or(0, DmaBuf::len);
                    match wire::decode(&d, capacity, buf_bytes) {
                        Ok(req) => self.backlog.push_back((tag, req)),
                        Err(e) => {
                            warn!("tag {tag}: {e}");
                            self.commit(tag, e.errno())?;
                        }
                    }
                }
                Event::Aborted(_) => self.live = self.live.saturating_sub(1),
                Event::Failed(tag, e) => {
                    error!(
                        "tag {tag}: ublk command failed: {}",
                        std::io::Error::from_raw_os_error(-e)
                    );
                    self.live = self.live.saturating_sub(1);
                }
            }
        }
        Ok(true)
    }

    fn commit(&mut self, tag: u16, result: i32) -> Result<()> {
        if result < 0 {
            self.errors += 1;
        }
        let addr = self
            .bufs
            .get(usize::from(tag))
            .map_or(0, |b| b.as_ptr().as_ptr() as u64);
        self.q.commit(tag, result, addr)
    }

    /// Puts backlog requests on the device until its queue is full.
    fn submit_tags(&mut self) -> Result<bool> {
        let f = self.info.features;
        let mut any = false;
        while let Some((tag, req)) = self.backlog.pop_front() {
            any = true;
            let Some(buf) = self.bufs.get(usize::from(tag)) else {
                continue;
            };
            let (op, sector, data_len) = match req {
                IoRequest::Read { sector, sectors } => {
                    (Op::Read, sector, sectors as usize * SECTOR_SIZE)
                }
                IoRequest::Write { sector, sectors } => {
                    (Op::Write, sector, sectors as usize * SECTOR_SIZE)
                }
                IoRequest::Flush if !f.flush => {
                    // No volatile cache: nothing to flush.
                    self.commit(tag, 0)?;
                    continue;
                }
                IoRequest::Flush => (Op::Flush, 0, 0),
                IoRequest::Discard { sector, sectors } => (
                    Op::Discard {
                        sectors,
                        secure: false,
                    },
                    sector,
                    0,
                ),
                IoRequest::WriteZeroes {
                    sector,
                    sectors,
                    unmap,
                } => (Op::WriteZeroes { sectors, unmap }, sector, 0),
            };
            let one = [IoBuf::new(buf.as_ptr(), data_len)];
            let buffers: &[IoBuf] = if data_len > 0 { &one } else { &[] };
            let r = Request {
                op,
                sector,
                buffers,
            };
            // SAFETY: the buffer is tag `tag`'s DmaBuf (`data_len` is at most
            // its length: checked by `wire::decode`), which lives until the
            // queue is closed, after the device was reset or idle; the kernel
            // does not touch it while the tag's request is ours (between the
            // fetch completion and our commit), and nothing else in this
            // process does until the token completes or a reset aborts it.
            match unsafe { self.dev.blk.submit(&r) } {
                Ok(tok) => {
                    let ok = i32::try_from(data_len).unwrap_or(i32::MAX);
                    self.on_device.insert(tok.raw(), (tag, ok));
                }
                Err(BlkError::QueueFull) => {
                    self.backlog.push_front((tag, req));
                    break;
                }
                Err(e) => {
                    warn!("submit {op:?} at {sector}: {e}");
                    self.commit(tag, errno_of(&e))?;
                }
            }
        }
        Ok(any)
    }

    /// Takes requests still on the device back (after an error) so their
    /// buffers are not freed under it; logs the totals. False when the
    /// device may still own tag buffers (a reset failed).
    fn finish(&mut self) -> bool {
        let mut idle = true;
        if !self.on_device.is_empty() {
            warn!(
                "{} requests still on the device: resetting it",
                self.on_device.len()
            );
            if let Err(e) = self.dev.blk.reset(&mut |_, _| {}) {
                error!("reset: {e}; leaking the tag buffers");
                idle = false;
            }
            self.on_device.clear();
        }
        info!(
            "served {} ublk requests ({} errors, {} device resets, {} interrupts); poller {:?}; core {:?}",
            self.requests,
            self.errors,
            self.dev.resets,
            self.dev.interrupts,
            self.dev.poller.stats,
            self.dev.blk.stats()
        );
        idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pv_blk::Features;

    fn info(features: Features, max_discard: u32) -> DeviceInfo {
        DeviceInfo {
            capacity_sectors: 65536,
            block_size: 512,
            features,
            queues: 1,
            queue_depth: 256,
            max_segments: 61,
            max_discard_sectors: max_discard,
        }
    }

    #[test]
    fn params_follow_the_device() {
        let f = Features {
            flush: true,
            discard: true,
            write_zeroes: true,
            ..Features::default()
        };
        let p = params(&info(f, 1003), 4096, 256 * 1024);
        assert_eq!(p.types, wire::PARAM_TYPE_BASIC | wire::PARAM_TYPE_DISCARD);
        assert_eq!(p.basic.attrs, wire::attr::VOLATILE_CACHE);
        assert_eq!(p.basic.logical_bs_shift, 12);
        assert_eq!(p.basic.max_sectors, 512);
        assert_eq!(p.basic.dev_sectors, 65536);
        // Whole 4 KiB blocks: 1003 sectors round down to 1000.
        assert_eq!(p.discard.max_discard_sectors, 1000);
        assert_eq!(p.discard.max_write_zeroes_sectors, 1000);
        assert_eq!(p.discard.max_discard_segments, 1);
        assert_eq!(p.discard.discard_granularity, 4096);
    }

    #[test]
    fn read_only_devices_get_no_discard() {
        let f = Features {
            read_only: true,
            discard: true,
            ..Features::default()
        };
        let p = params(&info(f, 0), 512, 128 * 1024);
        assert_eq!(p.types, wire::PARAM_TYPE_BASIC);
        assert_eq!(p.basic.attrs, wire::attr::READ_ONLY);
        assert_eq!(p.basic.logical_bs_shift, 9);
        assert_eq!(p.basic.max_sectors, 256);
    }

    #[test]
    fn errors_map_to_errnos() {
        assert_eq!(errno_of(&BlkError::ReadOnly), -libc::EROFS);
        assert_eq!(errno_of(&BlkError::QueueFull), -libc::EIO);
    }
}
