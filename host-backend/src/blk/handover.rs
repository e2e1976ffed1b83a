//! Who may touch a disk when two QEMU processes are connected to it: the
//! handover of a live migration on one host (the destination QEMU connects
//! while the source still runs) and of a restore into a new process.
//!
//! A disk accepts a second frontend connection while one is served
//! ([`super::server`]); both are full vhost-user connections, but only one
//! of them, the *owner*, may execute requests. Ownership is per disk and
//! moves at one point of the vhost-user sequence:
//!
//! 1. A connection becomes the owner when it starts its device (QEMU's
//!    vhost start sends SET_MEM_TABLE first, then the rings) or a queue
//!    takes a request, and only if the disk has no owner, or the owner has
//!    *stopped*: a GET_VRING_BASE left none of its queues running (each
//!    queue that took a request has been stopped since), and
//!    [`super::device`]'s `stop_vring` answered that only once every
//!    request it took off that ring was completed and published (its
//!    reorder window is empty). A stopped owner therefore has nothing in
//!    the disk. An owner that starts again before anyone took the disk
//!    keeps it (a migration that failed after the source stopped).
//! 2. An owner whose connection ended (QEMU quit, or the device was reset
//!    after a stop deadline) keeps the disk until the daemon has drained
//!    the requests it still held in the I/O pool ([`Ownership::released`]);
//!    a claimant waits for that, it is never refused: its requests may
//!    redo the stuck ones, and must not run before them.
//! 3. A claimant while the owner is connected with a running queue is
//!    refused: its requests complete at once with `VIRTIO_BLK_S_IOERR` and
//!    count as `errors{kind="not_owner"}`. QEMU starts a migration's
//!    destination only after the source has stopped (the source stops its
//!    vhost devices before it sends the final device state), so the only
//!    frontend that meets this is one resumed *after* it handed the disk
//!    over, such as a migration source given `cont` after the migration
//!    completed.
//!
//! Why a write from the old owner after the handover is impossible: once
//! the new owner holds the disk the old connection is not the owner, so
//! each of its queues must claim again before it pops a request
//! (`stop_vring` clears the queue's claim, and a queue that is not ready
//! pops nothing until QEMU restarts it); that claim is refused while the
//! new owner runs. Requests the old owner took before its stop finished
//! before GET_VRING_BASE was answered (rule 1), or, after a stop deadline,
//! before the new owner could claim (rule 2). The check is
//! [`Ownership::claim`], called by the queue worker under its reorder
//! window's lock right before it pops a chain; `stop_vring` clears the
//! claim under the same lock after the window drained.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use log::{info, warn};

/// A connection's answer from [`Ownership::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The connection owns the disk: run the request.
    Granted,
    /// Another connection owns the disk and runs a queue: refuse.
    Refused { owner: u64 },
}

#[derive(Debug)]
struct Owner {
    conn: u64,
    /// Queues of the owner that took requests and were not stopped since
    /// (bit per queue; at most 64 queues, see the disk table check).
    running: u64,
    /// A GET_VRING_BASE left no queue of the owner running, and the owner
    /// has not started again since: the disk may move (rule 1).
    stopped: bool,
    /// The owner's connection is gone; its requests may still be in the
    /// pool until [`Ownership::released`].
    ended: bool,
}

/// The owner of one disk, shared by all its connections.
#[derive(Debug, Default)]
pub struct Ownership {
    owner: Mutex<Option<Owner>>,
    released: Condvar,
}

fn bit(queue: usize) -> u64 {
    u32::try_from(queue)
        .ok()
        .and_then(|q| 1u64.checked_shl(q))
        .unwrap_or(0)
}

impl Ownership {
    fn lock(&self) -> MutexGuard<'_, Option<Owner>> {
        self.owner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connection `conn` starts its device (SET_MEM_TABLE, the first
    /// message of QEMU's vhost start): it takes the disk when it is free or
    /// its owner has stopped; waits while an ended owner drains; refused
    /// while the owner runs. `what` names the disk in the log lines.
    pub fn start(&self, conn: u64, what: &str) -> Claim {
        self.take(conn, 0, what)
    }

    /// Connection `conn` wants to run a request from `queue`: as
    /// [`Ownership::start`], and the queue counts as running until
    /// [`Ownership::stopped`].
    pub fn claim(&self, conn: u64, queue: usize, what: &str) -> Claim {
        self.take(conn, bit(queue), what)
    }

    fn take(&self, conn: u64, running: u64, what: &str) -> Claim {
        let mut g = self.lock();
        let mut waited = 0u32;
        loop {
            match g.as_mut() {
                None => {
                    *g = Some(Owner {
                        conn,
                        running,
                        stopped: false,
                        ended: false,
                    });
                    return Claim::Granted;
                }
                Some(o) if o.conn == conn => {
                    o.running |= running;
                    o.stopped = false;
                    return Claim::Granted;
                }
                Some(o) if o.ended => {
                    // Rule 2: the old owner's requests leave the disk first.
                    waited += 1;
                    if waited.is_multiple_of(10) {
                        warn!(
                            "{what}: connection {conn} waits for connection {}'s requests to leave the disk",
                            o.conn
                        );
                    }
                    g = self
                        .released
                        .wait_timeout(g, Duration::from_secs(1))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                Some(o) if o.stopped => {
                    info!(
                        "{what}: handed over from connection {} (stopped) to connection {conn}",
                        o.conn
                    );
                    *o = Owner {
                        conn,
                        running,
                        stopped: false,
                        ended: false,
                    };
                    return Claim::Granted;
                }
                Some(o) => return Claim::Refused { owner: o.conn },
            }
        }
    }

    /// GET_VRING_BASE stopped `queue` of `conn` with nothing of it left in
    /// the disk.
    pub fn stopped(&self, conn: u64, queue: usize) {
        if let Some(o) = self.lock().as_mut().filter(|o| o.conn == conn) {
            o.running &= !bit(queue);
            if o.running == 0 {
                o.stopped = true;
            }
        }
    }

    /// `conn`'s connection is gone (requests may still be in the pool).
    pub fn ended(&self, conn: u64) {
        if let Some(o) = self.lock().as_mut().filter(|o| o.conn == conn) {
            o.ended = true;
        }
    }

    /// `conn`'s connection is gone and its requests have left the disk.
    pub fn released(&self, conn: u64) {
        let mut g = self.lock();
        if g.as_ref().is_some_and(|o| o.conn == conn) {
            *g = None;
        }
        drop(g);
        self.released.notify_all();
    }

    /// The connection owning the disk, if any.
    pub fn owner(&self) -> Option<u64> {
        self.lock().as_ref().map(|o| o.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    const D: &str = "test disk";

    #[test]
    fn destination_started_before_its_first_request_keeps_the_disk() {
        // The source stops; the destination starts (SET_MEM_TABLE) but has
        // not taken a request yet when the source is resumed: the disk is
        // the destination's.
        let o = Ownership::default();
        assert_eq!(o.claim(1, 0, D), Claim::Granted);
        assert_eq!(o.start(2, D), Claim::Refused { owner: 1 });
        o.stopped(1, 0);
        assert_eq!(o.start(2, D), Claim::Granted);
        assert_eq!(o.start(1, D), Claim::Refused { owner: 2 });
        assert_eq!(o.claim(1, 0, D), Claim::Refused { owner: 2 });
        assert_eq!(o.claim(2, 0, D), Claim::Granted);
    }

    #[test]
    fn first_claim_owns_and_a_running_owner_refuses_others() {
        let o = Ownership::default();
        assert_eq!(o.claim(1, 0, D), Claim::Granted);
        assert_eq!(o.claim(1, 1, D), Claim::Granted);
        assert_eq!(o.claim(2, 0, D), Claim::Refused { owner: 1 });
        // One queue stopped is not enough: queue 1 still runs.
        o.stopped(1, 0);
        assert_eq!(o.claim(2, 0, D), Claim::Refused { owner: 1 });
        assert_eq!(o.owner(), Some(1));
    }

    #[test]
    fn disk_moves_when_every_queue_of_the_owner_stopped_and_never_back() {
        let o = Ownership::default();
        assert_eq!(o.claim(1, 0, D), Claim::Granted);
        assert_eq!(o.claim(1, 1, D), Claim::Granted);
        o.stopped(1, 0);
        o.stopped(1, 1);
        // The migration destination starts: the disk is its.
        assert_eq!(o.claim(2, 1, D), Claim::Granted);
        assert_eq!(o.owner(), Some(2));
        // The source resumed after the handover: refused, on every queue.
        assert_eq!(o.claim(1, 0, D), Claim::Refused { owner: 2 });
        assert_eq!(o.claim(1, 1, D), Claim::Refused { owner: 2 });
        // The old connection's late stop and end change nothing.
        o.stopped(1, 1);
        o.ended(1);
        o.released(1);
        assert_eq!(o.owner(), Some(2));
        assert_eq!(o.claim(1, 0, D), Claim::Refused { owner: 2 });
    }

    #[test]
    fn a_stopped_owner_that_restarts_first_keeps_the_disk() {
        // A migration that failed after the source stopped: the source
        // starts again and the destination never ran.
        let o = Ownership::default();
        assert_eq!(o.claim(1, 0, D), Claim::Granted);
        o.stopped(1, 0);
        assert_eq!(o.claim(1, 0, D), Claim::Granted);
        assert_eq!(o.claim(2, 0, D), Claim::Refused { owner: 1 });
    }

    #[test]
    fn claimant_waits_for_an_ended_owner_to_drain() {
        let o = Arc::new(Ownership::default());
        assert_eq!(o.claim(1, 0, D), Claim::Granted);
        // Connection 1 is reset with a request still in the disk.
        o.ended(1);
        let (tx, rx) = std::sync::mpsc::channel();
        let o2 = o.clone();
        let t = std::thread::spawn(move || {
            let r = o2.claim(2, 0, D);
            tx.send(Instant::now()).expect("send");
            r
        });
        // Not granted while the old request may still write.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        assert_eq!(o.owner(), Some(1));
        o.released(1);
        assert_eq!(t.join().expect("join"), Claim::Granted);
        assert_eq!(o.owner(), Some(2));
    }

    #[test]
    fn release_frees_the_disk_for_anyone() {
        let o = Ownership::default();
        assert_eq!(o.claim(7, 3, D), Claim::Granted);
        o.ended(7);
        o.released(7);
        assert_eq!(o.owner(), None);
        assert_eq!(o.claim(8, 0, D), Claim::Granted);
        // A queue number past 63 (never: the table check allows at most
        // 64 queues) does not panic.
        assert_eq!(o.claim(8, 200, D), Claim::Granted);
    }
}
