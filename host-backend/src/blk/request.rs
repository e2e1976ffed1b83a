//! virtio-blk request parsing (virtio 1.2 §5.2.6), independent of guest
//! memory plumbing so it can be unit-tested and fuzzed.
//!
//! A request is a descriptor chain: device-readable buffers (the 16-byte
//! header, then data for writes, discards and write-zeroes) followed by
//! device-writable buffers (data for reads and GET_ID, then the one-byte
//! status). The spec forbids the device to assume any framing, so the
//! parser treats the readable and writable parts as byte streams and cuts
//! the header off the front and the status off the back wherever the
//! descriptor boundaries fall.
//!
//! Everything here comes from the guest and is checked: order of readable
//! and writable descriptors, total lengths (overflow), header presence,
//! request type, sector ranges against the capacity, data alignment,
//! segment counts and discard/write-zeroes ranges and flags.

use std::fmt;

/// Bytes in a virtio-blk sector, whatever the logical block size.
pub const SECTOR: u64 = 512;
/// Size of `struct virtio_blk_outhdr`.
pub const HEADER_LEN: u32 = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
pub const DWZ_SEGMENT_LEN: u32 = 16;
/// Length of the GET_ID string.
pub const ID_LEN: usize = 20;

use virtio_bindings::bindings::virtio_blk as vb;

/// Request types, from the virtio spec's Linux header (virtio-bindings).
pub const T_IN: u32 = vb::VIRTIO_BLK_T_IN;
pub const T_OUT: u32 = vb::VIRTIO_BLK_T_OUT;
pub const T_FLUSH: u32 = vb::VIRTIO_BLK_T_FLUSH;
pub const T_GET_ID: u32 = vb::VIRTIO_BLK_T_GET_ID;
pub const T_DISCARD: u32 = vb::VIRTIO_BLK_T_DISCARD;
pub const T_WRITE_ZEROES: u32 = vb::VIRTIO_BLK_T_WRITE_ZEROES;

/// Status values (the status byte is one byte on the wire).
pub const S_OK: u8 = vb::VIRTIO_BLK_S_OK as u8;
pub const S_IOERR: u8 = vb::VIRTIO_BLK_S_IOERR as u8;
pub const S_UNSUPP: u8 = vb::VIRTIO_BLK_S_UNSUPP as u8;

/// Write-zeroes flag: the device may deallocate the range.
pub const WZ_FLAG_UNMAP: u32 = vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// One guest buffer: guest-physical address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
}

/// A descriptor as the queue gave it to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write_only: bool,
}

/// Limits the device advertised in its config space, used to validate.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Disk size in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Most data descriptors in one request (`seg_max`).
    pub seg_max: u32,
    /// Most bytes of data in one read or write request.
    pub max_transfer: u64,
    /// `max_discard_sectors` / `max_write_zeroes_sectors`.
    pub max_dwz_sectors: u32,
    /// `max_discard_seg` / `max_write_zeroes_seg`.
    pub max_dwz_segments: u32,
    pub read_only: bool,
}

/// What the guest did wrong, or what we cannot do. The doc comment of each
/// variant is its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// The guest put a device-readable descriptor after a device-writable one.
    ReadableAfterWritable,
    /// The guest's descriptor lengths overflow.
    LengthOverflow,
    /// The guest gave no device-writable byte for the status.
    NoStatusByte,
    /// The guest gave fewer than 16 readable bytes for the header.
    ShortHeader,
    /// The guest's request type is not one we implement.
    Unsupported(u32),
    /// The guest's data length is not a multiple of 512 bytes.
    Misaligned,
    /// The guest's request reaches beyond the end of the disk.
    OutOfRange,
    /// The guest used more data descriptors than seg_max allows.
    TooManySegments,
    /// The guest's transfer is larger than the device allows.
    TooLarge,
    /// The guest wrote to a read-only disk.
    ReadOnly,
    /// The guest gave data buffers of the wrong direction for this request type.
    WrongDirection,
    /// The guest's discard/write-zeroes payload is malformed (length, flags).
    BadDwzPayload,
    /// Reading the header or payload from guest memory failed (bad address).
    GuestMemory,
    /// The guest's descriptor chain loops, leaves its table or exceeds
    /// 4 GiB: the device saw only a prefix of it.
    BrokenChain,
}

impl RequestError {
    /// The status to report, when the chain has a status byte at all.
    pub fn status(self) -> u8 {
        match self {
            Self::Unsupported(_) => S_UNSUPP,
            _ => S_IOERR,
        }
    }

    /// A stable name for the metrics label.
    pub fn kind(self) -> &'static str {
        match self {
            Self::ReadableAfterWritable => "readable_after_writable",
            Self::LengthOverflow => "length_overflow",
            Self::NoStatusByte => "no_status_byte",
            Self::ShortHeader => "short_header",
            Self::Unsupported(_) => "unsupported",
            Self::Misaligned => "misaligned",
            Self::OutOfRange => "out_of_range",
            Self::TooManySegments => "too_many_segments",
            Self::TooLarge => "too_large",
            Self::ReadOnly => "read_only",
            Self::WrongDirection => "wrong_direction",
            Self::BadDwzPayload => "bad_dwz_payload",
            Self::GuestMemory => "guest_memory",
            Self::BrokenChain => "broken_chain",
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReadableAfterWritable => {
                f.write_str("guest put a readable descriptor after a writable one")
            }
            Self::LengthOverflow => f.write_str("guest descriptor lengths overflow"),
            Self::NoStatusByte => f.write_str("guest gave no writable status byte"),
            Self::ShortHeader => f.write_str("guest gave a request header shorter than 16 bytes"),
            Self::Unsupported(t) => write!(f, "guest sent unsupported request type {t}"),
            Self::Misaligned => f.write_str("guest data length is not a multiple of 512"),
            Self::OutOfRange => f.write_str("guest request reaches beyond the end of the disk"),
            Self::TooManySegments => f.write_str("guest used more segments than seg_max"),
            Self::TooLarge => f.write_str("guest transfer is larger than the device allows"),
            Self::ReadOnly => f.write_str("guest wrote to a read-only disk"),
            Self::WrongDirection => f.write_str("guest gave data buffers of the wrong direction"),
            Self::BadDwzPayload => f.write_str("guest discard/write-zeroes payload is malformed"),
            Self::GuestMemory => f.write_str("guest buffer address is not in guest memory"),
            Self::BrokenChain => f.write_str("guest descriptor chain loops or leaves its table"),
        }
    }
}

impl std::error::Error for RequestError {}

/// One range of a discard or write-zeroes request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwzRange {
    pub sector: u64,
    pub sectors: u32,
    /// Write zeroes only: the device may deallocate (punch a hole).
    pub unmap: bool,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes at byte `offset` into the writable `data` segments.
    Read {
        offset: u64,
        len: u64,
        data: Vec<Segment>,
    },
    /// Write `len` bytes at byte `offset` from the readable `data` segments.
    Write {
        offset: u64,
        len: u64,
        data: Vec<Segment>,
    },
    /// Make everything written so far durable.
    Flush,
    /// Copy the device id string into `data` (at most `len` bytes).
    GetId { len: u64, data: Vec<Segment> },
    /// Deallocate these ranges.
    Discard(Vec<DwzRange>),
    /// Zero these ranges.
    WriteZeroes(Vec<DwzRange>),
}

/// The result of parsing a chain: where the status goes and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Guest address of the status byte, if the chain has one.
    pub status: Option<u64>,
    /// The operation, or why the request must fail.
    pub op: Result<Op, RequestError>,
}

fn total(segs: &[Segment]) -> Result<u64, RequestError> {
    segs.iter().try_fold(0u64, |acc, s| {
        acc.checked_add(u64::from(s.len))
            .ok_or(RequestError::LengthOverflow)
    })
}

/// Splits `segs` into the first `n` bytes and the rest.
fn split_front(segs: &[Segment], mut n: u64) -> (Vec<Segment>, Vec<Segment>) {
    let mut front = Vec::new();
    let mut back = Vec::new();
    for s in segs {
        if n == 0 {
            back.push(*s);
        } else if u64::from(s.len) <= n {
            front.push(*s);
            n -= u64::from(s.len);
        } else {
            // n < s.len <= u32::MAX, so it fits in u32.
            let cut = n as u32;
            front.push(Segment {
                addr: s.addr,
                len: cut,
            });
            back.push(Segment {
                addr: s.addr.wrapping_add(u64::from(cut)),
                len: s.len - cut,
            });
            n = 0;
        }
    }
    (front, back)
}

/// Splits the last byte off `segs` (which must hold at least one byte).
fn split_last_byte(segs: &[Segment]) -> (Vec<Segment>, u64) {
    let mut data: Vec<Segment> = segs.iter().copied().filter(|s| s.len > 0).collect();
    // The caller checked the total is at least 1, so a non-empty segment exists.
    let last = data.pop().unwrap_or(Segment { addr: 0, len: 1 });
    let status = last.addr.wrapping_add(u64::from(last.len) - 1);
    if last.len > 1 {
        data.push(Segment {
            addr: last.addr,
            len: last.len - 1,
        });
    }
    (data, status)
}

/// Guest address of the last device-writable byte of a chain, if any: where
/// the status goes.
pub fn last_writable_byte(descs: &[Desc]) -> Option<u64> {
    let last = descs.iter().rev().find(|d| d.write_only && d.len > 0)?;
    Some(last.addr.wrapping_add(u64::from(last.len) - 1))
}

/// Reads `out.len()` bytes from the guest at the start of `segs`.
fn gather<F>(segs: &[Segment], out: &mut [u8], read: &mut F) -> Result<(), RequestError>
where
    F: FnMut(u64, &mut [u8]) -> Result<(), RequestError>,
{
    let mut done = 0usize;
    for s in segs {
        if done == out.len() {
            break;
        }
        let n = (out.len() - done).min(s.len as usize);
        read(s.addr, &mut out[done..done + n])?;
        done += n;
    }
    if done == out.len() {
        Ok(())
    } else {
        Err(RequestError::ShortHeader)
    }
}

fn check_range(offset_sector: u64, bytes: u64, limits: &Limits) -> Result<u64, RequestError> {
    let offset = offset_sector
        .checked_mul(SECTOR)
        .ok_or(RequestError::OutOfRange)?;
    let end = offset.checked_add(bytes).ok_or(RequestError::OutOfRange)?;
    if end > limits.capacity_sectors.saturating_mul(SECTOR) {
        return Err(RequestError::OutOfRange);
    }
    Ok(offset)
}

/// Parses one descriptor chain. `read` copies guest memory (it is called
/// for the header and discard/write-zeroes payloads only; data buffers are
/// never read here). Every value is copied once and then validated.
pub fn parse<F>(descs: &[Desc], limits: &Limits, mut read: F) -> Parsed
where
    F: FnMut(u64, &mut [u8]) -> Result<(), RequestError>,
{
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut order_ok = true;
    for d in descs {
        let seg = Segment {
            addr: d.addr,
            len: d.len,
        };
        if d.write_only {
            writable.push(seg);
        } else if writable.is_empty() {
            readable.push(seg);
        } else {
            order_ok = false;
        }
    }
    let wtotal = match total(&writable) {
        Ok(t) => t,
        Err(e) => {
            return Parsed {
                status: None,
                op: Err(e),
            }
        }
    };
    if wtotal == 0 {
        return Parsed {
            status: None,
            op: Err(RequestError::NoStatusByte),
        };
    }
    let (wdata, status) = split_last_byte(&writable);
    let status = Some(status);
    let fail = |e| Parsed { status, op: Err(e) };
    if !order_ok {
        return fail(RequestError::ReadableAfterWritable);
    }
    let rtotal = match total(&readable) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    if rtotal < u64::from(HEADER_LEN) {
        return fail(RequestError::ShortHeader);
    }
    let mut hdr = [0u8; HEADER_LEN as usize];
    if let Err(e) = gather(&readable, &mut hdr, &mut read) {
        return fail(if e == RequestError::ShortHeader {
            e
        } else {
            RequestError::GuestMemory
        });
    }
    let req_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes([
        hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
    ]);
    let (_, rdata) = split_front(&readable, u64::from(HEADER_LEN));
    let rlen = rtotal - u64::from(HEADER_LEN);
    let wlen = wtotal - 1;
    let op = (|| -> Result<Op, RequestError> {
        match req_type {
            T_IN => {
                if rlen != 0 {
                    return Err(RequestError::WrongDirection);
                }
                data_checks(&wdata, wlen, limits)?;
                let offset = check_range(sector, wlen, limits)?;
                Ok(Op::Read {
                    offset,
                    len: wlen,
                    data: wdata.clone(),
                })
            }
            T_OUT => {
                if limits.read_only {
                    return Err(RequestError::ReadOnly);
                }
                if wlen != 0 {
                    return Err(RequestError::WrongDirection);
                }
                data_checks(&rdata, rlen, limits)?;
                let offset = check_range(sector, rlen, limits)?;
                Ok(Op::Write {
                    offset,
                    len: rlen,
                    data: rdata.clone(),
                })
            }
            T_FLUSH => Ok(Op::Flush),
            T_GET_ID => {
                if rlen != 0 {
                    return Err(RequestError::WrongDirection);
                }
                Ok(Op::GetId {
                    len: wlen.min(ID_LEN as u64),
                    data: wdata.clone(),
                })
            }
            T_DISCARD | T_WRITE_ZEROES => {
                if limits.read_only {
                    return Err(RequestError::ReadOnly);
                }
                if wlen != 0 {
                    return Err(RequestError::WrongDirection);
                }
                let ranges =
                    dwz_ranges(&rdata, rlen, req_type == T_WRITE_ZEROES, limits, &mut read)?;
                Ok(if req_type == T_DISCARD {
                    Op::Discard(ranges)
                } else {
                    Op::WriteZeroes(ranges)
                })
            }
            other => Err(RequestError::Unsupported(other)),
        }
    })();
    Parsed { status, op }
}

fn data_checks(data: &[Segment], len: u64, limits: &Limits) -> Result<(), RequestError> {
    if !len.is_multiple_of(SECTOR) {
        return Err(RequestError::Misaligned);
    }
    if data.len() > limits.seg_max as usize {
        return Err(RequestError::TooManySegments);
    }
    if len > limits.max_transfer {
        return Err(RequestError::TooLarge);
    }
    Ok(())
}

fn dwz_ranges<F>(
    payload: &[Segment],
    len: u64,
    write_zeroes: bool,
    limits: &Limits,
    read: &mut F,
) -> Result<Vec<DwzRange>, RequestError>
where
    F: FnMut(u64, &mut [u8]) -> Result<(), RequestError>,
{
    if len == 0 || !len.is_multiple_of(u64::from(DWZ_SEGMENT_LEN)) {
        return Err(RequestError::BadDwzPayload);
    }
    let count = len / u64::from(DWZ_SEGMENT_LEN);
    if count > u64::from(limits.max_dwz_segments) {
        return Err(RequestError::TooManySegments);
    }
    // Bounded by max_dwz_segments (small), so one allocation of the payload is fine.
    let mut bytes = vec![0u8; len as usize];
    gather(payload, &mut bytes, read).map_err(|_| RequestError::GuestMemory)?;
    let mut ranges = Vec::with_capacity(count as usize);
    for raw in bytes.chunks_exact(DWZ_SEGMENT_LEN as usize) {
        let mut s = [0u8; 8];
        s.copy_from_slice(&raw[0..8]);
        let sector = u64::from_le_bytes(s);
        let sectors = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
        // Discard takes no flags; write-zeroes only UNMAP (spec: UNSUPP would
        // also be allowed; IOERR keeps the guest's request failing loudly).
        let allowed = if write_zeroes { WZ_FLAG_UNMAP } else { 0 };
        if flags & !allowed != 0 {
            return Err(RequestError::BadDwzPayload);
        }
        if sectors == 0 || sectors > limits.max_dwz_sectors {
            return Err(RequestError::TooLarge);
        }
        check_range(sector, u64::from(sectors) * SECTOR, limits)?;
        ranges.push(DwzRange {
            sector,
            sectors,
            unmap: flags & WZ_FLAG_UNMAP != 0,
        });
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        capacity_sectors: 2048,
        seg_max: 4,
        max_transfer: 1 << 20,
        max_dwz_sectors: 1024,
        max_dwz_segments: 2,
        read_only: false,
    };

    /// A toy guest memory: address -> bytes.
    struct Mem(Vec<(u64, Vec<u8>)>);

    impl Mem {
        fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), RequestError> {
            for (base, bytes) in &self.0 {
                if addr >= *base && addr + out.len() as u64 <= base + bytes.len() as u64 {
                    let at = (addr - base) as usize;
                    out.copy_from_slice(&bytes[at..at + out.len()]);
                    return Ok(());
                }
            }
            Err(RequestError::GuestMemory)
        }
    }

    fn header(t: u32, sector: u64) -> Vec<u8> {
        let mut h = t.to_le_bytes().to_vec();
        h.extend_from_slice(&[0; 4]);
        h.extend_from_slice(&sector.to_le_bytes());
        h
    }

    fn r(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write_only: false,
        }
    }
    fn w(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write_only: true,
        }
    }

    fn run(mem: &Mem, descs: &[Desc], limits: &Limits) -> Parsed {
        parse(descs, limits, |a, o| mem.read(a, o))
    }

    #[test]
    fn linux_style_read_is_parsed() {
        let mem = Mem(vec![(0x1000, header(T_IN, 8))]);
        let p = run(
            &mem,
            &[r(0x1000, 16), w(0x2000, 4096), w(0x3000, 1)],
            &LIMITS,
        );
        assert_eq!(p.status, Some(0x3000));
        assert_eq!(
            p.op,
            Ok(Op::Read {
                offset: 4096,
                len: 4096,
                data: vec![Segment {
                    addr: 0x2000,
                    len: 4096
                }]
            })
        );
    }

    #[test]
    fn header_and_status_may_share_descriptors_with_data() {
        // Header split over two descriptors and followed by data in the
        // second; status is the last byte of the data descriptor.
        let mut bytes = header(T_OUT, 0);
        bytes.extend_from_slice(&[0xAA; 512]);
        let mem = Mem(vec![(0x1000, bytes)]);
        let p = run(
            &mem,
            &[r(0x1000, 10), r(0x100A, 518), w(0x5000, 1)],
            &LIMITS,
        );
        assert_eq!(p.status, Some(0x5000));
        assert_eq!(
            p.op,
            Ok(Op::Write {
                offset: 0,
                len: 512,
                data: vec![Segment {
                    addr: 0x1010,
                    len: 512
                }]
            })
        );
        let mem = Mem(vec![(0x1000, header(T_IN, 0))]);
        let p = run(&mem, &[r(0x1000, 16), w(0x2000, 513)], &LIMITS);
        assert_eq!(p.status, Some(0x2000 + 512));
        assert_eq!(
            p.op,
            Ok(Op::Read {
                offset: 0,
                len: 512,
                data: vec![Segment {
                    addr: 0x2000,
                    len: 512
                }]
            })
        );
    }

    #[test]
    fn hostile_chains_get_typed_errors() {
        let mem = Mem(vec![
            (0x1000, header(T_IN, 0)),
            (0x9000, header(T_OUT, 2047)),
        ]);
        // No writable byte: nowhere to put a status.
        assert_eq!(
            run(&mem, &[r(0x1000, 16)], &LIMITS).op,
            Err(RequestError::NoStatusByte)
        );
        // Short header.
        assert_eq!(
            run(&mem, &[r(0x1000, 8), w(0x3000, 1)], &LIMITS).op,
            Err(RequestError::ShortHeader)
        );
        // Readable after writable.
        assert_eq!(
            run(
                &mem,
                &[r(0x1000, 16), w(0x2000, 512), r(0x1000, 16), w(0x3000, 1)],
                &LIMITS
            )
            .op,
            Err(RequestError::ReadableAfterWritable)
        );
        // Header outside guest memory.
        assert_eq!(
            run(&mem, &[r(0xdead_0000, 16), w(0x3000, 1)], &LIMITS).op,
            Err(RequestError::GuestMemory)
        );
        // Misaligned read.
        assert_eq!(
            run(
                &mem,
                &[r(0x1000, 16), w(0x2000, 100), w(0x3000, 1)],
                &LIMITS
            )
            .op,
            Err(RequestError::Misaligned)
        );
        // Past the end: sector 2047 + 1024 bytes.
        assert_eq!(
            run(
                &mem,
                &[r(0x9000, 16), r(0x4000, 1024), w(0x3000, 1)],
                &LIMITS
            )
            .op,
            Err(RequestError::OutOfRange)
        );
        // Too many segments.
        let many: Vec<Desc> = [r(0x1000, 16)]
            .into_iter()
            .chain((0..5).map(|i| w(0x10000 + i * 0x1000, 512)))
            .chain([w(0x3000, 1)])
            .collect();
        assert_eq!(
            run(&mem, &many, &LIMITS).op,
            Err(RequestError::TooManySegments)
        );
        // Wrong direction: a read request with readable data.
        assert_eq!(
            run(
                &mem,
                &[r(0x1000, 16), r(0x4000, 512), w(0x3000, 1)],
                &LIMITS
            )
            .op,
            Err(RequestError::WrongDirection)
        );
        // Huge lengths are refused without allocating anything.
        assert_eq!(
            run(
                &mem,
                &[
                    r(0x1000, 16),
                    w(0x2000, u32::MAX),
                    w(0x2000, u32::MAX),
                    w(0x3000, 1)
                ],
                &LIMITS
            )
            .op,
            Err(RequestError::Misaligned)
        );
        assert_eq!(
            run(
                &mem,
                &[r(0x1000, 16), w(0x2000, 1 << 31), w(0x3000, 1)],
                &LIMITS
            )
            .op,
            Err(RequestError::TooLarge)
        );
        // Unsupported type gets UNSUPP.
        let mem = Mem(vec![(0x1000, header(99, 0))]);
        let p = run(&mem, &[r(0x1000, 16), w(0x3000, 1)], &LIMITS);
        assert_eq!(p.op, Err(RequestError::Unsupported(99)));
        assert_eq!(RequestError::Unsupported(99).status(), S_UNSUPP);
    }

    #[test]
    fn writes_to_read_only_disks_fail() {
        let ro = Limits {
            read_only: true,
            ..LIMITS
        };
        let mem = Mem(vec![(0x1000, header(T_OUT, 0))]);
        assert_eq!(
            run(&mem, &[r(0x1000, 16), r(0x4000, 512), w(0x3000, 1)], &ro).op,
            Err(RequestError::ReadOnly)
        );
        let mem = Mem(vec![(0x1000, header(T_IN, 0))]);
        assert!(
            run(&mem, &[r(0x1000, 16), w(0x2000, 512), w(0x3000, 1)], &ro)
                .op
                .is_ok()
        );
    }

    fn dwz(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
        let mut v = sector.to_le_bytes().to_vec();
        v.extend_from_slice(&sectors.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v
    }

    #[test]
    fn discard_and_write_zeroes_ranges_are_validated() {
        let mut ok = header(T_WRITE_ZEROES, 0);
        ok.extend(dwz(8, 16, WZ_FLAG_UNMAP));
        let mem = Mem(vec![(0x1000, ok)]);
        assert_eq!(
            run(&mem, &[r(0x1000, 32), w(0x3000, 1)], &LIMITS).op,
            Ok(Op::WriteZeroes(vec![DwzRange {
                sector: 8,
                sectors: 16,
                unmap: true
            }]))
        );
        let mut bad_flag = header(T_DISCARD, 0);
        bad_flag.extend(dwz(8, 16, WZ_FLAG_UNMAP));
        let mut past_end = header(T_DISCARD, 0);
        past_end.extend(dwz(2040, 16, 0));
        let mut odd = header(T_DISCARD, 0);
        odd.extend(&dwz(0, 8, 0)[..12]);
        let mut three = header(T_DISCARD, 0);
        for _ in 0..3 {
            three.extend(dwz(0, 8, 0));
        }
        let mem = Mem(vec![
            (0x1000, bad_flag),
            (0x2000, past_end),
            (0x3000, odd),
            (0x4000, three),
        ]);
        assert_eq!(
            run(&mem, &[r(0x1000, 32), w(0x9000, 1)], &LIMITS).op,
            Err(RequestError::BadDwzPayload)
        );
        assert_eq!(
            run(&mem, &[r(0x2000, 32), w(0x9000, 1)], &LIMITS).op,
            Err(RequestError::OutOfRange)
        );
        assert_eq!(
            run(&mem, &[r(0x3000, 28), w(0x9000, 1)], &LIMITS).op,
            Err(RequestError::BadDwzPayload)
        );
        assert_eq!(
            run(&mem, &[r(0x4000, 64), w(0x9000, 1)], &LIMITS).op,
            Err(RequestError::TooManySegments)
        );
    }

    #[test]
    fn get_id_and_flush() {
        let mem = Mem(vec![
            (0x1000, header(T_GET_ID, 0)),
            (0x2000, header(T_FLUSH, 0)),
        ]);
        assert_eq!(
            run(&mem, &[r(0x1000, 16), w(0x5000, 21)], &LIMITS).op,
            Ok(Op::GetId {
                len: 20,
                data: vec![Segment {
                    addr: 0x5000,
                    len: 20
                }]
            })
        );
        assert_eq!(
            run(&mem, &[r(0x2000, 16), w(0x5000, 1)], &LIMITS).op,
            Ok(Op::Flush)
        );
    }
}

#[cfg(test)]
mod broken_chain_tests {
    use super::*;

    #[test]
    fn status_of_a_broken_chain_is_its_last_writable_byte() {
        let d = |addr, len, write_only| Desc {
            addr,
            len,
            write_only,
        };
        assert_eq!(
            last_writable_byte(&[
                d(0x1000, 16, false),
                d(0x2000, 512, true),
                d(0x3000, 1, true)
            ]),
            Some(0x3000)
        );
        assert_eq!(
            last_writable_byte(&[
                d(0x1000, 16, false),
                d(0x2000, 512, true),
                d(0x3000, 0, true)
            ]),
            Some(0x21ff)
        );
        assert_eq!(last_writable_byte(&[d(0x1000, 16, false)]), None);
        assert_eq!(RequestError::BrokenChain.status(), S_IOERR);
    }
}
