//! Self-describing block stamps for end-to-end data checks.
//!
//! Every block written by the guest I/O tool carries a 32-byte header (magic,
//! seed, block index, block size) followed by bytes from a deterministic
//! generator keyed by seed and index. A checker on the other side of any data
//! path (guest, host image file, backend) can then tell, for each block, not
//! only *that* it is wrong but *how*: never written, written by another run
//! (seed), written to the wrong place (index), or torn/corrupted (offset).
//!
//! The format is the same on every platform (little-endian fields).

use core::fmt;

/// First 8 bytes of every stamped block.
pub const MAGIC: [u8; 8] = *b"PVSTAMP1";
/// Bytes taken by the header at the start of a block.
pub const HEADER_LEN: usize = 32;
/// Smallest block that can carry a stamp (one sector).
pub const MIN_BLOCK: usize = 512;

/// Why a block does not carry the expected stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StampError {
    /// The buffer is not a multiple of 8 bytes or is smaller than [`MIN_BLOCK`].
    BadBlockSize(usize),
    /// The block does not start with [`MAGIC`]: it was never written by a stamper.
    NoStamp,
    /// The block was written by a run with another seed.
    WrongSeed { found: u64 },
    /// The block's stamp names another block index: data landed in the wrong place.
    WrongIndex { found: u64 },
    /// The block was stamped with another block size.
    WrongBlockSize { found: u64 },
    /// Header is right but the payload differs from the first differing byte on.
    Corrupt { offset: usize },
}

impl fmt::Display for StampError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadBlockSize(n) => write!(
                f,
                "block size {n} is not a multiple of 8 of at least {MIN_BLOCK}"
            ),
            Self::NoStamp => f.write_str("block carries no stamp (never written)"),
            Self::WrongSeed { found } => {
                write!(f, "block was written by another run (seed {found:#x})")
            }
            Self::WrongIndex { found } => write!(
                f,
                "block holds the stamp of block {found} (misplaced write)"
            ),
            Self::WrongBlockSize { found } => {
                write!(f, "block was stamped with block size {found}")
            }
            Self::Corrupt { offset } => write!(f, "payload differs from byte {offset} on"),
        }
    }
}

/// SplitMix64: a small, well-distributed generator; good enough to make every
/// block's payload unique for a given (seed, index).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn check_size(len: usize) -> Result<(), StampError> {
    if len < MIN_BLOCK || !len.is_multiple_of(8) {
        return Err(StampError::BadBlockSize(len));
    }
    Ok(())
}

fn payload_words(seed: u64, index: u64) -> SplitMix64 {
    SplitMix64(seed ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// Fills `block` with the stamp for (`seed`, `index`).
pub fn stamp(block: &mut [u8], seed: u64, index: u64) -> Result<(), StampError> {
    check_size(block.len())?;
    let (header, payload) = block.split_at_mut(HEADER_LEN);
    header[0..8].copy_from_slice(&MAGIC);
    header[8..16].copy_from_slice(&seed.to_le_bytes());
    header[16..24].copy_from_slice(&index.to_le_bytes());
    header[24..32].copy_from_slice(&(block_len_u64(payload.len() + HEADER_LEN)).to_le_bytes());
    let mut rng = payload_words(seed, index);
    for chunk in payload.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes());
    }
    Ok(())
}

/// Checks that `block` carries exactly the stamp for (`seed`, `index`).
pub fn verify(block: &[u8], seed: u64, index: u64) -> Result<(), StampError> {
    check_size(block.len())?;
    if block[0..8] != MAGIC {
        return Err(StampError::NoStamp);
    }
    let field = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&block[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let found_seed = field(8);
    if found_seed != seed {
        return Err(StampError::WrongSeed { found: found_seed });
    }
    let found_index = field(16);
    if found_index != index {
        return Err(StampError::WrongIndex { found: found_index });
    }
    let found_size = field(24);
    if found_size != block_len_u64(block.len()) {
        return Err(StampError::WrongBlockSize { found: found_size });
    }
    let mut rng = payload_words(seed, index);
    for (i, chunk) in block[HEADER_LEN..].chunks_exact(8).enumerate() {
        let want = rng.next().to_le_bytes();
        if chunk != want {
            let first = chunk
                .iter()
                .zip(want.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(StampError::Corrupt {
                offset: HEADER_LEN + i * 8 + first,
            });
        }
    }
    Ok(())
}

fn block_len_u64(len: usize) -> u64 {
    // usize is at most 64 bits on every target we build for.
    len as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_then_verify_round_trips() {
        let mut b = [0u8; 4096];
        stamp(&mut b, 7, 42).expect("stamp");
        assert_eq!(verify(&b, 7, 42), Ok(()));
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let mut b = [0u8; 512];
        assert_eq!(verify(&b, 1, 0), Err(StampError::NoStamp));
        stamp(&mut b, 1, 9).expect("stamp");
        assert_eq!(verify(&b, 2, 9), Err(StampError::WrongSeed { found: 1 }));
        assert_eq!(verify(&b, 1, 8), Err(StampError::WrongIndex { found: 9 }));
        b[300] ^= 0x10;
        assert_eq!(verify(&b, 1, 9), Err(StampError::Corrupt { offset: 300 }));
        let mut big = [0u8; 1024];
        stamp(&mut big, 1, 9).expect("stamp");
        assert_eq!(
            verify(&big[..512], 1, 9),
            Err(StampError::WrongBlockSize { found: 1024 })
        );
        assert_eq!(
            stamp(&mut [0u8; 100], 1, 1),
            Err(StampError::BadBlockSize(100))
        );
    }

    #[test]
    fn payloads_differ_between_blocks_and_seeds() {
        let (mut a, mut b, mut c) = ([0u8; 512], [0u8; 512], [0u8; 512]);
        stamp(&mut a, 1, 1).expect("stamp");
        stamp(&mut b, 1, 2).expect("stamp");
        stamp(&mut c, 2, 1).expect("stamp");
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
        assert_ne!(a[HEADER_LEN..], c[HEADER_LEN..]);
    }
}
