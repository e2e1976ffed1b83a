//! `pvballoond`: the pv-balloon Linux guest runtime; see the
//! `pv_balloon_linux` crate docs for what it does and what a userspace
//! balloon cannot do.

use std::process::ExitCode;

use clap::Parser;
use pv_balloon_linux::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    pv_linux::logger::init("pvballoond", cli.log_level);
    if let Some(mib) = cli.pin_bench {
        return match pv_balloon_linux::pages::bench(mib, cli.pin_bench_rounds.max(1)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("pin bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    pv_linux::logger::finish("pvballoond", pv_balloon_linux::run(&cli.options()))
}
