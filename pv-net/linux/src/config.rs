//! `pvnetd`'s command line: which device, the TAP, how to poll.

use clap::Parser;

/// Command line of `pvnetd`.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "pv-net guest runtime: drive a virtio-net PCI device from userspace and expose it as a TAP interface"
)]
pub struct Cli {
    /// PCI address of the virtio-net device (DDDD:BB:DD.F); default: the
    /// first virtio-net function nobody has claimed.
    #[arg(long)]
    pub pci: Option<String>,
    /// Name of the TAP interface to create.
    #[arg(long, default_value = "pvnet0")]
    pub ifname: String,
    /// Leave the interface down (default: bring it up).
    #[arg(long)]
    pub no_up: bool,
    /// Do not offer checksum offload to the kernel (it then checksums every
    /// frame itself); the same as `--tap-csum off`.
    #[arg(long)]
    pub no_csum_offload: bool,
    /// Offer checksum offload (`TUN_F_CSUM`) to the kernel: `auto` when
    /// the device computes transmit checksums, `on` always (completed in
    /// software when the device cannot), `off` never.
    #[arg(long, value_enum, default_value_t = TapCsum::Auto)]
    pub tap_csum: TapCsum,
    /// Entries per virtqueue (the device may offer fewer).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Refill RX buffers once this many or fewer are posted.
    #[arg(long, default_value_t = 128)]
    pub rx_low_water: u16,
    /// Most frames moved each way per loop turn.
    #[arg(long, default_value_t = 64)]
    pub budget: usize,
    /// Busy-poll (yielding) this long after the last frame before sleeping.
    #[arg(long, default_value_t = 1000)]
    pub spin_us: u64,
    /// While spinning with INTx, read the TAP and yield the CPU only every
    /// N-th turn (the device's rings, plain memory, are looked at every
    /// turn): each is a system call, and those are what a spinning guest
    /// spends its vCPU on under TCG. 1: every turn, as before.
    #[arg(long, default_value_t = 8)]
    pub spin_tap_every: u32,
    /// Wake on the device's INTx interrupt (through uio_pci_generic, which
    /// must be loaded) once the spin budget is spent; `off`, or when uio is
    /// unavailable: timed sleeps only.
    #[arg(long, value_enum, default_value_t = Irq::Intx)]
    pub irq: Irq,
    /// First sleep once idle.
    #[arg(long, default_value_t = 10)]
    pub min_sleep_us: u64,
    /// Longest sleep in the warm phase without interrupts (bounds the added
    /// latency of a frame from the device while traffic flows).
    #[arg(long, default_value_t = 50)]
    pub warm_sleep_us: u64,
    /// Length of the warm phase after the last frame.
    #[arg(long, default_value_t = 50)]
    pub warm_ms: u64,
    /// Sleep once cold without interrupts (bounds the added latency of the
    /// first frame from the device after a quiet spell, and the idle CPU
    /// cost); with interrupts, the longest sleep timeout.
    #[arg(long, default_value_t = 1000)]
    pub max_sleep_us: u64,
    /// Most 2 MiB hugepages for DMA memory (rings and bounce buffers).
    #[arg(long, default_value_t = 8)]
    pub hugepages: usize,
    /// Diagnostics only (delays service): with INTx, sleep in slices of
    /// this many microseconds and time how late the interrupt comes after
    /// a completion is visible (`probe_*` in the wake-up counters). 0: off.
    #[arg(long, default_value_t = 0)]
    pub probe_slice_us: u64,
    /// Also log the wake-up and TAP counters every this many seconds (0:
    /// only at exit), e.g. for a benchmark that never stops this daemon.
    #[arg(long, default_value_t = 0)]
    pub stats_every_s: u64,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", value_parser = pv_linux::logger::parse_level)]
    pub log_level: log::LevelFilter,
}

/// Checksum offload on the TAP; see the module docs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapCsum {
    /// When the device has `VIRTIO_NET_F_CSUM`.
    Auto,
    /// Always (software checksum when the device lacks it).
    On,
    /// Never.
    Off,
}

/// Interrupt use; see the module docs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Irq {
    /// INTx through uio_pci_generic.
    Intx,
    /// No interrupts: timed sleeps.
    Off,
}
