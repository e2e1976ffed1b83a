//! A newc cpio archive for the guest's initramfs, built in memory.
//!
//! Entries are written in the order added; directories are created
//! implicitly for every file so callers only name files.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use crate::HarnessError;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Builder for an initramfs image.
#[derive(Debug, Default)]
pub struct Initramfs {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    next_ino: u32,
}

impl Initramfs {
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            dirs: BTreeSet::new(),
            next_ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<(), HarnessError> {
        let size = u32::try_from(data.len()).map_err(|_| {
            HarnessError::Setup(format!("initramfs entry {name} is larger than 4 GiB"))
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut w = cpio::newc::Builder::new(name)
            .ino(ino)
            .mode(mode)
            .uid(0)
            .gid(0)
            .nlink(if mode & S_IFDIR != 0 { 2 } else { 1 })
            .mtime(0)
            .write(&mut self.out, size);
        w.write_all(data)
            .map_err(|e| HarnessError::io(format!("initramfs entry {name}"), e))?;
        w.finish()
            .map_err(|e| HarnessError::io(format!("initramfs entry {name}"), e))?;
        Ok(())
    }

    fn parents(&mut self, path: &str) -> Result<(), HarnessError> {
        let mut acc = String::new();
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for comp in comps.iter().take(comps.len().saturating_sub(1)) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(comp);
            if self.dirs.insert(acc.clone()) {
                let name = acc.clone();
                self.entry(&name, S_IFDIR | 0o755, &[])?;
            }
        }
        Ok(())
    }

    /// Adds an empty directory (and its parents).
    pub fn dir(&mut self, path: &str) -> Result<&mut Self, HarnessError> {
        let p = path.trim_matches('/');
        self.parents(&format!("{p}/x"))?;
        Ok(self)
    }

    /// Adds a file with the given contents and permission bits.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<&mut Self, HarnessError> {
        let p = path.trim_start_matches('/');
        self.parents(p)?;
        self.entry(p, S_IFREG | (mode & 0o7777), data)?;
        Ok(self)
    }

    /// Adds a copy of a host file.
    pub fn host_file(
        &mut self,
        path: &str,
        mode: u32,
        src: &Path,
    ) -> Result<&mut Self, HarnessError> {
        let data = std::fs::read(src)
            .map_err(|e| HarnessError::io(format!("read {}", src.display()), e))?;
        self.file(path, mode, &data)
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, HarnessError> {
        let p = path.trim_start_matches('/');
        self.parents(p)?;
        self.entry(p, S_IFLNK | 0o777, target.as_bytes())?;
        Ok(self)
    }

    /// Finishes the archive (writes the trailer) and returns its bytes.
    pub fn finish(self) -> Result<Vec<u8>, HarnessError> {
        cpio::newc::trailer(self.out).map_err(|e| HarnessError::io("initramfs trailer".into(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_lists_parents_files_and_links() {
        let mut fs = Initramfs::new();
        fs.file("/usr/bin/tool", 0o755, b"#!/bin/sh\n")
            .expect("file");
        fs.symlink("/bin/sh", "busybox").expect("link");
        let bytes = fs.finish().expect("finish");
        let mut names = Vec::new();
        let mut rest: &[u8] = &bytes;
        loop {
            let r = cpio::newc::Reader::new(rest).expect("entry");
            if r.entry().is_trailer() {
                break;
            }
            names.push((r.entry().name().to_owned(), r.entry().mode()));
            rest = r.finish().expect("next");
        }
        assert_eq!(
            names,
            vec![
                ("usr".to_owned(), S_IFDIR | 0o755),
                ("usr/bin".to_owned(), S_IFDIR | 0o755),
                ("usr/bin/tool".to_owned(), S_IFREG | 0o755),
                ("bin".to_owned(), S_IFDIR | 0o755),
                ("bin/sh".to_owned(), S_IFLNK | 0o777),
            ]
        );
    }
}
