//! Kernel module selection for the initramfs.
//!
//! A scenario names the modules it needs (`virtio_blk`, `nbd`, ...); their
//! dependencies are read from each module's own `.modinfo` section
//! (`depends=`), never from a hard-coded list, because the order changes
//! between kernel builds. Modules built into the kernel (`modules.builtin`)
//! need no file and are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSection};

use crate::HarnessError;

/// Normalises a module name the way the kernel does (`-` and `_` are one).
pub fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// Extracts the `depends=` list from the raw bytes of a `.modinfo` section.
pub fn parse_modinfo_depends(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|b| *b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| v.split(|b| *b == b','))
        .filter(|d| !d.is_empty())
        .map(|d| normalise(&String::from_utf8_lossy(d)))
        .collect()
}

/// The modules of one kernel release, indexed by normalised name.
#[derive(Debug)]
pub struct ModuleIndex {
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    /// Indexes `lib/modules/<release>`.
    pub fn load(modules_dir: &Path) -> Result<Self, HarnessError> {
        let mut files = BTreeMap::new();
        let mut stack = vec![modules_dir.join("kernel")];
        while let Some(dir) = stack.pop() {
            let rd = fs::read_dir(&dir)
                .map_err(|e| HarnessError::io(format!("list {}", dir.display()), e))?;
            for entry in rd.filter_map(Result::ok) {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                    if let Some(stem) = name.strip_suffix(".ko") {
                        files.insert(normalise(stem), path);
                    } else if let Some(stem) = [".ko.xz", ".ko.zst", ".ko.gz"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                    {
                        // Recorded so the error can say why, rather than "not found".
                        files.entry(normalise(stem)).or_insert(path);
                    }
                }
            }
        }
        let builtin = fs::read_to_string(modules_dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .filter_map(|f| f.strip_suffix(".ko"))
            .map(normalise)
            .collect();
        Ok(Self { files, builtin })
    }

    /// True when the module is compiled into the kernel image.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalise(name))
    }

    /// The module's file, when it is a loadable module.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.files.get(&normalise(name)).map(PathBuf::as_path)
    }

    /// Reads the `depends=` field of a module file.
    pub fn depends_of(&self, name: &str) -> Result<Vec<String>, HarnessError> {
        let path = self
            .path(name)
            .ok_or_else(|| HarnessError::Setup(format!("kernel module {name} not found")))?;
        if path.extension().is_some_and(|e| e != "ko") {
            return Err(HarnessError::Setup(format!(
                "{} is compressed; the harness loads uncompressed modules only",
                path.display()
            )));
        }
        let data =
            fs::read(path).map_err(|e| HarnessError::io(format!("read {}", path.display()), e))?;
        let elf = ElfFile64::<Endianness>::parse(&*data).map_err(|e| {
            HarnessError::Setup(format!("{}: not an ELF module: {e}", path.display()))
        })?;
        let section = elf.section_by_name(".modinfo").ok_or_else(|| {
            HarnessError::Setup(format!("{}: no .modinfo section", path.display()))
        })?;
        let bytes = section
            .data()
            .map_err(|e| HarnessError::Setup(format!("{}: bad .modinfo: {e}", path.display())))?;
        Ok(parse_modinfo_depends(bytes))
    }

    /// Returns the modules to load, dependencies first, each once, for the
    /// requested names. Built-in modules are left out.
    pub fn load_order<S: AsRef<str>>(&self, wanted: &[S]) -> Result<Vec<String>, HarnessError> {
        resolve_order(wanted, |name| {
            if self.is_builtin(name) {
                Ok(None)
            } else {
                self.depends_of(name).map(Some)
            }
        })
    }
}

/// Depth-first topological order over a `depends` function that returns
/// `None` for modules needing no load (built in). Cycles are an error.
pub fn resolve_order<S, F>(wanted: &[S], mut depends: F) -> Result<Vec<String>, HarnessError>
where
    S: AsRef<str>,
    F: FnMut(&str) -> Result<Option<Vec<String>>, HarnessError>,
{
    #[derive(PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: BTreeMap<String, Mark> = BTreeMap::new();
    let mut order = Vec::new();
    // Explicit stack of (module, its deps, next dep index) keeps deep chains off the call stack.
    for root in wanted {
        let root = normalise(root.as_ref());
        if marks.contains_key(&root) {
            continue;
        }
        let mut stack: Vec<(String, Vec<String>, usize)> = Vec::new();
        match depends(&root)? {
            None => {
                marks.insert(root, Mark::Done);
                continue;
            }
            Some(d) => {
                marks.insert(root.clone(), Mark::Visiting);
                stack.push((root, d, 0));
            }
        }
        while let Some((name, deps, next)) = stack.last_mut() {
            if let Some(dep) = deps.get(*next).cloned() {
                *next += 1;
                match marks.get(&dep) {
                    Some(Mark::Done) => {}
                    Some(Mark::Visiting) => {
                        return Err(HarnessError::Setup(format!(
                            "module dependency cycle through {dep} and {name}"
                        )))
                    }
                    None => match depends(&dep)? {
                        None => {
                            marks.insert(dep, Mark::Done);
                        }
                        Some(d) => {
                            marks.insert(dep.clone(), Mark::Visiting);
                            stack.push((dep, d, 0));
                        }
                    },
                }
            } else {
                let name = name.clone();
                stack.pop();
                marks.insert(name.clone(), Mark::Done);
                order.push(name);
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_depends_field_is_split() {
        let raw = b"license=GPL\0depends=virtio,virtio_ring\0intree=Y\0name=virtio_blk\0";
        assert_eq!(parse_modinfo_depends(raw), vec!["virtio", "virtio_ring"]);
        assert!(parse_modinfo_depends(b"depends=\0name=virtio\0").is_empty());
        assert_eq!(
            parse_modinfo_depends(b"depends=net-failover\0"),
            vec!["net_failover"]
        );
    }

    fn graph(name: &str) -> Result<Option<Vec<String>>, HarnessError> {
        let deps: &[&str] = match name {
            "virtio_blk" => &["virtio", "virtio_ring"],
            "virtio_net" => &["net_failover", "virtio", "virtio_ring"],
            "net_failover" => &["failover"],
            "virtio_ring" => &["virtio"],
            "virtio" | "failover" => &[],
            "builtin" => return Ok(None),
            "a" => &["b"],
            "b" => &["a"],
            _ => {
                return Err(HarnessError::Setup(format!(
                    "kernel module {name} not found"
                )))
            }
        };
        Ok(Some(deps.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let order = resolve_order(&["virtio_net", "virtio_blk", "builtin"], graph).expect("order");
        assert_eq!(
            order,
            vec![
                "failover",
                "net_failover",
                "virtio",
                "virtio_ring",
                "virtio_net",
                "virtio_blk"
            ]
        );
        for (i, m) in order.iter().enumerate() {
            for d in graph(m).expect("known").unwrap_or_default() {
                assert!(order[..i].contains(&d), "{d} must precede {m}");
            }
        }
    }

    #[test]
    fn cycles_and_unknown_modules_are_errors() {
        assert!(resolve_order(&["a"], graph).is_err());
        assert!(resolve_order(&["nonexistent"], graph).is_err());
    }
}
