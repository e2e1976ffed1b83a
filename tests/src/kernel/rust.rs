//! The Rust guest kernel ([`KernelChoice::Rust`](super::KernelChoice::Rust)):
//! Debian's `linux-source-7.3` (trixie-backports, through a private apt state
//! like the backports kernel), configured from `tinyconfig` plus
//! `rust_kernel.config` and built here with Debian's `rustc-web`, clang/lld 19
//! and `bindgen-cli`, once, into the cache.
//!
//! The cache directory is keyed by the source package version and a hash of
//! everything the build output depends on: the config fragment and the exact
//! rustc, bindgen and clang versions (a module's `.rmeta` only links against
//! a kernel built by the identical rustc). The built tree is kept (its
//! objects included): out-of-tree modules are built against it
//! ([`super::extmod::build_module`]).

use std::fs;
use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{run_capture, Kernel, PrivateApt};
use crate::cache::{self, DirLock};
use crate::HarnessError;

/// The source package (Debian's name carries the major.minor).
pub const SOURCE_PACKAGE: &str = "linux-source-7.3";
/// The suite that has it for a bookworm host.
pub const SUITE: &str = "trixie-backports";
/// The config fragment merged onto `tinyconfig`.
pub const CONFIG_FRAGMENT: &str = include_str!("../rust_kernel.config");
/// The LLVM suffix (`make LLVM=-19`): clang-19, ld.lld-19, llvm-ar-19, ...
const LLVM_SUFFIX: &str = "-19";
const LIBCLANG_PATH: &str = "/usr/lib/llvm-19/lib";
/// Debian's `rustc-web`: the toolchain the kernel accepts (rustup's lack
/// the `rust-src` the kernel's `core` is built from, at the path it expects).
pub(super) const RUSTC: &str = "/usr/bin/rustc";
const RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library/core/src/lib.rs";

/// The tools a build needs, as `(program, what provides it)`. Checked
/// before anything is downloaded so a half-set-up machine fails with the
/// tool's name, not with a make error ten minutes in.
const TOOLS: &[(&str, &str)] = &[
    ("make", "make"),
    ("clang-19", "clang-19"),
    ("ld.lld-19", "lld-19"),
    ("llvm-ar-19", "llvm-19"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("cpio", "cpio"),
    ("bc", "bc"),
    ("sha256sum", "coreutils"),
    ("tar", "tar"),
    ("xz", "xz-utils"),
];

/// The tools and their versions, resolved.
#[derive(Debug)]
struct Toolchain {
    bindgen: PathBuf,
    /// `rustc -vV`, `bindgen --version`, `clang-19 --version`: part of the key.
    versions: String,
}

fn on_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// `bindgen` from PATH, else where `cargo install` puts it.
fn find_bindgen() -> Option<PathBuf> {
    on_path("bindgen").or_else(|| {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        let p = cargo_home.join("bin/bindgen");
        p.is_file().then_some(p)
    })
}

fn toolchain() -> Result<Toolchain, HarnessError> {
    let setup = "run ./dev.sh setup";
    for (prog, pkg) in TOOLS {
        if on_path(prog).is_none() {
            return Err(HarnessError::Setup(format!(
                "the Rust guest kernel build needs {prog} (package {pkg}): {setup}"
            )));
        }
    }
    if !Path::new(RUSTC).is_file() || !Path::new(RUST_SRC).is_file() {
        return Err(HarnessError::Setup(format!(
            "the Rust guest kernel build needs {RUSTC} and its library source \
             (packages rustc-web, rust-web-src): {setup}"
        )));
    }
    if !Path::new(LIBCLANG_PATH).join("libclang.so").exists()
        && !Path::new(LIBCLANG_PATH).join("libclang.so.1").exists()
    {
        return Err(HarnessError::Setup(format!(
            "the Rust guest kernel build needs libclang in {LIBCLANG_PATH} \
             (package libclang-19-dev): {setup}"
        )));
    }
    let bindgen = find_bindgen().ok_or_else(|| {
        HarnessError::Setup(format!(
            "the Rust guest kernel build needs bindgen (cargo install --locked bindgen-cli): {setup}"
        ))
    })?;
    let mut versions = run_capture(Command::new(RUSTC).arg("-vV"))?;
    versions.push_str(&run_capture(
        Command::new(&bindgen)
            .arg("--version")
            .env("LIBCLANG_PATH", LIBCLANG_PATH),
    )?);
    versions.push_str(&run_capture(Command::new("clang-19").arg("--version"))?);
    Ok(Toolchain { bindgen, versions })
}

/// The first 16 hex digits of the SHA-256 of `text` (coreutils' sha256sum).
pub(super) fn short_hash(text: &str) -> Result<String, HarnessError> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| HarnessError::io("run sha256sum".into(), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| HarnessError::io("write to sha256sum".into(), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| HarnessError::io("run sha256sum".into(), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    if !out.status.success() || hex.len() < 16 {
        return Err(HarnessError::Setup(format!("sha256sum failed: {text}")));
    }
    Ok(hex[..16].to_owned())
}

/// The key of one build: what it was built from.
fn key_text(package_version: &str, tools: &Toolchain) -> String {
    format!(
        "{SOURCE_PACKAGE} {package_version}\n--- config fragment\n{CONFIG_FRAGMENT}\n--- tools\n{}",
        tools.versions
    )
}

/// A built Rust guest kernel tree.
#[derive(Debug, Clone)]
pub struct RustTree {
    /// The configured, built kernel source tree (`make M=` points here).
    pub tree: PathBuf,
    /// The bootable image and the installed modules.
    pub kernel: Kernel,
    pub(super) bindgen: PathBuf,
}

/// Resolves the Rust guest kernel, building it on first use.
pub fn kernel() -> Result<Kernel, HarnessError> {
    tree().map(|t| t.kernel)
}

/// Resolves the built tree, building it on first use. When apt cannot
/// answer, the newest cached build for the same toolchain is used.
pub fn tree() -> Result<RustTree, HarnessError> {
    let tools = toolchain()?;
    let root = cache::root()?;
    let kdir = root.join("kernel-rust");
    let apt = PrivateApt::new(&root.join("apt-trixie-backports"), SUITE)?;
    let opts = apt.options();
    let candidate = |opts: &[String]| -> Result<String, HarnessError> {
        let policy = run_capture(
            Command::new("apt-cache")
                .args(opts)
                .args(["policy", SOURCE_PACKAGE]),
        )?;
        super::parse_candidate(&policy).ok_or_else(|| {
            HarnessError::Setup(format!("no candidate version for {SOURCE_PACKAGE}"))
        })
    };
    let version = match candidate(&opts) {
        Ok(v) => v,
        Err(_) => match apt.update().and_then(|()| candidate(&opts)) {
            Ok(v) => v,
            Err(e) => {
                let cached = newest_cached_tree(&kdir, &tools).ok_or(e)?;
                eprintln!(
                    "pvtest: warning: cannot resolve {SOURCE_PACKAGE} from {SUITE}; using cached {}",
                    cached.tree.display()
                );
                return Ok(cached);
            }
        },
    };
    let hash = short_hash(&key_text(&version, &tools))?;
    let dir = kdir.join(format!("{version}-{hash}"));
    let done = dir.join(".complete");
    if !done.exists() {
        let _lock = DirLock::acquire(&kdir)?;
        if !done.exists() {
            build(&dir, &version, &opts, &tools)?;
            fs::write(&done, key_text(&version, &tools))
                .map_err(|e| HarnessError::io(format!("write {}", done.display()), e))?;
        }
    }
    Ok(RustTree {
        kernel: installed(&dir, &version)?,
        tree: dir.join("src"),
        bindgen: tools.bindgen,
    })
}

fn installed(dir: &Path, version: &str) -> Result<Kernel, HarnessError> {
    let tree = dir.join("src");
    let release = fs::read_to_string(tree.join("include/config/kernel.release"))
        .map_err(|e| {
            HarnessError::io(
                format!("read {}/include/config/kernel.release", tree.display()),
                e,
            )
        })?
        .trim()
        .to_owned();
    Ok(Kernel {
        modules_dir: dir.join("root/lib/modules").join(&release),
        release,
        package_version: format!("{version} (Rust, built here)"),
        vmlinuz: tree.join("arch/x86/boot/bzImage"),
    })
}

/// The newest complete build from the same fragment and toolchain (for
/// when apt cannot name the source version): its key minus the first line.
fn newest_cached_tree(kdir: &Path, tools: &Toolchain) -> Option<RustTree> {
    let want = key_text("", tools);
    let want_rest = want.split_once('\n')?.1;
    let mut best: Option<(std::time::SystemTime, PathBuf, String)> = None;
    for entry in fs::read_dir(kdir).ok()?.filter_map(Result::ok) {
        let done = entry.path().join(".complete");
        let (Ok(meta), Ok(key)) = (fs::metadata(&done), fs::read_to_string(&done)) else {
            continue;
        };
        let Some((first, rest)) = key.split_once('\n') else {
            continue;
        };
        let Some(version) = first.strip_prefix(SOURCE_PACKAGE) else {
            continue;
        };
        let Ok(mtime) = meta.modified() else { continue };
        if rest == want_rest && best.as_ref().is_none_or(|(t, _, _)| mtime > *t) {
            best = Some((mtime, entry.path(), version.trim().to_owned()));
        }
    }
    let (_, dir, version) = best?;
    Some(RustTree {
        kernel: installed(&dir, &version).ok()?,
        tree: dir.join("src"),
        bindgen: tools.bindgen.clone(),
    })
}

/// The `make` command line every step uses.
fn make(tree: &Path, tools: &Toolchain) -> Command {
    make_cmd(tree, &tools.bindgen)
}

/// `make` in `tree` with the toolchain the tree was built with. It runs at
/// the test's own niceness (a shared machine runs the tests niced; adding
/// more here starved the first build behind everyone else's work).
pub(super) fn make_cmd(tree: &Path, bindgen: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg(format!("LLVM={LLVM_SUFFIX}"))
        .arg(format!("RUSTC={RUSTC}"))
        .arg(format!("BINDGEN={}", bindgen.display()))
        .env("LIBCLANG_PATH", LIBCLANG_PATH)
        .current_dir(tree);
    cmd
}

/// Runs a long step with its output on our stderr (the progress a first
/// build prints), and its wall time after it.
fn run_shown(step: &str, cmd: &mut Command, t0: Instant) -> Result<(), HarnessError> {
    eprintln!(
        "pvtest: rust kernel [{:>4}s] {step}",
        t0.elapsed().as_secs()
    );
    let err = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| HarnessError::io("dup stderr".into(), e))?;
    let shown = format!("{cmd:?}");
    let status = cmd
        .stdout(Stdio::from(err))
        .status()
        .map_err(|e| HarnessError::io(format!("run {shown}"), e))?;
    if !status.success() {
        return Err(HarnessError::Setup(format!(
            "rust guest kernel: {step} failed ({status}): {shown}"
        )));
    }
    Ok(())
}

fn build(
    dir: &Path,
    version: &str,
    opts: &[String],
    tools: &Toolchain,
) -> Result<(), HarnessError> {
    let t0 = Instant::now();
    let _ = fs::remove_dir_all(dir);
    let dl = dir.join("download");
    fs::create_dir_all(&dl).map_err(|e| HarnessError::io(format!("create {}", dl.display()), e))?;
    eprintln!(
        "pvtest: building the Rust guest kernel ({SOURCE_PACKAGE} {version}) into {} \
         once; this takes minutes",
        dir.display()
    );
    run_shown(
        "apt-get download",
        Command::new("apt-get")
            .args(opts)
            .arg("download")
            .arg(format!("{SOURCE_PACKAGE}={version}"))
            .current_dir(&dl),
        t0,
    )?;
    let deb = fs::read_dir(&dl)
        .map_err(|e| HarnessError::io(format!("list {}", dl.display()), e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| {
            HarnessError::Setup(format!("apt-get download left no .deb in {}", dl.display()))
        })?;
    run_shown(
        "dpkg-deb -x",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dl),
        t0,
    )?;
    let tarball = dl.join("usr/src").join(format!("{SOURCE_PACKAGE}.tar.xz"));
    run_shown(
        "unpack the source",
        Command::new("tar")
            .arg("-xaf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir),
        t0,
    )?;
    fs::remove_dir_all(&dl).map_err(|e| HarnessError::io(format!("remove {}", dl.display()), e))?;
    fs::rename(dir.join(SOURCE_PACKAGE), dir.join("src"))
        .map_err(|e| HarnessError::io(format!("rename {SOURCE_PACKAGE} to src"), e))?;
    let tree = dir.join("src");
    let fragment = dir.join("rust_kernel.config");
    fs::write(&fragment, CONFIG_FRAGMENT)
        .map_err(|e| HarnessError::io(format!("write {}", fragment.display()), e))?;
    run_shown(
        "make rustavailable",
        make(&tree, tools).arg("rustavailable"),
        t0,
    )?;
    run_shown("make tinyconfig", make(&tree, tools).arg("tinyconfig"), t0)?;
    run_shown(
        "merge the config fragment",
        Command::new("scripts/kconfig/merge_config.sh")
            .args(["-m", ".config"])
            .arg(&fragment)
            .current_dir(&tree),
        t0,
    )?;
    run_shown(
        "make olddefconfig",
        make(&tree, tools).arg("olddefconfig"),
        t0,
    )?;
    check_config(&tree)?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    run_shown(
        &format!("make -j{jobs} bzImage modules (the long step)"),
        make(&tree, tools)
            .arg(format!("-j{jobs}"))
            .args(["bzImage", "modules"]),
        t0,
    )?;
    let root = dir.join("root");
    run_shown(
        "make modules_install",
        make(&tree, tools)
            .arg(format!("INSTALL_MOD_PATH={}", root.display()))
            .arg("modules_install"),
        t0,
    )?;
    // ModuleIndex lists lib/modules/<release>/kernel: a config with every
    // driver built in installs none.
    let release = fs::read_to_string(tree.join("include/config/kernel.release"))
        .map_err(|e| HarnessError::io("read kernel.release".into(), e))?;
    let kdir = root.join("lib/modules").join(release.trim()).join("kernel");
    fs::create_dir_all(&kdir)
        .map_err(|e| HarnessError::io(format!("create {}", kdir.display()), e))?;
    eprintln!(
        "pvtest: rust kernel [{:>4}s] built {}",
        t0.elapsed().as_secs(),
        tree.join("arch/x86/boot/bzImage").display()
    );
    Ok(())
}

/// Every line of the fragment must survive `olddefconfig`: a symbol whose
/// dependencies are unmet is dropped silently (CONFIG_RUST when the
/// toolchain is not accepted), and the tests would then fail far from the
/// cause.
fn check_config(tree: &Path) -> Result<(), HarnessError> {
    let config = fs::read_to_string(tree.join(".config"))
        .map_err(|e| HarnessError::io("read .config".into(), e))?;
    let missing: Vec<&str> = CONFIG_FRAGMENT
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
        .filter(|l| !config.lines().any(|c| c.trim() == *l))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(HarnessError::Setup(format!(
            "rust guest kernel: olddefconfig dropped {missing:?} (unmet dependencies; \
             for CONFIG_RUST see `make LLVM=-19 RUSTC=/usr/bin/rustc rustavailable` in {})",
            tree.display()
        )))
    }
}
