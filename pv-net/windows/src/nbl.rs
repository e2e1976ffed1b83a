//! NET_BUFFER_LIST ↔ frame decisions: what the driver does with each
//! NET_BUFFER it is asked to send and each frame the device hands up.
//!
//! - Send: [`gather`] turns a NET_BUFFER's MDL chain (`CurrentMdl`,
//!   `CurrentMdlOffset`, `DataLength`, the byte counts of the MDLs) into
//!   the pieces to copy, refusing a chain shorter than the data and a
//!   frame the core cannot send ([`TxReject`]); [`tx_csum`] turns the
//!   NBL's `TcpIpChecksumNetBufferListInfo` word into the core's
//!   [`TxCsum`] (the L4 header found from the frame, since NDIS gives the
//!   TCP offset only), or refuses a request for an offload not enabled.
//! - Receive: [`accept`] applies the packet filter and multicast list
//!   (the device may deliver more than NDIS asked for);
//!   [`rx_checksum_info`] turns the core's [`RxCsum`] into the receive
//!   checksum word, completing a partial checksum in the frame first.
//! - [`Counters`]: per-class (unicast, multicast, broadcast) frames and
//!   bytes, for `OID_GEN_STATISTICS`.
//! - [`OffloadConfig`]: checksum offloads offered and enabled, and their
//!   `NDIS_OFFLOAD` / `NDIS_TCP_IP_CHECKSUM_OFFLOAD` encodings.
//!
//! Frames are read-only input except in [`rx_checksum_info`], which only
//! writes the checksum field the device left for us to fill.

use pv_net::frontend::max_frame;
use pv_net::{RxCsum, TxCsum, ETH_HLEN};

use crate::oid::{object_header, OidError, OBJECT_TYPE_DEFAULT, OBJECT_TYPE_OFFLOAD};

/// `NDIS_SIZEOF_NDIS_OFFLOAD_REVISION_1`.
pub const OFFLOAD_BYTES: usize = 112;
/// `sizeof(NDIS_TCP_IP_CHECKSUM_OFFLOAD)`.
pub const CHECKSUM_OFFLOAD_BYTES: usize = 32;
/// `NDIS_ENCAPSULATION_IEEE_802_3`.
pub const ENCAPSULATION_802_3: u32 = 2;

/// Most pieces one frame may be gathered from; a chain of more MDLs is
/// refused rather than walked without bound.
pub const MAX_PIECES: usize = 64;

/// Frames and bytes of one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCount {
    /// Frames.
    pub frames: u64,
    /// Bytes (Ethernet header included).
    pub bytes: u64,
}

impl FrameCount {
    fn add(&mut self, len: usize) {
        self.frames += 1;
        self.bytes += len as u64;
    }
}

/// The driver's counters (the core counts device faults itself).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Received to our unicast address.
    pub rx_ucast: FrameCount,
    /// Received multicast.
    pub rx_mcast: FrameCount,
    /// Received broadcast.
    pub rx_bcast: FrameCount,
    /// Sent unicast.
    pub tx_ucast: FrameCount,
    /// Sent multicast.
    pub tx_mcast: FrameCount,
    /// Sent broadcast.
    pub tx_bcast: FrameCount,
    /// Received frames not indicated: filtered out, no NBL free, or
    /// indications stopped (paused).
    pub rx_discards: u64,
    /// NET_BUFFERs refused ([`TxReject`]).
    pub tx_errors: u64,
    /// NET_BUFFERs completed unsent: paused, reset, halted, cancelled, or
    /// no transmit slot.
    pub tx_discards: u64,
}

/// Destination class of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// To one station.
    Unicast,
    /// To a group.
    Multicast,
    /// To everyone.
    Broadcast,
}

/// The class of `frame`'s destination (frames shorter than a MAC count as
/// unicast; they are refused elsewhere).
pub fn class(frame: &[u8]) -> Class {
    match frame.get(..6) {
        Some([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]) => Class::Broadcast,
        Some(d) if d[0] & 1 != 0 => Class::Multicast,
        _ => Class::Unicast,
    }
}

impl Counters {
    /// Count a frame indicated up.
    pub fn rx(&mut self, frame: &[u8]) {
        match class(frame) {
            Class::Unicast => self.rx_ucast.add(frame.len()),
            Class::Multicast => self.rx_mcast.add(frame.len()),
            Class::Broadcast => self.rx_bcast.add(frame.len()),
        }
    }

    /// Count a frame handed to the device.
    pub fn tx(&mut self, frame: &[u8]) {
        match class(frame) {
            Class::Unicast => self.tx_ucast.add(frame.len()),
            Class::Multicast => self.tx_mcast.add(frame.len()),
            Class::Broadcast => self.tx_bcast.add(frame.len()),
        }
    }
}

/// Does the packet filter (`NDIS_PACKET_TYPE_*`) with `multicast` let a
/// frame to `frame`'s destination up to the stack, for an adapter at `mac`?
pub fn accept(frame: &[u8], filter: u32, mac: &[u8; 6], multicast: &[[u8; 6]]) -> bool {
    use crate::oid::filter as f;
    if frame.len() < ETH_HLEN {
        return false;
    }
    if filter & f::PROMISCUOUS != 0 {
        return true;
    }
    let dst = &frame[..6];
    match class(frame) {
        Class::Broadcast => filter & f::BROADCAST != 0,
        Class::Multicast => {
            filter & f::ALL_MULTICAST != 0
                || (filter & f::MULTICAST != 0 && multicast.iter().any(|m| m[..] == *dst))
        }
        Class::Unicast => filter & f::DIRECTED != 0 && dst == mac,
    }
}

/// Why a NET_BUFFER was not sent (completed with a failure status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxReject {
    /// NDIS: the MDL chain holds fewer bytes than `DataLength` (or
    /// `CurrentMdlOffset` lies past the first MDL).
    ChainTooShort,
    /// NDIS: more MDLs than [`MAX_PIECES`] hold the frame.
    TooManyPieces,
    /// Protocol: a frame shorter than an Ethernet header.
    TooShort,
    /// Protocol: a frame longer than the MTU allows.
    TooLong,
    /// Protocol: a checksum offload requested that is not enabled, or for
    /// a frame whose headers do not match the request.
    BadChecksumRequest,
}

impl TxReject {
    /// The `NDIS_STATUS` to complete the NBL with.
    pub fn ndis_status(&self) -> u32 {
        match self {
            // NDIS_STATUS_INVALID_LENGTH.
            Self::TooShort | Self::TooLong => 0xC001_0014,
            // NDIS_STATUS_INVALID_PACKET.
            Self::ChainTooShort | Self::TooManyPieces => 0xC001_000A,
            // NDIS_STATUS_NOT_SUPPORTED.
            Self::BadChecksumRequest => 0xC000_00BB,
        }
    }
}

/// One piece of a frame: `len` bytes at `offset` in MDL number `mdl` of
/// the chain (counting from `CurrentMdl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// MDL index from `CurrentMdl`.
    pub mdl: usize,
    /// Byte offset in that MDL's data.
    pub offset: usize,
    /// Bytes.
    pub len: usize,
}

/// The pieces of a NET_BUFFER: `data_len` bytes starting `first_offset`
/// into the first of the MDLs whose byte counts are `mdl_lens`. Every
/// piece is non-empty and lies inside its MDL; their lengths add up to
/// `data_len`, which must be a sendable frame for `mtu`.
pub fn gather(
    mdl_lens: &[usize],
    first_offset: usize,
    data_len: usize,
    mtu: u16,
    out: &mut [Piece; MAX_PIECES],
) -> Result<usize, TxReject> {
    if data_len < ETH_HLEN {
        return Err(TxReject::TooShort);
    }
    if data_len > max_frame(mtu) {
        return Err(TxReject::TooLong);
    }
    let mut left = data_len;
    let mut skip = first_offset;
    let mut n = 0;
    for (i, &len) in mdl_lens.iter().enumerate() {
        if left == 0 {
            break;
        }
        if skip > len {
            return Err(TxReject::ChainTooShort);
        }
        let take = (len - skip).min(left);
        if take > 0 {
            let slot = out.get_mut(n).ok_or(TxReject::TooManyPieces)?;
            *slot = Piece {
                mdl: i,
                offset: skip,
                len: take,
            };
            n += 1;
            left -= take;
        }
        skip = 0;
    }
    if left != 0 {
        return Err(TxReject::ChainTooShort);
    }
    Ok(n)
}

/// `NDIS_TCP_IP_CHECKSUM_NET_BUFFER_LIST_INFO`, transmit view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxCsumInfo {
    /// `IsIPv4`.
    pub ipv4: bool,
    /// `IsIPv6`.
    pub ipv6: bool,
    /// `TcpChecksum`.
    pub tcp: bool,
    /// `UdpChecksum`.
    pub udp: bool,
    /// `IpHeaderChecksum`.
    pub ip_header: bool,
    /// `TcpHeaderOffset` (10 bits).
    pub tcp_header_offset: u16,
}

impl TxCsumInfo {
    /// Decode the pointer-sized info word (bits: IsIPv4 0, IsIPv6 1,
    /// TcpChecksum 2, UdpChecksum 3, IpHeaderChecksum 4, TcpHeaderOffset
    /// 16..26).
    pub fn from_word(w: u64) -> Self {
        Self {
            ipv4: w & 1 != 0,
            ipv6: w & 2 != 0,
            tcp: w & 4 != 0,
            udp: w & 8 != 0,
            ip_header: w & 0x10 != 0,
            tcp_header_offset: ((w >> 16) & 0x3FF) as u16,
        }
    }

    /// Nothing asked.
    pub fn is_empty(&self) -> bool {
        !(self.tcp || self.udp || self.ip_header)
    }
}

/// Where the L4 header of an IPv4/IPv6 frame starts, and its protocol,
/// from the headers in `frame` (one VLAN tag allowed; IPv6 extension
/// headers are not walked: a frame with them is refused for offload).
fn l4_of(frame: &[u8]) -> Option<(usize, u8, bool)> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    if ethertype == 0x8100 {
        at += 4;
        ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    }
    let ip = at + 2;
    match ethertype {
        0x0800 => {
            let vihl = *frame.get(ip)?;
            let ihl = usize::from(vihl & 0xF) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return None;
            }
            Some((ip + ihl, *frame.get(ip + 9)?, true))
        }
        0x86DD => {
            if *frame.get(ip)? >> 4 != 6 {
                return None;
            }
            Some((ip + 40, *frame.get(ip + 6)?, false))
        }
        _ => None,
    }
}

/// The core's checksum request for a frame whose NBL carries `info`, with
/// `enabled` the transmit offloads in force. `None` when nothing is asked.
/// The stack has put the pseudo-header sum in the checksum field (NDIS'
/// rule for checksum offload, as for Linux `CHECKSUM_PARTIAL`), which is
/// what [`TxCsum`] expects.
pub fn tx_csum(
    frame: &[u8],
    info: TxCsumInfo,
    enabled: &OffloadConfig,
) -> Result<Option<TxCsum>, TxReject> {
    if info.is_empty() {
        return Ok(None);
    }
    // IP header checksums are never offered; TCP and UDP together, or
    // neither address family, are not a request NDIS makes.
    if info.ip_header || (info.tcp && info.udp) || info.ipv4 == info.ipv6 {
        return Err(TxReject::BadChecksumRequest);
    }
    let on = match (info.ipv4, info.tcp) {
        (true, true) => enabled.v4_tcp.tx,
        (true, false) => enabled.v4_udp.tx,
        (false, true) => enabled.v6_tcp.tx,
        (false, false) => enabled.v6_udp.tx,
    };
    if !on {
        return Err(TxReject::BadChecksumRequest);
    }
    let (l4, proto, v4) = l4_of(frame).ok_or(TxReject::BadChecksumRequest)?;
    let (want_proto, field) = if info.tcp { (6u8, 16usize) } else { (17, 6) };
    if v4 != info.ipv4 || proto != want_proto {
        return Err(TxReject::BadChecksumRequest);
    }
    if info.tcp && usize::from(info.tcp_header_offset) != l4 {
        return Err(TxReject::BadChecksumRequest);
    }
    if l4 + field + 2 > frame.len() {
        return Err(TxReject::BadChecksumRequest);
    }
    let start = u16::try_from(l4).map_err(|_| TxReject::BadChecksumRequest)?;
    Ok(Some(TxCsum {
        start,
        offset: field as u16,
    }))
}

/// Receive checksum bits (`NDIS_TCP_IP_CHECKSUM_NET_BUFFER_LIST_INFO`,
/// receive view).
pub mod rx_bits {
    /// `TcpChecksumSucceeded`.
    pub const TCP_SUCCEEDED: u64 = 1 << 3;
    /// `UdpChecksumSucceeded`.
    pub const UDP_SUCCEEDED: u64 = 1 << 4;
}

/// The receive checksum word for a frame the device described with
/// `csum`, with `enabled` the receive offloads in force. A partial
/// checksum (`NEEDS_CSUM`: the field holds the pseudo-header sum) is
/// completed in `frame` first, because Windows has no "partial" state;
/// if its offsets do not fit the frame, the frame is left alone and
/// nothing is claimed. Claims only what the device vouched for and NDIS
/// enabled; 0 lets the stack check.
pub fn rx_checksum_info(frame: &mut [u8], csum: RxCsum, enabled: &OffloadConfig) -> u64 {
    let valid = match csum {
        RxCsum::None | RxCsum::Blank => false,
        RxCsum::Valid => true,
        RxCsum::Partial { start, offset } => {
            pv_net::csum::complete(frame, usize::from(start), usize::from(offset))
        }
    };
    if !valid {
        return 0;
    }
    let Some((_, proto, v4)) = l4_of(frame) else {
        return 0;
    };
    match (proto, v4) {
        (6, true) if enabled.v4_tcp.rx => rx_bits::TCP_SUCCEEDED,
        (6, false) if enabled.v6_tcp.rx => rx_bits::TCP_SUCCEEDED,
        (17, true) if enabled.v4_udp.rx => rx_bits::UDP_SUCCEEDED,
        (17, false) if enabled.v6_udp.rx => rx_bits::UDP_SUCCEEDED,
        _ => 0,
    }
}

/// One protocol's checksum offload, each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dir {
    /// The device computes transmit checksums.
    pub tx: bool,
    /// The device validates receive checksums.
    pub rx: bool,
}

/// Checksum offloads per protocol (TCP and UDP over IPv4 and IPv6). IP
/// header checksums, LSO and IPsec are never offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadConfig {
    /// TCP over IPv4.
    pub v4_tcp: Dir,
    /// UDP over IPv4.
    pub v4_udp: Dir,
    /// TCP over IPv6.
    pub v6_tcp: Dir,
    /// UDP over IPv6.
    pub v6_udp: Dir,
}

impl OffloadConfig {
    /// What a device with virtio `CSUM` (`tx`) and `GUEST_CSUM` (`rx`)
    /// can do.
    pub fn from_device(tx: bool, rx: bool) -> Self {
        let d = Dir { tx, rx };
        Self {
            v4_tcp: d,
            v4_udp: d,
            v6_tcp: d,
            v6_udp: d,
        }
    }

    /// `NDIS_TCP_IP_CHECKSUM_OFFLOAD`: IPv4 transmit, IPv4 receive, IPv6
    /// transmit, IPv6 receive, each `Encapsulation` then a bit-field word
    /// (IPv4: IpOptions 0-1, TcpOptions 2-3, Tcp 4-5, Udp 6-7, Ip 8-9;
    /// IPv6: IpExtensionHeaders 0-1, TcpOptions 2-3, Tcp 4-5, Udp 6-7).
    /// Options and extension headers are supported wherever checksums are
    /// (the L4 offset comes from the headers).
    pub fn checksum_offload(&self) -> [u8; CHECKSUM_OFFLOAD_BYTES] {
        let word = |tcp: bool, udp: bool| -> u32 {
            let any = tcp || udp;
            u32::from(any) | (u32::from(tcp) << 2) | (u32::from(tcp) << 4) | (u32::from(udp) << 6)
        };
        let parts = [
            word(self.v4_tcp.tx, self.v4_udp.tx),
            word(self.v4_tcp.rx, self.v4_udp.rx),
            word(self.v6_tcp.tx, self.v6_udp.tx),
            word(self.v6_tcp.rx, self.v6_udp.rx),
        ];
        let mut b = [0u8; CHECKSUM_OFFLOAD_BYTES];
        for (i, w) in parts.iter().enumerate() {
            let enc = if *w != 0 { ENCAPSULATION_802_3 } else { 0 };
            b[8 * i..8 * i + 4].copy_from_slice(&enc.to_le_bytes());
            b[8 * i + 4..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// `NDIS_OFFLOAD` revision 1 (112 bytes): header, the checksum part at
    /// offset 4, LSO v1, IPsec v1, LSO v2 and flags all zero.
    pub fn ndis_offload(&self) -> [u8; OFFLOAD_BYTES] {
        let mut b = [0u8; OFFLOAD_BYTES];
        b[..4].copy_from_slice(&object_header(OBJECT_TYPE_OFFLOAD, 1, OFFLOAD_BYTES));
        b[4..4 + CHECKSUM_OFFLOAD_BYTES].copy_from_slice(&self.checksum_offload());
        b
    }

    /// Apply `NDIS_OFFLOAD_PARAMETERS` (revision 1 or later) on top of
    /// `self`, within `hw`. Values per checksum byte: 0 no change, 1 both
    /// off, 2 TX only, 3 RX only, 4 both; LSO/IPsec/chimney bytes may only
    /// be 0 or 1 (disabled).
    pub fn apply_parameters(&self, hw: &OffloadConfig, p: &[u8]) -> Result<Self, OidError> {
        let p = p
            .get(..crate::oid::OFFLOAD_PARAMETERS_BYTES)
            .ok_or(OidError::InvalidLength {
                needed: crate::oid::OFFLOAD_PARAMETERS_BYTES,
            })?;
        let size = usize::from(u16::from_le_bytes([p[2], p[3]]));
        if p[0] != OBJECT_TYPE_DEFAULT || p[1] < 1 || size < crate::oid::OFFLOAD_PARAMETERS_BYTES {
            return Err(OidError::InvalidData);
        }
        // IPv4 header checksum: only "no change" or "off".
        if p[4] > 1 {
            return Err(OidError::InvalidData);
        }
        // LsoV1, IPsecV1, LsoV2 IPv4/IPv6, TcpConnection IPv4/IPv6.
        if p[9..15].iter().any(|&v| v > 1) {
            return Err(OidError::InvalidData);
        }
        let mut next = *self;
        let slots = [
            (p[5], &mut next.v4_tcp, hw.v4_tcp),
            (p[6], &mut next.v4_udp, hw.v4_udp),
            (p[7], &mut next.v6_tcp, hw.v6_tcp),
            (p[8], &mut next.v6_udp, hw.v6_udp),
        ];
        for (v, cur, can) in slots {
            let want = match v {
                0 => continue,
                1 => Dir::default(),
                2 => Dir {
                    tx: true,
                    rx: false,
                },
                3 => Dir {
                    tx: false,
                    rx: true,
                },
                4 => Dir { tx: true, rx: true },
                _ => return Err(OidError::InvalidData),
            };
            if (want.tx && !can.tx) || (want.rx && !can.rx) {
                return Err(OidError::InvalidData);
            }
            *cur = want;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oid::filter;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn frame_to(dst: [u8; 6]) -> [u8; 60] {
        let mut f = [0u8; 60];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    /// An Ethernet + IPv4 (optionally with 4 bytes of options) + TCP or
    /// UDP frame with a payload.
    fn ipv4(tcp: bool, options: bool) -> std::vec::Vec<u8> {
        let mut f = std::vec::Vec::new();
        f.extend_from_slice(&frame_to(MAC)[..14]);
        let ihl = if options { 6 } else { 5 };
        let mut ip = [0u8; 24];
        ip[0] = 0x40 | ihl;
        ip[9] = if tcp { 6 } else { 17 };
        f.extend_from_slice(&ip[..usize::from(ihl) * 4]);
        f.extend_from_slice(&[0u8; 20][..if tcp { 20 } else { 8 }]);
        f.extend_from_slice(b"payload bytes");
        f
    }

    fn ipv6_udp() -> std::vec::Vec<u8> {
        let mut f = std::vec::Vec::new();
        let mut eth = frame_to(MAC);
        eth[12..14].copy_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&eth[..14]);
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[6] = 17;
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0u8; 8]);
        f.extend_from_slice(b"xyz");
        f
    }

    #[test]
    fn filter_decisions() {
        let mcast = [[0x01, 0, 0x5e, 0, 0, 1]];
        let ours = frame_to(MAC);
        let other = frame_to([0x52, 0x54, 0, 0, 0, 1]);
        let bcast = frame_to([0xff; 6]);
        let listed = frame_to(mcast[0]);
        let unlisted = frame_to([0x01, 0, 0x5e, 0, 0, 2]);
        let d = filter::DIRECTED;
        assert!(accept(&ours, d, &MAC, &mcast));
        assert!(!accept(&other, d, &MAC, &mcast));
        assert!(!accept(&bcast, d, &MAC, &mcast));
        assert!(accept(&bcast, d | filter::BROADCAST, &MAC, &mcast));
        assert!(!accept(&listed, d, &MAC, &mcast));
        assert!(accept(&listed, filter::MULTICAST, &MAC, &mcast));
        assert!(!accept(&unlisted, filter::MULTICAST, &MAC, &mcast));
        assert!(accept(&unlisted, filter::ALL_MULTICAST, &MAC, &mcast));
        assert!(accept(&other, filter::PROMISCUOUS, &MAC, &mcast));
        assert!(
            !accept(&ours, 0, &MAC, &mcast),
            "filter 0 indicates nothing"
        );
        assert!(!accept(&ours[..13], filter::PROMISCUOUS, &MAC, &mcast));
    }

    #[test]
    fn counters_by_class() {
        let mut c = Counters::default();
        c.rx(&frame_to(MAC));
        c.rx(&frame_to([0xff; 6]));
        c.tx(&frame_to([0x33, 0x33, 0, 0, 0, 1]));
        assert_eq!(
            c.rx_ucast,
            FrameCount {
                frames: 1,
                bytes: 60
            }
        );
        assert_eq!(
            c.rx_bcast,
            FrameCount {
                frames: 1,
                bytes: 60
            }
        );
        assert_eq!(
            c.tx_mcast,
            FrameCount {
                frames: 1,
                bytes: 60
            }
        );
        assert_eq!(c.tx_ucast, FrameCount::default());
    }

    #[test]
    fn gather_walks_the_chain_from_the_offset() {
        let mut out = [Piece {
            mdl: 0,
            offset: 0,
            len: 0,
        }; MAX_PIECES];
        // 10 bytes skipped in a 30-byte MDL, then 0, 8 and 100 bytes.
        let n = gather(&[30, 0, 8, 100], 10, 60, 1500, &mut out).expect("gather");
        assert_eq!(
            &out[..n],
            &[
                Piece {
                    mdl: 0,
                    offset: 10,
                    len: 20
                },
                Piece {
                    mdl: 2,
                    offset: 0,
                    len: 8
                },
                Piece {
                    mdl: 3,
                    offset: 0,
                    len: 32
                },
            ]
        );
        // Exactly the chain's bytes.
        assert_eq!(gather(&[30, 0, 8, 100], 10, 128, 1500, &mut out), Ok(3));
        assert_eq!(
            gather(&[30, 0, 8, 100], 10, 129, 1500, &mut out),
            Err(TxReject::ChainTooShort)
        );
        assert_eq!(
            gather(&[30], 31, 14, 1500, &mut out),
            Err(TxReject::ChainTooShort)
        );
        assert_eq!(
            gather(&[100], 0, 13, 1500, &mut out),
            Err(TxReject::TooShort)
        );
        assert_eq!(
            gather(&[2000], 0, 1519, 1500, &mut out),
            Err(TxReject::TooLong)
        );
        assert_eq!(gather(&[2000], 0, 1518, 1500, &mut out), Ok(1));
        let many = [1usize; MAX_PIECES + 1];
        assert_eq!(
            gather(&many, 0, MAX_PIECES + 1, 1500, &mut out),
            Err(TxReject::TooManyPieces)
        );
    }

    #[test]
    fn tx_checksum_requests_become_core_requests() {
        let all = OffloadConfig::from_device(true, true);
        // TCP/IPv4 with the offset NDIS gives.
        let f = ipv4(true, false);
        let info = TxCsumInfo {
            ipv4: true,
            tcp: true,
            tcp_header_offset: 34,
            ..Default::default()
        };
        assert_eq!(
            tx_csum(&f, info, &all),
            Ok(Some(TxCsum {
                start: 34,
                offset: 16
            }))
        );
        // UDP/IPv4 with IP options: the offset comes from IHL.
        let f = ipv4(false, true);
        let info = TxCsumInfo {
            ipv4: true,
            udp: true,
            ..Default::default()
        };
        assert_eq!(
            tx_csum(&f, info, &all),
            Ok(Some(TxCsum {
                start: 38,
                offset: 6
            }))
        );
        // UDP/IPv6.
        let f = ipv6_udp();
        let info = TxCsumInfo {
            ipv6: true,
            udp: true,
            ..Default::default()
        };
        assert_eq!(
            tx_csum(&f, info, &all),
            Ok(Some(TxCsum {
                start: 54,
                offset: 6
            }))
        );
        // Nothing asked.
        assert_eq!(tx_csum(&f, TxCsumInfo::default(), &all), Ok(None));
    }

    #[test]
    fn tx_checksum_requests_that_are_refused() {
        let all = OffloadConfig::from_device(true, true);
        let tcp4 = ipv4(true, false);
        let ok = TxCsumInfo {
            ipv4: true,
            tcp: true,
            tcp_header_offset: 34,
            ..Default::default()
        };
        // Not enabled.
        let mut off = all;
        off.v4_tcp.tx = false;
        assert_eq!(tx_csum(&tcp4, ok, &off), Err(TxReject::BadChecksumRequest));
        // Wrong TCP offset, IP header checksum, UDP on a TCP frame, both
        // families, truncated frame.
        for (info, f) in [
            (
                TxCsumInfo {
                    tcp_header_offset: 30,
                    ..ok
                },
                &tcp4[..],
            ),
            (
                TxCsumInfo {
                    ip_header: true,
                    ..ok
                },
                &tcp4[..],
            ),
            (
                TxCsumInfo {
                    tcp: false,
                    udp: true,
                    ..ok
                },
                &tcp4[..],
            ),
            (TxCsumInfo { ipv6: true, ..ok }, &tcp4[..]),
            (ok, &tcp4[..40]),
        ] {
            assert_eq!(
                tx_csum(f, info, &all),
                Err(TxReject::BadChecksumRequest),
                "{info:?}"
            );
        }
    }

    #[test]
    fn tx_info_word_decodes() {
        let w = 1 | 4 | (34u64 << 16);
        assert_eq!(
            TxCsumInfo::from_word(w),
            TxCsumInfo {
                ipv4: true,
                tcp: true,
                tcp_header_offset: 34,
                ..Default::default()
            }
        );
        assert!(TxCsumInfo::from_word(3).is_empty());
    }

    #[test]
    fn rx_checksum_words() {
        let all = OffloadConfig::from_device(true, true);
        let mut f = ipv4(true, false);
        assert_eq!(
            rx_checksum_info(&mut f, RxCsum::Valid, &all),
            rx_bits::TCP_SUCCEEDED
        );
        assert_eq!(rx_checksum_info(&mut f, RxCsum::None, &all), 0);
        assert_eq!(rx_checksum_info(&mut f, RxCsum::Blank, &all), 0);
        let mut off = all;
        off.v4_tcp.rx = false;
        assert_eq!(rx_checksum_info(&mut f, RxCsum::Valid, &off), 0);
        let mut u = ipv6_udp();
        assert_eq!(
            rx_checksum_info(&mut u, RxCsum::Valid, &all),
            rx_bits::UDP_SUCCEEDED
        );
        // Partial: the checksum is completed in the frame, then claimed.
        let mut p = ipv4(false, false);
        p[40..42].copy_from_slice(&[0x12, 0x34]);
        let before = p.clone();
        let got = rx_checksum_info(
            &mut p,
            RxCsum::Partial {
                start: 34,
                offset: 6,
            },
            &all,
        );
        assert_eq!(got, rx_bits::UDP_SUCCEEDED);
        assert_ne!(p[40..42], before[40..42]);
        let s = u32::from(pv_net::csum::ones_sum(&p[34..])) + 0x1234;
        assert_eq!((s & 0xFFFF) + (s >> 16), 0xFFFF);
        // Partial with a field past the end: untouched, nothing claimed.
        let mut q = before.clone();
        let len = q.len() as u16;
        assert_eq!(
            rx_checksum_info(
                &mut q,
                RxCsum::Partial {
                    start: len - 1,
                    offset: 6
                },
                &all
            ),
            0
        );
        assert_eq!(q, before);
    }

    #[test]
    fn checksum_offload_encoding() {
        let b = OffloadConfig::from_device(true, false).checksum_offload();
        // IPv4 transmit: 802.3, IpOptions 1, TcpOptions 1, Tcp 1, Udp 1.
        assert_eq!(&b[0..8], &[2, 0, 0, 0, 0x55, 0, 0, 0]);
        // IPv4 receive: nothing.
        assert_eq!(&b[8..16], &[0; 8]);
        assert_eq!(&b[16..24], &[2, 0, 0, 0, 0x55, 0, 0, 0]);
        let mut c = OffloadConfig::default();
        c.v6_udp.rx = true;
        let b = c.checksum_offload();
        assert_eq!(&b[24..32], &[2, 0, 0, 0, 0x41, 0, 0, 0]);
        let o = c.ndis_offload();
        assert_eq!(&o[..4], &[0xA7, 1, 112, 0]);
        assert_eq!(&o[4..36], &b);
        assert!(o[36..].iter().all(|&x| x == 0));
    }
}
