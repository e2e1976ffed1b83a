//! A short deterministic run of the CDB fuzz driver
//! (`pv_blk_windows::testing::cdb`) so every test run exercises the
//! decisions on random commands; `pv-blk/windows/fuzz/` runs the same
//! driver for real campaigns.

use pv_blk_windows::testing::Outcome;

/// xorshift64*: deterministic inputs without a dependency.
fn inputs(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut x = seed;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..n)
        .map(|_| {
            let len = (next() % 600) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Aim half the inputs at commands this miniport implements on a
            // small 512-byte disk the core's fake can hold, with small
            // fields, so the run reaches past "invalid opcode" and into the
            // core; the other half stays wholly random.
            const OPS: [(u8, u8); 16] = [
                (0x08, 6),
                (0x0A, 6),
                (0x28, 10),
                (0x2A, 10),
                (0x88, 16),
                (0x8A, 16),
                (0xA8, 12),
                (0xAA, 12),
                (0x35, 10),
                (0x91, 16),
                (0x42, 10),
                (0x41, 10),
                (0x93, 16),
                (0x12, 6),
                (0x1A, 6),
                (0x9E, 16),
            ];
            if v.len() > 64 && next() % 2 == 0 {
                let (op, n) = OPS[(next() % 16) as usize];
                v[0] &= 0x7F; // capacity modulo 8192 sectors
                if next() % 2 == 0 {
                    // A tiny disk: small LBAs and lengths meet its end.
                    v[4..12].copy_from_slice(&(next() % 24).to_le_bytes());
                }
                // The fake's discard limit; half the disks have 512-byte
                // blocks (those run through the core).
                v[1] = 0x04 | (next() % 4) as u8;
                v[2] = n;
                // Both directions allowed, mostly.
                v[3] = if next() % 8 == 0 { v[3] } else { 3 };
                v[12..15].copy_from_slice(&[0, 0, 1]); // 64 KiB buffer
                v[16] = op;
                for b in v[17..16 + usize::from(n)].iter_mut() {
                    // Mostly zero, some small values: in-range commands.
                    *b = if next() % 8 == 0 {
                        (next() % 8) as u8
                    } else {
                        0
                    };
                }
                // Small transfer lengths, and allocation lengths and page
                // codes that ask for data.
                v[16 + usize::from(n) - 2] = (next() % 16) as u8;
                match op {
                    0x12 => v[16 + 4] = 0xFF,
                    0x1A => {
                        v[16 + 2] = if next() % 2 == 0 { 0x08 } else { 0x3F };
                        v[16 + 4] = 0xFF;
                    }
                    0x9E => {
                        v[16 + 1] = 0x10;
                        v[16 + 13] = 32;
                    }
                    _ => {}
                }
                // UNMAP / WRITE SAME data: a small parameter list.
                if op == 0x42 {
                    v[16 + 7] = 0;
                    v[16 + 8] = 24;
                    let p = 16 + usize::from(n);
                    v[p..p + 4].copy_from_slice(&[0, 22, 0, 16]);
                    v[p + 8..p + 24].fill(0);
                    v[p + 15] = 1 + (next() % 8) as u8;
                    v[p + 19] = (next() % 16) as u8;
                }
            }
            v
        })
        .collect()
}

#[test]
fn cdb_decisions_hold_their_invariants_on_random_commands() {
    let mut seen = std::collections::BTreeMap::new();
    for i in inputs(0x5eed_5c51, 3000) {
        *seen.entry(pv_blk_windows::testing::cdb(&i)).or_insert(0u32) += 1;
    }
    eprintln!("outcomes: {seen:?}");
    // The run is only worth something if it reaches every kind of outcome,
    // plans carried out by the core included.
    for o in [
        Outcome::Good,
        Outcome::Data,
        Outcome::Check,
        Outcome::Io,
        Outcome::IoThroughCore,
    ] {
        assert!(
            seen.get(&o).copied().unwrap_or(0) >= 5,
            "{o:?} reached too rarely: {seen:?}"
        );
    }
}

/// Valid SRB_EX requests of every block kind, then each mutated at random
/// bytes (a third of them in the header, offsets and lengths): the SRB_EX
/// fuzz driver's invariants hold on all, and the run reaches refusals and
/// decoded requests with and without a CDB.
#[test]
fn srb_ex_decoding_holds_its_invariants_on_mutated_requests() {
    use pv_blk_windows::srb::{function, Address};
    use pv_blk_windows::srb_ex::build::{srb, Block};
    use pv_blk_windows::testing::{srb_ex, SrbExOutcome};

    let unit = Address::default();
    let seeds = [
        srb(
            function::EXECUTE_SCSI,
            0x40,
            unit,
            (0x1000, 512),
            &[Block::Cdb16(
                vec![0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                18,
                0x2000,
            )],
        ),
        srb(
            function::EXECUTE_SCSI,
            0x80,
            unit,
            (0x1000, 512),
            &[Block::Cdb32(vec![0x8A; 16], 18, 0x2000)],
        ),
        srb(
            function::EXECUTE_SCSI,
            0,
            unit,
            (0, 0),
            &[Block::CdbVar(vec![0x00; 6], 0, 0)],
        ),
        srb(function::PNP, 0, unit, (0, 0), &[Block::Pnp(0x9, 0)]),
        srb(function::POWER, 0, unit, (0, 0), &[Block::Power(4)]),
    ];
    let mut seen = std::collections::BTreeMap::new();
    for (k, mut v) in inputs(0x5eed_5b0e, 3000).into_iter().enumerate() {
        let seed = &seeds[k % seeds.len()];
        let mut s = seed.clone();
        // Mutate 1-4 bytes at positions taken from the random input.
        for w in v.chunks(3).take(1 + k % 4) {
            if w.len() == 3 {
                let at = if w[0] % 3 == 0 {
                    usize::from(w[1]) % 0x80
                } else {
                    (usize::from(w[1]) << 8 | usize::from(w[2])) % s.len()
                };
                s[at] = w[2];
            }
        }
        if k % 7 == 0 {
            s.truncate(usize::from(v.first().copied().unwrap_or(0)) % s.len());
        }
        if k % 11 == 0 {
            // Wholly random bytes too.
            v.resize(0x100, 0);
            s = v;
        }
        *seen.entry(srb_ex(&s)).or_insert(0u32) += 1;
    }
    for seed in &seeds {
        assert_ne!(srb_ex(seed), SrbExOutcome::Refused, "a valid seed");
    }
    eprintln!("SRB_EX outcomes: {seen:?}");
    for o in [
        SrbExOutcome::Refused,
        SrbExOutcome::Scsi,
        SrbExOutcome::Other,
    ] {
        assert!(
            seen.get(&o).copied().unwrap_or(0) >= 50,
            "{o:?} reached too rarely: {seen:?}"
        );
    }
}
