//! A virtio-net driver over the native vhost-user frontend
//! ([`NativeNetDriver`]): RX buffers posted in fixed slots, frames sent from
//! TX slots, and a raw API (`send_raw`) for hand-built, deliberately broken
//! TX chains. Queue 0 is RX, queue 1 TX; no control queue, no offloads, no
//! EVENT_IDX (every publish kicks), VERSION_1 (12-byte header).
//!
//! The backend is untrusted: used entries are validated by the split queue
//! and a used length larger than the slot is an error.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frontend::{
    FrontendError, FrontendOptions, QueueHandle, VhostUserDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use super::ram::{GuestRam, RamError};
use super::split::{ChainDesc, QueueError};

/// `struct virtio_net_hdr_v1` length.
pub const NET_HDR_LEN: usize = 12;
/// Bytes per RX or TX slot.
pub const SLOT: u64 = 2048;
/// Bytes of scratch memory after the slots, for hand-built chains.
pub const SCRATCH: u64 = 64 * 1024;
/// `VIRTIO_NET_F_MTU`, `_MAC`, `_STATUS`.
pub const VIRTIO_NET_F_MTU: u32 = 3;
pub const VIRTIO_NET_F_MAC: u32 = 5;
pub const VIRTIO_NET_F_STATUS: u32 = 16;

/// Why the driver failed.
#[derive(Debug, thiserror::Error)]
pub enum NetDriverError {
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Ram(#[from] RamError),
    #[error("kick: {0}")]
    Kick(#[source] std::io::Error),
    /// The device reported a used length larger than the buffer.
    #[error("device wrote {len} bytes into a {max}-byte RX slot")]
    UsedTooLong { len: u32, max: u64 },
    /// Waiting on a call eventfd failed.
    #[error("wait for call: {0}")]
    Wait(#[source] std::io::Error),
    #[error("frame of {0} bytes does not fit a TX slot")]
    TooBig(usize),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// What was negotiated and read (`struct virtio_net_config`) at connect
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// Virtio features agreed.
    pub features: u64,
    pub mac: [u8; 6],
    pub status: u16,
    pub mtu: u16,
}

/// One received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The virtio-net header the device wrote.
    pub header: [u8; NET_HDR_LEN],
    /// The Ethernet frame.
    pub frame: Vec<u8>,
}

/// How [`NativeNetDriver::connect_with`] connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetOptions {
    /// Entries per queue (a power of two).
    pub queue_size: u16,
    /// Read the config space (`GET_CONFIG`); false for backends without the
    /// CONFIG protocol feature, such as DPDK's vhost library ([`NetConfig`]
    /// then has zero MAC and MTU).
    pub read_config: bool,
    /// Negotiate `VIRTIO_RING_F_EVENT_IDX` when offered (as Linux does):
    /// the device then signals only when the driver is about to wait, and
    /// kicks follow its `avail_event`.
    pub event_idx: bool,
}

/// A virtio-net driver on one vhost-user-net port.
pub struct NativeNetDriver {
    dev: VhostUserDevice,
    ram: Arc<GuestRam>,
    rx: QueueHandle,
    tx: QueueHandle,
    rx_base: u64,
    scratch: u64,
    free_tx: Vec<u64>,
    config: NetConfig,
    queue_size: u16,
}

impl std::fmt::Debug for NativeNetDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeNetDriver")
            .field("dev", &self.dev)
            .field("config", &self.config)
            .finish()
    }
}

impl NativeNetDriver {
    /// Connects with two queues of `queue_size` entries and fills the RX
    /// queue with buffers.
    pub fn connect(socket: &Path, queue_size: u16) -> Result<Self, NetDriverError> {
        Self::connect_with(
            socket,
            &NetOptions {
                queue_size,
                read_config: true,
                event_idx: false,
            },
        )
    }

    /// Like [`NativeNetDriver::connect`], with [`NetOptions`].
    pub fn connect_with(socket: &Path, opts: &NetOptions) -> Result<Self, NetDriverError> {
        let NetOptions {
            queue_size,
            read_config,
            event_idx,
        } = *opts;
        let bit = |b: u32| 1u64 << b;
        let slots = u64::from(queue_size);
        let mut dev = VhostUserDevice::connect(
            socket,
            &FrontendOptions {
                num_queues: 2,
                queue_size,
                wanted_features: bit(VIRTIO_NET_F_MTU)
                    | bit(VIRTIO_NET_F_MAC)
                    | bit(VIRTIO_NET_F_STATUS)
                    | if event_idx {
                        bit(VIRTIO_RING_F_EVENT_IDX)
                    } else {
                        0
                    },
                required_features: bit(VIRTIO_F_VERSION_1),
                config_len: if read_config { 12 } else { 0 },
                buffer_bytes: 2 * slots * SLOT + SCRATCH,
            },
        )?;
        let c = dev.config().to_vec();
        let at = |i: usize| c.get(i).copied().unwrap_or(0);
        let config = NetConfig {
            features: dev.features(),
            mac: [at(0), at(1), at(2), at(3), at(4), at(5)],
            status: u16::from_le_bytes([at(6), at(7)]),
            mtu: u16::from_le_bytes([at(10), at(11)]),
        };
        let base = dev.buffers_base();
        let ram = dev.ram().clone();
        let mut queues = dev.take_queues().into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(FrontendError::Missing("two queues".into()).into());
        };
        let tx_base = base + slots * SLOT;
        let mut d = Self {
            dev,
            ram,
            rx,
            tx,
            rx_base: base,
            scratch: tx_base + slots * SLOT,
            free_tx: (0..slots).rev().map(|i| tx_base + i * SLOT).collect(),
            config,
            queue_size,
        };
        for i in 0..slots {
            d.post_rx(base + i * SLOT)?;
        }
        d.kick_rx()?;
        Ok(d)
    }

    pub fn config(&self) -> NetConfig {
        self.config
    }

    pub fn device(&mut self) -> &mut VhostUserDevice {
        &mut self.dev
    }

    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// Scratch RAM (address, length) for hand-built chains.
    pub fn scratch(&self) -> (u64, u64) {
        (self.scratch, SCRATCH)
    }

    fn post_rx(&mut self, addr: u64) -> Result<(), NetDriverError> {
        self.rx.vq.add(
            &self.ram,
            &[ChainDesc::writable(addr, SLOT as u32)],
            SLOT as u32,
            addr,
        )?;
        Ok(())
    }

    fn kick_rx(&mut self) -> Result<(), NetDriverError> {
        if self.rx.vq.publish(&self.ram)? {
            self.rx.kick().map_err(NetDriverError::Kick)?;
        }
        Ok(())
    }

    fn reap_tx(&mut self) -> Result<(), NetDriverError> {
        while let Some(u) = self.tx.vq.pop_used(&self.ram)? {
            // Cookies of slot sends are slot addresses; raw chains use 0.
            if u.cookie != 0 {
                self.free_tx.push(u.cookie);
            }
        }
        Ok(())
    }

    /// Sends one frame with a zeroed header (header and frame in one
    /// descriptor, as Linux does).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetDriverError> {
        let mut hdr = [0u8; NET_HDR_LEN];
        hdr[10] = 0;
        self.send_with_header(&hdr, frame)
    }

    /// Sends `header` then `frame` from one TX slot.
    pub fn send_with_header(&mut self, header: &[u8], frame: &[u8]) -> Result<(), NetDriverError> {
        let len = header.len() + frame.len();
        if len as u64 > SLOT {
            return Err(NetDriverError::TooBig(len));
        }
        self.reap_tx()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let slot = loop {
            if let Some(s) = self.free_tx.pop() {
                break s;
            }
            if Instant::now() >= deadline {
                return Err(NetDriverError::Timeout(Duration::from_secs(30)));
            }
            let _ = self.wait_tx_call(Duration::from_millis(10));
            self.reap_tx()?;
        };
        self.ram.write(slot, header)?;
        self.ram.write(slot + header.len() as u64, frame)?;
        self.tx
            .vq
            .add(&self.ram, &[ChainDesc::readable(slot, len as u32)], 0, slot)?;
        self.kick_tx()
    }

    /// Publishes a hand-built TX chain (data placed by the caller, e.g. in
    /// [`NativeNetDriver::scratch`]) and kicks.
    pub fn send_raw(&mut self, chain: &[ChainDesc]) -> Result<(), NetDriverError> {
        self.reap_tx()?;
        self.tx.vq.add(&self.ram, chain, u32::MAX, 0)?;
        self.kick_tx()
    }

    /// Puts a head outside the descriptor table in the TX ring and kicks.
    pub fn send_bogus_head(&mut self, head: u16) -> Result<(), NetDriverError> {
        self.tx.vq.add_bogus_head(&self.ram, head)?;
        self.kick_tx()
    }

    /// Moves the TX avail index `ahead` entries on without adding chains
    /// (more than a queue ahead, no chain can be popped there) and kicks:
    /// a broken or malicious driver. The TX queue is unusable afterwards.
    pub fn send_avail_idx_ahead(&mut self, ahead: u16) -> Result<(), NetDriverError> {
        use std::sync::atomic::Ordering;
        let idx_addr = self.tx.vq.layout().avail + 2;
        let idx = self.ram.load_u16(idx_addr, Ordering::Acquire)?;
        self.ram
            .store_u16(idx_addr, idx.wrapping_add(ahead), Ordering::Release)?;
        self.tx.kick().map_err(NetDriverError::Kick)
    }

    fn kick_tx(&mut self) -> Result<(), NetDriverError> {
        if self.tx.vq.publish(&self.ram)? {
            self.tx.kick().map_err(NetDriverError::Kick)?;
        }
        Ok(())
    }

    /// Waits until every TX chain sent so far is used.
    pub fn wait_tx_done(&mut self, timeout: Duration) -> Result<(), NetDriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reap_tx()?;
            if self.tx.vq.in_flight() == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NetDriverError::Timeout(timeout));
            }
            let _ = self.wait_tx_call(Duration::from_millis(10));
        }
    }

    /// TX chains not yet used by the device.
    pub fn tx_in_flight(&self) -> usize {
        self.tx.vq.in_flight()
    }

    /// The next received frame, waiting up to `timeout`; `None` on timeout.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Received>, NetDriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.rx.vq.pop_used(&self.ram)? {
                let slot = u.cookie;
                if u64::from(u.len) > SLOT {
                    return Err(NetDriverError::UsedTooLong {
                        len: u.len,
                        max: SLOT,
                    });
                }
                let data = self.ram.read(slot, u.len as usize)?;
                self.post_rx(slot)?;
                self.kick_rx()?;
                let mut header = [0u8; NET_HDR_LEN];
                let n = data.len().min(NET_HDR_LEN);
                header[..n].copy_from_slice(&data[..n]);
                return Ok(Some(Received {
                    header,
                    frame: data.get(NET_HDR_LEN..).unwrap_or(&[]).to_vec(),
                }));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let _ = self.wait_rx_call((deadline - now).min(Duration::from_millis(10)));
        }
    }

    /// Sends up to `max` frames in one burst: every free TX slot (after
    /// reaping used ones) is handed to `fill`, which writes header and
    /// frame at the slot's guest address and returns their length (at most
    /// [`SLOT`]) or `None` to stop. One publish and at most one kick for the
    /// whole burst. Returns how many frames were queued (0 when the ring is
    /// full).
    pub fn send_burst<F>(&mut self, max: usize, mut fill: F) -> Result<usize, NetDriverError>
    where
        F: FnMut(&GuestRam, u64) -> Result<Option<u32>, NetDriverError>,
    {
        self.reap_tx()?;
        let mut n = 0;
        while n < max {
            let Some(slot) = self.free_tx.pop() else {
                break;
            };
            let len = match fill(&self.ram, slot) {
                Ok(Some(len)) if u64::from(len) <= SLOT => len,
                Ok(Some(len)) => {
                    self.free_tx.push(slot);
                    return Err(NetDriverError::TooBig(len as usize));
                }
                Ok(None) => {
                    self.free_tx.push(slot);
                    break;
                }
                Err(e) => {
                    self.free_tx.push(slot);
                    return Err(e);
                }
            };
            self.tx
                .vq
                .add(&self.ram, &[ChainDesc::readable(slot, len)], 0, slot)?;
            n += 1;
        }
        self.kick_tx()?;
        Ok(n)
    }

    /// Takes up to `max` received frames in one burst without waiting:
    /// `each` sees guest RAM, the slot address (header first) and the used
    /// length, validated against the slot; then every slot is posted again
    /// with one publish and at most one kick. Returns how many were taken.
    pub fn recv_burst<F>(&mut self, max: usize, mut each: F) -> Result<usize, NetDriverError>
    where
        F: FnMut(&GuestRam, u64, u32) -> Result<(), NetDriverError>,
    {
        let mut n = 0;
        while n < max {
            let Some(u) = self.rx.vq.pop_used(&self.ram)? else {
                break;
            };
            let slot = u.cookie;
            // Re-post first so a bad length does not leak the slot.
            self.post_rx(slot)?;
            n += 1;
            if u64::from(u.len) > SLOT {
                self.kick_rx()?;
                return Err(NetDriverError::UsedTooLong {
                    len: u.len,
                    max: SLOT,
                });
            }
            each(&self.ram, slot, u.len)?;
        }
        if n > 0 {
            self.kick_rx()?;
        }
        Ok(n)
    }

    /// Waits up to `timeout` for the device to signal the RX queue's call
    /// eventfd; false on timeout.
    /// With EVENT_IDX, asks for the signal first (and returns true at once
    /// when entries are already there).
    pub fn wait_rx_call(&mut self, timeout: Duration) -> Result<bool, NetDriverError> {
        if self.rx.vq.enable_interrupts(&self.ram)? {
            return Ok(true);
        }
        self.rx.wait_call(timeout).map_err(NetDriverError::Wait)
    }

    /// Waits up to `timeout` for the device to signal the TX queue's call
    /// eventfd; false on timeout.
    /// Arms the signal first, like [`NativeNetDriver::wait_rx_call`].
    pub fn wait_tx_call(&mut self, timeout: Duration) -> Result<bool, NetDriverError> {
        if self.tx.vq.enable_interrupts(&self.ram)? {
            return Ok(true);
        }
        self.tx.wait_call(timeout).map_err(NetDriverError::Wait)
    }

    /// Queue size of both queues.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// The RX slots' base address (for checks).
    pub fn rx_base(&self) -> u64 {
        self.rx_base
    }
}
