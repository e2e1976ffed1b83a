//! The frontend's end: produce requests, consume responses.

use core::marker::PhantomData;
use core::sync::atomic::{fence, Ordering};

use super::{notify_needed, Geometry, RingEntry, RingError, RingRegion};
use crate::wire::sring::{PVT, REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD, SRING_HEADER_SIZE};

/// The front half of a shared ring (`*_front_ring_t`).
///
/// Private state lives here, never in shared memory: `req_prod_pvt`, the last
/// published producer and `rsp_cons`. The backend can only influence this
/// ring through `rsp_prod`, `req_event` and the response slots, and every one
/// of those is checked or copied before use.
#[derive(Debug)]
pub struct FrontRing<'a, Req, Rsp> {
    mem: RingRegion<'a>,
    geo: Geometry,
    req_prod_pvt: u32,
    /// Last value stored to `req_prod`; kept privately so a peer scribbling on
    /// `req_prod` cannot change our idea of what is outstanding.
    req_prod_pub: u32,
    rsp_cons: u32,
    /// The last `rsp_prod` read from shared memory that passed validation;
    /// responses up to it are consumed without re-reading the index.
    rsp_prod_seen: u32,
    fault: Option<RingError>,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<'a, Req: RingEntry, Rsp: RingEntry> FrontRing<'a, Req, Rsp> {
    /// `XEN_FRONT_RING_INIT`: initialise the shared header (producers 0,
    /// events 1, padding zeroed) and attach at index 0. Only the frontend
    /// initialises a ring, before it grants the pages to the backend.
    pub fn init(mem: RingRegion<'a>) -> Result<Self, RingError> {
        Self::init_at(mem, 0)
    }

    /// Like [`FrontRing::init`] but with every index starting at `start`
    /// (producers `start`, events `start + 1`). Useful to exercise
    /// wraparound.
    pub fn init_at(mem: RingRegion<'a>, start: u32) -> Result<Self, RingError> {
        let ring = Self::attach(mem, start)?;
        let m = &ring.mem;
        m.word(REQ_PROD).store(start, Ordering::Relaxed);
        m.word(RSP_PROD).store(start, Ordering::Relaxed);
        m.word(REQ_EVENT)
            .store(start.wrapping_add(1), Ordering::Relaxed);
        m.word(RSP_EVENT)
            .store(start.wrapping_add(1), Ordering::Relaxed);
        for off in (PVT..SRING_HEADER_SIZE).step_by(4) {
            m.word(off).store(0, Ordering::Relaxed);
        }
        // Release: whoever later learns of this ring (through a grant and a
        // xenstore write, which are themselves ordered after this) sees the
        // initialised header, not stale bytes.
        fence(Ordering::Release);
        Ok(ring)
    }

    /// `FRONT_RING_ATTACH`: take over an already initialised ring whose
    /// private indices are both `start` (e.g. after a resume). Writes nothing.
    pub fn attach(mem: RingRegion<'a>, start: u32) -> Result<Self, RingError> {
        let geo = Geometry::new::<Req, Rsp>(&mem)?;
        Ok(Self {
            mem,
            geo,
            req_prod_pvt: start,
            req_prod_pub: start,
            rsp_cons: start,
            rsp_prod_seen: start,
            fault: None,
            _entries: PhantomData,
        })
    }

    /// Number of slots (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.geo.size
    }

    /// Private request producer (`req_prod_pvt`).
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// Private response consumer (`rsp_cons`).
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// The latched fault, if the ring is stopped.
    pub fn fault(&self) -> Option<RingError> {
        self.fault
    }

    /// Stop the ring with `err` (e.g. an id fault found by the caller in a
    /// response's contents). Every later call returns the first fault.
    pub fn stop(&mut self, err: RingError) -> RingError {
        *self.fault.get_or_insert(err)
    }

    fn check(&self) -> Result<(), RingError> {
        match self.fault {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Slots free for new requests (`RING_FREE_REQUESTS`): the ring never has
    /// more than `size` requests outstanding.
    pub fn free_requests(&self) -> u32 {
        self.geo.size - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// `RING_FULL`.
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Queue `req` in the next slot (not yet visible to the backend: see
    /// [`FrontRing::push_requests_and_check_notify`]).
    #[inline]
    pub fn push_request(&mut self, req: &Req) -> Result<(), RingError> {
        self.check()?;
        if self.is_full() {
            return Err(RingError::Full);
        }
        let off = self.geo.slot_offset(self.req_prod_pvt);
        self.mem.write_entry(off, req);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_REQUESTS`: publish queued requests without asking whether
    /// the backend wants an event.
    pub fn push_requests(&mut self) -> Result<(), RingError> {
        self.check()?;
        // Release (ring.h's xen_wmb): the backend, which acquires `req_prod`,
        // must see the request slots written above before it sees the new
        // producer index.
        self.mem
            .word(REQ_PROD)
            .store(self.req_prod_pvt, Ordering::Release);
        self.req_prod_pub = self.req_prod_pvt;
        Ok(())
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publish queued requests and
    /// return whether the backend must be sent an event.
    pub fn push_requests_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.check()?;
        let old = self.req_prod_pub;
        let new = self.req_prod_pvt;
        // Release (xen_wmb): request slots before the producer index, as in
        // `push_requests`.
        self.mem.word(REQ_PROD).store(new, Ordering::Release);
        self.req_prod_pub = new;
        // Full fence (xen_mb): our store of `req_prod` must be visible to the
        // backend before we read `req_event`. The backend's final check does
        // the mirror image (store `req_event`, full fence, load `req_prod`);
        // with both fences at least one side sees the other's store, so
        // either we see its new event index and notify, or it sees our
        // requests and does not sleep.
        fence(Ordering::SeqCst);
        let event = self.mem.word(REQ_EVENT).load(Ordering::Relaxed);
        Ok(notify_needed(old, new, event))
    }

    /// Responses published and not yet consumed (`RING_HAS_UNCONSUMED_RESPONSES`),
    /// after checking the backend's `rsp_prod`.
    #[inline]
    pub fn unconsumed_responses(&mut self) -> Result<u32, RingError> {
        self.check()?;
        // Acquire (ring.h's xen_rmb after reading rsp_prod): response slots
        // the backend wrote before its release store of `rsp_prod` are
        // visible to the reads that follow.
        let rsp_prod = self.mem.word(RSP_PROD).load(Ordering::Acquire);
        let avail = rsp_prod.wrapping_sub(self.rsp_cons);
        let outstanding = self.req_prod_pub.wrapping_sub(self.rsp_cons);
        if avail > outstanding {
            return Err(self.stop(RingError::ResponseOverrun {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                outstanding,
            }));
        }
        self.rsp_prod_seen = rsp_prod;
        Ok(avail)
    }

    /// Take the next response, if the backend has published one: the slot is
    /// copied once and the copy returned. The caller validates its contents
    /// (e.g. with an [`IdTracker`](super::IdTracker)).
    #[inline]
    pub fn consume_response(&mut self) -> Result<Option<Rsp>, RingError> {
        self.check()?;
        // Only go back to the shared producer index once the validated
        // snapshot is used up. The snapshot stays valid: it was within the
        // requests outstanding, which only grow until it is consumed.
        if self.rsp_cons == self.rsp_prod_seen && self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let rsp = self.mem.read_entry(self.geo.slot_offset(self.rsp_cons));
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: call before sleeping. Returns true if
    /// responses are pending (do not sleep); otherwise asks the backend for
    /// an event on the next response and checks once more.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.mem
            .word(RSP_EVENT)
            .store(self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        // Full fence (xen_mb): the backend must be able to see our new
        // `rsp_event` before we re-read `rsp_prod`. Pairs with the fence in
        // the backend's push-and-check (store `rsp_prod`, fence, load
        // `rsp_event`): a response published concurrently is either seen by
        // the re-check below or triggers an event.
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_responses()? > 0)
    }
}
