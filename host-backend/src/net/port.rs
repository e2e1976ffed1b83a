//! Switch ports and the switch that joins them.
//!
//! A [`Port`] outlives its guest's connections: it owns the port's metrics,
//! rate limiter and receive side (the guest's RX queue, its memory, and a
//! short backlog for frames that arrive while the guest has no buffer).
//! [`Switch::ingress`] is called by the thread that took a frame off a
//! port's TX queue (or the uplink's reader): it learns, decides and copies
//! the frame straight into each destination's RX queue and marks that
//! destination's signal as due. The caller signals every due destination
//! once, after its whole TX burst ([`Switch::signal_due`]), not once per
//! frame: a wake-up is a system call and a context switch on the other
//! side, the dominant cost of small frames. No thread polls: every step is
//! driven by a kick or a TAP read.
//!
//! Locks: the MAC table lock is never held while delivering, and a delivery
//! holds one destination's RX lock (and inside it that queue's vring lock)
//! at a time, so two ports forwarding to each other cannot deadlock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

use super::frame::{self, DropReason, HDR_LEN};
use super::metrics::PortMetrics;
use super::offload::{self, Meta, Offloads, Plan, VnetHdr};
use super::switch::{decide, Decision, Learned, MacTable, PollBudget, TokenBucket};
use super::tap::Tap;

/// Guest memory with QEMU's dirty log behind every region: every write
/// through vm-memory (RX frames, used entries) is marked for migration.
pub(crate) type Mem = crate::dirty_log::LoggedMemory;
/// A vring over [`Mem`] (the framework's default is memory without a log).
pub(crate) type VringRwLock = vhost_user_backend::VringRwLock<GuestMemoryAtomic<Mem>>;

/// Frames kept per port while its guest has no RX buffer.
pub const BACKLOG: usize = 256;

/// Locks a mutex, recovering the data if a panicking thread poisoned it:
/// every critical section here leaves its data consistent at each step.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Default)]
struct RxSide {
    vring: Option<VringRwLock>,
    mem: Option<GuestMemoryAtomic<Mem>>,
    /// Frames with the header each goes out with.
    backlog: VecDeque<(Vec<u8>, VnetHdr)>,
}

/// What is behind a port.
#[derive(Debug)]
pub enum Attachment {
    /// A guest NIC on a vhost-user socket.
    Guest,
    /// The host, through a TAP device.
    Uplink(Tap),
}

/// One switch port.
pub struct Port {
    pub id: usize,
    pub name: String,
    pub mtu: u16,
    pub mac: Option<frame::Mac>,
    pub metrics: Arc<PortMetrics>,
    pub attachment: Attachment,
    /// Polling window after a TX burst, 0 for none (see
    /// [`super::config::NetPortConfig::poll_us`]).
    pub poll_us: u32,
    /// Its CPU budget (only the port's worker thread takes it).
    pub poll_budget: Mutex<PollBudget>,
    limiter: Option<Mutex<TokenBucket>>,
    rx: Mutex<RxSide>,
    hdr_len: AtomicUsize,
    /// The connection's acked virtio features (0 for the uplink): the
    /// offloads its guest may ask for and may be handed.
    acked: AtomicU64,
    /// Used RX buffers were added and the guest has not been signalled.
    /// Set (Release) after `add_used`, taken (AcqRel) before signalling, so
    /// whoever takes it signals for every entry added before it was set.
    signal_due: AtomicBool,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

impl Port {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        name: String,
        mtu: u16,
        mac: Option<frame::Mac>,
        rate_mbps: Option<u32>,
        poll_us: u32,
        metrics: Arc<PortMetrics>,
        attachment: Attachment,
    ) -> Self {
        Self {
            id,
            name,
            mtu,
            mac,
            metrics,
            attachment,
            poll_us,
            poll_budget: Mutex::new(PollBudget::default()),
            limiter: rate_mbps
                .filter(|r| *r > 0)
                .map(|r| Mutex::new(TokenBucket::new_mbps(r, Instant::now()))),
            rx: Mutex::new(RxSide::default()),
            hdr_len: AtomicUsize::new(HDR_LEN),
            acked: AtomicU64::new(0),
            signal_due: AtomicBool::new(false),
        }
    }

    /// The connection's acked features decide the header length and the
    /// offloads.
    pub fn set_acked_features(&self, acked: u64) {
        self.hdr_len.store(frame::hdr_len(acked), Ordering::Release);
        self.acked.store(acked, Ordering::Release);
    }

    /// The guest took MRG_RXBUF: a frame may span several RX buffers.
    pub fn mergeable(&self) -> bool {
        self.acked.load(Ordering::Acquire) & (1 << 15) != 0
    }

    /// What the guest may ask of the switch on transmit.
    pub fn tx_offloads(&self) -> Offloads {
        Offloads::from_guest_tx(self.acked.load(Ordering::Acquire))
    }

    /// What the switch may hand the guest on receive.
    pub fn rx_offloads(&self) -> Offloads {
        Offloads::to_guest_rx(self.acked.load(Ordering::Acquire))
    }

    pub fn hdr_len(&self) -> usize {
        self.hdr_len.load(Ordering::Acquire)
    }

    /// The guest's memory table changed.
    pub fn set_memory(&self, mem: GuestMemoryAtomic<Mem>) {
        lock(&self.rx).mem = Some(mem);
    }

    /// Remembers the connection's RX vring (the first event of a
    /// connection hands it over).
    pub fn attach_rx(&self, vring: &VringRwLock) {
        let mut rx = lock(&self.rx);
        if rx.vring.is_none() {
            rx.vring = Some(vring.clone());
        }
    }

    /// The guest went away or reset: forget its queue, memory and backlog.
    pub fn detach(&self) {
        let mut rx = lock(&self.rx);
        rx.vring = None;
        rx.mem = None;
        rx.backlog.clear();
    }

    fn admit(&self, bytes: usize) -> bool {
        match &self.limiter {
            Some(b) => lock(b).admit(bytes, Instant::now()),
            None => true,
        }
    }

    /// Delivers `frame` (Ethernet, no virtio header), which asks for the
    /// offloads `meta`, to this port: as is when its guest takes them,
    /// otherwise checksummed or segmented in software first.
    pub fn deliver(&self, frame: &[u8], meta: &Meta) {
        let plan = offload::plan(meta, self.rx_offloads());
        if plan == Plan::Pass {
            if meta.csum.is_some() {
                self.metrics.offload_passed.inc();
            }
            self.deliver_one(frame, meta.header());
            return;
        }
        match offload::transform(frame, meta, plan) {
            Ok(outs) => {
                if matches!(plan, Plan::Segment { .. }) {
                    self.metrics.offload_segmented.inc();
                }
                if matches!(plan, Plan::Complete | Plan::Segment { partial: false }) {
                    self.metrics.csum_completed.inc_by(outs.len() as u64);
                }
                for o in outs {
                    self.deliver_one(&o.frame, o.hdr);
                }
            }
            Err(r) => self.metrics.dropped(r),
        }
    }

    /// Delivers one frame that goes out with `hdr`.
    fn deliver_one(&self, frame: &[u8], hdr: VnetHdr) {
        let max = usize::from(self.mtu) + frame::FRAME_OVERHEAD;
        // A TSO frame's segments must fit this port's MTU.
        let len = if hdr.gso_type == 0 {
            frame.len()
        } else {
            usize::from(hdr.hdr_len) + usize::from(hdr.gso_size)
        };
        if len > max {
            self.metrics.dropped(DropReason::Oversized);
            return;
        }
        if let Attachment::Uplink(tap) = &self.attachment {
            match tap.write(frame) {
                Ok(()) => {
                    self.metrics.tx_packets.inc();
                    self.metrics.tx_bytes.inc_by(frame.len() as u64);
                }
                Err(e) => {
                    self.metrics.dropped(DropReason::Uplink);
                    log::debug!("port '{}': uplink write: {e}", self.name);
                }
            }
            return;
        }
        let mut rx = lock(&self.rx);
        if !rx.backlog.is_empty() {
            self.flush_locked(&mut rx);
        }
        if rx.backlog.is_empty() {
            match self.put_locked(&rx, frame, hdr) {
                Ok(true) => return,
                Ok(false) => {}
                Err(r) => {
                    self.metrics.dropped(r);
                    return;
                }
            }
        }
        if rx.backlog.len() < BACKLOG {
            rx.backlog.push_back((frame.to_vec(), hdr));
        } else {
            self.metrics.dropped(DropReason::NoRxBuffer);
        }
    }

    /// The guest added RX buffers: move the backlog into them.
    pub fn flush_backlog(&self) {
        let mut rx = lock(&self.rx);
        self.flush_locked(&mut rx);
        self.signal_locked(&rx);
    }

    /// Signals the guest if RX buffers were used since the last signal
    /// (and its notification suppression asks for one).
    pub fn signal_if_due(&self) {
        if !self.signal_due.load(Ordering::Acquire) {
            return;
        }
        let rx = lock(&self.rx);
        self.signal_locked(&rx);
    }

    fn signal_locked(&self, rx: &RxSide) {
        if !self.signal_due.swap(false, Ordering::AcqRel) {
            return;
        }
        let Some(vring) = &rx.vring else { return };
        let mut state = vring.get_mut();
        if matches!(state.needs_notification(), Ok(true)) {
            let _ = state.signal_used_queue();
        }
    }

    fn flush_locked(&self, rx: &mut RxSide) {
        while let Some((f, hdr)) = rx.backlog.pop_front() {
            match self.put_locked(rx, &f, hdr) {
                Ok(true) => {}
                Ok(false) => {
                    rx.backlog.push_front((f, hdr));
                    return;
                }
                Err(r) => self.metrics.dropped(r),
            }
        }
    }

    /// Copies one frame into the guest's next RX buffer, or (MRG_RXBUF)
    /// as many buffers as it takes, `num_buffers` saying how many.
    /// `Ok(false)` when there are not enough (nothing is taken then, and
    /// notifications are re-enabled, so the guest's next refill kicks us).
    fn put_locked(&self, rx: &RxSide, frame: &[u8], hdr: VnetHdr) -> Result<bool, DropReason> {
        let (Some(vring), Some(mem)) = (&rx.vring, &rx.mem) else {
            return Ok(false);
        };
        let mem = mem.memory();
        let mut state = vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            return Ok(false);
        }
        let hdr_len = self.hdr_len();
        let mergeable = self.mergeable();
        let need = (hdr_len + frame.len()) as u64;
        let size = state.get_queue().size();
        let start = state.get_queue().next_avail();
        // Chains taken for this frame: head, descriptors, complete.
        let mut chains: Vec<(u16, Vec<frame::Desc>, bool)> = Vec::new();
        let mut room = 0u64;
        let mut retried = false;
        while chains.is_empty() || (mergeable && room < need) {
            let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) else {
                // With EVENT_IDX this sets avail_event to where we stand;
                // true when buffers were added meanwhile (look again, or
                // the guest's kick for them has already been spent).
                if !retried && matches!(state.enable_notification(), Ok(true)) {
                    retried = true;
                    continue;
                }
                // Not enough for the whole frame: give back what was taken.
                state.get_queue_mut().set_next_avail(start);
                return Ok(false);
            };
            let head = chain.head_index();
            if head >= size {
                // No descriptor to return it with; the others go back used
                // and empty.
                for (h, _, _) in &chains {
                    let _ = state.add_used(*h, 0);
                }
                self.signal_due.store(true, Ordering::Release);
                return Err(DropReason::RxChain);
            }
            let mut complete = true;
            let descs: Vec<frame::Desc> = chain
                .take(frame::MAX_TX_DESCS)
                .map(|d| {
                    complete = !d.has_next();
                    frame::Desc {
                        addr: d.addr().0,
                        len: d.len(),
                        write_only: d.is_write_only(),
                    }
                })
                .collect();
            room += descs.iter().map(|d| u64::from(d.len)).sum::<u64>();
            chains.push((head, descs, complete));
        }
        // Checked before anything is written: every chain complete and
        // device-writable, and (one buffer without MRG_RXBUF) big enough.
        let usable = chains
            .iter()
            .all(|(_, d, complete)| *complete && d.iter().all(|d| d.write_only));
        if !usable || room < need {
            for (head, _, _) in &chains {
                if let Err(e) = state.add_used(*head, 0) {
                    warn!("port '{}': rx add_used({head}): {e}", self.name);
                }
            }
            self.signal_due.store(true, Ordering::Release);
            return Err(DropReason::RxChain);
        }
        let num_buffers = if mergeable {
            u16::try_from(chains.len()).map_err(|_| DropReason::RxChain)?
        } else {
            1
        };
        let hdr = frame::rx_header(hdr_len, VnetHdr { num_buffers, ..hdr });
        let header = hdr.get(..hdr_len).unwrap_or(&hdr);
        let mut parts = [header, frame];
        let mut result = Ok(true);
        for (head, descs, complete) in &chains {
            let written = if result.is_ok() {
                write_rx_part(descs, *complete, &mut parts, |addr, data| {
                    mem.write_slice(data, GuestAddress(addr)).map_err(|_| ())
                })
            } else {
                Ok(0)
            };
            // A buffer that fails is returned empty: the guest sees a short
            // frame and drops it; the frame is counted as dropped here.
            let used = written.unwrap_or_else(|r| {
                result = Err(r);
                0
            });
            if let Err(e) = state.add_used(*head, used) {
                warn!("port '{}': rx add_used({head}): {e}", self.name);
            }
        }
        if result.is_ok() && parts.iter().any(|p| !p.is_empty()) {
            result = Err(DropReason::RxChain);
        }
        // Signalled once per burst by `signal_if_due`.
        self.signal_due.store(true, Ordering::Release);
        if result.is_ok() {
            self.metrics.tx_packets.inc();
            self.metrics.tx_bytes.inc_by(frame.len() as u64);
        }
        result
    }
}

/// Writes `header` then `frame` into the writable descriptors of an RX
/// chain; returns the bytes written. Refuses chains that loop, hold a
/// device-readable descriptor, or are too small for the frame.
pub fn write_rx<F>(
    descs: &[frame::Desc],
    complete: bool,
    header: &[u8],
    frame: &[u8],
    write: F,
) -> Result<u32, DropReason>
where
    F: FnMut(u64, &[u8]) -> Result<(), ()>,
{
    let room: u64 = descs.iter().map(|d| u64::from(d.len)).sum();
    if room < (header.len() + frame.len()) as u64 {
        return Err(DropReason::RxChain);
    }
    let mut parts = [header, frame];
    write_rx_part(descs, complete, &mut parts, write)
}

/// Writes as much of `parts` (in order) as fits into the writable
/// descriptors of one RX chain, advancing `parts` past what was written;
/// returns the bytes written. Refuses chains that loop or hold a
/// device-readable descriptor (writing nothing).
pub fn write_rx_part<F>(
    descs: &[frame::Desc],
    complete: bool,
    parts: &mut [&[u8]; 2],
    mut write: F,
) -> Result<u32, DropReason>
where
    F: FnMut(u64, &[u8]) -> Result<(), ()>,
{
    if !complete || descs.is_empty() || descs.iter().any(|d| !d.write_only) {
        return Err(DropReason::RxChain);
    }
    let mut done = 0usize;
    for d in descs {
        let mut addr = d.addr;
        let mut left = d.len as usize;
        for p in parts.iter_mut() {
            if left == 0 {
                break;
            }
            let n = p.len().min(left);
            if n == 0 {
                continue;
            }
            write(addr, &p[..n]).map_err(|()| DropReason::RxChain)?;
            *p = &p[n..];
            addr = addr.wrapping_add(n as u64);
            left -= n;
            done += n;
        }
        if parts.iter().all(|p| p.is_empty()) {
            break;
        }
    }
    u32::try_from(done).map_err(|_| DropReason::RxChain)
}

/// The switch: its ports and the MAC table.
pub struct Switch {
    pub name: String,
    ports: Vec<Arc<Port>>,
    table: Mutex<MacTable>,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("name", &self.name)
            .field("ports", &self.ports)
            .finish()
    }
}

impl Switch {
    pub fn new(name: String, ports: Vec<Arc<Port>>, aging: Duration) -> Self {
        Self {
            name,
            ports,
            table: Mutex::new(MacTable::new(aging)),
        }
    }

    pub fn ports(&self) -> &[Arc<Port>] {
        &self.ports
    }

    pub fn port(&self, id: usize) -> Option<&Arc<Port>> {
        self.ports.get(id)
    }

    /// Signals every port that got frames since its last signal. Whoever
    /// calls [`Switch::ingress`] calls this after its burst.
    pub fn signal_due(&self) {
        for p in &self.ports {
            p.signal_if_due();
        }
    }

    /// A frame (Ethernet, validated for length by the caller) entered the
    /// switch on port `from`. The destinations are signalled by the next
    /// [`Switch::signal_due`].
    pub fn ingress(&self, from: usize, frame: &[u8]) {
        self.ingress_packet(from, frame, &Meta::default());
    }

    /// [`Switch::ingress`] for a frame that asks for offloads (validated
    /// by [`offload::parse_tx`]).
    pub fn ingress_packet(&self, from: usize, frame: &[u8], meta: &Meta) {
        let Some(src) = self.ports.get(from) else {
            return;
        };
        if !src.admit(frame.len()) {
            src.metrics.dropped(DropReason::RateLimited);
            return;
        }
        src.metrics.rx_packets.inc();
        src.metrics.rx_bytes.inc_by(frame.len() as u64);
        let now = Instant::now();
        let (decision, learned, aged) = {
            let mut t = lock(&self.table);
            let aged = t.sweep(now);
            let (d, l) = decide(&mut t, from, frame, now);
            (d, l, aged)
        };
        if learned != Learned::Nothing || !aged.is_empty() {
            self.account(from, learned, frame, &aged);
        }
        match decision {
            Decision::Unicast(to) => {
                if let Some(p) = self.ports.get(to) {
                    p.deliver(frame, meta);
                }
            }
            Decision::Flood => {
                src.metrics.flooded.inc();
                for p in self.ports.iter().filter(|p| p.id != from) {
                    p.deliver(frame, meta);
                }
            }
            Decision::SamePort => src.metrics.dropped(DropReason::SamePort),
        }
    }

    fn account(&self, from: usize, learned: Learned, frame: &[u8], aged: &[(frame::Mac, usize)]) {
        let mac = frame::src_mac(frame);
        if let (Some(mac), Some(p)) = (mac, self.ports.get(from)) {
            if learned != Learned::Nothing {
                p.metrics.mac_learned(&mac);
            }
            if let Learned::Moved { from: old } = learned {
                if let Some(o) = self.ports.get(old) {
                    o.metrics.mac_gone(&mac);
                }
            }
        }
        for (m, p) in aged {
            if let Some(p) = self.ports.get(*p) {
                p.metrics.mac_gone(m);
            }
        }
        let t = lock(&self.table);
        for p in &self.ports {
            p.metrics.learned.set(t.count(p.id) as i64);
        }
    }

    /// Forgets what was learned on `port` (its guest disconnected or was
    /// reset).
    pub fn forget(&self, port: usize) {
        let gone = lock(&self.table).forget_port(port);
        if let Some(p) = self.ports.get(port) {
            for m in &gone {
                p.metrics.mac_gone(m);
            }
            p.metrics.learned.set(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(addr: u64, len: u32) -> frame::Desc {
        frame::Desc {
            addr,
            len,
            write_only: true,
        }
    }

    #[test]
    fn rx_chains_are_filled_in_order() {
        let mut mem = vec![0u8; 256];
        let mut writer = |a: u64, d: &[u8]| {
            let a = a as usize;
            mem.get_mut(a..a + d.len()).ok_or(())?.copy_from_slice(d);
            Ok(())
        };
        let n = write_rx(
            &[w(0, 5), w(100, 50)],
            true,
            &[1; 12],
            &[2; 20],
            &mut writer,
        )
        .expect("fits");
        assert_eq!(n, 32);
        assert_eq!(&mem[0..5], &[1; 5]);
        assert_eq!(&mem[100..107], &[1; 7]);
        assert_eq!(&mem[107..127], &[2; 20]);
        assert_eq!(mem[127], 0);
        let too_small = write_rx(&[w(0, 20)], true, &[1; 12], &[2; 20], |_, _| Ok(()));
        assert_eq!(too_small, Err(DropReason::RxChain));
        let readable = frame::Desc {
            write_only: false,
            ..w(0, 100)
        };
        assert_eq!(
            write_rx(&[readable], true, &[1; 12], &[2; 20], |_, _| Ok(())),
            Err(DropReason::RxChain)
        );
        assert_eq!(
            write_rx(&[w(0, 100)], false, &[1; 12], &[2; 20], |_, _| Ok(())),
            Err(DropReason::RxChain)
        );
    }

    #[test]
    fn a_frame_spans_merged_buffers_in_order() {
        let mut mem = vec![0u8; 256];
        let frame: Vec<u8> = (0..40).collect();
        let mut parts: [&[u8]; 2] = [&[0xee; 12], &frame];
        let mut writer = |a: u64, d: &[u8]| {
            let a = a as usize;
            mem.get_mut(a..a + d.len()).ok_or(())?.copy_from_slice(d);
            Ok(())
        };
        // Three 20-byte buffers: 20 + 20 + 12.
        let n: Vec<u32> = [0u64, 100, 200]
            .iter()
            .map(|&a| write_rx_part(&[w(a, 20)], true, &mut parts, &mut writer).expect("fits"))
            .collect();
        assert_eq!(n, vec![20, 20, 12]);
        assert!(parts.iter().all(|p| p.is_empty()));
        assert_eq!(&mem[0..12], &[0xee; 12]);
        assert_eq!(&mem[12..20], &frame[..8]);
        assert_eq!(&mem[100..120], &frame[8..28]);
        assert_eq!(&mem[200..212], &frame[28..]);
        assert_eq!(mem[212], 0);
        // A readable descriptor takes nothing.
        let mut parts: [&[u8]; 2] = [&[1; 12], &frame];
        let readable = frame::Desc {
            write_only: false,
            ..w(0, 100)
        };
        assert_eq!(
            write_rx_part(&[readable], true, &mut parts, |_, _| Ok(())),
            Err(DropReason::RxChain)
        );
        assert_eq!(parts[1].len(), 40);
    }
}
