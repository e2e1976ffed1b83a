//! Unit tests of the validated virtqueue against the device side in
//! `testing`: exact descriptor bytes, hostile used rings, kick and
//! interrupt suppression.

use core::ptr::NonNull;
use std::vec;
use std::vec::Vec;

use super::testing::{DeviceQueue, TestHal};
use super::*;

type Q = VirtQueue<TestHal>;

fn dev(q: &Q) -> DeviceQueue {
    let (d, a, u) = q.addresses();
    DeviceQueue::new(u32::from(q.size()), d, a, u)
}

fn raw(b: &mut [u8]) -> NonNull<[u8]> {
    NonNull::from(b)
}

#[test]
fn need_event_wraps() {
    // Event in [old, new) modulo 2^16.
    assert!(need_event(0xFFFF, 2, 0xFFFE));
    assert!(need_event(0, 2, 0xFFFE));
    assert!(need_event(1, 2, 0xFFFE));
    assert!(!need_event(2, 2, 0xFFFE));
    assert!(!need_event(0xFFFD, 2, 0xFFFE));
    assert!(!need_event(5, 5, 5));
}

#[test]
fn bad_sizes_refused() {
    assert_eq!(Q::new(0, 0, false, false).err(), Some(VirtqError::BadSize));
    assert_eq!(Q::new(0, 6, false, false).err(), Some(VirtqError::BadSize));
}

#[test]
fn direct_chain_bytes_and_completion() {
    let mut q = Q::new(0, 8, false, false).expect("queue");
    let mut d = dev(&q);
    let mut out = *b"hello";
    let mut inb = [0u8; 16];
    // SAFETY: both buffers outlive the chain, which is popped below.
    let head =
        unsafe { q.add(&[Part::Out(raw(&mut out)), Part::In(raw(&mut inb))], 77) }.expect("add");
    assert_eq!(q.in_flight(), 1);
    let c = d.take_chain().expect("chain");
    assert_eq!(c.head, head);
    assert!(!c.indirect);
    assert_eq!(c.descs.len(), 2);
    let d0 = &c.descs[0];
    assert_eq!(&d0.raw[8..12], &5u32.to_le_bytes());
    assert_eq!(d0.flags, DESC_F_NEXT);
    assert_eq!((head, d0.next), (0, 1));
    assert_eq!(c.descs[1].flags, DESC_F_WRITE);
    assert_eq!(&c.descs[1].raw[8..12], &16u32.to_le_bytes());
    assert_eq!(c.readable_bytes(), b"hello");
    assert_eq!(c.writable(), 16);
    assert_eq!(c.write_in(b"world"), 5);
    d.push_used(u32::from(c.head), 5);
    let u = q.pop().expect("pop").expect("used");
    assert_eq!(u.token, 77);
    assert_eq!(u.len, Ok(5));
    assert_eq!(u.writable, 16);
    assert_eq!(&inb[..5], b"world");
    assert_eq!(q.in_flight(), 0);
    assert_eq!(q.free_descs(), 8);
    assert_eq!(q.pop(), Ok(None));
}

#[test]
fn indirect_chain_takes_one_slot() {
    let mut q = Q::new(0, 2, false, true).expect("queue");
    let mut d = dev(&q);
    let mut bufs = [[0u8; 4]; 5];
    let parts: Vec<Part> = bufs.iter_mut().map(|b| Part::In(raw(b))).collect();
    // SAFETY: `bufs` outlives the chain (popped below).
    unsafe { q.add(&parts, 1) }.expect("add");
    // SAFETY: as above.
    unsafe { q.add(&parts[..1], 2) }.expect("single part goes direct");
    assert!(!q.fits(2));
    let c = d.take_chain().expect("chain");
    assert!(c.indirect);
    assert_eq!(c.ring_desc.flags, DESC_F_INDIRECT);
    assert_eq!(c.ring_desc.len, 5 * 16);
    assert_eq!(c.descs.len(), 5);
    assert_eq!(c.writable(), 20);
    d.push_used(u32::from(c.head), 20);
    assert_eq!(q.pop().expect("pop").map(|u| u.token), Some(1));
}

#[test]
fn too_many_parts_and_full() {
    let mut q = Q::new(0, 2, false, false).expect("queue");
    let mut b = [[0u8; 1]; 3];
    let parts: Vec<Part> = b.iter_mut().map(|x| Part::Out(raw(x))).collect();
    // SAFETY: refused before anything is shared.
    let e = unsafe { q.add(&parts, 0) };
    assert_eq!(e, Err(VirtqError::TooManyParts { needed: 3, max: 2 }));
    // SAFETY: as above.
    let e = unsafe { q.add(&[], 0) };
    assert!(matches!(e, Err(VirtqError::TooManyParts { .. })));
    // SAFETY: `b` outlives the queue's use of it (drained below).
    unsafe { q.add(&parts[..2], 0) }.expect("add");
    // SAFETY: refused.
    assert_eq!(unsafe { q.add(&parts[2..], 1) }, Err(VirtqError::Full));
    let mut got = Vec::new();
    q.drain(&mut |t| got.push(t));
    assert_eq!(got, vec![0]);
    assert_eq!(q.in_flight(), 0);
}

#[test]
fn hostile_used_ring() {
    let mut q = Q::new(0, 4, false, false).expect("queue");
    let mut d = dev(&q);
    let mut b = [0u8; 8];
    let mut b2 = [0u8; 8];
    // SAFETY: `b` and `b2` outlive the chains (the queue is dropped first).
    unsafe { q.add(&[Part::In(raw(&mut b))], 5) }.expect("add");
    // SAFETY: as above.
    unsafe { q.add(&[Part::In(raw(&mut b2))], 6) }.expect("add");
    // Never-issued id, out-of-range id.
    d.push_used(3, 0);
    assert_eq!(q.pop(), Err(VirtqError::UnknownId { id: 3 }));
    d.set_used_idx(0);
    d.push_used(0x1_0000, 0);
    assert_eq!(q.pop(), Err(VirtqError::UnknownId { id: 0x1_0000 }));
    // Index run ahead.
    d.set_used_idx(3);
    assert_eq!(
        q.pop(),
        Err(VirtqError::IndexOverrun {
            claimed: 3,
            in_flight: 2
        })
    );
    assert!(VirtqError::IndexOverrun {
        claimed: 2,
        in_flight: 1
    }
    .needs_reset());
    // Too long: reported on that completion, buffer back.
    d.set_used_idx(0);
    d.push_used(0, 9);
    let u = q.pop().expect("pop").expect("used");
    assert_eq!(
        u.len,
        Err(VirtqError::BadLength {
            len: 9,
            writable: 8
        })
    );
    assert!(!VirtqError::BadLength {
        len: 9,
        writable: 8
    }
    .needs_reset());
    // Same id again: duplicate.
    d.push_used(0, 0);
    assert_eq!(q.pop(), Err(VirtqError::DuplicateId { id: 0 }));
}

#[test]
fn event_idx_kicks_once_per_batch_and_wraps() {
    let mut q = Q::new(0, 4, true, false).expect("queue");
    let mut d = dev(&q);
    let mut b = [[0u8; 1]; 4];
    let mut kicks = 0;
    let mut start = 0u16;
    // Run the 16-bit index across the wrap; the device always asks for a
    // kick at the next index it expects.
    for round in 0..(0x1_0000 / 3 + 4) {
        d.set_avail_event(start);
        for (i, x) in b.iter_mut().enumerate().take(3) {
            // SAFETY: completed below before reuse.
            unsafe { q.add(&[Part::In(raw(x))], i as u32) }.expect("add");
        }
        if q.kick_needed() {
            kicks += 1;
        }
        assert!(!q.kick_needed(), "nothing new: no kick");
        while let Some(c) = d.take_chain() {
            d.push_used(u32::from(c.head), 0);
        }
        for _ in 0..3 {
            q.pop().expect("pop").expect("used");
        }
        start = start.wrapping_add(3);
        assert_eq!(kicks, round + 1, "one kick per batch");
    }
    // Device asked for nothing in range: no kick.
    d.set_avail_event(start.wrapping_add(100));
    // SAFETY: drained below.
    unsafe { q.add(&[Part::In(raw(&mut b[0]))], 0) }.expect("add");
    assert!(!q.kick_needed());
    q.drain(&mut |_| {});
}

#[test]
fn no_notify_flag_without_event_idx() {
    let mut q = Q::new(0, 4, false, false).expect("queue");
    let d = dev(&q);
    let mut b = [0u8; 1];
    d.set_used_flags(USED_F_NO_NOTIFY);
    // SAFETY: drained below.
    unsafe { q.add(&[Part::In(raw(&mut b))], 0) }.expect("add");
    assert!(!q.kick_needed());
    q.drain(&mut |_| {});
    d.set_used_flags(0);
    // SAFETY: drained below.
    unsafe { q.add(&[Part::In(raw(&mut b))], 0) }.expect("add");
    assert!(q.kick_needed());
    q.drain(&mut |_| {});
}

#[test]
fn interrupts_enable_recheck_and_disable() {
    for event_idx in [false, true] {
        let mut q = Q::new(0, 4, event_idx, false).expect("queue");
        let mut d = dev(&q);
        let mut b = [[0u8; 1]; 2];
        // SAFETY: popped below.
        unsafe { q.add(&[Part::In(raw(&mut b[0]))], 0) }.expect("add");
        // SAFETY: popped below.
        unsafe { q.add(&[Part::In(raw(&mut b[1]))], 1) }.expect("add");
        q.disable_interrupts();
        let c = d.take_chain().expect("chain");
        let old = d.used_idx;
        d.push_used(u32::from(c.head), 0);
        assert!(!d.interrupt_needed(old, event_idx), "disabled");
        // Re-check after enabling finds the completion published meanwhile.
        assert!(q.enable_interrupts());
        q.pop().expect("pop").expect("used");
        assert!(!q.enable_interrupts());
        if event_idx {
            assert_eq!(d.used_event(), 1);
        }
        let c = d.take_chain().expect("chain");
        let old = d.used_idx;
        d.push_used(u32::from(c.head), 0);
        assert!(d.interrupt_needed(old, event_idx), "enabled");
        q.pop().expect("pop").expect("used");
    }
}

#[test]
fn dma_parts_are_named_by_address_not_shared() {
    // A driver's own DMA region (virtio-blk's header and status byte): the
    // device must see the region's addresses, and writes into the `DmaIn`
    // byte must land there, not in a bounce buffer.
    for indirect in [false, true] {
        let mut q = Q::new(0, 8, false, indirect).expect("queue");
        let mut d = dev(&q);
        let region = DmaRegion::<TestHal>::new(64).expect("region");
        region.put_u32(0, 0xdead_beef);
        region.put_u8(32, 0xff);
        let mut data = [0u8; 8];
        let head = q.next_head().expect("free head");
        let parts = [
            Part::DmaOut {
                paddr: region.paddr(0),
                len: 16,
            },
            Part::In(raw(&mut data)),
            Part::DmaIn {
                paddr: region.paddr(32),
                len: 1,
            },
        ];
        // SAFETY: `data` and `region` outlive the chain (popped below).
        let got = unsafe { q.add(&parts, 5) }.expect("add");
        assert_eq!(got, head, "next_head names the head add uses");
        let c = d.take_chain().expect("chain");
        assert_eq!(c.indirect, indirect);
        assert_eq!(c.descs.len(), 3);
        assert_eq!(c.descs[0].addr, region.paddr(0));
        assert_eq!(c.descs[0].len, 16);
        assert!(!c.descs[0].writable());
        assert_eq!(&c.descs[0].contents()[..4], &0xdead_beefu32.to_le_bytes());
        assert_eq!(c.descs[2].addr, region.paddr(32));
        assert!(c.descs[2].writable());
        assert_eq!(c.writable(), 9);
        assert_eq!(c.write_in(b"abcdefgh\x00"), 9);
        d.push_used(u32::from(c.head), 9);
        let u = q.pop().expect("pop").expect("used");
        assert_eq!((u.token, u.len, u.writable), (5, Ok(9), 9));
        assert_eq!(&data, b"abcdefgh");
        assert_eq!(region.get_u8(32), 0, "status written in place");
        assert_eq!(q.free_descs(), 8);
    }
}

#[test]
fn dma_in_counts_towards_length_check() {
    let mut q = Q::new(0, 4, false, false).expect("queue");
    let mut d = dev(&q);
    let region = DmaRegion::<TestHal>::new(16).expect("region");
    let parts = [Part::DmaIn {
        paddr: region.paddr(0),
        len: 1,
    }];
    // SAFETY: `region` outlives the chain.
    unsafe { q.add(&parts, 1) }.expect("add");
    let c = d.take_chain().expect("chain");
    d.push_used(u32::from(c.head), 2);
    let u = q.pop().expect("pop").expect("used");
    assert_eq!(
        u.len,
        Err(VirtqError::BadLength {
            len: 2,
            writable: 1
        })
    );
}

#[test]
fn set_used_event_asks_for_the_next_completion() {
    let mut q = Q::new(0, 4, true, false).expect("queue");
    let mut d = dev(&q);
    let mut b = [0u8; 4];
    // SAFETY: `b` outlives the chain.
    unsafe { q.add(&[Part::In(raw(&mut b))], 1) }.expect("add");
    let c = d.take_chain().expect("chain");
    d.push_used(u32::from(c.head), 0);
    assert!(q.pop().expect("pop").is_some());
    q.disable_interrupts();
    assert_eq!(d.used_event(), 0);
    q.set_used_event();
    assert_eq!(d.used_event(), 1);
    // Without EVENT_IDX it leaves the flags alone.
    let mut q = Q::new(0, 4, false, false).expect("queue");
    let d = dev(&q);
    q.disable_interrupts();
    q.set_used_event();
    assert_eq!(d.avail_flags(), AVAIL_F_NO_INTERRUPT);
}

#[test]
fn fake_transport_drives_a_queue_end_to_end() {
    use super::testing::FakeTransport;
    use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};

    let mut t = FakeTransport::with_model(DeviceType::Block, 1 << 29, vec![7u8; 8], 2, 8, ());
    let dev = t.clone();
    assert_eq!(t.device_type(), DeviceType::Block);
    assert_eq!(t.max_queue_size(1), 8);
    assert_eq!(t.max_queue_size(2), 0, "no third queue");
    t.write_driver_features(1 << 29);
    assert_eq!(dev.driver_feature_bits(), 1 << 29);
    assert_eq!(t.read_config_space::<u32>(4), Ok(0x0707_0707));
    assert!(
        t.read_config_space::<u32>(6).is_err(),
        "past the config end"
    );
    let gen = t.read_config_generation();
    dev.set_config(0, &[1]);
    assert_ne!(t.read_config_generation(), gen);

    let mut q = Q::new(1, 8, true, false).expect("queue");
    let (d, a, u) = q.addresses();
    t.queue_set(1, 8, d, a, u);
    assert!(t.queue_used(1) && !dev.queue_ready(0));
    let mut b = [0u8; 4];
    // SAFETY: `b` outlives the chain (popped below).
    unsafe { q.add(&[Part::In(raw(&mut b))], 9) }.expect("add");
    if q.kick_needed() {
        t.notify(1);
    }
    assert_eq!(dev.notifications(1), 1);
    let c = dev.take_chain(1).expect("chain");
    assert_eq!(c.queue, 1);
    c.write_in(b"abcd");
    // The driver asked for an interrupt at the next completion.
    assert!(!q.enable_interrupts());
    dev.push_used(1, u32::from(c.head), 4);
    assert_eq!(dev.interrupts(1), 1);
    let u = q.pop().expect("pop").expect("used");
    assert_eq!((u.token, u.len), (9, Ok(4)));
    assert_eq!(&b, b"abcd");

    // Reset: queues forgotten, kick counts kept; a hostile device refuses.
    t.set_status(DeviceStatus::empty());
    assert_eq!(dev.resets(), 1);
    assert!(!dev.queue_ready(1));
    assert_eq!(dev.notifications(1), 1);
    t.set_status(DeviceStatus::DRIVER_OK);
    dev.set_refuse_reset(true);
    t.set_status(DeviceStatus::empty());
    assert_eq!(t.get_status(), DeviceStatus::DRIVER_OK);
    dev.set_needs_reset();
    assert!(t.get_status().contains(DeviceStatus::DEVICE_NEEDS_RESET));
    q.drain(&mut |_| {});
}

#[test]
fn dma_region_writes_wire_structs_in_wire_order() {
    let r = DmaRegion::<TestHal>::new(64).expect("dma");
    let h = wire::blk::ReqHeader::new(wire::blk::T_OUT, 0x0102_0304_0506_0708);
    let want = [1, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1];
    // Aligned (word stores) and unaligned (byte stores) offsets.
    for off in [20, 3] {
        r.write(off, &h);
        assert_eq!(r.read::<[u8; 16]>(off), want, "at {off}");
        assert_eq!(r.read::<wire::blk::ReqHeader>(off), h);
    }
    assert_eq!(r.get_u32(20), wire::blk::T_OUT);
    // Nothing around the structs was written.
    assert_eq!(r.get_u8(2), 0);
    assert_eq!(r.get_u8(36), 0);
}
