//! Driver packages for pvdrivers guests and the tool that installs
//! devices into them.
//!
//! `pv-install` (this crate's binary) decides which virtio PCI functions
//! of a Linux guest the pvdrivers runtimes (`pvblkd`, `pvnetd`,
//! `pvballoond`) take from the kernel. The decision lives in
//! `/etc/pvdrivers/guest.toml` ([`config`]); each claimed function is
//! served by one systemd unit instanced by its PCI address
//! (`pvblkd@0000:00:04.0.service`); at boot `pvdrivers-guest.service` runs
//! `pv-install sync`, which starts the units the file names.
//!
//! - `status`: every virtio and Xen PV device, which driver owns it, what
//!   the config says about it and its unit's state.
//! - `enable KIND DEVICE` / `disable KIND DEVICE`: edit the config and
//!   start (then wait until the runtime holds the device) or stop the
//!   unit and hand the device back to the kernel's driver. Each change is
//!   a [`plan`] applied fully or rolled back; `--dry-run` prints it.
//! - It refuses: non-root callers, a device the guest does not have, the
//!   disk the root filesystem is on (and any disk with a mounted
//!   filesystem), a device another program holds, Xen PV devices (the
//!   kernel's Xen frontends serve those), and runtimes whose version is
//!   not its own (a half-upgraded package).
//!
//! The packages: `cargo deb -p installer` makes `pvdrivers-guest` from
//! this crate's `[package.metadata.deb]` (runtimes, units from the
//! runtime crates' `systemd/` folders, the config, modules-load.d and
//! sysctl files here), `cargo generate-rpm -p installer` the .rpm. The
//! Windows driver package layout is in `windows/`.

pub mod config;
pub mod error;
pub mod plan;
pub mod sysfs;
pub mod units;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pv_linux::pci::{PciAddress, VIRTIO_BLK_IDS, VIRTIO_NET_IDS};

use config::{GuestConfig, Selector};
pub use error::{Error, Result};
use plan::{Env, Step};
use sysfs::{Sysfs, VirtioPci};
use units::Units;

/// This tool's version; the runtimes must report the same.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A device kind pvdrivers has a Linux runtime for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Kind {
    /// virtio-blk, served by pvblkd.
    Blk,
    /// virtio-net, served by pvnetd.
    Net,
    /// virtio-balloon, served by pvballoond.
    Balloon,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Blk, Kind::Net, Kind::Balloon];

    /// The config table's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Blk => "blk",
            Self::Net => "net",
            Self::Balloon => "balloon",
        }
    }

    /// By the config table's name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The runtime binary.
    pub fn runtime(self) -> &'static str {
        match self {
            Self::Blk => "pvblkd",
            Self::Net => "pvnetd",
            Self::Balloon => "pvballoond",
        }
    }

    /// The unit serving the function at `address`.
    pub fn unit(self, address: PciAddress) -> String {
        format!("{}@{address}.service", self.runtime())
    }

    /// By virtio PCI device id.
    pub fn from_device_id(id: u16) -> Option<Self> {
        if VIRTIO_BLK_IDS.contains(&id) {
            Some(Self::Blk)
        } else if VIRTIO_NET_IDS.contains(&id) {
            Some(Self::Net)
        } else if pv_linux::pci::VIRTIO_BALLOON_IDS.contains(&id) {
            Some(Self::Balloon)
        } else {
            None
        }
    }
}

/// How long `enable` waits for a runtime to take its device.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);

/// The tool over one system.
#[derive(Debug)]
pub struct Installer<U: Units> {
    /// The devices.
    pub sysfs: Sysfs,
    /// `/etc/pvdrivers/guest.toml`.
    pub config_path: PathBuf,
    /// Where the runtimes are (`/usr/sbin`).
    pub sbin: PathBuf,
    /// The service manager.
    pub units: U,
    /// How long to wait for a runtime to take a device.
    pub claim_timeout: Duration,
}

/// What `sync` would do.
#[derive(Debug, Default)]
pub struct SyncPlan {
    /// Per device ("blk 0000:00:04.0"): the steps that serve it (none
    /// when it is served already).
    pub per_device: Vec<(String, Vec<Step>)>,
    /// One line per selector that picks nothing or a device refused.
    pub problems: Vec<String>,
}

/// The outcome of `sync`: the devices started and the ones that failed.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// One line per device started or already served.
    pub done: Vec<String>,
    /// One line per device that could not be served.
    pub failed: Vec<String>,
}

impl<U: Units> Installer<U> {
    fn config(&self) -> Result<GuestConfig> {
        GuestConfig::load(&self.config_path)
    }

    /// The runtime of `kind` answers `--version` with this tool's version.
    pub fn check_runtime(&self, kind: Kind) -> Result<()> {
        let binary = self.sbin.join(kind.runtime());
        let out = Command::new(&binary)
            .arg("--version")
            .output()
            .map_err(|e| Error::RuntimeMissing {
                binary: binary.clone(),
                detail: e.to_string(),
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let found = text.split_whitespace().last().unwrap_or("").to_owned();
        if !out.status.success() || found.is_empty() {
            return Err(Error::RuntimeMissing {
                binary,
                detail: format!("exit {}, output {:?}", out.status, text.trim()),
            });
        }
        if found != VERSION {
            return Err(Error::VersionMismatch {
                binary,
                found,
                ours: VERSION,
            });
        }
        Ok(())
    }

    /// Why `f` must not be taken, if it must not: the root disk or a
    /// mounted one.
    fn refusal(&self, f: &VirtioPci) -> Result<Option<Error>> {
        for disk in &f.nodes {
            if f.kind != Some(Kind::Blk) {
                break;
            }
            let mounts = self.sysfs.mounts_on(disk)?;
            if let Some(m) = mounts.iter().find(|m| m.mountpoint == "/") {
                return Ok(Some(Error::RootDisk {
                    device: f.address.to_string(),
                    dev: format!("/dev/{}", m.dev),
                }));
            }
            if let Some(m) = mounts.first() {
                return Ok(Some(Error::Mounted {
                    device: f.address.to_string(),
                    dev: format!("/dev/{}", m.dev),
                    mountpoint: m.mountpoint.clone(),
                }));
            }
        }
        Ok(None)
    }

    /// The functions `sel` picks among `devices` of `kind`. For `all`, the
    /// ones that must not be taken are left out.
    fn resolve(&self, kind: Kind, sel: &Selector, devices: &[VirtioPci]) -> Result<Vec<VirtioPci>> {
        let of_kind = devices.iter().filter(|d| d.kind == Some(kind));
        Ok(match sel {
            Selector::Pci(a) => devices
                .iter()
                .filter(|d| d.address == *a)
                .cloned()
                .collect(),
            Selector::Serial(s) => of_kind
                .filter(|d| d.serial.as_ref() == Some(s))
                .cloned()
                .collect(),
            Selector::Mac(m) => of_kind
                .filter(|d| d.mac.as_ref() == Some(m))
                .cloned()
                .collect(),
            Selector::All => {
                let mut v = Vec::new();
                for d in of_kind {
                    if self.refusal(d)?.is_none() {
                        v.push(d.clone());
                    }
                }
                v
            }
        })
    }

    fn config_step(&self, old: &GuestConfig, new: &GuestConfig) -> Result<Step> {
        let old_text = match std::fs::read_to_string(&self.config_path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("read", &self.config_path, e)),
        };
        debug_assert_eq!(old_text.as_deref().unwrap_or(""), old.to_text());
        Ok(Step::WriteConfig {
            path: self.config_path.clone(),
            old: old_text,
            new: new.to_text(),
        })
    }

    /// The steps of `enable KIND DEVICE`.
    pub fn plan_enable(&self, kind: Kind, device: &str) -> Result<Vec<Step>> {
        if self.sysfs.is_xen_device(device) {
            return Err(Error::XenDevice {
                device: device.into(),
            });
        }
        let unknown = || Error::UnknownDevice {
            kind: kind.name(),
            device: device.into(),
        };
        let sel = Selector::parse(device).ok_or_else(unknown)?;
        let cfg = self.config()?;
        if cfg.selectors(kind).contains(&sel) {
            return Err(Error::AlreadyEnabled {
                device: device.into(),
            });
        }
        let devices = self.sysfs.virtio_pci()?;
        let picked = self.resolve(kind, &sel, &devices)?;
        if sel != Selector::All && picked.is_empty() {
            return Err(unknown());
        }
        for f in &picked {
            match f.kind {
                Some(k) if k == kind => {}
                other => {
                    return Err(Error::WrongKind {
                        kind: kind.name(),
                        actual: other.map_or("unmanaged virtio", Kind::name),
                        device: device.into(),
                    })
                }
            }
            if let Some(e) = self.refusal(f)? {
                return Err(e);
            }
            if let Some(o) = f.driver_override.as_ref().filter(|_| !f.claimed_by_us()) {
                return Err(Error::ClaimedElsewhere {
                    device: f.address.to_string(),
                    by: o.clone(),
                });
            }
        }
        self.check_runtime(kind)?;
        let mut new = cfg.clone();
        new.add(kind, &sel);
        let mut steps = vec![self.config_step(&cfg, &new)?];
        for f in picked.iter().filter(|f| !f.claimed_by_us()) {
            let unit = kind.unit(f.address);
            steps.push(Step::Start(unit.clone()));
            steps.push(Step::AwaitClaim {
                address: f.address,
                unit,
                timeout: self.claim_timeout,
            });
        }
        Ok(steps)
    }

    /// The steps of `disable KIND DEVICE`. A PCI address stops that
    /// device; `serial:`/`mac:`/`all` stop every device of the kind the
    /// remaining config does not name by address (a claimed disk shows no
    /// serial to match against).
    pub fn plan_disable(&self, kind: Kind, device: &str) -> Result<Vec<Step>> {
        if self.sysfs.is_xen_device(device) {
            return Err(Error::XenDevice {
                device: device.into(),
            });
        }
        let sel = Selector::parse(device).ok_or_else(|| Error::UnknownDevice {
            kind: kind.name(),
            device: device.into(),
        })?;
        let cfg = self.config()?;
        let mut new = cfg.clone();
        if !new.remove(kind, &sel) {
            return Err(Error::NotEnabled {
                device: device.into(),
            });
        }
        let devices = self.sysfs.virtio_pci()?;
        let still: Vec<PciAddress> = new
            .selectors(kind)
            .into_iter()
            .filter_map(|s| match s {
                Selector::Pci(a) => Some(a),
                _ => None,
            })
            .collect();
        let targets: Vec<PciAddress> = match sel {
            Selector::Pci(a) => vec![a],
            _ => devices
                .iter()
                .filter(|d| d.kind == Some(kind) && !still.contains(&d.address))
                .filter(|d| {
                    d.claimed_by_us() || self.units.state(&kind.unit(d.address)) != "inactive"
                })
                .map(|d| d.address)
                .collect(),
        };
        let mut steps = vec![self.config_step(&cfg, &new)?];
        for a in &targets {
            steps.push(Step::Stop(kind.unit(*a)));
        }
        for a in targets {
            if devices.iter().any(|d| d.address == a) {
                steps.push(Step::HandBack(a));
            }
        }
        Ok(steps)
    }

    /// The steps `sync` takes per device (each applied on its own, so one
    /// bad device does not keep the others from being served), and a line
    /// for each selector that picks nothing.
    pub fn plan_sync(&self) -> Result<SyncPlan> {
        let cfg = self.config()?;
        let devices = self.sysfs.virtio_pci()?;
        let mut per_device: Vec<(String, Vec<Step>)> = Vec::new();
        let mut problems = Vec::new();
        for kind in Kind::ALL {
            for sel in cfg.selectors(kind) {
                let picked = self.resolve(kind, &sel, &devices)?;
                if picked.is_empty() && sel != Selector::All {
                    problems.push(format!(
                        "{}: [{}] names {sel}, which this guest does not have (fix {} or pv-install disable {} {sel})",
                        self.config_path.display(),
                        kind.name(),
                        self.config_path.display(),
                        kind.name()
                    ));
                }
                for f in picked {
                    let what = format!("{} {}", kind.name(), f.address);
                    if per_device.iter().any(|(w, _)| *w == what) {
                        continue;
                    }
                    if f.kind != Some(kind) {
                        problems.push(format!("{what}: not a {} device; skipped", kind.name()));
                        continue;
                    }
                    if let Some(e) = self.refusal(&f)? {
                        problems.push(e.to_string());
                        continue;
                    }
                    let unit = kind.unit(f.address);
                    let steps = if f.claimed_by_us() {
                        Vec::new()
                    } else {
                        vec![
                            Step::Start(unit.clone()),
                            Step::AwaitClaim {
                                address: f.address,
                                unit,
                                timeout: self.claim_timeout,
                            },
                        ]
                    };
                    per_device.push((what, steps));
                }
            }
        }
        Ok(SyncPlan {
            per_device,
            problems,
        })
    }

    /// Applies `sync`: starts the unit of every device the config names.
    pub fn sync(&mut self) -> Result<SyncReport> {
        let SyncPlan {
            per_device,
            problems,
        } = self.plan_sync()?;
        let mut report = SyncReport {
            failed: problems,
            ..SyncReport::default()
        };
        for (what, steps) in per_device {
            match self.apply(&steps) {
                Ok(()) if steps.is_empty() => report.done.push(format!("{what}: already served")),
                Ok(()) => report.done.push(format!("{what}: served")),
                Err(e) => report.failed.push(format!("{what}: {e}")),
            }
        }
        Ok(report)
    }

    /// The steps of `release-all` (the package's removal): stop every
    /// runtime unit and hand every function a runtime holds back to the
    /// kernel. The config is left alone (a purge removes it).
    pub fn plan_release_all(&self) -> Result<Vec<Step>> {
        let devices = self.sysfs.virtio_pci()?;
        let mut steps = Vec::new();
        for d in &devices {
            let Some(kind) = d.kind else { continue };
            let unit = kind.unit(d.address);
            let state = self.units.state(&unit);
            if state != "inactive" && state != "unknown" {
                steps.push(Step::Stop(unit));
            }
        }
        for d in devices.iter().filter(|d| d.kind.is_some()) {
            if d.claimed_by_us()
                || steps.contains(&Step::Stop(
                    d.kind.map_or_else(String::new, |k| k.unit(d.address)),
                ))
            {
                steps.push(Step::HandBack(d.address));
            }
        }
        Ok(steps)
    }

    /// Applies `steps`, all or nothing.
    pub fn apply(&mut self, steps: &[Step]) -> Result<()> {
        let mut env = Env {
            sysfs: &self.sysfs,
            units: &mut self.units,
        };
        plan::apply(steps, &mut env)
    }

    /// The `status` report.
    pub fn status(&self) -> Result<String> {
        let cfg = self.config();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pv-install {VERSION}; config {}",
            self.config_path.display()
        );
        if let Err(e) = &cfg {
            let _ = writeln!(out, "config: {e}");
        }
        let mut runtimes = Vec::new();
        for k in Kind::ALL {
            runtimes.push(match self.check_runtime(k) {
                Ok(()) => format!("{} {VERSION}", k.runtime()),
                Err(e) => format!("{}: {e}", k.runtime()),
            });
        }
        let _ = writeln!(out, "runtimes: {}", runtimes.join("; "));
        let devices = self.sysfs.virtio_pci()?;
        let _ = writeln!(out, "virtio PCI devices:");
        if devices.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for d in &devices {
            let kind = d.kind.map_or_else(
                || format!("virtio 0x{:04x}", d.device_id),
                |k| k.name().to_owned(),
            );
            let mut line = format!("  {}  {kind:<8}", d.address);
            if !d.nodes.is_empty() {
                let _ = write!(line, " {}", d.nodes.join(","));
            }
            if let Some(s) = &d.serial {
                let _ = write!(line, " serial={s}");
            }
            if let Some(m) = &d.mac {
                let _ = write!(line, " mac={m}");
            }
            let _ = write!(line, "  owner: {}", d.owner());
            if let Some(kind) = d.kind {
                let named = match &cfg {
                    Ok(c) => c
                        .selectors(kind)
                        .into_iter()
                        .filter(|s| {
                            self.resolve(kind, s, std::slice::from_ref(d))
                                .is_ok_and(|v| !v.is_empty())
                                || *s == Selector::Pci(d.address)
                        })
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    Err(_) => "?".into(),
                };
                let named = if named.is_empty() {
                    "not named".to_owned()
                } else {
                    format!("named ({named})")
                };
                let unit = kind.unit(d.address);
                let _ = write!(
                    line,
                    "  config: {named}  unit {unit}: {}",
                    self.units.state(&unit)
                );
                if let Ok(Some(why)) = self.refusal(d) {
                    let _ = write!(
                        line,
                        "  [{}]",
                        match why {
                            Error::RootDisk { .. } => "root filesystem: never taken".to_owned(),
                            other => other.to_string(),
                        }
                    );
                }
            }
            let _ = writeln!(out, "{line}");
        }
        let xen = self.sysfs.xen_pv();
        let _ = writeln!(out, "Xen PV devices:");
        if xen.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for x in xen {
            let _ = writeln!(
                out,
                "  {}  {}  owner: {}  (served by the kernel's Xen frontend)",
                x.name,
                x.devtype,
                x.driver
                    .as_deref()
                    .map_or_else(|| "no driver".to_owned(), |d| format!("kernel ({d})"))
            );
        }
        Ok(out)
    }
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The default config file.
pub fn default_config() -> &'static Path {
    Path::new("/etc/pvdrivers/guest.toml")
}

#[cfg(test)]
mod tests;
