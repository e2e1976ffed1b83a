//! The guest's devices as sysfs shows them, under a root directory (`/`
//! on a real system, a fake tree in the tests): every virtio PCI function
//! (`/sys/bus/pci/devices`, vendor 0x1af4), its kernel drivers (the PCI
//! one and the virtio one above it), its disks or interfaces, and every
//! Xen PV device (`/sys/bus/xen/devices`). Also which disks hold mounted
//! filesystems (`/proc/self/mountinfo`), and the hand-back of a function
//! to its kernel driver.

use std::path::{Path, PathBuf};

use pv_linux::pci::{PciAddress, OVERRIDE_NAME, VIRTIO_VENDOR};

use crate::error::{Error, Result};
use crate::Kind;

/// The `driver_override` values the runtimes write while they hold a
/// function (pv-linux: no driver; uio_pci_generic: for INTx).
pub const OUR_OVERRIDES: [&str; 2] = [OVERRIDE_NAME, "uio_pci_generic"];

/// One virtio PCI function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioPci {
    /// Its address.
    pub address: PciAddress,
    /// PCI device id.
    pub device_id: u16,
    /// The kind we manage, if it is one.
    pub kind: Option<Kind>,
    /// The PCI driver bound (virtio-pci, uio_pci_generic), if any.
    pub driver: Option<String>,
    /// The virtio driver on top (virtio_blk, virtio_net), if any.
    pub virtio_driver: Option<String>,
    /// `driver_override`, if set.
    pub driver_override: Option<String>,
    /// Block devices (vdX) or network interfaces (ethX) the kernel made.
    pub nodes: Vec<String>,
    /// virtio-blk serial, when the kernel driver shows it.
    pub serial: Option<String>,
    /// virtio-net MAC (lower case), when the kernel driver shows it.
    pub mac: Option<String>,
}

impl VirtioPci {
    /// Who owns it, in words for `status`.
    pub fn owner(&self) -> String {
        match (&self.driver_override, &self.driver, &self.virtio_driver) {
            (Some(o), Some(d), _) if OUR_OVERRIDES.contains(&o.as_str()) => {
                format!("pvdrivers (through {d})")
            }
            (Some(o), None, _) if OUR_OVERRIDES.contains(&o.as_str()) => "pvdrivers".into(),
            (Some(o), _, _) => format!("held by another program (driver_override {o})"),
            (None, Some(d), Some(v)) => format!("kernel ({d} + {v})"),
            (None, Some(d), None) => format!("kernel ({d})"),
            (None, None, _) => "no driver".into(),
        }
    }

    /// True when a pvdrivers runtime holds it (or left it held).
    pub fn claimed_by_us(&self) -> bool {
        self.driver_override
            .as_deref()
            .is_some_and(|o| OUR_OVERRIDES.contains(&o))
    }
}

/// One Xen PV device (`/sys/bus/xen/devices/vbd-768`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XenPv {
    /// Its name on the xen bus.
    pub name: String,
    /// `devtype` (vbd, vif, ...).
    pub devtype: String,
    /// Bound frontend, if any.
    pub driver: Option<String>,
}

/// A mounted filesystem on a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The block device (vda1, dm-0).
    pub dev: String,
    /// Where.
    pub mountpoint: String,
}

/// The system seen from `root`.
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s != "(null)")
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn hex(p: &Path) -> Option<u16> {
    read_trim(p).and_then(|s| u16::from_str_radix(s.trim_start_matches("0x"), 16).ok())
}

impl Sysfs {
    /// The system rooted at `root` (`/` for the real one).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn pci_dir(&self) -> PathBuf {
        self.root.join("sys/bus/pci/devices")
    }

    /// Every virtio PCI function, in address order.
    pub fn virtio_pci(&self) -> Result<Vec<VirtioPci>> {
        let dir = self.pci_dir();
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
        let mut out = Vec::new();
        for ent in rd.flatten() {
            let Ok(address) = ent.file_name().to_string_lossy().parse::<PciAddress>() else {
                continue;
            };
            if let Some(d) = self.function(address)? {
                out.push(d);
            }
        }
        out.sort_by_key(|d| d.address);
        Ok(out)
    }

    /// The virtio function at `address`, `None` when there is none there.
    pub fn function(&self, address: PciAddress) -> Result<Option<VirtioPci>> {
        let dir = self.pci_dir().join(address.to_string());
        if hex(&dir.join("vendor")) != Some(VIRTIO_VENDOR) {
            return Ok(None);
        }
        let Some(device_id) = hex(&dir.join("device")) else {
            return Ok(None);
        };
        let mut d = VirtioPci {
            address,
            device_id,
            kind: Kind::from_device_id(device_id),
            driver: link_name(&dir.join("driver")),
            virtio_driver: None,
            driver_override: read_trim(&dir.join("driver_override")),
            nodes: Vec::new(),
            serial: None,
            mac: None,
        };
        for child in dir_names(&dir)
            .into_iter()
            .filter(|n| n.starts_with("virtio"))
        {
            let vdir = dir.join(&child);
            d.virtio_driver = link_name(&vdir.join("driver"));
            for disk in dir_names(&vdir.join("block")) {
                d.serial = d
                    .serial
                    .or_else(|| read_trim(&vdir.join("block").join(&disk).join("serial")));
                d.nodes.push(disk);
            }
            for nic in dir_names(&vdir.join("net")) {
                d.mac = d.mac.or_else(|| {
                    read_trim(&vdir.join("net").join(&nic).join("address"))
                        .map(|m| m.to_ascii_lowercase())
                });
                d.nodes.push(nic);
            }
        }
        Ok(Some(d))
    }

    /// Every Xen PV device (none on a guest without Xen).
    pub fn xen_pv(&self) -> Vec<XenPv> {
        let dir = self.root.join("sys/bus/xen/devices");
        dir_names(&dir)
            .into_iter()
            .map(|name| {
                let d = dir.join(&name);
                XenPv {
                    devtype: read_trim(&d.join("devtype")).unwrap_or_else(|| "?".into()),
                    driver: link_name(&d.join("driver")),
                    name,
                }
            })
            .collect()
    }

    /// True when `name` is a Xen PV device of this guest.
    pub fn is_xen_device(&self, name: &str) -> bool {
        !name.contains('/') && self.root.join("sys/bus/xen/devices").join(name).exists()
    }

    /// Block devices that live on `disk` (itself, its partitions, and what
    /// is stacked on either: dm, md), as (name, "MAJ:MIN").
    fn stack(&self, disk: &str) -> Vec<(String, String)> {
        let class = self.root.join("sys/class/block");
        let mut out: Vec<(String, String)> = Vec::new();
        let mut todo = vec![disk.to_owned()];
        while let Some(name) = todo.pop() {
            if out.iter().any(|(n, _)| *n == name) || out.len() > 256 {
                continue;
            }
            let dir = class.join(&name);
            out.push((
                name.clone(),
                read_trim(&dir.join("dev")).unwrap_or_default(),
            ));
            for part in dir_names(&dir) {
                if dir.join(&part).join("partition").exists() {
                    todo.push(part);
                }
            }
            todo.extend(dir_names(&dir.join("holders")));
        }
        out
    }

    /// Mounted filesystems on `disk` or anything stacked on it.
    pub fn mounts_on(&self, disk: &str) -> Result<Vec<Mount>> {
        let path = self.root.join("proc/self/mountinfo");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        let stack = self.stack(disk);
        let mut out = Vec::new();
        for line in text.lines() {
            // id parent MAJ:MIN root mountpoint opts [optional...] - fstype source superopts
            let mut f = line.split(' ');
            let majmin = f.nth(2).unwrap_or_default();
            let mountpoint = f.nth(1).unwrap_or_default();
            let source = line
                .split_once(" - ")
                .and_then(|(_, rest)| rest.split(' ').nth(1))
                .unwrap_or_default();
            let hit = stack.iter().find(|(name, mm)| {
                (!mm.is_empty() && mm == majmin)
                    || source.strip_prefix("/dev/") == Some(name.as_str())
            });
            if let Some((name, _)) = hit {
                out.push(Mount {
                    dev: name.clone(),
                    mountpoint: mountpoint.replace("\\040", " "),
                });
            }
        }
        Ok(out)
    }

    /// Gives `address` back to its kernel driver: unbinds a runtime's
    /// `uio_pci_generic`, clears `driver_override`, and asks the PCI core
    /// to probe it (virtio-pci binds, then virtio_blk or virtio_net).
    pub fn hand_back(&self, address: PciAddress) -> Result<()> {
        let dir = self.pci_dir().join(address.to_string());
        let write =
            |p: PathBuf, v: &str| std::fs::write(&p, v).map_err(|e| Error::io("write", p, e));
        if let Some(drv) = link_name(&dir.join("driver")) {
            if OUR_OVERRIDES.contains(&drv.as_str()) {
                write(dir.join("driver/unbind"), &address.to_string())?;
            }
        }
        write(dir.join("driver_override"), "\n")?;
        if link_name(&dir.join("driver")).is_none() {
            write(
                self.root.join("sys/bus/pci/drivers_probe"),
                &address.to_string(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake sysfs/procfs tree with the files `pv-install` reads.

    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    /// A temporary tree.
    pub struct Tree {
        pub dir: tempfile::TempDir,
    }

    fn w(p: &Path, s: &str) {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(p, s).expect("write");
    }

    impl Tree {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let t = Self { dir };
            for d in ["virtio-pci", "uio_pci_generic", "virtio_blk", "virtio_net"] {
                std::fs::create_dir_all(t.root().join("sys/bus/pci/drivers").join(d))
                    .expect("drivers");
                w(
                    &t.root().join("sys/bus/pci/drivers").join(d).join("unbind"),
                    "",
                );
            }
            w(&t.root().join("sys/bus/pci/drivers_probe"), "");
            w(&t.root().join("proc/self/mountinfo"), "");
            t
        }

        pub fn root(&self) -> PathBuf {
            self.dir.path().to_owned()
        }

        pub fn pci(&self, addr: &str) -> PathBuf {
            self.root().join("sys/bus/pci/devices").join(addr)
        }

        /// A virtio function bound to virtio-pci (+ `vdrv` over it).
        pub fn virtio(&self, addr: &str, device_id: u16, vdrv: Option<&str>) {
            let d = self.pci(addr);
            w(&d.join("vendor"), "0x1af4\n");
            w(&d.join("device"), &format!("0x{device_id:04x}\n"));
            w(&d.join("driver_override"), "(null)\n");
            self.bind(addr, Some("virtio-pci"));
            let v = d.join("virtio0");
            std::fs::create_dir_all(&v).expect("virtio dir");
            if let Some(vd) = vdrv {
                symlink(
                    self.root().join("sys/bus/pci/drivers").join(vd),
                    v.join("driver"),
                )
                .expect("symlink");
            }
        }

        pub fn bind(&self, addr: &str, drv: Option<&str>) {
            let l = self.pci(addr).join("driver");
            let _ = std::fs::remove_file(&l);
            if let Some(drv) = drv {
                symlink(self.root().join("sys/bus/pci/drivers").join(drv), l).expect("symlink");
            }
        }

        /// A disk `name` (MAJ:MIN `dev`) on the function at `addr`.
        pub fn disk(&self, addr: &str, name: &str, dev: &str, serial: &str) {
            let b = self.pci(addr).join("virtio0/block").join(name);
            w(&b.join("serial"), serial);
            let c = self.root().join("sys/class/block").join(name);
            w(&c.join("dev"), dev);
        }

        /// Partition `part` of `disk`.
        pub fn partition(&self, disk: &str, part: &str, dev: &str) {
            let c = self.root().join("sys/class/block").join(disk).join(part);
            w(&c.join("partition"), "1");
            w(
                &self.root().join("sys/class/block").join(part).join("dev"),
                dev,
            );
        }

        /// `upper` (a dm device) stacked on `lower`.
        pub fn holder(&self, lower: &str, upper: &str, dev: &str) {
            let c = self.root().join("sys/class/block");
            std::fs::create_dir_all(c.join(lower).join("holders").join(upper)).expect("holder");
            w(&c.join(upper).join("dev"), dev);
        }

        pub fn nic(&self, addr: &str, name: &str, mac: &str) {
            w(
                &self
                    .pci(addr)
                    .join("virtio0/net")
                    .join(name)
                    .join("address"),
                mac,
            );
        }

        pub fn mount(&self, majmin: &str, mountpoint: &str, source: &str) {
            let p = self.root().join("proc/self/mountinfo");
            let mut t = std::fs::read_to_string(&p).expect("mountinfo");
            t.push_str(&format!(
                "{} 1 {majmin} / {mountpoint} rw,relatime shared:1 - ext4 {source} rw\n",
                20 + t.lines().count()
            ));
            w(&p, &t);
        }

        pub fn read(&self, rel: &str) -> String {
            std::fs::read_to_string(self.root().join(rel)).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Tree;
    use super::*;

    #[test]
    fn lists_virtio_functions_with_their_drivers() {
        let t = Tree::new();
        t.virtio("0000:00:04.0", 0x1001, Some("virtio_blk"));
        t.disk("0000:00:04.0", "vda", "254:0", "root0");
        t.virtio("0000:00:05.0", 0x1041, Some("virtio_net"));
        t.nic("0000:00:05.0", "ens5", "52:54:00:AB:CD:EF\n");
        t.virtio("0000:00:06.0", 0x1005, None);
        // Not virtio.
        std::fs::create_dir_all(t.pci("0000:00:01.0")).expect("mkdir");
        std::fs::write(t.pci("0000:00:01.0").join("vendor"), "0x8086").expect("w");
        let s = Sysfs::new(t.root());
        let v = s.virtio_pci().expect("list");
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].kind, Some(Kind::Blk));
        assert_eq!(v[0].nodes, vec!["vda"]);
        assert_eq!(v[0].serial.as_deref(), Some("root0"));
        assert_eq!(v[0].owner(), "kernel (virtio-pci + virtio_blk)");
        assert_eq!(v[1].kind, Some(Kind::Net));
        assert_eq!(v[1].mac.as_deref(), Some("52:54:00:ab:cd:ef"));
        assert_eq!(v[2].kind, None);
        assert_eq!(v[2].device_id, 0x1005);
    }

    #[test]
    fn finds_mounts_through_partitions_and_dm() {
        let t = Tree::new();
        t.virtio("0000:00:04.0", 0x1001, Some("virtio_blk"));
        t.disk("0000:00:04.0", "vda", "254:0", "");
        t.partition("vda", "vda2", "254:2");
        t.holder("vda2", "dm-0", "253:0");
        t.mount("253:0", "/", "/dev/mapper/vg-root");
        t.virtio("0000:00:05.0", 0x1001, Some("virtio_blk"));
        t.disk("0000:00:05.0", "vdb", "254:16", "");
        let s = Sysfs::new(t.root());
        assert_eq!(
            s.mounts_on("vda").expect("mounts"),
            vec![Mount {
                dev: "dm-0".into(),
                mountpoint: "/".into()
            }]
        );
        assert!(s.mounts_on("vdb").expect("mounts").is_empty());
        // btrfs reports an anonymous 0:N; the source names the device.
        t.mount("0:33", "/srv", "/dev/vdb");
        assert_eq!(s.mounts_on("vdb").expect("mounts")[0].mountpoint, "/srv");
    }

    #[test]
    fn hand_back_unbinds_uio_clears_the_override_and_probes() {
        let t = Tree::new();
        t.virtio("0000:00:05.0", 0x1001, None);
        t.bind("0000:00:05.0", Some("uio_pci_generic"));
        std::fs::write(
            t.pci("0000:00:05.0").join("driver_override"),
            "uio_pci_generic",
        )
        .expect("w");
        let s = Sysfs::new(t.root());
        let d = s
            .function("0000:00:05.0".parse().expect("a"))
            .expect("f")
            .expect("virtio");
        assert!(d.claimed_by_us());
        assert_eq!(d.owner(), "pvdrivers (through uio_pci_generic)");
        s.hand_back(d.address).expect("hand back");
        assert_eq!(
            t.read("sys/bus/pci/drivers/uio_pci_generic/unbind"),
            "0000:00:05.0"
        );
        assert_eq!(
            t.read("sys/bus/pci/devices/0000:00:05.0/driver_override"),
            "\n"
        );
        // The fake's unbind does not remove the link, so the probe is
        // skipped here; with no driver bound it is written:
        t.bind("0000:00:05.0", None);
        s.hand_back(d.address).expect("hand back");
        assert_eq!(t.read("sys/bus/pci/drivers_probe"), "0000:00:05.0");
    }
}
