//! `pvblkd`: the pv-blk Linux guest runtime. Claims a virtio-blk PCI
//! device from the kernel, drives it from userspace with the pv-blk core
//! (`pv_blk::virtio`), and exports it back to the guest kernel, so guest
//! filesystems and tools work unchanged: as `/dev/ublkbN` through the
//! kernel's ublk driver where the kernel has it (io_uring commands, no
//! socket hop: see `pvblkd/ublk.rs`), else as `/dev/nbdN` through the
//! kernel NBD driver over a socketpair (`--export` picks; the rest of this
//! page describes the NBD export, and the ublk one follows the same
//! polling, failure and stopping rules).
//!
//! # How it runs
//!
//! One thread serves everything: it reads NBD requests from the socket,
//! splits them into device requests (data in 256 KiB hugepage DMA buffers,
//! discards at the device's limit), keeps up to the queue's depth of them in
//! flight on the core's queue, and answers each NBD request when all its
//! parts completed (the kernel keeps up to 128 NBD requests outstanding, so
//! the device sees real queue depth). A second thread only sits in the
//! kernel's `NBD_DO_IT` ioctl.
//!
//! Completions are found by adaptive polling (`pv_linux::poll`): spin for
//! `--spin-us` after the last work, then sleep with the sleep doubling from
//! `--min-sleep-us` to `--max-sleep-us`. By default (`--irq intx`) the
//! device is bound to `uio_pci_generic` while we hold it, and a sleep also
//! ends on the device's INTx interrupt (`/dev/uioN`, armed after
//! `prepare_wait` asks the device for an interrupt at the next completion);
//! new NBD requests and room in the socket end it too. When uio is missing
//! (or `--irq off`) sleeps are timed only. With nothing in flight the thread
//! blocks on the socket.
//!
//! # Failure handling
//!
//! A device the core stops trusting (bad completion, index overrun) is
//! reset: requests in flight fail with EIO to the kernel and service goes
//! on. A reset that fails, or a broken NBD stream, ends the daemon (exit
//! 1) after giving the device back.
//!
//! # Stopping
//!
//! SIGTERM/SIGINT: `NBD_DISCONNECT` (the kernel sends its disconnect after
//! the requests already sent), finish every request in flight, flush the
//! device cache, reset the device, and hand it back to the kernel driver
//! (`drivers_probe`: `virtio-pci`, then `virtio_blk`, and `/dev/vdX`
//! reappears). Exit 0.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use log::{error, info, warn};
use pv_blk::virtio::{VirtioBlk, VirtioBlkConfig};
use pv_blk::{BlkError, BlockFrontend, DeviceInfo, IoBuf, Op, Request, Token, SECTOR_SIZE};
use pv_linux::dma::{self, DmaBuf, LinuxHal};
use pv_linux::nbd::wire::{self, errno, Command, Decoder};
use pv_linux::nbd::{self, ExportConfig, NbdKernel};
use pv_linux::pci::{self, PciAddress, PciDevice};
use pv_linux::poll::AdaptivePoller;
use pv_linux::signal;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::Transport;

#[path = "pvblkd/ublk.rs"]
mod ublk;

/// Largest data buffer of one device request.
const CHUNK: usize = 256 * 1024;
/// Largest NBD write accepted (the kernel's own limit for nbd is 32 MiB).
const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest discard / write-zeroes part when the device states no limit.
const DEFAULT_MAX_DISCARD_SECTORS: u32 = 1 << 22;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "pv-blk guest runtime: drive a virtio-blk PCI device from userspace and export it as /dev/ublkbN (ublk) or /dev/nbdN (NBD)"
)]
struct Cli {
    /// PCI address of the virtio-blk device (DDDD:BB:DD.F); default: the
    /// first virtio-blk function nobody has claimed.
    #[arg(long)]
    pci: Option<String>,
    /// How to export the disk: `ublk` (/dev/ublkbN; kernel 6.0+ with
    /// ublk_drv), `nbd` (/dev/nbdN), or `auto`: ublk when
    /// /dev/ublk-control exists or `modprobe ublk_drv` makes it, else nbd.
    #[arg(long, value_enum, default_value_t = Export::Auto)]
    export: Export,
    /// ublk device id (/dev/ublkbN); default: the kernel picks the first
    /// free one.
    #[arg(long)]
    ublk_id: Option<u32>,
    /// ublk queue depth (tags; each has a `--ublk-buf-kb` DMA buffer);
    /// capped at the device's queue depth.
    #[arg(long, default_value_t = 128)]
    ublk_depth: u16,
    /// Set the ublk queue's io_uring up with COOP_TASKRUN: the driver's
    /// hand-over of a request sets a flag the spinning loop polls, instead
    /// of interrupting it (an IPI to the serving vCPU).
    #[arg(long)]
    ublk_coop: bool,
    /// Largest ublk request in KiB (each tag's DMA buffer; at most 2048,
    /// one hugepage).
    #[arg(long, default_value_t = 256)]
    ublk_buf_kb: u32,
    /// NBD device index to export on (/dev/nbdN; needs `modprobe nbd`).
    #[arg(long, default_value_t = 0)]
    nbd: u32,
    /// Entries per virtqueue (the device may offer fewer).
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Logical block size of the export (512 or 4096; 4096 needs a
    /// capacity that is a multiple of it).
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
    /// Busy-poll the used ring this long after the last work (requests in
    /// flight) before sleeping. Default: 200 (NBD), 5000 (ublk: a sleep
    /// there costs a halted-vCPU wake-up, milliseconds under TCG; measured
    /// QD1 p50 5.7 ms with 200 against 243 us with 5000).
    #[arg(long)]
    spin_us: Option<u64>,
    /// With nothing in flight, keep looking at the socket this long after
    /// the last reply before blocking on it (a synchronous reader's next
    /// request follows its reply closely, and waking a halted vCPU is slow
    /// under emulation).
    /// Default: 200 (NBD), 5000 (ublk, as for `--spin-us`).
    #[arg(long)]
    idle_spin_us: Option<u64>,
    /// Largest request the kernel sends (`max_sectors_kb` of the export):
    /// bigger requests mean fewer round trips for sequential I/O. 0 keeps
    /// the kernel's default.
    #[arg(long, default_value_t = 1024)]
    max_request_kb: u32,
    /// Set the export's `queue/rq_affinity` (0: complete requests on the
    /// CPU that reads the reply, 1: on the submitter's CPU group, 2: on the
    /// submitting CPU); unset keeps the kernel's default (1).
    #[arg(long)]
    rq_affinity: Option<u8>,
    /// First sleep when idle with requests in flight.
    #[arg(long, default_value_t = 20)]
    min_sleep_us: u64,
    /// Longest sleep when idle with requests in flight.
    #[arg(long, default_value_t = 1000)]
    max_sleep_us: u64,
    /// Wait for completions on the device's INTx interrupt (through
    /// uio_pci_generic, which must be loaded) once the spin budget is spent;
    /// `off`, or when uio is unavailable: timed sleeps only.
    #[arg(long, value_enum, default_value_t = Irq::Intx)]
    irq: Irq,
    /// Scheduling niceness of the serving thread (-20..19): the guest's
    /// own I/O threads share its vCPUs, and a time slice lost to them is
    /// milliseconds of service time for every request in flight.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    nice: i32,
    /// Run on this CPU only (`sched_setaffinity`). Under TCG a reply
    /// written to the socket from another vCPU than the kernel's NBD
    /// receive worker costs milliseconds per `write` (measured: p50 6 ms
    /// for a 4 KiB reply), so pin pvblkd, the client and the unbound
    /// workqueues (`/sys/devices/virtual/workqueue/cpumask`) to one vCPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Most 2 MiB hugepages for DMA memory.
    #[arg(long, default_value_t = 64)]
    hugepages: usize,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", value_parser = pv_linux::logger::parse_level)]
    log_level: log::LevelFilter,
}

/// The kernel interface the disk is exported through.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Export {
    /// ublk when the kernel has it, else NBD.
    Auto,
    /// The kernel's ublk driver: /dev/ublkbN.
    Ublk,
    /// The kernel's NBD driver over a socketpair: /dev/nbdN.
    Nbd,
}

/// Resolves `--export auto` (loading ublk_drv if it is a module).
fn choose_export(asked: Export) -> Export {
    if asked != Export::Auto {
        info!("export: {asked:?} (asked)");
        return asked;
    }
    if !pv_linux::ublk::available() {
        let _ = std::process::Command::new("modprobe")
            .arg("ublk_drv")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let chosen = if pv_linux::ublk::available() {
        Export::Ublk
    } else {
        Export::Nbd
    };
    info!(
        "export: {chosen:?} ({} {})",
        pv_linux::ublk::CONTROL,
        if chosen == Export::Ublk {
            "present"
        } else {
            "absent"
        }
    );
    chosen
}

/// How idle waits for completions end.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Irq {
    /// INTx through uio_pci_generic.
    Intx,
    /// Timed sleeps.
    Off,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    pv_linux::logger::init("pvblkd", cli.log_level);
    pv_linux::logger::finish("pvblkd", run(&cli))
}

/// `--pci`, or the first virtio-blk function nobody claimed.
fn pick_device(cli: &Cli) -> Result<PciAddress, String> {
    pci::pick_unclaimed(
        cli.pci.as_deref(),
        pci::VIRTIO_VENDOR,
        &pci::VIRTIO_BLK_IDS,
        "virtio-blk",
    )
}

fn run(cli: &Cli) -> Result<(), String> {
    pv_linux::poll::set_min_timer_slack();
    set_nice(cli.nice);
    if let Some(cpu) = cli.cpu {
        set_cpu(cpu)?;
    }
    signal::install().map_err(|e| e.to_string())?;
    dma::init(cli.hugepages, 1).map_err(|e| e.to_string())?;
    let addr = pick_device(cli)?;
    let binding = match cli.irq {
        Irq::Intx => pci::Binding::UioPciGeneric,
        Irq::Off => pci::Binding::Unbound,
    };
    let dev = PciDevice::claim_with(addr, binding).map_err(|e| format!("claim {addr}: {e}"))?;
    info!(
        "claimed {addr} (was bound to {})",
        dev.previous_driver().unwrap_or("no driver")
    );
    let result = serve_device(cli, &dev);
    // The core (and with it the transport, which points into the BARs) is
    // gone by now; give the device back.
    let released = dev.release().map_err(|e| e.to_string());
    result.and(released)
}

fn serve_device(cli: &Cli, dev: &PciDevice) -> Result<(), String> {
    let transport = dev.virtio_transport().map_err(|e| e.to_string())?;
    let cfg = VirtioBlkConfig {
        queue_size: cli.queue_size,
        ..VirtioBlkConfig::default()
    };
    let mut blk: VirtioBlk<LinuxHal, PciTransport> =
        VirtioBlk::new(transport, cfg).map_err(|e| format!("virtio-blk init: {e}"))?;
    let di = blk.info();
    info!(
        "device: {} sectors, block {} B, queue depth {}, {} segments, features {:?}",
        di.capacity_sectors, di.block_size, di.queue_depth, di.max_segments, di.features
    );

    let size_bytes = di.capacity_sectors * SECTOR_SIZE as u64;
    let mut bs = cli.block_size.max(di.block_size);
    if !size_bytes.is_multiple_of(u64::from(bs)) {
        warn!("capacity is not a multiple of {bs}; exporting 512-byte blocks");
        bs = di.block_size.max(SECTOR_SIZE as u32);
    }
    if choose_export(cli.export) == Export::Ublk {
        let served = ublk::serve(cli, &mut blk, dev.irq(), bs);
        // Flush the device cache, then reset it (drop).
        let flushed = flush_device(&mut blk);
        drop(blk);
        return served.and(flushed);
    }
    let mut flags = 0;
    if di.features.read_only {
        flags |= wire::flags::READ_ONLY;
    }
    if di.features.flush {
        flags |= wire::flags::SEND_FLUSH;
    }
    if di.features.discard {
        flags |= wire::flags::SEND_TRIM;
    }
    if di.features.write_zeroes {
        flags |= wire::flags::SEND_WRITE_ZEROES;
    }
    let (sock, kernel_end) = nbd::socketpair().map_err(|e| e.to_string())?;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    // Room for a whole large read reply in the socket, so replies rarely
    // wait for the kernel's receiver (best effort: the kernel caps it at
    // net.core.wmem_max unless we are root, which we are).
    set_sndbuf(&sock, 8 << 20);
    let kernel = NbdKernel::connect(
        cli.nbd,
        kernel_end,
        ExportConfig {
            size: size_bytes - size_bytes % u64::from(bs),
            block_size: bs,
            flags,
        },
    )
    .map_err(|e| e.to_string())?;
    if cli.max_request_kb > 0 {
        match nbd::set_max_request_kb(cli.nbd, cli.max_request_kb) {
            Ok(kb) => info!("largest NBD request: {kb} KiB"),
            Err(e) => warn!("max_sectors_kb: {e}"),
        }
    }
    if let Some(a) = cli.rq_affinity {
        match nbd::set_queue_attr(cli.nbd, "rq_affinity", &a.to_string()) {
            Ok(v) => info!("rq_affinity: {v}"),
            Err(e) => warn!("rq_affinity: {e}"),
        }
    }
    info!(
        "serving {} ({} bytes, {bs}-byte blocks, flags {flags:#x})",
        kernel.path().display(),
        size_bytes
    );
    println!(
        "pvblkd: serving {} from {}",
        kernel.path().display(),
        dev.address()
    );

    let poller = AdaptivePoller::new(
        Duration::from_micros(cli.spin_us.unwrap_or(200)),
        Duration::from_micros(cli.min_sleep_us),
        Duration::from_micros(cli.max_sleep_us),
    );
    let mut server = Server::new(
        &mut blk,
        sock,
        di,
        poller,
        Duration::from_micros(cli.idle_spin_us.unwrap_or(200)),
        dev.irq(),
    );
    let served = server.serve(&kernel);
    let stats = server.finish();
    info!(
        "served {} NBD requests ({} errors); core {:?}",
        stats.0, stats.1, stats.2
    );
    // Our end is closed now (the server dropped it): NBD_DO_IT returns.
    if let Err(e) = kernel.finish() {
        warn!("nbd finish: {e}");
    }
    // Flush the device cache, then reset it (drop).
    let flushed = flush_device(&mut blk);
    drop(blk);
    served.and(flushed)
}

/// Niceness of the calling thread (Linux: `setpriority` on thread id 0).
fn set_nice(nice: i32) {
    // SAFETY: setpriority takes integers only.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice.clamp(-20, 19)) };
    if rc != 0 {
        warn!("setpriority {nice}: {}", std::io::Error::last_os_error());
    }
}

/// Pin the calling thread (and the threads it starts later) to `cpu`.
fn set_cpu(cpu: usize) -> Result<(), String> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("--cpu {cpu}: above the CPU set size"));
    }
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so CPU_SET stays
    // inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity reads `size_of::<cpu_set_t>()` bytes from
    // a live local for the call's duration.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(format!(
            "--cpu {cpu}: sched_setaffinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    info!("pinned to CPU {cpu}");
    Ok(())
}

fn set_sndbuf(sock: &UnixStream, bytes: libc::c_int) {
    // SAFETY: setsockopt reads one c_int from a live local for the call's
    // duration, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        warn!(
            "SO_SNDBUFFORCE {bytes}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Flush the device cache and wait (bounded) for the answer.
/// The sleep both exports take once the poller's spin budget is spent:
/// until `fd` is ready for its events, or (with `irq`) the device's INTx
/// fires, or `sleep` passes. The interrupt is asked for only when no
/// completion is already there (then it returns at once, busy), and its
/// line is lowered after the wait. True when an interrupt was taken.
fn sleep_on_device(
    blk: &mut VirtioBlk<LinuxHal, PciTransport>,
    irq: Option<&pci::UioIrq>,
    poller: &mut AdaptivePoller,
    fd: (std::os::unix::io::RawFd, i16),
    sleep: Duration,
) -> Result<bool, String> {
    let Some(irq) = irq else {
        let woken = pv_linux::poll::wait_events(&[fd], sleep);
        poller.woke(woken);
        return Ok(false);
    };
    match blk.prepare_wait() {
        Ok(true) => {
            poller.busy();
            return Ok(false);
        }
        Ok(false) => {}
        // The fault surfaces (and is handled) in the next reap.
        Err(_) => return Ok(false),
    }
    irq.arm().map_err(|e| e.to_string())?;
    // The interrupt normally ends the sleep; the poller's backoff still
    // bounds it, because under TCG some INTx wake-ups arrive late (measured:
    // a 20 ms floor here cost most of the run).
    let woken = pv_linux::poll::wait_events(&[fd, (irq.fd(), libc::POLLIN)], sleep);
    let taken = irq.take().map_err(|e| e.to_string())?.is_some();
    // Lower the line (reading the ISR); INTx stays masked until the next
    // arm.
    blk.transport_mut().ack_interrupt();
    poller.woke(woken);
    Ok(taken)
}

fn flush_device(blk: &mut VirtioBlk<LinuxHal, PciTransport>) -> Result<(), String> {
    if !blk.info().features.flush || blk.fault().is_some() {
        return Ok(());
    }
    let tok = blk.flush().map_err(|e| format!("final flush: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut result = None;
    while result.is_none() {
        blk.poll_completions(&mut |t, r| {
            if t == tok {
                result = Some(r);
            }
        })
        .map_err(|e| format!("final flush: {e}"))?;
        if Instant::now() > deadline {
            return Err("final flush: no answer within 60 s".into());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    match result {
        Some(Ok(_)) => {
            info!("device cache flushed");
            Ok(())
        }
        Some(Err(e)) => Err(format!("final flush: {e}")),
        None => Ok(()),
    }
}

/// One device request, queued or in flight.
#[derive(Debug)]
struct Part {
    parent: u64,
    /// Index of this part's buffer in the parent's read data.
    index: usize,
    op: Op,
    sector: u64,
    buf: Option<DmaBuf>,
}

/// One NBD request being served.
#[derive(Debug)]
struct Parent {
    handle: u64,
    remaining: usize,
    error: u32,
    /// For reads: the parts' buffers in disk order, as they complete.
    read: Option<Vec<Option<DmaBuf>>>,
    /// When the request was decoded (service time statistics).
    since: Instant,
}

struct Server<'a> {
    blk: &'a mut VirtioBlk<LinuxHal, PciTransport>,
    irq: Option<&'a pci::UioIrq>,
    /// Interrupts taken (for the exit log).
    interrupts: u64,
    sock: Option<UnixStream>,
    info: DeviceInfo,
    poller: AdaptivePoller,
    /// How long to look at an idle socket before blocking on it.
    idle_spin: Duration,
    /// Since when nothing was in flight and no work was found.
    idle_since: Option<Instant>,
    decoder: Decoder,
    out: Vec<u8>,
    backlog: VecDeque<Part>,
    /// Parts on the device, with when they were submitted.
    in_flight: HashMap<u32, (Part, Instant, bool)>,
    /// Device times (submit to completion seen) in µs, for the exit log.
    device_us: Vec<u32>,
    /// The same for parts submitted alone (nothing else in flight).
    device_alone_us: Vec<u32>,
    parents: HashMap<u64, Parent>,
    next_parent: u64,
    /// The client said NBD_CMD_DISC or closed the socket.
    client_gone: bool,
    disconnect_sent: bool,
    requests: u64,
    errors: u64,
    /// Service times (decode to reply queued) in µs, for the exit log.
    service_us: Vec<u32>,
    /// Socket writes that could not take all queued replies (the kernel's
    /// receiver was behind), for the exit log.
    write_blocked: u64,
    /// When the last reply left with nothing else in flight (the device
    /// and pvblkd idle: what follows is the kernel's and the client's time).
    idle_from: Option<Instant>,
    /// Idle gaps in µs: last reply written, nothing in flight, to the next
    /// request decoded (the rest of a synchronous client's round trip).
    gap_us: Vec<u32>,
    /// Socket writes of replies: (µs spent in the `write` calls, bytes) per
    /// `write_socket` call that wrote something, for the exit log.
    write_us: Vec<(u32, usize)>,
}

impl std::fmt::Debug for Server<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("in_flight", &self.in_flight.len())
            .field("backlog", &self.backlog.len())
            .finish()
    }
}

impl<'a> Server<'a> {
    fn new(
        blk: &'a mut VirtioBlk<LinuxHal, PciTransport>,
        sock: UnixStream,
        info: DeviceInfo,
        poller: AdaptivePoller,
        idle_spin: Duration,
        irq: Option<&'a pci::UioIrq>,
    ) -> Self {
        Self {
            blk,
            irq,
            interrupts: 0,
            sock: Some(sock),
            info,
            poller,
            idle_spin,
            idle_since: None,
            decoder: Decoder::new(MAX_PAYLOAD),
            out: Vec::with_capacity(1 << 20),
            backlog: VecDeque::new(),
            in_flight: HashMap::new(),
            parents: HashMap::new(),
            next_parent: 0,
            client_gone: false,
            disconnect_sent: false,
            requests: 0,
            errors: 0,
            service_us: Vec::new(),
            write_blocked: 0,
            device_us: Vec::new(),
            device_alone_us: Vec::new(),
            idle_from: None,
            gap_us: Vec::new(),
            write_us: Vec::new(),
        }
    }

    fn serve(&mut self, kernel: &NbdKernel) -> Result<(), String> {
        let fd = self.sock.as_ref().map(|s| s.as_raw_fd()).unwrap_or(-1);
        loop {
            if signal::stop_requested() && !self.disconnect_sent {
                info!("stop requested: disconnecting {}", kernel.path().display());
                self.disconnect_sent = true;
                if let Err(e) = kernel.disconnect() {
                    warn!("NBD_DISCONNECT: {e}");
                    self.client_gone = true;
                }
            }
            if !kernel.running() && !self.client_gone {
                info!("NBD_DO_IT ended: the kernel dropped the connection");
                self.client_gone = true;
            }
            let mut work = false;
            if !self.client_gone {
                work |= self.read_socket()?;
                work |= self.take_requests()?;
            }
            work |= self.submit_backlog();
            work |= self.reap()?;
            work |= self.write_socket()?;
            if self.client_gone && self.in_flight.is_empty() && self.backlog.is_empty() {
                // Best effort: deliver the last replies.
                let _ = self.write_socket();
                return Ok(());
            }
            if work {
                self.poller.busy();
                self.idle_since = None;
            } else if self.in_flight.is_empty() && self.out.is_empty() {
                // Idle: keep looking at the socket for `idle_spin` (the
                // next request of a synchronous reader follows a reply
                // closely, and a vCPU that halts is slow to wake under TCG),
                // then block on it.
                let since = *self.idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.idle_spin {
                    self.poller.wait(&[fd], Duration::from_millis(100));
                } else {
                    std::hint::spin_loop();
                }
            } else {
                self.wait_for_device(fd)?;
            }
        }
    }

    /// Requests in flight and nothing to do: spin within the budget, then
    /// sleep until the socket is readable, the device interrupts (when bound
    /// to uio), or the poller's sleep passes.
    fn wait_for_device(&mut self, sock: std::os::unix::io::RawFd) -> Result<(), String> {
        // Spin on the used ring alone (no system calls, which cost tens of
        // microseconds each under TCG) until a completion or the budget's end.
        let sleep = loop {
            match self.poller.spin_or_sleep() {
                None => {
                    if self.reap()? {
                        self.poller.busy();
                        return Ok(());
                    }
                }
                Some(s) => break s,
            }
        };
        // Replies waiting for room in the socket: wake when it drains.
        let sock_ev = if self.out.is_empty() {
            libc::POLLIN
        } else {
            libc::POLLIN | libc::POLLOUT
        };
        let irq = self.irq.filter(|_| !self.in_flight.is_empty());
        if sleep_on_device(self.blk, irq, &mut self.poller, (sock, sock_ev), sleep)? {
            self.interrupts += 1;
        }
        Ok(())
    }

    /// Close our end of the socket; returns (requests, errors, core stats).
    /// Requests still in flight (after an error) are taken back from the
    /// device by a reset first, so their buffers are not freed under it.
    fn finish(&mut self) -> (u64, u64, pv_blk::Stats) {
        self.sock = None;
        if !self.in_flight.is_empty() {
            warn!(
                "{} requests still in flight: resetting the device",
                self.in_flight.len()
            );
            if let Err(e) = self.blk.reset(&mut |_, _| {}) {
                error!("reset: {e}; leaking the buffers still in flight");
                for (_, part) in self.in_flight.drain() {
                    std::mem::forget(part);
                }
            }
            self.in_flight.clear();
        }
        if !self.service_us.is_empty() {
            let v = &mut self.service_us;
            v.sort_unstable();
            let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
            info!(
                "device service time (NBD request decoded to reply queued): p50 {} us, p99 {} us; poller {:?}; {} interrupts; {} socket writes blocked",
                pct(0.5),
                pct(0.99),
                self.poller.stats,
                self.interrupts,
                self.write_blocked
            );
        }
        for (what, v) in [
            ("alone", &mut self.device_alone_us),
            ("with others in flight", &mut self.device_us),
        ] {
            if v.is_empty() {
                continue;
            }
            v.sort_unstable();
            let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
            info!(
                "device time (part submitted to its completion seen), {what}: {} parts, p50 {} us, p99 {} us",
                v.len(),
                pct(0.5),
                pct(0.99)
            );
        }
        if !self.gap_us.is_empty() {
            let v = &mut self.gap_us;
            v.sort_unstable();
            let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
            info!(
                "idle gap (last reply written, nothing in flight, to the next request decoded): {} gaps, p50 {} us, p99 {} us",
                v.len(),
                pct(0.5),
                pct(0.99)
            );
        }
        if !self.write_us.is_empty() {
            let v = &mut self.write_us;
            let bytes: usize = v.iter().map(|w| w.1).sum();
            let total_us: u64 = v.iter().map(|w| u64::from(w.0)).sum();
            // Big writes (a large read's reply) apart from small ones.
            let big: Vec<u32> = v.iter().filter(|w| w.1 >= 64 * 1024).map(|w| w.0).collect();
            v.sort_unstable();
            let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].0;
            info!(
                "socket writes (replies): {} calls, {} bytes, {} us in write() in all, p50 {} us, p99 {} us; {} of 64 KiB or more took {} us in all",
                v.len(),
                bytes,
                total_us,
                pct(0.5),
                pct(0.99),
                big.len(),
                big.iter().map(|&u| u64::from(u)).sum::<u64>()
            );
        }
        (self.requests, self.errors, self.blk.stats())
    }

    fn read_socket(&mut self) -> Result<bool, String> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(false);
        };
        let mut got = false;
        loop {
            let want = self.decoder.wanted().max(64 * 1024);
            let room = self.decoder.spare(want);
            match sock.read(room) {
                Ok(0) => {
                    info!("client closed the socket");
                    self.client_gone = true;
                    return Ok(got);
                }
                Ok(n) => {
                    self.decoder.commit(n);
                    got = true;
                    if n < want {
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(got),
                Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(got),
                Err(e) => return Err(format!("read from the NBD socket: {e}")),
            }
        }
    }

    fn write_socket(&mut self) -> Result<bool, String> {
        if self.out.is_empty() {
            return Ok(false);
        }
        let Some(sock) = self.sock.as_mut() else {
            self.out.clear();
            return Ok(false);
        };
        let mut done = 0;
        let started = Instant::now();
        while done < self.out.len() {
            match sock.write(&self.out[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.write_blocked += 1;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => break,
                Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                    self.client_gone = true;
                    self.out.clear();
                    return Ok(true);
                }
                Err(e) => return Err(format!("write to the NBD socket: {e}")),
            }
        }
        if done > 0 && self.write_us.len() < 1 << 22 {
            let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            self.write_us.push((us, done));
        }
        self.out.drain(..done);
        if done > 0 && self.out.is_empty() && self.in_flight.is_empty() && self.backlog.is_empty() {
            self.idle_from = Some(Instant::now());
        }
        Ok(done > 0)
    }

    fn reply(&mut self, handle: u64, error: u32, data: &[Option<DmaBuf>]) {
        self.requests += 1;
        if error != 0 {
            self.errors += 1;
        }
        self.out
            .extend_from_slice(&wire::encode_reply(handle, error));
        if error == 0 {
            for b in data.iter().flatten() {
                self.out.extend_from_slice(b.as_slice());
            }
        }
    }

    /// Turn every whole request in the decoder into parts on the backlog.
    fn take_requests(&mut self) -> Result<bool, String> {
        let mut any = false;
        loop {
            let (req, payload) = match self.decoder.next_request() {
                Ok(Some((r, p))) => (r, p),
                Ok(None) => return Ok(any),
                Err(e) => return Err(format!("NBD stream: {e}")),
            };
            any = true;
            if let Some(t) = self.idle_from.take() {
                if self.gap_us.len() < 1 << 22 {
                    let us = t.elapsed().as_micros();
                    self.gap_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            let f = self.info.features;
            let size = self.info.capacity_sectors * SECTOR_SIZE as u64;
            let range = wire::check_range(&req, size, SECTOR_SIZE as u32);
            let mut parts: Vec<(Op, u64, Option<DmaBuf>)> = Vec::new();
            let mut read = false;
            let err: Result<(), u32> = match req.command {
                Command::Disconnect => {
                    info!("client sent NBD_CMD_DISC");
                    self.client_gone = true;
                    continue;
                }
                Command::Read | Command::Write => range.and_then(|()| {
                    let write = req.command == Command::Write;
                    if write && f.read_only {
                        return Err(errno::EPERM);
                    }
                    read = !write;
                    let mut off = 0usize;
                    while off < req.len as usize {
                        let n = CHUNK.min(req.len as usize - off);
                        let mut b = DmaBuf::new(n).map_err(|e| {
                            warn!("{e}");
                            errno::ENOMEM
                        })?;
                        if write {
                            // The decoder hands out exactly `len` payload bytes.
                            let src = payload.get(off..off + n).ok_or(errno::EINVAL)?;
                            b.as_mut_slice().copy_from_slice(src);
                        }
                        let sector = (req.offset + off as u64) / SECTOR_SIZE as u64;
                        parts.push((if write { Op::Write } else { Op::Read }, sector, Some(b)));
                        off += n;
                    }
                    Ok(())
                }),
                Command::Flush => {
                    if f.flush {
                        parts.push((Op::Flush, 0, None));
                    }
                    Ok(())
                }
                Command::Trim | Command::WriteZeroes => range.and_then(|()| {
                    let zero = req.command == Command::WriteZeroes;
                    if f.read_only {
                        return Err(errno::EPERM);
                    }
                    if (zero && !f.write_zeroes) || (!zero && !f.discard) {
                        return Err(errno::ENOTSUP);
                    }
                    let max = match self.info.max_discard_sectors {
                        0 => DEFAULT_MAX_DISCARD_SECTORS,
                        m => m,
                    };
                    // Whole logical blocks per part.
                    let per_block = (self.info.block_size / SECTOR_SIZE as u32).max(1);
                    let max = (max / per_block * per_block).max(per_block);
                    let mut sector = req.offset / SECTOR_SIZE as u64;
                    let mut left = u64::from(req.len) / SECTOR_SIZE as u64;
                    while left > 0 {
                        let n = left.min(u64::from(max)) as u32;
                        let op = if zero {
                            Op::WriteZeroes {
                                sectors: n,
                                unmap: req.flags & wire::CMD_FLAG_NO_HOLE == 0,
                            }
                        } else {
                            Op::Discard {
                                sectors: n,
                                secure: false,
                            }
                        };
                        parts.push((op, sector, None));
                        sector += u64::from(n);
                        left -= u64::from(n);
                    }
                    Ok(())
                }),
                Command::Unknown(t) => {
                    warn!("unknown NBD command {t}");
                    Err(errno::ENOTSUP)
                }
            };
            if let Err(e) = err {
                self.reply(req.handle, e, &[]);
                continue;
            }
            if parts.is_empty() {
                self.reply(req.handle, 0, &[]);
                continue;
            }
            let id = self.next_parent;
            self.next_parent += 1;
            let n = parts.len();
            self.parents.insert(
                id,
                Parent {
                    handle: req.handle,
                    remaining: n,
                    error: 0,
                    read: read.then(|| (0..n).map(|_| None).collect()),
                    since: Instant::now(),
                },
            );
            for (index, (op, sector, buf)) in parts.into_iter().enumerate() {
                self.backlog.push_back(Part {
                    parent: id,
                    index,
                    op,
                    sector,
                    buf,
                });
            }
        }
    }

    /// Submit queued parts until the queue is full.
    fn submit_backlog(&mut self) -> bool {
        let mut any = false;
        while let Some(part) = self.backlog.pop_front() {
            let bufs: Vec<IoBuf> = part
                .buf
                .iter()
                .map(|b| IoBuf::new(b.as_ptr(), b.len()))
                .collect();
            let req = Request {
                op: part.op,
                sector: part.sector,
                buffers: &bufs,
            };
            // SAFETY: the buffer is a DmaBuf owned by `part`, which moves into
            // `in_flight` and stays there (its memory does not move with it)
            // until the token completes or a reset aborts it; nothing reads or
            // writes it meanwhile.
            match unsafe { self.blk.submit(&req) } {
                Ok(tok) => {
                    let alone = self.in_flight.is_empty();
                    self.in_flight
                        .insert(tok.raw(), (part, Instant::now(), alone));
                    any = true;
                }
                Err(BlkError::QueueFull) => {
                    self.backlog.push_front(part);
                    break;
                }
                Err(e) => {
                    warn!("submit {:?} at {}: {e}", part.op, part.sector);
                    self.complete(part, Err(e));
                    any = true;
                }
            }
        }
        any
    }

    /// Collect completions (resetting the device on a fault).
    fn reap(&mut self) -> Result<bool, String> {
        let mut done: Vec<(Token, Result<usize, BlkError>)> = Vec::new();
        let r = self.blk.poll_completions(&mut |t, r| done.push((t, r)));
        if let Err(fault) = r {
            error!("device fault: {fault}; resetting the device");
            self.blk
                .reset(&mut |t, r| done.push((t, r)))
                .map_err(|e| format!("device reset failed: {e}"))?;
            info!("device reset done; {} requests aborted", done.len());
        }
        let any = !done.is_empty();
        for (t, r) in done {
            match self.in_flight.remove(&t.raw()) {
                Some((part, since, alone)) => {
                    let v = if alone {
                        &mut self.device_alone_us
                    } else {
                        &mut self.device_us
                    };
                    if v.len() < 1 << 22 {
                        let us = since.elapsed().as_micros();
                        v.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                    self.complete(part, r)
                }
                None => warn!("completion for unknown token {:#x}", t.raw()),
            }
        }
        Ok(any)
    }

    fn complete(&mut self, part: Part, r: Result<usize, BlkError>) {
        let Some(p) = self.parents.get_mut(&part.parent) else {
            return;
        };
        if let Err(e) = r {
            if p.error == 0 {
                warn!("{:?} at sector {}: {e}", part.op, part.sector);
            }
            p.error = match e {
                BlkError::Unsupported(_) | BlkError::DeviceUnsupported(_) => errno::ENOTSUP,
                BlkError::ReadOnly => errno::EPERM,
                BlkError::OutOfRange { .. } => errno::ENOSPC,
                _ => errno::EIO,
            };
        }
        if let (Some(read), Some(buf)) = (p.read.as_mut(), part.buf) {
            if let Some(slot) = read.get_mut(part.index) {
                *slot = Some(buf);
            }
        }
        p.remaining = p.remaining.saturating_sub(1);
        if p.remaining == 0 {
            if let Some(p) = self.parents.remove(&part.parent) {
                let data = p.read.unwrap_or_default();
                if self.service_us.len() < 1 << 22 {
                    let us = p.since.elapsed().as_micros();
                    self.service_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
                self.reply(p.handle, p.error, &data);
            }
        }
    }
}
