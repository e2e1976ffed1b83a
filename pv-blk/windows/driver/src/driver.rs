//! The StorPort miniport: entry points only. Every SCSI and SRB decision is
//! `pv-blk-windows`' ([`decide_srb`], [`Engine`]); the block protocol is
//! the `pv-blk` core's ([`VirtioBlk`] over virtio-drivers' PCI transport
//! and the validated `pv-virtq` queue). This file moves data between
//! StorPort's structures and those.
//!
//! Synchronisation: the miniport asks for `StorSynchronizeHalfDuplex`, so
//! StorPort calls `HwStartIo`, `HwInterrupt`, `HwResetBus` and
//! `HwAdapterControl` with the interrupt lock held: they never run beside
//! one another, and the adapter state needs no lock of its own.
//! `HwFindAdapter` and the passive initialisation run before any I/O.

use core::ffi::c_void;
use core::ptr::{self, NonNull};

use pv_blk::virtio::{VirtioBlk, VirtioBlkConfig};
use pv_blk::{BlockFrontend, IoBuf, ID_BYTES};
use pv_blk_windows::cdb::op;
use pv_blk_windows::srb::{self, status};
use pv_blk_windows::srb_ex::{self, SrbEx};
use pv_blk_windows::{
    decide_srb, Completion, Decision, Direction, Disk, Engine, Identity, Plan, ScsiRequest, Serial,
    SrbAction, SrbCtx, SrbIn,
};
use pv_windows::arena;
use pv_windows::ffi::{self, NTSTATUS};
use pv_windows::hal;
use pv_windows::pci::{MemoryRange, SnapshotConfig, CONFIG_BYTES};
use pv_windows::storport::{
    self as sp, adapter_control, HW_INITIALIZATION_DATA, PORT_CONFIGURATION_INFORMATION,
    SCSI_REQUEST_BLOCK, SCSI_SUPPORTED_CONTROL_TYPE_LIST,
};
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};

use crate::hal::DriverHal;
use crate::translate;

/// Largest read or write (also `MaximumTransferLength` and the bound given
/// to [`Disk::new`]).
pub const MAX_TRANSFER: u32 = 128 * 1024;
/// Ring entries asked of the device.
const QUEUE_SIZE: u16 = 128;
/// In crash-dump mode: fewer (the dump stack writes one request at a time).
const DUMP_QUEUE_SIZE: u16 = 32;
/// Bytes of the dump region the normal instance asks StorPort to reserve
/// for the dump instance (`RequestedDumpBufferSize`): queues, indirect
/// tables, request blocks and the driver's tables for a 32-entry queue
/// are about 48 KiB; the rest leaves room for device resets, which
/// allocate the queues again (the arena never frees).
const DUMP_BYTES: u32 = 256 * 1024;
/// GET_ID at start: polls of 10 µs before giving up (100 ms).
const GET_ID_POLLS: u32 = 10_000;
/// Leaving D0: polls of [`QUIESCE_STALL_US`] while outstanding requests
/// drain, and again while the flush runs (100 ms each at most).
const QUIESCE_POLLS: u32 = 100;
/// Stall between those polls, µs.
const QUIESCE_STALL_US: u32 = 1000;
/// BARs a PCI function has.
const BARS: usize = 6;
/// Most physically contiguous runs of one data buffer: one per page, and
/// one more when it does not start on a page.
const MAX_RUNS: usize = MAX_TRANSFER as usize / translate::PAGE + 1;

type Blk = VirtioBlk<DriverHal, PciTransport>;
/// An SRB as StorPort hands it over: a classic `SCSI_REQUEST_BLOCK` or a
/// `STORAGE_REQUEST_BLOCK` (SRB_EX); `Function` (byte 2) and `SrbStatus`
/// (byte 3) are at the same place in both, and tell them apart.
type Srb = *mut SCSI_REQUEST_BLOCK;

/// Largest SRB_EX read (`SrbLength`): StorPort's are a few hundred bytes.
const MAX_SRB_EX: usize = 4096;

// Our FFI header and the portable decoder agree on the SRB_EX facts.
const _: () = assert!(sp::SRB_SIGNATURE == srb_ex::SRB_SIGNATURE);
const _: () = assert!(
    core::mem::offset_of!(sp::STORAGE_REQUEST_BLOCK_HEADER, SrbFunction)
        == srb_ex::offset::SRB_FUNCTION
);
const _: () = assert!(
    core::mem::offset_of!(sp::STORAGE_REQUEST_BLOCK_HEADER, SrbFlags) == srb_ex::offset::SRB_FLAGS
);

/// The bytes of an SRB_EX (`SrbLength` of them), or `None` when `srb` is
/// a classic SRB.
///
/// # Safety
///
/// `srb` is an SRB StorPort gave this miniport, not completed yet: valid
/// for its header, and an SRB_EX for its `SrbLength` bytes.
unsafe fn ex_bytes<'a>(srb: Srb) -> Option<Result<&'a mut [u8], ()>> {
    let p = srb.cast::<u8>();
    // SAFETY: the caller's contract: the first 0x14 bytes are in every
    // SRB (classic ones are 0x58 long).
    let header = unsafe { core::slice::from_raw_parts(p, srb_ex::offset::SRB_FUNCTION) };
    let len = srb_ex::srb_length(header)?;
    if !(srb_ex::HEADER_BYTES..=MAX_SRB_EX).contains(&len) {
        return Some(Err(()));
    }
    // SAFETY: the caller's contract: an SRB_EX is valid for SrbLength
    // bytes, and StorPort serialises us, so no other reference to it is
    // live.
    Some(Ok(unsafe { core::slice::from_raw_parts_mut(p, len) }))
}

/// What the miniport needs of a request, from either SRB kind.
struct Req {
    input: SrbIn,
    ctx: SrbCtx,
    cdb: [u8; srb_ex::MAX_CDB],
    cdb_len: usize,
    direction: Direction,
    data: *mut u8,
    data_len: u32,
}

impl Req {
    fn cdb(&self) -> &[u8] {
        &self.cdb[..self.cdb_len]
    }
}

/// Read `srb` (either kind) into a [`Req`]; `Err`: a malformed SRB_EX.
///
/// # Safety
///
/// As [`ex_bytes`].
unsafe fn request(srb: Srb) -> Result<Req, srb_ex::SrbExError> {
    let mut cdb = [0u8; srb_ex::MAX_CDB];
    // SAFETY: the caller's contract.
    match unsafe { ex_bytes(srb) } {
        Some(Err(())) => Err(srb_ex::SrbExError::TooShort),
        Some(Ok(bytes)) => {
            let ex: SrbEx = srb_ex::parse(bytes)?;
            let c = ex.cdb();
            cdb[..c.len()].copy_from_slice(c);
            Ok(Req {
                input: ex.srb_in(),
                ctx: ex.ctx(),
                cdb,
                cdb_len: c.len(),
                direction: ex.direction(),
                data: ex.data_buffer as *mut u8,
                data_len: ex.data_transfer_length,
            })
        }
        None => {
            // SAFETY: the caller's contract: a classic SRB.
            let s = unsafe { &*srb };
            let c = translate::cdb(s);
            cdb[..c.len()].copy_from_slice(c);
            Ok(Req {
                input: translate::srb_in(s),
                ctx: translate::ctx(s),
                cdb,
                cdb_len: c.len(),
                direction: translate::direction(s),
                data: s.DataBuffer.cast(),
                data_len: s.DataTransferLength,
            })
        }
    }
}

/// The device extension StorPort allocates for us
/// (`DeviceExtensionSize`), written whole in `HwFindAdapter`.
struct Adapter {
    /// Found in `HwFindAdapter`, consumed by the bring-up.
    transport: Option<PciTransport>,
    blk: Option<Blk>,
    engine: Option<Engine<Srb>>,
    /// GET_ID's buffer: lives as long as the adapter, so a device that
    /// answers late writes nothing that was freed.
    id: [u8; ID_BYTES],
    /// Resets after the device broke the protocol.
    fault_resets: u32,
    /// Crash-dump / hibernation instance: no allocation but from the dump
    /// region, polled completion.
    dump: bool,
}

/// # Safety
///
/// `ext` is our device extension, written by `find_adapter`.
unsafe fn adapter<'a>(ext: *mut c_void) -> &'a mut Adapter {
    // SAFETY: the caller's contract; StorPort serialises the callers (see
    // the module docs), so no two references are live at once.
    unsafe { &mut *ext.cast::<Adapter>() }
}

/// Write `c` into the SRB and hand it back to StorPort.
///
/// # Safety
///
/// `srb` is an SRB StorPort gave this miniport and that is not completed
/// yet; its data and sense buffers are valid for their lengths
/// (`MapBuffers` = all buffers mapped).
unsafe fn finish(ext: *mut c_void, srb: Srb, c: &Completion) {
    if srb.is_null() {
        // The power-down flush's own request ([`power_down`]): no SRB.
        return;
    }
    // SAFETY: the caller's contract.
    if let Some(bytes) = unsafe { ex_bytes(srb) } {
        // SAFETY: the caller's contract; the buffers an SRB_EX names are
        // distinct from it.
        unsafe { finish_ex(bytes, c) };
        // SAFETY: as above.
        unsafe { sp::request_complete(ext, srb) };
        return;
    }
    // SAFETY: the caller's contract. The data and sense buffers are
    // distinct from the SRB itself.
    unsafe {
        let s = &mut *srb;
        let data = match (c.data.is_some(), s.DataBuffer.is_null()) {
            (true, false) => Some(core::slice::from_raw_parts_mut(
                s.DataBuffer.cast::<u8>(),
                s.DataTransferLength as usize,
            )),
            _ => None,
        };
        let sense = match s.SenseInfoBuffer.is_null() {
            false => Some(core::slice::from_raw_parts_mut(
                s.SenseInfoBuffer.cast::<u8>(),
                usize::from(s.SenseInfoBufferLength),
            )),
            true => None,
        };
        translate::apply(s, c, data, sense);
        sp::request_complete(ext, srb);
    }
}

/// Write `c` into an SRB_EX (its bytes, or `Err` when its length was out
/// of bounds: then only `SrbStatus`, which every SRB has at byte 3).
///
/// # Safety
///
/// As [`finish`].
unsafe fn finish_ex(bytes: Result<&mut [u8], ()>, c: &Completion) {
    let bytes = match bytes {
        Ok(b) => b,
        Err(()) => return,
    };
    let Ok(ex) = srb_ex::parse(bytes) else {
        // Refused at start: it carries no more than a status.
        bytes[srb_ex::offset::SRB_STATUS] = c.srb_status;
        return;
    };
    // SAFETY: the caller's contract: the data buffer is valid for
    // DataTransferLength bytes and the sense buffer for its room
    // (`MapBuffers` = all buffers mapped).
    let data = (c.data.is_some() && ex.data_buffer != 0).then(|| unsafe {
        core::slice::from_raw_parts_mut(ex.data_buffer as *mut u8, ex.data_transfer_length as usize)
    });
    let sense = ex
        .scsi
        .filter(|s| s.sense_buffer != 0 && s.sense_room > 0)
        // SAFETY: as above.
        .map(|s| unsafe {
            core::slice::from_raw_parts_mut(s.sense_buffer as *mut u8, usize::from(s.sense_room))
        });
    translate::apply_ex(bytes, &ex, c, data, sense);
}

/// Take the core's completions and complete the SRBs that ended; after a
/// protocol fault, reset the device (which completes the rest with
/// BUS_RESET) and tell StorPort.
///
/// # Safety
///
/// `ext` is our extension; called with the interrupt lock held.
unsafe fn service(ext: *mut c_void) {
    // SAFETY: the caller's contract.
    let a = unsafe { adapter(ext) };
    let (Some(blk), Some(engine)) = (a.blk.as_mut(), a.engine.as_mut()) else {
        return;
    };
    // SAFETY: every SRB the engine gives back is one StorPort gave us.
    let polled = engine.poll(blk, &mut |srb, c| unsafe { finish(ext, srb, &c) });
    if let Err(e) = polled {
        log::error!("virtio-blk: device fault ({e}): resetting it");
        a.fault_resets = a.fault_resets.saturating_add(1);
        // SAFETY: as above.
        if let Err(e) = engine.reset(blk, &mut |srb, c| unsafe { finish(ext, srb, &c) }) {
            log::error!("virtio-blk: the device will not reset: {e}");
        }
        // SAFETY: our extension.
        unsafe { sp::reset_detected(ext) };
    }
}

/// Reset the device, then complete everything outstanding with BUS_RESET
/// (the engine's order).
///
/// # Safety
///
/// As [`service`].
unsafe fn reset(ext: *mut c_void) -> bool {
    // SAFETY: the caller's contract.
    let a = unsafe { adapter(ext) };
    let (Some(blk), Some(engine)) = (a.blk.as_mut(), a.engine.as_mut()) else {
        return false;
    };
    // SAFETY: every SRB the engine gives back is one StorPort gave us.
    match engine.reset(blk, &mut |srb, c| unsafe { finish(ext, srb, &c) }) {
        Ok(()) => true,
        Err(e) => {
            log::error!("virtio-blk: bus reset: the device will not reset: {e}");
            false
        }
    }
}

/// Leaving D0 (`ScsiStopAdapter`): nothing StorPort gave us may be lost,
/// and nothing completed GOOD may sit only in the device's volatile cache
/// when the power goes.
///
/// 1. Drain: poll (with stalls, bounded) until no request is outstanding;
///    each one the device finishes completes as it ended.
/// 2. With a write cache, a FLUSH, polled the same way. A request that
///    ends while the flush runs is completed `SRB_STATUS_BUS_RESET`
///    instead of GOOD (the flush may not cover it): the class driver
///    retries it after D0, and a rewrite is harmless.
/// 3. Reset the device: what is still outstanding (a device that did not
///    answer in time) comes back BUS_RESET, to be retried; then status 0,
///    so the device touches no queue while powered down.
///
/// # Safety
///
/// As [`service`].
unsafe fn power_down(ext: *mut c_void) {
    // SAFETY: the caller's contract.
    let a = unsafe { adapter(ext) };
    if let (Some(blk), Some(engine)) = (a.blk.as_mut(), a.engine.as_mut()) {
        for _ in 0..QUIESCE_POLLS {
            if engine.pending() == 0 {
                break;
            }
            // SAFETY: every SRB the engine gives back is one StorPort gave us.
            if engine
                .poll(blk, &mut |srb, c| unsafe { finish(ext, srb, &c) })
                .is_err()
            {
                break;
            }
            // SAFETY: a plain delay; any IRQL.
            unsafe { sp::StorPortStallExecution(QUIESCE_STALL_US) };
        }
        if engine.disk().write_cache() {
            let mut flushed = None;
            let ctx = SrbCtx::default();
            // SAFETY: a flush has no buffers; the null SRB is ours (finish
            // skips it).
            match unsafe { engine.start(blk, ptr::null_mut(), ctx, Plan::flush(), &[]) } {
                Ok(()) => {
                    for _ in 0..QUIESCE_POLLS {
                        // SAFETY: as above; a real SRB ending now goes
                        // back for a retry (see above).
                        let polled = engine.poll(blk, &mut |srb, c| {
                            if srb.is_null() {
                                flushed = Some(c);
                            } else {
                                let retry = Completion::status(status::BUS_RESET);
                                unsafe { finish(ext, srb, &retry) };
                            }
                        });
                        if flushed.is_some() || polled.is_err() {
                            break;
                        }
                        // SAFETY: a plain delay.
                        unsafe { sp::StorPortStallExecution(QUIESCE_STALL_US) };
                    }
                }
                Err((_, c)) => flushed = Some(c),
            }
            if flushed.is_none_or(|c| c.srb_status != status::SUCCESS) {
                log::error!("virtio-blk: the flush before D3 did not complete: {flushed:?}");
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { reset(ext) };
    // SAFETY: as above.
    let a = unsafe { adapter(ext) };
    if let Some(blk) = a.blk.as_mut() {
        blk.transport_mut().set_status(DeviceStatus::empty());
    }
}

/// Submit `plan` for `srb` (read into `r`), or complete it at once when it
/// cannot go.
///
/// # Safety
///
/// As [`finish`].
unsafe fn start_plan(ext: *mut c_void, srb: Srb, r: &Req, plan: Plan) {
    // SAFETY: the caller's contract.
    let a = unsafe { adapter(ext) };
    let (Some(blk), Some(engine)) = (a.blk.as_mut(), a.engine.as_mut()) else {
        // SAFETY: the caller's contract.
        unsafe { finish(ext, srb, &Completion::status(status::NO_DEVICE)) };
        return;
    };
    let ctx = r.ctx;
    // The data buffer, cut where its pages stop being physically
    // contiguous: each run is shared with the device in place, so the I/O
    // path allocates nothing (no bounce). A buffer missing or in too many
    // runs leaves the list empty, and the engine refuses the length
    // mismatch with an internal-failure sense.
    let mut storage = [IoBuf::new(NonNull::dangling(), 0); MAX_RUNS];
    let mut runs = 0;
    let data = r.data;
    if plan.parts().first().is_some_and(|p| p.has_data()) && !data.is_null() {
        let mut spans = [(0usize, 0usize); MAX_RUNS];
        // SAFETY: MmGetPhysicalAddress takes any resident kernel address;
        // the mapped data buffer is locked down for the SRB's lifetime.
        let phys = |va: usize| unsafe { ffi::MmGetPhysicalAddress(va as *mut c_void) as u64 };
        if let Some(n) =
            translate::contiguous_runs(data as usize, plan.transfer as usize, phys, &mut spans)
        {
            for (b, &(va, len)) in storage.iter_mut().zip(&spans[..n]) {
                if let Some(p) = NonNull::new(va as *mut u8) {
                    *b = IoBuf::new(p, len);
                    runs += 1;
                }
            }
        }
    }
    let bufs = &storage[..runs];
    // SAFETY: the SRB's data buffer is this SRB's until we complete it,
    // and the engine gives the SRB back only once the device is done with
    // the buffer (completion, or a reset that succeeded).
    if let Err((srb, c)) = unsafe { engine.start(blk, srb, ctx, plan, bufs) } {
        // SAFETY: the caller's contract.
        unsafe { finish(ext, srb, &c) };
    }
}

/// EXECUTE_SCSI: decode the CDB of `srb` (read into `r`) and act on the
/// decision.
///
/// # Safety
///
/// As [`finish`].
unsafe fn execute(ext: *mut c_void, srb: Srb, r: &Req) {
    // SAFETY: the caller's contract.
    let a = unsafe { adapter(ext) };
    let Some(engine) = a.engine.as_ref() else {
        // SAFETY: the caller's contract.
        unsafe { finish(ext, srb, &Completion::status(status::NO_DEVICE)) };
        return;
    };
    let cdb = r.cdb();
    let data_len = r.data_len;
    // UNMAP and WRITE SAME read their parameter data out of the data
    // buffer: the initiator's memory (the class driver's), not the
    // device's, so it is read in place rather than bounced.
    let params = matches!(
        cdb.first(),
        Some(&op::UNMAP | &op::WRITE_SAME_10 | &op::WRITE_SAME_16)
    );
    let data_out: &[u8] = if params && !r.data.is_null() {
        // SAFETY: the data buffer is valid for DataTransferLength bytes
        // (the caller's contract).
        unsafe { core::slice::from_raw_parts(r.data, data_len as usize) }
    } else {
        &[]
    };
    let req = ScsiRequest {
        cdb,
        data_len,
        direction: r.direction,
        data_out,
    };
    let ctx = r.ctx;
    match engine.decide(&req) {
        // SAFETY: the caller's contract.
        Decision::Io(plan) => unsafe { start_plan(ext, srb, r, plan) },
        d => {
            let c = srb::immediate(&d, ctx.sense_room, ctx.flags)
                .unwrap_or_else(|| Completion::status(status::ERROR));
            // SAFETY: the caller's contract.
            unsafe { finish(ext, srb, &c) };
        }
    }
}

unsafe extern "system" fn hw_start_io(ext: *mut c_void, srb: Srb) -> u8 {
    // SAFETY: StorPort calls us with our extension and an SRB it owns us.
    let a = unsafe { adapter(ext) };
    // SAFETY: as above.
    let r = match unsafe { request(srb) } {
        Ok(r) => r,
        Err(e) => {
            log::warn!("virtio-blk: malformed SRB_EX refused: {e}");
            // SAFETY: as above.
            unsafe {
                finish(ext, srb, &Completion::status(status::INVALID_REQUEST));
                service(ext);
            }
            return 1;
        }
    };
    let input = r.input;
    let write_cache = a.engine.as_ref().is_some_and(|e| e.disk().write_cache());
    // SAFETY: as above for every call below.
    unsafe {
        match decide_srb(&input, write_cache) {
            SrbAction::ExecuteScsi => execute(ext, srb, &r),
            SrbAction::Flush => start_plan(ext, srb, &r, Plan::flush()),
            SrbAction::Reset => {
                let st = if reset(ext) {
                    status::SUCCESS
                } else {
                    status::ERROR
                };
                finish(ext, srb, &Completion::status(st));
            }
            SrbAction::Complete(st) => finish(ext, srb, &Completion::status(st)),
            SrbAction::Capabilities {
                removable,
                surprise_removal_ok,
            } => {
                let filled = !r.data.is_null()
                    && translate::capabilities(
                        core::slice::from_raw_parts_mut(r.data, r.data_len as usize),
                        removable,
                        surprise_removal_ok,
                    );
                // The capabilities are data produced: say how much.
                let c = if filled {
                    Completion::good(translate::DEVICE_CAPABILITIES_EX_BYTES as u32)
                } else {
                    Completion::status(status::ERROR)
                };
                finish(ext, srb, &c);
            }
        }
        // Polled completion as well: what the device finished already
        // goes back now (and in crash-dump mode there is no interrupt).
        service(ext);
    }
    1
}

unsafe extern "system" fn hw_interrupt(ext: *mut c_void) -> u8 {
    // SAFETY: StorPort calls us with our extension.
    let a = unsafe { adapter(ext) };
    let Some(blk) = a.blk.as_mut() else {
        return 0;
    };
    // Reading the ISR acknowledges it; zero: not our interrupt (the line
    // may be shared).
    if blk.transport_mut().ack_interrupt().is_empty() {
        return 0;
    }
    // SAFETY: as above, with the interrupt lock held.
    unsafe { service(ext) };
    1
}

unsafe extern "system" fn hw_reset_bus(ext: *mut c_void, _path_id: u32) -> u8 {
    // SAFETY: StorPort calls us with our extension.
    u8::from(unsafe { reset(ext) })
}

unsafe extern "system" fn hw_adapter_control(
    ext: *mut c_void,
    control: u32,
    parameters: *mut c_void,
) -> u32 {
    // SAFETY: StorPort calls us with our extension.
    let a = unsafe { adapter(ext) };
    match control {
        adapter_control::QUERY_SUPPORTED_CONTROL_TYPES => {
            let list = parameters.cast::<SCSI_SUPPORTED_CONTROL_TYPE_LIST>();
            // SAFETY: StorPort passes a list with MaxControlType entries.
            unsafe {
                let max = (*list).MaxControlType;
                let types = ptr::addr_of_mut!((*list).SupportedTypeList).cast::<u8>();
                for t in [
                    adapter_control::QUERY_SUPPORTED_CONTROL_TYPES,
                    adapter_control::STOP_ADAPTER,
                    adapter_control::RESTART_ADAPTER,
                ] {
                    if t < max {
                        *types.add(t as usize) = 1;
                    }
                }
            }
            sp::SCSI_ADAPTER_CONTROL_SUCCESS
        }
        // Leaving D0: drain, flush, reset, stop ([`power_down`]).
        adapter_control::STOP_ADAPTER => {
            // SAFETY: our extension, interrupt lock held.
            unsafe { power_down(ext) };
            sp::SCSI_ADAPTER_CONTROL_SUCCESS
        }
        // Back in D0: the core's reset brings the queues up fresh.
        adapter_control::RESTART_ADAPTER => {
            let (Some(blk), Some(engine)) = (a.blk.as_mut(), a.engine.as_mut()) else {
                return sp::SCSI_ADAPTER_CONTROL_UNSUCCESSFUL;
            };
            // SAFETY: every SRB the engine gives back is one StorPort gave us.
            match engine.reset(blk, &mut |srb, c| unsafe { finish(ext, srb, &c) }) {
                Ok(()) => {
                    let info = blk.info();
                    let disk = Disk::new(info, engine.disk().identity, max_transfer(&info));
                    engine.set_disk(disk);
                    sp::SCSI_ADAPTER_CONTROL_SUCCESS
                }
                Err(_) => sp::SCSI_ADAPTER_CONTROL_UNSUCCESSFUL,
            }
        }
        _ => sp::SCSI_ADAPTER_CONTROL_UNSUCCESSFUL,
    }
}

/// The unit serial from virtio-blk GET_ID, polled (start runs before
/// interrupts matter). A device that does not answer in time is reset, so
/// it cannot write `id` later.
fn read_serial(blk: &mut Blk, id: &mut [u8; ID_BYTES]) -> Option<Serial> {
    // SAFETY: `id` lives in the adapter, as long as the device; it is not
    // read until the token completes or the device was reset.
    let token = unsafe { blk.get_id(IoBuf::from_slice(id)) }.ok()?;
    let mut answer = None;
    for _ in 0..GET_ID_POLLS {
        let polled = blk.poll_completions(&mut |t, r| {
            if t == token {
                answer = Some(r.is_ok());
            }
        });
        if answer.is_some() || polled.is_err() {
            break;
        }
        // SAFETY: a plain delay.
        unsafe { sp::StorPortStallExecution(10) };
    }
    match answer {
        Some(true) => Serial::from_get_id(id),
        Some(false) => None,
        None => {
            let _ = blk.reset(&mut |_, _| {});
            None
        }
    }
}

/// The largest transfer the device takes in one request: every run of a
/// buffer of that size (at worst one per page, plus one) must fit the
/// core's segments.
fn max_transfer(info: &pv_blk::DeviceInfo) -> u32 {
    let pages = info.max_segments.saturating_sub(1);
    MAX_TRANSFER.min(pages.saturating_mul(translate::PAGE as u32))
}

/// Bring the device up: features, queues, DRIVER_OK (the core), the
/// serial, the disk and the engine.
fn bring_up(a: &mut Adapter) -> bool {
    let Some(transport) = a.transport.take() else {
        return a.blk.is_some();
    };
    let cfg = VirtioBlkConfig {
        queue_size: if a.dump { DUMP_QUEUE_SIZE } else { QUEUE_SIZE },
        ..VirtioBlkConfig::default()
    };
    let mut blk = match Blk::new(transport, cfg) {
        Ok(b) => b,
        Err(e) => {
            log::error!("virtio-blk: bring-up: {e}");
            return false;
        }
    };
    let serial = read_serial(&mut blk, &mut a.id);
    let identity = Identity {
        serial,
        ..Identity::default()
    };
    let info = blk.info();
    let disk = Disk::new(info, identity, max_transfer(&info));
    a.engine = Some(Engine::new(disk, info.queue_depth as usize));
    a.blk = Some(blk);
    log::info!(
        "virtio-blk: {} sectors of 512 bytes, block {} bytes, queue depth {}",
        info.capacity_sectors,
        info.block_size,
        info.queue_depth
    );
    true
}

unsafe extern "system" fn hw_passive_initialize(ext: *mut c_void) -> u8 {
    // SAFETY: StorPort calls us with our extension, before any I/O.
    u8::from(bring_up(unsafe { adapter(ext) }))
}

unsafe extern "system" fn hw_initialize(ext: *mut c_void) -> u8 {
    // The bring-up allocates DMA memory: at PASSIVE_LEVEL when StorPort
    // allows it (HwInitialize itself runs at DIRQL). The dump instance
    // allocates only from its region, here.
    // SAFETY: our extension, called from HwInitialize.
    if unsafe { adapter(ext) }.dump {
        // SAFETY: as above.
        return unsafe { hw_passive_initialize(ext) };
    }
    // SAFETY: as above.
    if unsafe { sp::enable_passive_initialization(ext, hw_passive_initialize) } {
        return 1;
    }
    // SAFETY: as above.
    unsafe { hw_passive_initialize(ext) }
}

unsafe extern "system" fn hw_find_adapter(
    ext: *mut c_void,
    _hw_context: *mut c_void,
    _bus_information: *mut c_void,
    _argument_string: *mut u8,
    config: *mut PORT_CONFIGURATION_INFORMATION,
    _again: *mut u8,
) -> u32 {
    // SAFETY: StorPort gives us our extension (DeviceExtensionSize bytes,
    // pool-aligned) to initialise, and its configuration to complete.
    let (a, cfg) = unsafe {
        ptr::write(
            ext.cast::<Adapter>(),
            Adapter {
                transport: None,
                blk: None,
                engine: None,
                id: [0; ID_BYTES],
                fault_resets: 0,
                dump: false,
            },
        );
        (adapter(ext), &mut *config)
    };
    if cfg.DumpMode != 0 {
        // Crash-dump and hibernation: everything the instance needs comes
        // from the region the normal instance asked StorPort to reserve.
        let r = cfg.DumpRegion;
        let len = r.Length as usize;
        if r.VirtualBase.is_null() || len < DUMP_BYTES as usize / 2 {
            return sp::SP_RETURN_NOT_FOUND;
        }
        // SAFETY: StorPort's dump region is ours, `len` bytes; zeroed
        // before anything is carved from it.
        unsafe { ptr::write_bytes(r.VirtualBase, 0, len) };
        if !arena::DUMP.install(r.VirtualBase as usize, r.PhysicalBase as u64, len) {
            return sp::SP_RETURN_ERROR;
        }
        a.dump = true;
    } else {
        cfg.RequestedDumpBufferSize = DUMP_BYTES;
    }
    let mut bytes = [0u8; CONFIG_BYTES];
    // SAFETY: `bytes` is writable for its length.
    let got = unsafe {
        sp::StorPortGetBusData(
            ext,
            sp::PCI_CONFIGURATION,
            cfg.SystemIoBusNumber,
            cfg.SlotNumber,
            bytes.as_mut_ptr().cast(),
            CONFIG_BYTES as u32,
        )
    };
    if got as usize != CONFIG_BYTES {
        log::error!("virtio-blk: PCI config space: {got} bytes");
        return sp::SP_RETURN_NOT_FOUND;
    }
    let mut ranges = [MemoryRange::default(); BARS];
    let mut n = 0;
    let count = (cfg.NumberOfAccessRanges as usize).min(BARS);
    for i in 0..count {
        // SAFETY: StorPort's access range array holds NumberOfAccessRanges
        // entries.
        let r = unsafe { *cfg.AccessRanges.add(i) };
        if r.RangeInMemory == 0 || r.RangeLength == 0 {
            continue;
        }
        // SAFETY: a memory range StorPort assigned to this adapter.
        let virt = unsafe {
            sp::StorPortGetDeviceBase(
                ext,
                cfg.AdapterInterfaceType,
                cfg.SystemIoBusNumber,
                r.RangeStart,
                r.RangeLength,
                0,
            )
        };
        if virt.is_null() {
            return sp::SP_RETURN_ERROR;
        }
        // virtio-drivers asks by bus address (what the BAR holds).
        if !hal::register_mmio(r.RangeStart as u64, u64::from(r.RangeLength), virt) {
            return sp::SP_RETURN_ERROR;
        }
        ranges[n] = MemoryRange {
            raw: r.RangeStart as u64,
            translated: r.RangeStart as u64,
            len: u64::from(r.RangeLength),
        };
        n += 1;
    }
    let function = DeviceFunction {
        bus: 0,
        device: 0,
        function: 0,
    };
    let mut root = PciRoot::new(SnapshotConfig::new(function, bytes, &ranges[..n]));
    let transport = match PciTransport::new::<DriverHal, _>(&mut root, function) {
        Ok(t) => t,
        Err(e) => {
            log::error!("virtio-blk: not a virtio PCI device: {e}");
            return sp::SP_RETURN_NOT_FOUND;
        }
    };
    if transport.device_type() != DeviceType::Block {
        return sp::SP_RETURN_NOT_FOUND;
    }
    a.transport = Some(transport);
    cfg.MaximumTransferLength = MAX_TRANSFER;
    cfg.NumberOfPhysicalBreaks = MAX_TRANSFER / 4096 + 1;
    cfg.AlignmentMask = 0x3;
    cfg.NumberOfBuses = 1;
    cfg.MaximumNumberOfTargets = 1;
    cfg.MaximumNumberOfLogicalUnits = 1;
    cfg.ScatterGather = 1;
    cfg.Master = 1;
    cfg.CachesData = 1;
    cfg.MapBuffers = sp::STOR_MAP_ALL_BUFFERS_INCLUDING_READ_WRITE;
    cfg.Dma64BitAddresses = sp::SCSI_DMA64_MINIPORT_SUPPORTED;
    cfg.SynchronizationModel = sp::STOR_SYNCHRONIZE_HALF_DUPLEX;
    // SRB_EX: StorPort sends STORAGE_REQUEST_BLOCKs (the miniport still
    // reads classic SRBs, should any come).
    cfg.SrbType = sp::SRB_TYPE_STORAGE_REQUEST_BLOCK;
    cfg.AddressType = sp::STOR_ADDRESS_TYPE_BTL8;
    sp::SP_RETURN_FOUND
}

/// The driver's entry point (`/ENTRY:DriverEntry`): hand StorPort our
/// callbacks.
///
/// # Safety
///
/// Called once by the I/O manager (or the dump stack) with its arguments.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn DriverEntry(
    driver: *mut c_void,
    registry_path: *mut c_void,
) -> NTSTATUS {
    pv_windows::logger::init(log::LevelFilter::Info);
    let mut init = HW_INITIALIZATION_DATA::zeroed();
    init.HwInitializationDataSize = core::mem::size_of::<HW_INITIALIZATION_DATA>() as u32;
    init.AdapterInterfaceType = sp::PCI_BUS;
    init.HwInitialize = Some(hw_initialize);
    init.HwStartIo = Some(hw_start_io);
    init.HwInterrupt = Some(hw_interrupt);
    init.HwFindAdapter = Some(hw_find_adapter);
    init.HwResetBus = Some(hw_reset_bus);
    init.HwAdapterControl = Some(hw_adapter_control);
    init.DeviceExtensionSize = core::mem::size_of::<Adapter>() as u32;
    init.NumberOfAccessRanges = BARS as u32;
    init.MapBuffers = sp::STOR_MAP_ALL_BUFFERS_INCLUDING_READ_WRITE;
    init.NeedPhysicalAddresses = 1;
    init.TaggedQueuing = 1;
    init.AutoRequestSense = 1;
    init.MultipleRequestPerLu = 1;
    init.SrbTypeFlags =
        sp::SRB_TYPE_FLAG_SCSI_REQUEST_BLOCK | sp::SRB_TYPE_FLAG_STORAGE_REQUEST_BLOCK;
    // SAFETY: StorPort copies what it needs from `init` during the call.
    let st = unsafe { sp::StorPortInitialize(driver, registry_path, &mut init, ptr::null_mut()) };
    log::info!("pv-blk StorPort miniport: StorPortInitialize {st:#x}");
    st as NTSTATUS
}
