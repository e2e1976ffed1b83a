//! A minimal stderr logger for the guest daemons (static binaries with no
//! journald or syslog in the test guests): `name: LEVEL target: message`,
//! with seconds since start so logs from a slow TCG guest can be read
//! against the console.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use log::{LevelFilter, Log, Metadata, Record};

#[derive(Debug)]
struct StderrLogger {
    name: &'static str,
    start: Instant,
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = self.start.elapsed();
        let _ = writeln!(
            std::io::stderr().lock(),
            "{} [{:>4}.{:03}] {:<5} {}: {}",
            self.name,
            t.as_secs(),
            t.subsec_millis(),
            r.level(),
            r.target(),
            r.args()
        );
    }

    fn flush(&self) {}
}

static LOGGER: OnceLock<StderrLogger> = OnceLock::new();

/// A `--log-level` value (clap `value_parser`): off, error, warn, info,
/// debug or trace.
pub fn parse_level(s: &str) -> std::result::Result<LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not one of off, error, warn, info, debug, trace"))
}

/// Install the logger for program `name` at `level` (once; later calls only
/// change the level).
pub fn init(name: &'static str, level: LevelFilter) {
    let l = LOGGER.get_or_init(|| StderrLogger {
        name,
        start: Instant::now(),
    });
    let _ = log::set_logger(l);
    log::set_max_level(level);
}

/// How a guest daemon's `main` ends: logs `stopped cleanly` or the error
/// (under the daemon's own `name` as log target, as its other lines) and
/// turns that into the exit status.
pub fn finish<E: std::fmt::Display>(name: &str, result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => {
            log::info!(target: name, "stopped cleanly");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!(target: name, "{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
