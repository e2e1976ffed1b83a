//! Where downloaded and derived artefacts live: outside the work tree, keyed
//! by version, shared between test processes (nextest runs each test in its
//! own process) under a file lock.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::HarnessError;

/// The cache root: `$PVDRIVERS_CACHE`, else `/var/cache/pvdrivers` when that
/// is writable (root), else `$XDG_CACHE_HOME/pvdrivers` or `~/.cache/pvdrivers`.
pub fn root() -> Result<PathBuf, HarnessError> {
    if let Some(dir) = std::env::var_os("PVDRIVERS_CACHE") {
        let dir = PathBuf::from(dir);
        fs::create_dir_all(&dir)
            .map_err(|e| HarnessError::io(format!("create cache {}", dir.display()), e))?;
        return Ok(dir);
    }
    let system = PathBuf::from("/var/cache/pvdrivers");
    if fs::create_dir_all(&system).is_ok() && writable(&system) {
        return Ok(system);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or_else(|| HarnessError::Setup("no cache directory: set PVDRIVERS_CACHE".into()))?;
    let dir = base.join("pvdrivers");
    fs::create_dir_all(&dir)
        .map_err(|e| HarnessError::io(format!("create cache {}", dir.display()), e))?;
    Ok(dir)
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = File::create(&probe).is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// An exclusive lock on `<dir>/.lock`, held until dropped. Serialises the
/// download/extract/build steps between concurrent test processes.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<Self, HarnessError> {
        fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("create {}", dir.display()), e))?;
        let path = dir.join(".lock");
        let file = File::create(&path)
            .map_err(|e| HarnessError::io(format!("create {}", path.display()), e))?;
        file.lock()
            .map_err(|e| HarnessError::io(format!("lock {}", path.display()), e))?;
        Ok(Self { _file: file })
    }
}
