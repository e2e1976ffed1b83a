//! The `VhostUserBackend` of one switch port, for one connection.
//!
//! Queue 0 is the guest's RX queue (the switch writes into it), queue 1
//! its TX queue (the switch reads from it). One worker thread serves both:
//! a TX kick forwards every frame the guest queued, an RX kick (the guest
//! added buffers) drains the port's backlog.
//!
//! With the port's `poll_us` set and EVENT_IDX negotiated, the worker keeps
//! the TX queue's notifications off for up to `poll_us` after a burst and
//! watches the avail index, within the port's CPU budget; only then does it
//! re-enable notifications (with the usual re-check) and sleep.
//!
//! Features: VERSION_1, EVENT_IDX, INDIRECT_DESC, MAC (when configured),
//! MTU and STATUS (link always up), and the offloads CSUM, GUEST_CSUM,
//! HOST_/GUEST_TSO4, TSO6 and ECN ([`super::offload`]: a frame asking for
//! one crosses as is to a port that took it and is checksummed or
//! segmented in software for one that did not), and MRG_RXBUF (a frame
//! spans as many RX buffers as it needs, `num_buffers` says how many; a
//! frame is written only once enough buffers are posted). Not offered:
//! the control queue and MQ.
//!
//! PROTOCOL_FEATURES with CONFIG (the config space: MAC when configured,
//! link up, MTU; QEMU's virtio-net serves its own from `mac=`/`host_mtu=`)
//! and REPLY_ACK. QEMU reaches the backend through [`super::proxy`], which
//! holds back the `SET_VRING_ENABLE` QEMU 7.2 sends before `SET_FEATURES`.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use log::error;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::frame::{self, DropReason};
use super::offload;
use super::port::{lock, Mem, Port, Switch, VringRwLock};
use crate::dirty_log::{self, DirtyBitmap};

/// RX queue index.
pub const RX_QUEUE: u16 = 0;
/// TX queue index.
pub const TX_QUEUE: u16 = 1;
/// Largest queue the backend accepts (QEMU's rx/tx_queue_size maximum).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Length of the config space (`struct virtio_net_config` up to `mtu`).
pub const CONFIG_LEN: usize = 12;

struct Shared {
    switch: Arc<Switch>,
    port: Arc<Port>,
    mem: RwLock<Option<GuestMemoryAtomic<Mem>>>,
    event_idx: AtomicBool,
    /// A worker panicked: the port ignores its queues until the driver
    /// resets the device or reconnects.
    needs_reset: AtomicBool,
    /// The worker's liveness for the systemd watchdog
    /// ([`crate::liveness`]), busy while it handles an event.
    beat: Arc<crate::liveness::Beat>,
}

/// A vhost-user-net backend for one port and one connection.
#[derive(Clone)]
pub struct NetBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NetBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetBackend")
            .field("port", &self.shared.port.name)
            .finish()
    }
}

impl NetBackend {
    pub fn new(switch: Arc<Switch>, port: Arc<Port>) -> Self {
        Self {
            shared: Arc::new(Shared {
                switch,
                mem: RwLock::new(None),
                event_idx: AtomicBool::new(false),
                needs_reset: AtomicBool::new(false),
                beat: crate::liveness::Liveness::global()
                    .register(format!("port-{} worker", port.name)),
                port,
            }),
        }
    }

    /// `struct virtio_net_config`: mac, status, max_virtqueue_pairs, mtu.
    pub fn config_space(&self) -> [u8; CONFIG_LEN] {
        let p = &self.shared.port;
        let mut c = [0u8; CONFIG_LEN];
        if let Some(mac) = p.mac {
            c[0..6].copy_from_slice(&mac);
        }
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&p.mtu.to_le_bytes());
        c
    }

    fn memory(&self) -> Option<GuestMemoryLoadGuard<Mem>> {
        self.shared
            .mem
            .read()
            .ok()?
            .as_ref()
            .map(GuestMemoryAtomic::memory)
    }

    /// Forwards every frame on the TX queue; returns true if any chain was
    /// completed.
    fn process_tx(&self, vring: &VringRwLock, mem: &GuestMemoryLoadGuard<Mem>) -> io::Result<bool> {
        let port = &self.shared.port;
        let hdr_len = port.hdr_len();
        let offloads = port.tx_offloads();
        let max = hdr_len
            + if offloads.any_tso() {
                offload::MAX_GSO_FRAME
            } else {
                usize::from(port.mtu) + frame::FRAME_OVERHEAD
            };
        let mut completed = false;
        loop {
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            if head >= vring.get_ref().get_queue().size() {
                // No descriptor to return: skipped, counted.
                port.metrics.dropped(DropReason::MalformedChain);
                continue;
            }
            // virtio-queue ends a looping or escaping chain early without an
            // error; the last descriptor then still has NEXT set.
            let mut complete = true;
            let descs: Vec<frame::Desc> = chain
                .take(frame::MAX_TX_DESCS + 1)
                .map(|d| {
                    complete = !d.has_next();
                    frame::Desc {
                        addr: d.addr().0,
                        len: d.len(),
                        write_only: d.is_write_only(),
                    }
                })
                .collect();
            let copied = frame::copy_tx_chain(&descs, complete, max, |addr, buf| {
                mem.read_slice(buf, GuestAddress(addr)).map_err(|_| ())
            });
            if let Err(e) = vring.add_used(head, 0) {
                error!("port '{}': tx add_used({head}): {e}", port.name);
            }
            completed = true;
            let parsed = copied.and_then(|buf| {
                let (meta, f) = offload::parse_tx(&buf, hdr_len, port.mtu, offloads)?;
                self.shared.switch.ingress_packet(port.id, f, &meta);
                Ok(())
            });
            match parsed {
                Ok(()) => {}
                Err(r) => {
                    port.metrics.dropped(r);
                    log::debug!("port '{}': dropped a frame: {r}", port.name);
                }
            }
        }
        // One wake-up per destination for the whole burst.
        self.shared.switch.signal_due();
        if completed
            && vring
                .needs_notification()
                .map_err(|e| io::Error::other(format!("needs_notification: {e}")))?
        {
            vring.signal_used_queue()?;
        }
        Ok(completed)
    }

    /// Spins up to the port's `poll_us` (less when its CPU budget is
    /// short) for the guest to queue another TX frame; true if it did.
    /// The caller keeps notifications off meanwhile, so a frame queued in
    /// the window costs the guest no kick and this thread no wake-up.
    fn poll_tx(&self, vring: &VringRwLock, mem: &GuestMemoryLoadGuard<Mem>) -> bool {
        let port = &self.shared.port;
        if port.poll_us == 0 {
            return false;
        }
        let start = Instant::now();
        let window =
            lock(&port.poll_budget).grant(Duration::from_micros(u64::from(port.poll_us)), start);
        if window.is_zero() {
            port.metrics.poll_misses.inc();
            return false;
        }
        let found = loop {
            {
                let state = vring.get_ref();
                let q = state.get_queue();
                // Acquire: the descriptors the guest wrote before bumping
                // avail.idx are visible to the pop that follows.
                if let Ok(avail) = q.avail_idx(&**mem, Ordering::Acquire) {
                    if avail.0 != q.next_avail() {
                        break true;
                    }
                }
            }
            if start.elapsed() >= window {
                break false;
            }
            std::hint::spin_loop();
        };
        lock(&port.poll_budget).spend(start.elapsed());
        if found {
            port.metrics.poll_hits.inc();
        } else {
            port.metrics.poll_misses.inc();
        }
        found
    }

    fn run_event(&self, device_event: u16, vrings: &[VringRwLock]) -> io::Result<()> {
        let Some(rx) = vrings.get(usize::from(RX_QUEUE)) else {
            return Err(io::Error::other("worker has no RX queue"));
        };
        self.shared.port.attach_rx(rx);
        if device_event == RX_QUEUE {
            self.shared.port.flush_backlog();
            return Ok(());
        }
        let Some(tx) = vrings.get(usize::from(TX_QUEUE)) else {
            return Err(io::Error::other(format!(
                "event {device_event} names no queue"
            )));
        };
        if device_event != TX_QUEUE {
            return Err(io::Error::other(format!(
                "event {device_event} names no queue"
            )));
        }
        let Some(mem) = self.memory() else {
            return Err(io::Error::other("kick before SET_MEM_TABLE"));
        };
        if self.shared.event_idx.load(Ordering::Acquire) {
            // Notifications off while draining (and while polling for the
            // next frame after a burst); re-enabled before sleeping, and
            // drained again if the guest queued frames in between
            // (enable_notification returns true then): no lost wake-up.
            //
            // Two rounds in a row that complete nothing while the re-check
            // still reports frames mean an avail index no chain can be
            // popped from (the guest moved it more than a queue ahead):
            // counted, and the worker sleeps until the next kick instead
            // of spinning on it.
            let mut idle_rounds = 0u32;
            loop {
                tx.disable_notification()
                    .map_err(|e| io::Error::other(e.to_string()))?;
                if self.process_tx(tx, &mem)? {
                    idle_rounds = 0;
                    if self.poll_tx(tx, &mem) {
                        continue;
                    }
                } else {
                    idle_rounds += 1;
                }
                if !tx
                    .enable_notification()
                    .map_err(|e| io::Error::other(e.to_string()))?
                {
                    break;
                }
                if idle_rounds >= 2 {
                    self.shared.port.metrics.dropped(DropReason::MalformedChain);
                    log::debug!(
                        "port '{}': TX avail index unusable, waiting for the next kick",
                        self.shared.port.name
                    );
                    break;
                }
            }
            Ok(())
        } else {
            self.process_tx(tx, &mem).map(|_| ())
        }
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = DirtyBitmap;
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1u64 << VIRTIO_NET_F_MTU)
            | (1u64 << VIRTIO_NET_F_STATUS)
            // Offloads (see `super::offload`): frames cross as sent to a
            // port that took the same, and are checksummed or segmented in
            // software for one that did not.
            | (1u64 << VIRTIO_NET_F_CSUM)
            | (1u64 << VIRTIO_NET_F_GUEST_CSUM)
            | (1u64 << VIRTIO_NET_F_HOST_TSO4)
            | (1u64 << VIRTIO_NET_F_HOST_TSO6)
            | (1u64 << VIRTIO_NET_F_HOST_ECN)
            | (1u64 << VIRTIO_NET_F_GUEST_TSO4)
            | (1u64 << VIRTIO_NET_F_GUEST_TSO6)
            | (1u64 << VIRTIO_NET_F_GUEST_ECN)
            // A 64 KiB frame spans several small RX buffers instead of
            // each buffer being 64 KiB.
            | (1u64 << VIRTIO_NET_F_MRG_RXBUF)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            // Dirty logging for migration: the switch writes guest memory
            // only through vm-memory (RX frames, used rings), which marks
            // every byte in QEMU's log.
            | VhostUserVirtioFeatures::LOG_ALL.bits();
        if self.shared.port.mac.is_some() {
            f |= 1u64 << VIRTIO_NET_F_MAC;
        }
        f
    }

    fn acked_features(&self, features: u64) {
        self.shared.port.set_acked_features(features);
        if let Some(mem) = self.memory() {
            dirty_log::apply_log_all(&mem, features);
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // No STATUS (QEMU 7.2 resets before GET_VRING_BASE with it), no MQ
        // (one queue pair). LOG_SHMFD: QEMU's dirty log, so guests on the
        // switch can be saved and migrated (features acked without LOG_ALL
        // drop the log: `acked_features`).
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    fn reset_device(&self) {
        self.shared.needs_reset.store(false, Ordering::Release);
        self.shared.port.detach();
        self.shared.switch.forget(self.shared.port.id);
    }

    fn set_event_idx(&self, enabled: bool) {
        self.shared.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.config_space();
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        let mut out = cfg[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<Mem>) -> io::Result<()> {
        self.shared.port.set_memory(mem.clone());
        let mut slot = self
            .shared
            .mem
            .write()
            .map_err(|_| io::Error::other("memory lock poisoned"))?;
        *slot = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker for both queues of the port.
        vec![0b11]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        crate::sandbox::enter(crate::sandbox::Class::QueueWorker);
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        if self.shared.needs_reset.load(Ordering::Acquire) {
            return Ok(());
        }
        let _busy = self.shared.beat.busy();
        log::trace!("port '{}': event {device_event}", self.shared.port.name);
        match catch_unwind(AssertUnwindSafe(|| self.run_event(device_event, vrings))) {
            Ok(r) => r,
            Err(_) => {
                let port = &self.shared.port;
                port.metrics.panics.inc();
                self.shared.needs_reset.store(true, Ordering::Release);
                port.detach();
                self.shared.switch.forget(port.id);
                error!(
                    "port '{}': worker panicked; the port stops until its driver resets it",
                    port.name
                );
                Ok(())
            }
        }
    }
}
