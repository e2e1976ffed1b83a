//! Our own programs the tests run: guest binaries, built static (glibc with
//! `crt-static`) into `target/guest/`, and host binaries (the backend
//! daemon), built in release mode into `target/host/`; each set once per
//! test process. Separate target directories keep these builds off the lock
//! of the directory the test runner itself was built in, and cargo's own
//! lock on them serialises concurrent test processes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::HarnessError;

/// Target triple of the guest binaries.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Every guest binary: (binary, package). Each lives in its device's Linux
/// runtime crate (`pv-*/linux/`).
pub const GUEST_BINARIES: &[(&str, &str)] = &[
    ("pvio", "pv-blk-linux"),
    ("pvblkd", "pv-blk-linux"),
    ("pvnetd", "pv-net-linux"),
    ("pvrr", "pv-net-linux"),
    ("pvballoond", "pv-balloon-linux"),
    ("pvmemhog", "pv-balloon-linux"),
];

/// Every host binary: (binary, package).
pub const HOST_BINARIES: &[(&str, &str)] = &[
    ("pvbackend", "host-backend"),
    // The Xen frontend process of the xen_* tests (runs on the host, on the
    // loopback fabric).
    ("pvxenblk", "pv-blk-linux"),
];

/// The workspace root (the harness is one of its members).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The workspace's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds every guest binary (once per process) and returns the directory
/// that holds them.
pub fn build_all() -> Result<PathBuf, HarnessError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| e.to_string()))
        .clone()
        .map_err(HarnessError::Setup)
}

/// Path of one guest binary, building them all first if needed.
pub fn path_of(name: &str) -> Result<PathBuf, HarnessError> {
    if !GUEST_BINARIES.iter().any(|(bin, _)| *bin == name) {
        return Err(HarnessError::Setup(format!(
            "{name} is not a guest binary (see GUEST_BINARIES)"
        )));
    }
    Ok(build_all()?.join(name))
}

/// Path of one host binary (release build), building them all first if needed.
pub fn host_path_of(name: &str) -> Result<PathBuf, HarnessError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if !HOST_BINARIES.iter().any(|(bin, _)| *bin == name) {
        return Err(HarnessError::Setup(format!(
            "{name} is not a host binary (see HOST_BINARIES)"
        )));
    }
    let dir = BUILT
        .get_or_init(|| build_host().map_err(|e| e.to_string()))
        .clone()
        .map_err(HarnessError::Setup)?;
    Ok(dir.join(name))
}

fn build_host() -> Result<PathBuf, HarnessError> {
    let target_dir = target_dir().join("host");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--release", "--target-dir"])
        .arg(&target_dir);
    for (bin, pkg) in HOST_BINARIES {
        cmd.args(["-p", pkg, "--bin", bin]);
    }
    let status = cmd
        .status()
        .map_err(|e| HarnessError::io("run cargo for host binaries".into(), e))?;
    if !status.success() {
        return Err(HarnessError::Setup(format!(
            "building host binaries failed ({status})"
        )));
    }
    Ok(target_dir.join("release"))
}

fn build() -> Result<PathBuf, HarnessError> {
    let target_dir = target_dir().join("guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // One invocation per binary, so a failure names the binary.
    for (bin, pkg) in GUEST_BINARIES {
        let status = Command::new(&cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--release",
                "--target",
                GUEST_TARGET,
                "--target-dir",
            ])
            .arg(&target_dir)
            .args(["-p", pkg, "--bin", bin])
            // Applies to target artefacts only (a --target build keeps build
            // scripts and proc macros dynamic).
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .status()
            .map_err(|e| HarnessError::io("run cargo for guest binaries".into(), e))?;
        if !status.success() {
            return Err(HarnessError::Setup(format!(
                "building guest binary {bin} failed ({status})"
            )));
        }
    }
    Ok(target_dir.join(GUEST_TARGET).join("release"))
}
