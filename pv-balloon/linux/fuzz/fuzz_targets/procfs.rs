//! The Linux runtime's `/proc` parsers (`/proc/meminfo`, `/proc/vmstat`,
//! `/proc/iomem`, `/proc/pressure/memory`) over arbitrary text: no panic,
//! no overflow, and every figure the stats carry comes from the input.
//!
//! "Comes from the input" is checked against a reading of the text written
//! here from the kernel's formats (`Documentation/filesystems/proc.rst`,
//! `accounting/psi.rst`), not from the parsers: for every key a line of the
//! text names, the parsed figure is the one the last well-formed line for
//! that key gives (kB converted to bytes), or absent when no line for it is
//! well formed; every statistic is the figure its tag is documented to take;
//! the RAM size is the sum of the top-level `System RAM` ranges; the PSI
//! figure is the `avg10=` of the first `full` line.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use pv_balloon::StatTag;
use pv_balloon_linux::procfs::{self, MemInfo, VmStat};

/// The figure the last well-formed `key: N [kB]` line gives, scanning the
/// text from its end.
fn meminfo_figure(text: &str, key: &str) -> Option<u64> {
    text.lines().rev().find_map(|line| {
        let (k, rest) = line.split_once(':')?;
        if k.trim() != key {
            return None;
        }
        let mut words = rest.split_whitespace();
        let n: u64 = words.next()?.parse().ok()?;
        Some(if words.next() == Some("kB") {
            n.saturating_mul(1024)
        } else {
            n
        })
    })
}

/// The figure the last well-formed `key N` line gives.
fn vmstat_figure(text: &str, key: &str) -> Option<u64> {
    text.lines().rev().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != key {
            return None;
        }
        words.next()?.parse().ok()
    })
}

/// Sum of the lengths of the top-level `start-end : System RAM` ranges.
fn system_ram(text: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| {
            let (range, name) = l.split_once(" : ")?;
            (name.trim() == "System RAM").then_some(())?;
            let (a, b) = range.trim().split_once('-')?;
            let a = u64::from_str_radix(a, 16).ok()?;
            let b = u64::from_str_radix(b, 16).ok()?;
            (b > a).then(|| (b - a).saturating_add(1))
        })
        .fold(0u64, u64::saturating_add)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mi = MemInfo::parse(&text);
    let vm = VmStat::parse(&text);

    // Every key a line names: the parsed figure is the input's, and a key
    // no line gives a figure for has none.
    let mut meminfo_keys = BTreeSet::new();
    let mut vmstat_keys = BTreeSet::new();
    for line in text.lines() {
        if let Some((k, _)) = line.split_once(':') {
            meminfo_keys.insert(k.trim());
        }
        if let Some(k) = line.split_whitespace().next() {
            vmstat_keys.insert(k);
        }
    }
    for k in meminfo_keys {
        assert_eq!(mi.get(k), meminfo_figure(&text, k), "meminfo {k:?}");
    }
    for k in vmstat_keys {
        assert_eq!(vm.get(k), vmstat_figure(&text, k), "vmstat {k:?}");
    }
    let free = meminfo_figure(&text, "MemFree");
    let available = meminfo_figure(&text, "MemAvailable");
    assert_eq!(mi.available(), available.or(free));

    // Each statistic is the figure its tag takes, and nothing else.
    let page = |k: &str| vmstat_figure(&text, k).map(|v| v.saturating_mul(4096));
    let caches = match (
        meminfo_figure(&text, "Cached"),
        meminfo_figure(&text, "Buffers"),
    ) {
        (Some(c), Some(b)) => Some(
            c.saturating_add(b)
                .saturating_add(meminfo_figure(&text, "SwapCached").unwrap_or(0)),
        ),
        _ => None,
    };
    let stats = procfs::mem_stats(&mi, &vm);
    for tag in StatTag::ALL {
        let want = match tag {
            StatTag::SwapIn => page("pswpin"),
            StatTag::SwapOut => page("pswpout"),
            StatTag::MajFlt => vmstat_figure(&text, "pgmajfault"),
            StatTag::MinFlt => vmstat_figure(&text, "pgfault"),
            StatTag::MemFree => free,
            StatTag::MemTot => meminfo_figure(&text, "MemTotal"),
            StatTag::Avail => available,
            StatTag::Caches => caches,
            StatTag::HtlbPgalloc => vmstat_figure(&text, "htlb_buddy_alloc_success"),
            StatTag::HtlbPgfail => vmstat_figure(&text, "htlb_buddy_alloc_fail"),
        };
        assert_eq!(stats.get(tag), want, "{tag:?}");
    }

    let ram = system_ram(&text);
    assert_eq!(procfs::system_ram_bytes(&text), (ram > 0).then_some(ram));

    // PSI: the `avg10=` word of the first `full ` line, parsed as written.
    let psi = procfs::psi_full_avg10(&text);
    let want = text
        .lines()
        .find(|l| l.starts_with("full "))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("avg10=")))
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(psi.map(f64::to_bits), want.map(f64::to_bits));
});
