//! blkif requests as the backend accepts them. The ring hands us a copy of
//! the slot (read once); [`parse`] validates the copy against the disk and
//! what we offered, and only a [`BlkRequest`] is ever acted on.

use xenbus::platform::GrantRef;
use xenbus::wire::blkif::{
    BlkifRequest, BlkifRequestDiscard, DISCARD_SECURE, MAX_SEGMENTS_PER_REQUEST, OP_DISCARD,
    OP_FLUSH_DISKCACHE, OP_INDIRECT, OP_READ, OP_WRITE, OP_WRITE_BARRIER,
};
use zerocopy::{FromBytes, IntoBytes};

/// Sector size of the protocol (no `feature-large-sector-size`).
pub const SECTOR: u64 = 512;
/// Sectors in a page.
pub const SECTORS_PER_PAGE: u8 = 8;

/// What the backend offered and the disk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Disk size in 512-byte sectors.
    pub sectors: u64,
    /// The disk is read-only.
    pub read_only: bool,
    /// `feature-discard` was offered.
    pub discard: bool,
}

/// One segment: sectors `first..=last` of the page granted as `gref`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The grant.
    pub gref: GrantRef,
    /// First sector in the page (0..=7).
    pub first: u8,
    /// Last sector in the page (first..=7).
    pub last: u8,
}

impl Segment {
    /// Bytes of the segment.
    pub fn len(&self) -> usize {
        (usize::from(self.last - self.first) + 1) * SECTOR as usize
    }

    /// Never empty once validated.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Byte offset in the page.
    pub fn offset(&self) -> usize {
        usize::from(self.first) * SECTOR as usize
    }
}

/// A validated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlkOp {
    /// Read into the segments (granted writable to us).
    Read {
        /// First sector.
        sector: u64,
        /// Up to 11 segments.
        segs: Vec<Segment>,
    },
    /// Write from the segments (granted read-only is enough).
    Write {
        /// First sector.
        sector: u64,
        /// Up to 11 segments.
        segs: Vec<Segment>,
    },
    /// Flush the disk's cache (`FLUSH_DISKCACHE`, or a zero-segment
    /// `WRITE_BARRIER`).
    Flush,
    /// Discard `sectors` sectors from `sector`.
    Discard {
        /// First sector.
        sector: u64,
        /// How many.
        sectors: u64,
        /// `BLKIF_DISCARD_SECURE` was asked.
        secure: bool,
    },
}

/// A request with its id and the operation its response echoes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkRequest {
    /// The frontend's id, echoed.
    pub id: u64,
    /// The `operation` byte, echoed.
    pub operation: u8,
    /// What to do.
    pub op: BlkOp,
}

/// Why a request was refused (answered with an error status, the ring
/// goes on). Every variant is the frontend's doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// An operation code blkif does not define.
    #[error("unknown operation {0}")]
    UnknownOp(u8),
    /// An operation we did not offer (indirect, or discard without
    /// `feature-discard`): answered `EOPNOTSUPP`.
    #[error("operation {0} was not offered")]
    NotOffered(u8),
    /// A read or write with no segments, or more than 11.
    #[error("{0} segments")]
    SegmentCount(u8),
    /// A segment whose sectors leave its page or run backwards.
    #[error("segment sectors {first}..={last} are not inside one page")]
    SegmentOutOfPage {
        /// `first_sect`.
        first: u8,
        /// `last_sect`.
        last: u8,
    },
    /// The transfer runs past the end of the disk (or overflows).
    #[error("sectors beyond the end of the disk")]
    BeyondDisk,
    /// A write or discard to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
}

impl BadRequest {
    /// True when the response should be `EOPNOTSUPP` rather than `ERROR`.
    pub fn not_supported(&self) -> bool {
        matches!(self, Self::NotOffered(_))
    }
}

fn segments(raw: &BlkifRequest) -> Result<(Vec<Segment>, u64), BadRequest> {
    let n = raw.nr_segments;
    if n == 0 || usize::from(n) > MAX_SEGMENTS_PER_REQUEST {
        return Err(BadRequest::SegmentCount(n));
    }
    let mut segs = Vec::with_capacity(usize::from(n));
    let mut sectors = 0u64;
    for s in &raw.seg[..usize::from(n)] {
        if s.first_sect > s.last_sect || s.last_sect >= SECTORS_PER_PAGE {
            return Err(BadRequest::SegmentOutOfPage {
                first: s.first_sect,
                last: s.last_sect,
            });
        }
        sectors += u64::from(s.last_sect - s.first_sect) + 1;
        segs.push(Segment {
            gref: s.gref,
            first: s.first_sect,
            last: s.last_sect,
        });
    }
    Ok((segs, sectors))
}

fn in_disk(sector: u64, count: u64, geo: &Geometry) -> Result<(), BadRequest> {
    match sector.checked_add(count) {
        Some(end) if end <= geo.sectors => Ok(()),
        _ => Err(BadRequest::BeyondDisk),
    }
}

/// Validate a copy of a ring slot. On refusal the id and operation to
/// answer with are `raw.id` and `raw.operation`.
pub fn parse(raw: &BlkifRequest, geo: &Geometry) -> Result<BlkRequest, BadRequest> {
    let op = match raw.operation {
        OP_READ | OP_WRITE => {
            let (segs, count) = segments(raw)?;
            in_disk(raw.sector_number, count, geo)?;
            if raw.operation == OP_READ {
                BlkOp::Read {
                    sector: raw.sector_number,
                    segs,
                }
            } else {
                if geo.read_only {
                    return Err(BadRequest::ReadOnly);
                }
                BlkOp::Write {
                    sector: raw.sector_number,
                    segs,
                }
            }
        }
        OP_FLUSH_DISKCACHE => BlkOp::Flush,
        // A barrier with data would need ordering we do not offer; Linux
        // blkfront only sends the zero-segment form when flush is missing.
        OP_WRITE_BARRIER if raw.nr_segments == 0 => BlkOp::Flush,
        OP_WRITE_BARRIER | OP_INDIRECT => return Err(BadRequest::NotOffered(raw.operation)),
        OP_DISCARD => {
            if !geo.discard {
                return Err(BadRequest::NotOffered(OP_DISCARD));
            }
            // The slot is the same bytes seen through the discard layout.
            let d = BlkifRequestDiscard::read_from_prefix(raw.as_bytes())
                .map(|(d, _)| d)
                .map_err(|_| BadRequest::UnknownOp(OP_DISCARD))?;
            if geo.read_only {
                return Err(BadRequest::ReadOnly);
            }
            in_disk(d.sector_number, d.nr_sectors, geo)?;
            BlkOp::Discard {
                sector: d.sector_number,
                sectors: d.nr_sectors,
                secure: d.flag & DISCARD_SECURE != 0,
            }
        }
        other => return Err(BadRequest::UnknownOp(other)),
    };
    Ok(BlkRequest {
        id: raw.id,
        operation: raw.operation,
        op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xenbus::wire::blkif::BlkifSegment;
    use zerocopy::FromZeros;

    const GEO: Geometry = Geometry {
        sectors: 64,
        read_only: false,
        discard: true,
    };

    fn rw(op: u8, sector: u64, segs: &[(u32, u8, u8)]) -> BlkifRequest {
        let mut r = BlkifRequest::new_zeroed();
        r.operation = op;
        r.id = 0xfeed;
        r.sector_number = sector;
        r.nr_segments = segs.len() as u8;
        for (i, (g, f, l)) in segs.iter().enumerate() {
            r.seg[i] = BlkifSegment {
                gref: *g,
                first_sect: *f,
                last_sect: *l,
                _pad: [0; 2],
            };
        }
        r
    }

    #[test]
    fn reads_and_writes_are_checked_against_page_and_disk() {
        let ok = parse(&rw(OP_READ, 0, &[(9, 0, 7), (10, 2, 3)]), &GEO).expect("valid");
        assert_eq!(ok.id, 0xfeed);
        let BlkOp::Read { sector: 0, segs } = ok.op else {
            panic!("{ok:?}")
        };
        assert_eq!(segs.iter().map(Segment::len).sum::<usize>(), 10 * 512);
        assert_eq!(segs[1].offset(), 1024);
        assert_eq!(
            parse(&rw(OP_WRITE, 0, &[(9, 3, 8)]), &GEO),
            Err(BadRequest::SegmentOutOfPage { first: 3, last: 8 })
        );
        assert_eq!(
            parse(&rw(OP_WRITE, 0, &[(9, 4, 3)]), &GEO),
            Err(BadRequest::SegmentOutOfPage { first: 4, last: 3 })
        );
        assert_eq!(
            parse(&rw(OP_READ, 0, &[]), &GEO),
            Err(BadRequest::SegmentCount(0))
        );
        let mut twelve = rw(OP_READ, 0, &[(9, 0, 0)]);
        twelve.nr_segments = 12;
        assert_eq!(parse(&twelve, &GEO), Err(BadRequest::SegmentCount(12)));
        // Exactly to the end is fine, one sector more is not.
        assert!(parse(&rw(OP_READ, 56, &[(9, 0, 7)]), &GEO).is_ok());
        assert_eq!(
            parse(&rw(OP_READ, 57, &[(9, 0, 7)]), &GEO),
            Err(BadRequest::BeyondDisk)
        );
        assert_eq!(
            parse(&rw(OP_READ, u64::MAX, &[(9, 0, 0)]), &GEO),
            Err(BadRequest::BeyondDisk)
        );
        let ro = Geometry {
            read_only: true,
            ..GEO
        };
        assert_eq!(
            parse(&rw(OP_WRITE, 0, &[(9, 0, 0)]), &ro),
            Err(BadRequest::ReadOnly)
        );
    }

    #[test]
    fn optional_operations() {
        assert_eq!(
            parse(&rw(OP_FLUSH_DISKCACHE, 0, &[]), &GEO).map(|r| r.op),
            Ok(BlkOp::Flush)
        );
        let barrier = parse(&rw(OP_WRITE_BARRIER, 0, &[(9, 0, 0)]), &GEO);
        assert!(barrier.is_err_and(|e| e.not_supported()));
        assert!(parse(&rw(OP_INDIRECT, 0, &[]), &GEO).is_err_and(|e| e.not_supported()));
        assert_eq!(parse(&rw(4, 0, &[]), &GEO), Err(BadRequest::UnknownOp(4)));
        let mut d = BlkifRequestDiscard::new_zeroed();
        d.operation = OP_DISCARD;
        d.flag = DISCARD_SECURE;
        d.sector_number = 8;
        d.nr_sectors = 16;
        let mut raw = BlkifRequest::new_zeroed();
        raw.as_mut_bytes()[..size_of::<BlkifRequestDiscard>()].copy_from_slice(d.as_bytes());
        assert_eq!(
            parse(&raw, &GEO).map(|r| r.op),
            Ok(BlkOp::Discard {
                sector: 8,
                sectors: 16,
                secure: true
            })
        );
        d.nr_sectors = 57;
        raw.as_mut_bytes()[..size_of::<BlkifRequestDiscard>()].copy_from_slice(d.as_bytes());
        assert_eq!(parse(&raw, &GEO), Err(BadRequest::BeyondDisk));
        let no = Geometry {
            discard: false,
            ..GEO
        };
        assert!(parse(&raw, &no).is_err_and(|e| e.not_supported()));
    }
}
