//! What the miniport tells Windows about the disk: geometry from the block
//! core's [`DeviceInfo`], identity strings, the serial number read with
//! virtio-blk GET_ID, and the limits it advertises (Block Limits VPD page)
//! and then enforces on every command.

use pv_blk::{DeviceInfo, ID_BYTES, SECTOR_SIZE};

/// Most UNMAP block descriptors one UNMAP may carry (advertised as MAXIMUM
/// UNMAP BLOCK DESCRIPTOR COUNT; each descriptor becomes one core discard,
/// submitted one after another).
pub const MAX_UNMAP_DESCRIPTORS: usize = 16;

/// A unit serial number: printable ASCII, at most [`ID_BYTES`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serial {
    bytes: [u8; ID_BYTES],
    len: u8,
}

impl Serial {
    /// From the [`ID_BYTES`] a GET_ID returned (device-written: untrusted).
    /// The id ends at the first NUL (virtio 1.2, device ID: NUL-padded when
    /// shorter); bytes that are not printable ASCII (SPC-4 requires
    /// ASCII for the PRODUCT SERIAL NUMBER) become `_`. `None` when empty.
    pub fn from_get_id(id: &[u8; ID_BYTES]) -> Option<Self> {
        let len = id.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
        if len == 0 {
            return None;
        }
        let mut bytes = [0u8; ID_BYTES];
        for (d, &s) in bytes.iter_mut().zip(&id[..len]) {
            *d = if (0x20..=0x7E).contains(&s) { s } else { b'_' };
        }
        Some(Self {
            bytes,
            len: len as u8,
        })
    }

    /// The serial's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Identity strings of standard INQUIRY (SPC-4) and the T10 vendor
/// designator; space padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// T10 VENDOR IDENTIFICATION.
    pub vendor: [u8; 8],
    /// PRODUCT IDENTIFICATION.
    pub product: [u8; 16],
    /// PRODUCT REVISION LEVEL.
    pub revision: [u8; 4],
    /// From GET_ID; without it there is no Unit Serial Number page and the
    /// device identification carries vendor and product only.
    pub serial: Option<Serial>,
    /// MEDIUM ROTATION RATE of the Block Device Characteristics page: 0 not
    /// reported, 1 non-rotating. The host knows its backing store; the
    /// driver passes what it was configured with.
    pub rotation_rate: u16,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            vendor: *b"PVDRIVER",
            product: *b"PV BLOCK DEVICE ",
            revision: *b"0001",
            serial: None,
            rotation_rate: 0,
        }
    }
}

/// The disk as the SCSI decisions see it. Built once per (re)start of the
/// device from what the core reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Geometry and features from the core.
    pub info: DeviceInfo,
    /// Identity strings and serial.
    pub identity: Identity,
    /// Largest READ/WRITE in logical blocks (MAXIMUM TRANSFER LENGTH).
    pub max_transfer_blocks: u32,
}

impl Disk {
    /// A disk from the core's `info`, with reads and writes of at most
    /// `max_transfer_bytes` (what the driver's scatter-gather lists and the
    /// core's segments allow; the driver also gives it to StorPort as
    /// `MaximumTransferLength`). At least one block is always allowed.
    pub fn new(info: DeviceInfo, identity: Identity, max_transfer_bytes: u32) -> Self {
        let mut d = Self {
            info,
            identity,
            max_transfer_blocks: 1,
        };
        d.max_transfer_blocks = (max_transfer_bytes / d.block_bytes()).max(1);
        d
    }

    /// 512-byte sectors per logical block (the core's rule: block_size / 512,
    /// at least 1).
    pub fn sectors_per_block(&self) -> u32 {
        (self.info.block_size / SECTOR_SIZE as u32).max(1)
    }

    /// Logical block length in bytes.
    pub fn block_bytes(&self) -> u32 {
        self.sectors_per_block() * SECTOR_SIZE as u32
    }

    /// Capacity in logical blocks (whole blocks only).
    pub fn capacity_blocks(&self) -> u64 {
        self.info.capacity_sectors / u64::from(self.sectors_per_block())
    }

    /// Largest discard / write-zeroes the core accepts, in logical blocks:
    /// the device's limit (0 means none known) capped so the sector count
    /// fits the core's `u32`.
    pub fn max_unmap_blocks(&self) -> u32 {
        let sectors = match self.info.max_discard_sectors {
            0 => u32::MAX,
            n => n,
        };
        sectors / self.sectors_per_block()
    }

    /// Writes durable only after a flush: the cache is volatile (WCE = 1).
    pub fn write_cache(&self) -> bool {
        self.info.features.flush
    }

    /// UNMAP is offered (LBPU). On a read-only disk it is still decoded and
    /// refused with DATA PROTECT, like every write.
    pub fn can_unmap(&self) -> bool {
        self.info.features.discard
    }

    /// WRITE SAME of zeroes is offered (LBPWS, LBPWS10).
    pub fn can_write_same(&self) -> bool {
        self.info.features.write_zeroes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_from_get_id_is_cut_at_nul_and_printable() {
        let mut id = [0u8; ID_BYTES];
        id[..6].copy_from_slice(b"ab\x01c\xffd");
        let s = Serial::from_get_id(&id).expect("serial");
        assert_eq!(s.as_bytes(), b"ab_c_d");
        // All 20 bytes used: no NUL needed.
        let full = [b'x'; ID_BYTES];
        assert_eq!(
            Serial::from_get_id(&full).map(|s| s.as_bytes().len()),
            Some(ID_BYTES)
        );
        // An empty id is no serial.
        assert_eq!(Serial::from_get_id(&[0u8; ID_BYTES]), None);
    }

    #[test]
    fn limits_follow_the_block_size_and_the_device() {
        let info = DeviceInfo {
            capacity_sectors: 8 * 1001, // a partial 4K block at the end
            block_size: 4096,
            max_discard_sectors: 0,
            ..DeviceInfo::default()
        };
        let d = Disk::new(info, Identity::default(), 1000);
        assert_eq!(d.capacity_blocks(), 1001);
        assert_eq!(d.block_bytes(), 4096);
        assert_eq!(d.max_transfer_blocks, 1, "at least one block");
        assert_eq!(
            d.max_unmap_blocks(),
            u32::MAX / 8,
            "sectors fit the core's u32"
        );
    }
}
