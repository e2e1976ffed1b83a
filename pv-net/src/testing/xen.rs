//! A fake netback on xenbus's in-process platform: it maps the frontend's
//! TX and RX rings through [`GrantMapper`], binds the event channel(s), and
//! moves frames by mapping each slot's grant (as rx-copy's grant copy
//! would). It can also lie: raw responses in any slot, a response producer
//! run ahead, unknown or duplicate TX ids, bad statuses, offsets and flags.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use std::vec::Vec;

use xenbus::platform::inproc::LocalPlatform;
use xenbus::platform::{EventChannels, GrantMapper, GrantRef, PlatformError, Port};
use xenbus::ring::{BackRing, RingRegion, PAGE_SIZE};
use xenbus::wire::netif::{
    NetifExtraInfo, NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse,
    EXTRA_TYPE_GSO, RSP_OKAY, RXF_EXTRA_INFO, RXF_MORE_DATA, TXF_MORE_DATA,
};
use xenbus::wire::sring::{RSP_PROD, SRING_HEADER_SIZE};
use zerocopy::{FromBytes, IntoBytes};

/// Domain id the fake gives the frontend.
pub const FRONT_DOMID: u16 = 1;

/// A frame the frontend transmitted, as the backend gathered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxPacket {
    /// The requests, copied out of their slots.
    pub reqs: Vec<NetifTxRequest>,
    /// The frame.
    pub frame: Vec<u8>,
}

/// The fake backend; see the module docs.
#[derive(Debug)]
pub struct FakeNetback<'p> {
    plat: &'p LocalPlatform,
    /// Borrow the mappings below; dropped first.
    tx: Option<BackRing<'static, NetifTxRequest, NetifTxResponse>>,
    rx: Option<BackRing<'static, NetifRxRequest, NetifRxResponse>>,
    tx_map: NonNull<u8>,
    rx_map: NonNull<u8>,
    port_tx: Port,
    port_rx: Port,
    /// RX requests consumed (in order), for wire checks.
    pub rx_requests: Vec<NetifRxRequest>,
}

impl<'p> FakeNetback<'p> {
    /// Map the rings, bind the port(s) (`rx_port == tx_port` without split
    /// event channels).
    pub fn connect(
        plat: &'p LocalPlatform,
        tx_ref: GrantRef,
        rx_ref: GrantRef,
        tx_port: Port,
        rx_port: Port,
    ) -> Result<Self, PlatformError> {
        let tx_map = plat.map(FRONT_DOMID, &[tx_ref], true)?;
        let rx_map = plat.map(FRONT_DOMID, &[rx_ref], true)?;
        // SAFETY: `map` returned one page each, valid until `unmap` in
        // `Drop`, which runs after the rings are dropped; only touched
        // atomically (ring code and `word`).
        let tx = unsafe { RingRegion::new(tx_map, PAGE_SIZE) }
            .and_then(|r| BackRing::attach(r, 0))
            .map_err(|_| PlatformError::BadPeerReference)?;
        // SAFETY: as above.
        let rx = unsafe { RingRegion::new(rx_map, PAGE_SIZE) }
            .and_then(|r| BackRing::attach(r, 0))
            .map_err(|_| PlatformError::BadPeerReference)?;
        let port_tx = plat.bind_interdomain(FRONT_DOMID, tx_port)?;
        let port_rx = if rx_port == tx_port {
            port_tx
        } else {
            plat.bind_interdomain(FRONT_DOMID, rx_port)?
        };
        Ok(Self {
            plat,
            tx: Some(tx),
            rx: Some(rx),
            tx_map,
            rx_map,
            port_tx,
            port_rx,
            rx_requests: Vec::new(),
        })
    }

    fn txr(&mut self) -> &mut BackRing<'static, NetifTxRequest, NetifTxResponse> {
        match self.tx.as_mut() {
            Some(r) => r,
            None => panic!("fake netback used after disconnect"),
        }
    }

    fn rxr(&mut self) -> &mut BackRing<'static, NetifRxRequest, NetifRxResponse> {
        match self.rx.as_mut() {
            Some(r) => r,
            None => panic!("fake netback used after disconnect"),
        }
    }

    /// Events the frontend sent on the TX port (the bound port starts
    /// pending; that one is not counted).
    pub fn tx_kicks(&self) -> u64 {
        self.plat
            .event(self.port_tx)
            .map_or(0, |e| e.count().saturating_sub(1))
    }

    /// Events the frontend sent on the RX port (same as TX without split
    /// channels).
    pub fn rx_kicks(&self) -> u64 {
        self.plat
            .event(self.port_rx)
            .map_or(0, |e| e.count().saturating_sub(1))
    }

    /// RX requests published and not consumed.
    pub fn rx_available(&mut self) -> u32 {
        self.rxr().unconsumed_requests().unwrap_or(0)
    }

    fn map_rw(&self, gref: GrantRef, writable: bool) -> Option<NonNull<u8>> {
        self.plat.map(FRONT_DOMID, &[gref], writable).ok()
    }

    fn unmap(&self, p: NonNull<u8>) {
        // SAFETY: mapped by `map_rw`, one page, not used after.
        unsafe { self.plat.unmap(p, 1) };
    }

    /// Honest backend: take the next transmitted packet (all its slots) and
    /// answer each slot OKAY.
    pub fn take_tx(&mut self) -> Option<TxPacket> {
        let first = self.txr().consume_request().ok().flatten()?;
        let mut reqs = std::vec![first];
        while reqs.last().is_some_and(|r| r.flags & TXF_MORE_DATA != 0) && reqs.len() < 64 {
            match self.txr().consume_request().ok().flatten() {
                Some(r) => reqs.push(r),
                None => break,
            }
        }
        let rest: usize = reqs[1..].iter().map(|r| usize::from(r.size)).sum();
        let mut frame = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let len = if i == 0 {
                usize::from(r.size).saturating_sub(rest)
            } else {
                usize::from(r.size)
            };
            let off = usize::from(r.offset);
            if let Some(p) = self.map_rw(r.gref, false) {
                if off + len <= PAGE_SIZE {
                    let mut v = std::vec![0u8; len];
                    // SAFETY: `off + len <= PAGE_SIZE`: inside the page.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            p.as_ptr().wrapping_add(off),
                            v.as_mut_ptr(),
                            len,
                        )
                    };
                    frame.extend_from_slice(&v);
                }
                self.unmap(p);
            }
        }
        for r in &reqs {
            self.respond_tx(NetifTxResponse {
                id: r.id,
                status: RSP_OKAY,
            });
        }
        Some(TxPacket { reqs, frame })
    }

    /// Publish one TX response (honest or not) and notify if asked.
    pub fn respond_tx(&mut self, rsp: NetifTxResponse) {
        let ring = self.txr();
        if ring.push_response(&rsp).is_ok() && ring.push_responses_and_check_notify() == Ok(true) {
            let _ = self.plat.notify(self.port_tx);
        }
    }

    /// Honest backend going idle: ask for an event at the next TX request
    /// (`req_event`), with the re-check. Returns true if requests wait.
    pub fn rearm_tx(&mut self) -> bool {
        self.txr().final_check_for_requests().unwrap_or(false)
    }

    /// Same for the RX ring (notified when buffers are posted).
    pub fn rearm_rx(&mut self) -> bool {
        self.rxr().final_check_for_requests().unwrap_or(false)
    }

    /// Take the next TX request without answering it.
    pub fn take_tx_request(&mut self) -> Option<NetifTxRequest> {
        self.txr().consume_request().ok().flatten()
    }

    /// Consume one RX request and answer it with `rsp` (any contents), not
    /// yet published. Returns the request.
    pub fn respond_rx_raw(&mut self, rsp: NetifRxResponse) -> Option<NetifRxRequest> {
        let req = self.rxr().consume_request().ok().flatten()?;
        self.rx_requests.push(req);
        self.rxr().push_response(&rsp).ok()?;
        Some(req)
    }

    /// Publish RX responses and notify if asked.
    pub fn push_rx(&mut self) -> bool {
        let n = self.rxr().push_responses_and_check_notify() == Ok(true);
        if n {
            let _ = self.plat.notify(self.port_rx);
        }
        n
    }

    /// Write `bytes` at `off` of the page granted as `gref`.
    pub fn write_page(&self, gref: GrantRef, off: usize, bytes: &[u8]) -> bool {
        if off + bytes.len() > PAGE_SIZE {
            return false;
        }
        let Some(p) = self.map_rw(gref, true) else {
            return false;
        };
        // SAFETY: inside the mapped page (checked above).
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                p.as_ptr().wrapping_add(off),
                bytes.len(),
            )
        };
        self.unmap(p);
        true
    }

    /// Honest backend: deliver `frame` with `flags` (RXF checksum bits)
    /// and an optional GSO extra (type, size), in `chunk`-byte slots.
    /// Returns false (nothing consumed) if too few requests are posted.
    pub fn deliver(
        &mut self,
        frame: &[u8],
        flags: u16,
        gso: Option<(u8, u16)>,
        chunk: usize,
    ) -> bool {
        let chunk = chunk.clamp(1, PAGE_SIZE);
        let slots = frame.len().div_ceil(chunk).max(1);
        let need = slots + usize::from(gso.is_some());
        if (self.rx_available() as usize) < need {
            return false;
        }
        for (i, part) in frame.chunks(chunk).enumerate() {
            let mut f = 0;
            if i == 0 {
                f |= flags;
                if gso.is_some() {
                    f |= RXF_EXTRA_INFO;
                }
            }
            if i + 1 < slots {
                f |= RXF_MORE_DATA;
            }
            let Some(req) = self.rxr().consume_request().ok().flatten() else {
                return false;
            };
            self.rx_requests.push(req);
            self.write_page(req.gref, 0, part);
            let rsp = NetifRxResponse {
                id: req.id,
                offset: 0,
                flags: f,
                status: part.len() as i16,
            };
            let _ = self.rxr().push_response(&rsp);
            if i == 0 {
                if let Some((kind, size)) = gso {
                    let mut ex = NetifExtraInfo {
                        type_: EXTRA_TYPE_GSO,
                        flags: 0,
                        u: [0; 6],
                    };
                    ex.u[..2].copy_from_slice(&size.to_ne_bytes());
                    ex.u[2] = kind;
                    self.respond_rx_raw(extra_as_rsp(&ex));
                }
            }
        }
        self.push_rx();
        true
    }

    /// Hostile: write `rsp` into the next RX response slot and advance the
    /// shared `rsp_prod` by one, whether or not a request is outstanding.
    pub fn inject_rx(&self, rsp: &NetifRxResponse) {
        let w = |off: usize| {
            let p = self.rx_map.as_ptr().wrapping_add(off).cast::<u32>();
            // SAFETY: `off` is 4-aligned and inside the mapped ring page
            // (header constant or masked slot offset), only accessed
            // atomically.
            unsafe { AtomicU32::from_ptr(p) }
        };
        let prod = w(RSP_PROD).load(Ordering::SeqCst);
        let off = SRING_HEADER_SIZE + (prod & 255) as usize * 8;
        let b = rsp.as_bytes();
        w(off).store(
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            Ordering::Relaxed,
        );
        w(off + 4).store(
            u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            Ordering::Relaxed,
        );
        w(RSP_PROD).store(prod.wrapping_add(1), Ordering::Release);
    }

    /// Hostile: store any value in the TX ring's `rsp_prod`.
    pub fn set_tx_rsp_prod(&self, v: u32) {
        let p = self.tx_map.as_ptr().wrapping_add(RSP_PROD).cast::<u32>();
        // SAFETY: header word of the mapped ring page, atomic access only.
        unsafe { AtomicU32::from_ptr(p) }.store(v, Ordering::Release);
    }
}

/// An extra-info slot as the RX response it shares the slot with.
pub fn extra_as_rsp(ex: &NetifExtraInfo) -> NetifRxResponse {
    NetifRxResponse::read_from_bytes(ex.as_bytes()).unwrap_or_default()
}

impl Drop for FakeNetback<'_> {
    fn drop(&mut self) {
        self.tx = None;
        self.rx = None;
        // SAFETY: mapped in `connect`, one page each; the rings are dropped.
        unsafe {
            self.plat.unmap(self.tx_map, 1);
        }
        // SAFETY: as above.
        unsafe {
            self.plat.unmap(self.rx_map, 1);
        }
        if self.port_rx != self.port_tx {
            self.plat.close(self.port_rx);
        }
        self.plat.close(self.port_tx);
    }
}
