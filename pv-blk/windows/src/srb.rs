//! The SRB side: function codes (classic `SCSI_REQUEST_BLOCK` and
//! `STORAGE_REQUEST_BLOCK`), what each becomes, and how every outcome maps
//! to `SrbStatus` + `ScsiStatus` + autosense. Values are those of the WDK's
//! `srb.h` / `storport.h`; plain integers here, the FFI crate owns the
//! structs.

use pv_blk::{BlkError, OpKind};

use crate::cdb::{Command, Decision, Direction, Reply};
use crate::sense::{Asc, Sense, SenseKey, FIXED_SENSE_LEN};

/// `SRB_FUNCTION_*` values (`srb.h`).
#[allow(missing_docs)]
pub mod function {
    pub const EXECUTE_SCSI: u32 = 0x00;
    pub const CLAIM_DEVICE: u32 = 0x01;
    pub const IO_CONTROL: u32 = 0x02;
    pub const RECEIVE_EVENT: u32 = 0x03;
    pub const RELEASE_QUEUE: u32 = 0x04;
    pub const ATTACH_DEVICE: u32 = 0x05;
    pub const RELEASE_DEVICE: u32 = 0x06;
    pub const SHUTDOWN: u32 = 0x07;
    pub const FLUSH: u32 = 0x08;
    pub const ABORT_COMMAND: u32 = 0x10;
    pub const RELEASE_RECOVERY: u32 = 0x11;
    pub const RESET_BUS: u32 = 0x12;
    pub const RESET_DEVICE: u32 = 0x13;
    pub const TERMINATE_IO: u32 = 0x14;
    pub const FLUSH_QUEUE: u32 = 0x15;
    pub const REMOVE_DEVICE: u32 = 0x16;
    pub const WMI: u32 = 0x17;
    pub const LOCK_QUEUE: u32 = 0x18;
    pub const UNLOCK_QUEUE: u32 = 0x19;
    pub const QUIESCE_DEVICE: u32 = 0x1A;
    pub const RESET_LOGICAL_UNIT: u32 = 0x20;
    pub const POWER: u32 = 0x24;
    pub const PNP: u32 = 0x25;
    pub const DUMP_POINTERS: u32 = 0x26;
    pub const FREE_DUMP_POINTERS: u32 = 0x27;
    /// `Function` of a `STORAGE_REQUEST_BLOCK`: the real function is in
    /// its `SrbFunction` field.
    pub const STORAGE_REQUEST_BLOCK: u32 = 0x28;
}

/// `SRB_STATUS_*` values (`srb.h`).
#[allow(missing_docs)]
pub mod status {
    pub const PENDING: u8 = 0x00;
    pub const SUCCESS: u8 = 0x01;
    pub const ABORTED: u8 = 0x02;
    pub const ERROR: u8 = 0x04;
    pub const BUSY: u8 = 0x05;
    pub const INVALID_REQUEST: u8 = 0x06;
    pub const NO_DEVICE: u8 = 0x08;
    pub const BUS_RESET: u8 = 0x0E;
    pub const INVALID_LUN: u8 = 0x20;
    pub const INVALID_TARGET_ID: u8 = 0x21;
    pub const BAD_FUNCTION: u8 = 0x22;
    /// Flag: `SenseInfoBuffer` holds valid sense data.
    pub const AUTOSENSE_VALID: u8 = 0x80;
}

/// SCSI status bytes (SAM-5).
#[allow(missing_docs)]
pub mod scsi_status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
}

/// `SRB_FLAGS_*` bits used here (`srb.h`).
#[allow(missing_docs)]
pub mod flags {
    pub const DISABLE_AUTOSENSE: u32 = 0x0000_0020;
    pub const DATA_IN: u32 = 0x0000_0040;
    pub const DATA_OUT: u32 = 0x0000_0080;
}

/// `STOR_PNP_ACTION` values (`storport.h`).
#[allow(missing_docs)]
pub mod pnp {
    pub const START_DEVICE: u32 = 0x0;
    pub const REMOVE_DEVICE: u32 = 0x2;
    pub const STOP_DEVICE: u32 = 0x4;
    pub const QUERY_CAPABILITIES: u32 = 0x9;
    pub const SURPRISE_REMOVAL: u32 = 0x17;
    /// `SRB_PNP_FLAGS_ADAPTER_REQUEST`.
    pub const FLAGS_ADAPTER_REQUEST: u32 = 0x1;
}

/// `STOR_DEVICE_POWER_STATE` values (`storport.h`).
#[allow(missing_docs)]
pub mod power {
    pub const UNSPECIFIED: u32 = 0;
    pub const D0: u32 = 1;
    pub const D3: u32 = 4;
}

impl Direction {
    /// From `SrbFlags` (both bits: `SRB_FLAGS_UNSPECIFIED_DIRECTION`).
    pub fn from_srb_flags(f: u32) -> Self {
        match (f & flags::DATA_IN != 0, f & flags::DATA_OUT != 0) {
            (false, false) => Self::None,
            (true, false) => Self::In,
            (false, true) => Self::Out,
            (true, true) => Self::Unspecified,
        }
    }
}

/// The only unit this miniport exposes: bus 0, target 0, LUN 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Address {
    /// `PathId`.
    pub path: u8,
    /// `TargetId`.
    pub target: u8,
    /// `Lun`.
    pub lun: u8,
}

/// An SRB as StorPort hands it over, in plain types.
#[derive(Clone, Copy, Debug)]
pub struct SrbIn {
    /// `Function`; for a `STORAGE_REQUEST_BLOCK` (0x28) give its
    /// `SrbFunction` here instead (see [`SrbIn::function_of`]).
    pub function: u32,
    /// Addressed unit.
    pub address: Address,
    /// `SrbFlags`.
    pub flags: u32,
    /// For PNP: `PnPAction`; for POWER: `DevicePowerState`; else 0.
    pub action: u32,
    /// For PNP: `SrbPnPFlags`; else 0.
    pub action_flags: u32,
}

impl SrbIn {
    /// The effective function: SRB_EX carries it in `SrbFunction`.
    pub fn function_of(function: u8, srb_ex_function: Option<u32>) -> u32 {
        match (u32::from(function), srb_ex_function) {
            (function::STORAGE_REQUEST_BLOCK, Some(f)) => f,
            (f, _) => f,
        }
    }
}

/// What an SRB becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrbAction {
    /// Decode the CDB ([`crate::cdb::decide`]).
    ExecuteScsi,
    /// Reset the device, then complete everything outstanding with
    /// `SRB_STATUS_BUS_RESET` ([`crate::engine::Engine::reset`]), then this
    /// SRB with SUCCESS.
    Reset,
    /// Make the cache durable ([`crate::cdb::Plan::flush`] through the engine), then
    /// complete.
    Flush,
    /// Complete at once with this status (no sense).
    Complete(u8),
    /// QUERY CAPABILITIES: fill `STOR_DEVICE_CAPABILITIES_EX` as stated and
    /// complete with SUCCESS.
    Capabilities {
        /// `Removable`.
        removable: bool,
        /// `SurpriseRemovalOK`.
        surprise_removal_ok: bool,
    },
}

/// Decide an SRB by function. `write_cache`: the disk has a volatile
/// cache (its flushes are real).
pub fn decide_srb(srb: &SrbIn, write_cache: bool) -> SrbAction {
    let flush = if write_cache {
        SrbAction::Flush
    } else {
        SrbAction::Complete(status::SUCCESS)
    };
    let unit = srb.address;
    match srb.function {
        function::EXECUTE_SCSI => match unit {
            Address {
                path: 0,
                target: 0,
                lun: 0,
            } => SrbAction::ExecuteScsi,
            Address {
                path: 0, target: 0, ..
            } => SrbAction::Complete(status::INVALID_LUN),
            _ => SrbAction::Complete(status::NO_DEVICE),
        },
        function::RESET_BUS | function::RESET_DEVICE | function::RESET_LOGICAL_UNIT => {
            SrbAction::Reset
        }
        // The class driver sends SYNCHRONIZE CACHE too; flushing here also
        // covers callers that only send these.
        function::FLUSH | function::SHUTDOWN => flush,
        function::POWER => match srb.action {
            power::D0 | power::UNSPECIFIED => SrbAction::Complete(status::SUCCESS),
            // Leaving D0: durable first.
            _ => flush,
        },
        function::PNP => match srb.action {
            pnp::QUERY_CAPABILITIES if srb.action_flags & pnp::FLAGS_ADAPTER_REQUEST == 0 => {
                SrbAction::Capabilities {
                    removable: false,
                    surprise_removal_ok: true,
                }
            }
            pnp::START_DEVICE
            | pnp::REMOVE_DEVICE
            | pnp::STOP_DEVICE
            | pnp::SURPRISE_REMOVAL
            | pnp::QUERY_CAPABILITIES => SrbAction::Complete(status::SUCCESS),
            _ => SrbAction::Complete(status::INVALID_REQUEST),
        },
        // No private IOCTLs, no WMI, nothing else.
        function::IO_CONTROL => SrbAction::Complete(status::INVALID_REQUEST),
        _ => SrbAction::Complete(status::INVALID_REQUEST),
    }
}

/// How an SRB ends: what the driver writes into it before
/// `StorPortNotification(RequestComplete)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// `SrbStatus`, including `SRB_STATUS_AUTOSENSE_VALID` when sense is
    /// to be copied.
    pub srb_status: u8,
    /// `ScsiStatus`.
    pub scsi_status: u8,
    /// New `DataTransferLength`.
    pub transferred: u32,
    /// Sense to copy into `SenseInfoBuffer` (the first
    /// `SenseInfoBufferLength` bytes of [`Sense::to_fixed`]).
    pub sense: Option<Sense>,
    /// In-place data to copy into the data buffer first.
    pub data: Option<Reply>,
}

impl Completion {
    /// SUCCESS / GOOD with `transferred` bytes.
    pub fn good(transferred: u32) -> Self {
        Self {
            srb_status: status::SUCCESS,
            scsi_status: scsi_status::GOOD,
            transferred,
            sense: None,
            data: None,
        }
    }

    /// A status without SCSI meaning (BUSY, BUS_RESET, INVALID_LUN...).
    pub fn status(srb_status: u8) -> Self {
        Self {
            srb_status,
            scsi_status: scsi_status::GOOD,
            transferred: 0,
            sense: None,
            data: None,
        }
    }

    /// CHECK CONDITION with `sense`. `sense_room` is the SRB's
    /// `SenseInfoBufferLength`, `srb_flags` its flags: autosense is valid
    /// only when there is room and it is not disabled.
    pub fn check(sense: Sense, sense_room: u32, srb_flags: u32) -> Self {
        let autosense = sense_room > 0 && srb_flags & flags::DISABLE_AUTOSENSE == 0;
        Self {
            srb_status: status::ERROR
                | if autosense {
                    status::AUTOSENSE_VALID
                } else {
                    0
                },
            scsi_status: scsi_status::CHECK_CONDITION,
            transferred: 0,
            sense: autosense.then_some(sense),
            data: None,
        }
    }

    /// Sense bytes to copy: `min(room, 18)` of the fixed format.
    pub fn sense_bytes(&self, room: u32) -> Option<([u8; FIXED_SENSE_LEN], usize)> {
        self.sense
            .map(|s| (s.to_fixed(), (room as usize).min(FIXED_SENSE_LEN)))
    }
}

/// The completion of a decision that needs no device I/O (`None` for
/// [`Decision::Io`]).
pub fn immediate(d: &Decision, sense_room: u32, srb_flags: u32) -> Option<Completion> {
    match d {
        Decision::Io(_) => None,
        Decision::Good => Some(Completion::good(0)),
        Decision::Data(r) => Some(Completion {
            data: Some(*r),
            ..Completion::good(r.bytes().len() as u32)
        }),
        Decision::Check(s) => Some(Completion::check(*s, sense_room, srb_flags)),
    }
}

/// The sense for a block-core failure of a plan's part (SBC-3 /
/// SPC-4 ASC/ASCQ assignments), or `None` when the SRB ends with a plain status:
/// `Aborted` (a reset took it: BUS_RESET), `QueueFull` / `Stopped` (BUSY:
/// StorPort retries once the driver has recovered).
pub fn failure(command: Command, part: OpKind, e: &BlkError) -> Result<Sense, u8> {
    match e {
        BlkError::Aborted => Err(status::BUS_RESET),
        BlkError::QueueFull | BlkError::Stopped => Err(status::BUSY),
        BlkError::IoError => Ok(Sense::new(
            SenseKey::MediumError,
            if part == OpKind::Read {
                Asc::UNRECOVERED_READ_ERROR
            } else {
                Asc::WRITE_ERROR
            },
        )),
        BlkError::DeviceUnsupported(_) | BlkError::Unsupported(_) => Ok(match command {
            // A refused flush after a good write loses the FUA promise:
            // report it as the write failing, not as a bad opcode.
            Command::Write => Sense::new(SenseKey::MediumError, Asc::WRITE_ERROR),
            _ => Sense::invalid_opcode(),
        }),
        BlkError::ReadOnly => Ok(Sense::write_protected()),
        BlkError::OutOfRange { .. } => Ok(Sense::lba_out_of_range()),
        // The device broke the protocol, or the driver / platform failed.
        _ => Ok(Sense::internal_failure()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srb_ex_function_is_taken_from_its_field() {
        assert_eq!(
            SrbIn::function_of(0x28, Some(function::RESET_LOGICAL_UNIT)),
            function::RESET_LOGICAL_UNIT
        );
        assert_eq!(SrbIn::function_of(0x13, None), function::RESET_DEVICE);
    }

    #[test]
    fn check_condition_sets_autosense_only_with_room() {
        let s = Sense::invalid_opcode();
        let c = Completion::check(s, 18, 0);
        assert_eq!(c.srb_status, status::ERROR | status::AUTOSENSE_VALID);
        assert_eq!(c.scsi_status, scsi_status::CHECK_CONDITION);
        let (bytes, n) = c.sense_bytes(8).expect("sense");
        assert_eq!(n, 8);
        assert_eq!(bytes[12], 0x20);
        let c = Completion::check(s, 0, 0);
        assert_eq!(c.srb_status, status::ERROR);
        assert!(c.sense.is_none());
        let c = Completion::check(s, 18, flags::DISABLE_AUTOSENSE);
        assert_eq!(c.srb_status, status::ERROR);
    }
}
