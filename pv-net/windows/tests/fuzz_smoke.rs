//! A short deterministic run of the fuzz driver (`pv_net_windows::testing`)
//! so the invariants are checked by `cargo test`, not only by cargo-fuzz.

use pv_net_windows::testing::{run, Reached};

/// xorshift64*: deterministic inputs without a dependency.
fn inputs(seed: u64, n: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut s = seed;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..n).map(move |_| {
        let len = (next() % 2048) as usize;
        (0..len).map(|_| next() as u8).collect()
    })
}

#[test]
fn fuzz_driver_reaches_every_kind_of_operation() {
    let mut all = Reached::default();
    for input in inputs(0x5eed_f9e7, 3000) {
        let r = run(&input);
        all.query_ok += r.query_ok;
        all.query_err += r.query_err;
        all.set_ok += r.set_ok;
        all.set_err += r.set_err;
        all.gathered += r.gathered;
        all.tx_csum += r.tx_csum;
        all.rx_claimed += r.rx_claimed;
    }
    assert!(all.query_ok > 0 && all.query_err > 0, "{all:?}");
    assert!(all.set_ok > 0 && all.set_err > 0, "{all:?}");
    assert!(all.gathered > 0, "{all:?}");
    assert!(all.tx_csum > 0 && all.rx_claimed > 0, "{all:?}");
}
