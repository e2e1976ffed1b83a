//! The Xen balloon: the toolstack writes the guest's memory target to
//! `memory/target` (KiB, decimal) in the guest's xenstore directory; the
//! guest gives frames back to Xen (`XENMEM_decrease_reservation`) or asks
//! for them again (`XENMEM_populate_physmap`, "increase reservation")
//! through a [`Reservation`] platform the OS glue implements.
//!
//! The target is the guest's *memory size*: the balloon is
//! `guest memory - target`. A target above guest memory (this core does no
//! memory hot-add) is clamped to an empty balloon and counted; one that is
//! not a plain decimal number is refused and counted, and the balloon stays
//! where it is.
//!
//! Reservation calls are synchronous, so [`XenBalloon::inflate`] and
//! [`XenBalloon::deflate`] complete at once. Xen may do part of a call (it
//! returns how many leading frames it handled); a guest page only counts as
//! moved when all its frames were, and a partly moved page is rolled back
//! (or, if the rollback fails too, kept in the balloon, where nothing in
//! the guest can touch it).

use alloc::vec::Vec;

use xenbus::platform::PlatformError;
use xenbus::xenstore::wire::WatchEvent;
use xenbus::xenstore::{Client, Transport};

use crate::ledger::{Counters, Event, GuestPage, Ledger, Limits, Plan, Status, FRAME_SIZE};
use crate::BalloonError;

/// The node (relative to the guest's domain path) with the target in KiB.
pub const TARGET_NODE: &str = "memory/target";
/// The watch token this core registers.
pub const WATCH_TOKEN: &str = "pv-balloon-target";
/// Longest `memory/target` value accepted (u64 has 20 decimal digits).
const TARGET_MAX_DIGITS: usize = 20;

/// The hypervisor's memory reservation calls, as the OS glue makes them
/// (`HYPERVISOR_memory_op` in a kernel; a fake in tests).
pub trait Reservation {
    /// Give `frames` (4 KiB guest frame numbers) back to Xen. Returns how
    /// many of the leading frames Xen took (at most `frames.len()`).
    fn decrease_reservation(&mut self, frames: &[u64]) -> Result<usize, PlatformError>;

    /// Ask Xen to back `frames` with memory again. Returns how many of the
    /// leading frames are backed (at most `frames.len()`).
    fn increase_reservation(&mut self, frames: &[u64]) -> Result<usize, PlatformError>;
}

/// Parse a `memory/target` value: ASCII digits only (no sign, space or
/// newline), at most 20 of them, KiB that fit in u64. Returns 4 KiB frames
/// (rounded down).
pub fn parse_target_kib(value: &[u8]) -> Result<u64, BalloonError> {
    if value.is_empty() || value.len() > TARGET_MAX_DIGITS || !value.iter().all(u8::is_ascii_digit)
    {
        return Err(BalloonError::BadTarget);
    }
    let mut kib: u64 = 0;
    for d in value {
        kib = kib
            .checked_mul(10)
            .and_then(|k| k.checked_add(u64::from(d - b'0')))
            .ok_or(BalloonError::BadTarget)?;
    }
    Ok(kib / (FRAME_SIZE / 1024))
}

/// The Xen balloon driver; see the module docs.
#[derive(Debug)]
pub struct XenBalloon<R: Reservation, P: GuestPage> {
    reservation: R,
    ledger: Ledger,
    held: Vec<P>,
    counters: Counters,
    /// The last target read, in frames of guest memory (None: none yet).
    memory_target: Option<u64>,
}

impl<R: Reservation, P: GuestPage> XenBalloon<R, P> {
    /// A balloon over `reservation`, empty, with no target yet (it stays
    /// empty until one is read).
    pub fn new(reservation: R, limits: Limits) -> Result<Self, BalloonError> {
        Ok(Self {
            reservation,
            ledger: Ledger::new(limits)?,
            held: Vec::new(),
            counters: Counters::default(),
            memory_target: None,
        })
    }

    /// The platform (for tests and the glue).
    pub fn reservation_mut(&mut self) -> &mut R {
        &mut self.reservation
    }

    /// Balloon size and target (frames).
    pub fn status(&self) -> Status {
        self.ledger.st
    }

    /// The guest memory target last read (4 KiB frames).
    pub fn memory_target(&self) -> Option<u64> {
        self.memory_target
    }

    /// Counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Pages in the balloon.
    pub fn held_pages(&self) -> usize {
        self.held.len()
    }

    /// Change the floor (see `VirtioBalloon::set_floor`).
    pub fn set_floor(&mut self, floor_frames: u64) -> Result<(), BalloonError> {
        self.ledger.set_floor(floor_frames)
    }

    /// Allow inflation again after [`Self::oom_deflate`].
    pub fn resume_inflate(&mut self) {
        self.ledger.st.oom_hold = false;
    }

    /// Register the `memory/target` watch (it fires once at once; feed
    /// every event to [`Self::handle_watch`]).
    pub fn watch<T: Transport>(client: &mut Client<T>) -> Result<(), BalloonError> {
        client
            .watch(TARGET_NODE, WATCH_TOKEN)
            .map_err(|e| BalloonError::Xenstore {
                peer: e.is_peer_fault(),
            })
    }

    /// Handle a watch event: if it is ours, read `memory/target` and apply
    /// it. Returns whether the event was ours. A missing node (the toolstack
    /// has not written it yet) leaves the target unchanged.
    pub fn handle_watch<T: Transport, F: FnMut(Event<P>)>(
        &mut self,
        client: &mut Client<T>,
        event: &WatchEvent,
        sink: &mut F,
    ) -> Result<bool, BalloonError> {
        if event.token != WATCH_TOKEN {
            return Ok(false);
        }
        let value = client
            .read_opt(TARGET_NODE)
            .map_err(|e| BalloonError::Xenstore {
                peer: e.is_peer_fault(),
            })?;
        if let Some(v) = value {
            self.set_target_value(&v, sink)?;
        }
        Ok(true)
    }

    /// Apply a `memory/target` value (KiB, decimal). A value that is not a
    /// number is refused, counted, and returned as the error.
    pub fn set_target_value<F: FnMut(Event<P>)>(
        &mut self,
        value: &[u8],
        sink: &mut F,
    ) -> Result<(), BalloonError> {
        let frames = match parse_target_kib(value) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("xen-balloon: {e}");
                self.counters.bad_targets += 1;
                sink(Event::Warning(e));
                return Err(e);
            }
        };
        let guest = self.ledger.limits.guest_frames;
        self.memory_target = Some(frames);
        let balloon = guest.saturating_sub(frames);
        let (_, changed) = self.ledger.set_target(balloon);
        if frames > guest {
            let w = BalloonError::TargetBeyondMemory {
                requested: frames,
                guest,
            };
            if changed {
                log::warn!("xen-balloon: {w}");
                self.counters.clamped_targets += 1;
                sink(Event::Warning(w));
            }
        }
        if changed {
            self.counters.target_changes += 1;
            sink(Event::TargetChanged {
                frames: self.ledger.st.target,
            });
        }
        Ok(())
    }

    /// The next step toward the target.
    pub fn plan(&self) -> Plan {
        self.ledger.plan(false, false, self.held.len())
    }

    fn frames_of(&self, pages: &[P]) -> Vec<u64> {
        let per = self.ledger.limits.frames_per_page();
        pages
            .iter()
            .flat_map(|p| {
                let first = p.phys_addr() / FRAME_SIZE;
                (0..per).map(move |i| first + i)
            })
            .collect()
    }

    /// Give pages to Xen. Pages Xen took move into the balloon and are
    /// removed from the front of `pages`; pages it did not take are left in
    /// `pages` for the glue. Returns the pages taken.
    pub fn inflate(&mut self, pages: &mut Vec<P>) -> Result<usize, BalloonError> {
        if pages.is_empty() {
            return Ok(0);
        }
        let max = self.ledger.limits.pages_per_batch();
        if pages.len() > max {
            return Err(BalloonError::TooManyPages {
                given: pages.len(),
                max,
            });
        }
        self.ledger.check_inflate(pages.len())?;
        let l = self.ledger.limits;
        if let Some(p) = pages
            .iter()
            .find(|p| !p.phys_addr().is_multiple_of(l.page_size))
        {
            return Err(BalloonError::BadPage {
                addr: p.phys_addr(),
            });
        }
        let frames = self.frames_of(pages);
        let done = self.reservation.decrease_reservation(&frames)?;
        if done > frames.len() {
            // Xen claims frames we never named: believe nothing, and keep
            // every page out of the guest's hands (the safe side).
            self.take_in(pages, pages.len());
            return Err(BalloonError::ReservationOverrun {
                asked: frames.len(),
                done,
            });
        }
        let per = l.frames_per_page() as usize;
        let whole = done / per;
        let part = done % per;
        let mut taken = whole;
        if part > 0 {
            // A page Xen took only part of: ask for those frames back so the
            // glue can have the page; if Xen refuses, the page stays in the
            // balloon.
            let partial = &frames[whole * per..whole * per + part];
            let back = self.reservation.increase_reservation(partial);
            if back != Ok(part) {
                taken += 1;
            }
        }
        self.take_in(pages, taken);
        Ok(taken)
    }

    fn take_in(&mut self, pages: &mut Vec<P>, n: usize) {
        let n = n.min(pages.len());
        let frames = n as u64 * self.ledger.limits.frames_per_page();
        self.held.extend(pages.drain(..n));
        self.ledger.st.held = self.ledger.st.held.saturating_add(frames);
        self.counters.inflated_frames += frames;
    }

    /// Take up to `pages` pages out of the balloon, as far as the target
    /// allows: Xen backs them again first, then they are released through
    /// `sink`. Returns the pages released.
    pub fn deflate<F: FnMut(Event<P>)>(
        &mut self,
        pages: usize,
        sink: &mut F,
    ) -> Result<usize, BalloonError> {
        let per = self.ledger.limits.frames_per_page();
        let over = self
            .ledger
            .st
            .held
            .saturating_sub(self.ledger.st.target)
            .div_ceil(per);
        self.deflate_inner(pages.min(over as usize), sink)
    }

    /// Deflate under memory pressure, below the target if need be (a Xen
    /// guest may always do this: the toolstack sees it in its memory
    /// accounting). Inflation is held off until the target changes or
    /// [`Self::resume_inflate`].
    pub fn oom_deflate<F: FnMut(Event<P>)>(
        &mut self,
        pages: usize,
        sink: &mut F,
    ) -> Result<usize, BalloonError> {
        let n = self.deflate_inner(pages, sink)?;
        if n > 0 {
            self.ledger.st.oom_hold = true;
            self.counters.oom_deflates += 1;
        }
        Ok(n)
    }

    fn deflate_inner<F: FnMut(Event<P>)>(
        &mut self,
        pages: usize,
        sink: &mut F,
    ) -> Result<usize, BalloonError> {
        let n = pages
            .min(self.held.len())
            .min(self.ledger.limits.pages_per_batch());
        if n == 0 {
            return Ok(0);
        }
        let start = self.held.len() - n;
        let frames = self.frames_of(&self.held[start..]);
        let done = self.reservation.increase_reservation(&frames)?;
        if done > frames.len() {
            return Err(BalloonError::ReservationOverrun {
                asked: frames.len(),
                done,
            });
        }
        let per = self.ledger.limits.frames_per_page() as usize;
        let whole = done / per;
        let part = done % per;
        if part > 0 {
            // Give back the frames of a page Xen only partly backed, so the
            // page stays wholly in the balloon; if that fails its frames are
            // backed and unused, which costs memory, not safety.
            let partial = &frames[whole * per..whole * per + part];
            if self.reservation.decrease_reservation(partial) != Ok(part) {
                log::warn!("xen-balloon: could not return a partly populated page");
            }
        }
        let released: Vec<P> = self.held.drain(start..start + whole).collect();
        let frames = whole as u64 * per as u64;
        self.ledger.st.held = self.ledger.st.held.saturating_sub(frames);
        self.counters.deflated_frames += frames;
        for p in released {
            sink(Event::Released(p));
        }
        Ok(whole)
    }
}
