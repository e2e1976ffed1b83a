//! Our bindings of the Windows kernel (x86-64): the types the drivers touch,
//! with `const` asserts of their size and of every field offset we use, and
//! the functions they call, imported by name from the module that exports
//! them.
//!
//! Where a structure is only ever handed to us by the kernel (a
//! `DEVICE_OBJECT`, an `IRP`), only the prefix up to the last field we use
//! is declared and no size is asserted: we never allocate one. Types we do
//! allocate or embed (`UNICODE_STRING`, `KEVENT`, `OBJECT_ATTRIBUTES`,
//! `IO_STATUS_BLOCK`) have their full size asserted.
//!
//! The header named on each item is the WDK's (10.0.26100): `wdm.h`,
//! `ntdef.h`, `ntddk.h`. Inline functions and macros of those headers that
//! the drivers need (`IoGetCurrentIrpStackLocation`, `IoSetCompletionRoutine`
//! and friends) are reproduced as Rust functions below with the header's
//! semantics.

#![allow(non_camel_case_types, non_snake_case)]

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

/// `NTSTATUS` (`ntdef.h`).
pub type NTSTATUS = i32;
/// `STATUS_SUCCESS`.
pub const STATUS_SUCCESS: NTSTATUS = 0;
/// `STATUS_TIMEOUT` (a success code: the wait timed out).
pub const STATUS_TIMEOUT: NTSTATUS = 0x0000_0102;
/// `STATUS_PENDING`.
pub const STATUS_PENDING: NTSTATUS = 0x0000_0103;
/// `STATUS_UNSUCCESSFUL`.
pub const STATUS_UNSUCCESSFUL: NTSTATUS = 0xC000_0001_u32 as i32;
/// `STATUS_NOT_SUPPORTED`.
pub const STATUS_NOT_SUPPORTED: NTSTATUS = 0xC000_00BB_u32 as i32;
/// `STATUS_INSUFFICIENT_RESOURCES`.
pub const STATUS_INSUFFICIENT_RESOURCES: NTSTATUS = 0xC000_009A_u32 as i32;
/// `STATUS_DEVICE_CONFIGURATION_ERROR`.
pub const STATUS_DEVICE_CONFIGURATION_ERROR: NTSTATUS = 0xC000_0182_u32 as i32;
/// `STATUS_MORE_PROCESSING_REQUIRED`.
pub const STATUS_MORE_PROCESSING_REQUIRED: NTSTATUS = 0xC000_0016_u32 as i32;

/// `NT_SUCCESS` (`ntdef.h`).
pub const fn nt_success(s: NTSTATUS) -> bool {
    s >= 0
}

/// `UNICODE_STRING` (`ntdef.h`). Lengths in bytes.
#[repr(C)]
#[derive(Debug)]
pub struct UNICODE_STRING {
    pub Length: u16,
    pub MaximumLength: u16,
    pub Buffer: *mut u16,
}
const _: () = assert!(size_of::<UNICODE_STRING>() == 16);
const _: () = assert!(offset_of!(UNICODE_STRING, Buffer) == 8);

/// `IO_STATUS_BLOCK` (`wdm.h`): `Status` (union with `Pointer`) and
/// `Information`.
#[repr(C)]
#[derive(Debug)]
pub struct IO_STATUS_BLOCK {
    /// `Status`, widened to the union's pointer size.
    pub Status: isize,
    pub Information: usize,
}
const _: () = assert!(size_of::<IO_STATUS_BLOCK>() == 16);

/// `KEVENT` (`wdm.h`): a `DISPATCHER_HEADER`, opaque to us.
#[repr(C, align(8))]
#[derive(Debug)]
pub struct KEVENT {
    _header: [u8; 0x18],
}
const _: () = assert!(size_of::<KEVENT>() == 0x18);

impl KEVENT {
    /// Storage for `KeInitializeEvent` to initialise.
    pub const fn zeroed() -> Self {
        Self { _header: [0; 0x18] }
    }
}

/// `EVENT_TYPE::NotificationEvent` (`wdm.h`).
pub const NOTIFICATION_EVENT: u32 = 0;
/// `EVENT_TYPE::SynchronizationEvent`.
pub const SYNCHRONIZATION_EVENT: u32 = 1;
/// `KWAIT_REASON::Executive`.
pub const EXECUTIVE: u32 = 0;
/// `KPROCESSOR_MODE::KernelMode`.
pub const KERNEL_MODE: i8 = 0;

/// `OBJECT_ATTRIBUTES` (`ntdef.h`).
#[repr(C)]
#[derive(Debug)]
pub struct OBJECT_ATTRIBUTES {
    pub Length: u32,
    pub RootDirectory: *mut c_void,
    pub ObjectName: *mut UNICODE_STRING,
    pub Attributes: u32,
    pub SecurityDescriptor: *mut c_void,
    pub SecurityQualityOfService: *mut c_void,
}
const _: () = assert!(size_of::<OBJECT_ATTRIBUTES>() == 0x30);
const _: () = assert!(offset_of!(OBJECT_ATTRIBUTES, Attributes) == 0x18);
/// `OBJ_KERNEL_HANDLE` (`ntdef.h`).
pub const OBJ_KERNEL_HANDLE: u32 = 0x200;
/// `THREAD_ALL_ACCESS` (`wdm.h`, `STANDARD_RIGHTS_REQUIRED | SYNCHRONIZE | 0xFFFF`).
pub const THREAD_ALL_ACCESS: u32 = 0x001F_FFFF;

/// `DRIVER_EXTENSION` (`wdm.h`), prefix.
#[repr(C)]
#[derive(Debug)]
pub struct DRIVER_EXTENSION {
    pub DriverObject: *mut DRIVER_OBJECT,
    pub AddDevice: Option<AddDeviceFn>,
}
const _: () = assert!(offset_of!(DRIVER_EXTENSION, AddDevice) == 8);

/// `DRIVER_ADD_DEVICE`.
pub type AddDeviceFn =
    unsafe extern "system" fn(*mut DRIVER_OBJECT, *mut DEVICE_OBJECT) -> NTSTATUS;
/// `DRIVER_DISPATCH`.
pub type DispatchFn = unsafe extern "system" fn(*mut DEVICE_OBJECT, *mut IRP) -> NTSTATUS;
/// `DRIVER_UNLOAD`.
pub type UnloadFn = unsafe extern "system" fn(*mut DRIVER_OBJECT);
/// `IO_COMPLETION_ROUTINE`.
pub type CompletionFn =
    unsafe extern "system" fn(*mut DEVICE_OBJECT, *mut IRP, *mut c_void) -> NTSTATUS;
/// `KSTART_ROUTINE`.
pub type ThreadStartFn = unsafe extern "system" fn(*mut c_void);

/// `IRP_MJ_MAXIMUM_FUNCTION + 1` (`wdm.h`).
pub const IRP_MJ_COUNT: usize = 0x1C;
/// `IRP_MJ_CREATE`.
pub const IRP_MJ_CREATE: usize = 0x00;
/// `IRP_MJ_CLOSE`.
pub const IRP_MJ_CLOSE: usize = 0x02;
/// `IRP_MJ_POWER`.
pub const IRP_MJ_POWER: usize = 0x16;
/// `IRP_MJ_SYSTEM_CONTROL`.
pub const IRP_MJ_SYSTEM_CONTROL: usize = 0x17;
/// `IRP_MJ_PNP`.
pub const IRP_MJ_PNP: usize = 0x1B;

/// `IRP_MN_*` of `IRP_MJ_PNP` (`wdm.h`).
pub mod pnp {
    pub const START_DEVICE: u8 = 0x00;
    pub const QUERY_REMOVE_DEVICE: u8 = 0x01;
    pub const REMOVE_DEVICE: u8 = 0x02;
    pub const CANCEL_REMOVE_DEVICE: u8 = 0x03;
    pub const STOP_DEVICE: u8 = 0x04;
    pub const QUERY_STOP_DEVICE: u8 = 0x05;
    pub const CANCEL_STOP_DEVICE: u8 = 0x06;
    pub const READ_CONFIG: u8 = 0x0F;
    pub const SURPRISE_REMOVAL: u8 = 0x17;
}

/// `PCI_WHICHSPACE_CONFIG` (`wdm.h`): `IRP_MN_READ_CONFIG`'s `WhichSpace`.
pub const PCI_WHICHSPACE_CONFIG: u32 = 0;

/// `DRIVER_OBJECT` (`wdm.h`). The kernel allocates it; we fill in the
/// dispatch table, `DriverUnload` and the extension's `AddDevice`.
#[repr(C)]
#[derive(Debug)]
pub struct DRIVER_OBJECT {
    pub Type: i16,
    pub Size: i16,
    pub DeviceObject: *mut DEVICE_OBJECT,
    pub Flags: u32,
    pub DriverStart: *mut c_void,
    pub DriverSize: u32,
    pub DriverSection: *mut c_void,
    pub DriverExtension: *mut DRIVER_EXTENSION,
    pub DriverName: UNICODE_STRING,
    pub HardwareDatabase: *mut UNICODE_STRING,
    pub FastIoDispatch: *mut c_void,
    pub DriverInit: *mut c_void,
    pub DriverStartIo: *mut c_void,
    pub DriverUnload: Option<UnloadFn>,
    pub MajorFunction: [Option<DispatchFn>; IRP_MJ_COUNT],
}
const _: () = assert!(offset_of!(DRIVER_OBJECT, DriverExtension) == 0x30);
const _: () = assert!(offset_of!(DRIVER_OBJECT, DriverName) == 0x38);
const _: () = assert!(offset_of!(DRIVER_OBJECT, DriverUnload) == 0x68);
const _: () = assert!(offset_of!(DRIVER_OBJECT, MajorFunction) == 0x70);
const _: () = assert!(size_of::<DRIVER_OBJECT>() == 0x150);

/// `DEVICE_OBJECT` (`wdm.h`), prefix up to `StackSize`.
#[repr(C)]
#[derive(Debug)]
pub struct DEVICE_OBJECT {
    pub Type: i16,
    pub Size: u16,
    pub ReferenceCount: i32,
    pub DriverObject: *mut DRIVER_OBJECT,
    pub NextDevice: *mut DEVICE_OBJECT,
    pub AttachedDevice: *mut DEVICE_OBJECT,
    pub CurrentIrp: *mut IRP,
    pub Timer: *mut c_void,
    pub Flags: u32,
    pub Characteristics: u32,
    pub Vpb: *mut c_void,
    pub DeviceExtension: *mut c_void,
    pub DeviceType: u32,
    pub StackSize: i8,
}
const _: () = assert!(offset_of!(DEVICE_OBJECT, Flags) == 0x30);
const _: () = assert!(offset_of!(DEVICE_OBJECT, DeviceExtension) == 0x40);
const _: () = assert!(offset_of!(DEVICE_OBJECT, DeviceType) == 0x48);
const _: () = assert!(offset_of!(DEVICE_OBJECT, StackSize) == 0x4C);
/// `DO_BUFFERED_IO` (`wdm.h`).
pub const DO_BUFFERED_IO: u32 = 0x0000_0004;
/// `DO_POWER_PAGABLE`.
pub const DO_POWER_PAGABLE: u32 = 0x0000_2000;
/// `DO_DEVICE_INITIALIZING`.
pub const DO_DEVICE_INITIALIZING: u32 = 0x0000_0080;
/// `FILE_DEVICE_UNKNOWN` (`devioctl.h`).
pub const FILE_DEVICE_UNKNOWN: u32 = 0x22;
/// `FILE_DEVICE_SECURE_OPEN`.
pub const FILE_DEVICE_SECURE_OPEN: u32 = 0x100;

/// `IRP` (`wdm.h`), prefix up to `Tail.Overlay.CurrentStackLocation`.
#[repr(C)]
#[derive(Debug)]
pub struct IRP {
    pub Type: i16,
    pub Size: u16,
    pub AllocationProcessorNumber: u16,
    pub Reserved: u16,
    pub MdlAddress: *mut MDL,
    pub Flags: u32,
    pub AssociatedIrp: *mut c_void,
    pub ThreadListEntry: [*mut c_void; 2],
    pub IoStatus: IO_STATUS_BLOCK,
    pub RequestorMode: i8,
    pub PendingReturned: u8,
    pub StackCount: i8,
    pub CurrentLocation: i8,
    pub Cancel: u8,
    pub CancelIrql: u8,
    pub ApcEnvironment: i8,
    pub AllocationFlags: u8,
    pub UserIosb: *mut IO_STATUS_BLOCK,
    pub UserEvent: *mut KEVENT,
    pub Overlay: [u64; 2],
    pub CancelRoutine: *mut c_void,
    pub UserBuffer: *mut c_void,
    /// `Tail.Overlay.{DriverContext, Thread, AuxiliaryBuffer, ListEntry}`.
    pub TailOverlay: [*mut c_void; 8],
    pub CurrentStackLocation: *mut IO_STACK_LOCATION,
}
const _: () = assert!(offset_of!(IRP, IoStatus) == 0x30);
const _: () = assert!(offset_of!(IRP, PendingReturned) == 0x41);
const _: () = assert!(offset_of!(IRP, CurrentLocation) == 0x43);
const _: () = assert!(offset_of!(IRP, CurrentStackLocation) == 0xB8);

/// `IO_STACK_LOCATION` (`wdm.h`). `Parameters` is a union of four
/// pointer-sized words; the accessors below read the members we use.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IO_STACK_LOCATION {
    pub MajorFunction: u8,
    pub MinorFunction: u8,
    pub Flags: u8,
    pub Control: u8,
    pub Parameters: [usize; 4],
    pub DeviceObject: *mut DEVICE_OBJECT,
    pub FileObject: *mut c_void,
    pub CompletionRoutine: Option<CompletionFn>,
    pub Context: *mut c_void,
}
const _: () = assert!(offset_of!(IO_STACK_LOCATION, Parameters) == 8);
const _: () = assert!(offset_of!(IO_STACK_LOCATION, DeviceObject) == 0x28);
const _: () = assert!(offset_of!(IO_STACK_LOCATION, CompletionRoutine) == 0x38);
const _: () = assert!(size_of::<IO_STACK_LOCATION>() == 0x48);

/// `SL_PENDING_RETURNED` (`wdm.h`).
pub const SL_PENDING_RETURNED: u8 = 0x01;
/// `SL_INVOKE_ON_CANCEL | SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR`.
pub const SL_INVOKE_ON_ALL: u8 = 0x20 | 0x40 | 0x80;

impl IO_STACK_LOCATION {
    /// `Parameters.StartDevice.AllocatedResources` (raw `CM_RESOURCE_LIST`).
    pub fn start_raw_resources(&self) -> *const u8 {
        self.Parameters[0] as *const u8
    }
    /// `Parameters.StartDevice.AllocatedResourcesTranslated`.
    pub fn start_translated_resources(&self) -> *const u8 {
        self.Parameters[1] as *const u8
    }
    /// `Parameters.Power.Type` (`SystemPowerState` 0, `DevicePowerState` 1).
    pub fn power_type(&self) -> u32 {
        self.Parameters[1] as u32
    }
    /// `Parameters.Power.State` (a `SYSTEM_POWER_STATE` or
    /// `DEVICE_POWER_STATE`: `PowerDeviceD0` is 1, `D3` is 4).
    pub fn power_state(&self) -> u32 {
        self.Parameters[2] as u32
    }
    /// Fill `Parameters.ReadWriteConfig` (`WhichSpace`, `Buffer`,
    /// `Offset`, `Length`; each member pointer-aligned on x64).
    pub fn set_read_config(&mut self, buffer: *mut u8, offset: u32, length: u32) {
        self.Parameters = [
            PCI_WHICHSPACE_CONFIG as usize,
            buffer as usize,
            offset as usize,
            length as usize,
        ];
    }
}

/// `IoGetCurrentIrpStackLocation` (`wdm.h` inline).
///
/// # Safety
///
/// `irp` is a valid IRP the caller owns at the current stack location.
pub unsafe fn current_stack(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: the caller passes a valid IRP.
    unsafe { (*irp).CurrentStackLocation }
}

/// `IoGetNextIrpStackLocation` (`wdm.h` inline).
///
/// # Safety
///
/// As [`current_stack`]; the IRP has a location below the current one.
pub unsafe fn next_stack(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: the caller passes a valid IRP.
    let cur = unsafe { (*irp).CurrentStackLocation };
    // SAFETY: the caller guarantees a next location exists; stack
    // locations are an array growing down from the IRP's end.
    unsafe { cur.sub(1) }
}

/// `IoSkipCurrentIrpStackLocation` (`wdm.h` inline): the lower driver
/// gets our location.
///
/// # Safety
///
/// As [`current_stack`]; call only right before `IoCallDriver`.
pub unsafe fn skip_current_stack(irp: *mut IRP) {
    // SAFETY: the caller owns the IRP.
    let irp = unsafe { &mut *irp };
    irp.CurrentLocation += 1;
    // The next `IofCallDriver` moves the location back down, as the
    // header's macro relies on: the pointer stays inside the IRP's array.
    irp.CurrentStackLocation = irp.CurrentStackLocation.wrapping_add(1);
}

/// `IoCopyCurrentIrpStackLocationToNext` then `IoSetCompletionRoutine`
/// with invocation on success, error and cancel (`wdm.h` inlines).
///
/// # Safety
///
/// As [`next_stack`]; `context` stays valid until `routine` runs.
pub unsafe fn copy_to_next_with_completion(
    irp: *mut IRP,
    routine: CompletionFn,
    context: *mut c_void,
) {
    // SAFETY: the caller owns the IRP at its current location.
    let cur = unsafe { current_stack(irp) };
    // SAFETY: the caller guarantees a next location below it.
    let next = unsafe { next_stack(irp) };
    // SAFETY: a location of the IRP the caller owns.
    let cur = unsafe { *cur };
    // SAFETY: likewise, and distinct from the current one (below it).
    let next = unsafe { &mut *next };
    *next = cur;
    next.CompletionRoutine = Some(routine);
    next.Context = context;
    next.Control = SL_INVOKE_ON_ALL;
}

/// `MDL` (`wdm.h`); the PFN array (`PFN_NUMBER`, 8 bytes on x64) follows it.
#[repr(C)]
#[derive(Debug)]
pub struct MDL {
    pub Next: *mut MDL,
    pub Size: i16,
    pub MdlFlags: i16,
    pub AllocationProcessorNumber: u16,
    pub Reserved: u16,
    pub Process: *mut c_void,
    pub MappedSystemVa: *mut c_void,
    pub StartVa: *mut c_void,
    pub ByteCount: u32,
    pub ByteOffset: u32,
}
const _: () = assert!(offset_of!(MDL, ByteCount) == 0x28);
const _: () = assert!(size_of::<MDL>() == 0x30);

/// `MmGetMdlPfnArray` (`wdm.h` macro).
///
/// # Safety
///
/// `mdl` is a valid MDL describing at least one page.
pub unsafe fn mdl_pfns(mdl: *mut MDL) -> *mut u64 {
    // SAFETY: the PFN array directly follows the MDL header.
    unsafe { mdl.add(1).cast() }
}

/// `MEMORY_CACHING_TYPE::MmCached` (`wdm.h`).
pub const MM_CACHED: u32 = 1;
/// `MEMORY_CACHING_TYPE::MmNonCached`.
pub const MM_NON_CACHED: u32 = 0;
/// `MM_DONT_ZERO_ALLOCATION` (`wdm.h`): `MmAllocatePagesForMdlEx` flag.
pub const MM_DONT_ZERO_ALLOCATION: u32 = 0x1;
/// `MM_ALLOCATE_FULLY_REQUIRED`: all pages or none.
pub const MM_ALLOCATE_FULLY_REQUIRED: u32 = 0x4;
/// `PAGE_READWRITE | PAGE_NOCACHE` (`wdm.h`), `MmMapIoSpaceEx` protection.
pub const PAGE_READWRITE_NOCACHE: u32 = 0x04 | 0x200;
/// `POOL_FLAG_NON_PAGED` (`wdm.h`): non-paged, non-executable pool.
pub const POOL_FLAG_NON_PAGED: u64 = 0x0000_0000_0000_0040;
/// `POOL_FLAG_UNINITIALIZED`: skip the zeroing `ExAllocatePool2` does.
pub const POOL_FLAG_UNINITIALIZED: u64 = 0x0000_0000_0000_0002;

/// `IRP_MN_*` of `IRP_MJ_POWER` (`wdm.h`).
pub mod power {
    pub const WAIT_WAKE: u8 = 0x00;
    pub const SET_POWER: u8 = 0x02;
    pub const QUERY_POWER: u8 = 0x03;
}
/// `POWER_STATE_TYPE::SystemPowerState` (`wdm.h`).
pub const SYSTEM_POWER_STATE: u32 = 0;
/// `POWER_STATE_TYPE::DevicePowerState`.
pub const DEVICE_POWER_STATE: u32 = 1;
/// `DEVICE_POWER_STATE::PowerDeviceD0`.
pub const POWER_DEVICE_D0: u32 = 1;
/// `DEVICE_POWER_STATE::PowerDeviceD3`.
pub const POWER_DEVICE_D3: u32 = 4;

/// `KDPC` (`wdm.h`). We embed one (in non-paged pool) and initialise it
/// with `KeInitializeDpc`; the kernel owns its fields after that.
#[repr(C, align(8))]
#[derive(Debug)]
pub struct KDPC {
    pub Type: u8,
    pub Importance: u8,
    pub Number: u16,
    pub DpcListEntry: *mut c_void,
    pub ProcessorHistory: usize,
    pub DeferredRoutine: Option<DeferredRoutineFn>,
    pub DeferredContext: *mut c_void,
    pub SystemArgument1: *mut c_void,
    pub SystemArgument2: *mut c_void,
    pub DpcData: *mut c_void,
}
const _: () = assert!(offset_of!(KDPC, DpcListEntry) == 0x08);
const _: () = assert!(offset_of!(KDPC, DeferredRoutine) == 0x18);
const _: () = assert!(offset_of!(KDPC, DeferredContext) == 0x20);
const _: () = assert!(offset_of!(KDPC, DpcData) == 0x38);
const _: () = assert!(size_of::<KDPC>() == 0x40);

impl KDPC {
    /// Storage for `KeInitializeDpc` to initialise.
    pub const fn zeroed() -> Self {
        Self {
            Type: 0,
            Importance: 0,
            Number: 0,
            DpcListEntry: core::ptr::null_mut(),
            ProcessorHistory: 0,
            DeferredRoutine: None,
            DeferredContext: core::ptr::null_mut(),
            SystemArgument1: core::ptr::null_mut(),
            SystemArgument2: core::ptr::null_mut(),
            DpcData: core::ptr::null_mut(),
        }
    }
}

/// `KDEFERRED_ROUTINE` (`wdm.h`): runs at `DISPATCH_LEVEL`.
pub type DeferredRoutineFn =
    unsafe extern "system" fn(*mut KDPC, *mut c_void, *mut c_void, *mut c_void);
/// `KSERVICE_ROUTINE` (`wdm.h`): an ISR, at the interrupt's DIRQL. Returns
/// `TRUE` (1) when its device interrupted.
pub type ServiceRoutineFn = unsafe extern "system" fn(*mut c_void, *mut c_void) -> u8;

/// `KINTERRUPT_MODE` (`wdm.h`): `LevelSensitive`.
pub const LEVEL_SENSITIVE: u32 = 0;
/// `KINTERRUPT_MODE::Latched`.
pub const LATCHED: u32 = 1;
/// `CONNECT_FULLY_SPECIFIED` (`wdm.h`): `IO_CONNECT_INTERRUPT_PARAMETERS`
/// version whose vector, IRQL, mode and affinity the driver gives (from
/// its translated interrupt resource).
pub const CONNECT_FULLY_SPECIFIED: u32 = 0x1;

/// `IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS` (`wdm.h`, Windows 7
/// and later: with `Group`).
#[repr(C)]
#[derive(Debug)]
pub struct IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS {
    pub PhysicalDeviceObject: *mut DEVICE_OBJECT,
    pub InterruptObject: *mut *mut c_void,
    pub ServiceRoutine: Option<ServiceRoutineFn>,
    pub ServiceContext: *mut c_void,
    pub SpinLock: *mut usize,
    pub SynchronizeIrql: u8,
    pub FloatingSave: u8,
    pub ShareVector: u8,
    pub Vector: u32,
    pub Irql: u8,
    pub InterruptMode: u32,
    pub ProcessorEnableMask: usize,
    pub Group: u16,
}
const _: () = assert!(
    offset_of!(
        IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS,
        SynchronizeIrql
    ) == 0x28
);
const _: () =
    assert!(offset_of!(IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS, ShareVector) == 0x2A);
const _: () = assert!(offset_of!(IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS, Vector) == 0x2C);
const _: () = assert!(offset_of!(IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS, Irql) == 0x30);
const _: () = assert!(
    offset_of!(
        IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS,
        InterruptMode
    ) == 0x34
);
const _: () = assert!(
    offset_of!(
        IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS,
        ProcessorEnableMask
    ) == 0x38
);
const _: () = assert!(offset_of!(IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS, Group) == 0x40);
const _: () = assert!(size_of::<IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS>() == 0x48);

/// `IO_CONNECT_INTERRUPT_PARAMETERS` (`wdm.h`): `Version`, then the union
/// of the fully specified (the largest member, 0x48 bytes), line-based and
/// message-based parameters; we use the fully specified form only.
#[repr(C)]
#[derive(Debug)]
pub struct IO_CONNECT_INTERRUPT_PARAMETERS {
    pub Version: u32,
    pub FullySpecified: IO_CONNECT_INTERRUPT_FULLY_SPECIFIED_PARAMETERS,
}
const _: () = assert!(offset_of!(IO_CONNECT_INTERRUPT_PARAMETERS, FullySpecified) == 8);
const _: () = assert!(size_of::<IO_CONNECT_INTERRUPT_PARAMETERS>() == 0x50);

/// `IO_DISCONNECT_INTERRUPT_PARAMETERS` (`wdm.h`): `Version` and the
/// connection context (for `CONNECT_FULLY_SPECIFIED`, the `KINTERRUPT`).
#[repr(C)]
#[derive(Debug)]
pub struct IO_DISCONNECT_INTERRUPT_PARAMETERS {
    pub Version: u32,
    pub InterruptObject: *mut c_void,
}
const _: () = assert!(offset_of!(IO_DISCONNECT_INTERRUPT_PARAMETERS, InterruptObject) == 8);
const _: () = assert!(size_of::<IO_DISCONNECT_INTERRUPT_PARAMETERS>() == 0x10);

/// `SYSTEM_INFORMATION_CLASS::SystemBasicInformation` (`winternl.h`).
pub const SYSTEM_BASIC_INFORMATION: u32 = 0;
/// `SYSTEM_INFORMATION_CLASS::SystemPerformanceInformation`.
pub const SYSTEM_PERFORMANCE_INFORMATION: u32 = 2;

// Imports from `ntoskrnl.exe`. Each name is on the curated export list
// (`pv-windows/exports/ntoskrnl.exe.txt`), which the PE lint checks.
#[cfg(target_os = "windows")]
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    pub fn ExAllocatePool2(flags: u64, bytes: usize, tag: u32) -> *mut c_void;
    pub fn ExFreePoolWithTag(p: *mut c_void, tag: u32);
    pub fn ExFreePool(p: *mut c_void);
    pub fn KeBugCheckEx(code: u32, p1: usize, p2: usize, p3: usize, p4: usize) -> !;
    pub fn IoCreateDevice(
        driver: *mut DRIVER_OBJECT,
        extension_size: u32,
        name: *mut UNICODE_STRING,
        device_type: u32,
        characteristics: u32,
        exclusive: u8,
        out: *mut *mut DEVICE_OBJECT,
    ) -> NTSTATUS;
    pub fn IoDeleteDevice(dev: *mut DEVICE_OBJECT);
    pub fn IoAttachDeviceToDeviceStack(
        source: *mut DEVICE_OBJECT,
        target: *mut DEVICE_OBJECT,
    ) -> *mut DEVICE_OBJECT;
    pub fn IoDetachDevice(target: *mut DEVICE_OBJECT);
    pub fn IofCallDriver(dev: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS;
    pub fn IofCompleteRequest(irp: *mut IRP, boost: i8);
    pub fn IoBuildSynchronousFsdRequest(
        major: u32,
        target: *mut DEVICE_OBJECT,
        buffer: *mut c_void,
        length: u32,
        offset: *mut i64,
        event: *mut KEVENT,
        iosb: *mut IO_STATUS_BLOCK,
    ) -> *mut IRP;
    pub fn KeInitializeEvent(event: *mut KEVENT, kind: u32, state: u8);
    pub fn KeSetEvent(event: *mut KEVENT, increment: i32, wait: u8) -> i32;
    pub fn KeWaitForSingleObject(
        object: *mut c_void,
        reason: u32,
        mode: i8,
        alertable: u8,
        timeout: *mut i64,
    ) -> NTSTATUS;
    pub fn PsCreateSystemThread(
        handle: *mut *mut c_void,
        access: u32,
        attributes: *mut OBJECT_ATTRIBUTES,
        process: *mut c_void,
        client_id: *mut c_void,
        start: ThreadStartFn,
        context: *mut c_void,
    ) -> NTSTATUS;
    pub fn PsTerminateSystemThread(status: NTSTATUS) -> NTSTATUS;
    pub fn ZwWaitForSingleObject(handle: *mut c_void, alertable: u8, timeout: *mut i64)
        -> NTSTATUS;
    pub fn ZwClose(handle: *mut c_void) -> NTSTATUS;
    pub fn ZwQuerySystemInformation(
        class: u32,
        info: *mut c_void,
        length: u32,
        returned: *mut u32,
    ) -> NTSTATUS;
    pub fn MmAllocatePagesForMdlEx(
        low: i64,
        high: i64,
        skip: i64,
        bytes: usize,
        cache: u32,
        flags: u32,
    ) -> *mut MDL;
    pub fn MmFreePagesFromMdl(mdl: *mut MDL);
    pub fn MmAllocateContiguousMemorySpecifyCache(
        bytes: usize,
        lowest: i64,
        highest: i64,
        boundary: i64,
        cache: u32,
    ) -> *mut c_void;
    pub fn MmFreeContiguousMemorySpecifyCache(base: *mut c_void, bytes: usize, cache: u32);
    pub fn MmGetPhysicalAddress(va: *mut c_void) -> i64;
    pub fn MmGetVirtualForPhysical(phys: i64) -> *mut c_void;
    pub fn MmMapIoSpaceEx(phys: i64, bytes: usize, protect: u32) -> *mut c_void;
    pub fn MmUnmapIoSpace(va: *mut c_void, bytes: usize);
    pub fn DbgPrintEx(component: u32, level: u32, format: *const u8, ...) -> u32;
    pub fn IoConnectInterruptEx(params: *mut IO_CONNECT_INTERRUPT_PARAMETERS) -> NTSTATUS;
    pub fn IoDisconnectInterruptEx(params: *mut IO_DISCONNECT_INTERRUPT_PARAMETERS);
    pub fn KeInitializeDpc(dpc: *mut KDPC, routine: DeferredRoutineFn, context: *mut c_void);
    pub fn KeInsertQueueDpc(dpc: *mut KDPC, arg1: *mut c_void, arg2: *mut c_void) -> u8;
    pub fn KeFlushQueuedDpcs();
    /// `POWER_STATE` is a union of two 32-bit enums: passed and returned
    /// as a `u32`.
    pub fn PoSetPowerState(dev: *mut DEVICE_OBJECT, kind: u32, state: u32) -> u32;
    /// The stack probe the MSVC code model calls (with the frame size in
    /// `rax`) for frames over a page. Never called from Rust; declared so
    /// the link resolves LLVM's calls to the kernel's own, as WDK drivers'
    /// do through `ntoskrnl.lib`.
    pub fn __chkstk();
}

/// `DPFLTR_IHVDRIVER_ID` (`dpfilter.h`): `DbgPrintEx` component.
pub const DPFLTR_IHVDRIVER_ID: u32 = 77;
/// `DPFLTR_ERROR_LEVEL`: always shown by the debugger.
pub const DPFLTR_ERROR_LEVEL: u32 = 0;
/// `DPFLTR_INFO_LEVEL`.
pub const DPFLTR_INFO_LEVEL: u32 = 3;
