//! StorPort's SRB fields in and out of `pv-blk-windows`' plain types. No
//! decision is made here: this only reads a `SCSI_REQUEST_BLOCK` into
//! [`SrbIn`] / [`SrbCtx`] / the CDB, and writes a [`Completion`] back
//! (status, transferred length, in-place data, autosense). Host-tested.

use pv_blk_windows::srb::{function, Address};
use pv_blk_windows::srb_ex::{self, SrbEx};
use pv_blk_windows::{Completion, Direction, SrbCtx, SrbIn};
use pv_windows::storport::SCSI_REQUEST_BLOCK;

/// The SRB in plain types. For `SRB_FUNCTION_PNP` the `PnPAction` (at
/// offset 8 of a `SCSI_PNP_REQUEST_BLOCK`, where a classic SRB keeps
/// `QueueTag`..`SenseInfoBufferLength`) and `SrbPnPFlags` (where it keeps
/// `InternalStatus`); for `SRB_FUNCTION_POWER` the `DevicePowerState` (at
/// offset 8 too).
pub fn srb_in(srb: &SCSI_REQUEST_BLOCK) -> SrbIn {
    let at8 = u32::from_le_bytes([
        srb.QueueTag,
        srb.QueueAction,
        srb.CdbLength,
        srb.SenseInfoBufferLength,
    ]);
    let f = u32::from(srb.Function);
    let (action, action_flags) = match f {
        function::PNP => (at8, srb.InternalStatus),
        function::POWER => (at8, 0),
        _ => (0, 0),
    };
    SrbIn {
        function: f,
        address: Address {
            path: srb.PathId,
            target: srb.TargetId,
            lun: srb.Lun,
        },
        flags: srb.SrbFlags,
        action,
        action_flags,
    }
}

/// Where the SRB's sense goes and its flags.
pub fn ctx(srb: &SCSI_REQUEST_BLOCK) -> SrbCtx {
    let sense_room = if srb.SenseInfoBuffer.is_null() {
        0
    } else {
        u32::from(srb.SenseInfoBufferLength)
    };
    SrbCtx {
        sense_room,
        flags: srb.SrbFlags,
    }
}

/// The CDB: `CdbLength` bytes, at most the 16 the SRB holds.
pub fn cdb(srb: &SCSI_REQUEST_BLOCK) -> &[u8] {
    &srb.Cdb[..usize::from(srb.CdbLength).min(srb.Cdb.len())]
}

/// Data direction from the SRB's flags.
pub fn direction(srb: &SCSI_REQUEST_BLOCK) -> Direction {
    Direction::from_srb_flags(srb.SrbFlags)
}

/// Write `c` into the SRB: in-place data into `data` (the SRB's data
/// buffer), `SrbStatus`, `ScsiStatus`, `DataTransferLength`, and the sense
/// bytes into `sense` (the SRB's sense buffer) with
/// `SenseInfoBufferLength` set to what was copied.
pub fn apply(
    srb: &mut SCSI_REQUEST_BLOCK,
    c: &Completion,
    data: Option<&mut [u8]>,
    sense: Option<&mut [u8]>,
) {
    let mut transferred = c.transferred;
    if let Some(r) = c.data {
        let bytes = r.bytes();
        match data {
            Some(d) if d.len() >= bytes.len() => d[..bytes.len()].copy_from_slice(bytes),
            // The decision truncates to the buffer; a missing buffer means
            // nothing moved.
            _ => transferred = 0,
        }
    }
    srb.SrbStatus = c.srb_status;
    srb.ScsiStatus = c.scsi_status;
    srb.DataTransferLength = transferred;
    let room = u32::from(srb.SenseInfoBufferLength);
    if let (Some((bytes, n)), Some(s)) = (c.sense_bytes(room), sense) {
        let n = n.min(s.len());
        s[..n].copy_from_slice(&bytes[..n]);
        srb.SenseInfoBufferLength = n as u8;
    }
}

/// [`apply`] for an SRB_EX: `srb` is its `SrbLength` bytes, which
/// [`srb_ex::parse`] decoded into `ex`. In-place data into `data`, the
/// sense bytes into `sense` (the CDB block's buffer, at most its room),
/// then `SrbStatus`, `DataTransferLength`, `ScsiStatus` and
/// `SenseInfoBufferLength` into the SRB.
pub fn apply_ex(
    srb: &mut [u8],
    ex: &SrbEx,
    c: &Completion,
    data: Option<&mut [u8]>,
    sense: Option<&mut [u8]>,
) {
    let mut c = *c;
    if let Some(r) = c.data {
        let bytes = r.bytes();
        match data {
            Some(d) if d.len() >= bytes.len() => d[..bytes.len()].copy_from_slice(bytes),
            _ => c.transferred = 0,
        }
    }
    let room = ex.scsi.map_or(0, |s| u32::from(s.sense_room));
    let mut copied = 0u8;
    if let (Some((bytes, n)), Some(s)) = (c.sense_bytes(room), sense) {
        let n = n.min(s.len());
        s[..n].copy_from_slice(&bytes[..n]);
        copied = n as u8;
    }
    srb_ex::write_completion(srb, ex, &c, copied);
}

/// Bytes of `STOR_DEVICE_CAPABILITIES_EX` (`storport.h`): `Version`,
/// `Size`, the flag bits, `Address`, `UINumber`, `Reserved1[2]`.
pub const DEVICE_CAPABILITIES_EX_BYTES: usize = 24;
/// `STOR_DEVICE_CAPABILITIES_EX` bit `Removable` (in the ULONG at 4).
const CAP_REMOVABLE: u32 = 1 << 4;
/// Bit `SurpriseRemovalOK`.
const CAP_SURPRISE_REMOVAL_OK: u32 = 1 << 9;

/// Fill the `STOR_DEVICE_CAPABILITIES_EX` of a QUERY_CAPABILITIES SRB
/// (its data buffer). False when the buffer is too short.
pub fn capabilities(buf: &mut [u8], removable: bool, surprise_removal_ok: bool) -> bool {
    let Some(flags) = buf.get_mut(4..8) else {
        return false;
    };
    let mut v = u32::from_le_bytes([flags[0], flags[1], flags[2], flags[3]]);
    v &= !(CAP_REMOVABLE | CAP_SURPRISE_REMOVAL_OK);
    if removable {
        v |= CAP_REMOVABLE;
    }
    if surprise_removal_ok {
        v |= CAP_SURPRISE_REMOVAL_OK;
    }
    flags.copy_from_slice(&v.to_le_bytes());
    true
}

/// Page size of the guest (x86-64).
pub const PAGE: usize = 4096;

/// Cut the buffer `[start, start + len)` into runs whose pages are
/// physically contiguous, given `phys(va)` (the physical address of the
/// byte at `va`; the driver asks `MmGetPhysicalAddress`, which may be
/// called at any IRQL). Each run is written to `out` as (virtual start,
/// bytes); returns how many, or `None` when `out` is too short. The device
/// is then handed every run in place: nothing is bounced, so nothing is
/// allocated on the I/O path.
pub fn contiguous_runs(
    start: usize,
    len: usize,
    phys: impl Fn(usize) -> u64,
    out: &mut [(usize, usize)],
) -> Option<usize> {
    let mut n = 0;
    let mut at = start;
    let end = start.checked_add(len)?;
    while at < end {
        let run_start = at;
        let base = phys(at);
        // To the end of this page, then page by page while contiguous.
        at = (at / PAGE + 1).saturating_mul(PAGE).min(end);
        while at < end && phys(at) == base.wrapping_add((at - run_start) as u64) {
            at = (at + PAGE).min(end);
        }
        *out.get_mut(n)? = (run_start, at - run_start);
        n += 1;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::ptr;
    use pv_blk_windows::sense::{parse_fixed, Asc, Sense};
    use pv_blk_windows::srb::{flags, pnp, power, scsi_status, status};
    use pv_blk_windows::{decide_srb, Decision, Disk, Identity, ScsiRequest, SrbAction};

    fn srb(function: u8) -> SCSI_REQUEST_BLOCK {
        SCSI_REQUEST_BLOCK {
            Length: 0x58,
            Function: function,
            SrbStatus: 0,
            ScsiStatus: 0,
            PathId: 0,
            TargetId: 0,
            Lun: 0,
            QueueTag: 0,
            QueueAction: 0,
            CdbLength: 0,
            SenseInfoBufferLength: 0,
            SrbFlags: 0,
            DataTransferLength: 0,
            TimeOutValue: 10,
            DataBuffer: ptr::null_mut(),
            SenseInfoBuffer: ptr::null_mut(),
            NextSrb: ptr::null_mut(),
            OriginalRequest: ptr::null_mut(),
            SrbExtension: ptr::null_mut(),
            InternalStatus: 0,
            Reserved: 0,
            Cdb: [0; 16],
        }
    }

    #[test]
    fn pnp_and_power_fields_are_read_where_their_srbs_keep_them() {
        let mut s = srb(function::PNP as u8);
        // PnPAction = QUERY_CAPABILITIES at offset 8, SrbPnPFlags at 0x40.
        s.QueueTag = pnp::QUERY_CAPABILITIES as u8;
        s.InternalStatus = pnp::FLAGS_ADAPTER_REQUEST;
        let i = srb_in(&s);
        assert_eq!((i.action, i.action_flags), (pnp::QUERY_CAPABILITIES, 1));
        // An adapter request is not the unit's: no capabilities to fill.
        assert_eq!(decide_srb(&i, true), SrbAction::Complete(status::SUCCESS));
        s.InternalStatus = 0;
        assert!(matches!(
            decide_srb(&srb_in(&s), true),
            SrbAction::Capabilities { .. }
        ));
        let mut p = srb(function::POWER as u8);
        p.QueueTag = power::D3 as u8;
        assert_eq!(decide_srb(&srb_in(&p), true), SrbAction::Flush);
        p.QueueTag = power::D0 as u8;
        assert_eq!(
            decide_srb(&srb_in(&p), true),
            SrbAction::Complete(status::SUCCESS)
        );
    }

    #[test]
    fn the_cdb_is_cut_at_its_length_and_at_sixteen() {
        let mut s = srb(0);
        s.Cdb[..10].copy_from_slice(&[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]);
        s.CdbLength = 10;
        assert_eq!(cdb(&s).len(), 10);
        s.CdbLength = 200;
        assert_eq!(cdb(&s).len(), 16);
    }

    #[test]
    fn a_check_condition_lands_in_the_sense_buffer() {
        let mut s = srb(0);
        let mut sense = [0u8; 32];
        s.SenseInfoBuffer = sense.as_mut_ptr().cast();
        s.SenseInfoBufferLength = 32;
        let x = ctx(&s);
        assert_eq!(x.sense_room, 32);
        let c = Completion::check(Sense::invalid_opcode(), x.sense_room, x.flags);
        apply(&mut s, &c, None, Some(&mut sense));
        assert_eq!(s.SrbStatus, status::ERROR | status::AUTOSENSE_VALID);
        assert_eq!(s.ScsiStatus, scsi_status::CHECK_CONDITION);
        assert_eq!(s.SenseInfoBufferLength, 18);
        assert_eq!(parse_fixed(&sense[..18]), Some((0x05, Asc::INVALID_OPCODE)));
        // Without a sense buffer there is no autosense.
        let mut s = srb(0);
        s.SenseInfoBufferLength = 32;
        assert_eq!(ctx(&s).sense_room, 0);
    }

    #[test]
    fn in_place_data_is_copied_and_its_length_reported() {
        let disk = Disk::new(
            pv_blk::DeviceInfo {
                capacity_sectors: 2048,
                block_size: 512,
                ..pv_blk::DeviceInfo::default()
            },
            Identity::default(),
            65536,
        );
        let req = ScsiRequest {
            cdb: &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            data_len: 8,
            direction: Direction::In,
            data_out: &[],
        };
        let d = pv_blk_windows::decide(&disk, &req);
        assert!(matches!(d, Decision::Data(_)));
        let c = pv_blk_windows::srb::immediate(&d, 0, flags::DATA_IN).expect("immediate");
        let mut s = srb(0);
        s.DataTransferLength = 8;
        let mut buf = [0xAAu8; 8];
        apply(&mut s, &c, Some(&mut buf), None);
        assert_eq!(s.SrbStatus, status::SUCCESS);
        assert_eq!(s.DataTransferLength, 8);
        assert_eq!(buf, [0, 0, 0x07, 0xFF, 0, 0, 0x02, 0x00]);
        // No buffer: nothing moved, and the SRB says so.
        let mut s = srb(0);
        apply(&mut s, &c, None, None);
        assert_eq!(s.DataTransferLength, 0);
    }

    #[test]
    fn an_srb_ex_check_condition_lands_in_its_cdb_block_and_sense_buffer() {
        use pv_blk_windows::srb_ex::build::{srb as srb_ex_bytes, Block};
        let mut sense = [0u8; 32];
        let mut b = srb_ex_bytes(
            function::EXECUTE_SCSI,
            0,
            Address::default(),
            (0, 0),
            &[Block::Cdb16(std::vec![0xFF; 6], 32, 0x1000)],
        );
        let ex = srb_ex::parse(&b).expect("parse");
        let x = ex.ctx();
        let c = Completion::check(Sense::invalid_opcode(), x.sense_room, x.flags);
        apply_ex(&mut b, &ex, &c, None, Some(&mut sense));
        let s = ex.scsi.expect("cdb block");
        assert_eq!(b[3], status::ERROR | status::AUTOSENSE_VALID);
        assert_eq!(b[s.scsi_status_at()], scsi_status::CHECK_CONDITION);
        assert_eq!(b[s.sense_length_at()], 18);
        assert_eq!(parse_fixed(&sense[..18]), Some((0x05, Asc::INVALID_OPCODE)));
        // In-place data into the data buffer, its length into the header.
        let c = Completion::good(0);
        let mut data = [0u8; 4];
        apply_ex(&mut b, &ex, &c, Some(&mut data), None);
        assert_eq!(b[3], status::SUCCESS);
        assert_eq!(b[s.sense_length_at()], 0);
    }

    #[test]
    fn capabilities_set_exactly_the_two_bits() {
        let mut b = [0xFFu8; DEVICE_CAPABILITIES_EX_BYTES];
        assert!(capabilities(&mut b, false, true));
        let v = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        assert_eq!(v & CAP_REMOVABLE, 0);
        assert_ne!(v & CAP_SURPRISE_REMOVAL_OK, 0);
        assert_eq!(v | CAP_REMOVABLE, u32::MAX, "other bits untouched");
        assert!(!capabilities(&mut [0u8; 6], false, true));
    }

    #[test]
    fn runs_follow_physical_contiguity() {
        // Pages 0 and 1 contiguous, page 2 elsewhere, page 3 after page 2.
        let map = |va: usize| -> u64 {
            let page = va / PAGE;
            let off = (va % PAGE) as u64;
            let base = match page {
                10 => 0x10_0000,
                11 => 0x10_1000,
                12 => 0x50_0000,
                13 => 0x50_1000,
                _ => 0x90_0000 + (page as u64) * 0x2000,
            };
            base + off
        };
        let mut out = [(0, 0); 4];
        // From the middle of page 10 to the middle of page 13.
        let start = 10 * PAGE + 100;
        let len = 3 * PAGE;
        assert_eq!(contiguous_runs(start, len, map, &mut out), Some(2));
        assert_eq!(out[0], (start, 2 * PAGE - 100));
        assert_eq!(out[1], (12 * PAGE, PAGE + 100));
        // Pages that are all apart: one run each.
        let start = 20 * PAGE;
        assert_eq!(contiguous_runs(start, 3 * PAGE, map, &mut out), Some(3));
        assert_eq!(out[2], (22 * PAGE, PAGE));
        // A single byte, and nothing.
        assert_eq!(contiguous_runs(start + 5, 1, map, &mut out), Some(1));
        assert_eq!(out[0], (start + 5, 1));
        assert_eq!(contiguous_runs(start, 0, map, &mut out), Some(0));
        // Too many runs for the room.
        assert_eq!(contiguous_runs(20 * PAGE, 5 * PAGE, map, &mut out), None);
    }
}
