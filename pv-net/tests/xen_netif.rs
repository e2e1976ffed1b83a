//! Xen netif frontend against the fake netback on xenbus's in-process
//! platform: exact request bytes both rings, handshake keys, multi-slot and
//! extra-info RX, checksum flags, event suppression, and a hostile backend
//! per validation case.

use pv_net::testing::xen::{extra_as_rsp, FakeNetback};
use pv_net::xen::{XenNetConfig, XenNetFront};
use pv_net::{Gso, NetError, NetFrontend, RxCsum, RxRefill, TxCsum};
use xenbus::platform::inproc::LocalPlatform;
use xenbus::ring::RingError;
use xenbus::wire::netif::{
    NetifExtraInfo, NetifRxResponse, NetifTxResponse, GSO_TYPE_TCPV4, RSP_DROPPED, RSP_ERROR,
    RXF_CSUM_BLANK, RXF_DATA_VALIDATED, RXF_EXTRA_INFO, RXF_MORE_DATA, TXF_CSUM_BLANK,
    TXF_DATA_VALIDATED, TXF_MORE_DATA,
};
use zerocopy::IntoBytes;

type Front<'p> = XenNetFront<&'p LocalPlatform>;

fn connect<'p>(plat: &'p LocalPlatform, cfg: XenNetConfig) -> (Front<'p>, FakeNetback<'p>) {
    let front = Front::new(plat, cfg).expect("front");
    let (t, r) = front.ring_refs();
    let (pt, pr) = front.event_channels();
    let back = FakeNetback::connect(plat, t, r, pt, pr).expect("back");
    (front, back)
}

fn ipv4_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect();
    f[12] = 0x08;
    f[13] = 0x00;
    f
}

fn rx_all(front: &mut Front<'_>) -> Vec<(Vec<u8>, RxCsum, Option<Gso>)> {
    let mut got = Vec::new();
    front
        .poll_rx(usize::MAX, &mut |f| {
            got.push((f.data.to_vec(), f.csum, f.gso))
        })
        .expect("poll_rx");
    got
}

#[test]
fn rx_copy_required() {
    let plat = LocalPlatform::new();
    let cfg = XenNetConfig {
        feature_rx_copy: false,
        ..XenNetConfig::default()
    };
    assert_eq!(Front::new(&plat, cfg).err(), Some(NetError::DeviceFailed));
}

#[test]
fn handshake_keys_and_rx_requests() {
    let plat = LocalPlatform::new();
    let (front, mut back) = connect(&plat, XenNetConfig::default());
    let keys = front.front_keys();
    let (t, r) = front.ring_refs();
    let (pt, _) = front.event_channels();
    let get = |k: &str| keys.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    assert_eq!(get("tx-ring-ref"), Some(t.to_string()));
    assert_eq!(get("rx-ring-ref"), Some(r.to_string()));
    assert_eq!(get("event-channel"), Some(pt.to_string()));
    assert_eq!(get("request-rx-copy").as_deref(), Some("1"));
    assert_eq!(get("feature-rx-notify").as_deref(), Some("1"));
    assert_eq!(get("feature-sg").as_deref(), Some("1"));
    assert_eq!(get("feature-no-csum-offload").as_deref(), Some("1"));
    assert_eq!(get("event-channel-tx"), None);
    let info = front.info();
    assert_eq!((info.rx_slots, info.tx_slots, info.mtu), (256, 256, 1500));
    // Every RX slot posted: id = slot, pad 0, a distinct grant each.
    assert_eq!(back.rx_available(), 256);
    assert_eq!(front.rx_posted(), 256);
    // The initial post's event went nowhere (the backend had not bound
    // yet); its port starts pending instead.
    assert_eq!(back.rx_kicks(), 0);
    assert_eq!(front.stats().kicks, 1);
    let req = back
        .respond_rx_raw(NetifRxResponse::default())
        .expect("req");
    assert_eq!(&req.as_bytes()[..4], &[0, 0, 0, 0]);
    let req = back
        .respond_rx_raw(NetifRxResponse::default())
        .expect("req");
    assert_eq!(req.id, 1);
    assert_ne!(back.rx_requests[0].gref, back.rx_requests[1].gref);
}

#[test]
fn split_event_channels() {
    let plat = LocalPlatform::new();
    let cfg = XenNetConfig {
        feature_split_event_channels: true,
        ..XenNetConfig::default()
    };
    let (mut front, mut back) = connect(&plat, cfg);
    let (pt, pr) = front.event_channels();
    assert_ne!(pt, pr);
    let keys = front.front_keys();
    assert!(keys.contains(&("event-channel-tx", pt.to_string())));
    assert!(keys.contains(&("event-channel-rx", pr.to_string())));
    assert!(!keys.iter().any(|(k, _)| *k == "event-channel"));
    assert_eq!((back.tx_kicks(), back.rx_kicks()), (0, 0));
    front.send(&ipv4_frame(60, 1), None).expect("send");
    assert_eq!((back.tx_kicks(), back.rx_kicks()), (1, 0));
    // Answers on TX wake the TX port only.
    assert!(!front.enable_interrupts().expect("arm"));
    back.take_tx().expect("tx");
    let (ft, fr) = (
        plat.event(pt).map(|e| e.count()),
        plat.event(pr).map(|e| e.count()),
    );
    assert_eq!((ft, fr), (Some(1), Some(0)));
}

#[test]
fn tx_request_bytes() {
    let plat = LocalPlatform::new();
    let (mut front, mut back) = connect(&plat, XenNetConfig::default());
    let f = ipv4_frame(60, 2);
    front.send(&f, None).expect("send");
    let p = back.take_tx().expect("tx");
    assert_eq!(p.frame, f);
    assert_eq!(p.reqs.len(), 1);
    let b = p.reqs[0].as_bytes();
    // gref u32, offset 0, flags 0, id 0, size 60.
    assert_eq!(&b[4..], &[0, 0, 0, 0, 0, 0, 60, 0]);
    // IPv4 checksum offload: csum_blank | data_validated.
    front
        .send(
            &f,
            Some(TxCsum {
                start: 34,
                offset: 16,
            }),
        )
        .expect("send");
    let p = back.take_tx().expect("tx");
    assert_eq!(p.reqs[0].flags, TXF_CSUM_BLANK | TXF_DATA_VALIDATED);
    assert_eq!(p.frame, f);
    assert_eq!(front.poll_tx().expect("poll_tx"), 2);
    // IPv6 without the backend's feature: checksummed here, no flags.
    let mut f6 = f.clone();
    f6[12..14].copy_from_slice(&[0x86, 0xDD]);
    front
        .send(
            &f6,
            Some(TxCsum {
                start: 34,
                offset: 16,
            }),
        )
        .expect("send");
    let p = back.take_tx().expect("tx");
    assert_eq!(p.reqs[0].flags, 0);
    let mut want = f6.clone();
    assert!(pv_net::csum::complete(&mut want, 34, 16));
    assert_eq!(p.frame, want);
    assert_eq!(front.stats().tx_csum_sw, 1);
}

#[test]
fn tx_jumbo_frame_spans_slots() {
    let plat = LocalPlatform::new();
    let cfg = XenNetConfig {
        mtu: Some(9000),
        ..XenNetConfig::default()
    };
    let (mut front, mut back) = connect(&plat, cfg);
    let f = ipv4_frame(9014, 3);
    front.send(&f, None).expect("send");
    let p = back.take_tx().expect("tx");
    assert_eq!(p.reqs.len(), 3);
    assert_eq!(p.reqs[0].size, 9014, "first slot carries the packet size");
    assert_eq!((p.reqs[1].size, p.reqs[2].size), (4096, 9014 - 8192));
    assert_eq!(p.reqs[0].flags & TXF_MORE_DATA, TXF_MORE_DATA);
    assert_eq!(p.reqs[1].flags & TXF_MORE_DATA, TXF_MORE_DATA);
    assert_eq!(p.reqs[2].flags & TXF_MORE_DATA, 0);
    assert_eq!(p.frame, f);
    assert_eq!(front.poll_tx().expect("poll"), 3);
    // Without sg the MTU is cut to fit a page.
    let cfg = XenNetConfig {
        mtu: Some(9000),
        feature_sg: false,
        ..XenNetConfig::default()
    };
    let plat = LocalPlatform::new();
    let front = Front::new(&plat, cfg).expect("front");
    assert_eq!(front.info().mtu, 4096 - 18);
}

#[test]
fn rx_frames_slots_and_extras() {
    let plat = LocalPlatform::new();
    let cfg = XenNetConfig {
        mtu: Some(9000),
        rx_csum_offload: true,
        ..XenNetConfig::default()
    };
    let (mut front, mut back) = connect(&plat, cfg);
    let a = ipv4_frame(100, 4);
    let b = ipv4_frame(5000, 5);
    let c = ipv4_frame(3000, 6);
    assert!(back.deliver(&a, RXF_DATA_VALIDATED, None, 4096));
    assert!(back.deliver(&b, 0, None, 1000));
    assert!(back.deliver(&c, RXF_CSUM_BLANK, Some((GSO_TYPE_TCPV4, 1448)), 1024));
    let got = rx_all(&mut front);
    assert_eq!(
        got,
        vec![
            (a, RxCsum::Valid, None),
            (b, RxCsum::None, None),
            (
                c,
                RxCsum::Blank,
                Some(Gso {
                    kind: GSO_TYPE_TCPV4,
                    size: 1448
                })
            ),
        ]
    );
    assert_eq!(front.stats().rx_packets, 3);
}

#[test]
fn hostile_rx_responses_drop_and_ring_stays_in_step() {
    let plat = LocalPlatform::new();
    let cfg = XenNetConfig {
        refill: RxRefill { low_water: 256 },
        ..XenNetConfig::default()
    };
    let (mut front, mut back) = connect(&plat, cfg);
    let good = ipv4_frame(80, 7);
    let rsp = |flags: u16, status: i16, offset: u16| NetifRxResponse {
        id: 0,
        offset,
        flags,
        status,
    };
    // Backend errors.
    back.respond_rx_raw(rsp(0, RSP_ERROR, 0));
    back.respond_rx_raw(rsp(0, RSP_DROPPED, 0));
    // Zero length, past the page, a runt.
    back.respond_rx_raw(rsp(0, 0, 0));
    back.respond_rx_raw(rsp(0, 100, 4000));
    back.respond_rx_raw(rsp(0, 10, 0));
    // Unknown flag bit; csum_blank though we said no-csum-offload.
    back.respond_rx_raw(rsp(0x40, 60, 0));
    back.respond_rx_raw(rsp(RXF_CSUM_BLANK, 60, 0));
    // extra_info on a second slot.
    back.respond_rx_raw(rsp(RXF_MORE_DATA, 60, 0));
    back.respond_rx_raw(rsp(RXF_EXTRA_INFO, 60, 0));
    // An extra of unknown type.
    back.respond_rx_raw(rsp(RXF_EXTRA_INFO, 60, 0));
    back.respond_rx_raw(extra_as_rsp(&NetifExtraInfo {
        type_: 9,
        flags: 0,
        u: [0; 6],
    }));
    // A chain of 19 data slots.
    for i in 0..19 {
        let more = if i < 18 { RXF_MORE_DATA } else { 0 };
        back.respond_rx_raw(rsp(more, 100, 0));
    }
    back.push_rx();
    assert!(back.deliver(&good, 0, None, 4096));
    let got = rx_all(&mut front);
    assert_eq!(got, vec![(good.clone(), RxCsum::None, None)]);
    let s = front.stats();
    assert_eq!(s.rx_errors, 2);
    assert_eq!(s.rx_bad_len, 3);
    assert_eq!(s.rx_bad_header, 4);
    assert_eq!(s.rx_bad_chain, 1);
    assert!(front.fault().is_none());
    // Slots were reposted: the ring is still full of buffers.
    assert_eq!(front.rx_posted(), 256);
}

#[test]
fn hostile_rx_producer_overrun_stops_then_reset() {
    let plat = LocalPlatform::new();
    let (mut front, back) = connect(&plat, XenNetConfig::default());
    // 256 posted; claim 257 responses.
    for _ in 0..257 {
        back.inject_rx(&NetifRxResponse::default());
    }
    let e = front.poll_rx(usize::MAX, &mut |_| {}).expect_err("overrun");
    assert!(matches!(
        e,
        NetError::Ring(RingError::ResponseOverrun { .. })
    ));
    assert!(e.is_device_fault() && e.needs_reset());
    assert_eq!(front.send(&ipv4_frame(60, 1), None), Err(NetError::Stopped));
    drop(back);
    front.reset().expect("reset");
    let (t, r) = front.ring_refs();
    let (pt, pr) = front.event_channels();
    let mut back = FakeNetback::connect(&plat, t, r, pt, pr).expect("reconnect");
    let f = ipv4_frame(70, 8);
    assert!(back.deliver(&f, 0, None, 4096));
    assert_eq!(rx_all(&mut front), vec![(f.clone(), RxCsum::None, None)]);
    front.send(&f, None).expect("send");
    assert_eq!(back.take_tx().map(|p| p.frame), Some(f));
    assert_eq!(front.stats().resets, 1);
    assert_eq!(front.leaked_pages(), 0);
}

#[test]
fn hostile_tx_ids_and_statuses() {
    let plat = LocalPlatform::new();
    let (mut front, mut back) = connect(&plat, XenNetConfig::default());
    front.send(&ipv4_frame(60, 1), None).expect("send");
    front.send(&ipv4_frame(60, 2), None).expect("send");
    let r0 = back.take_tx_request().expect("req");
    let r1 = back.take_tx_request().expect("req");
    back.respond_tx(NetifTxResponse {
        id: r0.id,
        status: RSP_ERROR,
    });
    assert_eq!(front.poll_tx().expect("poll"), 1);
    assert_eq!(front.stats().tx_errors, 1);
    // Answer r0 again: duplicate id.
    back.respond_tx(NetifTxResponse {
        id: r0.id,
        status: 0,
    });
    let e = front.poll_tx().expect_err("duplicate");
    assert_eq!(
        e,
        NetError::Ring(RingError::DuplicateResponseId {
            id: u64::from(r0.id)
        })
    );
    let _ = r1;
    assert_eq!(front.poll_tx(), Err(NetError::Stopped));
    // Unknown id on a fresh connection.
    let plat = LocalPlatform::new();
    let (mut front, mut back) = connect(&plat, XenNetConfig::default());
    front.send(&ipv4_frame(60, 1), None).expect("send");
    back.take_tx_request().expect("req");
    back.respond_tx(NetifTxResponse { id: 300, status: 0 });
    assert_eq!(
        front.poll_tx(),
        Err(NetError::Ring(RingError::UnknownResponseId { id: 300 }))
    );
    // TX producer run ahead.
    let plat = LocalPlatform::new();
    let (mut front, back) = connect(&plat, XenNetConfig::default());
    front.send(&ipv4_frame(60, 1), None).expect("send");
    back.set_tx_rsp_prod(5);
    assert!(matches!(
        front.poll_tx(),
        Err(NetError::Ring(RingError::ResponseOverrun { .. }))
    ));
}

#[test]
fn tx_event_suppression() {
    let plat = LocalPlatform::new();
    let (mut front, mut back) = connect(&plat, XenNetConfig::default());
    for i in 0..4 {
        front.queue_tx(&ipv4_frame(60, i), None).expect("queue");
    }
    assert_eq!(back.tx_kicks(), 0, "queue_tx never notifies");
    assert!(front.flush_tx().expect("flush"));
    assert_eq!(back.tx_kicks(), 1, "one event for the batch");
    // Backend busy (has not re-armed req_event): no event.
    front.send(&ipv4_frame(60, 5), None).expect("send");
    assert_eq!(back.tx_kicks(), 1);
    assert_eq!(front.stats().kicks_suppressed, 1);
    while back.take_tx().is_some() {}
    assert!(!back.rearm_tx());
    front.send(&ipv4_frame(60, 6), None).expect("send");
    assert_eq!(back.tx_kicks(), 2);
}

#[test]
fn rx_refill_and_interrupt_recheck() {
    let plat = LocalPlatform::new();
    let cfg = XenNetConfig {
        refill: RxRefill { low_water: 250 },
        ..XenNetConfig::default()
    };
    let (mut front, mut back) = connect(&plat, cfg);
    assert_eq!(back.rx_kicks(), 0);
    let f = ipv4_frame(60, 9);
    for _ in 0..3 {
        assert!(back.deliver(&f, 0, None, 4096));
    }
    // Re-enabling finds the frames already there.
    assert!(front.enable_interrupts().expect("enable"));
    assert_eq!(rx_all(&mut front).len(), 3);
    assert_eq!(front.rx_posted(), 253, "above low water: not refilled");
    assert_eq!(back.rx_kicks(), 0);
    for _ in 0..3 {
        assert!(back.deliver(&f, 0, None, 4096));
    }
    assert_eq!(rx_all(&mut front).len(), 3);
    assert_eq!(front.rx_posted(), 256, "refilled in one batch");
    assert_eq!(front.stats().rx_posted, 262);
    // The backend never went idle (it still had buffers), so it did not
    // ask for an event: one decision for the batch, and no event.
    assert_eq!(front.stats().kicks_suppressed, 1);
    assert_eq!(back.rx_kicks(), 0);
    assert!(
        !front.enable_interrupts().expect("enable"),
        "idle: may sleep"
    );
}
