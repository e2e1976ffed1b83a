//! PCI functions from Linux userspace, through sysfs.
//!
//! [`PciDevice::claim`] takes a function away from its kernel driver: it
//! writes a name no driver has into `driver_override` (so nothing rebinds
//! it behind our back) and unbinds the current driver.
//! [`PciDevice::claim_with`] and [`Binding::UioPciGeneric`] bind it to
//! `uio_pci_generic` instead, for INTx interrupts ([`UioIrq`]). Dropping the
//! [`PciDevice`] (or [`PciDevice::release`]) gives it back: unmaps the BARs,
//! clears `driver_override` and writes the address to `drivers_probe`, so
//! the kernel driver binds again (for a virtio-blk device: `virtio-pci`,
//! then `virtio_blk`, and the `/dev/vdX` node reappears).
//!
//! Config space is the sysfs `config` file ([`SysfsConfig`], a
//! `virtio_drivers` [`ConfigurationAccess`]). The BAR registers are *not*
//! passed to the hardware: reads answer from the kernel's resource list
//! (sysfs `resource`), and the sizing protocol (write all-ones, read the
//! mask, restore) is emulated from the same list. The device keeps the
//! addresses the kernel gave it, and every BAR address virtio-drivers sees
//! is one this module has mapped (sysfs `resourceN`, registered with
//! [`crate::dma::LinuxHal`] for `mmio_phys_to_virt`).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;

use crate::dma::{self, LinuxHal};
use crate::{Error, Result};

const SYSFS_DEVICES: &str = "/sys/bus/pci/devices";
const DRIVERS_PROBE: &str = "/sys/bus/pci/drivers_probe";
/// What we write into `driver_override` while we hold a device: no kernel
/// driver has this name, so none will bind.
pub const OVERRIDE_NAME: &str = "pv-linux";

/// Vendor id of virtio devices.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// PCI device ids of virtio-blk: transitional and modern.
pub const VIRTIO_BLK_IDS: [u16; 2] = [0x1001, 0x1042];
/// PCI device ids of virtio-net: transitional and modern.
pub const VIRTIO_NET_IDS: [u16; 2] = [0x1000, 0x1041];
/// PCI device ids of virtio-balloon: transitional and modern.
pub const VIRTIO_BALLOON_IDS: [u16; 2] = [0x1002, 0x1045];

/// `IORESOURCE_IO`.
const RES_IO: u64 = 0x100;
/// `IORESOURCE_MEM`.
const RES_MEM: u64 = 0x200;
/// `IORESOURCE_PREFETCH`.
const RES_PREFETCH: u64 = 0x2000;
/// `IORESOURCE_MEM_64`.
const RES_MEM_64: u64 = 0x0010_0000;

/// Command register bits.
const CMD_MEMORY: u16 = 1 << 1;
const CMD_BUS_MASTER: u16 = 1 << 2;
/// Offset of the first BAR register.
const BAR0: u8 = 0x10;

/// A PCI address (domain:bus:device.function).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus.
    pub bus: u8,
    /// Device (0-31).
    pub device: u8,
    /// Function (0-7).
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciAddress {
    type Err = Error;

    /// `DDDD:BB:DD.F` or `BB:DD.F` (domain 0), hexadecimal.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BadAddress(s.to_owned());
        let parts: Vec<&str> = s.trim().split(':').collect();
        let (domain, bus, devfn) = match parts.as_slice() {
            [d, b, df] => (u16::from_str_radix(d, 16).map_err(|_| bad())?, *b, *df),
            [b, df] => (0, *b, *df),
            _ => return Err(bad()),
        };
        let bus = u8::from_str_radix(bus, 16).map_err(|_| bad())?;
        let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
        let device = u8::from_str_radix(dev, 16).map_err(|_| bad())?;
        let function = u8::from_str_radix(func, 16).map_err(|_| bad())?;
        if device > 31 || function > 7 {
            return Err(bad());
        }
        Ok(Self {
            domain,
            bus,
            device,
            function,
        })
    }
}

impl PciAddress {
    /// The sysfs directory of this function.
    pub fn sysfs(&self) -> PathBuf {
        Path::new(SYSFS_DEVICES).join(self.to_string())
    }

    /// As virtio-drivers names it (the domain is implied by the config file).
    pub fn device_function(&self) -> DeviceFunction {
        DeviceFunction {
            bus: self.bus,
            device: self.device,
            function: self.function,
        }
    }
}

/// What sysfs says about one PCI function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciInfo {
    /// Address.
    pub address: PciAddress,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Bound kernel driver, if any.
    pub driver: Option<String>,
    /// Contents of `driver_override`, if set.
    pub driver_override: Option<String>,
}

fn read_hex(path: &Path) -> Result<u64> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let t = s.trim();
    u64::from_str_radix(t.trim_start_matches("0x"), 16).map_err(|_| Error::Parse {
        path: path.to_owned(),
        detail: format!("not a hex number: {t:?}"),
    })
}

fn write_attr(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| Error::io("write", path, e))
}

/// Information about the function at `address`.
pub fn info(address: PciAddress) -> Result<PciInfo> {
    let dir = address.sysfs();
    if !dir.exists() {
        return Err(Error::NoDevice(address.to_string()));
    }
    let driver = std::fs::read_link(dir.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let driver_override = std::fs::read_to_string(dir.join("driver_override"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s != "(null)");
    Ok(PciInfo {
        address,
        vendor: read_hex(&dir.join("vendor"))? as u16,
        device: read_hex(&dir.join("device"))? as u16,
        driver,
        driver_override,
    })
}

/// Every PCI function, in address order.
pub fn list() -> Result<Vec<PciInfo>> {
    let rd = std::fs::read_dir(SYSFS_DEVICES).map_err(|e| Error::io("list", SYSFS_DEVICES, e))?;
    let mut v = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Ok(a) = name.parse::<PciAddress>() {
            v.push(info(a)?);
        }
    }
    v.sort_by_key(|i| i.address);
    Ok(v)
}

/// Functions with `vendor` and one of `devices`, in address order.
pub fn find(vendor: u16, devices: &[u16]) -> Result<Vec<PciInfo>> {
    Ok(list()?
        .into_iter()
        .filter(|i| i.vendor == vendor && devices.contains(&i.device))
        .collect())
}

/// The function a runtime should claim: `requested` (a `--pci` address)
/// when given, else the first function with `vendor` and one of `devices`
/// that has no `driver_override` (nobody claimed it). `what` names the
/// device kind in the error ("virtio-blk").
pub fn pick_unclaimed(
    requested: Option<&str>,
    vendor: u16,
    devices: &[u16],
    what: &str,
) -> Result<PciAddress> {
    if let Some(a) = requested {
        return a.parse();
    }
    find(vendor, devices)?
        .into_iter()
        .find(|i| i.driver_override.is_none())
        .map(|i| i.address)
        .ok_or_else(|| Error::NoneUnclaimed(what.into()))
}

/// How every runtime holds its device: claim `address` (bound as
/// `binding` asks), run `serve` on it, and give it back to the kernel
/// afterwards whatever `serve` returned. `serve` owns the core built on
/// the device, so the core (whose transport points into the BAR mappings)
/// is gone before the device is released.
pub fn serve_claimed<E: From<Error>>(
    address: PciAddress,
    binding: Binding,
    serve: impl FnOnce(&PciDevice) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let dev = PciDevice::claim_with(address, binding).map_err(|e| Error::Claim {
        address,
        source: Box::new(e),
    })?;
    log::info!(
        "claimed {address} (was bound to {})",
        dev.previous_driver().unwrap_or("no driver")
    );
    let served = serve(&dev);
    let released = dev.release().map_err(E::from);
    served.and(released)
}

/// One BAR as the kernel assigned it (sysfs `resource`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BarResource {
    /// First address (0: not present).
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// `IORESOURCE_*` flags.
    pub flags: u64,
}

impl BarResource {
    /// A memory BAR.
    pub fn is_mem(&self) -> bool {
        self.size > 0 && self.flags & RES_MEM != 0
    }
    fn is_io(&self) -> bool {
        self.size > 0 && self.flags & RES_IO != 0
    }
    fn is_mem64(&self) -> bool {
        self.is_mem() && self.flags & RES_MEM_64 != 0
    }
}

/// Parse sysfs `resource` (one `start end flags` line per resource, hex;
/// the first six are the BARs).
pub fn parse_resources(text: &str) -> Option<[BarResource; 6]> {
    let mut bars = [BarResource::default(); 6];
    let mut lines = text.lines();
    for bar in &mut bars {
        let line = lines.next()?;
        let mut f = line
            .split_whitespace()
            .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16));
        let (start, end, flags) = (f.next()?.ok()?, f.next()?.ok()?, f.next()?.ok()?);
        if start != 0 || end != 0 {
            if end < start {
                return None;
            }
            *bar = BarResource {
                start,
                size: end - start + 1,
                flags,
            };
        }
    }
    Some(bars)
}

/// Config space of one function through its sysfs `config` file, with the
/// BAR registers emulated from the kernel's resource list (see the module
/// docs). Reads of another function return all-ones (no device).
#[derive(Debug)]
pub struct SysfsConfig {
    file: Arc<File>,
    path: PathBuf,
    function: DeviceFunction,
    bars: [BarResource; 6],
    sizing: [bool; 6],
}

impl SysfsConfig {
    fn bar_value(&self, i: usize) -> u32 {
        let b = self.bars[i];
        let sizing = self.sizing[i];
        if b.is_mem() {
            let mask = if sizing { !(b.size - 1) } else { b.start };
            let mut v = (mask as u32) & !0xF;
            if b.is_mem64() {
                v |= 0b100;
            }
            if b.flags & RES_PREFETCH != 0 {
                v |= 0b1000;
            }
            return v;
        }
        if b.is_io() {
            let mask = if sizing { !(b.size - 1) } else { b.start };
            return ((mask as u32) & !0x3) | 1;
        }
        // The upper half of a 64-bit memory BAR.
        if i > 0 && self.bars[i - 1].is_mem64() {
            let lo = self.bars[i - 1];
            let v = if sizing { !(lo.size - 1) } else { lo.start };
            return (v >> 32) as u32;
        }
        0
    }

    fn bar_index(off: u8) -> Option<usize> {
        (BAR0..BAR0 + 24)
            .contains(&off)
            .then(|| usize::from((off - BAR0) / 4))
    }

    /// Read `N` bytes at `off` (not emulated: for registers outside the BARs).
    pub fn read_bytes<const N: usize>(&self, off: u64) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.file
            .read_exact_at(&mut b, off)
            .map_err(|e| Error::io("read config", &self.path, e))?;
        Ok(b)
    }

    /// Write bytes at `off` (not emulated: for registers outside the BARs).
    pub fn write_bytes(&self, off: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, off)
            .map_err(|e| Error::io("write config", &self.path, e))
    }
}

impl ConfigurationAccess for SysfsConfig {
    fn read_word(&self, device_function: DeviceFunction, register_offset: u8) -> u32 {
        if device_function != self.function {
            return u32::MAX;
        }
        if let Some(i) = Self::bar_index(register_offset) {
            return self.bar_value(i);
        }
        match self.read_bytes::<4>(u64::from(register_offset & !3)) {
            Ok(b) => u32::from_le_bytes(b),
            Err(e) => {
                log::error!("{e}");
                u32::MAX
            }
        }
    }

    fn write_word(&mut self, device_function: DeviceFunction, register_offset: u8, data: u32) {
        if device_function != self.function {
            return;
        }
        if let Some(i) = Self::bar_index(register_offset) {
            self.sizing[i] = data == u32::MAX;
            return;
        }
        if let Err(e) = self.write_bytes(u64::from(register_offset & !3), &data.to_le_bytes()) {
            log::error!("{e}");
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        Self {
            file: Arc::clone(&self.file),
            path: self.path.clone(),
            function: self.function,
            bars: self.bars,
            sizing: self.sizing,
        }
    }
}

/// What the claimed function is bound to while we hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// No driver (`driver_override` names no driver): no interrupts, the
    /// runtime polls and sleeps on timers.
    Unbound,
    /// `uio_pci_generic`: INTx interrupts through `/dev/uioN`
    /// ([`UioIrq`]); falls back to [`Binding::Unbound`] with a warning when
    /// the module is missing or refuses the device (it needs INTx masking).
    UioPciGeneric,
}

/// INTx interrupts of a function bound to `uio_pci_generic`.
///
/// The kernel's handler masks INTx (command register bit 10) when the
/// device interrupts and counts the event; [`UioIrq::fd`] becomes readable.
/// (`uio_pci_generic` has no `irqcontrol`, so unmasking is a write of the
/// command register through sysfs config, as its documentation says.)
/// The runtime then [`UioIrq::take`]s the count, acknowledges the device
/// (for virtio: reads the ISR register, which lowers the line), and
/// [`UioIrq::arm`]s again, which unmasks INTx. INTx is level-triggered: a
/// line still or again raised when it is unmasked interrupts at once, so no
/// wake-up is lost between acknowledging and arming.
#[derive(Debug)]
pub struct UioIrq {
    file: File,
    path: PathBuf,
    /// Config space, for the command register's INTx-disable bit
    /// (`uio_pci_generic` has no irqcontrol: userspace unmasks there).
    config: Arc<File>,
}

/// Command register bit 10: INTx disable.
const CMD_INTX_DISABLE: u16 = 1 << 10;

impl UioIrq {
    /// The descriptor to poll for readability.
    pub fn fd(&self) -> std::os::unix::io::RawFd {
        self.file.as_raw_fd()
    }

    /// Unmask INTx: clear the command register's INTx-disable bit (a
    /// 16-bit access: the status register next to it is write-one-to-clear).
    pub fn arm(&self) -> Result<()> {
        let mut b = [0u8; 2];
        self.config
            .read_exact_at(&mut b, 4)
            .map_err(|e| Error::io("read command register", &self.path, e))?;
        let cmd = u16::from_le_bytes(b);
        if cmd & CMD_INTX_DISABLE != 0 {
            self.config
                .write_all_at(&(cmd & !CMD_INTX_DISABLE).to_le_bytes(), 4)
                .map_err(|e| Error::io("unmask INTx", &self.path, e))?;
        }
        Ok(())
    }

    /// Interrupts counted since the device was opened, if any arrived since
    /// the last call (non-blocking).
    pub fn take(&self) -> Result<Option<u32>> {
        use std::io::Read;
        let mut b = [0u8; 4];
        match (&self.file).read(&mut b) {
            Ok(4) => Ok(Some(u32::from_ne_bytes(b))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(Error::io("read interrupt count", &self.path, e)),
        }
    }
}

/// One BAR mapped from sysfs `resourceN`.
#[derive(Debug)]
struct BarMap {
    vaddr: usize,
    len: usize,
}

/// A claimed PCI function; see the module docs. Given back on drop.
#[derive(Debug)]
pub struct PciDevice {
    address: PciAddress,
    config: SysfsConfig,
    maps: Vec<BarMap>,
    previous_driver: Option<String>,
    irq: Option<UioIrq>,
    released: bool,
}

impl PciDevice {
    /// Claim the function at `address`: refuse if it is behind an IOMMU or
    /// already claimed, unbind its driver, map its memory BARs, enable
    /// memory decoding and bus mastering.
    pub fn claim(address: PciAddress) -> Result<Self> {
        Self::claim_with(address, Binding::Unbound)
    }

    /// Like [`PciDevice::claim`], bound as `binding` asks.
    pub fn claim_with(address: PciAddress, binding: Binding) -> Result<Self> {
        let dir = address.sysfs();
        let i = info(address)?;
        if dir.join("iommu_group").exists() {
            return Err(Error::IommuPresent(address.to_string()));
        }
        if let Some(o) = &i.driver_override {
            return Err(Error::NoDevice(format!(
                "{address} (already claimed: driver_override is {o:?})"
            )));
        }
        write_attr(&dir.join("driver_override"), OVERRIDE_NAME)?;
        let config = match Self::open_config(address) {
            Ok(c) => c,
            Err(e) => {
                // Nothing unbound yet: just take our mark off the device.
                let _ = write_attr(&dir.join("driver_override"), "\n");
                return Err(e);
            }
        };
        let mut me = Self {
            address,
            config,
            maps: Vec::new(),
            previous_driver: i.driver.clone(),
            irq: None,
            released: false,
        };
        if let Some(d) = &i.driver {
            log::info!("pci {address}: unbinding from {d}");
            write_attr(&dir.join("driver").join("unbind"), &address.to_string())?;
        }
        if binding == Binding::UioPciGeneric {
            match me.bind_uio() {
                Ok(irq) => {
                    log::info!(
                        "pci {address}: bound to uio_pci_generic ({})",
                        irq.path.display()
                    );
                    me.irq = Some(irq);
                }
                Err(e) => {
                    log::warn!(
                        "pci {address}: no INTx through uio_pci_generic ({e}); polling only"
                    );
                    if info(address).is_ok_and(|i| i.driver.is_some()) {
                        let _ =
                            write_attr(&dir.join("driver").join("unbind"), &address.to_string());
                    }
                    write_attr(&dir.join("driver_override"), OVERRIDE_NAME)?;
                }
            }
        }
        me.map_bars()?;
        me.enable()?;
        Ok(me)
    }

    fn bind_uio(&self) -> Result<UioIrq> {
        const DRIVER: &str = "/sys/bus/pci/drivers/uio_pci_generic";
        let dir = self.address.sysfs();
        if !Path::new(DRIVER).exists() {
            return Err(Error::NoDevice(
                "uio_pci_generic driver (modprobe uio_pci_generic)".into(),
            ));
        }
        write_attr(&dir.join("driver_override"), "uio_pci_generic")?;
        write_attr(&Path::new(DRIVER).join("bind"), &self.address.to_string())?;
        let uio_dir = dir.join("uio");
        let name = std::fs::read_dir(&uio_dir)
            .map_err(|e| Error::io("list", &uio_dir, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("uio"))
            .ok_or_else(|| Error::NoDevice(format!("uio node under {}", uio_dir.display())))?;
        let path = Path::new("/dev").join(&name);
        // devtmpfs creates the node asynchronously; give it a moment.
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        Ok(UioIrq {
            file,
            path,
            config: Arc::clone(&self.config.file),
        })
    }

    /// INTx interrupts, when bound to `uio_pci_generic`.
    pub fn irq(&self) -> Option<&UioIrq> {
        self.irq.as_ref()
    }

    fn open_config(address: PciAddress) -> Result<SysfsConfig> {
        let dir = address.sysfs();
        let path = dir.join("config");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let rpath = dir.join("resource");
        let text = std::fs::read_to_string(&rpath).map_err(|e| Error::io("read", &rpath, e))?;
        let bars = parse_resources(&text).ok_or_else(|| Error::Parse {
            path: rpath.clone(),
            detail: "want six `start end flags` lines".into(),
        })?;
        Ok(SysfsConfig {
            file: Arc::new(file),
            path,
            function: address.device_function(),
            bars,
            sizing: [false; 6],
        })
    }

    fn map_bars(&mut self) -> Result<()> {
        for (i, bar) in self.config.bars.iter().enumerate() {
            if !bar.is_mem() {
                continue;
            }
            let path = self.address.sysfs().join(format!("resource{i}"));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("open BAR", &path, e))?;
            let len = usize::try_from(bar.size).map_err(|_| Error::Parse {
                path: path.clone(),
                detail: "BAR larger than the address space".into(),
            })?;
            // SAFETY: maps the BAR's sysfs resource file shared at a fresh
            // address of the kernel's choosing; it aliases no Rust object and
            // is unmapped only in `unmap_bars`, after unregistering it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(Error::io(
                    "mmap BAR",
                    &path,
                    std::io::Error::last_os_error(),
                ));
            }
            let vaddr = p as usize;
            dma::register_mmio(bar.start, len, vaddr);
            log::debug!(
                "pci {}: BAR{i} {:#x}+{:#x} mapped at {vaddr:#x}",
                self.address,
                bar.start,
                len
            );
            self.maps.push(BarMap { vaddr, len });
        }
        Ok(())
    }

    fn unmap_bars(&mut self) {
        for m in self.maps.drain(..) {
            dma::unregister_mmio(m.vaddr);
            // SAFETY: `vaddr`/`len` are a mapping made in `map_bars`, now
            // unregistered, so `mmio_phys_to_virt` hands it out no more;
            // transports built on it must be dropped before the device
            // (documented on `virtio_transport`).
            unsafe { libc::munmap(m.vaddr as *mut libc::c_void, m.len) };
        }
    }

    /// Enable memory decoding and bus mastering (a 16-bit write of the
    /// command register only: the status register next to it is
    /// write-one-to-clear).
    pub fn enable(&self) -> Result<()> {
        let cmd = u16::from_le_bytes(self.config.read_bytes::<2>(4)?);
        let new = cmd | CMD_MEMORY | CMD_BUS_MASTER;
        if new != cmd {
            self.config.write_bytes(4, &new.to_le_bytes())?;
        }
        Ok(())
    }

    /// The address.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// The driver that had the device when it was claimed.
    pub fn previous_driver(&self) -> Option<&str> {
        self.previous_driver.as_deref()
    }

    /// The kernel's BAR assignments.
    pub fn bars(&self) -> [BarResource; 6] {
        self.config.bars
    }

    /// A config-space accessor for this function.
    pub fn config_access(&self) -> SysfsConfig {
        // SAFETY: the clone shares the file; both sides only issue
        // positioned reads and writes of whole registers, so concurrent use
        // cannot tear another's access, and BAR writes never reach the
        // hardware.
        unsafe { self.config.unsafe_clone() }
    }

    /// The virtio PCI transport over this function (capabilities parsed
    /// from config space, regions in the mapped BARs). Drop it before the
    /// device: its pointers are into this device's BAR mappings.
    pub fn virtio_transport(&self) -> Result<PciTransport> {
        let mut root = PciRoot::new(self.config_access());
        let t = PciTransport::new::<LinuxHal, _>(&mut root, self.address.device_function())?;
        // The virtio-drivers BAR sizing toggles decoding; make sure it is on.
        self.enable()?;
        Ok(t)
    }

    /// Give the device back to the kernel now (also done on drop).
    pub fn release(mut self) -> Result<()> {
        self.do_release()
    }

    fn do_release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        self.unmap_bars();
        let dir = self.address.sysfs();
        // Disable bus mastering: the device must not DMA into memory we are
        // about to give back.
        if let Ok(b) = self.config.read_bytes::<2>(4) {
            let cmd = u16::from_le_bytes(b) & !CMD_BUS_MASTER;
            let _ = self.config.write_bytes(4, &cmd.to_le_bytes());
        }
        self.irq = None;
        if info(self.address).is_ok_and(|i| i.driver.is_some()) {
            write_attr(
                &dir.join("driver").join("unbind"),
                &self.address.to_string(),
            )?;
        }
        write_attr(&dir.join("driver_override"), "\n")?;
        write_attr(Path::new(DRIVERS_PROBE), &self.address.to_string())?;
        log::info!(
            "pci {}: released to the kernel (now {:?})",
            self.address,
            info(self.address).ok().and_then(|i| i.driver)
        );
        Ok(())
    }
}

impl Drop for PciDevice {
    fn drop(&mut self) {
        if let Err(e) = self.do_release() {
            log::error!("pci {}: giving the device back failed: {e}", self.address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        let a: PciAddress = "0000:00:04.0".parse().expect("full");
        assert_eq!(a.to_string(), "0000:00:04.0");
        let b: PciAddress = "1f:1e.7".parse().expect("short");
        assert_eq!((b.domain, b.bus, b.device, b.function), (0, 0x1f, 0x1e, 7));
        for bad in ["", "00:04", "00:20.0", "00:04.8", "x:00:04.0", "0:0:0:0.0"] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad}");
        }
    }

    const RES: &str = "0x000000000000c040 0x000000000000c07f 0x0000000000040101
0x00000000febd1000 0x00000000febd1fff 0x0000000000040200
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000fe00000000 0x000000fe00003fff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
";

    fn cfg() -> SysfsConfig {
        let file = File::open("/dev/null").expect("/dev/null");
        SysfsConfig {
            file: Arc::new(file),
            path: "/dev/null".into(),
            function: DeviceFunction {
                bus: 0,
                device: 4,
                function: 0,
            },
            bars: parse_resources(RES).expect("parse"),
            sizing: [false; 6],
        }
    }

    #[test]
    fn bars_are_emulated_from_the_resource_list() {
        let mut c = cfg();
        let df = c.function;
        assert_eq!(c.read_word(df, 0x10), 0xc041); // I/O BAR
        assert_eq!(c.read_word(df, 0x14), 0xfebd_1000);
        assert_eq!(c.read_word(df, 0x18), 0);
        assert_eq!(c.read_word(df, 0x20), 0x0000_000c); // 64-bit prefetchable, low
        assert_eq!(c.read_word(df, 0x24), 0xfe); // high half
                                                 // Sizing: all-ones in, mask out, restore.
        c.write_word(df, 0x20, u32::MAX);
        c.write_word(df, 0x24, u32::MAX);
        assert_eq!(c.read_word(df, 0x20), 0xffff_c00c);
        assert_eq!(c.read_word(df, 0x24), 0xffff_ffff);
        c.write_word(df, 0x20, 0x0000_000c);
        c.write_word(df, 0x24, 0xfe);
        assert_eq!(c.read_word(df, 0x20), 0x0000_000c);
        assert_eq!(c.read_word(df, 0x24), 0xfe);
        // Another function is absent.
        let other = DeviceFunction {
            bus: 0,
            device: 5,
            function: 0,
        };
        assert_eq!(c.read_word(other, 0), u32::MAX);
    }

    #[test]
    fn virtio_drivers_sizes_emulated_bars() {
        let mut root = PciRoot::new(cfg());
        let df = DeviceFunction {
            bus: 0,
            device: 4,
            function: 0,
        };
        let b4 = root.bar_info(df, 4).expect("bar4").expect("present");
        assert_eq!(b4.memory_address_size(), Some((0xfe_0000_0000, 0x4000)));
        let b1 = root.bar_info(df, 1).expect("bar1").expect("present");
        assert_eq!(b1.memory_address_size(), Some((0xfebd_1000, 0x1000)));
        assert!(root.bar_info(df, 2).expect("bar2").is_none());
    }

    #[test]
    fn bad_resource_files_are_refused() {
        assert!(parse_resources("").is_none());
        assert!(parse_resources("0x10 0x0f 0x200\n").is_none());
        assert!(parse_resources("zz 0 0\n").is_none());
    }
}
