//! A short deterministic run of the queue's fuzz driver
//! (`pv_virtq::testing::fuzz`) over pseudo-random scripts, so every test
//! run exercises the hostile used-ring paths; the cargo-fuzz target in
//! `pv-virtq/fuzz/` runs the same driver for real campaigns.

use pv_virtq::testing::fuzz;

/// xorshift64*: deterministic scripts without a dependency.
fn scripts(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut x = seed;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..n)
        .map(|_| {
            let len = (next() % 512) as usize;
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}

#[test]
fn virtq_survives_random_devices() {
    for s in scripts(0x5eed_0103, 400) {
        fuzz::virtq(&s);
    }
}
