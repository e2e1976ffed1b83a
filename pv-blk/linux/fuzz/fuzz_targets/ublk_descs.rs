//! The ublk descriptor decoder on arbitrary descriptors (the driver writes
//! them into memory we only read, so treat them as untrusted): it must
//! never panic, and every request it accepts must lie within the device
//! and, for data requests, fit the tag's buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pv_blk_linux::ublk::wire::{decode, IoDesc, IoRequest};

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (head, descs) = data.split_at(12);
    let capacity = u64::from_le_bytes(head[0..8].try_into().unwrap_or([0; 8]));
    let buf_bytes = u32::from_le_bytes(head[8..12].try_into().unwrap_or([0; 4])) as usize;
    for chunk in descs.chunks_exact(IoDesc::SIZE) {
        let Ok(bytes) = <&[u8; IoDesc::SIZE]>::try_from(chunk) else {
            continue;
        };
        let d = IoDesc::from_bytes(bytes);
        match decode(&d, capacity, buf_bytes) {
            Ok(IoRequest::Read { sector, sectors } | IoRequest::Write { sector, sectors }) => {
                assert!(sectors > 0);
                assert!(u64::from(sectors) * 512 <= buf_bytes as u64);
                assert!(sector + u64::from(sectors) <= capacity);
            }
            Ok(
                IoRequest::Discard { sector, sectors }
                | IoRequest::WriteZeroes {
                    sector, sectors, ..
                },
            ) => {
                assert!(sectors > 0);
                assert!(sector + u64::from(sectors) <= capacity);
            }
            Ok(IoRequest::Flush) => {}
            Err(e) => assert!(e.errno() < 0),
        }
    }
});
