//! The device side of `pvballoond`: claim the virtio-balloon PCI function
//! and run the daemon loop (see the crate docs for what it does and
//! refuses, and `pv_balloon`'s for the loop the core expects).

use std::time::{Duration, Instant};

use log::{error, info, warn};
use pv_linux::dma::{self, LinuxHal};
use pv_linux::pci::{self, PciAddress, PciDevice};
use pv_linux::poll::AdaptivePoller;
use pv_linux::signal;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::Transport;

use pv_balloon::{
    BalloonError, Event, Limits, MemStats, Plan, VirtioBalloon, VirtioBalloonConfig,
    VirtioDeviceId, VirtioFeatures,
};

use crate::config::Options;
use crate::pages::{self, Backing, PinMethod, PinnedPage};
use crate::procfs::{self, MemInfo, VmStat};
use crate::Error;

pub use pv_linux::pci::VIRTIO_BALLOON_IDS;
const MIB: u64 = 1 << 20;
const COMPACT_UNEVICTABLE: &str = "/proc/sys/vm/compact_unevictable_allowed";
const PSI_MEMORY: &str = "/proc/pressure/memory";
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
const THP_DEFRAG: &str = "/sys/kernel/mm/transparent_hugepage/defrag";
const THP_SIZE: &str = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size";
/// Command register: INTx disable.
const CMD_INTX_DISABLE: u16 = 1 << 10;
/// How long the exit path waits for the device to take its pages back.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);
/// Longest a `MemAvailable` reading is reused (pages pinned since are
/// subtracted from it, pages released since added).
/// Reading `/proc/meminfo` is not free (the kernel sums every counter),
/// and the floor's margin covers what others allocate meanwhile.
const MEMINFO_MAX_AGE: Duration = Duration::from_millis(50);
/// Most pages pinned ahead of the device during an inflate (16 MiB of
/// 4 KiB pages), or one batch if that is more: fewer, larger `mmap` calls.
const STASH_PAGES: usize = 4096;
/// How often PSI is read (the kernel updates `avg10` every 2 s).
const PSI_EVERY: Duration = Duration::from_millis(500);
/// Least time between two PSI-driven deflates (PSI averages lag by 10 s).
const PSI_DEFLATE_EVERY: Duration = Duration::from_secs(1);

/// Claim the device, drive it until SIGTERM/SIGINT, give it back.
pub fn run(opts: &Options) -> Result<(), Error> {
    signal::install()?;
    // Three small queues and their bounce pages fit in one hugepage.
    dma::init(2, 1)?;
    let addr = pick_device(opts)?;
    let binding = if opts.irq {
        pci::Binding::UioPciGeneric
    } else {
        pci::Binding::Unbound
    };
    pci::serve_claimed(addr, binding, |dev| {
        let compaction = SysctlGuard::set(
            COMPACT_UNEVICTABLE,
            "0",
            "pinned pages may be migrated by compaction",
        );
        let result = set_intx_disabled(dev, true).and_then(|()| drive(opts, dev));
        if let Err(e) = set_intx_disabled(dev, false) {
            warn!("re-enabling INTx: {e}");
        }
        drop(compaction);
        result
    })
}

fn pick_device(opts: &Options) -> Result<PciAddress, Error> {
    Ok(pci::pick_unclaimed(
        opts.pci.as_deref(),
        pci::VIRTIO_VENDOR,
        &VIRTIO_BALLOON_IDS,
        "virtio-balloon",
    )?)
}

/// Nothing handles the device's INTx line while we hold it (the kernel
/// driver is unbound): keep it from asserting an interrupt nobody clears.
fn set_intx_disabled(dev: &PciDevice, off: bool) -> Result<(), Error> {
    let c = dev.config_access();
    let cmd = u16::from_le_bytes(c.read_bytes::<2>(4)?);
    let new = if off {
        cmd | CMD_INTX_DISABLE
    } else {
        cmd & !CMD_INTX_DISABLE
    };
    if new != cmd {
        c.write_bytes(4, &new.to_le_bytes())?;
    }
    Ok(())
}

/// A sysctl set for the daemon's lifetime, restored on drop.
struct SysctlGuard {
    path: &'static str,
    old: Option<std::string::String>,
}

impl SysctlGuard {
    /// `unset`: what it means if the write fails (for the log).
    fn set(path: &'static str, value: &str, unset: &str) -> Self {
        // A sysfs choice reads as "a [b] c": the old value is "b".
        let old = std::fs::read_to_string(path).ok().map(|t| {
            match t.split_once('[').and_then(|(_, r)| r.split_once(']')) {
                Some((v, _)) => v.into(),
                None => t,
            }
        });
        match std::fs::write(path, value) {
            Ok(()) => info!("{path} = {value} while running"),
            Err(e) => warn!("{path}: {e} ({unset})"),
        }
        Self { path, old }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Some(v) = &self.old {
            if let Err(e) = std::fs::write(self.path, v.trim()) {
                warn!("restoring {}: {e}", self.path);
            }
        }
    }
}

/// How to back balloon pages: transparent huge pages if asked for, the
/// kernel has them on (`always` or `madvise`), pages are 4 KiB and there is
/// no swap (see [`pages`] for why swap matters).
fn pick_backing(want: bool, page_size: usize, mi: &MemInfo) -> Backing {
    if !want {
        return Backing::Small;
    }
    let enabled = std::fs::read_to_string(THP_ENABLED)
        .is_ok_and(|t| t.contains("[always]") || t.contains("[madvise]"));
    let size = std::fs::read_to_string(THP_SIZE)
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok())
        .filter(|s| s.is_power_of_two() && *s > page_size);
    let swap = mi.get("SwapTotal").unwrap_or(0);
    match size {
        Some(s) if enabled && swap == 0 && page_size == 4096 => Backing::Huge(s),
        _ => {
            info!(
                "not using huge pages (THP {}, SwapTotal {} MiB, page size {page_size})",
                if enabled { "on" } else { "off" },
                swap / MIB
            );
            Backing::Small
        }
    }
}

fn read_meminfo() -> Result<MemInfo, Error> {
    std::fs::read_to_string("/proc/meminfo")
        .map(|t| MemInfo::parse(&t))
        .map_err(|e| Error::Io("/proc/meminfo", e))
}

fn read_stats() -> Result<MemStats, Error> {
    let mi = read_meminfo()?;
    let vm = std::fs::read_to_string("/proc/vmstat")
        .map(|t| VmStat::parse(&t))
        .map_err(|e| Error::Io("/proc/vmstat", e))?;
    Ok(procfs::mem_stats(&mi, &vm))
}

/// What one batch of core events asks of the loop.
#[derive(Debug, Default)]
struct Events {
    released: Vec<PinnedPage>,
    stats_due: bool,
}

impl Events {
    fn on(&mut self, ev: Event<PinnedPage>) {
        match ev {
            Event::Released(p) => self.released.push(p),
            Event::StatsRequested => self.stats_due = true,
            Event::TargetChanged { frames } => {
                info!("target: {} MiB in the balloon", frames * 4096 / MIB)
            }
            Event::Warning(e) => warn!("device: {e}"),
            // PAGE_REPORTING is refused: no range is ever posted.
            Event::Reported(_) => {}
        }
    }
}

/// Where the time of a balloon move went (logged when the balloon settles).
#[derive(Debug, Default)]
struct Spent {
    /// Mapping, locking and looking up pages.
    pin: Duration,
    /// Posting buffers to the device (QEMU handles them synchronously in
    /// the notify under TCG, so this includes its work).
    device: Duration,
    /// Unmapping released pages.
    release: Duration,
    /// When the move started (the first work since the last report).
    since: Option<Instant>,
}

/// `MemAvailable`, re-read at most every [`MEMINFO_MAX_AGE`], less what was
/// pinned since.
struct Available {
    bytes: u64,
    at: Option<Instant>,
}

impl Available {
    fn get(&mut self) -> Result<u64, Error> {
        if self.at.is_none_or(|t| t.elapsed() > MEMINFO_MAX_AGE) {
            self.bytes = read_meminfo()?
                .available()
                .ok_or(Error::Parse("/proc/meminfo"))?;
            self.at = Some(Instant::now());
        }
        Ok(self.bytes)
    }

    fn gave(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
    }

    fn took(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    fn stale(&mut self) {
        self.at = None;
    }
}

fn drive(opts: &Options, dev: &PciDevice) -> Result<(), Error> {
    let transport = dev.virtio_transport()?;
    let mi = read_meminfo()?;
    let total = mi.get("MemTotal").ok_or(Error::Parse("/proc/meminfo"))?;
    let guest = std::fs::read_to_string("/proc/iomem")
        .ok()
        .and_then(|t| procfs::system_ram_bytes(&t))
        .unwrap_or(total);
    let floor = opts
        .floor_mib
        .map(|m| m.saturating_mul(MIB))
        .unwrap_or((64 * MIB).max(total / 20))
        .min(guest);
    let margin = (floor / 2).max(8 * MIB);
    // SAFETY: sysconf reads a constant of the running system.
    let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p >= 4096 => p as usize,
        _ => 4096,
    };
    let backing = pick_backing(opts.huge_pages, page_size, &mi);
    // A huge page only where a free one is at hand, else 4 KiB pages: no
    // direct reclaim or compaction stalls inside an inflate's faults (the
    // bench did not show a difference in rate either way, see
    // docs/BENCHMARKS.md).
    let _defrag = matches!(backing, Backing::Huge(_))
        .then(|| SysctlGuard::set(THP_DEFRAG, "never", "huge page faults may compact"));
    let pin_method = match (backing, opts.pin) {
        (Backing::Small, PinMethod::Populate) => match pages::disable_thp() {
            Ok(()) => PinMethod::Populate,
            Err(e) => {
                warn!("{e}: pinning with madvise + mlock instead");
                PinMethod::Mlock
            }
        },
        (_, m) => m,
    };
    let mut limits = Limits::new(guest, floor);
    limits.page_size = page_size as u64;
    limits.batch_frames = opts.batch_frames;
    let mut cfg = VirtioBalloonConfig::new(limits);
    cfg.refuse = VirtioFeatures::PAGE_REPORTING;
    cfg.initial_stats = read_stats()?;
    // The transport calls IDs 5 and 13 both a balloon: the core checks the
    // ID the bus gives.
    let ids = pci::info(dev.address())?;
    let id = VirtioDeviceId::from_pci(ids.vendor, ids.device).ok_or(Error::NotVirtio {
        vendor: ids.vendor,
        device: ids.device,
    })?;
    let mut b: VirtioBalloon<LinuxHal, PciTransport, PinnedPage> =
        VirtioBalloon::new(transport, id, cfg)?;
    let can_oom = b.negotiated().contains(VirtioFeatures::DEFLATE_ON_OOM);
    info!(
        "guest RAM {} MiB, MemTotal {} MiB, floor {} MiB (+{} MiB margin), {:?} ({:?}), \
         interrupts {}, features {:?}",
        guest / MIB,
        total / MIB,
        floor / MIB,
        margin / MIB,
        backing,
        pin_method,
        if dev.irq().is_some() {
            "INTx"
        } else {
            "off (polling)"
        },
        b.negotiated()
    );
    println!("pvballoond: driving {}", dev.address());

    let mut poller = AdaptivePoller::new(
        Duration::ZERO,
        Duration::from_millis(1),
        opts.interval.max(Duration::from_millis(1)),
    );
    let mut avail = Available { bytes: 0, at: None };
    let mut shutdown: Option<Instant> = None;
    let mut oom_hold = false;
    let mut floor_hold = false;
    let mut warned_no_oom = false;
    let mut last_psi_deflate: Option<Instant> = None;
    let mut reported: Option<u64> = None;
    let mut spent = Spent::default();
    let mut stash: Vec<PinnedPage> = Vec::new();
    let mut interrupts: u64 = 0;
    let mut psi_ok = opts.psi_full_pct > 0.0;
    let mut psi_at: Option<Instant> = None;
    let mut psi_high = false;
    let frame_bytes = |frames: u64| frames * 4096;
    loop {
        if shutdown.is_none() && signal::stop_requested() {
            info!(
                "stop requested: deflating {} MiB",
                frame_bytes(b.status().held) / MIB
            );
            // Floor = all memory: the target becomes 0 and the plan
            // deflates everything, telling the device first.
            b.set_floor(b.limits().guest_frames)?;
            shutdown = Some(Instant::now());
        }
        let looked = Instant::now();
        let mut ev = Events::default();
        let mut work = false;
        if let Err(e) = b.poll(&mut |x| ev.on(x)) {
            if !e.needs_reset() {
                return Err(e.into());
            }
            error!("device fault ({e}): resetting the device; the balloon starts over");
            b.reset(&mut |x| ev.on(x))?;
            work = true;
        }
        if ev.stats_due {
            match read_stats() {
                Ok(s) => {
                    if let Err(e) = b.supply_stats(&s) {
                        warn!("stats: {e}");
                    }
                }
                Err(e) => warn!("stats: {e}"),
            }
        }
        let st = b.status();
        if let Some(t0) = shutdown {
            if st.held == 0 && st.inflating == 0 && st.deflating == 0 {
                pages::release(std::mem::take(&mut ev.released), page_size);
                info!("balloon empty");
                break;
            }
            if t0.elapsed() > SHUTDOWN_LIMIT {
                warn!(
                    "device did not take {} MiB back within {} s; resetting it",
                    frame_bytes(st.held + st.deflating) / MIB,
                    SHUTDOWN_LIMIT.as_secs()
                );
                b.reset(&mut |x| ev.on(x))?;
                pages::release(std::mem::take(&mut ev.released), page_size);
                break;
            }
        }
        let a = avail.get()?;
        if psi_ok && psi_at.is_none_or(|t| t.elapsed() >= PSI_EVERY) {
            psi_at = Some(Instant::now());
            match std::fs::read_to_string(PSI_MEMORY) {
                Ok(t) => {
                    psi_high = procfs::psi_full_avg10(&t).is_some_and(|v| v >= opts.psi_full_pct)
                }
                Err(e) => {
                    info!("{PSI_MEMORY}: {e}; using MemAvailable alone");
                    psi_ok = false;
                    psi_high = false;
                }
            }
        }
        let psi = shutdown.is_none() && psi_high;
        let low = shutdown.is_none() && a < floor;
        let psi_due = psi && last_psi_deflate.is_none_or(|t| t.elapsed() >= PSI_DEFLATE_EVERY);
        if (low || psi) && b.held_pages() > 0 {
            if !can_oom {
                if !warned_no_oom {
                    warn!(
                        "memory pressure (MemAvailable {} MiB) but the device did not offer \
                         DEFLATE_ON_OOM: not inflating further, pages stay until the host lowers the target",
                        a / MIB
                    );
                    warned_no_oom = true;
                }
                oom_hold = true;
            } else if low || psi_due {
                let want_bytes = if low {
                    (floor + margin).saturating_sub(a)
                } else {
                    page_size as u64 * b.limits().pages_per_batch() as u64
                };
                let want = want_bytes.div_ceil(page_size as u64) as usize;
                match b.oom_deflate(want.max(1), &mut |x| ev.on(x)) {
                    Ok(n) if n > 0 => {
                        if !oom_hold {
                            warn!(
                                "memory pressure (MemAvailable {} MiB, floor {} MiB{}): deflating",
                                a / MIB,
                                floor / MIB,
                                if psi { ", PSI" } else { "" }
                            );
                        }
                        oom_hold = true;
                        work = true;
                        if psi {
                            last_psi_deflate = Some(Instant::now());
                        }
                    }
                    Ok(_) | Err(BalloonError::Busy) => {}
                    Err(e) => warn!("deflate under pressure: {e}"),
                }
            }
        } else {
            if oom_hold && a >= floor + margin && !psi {
                info!(
                    "pressure over (MemAvailable {} MiB): {} MiB in the balloon, inflation allowed again",
                    a / MIB,
                    frame_bytes(b.status().held) / MIB
                );
                b.resume_inflate();
                oom_hold = false;
                warned_no_oom = false;
            }
            match b.plan() {
                Plan::Inflate { pages } if shutdown.is_none() && !oom_hold => {
                    // Pin ahead in chunks of up to STASH_PAGES (fewer, larger
                    // mlock calls), never beyond the target or the floor;
                    // the stash is already counted out of `avail`.
                    if stash.len() < pages {
                        let st = b.status();
                        let per = b.limits().frames_per_page();
                        let to_target =
                            (st.target.saturating_sub(st.held + st.inflating) / per) as usize;
                        let room = (a.saturating_sub(floor + margin) / page_size as u64) as usize;
                        let more = to_target
                            .min(STASH_PAGES.max(b.limits().pages_per_batch()))
                            .saturating_sub(stash.len())
                            .min(room);
                        if more > 0 {
                            let t = Instant::now();
                            match pages::pin(more, page_size, backing, pin_method) {
                                Ok(v) => {
                                    avail.took((v.len() * page_size) as u64);
                                    stash.extend(v);
                                }
                                Err(e) => {
                                    warn!("pinning {more} pages: {e}");
                                    avail.stale();
                                }
                            }
                            spent.pin += t.elapsed();
                        }
                    }
                    let n = pages.min(stash.len());
                    if n == 0 {
                        if !floor_hold {
                            info!(
                                "holding at {} MiB: MemAvailable {} MiB is at the floor ({} MiB + {} MiB margin)",
                                frame_bytes(b.status().held) / MIB,
                                a / MIB,
                                floor / MIB,
                                margin / MIB
                            );
                            floor_hold = true;
                        }
                    } else {
                        floor_hold = false;
                        let mut v: Vec<PinnedPage> = stash.drain(..n).collect();
                        let t = Instant::now();
                        match b.inflate(&mut v) {
                            Ok(_) => work = true,
                            Err(e) => {
                                warn!("inflate: {e}");
                                stash.append(&mut v);
                            }
                        }
                        spent.device += t.elapsed();
                    }
                }
                Plan::Deflate { pages } => match b.deflate(pages, &mut |x| ev.on(x)) {
                    Ok(n) => work |= n > 0,
                    Err(e) => warn!("deflate: {e}"),
                },
                _ => {}
            }
        }
        let st = b.status();
        let inflating = shutdown.is_none()
            && !oom_hold
            && !low
            && !psi
            && b.fault().is_none()
            && st.target > st.held + st.inflating;
        if !stash.is_empty() && !inflating {
            // The target moved, pressure or shutdown: unpin what was not
            // handed in.
            avail.gave((stash.len() * page_size) as u64);
            pages::release(std::mem::take(&mut stash), page_size);
        }
        if !ev.released.is_empty() {
            // The pages are free memory again: count them until the next
            // reading (else a deflate under pressure would see the old
            // figure and overshoot).
            let t = Instant::now();
            avail.gave((ev.released.len() * page_size) as u64);
            pages::release(std::mem::take(&mut ev.released), page_size);
            spent.release += t.elapsed();
            work = true;
        }
        let st = b.status();
        if shutdown.is_none()
            && !work
            && st.inflating == 0
            && st.deflating == 0
            && reported != Some(st.held)
        {
            info!(
                "balloon {} MiB (target {} MiB, host asked {} MiB); since the last report: \
                 {} ms in all: pinning {} ms, device {} ms, releasing {} ms",
                frame_bytes(st.held) / MIB,
                frame_bytes(st.target) / MIB,
                frame_bytes(st.requested) / MIB,
                spent.since.map_or(0, |t| t.elapsed().as_millis()),
                spent.pin.as_millis(),
                spent.device.as_millis(),
                spent.release.as_millis()
            );
            reported = Some(st.held);
            spent = Spent::default();
        }
        if work {
            spent.since.get_or_insert(looked);
            poller.busy();
        } else if let Some(irq) = dev.irq() {
            if let Some(sleep) = poller.spin_or_sleep() {
                // Unmask INTx and sleep until the device interrupts (a
                // config change: new target; a used buffer: a stats
                // request) or the poller's sleep ends: the floor and PSI
                // are still looked at on time, and a late or lost INTx
                // wake-up under TCG costs at most one sleep. A line still
                // raised from earlier completions fires at once: one
                // spurious look, then the ISR read below lowers it.
                irq.arm()?;
                let woken = pv_linux::poll::wait_readable(&[irq.fd()], sleep);
                if irq.take()?.is_some() {
                    interrupts += 1;
                }
                // Reading the ISR lowers the line; INTx stays masked (the
                // uio handler masked it) until the next arm. The status is
                // not needed: the next `poll` looks at everything.
                b.transport_mut().ack_interrupt();
                poller.woke(woken);
            }
        } else {
            poller.idle(&[]);
        }
    }
    pages::release(stash, page_size);
    let c = b.counters();
    info!(
        "inflated {} MiB, deflated {} MiB, {} deflates under pressure, {} stats reports, {} resets, \
         {} interrupts",
        frame_bytes(c.inflated_frames) / MIB,
        frame_bytes(c.deflated_frames) / MIB,
        c.oom_deflates,
        c.stats_posted,
        c.resets,
        interrupts
    );
    // Dropping the balloon resets the device before its queues are freed.
    drop(b);
    Ok(())
}
