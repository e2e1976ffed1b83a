//! A backend consuming requests from a hostile frontend. The input is a
//! script: peer writes to the shared page (producer index, event index, any
//! word of any slot) interleaved with backend calls. Whatever the peer
//! writes, the backend must not panic, must keep its indices within one ring,
//! and once it reports a peer fault must keep reporting that same fault.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenbus::platform::inproc::SharedMem;
use xenbus::ring::{BackRing, FrontRing, RingError};
use xenbus::wire::blkif::{
    BlkifRequest, BlkifResponse, MAX_SEGMENTS_PER_REQUEST, RSP_ERROR, RSP_OKAY,
};
use xenbus::wire::sring::{REQ_PROD, RSP_EVENT};

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
    // The frontend initialised the page honestly; from here on it is hostile.
    if FrontRing::<BlkifRequest, BlkifResponse>::init_at(mem.region(), start).is_err() {
        return;
    }
    let Ok(mut back) = BackRing::<BlkifRequest, BlkifResponse>::attach(mem.region(), start) else {
        return;
    };
    let size = back.size();
    let mut fault: Option<RingError> = None;
    let mut in_hand: Vec<u64> = Vec::new();

    while let Some(op) = s.u8() {
        // Ops 0..=3 are peer writes, not calls on the ring.
        let peer_write = op % 9 <= 3;
        let result: Result<(), RingError> = match op % 9 {
            0 => {
                let Some(v) = s.u32() else { break };
                mem.store_u32(REQ_PROD, v);
                Ok(())
            }
            1 => {
                // A plausible-looking producer near our consumer.
                let Some(d) = s.u8() else { break };
                mem.store_u32(
                    REQ_PROD,
                    back.req_cons().wrapping_add(d as i8 as i32 as u32),
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
                mem.store_u32(RSP_EVENT, v);
                Ok(())
            }
            4 | 5 => back.consume_request().map(|r| {
                if let Some(r) = r {
                    // What a block backend does with the copy: check it.
                    let _valid = usize::from(r.nr_segments) <= MAX_SEGMENTS_PER_REQUEST
                        && r.seg
                            .iter()
                            .all(|g| g.first_sect <= g.last_sect && g.last_sect < 8);
                    in_hand.push(r.id);
                }
            }),
            6 => match in_hand.first().copied() {
                Some(id) => {
                    let status = if id & 1 == 0 { RSP_OKAY } else { RSP_ERROR };
                    let r = back.push_response(&BlkifResponse {
                        id,
                        status,
                        ..Default::default()
                    });
                    if r.is_ok() {
                        in_hand.remove(0);
                    }
                    r
                }
                None => match back.push_response(&BlkifResponse::default()) {
                    Err(RingError::NoRequestToAnswer) => Ok(()),
                    other => other,
                },
            },
            7 => back.push_responses_and_check_notify().map(|_| ()),
            _ => back.final_check_for_requests().map(|_| ()),
        };
        if peer_write {
            continue;
        }
        match (result, fault) {
            (Err(e), None) => {
                assert!(e.is_peer_fault(), "local error from a correct caller: {e}");
                assert_eq!(back.fault(), Some(e));
                fault = Some(e);
            }
            (Err(e), Some(f)) => assert_eq!(e, f, "a stopped ring changed its fault"),
            (Ok(()), Some(f)) => panic!("a stopped ring ({f}) accepted a call"),
            (Ok(()), None) => {}
        }
        // Never more in hand than one ring's worth.
        let in_flight = back.req_cons().wrapping_sub(back.rsp_prod_pvt());
        assert!(in_flight <= size);
        assert_eq!(in_flight as usize, in_hand.len());
    }
});
