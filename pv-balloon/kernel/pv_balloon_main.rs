// SPDX-License-Identifier: GPL-2.0
//! `pv_balloon`: the pvdrivers virtio balloon as a Linux kernel module, on
//! the shared `no_std` balloon core (`pv-balloon`), the validated virtqueue
//! (`pv-virtq`) and our virtio-pci transport (`pv-kernel/virtio-pci`),
//! linked into this module as objects of their own (the harness's composite
//! build, tests/src/kernel/extmod.rs).
//!
//! Binding: only the device whose PCI id (`bus << 8 | devfn`) is the
//! `pci_dev_id` parameter; every other device stays with the C driver.
//! Unbind or `rmmod` resets the device, gives every page back, and the
//! device can be bound to `virtio-pci` again.
//!
//! Everything runs in the threaded handler of the device's INTx line: a
//! configuration change (new target) or a used buffer wakes it; it polls
//! the core, then follows the core's plan for one buffer (pages from the
//! page allocator for inflate; deflate hands them back). The next used
//! buffer wakes it again. Allocation with `GFP_KERNEL` is fine there (a
//! kernel thread, no spinlock held: the core sits in a sleeping mutex).

use core::pin::Pin;

use kernel::device::Core;
use kernel::irq::{self, IrqReturn, ThreadedHandler, ThreadedRegistration};
use kernel::page::Page;
use kernel::pci::{self, IrqType, IrqTypes};
use kernel::prelude::*;
use kernel::sync::Mutex;
use pv_balloon::{
    Event, GuestPage, Limits, Plan, VirtioBalloon, VirtioBalloonConfig, VirtioDeviceId,
};
use pv_virtio_pci::{KernelHal, PciTransport};
use virtio_drivers::transport::Transport as _;

extern "C" {
    // pv_mm.c: the kernel's inline page and memory counters.
    fn pv_page_to_phys(page: *mut core::ffi::c_void) -> u64;
    fn pv_totalram_bytes() -> u64;
}

/// A page of the balloon: from the page allocator, freed when dropped.
struct KPage(Page);

impl GuestPage for KPage {
    fn phys_addr(&self) -> u64 {
        // SAFETY: `as_ptr` is the live `struct page` this value owns.
        unsafe { pv_page_to_phys(self.0.as_ptr().cast()) }
    }
}

type Balloon<'a> = VirtioBalloon<KernelHal, PciTransport<'a>, KPage>;

/// The balloon, movable to the IRQ thread, and the size last reported.
struct Shared<'a> {
    balloon: Balloon<'a>,
    reported: Option<u64>,
}

// SAFETY: the raw pointers inside (the queues' DMA memory, the buffers
// shared with the device) name memory the balloon owns, not memory tied to
// a thread; the balloon is only ever used under the mutex below.
unsafe impl Send for Shared<'_> {}

#[pin_data]
struct BalloonIrq<'a> {
    #[pin]
    balloon: Mutex<Shared<'a>>,
}

/// One pass: take completions, then post at most one buffer.
fn step(shared: &mut Shared<'_>) {
    let b = &mut shared.balloon;
    let mut sink = |ev: Event<KPage>| {
        if let Event::Warning(w) = ev {
            pr_warn!("pv_balloon: {:?}\n", w);
        }
        // Released pages drop here: back to the page allocator.
    };
    if let Err(e) = b.poll(&mut sink) {
        pr_err!("pv_balloon: device fault {:?}; resetting\n", e);
        if let Err(e) = b.reset(&mut sink) {
            pr_err!("pv_balloon: reset failed {:?}\n", e);
        }
        return;
    }
    match b.plan() {
        Plan::Inflate { pages } => {
            let mut v = alloc::vec::Vec::new();
            if v.try_reserve_exact(pages).is_err() {
                return;
            }
            for _ in 0..pages {
                match Page::alloc_page(GFP_KERNEL | __GFP_NOWARN) {
                    Ok(p) => v.push(KPage(p)),
                    Err(_) => break,
                }
            }
            if !v.is_empty() {
                if let Err(e) = b.inflate(&mut v) {
                    pr_err!("pv_balloon: inflate {:?}\n", e);
                }
            }
            // Pages the core did not take drop here.
        }
        Plan::Deflate { pages } => {
            if let Err(e) = b.deflate(pages, &mut sink) {
                pr_err!("pv_balloon: deflate {:?}\n", e);
            }
        }
        Plan::Idle => {
            // Settled (nothing in flight, at the target): say so once per size.
            let st = b.status();
            if st.held == st.target && shared.reported != Some(st.held) {
                shared.reported = Some(st.held);
                pr_info!("pv_balloon: balloon at {} frames\n", st.held);
            }
        }
    }
}

impl ThreadedHandler for BalloonIrq<'_> {
    fn handle_threaded(&self) -> IrqReturn {
        let mut guard = self.balloon.lock();
        let isr = guard.balloon.transport_mut().ack_interrupt();
        if isr.is_empty() {
            return IrqReturn::None;
        }
        step(&mut guard);
        IrqReturn::Handled
    }
}

#[pin_data]
struct BalloonData<'bound> {
    /// Dropped first: no handler runs after this.
    #[pin]
    irq: ThreadedRegistration<'bound, BalloonIrq<'bound>>,
    vectors: Pin<KBox<pci::IrqVectorRegistration<'bound>>>,
}

struct PvBalloonDriver;

kernel::pci_device_table!(
    PCI_TABLE,
    <PvBalloonDriver as pci::Driver>::IdInfo,
    [
        (pci::DeviceId::from_id(pci::Vendor::REDHAT_QUMRANET, 0x1002), ()),
        (pci::DeviceId::from_id(pci::Vendor::REDHAT_QUMRANET, 0x1045), ())
    ]
);

impl pci::Driver for PvBalloonDriver {
    type IdInfo = ();
    type Data<'bound> = BalloonData<'bound>;
    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        let wanted = module_parameters::pci_dev_id.value();
        try_pin_init!(BalloonData {
            vectors: {
                if u32::from(pdev.dev_id()) != wanted {
                    return Err(ENODEV);
                }
                pdev.enable_device_mem()?;
                pdev.set_master();
                KBox::pin(pdev.alloc_irq_vectors(1, 1, IrqTypes::default().with(IrqType::Intx))?, GFP_KERNEL)?
            },
            irq <- {
                let transport = PciTransport::new(pdev, c"pv_balloon")?;
                // SAFETY: reads a counter; no arguments.
                let total = unsafe { pv_totalram_bytes() };
                let limits = Limits::new(total, total / 4);
                // The core refuses any virtio device but the traditional
                // balloon (ID 5), whatever the PCI table matched.
                let id = VirtioDeviceId::from_pci(pdev.vendor_id().as_raw(), pdev.device_id())
                    .ok_or(ENODEV)?;
                let balloon = Balloon::new(transport, id, VirtioBalloonConfig::new(limits))
                    .map_err(|_| EIO)?;
                // SAFETY: the registration lives in `vectors`, a pinned box
                // dropped after `irq` (field order), so the request outlives
                // no vector.
                let vectors: &'bound pci::IrqVectorRegistration<'bound> =
                    unsafe { &*core::ptr::from_ref(&**vectors) };
                let request = vectors.index(0)?.into();
                dev_info!(pdev, "pv_balloon: bound\n");
                // SAFETY: the registration is dropped with the driver data.
                unsafe {
                    ThreadedRegistration::new(
                        request,
                        irq::Flags::SHARED | irq::Flags::ONESHOT,
                        c"pv_balloon",
                        try_pin_init!(BalloonIrq {
                            balloon <- kernel::new_mutex!(Shared { balloon, reported: None }),
                        }? Error),
                    )
                }
            },
        }? Error)
    }
}

kernel::module_pci_driver! {
    type: PvBalloonDriver,
    name: "pv_balloon",
    authors: ["pvdrivers"],
    description: "pvdrivers virtio balloon on the shared Rust balloon core",
    license: "GPL",
    params: {
        pci_dev_id: u32 {
            default: 0xffff_ffff,
            description: "PCI id (bus << 8 | devfn) of the one balloon to bind",
        },
    },
}
