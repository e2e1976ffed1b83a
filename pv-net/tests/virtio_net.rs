//! virtio-net frontend against the fake device: exact header and descriptor
//! bytes, mergeable RX, checksum offload both ways, control commands, kick
//! and interrupt suppression, and a hostile device per validation case.

use pv_net::testing::virtio::{FakeVirtioNet, TestHal};
use pv_net::virtio::{
    ctrl, NetHdr, VirtioNet, VirtioNetConfig, VirtioNetFeatures as F, CTRLQ, HDR_F_DATA_VALID,
    HDR_F_NEEDS_CSUM, HDR_LEN, RXQ, TXQ,
};
use pv_net::{NetError, NetFrontend, RxCsum, RxRefill, TxCsum};
use pv_virtq::{VirtqError, USED_F_NO_NOTIFY};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

type Nic = VirtioNet<TestHal, FakeVirtioNet>;

fn nic_with(features: F, cfg: VirtioNetConfig) -> (Nic, FakeVirtioNet) {
    let dev = FakeVirtioNet::new(features, MAC, 1500, 16);
    let nic = Nic::new(dev.clone(), cfg).expect("bring-up");
    (nic, dev)
}

fn nic(features: F) -> (Nic, FakeVirtioNet) {
    nic_with(features, VirtioNetConfig::default())
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn rx_all(nic: &mut Nic) -> Vec<(Vec<u8>, RxCsum)> {
    let mut got = Vec::new();
    nic.poll_rx(usize::MAX, &mut |f| got.push((f.data.to_vec(), f.csum)))
        .expect("poll_rx");
    got
}

#[test]
fn bring_up_negotiates_and_posts_rx() {
    let (nic, dev) = nic(F::all());
    assert_eq!(dev.driver_features(), F::all());
    let info = nic.info();
    assert_eq!(info.mac, MAC);
    assert_eq!(info.mtu, 1500);
    assert!(info.tx_csum && info.rx_csum && info.link_status && info.event_idx);
    assert_eq!((info.rx_slots, info.tx_slots), (16, 16));
    // Every RX buffer posted, one writable descriptor each, one kick.
    assert_eq!(dev.available(RXQ), 16);
    assert_eq!(dev.notifications(RXQ), 1);
    let c = dev.take_chain(RXQ).expect("rx chain");
    assert_eq!(c.descs.len(), 1);
    assert!(c.descs[0].writable());
    assert_eq!(c.descs[0].len, 2048, "mergeable buffer size");
    assert_eq!(nic.stats().rx_posted, 16);
}

#[test]
fn legacy_device_refused_and_mac_fallback() {
    let dev = FakeVirtioNet::new(F::all() - F::VERSION_1, MAC, 1500, 16);
    assert_eq!(
        Nic::new(dev, VirtioNetConfig::default()).err(),
        Some(NetError::DeviceFailed)
    );
    let (nic, dev) = nic(F::VERSION_1);
    assert_eq!(nic.info().mac, VirtioNetConfig::default().fallback_mac);
    assert!(!nic.info().tx_csum);
    // Without MRG_RXBUF each buffer holds header + a max-size frame.
    let c = dev.take_chain(RXQ).expect("rx chain");
    assert_eq!(c.descs[0].len as usize, HDR_LEN + 1500 + 14 + 4);
}

#[test]
fn tx_header_bytes_plain_and_offloaded() {
    let (mut nic, dev) = nic(F::all());
    let f = frame(60, 1);
    nic.send(&f, None).expect("send");
    let seen = dev.take_tx().expect("tx");
    assert_eq!(seen.hdr, [0u8; 12]);
    assert_eq!(seen.frame, f);
    assert_eq!(seen.descs, 1);
    // Offloaded: NEEDS_CSUM, csum_start 34, csum_offset 16, num_buffers 0.
    nic.send(
        &f,
        Some(TxCsum {
            start: 34,
            offset: 16,
        }),
    )
    .expect("send");
    let seen = dev.take_tx().expect("tx");
    assert_eq!(seen.hdr, [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0]);
    assert_eq!(seen.frame, f, "frame untouched when the device checksums");
    assert_eq!(nic.poll_tx().expect("poll_tx"), 2);
    assert_eq!(nic.stats().tx_packets, 2);
    assert_eq!(nic.stats().tx_bytes, 120);
}

#[test]
fn tx_checksum_in_software_without_csum() {
    let (mut nic, dev) = nic(F::all() - F::CSUM);
    let mut f = frame(80, 2);
    f[50..52].copy_from_slice(&[0x12, 0x34]);
    nic.send(
        &f,
        Some(TxCsum {
            start: 34,
            offset: 16,
        }),
    )
    .expect("send");
    let seen = dev.take_tx().expect("tx");
    assert_eq!(seen.hdr, [0u8; 12]);
    let mut want = f.clone();
    assert!(pv_net::csum::complete(&mut want, 34, 16));
    assert_eq!(seen.frame, want);
    assert_ne!(seen.frame[50..52], [0x12, 0x34]);
    assert_eq!(nic.stats().tx_csum_sw, 1);
}

#[test]
fn tx_caller_mistakes() {
    let (mut nic, _dev) = nic(F::all());
    assert_eq!(
        nic.send(&[0u8; 13], None),
        Err(NetError::FrameTooShort { len: 13 })
    );
    assert_eq!(
        nic.send(&[0u8; 1519], None),
        Err(NetError::FrameTooLong {
            len: 1519,
            max: 1518
        })
    );
    assert_eq!(
        nic.send(
            &[0u8; 60],
            Some(TxCsum {
                start: 50,
                offset: 9
            })
        ),
        Err(NetError::BadChecksumRequest)
    );
    // Fill every slot: then TxFull until the device completes.
    for _ in 0..16 {
        nic.queue_tx(&[0u8; 60], None).expect("queue");
    }
    assert_eq!(nic.queue_tx(&[0u8; 60], None), Err(NetError::TxFull));
    assert_eq!(nic.tx_space(), 0);
}

#[test]
fn rx_frames_with_offload_flags() {
    let (mut nic, dev) = nic(F::all());
    let f = frame(100, 3);
    assert!(dev.deliver(&f, NetHdr::default()));
    let h = NetHdr {
        flags: HDR_F_DATA_VALID,
        ..NetHdr::default()
    };
    assert!(dev.deliver(&f, h));
    let h = NetHdr {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..NetHdr::default()
    };
    assert!(dev.deliver(&f, h));
    let got = rx_all(&mut nic);
    assert_eq!(
        got,
        vec![
            (f.clone(), RxCsum::None),
            (f.clone(), RxCsum::Valid),
            (
                f.clone(),
                RxCsum::Partial {
                    start: 34,
                    offset: 6
                }
            )
        ]
    );
    assert_eq!(nic.stats().rx_packets, 3);
    assert_eq!(nic.stats().rx_bytes, 300);
}

#[test]
fn mergeable_rx_reassembles() {
    let cfg = VirtioNetConfig {
        mrg_buf_len: 256,
        ..VirtioNetConfig::default()
    };
    let (mut nic, dev) = nic_with(F::all(), cfg);
    let f = frame(1500, 4);
    assert!(dev.deliver(&f, NetHdr::default()));
    // 12 + 1500 bytes over 256-byte buffers: 6 buffers.
    assert_eq!(dev.available(RXQ), 10);
    let got = rx_all(&mut nic);
    assert_eq!(got, vec![(f, RxCsum::None)]);
}

#[test]
fn hostile_rx_lengths_and_headers_drop() {
    let (mut nic, dev) = nic(F::all() - F::GUEST_CSUM);
    let f = frame(64, 5);
    let post = |bytes: &[u8], len: Option<u32>| {
        let c = dev.take_chain(RXQ).expect("buffer");
        let n = c.write_in(bytes) as u32;
        dev.push_used(RXQ, u32::from(c.head), len.unwrap_or(n));
    };
    let with = |h: NetHdr| {
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(&f);
        v
    };
    let one = NetHdr {
        num_buffers: 1,
        ..NetHdr::default()
    };
    // Length beyond the buffer, then shorter than the header.
    post(&with(one), Some(4096));
    post(&with(one), Some(11));
    // A runt frame (13 bytes).
    post(&with(one)[..HDR_LEN + 13], None);
    // Flags without GUEST_CSUM, a GSO type, an unknown flag.
    post(
        &with(NetHdr {
            flags: HDR_F_DATA_VALID,
            ..one
        }),
        None,
    );
    post(&with(NetHdr { gso_type: 1, ..one }), None);
    post(&with(NetHdr { flags: 0x80, ..one }), None);
    // num_buffers 0.
    post(&with(NetHdr::default()), None);
    // A good one: still delivered, with its own bytes.
    post(&with(one), None);
    // num_buffers implausible: it takes the buffers published after it
    // (none here) down with it.
    post(
        &with(NetHdr {
            num_buffers: 40,
            ..one
        }),
        None,
    );
    let got = rx_all(&mut nic);
    assert_eq!(got, vec![(f.clone(), RxCsum::None)]);
    let s = nic.stats();
    assert_eq!(s.rx_bad_len, 3);
    assert_eq!(s.rx_bad_header, 3);
    assert_eq!(s.rx_bad_chain, 2);
    assert!(nic.fault().is_none());
}

#[test]
fn hostile_checksum_offsets_and_missing_buffers_drop() {
    let cfg = VirtioNetConfig {
        mrg_buf_len: 256,
        ..VirtioNetConfig::default()
    };
    let (mut nic, dev) = nic_with(F::all(), cfg);
    let f = frame(64, 6);
    let bad = NetHdr {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: 60,
        csum_offset: 6,
        num_buffers: 1,
        ..NetHdr::default()
    };
    let mut v = bad.to_bytes().to_vec();
    v.extend_from_slice(&f);
    let c = dev.take_chain(RXQ).expect("buffer");
    let n = c.write_in(&v) as u32;
    dev.push_used(RXQ, u32::from(c.head), n);
    // num_buffers 3 but only one buffer published.
    let mut v = NetHdr {
        num_buffers: 3,
        ..NetHdr::default()
    }
    .to_bytes()
    .to_vec();
    v.extend_from_slice(&frame(600, 7));
    let c = dev.take_chain(RXQ).expect("buffer");
    let n = c.write_in(&v) as u32;
    dev.push_used(RXQ, u32::from(c.head), n);
    assert!(rx_all(&mut nic).is_empty());
    assert_eq!(nic.stats().rx_bad_header, 1);
    assert_eq!(nic.stats().rx_bad_chain, 1);
    // Frames beyond the MTU spread over buffers are dropped too (more
    // buffers than a max-size frame needs).
    assert!(dev.deliver(&frame(1600, 8), NetHdr::default()));
    assert!(rx_all(&mut nic).is_empty());
    assert_eq!(nic.stats().rx_bad_chain, 2);
    // And the NIC still works.
    assert!(dev.deliver(&f, NetHdr::default()));
    assert_eq!(rx_all(&mut nic), vec![(f, RxCsum::None)]);
}

#[test]
fn hostile_used_ids_stop_and_reset_recovers() {
    let (mut nic, dev) = nic(F::all());
    // An id that is not in flight on TX.
    nic.send(&frame(60, 9), None).expect("send");
    dev.push_used(TXQ, 15, 0);
    let e = nic.poll_tx().expect_err("unknown id");
    assert_eq!(e, NetError::Queue(VirtqError::UnknownId { id: 15 }));
    assert!(e.is_device_fault() && e.needs_reset());
    assert_eq!(nic.send(&frame(60, 9), None), Err(NetError::Stopped));
    assert_eq!(nic.fault(), Some(e));
    nic.reset().expect("reset");
    assert_eq!(nic.stats().resets, 1);
    assert_eq!(dev.available(RXQ), 16, "RX buffers posted again");
    let f = frame(70, 10);
    nic.send(&f, None).expect("send after reset");
    assert_eq!(dev.take_tx().map(|t| t.frame), Some(f.clone()));
    // RX used index run ahead of what is posted.
    dev.set_used_idx(RXQ, 40);
    assert!(matches!(
        nic.poll_rx(8, &mut |_| {}),
        Err(NetError::Queue(VirtqError::IndexOverrun { .. }))
    ));
    nic.reset().expect("reset");
    assert!(dev.deliver(&f, NetHdr::default()));
    assert_eq!(rx_all(&mut nic), vec![(f, RxCsum::None)]);
    // A device that will not reset keeps its buffers: the NIC stays stopped.
    dev.set_refuse_reset(true);
    assert_eq!(nic.reset(), Err(NetError::DeviceFailed));
    assert!(nic.fault().is_some());
}

#[test]
fn tx_kicks_once_per_batch_with_event_idx() {
    let (mut nic, dev) = nic(F::all());
    for i in 0..5 {
        nic.queue_tx(&frame(60, i), None).expect("queue");
    }
    assert_eq!(dev.notifications(TXQ), 0, "queue_tx never kicks");
    assert!(nic.flush_tx().expect("flush"));
    assert_eq!(dev.notifications(TXQ), 1);
    assert!(!nic.flush_tx().expect("flush"), "nothing new: no kick");
    // The device has not caught up (avail_event still 0, behind): no kick.
    nic.send(&frame(60, 6), None).expect("send");
    assert_eq!(dev.notifications(TXQ), 1);
    assert_eq!(nic.stats().kicks_suppressed, 1);
    // Device drains and asks for the next one: kick again.
    while dev.take_tx().is_some() {}
    dev.set_avail_event(TXQ, 6);
    nic.send(&frame(60, 7), None).expect("send");
    assert_eq!(dev.notifications(TXQ), 2);
}

#[test]
fn tx_no_notify_without_event_idx() {
    let (mut nic, dev) = nic(F::all() - F::EVENT_IDX);
    dev.set_used_flags(TXQ, USED_F_NO_NOTIFY);
    nic.send(&frame(60, 1), None).expect("send");
    assert_eq!(dev.notifications(TXQ), 0);
    dev.set_used_flags(TXQ, 0);
    nic.send(&frame(60, 2), None).expect("send");
    assert_eq!(dev.notifications(TXQ), 1);
}

#[test]
fn rx_refill_low_water_batches_kicks() {
    let cfg = VirtioNetConfig {
        refill: RxRefill { low_water: 12 },
        ..VirtioNetConfig::default()
    };
    let (mut nic, dev) = nic_with(F::all(), cfg);
    assert_eq!(dev.notifications(RXQ), 1);
    // The device wants a kick whenever anything is posted.
    let f = frame(60, 1);
    for _ in 0..3 {
        assert!(dev.deliver(&f, NetHdr::default()));
    }
    dev.set_avail_event(RXQ, 16);
    assert_eq!(rx_all(&mut nic).len(), 3);
    assert_eq!(nic.rx_posted(), 13, "above low water: no refill");
    assert_eq!(dev.notifications(RXQ), 1);
    assert!(dev.deliver(&f, NetHdr::default()));
    assert_eq!(rx_all(&mut nic).len(), 1);
    assert_eq!(nic.rx_posted(), 16, "at low water: refilled in one batch");
    assert_eq!(dev.notifications(RXQ), 2, "one kick for four buffers");
    assert_eq!(nic.stats().rx_posted, 20);
}

#[test]
fn interrupts_rechecked_and_suppressed() {
    let (mut nic, dev) = nic(F::all());
    let f = frame(60, 1);
    nic.disable_interrupts();
    assert!(dev.deliver(&f, NetHdr::default()));
    assert_eq!(dev.interrupts(RXQ), 0, "polling: no interrupt");
    // Re-enabling finds the frame that arrived meanwhile: no sleep.
    assert!(nic.enable_interrupts().expect("enable"));
    assert_eq!(rx_all(&mut nic).len(), 1);
    assert!(!nic.enable_interrupts().expect("enable"), "idle: may sleep");
    assert!(dev.deliver(&f, NetHdr::default()));
    assert_eq!(dev.interrupts(RXQ), 1, "asleep: interrupted");
}

#[test]
fn interrupts_armed_per_queue() {
    let (mut nic, dev) = nic(F::all());
    let f = frame(60, 1);
    nic.disable_interrupts();
    // Receive armed, transmit not: a transmit completion does not
    // interrupt, a received frame does.
    assert!(!nic.enable_interrupts_on(true, false).expect("arm rx"));
    nic.send(&f, None).expect("send");
    assert!(dev.take_tx().is_some());
    assert_eq!(dev.interrupts(TXQ), 0, "tx not armed: no interrupt");
    // Re-arming transmit finds the completion already there.
    assert!(nic.enable_interrupts_on(false, true).expect("arm tx"));
    assert_eq!(nic.poll_tx().expect("reclaim"), 1);
    assert!(!nic.enable_interrupts_on(true, true).expect("arm both"));
    nic.send(&f, None).expect("send");
    assert!(dev.take_tx().is_some());
    assert_eq!(dev.interrupts(TXQ), 1, "tx armed: interrupted");
    assert!(dev.deliver(&f, NetHdr::default()));
    assert_eq!(dev.interrupts(RXQ), 1, "rx armed: interrupted");
}

#[test]
fn completions_pending_looks_without_consuming() {
    let (mut nic, dev) = nic(F::all());
    let f = frame(60, 1);
    nic.disable_interrupts();
    assert!(!nic.completions_pending(true, true), "nothing yet");
    assert!(dev.deliver(&f, NetHdr::default()));
    assert!(nic.completions_pending(true, false), "rx completion seen");
    assert!(!nic.completions_pending(false, true), "tx has none");
    // Looking twice consumes nothing; polling does.
    assert!(nic.completions_pending(true, false));
    assert_eq!(rx_all(&mut nic).len(), 1);
    assert!(!nic.completions_pending(true, true));
    nic.send(&f, None).expect("send");
    assert!(dev.take_tx().is_some());
    assert!(nic.completions_pending(false, true), "tx completion seen");
    assert!(!nic.completions_pending(true, false));
    assert_eq!(nic.poll_tx().expect("reclaim"), 1);
    assert!(!nic.completions_pending(true, true));
}

#[test]
fn control_commands() {
    let (mut nic, dev) = nic(F::all());
    nic.set_promisc(true).expect("promisc");
    nic.set_allmulti(false).expect("allmulti");
    let mac = [2, 0, 0, 0, 0, 9];
    nic.set_mac(mac).expect("mac");
    assert_eq!(nic.info().mac, mac);
    assert_eq!(
        dev.ctrl_log(),
        vec![vec![0, 0, 1], vec![0, 1, 0], vec![1, 1, 2, 0, 0, 0, 0, 9]]
    );
    assert_eq!(dev.notifications(CTRLQ), 3);
    dev.set_ctrl_ack(ctrl::ERR);
    assert_eq!(nic.set_promisc(false), Err(NetError::CtrlFailed));
    assert_eq!(nic.stats().ctrl_ok, 3);
    assert_eq!(nic.stats().ctrl_err, 1);
    let (mut plain, _dev) = nic_with(
        F::all() - F::CTRL_VQ - F::CTRL_RX - F::CTRL_MAC_ADDR,
        VirtioNetConfig::default(),
    );
    assert_eq!(plain.set_promisc(true), Err(NetError::Unsupported));
    assert_eq!(plain.set_mac(mac), Err(NetError::Unsupported));
}

#[test]
fn link_state_follows_config() {
    let (mut nic, dev) = nic(F::all());
    assert!(nic.link_up());
    dev.set_link(false);
    assert!(!nic.link_up());
    let (mut plain, dev) = nic_with(F::all() - F::STATUS, VirtioNetConfig::default());
    dev.set_link(false);
    assert!(plain.link_up(), "without STATUS the link is always up");
}
