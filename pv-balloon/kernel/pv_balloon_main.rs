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
//! The work is one `step`: poll the core, then follow the core's plan for
//! one buffer (pages from the page allocator for inflate; deflate hands
//! them back). Three things run it, all under the core's sleeping mutex in
//! process context (allocation with `GFP_KERNEL` is fine):
//! - the threaded handler of the device's INTx line, woken by a
//!   configuration change (new target) or a used buffer: the fast path;
//! - probe, once the handler is registered: a target set before that
//!   raised its interrupt with no handler to see it;
//! - a periodic poll ([`TICK_MS`], `pv_virtio_pci::Tick`): an interrupt
//!   that is lost anyway (an ISR read that consumed it, a level dropped on
//!   a shared line, a step that could not post its buffer, e.g. no memory
//!   for the pages) delays the balloon by one period instead of wedging it
//!   until the next interrupt, which might never come.
//!
//! `test_lose_irqs` (tests only) makes the handler acknowledge and ignore
//! that many interrupts, so the tests can prove the poll alone completes.

use core::ffi::c_void;
use core::pin::Pin;
use core::sync::atomic::{AtomicU32, Ordering};

use kernel::device::Core;
use kernel::irq::{self, IrqReturn, ThreadedHandler, ThreadedRegistration};
use kernel::page::Page;
use kernel::pci::{self, IrqType, IrqTypes};
use kernel::prelude::*;
use kernel::sync::Mutex;
use pv_balloon::{
    Event, GuestPage, Limits, Plan, VirtioBalloon, VirtioBalloonConfig, VirtioDeviceId,
};
use pv_virtio_pci::{KernelHal, PciTransport, Tick};
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
    /// The poll's first catch-up was logged.
    poll_noted: bool,
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

/// Period of the fallback poll.
const TICK_MS: u32 = 250;
/// Steps one poll may take while each makes progress (it catches up a
/// whole inflate or deflate without interrupts, one buffer per step).
const TICK_STEPS: u32 = 64;

/// One pass: take completions, then post at most one buffer. Returns
/// whether anything changed (a completion, a new target, a buffer posted).
fn step(shared: &mut Shared<'_>) -> bool {
    let before = shared.balloon.status();
    let posted = step_inner(shared);
    posted || shared.balloon.status() != before
}

fn step_inner(shared: &mut Shared<'_>) -> bool {
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
        return true;
    }
    match b.plan() {
        Plan::Inflate { pages } => {
            let mut v = alloc::vec::Vec::new();
            if v.try_reserve_exact(pages).is_err() {
                // No buffer posted, so no interrupt: the poll retries.
                return false;
            }
            for _ in 0..pages {
                match Page::alloc_page(GFP_KERNEL | __GFP_NOWARN) {
                    Ok(p) => v.push(KPage(p)),
                    Err(_) => break,
                }
            }
            if v.is_empty() {
                return false;
            }
            match b.inflate(&mut v) {
                Ok(n) => n > 0,
                Err(e) => {
                    pr_err!("pv_balloon: inflate {:?}\n", e);
                    false
                }
            }
            // Pages the core did not take drop here.
        }
        Plan::Deflate { pages } => match b.deflate(pages, &mut sink) {
            Ok(n) => n > 0,
            Err(e) => {
                pr_err!("pv_balloon: deflate {:?}\n", e);
                false
            }
        },
        Plan::Idle => {
            // Settled (nothing in flight, at the target): say so once per size.
            let st = b.status();
            if st.held == st.target && shared.reported != Some(st.held) {
                shared.reported = Some(st.held);
                pr_info!("pv_balloon: balloon at {} frames\n", st.held);
            }
            false
        }
    }
}

/// Interrupts the handler has ignored on purpose (`test_lose_irqs`).
static LOST_IRQS: AtomicU32 = AtomicU32::new(0);

impl ThreadedHandler for BalloonIrq<'_> {
    fn handle_threaded(&self) -> IrqReturn {
        let mut guard = self.balloon.lock();
        let isr = guard.balloon.transport_mut().ack_interrupt();
        if isr.is_empty() {
            return IrqReturn::None;
        }
        let lose = module_parameters::test_lose_irqs.value();
        if lose > 0 && LOST_IRQS.load(Ordering::Relaxed) < lose {
            LOST_IRQS.fetch_add(1, Ordering::Relaxed);
            return IrqReturn::Handled;
        }
        step(&mut guard);
        IrqReturn::Handled
    }
}

impl BalloonIrq<'_> {
    /// The fallback poll: steps while they make progress (bounded).
    fn poll(&self) {
        let mut guard = self.balloon.lock();
        let mut caught_up = false;
        for _ in 0..TICK_STEPS {
            if !step(&mut guard) {
                break;
            }
            caught_up = true;
        }
        if caught_up && !guard.poll_noted {
            guard.poll_noted = true;
            pr_info!(
                "pv_balloon: caught up by polling ({} interrupts ignored on purpose)\n",
                LOST_IRQS.load(Ordering::Relaxed)
            );
        }
    }
}

/// [`Tick`]'s call: `ctx` is the registered [`BalloonIrq`].
unsafe extern "C" fn balloon_tick(ctx: *const c_void) {
    // SAFETY: `ctx` is the handler inside the pinned `irq` registration of
    // the driver data; the `Tick` holding this call is dropped before it.
    let h = unsafe { &*ctx.cast::<BalloonIrq<'_>>() };
    h.poll();
}

#[pin_data]
struct BalloonData<'bound> {
    /// Dropped first: no poll runs after this.
    tick: Tick,
    /// Dropped next: no handler runs after this.
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
                            balloon <- kernel::new_mutex!(Shared { balloon, reported: None, poll_noted: false }),
                        }? Error),
                    )
                }
            },
            tick: {
                let h: &BalloonIrq<'bound> = irq.handler();
                // A target set before the handler was registered raised
                // an interrupt nobody saw: look now.
                h.poll();
                // SAFETY: `h` lives in the pinned `irq`, dropped after
                // `tick` (field order); `poll` locks what it touches.
                unsafe {
                    Tick::start(balloon_tick, core::ptr::from_ref(h).cast(), TICK_MS)?
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
        test_lose_irqs: u32 {
            default: 0,
            description: "Tests only: acknowledge and ignore this many interrupts",
        },
    },
}
