//! `pvmemhog`: a guest test tool that allocates and touches memory in steps
//! and holds it, printing its progress: the memory-pressure load for the
//! balloon runtime's tests (busybox has no allocator).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "allocate and touch memory in steps, then hold it")]
struct Cli {
    /// Total MiB to allocate.
    #[arg(long)]
    mib: usize,
    /// MiB per step.
    #[arg(long, default_value_t = 4)]
    step_mib: usize,
    /// Pause between steps, in ms.
    #[arg(long, default_value_t = 100)]
    pause_ms: u64,
    /// Seconds to hold the memory after the last step.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let step = cli.step_mib.max(1) << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    while total < cli.mib << 20 {
        let n = step.min((cli.mib << 20) - total);
        // Every byte written: the pages are really backed.
        held.push(vec![0x5a; n]);
        total += n;
        println!("pvmemhog: {} MiB", total >> 20);
        std::thread::sleep(Duration::from_millis(cli.pause_ms));
    }
    println!("pvmemhog: holding {} MiB", total >> 20);
    std::thread::sleep(Duration::from_secs(cli.hold_secs));
    let sum: usize = held.iter().map(|v| v.len()).sum();
    println!("pvmemhog: released {} MiB", sum >> 20);
    ExitCode::SUCCESS
}
