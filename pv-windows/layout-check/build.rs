//! On Windows: bindgen of the WDK's `ndis.h` (wdk-sys has no NDIS subset)
//! into `$OUT_DIR/ndis.rs`, restricted to the structs pv-windows mirrors.
//! Elsewhere: nothing (the crate has no tests off Windows).

fn main() {
    #[cfg(windows)]
    if let Err(e) = ndis::generate() {
        // A build script reports failure by panicking; say what failed.
        panic!("ndis.h bindings: {e}");
    }
}

#[cfg(windows)]
mod ndis {
    use std::path::PathBuf;

    use wdk_build::{ApiSubset, BuilderExt, Config};

    /// The NDIS structs pv-windows/src/ndis.rs mirrors (their dependencies
    /// come along: bindgen allowlists recursively).
    const TYPES: &[&str] = &[
        "NDIS_OBJECT_HEADER",
        "NDIS_MINIPORT_DRIVER_CHARACTERISTICS",
        "NDIS_MINIPORT_INIT_PARAMETERS",
        "NDIS_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES",
        "NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES",
        "NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES",
        "NDIS_OID_REQUEST",
        "NET_BUFFER",
        "NET_BUFFER_LIST",
        "NET_BUFFER_LIST_POOL_PARAMETERS",
        "NDIS_TIMER_CHARACTERISTICS",
        "NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS",
        "NDIS_SPIN_LOCK",
        "NDIS_STATUS_INDICATION",
    ];

    pub fn generate() -> Result<(), Box<dyn std::error::Error>> {
        let config = Config::from_env_auto()?;
        // The base kernel headers of the driver model, then ndis.h as a
        // NDIS 6.20 miniport (our characteristics are revision 2).
        let header = format!(
            "{}#include \"ndis.h\"\n",
            config.bindgen_header_contents([ApiSubset::Base])?
        );
        let mut builder = bindgen::Builder::wdk_default(&config)?
            .header_contents("pv-layout-check-ndis.h", &header)
            .clang_arg("--define-macro=NDIS_MINIPORT_DRIVER=1")
            .clang_arg("--define-macro=NDIS620_MINIPORT=1")
            .layout_tests(false);
        for t in TYPES {
            builder = builder.allowlist_type(t);
        }
        let out = PathBuf::from(std::env::var("OUT_DIR")?).join("ndis.rs");
        builder.generate()?.write_to_file(&out)?;
        println!("cargo::rerun-if-changed=build.rs");
        Ok(())
    }
}
