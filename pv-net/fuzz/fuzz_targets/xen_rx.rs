//! Xen netif RX response path against a scripted hostile backend; see `pv_net::testing::fuzz` for the script format and the
//! invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pv_net::testing::fuzz::xen(data);
});
