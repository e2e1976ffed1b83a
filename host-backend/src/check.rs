//! `pvbackend check-config FILE`: validates a configuration file without
//! serving anything, and names the line at fault.
//!
//! Syntax and type errors carry toml's own span. Errors found after
//! parsing (a queue size that is not a power of two, a socket two devices
//! share, a socket group that does not exist) name a device, not a place
//! in the file: they are located by validating the devices one prefix at
//! a time (the first prefix that fails ends at the device at fault) and
//! finding that table, and the key the message starts with, in the
//! document's spans ([`toml::de::DeTable`]).
//!
//! It also checks what the daemon would trip over at start that the file
//! alone does not say: an image file that is not there. It binds nothing
//! and opens nothing for writing, so the package's postinst can run it
//! while an older daemon serves.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use crate::config::{Config, ConfigError};

/// A configuration that does not pass, with the line to look at.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", line.map_or_else(|| format!("{}: ", path.display()), |l| format!("{}, line {l}: ", path.display())))]
pub struct CheckError {
    pub path: PathBuf,
    /// 1-based, when the fault has a place in the file.
    pub line: Option<usize>,
    pub message: String,
}

/// What a passing file configures, for the one-line summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub disks: usize,
    pub net_ports: usize,
    pub balloon: bool,
    pub metrics: Option<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} disk(s), {} net port(s), balloon manager {}, metrics {}",
            self.disks,
            self.net_ports,
            if self.balloon { "on" } else { "off" },
            self.metrics.as_deref().unwrap_or("off")
        )
    }
}

/// Reads and checks `path`.
pub fn check_file(path: &Path) -> Result<Summary, CheckError> {
    let text = std::fs::read_to_string(path).map_err(|e| CheckError {
        path: path.to_owned(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    check_text(&text, path)
}

/// Checks configuration `text` (named `path` in messages).
pub fn check_text(text: &str, path: &Path) -> Result<Summary, CheckError> {
    let fail = |line: Option<usize>, message: String| CheckError {
        path: path.to_owned(),
        line,
        message,
    };
    let config = match Config::parse(text, path) {
        Ok(c) => c,
        Err(ConfigError::Parse { line, message, .. }) => {
            return Err(fail((line > 0).then_some(line), message))
        }
        Err(e) => return Err(fail(None, e.to_string())),
    };
    if let Err(e) = config.validate() {
        let message = e.to_string();
        let line = locate(text, &config, &e);
        return Err(fail(line, message));
    }
    for (i, d) in config.disks.iter().enumerate() {
        if !d.path.exists() {
            return Err(fail(
                line_in(text, "disk", Some(i), Some("path")),
                format!(
                    "disk '{}': image {} does not exist",
                    d.display_name(),
                    d.path.display()
                ),
            ));
        }
    }
    Ok(Summary {
        disks: config.disks.len(),
        net_ports: config.net_ports.len(),
        balloon: config.balloon.serves(),
        metrics: config.daemon.metrics_listen.clone(),
    })
}

/// The line of the device (and key) a validation error is about.
fn locate(text: &str, config: &Config, e: &ConfigError) -> Option<usize> {
    let message = match e {
        ConfigError::Blk(crate::blk::BlkConfigError::Invalid { message, .. }) => {
            let i = (0..config.disks.len())
                .find(|&i| crate::blk::config::validate(&config.disks[..=i]).is_err())?;
            return line_in(text, "disk", Some(i), first_word(message));
        }
        ConfigError::Net(crate::net::NetConfigError::Invalid { message, .. }) => message,
        ConfigError::Net(crate::net::NetConfigError::Switch(message)) => {
            return line_in(text, "switch", None, first_word(message));
        }
        ConfigError::Daemon(message) => return line_in(text, "daemon", None, first_word(message)),
        ConfigError::Balloon(_) => return line_in(text, "balloon", None, None),
        _ => return None,
    };
    let taken = crate::blk::config::validate(&config.disks).ok()?;
    let i = (0..config.net_ports.len()).find(|&i| {
        crate::net::config::validate(&config.net_ports[..=i], &config.switch, &taken).is_err()
    })?;
    line_in(text, "net_port", Some(i), first_word(message))
}

/// The key a validation message starts with (`queue_size 100 is ...`,
/// `socket_group 'x': ...`), if it is one.
fn first_word(message: &str) -> Option<&str> {
    let w = message.split([' ', ':']).next()?;
    (!w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then_some(w)
}

/// The 1-based line of top-level `table` (element `index` of an array of
/// tables), of its `key` when that key is written there.
fn line_in(text: &str, table: &str, index: Option<usize>, key: Option<&str>) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    let (_, value) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == table)?;
    let value = match (value.get_ref(), index) {
        (DeValue::Array(a), Some(i)) => a.get(i)?,
        (_, None) => value,
        _ => return None,
    };
    let span: Range<usize> = match (value.get_ref(), key) {
        (DeValue::Table(t), Some(key)) => t
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map_or_else(|| value.span(), |(k, _)| k.span()),
        _ => value.span(),
    };
    Some(crate::config::line_of(text, span.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Summary, CheckError> {
        check_text(text, Path::new("/etc/pvdrivers/pvbackend.toml"))
    }

    #[test]
    fn a_good_file_is_summarised() {
        let s = check("[daemon]\nmetrics_listen = \"127.0.0.1:9977\"\n\n[[net_port]]\nsocket = \"/run/pvdrivers/a.sock\"\n")
            .expect("valid");
        assert_eq!(s.net_ports, 1);
        assert_eq!(s.disks, 0);
        assert_eq!(s.metrics.as_deref(), Some("127.0.0.1:9977"));
    }

    #[test]
    fn syntax_and_unknown_keys_name_their_line() {
        let e = check("[daemon]\nmetrics_listen = \"x\"\nstall_timeout_secs = \"long\"\n")
            .expect_err("type");
        assert_eq!(e.line, Some(3), "{e}");
        let e =
            check("[[net_port]]\nsocket = \"/s\"\n\n[[net_port]]\nsocket = \"/t\"\ncolour = 1\n")
                .expect_err("unknown key");
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.to_string().contains("line 6"), "{e}");
    }

    #[test]
    fn a_bad_value_names_the_key_of_the_device_at_fault() {
        let disk = |extra: &str| {
            format!("[[disk]]\npath = \"/dev/null\"\nsocket = \"/run/a.sock\"\n\n[[disk]]\npath = \"/dev/null\"\nsocket = \"/run/b.sock\"\n{extra}")
        };
        let e = check(&disk("queue_size = 100\n")).expect_err("not a power of two");
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("queue_size 100"), "{e}");
        let e = check(&disk("socket_group = \"no-such-group-pvdrivers\"\n")).expect_err("group");
        assert_eq!(e.line, Some(8), "{e}");
        // A socket two disks share: the second disk's socket line.
        let e = check(&disk("").replace("/run/b.sock", "/run/a.sock")).expect_err("shared");
        assert_eq!(e.line, Some(7), "{e}");
        let e = check("[[net_port]]\nsocket = \"/s\"\n\n[[net_port]]\nsocket = \"/t\"\nmtu = 20\n")
            .expect_err("mtu");
        assert_eq!(e.line, Some(6), "{e}");
        let e = check("[daemon]\nmetrics_listen = \"x\"\nstall_timeout_secs = 0\n")
            .expect_err("zero stall limit");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn the_packaged_default_config_is_valid() {
        let s = check(include_str!("../etc/pvbackend.toml")).expect("the conffile passes");
        assert_eq!(s.metrics.as_deref(), Some("127.0.0.1:9977"));
        assert_eq!((s.disks, s.net_ports, s.balloon), (0, 0, false));
    }

    #[test]
    fn a_missing_image_names_its_path_line() {
        let e =
            check("[[disk]]\nsocket = \"/run/a.sock\"\npath = \"/nonexistent/pvdrivers.img\"\n")
                .expect_err("missing image");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("does not exist"), "{e}");
    }
}
