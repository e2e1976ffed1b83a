//! Fuzz drivers for the RX completion paths of both transports, used by the
//! cargo-fuzz targets in `pv-net/fuzz/` and by a short deterministic run in
//! the test suite (the shared virtqueue underneath has its own driver,
//! `pv_virtq::testing::fuzz`).
//!
//! Each input is a script: every byte picks an action (a frame delivered
//! honestly, a used element or response slot written by a hostile device,
//! an index run ahead, a send, a poll, interrupts re-armed, a reset), the
//! following bytes are its arguments. The frontend must never panic or
//! loop, and what it reports must stay true: a delivered frame is between
//! 14 bytes and the maximum for the MTU (GSO excepted), a partial checksum
//! lies inside its frame, and a stopped frontend comes back with `reset`.

use std::vec::Vec;

use pv_virtq::testing::fuzz::Script;
use pv_virtq::testing::TestHal;
use xenbus::platform::inproc::LocalPlatform;
use xenbus::wire::netif::{NetifRxResponse, NetifTxResponse};

use crate::frontend::max_frame;
use crate::testing::virtio::FakeVirtioNet;
use crate::testing::xen::FakeNetback;
use crate::virtio::{NetHdr, VirtioNet, VirtioNetConfig, VirtioNetFeatures as F, RXQ, TXQ};
use crate::xen::{XenNetConfig, XenNetFront};
use crate::{NetFrontend, RxCsum, RxFrame, RxRefill};

fn check_frame(f: &RxFrame<'_>, mtu: u16) {
    let max = if f.gso.is_some() {
        0xFFFF
    } else {
        max_frame(mtu)
    };
    assert!(
        (14..=max).contains(&f.data.len()),
        "delivered a frame of {} bytes",
        f.data.len()
    );
    if let RxCsum::Partial { start, offset } = f.csum {
        assert!(usize::from(start) + usize::from(offset) + 2 <= f.data.len());
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len.max(14)).map(|i| (i as u8) ^ seed).collect();
    f[12] = 0x08;
    f[13] = 0;
    f
}

/// Drive a virtio-net frontend against a scripted device.
pub fn virtio(data: &[u8]) {
    let mut s = Script::new(data);
    let sel = s.u8().unwrap_or(0);
    let mut feats = F::all();
    if sel & 1 != 0 {
        feats -= F::MRG_RXBUF;
    }
    if sel & 2 != 0 {
        feats -= F::GUEST_CSUM;
    }
    if sel & 4 != 0 {
        feats -= F::EVENT_IDX;
    }
    let dev = FakeVirtioNet::new(feats, [2, 0, 0, 0, 0, 1], 1500, 8);
    let cfg = VirtioNetConfig {
        queue_size: 8,
        mrg_buf_len: 256,
        refill: RxRefill {
            low_water: u16::from(sel >> 4) % 9,
        },
        ..VirtioNetConfig::default()
    };
    let Ok(mut nic) = VirtioNet::<TestHal, FakeVirtioNet>::new(dev.clone(), cfg) else {
        return;
    };
    let mtu = nic.info().mtu;
    let mut steps = 0;
    while let Some(op) = s.u8() {
        steps += 1;
        if steps > 256 {
            break;
        }
        match op % 12 {
            0 => {
                let len = usize::from(s.u16()) % 1700;
                let h = NetHdr {
                    flags: s.u8().unwrap_or(0) % 4,
                    csum_start: u16::from(s.u8().unwrap_or(0)),
                    csum_offset: u16::from(s.u8().unwrap_or(0) % 32),
                    ..NetHdr::default()
                };
                dev.deliver(&frame(len, op), h);
            }
            1 => {
                // Hostile RX: arbitrary header and length, id chosen among
                // the chain's own head, another, or anything.
                if let Some(c) = dev.take_chain(RXQ) {
                    let n = usize::from(s.u8().unwrap_or(0));
                    let bytes = s.bytes(n.min(64));
                    c.write_in(&bytes);
                    let id = match s.u8().unwrap_or(0) % 3 {
                        0 => u32::from(c.head),
                        1 => u32::from(s.u8().unwrap_or(0) % 8),
                        _ => s.u32(),
                    };
                    let len = match s.u8().unwrap_or(0) % 3 {
                        0 => bytes.len() as u32,
                        1 => u32::from(s.u16()),
                        _ => s.u32(),
                    };
                    dev.push_used(RXQ, id, len);
                }
            }
            2 => {
                let q = if s.u8().unwrap_or(0) & 1 == 0 {
                    RXQ
                } else {
                    TXQ
                };
                dev.set_used_idx(q, s.u16());
            }
            3 => {
                let budget = usize::from(s.u8().unwrap_or(0) % 16);
                let _ = nic.poll_rx(budget, &mut |f| check_frame(&f, mtu));
            }
            4 => {
                let len = usize::from(s.u16()) % 1600;
                let csum = (s.u8().unwrap_or(0) & 1 == 1).then_some(crate::TxCsum {
                    start: 14,
                    offset: 6,
                });
                let _ = nic.queue_tx(&frame(len, op), csum);
                if s.u8().unwrap_or(0) & 1 == 0 {
                    let _ = nic.flush_tx();
                }
            }
            5 => {
                let _ = dev.take_tx();
            }
            6 => {
                if let Some(c) = dev.take_chain(TXQ) {
                    let id = if s.u8().unwrap_or(0) & 1 == 0 {
                        u32::from(c.head)
                    } else {
                        s.u32()
                    };
                    dev.push_used(TXQ, id, u32::from(s.u8().unwrap_or(0)));
                }
            }
            7 => {
                let _ = nic.poll_tx();
            }
            8 => {
                let _ = nic.enable_interrupts();
            }
            9 => nic.disable_interrupts(),
            10 => {
                if nic.fault().is_some() || s.u8().unwrap_or(0) == 0 {
                    let _ = nic.reset();
                }
            }
            _ => {
                let _ = nic.set_promisc(s.u8().unwrap_or(0) & 1 == 1);
            }
        }
    }
    if nic.fault().is_some() {
        assert!(nic.reset().is_ok(), "an honest reset must recover");
        assert!(nic.fault().is_none());
    }
}

/// Drive a Xen netif frontend against a scripted backend.
pub fn xen(data: &[u8]) {
    let mut s = Script::new(data);
    let sel = s.u8().unwrap_or(0);
    let plat = LocalPlatform::new();
    let cfg = XenNetConfig {
        mtu: Some(if sel & 1 != 0 { 9000 } else { 1500 }),
        feature_sg: sel & 2 == 0,
        feature_split_event_channels: sel & 4 != 0,
        rx_csum_offload: sel & 8 != 0,
        refill: RxRefill {
            low_water: u16::from(sel >> 4) * 16,
        },
        ..XenNetConfig::default()
    };
    let Ok(mut front) = XenNetFront::new(&plat, cfg) else {
        return;
    };
    let connect = |f: &XenNetFront<&LocalPlatform>| {
        let (t, r) = f.ring_refs();
        let (pt, pr) = f.event_channels();
        FakeNetback::connect(&plat, t, r, pt, pr).ok()
    };
    let Some(mut back) = connect(&front) else {
        return;
    };
    let mtu = front.info().mtu;
    let mut steps = 0;
    while let Some(op) = s.u8() {
        steps += 1;
        if steps > 256 {
            break;
        }
        match op % 11 {
            0 => {
                let len = usize::from(s.u16()) % 10000;
                let flags = u16::from(s.u8().unwrap_or(0) % 4);
                let gso =
                    (s.u8().unwrap_or(0) & 1 == 1).then(|| (1 + s.u8().unwrap_or(0) % 3, s.u16()));
                let chunk = usize::from(s.u16()) % 4097;
                back.deliver(&frame(len, op), flags, gso, chunk);
            }
            1 => {
                let n = 1 + usize::from(s.u8().unwrap_or(0) % 4);
                for _ in 0..n {
                    let rsp = NetifRxResponse {
                        id: s.u16(),
                        offset: s.u16() % 4200,
                        flags: u16::from(s.u8().unwrap_or(0)),
                        status: s.u16() as i16,
                    };
                    back.respond_rx_raw(rsp);
                }
                back.push_rx();
            }
            2 => {
                let rsp = NetifRxResponse {
                    id: 0,
                    offset: 0,
                    flags: u16::from(s.u8().unwrap_or(0)),
                    status: s.u16() as i16,
                };
                back.inject_rx(&rsp);
            }
            3 => {
                let budget = usize::from(s.u8().unwrap_or(0) % 16);
                let _ = front.poll_rx(budget, &mut |f| check_frame(&f, mtu));
            }
            4 => {
                let len = usize::from(s.u16()) % 9100;
                let csum = (s.u8().unwrap_or(0) & 1 == 1).then_some(crate::TxCsum {
                    start: 14,
                    offset: 6,
                });
                let _ = front.send(&frame(len, op), csum);
            }
            5 => {
                let _ = back.take_tx();
            }
            6 => {
                let id = if s.u8().unwrap_or(0) & 1 == 0 {
                    back.take_tx_request().map_or(0, |r| r.id)
                } else {
                    s.u16()
                };
                back.respond_tx(NetifTxResponse {
                    id,
                    status: s.u16() as i16,
                });
            }
            7 => back.set_tx_rsp_prod(s.u32()),
            8 => {
                let _ = front.poll_tx();
            }
            9 => {
                let _ = front.enable_interrupts();
            }
            _ => {
                if front.fault().is_some() || s.u8().unwrap_or(0) == 0 {
                    drop(back);
                    let _ = front.reset();
                    let Some(b) = connect(&front) else { return };
                    back = b;
                }
            }
        }
    }
    if front.fault().is_some() {
        drop(back);
        assert!(front.reset().is_ok(), "reset must recover");
    }
}

/// A packet the guest kernel wrote to a TAP (`virtio_net_hdr` and frame,
/// any bytes), through [`crate::tap_hdr::tx_csum_of`] and, when accepted,
/// into a virtio-net frontend's `queue_tx` with and without the device's
/// `CSUM`. The first byte picks the device; the rest is the packet.
///
/// Invariants: the mapping never panics; an accepted frame is the packet
/// after the header, byte for byte; `queue_tx` refuses a checksum request
/// outside the frame or a frame outside 14..=max with an error, never a
/// panic; the device sees the frame unchanged except for the checksum
/// field, and a checksum completed in software verifies; one the device
/// is to complete is passed as `NEEDS_CSUM` with the same start and
/// offset. [`crate::tap_hdr::rx_hdr_of`] of the result maps back to the
/// same request.
pub fn tap_hdr(data: &[u8]) {
    use crate::tap_hdr::{rx_hdr_of, tx_csum_of};
    use crate::virtio::{HDR_F_NEEDS_CSUM, HDR_LEN};
    let Some((&sel, pkt)) = data.split_first() else {
        return;
    };
    let Ok((csum, frame)) = tx_csum_of(pkt) else {
        return;
    };
    assert_eq!(
        frame,
        &pkt[HDR_LEN..],
        "the frame is what follows the header"
    );
    if let Some(c) = csum {
        // The receive-side mapping expresses the same request.
        let h = rx_hdr_of(RxCsum::Partial {
            start: c.start,
            offset: c.offset,
        });
        let back = tx_csum_of(&h).map(|(c2, _)| c2);
        assert_eq!(back, Ok(Some(c)));
    }
    let mut feats = F::all();
    let dev_csum = sel & 1 == 0;
    if !dev_csum {
        feats -= F::CSUM;
    }
    let dev = FakeVirtioNet::new(feats, [2, 0, 0, 0, 0, 1], 1500, 8);
    let cfg = VirtioNetConfig {
        queue_size: 8,
        ..VirtioNetConfig::default()
    };
    let Ok(mut nic) = VirtioNet::<TestHal, FakeVirtioNet>::new(dev.clone(), cfg) else {
        return;
    };
    if nic.send(frame, csum).is_err() {
        // Refused (too short or long, checksum field outside): nothing sent.
        assert!(
            dev.take_tx().is_none(),
            "a refused frame reached the device"
        );
        return;
    }
    let Some(seen) = dev.take_tx() else {
        panic!("an accepted frame never reached the device");
    };
    assert_eq!(seen.frame.len(), frame.len());
    let h = NetHdr::from_bytes(&seen.hdr);
    match csum {
        None => {
            assert_eq!(seen.frame, frame);
            assert_eq!(h.flags, 0);
        }
        Some(c) if dev_csum => {
            assert_eq!(seen.frame, frame);
            assert_eq!(
                (h.flags, h.csum_start, h.csum_offset),
                (HDR_F_NEEDS_CSUM, c.start, c.offset)
            );
        }
        Some(c) => {
            assert_eq!(h.flags, 0, "completed in software: no request left");
            let (start, field) = (
                usize::from(c.start),
                usize::from(c.start) + usize::from(c.offset),
            );
            for (i, (a, b)) in seen.frame.iter().zip(frame).enumerate() {
                if i != field && i != field + 1 {
                    assert_eq!(a, b, "byte {i} changed outside the checksum field");
                }
            }
            if c.offset % 2 == 0 {
                // The field held the pseudo-header sum, which the receiver
                // adds back: data plus checksum plus it folds to all ones
                // (or to the other ones'-complement zero).
                let pseudo = u64::from(u16::from_be_bytes([frame[field], frame[field + 1]]));
                let mut sum = u64::from(crate::csum::ones_sum(&seen.frame[start..])) + pseudo;
                while sum > 0xFFFF {
                    sum = (sum & 0xFFFF) + (sum >> 16);
                }
                assert!(
                    sum == 0xFFFF || sum == 0,
                    "checksum does not verify: {sum:#x}"
                );
            }
        }
    }
}

/// Software TSO ([`crate::gso`]) on a hostile frame. Byte 0 picks IPv4 or
/// IPv6 (bit 0), an 802.1Q tag (bit 1), a well-formed frame built from the
/// rest (bit 2: the segmentation paths run, not only the refusals) and one
/// corrupted header byte (bit 3, at byte 3's offset); bytes 1-2 are
/// `gso_size`, byte 4 the TCP flags, bytes 5-6 the option words of IPv4
/// and TCP; the rest is the frame or its payload.
///
/// Invariants: nothing panics; a parsed frame's offsets are ordered and
/// inside it; segmenting yields ceil(payload / gso_size) segments, each
/// with at most `gso_size` payload, each a frame `parse_tcp` accepts,
/// whose payloads concatenate to the original's and whose checksums
/// verify (completed, or partial then completed), FIN and PSH on the last
/// only.
pub fn gso(data: &[u8]) {
    use crate::gso::{self, GsoKind};
    let Some((&[mode, s0, s1, corrupt, flags, opts], rest)) = data.split_first_chunk::<6>() else {
        return;
    };
    let kind = if mode & 1 == 0 {
        GsoKind::Tcp4
    } else {
        GsoKind::Tcp6
    };
    let gso_size = usize::from(u16::from_le_bytes([s0, s1]));
    let mut frame: Vec<u8> = if mode & 4 != 0 {
        let tag = mode & 2 != 0;
        let ip_opts = usize::from(opts & 3) * 4;
        let tcp_opts = usize::from(opts >> 2 & 7) * 4;
        let mut f = std::vec![0u8; 12];
        if tag {
            f.extend_from_slice(&[0x81, 0, 0, 5]);
        }
        let l3 = f.len() + 2;
        let (ip_len, tcp_len) = match kind {
            GsoKind::Tcp4 => (20 + ip_opts, 20 + tcp_opts),
            GsoKind::Tcp6 => (40, 20 + tcp_opts),
        };
        let total = ip_len + tcp_len + rest.len();
        match kind {
            GsoKind::Tcp4 => {
                f.extend_from_slice(&[0x08, 0x00, 0x40 | (ip_len / 4) as u8, 0]);
                f.extend_from_slice(&(total as u16).to_be_bytes());
                f.extend_from_slice(&[
                    s0, s1, 0x40, 0, 64, 6, 0, 0, 169, 254, 1, 2, 169, 254, 3, 4,
                ]);
                f.resize(l3 + ip_len, 1);
            }
            GsoKind::Tcp6 => {
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
                f.extend_from_slice(&((total - 40) as u16).to_be_bytes());
                f.extend_from_slice(&[6, 64, 0xfe, 0x80]);
                f.resize(l3 + ip_len, s0);
            }
        }
        f.extend_from_slice(&[0, 80, 0x13, 0x88, s1, s0, 0xff, 0xfe, 0, 0, 0, 0]);
        f.extend_from_slice(&[((tcp_len / 4) as u8) << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.resize(l3 + ip_len + tcp_len, 1);
        f.extend_from_slice(rest);
        f
    } else {
        rest.to_vec()
    };
    if mode & 8 != 0 && !frame.is_empty() {
        let at = usize::from(corrupt) % frame.len();
        frame[at] ^= flags | 1;
    }
    let Ok(h) = gso::parse_tcp(&frame, kind) else {
        return;
    };
    assert!(h.l3 < h.l4 && h.l4 + 20 <= h.hdr_len && h.hdr_len <= frame.len());
    for partial in [false, true] {
        let mut out = Vec::new();
        let Ok(()) = gso::segment(&frame, &h, gso_size, partial, &mut out) else {
            assert!(out.is_empty());
            continue;
        };
        let payload = &frame[h.hdr_len..];
        assert_eq!(out.len(), payload.len().div_ceil(gso_size));
        let mut joined = Vec::new();
        for (i, seg) in out.iter_mut().enumerate() {
            assert!(seg.len() <= h.hdr_len + gso_size);
            if partial {
                assert!(crate::csum::complete(seg, h.l4, gso::TCP_CSUM_OFFSET));
            }
            let sh = gso::parse_tcp(seg, kind).expect("a segment is a TCP/IP frame");
            assert_eq!(sh, h);
            assert!(gso::tcp_csum_ok(seg, &sh), "segment {i} checksum");
            if kind == GsoKind::Tcp4 {
                assert!(gso::ipv4_csum_ok(seg, &sh), "segment {i} IPv4 checksum");
            }
            let last = i + 1 == payload.len().div_ceil(gso_size);
            let f = seg[h.l4 + 13];
            if !last {
                assert_eq!(f & 0x09, 0, "FIN/PSH before the last segment");
            } else {
                assert_eq!(f & 0x09, frame[h.l4 + 13] & 0x09);
            }
            joined.extend_from_slice(&seg[h.hdr_len..]);
        }
        assert_eq!(joined, payload);
    }
}
