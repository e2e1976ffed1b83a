//! xenbus's validated virtqueue against a scripted hostile used ring; see `pv_net::testing::fuzz` for the script format and the
//! invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pv_net::testing::fuzz::virtq(data);
});
