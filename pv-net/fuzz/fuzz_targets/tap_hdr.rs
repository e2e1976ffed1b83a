//! pvnetd's mapping of the `virtio_net_hdr` the guest kernel writes to its
//! TAP (`pv_net::tap_hdr`) into the frontend's transmit path; see
//! `pv_net::testing::fuzz::tap_hdr` for the input format and invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pv_net::testing::fuzz::tap_hdr(data);
});
