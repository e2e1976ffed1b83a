//! Xen blkif frontend (`xen/io/blkif.h`) on `xenbus`' [`FrontRing`], grants
//! and event channels, through the platform traits.
//!
//! # What the OS glue does and what this does
//!
//! The glue runs the xenbus handshake: it reads the backend's keys into a
//! [`XenBlkConfig`], builds a [`XenBlkFront`] (which allocates and grants the
//! ring pages and allocates the event channel), publishes
//! [`XenBlkFront::ring_refs`] (`ring-ref` or `ring-ref0..N` with
//! `ring-page-order`), [`XenBlkFront::event_channel`] and `protocol`, and
//! calls [`BlockFrontend::poll_completions`] when the port fires. After
//! [`BlockFrontend::reset`] the ring and port are new and the handshake must
//! be run again.
//!
//! # Requests
//!
//! Each caller buffer must start on a 512-byte boundary and be a multiple of
//! 512 bytes; it is cut at page boundaries into segments (`gref`,
//! `first_sect`, `last_sect`, both inclusive, in 512-byte units within the
//! page). Pages are granted read-only for writes and read-write for reads,
//! and the grants are revoked before the request is handed back. Up to 11
//! segments go in the request itself; with `feature-max-indirect-segments`
//! up to [`MAX_INDIRECT_SEGMENTS`] go in a `BLKIF_OP_INDIRECT` request whose
//! segment list sits in a per-slot page granted read-only for the request's
//! life. The response of an indirect request echoes its `indirect_op` (as
//! Linux blkback answers); `BLKIF_OP_INDIRECT` is accepted too.
//! Flush uses `FLUSH_DISKCACHE`, or a zero-segment `WRITE_BARRIER` if only
//! `feature-barrier` is offered. A backend that answers an optional
//! operation with `EOPNOTSUPP` has that feature switched off, as Linux
//! blkfront does.
//!
//! # Validation
//!
//! The ring rejects a `rsp_prod` beyond the requests outstanding; the id
//! tracker rejects unknown and duplicate ids (both stop the frontend). A
//! response whose operation differs from its request's, or whose status is
//! not one of OKAY/ERROR/EOPNOTSUPP, fails that request. A grant the backend
//! still maps after answering stops the frontend and the request is held
//! back (its buffer is not the caller's again) until a reset can revoke it.

use alloc::vec::Vec;
use core::ops::Deref;
use core::ptr::NonNull;

use xenbus::platform::{
    DomId, EventChannels, GrantRef, GrantTable, PlatformError, Port, SharedPages,
};
use xenbus::ring::{FrontRing, IdTracker, RingRegion, MAX_RING_PAGE_ORDER, PAGE_SIZE};
use xenbus::wire::blkif::{
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifResponse, BlkifSegment,
    DISCARD_SECURE, MAX_SEGMENTS_PER_REQUEST, OP_DISCARD, OP_FLUSH_DISKCACHE, OP_INDIRECT, OP_READ,
    OP_WRITE, OP_WRITE_BARRIER, RSP_EOPNOTSUPP, RSP_ERROR, RSP_OKAY,
};
use zerocopy::{FromZeros, IntoBytes};

use crate::frontend::{
    check_request, BlockFrontend, DeviceInfo, Features, Op, Request, Stats, Token,
};
use crate::{BlkError, OpKind, SECTOR_SIZE};

/// `VDISK_CDROM` (`info` key).
pub const VDISK_CDROM: u32 = 1;
/// `VDISK_REMOVABLE`.
pub const VDISK_REMOVABLE: u32 = 2;
/// `VDISK_READONLY`.
pub const VDISK_READONLY: u32 = 4;

/// What the backend published (and what we chose), read from xenstore by
/// the glue. Untrusted: checked by [`XenBlkFront::new`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenBlkConfig {
    /// The backend's domain.
    pub backend_domid: DomId,
    /// Virtual device handle for the requests.
    pub handle: u16,
    /// `ring-page-order` to use: at most the backend's `max-ring-page-order`
    /// and [`MAX_RING_PAGE_ORDER`].
    pub ring_page_order: u32,
    /// `sectors`, in units of `sector_size`.
    pub sectors: u64,
    /// `sector-size` (512 unless large sectors were agreed).
    pub sector_size: u32,
    /// `info` (`VDISK_*`).
    pub info: u32,
    /// `feature-flush-cache`.
    pub feature_flush_cache: bool,
    /// `feature-barrier`.
    pub feature_barrier: bool,
    /// `feature-discard`.
    pub feature_discard: bool,
    /// `discard-secure`.
    pub discard_secure: bool,
    /// `feature-max-indirect-segments` (0 or absent: no indirect requests).
    /// Capped at [`MAX_INDIRECT_SEGMENTS`].
    pub max_indirect_segments: u32,
}

/// Most segments this frontend puts in one indirect request: one indirect
/// page per ring slot (512 segments fit in a page; Linux backends offer 256).
pub const MAX_INDIRECT_SEGMENTS: u32 = 256;

/// `protocol` key value for this build's request layout.
#[cfg(target_pointer_width = "64")]
pub const PROTOCOL: &str = "x86_64-abi";

#[derive(Debug)]
struct XenInFlight {
    token: u32,
    /// The operation the response must echo (for an indirect request, its
    /// `indirect_op`, as Linux blkback answers).
    op: u8,
    indirect: bool,
    kind: OpKind,
    data: usize,
    /// Grants not yet revoked.
    grants: Vec<GrantRef>,
}

/// The ring region and its grants.
#[derive(Debug)]
struct RingPages {
    pages: NonNull<u8>,
    count: usize,
    grefs: Vec<GrantRef>,
}

/// A blkif frontend; see the module docs.
///
/// `P` is anything that derefs to the platform (a reference, an `Arc`).
#[derive(Debug)]
pub struct XenBlkFront<P>
where
    P: Deref,
    P::Target: SharedPages + GrantTable + EventChannels,
{
    plat: P,
    cfg: XenBlkConfig,
    /// Borrows `pages`; dropped (set to `None`) before they are freed.
    ring: Option<FrontRing<'static, BlkifRequest, BlkifResponse>>,
    pages: Option<RingPages>,
    port: Port,
    ids: IdTracker,
    inflight: Vec<Option<XenInFlight>>,
    /// Requests whose grants the backend still held; not the caller's yet.
    held: Vec<XenInFlight>,
    info: DeviceInfo,
    fault: Option<BlkError>,
    leaked_ring_pages: usize,
    stats: Stats,
    /// One page per ring slot for indirect segment lists, or none.
    indirect: Option<RingPages>,
    /// Segments per indirect request (0: direct only).
    max_indirect: u32,
}

impl<P> XenBlkFront<P>
where
    P: Deref,
    P::Target: SharedPages + GrantTable + EventChannels,
{
    /// Allocate and grant the ring, allocate the event channel, and take the
    /// backend's geometry from `cfg`.
    pub fn new(plat: P, cfg: XenBlkConfig) -> Result<Self, BlkError> {
        let sector_size = cfg.sector_size;
        if sector_size < SECTOR_SIZE as u32
            || sector_size > PAGE_SIZE as u32
            || !sector_size.is_power_of_two()
            || cfg.ring_page_order > MAX_RING_PAGE_ORDER
        {
            return Err(BlkError::DeviceFailed);
        }
        let capacity_sectors = cfg
            .sectors
            .checked_mul(u64::from(sector_size / SECTOR_SIZE as u32))
            .ok_or(BlkError::DeviceFailed)?;
        let features = Features {
            read_only: cfg.info & VDISK_READONLY != 0 || cfg.info & VDISK_CDROM != 0,
            flush: cfg.feature_flush_cache || cfg.feature_barrier,
            discard: cfg.feature_discard,
            secure_discard: cfg.feature_discard && cfg.discard_secure,
            write_zeroes: false,
            get_id: false,
            event_idx: true,
            indirect: cfg.max_indirect_segments > MAX_SEGMENTS_PER_REQUEST as u32,
        };
        let max_indirect = if features.indirect {
            cfg.max_indirect_segments.min(MAX_INDIRECT_SEGMENTS)
        } else {
            0
        };
        let mut me = Self {
            plat,
            cfg,
            ring: None,
            pages: None,
            port: 0,
            ids: IdTracker::new(0),
            inflight: Vec::new(),
            held: Vec::new(),
            info: DeviceInfo {
                capacity_sectors,
                block_size: sector_size,
                features,
                queues: 1,
                queue_depth: 0,
                max_segments: max_indirect.max(MAX_SEGMENTS_PER_REQUEST as u32),
                max_discard_sectors: 0,
            },
            fault: None,
            leaked_ring_pages: 0,
            stats: Stats::default(),
            indirect: None,
            max_indirect,
        };
        me.build_ring()?;
        if max_indirect > 0 {
            let count = me.info.queue_depth as usize;
            let pages = me.plat.alloc_pages(count)?;
            me.indirect = Some(RingPages {
                pages,
                count,
                grefs: Vec::new(),
            });
        }
        Ok(me)
    }

    /// Fresh ring pages, grants, ring, ids and port.
    fn build_ring(&mut self) -> Result<(), BlkError> {
        let count = 1usize << self.cfg.ring_page_order;
        let pages = self.plat.alloc_pages(count)?;
        let mut grefs = Vec::with_capacity(count);
        for i in 0..count {
            let page = pages.as_ptr().wrapping_add(i * PAGE_SIZE);
            let Some(page) = NonNull::new(page) else {
                continue;
            };
            match self.plat.grant(self.cfg.backend_domid, page, false) {
                Ok(g) => grefs.push(g),
                Err(e) => {
                    self.pages = Some(RingPages {
                        pages,
                        count,
                        grefs,
                    });
                    self.release_ring();
                    return Err(e.into());
                }
            }
        }
        self.pages = Some(RingPages {
            pages,
            count,
            grefs,
        });
        // SAFETY: `pages` is `count` pages from `alloc_pages`, valid and
        // exclusively ours until `free_pages`, which `release_ring` only
        // calls after dropping this ring; the region is only touched through
        // the ring's atomics (and by the backend, which the ring expects).
        let region = unsafe { RingRegion::new(pages, count * PAGE_SIZE) }?;
        let ring = FrontRing::init(region)?;
        let size = ring.size();
        self.ring = Some(ring);
        self.ids = IdTracker::new(size);
        self.inflight.clear();
        self.inflight.resize_with(size as usize, || None);
        self.info.queue_depth = size;
        self.port = self.plat.alloc_unbound(self.cfg.backend_domid)?;
        Ok(())
    }

    /// Drop the ring, revoke its grants and free its pages, unless the
    /// backend still maps them: then the pages are leaked, never reused.
    fn release_ring(&mut self) {
        self.ring = None;
        let Some(rp) = self.pages.take() else { return };
        let mut all_revoked = true;
        for g in &rp.grefs {
            // SAFETY: `g` came from `grant` on this platform and has not been
            // revoked (each ring's grants are revoked once, here).
            if unsafe { self.plat.end_access(*g) }.is_err() {
                all_revoked = false;
            }
        }
        if all_revoked {
            // SAFETY: these pages came from `alloc_pages(count)`; their
            // grants are all revoked and the ring that used them is dropped.
            unsafe { self.plat.free_pages(rp.pages, rp.count) };
        } else {
            log::error!(
                "blkfront: backend still maps the old ring; leaking {} pages",
                rp.count
            );
            self.leaked_ring_pages += rp.count;
        }
    }

    /// Grant references of the ring pages, in order (`ring-ref` or
    /// `ring-refN`).
    pub fn ring_refs(&self) -> &[GrantRef] {
        self.pages.as_ref().map_or(&[], |p| &p.grefs)
    }

    /// `ring-page-order`.
    pub fn ring_page_order(&self) -> u32 {
        self.cfg.ring_page_order
    }

    /// The event channel to publish as `event-channel`.
    pub fn event_channel(&self) -> Port {
        self.port
    }

    /// Ring pages leaked because the backend would not let go of them.
    pub fn leaked_ring_pages(&self) -> usize {
        self.leaked_ring_pages
    }

    /// Requests held back because the backend kept their grants.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn stop(&mut self, e: BlkError) -> BlkError {
        if self.fault.is_none() {
            log::error!("blkfront: stopping after backend fault: {e}");
            self.stats.stops += 1;
        }
        if let (Some(r), BlkError::Ring(re)) = (self.ring.as_mut(), e) {
            r.stop(re);
        }
        *self.fault.get_or_insert(e)
    }

    /// Revoke what can be revoked; true when every grant is gone.
    fn revoke(plat: &P::Target, grants: &mut Vec<GrantRef>) -> bool {
        grants.retain(|g| {
            // SAFETY: every gref in an in-flight record came from `grant` on
            // this platform and is removed from the list once revoked.
            unsafe { plat.end_access(*g) }.is_err()
        });
        grants.is_empty()
    }

    fn blkif_op(&self, op: &Op) -> Result<u8, BlkError> {
        Ok(match op {
            Op::Read => OP_READ,
            Op::Write => OP_WRITE,
            Op::Flush if self.cfg.feature_flush_cache => OP_FLUSH_DISKCACHE,
            Op::Flush => OP_WRITE_BARRIER,
            Op::Discard { .. } => OP_DISCARD,
            Op::WriteZeroes { .. } | Op::GetId => return Err(BlkError::Unsupported(op.kind())),
        })
    }

    /// Cut the buffers into page segments (address-ordered, as the disk).
    fn segments(req: &Request<'_>, max: usize) -> Result<Vec<(NonNull<u8>, u8, u8)>, BlkError> {
        let mut segs = Vec::new();
        for b in req.buffers {
            let mut addr = b.ptr.as_ptr() as usize;
            let mut left = b.len;
            if !addr.is_multiple_of(SECTOR_SIZE) {
                return Err(BlkError::BadBuffer);
            }
            while left > 0 {
                let off = addr % PAGE_SIZE;
                let n = left.min(PAGE_SIZE - off);
                // Derived from the caller's pointer (keeps its provenance);
                // the page start may lie before the buffer.
                let page = b
                    .ptr
                    .as_ptr()
                    .wrapping_add(addr - b.ptr.as_ptr() as usize)
                    .wrapping_sub(off);
                let page = NonNull::new(page).ok_or(BlkError::BadBuffer)?;
                let first = (off / SECTOR_SIZE) as u8;
                let last = ((off + n) / SECTOR_SIZE - 1) as u8;
                segs.push((page, first, last));
                if segs.len() > max {
                    return Err(BlkError::TooManySegments {
                        needed: segs.len(),
                        max,
                    });
                }
                addr += n;
                left -= n;
            }
        }
        Ok(segs)
    }
}

impl<P> BlockFrontend for XenBlkFront<P>
where
    P: Deref,
    P::Target: SharedPages + GrantTable + EventChannels,
{
    fn info(&self) -> DeviceInfo {
        self.info
    }

    unsafe fn submit(&mut self, req: &Request<'_>) -> Result<Token, BlkError> {
        if self.fault.is_some() {
            return Err(BlkError::Stopped);
        }
        check_request(&self.info, req)?;
        let op = self.blkif_op(&req.op)?;
        let max = (self.max_indirect as usize).max(MAX_SEGMENTS_PER_REQUEST);
        let segs = Self::segments(req, max)?;
        let indirect = segs.len() > MAX_SEGMENTS_PER_REQUEST;
        let Some(ring) = self.ring.as_ref() else {
            return Err(BlkError::Stopped);
        };
        if ring.is_full() || self.ids.available() == 0 {
            return Err(BlkError::QueueFull);
        }
        let id = self.ids.alloc()?;
        let readonly = op == OP_WRITE;
        let mut grants = Vec::with_capacity(segs.len());
        let mut wire = BlkifRequest::new_zeroed();
        let mut list: Vec<BlkifSegment> = Vec::with_capacity(segs.len());
        for (page, first, last) in &segs {
            match self.plat.grant(self.cfg.backend_domid, *page, readonly) {
                Ok(g) => {
                    grants.push(g);
                    list.push(BlkifSegment {
                        gref: g,
                        first_sect: *first,
                        last_sect: *last,
                        _pad: [0; 2],
                    });
                }
                Err(e) => {
                    // Never sent: nobody maps these, so revocation succeeds.
                    Self::revoke(&self.plat, &mut grants);
                    let _ = self.ids.cancel(id);
                    return Err(e.into());
                }
            }
        }
        if indirect {
            // The segment list goes in this id's indirect page, granted
            // read-only for the life of the request.
            let Some(ip) = self.indirect.as_ref() else {
                Self::revoke(&self.plat, &mut grants);
                let _ = self.ids.cancel(id);
                return Err(BlkError::TooManySegments {
                    needed: segs.len(),
                    max: MAX_SEGMENTS_PER_REQUEST,
                });
            };
            let page = ip.pages.as_ptr().wrapping_add(id as usize * PAGE_SIZE);
            let bytes = list.as_bytes();
            // SAFETY: `page` is page `id` of the `ip.count` (= ring size >
            // id) pages allocated for indirect lists, ours until freed in
            // `Drop`; nobody else can touch it now: its grant from the last
            // request with this id was revoked before the id was freed, and
            // `bytes` (at most 256 * 8) fits in the page.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), page, bytes.len()) };
            let granted = NonNull::new(page)
                .ok_or(PlatformError::Exhausted)
                .and_then(|p| self.plat.grant(self.cfg.backend_domid, p, true));
            let g = match granted {
                Ok(g) => g,
                Err(e) => {
                    Self::revoke(&self.plat, &mut grants);
                    let _ = self.ids.cancel(id);
                    return Err(e.into());
                }
            };
            grants.push(g);
            let mut ind = BlkifRequestIndirect {
                operation: OP_INDIRECT,
                indirect_op: op,
                nr_segments: segs.len() as u16,
                id: u64::from(id),
                sector_number: req.sector,
                handle: self.cfg.handle,
                ..BlkifRequestIndirect::default()
            };
            ind.indirect_grefs[0] = g;
            wire.as_mut_bytes()[..64].copy_from_slice(ind.as_bytes());
        } else if let Op::Discard { sectors, secure } = req.op {
            let d = BlkifRequestDiscard {
                operation: OP_DISCARD,
                flag: if secure { DISCARD_SECURE } else { 0 },
                handle: self.cfg.handle,
                _pad: [0; 4],
                id: u64::from(id),
                sector_number: req.sector,
                nr_sectors: u64::from(sectors),
            };
            // The discard layout shares the slot: its 32 bytes, rest zero.
            wire.as_mut_bytes()[..32].copy_from_slice(d.as_bytes());
        } else {
            wire.operation = op;
            wire.nr_segments = segs.len() as u8;
            wire.seg[..list.len()].copy_from_slice(&list);
            wire.handle = self.cfg.handle;
            wire.id = u64::from(id);
            wire.sector_number = if op == OP_READ || op == OP_WRITE {
                req.sector
            } else {
                0
            };
        }
        let Some(ring) = self.ring.as_mut() else {
            return Err(BlkError::Stopped);
        };
        let pushed = ring
            .push_request(&wire)
            .and_then(|()| ring.push_requests_and_check_notify());
        let notify = match pushed {
            Ok(n) => n,
            Err(e) => {
                Self::revoke(&self.plat, &mut grants);
                let _ = self.ids.cancel(id);
                return Err(e.into());
            }
        };
        if let Some(slot) = self.inflight.get_mut(id as usize) {
            *slot = Some(XenInFlight {
                token: id,
                op,
                indirect,
                kind: req.op.kind(),
                data: req.data_len(),
                grants,
            });
        }
        self.stats.submitted += 1;
        if notify {
            // The request is in flight whatever the notify says; a lost
            // event is recovered by the next notify or by polling.
            if let Err(e) = self.plat.notify(self.port) {
                log::warn!("blkfront: event channel notify failed: {e}");
            }
        }
        Ok(Token(id))
    }

    fn poll_completions<F: FnMut(Token, Result<usize, BlkError>)>(
        &mut self,
        f: &mut F,
    ) -> Result<usize, BlkError> {
        if let Some(e) = self.fault {
            return Err(e);
        }
        let mut done = 0;
        loop {
            let Some(ring) = self.ring.as_mut() else {
                return Err(BlkError::Stopped);
            };
            // Bounded: the ring refuses more responses than requests
            // outstanding, and each one retires an id or stops us.
            let rsp: BlkifResponse = match ring.consume_response() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(self.stop(e.into())),
            };
            let id = match self.ids.complete(rsp.id) {
                Ok(id) => id,
                Err(e) => return Err(self.stop(e.into())),
            };
            let Some(mut rec) = self.inflight.get_mut(id as usize).and_then(Option::take) else {
                // The tracker said in flight; our table disagrees. Never
                // happens; stop rather than guess.
                return Err(self.stop(BlkError::UnknownCompletion { id: rsp.id }));
            };
            if !Self::revoke(&self.plat, &mut rec.grants) {
                self.held.push(rec);
                return Err(self.stop(BlkError::GrantStillMapped));
            }
            let op_ok = rsp.operation == rec.op || (rec.indirect && rsp.operation == OP_INDIRECT);
            let res = if !op_ok {
                Err(BlkError::OperationMismatch {
                    sent: rec.op,
                    got: rsp.operation,
                })
            } else {
                match rsp.status {
                    RSP_OKAY => Ok(rec.data),
                    RSP_ERROR => Err(BlkError::IoError),
                    RSP_EOPNOTSUPP => {
                        // Optional operations may be refused at any time;
                        // stop offering them (blkfront does the same).
                        match rec.kind {
                            OpKind::Flush => self.info.features.flush = false,
                            OpKind::Discard => {
                                self.info.features.discard = false;
                                self.info.features.secure_discard = false;
                            }
                            _ => {}
                        }
                        Err(BlkError::DeviceUnsupported(rec.kind))
                    }
                    s => Err(BlkError::BadStatus {
                        status: i32::from(s),
                    }),
                }
            };
            if let Err(e) = &res {
                if e.is_device_fault() {
                    log::warn!("blkfront: request {:#x} failed: {e}", rec.token);
                }
            }
            self.stats.count(&res);
            f(Token(rec.token), res);
            done += 1;
        }
        Ok(done)
    }

    fn prepare_wait(&mut self) -> Result<bool, BlkError> {
        if let Some(e) = self.fault {
            return Err(e);
        }
        let r = match self.ring.as_mut() {
            Some(r) => r.final_check_for_responses(),
            None => return Err(BlkError::Stopped),
        };
        r.map_err(|e| self.stop(e.into()))
    }

    fn in_flight(&self) -> usize {
        self.inflight.iter().filter(|x| x.is_some()).count() + self.held.len()
    }

    fn fault(&self) -> Option<BlkError> {
        self.fault
    }

    fn stats(&self) -> Stats {
        self.stats
    }

    /// Revoke every request's grants and complete it as aborted; requests
    /// whose grants the backend still maps stay held and the reset fails
    /// with [`BlkError::GrantStillMapped`] (retry once the backend has
    /// closed). Then a new ring and port: the glue re-runs the handshake.
    fn reset<F: FnMut(Token, Result<usize, BlkError>)>(
        &mut self,
        f: &mut F,
    ) -> Result<(), BlkError> {
        // No more requests on the old ring, whatever happens below.
        self.ring = None;
        self.fault.get_or_insert(BlkError::Stopped);
        let mut pending: Vec<XenInFlight> =
            self.inflight.iter_mut().filter_map(Option::take).collect();
        pending.append(&mut self.held);
        for mut rec in pending {
            if Self::revoke(&self.plat, &mut rec.grants) {
                self.stats.aborted += 1;
                f(Token(rec.token), Err(BlkError::Aborted));
            } else {
                self.held.push(rec);
            }
        }
        if !self.held.is_empty() {
            return Err(BlkError::GrantStillMapped);
        }
        self.release_ring();
        self.plat.close(self.port);
        self.fault = None;
        if let Err(e) = self.build_ring() {
            self.fault = Some(e);
            return Err(e);
        }
        self.stats.resets += 1;
        Ok(())
    }
}

impl<P> Drop for XenBlkFront<P>
where
    P: Deref,
    P::Target: SharedPages + GrantTable + EventChannels,
{
    fn drop(&mut self) {
        self.ring = None;
        let mut pending: Vec<XenInFlight> =
            self.inflight.iter_mut().filter_map(Option::take).collect();
        pending.append(&mut self.held);
        let mut all_revoked = true;
        for mut rec in pending {
            if !Self::revoke(&self.plat, &mut rec.grants) {
                all_revoked = false;
                log::error!(
                    "blkfront: dropped with request {:#x} still mapped by the backend",
                    rec.token
                );
            }
        }
        if let Some(ip) = self.indirect.take() {
            if all_revoked {
                // SAFETY: allocated by `alloc_pages(ip.count)` in `new`;
                // every grant of them was revoked (each request's indirect
                // grant is in its record, all revoked just above).
                unsafe { self.plat.free_pages(ip.pages, ip.count) };
            }
        }
        self.release_ring();
        self.plat.close(self.port);
    }
}
