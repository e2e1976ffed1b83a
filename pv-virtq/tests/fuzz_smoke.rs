//! A short deterministic run of the queue's fuzz driver
//! (`pv_virtq::testing::fuzz`) over pseudo-random scripts, so every test
//! run exercises the hostile used-ring paths; the cargo-fuzz target in
//! `pv-virtq/fuzz/` runs the same driver for real campaigns.

use pv_virtq::testing::fuzz::{self, scripts};

#[test]
fn virtq_survives_random_devices() {
    for s in scripts(0x5eed_0103, 400) {
        fuzz::virtq(&s);
    }
}
