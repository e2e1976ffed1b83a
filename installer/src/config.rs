//! `/etc/pvdrivers/guest.toml`: which devices the guest runtimes take from
//! the kernel. One table per kind, each with a `devices` list of
//! selectors:
//!
//! - a PCI address, `0000:00:04.0` (or `00:04.0`);
//! - `serial:TEXT`: the virtio-blk disk whose serial is TEXT;
//! - `mac:52:54:00:12:34:56`: the virtio-net NIC with that MAC;
//! - `all`: every device of the kind (for blk, never the disk the root
//!   filesystem is on, nor one with a mounted filesystem).
//!
//! `pv-install enable/disable` edit the file with `toml_edit`, so the
//! comments of the shipped file (a conffile) and the admin's own stay.

use std::path::Path;

use toml_edit::{Array, DocumentMut, Item, Table, Value};

use crate::error::{Error, Result};
use crate::Kind;

/// A device selector from the config or the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// One PCI function.
    Pci(pv_linux::pci::PciAddress),
    /// The virtio-blk disk with this serial.
    Serial(String),
    /// The virtio-net NIC with this MAC (lower case).
    Mac(String),
    /// Every device of the kind.
    All,
}

impl Selector {
    /// Parses what a user writes; `None` when it is none of the forms.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s == "all" {
            Some(Self::All)
        } else if let Some(v) = s.strip_prefix("serial:") {
            (!v.is_empty()).then(|| Self::Serial(v.to_owned()))
        } else if let Some(v) = s.strip_prefix("mac:") {
            (!v.is_empty()).then(|| Self::Mac(v.to_ascii_lowercase()))
        } else {
            s.parse().ok().map(Self::Pci)
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pci(a) => write!(f, "{a}"),
            Self::Serial(s) => write!(f, "serial:{s}"),
            Self::Mac(m) => write!(f, "mac:{m}"),
            Self::All => f.write_str("all"),
        }
    }
}

/// The parsed file, kept as a document so edits keep its comments.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    doc: DocumentMut,
}

impl GuestConfig {
    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        Self::parse(&text, path)
    }

    /// Parses `text` (read from `path`, named in errors) and checks every
    /// selector.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |detail: String| Error::Config {
            path: path.to_owned(),
            detail,
        };
        let doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
            bad(e.to_string().lines().collect::<Vec<_>>().join(" "))
        })?;
        for (key, item) in doc.iter() {
            let Some(kind) = Kind::from_name(key) else {
                return Err(bad(format!(
                    "unknown table [{key}] (the kinds are blk, net, balloon)"
                )));
            };
            let Some(table) = item.as_table() else {
                return Err(bad(format!("{key} must be a table: [{key}]")));
            };
            for (k, v) in table.iter() {
                if k != "devices" {
                    return Err(bad(format!("[{key}]: unknown key {k:?} (only `devices`)")));
                }
                let Some(arr) = v.as_array() else {
                    return Err(bad(format!("[{key}] devices must be a list of strings")));
                };
                for v in arr {
                    let s = v
                        .as_str()
                        .ok_or_else(|| bad(format!("[{key}] devices must be a list of strings")))?;
                    match Selector::parse(s) {
                        Some(Selector::Mac(_)) if kind != Kind::Net => {
                            return Err(bad(format!("[{key}] {s:?}: mac: selects NICs only")))
                        }
                        Some(Selector::Serial(_)) if kind != Kind::Blk => {
                            return Err(bad(format!("[{key}] {s:?}: serial: selects disks only")))
                        }
                        Some(_) => {}
                        None => {
                            return Err(bad(format!(
                                "[{key}] {s:?} is not a PCI address (DDDD:BB:DD.F), serial:TEXT, mac:ADDR or all"
                            )))
                        }
                    }
                }
            }
        }
        Ok(Self { doc })
    }

    /// The selectors of `kind`, in file order.
    pub fn selectors(&self, kind: Kind) -> Vec<Selector> {
        self.doc
            .get(kind.name())
            .and_then(|t| t.get("devices"))
            .and_then(Item::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().and_then(Selector::parse))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn devices_mut(&mut self, kind: Kind) -> &mut Array {
        let table = self
            .doc
            .entry(kind.name())
            .or_insert_with(|| Item::Table(Table::new()));
        if !table.is_table() {
            *table = Item::Table(Table::new());
        }
        let devices = &mut table["devices"];
        if !devices.is_array() {
            *devices = Item::Value(Value::Array(Array::new()));
        }
        match devices.as_array_mut() {
            Some(a) => a,
            None => unreachable!("just made an array"),
        }
    }

    /// Adds `sel` to `kind` (no-op when it is there).
    pub fn add(&mut self, kind: Kind, sel: &Selector) {
        if self.selectors(kind).contains(sel) {
            return;
        }
        self.devices_mut(kind).push(sel.to_string());
    }

    /// Removes `sel` from `kind`; false when it was not there.
    pub fn remove(&mut self, kind: Kind, sel: &Selector) -> bool {
        let arr = self.devices_mut(kind);
        let before = arr.len();
        arr.retain(|v| v.as_str().and_then(Selector::parse).as_ref() != Some(sel));
        arr.len() != before
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        self.doc.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<GuestConfig> {
        GuestConfig::parse(t, Path::new("guest.toml"))
    }

    #[test]
    fn the_shipped_file_parses_and_claims_nothing() {
        let text = include_str!("../guest.toml");
        let c = parse(text).expect("shipped config");
        for k in Kind::ALL {
            assert!(c.selectors(k).is_empty(), "{k:?}");
        }
    }

    #[test]
    fn selectors_of_every_form() {
        let c = parse(
            "[blk]\ndevices = [\"0000:00:04.0\", \"serial:data1\", \"all\"]\n\
             [net]\ndevices = [\"mac:52:54:00:AA:bb:01\"]\n",
        )
        .expect("parse");
        assert_eq!(
            c.selectors(Kind::Blk),
            vec![
                Selector::Pci("0000:00:04.0".parse().expect("addr")),
                Selector::Serial("data1".into()),
                Selector::All
            ]
        );
        assert_eq!(
            c.selectors(Kind::Net),
            vec![Selector::Mac("52:54:00:aa:bb:01".into())]
        );
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        let e = parse("[blk]\ndevices = [\"disk0\"]\n").expect_err("bad selector");
        assert!(
            e.to_string().contains("\"disk0\" is not a PCI address"),
            "{e}"
        );
        let e = parse("[disk]\ndevices = []\n").expect_err("bad table");
        assert!(e.to_string().contains("unknown table [disk]"), "{e}");
        let e = parse("[net]\ndevices = [\"serial:x\"]\n").expect_err("serial on net");
        assert!(e.to_string().contains("serial: selects disks only"), "{e}");
        let e = parse("[blk]\ndevices = [\n").expect_err("syntax");
        assert!(e.to_string().contains("line"), "{e}");
    }

    #[test]
    fn edits_keep_comments() {
        let mut c = parse("# mine\n[blk]\n# the data disks\ndevices = []\n").expect("parse");
        let a = Selector::Pci("00:05.0".parse().expect("addr"));
        c.add(Kind::Blk, &a);
        c.add(Kind::Blk, &a);
        let t = c.to_text();
        assert!(
            t.contains("# mine") && t.contains("# the data disks"),
            "{t}"
        );
        assert_eq!(
            parse(&t).expect("reparse").selectors(Kind::Blk),
            vec![a.clone()]
        );
        assert!(c.remove(Kind::Blk, &a));
        assert!(!c.remove(Kind::Blk, &a));
        assert!(c.selectors(Kind::Blk).is_empty());
    }
}
