//! Adaptive polling with a bounded CPU budget.
//!
//! A userspace driver without interrupts learns about completions by
//! looking. [`AdaptivePoller`] spins while work keeps arriving, and once a
//! look finds nothing for `spin` it sleeps, doubling the sleep up to
//! `max_sleep`; any work resets it to spinning. The CPU it burns while idle
//! is bounded by `spin` per burst of work plus one short wake-up per
//! `max_sleep`.
//!
//! Sleeping is `poll(2)` on the caller's file descriptors (e.g. the socket
//! new requests arrive on, or a `uio` device's interrupt fd, see
//! [`crate::pci::UioIrq`]) with the sleep as timeout, so a readable fd ends
//! the sleep early. Callers that must arm an interrupt before sleeping use
//! [`AdaptivePoller::spin_or_sleep`] and [`AdaptivePoller::woke`].

use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

/// Spin-then-sleep policy; see the module docs.
#[derive(Debug, Clone)]
pub struct AdaptivePoller {
    spin: Duration,
    min_sleep: Duration,
    max_sleep: Duration,
    idle_since: Option<Instant>,
    sleep: Duration,
    /// Counters for logs.
    pub stats: PollStats,
}

/// What the poller did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Calls to [`AdaptivePoller::idle`] that spun.
    pub spins: u64,
    /// Calls that slept.
    pub sleeps: u64,
    /// Sleeps ended early by a readable fd.
    pub woken: u64,
}

impl AdaptivePoller {
    /// Spin for `spin` after the last work, then sleep from `min_sleep`
    /// doubling to `max_sleep`.
    pub fn new(spin: Duration, min_sleep: Duration, max_sleep: Duration) -> Self {
        Self {
            spin,
            min_sleep: min_sleep.max(Duration::from_micros(1)),
            max_sleep: max_sleep.max(min_sleep),
            idle_since: None,
            sleep: min_sleep,
            stats: PollStats::default(),
        }
    }

    /// Record that the last look found work: spin again next time.
    pub fn busy(&mut self) {
        self.idle_since = None;
        self.sleep = self.min_sleep;
    }

    /// The last look found nothing: spin (return at once) while within the
    /// spin budget, else sleep until one of `fds` is readable or the current
    /// sleep passes. Returns true if an fd became readable.
    pub fn idle(&mut self, fds: &[RawFd]) -> bool {
        let Some(sleep) = self.spin_or_sleep() else {
            return false;
        };
        let woken = wait_readable(fds, sleep);
        self.woke(woken);
        woken
    }

    /// The first half of [`AdaptivePoller::idle`], for callers that sleep
    /// their own way (e.g. arm an interrupt first): `None` while within the
    /// spin budget (after one spin-loop hint), else the time to sleep now.
    /// Report the outcome of the sleep with [`AdaptivePoller::woke`].
    pub fn spin_or_sleep(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let since = *self.idle_since.get_or_insert(now);
        if now.duration_since(since) < self.spin {
            self.stats.spins += 1;
            std::hint::spin_loop();
            return None;
        }
        self.stats.sleeps += 1;
        Some(self.sleep)
    }

    /// After sleeping on [`AdaptivePoller::spin_or_sleep`]'s advice: `woken`
    /// if an event (fd, interrupt) ended the sleep early.
    pub fn woke(&mut self, woken: bool) {
        if woken {
            self.stats.woken += 1;
            self.busy();
        } else {
            self.sleep = (self.sleep * 2).min(self.max_sleep);
        }
    }

    /// Block (no spinning) until an fd is readable or `timeout` passes.
    pub fn wait(&mut self, fds: &[RawFd], timeout: Duration) -> bool {
        self.stats.sleeps += 1;
        wait_readable(fds, timeout)
    }
}

/// `ppoll` for readability with a microsecond timeout; true if any fd is
/// readable (or hung up). Interrupted by signals (returns false).
pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> bool {
    let v: Vec<(RawFd, i16)> = fds.iter().map(|&fd| (fd, libc::POLLIN)).collect();
    wait_events(&v, timeout)
}

/// `ppoll` for the given `(fd, events)` pairs (`libc::POLLIN`,
/// `libc::POLLOUT`, ...) with a microsecond timeout; true if any is ready
/// (or hung up). Interrupted by signals (returns false).
pub fn wait_events(fds: &[(RawFd, i16)], timeout: Duration) -> bool {
    wait_ready(fds, timeout) != 0
}

/// Like [`wait_events`], but says which: bit `i` of the result is set if
/// `fds[i]` is ready (or hung up); 0 on timeout or signal. Only the first
/// 32 descriptors are reported.
pub fn wait_ready(fds: &[(RawFd, i16)], timeout: Duration) -> u32 {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `pfds` is a live array of `pfds.len()` pollfd structs and `ts`
    // a valid timespec, both outliving the call; a null sigmask keeps ours.
    let n = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if n <= 0 {
        return 0;
    }
    pfds.iter()
        .take(32)
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .fold(0, |m, (i, _)| m | (1 << i))
}

/// Timed sleeps (the poller's) end when asked, not up to the default
/// 50 µs timer slack later: sets this thread's slack to 1 ns.
pub fn set_min_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes integer arguments only; no memory is
    // passed, and it changes only this thread's timer slack.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        log::warn!("PR_SET_TIMERSLACK: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_then_sleeps_with_backoff() {
        let mut p = AdaptivePoller::new(
            Duration::ZERO,
            Duration::from_micros(10),
            Duration::from_micros(40),
        );
        for _ in 0..4 {
            assert!(!p.idle(&[]));
        }
        assert_eq!(p.sleep, Duration::from_micros(40));
        assert_eq!(p.stats.sleeps, 4);
        p.busy();
        assert_eq!(p.sleep, Duration::from_micros(10));
    }

    #[test]
    fn readable_fd_ends_the_sleep() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: writes one byte from a live buffer to our pipe.
        assert_eq!(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) }, 1);
        // A sleep of a day: only the readable fd can end it. The idle call
        // runs on its own thread so that a sleep the fd does not end fails
        // the test (after a generous wait) rather than hanging it.
        let day = Duration::from_secs(24 * 3600);
        let mut p = AdaptivePoller::new(Duration::ZERO, day, 2 * day);
        let read_end = fds[0];
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let woken = p.idle(&[read_end]);
            let _ = tx.send((woken, p));
        });
        let (woken, p) = rx
            .recv_timeout(Duration::from_secs(600))
            .expect("a readable fd did not end a day-long sleep");
        assert!(woken);
        assert_eq!((p.stats.sleeps, p.stats.woken), (1, 1));
        // Woken, not timed out: the next sleep is the shortest again, not
        // doubled.
        assert_eq!(p.sleep, day);
        // Which descriptor: the write end is never readable, the read end is.
        assert_eq!(
            wait_ready(
                &[(fds[1], libc::POLLIN), (fds[0], libc::POLLIN)],
                Duration::from_secs(5)
            ),
            0b10
        );
        assert_eq!(wait_ready(&[(fds[1], libc::POLLIN)], Duration::ZERO), 0);
        for fd in fds {
            // SAFETY: closes descriptors this test owns.
            unsafe { libc::close(fd) };
        }
    }
}
