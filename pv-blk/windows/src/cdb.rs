//! SCSI CDB decoding: one command in, one typed [`Decision`] out.
//!
//! [`decide`] is pure: it reads the CDB, the SRB's data buffer length and
//! direction, and (for UNMAP and WRITE SAME) the parameter data the driver
//! copied once out of the data buffer; it validates every field before
//! anything reaches the device, and answers with block requests to submit,
//! data produced here, GOOD, or CHECK CONDITION with sense. The standards
//! followed are SPC-4 and SBC-3, cited by command and field name;
//! README.md lists them per command.

use crate::disk::{Disk, MAX_UNMAP_DESCRIPTORS};
use crate::pages;
use crate::sense::Sense;
use pv_blk::{IoBuf, Request};

/// Operation codes (SPC-4 and SBC-3 operation code lists).
#[allow(missing_docs)]
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const VERIFY_10: u8 = 0x2F;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8A;
    pub const VERIFY_16: u8 = 0x8F;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const VERIFY_12: u8 = 0xAF;
    /// SERVICE ACTION IN(16) service action READ CAPACITY(16).
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
}

/// Which way the SRB's data buffer may move (`SRB_FLAGS_DATA_IN/OUT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// No data phase.
    None,
    /// Device to host.
    In,
    /// Host to device.
    Out,
    /// Both flags set (`SRB_FLAGS_UNSPECIFIED_DIRECTION`).
    Unspecified,
}

impl Direction {
    /// Data may move to the host.
    pub fn allows_in(self) -> bool {
        matches!(self, Self::In | Self::Unspecified)
    }

    /// Data may move to the device.
    pub fn allows_out(self) -> bool {
        matches!(self, Self::Out | Self::Unspecified)
    }
}

/// One SCSI command as StorPort hands it over, in plain types.
#[derive(Clone, Copy, Debug)]
pub struct ScsiRequest<'a> {
    /// The CDB (`CdbLength` bytes).
    pub cdb: &'a [u8],
    /// `DataTransferLength`: bytes of the SRB's data buffer.
    pub data_len: u32,
    /// Direction from the SRB flags.
    pub direction: Direction,
    /// For UNMAP and WRITE SAME: the first bytes of the data buffer, copied
    /// once by the driver (at most the parameter list length, resp. one
    /// logical block). Empty for every other command.
    pub data_out: &'a [u8],
}

/// What the command became.
// A plan is a few hundred bytes by value on purpose: boxing it would
// allocate on the I/O path, which crash-dump mode may not.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Submit the plan's parts to the block core, one after another.
    Io(Plan),
    /// Copy the reply into the data buffer and complete GOOD with
    /// `DataTransferLength` set to its length.
    Data(Reply),
    /// Complete GOOD, nothing transferred.
    Good,
    /// Complete with CHECK CONDITION and this sense.
    Check(Sense),
}

/// Which command a plan carries out (chooses the sense of a failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// READ(6/10/12/16).
    Read,
    /// WRITE(6/10/12/16), with a flush after it when FUA is set.
    Write,
    /// SYNCHRONIZE CACHE, START STOP UNIT (stop), SRB FLUSH/SHUTDOWN/POWER.
    Flush,
    /// UNMAP.
    Unmap,
    /// WRITE SAME of zeroes.
    WriteSame,
}

/// One block-core request of a plan. Read and write carry the SRB's data
/// buffer (the first `sectors * 512` bytes); the rest carry nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Read `sectors` 512-byte sectors from `sector`.
    Read {
        /// First sector.
        sector: u64,
        /// Length.
        sectors: u64,
    },
    /// Write `sectors` sectors at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Length.
        sectors: u64,
    },
    /// Cache flush.
    Flush,
    /// Discard.
    Discard {
        /// First sector.
        sector: u64,
        /// Length.
        sectors: u32,
    },
    /// Write zeroes (`unmap`: the device may deallocate).
    WriteZeroes {
        /// First sector.
        sector: u64,
        /// Length.
        sectors: u32,
        /// Deallocation allowed.
        unmap: bool,
    },
}

impl Part {
    /// Whether the part moves the SRB's data buffer.
    pub fn has_data(&self) -> bool {
        matches!(self, Part::Read { .. } | Part::Write { .. })
    }

    /// The core request for this part; `buffers` (the SRB's data buffer as
    /// the driver maps it) is used by read and write only.
    pub fn request<'a>(&self, buffers: &'a [IoBuf]) -> Request<'a> {
        match *self {
            Part::Read { sector, .. } => Request::read(sector, buffers),
            Part::Write { sector, .. } => Request::write(sector, buffers),
            Part::Flush => Request::flush(),
            Part::Discard { sector, sectors } => Request::discard(sector, sectors),
            Part::WriteZeroes {
                sector,
                sectors,
                unmap,
            } => Request::write_zeroes(sector, sectors, unmap),
        }
    }

    /// (first sector, sectors) the part touches, if it addresses the disk.
    pub fn extent(&self) -> Option<(u64, u64)> {
        match *self {
            Part::Read { sector, sectors } | Part::Write { sector, sectors } => {
                Some((sector, sectors))
            }
            Part::Discard { sector, sectors }
            | Part::WriteZeroes {
                sector, sectors, ..
            } => Some((sector, u64::from(sectors))),
            Part::Flush => None,
        }
    }
}

/// Most parts of one plan: an UNMAP's descriptors (a write is two: the
/// write and its FUA flush).
pub const MAX_PARTS: usize = MAX_UNMAP_DESCRIPTORS;

/// Block requests for one SRB, in order. Fixed size: deciding never
/// allocates (crash-dump mode may not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The command carried out.
    pub command: Command,
    /// Bytes of the data buffer the plan moves (reads, writes); 0 otherwise.
    pub transfer: u32,
    parts: [Part; MAX_PARTS],
    len: u8,
}

impl Plan {
    fn new(command: Command, transfer: u32) -> Self {
        Self {
            command,
            transfer,
            parts: [Part::Flush; MAX_PARTS],
            len: 0,
        }
    }

    fn one(command: Command, transfer: u32, p: Part) -> Self {
        let mut plan = Self::new(command, transfer);
        plan.push(p);
        plan
    }

    /// Callers never push more than [`MAX_PARTS`]; a push beyond is dropped
    /// (and debug builds say so) rather than panicking in a driver.
    fn push(&mut self, p: Part) {
        debug_assert!(usize::from(self.len) < MAX_PARTS);
        if let Some(slot) = self.parts.get_mut(usize::from(self.len)) {
            *slot = p;
            self.len += 1;
        }
    }

    /// A plan that only flushes the cache.
    pub fn flush() -> Self {
        Self::one(Command::Flush, 0, Part::Flush)
    }

    /// The parts, in submission order.
    pub fn parts(&self) -> &[Part] {
        &self.parts[..usize::from(self.len)]
    }
}

/// Bytes of the largest reply produced here.
pub const REPLY_MAX: usize = 96;

/// Data produced in place (INQUIRY, VPD pages, MODE SENSE, READ CAPACITY,
/// REPORT LUNS, REQUEST SENSE), already truncated to the allocation length
/// and the data buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    buf: [u8; REPLY_MAX],
    len: u8,
}

impl Reply {
    /// An empty reply to build into.
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; REPLY_MAX],
            len: 0,
        }
    }

    /// Append bytes (silently capped at [`REPLY_MAX`]; every page built
    /// here is smaller, which the tests check).
    pub(crate) fn put(&mut self, bytes: &[u8]) {
        let start = usize::from(self.len);
        let n = bytes.len().min(REPLY_MAX - start);
        self.buf[start..start + n].copy_from_slice(&bytes[..n]);
        self.len += n as u8;
    }

    /// Bytes so far.
    pub(crate) fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Mutable view of what was put, to patch length fields.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..usize::from(self.len)]
    }

    /// Cut to `n` bytes if longer.
    pub(crate) fn truncate(&mut self, n: usize) {
        if n < usize::from(self.len) {
            self.len = n as u8;
        }
    }

    /// The reply's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// CDB length an operation code's group implies (SPC-4); `None`
/// for the reserved and vendor groups.
fn group_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

fn supported(opcode: u8) -> bool {
    use op::*;
    matches!(
        opcode,
        TEST_UNIT_READY
            | REQUEST_SENSE
            | READ_6
            | WRITE_6
            | INQUIRY
            | MODE_SENSE_6
            | START_STOP_UNIT
            | READ_CAPACITY_10
            | READ_10
            | WRITE_10
            | VERIFY_10
            | SYNCHRONIZE_CACHE_10
            | WRITE_SAME_10
            | UNMAP
            | MODE_SENSE_10
            | READ_16
            | WRITE_16
            | VERIFY_16
            | SYNCHRONIZE_CACHE_16
            | WRITE_SAME_16
            | SERVICE_ACTION_IN_16
            | REPORT_LUNS
            | READ_12
            | WRITE_12
            | VERIFY_12
    )
}

/// Decide one command for `disk`.
pub fn decide(disk: &Disk, req: &ScsiRequest<'_>) -> Decision {
    match decide_inner(disk, req) {
        Ok(d) => d,
        Err(s) => Decision::Check(s),
    }
}

type Decided = Result<Decision, Sense>;

fn decide_inner(disk: &Disk, req: &ScsiRequest<'_>) -> Decided {
    let Some(&opcode) = req.cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    // Unsupported opcodes (and opcodes whose UNMAP / WRITE SAME the device
    // does not offer) first: SPC-4 answers them 20/00 whatever else
    // the CDB says.
    let offered = match opcode {
        op::UNMAP => disk.can_unmap(),
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => disk.can_write_same(),
        o => supported(o),
    };
    let Some(len) = group_len(opcode).filter(|_| offered) else {
        return Err(Sense::invalid_opcode());
    };
    let Some(cdb) = req.cdb.get(..len) else {
        // Shorter than its operation code requires: the field that would
        // carry the rest is missing.
        return Err(Sense::invalid_cdb(req.cdb.len() as u16, None));
    };
    // CONTROL byte (SAM-5): NACA and the obsolete LINK are not
    // supported (standard INQUIRY reports NORMACA = 0).
    let control = cdb[len - 1];
    if control & 0x04 != 0 {
        return Err(Sense::invalid_cdb(len as u16 - 1, Some(2)));
    }
    if control & 0x01 != 0 {
        return Err(Sense::invalid_cdb(len as u16 - 1, Some(0)));
    }
    let r = Rw::new(disk, req);
    match opcode {
        op::TEST_UNIT_READY => Ok(Decision::Good),
        op::REQUEST_SENSE => {
            // SPC-4: DESC = 1 needs descriptor format, not supported.
            if cdb[1] & 0x01 != 0 {
                return Err(Sense::invalid_cdb(1, Some(0)));
            }
            Ok(r.reply(pages::request_sense(), u32::from(cdb[4])))
        }
        op::READ_6 | op::WRITE_6 => {
            // SBC-3: 21-bit LBA, length 0 means 256.
            let lba = u64::from(be32(cdb, 0) & 0x001F_FFFF);
            let blocks = match cdb[4] {
                0 => 256,
                n => u32::from(n),
            };
            r.rw(opcode == op::WRITE_6, lba, blocks, false, 4)
        }
        op::READ_10 | op::WRITE_10 => {
            check_protect(cdb)?;
            r.rw(
                opcode == op::WRITE_10,
                u64::from(be32(cdb, 2)),
                u32::from(be16(cdb, 7)),
                cdb[1] & 0x08 != 0,
                7,
            )
        }
        op::READ_12 | op::WRITE_12 => {
            check_protect(cdb)?;
            r.rw(
                opcode == op::WRITE_12,
                u64::from(be32(cdb, 2)),
                be32(cdb, 6),
                cdb[1] & 0x08 != 0,
                6,
            )
        }
        op::READ_16 | op::WRITE_16 => {
            check_protect(cdb)?;
            r.rw(
                opcode == op::WRITE_16,
                be64(cdb, 2),
                be32(cdb, 10),
                cdb[1] & 0x08 != 0,
                10,
            )
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => {
            // SBC-3: BYTCHK = 0 only (no data compared); the
            // medium "verification" of a virtual disk is a range check.
            check_protect(cdb)?;
            if cdb[1] & 0x06 != 0 {
                return Err(Sense::invalid_cdb(1, Some(2)));
            }
            let (lba, blocks) = match opcode {
                op::VERIFY_10 => (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7))),
                op::VERIFY_12 => (u64::from(be32(cdb, 2)), u64::from(be32(cdb, 6))),
                _ => (be64(cdb, 2), u64::from(be32(cdb, 10))),
            };
            r.range(lba, blocks)?;
            Ok(Decision::Good)
        }
        op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
            // SBC-3: the range is checked; the core flushes the
            // whole cache, a superset. IMMED is accepted: status after the
            // flush is stronger than required. No volatile cache: GOOD.
            let (lba, blocks) = if opcode == op::SYNCHRONIZE_CACHE_10 {
                (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
            } else {
                (be64(cdb, 2), u64::from(be32(cdb, 10)))
            };
            r.range(lba, blocks)?;
            Ok(flush_or_good(disk))
        }
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
            let sixteen = opcode == op::WRITE_SAME_16;
            let (lba, blocks, len_at) = if sixteen {
                (be64(cdb, 2), be32(cdb, 10), 10)
            } else {
                (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7)), 7)
            };
            r.write_same(cdb, lba, blocks, len_at, sixteen && cdb[1] & 0x01 != 0)
        }
        op::UNMAP => r.unmap(cdb),
        op::INQUIRY => {
            // SPC-4: CMDDT (obsolete) must be 0; PAGE CODE only with
            // EVPD.
            if cdb[1] & 0x02 != 0 {
                return Err(Sense::invalid_cdb(1, Some(1)));
            }
            let evpd = cdb[1] & 0x01 != 0;
            let page = cdb[2];
            let alloc = u32::from(be16(cdb, 3));
            let data = if evpd {
                pages::vpd(disk, page).ok_or(Sense::invalid_cdb(2, None))?
            } else if page != 0 {
                return Err(Sense::invalid_cdb(2, None));
            } else {
                pages::standard_inquiry(disk)
            };
            Ok(r.reply(data, alloc))
        }
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
            let ten = opcode == op::MODE_SENSE_10;
            let alloc = if ten {
                u32::from(be16(cdb, 7))
            } else {
                u32::from(cdb[4])
            };
            let data = pages::mode_sense(
                disk,
                pages::ModeSense {
                    ten,
                    dbd: cdb[1] & 0x08 != 0,
                    llbaa: ten && cdb[1] & 0x10 != 0,
                    pc: cdb[2] >> 6,
                    page: cdb[2] & 0x3F,
                    subpage: cdb[3],
                },
            )?;
            Ok(r.reply(data, alloc))
        }
        op::READ_CAPACITY_10 => {
            // SBC-3: with PMI = 0 the LBA field must be 0. No
            // allocation length: the buffer bounds the 8 bytes.
            if cdb[8] & 0x01 == 0 && be32(cdb, 2) != 0 {
                return Err(Sense::invalid_cdb(2, None));
            }
            Ok(r.reply(pages::read_capacity_10(disk)?, u32::MAX))
        }
        op::SERVICE_ACTION_IN_16 => {
            if cdb[1] & 0x1F != op::SA_READ_CAPACITY_16 {
                return Err(Sense::invalid_cdb(1, Some(4)));
            }
            Ok(r.reply(pages::read_capacity_16(disk)?, be32(cdb, 10)))
        }
        op::REPORT_LUNS => {
            // SPC-4: SELECT REPORT 0-2; allocation length at least 16.
            if cdb[2] > 2 {
                return Err(Sense::invalid_cdb(2, None));
            }
            let alloc = be32(cdb, 6);
            if alloc < 16 {
                return Err(Sense::invalid_cdb(6, None));
            }
            Ok(r.reply(pages::report_luns(), alloc))
        }
        op::START_STOP_UNIT => {
            // SBC-3: a fixed disk has nothing to load or eject. A
            // stop (START = 0, no power condition) makes the cache durable
            // first; everything else is accepted as a no-op.
            if cdb[4] & 0x02 != 0 {
                return Err(Sense::invalid_cdb(4, Some(1)));
            }
            if cdb[4] & 0xF1 == 0 {
                Ok(flush_or_good(disk))
            } else {
                Ok(Decision::Good)
            }
        }
        _ => Err(Sense::invalid_opcode()),
    }
}

/// RDPROTECT / WRPROTECT / VRPROTECT (byte 1 bits 7-5) must be 0: standard
/// INQUIRY reports PROTECT = 0 (SBC-3).
fn check_protect(cdb: &[u8]) -> Result<(), Sense> {
    if cdb[1] & 0xE0 != 0 {
        return Err(Sense::invalid_cdb(1, Some(7)));
    }
    Ok(())
}

fn flush_or_good(disk: &Disk) -> Decision {
    if disk.write_cache() {
        Decision::Io(Plan::flush())
    } else {
        Decision::Good
    }
}

/// Decisions needing the disk and the SRB's buffer.
struct Rw<'d, 'r> {
    disk: &'d Disk,
    req: &'r ScsiRequest<'r>,
}

impl<'d, 'r> Rw<'d, 'r> {
    fn new(disk: &'d Disk, req: &'r ScsiRequest<'r>) -> Self {
        Self { disk, req }
    }

    /// Truncate to the allocation length and to the data buffer (which
    /// holds nothing when the SRB does not move data in).
    fn reply(&self, mut data: Reply, alloc: u32) -> Decision {
        let room = if self.req.direction.allows_in() {
            self.req.data_len
        } else {
            0
        };
        data.truncate(alloc.min(room) as usize);
        if data.len() == 0 {
            Decision::Good
        } else {
            Decision::Data(data)
        }
    }

    /// LBA + length within capacity (SBC-3), without overflow.
    fn range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.disk.capacity_blocks() => Ok(()),
            _ => Err(Sense::lba_out_of_range()),
        }
    }

    fn sectors(&self, blocks: u64) -> u64 {
        blocks * u64::from(self.disk.sectors_per_block())
    }

    fn rw(&self, write: bool, lba: u64, blocks: u32, fua: bool, len_at: u16) -> Decided {
        if blocks > self.disk.max_transfer_blocks {
            // SBC-3: beyond MAXIMUM TRANSFER LENGTH.
            return Err(Sense::invalid_cdb(len_at, None));
        }
        if write && self.disk.info.features.read_only {
            return Err(Sense::write_protected());
        }
        self.range(lba, u64::from(blocks))?;
        if blocks == 0 {
            // SBC-3: zero blocks is not an error.
            return Ok(Decision::Good);
        }
        let bytes = u64::from(blocks) * u64::from(self.disk.block_bytes());
        let dir_ok = if write {
            self.req.direction.allows_out()
        } else {
            self.req.direction.allows_in()
        };
        if !dir_ok || bytes > u64::from(self.req.data_len) {
            // The CDB asks for more than the SRB's buffer holds.
            return Err(Sense::invalid_cdb(len_at, None));
        }
        let sector = self.sectors(lba);
        let sectors = self.sectors(u64::from(blocks));
        let transfer = bytes as u32;
        if write {
            let mut plan = Plan::one(Command::Write, transfer, Part::Write { sector, sectors });
            // FUA (SBC-3): durable before GOOD. The core has no FUA;
            // a flush after the write gives it when the cache is volatile.
            if fua && self.disk.write_cache() {
                plan.push(Part::Flush);
            }
            Ok(Decision::Io(plan))
        } else {
            // FUA on a read (bypass the cache) is met by any read here.
            Ok(Decision::Io(Plan::one(
                Command::Read,
                transfer,
                Part::Read { sector, sectors },
            )))
        }
    }

    /// WRITE SAME (SBC-3): only zeroes, which the core writes
    /// with write-zeroes; UNMAP = 1 lets the device deallocate.
    fn write_same(&self, cdb: &[u8], lba: u64, blocks: u32, len_at: u16, ndob: bool) -> Decided {
        check_protect(cdb)?;
        // ANCHOR (bit 4) unsupported (ANC_SUP = 0); PBDATA/LBDATA (bits
        // 2-1) would need per-block patterns.
        if cdb[1] & 0x10 != 0 {
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        if cdb[1] & 0x06 != 0 {
            return Err(Sense::invalid_cdb(1, Some(2)));
        }
        let unmap = cdb[1] & 0x08 != 0;
        // WSNZ = 1: zero blocks ("to the end") is refused; beyond MAXIMUM
        // WRITE SAME LENGTH too.
        if blocks == 0 || blocks > self.disk.max_unmap_blocks() {
            return Err(Sense::invalid_cdb(len_at, None));
        }
        if self.disk.info.features.read_only {
            return Err(Sense::write_protected());
        }
        self.range(lba, u64::from(blocks))?;
        if !ndob {
            // One logical block of data follows; it must be all zeroes.
            let bb = self.disk.block_bytes() as usize;
            if !self.req.direction.allows_out() || (self.req.data_len as usize) < bb {
                return Err(Sense::param_list_length());
            }
            let Some(block) = self.req.data_out.get(..bb) else {
                return Err(Sense::param_list_length());
            };
            if let Some(i) = block.iter().position(|&b| b != 0) {
                return Err(Sense::invalid_param(i.min(usize::from(u16::MAX)) as u16));
            }
        }
        let sector = self.sectors(lba);
        let sectors = self.sectors(u64::from(blocks));
        Ok(Decision::Io(Plan::one(
            Command::WriteSame,
            0,
            Part::WriteZeroes {
                sector,
                // max_unmap_blocks() keeps sectors within u32.
                sectors: sectors as u32,
                unmap,
            },
        )))
    }

    /// UNMAP (SBC-3): every descriptor checked before any is sent.
    fn unmap(&self, cdb: &[u8]) -> Decided {
        if cdb[1] & 0x01 != 0 {
            return Err(Sense::invalid_cdb(1, Some(0)));
        }
        if self.disk.info.features.read_only {
            return Err(Sense::write_protected());
        }
        let plen = usize::from(be16(cdb, 7));
        if plen == 0 {
            return Ok(Decision::Good);
        }
        if !self.req.direction.allows_out() || plen > self.req.data_len as usize {
            return Err(Sense::invalid_cdb(7, None));
        }
        let Some(p) = self.req.data_out.get(..plen).filter(|p| p.len() >= 8) else {
            return Err(Sense::param_list_length());
        };
        // Descriptors that are not wholly inside both the parameter list
        // and the BLOCK DESCRIPTOR DATA LENGTH are ignored.
        let bd_len = usize::from(be16(p, 2)).min(plen - 8);
        let count = bd_len / 16;
        if count > MAX_UNMAP_DESCRIPTORS {
            return Err(Sense::invalid_param(2));
        }
        let mut plan = Plan::new(Command::Unmap, 0);
        let mut total: u64 = 0;
        for i in 0..count {
            let at = 8 + 16 * i;
            let lba = be64(p, at);
            let blocks = be32(p, at + 8);
            total += u64::from(blocks);
            if total > u64::from(self.disk.max_unmap_blocks()) {
                return Err(Sense::invalid_param(at as u16 + 8));
            }
            self.range(lba, u64::from(blocks))?;
            if blocks != 0 {
                plan.push(Part::Discard {
                    sector: self.sectors(lba),
                    sectors: self.sectors(u64::from(blocks)) as u32,
                });
            }
        }
        if plan.parts().is_empty() {
            Ok(Decision::Good)
        } else {
            Ok(Decision::Io(plan))
        }
    }
}
