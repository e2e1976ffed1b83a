//! A frontend and a backend on two threads, set up the way real drivers are:
//! the frontend allocates ring pages, grants them and allocates an unbound
//! event channel; the backend maps the grants and binds the channel. All of
//! it through the platform traits, on the in-process platform.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use xenbus::platform::inproc::LocalPlatform;
use xenbus::platform::{EventChannels, GrantMapper, GrantTable, PlatformError, SharedPages};
use xenbus::ring::{BackRing, FrontRing, IdTracker, RingRegion, PAGE_SIZE};
use xenbus::wire::blkif::{BlkifRequest, BlkifResponse, OP_READ, OP_WRITE, RSP_OKAY};

const BACKEND: u16 = 0;
const FRONTEND: u16 = 7;
const TOTAL: u64 = 50_000;

fn run(order: u32, start: u32) {
    let p = LocalPlatform::new();
    let pages = 1usize << order;

    // Frontend: pages, grants, port.
    let ring_mem = p.alloc_pages(pages).expect("pages");
    let grefs: Vec<u32> = (0..pages)
        .map(|i| {
            let page = std::ptr::NonNull::new(ring_mem.as_ptr().wrapping_add(i * PAGE_SIZE))
                .expect("page");
            p.grant(BACKEND, page, false).expect("grant")
        })
        .collect();
    assert!(
        grefs.iter().all(|g| *g >= 8),
        "reserved refs are never handed out"
    );
    let front_port = p.alloc_unbound(BACKEND).expect("port");

    // Backend: map, bind.
    let mapped = p.map(FRONTEND, &grefs, true).expect("map");
    let back_port = p.bind_interdomain(FRONTEND, front_port).expect("bind");
    let front_event = p.event(front_port).expect("front event");
    let back_event = p.event(back_port).expect("back event");

    {
        // SAFETY: `alloc_pages` returned `pages` zeroed pages that stay valid
        // until `free_pages` below, after both rings are gone; they are only
        // accessed through rings (atomics).
        let front_region = unsafe { RingRegion::new(ring_mem, pages * PAGE_SIZE) }.expect("region");
        // SAFETY: the mapping is valid for `pages` pages until `unmap` below,
        // after both rings are gone (GrantMapper's contract).
        let back_region = unsafe { RingRegion::new(mapped, pages * PAGE_SIZE) }.expect("region");
        let mut front =
            FrontRing::<BlkifRequest, BlkifResponse>::init_at(front_region, start).expect("init");
        let mut back =
            BackRing::<BlkifRequest, BlkifResponse>::attach(back_region, start).expect("attach");
        let stop = AtomicBool::new(false);
        let timeout = Duration::from_secs(20);

        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("blkback-test".into())
                .spawn_scoped(s, || {
                    // A bound port starts pending: check the ring first.
                    let mut seen = 0;
                    loop {
                        while let Some(req) = back.consume_request().expect("honest frontend") {
                            back.push_response(&BlkifResponse {
                                id: req.id,
                                operation: req.operation,
                                status: RSP_OKAY,
                                ..Default::default()
                            })
                            .expect("answer");
                        }
                        if back.push_responses_and_check_notify().expect("push") {
                            p.notify(back_port).expect("notify");
                        }
                        if back.final_check_for_requests().expect("final") {
                            continue;
                        }
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let now = back_event.wait(seen, timeout);
                        assert_ne!(now, seen, "backend lost a wake-up");
                        seen = now;
                    }
                })
                .expect("spawn");

            let mut ids = IdTracker::new(front.size());
            let (mut sent, mut done) = (0u64, 0u64);
            let mut seen = 0;
            while done < TOTAL {
                let mut queued = false;
                while sent < TOTAL && !front.is_full() {
                    let id = ids.alloc().expect("id per slot");
                    front
                        .push_request(&BlkifRequest {
                            operation: if sent & 1 == 0 { OP_READ } else { OP_WRITE },
                            id: u64::from(id),
                            sector_number: sent,
                            ..Default::default()
                        })
                        .expect("room");
                    sent += 1;
                    queued = true;
                }
                if queued && front.push_requests_and_check_notify().expect("push") {
                    p.notify(front_port).expect("notify");
                }
                let mut got = false;
                while let Some(rsp) = front.consume_response().expect("honest backend") {
                    ids.complete(rsp.id).expect("live id");
                    assert_eq!(rsp.status, RSP_OKAY);
                    done += 1;
                    got = true;
                }
                if got || front.final_check_for_responses().expect("final") {
                    continue;
                }
                let now = front_event.wait(seen, timeout);
                assert_ne!(
                    now, seen,
                    "frontend lost a wake-up (sent {sent}, done {done})"
                );
                seen = now;
            }
            assert_eq!(ids.in_flight(), 0);
            stop.store(true, Ordering::SeqCst);
            p.notify(front_port).expect("notify");
        });
    }

    // Teardown in the order the contracts ask for: the grant cannot be
    // revoked while mapped.
    // SAFETY: the grant is live (it came from `grant` and was not revoked).
    let early = unsafe { p.end_access(grefs[0]) };
    assert_eq!(early, Err(PlatformError::GrantInUse));
    // SAFETY: `mapped` came from `map` with `pages` pages and the rings using
    // it are gone.
    unsafe { p.unmap(mapped, pages) };
    for g in grefs {
        // SAFETY: each grant is live and no longer mapped.
        unsafe { p.end_access(g) }.expect("revoke");
    }
    p.close(back_port);
    p.close(front_port);
    // SAFETY: allocated above with `pages`, grants revoked, rings gone.
    unsafe { p.free_pages(ring_mem, pages) };
}

#[test]
fn two_threads_one_page_across_wrap() {
    run(0, 0xFFFF_FFF0);
}

#[test]
fn two_threads_multi_page() {
    run(2, 0x7FFF_FF00);
    run(4, 0);
}
