//! Asynchronous execution of block requests: a bounded per-disk I/O thread
//! pool, and the per-queue reorder window that publishes completions to
//! the used ring in the order the requests were taken off the available
//! ring.
//!
//! # Why in-order publication
//!
//! Requests of one queue execute concurrently (a slow FLUSH or an uncached
//! read no longer holds up the requests behind it from *executing*), but a
//! request's completion becomes visible to the driver only once every
//! request taken before it on the same queue has completed. That is what
//! keeps the backend crash safe without `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`
//! (which rust-vmm's vhost-user-backend 0.24 does not implement): when the
//! connection breaks, QEMU 7.2 sets the queue's `last_avail_idx` back to
//! its used index and resubmits every request after it. With in-order
//! publication the used index is exactly "the requests before it are all
//! done and none after it is visible", so the resubmission redoes the
//! unfinished requests and nothing the driver saw completed. Out-of-order
//! publication would make QEMU resubmit a completed request (answered
//! twice) and skip an unfinished one (lost).
//!
//! The price: a completion that finished early waits in the window for
//! the slowest request ahead of it (head-of-line blocking of the
//! *notification*, not of the work). The driver sees a read that was
//! queued behind a 50 ms flush complete with the flush, not before; what
//! the window buys is that N slow requests cost the slowest one, not the
//! sum. Queues are independent: a slow request on one queue never delays
//! another queue (Linux uses one queue per vCPU).
//!
//! # Modes ([`IoMode`])
//!
//! - `sync`: the queue worker executes each request itself (the behaviour
//!   before the pool existed; a slow request stalls its queue).
//! - `pool`: every disk request is handed to the disk's I/O threads.
//! - `hybrid` (default, chosen by measurement: see docs/BENCHMARKS.md):
//!   reads and writes are first tried in the queue worker with
//!   `RWF_NOWAIT` (served from the page cache without blocking: the
//!   common tmpfs and hot-cache case costs no thread hand-off); a request
//!   that would block, and every FLUSH, discard and write-zeroes, goes to
//!   the pool.
//!
//! # Quiescing
//!
//! Every request taken off a ring is counted as running in its window until
//! it finishes. GET_VRING_BASE (the driver stopping a queue) waits until the
//! queue's window is empty, so the base returned covers only published
//! requests. A connection that breaks (or that the backend resets after a
//! panic) first *closes* its windows, so no completion is published into a
//! ring QEMU is already rewinding; the daemon then waits for the pool to
//! finish the closed windows' requests before it accepts the next
//! connection, so a stale write can never land after a resubmitted newer
//! one.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::error;

use super::metrics::DiskMetrics;

/// How a disk executes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// In the queue worker, one at a time.
    Sync,
    /// Every disk request on the I/O pool.
    Pool,
    /// Non-blocking attempt in the worker, the pool when it would block.
    #[default]
    Hybrid,
}

impl IoMode {
    /// Parses `sync`, `pool` or `hybrid`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sync" => Some(Self::Sync),
            "pool" => Some(Self::Pool),
            "hybrid" => Some(Self::Hybrid),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Pool => "pool",
            Self::Hybrid => "hybrid",
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it:
/// every state guarded here stays consistent between statements, and a
/// panic is turned into a device reset anyway.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug)]
struct Slot {
    head: u16,
    used: Option<u32>,
}

/// The reorder window of one queue (see the module docs).
#[derive(Debug, Default)]
pub struct Window {
    state: Mutex<WindowState>,
    idle: Condvar,
}

/// A window's state, reached through [`Window::lock`].
#[derive(Debug, Default)]
pub struct WindowState {
    /// Sequence number of `slots[0]`.
    base: u64,
    /// Requests taken off the ring and not yet published, in ring order.
    slots: VecDeque<Slot>,
    /// Requests taken and not yet finished.
    running: usize,
    /// Set when the connection is going away: nothing is published any
    /// more (QEMU rewinds the ring to the used index and resubmits).
    closed: bool,
}

impl Window {
    pub fn lock(&self) -> MutexGuard<'_, WindowState> {
        lock(&self.state)
    }

    /// Records that `seq` finished with used length `used` and publishes
    /// every leading finished request through `emit(head, used)` (unless
    /// the window is closed). Returns how many were published.
    pub fn complete(&self, seq: u64, used: u32, emit: impl FnMut(u16, u32)) -> usize {
        let mut w = self.lock();
        w.finish(seq, used);
        let n = w.publish(emit);
        if w.running == 0 {
            self.idle.notify_all();
        }
        n
    }

    /// Marks the window closed: nothing more is published.
    pub fn close(&self) {
        self.lock().closed = true;
    }

    /// Waits until no request of this window is running. Logs (and keeps
    /// waiting) every `report` interval: a request stuck in the kernel
    /// cannot be abandoned without risking a stale write landing later.
    pub fn wait_idle(&self, what: &str, report: Duration) {
        let mut w = self.lock();
        while w.running > 0 {
            let (g, t) = self
                .idle
                .wait_timeout(w, report)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            w = g;
            if t.timed_out() && w.running > 0 {
                error!(
                    "{what}: still waiting for {} request(s) to finish",
                    w.running
                );
            }
        }
    }
}

impl Window {
    /// [`Window::wait_idle`] that gives up at `deadline`: returns whether
    /// the window is idle (false: requests were still running).
    pub fn wait_idle_until(&self, what: &str, report: Duration, deadline: Instant) -> bool {
        let mut w = self.lock();
        let mut next_report = Instant::now() + report;
        while w.running > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            if now >= next_report {
                error!(
                    "{what}: still waiting for {} request(s) to finish",
                    w.running
                );
                next_report = now + report;
            }
            let wait = deadline.min(next_report).saturating_duration_since(now);
            w = self
                .idle
                .wait_timeout(w, wait)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl WindowState {
    /// Takes a request with descriptor head `head`; returns its sequence
    /// number. Must be called in ring order (the queue worker holds the
    /// window lock across the pop and this call).
    pub fn push(&mut self, head: u16) -> u64 {
        let seq = self.base + self.slots.len() as u64;
        self.slots.push_back(Slot { head, used: None });
        self.running += 1;
        seq
    }

    /// Records a finished request. A sequence number outside the window is
    /// ignored (it cannot happen: only `push` hands them out).
    pub fn finish(&mut self, seq: u64, used: u32) {
        let Some(i) = seq.checked_sub(self.base) else {
            return;
        };
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| self.slots.get_mut(i)) {
            if slot.used.is_none() {
                slot.used = Some(used);
                self.running = self.running.saturating_sub(1);
            }
        }
    }

    /// Publishes the finished prefix, in order.
    pub fn publish(&mut self, mut emit: impl FnMut(u16, u32)) -> usize {
        if self.closed {
            return 0;
        }
        let mut n = 0;
        while let Some(used) = self.slots.front().and_then(|s| s.used) {
            if let Some(s) = self.slots.pop_front() {
                emit(s.head, used);
            }
            self.base += 1;
            n += 1;
        }
        n
    }

    pub fn closed(&self) -> bool {
        self.closed
    }

    pub fn running(&self) -> usize {
        self.running
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct PoolState {
    jobs: VecDeque<Job>,
    stop: bool,
}

struct PoolInner {
    state: Mutex<PoolState>,
    work: Condvar,
}

/// A disk's I/O threads. The number of queued jobs is bounded by the rings:
/// each job is one request taken off a ring, and a ring holds at most
/// `queue_size` of them.
pub struct IoPool {
    inner: Arc<PoolInner>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for IoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoPool")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl IoPool {
    /// Starts `threads` named threads (`io-NAME-i`); 0 makes a pool that
    /// runs every job in the submitter's thread.
    pub fn new(name: &str, threads: usize, metrics: Arc<DiskMetrics>) -> std::io::Result<Self> {
        let inner = Arc::new(PoolInner {
            state: Mutex::new(PoolState::default()),
            work: Condvar::new(),
        });
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let inner = inner.clone();
            let metrics = metrics.clone();
            // Jobs reset their own device; a panic outside a job (a bug
            // of the pool) ends only this thread.
            let thread = format!("io-{name}-{i}");
            let beat = crate::liveness::Liveness::global().register(thread.clone());
            let h = crate::worker::spawn(thread, move || worker(&inner, &metrics, &beat))?;
            handles.push(h);
        }
        Ok(Self {
            inner,
            threads: handles,
        })
    }

    /// Runs `job` on a pool thread (in this thread when the pool has none
    /// or is stopping).
    pub fn submit(&self, job: Job) {
        if self.threads.is_empty() {
            job();
            return;
        }
        let mut s = lock(&self.inner.state);
        if s.stop {
            drop(s);
            job();
            return;
        }
        s.jobs.push_back(job);
        drop(s);
        self.inner.work.notify_one();
    }
}

fn worker(inner: &PoolInner, metrics: &DiskMetrics, beat: &crate::liveness::Beat) {
    crate::sandbox::enter(crate::sandbox::Class::Io);
    loop {
        let job = {
            let mut s = lock(&inner.state);
            loop {
                if let Some(j) = s.jobs.pop_front() {
                    break j;
                }
                if s.stop {
                    return;
                }
                s = inner
                    .work
                    .wait(s)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        // Jobs catch their own panics and reset their device; this is the
        // backstop that keeps the thread (and the pool) alive regardless.
        let _busy = beat.busy();
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            metrics.error("io_panic");
            error!("an I/O thread job panicked outside its own handler");
        }
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        lock(&self.inner.state).stop = true;
        self.inner.work.notify_all();
        // Not joined: a thread blocked in the kernel on a dead device must
        // not hang the daemon's exit. Queued jobs still run before the
        // threads see `stop`.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_publishes_in_ring_order_whatever_the_finish_order() {
        let w = Window::default();
        let seqs: Vec<u64> = {
            let mut s = w.lock();
            [7u16, 3, 9, 1].iter().map(|&h| s.push(h)).collect()
        };
        let mut out = Vec::new();
        assert_eq!(w.complete(seqs[2], 30, |h, u| out.push((h, u))), 0);
        assert_eq!(w.complete(seqs[1], 20, |h, u| out.push((h, u))), 0);
        assert!(out.is_empty(), "nothing before the head finished");
        assert_eq!(w.complete(seqs[0], 10, |h, u| out.push((h, u))), 3);
        assert_eq!(out, vec![(7, 10), (3, 20), (9, 30)]);
        assert_eq!(w.lock().running(), 1);
        // A second finish of the same request changes nothing.
        assert_eq!(w.complete(seqs[0], 99, |h, u| out.push((h, u))), 0);
        let s4 = w.lock().push(4);
        assert_eq!(w.complete(s4, 40, |h, u| out.push((h, u))), 0);
        assert_eq!(w.complete(seqs[3], 5, |h, u| out.push((h, u))), 2);
        assert_eq!(out[3..], [(1, 5), (4, 40)]);
        assert_eq!(w.lock().running(), 0);
        w.wait_idle("test", Duration::from_secs(1));
    }

    #[test]
    fn closed_window_publishes_nothing_but_still_drains() {
        let w = Arc::new(Window::default());
        let (a, b) = {
            let mut s = w.lock();
            (s.push(1), s.push(2))
        };
        w.close();
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            let mut out = Vec::new();
            w2.complete(b, 1, |h, u| out.push((h, u)));
            w2.complete(a, 1, |h, u| out.push((h, u)));
            out
        });
        w.wait_idle("test", Duration::from_secs(1));
        assert!(t.join().expect("thread").is_empty());
        assert!(w.lock().closed());
    }

    #[test]
    fn pool_runs_jobs_concurrently_and_survives_a_panicking_job() {
        let mut reg = prometheus_client::registry::Registry::default();
        let fam = crate::blk::metrics::BlkFamilies::register(&mut reg);
        let pool = IoPool::new("t", 3, fam.disk("t", 1)).expect("pool");
        pool.submit(Box::new(|| panic!("deliberate")));
        // Three jobs that each wait for all three to have started: they can
        // only finish if they run at the same time.
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..3 {
            let (b, tx) = (barrier.clone(), tx.clone());
            pool.submit(Box::new(move || {
                b.wait();
                let _ = tx.send(i);
            }));
        }
        let mut got: Vec<i32> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(60)).expect("job ran"))
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2]);
        let text = crate::metrics_server::render(&reg);
        assert!(text.contains("kind=\"io_panic\""), "{text}");
    }
}
