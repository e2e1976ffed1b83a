//! Software TCP segmentation (`pv_net::gso`, the switch's fallback for a
//! receiver without TSO) on hostile frames; see
//! `pv_net::testing::fuzz::gso` for the input format and invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pv_net::testing::fuzz::gso(data);
});
