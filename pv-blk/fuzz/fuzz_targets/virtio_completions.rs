//! virtio-blk completion path against a scripted hostile device; see
//! `pv_blk::testing::fuzz` for the script format and the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pv_blk::testing::fuzz::virtio(data);
});
