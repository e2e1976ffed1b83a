//! virtio-net RX completion path against a scripted hostile device; see `pv_net::testing::fuzz` for the script format and the
//! invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pv_net::testing::fuzz::virtio(data);
});
