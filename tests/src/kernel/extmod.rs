//! Out-of-tree Rust kernel modules built from our `no_std` crates, against
//! the Rust guest kernel's tree ([`super::rust`]), cached like it.
//!
//! The kernel builds each Rust file as one crate (named after the file) and
//! lets a module link several such objects (`m-y := a.o b.o main.o`). So a
//! module here is a composite: every crate it needs — Rust's own `alloc`
//! (the kernel ships none), the crates.io dependencies at the versions in
//! our `Cargo.lock`, our crates, the module's entry crate — is one object.
//! Each crate's package is copied into the build directory (its root stays
//! `src/lib.rs`; `--crate-name` names it, as the kernel would name it after
//! the file, which collides with a module of the crate's own name), compiled
//! by the kernel's own `rustc_o_rs` rule with per-object flags (edition,
//! cfgs a build script would set, `--extern` of the crates before it and
//! `--emit=metadata` so the next one can use it), in dependency order.
//! Proc-macro crates are host crates built first with the kernel's own
//! rustc and `syn`/`quote`/`proc_macro2`.
//!
//! Two crates need unstable features the kernel's rule does not allow
//! (`alloc` itself, and the glue that gives `alloc` the kernel allocator):
//! they get a rule of their own that is otherwise the kernel's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::run_capture;
use super::rust::{self as rust_kernel, RustTree};
use crate::cache::DirLock;
use crate::HarnessError;

/// Where a crate's source comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// Rust's sysroot library source (`rust-web-src`): `alloc`.
    Sysroot(&'static str),
    /// crates.io, at the version our `Cargo.lock` pins (package name).
    Registry(&'static str),
    /// A package of this workspace (its directory, from the workspace root).
    Workspace(&'static str),
}

/// One crate of a module.
#[derive(Debug, Clone, Copy)]
pub struct Crate {
    /// The crate name (`-` already `_`).
    pub name: &'static str,
    pub source: Source,
    pub edition: &'static str,
    /// A host proc-macro crate.
    pub proc_macro: bool,
    /// Needs unstable features the kernel's rule does not allow.
    pub unstable: bool,
    /// `--cfg` values: features and what a build script would set.
    pub cfgs: &'static [&'static str],
    /// Crates (of this list, earlier) it uses.
    pub deps: &'static [&'static str],
}

impl Crate {
    const fn lib(name: &'static str, source: Source, edition: &'static str) -> Self {
        Self {
            name,
            source,
            edition,
            proc_macro: false,
            unstable: false,
            cfgs: &[],
            deps: &[],
        }
    }
    const fn cfgs(mut self, cfgs: &'static [&'static str]) -> Self {
        self.cfgs = cfgs;
        self
    }
    const fn deps(mut self, deps: &'static [&'static str]) -> Self {
        self.deps = deps;
        self
    }
    const fn proc_macro(mut self) -> Self {
        self.proc_macro = true;
        self
    }
    const fn unstable(mut self) -> Self {
        self.unstable = true;
        self
    }
}

/// Rust's `alloc` and the glue that backs it with the kernel's allocator.
pub const ALLOC: [Crate; 2] = [
    Crate::lib("alloc", Source::Sysroot("alloc"), "2024").unstable(),
    Crate::lib("pv_kalloc", Source::Workspace("pv-kernel/kalloc"), "2021")
        .unstable()
        .deps(&["alloc"]),
];

/// `pv-virtq` and what it depends on, dependencies first.
pub const VIRTQ: [Crate; 10] = [
    Crate::lib(
        "zerocopy_derive",
        Source::Registry("zerocopy-derive"),
        "2021",
    )
    .proc_macro(),
    // The build script's cfgs for rustc 1.96 (older than 1.100 only), and
    // the kernel's `core`, built without float parsing.
    Crate::lib("zerocopy", Source::Registry("zerocopy"), "2021")
        .cfgs(&[
            "feature=\"derive\"",
            "feature=\"zerocopy-derive\"",
            "no_zerocopy_allocator_api_1_100_0",
            "no_fp_fmt_parse",
        ])
        .deps(&["zerocopy_derive"]),
    Crate::lib("bitflags", Source::Registry("bitflags"), "2021"),
    Crate::lib("log", Source::Registry("log"), "2021"),
    Crate::lib("enumn", Source::Registry("enumn"), "2021").proc_macro(),
    Crate::lib("thiserror_impl", Source::Registry("thiserror-impl"), "2021").proc_macro(),
    Crate::lib("thiserror", Source::Registry("thiserror"), "2021").deps(&["thiserror_impl"]),
    Crate::lib("safe_mmio", Source::Registry("safe-mmio"), "2024").deps(&["zerocopy"]),
    Crate::lib("virtio_drivers", Source::Registry("virtio-drivers"), "2024").deps(&[
        "bitflags",
        "enumn",
        "log",
        "safe_mmio",
        "thiserror",
        "zerocopy",
    ]),
    Crate::lib("pv_virtq", Source::Workspace("pv-virtq"), "2021").deps(&[
        "alloc",
        "virtio_drivers",
        "zerocopy",
    ]),
];

/// The Xen rings and xenstore client the device cores' Xen halves use
/// (compiled in with them, unused by the virtio modules).
pub const XENBUS: Crate = Crate::lib("xenbus", Source::Workspace("xenbus"), "2021")
    .deps(&["alloc", "bitflags", "log", "zerocopy"]);

/// The balloon core and its Xen half's xenstore client, after [`VIRTQ`].
pub const BALLOON: [Crate; 2] = [
    XENBUS,
    Crate::lib("pv_balloon", Source::Workspace("pv-balloon"), "2021").deps(&[
        "alloc",
        "bitflags",
        "log",
        "zerocopy",
        "virtio_drivers",
        "pv_virtq",
        "xenbus",
    ]),
];

/// The virtio-pci transport and DMA `Hal` of our kernel modules, after
/// [`VIRTQ`] (pv-kernel/virtio-pci; its C half is [`VIRTIO_PCI_C`]).
pub const VIRTIO_PCI: Crate = Crate::lib(
    "pv_virtio_pci",
    Source::Workspace("pv-kernel/virtio-pci"),
    "2021",
)
.deps(&["alloc", "virtio_drivers", "zerocopy", "pv_virtq"]);
/// The C half of [`VIRTIO_PCI`]: the kernel's inline DMA functions, and
/// the work item of its periodic fallback poll (`Tick`).
pub const VIRTIO_PCI_C: [&str; 2] = [
    "pv-kernel/virtio-pci/pv_dma.c",
    "pv-kernel/virtio-pci/pv_tick.c",
];

/// The `pv_balloon` kernel module (pv-balloon/kernel).
pub fn pv_balloon() -> ModuleSpec {
    ModuleSpec {
        name: "pv_balloon",
        crates: ALLOC
            .iter()
            .chain(&VIRTQ)
            .chain(&BALLOON)
            .chain(std::iter::once(&VIRTIO_PCI))
            .copied()
            .collect(),
        main: "pv-balloon/kernel/pv_balloon_main.rs",
        main_deps: &[
            "alloc",
            "pv_kalloc",
            "pv_balloon",
            "pv_virtq",
            "pv_virtio_pci",
            "virtio_drivers",
        ],
        c_files: VIRTIO_PCI_C
            .into_iter()
            .chain(["pv-balloon/kernel/pv_mm.c"])
            .collect(),
    }
}

/// The block core and its Xen half's ring crate, after [`VIRTQ`].
pub const BLK: [Crate; 2] = [
    XENBUS,
    Crate::lib("pv_blk", Source::Workspace("pv-blk"), "2021").deps(&[
        "alloc",
        "bitflags",
        "log",
        "zerocopy",
        "virtio_drivers",
        "pv_virtq",
        "xenbus",
    ]),
];

/// The `pv_blk` kernel module (pv-blk/kernel).
pub fn pv_blk() -> ModuleSpec {
    ModuleSpec {
        name: "pv_blk",
        crates: ALLOC
            .iter()
            .chain(&VIRTQ)
            .chain(&BLK)
            .chain(std::iter::once(&VIRTIO_PCI))
            .copied()
            .collect(),
        main: "pv-blk/kernel/pv_blk_main.rs",
        main_deps: &[
            "alloc",
            "pv_kalloc",
            "pv_blk",
            "pv_virtq",
            "pv_virtio_pci",
            "virtio_drivers",
        ],
        c_files: VIRTIO_PCI_C
            .into_iter()
            .chain(["pv-blk/kernel/pv_blk_rq.c"])
            .collect(),
    }
}

/// Every kernel module the tests load, for `pvprepare-kernel`.
pub fn all() -> Vec<ModuleSpec> {
    vec![pv_balloon(), pv_blk()]
}

/// A module to build: its name, its crates (dependencies first) and its
/// entry crate (the file with `module!`, from the workspace root).
#[derive(Debug, Clone)]
pub struct ModuleSpec {
    pub name: &'static str,
    pub crates: Vec<Crate>,
    pub main: &'static str,
    /// Crates the entry crate uses (`--extern`).
    pub main_deps: &'static [&'static str],
    /// C files (from the workspace root) linked in as objects of their own:
    /// the kernel's inline functions our Rust needs.
    pub c_files: Vec<&'static str>,
}

/// The workspace root (this crate is `<root>/tests`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// `name -> versions` of every crates.io package in `Cargo.lock`.
pub fn parse_lock_versions(lock: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut name: Option<String> = None;
    for line in lock.lines() {
        if line == "[[package]]" {
            name = None;
        } else if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.as_ref()) {
            out.entry(n.clone())
                .or_default()
                .push(v.trim_matches('"').to_owned());
        }
    }
    out
}

fn registry_dir(
    package: &str,
    locks: &BTreeMap<String, Vec<String>>,
) -> Result<PathBuf, HarnessError> {
    let versions = locks
        .get(package)
        .ok_or_else(|| HarnessError::Setup(format!("{package} is not in Cargo.lock")))?;
    // Several versions (bitflags 1 and 2): the newest is the one our crates use.
    let version = versions
        .iter()
        .max_by_key(|v| {
            v.split('.')
                .map(|p| p.parse::<u64>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
        .ok_or_else(|| HarnessError::Setup(format!("{package}: no version in Cargo.lock")))?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or_else(|| HarnessError::Setup("no CARGO_HOME or HOME".into()))?;
    let src = cargo_home.join("registry/src");
    let dir = fs::read_dir(&src)
        .map_err(|e| HarnessError::io(format!("list {}", src.display()), e))?
        .filter_map(Result::ok)
        .map(|e| e.path().join(format!("{package}-{version}")))
        .find(|p| p.join("Cargo.toml").is_file())
        .ok_or_else(|| {
            HarnessError::Setup(format!(
                "{package} {version} is not in {} (run cargo fetch --locked)",
                src.display()
            ))
        })?;
    Ok(dir)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), HarnessError> {
    fs::create_dir_all(to).map_err(|e| HarnessError::io(format!("create {}", to.display()), e))?;
    for entry in fs::read_dir(from)
        .map_err(|e| HarnessError::io(format!("list {}", from.display()), e))?
        .filter_map(Result::ok)
    {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let name = entry.file_name();
        if name == "target" || name == ".git" || name == "fuzz" {
            continue;
        }
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst)
                .map_err(|e| HarnessError::io(format!("copy {}", src.display()), e))?;
        }
    }
    Ok(())
}

/// A crate laid out in the build directory: `<name>/src/lib.rs` is its root.
struct Placed {
    krate: Crate,
    /// `<crate>/src` relative to the build directory.
    rel_src: String,
    version: String,
}

fn package_version(dir: &Path) -> String {
    fs::read_to_string(dir.join("Cargo.toml"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("version = ")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| "0.0.0".into())
}

fn place(
    krate: Crate,
    build: &Path,
    locks: &BTreeMap<String, Vec<String>>,
) -> Result<Placed, HarnessError> {
    let (pkg_dir, root_rel) = match krate.source {
        Source::Sysroot(lib) => (
            PathBuf::from("/usr/lib/rustlib/src/rust/library").join(lib),
            "src/lib.rs",
        ),
        Source::Registry(pkg) => (registry_dir(pkg, locks)?, "src/lib.rs"),
        Source::Workspace(dir) => (workspace_root().join(dir), "src/lib.rs"),
    };
    let version = package_version(&pkg_dir);
    let dst = build.join(krate.name);
    copy_tree(&pkg_dir, &dst)?;
    if !dst.join(root_rel).is_file() {
        return Err(HarnessError::Setup(format!(
            "{} has no {root_rel}",
            pkg_dir.display()
        )));
    }
    Ok(Placed {
        krate,
        rel_src: format!("{}/src", krate.name),
        version,
    })
}

fn cfg_flags(cfgs: &[&str]) -> String {
    cfgs.iter().map(|c| format!(" --cfg '{c}'")).collect()
}

/// Files a crate's build script would have written to `OUT_DIR`.
fn write_out_dir(p: &Placed, out_dir: &Path) -> Result<(), HarnessError> {
    fs::create_dir_all(out_dir)
        .map_err(|e| HarnessError::io(format!("create {}", out_dir.display()), e))?;
    if p.krate.name == "thiserror" {
        let patch = p.version.rsplit('.').next().unwrap_or("0");
        let text = format!(
            "#[doc(hidden)]\npub mod __private{patch} {{\n    #[doc(hidden)]\n    pub use crate::private::*;\n}}\n"
        );
        fs::write(out_dir.join("private.rs"), text)
            .map_err(|e| HarnessError::io("write private.rs".into(), e))?;
    }
    Ok(())
}

fn env_flags(p: &Placed, out_dir: &Path) -> String {
    let mut parts = p.version.splitn(3, '.');
    let (major, minor, patch) = (
        parts.next().unwrap_or("0"),
        parts.next().unwrap_or("0"),
        parts.next().unwrap_or("0"),
    );
    format!(
        " --env-set CARGO_PKG_VERSION={} --env-set CARGO_PKG_VERSION_MAJOR={major} \
         --env-set CARGO_PKG_VERSION_MINOR={minor} --env-set CARGO_PKG_VERSION_PATCH={patch} \
         --env-set CARGO_PKG_NAME={} --env-set CARGO_CRATE_NAME={} --env-set OUT_DIR={}",
        p.version,
        p.krate.name,
        p.krate.name,
        out_dir.display()
    )
}

/// Builds a host proc-macro crate with the kernel's rustc and its host
/// `syn`, `quote` and `proc_macro2`.
fn build_proc_macro(p: &Placed, build: &Path, tree: &Path) -> Result<PathBuf, HarnessError> {
    let host = tree.join("rust/host");
    let out = build.join("host");
    fs::create_dir_all(&out)
        .map_err(|e| HarnessError::io(format!("create {}", out.display()), e))?;
    let so = out.join(format!("lib{}.so", p.krate.name));
    let root = build.join(&p.rel_src).join("lib.rs");
    let mut parts = p.version.splitn(3, '.');
    let (_, _, patch) = (parts.next(), parts.next(), parts.next().unwrap_or("0"));
    let mut cmd = Command::new(rust_kernel::RUSTC);
    cmd.arg(format!("--edition={}", p.krate.edition))
        .args(["--crate-type", "proc-macro", "--crate-name", p.krate.name])
        .args(["--cap-lints=allow", "-Copt-level=1", "-Cmetadata=pvdrivers"])
        .args(["--extern", "proc_macro"])
        .arg("--extern")
        .arg(format!(
            "proc_macro2={}",
            host.join("libproc_macro2.rlib").display()
        ))
        .arg("--extern")
        .arg(format!("quote={}", host.join("libquote.rlib").display()))
        .arg("--extern")
        .arg(format!("syn={}", host.join("libsyn.rlib").display()))
        .arg("-L")
        .arg(&host)
        .arg("-o")
        .arg(&so)
        .arg(&root)
        .env("CARGO_PKG_VERSION", &p.version)
        .env("CARGO_PKG_VERSION_PATCH", patch)
        .env("CARGO_PKG_NAME", p.krate.name)
        .env("CARGO_CRATE_NAME", p.krate.name);
    run_capture(&mut cmd)?;
    Ok(so)
}

/// Writes the Kbuild of a composite module.
fn kbuild(
    spec: &ModuleSpec,
    placed: &[Placed],
    build: &Path,
    macros: &BTreeMap<&str, PathBuf>,
) -> Result<String, HarnessError> {
    let b = build.display();
    let mut k = String::new();
    let mut objs = Vec::new();
    let mut rmeta: BTreeMap<&str, String> = BTreeMap::new();
    // Every crate built so far, and the host proc-macros: loading a
    // crate's metadata finds its own dependencies through these.
    let mut all_dirs = format!(" -L {b}/host");
    let _ = writeln!(
        k,
        "# Generated by the pvdrivers test harness (tests/src/kernel/extmod.rs)."
    );
    let _ = writeln!(k, "obj-m := {}.o", spec.name);
    let extern_of = |d: &str, rmeta: &BTreeMap<&str, String>| -> Result<String, HarnessError> {
        if let Some(so) = macros.get(d) {
            return Ok(format!(" --extern {d}={}", so.display()));
        }
        rmeta
            .get(d)
            .map(|m| format!(" --extern {d}={m}"))
            .ok_or_else(|| HarnessError::Setup(format!("crate {d} is used before it is built")))
    };
    for p in placed.iter().filter(|p| !p.krate.proc_macro) {
        let c = p.krate;
        // The kernel names a crate after its root file; ours keep `lib.rs`
        // (a `<crate>.rs` copy would collide with a module of that name,
        // as `alloc::alloc` does) and are named with `--crate-name`.
        let stem = format!("{}/lib", p.rel_src);
        let out_dir = build.join(&p.rel_src).join("out");
        write_out_dir(p, &out_dir)?;
        let mut flags = format!(
            "--crate-name={} --edition={} --emit=metadata -Cmetadata=pvdrivers --cap-lints=allow{}{}",
            c.name,
            c.edition,
            cfg_flags(c.cfgs),
            env_flags(p, &out_dir)
        );
        flags.push_str(&all_dirs);
        for d in c.deps {
            flags.push_str(&extern_of(d, &rmeta)?);
        }
        // Every crate may use alloc and its allocator.
        if c.name != "alloc" && !c.deps.contains(&"alloc") {
            if let Some(m) = rmeta.get("alloc") {
                let _ = write!(flags, " --extern alloc={m}");
            }
        }
        // The kernel's flags say `--edition=2021`; rustc takes one. The
        // removal also filters our own flags, so it is only set (and ours
        // only given) for another edition.
        if c.edition == "2021" {
            flags = flags.replace(" --edition=2021", "");
        } else {
            let _ = writeln!(k, "RUSTFLAGS_REMOVE_{stem}.o := --edition=2021");
        }
        let _ = writeln!(k, "RUSTFLAGS_{stem}.o := {flags}");
        if let Some(prev) = objs.last() {
            let _ = writeln!(k, "$(obj)/{stem}.o: $(obj)/{prev}");
        }
        if c.unstable {
            let _ = writeln!(
                k,
                "$(obj)/{stem}.o: $(obj)/{stem}.rs FORCE\n\t$(call if_changed,pv_rustc_unstable)"
            );
        }
        objs.push(format!("{stem}.o"));
        rmeta.insert(c.name, format!("{b}/{}/lib{}.rmeta", p.rel_src, c.name));
        let _ = write!(all_dirs, " -L {b}/{}", p.rel_src);
    }
    let main_stem = format!("{}_main", spec.name);
    let mut flags = String::from("--emit=metadata");
    flags.push_str(&all_dirs);
    for d in spec.main_deps {
        flags.push_str(&extern_of(d, &rmeta)?);
    }
    let _ = writeln!(k, "RUSTFLAGS_{main_stem}.o := {flags}");
    if let Some(prev) = objs.last() {
        let _ = writeln!(k, "$(obj)/{main_stem}.o: $(obj)/{prev}");
    }
    objs.push(format!("{main_stem}.o"));
    for c in &spec.c_files {
        let base = Path::new(c)
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| HarnessError::Setup(format!("bad C file name {c}")))?;
        objs.push(format!("{base}.o"));
    }
    let _ = writeln!(k, "{}-y := {}", spec.name, objs.join(" "));
    // The kernel's rustc_o_rs less `-Zallow-features` (and with metadata).
    k.push_str(
        "quiet_cmd_pv_rustc_unstable = RUSTC [PV] $@\n\
         \x20     cmd_pv_rustc_unstable = OBJTREE=$(abspath $(objtree)) $(RUSTC) $(rust_flags) \
         -Zunstable-options --extern kernel --crate-type rlib -L $(objtree)/rust/ \
         --sysroot=/dev/null --out-dir $(dir $@) --emit=obj=$@ $<\n",
    );
    Ok(k)
}

/// Builds (once per kernel build and sources) the module and returns its `.ko`.
pub fn build_module(spec: &ModuleSpec) -> Result<PathBuf, HarnessError> {
    let tree = rust_kernel::tree()?;
    build_module_in(spec, &tree)
}

/// The hash of everything a module is built from: the kernel build (its
/// directory name is its key), the crate table, and every source file of
/// our crates and the entry file.
fn module_key(spec: &ModuleSpec, tree: &RustTree) -> Result<String, HarnessError> {
    let mut text = format!("{}\n{spec:?}\n", tree.tree.display());
    let root = workspace_root();
    let mut files = vec![root.join(spec.main), root.join("Cargo.lock")];
    files.extend(spec.c_files.iter().map(|c| root.join(c)));
    for c in &spec.crates {
        if let Source::Workspace(d) = c.source {
            let mut stack = vec![root.join(d).join("src")];
            while let Some(dir) = stack.pop() {
                for e in fs::read_dir(&dir)
                    .map_err(|e| HarnessError::io(format!("list {}", dir.display()), e))?
                    .filter_map(Result::ok)
                {
                    if e.path().is_dir() {
                        stack.push(e.path());
                    } else {
                        files.push(e.path());
                    }
                }
            }
        }
    }
    files.sort();
    for f in files {
        let data = fs::read_to_string(&f)
            .map_err(|e| HarnessError::io(format!("read {}", f.display()), e))?;
        let _ = write!(text, "--- {}\n{data}", f.display());
    }
    rust_kernel::short_hash(&text)
}

fn build_module_in(spec: &ModuleSpec, tree: &RustTree) -> Result<PathBuf, HarnessError> {
    let key = module_key(spec, tree)?;
    let parent = tree
        .tree
        .parent()
        .map_or_else(|| tree.tree.clone(), Path::to_owned)
        .join("modules");
    let build = parent.join(format!("{}-{key}", spec.name));
    let ko = build.join(format!("{}.ko", spec.name));
    if ko.is_file() {
        return Ok(ko);
    }
    let _lock = DirLock::acquire(&parent)?;
    if ko.is_file() {
        return Ok(ko);
    }
    let _ = fs::remove_dir_all(&build);
    fs::create_dir_all(&build)
        .map_err(|e| HarnessError::io(format!("create {}", build.display()), e))?;
    let lock_text = fs::read_to_string(workspace_root().join("Cargo.lock"))
        .map_err(|e| HarnessError::io("read Cargo.lock".into(), e))?;
    let locks = parse_lock_versions(&lock_text);
    let mut placed = Vec::new();
    let mut macros = BTreeMap::new();
    for c in &spec.crates {
        let p = place(*c, &build, &locks)?;
        if c.proc_macro {
            macros.insert(c.name, build_proc_macro(&p, &build, &tree.tree)?);
        }
        placed.push(p);
    }
    for c in &spec.c_files {
        let src = workspace_root().join(c);
        let name = src
            .file_name()
            .ok_or_else(|| HarnessError::Setup(format!("bad C file name {c}")))?;
        fs::copy(&src, build.join(name))
            .map_err(|e| HarnessError::io(format!("copy {}", src.display()), e))?;
    }
    let main_src = workspace_root().join(spec.main);
    fs::copy(&main_src, build.join(format!("{}_main.rs", spec.name)))
        .map_err(|e| HarnessError::io(format!("copy {}", main_src.display()), e))?;
    let text = kbuild(spec, &placed, &build, &macros)?;
    fs::write(build.join("Kbuild"), text)
        .map_err(|e| HarnessError::io("write Kbuild".into(), e))?;
    let started = std::time::Instant::now();
    eprintln!(
        "pvtest: building kernel module {} in {}",
        spec.name,
        build.display()
    );
    run_capture(
        rust_kernel::make_cmd(&tree.tree, &tree.bindgen)
            .arg(format!("M={}", build.display()))
            .arg("modules"),
    )?;
    eprintln!(
        "pvtest: kernel module {} built in {} s",
        spec.name,
        started.elapsed().as_secs()
    );
    if !ko.is_file() {
        return Err(HarnessError::Setup(format!(
            "make left no {}",
            ko.display()
        )));
    }
    Ok(ko)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_versions_are_parsed() {
        let lock = "[[package]]\nname = \"bitflags\"\nversion = \"1.3.2\"\n\n[[package]]\nname = \"bitflags\"\nversion = \"2.13.2\"\nsource = \"registry\"\n";
        let v = parse_lock_versions(lock);
        assert_eq!(v["bitflags"], ["1.3.2", "2.13.2"]);
    }
}
