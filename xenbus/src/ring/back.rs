//! The backend's end: consume requests, produce responses.

use core::marker::PhantomData;
use core::sync::atomic::{fence, Ordering};

use super::{notify_needed, Geometry, RingEntry, RingError, RingRegion};
use crate::wire::sring::{REQ_EVENT, REQ_PROD, RSP_EVENT, RSP_PROD};

/// The back half of a shared ring (`*_back_ring_t`).
///
/// The backend never initialises the shared header: the frontend did. Private
/// state: `req_cons`, `rsp_prod_pvt` and the last published response
/// producer. The frontend can only influence this ring through `req_prod`,
/// `rsp_event` and the request slots, and each is checked or copied before
/// use.
#[derive(Debug)]
pub struct BackRing<'a, Req, Rsp> {
    mem: RingRegion<'a>,
    geo: Geometry,
    req_cons: u32,
    /// The last `req_prod` read from shared memory that passed validation.
    /// Requests up to it are consumed without touching the (contended)
    /// producer index again, as `ring.h` users do with a local `rp`.
    req_prod_seen: u32,
    rsp_prod_pvt: u32,
    /// Last value stored to `rsp_prod`, kept privately.
    rsp_prod_pub: u32,
    fault: Option<RingError>,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<'a, Req: RingEntry, Rsp: RingEntry> BackRing<'a, Req, Rsp> {
    /// `BACK_RING_ATTACH`: attach to a ring the frontend initialised, with
    /// both private indices at `start` (0 for a fresh ring). Writes nothing.
    pub fn attach(mem: RingRegion<'a>, start: u32) -> Result<Self, RingError> {
        let geo = Geometry::new::<Req, Rsp>(&mem)?;
        Ok(Self {
            mem,
            geo,
            req_cons: start,
            req_prod_seen: start,
            rsp_prod_pvt: start,
            rsp_prod_pub: start,
            fault: None,
            _entries: PhantomData,
        })
    }

    /// Number of slots (`RING_SIZE`).
    pub fn size(&self) -> u32 {
        self.geo.size
    }

    /// Private request consumer (`req_cons`).
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// Private response producer (`rsp_prod_pvt`).
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// The latched fault, if the ring is stopped.
    pub fn fault(&self) -> Option<RingError> {
        self.fault
    }

    /// Stop the ring with `err` (e.g. a malformed request found by the
    /// caller). Every later call returns the first fault.
    pub fn stop(&mut self, err: RingError) -> RingError {
        *self.fault.get_or_insert(err)
    }

    fn check(&self) -> Result<(), RingError> {
        match self.fault {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Requests published and not yet consumed (`RING_HAS_UNCONSUMED_REQUESTS`),
    /// after checking the frontend's `req_prod`.
    #[inline]
    pub fn unconsumed_requests(&mut self) -> Result<u32, RingError> {
        self.check()?;
        // Acquire (ring.h's xen_rmb after reading req_prod): the request slots
        // the frontend wrote before its release store of `req_prod` are
        // visible to the reads that follow.
        let req_prod = self.mem.word(REQ_PROD).load(Ordering::Acquire);
        // Published requests not yet answered. An honest frontend never has
        // more than `size` (RING_REQUEST_PROD_OVERFLOW).
        let unanswered = req_prod.wrapping_sub(self.rsp_prod_pvt);
        if unanswered > self.geo.size {
            return Err(self.stop(RingError::RequestOverrun {
                req_prod,
                rsp_prod_pvt: self.rsp_prod_pvt,
            }));
        }
        // Requests we consumed and have not answered yet; always <= size.
        let in_hand = self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        if unanswered < in_hand {
            return Err(self.stop(RingError::RequestProducerRewound {
                req_prod,
                req_cons: self.req_cons,
            }));
        }
        self.req_prod_seen = req_prod;
        Ok(unanswered - in_hand)
    }

    /// Take the next request, if the frontend has published one: the slot is
    /// copied once and the copy returned. The caller validates its contents.
    #[inline]
    pub fn consume_request(&mut self) -> Result<Option<Req>, RingError> {
        self.check()?;
        // Only go back to the shared producer index once the validated
        // snapshot is used up. The snapshot stays valid: it was within one
        // ring of `rsp_prod_pvt`, which only grows.
        if self.req_cons == self.req_prod_seen && self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let req = self.mem.read_entry(self.geo.slot_offset(self.req_cons));
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Queue `rsp` in the slot of the oldest unanswered request (not yet
    /// visible: see [`BackRing::push_responses_and_check_notify`]).
    #[inline]
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        self.check()?;
        if self.rsp_prod_pvt == self.req_cons {
            return Err(RingError::NoRequestToAnswer);
        }
        let off = self.geo.slot_offset(self.rsp_prod_pvt);
        self.mem.write_entry(off, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_RESPONSES`: publish queued responses without asking whether
    /// the frontend wants an event.
    pub fn push_responses(&mut self) -> Result<(), RingError> {
        self.check()?;
        // Release (xen_wmb): the frontend, which acquires `rsp_prod`, must see
        // the response slots before the new producer index.
        self.mem
            .word(RSP_PROD)
            .store(self.rsp_prod_pvt, Ordering::Release);
        self.rsp_prod_pub = self.rsp_prod_pvt;
        Ok(())
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publish queued responses and
    /// return whether the frontend must be sent an event.
    pub fn push_responses_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.check()?;
        let old = self.rsp_prod_pub;
        let new = self.rsp_prod_pvt;
        // Release (xen_wmb): response slots before the producer index.
        self.mem.word(RSP_PROD).store(new, Ordering::Release);
        self.rsp_prod_pub = new;
        // Full fence (xen_mb): the frontend must be able to see our `rsp_prod`
        // before we read `rsp_event`. Pairs with the fence in the frontend's
        // final check (store `rsp_event`, fence, load `rsp_prod`): at least
        // one of us sees the other's store, so no wake-up is lost.
        fence(Ordering::SeqCst);
        let event = self.mem.word(RSP_EVENT).load(Ordering::Relaxed);
        Ok(notify_needed(old, new, event))
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: call before sleeping. Returns true if
    /// requests are pending (do not sleep); otherwise asks the frontend for an
    /// event on the next request and checks once more.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.mem
            .word(REQ_EVENT)
            .store(self.req_cons.wrapping_add(1), Ordering::Relaxed);
        // Full fence (xen_mb): the frontend must be able to see our new
        // `req_event` before we re-read `req_prod`. Pairs with the fence in
        // the frontend's push-and-check (store `req_prod`, fence, load
        // `req_event`): a request published concurrently is either seen by
        // the re-check below or triggers an event.
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_requests()? > 0)
    }
}
