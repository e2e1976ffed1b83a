//! The protocol cores stay portable: every crate listed in the workspace's
//! `no_std_cores` builds with only `core` + `alloc` for the Windows kernel
//! target (`x86_64-pc-windows-msvc`) and for bare metal
//! (`x86_64-unknown-none`), with `panic = "abort"`.
//!
//! This uses Debian's `rustc-web`/`cargo-web`/`rust-web-src` (1.96) at
//! /usr/bin, whose library sources allow `-Zbuild-std` (the rustup toolchain
//! here has no rust-src). A std leak into a core is a build failure here; a
//! fixture crate that leaks std proves the check catches it.

use std::path::{Path, PathBuf};
use std::process::Output;

const TARGETS: [&str; 2] = ["x86_64-pc-windows-msvc", "x86_64-unknown-none"];
const SYSTEM_CARGO: &str = "/usr/bin/cargo";
const SYSTEM_RUSTC: &str = "/usr/bin/rustc";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn manifest() -> toml::Table {
    let text =
        std::fs::read_to_string(root().join("Cargo.toml")).expect("read workspace Cargo.toml");
    text.parse().expect("parse workspace Cargo.toml")
}

fn string_list(v: Option<&toml::Value>) -> Vec<String> {
    v.and_then(toml::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn metadata_list(key: &str) -> Vec<String> {
    let m = manifest();
    string_list(
        m.get("workspace")
            .and_then(|w| w.get("metadata"))
            .and_then(|w| w.get("pvdrivers"))
            .and_then(|w| w.get(key)),
    )
}

fn cores() -> Vec<String> {
    let list = metadata_list("no_std_cores");
    assert!(
        !list.is_empty(),
        "workspace.metadata.pvdrivers.no_std_cores is empty"
    );
    list
}

fn lib_is_no_std(member: &str) -> bool {
    std::fs::read_to_string(root().join(member).join("src/lib.rs"))
        .map(|s| s.lines().any(|l| l.trim() == "#![no_std]"))
        .unwrap_or(false)
}

fn build_std(manifest_dir: &Path, target_dir: &Path, packages: &[String]) -> Output {
    for tool in [SYSTEM_CARGO, SYSTEM_RUSTC] {
        assert!(
            Path::new(tool).exists(),
            "{tool} missing: install Debian's rustc-web cargo-web rust-web-src (the README's test command does)"
        );
    }
    let mut cmd = pvtest::windows::system_cargo();
    cmd.current_dir(manifest_dir)
        .args([
            "build",
            "--lib",
            "--no-default-features",
            "-Zbuild-std=core,alloc",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    for t in TARGETS {
        cmd.args(["--target", t]);
    }
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.output().expect("run /usr/bin/cargo")
}

/// The package name of the member at `member` (a path: `pv-blk/windows` is
/// package `pv-blk-windows`), which `cargo -p` needs.
fn package_name(member: &str) -> String {
    let text = std::fs::read_to_string(root().join(member).join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("read {member}/Cargo.toml: {e}"));
    let t: toml::Table = text.parse().expect("parse member Cargo.toml");
    t.get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("{member}/Cargo.toml has no package name"))
        .to_owned()
}

#[test]
fn every_no_std_crate_is_listed_as_a_core() {
    let m = manifest();
    let members = string_list(m.get("workspace").and_then(|w| w.get("members")));
    let cores = cores();
    // Windows kernel crates are no_std too, and are built (as drivers) by
    // tests/tests/windows_drivers.rs instead.
    let kernel = metadata_list("windows_kernel");
    for member in &members {
        if lib_is_no_std(member) {
            assert!(
                cores.contains(member) || kernel.contains(member),
                "{member} is #![no_std] but in neither no_std_cores nor windows_kernel"
            );
        }
    }
    for k in &kernel {
        assert!(
            members.contains(k),
            "windows_kernel crate {k} is not a workspace member"
        );
    }
    for core in &cores {
        assert!(
            members.contains(core),
            "core {core} is not a workspace member"
        );
        assert!(
            lib_is_no_std(core),
            "core {core} lacks #![no_std] in src/lib.rs"
        );
    }
}

#[test]
fn cores_build_for_windows_kernel_and_bare_metal() {
    let packages: Vec<String> = cores().iter().map(|c| package_name(c)).collect();
    let out = build_std(&root(), &root().join("target/portable"), &packages);
    assert!(
        out.status.success(),
        "a no_std core does not build for {TARGETS:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_std_leak_is_caught() {
    let fixture = root().join("tests/fixtures/std-leak");
    let out = build_std(
        &fixture,
        &root().join("target/portable-fixture"),
        &["std-leak".to_owned()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the std-leak fixture built for {TARGETS:?}: the portability check is blind"
    );
    assert!(
        stderr.contains("can't find crate for `std`"),
        "failed for another reason:\n{stderr}"
    );
}
