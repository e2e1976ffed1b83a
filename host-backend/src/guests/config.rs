//! The `[guests]` config table and `[[guests.guest]]` entries: the guests
//! `pvbackend guests shutdown|restore` act on, where their saved state
//! goes, and the control socket the subcommands reach the daemon on.
//!
//! ```toml
//! [guests]
//! state_dir = "/var/lib/pvdrivers/save"   # saved guests: NAME.state (and NAME.console.log of a restored QEMU)
//! control_socket = "/run/pvdrivers/control.sock"  # default: $RUNTIME_DIRECTORY/control.sock, else /run/pvdrivers/control.sock
//! control_mode = "0600"         # permissions of the control socket (octal)
//! qmp_timeout_secs = 10         # longest wait for one QMP reply (never past a deadline)
//! save_bandwidth_mib = 4096     # migrate max-bandwidth while saving, MiB/s (QEMU's default cap is 128)
//!
//! [[guests.guest]]
//! name = "vm1"
//! qmp = "/run/pvdrivers/vm1.qmp"          # QEMU: -qmp unix:/run/pvdrivers/vm1.qmp,server=on,wait=off
//! # pid_file = "/run/pvdrivers/vm1.pid"   # QEMU: -pidfile; default: the pid behind the QMP socket
//! # state_dir = "/srv/save"              # this guest's own state directory
//! # save_bandwidth_mib = 1024
//! # The command that starts this same machine (same devices, same order,
//! # same -qmp socket); restore appends `-S -incoming defer` and feeds it
//! # the saved state. The daemon runs it detached; under systemd prefix it
//! # with `systemd-run --unit=vm1 --` so the guest gets its own unit.
//! restore_command = ["qemu-system-x86_64", "-name", "vm1", "-m", "1G", "-qmp", "unix:/run/pvdrivers/vm1.qmp,server=on,wait=off"]
//! ```
//!
//! Names must be unique; a second entry with a name already used is not
//! handled (its report says so) while every other guest still is, so one
//! typo does not leave a host unable to shut down.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One `[[guests.guest]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuestEntry {
    pub name: String,
    pub qmp: PathBuf,
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub save_bandwidth_mib: Option<u64>,
    #[serde(default)]
    pub restore_command: Vec<String>,
}

/// The `[guests]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GuestsConfig {
    pub state_dir: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub control_mode: String,
    pub qmp_timeout_secs: u64,
    pub save_bandwidth_mib: u64,
    #[serde(rename = "guest")]
    pub guests: Vec<GuestEntry>,
}

impl Default for GuestsConfig {
    fn default() -> Self {
        Self {
            state_dir: None,
            control_socket: None,
            control_mode: "0600".into(),
            qmp_timeout_secs: 10,
            save_bandwidth_mib: 4096,
            guests: Vec::new(),
        }
    }
}

/// The control socket's default path: under systemd's runtime directory
/// when the unit has one (`RuntimeDirectory=pvbackend`), else
/// `/run/pvdrivers/control.sock`.
pub fn default_control_socket() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|d| {
            // RuntimeDirectory= may list several, colon-separated.
            let s = d.to_string_lossy().split(':').next().map(PathBuf::from);
            s.filter(|p| p.is_absolute())
        })
        .unwrap_or_else(|| PathBuf::from("/run/pvdrivers"))
        .join("control.sock")
}

impl GuestsConfig {
    /// True when the daemon has guests to act on (the control socket is
    /// then opened at its default path unless another is configured).
    pub fn has_guests(&self) -> bool {
        !self.guests.is_empty()
    }

    /// Where the daemon opens its control socket: the configured path,
    /// else the default one when there are guests, else nowhere.
    pub fn control_socket_path(&self) -> Option<PathBuf> {
        self.control_socket
            .clone()
            .or_else(|| self.has_guests().then(default_control_socket))
    }

    /// The control socket's permissions.
    pub fn mode(&self) -> Result<u32, String> {
        u32::from_str_radix(self.control_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                format!(
                    "[guests] control_mode '{}' is not an octal mode such as \"0600\"",
                    self.control_mode
                )
            })
    }

    /// Checks the table; the message names the key to fix. Duplicate
    /// names are not an error here (see the module docs).
    pub fn validate(&self) -> Result<(), String> {
        self.mode()?;
        if self.qmp_timeout_secs == 0 {
            return Err("[guests] qmp_timeout_secs must be at least 1".into());
        }
        if self.save_bandwidth_mib == 0 {
            return Err("[guests] save_bandwidth_mib must be at least 1".into());
        }
        for g in &self.guests {
            if g.name.is_empty() || g.name.contains(['/', '\0']) || g.name.starts_with('.') {
                return Err(format!(
                    "[[guests.guest]] name '{}' must be a plain file name (it names the state file)",
                    g.name
                ));
            }
            if g.save_bandwidth_mib == Some(0) {
                return Err(format!(
                    "[[guests.guest]] '{}': save_bandwidth_mib must be at least 1",
                    g.name
                ));
            }
        }
        Ok(())
    }

    /// The state directory of `g`.
    pub fn state_dir_of<'a>(&'a self, g: &'a GuestEntry) -> Option<&'a Path> {
        g.state_dir.as_deref().or(self.state_dir.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrap {
        guests: GuestsConfig,
    }

    #[test]
    fn documented_example_parses() {
        let text = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let w: Wrap = toml::from_str(&text).expect("example parses");
        w.guests.validate().expect("valid");
        assert_eq!(w.guests.mode(), Ok(0o600));
        assert_eq!(w.guests.guests[0].restore_command[0], "qemu-system-x86_64");
        assert_eq!(
            w.guests.state_dir_of(&w.guests.guests[0]),
            Some(Path::new("/var/lib/pvdrivers/save"))
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = GuestsConfig {
            control_mode: "rw".into(),
            ..GuestsConfig::default()
        };
        assert!(c.validate().is_err());
        c.control_mode = "0660".into();
        c.validate().expect("valid");
        c.guests.push(GuestEntry {
            name: "../x".into(),
            qmp: "/q".into(),
            pid_file: None,
            state_dir: None,
            save_bandwidth_mib: None,
            restore_command: Vec::new(),
        });
        assert!(c.validate().is_err(), "a name that leaves the state dir");
    }
}
