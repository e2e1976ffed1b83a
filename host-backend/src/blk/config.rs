//! The `[[disk]]` table and the `--disk` spec. The whole configuration
//! file, with an example of every table, is documented in [`crate::config`].

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::io::IoMode;

/// Configuration errors of a disk, each naming the place to fix.
#[derive(Debug, thiserror::Error)]
pub enum BlkConfigError {
    #[error("--disk '{spec}': {message}")]
    Spec { spec: String, message: String },
    #[error("disk '{disk}': {message}")]
    Invalid { disk: String, message: String },
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
fn default_stop_timeout_ms() -> u32 {
    30_000
}

/// One `[[disk]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// The guest the disk belongs to: the `guest` label on its series
    /// ([`crate::metrics_server`]), so `pvbackend top` groups it.
    #[serde(default)]
    pub guest: Option<String>,
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
    /// How long a queue stop (GET_VRING_BASE) waits for requests still in
    /// the disk before the device is reset (see `BlkParams::stop_timeout`).
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u32,
    /// Socket owner, group and mode ([`crate::listener::SocketAccess`]).
    #[serde(default)]
    pub socket_owner: Option<String>,
    #[serde(default)]
    pub socket_group: Option<String>,
    #[serde(default)]
    pub socket_mode: Option<String>,
}

impl DiskConfig {
    /// Name for logs and metrics ([`crate::config::device_name`]).
    pub fn display_name(&self) -> String {
        crate::config::device_name(self.name.as_deref(), &self.socket)
    }

    /// Who may connect to the socket.
    pub fn socket_access(&self) -> crate::listener::SocketAccess {
        crate::listener::SocketAccess {
            owner: self.socket_owner.clone(),
            group: self.socket_group.clone(),
            mode: self.socket_mode.clone(),
        }
    }

    /// GET_ID string: `serial`, else the name.
    pub fn serial(&self) -> String {
        self.serial.clone().unwrap_or_else(|| self.display_name())
    }
}

/// Checks every disk and the set as a whole; returns the sockets the disks
/// take (no other device may use them).
pub fn validate(disks: &[DiskConfig]) -> Result<BTreeSet<PathBuf>, BlkConfigError> {
    let mut sockets = BTreeSet::new();
    for d in disks {
        let bad = |message: String| BlkConfigError::Invalid {
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
        if d.stop_timeout_ms == 0 || d.stop_timeout_ms > 3_600_000 {
            return Err(bad(format!(
                "stop_timeout_ms {} is not in 1..=3600000",
                d.stop_timeout_ms
            )));
        }
        if d.num_queues == 0 || d.num_queues > 64 {
            return Err(bad(format!("num_queues {} is not in 1..=64", d.num_queues)));
        }
        if let Some(message) = crate::metrics_server::guest_name_problem(d.guest.as_deref()) {
            return Err(bad(message));
        }
        if d.serial().len() > 20 {
            return Err(bad(format!(
                "serial '{}' is longer than 20 bytes",
                d.serial()
            )));
        }
        d.socket_access().resolve().map_err(bad)?;
        if !sockets.insert(d.socket.clone()) {
            return Err(bad(format!(
                "socket {} is used by another disk",
                d.socket.display()
            )));
        }
    }
    Ok(sockets)
}

/// Parses a `--disk` spec: `path=IMG,socket=SOCK[,readonly][,serial=S][,name=N][,guest=G][,queues=N][,queue-size=N][,poll-us=N][,io=MODE][,io-threads=N][,stop-timeout-ms=N][,socket-owner=U][,socket-group=G][,socket-mode=0660]`.
pub fn parse_disk_spec(spec: &str) -> Result<DiskConfig, BlkConfigError> {
    let err = |message: String| BlkConfigError::Spec {
        spec: spec.to_owned(),
        message,
    };
    let (mut path, mut socket) = (None, None);
    let mut d = DiskConfig {
        name: None,
        guest: None,
        path: PathBuf::new(),
        socket: PathBuf::new(),
        read_only: false,
        serial: None,
        num_queues: default_num_queues(),
        queue_size: default_queue_size(),
        poll_us: default_poll_us(),
        io_mode: IoMode::default(),
        io_threads: default_io_threads(),
        stop_timeout_ms: default_stop_timeout_ms(),
        socket_owner: None,
        socket_group: None,
        socket_mode: None,
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
            "socket-owner" => d.socket_owner = Some(need(v)?),
            "socket-group" => d.socket_group = Some(need(v)?),
            "socket-mode" => d.socket_mode = Some(need(v)?),
            "name" => d.name = Some(need(v)?),
            "guest" => d.guest = Some(need(v)?),
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
            "stop-timeout-ms" => {
                d.stop_timeout_ms = need(v)?
                    .parse()
                    .map_err(|_| err(format!("'{k}' takes a number of milliseconds")))?
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
    fn stop_timeout_defaults_parses_and_is_bounded() {
        let d = parse_disk_spec("path=/a,socket=/s").expect("spec");
        assert_eq!(d.stop_timeout_ms, 30_000);
        let d = parse_disk_spec("path=/a,socket=/s,stop-timeout-ms=250").expect("spec");
        assert_eq!(d.stop_timeout_ms, 250);
        assert!(validate(&[d]).is_ok());
        let zero = parse_disk_spec("path=/a,socket=/s,stop-timeout-ms=0").expect("spec");
        assert!(validate(&[zero])
            .expect_err("zero")
            .to_string()
            .contains("stop_timeout_ms"));
        assert!(parse_disk_spec("path=/a,socket=/s,stop-timeout-ms=soon").is_err());
    }

    #[test]
    fn invalid_values_are_refused() {
        let one = [parse_disk_spec("path=/a,socket=/s,queue-size=100").expect("spec")];
        assert!(validate(&one)
            .expect_err("size")
            .to_string()
            .contains("power of two"));
        let two = [
            parse_disk_spec("path=/a,socket=/s").expect("spec"),
            parse_disk_spec("path=/b,socket=/s").expect("spec"),
        ];
        assert!(validate(&two)
            .expect_err("dup")
            .to_string()
            .contains("used by another disk"));
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
        assert_eq!(d.guest, None);
        let g = parse_disk_spec("path=/a,socket=/s,guest=vm1").expect("guest");
        assert_eq!(g.guest.as_deref(), Some("vm1"));
        validate(&[g]).expect("a guest name is valid");
        for bad in ["", "a\"b", "x\ny"] {
            let mut g = parse_disk_spec("path=/a,socket=/s").expect("spec");
            g.guest = Some(bad.into());
            assert!(validate(&[g]).is_err(), "guest {bad:?} accepted");
        }
    }
}
