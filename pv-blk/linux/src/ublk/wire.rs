//! The ublk userspace ABI (`include/uapi/linux/ublk_cmd.h`, Linux 6.12):
//! the control and I/O command payloads, the per-tag I/O descriptor the
//! driver writes into the shared descriptor area, and the decoder that
//! turns one copied descriptor into a validated request.
//!
//! Commands are sent with the ioctl-style encoding (`_IOWR('u', nr, T)`),
//! which every ublk kernel accepts; the legacy bare numbers are a kernel
//! config option that may be gone.

/// `_IOWR('u', nr, size)`.
const fn iowr(nr: u32, size: usize) -> u32 {
    (3 << 30) | ((size as u32) << 16) | ((b'u' as u32) << 8) | nr
}
/// `_IOR('u', nr, size)`.
const fn ior(nr: u32, size: usize) -> u32 {
    (2 << 30) | ((size as u32) << 16) | ((b'u' as u32) << 8) | nr
}

/// Control commands (on `/dev/ublk-control`, 80-byte URING_CMD payload).
pub mod ctrl {
    use super::{ior, iowr, CtrlCmd};
    const S: usize = core::mem::size_of::<CtrlCmd>();
    pub const GET_DEV_INFO: u32 = ior(0x02, S);
    pub const ADD_DEV: u32 = iowr(0x04, S);
    pub const DEL_DEV: u32 = iowr(0x05, S);
    pub const START_DEV: u32 = iowr(0x06, S);
    pub const STOP_DEV: u32 = iowr(0x07, S);
    pub const SET_PARAMS: u32 = iowr(0x08, S);
}

/// I/O commands (on `/dev/ublkcN`, 16-byte URING_CMD payload).
pub mod io {
    use super::{iowr, IoCmd};
    const S: usize = core::mem::size_of::<IoCmd>();
    pub const FETCH_REQ: u32 = iowr(0x20, S);
    pub const COMMIT_AND_FETCH_REQ: u32 = iowr(0x21, S);
}

/// A fetch completed with a request in the tag's descriptor.
pub const IO_RES_OK: i32 = 0;
/// The device is going away: this tag gets no more requests.
pub const IO_RES_ABORT: i32 = -libc::ENODEV;

/// Device flag: commands use the ioctl encoding.
pub const F_CMD_IOCTL_ENCODE: u64 = 1 << 6;

/// Request ops (low 8 bits of `op_flags`).
pub mod op {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const FLUSH: u8 = 2;
    pub const DISCARD: u8 = 3;
    pub const WRITE_SAME: u8 = 4;
    pub const WRITE_ZEROES: u8 = 5;
}
/// Request flag (in `op_flags`): write zeroes without deallocating.
pub const IO_F_NOUNMAP: u32 = 1 << 15;

/// Block attributes (`ublk_param_basic.attrs`).
pub mod attr {
    pub const READ_ONLY: u32 = 1 << 0;
    pub const VOLATILE_CACHE: u32 = 1 << 2;
}
/// Parameter types (`ublk_params.types`).
pub const PARAM_TYPE_BASIC: u32 = 1 << 0;
pub const PARAM_TYPE_DISCARD: u32 = 1 << 1;

/// Largest queue depth the driver allows, and the stride of each queue's
/// descriptor area in the char device's mmap space.
pub const MAX_QUEUE_DEPTH: usize = 4096;

/// `struct ublksrv_ctrl_cmd`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CtrlCmd {
    pub dev_id: u32,
    pub queue_id: u16,
    pub len: u16,
    pub addr: u64,
    pub data: [u64; 1],
    pub dev_path_len: u16,
    pub pad: u16,
    pub reserved: u32,
}

/// `struct ublksrv_ctrl_dev_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DevInfo {
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    pub state: u16,
    pub pad0: u16,
    pub max_io_buf_bytes: u32,
    pub dev_id: u32,
    pub ublksrv_pid: i32,
    pub pad1: u32,
    pub flags: u64,
    pub ublksrv_flags: u64,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub reserved1: u64,
    pub reserved2: u64,
}

/// `struct ublk_param_basic`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ParamBasic {
    pub attrs: u32,
    pub logical_bs_shift: u8,
    pub physical_bs_shift: u8,
    pub io_opt_shift: u8,
    pub io_min_shift: u8,
    pub max_sectors: u32,
    pub chunk_sectors: u32,
    pub dev_sectors: u64,
    pub virt_boundary_mask: u64,
}

/// `struct ublk_param_discard`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ParamDiscard {
    pub discard_alignment: u32,
    pub discard_granularity: u32,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_discard_segments: u16,
    pub reserved0: u16,
}

/// The leading part of `struct ublk_params` this runtime sets (basic and
/// discard); `len` tells the driver how much of the struct we pass.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Params {
    pub len: u32,
    pub types: u32,
    pub basic: ParamBasic,
    pub discard: ParamDiscard,
}

/// `struct ublksrv_io_cmd`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IoCmd {
    pub q_id: u16,
    pub tag: u16,
    pub result: i32,
    pub addr: u64,
}

/// `struct ublksrv_io_desc`: written by the driver into the shared
/// descriptor area before it completes a tag's fetch. Copied out once.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoDesc {
    pub op_flags: u32,
    pub nr_sectors: u32,
    pub start_sector: u64,
    pub addr: u64,
}

impl IoDesc {
    /// Size in bytes (24).
    pub const SIZE: usize = core::mem::size_of::<Self>();

    /// From its raw little-endian (x86) bytes, as the fuzz target feeds it.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        Self {
            op_flags: u32_at(0),
            nr_sectors: u32_at(4),
            start_sector: u64_at(8),
            addr: u64_at(16),
        }
    }
}

/// What one descriptor asks for, validated against the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoRequest {
    Read {
        sector: u64,
        sectors: u32,
    },
    Write {
        sector: u64,
        sectors: u32,
    },
    Flush,
    Discard {
        sector: u64,
        sectors: u32,
    },
    WriteZeroes {
        sector: u64,
        sectors: u32,
        unmap: bool,
    },
}

/// Why a descriptor was refused (the tag is answered with an error; the
/// device and the other tags go on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DescError {
    /// An op this runtime does not serve (answered EOPNOTSUPP).
    #[error("unsupported ublk op {0}")]
    UnsupportedOp(u8),
    /// The request reaches past the end of the device.
    #[error("sectors {sector}+{sectors} beyond the device's {capacity}")]
    OutOfRange {
        sector: u64,
        sectors: u32,
        capacity: u64,
    },
    /// A data request larger than the tag's buffer, or of no sectors.
    #[error("{sectors} sectors do not fit a {buf_bytes}-byte tag buffer")]
    BadLength { sectors: u32, buf_bytes: usize },
}

impl DescError {
    /// The errno (negative) to commit for the tag.
    pub fn errno(&self) -> i32 {
        match self {
            Self::UnsupportedOp(_) => -libc::EOPNOTSUPP,
            Self::OutOfRange { .. } | Self::BadLength { .. } => -libc::EIO,
        }
    }
}

/// Validates one copied descriptor: the op is known, the range lies within
/// `capacity` sectors, and data requests fit `buf_bytes` (the tag's buffer).
pub fn decode(d: &IoDesc, capacity: u64, buf_bytes: usize) -> Result<IoRequest, DescError> {
    let op = (d.op_flags & 0xff) as u8;
    let (sector, sectors) = (d.start_sector, d.nr_sectors);
    let in_range = || {
        sector
            .checked_add(u64::from(sectors))
            .is_some_and(|end| end <= capacity)
    };
    let range_err = DescError::OutOfRange {
        sector,
        sectors,
        capacity,
    };
    match op {
        op::FLUSH => Ok(IoRequest::Flush),
        op::READ | op::WRITE => {
            let bytes = u64::from(sectors) * 512;
            if sectors == 0 || bytes > buf_bytes as u64 {
                return Err(DescError::BadLength { sectors, buf_bytes });
            }
            if !in_range() {
                return Err(range_err);
            }
            Ok(if op == op::READ {
                IoRequest::Read { sector, sectors }
            } else {
                IoRequest::Write { sector, sectors }
            })
        }
        op::DISCARD | op::WRITE_ZEROES => {
            if sectors == 0 {
                return Err(DescError::BadLength { sectors, buf_bytes });
            }
            if !in_range() {
                return Err(range_err);
            }
            Ok(if op == op::DISCARD {
                IoRequest::Discard { sector, sectors }
            } else {
                IoRequest::WriteZeroes {
                    sector,
                    sectors,
                    unmap: d.op_flags & IO_F_NOUNMAP == 0,
                }
            })
        }
        other => Err(DescError::UnsupportedOp(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_sizes_match_the_kernel_header() {
        assert_eq!(core::mem::size_of::<CtrlCmd>(), 32);
        assert_eq!(core::mem::size_of::<DevInfo>(), 64);
        assert_eq!(core::mem::size_of::<ParamBasic>(), 32);
        assert_eq!(core::mem::size_of::<ParamDiscard>(), 20);
        assert_eq!(core::mem::offset_of!(Params, discard), 40);
        assert_eq!(core::mem::size_of::<IoCmd>(), 16);
        assert_eq!(IoDesc::SIZE, 24);
    }

    #[test]
    fn command_encoding_is_the_ioctl_one() {
        // UBLK_U_CMD_ADD_DEV and UBLK_U_IO_FETCH_REQ as the 6.12 header
        // computes them.
        assert_eq!(ctrl::ADD_DEV, 0xc020_7504);
        assert_eq!(ctrl::START_DEV, 0xc020_7506);
        assert_eq!(ctrl::GET_DEV_INFO, 0x8020_7502);
        assert_eq!(io::FETCH_REQ, 0xc010_7520);
        assert_eq!(io::COMMIT_AND_FETCH_REQ, 0xc010_7521);
    }

    fn desc(op: u8, flags: u32, sector: u64, sectors: u32) -> IoDesc {
        IoDesc {
            op_flags: u32::from(op) | flags,
            nr_sectors: sectors,
            start_sector: sector,
            addr: 0,
        }
    }

    #[test]
    fn requests_are_decoded() {
        let cap = 1000;
        assert_eq!(
            decode(&desc(op::READ, 0, 8, 8), cap, 4096),
            Ok(IoRequest::Read {
                sector: 8,
                sectors: 8
            })
        );
        assert_eq!(
            decode(&desc(op::WRITE, 0, 992, 8), cap, 4096),
            Ok(IoRequest::Write {
                sector: 992,
                sectors: 8
            })
        );
        assert_eq!(
            decode(&desc(op::FLUSH, 0, 0, 0), cap, 4096),
            Ok(IoRequest::Flush)
        );
        assert_eq!(
            decode(&desc(op::DISCARD, 0, 0, 1000), cap, 4096),
            Ok(IoRequest::Discard {
                sector: 0,
                sectors: 1000
            })
        );
        assert_eq!(
            decode(&desc(op::WRITE_ZEROES, IO_F_NOUNMAP, 1, 2), cap, 4096),
            Ok(IoRequest::WriteZeroes {
                sector: 1,
                sectors: 2,
                unmap: false
            })
        );
        assert_eq!(
            decode(&desc(op::WRITE_ZEROES, 0, 1, 2), cap, 4096),
            Ok(IoRequest::WriteZeroes {
                sector: 1,
                sectors: 2,
                unmap: true
            })
        );
    }

    #[test]
    fn bad_descriptors_are_refused() {
        let cap = 1000;
        let e = decode(&desc(op::READ, 0, 996, 8), cap, 4096).expect_err("out of range");
        assert!(matches!(e, DescError::OutOfRange { .. }));
        assert_eq!(e.errno(), -libc::EIO);
        assert!(matches!(
            decode(&desc(op::READ, 0, 0, 9), cap, 4096),
            Err(DescError::BadLength { .. })
        ));
        assert!(matches!(
            decode(&desc(op::WRITE, 0, 0, 0), cap, 4096),
            Err(DescError::BadLength { .. })
        ));
        assert!(matches!(
            decode(&desc(op::DISCARD, 0, u64::MAX, 2), cap, 4096),
            Err(DescError::OutOfRange { .. })
        ));
        let e = decode(&desc(op::WRITE_SAME, 0, 0, 1), cap, 4096).expect_err("write same");
        assert_eq!(e, DescError::UnsupportedOp(op::WRITE_SAME));
        assert_eq!(e.errno(), -libc::EOPNOTSUPP);
        assert!(decode(&desc(0x7f, 0, 0, 1), cap, 4096).is_err());
    }

    #[test]
    fn descriptor_bytes_are_little_endian() {
        let mut b = [0u8; IoDesc::SIZE];
        b[0] = 1;
        b[4] = 8;
        b[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        b[16] = 0xff;
        let d = IoDesc::from_bytes(&b);
        assert_eq!(d.op_flags, 1);
        assert_eq!(d.nr_sectors, 8);
        assert_eq!(d.start_sector, 0x1122_3344_5566_7788);
        assert_eq!(d.addr, 0xff);
    }
}
