//! A native virtio-blk driver over vhost-user: plays the VMM and the guest's
//! virtio-blk driver against a vhost-user-blk backend, without QEMU.
//!
//! Every queue is a [`BlkQueue`] that owns its ring, eventfds and a pool of
//! request slots in guest RAM (one per ring entry: header, status byte, an
//! indirect table and up to `max_transfer` bytes of data). Well-formed
//! requests are [`BlkRequest`]s laid out like Linux's driver does
//! ([`Layout::Direct`]: header, data, status descriptors; or
//! [`Layout::Indirect`]: the same three in an indirect table). Malformed
//! ones go through [`BlkQueue::submit_raw`], which publishes any chain the
//! caller builds, and [`BlkQueue::submit_bogus_head`].
//!
//! The backend is untrusted: used-ring entries are validated by
//! [`SplitQueue`](super::split::SplitQueue), and the status byte is set to
//! [`STATUS_UNWRITTEN`] before each request so a completion the device never
//! wrote a status for is visible as such.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_blk as vb;

use super::frontend::{
    FrontendError, FrontendOptions, QueueHandle, VhostUserDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use super::ram::{GuestRam, RamError};
use super::split::{write_table, ChainDesc, Descriptor, QueueError, VRING_DESC_F_NEXT};

/// Bytes per virtio-blk sector.
pub const SECTOR: u64 = 512;
/// Length of the GET_ID string.
pub const ID_LEN: usize = 20;
/// Request types (`VIRTIO_BLK_T_*`), from the virtio spec's Linux header
/// (rust-vmm's virtio-bindings): this peer imports no guest crate.
pub const T_IN: u32 = vb::VIRTIO_BLK_T_IN;
pub const T_OUT: u32 = vb::VIRTIO_BLK_T_OUT;
pub const T_FLUSH: u32 = vb::VIRTIO_BLK_T_FLUSH;
pub const T_GET_ID: u32 = vb::VIRTIO_BLK_T_GET_ID;
pub const T_DISCARD: u32 = vb::VIRTIO_BLK_T_DISCARD;
pub const T_WRITE_ZEROES: u32 = vb::VIRTIO_BLK_T_WRITE_ZEROES;
/// Status values (`VIRTIO_BLK_S_*`; one byte on the wire).
pub const S_OK: u8 = vb::VIRTIO_BLK_S_OK as u8;
pub const S_IOERR: u8 = vb::VIRTIO_BLK_S_IOERR as u8;
pub const S_UNSUPP: u8 = vb::VIRTIO_BLK_S_UNSUPP as u8;
/// What the driver puts in the status byte before submitting.
pub const STATUS_UNWRITTEN: u8 = 0xFF;

/// Feature bits (virtio 1.2 §5.2.3).
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
pub const VIRTIO_BLK_F_RO: u32 = 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
pub const VIRTIO_BLK_F_MQ: u32 = 12;
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

/// Bytes of `struct virtio_blk_config` read (up to `write_zeroes_may_unmap`
/// and its padding).
pub const CONFIG_LEN: u32 = 60;

/// Offsets inside a request slot.
const SLOT_HEADER: u64 = 0;
const SLOT_STATUS: u64 = 16;
const SLOT_TABLE: u64 = 64;
const SLOT_DATA: u64 = 4096;

/// The device's config space (virtio 1.2 §5.2.4), little-endian decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlkConfig {
    pub capacity_sectors: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: bool,
}

impl BlkConfig {
    /// Decodes the config space; missing bytes read as zero.
    pub fn parse(raw: &[u8]) -> Self {
        let mut b = [0u8; CONFIG_LEN as usize];
        let n = raw.len().min(b.len());
        b[..n].copy_from_slice(&raw[..n]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut cap = [0u8; 8];
        cap.copy_from_slice(&b[0..8]);
        Self {
            capacity_sectors: u64::from_le_bytes(cap),
            size_max: u32_at(8),
            seg_max: u32_at(12),
            blk_size: u32_at(20),
            num_queues: u16::from_le_bytes([b[34], b[35]]),
            max_discard_sectors: u32_at(36),
            max_discard_seg: u32_at(40),
            discard_sector_alignment: u32_at(44),
            max_write_zeroes_sectors: u32_at(48),
            max_write_zeroes_seg: u32_at(52),
            write_zeroes_may_unmap: b[56] != 0,
        }
    }
}

/// One range of a discard or write-zeroes request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwzRange {
    pub sector: u64,
    pub sectors: u32,
    /// Write zeroes: the device may deallocate.
    pub unmap: bool,
}

impl DwzRange {
    /// The 16-byte `struct virtio_blk_discard_write_zeroes`.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.sector.to_le_bytes());
        b[8..12].copy_from_slice(&self.sectors.to_le_bytes());
        b[12..16].copy_from_slice(&u32::from(self.unmap).to_le_bytes());
        b
    }
}

/// A well-formed virtio-blk request (the device may still refuse it, e.g.
/// out of range or unsupported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlkRequest {
    /// Read `len` bytes from `sector`.
    Read {
        sector: u64,
        len: u32,
    },
    /// Write `data` at `sector`.
    Write {
        sector: u64,
        data: Vec<u8>,
    },
    Flush,
    GetId,
    Discard(Vec<DwzRange>),
    WriteZeroes(Vec<DwzRange>),
    /// Any header, followed either by a `readable` payload or by
    /// `writable_len` bytes for the device (not both: they share the slot's
    /// data buffer), then the status byte.
    Custom {
        req_type: u32,
        sector: u64,
        readable: Vec<u8>,
        writable_len: u32,
    },
}

impl BlkRequest {
    fn header(&self) -> (u32, u64) {
        match self {
            Self::Read { sector, .. } => (T_IN, *sector),
            Self::Write { sector, .. } => (T_OUT, *sector),
            Self::Flush => (T_FLUSH, 0),
            Self::GetId => (T_GET_ID, 0),
            Self::Discard(_) => (T_DISCARD, 0),
            Self::WriteZeroes(_) => (T_WRITE_ZEROES, 0),
            Self::Custom {
                req_type, sector, ..
            } => (*req_type, *sector),
        }
    }

    fn readable(&self) -> Vec<u8> {
        match self {
            Self::Write { data, .. } => data.clone(),
            Self::Discard(r) | Self::WriteZeroes(r) => {
                r.iter().flat_map(|r| r.to_bytes()).collect()
            }
            Self::Custom { readable, .. } => readable.clone(),
            _ => Vec::new(),
        }
    }

    fn writable_len(&self) -> u32 {
        match self {
            Self::Read { len, .. } => *len,
            Self::GetId => ID_LEN as u32,
            Self::Custom { writable_len, .. } => *writable_len,
            _ => 0,
        }
    }
}

/// How a request's buffers are described to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Header, data and status as a chain of ring descriptors (3 per request).
    #[default]
    Direct,
    /// The same three descriptors in an indirect table (1 ring descriptor),
    /// as Linux does when `VIRTIO_RING_F_INDIRECT_DESC` is agreed.
    Indirect,
}

/// Identifies a submitted request.
pub type Token = u64;

/// A completed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub token: Token,
    pub queue: u16,
    /// The status byte as the device left it ([`STATUS_UNWRITTEN`] if it
    /// did not write one); `None` for raw chains.
    pub status: Option<u8>,
    /// Bytes the device says it wrote (validated against the chain).
    pub used_len: u32,
    /// Data read (reads and GET_ID with status OK), else empty.
    pub data: Vec<u8>,
    /// Time from submission to the completion being reaped.
    pub latency: Duration,
}

/// Why a driver operation failed. Variants say who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    /// The device broke the ring protocol, or the driver ran out of descriptors.
    #[error("queue {queue}: {source}")]
    Queue {
        queue: u16,
        #[source]
        source: QueueError,
    },
    #[error(transparent)]
    Ram(#[from] RamError),
    /// An eventfd operation failed on our side.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The device did not complete a request in time.
    #[error("queue {queue}: no completion within {waited:?} ({in_flight} requests in flight)")]
    Timeout {
        queue: u16,
        waited: Duration,
        in_flight: usize,
    },
    /// The device completed the request with a status other than OK.
    #[error("{what}: device returned status {status}")]
    Status { what: &'static str, status: u8 },
    /// The caller's request does not fit the driver (too large, no slot).
    #[error("request refused by the driver: {0}")]
    Request(String),
    /// No queue with this index.
    #[error("no queue {0}")]
    NoSuchQueue(u16),
}

impl DriverError {
    /// True when the backend (the other side) is at fault.
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::Queue { source, .. } => source.is_peer_fault(),
            // A non-OK status is the device's answer, not a fault.
            Self::Timeout { .. } => true,
            Self::Frontend(FrontendError::Message { .. } | FrontendError::Missing(_)) => true,
            _ => false,
        }
    }
}

/// Options of [`NativeBlkDriver::connect_with`].
#[derive(Debug, Clone)]
pub struct DriverOptions {
    pub num_queues: u16,
    pub queue_size: u16,
    /// Negotiate `VIRTIO_RING_F_EVENT_IDX` when offered.
    pub event_idx: bool,
    /// Negotiate `VIRTIO_RING_F_INDIRECT_DESC` when offered.
    pub indirect: bool,
    /// Largest data buffer of one managed request.
    pub max_transfer: u32,
    /// Bytes of scratch guest RAM for hand-built (raw) requests.
    pub scratch_bytes: u64,
}

impl DriverOptions {
    pub fn new(num_queues: u16, queue_size: u16) -> Self {
        Self {
            num_queues,
            queue_size,
            event_idx: true,
            indirect: true,
            max_transfer: 256 << 10,
            scratch_bytes: 8 << 20,
        }
    }
}

#[derive(Debug)]
enum Kind {
    /// Copy `len` bytes of data back when the status is OK.
    CopyBack {
        len: u32,
    },
    NoData,
    Raw,
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    slot: Option<u32>,
    submitted: Instant,
}

/// One queue of a [`NativeBlkDriver`]: usable from its own thread.
#[derive(Debug)]
pub struct BlkQueue {
    q: QueueHandle,
    ram: Arc<GuestRam>,
    slots_base: u64,
    slot_size: u64,
    max_transfer: u32,
    free_slots: Vec<u32>,
    pending: HashMap<Token, Pending>,
    /// Completions reaped while waiting for a particular token.
    backlog: Vec<Completion>,
    next_token: Token,
    timeout: Duration,
}

impl BlkQueue {
    /// Queue index.
    pub fn index(&self) -> u16 {
        self.q.index
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Requests submitted and not reaped.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Free request slots (managed requests in flight at most).
    pub fn free_slots(&self) -> usize {
        self.free_slots.len()
    }

    /// Timeout of the blocking helpers.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn qerr(&self, source: QueueError) -> DriverError {
        DriverError::Queue {
            queue: self.q.index,
            source,
        }
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        self.next_token
    }

    /// Lays `req` out in a free slot and adds it to the available ring
    /// without notifying the device (see [`Self::notify`]).
    pub fn enqueue(&mut self, req: &BlkRequest, layout: Layout) -> Result<Token, DriverError> {
        let readable = req.readable();
        let wlen = req.writable_len();
        let data_len = readable.len().max(wlen as usize);
        if data_len > self.max_transfer as usize || (!readable.is_empty() && wlen != 0) {
            return Err(DriverError::Request(format!(
                "{} readable + {wlen} writable bytes (max {} in one direction)",
                readable.len(),
                self.max_transfer
            )));
        }
        let Some(slot) = self.free_slots.pop() else {
            return Err(DriverError::Request("no free request slot".into()));
        };
        let r = self.lay_out(slot, req, &readable, wlen, layout);
        if r.is_err() {
            self.free_slots.push(slot);
        }
        r
    }

    fn lay_out(
        &mut self,
        slot: u32,
        req: &BlkRequest,
        readable: &[u8],
        wlen: u32,
        layout: Layout,
    ) -> Result<Token, DriverError> {
        let base = self.slots_base + u64::from(slot) * self.slot_size;
        let (req_type, sector) = req.header();
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&req_type.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        self.ram.write(base + SLOT_HEADER, &hdr)?;
        self.ram.write(base + SLOT_STATUS, &[STATUS_UNWRITTEN])?;
        let data = base + SLOT_DATA;
        let mut descs = vec![ChainDesc::readable(base + SLOT_HEADER, 16)];
        if !readable.is_empty() {
            self.ram.write(data, readable)?;
            // Length checked against max_transfer (a u32) by the caller.
            descs.push(ChainDesc::readable(data, readable.len() as u32));
        }
        if wlen > 0 {
            descs.push(ChainDesc::writable(data, wlen));
        }
        descs.push(ChainDesc::writable(base + SLOT_STATUS, 1));
        let max_used = wlen.saturating_add(1);
        let chain = match layout {
            Layout::Direct => super::split::linked(&descs),
            Layout::Indirect => {
                let n = descs.len();
                let table: Vec<Descriptor> = descs
                    .iter()
                    .enumerate()
                    .map(|(i, d)| Descriptor {
                        addr: d.addr,
                        len: d.len,
                        flags: d.flags | if i + 1 < n { VRING_DESC_F_NEXT } else { 0 },
                        next: if i + 1 < n { (i + 1) as u16 } else { 0 },
                    })
                    .collect();
                write_table(&self.ram, base + SLOT_TABLE, &table)?;
                vec![ChainDesc::indirect(base + SLOT_TABLE, n as u32)]
            }
        };
        let token = self.token();
        self.q
            .vq
            .add(&self.ram, &chain, max_used, token)
            .map_err(|e| self.qerr(e))?;
        let kind = if wlen > 0 && matches!(req, BlkRequest::Read { .. } | BlkRequest::GetId) {
            Kind::CopyBack { len: wlen }
        } else {
            Kind::NoData
        };
        self.pending.insert(
            token,
            Pending {
                kind,
                slot: Some(slot),
                submitted: Instant::now(),
            },
        );
        Ok(token)
    }

    /// Publishes everything enqueued and kicks the device if it asked for it.
    pub fn notify(&mut self) -> Result<(), DriverError> {
        let kick = self.q.vq.publish(&self.ram).map_err(|e| self.qerr(e))?;
        if kick {
            self.q.kick().map_err(|source| DriverError::Io {
                what: "kick",
                source,
            })?;
        }
        Ok(())
    }

    /// Enqueues and notifies.
    pub fn submit(&mut self, req: &BlkRequest, layout: Layout) -> Result<Token, DriverError> {
        let t = self.enqueue(req, layout)?;
        self.notify()?;
        Ok(t)
    }

    /// Publishes a hand-built chain (any addresses, lengths, flags, next
    /// pointers; see [`ChainDesc`]) and notifies. `max_used_len` bounds the
    /// used length the device may report (the chain's writable bytes).
    pub fn submit_raw(
        &mut self,
        chain: &[ChainDesc],
        max_used_len: u32,
    ) -> Result<Token, DriverError> {
        let token = self.token();
        self.q
            .vq
            .add(&self.ram, chain, max_used_len, token)
            .map_err(|e| self.qerr(e))?;
        self.pending.insert(
            token,
            Pending {
                kind: Kind::Raw,
                slot: None,
                submitted: Instant::now(),
            },
        );
        self.notify()?;
        Ok(token)
    }

    /// Publishes a head index outside the descriptor table and notifies.
    /// No completion can come for it.
    pub fn submit_bogus_head(&mut self, head: u16) -> Result<(), DriverError> {
        self.q
            .vq
            .add_bogus_head(&self.ram, head)
            .map_err(|e| self.qerr(e))?;
        self.notify()
    }

    /// Reaps every completion available now into `out`; returns how many.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize, DriverError> {
        let mut n = self.backlog.len();
        out.append(&mut self.backlog);
        while let Some(u) = self.q.vq.pop_used(&self.ram).map_err(|e| self.qerr(e))? {
            let p = self.pending.remove(&u.cookie).ok_or_else(|| {
                DriverError::Request(format!(
                    "internal: no pending request for token {}",
                    u.cookie
                ))
            })?;
            let latency = p.submitted.elapsed();
            let (status, data) = match (p.slot, &p.kind) {
                (Some(slot), kind) => {
                    let base = self.slots_base + u64::from(slot) * self.slot_size;
                    let mut st = [0u8; 1];
                    self.ram.read_into(base + SLOT_STATUS, &mut st)?;
                    let data = match kind {
                        Kind::CopyBack { len } if st[0] == S_OK => {
                            self.ram.read(base + SLOT_DATA, *len as usize)?
                        }
                        _ => Vec::new(),
                    };
                    self.free_slots.push(slot);
                    (Some(st[0]), data)
                }
                (None, _) => (None, Vec::new()),
            };
            out.push(Completion {
                token: u.cookie,
                queue: self.q.index,
                status,
                used_len: u.len,
                data,
                latency,
            });
            n += 1;
        }
        Ok(n)
    }

    /// Waits until at least one completion is available (or nothing is in
    /// flight) and reaps all available into `out`.
    pub fn wait(
        &mut self,
        out: &mut Vec<Completion>,
        timeout: Duration,
    ) -> Result<usize, DriverError> {
        let start = Instant::now();
        loop {
            let n = self.poll(out)?;
            if n > 0 || self.pending.is_empty() {
                return Ok(n);
            }
            if self
                .q
                .vq
                .enable_interrupts(&self.ram)
                .map_err(|e| self.qerr(e))?
            {
                continue;
            }
            let left = timeout.saturating_sub(start.elapsed());
            let signalled = self.q.wait_call(left).map_err(|source| DriverError::Io {
                what: "wait for call eventfd",
                source,
            })?;
            if !signalled {
                let n = self.poll(out)?;
                if n > 0 {
                    return Ok(n);
                }
                return Err(DriverError::Timeout {
                    queue: self.q.index,
                    waited: start.elapsed(),
                    in_flight: self.pending.len(),
                });
            }
        }
    }

    /// Waits for the completion of `token` (others are kept for [`Self::poll`]).
    pub fn wait_for(&mut self, token: Token, timeout: Duration) -> Result<Completion, DriverError> {
        if let Some(i) = self.backlog.iter().position(|c| c.token == token) {
            return Ok(self.backlog.remove(i));
        }
        let start = Instant::now();
        let mut got = Vec::new();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let r = self.wait(&mut got, left);
            let mut found = None;
            for c in got.drain(..) {
                if c.token == token {
                    found = Some(c);
                } else {
                    self.backlog.push(c);
                }
            }
            if let Some(c) = found {
                return Ok(c);
            }
            r?;
            if !self.pending.contains_key(&token) {
                return Err(DriverError::Request(format!(
                    "token {token} is not in flight"
                )));
            }
        }
    }

    /// Submits one request and waits for it (default timeout).
    pub fn run(&mut self, req: &BlkRequest, layout: Layout) -> Result<Completion, DriverError> {
        let t = self.submit(req, layout)?;
        self.wait_for(t, self.timeout)
    }

    fn run_ok(&mut self, what: &'static str, req: &BlkRequest) -> Result<Completion, DriverError> {
        let c = self.run(req, Layout::Direct)?;
        match c.status {
            Some(S_OK) => Ok(c),
            Some(status) => Err(DriverError::Status { what, status }),
            None => Err(DriverError::Request("internal: no status".into())),
        }
    }

    /// Reads `len` bytes at `sector`; fails unless the status is OK.
    pub fn read(&mut self, sector: u64, len: u32) -> Result<Vec<u8>, DriverError> {
        Ok(self.run_ok("read", &BlkRequest::Read { sector, len })?.data)
    }

    /// Writes `data` at `sector`; fails unless the status is OK.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), DriverError> {
        self.run_ok(
            "write",
            &BlkRequest::Write {
                sector,
                data: data.to_vec(),
            },
        )
        .map(drop)
    }

    pub fn flush(&mut self) -> Result<(), DriverError> {
        self.run_ok("flush", &BlkRequest::Flush).map(drop)
    }

    /// The device id (20 bytes, NUL-padded).
    pub fn get_id(&mut self) -> Result<[u8; ID_LEN], DriverError> {
        let c = self.run_ok("get id", &BlkRequest::GetId)?;
        let mut id = [0u8; ID_LEN];
        let n = c.data.len().min(ID_LEN);
        id[..n].copy_from_slice(&c.data[..n]);
        Ok(id)
    }

    pub fn discard(&mut self, ranges: &[DwzRange]) -> Result<(), DriverError> {
        self.run_ok("discard", &BlkRequest::Discard(ranges.to_vec()))
            .map(drop)
    }

    pub fn write_zeroes(&mut self, ranges: &[DwzRange]) -> Result<(), DriverError> {
        self.run_ok("write zeroes", &BlkRequest::WriteZeroes(ranges.to_vec()))
            .map(drop)
    }
}

/// A virtio-blk driver connected to a vhost-user-blk backend.
#[derive(Debug)]
pub struct NativeBlkDriver {
    dev: VhostUserDevice,
    config: BlkConfig,
    queues: Vec<BlkQueue>,
    scratch: (u64, u64),
}

/// Default timeout of the blocking helpers: generous, for loaded machines.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

impl NativeBlkDriver {
    /// Connects with `num_queues` queues of `queue_size` entries and the
    /// default options (EVENT_IDX and INDIRECT_DESC when offered).
    pub fn connect(socket: &Path, num_queues: u16, queue_size: u16) -> Result<Self, DriverError> {
        Self::connect_with(socket, &DriverOptions::new(num_queues, queue_size))
    }

    pub fn connect_with(socket: &Path, o: &DriverOptions) -> Result<Self, DriverError> {
        let bit = |b: u32| 1u64 << b;
        let mut wanted = bit(VIRTIO_BLK_F_SIZE_MAX)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_RO)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_MQ)
            | bit(VIRTIO_BLK_F_DISCARD)
            | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        if o.event_idx {
            wanted |= bit(VIRTIO_RING_F_EVENT_IDX);
        }
        if o.indirect {
            wanted |= bit(VIRTIO_RING_F_INDIRECT_DESC);
        }
        let slot_size = SLOT_DATA + u64::from(o.max_transfer).div_ceil(4096) * 4096;
        let slots_bytes = slot_size * u64::from(o.queue_size) * u64::from(o.num_queues);
        let mut dev = VhostUserDevice::connect(
            socket,
            &FrontendOptions {
                num_queues: o.num_queues,
                queue_size: o.queue_size,
                wanted_features: wanted,
                required_features: bit(VIRTIO_F_VERSION_1),
                config_len: CONFIG_LEN,
                buffer_bytes: slots_bytes + o.scratch_bytes,
            },
        )?;
        let config = BlkConfig::parse(dev.config());
        let base = dev.buffers_base();
        let ram = dev.ram().clone();
        let per_queue = slot_size * u64::from(o.queue_size);
        let queues = dev
            .take_queues()
            .into_iter()
            .map(|q| {
                let slots_base = base + per_queue * u64::from(q.index);
                BlkQueue {
                    q,
                    ram: ram.clone(),
                    slots_base,
                    slot_size,
                    max_transfer: o.max_transfer,
                    free_slots: (0..u32::from(o.queue_size)).rev().collect(),
                    pending: HashMap::new(),
                    backlog: Vec::new(),
                    next_token: 0,
                    timeout: DEFAULT_TIMEOUT,
                }
            })
            .collect();
        Ok(Self {
            config,
            queues,
            scratch: (base + slots_bytes, o.scratch_bytes),
            dev,
        })
    }

    /// The config space read at connect time.
    pub fn config(&self) -> &BlkConfig {
        &self.config
    }

    /// Virtio features agreed.
    pub fn features(&self) -> u64 {
        self.dev.features()
    }

    pub fn has_feature(&self, bit: u32) -> bool {
        self.dev.has_feature(bit)
    }

    /// The vhost-user connection.
    pub fn device(&mut self) -> &mut VhostUserDevice {
        &mut self.dev
    }

    /// Guest RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        self.dev.ram()
    }

    /// Scratch guest RAM for hand-built requests: (address, length). The
    /// driver never touches it.
    pub fn scratch(&self) -> (u64, u64) {
        self.scratch
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    pub fn queue(&mut self, q: u16) -> Result<&mut BlkQueue, DriverError> {
        self.queues
            .get_mut(usize::from(q))
            .ok_or(DriverError::NoSuchQueue(q))
    }

    /// Every queue, e.g. to drive each from its own thread.
    pub fn queues_mut(&mut self) -> &mut [BlkQueue] {
        &mut self.queues
    }

    /// Submits on queue `q` (direct layout).
    pub fn submit(&mut self, q: u16, req: &BlkRequest) -> Result<Token, DriverError> {
        self.queue(q)?.submit(req, Layout::Direct)
    }

    /// Waits for completions on queue `q`.
    pub fn wait(&mut self, q: u16, timeout: Duration) -> Result<Vec<Completion>, DriverError> {
        let mut out = Vec::new();
        self.queue(q)?.wait(&mut out, timeout)?;
        Ok(out)
    }

    fn q0(&mut self) -> Result<&mut BlkQueue, DriverError> {
        self.queue(0)
    }

    /// Reads on queue 0.
    pub fn read(&mut self, sector: u64, len: u32) -> Result<Vec<u8>, DriverError> {
        self.q0()?.read(sector, len)
    }

    /// Writes on queue 0.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), DriverError> {
        self.q0()?.write(sector, data)
    }

    pub fn flush(&mut self) -> Result<(), DriverError> {
        self.q0()?.flush()
    }

    pub fn get_id(&mut self) -> Result<[u8; ID_LEN], DriverError> {
        self.q0()?.get_id()
    }

    pub fn discard(&mut self, ranges: &[DwzRange]) -> Result<(), DriverError> {
        self.q0()?.discard(ranges)
    }

    pub fn write_zeroes(&mut self, ranges: &[DwzRange]) -> Result<(), DriverError> {
        self.q0()?.write_zeroes(ranges)
    }
}
