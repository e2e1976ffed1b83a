//! Xen netif frontend (`xen/io/netif.h`) on `xenbus`' [`FrontRing`], grants
//! and event channels, through the platform traits.
//!
//! # What the OS glue does and what this does
//!
//! The glue runs the xenbus handshake: it reads the backend's keys into a
//! [`XenNetConfig`] (`feature-rx-copy` is required: without it the
//! constructor fails, as Linux netfront does), builds a [`XenNetFront`]
//! (which allocates and grants both rings and every packet page, and
//! allocates the event channel(s)), writes [`XenNetFront::front_keys`]
//! under its own xenstore node, switches to Connected, and calls
//! [`NetFrontend::poll_rx`] / [`NetFrontend::poll_tx`] when a port fires.
//! After [`NetFrontend::reset`] the rings, grants and ports are new and the
//! handshake must be run again.
//!
//! # Data path
//!
//! One page per ring slot on each side, granted once (TX read-only, RX
//! writable) and reused: a frame is copied into TX pages (one slot per
//! 4 KiB, `more_data` chaining the slots with `feature-sg`; the first
//! request's `size` is the whole frame), and a received frame is copied out
//! of its RX pages before the slot is posted again (rx-copy: the backend
//! copies into our pages with grant copy). RX request ids are the slot
//! numbers; responses are matched by slot, not id (as Linux netfront).
//!
//! # Validation
//!
//! The ring rejects a `rsp_prod` beyond the requests outstanding, and the TX
//! id tracker rejects unknown and duplicate ids; both stop the frontend. Per
//! packet (dropped and counted, the ring stays in step): a negative RX
//! status (`rx_errors`), a zero length or `offset + len` past the page, a
//! frame below 14 bytes or beyond the MTU (`rx_bad_len`), unknown flag bits,
//! `extra_info` on a later slot or an unknown or malformed extra type
//! (`rx_bad_header`), and chains longer than [`MAX_RX_SLOTS`] or more than
//! [`MAX_EXTRAS`] extra slots (`rx_bad_chain`). A TX status other than OKAY
//! counts in `tx_errors`.

use alloc::string::String;
use alloc::vec::Vec;
use alloc::{format, vec};
use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use xenbus::platform::{DomId, EventChannels, GrantRef, GrantTable, Port, SharedPages};
use xenbus::ring::{FrontRing, IdTracker, RingRegion, PAGE_SIZE};
use xenbus::wire::netif::{
    NetifExtraInfo, NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse,
    EXTRA_FLAG_MORE, EXTRA_TYPE_GSO, EXTRA_TYPE_HASH, EXTRA_TYPE_MCAST_ADD, EXTRA_TYPE_MCAST_DEL,
    GSO_TYPE_TCPV4, GSO_TYPE_TCPV6, NR_SLOTS_MIN, RSP_OKAY, RXF_CSUM_BLANK, RXF_DATA_VALIDATED,
    RXF_EXTRA_INFO, RXF_MORE_DATA, TXF_CSUM_BLANK, TXF_DATA_VALIDATED, TXF_MORE_DATA,
};
use zerocopy::IntoBytes;

use crate::frontend::{max_frame, DEFAULT_MTU};
use crate::{
    Gso, NetError, NetFrontend, NetInfo, RxCsum, RxFrame, RxRefill, Stats, TxCsum, ETH_HLEN,
    MAX_MTU, MIN_MTU,
};

/// Most data slots of one received packet (`XEN_NETIF_NR_SLOTS_MIN`).
pub const MAX_RX_SLOTS: u32 = NR_SLOTS_MIN as u32;
/// Most extra-info slots of one received packet (one per type).
pub const MAX_EXTRAS: u32 = 4;
/// Largest frame a GSO packet may carry (`XEN_NETIF_MAX_TX_SIZE`).
const MAX_GSO_FRAME: usize = 0xFFFF;

/// What the backend published (and the toolstack gave us), read from
/// xenstore by the glue. Untrusted: checked by [`XenNetFront::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenNetConfig {
    /// The backend's domain.
    pub backend_domid: DomId,
    /// Our `mac` key (written by the toolstack).
    pub mac: [u8; 6],
    /// Backend `mtu`, if present.
    pub mtu: Option<u16>,
    /// Backend `feature-rx-copy` (required).
    pub feature_rx_copy: bool,
    /// Backend `feature-sg`: frames may span several TX slots.
    pub feature_sg: bool,
    /// Backend `feature-ipv6-csum-offload`.
    pub feature_ipv6_csum_offload: bool,
    /// Backend `feature-split-event-channels`.
    pub feature_split_event_channels: bool,
    /// Whether the runtime accepts [`RxCsum::Blank`] frames (sets our
    /// `feature-no-csum-offload` to 0); otherwise the backend checksums.
    pub rx_csum_offload: bool,
    /// RX refill policy.
    pub refill: RxRefill,
}

impl Default for XenNetConfig {
    fn default() -> Self {
        Self {
            backend_domid: 0,
            mac: [0x00, 0x16, 0x3e, 0x00, 0x00, 0x01],
            mtu: None,
            feature_rx_copy: true,
            feature_sg: true,
            feature_ipv6_csum_offload: false,
            feature_split_event_channels: false,
            rx_csum_offload: false,
            refill: RxRefill::default(),
        }
    }
}

/// Pages from [`SharedPages`] and the grants of each.
#[derive(Debug)]
struct Granted {
    pages: NonNull<u8>,
    count: usize,
    grefs: Vec<GrantRef>,
}

/// Everything one connection uses.
#[derive(Debug)]
struct Conn {
    /// Borrow `rings`' pages; dropped before the pages are freed.
    tx: FrontRing<'static, NetifTxRequest, NetifTxResponse>,
    rx: FrontRing<'static, NetifRxRequest, NetifRxResponse>,
    tx_ids: IdTracker,
    tx_unflushed: bool,
}

/// Assembly state of a packet whose slots are still arriving.
#[derive(Clone, Copy, Debug, Default)]
struct Asm {
    active: bool,
    /// Why it will be dropped (a `Stats` field picker), if it will.
    bad: Option<Why>,
    slots: u32,
    extras: u32,
    need_extra: bool,
    csum: Option<RxCsum>,
    gso: Option<Gso>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Len,
    Header,
    Chain,
    Error,
}

/// A netif frontend; see the module docs.
///
/// `P` is anything that derefs to the platform (a reference, an `Arc`).
#[derive(Debug)]
pub struct XenNetFront<P>
where
    P: Deref,
    P::Target: SharedPages + GrantTable + EventChannels,
{
    plat: P,
    cfg: XenNetConfig,
    info: NetInfo,
    conn: Option<Conn>,
    /// Page 0 tx ring, page 1 rx ring.
    rings: Option<Granted>,
    tx_pages: Option<Granted>,
    rx_pages: Option<Granted>,
    port_tx: Port,
    port_rx: Port,
    asm: Asm,
    scratch: Vec<u8>,
    leaked_pages: usize,
    fault: Option<NetError>,
    stats: Stats,
}

/// Copy `dst.len()` bytes from shared memory at `src`, which the peer may
/// write at any time: only atomic loads touch it (8 bytes at a time where
/// aligned), so a racing peer changes what we copy, never our behaviour.
///
/// # Safety
///
/// `src..src + dst.len()` is valid for reads and only accessed atomically
/// in this address space while the copy runs.
unsafe fn copy_from_shared(src: *const u8, dst: &mut [u8]) {
    let mut i = 0;
    while i < dst.len() {
        let p = src.wrapping_add(i);
        if (p as usize).is_multiple_of(8) && dst.len() - i >= 8 {
            // SAFETY: in bounds and 8-aligned (checked); the caller
            // guarantees validity and atomic-only access.
            let w =
                unsafe { AtomicU64::from_ptr(p.cast_mut().cast::<u64>()) }.load(Ordering::Relaxed);
            dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
            i += 8;
        } else {
            // SAFETY: in bounds; as above.
            dst[i] = unsafe { AtomicU8::from_ptr(p.cast_mut()) }.load(Ordering::Relaxed);
            i += 1;
        }
    }
}

/// Copy `src` into shared memory at `dst` with atomic stores (the peer may
/// read it concurrently).
///
/// # Safety
///
/// `dst..dst + src.len()` is valid for writes and only accessed atomically
/// in this address space while the copy runs.
unsafe fn copy_to_shared(dst: *mut u8, src: &[u8]) {
    let mut i = 0;
    while i < src.len() {
        let p = dst.wrapping_add(i);
        if (p as usize).is_multiple_of(8) && src.len() - i >= 8 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&src[i..i + 8]);
            // SAFETY: in bounds and 8-aligned; the caller guarantees
            // validity and atomic-only access.
            unsafe { AtomicU64::from_ptr(p.cast::<u64>()) }
                .store(u64::from_ne_bytes(w), Ordering::Relaxed);
            i += 8;
        } else {
            // SAFETY: in bounds; as above.
            unsafe { AtomicU8::from_ptr(p) }.store(src[i], Ordering::Relaxed);
            i += 1;
        }
    }
}

impl<P> XenNetFront<P>
where
    P: Deref,
    P::Target: SharedPages + GrantTable + EventChannels,
{
    /// Allocate and grant the rings and packet pages, allocate the event
    /// channel(s), and post every RX slot.
    pub fn new(plat: P, cfg: XenNetConfig) -> Result<Self, NetError> {
        if !cfg.feature_rx_copy {
            return Err(NetError::DeviceFailed);
        }
        let mut mtu = cfg
            .mtu
            .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
            .unwrap_or(DEFAULT_MTU);
        if !cfg.feature_sg {
            // One slot per frame: a frame must fit a page.
            mtu = mtu.min((PAGE_SIZE - ETH_HLEN - 4) as u16);
        }
        let mut me = Self {
            plat,
            cfg,
            info: NetInfo {
                mac: cfg.mac,
                mtu,
                tx_csum: true,
                rx_csum: cfg.rx_csum_offload,
                link_status: false,
                rx_slots: 0,
                tx_slots: 0,
                event_idx: true,
            },
            conn: None,
            rings: None,
            tx_pages: None,
            rx_pages: None,
            port_tx: 0,
            port_rx: 0,
            asm: Asm::default(),
            scratch: Vec::new(),
            leaked_pages: 0,
            fault: None,
            stats: Stats::default(),
        };
        me.build()?;
        Ok(me)
    }

    fn grant_pages(&self, count: usize, readonly: bool) -> Result<Granted, NetError> {
        let pages = self.plat.alloc_pages(count)?;
        let mut g = Granted {
            pages,
            count,
            grefs: Vec::with_capacity(count),
        };
        for i in 0..count {
            let page = NonNull::new(pages.as_ptr().wrapping_add(i * PAGE_SIZE));
            let r = page
                .ok_or(NetError::Transport)
                .and_then(|p| Ok(self.plat.grant(self.cfg.backend_domid, p, readonly)?));
            match r {
                Ok(r) => g.grefs.push(r),
                Err(e) => {
                    let mut leaked = 0;
                    Self::release(&self.plat, Some(g), &mut leaked);
                    return Err(e);
                }
            }
        }
        Ok(g)
    }

    /// Revoke every grant and free the pages, unless the backend still
    /// maps one: then the pages are leaked, never reused.
    fn release(plat: &P::Target, g: Option<Granted>, leaked: &mut usize) {
        let Some(g) = g else { return };
        let mut all = true;
        for r in &g.grefs {
            // SAFETY: each gref came from `grant` on this platform and is
            // revoked once, here.
            if unsafe { plat.end_access(*r) }.is_err() {
                all = false;
            }
        }
        if all {
            // SAFETY: `alloc_pages(count)` gave these pages; every grant of
            // them is revoked and nothing uses them any more.
            unsafe { plat.free_pages(g.pages, g.count) };
        } else {
            log::error!(
                "netfront: backend still maps our pages; leaking {}",
                g.count
            );
            *leaked += g.count;
        }
    }

    fn build(&mut self) -> Result<(), NetError> {
        let rings = self.grant_pages(2, false)?;
        let base = rings.pages;
        self.rings = Some(rings);
        // SAFETY: pages 0 and 1 of `rings` are ours from `alloc_pages`,
        // valid until `free_pages` in `release`, which `teardown` only
        // calls after dropping `conn` (the rings); they are only touched
        // through the rings' atomics here (and by the backend, which the
        // ring code expects).
        let tx_region = unsafe { RingRegion::new(base, PAGE_SIZE) }?;
        let rx_base =
            NonNull::new(base.as_ptr().wrapping_add(PAGE_SIZE)).ok_or(NetError::Transport)?;
        // SAFETY: as above, page 1.
        let rx_region = unsafe { RingRegion::new(rx_base, PAGE_SIZE) }?;
        let tx = FrontRing::init(tx_region)?;
        let rx = FrontRing::init(rx_region)?;
        let (ts, rs) = (tx.size() as usize, rx.size() as usize);
        self.tx_pages = Some(self.grant_pages(ts, true)?);
        self.rx_pages = Some(self.grant_pages(rs, false)?);
        self.port_tx = self.plat.alloc_unbound(self.cfg.backend_domid)?;
        self.port_rx = if self.cfg.feature_split_event_channels {
            self.plat.alloc_unbound(self.cfg.backend_domid)?
        } else {
            self.port_tx
        };
        self.info.tx_slots = ts as u16;
        self.info.rx_slots = rs as u16;
        self.conn = Some(Conn {
            tx_ids: IdTracker::new(tx.size()),
            tx,
            rx,
            tx_unflushed: false,
        });
        self.asm = Asm::default();
        self.refill(true);
        Ok(())
    }

    fn teardown(&mut self) {
        self.conn = None;
        let mut leaked = 0;
        Self::release(&self.plat, self.rings.take(), &mut leaked);
        Self::release(&self.plat, self.tx_pages.take(), &mut leaked);
        Self::release(&self.plat, self.rx_pages.take(), &mut leaked);
        self.leaked_pages += leaked;
        if self.port_rx != self.port_tx {
            self.plat.close(self.port_rx);
        }
        self.plat.close(self.port_tx);
    }

    /// The keys to write under our xenstore node before switching to
    /// Connected: (key, value).
    pub fn front_keys(&self) -> Vec<(&'static str, String)> {
        let refs = self.rings.as_ref().map_or(&[][..], |r| &r.grefs[..]);
        let mut k = vec![
            (
                "tx-ring-ref",
                format!("{}", refs.first().copied().unwrap_or(0)),
            ),
            (
                "rx-ring-ref",
                format!("{}", refs.get(1).copied().unwrap_or(0)),
            ),
        ];
        if self.port_rx != self.port_tx {
            k.push(("event-channel-tx", format!("{}", self.port_tx)));
            k.push(("event-channel-rx", format!("{}", self.port_rx)));
        } else {
            k.push(("event-channel", format!("{}", self.port_tx)));
        }
        k.push(("request-rx-copy", String::from("1")));
        k.push(("feature-rx-notify", String::from("1")));
        k.push(("feature-sg", String::from("1")));
        k.push(("feature-gso-tcpv4", String::from("0")));
        k.push(("feature-gso-tcpv6", String::from("0")));
        k.push((
            "feature-no-csum-offload",
            String::from(if self.cfg.rx_csum_offload { "0" } else { "1" }),
        ));
        k
    }

    /// TX and RX event channels (the same port without split channels).
    pub fn event_channels(&self) -> (Port, Port) {
        (self.port_tx, self.port_rx)
    }

    /// Grant references of the TX and RX ring pages.
    pub fn ring_refs(&self) -> (GrantRef, GrantRef) {
        let r = self.rings.as_ref().map_or(&[][..], |r| &r.grefs[..]);
        (
            r.first().copied().unwrap_or(0),
            r.get(1).copied().unwrap_or(0),
        )
    }

    /// Change the refill policy.
    pub fn set_refill(&mut self, refill: RxRefill) {
        self.cfg.refill = refill;
    }

    /// Pages leaked because the backend would not let go of them.
    pub fn leaked_pages(&self) -> usize {
        self.leaked_pages
    }

    /// RX requests posted and not yet answered.
    pub fn rx_posted(&self) -> u32 {
        self.conn
            .as_ref()
            .map_or(0, |c| c.rx.req_prod_pvt().wrapping_sub(c.rx.rsp_cons()))
    }

    fn stop(&mut self, e: NetError) -> NetError {
        if self.fault.is_none() {
            log::error!("netfront: stopping after backend fault: {e}");
            self.stats.stops += 1;
        }
        if let (Some(c), NetError::Ring(re)) = (self.conn.as_mut(), e) {
            c.tx.stop(re);
            c.rx.stop(re);
        }
        *self.fault.get_or_insert(e)
    }

    fn check(&self) -> Result<(), NetError> {
        match self.fault {
            Some(_) => Err(NetError::Stopped),
            None => Ok(()),
        }
    }

    fn notify(&mut self, port: Port) {
        self.stats.kicks += 1;
        if let Err(e) = self.plat.notify(port) {
            // The requests are published whatever the notify says; the
            // backend finds them on its next pass.
            log::warn!("netfront: notify failed: {e}");
        }
    }

    /// Post an RX request in every free slot if the posted count is at or
    /// below the low-water mark (or always, with `force`); one notify
    /// decision for the batch.
    fn refill(&mut self, force: bool) {
        let low = u32::from(self.cfg.refill.low_water);
        let posted = self.rx_posted();
        let (Some(c), Some(pages)) = (self.conn.as_mut(), self.rx_pages.as_ref()) else {
            return;
        };
        if !force && posted > low {
            return;
        }
        let mask = c.rx.size() - 1;
        let mut n = 0u64;
        while !c.rx.is_full() {
            let slot = c.rx.req_prod_pvt() & mask;
            let req = NetifRxRequest {
                id: slot as u16,
                pad: 0,
                gref: pages.grefs.get(slot as usize).copied().unwrap_or(0),
            };
            if c.rx.push_request(&req).is_err() {
                break;
            }
            n += 1;
        }
        if n == 0 {
            return;
        }
        self.stats.rx_posted += n;
        match c.rx.push_requests_and_check_notify() {
            Ok(true) => {
                let p = self.port_rx;
                self.notify(p);
            }
            Ok(false) => self.stats.kicks_suppressed += 1,
            Err(e) => {
                self.stop(e.into());
            }
        }
    }

    /// Finish the packet being assembled: deliver it or count its drop.
    fn finish(&mut self, f: &mut dyn FnMut(RxFrame<'_>)) -> bool {
        let a = core::mem::take(&mut self.asm);
        let maxf = if a.gso.is_some() {
            MAX_GSO_FRAME
        } else {
            max_frame(self.info.mtu)
        };
        let len = self.scratch.len();
        let bad = a.bad.or(if (ETH_HLEN..=maxf).contains(&len) {
            None
        } else {
            Some(Why::Len)
        });
        match bad {
            None => {
                f(RxFrame {
                    data: &self.scratch,
                    csum: a.csum.unwrap_or(RxCsum::None),
                    gso: a.gso,
                });
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += len as u64;
                true
            }
            Some(d) => {
                log::warn!("netfront: rx packet dropped ({d:?})");
                match d {
                    Why::Len => self.stats.rx_bad_len += 1,
                    Why::Header => self.stats.rx_bad_header += 1,
                    Why::Chain => self.stats.rx_bad_chain += 1,
                    Why::Error => self.stats.rx_errors += 1,
                }
                false
            }
        }
    }

    /// Judge one RX response slot of the packet being assembled.
    fn take_slot(&mut self, slot: u32, rsp: NetifRxResponse) -> bool {
        let a = &mut self.asm;
        if a.need_extra {
            // The slot holds a `netif_extra_info`, not a response.
            let mut ex = NetifExtraInfo::default();
            ex.as_mut_bytes().copy_from_slice(rsp.as_bytes());
            a.extras += 1;
            a.need_extra = ex.flags & EXTRA_FLAG_MORE != 0;
            if a.extras > MAX_EXTRAS {
                a.bad.get_or_insert(Why::Chain);
                // Keep eating extras until the chain says it ends (bounded
                // by the ring: each slot is one response).
                return a.need_extra;
            }
            match ex.type_ {
                EXTRA_TYPE_GSO => {
                    let kind = ex.gso_type();
                    if (kind == GSO_TYPE_TCPV4 || kind == GSO_TYPE_TCPV6) && ex.gso_size() > 0 {
                        a.gso = Some(Gso {
                            kind,
                            size: ex.gso_size(),
                        });
                    } else {
                        a.bad.get_or_insert(Why::Header);
                    }
                }
                EXTRA_TYPE_MCAST_ADD | EXTRA_TYPE_MCAST_DEL | EXTRA_TYPE_HASH => {}
                _ => {
                    a.bad.get_or_insert(Why::Header);
                }
            }
            // A packet's data continues after its extras if the first slot
            // said more_data; that was recorded as `active`.
            return a.need_extra || a.slots_more();
        }
        let first = a.slots == 0;
        a.slots += 1;
        if a.slots > MAX_RX_SLOTS {
            a.bad.get_or_insert(Why::Chain);
        }
        let known = RXF_DATA_VALIDATED | RXF_CSUM_BLANK | RXF_MORE_DATA | RXF_EXTRA_INFO;
        if rsp.flags & !known != 0 || (!first && rsp.flags & RXF_EXTRA_INFO != 0) {
            a.bad.get_or_insert(Why::Header);
        }
        if first {
            a.csum = Some(if rsp.flags & RXF_CSUM_BLANK != 0 {
                if self.cfg.rx_csum_offload {
                    RxCsum::Blank
                } else {
                    // We said feature-no-csum-offload: blank is out of spec.
                    a.bad.get_or_insert(Why::Header);
                    RxCsum::None
                }
            } else if rsp.flags & RXF_DATA_VALIDATED != 0 {
                RxCsum::Valid
            } else {
                RxCsum::None
            });
            a.need_extra = rsp.flags & RXF_EXTRA_INFO != 0;
        }
        a.set_more(rsp.flags & RXF_MORE_DATA != 0);
        let off = usize::from(rsp.offset);
        if rsp.status < 0 {
            a.bad.get_or_insert(Why::Error);
        } else if rsp.status == 0 || off + rsp.status as usize > PAGE_SIZE {
            a.bad.get_or_insert(Why::Len);
        } else if a.bad.is_none() && self.scratch.len() < MAX_GSO_FRAME {
            let len = rsp.status as usize;
            if let Some(pages) = self.rx_pages.as_ref() {
                let src = pages
                    .pages
                    .as_ptr()
                    .wrapping_add(slot as usize * PAGE_SIZE + off);
                let at = self.scratch.len();
                self.scratch.resize(at + len, 0);
                // SAFETY: `slot < rx ring size = pages.count`, and
                // `off + len <= PAGE_SIZE` (checked), so the range lies in
                // our RX page `slot`, allocated until `teardown`; the
                // backend may write it concurrently, which the atomic copy
                // tolerates.
                unsafe { copy_from_shared(src, &mut self.scratch[at..]) };
            }
        }
        let a = &self.asm;
        a.need_extra || a.slots_more()
    }
}

impl Asm {
    fn slots_more(&self) -> bool {
        self.active
    }
    fn set_more(&mut self, more: bool) {
        self.active = more;
    }
}

impl<P> NetFrontend for XenNetFront<P>
where
    P: Deref,
    P::Target: SharedPages + GrantTable + EventChannels,
{
    fn info(&self) -> NetInfo {
        self.info
    }

    fn link_up(&mut self) -> bool {
        // netif has no link state beyond the xenbus connection, which the
        // glue tracks.
        self.conn.is_some() && self.fault.is_none()
    }

    fn queue_tx(&mut self, frame: &[u8], csum: Option<TxCsum>) -> Result<(), NetError> {
        self.check()?;
        let maxf = max_frame(self.info.mtu);
        if frame.len() < ETH_HLEN {
            return Err(NetError::FrameTooShort { len: frame.len() });
        }
        if frame.len() > maxf {
            return Err(NetError::FrameTooLong {
                len: frame.len(),
                max: maxf,
            });
        }
        if let Some(c) = csum {
            if usize::from(c.start) + usize::from(c.offset) + 2 > frame.len() {
                return Err(NetError::BadChecksumRequest);
            }
        }
        let n = frame.len().div_ceil(PAGE_SIZE);
        let room = |c: &Conn| c.tx.free_requests() as usize >= n && c.tx_ids.available() >= n;
        if !self.conn.as_ref().is_some_and(room) {
            self.poll_tx()?;
        }
        // netback checksums IPv4 itself; IPv6 only with its feature; other
        // ethertypes (VLAN tags) are done here.
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let offload = match ethertype {
            0x0800 => true,
            0x86DD => self.cfg.feature_ipv6_csum_offload,
            _ => false,
        };
        let mut sw = None;
        if let (Some(c), false) = (csum, offload) {
            let mut v = frame.to_vec();
            crate::csum::complete(&mut v, usize::from(c.start), usize::from(c.offset));
            self.stats.tx_csum_sw += 1;
            sw = Some(v);
        }
        let data: &[u8] = sw.as_deref().unwrap_or(frame);
        let (Some(c), Some(pages)) = (self.conn.as_mut(), self.tx_pages.as_ref()) else {
            return Err(NetError::Stopped);
        };
        if !room(c) {
            return Err(NetError::TxFull);
        }
        for (k, chunk) in data.chunks(PAGE_SIZE).enumerate() {
            let id = c.tx_ids.alloc()?;
            let page = pages.pages.as_ptr().wrapping_add(id as usize * PAGE_SIZE);
            // SAFETY: `id < tx ring size = pages.count`, chunk ≤ a page; the
            // page is ours until `teardown`, and the backend is done with it
            // (its id was answered before it was freed).
            unsafe { copy_to_shared(page, chunk) };
            let mut flags = 0;
            if k + 1 < n {
                flags |= TXF_MORE_DATA;
            }
            if k == 0 && csum.is_some() && offload {
                flags |= TXF_CSUM_BLANK | TXF_DATA_VALIDATED;
            }
            let req = NetifTxRequest {
                gref: pages.grefs.get(id as usize).copied().unwrap_or(0),
                offset: 0,
                flags,
                id: id as u16,
                size: if k == 0 {
                    data.len() as u16
                } else {
                    chunk.len() as u16
                },
            };
            c.tx.push_request(&req)?;
        }
        c.tx_unflushed = true;
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += frame.len() as u64;
        Ok(())
    }

    fn flush_tx(&mut self) -> Result<bool, NetError> {
        self.check()?;
        let Some(c) = self.conn.as_mut() else {
            return Err(NetError::Stopped);
        };
        if !core::mem::take(&mut c.tx_unflushed) {
            return Ok(false);
        }
        match c.tx.push_requests_and_check_notify() {
            Ok(true) => {
                let p = self.port_tx;
                self.notify(p);
                Ok(true)
            }
            Ok(false) => {
                self.stats.kicks_suppressed += 1;
                Ok(false)
            }
            Err(e) => Err(self.stop(e.into())),
        }
    }

    fn tx_space(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| {
            (c.tx.free_requests() as usize).min(c.tx_ids.available())
                / max_frame(self.info.mtu).div_ceil(PAGE_SIZE)
        })
    }

    fn poll_tx(&mut self) -> Result<usize, NetError> {
        self.check()?;
        let mut n = 0;
        loop {
            let Some(c) = self.conn.as_mut() else {
                return Err(NetError::Stopped);
            };
            let rsp: NetifTxResponse = match c.tx.consume_response() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(n),
                Err(e) => return Err(self.stop(e.into())),
            };
            if let Err(e) = c.tx_ids.complete(u64::from(rsp.id)) {
                return Err(self.stop(e.into()));
            }
            if rsp.status != RSP_OKAY {
                self.stats.tx_errors += 1;
                log::warn!("netfront: tx id {} status {}", rsp.id, rsp.status);
            }
            n += 1;
        }
    }

    fn poll_rx(
        &mut self,
        budget: usize,
        f: &mut dyn FnMut(RxFrame<'_>),
    ) -> Result<usize, NetError> {
        self.check()?;
        let mut n = 0;
        while n < budget {
            let Some(c) = self.conn.as_mut() else {
                return Err(NetError::Stopped);
            };
            let idx = c.rx.rsp_cons();
            let mask = c.rx.size() - 1;
            // Bounded: the ring refuses more responses than requests posted.
            let rsp = match c.rx.consume_response() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(self.stop(e.into())),
            };
            if !self.asm.active && !self.asm.need_extra && self.asm.slots == 0 {
                self.scratch.clear();
            }
            if !self.take_slot(idx & mask, rsp) {
                if self.finish(f) {
                    n += 1;
                }
                self.scratch.clear();
            }
        }
        self.refill(false);
        Ok(n)
    }

    fn enable_interrupts(&mut self) -> Result<bool, NetError> {
        self.check()?;
        let Some(c) = self.conn.as_mut() else {
            return Err(NetError::Stopped);
        };
        let r =
            c.rx.final_check_for_responses()
                .and_then(|rx| Ok(c.tx.final_check_for_responses()? || rx));
        r.map_err(|e| self.stop(e.into()))
    }

    fn disable_interrupts(&mut self) {
        // Ring events are one-shot: after the event index is passed the
        // backend sends nothing until `enable_interrupts` sets it again.
    }

    fn fault(&self) -> Option<NetError> {
        self.fault
    }

    fn stats(&self) -> Stats {
        self.stats
    }

    /// New rings, pages, grants and ports (old pages the backend still maps
    /// are leaked, never reused); the glue re-runs the handshake.
    fn reset(&mut self) -> Result<(), NetError> {
        self.teardown();
        self.fault = None;
        if let Err(e) = self.build() {
            self.teardown();
            return Err(self.stop(e));
        }
        self.stats.resets += 1;
        Ok(())
    }
}

impl<P> core::ops::Drop for XenNetFront<P>
where
    P: Deref,
    P::Target: SharedPages + GrantTable + EventChannels,
{
    fn drop(&mut self) {
        self.teardown();
    }
}
