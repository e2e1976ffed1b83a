//! The validated virtqueue against a scripted hostile used ring; see
//! `pv_virtq::testing::fuzz` for the script format and the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pv_virtq::testing::fuzz::virtq(data);
});
