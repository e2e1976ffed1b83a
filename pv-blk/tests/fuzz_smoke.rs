//! A short deterministic run of the fuzz drivers (`pv_blk::testing::fuzz`)
//! over pseudo-random scripts, so every test run exercises the hostile
//! completion paths of both transports; the cargo-fuzz targets in
//! `pv-blk/fuzz/` run the same drivers for real campaigns.

use pv_blk::testing::fuzz;
use pv_virtq::testing::fuzz::scripts;

#[test]
fn virtio_completion_path_survives_random_devices() {
    for s in scripts(0x5eed_0001, 400) {
        fuzz::virtio(&s);
    }
}

#[test]
fn xen_response_path_survives_random_backends() {
    for s in scripts(0x5eed_0002, 400) {
        fuzz::xen(&s);
    }
}
