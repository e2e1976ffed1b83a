//! The Windows NDIS miniport's network logic, decided in host-testable
//! `no_std` code: the driver only translates between NDIS and this crate,
//! and between this crate and the network core ([`pv_net`]).
//!
//! # What is decided here
//!
//! - [`oid`]: every OID request the miniport answers (general
//!   characteristics, link state and speed, MAC, MTU and frame sizes, the
//!   packet filter and multicast list, statistics, checksum-offload
//!   parameters) from a plain [`Adapter`], with the NDIS structures
//!   encoded as bytes at their WDK offsets; what a set asks of the device
//!   ([`SetEffect`]).
//! - [`nbl`]: NET_BUFFER → frame (the MDL pieces to copy, frame-size and
//!   checksum-request checks, the core's [`pv_net::TxCsum`]) and frame →
//!   indication (packet filter, receive checksum word, completing partial
//!   checksums), per-class counters, the checksum-offload capabilities.
//!
//! # What it refuses
//!
//! No OS types, no FFI. The driver that uses it is `pv-net-windows-driver`
//! (`driver/`, Windows only); see README.md.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod nbl;
pub mod oid;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use nbl::{
    accept, gather, rx_checksum_info, tx_csum, Counters, OffloadConfig, Piece, TxReject,
};
pub use oid::{Adapter, OidError, SetDone, SetEffect};
