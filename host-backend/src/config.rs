//! Daemon configuration: a TOML file, command-line devices, or both.
//!
//! ```toml
//! [daemon]
//! log_level = "info"            # error | warn | info | debug | trace
//! shutdown_timeout_secs = 10    # SIGTERM: longest wait for in-flight requests
//! metrics_listen = "127.0.0.1:9977"  # Prometheus endpoint (GET /metrics); omit to disable
//! stall_timeout_secs = 30       # systemd watchdog: a device thread busy this long is wedged, pings stop
//! seccomp = "trap"              # trap | log | off: a syscall outside a thread's allow-list ends the daemon / is logged
//! # user = "pvbackend"          # drop to this user (and its group) once images are open and sockets bound
//! # group = "kvm"               # the group to drop to (default: the user's primary group)
//! landlock = false              # restrict file access to images, socket dirs, config (needs a Landlock kernel)
//!
//! [[disk]]
//! name = "vm1-root"             # used in logs (default: the socket's file name)
//! guest = "vm1"                 # the guest it belongs to: a `guest` label on its metrics
//! path = "/var/lib/pvdrivers/vm1-root.img"   # raw image file or block device
//! socket = "/run/pvdrivers/vm1-root.sock"    # vhost-user socket QEMU connects to
//! read_only = false
//! serial = "vm1-root"           # GET_ID string, at most 20 bytes
//! num_queues = 4                # at least QEMU's num-queues (its default: one per vCPU)
//! queue_size = 256              # power of two, at least QEMU's queue-size
//! poll_us = 50                  # busy-poll an emptied queue this long before sleeping (0: never)
//! io_mode = "hybrid"            # sync | pool | hybrid (see host_backend::blk::io)
//! io_threads = 4                # I/O threads of the disk (pool and hybrid modes), 1..=256
//! stop_timeout_ms = 30000       # a queue stop waits this long for requests in the disk, then resets the device
//!
//! [switch]                      # the L2 switch joining every [[net_port]]
//! name = "switch0"
//! # uplink_tap = "pvtap0"       # join the host through this TAP (needs CAP_NET_ADMIN or a persistent TAP)
//! mac_aging_secs = 300          # forget a MAC not seen for this long
//!
//! [[net_port]]
//! name = "vm1-eth0"             # used in logs and metrics (default: the socket's file name)
//! guest = "vm1"                 # the guest it belongs to: a `guest` label on its metrics
//! socket = "/run/pvdrivers/vm1-eth0.sock"    # vhost-user-net socket (QEMU: -netdev vhost-user)
//! mac = "52:54:00:00:00:01"     # offered in the config space (optional)
//! mtu = 1500                    # 68..=9000; larger frames are dropped
//! rate_mbps = 0                 # ingress token bucket in Mbit/s (0: unlimited)
//! poll_us = 0                   # watch the TX ring this long after a burst (0: never; <= 1000)
//! ```
//!
//! Each device defines its own tables and checks them: `[[disk]]` in
//! [`crate::blk::config`], `[switch]` and `[[net_port]]` in
//! [`crate::net::config`], and the `[balloon]` table (memory-balance
//! manager), documented in [`crate::balloon::config`], and the `[guests]`
//! table (shutdown/restore, control socket) in [`crate::guests::config`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Configuration errors, each naming the place to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Blk(#[from] crate::blk::BlkConfigError),
    #[error("nothing to serve: give --config FILE with [[disk]] or [[net_port]] tables, a [balloon] table or a metrics_listen address, or --disk path=...,socket=..., --net-port socket=..., --balloon-guest/--balloon-watch")]
    NothingToServe,
    #[error("{0}")]
    Balloon(String),
    #[error("{0}")]
    Guests(String),
    #[error("[daemon]: {0}")]
    Daemon(String),
    #[error(transparent)]
    Net(#[from] crate::net::NetConfigError),
}

/// `[daemon]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// A device thread busy this long is wedged: the systemd watchdog
    /// pings stop ([`crate::daemon`]).
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout_secs: u64,
    /// Syscalls outside a thread's allow-list: `trap` (the daemon exits
    /// and is restarted), `log` (the kernel logs them) or `off`
    /// ([`crate::sandbox`]).
    #[serde(default)]
    pub seccomp: crate::sandbox::Mode,
    /// Drop to this user once every image is open and every socket bound
    /// ([`crate::sandbox::privilege`]).
    #[serde(default)]
    pub user: Option<String>,
    /// The group to drop to (default: the user's primary group).
    #[serde(default)]
    pub group: Option<String>,
    /// Restrict each thread's file access with Landlock to the images,
    /// socket directories and what the daemon reads at run time.
    #[serde(default)]
    pub landlock: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            log_level: None,
            shutdown_timeout_secs: default_shutdown_timeout(),
            metrics_listen: None,
            stall_timeout_secs: default_stall_timeout(),
            seccomp: crate::sandbox::Mode::default(),
            user: None,
            group: None,
            landlock: false,
        }
    }
}

fn default_shutdown_timeout() -> u64 {
    10
}

fn default_stall_timeout() -> u64 {
    30
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Disks (see [`crate::blk::config`]).
    #[serde(default, rename = "disk")]
    pub disks: Vec<crate::blk::DiskConfig>,
    /// `[balloon]`: the memory-balance manager (see [`crate::balloon::config`]).
    #[serde(default)]
    pub balloon: crate::balloon::BalloonConfig,
    /// Switch ports (see [`crate::net`]).
    #[serde(default, rename = "net_port")]
    pub net_ports: Vec<crate::net::NetPortConfig>,
    #[serde(default)]
    pub switch: crate::net::SwitchConfig,
    /// `[guests]`: lifecycle (shutdown/restore) and the control socket
    /// (see [`crate::guests::config`]).
    #[serde(default)]
    pub guests: crate::guests::GuestsConfig,
    /// The file it was read from (a reload reads it again; Landlock keeps
    /// it readable).
    #[serde(skip)]
    pub config_path: Option<PathBuf>,
}

/// A socket-served device's name for logs and metrics: its `name`, else
/// the socket's file stem (`/run/vm1.sock` is `vm1`), else the whole path.
/// Every device table with a `name` and a `socket` names itself this way.
pub fn device_name(name: Option<&str>, socket: &Path) -> String {
    name.map_or_else(
        || {
            socket.file_stem().map_or_else(
                || socket.display().to_string(),
                |s| s.to_string_lossy().into_owned(),
            )
        },
        str::to_owned,
    )
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// Parses TOML text; errors carry the 1-based line number.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            message: e.message().to_owned(),
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut c = Self::parse(&text, path)?;
        c.config_path = Some(path.to_owned());
        Ok(c)
    }

    /// Checks every device and the set as a whole.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.balloon.validate().map_err(ConfigError::Balloon)?;
        self.guests.validate().map_err(ConfigError::Guests)?;
        if self.daemon.stall_timeout_secs == 0 {
            return Err(ConfigError::Daemon(
                "stall_timeout_secs 0 is not at least 1".into(),
            ));
        }
        if let Some(user) = &self.daemon.user {
            crate::sandbox::privilege::resolve(user, self.daemon.group.as_deref())
                .map_err(|e| ConfigError::Daemon(e.to_string()))?;
        } else if self.daemon.group.is_some() {
            return Err(ConfigError::Daemon(
                "group is set without user: the daemon drops to a group only with a user".into(),
            ));
        }
        // A daemon with only its metrics endpoint is a packaged daemon
        // waiting for its first device (added by a reload).
        if self.disks.is_empty()
            && self.net_ports.is_empty()
            && !self.balloon.serves()
            && !self.guests.has_guests()
            && self.daemon.metrics_listen.is_none()
        {
            return Err(ConfigError::NothingToServe);
        }
        let sockets = crate::blk::config::validate(&self.disks)?;
        crate::net::config::validate(&self.net_ports, &self.switch, &sockets)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = Config::parse(&text, Path::new("example.toml")).expect("example parses");
        c.validate().expect("example is valid");
        assert_eq!(c.disks.len(), 1);
        assert_eq!(c.net_ports.len(), 1);
        assert_eq!(c.switch.mac_aging_secs, 300);
        assert_eq!(c.disks[0].num_queues, 4);
        assert_eq!(c.daemon.shutdown_timeout_secs, 10);
    }

    #[test]
    fn device_name_is_name_else_socket_stem_else_path() {
        let sock = Path::new("/run/pvdrivers/vm1-root.sock");
        assert_eq!(device_name(Some("root"), sock), "root");
        assert_eq!(device_name(None, sock), "vm1-root");
        assert_eq!(device_name(None, Path::new("/")), "/");
    }

    #[test]
    fn errors_carry_line_numbers() {
        let text = "[daemon]\nlog_level = \"info\"\n\n[[disk]]\npath = \"/a\"\nsocket = \"/s\"\nqueue_sise = 4\n";
        let e = Config::parse(text, Path::new("c.toml")).expect_err("typo");
        let msg = e.to_string();
        assert!(msg.contains("line 7"), "{msg}");
        assert!(msg.contains("queue_sise"), "{msg}");
    }

    #[test]
    fn sandbox_keys_are_checked() {
        let with = |daemon: &str| {
            Config::parse(
                &format!("[daemon]\nmetrics_listen = \"127.0.0.1:0\"\n{daemon}"),
                Path::new("s.toml"),
            )
        };
        let c = with("").expect("parses");
        assert_eq!(
            c.daemon.seccomp,
            crate::sandbox::Mode::Trap,
            "trap by default"
        );
        assert!(!c.daemon.landlock);
        let e = with("seccomp = \"kill\"\n").expect_err("bad mode");
        assert!(e.to_string().contains("line 3"), "{e}");
        let c = with("user = \"root\"\nlandlock = true\nseccomp = \"log\"\n").expect("parses");
        c.validate().expect("root exists");
        let c = with("user = \"no-such-user-pvtest\"\n").expect("parses");
        let e = c.validate().expect_err("unknown user").to_string();
        assert!(e.contains("no-such-user-pvtest"), "{e}");
        let c = with("group = \"root\"\n").expect("parses");
        assert!(c.validate().is_err(), "group without user");
    }

    #[test]
    fn nothing_to_serve_is_refused() {
        assert!(Config::default()
            .validate()
            .expect_err("empty")
            .to_string()
            .contains("nothing to serve"));
        // The balloon manager alone is something to serve.
        let balloon_only =
            "[balloon]\nenabled = true\n[[balloon.guest]]\nname = \"vm\"\nqmp = \"/run/vm.qmp\"\n";
        Config::parse(balloon_only, Path::new("b.toml"))
            .expect("parses")
            .validate()
            .expect("balloon only is valid");
    }
}
