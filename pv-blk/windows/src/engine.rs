//! Completion bookkeeping between StorPort's SRBs and the block core's
//! tokens: the in-flight table, plans carried out part after part, and the
//! bus reset policy.
//!
//! # Rules
//!
//! - Every SRB handed to [`Engine::start`] is given back exactly once,
//!   through the `done` callback of [`Engine::poll`] or [`Engine::reset`]
//!   (or at once, by `start` itself, when it could not be queued). A token
//!   the core delivers that names no SRB in flight (a second completion, a
//!   stale one after a reset) is counted and ignored: an SRB is never
//!   completed twice.
//! - A plan's parts run one after another: the next part is submitted when
//!   the previous one completed well; the first failure ends the SRB. Only
//!   the first part of a plan carries the SRB's data buffer, so the engine
//!   submits the rest itself. A completion frees the slot the next part
//!   needs, so follow-ups are submitted before the driver starts new SRBs
//!   (`poll` does it before it returns).
//! - Bus reset: the device is reset first ([`BlockFrontend::reset`] stops
//!   it and takes every buffer back); only then are the SRBs completed with
//!   `SRB_STATUS_BUS_RESET`. If the device will not reset, the SRBs whose
//!   buffers it may still use are *not* completed (Windows would reuse
//!   memory the device can still write); they stay in the table until a
//!   later reset succeeds.
//! - The table is allocated once, at construction, with the queue depth;
//!   nothing on the I/O path allocates (crash-dump mode may not).

use alloc::vec::Vec;

use pv_blk::{BlkError, BlockFrontend, IoBuf, Token};

use crate::cdb::{decide, Decision, Part, Plan, ScsiRequest};
use crate::disk::Disk;
use crate::srb::{failure, status, Completion};

/// What the engine keeps of an SRB besides the handle: where its sense
/// goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrbCtx {
    /// `SenseInfoBufferLength`.
    pub sense_room: u32,
    /// `SrbFlags`.
    pub flags: u32,
}

/// Counters; every ignored event is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// SRBs accepted by `start`.
    pub started: u64,
    /// SRBs given back through `done` (any status).
    pub completed: u64,
    /// Core completions naming no SRB in flight (ignored).
    pub unknown_tokens: u64,
    /// Resets that succeeded.
    pub resets: u64,
    /// SRBs completed with BUS_RESET.
    pub reset_completions: u64,
}

#[derive(Debug)]
struct Slot<S> {
    srb: S,
    ctx: SrbCtx,
    plan: Plan,
    /// Index of the part in flight.
    part: usize,
    token: Token,
    /// Set by a core completion, consumed by `settle`.
    result: Option<Result<usize, BlkError>>,
}

/// The in-flight table and the policies above. `S` is the driver's SRB
/// handle (a pointer in the driver, an id in tests).
#[derive(Debug)]
pub struct Engine<S> {
    disk: Disk,
    slots: Vec<Option<Slot<S>>>,
    stats: EngineStats,
}

impl<S> Engine<S> {
    /// An engine for `disk` holding at most `depth` SRBs in flight (the
    /// core's queue depth).
    pub fn new(disk: Disk, depth: usize) -> Self {
        let mut slots = Vec::with_capacity(depth);
        slots.resize_with(depth, || None);
        Self {
            disk,
            slots,
            stats: EngineStats::default(),
        }
    }

    /// The disk decisions are made for.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// After a reset the device may report new geometry.
    pub fn set_disk(&mut self, disk: Disk) {
        self.disk = disk;
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// SRBs in flight.
    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Decide a SCSI command for this disk ([`crate::cdb::decide`]).
    pub fn decide(&self, req: &ScsiRequest<'_>) -> Decision {
        decide(&self.disk, req)
    }

    /// Start `plan` for `srb`: submit its first part with `buffers` (the
    /// SRB's data buffer, exactly `plan.transfer` bytes, for a read or
    /// write; empty otherwise). `Err` gives the SRB back with its
    /// completion when it could not be queued (BUSY when the table or the
    /// queue is full).
    ///
    /// # Safety
    ///
    /// As [`BlockFrontend::submit`]: the buffers stay valid and untouched
    /// by anything but the device until this engine gives `srb` back.
    pub unsafe fn start<B: BlockFrontend>(
        &mut self,
        blk: &mut B,
        srb: S,
        ctx: SrbCtx,
        plan: Plan,
        buffers: &[IoBuf],
    ) -> Result<(), (S, Completion)> {
        let Some(first) = plan.parts().first().copied() else {
            return Err((srb, Completion::good(0)));
        };
        let bytes = buffers.iter().fold(0usize, |a, b| a.saturating_add(b.len));
        let want = if first.has_data() {
            plan.transfer as usize
        } else {
            0
        };
        if bytes != want {
            // The driver mapped the wrong buffer: its bug, reported as an
            // internal failure, never sent to the device.
            let sense = crate::sense::Sense::internal_failure();
            return Err((srb, Completion::check(sense, ctx.sense_room, ctx.flags)));
        }
        let Some(free) = self.slots.iter().position(Option::is_none) else {
            return Err((srb, Completion::status(status::BUSY)));
        };
        // SAFETY: forwarded from this function's contract; `buffers` is
        // empty for parts without data.
        let submitted = unsafe { blk.submit(&first.request(buffers)) };
        match submitted {
            Ok(token) => {
                self.slots[free] = Some(Slot {
                    srb,
                    ctx,
                    plan,
                    part: 0,
                    token,
                    result: None,
                });
                self.stats.started += 1;
                Ok(())
            }
            Err(e) => Err((srb, Self::failed(&plan, &first, ctx, &e))),
        }
    }

    fn failed(plan: &Plan, part: &Part, ctx: SrbCtx, e: &BlkError) -> Completion {
        let kind = part.request(&[]).op.kind();
        match failure(plan.command, kind, e) {
            Ok(sense) => Completion::check(sense, ctx.sense_room, ctx.flags),
            Err(st) => Completion::status(st),
        }
    }

    /// Take the core's completions, submit follow-up parts, and give back
    /// every SRB that ended. `Err` is the fault that stopped the core: the
    /// driver calls [`Engine::reset`] next.
    pub fn poll<B: BlockFrontend, D: FnMut(S, Completion)>(
        &mut self,
        blk: &mut B,
        done: &mut D,
    ) -> Result<usize, BlkError> {
        let slots = &mut self.slots;
        let stats = &mut self.stats;
        let polled = blk.poll_completions(&mut |token, r| match slots
            .iter_mut()
            .flatten()
            .find(|s| s.token == token && s.result.is_none())
        {
            Some(s) => s.result = Some(r),
            None => stats.unknown_tokens += 1,
        });
        let n = self.settle(blk, done);
        polled.map(|_| n)
    }

    /// Advance every slot with a result; returns how many SRBs ended.
    fn settle<B: BlockFrontend, D: FnMut(S, Completion)>(
        &mut self,
        blk: &mut B,
        done: &mut D,
    ) -> usize {
        let mut ended = 0;
        for i in 0..self.slots.len() {
            let Some(slot) = self.slots[i].as_mut() else {
                continue;
            };
            let Some(result) = slot.result.take() else {
                continue;
            };
            let parts = slot.plan.parts();
            let part = parts[slot.part];
            let completion = match result {
                Ok(_) => match parts.get(slot.part + 1).copied() {
                    None => Some(Completion::good(slot.plan.transfer)),
                    Some(next) => {
                        // SAFETY: follow-up parts carry no buffers.
                        match unsafe { blk.submit(&next.request(&[])) } {
                            Ok(token) => {
                                slot.part += 1;
                                slot.token = token;
                                None
                            }
                            Err(e) => Some(Self::failed(&slot.plan, &next, slot.ctx, &e)),
                        }
                    }
                },
                Err(e) => Some(Self::failed(&slot.plan, &part, slot.ctx, &e)),
            };
            if let Some(c) = completion {
                if let Some(slot) = self.slots[i].take() {
                    self.stats.completed += 1;
                    ended += 1;
                    done(slot.srb, c);
                }
            }
        }
        ended
    }

    /// Bus / device / LUN reset: reset the device first, then complete
    /// every SRB in flight with `SRB_STATUS_BUS_RESET`. When the device
    /// will not reset, only SRBs whose buffers the core handed back are
    /// completed, and the error is returned.
    pub fn reset<B: BlockFrontend, D: FnMut(S, Completion)>(
        &mut self,
        blk: &mut B,
        done: &mut D,
    ) -> Result<(), BlkError> {
        let slots = &mut self.slots;
        let stats = &mut self.stats;
        let r = blk.reset(&mut |token, _| {
            match slots.iter_mut().flatten().find(|s| s.token == token) {
                // Marked: the core gave its buffers back.
                Some(s) => s.result = Some(Err(BlkError::Aborted)),
                None => stats.unknown_tokens += 1,
            }
        });
        // The device is reset (or refused to be) before any SRB goes back.
        for slot in &mut self.slots {
            let back = match slot {
                Some(s) => r.is_ok() || s.result.is_some(),
                None => false,
            };
            if !back {
                continue;
            }
            if let Some(s) = slot.take() {
                self.stats.completed += 1;
                self.stats.reset_completions += 1;
                done(s.srb, Completion::status(status::BUS_RESET));
            }
        }
        if r.is_ok() {
            self.stats.resets += 1;
        }
        r
    }
}
