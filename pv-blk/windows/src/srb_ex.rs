//! `STORAGE_REQUEST_BLOCK` (SRB_EX) decoding: the bytes of an extended
//! SRB into the same plain [`SrbIn`] / [`SrbCtx`] / CDB a classic SRB gives,
//! and a [`Completion`] written back into those bytes.
//!
//! A miniport that sets `SRB_TYPE_FLAG_STORAGE_REQUEST_BLOCK` gets every
//! request as one of these (`Function` 0x28, the real function in
//! `SrbFunction`): a fixed header, a `STOR_ADDRESS` and a list of extended
//! data blocks located by offset (`SrbExDataOffset[]`), among them the CDB
//! with its sense buffer (`SRBEX_DATA_SCSI_CDB16` / `CDB32` / `CDB_VAR`),
//! the PnP action (`SRBEX_DATA_PNP`) and the power state
//! (`SRBEX_DATA_POWER`). Layouts: the WDK's `srb.h` (10.0.26100), x86-64.
//!
//! The SRB is the class driver's, not a peer's, but every offset and
//! length in it is still checked before use: each block must lie inside
//! `SrbLength` (which must lie inside the bytes given), past the header and
//! the offset table, with the `Length` its type defines. A request that
//! fails is refused with [`SrbExError`], which the driver completes with
//! `SRB_STATUS_INVALID_REQUEST`; nothing here panics on any input (the
//! `srb_ex` fuzz target checks that).

use crate::cdb::Direction;
use crate::engine::SrbCtx;
use crate::srb::{function, status, Address, Completion, SrbIn};

/// `SRB_SIGNATURE` (`srb.h`).
pub const SRB_SIGNATURE: u32 = 0x5352_4258;
/// `STORAGE_REQUEST_BLOCK_VERSION_1`.
pub const VERSION_1: u32 = 1;
/// Offset of `SrbExDataOffset[0]`: the fixed header ends here.
pub const HEADER_BYTES: usize = 0x78;
/// Extended data blocks decoded at most (StorPort sends one or two).
pub const MAX_EX_DATA: u32 = 16;
/// `STOR_ADDRESS_TYPE_BTL8` (`STOR_ADDRESS.Type`).
pub const ADDRESS_TYPE_BTL8: u16 = 1;
/// `STOR_ADDR_BTL8_ADDRESS_LENGTH`.
pub const BTL8_ADDRESS_LENGTH: u32 = 4;
/// Longest CDB accepted (a `CDB32`; a variable CDB longer than this is
/// refused: no command this miniport implements is longer than 16).
pub const MAX_CDB: usize = 32;

/// Field offsets of `STORAGE_REQUEST_BLOCK` (x86-64).
#[allow(missing_docs)]
pub mod offset {
    pub const FUNCTION: usize = 0x02;
    pub const SRB_STATUS: usize = 0x03;
    pub const SIGNATURE: usize = 0x08;
    pub const VERSION: usize = 0x0C;
    pub const SRB_LENGTH: usize = 0x10;
    pub const SRB_FUNCTION: usize = 0x14;
    pub const SRB_FLAGS: usize = 0x18;
    pub const ADDRESS_OFFSET: usize = 0x34;
    pub const NUM_SRB_EX_DATA: usize = 0x38;
    pub const DATA_TRANSFER_LENGTH: usize = 0x3C;
    pub const DATA_BUFFER: usize = 0x40;
    pub const SRB_EX_DATA_OFFSET: usize = super::HEADER_BYTES;
}

/// `SRBEXDATATYPE` values (`srb.h`).
#[allow(missing_docs)]
pub mod ex_type {
    pub const BIDIRECTIONAL: u32 = 0x01;
    pub const SCSI_CDB16: u32 = 0x40;
    pub const SCSI_CDB32: u32 = 0x41;
    pub const SCSI_CDB_VAR: u32 = 0x42;
    pub const WMI: u32 = 0x60;
    pub const POWER: u32 = 0x61;
    pub const PNP: u32 = 0x62;
    pub const IO_INFO: u32 = 0x80;
}

/// `Length` of each block type (bytes after `Type` and `Length`).
mod ex_len {
    /// `SRBEX_DATA_SCSI_CDB16_LENGTH`: 20 bytes, a ULONG, a pointer.
    pub const SCSI_CDB16: u32 = 20 + 4 + 8;
    /// `SRBEX_DATA_SCSI_CDB32_LENGTH`.
    pub const SCSI_CDB32: u32 = 36 + 4 + 8;
    /// `SRBEX_DATA_SCSI_CDB_VAR_LENGTH_MIN` (the CDB bytes follow).
    pub const SCSI_CDB_VAR_MIN: u32 = 4 + 12 + 8;
    /// `SRBEX_DATA_POWER_LENGTH`.
    pub const POWER: u32 = 4 + 4 + 4;
    /// `SRBEX_DATA_PNP_LENGTH`.
    pub const PNP: u32 = 4 + 4 + 8;
}

/// Why an SRB_EX was refused. Every variant is the sender's fault (the
/// class driver or StorPort built a malformed request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrbExError {
    /// Fewer bytes than the fixed header, or than `SrbLength` says.
    TooShort,
    /// `Function` is not `SRB_FUNCTION_STORAGE_REQUEST_BLOCK`.
    NotExtended(u8),
    /// `Signature` is not `SRB_SIGNATURE`.
    BadSignature(u32),
    /// `Version` is not 1.
    BadVersion(u32),
    /// `NumSrbExData` above [`MAX_EX_DATA`], or its offset table does not
    /// fit in `SrbLength`.
    TooManyExData(u32),
    /// `AddressOffset` outside the SRB, or not a BTL8 address.
    BadAddress,
    /// Extended data block `index` lies outside the SRB or over the header.
    BadExDataOffset(u32),
    /// Extended data block `index` has the wrong `Length` for its type.
    BadExDataLength(u32),
    /// A CDB longer than its block or than [`MAX_CDB`].
    BadCdbLength,
    /// Two blocks of the same kind (two CDBs, two PnP or power blocks).
    Duplicate(u32),
}

impl core::fmt::Display for SrbExError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooShort => write!(f, "SRB_EX shorter than its header or SrbLength"),
            Self::NotExtended(x) => write!(f, "Function {x:#x} is not STORAGE_REQUEST_BLOCK"),
            Self::BadSignature(s) => write!(f, "SRB_EX signature {s:#x}"),
            Self::BadVersion(v) => write!(f, "SRB_EX version {v}"),
            Self::TooManyExData(n) => write!(f, "{n} extended data blocks"),
            Self::BadAddress => write!(f, "SRB_EX address outside the SRB or not BTL8"),
            Self::BadExDataOffset(i) => write!(f, "extended data block {i} outside the SRB"),
            Self::BadExDataLength(i) => write!(f, "extended data block {i} has a bad Length"),
            Self::BadCdbLength => write!(f, "CDB length beyond its block"),
            Self::Duplicate(t) => write!(f, "two extended data blocks of type {t:#x}"),
        }
    }
}

/// The CDB block of an SRB_EX: where it is (for the write-back), the CDB,
/// and the sense buffer the class driver gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiBlock {
    /// Offset of the block in the SRB.
    pub at: usize,
    /// `SRBEXDATATYPE` of the block.
    pub kind: u32,
    cdb: [u8; MAX_CDB],
    cdb_len: usize,
    /// `SenseInfoBufferLength` (room; 0 without a buffer).
    pub sense_room: u8,
    /// `SenseInfoBuffer` (a kernel address; 0: none).
    pub sense_buffer: u64,
}

impl ScsiBlock {
    /// The CDB: `CdbLength` bytes.
    pub fn cdb(&self) -> &[u8] {
        &self.cdb[..self.cdb_len]
    }

    /// Offset of `ScsiStatus` in the SRB.
    pub fn scsi_status_at(&self) -> usize {
        self.at + 8
    }

    /// Offset of `SenseInfoBufferLength` in the SRB.
    pub fn sense_length_at(&self) -> usize {
        self.at + 9
    }
}

/// A decoded SRB_EX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrbEx {
    /// `SrbFunction` (the effective function).
    pub function: u32,
    /// `SrbFlags`.
    pub flags: u32,
    /// The BTL8 address.
    pub address: Address,
    /// `DataTransferLength`.
    pub data_transfer_length: u32,
    /// `DataBuffer` (a kernel address; 0: none).
    pub data_buffer: u64,
    /// The CDB block, if any.
    pub scsi: Option<ScsiBlock>,
    /// `SRBEX_DATA_PNP`: (`PnPAction`, `SrbPnPFlags`).
    pub pnp: Option<(u32, u32)>,
    /// `SRBEX_DATA_POWER`: `DevicePowerState`.
    pub power: Option<u32>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// How many bytes of the SRB at hand to read: its `SrbLength`, or `None`
/// when `header` (at least the first 0x14 bytes) is not an SRB_EX header.
/// The driver reads the header, then this many bytes, then [`parse`]s.
pub fn srb_length(header: &[u8]) -> Option<usize> {
    if header.get(offset::FUNCTION).copied() != Some(function::STORAGE_REQUEST_BLOCK as u8) {
        return None;
    }
    usize::try_from(u32_at(header, offset::SRB_LENGTH)?).ok()
}

/// Decode the SRB_EX in `srb` (at least its `SrbLength` bytes).
pub fn parse(srb: &[u8]) -> Result<SrbEx, SrbExError> {
    let short = SrbExError::TooShort;
    if srb.len() < HEADER_BYTES {
        return Err(short);
    }
    let f = srb[offset::FUNCTION];
    if u32::from(f) != function::STORAGE_REQUEST_BLOCK {
        return Err(SrbExError::NotExtended(f));
    }
    let sig = u32_at(srb, offset::SIGNATURE).ok_or(short)?;
    if sig != SRB_SIGNATURE {
        return Err(SrbExError::BadSignature(sig));
    }
    let version = u32_at(srb, offset::VERSION).ok_or(short)?;
    if version != VERSION_1 {
        return Err(SrbExError::BadVersion(version));
    }
    let len = usize::try_from(u32_at(srb, offset::SRB_LENGTH).ok_or(short)?).map_err(|_| short)?;
    if len < HEADER_BYTES || len > srb.len() {
        return Err(short);
    }
    // From here on only the SRB's own bytes count.
    let srb = &srb[..len];
    let n = u32_at(srb, offset::NUM_SRB_EX_DATA).ok_or(short)?;
    let table_end = HEADER_BYTES + 4 * n as usize;
    if n > MAX_EX_DATA || table_end > len {
        return Err(SrbExError::TooManyExData(n));
    }
    let address = address(srb, table_end)?;
    let mut ex = SrbEx {
        function: u32_at(srb, offset::SRB_FUNCTION).ok_or(short)?,
        flags: u32_at(srb, offset::SRB_FLAGS).ok_or(short)?,
        address,
        data_transfer_length: u32_at(srb, offset::DATA_TRANSFER_LENGTH).ok_or(short)?,
        data_buffer: u64_at(srb, offset::DATA_BUFFER).ok_or(short)?,
        scsi: None,
        pnp: None,
        power: None,
    };
    for i in 0..n {
        let at = u32_at(srb, HEADER_BYTES + 4 * i as usize).ok_or(short)? as usize;
        let bad_at = SrbExError::BadExDataOffset(i);
        if at < table_end || at.checked_add(8).is_none_or(|e| e > len) {
            return Err(bad_at);
        }
        let kind = u32_at(srb, at).ok_or(bad_at)?;
        let blen = u32_at(srb, at + 4).ok_or(bad_at)?;
        let end = (at + 8)
            .checked_add(blen as usize)
            .filter(|&e| e <= len)
            .ok_or(bad_at)?;
        let body = &srb[at..end];
        let bad_len = SrbExError::BadExDataLength(i);
        match kind {
            ex_type::SCSI_CDB16 | ex_type::SCSI_CDB32 | ex_type::SCSI_CDB_VAR => {
                if ex.scsi.is_some() {
                    return Err(SrbExError::Duplicate(kind));
                }
                ex.scsi = Some(scsi_block(body, at, kind, blen).ok_or(bad_len)??);
            }
            ex_type::PNP => {
                if ex.pnp.is_some() {
                    return Err(SrbExError::Duplicate(kind));
                }
                if blen != ex_len::PNP {
                    return Err(bad_len);
                }
                ex.pnp = Some((
                    u32_at(body, 0x0C).ok_or(bad_len)?,
                    u32_at(body, 0x10).ok_or(bad_len)?,
                ));
            }
            ex_type::POWER => {
                if ex.power.is_some() {
                    return Err(SrbExError::Duplicate(kind));
                }
                if blen != ex_len::POWER {
                    return Err(bad_len);
                }
                ex.power = Some(u32_at(body, 0x0C).ok_or(bad_len)?);
            }
            // Bidirectional, WMI, I/O info and anything newer: not used by
            // this miniport, skipped (their bounds were checked).
            _ => {}
        }
    }
    Ok(ex)
}

/// The `STOR_ADDR_BTL8` at `AddressOffset`.
fn address(srb: &[u8], table_end: usize) -> Result<Address, SrbExError> {
    let bad = SrbExError::BadAddress;
    let at = u32_at(srb, offset::ADDRESS_OFFSET).ok_or(bad)? as usize;
    if at < table_end || at.checked_add(12).is_none_or(|e| e > srb.len()) {
        return Err(bad);
    }
    if u16_at(srb, at) != Some(ADDRESS_TYPE_BTL8)
        || u32_at(srb, at + 4) != Some(BTL8_ADDRESS_LENGTH)
    {
        return Err(bad);
    }
    Ok(Address {
        path: srb[at + 8],
        target: srb[at + 9],
        lun: srb[at + 10],
    })
}

/// A CDB block (`body` from its `Type`); `None`: wrong `Length` for its
/// type.
fn scsi_block(
    body: &[u8],
    at: usize,
    kind: u32,
    blen: u32,
) -> Option<Result<ScsiBlock, SrbExError>> {
    let (cdb_len, cdb_at, room, sense_at) = match kind {
        ex_type::SCSI_CDB16 | ex_type::SCSI_CDB32 => {
            let (want, room) = if kind == ex_type::SCSI_CDB16 {
                (ex_len::SCSI_CDB16, 16)
            } else {
                (ex_len::SCSI_CDB32, 32)
            };
            if blen != want {
                return None;
            }
            (usize::from(*body.get(0x0A)?), 0x18, room, 0x10)
        }
        _ => {
            if blen < ex_len::SCSI_CDB_VAR_MIN {
                return None;
            }
            let n = u32_at(body, 0x0C)? as usize;
            (n, 0x20, (blen - ex_len::SCSI_CDB_VAR_MIN) as usize, 0x18)
        }
    };
    if cdb_len > room || cdb_len > MAX_CDB {
        return Some(Err(SrbExError::BadCdbLength));
    }
    let mut cdb = [0u8; MAX_CDB];
    cdb[..cdb_len].copy_from_slice(body.get(cdb_at..cdb_at + cdb_len)?);
    let sense_buffer = u64_at(body, sense_at)?;
    let sense_room = if sense_buffer == 0 { 0 } else { *body.get(9)? };
    Some(Ok(ScsiBlock {
        at,
        kind,
        cdb,
        cdb_len,
        sense_room,
        sense_buffer,
    }))
}

impl SrbEx {
    /// As the classic SRB's plain types: function, unit, flags, and the
    /// PnP or power action from their blocks.
    pub fn srb_in(&self) -> SrbIn {
        let (action, action_flags) = match self.function {
            function::PNP => self.pnp.unwrap_or((0, 0)),
            function::POWER => (self.power.unwrap_or(0), 0),
            _ => (0, 0),
        };
        SrbIn {
            function: self.function,
            address: self.address,
            flags: self.flags,
            action,
            action_flags,
        }
    }

    /// Sense room and flags, for the engine.
    pub fn ctx(&self) -> SrbCtx {
        SrbCtx {
            sense_room: self.scsi.map_or(0, |s| u32::from(s.sense_room)),
            flags: self.flags,
        }
    }

    /// The CDB (empty without a CDB block).
    pub fn cdb(&self) -> &[u8] {
        self.scsi.as_ref().map_or(&[], |s| s.cdb())
    }

    /// Data direction from the flags.
    pub fn direction(&self) -> Direction {
        Direction::from_srb_flags(self.flags)
    }
}

/// Write `c` into the SRB_EX bytes `srb` that [`parse`] decoded into
/// `ex`: `SrbStatus`, `DataTransferLength`, and in the CDB block
/// `ScsiStatus` and `SenseInfoBufferLength` (set to `sense_copied`, what
/// the driver copied into the sense buffer). Without a CDB block only the
/// header is written.
pub fn write_completion(srb: &mut [u8], ex: &SrbEx, c: &Completion, sense_copied: u8) {
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(d) = srb.get_mut(at..at + bytes.len()) {
            d.copy_from_slice(bytes);
        }
    };
    put(offset::SRB_STATUS, &[c.srb_status]);
    put(offset::DATA_TRANSFER_LENGTH, &c.transferred.to_le_bytes());
    if let Some(s) = ex.scsi {
        put(s.scsi_status_at(), &[c.scsi_status]);
        let sense = if c.srb_status & status::AUTOSENSE_VALID != 0 {
            sense_copied
        } else {
            0
        };
        put(s.sense_length_at(), &[sense]);
    }
}

#[cfg(any(test, feature = "test-utils"))]
/// Build SRB_EX bytes (tests, fuzz seeds, and the emulation harness'
/// layout in Rust form).
pub mod build {
    use super::*;
    use alloc::vec::Vec;

    /// One extended data block to put in.
    #[derive(Clone, Debug)]
    pub enum Block {
        /// `SRBEX_DATA_SCSI_CDB16` with a CDB, sense room and buffer.
        Cdb16(Vec<u8>, u8, u64),
        /// `SRBEX_DATA_SCSI_CDB32`.
        Cdb32(Vec<u8>, u8, u64),
        /// `SRBEX_DATA_SCSI_CDB_VAR`.
        CdbVar(Vec<u8>, u8, u64),
        /// `SRBEX_DATA_PNP` (action, flags).
        Pnp(u32, u32),
        /// `SRBEX_DATA_POWER` (device state).
        Power(u32),
    }

    fn put32(v: &mut [u8], at: usize, x: u32) {
        v[at..at + 4].copy_from_slice(&x.to_le_bytes());
    }

    /// An SRB_EX for `function` with `flags`, addressed to `address`, a
    /// data buffer, and `blocks` laid out as StorPort does (address after
    /// the offset table, each block 8-aligned).
    pub fn srb(
        function: u32,
        flags: u32,
        address: Address,
        data: (u64, u32),
        blocks: &[Block],
    ) -> Vec<u8> {
        let table_end = HEADER_BYTES + 4 * blocks.len();
        let addr_at = table_end.next_multiple_of(8);
        let mut at = addr_at + 16;
        let mut v = alloc::vec![0u8; at];
        v[offset::FUNCTION] = function::STORAGE_REQUEST_BLOCK as u8;
        put32(&mut v, offset::SIGNATURE, SRB_SIGNATURE);
        put32(&mut v, offset::VERSION, VERSION_1);
        put32(&mut v, offset::SRB_FUNCTION, function);
        put32(&mut v, offset::SRB_FLAGS, flags);
        put32(&mut v, offset::ADDRESS_OFFSET, addr_at as u32);
        put32(&mut v, offset::NUM_SRB_EX_DATA, blocks.len() as u32);
        put32(&mut v, offset::DATA_TRANSFER_LENGTH, data.1);
        v[offset::DATA_BUFFER..offset::DATA_BUFFER + 8].copy_from_slice(&data.0.to_le_bytes());
        v[addr_at..addr_at + 2].copy_from_slice(&ADDRESS_TYPE_BTL8.to_le_bytes());
        put32(&mut v, addr_at + 4, BTL8_ADDRESS_LENGTH);
        v[addr_at + 8..addr_at + 11].copy_from_slice(&[address.path, address.target, address.lun]);
        for (i, b) in blocks.iter().enumerate() {
            let mut body = Vec::new();
            let (kind, blen) = match b {
                Block::Cdb16(cdb, room, buf) | Block::Cdb32(cdb, room, buf) => {
                    let (kind, blen, n) = if matches!(b, Block::Cdb16(..)) {
                        (ex_type::SCSI_CDB16, ex_len::SCSI_CDB16, 16)
                    } else {
                        (ex_type::SCSI_CDB32, ex_len::SCSI_CDB32, 32)
                    };
                    body.extend_from_slice(&[0, *room, cdb.len() as u8, 0, 0, 0, 0, 0]);
                    body.extend_from_slice(&buf.to_le_bytes());
                    let mut c = alloc::vec![0u8; n];
                    let k = cdb.len().min(n);
                    c[..k].copy_from_slice(&cdb[..k]);
                    body.extend_from_slice(&c);
                    (kind, blen)
                }
                Block::CdbVar(cdb, room, buf) => {
                    body.extend_from_slice(&[0, *room, 0, 0]);
                    body.extend_from_slice(&(cdb.len() as u32).to_le_bytes());
                    body.extend_from_slice(&[0; 8]);
                    body.extend_from_slice(&buf.to_le_bytes());
                    body.extend_from_slice(cdb);
                    (
                        ex_type::SCSI_CDB_VAR,
                        ex_len::SCSI_CDB_VAR_MIN + cdb.len() as u32,
                    )
                }
                Block::Pnp(action, flags) => {
                    body.extend_from_slice(&[0; 4]);
                    body.extend_from_slice(&action.to_le_bytes());
                    body.extend_from_slice(&flags.to_le_bytes());
                    body.extend_from_slice(&[0; 4]);
                    (ex_type::PNP, ex_len::PNP)
                }
                Block::Power(state) => {
                    body.extend_from_slice(&[0; 4]);
                    body.extend_from_slice(&state.to_le_bytes());
                    body.extend_from_slice(&[0; 4]);
                    (ex_type::POWER, ex_len::POWER)
                }
            };
            put32(&mut v, HEADER_BYTES + 4 * i, at as u32);
            v.extend_from_slice(&kind.to_le_bytes());
            v.extend_from_slice(&blen.to_le_bytes());
            v.extend_from_slice(&body);
            v.resize(v.len().next_multiple_of(8), 0);
            at = v.len();
        }
        let len = v.len() as u32;
        put32(&mut v, offset::SRB_LENGTH, len);
        v[0..2].copy_from_slice(&0x58u16.to_le_bytes());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::build::{srb, Block};
    use super::*;
    use crate::sense::Sense;
    use crate::srb::{flags, pnp, power, scsi_status};
    use alloc::vec;

    const LUN0: Address = Address {
        path: 0,
        target: 0,
        lun: 0,
    };
    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 8, 0, 0, 2, 0];

    #[test]
    fn an_execute_scsi_with_a_cdb16_block_decodes_like_a_classic_srb() {
        let b = srb(
            function::EXECUTE_SCSI,
            flags::DATA_IN,
            LUN0,
            (0xFFFF_8000_0000_1000, 1024),
            &[Block::Cdb16(READ10.to_vec(), 18, 0xFFFF_8000_0000_2000)],
        );
        let ex = parse(&b).expect("parse");
        assert_eq!(ex.function, function::EXECUTE_SCSI);
        assert_eq!(ex.address, LUN0);
        assert_eq!(ex.cdb(), READ10);
        assert_eq!(ex.data_transfer_length, 1024);
        assert_eq!(ex.data_buffer, 0xFFFF_8000_0000_1000);
        assert_eq!(ex.direction(), Direction::In);
        assert_eq!(ex.ctx().sense_room, 18);
        let s = ex.scsi.expect("scsi block");
        assert_eq!(s.sense_buffer, 0xFFFF_8000_0000_2000);
        assert_eq!(ex.srb_in().function, function::EXECUTE_SCSI);
    }

    #[test]
    fn cdb32_and_variable_cdbs_decode_and_long_ones_are_refused() {
        let cdb16 = [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0];
        for block in [
            Block::Cdb32(cdb16.to_vec(), 0, 0),
            Block::CdbVar(cdb16.to_vec(), 0, 0),
        ] {
            let b = srb(function::EXECUTE_SCSI, 0, LUN0, (0, 0), &[block]);
            assert_eq!(parse(&b).expect("parse").cdb(), cdb16);
        }
        let b = srb(
            function::EXECUTE_SCSI,
            0,
            LUN0,
            (0, 0),
            &[Block::CdbVar(vec![0x7F; 40], 0, 0)],
        );
        assert_eq!(parse(&b), Err(SrbExError::BadCdbLength));
        // A CDB16 block whose CdbLength says more than its 16 bytes.
        let mut b = srb(
            function::EXECUTE_SCSI,
            0,
            LUN0,
            (0, 0),
            &[Block::Cdb16(READ10.to_vec(), 0, 0)],
        );
        let at = u32_at(&b, HEADER_BYTES).expect("offset") as usize;
        b[at + 0x0A] = 17;
        assert_eq!(parse(&b), Err(SrbExError::BadCdbLength));
    }

    #[test]
    fn pnp_and_power_come_from_their_blocks() {
        let b = srb(
            function::PNP,
            0,
            LUN0,
            (0, 0),
            &[Block::Pnp(
                pnp::QUERY_CAPABILITIES,
                pnp::FLAGS_ADAPTER_REQUEST,
            )],
        );
        let i = parse(&b).expect("parse").srb_in();
        assert_eq!(
            (i.function, i.action, i.action_flags),
            (function::PNP, pnp::QUERY_CAPABILITIES, 1)
        );
        let b = srb(function::POWER, 0, LUN0, (0, 0), &[Block::Power(power::D3)]);
        let i = parse(&b).expect("parse").srb_in();
        assert_eq!((i.function, i.action), (function::POWER, power::D3));
    }

    #[test]
    fn the_address_is_the_btl8_one() {
        let unit = Address {
            path: 0,
            target: 0,
            lun: 3,
        };
        let b = srb(function::EXECUTE_SCSI, 0, unit, (0, 0), &[]);
        assert_eq!(parse(&b).expect("parse").address, unit);
        let mut bad = b.clone();
        let at = u32_at(&b, offset::ADDRESS_OFFSET).expect("at") as usize;
        bad[at] = 0; // STOR_ADDRESS_TYPE_UNKNOWN
        assert_eq!(parse(&bad), Err(SrbExError::BadAddress));
        let mut bad = b.clone();
        bad[offset::ADDRESS_OFFSET..offset::ADDRESS_OFFSET + 4]
            .copy_from_slice(&(b.len() as u32 - 4).to_le_bytes());
        assert_eq!(parse(&bad), Err(SrbExError::BadAddress));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let good = srb(
            function::EXECUTE_SCSI,
            0,
            LUN0,
            (0, 0),
            &[Block::Cdb16(READ10.to_vec(), 18, 0x1000)],
        );
        assert!(parse(&good).is_ok());
        assert_eq!(parse(&good[..0x40]), Err(SrbExError::TooShort));
        // SrbLength beyond the bytes given.
        assert_eq!(parse(&good[..good.len() - 1]), Err(SrbExError::TooShort));
        let mut b = good.clone();
        b[offset::FUNCTION] = 0;
        assert_eq!(parse(&b), Err(SrbExError::NotExtended(0)));
        // The byte-swapped signature ("SRBX" read as a string).
        let mut b = good.clone();
        b[offset::SIGNATURE..offset::SIGNATURE + 4].copy_from_slice(b"SRBX");
        assert_eq!(parse(&b), Err(SrbExError::BadSignature(0x5842_5253)));
        let mut b = good.clone();
        b[offset::VERSION] = 2;
        assert_eq!(parse(&b), Err(SrbExError::BadVersion(2)));
        let mut b = good.clone();
        b[offset::NUM_SRB_EX_DATA] = 200;
        assert_eq!(parse(&b), Err(SrbExError::TooManyExData(200)));
        // A block offset into the header, and one past the end.
        let mut b = good.clone();
        b[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&0x10u32.to_le_bytes());
        assert_eq!(parse(&b), Err(SrbExError::BadExDataOffset(0)));
        let mut b = good.clone();
        let len = good.len() as u32;
        b[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&(len - 4).to_le_bytes());
        assert_eq!(parse(&b), Err(SrbExError::BadExDataOffset(0)));
        // A CDB16 block with the wrong Length.
        let mut b = good.clone();
        let at = u32_at(&good, HEADER_BYTES).expect("at") as usize;
        b[at + 4] = 8;
        assert_eq!(parse(&b), Err(SrbExError::BadExDataLength(0)));
        // Two CDB blocks.
        let b = srb(
            function::EXECUTE_SCSI,
            0,
            LUN0,
            (0, 0),
            &[
                Block::Cdb16(READ10.to_vec(), 0, 0),
                Block::Cdb16(READ10.to_vec(), 0, 0),
            ],
        );
        assert_eq!(parse(&b), Err(SrbExError::Duplicate(ex_type::SCSI_CDB16)));
    }

    #[test]
    fn a_sense_room_without_a_buffer_is_no_room() {
        let b = srb(
            function::EXECUTE_SCSI,
            0,
            LUN0,
            (0, 0),
            &[Block::Cdb16(READ10.to_vec(), 18, 0)],
        );
        assert_eq!(parse(&b).expect("parse").ctx().sense_room, 0);
    }

    #[test]
    fn a_completion_lands_in_the_header_and_the_cdb_block() {
        let mut b = srb(
            function::EXECUTE_SCSI,
            0,
            LUN0,
            (0, 512),
            &[Block::Cdb16(vec![0xFF; 6], 18, 0x1000)],
        );
        let ex = parse(&b).expect("parse");
        let c = Completion::check(Sense::invalid_opcode(), 18, 0);
        write_completion(&mut b, &ex, &c, 18);
        let s = ex.scsi.expect("scsi");
        assert_eq!(
            b[offset::SRB_STATUS],
            status::ERROR | status::AUTOSENSE_VALID
        );
        assert_eq!(b[s.scsi_status_at()], scsi_status::CHECK_CONDITION);
        assert_eq!(b[s.sense_length_at()], 18);
        assert_eq!(u32_at(&b, offset::DATA_TRANSFER_LENGTH), Some(0));
        // A good completion reports its length and no sense.
        write_completion(&mut b, &ex, &Completion::good(512), 18);
        assert_eq!(b[offset::SRB_STATUS], status::SUCCESS);
        assert_eq!(b[s.sense_length_at()], 0);
        assert_eq!(u32_at(&b, offset::DATA_TRANSFER_LENGTH), Some(512));
        // The result still decodes the same request.
        assert_eq!(parse(&b).expect("parse").cdb(), ex.cdb());
    }
}
