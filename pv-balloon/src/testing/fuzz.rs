//! The drivers behind the cargo-fuzz targets in `pv-balloon/fuzz/` (and the
//! deterministic smoke test in `tests/fuzz_smoke.rs`).
//!
//! [`virtio`] reads the input as a script of glue calls and hostile device
//! actions (config values, honest processing, used elements with any id and
//! length, used indices set to anything, stats returns out of turn,
//! DEVICE_NEEDS_RESET) and checks, besides "no panic, no hang":
//! - every page handed in comes back at most once, and only after it was
//!   handed in; after the final reset every page is back;
//! - the balloon's frame accounting matches the pages it holds;
//! - a stopped balloon accepts nothing until reset.
//!
//! [`xen`] does the same for the Xen balloon: arbitrary `memory/target`
//! bytes and reservation calls that do part, fail or lie.

use std::collections::BTreeSet;
use std::vec;
use std::vec::Vec;

use xenbus::platform::PlatformError;

use super::virtio::{FakeBalloon, IdentityHal};
use super::xen::{Behaviour, FakeReservation};
use crate::virtio::{VirtioBalloon, VirtioBalloonConfig, VirtioDeviceId, VirtioFeatures};
use crate::xen::XenBalloon;
use crate::{BalloonError, Event, FreeRange, Limits, MemStats, Plan, StatTag};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
}

/// Pages handed in and not yet given back.
#[derive(Default)]
struct Ledger {
    out: BTreeSet<u64>,
    next: u64,
}

impl Ledger {
    fn fresh(&mut self, n: usize, page: u64) -> Vec<u64> {
        (0..n)
            .map(|_| {
                self.next += 1;
                self.next * page
            })
            .collect()
    }
    fn give(&mut self, pages: &[u64]) {
        for p in pages {
            assert!(self.out.insert(*p), "page {p:#x} handed in twice");
        }
    }
    fn back(&mut self, p: u64) {
        assert!(self.out.remove(&p), "page {p:#x} released but not held");
    }
}

const GUEST: u64 = 64 << 20;

/// Run one virtio script; see the module docs.
pub fn virtio(data: &[u8]) {
    let mut s = Bytes(data);
    let features = VirtioFeatures::from_bits_retain(u64::from(s.u16().unwrap_or(0)))
        | VirtioFeatures::VERSION_1;
    let knobs = s.u8().unwrap_or(0);
    let mut limits = Limits::new(GUEST, 8 << 20);
    if knobs & 1 == 1 {
        limits.page_size = 16384;
    }
    if knobs & 2 == 2 {
        // A glue asking for larger buffers than Linux's 256 frames.
        limits.batch_frames = 1024;
    }
    let page = limits.page_size;
    let dev = FakeBalloon::new(features, 64);
    // Free memory for reports: outlives the balloon (dropped after it).
    let mut mem = vec![0u8; 9 * 4096];
    let base = (mem.as_mut_ptr() as usize).next_multiple_of(4096);
    let Ok(mut b) = VirtioBalloon::<IdentityHal, FakeBalloon, u64>::new(
        dev.clone(),
        VirtioDeviceId::TRADITIONAL_BALLOON,
        VirtioBalloonConfig::new(limits),
    ) else {
        return;
    };
    let mut pages = Ledger::default();
    let mut reporting = false;
    let mut sink_events: Vec<Event<u64>> = Vec::new();
    let mut steps = 0;
    while let Some(op) = s.u8() {
        steps += 1;
        if steps > 400 {
            break;
        }
        let q = u16::from(op >> 5) % 5;
        match op % 14 {
            0 => dev.set_num_pages(s.u32().unwrap_or(0)),
            1 => {
                let n = match b.plan() {
                    Plan::Inflate { pages } => pages,
                    _ => usize::from(s.u8().unwrap_or(1)),
                };
                let mut v = pages.fresh(n, page);
                let given = v.clone();
                match b.inflate(&mut v) {
                    Ok(_) => {
                        assert!(v.is_empty());
                        pages.give(&given);
                    }
                    Err(e) => {
                        assert_eq!(v, given, "pages lost on error {e}");
                        if b.fault().is_some() {
                            assert_eq!(e, BalloonError::Stopped);
                        }
                    }
                }
            }
            2 => {
                let n = usize::from(s.u8().unwrap_or(1));
                let _ = b.deflate(n, &mut |e| sink_events.push(e));
            }
            3 => {
                dev.process(q);
            }
            4 => dev.push_used(q, u32::from(s.u16().unwrap_or(0)), s.u32().unwrap_or(0)),
            5 => dev.set_used_idx(q, s.u16().unwrap_or(0)),
            6 => {
                dev.request_stats();
            }
            7 => {
                let mut st = MemStats::default();
                st.set(StatTag::MemFree, u64::from(s.u32().unwrap_or(0)));
                let _ = b.supply_stats(&st);
            }
            8 => {
                let r = b.poll(&mut |e| sink_events.push(e));
                if let Err(e) = r {
                    assert!(e.needs_reset(), "poll failed without stopping: {e}");
                    assert_eq!(b.plan(), Plan::Idle);
                }
            }
            9 => {
                let n = usize::from(s.u8().unwrap_or(1));
                let _ = b.oom_deflate(n, &mut |e| sink_events.push(e));
            }
            10 => {
                let _ = b.reset(&mut |e| sink_events.push(e));
                reporting = false;
            }
            11 if !reporting => {
                let k = usize::from(s.u8().unwrap_or(0) % 4);
                let mut ranges: Vec<FreeRange> = (0..k)
                    .filter_map(|i| {
                        let ptr = core::ptr::NonNull::new((base + 2 * i * 4096) as *mut u8)?;
                        Some(FreeRange { ptr, len: 4096 })
                    })
                    .collect();
                // SAFETY: the ranges lie in `mem`, which outlives the
                // balloon and is not touched by this driver.
                if let Ok(n) = unsafe { b.report_free(&mut ranges) } {
                    reporting = n > 0;
                }
            }
            12 => dev.set_needs_reset(),
            13 => {
                let _ = b.set_floor(u64::from(s.u16().unwrap_or(0)) * 8);
            }
            _ => {}
        }
        for e in sink_events.drain(..) {
            match e {
                Event::Released(p) => pages.back(p),
                Event::Reported(_) => reporting = false,
                _ => {}
            }
        }
        let st = b.status();
        let per = limits.frames_per_page();
        assert_eq!(st.held, b.held_pages() as u64 * per, "held accounting");
        assert!(st.target <= limits.guest_frames);
    }
    // A reset gives every page back.
    let mut back = Vec::new();
    let _ = b.reset(&mut |e| back.push(e));
    for e in back {
        if let Event::Released(p) = e {
            pages.back(p);
        }
    }
    assert!(pages.out.is_empty(), "pages never given back after reset");
    drop(b);
    drop(mem);
}

/// Run one Xen script; see the module docs.
pub fn xen(data: &[u8]) {
    let mut s = Bytes(data);
    let big = s.u8().unwrap_or(0) & 1 == 1;
    let mut limits = Limits::new(GUEST, 8 << 20);
    if big {
        limits.page_size = 16384;
    }
    let page = limits.page_size;
    let Ok(mut b) = XenBalloon::<FakeReservation, u64>::new(FakeReservation::default(), limits)
    else {
        return;
    };
    let mut pages = Ledger::default();
    let mut events: Vec<Event<u64>> = Vec::new();
    let behaviour = |s: &mut Bytes<'_>| match s.u8().unwrap_or(0) % 4 {
        0 => Behaviour::Honest,
        1 => Behaviour::Partial(usize::from(s.u16().unwrap_or(0))),
        2 => Behaviour::Fail(PlatformError::Os(-1)),
        _ => Behaviour::Claim(usize::from(s.u16().unwrap_or(0))),
    };
    let mut steps = 0;
    while let Some(op) = s.u8() {
        steps += 1;
        if steps > 400 {
            break;
        }
        match op % 6 {
            0 => {
                let len = usize::from(s.u8().unwrap_or(0) % 24);
                let v: Vec<u8> = (0..len).filter_map(|_| s.u8()).collect();
                let _ = b.set_target_value(&v, &mut |e| events.push(e));
            }
            1 => {
                let n = match b.plan() {
                    Plan::Inflate { pages } => pages,
                    _ => usize::from(s.u8().unwrap_or(1)),
                };
                let mut v = pages.fresh(n, page);
                let given = v.clone();
                let _ = b.inflate(&mut v);
                // What is left in `v` is still the glue's.
                let kept: BTreeSet<u64> = v.iter().copied().collect();
                let taken: Vec<u64> = given.into_iter().filter(|p| !kept.contains(p)).collect();
                pages.give(&taken);
            }
            2 => {
                let _ = b.deflate(usize::from(s.u8().unwrap_or(1)), &mut |e| events.push(e));
            }
            3 => {
                let _ = b.oom_deflate(usize::from(s.u8().unwrap_or(1)), &mut |e| events.push(e));
            }
            4 => b.reservation_mut().next_decrease = behaviour(&mut s),
            _ => b.reservation_mut().next_increase = behaviour(&mut s),
        }
        for e in events.drain(..) {
            if let Event::Released(p) = e {
                pages.back(p);
            }
        }
        assert_eq!(
            pages.out.len(),
            b.held_pages(),
            "pages held by the balloon and by the ledger differ"
        );
        assert_eq!(
            b.status().held,
            b.held_pages() as u64 * limits.frames_per_page()
        );
    }
}
