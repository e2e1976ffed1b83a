//! blkback's request parsing against arbitrary ring slots: whatever a
//! frontend writes into a slot, `parse` returns a request whose segments
//! stay inside their page and whose sectors stay inside the disk, or a
//! refusal; it never panics.
#![no_main]

use host_backend::xen::request::{parse, BlkOp, Geometry, SECTOR};
use libfuzzer_sys::fuzz_target;
use xenbus::wire::blkif::BlkifRequest;
use zerocopy::FromBytes;

fuzz_target!(|data: &[u8]| {
    let Some((geo, slot)) = data.split_first_chunk::<9>() else {
        return;
    };
    let Ok((raw, _)) = BlkifRequest::read_from_prefix(slot) else {
        return;
    };
    let mut sectors = [0u8; 8];
    sectors.copy_from_slice(&geo[..8]);
    let geo = Geometry {
        sectors: u64::from_le_bytes(sectors) >> (geo[8] & 63),
        read_only: geo[8] & 0x40 != 0,
        discard: geo[8] & 0x80 != 0,
    };
    let Ok(req) = parse(&raw, &geo) else {
        return;
    };
    assert_eq!(req.id, raw.id);
    match req.op {
        BlkOp::Read { sector, segs } | BlkOp::Write { sector, segs } => {
            assert!(!segs.is_empty() && segs.len() <= 11);
            let mut total = 0u64;
            for s in &segs {
                assert!(s.offset() + s.len() <= 4096, "segment leaves its page");
                total += s.len() as u64 / SECTOR;
            }
            assert!(sector + total <= geo.sectors, "beyond the disk");
        }
        BlkOp::Discard {
            sector, sectors, ..
        } => {
            assert!(geo.discard && !geo.read_only);
            assert!(sector
                .checked_add(sectors)
                .is_some_and(|e| e <= geo.sectors));
        }
        BlkOp::Flush => {}
    }
});
