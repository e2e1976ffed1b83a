//! What QEMU (and, through guest-stats, the guest) sends the balloon
//! manager: any bytes as a QMP line, any JSON as guest statistics, any text
//! as a metrics page for `pvbackend guests`. Typed results, never a panic,
//! and the statistics' invariants hold for whatever was accepted.
#![no_main]

use host_backend::balloon::cli::{parse_series, rows};
use host_backend::balloon::device::GuestStats;
use host_backend::balloon::qmp::{parse_message, Message};
use libfuzzer_sys::fuzz_target;

fn check(s: &GuestStats) {
    if let Some(t) = s.total {
        assert!(s.free.is_none_or(|f| f <= t));
        assert!(s.available.is_none_or(|a| a <= t));
    }
    for v in [s.free, s.total, s.available, s.swap_in, s.major_faults] {
        assert_ne!(v, Some(u64::MAX), "the not-reported marker leaked");
    }
}

const KEYS: [&str; 8] = [
    "stat-swap-in",
    "stat-swap-out",
    "stat-major-faults",
    "stat-minor-faults",
    "stat-free-memory",
    "stat-total-memory",
    "stat-available-memory",
    "stat-disk-caches",
];

fuzz_target!(|data: &[u8]| {
    if let Ok(Message::Return { value, .. }) = parse_message(data) {
        check(&GuestStats::parse(&value));
    }
    // Well-formed guest-stats replies with hostile numbers (random bytes
    // seldom make JSON): each 9-byte chunk picks a key and a value, with
    // all-ones, zero and huge values likely.
    let mut stats = String::from("{\"return\": {\"stats\": {");
    for (i, c) in data.chunks_exact(9).take(12).enumerate() {
        let v = match c[0] >> 5 {
            0 => u64::MAX,
            1 => 0,
            _ => u64::from_le_bytes([c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]]),
        };
        if i > 0 {
            stats.push(',');
        }
        stats.push_str(&format!(
            "\"{}\": {v}",
            KEYS[usize::from(c[0]) % KEYS.len()]
        ));
    }
    stats.push_str("}, \"last-update\": 1}, \"id\": 1}");
    match parse_message(stats.as_bytes()) {
        Ok(Message::Return { value, .. }) => check(&GuestStats::parse(&value)),
        other => panic!("built reply did not parse: {other:?}"),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.lines() {
            let _ = parse_series(line);
        }
        let _ = rows(text);
    }
});
