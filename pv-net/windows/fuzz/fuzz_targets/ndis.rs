//! OID queries and sets, NET_BUFFER MDL chains, transmit checksum requests
//! and received frames on arbitrary adapters; see
//! `pv_net_windows::testing` for the input format and the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pv_net_windows::testing::run(data);
});
