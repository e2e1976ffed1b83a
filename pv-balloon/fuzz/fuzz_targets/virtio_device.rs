//! virtio-balloon against a scripted hostile device; see
//! `pv_balloon::testing::fuzz` for the script format and the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pv_balloon::testing::fuzz::virtio(data);
});
