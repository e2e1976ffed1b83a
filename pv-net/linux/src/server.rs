//! `pvnetd`: the pv-net Linux guest runtime. Claims a virtio-net PCI device
//! from the kernel (through `pv-linux`, as `pvblkd` does for block), drives
//! it from userspace with the pv-net core (`pv_net::virtio`), and gives the
//! guest kernel a TAP interface with the device's MAC, MTU and link state,
//! so the guest's own IP stack, `ping` and TCP run over it.
//!
//! # How it runs
//!
//! One thread: frames the device received are written to the TAP (one
//! `writev` each, header and frame); frames the kernel wrote to the TAP are
//! copied into the core's transmit slots, with one kick decision per batch
//! (`flush_tx`, notification suppression by the device's event index).
//!
//! # Checksum offload
//!
//! Mapped, not computed, where both ends can: the TAP carries a
//! `virtio_net_hdr` (`IFF_VNET_HDR`, 12 bytes). When the device offers
//! `VIRTIO_NET_F_CSUM` the TAP offers `TUN_F_CSUM`, so the kernel sends
//! `CHECKSUM_PARTIAL` frames as `NEEDS_CSUM` + start/offset and the core
//! passes that to the device. When the device lacks it (our switch and
//! QEMU's stream/socket netdevs offer no checksum offload) the kernel
//! checksums each frame itself by default (`--tap-csum auto`): it folds the
//! sum into the copy from the sending process instead of us making a
//! separate pass over the frame (the benchmark runs so far, on a loaded
//! host, could not separate the effect from the load: docs/BENCHMARKS.md,
//! "pvnetd INTx wake-ups"). `--tap-csum on` offers `TUN_F_CSUM` anyway and
//! completes the checksum in software; `off` (or `--no-csum-offload`)
//! never offers it. Received `DATA_VALID` and `NEEDS_CSUM` (with
//! `GUEST_CSUM`) are handed to the kernel as they came.
//!
//! # Polling and wake-ups
//!
//! After the last frame either way the loop spins for `--spin-us`
//! (`pv_linux::poll::AdaptivePoller`; yielding the CPU, so the guest's own
//! tasks woken by our last frame run first on a one-vCPU guest). With
//! INTx the spin reads the TAP and yields only every `--spin-tap-every`-th
//! turn and looks at the device's rings (plain memory) every turn: system
//! calls are what a spinning guest spends its vCPU on under TCG. Then it sleeps in `ppoll` on the TAP (a frame from the kernel
//! ends the sleep at once) and, by default (`--irq intx`), on the device's
//! INTx interrupt: the function is bound to `uio_pci_generic` while we hold
//! it, and just before sleeping the receive queue (and the transmit queue
//! only while its slots ran out) is asked for an interrupt at the next
//! completion, then re-checked, so a frame that arrived meanwhile is served
//! instead of slept on (no lost wake-up: the device either sees the armed
//! event index, or we see its completion in the re-check). On waking the
//! interrupt is acknowledged (the ISR read lowers the line) and disarmed
//! again: while spinning the device never interrupts. The sleep still has
//! a timeout, doubling from `--min-sleep-us` to `--max-sleep-us`, because
//! under TCG an INTx wake-up can arrive late. While transmit slots are all
//! in flight the TAP is left out of the `ppoll` (it would stay readable)
//! and a transmit completion wakes us instead.
//!
//! How the sleeps ended is counted (`Wakeups`, in the exit log and, with
//! `--stats-every-s`, periodically): a sleep that timed out with a
//! completion already on the armed ring would be a lost or late
//! interrupt. Measured (docs/BENCHMARKS.md, "pvnetd wake-ups: none
//! lost"): none lost; under TCG on a loaded host an INTx can come up to a
//! few milliseconds late, which the timeout caps.
//!
//! With `--irq off` (or without `uio_pci_generic`) there are no interrupts
//! and the old timed sleeps serve: warm for `--warm-ms` after the last
//! frame (sleeps doubling from `--min-sleep-us` to `--warm-sleep-us`), then
//! cold (sleeps of `--max-sleep-us`), so a frame from the device waits at
//! most the current sleep.
//!
//! CPU budget: `--spin-us` per burst of traffic, then one wake-up per
//! frame (interrupt) or timeout; idle, one per `--max-sleep-us`. Timer
//! slack is set to 1 µs so the short sleeps are what they say.
//!
//! # Failure handling
//!
//! A frame the device wrote out of spec is dropped and counted by the core.
//! A device the core stops trusting is reset (frames in flight are lost,
//! as on any NIC reset) and service goes on; a reset that fails ends the
//! daemon (exit 1) after giving the device back.
//!
//! # Stopping
//!
//! SIGTERM/SIGINT: carrier off and the TAP down, the device reset (the
//! core's drop), the function handed back to the kernel (`drivers_probe`:
//! `virtio-pci` then `virtio_net`, and an `ethN` reappears), exit 0.

mod tap;

use std::os::unix::io::RawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use log::{debug, error, info, warn};
use pv_linux::dma::{self, LinuxHal};
use pv_linux::pci::{self, PciAddress, PciDevice, UioIrq};
use pv_linux::poll::{wait_ready, AdaptivePoller};
use pv_linux::signal;
use pv_net::frontend::max_frame;
use pv_net::tap_hdr::{rx_hdr_of, tx_csum_of};
use pv_net::virtio::{VirtioNet, VirtioNetConfig, HDR_LEN};
use pv_net::{NetError, NetFrontend, RxRefill};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{InterruptStatus, Transport};

use tap::Tap;

/// Sleeps at least this long count as long in [`Wakeups`].
const LONG_SLEEP: Duration = Duration::from_micros(500);

/// How often the device's link state is read (a config-space read).
const LINK_CHECK: Duration = Duration::from_millis(200);

#[derive(Parser, Debug)]
#[command(
    version,
    about = "pv-net guest runtime: drive a virtio-net PCI device from userspace and expose it as a TAP interface"
)]
struct Cli {
    /// PCI address of the virtio-net device (DDDD:BB:DD.F); default: the
    /// first virtio-net function nobody has claimed.
    #[arg(long)]
    pci: Option<String>,
    /// Name of the TAP interface to create.
    #[arg(long, default_value = "pvnet0")]
    ifname: String,
    /// Leave the interface down (default: bring it up).
    #[arg(long)]
    no_up: bool,
    /// Do not offer checksum offload to the kernel (it then checksums every
    /// frame itself); the same as `--tap-csum off`.
    #[arg(long)]
    no_csum_offload: bool,
    /// Offer checksum offload (`TUN_F_CSUM`) to the kernel: `auto` when
    /// the device computes transmit checksums, `on` always (completed in
    /// software when the device cannot), `off` never.
    #[arg(long, value_enum, default_value_t = TapCsum::Auto)]
    tap_csum: TapCsum,
    /// Entries per virtqueue (the device may offer fewer).
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Refill RX buffers once this many or fewer are posted.
    #[arg(long, default_value_t = 128)]
    rx_low_water: u16,
    /// Most frames moved each way per loop turn.
    #[arg(long, default_value_t = 64)]
    budget: usize,
    /// Busy-poll (yielding) this long after the last frame before sleeping.
    #[arg(long, default_value_t = 1000)]
    spin_us: u64,
    /// While spinning with INTx, read the TAP and yield the CPU only every
    /// N-th turn (the device's rings, plain memory, are looked at every
    /// turn): each is a system call, and those are what a spinning guest
    /// spends its vCPU on under TCG. 1: every turn, as before.
    #[arg(long, default_value_t = 8)]
    spin_tap_every: u32,
    /// Wake on the device's INTx interrupt (through uio_pci_generic, which
    /// must be loaded) once the spin budget is spent; `off`, or when uio is
    /// unavailable: timed sleeps only.
    #[arg(long, value_enum, default_value_t = Irq::Intx)]
    irq: Irq,
    /// First sleep once idle.
    #[arg(long, default_value_t = 10)]
    min_sleep_us: u64,
    /// Longest sleep in the warm phase without interrupts (bounds the added
    /// latency of a frame from the device while traffic flows).
    #[arg(long, default_value_t = 50)]
    warm_sleep_us: u64,
    /// Length of the warm phase after the last frame.
    #[arg(long, default_value_t = 50)]
    warm_ms: u64,
    /// Sleep once cold without interrupts (bounds the added latency of the
    /// first frame from the device after a quiet spell, and the idle CPU
    /// cost); with interrupts, the longest sleep timeout.
    #[arg(long, default_value_t = 1000)]
    max_sleep_us: u64,
    /// Most 2 MiB hugepages for DMA memory (rings and bounce buffers).
    #[arg(long, default_value_t = 8)]
    hugepages: usize,
    /// Diagnostics only (delays service): with INTx, sleep in slices of
    /// this many microseconds and time how late the interrupt comes after
    /// a completion is visible (`probe_*` in the wake-up counters). 0: off.
    #[arg(long, default_value_t = 0)]
    probe_slice_us: u64,
    /// Also log the wake-up and TAP counters every this many seconds (0:
    /// only at exit), e.g. for a benchmark that never stops this daemon.
    #[arg(long, default_value_t = 0)]
    stats_every_s: u64,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", value_parser = pv_linux::logger::parse_level)]
    log_level: log::LevelFilter,
}

/// Checksum offload on the TAP; see the module docs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TapCsum {
    /// When the device has `VIRTIO_NET_F_CSUM`.
    Auto,
    /// Always (software checksum when the device lacks it).
    On,
    /// Never.
    Off,
}

/// Interrupt use; see the module docs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Irq {
    /// INTx through uio_pci_generic.
    Intx,
    /// No interrupts: timed sleeps.
    Off,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    pv_linux::logger::init("pvnetd", cli.log_level);
    pv_linux::logger::finish("pvnetd", run(&cli))
}

/// First virtio-net function with no `driver_override` (nobody claimed it).
fn pick_device(cli: &Cli) -> Result<PciAddress, String> {
    pci::pick_unclaimed(
        cli.pci.as_deref(),
        pci::VIRTIO_VENDOR,
        &pci::VIRTIO_NET_IDS,
        "virtio-net",
    )
}

fn run(cli: &Cli) -> Result<(), String> {
    signal::install().map_err(|e| e.to_string())?;
    pv_linux::poll::set_min_timer_slack();
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
    let cfg = VirtioNetConfig {
        queue_size: cli.queue_size,
        refill: RxRefill {
            low_water: cli.rx_low_water,
        },
        ..VirtioNetConfig::default()
    };
    let mut nic: VirtioNet<LinuxHal, PciTransport> =
        VirtioNet::new(transport, cfg).map_err(|e| format!("virtio-net init: {e}"))?;
    // Interrupts only when about to sleep (and only with INTx): ask the
    // device not to raise them while we poll.
    nic.disable_interrupts();
    let ni = nic.info();
    info!(
        "device: mac {}, mtu {}, tx csum {}, rx csum {}, link status {}, event idx {}, {} rx / {} tx slots, features {:?}",
        fmt_mac(ni.mac),
        ni.mtu,
        ni.tx_csum,
        ni.rx_csum,
        ni.link_status,
        ni.event_idx,
        ni.rx_slots,
        ni.tx_slots,
        nic.negotiated()
    );
    let csum_offload = match cli.tap_csum {
        _ if cli.no_csum_offload => false,
        TapCsum::Auto => ni.tx_csum,
        TapCsum::On => true,
        TapCsum::Off => false,
    };
    let tap = Tap::open(&cli.ifname, csum_offload).map_err(|e| e.to_string())?;
    tap.set_mac(ni.mac).map_err(|e| e.to_string())?;
    tap.set_mtu(ni.mtu).map_err(|e| e.to_string())?;
    let link = nic.link_up();
    tap.set_carrier(link).map_err(|e| e.to_string())?;
    if !cli.no_up {
        tap.set_up(true).map_err(|e| e.to_string())?;
    }
    info!(
        "TAP {} (checksum offload {}), link {}",
        tap.name(),
        if csum_offload { "on" } else { "off" },
        if link { "up" } else { "down" }
    );
    println!(
        "pvnetd: {} serving {} mac {} mtu {}",
        tap.name(),
        dev.address(),
        fmt_mac(ni.mac),
        ni.mtu
    );

    let irq = dev.irq();
    info!(
        "wake-ups: {}",
        if irq.is_some() {
            "INTx (uio_pci_generic)"
        } else {
            "timed sleeps only"
        }
    );
    let poller = AdaptivePoller::new(
        Duration::from_micros(cli.spin_us),
        Duration::from_micros(cli.min_sleep_us),
        Duration::from_micros(if irq.is_some() {
            cli.max_sleep_us
        } else {
            cli.warm_sleep_us
        }),
    );
    let mut pump = Pump::new(&mut nic, &tap, poller, cli.budget, link);
    pump.irq = irq;
    pump.tap_every = cli.spin_tap_every.max(1);
    pump.warm = Duration::from_millis(cli.warm_ms);
    pump.cold_sleep = Duration::from_micros(cli.max_sleep_us);
    pump.probe_slice = (cli.probe_slice_us > 0).then(|| Duration::from_micros(cli.probe_slice_us));
    pump.stats_every = (cli.stats_every_s > 0).then(|| Duration::from_secs(cli.stats_every_s));
    let served = pump.run();
    let c = pump.counters;
    let ps = pump.poller.stats;
    info!(
        "to TAP {} frames ({} write errors), from TAP {} frames ({} refused); {} interrupts, poller {:?}; wake-ups {:?}; core {:?}",
        c.to_tap,
        c.tap_write_errors,
        c.from_tap,
        c.tap_refused,
        c.interrupts,
        ps,
        pump.wakeups,
        nic.stats()
    );
    // Carrier off and down before the device goes: the stack stops using
    // the interface; the TAP itself goes when `tap` drops.
    if let Err(e) = tap.set_carrier(false) {
        warn!("{e}");
    }
    if let Err(e) = tap.set_up(false) {
        warn!("{e}");
    }
    info!("TAP {} down; resetting the device", tap.name());
    // Dropping the core resets the device and takes its buffers back.
    drop(nic);
    served
}

fn fmt_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Data-path counters of the TAP side (the core counts the device side).
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    /// Frames written to the TAP.
    to_tap: u64,
    /// Frames the TAP refused (logged once per 1000).
    tap_write_errors: u64,
    /// Frames read from the TAP and queued to the device.
    from_tap: u64,
    /// Frames read from the TAP and not sent (bad header, too long).
    tap_refused: u64,
    /// INTx interrupts taken.
    interrupts: u64,
}

/// How the INTx sleeps ended (`--irq intx`), for the exit log: a sleep
/// that ran to its timeout although work was already there when it ended
/// is a late or lost wake-up.
#[derive(Debug, Default, Clone, Copy)]
struct Wakeups {
    /// Sleeps ended by the uio fd (an INTx was taken).
    irq: u64,
    /// Sleeps ended by the TAP only.
    tap: u64,
    /// Sleeps that ran to their timeout.
    timeout: u64,
    /// Of those, sleeps of at least `LONG_SLEEP`.
    timeout_long: u64,
    /// Of those, the armed queue already had completions when the sleep
    /// ended (the device did not interrupt, or the interrupt did not get
    /// through).
    timeout_ring: u64,
    /// Of those, the sleep was at least `LONG_SLEEP` long (a completion
    /// that landed in the last microseconds of a short sleep is a race
    /// with the timeout, not a lost interrupt; one found after a long
    /// sleep most likely waited for it).
    timeout_ring_long: u64,
    /// Timed-out sleeps after which the ISR had the queue bit set (the
    /// device raised INTx; a few microseconds later than `timeout_ring`).
    timeout_isr: u64,
    /// Timed-out sleeps after which the TAP had a frame.
    timeout_tap: u64,
    /// Sleeps not started because the re-check after arming found work.
    recheck: u64,
    /// `--probe-slice-us`: completions seen at the end of a slice with no
    /// interrupt yet; of those, the interrupt (or the TAP) came a whole
    /// slice or more later; the longest such wait.
    probe_seen: u64,
    probe_late_slice: u64,
    probe_late_max_us: u64,
}

/// The loop moving frames between the device and the TAP.
struct Pump<'a> {
    nic: &'a mut VirtioNet<LinuxHal, PciTransport>,
    tap: &'a Tap,
    poller: AdaptivePoller,
    /// The device's INTx, when bound to uio (see the module docs).
    irq: Option<&'a UioIrq>,
    /// With INTx: read the TAP and yield every this many idle turns.
    tap_every: u32,
    /// Turns since the last one that moved a frame (or since a sleep).
    idle_turns: u32,
    /// Warm phase length and cold-phase sleep (see the module docs).
    warm: Duration,
    cold_sleep: Duration,
    budget: usize,
    link: bool,
    last_link_check: Instant,
    /// One frame read from the TAP (header included).
    buf: Vec<u8>,
    counters: Counters,
    wakeups: Wakeups,
    /// `--probe-slice-us`.
    probe_slice: Option<Duration>,
    /// Periodic counter log (`--stats-every-s`).
    stats_every: Option<Duration>,
    last_stats: Instant,
}

impl<'a> Pump<'a> {
    fn new(
        nic: &'a mut VirtioNet<LinuxHal, PciTransport>,
        tap: &'a Tap,
        poller: AdaptivePoller,
        budget: usize,
        link: bool,
    ) -> Self {
        Self {
            nic,
            tap,
            poller,
            irq: None,
            tap_every: 1,
            idle_turns: 0,
            warm: Duration::from_millis(50),
            cold_sleep: Duration::from_millis(1),
            budget: budget.max(1),
            link,
            last_link_check: Instant::now(),
            // The largest frame the TAP can hand over with no GSO is
            // bounded by its MTU; 64 KiB more than covers any MTU we set,
            // so a read is never truncated.
            buf: vec![0u8; HDR_LEN + 65536],
            counters: Counters::default(),
            wakeups: Wakeups::default(),
            stats_every: None,
            probe_slice: None,
            last_stats: Instant::now(),
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let fd = self.tap.raw_fd();
        let mut last_work = Instant::now();
        while !signal::stop_requested() {
            // The TAP is read on every turn without INTx, and on every
            // `tap_every`-th idle turn with it (a sleep ends in a turn that
            // reads it: the TAP is in the `ppoll`).
            let check_tap = self.irq.is_none() || self.idle_turns.is_multiple_of(self.tap_every);
            let work = match self.turn(check_tap) {
                Ok(w) => w,
                Err(e) => {
                    self.recover(e)?;
                    true
                }
            };
            if work {
                self.idle_turns = 0;
            } else {
                self.idle_turns = self.idle_turns.wrapping_add(1);
            }
            if work {
                self.poller.busy();
                last_work = Instant::now();
            } else if let Some(irq) = self.irq {
                self.idle_with_irq(irq, fd)?;
            } else if last_work.elapsed() < self.warm {
                // SAFETY: sched_yield takes no arguments and only lets
                // other runnable tasks of this guest go first.
                unsafe { libc::sched_yield() };
                self.poller.idle(&[fd]);
            } else {
                self.poller.wait(&[fd], self.cold_sleep);
            }
        }
        info!("stop requested");
        Ok(())
    }

    /// Nothing moved: spin (yielding) within the budget, else arm the
    /// device's interrupt, re-check, and sleep until it fires, the TAP has
    /// a frame, or the timeout passes; see the module docs.
    fn idle_with_irq(&mut self, irq: &UioIrq, tap_fd: RawFd) -> Result<(), String> {
        let Some(timeout) = self.poller.spin_or_sleep() else {
            if self.idle_turns.is_multiple_of(self.tap_every) {
                // SAFETY: sched_yield takes no arguments and only lets
                // other runnable tasks of this guest go first.
                unsafe { libc::sched_yield() };
            }
            return Ok(());
        };
        // Transmit completions matter only when they are what we wait for.
        let tx_blocked = self.nic.tx_space() == 0;
        match self.nic.enable_interrupts_on(true, tx_blocked) {
            Ok(false) => {}
            Ok(true) => {
                // Work arrived between the last look and arming: serve it.
                self.nic.disable_interrupts();
                self.wakeups.recheck += 1;
                self.poller.busy();
                return Ok(());
            }
            // A device fault: the next turn reports it and recovers.
            Err(_) => return Ok(()),
        }
        irq.arm().map_err(|e| e.to_string())?;
        let irq_ev = (irq.fd(), libc::POLLIN);
        let tap_ev = (tap_fd, libc::POLLIN);
        let evs: &[(RawFd, i16)] = if tx_blocked {
            &[irq_ev]
        } else {
            &[irq_ev, tap_ev]
        };
        let ready = match self.probe_slice {
            None => wait_ready(evs, timeout),
            Some(slice) => self.probe_sleep(evs, timeout, slice, tx_blocked),
        };
        let woken = ready != 0;
        // First thing after a timeout, before any system call or device
        // access widens the window: was a completion already published?
        let ring_at_timeout = !woken && self.nic.completions_pending(true, tx_blocked);
        if irq.take().map_err(|e| e.to_string())?.is_some() {
            self.counters.interrupts += 1;
        }
        if !woken {
            // Was the work already there? (Re-arming re-checks the ring.)
            self.wakeups.timeout += 1;
            if timeout >= LONG_SLEEP {
                self.wakeups.timeout_long += 1;
            }
            if ring_at_timeout {
                self.wakeups.timeout_ring += 1;
                if timeout >= LONG_SLEEP {
                    self.wakeups.timeout_ring_long += 1;
                }
            }
            if !tx_blocked && wait_ready(&[tap_ev], Duration::ZERO) != 0 {
                self.wakeups.timeout_tap += 1;
            }
        } else if ready & 1 != 0 {
            self.wakeups.irq += 1;
        } else {
            self.wakeups.tap += 1;
        }
        // Lower the line (the ISR read); INTx stays masked until the next
        // arm, and the device is asked not to interrupt while we poll.
        let isr = self.nic.transport_mut().ack_interrupt();
        if !woken && isr.contains(InterruptStatus::QUEUE_INTERRUPT) {
            self.wakeups.timeout_isr += 1;
        }
        self.nic.disable_interrupts();
        self.poller.woke(woken);
        // The next turn reads the TAP (it may be what woke us).
        self.idle_turns = 0;
        Ok(())
    }

    /// `--probe-slice-us` (diagnostics only: it delays service): sleep in
    /// slices, peeking at the armed rings between them, and time how long
    /// an interrupt takes to arrive once a completion is visible.
    fn probe_sleep(
        &mut self,
        evs: &[(RawFd, i16)],
        timeout: Duration,
        slice: Duration,
        tx_blocked: bool,
    ) -> u32 {
        let deadline = Instant::now() + timeout;
        let mut seen: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break 0;
            }
            let ready = wait_ready(evs, slice.min(deadline - now));
            if ready != 0 {
                if let Some(t) = seen {
                    let late = t.elapsed();
                    self.wakeups.probe_late_max_us =
                        self.wakeups.probe_late_max_us.max(late.as_micros() as u64);
                    if late >= slice {
                        self.wakeups.probe_late_slice += 1;
                    }
                }
                break ready;
            }
            if seen.is_none() && self.nic.completions_pending(true, tx_blocked) {
                seen = Some(Instant::now());
                self.wakeups.probe_seen += 1;
            }
        }
    }

    /// A device fault stopped the core: reset and carry on, or give up.
    fn recover(&mut self, e: NetError) -> Result<(), String> {
        if self.nic.fault().is_none() {
            // Not a device fault: a bug in how we drive the core.
            return Err(format!("virtio-net: {e}"));
        }
        error!("device fault: {e}; resetting the device");
        self.nic
            .reset()
            .map_err(|e| format!("device reset failed: {e}"))?;
        self.nic.disable_interrupts();
        info!("device reset done");
        Ok(())
    }

    /// One pass both ways (the TAP side only if `check_tap`); true if any
    /// frame moved.
    fn turn(&mut self, check_tap: bool) -> Result<bool, NetError> {
        let tap = self.tap;
        let c = &mut self.counters;
        let rx = self.nic.poll_rx(
            self.budget,
            &mut |f| match tap.write(&rx_hdr_of(f.csum), f.data) {
                Ok(()) => c.to_tap += 1,
                Err(e) => {
                    if c.tap_write_errors.is_multiple_of(1000) {
                        warn!("{e} (frame of {} bytes dropped)", f.data.len());
                    }
                    c.tap_write_errors += 1;
                }
            },
        )?;
        let reclaimed = self.nic.poll_tx()?;
        let mut tx = 0;
        let maxf = max_frame(self.nic.info().mtu);
        while check_tap && tx < self.budget && self.nic.tx_space() > 0 {
            let n = match self.tap.read(&mut self.buf) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    // The TAP is ours and non-blocking: a read error other
                    // than "nothing now" means the interface is gone.
                    error!("{e}");
                    signal::request_stop();
                    break;
                }
            };
            tx += 1;
            let pkt = &self.buf[..n];
            let (csum, frame) = match tx_csum_of(pkt) {
                Ok(r) => r,
                Err(why) => {
                    self.counters.tap_refused += 1;
                    debug!("frame from the TAP refused: {why:?}");
                    continue;
                }
            };
            if frame.len() > maxf {
                self.counters.tap_refused += 1;
                debug!("frame of {} bytes from the TAP over the MTU", frame.len());
                continue;
            }
            match self.nic.queue_tx(frame, csum) {
                Ok(()) => self.counters.from_tap += 1,
                Err(
                    e @ (NetError::FrameTooShort { .. }
                    | NetError::FrameTooLong { .. }
                    | NetError::BadChecksumRequest),
                ) => {
                    self.counters.tap_refused += 1;
                    debug!("frame from the TAP refused: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        if tx > 0 {
            self.nic.flush_tx()?;
        }
        if self.last_link_check.elapsed() >= LINK_CHECK {
            self.last_link_check = Instant::now();
            if self
                .stats_every
                .is_some_and(|every| self.last_stats.elapsed() >= every)
            {
                self.last_stats = self.last_link_check;
                info!(
                    "stats: {} interrupts, {:?}, wake-ups {:?}",
                    self.counters.interrupts, self.poller.stats, self.wakeups
                );
            }
            let link = self.nic.link_up();
            if link != self.link {
                self.link = link;
                info!("link {}", if link { "up" } else { "down" });
                if let Err(e) = self.tap.set_carrier(link) {
                    warn!("{e}");
                }
            }
        }
        Ok(rx > 0 || reclaimed > 0 || tx > 0)
    }
}
