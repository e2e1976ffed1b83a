//! Our bindings of StorPort (x86-64): the miniport-facing types of the
//! WDK's `storport.h` and `srb.h` (10.0.26100) the pvdrivers block miniport
//! uses, with `const` asserts of their size and of every field offset we
//! use, the functions it calls, imported by name from `storport.sys`
//! (`raw-dylib`, curated in `pv-windows/exports/storport.sys.txt`), and the
//! inline wrappers of `storport.h` over the variadic `StorPortNotification`
//! and `StorPortExtendedFunction` reproduced as Rust functions.
//!
//! Types StorPort hands us and we fill in (`HW_INITIALIZATION_DATA`,
//! `PORT_CONFIGURATION_INFORMATION`, `SCSI_REQUEST_BLOCK`, `ACCESS_RANGE`)
//! are declared whole, with their full size asserted. Of the
//! `STORAGE_REQUEST_BLOCK` (SRB_EX) only the fixed header is declared: the
//! miniport takes SRB_EX (`SRB_TYPE_FLAG_STORAGE_REQUEST_BLOCK`), but reads
//! it as bytes through `pv_blk_windows::srb_ex`, which checks every offset
//! and length in it (host-tested and fuzzed) before anything is used.
//!
//! The layout facts come from the WDK headers as published (read, not
//! copied); on Windows CI they are meant to be diffed against `wdk-sys`'
//! Storage bindings, which do not exist off Windows (see the crate docs).

#![allow(non_camel_case_types, non_snake_case)]

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

/// `STOR_PHYSICAL_ADDRESS` (`PHYSICAL_ADDRESS`, a `LARGE_INTEGER`).
pub type STOR_PHYSICAL_ADDRESS = i64;

/// `INTERFACE_TYPE` (`wdm.h`) value `PCIBus`.
pub const PCI_BUS: u32 = 5;
/// `BUS_DATA_TYPE` (`wdm.h`) value `PCIConfiguration`
/// (`StorPortGetBusData`'s `BusDataType`).
pub const PCI_CONFIGURATION: u32 = 4;
/// `KINTERRUPT_MODE` `LevelSensitive`.
pub const LEVEL_SENSITIVE: u32 = 0;

/// `HwFindAdapter` results (`storport.h`).
pub const SP_RETURN_NOT_FOUND: u32 = 0;
/// The adapter was found and configured.
pub const SP_RETURN_FOUND: u32 = 1;
/// An error occurred.
pub const SP_RETURN_ERROR: u32 = 2;
/// Wrong configuration information.
pub const SP_RETURN_BAD_CONFIG: u32 = 3;

/// `STOR_MAP_ALL_BUFFERS_INCLUDING_READ_WRITE` (`HW_INITIALIZATION_DATA.MapBuffers`,
/// Windows 8 and later): every SRB's `DataBuffer` is a system virtual
/// address.
pub const STOR_MAP_ALL_BUFFERS_INCLUDING_READ_WRITE: u8 = 3;
/// `SRB_TYPE_FLAG_SCSI_REQUEST_BLOCK`: the miniport takes classic SRBs.
pub const SRB_TYPE_FLAG_SCSI_REQUEST_BLOCK: u32 = 0x1;
/// `SRB_TYPE_FLAG_STORAGE_REQUEST_BLOCK`: the miniport takes SRB_EX.
pub const SRB_TYPE_FLAG_STORAGE_REQUEST_BLOCK: u32 = 0x2;
/// `SRB_TYPE_SCSI_REQUEST_BLOCK` (`PORT_CONFIGURATION_INFORMATION.SrbType`).
pub const SRB_TYPE_SCSI_REQUEST_BLOCK: u8 = 0;
/// `SRB_TYPE_STORAGE_REQUEST_BLOCK`: StorPort sends SRB_EX.
pub const SRB_TYPE_STORAGE_REQUEST_BLOCK: u8 = 1;
/// `STOR_ADDRESS_TYPE_BTL8`.
pub const STOR_ADDRESS_TYPE_BTL8: u8 = 0;
/// `SCSI_DMA64_MINIPORT_SUPPORTED` (`Dma64BitAddresses`).
pub const SCSI_DMA64_MINIPORT_SUPPORTED: u8 = 0x01;
/// `StorSynchronizeHalfDuplex`: StorPort calls `HwStartIo` with the
/// interrupt lock held, so it never runs beside `HwInterrupt`.
pub const STOR_SYNCHRONIZE_HALF_DUPLEX: u32 = 0;
/// `DUMP_MODE_CRASH` (`PORT_CONFIGURATION_INFORMATION.DumpMode`).
pub const DUMP_MODE_CRASH: u8 = 0x01;
/// `DUMP_MODE_HIBER`.
pub const DUMP_MODE_HIBER: u8 = 0x02;

/// `SCSI_NOTIFICATION_TYPE` values (`storport.h`).
pub mod notification {
    /// `RequestComplete`: the SRB is done.
    pub const REQUEST_COMPLETE: u32 = 0;
    /// `NextRequest` (StorPort ignores it; kept for completeness).
    pub const NEXT_REQUEST: u32 = 1;
    /// `ResetDetected`.
    pub const RESET_DETECTED: u32 = 3;
    /// `EnablePassiveInitialization`.
    pub const ENABLE_PASSIVE_INITIALIZATION: u32 = 0x1000;
}

/// `STORPORT_FUNCTION_CODE` values (`storport.h`) used through
/// `StorPortExtendedFunction`.
pub mod ext_function {
    /// `ExtFunctionAllocatePool`.
    pub const ALLOCATE_POOL: u32 = 0;
    /// `ExtFunctionFreePool`.
    pub const FREE_POOL: u32 = 1;
}

/// `STOR_STATUS_SUCCESS`.
pub const STOR_STATUS_SUCCESS: u32 = 0;

/// `SCSI_ADAPTER_CONTROL_TYPE` values (`storport.h`).
pub mod adapter_control {
    /// `ScsiQuerySupportedControlTypes`.
    pub const QUERY_SUPPORTED_CONTROL_TYPES: u32 = 0;
    /// `ScsiStopAdapter` (leaving D0).
    pub const STOP_ADAPTER: u32 = 1;
    /// `ScsiRestartAdapter` (back to D0).
    pub const RESTART_ADAPTER: u32 = 2;
    /// `ScsiSetBootConfig`.
    pub const SET_BOOT_CONFIG: u32 = 3;
    /// `ScsiSetRunningConfig`.
    pub const SET_RUNNING_CONFIG: u32 = 4;
}

/// `SCSI_ADAPTER_CONTROL_STATUS` `ScsiAdapterControlSuccess`.
pub const SCSI_ADAPTER_CONTROL_SUCCESS: u32 = 0;
/// `ScsiAdapterControlUnsuccessful`.
pub const SCSI_ADAPTER_CONTROL_UNSUCCESSFUL: u32 = 1;

/// `SCSI_SUPPORTED_CONTROL_TYPE_LIST` (`storport.h`): `MaxControlType`,
/// then one BOOLEAN per type the miniport sets.
#[repr(C)]
#[derive(Debug)]
pub struct SCSI_SUPPORTED_CONTROL_TYPE_LIST {
    pub MaxControlType: u32,
    /// `SupportedTypeList[ANYSIZE_ARRAY]`: `MaxControlType` entries follow.
    pub SupportedTypeList: [u8; 1],
}
const _: () = assert!(offset_of!(SCSI_SUPPORTED_CONTROL_TYPE_LIST, SupportedTypeList) == 4);

/// `HW_INITIALIZE` / `HW_STARTIO` / ... callback types (`storport.h`).
pub type HwInitializeFn = unsafe extern "system" fn(ext: *mut c_void) -> u8;
/// `HW_STARTIO`.
pub type HwStartIoFn =
    unsafe extern "system" fn(ext: *mut c_void, srb: *mut SCSI_REQUEST_BLOCK) -> u8;
/// `HW_INTERRUPT`.
pub type HwInterruptFn = unsafe extern "system" fn(ext: *mut c_void) -> u8;
/// `HW_FIND_ADAPTER`.
pub type HwFindAdapterFn = unsafe extern "system" fn(
    ext: *mut c_void,
    hw_context: *mut c_void,
    bus_information: *mut c_void,
    argument_string: *mut u8,
    config: *mut PORT_CONFIGURATION_INFORMATION,
    again: *mut u8,
) -> u32;
/// `HW_RESET_BUS`.
pub type HwResetBusFn = unsafe extern "system" fn(ext: *mut c_void, path_id: u32) -> u8;
/// `HW_ADAPTER_CONTROL`.
pub type HwAdapterControlFn =
    unsafe extern "system" fn(ext: *mut c_void, control: u32, parameters: *mut c_void) -> u32;
/// `HW_BUILDIO`.
pub type HwBuildIoFn =
    unsafe extern "system" fn(ext: *mut c_void, srb: *mut SCSI_REQUEST_BLOCK) -> u8;
/// `HW_PASSIVE_INITIALIZE_ROUTINE`.
pub type HwPassiveInitializeFn = unsafe extern "system" fn(ext: *mut c_void) -> u8;

/// `HW_INITIALIZATION_DATA` (`storport.h`), given to `StorPortInitialize`.
#[repr(C)]
#[derive(Debug)]
pub struct HW_INITIALIZATION_DATA {
    pub HwInitializationDataSize: u32,
    /// `INTERFACE_TYPE`.
    pub AdapterInterfaceType: u32,
    pub HwInitialize: Option<HwInitializeFn>,
    pub HwStartIo: Option<HwStartIoFn>,
    pub HwInterrupt: Option<HwInterruptFn>,
    pub HwFindAdapter: Option<HwFindAdapterFn>,
    pub HwResetBus: Option<HwResetBusFn>,
    pub HwDmaStarted: *mut c_void,
    pub HwAdapterState: *mut c_void,
    pub DeviceExtensionSize: u32,
    pub SpecificLuExtensionSize: u32,
    pub SrbExtensionSize: u32,
    pub NumberOfAccessRanges: u32,
    pub Reserved: *mut c_void,
    pub MapBuffers: u8,
    pub NeedPhysicalAddresses: u8,
    pub TaggedQueuing: u8,
    pub AutoRequestSense: u8,
    pub MultipleRequestPerLu: u8,
    pub ReceiveEvent: u8,
    pub VendorIdLength: u16,
    pub VendorId: *mut c_void,
    /// Union of `ReservedUshort` and `PortVersionFlags`.
    pub PortVersionFlags: u16,
    pub DeviceIdLength: u16,
    pub DeviceId: *mut c_void,
    pub HwAdapterControl: Option<HwAdapterControlFn>,
    pub HwBuildIo: Option<HwBuildIoFn>,
    pub HwFreeAdapterResources: *mut c_void,
    pub HwProcessServiceRequest: *mut c_void,
    pub HwCompleteServiceIrp: *mut c_void,
    pub HwInitializeTracing: *mut c_void,
    pub HwCleanupTracing: *mut c_void,
    pub HwTracingEnabled: *mut c_void,
    pub FeatureSupport: u32,
    pub SrbTypeFlags: u32,
    pub AddressTypeFlags: u32,
    pub Reserved1: u32,
    pub HwUnitControl: *mut c_void,
}
const _: () = assert!(size_of::<HW_INITIALIZATION_DATA>() == 0xD0);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, AdapterInterfaceType) == 0x04);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, HwInitialize) == 0x08);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, HwStartIo) == 0x10);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, HwInterrupt) == 0x18);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, HwFindAdapter) == 0x20);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, HwResetBus) == 0x28);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, DeviceExtensionSize) == 0x40);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, SrbExtensionSize) == 0x48);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, NumberOfAccessRanges) == 0x4C);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, MapBuffers) == 0x58);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, TaggedQueuing) == 0x5A);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, AutoRequestSense) == 0x5B);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, MultipleRequestPerLu) == 0x5C);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, VendorId) == 0x60);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, DeviceId) == 0x70);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, HwAdapterControl) == 0x78);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, HwBuildIo) == 0x80);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, FeatureSupport) == 0xB8);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, SrbTypeFlags) == 0xBC);
const _: () = assert!(offset_of!(HW_INITIALIZATION_DATA, HwUnitControl) == 0xC8);

impl HW_INITIALIZATION_DATA {
    /// All zero (no callbacks), as the WDK samples start with
    /// `RtlZeroMemory`.
    pub const fn zeroed() -> Self {
        Self {
            HwInitializationDataSize: 0,
            AdapterInterfaceType: 0,
            HwInitialize: None,
            HwStartIo: None,
            HwInterrupt: None,
            HwFindAdapter: None,
            HwResetBus: None,
            HwDmaStarted: core::ptr::null_mut(),
            HwAdapterState: core::ptr::null_mut(),
            DeviceExtensionSize: 0,
            SpecificLuExtensionSize: 0,
            SrbExtensionSize: 0,
            NumberOfAccessRanges: 0,
            Reserved: core::ptr::null_mut(),
            MapBuffers: 0,
            NeedPhysicalAddresses: 0,
            TaggedQueuing: 0,
            AutoRequestSense: 0,
            MultipleRequestPerLu: 0,
            ReceiveEvent: 0,
            VendorIdLength: 0,
            VendorId: core::ptr::null_mut(),
            PortVersionFlags: 0,
            DeviceIdLength: 0,
            DeviceId: core::ptr::null_mut(),
            HwAdapterControl: None,
            HwBuildIo: None,
            HwFreeAdapterResources: core::ptr::null_mut(),
            HwProcessServiceRequest: core::ptr::null_mut(),
            HwCompleteServiceIrp: core::ptr::null_mut(),
            HwInitializeTracing: core::ptr::null_mut(),
            HwCleanupTracing: core::ptr::null_mut(),
            HwTracingEnabled: core::ptr::null_mut(),
            FeatureSupport: 0,
            SrbTypeFlags: 0,
            AddressTypeFlags: 0,
            Reserved1: 0,
            HwUnitControl: core::ptr::null_mut(),
        }
    }
}

/// `ACCESS_RANGE` (`storport.h`): one of the adapter's bus ranges as
/// Plug and Play assigned it (bus-relative address; map it with
/// `StorPortGetDeviceBase`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ACCESS_RANGE {
    pub RangeStart: STOR_PHYSICAL_ADDRESS,
    pub RangeLength: u32,
    pub RangeInMemory: u8,
}
const _: () = assert!(size_of::<ACCESS_RANGE>() == 16);
const _: () = assert!(offset_of!(ACCESS_RANGE, RangeLength) == 8);
const _: () = assert!(offset_of!(ACCESS_RANGE, RangeInMemory) == 12);

/// `MEMORY_REGION` (`storport.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MEMORY_REGION {
    pub VirtualBase: *mut u8,
    pub PhysicalBase: STOR_PHYSICAL_ADDRESS,
    pub Length: u32,
}
const _: () = assert!(size_of::<MEMORY_REGION>() == 24);

/// `PORT_CONFIGURATION_INFORMATION` (`storport.h`), filled in by StorPort
/// and completed by `HwFindAdapter`.
#[repr(C)]
#[derive(Debug)]
pub struct PORT_CONFIGURATION_INFORMATION {
    pub Length: u32,
    pub SystemIoBusNumber: u32,
    pub AdapterInterfaceType: u32,
    pub BusInterruptLevel: u32,
    pub BusInterruptVector: u32,
    pub InterruptMode: u32,
    pub MaximumTransferLength: u32,
    pub NumberOfPhysicalBreaks: u32,
    pub DmaChannel: u32,
    pub DmaPort: u32,
    pub DmaWidth: u32,
    pub DmaSpeed: u32,
    pub AlignmentMask: u32,
    pub NumberOfAccessRanges: u32,
    /// `ACCESS_RANGE (*AccessRanges)[]`.
    pub AccessRanges: *mut ACCESS_RANGE,
    /// Non-null in dump mode: what the normal instance left for the
    /// crash-dump instance (`MiniportDumpData`).
    pub MiniportDumpData: *mut c_void,
    pub NumberOfBuses: u8,
    pub InitiatorBusId: [i8; 8],
    pub ScatterGather: u8,
    pub Master: u8,
    pub CachesData: u8,
    pub AdapterScansDown: u8,
    pub AtdiskPrimaryClaimed: u8,
    pub AtdiskSecondaryClaimed: u8,
    pub Dma32BitAddresses: u8,
    pub DemandMode: u8,
    pub MapBuffers: u8,
    pub NeedPhysicalAddresses: u8,
    pub TaggedQueuing: u8,
    pub AutoRequestSense: u8,
    pub MultipleRequestPerLu: u8,
    pub ReceiveEvent: u8,
    pub RealModeInitialized: u8,
    pub BufferAccessScsiPortControlled: u8,
    pub MaximumNumberOfTargets: u8,
    pub SrbType: u8,
    pub AddressType: u8,
    pub SlotNumber: u32,
    pub BusInterruptLevel2: u32,
    pub BusInterruptVector2: u32,
    pub InterruptMode2: u32,
    pub DmaChannel2: u32,
    pub DmaPort2: u32,
    pub DmaWidth2: u32,
    pub DmaSpeed2: u32,
    pub DeviceExtensionSize: u32,
    pub SpecificLuExtensionSize: u32,
    pub SrbExtensionSize: u32,
    pub Dma64BitAddresses: u8,
    pub ResetTargetSupported: u8,
    pub MaximumNumberOfLogicalUnits: u8,
    pub WmiDataProvider: u8,
    pub SynchronizationModel: u32,
    pub HwMSInterruptRoutine: *mut c_void,
    pub InterruptSynchronizationMode: u32,
    pub DumpRegion: MEMORY_REGION,
    pub RequestedDumpBufferSize: u32,
    pub VirtualDevice: u8,
    pub DumpMode: u8,
    pub ExtendedFlags1: u32,
    pub MaxNumberOfIO: u32,
    pub MaxIOsPerLun: u32,
    pub InitialLunQueueDepth: u32,
    pub BusResetHoldTime: u32,
    pub FeatureSupport: u32,
}
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, SystemIoBusNumber) == 0x04);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, AdapterInterfaceType) == 0x08);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, MaximumTransferLength) == 0x18);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, NumberOfPhysicalBreaks) == 0x1C);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, AlignmentMask) == 0x30);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, NumberOfAccessRanges) == 0x34);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, AccessRanges) == 0x38);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, MiniportDumpData) == 0x40);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, NumberOfBuses) == 0x48);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, ScatterGather) == 0x51);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, Master) == 0x52);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, CachesData) == 0x53);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, MapBuffers) == 0x59);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, TaggedQueuing) == 0x5B);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, AutoRequestSense) == 0x5C);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, MaximumNumberOfTargets) == 0x61);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, SrbType) == 0x62);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, AddressType) == 0x63);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, SlotNumber) == 0x64);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, DeviceExtensionSize) == 0x84);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, Dma64BitAddresses) == 0x90);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, ResetTargetSupported) == 0x91);
const _: () =
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, MaximumNumberOfLogicalUnits) == 0x92);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, SynchronizationModel) == 0x94);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, HwMSInterruptRoutine) == 0x98);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, DumpRegion) == 0xA8);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, RequestedDumpBufferSize) == 0xC0);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, VirtualDevice) == 0xC4);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, DumpMode) == 0xC5);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, MaxNumberOfIO) == 0xCC);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, MaxIOsPerLun) == 0xD0);
const _: () = assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, FeatureSupport) == 0xDC);
const _: () = assert!(size_of::<PORT_CONFIGURATION_INFORMATION>() == 0xE0);

/// `SCSI_REQUEST_BLOCK` (`srb.h`, `_WIN64`).
#[repr(C)]
#[derive(Debug)]
pub struct SCSI_REQUEST_BLOCK {
    pub Length: u16,
    pub Function: u8,
    pub SrbStatus: u8,
    pub ScsiStatus: u8,
    pub PathId: u8,
    pub TargetId: u8,
    pub Lun: u8,
    pub QueueTag: u8,
    pub QueueAction: u8,
    pub CdbLength: u8,
    pub SenseInfoBufferLength: u8,
    pub SrbFlags: u32,
    pub DataTransferLength: u32,
    pub TimeOutValue: u32,
    pub DataBuffer: *mut c_void,
    pub SenseInfoBuffer: *mut c_void,
    pub NextSrb: *mut SCSI_REQUEST_BLOCK,
    pub OriginalRequest: *mut c_void,
    pub SrbExtension: *mut c_void,
    /// Union of `InternalStatus`, `QueueSortKey`, `LinkTimeoutValue`.
    pub InternalStatus: u32,
    pub Reserved: u32,
    pub Cdb: [u8; 16],
}
const _: () = assert!(size_of::<SCSI_REQUEST_BLOCK>() == 0x58);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, Function) == 0x02);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, SrbStatus) == 0x03);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, ScsiStatus) == 0x04);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, PathId) == 0x05);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, Lun) == 0x07);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, CdbLength) == 0x0A);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, SenseInfoBufferLength) == 0x0B);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, SrbFlags) == 0x0C);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, DataTransferLength) == 0x10);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, DataBuffer) == 0x18);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, SenseInfoBuffer) == 0x20);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, SrbExtension) == 0x38);
const _: () = assert!(offset_of!(SCSI_REQUEST_BLOCK, Cdb) == 0x48);

/// `SCSI_POWER_REQUEST_BLOCK` (`srb.h`): the fields of an
/// `SRB_FUNCTION_POWER` that differ from a `SCSI_REQUEST_BLOCK`.
pub const SRB_POWER_DEVICE_POWER_STATE: usize = 0x08;
/// `SCSI_PNP_REQUEST_BLOCK` (`srb.h`): `PnPAction` of an `SRB_FUNCTION_PNP`.
pub const SRB_PNP_ACTION: usize = 0x08;
/// `SCSI_PNP_REQUEST_BLOCK`: `SrbPnPFlags`.
pub const SRB_PNP_FLAGS: usize = 0x40;

/// The fixed header of `STORAGE_REQUEST_BLOCK` (SRB_EX, `srb.h`), up to
/// `SrbFunction`; the miniport only reads it.
#[repr(C)]
#[derive(Debug)]
pub struct STORAGE_REQUEST_BLOCK_HEADER {
    pub Length: u16,
    /// `SRB_FUNCTION_STORAGE_REQUEST_BLOCK` (0x28).
    pub Function: u8,
    pub SrbStatus: u8,
    pub ReservedUlong1: u32,
    /// `SRB_SIGNATURE` ("SRBX").
    pub Signature: u32,
    pub Version: u32,
    pub SrbLength: u32,
    pub SrbFunction: u32,
    pub SrbFlags: u32,
}
const _: () = assert!(offset_of!(STORAGE_REQUEST_BLOCK_HEADER, Signature) == 0x08);
const _: () = assert!(offset_of!(STORAGE_REQUEST_BLOCK_HEADER, SrbFunction) == 0x14);
const _: () = assert!(offset_of!(STORAGE_REQUEST_BLOCK_HEADER, SrbFlags) == 0x18);
/// `SRB_SIGNATURE` as `srb.h` defines it (0x53524258: the bytes
/// "XBRS" in memory).
pub const SRB_SIGNATURE: u32 = 0x5352_4258;

#[cfg(target_os = "windows")]
#[link(name = "storport.sys", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    pub fn StorPortInitialize(
        driver: *mut c_void,
        registry_path: *mut c_void,
        init: *mut HW_INITIALIZATION_DATA,
        hw_context: *mut c_void,
    ) -> u32;
    pub fn StorPortGetBusData(
        ext: *mut c_void,
        bus_data_type: u32,
        system_io_bus_number: u32,
        slot_number: u32,
        buffer: *mut c_void,
        length: u32,
    ) -> u32;
    pub fn StorPortGetDeviceBase(
        ext: *mut c_void,
        bus_type: u32,
        system_io_bus_number: u32,
        io_address: STOR_PHYSICAL_ADDRESS,
        bytes: u32,
        in_io_space: u8,
    ) -> *mut c_void;
    pub fn StorPortFreeDeviceBase(ext: *mut c_void, mapped: *mut c_void);
    pub fn StorPortStallExecution(microseconds: u32);
}

#[cfg(target_os = "windows")]
#[link(name = "storport.sys", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "C" {
    /// Variadic: the wrappers below pass each notification's arguments.
    pub fn StorPortNotification(kind: u32, ext: *mut c_void, ...);
    /// Variadic: the wrappers below pass each function's arguments.
    pub fn StorPortExtendedFunction(code: u32, ext: *mut c_void, ...) -> u32;
}

/// `StorPortNotification(RequestComplete, ext, srb)`: `srb` is done (its
/// status fields already written).
///
/// # Safety
///
/// `ext` is the miniport's device extension and `srb` an SRB StorPort gave
/// it that is not completed yet.
#[cfg(target_os = "windows")]
pub unsafe fn request_complete(ext: *mut c_void, srb: *mut SCSI_REQUEST_BLOCK) {
    // SAFETY: the caller's contract; RequestComplete takes the SRB only.
    unsafe { StorPortNotification(notification::REQUEST_COMPLETE, ext, srb) }
}

/// `StorPortNotification(ResetDetected, ext)`: the miniport reset the bus
/// on its own (after a device fault).
///
/// # Safety
///
/// `ext` is the miniport's device extension.
#[cfg(target_os = "windows")]
pub unsafe fn reset_detected(ext: *mut c_void) {
    // SAFETY: the caller's contract; ResetDetected takes no argument.
    unsafe { StorPortNotification(notification::RESET_DETECTED, ext) }
}

/// `StorPortEnablePassiveInitialization` (`storport.h` inline): ask
/// StorPort to call `routine` at `PASSIVE_LEVEL` after `HwInitialize`
/// returns. False when StorPort will not (dump mode, old StorPort).
///
/// # Safety
///
/// `ext` is the miniport's device extension; called from `HwInitialize`.
#[cfg(target_os = "windows")]
pub unsafe fn enable_passive_initialization(
    ext: *mut c_void,
    routine: HwPassiveInitializeFn,
) -> bool {
    let mut succ: i32 = 0;
    // SAFETY: the caller's contract; the header passes the routine and a
    // LONG for the answer.
    unsafe {
        StorPortNotification(
            notification::ENABLE_PASSIVE_INITIALIZATION,
            ext,
            routine,
            &mut succ as *mut i32,
        )
    };
    succ != 0
}

/// `StorPortAllocatePool` (`storport.h` inline over
/// `StorPortExtendedFunction(ExtFunctionAllocatePool, ...)`): non-paged
/// pool tagged `tag`, or `None`.
///
/// # Safety
///
/// `ext` is the miniport's device extension.
#[cfg(target_os = "windows")]
pub unsafe fn allocate_pool(ext: *mut c_void, bytes: u32, tag: u32) -> Option<*mut c_void> {
    let mut p: *mut c_void = core::ptr::null_mut();
    // SAFETY: the caller's contract; the header passes bytes, tag and the
    // out pointer in this order.
    let st = unsafe {
        StorPortExtendedFunction(
            ext_function::ALLOCATE_POOL,
            ext,
            bytes,
            tag,
            &mut p as *mut *mut c_void,
        )
    };
    (st == STOR_STATUS_SUCCESS && !p.is_null()).then_some(p)
}

/// `StorPortFreePool` (`storport.h` inline).
///
/// # Safety
///
/// `p` came from [`allocate_pool`] with this `ext` and is freed once.
#[cfg(target_os = "windows")]
pub unsafe fn free_pool(ext: *mut c_void, p: *mut c_void) {
    // SAFETY: the caller's contract.
    unsafe { StorPortExtendedFunction(ext_function::FREE_POOL, ext, p) };
}
