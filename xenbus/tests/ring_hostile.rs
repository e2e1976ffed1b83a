//! A hostile peer writes whatever it likes to the shared page: every such
//! write must give a typed error that blames the peer and leave the ring
//! stopped (the same error from every later call, nothing read or written),
//! never a panic, a loop or an out-of-bounds access.

use core::ptr::NonNull;

use xenbus::platform::inproc::SharedMem;
use xenbus::ring::{ring_size, BackRing, FrontRing, IdTracker, RingError, RingRegion, PAGE_SIZE};
use xenbus::wire::blkif::{BlkifRequest, BlkifResponse};
use xenbus::wire::netif::{NetifTxRequest, NetifTxResponse};
use xenbus::wire::sring::{REQ_PROD, RSP_PROD, SRING_HEADER_SIZE};

type Front<'a> = FrontRing<'a, BlkifRequest, BlkifResponse>;
type Back<'a> = BackRing<'a, BlkifRequest, BlkifResponse>;

const STARTS: [u32; 3] = [0, 0xFFFF_FFF0, 0x7FFF_FFFF];

fn req(id: u64) -> BlkifRequest {
    BlkifRequest {
        id,
        sector_number: id * 8,
        nr_segments: 1,
        ..Default::default()
    }
}

fn rsp(id: u64) -> BlkifResponse {
    BlkifResponse {
        id,
        ..Default::default()
    }
}

/// Every call on a stopped back ring returns `err`.
fn assert_back_stopped(b: &mut Back<'_>, err: RingError) {
    assert!(err.is_peer_fault(), "{err}");
    assert!(err.should_reconnect());
    assert_eq!(b.fault(), Some(err));
    assert_eq!(b.consume_request(), Err(err));
    assert_eq!(b.unconsumed_requests(), Err(err));
    assert_eq!(b.push_response(&rsp(0)), Err(err));
    assert_eq!(b.push_responses(), Err(err));
    assert_eq!(b.push_responses_and_check_notify(), Err(err));
    assert_eq!(b.final_check_for_requests(), Err(err));
}

fn assert_front_stopped(f: &mut Front<'_>, err: RingError) {
    assert!(err.is_peer_fault(), "{err}");
    assert_eq!(f.fault(), Some(err));
    assert_eq!(f.consume_response(), Err(err));
    assert_eq!(f.unconsumed_responses(), Err(err));
    assert_eq!(f.push_request(&req(0)), Err(err));
    assert_eq!(f.push_requests(), Err(err));
    assert_eq!(f.push_requests_and_check_notify(), Err(err));
    assert_eq!(f.final_check_for_responses(), Err(err));
}

#[test]
fn backend_rejects_request_overrun() {
    for start in STARTS {
        let mem = SharedMem::new(1);
        let _f = Front::init_at(mem.region(), start).expect("init");
        let mut b = Back::attach(mem.region(), start).expect("attach");
        let size = b.size();
        // Exactly `size` unanswered requests is legal...
        mem.store_u32(REQ_PROD, start.wrapping_add(size));
        assert_eq!(b.unconsumed_requests(), Ok(size));
        // ...one more is not. (`consume_request` would first use up the
        // validated snapshot of `size` requests; a fresh look sees it now.)
        mem.store_u32(REQ_PROD, start.wrapping_add(size + 1));
        let err = b.unconsumed_requests().expect_err("overrun");
        assert_eq!(
            err,
            RingError::RequestOverrun {
                req_prod: start.wrapping_add(size + 1),
                rsp_prod_pvt: start
            }
        );
        assert_back_stopped(&mut b, err);
        // Putting the index back does not revive a stopped ring.
        mem.store_u32(REQ_PROD, start);
        assert_back_stopped(&mut b, err);
    }
}

#[test]
fn backend_rejects_overrun_after_consuming() {
    let mem = SharedMem::new(1);
    let start = 0xFFFF_FFF0;
    let mut f = Front::init_at(mem.region(), start).expect("init");
    let mut b = Back::attach(mem.region(), start).expect("attach");
    let size = b.size();
    for i in 0..size {
        f.push_request(&req(u64::from(i))).expect("room");
    }
    f.push_requests().expect("push");
    for i in 0..size {
        assert_eq!(
            b.consume_request().expect("ok").map(|r| r.id),
            Some(u64::from(i))
        );
    }
    // All consumed, none answered: the backend must not read more even if the
    // frontend claims more.
    mem.store_u32(REQ_PROD, start.wrapping_add(size + 3));
    let err = b.consume_request().expect_err("overrun");
    assert!(matches!(err, RingError::RequestOverrun { .. }));
    assert_back_stopped(&mut b, err);
}

#[test]
fn backend_rejects_rewound_producer() {
    let mem = SharedMem::new(1);
    let start = 0xFFFF_FFFE;
    let mut f = Front::init_at(mem.region(), start).expect("init");
    let mut b = Back::attach(mem.region(), start).expect("attach");
    for i in 0..5 {
        f.push_request(&req(i)).expect("room");
    }
    f.push_requests().expect("push");
    for _ in 0..5 {
        b.consume_request().expect("ok").expect("request");
    }
    b.push_response(&rsp(0)).expect("answer one");
    mem.store_u32(REQ_PROD, start.wrapping_add(2));
    let err = b.consume_request().expect_err("rewound");
    assert_eq!(
        err,
        RingError::RequestProducerRewound {
            req_prod: start.wrapping_add(2),
            req_cons: start.wrapping_add(5)
        }
    );
    assert_back_stopped(&mut b, err);
}

#[test]
fn backend_rejects_garbage_indices() {
    for garbage in [0x8000_0000u32, u32::MAX, 33, 0xDEAD_BEEF] {
        let mem = SharedMem::new(1);
        let _f = Front::init(mem.region()).expect("init");
        let mut b = Back::attach(mem.region(), 0).expect("attach");
        mem.store_u32(REQ_PROD, garbage);
        let err = b.final_check_for_requests().expect_err("garbage");
        assert!(err.is_peer_fault());
        assert_back_stopped(&mut b, err);
    }
}

#[test]
fn frontend_rejects_response_overrun() {
    for start in STARTS {
        let mem = SharedMem::new(1);
        let mut f = Front::init_at(mem.region(), start).expect("init");
        for i in 0..3 {
            f.push_request(&req(i)).expect("room");
        }
        f.push_requests_and_check_notify().expect("push");
        // Three responses for three requests is fine...
        mem.store_u32(RSP_PROD, start.wrapping_add(3));
        assert_eq!(f.unconsumed_responses(), Ok(3));
        // ...a fourth is made up.
        mem.store_u32(RSP_PROD, start.wrapping_add(4));
        let err = f.unconsumed_responses().expect_err("overrun");
        assert_eq!(
            err,
            RingError::ResponseOverrun {
                rsp_prod: start.wrapping_add(4),
                rsp_cons: start,
                outstanding: 3
            }
        );
        assert_front_stopped(&mut f, err);
    }
}

#[test]
fn frontend_rejects_overrun_after_consuming() {
    let start = 0xFFFF_FFFE;
    let mem = SharedMem::new(1);
    let mut f = Front::init_at(mem.region(), start).expect("init");
    let mut b = Back::attach(mem.region(), start).expect("attach");
    for i in 0..3 {
        f.push_request(&req(i)).expect("room");
    }
    f.push_requests().expect("push");
    while let Some(r) = b.consume_request().expect("ok") {
        b.push_response(&rsp(r.id)).expect("answer");
    }
    b.push_responses().expect("push");
    for i in 0..3 {
        assert_eq!(f.consume_response().expect("ok").map(|r| r.id), Some(i));
    }
    // Nothing outstanding, yet the backend claims one more response.
    mem.store_u32(RSP_PROD, start.wrapping_add(4));
    let err = f.consume_response().expect_err("overrun");
    assert_eq!(
        err,
        RingError::ResponseOverrun {
            rsp_prod: start.wrapping_add(4),
            rsp_cons: start.wrapping_add(3),
            outstanding: 0
        }
    );
    assert_front_stopped(&mut f, err);
}

#[test]
fn frontend_rejects_garbage_and_rewound_rsp_prod() {
    for garbage in [0x8000_0000u32, u32::MAX, 0x1000, 0xFFFF_FFEF] {
        let mem = SharedMem::new(1);
        let start = 0xFFFF_FFF0;
        let mut f = Front::init_at(mem.region(), start).expect("init");
        f.push_request(&req(1)).expect("room");
        f.push_requests().expect("push");
        mem.store_u32(RSP_PROD, garbage);
        let err = f.final_check_for_responses().expect_err("garbage");
        assert!(matches!(err, RingError::ResponseOverrun { .. }), "{err}");
        assert_front_stopped(&mut f, err);
    }
}

#[test]
fn frontend_rejects_responses_to_unpublished_requests() {
    let mem = SharedMem::new(1);
    let mut f = Front::init(mem.region()).expect("init");
    // Queued but not pushed: the backend cannot legitimately answer it.
    f.push_request(&req(1)).expect("room");
    mem.store_u32(RSP_PROD, 1);
    let err = f.consume_response().expect_err("unpublished");
    assert!(matches!(
        err,
        RingError::ResponseOverrun { outstanding: 0, .. }
    ));
    assert_front_stopped(&mut f, err);
}

#[test]
fn frontend_never_exceeds_ring_size() {
    let mem = SharedMem::new(1);
    let mut f = Front::init_at(mem.region(), 0xFFFF_FFF8).expect("init");
    let size = f.size();
    assert_eq!(size, 32);
    for i in 0..size {
        f.push_request(&req(u64::from(i))).expect("room");
    }
    assert!(f.is_full());
    let err = f.push_request(&req(99)).expect_err("full");
    assert_eq!(err, RingError::Full);
    assert!(!err.is_peer_fault());
    // Full is not a fault: the ring keeps working.
    assert_eq!(f.fault(), None);
    f.push_requests().expect("push");
    let mut b = Back::attach(mem.region(), 0xFFFF_FFF8).expect("attach");
    let r = b.consume_request().expect("ok").expect("request");
    b.push_response(&rsp(r.id)).expect("answer");
    b.push_responses().expect("push");
    assert_eq!(f.consume_response().expect("ok").map(|r| r.id), Some(0));
    f.push_request(&req(100)).expect("room again");
}

#[test]
fn response_copy_is_taken_once() {
    let mem = SharedMem::new(1);
    let mut f = Front::init(mem.region()).expect("init");
    f.push_request(&req(7)).expect("room");
    f.push_requests().expect("push");
    let mut b = Back::attach(mem.region(), 0).expect("attach");
    let r = b.consume_request().expect("ok").expect("request");
    // The frontend rewrites the slot after the backend copied it: the copy
    // the backend acts on does not change.
    mem.write_bytes(SRING_HEADER_SIZE, &[0xFF; 112]);
    assert_eq!(r, req(7));
}

#[test]
fn id_tracker_rejects_unknown_and_duplicate_ids() {
    let mut ids = IdTracker::new(4);
    let a = ids.alloc().expect("id");
    let b = ids.alloc().expect("id");
    assert_eq!((a, b), (0, 1));
    assert_eq!(ids.complete(u64::from(a)), Ok(a));
    // Answered twice.
    let err = ids.complete(u64::from(a)).expect_err("duplicate");
    assert_eq!(err, RingError::DuplicateResponseId { id: 0 });
    assert!(err.is_peer_fault());
    // Latched.
    assert_eq!(ids.alloc(), Err(err));
    assert_eq!(ids.complete(u64::from(b)), Err(err));

    for bad in [3u64, 4, u64::MAX, 1 << 32] {
        let mut ids = IdTracker::new(4);
        ids.alloc().expect("id");
        let err = ids.complete(bad).expect_err("unknown");
        assert_eq!(err, RingError::UnknownResponseId { id: bad });
        assert!(err.is_peer_fault());
        assert_eq!(ids.fault(), Some(err));
    }
}

#[test]
fn id_tracker_is_bounded() {
    let mut ids = IdTracker::new(32);
    for _ in 0..32 {
        ids.alloc().expect("id");
    }
    assert_eq!(ids.alloc(), Err(RingError::IdsExhausted));
    assert!(!RingError::IdsExhausted.is_peer_fault());
    assert_eq!(ids.in_flight(), 32);
    ids.complete(5).expect("in flight");
    assert_eq!(ids.alloc(), Ok(5));
}

/// The frontend's protocol code latches an id fault into the ring.
#[test]
fn id_fault_stops_the_front_ring() {
    let mem = SharedMem::new(1);
    let mut f = Front::init(mem.region()).expect("init");
    let mut ids = IdTracker::new(f.size());
    let mut b = Back::attach(mem.region(), 0).expect("attach");
    for _ in 0..2 {
        let id = ids.alloc().expect("id");
        f.push_request(&req(u64::from(id))).expect("room");
    }
    f.push_requests().expect("push");
    // A backend that answers request 0 twice.
    b.consume_request().expect("ok");
    b.consume_request().expect("ok");
    b.push_response(&rsp(0)).expect("answer");
    b.push_response(&rsp(0)).expect("answer");
    b.push_responses().expect("push");
    let first = f.consume_response().expect("ok").expect("response");
    ids.complete(first.id).expect("live");
    let second = f.consume_response().expect("ok").expect("response");
    let err = ids.complete(second.id).expect_err("duplicate");
    assert_eq!(f.stop(err), err);
    assert_front_stopped(&mut f, err);
    // A later fault does not replace the first.
    assert_eq!(f.stop(RingError::UnknownResponseId { id: 9 }), err);
}

#[test]
fn backend_cannot_answer_more_than_it_consumed() {
    let mem = SharedMem::new(1);
    let _f = Front::init(mem.region()).expect("init");
    let mut b = Back::attach(mem.region(), 0).expect("attach");
    let err = b.push_response(&rsp(1)).expect_err("nothing to answer");
    assert_eq!(err, RingError::NoRequestToAnswer);
    assert!(!err.is_peer_fault());
    assert_eq!(b.fault(), None);
}

#[test]
fn regions_that_cannot_hold_a_ring_are_refused() {
    let mem = SharedMem::new(1);
    // Too small for the header plus one 112-byte slot.
    let base = NonNull::new(mem.as_ptr()).expect("non-null");
    // SAFETY: a prefix of `mem`, which outlives the region and is only
    // accessed atomically.
    let small = unsafe { RingRegion::new(base, SRING_HEADER_SIZE + 100) }.expect("region");
    assert_eq!(
        Front::init(small).expect_err("too small"),
        RingError::BadRegion { len: 164 }
    );
    let odd_base = NonNull::new(mem.as_ptr().wrapping_add(2)).expect("non-null");
    // SAFETY: as above; the constructor rejects it before any access.
    let odd = unsafe { RingRegion::new(odd_base, 200) };
    assert_eq!(
        odd.expect_err("misaligned"),
        RingError::BadRegion { len: 200 }
    );
    // SAFETY: as above.
    let tiny = unsafe { RingRegion::new(base, 8) };
    assert_eq!(tiny.expect_err("tiny"), RingError::BadRegion { len: 8 });
}

#[test]
fn multi_page_geometry() {
    for (order, want) in [(0u32, 32u32), (1, 64), (2, 128), (3, 256), (4, 512)] {
        let mem = SharedMem::with_order(order);
        let f = Front::init(mem.region()).expect("init");
        assert_eq!(f.size(), want);
        assert_eq!(ring_size(PAGE_SIZE << order, 112), want);
        let tx = FrontRing::<NetifTxRequest, NetifTxResponse>::init(mem.region()).expect("init");
        assert_eq!(tx.size(), 256 << order);
    }
}

#[test]
fn errors_display_who_is_at_fault() {
    let all = [
        RingError::BadRegion { len: 3 },
        RingError::Full,
        RingError::NoRequestToAnswer,
        RingError::IdsExhausted,
        RingError::RequestOverrun {
            req_prod: 1,
            rsp_prod_pvt: 2,
        },
        RingError::RequestProducerRewound {
            req_prod: 1,
            req_cons: 2,
        },
        RingError::ResponseOverrun {
            rsp_prod: 1,
            rsp_cons: 2,
            outstanding: 3,
        },
        RingError::UnknownResponseId { id: 1 },
        RingError::DuplicateResponseId { id: 1 },
    ];
    for e in all {
        let msg = e.to_string();
        assert!(!msg.is_empty());
        if e.is_peer_fault() {
            assert!(
                msg.starts_with("frontend") || msg.starts_with("backend"),
                "{msg}"
            );
        }
    }
}

/// Thousands of requests Rust-to-Rust across the wrap, with hostile
/// scribbles over request slots the backend already copied: nothing the
/// peer writes after the copy reaches the backend.
#[test]
fn wraparound_exchange_rust_to_rust() {
    let start = 0xFFFF_FFF0;
    let mem = SharedMem::new(1);
    let mut f = Front::init_at(mem.region(), start).expect("init");
    let mut b = Back::attach(mem.region(), start).expect("attach");
    let mut ids = IdTracker::new(f.size());
    let mut next = 0u64;
    let mut done = 0u64;
    while done < 10_000 {
        while !f.is_full() && next < 10_000 {
            let id = ids.alloc().expect("id");
            f.push_request(&req(u64::from(id) | next << 8))
                .expect("room");
            next += 1;
        }
        f.push_requests_and_check_notify().expect("push");
        while let Some(r) = b.consume_request().expect("honest frontend") {
            b.push_response(&rsp(r.id)).expect("answer");
        }
        b.push_responses_and_check_notify().expect("push");
        while let Some(r) = f.consume_response().expect("honest backend") {
            ids.complete(r.id & 0xFF).expect("live id");
            done += 1;
        }
    }
    assert!(f.req_prod_pvt() < start, "indices wrapped");
    assert_eq!(f.req_prod_pvt(), start.wrapping_add(10_000));
}
