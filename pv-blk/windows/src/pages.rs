//! Data the miniport produces itself: standard INQUIRY, the VPD pages,
//! MODE SENSE, READ CAPACITY, REPORT LUNS and REQUEST SENSE. Each builder
//! returns the whole response; [`crate::cdb`] truncates it.

use crate::cdb::Reply;
use crate::disk::{Disk, MAX_UNMAP_DESCRIPTORS};
use crate::sense::{Asc, FieldPointer, Sense, SenseKey};

/// VPD pages served, in the order of the Supported VPD Pages page.
pub const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

/// Standard INQUIRY data (SPC-4), 36 bytes.
pub fn standard_inquiry(disk: &Disk) -> Reply {
    let id = &disk.identity;
    let mut r = Reply::new();
    r.put(&[
        0x00, // peripheral qualifier 0, direct-access block device
        0x00, // RMB = 0: not removable
        0x06, // VERSION: SPC-4
        0x12, // HISUP = 1, RESPONSE DATA FORMAT = 2
        31,   // ADDITIONAL LENGTH (36 - 5)
        0x00, // PROTECT = 0, 3PC = 0
        0x00, 0x02, // CMDQUE = 1
    ]);
    r.put(&id.vendor);
    r.put(&id.product);
    r.put(&id.revision);
    r
}

/// A VPD page (SPC-4), or `None` when not served.
pub fn vpd(disk: &Disk, page: u8) -> Option<Reply> {
    let mut r = Reply::new();
    r.put(&[0x00, page, 0, 0]);
    match page {
        // Supported VPD Pages.
        0x00 => {
            for p in VPD_PAGES {
                if p != 0x80 || disk.identity.serial.is_some() {
                    r.put(&[p]);
                }
            }
        }
        // Unit Serial Number, from virtio-blk GET_ID.
        0x80 => r.put(disk.identity.serial?.as_bytes()),
        // Device Identification: one T10 vendor ID based designator
        //, ASCII, associated with the logical unit: vendor +
        // product + serial. Without a serial it names the product only.
        0x83 => {
            let serial = disk.identity.serial;
            let sn = serial.as_ref().map(|s| s.as_bytes()).unwrap_or(&[]);
            let dlen = 8 + 16 + sn.len();
            r.put(&[0x02, 0x01, 0x00, dlen as u8]);
            r.put(&disk.identity.vendor);
            r.put(&disk.identity.product);
            r.put(sn);
        }
        // SBC-3 Block Limits.
        0xB0 => {
            let mut p = [0u8; 0x3C];
            p[0] = 0x01; // WSNZ: WRITE SAME of 0 blocks refused
            p[4..8].copy_from_slice(&disk.max_transfer_blocks.to_be_bytes());
            let unmap = disk.max_unmap_blocks();
            if disk.can_unmap() {
                p[16..20].copy_from_slice(&unmap.to_be_bytes());
                p[20..24].copy_from_slice(&(MAX_UNMAP_DESCRIPTORS as u32).to_be_bytes());
                p[24..28].copy_from_slice(&1u32.to_be_bytes()); // granularity
            }
            if disk.can_write_same() {
                p[32..40].copy_from_slice(&u64::from(unmap).to_be_bytes());
            }
            r.put(&p);
        }
        // SBC-3 Block Device Characteristics.
        0xB1 => {
            let mut p = [0u8; 0x3C];
            p[0..2].copy_from_slice(&disk.identity.rotation_rate.to_be_bytes());
            r.put(&p);
        }
        // SBC-3 Logical Block Provisioning. LBPRZ = 0: the core's
        // discard does not promise zeroes on read.
        0xB2 => {
            let mut b = 0u8;
            if disk.can_unmap() {
                b |= 0x80; // LBPU
            }
            if disk.can_write_same() {
                b |= 0x40 | 0x20; // LBPWS, LBPWS10
            }
            let ptype = if disk.can_unmap() { 0x02 } else { 0x00 }; // thin : full
            r.put(&[0x00, b, ptype, 0x00]);
        }
        _ => return None,
    }
    let n = (r.len() - 4) as u16;
    r.bytes_mut()[2..4].copy_from_slice(&n.to_be_bytes());
    Some(r)
}

/// MODE SENSE fields of the CDB.
#[derive(Clone, Copy, Debug)]
pub struct ModeSense {
    /// MODE SENSE(10) (else 6).
    pub ten: bool,
    /// DBD: no block descriptor.
    pub dbd: bool,
    /// LLBAA (10 only): long LBA block descriptor allowed.
    pub llbaa: bool,
    /// PAGE CONTROL.
    pub pc: u8,
    /// PAGE CODE.
    pub page: u8,
    /// SUBPAGE CODE.
    pub subpage: u8,
}

/// MODE SENSE(6)/(10) (SPC-4): header, one block descriptor
/// unless DBD, and the Caching mode page (SBC-3) for page 08h or
/// 3Fh (all pages). WCE reports the volatile cache; nothing is changeable
/// (no MODE SELECT), saved values are not supported.
pub fn mode_sense(disk: &Disk, m: ModeSense) -> Result<Reply, Sense> {
    if m.pc == 3 {
        return Err(Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::SAVING_PARAMETERS_NOT_SUPPORTED,
            field: Some(FieldPointer {
                in_cdb: true,
                byte: 2,
                bit: Some(7),
            }),
        });
    }
    match (m.page, m.subpage) {
        (0x08, 0x00) | (0x3F, 0x00) | (0x3F, 0xFF) => {}
        (0x08 | 0x3F, _) => return Err(Sense::invalid_cdb(3, None)),
        _ => return Err(Sense::invalid_cdb(2, Some(5))),
    }
    let blocks = disk.capacity_blocks();
    let bl = disk.block_bytes();
    let long = m.llbaa && blocks > u64::from(u32::MAX);
    let desc_len: usize = match (m.dbd, long) {
        (true, _) => 0,
        (false, true) => 16,
        (false, false) => 8,
    };
    // DEVICE-SPECIFIC PARAMETER (SBC-3): WP, DPOFUA (FUA honoured).
    let dsp = 0x10
        | if disk.info.features.read_only {
            0x80
        } else {
            0
        };
    let mut r = Reply::new();
    if m.ten {
        r.put(&[0, 0, 0x00, dsp, u8::from(long), 0]);
        r.put(&(desc_len as u16).to_be_bytes());
    } else {
        r.put(&[0, 0x00, dsp, desc_len as u8]);
    }
    if desc_len == 16 {
        r.put(&blocks.to_be_bytes());
        r.put(&[0, 0, 0, 0]);
        r.put(&bl.to_be_bytes());
    } else if desc_len == 8 {
        let short = u32::try_from(blocks).unwrap_or(u32::MAX);
        r.put(&short.to_be_bytes());
        r.put(&bl.to_be_bytes()); // byte 4 reserved: the high byte of a <2^24 length
    }
    let mut caching = [0u8; 20];
    caching[0] = 0x08;
    caching[1] = 0x12;
    if m.pc != 1 && disk.write_cache() {
        caching[2] = 0x04; // WCE
    }
    r.put(&caching);
    // MODE DATA LENGTH excludes itself.
    let total = r.len();
    if m.ten {
        let n = (total - 2) as u16;
        r.bytes_mut()[0..2].copy_from_slice(&n.to_be_bytes());
    } else {
        r.bytes_mut()[0] = (total - 1) as u8;
    }
    Ok(r)
}

fn no_medium(disk: &Disk) -> Result<u64, Sense> {
    match disk.capacity_blocks() {
        0 => Err(Sense::new(SenseKey::NotReady, Asc::MEDIUM_NOT_PRESENT)),
        n => Ok(n - 1),
    }
}

/// READ CAPACITY(10) (SBC-3): last LBA (FFFFFFFFh when it does not
/// fit: use READ CAPACITY(16)) and block length. A disk of zero blocks has
/// no last LBA: NOT READY, MEDIUM NOT PRESENT.
pub fn read_capacity_10(disk: &Disk) -> Result<Reply, Sense> {
    let last = no_medium(disk)?;
    let mut r = Reply::new();
    r.put(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
    r.put(&disk.block_bytes().to_be_bytes());
    Ok(r)
}

/// READ CAPACITY(16) (SBC-3), 32 bytes; LBPME when UNMAP is offered.
pub fn read_capacity_16(disk: &Disk) -> Result<Reply, Sense> {
    let last = no_medium(disk)?;
    let mut r = Reply::new();
    r.put(&last.to_be_bytes());
    r.put(&disk.block_bytes().to_be_bytes());
    let lbpme = if disk.can_unmap() { 0x80 } else { 0 };
    let mut rest = [0u8; 20];
    rest[2] = lbpme;
    r.put(&rest);
    Ok(r)
}

/// REPORT LUNS (SPC-4): LUN 0 only.
pub fn report_luns() -> Reply {
    let mut r = Reply::new();
    r.put(&8u32.to_be_bytes());
    r.put(&[0u8; 12]);
    r
}

/// REQUEST SENSE (SPC-4): errors are reported by autosense, so there
/// is never a pending one: NO SENSE.
pub fn request_sense() -> Reply {
    let mut r = Reply::new();
    r.put(&Sense::new(SenseKey::NoSense, Asc::NONE).to_fixed());
    r
}
