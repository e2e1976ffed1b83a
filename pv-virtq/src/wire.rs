//! The virtio requests pvdrivers frontends build, as typed little-endian
//! wire structs (virtio 1.2), each defined once here: the virtio-blk request
//! header, discard/write-zeroes segment and status ([`blk`]), the virtio-net
//! packet header ([`net`]) and the virtio-balloon stats entry ([`balloon`]).
//!
//! Every field is a `zerocopy` little-endian type, so a struct has
//! alignment 1 and exactly the spec's layout on any host; the `const`
//! asserts next to each struct check its size and field offsets against
//! the spec section it cites. A struct is written to DMA memory with
//! [`crate::DmaRegion::write`] or copied out of a buffer the device wrote
//! with `FromBytes::read_from_bytes` (one copy, then validated: any bytes
//! decode).

use core::mem::{offset_of, size_of};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// virtio-blk (virtio 1.2 §5.2): request types, status values and the
/// fixed parts of a request.
pub mod blk {
    use super::*;

    /// `VIRTIO_BLK_T_IN`.
    pub const T_IN: u32 = 0;
    /// `VIRTIO_BLK_T_OUT`.
    pub const T_OUT: u32 = 1;
    /// `VIRTIO_BLK_T_FLUSH`.
    pub const T_FLUSH: u32 = 4;
    /// `VIRTIO_BLK_T_GET_ID`.
    pub const T_GET_ID: u32 = 8;
    /// `VIRTIO_BLK_T_DISCARD`.
    pub const T_DISCARD: u32 = 11;
    /// `VIRTIO_BLK_T_WRITE_ZEROES`.
    pub const T_WRITE_ZEROES: u32 = 13;
    /// `VIRTIO_BLK_S_OK`.
    pub const S_OK: u8 = 0;
    /// `VIRTIO_BLK_S_IOERR`.
    pub const S_IOERR: u8 = 1;
    /// `VIRTIO_BLK_S_UNSUPP`.
    pub const S_UNSUPP: u8 = 2;
    /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`.
    pub const WZ_FLAG_UNMAP: u32 = 1;
    /// Bytes of the device's ID string (`VIRTIO_BLK_ID_BYTES`).
    pub const ID_BYTES: usize = 20;

    /// The device-readable head of `struct virtio_blk_req` (§5.2.6): `type`,
    /// `reserved`, `sector`. The data buffers and the status byte follow in
    /// the chain.
    #[derive(
        Clone,
        Copy,
        Debug,
        Default,
        PartialEq,
        Eq,
        FromBytes,
        IntoBytes,
        Immutable,
        KnownLayout,
        Unaligned,
    )]
    #[repr(C)]
    pub struct ReqHeader {
        /// `VIRTIO_BLK_T_*`.
        pub type_: U32,
        /// Zero.
        pub reserved: U32,
        /// First 512-byte sector (read and write; 0 otherwise).
        pub sector: U64,
    }

    const _: () = {
        assert!(size_of::<ReqHeader>() == 16);
        assert!(offset_of!(ReqHeader, type_) == 0);
        assert!(offset_of!(ReqHeader, reserved) == 4);
        assert!(offset_of!(ReqHeader, sector) == 8);
    };

    impl ReqHeader {
        /// A header of type `ty` at `sector`.
        pub fn new(ty: u32, sector: u64) -> Self {
            Self {
                type_: U32::new(ty),
                reserved: U32::ZERO,
                sector: U64::new(sector),
            }
        }
    }

    /// `struct virtio_blk_discard_write_zeroes` (§5.2.6), the one
    /// device-readable segment of a discard or write-zeroes request.
    #[derive(
        Clone,
        Copy,
        Debug,
        Default,
        PartialEq,
        Eq,
        FromBytes,
        IntoBytes,
        Immutable,
        KnownLayout,
        Unaligned,
    )]
    #[repr(C)]
    pub struct DiscardWriteZeroes {
        /// First sector.
        pub sector: U64,
        /// Sectors.
        pub num_sectors: U32,
        /// Bit 0: `unmap` ([`WZ_FLAG_UNMAP`], write-zeroes only); the rest
        /// reserved.
        pub flags: U32,
    }

    const _: () = {
        assert!(size_of::<DiscardWriteZeroes>() == 16);
        assert!(offset_of!(DiscardWriteZeroes, sector) == 0);
        assert!(offset_of!(DiscardWriteZeroes, num_sectors) == 8);
        assert!(offset_of!(DiscardWriteZeroes, flags) == 12);
    };

    /// The device-writable tail of `struct virtio_blk_req` (§5.2.6): the
    /// status byte, `VIRTIO_BLK_S_*`.
    #[derive(
        Clone,
        Copy,
        Debug,
        Default,
        PartialEq,
        Eq,
        FromBytes,
        IntoBytes,
        Immutable,
        KnownLayout,
        Unaligned,
    )]
    #[repr(C)]
    pub struct ReqStatus {
        /// `VIRTIO_BLK_S_*`.
        pub status: u8,
    }

    const _: () = assert!(size_of::<ReqStatus>() == 1);
}

/// virtio-net (virtio 1.2 §5.1): the packet header.
pub mod net {
    use super::*;

    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
    pub const HDR_F_NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`.
    pub const HDR_F_DATA_VALID: u8 = 2;
    /// `VIRTIO_NET_HDR_F_RSC_INFO`.
    pub const HDR_F_RSC_INFO: u8 = 4;
    /// `VIRTIO_NET_HDR_GSO_NONE`.
    pub const GSO_NONE: u8 = 0;
    /// `VIRTIO_NET_HDR_GSO_TCPV4`.
    pub const GSO_TCPV4: u8 = 1;
    /// `VIRTIO_NET_HDR_GSO_UDP`.
    pub const GSO_UDP: u8 = 3;
    /// `VIRTIO_NET_HDR_GSO_TCPV6`.
    pub const GSO_TCPV6: u8 = 4;
    /// `VIRTIO_NET_HDR_GSO_UDP_L4`.
    pub const GSO_UDP_L4: u8 = 5;
    /// `VIRTIO_NET_HDR_GSO_ECN`.
    pub const GSO_ECN: u8 = 0x80;

    /// `struct virtio_net_hdr` (§5.1.6) as sent and received with
    /// `VIRTIO_F_VERSION_1` (or `VIRTIO_NET_F_MRG_RXBUF`), which always
    /// carries `num_buffers`; the hash fields of `VIRTIO_NET_F_HASH_REPORT`
    /// are not included (never negotiated).
    #[derive(
        Clone,
        Copy,
        Debug,
        Default,
        PartialEq,
        Eq,
        FromBytes,
        IntoBytes,
        Immutable,
        KnownLayout,
        Unaligned,
    )]
    #[repr(C)]
    pub struct Hdr {
        /// `VIRTIO_NET_HDR_F_*`.
        pub flags: u8,
        /// `VIRTIO_NET_HDR_GSO_*`.
        pub gso_type: u8,
        /// `hdr_len`: bytes of headers to copy into each segment (GSO).
        pub hdr_len: U16,
        /// `gso_size`: payload bytes per segment (GSO).
        pub gso_size: U16,
        /// `csum_start`: where checksumming starts (`NEEDS_CSUM`).
        pub csum_start: U16,
        /// `csum_offset`: where the checksum goes, after `csum_start`.
        pub csum_offset: U16,
        /// `num_buffers`: buffers of a merged receive packet (0 on TX).
        pub num_buffers: U16,
    }

    const _: () = {
        assert!(size_of::<Hdr>() == 12);
        assert!(offset_of!(Hdr, flags) == 0);
        assert!(offset_of!(Hdr, gso_type) == 1);
        assert!(offset_of!(Hdr, hdr_len) == 2);
        assert!(offset_of!(Hdr, gso_size) == 4);
        assert!(offset_of!(Hdr, csum_start) == 6);
        assert!(offset_of!(Hdr, csum_offset) == 8);
        assert!(offset_of!(Hdr, num_buffers) == 10);
    };
}

/// virtio-balloon (virtio 1.2 §5.5): the statistics entry.
pub mod balloon {
    use super::*;

    /// `struct virtio_balloon_stat` (§5.5.6.3), packed: `tag` le16
    /// (`VIRTIO_BALLOON_S_*`), `val` le64.
    #[derive(
        Clone,
        Copy,
        Debug,
        Default,
        PartialEq,
        Eq,
        FromBytes,
        IntoBytes,
        Immutable,
        KnownLayout,
        Unaligned,
    )]
    #[repr(C)]
    pub struct Stat {
        /// `VIRTIO_BALLOON_S_*`.
        pub tag: U16,
        /// The value (bytes, or a count for the event stats).
        pub val: U64,
    }

    const _: () = {
        assert!(size_of::<Stat>() == 10);
        assert!(offset_of!(Stat, tag) == 0);
        assert!(offset_of!(Stat, val) == 2);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    // Field order and endianness, byte for byte (the const asserts check
    // sizes and offsets; these check each field lands where the spec says).

    #[test]
    fn blk_header_bytes() {
        let h = blk::ReqHeader::new(blk::T_OUT, 0x0102_0304_0506_0708);
        assert_eq!(
            h.as_bytes(),
            &[1, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        let s = blk::DiscardWriteZeroes {
            sector: U64::new(0x1122),
            num_sectors: U32::new(0x33),
            flags: U32::new(blk::WZ_FLAG_UNMAP),
        };
        assert_eq!(
            s.as_bytes(),
            &[0x22, 0x11, 0, 0, 0, 0, 0, 0, 0x33, 0, 0, 0, 1, 0, 0, 0]
        );
    }

    #[test]
    fn net_header_bytes() {
        let h = net::Hdr {
            flags: net::HDR_F_NEEDS_CSUM,
            gso_type: net::GSO_TCPV4,
            hdr_len: U16::new(0x0203),
            gso_size: U16::new(0x0405),
            csum_start: U16::new(0x0607),
            csum_offset: U16::new(0x0809),
            num_buffers: U16::new(0x0a0b),
        };
        let b = [1, 1, 3, 2, 5, 4, 7, 6, 9, 8, 0x0b, 0x0a];
        assert_eq!(h.as_bytes(), &b);
        assert_eq!(net::Hdr::read_from_bytes(&b[..]).ok(), Some(h));
    }

    #[test]
    fn balloon_stat_bytes() {
        let s = balloon::Stat {
            tag: U16::new(5),
            val: U64::new(0x0102_0304_0506_0708),
        };
        assert_eq!(s.as_bytes(), &[5, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
    }
}
