//! One test per struct: pv-windows' declaration (left) against the WDK's
//! (right), every field pv-windows declares, by name.

use core::mem::{align_of, offset_of, size_of};

use pv_windows::{ffi as o_ffi, ndis as o_ndis, pci as o_pci, storport as o_sp};
use wdk_sys as w;

use crate::ndis_sys as wn;

/// Ours is the whole WDK struct: same size, same alignment.
fn whole<O, W>(name: &str) {
    assert_eq!(size_of::<O>(), size_of::<W>(), "{name}: size");
    assert_eq!(align_of::<O>(), align_of::<W>(), "{name}: align");
}

/// Ours is a leading part of the WDK struct (the fields up to the last
/// one we use, or an older revision): no bigger, no more aligned.
fn prefix<O, W>(name: &str) {
    assert!(
        size_of::<O>() <= size_of::<W>(),
        "{name}: ours is {} bytes, the WDK's {}",
        size_of::<O>(),
        size_of::<W>()
    );
    assert!(
        align_of::<O>() <= align_of::<W>(),
        "{name}: ours is aligned to {}, the WDK's to {}",
        align_of::<O>(),
        align_of::<W>()
    );
}

/// `field!(Ours, ours_field, Wdk, wdk.field.path)`: equal offsets.
macro_rules! field {
    ($o:ty, $of:ident, $w:ty, $($wf:tt).+) => {
        assert_eq!(
            offset_of!($o, $of),
            offset_of!($w, $($wf).+),
            concat!(stringify!($o), ".", stringify!($of), " vs ", stringify!($($wf).+))
        )
    };
}

// ---- storport.h (wdk-sys, Storage subset) ----

#[test]
fn scsi_supported_control_type_list() {
    // A header plus a variable-length BOOLEAN array: ours declares one
    // element, so only the header and the array's start are compared.
    prefix::<o_sp::SCSI_SUPPORTED_CONTROL_TYPE_LIST, w::SCSI_SUPPORTED_CONTROL_TYPE_LIST>(
        "SCSI_SUPPORTED_CONTROL_TYPE_LIST",
    );
    type O = o_sp::SCSI_SUPPORTED_CONTROL_TYPE_LIST;
    type W = w::SCSI_SUPPORTED_CONTROL_TYPE_LIST;
    field!(O, MaxControlType, W, MaxControlType);
    field!(O, SupportedTypeList, W, SupportedTypeList);
}

#[test]
fn hw_initialization_data() {
    type O = o_sp::HW_INITIALIZATION_DATA;
    type W = w::HW_INITIALIZATION_DATA;
    whole::<O, W>("HW_INITIALIZATION_DATA");
    field!(O, HwInitializationDataSize, W, HwInitializationDataSize);
    field!(O, AdapterInterfaceType, W, AdapterInterfaceType);
    field!(O, HwInitialize, W, HwInitialize);
    field!(O, HwStartIo, W, HwStartIo);
    field!(O, HwInterrupt, W, HwInterrupt);
    field!(O, HwFindAdapter, W, HwFindAdapter);
    field!(O, HwResetBus, W, HwResetBus);
    field!(O, HwDmaStarted, W, HwDmaStarted);
    field!(O, HwAdapterState, W, HwAdapterState);
    field!(O, DeviceExtensionSize, W, DeviceExtensionSize);
    field!(O, SpecificLuExtensionSize, W, SpecificLuExtensionSize);
    field!(O, SrbExtensionSize, W, SrbExtensionSize);
    field!(O, NumberOfAccessRanges, W, NumberOfAccessRanges);
    field!(O, Reserved, W, Reserved);
    field!(O, MapBuffers, W, MapBuffers);
    field!(O, NeedPhysicalAddresses, W, NeedPhysicalAddresses);
    field!(O, TaggedQueuing, W, TaggedQueuing);
    field!(O, AutoRequestSense, W, AutoRequestSense);
    field!(O, MultipleRequestPerLu, W, MultipleRequestPerLu);
    field!(O, ReceiveEvent, W, ReceiveEvent);
    field!(O, VendorIdLength, W, VendorIdLength);
    field!(O, VendorId, W, VendorId);
    // `union { USHORT ReservedUshort; USHORT PortVersionFlags; }`
    field!(O, PortVersionFlags, W, __bindgen_anon_1.PortVersionFlags);
    field!(O, DeviceIdLength, W, DeviceIdLength);
    field!(O, DeviceId, W, DeviceId);
    // Recent storport.h: `union { HwAdapterControl; HwNvmeAdapterControl; }`
    // (older WDKs have the plain field: a compile error here, not a skip).
    field!(O, HwAdapterControl, W, __bindgen_anon_2.HwAdapterControl);
    field!(O, HwBuildIo, W, HwBuildIo);
    field!(O, HwFreeAdapterResources, W, HwFreeAdapterResources);
    field!(O, HwProcessServiceRequest, W, HwProcessServiceRequest);
    field!(O, HwCompleteServiceIrp, W, HwCompleteServiceIrp);
    field!(O, HwInitializeTracing, W, HwInitializeTracing);
    field!(O, HwCleanupTracing, W, HwCleanupTracing);
    field!(O, HwTracingEnabled, W, HwTracingEnabled);
    field!(O, FeatureSupport, W, FeatureSupport);
    field!(O, SrbTypeFlags, W, SrbTypeFlags);
    field!(O, AddressTypeFlags, W, AddressTypeFlags);
    field!(O, Reserved1, W, Reserved1);
    // Recent storport.h: `union { HwUnitControl; HwNamespaceControl; }`
    field!(O, HwUnitControl, W, __bindgen_anon_3.HwUnitControl);
}

#[test]
fn access_range() {
    type O = o_sp::ACCESS_RANGE;
    type W = w::ACCESS_RANGE;
    whole::<O, W>("ACCESS_RANGE");
    field!(O, RangeStart, W, RangeStart);
    field!(O, RangeLength, W, RangeLength);
    field!(O, RangeInMemory, W, RangeInMemory);
}

#[test]
fn memory_region() {
    type O = o_sp::MEMORY_REGION;
    type W = w::MEMORY_REGION;
    whole::<O, W>("MEMORY_REGION");
    field!(O, VirtualBase, W, VirtualBase);
    field!(O, PhysicalBase, W, PhysicalBase);
    field!(O, Length, W, Length);
}

#[test]
fn port_configuration_information() {
    type O = o_sp::PORT_CONFIGURATION_INFORMATION;
    type W = w::PORT_CONFIGURATION_INFORMATION;
    whole::<O, W>("PORT_CONFIGURATION_INFORMATION");
    field!(O, Length, W, Length);
    field!(O, SystemIoBusNumber, W, SystemIoBusNumber);
    field!(O, AdapterInterfaceType, W, AdapterInterfaceType);
    field!(O, BusInterruptLevel, W, BusInterruptLevel);
    field!(O, BusInterruptVector, W, BusInterruptVector);
    field!(O, InterruptMode, W, InterruptMode);
    field!(O, MaximumTransferLength, W, MaximumTransferLength);
    field!(O, NumberOfPhysicalBreaks, W, NumberOfPhysicalBreaks);
    field!(O, DmaChannel, W, DmaChannel);
    field!(O, DmaPort, W, DmaPort);
    field!(O, DmaWidth, W, DmaWidth);
    field!(O, DmaSpeed, W, DmaSpeed);
    field!(O, AlignmentMask, W, AlignmentMask);
    field!(O, NumberOfAccessRanges, W, NumberOfAccessRanges);
    field!(O, AccessRanges, W, AccessRanges);
    field!(O, MiniportDumpData, W, MiniportDumpData);
    field!(O, NumberOfBuses, W, NumberOfBuses);
    field!(O, InitiatorBusId, W, InitiatorBusId);
    field!(O, ScatterGather, W, ScatterGather);
    field!(O, Master, W, Master);
    field!(O, CachesData, W, CachesData);
    field!(O, AdapterScansDown, W, AdapterScansDown);
    field!(O, AtdiskPrimaryClaimed, W, AtdiskPrimaryClaimed);
    field!(O, AtdiskSecondaryClaimed, W, AtdiskSecondaryClaimed);
    field!(O, Dma32BitAddresses, W, Dma32BitAddresses);
    field!(O, DemandMode, W, DemandMode);
    field!(O, MapBuffers, W, MapBuffers);
    field!(O, NeedPhysicalAddresses, W, NeedPhysicalAddresses);
    field!(O, TaggedQueuing, W, TaggedQueuing);
    field!(O, AutoRequestSense, W, AutoRequestSense);
    field!(O, MultipleRequestPerLu, W, MultipleRequestPerLu);
    field!(O, ReceiveEvent, W, ReceiveEvent);
    field!(O, RealModeInitialized, W, RealModeInitialized);
    field!(
        O,
        BufferAccessScsiPortControlled,
        W,
        BufferAccessScsiPortControlled
    );
    field!(O, MaximumNumberOfTargets, W, MaximumNumberOfTargets);
    field!(O, SrbType, W, SrbType);
    field!(O, AddressType, W, AddressType);
    field!(O, SlotNumber, W, SlotNumber);
    field!(O, BusInterruptLevel2, W, BusInterruptLevel2);
    field!(O, BusInterruptVector2, W, BusInterruptVector2);
    field!(O, InterruptMode2, W, InterruptMode2);
    field!(O, DmaChannel2, W, DmaChannel2);
    field!(O, DmaPort2, W, DmaPort2);
    field!(O, DmaWidth2, W, DmaWidth2);
    field!(O, DmaSpeed2, W, DmaSpeed2);
    field!(O, DeviceExtensionSize, W, DeviceExtensionSize);
    field!(O, SpecificLuExtensionSize, W, SpecificLuExtensionSize);
    field!(O, SrbExtensionSize, W, SrbExtensionSize);
    field!(O, Dma64BitAddresses, W, Dma64BitAddresses);
    field!(O, ResetTargetSupported, W, ResetTargetSupported);
    field!(
        O,
        MaximumNumberOfLogicalUnits,
        W,
        MaximumNumberOfLogicalUnits
    );
    field!(O, WmiDataProvider, W, WmiDataProvider);
    field!(O, SynchronizationModel, W, SynchronizationModel);
    field!(O, HwMSInterruptRoutine, W, HwMSInterruptRoutine);
    field!(
        O,
        InterruptSynchronizationMode,
        W,
        InterruptSynchronizationMode
    );
    field!(O, DumpRegion, W, DumpRegion);
    field!(O, RequestedDumpBufferSize, W, RequestedDumpBufferSize);
    field!(O, VirtualDevice, W, VirtualDevice);
    field!(O, DumpMode, W, DumpMode);
    field!(O, ExtendedFlags1, W, ExtendedFlags1);
    field!(O, MaxNumberOfIO, W, MaxNumberOfIO);
    field!(O, MaxIOsPerLun, W, MaxIOsPerLun);
    field!(O, InitialLunQueueDepth, W, InitialLunQueueDepth);
    field!(O, BusResetHoldTime, W, BusResetHoldTime);
    field!(O, FeatureSupport, W, FeatureSupport);
}

#[test]
fn scsi_request_block() {
    type O = o_sp::SCSI_REQUEST_BLOCK;
    type W = w::SCSI_REQUEST_BLOCK;
    whole::<O, W>("SCSI_REQUEST_BLOCK");
    field!(O, Length, W, Length);
    field!(O, Function, W, Function);
    field!(O, SrbStatus, W, SrbStatus);
    field!(O, ScsiStatus, W, ScsiStatus);
    field!(O, PathId, W, PathId);
    field!(O, TargetId, W, TargetId);
    field!(O, Lun, W, Lun);
    field!(O, QueueTag, W, QueueTag);
    field!(O, QueueAction, W, QueueAction);
    field!(O, CdbLength, W, CdbLength);
    field!(O, SenseInfoBufferLength, W, SenseInfoBufferLength);
    field!(O, SrbFlags, W, SrbFlags);
    field!(O, DataTransferLength, W, DataTransferLength);
    field!(O, TimeOutValue, W, TimeOutValue);
    field!(O, DataBuffer, W, DataBuffer);
    field!(O, SenseInfoBuffer, W, SenseInfoBuffer);
    field!(O, NextSrb, W, NextSrb);
    field!(O, OriginalRequest, W, OriginalRequest);
    field!(O, SrbExtension, W, SrbExtension);
    // `union { ULONG InternalStatus; ULONG QueueSortKey; ULONG LinkTimeoutValue; }`
    field!(O, InternalStatus, W, __bindgen_anon_1.InternalStatus);
    field!(O, Reserved, W, Reserved);
    field!(O, Cdb, W, Cdb);
}

#[test]
fn storage_request_block_header() {
    // Our header view of `STORAGE_REQUEST_BLOCK` (SRB_EX): the fields
    // before the per-request data.
    type O = o_sp::STORAGE_REQUEST_BLOCK_HEADER;
    type W = w::STORAGE_REQUEST_BLOCK;
    prefix::<O, W>("STORAGE_REQUEST_BLOCK_HEADER / STORAGE_REQUEST_BLOCK");
    field!(O, Length, W, Length);
    field!(O, Function, W, Function);
    field!(O, SrbStatus, W, SrbStatus);
    field!(O, ReservedUlong1, W, ReservedUlong1);
    field!(O, Signature, W, Signature);
    field!(O, Version, W, Version);
    field!(O, SrbLength, W, SrbLength);
    field!(O, SrbFunction, W, SrbFunction);
    field!(O, SrbFlags, W, SrbFlags);
}

// ---- ntddk.h / wdm.h (wdk-sys, Base subset) ----

#[test]
fn unicode_string() {
    type O = o_ffi::UNICODE_STRING;
    type W = w::UNICODE_STRING;
    whole::<O, W>("UNICODE_STRING");
    field!(O, Length, W, Length);
    field!(O, MaximumLength, W, MaximumLength);
    field!(O, Buffer, W, Buffer);
}

#[test]
fn io_status_block() {
    type O = o_ffi::IO_STATUS_BLOCK;
    type W = w::IO_STATUS_BLOCK;
    whole::<O, W>("IO_STATUS_BLOCK");
    // `union { NTSTATUS Status; PVOID Pointer; }`
    field!(O, Status, W, __bindgen_anon_1.Status);
    field!(O, Information, W, Information);
}

#[test]
fn kevent() {
    // Opaque on our side: storage the kernel initialises.
    whole::<o_ffi::KEVENT, w::KEVENT>("KEVENT");
}

#[test]
fn object_attributes() {
    type O = o_ffi::OBJECT_ATTRIBUTES;
    type W = w::OBJECT_ATTRIBUTES;
    whole::<O, W>("OBJECT_ATTRIBUTES");
    field!(O, Length, W, Length);
    field!(O, RootDirectory, W, RootDirectory);
    field!(O, ObjectName, W, ObjectName);
    field!(O, Attributes, W, Attributes);
    field!(O, SecurityDescriptor, W, SecurityDescriptor);
    field!(O, SecurityQualityOfService, W, SecurityQualityOfService);
}

#[test]
fn driver_extension() {
    type O = o_ffi::DRIVER_EXTENSION;
    type W = w::DRIVER_EXTENSION;
    prefix::<O, W>("DRIVER_EXTENSION");
    field!(O, DriverObject, W, DriverObject);
    field!(O, AddDevice, W, AddDevice);
}

#[test]
fn driver_object() {
    type O = o_ffi::DRIVER_OBJECT;
    type W = w::DRIVER_OBJECT;
    whole::<O, W>("DRIVER_OBJECT");
    field!(O, Type, W, Type);
    field!(O, Size, W, Size);
    field!(O, DeviceObject, W, DeviceObject);
    field!(O, Flags, W, Flags);
    field!(O, DriverStart, W, DriverStart);
    field!(O, DriverSize, W, DriverSize);
    field!(O, DriverSection, W, DriverSection);
    field!(O, DriverExtension, W, DriverExtension);
    field!(O, DriverName, W, DriverName);
    field!(O, HardwareDatabase, W, HardwareDatabase);
    field!(O, FastIoDispatch, W, FastIoDispatch);
    field!(O, DriverInit, W, DriverInit);
    field!(O, DriverStartIo, W, DriverStartIo);
    field!(O, DriverUnload, W, DriverUnload);
    field!(O, MajorFunction, W, MajorFunction);
}

#[test]
fn device_object() {
    type O = o_ffi::DEVICE_OBJECT;
    type W = w::DEVICE_OBJECT;
    prefix::<O, W>("DEVICE_OBJECT");
    field!(O, Type, W, Type);
    field!(O, Size, W, Size);
    field!(O, ReferenceCount, W, ReferenceCount);
    field!(O, DriverObject, W, DriverObject);
    field!(O, NextDevice, W, NextDevice);
    field!(O, AttachedDevice, W, AttachedDevice);
    field!(O, CurrentIrp, W, CurrentIrp);
    field!(O, Timer, W, Timer);
    field!(O, Flags, W, Flags);
    field!(O, Characteristics, W, Characteristics);
    field!(O, Vpb, W, Vpb);
    field!(O, DeviceExtension, W, DeviceExtension);
    field!(O, DeviceType, W, DeviceType);
    field!(O, StackSize, W, StackSize);
}

#[test]
fn irp() {
    type O = o_ffi::IRP;
    type W = w::IRP;
    prefix::<O, W>("IRP");
    field!(O, Type, W, Type);
    field!(O, Size, W, Size);
    field!(O, AllocationProcessorNumber, W, AllocationProcessorNumber);
    field!(O, Reserved, W, Reserved);
    field!(O, MdlAddress, W, MdlAddress);
    field!(O, Flags, W, Flags);
    field!(O, AssociatedIrp, W, AssociatedIrp);
    field!(O, ThreadListEntry, W, ThreadListEntry);
    field!(O, IoStatus, W, IoStatus);
    field!(O, RequestorMode, W, RequestorMode);
    field!(O, PendingReturned, W, PendingReturned);
    field!(O, StackCount, W, StackCount);
    field!(O, CurrentLocation, W, CurrentLocation);
    field!(O, Cancel, W, Cancel);
    field!(O, CancelIrql, W, CancelIrql);
    field!(O, ApcEnvironment, W, ApcEnvironment);
    field!(O, AllocationFlags, W, AllocationFlags);
    // `union { PIO_STATUS_BLOCK UserIosb; PVOID IoRingContext; }`
    field!(O, UserIosb, W, __bindgen_anon_1.UserIosb);
    field!(O, UserEvent, W, UserEvent);
    field!(O, Overlay, W, Overlay);
    field!(O, CancelRoutine, W, CancelRoutine);
    field!(O, UserBuffer, W, UserBuffer);
    // Ours: the `Tail` union up to `Tail.Overlay.CurrentStackLocation`.
    field!(O, TailOverlay, W, Tail);
    // `Tail.Overlay`: `union { DeviceQueueEntry; DriverContext[4] }`,
    // Thread, AuxiliaryBuffer, then `struct { ListEntry; union {
    // CurrentStackLocation; PacketType } }`.
    field!(
        O,
        CurrentStackLocation,
        W,
        Tail.Overlay
            .__bindgen_anon_2
            .__bindgen_anon_1
            .CurrentStackLocation
    );
}

#[test]
fn io_stack_location() {
    type O = o_ffi::IO_STACK_LOCATION;
    type W = w::IO_STACK_LOCATION;
    whole::<O, W>("IO_STACK_LOCATION");
    field!(O, MajorFunction, W, MajorFunction);
    field!(O, MinorFunction, W, MinorFunction);
    field!(O, Flags, W, Flags);
    field!(O, Control, W, Control);
    field!(O, Parameters, W, Parameters);
    field!(O, DeviceObject, W, DeviceObject);
    field!(O, FileObject, W, FileObject);
    field!(O, CompletionRoutine, W, CompletionRoutine);
    field!(O, Context, W, Context);
}

#[test]
fn mdl() {
    type O = o_ffi::MDL;
    type W = w::MDL;
    whole::<O, W>("MDL");
    field!(O, Next, W, Next);
    field!(O, Size, W, Size);
    field!(O, MdlFlags, W, MdlFlags);
    field!(O, AllocationProcessorNumber, W, AllocationProcessorNumber);
    field!(O, Reserved, W, Reserved);
    field!(O, Process, W, Process);
    field!(O, MappedSystemVa, W, MappedSystemVa);
    field!(O, StartVa, W, StartVa);
    field!(O, ByteCount, W, ByteCount);
    field!(O, ByteOffset, W, ByteOffset);
}

#[test]
fn kdpc() {
    type O = o_ffi::KDPC;
    type W = w::KDPC;
    whole::<O, W>("KDPC");
    // `union { ULONG TargetInfoAsUlong; struct { UCHAR Type; UCHAR
    // Importance; volatile USHORT Number; }; }`
    field!(O, Type, W, __bindgen_anon_1.__bindgen_anon_1.Type);
    field!(
        O,
        Importance,
        W,
        __bindgen_anon_1.__bindgen_anon_1.Importance
    );
    field!(O, Number, W, __bindgen_anon_1.__bindgen_anon_1.Number);
    field!(O, DpcListEntry, W, DpcListEntry);
    field!(O, ProcessorHistory, W, ProcessorHistory);
    field!(O, DeferredRoutine, W, DeferredRoutine);
    field!(O, DeferredContext, W, DeferredContext);
    field!(O, SystemArgument1, W, SystemArgument1);
    field!(O, SystemArgument2, W, SystemArgument2);
    field!(O, DpcData, W, DpcData);
}

#[test]
fn io_connect_interrupt_fully_specified_parameters() {
    type O = o_ffi::IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS;
    type W = w::IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS;
    whole::<O, W>("IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS");
    field!(O, PhysicalDeviceObject, W, PhysicalDeviceObject);
    field!(O, InterruptObject, W, InterruptObject);
    field!(O, ServiceRoutine, W, ServiceRoutine);
    field!(O, ServiceContext, W, ServiceContext);
    field!(O, SpinLock, W, SpinLock);
    field!(O, SynchronizeIrql, W, SynchronizeIrql);
    field!(O, FloatingSave, W, FloatingSave);
    field!(O, ShareVector, W, ShareVector);
    field!(O, Vector, W, Vector);
    field!(O, Irql, W, Irql);
    field!(O, InterruptMode, W, InterruptMode);
    field!(O, ProcessorEnableMask, W, ProcessorEnableMask);
    field!(O, Group, W, Group);
}

#[test]
fn io_connect_interrupt_parameters() {
    type O = o_ffi::IO_CONNECT_INTERRUPT_PARAMETERS;
    type W = w::IO_CONNECT_INTERRUPT_PARAMETERS;
    whole::<O, W>("IO_CONNECT_INTERRUPT_PARAMETERS");
    field!(O, Version, W, Version);
    // `union { FullySpecified; LineBased; MessageBased; }`
    field!(O, FullySpecified, W, __bindgen_anon_1.FullySpecified);
}

#[test]
fn io_disconnect_interrupt_parameters() {
    type O = o_ffi::IO_DISCONNECT_INTERRUPT_PARAMETERS;
    type W = w::IO_DISCONNECT_INTERRUPT_PARAMETERS;
    whole::<O, W>("IO_DISCONNECT_INTERRUPT_PARAMETERS");
    field!(O, Version, W, Version);
    // `union { PVOID Generic; PKINTERRUPT InterruptObject; ... } ConnectionContext`
    field!(O, InterruptObject, W, ConnectionContext.InterruptObject);
}

#[test]
fn cm_resource_list_byte_offsets() {
    // pci.rs walks a CM_RESOURCE_LIST by byte offsets (the structs are
    // `#pragma pack(4)` and variable-length).
    assert_eq!(
        o_pci::PARTIAL_DESCRIPTOR_BYTES,
        size_of::<w::CM_PARTIAL_RESOURCE_DESCRIPTOR>(),
        "PARTIAL_DESCRIPTOR_BYTES vs sizeof(CM_PARTIAL_RESOURCE_DESCRIPTOR)"
    );
    assert_eq!(
        o_pci::FULL_HEADER_BYTES,
        offset_of!(w::CM_FULL_RESOURCE_DESCRIPTOR, PartialResourceList)
            + offset_of!(w::CM_PARTIAL_RESOURCE_LIST, PartialDescriptors),
        "FULL_HEADER_BYTES vs the offset of the first partial descriptor"
    );
}

// ---- ndis.h (bindgen in build.rs) ----

#[test]
fn ndis_object_header() {
    type O = o_ndis::NDIS_OBJECT_HEADER;
    type W = wn::NDIS_OBJECT_HEADER;
    whole::<O, W>("NDIS_OBJECT_HEADER");
    field!(O, Type, W, Type);
    field!(O, Revision, W, Revision);
    field!(O, Size, W, Size);
}

#[test]
fn ndis_miniport_driver_characteristics() {
    // Revision 2: later revisions append handlers.
    type O = o_ndis::NDIS_MINIPORT_DRIVER_CHARACTERISTICS;
    type W = wn::NDIS_MINIPORT_DRIVER_CHARACTERISTICS;
    prefix::<O, W>("NDIS_MINIPORT_DRIVER_CHARACTERISTICS");
    field!(O, Header, W, Header);
    field!(O, MajorNdisVersion, W, MajorNdisVersion);
    field!(O, MinorNdisVersion, W, MinorNdisVersion);
    field!(O, MajorDriverVersion, W, MajorDriverVersion);
    field!(O, MinorDriverVersion, W, MinorDriverVersion);
    field!(O, Flags, W, Flags);
    field!(O, SetOptionsHandler, W, SetOptionsHandler);
    field!(O, InitializeHandlerEx, W, InitializeHandlerEx);
    field!(O, HaltHandlerEx, W, HaltHandlerEx);
    field!(O, UnloadHandler, W, UnloadHandler);
    field!(O, PauseHandler, W, PauseHandler);
    field!(O, RestartHandler, W, RestartHandler);
    field!(O, OidRequestHandler, W, OidRequestHandler);
    field!(O, SendNetBufferListsHandler, W, SendNetBufferListsHandler);
    field!(
        O,
        ReturnNetBufferListsHandler,
        W,
        ReturnNetBufferListsHandler
    );
    field!(O, CancelSendHandler, W, CancelSendHandler);
    field!(O, CheckForHangHandlerEx, W, CheckForHangHandlerEx);
    field!(O, ResetHandlerEx, W, ResetHandlerEx);
    field!(
        O,
        DevicePnPEventNotifyHandler,
        W,
        DevicePnPEventNotifyHandler
    );
    field!(O, ShutdownHandlerEx, W, ShutdownHandlerEx);
    field!(O, CancelOidRequestHandler, W, CancelOidRequestHandler);
    field!(O, DirectOidRequestHandler, W, DirectOidRequestHandler);
    field!(
        O,
        CancelDirectOidRequestHandler,
        W,
        CancelDirectOidRequestHandler
    );
}

#[test]
fn ndis_miniport_init_parameters() {
    type O = o_ndis::NDIS_MINIPORT_INIT_PARAMETERS;
    type W = wn::NDIS_MINIPORT_INIT_PARAMETERS;
    prefix::<O, W>("NDIS_MINIPORT_INIT_PARAMETERS");
    field!(O, Header, W, Header);
    field!(O, Flags, W, Flags);
    field!(O, AllocatedResources, W, AllocatedResources);
}

#[test]
fn ndis_miniport_adapter_registration_attributes() {
    type O = o_ndis::NDIS_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES;
    type W = wn::NDIS_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES;
    prefix::<O, W>("NDIS_MINIPORT_ADAPTER_REGISTRATION_ATTRIBUTES");
    field!(O, Header, W, Header);
    field!(O, MiniportAdapterContext, W, MiniportAdapterContext);
    field!(O, AttributeFlags, W, AttributeFlags);
    field!(O, CheckForHangTimeInSeconds, W, CheckForHangTimeInSeconds);
    field!(O, InterfaceType, W, InterfaceType);
}

#[test]
fn ndis_miniport_adapter_general_attributes() {
    type O = o_ndis::NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES;
    type W = wn::NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES;
    prefix::<O, W>("NDIS_MINIPORT_ADAPTER_GENERAL_ATTRIBUTES");
    field!(O, Header, W, Header);
    field!(O, Flags, W, Flags);
    field!(O, MediaType, W, MediaType);
    field!(O, PhysicalMediumType, W, PhysicalMediumType);
    field!(O, MtuSize, W, MtuSize);
    field!(O, MaxXmitLinkSpeed, W, MaxXmitLinkSpeed);
    field!(O, XmitLinkSpeed, W, XmitLinkSpeed);
    field!(O, MaxRcvLinkSpeed, W, MaxRcvLinkSpeed);
    field!(O, RcvLinkSpeed, W, RcvLinkSpeed);
    field!(O, MediaConnectState, W, MediaConnectState);
    field!(O, MediaDuplexState, W, MediaDuplexState);
    field!(O, LookaheadSize, W, LookaheadSize);
    field!(
        O,
        PowerManagementCapabilities,
        W,
        PowerManagementCapabilities
    );
    field!(O, MacOptions, W, MacOptions);
    field!(O, SupportedPacketFilters, W, SupportedPacketFilters);
    field!(O, MaxMulticastListSize, W, MaxMulticastListSize);
    field!(O, MacAddressLength, W, MacAddressLength);
    field!(O, PermanentMacAddress, W, PermanentMacAddress);
    field!(O, CurrentMacAddress, W, CurrentMacAddress);
    field!(O, RecvScaleCapabilities, W, RecvScaleCapabilities);
    field!(O, AccessType, W, AccessType);
    field!(O, DirectionType, W, DirectionType);
    field!(O, ConnectionType, W, ConnectionType);
    field!(O, IfType, W, IfType);
    field!(O, IfConnectorPresent, W, IfConnectorPresent);
    field!(O, SupportedStatistics, W, SupportedStatistics);
    field!(O, SupportedPauseFunctions, W, SupportedPauseFunctions);
    field!(O, DataBackFillSize, W, DataBackFillSize);
    field!(O, ContextBackFillSize, W, ContextBackFillSize);
    field!(O, SupportedOidList, W, SupportedOidList);
    field!(O, SupportedOidListLength, W, SupportedOidListLength);
    field!(O, AutoNegotiationFlags, W, AutoNegotiationFlags);
    field!(
        O,
        PowerManagementCapabilitiesEx,
        W,
        PowerManagementCapabilitiesEx
    );
}

#[test]
fn ndis_miniport_adapter_offload_attributes() {
    type O = o_ndis::NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES;
    type W = wn::NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES;
    prefix::<O, W>("NDIS_MINIPORT_ADAPTER_OFFLOAD_ATTRIBUTES");
    field!(O, Header, W, Header);
    field!(
        O,
        DefaultOffloadConfiguration,
        W,
        DefaultOffloadConfiguration
    );
    field!(
        O,
        HardwareOffloadCapabilities,
        W,
        HardwareOffloadCapabilities
    );
    field!(
        O,
        DefaultTcpConnectionOffloadConfiguration,
        W,
        DefaultTcpConnectionOffloadConfiguration
    );
    field!(
        O,
        TcpConnectionOffloadHardwareCapabilities,
        W,
        TcpConnectionOffloadHardwareCapabilities
    );
}

#[test]
fn ndis_oid_request() {
    // Ours flattens the `DATA` union to its query/set view.
    type O = o_ndis::NDIS_OID_REQUEST;
    type W = wn::NDIS_OID_REQUEST;
    prefix::<O, W>("NDIS_OID_REQUEST");
    field!(O, Header, W, Header);
    field!(O, RequestType, W, RequestType);
    field!(O, PortNumber, W, PortNumber);
    field!(O, Timeout, W, Timeout);
    field!(O, RequestId, W, RequestId);
    field!(O, RequestHandle, W, RequestHandle);
    field!(O, Oid, W, DATA.QUERY_INFORMATION.Oid);
    field!(O, Oid, W, DATA.SET_INFORMATION.Oid);
    field!(
        O,
        InformationBuffer,
        W,
        DATA.QUERY_INFORMATION.InformationBuffer
    );
    field!(
        O,
        InformationBuffer,
        W,
        DATA.SET_INFORMATION.InformationBuffer
    );
    field!(
        O,
        InformationBufferLength,
        W,
        DATA.QUERY_INFORMATION.InformationBufferLength
    );
    field!(
        O,
        InformationBufferLength,
        W,
        DATA.SET_INFORMATION.InformationBufferLength
    );
    field!(O, BytesDone, W, DATA.QUERY_INFORMATION.BytesWritten);
    field!(O, BytesDone, W, DATA.SET_INFORMATION.BytesRead);
    field!(O, BytesNeeded, W, DATA.QUERY_INFORMATION.BytesNeeded);
    field!(O, BytesNeeded, W, DATA.SET_INFORMATION.BytesNeeded);
    field!(O, NdisReserved, W, NdisReserved);
    field!(O, MiniportReserved, W, MiniportReserved);
    field!(O, SourceReserved, W, SourceReserved);
    field!(O, SupportedRevision, W, SupportedRevision);
    field!(O, Reserved1, W, Reserved1);
    field!(O, Reserved2, W, Reserved2);
}

#[test]
fn net_buffer() {
    // `union { struct { Next; CurrentMdl; CurrentMdlOffset; union {
    // DataLength; stDataLength; }; MdlChain; DataOffset; }; SLIST_HEADER
    // Link; }` (ndis/nbl.h; the named NET_BUFFER_HEADER member exists only
    // with NDIS_INCLUDE_LEGACY_NAMES).
    type O = o_ndis::NET_BUFFER;
    type W = wn::NET_BUFFER;
    whole::<O, W>("NET_BUFFER");
    field!(O, Next, W, __bindgen_anon_1.__bindgen_anon_1.Next);
    field!(
        O,
        CurrentMdl,
        W,
        __bindgen_anon_1.__bindgen_anon_1.CurrentMdl
    );
    field!(
        O,
        CurrentMdlOffset,
        W,
        __bindgen_anon_1.__bindgen_anon_1.CurrentMdlOffset
    );
    field!(
        O,
        DataLength,
        W,
        __bindgen_anon_1
            .__bindgen_anon_1
            .__bindgen_anon_1
            .DataLength
    );
    field!(O, MdlChain, W, __bindgen_anon_1.__bindgen_anon_1.MdlChain);
    field!(
        O,
        DataOffset,
        W,
        __bindgen_anon_1.__bindgen_anon_1.DataOffset
    );
    field!(O, ChecksumBias, W, ChecksumBias);
    field!(O, Reserved, W, Reserved);
    field!(O, NdisPoolHandle, W, NdisPoolHandle);
    field!(O, NdisReserved, W, NdisReserved);
    field!(O, ProtocolReserved, W, ProtocolReserved);
    field!(O, MiniportReserved, W, MiniportReserved);
    field!(O, DataPhysicalAddress, W, DataPhysicalAddress);
    // `union { SharedMemoryInfo; ScatterGatherList; }`
    field!(O, ScatterGatherList, W, __bindgen_anon_2.ScatterGatherList);
}

#[test]
fn net_buffer_list() {
    // Prefix: NetBufferListInfo's length (MaxNetBufferListInfo) grows with
    // the NDIS version; ours holds the entries we read.
    type O = o_ndis::NET_BUFFER_LIST;
    type W = wn::NET_BUFFER_LIST;
    prefix::<O, W>("NET_BUFFER_LIST");
    // `union { struct { Next; FirstNetBuffer; }; SLIST_HEADER Link; }`
    field!(O, Next, W, __bindgen_anon_1.__bindgen_anon_1.Next);
    field!(
        O,
        FirstNetBuffer,
        W,
        __bindgen_anon_1.__bindgen_anon_1.FirstNetBuffer
    );
    field!(O, Context, W, Context);
    field!(O, ParentNetBufferList, W, ParentNetBufferList);
    field!(O, NdisPoolHandle, W, NdisPoolHandle);
    field!(O, NdisReserved, W, NdisReserved);
    field!(O, ProtocolReserved, W, ProtocolReserved);
    field!(O, MiniportReserved, W, MiniportReserved);
    field!(O, Scratch, W, Scratch);
    field!(O, SourceHandle, W, SourceHandle);
    field!(O, NblFlags, W, NblFlags);
    field!(O, ChildRefCount, W, ChildRefCount);
    field!(O, Flags, W, Flags);
    // `union { NDIS_STATUS Status; ULONG NdisReserved2; }`
    field!(O, Status, W, __bindgen_anon_2.Status);
    field!(O, NetBufferListInfo, W, NetBufferListInfo);
}

#[test]
fn net_buffer_list_pool_parameters() {
    type O = o_ndis::NET_BUFFER_LIST_POOL_PARAMETERS;
    type W = wn::NET_BUFFER_LIST_POOL_PARAMETERS;
    prefix::<O, W>("NET_BUFFER_LIST_POOL_PARAMETERS");
    field!(O, Header, W, Header);
    field!(O, ProtocolId, W, ProtocolId);
    field!(O, fAllocateNetBuffer, W, fAllocateNetBuffer);
    field!(O, ContextSize, W, ContextSize);
    field!(O, PoolTag, W, PoolTag);
    field!(O, DataSize, W, DataSize);
}

#[test]
fn ndis_timer_characteristics() {
    type O = o_ndis::NDIS_TIMER_CHARACTERISTICS;
    type W = wn::NDIS_TIMER_CHARACTERISTICS;
    whole::<O, W>("NDIS_TIMER_CHARACTERISTICS");
    field!(O, Header, W, Header);
    field!(O, AllocationTag, W, AllocationTag);
    field!(O, TimerFunction, W, TimerFunction);
    field!(O, FunctionContext, W, FunctionContext);
}

#[test]
fn ndis_miniport_interrupt_characteristics() {
    type O = o_ndis::NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS;
    type W = wn::NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS;
    whole::<O, W>("NDIS_MINIPORT_INTERRUPT_CHARACTERISTICS");
    field!(O, Header, W, Header);
    field!(O, InterruptHandler, W, InterruptHandler);
    field!(O, InterruptDpcHandler, W, InterruptDpcHandler);
    field!(O, DisableInterruptHandler, W, DisableInterruptHandler);
    field!(O, EnableInterruptHandler, W, EnableInterruptHandler);
    field!(O, MsiSupported, W, MsiSupported);
    field!(O, MsiSyncWithAllMessages, W, MsiSyncWithAllMessages);
    field!(O, MessageInterruptHandler, W, MessageInterruptHandler);
    field!(O, MessageInterruptDpcHandler, W, MessageInterruptDpcHandler);
    field!(
        O,
        DisableMessageInterruptHandler,
        W,
        DisableMessageInterruptHandler
    );
    field!(
        O,
        EnableMessageInterruptHandler,
        W,
        EnableMessageInterruptHandler
    );
    field!(O, InterruptType, W, InterruptType);
    field!(O, MessageInfoTable, W, MessageInfoTable);
}

#[test]
fn ndis_spin_lock() {
    type O = o_ndis::NDIS_SPIN_LOCK;
    type W = wn::NDIS_SPIN_LOCK;
    whole::<O, W>("NDIS_SPIN_LOCK");
    field!(O, SpinLock, W, SpinLock);
    field!(O, OldIrql, W, OldIrql);
}

#[test]
fn ndis_status_indication() {
    type O = o_ndis::NDIS_STATUS_INDICATION;
    type W = wn::NDIS_STATUS_INDICATION;
    whole::<O, W>("NDIS_STATUS_INDICATION");
    field!(O, Header, W, Header);
    field!(O, SourceHandle, W, SourceHandle);
    field!(O, PortNumber, W, PortNumber);
    field!(O, StatusCode, W, StatusCode);
    field!(O, Flags, W, Flags);
    field!(O, DestinationHandle, W, DestinationHandle);
    field!(O, RequestId, W, RequestId);
    field!(O, StatusBuffer, W, StatusBuffer);
    field!(O, StatusBufferSize, W, StatusBufferSize);
    field!(O, Guid, W, Guid);
    field!(O, NdisReserved, W, NdisReserved);
}
