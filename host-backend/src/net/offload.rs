//! Checksum and segmentation offloads across the switch.
//!
//! A port's guest may hand the switch a frame whose TCP/UDP checksum is
//! only partial (`NEEDS_CSUM`: the field holds the pseudo-header sum) when
//! it negotiated CSUM, and a TSO frame (up to 64 KiB of TCP payload behind
//! one set of headers, `gso_type` TCPV4/TCPV6 with `gso_size`) when it
//! negotiated HOST_TSO4/6 (HOST_ECN for one with CWR set). Each egress port
//! then gets the frame the way it can take it, the model of Linux's GSO
//! fallback: as is when its guest negotiated the matching GUEST_CSUM /
//! GUEST_TSO4/6 / GUEST_ECN, otherwise segmented in software
//! ([`pv_net::gso`]) with checksums left partial for a receiver that takes
//! partial checksums, or completed for one that does not (the uplink TAP
//! among them).
//!
//! The header is the guest's: [`parse_tx`] copies its fields once and
//! believes none of them. A flag or GSO type not negotiated, a zero
//! `gso_size` or one whose segments would not fit the MTU, a `hdr_len` past
//! the frame, a `csum_start`/`csum_offset` past the frame (or, for TSO, not
//! at the TCP checksum the switch finds itself), a TSO frame that is not
//! the TCP/IP packet its type names or is larger than [`MAX_GSO_FRAME`]:
//! each is dropped and counted by its own reason. The header handed to a
//! receiver is rebuilt from what the switch parsed (its `hdr_len` is the
//! one found in the frame, never the sender's).

use pv_net::gso::{self, GsoError, GsoKind, TcpHeaders, TCP_CSUM_OFFSET};
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};

use super::frame::{DropReason, ETH_HLEN, FRAME_OVERHEAD, HDR_LEN};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`.
pub const GSO_ECN: u8 = 0x80;
/// Largest TSO frame (Ethernet header included) the switch takes: Linux's
/// `GSO_LEGACY_MAX_SIZE`, the most a kernel without BIG TCP builds.
pub const MAX_GSO_FRAME: usize = 65536;

/// The offloads one direction of one port negotiated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Partial checksums (CSUM from the guest, GUEST_CSUM to it).
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    /// TSO frames with CWR set (HOST_ECN / GUEST_ECN).
    pub ecn: bool,
}

impl Offloads {
    pub const NONE: Self = Self {
        csum: false,
        tso4: false,
        tso6: false,
        ecn: false,
    };

    fn of(acked: u64, csum: u32, tso4: u32, tso6: u32, ecn: u32) -> Self {
        let has = |bit: u32| acked & (1u64 << bit) != 0;
        // TSO without partial checksums is not a valid combination (the
        // spec makes *_TSO* depend on *CSUM): refused by ignoring it.
        let csum = has(csum);
        Self {
            csum,
            tso4: csum && has(tso4),
            tso6: csum && has(tso6),
            ecn: csum && has(ecn) && (has(tso4) || has(tso6)),
        }
    }

    /// What the guest may ask of the switch on its TX queue.
    pub fn from_guest_tx(acked: u64) -> Self {
        Self::of(
            acked,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_ECN,
        )
    }

    /// What the switch may hand the guest on its RX queue.
    pub fn to_guest_rx(acked: u64) -> Self {
        Self::of(
            acked,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
        )
    }

    /// Any TSO at all (the TX copy limit is then [`MAX_GSO_FRAME`]).
    pub fn any_tso(self) -> bool {
        self.tso4 || self.tso6
    }

    fn takes(self, g: &Gso) -> bool {
        let kind = match g.tcp.kind {
            GsoKind::Tcp4 => self.tso4,
            GsoKind::Tcp6 => self.tso6,
        };
        self.csum && kind && (self.ecn || !g.ecn)
    }
}

/// `struct virtio_net_hdr_v1`, fields in host order (the guest side's
/// decoding, shared).
pub use pv_net::virtio::NetHdr as VnetHdr;

/// Reads a TX header from its first 10 bytes (`num_buffers` means nothing
/// on transmit and is left 0). `None` when shorter.
fn parse_hdr(b: &[u8]) -> Option<VnetHdr> {
    let mut full = [0u8; HDR_LEN];
    full[..10].copy_from_slice(b.get(..10)?);
    Some(VnetHdr::from_bytes(&full))
}

/// A partial checksum: the 16-bit field at `start + offset` holds the
/// pseudo-header sum and the checksum covers the frame from `start` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Csum {
    pub start: u16,
    pub offset: u16,
}

/// A validated TSO request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// Headers as the switch found them in the frame.
    pub tcp: TcpHeaders,
    /// Payload bytes per segment, non-zero.
    pub size: u16,
    /// CWR is set in the first segment (`GSO_ECN`).
    pub ecn: bool,
}

/// What a validated frame still asks of whoever receives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    pub csum: Option<Csum>,
    /// Set only with `csum` (at the TCP checksum).
    pub gso: Option<Gso>,
}

impl Meta {
    /// The header that hands the frame on with its offloads as they are.
    pub fn header(&self) -> VnetHdr {
        let mut h = VnetHdr::default();
        if let Some(c) = self.csum {
            h.flags = F_NEEDS_CSUM;
            h.csum_start = c.start;
            h.csum_offset = c.offset;
        }
        if let Some(g) = self.gso {
            h.gso_type = match g.tcp.kind {
                GsoKind::Tcp4 => GSO_TCPV4,
                GsoKind::Tcp6 => GSO_TCPV6,
            } | if g.ecn { GSO_ECN } else { 0 };
            h.gso_size = g.size;
            // At most 64 KiB: `parse_tx` checked the frame's length.
            h.hdr_len = g.tcp.hdr_len as u16;
        }
        h
    }
}

fn gso_drop(e: GsoError) -> DropReason {
    match e {
        GsoError::ZeroSize => DropReason::GsoSize,
        GsoError::NotTcp | GsoError::IpLength | GsoError::NoPayload => DropReason::GsoFrame,
    }
}

/// Checks the virtio-net header (the first `hdr_len` bytes of `buf`: 12
/// with VERSION_1, 10 for a legacy driver) and the frame behind it against
/// the offloads the guest negotiated and `mtu`; returns what the frame asks
/// for and the frame. See the module docs for what is refused.
pub fn parse_tx(
    buf: &[u8],
    hdr_len: usize,
    mtu: u16,
    allowed: Offloads,
) -> Result<(Meta, &[u8]), DropReason> {
    if buf.len() < hdr_len || hdr_len < 10 {
        return Err(DropReason::BadHeader);
    }
    let (hb, frame) = buf.split_at(hdr_len);
    let h = parse_hdr(hb).ok_or(DropReason::BadHeader)?;
    // DATA_VALID means nothing on transmit (a driver may echo it).
    if h.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(DropReason::BadHeader);
    }
    let kind = match h.gso_type & !GSO_ECN {
        0 if h.gso_type & GSO_ECN == 0 => None,
        GSO_TCPV4 if allowed.tso4 => Some(GsoKind::Tcp4),
        GSO_TCPV6 if allowed.tso6 => Some(GsoKind::Tcp6),
        _ => return Err(DropReason::BadHeader),
    };
    let ecn = h.gso_type & GSO_ECN != 0;
    if ecn && !allowed.ecn {
        return Err(DropReason::BadHeader);
    }
    let needs_csum = h.flags & F_NEEDS_CSUM != 0;
    if needs_csum && !allowed.csum {
        return Err(DropReason::BadHeader);
    }
    if frame.len() < ETH_HLEN {
        return Err(DropReason::Runt);
    }
    let max_segment = usize::from(mtu) + FRAME_OVERHEAD;
    let csum = if needs_csum {
        let (start, offset) = (usize::from(h.csum_start), usize::from(h.csum_offset));
        if start + offset + 2 > frame.len() {
            return Err(DropReason::CsumOffsets);
        }
        Some(Csum {
            start: h.csum_start,
            offset: h.csum_offset,
        })
    } else {
        None
    };
    let Some(kind) = kind else {
        if frame.len() > max_segment {
            return Err(DropReason::Oversized);
        }
        return Ok((Meta { csum, gso: None }, frame));
    };
    if frame.len() > MAX_GSO_FRAME {
        return Err(DropReason::Oversized);
    }
    if h.gso_size == 0 {
        return Err(DropReason::GsoSize);
    }
    if usize::from(h.hdr_len) > frame.len() {
        return Err(DropReason::HdrLen);
    }
    let tcp = gso::parse_tcp(frame, kind).map_err(gso_drop)?;
    // TSO always comes with a partial checksum at the TCP header.
    match csum {
        Some(c) if usize::from(c.start) == tcp.l4 && usize::from(c.offset) == TCP_CSUM_OFFSET => {}
        _ => return Err(DropReason::CsumOffsets),
    }
    if tcp.hdr_len >= frame.len() {
        return Err(DropReason::GsoFrame);
    }
    if tcp.hdr_len + usize::from(h.gso_size) > max_segment {
        return Err(DropReason::GsoSize);
    }
    let gso = Gso {
        tcp,
        size: h.gso_size,
        ecn,
    };
    Ok((
        Meta {
            csum,
            gso: Some(gso),
        },
        frame,
    ))
}

/// What an egress port needs done to a frame before it can take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// As it is, with [`Meta::header`].
    Pass,
    /// Complete the partial checksum; no flags.
    Complete,
    /// Segment in software; with `partial`, each segment keeps a partial
    /// checksum (`NEEDS_CSUM`), otherwise its checksum is completed.
    Segment { partial: bool },
}

/// How a frame asking for `meta` reaches a port that takes `to`.
pub fn plan(meta: &Meta, to: Offloads) -> Plan {
    match (meta.gso, meta.csum) {
        (Some(g), _) if to.takes(&g) => Plan::Pass,
        (Some(_), _) => Plan::Segment { partial: to.csum },
        (None, Some(_)) if !to.csum => Plan::Complete,
        _ => Plan::Pass,
    }
}

/// One frame handed to an egress port, with the header it goes out with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub frame: Vec<u8>,
    pub hdr: VnetHdr,
}

/// Carries out `plan` for a frame that is not passed as is: the segments
/// (or the one completed frame) a port that takes `to` gets.
pub fn transform(frame: &[u8], meta: &Meta, plan: Plan) -> Result<Vec<Out>, DropReason> {
    match plan {
        Plan::Pass => Ok(vec![Out {
            frame: frame.to_vec(),
            hdr: meta.header(),
        }]),
        Plan::Complete => {
            let mut f = frame.to_vec();
            if let Some(c) = meta.csum {
                if !pv_net::csum::complete(&mut f, usize::from(c.start), usize::from(c.offset)) {
                    return Err(DropReason::CsumOffsets);
                }
            }
            Ok(vec![Out {
                frame: f,
                hdr: VnetHdr::default(),
            }])
        }
        Plan::Segment { partial } => {
            let Some(g) = meta.gso else {
                return Err(DropReason::GsoFrame);
            };
            let mut segs = Vec::new();
            gso::segment(frame, &g.tcp, usize::from(g.size), partial, &mut segs)
                .map_err(gso_drop)?;
            let hdr = if partial {
                VnetHdr {
                    flags: F_NEEDS_CSUM,
                    // Below 64 KiB: `parse_tcp` found it inside the frame.
                    csum_start: g.tcp.l4 as u16,
                    csum_offset: TCP_CSUM_OFFSET as u16,
                    ..VnetHdr::default()
                }
            } else {
                VnetHdr::default()
            };
            Ok(segs.into_iter().map(|frame| Out { frame, hdr }).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Offloads = Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
    };

    fn hdr(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, start: u16, off: u16) -> Vec<u8> {
        VnetHdr {
            flags,
            gso_type,
            hdr_len,
            gso_size,
            csum_start: start,
            csum_offset: off,
            num_buffers: 0,
        }
        .to_bytes()
        .to_vec()
    }

    /// An IPv4/TCP frame with `payload` bytes, partial checksum: the
    /// addresses are zero, so the pseudo-header sum is protocol + length.
    fn tcp4(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 54 + payload];
        let pseudo = 6 + 20 + payload as u32;
        let pseudo = ((pseudo & 0xffff) + (pseudo >> 16)) as u16;
        f[50..52].copy_from_slice(&pseudo.to_be_bytes());
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        f[23] = 6;
        f[46] = 0x50;
        f[47] = 0x18;
        for (i, b) in f[54..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        f
    }

    fn tso(frame: &[u8], gso_size: u16) -> Vec<u8> {
        let mut b = hdr(F_NEEDS_CSUM, GSO_TCPV4, 54, gso_size, 34, 16);
        b.extend_from_slice(frame);
        b
    }

    #[test]
    fn features_map_to_offloads() {
        let bit = |b: u32| 1u64 << b;
        let acked = bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4);
        let tx = Offloads::from_guest_tx(acked);
        assert!(tx.csum && tx.tso4 && !tx.tso6 && !tx.ecn);
        assert_eq!(Offloads::to_guest_rx(acked), Offloads::NONE);
        // TSO without checksum offload is ignored.
        assert_eq!(
            Offloads::from_guest_tx(bit(VIRTIO_NET_F_HOST_TSO4)),
            Offloads::NONE
        );
        let rx = Offloads::to_guest_rx(
            bit(VIRTIO_NET_F_GUEST_CSUM)
                | bit(VIRTIO_NET_F_GUEST_TSO6)
                | bit(VIRTIO_NET_F_GUEST_ECN),
        );
        assert!(rx.csum && rx.tso6 && !rx.tso4 && rx.ecn);
    }

    #[test]
    fn a_tso_frame_is_passed_or_segmented_by_what_the_port_took() {
        let f = tcp4(4000);
        let b = tso(&f, 1448);
        let (meta, frame) = parse_tx(&b, HDR_LEN, 1500, ALL).expect("valid TSO");
        assert_eq!(frame, &f[..]);
        assert_eq!(plan(&meta, ALL), Plan::Pass);
        let h = meta.header();
        assert_eq!(
            (h.flags, h.gso_type, h.gso_size, h.hdr_len, h.csum_start),
            (F_NEEDS_CSUM, GSO_TCPV4, 1448, 54, 34)
        );
        let csum_only = Offloads {
            csum: true,
            ..Offloads::NONE
        };
        assert_eq!(plan(&meta, csum_only), Plan::Segment { partial: true });
        assert_eq!(
            plan(&meta, Offloads::NONE),
            Plan::Segment { partial: false }
        );
        let segs = transform(frame, &meta, Plan::Segment { partial: false }).expect("segments");
        assert_eq!(segs.len(), 3);
        for s in &segs {
            assert_eq!(s.hdr, VnetHdr::default());
            assert!(s.frame.len() <= 1514);
            let t = gso::parse_tcp(&s.frame, GsoKind::Tcp4).expect("segment");
            assert!(gso::tcp_csum_ok(&s.frame, &t) && gso::ipv4_csum_ok(&s.frame, &t));
        }
        let partial = transform(frame, &meta, Plan::Segment { partial: true }).expect("segs");
        assert_eq!((partial[0].hdr.flags, partial[0].hdr.csum_start), (1, 34));
        // ECN asked of a port that did not take it: segmented.
        let mut e = b.clone();
        e[1] |= GSO_ECN;
        let (meta, _) = parse_tx(&e, HDR_LEN, 1500, ALL).expect("ECN TSO");
        let no_ecn = Offloads { ecn: false, ..ALL };
        assert_eq!(plan(&meta, no_ecn), Plan::Segment { partial: true });
    }

    #[test]
    fn a_partial_checksum_is_passed_or_completed() {
        let mut b = hdr(F_NEEDS_CSUM, 0, 0, 0, 34, 16);
        b.extend_from_slice(&tcp4(100));
        let (meta, frame) = parse_tx(&b, HDR_LEN, 1500, ALL).expect("valid");
        assert_eq!(plan(&meta, ALL), Plan::Pass);
        assert_eq!(plan(&meta, Offloads::NONE), Plan::Complete);
        let out = transform(frame, &meta, Plan::Complete).expect("completed");
        let t = gso::parse_tcp(&out[0].frame, GsoKind::Tcp4).expect("tcp");
        assert!(gso::tcp_csum_ok(&out[0].frame, &t));
        assert_eq!(out[0].hdr, VnetHdr::default());
        // A plain frame goes everywhere as is.
        let plain = [0u8; HDR_LEN + 60];
        let (m, _) = parse_tx(&plain, HDR_LEN, 1500, Offloads::NONE).expect("plain");
        assert_eq!((m, plan(&m, Offloads::NONE)), (Meta::default(), Plan::Pass));
    }

    #[test]
    fn malformed_headers_are_dropped_by_reason() {
        let f = tcp4(4000);
        let good = tso(&f, 1448);
        assert!(parse_tx(&good, HDR_LEN, 1500, ALL).is_ok());
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            edit(&mut b);
            parse_tx(&b, HDR_LEN, 1500, ALL).map(|_| ())
        };
        // Zero gso_size.
        assert_eq!(with(&|b| b[4..6].fill(0)), Err(DropReason::GsoSize));
        // Segments that would not fit the MTU.
        assert_eq!(
            with(&|b| b[4..6].copy_from_slice(&1500u16.to_le_bytes())),
            Err(DropReason::GsoSize)
        );
        // hdr_len past the frame.
        assert_eq!(
            with(&|b| b[2..4].copy_from_slice(&5000u16.to_le_bytes())),
            Err(DropReason::HdrLen)
        );
        // csum_start past the end, and not at the TCP header.
        assert_eq!(
            with(&|b| b[6..8].copy_from_slice(&6000u16.to_le_bytes())),
            Err(DropReason::CsumOffsets)
        );
        assert_eq!(
            with(&|b| b[6..8].copy_from_slice(&30u16.to_le_bytes())),
            Err(DropReason::CsumOffsets)
        );
        assert_eq!(
            with(&|b| b[8..10].copy_from_slice(&6u16.to_le_bytes())),
            Err(DropReason::CsumOffsets)
        );
        // TSO without NEEDS_CSUM.
        assert_eq!(with(&|b| b[0] = 0), Err(DropReason::CsumOffsets));
        // A TSO frame larger than 64 KiB.
        let huge = tso(&tcp4(MAX_GSO_FRAME), 1448);
        assert_eq!(
            parse_tx(&huge, HDR_LEN, 1500, ALL).map(|_| ()),
            Err(DropReason::Oversized)
        );
        // Not the packet its type says, or lengths that disagree.
        assert_eq!(with(&|b| b[1] = GSO_TCPV6), Err(DropReason::GsoFrame));
        assert_eq!(with(&|b| b[12 + 23] = 17), Err(DropReason::GsoFrame));
        assert_eq!(
            with(&|b| b.truncate(HDR_LEN + 1000)),
            Err(DropReason::GsoFrame)
        );
        // Unknown flags and GSO types, offloads not negotiated.
        assert_eq!(with(&|b| b[0] |= 4), Err(DropReason::BadHeader));
        assert_eq!(with(&|b| b[1] = 3), Err(DropReason::BadHeader));
        assert_eq!(with(&|b| b[1] = GSO_ECN), Err(DropReason::BadHeader));
        let csum_only = Offloads {
            csum: true,
            ..Offloads::NONE
        };
        assert_eq!(
            parse_tx(&good, HDR_LEN, 1500, csum_only).map(|_| ()),
            Err(DropReason::BadHeader)
        );
        let mut partial = hdr(F_NEEDS_CSUM, 0, 0, 0, 34, 16);
        partial.extend_from_slice(&tcp4(10));
        assert_eq!(
            parse_tx(&partial, HDR_LEN, 1500, Offloads::NONE).map(|_| ()),
            Err(DropReason::BadHeader)
        );
        // A partial checksum whose field is past the end of a plain frame.
        let mut past = hdr(F_NEEDS_CSUM, 0, 0, 0, 50, 13);
        past.extend_from_slice(&[0u8; 64]);
        assert_eq!(
            parse_tx(&past, HDR_LEN, 1500, ALL).map(|_| ()),
            Err(DropReason::CsumOffsets)
        );
    }

    /// Frames the Linux kernel wrote to a TAP with vnet headers and
    /// CSUM|TSO4 (`fixtures/capture.py` says how): header + frame.
    const KERNEL_SYN: &[u8] = include_bytes!("fixtures/tcp4_syn_partial.bin");
    const KERNEL_UDP: &[u8] = include_bytes!("fixtures/udp4_partial.bin");
    const KERNEL_TSO: &[u8] = include_bytes!("fixtures/tcp4_tso.bin");

    /// An oracle independent of the code under test: the IPv4 header
    /// checksum and the TCP/UDP checksum (pseudo-header with the
    /// protocol and length from the IP header) of an untagged frame.
    fn ipv4_l4_checksums_ok(f: &[u8]) -> bool {
        let ihl = usize::from(f[14] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
        let l4 = &f[14 + ihl..14 + total];
        let mut sum = u64::from(pv_net::csum::ones_sum(&f[26..34]))
            + u64::from(f[23])
            + l4.len() as u64
            + u64::from(pv_net::csum::ones_sum(l4));
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        pv_net::csum::ones_sum(&f[14..14 + ihl]) == 0xffff && sum == 0xffff
    }

    #[test]
    fn kernel_partial_checksums_complete_to_valid_frames() {
        for (name, pkt) in [("syn", KERNEL_SYN), ("udp", KERNEL_UDP)] {
            let (meta, frame) = parse_tx(pkt, HDR_LEN, 1500, ALL).expect(name);
            assert!(meta.gso.is_none() && meta.csum.is_some(), "{name}");
            assert!(!ipv4_l4_checksums_ok(frame), "{name}: already complete");
            // Passed as is: the kernel's own header comes back.
            assert_eq!(plan(&meta, ALL), Plan::Pass);
            assert_eq!(meta.header().to_bytes()[..10], pkt[..10], "{name}");
            let out = transform(frame, &meta, plan(&meta, Offloads::NONE)).expect(name);
            assert_eq!(out.len(), 1);
            assert!(ipv4_l4_checksums_ok(&out[0].frame), "{name}");
            assert_eq!(out[0].hdr, VnetHdr::default());
            // Only the checksum field changed.
            let c = meta.csum.expect("partial");
            let field = usize::from(c.start + c.offset);
            let mut same = out[0].frame.clone();
            same[field..field + 2].copy_from_slice(&frame[field..field + 2]);
            assert_eq!(same, frame, "{name}");
        }
    }

    #[test]
    fn kernel_tso_frame_segments_into_valid_mss_frames() {
        let (meta, frame) = parse_tx(KERNEL_TSO, HDR_LEN, 1500, ALL).expect("kernel TSO");
        let g = meta.gso.expect("gso");
        assert_eq!((g.size, g.tcp.hdr_len), (1460, 54));
        // A port that took TSO4 gets the kernel's header back.
        assert_eq!(plan(&meta, ALL), Plan::Pass);
        assert_eq!(meta.header().to_bytes()[..10], KERNEL_TSO[..10]);
        let tcp = &frame[34..54];
        let seq0 = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let payload = frame.len() - 54;
        for partial in [false, true] {
            let out = transform(frame, &meta, Plan::Segment { partial }).expect("segments");
            assert_eq!(out.len(), payload.div_ceil(1460));
            let mut data = Vec::new();
            for (i, o) in out.iter().enumerate() {
                let mut f = o.frame.clone();
                if partial {
                    assert_eq!(
                        (o.hdr.flags, o.hdr.csum_start, o.hdr.csum_offset),
                        (1, 34, 16)
                    );
                    assert!(pv_net::csum::complete(&mut f, 34, 16));
                }
                assert!(f.len() <= 1514);
                assert!(ipv4_l4_checksums_ok(&f), "segment {i}");
                let seq = u32::from_be_bytes([f[38], f[39], f[40], f[41]]);
                assert_eq!(seq, seq0.wrapping_add(1460 * i as u32));
                // PSH only on the last; ACK on all (the kernel's flags).
                assert_eq!(f[47] & 0x08 != 0, i + 1 == out.len());
                assert_eq!(f[47] & 0x10, tcp[13] & 0x10);
                data.extend_from_slice(&f[54..]);
            }
            // The capture sent bytes i % 253 from the stream's start.
            let want: Vec<u8> = (0..payload).map(|i| (i % 253) as u8).collect();
            assert_eq!(data, want);
        }
    }
}
