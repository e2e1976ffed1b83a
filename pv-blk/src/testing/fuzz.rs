//! Fuzz drivers for the completion path of both transports, shared by the
//! cargo-fuzz targets (`pv-blk/fuzz/`) and a short deterministic run in the
//! test suite.
//!
//! Each input is a script: every byte picks an action (submit a request,
//! let the device answer honestly, let it lie in one of many ways, poll,
//! prepare to wait, reset), following bytes are its arguments. The frontend
//! must never panic or loop, and the bookkeeping it reports must stay true:
//! every token is delivered at most once and only while in flight, a reset
//! hands back exactly what was in flight, and a caller buffer that is not in
//! flight is never written (each idle buffer holds a canary that is checked
//! before reuse).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::vec::Vec;

use xenbus::platform::inproc::LocalPlatform;
use xenbus::wire::blkif::BlkifResponse;

use crate::testing::virtio::{Chain, FakeVirtioBlk, TestHal};
use crate::testing::xen::FakeBlkBackend;
use crate::virtio::{VirtioBlk, VirtioBlkConfig, VirtioFeatures};
use crate::xen::{XenBlkConfig, XenBlkFront};
use crate::{BlkError, BlockFrontend, IoBuf, Request, Token};

const CANARY: u8 = 0xA5;
/// Pool buffers (each [`BUF_PAGES`] pages).
const BUFS: usize = 32;
const BUF_PAGES: usize = 2;
/// Most buffers in one request.
const PIECES: usize = 16;

/// Page-aligned, canary-filled buffers that outlive the frontend.
struct Pool {
    base: NonNull<u8>,
    layout: Layout,
}

impl Pool {
    fn new() -> Self {
        let layout = match Layout::from_size_align(BUFS * BUF_PAGES * 4096, 4096) {
            Ok(l) => l,
            Err(_) => panic!("pool layout"),
        };
        // SAFETY: non-zero size.
        let p = unsafe { alloc_zeroed(layout) };
        let Some(base) = NonNull::new(p) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: `base` is valid for `layout.size()` bytes, owned here.
        unsafe { core::ptr::write_bytes(base.as_ptr(), CANARY, layout.size()) };
        Self { base, layout }
    }

    fn ptr(&self, i: usize) -> NonNull<u8> {
        let p = self.base.as_ptr().wrapping_add(i * BUF_PAGES * 4096);
        NonNull::new(p).unwrap_or(self.base)
    }

    /// Check buffer `i` still holds the canary (it is idle: nothing may have
    /// written it since it was handed back).
    fn check_idle(&self, i: usize) {
        // SAFETY: inside the allocation; the buffer is idle, so neither the
        // frontend nor the device accesses it concurrently.
        let s = unsafe { core::slice::from_raw_parts(self.ptr(i).as_ptr(), BUF_PAGES * 4096) };
        assert!(
            s.iter().all(|&b| b == CANARY),
            "idle buffer {i} was written after it was handed back"
        );
    }

    /// Refill buffer `i` with the canary after its request came back.
    fn reset_canary(&self, i: usize) {
        // SAFETY: inside the allocation; the request using it is complete.
        unsafe { core::ptr::write_bytes(self.ptr(i).as_ptr(), CANARY, BUF_PAGES * 4096) };
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}

/// Reads the script.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte().unwrap_or(0), self.byte().unwrap_or(0)])
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

/// Token bookkeeping shared by both drivers.
#[derive(Default)]
struct Book {
    /// token -> pool buffer (or none).
    out: BTreeMap<u32, Option<usize>>,
    busy: [bool; BUFS],
}

impl Book {
    fn free_buf(&self, hint: u8) -> Option<usize> {
        let start = usize::from(hint) % BUFS;
        (0..BUFS)
            .map(|k| (start + k) % BUFS)
            .find(|&i| !self.busy[i])
    }

    fn deliver(&mut self, pool: &Pool, t: Token, r: &Result<usize, BlkError>) {
        let Some(buf) = self.out.remove(&t.raw()) else {
            panic!("token {:#x} delivered but not in flight ({r:?})", t.raw());
        };
        if let Some(i) = buf {
            self.busy[i] = false;
            pool.reset_canary(i);
        }
    }

    fn submitted(&mut self, t: Token, buf: Option<usize>) {
        assert!(
            self.out.insert(t.raw(), buf).is_none(),
            "token {:#x} handed out twice",
            t.raw()
        );
        if let Some(i) = buf {
            self.busy[i] = true;
        }
    }
}

/// Build a request from the script; returns it and the pool buffer it uses.
fn request<'b>(
    s: &mut Script<'_>,
    pool: &Pool,
    book: &Book,
    bufs: &'b mut [IoBuf; PIECES],
    kind: u8,
) -> Option<(Request<'b>, Option<usize>)> {
    let sector = u64::from(s.u16() % 64);
    match kind % 6 {
        0 | 1 => {
            let i = book.free_buf(s.byte()?)?;
            pool.check_idle(i);
            let sectors = usize::from(s.byte()? % 16) + 1; // up to 8 KiB
            let off = usize::from(s.byte()? % 4) * 512;
            let len = (sectors * 512).min(BUF_PAGES * 4096 - off);
            let sectors = len / 512;
            let count = (usize::from(s.byte()?) % PIECES + 1).min(sectors);
            let p = pool.ptr(i).as_ptr().wrapping_add(off);
            // Split into `count` pieces of whole sectors, the last taking the
            // rest (more than 11 pieces exercises Xen indirect requests).
            let each = sectors / count;
            for (k, b) in bufs.iter_mut().enumerate().take(count) {
                let n = if k + 1 == count {
                    sectors - each * k
                } else {
                    each
                };
                let q = NonNull::new(p.wrapping_add(k * each * 512))?;
                *b = IoBuf::new(q, n * 512);
            }
            let bufs = &bufs[..count];
            let req = if kind.is_multiple_of(6) {
                Request::read(sector, bufs)
            } else {
                Request::write(sector, bufs)
            };
            Some((req, Some(i)))
        }
        2 => Some((Request::flush(), None)),
        3 => Some((
            Request::discard(sector, u32::from(s.byte()? % 16) + 1),
            None,
        )),
        4 => Some((
            Request::write_zeroes(sector, u32::from(s.byte()? % 16) + 1, s.byte()? & 1 == 1),
            None,
        )),
        _ => {
            let i = book.free_buf(s.byte()?)?;
            pool.check_idle(i);
            bufs[0] = IoBuf::new(pool.ptr(i), crate::ID_BYTES);
            Some((
                Request {
                    op: crate::Op::GetId,
                    sector: 0,
                    buffers: &bufs[..1],
                },
                Some(i),
            ))
        }
    }
}

/// Run one virtio-blk script.
pub fn virtio(data: &[u8]) {
    let mut s = Script(data);
    let pool = Pool::new();
    let mut book = Book::default();
    let Some(fb) = s.byte() else { return };
    let mut features = VirtioFeatures::all() - VirtioFeatures::RO;
    if fb & 1 != 0 {
        features -= VirtioFeatures::INDIRECT_DESC;
    }
    if fb & 2 != 0 {
        features -= VirtioFeatures::EVENT_IDX;
    }
    let dev = FakeVirtioBlk::new(features, 128, 2, 8);
    let cfg = VirtioBlkConfig {
        max_queues: 2,
        queue_size: 8,
        refuse: VirtioFeatures::empty(),
    };
    let Ok(mut blk) = VirtioBlk::<TestHal, _>::new(dev.clone(), cfg) else {
        return;
    };
    let mut taken: Vec<Chain> = Vec::new();
    let mut steps = 0;
    while let Some(op) = s.byte() {
        steps += 1;
        if steps > 4096 {
            break;
        }
        match op % 14 {
            0..=2 => {
                let mut bufs = [IoBuf::new(NonNull::dangling(), 0); PIECES];
                let kind = s.byte().unwrap_or(0);
                if let Some((req, buf)) = request(&mut s, &pool, &book, &mut bufs, kind) {
                    // SAFETY: pool buffers outlive the frontend and `book`
                    // keeps a busy buffer out of every other request.
                    if let Ok(t) = unsafe { blk.submit(&req) } {
                        book.submitted(t, buf);
                    }
                }
            }
            3 => {
                let q = u16::from(s.byte().unwrap_or(0) & 1);
                if let Some(c) = dev.take_chain(q) {
                    taken.push(c);
                }
            }
            4 | 5 => {
                // Honest answer to a taken chain, if it is still in flight.
                if taken.is_empty() {
                    continue;
                }
                let i = usize::from(s.byte().unwrap_or(0)) % taken.len();
                let c = taken.swap_remove(i);
                let tok = (u32::from(c.queue) << 16) | u32::from(c.head);
                if book.out.contains_key(&tok) {
                    let (st, len) = dev.execute(&c);
                    dev.write_status(&c, st);
                    dev.push_used(c.queue, u32::from(c.head), len);
                }
            }
            6 => {
                // Lying answer: any id, any length, maybe a garbage status.
                let q = u16::from(s.byte().unwrap_or(0) & 1);
                let id = match s.byte().unwrap_or(0) {
                    b if b < 200 => u32::from(b % 10),
                    _ => s.u32(),
                };
                let len = match s.byte().unwrap_or(0) {
                    b if b < 128 => u32::from(b) * 64,
                    _ => s.u32(),
                };
                if let Some(c) = taken
                    .iter()
                    .find(|c| c.queue == q && u32::from(c.head) == id)
                {
                    let tok = (u32::from(c.queue) << 16) | u32::from(c.head);
                    if book.out.contains_key(&tok) {
                        dev.write_status(c, s.byte().unwrap_or(0) % 5);
                    }
                }
                dev.push_used(q, id, len);
            }
            7 => {
                let q = u16::from(s.byte().unwrap_or(0) & 1);
                let v = s.u16();
                dev.set_used_idx(q, v);
            }
            8 => {
                let q = u16::from(s.byte().unwrap_or(0) & 1);
                let off = u64::from(s.byte().unwrap_or(0));
                let v = s.u32();
                dev.write_used_raw(q, off & !3, &v.to_le_bytes());
            }
            9 | 10 => {
                let r = blk.poll_completions(&mut |t, r| book.deliver(&pool, t, &r));
                if let Err(e) = r {
                    assert!(e.needs_reset(), "poll failed without stopping: {e}");
                    assert_eq!(blk.fault(), Some(e));
                }
            }
            11 => {
                let _ = blk.prepare_wait();
            }
            12 => {
                let before = book.out.len();
                let r = blk.reset(&mut |t, r| {
                    assert_eq!(r, Err(BlkError::Aborted));
                    book.deliver(&pool, t, &r);
                });
                match r {
                    Ok(()) => assert!(book.out.is_empty(), "reset left {before} requests"),
                    Err(_) => {
                        assert_eq!(book.out.len(), before, "a failed reset handed back buffers")
                    }
                }
            }
            _ => {
                let v = s.byte().unwrap_or(0);
                if v & 0x80 != 0 {
                    dev.set_refuse_reset(v & 1 == 1);
                } else {
                    dev.set_avail_event(u16::from(v & 1), s.u16());
                }
            }
        }
        // Chains whose requests came back (completed or aborted by a reset)
        // are forgotten: a real device cannot be stopped from writing memory
        // it was given, but this device must not touch what the driver has
        // taken back. Tokens are reused only on a later submit, so dropping
        // them right after every step is enough.
        taken.retain(|c| {
            book.out
                .contains_key(&((u32::from(c.queue) << 16) | u32::from(c.head)))
        });
        assert_eq!(blk.in_flight(), book.out.len(), "in-flight count disagrees");
    }
    // Take everything back before the pool goes.
    let _ = blk.reset(&mut |t, r| book.deliver(&pool, t, &r));
    dev.set_refuse_reset(false);
    let _ = blk.reset(&mut |t, r| book.deliver(&pool, t, &r));
    drop(blk);
}

/// Run one Xen blkif script.
pub fn xen(data: &[u8]) {
    let mut s = Script(data);
    let pool = Pool::new();
    let mut book = Book::default();
    let plat = LocalPlatform::new();
    let Some(fb) = s.byte() else { return };
    let cfg = XenBlkConfig {
        backend_domid: 0,
        handle: 0,
        ring_page_order: u32::from(fb & 1),
        sectors: 128,
        sector_size: 512,
        info: 0,
        feature_flush_cache: fb & 2 == 0,
        feature_barrier: true,
        feature_discard: fb & 4 == 0,
        discard_secure: fb & 8 == 0,
        max_indirect_segments: if fb & 16 == 0 { 32 } else { 0 },
    };
    let Ok(mut front) = XenBlkFront::new(&plat, cfg) else {
        return;
    };
    let mut back =
        FakeBlkBackend::connect(&plat, front.ring_refs(), front.event_channel(), 128).ok();
    let mut taken = Vec::new();
    let mut steps = 0;
    while let Some(op) = s.byte() {
        steps += 1;
        if steps > 4096 {
            break;
        }
        match op % 12 {
            0..=2 => {
                let mut bufs = [IoBuf::new(NonNull::dangling(), 0); PIECES];
                let kind = s.byte().unwrap_or(0);
                if let Some((req, buf)) = request(&mut s, &pool, &book, &mut bufs, kind) {
                    // SAFETY: pool buffers outlive the frontend and `book`
                    // keeps a busy buffer out of every other request.
                    if let Ok(t) = unsafe { front.submit(&req) } {
                        book.submitted(t, buf);
                    }
                }
            }
            3 => {
                if let Some(r) = back.as_mut().and_then(FakeBlkBackend::take_request) {
                    taken.push(r);
                }
            }
            4 | 5 => {
                if let (Some(b), false) = (back.as_mut(), taken.is_empty()) {
                    let i = usize::from(s.byte().unwrap_or(0)) % taken.len();
                    let r = taken.remove(i);
                    let rsp = b.execute(&r);
                    b.respond(&rsp);
                }
            }
            6 => {
                // Lying answer in the next response slot.
                let id = match s.byte().unwrap_or(0) {
                    b if b < 200 => u64::from(b % 10),
                    _ => s.u64(),
                };
                let rsp = BlkifResponse {
                    id,
                    operation: s.byte().unwrap_or(0) % 8,
                    status: match s.byte().unwrap_or(0) {
                        b if b < 200 => -(i16::from(b % 4)),
                        _ => s.u16() as i16,
                    },
                    ..BlkifResponse::default()
                };
                if let Some(b) = back.as_mut() {
                    if s.byte().unwrap_or(0) & 1 == 0 && !taken.is_empty() {
                        taken.remove(0);
                        b.respond(&rsp);
                    } else {
                        b.inject_response(&rsp);
                    }
                }
            }
            7 => {
                let v = s.u32();
                if let Some(b) = back.as_ref() {
                    b.set_rsp_prod(v);
                }
            }
            8 => {
                let r = front.poll_completions(&mut |t, r| book.deliver(&pool, t, &r));
                if let Err(e) = r {
                    assert!(e.needs_reset(), "poll failed without stopping: {e}");
                }
            }
            9 => {
                let _ = front.prepare_wait();
            }
            10 => {
                // Keep a taken request's grant mapped, or let go.
                if let Some(b) = back.as_mut() {
                    match taken.first() {
                        Some(r) if s.byte().unwrap_or(0) & 1 == 0 && r.nr_segments > 0 => {
                            let _ = b.keep_mapped(r.seg[0].gref);
                        }
                        _ => b.release_kept(),
                    }
                }
            }
            _ => {
                // The backend closes (unmapping everything), the frontend
                // resets, a new backend connects. (A reset while the backend
                // still maps the ring leaks the ring pages by design; the
                // unit tests cover it, here it would only trip the leak
                // checker.)
                back = None;
                taken.clear();
                let before = book.out.len();
                let r = front.reset(&mut |t, r| {
                    assert_eq!(r, Err(BlkError::Aborted));
                    book.deliver(&pool, t, &r);
                });
                match r {
                    Ok(()) => {
                        assert!(book.out.is_empty(), "reset left {before} requests");
                        back = FakeBlkBackend::connect(
                            &plat,
                            front.ring_refs(),
                            front.event_channel(),
                            128,
                        )
                        .ok();
                    }
                    Err(e) => assert_eq!(e, BlkError::GrantStillMapped),
                }
            }
        }
        assert_eq!(
            front.in_flight(),
            book.out.len(),
            "in-flight count disagrees"
        );
    }
    drop(back);
    let r = front.reset(&mut |t, r| book.deliver(&pool, t, &r));
    assert!(
        book.out.is_empty(),
        "requests left after the final reset ({r:?}, held {})",
        front.held()
    );
    drop(front);
}
