//! `pvio`: the guest I/O tool; see the `pv_blk_linux::pvio` docs for what
//! it does.

use std::process::ExitCode;

use clap::Parser;
use pv_blk_linux::pvio::{self, Cli};

fn main() -> ExitCode {
    match pvio::run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pvio: {e}");
            ExitCode::from(2)
        }
    }
}
