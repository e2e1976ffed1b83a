//! virtio-blk frontend against the fake device: exact wire bytes per request
//! type, queue depth, EVENT_IDX, multiqueue, and a hostile device per
//! validation case (error + clean reset, no panic).

use pv_blk::testing::virtio::{BlkChain, Chain, FakeVirtioBlk, TestHal};
use pv_blk::virtio::{VirtioBlk, VirtioBlkConfig, VirtioFeatures};
use pv_blk::{BlkError, BlockFrontend, IoBuf, OpKind, Request, Token};
use pv_virtq::{need_event, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

type Blk = VirtioBlk<TestHal, FakeVirtioBlk>;

const SECTORS: u64 = 2048;

fn all() -> VirtioFeatures {
    VirtioFeatures::all() - VirtioFeatures::RO
}

fn setup(features: VirtioFeatures, cfg: VirtioBlkConfig) -> (FakeVirtioBlk, Blk) {
    let dev = FakeVirtioBlk::new(features, SECTORS, 4, 16);
    let blk = Blk::new(dev.clone(), cfg).expect("init");
    (dev, blk)
}

fn direct() -> VirtioBlkConfig {
    VirtioBlkConfig {
        refuse: VirtioFeatures::INDIRECT_DESC,
        ..VirtioBlkConfig::default()
    }
}

type Done = Vec<(Token, Result<usize, BlkError>)>;

fn drain(blk: &mut Blk) -> Done {
    let mut v = Vec::new();
    blk.poll_completions(&mut |t, r| v.push((t, r)))
        .expect("poll");
    v
}

fn header(ty: u32, sector: u64) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&ty.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn flags(c: &Chain) -> Vec<u16> {
    c.descs.iter().map(|d| d.flags).collect()
}

fn lens(c: &Chain) -> Vec<u32> {
    c.descs.iter().map(|d| d.len).collect()
}

#[test]
fn negotiates_and_reads_geometry() {
    let (dev, blk) = setup(all(), VirtioBlkConfig::default());
    let info = blk.info();
    assert_eq!(info.capacity_sectors, SECTORS);
    assert_eq!(info.block_size, 512);
    assert!(info.features.flush && info.features.discard && info.features.write_zeroes);
    assert!(info.features.event_idx && info.features.indirect);
    assert!(!info.features.read_only);
    assert_eq!(info.queues, 1, "one queue unless more are asked for");
    assert_eq!(info.queue_depth, 16);
    let f = dev.driver_features();
    assert!(f.contains(VirtioFeatures::EVENT_IDX | VirtioFeatures::VERSION_1));
    assert!(dev
        .status()
        .contains(virtio_drivers::transport::DeviceStatus::DRIVER_OK));
}

#[test]
fn read_wire_bytes_direct() {
    let (dev, mut blk) = setup(all(), direct());
    let mut buf = vec![0u8; 4096];
    let bufs = [IoBuf::from_slice(&mut buf)];
    // SAFETY: `buf` outlives the request and is untouched until completion.
    let tok = unsafe { blk.submit(&Request::read(8, &bufs)) }.expect("submit");
    let c = dev.take_chain(0).expect("chain");
    assert!(!c.indirect);
    assert_eq!(c.descs.len(), 3);
    assert_eq!(c.header(), header(0, 8));
    assert_eq!(
        flags(&c),
        [DESC_F_NEXT, DESC_F_NEXT | DESC_F_WRITE, DESC_F_WRITE]
    );
    assert_eq!(lens(&c), [16, 4096, 1]);
    // The raw ring descriptor: addr, len 16, flags NEXT, next = second desc.
    let d = &c.ring_desc;
    assert_eq!(&d.raw[8..12], &16u32.to_le_bytes());
    assert_eq!(&d.raw[12..14], &DESC_F_NEXT.to_le_bytes());
    assert_eq!(&d.raw[14..16], &c.descs[0].next.to_le_bytes());
    assert_eq!(&d.raw[0..8], &d.addr.to_le_bytes());
    // Complete honestly with data.
    dev.set_disk(8 * 512, &[0xAB; 4096]);
    let (st, len) = dev.execute(&c);
    dev.write_status(&c, st);
    dev.push_used(0, u32::from(c.head), len);
    let done = drain(&mut blk);
    assert_eq!(done, vec![(tok, Ok(4096))]);
    assert!(buf.iter().all(|&b| b == 0xAB));
}

#[test]
fn write_flush_discard_wz_getid_wire_bytes() {
    // Buffers first: they must outlive the frontend (dropping it resets the
    // device and hands in-flight buffers back).
    let mut data = vec![0x5Au8; 1024];
    let mut id = [0u8; 20];
    let (dev, mut blk) = setup(all(), direct());
    let bufs = [
        IoBuf::from_slice(&mut data[..512]),
        IoBuf::from_slice(&mut data[512..]),
    ];
    // SAFETY: `data` outlives the request.
    unsafe { blk.submit(&Request::write(100, &bufs)) }.expect("write");
    let c = dev.take_chain(0).expect("write chain");
    assert_eq!(c.header(), header(1, 100));
    assert_eq!(
        flags(&c),
        [DESC_F_NEXT, DESC_F_NEXT, DESC_F_NEXT, DESC_F_WRITE]
    );
    assert_eq!(lens(&c), [16, 512, 512, 1]);
    assert_eq!(c.descs[1].contents(), vec![0x5A; 512]);

    blk.flush().expect("flush");
    let c = dev.take_chain(0).expect("flush chain");
    assert_eq!(c.header(), header(4, 0));
    assert_eq!(flags(&c), [DESC_F_NEXT, DESC_F_WRITE]);
    assert_eq!(lens(&c), [16, 1]);

    blk.discard(64, 32).expect("discard");
    let c = dev.take_chain(0).expect("discard chain");
    assert_eq!(c.header(), header(11, 0));
    assert_eq!(flags(&c), [DESC_F_NEXT, DESC_F_NEXT, DESC_F_WRITE]);
    let mut seg = Vec::new();
    seg.extend_from_slice(&64u64.to_le_bytes());
    seg.extend_from_slice(&32u32.to_le_bytes());
    seg.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(c.descs[1].contents(), seg);

    blk.write_zeroes(128, 8, true).expect("write zeroes");
    let c = dev.take_chain(0).expect("wz chain");
    assert_eq!(c.header(), header(13, 0));
    let mut seg = Vec::new();
    seg.extend_from_slice(&128u64.to_le_bytes());
    seg.extend_from_slice(&8u32.to_le_bytes());
    seg.extend_from_slice(&1u32.to_le_bytes());
    assert_eq!(c.descs[1].contents(), seg);

    // SAFETY: `id` outlives the request.
    unsafe { blk.get_id(IoBuf::from_slice(&mut id)) }.expect("get id");
    let c = dev.take_chain(0).expect("id chain");
    assert_eq!(c.header(), header(8, 0));
    assert_eq!(
        flags(&c),
        [DESC_F_NEXT, DESC_F_NEXT | DESC_F_WRITE, DESC_F_WRITE]
    );
    assert_eq!(lens(&c), [16, 20, 1]);
    let (st, len) = dev.execute(&c);
    dev.write_status(&c, st);
    dev.push_used(0, u32::from(c.head), len);
    // The four earlier chains were taken but never completed; complete the
    // id first (out of order) and check it alone came back.
    let done = drain(&mut blk);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1, Ok(20));
    assert_eq!(&id[..8], b"fake-blk");
}

#[test]
fn indirect_chain_takes_one_slot() {
    let (dev, mut blk) = setup(all(), VirtioBlkConfig::default());
    let mut buf = vec![0u8; 8 * 512];
    let bufs: Vec<IoBuf> = buf.chunks_mut(512).map(IoBuf::from_slice).collect();
    // SAFETY: `buf` outlives the request.
    unsafe { blk.submit(&Request::write(0, &bufs)) }.expect("submit");
    let c = dev.take_chain(0).expect("chain");
    assert!(c.indirect);
    assert_eq!(c.ring_desc.flags, DESC_F_INDIRECT);
    assert_eq!(c.ring_desc.len, 10 * 16);
    assert_eq!(c.descs.len(), 10);
    for (i, d) in c.descs.iter().enumerate() {
        if i + 1 < 10 {
            assert_eq!(d.next as usize, i + 1, "indirect tables chain in order");
        }
    }
    assert_eq!(c.header(), header(1, 0));
}

#[test]
fn round_trip_at_full_queue_depth_out_of_order() {
    let (dev, mut blk) = setup(all(), VirtioBlkConfig::default());
    let depth = blk.info().queue_depth as usize;
    let mut bufs: Vec<Vec<u8>> = (0..depth).map(|i| vec![i as u8; 512]).collect();
    let mut toks = Vec::new();
    for (i, b) in bufs.iter_mut().enumerate() {
        let io = [IoBuf::from_slice(b)];
        // SAFETY: `bufs` outlives every request.
        toks.push(unsafe { blk.submit(&Request::write(i as u64, &io)) }.expect("submit"));
    }
    let extra = [0u8; 512];
    let mut e = extra;
    let io = [IoBuf::from_slice(&mut e)];
    // SAFETY: never accepted.
    // SAFETY: refused (queue full), so the buffer is never handed over.
    let r = unsafe { blk.submit(&Request::write(0, &io)) };
    assert_eq!(r, Err(BlkError::QueueFull));
    assert_eq!(blk.in_flight(), depth);
    // Device completes in reverse order.
    let mut chains = Vec::new();
    while let Some(c) = dev.take_chain(0) {
        chains.push(c);
    }
    for c in chains.iter().rev() {
        let (st, len) = dev.execute(c);
        dev.write_status(c, st);
        dev.push_used(0, u32::from(c.head), len);
    }
    let done = drain(&mut blk);
    assert_eq!(done.len(), depth);
    assert!(done.iter().all(|(_, r)| *r == Ok(512)));
    let mut got: Vec<Token> = done.iter().map(|(t, _)| *t).collect();
    got.sort();
    toks.sort();
    assert_eq!(got, toks);
    for i in 0..depth {
        assert_eq!(dev.disk(i * 512, 512), vec![i as u8; 512]);
    }
    // Read everything back in one multi-segment request.
    let mut back = vec![0u8; depth * 512];
    let io: Vec<IoBuf> = back.chunks_mut(512).map(IoBuf::from_slice).collect();
    // SAFETY: `back` outlives the request.
    unsafe { blk.submit(&Request::read(0, &io)) }.expect("read");
    assert_eq!(dev.process(0), 1);
    assert_eq!(drain(&mut blk).len(), 1);
    for i in 0..depth {
        assert!(back[i * 512..(i + 1) * 512].iter().all(|&b| b == i as u8));
    }
}

#[test]
fn caller_mistakes_are_caller_faults() {
    let (_dev, mut blk) = setup(all() - VirtioFeatures::DISCARD, VirtioBlkConfig::default());
    let mut b = vec![0u8; 100];
    let io = [IoBuf::from_slice(&mut b)];
    // SAFETY: rejected before reaching the device.
    let e = unsafe { blk.submit(&Request::read(0, &io)) }.expect_err("refused");
    assert_eq!(e, BlkError::BadBuffer);
    assert!(!e.is_device_fault());
    let mut b = vec![0u8; 1024];
    let io = [IoBuf::from_slice(&mut b)];
    // SAFETY: rejected before reaching the device.
    let e = unsafe { blk.submit(&Request::read(SECTORS - 1, &io)) }.expect_err("refused");
    assert!(matches!(e, BlkError::OutOfRange { .. }));
    assert_eq!(
        blk.discard(0, 8),
        Err(BlkError::Unsupported(OpKind::Discard))
    );
}

#[test]
fn read_only_device_refuses_writes() {
    let (_dev, blk) = setup(all(), VirtioBlkConfig::default());
    assert!(!blk.info().features.read_only);
    let mut b = vec![0u8; 512];
    let (_dev, mut blk) = setup(all() | VirtioFeatures::RO, VirtioBlkConfig::default());
    assert!(blk.info().features.read_only);
    let io = [IoBuf::from_slice(&mut b)];
    // SAFETY: rejected before reaching the device.
    // SAFETY: refused (read-only), so the buffer is never handed over.
    let r = unsafe { blk.submit(&Request::write(0, &io)) };
    assert_eq!(r, Err(BlkError::ReadOnly));
    assert_eq!(blk.discard(0, 8), Err(BlkError::ReadOnly));
    assert_eq!(blk.write_zeroes(0, 8, false), Err(BlkError::ReadOnly));
    // SAFETY: `b` outlives the request.
    unsafe { blk.submit(&Request::read(0, &io)) }.expect("reads still work");
}

#[test]
fn multiqueue_spreads_requests() {
    let cfg = VirtioBlkConfig {
        max_queues: 2,
        ..VirtioBlkConfig::default()
    };
    let (dev, mut blk) = setup(all(), cfg);
    assert_eq!(blk.info().queues, 2);
    for _ in 0..4 {
        blk.flush().expect("flush");
    }
    assert_eq!(dev.available(0), 2);
    assert_eq!(dev.available(1), 2);
    assert_eq!(dev.process(0) + dev.process(1), 4);
    assert_eq!(drain(&mut blk).len(), 4);
    // Without MQ there is one queue whatever is asked.
    let (_d, blk) = setup(all() - VirtioFeatures::MQ, cfg);
    assert_eq!(blk.info().queues, 1);
}

#[test]
fn need_event_vectors() {
    // Same vectors as ring.h's notify rule, in 16 bits: old 0xFFFE, new 2.
    assert!(need_event(0xFFFE, 2, 0xFFFE));
    assert!(need_event(0xFFFF, 2, 0xFFFE));
    assert!(need_event(1, 2, 0xFFFE));
    assert!(!need_event(2, 2, 0xFFFE));
    assert!(!need_event(0xFFFD, 2, 0xFFFE));
    assert!(!need_event(5, 5, 5));
}

#[test]
fn event_idx_suppresses_and_survives_wrap() {
    let (dev, mut blk) = setup(all(), VirtioBlkConfig::default());
    // avail_event 0 (fresh): the first request (0 -> 1) notifies.
    blk.flush().expect("flush");
    assert_eq!(dev.notifications(0), 1);
    // The device says: wake me after index 5 only.
    dev.set_avail_event(0, 5);
    blk.flush().expect("flush");
    assert_eq!(dev.notifications(0), 1, "suppressed");
    dev.process(0);
    drain(&mut blk);
    // Run the 16-bit index round the clock; the device always asks for the
    // next one, so every request must notify.
    let start = dev.notifications(0);
    for notified in start..start + 70_000 {
        let next = blk_avail_guess(&dev);
        dev.set_avail_event(0, next);
        blk.flush().expect("flush");
        assert_eq!(dev.notifications(0), notified + 1, "lost a notification");
        dev.process(0);
        drain(&mut blk);
    }
    // And the driver asks for interrupts at its consumer index.
    assert!(!blk.prepare_wait().expect("prepare"));
}

/// The avail index the device has consumed up to (what a real device writes
/// into `avail_event` before sleeping).
fn blk_avail_guess(dev: &FakeVirtioBlk) -> u16 {
    // The fake consumes everything in `process`, so its consumer index is
    // the driver's avail index; read it back through the used ring state.
    dev.last_avail(0)
}

// ---------------------------------------------------------------- hostile

fn one_read(blk: &mut Blk, _buf: &mut [u8]) -> Token {
    // Leaked, so it outlives the frontend whatever the test does (a failed
    // assertion unwinds past the caller's buffers before the frontend).
    let buf: &'static mut [u8] = Box::leak(vec![0u8; 512].into_boxed_slice());
    let io = [IoBuf::from_slice(buf)];
    // SAFETY: `buf` is leaked: valid forever and never touched again.
    unsafe { blk.submit(&Request::read(0, &io)) }.expect("submit")
}

/// After a fatal fault: `submit` refuses, reset aborts what was in flight,
/// and the device works again.
fn assert_clean_reset(dev: &FakeVirtioBlk, blk: &mut Blk, fault: BlkError, in_flight: usize) {
    assert!(fault.is_device_fault() && fault.needs_reset(), "{fault}");
    assert_eq!(blk.fault(), Some(fault));
    assert_eq!(blk.flush(), Err(BlkError::Stopped));
    let resets = dev.resets();
    let mut aborted = Vec::new();
    blk.reset(&mut |t, r| aborted.push((t, r))).expect("reset");
    assert!(dev.resets() > resets);
    assert_eq!(aborted.len(), in_flight);
    assert!(aborted.iter().all(|(_, r)| *r == Err(BlkError::Aborted)));
    assert_eq!(blk.fault(), None);
    assert_eq!(blk.in_flight(), 0);
    let st = blk.stats();
    assert_eq!(st.stops, 1, "one fault, counted once");
    assert!(st.resets >= 1 && st.aborted >= in_flight as u64);
    // Usable again.
    let mut b = vec![0u8; 512];
    let t = one_read(blk, &mut b);
    assert_eq!(dev.process(0), 1);
    assert_eq!(drain(blk), vec![(t, Ok(512))]);
}

fn poll_err(blk: &mut Blk) -> (Done, BlkError) {
    let mut v = Vec::new();
    let e = blk
        .poll_completions(&mut |t, r| v.push((t, r)))
        .expect_err("fault expected");
    (v, e)
}

#[test]
fn hostile_unknown_id_out_of_range() {
    let (dev, mut blk) = setup(all(), VirtioBlkConfig::default());
    let mut b = vec![0u8; 512];
    one_read(&mut blk, &mut b);
    // Out of range, and aliasing head 0 in 16 bits (0x10000).
    dev.push_used(0, 0x1_0000, 513);
    let (done, e) = poll_err(&mut blk);
    assert!(done.is_empty());
    assert_eq!(e, BlkError::UnknownCompletion { id: 0x1_0000 });
    assert_clean_reset(&dev, &mut blk, e, 1);
}

#[test]
fn hostile_id_never_issued() {
    let (dev, mut blk) = setup(all(), VirtioBlkConfig::default());
    let mut b = vec![0u8; 512];
    one_read(&mut blk, &mut b);
    dev.push_used(0, 7, 1);
    let (_, e) = poll_err(&mut blk);
    assert_eq!(e, BlkError::UnknownCompletion { id: 7 });
    assert_clean_reset(&dev, &mut blk, e, 1);
}

#[test]
fn hostile_duplicate_completion() {
    let (dev, mut blk) = setup(all(), VirtioBlkConfig::default());
    let mut b = vec![0u8; 512];
    let mut b2 = vec![0u8; 512];
    let t = one_read(&mut blk, &mut b);
    one_read(&mut blk, &mut b2);
    let c = dev.take_chain(0).expect("chain");
    let (st, len) = dev.execute(&c);
    dev.write_status(&c, st);
    dev.push_used(0, u32::from(c.head), len);
    dev.push_used(0, u32::from(c.head), len);
    let (done, e) = poll_err(&mut blk);
    assert_eq!(done, vec![(t, Ok(512))], "the honest one is delivered once");
    assert_eq!(
        e,
        BlkError::DuplicateCompletion {
            id: u64::from(c.head)
        }
    );
    assert_clean_reset(&dev, &mut blk, e, 1);
}

#[test]
fn hostile_used_index_runs_ahead() {
    let (dev, mut blk) = setup(all(), VirtioBlkConfig::default());
    let mut b = vec![0u8; 512];
    one_read(&mut blk, &mut b);
    dev.set_used_idx(0, 40);
    let (done, e) = poll_err(&mut blk);
    assert!(done.is_empty());
    assert_eq!(
        e,
        BlkError::IndexOverrun {
            claimed: 40,
            outstanding: 1
        }
    );
    assert_clean_reset(&dev, &mut blk, e, 1);
}

#[test]
fn hostile_completion_with_nothing_outstanding() {
    let (dev, mut blk) = setup(all(), VirtioBlkConfig::default());
    dev.set_used_idx(0, 1);
    let (_, e) = poll_err(&mut blk);
    assert!(matches!(e, BlkError::IndexOverrun { outstanding: 0, .. }));
    assert_clean_reset(&dev, &mut blk, e, 0);
}

#[test]
fn hostile_impossible_length_fails_only_that_request() {
    let (dev, mut blk) = setup(all(), VirtioBlkConfig::default());
    let mut b = vec![0u8; 512];
    let mut b2 = vec![0u8; 512];
    let t1 = one_read(&mut blk, &mut b);
    let t2 = one_read(&mut blk, &mut b2);
    let c1 = dev.take_chain(0).expect("c1");
    let c2 = dev.take_chain(0).expect("c2");
    dev.write_status(&c1, 0);
    dev.push_used(0, u32::from(c1.head), 100_000);
    dev.write_status(&c2, 0);
    dev.push_used(0, u32::from(c2.head), 10); // short read
    let done = drain(&mut blk);
    assert_eq!(
        done,
        vec![
            (
                t1,
                Err(BlkError::BadLength {
                    len: 100_000,
                    writable: 513
                })
            ),
            (
                t2,
                Err(BlkError::BadLength {
                    len: 10,
                    writable: 513
                })
            ),
        ]
    );
    assert!(done[0].1.expect_err("bad length").is_device_fault());
    assert_eq!(blk.fault(), None, "not fatal: the queue is intact");
    assert_eq!(blk.stats().bad_completions, 2);
    blk.flush().expect("still usable");
}

#[test]
fn hostile_status_bytes() {
    let (dev, mut blk) = setup(all(), VirtioBlkConfig::default());
    let mut toks = Vec::new();
    for _ in 0..4 {
        toks.push(blk.flush().expect("flush"));
    }
    let chains: Vec<Chain> = std::iter::from_fn(|| dev.take_chain(0)).collect();
    for (c, st) in chains.iter().zip([1u8, 2, 3, 0x80]) {
        dev.write_status(c, st);
        dev.push_used(0, u32::from(c.head), 1);
    }
    let done = drain(&mut blk);
    let rs: Vec<_> = done.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        rs,
        vec![
            Err(BlkError::IoError),
            Err(BlkError::DeviceUnsupported(OpKind::Flush)),
            Err(BlkError::BadStatus { status: 3 }),
            Err(BlkError::BadStatus { status: 0x80 }),
        ]
    );
    // A device that completes without writing the status at all.
    let t = blk.flush().expect("flush");
    let c = dev.take_chain(0).expect("chain");
    dev.push_used(0, u32::from(c.head), 1);
    assert_eq!(
        drain(&mut blk),
        vec![(t, Err(BlkError::BadStatus { status: 0xff }))]
    );
}

#[test]
fn hostile_device_refuses_reset_keeps_buffers() {
    let (dev, mut blk) = setup(all(), VirtioBlkConfig::default());
    let mut b = vec![0u8; 512];
    one_read(&mut blk, &mut b);
    dev.set_used_idx(0, 9);
    let (_, e) = poll_err(&mut blk);
    dev.set_refuse_reset(true);
    let mut aborted = 0;
    assert_eq!(
        blk.reset(&mut |_, _| aborted += 1),
        Err(BlkError::DeviceFailed)
    );
    assert_eq!(aborted, 0, "buffers stay with a device that did not reset");
    assert_eq!(blk.in_flight(), 1);
    dev.set_refuse_reset(false);
    let fault = blk.fault().unwrap_or(e);
    assert_clean_reset(&dev, &mut blk, fault, 1);
}

#[test]
fn reset_aborts_in_flight_and_rereads_geometry() {
    let (dev, mut blk) = setup(all(), VirtioBlkConfig::default());
    let t = blk.flush().expect("flush");
    dev.set_config(0, &4096u64.to_le_bytes());
    let mut v = Vec::new();
    blk.reset(&mut |t, r| v.push((t, r))).expect("reset");
    assert_eq!(v, vec![(t, Err(BlkError::Aborted))]);
    assert_eq!(blk.info().capacity_sectors, 4096);
}

#[test]
fn garbage_config_is_clamped() {
    let dev = FakeVirtioBlk::new(all(), SECTORS, 4, 16);
    dev.set_config(20, &3u32.to_le_bytes()); // blk_size 3
    dev.set_config(34, &0u16.to_le_bytes()); // num_queues 0
    let blk = Blk::new(
        dev.clone(),
        VirtioBlkConfig {
            max_queues: 8,
            ..VirtioBlkConfig::default()
        },
    )
    .expect("init");
    assert_eq!(blk.info().block_size, 512);
    assert_eq!(blk.info().queues, 1);
}
