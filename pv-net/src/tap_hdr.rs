//! The `virtio_net_hdr` a Linux TAP interface with `IFF_VNET_HDR` puts
//! before every frame (the 12-byte `VERSION_1` layout, set with
//! `TUNSETVNETHDRSZ`), mapped to and from the core's checksum requests.
//!
//! The header is written by the guest kernel, so [`tx_csum_of`] is a
//! parser of input we do not control: it refuses what it does not
//! understand (GSO, unknown flags, a short packet) instead of guessing, and
//! the core's [`crate::NetFrontend::queue_tx`] checks that a checksum
//! request lies inside the frame. Fuzzed by `pv-net/fuzz`'s `tap_hdr`.

use crate::virtio::{NetHdr, GSO_NONE, HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM, HDR_LEN};
use crate::{RxCsum, TxCsum};

/// Why a frame read from the TAP is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxRefusal {
    /// Shorter than the header.
    Short,
    /// A GSO frame (never asked for: TSO is not offered to the kernel).
    Gso,
    /// Header flags we do not know.
    Flags,
}

/// The checksum request of a frame the kernel wrote to the TAP (its
/// `virtio_net_hdr`), for the core's [`crate::NetFrontend::queue_tx`].
/// `DATA_VALID` on transmit means nothing to a device and is ignored.
pub fn tx_csum_of(packet: &[u8]) -> Result<(Option<TxCsum>, &[u8]), TxRefusal> {
    let (h, frame) = packet.split_at_checked(HDR_LEN).ok_or(TxRefusal::Short)?;
    let mut hb = [0u8; HDR_LEN];
    hb.copy_from_slice(h);
    let h = NetHdr::from_bytes(&hb);
    if h.gso_type != GSO_NONE {
        return Err(TxRefusal::Gso);
    }
    if h.flags & !(HDR_F_NEEDS_CSUM | HDR_F_DATA_VALID) != 0 {
        return Err(TxRefusal::Flags);
    }
    let csum = (h.flags & HDR_F_NEEDS_CSUM != 0).then_some(TxCsum {
        start: h.csum_start,
        offset: h.csum_offset,
    });
    Ok((csum, frame))
}

/// The `virtio_net_hdr` to put before a received frame on the TAP.
///
/// `Blank` (a Xen backend's `csum_blank` with no offsets) cannot be
/// expressed to the kernel without parsing the frame; it is passed with no
/// flags, so the stack verifies (and drops a frame whose checksum really is
/// blank). The virtio transport never reports it.
pub fn rx_hdr_of(csum: RxCsum) -> [u8; HDR_LEN] {
    let mut h = NetHdr::default();
    match csum {
        RxCsum::None | RxCsum::Blank => {}
        RxCsum::Valid => h.flags = HDR_F_DATA_VALID,
        RxCsum::Partial { start, offset } => {
            h.flags = HDR_F_NEEDS_CSUM;
            h.csum_start = start;
            h.csum_offset = offset;
        }
    }
    h.to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn tx_header_mapping() {
        let mut p = vec![0u8; HDR_LEN + 60];
        assert_eq!(tx_csum_of(&p), Ok((None, &p[HDR_LEN..])));
        let h = NetHdr {
            flags: HDR_F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..NetHdr::default()
        };
        p[..HDR_LEN].copy_from_slice(&h.to_bytes());
        let (c, f) = tx_csum_of(&p).expect("accepted");
        assert_eq!(
            c,
            Some(TxCsum {
                start: 34,
                offset: 16
            })
        );
        assert_eq!(f.len(), 60);
        p[0] = HDR_F_DATA_VALID;
        assert_eq!(tx_csum_of(&p).map(|r| r.0), Ok(None));
        p[0] = 0x80;
        assert_eq!(tx_csum_of(&p), Err(TxRefusal::Flags));
        p[0] = 0;
        p[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
        assert_eq!(tx_csum_of(&p), Err(TxRefusal::Gso));
        assert_eq!(tx_csum_of(&p[..5]), Err(TxRefusal::Short));
    }

    #[test]
    fn rx_header_mapping() {
        assert_eq!(rx_hdr_of(RxCsum::None), [0; HDR_LEN]);
        assert_eq!(rx_hdr_of(RxCsum::Blank), [0; HDR_LEN]);
        assert_eq!(rx_hdr_of(RxCsum::Valid)[0], HDR_F_DATA_VALID);
        let h = NetHdr::from_bytes(&rx_hdr_of(RxCsum::Partial {
            start: 34,
            offset: 6,
        }));
        assert_eq!(
            (h.flags, h.csum_start, h.csum_offset, h.gso_type),
            (HDR_F_NEEDS_CSUM, 34, 6, GSO_NONE)
        );
    }
}
