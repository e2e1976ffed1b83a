// SPDX-License-Identifier: GPL-2.0
//! The virtio-pci (modern) transport for pvdrivers' Rust kernel modules, on
//! the kernel's `pci` and DMA abstractions, under the shared validated
//! virtqueue (`pv-virtq`): this crate implements `virtio_drivers`'
//! `Transport` and `Hal`, the two boundaries `pv-virtq` and the device cores
//! (pv-balloon, pv-blk) are written against, so the kernel modules run the
//! same queue and device logic as the Windows drivers and the userspace
//! runtimes.
//!
//! - Capabilities (virtio 1.2 §4.1.4): the vendor capabilities of the PCI
//!   configuration space are walked once (bounded: at most 48 entries, a
//!   loop in the list ends the walk); the common, notify, ISR and device
//!   regions must all lie in one memory BAR (QEMU's layout) and inside it.
//! - Everything after is register access in that BAR with the offsets
//!   checked once at probe, through the kernel's bounds-checked accessors.
//! - `Hal`: DMA through the kernel's DMA API for the bound device
//!   (coherent memory for the rings, streaming mappings for buffers).
//!   `virtio_drivers`' `Hal` has no `self`, so the device is held in a
//!   static for as long as the transport lives: one transport per module.
//! - [`Tick`]: a periodic call from a work item, the fallback poll that
//!   keeps a driver moving when an interrupt is late or lost.

#![no_std]

use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, Ordering};

use kernel::bindings;
use kernel::dma::{Device as _, DmaMask};
use kernel::io::Io;
use kernel::pci;
use kernel::prelude::*;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

mod tick;
pub use tick::Tick;

/// PCI capability id of vendor-specific capabilities.
const PCI_CAP_ID_VNDR: u8 = 0x09;
/// Walk at most this many capabilities (256-byte space, 4-byte aligned).
const MAX_CAPS: usize = 48;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

// The common configuration structure (virtio 1.2 §4.1.4.3).
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const DEVICE_STATUS: usize = 0x14;
const CONFIG_GENERATION: usize = 0x15;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;
/// Size of the common configuration structure.
const COMMON_LEN: u32 = 0x38;

/// One region a virtio capability names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub bar: u8,
    pub offset: u32,
    pub len: u32,
}

/// The regions of a modern virtio-pci device.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub common: Region,
    pub notify: Region,
    pub notify_multiplier: u32,
    pub isr: Region,
    pub device: Option<Region>,
}

/// Reads the virtio capabilities out of the PCI configuration space.
pub fn read_caps(pdev: &pci::Device<kernel::device::Bound>) -> Result<Caps> {
    let cfg = pdev.config_space();
    let status = cfg.try_read16(0x06)?;
    if status & 0x10 == 0 {
        return Err(ENODEV);
    }
    let mut at = usize::from(cfg.try_read8(0x34)? & 0xfc);
    let (mut common, mut notify, mut isr, mut device) = (None, None, None, None);
    let mut multiplier = 0;
    for _ in 0..MAX_CAPS {
        if at < 0x40 {
            break;
        }
        let id = cfg.try_read8(at)?;
        let next = usize::from(cfg.try_read8(at + 1)? & 0xfc);
        if id == PCI_CAP_ID_VNDR {
            let cfg_type = cfg.try_read8(at + 3)?;
            let region = Region {
                bar: cfg.try_read8(at + 4)?,
                offset: cfg.try_read32(at + 8)?,
                len: cfg.try_read32(at + 12)?,
            };
            // The first capability of each type is the one to use (§4.1.4).
            match cfg_type {
                CAP_COMMON if common.is_none() => common = Some(region),
                CAP_NOTIFY if notify.is_none() => {
                    multiplier = cfg.try_read32(at + 16)?;
                    notify = Some(region);
                }
                CAP_ISR if isr.is_none() => isr = Some(region),
                CAP_DEVICE if device.is_none() => device = Some(region),
                _ => {}
            }
        }
        at = next;
    }
    match (common, notify, isr) {
        (Some(common), Some(notify), Some(isr)) => Ok(Caps {
            common,
            notify,
            notify_multiplier: multiplier,
            isr,
            device,
        }),
        _ => Err(ENODEV),
    }
}

/// The device `struct device` the [`KernelHal`] maps for.
static DMA_DEVICE: AtomicPtr<bindings::device> = AtomicPtr::new(core::ptr::null_mut());


/// A modern virtio-pci transport over one mapped BAR.
pub struct PciTransport<'a> {
    bar: pci::Bar<'a>,
    caps: Caps,
    device_type: DeviceType,
}

fn region_fits(r: &Region, min_len: u32, bar_len: u64) -> bool {
    r.len >= min_len && u64::from(r.offset) + u64::from(r.len) <= bar_len
}

impl<'a> PciTransport<'a> {
    /// Maps the device's virtio BAR, checks every region lies in it, and
    /// makes this device the one [`KernelHal`] maps for.
    pub fn new(pdev: &'a pci::Device<kernel::device::Core<'_>>, name: &'static CStr) -> Result<Self> {
        let device_type = device_type_of(pdev.device_id()).ok_or(ENODEV)?;
        let caps = read_caps(pdev)?;
        let bar_no = caps.common.bar;
        let device_ok = caps.device.is_none_or(|d| d.bar == bar_no);
        if caps.notify.bar != bar_no || caps.isr.bar != bar_no || !device_ok || bar_no > 5 {
            return Err(ENODEV);
        }
        let bar_len = pdev.resource_len(u32::from(bar_no))?;
        let fits = region_fits(&caps.common, COMMON_LEN, bar_len)
            && region_fits(&caps.notify, 2, bar_len)
            && region_fits(&caps.isr, 1, bar_len)
            && caps.device.is_none_or(|d| region_fits(&d, 0, bar_len));
        if !fits {
            return Err(ENODEV);
        }
        let bar = pdev.iomap_region(u32::from(bar_no), name)?;
        // SAFETY: probe, before this device has any DMA allocation or mapping.
        unsafe { pdev.dma_set_mask_and_coherent(DmaMask::new::<64>())? };
        let dev: &kernel::device::Device<kernel::device::Core<'_>> = pdev.as_ref();
        // `device::Device` is `repr(transparent)` over `Opaque<struct device>`,
        // itself `repr(transparent)`: the pointer is the C device's.
        let raw = core::ptr::from_ref(dev).cast_mut().cast::<bindings::device>();
        if DMA_DEVICE
            .compare_exchange(core::ptr::null_mut(), raw, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // One transport per module: the Hal has no other way to find its device.
            return Err(EBUSY);
        }
        Ok(Self {
            bar,
            caps,
            device_type,
        })
    }

    fn common(&self, off: usize) -> usize {
        self.caps.common.offset as usize + off
    }

    fn r8(&self, off: usize) -> u8 {
        (&self.bar).try_read8(off).unwrap_or(0)
    }
    fn r16(&self, off: usize) -> u16 {
        (&self.bar).try_read16(off).unwrap_or(0)
    }
    fn r32(&self, off: usize) -> u32 {
        (&self.bar).try_read32(off).unwrap_or(0)
    }
    fn w8(&self, v: u8, off: usize) {
        let _ = (&self.bar).try_write8(v, off);
    }
    fn w16(&self, v: u16, off: usize) {
        let _ = (&self.bar).try_write16(v, off);
    }
    fn w32(&self, v: u32, off: usize) {
        let _ = (&self.bar).try_write32(v, off);
    }
    fn w64(&self, v: u64, off: usize) {
        self.w32(v as u32, off);
        self.w32((v >> 32) as u32, off + 4);
    }

    fn select(&self, queue: u16) {
        self.w16(queue, self.common(QUEUE_SELECT));
    }

    /// The device-specific configuration region.
    fn device_region(&self) -> virtio_drivers::Result<Region> {
        self.caps
            .device
            .ok_or(virtio_drivers::Error::ConfigSpaceMissing)
    }
}

impl Drop for PciTransport<'_> {
    fn drop(&mut self) {
        // Reset so the device stops using our memory before it is freed.
        self.w8(0, self.common(DEVICE_STATUS));
        DMA_DEVICE.store(core::ptr::null_mut(), Ordering::Release);
    }
}

/// The virtio device type of a PCI device id: modern (0x1040 + type) or
/// transitional (0x1000..0x103f).
pub fn device_type_of(pci_device_id: u16) -> Option<DeviceType> {
    let id: u32 = match pci_device_id {
        0x1040..=0x107f => u32::from(pci_device_id - 0x1040),
        0x1000 => 1,
        0x1001 => 2,
        0x1002 => 5,
        0x1003 => 3,
        0x1004 => 8,
        0x1005 => 4,
        0x1009 => 9,
        _ => return None,
    };
    DeviceType::try_from(id).ok()
}

impl Transport for PciTransport<'_> {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.w32(0, self.common(DEVICE_FEATURE_SELECT));
        let lo = self.r32(self.common(DEVICE_FEATURE));
        self.w32(1, self.common(DEVICE_FEATURE_SELECT));
        let hi = self.r32(self.common(DEVICE_FEATURE));
        u64::from(hi) << 32 | u64::from(lo)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.w32(0, self.common(DRIVER_FEATURE_SELECT));
        self.w32(driver_features as u32, self.common(DRIVER_FEATURE));
        self.w32(1, self.common(DRIVER_FEATURE_SELECT));
        self.w32((driver_features >> 32) as u32, self.common(DRIVER_FEATURE));
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.select(queue);
        u32::from(self.r16(self.common(QUEUE_SIZE)))
    }

    fn notify(&mut self, queue: u16) {
        self.select(queue);
        let off = u32::from(self.r16(self.common(QUEUE_NOTIFY_OFF)));
        let at = u64::from(self.caps.notify.offset)
            + u64::from(off) * u64::from(self.caps.notify_multiplier);
        // A notify offset beyond the region is the device's fault: no kick
        // (the bounds-checked write would refuse it past the BAR anyway).
        if at + 2 <= u64::from(self.caps.notify.offset) + u64::from(self.caps.notify.len) {
            self.w16(queue, at as usize);
        }
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(u32::from(self.r8(self.common(DEVICE_STATUS))))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.w8(status.bits() as u8, self.common(DEVICE_STATUS));
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.select(queue);
        self.w16(size as u16, self.common(QUEUE_SIZE));
        self.w64(descriptors as u64, self.common(QUEUE_DESC));
        self.w64(driver_area as u64, self.common(QUEUE_DRIVER));
        self.w64(device_area as u64, self.common(QUEUE_DEVICE));
        self.w16(1, self.common(QUEUE_ENABLE));
    }

    fn queue_unset(&mut self, queue: u16) {
        // A queue is only disabled by a device reset (§4.1.4.3.2); clear
        // what we wrote so a stale address is never reused.
        self.select(queue);
        self.w16(0, self.common(QUEUE_ENABLE));
        self.w64(0, self.common(QUEUE_DESC));
        self.w64(0, self.common(QUEUE_DRIVER));
        self.w64(0, self.common(QUEUE_DEVICE));
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.select(queue);
        self.r16(self.common(QUEUE_ENABLE)) == 1
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        // Reading the ISR acknowledges it.
        InterruptStatus::from_bits_truncate(u32::from(self.r8(self.caps.isr.offset as usize)))
    }

    fn read_config_generation(&self) -> u32 {
        u32::from(self.r8(self.common(CONFIG_GENERATION)))
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> virtio_drivers::Result<T> {
        let d = self.device_region()?;
        let size = core::mem::size_of::<T>();
        if offset.checked_add(size).is_none_or(|end| end > d.len as usize) {
            return Err(virtio_drivers::Error::ConfigSpaceTooSmall);
        }
        let mut value = T::new_zeroed();
        for (i, b) in value.as_mut_bytes().iter_mut().enumerate() {
            *b = self.r8(d.offset as usize + offset + i);
        }
        Ok(value)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        let d = self.device_region()?;
        let bytes = value.as_bytes();
        if offset.checked_add(bytes.len()).is_none_or(|end| end > d.len as usize) {
            return Err(virtio_drivers::Error::ConfigSpaceTooSmall);
        }
        for (i, b) in bytes.iter().enumerate() {
            self.w8(*b, d.offset as usize + offset + i);
        }
        Ok(())
    }
}

/// DMA for `pv-virtq` and the device cores through the kernel's DMA API,
/// for the device of the live [`PciTransport`].
pub struct KernelHal;

/// `enum dma_data_direction` (include/linux/dma-direction.h).
fn dma_dir(direction: BufferDirection) -> u32 {
    match direction {
        BufferDirection::Both => 0,
        BufferDirection::DriverToDevice => 1,
        BufferDirection::DeviceToDriver => 2,
    }
}

extern "C" {
    // pv_dma.c: the kernel's inline `dma_map_single` and friends.
    fn pv_dma_map(dev: *mut bindings::device, ptr: *mut core::ffi::c_void, len: usize, dir: u32) -> u64;
    fn pv_dma_unmap(dev: *mut bindings::device, addr: u64, len: usize, dir: u32);
}

// SAFETY: the addresses returned are the device's view of memory the
// kernel's DMA API allocated or mapped for it, valid until freed/unmapped.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let dev = DMA_DEVICE.load(Ordering::Acquire);
        let mut handle: bindings::dma_addr_t = 0;
        if dev.is_null() {
            return (0, NonNull::dangling());
        }
        // SAFETY: `dev` is the bound device of the live transport; the
        // handle is written by the call.
        let vaddr = unsafe {
            bindings::dma_alloc_attrs(
                dev,
                pages * PAGE_SIZE,
                &mut handle,
                bindings::GFP_KERNEL | bindings::__GFP_ZERO,
                0,
            )
        };
        match NonNull::new(vaddr.cast::<u8>()) {
            Some(v) => (handle as PhysAddr, v),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let dev = DMA_DEVICE.load(Ordering::Acquire);
        if dev.is_null() {
            return -1;
        }
        // SAFETY: the caller passes what `dma_alloc` returned.
        unsafe {
            bindings::dma_free_attrs(dev, pages * PAGE_SIZE, vaddr.as_ptr().cast(), paddr as u64, 0)
        };
        0
    }

    unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        // Only `virtio_drivers`' own PCI transport asks; ours maps its BAR
        // through the kernel.
        NonNull::dangling()
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let dev = DMA_DEVICE.load(Ordering::Acquire);
        if dev.is_null() {
            return 0;
        }
        // SAFETY: the caller passes a live buffer in the kernel's direct map
        // (kmalloc'd), kept until `unshare`.
        unsafe { pv_dma_map(dev, buffer.as_ptr().cast(), buffer.len(), dma_dir(direction)) as PhysAddr }
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let dev = DMA_DEVICE.load(Ordering::Acquire);
        if dev.is_null() {
            return;
        }
        // SAFETY: the caller passes what `share` mapped.
        unsafe { pv_dma_unmap(dev, paddr as u64, buffer.len(), dma_dir(direction)) };
    }
}
