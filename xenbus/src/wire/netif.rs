//! Network protocol entries (`xen/io/netif.h`): tx, rx and control rings.
//!
//! Native byte order, as Xen defines them. Note that the first two tx and rx
//! flag bits are swapped relative to each other.

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `XEN_NETIF_NR_SLOTS_MIN`: a backend must accept packets of this many slots.
pub const NR_SLOTS_MIN: usize = 18;
/// `XEN_NETIF_MAX_TX_SIZE`.
pub const MAX_TX_SIZE: u32 = 0xFFFF;

/// `NETTXF_csum_blank`.
pub const TXF_CSUM_BLANK: u16 = 1 << 0;
/// `NETTXF_data_validated`.
pub const TXF_DATA_VALIDATED: u16 = 1 << 1;
/// `NETTXF_more_data`.
pub const TXF_MORE_DATA: u16 = 1 << 2;
/// `NETTXF_extra_info`.
pub const TXF_EXTRA_INFO: u16 = 1 << 3;

/// `NETRXF_data_validated` (bit 0: swapped relative to tx).
pub const RXF_DATA_VALIDATED: u16 = 1 << 0;
/// `NETRXF_csum_blank` (bit 1: swapped relative to tx).
pub const RXF_CSUM_BLANK: u16 = 1 << 1;
/// `NETRXF_more_data`.
pub const RXF_MORE_DATA: u16 = 1 << 2;
/// `NETRXF_extra_info`.
pub const RXF_EXTRA_INFO: u16 = 1 << 3;

/// `XEN_NETIF_EXTRA_TYPE_GSO`.
pub const EXTRA_TYPE_GSO: u8 = 1;
/// `XEN_NETIF_EXTRA_TYPE_MCAST_ADD`.
pub const EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// `XEN_NETIF_EXTRA_TYPE_MCAST_DEL`.
pub const EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// `XEN_NETIF_EXTRA_TYPE_HASH`.
pub const EXTRA_TYPE_HASH: u8 = 4;
/// `XEN_NETIF_EXTRA_FLAG_MORE`.
pub const EXTRA_FLAG_MORE: u8 = 1 << 0;
/// `XEN_NETIF_GSO_TYPE_TCPV4`.
pub const GSO_TYPE_TCPV4: u8 = 1;
/// `XEN_NETIF_GSO_TYPE_TCPV6`.
pub const GSO_TYPE_TCPV6: u8 = 2;

/// `NETIF_RSP_DROPPED`.
pub const RSP_DROPPED: i16 = -2;
/// `NETIF_RSP_ERROR`.
pub const RSP_ERROR: i16 = -1;
/// `NETIF_RSP_OKAY`.
pub const RSP_OKAY: i16 = 0;
/// `NETIF_RSP_NULL`: the status of the response to an extra-info slot.
pub const RSP_NULL: i16 = 1;

/// `struct netif_tx_request` (12 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct NetifTxRequest {
    /// Grant of the page holding the fragment.
    pub gref: u32,
    /// Offset of the fragment within the page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// Fragment size; for the first fragment, the whole packet's size.
    pub size: u16,
}

/// `struct netif_tx_response` (4 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct NetifTxResponse {
    /// The request's `id`.
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

/// `struct netif_rx_request` (8 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct NetifRxRequest {
    /// Echoed in the response.
    pub id: u16,
    /// Padding.
    pub pad: u16,
    /// Grant of the page to receive into.
    pub gref: u32,
}

/// `struct netif_rx_response` (8 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct NetifRxResponse {
    /// The request's `id` (Linux netfront ignores it: the slot matters).
    pub id: u16,
    /// Offset of the data within the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Length of the data if non-negative, else `NETIF_RSP_*`.
    pub status: i16,
}

/// `struct netif_extra_info` (8 bytes). The 6-byte union is kept as raw
/// bytes; the accessors decode the GSO variant.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct NetifExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub type_: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// The union `u` (gso, mcast, hash), native byte order.
    pub u: [u8; 6],
}

impl NetifExtraInfo {
    /// `u.gso.size`.
    pub fn gso_size(&self) -> u16 {
        u16::from_ne_bytes([self.u[0], self.u[1]])
    }
    /// `u.gso.type`.
    pub fn gso_type(&self) -> u8 {
        self.u[2]
    }
    /// `u.gso.features`.
    pub fn gso_features(&self) -> u16 {
        u16::from_ne_bytes([self.u[4], self.u[5]])
    }
    /// `u.mcast.addr`.
    pub fn mcast_addr(&self) -> [u8; 6] {
        self.u
    }
    /// `u.hash.type` (`_XEN_NETIF_CTRL_HASH_TYPE_*` bit number).
    pub fn hash_type(&self) -> u8 {
        self.u[0]
    }
    /// `u.hash.algorithm`.
    pub fn hash_algorithm(&self) -> u8 {
        self.u[1]
    }
    /// `u.hash.value`.
    pub fn hash_value(&self) -> [u8; 4] {
        [self.u[2], self.u[3], self.u[4], self.u[5]]
    }
}

/// `XEN_NETIF_CTRL_TYPE_INVALID`.
pub const CTRL_TYPE_INVALID: u16 = 0;
/// `XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS`.
pub const CTRL_TYPE_GET_HASH_FLAGS: u16 = 1;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS`.
pub const CTRL_TYPE_SET_HASH_FLAGS: u16 = 2;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_KEY`.
pub const CTRL_TYPE_SET_HASH_KEY: u16 = 3;
/// `XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE`.
pub const CTRL_TYPE_GET_HASH_MAPPING_SIZE: u16 = 4;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE`.
pub const CTRL_TYPE_SET_HASH_MAPPING_SIZE: u16 = 5;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING`.
pub const CTRL_TYPE_SET_HASH_MAPPING: u16 = 6;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM`.
pub const CTRL_TYPE_SET_HASH_ALGORITHM: u16 = 7;
/// `XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE`.
pub const CTRL_TYPE_GET_GREF_MAPPING_SIZE: u16 = 8;
/// `XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING`.
pub const CTRL_TYPE_ADD_GREF_MAPPING: u16 = 9;
/// `XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING`.
pub const CTRL_TYPE_DEL_GREF_MAPPING: u16 = 10;

/// `XEN_NETIF_CTRL_STATUS_SUCCESS`.
pub const CTRL_STATUS_SUCCESS: u32 = 0;
/// `XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED`.
pub const CTRL_STATUS_NOT_SUPPORTED: u32 = 1;
/// `XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER`.
pub const CTRL_STATUS_INVALID_PARAMETER: u32 = 2;
/// `XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW`.
pub const CTRL_STATUS_BUFFER_OVERFLOW: u32 = 3;

/// `struct xen_netif_ctrl_request` (16 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct NetifCtrlRequest {
    /// Echoed in the response.
    pub id: u16,
    /// `XEN_NETIF_CTRL_TYPE_*`.
    pub type_: u16,
    /// Type-specific arguments.
    pub data: [u32; 3],
}

/// `struct xen_netif_ctrl_response` (12 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct NetifCtrlResponse {
    /// The request's `id`.
    pub id: u16,
    /// The request's `type`.
    pub type_: u16,
    /// `XEN_NETIF_CTRL_STATUS_*`.
    pub status: u32,
    /// Type-specific result.
    pub data: u32,
}

const _: () = {
    assert!(size_of::<NetifTxRequest>() == 12);
    assert!(offset_of!(NetifTxRequest, offset) == 4);
    assert!(offset_of!(NetifTxRequest, flags) == 6);
    assert!(offset_of!(NetifTxRequest, id) == 8);
    assert!(offset_of!(NetifTxRequest, size) == 10);
    assert!(size_of::<NetifTxResponse>() == 4);
    assert!(offset_of!(NetifTxResponse, status) == 2);
    assert!(size_of::<NetifRxRequest>() == 8);
    assert!(offset_of!(NetifRxRequest, gref) == 4);
    assert!(size_of::<NetifRxResponse>() == 8);
    assert!(offset_of!(NetifRxResponse, offset) == 2);
    assert!(offset_of!(NetifRxResponse, flags) == 4);
    assert!(offset_of!(NetifRxResponse, status) == 6);
    assert!(size_of::<NetifExtraInfo>() == 8);
    assert!(offset_of!(NetifExtraInfo, flags) == 1);
    assert!(offset_of!(NetifExtraInfo, u) == 2);
    assert!(size_of::<NetifCtrlRequest>() == 16);
    assert!(offset_of!(NetifCtrlRequest, type_) == 2);
    assert!(offset_of!(NetifCtrlRequest, data) == 4);
    assert!(size_of::<NetifCtrlResponse>() == 12);
    assert!(offset_of!(NetifCtrlResponse, status) == 4);
    assert!(offset_of!(NetifCtrlResponse, data) == 8);
};
