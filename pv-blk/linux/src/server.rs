//! The serving loop both exports share. An export (NBD: [`crate::nbd::server`],
//! ublk: [`crate::ublk::server`]) is the kernel half: it takes requests from
//! the kernel, turns them into device requests and answers the kernel; the
//! device half (`DeviceSide`: the core, its interrupt, the poller) and the
//! loop (`serve`) that alternates between them are written once here.
//!
//! One turn of the loop: the export's control work (stop requests, helper
//! threads), new requests from the kernel, the backlog onto the device,
//! device completions back to the export, the export's answers out. With
//! work done the loop goes round again at once. Without: when nothing is
//! on the device the export looks at the kernel side for its idle spin and
//! then blocks on it; with requests on the device the loop spins on the
//! used ring within the poller's budget, then sleeps until the device
//! interrupts (through uio, when bound), the export's file descriptor is
//! ready, or the poller's sleep passes.

use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

use log::{error, info};
use pv_blk::virtio::VirtioBlk;
use pv_blk::{BlkError, BlockFrontend, DeviceInfo, Token, SECTOR_SIZE};
use pv_linux::dma::LinuxHal;
use pv_linux::pci::UioIrq;
use pv_linux::poll::AdaptivePoller;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::Transport;

use crate::{Error, Result};

/// The core on the claimed PCI function.
pub type Blk = VirtioBlk<LinuxHal, PciTransport>;

/// Largest discard / write-zeroes part when the device states no limit.
const DEFAULT_MAX_DISCARD_SECTORS: u32 = 1 << 22;

/// Largest discard / write-zeroes request the exports send the device, in
/// 512-byte sectors: the device's limit (or a default when it states
/// none), in whole logical blocks of `block_size`.
pub(crate) fn discard_limit(info: &DeviceInfo, block_size: u32) -> u32 {
    let max = match info.max_discard_sectors {
        0 => DEFAULT_MAX_DISCARD_SECTORS,
        m => m,
    };
    let per_block = (block_size / SECTOR_SIZE as u32).max(1);
    (max / per_block * per_block).max(per_block)
}

/// A completion the core reported: the request's token and its result.
pub(crate) type Completion = (Token, Result<usize, BlkError>);

/// The device half of a serving loop: the core, its interrupt and the
/// poller, with the idle state of the loop.
pub(crate) struct DeviceSide<'a> {
    pub(crate) blk: &'a mut Blk,
    pub(crate) irq: Option<&'a UioIrq>,
    pub(crate) poller: AdaptivePoller,
    /// How long to look at an idle kernel side before blocking on it.
    pub(crate) idle_spin: Duration,
    /// Since when nothing was on the device and no work was found.
    pub(crate) idle_since: Option<Instant>,
    /// Interrupts taken (for the exit log).
    pub(crate) interrupts: u64,
    /// Device resets after a fault (for the exit log).
    pub(crate) resets: u64,
}

impl<'a> DeviceSide<'a> {
    pub(crate) fn new(
        blk: &'a mut Blk,
        irq: Option<&'a UioIrq>,
        poller: AdaptivePoller,
        idle_spin: Duration,
    ) -> Self {
        Self {
            blk,
            irq,
            poller,
            idle_spin,
            idle_since: None,
            interrupts: 0,
            resets: 0,
        }
    }

    /// The core's completions; a device fault resets the device, and the
    /// requests that were on it come back aborted.
    pub(crate) fn reap(&mut self) -> Result<Vec<Completion>> {
        let mut done: Vec<Completion> = Vec::new();
        if let Err(fault) = self.blk.poll_completions(&mut |t, r| done.push((t, r))) {
            error!("device fault: {fault}; resetting the device");
            self.blk
                .reset(&mut |t, r| done.push((t, r)))
                .map_err(Error::Reset)?;
            self.resets += 1;
            info!("device reset done; {} requests aborted", done.len());
        }
        Ok(done)
    }

    /// The sleep both exports take once the poller's spin budget is spent:
    /// until `fd` is ready for its events, or (with `use_irq` and an
    /// interrupt) the device's INTx fires, or `sleep` passes. The interrupt
    /// is asked for only when no completion is already there (then it
    /// returns at once, busy), and its line is lowered after the wait.
    fn sleep(&mut self, fd: (RawFd, i16), use_irq: bool, sleep: Duration) -> Result<()> {
        let Some(irq) = self.irq.filter(|_| use_irq) else {
            let woken = pv_linux::poll::wait_events(&[fd], sleep);
            self.poller.woke(woken);
            return Ok(());
        };
        match self.blk.prepare_wait() {
            Ok(true) => {
                self.poller.busy();
                return Ok(());
            }
            Ok(false) => {}
            // The fault surfaces (and is handled) in the next reap.
            Err(_) => return Ok(()),
        }
        irq.arm()?;
        // The interrupt normally ends the sleep; the poller's backoff still
        // bounds it, because under TCG some INTx wake-ups arrive late
        // (measured: a 20 ms floor here cost most of the run).
        let woken = pv_linux::poll::wait_events(&[fd, (irq.fd(), libc::POLLIN)], sleep);
        if irq.take()?.is_some() {
            self.interrupts += 1;
        }
        // Lower the line (reading the ISR); INTx stays masked until the next
        // arm.
        self.blk.transport_mut().ack_interrupt();
        self.poller.woke(woken);
        Ok(())
    }
}

/// The kernel half of a serving loop: what differs between the exports.
pub(crate) trait Export<'a> {
    /// The device half.
    fn device(&mut self) -> &mut DeviceSide<'a>;
    /// Control work at the start of every turn (a stop request, helper
    /// threads that ended).
    fn control(&mut self) -> Result<()>;
    /// New requests from the kernel onto the backlog; true if any came.
    fn take_requests(&mut self) -> Result<bool>;
    /// Backlog onto the device until its queue is full; true if any moved.
    fn submit_backlog(&mut self) -> Result<bool>;
    /// One device completion.
    fn complete(&mut self, done: Completion) -> Result<()>;
    /// Answers out to the kernel; true if any went.
    fn flush(&mut self) -> Result<bool>;
    /// Everything answered and the kernel side gone: the loop ends.
    fn finished(&mut self) -> bool;
    /// Nothing on the device (and nothing waiting to go to the kernel).
    fn idle(&self) -> bool;
    /// Idle past the idle spin: block on the kernel side (bounded).
    fn block(&mut self) -> Result<()>;
    /// Idle within the idle spin: one pause.
    fn pause(&mut self);
    /// Kernel-side work seen while spinning on the device.
    fn kernel_ready(&mut self) -> bool {
        false
    }
    /// What a sleep on the device also wakes for (fd and `poll` events),
    /// and whether the device's interrupt may end it.
    fn wake_on(&self) -> ((RawFd, i16), bool);
}

/// Serves until the export is [`finished`](Export::finished) (or a fatal
/// error).
pub(crate) fn serve<'a, E: Export<'a>>(e: &mut E) -> Result<()> {
    loop {
        e.control()?;
        let mut work = e.take_requests()?;
        work |= e.submit_backlog()?;
        work |= reap(e)?;
        work |= e.flush()?;
        if e.finished() {
            return Ok(());
        }
        if work {
            let dev = e.device();
            dev.poller.busy();
            dev.idle_since = None;
        } else if e.idle() {
            // Idle: keep looking at the kernel side for `idle_spin` (the
            // next request of a synchronous reader follows its answer
            // closely, and a vCPU that halts is slow to wake under TCG),
            // then block on it.
            let dev = e.device();
            let since = *dev.idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= dev.idle_spin {
                e.block()?;
            } else {
                e.pause();
            }
        } else {
            wait_for_device(e)?;
        }
    }
}

/// Device completions to the export; true if any.
fn reap<'a, E: Export<'a>>(e: &mut E) -> Result<bool> {
    let done = e.device().reap()?;
    let any = !done.is_empty();
    for d in done {
        e.complete(d)?;
    }
    Ok(any)
}

/// Requests on the device and nothing to do: spin on the used ring alone
/// (no system calls, which cost tens of microseconds each under TCG) until
/// a completion or the budget's end, then sleep on the device.
fn wait_for_device<'a, E: Export<'a>>(e: &mut E) -> Result<()> {
    let sleep = loop {
        match e.device().poller.spin_or_sleep() {
            None => {
                if reap(e)? || e.kernel_ready() {
                    e.device().poller.busy();
                    return Ok(());
                }
            }
            Some(s) => break s,
        }
    };
    let (fd, use_irq) = e.wake_on();
    e.device().sleep(fd, use_irq, sleep)
}
