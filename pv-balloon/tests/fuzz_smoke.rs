//! A short deterministic run of the fuzz drivers
//! (`pv_balloon::testing::fuzz`) over pseudo-random scripts, so every test
//! run exercises the hostile paths; the cargo-fuzz targets in
//! `pv-balloon/fuzz/` run the same drivers for real campaigns.

use pv_balloon::testing::fuzz;
use pv_virtq::testing::fuzz::scripts;

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
