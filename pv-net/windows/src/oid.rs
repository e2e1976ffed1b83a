//! OID requests (NDIS 6 `MiniportOidRequest`) answered from plain state.
//!
//! The driver copies the request's OID and information buffer out of the
//! `NDIS_OID_REQUEST`, calls [`Adapter::query`] or [`Adapter::set`], and
//! copies back `BytesWritten`/`BytesRead`/`BytesNeeded` and the status
//! ([`OidError::ndis_status`]). Every structure NDIS expects in an
//! information buffer is encoded here as little-endian bytes at the
//! offsets of the WDK's `ntddndis.h`/`ndis.h` (x86-64), so the encodings
//! are tested on the host and the driver needs no `repr(C)` for them.
//!
//! # What is answered
//!
//! General characteristics (media, frame and lookahead sizes, buffer space,
//! vendor, driver version, MAC options), link state and speed, MAC
//! addresses, the packet filter and the multicast list (query and set),
//! statistics (`OID_GEN_STATISTICS` and the five counters of NDIS 5), and
//! `OID_TCP_OFFLOAD_PARAMETERS` (checksum offload on or off per protocol).
//! Every other OID is [`OidError::NotSupported`]; NDIS answers
//! `OID_GEN_MAC_ADDRESS`, `OID_GEN_MAX_LINK_SPEED` and the offload
//! current-config query itself from the attributes the driver registered.
//!
//! # What is refused
//!
//! A set with a short buffer ([`OidError::InvalidLength`]), a packet filter
//! with bits this miniport does not offer ([`OidError::NotSupported`]), a
//! multicast list that is not whole addresses, holds a unicast address or
//! is longer than [`MAX_MULTICAST`], a lookahead above the frame size, and
//! an offload request that enables what the device cannot do (LSO, IPsec,
//! TCP chimney, IPv4 header checksum): [`OidError::InvalidData`].

use alloc::vec::Vec;

use pv_net::{Stats, ETH_HLEN};

use crate::nbl::{Counters, OffloadConfig};

/// NDIS OID values (`ntddndis.h`).
#[allow(missing_docs)]
pub mod oids {
    pub const OID_GEN_SUPPORTED_LIST: u32 = 0x0001_0101;
    pub const OID_GEN_HARDWARE_STATUS: u32 = 0x0001_0102;
    pub const OID_GEN_MEDIA_SUPPORTED: u32 = 0x0001_0103;
    pub const OID_GEN_MEDIA_IN_USE: u32 = 0x0001_0104;
    pub const OID_GEN_MAXIMUM_LOOKAHEAD: u32 = 0x0001_0105;
    pub const OID_GEN_MAXIMUM_FRAME_SIZE: u32 = 0x0001_0106;
    pub const OID_GEN_LINK_SPEED: u32 = 0x0001_0107;
    pub const OID_GEN_TRANSMIT_BUFFER_SPACE: u32 = 0x0001_0108;
    pub const OID_GEN_RECEIVE_BUFFER_SPACE: u32 = 0x0001_0109;
    pub const OID_GEN_TRANSMIT_BLOCK_SIZE: u32 = 0x0001_010A;
    pub const OID_GEN_RECEIVE_BLOCK_SIZE: u32 = 0x0001_010B;
    pub const OID_GEN_VENDOR_ID: u32 = 0x0001_010C;
    pub const OID_GEN_VENDOR_DESCRIPTION: u32 = 0x0001_010D;
    pub const OID_GEN_CURRENT_PACKET_FILTER: u32 = 0x0001_010E;
    pub const OID_GEN_CURRENT_LOOKAHEAD: u32 = 0x0001_010F;
    pub const OID_GEN_DRIVER_VERSION: u32 = 0x0001_0110;
    pub const OID_GEN_MAXIMUM_TOTAL_SIZE: u32 = 0x0001_0111;
    pub const OID_GEN_MAC_OPTIONS: u32 = 0x0001_0113;
    pub const OID_GEN_MEDIA_CONNECT_STATUS: u32 = 0x0001_0114;
    pub const OID_GEN_MAXIMUM_SEND_PACKETS: u32 = 0x0001_0115;
    pub const OID_GEN_VENDOR_DRIVER_VERSION: u32 = 0x0001_0116;
    pub const OID_GEN_PHYSICAL_MEDIUM: u32 = 0x0001_0202;
    pub const OID_GEN_LINK_STATE: u32 = 0x0001_0207;
    pub const OID_GEN_XMIT_OK: u32 = 0x0002_0101;
    pub const OID_GEN_RCV_OK: u32 = 0x0002_0102;
    pub const OID_GEN_XMIT_ERROR: u32 = 0x0002_0103;
    pub const OID_GEN_RCV_ERROR: u32 = 0x0002_0104;
    pub const OID_GEN_RCV_NO_BUFFER: u32 = 0x0002_0105;
    pub const OID_GEN_STATISTICS: u32 = 0x0002_0106;
    pub const OID_802_3_PERMANENT_ADDRESS: u32 = 0x0101_0101;
    pub const OID_802_3_CURRENT_ADDRESS: u32 = 0x0101_0102;
    pub const OID_802_3_MULTICAST_LIST: u32 = 0x0101_0103;
    pub const OID_802_3_MAXIMUM_LIST_SIZE: u32 = 0x0101_0104;
    pub const OID_802_3_RCV_ERROR_ALIGNMENT: u32 = 0x0102_0101;
    pub const OID_802_3_XMIT_ONE_COLLISION: u32 = 0x0102_0102;
    pub const OID_802_3_XMIT_MORE_COLLISIONS: u32 = 0x0102_0103;
    pub const OID_TCP_OFFLOAD_PARAMETERS: u32 = 0xFC01_020C;
}
use oids::*;

/// Every OID [`Adapter::query`] or [`Adapter::set`] answers (the list the
/// driver registers in its general attributes and returns for
/// `OID_GEN_SUPPORTED_LIST`).
pub const SUPPORTED_OIDS: [u32; 37] = [
    OID_GEN_SUPPORTED_LIST,
    OID_GEN_HARDWARE_STATUS,
    OID_GEN_MEDIA_SUPPORTED,
    OID_GEN_MEDIA_IN_USE,
    OID_GEN_MAXIMUM_LOOKAHEAD,
    OID_GEN_MAXIMUM_FRAME_SIZE,
    OID_GEN_LINK_SPEED,
    OID_GEN_TRANSMIT_BUFFER_SPACE,
    OID_GEN_RECEIVE_BUFFER_SPACE,
    OID_GEN_TRANSMIT_BLOCK_SIZE,
    OID_GEN_RECEIVE_BLOCK_SIZE,
    OID_GEN_VENDOR_ID,
    OID_GEN_VENDOR_DESCRIPTION,
    OID_GEN_CURRENT_PACKET_FILTER,
    OID_GEN_CURRENT_LOOKAHEAD,
    OID_GEN_DRIVER_VERSION,
    OID_GEN_MAXIMUM_TOTAL_SIZE,
    OID_GEN_MAC_OPTIONS,
    OID_GEN_MEDIA_CONNECT_STATUS,
    OID_GEN_MAXIMUM_SEND_PACKETS,
    OID_GEN_VENDOR_DRIVER_VERSION,
    OID_GEN_PHYSICAL_MEDIUM,
    OID_GEN_LINK_STATE,
    OID_GEN_XMIT_OK,
    OID_GEN_RCV_OK,
    OID_GEN_XMIT_ERROR,
    OID_GEN_RCV_ERROR,
    OID_GEN_RCV_NO_BUFFER,
    OID_GEN_STATISTICS,
    OID_802_3_PERMANENT_ADDRESS,
    OID_802_3_CURRENT_ADDRESS,
    OID_802_3_MULTICAST_LIST,
    OID_802_3_MAXIMUM_LIST_SIZE,
    OID_802_3_RCV_ERROR_ALIGNMENT,
    OID_802_3_XMIT_ONE_COLLISION,
    OID_802_3_XMIT_MORE_COLLISIONS,
    OID_TCP_OFFLOAD_PARAMETERS,
];

/// `NDIS_PACKET_TYPE_*` (`ntddndis.h`).
pub mod filter {
    /// Frames to our MAC.
    pub const DIRECTED: u32 = 0x0001;
    /// Multicast frames to an address on the list.
    pub const MULTICAST: u32 = 0x0002;
    /// Every multicast frame.
    pub const ALL_MULTICAST: u32 = 0x0004;
    /// Broadcast frames.
    pub const BROADCAST: u32 = 0x0008;
    /// Everything.
    pub const PROMISCUOUS: u32 = 0x0020;
    /// The filters this miniport offers.
    pub const SUPPORTED: u32 = DIRECTED | MULTICAST | ALL_MULTICAST | BROADCAST | PROMISCUOUS;
}

/// NDIS_STATUS codes an OID request completes with (`ndis.h`).
#[allow(missing_docs)]
pub mod status {
    pub const SUCCESS: u32 = 0;
    pub const NOT_SUPPORTED: u32 = 0xC000_00BB;
    pub const INVALID_LENGTH: u32 = 0xC001_0014;
    pub const INVALID_DATA: u32 = 0xC001_0015;
    pub const BUFFER_TOO_SHORT: u32 = 0xC001_0016;
    pub const MULTICAST_FULL: u32 = 0xC001_0009;
}

/// `NDIS_OBJECT_TYPE_DEFAULT` (`ntddndis.h`).
pub const OBJECT_TYPE_DEFAULT: u8 = 0x80;
/// `NDIS_OBJECT_TYPE_OFFLOAD`.
pub const OBJECT_TYPE_OFFLOAD: u8 = 0xA7;
/// Most multicast addresses the list holds (`OID_802_3_MAXIMUM_LIST_SIZE`).
pub const MAX_MULTICAST: usize = 32;
/// Link speed reported, bits per second. virtio-net says nothing about
/// speed without `VIRTIO_NET_F_SPEED_DUPLEX` (not negotiated by the core):
/// a paravirtual link runs at memory speed, and 10 Gbit/s is what the
/// stack's autotuning handles well.
pub const LINK_SPEED_BPS: u64 = 10_000_000_000;
/// `NDIS_MAC_OPTION_COPY_LOOKAHEAD_DATA` (0x1) `| TRANSFERS_NOT_PEND`
/// (0x4) `| NO_LOOPBACK` (0x8): indications may be read in place, sends
/// complete without pending on the medium, and NDIS loops back frames
/// itself (the device does not). Not `RECEIVE_SERIALIZED` (0x2).
pub const MAC_OPTIONS: u32 = 0x1 | 0x4 | 0x8;
/// `OID_GEN_DRIVER_VERSION`: the NDIS version the driver registers with
/// (6.0), major in the high byte.
pub const NDIS_VERSION: u16 = 0x0600;
/// `OID_GEN_VENDOR_DRIVER_VERSION`: major in the high 16 bits.
pub const DRIVER_VERSION: u32 = 0x0001_0000;
/// `OID_GEN_VENDOR_ID`: no IEEE OUI of our own, so `0xFFFFFF` with
/// the NIC's own vendor byte 0, as the OID's documentation allows.
pub const VENDOR_ID: u32 = 0x00FF_FFFF;
/// `OID_GEN_VENDOR_DESCRIPTION` (NUL-terminated ASCII).
pub const VENDOR_DESCRIPTION: &[u8] = b"pvdrivers virtio-net\0";

/// `NDIS_STATISTICS_FLAGS_VALID_*`: every counter of
/// `NDIS_STATISTICS_INFO` this miniport fills.
pub const SUPPORTED_STATISTICS: u32 = 0x1 // directed frames rcv
    | 0x2 // multicast frames rcv
    | 0x4 // broadcast frames rcv
    | 0x8 // bytes rcv
    | 0x10 // rcv discards
    | 0x20 // rcv error
    | 0x40 // directed frames xmit
    | 0x80 // multicast frames xmit
    | 0x100 // broadcast frames xmit
    | 0x200 // bytes xmit
    | 0x400 // xmit error
    | 0x8000 // xmit discards
    | 0x1_0000 // directed bytes rcv
    | 0x2_0000 // multicast bytes rcv
    | 0x4_0000 // broadcast bytes rcv
    | 0x8_0000 // directed bytes xmit
    | 0x10_0000 // multicast bytes xmit
    | 0x20_0000; // broadcast bytes xmit

/// `NDIS_SIZEOF_STATISTICS_INFO_REVISION_1`.
pub const STATISTICS_INFO_BYTES: usize = 0x98;
/// `NDIS_SIZEOF_LINK_STATE_REVISION_1`.
pub const LINK_STATE_BYTES: usize = 40;
/// `NDIS_SIZEOF_OFFLOAD_PARAMETERS_REVISION_1`.
pub const OFFLOAD_PARAMETERS_BYTES: usize = 20;

/// Why an OID request failed; the driver completes it with
/// [`OidError::ndis_status`] and `BytesNeeded` = [`OidError::bytes_needed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OidError {
    /// Caller: an OID this miniport does not answer (or not this way).
    NotSupported,
    /// Caller: the query's buffer is shorter than the answer.
    BufferTooShort {
        /// Bytes the answer needs.
        needed: usize,
    },
    /// Caller: the set's buffer is shorter than (or not a multiple of) the
    /// value's size.
    InvalidLength {
        /// Bytes the value needs.
        needed: usize,
    },
    /// Caller: a value out of range or asking for what the device cannot do.
    InvalidData,
    /// Caller: more multicast addresses than [`MAX_MULTICAST`].
    MulticastFull,
}

impl OidError {
    /// The `NDIS_STATUS` to complete the request with.
    pub fn ndis_status(&self) -> u32 {
        match self {
            Self::NotSupported => status::NOT_SUPPORTED,
            Self::BufferTooShort { .. } => status::BUFFER_TOO_SHORT,
            Self::InvalidLength { .. } => status::INVALID_LENGTH,
            Self::InvalidData => status::INVALID_DATA,
            Self::MulticastFull => status::MULTICAST_FULL,
        }
    }

    /// The request's `BytesNeeded`.
    pub fn bytes_needed(&self) -> usize {
        match self {
            Self::BufferTooShort { needed } | Self::InvalidLength { needed } => *needed,
            _ => 0,
        }
    }
}

impl core::fmt::Display for OidError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotSupported => f.write_str("OID not supported"),
            Self::BufferTooShort { needed } => write!(f, "buffer too short: {needed} bytes needed"),
            Self::InvalidLength { needed } => write!(f, "invalid length: {needed} bytes needed"),
            Self::InvalidData => f.write_str("invalid data"),
            Self::MulticastFull => f.write_str("multicast list full"),
        }
    }
}

/// What a successful set asks of the driver beyond storing the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetEffect {
    /// Nothing: the value is stored.
    None,
    /// The receive mode the device should be in changed: program it
    /// (`VIRTIO_NET_CTRL_RX` promiscuous / all-multicast, when offered;
    /// frames are filtered in software either way, see
    /// [`crate::nbl::accept`]).
    RxMode {
        /// Promiscuous.
        promisc: bool,
        /// Every multicast frame.
        allmulti: bool,
    },
    /// The checksum offloads in force changed: indicate
    /// `NDIS_STATUS_TASK_OFFLOAD_CURRENT_CONFIG` with
    /// [`Adapter::offload_bytes`].
    OffloadChanged,
}

/// A completed set: bytes consumed and what the driver must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetDone {
    /// `BytesRead`.
    pub read: usize,
    /// Follow-up.
    pub effect: SetEffect,
}

/// What a miniport adapter is, from NDIS' point of view: device facts
/// (fixed between resets), settings NDIS changes through sets, and
/// counters. Plain data; the driver owns one per adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adapter {
    /// MAC the device came with.
    pub permanent_mac: [u8; 6],
    /// MAC in use.
    pub current_mac: [u8; 6],
    /// MTU (payload bytes after the Ethernet header).
    pub mtu: u16,
    /// Link up.
    pub link_up: bool,
    /// Transmit slots (frames in flight at once).
    pub tx_slots: u16,
    /// Receive buffers.
    pub rx_slots: u16,
    /// What the device can offload.
    pub hw: OffloadConfig,
    /// What NDIS enabled (a subset of `hw`).
    pub offload: OffloadConfig,
    /// Per-class frame counters kept by the driver.
    pub counters: Counters,
    /// The core's counters, copied in by the driver before a query.
    pub core: Stats,
    packet_filter: u32,
    lookahead: u32,
    multicast: Vec<[u8; 6]>,
}

fn put(out: &mut [u8], bytes: &[u8]) -> Result<usize, OidError> {
    let dst = out.get_mut(..bytes.len()).ok_or(OidError::BufferTooShort {
        needed: bytes.len(),
    })?;
    dst.copy_from_slice(bytes);
    Ok(bytes.len())
}

fn put_u32(out: &mut [u8], v: u32) -> Result<usize, OidError> {
    put(out, &v.to_le_bytes())
}

/// NDIS' rule for 64-bit counters: 8 bytes if the buffer holds them, else
/// the low 32 bits if it holds 4.
fn put_counter(out: &mut [u8], v: u64) -> Result<usize, OidError> {
    if out.len() >= 8 {
        put(out, &v.to_le_bytes())
    } else {
        put(out, &(v as u32).to_le_bytes()).map_err(|_| OidError::BufferTooShort { needed: 8 })
    }
}

fn get_u32(input: &[u8]) -> Result<u32, OidError> {
    let b = input
        .get(..4)
        .ok_or(OidError::InvalidLength { needed: 4 })?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// `NDIS_OBJECT_HEADER` bytes.
pub fn object_header(kind: u8, revision: u8, size: usize) -> [u8; 4] {
    let s = (size as u16).to_le_bytes();
    [kind, revision, s[0], s[1]]
}

impl Adapter {
    /// A fresh adapter for a device with `info`: link as given, filter off
    /// (NDIS sets one before any receive), lookahead the whole frame, no
    /// multicast addresses, every offload the device has enabled.
    pub fn new(info: &pv_net::NetInfo, link_up: bool) -> Self {
        let hw = OffloadConfig::from_device(info.tx_csum, info.rx_csum);
        Self {
            permanent_mac: info.mac,
            current_mac: info.mac,
            mtu: info.mtu,
            link_up,
            tx_slots: info.tx_slots,
            rx_slots: info.rx_slots,
            hw,
            offload: hw,
            counters: Counters::default(),
            core: Stats::default(),
            packet_filter: 0,
            lookahead: u32::from(info.mtu),
            multicast: Vec::new(),
        }
    }

    /// The packet filter in force (`NDIS_PACKET_TYPE_*`).
    pub fn packet_filter(&self) -> u32 {
        self.packet_filter
    }

    /// The multicast list in force.
    pub fn multicast(&self) -> &[[u8; 6]] {
        &self.multicast
    }

    /// Bytes of the largest frame without FCS: the MTU plus the Ethernet
    /// header (`OID_GEN_MAXIMUM_TOTAL_SIZE`).
    pub fn max_total(&self) -> u32 {
        u32::from(self.mtu) + ETH_HLEN as u32
    }

    /// The receive mode the device should be in for the filter and list.
    pub fn rx_mode(&self) -> SetEffect {
        let f = self.packet_filter;
        SetEffect::RxMode {
            promisc: f & filter::PROMISCUOUS != 0,
            allmulti: f & filter::ALL_MULTICAST != 0
                || (f & filter::MULTICAST != 0 && !self.multicast.is_empty()),
        }
    }

    /// `NDIS_STATISTICS_INFO` (revision 1) from the driver's and the
    /// core's counters.
    pub fn statistics_bytes(&self) -> [u8; STATISTICS_INFO_BYTES] {
        let c = &self.counters;
        let mut b = [0u8; STATISTICS_INFO_BYTES];
        b[..4].copy_from_slice(&object_header(
            OBJECT_TYPE_DEFAULT,
            1,
            STATISTICS_INFO_BYTES,
        ));
        b[4..8].copy_from_slice(&SUPPORTED_STATISTICS.to_le_bytes());
        let rx_octets = c.rx_ucast.bytes + c.rx_mcast.bytes + c.rx_bcast.bytes;
        let tx_octets = c.tx_ucast.bytes + c.tx_mcast.bytes + c.tx_bcast.bytes;
        let fields: [u64; 18] = [
            c.rx_discards + self.core.rx_dropped(), // ifInDiscards
            self.core.rx_dropped(),                 // ifInErrors
            rx_octets,                              // ifHCInOctets
            c.rx_ucast.frames,
            c.rx_mcast.frames,
            c.rx_bcast.frames,
            tx_octets, // ifHCOutOctets
            c.tx_ucast.frames,
            c.tx_mcast.frames,
            c.tx_bcast.frames,
            c.tx_errors + self.core.tx_errors, // ifOutErrors
            c.tx_discards,                     // ifOutDiscards
            c.rx_ucast.bytes,
            c.rx_mcast.bytes,
            c.rx_bcast.bytes,
            c.tx_ucast.bytes,
            c.tx_mcast.bytes,
            c.tx_bcast.bytes,
        ];
        for (i, v) in fields.iter().enumerate() {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// `NDIS_LINK_STATE` (revision 1): connect state, full duplex, speed
    /// both ways, no pause, no auto-negotiation flags.
    pub fn link_state_bytes(&self) -> [u8; LINK_STATE_BYTES] {
        let mut b = [0u8; LINK_STATE_BYTES];
        b[..4].copy_from_slice(&object_header(OBJECT_TYPE_DEFAULT, 1, LINK_STATE_BYTES));
        // MediaConnectStateConnected 1 / Disconnected 2.
        let connect: u32 = if self.link_up { 1 } else { 2 };
        b[4..8].copy_from_slice(&connect.to_le_bytes());
        // MediaDuplexStateFull.
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        let speed = self.link_speed();
        b[0x10..0x18].copy_from_slice(&speed.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&speed.to_le_bytes());
        b
    }

    /// Record the link state the device reports now. Returns the
    /// `NDIS_LINK_STATE` to indicate (`NDIS_STATUS_LINK_STATE`) when it
    /// changed, `None` when it did not.
    pub fn observe_link(&mut self, up: bool) -> Option<[u8; LINK_STATE_BYTES]> {
        if up == self.link_up {
            return None;
        }
        self.link_up = up;
        Some(self.link_state_bytes())
    }

    /// Link speed in bits per second (0 while the link is down).
    pub fn link_speed(&self) -> u64 {
        if self.link_up {
            LINK_SPEED_BPS
        } else {
            0
        }
    }

    /// `NDIS_OFFLOAD` (revision 1) for the offloads in force.
    pub fn offload_bytes(&self) -> [u8; crate::nbl::OFFLOAD_BYTES] {
        self.offload.ndis_offload()
    }

    /// Answer a query into `out`. Returns `BytesWritten`.
    pub fn query(&self, oid: u32, out: &mut [u8]) -> Result<usize, OidError> {
        let c = &self.counters;
        match oid {
            OID_GEN_SUPPORTED_LIST => {
                let needed = SUPPORTED_OIDS.len() * 4;
                if out.len() < needed {
                    return Err(OidError::BufferTooShort { needed });
                }
                for (i, o) in SUPPORTED_OIDS.iter().enumerate() {
                    out[4 * i..4 * i + 4].copy_from_slice(&o.to_le_bytes());
                }
                Ok(needed)
            }
            // NdisHardwareStatusReady.
            OID_GEN_HARDWARE_STATUS => put_u32(out, 0),
            // NdisMedium802_3.
            OID_GEN_MEDIA_SUPPORTED | OID_GEN_MEDIA_IN_USE => put_u32(out, 0),
            // NdisPhysicalMediumUnspecified (a virtual NIC).
            OID_GEN_PHYSICAL_MEDIUM => put_u32(out, 0),
            OID_GEN_MAXIMUM_LOOKAHEAD | OID_GEN_MAXIMUM_FRAME_SIZE => {
                put_u32(out, u32::from(self.mtu))
            }
            OID_GEN_CURRENT_LOOKAHEAD => put_u32(out, self.lookahead),
            // In units of 100 bit/s.
            OID_GEN_LINK_SPEED => put_u32(
                out,
                u32::try_from(self.link_speed() / 100).unwrap_or(u32::MAX),
            ),
            OID_GEN_TRANSMIT_BUFFER_SPACE => {
                put_u32(out, u32::from(self.tx_slots) * self.max_total())
            }
            OID_GEN_RECEIVE_BUFFER_SPACE => {
                put_u32(out, u32::from(self.rx_slots) * self.max_total())
            }
            OID_GEN_TRANSMIT_BLOCK_SIZE
            | OID_GEN_RECEIVE_BLOCK_SIZE
            | OID_GEN_MAXIMUM_TOTAL_SIZE => put_u32(out, self.max_total()),
            OID_GEN_VENDOR_ID => put_u32(out, VENDOR_ID),
            OID_GEN_VENDOR_DESCRIPTION => put(out, VENDOR_DESCRIPTION),
            OID_GEN_CURRENT_PACKET_FILTER => put_u32(out, self.packet_filter),
            OID_GEN_DRIVER_VERSION => put(out, &NDIS_VERSION.to_le_bytes()),
            OID_GEN_VENDOR_DRIVER_VERSION => put_u32(out, DRIVER_VERSION),
            OID_GEN_MAC_OPTIONS => put_u32(out, MAC_OPTIONS),
            // NdisMediaStateConnected 0 / Disconnected 1.
            OID_GEN_MEDIA_CONNECT_STATUS => put_u32(out, u32::from(!self.link_up)),
            OID_GEN_MAXIMUM_SEND_PACKETS => put_u32(out, u32::from(self.tx_slots)),
            OID_GEN_LINK_STATE => put(out, &self.link_state_bytes()),
            OID_GEN_STATISTICS => put(out, &self.statistics_bytes()),
            OID_GEN_XMIT_OK => put_counter(
                out,
                c.tx_ucast.frames + c.tx_mcast.frames + c.tx_bcast.frames,
            ),
            OID_GEN_RCV_OK => put_counter(
                out,
                c.rx_ucast.frames + c.rx_mcast.frames + c.rx_bcast.frames,
            ),
            OID_GEN_XMIT_ERROR => put_counter(out, c.tx_errors + self.core.tx_errors),
            OID_GEN_RCV_ERROR => put_counter(out, self.core.rx_dropped()),
            OID_GEN_RCV_NO_BUFFER => put_counter(out, c.rx_discards),
            OID_802_3_PERMANENT_ADDRESS => put(out, &self.permanent_mac),
            OID_802_3_CURRENT_ADDRESS => put(out, &self.current_mac),
            OID_802_3_MULTICAST_LIST => {
                let needed = self.multicast.len() * 6;
                if out.len() < needed {
                    return Err(OidError::BufferTooShort { needed });
                }
                for (i, m) in self.multicast.iter().enumerate() {
                    out[6 * i..6 * i + 6].copy_from_slice(m);
                }
                Ok(needed)
            }
            OID_802_3_MAXIMUM_LIST_SIZE => put_u32(out, MAX_MULTICAST as u32),
            OID_802_3_RCV_ERROR_ALIGNMENT
            | OID_802_3_XMIT_ONE_COLLISION
            | OID_802_3_XMIT_MORE_COLLISIONS => put_counter(out, 0),
            _ => Err(OidError::NotSupported),
        }
    }

    /// Apply a set from `input`. On error nothing changed.
    pub fn set(&mut self, oid: u32, input: &[u8]) -> Result<SetDone, OidError> {
        match oid {
            OID_GEN_CURRENT_PACKET_FILTER => {
                let v = get_u32(input)?;
                if v & !filter::SUPPORTED != 0 {
                    return Err(OidError::NotSupported);
                }
                self.packet_filter = v;
                Ok(SetDone {
                    read: 4,
                    effect: self.rx_mode(),
                })
            }
            OID_GEN_CURRENT_LOOKAHEAD => {
                let v = get_u32(input)?;
                if v > u32::from(self.mtu) {
                    return Err(OidError::InvalidData);
                }
                self.lookahead = v;
                Ok(SetDone {
                    read: 4,
                    effect: SetEffect::None,
                })
            }
            OID_802_3_MULTICAST_LIST => {
                if !input.len().is_multiple_of(6) {
                    return Err(OidError::InvalidLength {
                        needed: input.len().div_ceil(6) * 6,
                    });
                }
                let n = input.len() / 6;
                if n > MAX_MULTICAST {
                    return Err(OidError::MulticastFull);
                }
                let mut list = Vec::with_capacity(n);
                for c in input.chunks_exact(6) {
                    let mut a = [0u8; 6];
                    a.copy_from_slice(c);
                    if a[0] & 1 == 0 {
                        return Err(OidError::InvalidData);
                    }
                    list.push(a);
                }
                self.multicast = list;
                Ok(SetDone {
                    read: input.len(),
                    effect: self.rx_mode(),
                })
            }
            OID_TCP_OFFLOAD_PARAMETERS => {
                let next = self.offload.apply_parameters(&self.hw, input)?;
                let changed = next != self.offload;
                self.offload = next;
                Ok(SetDone {
                    read: OFFLOAD_PARAMETERS_BYTES,
                    effect: if changed {
                        SetEffect::OffloadChanged
                    } else {
                        SetEffect::None
                    },
                })
            }
            _ => Err(OidError::NotSupported),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbl::{FrameCount, OFFLOAD_BYTES};

    fn info() -> pv_net::NetInfo {
        pv_net::NetInfo {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            mtu: 1500,
            tx_csum: true,
            rx_csum: true,
            link_status: true,
            rx_slots: 256,
            tx_slots: 128,
            event_idx: true,
        }
    }

    fn q(a: &Adapter, oid: u32) -> Vec<u8> {
        let mut b = [0u8; 512];
        let n = a.query(oid, &mut b).expect("query");
        b[..n].to_vec()
    }

    fn u32_of(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[off..off + 8]);
        u64::from_le_bytes(a)
    }

    #[test]
    fn every_supported_oid_is_answered_and_no_other() {
        let mut a = Adapter::new(&info(), true);
        let list = q(&a, OID_GEN_SUPPORTED_LIST);
        assert_eq!(list.len(), SUPPORTED_OIDS.len() * 4);
        for (i, o) in SUPPORTED_OIDS.iter().enumerate() {
            assert_eq!(u32_of(&list[4 * i..]), *o);
            let mut b = [0u8; 512];
            let queried = a.query(*o, &mut b);
            let set = a.set(*o, &b[..0]);
            assert!(
                queried.is_ok() || set != Err(OidError::NotSupported),
                "{o:#x} is listed but neither queried nor set"
            );
        }
        let mut b = [0u8; 64];
        assert_eq!(a.query(0x0001_0205, &mut b), Err(OidError::NotSupported));
        assert_eq!(a.set(0x0001_0205, &b), Err(OidError::NotSupported));
    }

    #[test]
    fn sizes_mac_and_link() {
        let mut a = Adapter::new(&info(), true);
        assert_eq!(u32_of(&q(&a, OID_GEN_MAXIMUM_FRAME_SIZE)), 1500);
        assert_eq!(u32_of(&q(&a, OID_GEN_MAXIMUM_TOTAL_SIZE)), 1514);
        assert_eq!(u32_of(&q(&a, OID_GEN_TRANSMIT_BUFFER_SPACE)), 128 * 1514);
        assert_eq!(u32_of(&q(&a, OID_GEN_MAXIMUM_SEND_PACKETS)), 128);
        assert_eq!(q(&a, OID_802_3_CURRENT_ADDRESS), info().mac);
        assert_eq!(q(&a, OID_802_3_PERMANENT_ADDRESS), info().mac);
        assert_eq!(u32_of(&q(&a, OID_GEN_LINK_SPEED)), 100_000_000);
        assert_eq!(u32_of(&q(&a, OID_GEN_MEDIA_CONNECT_STATUS)), 0);
        let ls = q(&a, OID_GEN_LINK_STATE);
        assert_eq!(&ls[..4], &[0x80, 1, 40, 0]);
        assert_eq!(u32_of(&ls[4..]), 1);
        assert_eq!(u64_at(&ls, 0x10), LINK_SPEED_BPS);
        a.link_up = false;
        let ls = q(&a, OID_GEN_LINK_STATE);
        assert_eq!(u32_of(&ls[4..]), 2);
        assert_eq!(u64_at(&ls, 0x10), 0);
        assert_eq!(u32_of(&q(&a, OID_GEN_MEDIA_CONNECT_STATUS)), 1);
        assert_eq!(q(&a, OID_GEN_VENDOR_DESCRIPTION), VENDOR_DESCRIPTION);
        assert_eq!(q(&a, OID_GEN_DRIVER_VERSION), [0x00, 0x06]);
        assert_eq!(u32_of(&q(&a, OID_GEN_MAC_OPTIONS)), 0xD);
    }

    #[test]
    fn link_changes_are_indicated_once() {
        let mut a = Adapter::new(&info(), true);
        assert_eq!(a.observe_link(true), None);
        let down = a.observe_link(false).expect("went down");
        assert_eq!(u32_of(&down[4..]), 2);
        assert_eq!(u64_at(&down, 0x10), 0);
        assert_eq!(a.observe_link(false), None);
        let up = a.observe_link(true).expect("came up");
        assert_eq!(u32_of(&up[4..]), 1);
        assert_eq!(u64_at(&up, 0x18), LINK_SPEED_BPS);
    }

    #[test]
    fn short_buffers_name_the_size_needed() {
        let a = Adapter::new(&info(), true);
        let mut b = [0u8; 3];
        assert_eq!(
            a.query(OID_GEN_MAXIMUM_FRAME_SIZE, &mut b),
            Err(OidError::BufferTooShort { needed: 4 })
        );
        let mut b = [0u8; 100];
        let e = a.query(OID_GEN_STATISTICS, &mut b).expect_err("too short");
        assert_eq!(e.bytes_needed(), STATISTICS_INFO_BYTES);
        assert_eq!(e.ndis_status(), status::BUFFER_TOO_SHORT);
        let e = a
            .query(OID_GEN_SUPPORTED_LIST, &mut b)
            .expect_err("too short");
        assert_eq!(e.bytes_needed(), SUPPORTED_OIDS.len() * 4);
        let mut b = [0u8; 5];
        assert_eq!(
            a.query(OID_802_3_CURRENT_ADDRESS, &mut b),
            Err(OidError::BufferTooShort { needed: 6 })
        );
    }

    #[test]
    fn counters_are_64_bit_or_32_bit_by_buffer() {
        let mut a = Adapter::new(&info(), true);
        a.counters.tx_ucast = FrameCount {
            frames: (1 << 32) + 5,
            bytes: 0,
        };
        let mut b8 = [0u8; 8];
        assert_eq!(a.query(OID_GEN_XMIT_OK, &mut b8), Ok(8));
        assert_eq!(u64::from_le_bytes(b8), (1 << 32) + 5);
        let mut b4 = [0u8; 4];
        assert_eq!(a.query(OID_GEN_XMIT_OK, &mut b4), Ok(4));
        assert_eq!(u32::from_le_bytes(b4), 5);
        let mut b2 = [0u8; 2];
        assert_eq!(
            a.query(OID_GEN_XMIT_OK, &mut b2),
            Err(OidError::BufferTooShort { needed: 8 })
        );
    }

    #[test]
    fn statistics_fields_land_at_their_offsets() {
        let mut a = Adapter::new(&info(), true);
        a.counters.rx_ucast = FrameCount {
            frames: 3,
            bytes: 300,
        };
        a.counters.rx_bcast = FrameCount {
            frames: 1,
            bytes: 60,
        };
        a.counters.tx_mcast = FrameCount {
            frames: 2,
            bytes: 128,
        };
        a.counters.rx_discards = 7;
        a.core.rx_bad_len = 4;
        a.core.tx_errors = 9;
        let s = q(&a, OID_GEN_STATISTICS);
        assert_eq!(s.len(), 0x98);
        assert_eq!(&s[..4], &[0x80, 1, 0x98, 0]);
        assert_eq!(u32_of(&s[4..]), SUPPORTED_STATISTICS);
        assert_eq!(u64_at(&s, 0x08), 11, "ifInDiscards");
        assert_eq!(u64_at(&s, 0x10), 4, "ifInErrors");
        assert_eq!(u64_at(&s, 0x18), 360, "ifHCInOctets");
        assert_eq!(u64_at(&s, 0x20), 3, "ifHCInUcastPkts");
        assert_eq!(u64_at(&s, 0x30), 1, "ifHCInBroadcastPkts");
        assert_eq!(u64_at(&s, 0x38), 128, "ifHCOutOctets");
        assert_eq!(u64_at(&s, 0x48), 2, "ifHCOutMulticastPkts");
        assert_eq!(u64_at(&s, 0x58), 9, "ifOutErrors");
        assert_eq!(u64_at(&s, 0x68), 300, "ifHCInUcastOctets");
        assert_eq!(u64_at(&s, 0x78), 60, "ifHCInBroadcastOctets");
        assert_eq!(u64_at(&s, 0x88), 128, "ifHCOutMulticastOctets");
    }

    #[test]
    fn packet_filter_set_and_receive_mode() {
        let mut a = Adapter::new(&info(), true);
        assert_eq!(u32_of(&q(&a, OID_GEN_CURRENT_PACKET_FILTER)), 0);
        let v = filter::DIRECTED | filter::BROADCAST;
        let done = a
            .set(OID_GEN_CURRENT_PACKET_FILTER, &v.to_le_bytes())
            .expect("set");
        assert_eq!(done.read, 4);
        assert_eq!(
            done.effect,
            SetEffect::RxMode {
                promisc: false,
                allmulti: false
            }
        );
        assert_eq!(u32_of(&q(&a, OID_GEN_CURRENT_PACKET_FILTER)), v);
        let done = a
            .set(
                OID_GEN_CURRENT_PACKET_FILTER,
                &filter::PROMISCUOUS.to_le_bytes(),
            )
            .expect("set");
        assert_eq!(
            done.effect,
            SetEffect::RxMode {
                promisc: true,
                allmulti: false
            }
        );
        // A bit we do not offer (NDIS_PACKET_TYPE_SOURCE_ROUTING 0x10).
        assert_eq!(
            a.set(OID_GEN_CURRENT_PACKET_FILTER, &0x10u32.to_le_bytes()),
            Err(OidError::NotSupported)
        );
        assert_eq!(a.packet_filter(), filter::PROMISCUOUS);
        assert_eq!(
            a.set(OID_GEN_CURRENT_PACKET_FILTER, &[1, 0]),
            Err(OidError::InvalidLength { needed: 4 })
        );
    }

    #[test]
    fn multicast_list_set_query_and_refusals() {
        let mut a = Adapter::new(&info(), true);
        a.set(
            OID_GEN_CURRENT_PACKET_FILTER,
            &filter::MULTICAST.to_le_bytes(),
        )
        .expect("filter");
        let list = [0x01, 0, 0x5e, 0, 0, 1, 0x33, 0x33, 0, 0, 0, 1];
        let done = a.set(OID_802_3_MULTICAST_LIST, &list).expect("set");
        assert_eq!(done.read, 12);
        assert_eq!(
            done.effect,
            SetEffect::RxMode {
                promisc: false,
                allmulti: true
            }
        );
        assert_eq!(q(&a, OID_802_3_MULTICAST_LIST), list);
        assert_eq!(
            a.set(OID_802_3_MULTICAST_LIST, &list[..7]),
            Err(OidError::InvalidLength { needed: 12 })
        );
        // A unicast address on the list.
        let bad = [0x02, 0, 0, 0, 0, 1];
        assert_eq!(
            a.set(OID_802_3_MULTICAST_LIST, &bad),
            Err(OidError::InvalidData)
        );
        let full = [1u8; 6 * (MAX_MULTICAST + 1)];
        assert_eq!(
            a.set(OID_802_3_MULTICAST_LIST, &full),
            Err(OidError::MulticastFull)
        );
        // Refusals changed nothing.
        assert_eq!(a.multicast().len(), 2);
        let done = a.set(OID_802_3_MULTICAST_LIST, &[]).expect("clear");
        assert_eq!(
            done.effect,
            SetEffect::RxMode {
                promisc: false,
                allmulti: false
            }
        );
    }

    #[test]
    fn lookahead_bounded_by_mtu() {
        let mut a = Adapter::new(&info(), true);
        assert!(a
            .set(OID_GEN_CURRENT_LOOKAHEAD, &256u32.to_le_bytes())
            .is_ok());
        assert_eq!(u32_of(&q(&a, OID_GEN_CURRENT_LOOKAHEAD)), 256);
        assert_eq!(
            a.set(OID_GEN_CURRENT_LOOKAHEAD, &1501u32.to_le_bytes()),
            Err(OidError::InvalidData)
        );
    }

    fn offload_params(v4tcp: u8, v4udp: u8, v6tcp: u8, v6udp: u8) -> [u8; 20] {
        let mut p = [0u8; 20];
        p[..4].copy_from_slice(&object_header(OBJECT_TYPE_DEFAULT, 1, 20));
        p[5] = v4tcp;
        p[6] = v4udp;
        p[7] = v6tcp;
        p[8] = v6udp;
        p
    }

    #[test]
    fn offload_parameters_turn_checksums_off_and_on() {
        let mut a = Adapter::new(&info(), true);
        assert_eq!(a.offload, a.hw);
        // TCP/IPv4: TX and RX disabled; the rest unchanged.
        let done = a
            .set(OID_TCP_OFFLOAD_PARAMETERS, &offload_params(1, 0, 0, 0))
            .expect("set");
        assert_eq!(done.effect, SetEffect::OffloadChanged);
        assert!(!a.offload.v4_tcp.tx && !a.offload.v4_tcp.rx);
        assert!(a.offload.v4_udp.tx && a.offload.v6_tcp.rx);
        // Same again: no change to indicate.
        let done = a
            .set(OID_TCP_OFFLOAD_PARAMETERS, &offload_params(1, 0, 0, 0))
            .expect("set");
        assert_eq!(done.effect, SetEffect::None);
        // RX only for UDP/IPv6.
        a.set(OID_TCP_OFFLOAD_PARAMETERS, &offload_params(0, 0, 0, 3))
            .expect("set");
        assert!(a.offload.v6_udp.rx && !a.offload.v6_udp.tx);
        let b: [u8; OFFLOAD_BYTES] = a.offload_bytes();
        assert_eq!(&b[..4], &[OBJECT_TYPE_OFFLOAD, 1, 112, 0]);
    }

    #[test]
    fn offload_parameters_refuse_what_the_device_lacks() {
        let no_csum = pv_net::NetInfo {
            tx_csum: false,
            rx_csum: false,
            ..info()
        };
        let mut a = Adapter::new(&no_csum, true);
        assert_eq!(
            a.set(OID_TCP_OFFLOAD_PARAMETERS, &offload_params(4, 0, 0, 0)),
            Err(OidError::InvalidData)
        );
        // Disabling is always fine.
        assert!(a
            .set(OID_TCP_OFFLOAD_PARAMETERS, &offload_params(1, 1, 1, 1))
            .is_ok());
        let mut a = Adapter::new(&info(), true);
        // IPv4 header checksum, LSOv1, LSOv2 enabled: refused.
        for at in [4usize, 9, 11] {
            let mut p = offload_params(0, 0, 0, 0);
            p[at] = if at == 4 { 4 } else { 2 };
            assert_eq!(
                a.set(OID_TCP_OFFLOAD_PARAMETERS, &p),
                Err(OidError::InvalidData),
                "byte {at}"
            );
        }
        // A value out of range, a wrong header, a short buffer.
        assert_eq!(
            a.set(OID_TCP_OFFLOAD_PARAMETERS, &offload_params(5, 0, 0, 0)),
            Err(OidError::InvalidData)
        );
        let mut p = offload_params(0, 0, 0, 0);
        p[0] = 0x81;
        assert_eq!(
            a.set(OID_TCP_OFFLOAD_PARAMETERS, &p),
            Err(OidError::InvalidData)
        );
        assert_eq!(
            a.set(OID_TCP_OFFLOAD_PARAMETERS, &p[..12]),
            Err(OidError::InvalidLength { needed: 20 })
        );
        assert_eq!(a.offload, a.hw);
    }
}
