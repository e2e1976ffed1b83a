//! A fake virtio-net device on pv-virtq's shared fake transport
//! ([`FakeTransport`], reached through `Deref`; DMA through [`TestHal`]),
//! whose device side runs in the test's own thread. It can
//! play an honest NIC ([`FakeVirtioNet::take_tx`],
//! [`FakeVirtioNet::deliver`], control commands answered on the kick, as
//! QEMU does) or a hostile one (any used element, any header, any length,
//! used index run ahead, refuse reset).

use std::vec::Vec;

use pv_virtq::testing::{FakeModel, FakeTransport};
use virtio_drivers::transport::DeviceType;

pub use pv_virtq::testing::{Chain, TestHal};

use crate::virtio::{config, ctrl, NetHdr, VirtioNetFeatures, CTRLQ, HDR_LEN, RXQ, TXQ};

/// The NIC's own state: control commands seen and the ack it gives.
#[derive(Debug)]
pub struct Nic {
    ctrl_log: Vec<Vec<u8>>,
    ctrl_ack: u8,
}

impl FakeModel for Nic {
    /// QEMU answers control commands on the kick.
    fn kicked(dev: &FakeTransport<Self>, q: u16) {
        if q == CTRLQ {
            process_ctrl(dev);
        }
    }
}

/// The fake device and its transport. Cloning gives another handle on the
/// same device: hand one to the driver, keep one to play the device.
#[derive(Debug, Clone)]
pub struct FakeVirtioNet(FakeTransport<Nic>);

pv_virtq::fake_transport!(FakeVirtioNet, Nic);

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
        Self(FakeTransport::with_model(
            DeviceType::Network,
            features.bits(),
            cfg.to_vec(),
            3,
            max_queue_size,
            Nic {
                ctrl_log: Vec::new(),
                ctrl_ack: ctrl::OK,
            },
        ))
    }

    fn mrg(&self) -> bool {
        self.driver_features()
            .contains(VirtioNetFeatures::MRG_RXBUF)
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> VirtioNetFeatures {
        VirtioNetFeatures::from_bits_retain(self.driver_feature_bits())
    }

    /// Set the link state (bumps the config generation).
    pub fn set_link(&self, up: bool) {
        let v: u16 = if up { config::S_LINK_UP } else { 0 };
        self.set_config(config::STATUS, &v.to_le_bytes());
    }

    /// Ack the device gives control commands.
    pub fn set_ctrl_ack(&self, ack: u8) {
        self.lock().model.ctrl_ack = ack;
    }

    /// Control commands received (class, cmd, data...).
    pub fn ctrl_log(&self) -> Vec<Vec<u8>> {
        self.lock().model.ctrl_log.clone()
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
                self.untake(RXQ, chains.len() as u16);
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
        process_ctrl(&self.0);
    }
}

/// Answer every pending control command on `dev`.
fn process_ctrl(dev: &FakeTransport<Nic>) {
    while let Some(c) = dev.take_chain(CTRLQ) {
        let cmd = c.readable_bytes();
        let ack = {
            let mut s = dev.lock();
            s.model.ctrl_log.push(cmd.clone());
            let ok = cmd.len() >= 2
                && match (cmd[0], cmd[1]) {
                    (ctrl::CLASS_RX, ctrl::RX_PROMISC | ctrl::RX_ALLMULTI) => cmd.len() == 3,
                    (ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET) => cmd.len() == 8,
                    _ => false,
                };
            if ok {
                s.model.ctrl_ack
            } else {
                ctrl::ERR
            }
        };
        let n = c.write_in(&[ack]);
        dev.push_used(CTRLQ, u32::from(c.head), n as u32);
    }
    dev.want_kick(CTRLQ);
}
