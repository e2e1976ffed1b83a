//! The guest kernel: the current Debian cloud kernel, resolved through the
//! `linux-image-cloud-amd64` metapackage, fetched with `apt-get download`
//! and unpacked into the cache, keyed by package version.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, DirLock};
use crate::HarnessError;

/// The metapackage that always depends on the current cloud kernel.
pub const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// An unpacked guest kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64` (the modules directory name).
    pub release: String,
    /// Debian package version, e.g. `6.1.192-2`.
    pub package_version: String,
    /// Path of the bootable image.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the unpacked package.
    pub modules_dir: PathBuf,
}

fn run_capture(cmd: &mut Command) -> Result<String, HarnessError> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| HarnessError::io(format!("run {shown}"), e))?;
    if !out.status.success() {
        return Err(HarnessError::Setup(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses `apt-cache depends linux-image-cloud-amd64` output into the
/// versioned image package it depends on (e.g. `linux-image-6.1.0-56-cloud-amd64`).
pub fn parse_metapackage_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| {
            p.starts_with("linux-image-")
                && p.ends_with("-cloud-amd64")
                && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
        })
        .map(str::to_owned)
}

/// Parses the candidate version out of `apt-cache policy PKG`.
pub fn parse_candidate(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .find(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_owned)
}

/// Resolves and returns the current cloud kernel, downloading and unpacking
/// it on first use. When apt cannot answer (no package lists, no network),
/// falls back to the newest kernel already in the cache, with a warning.
pub fn current() -> Result<Kernel, HarnessError> {
    if let (Some(img), Some(mods)) = (
        std::env::var_os("PVTEST_KERNEL"),
        std::env::var_os("PVTEST_MODULES"),
    ) {
        let modules_dir = PathBuf::from(mods);
        let release = modules_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                HarnessError::Setup("PVTEST_MODULES must name lib/modules/<release>".into())
            })?;
        return Ok(Kernel {
            release,
            package_version: "local".into(),
            vmlinuz: img.into(),
            modules_dir,
        });
    }
    let kdir = cache::root()?.join("kernel");
    match resolve_from_apt() {
        Ok((pkg, version)) => fetch(&kdir, &pkg, &version),
        Err(e) => newest_cached(&kdir).ok_or(e).inspect(|k| {
            eprintln!(
                "pvtest: warning: cannot resolve {METAPACKAGE} through apt; using cached {} {}",
                k.release, k.package_version
            );
        }),
    }
}

fn resolve_from_apt() -> Result<(String, String), HarnessError> {
    let deps = run_capture(Command::new("apt-cache").args(["depends", METAPACKAGE]))?;
    let image = parse_metapackage_depends(&deps).ok_or_else(|| {
        HarnessError::Setup(format!(
            "{METAPACKAGE} names no kernel image (run apt-get update)"
        ))
    })?;
    let pkg = format!("{image}-unsigned");
    let policy = run_capture(Command::new("apt-cache").args(["policy", &pkg]))?;
    let version = parse_candidate(&policy).ok_or_else(|| {
        HarnessError::Setup(format!(
            "no candidate version for {pkg} (run apt-get update)"
        ))
    })?;
    Ok((pkg, version))
}

fn fetch(kdir: &Path, pkg: &str, version: &str) -> Result<Kernel, HarnessError> {
    let dir = kdir.join(format!("{pkg}_{version}"));
    let done = dir.join(".complete");
    if !done.exists() {
        let _lock = DirLock::acquire(kdir)?;
        if !done.exists() {
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir)
                .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
            eprintln!("pvtest: downloading {pkg}={version} into {}", dir.display());
            run_capture(
                Command::new("apt-get")
                    .arg("download")
                    .arg(format!("{pkg}={version}"))
                    .current_dir(&dir),
            )?;
            let deb = fs::read_dir(&dir)
                .map_err(|e| HarnessError::io(format!("list {}", dir.display()), e))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .ok_or_else(|| {
                    HarnessError::Setup(format!(
                        "apt-get download {pkg} left no .deb in {}",
                        dir.display()
                    ))
                })?;
            run_capture(
                Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(&deb)
                    .arg(dir.join("root")),
            )?;
            fs::remove_file(&deb)
                .map_err(|e| HarnessError::io(format!("remove {}", deb.display()), e))?;
            fs::write(&done, version)
                .map_err(|e| HarnessError::io(format!("write {}", done.display()), e))?;
        }
    }
    unpacked(&dir, version)
}

fn unpacked(dir: &Path, version: &str) -> Result<Kernel, HarnessError> {
    let root = dir.join("root");
    let mods = root.join("lib/modules");
    let release = fs::read_dir(&mods)
        .map_err(|e| HarnessError::io(format!("list {}", mods.display()), e))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| HarnessError::Setup(format!("no modules in {}", mods.display())))?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.exists() {
        return Err(HarnessError::Setup(format!(
            "{} missing",
            vmlinuz.display()
        )));
    }
    Ok(Kernel {
        modules_dir: mods.join(&release),
        release,
        package_version: version.to_owned(),
        vmlinuz,
    })
}

fn newest_cached(kdir: &Path) -> Option<Kernel> {
    let mut best: Option<(std::time::SystemTime, PathBuf, String)> = None;
    for entry in fs::read_dir(kdir).ok()?.filter_map(Result::ok) {
        let done = entry.path().join(".complete");
        let (Ok(meta), Ok(version)) = (fs::metadata(&done), fs::read_to_string(&done)) else {
            continue;
        };
        let Ok(mtime) = meta.modified() else { continue };
        if best.as_ref().is_none_or(|(t, _, _)| mtime > *t) {
            best = Some((mtime, entry.path(), version));
        }
    }
    let (_, dir, version) = best?;
    unpacked(&dir, &version).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metapackage_depends_is_parsed() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_metapackage_depends(text).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_metapackage_depends("linux-image-cloud-amd64\n"), None);
        let odd = "x\n  Depends: linux-image-cloud-amd64-dbg\n  Depends: linux-image-6.12.9+bpo-cloud-amd64\n";
        assert_eq!(
            parse_metapackage_depends(odd).as_deref(),
            Some("linux-image-6.12.9+bpo-cloud-amd64")
        );
    }

    #[test]
    fn candidate_is_parsed() {
        let text = "pkg:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n";
        assert_eq!(parse_candidate(text).as_deref(), Some("6.1.192-2"));
        assert_eq!(parse_candidate("pkg:\n  Candidate: (none)\n"), None);
    }
}
