//! A fake virtio-blk device on pv-virtq's shared fake transport
//! ([`FakeTransport`], identity-mapped DMA through [`TestHal`]): the disk
//! and the request semantics are here; the transport, the queues and the
//! hostile knobs (write any used element, run the used index ahead, refuse
//! reset) are there and reached through `Deref`. It plays an honest disk
//! ([`FakeVirtioBlk::process`]) or a hostile one.

use std::vec;
use std::vec::Vec;

use pv_virtq::testing::{dev_write, FakeModel, FakeTransport};
use virtio_drivers::transport::DeviceType;

pub use pv_virtq::testing::{Chain, SeenDesc, TestHal};

use crate::virtio::{config, VirtioFeatures, S_IOERR, S_OK, S_UNSUPP};
use crate::virtio::{T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES};

fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// What virtio-blk reads from a chain: header first, status last.
pub trait BlkChain {
    /// The request header bytes (first descriptor).
    fn header(&self) -> Vec<u8>;
    /// The status descriptor (last).
    fn status_desc(&self) -> Option<&SeenDesc>;
}

impl BlkChain for Chain {
    fn header(&self) -> Vec<u8> {
        self.descs
            .first()
            .map(SeenDesc::contents)
            .unwrap_or_default()
    }

    fn status_desc(&self) -> Option<&SeenDesc> {
        self.descs.last()
    }
}

/// The disk behind the fake.
#[derive(Debug)]
pub struct Disk {
    disk: Vec<u8>,
}

impl FakeModel for Disk {}

/// The fake device and its transport. Cloning gives another handle on the
/// same device: hand one to the driver, keep one to play the device.
#[derive(Debug, Clone)]
pub struct FakeVirtioBlk(FakeTransport<Disk>);

pv_virtq::fake_transport!(FakeVirtioBlk, Disk);

impl FakeVirtioBlk {
    /// A device offering `features` with a disk of `sectors` 512-byte
    /// sectors, `queues` queues of at most `max_queue_size` entries.
    pub fn new(features: VirtioFeatures, sectors: u64, queues: u16, max_queue_size: u32) -> Self {
        let mut cfg = vec![0u8; 64];
        cfg[config::CAPACITY..config::CAPACITY + 8].copy_from_slice(&sectors.to_le_bytes());
        cfg[config::SEG_MAX..config::SEG_MAX + 4].copy_from_slice(&126u32.to_le_bytes());
        cfg[config::SIZE_MAX..config::SIZE_MAX + 4].copy_from_slice(&(1u32 << 20).to_le_bytes());
        cfg[config::BLK_SIZE..config::BLK_SIZE + 4].copy_from_slice(&512u32.to_le_bytes());
        cfg[config::NUM_QUEUES..config::NUM_QUEUES + 2].copy_from_slice(&queues.to_le_bytes());
        cfg[config::MAX_DISCARD_SECTORS..config::MAX_DISCARD_SECTORS + 4]
            .copy_from_slice(&(1u32 << 16).to_le_bytes());
        cfg[config::MAX_WRITE_ZEROES_SECTORS..config::MAX_WRITE_ZEROES_SECTORS + 4]
            .copy_from_slice(&(1u32 << 16).to_le_bytes());
        let disk_len = usize::try_from(sectors).unwrap_or(0).saturating_mul(512);
        Self(FakeTransport::with_model(
            DeviceType::Block,
            features.bits(),
            cfg,
            usize::from(queues.max(1)),
            max_queue_size,
            Disk {
                disk: vec![0u8; disk_len],
            },
        ))
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> VirtioFeatures {
        VirtioFeatures::from_bits_retain(self.driver_feature_bits())
    }

    /// Read disk bytes.
    pub fn disk(&self, off: usize, len: usize) -> Vec<u8> {
        let s = self.lock();
        s.model
            .disk
            .get(off..off + len)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    /// Write disk bytes.
    pub fn set_disk(&self, off: usize, bytes: &[u8]) {
        let mut s = self.lock();
        if let Some(d) = s.model.disk.get_mut(off..off + bytes.len()) {
            d.copy_from_slice(bytes);
        }
    }

    /// Write `status` into the chain's status byte.
    pub fn write_status(&self, chain: &Chain, status: u8) {
        if let Some(d) = chain.status_desc() {
            dev_write(d.addr, &[status]);
        }
    }

    /// Carry out `chain` against the disk: returns (status, bytes written
    /// into device-writable buffers including the status byte). Does not
    /// publish anything.
    pub fn execute(&self, chain: &Chain) -> (u8, u32) {
        let hdr = chain.header();
        if hdr.len() < 16 || chain.descs.len() < 2 {
            return (S_IOERR, 0);
        }
        let ty = le32(&hdr, 0);
        let sector = le64(&hdr, 8);
        let data = &chain.descs[1..chain.descs.len() - 1];
        let mut st = self.lock();
        let s = &mut st.model;
        let disk_len = s.disk.len() as u64;
        let mut written = 1u32;
        let status = match ty {
            T_IN | T_OUT => {
                let mut off = sector.saturating_mul(512);
                let mut st = S_OK;
                for d in data {
                    let end = off.saturating_add(u64::from(d.len));
                    if end > disk_len {
                        st = S_IOERR;
                        break;
                    }
                    let r = off as usize..end as usize;
                    if ty == T_IN {
                        dev_write(d.addr, &s.disk[r]);
                        written += d.len;
                    } else {
                        let bytes = d.contents();
                        s.disk[r].copy_from_slice(&bytes);
                    }
                    off = end;
                }
                st
            }
            T_FLUSH => S_OK,
            T_GET_ID => {
                if let Some(d) = data.first() {
                    let mut id = [0u8; 20];
                    id[..8].copy_from_slice(b"fake-blk");
                    let n = (d.len as usize).min(20);
                    dev_write(d.addr, &id[..n]);
                    written += n as u32;
                }
                S_OK
            }
            T_DISCARD | T_WRITE_ZEROES => match data.first().map(SeenDesc::contents) {
                Some(seg) if seg.len() == 16 => {
                    let start = le64(&seg, 0).saturating_mul(512);
                    let end = start.saturating_add(u64::from(le32(&seg, 8)) * 512);
                    if end > disk_len {
                        S_IOERR
                    } else {
                        s.disk[start as usize..end as usize].fill(0);
                        S_OK
                    }
                }
                _ => S_IOERR,
            },
            _ => S_UNSUPP,
        };
        (status, written)
    }

    /// Honest device: take every available chain on queue `q`, execute it,
    /// write its status and publish it. Returns how many.
    pub fn process(&self, q: u16) -> usize {
        let mut n = 0;
        while let Some(c) = self.take_chain(q) {
            let (status, len) = self.execute(&c);
            self.write_status(&c, status);
            self.push_used(q, u32::from(c.head), len);
            n += 1;
        }
        n
    }
}
