//! The VMM half of a vhost-user connection: connect, negotiate virtio and
//! protocol features, read the config space, share guest RAM, and start
//! split virtqueues with their kick and call eventfds. Device-independent
//! (blk today, net later); the device layer says which features it wants
//! and what to do with the queues.
//!
//! The message sequence follows QEMU 7.2's (the real VMM our backends
//! serve): `SET_OWNER`, `GET_FEATURES`, `GET_PROTOCOL_FEATURES`,
//! `SET_PROTOCOL_FEATURES`, `GET_QUEUE_NUM`, `GET_CONFIG`, `SET_FEATURES`,
//! `SET_MEM_TABLE`, then per queue `SET_VRING_NUM`, `SET_VRING_BASE`,
//! `SET_VRING_ADDR`, `SET_VRING_KICK`, `SET_VRING_CALL`, and
//! `SET_VRING_ENABLE`. With `REPLY_ACK` agreed every message asks for an
//! acknowledgement, so the backend has applied the memory table and rings
//! before the first kick.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::vhost_user::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VringConfigData};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::ram::{GuestRam, RamError, RAM_BASE};
use super::split::{QueueError, QueueLayout, SplitQueue};

/// Bytes of guest memory one bit of a dirty log stands for
/// (`VHOST_LOG_PAGE`).
pub const LOG_PAGE: u64 = 4096;

/// A dirty log shared with the backend (see
/// [`VhostUserDevice::start_dirty_log`]): bit n of the file is the page at
/// guest-physical n * [`LOG_PAGE`]. Read with `pread`: the backend sets
/// bits concurrently, and a read only ever sees bits set or not yet set.
#[derive(Debug)]
pub struct DirtyLog {
    file: std::fs::File,
}

impl DirtyLog {
    /// Whether the page holding guest-physical `addr` is marked.
    pub fn is_dirty(&self, addr: u64) -> std::io::Result<bool> {
        use std::os::unix::fs::FileExt;
        let page = addr / LOG_PAGE;
        let mut byte = [0u8];
        self.file.read_exact_at(&mut byte, page / 8)?;
        Ok(byte[0] & (1 << (page % 8)) != 0)
    }

    /// Clears every mark.
    pub fn clear(&self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let len = self.file.metadata()?.len();
        let zeros = vec![0u8; usize::try_from(len).map_err(std::io::Error::other)?];
        self.file.write_all_at(&zeros, 0)
    }
}

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Why the frontend failed. Variants say who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The backend's socket could not be reached.
    #[error("connect to {socket}: {source}")]
    Connect {
        socket: String,
        #[source]
        source: vhost::Error,
    },
    /// A vhost-user message failed (the backend refused it or the socket broke).
    #[error("vhost-user {what}: {source}")]
    Message {
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    /// The backend lacks something the driver needs.
    #[error("backend lacks {0}")]
    Missing(String),
    /// The caller asked for something impossible (queue count or size).
    #[error("bad driver options: {0}")]
    Options(String),
    /// Setting up memory, eventfds or epoll failed on our side.
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ram(#[from] RamError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

fn msg(what: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |source| FrontendError::Message { what, source }
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> FrontendError {
    move |source| FrontendError::Os { what, source }
}

/// What the device layer asks of the connection.
#[derive(Debug, Clone)]
pub struct FrontendOptions {
    /// Queues to start (the backend must offer at least this many).
    pub num_queues: u16,
    /// Entries per queue (a power of two).
    pub queue_size: u16,
    /// Virtio feature bits the driver accepts (acked where offered).
    pub wanted_features: u64,
    /// Virtio feature bits without which the driver refuses the backend.
    pub required_features: u64,
    /// Bytes of config space to read with `GET_CONFIG` (0: none).
    pub config_len: u32,
    /// Bytes of guest RAM after the rings for the device layer's buffers.
    pub buffer_bytes: u64,
}

/// One started queue: its ring, kick and call eventfds.
#[derive(Debug)]
pub struct QueueHandle {
    pub index: u16,
    pub vq: SplitQueue,
    kick: EventFd,
    call: EventFd,
    epoll: Epoll,
}

impl QueueHandle {
    /// Signals the backend that the available ring has news.
    pub fn kick(&self) -> std::io::Result<()> {
        self.kick.write(1)
    }

    /// Waits until the backend signals the call eventfd, at most `timeout`.
    /// Returns false on timeout.
    pub fn wait_call(&self, timeout: Duration) -> std::io::Result<bool> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let mut ev = [EpollEvent::default()];
        let n = loop {
            match self.epoll.wait(ms, &mut ev) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n == 0 {
            return Ok(false);
        }
        // Consume the count (non-blocking; a racing read may leave it 0).
        match self.call.read() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// A connected, started vhost-user device. Dropping it closes the socket,
/// which the backend takes as the VMM going away.
pub struct VhostUserDevice {
    frontend: Frontend,
    ram: Arc<GuestRam>,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    max_queues: u64,
    config: Vec<u8>,
    queues: Vec<QueueHandle>,
    buffers: u64,
}

impl std::fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol", &self.protocol)
            .field("max_queues", &self.max_queues)
            .field("queues", &self.queues.len())
            .finish()
    }
}

impl VhostUserDevice {
    /// Connects to `socket` and starts `opts.num_queues` queues.
    pub fn connect(socket: &Path, opts: &FrontendOptions) -> Result<Self, FrontendError> {
        if opts.num_queues == 0 || !opts.queue_size.is_power_of_two() {
            return Err(FrontendError::Options(format!(
                "{} queues of {} entries",
                opts.num_queues, opts.queue_size
            )));
        }
        let mut fe = Frontend::connect(socket, u64::from(opts.num_queues)).map_err(|source| {
            FrontendError::Connect {
                socket: socket.display().to_string(),
                source,
            }
        })?;
        fe.set_owner().map_err(msg("SET_OWNER"))?;
        let offered = fe.get_features().map_err(msg("GET_FEATURES"))?;
        let missing = opts.required_features & !offered;
        if missing != 0 {
            return Err(FrontendError::Missing(format!(
                "virtio features {missing:#x} (offered {offered:#x})"
            )));
        }
        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        // A backend without protocol features (our switch ports) gets none
        // of their messages, and its rings start enabled at SET_FEATURES.
        let has_protocol = offered & proto_bit != 0;
        let features = offered & (opts.wanted_features | opts.required_features | proto_bit);
        // LOG_SHMFD as QEMU asks for it: agreeing costs nothing until
        // `start_dirty_log` hands the backend a log.
        let pwanted = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::LOG_SHMFD;
        let protocol = if has_protocol {
            let poffered = fe
                .get_protocol_features()
                .map_err(msg("GET_PROTOCOL_FEATURES"))?;
            let protocol = poffered & pwanted;
            fe.set_protocol_features(protocol)
                .map_err(msg("SET_PROTOCOL_FEATURES"))?;
            protocol
        } else {
            VhostUserProtocolFeatures::empty()
        };
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let max_queues = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            fe.get_queue_num().map_err(msg("GET_QUEUE_NUM"))?
        } else {
            // Without MQ the device type fixes the queue count (virtio-blk:
            // one; virtio-net: one RX/TX pair): the device layer asks for
            // what its type defines.
            u64::from(opts.num_queues)
        };
        if u64::from(opts.num_queues) > max_queues {
            return Err(FrontendError::Missing(format!(
                "{} queues (it serves {max_queues})",
                opts.num_queues
            )));
        }
        let config = if opts.config_len > 0 {
            if !protocol.contains(VhostUserProtocolFeatures::CONFIG) {
                return Err(FrontendError::Missing("the CONFIG protocol feature".into()));
            }
            let buf = vec![0u8; opts.config_len as usize];
            let (_, payload) = fe
                .get_config(0, opts.config_len, VhostUserConfigFlags::empty(), &buf)
                .map_err(msg("GET_CONFIG"))?;
            payload
        } else {
            Vec::new()
        };
        fe.set_features(features).map_err(msg("SET_FEATURES"))?;

        let ring_bytes = QueueLayout::bytes(opts.queue_size) * u64::from(opts.num_queues);
        let ram_size = (ring_bytes + opts.buffer_bytes).div_ceil(1 << 21) * (1 << 21);
        let ram = Arc::new(GuestRam::new(ram_size).map_err(os("guest RAM memfd"))?);
        let region = ram.region_info().map_err(os("guest RAM region"))?;
        fe.set_mem_table(&[region]).map_err(msg("SET_MEM_TABLE"))?;

        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::new();
        for q in 0..opts.num_queues {
            let qi = usize::from(q);
            let layout = QueueLayout::at(
                RAM_BASE + QueueLayout::bytes(opts.queue_size) * u64::from(q),
                opts.queue_size,
            );
            let vq = SplitQueue::new(&ram, layout, event_idx)?;
            let kick = EventFd::new(EFD_NONBLOCK).map_err(os("kick eventfd"))?;
            let call = EventFd::new(EFD_NONBLOCK).map_err(os("call eventfd"))?;
            let epoll = Epoll::new().map_err(os("epoll"))?;
            epoll
                .ctl(
                    ControlOperation::Add,
                    call.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, 0),
                )
                .map_err(os("epoll add"))?;
            fe.set_vring_num(qi, opts.queue_size)
                .map_err(msg("SET_VRING_NUM"))?;
            fe.set_vring_base(qi, 0).map_err(msg("SET_VRING_BASE"))?;
            let addrs = VringConfigData {
                queue_max_size: opts.queue_size,
                queue_size: opts.queue_size,
                flags: 0,
                desc_table_addr: ram.user_addr(layout.desc)?,
                used_ring_addr: ram.user_addr(layout.used)?,
                avail_ring_addr: ram.user_addr(layout.avail)?,
                log_addr: None,
            };
            fe.set_vring_addr(qi, &addrs)
                .map_err(msg("SET_VRING_ADDR"))?;
            fe.set_vring_kick(qi, &kick)
                .map_err(msg("SET_VRING_KICK"))?;
            fe.set_vring_call(qi, &call)
                .map_err(msg("SET_VRING_CALL"))?;
            queues.push(QueueHandle {
                index: q,
                vq,
                kick,
                call,
                epoll,
            });
        }
        if has_protocol {
            for q in 0..usize::from(opts.num_queues) {
                fe.set_vring_enable(q, true)
                    .map_err(msg("SET_VRING_ENABLE"))?;
            }
        }
        Ok(Self {
            frontend: fe,
            ram,
            features,
            protocol,
            max_queues,
            config,
            queues,
            buffers: RAM_BASE + ring_bytes,
        })
    }

    /// Virtio features agreed.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether virtio feature `bit` was agreed.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.features & (1u64 << bit) != 0
    }

    /// Protocol features agreed.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Queues the backend serves (`GET_QUEUE_NUM`).
    pub fn max_queues(&self) -> u64 {
        self.max_queues
    }

    /// The config space read at connect time.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// Guest RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// First guest address after the rings (the device layer's area).
    pub fn buffers_base(&self) -> u64 {
        self.buffers
    }

    /// Takes the started queues (the device layer owns them from now on).
    pub fn take_queues(&mut self) -> Vec<QueueHandle> {
        std::mem::take(&mut self.queues)
    }

    /// Reads `len` bytes of config space at `offset` again.
    pub fn read_config(&mut self, offset: u32, len: u32) -> Result<Vec<u8>, FrontendError> {
        let buf = vec![0u8; len as usize];
        let (_, payload) = self
            .frontend
            .get_config(offset, len, VhostUserConfigFlags::empty(), &buf)
            .map_err(msg("GET_CONFIG"))?;
        Ok(payload)
    }

    /// Hands the backend a dirty log over all of guest RAM
    /// (`SET_LOG_BASE` with a memfd, as QEMU does when a migration starts):
    /// from then on it marks every page it writes.
    pub fn start_dirty_log(&mut self) -> Result<DirtyLog, FrontendError> {
        if !self.protocol.contains(VhostUserProtocolFeatures::LOG_SHMFD) {
            return Err(FrontendError::Missing(
                "the LOG_SHMFD protocol feature".into(),
            ));
        }
        // One bit per page of guest-physical address space, from 0 to the
        // end of RAM, in whole pages of log.
        let pages = (RAM_BASE + self.ram.size()).div_ceil(LOG_PAGE);
        let bytes = pages.div_ceil(8).div_ceil(4096) * 4096;
        let file = super::ram::memfd(c"pvtest-dirty-log").map_err(os("dirty log memfd"))?;
        file.set_len(bytes).map_err(os("dirty log size"))?;
        self.frontend
            .set_log_base(
                0,
                Some(VhostUserDirtyLogRegion {
                    mmap_size: bytes,
                    mmap_offset: 0,
                    mmap_handle: file.as_raw_fd(),
                }),
            )
            .map_err(msg("SET_LOG_BASE"))?;
        Ok(DirtyLog { file })
    }

    /// Stops queue `q` (`GET_VRING_BASE`) and returns the backend's next
    /// available index.
    pub fn stop_queue(&mut self, q: u16) -> Result<u32, FrontendError> {
        self.frontend
            .get_vring_base(usize::from(q))
            .map_err(msg("GET_VRING_BASE"))
    }
}
