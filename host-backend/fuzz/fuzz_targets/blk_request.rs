//! virtio-blk request parsing on hostile descriptor chains: any chain a
//! guest can build (order, lengths, addresses, headers, discard payloads)
//! yields a typed result, never a panic, and every accepted request stays
//! inside the disk and within the device's limits.
#![no_main]

use host_backend::blk::request::{parse, Desc, Limits, Op, RequestError, SECTOR};
use libfuzzer_sys::fuzz_target;

const MEM_BASE: u64 = 0x1000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let ndesc = usize::from(data[0] % 12);
    let flags = data[1];
    let mut rest = &data[2..];
    let mut descs = Vec::new();
    for _ in 0..ndesc {
        if rest.len() < 7 {
            break;
        }
        // Addresses land in or around the fake guest memory; lengths are
        // small or huge.
        let addr = MEM_BASE.wrapping_add(u64::from(u16::from_le_bytes([rest[0], rest[1]])))
            ^ (u64::from(rest[2] & 0x80) << 40);
        let len = match rest[3] & 3 {
            0 => u32::from(rest[4]),
            1 => u32::from(u16::from_le_bytes([rest[4], rest[5]])),
            2 => u32::MAX - u32::from(rest[4]),
            _ => 512 * u32::from(rest[4]),
        };
        descs.push(Desc {
            addr,
            len,
            write_only: rest[6] & 1 == 1,
        });
        rest = &rest[7..];
    }
    let mem = rest;
    let limits = Limits {
        capacity_sectors: 4096,
        seg_max: 1 + u32::from(flags & 7),
        max_transfer: 1 << 20,
        max_dwz_sectors: 1024,
        max_dwz_segments: 1 + u32::from((flags >> 3) & 3),
        read_only: flags & 0x80 != 0,
    };
    let parsed = parse(&descs, &limits, |addr, out| {
        let start = addr
            .checked_sub(MEM_BASE)
            .ok_or(RequestError::GuestMemory)? as usize;
        let end = start
            .checked_add(out.len())
            .ok_or(RequestError::GuestMemory)?;
        let src = mem.get(start..end).ok_or(RequestError::GuestMemory)?;
        out.copy_from_slice(src);
        Ok(())
    });
    let cap = limits.capacity_sectors * SECTOR;
    match parsed.op {
        Ok(Op::Read {
            offset,
            len,
            ref data,
        })
        | Ok(Op::Write {
            offset,
            len,
            ref data,
        }) => {
            assert!(parsed.status.is_some());
            assert_eq!(len % SECTOR, 0);
            assert!(offset + len <= cap && len <= limits.max_transfer);
            assert!(data.len() <= limits.seg_max as usize);
            assert_eq!(data.iter().map(|s| u64::from(s.len)).sum::<u64>(), len);
            if let Ok(Op::Write { .. }) = parsed.op {
                assert!(!limits.read_only);
            }
        }
        Ok(Op::Discard(ref r)) | Ok(Op::WriteZeroes(ref r)) => {
            assert!(!limits.read_only);
            assert!(r.len() <= limits.max_dwz_segments as usize);
            for x in r {
                assert!(x.sectors > 0 && x.sectors <= limits.max_dwz_sectors);
                assert!((x.sector + u64::from(x.sectors)) * SECTOR <= cap);
            }
        }
        Ok(Op::GetId { len, .. }) => assert!(len <= 20),
        Ok(Op::Flush) => {}
        Err(RequestError::NoStatusByte) => assert!(parsed.status.is_none()),
        Err(_) => assert!(parsed.status.is_some()),
    }
});
