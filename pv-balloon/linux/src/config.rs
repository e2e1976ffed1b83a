//! `pvballoond`'s command line, and the [`Options`] the daemon runs with.

use std::time::Duration;

use clap::Parser;

use crate::pages::PinMethod;

/// Command line of `pvballoond`.
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
pub struct Cli {
    /// PCI address of the virtio-balloon device (DDDD:BB:DD.F); default:
    /// the first one nobody has claimed.
    #[arg(long)]
    pub pci: Option<String>,
    /// Free-memory floor in MiB: never inflate while MemAvailable would
    /// drop below it plus a margin of half of it, deflate below it.
    /// Default: the larger of 64 MiB and 5 % of MemTotal.
    #[arg(long)]
    pub floor_mib: Option<u64>,
    /// Longest sleep between looks at the device when idle, in ms.
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// PSI memory `full avg10` percentage that counts as pressure, where
    /// the kernel has /proc/pressure/memory (0: ignore PSI).
    #[arg(long, default_value_t = 20.0)]
    pub psi_full_pct: f64,
    /// Back the balloon with transparent huge pages where the kernel has
    /// them and there is no swap: far fewer page faults per inflate, but a
    /// huge page may take frames the host never backed, so an inflate can
    /// release a little less host memory (default: 4 KiB pages).
    #[arg(long)]
    pub huge_pages: bool,
    /// How 4 KiB balloon pages are faulted in and locked: `populate` (one
    /// mmap(MAP_POPULATE|MAP_LOCKED) per chunk, THP off for the daemon),
    /// `mlock` (mmap, madvise, mlock) or `populate-write`
    /// (MADV_POPULATE_WRITE, then mlock). For benchmarks.
    #[arg(long, value_enum, default_value_t = Pin::Populate)]
    pub pin: Pin,
    /// 4 KiB page frames per inflate or deflate buffer (the spec sets no
    /// limit and QEMU takes any length; the kernel driver sends 256). 4096
    /// (16 MiB, one pinned chunk) deflates faster: one device round trip
    /// and one `munmap` per 16 MiB (docs/BENCHMARKS.md); inflate measured
    /// the same either way.
    #[arg(long, default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=pv_balloon::MAX_BATCH_FRAMES as i64))]
    pub batch_frames: u32,
    /// Wake on the device's INTx interrupt through uio_pci_generic (`intx`)
    /// or only poll (`off`); without uio_pci_generic it polls either way.
    #[arg(long, value_enum, default_value_t = Irq::Intx)]
    pub irq: Irq,
    /// Benchmark instead of driving the device: pin and release this many
    /// MiB in 16 MiB chunks with each pin method in turn (the balloon's
    /// inflate work without the device), for `--pin-bench-rounds` rounds,
    /// and print the rates.
    #[arg(long)]
    pub pin_bench: Option<usize>,
    /// Rounds of `--pin-bench`.
    #[arg(long, default_value_t = 5)]
    pub pin_bench_rounds: usize,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", value_parser = pv_linux::logger::parse_level)]
    pub log_level: log::LevelFilter,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Pin {
    Populate,
    Mlock,
    PopulateWrite,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Irq {
    Intx,
    Off,
}

impl Cli {
    /// What the daemon runs with.
    pub fn options(&self) -> Options {
        Options {
            pci: self.pci.clone(),
            floor_mib: self.floor_mib,
            interval: Duration::from_millis(self.interval_ms),
            psi_full_pct: self.psi_full_pct,
            huge_pages: self.huge_pages,
            pin: match self.pin {
                Pin::Populate => PinMethod::Populate,
                Pin::Mlock => PinMethod::Mlock,
                Pin::PopulateWrite => PinMethod::PopulateWrite,
            },
            irq: self.irq == Irq::Intx,
            batch_frames: self.batch_frames as usize,
        }
    }
}

/// What the command line sets.
#[derive(Clone, Debug)]
pub struct Options {
    /// PCI address of the device; `None`: the first unclaimed one.
    pub pci: Option<String>,
    /// Free-memory floor in MiB; `None`: max(64 MiB, 5 % of MemTotal).
    pub floor_mib: Option<u64>,
    /// Longest sleep between looks at the device when idle.
    pub interval: Duration,
    /// PSI `full avg10` percentage counted as memory pressure (0: off).
    pub psi_full_pct: f64,
    /// Back the balloon with transparent huge pages where that is safe
    /// (see [`pages`](crate::pages)).
    pub huge_pages: bool,
    /// How small pages are faulted in and locked (see [`PinMethod`]).
    pub pin: PinMethod,
    /// 4 KiB frames per inflate/deflate buffer (see
    /// [`Limits::batch_frames`](pv_balloon::Limits::batch_frames)).
    pub batch_frames: usize,
    /// Bind the device to `uio_pci_generic` and sleep on its INTx
    /// interrupt (config changes, stats requests) when idle; `false`, or
    /// where `uio_pci_generic` is missing: timed polling only.
    pub irq: bool,
}
