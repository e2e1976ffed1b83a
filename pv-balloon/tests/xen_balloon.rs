//! The Xen balloon against xenbus's in-process xenstore (watch-driven
//! target) and the fake reservation platform (exact frame lists, partial,
//! failing and lying hypercalls).

use core::time::Duration;

use pv_balloon::testing::xen::{Behaviour, FakeReservation};
use pv_balloon::xen::{parse_target_kib, XenBalloon, TARGET_NODE};
use pv_balloon::{BalloonError, Event, Limits, Plan};
use xenbus::platform::PlatformError;
use xenbus::xenstore::testing::ring_pair;
use xenbus::xenstore::Client;

type Balloon = XenBalloon<FakeReservation, u64>;

/// 1 GiB guest, 64 MiB floor.
const GUEST: u64 = 1 << 30;
const FLOOR: u64 = 64 << 20;
const GUEST_KIB: u64 = GUEST / 1024;

fn balloon() -> Balloon {
    match Balloon::new(FakeReservation::default(), Limits::new(GUEST, FLOOR)) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

fn kib(v: u64) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn pages(first_frame: u64, n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| (first_frame + i) * 4096).collect()
}

#[test]
fn target_values_are_strict_decimal_kib() {
    assert_eq!(parse_target_kib(b"1048576"), Ok(262_144));
    assert_eq!(parse_target_kib(b"7"), Ok(1));
    assert_eq!(parse_target_kib(b"0"), Ok(0));
    assert_eq!(parse_target_kib(b"18446744073709551615"), Ok(u64::MAX / 4));
    for bad in [
        &b""[..],
        b"-1",
        b"+1",
        b" 1",
        b"1\n",
        b"1e6",
        b"0x10",
        b"18446744073709551616",
        b"123456789012345678901",
        b"12\x0034",
    ] {
        assert_eq!(
            parse_target_kib(bad),
            Err(BalloonError::BadTarget),
            "{bad:?}"
        );
    }
}

#[test]
fn watch_driven_target_inflates_and_deflates_through_the_reservation() {
    let (ring, xs) = ring_pair(0xFFFF_FF00);
    let mut client = Client::new(ring);
    // The toolstack lowers the guest by 1 MiB (256 frames) + 4 KiB.
    xs.poke(TARGET_NODE, &kib(GUEST_KIB - 1028));
    Balloon::watch(&mut client).expect("watch");
    let mut b = balloon();
    let mut events = Vec::new();
    // The watch fires once at registration.
    let ev = client
        .next_event(Some(Duration::from_secs(30)))
        .expect("initial watch event");
    assert!(b
        .handle_watch(&mut client, &ev, &mut |e| events.push(e))
        .expect("handle"));
    assert_eq!(events, vec![Event::TargetChanged { frames: 257 }]);
    assert_eq!(b.memory_target(), Some(GUEST / 4096 - 257));

    assert_eq!(b.plan(), Plan::Inflate { pages: 256 });
    let mut p = pages(0x1000, 256);
    assert_eq!(b.inflate(&mut p), Ok(256));
    assert!(p.is_empty());
    assert_eq!(b.plan(), Plan::Inflate { pages: 1 });
    let mut p = pages(0x2000, 1);
    assert_eq!(b.inflate(&mut p), Ok(1));
    assert_eq!(b.plan(), Plan::Idle);
    let calls = &b.reservation_mut().calls;
    assert_eq!(calls.len(), 2);
    assert!(calls[0].0);
    assert_eq!(calls[0].1, (0x1000..0x1100).collect::<Vec<u64>>());
    assert_eq!(calls[1].1, vec![0x2000]);
    assert_eq!(b.reservation_mut().released.len(), 257);

    // Raising the target again: Xen backs the frames, then they are released.
    xs.poke(TARGET_NODE, &kib(GUEST_KIB - 4));
    let ev = client
        .next_event(Some(Duration::from_secs(30)))
        .expect("watch event");
    events.clear();
    b.handle_watch(&mut client, &ev, &mut |e| events.push(e))
        .expect("handle");
    assert_eq!(events, vec![Event::TargetChanged { frames: 1 }]);
    assert_eq!(b.plan(), Plan::Deflate { pages: 256 });
    events.clear();
    assert_eq!(b.deflate(1000, &mut |e| events.push(e)), Ok(256));
    let (dec, frames) = b.reservation_mut().calls.last().cloned().expect("call");
    assert!(!dec);
    assert_eq!(frames.len(), 256);
    assert_eq!(frames[255], 0x2000);
    assert_eq!(events.len(), 256);
    assert_eq!(events[255], Event::Released(0x2000 * 4096));
    assert_eq!(b.reservation_mut().released.len(), 1);
    assert_eq!(b.reservation_mut().bogus_populate, 0);
    assert_eq!(b.plan(), Plan::Idle);
    assert_eq!(b.status().held, 1);
}

#[test]
fn bad_and_oversized_targets_are_refused_or_clamped_and_counted() {
    let mut b = balloon();
    let mut ev = Vec::new();
    b.set_target_value(&kib(GUEST_KIB - 400), &mut |e| ev.push(e))
        .expect("target");
    assert_eq!(b.status().target, 100);
    ev.clear();
    assert_eq!(
        b.set_target_value(b"lots", &mut |e| ev.push(e)),
        Err(BalloonError::BadTarget)
    );
    assert_eq!(ev, vec![Event::Warning(BalloonError::BadTarget)]);
    assert_eq!(b.status().target, 100, "a bad value changes nothing");
    assert_eq!(b.counters().bad_targets, 1);
    // Above guest memory: empty balloon, counted.
    ev.clear();
    b.set_target_value(&kib(GUEST_KIB * 4), &mut |e| ev.push(e))
        .expect("target");
    assert_eq!(b.status().target, 0);
    assert_eq!(b.counters().clamped_targets, 1);
    assert!(matches!(
        ev[0],
        Event::Warning(BalloonError::TargetBeyondMemory { .. })
    ));
    // Far below: the balloon stops at the floor.
    b.set_target_value(b"0", &mut |_| {}).expect("target");
    assert_eq!(b.status().target, (GUEST - FLOOR) / 4096);
    let mut p = pages(0, 1);
    b.set_floor(GUEST / 4096).expect("floor");
    assert!(matches!(
        b.inflate(&mut p),
        Err(BalloonError::BeyondFloor { .. })
    ));
    assert_eq!(p.len(), 1);
}

#[test]
fn partial_and_lying_reservation_calls() {
    let mut b = balloon();
    b.set_target_value(&kib(GUEST_KIB - 40), &mut |_| {})
        .expect("target");
    // Xen takes 3 of 10: the other 7 stay with the glue.
    b.reservation_mut().next_decrease = Behaviour::Partial(3);
    let mut p = pages(0x100, 10);
    assert_eq!(b.inflate(&mut p), Ok(3));
    assert_eq!(p, pages(0x103, 7));
    assert_eq!(b.status().held, 3);
    // Xen fails: nothing moves.
    b.reservation_mut().next_decrease = Behaviour::Fail(PlatformError::Os(-12));
    assert_eq!(
        b.inflate(&mut p),
        Err(BalloonError::Platform(PlatformError::Os(-12)))
    );
    assert_eq!(p.len(), 7);
    // Xen claims more than asked: every page stays out of the guest's hands.
    b.reservation_mut().next_decrease = Behaviour::Claim(99);
    let e = b.inflate(&mut p).expect_err("overrun");
    assert_eq!(e, BalloonError::ReservationOverrun { asked: 7, done: 99 });
    assert!(e.is_device_fault());
    assert!(p.is_empty());
    assert_eq!(b.status().held, 10);
    // Deflate: Xen backs only 2 of 4; only those are released.
    b.set_target_value(&kib(GUEST_KIB - 24), &mut |_| {})
        .expect("target");
    b.reservation_mut().next_increase = Behaviour::Partial(2);
    let mut out = Vec::new();
    assert_eq!(b.deflate(4, &mut |e| out.push(e)), Ok(2));
    assert_eq!(out.len(), 2);
    assert_eq!(b.status().held, 8);
}

#[test]
fn big_pages_move_whole_or_roll_back() {
    let mut limits = Limits::new(GUEST, FLOOR);
    limits.page_size = 16384;
    let mut b = Balloon::new(FakeReservation::default(), limits).expect("limits");
    b.set_target_value(&kib(GUEST_KIB - 64), &mut |_| {})
        .expect("target");
    assert_eq!(b.plan(), Plan::Inflate { pages: 4 });
    // Xen takes 6 frames of 8 (page 0 whole, page 1 half): page 1's two
    // frames are asked back, and page 1 goes back to the glue.
    b.reservation_mut().next_decrease = Behaviour::Partial(6);
    let mut p = vec![0x10_0000u64, 0x20_0000];
    assert_eq!(b.inflate(&mut p), Ok(1));
    assert_eq!(p, vec![0x20_0000]);
    let calls = b.reservation_mut().calls.clone();
    assert_eq!(
        calls[0].1,
        (0x100..0x104).chain(0x200..0x204).collect::<Vec<_>>()
    );
    assert_eq!(calls[1], (false, vec![0x200, 0x201]));
    assert_eq!(b.reservation_mut().released.len(), 4);
}

#[test]
fn oom_deflate_holds_inflation_off() {
    let mut b = balloon();
    b.set_target_value(&kib(GUEST_KIB - 8), &mut |_| {})
        .expect("target");
    b.inflate(&mut pages(0x100, 2)).expect("inflate");
    assert_eq!(b.oom_deflate(2, &mut |_| {}), Ok(2));
    assert_eq!(b.plan(), Plan::Idle);
    b.resume_inflate();
    assert_eq!(b.plan(), Plan::Inflate { pages: 2 });
}
