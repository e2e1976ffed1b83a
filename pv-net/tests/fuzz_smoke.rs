//! A short deterministic run of the fuzz drivers (`pv_net::testing::fuzz`)
//! over pseudo-random scripts, so every test run exercises the hostile
//! completion paths of both transports; the cargo-fuzz targets in
//! `pv-net/fuzz/` run the same drivers for real campaigns.

use pv_net::testing::fuzz;
use pv_virtq::testing::fuzz::scripts;

#[test]
fn virtio_rx_path_survives_random_devices() {
    for s in scripts(0x5eed_0101, 300) {
        fuzz::virtio(&s);
    }
}

#[test]
fn xen_rx_path_survives_random_backends() {
    for s in scripts(0x5eed_0102, 150) {
        fuzz::xen(&s);
    }
}

#[test]
fn tap_header_mapping_survives_random_packets() {
    for mut s in scripts(0x5eed_0104, 300) {
        // Half the packets get a plausible NEEDS_CSUM header so the
        // checksum paths run, not only the refusals.
        if s.len() > 13 && s[0] & 2 != 0 {
            s[1] = 1;
            s[2] = 0;
            s[3..5].fill(0);
            s[5] %= 64;
            s[6] = 0;
            s[7] %= 20;
            s[8] = 0;
        }
        fuzz::tap_hdr(&s);
    }
}

/// The target's own seed that caught a wrong checksum invariant: a UDP-like
/// NEEDS_CSUM frame (start 34, offset 6) to a device without CSUM, so the
/// checksum is completed in software and verified.
#[test]
fn tap_header_software_checksum_seed() {
    let mut s = vec![1u8, 1, 0, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0];
    s.extend(0u8..60);
    fuzz::tap_hdr(&s);
    s[0] = 0; // the device completes it
    fuzz::tap_hdr(&s);
}

#[test]
fn software_segmentation_survives_random_frames() {
    for mut s in scripts(0x5eed_0105, 400) {
        // Most scripts build a well-formed frame (mode bit 2) with a
        // small segment size, so segmentation runs, not only refusals.
        if s.len() > 6 && s[0] & 0x30 != 0 {
            s[0] |= 4;
            s[2] = 0;
            s[1] = s[1] % 200 + 1;
        }
        fuzz::gso(&s);
    }
}
