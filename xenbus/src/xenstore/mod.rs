//! Xenstore: the wire codec, the guest ring page, a client over either the
//! daemon's unix socket or the ring, and the xenbus state helper.
//!
//! Layering, bottom up:
//! - [`wire`]: headers, message types, request encoders, reply decoders,
//!   incremental framing of untrusted bytes, typed errno mapping.
//! - [`ring`]: the `xenstore_domain_interface` page (`no_std`, the only
//!   `unsafe` here: the shared-memory edge).
//! - [`client`]: one request at a time, replies matched by `req_id`, watch
//!   events queued, transactions rerun on `EAGAIN`; generic over a
//!   [`client::Transport`]: [`client::RingTransport`] (`no_std`) or
//!   `unix::UnixTransport` (`std`).
//! - [`state`]: xenbus device states, the frontend/backend handshake helper
//!   built on watches, and the guest's `control/shutdown` watcher.
//!
//! What it refuses: payloads over 4096 bytes (the daemon drops connections
//! for those), invalid or over-long paths, and any malformed bytes from the
//! daemon (the client is then poisoned rather than resynchronised).
//!
//! Proof against real peers (`tests/xenstore_xenstored.rs`): Debian's C
//! `xenstored` 4.17 (package `xen-utils-4.17`) runs in normal mode under an
//! `LD_PRELOAD` fixture (`tests/fixtures/xenstored_preload.c`, built with
//! `cc` at test time against `libxen-dev`'s headers) that stands in for its
//! hypervisor calls; the C tools of `xenstore-utils` are a second peer. A
//! guest domain is played by mapping the file the fixture uses as the
//! domain's ring page, so [`client::RingTransport`] talks to the real
//! daemon too. In-process fakes for tests and fuzzers are in `testing`
//! (`test-utils` feature).

pub mod client;
#[cfg(feature = "xenstored-fixture")]
pub mod daemon;
pub mod ring;
pub mod state;
#[cfg(feature = "test-utils")]
pub mod testing;
#[cfg(feature = "std")]
pub mod unix;
pub mod wire;

pub use client::{
    Client, Error, RingEvents, RingTransport, Transaction, Transport, TransportError,
};
pub use state::{ShutdownRequest, ShutdownWatcher, XenbusEndpoint, XenbusState};
#[cfg(feature = "std")]
pub use unix::{UnixClient, UnixTransport};
pub use wire::{Access, Perm, WatchEvent, XsErrno};
