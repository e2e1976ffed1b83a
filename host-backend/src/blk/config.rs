//! Daemon configuration: a TOML file, command-line disks, or both.
//!
//! ```toml
//! [daemon]
//! log_level = "info"            # error | warn | info | debug | trace
//! shutdown_timeout_secs = 10    # SIGTERM: longest wait for in-flight requests
//! metrics_listen = "127.0.0.1:9977"  # Prometheus endpoint (GET /metrics); omit to disable
//!
//! [[disk]]
//! name = "vm1-root"             # used in logs (default: the socket's file name)
//! path = "/var/lib/pvdrivers/vm1-root.img"   # raw image file or block device
//! socket = "/run/pvdrivers/vm1-root.sock"    # vhost-user socket QEMU connects to
//! read_only = false
//! serial = "vm1-root"           # GET_ID string, at most 20 bytes
//! num_queues = 4                # at least QEMU's num-queues (its default: one per vCPU)
//! queue_size = 256              # power of two, at least QEMU's queue-size
//! poll_us = 50                  # busy-poll an emptied queue this long before sleeping (0: never)
//! io_mode = "hybrid"            # sync | pool | hybrid (see host_backend::blk::io)
//! io_threads = 4                # I/O threads of the disk (pool and hybrid modes), 1..=256
//!
//! [switch]                      # the L2 switch joining every [[net_port]]
//! name = "switch0"
//! # uplink_tap = "pvtap0"       # join the host through this TAP (needs CAP_NET_ADMIN or a persistent TAP)
//! mac_aging_secs = 300          # forget a MAC not seen for this long
//!
//! [[net_port]]
//! name = "vm1-eth0"             # used in logs and metrics (default: the socket's file name)
//! socket = "/run/pvdrivers/vm1-eth0.sock"    # vhost-user-net socket (QEMU: -netdev vhost-user)
//! mac = "52:54:00:00:00:01"     # offered in the config space (optional)
//! mtu = 1500                    # 68..=9000; larger frames are dropped
//! rate_mbps = 0                 # ingress token bucket in Mbit/s (0: unlimited)
//! poll_us = 0                   # watch the TX ring this long after a burst (0: never; <= 1000)
//! ```
//!
//! The `[balloon]` table (memory-balance manager) is documented in
//! [`crate::balloon::config`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::blk::IoMode;

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
    #[error("--disk '{spec}': {message}")]
    DiskSpec { spec: String, message: String },
    #[error("disk '{disk}': {message}")]
    Invalid { disk: String, message: String },
    #[error("nothing to serve: give --config FILE with [[disk]] or [[net_port]] tables or a [balloon] table, or --disk path=...,socket=..., --net-port socket=..., --balloon-guest/--balloon-watch")]
    NothingToServe,
    #[error("{0}")]
    Balloon(String),
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
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            log_level: None,
            shutdown_timeout_secs: default_shutdown_timeout(),
            metrics_listen: None,
        }
    }
}

fn default_shutdown_timeout() -> u64 {
    10
}
fn default_num_queues() -> u16 {
    4
}
fn default_queue_size() -> u16 {
    256
}
fn default_poll_us() -> u32 {
    50
}
fn default_io_threads() -> u16 {
    4
}

/// One `[[disk]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub path: PathBuf,
    pub socket: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default = "default_num_queues")]
    pub num_queues: u16,
    #[serde(default = "default_queue_size")]
    pub queue_size: u16,
    #[serde(default = "default_poll_us")]
    pub poll_us: u32,
    #[serde(default)]
    pub io_mode: IoMode,
    #[serde(default = "default_io_threads")]
    pub io_threads: u16,
}

impl DiskConfig {
    /// Name for logs: `name`, else the socket's file name.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.socket.file_stem().map_or_else(
                || self.socket.display().to_string(),
                |s| s.to_string_lossy().into_owned(),
            )
        })
    }

    /// GET_ID string: `serial`, else the name.
    pub fn serial(&self) -> String {
        self.serial.clone().unwrap_or_else(|| self.display_name())
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default, rename = "disk")]
    pub disks: Vec<DiskConfig>,
    /// `[balloon]`: the memory-balance manager (see [`crate::balloon::config`]).
    #[serde(default)]
    pub balloon: crate::balloon::BalloonConfig,
    /// Switch ports (see [`crate::net`]).
    #[serde(default, rename = "net_port")]
    pub net_ports: Vec<crate::net::NetPortConfig>,
    #[serde(default)]
    pub switch: crate::net::SwitchConfig,
}

fn line_of(text: &str, offset: usize) -> usize {
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
        Self::parse(&text, path)
    }

    /// Checks every disk and the set as a whole.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.balloon.validate().map_err(ConfigError::Balloon)?;
        if self.disks.is_empty() && self.net_ports.is_empty() && !self.balloon.serves() {
            return Err(ConfigError::NothingToServe);
        }
        let mut sockets = BTreeSet::new();
        for d in &self.disks {
            let bad = |message: String| ConfigError::Invalid {
                disk: d.display_name(),
                message,
            };
            if !d.queue_size.is_power_of_two() || d.queue_size < 2 || d.queue_size > 32768 {
                return Err(bad(format!(
                    "queue_size {} is not a power of two in 2..=32768",
                    d.queue_size
                )));
            }
            if d.poll_us > 10_000 {
                return Err(bad(format!("poll_us {} is above 10000", d.poll_us)));
            }
            if d.io_threads == 0 || d.io_threads > 256 {
                return Err(bad(format!(
                    "io_threads {} is not in 1..=256",
                    d.io_threads
                )));
            }
            if d.num_queues == 0 || d.num_queues > 64 {
                return Err(bad(format!("num_queues {} is not in 1..=64", d.num_queues)));
            }
            if d.serial().len() > 20 {
                return Err(bad(format!(
                    "serial '{}' is longer than 20 bytes",
                    d.serial()
                )));
            }
            if !sockets.insert(d.socket.clone()) {
                return Err(bad(format!(
                    "socket {} is used by another disk",
                    d.socket.display()
                )));
            }
        }
        crate::net::config::validate(&self.net_ports, &self.switch, &sockets)?;
        Ok(())
    }
}

/// Parses a `--disk` spec: `path=IMG,socket=SOCK[,readonly][,serial=S][,name=N][,queues=N][,queue-size=N][,poll-us=N][,io=MODE][,io-threads=N]`.
pub fn parse_disk_spec(spec: &str) -> Result<DiskConfig, ConfigError> {
    let err = |message: String| ConfigError::DiskSpec {
        spec: spec.to_owned(),
        message,
    };
    let (mut path, mut socket) = (None, None);
    let mut d = DiskConfig {
        name: None,
        path: PathBuf::new(),
        socket: PathBuf::new(),
        read_only: false,
        serial: None,
        num_queues: default_num_queues(),
        queue_size: default_queue_size(),
        poll_us: default_poll_us(),
        io_mode: IoMode::default(),
        io_threads: default_io_threads(),
    };
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .map_or((part, None), |(k, v)| (k, Some(v)));
        let need = |v: Option<&str>| {
            v.map(str::to_owned)
                .ok_or_else(|| err(format!("'{k}' needs a value")))
        };
        match k {
            "path" => path = Some(PathBuf::from(need(v)?)),
            "socket" => socket = Some(PathBuf::from(need(v)?)),
            "readonly" | "read-only" | "ro" => {
                d.read_only = v.is_none_or(|v| v == "on" || v == "true")
            }
            "serial" => d.serial = Some(need(v)?),
            "name" => d.name = Some(need(v)?),
            "queues" | "num-queues" => {
                d.num_queues = need(v)?
                    .parse()
                    .map_err(|_| err(format!("'{k}' takes a number")))?;
            }
            "poll-us" => {
                d.poll_us = need(v)?
                    .parse()
                    .map_err(|_| err(format!("'{k}' takes a number of microseconds")))?
            }
            "io" => {
                d.io_mode = IoMode::parse(&need(v)?)
                    .ok_or_else(|| err(format!("'{k}' takes sync, pool or hybrid")))?
            }
            "io-threads" => {
                d.io_threads = need(v)?
                    .parse()
                    .map_err(|_| err(format!("'{k}' takes a number")))?
            }
            "queue-size" => {
                d.queue_size = need(v)?
                    .parse()
                    .map_err(|_| err(format!("'{k}' takes a number")))?
            }
            other => return Err(err(format!("unknown key '{other}'"))),
        }
    }
    d.path = path.ok_or_else(|| err("missing path=".into()))?;
    d.socket = socket.ok_or_else(|| err("missing socket=".into()))?;
    Ok(d)
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
    fn errors_carry_line_numbers() {
        let text = "[daemon]\nlog_level = \"info\"\n\n[[disk]]\npath = \"/a\"\nsocket = \"/s\"\nqueue_sise = 4\n";
        let e = Config::parse(text, Path::new("c.toml")).expect_err("typo");
        let msg = e.to_string();
        assert!(msg.contains("line 7"), "{msg}");
        assert!(msg.contains("queue_sise"), "{msg}");
    }

    #[test]
    fn invalid_values_are_refused() {
        let mut c = Config {
            disks: vec![parse_disk_spec("path=/a,socket=/s,queue-size=100").expect("spec")],
            ..Config::default()
        };
        assert!(c
            .validate()
            .expect_err("size")
            .to_string()
            .contains("power of two"));
        c.disks = vec![
            parse_disk_spec("path=/a,socket=/s").expect("spec"),
            parse_disk_spec("path=/b,socket=/s").expect("spec"),
        ];
        assert!(c
            .validate()
            .expect_err("dup")
            .to_string()
            .contains("used by another disk"));
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
        assert!(parse_disk_spec("path=/a").is_err());
        assert!(parse_disk_spec("path=/a,socket=/s,colour=red").is_err());
        let d = parse_disk_spec("path=/a,socket=/run/x.sock,readonly,serial=abc,queues=2")
            .expect("spec");
        assert!(d.read_only);
        assert_eq!((d.io_mode, d.io_threads), (IoMode::Hybrid, 4));
        let p = parse_disk_spec("path=/a,socket=/s,io=pool,io-threads=8").expect("spec");
        assert_eq!((p.io_mode, p.io_threads), (IoMode::Pool, 8));
        assert!(parse_disk_spec("path=/a,socket=/s,io=fast").is_err());
        assert_eq!(
            (d.num_queues, d.serial(), d.display_name()),
            (2, "abc".to_owned(), "x".to_owned())
        );
    }
}
