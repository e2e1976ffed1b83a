//! SCSI CDB decisions on arbitrary disks, CDBs, parameter lists and buffer
//! lengths; see `pv_blk_windows::testing` for the input format and the
//! invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pv_blk_windows::testing::cdb(data);
});
