//! Liveness of the daemon's threads, for systemd's watchdog
//! ([`crate::daemon`] pings `WATCHDOG=1` only while no thread here is
//! stalled).
//!
//! A device thread (a disk's server thread, each queue worker) holds a
//! [`Beat`] and marks itself busy while it works ([`Beat::busy`]); it is
//! idle while it waits for work (a kick, a connection), however long that
//! is. A thread that has been busy longer than the stall limit is wedged:
//! blocked on a dead device, a lock that is never released, a loop that
//! never ends. The daemon cannot unwedge it, so it stops the watchdog pings
//! and lets systemd restart it (`Restart=on-failure`); the crash-safe
//! completion order of the disks ([`crate::blk::io`]) makes a restart lose
//! nothing acknowledged.
//!
//! Marking costs two clock reads and two atomic stores per busy period
//! (per queue kick, not per request).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// One thread's liveness: whether and since when it is busy.
#[derive(Debug)]
pub struct Beat {
    name: String,
    /// Milliseconds since [`epoch`] plus one when the current busy period
    /// began; 0 while idle.
    busy_since: AtomicU64,
}

/// Marks a [`Beat`] busy until dropped.
#[derive(Debug)]
pub struct Busy<'a> {
    beat: &'a Beat,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.beat.busy_since.store(0, Ordering::Release);
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

impl Beat {
    /// The thread's name as logs and the watchdog status show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Marks the thread busy from now until the guard drops.
    pub fn busy(&self) -> Busy<'_> {
        self.busy_since.store(now_ms(), Ordering::Release);
        Busy { beat: self }
    }

    /// How long the thread has been busy, if it is.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }
}

/// A thread found busy for longer than the stall limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub thread: String,
    pub busy_for: Duration,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "thread '{}' busy for {} s",
            self.thread,
            self.busy_for.as_secs()
        )
    }
}

/// The set of threads the watchdog watches. A beat leaves the set when its
/// last holder drops it (a connection's queue workers end with it).
#[derive(Debug, Default)]
pub struct Liveness {
    beats: Mutex<Vec<Weak<Beat>>>,
}

impl Liveness {
    /// The daemon's set (one daemon per process).
    pub fn global() -> &'static Liveness {
        static L: OnceLock<Liveness> = OnceLock::new();
        L.get_or_init(Liveness::default)
    }

    /// Adds a thread to the set; it starts idle.
    pub fn register(&self, name: impl Into<String>) -> Arc<Beat> {
        let beat = Arc::new(Beat {
            name: name.into(),
            busy_since: AtomicU64::new(0),
        });
        if let Ok(mut beats) = self.beats.lock() {
            beats.retain(|b| b.strong_count() > 0);
            beats.push(Arc::downgrade(&beat));
        }
        beat
    }

    /// The thread busy longest, if it has been busy longer than `limit`.
    /// A poisoned set counts as a stall: the watchdog must not ping over
    /// a state it cannot read.
    pub fn stalled(&self, limit: Duration) -> Option<Stall> {
        let Ok(mut beats) = self.beats.lock() else {
            return Some(Stall {
                thread: "liveness set (poisoned)".into(),
                busy_for: Duration::ZERO,
            });
        };
        beats.retain(|b| b.strong_count() > 0);
        beats
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|b| b.busy_for().map(|d| (b, d)))
            .filter(|(_, d)| *d > limit)
            .max_by_key(|(_, d)| *d)
            .map(|(b, d)| Stall {
                thread: b.name.clone(),
                busy_for: d,
            })
    }

    /// Threads in the set.
    pub fn len(&self) -> usize {
        self.beats
            .lock()
            .map_or(0, |b| b.iter().filter(|w| w.strong_count() > 0).count())
    }

    /// No thread in the set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_busy_past_the_limit_is_a_stall_an_idle_one_never() {
        let l = Liveness::default();
        let a = l.register("disk-a");
        let b = l.register("disk-b queue 0");
        assert_eq!(l.len(), 2);
        assert_eq!(l.stalled(Duration::ZERO), None, "idle threads never stall");
        let busy = b.busy();
        // Busy since before this instant: past a zero limit once a
        // millisecond has passed.
        std::thread::sleep(Duration::from_millis(5));
        let s = l.stalled(Duration::ZERO).expect("b is busy past 0");
        assert_eq!(s.thread, "disk-b queue 0");
        assert!(
            l.stalled(Duration::from_secs(3600)).is_none(),
            "within the limit"
        );
        drop(busy);
        assert_eq!(l.stalled(Duration::ZERO), None, "idle again");
        drop(a);
        assert_eq!(l.len(), 1, "a dropped beat leaves the set");
    }

    #[test]
    fn the_longest_busy_thread_is_named() {
        let l = Liveness::default();
        let old = l.register("old");
        let new = l.register("new");
        let _o = old.busy();
        std::thread::sleep(Duration::from_millis(5));
        let _n = new.busy();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            l.stalled(Duration::ZERO).map(|s| s.thread).as_deref(),
            Some("old")
        );
    }
}
