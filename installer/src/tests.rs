//! `pv-install` against a fake sysfs tree, a fake service manager and
//! fake runtime binaries.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::plan::Step;
use crate::sysfs::fake::Tree;
use crate::sysfs::Sysfs;
use crate::units::Units;
use crate::{Error, Installer, Kind, Result, VERSION};

/// Records calls; a started unit "takes" its device (writes the
/// override) unless `runtime_fails`, then it goes to `failed`.
#[derive(Debug)]
struct FakeUnits {
    root: PathBuf,
    calls: Vec<String>,
    states: HashMap<String, String>,
    runtime_fails: bool,
}

fn address_of(unit: &str) -> &str {
    unit.split_once('@')
        .and_then(|(_, r)| r.strip_suffix(".service"))
        .unwrap_or("")
}

impl Units for FakeUnits {
    fn start(&mut self, unit: &str) -> Result<()> {
        self.calls.push(format!("start {unit}"));
        if self.runtime_fails {
            self.states.insert(unit.into(), "failed".into());
        } else {
            std::fs::write(
                self.root
                    .join("sys/bus/pci/devices")
                    .join(address_of(unit))
                    .join("driver_override"),
                "pv-linux",
            )
            .expect("claim");
            self.states.insert(unit.into(), "active".into());
        }
        Ok(())
    }

    fn stop(&mut self, unit: &str) -> Result<()> {
        self.calls.push(format!("stop {unit}"));
        self.states.insert(unit.into(), "inactive".into());
        Ok(())
    }

    fn state(&self, unit: &str) -> String {
        self.states
            .get(unit)
            .cloned()
            .unwrap_or_else(|| "inactive".into())
    }
}

const ROOT_DISK: &str = "0000:00:02.0";
const DATA_DISK: &str = "0000:00:04.0";
const NIC: &str = "0000:00:05.0";

struct Rig {
    tree: Tree,
    inst: Installer<FakeUnits>,
}

fn write_runtime(dir: &Path, name: &str, version: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\necho {name} {version}\n")).expect("runtime");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A guest with a root disk (vda, mounted on /), a data disk (vdc,
/// serial data1) and a NIC, the shipped config, and runtimes of our
/// version.
fn rig() -> Rig {
    let tree = Tree::new();
    tree.virtio(ROOT_DISK, 0x1001, Some("virtio_blk"));
    tree.disk(ROOT_DISK, "vda", "254:0", "root0");
    tree.mount("254:0", "/", "/dev/vda");
    tree.virtio(DATA_DISK, 0x1042, Some("virtio_blk"));
    tree.disk(DATA_DISK, "vdc", "254:32", "data1");
    tree.virtio(NIC, 0x1041, Some("virtio_net"));
    tree.nic(NIC, "ens5", "52:54:00:00:00:05");
    let etc = tree.root().join("etc/pvdrivers");
    std::fs::create_dir_all(&etc).expect("etc");
    std::fs::write(etc.join("guest.toml"), include_str!("../guest.toml")).expect("config");
    let sbin = tree.root().join("usr/sbin");
    std::fs::create_dir_all(&sbin).expect("sbin");
    for k in Kind::ALL {
        write_runtime(&sbin, k.runtime(), VERSION);
    }
    let inst = Installer {
        sysfs: Sysfs::new(tree.root()),
        config_path: etc.join("guest.toml"),
        sbin,
        units: FakeUnits {
            root: tree.root(),
            calls: Vec::new(),
            states: HashMap::new(),
            runtime_fails: false,
        },
        claim_timeout: Duration::from_secs(30),
    };
    Rig { tree, inst }
}

impl Rig {
    fn config(&self) -> String {
        self.tree.read("etc/pvdrivers/guest.toml")
    }

    fn override_of(&self, addr: &str) -> String {
        self.tree
            .read(&format!("sys/bus/pci/devices/{addr}/driver_override"))
            .trim()
            .to_owned()
    }
}

#[test]
fn enable_names_the_device_starts_its_unit_and_waits_for_the_claim() {
    let mut r = rig();
    let steps = r.inst.plan_enable(Kind::Blk, DATA_DISK).expect("plan");
    assert!(matches!(&steps[0], Step::WriteConfig { new, .. } if new.contains("\"0000:00:04.0\"")));
    assert_eq!(steps[1], Step::Start("pvblkd@0000:00:04.0.service".into()));
    assert!(matches!(steps[2], Step::AwaitClaim { .. }));
    r.inst.apply(&steps).expect("apply");
    assert!(
        r.config().contains("devices = [\"0000:00:04.0\"]"),
        "{}",
        r.config()
    );
    // The shipped comments stay.
    assert!(r.config().contains("# Each `devices` list holds selectors"));
    assert_eq!(r.override_of(DATA_DISK), "pv-linux");
    assert_eq!(
        r.inst.units.calls,
        vec!["start pvblkd@0000:00:04.0.service"]
    );
    // A second enable is refused, nothing done.
    let e = r.inst.plan_enable(Kind::Blk, DATA_DISK).expect_err("twice");
    assert!(matches!(e, Error::AlreadyEnabled { .. }), "{e}");
}

#[test]
fn dry_run_plans_change_nothing() {
    let r = rig();
    let before = r.config();
    let steps = r.inst.plan_enable(Kind::Blk, "serial:data1").expect("plan");
    assert_eq!(steps.len(), 3);
    let shown: Vec<String> = steps.iter().map(ToString::to_string).collect();
    assert!(
        shown[0].contains("+ devices = [\"serial:data1\"]"),
        "{shown:?}"
    );
    assert!(shown[0].contains("- devices = []"), "{shown:?}");
    assert_eq!(shown[1], "systemctl start pvblkd@0000:00:04.0.service");
    assert_eq!(r.config(), before);
    assert!(r.inst.units.calls.is_empty());
    assert_eq!(r.override_of(DATA_DISK), "(null)");
}

#[test]
fn the_root_disk_is_refused_by_address_serial_and_all() {
    let mut r = rig();
    let before = r.config();
    let e = r.inst.plan_enable(Kind::Blk, ROOT_DISK).expect_err("root");
    assert!(matches!(e, Error::RootDisk { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "refusing 0000:00:02.0: the root filesystem is on it (/dev/vda); pvdrivers serves data disks only"
    );
    let e = r
        .inst
        .plan_enable(Kind::Blk, "serial:root0")
        .expect_err("root by serial");
    assert!(matches!(e, Error::RootDisk { .. }), "{e}");
    // `all` takes the data disk and leaves the root disk alone.
    let steps = r.inst.plan_enable(Kind::Blk, "all").expect("all");
    let starts: Vec<&Step> = steps
        .iter()
        .filter(|s| matches!(s, Step::Start(_)))
        .collect();
    assert_eq!(
        starts,
        vec![&Step::Start("pvblkd@0000:00:04.0.service".into())]
    );
    assert_eq!(r.config(), before);
    // A mounted data disk is refused too.
    r.tree.mount("254:32", "/srv/data", "/dev/vdc");
    let e = r
        .inst
        .plan_enable(Kind::Blk, DATA_DISK)
        .expect_err("mounted");
    assert_eq!(
        e.to_string(),
        "refusing 0000:00:04.0: /dev/vdc is mounted on /srv/data; unmount it first"
    );
    r.inst.units.calls.clear();
}

#[test]
fn unknown_wrong_kind_xen_and_foreign_devices_are_named() {
    let r = rig();
    let e = r
        .inst
        .plan_enable(Kind::Blk, "0000:00:09.0")
        .expect_err("absent");
    assert_eq!(
        e.to_string(),
        "no blk device 0000:00:09.0 in this guest (see `pv-install status` for the ones there are)"
    );
    let e = r
        .inst
        .plan_enable(Kind::Blk, "disk0")
        .expect_err("not an address");
    assert!(matches!(e, Error::UnknownDevice { .. }), "{e}");
    let e = r.inst.plan_enable(Kind::Blk, NIC).expect_err("a NIC");
    assert_eq!(
        e.to_string(),
        "0000:00:05.0 is a net device, not blk (use: pv-install enable net 0000:00:05.0)"
    );
    std::fs::create_dir_all(r.tree.root().join("sys/bus/xen/devices/vbd-768")).expect("xen");
    let e = r.inst.plan_enable(Kind::Blk, "vbd-768").expect_err("xen");
    assert!(matches!(e, Error::XenDevice { .. }), "{e}");
    std::fs::write(r.tree.pci(DATA_DISK).join("driver_override"), "vfio-pci").expect("w");
    let e = r.inst.plan_enable(Kind::Blk, DATA_DISK).expect_err("vfio");
    assert!(matches!(e, Error::ClaimedElsewhere { .. }), "{e}");
}

#[test]
fn a_runtime_of_another_version_is_refused() {
    let r = rig();
    write_runtime(&r.inst.sbin, "pvblkd", "0.0.1");
    let e = r
        .inst
        .plan_enable(Kind::Blk, DATA_DISK)
        .expect_err("mismatch");
    assert!(
        matches!(e, Error::VersionMismatch { ref found, .. } if found == "0.0.1"),
        "{e}"
    );
    assert!(e
        .to_string()
        .contains("reinstall the pvdrivers-guest package"));
    // Other kinds are not blocked by pvblkd's version.
    r.inst.plan_enable(Kind::Net, NIC).expect("net still fine");
    std::fs::remove_file(r.inst.sbin.join("pvnetd")).expect("rm");
    let e = r.inst.plan_enable(Kind::Net, NIC).expect_err("missing");
    assert!(matches!(e, Error::RuntimeMissing { .. }), "{e}");
    assert!(r
        .inst
        .status()
        .expect("status")
        .contains("pvblkd is version 0.0.1"));
}

#[test]
fn a_runtime_that_never_takes_the_device_is_rolled_back() {
    let mut r = rig();
    r.inst.units.runtime_fails = true;
    let before = r.config();
    let steps = r.inst.plan_enable(Kind::Blk, DATA_DISK).expect("plan");
    let e = r.inst.apply(&steps).expect_err("runtime failed");
    assert!(matches!(e, Error::RolledBack { .. }), "{e}");
    assert!(e.to_string().contains("nothing changed"), "{e}");
    assert_eq!(r.config(), before);
    assert_eq!(
        r.inst.units.calls,
        vec![
            "start pvblkd@0000:00:04.0.service",
            "stop pvblkd@0000:00:04.0.service"
        ]
    );
}

#[test]
fn disable_stops_the_unit_hands_the_device_back_and_edits_the_config() {
    let mut r = rig();
    let steps = r.inst.plan_enable(Kind::Blk, DATA_DISK).expect("plan");
    r.inst.apply(&steps).expect("enable");
    let e = r
        .inst
        .plan_disable(Kind::Blk, "0000:00:06.0")
        .expect_err("not enabled");
    assert!(matches!(e, Error::NotEnabled { .. }), "{e}");
    let steps = r.inst.plan_disable(Kind::Blk, DATA_DISK).expect("plan");
    assert_eq!(
        steps[1..],
        [
            Step::Stop("pvblkd@0000:00:04.0.service".into()),
            Step::HandBack(DATA_DISK.parse().expect("addr"))
        ]
    );
    // The fake runtime does not release on stop: the hand-back does.
    r.tree.bind(DATA_DISK, None);
    r.inst.apply(&steps).expect("disable");
    assert!(r.config().contains("devices = []"), "{}", r.config());
    assert_eq!(r.override_of(DATA_DISK), "");
    assert_eq!(r.tree.read("sys/bus/pci/drivers_probe"), DATA_DISK);
    assert_eq!(
        r.inst.units.state("pvblkd@0000:00:04.0.service"),
        "inactive"
    );
}

#[test]
fn sync_serves_what_the_config_names_and_reports_absent_devices() {
    let mut r = rig();
    std::fs::write(
        &r.inst.config_path,
        "[blk]\ndevices = [\"serial:data1\", \"0000:00:0a.0\"]\n[net]\ndevices = [\"mac:52:54:00:00:00:05\"]\n",
    )
    .expect("config");
    let report = r.inst.sync().expect("sync");
    assert_eq!(
        report.done,
        vec!["blk 0000:00:04.0: served", "net 0000:00:05.0: served"]
    );
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert!(report.failed[0].contains("names 0000:00:0a.0, which this guest does not have"));
    // Twice: nothing more to start.
    let report = r.inst.sync().expect("sync");
    assert_eq!(
        report.done,
        vec![
            "blk 0000:00:04.0: already served",
            "net 0000:00:05.0: already served"
        ]
    );
    assert_eq!(r.inst.units.calls.len(), 2);
}

#[test]
fn release_all_stops_every_runtime_and_hands_every_device_back() {
    let mut r = rig();
    for (k, a) in [(Kind::Blk, DATA_DISK), (Kind::Net, NIC)] {
        let steps = r.inst.plan_enable(k, a).expect("plan");
        r.inst.apply(&steps).expect("enable");
    }
    let steps = r.inst.plan_release_all().expect("plan");
    assert_eq!(
        steps,
        vec![
            Step::Stop("pvblkd@0000:00:04.0.service".into()),
            Step::Stop("pvnetd@0000:00:05.0.service".into()),
            Step::HandBack(DATA_DISK.parse().expect("a")),
            Step::HandBack(NIC.parse().expect("a")),
        ]
    );
    r.inst.apply(&steps).expect("release");
    assert_eq!(r.override_of(DATA_DISK), "");
    assert_eq!(r.override_of(NIC), "");
}

#[test]
fn status_shows_owner_config_unit_and_the_root_disk() {
    let mut r = rig();
    let steps = r.inst.plan_enable(Kind::Blk, DATA_DISK).expect("plan");
    r.inst.apply(&steps).expect("enable");
    let s = r.inst.status().expect("status");
    let line = |a: &str| {
        s.lines()
            .find(|l| l.contains(a))
            .unwrap_or_default()
            .to_owned()
    };
    let root = line(ROOT_DISK);
    assert!(
        root.contains("owner: kernel (virtio-pci + virtio_blk)"),
        "{s}"
    );
    assert!(root.contains("config: not named"), "{s}");
    assert!(root.contains("[root filesystem: never taken]"), "{s}");
    let data = line(DATA_DISK);
    assert!(
        data.contains("owner: pvdrivers (through virtio-pci)"),
        "{s}"
    );
    assert!(data.contains("config: named (0000:00:04.0)"), "{s}");
    assert!(
        data.contains("unit pvblkd@0000:00:04.0.service: active"),
        "{s}"
    );
    assert!(line(NIC).contains("mac=52:54:00:00:00:05"), "{s}");
    assert!(
        s.contains(&format!(
            "runtimes: pvblkd {VERSION}; pvnetd {VERSION}; pvballoond {VERSION}"
        )),
        "{s}"
    );
    assert!(s.contains("Xen PV devices:\n  (none)"), "{s}");
}
