//! The xenstore ring page (`struct xenstore_domain_interface` in
//! `xen/io/xs_wire.h`, `docs/misc/xenstore-ring.txt`).
//!
//! One page shared by a guest and the xenstore daemon holds two 1024-byte
//! byte rings: `req` (guest produces, daemon consumes) and `rsp` (daemon
//! produces, guest consumes). Each has a consumer and a producer index: `u32`
//! byte counters that run free modulo 2^32 and are masked with 1023 to find
//! the offset, so a message may straddle the end of the buffer. There is no
//! framing at this level; the xenstore messages are a byte stream on top.
//!
//! Limits, as in `ring.h`: nothing here notifies or waits (the caller owns
//! the event channel) and there are no interlocks. Each side keeps a private
//! copy of the index it owns and never reads it back from the page; the
//! peer's index is read once per operation and validated: a producer more
//! than 1024 bytes ahead of our consumer, or a consumer that passed our
//! producer, is a [`RingError`] (a peer fault), and the ring is left
//! untouched so the caller can stop or reset it.

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

/// Size of each byte ring (`XENSTORE_RING_SIZE`).
pub const RING_SIZE: usize = 1024;

/// `XENSTORE_SERVER_FEATURE_RECONNECTION`.
pub const SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `XENSTORE_SERVER_FEATURE_ERROR`.
pub const SERVER_FEATURE_ERROR: u32 = 2;
/// `connection` value: steady state.
pub const CONNECTED: u32 = 0;
/// `connection` value: reconnect in progress.
pub const RECONNECT: u32 = 1;

/// Byte offsets of the fields in `struct xenstore_domain_interface`.
pub mod offset {
    /// `char req[1024]`.
    pub const REQ: usize = 0;
    /// `char rsp[1024]`.
    pub const RSP: usize = 1024;
    /// `XENSTORE_RING_IDX req_cons`.
    pub const REQ_CONS: usize = 2048;
    /// `XENSTORE_RING_IDX req_prod`.
    pub const REQ_PROD: usize = 2052;
    /// `XENSTORE_RING_IDX rsp_cons`.
    pub const RSP_CONS: usize = 2056;
    /// `XENSTORE_RING_IDX rsp_prod`.
    pub const RSP_PROD: usize = 2060;
    /// `uint32_t server_features`.
    pub const SERVER_FEATURES: usize = 2064;
    /// `uint32_t connection`.
    pub const CONNECTION: usize = 2068;
    /// `uint32_t error`.
    pub const ERROR: usize = 2072;
    /// `sizeof(struct xenstore_domain_interface)`.
    pub const SIZE: usize = 2076;
}

/// The peer wrote indices that cannot be right. The operation did nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The peer's producer index is more than a ring ahead of our consumer
    /// (or behind it).
    ProducerOverrun {
        /// The producer index the peer wrote.
        prod: u32,
        /// Our consumer index.
        cons: u32,
    },
    /// The peer's consumer index is ahead of our producer or more than a
    /// ring behind it.
    ConsumerOverrun {
        /// Our producer index.
        prod: u32,
        /// The consumer index the peer wrote.
        cons: u32,
    },
}

impl RingError {
    /// Always true: every ring error is the other side's fault.
    pub fn is_peer_fault(&self) -> bool {
        true
    }
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::ProducerOverrun { prod, cons } => write!(
                f,
                "peer producer index {prod:#x} is not within a ring of our consumer {cons:#x}"
            ),
            RingError::ConsumerOverrun { prod, cons } => write!(
                f,
                "peer consumer index {cons:#x} is not within a ring behind our producer {prod:#x}"
            ),
        }
    }
}

/// Which end of the page this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The guest (client): writes `req`, reads `rsp`.
    Guest,
    /// The xenstore daemon: reads `req`, writes `rsp`.
    Server,
}

/// One end of a xenstore ring page.
#[derive(Debug)]
pub struct XenstoreRing {
    page: NonNull<u8>,
    side: Side,
    /// Private copy of the producer index we own (never re-read).
    prod: u32,
    /// Private copy of the consumer index we own (never re-read).
    cons: u32,
}

// SAFETY: `XenstoreRing` only holds a pointer to shared memory that the
// constructor's contract says stays valid and is only accessed through
// atomics and volatile byte copies; moving the handle to another thread does
// not change that.
unsafe impl Send for XenstoreRing {}

impl XenstoreRing {
    /// Attaches to a ring page, taking the current indices of our side as the
    /// starting point (they may be anything: the counters run free).
    ///
    /// # Safety
    /// `page` must point to at least [`offset::SIZE`] bytes, 4-byte aligned,
    /// that stay mapped and writable for the life of the returned value, and
    /// that nobody but this value and the peer accesses while it lives (at
    /// most one `XenstoreRing` per side). The peer may write anything at any
    /// time: this type never trusts the contents.
    pub unsafe fn attach(page: NonNull<u8>, side: Side) -> Self {
        let mut ring = XenstoreRing {
            page,
            side,
            prod: 0,
            cons: 0,
        };
        let (prod_off, cons_off) = match side {
            Side::Guest => (offset::REQ_PROD, offset::RSP_CONS),
            Side::Server => (offset::RSP_PROD, offset::REQ_CONS),
        };
        ring.prod = ring.index(prod_off).load(Ordering::Acquire);
        ring.cons = ring.index(cons_off).load(Ordering::Acquire);
        ring
    }

    /// Initialises a fresh page (all indices at `start`, features, connected,
    /// no error) and attaches as `side`. A test or a daemon does this; a
    /// guest attaches to what the toolstack set up.
    ///
    /// # Safety
    /// As for [`XenstoreRing::attach`], and the peer must not be using the
    /// page yet.
    pub unsafe fn init(page: NonNull<u8>, side: Side, start: u32, server_features: u32) -> Self {
        // SAFETY: the caller guarantees the page contract of `attach`.
        let ring = unsafe { XenstoreRing::attach(page, side) };
        for off in [
            offset::REQ_CONS,
            offset::REQ_PROD,
            offset::RSP_CONS,
            offset::RSP_PROD,
        ] {
            ring.index(off).store(start, Ordering::Relaxed);
        }
        ring.index(offset::SERVER_FEATURES)
            .store(server_features, Ordering::Relaxed);
        ring.index(offset::CONNECTION)
            .store(CONNECTED, Ordering::Relaxed);
        ring.index(offset::ERROR).store(0, Ordering::Release);
        XenstoreRing {
            page,
            side,
            prod: start,
            cons: start,
        }
    }

    fn index(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off & 3 == 0 && off + 4 <= offset::SIZE);
        // SAFETY: `attach`'s contract: the page is at least `offset::SIZE`
        // bytes, 4-byte aligned and valid for our lifetime; `off` is one of
        // the `offset` constants (in bounds, 4-aligned). The peer accesses
        // the same word concurrently, so it is only ever used as an atomic.
        unsafe { AtomicU32::from_ptr(self.page.as_ptr().wrapping_add(off).cast::<u32>()) }
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The server's feature bits (`server_features`).
    pub fn server_features(&self) -> u32 {
        self.index(offset::SERVER_FEATURES).load(Ordering::Acquire)
    }

    /// The `connection` field (`CONNECTED` or `RECONNECT`).
    pub fn connection(&self) -> u32 {
        self.index(offset::CONNECTION).load(Ordering::Acquire)
    }

    /// The `error` field (`XENSTORE_ERROR_*`).
    pub fn error(&self) -> u32 {
        self.index(offset::ERROR).load(Ordering::Acquire)
    }

    /// Sets the `error` field (server side reports a peer fault this way).
    pub fn set_error(&self, error: u32) {
        self.index(offset::ERROR).store(error, Ordering::Release);
    }

    /// Guest: asks the daemon to reset the ring (`docs/misc/xenstore-ring.txt`,
    /// needs [`SERVER_FEATURE_RECONNECTION`]): sets `connection` to
    /// `RECONNECT`. The caller then notifies and polls
    /// [`XenstoreRing::reconnect_done`]. Everything in flight is lost, and
    /// the daemon forgets this connection's watches and transactions.
    pub fn begin_reconnect(&mut self) {
        // Release: nothing of ours to order, but keep the store ordered after
        // any bytes we produced earlier so the daemon discards them all.
        self.index(offset::CONNECTION)
            .store(RECONNECT, Ordering::Release);
    }

    /// Guest: true once the daemon finished a reconnect (it reset all four
    /// indices to 0 and set `connection` back to `CONNECTED`); our private
    /// indices are then reset to 0 as well.
    pub fn reconnect_done(&mut self) -> bool {
        // Acquire: the daemon reset the indices before setting CONNECTED.
        if self.index(offset::CONNECTION).load(Ordering::Acquire) != CONNECTED {
            return false;
        }
        self.prod = 0;
        self.cons = 0;
        true
    }

    /// Server: if the guest asked for a reconnect, discards everything,
    /// resets the indices to 0 and sets `connection` back to `CONNECTED`.
    /// Returns whether it did (the caller then drops the connection's
    /// watches and transactions and notifies the guest).
    pub fn serve_reconnect(&mut self) -> bool {
        if self.index(offset::CONNECTION).load(Ordering::Acquire) != RECONNECT {
            return false;
        }
        for off in [
            offset::REQ_CONS,
            offset::REQ_PROD,
            offset::RSP_CONS,
            offset::RSP_PROD,
        ] {
            self.index(off).store(0, Ordering::Relaxed);
        }
        self.prod = 0;
        self.cons = 0;
        // Release: the index resets are visible before CONNECTED is.
        self.index(offset::CONNECTION)
            .store(CONNECTED, Ordering::Release);
        true
    }

    /// Our private producer index.
    pub fn prod(&self) -> u32 {
        self.prod
    }

    /// Our private consumer index.
    pub fn cons(&self) -> u32 {
        self.cons
    }

    fn offsets(&self) -> (usize, usize, usize, usize, usize, usize) {
        // (out data, out cons, out prod, in data, in cons, in prod)
        match self.side {
            Side::Guest => (
                offset::REQ,
                offset::REQ_CONS,
                offset::REQ_PROD,
                offset::RSP,
                offset::RSP_CONS,
                offset::RSP_PROD,
            ),
            Side::Server => (
                offset::RSP,
                offset::RSP_CONS,
                offset::RSP_PROD,
                offset::REQ,
                offset::REQ_CONS,
                offset::REQ_PROD,
            ),
        }
    }

    /// Free bytes in our outgoing ring, after validating the peer's consumer.
    pub fn space(&self) -> Result<usize, RingError> {
        let (_, out_cons, ..) = self.offsets();
        // Acquire: the peer finished reading the bytes before it published
        // the consumer index, so we may overwrite them after seeing it.
        let cons = self.index(out_cons).load(Ordering::Acquire);
        let used = self.prod.wrapping_sub(cons);
        if used as usize > RING_SIZE {
            return Err(RingError::ConsumerOverrun {
                prod: self.prod,
                cons,
            });
        }
        Ok(RING_SIZE - used as usize)
    }

    /// Bytes waiting in our incoming ring, after validating the peer's
    /// producer.
    pub fn available(&self) -> Result<usize, RingError> {
        Ok(self.incoming()?.1)
    }

    fn incoming(&self) -> Result<(u32, usize), RingError> {
        let (.., in_prod) = self.offsets();
        // Acquire: the peer wrote the bytes before it published the producer
        // index; we read them only after seeing it.
        let prod = self.index(in_prod).load(Ordering::Acquire);
        let avail = prod.wrapping_sub(self.cons);
        if avail as usize > RING_SIZE {
            return Err(RingError::ProducerOverrun {
                prod,
                cons: self.cons,
            });
        }
        Ok((prod, avail as usize))
    }

    /// Copies as much of `data` as fits into the outgoing ring (straddling
    /// the wrap if needed) and publishes it. Returns the number of bytes
    /// written (0 if the ring is full). The caller notifies the peer if it
    /// wrote anything.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, RingError> {
        let (out_data, _, out_prod, ..) = self.offsets();
        let n = self.space()?.min(data.len());
        for (i, b) in data[..n].iter().enumerate() {
            let at = (self.prod.wrapping_add(i as u32) as usize) & (RING_SIZE - 1);
            // SAFETY: `at < RING_SIZE` and `out_data + RING_SIZE <=
            // offset::SIZE`, inside the page `attach` vouched for. The peer
            // does not read these bytes until we publish the producer below
            // (and a peer that does anyway only sees garbage), so a volatile
            // byte store is enough.
            unsafe {
                self.page
                    .as_ptr()
                    .wrapping_add(out_data + at)
                    .write_volatile(*b)
            };
        }
        if n > 0 {
            self.prod = self.prod.wrapping_add(n as u32);
            // Release: the bytes above must be visible to the peer before it
            // can see the new producer index.
            self.index(out_prod).store(self.prod, Ordering::Release);
        }
        Ok(n)
    }

    /// Copies up to `buf.len()` waiting bytes out of the incoming ring and
    /// releases their space to the peer. Returns the number of bytes read
    /// (0 if the ring is empty). The caller notifies the peer if it read
    /// anything (the peer may be waiting for space).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, RingError> {
        let (.., in_data, in_cons, _) = self.offsets();
        let (_, avail) = self.incoming()?;
        let n = avail.min(buf.len());
        for (i, slot) in buf[..n].iter_mut().enumerate() {
            let at = (self.cons.wrapping_add(i as u32) as usize) & (RING_SIZE - 1);
            // SAFETY: `at < RING_SIZE` and `in_data + RING_SIZE <=
            // offset::SIZE`, inside the page. Each byte is read exactly once
            // into `buf` (the local copy that is then parsed); the peer may
            // scribble on it concurrently only by breaking the protocol, and
            // then we merely copy garbage.
            *slot = unsafe {
                self.page
                    .as_ptr()
                    .wrapping_add(in_data + at)
                    .read_volatile()
            };
        }
        if n > 0 {
            self.cons = self.cons.wrapping_add(n as u32);
            // Release: our reads of the bytes above complete before the peer
            // can see the space as free and overwrite it.
            self.index(in_cons).store(self.cons, Ordering::Release);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;

    /// A 4 KiB test page, written by the "peer" only through its raw pointer.
    struct Page(NonNull<[u32; 1024]>);
    impl Page {
        fn new() -> Self {
            Page(NonNull::from(Box::leak(Box::new([0u32; 1024]))))
        }
        fn ptr(&mut self) -> NonNull<u8> {
            self.0.cast()
        }
        fn set(&mut self, off: usize, v: u32) {
            // SAFETY: `off` is an in-page, 4-aligned field offset of the live
            // allocation; the ring under test only accesses it atomically
            // and not concurrently (single thread).
            let word = unsafe {
                AtomicU32::from_ptr(self.0.as_ptr().cast::<u8>().wrapping_add(off).cast::<u32>())
            };
            word.store(v, Ordering::SeqCst);
        }
    }
    impl Drop for Page {
        fn drop(&mut self) {
            // SAFETY: allocated by `Box::leak` in `new`, freed once here.
            drop(unsafe { Box::from_raw(self.0.as_ptr()) });
        }
    }

    #[test]
    fn layout_matches_xs_wire_h() {
        assert_eq!(offset::SIZE, 2 * RING_SIZE + 7 * 4);
        assert_eq!(offset::REQ_PROD, offset::REQ_CONS + 4);
    }

    #[test]
    fn straddles_the_wrap_in_both_directions() {
        let mut page = Page::new();
        let p = page.ptr();
        // SAFETY: the page is 4096 bytes, aligned, outlives both ends, and
        // each side is attached once.
        let mut guest = unsafe { XenstoreRing::init(p, Side::Guest, 0xFFFF_FF00, 0) };
        // SAFETY: as above.
        let mut server = unsafe { XenstoreRing::attach(p, Side::Server) };
        let mut total = 0usize;
        for round in 0..50u32 {
            let msg: Vec<u8> = (0..700u32).map(|i| (i ^ round) as u8).collect();
            assert_eq!(guest.write(&msg).expect("must succeed"), 700);
            assert_eq!(guest.space().expect("must succeed"), RING_SIZE - 700);
            let mut got = [0u8; 1024];
            assert_eq!(server.read(&mut got).expect("must succeed"), 700);
            assert_eq!(&got[..700], &msg[..]);
            assert_eq!(server.write(&msg[..300]).expect("must succeed"), 300);
            assert_eq!(guest.read(&mut got[..100]).expect("must succeed"), 100);
            assert_eq!(guest.read(&mut got[100..]).expect("must succeed"), 200);
            assert_eq!(&got[..300], &msg[..300]);
            total += 700;
        }
        assert!(total > 0x100);
        // The counters wrapped past 2^32.
        assert!(guest.prod() < 0xFFFF_FF00);
    }

    #[test]
    fn full_ring_takes_partial_writes() {
        let mut page = Page::new();
        // SAFETY: page valid for the test, one end per side.
        let mut guest = unsafe { XenstoreRing::init(page.ptr(), Side::Guest, 5, 0) };
        assert_eq!(guest.write(&[1; 1000]).expect("must succeed"), 1000);
        assert_eq!(guest.write(&[2; 100]).expect("must succeed"), 24);
        assert_eq!(guest.write(&[3; 1]).expect("must succeed"), 0);
    }

    #[test]
    fn hostile_indices_are_rejected_without_side_effects() {
        let mut page = Page::new();
        // SAFETY: page valid for the test, one end per side.
        let mut guest = unsafe { XenstoreRing::init(page.ptr(), Side::Guest, 10, 0) };
        let mut buf = [0u8; 64];
        page.set(offset::RSP_PROD, 10 + 1025);
        assert_eq!(
            guest.read(&mut buf),
            Err(RingError::ProducerOverrun {
                prod: 1035,
                cons: 10
            })
        );
        page.set(offset::RSP_PROD, 9); // went backwards
        assert!(guest.read(&mut buf).is_err());
        assert_eq!(guest.cons(), 10);
        page.set(offset::RSP_PROD, 10 + 1024); // exactly full is fine
        assert_eq!(guest.read(&mut buf).expect("must succeed"), 64);
        page.set(offset::REQ_CONS, 11); // consumer passed our producer
        assert!(matches!(
            guest.write(b"x"),
            Err(RingError::ConsumerOverrun { .. })
        ));
        page.set(offset::REQ_CONS, 10);
        assert_eq!(guest.write(b"x").expect("must succeed"), 1);
    }
}
