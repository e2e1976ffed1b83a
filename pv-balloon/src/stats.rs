//! Guest memory statistics for the virtio-balloon stats queue (§5.5.6.3):
//! an array of 10-byte entries, `tag` le16 then `val` le64, packed
//! ([`pv_virtq::wire::balloon::Stat`]).

use pv_virtq::wire::balloon::Stat;
use zerocopy::{FromBytes, IntoBytes};

/// Bytes of one stats entry on the wire.
pub const STAT_ENTRY_BYTES: usize = size_of::<Stat>();
/// Standard tags.
pub const STAT_TAGS: usize = 10;
/// Largest stats buffer this driver sends.
pub const STATS_MAX_BYTES: usize = STAT_ENTRY_BYTES * STAT_TAGS;

/// The standard stats tags (`VIRTIO_BALLOON_S_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u16)]
pub enum StatTag {
    /// Bytes swapped in.
    SwapIn = 0,
    /// Bytes swapped out.
    SwapOut = 1,
    /// Major page faults.
    MajFlt = 2,
    /// Minor page faults.
    MinFlt = 3,
    /// Free memory in bytes.
    MemFree = 4,
    /// Total memory in bytes.
    MemTot = 5,
    /// Memory available for new work without swapping, in bytes.
    Avail = 6,
    /// Disk caches that can be reclaimed, in bytes.
    Caches = 7,
    /// Successful hugetlb page allocations.
    HtlbPgalloc = 8,
    /// Failed hugetlb page allocations.
    HtlbPgfail = 9,
}

impl StatTag {
    /// Every standard tag, in tag order.
    pub const ALL: [StatTag; STAT_TAGS] = [
        StatTag::SwapIn,
        StatTag::SwapOut,
        StatTag::MajFlt,
        StatTag::MinFlt,
        StatTag::MemFree,
        StatTag::MemTot,
        StatTag::Avail,
        StatTag::Caches,
        StatTag::HtlbPgalloc,
        StatTag::HtlbPgfail,
    ];

    /// The tag for a wire value.
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }
}

/// One stats report: a value per tag the glue knows (absent tags are not
/// sent; the device keeps its previous value or reports none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    values: [Option<u64>; STAT_TAGS],
}

impl MemStats {
    /// Set `tag` to `v`.
    pub fn set(&mut self, tag: StatTag, v: u64) -> &mut Self {
        self.values[tag as usize] = Some(v);
        self
    }

    /// Forget `tag`.
    pub fn clear(&mut self, tag: StatTag) -> &mut Self {
        self.values[tag as usize] = None;
        self
    }

    /// The value of `tag`.
    pub fn get(&self, tag: StatTag) -> Option<u64> {
        self.values[tag as usize]
    }

    /// Encode into `out` in tag order; returns the bytes written (entries
    /// that do not fit are left out).
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let mut off = 0;
        for tag in StatTag::ALL {
            let Some(v) = self.get(tag) else { continue };
            let Some(dst) = out.get_mut(off..off + STAT_ENTRY_BYTES) else {
                break;
            };
            let e = Stat {
                tag: (tag as u16).into(),
                val: v.into(),
            };
            dst.copy_from_slice(e.as_bytes());
            off += STAT_ENTRY_BYTES;
        }
        off
    }

    /// Decode a stats buffer (what a device does; used by the fakes and the
    /// host side). Unknown tags are skipped, a trailing partial entry is
    /// ignored.
    pub fn decode(bytes: &[u8]) -> Self {
        let mut s = Self::default();
        for e in bytes.chunks_exact(STAT_ENTRY_BYTES) {
            let Ok(e) = Stat::read_from_bytes(e) else {
                continue;
            };
            if let Some(t) = StatTag::from_u16(e.tag.get()) {
                s.set(t, e.val.get());
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_ten_packed_little_endian_bytes() {
        let mut s = MemStats::default();
        s.set(StatTag::MemTot, 0x0102_0304_0506_0708)
            .set(StatTag::SwapIn, 1);
        let mut out = [0xAAu8; STATS_MAX_BYTES];
        let n = s.encode(&mut out);
        assert_eq!(n, 20);
        assert_eq!(
            &out[..20],
            &[
                0, 0, 1, 0, 0, 0, 0, 0, 0, 0, // SWAP_IN = 1
                5, 0, 8, 7, 6, 5, 4, 3, 2, 1, // MEMTOT
            ]
        );
        assert_eq!(out[20], 0xAA);
        assert_eq!(MemStats::decode(&out[..n]), s);
    }

    #[test]
    fn every_tag_has_its_spec_number() {
        for (i, t) in StatTag::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i);
            assert_eq!(StatTag::from_u16(i as u16), Some(*t));
        }
        assert_eq!(StatTag::from_u16(10), None);
        let mut all = MemStats::default();
        for t in StatTag::ALL {
            all.set(t, t as u64 * 100);
        }
        let mut out = [0u8; STATS_MAX_BYTES];
        assert_eq!(all.encode(&mut out), STATS_MAX_BYTES);
        assert_eq!(all.encode(&mut out[..15]), 10);
    }
}
