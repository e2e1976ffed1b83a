//! A fake virtio-balloon device on pv-virtq's shared fake transport
//! ([`FakeTransport`], reached through `Deref`), whose device side runs in
//! the test's own thread, over identity-mapped DMA ([`IdentityHal`]). It
//! can play an honest balloon ([`FakeBalloon::process`]) or a hostile one
//! (complete buffers never posted, run the used index ahead, write any used
//! length, change `num_pages` to anything).

use std::collections::BTreeSet;
use std::vec;
use std::vec::Vec;

use pv_virtq::testing::{FakeModel, FakeTransport};
use virtio_drivers::transport::DeviceType;

pub use pv_virtq::testing::{Chain, IdentityHal};

use crate::virtio::{config, VirtioFeatures, DEFLATEQ, INFLATEQ, STATSQ};

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// What the balloon reads from a chain.
pub trait BalloonChain {
    /// The chain read as an array of le32 frame numbers.
    fn pfns(&self) -> Vec<u32>;
}

impl BalloonChain for Chain {
    fn pfns(&self) -> Vec<u32> {
        self.bytes().chunks_exact(4).map(|c| le32(c, 0)).collect()
    }
}

/// The balloon's own state.
#[derive(Debug, Default)]
pub struct BalloonState {
    balloon: BTreeSet<u32>,
    reported: Vec<(u64, u32)>,
    stats_head: Option<u16>,
    last_stats: Vec<u8>,
}

impl FakeModel for BalloonState {
    /// A reset empties the balloon and drops the held stats buffer.
    fn reset(&mut self) {
        self.balloon.clear();
        self.stats_head = None;
    }
}

/// The fake device and its transport. Cloning gives another handle on the
/// same device: hand one to the driver, keep one to play the device.
#[derive(Debug, Clone)]
pub struct FakeBalloon(FakeTransport<BalloonState>);

pv_virtq::fake_transport!(FakeBalloon, BalloonState);

/// Queues the fake creates (inflate, deflate, stats, and two more for the
/// hint and reporting numbering cases).
pub const FAKE_QUEUES: usize = 5;

impl FakeBalloon {
    /// A device offering `features`, queues of at most `max_queue_size`.
    pub fn new(features: VirtioFeatures, max_queue_size: u32) -> Self {
        Self(FakeTransport::with_model(
            DeviceType::MemoryBalloon,
            features.bits(),
            vec![0u8; config::LEN],
            FAKE_QUEUES,
            max_queue_size,
            BalloonState::default(),
        ))
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> VirtioFeatures {
        VirtioFeatures::from_bits_retain(self.driver_feature_bits())
    }

    /// Set `num_pages` (le32) and bump the generation: a config change.
    pub fn set_num_pages(&self, n: u32) {
        self.set_config(config::NUM_PAGES, &n.to_le_bytes());
    }

    /// `actual` as the driver last wrote it.
    pub fn actual(&self) -> u32 {
        le32(&self.lock().config, config::ACTUAL)
    }

    /// `poison_val` as the driver wrote it.
    pub fn poison_val(&self) -> u32 {
        le32(&self.lock().config, config::POISON_VAL)
    }

    /// Frames the device holds in its balloon (honest processing).
    pub fn balloon(&self) -> BTreeSet<u32> {
        self.lock().model.balloon.clone()
    }

    /// Ranges reported through free page reporting (address, length).
    pub fn reported(&self) -> Vec<(u64, u32)> {
        self.lock().model.reported.clone()
    }

    /// The last stats buffer the device consumed.
    pub fn last_stats(&self) -> Vec<u8> {
        self.lock().model.last_stats.clone()
    }

    /// Honest device: take every available chain on queue `q` and complete
    /// it (inflate adds its frames to the balloon, deflate removes them,
    /// reporting records the ranges). The stats queue is different: the
    /// device keeps the buffer until [`FakeBalloon::request_stats`]. Returns
    /// how many chains were taken.
    pub fn process(&self, q: u16) -> usize {
        let reporting = self.reporting_queue();
        let mut n = 0;
        while let Some(c) = self.take_chain(q) {
            n += 1;
            if q == STATSQ && self.driver_features().contains(VirtioFeatures::STATS_VQ) {
                let bytes = c.bytes();
                let mut s = self.lock();
                s.model.last_stats = bytes;
                s.model.stats_head = Some(c.head);
                continue;
            }
            {
                let mut st = self.lock();
                let s = &mut st.model;
                match q {
                    INFLATEQ => s.balloon.extend(c.pfns()),
                    DEFLATEQ => {
                        for p in c.pfns() {
                            s.balloon.remove(&p);
                        }
                    }
                    _ if Some(q) == reporting => {
                        s.reported.extend(c.descs.iter().map(|d| (d.addr, d.len)));
                    }
                    _ => {}
                }
            }
            self.push_used(q, u32::from(c.head), 0);
        }
        n
    }

    /// Honest device asking for fresh stats: take any posted stats buffer,
    /// then give it back. Returns false if the driver has none posted.
    pub fn request_stats(&self) -> bool {
        self.process(STATSQ);
        let head = self.lock().model.stats_head.take();
        match head {
            Some(h) => {
                self.push_used(STATSQ, u32::from(h), 0);
                true
            }
            None => false,
        }
    }

    /// Where an honest device has its reporting queue, from the negotiated
    /// features (dense numbering, as QEMU and Linux do).
    pub fn reporting_queue(&self) -> Option<u16> {
        let f = self.driver_features();
        if !f.contains(VirtioFeatures::PAGE_REPORTING) {
            return None;
        }
        let mut q = 2;
        if f.contains(VirtioFeatures::STATS_VQ) {
            q += 1;
        }
        if f.contains(VirtioFeatures::FREE_PAGE_HINT) {
            q += 1;
        }
        Some(q)
    }
}
