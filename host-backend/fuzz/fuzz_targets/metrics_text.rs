//! `pvbackend top`'s reader of a metrics endpoint's answer, on any bytes:
//! every text yields samples or a typed error, never a panic, and what it
//! accepts is well-formed (names and label keys in the format's alphabet)
//! and goes through the snapshot and rate code without a panic.
#![no_main]

use host_backend::top::expo::parse;
use host_backend::top::rates::compute;
use host_backend::top::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(samples) = parse(text) else {
        return;
    };
    for s in &samples {
        assert!(!s.name.is_empty());
        assert!(s
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        for (k, _) in &s.labels {
            assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        }
    }
    let snap = Snapshot::from_samples(&samples);
    let report = compute(&Snapshot::default(), &snap, 1.0);
    let again = compute(&snap, &snap, 1.0);
    assert_eq!(report.guests.len(), again.guests.len());
});
