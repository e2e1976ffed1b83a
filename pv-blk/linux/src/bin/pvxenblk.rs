//! `pvxenblk`: pv-blk's Xen frontend as a guest process on the loopback
//! Xen fabric: connect a vbd, write stamped blocks, flush, read back and
//! verify, close. Exit status 0 only when every block verified.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "pv-blk Xen frontend on the loopback fabric: stamped write/verify")]
struct Cli {
    /// The fabric broker's socket.
    #[arg(long)]
    broker: PathBuf,
    /// The xenstored fixture directory (ring-DOMID, evtchn-kick).
    #[arg(long)]
    xenstore_dir: PathBuf,
    /// Our domain id.
    #[arg(long)]
    domid: u16,
    /// The vbd's device id.
    #[arg(long, default_value_t = 51712)]
    devid: u32,
    /// Highest ring-page-order to ask for (the backend's maximum caps it).
    #[arg(long, default_value_t = 0)]
    max_ring_page_order: u32,
    /// 4 KiB blocks to write and verify.
    #[arg(long, default_value_t = 64)]
    blocks: u64,
    /// Pattern seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match pv_blk_linux::xen::run(
        &cli.broker,
        &cli.xenstore_dir,
        cli.domid,
        cli.devid,
        cli.max_ring_page_order,
        cli.blocks,
        cli.seed,
    ) {
        Ok(r) => {
            println!(
                "pvxenblk: verified {} blocks in {} requests, ring-page-order {}",
                r.blocks, r.requests, r.ring_page_order
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pvxenblk: {e}");
            ExitCode::FAILURE
        }
    }
}
