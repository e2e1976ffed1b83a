//! `pvnetd`: the pv-net Linux guest runtime; see the `pv_net_linux` crate
//! docs for what it does.

use std::process::ExitCode;

use clap::Parser;
use pv_net_linux::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    pv_linux::logger::init("pvnetd", cli.log_level);
    pv_linux::logger::finish("pvnetd", pv_net_linux::run(&cli))
}
