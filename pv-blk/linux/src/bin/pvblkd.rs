//! `pvblkd`: the pv-blk Linux guest runtime; see the `pv_blk_linux` crate
//! docs for what it does.

use std::process::ExitCode;

use clap::Parser;
use pv_blk_linux::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    pv_linux::logger::init("pvblkd", cli.log_level);
    pv_linux::logger::finish("pvblkd", pv_blk_linux::run(&cli))
}
