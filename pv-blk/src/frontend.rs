//! The transport-neutral API: requests, tokens, device information and the
//! [`BlockFrontend`] trait that both transports implement.

use core::fmt;
use core::ptr::NonNull;

use crate::BlkError;

/// Bytes in a protocol sector. Both virtio-blk and blkif address the disk in
/// 512-byte units whatever the logical block size.
pub const SECTOR_SIZE: usize = 512;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read into the buffers (device writes them).
    Read,
    /// Write the buffers to the disk.
    Write,
    /// Make every completed write durable.
    Flush,
    /// Discard `sectors` sectors from the request's sector; no buffers.
    Discard {
        /// Length in 512-byte sectors.
        sectors: u32,
        /// Xen `discard-secure` / virtio secure erase is not offered through
        /// discard; must be false unless the device offers it.
        secure: bool,
    },
    /// Zero `sectors` sectors; `unmap` lets the device deallocate them.
    WriteZeroes {
        /// Length in 512-byte sectors.
        sectors: u32,
        /// Allow deallocation.
        unmap: bool,
    },
    /// Read the device id string ([`ID_BYTES`] bytes) into one buffer.
    GetId,
}

/// Bytes of a virtio-blk device id (`VIRTIO_BLK_ID_BYTES`).
pub const ID_BYTES: usize = 20;

/// [`Op`] without its arguments, for errors and statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// [`Op::Read`].
    Read,
    /// [`Op::Write`].
    Write,
    /// [`Op::Flush`].
    Flush,
    /// [`Op::Discard`].
    Discard,
    /// [`Op::WriteZeroes`].
    WriteZeroes,
    /// [`Op::GetId`].
    GetId,
}

impl Op {
    /// The kind of operation.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Read => OpKind::Read,
            Op::Write => OpKind::Write,
            Op::Flush => OpKind::Flush,
            Op::Discard { .. } => OpKind::Discard,
            Op::WriteZeroes { .. } => OpKind::WriteZeroes,
            Op::GetId => OpKind::GetId,
        }
    }

    /// True for operations that change the disk.
    pub fn modifies(&self) -> bool {
        matches!(
            self,
            Op::Write | Op::Discard { .. } | Op::WriteZeroes { .. }
        )
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Flush => "flush",
            OpKind::Discard => "discard",
            OpKind::WriteZeroes => "write-zeroes",
            OpKind::GetId => "get-id",
        })
    }
}

/// One caller buffer: raw, because the device accesses it until the request
/// completes, long after any borrow would end. See [`BlockFrontend::submit`]
/// for what the caller must guarantee.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoBuf {
    /// First byte.
    pub ptr: NonNull<u8>,
    /// Length in bytes.
    pub len: usize,
}

impl IoBuf {
    /// A buffer of `len` bytes at `ptr`.
    pub fn new(ptr: NonNull<u8>, len: usize) -> Self {
        Self { ptr, len }
    }

    /// The buffer covering `s` (the borrow ends here: the caller keeps the
    /// memory alive and untouched until completion, as `submit` requires).
    pub fn from_slice(s: &mut [u8]) -> Self {
        Self {
            ptr: NonNull::from(&mut *s).cast(),
            len: s.len(),
        }
    }

    /// As a raw slice pointer.
    pub fn as_raw_slice(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }
}

/// A block request.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// What to do.
    pub op: Op,
    /// First 512-byte sector (ignored by flush and get-id).
    pub sector: u64,
    /// Data buffers in disk order (reads, writes, get-id); empty otherwise.
    pub buffers: &'a [IoBuf],
}

impl<'a> Request<'a> {
    /// A read of `buffers` from `sector`.
    pub fn read(sector: u64, buffers: &'a [IoBuf]) -> Self {
        Self {
            op: Op::Read,
            sector,
            buffers,
        }
    }

    /// A write of `buffers` at `sector`.
    pub fn write(sector: u64, buffers: &'a [IoBuf]) -> Self {
        Self {
            op: Op::Write,
            sector,
            buffers,
        }
    }

    /// A cache flush.
    pub fn flush() -> Self {
        Self {
            op: Op::Flush,
            sector: 0,
            buffers: &[],
        }
    }

    /// A discard of `sectors` sectors from `sector`.
    pub fn discard(sector: u64, sectors: u32) -> Self {
        Self {
            op: Op::Discard {
                sectors,
                secure: false,
            },
            sector,
            buffers: &[],
        }
    }

    /// Zeroing of `sectors` sectors from `sector`.
    pub fn write_zeroes(sector: u64, sectors: u32, unmap: bool) -> Self {
        Self {
            op: Op::WriteZeroes { sectors, unmap },
            sector,
            buffers: &[],
        }
    }

    /// Data bytes over all buffers (saturating).
    pub fn data_len(&self) -> usize {
        self.buffers
            .iter()
            .fold(0usize, |a, b| a.saturating_add(b.len))
    }
}

/// Names one submitted request until its completion is delivered. Opaque;
/// unique among requests in flight on one frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub(crate) u32);

impl Token {
    /// The raw value (for logs and tables indexed by token).
    pub fn raw(self) -> u32 {
        self.0
    }
}

/// Optional operations and properties the device offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// The device refuses modification.
    pub read_only: bool,
    /// Flush is offered (the device has a volatile cache). Without it writes
    /// are durable on completion and [`Op::Flush`] is refused.
    pub flush: bool,
    /// [`Op::Discard`].
    pub discard: bool,
    /// Secure discard (Xen `discard-secure`).
    pub secure_discard: bool,
    /// [`Op::WriteZeroes`].
    pub write_zeroes: bool,
    /// [`Op::GetId`].
    pub get_id: bool,
    /// Notification suppression by event index (virtio EVENT_IDX; always on
    /// Xen rings).
    pub event_idx: bool,
    /// Indirect descriptors / segments in use.
    pub indirect: bool,
}

/// Geometry and features, fixed between resets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Disk size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Logical block size in bytes (a multiple of 512).
    pub block_size: u32,
    /// Offered features.
    pub features: Features,
    /// Queues (virtio multiqueue) or rings in use.
    pub queues: u16,
    /// Requests that can be in flight at once over all queues.
    pub queue_depth: u32,
    /// Most data segments one request may carry.
    pub max_segments: u32,
    /// Largest discard or write-zeroes in sectors (0: no limit known).
    pub max_discard_sectors: u32,
}

/// Data-path counters: every error this crate logs on the data path is
/// counted here too. Monotonic from construction (a reset does not clear
/// them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests accepted by `submit`.
    pub submitted: u64,
    /// Completions delivered with `Ok`.
    pub completed: u64,
    /// Completions delivered with a device-reported failure
    /// ([`BlkError::IoError`], [`BlkError::DeviceUnsupported`]).
    pub failed: u64,
    /// Completions failed because the device broke the protocol for that
    /// request only (bad length, status or operation). Logged at `warn`.
    pub bad_completions: u64,
    /// Times the frontend stopped on a device fault. Logged at `error`.
    pub stops: u64,
    /// Successful resets.
    pub resets: u64,
    /// Requests completed with [`BlkError::Aborted`] by a reset.
    pub aborted: u64,
}

impl Stats {
    /// Count one delivered completion.
    pub(crate) fn count(&mut self, r: &Result<usize, BlkError>) {
        match r {
            Ok(_) => self.completed += 1,
            Err(BlkError::IoError | BlkError::DeviceUnsupported(_)) => self.failed += 1,
            Err(BlkError::Aborted) => self.aborted += 1,
            Err(_) => self.bad_completions += 1,
        }
    }
}

/// A block frontend over some transport: a queue of outstanding requests,
/// completions matched and validated, and a way back from a device fault.
///
/// # Failure model
///
/// The device is untrusted. A completion that fails validation either fails
/// its own request (bad status, short read) or, when the device can no longer
/// be trusted to keep the rings straight (unknown or duplicate id, index
/// overrun), *stops* the frontend: [`BlockFrontend::poll_completions`]
/// returns the fault, [`BlockFrontend::submit`] returns
/// [`BlkError::Stopped`], and requests in flight stay owned by the device
/// until [`BlockFrontend::reset`] takes them back and completes them with
/// [`BlkError::Aborted`]. Nothing the device writes can make this code panic
/// or loop.
pub trait BlockFrontend {
    /// Geometry and features.
    fn info(&self) -> DeviceInfo;

    /// Queue a request and make it visible to the device.
    ///
    /// # Safety
    ///
    /// Every buffer in `req.buffers` must be valid for reads and writes of
    /// its length and must not be accessed by anything but the device until
    /// the returned token is delivered by
    /// [`BlockFrontend::poll_completions`] or [`BlockFrontend::reset`] (or
    /// the frontend is dropped, which resets the device first). Buffers of
    /// one request must not overlap each other or any other request's.
    unsafe fn submit(&mut self, req: &Request<'_>) -> Result<Token, BlkError>;

    /// Deliver every completion the device has published, validated, to `f`.
    /// Returns how many were delivered, or the fault that stopped the
    /// frontend (completions delivered before it stay delivered).
    fn poll_completions<F: FnMut(Token, Result<usize, BlkError>)>(
        &mut self,
        f: &mut F,
    ) -> Result<usize, BlkError>;

    /// Before sleeping: ask the device for an interrupt on the next
    /// completion. Returns true if completions are already pending (poll
    /// again instead of sleeping).
    fn prepare_wait(&mut self) -> Result<bool, BlkError>;

    /// Requests in flight.
    fn in_flight(&self) -> usize;

    /// The fault that stopped the frontend, if any.
    fn fault(&self) -> Option<BlkError>;

    /// Data-path counters.
    fn stats(&self) -> Stats;

    /// Take the device back: stop it, complete every request in flight with
    /// [`BlkError::Aborted`] through `f` (their buffers are the caller's
    /// again), and bring the queues up fresh.
    fn reset<F: FnMut(Token, Result<usize, BlkError>)>(
        &mut self,
        f: &mut F,
    ) -> Result<(), BlkError>;

    /// Queue a cache flush.
    fn flush(&mut self) -> Result<Token, BlkError> {
        // SAFETY: the request carries no buffers.
        unsafe { self.submit(&Request::flush()) }
    }

    /// Queue a discard.
    fn discard(&mut self, sector: u64, sectors: u32) -> Result<Token, BlkError> {
        // SAFETY: the request carries no buffers.
        unsafe { self.submit(&Request::discard(sector, sectors)) }
    }

    /// Queue a write-zeroes.
    fn write_zeroes(&mut self, sector: u64, sectors: u32, unmap: bool) -> Result<Token, BlkError> {
        // SAFETY: the request carries no buffers.
        unsafe { self.submit(&Request::write_zeroes(sector, sectors, unmap)) }
    }

    /// Queue a get-id into `buf` ([`ID_BYTES`] bytes).
    ///
    /// # Safety
    ///
    /// As for [`BlockFrontend::submit`]: `buf` stays valid and untouched
    /// until the token completes.
    unsafe fn get_id(&mut self, buf: IoBuf) -> Result<Token, BlkError> {
        let bufs = [buf];
        let req = Request {
            op: Op::GetId,
            sector: 0,
            buffers: &bufs,
        };
        // SAFETY: forwarded from this function's own contract.
        unsafe { self.submit(&req) }
    }
}

/// Checks common to both transports: read-only, range, operation support,
/// buffer shape. Returns the request's length in 512-byte sectors.
pub(crate) fn check_request(info: &DeviceInfo, req: &Request<'_>) -> Result<u64, BlkError> {
    let f = &info.features;
    if req.op.modifies() && f.read_only {
        return Err(BlkError::ReadOnly);
    }
    let supported = match req.op {
        Op::Read | Op::Write => true,
        Op::Flush => f.flush,
        Op::Discard { secure, .. } => f.discard && (!secure || f.secure_discard),
        Op::WriteZeroes { .. } => f.write_zeroes,
        Op::GetId => f.get_id,
    };
    if !supported {
        return Err(BlkError::Unsupported(req.op.kind()));
    }
    let sectors = match req.op {
        Op::Read | Op::Write => {
            if req.buffers.is_empty()
                || req
                    .buffers
                    .iter()
                    .any(|b| b.len == 0 || !b.len.is_multiple_of(SECTOR_SIZE))
            {
                return Err(BlkError::BadBuffer);
            }
            (req.data_len() / SECTOR_SIZE) as u64
        }
        Op::Flush => {
            if !req.buffers.is_empty() {
                return Err(BlkError::BadBuffer);
            }
            return Ok(0);
        }
        Op::Discard { sectors, .. } | Op::WriteZeroes { sectors, .. } => {
            if !req.buffers.is_empty() || sectors == 0 {
                return Err(BlkError::BadBuffer);
            }
            u64::from(sectors)
        }
        Op::GetId => {
            if req.buffers.len() != 1 || req.buffers.iter().any(|b| b.len != ID_BYTES) {
                return Err(BlkError::BadBuffer);
            }
            return Ok(0);
        }
    };
    let end = req.sector.checked_add(sectors);
    if end.is_none_or(|e| e > info.capacity_sectors) {
        return Err(BlkError::OutOfRange {
            sector: req.sector,
            sectors,
            capacity: info.capacity_sectors,
        });
    }
    // Logical blocks larger than 512 bytes: whole blocks only.
    let per_block = u64::from(info.block_size / SECTOR_SIZE as u32).max(1);
    if !req.sector.is_multiple_of(per_block) || !sectors.is_multiple_of(per_block) {
        return Err(BlkError::BadBuffer);
    }
    Ok(sectors)
}
