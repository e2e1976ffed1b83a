//! The WDM driver: entry points, PnP/power dispatch, device start and
//! stop, the interrupt (ISR and DPC), kernel pages, and the worker thread
//! that runs [`crate::step`].
//!
//! Threading: PnP IRPs for one device arrive one at a time (the PnP
//! manager serialises them), and so do device power IRPs; both run at
//! `PASSIVE_LEVEL` (`DO_POWER_PAGABLE`). The balloon is created when the
//! device enters D0 (start, or power-up), then touched only by the worker
//! thread until [`power_down`] has joined that thread. The ISR (at the
//! line's DIRQL) and the DPC (at `DISPATCH_LEVEL`) touch only [`Shared`]:
//! the ISR status byte, an atomic of pending ISR bits, the DPC and the
//! wake event.
//!
//! Interrupts: the line PnP assigned (the translated resource list of
//! `IRP_MN_START_DEVICE`) is connected with `IoConnectInterruptEx`
//! (`CONNECT_FULLY_SPECIFIED`). The ISR reads the virtio ISR status byte
//! (read-to-clear, which de-asserts the line); zero means another device
//! on a shared line interrupted, and a value with bits other than
//! "queue" (1) and "config change" (2) means the device is gone (reads
//! all-ones), so neither is claimed. Otherwise it records the bits and
//! queues the DPC, which sets the wake event; the worker wakes, polls the
//! queues and re-reads the target. Without an interrupt resource (or a
//! message-signalled one: the INF does not opt into MSI, so Windows gives
//! a line), the worker polls every [`TICK_MS`] and says so in the log.
//!
//! Power: D0 → D1/D2/D3 joins the worker, drops the balloon (the device is
//! reset, every page goes back to the kernel) and disconnects the
//! interrupt before the IRP goes down; D3 → D0 goes down first (the bus
//! driver powers the function), then rebuilds the queues and the balloon
//! from the saved config snapshot and resources, and the host's target is
//! inflated to again. See `README.md`, "Power", for why pages are given
//! back rather than kept.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use pv_balloon::{
    GuestPage, MemStats, VirtioBalloon, VirtioBalloonConfig, VirtioDeviceId, FRAME_SIZE,
};
use pv_windows::ffi::{self, DEVICE_OBJECT, DRIVER_OBJECT, IRP, KDPC, KEVENT, NTSTATUS};
use pv_windows::hal::{self, KernelHal};
use pv_windows::pci::{self, Interrupt, Ranges, SnapshotConfig, CONFIG_BYTES};
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::kstats;
use crate::step::{self, Kernel};

/// Worker period when no interrupt is connected: how often the balloon
/// polls the device (see the module docs).
const TICK_MS: i64 = 100;
/// Most rounds per tick while rounds make progress.
const ROUNDS_PER_TICK: usize = 64;

type Balloon = VirtioBalloon<KernelHal, KTransport, MdlPage>;

/// virtio-drivers' PCI transport, except that it can be dropped after a
/// surprise removal: `PciTransport`'s own drop resets the device and spins
/// until the status reads 0, which a function that is gone (reads
/// all-ones) never does. Once [`KTransport::gone`] is set, dropping skips
/// that (the transport owns nothing but pointers into our BAR mappings).
struct KTransport {
    pci: ManuallyDrop<PciTransport>,
    gone: bool,
}

impl Drop for KTransport {
    fn drop(&mut self) {
        if !self.gone {
            // SAFETY: dropped once, here; never used again.
            unsafe { ManuallyDrop::drop(&mut self.pci) };
        }
    }
}

impl Transport for KTransport {
    fn device_type(&self) -> DeviceType {
        self.pci.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.pci.read_device_features()
    }
    fn write_driver_features(&mut self, f: u64) {
        self.pci.write_driver_features(f)
    }
    fn max_queue_size(&mut self, q: u16) -> u32 {
        self.pci.max_queue_size(q)
    }
    fn notify(&mut self, q: u16) {
        self.pci.notify(q)
    }
    fn get_status(&self) -> DeviceStatus {
        self.pci.get_status()
    }
    fn set_status(&mut self, s: DeviceStatus) {
        self.pci.set_status(s)
    }
    fn set_guest_page_size(&mut self, n: u32) {
        self.pci.set_guest_page_size(n)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.pci.requires_legacy_layout()
    }
    fn queue_set(&mut self, q: u16, n: u32, d: PhysAddr, a: PhysAddr, u: PhysAddr) {
        self.pci.queue_set(q, n, d, a, u)
    }
    fn queue_unset(&mut self, q: u16) {
        self.pci.queue_unset(q)
    }
    fn queue_used(&mut self, q: u16) -> bool {
        self.pci.queue_used(q)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.pci.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.pci.read_config_generation()
    }
    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        self.pci.read_config_space(offset)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        self.pci.write_config_space(offset, value)
    }
}

/// One 4 KiB page from `MmAllocatePagesForMdlEx`, in an MDL of its own so
/// it can go back alone; dropping it frees page and MDL.
#[derive(Debug)]
pub struct MdlPage {
    mdl: NonNull<ffi::MDL>,
    phys: u64,
}

impl GuestPage for MdlPage {
    fn phys_addr(&self) -> u64 {
        self.phys
    }
}

impl Drop for MdlPage {
    fn drop(&mut self) {
        // SAFETY: the MDL came from MmAllocatePagesForMdlEx and is freed
        // once, here: its pages with MmFreePagesFromMdl, the MDL itself with
        // ExFreePool (what the function's documentation prescribes).
        unsafe {
            ffi::MmFreePagesFromMdl(self.mdl.as_ptr());
            ffi::ExFreePool(self.mdl.as_ptr().cast());
        }
    }
}

/// The kernel as [`step::Kernel`].
struct WinKernel;

fn query(class: u32, buf: &mut [u8]) -> bool {
    let mut got = 0u32;
    // SAFETY: `buf` is writable for its length, which is what we pass.
    let st = unsafe {
        ffi::ZwQuerySystemInformation(class, buf.as_mut_ptr().cast(), buf.len() as u32, &mut got)
    };
    ffi::nt_success(st)
}

impl WinKernel {
    fn figures() -> ([u8; kstats::BASIC_BYTES], [u8; kstats::PERF_BYTES]) {
        let mut basic = [0u8; kstats::BASIC_BYTES];
        let mut perf = [0u8; kstats::PERF_BYTES];
        if !query(ffi::SYSTEM_BASIC_INFORMATION, &mut basic) {
            basic = [0; kstats::BASIC_BYTES];
        }
        if !query(ffi::SYSTEM_PERFORMANCE_INFORMATION, &mut perf) {
            perf = [0; kstats::PERF_BYTES];
        }
        (basic, perf)
    }
}

impl Kernel for WinKernel {
    type Page = MdlPage;

    fn alloc_pages(&mut self, n: usize) -> Vec<MdlPage> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            // SAFETY: plain allocation call; null when memory is short.
            let mdl = unsafe {
                ffi::MmAllocatePagesForMdlEx(
                    0,
                    -1,
                    0,
                    FRAME_SIZE as usize,
                    ffi::MM_CACHED,
                    ffi::MM_DONT_ZERO_ALLOCATION | ffi::MM_ALLOCATE_FULLY_REQUIRED,
                )
            };
            let Some(mdl) = NonNull::new(mdl) else { break };
            // SAFETY: a non-null MDL from the call above describes exactly
            // one page (MM_ALLOCATE_FULLY_REQUIRED); its PFN follows it.
            let pfn = unsafe { *ffi::mdl_pfns(mdl.as_ptr()) };
            v.push(MdlPage {
                mdl,
                phys: pfn * FRAME_SIZE,
            });
        }
        v
    }

    fn stats(&mut self) -> MemStats {
        let (basic, perf) = Self::figures();
        kstats::mem_stats(&basic, &perf)
    }
}

/// A BAR mapped with `MmMapIoSpaceEx`.
#[derive(Debug)]
struct BarMap {
    raw: u64,
    virt: *mut c_void,
    len: usize,
}

/// What the ISR and the DPC share with the worker. Lives in the worker's
/// box (non-paged pool); its address is the ISR's and the DPC's context.
#[repr(C)]
struct Shared {
    /// Synchronization event: the DPC (and stop) set it, the worker waits.
    wake: KEVENT,
    dpc: KDPC,
    /// The ISR status byte in a BAR mapping (null: no interrupt).
    isr: *mut u8,
    /// ISR bits the worker has not seen yet.
    pending: AtomicU8,
    /// Set by [`power_down`] before it sets `wake`: the worker exits.
    stop: AtomicBool,
}

/// What runs while the device is in D0.
#[repr(C)]
struct Worker {
    shared: Shared,
    balloon: Option<Balloon>,
    /// No interrupt connected: wait with a timeout of [`TICK_MS`].
    polled: bool,
}

/// What the start IRP gave, kept from start to stop for each power-up:
/// the mappings, the config snapshot and the interrupt resource.
struct Hardware {
    config: [u8; CONFIG_BYTES],
    ranges: Ranges,
    irq: Option<Interrupt>,
    maps: Vec<BarMap>,
}

impl Drop for Hardware {
    fn drop(&mut self) {
        for m in self.maps.drain(..) {
            hal::unregister_mmio(m.virt);
            // SAFETY: the mapping came from MmMapIoSpaceEx with this
            // length; the balloon that used it is gone (power_down runs
            // before the hardware is dropped).
            unsafe { ffi::MmUnmapIoSpace(m.virt, m.len) };
        }
    }
}

/// The device extension. `repr(C)`, `lower` first: the emulation harness
/// reads it there.
#[repr(C)]
struct Ext {
    lower: *mut DEVICE_OBJECT,
    pdo: *mut DEVICE_OBJECT,
    hw: Option<Box<Hardware>>,
    worker: Option<Box<Worker>>,
    thread: *mut c_void,
    /// The `KINTERRUPT` (null: none connected).
    interrupt: *mut c_void,
}

/// # Safety
///
/// `dev` is our FDO, whose extension `add_device` initialised.
unsafe fn ext(dev: *mut DEVICE_OBJECT) -> *mut Ext {
    // SAFETY: the caller's contract.
    unsafe { (*dev).DeviceExtension.cast() }
}

/// The ISR (`KSERVICE_ROUTINE`), at the line's DIRQL.
unsafe extern "system" fn isr(_interrupt: *mut c_void, ctx: *mut c_void) -> u8 {
    // Raw pointers only: the kernel writes the event and the DPC while
    // this runs, so no reference to the whole `Shared` is made.
    let s = ctx.cast::<Shared>();
    // SAFETY: `ctx` is the worker's `Shared`, which outlives the
    // connection (power_down disconnects before freeing it); `isr` was
    // set before the connection and points at the ISR status byte in a
    // mapping that outlives it too. A device register, read once (reading
    // clears it).
    let bits = unsafe { ptr::read_volatile((*s).isr) };
    if !pci::isr_is_ours(bits) {
        // Not ours (shared line), or the function is gone (all-ones).
        return 0;
    }
    // SAFETY: as above; an atomic, shared by design.
    unsafe { (*ptr::addr_of!((*s).pending)).fetch_or(bits, Ordering::AcqRel) };
    // SAFETY: the DPC was initialised with KeInitializeDpc; queuing an
    // already queued DPC is a no-op (its bits are in `pending`).
    unsafe {
        ffi::KeInsertQueueDpc(
            ptr::addr_of_mut!((*s).dpc),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    1
}

/// The DPC (`KDEFERRED_ROUTINE`), at `DISPATCH_LEVEL`: wake the worker.
unsafe extern "system" fn dpc(
    _dpc: *mut KDPC,
    ctx: *mut c_void,
    _a1: *mut c_void,
    _a2: *mut c_void,
) {
    // SAFETY: `ctx` is the worker's `Shared`; power_down flushes queued
    // DPCs (KeFlushQueuedDpcs) before freeing it. KeSetEvent with
    // Wait = FALSE may run at DISPATCH_LEVEL.
    unsafe { ffi::KeSetEvent(ptr::addr_of_mut!((*ctx.cast::<Shared>()).wake), 0, 0) };
}

unsafe extern "system" fn worker_main(ctx: *mut c_void) {
    let w = ctx.cast::<Worker>();
    let mut k = WinKernel;
    loop {
        let mut tick: i64 = -(TICK_MS * 10_000);
        // SAFETY: the worker box outlives this thread (power_down joins
        // the thread before dropping it); only this thread reads `polled`.
        let timeout = if unsafe { (*w).polled } {
            &mut tick as *mut i64
        } else {
            ptr::null_mut()
        };
        // SAFETY: as above; the event is initialised.
        unsafe {
            ffi::KeWaitForSingleObject(
                ptr::addr_of_mut!((*w).shared.wake).cast(),
                ffi::EXECUTIVE,
                ffi::KERNEL_MODE,
                0,
                timeout,
            );
        }
        // SAFETY: as above; the atomics of `shared` are reached through
        // raw pointers (the kernel writes the event and DPC beside them).
        let (stop, pending) = unsafe {
            (
                &*ptr::addr_of!((*w).shared.stop),
                &*ptr::addr_of!((*w).shared.pending),
            )
        };
        if stop.load(Ordering::Acquire) {
            break;
        }
        let bits = pending.swap(0, Ordering::AcqRel);
        // SAFETY: only this thread touches the balloon while it runs.
        let (Some(b), polled) = (unsafe { ((*w).balloon.as_mut(), (*w).polled) }) else {
            continue;
        };
        if polled {
            // No ISR reads it: acknowledge here, so a level-triggered line
            // the device raised does not stay asserted.
            b.transport_mut().ack_interrupt();
        }
        if bits & pci::ISR_CONFIG != 0 {
            log::info!("virtio-balloon: config change");
        }
        for _ in 0..ROUNDS_PER_TICK {
            match step::round(b, &mut k) {
                Ok(r) if r.progressed() => {}
                Ok(_) => break,
                Err(e) => {
                    log::error!("virtio-balloon stopped: {e}");
                    break;
                }
            }
        }
    }
    // SAFETY: ends this system thread; nothing of ours runs after it.
    unsafe { ffi::PsTerminateSystemThread(ffi::STATUS_SUCCESS) };
}

/// Read the function's config space from the PCI driver below
/// (`IRP_MN_READ_CONFIG`, at `PASSIVE_LEVEL`).
///
/// # Safety
///
/// `lower` is the next device in our stack.
unsafe fn read_config(lower: *mut DEVICE_OBJECT) -> Result<[u8; CONFIG_BYTES], NTSTATUS> {
    let mut buf = [0u8; CONFIG_BYTES];
    let mut event = KEVENT::zeroed();
    let mut iosb = ffi::IO_STATUS_BLOCK {
        Status: 0,
        Information: 0,
    };
    // SAFETY: the event, the status block and the buffer live on this
    // stack until the IRP completes (we wait for it below); kernel-mode
    // waits keep the stack resident.
    unsafe {
        ffi::KeInitializeEvent(&mut event, ffi::NOTIFICATION_EVENT, 0);
        let irp = ffi::IoBuildSynchronousFsdRequest(
            ffi::IRP_MJ_PNP as u32,
            lower,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            &mut event,
            &mut iosb,
        );
        if irp.is_null() {
            return Err(ffi::STATUS_INSUFFICIENT_RESOURCES);
        }
        // PnP IRPs start out "not supported" (wdm.h rule for senders).
        (*irp).IoStatus.Status = ffi::STATUS_NOT_SUPPORTED as isize;
        let sl = ffi::next_stack(irp);
        (*sl).MinorFunction = ffi::pnp::READ_CONFIG;
        (*sl).set_read_config(buf.as_mut_ptr(), 0, CONFIG_BYTES as u32);
        let mut st = ffi::IofCallDriver(lower, irp);
        if st == ffi::STATUS_PENDING {
            ffi::KeWaitForSingleObject(
                ptr::addr_of_mut!(event).cast(),
                ffi::EXECUTIVE,
                ffi::KERNEL_MODE,
                0,
                ptr::null_mut(),
            );
            st = iosb.Status as NTSTATUS;
        }
        if !ffi::nt_success(st) {
            return Err(st);
        }
    }
    Ok(buf)
}

/// The bytes of a `CM_RESOURCE_LIST` at `p`.
///
/// # Safety
///
/// `p` is a resource list the PnP manager handed us in this start IRP.
unsafe fn resource_list<'a>(p: *const u8) -> Result<&'a [u8], NTSTATUS> {
    if p.is_null() {
        return Err(ffi::STATUS_DEVICE_CONFIGURATION_ERROR);
    }
    // SAFETY: the kernel's list is valid for the length its own counts
    // give; `resource_list_len` reads only within that length.
    let len =
        pci::resource_list_len(|off| unsafe { ptr::read_unaligned(p.add(off).cast::<u32>()) })
            .map_err(|_| ffi::STATUS_DEVICE_CONFIGURATION_ERROR)?;
    // SAFETY: as above: `len` bytes from `p` are the list.
    Ok(unsafe { core::slice::from_raw_parts(p, len) })
}

/// Take the resources of a start IRP: map the BARs, read config space,
/// keep the interrupt resource. The device is not touched.
///
/// # Safety
///
/// `lower` is the device below us; `stack` the start IRP's current stack
/// location, at `PASSIVE_LEVEL`.
unsafe fn take_hardware(
    lower: *mut DEVICE_OBJECT,
    stack: *const ffi::IO_STACK_LOCATION,
) -> Result<Box<Hardware>, NTSTATUS> {
    // SAFETY: the start IRP's resource lists.
    let (raw, translated) = unsafe {
        (
            resource_list((*stack).start_raw_resources())?,
            resource_list((*stack).start_translated_resources())?,
        )
    };
    let parsed = pci::parse_resources(raw, translated)
        .and_then(|r| pci::parse_interrupt(translated).map(|i| (r, i)));
    let (ranges, irq) = match parsed {
        Ok(p) => p,
        Err(err) => {
            log::error!("virtio-balloon: resources: {err}");
            return Err(ffi::STATUS_DEVICE_CONFIGURATION_ERROR);
        }
    };
    // SAFETY: `lower` is the device below us.
    let config = unsafe { read_config(lower)? };
    // Dropping `hw` on an error below unmaps what was mapped.
    let mut hw = Box::new(Hardware {
        config,
        ranges,
        irq,
        maps: Vec::new(),
    });
    for r in ranges.as_slice() {
        let Ok(len) = usize::try_from(r.len) else {
            return Err(ffi::STATUS_DEVICE_CONFIGURATION_ERROR);
        };
        // SAFETY: the range is device memory PnP assigned to this function.
        let virt =
            unsafe { ffi::MmMapIoSpaceEx(r.translated as i64, len, ffi::PAGE_READWRITE_NOCACHE) };
        if virt.is_null() {
            return Err(ffi::STATUS_INSUFFICIENT_RESOURCES);
        }
        hw.maps.push(BarMap {
            raw: r.raw,
            virt,
            len,
        });
        // virtio-drivers asks by bus address (what the BAR holds).
        if !hal::register_mmio(r.raw, r.len, virt) {
            return Err(ffi::STATUS_INSUFFICIENT_RESOURCES);
        }
    }
    Ok(hw)
}

/// One function per snapshot: its bus address does not matter.
const FUNCTION: DeviceFunction = DeviceFunction {
    bus: 0,
    device: 0,
    function: 0,
};

/// The ISR status byte's address in our mappings, from the virtio ISR
/// capability of the snapshot.
fn isr_register(hw: &Hardware, snap: &SnapshotConfig) -> Option<*mut u8> {
    let (bar, offset) = pci::virtio_isr(&hw.config)?;
    let range = snap.bar(usize::from(bar))?;
    let map = hw.maps.iter().find(|m| m.raw == range.raw)?;
    let offset = usize::try_from(offset).ok().filter(|&o| o < map.len)?;
    Some(map.virt.cast::<u8>().wrapping_add(offset))
}

/// Enter D0 with the device: transport, balloon, interrupt, worker.
///
/// # Safety
///
/// `dev` is our FDO with its hardware taken, at `PASSIVE_LEVEL`, the
/// device powered (D0) and no worker running.
unsafe fn power_up(dev: *mut DEVICE_OBJECT) -> NTSTATUS {
    // SAFETY: the caller's contract.
    let e = unsafe { &mut *ext(dev) };
    let Some(hw) = e.hw.as_deref() else {
        return ffi::STATUS_UNSUCCESSFUL;
    };
    if e.worker.is_some() {
        return ffi::STATUS_SUCCESS;
    }
    let snap = SnapshotConfig::new(FUNCTION, hw.config, hw.ranges.as_slice());
    let isr_at = isr_register(hw, &snap);
    let mut root = PciRoot::new(snap);
    let transport = match PciTransport::new::<KernelHal, _>(&mut root, FUNCTION) {
        Ok(t) => KTransport {
            pci: ManuallyDrop::new(t),
            gone: false,
        },
        Err(err) => {
            log::error!("virtio-balloon: not a virtio PCI device: {err}");
            return ffi::STATUS_DEVICE_CONFIGURATION_ERROR;
        }
    };
    let (basic, perf) = WinKernel::figures();
    let Some(total) = kstats::total_bytes(&basic) else {
        return ffi::STATUS_UNSUCCESSFUL;
    };
    let mut cfg = VirtioBalloonConfig::new(kstats::limits(total));
    cfg.initial_stats = kstats::mem_stats(&basic, &perf);
    // The transport calls IDs 5 and 13 both a balloon: the core checks the
    // ID config space gives (a function that is no virtio device at all was
    // refused by the transport above).
    let id = VirtioDeviceId::from_pci(
        u16::from_le_bytes([hw.config[0], hw.config[1]]),
        u16::from_le_bytes([hw.config[2], hw.config[3]]),
    )
    .unwrap_or(VirtioDeviceId(0));
    let balloon = match Balloon::new(transport, id, cfg) {
        Ok(b) => b,
        Err(err) => {
            log::error!("virtio-balloon: bring-up: {err}");
            return ffi::STATUS_DEVICE_CONFIGURATION_ERROR;
        }
    };
    // The ISR register, when the interrupt can be connected (set before the
    // ISR's context pointer is taken below, and never written again).
    let isr_reg = match (hw.irq, isr_at) {
        (Some(irq), Some(at)) if !irq.message => at,
        _ => ptr::null_mut(),
    };
    let mut w = Box::new(Worker {
        shared: Shared {
            wake: KEVENT::zeroed(),
            dpc: KDPC::zeroed(),
            isr: isr_reg,
            pending: AtomicU8::new(0),
            stop: AtomicBool::new(false),
        },
        balloon: Some(balloon),
        polled: true,
    });
    let s: *mut Shared = &mut w.shared;
    // SAFETY: `s` is in the box, whose address does not change when the
    // box moves into the extension. The event starts signalled: the worker
    // runs a first round at once (an edge the device raised before the
    // interrupt was connected is not lost).
    unsafe {
        ffi::KeInitializeEvent(ptr::addr_of_mut!((*s).wake), ffi::SYNCHRONIZATION_EVENT, 1);
        ffi::KeInitializeDpc(ptr::addr_of_mut!((*s).dpc), dpc, s.cast());
    }
    match (hw.irq, isr_at) {
        (Some(irq), Some(_)) if !irq.message => {
            // SAFETY: the ISR's context (`s`) and the ISR register outlive
            // the connection (power_down disconnects first).
            match unsafe { connect(e.pdo, &irq, s) } {
                Ok(i) => {
                    e.interrupt = i;
                    w.polled = false;
                    log::info!(
                        "virtio-balloon: interrupt vector {:#x} IRQL {} ({}, {})",
                        irq.vector,
                        irq.irql,
                        if irq.latched { "latched" } else { "level" },
                        if irq.shared { "shared" } else { "exclusive" }
                    );
                }
                Err(st) => log::warn!(
                    "virtio-balloon: IoConnectInterruptEx failed ({st:#x}): polling every {TICK_MS} ms"
                ),
            }
        }
        (Some(irq), _) if irq.message => log::warn!(
            "virtio-balloon: message-signalled interrupt not supported: polling every {TICK_MS} ms"
        ),
        (Some(_), None) => log::warn!(
            "virtio-balloon: no virtio ISR capability in a mapped BAR: polling every {TICK_MS} ms"
        ),
        _ => {
            log::warn!("virtio-balloon: no interrupt resource assigned: polling every {TICK_MS} ms")
        }
    }
    let mut attrs = ffi::OBJECT_ATTRIBUTES {
        Length: core::mem::size_of::<ffi::OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: ptr::null_mut(),
        ObjectName: ptr::null_mut(),
        Attributes: ffi::OBJ_KERNEL_HANDLE,
        SecurityDescriptor: ptr::null_mut(),
        SecurityQualityOfService: ptr::null_mut(),
    };
    let wp: *mut Worker = &mut *w;
    let mut thread = ptr::null_mut();
    // SAFETY: the thread gets the box's address; power_down joins the
    // thread before the box is dropped.
    let st = unsafe {
        ffi::PsCreateSystemThread(
            &mut thread,
            ffi::THREAD_ALL_ACCESS,
            &mut attrs,
            ptr::null_mut(),
            ptr::null_mut(),
            worker_main,
            wp.cast(),
        )
    };
    e.worker = Some(w);
    if !ffi::nt_success(st) {
        // SAFETY: no worker thread; power_down drops the balloon and
        // disconnects the interrupt.
        unsafe { power_down(dev, false) };
        return st;
    }
    e.thread = thread;
    log::info!("virtio-balloon in D0: {} MiB of guest memory", total >> 20);
    ffi::STATUS_SUCCESS
}

/// Connect `irq` (a translated line resource) to [`isr`] with `ctx`.
///
/// # Safety
///
/// `pdo` is our PDO; `ctx` outlives the connection.
unsafe fn connect(
    pdo: *mut DEVICE_OBJECT,
    irq: &Interrupt,
    ctx: *mut Shared,
) -> Result<*mut c_void, NTSTATUS> {
    let mut object = ptr::null_mut();
    let mut p = ffi::IO_CONNECT_INTERRUPT_PARAMETERS {
        Version: ffi::CONNECT_FULLY_SPECIFIED,
        FullySpecified: ffi::IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS {
            PhysicalDeviceObject: pdo,
            InterruptObject: &mut object,
            ServiceRoutine: Some(isr),
            ServiceContext: ctx.cast(),
            SpinLock: ptr::null_mut(),
            SynchronizeIrql: irq.irql,
            FloatingSave: 0,
            ShareVector: u8::from(irq.shared),
            Vector: irq.vector,
            Irql: irq.irql,
            InterruptMode: if irq.latched {
                ffi::LATCHED
            } else {
                ffi::LEVEL_SENSITIVE
            },
            ProcessorEnableMask: irq.affinity as usize,
            Group: irq.group,
        },
    };
    // SAFETY: the parameters are complete; the caller keeps `ctx` alive.
    let st = unsafe { ffi::IoConnectInterruptEx(&mut p) };
    if ffi::nt_success(st) && !object.is_null() {
        Ok(object)
    } else {
        Err(st)
    }
}

/// Leave D0: join the worker, drop the balloon (the device is reset and
/// every page goes back to the kernel), disconnect the interrupt, flush
/// the DPC, free what they shared. `gone`: the function was surprise
/// removed; the transport is not waited on.
///
/// # Safety
///
/// `dev` is our FDO, at `PASSIVE_LEVEL`.
unsafe fn power_down(dev: *mut DEVICE_OBJECT, gone: bool) {
    // SAFETY: the caller's contract.
    let e = unsafe { &mut *ext(dev) };
    let Some(mut w) = e.worker.take() else {
        return;
    };
    if !e.thread.is_null() {
        w.shared.stop.store(true, Ordering::Release);
        // SAFETY: the event is initialised and the thread handle ours;
        // after the wait the thread has ended.
        unsafe {
            ffi::KeSetEvent(ptr::addr_of_mut!(w.shared.wake), 0, 0);
            ffi::ZwWaitForSingleObject(e.thread, 0, ptr::null_mut());
            ffi::ZwClose(e.thread);
        }
        e.thread = ptr::null_mut();
    }
    // The balloon first, with the interrupt still connected: the reset
    // de-asserts the device's line, and the ISR (which reads only the ISR
    // byte) may run meanwhile.
    if let Some(mut b) = w.balloon.take() {
        b.transport_mut().gone = gone;
        let held = b.held_pages();
        drop(b);
        log::info!("virtio-balloon left D0: {held} pages given back to the kernel");
    }
    if !e.interrupt.is_null() {
        let mut p = ffi::IO_DISCONNECT_INTERRUPT_PARAMETERS {
            Version: ffi::CONNECT_FULLY_SPECIFIED,
            InterruptObject: e.interrupt,
        };
        // SAFETY: the connection is ours; after the disconnect no ISR runs,
        // and after the flush no DPC of ours is queued or running, so the
        // box they point into may go.
        unsafe {
            ffi::IoDisconnectInterruptEx(&mut p);
            ffi::KeFlushQueuedDpcs();
        }
        e.interrupt = ptr::null_mut();
    }
    drop(w);
}

/// Stop: leave D0 and give back the mappings.
///
/// # Safety
///
/// `dev` is our FDO, at `PASSIVE_LEVEL`.
unsafe fn stop(dev: *mut DEVICE_OBJECT, gone: bool) {
    // SAFETY: the caller's contract.
    unsafe {
        power_down(dev, gone);
        (*ext(dev)).hw = None;
    }
}

unsafe extern "system" fn on_lower_done(
    _dev: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    ctx: *mut c_void,
) -> NTSTATUS {
    // SAFETY: `ctx` is forward_and_wait's event, which waits for it.
    unsafe {
        if (*irp).PendingReturned != 0 {
            ffi::KeSetEvent(ctx.cast(), 0, 0);
        }
    }
    ffi::STATUS_MORE_PROCESSING_REQUIRED
}

/// Send `irp` down and wait until the drivers below completed it; the IRP
/// is ours again afterwards (to complete). Returns their status.
///
/// # Safety
///
/// `dev` is our FDO and `irp` an IRP sent to it, at `PASSIVE_LEVEL`.
unsafe fn forward_and_wait(dev: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    let mut ev = KEVENT::zeroed();
    // SAFETY: the event lives on this stack until the completion routine
    // has run (we wait for it when the call pends).
    unsafe {
        ffi::KeInitializeEvent(&mut ev, ffi::NOTIFICATION_EVENT, 0);
        ffi::copy_to_next_with_completion(irp, on_lower_done, ptr::addr_of_mut!(ev).cast());
        let mut st = ffi::IofCallDriver((*ext(dev)).lower, irp);
        if st == ffi::STATUS_PENDING {
            ffi::KeWaitForSingleObject(
                ptr::addr_of_mut!(ev).cast(),
                ffi::EXECUTIVE,
                ffi::KERNEL_MODE,
                0,
                ptr::null_mut(),
            );
            st = (*irp).IoStatus.Status as NTSTATUS;
        }
        st
    }
}

/// Pass `irp` down unchanged.
///
/// # Safety
///
/// `dev` is our FDO and `irp` an IRP sent to it.
unsafe fn pass_down(dev: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: the caller's contract.
    unsafe {
        ffi::skip_current_stack(irp);
        ffi::IofCallDriver((*ext(dev)).lower, irp)
    }
}

/// # Safety
///
/// `irp` is ours to complete.
unsafe fn complete(irp: *mut IRP, st: NTSTATUS) -> NTSTATUS {
    // SAFETY: the caller's contract.
    unsafe {
        (*irp).IoStatus.Status = st as isize;
        ffi::IofCompleteRequest(irp, 0);
    }
    st
}

unsafe extern "system" fn dispatch_pnp(dev: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: the I/O manager hands us a valid IRP for our FDO, at
    // PASSIVE_LEVEL, one PnP IRP at a time.
    unsafe {
        let stack = ffi::current_stack(irp);
        match (*stack).MinorFunction {
            ffi::pnp::START_DEVICE => {
                let mut st = forward_and_wait(dev, irp);
                if ffi::nt_success(st) && (*ext(dev)).hw.is_none() {
                    st = match take_hardware((*ext(dev)).lower, stack) {
                        Ok(hw) => {
                            (*ext(dev)).hw = Some(hw);
                            power_up(dev)
                        }
                        Err(st) => st,
                    };
                    if !ffi::nt_success(st) {
                        stop(dev, false);
                    }
                }
                complete(irp, st)
            }
            // No resource rebalancing: the balloon holds guest pages by
            // their frame numbers and would have to deflate first.
            ffi::pnp::QUERY_STOP_DEVICE => complete(irp, ffi::STATUS_UNSUCCESSFUL),
            // A removal may follow: quiesce now (every page back to the
            // kernel, device reset), so nothing is out while the PnP
            // manager decides; a cancel brings the balloon back.
            ffi::pnp::QUERY_REMOVE_DEVICE => {
                power_down(dev, false);
                (*irp).IoStatus.Status = ffi::STATUS_SUCCESS as isize;
                pass_down(dev, irp)
            }
            ffi::pnp::CANCEL_REMOVE_DEVICE => {
                // Cancels are handled on the way up (after the drivers
                // below).
                let mut st = forward_and_wait(dev, irp);
                if ffi::nt_success(st) || st == ffi::STATUS_NOT_SUPPORTED {
                    st = ffi::STATUS_SUCCESS;
                    if (*ext(dev)).hw.is_some() && !ffi::nt_success(power_up(dev)) {
                        log::error!("virtio-balloon: not restarted after a cancelled remove");
                    }
                }
                complete(irp, st)
            }
            ffi::pnp::CANCEL_STOP_DEVICE => {
                (*irp).IoStatus.Status = ffi::STATUS_SUCCESS as isize;
                pass_down(dev, irp)
            }
            ffi::pnp::STOP_DEVICE => {
                stop(dev, false);
                (*irp).IoStatus.Status = ffi::STATUS_SUCCESS as isize;
                pass_down(dev, irp)
            }
            // The function is gone: stop without waiting on it (its
            // registers read all-ones); REMOVE_DEVICE follows.
            ffi::pnp::SURPRISE_REMOVAL => {
                stop(dev, true);
                (*irp).IoStatus.Status = ffi::STATUS_SUCCESS as isize;
                pass_down(dev, irp)
            }
            ffi::pnp::REMOVE_DEVICE => {
                stop(dev, false);
                (*irp).IoStatus.Status = ffi::STATUS_SUCCESS as isize;
                let lower = (*ext(dev)).lower;
                let st = pass_down(dev, irp);
                ffi::IoDetachDevice(lower);
                ptr::drop_in_place(ext(dev));
                ffi::IoDeleteDevice(dev);
                st
            }
            _ => pass_down(dev, irp),
        }
    }
}

/// Power IRPs. Device set-power: leaving D0 quiesces before the IRP goes
/// down (the device must still be powered to be reset); entering D0 goes
/// down first, then rebuilds. Everything else (system power IRPs, queries,
/// wait-wake) is passed down: Windows Vista and later need no
/// `PoStartNextPowerIrp`/`PoCallDriver`. Mapping system states to device
/// states (`PoRequestPowerIrp`) is not done (see the README).
unsafe extern "system" fn dispatch_power(dev: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: a valid power IRP for our FDO, at PASSIVE_LEVEL
    // (DO_POWER_PAGABLE), one device set-power IRP at a time.
    unsafe {
        let stack = ffi::current_stack(irp);
        if (*stack).MinorFunction != ffi::power::SET_POWER
            || (*stack).power_type() != ffi::DEVICE_POWER_STATE
        {
            return pass_down(dev, irp);
        }
        let state = (*stack).power_state();
        if state == ffi::POWER_DEVICE_D0 {
            let st = forward_and_wait(dev, irp);
            if ffi::nt_success(st) {
                if (*ext(dev)).hw.is_some() && !ffi::nt_success(power_up(dev)) {
                    log::error!("virtio-balloon: not restarted in D0");
                }
                ffi::PoSetPowerState(dev, ffi::DEVICE_POWER_STATE, state);
            }
            return complete(irp, st);
        }
        if state > ffi::POWER_DEVICE_D0 {
            power_down(dev, false);
            ffi::PoSetPowerState(dev, ffi::DEVICE_POWER_STATE, state);
        }
        (*irp).IoStatus.Status = ffi::STATUS_SUCCESS as isize;
        pass_down(dev, irp)
    }
}

/// Every other major function goes down unchanged.
unsafe extern "system" fn dispatch_pass(dev: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: a valid IRP for our FDO.
    unsafe { pass_down(dev, irp) }
}

unsafe extern "system" fn add_device(
    driver: *mut DRIVER_OBJECT,
    pdo: *mut DEVICE_OBJECT,
) -> NTSTATUS {
    let mut fdo = ptr::null_mut();
    // SAFETY: the PnP manager calls AddDevice at PASSIVE_LEVEL with our
    // driver object and the PDO; the extension is sized for `Ext` and
    // written before anything reads it.
    unsafe {
        let st = ffi::IoCreateDevice(
            driver,
            core::mem::size_of::<Ext>() as u32,
            ptr::null_mut(),
            ffi::FILE_DEVICE_UNKNOWN,
            ffi::FILE_DEVICE_SECURE_OPEN,
            0,
            &mut fdo,
        );
        if !ffi::nt_success(st) {
            return st;
        }
        let lower = ffi::IoAttachDeviceToDeviceStack(fdo, pdo);
        if lower.is_null() {
            ffi::IoDeleteDevice(fdo);
            return ffi::STATUS_UNSUCCESSFUL;
        }
        ptr::write(
            ext(fdo),
            Ext {
                lower,
                pdo,
                hw: None,
                worker: None,
                thread: ptr::null_mut(),
                interrupt: ptr::null_mut(),
            },
        );
        (*fdo).Flags |= ffi::DO_POWER_PAGABLE;
        (*fdo).Flags &= !ffi::DO_DEVICE_INITIALIZING;
    }
    ffi::STATUS_SUCCESS
}

unsafe extern "system" fn unload(_driver: *mut DRIVER_OBJECT) {}

/// The driver's entry point (`/ENTRY:DriverEntry`).
///
/// # Safety
///
/// Called once by the I/O manager with our driver object.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn DriverEntry(
    driver: *mut DRIVER_OBJECT,
    _registry_path: *mut ffi::UNICODE_STRING,
) -> NTSTATUS {
    pv_windows::logger::init(log::LevelFilter::Info);
    // SAFETY: the driver object is ours to fill in during DriverEntry.
    unsafe {
        let d = &mut *driver;
        for f in d.MajorFunction.iter_mut() {
            *f = Some(dispatch_pass);
        }
        d.MajorFunction[ffi::IRP_MJ_PNP] = Some(dispatch_pnp);
        d.MajorFunction[ffi::IRP_MJ_POWER] = Some(dispatch_power);
        d.DriverUnload = Some(unload);
        (*d.DriverExtension).AddDevice = Some(add_device);
    }
    log::info!("pv-balloon driver loaded");
    ffi::STATUS_SUCCESS
}
