//! What QEMU (and, through guest-stats, the guest) sends the balloon
//! manager: any bytes as a QMP line, any JSON as guest statistics, any text
//! as a metrics page for `pvbackend guests`. Typed results, never a panic,
//! and the statistics' invariants hold for whatever was accepted.
#![no_main]

use host_backend::balloon::cli::{parse_series, rows};
use host_backend::balloon::guest::GuestStats;
use host_backend::balloon::qmp::{parse_message, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Message::Return { value, .. }) = parse_message(data) {
        let s = GuestStats::parse(&value);
        if let Some(t) = s.total {
            assert!(s.free.is_none_or(|f| f <= t));
            assert!(s.available.is_none_or(|a| a <= t));
        }
        for v in [s.free, s.total, s.available, s.swap_in, s.major_faults] {
            assert_ne!(v, Some(u64::MAX), "the not-reported marker leaked");
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.lines() {
            let _ = parse_series(line);
        }
        let _ = rows(text);
    }
});
