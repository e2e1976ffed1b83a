//! Fuzz driver for the CDB decisions, shared by the cargo-fuzz target
//! (`pv-blk/windows/fuzz/`) and a short deterministic run in the test
//! suite (`tests/fuzz_smoke.rs`).
//!
//! One input is one command: a disk (features, capacity, block size,
//! transfer limit), a CDB, the SRB's buffer length and direction, and the
//! data-out bytes. [`cdb`] decides it, then checks the outcome:
//!
//! - never a panic;
//! - CHECK CONDITION carries a sense key this miniport reports, and its
//!   fixed-format bytes parse back;
//! - data produced in place fits the SRB's buffer and moves only inward;
//! - every plan is a valid request within capacity: each part addresses
//!   whole logical blocks inside the disk, is an operation the device
//!   offers, modifies nothing on a read-only disk, and reads or writes
//!   exactly `plan.transfer` bytes, no more than the buffer holds.
//!
//! With a 512-byte block the plan is then carried out by the [`Engine`]
//! against the block core on the core's fake virtio-blk device, which must
//! accept every part and complete the SRB GOOD: the core is the judge of
//! "valid request", not this file.

use std::vec;
use std::vec::Vec;

use pv_blk::testing::virtio::{FakeVirtioBlk, TestHal};
use pv_blk::virtio::{VirtioBlk, VirtioBlkConfig, VirtioFeatures};
use pv_blk::{BlockFrontend, DeviceInfo, Features, IoBuf, SECTOR_SIZE};

use crate::cdb::{decide, Decision, Direction, Part, ScsiRequest};
use crate::disk::{Disk, Identity, Serial, MAX_UNMAP_DESCRIPTORS};
use crate::engine::{Engine, SrbCtx};
use crate::sense::{parse_fixed, SenseKey};
use crate::srb::{scsi_status, status};

/// Bytes the driver reads before the CDB.
const HEADER: usize = 16;

fn take<const N: usize>(d: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    for (i, b) in a.iter_mut().enumerate() {
        *b = d.get(at + i).copied().unwrap_or(0);
    }
    a
}

/// Which way a fuzzed command went (the smoke run checks it reaches every
/// kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// GOOD without data.
    Good,
    /// Data produced in place.
    Data,
    /// CHECK CONDITION.
    Check,
    /// A plan, checked but not run.
    Io,
    /// A plan also carried out on the core's fake device.
    IoThroughCore,
}

/// Decide one fuzzed command and check every invariant; panics on a
/// violation (that is the finding).
pub fn cdb(data: &[u8]) -> Outcome {
    let [fbits, bsel, cdb_len, dir, ..] = take::<4>(data, 0);
    let cap_raw = u64::from_le_bytes(take::<8>(data, 4));
    let [dl0, dl1, dl2, mt] = take::<4>(data, 12);
    // Small capacities are where the edges are; sometimes huge ones.
    let capacity_sectors = if fbits & 0x80 != 0 {
        cap_raw
    } else {
        cap_raw % 8192
    };
    let block_size = [512u32, 512, 4096, 1024][usize::from(bsel & 3)];
    let features = Features {
        read_only: fbits & 0x01 != 0,
        flush: fbits & 0x02 != 0,
        discard: fbits & 0x04 != 0,
        write_zeroes: fbits & 0x08 != 0,
        get_id: fbits & 0x10 != 0,
        ..Features::default()
    };
    let info = DeviceInfo {
        capacity_sectors,
        block_size,
        features,
        queues: 1,
        queue_depth: 16,
        max_segments: 126,
        max_discard_sectors: if bsel & 0x04 != 0 { 1 << 16 } else { 0 },
    };
    let identity = Identity {
        serial: Serial::from_get_id(&take::<20>(data, 0)),
        ..Identity::default()
    };
    let max_transfer = (u32::from(mt) + 1) * 4096;
    let disk = Disk::new(info, identity, max_transfer);
    let rest = data.get(HEADER..).unwrap_or(&[]);
    let n = usize::from(cdb_len % 20).min(rest.len());
    let (cdb, data_out) = rest.split_at(n);
    let data_len = u32::from_le_bytes([dl0, dl1, dl2, 0]);
    let direction = match dir & 3 {
        0 => Direction::None,
        1 => Direction::In,
        2 => Direction::Out,
        _ => Direction::Unspecified,
    };
    let req = ScsiRequest {
        cdb,
        data_len,
        direction,
        data_out,
    };
    let d = decide(&disk, &req);
    check(&disk, &req, &d);
    // The fake device's discard limit is 1 << 16 sectors: only disks with
    // the same limit are compared with the core.
    match d {
        Decision::Good => Outcome::Good,
        Decision::Data(_) => Outcome::Data,
        Decision::Check(_) => Outcome::Check,
        Decision::Io(_)
            if block_size == 512
                && capacity_sectors <= 8192
                && info.max_discard_sectors == 1 << 16 =>
        {
            through_core(&disk, &req);
            Outcome::IoThroughCore
        }
        Decision::Io(_) => Outcome::Io,
    }
}

/// The invariants on one decision (see the module docs).
pub fn check(disk: &Disk, req: &ScsiRequest<'_>, d: &Decision) {
    let f = disk.info.features;
    match d {
        Decision::Good => {}
        Decision::Data(r) => {
            let len = r.bytes().len();
            assert!(len > 0, "empty data reply");
            assert!(req.direction.allows_in(), "data in without DATA_IN");
            assert!(len <= req.data_len as usize, "reply beyond the buffer");
        }
        Decision::Check(s) => {
            assert!(matches!(
                s.key,
                SenseKey::IllegalRequest | SenseKey::DataProtect | SenseKey::NotReady
            ));
            let (key, asc) = parse_fixed(&s.to_fixed()).expect("fixed format");
            assert_eq!((key, asc), (s.key as u8, s.asc));
        }
        Decision::Io(plan) => {
            let parts = plan.parts();
            assert!(!parts.is_empty() && parts.len() <= MAX_UNMAP_DESCRIPTORS);
            let per = u64::from(disk.sectors_per_block());
            let mut data_parts = 0;
            for p in parts {
                if let Some((sector, sectors)) = p.extent() {
                    assert!(sectors > 0, "empty extent {p:?}");
                    let end = sector.checked_add(sectors).expect("extent overflows");
                    assert!(end <= f_cap(disk), "{p:?} beyond {}", f_cap(disk));
                    assert!(
                        sector % per == 0 && sectors % per == 0,
                        "partial block {p:?}"
                    );
                }
                match *p {
                    Part::Read { sectors, .. } | Part::Write { sectors, .. } => {
                        data_parts += 1;
                        let bytes = sectors * SECTOR_SIZE as u64;
                        assert_eq!(bytes, u64::from(plan.transfer));
                        assert!(bytes <= u64::from(req.data_len), "transfer beyond buffer");
                        assert!(sectors / per <= u64::from(disk.max_transfer_blocks));
                        if matches!(p, Part::Write { .. }) {
                            assert!(!f.read_only && req.direction.allows_out());
                        } else {
                            assert!(req.direction.allows_in());
                        }
                    }
                    Part::Flush => assert!(f.flush, "flush the device does not offer"),
                    Part::Discard { sectors, .. } => {
                        assert!(f.discard && !f.read_only);
                        assert!(limit_ok(disk, sectors));
                    }
                    Part::WriteZeroes { sectors, .. } => {
                        assert!(f.write_zeroes && !f.read_only);
                        assert!(limit_ok(disk, sectors));
                    }
                }
            }
            assert!(data_parts <= 1 && (data_parts == 0 || parts[0].has_data()));
            if data_parts == 0 {
                assert_eq!(plan.transfer, 0);
            }
        }
    }
}

fn f_cap(disk: &Disk) -> u64 {
    disk.capacity_blocks() * u64::from(disk.sectors_per_block())
}

fn limit_ok(disk: &Disk, sectors: u32) -> bool {
    disk.info.max_discard_sectors == 0 || sectors <= disk.info.max_discard_sectors
}

/// Carry a plan out on the core over its fake virtio-blk device with the
/// disk's features and capacity: every part must be accepted, the SRB must
/// complete GOOD with the plan's transfer.
fn through_core(disk: &Disk, req: &ScsiRequest<'_>) {
    let f = disk.info.features;
    let mut vf = VirtioFeatures::VERSION_1;
    for (on, bit) in [
        (f.read_only, VirtioFeatures::RO),
        (f.flush, VirtioFeatures::FLUSH),
        (f.discard, VirtioFeatures::DISCARD),
        (f.write_zeroes, VirtioFeatures::WRITE_ZEROES),
    ] {
        if on {
            vf |= bit;
        }
    }
    let mut buf = vec![0u8; req.data_len as usize];
    let dev = FakeVirtioBlk::new(vf, disk.info.capacity_sectors, 1, 16);
    let Ok(mut blk) = VirtioBlk::<TestHal, _>::new(dev.clone(), VirtioBlkConfig::default()) else {
        panic!("fake device did not come up");
    };
    // The core's view of the device decides, as in the driver.
    let info = blk.info();
    let core_disk = Disk::new(
        info,
        disk.identity,
        disk.max_transfer_blocks * disk.block_bytes(),
    );
    let Decision::Io(plan) = decide(&core_disk, req) else {
        panic!(
            "the core's disk decided differently: {info:?} vs {:?}",
            disk.info
        );
    };
    let mut engine: Engine<u32> = Engine::new(core_disk, 4);
    let bufs_storage = [IoBuf::from_slice(&mut buf[..plan.transfer as usize])];
    let bufs: &[IoBuf] = if plan.transfer > 0 {
        &bufs_storage
    } else {
        &[]
    };
    let ctx = SrbCtx {
        sense_room: 18,
        flags: 0,
    };
    // SAFETY: `buf` outlives `blk` (declared before it) and is not touched
    // until the engine gives the SRB back below.
    if let Err((_, c)) = unsafe { engine.start(&mut blk, 7, ctx, plan, bufs) } {
        panic!("core refused the first part of {plan:?}: {c:?}");
    }
    let mut done = Vec::new();
    for _ in 0..=plan.parts().len() {
        dev.process(0);
        if let Err(e) = engine.poll(&mut blk, &mut |s, c| done.push((s, c))) {
            panic!("core stopped: {e}");
        }
    }
    assert_eq!(done.len(), 1, "{plan:?} gave {done:?}");
    let (srb, c) = done[0];
    assert_eq!(srb, 7);
    assert_eq!(
        (c.srb_status, c.scsi_status, c.transferred),
        (status::SUCCESS, scsi_status::GOOD, plan.transfer),
        "{plan:?}"
    );
}

/// What a fuzzed SRB_EX became (the smoke run checks it reaches each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SrbExOutcome {
    /// Refused by [`crate::srb_ex::parse`].
    Refused,
    /// Decoded, with a CDB block.
    Scsi,
    /// Decoded, without one.
    Other,
}

/// Fuzz driver for [`crate::srb_ex`]: `data` is the SRB's bytes. Never a
/// panic; a decoded SRB keeps its CDB within [`crate::srb_ex::MAX_CDB`]
/// and its CDB block inside `SrbLength`; writing a completion back keeps
/// the SRB decodable as the same request, and the fields written read
/// back.
pub fn srb_ex(data: &[u8]) -> SrbExOutcome {
    use crate::sense::Sense;
    use crate::srb::Completion;
    use crate::srb_ex::{offset, parse, write_completion, MAX_CDB};

    let Ok(ex) = parse(data) else {
        return SrbExOutcome::Refused;
    };
    let len = u32::from_le_bytes(take(data, offset::SRB_LENGTH)) as usize;
    assert!(ex.cdb().len() <= MAX_CDB);
    let _ = ex.srb_in();
    let ctx = ex.ctx();
    let mut copy = data.to_vec();
    let c = Completion::check(Sense::invalid_opcode(), ctx.sense_room, ctx.flags);
    write_completion(&mut copy, &ex, &c, 18);
    let again = parse(&copy).expect("a completed SRB_EX still decodes");
    assert_eq!(
        (again.function, again.address, again.cdb()),
        (ex.function, ex.address, ex.cdb())
    );
    assert_eq!(copy[offset::SRB_STATUS], c.srb_status);
    assert_eq!(copy[len..], data[len..], "nothing written past SrbLength");
    match ex.scsi {
        Some(s) => {
            assert!(s.at + 8 + 16 <= len);
            assert_eq!(copy[s.scsi_status_at()], c.scsi_status);
            SrbExOutcome::Scsi
        }
        None => SrbExOutcome::Other,
    }
}
