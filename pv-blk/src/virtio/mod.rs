//! virtio-blk (virtio 1.2 §5.2) on a `virtio-drivers` [`Transport`] and the
//! validated split virtqueue every pvdrivers frontend shares
//! ([`pv_virtq::VirtQueue`]: id, length and used-index checks, EVENT_IDX,
//! indirect tables).
//!
//! A request is a descriptor chain: the 16-byte header (`type`, reserved,
//! `sector`, device-readable), the data buffers (device-readable for writes,
//! device-writable for reads and get-id), for discard and write-zeroes one
//! 16-byte segment (`sector`, `num_sectors`, `flags`), and the status byte
//! (device-writable). With `VIRTIO_F_INDIRECT_DESC` the chain lives in the
//! head's indirect table and takes one ring slot, so queue depth is the ring
//! size whatever the segment count.
//!
//! The header, segment and status byte of each request live in a per-head
//! block of this driver's own DMA region, named to the queue by device
//! address ([`Part::DmaOut`], [`Part::DmaIn`]): no allocation or bounce per
//! request, and the status byte is read in place, once, after the used
//! element was validated. It starts as 0xff, a value the device never
//! legitimately leaves, so a device that completes without writing it is
//! caught.
//!
//! Negotiated when offered: `RO`, `BLK_SIZE`, `SEG_MAX`, `SIZE_MAX`,
//! `FLUSH`, `MQ`, `DISCARD`, `WRITE_ZEROES`, `EVENT_IDX`, `INDIRECT_DESC`,
//! `VERSION_1`, `ACCESS_PLATFORM` (all buffers go through [`Hal::share`]).
//! Refused: packed rings, `IN_ORDER`, config-change handling (capacity is read
//! at start and at reset).

use alloc::vec;
use alloc::vec::Vec;

use bitflags::bitflags;
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};
use virtio_drivers::Hal;

use crate::frontend::{
    check_request, BlockFrontend, DeviceInfo, Features, Op, Request, Stats, Token,
};
use crate::{BlkError, OpKind, SECTOR_SIZE};
use pv_virtq::wire::blk::{DiscardWriteZeroes, ReqHeader, ReqStatus};
use pv_virtq::{DmaRegion, Part, VirtQueue};

pub use pv_virtq::wire::blk::{
    S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES,
    WZ_FLAG_UNMAP,
};

/// Byte offsets in `struct virtio_blk_config` (§5.2.4).
pub mod config {
    /// `capacity` (le64, read as two le32).
    pub const CAPACITY: usize = 0;
    /// `size_max`.
    pub const SIZE_MAX: usize = 8;
    /// `seg_max`.
    pub const SEG_MAX: usize = 12;
    /// `blk_size`.
    pub const BLK_SIZE: usize = 20;
    /// `num_queues` (le16).
    pub const NUM_QUEUES: usize = 34;
    /// `max_discard_sectors`.
    pub const MAX_DISCARD_SECTORS: usize = 36;
    /// `max_write_zeroes_sectors`.
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    /// Bytes of config space this driver reads.
    pub const LEN: usize = 60;
}

bitflags! {
    /// Feature bits this driver knows (§5.2.3 and §6).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct VirtioFeatures: u64 {
        /// `VIRTIO_BLK_F_SIZE_MAX`.
        const SIZE_MAX = 1 << 1;
        /// `VIRTIO_BLK_F_SEG_MAX`.
        const SEG_MAX = 1 << 2;
        /// `VIRTIO_BLK_F_RO`.
        const RO = 1 << 5;
        /// `VIRTIO_BLK_F_BLK_SIZE`.
        const BLK_SIZE = 1 << 6;
        /// `VIRTIO_BLK_F_FLUSH`.
        const FLUSH = 1 << 9;
        /// `VIRTIO_BLK_F_MQ`.
        const MQ = 1 << 12;
        /// `VIRTIO_BLK_F_DISCARD`.
        const DISCARD = 1 << 13;
        /// `VIRTIO_BLK_F_WRITE_ZEROES`.
        const WRITE_ZEROES = 1 << 14;
        /// `VIRTIO_F_INDIRECT_DESC`.
        const INDIRECT_DESC = 1 << 28;
        /// `VIRTIO_F_EVENT_IDX`.
        const EVENT_IDX = 1 << 29;
        /// `VIRTIO_F_VERSION_1`.
        const VERSION_1 = 1 << 32;
        /// `VIRTIO_F_ACCESS_PLATFORM`.
        const ACCESS_PLATFORM = 1 << 33;
    }
}

/// What the driver asks for; the device may grant less.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioBlkConfig {
    /// Most queues to use when the device offers `MQ`.
    pub max_queues: u16,
    /// Entries per queue (rounded down to a power of two and to the device's
    /// maximum).
    pub queue_size: u16,
    /// Features to leave out even when offered (e.g. to test without
    /// EVENT_IDX or indirect descriptors).
    pub refuse: VirtioFeatures,
}

impl Default for VirtioBlkConfig {
    fn default() -> Self {
        Self {
            max_queues: 1,
            queue_size: 256,
            refuse: VirtioFeatures::empty(),
        }
    }
}

/// Offsets inside a per-head block: the request header ([`ReqHeader`]).
pub const BLOCK_HDR: usize = 0;
/// The discard / write-zeroes segment ([`DiscardWriteZeroes`]).
pub const BLOCK_SEG: usize = BLOCK_HDR + size_of::<ReqHeader>();
/// The status byte ([`ReqStatus`]).
pub const BLOCK_STATUS: usize = BLOCK_SEG + size_of::<DiscardWriteZeroes>();
/// Bytes of a per-head block.
pub const BLOCK_SIZE: usize = 64;

/// What a request in flight needs at completion, kept by head.
#[derive(Clone, Copy, Debug)]
struct ReqMeta {
    /// Operation kind, for errors.
    op: OpKind,
    /// Data bytes moved on success.
    data: u32,
    /// True when the device writes the data (read, get-id).
    data_in: bool,
}

/// One virtqueue plus the per-head blocks of its requests.
#[derive(Debug)]
struct BlkQueue<H: Hal> {
    vq: VirtQueue<H>,
    blocks: DmaRegion<H>,
    reqs: Vec<Option<ReqMeta>>,
}

impl<H: Hal> BlkQueue<H> {
    fn new(index: u16, size: u16, event_idx: bool, indirect: bool) -> Result<Self, BlkError> {
        let vq = VirtQueue::new(index, size, event_idx, indirect)?;
        let blocks = DmaRegion::new(BLOCK_SIZE * usize::from(size))?;
        Ok(Self {
            vq,
            blocks,
            reqs: vec![None; usize::from(size)],
        })
    }
}

/// Most config-generation retries before giving up on a device whose
/// config space never holds still.
const CONFIG_RETRIES: usize = 16;
/// Status reads after writing 0 before declaring the reset failed.
const RESET_POLLS: usize = 1024;

/// A virtio-blk frontend; see the module docs.
#[derive(Debug)]
pub struct VirtioBlk<H: Hal, T: Transport> {
    transport: T,
    cfg: VirtioBlkConfig,
    queues: Vec<BlkQueue<H>>,
    negotiated: VirtioFeatures,
    info: DeviceInfo,
    size_max: u32,
    fault: Option<BlkError>,
    next_queue: usize,
    stats: Stats,
}

fn read_u32<T: Transport>(t: &T, off: usize) -> Result<u32, BlkError> {
    t.read_config_space::<u32>(off)
        .map(u32::from_le)
        .map_err(|_| BlkError::Transport)
}

impl<H: Hal, T: Transport> VirtioBlk<H, T> {
    /// Initialise the device behind `transport` (§3.1.1) and bring its
    /// queues up.
    pub fn new(transport: T, cfg: VirtioBlkConfig) -> Result<Self, BlkError> {
        if transport.device_type() != DeviceType::Block {
            return Err(BlkError::Transport);
        }
        let mut me = Self {
            transport,
            cfg,
            queues: Vec::new(),
            negotiated: VirtioFeatures::empty(),
            info: DeviceInfo::default(),
            size_max: u32::MAX,
            fault: None,
            next_queue: 0,
            stats: Stats::default(),
        };
        if let Err(e) = me.bring_up() {
            me.transport.set_status(DeviceStatus::FAILED);
            return Err(e);
        }
        Ok(me)
    }

    fn supported(&self) -> VirtioFeatures {
        // VERSION_1 cannot be refused: a driver must accept it when offered
        // (§6.1), and `begin_init` asserts so in debug builds.
        VirtioFeatures::all() - (self.cfg.refuse - VirtioFeatures::VERSION_1)
    }

    /// Feature negotiation, config, queues, DRIVER_OK. The device was reset
    /// by `begin_init` (it writes status 0 first).
    fn bring_up(&mut self) -> Result<(), BlkError> {
        let f = self.transport.begin_init(self.supported());
        if !self
            .transport
            .get_status()
            .contains(DeviceStatus::FEATURES_OK)
        {
            return Err(BlkError::DeviceFailed);
        }
        self.negotiated = f;
        let t = &self.transport;

        let mut snapshot = None;
        for _ in 0..CONFIG_RETRIES {
            let gen = t.read_config_generation();
            let lo = read_u32(t, config::CAPACITY)?;
            let hi = read_u32(t, config::CAPACITY + 4)?;
            let seg_max = read_u32(t, config::SEG_MAX)?;
            let size_max = read_u32(t, config::SIZE_MAX)?;
            let blk_size = read_u32(t, config::BLK_SIZE)?;
            let nq = read_u32(t, config::NUM_QUEUES - 2)? >> 16;
            let max_discard = if f.contains(VirtioFeatures::DISCARD) {
                read_u32(t, config::MAX_DISCARD_SECTORS)?
            } else {
                0
            };
            let max_wz = if f.contains(VirtioFeatures::WRITE_ZEROES) {
                read_u32(t, config::MAX_WRITE_ZEROES_SECTORS)?
            } else {
                0
            };
            if t.read_config_generation() == gen {
                snapshot = Some((
                    u64::from(lo) | (u64::from(hi) << 32),
                    seg_max,
                    size_max,
                    blk_size,
                    nq as u16,
                    max_discard,
                    max_wz,
                ));
                break;
            }
        }
        let Some((capacity, seg_max, size_max, blk_size, nq, max_discard, max_wz)) = snapshot
        else {
            return Err(BlkError::DeviceFailed);
        };

        // Untrusted values: clamp to what makes sense.
        let block_size = if f.contains(VirtioFeatures::BLK_SIZE)
            && blk_size >= SECTOR_SIZE as u32
            && blk_size <= 64 * 1024
            && blk_size.is_power_of_two()
        {
            blk_size
        } else {
            SECTOR_SIZE as u32
        };
        self.size_max = if f.contains(VirtioFeatures::SIZE_MAX) && size_max >= SECTOR_SIZE as u32 {
            size_max
        } else {
            u32::MAX
        };
        let nqueues = if f.contains(VirtioFeatures::MQ) {
            nq.clamp(1, self.cfg.max_queues.max(1))
        } else {
            1
        };

        let event_idx = f.contains(VirtioFeatures::EVENT_IDX);
        let indirect = f.contains(VirtioFeatures::INDIRECT_DESC);
        let want = self.cfg.queue_size.max(2);
        let want = 1u16 << (15 - want.leading_zeros());
        // After a reset the queues were drained and rebuilt empty in their
        // own memory (`reset`): a queue of the same geometry is handed to
        // the device again, so a reset allocates nothing (a Windows
        // miniport resets at DIRQL). A device that changed its queue count
        // or sizes gets new queues.
        if self.queues.len() != usize::from(nqueues) {
            self.queues.clear();
        }
        for q in 0..nqueues {
            let max = self.transport.max_queue_size(q).min(u32::from(want));
            if max < 2 {
                return Err(BlkError::Transport);
            }
            let size = 1u16 << (31 - max.leading_zeros());
            let i = usize::from(q);
            let reusable = self.queues.get(i).is_some_and(|bq| {
                bq.vq.size() == size
                    && bq.vq.event_idx() == event_idx
                    && bq.vq.indirect() == indirect
                    && bq.vq.in_flight() == 0
            });
            if !reusable {
                let bq = BlkQueue::<H>::new(q, size, event_idx, indirect)?;
                match self.queues.get_mut(i) {
                    Some(slot) => *slot = bq,
                    None => self.queues.push(bq),
                }
            }
            let (d, a, u) = self.queues[i].vq.addresses();
            self.transport.queue_set(q, u32::from(size), d, a, u);
        }
        self.transport.finish_init();

        let parts = self
            .queues
            .iter()
            .map(|q| q.vq.max_parts())
            .min()
            .unwrap_or(0);
        // Header, status and (for discard) a segment take three parts.
        let mut max_segments = parts.saturating_sub(3) as u32;
        if f.contains(VirtioFeatures::SEG_MAX) && seg_max > 0 {
            max_segments = max_segments.min(seg_max);
        }
        let features = Features {
            read_only: f.contains(VirtioFeatures::RO),
            flush: f.contains(VirtioFeatures::FLUSH),
            discard: f.contains(VirtioFeatures::DISCARD),
            secure_discard: false,
            write_zeroes: f.contains(VirtioFeatures::WRITE_ZEROES),
            get_id: true,
            event_idx,
            indirect,
        };
        self.info = DeviceInfo {
            capacity_sectors: capacity,
            block_size,
            features,
            queues: nqueues,
            queue_depth: self
                .queues
                .iter()
                .map(|q| {
                    if indirect {
                        u32::from(q.vq.size())
                    } else {
                        u32::from(q.vq.size()) / 3
                    }
                })
                .sum(),
            max_segments,
            max_discard_sectors: max_discard.max(max_wz),
        };
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

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Test and fuzz access to queue `q`.
    #[cfg(feature = "test-utils")]
    pub fn queue(&self, q: usize) -> Option<&VirtQueue<H>> {
        self.queues.get(q).map(|b| &b.vq)
    }

    /// Like [`BlockFrontend::submit`], on queue `q` (e.g. one per CPU).
    ///
    /// # Safety
    ///
    /// As for [`BlockFrontend::submit`].
    pub unsafe fn submit_on(&mut self, q: usize, req: &Request<'_>) -> Result<Token, BlkError> {
        if self.fault.is_some() {
            return Err(BlkError::Stopped);
        }
        check_request(&self.info, req)?;
        if req.buffers.len() > self.info.max_segments as usize {
            return Err(BlkError::TooManySegments {
                needed: req.buffers.len(),
                max: self.info.max_segments as usize,
            });
        }
        if req.buffers.iter().any(|b| b.len > self.size_max as usize) {
            return Err(BlkError::BadBuffer);
        }
        let Some(bq) = self.queues.get_mut(q) else {
            return Err(BlkError::BadBuffer);
        };
        let data = u32::try_from(req.data_len()).map_err(|_| BlkError::BadBuffer)?;
        let (ty, sector, data_in) = match req.op {
            Op::Read => (T_IN, req.sector, true),
            Op::Write => (T_OUT, req.sector, false),
            Op::Flush => (T_FLUSH, 0, false),
            Op::GetId => (T_GET_ID, 0, true),
            Op::Discard { .. } => (T_DISCARD, 0, false),
            Op::WriteZeroes { .. } => (T_WRITE_ZEROES, 0, false),
        };
        let seg = match req.op {
            Op::Discard { sectors, .. } => Some((sectors, 0)),
            Op::WriteZeroes { sectors, unmap } => {
                Some((sectors, if unmap { WZ_FLAG_UNMAP } else { 0 }))
            }
            _ => None,
        };
        let nparts = req.buffers.len() + 2 + usize::from(seg.is_some());
        if !bq.vq.fits(nparts) {
            return Err(BlkError::QueueFull);
        }
        let Some(head) = bq.vq.next_head() else {
            return Err(BlkError::QueueFull);
        };
        // The head's block: header, segment, status, written before the
        // chain that names them is published (`add` releases `avail.idx`).
        let b = usize::from(head) * BLOCK_SIZE;
        let blocks = &bq.blocks;
        blocks.write(b + BLOCK_HDR, &ReqHeader::new(ty, sector));
        blocks.write(b + BLOCK_STATUS, &ReqStatus { status: 0xff });
        let mut parts: Vec<Part> = Vec::with_capacity(nparts);
        parts.push(Part::DmaOut {
            paddr: blocks.paddr(b + BLOCK_HDR),
            len: size_of::<ReqHeader>() as u32,
        });
        for buf in req.buffers {
            let raw = buf.as_raw_slice();
            parts.push(if data_in {
                Part::In(raw)
            } else {
                Part::Out(raw)
            });
        }
        if let Some((sectors, flags)) = seg {
            let seg = DiscardWriteZeroes {
                sector: req.sector.into(),
                num_sectors: sectors.into(),
                flags: flags.into(),
            };
            blocks.write(b + BLOCK_SEG, &seg);
            parts.push(Part::DmaOut {
                paddr: blocks.paddr(b + BLOCK_SEG),
                len: size_of::<DiscardWriteZeroes>() as u32,
            });
        }
        parts.push(Part::DmaIn {
            paddr: blocks.paddr(b + BLOCK_STATUS),
            len: size_of::<ReqStatus>() as u32,
        });
        let token = (u32::from(bq.vq.index()) << 16) | u32::from(head);
        // SAFETY: the caller buffers: forwarded from this function's
        // contract (valid and untouched until the token is delivered, which
        // happens only after `pop` or `drain` gives them back). The block
        // parts are this queue's own DMA region, which outlives the queue's
        // use by the device (dropped after the reset in `Drop`).
        let used_head = unsafe { bq.vq.add(&parts, token) }?;
        debug_assert_eq!(used_head, head, "virtq::next_head names the head add uses");
        if let Some(slot) = bq.reqs.get_mut(usize::from(used_head)) {
            *slot = Some(ReqMeta {
                op: req.op.kind(),
                data,
                data_in,
            });
        }
        if bq.vq.kick_needed() {
            let idx = bq.vq.index();
            self.transport.notify(idx);
        }
        self.stats.submitted += 1;
        Ok(Token(token))
    }

    fn stop(&mut self, e: BlkError) -> BlkError {
        if self.fault.is_none() {
            log::error!("virtio-blk: stopping after device fault: {e}");
            self.stats.stops += 1;
        }
        *self.fault.get_or_insert(e)
    }
}

/// Judge one completion: status byte and used length (the queue already
/// checked it against the chain's device-writable bytes).
fn judge(
    req: &ReqMeta,
    len: Result<u32, pv_virtq::VirtqError>,
    writable: u32,
    status: u8,
) -> Result<usize, BlkError> {
    let len = len?;
    match status {
        S_OK => {
            // A successful read must have filled every byte plus the status.
            // (For get-id the device may write fewer bytes: the id is
            // NUL-padded.)
            if req.data_in && req.op == OpKind::Read && len != writable {
                return Err(BlkError::BadLength { len, writable });
            }
            Ok(req.data as usize)
        }
        S_IOERR => Err(BlkError::IoError),
        S_UNSUPP => Err(BlkError::DeviceUnsupported(req.op)),
        s => Err(BlkError::BadStatus {
            status: i32::from(s),
        }),
    }
}

impl<H: Hal, T: Transport> BlockFrontend for VirtioBlk<H, T> {
    fn info(&self) -> DeviceInfo {
        self.info
    }

    unsafe fn submit(&mut self, req: &Request<'_>) -> Result<Token, BlkError> {
        // Round robin over queues, starting where the last request went, to
        // the first with room.
        let n = self.queues.len().max(1);
        let start = self.next_queue % n;
        self.next_queue = self.next_queue.wrapping_add(1);
        let mut last = Err(BlkError::QueueFull);
        for i in 0..n {
            // SAFETY: forwarded from this function's contract.
            last = unsafe { self.submit_on((start + i) % n, req) };
            if !matches!(last, Err(BlkError::QueueFull)) {
                break;
            }
        }
        last
    }

    fn poll_completions<F: FnMut(Token, Result<usize, BlkError>)>(
        &mut self,
        f: &mut F,
    ) -> Result<usize, BlkError> {
        if let Some(e) = self.fault {
            return Err(e);
        }
        let mut done = 0;
        for qi in 0..self.queues.len() {
            // Bounded: each pop retires one request in flight, or fails.
            while let Some(q) = self.queues.get_mut(qi) {
                match q.vq.pop() {
                    Ok(Some(u)) => {
                        let slot = usize::from(u.head);
                        // `pop` matched the id to a chain in flight, which
                        // `submit_on` recorded; a missing record is our bug,
                        // treated like a bad id rather than trusted.
                        let Some(meta) = q.reqs.get_mut(slot).and_then(Option::take) else {
                            let e = BlkError::UnknownCompletion {
                                id: u64::from(u.head),
                            };
                            return Err(self.stop(e));
                        };
                        // Read once, after the acquire of the used index in
                        // `pop`.
                        let status = q
                            .blocks
                            .read::<ReqStatus>(slot * BLOCK_SIZE + BLOCK_STATUS)
                            .status;
                        let res = judge(&meta, u.len, u.writable, status);
                        if let Err(e) = &res {
                            if e.is_device_fault() {
                                log::warn!("virtio-blk: request {:#x} failed: {e}", u.token);
                            }
                        }
                        self.stats.count(&res);
                        f(Token(u.token), res);
                        done += 1;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(self.stop(e.into())),
                }
            }
            // Interrupt at the next completion (EVENT_IDX), for callers
            // that sleep without `prepare_wait`.
            if let Some(q) = self.queues.get_mut(qi) {
                q.vq.set_used_event();
            }
        }
        Ok(done)
    }

    fn prepare_wait(&mut self) -> Result<bool, BlkError> {
        if let Some(e) = self.fault {
            return Err(e);
        }
        if self
            .transport
            .get_status()
            .contains(DeviceStatus::DEVICE_NEEDS_RESET)
        {
            return Err(self.stop(BlkError::DeviceFailed));
        }
        let mut pending = false;
        for q in &mut self.queues {
            pending |= q.vq.enable_interrupts();
        }
        Ok(pending)
    }

    fn in_flight(&self) -> usize {
        self.queues
            .iter()
            .map(|q| usize::from(q.vq.in_flight()))
            .sum()
    }

    fn fault(&self) -> Option<BlkError> {
        self.fault
    }

    fn stats(&self) -> Stats {
        self.stats
    }

    fn reset<F: FnMut(Token, Result<usize, BlkError>)>(
        &mut self,
        f: &mut F,
    ) -> Result<(), BlkError> {
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
            self.stop(BlkError::DeviceFailed);
            return Err(BlkError::DeviceFailed);
        }
        let stats = &mut self.stats;
        for q in &mut self.queues {
            q.vq.drain(&mut |token| {
                stats.aborted += 1;
                f(Token(token), Err(BlkError::Aborted));
            });
            q.reqs.fill(None);
        }
        // No `queue_unset`: the reset already disabled the queues, and the
        // MMIO transport's unset spins on a register the device controls.
        // The drained queues stay: `bring_up` hands them to the device
        // again when the geometry holds.
        self.fault = None;
        if let Err(e) = self.bring_up() {
            self.transport.set_status(DeviceStatus::FAILED);
            return Err(self.stop(e));
        }
        self.stats.resets += 1;
        Ok(())
    }
}

impl<H: Hal, T: Transport> Drop for VirtioBlk<H, T> {
    fn drop(&mut self) {
        // The device must stop using the queues and buffers before the DMA
        // memory is freed (by the queues' own drops, after this).
        self.transport.set_status(DeviceStatus::empty());
        for q in &mut self.queues {
            q.vq.drain(&mut |_| {});
        }
    }
}
