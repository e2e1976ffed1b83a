//! Fault injection for tests, armed only by environment variables the
//! operator sets when starting the daemon (a guest cannot arm it; with the
//! variables unset every hook is a no-op). The daemon logs a warning at
//! start when a fault is armed.
//!
//! - `PVBACKEND_FAULT_PANIC_SECTOR=N`: the first read that covers
//!   sector N on each disk panics where it executes (the queue worker or
//!   an I/O thread), to test that a panic resets the device instead of
//!   killing the daemon.
//! - `PVBACKEND_FAULT_DELAY_US=N`: every disk operation (read, write,
//!   flush, discard, write-zeroes) first sleeps N µs, as a slow device
//!   would; non-blocking attempts report "would block" so hybrid mode
//!   hands the request to the pool. For the slow-device benchmark.
//! - `PVBACKEND_FAULT_STALL_SECTOR=N` with `PVBACKEND_FAULT_STALL_UNTIL=PATH`:
//!   a read that covers sector N, executed by the disk (not a non-blocking
//!   attempt: use `io=pool`), is held until PATH exists, as a request stuck
//!   in a hung disk would be; logged when it starts holding. For the
//!   bounded queue stop (`stop_timeout_ms`).
//! - `PVBACKEND_FAULT_WEDGE_MS=N`: N ms after it starts, the server thread
//!   of the first disk blocks for good while marked busy, as a thread
//!   stuck on a dead device would; the systemd watchdog must then stop
//!   ([`crate::liveness`]). Needs no frontend, so a packaged daemon can be
//!   tested on a system without QEMU.
//! - `PVBACKEND_FAULT_SECCOMP_SECTOR=N`: a read that covers sector N makes
//!   the thread executing it (the queue worker with `io=sync`) call
//!   `socket(2)`, outside the allow-list of every data-path thread: the
//!   seccomp filter must stop the daemon ([`crate::sandbox`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The armed faults (read once from the environment).
#[derive(Debug, Default)]
pub struct Faults {
    pub panic_sector: Option<u64>,
    pub delay: Option<Duration>,
    /// The sector whose reads stall, and the file that releases them.
    pub stall: Option<(u64, PathBuf)>,
    pub wedge_after: Option<Duration>,
    pub forbidden_syscall_sector: Option<u64>,
}

impl Faults {
    pub fn get() -> &'static Faults {
        static F: OnceLock<Faults> = OnceLock::new();
        F.get_or_init(|| {
            let num = |k: &str| {
                std::env::var(k)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            Faults {
                panic_sector: num("PVBACKEND_FAULT_PANIC_SECTOR"),
                delay: num("PVBACKEND_FAULT_DELAY_US")
                    .filter(|&us| us > 0)
                    .map(Duration::from_micros),
                stall: num("PVBACKEND_FAULT_STALL_SECTOR")
                    .zip(std::env::var_os("PVBACKEND_FAULT_STALL_UNTIL").map(PathBuf::from)),
                wedge_after: num("PVBACKEND_FAULT_WEDGE_MS").map(Duration::from_millis),
                forbidden_syscall_sector: num("PVBACKEND_FAULT_SECCOMP_SECTOR"),
            }
        })
    }

    pub fn armed(&self) -> bool {
        self.panic_sector.is_some()
            || self.delay.is_some()
            || self.stall.is_some()
            || self.wedge_after.is_some()
            || self.forbidden_syscall_sector.is_some()
    }

    /// Holds a read that covers the stall sector until the release file
    /// exists.
    pub fn stall(&self, offset: u64, len: u64) {
        let Some((n, release)) = &self.stall else {
            return;
        };
        let (first, end) = (offset / 512, offset.saturating_add(len).div_ceil(512));
        if !(first..end).contains(n) || release.exists() {
            return;
        }
        log::warn!(
            "fault injection: read of sector {n} stalls until {} exists",
            release.display()
        );
        while !release.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Blocks this thread for good once `started` is older than the armed
    /// wedge time (the caller holds a busy mark).
    pub fn wedge_if_due(&self, started: std::time::Instant) {
        if self.wedge_after.is_some_and(|w| started.elapsed() >= w) {
            log::error!("fault injection: wedging this thread for good");
            loop {
                std::thread::park();
            }
        }
    }

    /// Sleeps the configured delay, if any.
    pub fn delay(&self) {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
    }
}

/// Per-disk fault state (survives reconnections).
#[derive(Debug, Default)]
pub struct DiskFaults {
    panicked: AtomicBool,
}

impl DiskFaults {
    /// Panics the first time a read covers the armed sector; makes a
    /// forbidden syscall when a read covers the seccomp sector.
    pub fn on_read(&self, offset: u64, len: u64) {
        let covers = |n: u64| {
            let (first, end) = (offset / 512, offset.saturating_add(len).div_ceil(512));
            (first..end).contains(&n)
        };
        if Faults::get().forbidden_syscall_sector.is_some_and(covers) {
            log::warn!("fault injection: a forbidden syscall (socket) in this thread");
            // SAFETY: socket(2) takes no pointers.
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0) };
            if fd >= 0 {
                // SAFETY: the fd is ours (just created, shared with no one);
                // the filter let the call through (log or off mode).
                unsafe { libc::close(fd) };
            }
        }
        let Some(n) = Faults::get().panic_sector else {
            return;
        };
        let (first, end) = (offset / 512, offset.saturating_add(len).div_ceil(512));
        if (first..end).contains(&n) && !self.panicked.swap(true, Ordering::AcqRel) {
            panic!("fault injection: read of sector {n}");
        }
    }
}
