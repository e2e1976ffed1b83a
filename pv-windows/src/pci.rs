//! PCI functions as Plug and Play hands them to a WDM function driver.
//!
//! At `IRP_MN_START_DEVICE` the driver gets two `CM_RESOURCE_LIST`s (raw:
//! bus addresses, as the BARs hold them; translated: CPU physical addresses
//! to map) and can read config space once through `IRP_MN_READ_CONFIG`.
//! [`parse_resources`] turns the pair into memory ranges and
//! [`parse_interrupt`] finds the interrupt to connect (translated list);
//! [`virtio_isr`] locates the virtio ISR status byte; [`SnapshotConfig`]
//! serves `virtio_drivers`' [`ConfigurationAccess`] from the config-space
//! snapshot, with the BAR registers emulated from the assigned resources,
//! so virtio-drivers finds the virtio capabilities and sizes the BARs
//! without the sizing writes ever reaching the hardware (Windows' PCI
//! driver owns the BARs and the command register: it has enabled memory
//! decoding and bus mastering before the start IRP reaches us).
//!
//! Everything here is plain data and host-testable; the resource lists are
//! kernel memory (trusted), but are still parsed with bounds checks.

use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

/// Bytes of config space kept (the standard header and capability list).
pub const CONFIG_BYTES: usize = 256;
/// Offset of BAR0.
const BAR0: u8 = 0x10;
/// `CmResourceTypeMemory` (`wdm.h`).
const CM_RESOURCE_MEMORY: u8 = 3;
/// `CmResourceTypeMemoryLarge`: `Length40/48/64` by `Flags`.
const CM_RESOURCE_MEMORY_LARGE: u8 = 7;
/// `CM_RESOURCE_MEMORY_LARGE_40/48/64` flags.
const CM_MEMORY_LARGE_40: u16 = 0x200;
const CM_MEMORY_LARGE_48: u16 = 0x400;
const CM_MEMORY_LARGE_64: u16 = 0x800;
/// `CmResourceTypeInterrupt` (`wdm.h`).
const CM_RESOURCE_INTERRUPT: u8 = 2;
/// `CM_RESOURCE_INTERRUPT_LATCHED` (else level-sensitive).
const CM_RESOURCE_INTERRUPT_LATCHED: u16 = 0x1;
/// `CM_RESOURCE_INTERRUPT_MESSAGE` (MSI/MSI-X).
const CM_RESOURCE_INTERRUPT_MESSAGE: u16 = 0x2;
/// `CM_SHARE_DISPOSITION::CmResourceShareShared`.
const CM_SHARE_SHARED: u8 = 3;
/// `sizeof(CM_PARTIAL_RESOURCE_DESCRIPTOR)` (`wdm.h`, `#pragma pack(4)`).
pub const PARTIAL_DESCRIPTOR_BYTES: usize = 20;
/// Header of a `CM_FULL_RESOURCE_DESCRIPTOR` up to its partial
/// descriptors: `InterfaceType`, `BusNumber`, then the partial list's
/// `Version`, `Revision`, `Count`.
pub const FULL_HEADER_BYTES: usize = 16;
/// Most full descriptors or partial descriptors per list we accept.
pub const MAX_DESCRIPTORS: u32 = 64;

/// A memory range Plug and Play assigned to the function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryRange {
    /// Bus address (what the BAR holds).
    pub raw: u64,
    /// CPU physical address to map.
    pub translated: u64,
    /// Bytes.
    pub len: u64,
}

/// The interrupt Plug and Play assigned, as the translated resource list
/// gives it: what `IoConnectInterruptEx`'s fully specified form takes.
/// (`u.Interrupt` of a `CM_PARTIAL_RESOURCE_DESCRIPTOR` on Windows 7 and
/// later: `Level` and `Group` as two `USHORT`s, `Vector`, `Affinity`.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interrupt {
    /// The IRQL the interrupt arrives at (`Level`).
    pub irql: u8,
    /// Processor group.
    pub group: u16,
    /// System vector.
    pub vector: u32,
    /// Processors it may be delivered to.
    pub affinity: u64,
    /// Edge-triggered (else level-sensitive, as PCI INTx lines are).
    pub latched: bool,
    /// The line may be shared with other devices.
    pub shared: bool,
    /// Message-signalled (MSI/MSI-X): needs `CONNECT_MESSAGE_BASED`.
    pub message: bool,
}

/// A resource list the parser refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceError {
    /// The list ends inside a descriptor it announces.
    Truncated,
    /// More descriptors than [`MAX_DESCRIPTORS`].
    TooMany,
    /// The raw and translated lists do not describe the same resources.
    Mismatch,
    /// More memory ranges than BARs.
    TooManyRanges,
    /// An interrupt resource whose level is no IRQL.
    BadInterrupt,
}

impl core::fmt::Display for ResourceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Truncated => "resource list ends inside a descriptor",
            Self::TooMany => "resource list has too many descriptors",
            Self::Mismatch => "raw and translated resource lists differ in shape",
            Self::TooManyRanges => "more memory ranges than a function has BARs",
            Self::BadInterrupt => "interrupt resource with a level above the highest IRQL",
        })
    }
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, ResourceError> {
    let s = b.get(off..off + 2).ok_or(ResourceError::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ResourceError> {
    let s = b.get(off..off + 4).ok_or(ResourceError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ResourceError> {
    Ok(u64::from(u32_at(b, off)?) | (u64::from(u32_at(b, off + 4)?) << 32))
}

/// Bytes of the `CM_RESOURCE_LIST` whose leading bytes `read_u32` reads:
/// walks the counts (each bounded by [`MAX_DESCRIPTORS`]) so the caller can
/// make a slice of exactly the list. `read_u32(off)` reads the le32 at
/// byte `off`.
pub fn resource_list_len(read_u32: impl Fn(usize) -> u32) -> Result<usize, ResourceError> {
    let full = read_u32(0);
    if full > MAX_DESCRIPTORS {
        return Err(ResourceError::TooMany);
    }
    let mut off = 4;
    for _ in 0..full {
        let count = read_u32(off + 12);
        if count > MAX_DESCRIPTORS {
            return Err(ResourceError::TooMany);
        }
        off += FULL_HEADER_BYTES + PARTIAL_DESCRIPTOR_BYTES * count as usize;
    }
    Ok(off)
}

/// One partial descriptor: type, flags, the 16-byte union.
struct Partial<'a> {
    kind: u8,
    share: u8,
    flags: u16,
    u: &'a [u8],
}

fn partials(list: &[u8]) -> Result<alloc::vec::Vec<Partial<'_>>, ResourceError> {
    let full = u32_at(list, 0)?;
    if full > MAX_DESCRIPTORS {
        return Err(ResourceError::TooMany);
    }
    let mut out = alloc::vec::Vec::new();
    let mut off = 4;
    for _ in 0..full {
        let count = u32_at(list, off + 12)?;
        if count > MAX_DESCRIPTORS {
            return Err(ResourceError::TooMany);
        }
        off += FULL_HEADER_BYTES;
        for _ in 0..count {
            let d = list
                .get(off..off + PARTIAL_DESCRIPTOR_BYTES)
                .ok_or(ResourceError::Truncated)?;
            out.push(Partial {
                kind: d[0],
                share: d[1],
                flags: u16_at(d, 2)?,
                u: &d[4..],
            });
            off += PARTIAL_DESCRIPTOR_BYTES;
        }
    }
    Ok(out)
}

fn memory(p: &Partial<'_>) -> Result<Option<(u64, u64)>, ResourceError> {
    let start = u64_at(p.u, 0)?;
    let len = u64::from(u32_at(p.u, 8)?);
    let len = match p.kind {
        CM_RESOURCE_MEMORY => len,
        CM_RESOURCE_MEMORY_LARGE if p.flags & CM_MEMORY_LARGE_40 != 0 => len << 8,
        CM_RESOURCE_MEMORY_LARGE if p.flags & CM_MEMORY_LARGE_48 != 0 => len << 16,
        CM_RESOURCE_MEMORY_LARGE if p.flags & CM_MEMORY_LARGE_64 != 0 => len << 32,
        _ => return Ok(None),
    };
    Ok(Some((start, len)))
}

/// The memory ranges of a raw/translated pair of resource lists, in list
/// order (the two lists are parallel: entry *i* of one is entry *i* of the
/// other).
pub fn parse_resources(raw: &[u8], translated: &[u8]) -> Result<Ranges, ResourceError> {
    let r = partials(raw)?;
    let t = partials(translated)?;
    if r.len() != t.len() {
        return Err(ResourceError::Mismatch);
    }
    let mut out = Ranges::default();
    for (r, t) in r.iter().zip(t.iter()) {
        match (memory(r)?, memory(t)?) {
            (Some((raw, len)), Some((translated, tlen))) => {
                if len != tlen {
                    return Err(ResourceError::Mismatch);
                }
                out.push(MemoryRange {
                    raw,
                    translated,
                    len,
                })?;
            }
            (None, None) => {}
            _ => return Err(ResourceError::Mismatch),
        }
    }
    Ok(out)
}

/// The first interrupt of a translated resource list, if any. A level
/// above `HIGH_LEVEL` (15) is refused (the kernel's list is trusted, but a
/// truncating cast would connect at the wrong IRQL).
pub fn parse_interrupt(translated: &[u8]) -> Result<Option<Interrupt>, ResourceError> {
    let Some(p) = partials(translated)?
        .into_iter()
        .find(|p| p.kind == CM_RESOURCE_INTERRUPT)
    else {
        return Ok(None);
    };
    let level = u16_at(p.u, 0)?;
    let irql = u8::try_from(level)
        .ok()
        .filter(|&l| l <= 15)
        .ok_or(ResourceError::BadInterrupt)?;
    Ok(Some(Interrupt {
        irql,
        group: u16_at(p.u, 2)?,
        vector: u32_at(p.u, 4)?,
        affinity: u64_at(p.u, 8)?,
        latched: p.flags & CM_RESOURCE_INTERRUPT_LATCHED != 0,
        shared: p.share == CM_SHARE_SHARED,
        message: p.flags & CM_RESOURCE_INTERRUPT_MESSAGE != 0,
    }))
}

/// `VIRTIO_PCI_CAP_ISR_CFG` (virtio 1.2 §4.1.4).
const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// PCI capability ID of a vendor-specific capability (virtio's).
const PCI_CAP_ID_VNDR: u8 = 9;

/// Where a virtio PCI function's ISR status byte is (virtio 1.2 §4.1.4.5):
/// the BAR and offset of its `VIRTIO_PCI_CAP_ISR_CFG` capability in the
/// config-space snapshot. The ISR reads that byte itself (it must not wait
/// for the worker that owns the transport). `None`: no capability list or
/// no ISR capability within it (a walk of at most 48 entries, each inside
/// the snapshot).
pub fn virtio_isr(config: &[u8; CONFIG_BYTES]) -> Option<(u8, u32)> {
    const STATUS_CAP_LIST: u8 = 0x10;
    if config[0x06] & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut p = usize::from(config[0x34] & 0xFC);
    for _ in 0..48 {
        if p < 0x40 {
            return None;
        }
        let cap = config.get(p..p + 12)?;
        if cap[0] == PCI_CAP_ID_VNDR && cap[3] == VIRTIO_PCI_CAP_ISR_CFG {
            return Some((
                cap[4],
                u32::from_le_bytes([cap[8], cap[9], cap[10], cap[11]]),
            ));
        }
        p = usize::from(cap[1] & 0xFC);
    }
    None
}

/// ISR status bit: a queue has new used buffers (virtio 1.2 §4.1.4.5).
pub const ISR_QUEUE: u8 = 0x1;
/// ISR status bit: the device configuration changed.
pub const ISR_CONFIG: u8 = 0x2;

/// Whether an ISR status byte, as read (and so cleared) by an ISR on a
/// line-based interrupt, makes the interrupt this function's. Zero is
/// another device on a shared line; any bit besides [`ISR_QUEUE`] and
/// [`ISR_CONFIG`] is not a virtio value (a surprise-removed function reads
/// all-ones) and is not claimed either, so the line's other handlers run.
pub fn isr_is_ours(bits: u8) -> bool {
    bits != 0 && bits & !(ISR_QUEUE | ISR_CONFIG) == 0
}

/// The memory ranges of one function: six at most (one per BAR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ranges {
    items: [MemoryRange; 6],
    n: usize,
}

impl Ranges {
    fn push(&mut self, r: MemoryRange) -> Result<(), ResourceError> {
        let slot = self
            .items
            .get_mut(self.n)
            .ok_or(ResourceError::TooManyRanges)?;
        *slot = r;
        self.n += 1;
        Ok(())
    }

    /// The ranges.
    pub fn as_slice(&self) -> &[MemoryRange] {
        &self.items[..self.n]
    }
}

/// Config space of one function: a snapshot taken at start, with the BAR
/// registers answered from the assigned memory ranges (see the module
/// docs). Reads of another function return all-ones (no device); writes
/// outside the BARs change the snapshot only.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    function: DeviceFunction,
    bytes: [u8; CONFIG_BYTES],
    /// Per BAR register: the range it decodes, found by matching the raw
    /// resource address with the BAR's address in the snapshot.
    bars: [Option<MemoryRange>; 6],
    sizing: [bool; 6],
}

impl SnapshotConfig {
    /// The snapshot `bytes` of `function` and its memory `ranges`. A range
    /// no BAR decodes is ignored; a memory BAR with no range reads as
    /// unassigned (0).
    pub fn new(
        function: DeviceFunction,
        bytes: [u8; CONFIG_BYTES],
        ranges: &[MemoryRange],
    ) -> Self {
        let mut bars = [None; 6];
        let mut i = 0;
        while i < 6 {
            let lo = u32::from_le_bytes(reg(&bytes, BAR0 + 4 * i as u8));
            if lo & 1 != 0 {
                i += 1;
                continue; // I/O BAR: virtio modern uses memory BARs only.
            }
            let is64 = lo & 0b110 == 0b100;
            let mut addr = u64::from(lo & !0xF);
            if is64 && i < 5 {
                addr |= u64::from(u32::from_le_bytes(reg(&bytes, BAR0 + 4 * (i as u8 + 1)))) << 32;
            }
            bars[i] = ranges.iter().copied().find(|r| addr != 0 && r.raw == addr);
            i += if is64 { 2 } else { 1 };
        }
        Self {
            function,
            bytes,
            bars,
            sizing: [false; 6],
        }
    }

    /// The range behind BAR `i`, if one was assigned.
    pub fn bar(&self, i: usize) -> Option<MemoryRange> {
        self.bars.get(i).copied().flatten()
    }

    fn bar_value(&self, i: usize) -> u32 {
        let snap = u32::from_le_bytes(reg(&self.bytes, BAR0 + 4 * i as u8));
        if let Some(r) = self.bars[i] {
            let v = if self.sizing[i] { !(r.len - 1) } else { r.raw };
            return (v as u32 & !0xF) | (snap & 0xF);
        }
        // The upper half of a 64-bit memory BAR.
        if let Some(Some(r)) = i.checked_sub(1).map(|j| self.bars[j]) {
            let lo = u32::from_le_bytes(reg(&self.bytes, BAR0 + 4 * (i as u8 - 1)));
            if lo & 0b111 == 0b100 {
                let v = if self.sizing[i] { !(r.len - 1) } else { r.raw };
                return (v >> 32) as u32;
            }
        }
        if snap & 1 != 0 {
            return snap; // I/O BAR as the hardware shows it; never sized.
        }
        0
    }
}

fn reg(bytes: &[u8; CONFIG_BYTES], off: u8) -> [u8; 4] {
    let o = usize::from(off & !3);
    [bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]
}

fn bar_index(off: u8) -> Option<usize> {
    (BAR0..BAR0 + 24)
        .contains(&off)
        .then(|| usize::from((off - BAR0) / 4))
}

impl ConfigurationAccess for SnapshotConfig {
    fn read_word(&self, device_function: DeviceFunction, register_offset: u8) -> u32 {
        if device_function != self.function {
            return u32::MAX;
        }
        match bar_index(register_offset) {
            Some(i) => self.bar_value(i),
            None => u32::from_le_bytes(reg(&self.bytes, register_offset)),
        }
    }

    fn write_word(&mut self, device_function: DeviceFunction, register_offset: u8, data: u32) {
        if device_function != self.function {
            return;
        }
        if let Some(i) = bar_index(register_offset) {
            // Each register (the two halves of a 64-bit BAR too) is in
            // sizing mode from an all-ones write until the next write.
            self.sizing[i] = data == u32::MAX;
            return;
        }
        let o = usize::from(register_offset & !3);
        self.bytes[o..o + 4].copy_from_slice(&data.to_le_bytes());
    }

    unsafe fn unsafe_clone(&self) -> Self {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;
    use virtio_drivers::transport::pci::bus::{BarInfo, PciRoot};

    /// A `CM_RESOURCE_LIST` of one full descriptor with `parts`
    /// `(type, flags, start, len)`, as the kernel lays it out.
    fn list(parts: &[(u8, u16, u64, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(1u32.to_le_bytes());
        v.extend(5u32.to_le_bytes()); // InterfaceType PCIBus
        v.extend(0u32.to_le_bytes()); // BusNumber
        v.extend(1u16.to_le_bytes());
        v.extend(1u16.to_le_bytes());
        v.extend((parts.len() as u32).to_le_bytes());
        for &(kind, flags, start, len) in parts {
            v.push(kind);
            v.push(1); // CmResourceShareDeviceExclusive
            v.extend(flags.to_le_bytes());
            v.extend(start.to_le_bytes());
            v.extend(len.to_le_bytes());
            v.extend(0u32.to_le_bytes());
        }
        v
    }

    #[test]
    fn memory_ranges_pair_raw_and_translated() {
        // An interrupt, a 4 KiB memory BAR and a 16 KiB 64-bit one as
        // CmResourceTypeMemoryLarge (Length48 = 16 KiB >> 16 ... not whole:
        // use Length40: 0x4000 >> 8 = 0x40).
        let raw = list(&[
            (2, 0, 0, 0),
            (3, 0, 0xfe00_0000, 0x1000),
            (7, CM_MEMORY_LARGE_40, 0x8_0000_0000, 0x40),
        ]);
        let tr = list(&[
            (2, 0, 0, 0),
            (3, 0, 0xfe00_0000, 0x1000),
            (7, CM_MEMORY_LARGE_40, 0x8_0000_0000, 0x40),
        ]);
        let got = parse_resources(&raw, &tr).expect("parse");
        assert_eq!(
            got.as_slice(),
            &[
                MemoryRange {
                    raw: 0xfe00_0000,
                    translated: 0xfe00_0000,
                    len: 0x1000
                },
                MemoryRange {
                    raw: 0x8_0000_0000,
                    translated: 0x8_0000_0000,
                    len: 0x4000
                },
            ]
        );
        let len = resource_list_len(|o| u32::from_le_bytes(raw[o..o + 4].try_into().expect("4")));
        assert_eq!(len, Ok(raw.len()));
    }

    #[test]
    fn the_interrupt_comes_from_the_translated_list() {
        // A shared level-sensitive line: Level (IRQL) 5, Group 0, Vector
        // 0x71, Affinity 0x3, after a memory range.
        let mut u = Vec::new();
        u.extend(5u16.to_le_bytes());
        u.extend(0u16.to_le_bytes());
        u.extend(0x71u32.to_le_bytes());
        let start = u64::from_le_bytes(u[..8].try_into().expect("8"));
        let mut tr = list(&[(3, 0, 0xfe00_0000, 0x1000), (2, 0, start, 3)]);
        let irq_at = 4 + FULL_HEADER_BYTES + PARTIAL_DESCRIPTOR_BYTES;
        tr[irq_at + 1] = CM_SHARE_SHARED;
        assert_eq!(
            parse_interrupt(&tr),
            Ok(Some(Interrupt {
                irql: 5,
                group: 0,
                vector: 0x71,
                affinity: 3,
                latched: false,
                shared: true,
                message: false,
            }))
        );
        // Latched and message-signalled flags are read, not assumed.
        tr[irq_at + 2] = (CM_RESOURCE_INTERRUPT_LATCHED | CM_RESOURCE_INTERRUPT_MESSAGE) as u8;
        let i = parse_interrupt(&tr).expect("parse").expect("an interrupt");
        assert!(i.latched && i.message);
        // No interrupt assigned: polling.
        assert_eq!(
            parse_interrupt(&list(&[(3, 0, 0xfe00_0000, 0x1000)])),
            Ok(None)
        );
        // A level that is no IRQL.
        tr[irq_at + 4] = 16;
        assert_eq!(parse_interrupt(&tr), Err(ResourceError::BadInterrupt));
    }

    #[test]
    fn the_isr_capability_is_found_in_config_space() {
        let mut cfg = [0u8; CONFIG_BYTES];
        cfg[0x06] = 0x10;
        cfg[0x34] = 0x40;
        // A common-config capability, then ISR in BAR 2 at 0x3000.
        cfg[0x40..0x50].copy_from_slice(&[9, 0x50, 16, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0x38, 0, 0, 0]);
        cfg[0x50..0x60].copy_from_slice(&[9, 0, 16, 3, 2, 0, 0, 0, 0, 0x30, 0, 0, 4, 0, 0, 0]);
        assert_eq!(virtio_isr(&cfg), Some((2, 0x3000)));
        // Without the capability-list status bit, or in a loop, none.
        let mut no_list = cfg;
        no_list[0x06] = 0;
        assert_eq!(virtio_isr(&no_list), None);
        let mut looped = cfg;
        looped[0x53] = 1;
        looped[0x51] = 0x40;
        assert_eq!(virtio_isr(&looped), None);
    }

    #[test]
    fn bad_lists_are_refused() {
        let raw = list(&[(3, 0, 0xfe00_0000, 0x1000)]);
        assert_eq!(
            parse_resources(&raw[..raw.len() - 1], &raw),
            Err(ResourceError::Truncated)
        );
        let other = list(&[(3, 0, 0xfe00_0000, 0x2000)]);
        assert_eq!(parse_resources(&raw, &other), Err(ResourceError::Mismatch));
        let io = list(&[(1, 0, 0xc000, 0x20)]);
        assert_eq!(parse_resources(&raw, &io), Err(ResourceError::Mismatch));
        let mut many = raw.clone();
        many[0..4].copy_from_slice(&(MAX_DESCRIPTORS + 1).to_le_bytes());
        assert_eq!(parse_resources(&many, &many), Err(ResourceError::TooMany));
        assert_eq!(
            resource_list_len(|o| u32::from_le_bytes(many[o..o + 4].try_into().expect("4"))),
            Err(ResourceError::TooMany)
        );
        let seven: Vec<_> = (0..7)
            .map(|i| (3u8, 0u16, 0x1000 * (i + 1), 0x1000u32))
            .collect();
        let seven = list(&seven);
        assert_eq!(
            parse_resources(&seven, &seven),
            Err(ResourceError::TooManyRanges)
        );
    }

    #[test]
    fn virtio_drivers_sizes_bars_from_the_resources() {
        let f = DeviceFunction {
            bus: 0,
            device: 3,
            function: 0,
        };
        let mut cfg = [0u8; CONFIG_BYTES];
        cfg[0..4].copy_from_slice(&0x1045_1af4u32.to_le_bytes());
        // BAR1: 32-bit memory at 0xfe001000; BAR4/5: 64-bit prefetchable.
        cfg[0x14..0x18].copy_from_slice(&0xfe00_1000u32.to_le_bytes());
        cfg[0x20..0x24].copy_from_slice(&0x0000_000cu32.to_le_bytes());
        cfg[0x24..0x28].copy_from_slice(&0x8u32.to_le_bytes());
        let ranges = [
            MemoryRange {
                raw: 0xfe00_1000,
                translated: 0xfe00_1000,
                len: 0x1000,
            },
            MemoryRange {
                raw: 0x8_0000_0000,
                translated: 0x8_0000_0000,
                len: 0x4000,
            },
        ];
        let snap = SnapshotConfig::new(f, cfg, &ranges);
        assert_eq!(snap.bar(1), Some(ranges[0]));
        assert_eq!(snap.bar(4), Some(ranges[1]));
        assert_eq!(snap.read_word(f, 0), 0x1045_1af4);
        let other = DeviceFunction {
            bus: 0,
            device: 4,
            function: 0,
        };
        assert_eq!(snap.read_word(other, 0), u32::MAX);
        let mut root = PciRoot::new(snap);
        match root.bar_info(f, 1).expect("bar 1") {
            Some(BarInfo::Memory { address, size, .. }) => {
                assert_eq!((address, size), (0xfe00_1000, 0x1000))
            }
            other => panic!("BAR1 read as {other:?}"),
        }
        match root.bar_info(f, 4).expect("bar 4") {
            Some(BarInfo::Memory {
                address,
                size,
                prefetchable,
                ..
            }) => {
                assert_eq!((address, size, prefetchable), (0x8_0000_0000, 0x4000, true))
            }
            other => panic!("BAR4 read as {other:?}"),
        }
        // Sizing left the emulated BAR as it was.
        assert_eq!(
            root.bar_info(f, 1).expect("again"),
            root.bar_info(f, 1).expect("again")
        );
    }

    #[test]
    fn isr_claims_only_virtio_status_values() {
        assert!(!isr_is_ours(0), "an idle function on a shared line");
        assert!(isr_is_ours(ISR_QUEUE));
        assert!(isr_is_ours(ISR_CONFIG));
        assert!(isr_is_ours(ISR_QUEUE | ISR_CONFIG));
        assert!(!isr_is_ours(0xFF), "a removed function reads all-ones");
        for bits in 4..=u8::MAX {
            assert!(!isr_is_ours(bits), "{bits:#x}");
        }
    }
}
