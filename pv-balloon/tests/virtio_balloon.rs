//! virtio-balloon against the fake device: exact wire bytes (PFN arrays,
//! stats entries, config fields) and a hostile device.

use pv_balloon::testing::virtio::{BalloonChain, FakeBalloon, IdentityHal};
use pv_balloon::virtio::{DEFLATEQ, INFLATEQ, STATSQ};
use pv_balloon::{
    BalloonError, Event, FreeRange, Limits, MemStats, Plan, StatTag, VirtioBalloon,
    VirtioBalloonConfig, VirtioDeviceId, VirtioFeatures,
};
use virtio_drivers::transport::DeviceStatus;

type Balloon = VirtioBalloon<IdentityHal, FakeBalloon, u64>;

const TRADITIONAL: VirtioDeviceId = VirtioDeviceId::TRADITIONAL_BALLOON;

/// 1 GiB guest, 64 MiB floor.
const GUEST: u64 = 1 << 30;
const FLOOR: u64 = 64 << 20;

fn all() -> VirtioFeatures {
    VirtioFeatures::MUST_TELL_HOST
        | VirtioFeatures::STATS_VQ
        | VirtioFeatures::DEFLATE_ON_OOM
        | VirtioFeatures::PAGE_REPORTING
        | VirtioFeatures::PAGE_POISON
        | VirtioFeatures::EVENT_IDX
        | VirtioFeatures::INDIRECT_DESC
        | VirtioFeatures::VERSION_1
}

fn setup(features: VirtioFeatures) -> (Balloon, FakeBalloon) {
    setup_cfg(
        features,
        VirtioBalloonConfig::new(Limits::new(GUEST, FLOOR)),
    )
}

fn setup_cfg(features: VirtioFeatures, cfg: VirtioBalloonConfig) -> (Balloon, FakeBalloon) {
    let dev = FakeBalloon::new(features, 128);
    match Balloon::new(dev.clone(), TRADITIONAL, cfg) {
        Ok(b) => (b, dev),
        Err(e) => panic!("bring-up failed: {e}"),
    }
}

/// Poll and collect the events.
fn poll(b: &mut Balloon) -> (Result<(), BalloonError>, Vec<Event<u64>>) {
    let mut ev = Vec::new();
    let r = b.poll(&mut |e| ev.push(e));
    (r, ev)
}

fn pages(first_frame: u64, n: usize, page: u64) -> Vec<u64> {
    (0..n as u64)
        .map(|i| first_frame * 4096 + i * page)
        .collect()
}

fn released(ev: &[Event<u64>]) -> Vec<u64> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Released(p) => Some(*p),
            _ => None,
        })
        .collect()
}

#[test]
fn negotiates_what_it_handles_and_posts_stats_at_start() {
    let (b, dev) = setup(all());
    let want = VirtioFeatures::MUST_TELL_HOST
        | VirtioFeatures::STATS_VQ
        | VirtioFeatures::DEFLATE_ON_OOM
        | VirtioFeatures::PAGE_REPORTING
        | VirtioFeatures::VERSION_1;
    assert_eq!(dev.driver_features(), want);
    assert_eq!(b.negotiated(), want);
    assert!(dev.status().contains(DeviceStatus::DRIVER_OK));
    // Dense numbering: inflate 0, deflate 1, stats 2, reporting 3.
    assert_eq!(b.reporting_queue(), Some(3));
    assert_eq!(dev.reporting_queue(), Some(3));
    assert!(dev.queue_ready(3) && !dev.queue_ready(4));
    // The stats buffer is there from the start, with MEMTOT filled in.
    assert_eq!(dev.available(STATSQ), 1);
    assert!(dev.request_stats());
    let mut memtot = vec![5u8, 0];
    memtot.extend_from_slice(&GUEST.to_le_bytes());
    assert_eq!(dev.last_stats(), memtot);
    assert_eq!(dev.actual(), 0);
}

#[test]
fn free_page_hint_offered_means_no_reporting_and_no_hint() {
    let (b, dev) = setup(all() | VirtioFeatures::FREE_PAGE_HINT);
    let f = dev.driver_features();
    assert!(!f.contains(VirtioFeatures::FREE_PAGE_HINT));
    assert!(!f.contains(VirtioFeatures::PAGE_REPORTING));
    assert_eq!(b.reporting_queue(), None);
}

#[test]
fn page_poison_only_when_the_glue_poisons() {
    let mut cfg = VirtioBalloonConfig::new(Limits::new(GUEST, FLOOR));
    cfg.poison = Some(0xAAAA_AAAA);
    let (_b, dev) = setup_cfg(all(), cfg);
    assert!(dev.driver_features().contains(VirtioFeatures::PAGE_POISON));
    assert_eq!(dev.poison_val(), 0xAAAA_AAAA);
}

#[test]
fn inflate_sends_le32_pfn_arrays_in_batches_of_256() {
    let (mut b, dev) = setup(all());
    dev.set_num_pages(300);
    let (r, ev) = poll(&mut b);
    assert_eq!(r, Ok(()));
    assert_eq!(ev, vec![Event::TargetChanged { frames: 300 }]);
    assert_eq!(b.plan(), Plan::Inflate { pages: 256 });
    let mut batch = pages(0x10_0000, 256, 4096);
    assert_eq!(b.inflate(&mut batch), Ok(256));
    assert!(batch.is_empty());
    // In flight: not acknowledged, no second buffer.
    assert_eq!(b.plan(), Plan::Idle);
    let mut more = pages(0x20_0000, 1, 4096);
    assert_eq!(b.inflate(&mut more), Err(BalloonError::Busy));
    assert_eq!(more.len(), 1);

    let c = dev.take_chain(INFLATEQ).expect("a chain");
    assert_eq!(c.descs.len(), 1);
    assert!(!c.any_writable());
    let bytes = c.bytes();
    assert_eq!(bytes.len(), 1024);
    assert_eq!(
        &bytes[..8],
        &[0x00, 0x00, 0x10, 0x00, 0x01, 0x00, 0x10, 0x00]
    );
    assert_eq!(&bytes[1020..], &0x10_00FFu32.to_le_bytes());
    dev.push_used(INFLATEQ, u32::from(c.head), 0);
    let (r, ev) = poll(&mut b);
    assert_eq!((r, ev), (Ok(()), vec![]));
    assert_eq!(dev.actual(), 256);
    assert_eq!(b.status().held, 256);
    assert_eq!(b.plan(), Plan::Inflate { pages: 44 });
    let mut rest = pages(0x20_0000, 44, 4096);
    assert_eq!(b.inflate(&mut rest), Ok(44));
    assert_eq!(dev.process(INFLATEQ), 1);
    assert_eq!(poll(&mut b).0, Ok(()));
    assert_eq!(dev.actual(), 300);
    // The fake's own record only has the batch it processed itself.
    assert_eq!(dev.balloon().len(), 44);
    assert_eq!(b.plan(), Plan::Idle);
    assert_eq!(b.counters().inflated_frames, 300);
}

#[test]
fn a_big_guest_page_is_several_consecutive_pfns() {
    let mut limits = Limits::new(GUEST, FLOOR);
    limits.page_size = 16384;
    let (mut b, dev) = setup_cfg(all(), VirtioBalloonConfig::new(limits));
    dev.set_num_pages(10);
    poll(&mut b).0.expect("poll");
    // 10 frames of 4 KiB: two whole 16 KiB pages, never a third.
    assert_eq!(b.plan(), Plan::Inflate { pages: 2 });
    let mut p = vec![0x4000_0000u64, 0x8000];
    assert_eq!(b.inflate(&mut p), Ok(2));
    let c = dev.take_chain(INFLATEQ).expect("chain");
    assert_eq!(
        c.pfns(),
        vec![0x40000, 0x40001, 0x40002, 0x40003, 8, 9, 10, 11]
    );
    dev.push_used(INFLATEQ, u32::from(c.head), 0);
    poll(&mut b).0.expect("poll");
    assert_eq!(dev.actual(), 8);
    assert_eq!(b.plan(), Plan::Idle);
    // Misaligned for 16 KiB.
    dev.set_num_pages(20);
    poll(&mut b).0.expect("poll");
    let mut bad = vec![0x1000u64];
    assert_eq!(
        b.inflate(&mut bad),
        Err(BalloonError::BadPage { addr: 0x1000 })
    );
    assert_eq!(bad, vec![0x1000]);
}

/// A glue that asks for bigger batches gets one buffer of that many PFNs
/// each way and never more (Linux's 256 is a default, not a limit of the
/// spec); a batch beyond the maximum or smaller than a page is refused.
#[test]
fn a_larger_batch_is_one_buffer_each_way() {
    let mut limits = Limits::new(GUEST, FLOOR);
    limits.batch_frames = 4096;
    let (mut b, dev) = setup_cfg(all(), VirtioBalloonConfig::new(limits));
    dev.set_num_pages(5000);
    poll(&mut b).0.expect("poll");
    assert_eq!(b.plan(), Plan::Inflate { pages: 4096 });
    let mut too_many = pages(0x1000, 4097, 4096);
    assert_eq!(
        b.inflate(&mut too_many),
        Err(BalloonError::TooManyPages {
            given: 4097,
            max: 4096
        })
    );
    assert_eq!(dev.available(INFLATEQ), 0);
    let mut p = pages(0x1000, 4096, 4096);
    assert_eq!(b.inflate(&mut p), Ok(4096));
    let c = dev.take_chain(INFLATEQ).expect("chain");
    assert_eq!(c.pfns(), (0x1000..0x2000).collect::<Vec<u32>>());
    dev.push_used(INFLATEQ, u32::from(c.head), 0);
    poll(&mut b).0.expect("poll");
    assert_eq!(dev.actual(), 4096);
    assert_eq!(b.plan(), Plan::Inflate { pages: 904 });

    dev.set_num_pages(0);
    poll(&mut b).0.expect("poll");
    assert_eq!(b.plan(), Plan::Deflate { pages: 4096 });
    let mut out = Vec::new();
    assert_eq!(b.deflate(4096, &mut |e| out.push(e)), Ok(4096));
    assert!(out.is_empty(), "released before the device acknowledged");
    let c = dev.take_chain(DEFLATEQ).expect("chain");
    assert_eq!(c.pfns().len(), 4096);
    dev.push_used(DEFLATEQ, u32::from(c.head), 0);
    let (r, ev) = poll(&mut b);
    assert_eq!(r, Ok(()));
    assert_eq!(released(&ev).len(), 4096);
    assert_eq!(dev.actual(), 0);

    for (batch, page) in [(pv_balloon::MAX_BATCH_FRAMES + 1, 4096), (8, 65536)] {
        let mut limits = Limits::new(GUEST, FLOOR);
        limits.batch_frames = batch;
        limits.page_size = page;
        let dev = FakeBalloon::new(all(), 128);
        assert_eq!(
            Balloon::new(dev, TRADITIONAL, VirtioBalloonConfig::new(limits)).err(),
            Some(BalloonError::BadLimits),
            "batch {batch}, page {page}"
        );
    }
}

#[test]
fn pages_beyond_32_bit_pfns_are_refused() {
    let (mut b, dev) = setup(all());
    dev.set_num_pages(1);
    poll(&mut b).0.expect("poll");
    let addr = (1u64 << 32) * 4096;
    let mut p = vec![addr];
    assert_eq!(b.inflate(&mut p), Err(BalloonError::BadPage { addr }));
    assert_eq!(dev.available(INFLATEQ), 0);
}

#[test]
fn deflate_tells_the_device_before_releasing() {
    let (mut b, dev) = setup(all());
    dev.set_num_pages(8);
    poll(&mut b).0.expect("poll");
    let mut p = pages(0x100, 8, 4096);
    b.inflate(&mut p).expect("inflate");
    dev.process(INFLATEQ);
    poll(&mut b).0.expect("poll");
    dev.set_num_pages(5);
    let (_, ev) = poll(&mut b);
    assert_eq!(ev, vec![Event::TargetChanged { frames: 5 }]);
    assert_eq!(b.plan(), Plan::Deflate { pages: 3 });
    let mut out = Vec::new();
    // Asking for more than the target allows deflates only down to it.
    assert_eq!(b.deflate(10, &mut |e| out.push(e)), Ok(3));
    assert!(out.is_empty(), "released before the device acknowledged");
    assert_eq!(dev.actual(), 8);
    let c = dev.take_chain(DEFLATEQ).expect("chain");
    assert_eq!(c.pfns(), vec![0x105, 0x106, 0x107]);
    dev.push_used(DEFLATEQ, u32::from(c.head), 0);
    let (r, ev) = poll(&mut b);
    assert_eq!(r, Ok(()));
    assert_eq!(released(&ev), vec![0x105_000, 0x106_000, 0x107_000]);
    assert_eq!(dev.actual(), 5);
    assert_eq!(b.plan(), Plan::Idle);
}

#[test]
fn without_must_tell_host_pages_come_back_at_once() {
    let (mut b, dev) = setup(VirtioFeatures::VERSION_1 | VirtioFeatures::STATS_VQ);
    dev.set_num_pages(4);
    poll(&mut b).0.expect("poll");
    let mut p = pages(0x100, 4, 4096);
    b.inflate(&mut p).expect("inflate");
    dev.process(INFLATEQ);
    poll(&mut b).0.expect("poll");
    dev.set_num_pages(0);
    poll(&mut b).0.expect("poll");
    let mut out = Vec::new();
    assert_eq!(b.deflate(4, &mut |e| out.push(e)), Ok(4));
    assert_eq!(released(&out).len(), 4);
    // The device is still told.
    assert_eq!(dev.take_chain(DEFLATEQ).map(|c| c.pfns().len()), Some(4));
    assert_eq!(dev.actual(), 0);
}

#[test]
fn targets_beyond_memory_are_clamped_to_the_floor_and_counted() {
    let (mut b, dev) = setup(all());
    dev.set_num_pages(u32::MAX);
    let (r, ev) = poll(&mut b);
    assert_eq!(r, Ok(()));
    let guest = GUEST / 4096;
    let max = (GUEST - FLOOR) / 4096;
    assert_eq!(
        ev,
        vec![
            Event::Warning(BalloonError::TargetBeyondMemory {
                requested: u64::from(u32::MAX),
                guest
            }),
            Event::TargetChanged { frames: max },
        ]
    );
    assert_eq!(b.counters().clamped_targets, 1);
    // Polling again does not count the same target twice.
    assert_eq!(poll(&mut b).1, vec![]);
    assert_eq!(b.status().target, max);
    // The glue cannot push past the floor either.
    b.set_floor(guest - 2).expect("floor");
    let mut p = pages(0x100, 3, 4096);
    assert_eq!(
        b.inflate(&mut p),
        Err(BalloonError::BeyondFloor {
            would_be: 3,
            max: 2
        })
    );
    assert_eq!(p.len(), 3);
    assert_eq!(b.plan(), Plan::Inflate { pages: 2 });
}

#[test]
fn stats_follow_the_request_refill_repost_protocol() {
    let (mut b, dev) = setup(all());
    let mut s = MemStats::default();
    for t in StatTag::ALL {
        s.set(t, 0x1000 + t as u64);
    }
    // The device holds the buffer: supplying now is out of turn.
    assert_eq!(b.supply_stats(&s), Err(BalloonError::StatsNotRequested));
    assert!(dev.request_stats());
    let (r, ev) = poll(&mut b);
    assert_eq!(r, Ok(()));
    assert_eq!(ev, vec![Event::StatsRequested]);
    b.supply_stats(&s).expect("supply");
    assert_eq!(b.supply_stats(&s), Err(BalloonError::StatsNotRequested));
    assert!(dev.request_stats());
    let bytes = dev.last_stats();
    assert_eq!(bytes.len(), 100);
    for (i, e) in bytes.chunks_exact(10).enumerate() {
        assert_eq!(&e[..2], &(i as u16).to_le_bytes());
        assert_eq!(&e[2..], &(0x1000 + i as u64).to_le_bytes());
    }
    assert_eq!(b.counters().stats_posted, 2);
}

#[test]
fn a_stats_completion_out_of_turn_stops_the_balloon_until_reset() {
    let (mut b, dev) = setup(all());
    dev.set_num_pages(4);
    poll(&mut b).0.expect("poll");
    let mut p = pages(0x100, 4, 4096);
    b.inflate(&mut p).expect("inflate");
    dev.process(INFLATEQ);
    assert!(dev.request_stats());
    poll(&mut b).0.expect("poll");
    // The driver has not re-posted; the device "returns" a buffer again.
    dev.push_used(STATSQ, 0, 0);
    let (r, _) = poll(&mut b);
    let e = r.expect_err("must stop");
    assert_eq!(e, BalloonError::UnexpectedCompletion { queue: STATSQ });
    assert!(e.is_device_fault() && e.needs_reset() && !e.is_caller_fault());
    assert_eq!(b.plan(), Plan::Idle);
    let mut more = pages(0x200, 1, 4096);
    assert_eq!(b.inflate(&mut more), Err(BalloonError::Stopped));
    assert_eq!(b.counters().stops, 1);
    // Reset: the device forgets the balloon, the pages come back.
    let mut out = Vec::new();
    b.reset(&mut |e| out.push(e)).expect("reset");
    assert_eq!(released(&out).len(), 4);
    assert_eq!(b.status().held, 0);
    assert_eq!(dev.actual(), 0);
    assert_eq!(b.plan(), Plan::Inflate { pages: 4 });
    assert_eq!(dev.available(STATSQ), 1);
}

#[test]
fn a_completion_of_a_buffer_never_posted_stops_the_balloon() {
    let (mut b, dev) = setup(all());
    dev.push_used(INFLATEQ, 0, 0);
    assert_eq!(
        poll(&mut b).0,
        Err(BalloonError::UnexpectedCompletion { queue: INFLATEQ })
    );
    let (mut b, dev) = setup(all());
    dev.set_num_pages(1);
    poll(&mut b).0.expect("poll");
    b.inflate(&mut pages(0x100, 1, 4096)).expect("inflate");
    let c = dev.take_chain(INFLATEQ).expect("chain");
    dev.push_used(INFLATEQ, u32::from(c.head) + 7, 0);
    assert_eq!(
        poll(&mut b).0,
        Err(BalloonError::WrongCompletion { queue: INFLATEQ })
    );
    assert_eq!(b.status().held, 0, "an unmatched completion counts nothing");
}

#[test]
fn a_used_index_run_ahead_is_caught() {
    let (mut b, dev) = setup(all());
    dev.set_num_pages(1);
    poll(&mut b).0.expect("poll");
    b.inflate(&mut pages(0x100, 1, 4096)).expect("inflate");
    let c = dev.take_chain(INFLATEQ).expect("chain");
    dev.push_used(INFLATEQ, u32::from(c.head), 0);
    dev.set_used_idx(INFLATEQ, 9);
    assert_eq!(
        poll(&mut b).0,
        Err(BalloonError::UnexpectedCompletion { queue: INFLATEQ })
    );
    // A used ring that claims more than was posted is not believed at all:
    // not even its one honest-looking element is counted.
    assert_eq!(b.status().held, 0);
    // The page in flight comes back at the reset.
    let mut out = Vec::new();
    b.reset(&mut |e| out.push(e)).expect("reset");
    assert_eq!(released(&out).len(), 1);
}

#[test]
fn impossible_used_lengths_are_warnings() {
    let (mut b, dev) = setup(all());
    dev.set_num_pages(1);
    poll(&mut b).0.expect("poll");
    b.inflate(&mut pages(0x100, 1, 4096)).expect("inflate");
    let c = dev.take_chain(INFLATEQ).expect("chain");
    dev.push_used(INFLATEQ, u32::from(c.head), 4096);
    let (r, ev) = poll(&mut b);
    assert_eq!(r, Ok(()));
    let w = BalloonError::BadLength {
        queue: INFLATEQ,
        len: 4096,
    };
    assert_eq!(ev, vec![Event::Warning(w)]);
    assert!(w.is_device_fault() && !w.needs_reset());
    assert_eq!(b.counters().bad_lengths, 1);
    assert_eq!(b.status().held, 1);
}

#[test]
fn device_needs_reset_and_unstable_config_are_faults() {
    let (mut b, dev) = setup(all());
    dev.set_needs_reset();
    assert_eq!(poll(&mut b).0, Err(BalloonError::DeviceFailed));
    let dev = FakeBalloon::new(all(), 128);
    dev.set_unstable_config(true);
    let r = Balloon::new(
        dev.clone(),
        TRADITIONAL,
        VirtioBalloonConfig::new(Limits::new(GUEST, FLOOR)),
    );
    assert_eq!(r.err(), Some(BalloonError::ConfigUnstable));
    // Given up on: reset, so it stops reading the freed queues.
    assert!(dev.status().is_empty());
    // Queues smaller than the driver's are refused, not trusted.
    let dev = FakeBalloon::new(all(), 16);
    let r = Balloon::new(
        dev,
        TRADITIONAL,
        VirtioBalloonConfig::new(Limits::new(GUEST, FLOOR)),
    );
    assert_eq!(r.err(), Some(BalloonError::Transport));
}

#[test]
fn oom_deflate_goes_below_target_only_with_deflate_on_oom() {
    let (mut b, dev) = setup(all() - VirtioFeatures::DEFLATE_ON_OOM);
    dev.set_num_pages(2);
    poll(&mut b).0.expect("poll");
    b.inflate(&mut pages(0x100, 2, 4096)).expect("inflate");
    dev.process(INFLATEQ);
    poll(&mut b).0.expect("poll");
    assert_eq!(
        b.oom_deflate(1, &mut |_| {}),
        Err(BalloonError::NotNegotiated)
    );
    // Plain deflate at the target does nothing.
    assert_eq!(b.deflate(1, &mut |_| {}), Ok(0));

    let (mut b, dev) = setup(all());
    dev.set_num_pages(2);
    poll(&mut b).0.expect("poll");
    b.inflate(&mut pages(0x100, 2, 4096)).expect("inflate");
    dev.process(INFLATEQ);
    poll(&mut b).0.expect("poll");
    assert_eq!(b.oom_deflate(2, &mut |_| {}), Ok(2));
    dev.process(DEFLATEQ);
    let (_, ev) = poll(&mut b);
    assert_eq!(released(&ev).len(), 2);
    assert!(b.status().oom_hold);
    assert_eq!(b.plan(), Plan::Idle, "no re-inflation under pressure");
    dev.set_num_pages(1);
    poll(&mut b).0.expect("poll");
    assert_eq!(b.plan(), Plan::Inflate { pages: 1 });
    assert_eq!(b.counters().oom_deflates, 1);
}

#[test]
fn free_page_reporting_names_the_ranges_and_gives_them_back() {
    let (mut b, dev) = setup(all());
    let mut mem = vec![0u8; 6 * 4096];
    let base = (mem.as_mut_ptr() as usize).next_multiple_of(4096);
    let p0 = std::ptr::NonNull::new(base as *mut u8).expect("non-null");
    let p1 = std::ptr::NonNull::new((base + 2 * 4096) as *mut u8).expect("non-null");
    let r0 = FreeRange { ptr: p0, len: 4096 };
    let r1 = FreeRange {
        ptr: p1,
        len: 2 * 4096,
    };
    let mut bad = vec![FreeRange { ptr: p0, len: 100 }];
    // SAFETY: `mem` outlives the balloon's use of the ranges (the report is
    // completed and polled below) and is not touched meanwhile.
    let r = unsafe { b.report_free(&mut bad) };
    assert_eq!(r, Err(BalloonError::BadRange));
    let mut ranges = vec![r0, r1];
    // SAFETY: as above.
    let r = unsafe { b.report_free(&mut ranges) };
    assert_eq!(r, Ok(2));
    assert!(ranges.is_empty());
    let mut again = vec![r0];
    // SAFETY: as above (refused anyway: busy).
    let r = unsafe { b.report_free(&mut again) };
    assert_eq!(r, Err(BalloonError::Busy));
    assert_eq!(dev.process(3), 1);
    assert_eq!(
        dev.reported(),
        vec![(base as u64, 4096), ((base + 8192) as u64, 8192)]
    );
    let (r, ev) = poll(&mut b);
    assert_eq!(r, Ok(()));
    assert_eq!(ev, vec![Event::Reported(r0), Event::Reported(r1)]);
    assert_eq!(b.counters().reports, 1);
    drop(b);
    drop(mem);
}

#[test]
fn reporting_is_refused_unless_negotiated() {
    let (mut b, _dev) = setup(VirtioFeatures::VERSION_1);
    let mut r = vec![];
    // SAFETY: no ranges.
    let res = unsafe { b.report_free(&mut r) };
    assert_eq!(res, Err(BalloonError::NotNegotiated));
    assert_eq!(
        b.supply_stats(&MemStats::default()),
        Err(BalloonError::NotNegotiated)
    );
}

#[test]
fn drop_resets_the_device() {
    let (b, dev) = setup(all());
    let before = dev.resets();
    drop(b);
    assert_eq!(dev.resets(), before + 1);
    assert!(dev.status().is_empty());
}

/// The loop the crate docs describe, against an honest device: the balloon
/// reaches a target of 1000 frames in bounded steps, then gives it all back,
/// answering stats requests on the way.
#[test]
fn the_documented_glue_loop_reaches_the_target_and_back() {
    let (mut b, dev) = setup(all());
    let mut next_frame = 0x1_0000u64;
    let mut free: Vec<u64> = Vec::new();
    let mut stats_due = false;
    for target in [1000u32, 0] {
        dev.set_num_pages(target);
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 100, "no progress toward {target}");
            let mut ev = Vec::new();
            b.poll(&mut |e| ev.push(e)).expect("poll");
            for e in ev {
                match e {
                    Event::Released(p) => free.push(p),
                    Event::StatsRequested => stats_due = true,
                    _ => {}
                }
            }
            if stats_due {
                let mut s = MemStats::default();
                s.set(StatTag::MemFree, 1234);
                b.supply_stats(&s).expect("stats");
                stats_due = false;
            }
            match b.plan() {
                Plan::Inflate { pages } => {
                    assert!(pages <= 256);
                    let mut v: Vec<u64> =
                        (0..pages as u64).map(|i| (next_frame + i) * 4096).collect();
                    next_frame += pages as u64;
                    b.inflate(&mut v).expect("inflate");
                }
                Plan::Deflate { pages } => {
                    assert!(pages <= 256);
                    let mut ev = Vec::new();
                    b.deflate(pages, &mut |e| ev.push(e)).expect("deflate");
                    assert!(released(&ev).is_empty());
                }
                Plan::Idle => {
                    if b.status().held == u64::from(target)
                        && b.status().inflating == 0
                        && b.status().deflating == 0
                    {
                        break;
                    }
                }
            }
            // The device works between interrupts.
            dev.process(INFLATEQ);
            dev.process(DEFLATEQ);
            if rounds % 3 == 0 {
                dev.request_stats();
            }
        }
        assert_eq!(dev.actual(), target);
        assert_eq!(dev.balloon().len(), target as usize);
    }
    assert_eq!(free.len(), 1000);
    assert_eq!(dev.last_stats().len(), 20, "MEMFREE and MEMTOT");
}

#[test]
fn only_the_traditional_balloon_is_driven() {
    // virtio-drivers' transport decodes ID 13 as a balloon too (the fake
    // says `MemoryBalloon` as the real PCI transport does for DEV_104D):
    // the core must refuse it on the ID the bus gave, before touching the
    // device.
    let dev = FakeBalloon::new(all(), 128);
    let id = VirtioDeviceId::from_pci(0x1AF4, 0x104D).expect("a virtio ID");
    assert_eq!(id, VirtioDeviceId(13));
    let r = Balloon::new(
        dev.clone(),
        id,
        VirtioBalloonConfig::new(Limits::new(GUEST, FLOOR)),
    );
    let Err(e) = r else { panic!("ID 13 driven") };
    assert_eq!(e, BalloonError::NotTraditionalBalloon { id: 13 });
    assert!(e.is_caller_fault() && !e.is_device_fault());
    assert!(dev.status().is_empty(), "the device was touched");
    assert_eq!(dev.driver_features(), VirtioFeatures::empty());
    // The modern and transitional balloon IDs are the traditional one.
    for pci in [0x1045, 0x1002] {
        assert_eq!(
            VirtioDeviceId::from_pci(0x1AF4, pci),
            Some(VirtioDeviceId::TRADITIONAL_BALLOON)
        );
    }
    // Not virtio, or the reserved ID 0.
    assert_eq!(VirtioDeviceId::from_pci(0x8086, 0x1045), None);
    assert_eq!(VirtioDeviceId::from_pci(0x1AF4, 0x1040), None);
    // And the traditional balloon on the same fake comes up.
    setup(all());
}
