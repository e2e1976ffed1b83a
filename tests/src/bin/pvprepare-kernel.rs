//! Builds (first time) or finds (cached) the Rust guest kernel and our
//! kernel modules (`pv_balloon`, `pv_blk`), so `./dev.sh test` pays the one-time build
//! before the test run, outside nextest's per-test time limit, with its
//! progress on the terminal. The tests resolve the same cache entries.

use std::process::ExitCode;
use std::time::Instant;

use pvtest::kernel::{extmod, rust};

fn main() -> ExitCode {
    let t = Instant::now();
    let kernel = match rust::kernel() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("pvprepare-kernel: the Rust guest kernel: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "pvprepare-kernel: Rust guest kernel {} ready ({:.0} s)",
        kernel.release,
        t.elapsed().as_secs_f64()
    );
    for spec in extmod::all() {
        let t = Instant::now();
        match extmod::build_module(&spec) {
            Ok(ko) => eprintln!(
                "pvprepare-kernel: {} ready ({:.0} s)",
                ko.display(),
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                eprintln!("pvprepare-kernel: the {} module: {e}", spec.name);
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
