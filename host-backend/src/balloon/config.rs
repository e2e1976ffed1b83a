//! The `[balloon]` config table and `[[balloon.guest]]` entries.
//!
//! ```toml
//! [balloon]
//! enabled = true
//! interval_secs = 5          # one policy round every N seconds
//! stats_interval_secs = 2    # QEMU polls each guest's statistics this often
//! dry_run = false            # log decisions, do not apply them
//! host_low_mib = 1024        # host MemAvailable below this: shortage, reclaim from idle guests
//! host_high_mib = 4096       # above this: plenty, give memory back toward each guest's max
//! step_mib = 128             # largest change per guest per round
//! noise_floor_mib = 16       # smaller changes are not made
//! pressure_pct = 20          # guest available below this % of its size: under pressure
//! idle_pct = 40              # guest available above this % (and no major fault): idle
//! major_faults_per_round = 100  # more major faults than this in a round: under pressure
//! default_min_mib = 256      # min for guests found in watch_dir
//! qmp_timeout_secs = 10      # per QMP command
//! watch_dir = "/run/pvdrivers/qmp"   # every *.qmp socket here is a guest (name = file stem)
//! # host_available_file = "/run/pvdrivers/host-available-mib"  # tests: a number (MiB) used instead of /proc/meminfo
//!
//! [[balloon.guest]]
//! name = "vm1"
//! qmp = "/run/pvdrivers/vm1.qmp"   # QEMU: -qmp unix:/run/pvdrivers/vm1.qmp,server=on,wait=off
//! min_mib = 512
//! max_mib = 2048                   # default: the guest's RAM size
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use super::policy::PolicyConfig;

/// One `[[balloon.guest]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BalloonGuestConfig {
    pub name: String,
    pub qmp: PathBuf,
    #[serde(default)]
    pub min_mib: Option<u64>,
    #[serde(default)]
    pub max_mib: Option<u64>,
}

/// The `[balloon]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BalloonConfig {
    pub enabled: bool,
    pub interval_secs: u64,
    pub stats_interval_secs: u64,
    pub dry_run: bool,
    pub host_low_mib: u64,
    pub host_high_mib: u64,
    pub step_mib: u64,
    pub noise_floor_mib: u64,
    pub pressure_pct: u64,
    pub idle_pct: u64,
    pub major_faults_per_round: u64,
    pub default_min_mib: u64,
    pub qmp_timeout_secs: u64,
    pub watch_dir: Option<PathBuf>,
    pub host_available_file: Option<PathBuf>,
    #[serde(rename = "guest")]
    pub guests: Vec<BalloonGuestConfig>,
}

impl Default for BalloonConfig {
    fn default() -> Self {
        let p = PolicyConfig::default();
        Self {
            enabled: false,
            interval_secs: 5,
            stats_interval_secs: 2,
            dry_run: false,
            host_low_mib: p.host_low_mib,
            host_high_mib: p.host_high_mib,
            step_mib: p.step_mib,
            noise_floor_mib: p.noise_floor_mib,
            pressure_pct: p.pressure_pct,
            idle_pct: p.idle_pct,
            major_faults_per_round: p.major_faults_per_round,
            default_min_mib: 256,
            qmp_timeout_secs: 10,
            watch_dir: None,
            host_available_file: None,
            guests: Vec::new(),
        }
    }
}

impl BalloonConfig {
    /// The policy's knobs.
    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            host_low_mib: self.host_low_mib,
            host_high_mib: self.host_high_mib,
            step_mib: self.step_mib,
            noise_floor_mib: self.noise_floor_mib,
            pressure_pct: self.pressure_pct,
            idle_pct: self.idle_pct,
            major_faults_per_round: self.major_faults_per_round,
        }
    }

    /// True when the manager has something to manage.
    pub fn serves(&self) -> bool {
        self.enabled && (!self.guests.is_empty() || self.watch_dir.is_some())
    }

    /// Checks the table; the message names the key to fix.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if !self.serves() {
            return Err(
                "[balloon] is enabled but has no [[balloon.guest]] and no watch_dir".into(),
            );
        }
        if self.interval_secs == 0 || self.interval_secs > 3600 {
            return Err(format!(
                "[balloon] interval_secs {} is not in 1..=3600",
                self.interval_secs
            ));
        }
        if self.stats_interval_secs == 0 || self.stats_interval_secs > 3600 {
            return Err(format!(
                "[balloon] stats_interval_secs {} is not in 1..=3600",
                self.stats_interval_secs
            ));
        }
        if self.qmp_timeout_secs == 0 {
            return Err("[balloon] qmp_timeout_secs must be at least 1".into());
        }
        if self.host_low_mib > self.host_high_mib {
            return Err(format!(
                "[balloon] host_low_mib {} is above host_high_mib {}",
                self.host_low_mib, self.host_high_mib
            ));
        }
        if self.pressure_pct > 100 || self.idle_pct > 100 || self.pressure_pct > self.idle_pct {
            return Err(format!(
                "[balloon] need 0 <= pressure_pct ({}) <= idle_pct ({}) <= 100",
                self.pressure_pct, self.idle_pct
            ));
        }
        if self.step_mib == 0 {
            return Err("[balloon] step_mib must be at least 1".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for g in &self.guests {
            if !names.insert(g.name.as_str()) {
                return Err(format!("[[balloon.guest]] name '{}' is used twice", g.name));
            }
            if let (Some(min), Some(max)) = (g.min_mib, g.max_mib) {
                if min > max {
                    return Err(format!(
                        "[[balloon.guest]] '{}': min_mib {min} is above max_mib {max}",
                        g.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Parses a `--balloon-guest` spec: `name=N,qmp=SOCK[,min=MIB][,max=MIB]`.
pub fn parse_guest_spec(spec: &str) -> Result<BalloonGuestConfig, String> {
    let err = |m: String| format!("--balloon-guest '{spec}': {m}");
    let (mut name, mut qmp, mut min_mib, mut max_mib) = (None, None, None, None);
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(err(format!("'{part}' needs a value")));
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| err(format!("'{k}' takes a number of MiB")))
        };
        match k {
            "name" => name = Some(v.to_owned()),
            "qmp" => qmp = Some(PathBuf::from(v)),
            "min" => min_mib = Some(num(v)?),
            "max" => max_mib = Some(num(v)?),
            other => return Err(err(format!("unknown key '{other}'"))),
        }
    }
    let qmp = qmp.ok_or_else(|| err("missing qmp=".into()))?;
    let name = name.unwrap_or_else(|| {
        qmp.file_stem()
            .map_or_else(|| "guest".into(), |s| s.to_string_lossy().into_owned())
    });
    Ok(BalloonGuestConfig {
        name,
        qmp,
        min_mib,
        max_mib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrap {
        balloon: BalloonConfig,
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
        w.balloon.validate().expect("valid");
        assert_eq!(w.balloon.guests.len(), 1);
        assert_eq!(w.balloon.guests[0].max_mib, Some(2048));
        assert_eq!(w.balloon.policy(), PolicyConfig::default());
    }

    #[test]
    fn bad_tables_and_specs_are_refused() {
        let mut c = BalloonConfig {
            enabled: true,
            ..BalloonConfig::default()
        };
        assert!(c.validate().is_err(), "nothing to manage");
        c.watch_dir = Some("/tmp".into());
        c.validate().expect("watch dir only");
        c.host_low_mib = 9999;
        assert!(c.validate().is_err());
        c.host_low_mib = 10;
        c.pressure_pct = 50;
        assert!(c.validate().is_err());
        c.pressure_pct = 10;
        c.guests = vec![
            parse_guest_spec("name=a,qmp=/a.qmp,min=10,max=20").expect("spec"),
            parse_guest_spec("qmp=/run/a.qmp").expect("spec"),
        ];
        assert!(c.validate().is_err(), "duplicate name");
        c.guests.pop();
        c.validate().expect("valid");
        assert!(parse_guest_spec("name=a").is_err());
        assert!(parse_guest_spec("qmp=/a,min=x").is_err());
        assert!(parse_guest_spec("qmp=/a,colour=red").is_err());
        assert!(parse_guest_spec("qmp=/a,min=30,max=20")
            .map(|g| BalloonConfig {
                enabled: true,
                guests: vec![g],
                ..BalloonConfig::default()
            })
            .expect("spec")
            .validate()
            .is_err());
    }
}
