//! virtio-balloon (virtio 1.2 §5.5) on a `virtio-drivers` [`Transport`] and
//! the validated split virtqueue every pvdrivers frontend shares
//! ([`pv_virtq::VirtQueue`]).
//!
//! # Queues
//!
//! - `inflateq` (0) and `deflateq` (1): one device-readable buffer of le32
//!   4 KiB page-frame numbers, at most [`Limits::batch_frames`] of them
//!   ([`FRAMES_PER_BATCH`], Linux's 256, unless the glue asks for more: the
//!   spec sets no limit per buffer and QEMU's device takes any length).
//! - `statsq` (2, with `STATS_VQ`): one device-readable buffer of 10-byte
//!   entries (`tag` le16, `val` le64). The driver posts it at start; the
//!   device *returns* it to ask for fresh stats; the driver refills and
//!   re-posts it ([`VirtioBalloon::supply_stats`]). A return while the
//!   driver holds the buffer is a stats request out of turn: a device fault.
//! - `reporting_vq` (with `PAGE_REPORTING`): one chain of up to
//!   [`REPORT_MAX_RANGES`] device-readable descriptors, each *naming* a free
//!   range (the device discards the memory behind it, it does not read it).
//!
//! Queue numbering: devices and Linux number the queues that exist densely
//! (QEMU creates `statsq` always, `free_page_vq` when it offers
//! `FREE_PAGE_HINT`; Linux skips queues of features it did not negotiate),
//! where the spec's table has fixed numbers. The two agree as long as every
//! offered queue feature is negotiated, so: `reporting_vq` follows the last
//! negotiated queue, and `PAGE_REPORTING` is refused when the device also
//! offers `FREE_PAGE_HINT` (which this driver never negotiates), where the
//! conventions disagree.
//!
//! # Features
//!
//! Negotiated when offered: `MUST_TELL_HOST`, `STATS_VQ`, `DEFLATE_ON_OOM`,
//! `PAGE_REPORTING`, `PAGE_POISON` (only when the glue says it poisons free
//! pages: [`VirtioBalloonConfig::poison`]), `VERSION_1`,
//! `ACCESS_PLATFORM`. Refused: `FREE_PAGE_HINT` (migration hinting is not
//! this driver's job), `INDIRECT_DESC` (no chain needs it) and
//! `EVENT_IDX` (each queue carries one buffer at a time, so there are no
//! batches of kicks or interrupts to suppress).
//!
//! # Against a hostile device
//!
//! The queue checks every used element (see [`pv_virtq`]): a completion
//! while nothing is outstanding, or a used index run ahead of what is in
//! flight ([`BalloonError::UnexpectedCompletion`]), or one naming a
//! descriptor that is not the head of the outstanding buffer
//! ([`BalloonError::WrongCompletion`]), stops the balloon
//! ([`BalloonError::needs_reset`]) and nothing the used ring says is
//! counted. A non-zero used length (every buffer here is device-readable,
//! so the device writes nothing) is a warning. Each queue has one buffer
//! and so carries one batch at a time: the ledger plans batch by batch.
//! `num_pages` is clamped to guest memory and the floor; `actual` is ours
//! and never read back.
//!
//! # Reset and drop
//!
//! [`VirtioBalloon::reset`] resets the device, which ends its record of the
//! balloon, and hands every page (held or in flight) back to the glue, then
//! starts over from an empty balloon. Drop resets the device before the
//! queue memory is freed; pages still held are dropped with the balloon
//! (the glue's page type decides what that means), so deflate first for an
//! orderly exit. Buffers in flight at a reset or drop are handed back to
//! the [`Hal`] (`unshare`) once the device was reset.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;

use bitflags::bitflags;
use pv_virtq::{Part, Used, VirtQueue, VirtqError};
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};
use virtio_drivers::Hal;

#[cfg(doc)]
use crate::ledger::FRAMES_PER_BATCH;
use crate::ledger::{Counters, Event, GuestPage, Ledger, Limits, Plan, Status, FRAME_SIZE};
use crate::stats::{MemStats, StatTag, STATS_MAX_BYTES};
use crate::BalloonError;

/// Descriptors per queue. One buffer is outstanding per queue; the
/// reporting chain needs one descriptor per range. A device whose queues
/// are smaller is refused.
pub const QUEUE_SIZE: usize = 32;
/// Most ranges in one free-page report (Linux's `PAGE_REPORTING_CAPACITY`).
pub const REPORT_MAX_RANGES: usize = 32;
/// `inflateq`.
pub const INFLATEQ: u16 = 0;
/// `deflateq`.
pub const DEFLATEQ: u16 = 1;
/// `statsq` (when `STATS_VQ` is negotiated).
pub const STATSQ: u16 = 2;

/// Byte offsets in `struct virtio_balloon_config` (§5.5.4). Every field is
/// little-endian, legacy devices included.
pub mod config {
    /// `num_pages`: the target balloon size in 4 KiB pages (device writes).
    pub const NUM_PAGES: usize = 0;
    /// `actual`: pages in the balloon (driver writes).
    pub const ACTUAL: usize = 4;
    /// `free_page_hint_cmd_id` (unused: `FREE_PAGE_HINT` is refused).
    pub const FREE_PAGE_HINT_CMD_ID: usize = 8;
    /// `poison_val` (driver writes, with `PAGE_POISON`).
    pub const POISON_VAL: usize = 12;
    /// Bytes of config space.
    pub const LEN: usize = 16;
}

bitflags! {
    /// Feature bits this driver knows (§5.5.3 and §6).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct VirtioFeatures: u64 {
        /// `VIRTIO_BALLOON_F_MUST_TELL_HOST`.
        const MUST_TELL_HOST = 1 << 0;
        /// `VIRTIO_BALLOON_F_STATS_VQ`.
        const STATS_VQ = 1 << 1;
        /// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
        const DEFLATE_ON_OOM = 1 << 2;
        /// `VIRTIO_BALLOON_F_FREE_PAGE_HINT` (never negotiated).
        const FREE_PAGE_HINT = 1 << 3;
        /// `VIRTIO_BALLOON_F_PAGE_POISON`.
        const PAGE_POISON = 1 << 4;
        /// `VIRTIO_BALLOON_F_PAGE_REPORTING`.
        const PAGE_REPORTING = 1 << 5;
        /// `VIRTIO_F_INDIRECT_DESC` (never negotiated).
        const INDIRECT_DESC = 1 << 28;
        /// `VIRTIO_F_EVENT_IDX` (never negotiated; see the module docs).
        const EVENT_IDX = 1 << 29;
        /// `VIRTIO_F_VERSION_1`.
        const VERSION_1 = 1 << 32;
        /// `VIRTIO_F_ACCESS_PLATFORM`.
        const ACCESS_PLATFORM = 1 << 33;
    }
}

impl VirtioFeatures {
    /// What this driver may negotiate.
    pub const SUPPORTED: Self = Self::MUST_TELL_HOST
        .union(Self::STATS_VQ)
        .union(Self::DEFLATE_ON_OOM)
        .union(Self::PAGE_POISON)
        .union(Self::PAGE_REPORTING)
        .union(Self::VERSION_1)
        .union(Self::ACCESS_PLATFORM);
}

/// A virtio device ID (virtio 1.2 §5, the device-type table) as the bus
/// names it: the glue reads it from the bus (PCI vendor and device ID,
/// [`VirtioDeviceId::from_pci`]; the MMIO `DeviceID` register) and hands it
/// to [`VirtioBalloon::new`], which drives only
/// [`VirtioDeviceId::TRADITIONAL_BALLOON`].
///
/// Why the glue must say: virtio-drivers' [`Transport::device_type`] maps
/// both ID 5 ("memory ballooning (traditional)") and ID 13 ("memory
/// balloon", for which the spec defines no interface) to the same
/// `DeviceType::MemoryBalloon`, so the transport cannot tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioDeviceId(pub u32);

impl VirtioDeviceId {
    /// ID 5: the traditional memory balloon this core speaks.
    pub const TRADITIONAL_BALLOON: Self = Self(5);

    /// The device ID of a PCI function (virtio 1.2 §4.1.2.1): modern
    /// devices are `0x1040 + ID`, transitional ones have the fixed IDs of
    /// the spec's table. `None`: not a virtio function, or ID 0 (reserved).
    pub fn from_pci(vendor: u16, device: u16) -> Option<Self> {
        const VIRTIO_VENDOR: u16 = 0x1AF4;
        if vendor != VIRTIO_VENDOR {
            return None;
        }
        let id = match device {
            0x1041..=0x107F => u32::from(device - 0x1040),
            0x1000 => 1,
            0x1001 => 2,
            0x1002 => 5,
            0x1003 => 3,
            0x1004 => 8,
            0x1005 => 4,
            0x1009 => 9,
            _ => return None,
        };
        Some(Self(id))
    }
}

/// What the glue configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioBalloonConfig {
    /// Guest memory, floor and page size.
    pub limits: Limits,
    /// Features to leave out even when offered (`VERSION_1` cannot be).
    pub refuse: VirtioFeatures,
    /// `Some(v)`: the guest fills free pages with the byte pattern `v`
    /// (page poisoning / init-on-free); negotiate `PAGE_POISON` and tell the
    /// device. `None`: refuse `PAGE_POISON`.
    pub poison: Option<u32>,
    /// Stats for the buffer posted at start (`MEMTOT` is filled in from the
    /// limits when absent).
    pub initial_stats: MemStats,
}

impl VirtioBalloonConfig {
    /// Defaults for `limits`: every feature, no poisoning.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            refuse: VirtioFeatures::empty(),
            poison: None,
            initial_stats: MemStats::default(),
        }
    }
}

/// A free range of guest memory for free-page reporting: the device may
/// discard what is behind it until the report completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeRange {
    /// First byte (4 KiB aligned), as the [`Hal`] maps it for sharing.
    pub ptr: NonNull<u8>,
    /// Length in bytes (a non-zero multiple of 4 KiB).
    pub len: usize,
}

/// Set up queue `index` on the transport: `QUEUE_SIZE` entries, no
/// EVENT_IDX, no indirect tables.
fn new_queue<H: Hal, T: Transport>(t: &mut T, index: u16) -> Result<VirtQueue<H>, BalloonError> {
    if t.queue_used(index) || t.max_queue_size(index) < QUEUE_SIZE as u32 {
        return Err(BalloonError::Transport);
    }
    let vq = VirtQueue::new(index, QUEUE_SIZE as u16, false, false)
        .map_err(|_| BalloonError::Transport)?;
    let (d, a, u) = vq.addresses();
    t.queue_set(index, QUEUE_SIZE as u32, d, a, u);
    Ok(vq)
}

/// What a queue's fault means for the balloon: the device completed more
/// than was outstanding (index run ahead, or a buffer completed again), or
/// named a descriptor that heads no outstanding buffer.
fn completion_fault(queue: u16, e: VirtqError) -> BalloonError {
    match e {
        VirtqError::UnknownId { .. } => BalloonError::WrongCompletion { queue },
        _ => BalloonError::UnexpectedCompletion { queue },
    }
}

/// The used length of a completion (the queue flags a length beyond the
/// chain's device-writable bytes, which here are none; the caller warns on
/// any non-zero length).
fn used_len(u: &Used) -> u32 {
    match u.len {
        Ok(len) | Err(VirtqError::BadLength { len, .. }) => len,
        Err(_) => u32::MAX,
    }
}

/// Take back the completion of a queue's one outstanding buffer, if any.
fn pop_one<H: Hal>(vq: &mut VirtQueue<H>, queue: u16) -> Result<Option<u32>, BalloonError> {
    match vq.pop() {
        Ok(None) => Ok(None),
        Ok(Some(u)) => Ok(Some(used_len(&u))),
        Err(e) => Err(completion_fault(queue, e)),
    }
}

/// One queue and its one buffer.
#[derive(Debug)]
struct Slot<H: Hal> {
    index: u16,
    vq: VirtQueue<H>,
    /// The PFN array or stats buffer (boxed: its address is stable while the
    /// device reads it).
    buf: Box<[u8]>,
    /// Bytes of `buf` posted.
    len: usize,
    /// The outstanding buffer's head.
    token: Option<u16>,
}

impl<H: Hal> Slot<H> {
    fn new<T: Transport>(t: &mut T, index: u16, bytes: usize) -> Result<Self, BalloonError> {
        Ok(Self {
            index,
            vq: new_queue(t, index)?,
            buf: vec![0u8; bytes].into_boxed_slice(),
            len: 0,
            token: None,
        })
    }

    /// Post `buf[..len]`; notify the device if it wants to be.
    fn post<T: Transport>(&mut self, t: &mut T, len: usize) -> Result<(), BalloonError> {
        if self.token.is_some() {
            return Err(BalloonError::Busy);
        }
        let Some(bytes) = self.buf.get_mut(..len) else {
            return Err(BalloonError::Transport);
        };
        if bytes.is_empty() {
            return Err(BalloonError::Transport);
        }
        let part = Part::Out(NonNull::from(bytes));
        // SAFETY: `buf` is a heap allocation owned by this slot that is
        // neither moved, freed nor accessed while `token` is `Some`: every
        // writer checks `token` first, `take` clears it only once the queue
        // gave the chain back, and the box is only dropped after the device
        // is reset (`VirtioBalloon::reset`/`drop` set status 0 and drain the
        // queue before dropping slots). The device only reads it (`Out`).
        let head = unsafe { self.vq.add(&[part], 0) }.map_err(|_| BalloonError::Transport)?;
        self.len = len;
        self.token = Some(head);
        if self.vq.kick_needed() {
            t.notify(self.index);
        }
        Ok(())
    }

    /// Take the outstanding buffer back if the device completed it.
    /// `Ok(None)`: nothing used yet. `Ok(Some(len))`: the used length.
    fn take(&mut self) -> Result<Option<u32>, BalloonError> {
        let used = pop_one(&mut self.vq, self.index)?;
        if used.is_some() {
            // The queue hands back only chains in flight: the one buffer.
            self.token = None;
        }
        Ok(used)
    }
}

/// The reporting queue: the chain names the glue's free ranges.
#[derive(Debug)]
struct ReportSlot<H: Hal> {
    index: u16,
    vq: VirtQueue<H>,
    ranges: Vec<FreeRange>,
    token: Option<u16>,
}

impl<H: Hal> ReportSlot<H> {
    /// # Safety
    ///
    /// `ranges` meet [`VirtioBalloon::report_free`]'s contract.
    unsafe fn post<T: Transport>(
        &mut self,
        t: &mut T,
        ranges: Vec<FreeRange>,
    ) -> Result<(), BalloonError> {
        let parts: Vec<Part> = ranges
            .iter()
            .map(|r| Part::Out(NonNull::slice_from_raw_parts(r.ptr, r.len)))
            .collect();
        // SAFETY: the caller guarantees each range is memory the guest owns,
        // valid for its length, that nothing else touches until the report
        // completes; `take` (or a reset, which drains the queue) ends that
        // only once the queue gave the chain back. The device only reads
        // the ranges (`Out`).
        let head = unsafe { self.vq.add(&parts, 0) }.map_err(|_| BalloonError::Transport)?;
        self.ranges = ranges;
        self.token = Some(head);
        if self.vq.kick_needed() {
            t.notify(self.index);
        }
        Ok(())
    }

    fn take(&mut self) -> Result<Option<(u32, Vec<FreeRange>)>, BalloonError> {
        let Some(len) = pop_one(&mut self.vq, self.index)? else {
            return Ok(None);
        };
        self.token = None;
        Ok(Some((len, core::mem::take(&mut self.ranges))))
    }
}

/// Most config-generation retries before giving up on a device whose
/// config space never holds still.
const CONFIG_RETRIES: usize = 16;

/// A virtio-balloon driver; see the module docs and the crate docs for the
/// loop that drives it.
#[derive(Debug)]
pub struct VirtioBalloon<H: Hal, T: Transport, P: GuestPage> {
    transport: T,
    cfg: VirtioBalloonConfig,
    negotiated: VirtioFeatures,
    ledger: Ledger,
    inflate: Option<Slot<H>>,
    deflate: Option<Slot<H>>,
    stats: Option<Slot<H>>,
    report: Option<ReportSlot<H>>,
    held: Vec<P>,
    inflating: Vec<P>,
    deflating: Vec<P>,
    fault: Option<BalloonError>,
    counters: Counters,
}

impl<H: Hal, T: Transport, P: GuestPage> VirtioBalloon<H, T, P> {
    /// Initialise the device behind `transport` (§3.1.1): features, queues,
    /// DRIVER_OK, the first stats buffer, and the first target. `id` is the
    /// device ID the bus gives (see [`VirtioDeviceId`]); any but the
    /// traditional balloon is refused before the device is touched.
    pub fn new(
        transport: T,
        id: VirtioDeviceId,
        cfg: VirtioBalloonConfig,
    ) -> Result<Self, BalloonError> {
        if id != VirtioDeviceId::TRADITIONAL_BALLOON {
            return Err(BalloonError::NotTraditionalBalloon { id: id.0 });
        }
        let ledger = Ledger::new(cfg.limits)?;
        if transport.device_type() != DeviceType::MemoryBalloon {
            return Err(BalloonError::Transport);
        }
        let mut me = Self {
            transport,
            cfg,
            negotiated: VirtioFeatures::empty(),
            ledger,
            inflate: None,
            deflate: None,
            stats: None,
            report: None,
            held: Vec::new(),
            inflating: Vec::new(),
            deflating: Vec::new(),
            fault: None,
            counters: Counters::default(),
        };
        // On failure `me` is dropped, which resets the device before the
        // queues it may have been given are freed.
        me.bring_up()?;
        Ok(me)
    }

    fn bring_up(&mut self) -> Result<(), BalloonError> {
        // Read before negotiating: the reporting queue's number depends on
        // whether the device offers FREE_PAGE_HINT (see the module docs).
        let offered = VirtioFeatures::from_bits_retain(self.transport.read_device_features());
        let mut want = VirtioFeatures::SUPPORTED - (self.cfg.refuse - VirtioFeatures::VERSION_1);
        if offered.contains(VirtioFeatures::FREE_PAGE_HINT) {
            want.remove(VirtioFeatures::PAGE_REPORTING);
        }
        if self.cfg.poison.is_none() {
            want.remove(VirtioFeatures::PAGE_POISON);
        }
        let f = self.transport.begin_init(want);
        if !self
            .transport
            .get_status()
            .contains(DeviceStatus::FEATURES_OK)
        {
            return Err(BalloonError::DeviceFailed);
        }
        self.negotiated = f;
        if let (true, Some(v)) = (f.contains(VirtioFeatures::PAGE_POISON), self.cfg.poison) {
            self.transport
                .write_config_space(config::POISON_VAL, v.to_le())
                .map_err(|_| BalloonError::Transport)?;
        }
        let t = &mut self.transport;
        // Sized once for the batch of the limits validated in `new`
        // (`set_floor` keeps the batch).
        let batch = self.ledger.limits.batch_frames;
        self.inflate = Some(Slot::new(t, INFLATEQ, 4 * batch)?);
        self.deflate = Some(Slot::new(t, DEFLATEQ, 4 * batch)?);
        let mut next = STATSQ;
        self.stats = if f.contains(VirtioFeatures::STATS_VQ) {
            next += 1;
            Some(Slot::new(t, STATSQ, STATS_MAX_BYTES)?)
        } else {
            None
        };
        self.report = if f.contains(VirtioFeatures::PAGE_REPORTING) {
            Some(ReportSlot {
                index: next,
                vq: new_queue(t, next)?,
                ranges: Vec::new(),
                token: None,
            })
        } else {
            None
        };
        self.transport.finish_init();
        // §5.5.6.3: after initialising, the driver makes a stats buffer
        // available.
        if self.stats.is_some() {
            let s = self.cfg.initial_stats;
            self.post_stats(&s)?;
        }
        self.write_actual()?;
        let mut sink = |_| {};
        self.read_target(&mut sink)?;
        Ok(())
    }

    /// Negotiated features.
    pub fn negotiated(&self) -> VirtioFeatures {
        self.negotiated
    }

    /// The transport (e.g. to acknowledge interrupts).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Balloon size, target and pages in flight.
    pub fn status(&self) -> Status {
        self.ledger.st
    }

    /// Limits in force.
    pub fn limits(&self) -> Limits {
        self.ledger.limits
    }

    /// Counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The fault that stopped the balloon, if any.
    pub fn fault(&self) -> Option<BalloonError> {
        self.fault
    }

    /// Pages the balloon holds (acknowledged).
    pub fn held_pages(&self) -> usize {
        self.held.len()
    }

    /// The reporting queue's index, when `PAGE_REPORTING` was negotiated.
    pub fn reporting_queue(&self) -> Option<u16> {
        self.report.as_ref().map(|r| r.index)
    }

    /// Change the floor (4 KiB frames kept out of the balloon). A balloon
    /// already above the new maximum is deflated by [`Self::plan`].
    pub fn set_floor(&mut self, floor_frames: u64) -> Result<(), BalloonError> {
        self.ledger.set_floor(floor_frames)
    }

    /// Allow inflation again after [`Self::oom_deflate`] held it off.
    pub fn resume_inflate(&mut self) {
        self.ledger.st.oom_hold = false;
    }

    fn stop(&mut self, e: BalloonError) -> BalloonError {
        if self.fault.is_none() {
            log::error!("virtio-balloon: stopping after device fault: {e}");
            self.counters.stops += 1;
        }
        *self.fault.get_or_insert(e)
    }

    fn warn<F: FnMut(Event<P>)>(&mut self, e: BalloonError, sink: &mut F) {
        log::warn!("virtio-balloon: {e}");
        match e {
            BalloonError::BadLength { .. } => self.counters.bad_lengths += 1,
            BalloonError::TargetBeyondMemory { .. } => self.counters.clamped_targets += 1,
            _ => {}
        }
        sink(Event::Warning(e));
    }

    fn write_actual(&mut self) -> Result<(), BalloonError> {
        let actual = u32::try_from(self.ledger.actual()).unwrap_or(u32::MAX);
        self.transport
            .write_config_space(config::ACTUAL, actual.to_le())
            .map_err(|_| BalloonError::Transport)
    }

    /// Read `num_pages` (one copy, generation-checked), validate, clamp.
    fn read_target<F: FnMut(Event<P>)>(&mut self, sink: &mut F) -> Result<(), BalloonError> {
        let mut value = None;
        for _ in 0..CONFIG_RETRIES {
            let gen = self.transport.read_config_generation();
            let v: u32 = self
                .transport
                .read_config_space(config::NUM_PAGES)
                .map_err(|_| BalloonError::Transport)?;
            if self.transport.read_config_generation() == gen {
                value = Some(u32::from_le(v));
                break;
            }
        }
        let Some(v) = value else {
            return Err(BalloonError::ConfigUnstable);
        };
        let (warn, changed) = self.ledger.set_target(u64::from(v));
        if let Some(w) = warn {
            if changed {
                self.warn(w, sink);
            }
        }
        if changed {
            self.counters.target_changes += 1;
            sink(Event::TargetChanged {
                frames: self.ledger.st.target,
            });
        }
        Ok(())
    }

    /// Take in everything the device has done: the target (config space),
    /// inflate and deflate acknowledgements (deflated pages come back as
    /// [`Event::Released`]), stats requests, completed reports. Call it on
    /// every interrupt (config or queue) and before [`Self::plan`].
    ///
    /// Returns the fault that stopped the balloon, if any; events delivered
    /// before it stay delivered.
    pub fn poll<F: FnMut(Event<P>)>(&mut self, sink: &mut F) -> Result<(), BalloonError> {
        if let Some(e) = self.fault {
            return Err(e);
        }
        match self.poll_inner(sink) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.stop(e)),
        }
    }

    fn poll_inner<F: FnMut(Event<P>)>(&mut self, sink: &mut F) -> Result<(), BalloonError> {
        if self
            .transport
            .get_status()
            .contains(DeviceStatus::DEVICE_NEEDS_RESET)
        {
            return Err(BalloonError::DeviceFailed);
        }
        self.read_target(sink)?;
        let per = self.ledger.limits.frames_per_page();
        let mut actual_changed = false;

        // Each loop runs at most twice: once for the buffer outstanding,
        // and once more only to catch a completion beyond it (an error).
        while let Some(len) = take_slot(&mut self.inflate)? {
            self.check_len(INFLATEQ, len, sink);
            let frames = self.inflating.len() as u64 * per;
            self.ledger.st.inflating = self.ledger.st.inflating.saturating_sub(frames);
            self.ledger.st.held = self.ledger.st.held.saturating_add(frames);
            self.counters.inflated_frames += frames;
            self.held.append(&mut self.inflating);
            actual_changed = true;
        }
        while let Some(len) = take_slot(&mut self.deflate)? {
            self.check_len(DEFLATEQ, len, sink);
            let frames = self.deflating.len() as u64 * per;
            self.ledger.st.deflating = self.ledger.st.deflating.saturating_sub(frames);
            self.counters.deflated_frames += frames;
            for p in self.deflating.drain(..) {
                sink(Event::Released(p));
            }
            actual_changed = true;
        }
        while let Some(len) = take_slot(&mut self.stats)? {
            self.check_len(STATSQ, len, sink);
            sink(Event::StatsRequested);
        }
        while let Some(r) = self.report.as_mut() {
            let q = r.index;
            let Some((len, ranges)) = r.take()? else {
                break;
            };
            self.check_len(q, len, sink);
            self.counters.reports += 1;
            for range in ranges {
                sink(Event::Reported(range));
            }
        }
        if actual_changed {
            self.write_actual()?;
        }
        Ok(())
    }

    fn check_len<F: FnMut(Event<P>)>(&mut self, queue: u16, len: u32, sink: &mut F) {
        if len != 0 {
            self.warn(BalloonError::BadLength { queue, len }, sink);
        }
    }

    /// The next step toward the target (call after [`Self::poll`]).
    pub fn plan(&self) -> Plan {
        if self.fault.is_some() {
            return Plan::Idle;
        }
        let busy = |s: &Option<Slot<H>>| s.as_ref().is_none_or(|s| s.token.is_some());
        self.ledger
            .plan(busy(&self.inflate), busy(&self.deflate), self.held.len())
    }

    fn check_page(&self, p: &P) -> Result<(), BalloonError> {
        let addr = p.phys_addr();
        let l = &self.ledger.limits;
        let last_pfn = (addr / FRAME_SIZE).saturating_add(l.frames_per_page() - 1);
        if !addr.is_multiple_of(l.page_size) || last_pfn > u64::from(u32::MAX) {
            return Err(BalloonError::BadPage { addr });
        }
        Ok(())
    }

    /// Put pages in the balloon: they are posted on `inflateq` and taken
    /// from `pages` (all of them, or none on error). They count as held once
    /// the device acknowledges them (a later [`Self::poll`]). At most
    /// [`Limits::pages_per_batch`] pages, never beyond the floor.
    pub fn inflate(&mut self, pages: &mut Vec<P>) -> Result<usize, BalloonError> {
        if self.fault.is_some() {
            return Err(BalloonError::Stopped);
        }
        if pages.is_empty() {
            return Ok(0);
        }
        let max = self.ledger.limits.pages_per_batch();
        if pages.len() > max {
            return Err(BalloonError::TooManyPages {
                given: pages.len(),
                max,
            });
        }
        if self.inflate.as_ref().is_none_or(|s| s.token.is_some()) {
            return Err(BalloonError::Busy);
        }
        let frames = self.ledger.check_inflate(pages.len())?;
        for p in pages.iter() {
            self.check_page(p)?;
        }
        let len = self.fill_pfns(true, pages)?;
        let t = &mut self.transport;
        let Some(slot) = self.inflate.as_mut() else {
            return Err(BalloonError::Busy);
        };
        slot.post(t, len)?;
        self.ledger.st.inflating += frames;
        let n = pages.len();
        self.inflating.append(pages);
        Ok(n)
    }

    /// Write the frame numbers of `pages` into the inflate or deflate
    /// buffer; returns its length in bytes.
    fn fill_pfns(&mut self, inflate: bool, pages: &[P]) -> Result<usize, BalloonError> {
        let per = self.ledger.limits.frames_per_page();
        let slot = if inflate {
            self.inflate.as_mut()
        } else {
            self.deflate.as_mut()
        };
        let Some(slot) = slot else {
            return Err(BalloonError::Busy);
        };
        let mut off = 0;
        for p in pages {
            let first = p.phys_addr() / FRAME_SIZE;
            for i in 0..per {
                let pfn = u32::try_from(first + i).map_err(|_| BalloonError::BadPage {
                    addr: p.phys_addr(),
                })?;
                let Some(dst) = slot.buf.get_mut(off..off + 4) else {
                    return Err(BalloonError::TooManyPages {
                        given: pages.len(),
                        max: slot.buf.len() / 4 / per as usize,
                    });
                };
                dst.copy_from_slice(&pfn.to_le_bytes());
                off += 4;
            }
        }
        Ok(off)
    }

    /// Take up to `pages` pages out of the balloon, as far as the target
    /// allows. The device is told first: with `MUST_TELL_HOST` the pages
    /// come back as [`Event::Released`] once it acknowledges; without it they
    /// are released through `sink` at once (§5.5.6.1). Returns the pages
    /// posted.
    pub fn deflate<F: FnMut(Event<P>)>(
        &mut self,
        pages: usize,
        sink: &mut F,
    ) -> Result<usize, BalloonError> {
        let per = self.ledger.limits.frames_per_page();
        let over = self
            .ledger
            .projected()
            .saturating_sub(self.ledger.st.target)
            .div_ceil(per);
        self.deflate_inner(pages.min(over as usize), sink)
    }

    /// Deflate under memory pressure: up to `pages` pages, even below the
    /// target, when the device offered `DEFLATE_ON_OOM` (§5.5.6.1: the driver
    /// may then use balloon pages when the guest needs them). Inflation is
    /// held off until the target changes or [`Self::resume_inflate`].
    pub fn oom_deflate<F: FnMut(Event<P>)>(
        &mut self,
        pages: usize,
        sink: &mut F,
    ) -> Result<usize, BalloonError> {
        if !self.negotiated.contains(VirtioFeatures::DEFLATE_ON_OOM) {
            return Err(BalloonError::NotNegotiated);
        }
        let n = self.deflate_inner(pages, sink)?;
        if n > 0 {
            self.ledger.st.oom_hold = true;
            self.counters.oom_deflates += 1;
        }
        Ok(n)
    }

    fn deflate_inner<F: FnMut(Event<P>)>(
        &mut self,
        pages: usize,
        sink: &mut F,
    ) -> Result<usize, BalloonError> {
        if self.fault.is_some() {
            return Err(BalloonError::Stopped);
        }
        if self.deflate.as_ref().is_none_or(|s| s.token.is_some()) {
            return Err(BalloonError::Busy);
        }
        let n = pages
            .min(self.held.len())
            .min(self.ledger.limits.pages_per_batch());
        if n == 0 {
            return Ok(0);
        }
        let batch: Vec<P> = self.held.split_off(self.held.len() - n);
        let len = match self.fill_pfns(false, &batch) {
            Ok(l) => l,
            Err(e) => {
                self.held.extend(batch);
                return Err(e);
            }
        };
        let t = &mut self.transport;
        let posted = match self.deflate.as_mut() {
            Some(slot) => slot.post(t, len),
            None => Err(BalloonError::Busy),
        };
        if let Err(e) = posted {
            self.held.extend(batch);
            return Err(e);
        }
        let frames = n as u64 * self.ledger.limits.frames_per_page();
        self.ledger.st.held = self.ledger.st.held.saturating_sub(frames);
        if self.negotiated.contains(VirtioFeatures::MUST_TELL_HOST) {
            self.ledger.st.deflating += frames;
            self.deflating = batch;
        } else {
            // The device was told (the buffer is posted); without
            // MUST_TELL_HOST the pages may be reused before it acknowledges.
            self.counters.deflated_frames += frames;
            for p in batch {
                sink(Event::Released(p));
            }
            self.write_actual()?;
        }
        Ok(n)
    }

    /// Answer a stats request ([`Event::StatsRequested`]): fill the buffer
    /// with `stats` and give it back to the device.
    pub fn supply_stats(&mut self, stats: &MemStats) -> Result<(), BalloonError> {
        if self.fault.is_some() {
            return Err(BalloonError::Stopped);
        }
        match &self.stats {
            None => Err(BalloonError::NotNegotiated),
            Some(s) if s.token.is_some() => Err(BalloonError::StatsNotRequested),
            Some(_) => self.post_stats(stats),
        }
    }

    fn post_stats(&mut self, stats: &MemStats) -> Result<(), BalloonError> {
        let mut s = *stats;
        if s.get(StatTag::MemTot).is_none() {
            s.set(
                StatTag::MemTot,
                self.ledger.limits.guest_frames.saturating_mul(FRAME_SIZE),
            );
        }
        let t = &mut self.transport;
        let Some(slot) = self.stats.as_mut() else {
            return Err(BalloonError::NotNegotiated);
        };
        let len = s.encode(&mut slot.buf);
        slot.post(t, len)?;
        self.counters.stats_posted += 1;
        Ok(())
    }

    /// Report free memory (`PAGE_REPORTING`): the ranges are posted and
    /// taken from `ranges` (all, or none on error); each comes back as
    /// [`Event::Reported`] when the device is done with it. At most
    /// [`REPORT_MAX_RANGES`].
    ///
    /// # Safety
    ///
    /// Each range must be memory the guest owns, valid for reads of its
    /// length, that nothing reads or writes from this call until the range
    /// comes back as [`Event::Reported`] (or the balloon is reset or
    /// dropped): the device may discard its contents (after the report its
    /// bytes are unspecified unless `PAGE_POISON` says otherwise).
    pub unsafe fn report_free(
        &mut self,
        ranges: &mut Vec<FreeRange>,
    ) -> Result<usize, BalloonError> {
        if self.fault.is_some() {
            return Err(BalloonError::Stopped);
        }
        let Some(slot) = self.report.as_mut() else {
            return Err(BalloonError::NotNegotiated);
        };
        if slot.token.is_some() {
            return Err(BalloonError::Busy);
        }
        if ranges.is_empty() {
            return Ok(0);
        }
        if ranges.len() > REPORT_MAX_RANGES {
            return Err(BalloonError::TooManyPages {
                given: ranges.len(),
                max: REPORT_MAX_RANGES,
            });
        }
        let frame = FRAME_SIZE as usize;
        if ranges.iter().any(|r| {
            r.len == 0
                || !r.len.is_multiple_of(frame)
                || !(r.ptr.as_ptr() as usize).is_multiple_of(frame)
                || u32::try_from(r.len).is_err()
        }) {
            return Err(BalloonError::BadRange);
        }
        let n = ranges.len();
        let taken = core::mem::take(ranges);
        // SAFETY: forwarded from this function's contract.
        unsafe { slot.post(&mut self.transport, taken) }?;
        Ok(n)
    }

    /// Take the device back after a fault: reset it (which ends its record
    /// of the balloon), hand every page and range back through `sink`, and
    /// start over with an empty balloon.
    pub fn reset<F: FnMut(Event<P>)>(&mut self, sink: &mut F) -> Result<(), BalloonError> {
        self.transport.set_status(DeviceStatus::empty());
        // The device no longer touches the queues or buffers: free them.
        self.drain_queues();
        self.inflate = None;
        self.deflate = None;
        self.stats = None;
        if let Some(r) = self.report.take() {
            for range in r.ranges {
                sink(Event::Reported(range));
            }
        }
        for p in self
            .held
            .drain(..)
            .chain(self.inflating.drain(..))
            .chain(self.deflating.drain(..))
        {
            sink(Event::Released(p));
        }
        let limits = self.ledger.limits;
        self.ledger = Ledger::new(limits)?;
        self.fault = None;
        if let Err(e) = self.bring_up() {
            self.transport.set_status(DeviceStatus::FAILED);
            return Err(self.stop(e));
        }
        self.counters.resets += 1;
        Ok(())
    }
}

impl<H: Hal, T: Transport, P: GuestPage> VirtioBalloon<H, T, P> {
    /// After the device was reset: hand every buffer in flight back to the
    /// HAL (`unshare`); the slots keep their memory until dropped.
    fn drain_queues(&mut self) {
        let slots = [&mut self.inflate, &mut self.deflate, &mut self.stats];
        for s in slots.into_iter().flatten() {
            s.vq.drain(&mut |_| {});
            s.token = None;
        }
        if let Some(r) = self.report.as_mut() {
            r.vq.drain(&mut |_| {});
            r.token = None;
        }
    }
}

fn take_slot<H: Hal>(slot: &mut Option<Slot<H>>) -> Result<Option<u32>, BalloonError> {
    match slot {
        Some(s) => s.take(),
        None => Ok(None),
    }
}

impl<H: Hal, T: Transport, P: GuestPage> Drop for VirtioBalloon<H, T, P> {
    fn drop(&mut self) {
        // The device must stop reading the queues and buffers before their
        // memory is freed (by the slots' drops, after this).
        self.transport.set_status(DeviceStatus::empty());
        self.drain_queues();
    }
}
