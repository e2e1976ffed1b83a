//! `[[net_port]]` and `[switch]` tables and the `--net-port` spec.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::frame::{is_group, parse_mac, Mac};

/// Configuration errors of the switch.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    #[error("--net-port '{spec}': {message}")]
    Spec { spec: String, message: String },
    #[error("net port '{port}': {message}")]
    Invalid { port: String, message: String },
    #[error("[switch]: {0}")]
    Switch(String),
}

fn default_mtu() -> u16 {
    1500
}
fn default_aging() -> u64 {
    300
}
/// Largest `poll_us`: a window longer than a millisecond is a busy poller.
pub const MAX_POLL_US: u32 = 1000;

/// One `[[net_port]]` table: a guest NIC.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetPortConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// The guest the NIC belongs to: the `guest` label on its series
    /// ([`crate::metrics_server`]), so `pvbackend top` groups it.
    #[serde(default)]
    pub guest: Option<String>,
    pub socket: PathBuf,
    /// MAC offered to the guest in the config space (`aa:bb:cc:dd:ee:ff`).
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Ingress rate limit in Mbit/s (0 or absent: none).
    #[serde(default)]
    pub rate_mbps: Option<u32>,
    /// After forwarding a burst, keep watching the guest's TX queue for
    /// this many microseconds (notifications stay off, so a frame queued
    /// in the window costs the guest no kick and the switch no wake-up)
    /// before going back to sleep; 0 never. Bounded by a CPU budget
    /// ([`super::switch::PollBudget`]); an idle port never polls.
    #[serde(default)]
    pub poll_us: u32,
    /// Socket owner, group and mode ([`crate::listener::SocketAccess`]).
    #[serde(default)]
    pub socket_owner: Option<String>,
    #[serde(default)]
    pub socket_group: Option<String>,
    #[serde(default)]
    pub socket_mode: Option<String>,
}

impl NetPortConfig {
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

    /// The configured MAC, parsed (validate() has checked it).
    pub fn mac(&self) -> Option<Mac> {
        self.mac.as_deref().and_then(parse_mac)
    }
}

/// The `[switch]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// A TAP device joining the switch to the host's network stack.
    #[serde(default)]
    pub uplink_tap: Option<String>,
    #[serde(default = "default_aging")]
    pub mac_aging_secs: u64,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            name: None,
            uplink_tap: None,
            mac_aging_secs: default_aging(),
        }
    }
}

/// Checks the ports and the switch table. `other_sockets` are sockets
/// already taken (by disks).
pub fn validate(
    ports: &[NetPortConfig],
    switch: &SwitchConfig,
    other_sockets: &BTreeSet<PathBuf>,
) -> Result<(), NetConfigError> {
    if switch.mac_aging_secs == 0 || switch.mac_aging_secs > 86_400 {
        return Err(NetConfigError::Switch(format!(
            "mac_aging_secs {} is not in 1..=86400",
            switch.mac_aging_secs
        )));
    }
    let mut sockets = other_sockets.clone();
    let mut names = BTreeSet::new();
    for p in ports {
        let bad = |message: String| NetConfigError::Invalid {
            port: p.display_name(),
            message,
        };
        p.socket_access().resolve().map_err(bad)?;
        if p.poll_us > MAX_POLL_US {
            return Err(bad(format!("poll_us {} is over {MAX_POLL_US}", p.poll_us)));
        }
        if let Some(message) = crate::metrics_server::guest_name_problem(p.guest.as_deref()) {
            return Err(bad(message));
        }
        if !(68..=9000).contains(&p.mtu) {
            return Err(bad(format!("mtu {} is not in 68..=9000", p.mtu)));
        }
        if let Some(m) = &p.mac {
            match parse_mac(m) {
                None => return Err(bad(format!("mac '{m}' is not aa:bb:cc:dd:ee:ff"))),
                Some(mac) if is_group(&mac) => {
                    return Err(bad(format!("mac '{m}' is a multicast address")))
                }
                Some(_) => {}
            }
        }
        if !sockets.insert(p.socket.clone()) {
            return Err(bad(format!(
                "socket {} is used by another disk or port",
                p.socket.display()
            )));
        }
        if !names.insert(p.display_name()) {
            return Err(bad("the name is used by another port".into()));
        }
    }
    Ok(())
}

/// Parses a `--net-port` spec:
/// `socket=SOCK[,name=N][,guest=G][,mac=M][,mtu=N][,rate-mbps=N][,poll-us=N][,socket-owner=U][,socket-group=G][,socket-mode=0660]`.
pub fn parse_net_port_spec(spec: &str) -> Result<NetPortConfig, NetConfigError> {
    let err = |message: String| NetConfigError::Spec {
        spec: spec.to_owned(),
        message,
    };
    let mut socket = None;
    let mut p = NetPortConfig {
        name: None,
        guest: None,
        socket: PathBuf::new(),
        mac: None,
        mtu: default_mtu(),
        rate_mbps: None,
        poll_us: 0,
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
            "socket" => socket = Some(PathBuf::from(need(v)?)),
            "name" => p.name = Some(need(v)?),
            "guest" => p.guest = Some(need(v)?),
            "mac" => p.mac = Some(need(v)?),
            "socket-owner" => p.socket_owner = Some(need(v)?),
            "socket-group" => p.socket_group = Some(need(v)?),
            "socket-mode" => p.socket_mode = Some(need(v)?),
            "mtu" => {
                p.mtu = need(v)?
                    .parse()
                    .map_err(|_| err(format!("'{k}' takes a number")))?
            }
            "rate-mbps" | "rate_mbps" => {
                p.rate_mbps = Some(
                    need(v)?
                        .parse()
                        .map_err(|_| err(format!("'{k}' takes a number of Mbit/s")))?,
                )
            }
            "poll-us" | "poll_us" => {
                p.poll_us = need(v)?
                    .parse()
                    .map_err(|_| err(format!("'{k}' takes a number of microseconds")))?
            }
            other => return Err(err(format!("unknown key '{other}'"))),
        }
    }
    p.socket = socket.ok_or_else(|| err("missing socket=".into()))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_validate() {
        let p = parse_net_port_spec(
            "socket=/run/vm1.sock,mtu=9000,rate-mbps=100,mac=52:54:00:00:00:01",
        )
        .expect("spec");
        assert_eq!(p.display_name(), "vm1");
        assert_eq!((p.mtu, p.rate_mbps), (9000, Some(100)));
        assert_eq!(p.mac(), Some([0x52, 0x54, 0, 0, 0, 1]));
        assert!(parse_net_port_spec("name=x").is_err());
        assert!(parse_net_port_spec("socket=/s,colour=red").is_err());
        assert!(parse_net_port_spec("socket=/s,mtu=big").is_err());
        assert_eq!(p.poll_us, 0);
        let polled = parse_net_port_spec("socket=/s,poll-us=50").expect("poll-us");
        assert_eq!(polled.poll_us, 50);
        let none = BTreeSet::new();
        let sw = SwitchConfig::default();
        assert!(validate(std::slice::from_ref(&p), &sw, &none).is_ok());
        let dup = [p.clone(), p.clone()];
        assert!(validate(&dup, &sw, &none).is_err());
        let mut bad = p.clone();
        bad.poll_us = MAX_POLL_US + 1;
        assert!(validate(&[bad], &sw, &none).is_err());
        let mut bad = p.clone();
        bad.mtu = 20;
        assert!(validate(&[bad], &sw, &none).is_err());
        let mut bad = p.clone();
        bad.mac = Some("01:00:5e:00:00:01".into());
        assert!(validate(&[bad], &sw, &none).is_err());
        let g = parse_net_port_spec("socket=/s,guest=vm1").expect("guest");
        assert_eq!(g.guest.as_deref(), Some("vm1"));
        assert!(validate(&[g], &sw, &none).is_ok());
        let mut bad = p.clone();
        bad.guest = Some(String::new());
        assert!(validate(&[bad], &sw, &none).is_err());
        let taken: BTreeSet<PathBuf> = [p.socket.clone()].into();
        assert!(validate(&[p], &sw, &taken).is_err());
    }
}
