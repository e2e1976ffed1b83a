//! The device side of `pvblkd`: claim the virtio-blk PCI function, start the
//! core on it, serve it through the chosen export, flush it and give it
//! back.

use std::time::{Duration, Instant};

use log::{info, warn};
use pv_blk::virtio::{VirtioBlk, VirtioBlkConfig};
use pv_blk::{BlockFrontend, SECTOR_SIZE};
use pv_linux::dma;
use pv_linux::pci::{self, PciAddress, PciDevice};
use pv_linux::signal;

use crate::config::{Cli, Export, Irq};
use crate::server::Blk;
use crate::{nbd, ublk, Error, Result};

/// Runs `pvblkd` until SIGTERM/SIGINT or a fatal error; the device is
/// handed back to the kernel either way.
pub fn run(cli: &Cli) -> Result<()> {
    pv_linux::poll::set_min_timer_slack();
    set_nice(cli.nice);
    if let Some(cpu) = cli.cpu {
        set_cpu(cpu)?;
    }
    signal::install()?;
    dma::init(cli.hugepages, 1)?;
    let addr = pick_device(cli)?;
    let binding = match cli.irq {
        Irq::Intx => pci::Binding::UioPciGeneric,
        Irq::Off => pci::Binding::Unbound,
    };
    pci::serve_claimed(addr, binding, |dev| serve_device(cli, dev))
}

/// `--pci`, or the first virtio-blk function nobody claimed.
fn pick_device(cli: &Cli) -> Result<PciAddress> {
    Ok(pci::pick_unclaimed(
        cli.pci.as_deref(),
        pci::VIRTIO_VENDOR,
        &pci::VIRTIO_BLK_IDS,
        "virtio-blk",
    )?)
}

/// Resolves `--export auto` (loading ublk_drv if it is a module).
fn choose_export(asked: Export) -> Export {
    if asked != Export::Auto {
        info!("export: {asked:?} (asked)");
        return asked;
    }
    if !ublk::available() {
        let _ = std::process::Command::new("modprobe")
            .arg("ublk_drv")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let chosen = if ublk::available() {
        Export::Ublk
    } else {
        Export::Nbd
    };
    info!(
        "export: {chosen:?} ({} {})",
        ublk::CONTROL,
        if chosen == Export::Ublk {
            "present"
        } else {
            "absent"
        }
    );
    chosen
}

fn serve_device(cli: &Cli, dev: &PciDevice) -> Result<()> {
    let transport = dev.virtio_transport()?;
    let cfg = VirtioBlkConfig {
        queue_size: cli.queue_size,
        ..VirtioBlkConfig::default()
    };
    let mut blk: Blk = VirtioBlk::new(transport, cfg).map_err(Error::Init)?;
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
    let served = if choose_export(cli.export) == Export::Ublk {
        ublk::server::serve(cli, &mut blk, dev.irq(), bs)
    } else {
        nbd::server::serve(cli, &mut blk, dev, bs)
    };
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
fn set_cpu(cpu: usize) -> Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(Error::CpuOutOfRange(cpu));
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
        return Err(Error::last_os("--cpu: sched_setaffinity"));
    }
    info!("pinned to CPU {cpu}");
    Ok(())
}

/// Flush the device cache and wait (bounded) for the answer.
fn flush_device(blk: &mut Blk) -> Result<()> {
    if !blk.info().features.flush || blk.fault().is_some() {
        return Ok(());
    }
    let tok = blk.flush().map_err(Error::Flush)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut result = None;
    while result.is_none() {
        blk.poll_completions(&mut |t, r| {
            if t == tok {
                result = Some(r);
            }
        })
        .map_err(Error::Flush)?;
        if Instant::now() > deadline {
            return Err(Error::FlushTimeout);
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    match result {
        Some(Ok(_)) => {
            info!("device cache flushed");
            Ok(())
        }
        Some(Err(e)) => Err(Error::Flush(e)),
        None => Ok(()),
    }
}
