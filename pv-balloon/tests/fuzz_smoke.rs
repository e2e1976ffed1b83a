//! A short deterministic run of the fuzz drivers
//! (`pv_balloon::testing::fuzz`) over pseudo-random scripts, so every test
//! run exercises the hostile paths; the cargo-fuzz targets in
//! `pv-balloon/fuzz/` run the same drivers for real campaigns.

use pv_balloon::testing::fuzz;

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
fn virtio_device_path_survives_random_devices() {
    for s in scripts(0xba11_0001, 400) {
        fuzz::virtio(&s);
    }
}

#[test]
fn xen_path_survives_random_hosts() {
    for s in scripts(0xba11_0002, 400) {
        fuzz::xen(&s);
    }
}

#[test]
fn seeds_run_clean() {
    fuzz::virtio(include_bytes!(
        "../fuzz/seeds/virtio_device/honest-then-out-of-turn"
    ));
    fuzz::virtio(include_bytes!(
        "../fuzz/seeds/virtio_device/big-pages-hostile"
    ));
    fuzz::xen(include_bytes!(
        "../fuzz/seeds/xen_target/inflate-partial-deflate-lie"
    ));
    fuzz::xen(include_bytes!("../fuzz/seeds/xen_target/bad-targets"));
}
