//! The miniport logic with fake SRBs against the block core on its fake
//! virtio-blk device (`pv_blk::testing::virtio`): data written is read
//! back, UNMAP reaches the core as discard, flushes as flushes, every bad
//! CDB gets CHECK CONDITION with the right sense, device errors become
//! medium errors, and the in-flight and reset rules hold.

use pv_blk::testing::virtio::{BlkChain, FakeVirtioBlk, TestHal};
use pv_blk::virtio::{
    VirtioBlk, VirtioBlkConfig, VirtioFeatures, S_IOERR, S_UNSUPP, T_DISCARD, T_FLUSH, T_IN, T_OUT,
    T_WRITE_ZEROES,
};
use pv_blk::{BlockFrontend, IoBuf, ID_BYTES};
use pv_blk_windows::sense::{parse_fixed, Asc, FieldPointer};
use pv_blk_windows::srb::{self, flags, function, pnp, power, scsi_status, status, Address};
use pv_blk_windows::{
    decide_srb, Completion, Decision, Direction, Disk, Engine, Identity, ScsiRequest, Serial,
    SrbAction, SrbCtx, SrbIn,
};

const SECTORS: u64 = 4096;
const MAX_TRANSFER: u32 = 64 * 1024;

type Blk = VirtioBlk<TestHal, FakeVirtioBlk>;

/// One request the device saw: virtio type, header sector, and the
/// device-readable payload after the header (the discard/write-zeroes
/// segment; write data).
#[derive(Debug, Clone)]
struct Seen {
    ty: u32,
    /// Header sector (0 for discard and write-zeroes: theirs is in the
    /// payload).
    sector: u64,
    payload: Vec<u8>,
}

struct Harness {
    dev: FakeVirtioBlk,
    blk: Blk,
    engine: Engine<u32>,
    seen: Vec<Seen>,
    /// Status the device writes for the next request instead of its own.
    fail_next: Option<u8>,
    next_srb: u32,
}

fn all() -> VirtioFeatures {
    VirtioFeatures::all() - VirtioFeatures::RO
}

impl Harness {
    fn new(features: VirtioFeatures) -> Self {
        let dev = FakeVirtioBlk::new(features, SECTORS, 1, 16);
        let mut blk = Blk::new(dev.clone(), VirtioBlkConfig::default()).expect("init");
        // The serial from GET_ID, as the driver reads it at start.
        let mut id = [0u8; ID_BYTES];
        // SAFETY: `id` lives until the completion polled right below.
        unsafe { blk.get_id(IoBuf::from_slice(&mut id)) }.expect("get id");
        dev.process(0);
        blk.poll_completions(&mut |_, r| assert!(r.is_ok()))
            .expect("poll");
        let identity = Identity {
            serial: Serial::from_get_id(&id),
            rotation_rate: 1,
            ..Identity::default()
        };
        let disk = Disk::new(blk.info(), identity, MAX_TRANSFER);
        let depth = blk.info().queue_depth as usize;
        Self {
            dev,
            blk,
            engine: Engine::new(disk, depth),
            seen: Vec::new(),
            fail_next: None,
            next_srb: 1,
        }
    }

    /// Play the device: take, record, execute and answer every chain.
    fn device_step(&mut self) {
        while let Some(c) = self.dev.take_chain(0) {
            let hdr = c.header();
            let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let mut s = [0u8; 8];
            s.copy_from_slice(&hdr[8..16]);
            let payload = c
                .descs
                .iter()
                .skip(1)
                .filter(|d| !d.writable())
                .flat_map(|d| d.contents())
                .collect();
            self.seen.push(Seen {
                ty,
                sector: u64::from_le_bytes(s),
                payload,
            });
            let (mut st, len) = self.dev.execute(&c);
            if let Some(f) = self.fail_next.take() {
                st = f;
            }
            self.dev.write_status(&c, st);
            self.dev.push_used(0, u32::from(c.head), len);
        }
    }

    /// One EXECUTE_SCSI SRB to completion.
    fn scsi(&mut self, cdb: &[u8], dir: Direction, buf: &mut [u8], data_out: &[u8]) -> Completion {
        let srb_flags = match dir {
            Direction::None => 0,
            Direction::In => flags::DATA_IN,
            Direction::Out => flags::DATA_OUT,
            Direction::Unspecified => flags::DATA_IN | flags::DATA_OUT,
        };
        let req = ScsiRequest {
            cdb,
            data_len: buf.len() as u32,
            direction: dir,
            data_out,
        };
        let ctx = SrbCtx {
            sense_room: 32,
            flags: srb_flags,
        };
        let plan = match self.engine.decide(&req) {
            Decision::Io(plan) => plan,
            d => {
                let c = srb::immediate(&d, ctx.sense_room, ctx.flags).expect("immediate");
                if let Some(r) = c.data {
                    buf[..r.bytes().len()].copy_from_slice(r.bytes());
                }
                return c;
            }
        };
        self.run_plan(plan, ctx, buf)
    }

    fn run_plan(&mut self, plan: pv_blk_windows::Plan, ctx: SrbCtx, buf: &mut [u8]) -> Completion {
        let id = self.next_srb;
        self.next_srb += 1;
        let t = plan.transfer as usize;
        let storage = [IoBuf::from_slice(&mut buf[..t])];
        let bufs: &[IoBuf] = if plan.parts()[0].has_data() {
            &storage
        } else {
            &[]
        };
        // SAFETY: `buf` is not touched until the engine gives the SRB back
        // below (or the harness, and with it the frontend, is dropped).
        if let Err((srb, c)) = unsafe { self.engine.start(&mut self.blk, id, ctx, plan, bufs) } {
            assert_eq!(srb, id);
            return c;
        }
        let mut done = Vec::new();
        for _ in 0..=plan.parts().len() {
            self.device_step();
            self.engine
                .poll(&mut self.blk, &mut |s, c| done.push((s, c)))
                .expect("poll");
            if !done.is_empty() {
                break;
            }
        }
        assert_eq!(done.len(), 1, "one SRB, one completion: {done:?}");
        assert_eq!(done[0].0, id);
        done[0].1
    }

    fn ok(&mut self, cdb: &[u8], dir: Direction, buf: &mut [u8], data_out: &[u8]) -> Completion {
        let c = self.scsi(cdb, dir, buf, data_out);
        assert_eq!(
            (c.srb_status, c.scsi_status),
            (status::SUCCESS, scsi_status::GOOD),
            "{cdb:02x?}: {c:?}"
        );
        c
    }

    /// Expect CHECK CONDITION with autosense `key`/`asc` (and optionally a
    /// field pointer), checked in the bytes Windows would get.
    fn check(
        &mut self,
        cdb: &[u8],
        dir: Direction,
        buf: &mut [u8],
        data_out: &[u8],
        key: u8,
        asc: Asc,
    ) -> Completion {
        let c = self.scsi(cdb, dir, buf, data_out);
        assert_eq!(
            c.srb_status,
            status::ERROR | status::AUTOSENSE_VALID,
            "{cdb:02x?}: {c:?}"
        );
        assert_eq!(c.scsi_status, scsi_status::CHECK_CONDITION);
        let (bytes, n) = c.sense_bytes(32).expect("sense");
        assert_eq!(n, 18);
        assert_eq!(parse_fixed(&bytes), Some((key, asc)), "{cdb:02x?}: {c:?}");
        c
    }
}

fn read10(lba: u32, n: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c
}

fn write10(lba: u32, n: u16) -> [u8; 10] {
    let mut c = read10(lba, n);
    c[0] = 0x2A;
    c
}

fn rw16(op: u8, lba: u64, n: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}

fn unmap_cdb(plen: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x42;
    c[7..9].copy_from_slice(&plen.to_be_bytes());
    c
}

fn unmap_params(descs: &[(u64, u32)]) -> Vec<u8> {
    let bd = (descs.len() * 16) as u16;
    let mut p = Vec::new();
    p.extend_from_slice(&(bd + 6).to_be_bytes());
    p.extend_from_slice(&bd.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    for &(lba, n) in descs {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    p
}

const ILLEGAL: u8 = 0x5;

/// An UNMAP with these descriptors must fail with `key` and `asc`.
fn bad_unmap_key(h: &mut Harness, descs: &[(u64, u32)], key: u8, asc: Asc) -> Completion {
    let p = unmap_params(descs);
    let mut buf = p.clone();
    h.check(
        &unmap_cdb(p.len() as u16),
        Direction::Out,
        &mut buf,
        &p,
        key,
        asc,
    )
}

/// An UNMAP with these descriptors must fail ILLEGAL REQUEST with `asc`.
fn bad_unmap(h: &mut Harness, descs: &[(u64, u32)], asc: Asc) -> Completion {
    bad_unmap_key(h, descs, ILLEGAL, asc)
}

#[test]
fn data_written_is_read_back_through_every_read_and_write_cdb() {
    let mut h = Harness::new(all());
    let pattern: Vec<u8> = (0..8 * 512).map(|i| (i * 7 + 3) as u8).collect();
    let mut w = pattern.clone();
    let c = h.ok(&write10(100, 8), Direction::Out, &mut w, &[]);
    assert_eq!(c.transferred, 4096);
    assert_eq!(
        h.dev.disk(100 * 512, 4096),
        pattern,
        "the disk holds the write"
    );
    // READ(10), READ(16), READ(12), READ(6) of the same blocks.
    let mut read12 = [0u8; 12];
    read12[0] = 0xA8;
    read12[2..6].copy_from_slice(&100u32.to_be_bytes());
    read12[6..10].copy_from_slice(&8u32.to_be_bytes());
    let read6 = [0x08, 0x00, 0x00, 100, 8, 0];
    for cdb in [
        &read10(100, 8)[..],
        &rw16(0x88, 100, 8)[..],
        &read12[..],
        &read6[..],
    ] {
        let mut r = vec![0u8; 4096];
        let c = h.ok(cdb, Direction::In, &mut r, &[]);
        assert_eq!(c.transferred, 4096);
        assert_eq!(r, pattern, "{cdb:02x?}");
    }
    // WRITE(16) at the last blocks, read back with READ(10).
    let tail: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
    let mut w = tail.clone();
    h.ok(&rw16(0x8A, SECTORS - 2, 2), Direction::Out, &mut w, &[]);
    let mut r = vec![0u8; 1024];
    h.ok(&read10((SECTORS - 2) as u32, 2), Direction::In, &mut r, &[]);
    assert_eq!(r, tail);
    // A buffer larger than the transfer: only the transfer moves.
    let mut r = vec![0xEEu8; 8192];
    let c = h.ok(&read10(100, 1), Direction::In, &mut r, &[]);
    assert_eq!(c.transferred, 512);
    assert_eq!(&r[..512], &pattern[..512]);
    assert!(r[512..].iter().all(|&b| b == 0xEE));
    // The device saw exactly the block requests, nothing else.
    let types: Vec<u32> = h.seen.iter().map(|s| s.ty).collect();
    assert_eq!(types, [T_OUT, T_IN, T_IN, T_IN, T_IN, T_OUT, T_IN, T_IN]);
    let sectors: Vec<u64> = h.seen.iter().map(|s| s.sector).collect();
    assert_eq!(
        sectors,
        [100, 100, 100, 100, 100, SECTORS - 2, SECTORS - 2, 100]
    );
}

#[test]
fn unmap_reaches_the_core_as_discards() {
    let mut h = Harness::new(all());
    h.dev.set_disk(0, &[0xAA; 64 * 512]);
    let p = unmap_params(&[(4, 8), (40, 0), (20, 2)]);
    let mut buf = p.clone();
    let c = h.ok(&unmap_cdb(p.len() as u16), Direction::Out, &mut buf, &p);
    assert_eq!(c.transferred, 0);
    let discards: Vec<&Seen> = h.seen.iter().collect();
    assert_eq!(discards.len(), 2, "a zero-length descriptor is skipped");
    for (s, (sector, n)) in discards.iter().zip([(4u64, 8u32), (20, 2)]) {
        assert_eq!(s.ty, T_DISCARD);
        let mut seg = Vec::new();
        seg.extend_from_slice(&sector.to_le_bytes());
        seg.extend_from_slice(&n.to_le_bytes());
        seg.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(s.payload, seg);
    }
    // WRITE SAME(16) of zeroes with UNMAP: write-zeroes with the unmap flag.
    let mut ws = rw16(0x93, 50, 4);
    ws[1] = 0x08;
    let zero = vec![0u8; 512];
    let mut buf = zero.clone();
    h.ok(&ws, Direction::Out, &mut buf, &zero);
    let s = h.seen.last().expect("write zeroes");
    assert_eq!(s.ty, T_WRITE_ZEROES);
    assert_eq!(&s.payload[0..8], &50u64.to_le_bytes());
    assert_eq!(&s.payload[8..12], &4u32.to_le_bytes());
    assert_eq!(&s.payload[12..16], &1u32.to_le_bytes(), "unmap flag");
    assert_eq!(h.dev.disk(50 * 512, 4 * 512), vec![0u8; 2048]);
}

#[test]
fn flushes_reach_the_core_as_flushes() {
    let mut h = Harness::new(all());
    let mut none: [u8; 0] = [];
    for cdb in [
        &[0x35u8, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
        &rw16(0x91, 0, 0)[..],
        // START STOP UNIT, stop.
        &[0x1B, 0, 0, 0, 0x00, 0][..],
    ] {
        let before = h.seen.len();
        h.ok(cdb, Direction::None, &mut none, &[]);
        let tys: Vec<u32> = h.seen[before..].iter().map(|s| s.ty).collect();
        assert_eq!(tys, [T_FLUSH], "{cdb:02x?}");
    }
    // WRITE(10) with FUA: the write, then a flush, then GOOD.
    let mut cdb = write10(8, 1);
    cdb[1] = 0x08;
    let mut w = vec![0x11u8; 512];
    let before = h.seen.len();
    let c = h.ok(&cdb, Direction::Out, &mut w, &[]);
    assert_eq!(c.transferred, 512);
    let tys: Vec<u32> = h.seen[before..].iter().map(|s| s.ty).collect();
    assert_eq!(tys, [T_OUT, T_FLUSH]);
    // SRB_FUNCTION_FLUSH / SHUTDOWN / POWER to D3 decide to a flush.
    for (f, action) in [
        (function::FLUSH, 0),
        (function::SHUTDOWN, 0),
        (function::POWER, power::D3),
    ] {
        let srb = SrbIn {
            function: f,
            address: Address::default(),
            flags: 0,
            action,
            action_flags: 0,
        };
        assert_eq!(decide_srb(&srb, true), SrbAction::Flush, "{f:#x}");
        assert_eq!(
            decide_srb(&srb, false),
            SrbAction::Complete(status::SUCCESS),
            "no volatile cache: nothing to flush"
        );
    }
    let before = h.seen.len();
    let c = h.run_plan(pv_blk_windows::Plan::flush(), SrbCtx::default(), &mut none);
    assert_eq!(c.srb_status, status::SUCCESS);
    assert_eq!(
        h.seen[before..].iter().map(|s| s.ty).collect::<Vec<_>>(),
        [T_FLUSH]
    );
}

#[test]
fn without_a_volatile_cache_flushes_are_not_sent() {
    let mut h = Harness::new(all() - VirtioFeatures::FLUSH);
    let mut none: [u8; 0] = [];
    h.ok(
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        Direction::None,
        &mut none,
        &[],
    );
    let mut cdb = write10(8, 1);
    cdb[1] = 0x08; // FUA: writes are durable on completion already
    let mut w = vec![0x11u8; 512];
    h.ok(&cdb, Direction::Out, &mut w, &[]);
    let tys: Vec<u32> = h.seen.iter().map(|s| s.ty).collect();
    assert_eq!(tys, [T_OUT]);
}

/// Every bad CDB: CHECK CONDITION, ILLEGAL REQUEST (or DATA PROTECT /
/// NOT READY), the ASC/ASCQ SPC/SBC name, and nothing sent to the device.
#[test]
fn every_bad_cdb_gets_check_condition_with_the_right_sense() {
    let mut h = Harness::new(all());
    let cap = SECTORS; // 512-byte blocks
    let mut big = vec![0u8; 1 << 20];
    let none: &[u8] = &[];
    let inv_op = Asc::INVALID_OPCODE;
    let inv_cdb = Asc::INVALID_FIELD_IN_CDB;
    let oor = Asc::LBA_OUT_OF_RANGE;
    let inv_par = Asc::INVALID_FIELD_IN_PARAMETER_LIST;
    let mut read_prot = read10(0, 1);
    read_prot[1] = 0x20; // RDPROTECT
    let mut naca = read10(0, 1);
    naca[9] = 0x04;
    let mut verify_bytchk = [0u8; 10];
    verify_bytchk[0] = 0x2F;
    verify_bytchk[1] = 0x02;
    let mut ws_anchor = rw16(0x93, 0, 1);
    ws_anchor[1] = 0x10;
    let mut unmap_anchor = unmap_cdb(24);
    unmap_anchor[1] = 0x01;
    let mut sai_bad = vec![0u8; 16];
    sai_bad[0] = 0x9E;
    sai_bad[1] = 0x11;
    use Direction::{In, Out};
    let nd = Direction::None;
    // (what, CDB, direction, ASC); all ILLEGAL REQUEST.
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, Direction, Asc)> = vec![
        ("empty CDB", vec![], nd, inv_op),
        ("MODE SELECT(6)", vec![0x15, 0, 0, 0, 0, 0], Out, inv_op),
        ("vendor opcode", vec![0xC0; 16], nd, inv_op),
        ("READ(10) cut short", vec![0x28, 0, 0, 0], In, inv_cdb),
        ("READ(10) RDPROTECT", read_prot.to_vec(), In, inv_cdb),
        ("READ(10) NACA", naca.to_vec(), In, inv_cdb),
        ("READ(10) past the end", read10(cap as u32 - 1, 2).to_vec(), In, oor),
        ("READ(16) LBA + length overflows", rw16(0x88, u64::MAX, 1).to_vec(), In, oor),
        ("WRITE(16) beyond MAXIMUM TRANSFER LENGTH", rw16(0x8A, 0, MAX_TRANSFER / 512 + 1).to_vec(), Out, inv_cdb),
        ("READ(10) wrong direction", read10(0, 1).to_vec(), Out, inv_cdb),
        ("VERIFY(10) BYTCHK", verify_bytchk.to_vec(), nd, inv_cdb),
        ("VERIFY(16) past the end", rw16(0x8F, cap, 1).to_vec(), nd, oor),
        ("SYNCHRONIZE CACHE(16) past the end", rw16(0x91, cap + 1, 0).to_vec(), nd, oor),
        ("INQUIRY CMDDT", vec![0x12, 0x02, 0, 0, 0xFF, 0], In, inv_cdb),
        ("INQUIRY page without EVPD", vec![0x12, 0x00, 0x80, 0, 0xFF, 0], In, inv_cdb),
        ("INQUIRY unknown VPD page", vec![0x12, 0x01, 0xC0, 0, 0xFF, 0], In, inv_cdb),
        ("MODE SENSE(6) unknown page", vec![0x1A, 0, 0x1C, 0, 0xFF, 0], In, inv_cdb),
        ("MODE SENSE(10) caching subpage 1", vec![0x5A, 0, 0x08, 0x01, 0, 0, 0, 0, 0xFF, 0], In, inv_cdb),
        ("MODE SENSE(6) saved values", vec![0x1A, 0, 0xC8, 0, 0xFF, 0], In, Asc::SAVING_PARAMETERS_NOT_SUPPORTED),
        ("READ CAPACITY(10) LBA without PMI", vec![0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], In, inv_cdb),
        ("SERVICE ACTION IN(16) unknown action", sai_bad, In, inv_cdb),
        ("REPORT LUNS allocation < 16", vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0], In, inv_cdb),
        ("REPORT LUNS bad SELECT REPORT", vec![0xA0, 0, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0], In, inv_cdb),
        ("REQUEST SENSE descriptor format", vec![0x03, 0x01, 0, 0, 18, 0], In, inv_cdb),
        ("START STOP UNIT eject", vec![0x1B, 0, 0, 0, 0x02, 0], nd, inv_cdb),
        ("WRITE SAME(16) ANCHOR", ws_anchor.to_vec(), Out, inv_cdb),
        ("WRITE SAME(16) zero blocks (WSNZ)", rw16(0x93, 0, 0).to_vec(), Out, inv_cdb),
        ("UNMAP ANCHOR", unmap_anchor.to_vec(), Out, inv_cdb),
    ];
    for (name, cdb, dir, asc) in cases {
        let before = h.seen.len();
        h.check(&cdb, dir, &mut big, none, ILLEGAL, asc);
        assert_eq!(h.seen.len(), before, "{name}: reached the device");
    }

    // The field pointer names the offending byte and bit.
    let c = h.check(&read_prot, Direction::In, &mut big, none, ILLEGAL, inv_cdb);
    let field = c.sense.and_then(|s| s.field);
    assert_eq!(
        field,
        Some(FieldPointer {
            in_cdb: true,
            byte: 1,
            bit: Some(7)
        })
    );
    let (bytes, _) = c.sense_bytes(18).expect("sense");
    assert_eq!(&bytes[15..18], &[0x80 | 0x40 | 0x08 | 7, 0, 1]);

    // Transfer longer than the SRB's buffer.
    let mut small = vec![0u8; 1024];
    h.check(
        &read10(0, 4),
        Direction::In,
        &mut small,
        none,
        ILLEGAL,
        inv_cdb,
    );

    // Parameter list errors.
    let plen_err = Asc::PARAMETER_LIST_LENGTH_ERROR;
    let p = unmap_params(&[(0, 1)]);
    let mut buf = p.clone();
    h.check(
        &unmap_cdb(64),
        Direction::Out,
        &mut buf,
        &p,
        ILLEGAL,
        inv_cdb,
    );
    let short = [0u8; 6];
    let mut buf = short;
    h.check(
        &unmap_cdb(6),
        Direction::Out,
        &mut buf,
        &short,
        ILLEGAL,
        plen_err,
    );
    bad_unmap(&mut h, &[(SECTORS - 1, 2)], oor);
    let many: Vec<(u64, u32)> = (0..17).map(|i| (i, 1)).collect();
    bad_unmap(&mut h, &many, inv_par);
    // WRITE SAME with a pattern that is not zeroes, and without its block.
    let mut ws = rw16(0x93, 0, 1);
    ws[1] = 0x08;
    let mut block = vec![0u8; 512];
    block[3] = 1;
    let mut buf = block.clone();
    h.check(&ws, Direction::Out, &mut buf, &block, ILLEGAL, inv_par);
    let mut buf = vec![0u8; 100];
    h.check(&ws, Direction::Out, &mut buf, &[0; 100], ILLEGAL, plen_err);
    assert!(h.seen.is_empty(), "no bad command reached the device");

    // More blocks in total than MAXIMUM UNMAP LBA COUNT (a device with a
    // discard limit of 8 sectors), each descriptor within it.
    let mut disk = *h.engine.disk();
    disk.info.max_discard_sectors = 8;
    h.engine.set_disk(disk);
    let c = bad_unmap(&mut h, &[(0, 5), (10, 5)], inv_par);
    let field = c.sense.and_then(|s| s.field);
    assert_eq!(
        field,
        Some(FieldPointer {
            in_cdb: false,
            byte: 8 + 16 + 8,
            bit: None
        }),
        "points at the second descriptor's NUMBER OF LOGICAL BLOCKS"
    );
    assert!(h.seen.is_empty(), "not even the first descriptor was sent");
}

#[test]
fn read_only_and_missing_features_are_refused_with_their_own_sense() {
    let mut h = Harness::new(all() - VirtioFeatures::DISCARD - VirtioFeatures::WRITE_ZEROES);
    // Not offered: invalid operation code (and the provisioning page says so).
    bad_unmap_key(&mut h, &[(0, 1)], ILLEGAL, Asc::INVALID_OPCODE);
    let mut buf = vec![0u8; 512];
    h.check(
        &rw16(0x93, 0, 1),
        Direction::Out,
        &mut buf,
        &[0; 512],
        ILLEGAL,
        Asc::INVALID_OPCODE,
    );
    let mut page = vec![0u8; 8];
    h.ok(&[0x12, 1, 0xB2, 0, 8, 0], Direction::In, &mut page, &[]);
    assert_eq!(page[5], 0, "no LBPU / LBPWS");

    let mut h = Harness::new(all() | VirtioFeatures::RO);
    let mut w = vec![0u8; 512];
    h.check(
        &write10(0, 1),
        Direction::Out,
        &mut w,
        &[],
        0x7,
        Asc::WRITE_PROTECTED,
    );
    bad_unmap_key(&mut h, &[(0, 1)], 0x7, Asc::WRITE_PROTECTED);
    let mut ms = vec![0u8; 4];
    h.ok(&[0x1A, 0x08, 0x08, 0, 4, 0], Direction::In, &mut ms, &[]);
    assert_eq!(ms[2] & 0x80, 0x80, "MODE SENSE reports WP");
    assert!(h.seen.is_empty());
}

#[test]
fn device_errors_become_medium_errors_and_unsupported_becomes_invalid_opcode() {
    let mut h = Harness::new(all());
    let mut r = vec![0u8; 512];
    h.fail_next = Some(S_IOERR);
    h.check(
        &read10(0, 1),
        Direction::In,
        &mut r,
        &[],
        0x3,
        Asc::UNRECOVERED_READ_ERROR,
    );
    h.fail_next = Some(S_IOERR);
    h.check(
        &write10(0, 1),
        Direction::Out,
        &mut r,
        &[],
        0x3,
        Asc::WRITE_ERROR,
    );
    let p = unmap_params(&[(0, 1)]);
    let mut buf = p.clone();
    h.fail_next = Some(S_UNSUPP);
    h.check(
        &unmap_cdb(24),
        Direction::Out,
        &mut buf,
        &p,
        ILLEGAL,
        Asc::INVALID_OPCODE,
    );
    // The failure of the FUA flush fails the write (the promise is lost).
    let mut cdb = write10(0, 1);
    cdb[1] = 0x08;
    let mut w = vec![0u8; 512];
    // First the write succeeds, then the flush fails.
    let c = {
        let req = ScsiRequest {
            cdb: &cdb,
            data_len: 512,
            direction: Direction::Out,
            data_out: &[],
        };
        let Decision::Io(plan) = h.engine.decide(&req) else {
            panic!("a plan")
        };
        assert_eq!(plan.parts().len(), 2);
        let id = 99;
        let storage = [IoBuf::from_slice(&mut w)];
        // SAFETY: `w` is untouched until the SRB comes back below.
        unsafe {
            h.engine.start(
                &mut h.blk,
                id,
                SrbCtx {
                    sense_room: 18,
                    flags: 0,
                },
                plan,
                &storage,
            )
        }
        .expect("start");
        h.device_step(); // the write
        let mut done = Vec::new();
        h.engine
            .poll(&mut h.blk, &mut |s, c| done.push((s, c)))
            .expect("poll");
        assert!(done.is_empty(), "the flush is still to come");
        h.fail_next = Some(S_IOERR);
        h.device_step(); // the flush
        h.engine
            .poll(&mut h.blk, &mut |s, c| done.push((s, c)))
            .expect("poll");
        assert_eq!(done.len(), 1);
        done[0].1
    };
    assert_eq!(
        parse_fixed(&c.sense.expect("sense").to_fixed()),
        Some((0x3, Asc::WRITE_ERROR))
    );
}

#[test]
fn inquiry_vpd_capacity_mode_and_luns_describe_the_disk() {
    let mut h = Harness::new(all());
    let mut b = vec![0u8; 255];
    // Standard INQUIRY.
    let c = h.ok(&[0x12, 0, 0, 0, 0xFF, 0], Direction::In, &mut b, &[]);
    assert_eq!(c.transferred, 36);
    assert_eq!(b[0], 0x00, "direct-access block device");
    assert_eq!(&b[8..16], b"PVDRIVER");
    // Allocation length truncates.
    let mut b5 = vec![0xFFu8; 255];
    let c = h.ok(&[0x12, 0, 0, 0, 5, 0], Direction::In, &mut b5, &[]);
    assert_eq!(c.transferred, 5);
    assert_eq!(
        b5[4], 31,
        "ADDITIONAL LENGTH is the full length, not the truncated"
    );
    assert_eq!(b5[5], 0xFF, "nothing written past the allocation length");
    // Supported VPD pages.
    let c = h.ok(&[0x12, 1, 0x00, 0, 0xFF, 0], Direction::In, &mut b, &[]);
    assert_eq!(
        &b[..c.transferred as usize],
        &[0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    );
    // Unit serial number from GET_ID (the fake answers "fake-blk").
    let c = h.ok(&[0x12, 1, 0x80, 0, 0xFF, 0], Direction::In, &mut b, &[]);
    assert_eq!(&b[..c.transferred as usize], b"\x00\x80\x00\x08fake-blk");
    // Device identification: T10 vendor id + product + serial.
    let c = h.ok(&[0x12, 1, 0x83, 0, 0xFF, 0], Direction::In, &mut b, &[]);
    let d = &b[..c.transferred as usize];
    assert_eq!(&d[4..8], &[0x02, 0x01, 0x00, 32]);
    assert_eq!(&d[8..16], b"PVDRIVER");
    assert_eq!(&d[32..40], b"fake-blk");
    // Block limits.
    let c = h.ok(&[0x12, 1, 0xB0, 0, 0xFF, 0], Direction::In, &mut b, &[]);
    assert_eq!(c.transferred, 64);
    let be32 = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    assert_eq!(b[4] & 1, 1, "WSNZ");
    assert_eq!(be32(8), MAX_TRANSFER / 512, "MAXIMUM TRANSFER LENGTH");
    assert_eq!(
        be32(20),
        1 << 16,
        "MAXIMUM UNMAP LBA COUNT: the device's discard limit"
    );
    assert_eq!(be32(24), 16, "MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT");
    // Block device characteristics: non-rotating as configured.
    h.ok(&[0x12, 1, 0xB1, 0, 0xFF, 0], Direction::In, &mut b, &[]);
    assert_eq!(&b[4..6], &[0, 1]);
    // Logical block provisioning: LBPU, LBPWS, LBPWS10; thin.
    h.ok(&[0x12, 1, 0xB2, 0, 0xFF, 0], Direction::In, &mut b, &[]);
    assert_eq!(&b[..8], &[0, 0xB2, 0, 4, 0, 0xE0, 0x02, 0]);
    // READ CAPACITY(10) and (16).
    let mut rc = vec![0u8; 8];
    h.ok(
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        Direction::In,
        &mut rc,
        &[],
    );
    assert_eq!(rc, [0, 0, 0x0F, 0xFF, 0, 0, 2, 0]);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9E;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let mut rc = vec![0u8; 32];
    h.ok(&cdb, Direction::In, &mut rc, &[]);
    assert_eq!(&rc[..12], &[0, 0, 0, 0, 0, 0, 0x0F, 0xFF, 0, 0, 2, 0]);
    assert_eq!(rc[14] & 0x80, 0x80, "LBPME");
    // MODE SENSE(10), all pages: header, block descriptor, caching page
    // with WCE from the flush feature.
    let c = h.ok(
        &[0x5A, 0, 0x3F, 0, 0, 0, 0, 0, 0xFF, 0],
        Direction::In,
        &mut b,
        &[],
    );
    assert_eq!(c.transferred, 8 + 8 + 20);
    assert_eq!(&b[0..2], &34u16.to_be_bytes());
    assert_eq!(b[3], 0x10, "DPOFUA, not WP");
    assert_eq!(&b[6..8], &[0, 8]);
    assert_eq!(&b[8..16], &[0, 0, 0x10, 0, 0, 0, 2, 0]);
    assert_eq!(&b[16..19], &[0x08, 0x12, 0x04]);
    // MODE SENSE(6) caching page, DBD; changeable values show nothing.
    let c = h.ok(&[0x1A, 0x08, 0x48, 0, 0xFF, 0], Direction::In, &mut b, &[]);
    assert_eq!(c.transferred, 4 + 20);
    assert_eq!(b[0], 23);
    assert_eq!(&b[4..7], &[0x08, 0x12, 0x00]);
    // REPORT LUNS.
    let c = h.ok(
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0],
        Direction::In,
        &mut b,
        &[],
    );
    assert_eq!(
        &b[..c.transferred as usize],
        &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    // TEST UNIT READY, VERIFY: no-ops.
    let mut none: [u8; 0] = [];
    h.ok(&[0, 0, 0, 0, 0, 0], Direction::None, &mut none, &[]);
    h.ok(
        &[0x2F, 0, 0, 0, 0, 0, 0, 0, 8, 0],
        Direction::None,
        &mut none,
        &[],
    );
    assert!(h.seen.is_empty(), "all of it answered without the device");

    // Without a volatile cache WCE is 0.
    let mut h = Harness::new(all() - VirtioFeatures::FLUSH);
    h.ok(&[0x1A, 0x08, 0x08, 0, 0xFF, 0], Direction::In, &mut b, &[]);
    assert_eq!(b[6] & 0x04, 0);
}

#[test]
fn srb_functions_decide_into_actions() {
    let srb = |function, address, action, action_flags| SrbIn {
        function,
        address,
        flags: 0,
        action,
        action_flags,
    };
    let unit = Address::default();
    assert_eq!(
        decide_srb(&srb(function::EXECUTE_SCSI, unit, 0, 0), true),
        SrbAction::ExecuteScsi
    );
    let lun1 = Address { lun: 1, ..unit };
    assert_eq!(
        decide_srb(&srb(function::EXECUTE_SCSI, lun1, 0, 0), true),
        SrbAction::Complete(status::INVALID_LUN)
    );
    let t1 = Address { target: 1, ..unit };
    assert_eq!(
        decide_srb(&srb(function::EXECUTE_SCSI, t1, 0, 0), true),
        SrbAction::Complete(status::NO_DEVICE)
    );
    for f in [
        function::RESET_BUS,
        function::RESET_DEVICE,
        function::RESET_LOGICAL_UNIT,
    ] {
        // Classic and SRB_EX spelling.
        let via_ex = SrbIn::function_of(function::STORAGE_REQUEST_BLOCK as u8, Some(f));
        assert_eq!(decide_srb(&srb(via_ex, unit, 0, 0), true), SrbAction::Reset);
    }
    assert_eq!(
        decide_srb(&srb(function::IO_CONTROL, unit, 0, 0), true),
        SrbAction::Complete(status::INVALID_REQUEST)
    );
    assert_eq!(
        decide_srb(&srb(function::POWER, unit, power::D0, 0), true),
        SrbAction::Complete(status::SUCCESS)
    );
    assert_eq!(
        decide_srb(&srb(function::PNP, unit, pnp::QUERY_CAPABILITIES, 0), true),
        SrbAction::Capabilities {
            removable: false,
            surprise_removal_ok: true
        }
    );
    assert_eq!(
        decide_srb(&srb(function::PNP, unit, pnp::REMOVE_DEVICE, 0), true),
        SrbAction::Complete(status::SUCCESS)
    );
    assert_eq!(
        decide_srb(&srb(function::PNP, unit, 0x7F, 0), true),
        SrbAction::Complete(status::INVALID_REQUEST)
    );
    assert_eq!(
        decide_srb(&srb(function::WMI, unit, 0, 0), true),
        SrbAction::Complete(status::INVALID_REQUEST)
    );
}

/// Start `n` one-block reads and leave them in flight.
fn start_reads(h: &mut Harness, bufs: &mut [Vec<u8>]) -> Vec<u32> {
    let mut ids = Vec::new();
    for (i, b) in bufs.iter_mut().enumerate() {
        let req = ScsiRequest {
            cdb: &read10(i as u32, 1),
            data_len: 512,
            direction: Direction::In,
            data_out: &[],
        };
        let Decision::Io(plan) = h.engine.decide(&req) else {
            panic!("a plan")
        };
        let id = 1000 + i as u32;
        let storage = [IoBuf::from_slice(b)];
        // SAFETY: the caller keeps `bufs` untouched until the SRBs return,
        // and alive past the harness.
        unsafe {
            h.engine
                .start(&mut h.blk, id, SrbCtx::default(), plan, &storage)
        }
        .expect("start");
        ids.push(id);
    }
    ids
}

#[test]
fn bus_reset_resets_the_device_before_completing_outstanding_srbs() {
    let mut bufs = vec![vec![0u8; 512]; 3];
    let mut h = Harness::new(all());
    let ids = start_reads(&mut h, &mut bufs);
    assert_eq!(h.engine.pending(), 3);
    let resets_before = h.dev.resets();
    let dev = h.dev.clone();
    let mut done = Vec::new();
    h.engine
        .reset(&mut h.blk, &mut |s, c| {
            // At every completion the device has already been reset.
            assert!(
                dev.resets() > resets_before,
                "SRB completed before the device reset"
            );
            done.push((s, c));
        })
        .expect("reset");
    let mut got: Vec<u32> = done.iter().map(|d| d.0).collect();
    got.sort();
    assert_eq!(got, ids);
    assert!(done
        .iter()
        .all(|d| d.1 == Completion::status(status::BUS_RESET)));
    assert_eq!(h.engine.pending(), 0);
    // A device that answers the old requests now: nothing is completed
    // twice (the old chains are gone with the reset queues).
    h.dev.process(0);
    let mut again = Vec::new();
    h.engine
        .poll(&mut h.blk, &mut |s, c| again.push((s, c)))
        .expect("poll");
    assert!(again.is_empty());
    // And the disk works after the reset.
    let mut r = vec![0u8; 512];
    h.ok(&read10(0, 1), Direction::In, &mut r, &[]);
    assert_eq!(h.engine.stats().resets, 1);
}

#[test]
fn a_device_that_will_not_reset_keeps_its_srbs() {
    let mut bufs = vec![vec![0u8; 512]; 2];
    let mut h = Harness::new(all());
    start_reads(&mut h, &mut bufs);
    h.dev.set_refuse_reset(true);
    let mut done = Vec::new();
    let r = h.engine.reset(&mut h.blk, &mut |s, c| done.push((s, c)));
    assert!(r.is_err());
    assert!(done.is_empty(), "the device may still write those buffers");
    assert_eq!(h.engine.pending(), 2);
    // Once it resets, they come back, once.
    h.dev.set_refuse_reset(false);
    h.engine
        .reset(&mut h.blk, &mut |s, c| done.push((s, c)))
        .expect("reset");
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|d| d.1.srb_status == status::BUS_RESET));
}

#[test]
fn an_srb_is_completed_once_even_when_the_device_completes_twice() {
    let mut bufs = vec![vec![0u8; 512]; 1];
    let mut h = Harness::new(all());
    start_reads(&mut h, &mut bufs);
    let c = h.dev.take_chain(0).expect("chain");
    let (st, len) = h.dev.execute(&c);
    h.dev.write_status(&c, st);
    h.dev.push_used(0, u32::from(c.head), len);
    let mut done = Vec::new();
    h.engine
        .poll(&mut h.blk, &mut |s, c| done.push((s, c)))
        .expect("poll");
    assert_eq!(done.len(), 1);
    // The same id again: the core stops on it; the engine completes nothing.
    h.dev.push_used(0, u32::from(c.head), len);
    let r = h.engine.poll(&mut h.blk, &mut |s, c| done.push((s, c)));
    assert!(r.is_err(), "the core reports the duplicate");
    assert_eq!(done.len(), 1, "never twice");
    // Recovery is a reset, which has nothing left to complete.
    h.engine
        .reset(&mut h.blk, &mut |s, c| done.push((s, c)))
        .expect("reset");
    assert_eq!(done.len(), 1);
}

#[test]
fn a_full_table_answers_busy() {
    let mut bufs = vec![vec![0u8; 512]; 2];
    let mut h = Harness::new(all());
    let disk = *h.engine.disk();
    h.engine = Engine::new(disk, 1);
    start_reads(&mut h, &mut bufs[..1]);
    let req = ScsiRequest {
        cdb: &read10(1, 1),
        data_len: 512,
        direction: Direction::In,
        data_out: &[],
    };
    let Decision::Io(plan) = h.engine.decide(&req) else {
        panic!("a plan")
    };
    let storage = [IoBuf::from_slice(&mut bufs[1])];
    // SAFETY: refused before anything is submitted.
    let r = unsafe {
        h.engine
            .start(&mut h.blk, 5, SrbCtx::default(), plan, &storage)
    };
    let Err((5, c)) = r else {
        panic!("accepted beyond the table")
    };
    assert_eq!(c, Completion::status(status::BUSY));
    let mut done = Vec::new();
    h.engine
        .reset(&mut h.blk, &mut |s, c| done.push((s, c)))
        .expect("reset");
}
