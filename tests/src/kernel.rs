//! The guest kernel: the current Debian cloud kernel, resolved through the
//! `linux-image-cloud-amd64` metapackage, fetched with `apt-get download`
//! and unpacked into the cache, keyed by package version.
//!
//! Two choices ([`KernelChoice`]): the host's own suite (bookworm, 6.1: the
//! default for every test) and bookworm-backports (6.12), for what 6.1
//! lacks (`ublk_drv`). Backports is not in the host's apt sources and is
//! not added there: the harness keeps a private apt state for it under the
//! cache root (its own sources file, lists and cache, `apt-get update`d on
//! first use and when a lookup fails), so the host's apt configuration is
//! never changed. 6.12 ships its modules xz-compressed; they are
//! decompressed once when the package is unpacked, so the module index and
//! the guest's busybox `insmod` see plain `.ko` files.
//!
//! A third choice is built here rather than downloaded: the Rust guest
//! kernel ([`rust`]), for our in-kernel Rust modules.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, DirLock};
use crate::HarnessError;

pub mod extmod;
pub mod rust;

/// The metapackage that always depends on the current cloud kernel.
pub const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Which Debian kernel a guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// The host suite's cloud kernel (bookworm: 6.1). The default.
    #[default]
    Current,
    /// bookworm-backports' cloud kernel (6.12: has `ublk_drv`).
    Backports,
    /// A `CONFIG_RUST` kernel (7.3) built here from Debian's source package
    /// and cached ([`rust`]): the one our Rust kernel modules load into.
    /// Its virtio drivers are built in; it has no loadable modules of its own.
    Rust,
}

impl KernelChoice {
    /// Resolves (and on first use downloads) the kernel.
    pub fn resolve(self) -> Result<Kernel, HarnessError> {
        match self {
            Self::Current => current(),
            Self::Backports => backports(),
            Self::Rust => rust::kernel(),
        }
    }

    /// The `-cpu` model for TCG. 6.12 under QEMU 7.2's TCG with `-cpu max`
    /// dies early in boot in most runs (double faults, #DB with garbage
    /// EFLAGS right after SLUB's per-CPU `cmpxchg16b`: measured 9 of 10
    /// boots, also with `qemu64`); without CX16 the kernel takes SLUB's
    /// locked path and booted 6 of 6. 6.1 is fine with `max`.
    pub fn tcg_cpu(self) -> &'static str {
        match self {
            Self::Current => "max",
            // 7.3 shares 6.12's SLUB fast path.
            Self::Backports | Self::Rust => "max,cx16=off",
        }
    }
}

impl KernelChoice {
    /// How the guest's init ends the VM. The Rust kernel's tiny config has
    /// no ACPI, so `poweroff -f` only halts the CPU; `reboot -f` resets it
    /// and QEMU, started with `-no-reboot`, exits.
    pub fn power_off_command(self) -> &'static str {
        match self {
            Self::Current | Self::Backports => "poweroff -f",
            Self::Rust => "reboot -f",
        }
    }
}

/// The suite of [`KernelChoice::Backports`].
pub const BACKPORTS_SUITE: &str = "bookworm-backports";

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

/// A local kernel named by the environment: the image in `image_var` and
/// its `lib/modules/<release>` directory in `modules_var` (both set, or
/// neither counts).
fn from_env(image_var: &str, modules_var: &str) -> Result<Option<Kernel>, HarnessError> {
    let (Some(img), Some(mods)) = (std::env::var_os(image_var), std::env::var_os(modules_var))
    else {
        return Ok(None);
    };
    let modules_dir = PathBuf::from(mods);
    let release = modules_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            HarnessError::Setup(format!("{modules_var} must name lib/modules/<release>"))
        })?;
    Ok(Some(Kernel {
        release,
        package_version: "local".into(),
        vmlinuz: img.into(),
        modules_dir,
    }))
}

/// Resolves and returns the current cloud kernel, downloading and unpacking
/// it on first use. When apt cannot answer (no package lists, no network),
/// falls back to the newest kernel already in the cache, with a warning.
pub fn current() -> Result<Kernel, HarnessError> {
    if let Some(k) = from_env("PVTEST_KERNEL", "PVTEST_MODULES")? {
        return Ok(k);
    }
    let kdir = cache::root()?.join("kernel");
    match resolve_from_apt(&[]) {
        Ok((pkg, version)) => fetch(&kdir, &pkg, &version, &[]),
        Err(e) => newest_cached(&kdir).ok_or(e).inspect(|k| {
            eprintln!(
                "pvtest: warning: cannot resolve {METAPACKAGE} through apt; using cached {} {}",
                k.release, k.package_version
            );
        }),
    }
}

/// Resolves and returns bookworm-backports' cloud kernel (6.12), through
/// the harness's private apt state, downloading and unpacking it on first
/// use. `PVTEST_BACKPORTS_KERNEL` + `PVTEST_BACKPORTS_MODULES` override it
/// (like `PVTEST_KERNEL` for [`current`]). Falls back to the newest cached
/// backports kernel when apt cannot answer.
pub fn backports() -> Result<Kernel, HarnessError> {
    if let Some(k) = from_env("PVTEST_BACKPORTS_KERNEL", "PVTEST_BACKPORTS_MODULES")? {
        return Ok(k);
    }
    let root = cache::root()?;
    let kdir = root.join("kernel-backports");
    let apt = PrivateApt::new(&root.join("apt-backports"), BACKPORTS_SUITE)?;
    let opts = apt.options();
    let resolved = match resolve_from_apt(&opts) {
        Ok(r) => Ok(r),
        // No lists yet, or the candidate vanished: update and ask again.
        Err(_) => apt.update().and_then(|()| resolve_from_apt(&opts)),
    };
    match resolved {
        Ok((pkg, version)) => match fetch(&kdir, &pkg, &version, &opts) {
            Ok(k) => Ok(k),
            // Old versions vanish from the archive: refresh once.
            Err(_) => {
                apt.update()?;
                let (pkg, version) = resolve_from_apt(&opts)?;
                fetch(&kdir, &pkg, &version, &opts)
            }
        },
        Err(e) => newest_cached(&kdir).ok_or(e).inspect(|k| {
            eprintln!(
                "pvtest: warning: cannot resolve {METAPACKAGE} from {BACKPORTS_SUITE}; using cached {} {}",
                k.release, k.package_version
            );
        }),
    }
}

/// An apt state of the harness's own (sources, lists, cache) for one extra
/// suite of the Debian archive; the host's apt configuration is untouched.
#[derive(Debug)]
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(dir: &Path, suite: &str) -> Result<Self, HarnessError> {
        for sub in ["sources", "lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d)
                .map_err(|e| HarnessError::io(format!("create {}", d.display()), e))?;
        }
        let sources = dir.join("sources").join(format!("{suite}.sources"));
        let text = format!(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\n\
             Architectures: amd64\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        if fs::read_to_string(&sources).ok().as_deref() != Some(text.as_str()) {
            fs::write(&sources, text)
                .map_err(|e| HarnessError::io(format!("write {}", sources.display()), e))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// `-o` options that point apt at this state only.
    fn options(&self) -> Vec<String> {
        let d = &self.dir;
        [
            "Dir::Etc::SourceList=/dev/null".to_owned(),
            format!("Dir::Etc::SourceParts={}", d.join("sources").display()),
            format!("Dir::State::Lists={}", d.join("lists").display()),
            format!("Dir::Cache={}", d.join("cache").display()),
            "Dir::State::status=/dev/null".to_owned(),
            "APT::Architectures::=amd64".to_owned(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect()
    }

    fn update(&self) -> Result<(), HarnessError> {
        let _lock = DirLock::acquire(&self.dir)?;
        eprintln!("pvtest: apt-get update of {}", self.dir.display());
        run_capture(Command::new("apt-get").args(self.options()).arg("update")).map(|_| ())
    }
}

fn resolve_from_apt(opts: &[String]) -> Result<(String, String), HarnessError> {
    let deps = run_capture(
        Command::new("apt-cache")
            .args(opts)
            .args(["depends", METAPACKAGE]),
    )?;
    let image = parse_metapackage_depends(&deps).ok_or_else(|| {
        HarnessError::Setup(format!(
            "{METAPACKAGE} names no kernel image (run apt-get update)"
        ))
    })?;
    let pkg = format!("{image}-unsigned");
    let policy = run_capture(Command::new("apt-cache").args(opts).args(["policy", &pkg]))?;
    let version = parse_candidate(&policy).ok_or_else(|| {
        HarnessError::Setup(format!(
            "no candidate version for {pkg} (run apt-get update)"
        ))
    })?;
    Ok((pkg, version))
}

fn fetch(kdir: &Path, pkg: &str, version: &str, opts: &[String]) -> Result<Kernel, HarnessError> {
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
                    .args(opts)
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
            decompress_modules(&dir.join("root/lib/modules"))?;
            fs::write(&done, version)
                .map_err(|e| HarnessError::io(format!("write {}", done.display()), e))?;
        }
    }
    unpacked(&dir, version)
}

/// Decompresses every `.ko.xz` under `dir` in place (6.12 ships them so;
/// 6.1 does not), with `xz -d` (xz-utils is part of every Debian system).
fn decompress_modules(dir: &Path) -> Result<(), HarnessError> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let rd =
            fs::read_dir(&d).map_err(|e| HarnessError::io(format!("list {}", d.display()), e))?;
        for entry in rd.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".ko.xz") {
                found.push(path);
            }
        }
    }
    for batch in found.chunks(256) {
        run_capture(Command::new("xz").arg("-d").args(batch)).map_err(|e| {
            HarnessError::Setup(format!("decompress kernel modules (needs xz-utils): {e}"))
        })?;
    }
    Ok(())
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
