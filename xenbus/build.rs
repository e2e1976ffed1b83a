//! Builds the C conformance peer (`tests/c/`) from Debian's `libxen-dev`
//! headers, for the tests only, and only when that can work: the build is for
//! the host itself (not the Windows kernel or bare-metal targets this crate
//! also builds for), the host is Linux, and the headers are installed. Then
//! it sets `cfg(xen_c_peer)`; without it on a Linux host `tests/ring_c_peer.rs`
//! fails (a missing peer must not pass).

use std::env;
use std::path::Path;

const HEADERS: &str = "/usr/include/xen/io/ring.h";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(xen_c_peer)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=tests/c");
    println!("cargo::rerun-if-changed={HEADERS}");

    let target = env::var("TARGET").unwrap_or_default();
    let host = env::var("HOST").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target != host || os != "linux" {
        return;
    }
    if !Path::new(HEADERS).exists() {
        println!(
            "cargo::warning=xen headers not found at {HEADERS} (apt-get install libxen-dev): the C conformance test fails"
        );
        return;
    }
    cc::Build::new()
        .file("tests/c/peer64.c")
        .file("tests/c/peer32.c")
        .warnings(true)
        .extra_warnings(true)
        .opt_level(2)
        .compile("xen_c_peer");
    println!("cargo::rustc-cfg=xen_c_peer");
}
