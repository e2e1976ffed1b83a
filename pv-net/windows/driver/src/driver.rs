//! The NDIS miniport: entry points, adapter bring-up and teardown, the
//! send, receive and OID paths.
//!
//! Concurrency: NDIS calls Send, OidRequest, Return and the interrupt DPC on any
//! processor at up to DISPATCH_LEVEL. Everything mutable of an adapter is
//! behind its `NDIS_SPIN_LOCK`; NDIS indications and completions are made
//! after the lock is released (NDIS may call back into us from them).
//!
//! Data path: frames are copied both ways (the core's model: frontend-owned
//! buffers). A send copies each NET_BUFFER into a transmit slot and
//! completes the NBL at once; a receive copies the frame into one of the
//! adapter's own NBLs (one per RX buffer), which NDIS hands back through
//! ReturnNetBufferLists.
//!
//! Interrupts: one line-based interrupt, registered with
//! `NdisMRegisterInterruptEx`. The ISR reads the virtio ISR status byte
//! (which clears it and de-asserts the line), claims the interrupt only if
//! the byte is a virtio value (`pv_windows::pci::isr_is_ours`: zero is
//! another device on a shared line), keeps the bits and asks NDIS for the
//! DPC; the DPC reclaims transmit slots, receives and indicates frames and
//! observes the link. There is no polling timer: a device whose ISR status
//! the driver cannot reach fails InitializeEx. Why line-based and not MSI:
//! docs/WINDOWS.md.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::ptr::{self, null_mut};
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

use pv_net::virtio::{VirtioNet, VirtioNetConfig};
use pv_net::NetFrontend;
use pv_net_windows::nbl::{self, Piece, TxCsumInfo, MAX_PIECES};
use pv_net_windows::oid::{self, SetEffect, SUPPORTED_OIDS};
use pv_net_windows::Adapter;
use pv_windows::ffi::{self, DRIVER_OBJECT, MDL, NTSTATUS, UNICODE_STRING};
use pv_windows::hal::{self, KernelHal};
use pv_windows::ndis::*;
use pv_windows::pci::{self, SnapshotConfig, CONFIG_BYTES};
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;

type Nic = VirtioNet<KernelHal, PciTransport>;

/// Frames delivered per DPC at most.
const RX_BUDGET: usize = 256;

static DRIVER_HANDLE: AtomicPtr<c_void> = AtomicPtr::new(null_mut());

/// One receive NBL of ours: its buffer, MDL and NBL, and whether NDIS has
/// it.
struct RxSlot {
    buf: Box<[u8]>,
    mdl: *mut MDL,
    nbl: *mut NET_BUFFER_LIST,
    lent: bool,
}

/// A BAR mapped with `NdisMMapIoSpace`.
struct BarMap {
    raw: u64,
    virt: *mut c_void,
    len: u32,
}

/// The adapter context (`MiniportAdapterContext`).
struct Ctx {
    handle: NDIS_HANDLE,
    lock: NDIS_SPIN_LOCK,
    nic: Option<Nic>,
    adapter: Adapter,
    maps: Vec<BarMap>,
    pool: NDIS_HANDLE,
    rx: Vec<RxSlot>,
    /// The `NdisMRegisterInterruptEx` handle (null: not registered).
    interrupt: NDIS_HANDLE,
    /// The ISR status byte in a BAR mapping. Set before the interrupt is
    /// registered; the mapping outlives the registration.
    isr: *mut u8,
    /// ISR bits the DPC has not seen yet (the ISR sets, the DPC takes).
    /// Outside the lock: the ISR runs at DIRQL, where no spin lock of
    /// ours may be taken.
    pending: AtomicU8,
    paused: bool,
    pause_pending: bool,
    tx_frame: Vec<u8>,
}

/// The lock held; released on drop.
struct Guard(*mut Ctx);

impl Guard {
    /// # Safety
    ///
    /// `ctx` is a live adapter context whose lock is initialised.
    unsafe fn lock(ctx: *mut Ctx) -> Self {
        // SAFETY: the caller's contract.
        unsafe { NdisAcquireSpinLock(ptr::addr_of_mut!((*ctx).lock)) };
        Self(ctx)
    }

    fn ctx(&mut self) -> &mut Ctx {
        // SAFETY: the lock is held, so this is the only reference.
        unsafe { &mut *self.0 }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: acquired in `lock`.
        unsafe { NdisReleaseSpinLock(ptr::addr_of_mut!((*self.0).lock)) };
    }
}

/// The kernel entry point.
///
/// # Safety
///
/// Called once by the I/O manager with its driver object and registry path.
#[no_mangle]
pub unsafe extern "system" fn DriverEntry(
    driver: *mut DRIVER_OBJECT,
    registry: *mut UNICODE_STRING,
) -> NTSTATUS {
    pv_windows::logger::init(log::LevelFilter::Info);
    let mut ch = NDIS_MINIPORT_DRIVER_CHARACTERISTICS {
        Header: NDIS_OBJECT_HEADER {
            Type: NDIS_OBJECT_TYPE_MINIPORT_DRIVER_CHARACTERISTICS,
            Revision: 1,
            // NDIS_SIZEOF_MINIPORT_DRIVER_CHARACTERISTICS_REVISION_1.
            Size: 0x88,
        },
        MajorNdisVersion: 6,
        MinorNdisVersion: 0,
        MajorDriverVersion: 1,
        MinorDriverVersion: 0,
        InitializeHandlerEx: Some(initialize),
        HaltHandlerEx: Some(halt),
        UnloadHandler: Some(unload),
        PauseHandler: Some(pause),
        RestartHandler: Some(restart),
        OidRequestHandler: Some(oid_request),
        SendNetBufferListsHandler: Some(send),
        ReturnNetBufferListsHandler: Some(return_nbls),
        CancelSendHandler: Some(cancel_send),
        ResetHandlerEx: Some(reset),
        DevicePnPEventNotifyHandler: Some(pnp_event),
        ShutdownHandlerEx: Some(shutdown),
        CancelOidRequestHandler: Some(cancel_oid),
        ..Default::default()
    };
    let mut handle = null_mut();
    // SAFETY: the characteristics live for the call (NDIS copies them).
    let st =
        unsafe { NdisMRegisterMiniportDriver(driver, registry, null_mut(), &mut ch, &mut handle) };
    if st == NDIS_STATUS_SUCCESS {
        DRIVER_HANDLE.store(handle, Ordering::Release);
        log::info!("pvnet: registered");
    } else {
        log::error!("pvnet: NdisMRegisterMiniportDriver failed: {st:#x}");
    }
    st
}

unsafe extern "system" fn unload(_driver: *mut DRIVER_OBJECT) {
    let h = DRIVER_HANDLE.swap(null_mut(), Ordering::AcqRel);
    if !h.is_null() {
        // SAFETY: the handle registration gave us, deregistered once.
        unsafe { NdisMDeregisterMiniportDriver(h) };
    }
}

/// The adapter's `NDIS_RESOURCE_LIST` (a `CM_PARTIAL_RESOURCE_LIST`) as a
/// one-entry `CM_RESOURCE_LIST`, for `pv_windows::pci`.
///
/// # Safety
///
/// `p` is null or NDIS' resource list.
unsafe fn resource_list(p: *const u8) -> Option<Vec<u8>> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the partial list starts with version, revision, count.
    let count = unsafe { ptr::read_unaligned(p.add(4).cast::<u32>()) };
    if count > pci::MAX_DESCRIPTORS {
        return None;
    }
    let partial = 8 + pci::PARTIAL_DESCRIPTOR_BYTES * count as usize;
    let mut v = Vec::with_capacity(12 + partial);
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&NDIS_INTERFACE_PCI.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    // SAFETY: the list holds `count` descriptors after its 8-byte header.
    v.extend_from_slice(unsafe { core::slice::from_raw_parts(p, partial) });
    Some(v)
}

unsafe extern "system" fn initialize(
    handle: NDIS_HANDLE,
    _driver_ctx: NDIS_HANDLE,
    params: *mut NDIS_MINIPORT_INIT_PARAMETERS,
) -> NDIS_STATUS {
    match unsafe { bring_up(handle, params) } {
        Ok(()) => NDIS_STATUS_SUCCESS,
        Err(st) => st,
    }
}

/// # Safety
///
/// NDIS' adapter handle and init parameters.
unsafe fn bring_up(
    handle: NDIS_HANDLE,
    params: *mut NDIS_MINIPORT_INIT_PARAMETERS,
) -> Result<(), NDIS_STATUS> {
    let mut ctx = Box::new(Ctx {
        handle,
        lock: NDIS_SPIN_LOCK::default(),
        nic: None,
        adapter: Adapter::new(&pv_net::NetInfo::default(), false),
        maps: Vec::new(),
        pool: null_mut(),
        rx: Vec::new(),
        interrupt: null_mut(),
        isr: null_mut(),
        pending: AtomicU8::new(0),
        paused: true,
        pause_pending: false,
        tx_frame: Vec::new(),
    });
    // SAFETY: the lock lives in the box, which lives until halt.
    unsafe { NdisAllocateSpinLock(&mut ctx.lock) };
    let ctxp: *mut Ctx = &mut *ctx;
    let mut reg = NDIS_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES {
        Header: NDIS_OBJECT_HEADER {
            Type: NDIS_OBJECT_TYPE_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES,
            Revision: 1,
            Size: 0x20,
        },
        MiniportAdapterContext: ctxp.cast(),
        AttributeFlags: NDIS_MINIPORT_ATTRIBUTES_HARDWARE_DEVICE
            | NDIS_MINIPORT_ATTRIBUTES_BUS_MASTER,
        CheckForHangTimeInSeconds: 0,
        InterfaceType: NDIS_INTERFACE_PCI,
    };
    // SAFETY: the attributes live for the call.
    let st = unsafe { NdisMSetMiniportAttributes(handle, ptr::addr_of_mut!(reg).cast()) };
    if st != NDIS_STATUS_SUCCESS {
        return Err(teardown(ctx, st));
    }
    let mut config = [0u8; CONFIG_BYTES];
    // SAFETY: `config` is writable for its length.
    let got = unsafe {
        NdisMGetBusData(
            handle,
            PCI_WHICHSPACE_CONFIG,
            0,
            config.as_mut_ptr().cast(),
            CONFIG_BYTES as u32,
        )
    };
    if got as usize != CONFIG_BYTES {
        log::error!("pvnet: config space read {got} bytes");
        return Err(teardown(ctx, NDIS_STATUS_ADAPTER_NOT_FOUND));
    }
    // SAFETY: NDIS' parameters; x86 bus addresses are CPU physical
    // addresses, so the translated list serves as the raw one too.
    let Some(list) = (unsafe { resource_list((*params).AllocatedResources) }) else {
        return Err(teardown(ctx, NDIS_STATUS_RESOURCES));
    };
    let ranges = match pci::parse_resources(&list, &list) {
        Ok(r) => r,
        Err(e) => {
            log::error!("pvnet: resources: {e}");
            return Err(teardown(ctx, NDIS_STATUS_RESOURCES));
        }
    };
    for r in ranges.as_slice() {
        let Ok(len) = u32::try_from(r.len) else {
            return Err(teardown(ctx, NDIS_STATUS_RESOURCES));
        };
        let mut virt = null_mut();
        // SAFETY: a range NDIS assigned to this adapter.
        let st = unsafe { NdisMMapIoSpace(&mut virt, handle, r.translated as i64, len) };
        if st != NDIS_STATUS_SUCCESS || virt.is_null() {
            return Err(teardown(ctx, NDIS_STATUS_RESOURCES));
        }
        ctx.maps.push(BarMap {
            raw: r.raw,
            virt,
            len,
        });
        if !hal::register_mmio(r.raw, r.len, virt) {
            return Err(teardown(ctx, NDIS_STATUS_RESOURCES));
        }
    }
    let function = DeviceFunction {
        bus: 0,
        device: 0,
        function: 0,
    };
    let snap = SnapshotConfig::new(function, config, ranges.as_slice());
    let Some(isr) = isr_register(&ctx.maps, &config, &snap) else {
        log::error!("pvnet: no virtio ISR status in a mapped BAR: cannot take interrupts");
        return Err(teardown(ctx, NDIS_STATUS_ADAPTER_NOT_FOUND));
    };
    ctx.isr = isr;
    let mut root = PciRoot::new(snap);
    let transport = match PciTransport::new::<KernelHal, _>(&mut root, function) {
        Ok(t) => t,
        Err(e) => {
            log::error!("pvnet: not a virtio PCI device: {e}");
            return Err(teardown(ctx, NDIS_STATUS_ADAPTER_NOT_FOUND));
        }
    };
    let mut nic = match Nic::new(transport, VirtioNetConfig::default()) {
        Ok(n) => n,
        Err(e) => {
            log::error!("pvnet: bring-up: {e}");
            return Err(teardown(ctx, NDIS_STATUS_ADAPTER_NOT_FOUND));
        }
    };
    let info = nic.info();
    ctx.adapter = Adapter::new(&info, nic.link_up());
    ctx.nic = Some(nic);
    ctx.tx_frame = vec![0u8; pv_net::frontend::max_frame(info.mtu)];
    if let Err(st) = unsafe { alloc_rx(&mut ctx, usize::from(info.rx_slots)) } {
        return Err(teardown(ctx, st));
    }
    if let Err(st) = unsafe { set_attributes(&mut ctx) } {
        return Err(teardown(ctx, st));
    }
    // Last: from here on the ISR and the DPC may run on other processors,
    // so nothing below touches the context without the lock. The device
    // is live already (DRIVER_OK); anything it raised before this point
    // is not lost: the line is level-triggered and its ISR status stays
    // set until the ISR reads it.
    let mut ic = NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS {
        Header: NDIS_OBJECT_HEADER {
            Type: NDIS_OBJECT_TYPE_MINIPORT_INTERRUPT,
            Revision: NDIS_MINIPORT_INTERRUPT_REVISION_1,
            Size: NDIS_SIZEOF_MINIPORT_INTERRUPT_CHARACTERISTICS_REVISION_1,
        },
        InterruptHandler: Some(isr_handler),
        InterruptDpcHandler: Some(interrupt_dpc),
        DisableInterruptHandler: Some(disable_interrupt),
        EnableInterruptHandler: Some(enable_interrupt),
        MsiSupported: 0,
        MsiSyncWithAllMessages: 0,
        MessageInterruptHandler: None,
        MessageInterruptDpcHandler: None,
        DisableMessageInterruptHandler: None,
        EnableMessageInterruptHandler: None,
        InterruptType: 0,
        MessageInfoTable: null_mut(),
    };
    let mut interrupt = null_mut();
    // SAFETY: the characteristics live for the call; the context (the
    // box) lives until halt, which deregisters the interrupt first.
    let st = unsafe { NdisMRegisterInterruptEx(handle, ctxp.cast(), &mut ic, &mut interrupt) };
    if st != NDIS_STATUS_SUCCESS || interrupt.is_null() {
        log::error!("pvnet: NdisMRegisterInterruptEx failed: {st:#x}");
        return Err(teardown(ctx, NDIS_STATUS_RESOURCES));
    }
    {
        // SAFETY: the lock was initialised above; the ISR and DPC may
        // run from now.
        let mut g = unsafe { Guard::lock(ctxp) };
        g.ctx().interrupt = interrupt;
    }
    log::info!(
        "pvnet: adapter up, mtu {}, interrupt type {}",
        info.mtu,
        ic.InterruptType
    );
    // The adapter starts paused (NDIS calls Restart); the box is NDIS'
    // until halt.
    let _ = Box::into_raw(ctx);
    Ok(())
}

/// The ISR status byte's address in our mappings, from the virtio ISR
/// capability of the config snapshot.
fn isr_register(
    maps: &[BarMap],
    config: &[u8; CONFIG_BYTES],
    snap: &SnapshotConfig,
) -> Option<*mut u8> {
    let (bar, offset) = pci::virtio_isr(config)?;
    let range = snap.bar(usize::from(bar))?;
    let map = maps.iter().find(|m| m.raw == range.raw)?;
    let offset = usize::try_from(offset)
        .ok()
        .filter(|&o| o < map.len as usize)?;
    Some(map.virt.cast::<u8>().wrapping_add(offset))
}

/// # Safety
///
/// `ctx` is being initialised on NDIS' adapter handle.
unsafe fn alloc_rx(ctx: &mut Ctx, n: usize) -> Result<(), NDIS_STATUS> {
    let mut pp = NET_BUFFER_LIST_POOL_PARAMETERS {
        Header: NDIS_OBJECT_HEADER {
            Type: NDIS_OBJECT_TYPE_DEFAULT,
            Revision: 1,
            Size: 0x10,
        },
        ProtocolId: NDIS_PROTOCOL_ID_DEFAULT,
        fAllocateNetBuffer: 1,
        ContextSize: 0,
        PoolTag: pv_windows::POOL_TAG,
        DataSize: 0,
    };
    // SAFETY: plain allocation; null on failure.
    ctx.pool = unsafe { NdisAllocateNetBufferListPool(ctx.handle, &mut pp) };
    if ctx.pool.is_null() {
        return Err(NDIS_STATUS_RESOURCES);
    }
    let len = ctx.tx_frame.len();
    for _ in 0..n {
        let mut buf = vec![0u8; len].into_boxed_slice();
        // SAFETY: `buf` is non-paged pool that lives as long as the slot.
        let mdl = unsafe { NdisAllocateMdl(ctx.handle, buf.as_mut_ptr().cast(), len as u32) };
        if mdl.is_null() {
            return Err(NDIS_STATUS_RESOURCES);
        }
        // SAFETY: an MDL of ours describing `len` bytes.
        let nbl = unsafe { NdisAllocateNetBufferAndNetBufferList(ctx.pool, 0, 0, mdl, 0, len) };
        if nbl.is_null() {
            // SAFETY: allocated just above, owned by nothing else.
            unsafe { NdisFreeMdl(mdl) };
            return Err(NDIS_STATUS_RESOURCES);
        }
        ctx.rx.push(RxSlot {
            buf,
            mdl,
            nbl,
            lent: false,
        });
    }
    Ok(())
}

/// # Safety
///
/// `ctx` is being initialised on NDIS' adapter handle.
unsafe fn set_attributes(ctx: &mut Ctx) -> Result<(), NDIS_STATUS> {
    let a = &ctx.adapter;
    let mut mac = [0u8; 32];
    mac[..6].copy_from_slice(&a.permanent_mac);
    let speed = a.link_speed();
    let mut gen = NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES {
        Header: NDIS_OBJECT_HEADER {
            Type: NDIS_OBJECT_TYPE_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES,
            Revision: 1,
            Size: NDIS_SIZEOF_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES_REVISION_1,
        },
        Flags: 0,
        MediaType: NDIS_MEDIUM_802_3,
        PhysicalMediumType: 0,
        MtuSize: u32::from(a.mtu),
        MaxXmitLinkSpeed: oid::LINK_SPEED_BPS,
        XmitLinkSpeed: speed,
        MaxRcvLinkSpeed: oid::LINK_SPEED_BPS,
        RcvLinkSpeed: speed,
        MediaConnectState: if a.link_up {
            MEDIA_CONNECT_STATE_CONNECTED
        } else {
            MEDIA_CONNECT_STATE_DISCONNECTED
        },
        MediaDuplexState: MEDIA_DUPLEX_STATE_FULL,
        LookaheadSize: u32::from(a.mtu),
        PowerManagementCapabilities: null_mut(),
        MacOptions: oid::MAC_OPTIONS,
        SupportedPacketFilters: oid::filter::SUPPORTED,
        MaxMulticastListSize: oid::MAX_MULTICAST as u32,
        MacAddressLength: 6,
        PermanentMacAddress: mac,
        CurrentMacAddress: mac,
        RecvScaleCapabilities: null_mut(),
        AccessType: NET_IF_ACCESS_BROADCAST,
        DirectionType: NET_IF_DIRECTION_SENDRECEIVE,
        ConnectionType: NET_IF_CONNECTION_DEDICATED,
        IfType: IF_TYPE_ETHERNET_CSMACD,
        IfConnectorPresent: 1,
        SupportedStatistics: oid::SUPPORTED_STATISTICS,
        SupportedPauseFunctions: NDIS_PAUSE_FUNCTIONS_UNSUPPORTED,
        DataBackFillSize: 0,
        ContextBackFillSize: 0,
        SupportedOidList: SUPPORTED_OIDS.as_ptr(),
        SupportedOidListLength: (SUPPORTED_OIDS.len() * 4) as u32,
        AutoNegotiationFlags: 0,
        PowerManagementCapabilitiesEx: null_mut(),
    };
    // SAFETY: the attributes live for the call.
    let st = unsafe { NdisMSetMiniportAttributes(ctx.handle, ptr::addr_of_mut!(gen).cast()) };
    if st != NDIS_STATUS_SUCCESS {
        return Err(st);
    }
    let current = a.offload_bytes();
    let hw = a.hw.ndis_offload();
    let mut off = NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES {
        Header: NDIS_OBJECT_HEADER {
            Type: NDIS_OBJECT_TYPE_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES,
            Revision: 1,
            Size: 0x28,
        },
        DefaultOffloadConfiguration: current.as_ptr(),
        HardwareOffloadCapabilities: hw.as_ptr(),
        DefaultTcpConnectionOffloadConfiguration: ptr::null(),
        TcpConnectionOffloadHardwareCapabilities: ptr::null(),
    };
    // SAFETY: the attributes and both blocks live for the call.
    let st = unsafe { NdisMSetMiniportAttributes(ctx.handle, ptr::addr_of_mut!(off).cast()) };
    if st != NDIS_STATUS_SUCCESS {
        return Err(st);
    }
    Ok(())
}

/// Stop the device and the interrupt of a registered adapter: the device
/// is reset under the lock (so it raises nothing more and touches no
/// buffer; a DPC after this finds no device), then the interrupt is
/// deregistered, which waits out any ISR and DPC still running. In that
/// order because the line may be shared: a device left asserting a
/// level-triggered line with no handler claiming it would storm it.
///
/// # Safety
///
/// `cp` is our live context, at PASSIVE_LEVEL (halt).
unsafe fn quiesce(cp: *mut Ctx) {
    let interrupt = {
        // SAFETY: the caller's contract.
        let mut g = unsafe { Guard::lock(cp) };
        let c = g.ctx();
        c.nic = None;
        core::mem::replace(&mut c.interrupt, null_mut())
    };
    if !interrupt.is_null() {
        // SAFETY: registered in bring-up, deregistered once.
        unsafe { NdisMDeregisterInterruptEx(interrupt) };
    }
}

/// Free everything `ctx` holds; returns `st` for the caller's error path.
/// The interrupt is not registered (bring-up registers it last; halt
/// deregisters it in [`quiesce`] first).
fn teardown(mut ctx: Box<Ctx>, st: NDIS_STATUS) -> NDIS_STATUS {
    // The device first: dropping the frontend resets it, so it touches no
    // buffer again.
    ctx.nic = None;
    for s in ctx.rx.drain(..) {
        // SAFETY: NBL and MDL are ours and not lent (halt comes after
        // every NBL is returned).
        unsafe {
            NdisFreeNetBufferList(s.nbl);
            NdisFreeMdl(s.mdl);
        }
        drop(s.buf);
    }
    if !ctx.pool.is_null() {
        // SAFETY: every NBL of the pool was freed above.
        unsafe { NdisFreeNetBufferListPool(ctx.pool) };
    }
    for m in ctx.maps.drain(..) {
        hal::unregister_mmio(m.virt);
        // SAFETY: mapped by NdisMMapIoSpace with this length; unused now.
        unsafe { NdisMUnmapIoSpace(ctx.handle, m.virt, m.len) };
    }
    // SAFETY: allocated at the start of bring-up; nothing holds it now.
    unsafe { NdisFreeSpinLock(&mut ctx.lock) };
    st
}

unsafe extern "system" fn halt(ctx: NDIS_HANDLE, _action: u32) {
    // SAFETY: the context registered in initialize; halt is at
    // PASSIVE_LEVEL with no send, OID or return outstanding.
    unsafe { quiesce(ctx.cast()) };
    // SAFETY: no ISR or DPC can run any more: ours again from now.
    let ctx = unsafe { Box::from_raw(ctx.cast::<Ctx>()) };
    teardown(ctx, NDIS_STATUS_SUCCESS);
    log::info!("pvnet: halted");
}

unsafe extern "system" fn pause(ctx: NDIS_HANDLE, _params: *mut c_void) -> NDIS_STATUS {
    // SAFETY: our context, live between initialize and halt.
    let mut g = unsafe { Guard::lock(ctx.cast()) };
    let c = g.ctx();
    c.paused = true;
    if c.rx.iter().any(|s| s.lent) {
        // Completed by the return of the last lent NBL.
        c.pause_pending = true;
        NDIS_STATUS_PENDING
    } else {
        NDIS_STATUS_SUCCESS
    }
}

unsafe extern "system" fn restart(ctx: NDIS_HANDLE, _params: *mut c_void) -> NDIS_STATUS {
    // SAFETY: our context.
    let mut g = unsafe { Guard::lock(ctx.cast()) };
    g.ctx().paused = false;
    NDIS_STATUS_SUCCESS
}

unsafe extern "system" fn shutdown(ctx: NDIS_HANDLE, _action: u32) {
    // No lock, no allocation: shutdown may run at high IRQL after a bug
    // check. Stopping the device's DMA is all that matters.
    // SAFETY: our context.
    let c = unsafe { &mut *ctx.cast::<Ctx>() };
    if let Some(n) = c.nic.as_mut() {
        use virtio_drivers::transport::{DeviceStatus, Transport};
        n.transport_mut().set_status(DeviceStatus::empty());
    }
}

unsafe extern "system" fn reset(ctx: NDIS_HANDLE, addressing_reset: *mut u8) -> NDIS_STATUS {
    // SAFETY: our context.
    let mut g = unsafe { Guard::lock(ctx.cast()) };
    // SAFETY: NDIS' out parameter.
    unsafe { *addressing_reset = 0 };
    let c = g.ctx();
    let Some(n) = c.nic.as_mut() else {
        return NDIS_STATUS_FAILURE;
    };
    match n.reset() {
        Ok(()) => NDIS_STATUS_SUCCESS,
        Err(e) => {
            log::error!("pvnet: reset failed: {e}");
            NDIS_STATUS_FAILURE
        }
    }
}

/// Indicate `code` with `buf` as its status buffer (lock not held).
///
/// # Safety
///
/// `handle` is NDIS' adapter handle.
unsafe fn indicate_status(handle: NDIS_HANDLE, code: NDIS_STATUS, buf: &mut [u8]) {
    let mut ind = NDIS_STATUS_INDICATION {
        Header: NDIS_OBJECT_HEADER {
            Type: NDIS_OBJECT_TYPE_STATUS_INDICATION,
            Revision: 1,
            Size: 0x70,
        },
        SourceHandle: handle,
        PortNumber: 0,
        StatusCode: code,
        Flags: 0,
        DestinationHandle: null_mut(),
        RequestId: null_mut(),
        StatusBuffer: buf.as_mut_ptr().cast(),
        StatusBufferSize: buf.len() as u32,
        Guid: [0; 16],
        NdisReserved: [null_mut(); 4],
    };
    // SAFETY: the indication and its buffer live for the call.
    unsafe { NdisMIndicateStatusEx(handle, &mut ind) };
}

unsafe extern "system" fn pnp_event(_ctx: NDIS_HANDLE, _event: *mut c_void) {
    // Surprise removal and power-profile events need nothing of us: the
    // device is gone or stays; halt follows a removal.
}

unsafe extern "system" fn cancel_send(_ctx: NDIS_HANDLE, _id: *mut c_void) {
    // Every NBL is completed within SendNetBufferLists: none to cancel.
}

unsafe extern "system" fn cancel_oid(_ctx: NDIS_HANDLE, _id: *mut c_void) {
    // Every OID request completes synchronously: none to cancel.
}

unsafe extern "system" fn oid_request(ctx: NDIS_HANDLE, req: *mut NDIS_OID_REQUEST) -> NDIS_STATUS {
    let mut offload = None;
    // SAFETY: our context.
    let (handle, st) = unsafe { oid_locked(ctx.cast(), req, &mut offload) };
    if let Some(mut b) = offload {
        // SAFETY: NDIS' adapter handle.
        unsafe { indicate_status(handle, NDIS_STATUS_TASK_OFFLOAD_CURRENT_CONFIG, &mut b) };
    }
    st
}

/// The OID request under the lock; the offloads to indicate, if they
/// changed, in `offload`.
///
/// # Safety
///
/// `cp` is our live context, `req` NDIS' request.
unsafe fn oid_locked(
    cp: *mut Ctx,
    req: *mut NDIS_OID_REQUEST,
    offload: &mut Option<[u8; pv_net_windows::nbl::OFFLOAD_BYTES]>,
) -> (NDIS_HANDLE, NDIS_STATUS) {
    // SAFETY: the caller's contract.
    let mut g = unsafe { Guard::lock(cp) };
    let c = g.ctx();
    // SAFETY: NDIS' request, ours until we return.
    let r = unsafe { &mut *req };
    let len = r.InformationBufferLength as usize;
    let buf: &mut [u8] = if r.InformationBuffer.is_null() || len == 0 {
        &mut []
    } else {
        // SAFETY: NDIS' buffer of `len` bytes, for the request's duration.
        unsafe { core::slice::from_raw_parts_mut(r.InformationBuffer, len) }
    };
    if let Some(n) = c.nic.as_mut() {
        c.adapter.core = n.stats();
    }
    let result = match r.RequestType {
        NDIS_REQUEST_QUERY_INFORMATION | NDIS_REQUEST_QUERY_STATISTICS => {
            c.adapter.query(r.Oid, buf).map(|n| (n, SetEffect::None))
        }
        NDIS_REQUEST_SET_INFORMATION => c.adapter.set(r.Oid, buf).map(|d| (d.read, d.effect)),
        _ => Err(pv_net_windows::OidError::NotSupported),
    };
    let handle = c.handle;
    let st = match result {
        Ok((n, effect)) => {
            r.BytesDone = n as u32;
            r.BytesNeeded = 0;
            if effect == SetEffect::OffloadChanged {
                *offload = Some(c.adapter.offload_bytes());
            }
            if let (SetEffect::RxMode { promisc, allmulti }, Some(nic)) = (effect, c.nic.as_mut()) {
                // Frames are filtered in software too (nbl::accept): a
                // device without CTRL_RX is fine.
                let _ = nic.set_promisc(promisc);
                let _ = nic.set_allmulti(allmulti);
            }
            NDIS_STATUS_SUCCESS
        }
        Err(e) => {
            r.BytesDone = 0;
            r.BytesNeeded = e.bytes_needed() as u32;
            e.ndis_status() as i32
        }
    };
    (handle, st)
}

/// Copy one NET_BUFFER into `frame`; its length.
///
/// # Safety
///
/// `nb` is a NET_BUFFER NDIS handed us, its MDLs locked.
unsafe fn copy_nb(nb: *mut NET_BUFFER, mtu: u16, frame: &mut [u8]) -> Result<usize, nbl::TxReject> {
    let mut lens = [0usize; MAX_PIECES];
    let mut mdls = [null_mut::<MDL>(); MAX_PIECES];
    let mut n = 0;
    // SAFETY: the caller's contract.
    let (mut m, first, len) =
        unsafe { ((*nb).CurrentMdl, (*nb).CurrentMdlOffset, (*nb).DataLength) };
    while !m.is_null() && n < MAX_PIECES {
        mdls[n] = m;
        // SAFETY: an MDL of the chain.
        lens[n] = unsafe { (*m).ByteCount } as usize;
        n += 1;
        // SAFETY: as above.
        m = unsafe { (*m).Next };
    }
    let mut pieces = [Piece {
        mdl: 0,
        offset: 0,
        len: 0,
    }; MAX_PIECES];
    let k = nbl::gather(&lens[..n], first as usize, len, mtu, &mut pieces)?;
    let mut at = 0;
    for p in &pieces[..k] {
        // SAFETY: a locked MDL of the chain.
        let va = unsafe { mdl_system_address(mdls[p.mdl]) };
        if va.is_null() {
            return Err(nbl::TxReject::ChainTooShort);
        }
        let dst = frame
            .get_mut(at..at + p.len)
            .ok_or(nbl::TxReject::TooLong)?;
        // SAFETY: `gather` put the piece inside the MDL's ByteCount bytes.
        dst.copy_from_slice(unsafe { core::slice::from_raw_parts(va.add(p.offset), p.len) });
        at += p.len;
    }
    Ok(at)
}

unsafe extern "system" fn send(
    ctx: NDIS_HANDLE,
    nbls: *mut NET_BUFFER_LIST,
    _port: u32,
    flags: u32,
) {
    let cp = ctx.cast::<Ctx>();
    let handle;
    {
        // SAFETY: our context.
        let mut g = unsafe { Guard::lock(cp) };
        let c = g.ctx();
        handle = c.handle;
        let mut l = nbls;
        while !l.is_null() {
            // SAFETY: NDIS' NBL chain, ours until completed.
            let status = unsafe { send_one(c, l) };
            // SAFETY: as above.
            unsafe {
                (*l).Status = status;
                l = (*l).Next;
            }
        }
        if let Some(n) = c.nic.as_mut() {
            let _ = n.flush_tx();
        }
    }
    let cflags = if flags & NDIS_SEND_FLAGS_DISPATCH_LEVEL != 0 {
        NDIS_SEND_COMPLETE_FLAGS_DISPATCH_LEVEL
    } else {
        0
    };
    // SAFETY: every NBL of the chain has its status; all go back at once.
    unsafe { NdisMSendNetBufferListsComplete(handle, nbls, cflags) };
}

/// Send every NET_BUFFER of `l`; the NBL's status.
///
/// # Safety
///
/// `l` is an NBL NDIS handed us; the lock is held.
unsafe fn send_one(c: &mut Ctx, l: *mut NET_BUFFER_LIST) -> NDIS_STATUS {
    let Ctx {
        nic,
        adapter,
        tx_frame,
        paused,
        ..
    } = c;
    let Some(nic) = nic.as_mut().filter(|_| !*paused) else {
        adapter.counters.tx_discards += 1;
        return NDIS_STATUS_PAUSED;
    };
    // SAFETY: the caller's contract.
    let info =
        TxCsumInfo::from_word(unsafe { (*l).NetBufferListInfo[TCP_IP_CHECKSUM_NBL_INFO] } as u64);
    let mut status = NDIS_STATUS_SUCCESS;
    // SAFETY: as above.
    let mut nb = unsafe { (*l).FirstNetBuffer };
    while !nb.is_null() {
        // SAFETY: a NET_BUFFER of the NBL.
        let sent = match unsafe { copy_nb(nb, adapter.mtu, tx_frame) } {
            Ok(len) => {
                let frame = &tx_frame[..len];
                match nbl::tx_csum(frame, info, &adapter.offload) {
                    Ok(csum) => {
                        if nic.tx_space() == 0 {
                            let _ = nic.poll_tx();
                        }
                        match nic.queue_tx(frame, csum) {
                            Ok(()) => {
                                adapter.counters.tx(frame);
                                Ok(())
                            }
                            Err(_) => {
                                adapter.counters.tx_discards += 1;
                                Err(NDIS_STATUS_RESOURCES)
                            }
                        }
                    }
                    Err(r) => Err(r.ndis_status() as i32),
                }
            }
            Err(r) => Err(r.ndis_status() as i32),
        };
        if let Err(st) = sent {
            if st != NDIS_STATUS_RESOURCES {
                adapter.counters.tx_errors += 1;
            }
            status = st;
        }
        // SAFETY: as above.
        nb = unsafe { (*nb).Next };
    }
    status
}

unsafe extern "system" fn return_nbls(ctx: NDIS_HANDLE, nbls: *mut NET_BUFFER_LIST, _flags: u32) {
    let cp = ctx.cast::<Ctx>();
    let (handle, complete_pause) = {
        // SAFETY: our context.
        let mut g = unsafe { Guard::lock(cp) };
        let c = g.ctx();
        let mut l = nbls;
        while !l.is_null() {
            // MiniportReserved[0] holds the slot index + 1.
            // SAFETY: one of our NBLs, returned by NDIS.
            let i = unsafe { (*l).MiniportReserved[0] } as usize;
            if let Some(s) = i.checked_sub(1).and_then(|i| c.rx.get_mut(i)) {
                s.lent = false;
            }
            // SAFETY: as above.
            unsafe {
                let next = (*l).Next;
                (*l).Next = null_mut();
                l = next;
            }
        }
        let done = c.pause_pending && !c.rx.iter().any(|s| s.lent);
        if done {
            c.pause_pending = false;
        }
        (c.handle, done)
    };
    if complete_pause {
        // SAFETY: a pause we returned PENDING for.
        unsafe { NdisMPauseComplete(handle) };
    }
}

/// `MiniportInterrupt`, at DIRQL, maybe on a line other devices share.
unsafe extern "system" fn isr_handler(
    ctx: NDIS_HANDLE,
    queue_dpc: *mut u8,
    _target_processors: *mut u32,
) -> u8 {
    // Raw pointers only: other processors hold references to the context
    // under its lock while this runs; `isr` and `pending` are not among
    // what they change.
    let cp = ctx.cast::<Ctx>();
    // SAFETY: the context outlives the registration (halt deregisters
    // before freeing it); `isr` was set before registering and points at
    // the ISR status byte of a mapping that outlives the registration. A
    // device register, read once: the read clears it.
    let bits = unsafe { ptr::read_volatile((*cp).isr) };
    let ours = pci::isr_is_ours(bits);
    if ours {
        // SAFETY: as above; an atomic, shared by design.
        unsafe { (*ptr::addr_of!((*cp).pending)).fetch_or(bits, Ordering::AcqRel) };
    }
    // SAFETY: NDIS' out parameter.
    unsafe { *queue_dpc = u8::from(ours) };
    u8::from(ours)
}

/// `MiniportInterruptDPC`, at DISPATCH_LEVEL: complete what the device
/// finished.
unsafe extern "system" fn interrupt_dpc(
    ctx: NDIS_HANDLE,
    _dpc_ctx: *mut c_void,
    _reserved1: *mut c_void,
    _reserved2: *mut c_void,
) {
    let cp = ctx.cast::<Ctx>();
    // SAFETY: as in the ISR. Queue and config bits need the same work
    // (the link is read each time), so the bits are only consumed.
    let _bits = unsafe { (*ptr::addr_of!((*cp).pending)).swap(0, Ordering::AcqRel) };
    // SAFETY: the context, live until halt deregisters the interrupt.
    unsafe { poll(cp) };
}

/// `MiniportDisableInterruptEx`. virtio PCI has no function-wide mask for
/// a line interrupt (only the PCI command register's Interrupt Disable,
/// which belongs to the bus driver); NDIS calls this only around its own
/// diagnostics, and the ISR already refuses what is not ours. Nothing to
/// do.
unsafe extern "system" fn disable_interrupt(_ctx: NDIS_HANDLE) {}

/// `MiniportEnableInterruptEx`: see [`disable_interrupt`].
unsafe extern "system" fn enable_interrupt(_ctx: NDIS_HANDLE) {}

/// Reclaim transmit slots, receive frames into our NBLs, indicate them.
///
/// # Safety
///
/// `cp` is our live context.
unsafe fn poll(cp: *mut Ctx) {
    let mut head: *mut NET_BUFFER_LIST = null_mut();
    let mut tail: *mut NET_BUFFER_LIST = null_mut();
    let mut count = 0u32;
    let link;
    let handle;
    {
        // SAFETY: the caller's contract.
        let mut g = unsafe { Guard::lock(cp) };
        let c = g.ctx();
        handle = c.handle;
        let Ctx {
            nic,
            adapter,
            rx,
            paused,
            ..
        } = c;
        let Some(nic) = nic.as_mut() else { return };
        let _ = nic.poll_tx();
        link = adapter.observe_link(nic.link_up());
        let res = nic.poll_rx(RX_BUDGET, &mut |f| {
            if *paused
                || !nbl::accept(
                    f.data,
                    adapter.packet_filter(),
                    &adapter.current_mac,
                    adapter.multicast(),
                )
            {
                adapter.counters.rx_discards += 1;
                return;
            }
            let Some((i, s)) = rx.iter_mut().enumerate().find(|(_, s)| !s.lent) else {
                adapter.counters.rx_discards += 1;
                return;
            };
            let Some(dst) = s.buf.get_mut(..f.data.len()) else {
                adapter.counters.rx_discards += 1;
                return;
            };
            dst.copy_from_slice(f.data);
            let word = nbl::rx_checksum_info(dst, f.csum, &adapter.offload);
            adapter.counters.rx(dst);
            s.lent = true;
            let l = s.nbl;
            // SAFETY: our NBL, not lent until indicated below.
            unsafe {
                (*(*l).FirstNetBuffer).DataLength = f.data.len();
                (*l).NetBufferListInfo[TCP_IP_CHECKSUM_NBL_INFO] = word as *mut c_void;
                (*l).MiniportReserved[0] = (i + 1) as *mut c_void;
                (*l).Next = null_mut();
                (*l).SourceHandle = handle;
                if tail.is_null() {
                    head = l;
                } else {
                    (*tail).Next = l;
                }
            }
            tail = l;
            count += 1;
        });
        if let Err(e) = res {
            if e.needs_reset() {
                log::error!("pvnet: device fault, resetting: {e}");
                let _ = nic.reset();
            }
        }
    }
    if let Some(mut b) = link {
        // SAFETY: NDIS' adapter handle.
        unsafe { indicate_status(handle, NDIS_STATUS_LINK_STATE, &mut b) };
    }
    if count > 0 {
        // SAFETY: a chain of our NBLs, each marked lent until returned.
        unsafe {
            NdisMIndicateReceiveNetBufferLists(
                handle,
                head,
                0,
                count,
                NDIS_RECEIVE_FLAGS_DISPATCH_LEVEL,
            )
        };
    }
}

// Keep the import of ffi used on every path (the status type).
const _: NTSTATUS = ffi::STATUS_SUCCESS;
