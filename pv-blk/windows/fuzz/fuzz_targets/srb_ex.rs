//! SRB_EX (`STORAGE_REQUEST_BLOCK`) bytes into the miniport's plain types;
//! see `pv_blk_windows::testing::srb_ex` for the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pv_blk_windows::testing::srb_ex(data);
});
