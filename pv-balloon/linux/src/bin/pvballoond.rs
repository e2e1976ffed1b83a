//! `pvballoond`: the pv-balloon Linux guest runtime. Claims QEMU's
//! virtio-balloon PCI device from the kernel and drives it from userspace
//! with the pv-balloon core; see `pv_balloon::linux` for what it does and
//! what a userspace balloon cannot do.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pv_balloon::linux::daemon::{self, Options};
use pv_balloon::linux::pages::PinMethod;

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
    /// How 4 KiB balloon pages are faulted in and locked: `populate` (one
    /// mmap(MAP_POPULATE|MAP_LOCKED) per chunk, THP off for the daemon),
    /// `mlock` (mmap, madvise, mlock) or `populate-write`
    /// (MADV_POPULATE_WRITE, then mlock). For benchmarks.
    #[arg(long, value_enum, default_value_t = Pin::Populate)]
    pin: Pin,
    /// 4 KiB page frames per inflate or deflate buffer (the spec sets no
    /// limit and QEMU takes any length; the kernel driver sends 256). 4096
    /// (16 MiB, one pinned chunk) deflates faster: one device round trip
    /// and one `munmap` per 16 MiB (docs/BENCHMARKS.md); inflate measured
    /// the same either way.
    #[arg(long, default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=pv_balloon::MAX_BATCH_FRAMES as i64))]
    batch_frames: u32,
    /// Wake on the device's INTx interrupt through uio_pci_generic (`intx`)
    /// or only poll (`off`); without uio_pci_generic it polls either way.
    #[arg(long, value_enum, default_value_t = Irq::Intx)]
    irq: Irq,
    /// Benchmark instead of driving the device: pin and release this many
    /// MiB in 16 MiB chunks with each pin method in turn (the balloon's
    /// inflate work without the device), for `--pin-bench-rounds` rounds,
    /// and print the rates.
    #[arg(long)]
    pin_bench: Option<usize>,
    /// Rounds of `--pin-bench`.
    #[arg(long, default_value_t = 5)]
    pin_bench_rounds: usize,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", value_parser = pv_linux::logger::parse_level)]
    log_level: log::LevelFilter,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Pin {
    Populate,
    Mlock,
    PopulateWrite,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Irq {
    Intx,
    Off,
}

/// `--pin-bench`: the methods interleaved round by round (so load from
/// elsewhere falls on all alike), pinning then releasing each chunk as the
/// daemon does; prints each round and the medians in MiB/s.
fn pin_bench(mib: usize, rounds: usize) -> Result<(), pv_balloon::linux::RuntimeError> {
    use pv_balloon::linux::pages::{self, Backing};
    use std::time::Instant;
    const CHUNK: usize = 4096;
    // Populate needs THP off for the process; the other methods ask for
    // small pages per mapping anyway, so all run under the same setting.
    pages::disable_thp()?;
    let methods = [
        PinMethod::Mlock,
        PinMethod::PopulateWrite,
        PinMethod::Populate,
    ];
    let total = mib * 256;
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    for r in 0..rounds {
        for k in 0..methods.len() {
            let k = (k + r) % methods.len();
            let m = methods[k];
            let mut held = Vec::with_capacity(total);
            let t = Instant::now();
            while held.len() < total {
                let n = CHUNK.min(total - held.len());
                held.extend(pages::pin(n, 4096, Backing::Small, m)?);
            }
            let pin = t.elapsed();
            let t = Instant::now();
            pages::release(held, 4096);
            let release = t.elapsed();
            let rate = mib as f64 / pin.as_secs_f64();
            println!(
                "pin-bench round {} {m:?}: pin {mib} MiB in {} ms ({rate:.1} MiB/s), release in {} ms",
                r + 1,
                pin.as_millis(),
                release.as_millis()
            );
            rates[k].push(rate);
        }
    }
    for (m, mut v) in methods.iter().zip(rates) {
        v.sort_by(f64::total_cmp);
        let med = v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
        println!("pin-bench median {m:?}: {med:.1} MiB/s");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    pv_linux::logger::init("pvballoond", cli.log_level);
    if let Some(mib) = cli.pin_bench {
        return match pin_bench(mib, cli.pin_bench_rounds.max(1)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("pin bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = Options {
        pci: cli.pci,
        floor_mib: cli.floor_mib,
        interval: Duration::from_millis(cli.interval_ms),
        psi_full_pct: cli.psi_full_pct,
        huge_pages: cli.huge_pages,
        pin: match cli.pin {
            Pin::Populate => PinMethod::Populate,
            Pin::Mlock => PinMethod::Mlock,
            Pin::PopulateWrite => PinMethod::PopulateWrite,
        },
        irq: cli.irq == Irq::Intx,
        batch_frames: cli.batch_frames as usize,
    };
    pv_linux::logger::finish("pvballoond", daemon::run(&opts))
}
