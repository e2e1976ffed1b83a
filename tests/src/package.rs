//! Building and reading the suite's packages in the package tests
//! (`host_package`, `guest_package`): `cargo deb`, `cargo generate-rpm`
//! (both installed by `./dev.sh setup`), `dpkg-deb`, `rpm`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::guest_bins::workspace_root;
use crate::HarnessError;

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn check(what: &str, out: &std::process::Output) -> Result<String, HarnessError> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(HarnessError::Setup(format!(
            "{what} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(stdout)
}

/// `cargo build --release --locked` of `packages` (binaries a package
/// ships from other crates than its own).
pub fn build_release(packages: &[&str]) -> Result<(), HarnessError> {
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args(["build", "--release", "--locked"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let out = cmd
        .output()
        .map_err(|e| HarnessError::io("run cargo build --release".into(), e))?;
    check("cargo build --release", &out).map(drop)
}

/// The package file a packager printed (its last line ending in `ext`),
/// moved out of `out_dir` to `target/<kind>/<pid>-<name>` (nextest runs
/// each test in its own process: two may build at once), `out_dir` removed.
fn keep(stdout: &str, ext: &str, out_dir: &Path) -> Result<PathBuf, HarnessError> {
    let path = stdout
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(ext))
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| HarnessError::Setup(format!("no {ext} path in:\n{stdout}")))?;
    let path = if path.is_absolute() {
        path
    } else {
        workspace_root().join(path)
    };
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let kept = out_dir
        .parent()
        .unwrap_or(out_dir)
        .join(format!("{}-{name}", std::process::id()));
    std::fs::rename(&path, &kept)
        .map_err(|e| HarnessError::io(format!("move {}", path.display()), e))?;
    let _ = std::fs::remove_dir_all(out_dir);
    Ok(kept)
}

/// `cargo deb -p package` into a directory of this process's own; with
/// `no_build`, from binaries built before ([`build_release`]).
pub fn cargo_deb(package: &str, no_build: bool) -> Result<PathBuf, HarnessError> {
    let out_dir = workspace_root()
        .join("target/debian")
        .join(std::process::id().to_string());
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args(["deb", "--locked", "-p", package, "-o"])
        .arg(&out_dir);
    if no_build {
        cmd.arg("--no-build");
    }
    let out = cmd.output().map_err(|e| {
        HarnessError::io(
            "run cargo deb (./dev.sh setup installs cargo-deb)".into(),
            e,
        )
    })?;
    let stdout = check("cargo deb", &out)?;
    keep(&stdout, ".deb", &out_dir)
}

/// `cargo generate-rpm -p package`, from binaries built before.
pub fn cargo_generate_rpm(package: &str) -> Result<PathBuf, HarnessError> {
    let out_dir = workspace_root()
        .join("target/generate-rpm")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| HarnessError::io(format!("create {}", out_dir.display()), e))?;
    let out = cargo()
        .current_dir(workspace_root())
        .args(["generate-rpm", "-p", package, "-o"])
        .arg(&out_dir)
        .output()
        .map_err(|e| {
            HarnessError::io(
                "run cargo generate-rpm (./dev.sh setup installs it)".into(),
                e,
            )
        })?;
    check("cargo generate-rpm", &out)?;
    // It prints nothing: the one .rpm in the directory is it.
    let rpm = std::fs::read_dir(&out_dir)
        .map_err(|e| HarnessError::io(format!("list {}", out_dir.display()), e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "rpm"))
        .ok_or_else(|| HarnessError::Setup(format!("no .rpm in {}", out_dir.display())))?;
    keep(&format!("{}\n", rpm.display()), ".rpm", &out_dir)
}

/// Output of a packaging tool run on a package (`dpkg-deb -c`, `rpm -qlp`).
pub fn query(tool: &str, args: &[&str], package: &Path) -> Result<String, HarnessError> {
    let out = Command::new(tool)
        .args(args)
        .arg(package)
        .output()
        .map_err(|e| HarnessError::io(format!("run {tool}"), e))?;
    check(&format!("{tool} {args:?}"), &out)
}

/// The maintainer scripts and control files of a .deb, by name.
pub fn deb_control(deb: &Path) -> Result<tempfile::TempDir, HarnessError> {
    let dir = tempfile::tempdir().map_err(|e| HarnessError::io("tempdir".into(), e))?;
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(deb)
        .arg(dir.path())
        .output()
        .map_err(|e| HarnessError::io("run dpkg-deb -e".into(), e))?;
    check("dpkg-deb -e", &out)?;
    Ok(dir)
}
