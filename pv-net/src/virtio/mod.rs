//! virtio-net (virtio 1.2 §5.1) on a `virtio-drivers` [`Transport`] and
//! pv-virtq's validated [`VirtQueue`].
//!
//! Queues: 0 receive, 1 transmit, 2 control (if `CTRL_VQ`). Every buffer,
//! both ways, starts with the 12-byte [`NetHdr`] (`VERSION_1` is required:
//! the legacy 10-byte header is refused). Each RX buffer and each TX frame
//! is one descriptor holding header and frame together (allowed by
//! `VERSION_1`'s any-layout rule), so a frame costs one ring slot.
//!
//! Negotiated when offered: `CSUM`, `GUEST_CSUM`, `MTU`, `MAC`, `MRG_RXBUF`,
//! `STATUS`, `CTRL_VQ` with `CTRL_RX` and `CTRL_MAC_ADDR` (promiscuous /
//! all-multicast mode and MAC change), `EVENT_IDX`, `VERSION_1`,
//! `ACCESS_PLATFORM`. Refused: GSO either way (`HOST_TSO*`, `GUEST_TSO*`),
//! `MQ`, `CTRL_VLAN`, `GUEST_ANNOUNCE`, packed rings.
//!
//! # Validation of what the device writes
//!
//! | device wrote | outcome |
//! |---|---|
//! | used id not in flight, used idx run ahead | stop; reset |
//! | used len > buffer, < header, frame > MTU or < 14 bytes | drop, `rx_bad_len` |
//! | flags other than NEEDS_CSUM/DATA_VALID, any flag without GUEST_CSUM, a GSO type, checksum field outside the frame | drop, `rx_bad_header` |
//! | `num_buffers` 0, more than a max-size frame needs, or buffers missing from the used ring | drop, `rx_bad_chain` |
//! | TX used len > 0 | counted in `tx_errors` (slot reclaimed) |
//! | status `DEVICE_NEEDS_RESET` | stop at the next `enable_interrupts` |
//!
//! A dropped packet's buffers go back to the free list; the frame is never
//! delivered, and bytes of another buffer are never read in its place.

use alloc::vec::Vec;

use bitflags::bitflags;
use pv_virtq::wire::net::Hdr;
use pv_virtq::{Part, VirtQueue};
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal};

use crate::buf::BufArena;
use crate::frontend::{max_frame, DEFAULT_MTU};
use crate::{
    NetError, NetFrontend, NetInfo, RxCsum, RxFrame, RxRefill, Stats, TxCsum, ETH_HLEN, MAX_MTU,
    MIN_MTU,
};

pub use pv_virtq::wire::net::{GSO_NONE, HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM, HDR_F_RSC_INFO};

/// Bytes of `struct virtio_net_hdr` with `VERSION_1` (or `MRG_RXBUF`).
pub const HDR_LEN: usize = size_of::<Hdr>();
/// Receive queue index.
pub const RXQ: u16 = 0;
/// Transmit queue index.
pub const TXQ: u16 = 1;
/// Control queue index (without `MQ`).
pub const CTRLQ: u16 = 2;

/// Byte offsets in `struct virtio_net_config` (§5.1.4).
pub mod config {
    /// `mac[6]`.
    pub const MAC: usize = 0;
    /// `status` (le16).
    pub const STATUS: usize = 6;
    /// `max_virtqueue_pairs` (le16).
    pub const MAX_PAIRS: usize = 8;
    /// `mtu` (le16).
    pub const MTU: usize = 10;
    /// `VIRTIO_NET_S_LINK_UP`.
    pub const S_LINK_UP: u16 = 1;
}

/// Control queue classes, commands and acks (§5.1.6.5).
pub mod ctrl {
    /// `VIRTIO_NET_CTRL_RX`.
    pub const CLASS_RX: u8 = 0;
    /// `VIRTIO_NET_CTRL_RX_PROMISC`.
    pub const RX_PROMISC: u8 = 0;
    /// `VIRTIO_NET_CTRL_RX_ALLMULTI`.
    pub const RX_ALLMULTI: u8 = 1;
    /// `VIRTIO_NET_CTRL_MAC`.
    pub const CLASS_MAC: u8 = 1;
    /// `VIRTIO_NET_CTRL_MAC_ADDR_SET`.
    pub const MAC_ADDR_SET: u8 = 1;
    /// `VIRTIO_NET_OK`.
    pub const OK: u8 = 0;
    /// `VIRTIO_NET_ERR`.
    pub const ERR: u8 = 1;
}

bitflags! {
    /// Feature bits this driver knows (§5.1.3 and §6).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct VirtioNetFeatures: u64 {
        /// `VIRTIO_NET_F_CSUM`: the device completes partial checksums on TX.
        const CSUM = 1 << 0;
        /// `VIRTIO_NET_F_GUEST_CSUM`: RX may carry NEEDS_CSUM / DATA_VALID.
        const GUEST_CSUM = 1 << 1;
        /// `VIRTIO_NET_F_MTU`.
        const MTU = 1 << 3;
        /// `VIRTIO_NET_F_MAC`.
        const MAC = 1 << 5;
        /// `VIRTIO_NET_F_MRG_RXBUF`.
        const MRG_RXBUF = 1 << 15;
        /// `VIRTIO_NET_F_STATUS`.
        const STATUS = 1 << 16;
        /// `VIRTIO_NET_F_CTRL_VQ`.
        const CTRL_VQ = 1 << 17;
        /// `VIRTIO_NET_F_CTRL_RX`.
        const CTRL_RX = 1 << 18;
        /// `VIRTIO_NET_F_CTRL_MAC_ADDR`.
        const CTRL_MAC_ADDR = 1 << 23;
        /// `VIRTIO_F_EVENT_IDX`.
        const EVENT_IDX = 1 << 29;
        /// `VIRTIO_F_VERSION_1`.
        const VERSION_1 = 1 << 32;
        /// `VIRTIO_F_ACCESS_PLATFORM`.
        const ACCESS_PLATFORM = 1 << 33;
    }
}

/// `struct virtio_net_hdr`, decoded (the wire form is
/// [`pv_virtq::wire::net::Hdr`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// `hdr_len`.
    pub hdr_len: u16,
    /// `gso_size`.
    pub gso_size: u16,
    /// `csum_start`.
    pub csum_start: u16,
    /// `csum_offset`.
    pub csum_offset: u16,
    /// `num_buffers` (RX with `MRG_RXBUF`; 0 on TX).
    pub num_buffers: u16,
}

impl NetHdr {
    /// Wire bytes.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let h = Hdr {
            flags: self.flags,
            gso_type: self.gso_type,
            hdr_len: self.hdr_len.into(),
            gso_size: self.gso_size.into(),
            csum_start: self.csum_start.into(),
            csum_offset: self.csum_offset.into(),
            num_buffers: self.num_buffers.into(),
        };
        zerocopy::transmute!(h)
    }

    /// Decode wire bytes (any value decodes; validation is separate).
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let h: Hdr = zerocopy::transmute!(*b);
        Self {
            flags: h.flags,
            gso_type: h.gso_type,
            hdr_len: h.hdr_len.get(),
            gso_size: h.gso_size.get(),
            csum_start: h.csum_start.get(),
            csum_offset: h.csum_offset.get(),
            num_buffers: h.num_buffers.get(),
        }
    }
}

/// What the driver asks for; the device may grant less.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioNetConfig {
    /// Entries per queue (rounded down to a power of two and the device's
    /// maximum).
    pub queue_size: u16,
    /// RX refill policy (`low_water` is clamped to the queue size).
    pub refill: RxRefill,
    /// Bytes per RX buffer with `MRG_RXBUF` (header included; at least 256).
    /// Without it each buffer holds a whole frame.
    pub mrg_buf_len: usize,
    /// MAC to use if the device does not offer `MAC`.
    pub fallback_mac: [u8; 6],
    /// Features to leave out even when offered (tests, tuning).
    pub refuse: VirtioNetFeatures,
}

impl Default for VirtioNetConfig {
    fn default() -> Self {
        Self {
            queue_size: 256,
            refill: RxRefill::default(),
            mrg_buf_len: 2048,
            // Locally administered, unicast.
            fallback_mac: [0x02, 0x00, 0x00, 0x00, 0x00, 0x01],
            refuse: VirtioNetFeatures::empty(),
        }
    }
}

/// Status reads after writing 0 before declaring the reset failed.
const RESET_POLLS: usize = 1024;
/// Config-generation retries.
const CONFIG_RETRIES: usize = 16;
/// Used-ring polls waiting for a control command's answer.
const CTRL_POLLS: usize = 1 << 16;

/// Packet buffers in the HAL's DMA memory, so a HAL that bounces other
/// memory (e.g. pv-linux's) shares them in place; heap memory if the HAL
/// cannot provide that many pages at once.
fn dma_arena<H: Hal>(count: usize, len: usize) -> Result<BufArena, NetError> {
    /// # Safety
    ///
    /// As for [`crate::buf::FreePages`]: `(paddr, vaddr, pages)` came from
    /// one `H::dma_alloc(pages)`.
    unsafe fn free<H: Hal>(paddr: u64, vaddr: core::ptr::NonNull<u8>, pages: usize) {
        // SAFETY: the caller passes back one `dma_alloc` result, once.
        unsafe { H::dma_dealloc(paddr, vaddr, pages) };
    }
    let alloc = |pages: usize| {
        let (paddr, vaddr) = H::dma_alloc(pages, BufferDirection::Both);
        // The HALs in this workspace report failure as physical address 0.
        (paddr != 0).then_some((paddr, vaddr))
    };
    // SAFETY: `Hal::dma_alloc` returns zeroed, page-aligned pages owned by
    // the caller until `dma_dealloc`.
    unsafe { BufArena::from_pages(count, len, alloc, free::<H>) }
}

/// The queues and buffers of one bring-up.
#[derive(Debug)]
struct Rings<H: Hal> {
    rx: VirtQueue<H>,
    tx: VirtQueue<H>,
    ctrl: Option<VirtQueue<H>>,
    rx_bufs: BufArena,
    tx_bufs: BufArena,
    /// Slot 0: command out (class, cmd, data); slot 1: ack byte in.
    ctrl_bufs: BufArena,
    rx_free: Vec<u32>,
    tx_free: Vec<u32>,
    ctrl_busy: bool,
    /// Frames queued since the last flush.
    tx_unflushed: bool,
}

/// A virtio-net frontend; see the module docs.
#[derive(Debug)]
pub struct VirtioNet<H: Hal, T: Transport> {
    transport: T,
    cfg: VirtioNetConfig,
    negotiated: VirtioNetFeatures,
    info: NetInfo,
    rings: Option<Rings<H>>,
    rx_buf_len: usize,
    mrg: bool,
    /// Assembly space for frames spread over several buffers.
    scratch: Vec<u8>,
    fault: Option<NetError>,
    stats: Stats,
}

impl<H: Hal, T: Transport> VirtioNet<H, T> {
    /// Initialise the device behind `transport` (§3.1.1), bring its queues
    /// up and post every RX buffer.
    pub fn new(transport: T, cfg: VirtioNetConfig) -> Result<Self, NetError> {
        if transport.device_type() != DeviceType::Network {
            return Err(NetError::Transport);
        }
        let mut me = Self {
            transport,
            cfg,
            negotiated: VirtioNetFeatures::empty(),
            info: NetInfo::default(),
            rings: None,
            rx_buf_len: 0,
            mrg: false,
            scratch: Vec::new(),
            fault: None,
            stats: Stats::default(),
        };
        if let Err(e) = me.bring_up() {
            me.transport.set_status(DeviceStatus::FAILED);
            return Err(e);
        }
        Ok(me)
    }

    fn supported(&self) -> VirtioNetFeatures {
        VirtioNetFeatures::all() - (self.cfg.refuse - VirtioNetFeatures::VERSION_1)
    }

    fn bring_up(&mut self) -> Result<(), NetError> {
        let f = self.transport.begin_init(self.supported());
        if !self
            .transport
            .get_status()
            .contains(DeviceStatus::FEATURES_OK)
            || !f.contains(VirtioNetFeatures::VERSION_1)
        {
            // Legacy devices (10-byte header, no FEATURES_OK) are refused.
            return Err(NetError::DeviceFailed);
        }
        self.negotiated = f;
        let t = &self.transport;
        let mut snap = None;
        for _ in 0..CONFIG_RETRIES {
            let gen = t.read_config_generation();
            let mac: [u8; 6] = t
                .read_config_space(config::MAC)
                .map_err(|_| NetError::Transport)?;
            let mtu: u16 = t
                .read_config_space(config::MTU)
                .map_err(|_| NetError::Transport)?;
            if t.read_config_generation() == gen {
                snap = Some((mac, u16::from_le(mtu)));
                break;
            }
        }
        let Some((mac, mtu)) = snap else {
            return Err(NetError::DeviceFailed);
        };
        let mtu = if f.contains(VirtioNetFeatures::MTU) && (MIN_MTU..=MAX_MTU).contains(&mtu) {
            mtu
        } else {
            DEFAULT_MTU
        };
        let mac = if f.contains(VirtioNetFeatures::MAC) {
            mac
        } else {
            self.cfg.fallback_mac
        };
        self.mrg = f.contains(VirtioNetFeatures::MRG_RXBUF);
        self.rx_buf_len = if self.mrg {
            self.cfg.mrg_buf_len.clamp(256, 65536)
        } else {
            HDR_LEN + max_frame(mtu)
        };
        let event_idx = f.contains(VirtioNetFeatures::EVENT_IDX);
        let want = self.cfg.queue_size.max(2);
        let want = 1u16 << (15 - want.leading_zeros());
        let make = |t: &mut T, q: u16| -> Result<VirtQueue<H>, NetError> {
            let max = t.max_queue_size(q).min(u32::from(want));
            if max < 2 {
                return Err(NetError::Transport);
            }
            let size = 1u16 << (31 - max.leading_zeros());
            let vq = VirtQueue::<H>::new(q, size, event_idx, false)?;
            let (d, a, u) = vq.addresses();
            t.queue_set(q, u32::from(size), d, a, u);
            Ok(vq)
        };
        let rx = make(&mut self.transport, RXQ)?;
        let tx = make(&mut self.transport, TXQ)?;
        let ctrl = if f.contains(VirtioNetFeatures::CTRL_VQ) {
            Some(make(&mut self.transport, CTRLQ)?)
        } else {
            None
        };
        let rx_bufs = dma_arena::<H>(usize::from(rx.size()), self.rx_buf_len)?;
        let tx_bufs = dma_arena::<H>(usize::from(tx.size()), HDR_LEN + max_frame(mtu))?;
        let ctrl_bufs = dma_arena::<H>(2, 16)?;
        self.info = NetInfo {
            mac,
            mtu,
            tx_csum: f.contains(VirtioNetFeatures::CSUM),
            rx_csum: f.contains(VirtioNetFeatures::GUEST_CSUM),
            link_status: f.contains(VirtioNetFeatures::STATUS),
            rx_slots: rx.size(),
            tx_slots: tx.size(),
            event_idx,
        };
        let rings = Rings {
            rx_free: (0..u32::from(rx.size())).rev().collect(),
            tx_free: (0..u32::from(tx.size())).rev().collect(),
            rx,
            tx,
            ctrl,
            rx_bufs,
            tx_bufs,
            ctrl_bufs,
            ctrl_busy: false,
            tx_unflushed: false,
        };
        self.rings = Some(rings);
        self.transport.finish_init();
        self.refill(true);
        Ok(())
    }

    /// Negotiated features.
    pub fn negotiated(&self) -> VirtioNetFeatures {
        self.negotiated
    }

    /// The transport (e.g. to acknowledge interrupts).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Change the refill policy.
    pub fn set_refill(&mut self, refill: RxRefill) {
        self.cfg.refill = refill;
    }

    /// [`NetFrontend::enable_interrupts`] for a choice of queues: arm
    /// receive and/or transmit completions (the other stays suppressed),
    /// then re-check the armed ones. Returns true if work is already
    /// pending on an armed queue (poll again instead of sleeping). A runtime
    /// that only needs to wake for transmit completions when its transmit
    /// slots ran out arms `tx` only then, and saves an interrupt per burst.
    pub fn enable_interrupts_on(&mut self, rx: bool, tx: bool) -> Result<bool, NetError> {
        self.check()?;
        if self
            .transport
            .get_status()
            .contains(DeviceStatus::DEVICE_NEEDS_RESET)
        {
            return Err(self.stop(NetError::DeviceFailed));
        }
        let Some(r) = self.rings.as_mut() else {
            return Err(NetError::Stopped);
        };
        let rx_pending = rx && r.rx.enable_interrupts();
        let tx_pending = tx && r.tx.enable_interrupts();
        Ok(rx_pending || tx_pending)
    }

    /// Completions published on the receive / transmit queue and not yet
    /// polled: a plain look at the used indices (no fence, no device
    /// access), for diagnostics such as "was work already there when the
    /// sleep timed out?". Not validated: the next poll does that.
    pub fn completions_pending(&self, rx: bool, tx: bool) -> bool {
        self.rings
            .as_ref()
            .is_some_and(|r| (rx && r.rx.has_used()) || (tx && r.tx.has_used()))
    }

    /// RX buffers posted to the device now.
    pub fn rx_posted(&self) -> u16 {
        self.rings.as_ref().map_or(0, |r| r.rx.in_flight())
    }

    /// Test and fuzz access to a queue.
    #[cfg(feature = "test-utils")]
    pub fn queue(&self, q: u16) -> Option<&VirtQueue<H>> {
        let r = self.rings.as_ref()?;
        match q {
            RXQ => Some(&r.rx),
            TXQ => Some(&r.tx),
            _ => r.ctrl.as_ref(),
        }
    }

    fn stop(&mut self, e: NetError) -> NetError {
        if self.fault.is_none() {
            log::error!("virtio-net: stopping after device fault: {e}");
            self.stats.stops += 1;
        }
        *self.fault.get_or_insert(e)
    }

    fn check(&self) -> Result<(), NetError> {
        match self.fault {
            Some(_) => Err(NetError::Stopped),
            None => Ok(()),
        }
    }

    /// Post free RX buffers if the posted count is at or below the low-water
    /// mark (or always, with `force`); one kick decision for the batch.
    fn refill(&mut self, force: bool) {
        let Some(r) = self.rings.as_mut() else { return };
        let low = self.cfg.refill.low_water.min(r.rx.size());
        if !force && r.rx.in_flight() > low {
            return;
        }
        let mut posted = 0u64;
        while let Some(&i) = r.rx_free.last() {
            let buf = r.rx_bufs.raw(i as usize, self.rx_buf_len);
            // SAFETY: slot `i` is ours (on the free list: not posted), lives
            // in `rx_bufs` until the queue is drained (reset / drop both
            // drain before the arena goes), and nothing touches it until its
            // token comes back from `pop` or `drain`.
            match unsafe { r.rx.add(&[Part::In(buf)], i) } {
                Ok(_) => {
                    r.rx_free.pop();
                    posted += 1;
                }
                Err(_) => break,
            }
        }
        self.stats.rx_posted += posted;
        if posted > 0 {
            if r.rx.kick_needed() {
                self.transport.notify(RXQ);
                self.stats.kicks += 1;
            } else {
                self.stats.kicks_suppressed += 1;
            }
        }
    }

    /// Set promiscuous mode (needs `CTRL_RX`).
    pub fn set_promisc(&mut self, on: bool) -> Result<(), NetError> {
        if !self.negotiated.contains(VirtioNetFeatures::CTRL_RX) {
            return Err(NetError::Unsupported);
        }
        self.ctrl(ctrl::CLASS_RX, ctrl::RX_PROMISC, &[u8::from(on)])
    }

    /// Set all-multicast mode (needs `CTRL_RX`).
    pub fn set_allmulti(&mut self, on: bool) -> Result<(), NetError> {
        if !self.negotiated.contains(VirtioNetFeatures::CTRL_RX) {
            return Err(NetError::Unsupported);
        }
        self.ctrl(ctrl::CLASS_RX, ctrl::RX_ALLMULTI, &[u8::from(on)])
    }

    /// Change the MAC address (needs `CTRL_MAC_ADDR`).
    pub fn set_mac(&mut self, mac: [u8; 6]) -> Result<(), NetError> {
        if !self
            .negotiated
            .contains(VirtioNetFeatures::CTRL_MAC_ADDR | VirtioNetFeatures::CTRL_VQ)
        {
            return Err(NetError::Unsupported);
        }
        self.ctrl(ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET, &mac)?;
        self.info.mac = mac;
        Ok(())
    }

    /// Take the answer to the control command in flight, if there is one.
    fn ctrl_reap(&mut self) -> Result<Option<bool>, NetError> {
        let Some(r) = self.rings.as_mut() else {
            return Err(NetError::Stopped);
        };
        let Some(q) = r.ctrl.as_mut() else {
            return Err(NetError::Unsupported);
        };
        match q.pop() {
            Ok(Some(u)) => {
                r.ctrl_busy = false;
                // SAFETY: the command came back: slot 1 is not shared.
                let ack = unsafe { r.ctrl_bufs.slot(1) }[0];
                let ok = u.len.is_ok_and(|l| l >= 1) && ack == ctrl::OK;
                if ok {
                    self.stats.ctrl_ok += 1;
                } else {
                    self.stats.ctrl_err += 1;
                    log::warn!("virtio-net: control command refused (ack {ack})");
                }
                Ok(Some(ok))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(self.stop(e.into())),
        }
    }

    /// Run one control command; the device answers synchronously on the
    /// kick in QEMU, and within [`CTRL_POLLS`] polls otherwise.
    fn ctrl(&mut self, class: u8, cmd: u8, data: &[u8]) -> Result<(), NetError> {
        self.check()?;
        let busy = self.rings.as_ref().is_some_and(|r| r.ctrl_busy);
        if busy && self.ctrl_reap()?.is_none() {
            return Err(NetError::CtrlBusy);
        }
        let Some(r) = self.rings.as_mut() else {
            return Err(NetError::Stopped);
        };
        let Some(q) = r.ctrl.as_mut() else {
            return Err(NetError::Unsupported);
        };
        if data.len() > 14 {
            return Err(NetError::Unsupported);
        }
        // SAFETY: no command is in flight, so neither slot is shared.
        let out = unsafe { r.ctrl_bufs.slot_mut(0) };
        out[0] = class;
        out[1] = cmd;
        out[2..2 + data.len()].copy_from_slice(data);
        // SAFETY: as above.
        let ack = unsafe { r.ctrl_bufs.slot_mut(1) };
        ack[0] = 0xFF;
        let parts = [
            Part::Out(r.ctrl_bufs.raw(0, 2 + data.len())),
            Part::In(r.ctrl_bufs.raw(1, 1)),
        ];
        // SAFETY: both slots live in `ctrl_bufs` until the queue is drained
        // and are not touched until the command comes back (`ctrl_busy`).
        unsafe { q.add(&parts, 0) }?;
        r.ctrl_busy = true;
        if q.kick_needed() {
            self.transport.notify(CTRLQ);
            self.stats.kicks += 1;
        }
        for _ in 0..CTRL_POLLS {
            if let Some(ok) = self.ctrl_reap()? {
                return if ok {
                    Ok(())
                } else {
                    Err(NetError::CtrlFailed)
                };
            }
            core::hint::spin_loop();
        }
        self.stats.ctrl_err += 1;
        Err(NetError::CtrlFailed)
    }
}

/// Judge a first RX buffer's header for a frame of `frame_len` bytes.
fn header_ok(h: &NetHdr, guest_csum: bool, frame_len: usize) -> Option<RxCsum> {
    if h.gso_type != GSO_NONE {
        return None;
    }
    if h.flags != 0 && !guest_csum {
        return None;
    }
    match h.flags {
        0 => Some(RxCsum::None),
        HDR_F_DATA_VALID => Some(RxCsum::Valid),
        HDR_F_NEEDS_CSUM => {
            let end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
            if end > frame_len || usize::from(h.csum_start) < ETH_HLEN {
                return None;
            }
            Some(RxCsum::Partial {
                start: h.csum_start,
                offset: h.csum_offset,
            })
        }
        _ => None,
    }
}

/// Outcome of taking one packet off the RX used ring.
enum Taken {
    Empty,
    /// Dropped and counted.
    Dropped,
    /// A frame: in buffer `idx` at `12..12+len`, or (merged) in `scratch`.
    Single(usize, usize, RxCsum),
    Merged(RxCsum),
}

impl<H: Hal, T: Transport> VirtioNet<H, T> {
    /// Take one packet (all its buffers) off the RX used ring.
    fn take_rx(&mut self) -> Result<Taken, NetError> {
        let guest_csum = self.negotiated.contains(VirtioNetFeatures::GUEST_CSUM);
        let maxf = max_frame(self.info.mtu);
        let mrg = self.mrg;
        let buf_len = self.rx_buf_len;
        let Some(r) = self.rings.as_mut() else {
            return Err(NetError::Stopped);
        };
        let u = match r.rx.pop() {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(Taken::Empty),
            Err(e) => return Err(self.stop(e.into())),
        };
        let idx = u.token as usize;
        r.rx_free.push(u.token);
        let len = match u.len {
            Ok(l) if l as usize >= HDR_LEN => l as usize,
            _ => {
                self.stats.rx_bad_len += 1;
                log::warn!("virtio-net: rx buffer with bad length {:?}", u.len);
                return Ok(Taken::Dropped);
            }
        };
        // SAFETY: buffer `idx` came back from `pop`: not shared any more.
        let first = unsafe { r.rx_bufs.slot(idx) };
        let mut hb = [0u8; HDR_LEN];
        hb.copy_from_slice(&first[..HDR_LEN]);
        let h = NetHdr::from_bytes(&hb);
        let nb = if mrg { usize::from(h.num_buffers) } else { 1 };
        let max_bufs = (HDR_LEN + maxf).div_ceil(buf_len);
        if nb == 0 || nb > max_bufs {
            // Too many for a max-size frame: the rest of the packet's
            // buffers (those already published, no more) go with it, so
            // their data is not misread as headers of new packets.
            let extra = (nb.saturating_sub(1)).min(usize::from(r.rx.used_pending()));
            for _ in 0..extra {
                match r.rx.pop() {
                    Ok(Some(u2)) => r.rx_free.push(u2.token),
                    Ok(None) => break,
                    Err(e) => return Err(self.stop(e.into())),
                }
            }
            self.stats.rx_bad_chain += 1;
            log::warn!("virtio-net: implausible num_buffers {nb}");
            return Ok(Taken::Dropped);
        }
        if nb == 1 {
            let flen = len - HDR_LEN;
            if !(ETH_HLEN..=maxf).contains(&flen) {
                self.stats.rx_bad_len += 1;
                return Ok(Taken::Dropped);
            }
            return match header_ok(&h, guest_csum, flen) {
                Some(c) => Ok(Taken::Single(idx, flen, c)),
                None => {
                    self.stats.rx_bad_header += 1;
                    log::warn!("virtio-net: rx header out of spec: {h:?}");
                    Ok(Taken::Dropped)
                }
            };
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&first[HDR_LEN..len]);
        let mut bad_len = false;
        for _ in 1..nb {
            let u2 = match r.rx.pop() {
                Ok(Some(u2)) => u2,
                Ok(None) => {
                    // The device publishes a packet's buffers together.
                    self.stats.rx_bad_chain += 1;
                    log::warn!("virtio-net: num_buffers {nb} but buffers missing");
                    return Ok(Taken::Dropped);
                }
                Err(e) => return Err(self.stop(e.into())),
            };
            r.rx_free.push(u2.token);
            match u2.len {
                Ok(l) if !bad_len => {
                    // SAFETY: buffer came back from `pop`: not shared.
                    let b = unsafe { r.rx_bufs.slot(u2.token as usize) };
                    self.scratch.extend_from_slice(&b[..l as usize]);
                }
                _ => bad_len = true,
            }
        }
        let flen = self.scratch.len();
        if bad_len || !(ETH_HLEN..=maxf).contains(&flen) {
            self.stats.rx_bad_len += 1;
            return Ok(Taken::Dropped);
        }
        match header_ok(&h, guest_csum, flen) {
            Some(c) => Ok(Taken::Merged(c)),
            None => {
                self.stats.rx_bad_header += 1;
                Ok(Taken::Dropped)
            }
        }
    }
}

impl<H: Hal, T: Transport> NetFrontend for VirtioNet<H, T> {
    fn info(&self) -> NetInfo {
        self.info
    }

    fn link_up(&mut self) -> bool {
        if !self.negotiated.contains(VirtioNetFeatures::STATUS) {
            return true;
        }
        self.transport
            .read_config_space::<u16>(config::STATUS)
            .is_ok_and(|s| u16::from_le(s) & config::S_LINK_UP != 0)
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
            let end = usize::from(c.start) + usize::from(c.offset) + 2;
            if end > frame.len() {
                return Err(NetError::BadChecksumRequest);
            }
        }
        if self.rings.as_ref().is_some_and(|r| r.tx_free.is_empty()) {
            self.poll_tx()?;
        }
        let dev_csum = self.info.tx_csum;
        let Some(r) = self.rings.as_mut() else {
            return Err(NetError::Stopped);
        };
        let Some(&i) = r.tx_free.last() else {
            return Err(NetError::TxFull);
        };
        // SAFETY: slot `i` is on the free list: not shared with the device.
        let slot = unsafe { r.tx_bufs.slot_mut(i as usize) };
        let mut h = NetHdr::default();
        slot[HDR_LEN..HDR_LEN + frame.len()].copy_from_slice(frame);
        match csum {
            Some(c) if dev_csum => {
                h.flags = HDR_F_NEEDS_CSUM;
                h.csum_start = c.start;
                h.csum_offset = c.offset;
            }
            Some(c) => {
                crate::csum::complete(
                    &mut slot[HDR_LEN..HDR_LEN + frame.len()],
                    usize::from(c.start),
                    usize::from(c.offset),
                );
                self.stats.tx_csum_sw += 1;
            }
            None => {}
        }
        slot[..HDR_LEN].copy_from_slice(&h.to_bytes());
        let buf = r.tx_bufs.raw(i as usize, HDR_LEN + frame.len());
        // SAFETY: slot `i` lives in `tx_bufs` until the queue is drained and
        // is not touched again until its token comes back from `pop`/`drain`.
        unsafe { r.tx.add(&[Part::Out(buf)], i) }?;
        r.tx_free.pop();
        r.tx_unflushed = true;
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += frame.len() as u64;
        Ok(())
    }

    fn flush_tx(&mut self) -> Result<bool, NetError> {
        self.check()?;
        let Some(r) = self.rings.as_mut() else {
            return Err(NetError::Stopped);
        };
        if !core::mem::take(&mut r.tx_unflushed) {
            return Ok(false);
        }
        if r.tx.kick_needed() {
            self.transport.notify(TXQ);
            self.stats.kicks += 1;
            Ok(true)
        } else {
            self.stats.kicks_suppressed += 1;
            Ok(false)
        }
    }

    fn tx_space(&self) -> usize {
        self.rings.as_ref().map_or(0, |r| r.tx_free.len())
    }

    fn poll_tx(&mut self) -> Result<usize, NetError> {
        self.check()?;
        let mut n = 0;
        loop {
            let Some(r) = self.rings.as_mut() else {
                return Err(NetError::Stopped);
            };
            match r.tx.pop() {
                Ok(Some(u)) => {
                    r.tx_free.push(u.token);
                    if u.len.is_err() {
                        self.stats.tx_errors += 1;
                        log::warn!("virtio-net: tx completion with length {:?}", u.len);
                    }
                    n += 1;
                }
                Ok(None) => return Ok(n),
                Err(e) => return Err(self.stop(e.into())),
            }
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
            let (data, csum): (&[u8], RxCsum) = match self.take_rx()? {
                Taken::Empty => break,
                Taken::Dropped => continue,
                Taken::Single(idx, len, c) => {
                    let Some(r) = self.rings.as_ref() else { break };
                    // SAFETY: the buffer came back from `pop` and stays off
                    // the device until the refill below, after `f` returns.
                    let b = unsafe { r.rx_bufs.slot(idx) };
                    (&b[HDR_LEN..HDR_LEN + len], c)
                }
                Taken::Merged(c) => (&self.scratch[..], c),
            };
            let len = data.len();
            f(RxFrame {
                data,
                csum,
                gso: None,
            });
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += len as u64;
            n += 1;
        }
        self.refill(false);
        Ok(n)
    }

    fn enable_interrupts(&mut self) -> Result<bool, NetError> {
        self.enable_interrupts_on(true, true)
    }

    fn disable_interrupts(&mut self) {
        if let Some(r) = self.rings.as_mut() {
            r.rx.disable_interrupts();
            r.tx.disable_interrupts();
        }
    }

    fn fault(&self) -> Option<NetError> {
        self.fault
    }

    fn stats(&self) -> Stats {
        self.stats
    }

    fn reset(&mut self) -> Result<(), NetError> {
        // Writing 0 resets the device (§2.1.2); it must then not touch the
        // queues. Wait (bounded) until it reads back 0 before taking the
        // buffers back: a device that will not reset still owns them.
        self.transport.set_status(DeviceStatus::empty());
        let mut reset = false;
        for _ in 0..RESET_POLLS {
            if self.transport.get_status().is_empty() {
                reset = true;
                break;
            }
            core::hint::spin_loop();
        }
        if !reset {
            return Err(self.stop(NetError::DeviceFailed));
        }
        self.release();
        self.fault = None;
        if let Err(e) = self.bring_up() {
            self.transport.set_status(DeviceStatus::FAILED);
            return Err(self.stop(e));
        }
        self.stats.resets += 1;
        Ok(())
    }
}

impl<H: Hal, T: Transport> VirtioNet<H, T> {
    /// Take every buffer back (the device is reset) and free the rings.
    fn release(&mut self) {
        if let Some(mut r) = self.rings.take() {
            r.rx.drain(&mut |_| {});
            r.tx.drain(&mut |_| {});
            if let Some(c) = r.ctrl.as_mut() {
                c.drain(&mut |_| {});
            }
            // Queues (DMA) and arenas drop here, after the drains.
        }
    }
}

impl<H: Hal, T: Transport> Drop for VirtioNet<H, T> {
    fn drop(&mut self) {
        // The device must stop using the queues and buffers before their
        // memory is freed.
        self.transport.set_status(DeviceStatus::empty());
        self.release();
    }
}
