//! A frontend consuming responses from a hostile backend. The input is a
//! script: peer writes to the shared page (response producer, event index,
//! any word of any slot) interleaved with frontend calls, and every response
//! id goes through the id tracker. The frontend must not panic, must never
//! have more than `size` requests outstanding, and once it reports a peer
//! fault must keep reporting that same fault.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenbus::platform::inproc::SharedMem;
use xenbus::ring::{FrontRing, IdTracker, RingError};
use xenbus::wire::blkif::{BlkifRequest, BlkifResponse, OP_READ};
use xenbus::wire::sring::{REQ_EVENT, RSP_PROD};

struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u32(&mut self) -> Option<u32> {
        let mut w = [0u8; 4];
        for b in &mut w {
            *b = self.u8()?;
        }
        Some(u32::from_le_bytes(w))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut s = Script(data);
    let (Some(order), Some(start)) = (s.u8(), s.u32()) else {
        return;
    };
    let mem = SharedMem::with_order(u32::from(order % 3));
    let Ok(mut front) = FrontRing::<BlkifRequest, BlkifResponse>::init_at(mem.region(), start)
    else {
        return;
    };
    let size = front.size();
    let mut ids = IdTracker::new(size);
    let mut fault: Option<RingError> = None;

    while let Some(op) = s.u8() {
        // Ops 0..=3 are peer writes, not calls on the ring.
        let peer_write = op % 9 <= 3;
        let result: Result<(), RingError> = match op % 9 {
            0 => {
                let Some(v) = s.u32() else { break };
                mem.store_u32(RSP_PROD, v);
                Ok(())
            }
            1 => {
                let Some(d) = s.u8() else { break };
                mem.store_u32(
                    RSP_PROD,
                    front.rsp_cons().wrapping_add(d as i8 as i32 as u32),
                );
                Ok(())
            }
            2 => {
                let (Some(off), Some(v)) = (s.u32(), s.u32()) else {
                    break;
                };
                mem.store_u32((off as usize % mem.len()) & !3, v);
                Ok(())
            }
            3 => {
                let Some(v) = s.u32() else { break };
                mem.store_u32(REQ_EVENT, v);
                Ok(())
            }
            4 => {
                if front.is_full() || fault.is_some() {
                    match front.push_request(&BlkifRequest::default()) {
                        Err(RingError::Full) => Ok(()),
                        other => other,
                    }
                } else {
                    match ids.alloc() {
                        Ok(id) => front.push_request(&BlkifRequest {
                            operation: OP_READ,
                            id: u64::from(id),
                            ..Default::default()
                        }),
                        // The tracker can only run out if ids leaked.
                        Err(e) => panic!("ids leaked: {e}"),
                    }
                }
            }
            5 => front.push_requests_and_check_notify().map(|_| ()),
            6 | 7 => match front.consume_response() {
                Ok(Some(rsp)) => match ids.complete(rsp.id) {
                    Ok(_) => Ok(()),
                    Err(e) => Err(front.stop(e)),
                },
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            _ => front.final_check_for_responses().map(|_| ()),
        };
        if peer_write {
            continue;
        }
        match (result, fault) {
            (Err(e), None) => {
                assert!(e.is_peer_fault(), "local error from a correct caller: {e}");
                assert_eq!(front.fault(), Some(e));
                fault = Some(e);
            }
            (Err(e), Some(f)) => assert_eq!(e, f, "a stopped ring changed its fault"),
            (Ok(()), Some(f)) => panic!("a stopped ring ({f}) accepted a call"),
            (Ok(()), None) => {}
        }
        let outstanding = front.req_prod_pvt().wrapping_sub(front.rsp_cons());
        assert!(outstanding <= size);
        assert!(front.free_requests() <= size);
        if fault.is_none() {
            // Every queued request holds exactly one id.
            assert_eq!(outstanding as usize, ids.in_flight());
        }
    }
});
