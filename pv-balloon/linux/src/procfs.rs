//! What the runtime reads from `/proc`: memory figures (`/proc/meminfo`),
//! event counters (`/proc/vmstat`), RAM size (`/proc/iomem`) and memory
//! pressure (`/proc/pressure/memory`). Parsers take the text, so they are
//! tested without a guest; the kernel's formats are documented in
//! `Documentation/filesystems/proc.rst` and `accounting/psi.rst`.

use std::collections::HashMap;

use pv_balloon::{MemStats, StatTag};

/// `/proc/meminfo` as key → bytes (values given in kB are converted; the
/// few unitless ones, e.g. `HugePages_Total`, are kept as they are).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemInfo(HashMap<String, u64>);

impl MemInfo {
    /// Parse the text of `/proc/meminfo`; malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        let mut m = HashMap::new();
        for line in text.lines() {
            let Some((k, rest)) = line.split_once(':') else {
                continue;
            };
            let mut it = rest.split_whitespace();
            let Some(Ok(v)) = it.next().map(str::parse::<u64>) else {
                continue;
            };
            let v = match it.next() {
                Some("kB") => v.saturating_mul(1024),
                _ => v,
            };
            m.insert(k.trim().into(), v);
        }
        Self(m)
    }

    /// One figure (bytes for kB fields).
    pub fn get(&self, key: &str) -> Option<u64> {
        self.0.get(key).copied()
    }

    /// `MemAvailable`, or `MemFree` on kernels without it.
    pub fn available(&self) -> Option<u64> {
        self.get("MemAvailable").or_else(|| self.get("MemFree"))
    }
}

/// `/proc/vmstat` as key → counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmStat(HashMap<String, u64>);

impl VmStat {
    /// Parse the text of `/proc/vmstat`; malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        let mut m = HashMap::new();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            if let (Some(k), Some(Ok(v))) = (it.next(), it.next().map(str::parse::<u64>)) {
                m.insert(k.into(), v);
            }
        }
        Self(m)
    }

    /// One counter.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.0.get(key).copied()
    }
}

/// The stats the device asks for, filled the way the kernel's
/// virtio_balloon fills them (`update_balloon_stats`): swap in/out in
/// bytes, fault counts, free/total/available/caches in bytes, hugetlb
/// allocation counters. A figure the kernel does not export is left out.
pub fn mem_stats(mi: &MemInfo, vm: &VmStat) -> MemStats {
    let mut s = MemStats::default();
    let page = 4096u64;
    let mut set = |t: StatTag, v: Option<u64>| {
        if let Some(v) = v {
            s.set(t, v);
        }
    };
    set(
        StatTag::SwapIn,
        vm.get("pswpin").map(|v| v.saturating_mul(page)),
    );
    set(
        StatTag::SwapOut,
        vm.get("pswpout").map(|v| v.saturating_mul(page)),
    );
    set(StatTag::MajFlt, vm.get("pgmajfault"));
    // The kernel reports all faults (PGFAULT) as minor ones.
    set(StatTag::MinFlt, vm.get("pgfault"));
    set(StatTag::MemFree, mi.get("MemFree"));
    set(StatTag::MemTot, mi.get("MemTotal"));
    set(StatTag::Avail, mi.get("MemAvailable"));
    // NR_FILE_PAGES, which meminfo splits into Cached, Buffers, SwapCached.
    let caches = match (mi.get("Cached"), mi.get("Buffers")) {
        (Some(c), Some(b)) => Some(
            c.saturating_add(b)
                .saturating_add(mi.get("SwapCached").unwrap_or(0)),
        ),
        _ => None,
    };
    set(StatTag::Caches, caches);
    set(StatTag::HtlbPgalloc, vm.get("htlb_buddy_alloc_success"));
    set(StatTag::HtlbPgfail, vm.get("htlb_buddy_alloc_fail"));
    s
}

/// Bytes of guest RAM from `/proc/iomem`: the sum of the top-level
/// `System RAM` ranges (what the device's `num_pages` is counted against;
/// `MemTotal` is smaller by what the kernel reserved). `None` when the file
/// shows no ranges (not root: addresses read as zero).
pub fn system_ram_bytes(iomem: &str) -> Option<u64> {
    let mut total = 0u64;
    for line in iomem.lines() {
        if line.starts_with(' ') {
            continue;
        }
        let Some((range, name)) = line.split_once(" : ") else {
            continue;
        };
        if name.trim() != "System RAM" {
            continue;
        }
        let Some((a, b)) = range.trim().split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        if b > a {
            total = total.saturating_add(b - a + 1);
        }
    }
    (total > 0).then_some(total)
}

/// `full avg10` of `/proc/pressure/memory` (percent of the last 10 s in
/// which every non-idle task stalled on memory).
pub fn psi_full_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("full "))?;
    let v = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?;
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:         493128 kB\n\
        MemFree:          120000 kB\n\
        MemAvailable:     300000 kB\n\
        Buffers:            1000 kB\n\
        Cached:            20000 kB\n\
        SwapCached:            0 kB\n\
        HugePages_Total:       2\n\
        garbage line\n\
        Bad:        x kB\n";

    const VMSTAT: &str = "nr_free_pages 30000\npgfault 123456\npgmajfault 42\n\
        pswpin 2\npswpout 3\nhtlb_buddy_alloc_success 2\nhtlb_buddy_alloc_fail 0\nbroken\n";

    #[test]
    fn meminfo_in_bytes() {
        let m = MemInfo::parse(MEMINFO);
        assert_eq!(m.get("MemTotal"), Some(493128 * 1024));
        assert_eq!(m.available(), Some(300000 * 1024));
        assert_eq!(m.get("HugePages_Total"), Some(2));
        assert_eq!(m.get("Bad"), None);
        let old = MemInfo::parse("MemFree: 10 kB\n");
        assert_eq!(old.available(), Some(10240));
    }

    #[test]
    fn every_standard_tag_is_filled() {
        let s = mem_stats(&MemInfo::parse(MEMINFO), &VmStat::parse(VMSTAT));
        for t in StatTag::ALL {
            assert!(s.get(t).is_some(), "{t:?} missing");
        }
        assert_eq!(s.get(StatTag::SwapIn), Some(2 * 4096));
        assert_eq!(s.get(StatTag::SwapOut), Some(3 * 4096));
        assert_eq!(s.get(StatTag::MajFlt), Some(42));
        assert_eq!(s.get(StatTag::MinFlt), Some(123456));
        assert_eq!(s.get(StatTag::MemFree), Some(120000 * 1024));
        assert_eq!(s.get(StatTag::Caches), Some(21000 * 1024));
        assert_eq!(s.get(StatTag::HtlbPgalloc), Some(2));
        assert_eq!(s.get(StatTag::HtlbPgfail), Some(0));
        let empty = mem_stats(&MemInfo::default(), &VmStat::default());
        assert_eq!(empty, MemStats::default());
    }

    #[test]
    fn iomem_sums_top_level_system_ram() {
        let iomem = "00000000-00000fff : Reserved\n\
            00001000-0009fbff : System RAM\n\
            000a0000-000bffff : PCI Bus 0000:00\n\
            00100000-1ffdffff : System RAM\n\
            \x20 01000000-01ffffff : Kernel code\n\
            fd000000-fdffffff : 0000:00:02.0\n";
        assert_eq!(
            system_ram_bytes(iomem),
            Some((0x9fbff - 0x1000 + 1) + (0x1ffdffff - 0x100000 + 1))
        );
        assert_eq!(system_ram_bytes("00000000-00000000 : System RAM\n"), None);
    }

    #[test]
    fn psi_full_avg10_parsed() {
        let t = "some avg10=1.50 avg60=0.30 avg300=0.00 total=123\n\
                 full avg10=12.25 avg60=0.10 avg300=0.00 total=45\n";
        assert_eq!(psi_full_avg10(t), Some(12.25));
        assert_eq!(psi_full_avg10("some avg10=1.0\n"), None);
    }
}
