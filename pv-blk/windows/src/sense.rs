//! Fixed-format sense data (SPC-4) and the sense keys and additional
//! sense codes this miniport reports (SPC-4 ASC/ASCQ assignments).
//!
//! Every error the miniport reports through SCSI carries one [`Sense`]: the
//! driver copies [`Sense::to_fixed`] into the SRB's sense buffer (truncated
//! to its length) and sets `SRB_STATUS_AUTOSENSE_VALID`; see
//! [`crate::srb::Completion`].

/// Bytes of the fixed-format sense data this crate produces: 8 header bytes
/// plus an ADDITIONAL SENSE LENGTH of 10 (SPC-4).
pub const FIXED_SENSE_LEN: usize = 18;

/// Sense keys (SPC-4) used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    /// No error to report (REQUEST SENSE with nothing pending).
    NoSense = 0x0,
    /// The logical unit cannot be accessed (no medium).
    NotReady = 0x2,
    /// The device failed the command on the medium (virtio `IOERR`).
    MediumError = 0x3,
    /// The device broke its protocol or the driver failed internally.
    HardwareError = 0x4,
    /// The command or its parameters are invalid.
    IllegalRequest = 0x5,
    /// A write to a write-protected (read-only) device.
    DataProtect = 0x7,
    /// The command was aborted (e.g. by a reset).
    AbortedCommand = 0xB,
}

/// An additional sense code and qualifier (ASC/ASCQ, SPC-4 ASC/ASCQ assignments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asc(pub u8, pub u8);

impl Asc {
    /// 00/00 NO ADDITIONAL SENSE INFORMATION.
    pub const NONE: Asc = Asc(0x00, 0x00);
    /// 0C/00 WRITE ERROR.
    pub const WRITE_ERROR: Asc = Asc(0x0C, 0x00);
    /// 11/00 UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x11, 0x00);
    /// 1A/00 PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1A, 0x00);
    /// 20/00 INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Asc = Asc(0x20, 0x00);
    /// 21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x21, 0x00);
    /// 24/00 INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x24, 0x00);
    /// 25/00 LOGICAL UNIT NOT SUPPORTED.
    pub const LUN_NOT_SUPPORTED: Asc = Asc(0x25, 0x00);
    /// 26/00 INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x26, 0x00);
    /// 27/00 WRITE PROTECTED.
    pub const WRITE_PROTECTED: Asc = Asc(0x27, 0x00);
    /// 29/00 POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub const RESET_OCCURRED: Asc = Asc(0x29, 0x00);
    /// 39/00 SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x39, 0x00);
    /// 3A/00 MEDIUM NOT PRESENT.
    pub const MEDIUM_NOT_PRESENT: Asc = Asc(0x3A, 0x00);
    /// 44/00 INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x44, 0x00);
}

/// Where the offending field is, for the sense-key specific FIELD POINTER
/// (SPC-4): which byte and, optionally, which bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// True: the byte is in the CDB (C/D = 1); false: in the parameter list.
    pub in_cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Bit of the field's most significant bit, when it is not a whole byte.
    pub bit: Option<u8>,
}

/// One CHECK CONDITION's sense: key, ASC/ASCQ and an optional field pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// The sense key.
    pub key: SenseKey,
    /// Additional sense code and qualifier.
    pub asc: Asc,
    /// The offending field (ILLEGAL REQUEST only).
    pub field: Option<FieldPointer>,
}

impl Sense {
    /// Sense without a field pointer.
    pub const fn new(key: SenseKey, asc: Asc) -> Self {
        Self {
            key,
            asc,
            field: None,
        }
    }

    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (pointer at byte 0).
    pub const fn invalid_opcode() -> Self {
        Self {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_OPCODE,
            field: Some(FieldPointer {
                in_cdb: true,
                byte: 0,
                bit: None,
            }),
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB at `byte` (and `bit`).
    pub const fn invalid_cdb(byte: u16, bit: Option<u8>) -> Self {
        Self {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_FIELD_IN_CDB,
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST at `byte`.
    pub const fn invalid_param(byte: u16) -> Self {
        Self {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_FIELD_IN_PARAMETER_LIST,
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit: None,
            }),
        }
    }

    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR.
    pub const fn param_list_length() -> Self {
        Self::new(SenseKey::IllegalRequest, Asc::PARAMETER_LIST_LENGTH_ERROR)
    }

    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const fn lba_out_of_range() -> Self {
        Self::new(SenseKey::IllegalRequest, Asc::LBA_OUT_OF_RANGE)
    }

    /// DATA PROTECT, WRITE PROTECTED.
    pub const fn write_protected() -> Self {
        Self::new(SenseKey::DataProtect, Asc::WRITE_PROTECTED)
    }

    /// HARDWARE ERROR, INTERNAL TARGET FAILURE.
    pub const fn internal_failure() -> Self {
        Self::new(SenseKey::HardwareError, Asc::INTERNAL_TARGET_FAILURE)
    }

    /// Fixed-format sense data, current error (response code 70h), no
    /// INFORMATION field, the field pointer in the SENSE KEY SPECIFIC bytes
    /// when there is one (SKSV set).
    pub fn to_fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut s = [0u8; FIXED_SENSE_LEN];
        s[0] = 0x70;
        s[2] = self.key as u8;
        s[7] = (FIXED_SENSE_LEN - 8) as u8;
        s[12] = self.asc.0;
        s[13] = self.asc.1;
        if let Some(f) = self.field {
            let mut b = 0x80; // SKSV
            if f.in_cdb {
                b |= 0x40; // C/D
            }
            if let Some(bit) = f.bit {
                b |= 0x08 | (bit & 0x07); // BPV, BIT POINTER
            }
            s[15] = b;
            s[16..18].copy_from_slice(&f.byte.to_be_bytes());
        }
        s
    }
}

/// Parse fixed-format sense data back (tests and the fuzz driver check
/// what the driver would hand to Windows). `None` if it is not fixed format.
pub fn parse_fixed(s: &[u8]) -> Option<(u8, Asc)> {
    if s.len() < 14 || s[0] & 0x7F != 0x70 {
        return None;
    }
    Some((s[2] & 0x0F, Asc(s[12], s[13])))
}
