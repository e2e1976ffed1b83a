//! The loop of `pvnetd` moving frames between the device and the TAP
//! (`Pump`), with its counters; the crate docs say how it polls and
//! sleeps.

use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use pv_linux::dma::LinuxHal;
use pv_linux::pci::UioIrq;
use pv_linux::poll::{wait_ready, AdaptivePoller};
use pv_linux::signal;
use pv_net::frontend::max_frame;
use pv_net::tap_hdr::{rx_hdr_of, tx_csum_of};
use pv_net::virtio::{VirtioNet, HDR_LEN};
use pv_net::{NetError, NetFrontend};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{InterruptStatus, Transport};

use crate::tap::Tap;
use crate::{Error, Result};

/// Sleeps at least this long count as long in [`Wakeups`].
const LONG_SLEEP: Duration = Duration::from_micros(500);

/// How often the device's link state is read (a config-space read).
const LINK_CHECK: Duration = Duration::from_millis(200);

/// Data-path counters of the TAP side (the core counts the device side).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    /// Frames written to the TAP.
    pub(crate) to_tap: u64,
    /// Frames the TAP refused (logged once per 1000).
    pub(crate) tap_write_errors: u64,
    /// Frames read from the TAP and queued to the device.
    pub(crate) from_tap: u64,
    /// Frames read from the TAP and not sent (bad header, too long).
    pub(crate) tap_refused: u64,
    /// INTx interrupts taken.
    pub(crate) interrupts: u64,
}

/// How the INTx sleeps ended (`--irq intx`), for the exit log: a sleep
/// that ran to its timeout although work was already there when it ended
/// is a late or lost wake-up.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Wakeups {
    /// Sleeps ended by the uio fd (an INTx was taken).
    irq: u64,
    /// Sleeps ended by the TAP only.
    tap: u64,
    /// Sleeps that ran to their timeout.
    timeout: u64,
    /// Of those, sleeps of at least `LONG_SLEEP`.
    timeout_long: u64,
    /// Of those, the armed queue already had completions when the sleep
    /// ended (the device did not interrupt, or the interrupt did not get
    /// through).
    timeout_ring: u64,
    /// Of those, the sleep was at least `LONG_SLEEP` long (a completion
    /// that landed in the last microseconds of a short sleep is a race
    /// with the timeout, not a lost interrupt; one found after a long
    /// sleep most likely waited for it).
    timeout_ring_long: u64,
    /// Timed-out sleeps after which the ISR had the queue bit set (the
    /// device raised INTx; a few microseconds later than `timeout_ring`).
    timeout_isr: u64,
    /// Timed-out sleeps after which the TAP had a frame.
    timeout_tap: u64,
    /// Sleeps not started because the re-check after arming found work.
    recheck: u64,
    /// `--probe-slice-us`: completions seen at the end of a slice with no
    /// interrupt yet; of those, the interrupt (or the TAP) came a whole
    /// slice or more later; the longest such wait.
    probe_seen: u64,
    probe_late_slice: u64,
    probe_late_max_us: u64,
}

/// The loop moving frames between the device and the TAP.
pub(crate) struct Pump<'a> {
    nic: &'a mut VirtioNet<LinuxHal, PciTransport>,
    tap: &'a Tap,
    pub(crate) poller: AdaptivePoller,
    /// The device's INTx, when bound to uio (see the module docs).
    pub(crate) irq: Option<&'a UioIrq>,
    /// With INTx: read the TAP and yield every this many idle turns.
    pub(crate) tap_every: u32,
    /// Turns since the last one that moved a frame (or since a sleep).
    idle_turns: u32,
    /// Warm phase length and cold-phase sleep (see the module docs).
    pub(crate) warm: Duration,
    pub(crate) cold_sleep: Duration,
    budget: usize,
    link: bool,
    last_link_check: Instant,
    /// One frame read from the TAP (header included).
    buf: Vec<u8>,
    pub(crate) counters: Counters,
    pub(crate) wakeups: Wakeups,
    /// `--probe-slice-us`.
    pub(crate) probe_slice: Option<Duration>,
    /// Periodic counter log (`--stats-every-s`).
    pub(crate) stats_every: Option<Duration>,
    last_stats: Instant,
}

impl<'a> Pump<'a> {
    pub(crate) fn new(
        nic: &'a mut VirtioNet<LinuxHal, PciTransport>,
        tap: &'a Tap,
        poller: AdaptivePoller,
        budget: usize,
        link: bool,
    ) -> Self {
        Self {
            nic,
            tap,
            poller,
            irq: None,
            tap_every: 1,
            idle_turns: 0,
            warm: Duration::from_millis(50),
            cold_sleep: Duration::from_millis(1),
            budget: budget.max(1),
            link,
            last_link_check: Instant::now(),
            // The largest frame the TAP can hand over with no GSO is
            // bounded by its MTU; 64 KiB more than covers any MTU we set,
            // so a read is never truncated.
            buf: vec![0u8; HDR_LEN + 65536],
            counters: Counters::default(),
            wakeups: Wakeups::default(),
            stats_every: None,
            probe_slice: None,
            last_stats: Instant::now(),
        }
    }

    pub(crate) fn run(&mut self) -> Result<()> {
        let fd = self.tap.raw_fd();
        let mut last_work = Instant::now();
        while !signal::stop_requested() {
            // The TAP is read on every turn without INTx, and on every
            // `tap_every`-th idle turn with it (a sleep ends in a turn that
            // reads it: the TAP is in the `ppoll`).
            let check_tap = self.irq.is_none() || self.idle_turns.is_multiple_of(self.tap_every);
            let work = match self.turn(check_tap) {
                Ok(w) => w,
                Err(e) => {
                    self.recover(e)?;
                    true
                }
            };
            if work {
                self.idle_turns = 0;
            } else {
                self.idle_turns = self.idle_turns.wrapping_add(1);
            }
            if work {
                self.poller.busy();
                last_work = Instant::now();
            } else if let Some(irq) = self.irq {
                self.idle_with_irq(irq, fd)?;
            } else if last_work.elapsed() < self.warm {
                // SAFETY: sched_yield takes no arguments and only lets
                // other runnable tasks of this guest go first.
                unsafe { libc::sched_yield() };
                self.poller.idle(&[fd]);
            } else {
                self.poller.wait(&[fd], self.cold_sleep);
            }
        }
        info!("stop requested");
        Ok(())
    }

    /// Nothing moved: spin (yielding) within the budget, else arm the
    /// device's interrupt, re-check, and sleep until it fires, the TAP has
    /// a frame, or the timeout passes; see the module docs.
    fn idle_with_irq(&mut self, irq: &UioIrq, tap_fd: RawFd) -> Result<()> {
        let Some(timeout) = self.poller.spin_or_sleep() else {
            if self.idle_turns.is_multiple_of(self.tap_every) {
                // SAFETY: sched_yield takes no arguments and only lets
                // other runnable tasks of this guest go first.
                unsafe { libc::sched_yield() };
            }
            return Ok(());
        };
        // Transmit completions matter only when they are what we wait for.
        let tx_blocked = self.nic.tx_space() == 0;
        match self.nic.enable_interrupts_on(true, tx_blocked) {
            Ok(false) => {}
            Ok(true) => {
                // Work arrived between the last look and arming: serve it.
                self.nic.disable_interrupts();
                self.wakeups.recheck += 1;
                self.poller.busy();
                return Ok(());
            }
            // A device fault: the next turn reports it and recovers.
            Err(_) => return Ok(()),
        }
        irq.arm()?;
        let irq_ev = (irq.fd(), libc::POLLIN);
        let tap_ev = (tap_fd, libc::POLLIN);
        let evs: &[(RawFd, i16)] = if tx_blocked {
            &[irq_ev]
        } else {
            &[irq_ev, tap_ev]
        };
        let ready = match self.probe_slice {
            None => wait_ready(evs, timeout),
            Some(slice) => self.probe_sleep(evs, timeout, slice, tx_blocked),
        };
        let woken = ready != 0;
        // First thing after a timeout, before any system call or device
        // access widens the window: was a completion already published?
        let ring_at_timeout = !woken && self.nic.completions_pending(true, tx_blocked);
        if irq.take()?.is_some() {
            self.counters.interrupts += 1;
        }
        if !woken {
            // Was the work already there? (Re-arming re-checks the ring.)
            self.wakeups.timeout += 1;
            if timeout >= LONG_SLEEP {
                self.wakeups.timeout_long += 1;
            }
            if ring_at_timeout {
                self.wakeups.timeout_ring += 1;
                if timeout >= LONG_SLEEP {
                    self.wakeups.timeout_ring_long += 1;
                }
            }
            if !tx_blocked && wait_ready(&[tap_ev], Duration::ZERO) != 0 {
                self.wakeups.timeout_tap += 1;
            }
        } else if ready & 1 != 0 {
            self.wakeups.irq += 1;
        } else {
            self.wakeups.tap += 1;
        }
        // Lower the line (the ISR read); INTx stays masked until the next
        // arm, and the device is asked not to interrupt while we poll.
        let isr = self.nic.transport_mut().ack_interrupt();
        if !woken && isr.contains(InterruptStatus::QUEUE_INTERRUPT) {
            self.wakeups.timeout_isr += 1;
        }
        self.nic.disable_interrupts();
        self.poller.woke(woken);
        // The next turn reads the TAP (it may be what woke us).
        self.idle_turns = 0;
        Ok(())
    }

    /// `--probe-slice-us` (diagnostics only: it delays service): sleep in
    /// slices, peeking at the armed rings between them, and time how long
    /// an interrupt takes to arrive once a completion is visible.
    fn probe_sleep(
        &mut self,
        evs: &[(RawFd, i16)],
        timeout: Duration,
        slice: Duration,
        tx_blocked: bool,
    ) -> u32 {
        let deadline = Instant::now() + timeout;
        let mut seen: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break 0;
            }
            let ready = wait_ready(evs, slice.min(deadline - now));
            if ready != 0 {
                if let Some(t) = seen {
                    let late = t.elapsed();
                    self.wakeups.probe_late_max_us =
                        self.wakeups.probe_late_max_us.max(late.as_micros() as u64);
                    if late >= slice {
                        self.wakeups.probe_late_slice += 1;
                    }
                }
                break ready;
            }
            if seen.is_none() && self.nic.completions_pending(true, tx_blocked) {
                seen = Some(Instant::now());
                self.wakeups.probe_seen += 1;
            }
        }
    }

    /// A device fault stopped the core: reset and carry on, or give up.
    fn recover(&mut self, e: NetError) -> Result<()> {
        if self.nic.fault().is_none() {
            // Not a device fault: a bug in how we drive the core.
            return Err(Error::Core(e));
        }
        error!("device fault: {e}; resetting the device");
        self.nic.reset().map_err(Error::Reset)?;
        self.nic.disable_interrupts();
        info!("device reset done");
        Ok(())
    }

    /// One pass both ways (the TAP side only if `check_tap`); true if any
    /// frame moved.
    fn turn(&mut self, check_tap: bool) -> Result<bool, NetError> {
        let tap = self.tap;
        let c = &mut self.counters;
        let rx = self.nic.poll_rx(
            self.budget,
            &mut |f| match tap.write(&rx_hdr_of(f.csum), f.data) {
                Ok(()) => c.to_tap += 1,
                Err(e) => {
                    if c.tap_write_errors.is_multiple_of(1000) {
                        warn!("{e} (frame of {} bytes dropped)", f.data.len());
                    }
                    c.tap_write_errors += 1;
                }
            },
        )?;
        let reclaimed = self.nic.poll_tx()?;
        let mut tx = 0;
        let maxf = max_frame(self.nic.info().mtu);
        while check_tap && tx < self.budget && self.nic.tx_space() > 0 {
            let n = match self.tap.read(&mut self.buf) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    // The TAP is ours and non-blocking: a read error other
                    // than "nothing now" means the interface is gone.
                    error!("{e}");
                    signal::request_stop();
                    break;
                }
            };
            tx += 1;
            let pkt = &self.buf[..n];
            let (csum, frame) = match tx_csum_of(pkt) {
                Ok(r) => r,
                Err(why) => {
                    self.counters.tap_refused += 1;
                    debug!("frame from the TAP refused: {why:?}");
                    continue;
                }
            };
            if frame.len() > maxf {
                self.counters.tap_refused += 1;
                debug!("frame of {} bytes from the TAP over the MTU", frame.len());
                continue;
            }
            match self.nic.queue_tx(frame, csum) {
                Ok(()) => self.counters.from_tap += 1,
                Err(
                    e @ (NetError::FrameTooShort { .. }
                    | NetError::FrameTooLong { .. }
                    | NetError::BadChecksumRequest),
                ) => {
                    self.counters.tap_refused += 1;
                    debug!("frame from the TAP refused: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        if tx > 0 {
            self.nic.flush_tx()?;
        }
        if self.last_link_check.elapsed() >= LINK_CHECK {
            self.last_link_check = Instant::now();
            if self
                .stats_every
                .is_some_and(|every| self.last_stats.elapsed() >= every)
            {
                self.last_stats = self.last_link_check;
                info!(
                    "stats: {} interrupts, {:?}, wake-ups {:?}",
                    self.counters.interrupts, self.poller.stats, self.wakeups
                );
            }
            let link = self.nic.link_up();
            if link != self.link {
                self.link = link;
                info!("link {}", if link { "up" } else { "down" });
                if let Err(e) = self.tap.set_carrier(link) {
                    warn!("{e}");
                }
            }
        }
        Ok(rx > 0 || reclaimed > 0 || tx > 0)
    }
}
