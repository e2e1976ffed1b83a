//! Our bindings of NDIS 6 for a miniport (x86-64): the structures the
//! network driver fills or reads, with `const` asserts of their size and
//! of every field offset used, and the functions it calls, imported by
//! name from `ndis.sys` (each on the curated list
//! `pv-windows/exports/ndis.sys.txt`).
//!
//! Layout source: the WDK's `ndis.h`/`ntddndis.h` as documented on
//! learn.microsoft.com, with offsets cross-checked against the x64 type
//! dumps of `ndis.sys`' own symbols (Windows 10 20H1). Structures NDIS
//! hands us and we only read (`NET_BUFFER_LIST`, `NDIS_OID_REQUEST`,
//! `NDIS_MINIPORT_INIT_PARAMETERS`) are declared up to the last field used.
//! Information-buffer structures (statistics, link state, offloads) are
//! not here: `pv-net-windows` encodes them as bytes, host-tested.
//!
//! Not checked against the headers themselves: the Windows CI that would
//! diff these against a bindgen of `ndis.h` does not exist yet
//! (docs/WINDOWS.md).

#![allow(non_camel_case_types, non_snake_case)]

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

#[cfg(target_os = "windows")]
use crate::ffi::UNICODE_STRING;
use crate::ffi::{DRIVER_OBJECT, MDL};

/// `NDIS_STATUS`.
pub type NDIS_STATUS = i32;
/// `NDIS_HANDLE`.
pub type NDIS_HANDLE = *mut c_void;
/// `NDIS_STATUS_SUCCESS`.
pub const NDIS_STATUS_SUCCESS: NDIS_STATUS = 0;
/// `NDIS_STATUS_PENDING`.
pub const NDIS_STATUS_PENDING: NDIS_STATUS = 0x0000_0103;
/// `NDIS_STATUS_FAILURE`.
pub const NDIS_STATUS_FAILURE: NDIS_STATUS = 0xC000_0001_u32 as i32;
/// `NDIS_STATUS_RESOURCES`.
pub const NDIS_STATUS_RESOURCES: NDIS_STATUS = 0xC000_009A_u32 as i32;
/// `NDIS_STATUS_NOT_SUPPORTED`.
pub const NDIS_STATUS_NOT_SUPPORTED: NDIS_STATUS = 0xC000_00BB_u32 as i32;
/// `NDIS_STATUS_PAUSED`.
pub const NDIS_STATUS_PAUSED: NDIS_STATUS = 0xC023_002A_u32 as i32;
/// `NDIS_STATUS_SEND_ABORTED`.
pub const NDIS_STATUS_SEND_ABORTED: NDIS_STATUS = 0xC001_0024_u32 as i32;
/// `NDIS_STATUS_REQUEST_ABORTED`.
pub const NDIS_STATUS_REQUEST_ABORTED: NDIS_STATUS = 0xC001_000C_u32 as i32;
/// `NDIS_STATUS_ADAPTER_NOT_FOUND`.
pub const NDIS_STATUS_ADAPTER_NOT_FOUND: NDIS_STATUS = 0xC001_0006_u32 as i32;

/// `NDIS_OBJECT_HEADER` (`ntddndis.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NDIS_OBJECT_HEADER {
    pub Type: u8,
    pub Revision: u8,
    pub Size: u16,
}
const _: () = assert!(size_of::<NDIS_OBJECT_HEADER>() == 4);

/// `NDIS_OBJECT_TYPE_MINIPORT_DRIVER_CHARACTERISTICS`.
pub const NDIS_OBJECT_TYPE_MINIPORT_DRIVER_CHARACTERISTICS: u8 = 0x8A;
/// `NDIS_OBJECT_TYPE_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES`.
pub const NDIS_OBJECT_TYPE_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES: u8 = 0x9E;
/// `NDIS_OBJECT_TYPE_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES`.
pub const NDIS_OBJECT_TYPE_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES: u8 = 0x9F;
/// `NDIS_OBJECT_TYPE_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES`.
pub const NDIS_OBJECT_TYPE_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES: u8 = 0xA0;
/// `NDIS_OBJECT_TYPE_DEFAULT`.
pub const NDIS_OBJECT_TYPE_DEFAULT: u8 = 0x80;
/// `NDIS_OBJECT_TYPE_TIMER_CHARACTERISTICS`.
pub const NDIS_OBJECT_TYPE_TIMER_CHARACTERISTICS: u8 = 0x97;
/// `NDIS_OBJECT_TYPE_STATUS_INDICATION`.
pub const NDIS_OBJECT_TYPE_STATUS_INDICATION: u8 = 0x98;

/// `MINIPORT_SET_OPTIONS`.
pub type SetOptionsFn = unsafe extern "system" fn(NDIS_HANDLE, NDIS_HANDLE) -> NDIS_STATUS;
/// `MINIPORT_INITIALIZE`.
pub type InitializeFn = unsafe extern "system" fn(
    NDIS_HANDLE,
    NDIS_HANDLE,
    *mut NDIS_MINIPORT_INIT_PARAMETERS,
) -> NDIS_STATUS;
/// `MINIPORT_HALT` (context, `NDIS_HALT_ACTION`).
pub type HaltFn = unsafe extern "system" fn(NDIS_HANDLE, u32);
/// `MINIPORT_UNLOAD`.
pub type UnloadFn = unsafe extern "system" fn(*mut DRIVER_OBJECT);
/// `MINIPORT_PAUSE` / `MINIPORT_RESTART` (parameters opaque to us).
pub type PauseRestartFn = unsafe extern "system" fn(NDIS_HANDLE, *mut c_void) -> NDIS_STATUS;
/// `MINIPORT_OID_REQUEST`.
pub type OidRequestFn =
    unsafe extern "system" fn(NDIS_HANDLE, *mut NDIS_OID_REQUEST) -> NDIS_STATUS;
/// `MINIPORT_SEND_NET_BUFFER_LISTS` (context, NBLs, port, flags).
pub type SendFn = unsafe extern "system" fn(NDIS_HANDLE, *mut NET_BUFFER_LIST, u32, u32);
/// `MINIPORT_RETURN_NET_BUFFER_LISTS` (context, NBLs, flags).
pub type ReturnFn = unsafe extern "system" fn(NDIS_HANDLE, *mut NET_BUFFER_LIST, u32);
/// `MINIPORT_CANCEL_SEND` / `MINIPORT_CANCEL_OID_REQUEST` (context, id).
pub type CancelFn = unsafe extern "system" fn(NDIS_HANDLE, *mut c_void);
/// `MINIPORT_CHECK_FOR_HANG`.
pub type CheckForHangFn = unsafe extern "system" fn(NDIS_HANDLE) -> u8;
/// `MINIPORT_RESET` (context, out `AddressingReset`).
pub type ResetFn = unsafe extern "system" fn(NDIS_HANDLE, *mut u8) -> NDIS_STATUS;
/// `MINIPORT_DEVICE_PNP_EVENT_NOTIFY` (`NET_DEVICE_PNP_EVENT` opaque).
pub type PnpEventFn = unsafe extern "system" fn(NDIS_HANDLE, *mut c_void);
/// `MINIPORT_SHUTDOWN` (context, `NDIS_SHUTDOWN_ACTION`).
pub type ShutdownFn = unsafe extern "system" fn(NDIS_HANDLE, u32);
/// `NDIS_TIMER_FUNCTION` (system-specific 1, function context,
/// system-specific 2, 3).
pub type TimerFn = unsafe extern "system" fn(*mut c_void, *mut c_void, *mut c_void, *mut c_void);

/// `NDIS_MINIPORT_DRIVER_CHARACTERISTICS` (`ndis.h`), revision 2 (NDIS
/// 6.20: with the direct OID handlers, which we leave empty).
#[repr(C)]
#[derive(Debug, Default)]
pub struct NDIS_MINIPORT_DRIVER_CHARACTERISTICS {
    pub Header: NDIS_OBJECT_HEADER,
    pub MajorNdisVersion: u8,
    pub MinorNdisVersion: u8,
    pub MajorDriverVersion: u8,
    pub MinorDriverVersion: u8,
    pub Flags: u32,
    pub SetOptionsHandler: Option<SetOptionsFn>,
    pub InitializeHandlerEx: Option<InitializeFn>,
    pub HaltHandlerEx: Option<HaltFn>,
    pub UnloadHandler: Option<UnloadFn>,
    pub PauseHandler: Option<PauseRestartFn>,
    pub RestartHandler: Option<PauseRestartFn>,
    pub OidRequestHandler: Option<OidRequestFn>,
    pub SendNetBufferListsHandler: Option<SendFn>,
    pub ReturnNetBufferListsHandler: Option<ReturnFn>,
    pub CancelSendHandler: Option<CancelFn>,
    pub CheckForHangHandlerEx: Option<CheckForHangFn>,
    pub ResetHandlerEx: Option<ResetFn>,
    pub DevicePnPEventNotifyHandler: Option<PnpEventFn>,
    pub ShutdownHandlerEx: Option<ShutdownFn>,
    pub CancelOidRequestHandler: Option<CancelFn>,
    pub DirectOidRequestHandler: Option<OidRequestFn>,
    pub CancelDirectOidRequestHandler: Option<CancelFn>,
}
const _: () = assert!(size_of::<NDIS_MINIPORT_DRIVER_CHARACTERISTICS>() == 0x98);
const _: () = assert!(offset_of!(NDIS_MINIPORT_DRIVER_CHARACTERISTICS, Flags) == 0x08);
const _: () = assert!(offset_of!(NDIS_MINIPORT_DRIVER_CHARACTERISTICS, SetOptionsHandler) == 0x10);
const _: () =
    assert!(offset_of!(NDIS_MINIPORT_DRIVER_CHARACTERISTICS, InitializeHandlerEx) == 0x18);
const _: () = assert!(offset_of!(NDIS_MINIPORT_DRIVER_CHARACTERISTICS, PauseHandler) == 0x30);
const _: () = assert!(offset_of!(NDIS_MINIPORT_DRIVER_CHARACTERISTICS, OidRequestHandler) == 0x40);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_DRIVER_CHARACTERISTICS,
        SendNetBufferListsHandler
    ) == 0x48
);
const _: () = assert!(offset_of!(NDIS_MINIPORT_DRIVER_CHARACTERISTICS, CancelSendHandler) == 0x58);
const _: () = assert!(offset_of!(NDIS_MINIPORT_DRIVER_CHARACTERISTICS, ResetHandlerEx) == 0x68);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_DRIVER_CHARACTERISTICS,
        DevicePnPEventNotifyHandler
    ) == 0x70
);
const _: () = assert!(offset_of!(NDIS_MINIPORT_DRIVER_CHARACTERISTICS, ShutdownHandlerEx) == 0x78);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_DRIVER_CHARACTERISTICS,
        CancelOidRequestHandler
    ) == 0x80
);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_DRIVER_CHARACTERISTICS,
        CancelDirectOidRequestHandler
    ) == 0x90
);
/// `NDIS_MINIPORT_DRIVER_CHARACTERISTICS_REVISION_2`.
pub const NDIS_MINIPORT_DRIVER_CHARACTERISTICS_REVISION_2: u8 = 2;

/// `NDIS_MINIPORT_INIT_PARAMETERS` (`ndis.h`), prefix: `AllocatedResources`
/// is an `NDIS_RESOURCE_LIST` (a `CM_PARTIAL_RESOURCE_LIST`: version,
/// revision, count, then 20-byte descriptors), translated addresses.
#[repr(C)]
#[derive(Debug)]
pub struct NDIS_MINIPORT_INIT_PARAMETERS {
    pub Header: NDIS_OBJECT_HEADER,
    pub Flags: u32,
    pub AllocatedResources: *mut u8,
}
const _: () = assert!(offset_of!(NDIS_MINIPORT_INIT_PARAMETERS, AllocatedResources) == 0x08);

/// `NDIS_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES` (`ndis.h`), revision 1.
#[repr(C)]
#[derive(Debug)]
pub struct NDIS_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES {
    pub Header: NDIS_OBJECT_HEADER,
    pub MiniportAdapterContext: NDIS_HANDLE,
    pub AttributeFlags: u32,
    pub CheckForHangTimeInSeconds: u32,
    /// `NDIS_INTERFACE_TYPE`.
    pub InterfaceType: u32,
}
const _: () = assert!(size_of::<NDIS_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES>() == 0x20);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES,
        AttributeFlags
    ) == 0x10
);
const _: () =
    assert!(offset_of!(NDIS_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES, InterfaceType) == 0x18);
/// `NDIS_MINIPORT_ATTRIBUTES_HARDWARE_DEVICE`.
pub const NDIS_MINIPORT_ATTRIBUTES_HARDWARE_DEVICE: u32 = 0x0000_0001;
/// `NDIS_MINIPORT_ATTRIBUTES_BUS_MASTER`.
pub const NDIS_MINIPORT_ATTRIBUTES_BUS_MASTER: u32 = 0x0000_0008;
/// `NdisInterfacePci`.
pub const NDIS_INTERFACE_PCI: u32 = 5;

/// `NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES` (`ndis.h`); registered as
/// revision 1 (size through `AutoNegotiationFlags`), declared to revision
/// 2's end.
#[repr(C)]
#[derive(Debug)]
pub struct NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES {
    pub Header: NDIS_OBJECT_HEADER,
    pub Flags: u32,
    pub MediaType: u32,
    pub PhysicalMediumType: u32,
    pub MtuSize: u32,
    pub MaxXmitLinkSpeed: u64,
    pub XmitLinkSpeed: u64,
    pub MaxRcvLinkSpeed: u64,
    pub RcvLinkSpeed: u64,
    pub MediaConnectState: u32,
    pub MediaDuplexState: u32,
    pub LookaheadSize: u32,
    pub PowerManagementCapabilities: *mut c_void,
    pub MacOptions: u32,
    pub SupportedPacketFilters: u32,
    pub MaxMulticastListSize: u32,
    pub MacAddressLength: u16,
    pub PermanentMacAddress: [u8; 32],
    pub CurrentMacAddress: [u8; 32],
    pub RecvScaleCapabilities: *mut c_void,
    pub AccessType: u32,
    pub DirectionType: u32,
    pub ConnectionType: u32,
    pub IfType: u16,
    pub IfConnectorPresent: u8,
    pub SupportedStatistics: u32,
    pub SupportedPauseFunctions: u32,
    pub DataBackFillSize: u32,
    pub ContextBackFillSize: u32,
    pub SupportedOidList: *const u32,
    pub SupportedOidListLength: u32,
    pub AutoNegotiationFlags: u32,
    pub PowerManagementCapabilitiesEx: *mut c_void,
}
const _: () = assert!(size_of::<NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES>() == 0xE0);
const _: () = assert!(offset_of!(NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES, MtuSize) == 0x10);
const _: () =
    assert!(offset_of!(NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES, MaxXmitLinkSpeed) == 0x18);
const _: () =
    assert!(offset_of!(NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES, MediaConnectState) == 0x38);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES,
        PowerManagementCapabilities
    ) == 0x48
);
const _: () = assert!(offset_of!(NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES, MacOptions) == 0x50);
const _: () =
    assert!(offset_of!(NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES, MacAddressLength) == 0x5C);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES,
        PermanentMacAddress
    ) == 0x5E
);
const _: () =
    assert!(offset_of!(NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES, CurrentMacAddress) == 0x7E);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES,
        RecvScaleCapabilities
    ) == 0xA0
);
const _: () = assert!(offset_of!(NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES, IfType) == 0xB4);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES,
        SupportedStatistics
    ) == 0xB8
);
const _: () =
    assert!(offset_of!(NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES, SupportedOidList) == 0xC8);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES,
        AutoNegotiationFlags
    ) == 0xD4
);
/// `NDIS_SIZEOF_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES_REVISION_1`.
pub const NDIS_SIZEOF_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES_REVISION_1: u16 = 0xD8;
/// `NdisMedium802_3`.
pub const NDIS_MEDIUM_802_3: u32 = 0;
/// `MediaConnectStateConnected` / `Disconnected`.
pub const MEDIA_CONNECT_STATE_CONNECTED: u32 = 1;
/// `MediaConnectStateDisconnected`.
pub const MEDIA_CONNECT_STATE_DISCONNECTED: u32 = 2;
/// `MediaDuplexStateFull`.
pub const MEDIA_DUPLEX_STATE_FULL: u32 = 2;
/// `NET_IF_ACCESS_BROADCAST`.
pub const NET_IF_ACCESS_BROADCAST: u32 = 2;
/// `NET_IF_DIRECTION_SENDRECEIVE`.
pub const NET_IF_DIRECTION_SENDRECEIVE: u32 = 0;
/// `NET_IF_CONNECTION_DEDICATED`.
pub const NET_IF_CONNECTION_DEDICATED: u32 = 1;
/// `IF_TYPE_ETHERNET_CSMACD`.
pub const IF_TYPE_ETHERNET_CSMACD: u16 = 6;
/// `NdisPauseFunctionsUnsupported`.
pub const NDIS_PAUSE_FUNCTIONS_UNSUPPORTED: u32 = 0;

/// `NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES` (`ndis.h`), revision 1: the
/// two `NDIS_OFFLOAD` blocks are `pv-net-windows`' encodings.
#[repr(C)]
#[derive(Debug)]
pub struct NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES {
    pub Header: NDIS_OBJECT_HEADER,
    pub DefaultOffloadConfiguration: *const u8,
    pub HardwareOffloadCapabilities: *const u8,
    pub DefaultTcpConnectionOffloadConfiguration: *const c_void,
    pub TcpConnectionOffloadHardwareCapabilities: *const c_void,
}
const _: () = assert!(size_of::<NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES>() == 0x28);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES,
        HardwareOffloadCapabilities
    ) == 0x10
);

/// `NDIS_OID_REQUEST` (`ndis.h`), revision 1: the query/set view of the
/// `DATA` union (`Oid`, `InformationBuffer`, its length, bytes
/// written/read, bytes needed).
#[repr(C)]
#[derive(Debug)]
pub struct NDIS_OID_REQUEST {
    pub Header: NDIS_OBJECT_HEADER,
    /// `NDIS_REQUEST_TYPE`.
    pub RequestType: u32,
    pub PortNumber: u32,
    pub Timeout: u32,
    pub RequestId: *mut c_void,
    pub RequestHandle: NDIS_HANDLE,
    pub Oid: u32,
    pub InformationBuffer: *mut u8,
    pub InformationBufferLength: u32,
    /// `BytesWritten` (query) / `BytesRead` (set).
    pub BytesDone: u32,
    pub BytesNeeded: u32,
    _method_tail: [u32; 3],
    pub NdisReserved: [usize; 16],
    pub MiniportReserved: [usize; 2],
    pub SourceReserved: [usize; 2],
    pub SupportedRevision: u8,
    pub Reserved1: u8,
    pub Reserved2: u16,
}
const _: () = assert!(size_of::<NDIS_OID_REQUEST>() == 0xF0);
const _: () = assert!(offset_of!(NDIS_OID_REQUEST, RequestType) == 0x04);
const _: () = assert!(offset_of!(NDIS_OID_REQUEST, RequestId) == 0x10);
const _: () = assert!(offset_of!(NDIS_OID_REQUEST, Oid) == 0x20);
const _: () = assert!(offset_of!(NDIS_OID_REQUEST, InformationBuffer) == 0x28);
const _: () = assert!(offset_of!(NDIS_OID_REQUEST, InformationBufferLength) == 0x30);
const _: () = assert!(offset_of!(NDIS_OID_REQUEST, BytesDone) == 0x34);
const _: () = assert!(offset_of!(NDIS_OID_REQUEST, BytesNeeded) == 0x38);
const _: () = assert!(offset_of!(NDIS_OID_REQUEST, NdisReserved) == 0x48);
const _: () = assert!(offset_of!(NDIS_OID_REQUEST, SupportedRevision) == 0xE8);
/// `NdisRequestQueryInformation`.
pub const NDIS_REQUEST_QUERY_INFORMATION: u32 = 0;
/// `NdisRequestSetInformation`.
pub const NDIS_REQUEST_SET_INFORMATION: u32 = 1;
/// `NdisRequestQueryStatistics`.
pub const NDIS_REQUEST_QUERY_STATISTICS: u32 = 2;

/// `NET_BUFFER` (`ndis.h`, NDIS 6.0+ x64).
#[repr(C, align(16))]
#[derive(Debug)]
pub struct NET_BUFFER {
    pub Next: *mut NET_BUFFER,
    pub CurrentMdl: *mut MDL,
    pub CurrentMdlOffset: u32,
    /// `DataLength` (the union's `SIZE_T stDataLength` makes it 8 bytes).
    pub DataLength: usize,
    pub MdlChain: *mut MDL,
    pub DataOffset: u32,
    /// The header union (with an `SLIST_HEADER`) ends at 0x30.
    _pad: u32,
    pub ChecksumBias: u16,
    pub Reserved: u16,
    pub NdisPoolHandle: NDIS_HANDLE,
    pub NdisReserved: [*mut c_void; 2],
    pub ProtocolReserved: [*mut c_void; 6],
    pub MiniportReserved: [*mut c_void; 4],
    pub DataPhysicalAddress: i64,
    pub ScatterGatherList: *mut c_void,
}
const _: () = assert!(size_of::<NET_BUFFER>() == 0xB0);
const _: () = assert!(offset_of!(NET_BUFFER, CurrentMdlOffset) == 0x10);
const _: () = assert!(offset_of!(NET_BUFFER, DataLength) == 0x18);
const _: () = assert!(offset_of!(NET_BUFFER, MdlChain) == 0x20);
const _: () = assert!(offset_of!(NET_BUFFER, DataOffset) == 0x28);
const _: () = assert!(offset_of!(NET_BUFFER, ChecksumBias) == 0x30);
const _: () = assert!(offset_of!(NET_BUFFER, MiniportReserved) == 0x80);
const _: () = assert!(offset_of!(NET_BUFFER, ScatterGatherList) == 0xA8);

/// `NET_BUFFER_LIST` (`ndis.h`, x64), to the first info slots we use.
/// `NdisReserved`, `ProtocolReserved` and `MiniportReserved` are aligned
/// to 16 (`MEMORY_ALLOCATION_ALIGNMENT`), hence the padding.
#[repr(C, align(16))]
#[derive(Debug)]
pub struct NET_BUFFER_LIST {
    pub Next: *mut NET_BUFFER_LIST,
    pub FirstNetBuffer: *mut NET_BUFFER,
    pub Context: *mut c_void,
    pub ParentNetBufferList: *mut NET_BUFFER_LIST,
    pub NdisPoolHandle: NDIS_HANDLE,
    _pad: usize,
    pub NdisReserved: [*mut c_void; 2],
    pub ProtocolReserved: [*mut c_void; 4],
    pub MiniportReserved: [*mut c_void; 2],
    pub Scratch: *mut c_void,
    pub SourceHandle: NDIS_HANDLE,
    pub NblFlags: u32,
    pub ChildRefCount: i32,
    pub Flags: u32,
    pub Status: NDIS_STATUS,
    /// `NetBufferListInfo[]`, first slots (`TcpIpChecksumNetBufferListInfo`
    /// = 0 … `NetBufferListFrameType` = 7).
    pub NetBufferListInfo: [*mut c_void; 8],
}
const _: () = assert!(offset_of!(NET_BUFFER_LIST, FirstNetBuffer) == 0x08);
const _: () = assert!(offset_of!(NET_BUFFER_LIST, NdisPoolHandle) == 0x20);
const _: () = assert!(offset_of!(NET_BUFFER_LIST, NdisReserved) == 0x30);
const _: () = assert!(offset_of!(NET_BUFFER_LIST, MiniportReserved) == 0x60);
const _: () = assert!(offset_of!(NET_BUFFER_LIST, SourceHandle) == 0x78);
const _: () = assert!(offset_of!(NET_BUFFER_LIST, Status) == 0x8C);
const _: () = assert!(offset_of!(NET_BUFFER_LIST, NetBufferListInfo) == 0x90);
/// `TcpIpChecksumNetBufferListInfo`.
pub const TCP_IP_CHECKSUM_NBL_INFO: usize = 0;
/// `NetBufferListCancelId`.
pub const NBL_CANCEL_ID: usize = 5;
/// `NDIS_SEND_COMPLETE_FLAGS_DISPATCH_LEVEL`.
pub const NDIS_SEND_COMPLETE_FLAGS_DISPATCH_LEVEL: u32 = 0x1;
/// `NDIS_SEND_FLAGS_DISPATCH_LEVEL`.
pub const NDIS_SEND_FLAGS_DISPATCH_LEVEL: u32 = 0x1;
/// `NDIS_RECEIVE_FLAGS_DISPATCH_LEVEL`.
pub const NDIS_RECEIVE_FLAGS_DISPATCH_LEVEL: u32 = 0x1;

/// `NET_BUFFER_LIST_POOL_PARAMETERS` (`ndis.h`), revision 1.
#[repr(C)]
#[derive(Debug)]
pub struct NET_BUFFER_LIST_POOL_PARAMETERS {
    pub Header: NDIS_OBJECT_HEADER,
    pub ProtocolId: u8,
    pub fAllocateNetBuffer: u8,
    pub ContextSize: u16,
    pub PoolTag: u32,
    pub DataSize: u32,
}
const _: () = assert!(size_of::<NET_BUFFER_LIST_POOL_PARAMETERS>() == 0x10);
/// `NDIS_PROTOCOL_ID_DEFAULT`.
pub const NDIS_PROTOCOL_ID_DEFAULT: u8 = 0;

/// `NDIS_TIMER_CHARACTERISTICS` (`ndis.h`), revision 1.
#[repr(C)]
#[derive(Debug)]
pub struct NDIS_TIMER_CHARACTERISTICS {
    pub Header: NDIS_OBJECT_HEADER,
    pub AllocationTag: u32,
    pub TimerFunction: Option<TimerFn>,
    pub FunctionContext: *mut c_void,
}
const _: () = assert!(size_of::<NDIS_TIMER_CHARACTERISTICS>() == 0x18);
const _: () = assert!(offset_of!(NDIS_TIMER_CHARACTERISTICS, TimerFunction) == 0x08);

/// `NDIS_OBJECT_TYPE_MINIPORT_INTERRUPT` (`NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS`).
pub const NDIS_OBJECT_TYPE_MINIPORT_INTERRUPT: u8 = 0x84;
/// `NDIS_MINIPORT_INTERRUPT_REVISION_1`.
pub const NDIS_MINIPORT_INTERRUPT_REVISION_1: u8 = 1;
/// `NDIS_SIZEOF_MINIPORT_INTERRUPT_CHARACTERISTICS_REVISION_1` (the whole
/// structure, through `MessageInfoTable`).
pub const NDIS_SIZEOF_MINIPORT_INTERRUPT_CHARACTERISTICS_REVISION_1: u16 = 0x60;
/// `NDIS_CONNECT_LINE_BASED` (`NDIS_INTERRUPT_TYPE`).
pub const NDIS_CONNECT_LINE_BASED: u32 = 1;
/// `NDIS_CONNECT_MESSAGE_BASED`.
pub const NDIS_CONNECT_MESSAGE_BASED: u32 = 2;

/// `MINIPORT_ISR` (interrupt context, out `QueueDefaultInterruptDpc`, out
/// `TargetProcessors`): TRUE if the interrupt was ours. Runs at DIRQL.
pub type IsrFn = unsafe extern "system" fn(NDIS_HANDLE, *mut u8, *mut u32) -> u8;
/// `MINIPORT_INTERRUPT_DPC` (interrupt context, DPC context, two reserved
/// in NDIS 6.0). Runs at DISPATCH_LEVEL.
pub type InterruptDpcFn =
    unsafe extern "system" fn(NDIS_HANDLE, *mut c_void, *mut c_void, *mut c_void);
/// `MINIPORT_DISABLE_INTERRUPT` / `MINIPORT_ENABLE_INTERRUPT`.
pub type InterruptEnableFn = unsafe extern "system" fn(NDIS_HANDLE);
/// `MINIPORT_MSI_ISR` (context, message ID, out queue DPC, out target
/// processors).
pub type MsiIsrFn = unsafe extern "system" fn(NDIS_HANDLE, u32, *mut u8, *mut u32) -> u8;
/// `MINIPORT_MSI_INTERRUPT_DPC` (context, message ID, DPC context, two
/// reserved).
pub type MsiDpcFn =
    unsafe extern "system" fn(NDIS_HANDLE, u32, *mut c_void, *mut c_void, *mut c_void);
/// `MINIPORT_DISABLE_MSI_INTERRUPT` / `MINIPORT_ENABLE_MSI_INTERRUPT`.
pub type MsiEnableFn = unsafe extern "system" fn(NDIS_HANDLE, u32);

/// `NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS` (`ndis.h`), revision 1: the
/// handlers `NdisMRegisterInterruptEx` connects; NDIS writes back
/// `InterruptType` and `MessageInfoTable`.
#[repr(C)]
#[derive(Debug)]
pub struct NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS {
    pub Header: NDIS_OBJECT_HEADER,
    pub InterruptHandler: Option<IsrFn>,
    pub InterruptDpcHandler: Option<InterruptDpcFn>,
    pub DisableInterruptHandler: Option<InterruptEnableFn>,
    pub EnableInterruptHandler: Option<InterruptEnableFn>,
    pub MsiSupported: u8,
    pub MsiSyncWithAllMessages: u8,
    pub MessageInterruptHandler: Option<MsiIsrFn>,
    pub MessageInterruptDpcHandler: Option<MsiDpcFn>,
    pub DisableMessageInterruptHandler: Option<MsiEnableFn>,
    pub EnableMessageInterruptHandler: Option<MsiEnableFn>,
    pub InterruptType: u32,
    pub MessageInfoTable: *mut c_void,
}
const _: () = assert!(size_of::<NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS>() == 0x60);
const _: () =
    assert!(offset_of!(NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS, InterruptHandler) == 0x08);
const _: () =
    assert!(offset_of!(NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS, InterruptDpcHandler) == 0x10);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS,
        DisableInterruptHandler
    ) == 0x18
);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS,
        EnableInterruptHandler
    ) == 0x20
);
const _: () = assert!(offset_of!(NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS, MsiSupported) == 0x28);
const _: () = assert!(
    offset_of!(
        NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS,
        MessageInterruptHandler
    ) == 0x30
);
const _: () = assert!(offset_of!(NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS, InterruptType) == 0x50);
const _: () =
    assert!(offset_of!(NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS, MessageInfoTable) == 0x58);

/// `NDIS_SPIN_LOCK` (`ndis.h`): a `KSPIN_LOCK` and the IRQL to return to.
#[repr(C)]
#[derive(Debug, Default)]
pub struct NDIS_SPIN_LOCK {
    pub SpinLock: usize,
    pub OldIrql: u8,
}
const _: () = assert!(size_of::<NDIS_SPIN_LOCK>() == 0x10);

/// `NDIS_STATUS_INDICATION` (`ndis.h`), revision 1.
#[repr(C)]
#[derive(Debug)]
pub struct NDIS_STATUS_INDICATION {
    pub Header: NDIS_OBJECT_HEADER,
    pub SourceHandle: NDIS_HANDLE,
    pub PortNumber: u32,
    pub StatusCode: NDIS_STATUS,
    pub Flags: u32,
    pub DestinationHandle: NDIS_HANDLE,
    pub RequestId: *mut c_void,
    pub StatusBuffer: *mut c_void,
    pub StatusBufferSize: u32,
    pub Guid: [u8; 16],
    pub NdisReserved: [*mut c_void; 4],
}
const _: () = assert!(size_of::<NDIS_STATUS_INDICATION>() == 0x70);
const _: () = assert!(offset_of!(NDIS_STATUS_INDICATION, StatusCode) == 0x14);
const _: () = assert!(offset_of!(NDIS_STATUS_INDICATION, StatusBuffer) == 0x30);
const _: () = assert!(offset_of!(NDIS_STATUS_INDICATION, Guid) == 0x3C);
const _: () = assert!(offset_of!(NDIS_STATUS_INDICATION, NdisReserved) == 0x50);
/// `NDIS_STATUS_LINK_STATE` (buffer: `NDIS_LINK_STATE`).
pub const NDIS_STATUS_LINK_STATE: NDIS_STATUS = 0x4001_0017;
/// `NDIS_STATUS_TASK_OFFLOAD_CURRENT_CONFIG` (buffer: `NDIS_OFFLOAD`).
pub const NDIS_STATUS_TASK_OFFLOAD_CURRENT_CONFIG: NDIS_STATUS = 0x4002_0006;

/// `PCI_WHICHSPACE_CONFIG` (`NdisMGetBusData`).
pub const PCI_WHICHSPACE_CONFIG: u32 = 0;

// Imports from `ndis.sys`. Each name is on the curated export list
// (`pv-windows/exports/ndis.sys.txt`), which the PE lint checks.
#[cfg(target_os = "windows")]
#[link(name = "ndis.sys", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    pub fn NdisMRegisterMiniportDriver(
        driver: *mut DRIVER_OBJECT,
        registry_path: *mut UNICODE_STRING,
        context: NDIS_HANDLE,
        characteristics: *mut NDIS_MINIPORT_DRIVER_CHARACTERISTICS,
        handle: *mut NDIS_HANDLE,
    ) -> NDIS_STATUS;
    pub fn NdisMDeregisterMiniportDriver(handle: NDIS_HANDLE);
    pub fn NdisMSetMiniportAttributes(adapter: NDIS_HANDLE, attributes: *mut c_void)
        -> NDIS_STATUS;
    pub fn NdisMGetBusData(
        adapter: NDIS_HANDLE,
        which_space: u32,
        offset: u32,
        buffer: *mut c_void,
        length: u32,
    ) -> u32;
    pub fn NdisMMapIoSpace(
        virt: *mut *mut c_void,
        adapter: NDIS_HANDLE,
        phys: i64,
        length: u32,
    ) -> NDIS_STATUS;
    pub fn NdisMUnmapIoSpace(adapter: NDIS_HANDLE, virt: *mut c_void, length: u32);
    pub fn NdisAllocateNetBufferListPool(
        handle: NDIS_HANDLE,
        params: *mut NET_BUFFER_LIST_POOL_PARAMETERS,
    ) -> NDIS_HANDLE;
    pub fn NdisFreeNetBufferListPool(pool: NDIS_HANDLE);
    pub fn NdisAllocateNetBufferAndNetBufferList(
        pool: NDIS_HANDLE,
        context_size: u16,
        context_backfill: u16,
        mdl_chain: *mut MDL,
        data_offset: u32,
        data_length: usize,
    ) -> *mut NET_BUFFER_LIST;
    pub fn NdisFreeNetBufferList(nbl: *mut NET_BUFFER_LIST);
    pub fn NdisAllocateMdl(handle: NDIS_HANDLE, va: *mut c_void, length: u32) -> *mut MDL;
    pub fn NdisFreeMdl(mdl: *mut MDL);
    pub fn NdisMIndicateReceiveNetBufferLists(
        adapter: NDIS_HANDLE,
        nbls: *mut NET_BUFFER_LIST,
        port: u32,
        count: u32,
        flags: u32,
    );
    pub fn NdisMSendNetBufferListsComplete(
        adapter: NDIS_HANDLE,
        nbls: *mut NET_BUFFER_LIST,
        flags: u32,
    );
    pub fn NdisMOidRequestComplete(
        adapter: NDIS_HANDLE,
        request: *mut NDIS_OID_REQUEST,
        status: NDIS_STATUS,
    );
    pub fn NdisAllocateTimerObject(
        handle: NDIS_HANDLE,
        characteristics: *mut NDIS_TIMER_CHARACTERISTICS,
        timer: *mut NDIS_HANDLE,
    ) -> NDIS_STATUS;
    pub fn NdisSetTimerObject(timer: NDIS_HANDLE, due: i64, period_ms: u32, ctx: *mut c_void)
        -> u8;
    pub fn NdisCancelTimerObject(timer: NDIS_HANDLE) -> u8;
    pub fn NdisFreeTimerObject(timer: NDIS_HANDLE);
    pub fn NdisAllocateSpinLock(lock: *mut NDIS_SPIN_LOCK);
    pub fn NdisFreeSpinLock(lock: *mut NDIS_SPIN_LOCK);
    pub fn NdisAcquireSpinLock(lock: *mut NDIS_SPIN_LOCK);
    pub fn NdisReleaseSpinLock(lock: *mut NDIS_SPIN_LOCK);
    pub fn NdisMPauseComplete(adapter: NDIS_HANDLE);
    pub fn NdisMIndicateStatusEx(adapter: NDIS_HANDLE, indication: *mut NDIS_STATUS_INDICATION);
    pub fn NdisMRegisterInterruptEx(
        adapter: NDIS_HANDLE,
        context: NDIS_HANDLE,
        characteristics: *mut NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS,
        interrupt: *mut NDIS_HANDLE,
    ) -> NDIS_STATUS;
    pub fn NdisMDeregisterInterruptEx(interrupt: NDIS_HANDLE);
}

// From `ntoskrnl.exe`: mapping a send MDL that has no system address yet
// (`MmGetSystemAddressForMdlSafe` is an inline of `wdm.h` over it), and
// waiting out a running timer DPC at halt.
#[cfg(target_os = "windows")]
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    pub fn MmMapLockedPagesSpecifyCache(
        mdl: *mut MDL,
        access_mode: i8,
        cache: u32,
        requested: *mut c_void,
        bug_check: u32,
        priority: u32,
    ) -> *mut c_void;
    /// Waits until every queued DPC (NDIS timer functions among them) has
    /// run: after `NdisCancelTimerObject`, before freeing what the timer
    /// function uses.
    pub fn KeFlushQueuedDpcs();
}

/// `MDL_MAPPED_TO_SYSTEM_VA` (`wdm.h`).
pub const MDL_MAPPED_TO_SYSTEM_VA: i16 = 0x0001;
/// `MDL_SOURCE_IS_NONPAGED_POOL`.
pub const MDL_SOURCE_IS_NONPAGED_POOL: i16 = 0x0004;
/// `NormalPagePriority | MdlMappingNoExecute` (`wdm.h`).
pub const NORMAL_PAGE_PRIORITY_NO_EXECUTE: u32 = 16 | 0x4000_0000;

/// `MmGetSystemAddressForMdlSafe` (`wdm.h` inline): the MDL's system
/// address, mapping it (no bug check on failure: null) if it has none.
///
/// # Safety
///
/// `mdl` is a valid, locked MDL.
#[cfg(target_os = "windows")]
pub unsafe fn mdl_system_address(mdl: *mut MDL) -> *mut u8 {
    // SAFETY: the caller's contract (a valid MDL).
    let flags = unsafe { (*mdl).MdlFlags };
    if flags & (MDL_MAPPED_TO_SYSTEM_VA | MDL_SOURCE_IS_NONPAGED_POOL) != 0 {
        // SAFETY: as above; the flags say MappedSystemVa is set.
        unsafe { (*mdl).MappedSystemVa.cast() }
    } else {
        // SAFETY: a locked MDL may be mapped; KernelMode, MmCached, no
        // bug check on failure.
        unsafe {
            MmMapLockedPagesSpecifyCache(
                mdl,
                0,
                crate::ffi::MM_CACHED,
                core::ptr::null_mut(),
                0,
                NORMAL_PAGE_PRIORITY_NO_EXECUTE,
            )
            .cast()
        }
    }
}
