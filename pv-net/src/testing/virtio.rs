//! A fake virtio-net device: a [`Transport`] whose device side runs in the
//! test's own thread over xenbus's [`TestHal`] and [`DeviceQueue`]. It can
//! play an honest NIC ([`FakeVirtioNet::take_tx`],
//! [`FakeVirtioNet::deliver`], control commands answered on the kick, as
//! QEMU does) or a hostile one (any used element, any header, any length,
//! used index run ahead, refuse reset).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::vec;
use std::vec::Vec;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use xenbus::virtq::testing::{Chain, DeviceQueue};
use zerocopy::{FromBytes, Immutable, IntoBytes};

pub use xenbus::virtq::testing::TestHal;

use crate::virtio::{config, ctrl, NetHdr, VirtioNetFeatures, CTRLQ, HDR_LEN, RXQ, TXQ};

#[derive(Debug)]
struct DevState {
    device_features: u64,
    driver_features: u64,
    status: DeviceStatus,
    config: [u8; 16],
    generation: u32,
    max_queue_size: u32,
    queues: Vec<DeviceQueue>,
    refuse_reset: bool,
    resets: u32,
    ctrl_log: Vec<Vec<u8>>,
    ctrl_ack: u8,
    /// Interrupts the device raised per queue (after suppression).
    interrupts: [u64; 3],
}

/// The fake device and its transport. Cloning gives another handle on the
/// same device: hand one to the driver, keep one to play the device.
#[derive(Debug, Clone)]
pub struct FakeVirtioNet {
    st: Arc<Mutex<DevState>>,
}

/// A frame the driver transmitted, as the device read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxSeen {
    /// The 12 header bytes.
    pub hdr: [u8; HDR_LEN],
    /// The frame.
    pub frame: Vec<u8>,
    /// Descriptors in the chain.
    pub descs: usize,
}

impl FakeVirtioNet {
    /// A device offering `features` with `mac`, `mtu`, link up, three queues
    /// of at most `max_queue_size` entries.
    pub fn new(features: VirtioNetFeatures, mac: [u8; 6], mtu: u16, max_queue_size: u32) -> Self {
        let mut cfg = [0u8; 16];
        cfg[config::MAC..config::MAC + 6].copy_from_slice(&mac);
        cfg[config::STATUS..config::STATUS + 2].copy_from_slice(&config::S_LINK_UP.to_le_bytes());
        cfg[config::MAX_PAIRS..config::MAX_PAIRS + 2].copy_from_slice(&1u16.to_le_bytes());
        cfg[config::MTU..config::MTU + 2].copy_from_slice(&mtu.to_le_bytes());
        Self {
            st: Arc::new(Mutex::new(DevState {
                device_features: features.bits(),
                driver_features: 0,
                status: DeviceStatus::empty(),
                config: cfg,
                generation: 0,
                max_queue_size,
                queues: vec![DeviceQueue::default(); 3],
                refuse_reset: false,
                resets: 0,
                ctrl_log: Vec::new(),
                ctrl_ack: ctrl::OK,
                interrupts: [0; 3],
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DevState> {
        self.st.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn event_idx(s: &DevState) -> bool {
        s.driver_features & VirtioNetFeatures::EVENT_IDX.bits() != 0
    }

    fn mrg(&self) -> bool {
        self.lock().driver_features & VirtioNetFeatures::MRG_RXBUF.bits() != 0
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> VirtioNetFeatures {
        VirtioNetFeatures::from_bits_retain(self.lock().driver_features)
    }

    /// Device status as the driver last set it.
    pub fn status(&self) -> DeviceStatus {
        self.lock().status
    }

    /// Times the driver wrote status 0.
    pub fn resets(&self) -> u32 {
        self.lock().resets
    }

    /// Kicks the driver sent on queue `q`.
    pub fn notifications(&self, q: u16) -> u64 {
        self.lock()
            .queues
            .get(usize::from(q))
            .map_or(0, |x| x.notified)
    }

    /// Interrupts the device raised on queue `q` (honest paths only).
    pub fn interrupts(&self, q: u16) -> u64 {
        self.lock()
            .interrupts
            .get(usize::from(q))
            .copied()
            .unwrap_or(0)
    }

    /// Set the link state (bumps the config generation).
    pub fn set_link(&self, up: bool) {
        let mut s = self.lock();
        let v: u16 = if up { config::S_LINK_UP } else { 0 };
        s.config[config::STATUS..config::STATUS + 2].copy_from_slice(&v.to_le_bytes());
        s.generation = s.generation.wrapping_add(1);
    }

    /// Make the device ignore resets (hostile).
    pub fn set_refuse_reset(&self, on: bool) {
        self.lock().refuse_reset = on;
    }

    /// Ack the device gives control commands.
    pub fn set_ctrl_ack(&self, ack: u8) {
        self.lock().ctrl_ack = ack;
    }

    /// Control commands received (class, cmd, data...).
    pub fn ctrl_log(&self) -> Vec<Vec<u8>> {
        self.lock().ctrl_log.clone()
    }

    /// Set `avail_event` (EVENT_IDX) on queue `q`.
    pub fn set_avail_event(&self, q: u16, v: u16) {
        if let Some(dq) = self.lock().queues.get(usize::from(q)) {
            dq.set_avail_event(v);
        }
    }

    /// Set `used.flags` on queue `q` (e.g. `USED_F_NO_NOTIFY`).
    pub fn set_used_flags(&self, q: u16, v: u16) {
        if let Some(dq) = self.lock().queues.get(usize::from(q)) {
            dq.set_used_flags(v);
        }
    }

    /// Chains available on queue `q`.
    pub fn available(&self, q: u16) -> u16 {
        self.lock()
            .queues
            .get(usize::from(q))
            .map_or(0, DeviceQueue::available)
    }

    /// Take the next available chain on queue `q` (raw).
    pub fn take_chain(&self, q: u16) -> Option<Chain> {
        self.lock().queues.get_mut(usize::from(q))?.take_chain()
    }

    /// Publish a used element on queue `q` (honest or not); counts an
    /// interrupt if the driver asked for one.
    pub fn push_used(&self, q: u16, id: u32, len: u32) {
        let mut s = self.lock();
        let ev = Self::event_idx(&s);
        let Some(dq) = s.queues.get_mut(usize::from(q)) else {
            return;
        };
        let old = dq.used_idx;
        dq.push_used(id, len);
        let irq = dq.interrupt_needed(old, ev);
        if irq {
            s.interrupts[usize::from(q).min(2)] += 1;
        }
    }

    /// Write several used elements and publish them with one index update.
    pub fn push_used_batch(&self, q: u16, elems: &[(u32, u32)]) {
        let mut s = self.lock();
        let ev = Self::event_idx(&s);
        let Some(dq) = s.queues.get_mut(usize::from(q)) else {
            return;
        };
        let old = dq.used_idx;
        for &(id, len) in elems {
            dq.write_used(id, len);
        }
        dq.publish(elems.len() as u16);
        if dq.interrupt_needed(old, ev) {
            s.interrupts[usize::from(q).min(2)] += 1;
        }
    }

    /// Hostile: set queue `q`'s used index.
    pub fn set_used_idx(&self, q: u16, idx: u16) {
        if let Some(dq) = self.lock().queues.get_mut(usize::from(q)) {
            dq.set_used_idx(idx);
        }
    }

    /// An honest device that has drained queue `q` asks to be kicked for
    /// the next chain (`avail_event` = its consumer index, with EVENT_IDX).
    pub fn want_kick(&self, q: u16) {
        if let Some(dq) = self.lock().queues.get(usize::from(q)) {
            dq.set_avail_event(dq.last_avail);
        }
    }

    /// Honest device: take the next transmitted frame and complete it.
    pub fn take_tx(&self) -> Option<TxSeen> {
        let Some(c) = self.take_chain(TXQ) else {
            self.want_kick(TXQ);
            return None;
        };
        let bytes = c.readable_bytes();
        self.push_used(TXQ, u32::from(c.head), 0);
        let mut hdr = [0u8; HDR_LEN];
        let n = bytes.len().min(HDR_LEN);
        hdr[..n].copy_from_slice(&bytes[..n]);
        Some(TxSeen {
            hdr,
            frame: bytes.get(HDR_LEN..).map(<[u8]>::to_vec).unwrap_or_default(),
            descs: c.descs.len(),
        })
    }

    /// Honest device: receive `frame` with header `hdr` (its `num_buffers`
    /// is filled in), spread over as many RX buffers as it needs with
    /// mergeable buffers. Returns false (nothing published) if the driver
    /// did not post enough buffers.
    pub fn deliver(&self, frame: &[u8], hdr: NetHdr) -> bool {
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(frame);
        let mrg = self.mrg();
        let mut chains = Vec::new();
        let mut left = bytes.len();
        loop {
            let Some(c) = self.take_chain(RXQ) else {
                // Not enough buffers: give the taken ones back unused (a
                // real device would wait; the fake un-takes them).
                let mut s = self.lock();
                if let Some(dq) = s.queues.get_mut(usize::from(RXQ)) {
                    dq.last_avail = dq.last_avail.wrapping_sub(chains.len() as u16);
                }
                drop(s);
                self.want_kick(RXQ);
                return false;
            };
            let cap = c.writable() as usize;
            chains.push(c);
            if cap >= left || !mrg {
                break;
            }
            left -= cap;
        }
        let nb = chains.len() as u16;
        bytes[10..12].copy_from_slice(&(if mrg { nb } else { 0 }).to_le_bytes());
        let mut off = 0;
        let mut elems = Vec::new();
        for c in &chains {
            let n = c.write_in(&bytes[off..]);
            elems.push((u32::from(c.head), n as u32));
            off += n;
        }
        self.push_used_batch(RXQ, &elems);
        true
    }

    /// Answer every pending control command (also done on each kick).
    pub fn process_ctrl(&self) {
        while let Some(c) = self.take_chain(CTRLQ) {
            let cmd = c.readable_bytes();
            let ack = {
                let mut s = self.lock();
                s.ctrl_log.push(cmd.clone());
                let ok = cmd.len() >= 2
                    && match (cmd[0], cmd[1]) {
                        (ctrl::CLASS_RX, ctrl::RX_PROMISC | ctrl::RX_ALLMULTI) => cmd.len() == 3,
                        (ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET) => cmd.len() == 8,
                        _ => false,
                    };
                if ok {
                    s.ctrl_ack
                } else {
                    ctrl::ERR
                }
            };
            let n = c.write_in(&[ack]);
            self.push_used(CTRLQ, u32::from(c.head), n as u32);
        }
        self.want_kick(CTRLQ);
    }
}

impl Transport for FakeVirtioNet {
    fn device_type(&self) -> DeviceType {
        DeviceType::Network
    }

    fn read_device_features(&mut self) -> u64 {
        self.lock().device_features
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.lock().driver_features = driver_features;
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        let s = self.lock();
        if usize::from(queue) < s.queues.len() {
            s.max_queue_size
        } else {
            0
        }
    }

    fn notify(&mut self, queue: u16) {
        if let Some(q) = self.lock().queues.get_mut(usize::from(queue)) {
            q.notified += 1;
        }
        if queue == CTRLQ {
            self.process_ctrl();
        }
    }

    fn get_status(&self) -> DeviceStatus {
        self.lock().status
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut s = self.lock();
        if status.is_empty() {
            s.resets += 1;
            if s.refuse_reset {
                return;
            }
            for q in &mut s.queues {
                let notified = q.notified;
                *q = DeviceQueue::default();
                q.notified = notified;
            }
        }
        s.status = status;
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
        if let Some(q) = self.lock().queues.get_mut(usize::from(queue)) {
            let notified = q.notified;
            *q = DeviceQueue::new(size, descriptors, driver_area, device_area);
            q.notified = notified;
        }
    }

    fn queue_unset(&mut self, queue: u16) {
        if let Some(q) = self.lock().queues.get_mut(usize::from(queue)) {
            *q = DeviceQueue::default();
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.lock()
            .queues
            .get(usize::from(queue))
            .is_some_and(DeviceQueue::ready)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }

    fn read_config_generation(&self) -> u32 {
        self.lock().generation
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> Result<T, virtio_drivers::Error> {
        let s = self.lock();
        let bytes = s
            .config
            .get(offset..offset + core::mem::size_of::<T>())
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        T::read_from_bytes(bytes).map_err(|_| virtio_drivers::Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), virtio_drivers::Error> {
        let mut s = self.lock();
        let bytes = s
            .config
            .get_mut(offset..offset + core::mem::size_of::<T>())
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        bytes.copy_from_slice(value.as_bytes());
        Ok(())
    }
}
