//! A fake blkif backend on `xenbus`' in-process platform: it maps the
//! frontend's ring through [`GrantMapper`], attaches a [`BackRing`], binds
//! the event channel, and serves requests against a RAM disk by mapping each
//! segment's grant. It can also lie: unsolicited or duplicate responses,
//! wrong operations and statuses, a response producer run ahead, or a grant
//! kept mapped after answering.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use std::vec;
use std::vec::Vec;

use xenbus::platform::inproc::LocalPlatform;
use xenbus::platform::{EventChannels, GrantMapper, GrantRef, PlatformError, Port};
use xenbus::ring::{BackRing, RingRegion, PAGE_SIZE};
use xenbus::wire::blkif::{
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifResponse, BlkifSegment,
    MAX_INDIRECT_PAGES_PER_REQUEST, MAX_SEGMENTS_PER_REQUEST, OP_DISCARD, OP_FLUSH_DISKCACHE,
    OP_INDIRECT, OP_READ, OP_WRITE, OP_WRITE_BARRIER, RSP_ERROR, RSP_OKAY,
    SEGMENTS_PER_INDIRECT_FRAME,
};
use xenbus::wire::sring::{RSP_PROD, SRING_HEADER_SIZE};
use zerocopy::{FromBytes, IntoBytes};

/// Domain id the fake gives the frontend.
pub const FRONT_DOMID: u16 = 1;

/// The fake backend; see the module docs.
#[derive(Debug)]
pub struct FakeBlkBackend<'p> {
    plat: &'p LocalPlatform,
    /// Borrows the mapping below; dropped first.
    ring: Option<BackRing<'static, BlkifRequest, BlkifResponse>>,
    mapping: NonNull<u8>,
    pages: usize,
    port: Port,
    /// The disk, 512-byte sectors.
    pub disk: Vec<u8>,
    /// A grant mapped and deliberately not unmapped (hostile).
    kept: Option<(NonNull<u8>, usize)>,
    /// Requests served.
    pub served: usize,
}

impl<'p> FakeBlkBackend<'p> {
    /// Map `ring_refs` (contiguous pages of one ring), bind `port`, with a
    /// disk of `sectors` 512-byte sectors.
    pub fn connect(
        plat: &'p LocalPlatform,
        ring_refs: &[GrantRef],
        port: Port,
        sectors: usize,
    ) -> Result<Self, PlatformError> {
        let mapping = plat.map(FRONT_DOMID, ring_refs, true)?;
        let pages = ring_refs.len();
        // SAFETY: `map` returned `pages` pages valid for reads and writes
        // until `unmap`, which `Drop` calls only after dropping the ring; the
        // region is only touched atomically (ring code and `word` below).
        let region = match unsafe { RingRegion::new(mapping, pages * PAGE_SIZE) } {
            Ok(r) => r,
            Err(_) => return Err(PlatformError::BadPeerReference),
        };
        let ring = BackRing::attach(region, 0).map_err(|_| PlatformError::BadPeerReference)?;
        let port = plat.bind_interdomain(FRONT_DOMID, port)?;
        Ok(Self {
            plat,
            ring: Some(ring),
            mapping,
            pages,
            port,
            disk: vec![0u8; sectors * 512],
            kept: None,
            served: 0,
        })
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.pages * PAGE_SIZE);
        let p = self.mapping.as_ptr().wrapping_add(off).cast::<u32>();
        // SAFETY: in bounds (checked) and 4-aligned in a page-aligned
        // mapping that lives until `Drop`; the ring memory is only accessed
        // atomically in this process.
        unsafe { AtomicU32::from_ptr(p) }
    }

    fn ring(&mut self) -> &mut BackRing<'static, BlkifRequest, BlkifResponse> {
        match self.ring.as_mut() {
            Some(r) => r,
            None => panic!("fake backend used after disconnect"),
        }
    }

    /// Ring slots.
    pub fn ring_size(&mut self) -> u32 {
        self.ring().size()
    }

    /// Take the next request as copied out of its slot.
    pub fn take_request(&mut self) -> Option<BlkifRequest> {
        self.ring().consume_request().ok().flatten()
    }

    fn with_segment(
        &self,
        gref: GrantRef,
        writable: bool,
        f: impl FnOnce(*mut u8),
    ) -> Result<(), PlatformError> {
        let page = self.plat.map(FRONT_DOMID, &[gref], writable)?;
        f(page.as_ptr());
        // SAFETY: mapped just above, one page, and `f` is done with it.
        unsafe { self.plat.unmap(page, 1) };
        Ok(())
    }

    /// Carry out `req` against the disk and build its response (not
    /// published).
    pub fn execute(&mut self, req: &BlkifRequest) -> BlkifResponse {
        let mut rsp = BlkifResponse {
            id: req.id,
            operation: req.operation,
            status: RSP_OKAY,
            ..BlkifResponse::default()
        };
        match req.operation {
            OP_READ | OP_WRITE => {
                let n = usize::from(req.nr_segments);
                if n == 0 || n > MAX_SEGMENTS_PER_REQUEST {
                    rsp.status = RSP_ERROR;
                    return rsp;
                }
                rsp.status = self.transfer(req.operation, req.sector_number, &req.seg[..n]);
            }
            OP_INDIRECT => {
                let ind = BlkifRequestIndirect::read_from_bytes(&req.as_bytes()[..64])
                    .unwrap_or_default();
                // Linux blkback answers with the indirect operation.
                rsp.operation = ind.indirect_op;
                match self.indirect_segments(&ind) {
                    Some(segs) if ind.indirect_op == OP_READ || ind.indirect_op == OP_WRITE => {
                        rsp.status = self.transfer(ind.indirect_op, ind.sector_number, &segs);
                    }
                    _ => rsp.status = RSP_ERROR,
                }
            }
            OP_FLUSH_DISKCACHE | OP_WRITE_BARRIER => {}
            OP_DISCARD => {
                let d =
                    BlkifRequestDiscard::read_from_bytes(&req.as_bytes()[..32]).unwrap_or_default();
                let start = (d.sector_number as usize).saturating_mul(512);
                let end = start.saturating_add((d.nr_sectors as usize).saturating_mul(512));
                match self.disk.get_mut(start..end) {
                    Some(r) => r.fill(0),
                    None => rsp.status = RSP_ERROR,
                }
            }
            _ => rsp.status = xenbus::wire::blkif::RSP_EOPNOTSUPP,
        }
        rsp
    }

    /// Read the segment list of an indirect request from its granted pages.
    pub fn indirect_segments(&self, ind: &BlkifRequestIndirect) -> Option<Vec<BlkifSegment>> {
        let n = usize::from(ind.nr_segments);
        let pages = n.div_ceil(SEGMENTS_PER_INDIRECT_FRAME);
        if n == 0 || pages > MAX_INDIRECT_PAGES_PER_REQUEST {
            return None;
        }
        let mut segs = Vec::with_capacity(n);
        for (p, gref) in ind.indirect_grefs[..pages].iter().enumerate() {
            let here = (n - p * SEGMENTS_PER_INDIRECT_FRAME).min(SEGMENTS_PER_INDIRECT_FRAME);
            let bytes = self.try_peek(*gref, 0, here * 8)?;
            for c in bytes.chunks_exact(8) {
                segs.push(BlkifSegment::read_from_bytes(c).ok()?);
            }
        }
        Some(segs)
    }

    /// Move data between the disk and the segments' granted pages.
    fn transfer(&mut self, op: u8, sector: u64, segs: &[BlkifSegment]) -> i16 {
        let mut off = (sector as usize).saturating_mul(512);
        for s in segs {
            if s.first_sect > s.last_sect || s.last_sect > 7 {
                return RSP_ERROR;
            }
            let start = usize::from(s.first_sect) * 512;
            let len = (usize::from(s.last_sect) + 1) * 512 - start;
            if off + len > self.disk.len() {
                return RSP_ERROR;
            }
            let disk = &mut self.disk[off..off + len];
            let read = op == OP_READ;
            let r = self.plat.map(FRONT_DOMID, &[s.gref], read).map(|page| {
                let p = page.as_ptr().wrapping_add(start);
                if read {
                    // SAFETY: `p..p+len` lies in the mapped page
                    // (`start + len <= 4096` by the sector checks).
                    unsafe { core::ptr::copy_nonoverlapping(disk.as_ptr(), p, len) };
                } else {
                    // SAFETY: as above.
                    unsafe { core::ptr::copy_nonoverlapping(p, disk.as_mut_ptr(), len) };
                }
                // SAFETY: mapped just above, one page, not used after.
                unsafe { self.plat.unmap(page, 1) };
            });
            if r.is_err() {
                return RSP_ERROR;
            }
            off += len;
        }
        RSP_OKAY
    }

    /// Publish `rsp` as the answer to the oldest consumed request and
    /// notify if the frontend asked.
    pub fn respond(&mut self, rsp: &BlkifResponse) {
        let ring = self.ring();
        if ring.push_response(rsp).is_ok() && ring.push_responses_and_check_notify() == Ok(true) {
            let _ = self.plat.notify(self.port);
        }
    }

    /// Honest backend: serve every published request. Returns how many.
    pub fn process(&mut self) -> usize {
        let mut n = 0;
        while let Some(req) = self.take_request() {
            let rsp = self.execute(&req);
            self.respond(&rsp);
            n += 1;
        }
        self.served += n;
        n
    }

    /// Hostile: write `rsp` into the next response slot and advance the
    /// shared `rsp_prod` by one, whether or not any request is outstanding.
    pub fn inject_response(&self, rsp: &BlkifResponse) {
        let prod = self.word(RSP_PROD).load(Ordering::SeqCst);
        let size =
            xenbus::ring::ring_size(self.pages * PAGE_SIZE, core::mem::size_of::<BlkifRequest>());
        let off = SRING_HEADER_SIZE + (prod & (size - 1)) as usize * 112;
        for (i, c) in rsp.as_bytes().chunks_exact(4).enumerate() {
            let mut w = [0u8; 4];
            w.copy_from_slice(c);
            self.word(off + 4 * i)
                .store(u32::from_ne_bytes(w), Ordering::Relaxed);
        }
        self.word(RSP_PROD)
            .store(prod.wrapping_add(1), Ordering::Release);
    }

    /// Hostile: store any value in `rsp_prod`.
    pub fn set_rsp_prod(&self, v: u32) {
        self.word(RSP_PROD).store(v, Ordering::Release);
    }

    /// Hostile: map `gref` and keep it mapped (so the frontend cannot revoke
    /// it) until [`FakeBlkBackend::release_kept`].
    pub fn keep_mapped(&mut self, gref: GrantRef) -> Result<(), PlatformError> {
        let p = self.plat.map(FRONT_DOMID, &[gref], false)?;
        self.release_kept();
        self.kept = Some((p, 1));
        Ok(())
    }

    /// Unmap what [`FakeBlkBackend::keep_mapped`] kept.
    pub fn release_kept(&mut self) {
        if let Some((p, n)) = self.kept.take() {
            // SAFETY: mapped by `keep_mapped`, unmapped once.
            unsafe { self.plat.unmap(p, n) };
        }
    }

    /// `len` bytes at `start` of the page granted as `gref` (zeros if the
    /// grant cannot be mapped).
    pub fn peek_segment(&self, gref: GrantRef, start: usize, len: usize) -> Vec<u8> {
        self.try_peek(gref, start, len)
            .unwrap_or_else(|| vec![0u8; len])
    }

    fn try_peek(&self, gref: GrantRef, start: usize, len: usize) -> Option<Vec<u8>> {
        if start + len > PAGE_SIZE {
            return None;
        }
        let mut v = vec![0u8; len];
        self.with_segment(gref, false, |p| {
            // SAFETY: `start + len <= PAGE_SIZE`: within the mapped page.
            unsafe { core::ptr::copy_nonoverlapping(p.wrapping_add(start), v.as_mut_ptr(), len) };
        })
        .ok()?;
        Some(v)
    }
}

impl Drop for FakeBlkBackend<'_> {
    fn drop(&mut self) {
        self.ring = None;
        self.release_kept();
        // SAFETY: mapped in `connect` with `pages` pages; the ring that used
        // it is dropped.
        unsafe { self.plat.unmap(self.mapping, self.pages) };
        self.plat.close(self.port);
    }
}
