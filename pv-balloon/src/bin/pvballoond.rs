//! `pvballoond`: the pv-balloon Linux guest runtime. Claims QEMU's
//! virtio-balloon PCI device from the kernel and drives it from userspace
//! with the pv-balloon core; see `pv_balloon::linux` for what it does and
//! what a userspace balloon cannot do.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pv_balloon::linux::daemon::{self, Options};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "pv-balloon guest runtime: drive a virtio-balloon PCI device from userspace (root)",
    long_about = "pv-balloon guest runtime: claims the virtio-balloon PCI device from the kernel's \
        virtio_balloon driver and drives it from userspace. Inflates with pinned anonymous memory, \
        reports /proc/meminfo and /proc/vmstat statistics, keeps MemAvailable above a floor and \
        deflates under memory pressure (with the device's deflate-on-oom). SIGTERM or SIGINT: \
        deflate everything, give the device back to the kernel, exit 0. Free page reporting is \
        not done (it needs kernel code)."
)]
struct Cli {
    /// PCI address of the virtio-balloon device (DDDD:BB:DD.F); default:
    /// the first one nobody has claimed.
    #[arg(long)]
    pci: Option<String>,
    /// Free-memory floor in MiB: never inflate while MemAvailable would
    /// drop below it plus a margin of half of it, deflate below it.
    /// Default: the larger of 64 MiB and 5 % of MemTotal.
    #[arg(long)]
    floor_mib: Option<u64>,
    /// Longest sleep between looks at the device when idle, in ms.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// PSI memory `full avg10` percentage that counts as pressure, where
    /// the kernel has /proc/pressure/memory (0: ignore PSI).
    #[arg(long, default_value_t = 20.0)]
    psi_full_pct: f64,
    /// Back the balloon with transparent huge pages where the kernel has
    /// them and there is no swap: far fewer page faults per inflate, but a
    /// huge page may take frames the host never backed, so an inflate can
    /// release a little less host memory (default: 4 KiB pages).
    #[arg(long)]
    huge_pages: bool,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", value_parser = pv_linux::logger::parse_level)]
    log_level: log::LevelFilter,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    pv_linux::logger::init("pvballoond", cli.log_level);
    let opts = Options {
        pci: cli.pci,
        floor_mib: cli.floor_mib,
        interval: Duration::from_millis(cli.interval_ms),
        psi_full_pct: cli.psi_full_pct,
        huge_pages: cli.huge_pages,
    };
    match daemon::run(&opts) {
        Ok(()) => {
            log::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
