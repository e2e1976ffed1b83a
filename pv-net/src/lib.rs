//! Network frontend core for pvdrivers.
//!
//! Transport-neutral protocol logic for a paravirtual NIC over virtio-net
//! queues ([`virtio`]) and Xen netif rings ([`xen`]), behind one API
//! ([`NetFrontend`]). `no_std` + `alloc`: the same code serves the Linux
//! guest runtime (TAP) and the Windows NDIS glue; the OS glue only provides
//! DMA ([`virtio_drivers::Hal`]) and a transport, or the Xen platform traits.
//!
//! # What it is for and what it refuses
//!
//! - Send Ethernet frames with an optional checksum-offload request
//!   ([`TxCsum`]; done in software when the device cannot), receive frames
//!   with their offload flags ([`RxFrame`]), MAC, MTU, link state.
//! - Latency first: frames are copied into frontend-owned buffers (no page
//!   pinning per packet), RX buffers are refilled by a low-water policy with
//!   one kick per refill batch, and notifications are suppressed both ways
//!   (EVENT_IDX / NO_NOTIFY, Xen event indices) with the re-check after
//!   re-enabling interrupts that prevents lost wake-ups.
//! - The device is untrusted. Every completion is copied once and validated:
//!   ids, lengths, header flags, `num_buffers`, Xen slot chains and
//!   statuses. A bad packet is dropped and counted ([`Stats`]); a device
//!   that breaks the rings (unknown or duplicate ids, indices run ahead)
//!   stops the frontend until [`NetFrontend::reset`]. Nothing it writes makes
//!   this code panic, loop, or hand out another buffer's bytes.
//! - Refused: GSO/TSO on transmit, guest TSO/LRO on receive (not negotiated;
//!   a Xen GSO extra slot is reported, not acted on), multiqueue, packed rings.
//!
//! # Driving it (what a runtime does)
//!
//! ```text
//! let mut nic = VirtioNet::<Hal, PciTransport>::new(transport, cfg)?;
//! loop {
//!     nic.poll_rx(budget, &mut |frame| tap.write(frame.data))?;   // refills
//!     nic.poll_tx()?;                                              // reclaims
//!     while let Some(f) = tap.read() { nic.queue_tx(f, None)?; }
//!     nic.flush_tx()?;                               // at most one kick
//!     if idle long enough {
//!         if !nic.enable_interrupts()? { wait for IRQ / event channel }
//!         nic.disable_interrupts();                  // back to polling
//!     }
//! }
//! ```
//!
//! Buffers come from the frontend: RX and TX buffers are allocated once per
//! queue slot at start (and at reset) and never change hands. A received
//! frame is lent to the callback for its duration only; the runtime copies
//! it out (into the TAP fd). `queue_tx` copies the caller's frame in. On a
//! fault ([`NetFrontend::fault`]) the runtime calls [`NetFrontend::reset`]
//! (virtio: device reset and re-init; Xen: new rings, then the glue re-runs
//! the xenbus handshake with the new keys).
//!
//! Modules: [`frontend`] (the API), [`virtio`], [`xen`], [`csum`] (software
//! checksum), and behind `test-utils` the fakes of the other side
//! (`testing`).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod buf;
pub mod csum;
pub mod error;
pub mod frontend;
pub mod gso;
pub mod tap_hdr;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod virtio;
pub mod xen;

pub use error::NetError;
pub use frontend::{
    Gso, NetFrontend, NetInfo, RxCsum, RxFrame, RxRefill, Stats, TxCsum, ETH_HLEN, MAX_MTU, MIN_MTU,
};
