//! Parsing what a guest hands the switch: the descriptor chain of one TX
//! request, its `virtio_net_hdr`, and the Ethernet frame behind it.
//!
//! Everything here works on copies: the chain's descriptors are read once
//! (by virtio-queue) and the bytes are copied out of guest memory once, into
//! a buffer the guest can no longer change, before any check is made.

use std::fmt;

/// Size of `struct virtio_net_hdr_v1` (VERSION_1 always carries
/// `num_buffers`, so the header is 12 bytes whatever MRG_RXBUF says).
pub const HDR_LEN: usize = 12;
/// Destination + source MAC + EtherType.
pub const ETH_HLEN: usize = 14;
/// Bytes a frame may carry beyond the MTU: the Ethernet header and one
/// 802.1Q tag.
pub const FRAME_OVERHEAD: usize = ETH_HLEN + 4;
/// Most descriptors accepted in one TX chain (Linux uses at most
/// MAX_SKB_FRAGS + 2 = 19).
pub const MAX_TX_DESCS: usize = 64;

/// Why a frame was dropped. Each has a stable metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The guest sent fewer than 14 bytes of frame.
    Runt,
    /// The guest sent more than MTU + 18 bytes of frame.
    Oversized,
    /// The guest's virtio-net header asked for something not negotiated
    /// (checksum offload, GSO) or was too short.
    BadHeader,
    /// The guest's descriptor chain looped, left the table, mixed
    /// directions, had too many descriptors or pointed outside its RAM.
    MalformedChain,
    /// The ingress port's rate limit was exceeded.
    RateLimited,
    /// The destination had no receive buffer and its backlog was full.
    NoRxBuffer,
    /// The destination's receive buffers were too small or malformed.
    RxChain,
    /// The frame's destination was learned on its own ingress port.
    SamePort,
    /// A frame from the uplink TAP could not be read or written.
    Uplink,
    /// The guest's TSO header has a zero `gso_size`, or one whose segments
    /// would not fit the MTU.
    GsoSize,
    /// The guest's `hdr_len` lies past the end of the frame.
    HdrLen,
    /// The guest's `csum_start`/`csum_offset` lie past the end of the
    /// frame, or a TSO frame's are not at its TCP checksum.
    CsumOffsets,
    /// The guest's TSO frame is not the TCP/IP packet its GSO type names
    /// (another protocol, a fragment, IP lengths that disagree with the
    /// frame, no payload).
    GsoFrame,
}

impl DropReason {
    pub const ALL: [DropReason; 13] = [
        Self::Runt,
        Self::Oversized,
        Self::BadHeader,
        Self::MalformedChain,
        Self::RateLimited,
        Self::NoRxBuffer,
        Self::RxChain,
        Self::SamePort,
        Self::Uplink,
        Self::GsoSize,
        Self::HdrLen,
        Self::CsumOffsets,
        Self::GsoFrame,
    ];

    /// The `reason` label of `pvbackend_net_drops_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Runt => "runt",
            Self::Oversized => "oversized",
            Self::BadHeader => "bad_header",
            Self::MalformedChain => "malformed_chain",
            Self::RateLimited => "rate_limited",
            Self::NoRxBuffer => "no_rx_buffer",
            Self::RxChain => "rx_chain",
            Self::SamePort => "same_port",
            Self::Uplink => "uplink",
            Self::GsoSize => "gso_size",
            Self::HdrLen => "hdr_len",
            Self::CsumOffsets => "csum_offsets",
            Self::GsoFrame => "gso_frame",
        }
    }

    /// True when the port's own guest is at fault.
    pub fn is_peer_fault(self) -> bool {
        matches!(
            self,
            Self::Runt
                | Self::Oversized
                | Self::BadHeader
                | Self::MalformedChain
                | Self::RxChain
                | Self::GsoSize
                | Self::HdrLen
                | Self::CsumOffsets
                | Self::GsoFrame
        )
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Runt => "the guest sent a frame shorter than an Ethernet header",
            Self::Oversized => "the guest sent a frame larger than the port's MTU allows",
            Self::BadHeader => "the guest's virtio-net header asks for an offload not negotiated",
            Self::MalformedChain => "the guest's descriptor chain is malformed",
            Self::RateLimited => "the port's rate limit was exceeded",
            Self::NoRxBuffer => "the destination had no receive buffer",
            Self::RxChain => "the destination's receive buffers are malformed or too small",
            Self::SamePort => "the destination was learned on the ingress port",
            Self::Uplink => "the uplink TAP failed",
            Self::GsoSize => "the guest's TSO header has a zero or too large gso_size",
            Self::HdrLen => "the guest's virtio-net hdr_len lies past the frame",
            Self::CsumOffsets => "the guest's csum_start/csum_offset do not fit the frame",
            Self::GsoFrame => "the guest's TSO frame is not the TCP/IP packet its header names",
        })
    }
}

/// One descriptor of a chain, as the queue yielded it (a copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write_only: bool,
}

/// Copies a TX chain (header + frame, device-readable only) out of guest
/// memory. `complete` is false when the queue's iterator stopped early (a
/// loop or a bad next index). `max_len` bounds the copy: a chain longer
/// than that is refused without reading it all. `read` copies guest
/// memory at an address into a buffer or fails.
pub fn copy_tx_chain<F>(
    descs: &[Desc],
    complete: bool,
    max_len: usize,
    mut read: F,
) -> Result<Vec<u8>, DropReason>
where
    F: FnMut(u64, &mut [u8]) -> Result<(), ()>,
{
    if !complete || descs.is_empty() || descs.len() > MAX_TX_DESCS {
        return Err(DropReason::MalformedChain);
    }
    let mut total: usize = 0;
    for d in descs {
        if d.write_only {
            return Err(DropReason::MalformedChain);
        }
        total = total.saturating_add(d.len as usize);
    }
    if total > max_len {
        return Err(if total < HDR_LEN + ETH_HLEN {
            DropReason::Runt
        } else {
            DropReason::Oversized
        });
    }
    let mut buf = vec![0u8; total];
    let mut at = 0;
    for d in descs {
        let n = d.len as usize;
        let dst = buf.get_mut(at..at + n).ok_or(DropReason::MalformedChain)?;
        read(d.addr, dst).map_err(|()| DropReason::MalformedChain)?;
        at += n;
    }
    Ok(buf)
}

/// Checks the virtio-net header (the first `hdr_len` bytes of `buf`: 12
/// with VERSION_1, 10 for a legacy driver) and the frame behind it against
/// `mtu` for a guest that negotiated no offloads; returns the frame. With
/// offloads, [`super::offload::parse_tx`].
///
/// Flags other than DATA_VALID (which a driver may echo) and any GSO type
/// are refused.
pub fn check_tx(buf: &[u8], hdr_len: usize, mtu: u16) -> Result<&[u8], DropReason> {
    super::offload::parse_tx(buf, hdr_len, mtu, super::offload::Offloads::NONE).map(|(_, f)| f)
}

/// The header the switch puts in front of a received frame: `hdr` (the
/// frame's offloads as this port takes them, and with MRG_RXBUF the
/// number of buffers it spans) with, for VERSION_1 (12 bytes),
/// `num_buffers` at least 1; a legacy 10-byte header has none.
pub fn rx_header(hdr_len: usize, hdr: super::offload::VnetHdr) -> [u8; HDR_LEN] {
    let num_buffers = if hdr_len >= HDR_LEN {
        hdr.num_buffers.max(1)
    } else {
        0
    };
    super::offload::VnetHdr { num_buffers, ..hdr }.to_bytes()
}

/// Header length for the acked features: 12 bytes with VERSION_1 or
/// MRG_RXBUF, 10 for a legacy driver.
pub fn hdr_len(acked: u64) -> usize {
    const VERSION_1: u64 = 1 << 32;
    const MRG_RXBUF: u64 = 1 << 15;
    if acked & (VERSION_1 | MRG_RXBUF) != 0 {
        HDR_LEN
    } else {
        10
    }
}

/// A MAC address.
pub type Mac = [u8; 6];

/// Destination MAC of a frame of at least 14 bytes.
pub fn dst_mac(frame: &[u8]) -> Option<Mac> {
    frame.first_chunk::<6>().copied()
}

/// Source MAC of a frame of at least 14 bytes.
pub fn src_mac(frame: &[u8]) -> Option<Mac> {
    frame.get(6..12).and_then(|s| s.try_into().ok())
}

/// Broadcast and multicast addresses have the group bit set.
pub fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem_reader(mem: &[u8]) -> impl FnMut(u64, &mut [u8]) -> Result<(), ()> + '_ {
        move |addr, out| {
            let a = usize::try_from(addr).map_err(|_| ())?;
            let src = mem.get(a..a.checked_add(out.len()).ok_or(())?).ok_or(())?;
            out.copy_from_slice(src);
            Ok(())
        }
    }

    fn ro(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write_only: false,
        }
    }

    #[test]
    fn chains_are_copied_and_checked() {
        let mut mem = vec![0u8; 4096];
        mem[100..112].copy_from_slice(&[0; 12]);
        mem[200..214].copy_from_slice(&[0xff; 14]);
        let buf =
            copy_tx_chain(&[ro(100, 12), ro(200, 14)], true, 2000, mem_reader(&mem)).expect("copy");
        assert_eq!(check_tx(&buf, HDR_LEN, 1500).expect("valid"), &[0xff; 14]);
        // Loops, writable descriptors, memory outside RAM, too long.
        let r = mem_reader(&mem);
        assert_eq!(
            copy_tx_chain(&[ro(100, 12)], false, 2000, r),
            Err(DropReason::MalformedChain)
        );
        let w = Desc {
            write_only: true,
            ..ro(0, 12)
        };
        assert_eq!(
            copy_tx_chain(&[w], true, 2000, mem_reader(&mem)),
            Err(DropReason::MalformedChain)
        );
        assert_eq!(
            copy_tx_chain(&[ro(4090, 12)], true, 2000, mem_reader(&mem)),
            Err(DropReason::MalformedChain)
        );
        assert_eq!(
            copy_tx_chain(&[ro(0, 3000)], true, 2000, mem_reader(&mem)),
            Err(DropReason::Oversized)
        );
        assert_eq!(
            copy_tx_chain(&[], true, 2000, mem_reader(&mem)),
            Err(DropReason::MalformedChain)
        );
    }

    #[test]
    fn headers_and_lengths_are_checked() {
        let mut b = vec![0u8; HDR_LEN + 60];
        assert!(check_tx(&b, HDR_LEN, 1500).is_ok());
        b[0] = 1; // NEEDS_CSUM, not negotiated
        assert_eq!(check_tx(&b, HDR_LEN, 1500), Err(DropReason::BadHeader));
        b[0] = 0;
        b[1] = 1; // GSO TCPv4
        assert_eq!(check_tx(&b, HDR_LEN, 1500), Err(DropReason::BadHeader));
        assert_eq!(check_tx(&[0; 5], HDR_LEN, 1500), Err(DropReason::BadHeader));
        assert_eq!(
            check_tx(&[0; HDR_LEN + 13], HDR_LEN, 1500),
            Err(DropReason::Runt)
        );
        assert!(check_tx(&vec![0; HDR_LEN + 1518], HDR_LEN, 1500).is_ok());
        assert_eq!(
            check_tx(&vec![0; HDR_LEN + 1519], HDR_LEN, 1500),
            Err(DropReason::Oversized)
        );
    }

    #[test]
    fn macs() {
        let m = parse_mac("52:54:00:12:34:56").expect("mac");
        assert_eq!(format_mac(&m), "52:54:00:12:34:56");
        assert!(parse_mac("52:54:00:12:34").is_none());
        assert!(parse_mac("52:54:00:12:34:56:78").is_none());
        assert!(parse_mac("52:54:00:12:34:5g").is_none());
        assert!(is_group(&[0xff; 6]) && is_group(&[0x33, 0x33, 0, 0, 0, 1]));
        assert!(!is_group(&m));
        let plain = super::super::offload::VnetHdr::default();
        assert_eq!(rx_header(HDR_LEN, plain)[10], 1);
        assert_eq!(rx_header(10, plain)[10], 0);
        // A frame over three merged buffers says so.
        let merged = super::super::offload::VnetHdr {
            num_buffers: 3,
            ..plain
        };
        assert_eq!(rx_header(HDR_LEN, merged)[10], 3);
        assert_eq!((hdr_len(1 << 32), hdr_len(0)), (12, 10));
    }
}
