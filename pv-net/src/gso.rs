//! TCP segmentation offload done in software: the fallback a switch (or any
//! device) uses when a frame asks for segmentation the receiver did not
//! negotiate, modelled on Linux's GSO (`tcp_gso_segment`).
//!
//! A TSO frame is one Ethernet frame carrying up to 64 KiB of TCP payload
//! behind one set of headers, with a partial checksum (the TCP checksum
//! field holds the pseudo-header sum, `NEEDS_CSUM`). [`parse_tcp`] checks
//! that the frame really is what its GSO type says (Ethernet, at most one
//! 802.1Q tag, IPv4 without fragments or IPv6 with TCP as next header, a
//! TCP header inside the frame, IP length fields that match the frame) and
//! [`segment`] cuts it into frames of at most `gso_size` payload bytes each:
//! sequence numbers advanced, FIN and PSH on the last segment only, CWR on
//! the first only, IPv4 ids counted up from the original's and each IPv4
//! header checksum recomputed, and each TCP checksum either completed or
//! left partial (the pseudo-header sum of the segment's own length) for a
//! receiver that accepts partial checksums.
//!
//! The input comes from a guest: nothing here indexes outside the frame or
//! panics on any bytes (fuzzed by `pv-net/fuzz`'s `gso`). What it refuses
//! is an error naming the field at fault, never a guess.

use alloc::vec::Vec;

use crate::csum::ones_sum;

/// Ethernet header without a tag.
const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
/// Offset of the checksum field in a TCP header.
pub const TCP_CSUM_OFFSET: usize = 16;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Which TSO a frame asks for (`VIRTIO_NET_HDR_GSO_TCPV4` / `TCPV6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoKind {
    Tcp4,
    Tcp6,
}

/// Why a frame cannot be segmented as its header asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoError {
    /// The frame is not IPv4 (or IPv6) carrying TCP as the GSO type says:
    /// another EtherType or protocol, an IPv4 fragment, IPv6 extension
    /// headers, or headers cut off by the end of the frame.
    NotTcp,
    /// The IP header's length field disagrees with the frame's length.
    IpLength,
    /// `gso_size` is zero.
    ZeroSize,
    /// The frame carries no TCP payload to segment.
    NoPayload,
}

impl core::fmt::Display for GsoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NotTcp => "the frame is not the TCP/IP packet its GSO type names",
            Self::IpLength => "the IP length field disagrees with the frame",
            Self::ZeroSize => "the GSO segment size is zero",
            Self::NoPayload => "the GSO frame carries no payload",
        })
    }
}

/// Where a TCP/IP frame's headers are, as [`parse_tcp`] found them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeaders {
    pub kind: GsoKind,
    /// Offset of the IP header (14, or 18 behind an 802.1Q tag).
    pub l3: usize,
    /// Offset of the TCP header (the checksum's `csum_start`).
    pub l4: usize,
    /// Length of all headers: where the payload starts.
    pub hdr_len: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Finds the headers of a TCP/IP frame of `kind` and checks them against
/// the frame's length (see the module docs for what is refused).
pub fn parse_tcp(frame: &[u8], kind: GsoKind) -> Result<TcpHeaders, GsoError> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = be16(frame, 12).ok_or(GsoError::NotTcp)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16).ok_or(GsoError::NotTcp)?;
        l3 += 4;
    }
    let ip = frame.get(l3..).ok_or(GsoError::NotTcp)?;
    let l4 = match kind {
        GsoKind::Tcp4 => {
            if ethertype != ETHERTYPE_IPV4 || ip.len() < 20 || ip[0] >> 4 != 4 {
                return Err(GsoError::NotTcp);
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            // Fragment offset or more-fragments set: not one TCP segment.
            let frag = be16(ip, 6).ok_or(GsoError::NotTcp)?;
            if ihl < 20 || ip[9] != IPPROTO_TCP || frag & 0x3fff != 0 {
                return Err(GsoError::NotTcp);
            }
            if usize::from(be16(ip, 2).ok_or(GsoError::NotTcp)?) != ip.len() {
                return Err(GsoError::IpLength);
            }
            l3 + ihl
        }
        GsoKind::Tcp6 => {
            if ethertype != ETHERTYPE_IPV6 || ip.len() < 40 || ip[0] >> 4 != 6 {
                return Err(GsoError::NotTcp);
            }
            if ip[6] != IPPROTO_TCP {
                return Err(GsoError::NotTcp);
            }
            if usize::from(be16(ip, 4).ok_or(GsoError::NotTcp)?) + 40 != ip.len() {
                return Err(GsoError::IpLength);
            }
            l3 + 40
        }
    };
    let doff = usize::from(*frame.get(l4 + 12).ok_or(GsoError::NotTcp)? >> 4) * 4;
    let hdr_len = l4 + doff;
    if doff < 20 || hdr_len > frame.len() {
        return Err(GsoError::NotTcp);
    }
    Ok(TcpHeaders {
        kind,
        l3,
        l4,
        hdr_len,
    })
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The TCP pseudo-header sum (folded, not complemented) of a segment whose
/// TCP header and payload are `tcp_len` bytes, with the addresses of the
/// IP header at `h.l3`. The caller has checked the headers (`parse_tcp`).
fn pseudo_sum(frame: &[u8], h: &TcpHeaders, tcp_len: usize) -> u16 {
    let (addrs, len) = match h.kind {
        GsoKind::Tcp4 => (&frame[h.l3 + 12..h.l3 + 20], tcp_len as u64),
        GsoKind::Tcp6 => (&frame[h.l3 + 8..h.l3 + 40], tcp_len as u64),
    };
    fold(u64::from(ones_sum(addrs)) + u64::from(IPPROTO_TCP) + len)
}

/// Cuts the TSO frame `frame` (headers `h` from [`parse_tcp`]) into
/// segments of at most `gso_size` payload bytes, appended to `out`.
///
/// With `partial`, each segment's TCP checksum field holds its
/// pseudo-header sum (for a receiver that accepts `NEEDS_CSUM` with
/// `csum_start = h.l4`, `csum_offset = 16`); without, the checksum is
/// complete. Whatever the original's checksum field held is ignored.
pub fn segment(
    frame: &[u8],
    h: &TcpHeaders,
    gso_size: usize,
    partial: bool,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), GsoError> {
    if gso_size == 0 {
        return Err(GsoError::ZeroSize);
    }
    let (Some(hdrs), Some(payload)) = (frame.get(..h.hdr_len), frame.get(h.hdr_len..)) else {
        return Err(GsoError::NotTcp);
    };
    if payload.is_empty() {
        return Err(GsoError::NoPayload);
    }
    if h.l4 + 20 > h.hdr_len || h.l3 >= h.l4 {
        return Err(GsoError::NotTcp);
    }
    let seq0 = u32::from_be_bytes([
        hdrs[h.l4 + 4],
        hdrs[h.l4 + 5],
        hdrs[h.l4 + 6],
        hdrs[h.l4 + 7],
    ]);
    let flags0 = hdrs[h.l4 + 13];
    let id0 = be16(hdrs, h.l3 + 4).ok_or(GsoError::NotTcp)?;
    let n = payload.len().div_ceil(gso_size);
    out.reserve(n);
    for (i, chunk) in payload.chunks(gso_size).enumerate() {
        let mut seg = Vec::with_capacity(h.hdr_len + chunk.len());
        seg.extend_from_slice(hdrs);
        seg.extend_from_slice(chunk);
        let ip_len = seg.len() - h.l3;
        match h.kind {
            GsoKind::Tcp4 => {
                let ihl = h.l4 - h.l3;
                seg[h.l3 + 2..h.l3 + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
                let id = id0.wrapping_add(i as u16);
                seg[h.l3 + 4..h.l3 + 6].copy_from_slice(&id.to_be_bytes());
                seg[h.l3 + 10..h.l3 + 12].fill(0);
                let c = !ones_sum(&seg[h.l3..h.l3 + ihl]);
                seg[h.l3 + 10..h.l3 + 12].copy_from_slice(&c.to_be_bytes());
            }
            GsoKind::Tcp6 => {
                seg[h.l3 + 4..h.l3 + 6].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes());
            }
        }
        let seq = seq0.wrapping_add((i * gso_size) as u32);
        seg[h.l4 + 4..h.l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < n {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        seg[h.l4 + 13] = flags;
        let tcp_len = seg.len() - h.l4;
        let field = h.l4 + TCP_CSUM_OFFSET;
        let pseudo = pseudo_sum(&seg, h, tcp_len);
        seg[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
        if !partial {
            let c = !ones_sum(&seg[h.l4..]);
            seg[field..field + 2].copy_from_slice(&c.to_be_bytes());
        }
        out.push(seg);
    }
    Ok(())
}

/// True when the TCP (or UDP: any protocol whose checksum covers the
/// pseudo-header and the rest of the packet) checksum of `frame`, starting
/// at `h.l4`, verifies. For tests and fuzzing.
pub fn tcp_csum_ok(frame: &[u8], h: &TcpHeaders) -> bool {
    let Some(l4) = frame.get(h.l4..) else {
        return false;
    };
    fold(u64::from(ones_sum(l4)) + u64::from(pseudo_sum(frame, h, l4.len()))) == 0xffff
}

/// True when the IPv4 header checksum of `frame` (headers `h`) verifies.
pub fn ipv4_csum_ok(frame: &[u8], h: &TcpHeaders) -> bool {
    frame
        .get(h.l3..h.l4)
        .is_some_and(|ip| ones_sum(ip) == 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// An IPv4/TCP frame with `payload` bytes of a counting pattern, a
    /// partial checksum as a kernel's TSO frame has it.
    fn tcp4(payload: usize, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + payload];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        f[18..20].copy_from_slice(&0x1234u16.to_be_bytes());
        f[20] = 0x40; // DF
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[169, 254, 0, 1]);
        f[30..34].copy_from_slice(&[169, 254, 0, 2]);
        f[38..42].copy_from_slice(&0xffff_fff0u32.to_be_bytes()); // wraps
        f[46] = 0x50;
        f[47] = flags;
        for (i, b) in f[54..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    #[test]
    fn segments_carry_the_payload_in_order_with_valid_checksums() {
        let f = tcp4(3000, TCP_CWR | TCP_PSH | TCP_FIN | 0x10);
        let h = parse_tcp(&f, GsoKind::Tcp4).expect("tcp4");
        assert_eq!((h.l3, h.l4, h.hdr_len), (14, 34, 54));
        let mut out = Vec::new();
        segment(&f, &h, 1448, false, &mut out).expect("segments");
        assert_eq!(out.len(), 3);
        let mut payload = Vec::new();
        for (i, s) in out.iter().enumerate() {
            let sh = parse_tcp(s, GsoKind::Tcp4).expect("each segment parses");
            assert!(tcp_csum_ok(s, &sh) && ipv4_csum_ok(s, &sh), "segment {i}");
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add(1448 * i as u32));
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x1234 + i as u16);
            let last = i == 2;
            assert_eq!(s[47] & (TCP_FIN | TCP_PSH) != 0, last);
            assert_eq!(s[47] & TCP_CWR != 0, i == 0);
            assert_eq!(s[47] & 0x10, 0x10);
            payload.extend_from_slice(&s[54..]);
        }
        assert_eq!(payload, f[54..]);
        assert_eq!(out[2].len(), 54 + 3000 - 2 * 1448);
    }

    #[test]
    fn partial_segments_complete_to_the_same_bytes() {
        let f = tcp4(2000, 0x18);
        let h = parse_tcp(&f, GsoKind::Tcp4).expect("tcp4");
        let (mut full, mut part) = (Vec::new(), Vec::new());
        segment(&f, &h, 1000, false, &mut full).expect("full");
        segment(&f, &h, 1000, true, &mut part).expect("partial");
        for (a, mut b) in full.into_iter().zip(part) {
            assert_ne!(a, b);
            assert!(crate::csum::complete(&mut b, h.l4, TCP_CSUM_OFFSET));
            assert_eq!(a, b);
        }
    }

    #[test]
    fn refuses_what_is_not_the_tcp_frame_it_claims() {
        let f = tcp4(100, 0x10);
        assert_eq!(parse_tcp(&f, GsoKind::Tcp6), Err(GsoError::NotTcp));
        let mut frag = f.clone();
        frag[20] = 0x20; // more fragments
        assert_eq!(parse_tcp(&frag, GsoKind::Tcp4), Err(GsoError::NotTcp));
        let mut udp = f.clone();
        udp[23] = 17;
        assert_eq!(parse_tcp(&udp, GsoKind::Tcp4), Err(GsoError::NotTcp));
        assert_eq!(parse_tcp(&f[..60], GsoKind::Tcp4), Err(GsoError::IpLength));
        assert_eq!(parse_tcp(&f[..40], GsoKind::Tcp4), Err(GsoError::IpLength));
        let mut doff = f.clone();
        doff[46] = 0xf0; // 60-byte TCP header past a short frame
        let short = &doff[..14 + 20 + 30];
        let mut fixed = short.to_vec();
        fixed[16..18].copy_from_slice(&50u16.to_be_bytes());
        assert_eq!(parse_tcp(&fixed, GsoKind::Tcp4), Err(GsoError::NotTcp));
        let h = parse_tcp(&f, GsoKind::Tcp4).expect("tcp4");
        let mut out = Vec::new();
        assert_eq!(segment(&f, &h, 0, false, &mut out), Err(GsoError::ZeroSize));
        assert_eq!(
            segment(&f[..54], &h, 100, false, &mut out),
            Err(GsoError::NoPayload)
        );
        assert!(out.is_empty());
        assert_eq!(parse_tcp(&[0u8; 13], GsoKind::Tcp4), Err(GsoError::NotTcp));
    }

    #[test]
    fn ipv6_behind_a_vlan_tag() {
        let payload = 1000;
        let mut f = vec![0u8; 18 + 40 + 20 + payload];
        f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        f[16..18].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[18] = 0x60;
        f[22..24].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
        f[24] = 6;
        f[25] = 64;
        f[26] = 0xfe;
        f[27] = 0x80;
        f[41] = 1;
        f[42] = 0xfe;
        f[43] = 0x80;
        f[57] = 2;
        f[70] = 0x50;
        f[71] = 0x18;
        let h = parse_tcp(&f, GsoKind::Tcp6).expect("tcp6");
        assert_eq!((h.l3, h.l4, h.hdr_len), (18, 58, 78));
        let mut out = Vec::new();
        segment(&f, &h, 400, false, &mut out).expect("segments");
        assert_eq!(out.len(), 3);
        for s in &out {
            let sh = parse_tcp(s, GsoKind::Tcp6).expect("segment parses");
            assert!(tcp_csum_ok(s, &sh));
        }
    }
}
