//! Xen blkif frontend against the fake backend on `xenbus`' in-process
//! platform: exact ring-slot bytes per request type, single and multi-page
//! rings at full depth, and a hostile backend per validation case.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use pv_blk::testing::xen::{FakeBlkBackend, FRONT_DOMID};
use pv_blk::xen::{XenBlkConfig, XenBlkFront, VDISK_READONLY};
use pv_blk::{BlkError, BlockFrontend, IoBuf, OpKind, Request, Token};
use xenbus::platform::inproc::LocalPlatform;
use xenbus::platform::GrantMapper;
use xenbus::ring::RingError;
use xenbus::wire::blkif::BlkifResponse;
use zerocopy::IntoBytes;

const SECTORS: usize = 4096;

type Front<'p> = XenBlkFront<&'p LocalPlatform>;
type Done = Vec<(Token, Result<usize, BlkError>)>;

/// Page-aligned memory for data buffers.
struct Pages {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Pages {
    fn new(n: usize) -> Self {
        let layout = Layout::from_size_align(n * 4096, 4096).expect("layout");
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("alloc");
        Self { ptr, layout }
    }

    fn buf(&self, off: usize, len: usize) -> IoBuf {
        assert!(off + len <= self.layout.size());
        let p = NonNull::new(self.ptr.as_ptr().wrapping_add(off)).expect("non-null");
        IoBuf::new(p, len)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the allocation is `layout.size()` initialised bytes; tests
        // read it only when no request on it is in flight.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn fill(&mut self, v: u8) {
        // SAFETY: as in `bytes`, and `&mut self` excludes other readers.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), v, self.layout.size()) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

fn cfg() -> XenBlkConfig {
    XenBlkConfig {
        backend_domid: 0,
        handle: 0x51,
        ring_page_order: 0,
        sectors: SECTORS as u64,
        sector_size: 512,
        info: 0,
        feature_flush_cache: true,
        feature_barrier: false,
        feature_discard: true,
        discard_secure: true,
        max_indirect_segments: 0,
    }
}

fn pair(plat: &LocalPlatform, c: XenBlkConfig) -> (Front<'_>, FakeBlkBackend<'_>) {
    let front = XenBlkFront::new(plat, c).expect("front");
    let back = FakeBlkBackend::connect(plat, front.ring_refs(), front.event_channel(), SECTORS)
        .expect("back");
    (front, back)
}

fn drain(front: &mut Front<'_>) -> Done {
    let mut v = Vec::new();
    front
        .poll_completions(&mut |t, r| v.push((t, r)))
        .expect("poll");
    v
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

#[test]
fn read_slot_bytes_and_round_trip() {
    let plat = LocalPlatform::new();
    let data = Pages::new(1);
    let (mut front, mut back) = pair(&plat, cfg());
    assert_eq!(front.ring_refs().len(), 1);
    assert_eq!(front.info().queue_depth, 32);
    back.disk[16 * 512..16 * 512 + 4096].fill(0xC3);
    let bufs = [data.buf(0, 4096)];
    // SAFETY: `data` outlives `front`.
    let tok = unsafe { front.submit(&Request::read(16, &bufs)) }.expect("submit");
    let req = back.take_request().expect("request");
    let b = req.as_bytes();
    assert_eq!(b.len(), 112);
    assert_eq!(b[0], 0, "BLKIF_OP_READ");
    assert_eq!(b[1], 1, "nr_segments");
    assert_eq!(le16(b, 2), 0x51, "handle");
    assert_eq!(&b[4..8], &[0; 4]);
    assert_eq!(le64(b, 8), u64::from(tok.raw()), "id");
    assert_eq!(le64(b, 16), 16, "sector_number");
    let gref = le32(b, 24);
    assert!(gref >= 8, "reserved grant refs are never used");
    assert_eq!(b[28], 0, "first_sect");
    assert_eq!(b[29], 7, "last_sect");
    assert!(b[30..].iter().all(|&x| x == 0), "unused segments zeroed");
    // A read's page is granted writable.
    let m = plat
        .map(FRONT_DOMID, &[gref], true)
        .expect("writable grant");
    // SAFETY: mapped just above.
    unsafe { plat.unmap(m, 1) };
    let rsp = back.execute(&req);
    back.respond(&rsp);
    assert_eq!(drain(&mut front), vec![(tok, Ok(4096))]);
    assert!(data.bytes().iter().all(|&x| x == 0xC3));
    assert_eq!(front.in_flight(), 0);
}

#[test]
fn write_segments_cut_at_page_boundaries() {
    let plat = LocalPlatform::new();
    let mut data = Pages::new(2);
    data.fill(0x7E);
    let (mut front, mut back) = pair(&plat, cfg());
    // 4096 bytes starting 1 KiB into the first page: two segments.
    let bufs = [data.buf(1024, 4096)];
    // SAFETY: `data` outlives `front`.
    let tok = unsafe { front.submit(&Request::write(40, &bufs)) }.expect("submit");
    let req = back.take_request().expect("request");
    let b = req.as_bytes();
    assert_eq!((b[0], b[1]), (1, 2), "WRITE, two segments");
    assert_eq!(le64(b, 16), 40);
    assert_eq!((b[28], b[29]), (2, 7), "first page: sectors 2..=7");
    assert_eq!((b[36], b[37]), (0, 1), "second page: sectors 0..=1");
    let (g0, g1) = (le32(b, 24), le32(b, 32));
    assert_ne!(g0, g1);
    // A write's pages are granted read-only.
    assert!(plat.map(FRONT_DOMID, &[g0], true).is_err());
    assert_eq!(back.peek_segment(g1, 0, 1024), vec![0x7E; 1024]);
    let rsp = back.execute(&req);
    back.respond(&rsp);
    assert_eq!(drain(&mut front), vec![(tok, Ok(4096))]);
    assert_eq!(&back.disk[40 * 512..40 * 512 + 4096], &[0x7E; 4096][..]);
    // Grants are revoked once the request is back.
    assert!(plat.map(FRONT_DOMID, &[g0], false).is_err());
}

#[test]
fn indirect_request_bytes_and_segment_page() {
    let plat = LocalPlatform::new();
    let mut data = Pages::new(5);
    data.fill(0x3C);
    let (mut front, mut back) = pair(
        &plat,
        XenBlkConfig {
            max_indirect_segments: 32,
            ..cfg()
        },
    );
    assert!(front.info().features.indirect);
    assert_eq!(front.info().max_segments, 32);
    // 16 buffers of 1 KiB: 16 segments, more than fit in a request.
    let bufs: Vec<IoBuf> = (0..16).map(|k| data.buf(k * 1024, 1024)).collect();
    // SAFETY: `data` outlives `front`.
    let tok = unsafe { front.submit(&Request::write(8, &bufs)) }.expect("submit");
    let req = back.take_request().expect("request");
    let b = req.as_bytes();
    assert_eq!((b[0], b[1]), (6, 1), "BLKIF_OP_INDIRECT carrying a WRITE");
    assert_eq!(le16(b, 2), 16, "nr_segments");
    assert_eq!(le64(b, 8), u64::from(tok.raw()));
    assert_eq!(le64(b, 16), 8);
    assert_eq!(le16(b, 24), 0x51, "handle");
    let ig = le32(b, 28);
    assert!(ig >= 8);
    assert!(
        b[32..].iter().all(|&x| x == 0),
        "one indirect page, rest zero"
    );
    // The indirect page is granted read-only and holds the 16 segments.
    assert!(plat.map(FRONT_DOMID, &[ig], true).is_err());
    let list = back.peek_segment(ig, 0, 16 * 8);
    for k in 0..16 {
        let e = &list[k * 8..k * 8 + 8];
        assert!(le32(e, 0) >= 8);
        assert_eq!(
            (e[4], e[5]),
            ((k % 4) as u8 * 2, (k % 4) as u8 * 2 + 1),
            "segment {k}"
        );
    }
    let rsp = back.execute(&req);
    assert_eq!(rsp.operation, 1, "answered with the indirect operation");
    back.respond(&rsp);
    assert_eq!(drain(&mut front), vec![(tok, Ok(16 * 1024))]);
    assert_eq!(&back.disk[8 * 512..8 * 512 + 16384], &[0x3C; 16384][..]);
    assert!(
        plat.map(FRONT_DOMID, &[ig], false).is_err(),
        "indirect grant revoked"
    );
    // Beyond the indirect limit: the caller's fault.
    let bufs: Vec<IoBuf> = (0..33).map(|k| data.buf(k * 512, 512)).collect();
    // SAFETY: refused before anything is granted.
    let e = unsafe { front.submit(&Request::read(0, &bufs)) };
    assert_eq!(
        e,
        Err(BlkError::TooManySegments {
            needed: 33,
            max: 32
        })
    );
}

#[test]
fn flush_and_discard_slot_bytes() {
    let plat = LocalPlatform::new();
    let (mut front, mut back) = pair(&plat, cfg());
    let t = front.flush().expect("flush");
    let req = back.take_request().expect("flush request");
    let b = req.as_bytes();
    assert_eq!((b[0], b[1]), (3, 0), "FLUSH_DISKCACHE, no segments");
    assert_eq!(le16(b, 2), 0x51);
    assert_eq!(le64(b, 8), u64::from(t.raw()));
    assert_eq!(le64(b, 16), 0);

    let t2 = front.discard(64, 24).expect("discard");
    let req2 = back.take_request().expect("discard request");
    let b = req2.as_bytes();
    assert_eq!((b[0], b[1]), (5, 0), "DISCARD, not secure");
    assert_eq!(le16(b, 2), 0x51);
    assert_eq!(le64(b, 8), u64::from(t2.raw()));
    assert_eq!(le64(b, 16), 64, "sector_number");
    assert_eq!(le64(b, 24), 24, "nr_sectors");
    assert!(b[32..].iter().all(|&x| x == 0));

    // SAFETY: no buffers.
    unsafe {
        front.submit(&Request {
            op: pv_blk::Op::Discard {
                sectors: 8,
                secure: true,
            },
            sector: 0,
            buffers: &[],
        })
    }
    .expect("secure discard");
    let req3 = back.take_request().expect("secure discard request");
    assert_eq!(req3.as_bytes()[1], 1, "BLKIF_DISCARD_SECURE");

    for r in [req, req2, req3] {
        let rsp = back.execute(&r);
        back.respond(&rsp);
    }
    assert_eq!(drain(&mut front).len(), 3);

    // Only feature-barrier: flush is a zero-segment WRITE_BARRIER.
    let c = XenBlkConfig {
        feature_flush_cache: false,
        feature_barrier: true,
        ..cfg()
    };
    let (mut front, mut back) = pair(&plat, c);
    front.flush().expect("barrier flush");
    let req = back.take_request().expect("barrier");
    assert_eq!(&req.as_bytes()[..2], &[2, 0]);
}

#[test]
fn unsupported_and_read_only() {
    let plat = LocalPlatform::new();
    let (mut front, _back) = pair(
        &plat,
        XenBlkConfig {
            feature_discard: false,
            feature_flush_cache: false,
            ..cfg()
        },
    );
    assert_eq!(front.flush(), Err(BlkError::Unsupported(OpKind::Flush)));
    assert_eq!(
        front.discard(0, 8),
        Err(BlkError::Unsupported(OpKind::Discard))
    );
    assert_eq!(
        front.write_zeroes(0, 8, false),
        Err(BlkError::Unsupported(OpKind::WriteZeroes))
    );
    let plat2 = LocalPlatform::new();
    let (mut ro, _b) = pair(
        &plat2,
        XenBlkConfig {
            info: VDISK_READONLY,
            ..cfg()
        },
    );
    assert!(ro.info().features.read_only);
    assert_eq!(ro.discard(0, 8), Err(BlkError::ReadOnly));
    // Misaligned buffer and too many segments are the caller's fault.
    let data = Pages::new(13);
    let bufs = [data.buf(256, 512)];
    // SAFETY: refused before anything is granted.
    let e = unsafe { front.submit(&Request::read(0, &bufs)) };
    assert_eq!(e, Err(BlkError::BadBuffer));
    let bufs = [data.buf(0, 12 * 4096)];
    // SAFETY: refused before anything is granted.
    let e = unsafe { front.submit(&Request::read(0, &bufs)) };
    assert!(matches!(e, Err(BlkError::TooManySegments { max: 11, .. })));
    assert!(!e.expect_err("refused").is_device_fault());
}

#[test]
fn multi_page_ring_full_depth() {
    let plat = LocalPlatform::new();
    let data = Pages::new(128);
    let (mut front, mut back) = pair(
        &plat,
        XenBlkConfig {
            ring_page_order: 2,
            ..cfg()
        },
    );
    assert_eq!(front.ring_refs().len(), 4);
    assert_eq!(front.ring_page_order(), 2);
    let depth = front.info().queue_depth as usize;
    assert_eq!(depth, 128);
    for i in 0..depth {
        let bufs = [data.buf(i * 4096, 4096)];
        // SAFETY: `data` outlives `front`.
        unsafe { front.submit(&Request::write(i as u64 * 8, &bufs)) }.expect("submit");
    }
    assert_eq!(front.flush(), Err(BlkError::QueueFull));
    assert_eq!(front.in_flight(), depth);
    assert_eq!(back.process(), depth);
    assert_eq!(drain(&mut front).len(), depth);
    front.flush().expect("room again");
}

#[test]
fn eopnotsupp_switches_the_feature_off() {
    let plat = LocalPlatform::new();
    let (mut front, mut back) = pair(&plat, cfg());
    let t = front.discard(0, 8).expect("discard");
    let req = back.take_request().expect("req");
    let rsp = BlkifResponse {
        id: req.id,
        operation: req.operation,
        status: -2,
        ..BlkifResponse::default()
    };
    back.respond(&rsp);
    assert_eq!(
        drain(&mut front),
        vec![(t, Err(BlkError::DeviceUnsupported(OpKind::Discard)))]
    );
    assert!(!front.info().features.discard);
    assert_eq!(
        front.discard(0, 8),
        Err(BlkError::Unsupported(OpKind::Discard))
    );
}

// ---------------------------------------------------------------- hostile

/// After a fatal fault: submit refuses; once the backend has let go,
/// reset aborts what was in flight, builds a new ring, and a new backend
/// connection works.
fn assert_clean_reset(
    plat: &LocalPlatform,
    mut front: Front<'_>,
    back: FakeBlkBackend<'_>,
    in_flight: usize,
) {
    let fault = front.fault().expect("stopped");
    assert!(fault.is_device_fault() && fault.needs_reset(), "{fault}");
    assert_eq!(front.flush(), Err(BlkError::Stopped));
    let old_refs = front.ring_refs().to_vec();
    drop(back); // the backend closes (unmaps the ring)
    let mut v = Vec::new();
    front.reset(&mut |t, r| v.push((t, r))).expect("reset");
    assert_eq!(v.len(), in_flight);
    assert!(v.iter().all(|(_, r)| *r == Err(BlkError::Aborted)));
    assert_eq!(front.fault(), None);
    assert_eq!(front.leaked_ring_pages(), 0);
    assert_eq!(front.stats().stops, 1);
    assert_eq!(front.stats().aborted, in_flight as u64);
    assert_ne!(front.ring_refs(), &old_refs[..], "a new ring");
    let mut back = FakeBlkBackend::connect(plat, front.ring_refs(), front.event_channel(), SECTORS)
        .expect("reconnect");
    let t = front.flush().expect("flush after reset");
    assert_eq!(back.process(), 1);
    assert_eq!(drain(&mut front), vec![(t, Ok(0))]);
}

fn poll_err(front: &mut Front<'_>) -> (Done, BlkError) {
    let mut v = Vec::new();
    let e = front
        .poll_completions(&mut |t, r| v.push((t, r)))
        .expect_err("fault expected");
    (v, e)
}

fn rsp(id: u64, op: u8, status: i16) -> BlkifResponse {
    BlkifResponse {
        id,
        operation: op,
        status,
        ..BlkifResponse::default()
    }
}

#[test]
fn hostile_unknown_id() {
    let plat = LocalPlatform::new();
    let data = Pages::new(1);
    let (mut front, mut back) = pair(&plat, cfg());
    let bufs = [data.buf(0, 4096)];
    // SAFETY: `data` outlives `front`.
    unsafe { front.submit(&Request::read(0, &bufs)) }.expect("submit");
    let _ = back.take_request();
    back.inject_response(&rsp(0xdead_beef_0000, 0, 0));
    let (done, e) = poll_err(&mut front);
    assert!(done.is_empty());
    assert_eq!(
        e,
        BlkError::UnknownCompletion {
            id: 0xdead_beef_0000
        }
    );
    assert_clean_reset(&plat, front, back, 1);
}

#[test]
fn hostile_duplicate_id() {
    let plat = LocalPlatform::new();
    let (mut front, mut back) = pair(&plat, cfg());
    let t = front.flush().expect("flush");
    front.flush().expect("second flush");
    let req = back.take_request().expect("req");
    let r = back.execute(&req);
    back.respond(&r);
    back.inject_response(&r);
    let (done, e) = poll_err(&mut front);
    assert_eq!(done, vec![(t, Ok(0))]);
    assert_eq!(e, BlkError::DuplicateCompletion { id: req.id });
    assert_clean_reset(&plat, front, back, 1);
}

#[test]
fn hostile_response_producer_runs_ahead() {
    let plat = LocalPlatform::new();
    let (mut front, back) = pair(&plat, cfg());
    front.flush().expect("flush");
    back.set_rsp_prod(50);
    let (done, e) = poll_err(&mut front);
    assert!(done.is_empty());
    assert_eq!(
        e,
        BlkError::Ring(RingError::ResponseOverrun {
            rsp_prod: 50,
            rsp_cons: 0,
            outstanding: 1
        })
    );
    assert_clean_reset(&plat, front, back, 1);
}

#[test]
fn hostile_unsolicited_response() {
    let plat = LocalPlatform::new();
    let (mut front, back) = pair(&plat, cfg());
    back.inject_response(&rsp(0, 0, 0));
    let (_, e) = poll_err(&mut front);
    assert!(matches!(
        e,
        BlkError::Ring(RingError::ResponseOverrun { outstanding: 0, .. })
    ));
    assert_clean_reset(&plat, front, back, 0);
}

#[test]
fn hostile_status_and_operation_fail_only_their_request() {
    let plat = LocalPlatform::new();
    let (mut front, mut back) = pair(&plat, cfg());
    let mut toks = Vec::new();
    for _ in 0..4 {
        toks.push(front.flush().expect("flush"));
    }
    let reqs: Vec<_> = std::iter::from_fn(|| back.take_request()).collect();
    back.respond(&rsp(reqs[0].id, 3, -1));
    back.respond(&rsp(reqs[1].id, 3, 7));
    back.respond(&rsp(reqs[2].id, 3, i16::MIN));
    back.respond(&rsp(reqs[3].id, 0, 0));
    let got: Vec<_> = drain(&mut front).into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        got,
        vec![
            Err(BlkError::IoError),
            Err(BlkError::BadStatus { status: 7 }),
            Err(BlkError::BadStatus { status: -32768 }),
            Err(BlkError::OperationMismatch { sent: 3, got: 0 }),
        ]
    );
    assert_eq!(front.fault(), None);
    front.flush().expect("still usable");
}

#[test]
fn hostile_backend_keeps_a_grant_mapped() {
    let plat = LocalPlatform::new();
    let data = Pages::new(1);
    let (mut front, mut back) = pair(&plat, cfg());
    let bufs = [data.buf(0, 4096)];
    // SAFETY: `data` outlives `front`.
    let tok = unsafe { front.submit(&Request::read(0, &bufs)) }.expect("submit");
    let req = back.take_request().expect("req");
    back.keep_mapped(req.seg[0].gref).expect("map");
    let r = back.execute(&req);
    back.respond(&r);
    let (done, e) = poll_err(&mut front);
    assert!(
        done.is_empty(),
        "the buffer is not handed back while mapped"
    );
    assert_eq!(e, BlkError::GrantStillMapped);
    assert_eq!(front.held(), 1);
    // Reset cannot take it back while the backend holds it.
    let mut v = Vec::new();
    assert_eq!(
        front.reset(&mut |t, r| v.push((t, r))),
        Err(BlkError::GrantStillMapped)
    );
    assert!(v.is_empty());
    back.release_kept();
    drop(back);
    front.reset(&mut |t, r| v.push((t, r))).expect("reset");
    assert_eq!(v, vec![(tok, Err(BlkError::Aborted))]);
    let mut back =
        FakeBlkBackend::connect(&plat, front.ring_refs(), front.event_channel(), SECTORS)
            .expect("reconnect");
    front.flush().expect("flush");
    assert_eq!(back.process(), 1);
}

#[test]
fn reset_with_backend_still_mapping_the_ring_leaks_not_frees() {
    let plat = LocalPlatform::new();
    let (mut front, back) = pair(&plat, cfg());
    let t = front.flush().expect("flush");
    let mut v = Vec::new();
    front.reset(&mut |t, r| v.push((t, r))).expect("reset");
    assert_eq!(v, vec![(t, Err(BlkError::Aborted))]);
    assert_eq!(front.leaked_ring_pages(), 1);
    drop(back);
}
