//! The WDM driver: entry points, PnP/power dispatch, device start and
//! stop, kernel pages, and the worker thread that runs [`crate::step`].
//!
//! Threading: PnP IRPs for one device arrive one at a time (the PnP
//! manager serialises them). The balloon is created at start, then touched
//! only by the worker thread until stop has joined that thread; the only
//! object both sides touch while it runs is the stop event (a kernel
//! dispatcher object).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::ptr::{self, NonNull};

use pv_balloon::{
    GuestPage, MemStats, VirtioBalloon, VirtioBalloonConfig, VirtioDeviceId, FRAME_SIZE,
};
use pv_windows::ffi::{self, DEVICE_OBJECT, DRIVER_OBJECT, IRP, KEVENT, NTSTATUS};
use pv_windows::hal::{self, KernelHal};
use pv_windows::pci::{self, SnapshotConfig, CONFIG_BYTES};
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;

use crate::kstats;
use crate::step::{self, Kernel};

/// Worker period: how often the balloon polls the device (no interrupt is
/// connected yet; see the README).
const TICK_MS: i64 = 100;
/// Most rounds per tick while rounds make progress.
const ROUNDS_PER_TICK: usize = 64;

type Balloon = VirtioBalloon<KernelHal, PciTransport, MdlPage>;

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
    virt: *mut c_void,
    len: usize,
}

/// What runs while the device is started. Boxed (its address is the
/// worker's context and the stop event's home).
struct Worker {
    stop: KEVENT,
    balloon: Option<Balloon>,
    maps: Vec<BarMap>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The balloon first: dropping it resets the device (so it touches
        // no page or queue again) and gives every page back.
        self.balloon = None;
        for m in self.maps.drain(..) {
            hal::unregister_mmio(m.virt);
            // SAFETY: the mapping came from MmMapIoSpaceEx with this
            // length; nothing uses it once the balloon is gone.
            unsafe { ffi::MmUnmapIoSpace(m.virt, m.len) };
        }
    }
}

/// The device extension.
struct Ext {
    lower: *mut DEVICE_OBJECT,
    worker: Option<Box<Worker>>,
    thread: *mut c_void,
}

/// # Safety
///
/// `dev` is our FDO, whose extension `add_device` initialised.
unsafe fn ext(dev: *mut DEVICE_OBJECT) -> *mut Ext {
    // SAFETY: the caller's contract.
    unsafe { (*dev).DeviceExtension.cast() }
}

unsafe extern "system" fn worker_main(ctx: *mut c_void) {
    let w = ctx.cast::<Worker>();
    let mut k = WinKernel;
    loop {
        let mut timeout: i64 = -(TICK_MS * 10_000);
        // SAFETY: the worker box outlives this thread (stop joins the
        // thread before dropping it); the event is initialised.
        let st = unsafe {
            ffi::KeWaitForSingleObject(
                ptr::addr_of_mut!((*w).stop).cast(),
                ffi::EXECUTIVE,
                ffi::KERNEL_MODE,
                0,
                &mut timeout,
            )
        };
        if st == ffi::STATUS_SUCCESS {
            break;
        }
        // SAFETY: only this thread touches the balloon while it runs.
        let Some(b) = (unsafe { (*w).balloon.as_mut() }) else {
            continue;
        };
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

/// Bring the device up after the PCI driver below started it.
///
/// # Safety
///
/// `dev` is our FDO; `stack` the start IRP's current stack location.
unsafe fn start(dev: *mut DEVICE_OBJECT, stack: *const ffi::IO_STACK_LOCATION) -> NTSTATUS {
    // SAFETY: the caller's contract.
    let e = unsafe { &mut *ext(dev) };
    if e.worker.is_some() {
        return ffi::STATUS_SUCCESS;
    }
    // SAFETY: the start IRP's resource lists.
    let lists = unsafe {
        resource_list((*stack).start_raw_resources())
            .and_then(|r| resource_list((*stack).start_translated_resources()).map(|t| (r, t)))
    };
    let (raw, translated) = match lists {
        Ok(l) => l,
        Err(st) => return st,
    };
    let ranges = match pci::parse_resources(raw, translated) {
        Ok(r) => r,
        Err(err) => {
            log::error!("virtio-balloon: resources: {err}");
            return ffi::STATUS_DEVICE_CONFIGURATION_ERROR;
        }
    };
    // SAFETY: `lower` is the device below us.
    let config = match unsafe { read_config(e.lower) } {
        Ok(c) => c,
        Err(st) => return st,
    };
    let mut w = Box::new(Worker {
        stop: KEVENT::zeroed(),
        balloon: None,
        maps: Vec::new(),
    });
    for r in ranges.as_slice() {
        let Ok(len) = usize::try_from(r.len) else {
            return ffi::STATUS_DEVICE_CONFIGURATION_ERROR;
        };
        // SAFETY: the range is device memory PnP assigned to this function.
        let virt =
            unsafe { ffi::MmMapIoSpaceEx(r.translated as i64, len, ffi::PAGE_READWRITE_NOCACHE) };
        if virt.is_null() {
            return ffi::STATUS_INSUFFICIENT_RESOURCES;
        }
        w.maps.push(BarMap { virt, len });
        // virtio-drivers asks by bus address (what the BAR holds).
        if !hal::register_mmio(r.raw, r.len, virt) {
            return ffi::STATUS_INSUFFICIENT_RESOURCES;
        }
    }
    // One function per snapshot: its bus address does not matter.
    let function = DeviceFunction {
        bus: 0,
        device: 0,
        function: 0,
    };
    let mut root = PciRoot::new(SnapshotConfig::new(function, config, ranges.as_slice()));
    let transport = match PciTransport::new::<KernelHal, _>(&mut root, function) {
        Ok(t) => t,
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
        u16::from_le_bytes([config[0], config[1]]),
        u16::from_le_bytes([config[2], config[3]]),
    )
    .unwrap_or(VirtioDeviceId(0));
    match Balloon::new(transport, id, cfg) {
        Ok(b) => w.balloon = Some(b),
        Err(err) => {
            log::error!("virtio-balloon: bring-up: {err}");
            return ffi::STATUS_DEVICE_CONFIGURATION_ERROR;
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
    // SAFETY: the event lives in the box, whose address does not change
    // when the box moves into the extension; the thread gets that address
    // and stop joins the thread before the box is dropped.
    let st = unsafe {
        ffi::KeInitializeEvent(ptr::addr_of_mut!((*wp).stop), ffi::NOTIFICATION_EVENT, 0);
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
    if !ffi::nt_success(st) {
        return st;
    }
    e.thread = thread;
    e.worker = Some(w);
    log::info!(
        "virtio-balloon started: {} MiB of guest memory",
        total >> 20
    );
    ffi::STATUS_SUCCESS
}

/// Stop the worker and give the device and every page back.
///
/// # Safety
///
/// `dev` is our FDO, at `PASSIVE_LEVEL`.
unsafe fn stop(dev: *mut DEVICE_OBJECT) {
    // SAFETY: the caller's contract.
    let e = unsafe { &mut *ext(dev) };
    let Some(mut w) = e.worker.take() else {
        return;
    };
    // SAFETY: the event is initialised and the thread handle ours; after
    // the wait the thread has ended, so the box is ours alone to drop.
    unsafe {
        ffi::KeSetEvent(ptr::addr_of_mut!(w.stop), 0, 0);
        ffi::ZwWaitForSingleObject(e.thread, 0, ptr::null_mut());
        ffi::ZwClose(e.thread);
    }
    e.thread = ptr::null_mut();
    drop(w);
}

unsafe extern "system" fn on_start_done(
    _dev: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    ctx: *mut c_void,
) -> NTSTATUS {
    // SAFETY: `ctx` is the start dispatch's event, which waits for it.
    unsafe {
        if (*irp).PendingReturned != 0 {
            ffi::KeSetEvent(ctx.cast(), 0, 0);
        }
    }
    ffi::STATUS_MORE_PROCESSING_REQUIRED
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
                let mut ev = KEVENT::zeroed();
                ffi::KeInitializeEvent(&mut ev, ffi::NOTIFICATION_EVENT, 0);
                ffi::copy_to_next_with_completion(irp, on_start_done, ptr::addr_of_mut!(ev).cast());
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
                if ffi::nt_success(st) {
                    st = start(dev, stack);
                    if !ffi::nt_success(st) {
                        stop(dev);
                    }
                }
                complete(irp, st)
            }
            // No resource rebalancing: the balloon holds guest pages by
            // their frame numbers and would have to deflate first.
            ffi::pnp::QUERY_STOP_DEVICE => complete(irp, ffi::STATUS_UNSUCCESSFUL),
            ffi::pnp::QUERY_REMOVE_DEVICE
            | ffi::pnp::CANCEL_REMOVE_DEVICE
            | ffi::pnp::CANCEL_STOP_DEVICE => {
                (*irp).IoStatus.Status = ffi::STATUS_SUCCESS as isize;
                pass_down(dev, irp)
            }
            ffi::pnp::STOP_DEVICE | ffi::pnp::SURPRISE_REMOVAL => {
                stop(dev);
                (*irp).IoStatus.Status = ffi::STATUS_SUCCESS as isize;
                pass_down(dev, irp)
            }
            ffi::pnp::REMOVE_DEVICE => {
                stop(dev);
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

/// Power IRPs go down unchanged (Windows Vista and later need no
/// `PoStartNextPowerIrp`/`PoCallDriver`). The balloon keeps running across
/// D-state changes: see the README's list of what is not done.
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
                worker: None,
                thread: ptr::null_mut(),
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
        d.DriverUnload = Some(unload);
        (*d.DriverExtension).AddDevice = Some(add_device);
    }
    log::info!("pv-balloon driver loaded");
    ffi::STATUS_SUCCESS
}
