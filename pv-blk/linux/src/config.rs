//! `pvblkd`'s command line: which device, which export, how to poll.

use clap::Parser;

/// Command line of `pvblkd`.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "pv-blk guest runtime: drive a virtio-blk PCI device from userspace and export it as /dev/ublkbN (ublk) or /dev/nbdN (NBD)"
)]
pub struct Cli {
    /// PCI address of the virtio-blk device (DDDD:BB:DD.F); default: the
    /// first virtio-blk function nobody has claimed.
    #[arg(long)]
    pub pci: Option<String>,
    /// How to export the disk: `ublk` (/dev/ublkbN; kernel 6.0+ with
    /// ublk_drv), `nbd` (/dev/nbdN), or `auto`: ublk when
    /// /dev/ublk-control exists or `modprobe ublk_drv` makes it, else nbd.
    #[arg(long, value_enum, default_value_t = Export::Auto)]
    pub export: Export,
    /// ublk device id (/dev/ublkbN); default: the kernel picks the first
    /// free one.
    #[arg(long)]
    pub ublk_id: Option<u32>,
    /// ublk queue depth (tags; each has a `--ublk-buf-kb` DMA buffer);
    /// capped at the device's queue depth.
    #[arg(long, default_value_t = 128)]
    pub ublk_depth: u16,
    /// Set the ublk queue's io_uring up with COOP_TASKRUN: the driver's
    /// hand-over of a request sets a flag the spinning loop polls, instead
    /// of interrupting it (an IPI to the serving vCPU).
    #[arg(long)]
    pub ublk_coop: bool,
    /// Largest ublk request in KiB (each tag's DMA buffer; at most 2048,
    /// one hugepage).
    #[arg(long, default_value_t = 256)]
    pub ublk_buf_kb: u32,
    /// NBD device index to export on (/dev/nbdN; needs `modprobe nbd`).
    #[arg(long, default_value_t = 0)]
    pub nbd: u32,
    /// Entries per virtqueue (the device may offer fewer).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Logical block size of the export (512 or 4096; 4096 needs a
    /// capacity that is a multiple of it).
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
    /// Busy-poll the used ring this long after the last work (requests in
    /// flight) before sleeping. Default: 200 (NBD), 5000 (ublk: a sleep
    /// there costs a halted-vCPU wake-up, milliseconds under TCG; measured
    /// QD1 p50 5.7 ms with 200 against 243 us with 5000).
    #[arg(long)]
    pub spin_us: Option<u64>,
    /// With nothing in flight, keep looking at the socket this long after
    /// the last reply before blocking on it (a synchronous reader's next
    /// request follows its reply closely, and waking a halted vCPU is slow
    /// under emulation).
    /// Default: 200 (NBD), 5000 (ublk, as for `--spin-us`).
    #[arg(long)]
    pub idle_spin_us: Option<u64>,
    /// Largest request the kernel sends (`max_sectors_kb` of the export):
    /// bigger requests mean fewer round trips for sequential I/O. 0 keeps
    /// the kernel's default.
    #[arg(long, default_value_t = 1024)]
    pub max_request_kb: u32,
    /// Set the export's `queue/rq_affinity` (0: complete requests on the
    /// CPU that reads the reply, 1: on the submitter's CPU group, 2: on the
    /// submitting CPU); unset keeps the kernel's default (1).
    #[arg(long)]
    pub rq_affinity: Option<u8>,
    /// First sleep when idle with requests in flight.
    #[arg(long, default_value_t = 20)]
    pub min_sleep_us: u64,
    /// Longest sleep when idle with requests in flight.
    #[arg(long, default_value_t = 1000)]
    pub max_sleep_us: u64,
    /// Wait for completions on the device's INTx interrupt (through
    /// uio_pci_generic, which must be loaded) once the spin budget is spent;
    /// `off`, or when uio is unavailable: timed sleeps only.
    #[arg(long, value_enum, default_value_t = Irq::Intx)]
    pub irq: Irq,
    /// Scheduling niceness of the serving thread (-20..19): the guest's
    /// own I/O threads share its vCPUs, and a time slice lost to them is
    /// milliseconds of service time for every request in flight.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub nice: i32,
    /// Run on this CPU only (`sched_setaffinity`). Under TCG a reply
    /// written to the socket from another vCPU than the kernel's NBD
    /// receive worker costs milliseconds per `write` (measured: p50 6 ms
    /// for a 4 KiB reply), so pin pvblkd, the client and the unbound
    /// workqueues (`/sys/devices/virtual/workqueue/cpumask`) to one vCPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Most 2 MiB hugepages for DMA memory.
    #[arg(long, default_value_t = 64)]
    pub hugepages: usize,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", value_parser = pv_linux::logger::parse_level)]
    pub log_level: log::LevelFilter,
}

/// The kernel interface the disk is exported through.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    /// ublk when the kernel has it, else NBD.
    Auto,
    /// The kernel's ublk driver: /dev/ublkbN.
    Ublk,
    /// The kernel's NBD driver over a socketpair: /dev/nbdN.
    Nbd,
}

/// How idle waits for completions end.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Irq {
    /// INTx through uio_pci_generic.
    Intx,
    /// Timed sleeps.
    Off,
}
