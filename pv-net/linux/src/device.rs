//! The device side of `pvnetd`: claim the virtio-net PCI function, start
//! the core on it, set the TAP up after it, run the `Pump` and hand
//! everything back.

use std::time::Duration;

use log::{info, warn};
use pv_linux::dma::{self, LinuxHal};
use pv_linux::pci::{self, PciAddress, PciDevice};
use pv_linux::poll::AdaptivePoller;
use pv_linux::signal;
use pv_net::virtio::{VirtioNet, VirtioNetConfig};
use pv_net::{NetFrontend, RxRefill};
use virtio_drivers::transport::pci::PciTransport;

use crate::config::{Cli, Irq, TapCsum};
use crate::server::Pump;
use crate::tap::Tap;
use crate::{Error, Result};

/// Runs `pvnetd` until SIGTERM/SIGINT or a fatal error; the device is
/// handed back to the kernel either way.
pub fn run(cli: &Cli) -> Result<()> {
    signal::install()?;
    pv_linux::poll::set_min_timer_slack();
    dma::init(cli.hugepages, 1)?;
    let addr = pick_device(cli)?;
    let binding = match cli.irq {
        Irq::Intx => pci::Binding::UioPciGeneric,
        Irq::Off => pci::Binding::Unbound,
    };
    pci::serve_claimed(addr, binding, |dev| serve_device(cli, dev))
}

/// First virtio-net function with no `driver_override` (nobody claimed it).
fn pick_device(cli: &Cli) -> Result<PciAddress> {
    Ok(pci::pick_unclaimed(
        cli.pci.as_deref(),
        pci::VIRTIO_VENDOR,
        &pci::VIRTIO_NET_IDS,
        "virtio-net",
    )?)
}

fn serve_device(cli: &Cli, dev: &PciDevice) -> Result<()> {
    let transport = dev.virtio_transport()?;
    let cfg = VirtioNetConfig {
        queue_size: cli.queue_size,
        refill: RxRefill {
            low_water: cli.rx_low_water,
        },
        ..VirtioNetConfig::default()
    };
    let mut nic: VirtioNet<LinuxHal, PciTransport> =
        VirtioNet::new(transport, cfg).map_err(Error::Init)?;
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
    let tap = Tap::open(&cli.ifname, csum_offload)?;
    tap.set_mac(ni.mac)?;
    tap.set_mtu(ni.mtu)?;
    let link = nic.link_up();
    tap.set_carrier(link)?;
    if !cli.no_up {
        tap.set_up(true)?;
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
