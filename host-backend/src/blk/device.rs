//! The `VhostUserBackend` implementation for a disk.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use log::{error, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VringT};
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueT;
use vm_memory::bitmap::Bitmap;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryLoadGuard,
    Permissions, VolatileSlice,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::disk::{Disk, NoWait};
use super::fault::Faults;
use super::handover::{Claim, Ownership};
use super::io::{lock, IoMode, IoPool, Window};
use super::metrics::{BlkOp, DiskMetrics};
use super::request::{self, Desc, Limits, Op, RequestError, S_IOERR, S_OK};
use crate::dirty_log::{self, DirtyBitmap, DirtySlice, LoggedMemory};

/// Guest memory with QEMU's dirty log behind every region (see
/// [`GuestIovecs`], the `LOG_SHMFD` protocol feature and
/// [`crate::dirty_log`]).
type Mem = LoggedMemory;
/// A vring over [`Mem`] (the framework's default is memory without a log).
type VringRwLock = vhost_user_backend::VringRwLock<GuestMemoryAtomic<Mem>>;

/// Log target of the lines that say where requests sit in the ring: at
/// info, one line per queue when a connection starts it (`queue Q started
/// at ring index B: N request(s) waiting`); at trace, one line per request
/// taken (`took the request at ring index I`). After QEMU reconnects to a
/// restarted daemon it restarts each queue at its used index, so a request
/// a dead daemon took (its last `took` index >= the next start index B)
/// had not completed, and is taken again by the new one. Selected with
/// e.g. `--log-level info,pvbackend::blk::ring=trace`.
pub const RING_LOG: &str = "pvbackend::blk::ring";

/// Most bytes per data segment the device accepts (`size_max`).
const SIZE_MAX: u32 = 1 << 20;
/// Largest discard / write-zeroes range in sectors (4 GiB - 512).
const MAX_DWZ_SECTORS: u32 = (u32::MAX >> 9) & !7;
/// Ranges per discard / write-zeroes request.
const MAX_DWZ_SEGMENTS: u32 = 16;

/// Static parameters of one device.
#[derive(Debug, Clone)]
pub struct BlkParams {
    pub num_queues: u16,
    pub queue_size: u16,
    /// GET_ID string (at most 20 bytes are used).
    pub serial: String,
    /// After a queue runs dry, keep polling it this long (with driver
    /// notifications off) before going back to sleep on the kick eventfd:
    /// a request arriving within the window is picked up without a kick
    /// and without waking a sleeping thread. 0 disables polling.
    pub poll_us: u32,
    /// Where requests execute (see [`super::io`]).
    pub io_mode: IoMode,
    /// How long GET_VRING_BASE waits for the queue's requests still in the
    /// disk (see `stop_vring`). Past it the device is reset: QEMU's stop
    /// goes on, and the next owner of the disk redoes those requests.
    pub stop_timeout: Duration,
    /// Per queue: its worker's liveness for the systemd watchdog
    /// ([`crate::liveness`]), busy while it handles a kick.
    pub liveness: Arc<[Arc<crate::liveness::Beat>]>,
}

struct Shared {
    disk: Arc<Disk>,
    params: BlkParams,
    id: [u8; request::ID_LEN],
    limits: Limits,
    mem: RwLock<Option<GuestMemoryAtomic<Mem>>>,
    event_idx: AtomicBool,
    /// Set when a worker panicked: the device stops processing; the
    /// connection is being dropped (a device reset), the daemon lives on.
    needs_reset: AtomicBool,
    metrics: Arc<DiskMetrics>,
    /// The disk's I/O threads (shared by its successive connections).
    pool: Arc<IoPool>,
    /// One reorder window per queue.
    windows: Vec<Window>,
    /// The connection's shutdown handle, once the daemon has it.
    conn: Mutex<Option<ShutdownHandle>>,
    /// A disconnect was asked for (possibly before `conn` was set).
    reset_requested: AtomicBool,
    /// Per queue: this connection has handled its first event (and logged
    /// where the queue started).
    started: Vec<AtomicBool>,
    /// This connection's number among the disk's connections.
    conn_id: u64,
    /// Who may run requests on the disk (see [`super::handover`]).
    ownership: Arc<Ownership>,
    /// Per queue: this connection holds the disk for the queue (claimed
    /// since the queue was last started; cleared by `stop_vring`).
    claimed: Vec<AtomicBool>,
}

/// A vhost-user-blk backend for one disk and one connection.
#[derive(Clone)]
pub struct BlkBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BlkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkBackend")
            .field("disk", &self.shared.disk.path())
            .finish()
    }
}

impl BlkBackend {
    /// The backend of connection `conn_id` to `disk`; `ownership` is the
    /// disk's, shared by all its connections (see [`super::handover`]).
    pub fn new(
        disk: Arc<Disk>,
        params: BlkParams,
        metrics: Arc<DiskMetrics>,
        pool: Arc<IoPool>,
        conn_id: u64,
        ownership: Arc<Ownership>,
    ) -> Self {
        let mut id = [0u8; request::ID_LEN];
        let n = params.serial.len().min(id.len());
        id[..n].copy_from_slice(&params.serial.as_bytes()[..n]);
        let seg_max = u32::from(params.queue_size.saturating_sub(2).max(1));
        let limits = Limits {
            capacity_sectors: disk.size() / request::SECTOR,
            seg_max,
            max_transfer: u64::from(seg_max) * u64::from(SIZE_MAX),
            max_dwz_sectors: MAX_DWZ_SECTORS,
            max_dwz_segments: MAX_DWZ_SEGMENTS,
            read_only: disk.read_only(),
        };
        let params_queues = params.num_queues;
        Self {
            shared: Arc::new(Shared {
                disk,
                params,
                id,
                limits,
                mem: RwLock::new(None),
                event_idx: AtomicBool::new(false),
                needs_reset: AtomicBool::new(false),
                metrics,
                pool,
                windows: (0..params_queues).map(|_| Window::default()).collect(),
                conn: Mutex::new(None),
                reset_requested: AtomicBool::new(false),
                started: (0..params_queues).map(|_| AtomicBool::new(false)).collect(),
                conn_id,
                ownership,
                claimed: (0..params_queues).map(|_| AtomicBool::new(false)).collect(),
            }),
        }
    }

    /// `struct virtio_blk_config` up to `write_zeroes_may_unmap` (60 bytes),
    /// little-endian as virtio 1.x requires.
    pub fn config_space(&self) -> Vec<u8> {
        let l = &self.shared.limits;
        let mut c = vec![0u8; 60];
        c[0..8].copy_from_slice(&l.capacity_sectors.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&l.seg_max.to_le_bytes());
        // geometry (16..20) unused: no VIRTIO_BLK_F_GEOMETRY.
        c[20..24].copy_from_slice(&512u32.to_le_bytes());
        // topology (24..32) unused; writeback (32) only with CONFIG_WCE.
        c[34..36].copy_from_slice(&self.shared.params.num_queues.to_le_bytes());
        c[36..40].copy_from_slice(&MAX_DWZ_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_DWZ_SEGMENTS.to_le_bytes());
        c[44..48].copy_from_slice(&8u32.to_le_bytes()); // discard_sector_alignment: 4 KiB
        c[48..52].copy_from_slice(&MAX_DWZ_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_DWZ_SEGMENTS.to_le_bytes());
        c[56] = 1; // write_zeroes_may_unmap
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

    /// The shutdown handle of the connection this backend serves: a reset
    /// (after a panic) shuts the connection down through it. A reset asked
    /// for before the handle arrived happens now.
    pub fn attach(&self, handle: ShutdownHandle) {
        *lock(&self.shared.conn) = Some(handle.clone());
        if self.shared.reset_requested.load(Ordering::Acquire) {
            handle.shutdown();
        }
    }

    /// Ends the connection: closes every reorder window first (nothing more
    /// is published into rings QEMU is about to rewind), then shuts the
    /// socket down. Used for stop and for a reset after a panic.
    pub fn disconnect(&self) {
        for w in &self.shared.windows {
            w.close();
        }
        self.shared.reset_requested.store(true, Ordering::Release);
        if let Some(h) = lock(&self.shared.conn).as_ref() {
            h.shutdown();
        }
    }

    /// The connection is being dropped (stop or reset): take nothing more.
    fn disconnecting(&self) -> bool {
        self.shared.reset_requested.load(Ordering::Acquire)
    }

    /// Waits until no request of this connection is executing any more
    /// (the pool finishes what it was given). Logs every 10 s while waiting.
    pub fn wait_idle(&self) {
        let what = format!("{}", self.shared.disk.path().display());
        for w in &self.shared.windows {
            w.wait_idle(&what, Duration::from_secs(10));
        }
    }

    /// A worker or I/O thread panicked: count it and reset the device by
    /// dropping the connection. QEMU (`reconnect=`) connects again and
    /// resubmits every request after the used index; the daemon lives on.
    fn reset_after_panic(&self, kind: &str, thread: &str) {
        self.shared.metrics.error(kind);
        self.shared.metrics.resets.inc();
        self.shared.needs_reset.store(true, Ordering::Release);
        error!(
            "{}: {thread} panicked; resetting the device (dropping the connection)",
            self.shared.disk.path().display()
        );
        self.disconnect();
    }

    /// Publishes the finished prefix of `queue`'s window after `seq`
    /// finished with used length `used`; signals the driver when asked and
    /// needed. Returns whether anything was published.
    fn complete(
        &self,
        queue: usize,
        vring: &VringRwLock,
        seq: u64,
        used: u32,
        signal: bool,
    ) -> bool {
        let Some(w) = self.shared.windows.get(queue) else {
            return false;
        };
        let m = &self.shared.metrics;
        // add_used runs under the window lock, so used entries go out in
        // ring order even when several threads finish at once.
        let n = w.complete(seq, used, |head, len| {
            // Cannot fail for a head inside the table (checked when the
            // chain was taken); if it does anyway, it is counted.
            if let Err(e) = vring.add_used(head, len) {
                m.error("add_used");
                error!(
                    "{}: queue {queue}: add_used({head}): {e}",
                    self.shared.disk.path().display()
                );
            }
        });
        if n > 0 && signal {
            self.signal(queue, vring);
        }
        n > 0
    }

    /// Interrupts the driver if EVENT_IDX (or its absence) says so.
    fn signal(&self, queue: usize, vring: &VringRwLock) {
        match vring.needs_notification() {
            Ok(true) => {
                if let Err(e) = vring.signal_used_queue() {
                    self.shared.metrics.error("signal");
                    warn!(
                        "{}: queue {queue}: signal: {e}",
                        self.shared.disk.path().display()
                    );
                } else {
                    self.shared.metrics.interrupt(queue);
                }
            }
            Ok(false) => {}
            Err(e) => {
                self.shared.metrics.error("signal");
                warn!(
                    "{}: queue {queue}: needs_notification: {e}",
                    self.shared.disk.path().display()
                );
            }
        }
    }

    /// Whether this connection may run `queue`'s requests: it holds the
    /// disk, or claims it now (see [`super::handover`]; may wait while an
    /// ended owner drains). Never called under a window lock.
    fn claim(&self, queue: usize) -> bool {
        let Some(claimed) = self.shared.claimed.get(queue) else {
            return false;
        };
        if claimed.load(Ordering::Acquire) {
            return true;
        }
        let what = format!("{}", self.shared.disk.path().display());
        match self
            .shared
            .ownership
            .claim(self.shared.conn_id, queue, &what)
        {
            Claim::Granted => {
                claimed.store(true, Ordering::Release);
                true
            }
            Claim::Refused { owner } => {
                warn!(
                    "{what}: queue {queue} of connection {} refused: connection {owner} owns the disk \
                     (a frontend resumed after handing it over); its requests fail",
                    self.shared.conn_id
                );
                false
            }
        }
    }

    fn process_queue(&self, queue: usize, vring: &VringRwLock, mem: &Arc<Mem>) -> io::Result<()> {
        let Some(window) = self.shared.windows.get(queue) else {
            return Err(io::Error::other(format!("no window for queue {queue}")));
        };
        let Some(claimed) = self.shared.claimed.get(queue) else {
            return Err(io::Error::other(format!("no claim for queue {queue}")));
        };
        // Refused this pass: its requests fail (another connection owns
        // the disk); claimed again on the next pass.
        let mut refused = false;
        let mut published = false;
        loop {
            // The pop and the window slot are taken under the window lock:
            // slots are in ring order, and a GET_VRING_BASE waiting for the
            // window to empty (stop_vring) cannot miss a request popped
            // concurrently (the queue is marked not ready before it waits,
            // and pop refuses a queue that is not ready).
            let (chain, seq, owner) = {
                let mut w = window.lock();
                if w.closed() {
                    break;
                }
                // The handover check (see [`super::handover`]): the claim
                // is read under the window lock that `stop_vring` clears
                // it under. Not held: claim the disk (without the lock:
                // the claim may wait), but only for a queue that is ready.
                // A queue stopped by GET_VRING_BASE is not ready until
                // QEMU starts it again; claiming for it would take back a
                // disk this connection just handed over.
                let owner = claimed.load(Ordering::Acquire);
                if !owner && !refused {
                    if !vring.get_ref().get_queue().ready() {
                        break;
                    }
                    drop(w);
                    refused = !self.claim(queue);
                    continue;
                }
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let queue_size = vring.get_ref().get_queue().size();
                if head >= queue_size {
                    // A driver bug or attack: the available ring names a
                    // head outside the descriptor table. There is no
                    // descriptor to return, so the entry is skipped
                    // (next_avail has moved on) and the queue keeps serving.
                    drop(w);
                    self.shared.metrics.error("bad_head");
                    warn!(
                        "{}: queue {queue}: available ring names head {head} outside a table of {queue_size}",
                        self.shared.disk.path().display()
                    );
                    continue;
                }
                let seq = w.push(head);
                // Written before the request runs, so a daemon killed while
                // it executes leaves this line behind: with the next
                // connection's start line it shows the request was taken,
                // not finished, and taken again (see `RING_LOG`).
                log::trace!(
                    target: RING_LOG,
                    "{}: queue {queue}: took the request at ring index {}",
                    self.shared.disk.path().display(),
                    vring.get_ref().get_queue().next_avail().wrapping_sub(1)
                );
                (chain, seq, owner)
            };
            // From here the request holds a window slot: a panic while it
            // is handled here must still finish the slot (after closing the
            // windows, so it is not published) or the drain would wait for
            // it forever.
            let mut counted = false;
            let run = catch_unwind(AssertUnwindSafe(|| {
                // virtio-queue's iterator ends a chain early, without an
                // error, at a loop (after queue-size or table-size steps), at
                // a next index outside the table, at a bad indirect table or
                // at the 4 GiB length limit. The last descriptor it yielded
                // then still has NEXT set: such a chain is refused as a
                // whole, never run as the prefix that happened to be read.
                let mut complete = true;
                let descs: Vec<Desc> = chain
                    .map(|d| {
                        complete = !d.has_next();
                        Desc {
                            addr: d.addr().0,
                            len: d.len(),
                            write_only: d.is_write_only(),
                        }
                    })
                    .collect();
                if !owner {
                    Some(self.refuse_not_owner(&descs, mem))
                } else if complete && !descs.is_empty() {
                    self.start(&descs, mem, queue, vring, seq, &mut counted)
                } else {
                    Some(self.refuse_broken_chain(&descs, mem))
                }
            }));
            let used = match run {
                Ok(used) => used,
                Err(_) => {
                    if counted {
                        self.shared.metrics.inflight.dec();
                    }
                    self.reset_after_panic("worker_panic", &format!("queue worker {queue}"));
                    Some(0)
                }
            };
            if let Some(used) = used {
                // Published now, signalled once for the whole batch.
                published |= self.complete(queue, vring, seq, used, false);
            }
        }
        if published {
            self.signal(queue, vring);
        }
        Ok(())
    }

    /// A request of a connection that does not own the disk (see
    /// [`super::handover`]): nothing of it reaches the disk; it completes
    /// with an I/O error when it has a status byte.
    fn refuse_not_owner(&self, descs: &[Desc], mem: &Mem) -> u32 {
        let m = &self.shared.metrics;
        m.error("not_owner");
        let parsed = request::parse(descs, &self.shared.limits, |addr, buf| {
            mem.read_slice(buf, GuestAddress(addr))
                .map_err(|_| RequestError::GuestMemory)
        });
        match parsed.status {
            Some(status_addr) => write_status(m, mem, status_addr, S_IOERR, 0),
            None => 0,
        }
    }

    /// Parses a request and runs it here or hands it to the pool. Returns
    /// the used length when it finished here, `None` when the pool has it.
    fn start(
        &self,
        descs: &[Desc],
        mem: &Arc<Mem>,
        queue: usize,
        vring: &VringRwLock,
        seq: u64,
        counted: &mut bool,
    ) -> Option<u32> {
        let m = &self.shared.metrics;
        let started = Instant::now();
        let parsed = request::parse(descs, &self.shared.limits, |addr, buf| {
            mem.read_slice(buf, GuestAddress(addr))
                .map_err(|_| RequestError::GuestMemory)
        });
        let Some(status_addr) = parsed.status else {
            m.error("dropped_chain");
            warn!(
                "{}: dropped a request without a status byte",
                self.shared.disk.path().display()
            );
            return Some(0);
        };
        let op = match parsed.op {
            Err(e) => {
                m.error(e.kind());
                log::debug!("{}: {e}", self.shared.disk.path().display());
                return Some(write_status(m, mem, status_addr, e.status(), 0));
            }
            Ok(op) => op,
        };
        m.inflight.inc();
        *counted = true;
        let offload = match (self.shared.params.io_mode, &op) {
            (_, Op::GetId { .. }) | (IoMode::Sync, _) => false,
            (IoMode::Pool, _) => true,
            (IoMode::Hybrid, Op::Read { .. } | Op::Write { .. }) => {
                if let Some(done) = self.try_nowait(&op, mem) {
                    *counted = false;
                    return Some(self.finish(op_kind(&op), started, done, mem, status_addr));
                }
                true
            }
            (IoMode::Hybrid, _) => true,
        };
        if !offload {
            let kind = op_kind(&op);
            let r = self.run_op(op, mem);
            *counted = false;
            return Some(self.finish(kind, started, r, mem, status_addr));
        }
        *counted = false;
        let this = self.clone();
        let (vring, mem) = (vring.clone(), mem.clone());
        self.shared.pool.submit(Box::new(move || {
            let kind = op_kind(&op);
            match catch_unwind(AssertUnwindSafe(|| this.run_op(op, &mem))) {
                Ok(r) => {
                    let used = this.finish(kind, started, r, &mem, status_addr);
                    this.complete(queue, &vring, seq, used, true);
                }
                Err(_) => {
                    this.shared.metrics.inflight.dec();
                    this.reset_after_panic("io_panic", "an I/O thread");
                    // Counted as finished (not published: the windows are
                    // closed) so the daemon's drain does not wait for it.
                    this.complete(queue, &vring, seq, 0, false);
                }
            }
        }));
        None
    }

    /// Ends an executed request: metrics, status byte; returns the used
    /// length (bytes written to the guest's buffers, status included).
    fn finish(
        &self,
        kind: BlkOp,
        started: Instant,
        (status, written): (u8, u32),
        mem: &Mem,
        status_addr: u64,
    ) -> u32 {
        let m = &self.shared.metrics;
        m.inflight.dec();
        m.completed(kind, started.elapsed().as_secs_f64());
        write_status(m, mem, status_addr, status, written)
    }

    /// A read or write done in this thread if it needs no blocking (hybrid
    /// mode); `None` when it must go to the pool.
    fn try_nowait(&self, op: &Op, mem: &Mem) -> Option<(u8, u32)> {
        let (offset, len, data, write) = match op {
            Op::Read { offset, len, data } => (*offset, *len, data, false),
            Op::Write { offset, len, data } => (*offset, *len, data, true),
            _ => return None,
        };
        if !write {
            self.shared.disk.faults.on_read(offset, len);
        }
        let access = if write {
            Permissions::Read
        } else {
            Permissions::Write
        };
        let io = guest_iovecs(mem, data, access)?;
        // SAFETY: the iovecs come from `get_slices` on guest memory that
        // stays mapped while `mem` is held, and `io`'s guards keep the
        // slices' pointers valid for the call; reads write into
        // guest-writable buffers (marked dirty when `io` drops), writes only
        // read theirs.
        match unsafe { self.shared.disk.try_rw_nowait(offset, &io.iovs, write) } {
            Ok(NoWait::Done) => {
                let m = &self.shared.metrics;
                if write {
                    m.written_bytes(len);
                    Some((S_OK, 0))
                } else {
                    m.read_bytes(len);
                    // len <= max_transfer, far below u32::MAX.
                    Some((S_OK, u32::try_from(len).unwrap_or(u32::MAX)))
                }
            }
            // Redone (and any error reported) by the blocking path.
            Ok(NoWait::WouldBlock) | Err(_) => None,
        }
    }

    /// Spins up to `poll_us` for the driver to make a request available.
    /// Bounded: a queue that stays idle costs at most one window per burst
    /// of requests.
    fn poll_for_work(&self, vring: &VringRwLock, mem: &Mem) -> bool {
        let budget = Duration::from_micros(u64::from(self.shared.params.poll_us));
        if budget.is_zero() {
            return false;
        }
        let start = Instant::now();
        loop {
            {
                let state = vring.get_ref();
                let q = state.get_queue();
                // Acquire: the descriptors the driver wrote before bumping
                // avail.idx are visible to the pop that follows.
                if let Ok(avail) = q.avail_idx(mem, Ordering::Acquire) {
                    if avail.0 != q.next_avail() {
                        return true;
                    }
                }
            }
            if start.elapsed() >= budget {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Logs where the connection starts `queue`: the ring index QEMU gave
    /// (SET_VRING_BASE: after a lost connection, the used index) and how
    /// many requests wait after it (left unfinished by the previous
    /// connection or posted while there was none; all redone now).
    fn log_start(&self, queue: usize, vring: &VringRwLock, mem: &Mem) {
        let state = vring.get_ref();
        let q = state.get_queue();
        let base = q.next_avail();
        match q.avail_idx(mem, Ordering::Acquire) {
            Ok(avail) => log::info!(
                target: RING_LOG,
                "{}: queue {queue} started at ring index {base}: {} request(s) waiting",
                self.shared.disk.path().display(),
                avail.0.wrapping_sub(base)
            ),
            Err(e) => warn!(
                "{}: queue {queue}: reading the available index: {e}",
                self.shared.disk.path().display()
            ),
        }
    }

    /// Completes a chain that loops or leaves its table: IOERR in its last
    /// writable byte when it has one (the guest's own memory), else a used
    /// length of 0. Nothing of it is executed.
    fn refuse_broken_chain(&self, descs: &[Desc], mem: &Mem) -> u32 {
        self.shared.metrics.error(RequestError::BrokenChain.kind());
        let Some(status) = request::last_writable_byte(descs) else {
            return 0;
        };
        match mem.write_obj(S_IOERR, GuestAddress(status)) {
            Ok(()) => 1,
            Err(_) => 0,
        }
    }

    /// Executes a validated request (blocking). Returns the status and the
    /// bytes written into the guest's data buffers.
    fn run_op(&self, op: Op, mem: &Mem) -> (u8, u32) {
        let m = &self.shared.metrics;
        let disk = &self.shared.disk;
        let io_result = |r: io::Result<()>, what: &str| match r {
            Ok(()) => S_OK,
            Err(e) => {
                m.error("io");
                error!("{}: {what} failed: {e}", disk.path().display());
                S_IOERR
            }
        };
        let faults = Faults::get();
        match op {
            Op::Read { offset, len, data } => {
                disk.faults.on_read(offset, len);
                faults.stall(offset, len);
                faults.delay();
                let Some(mut io) = guest_iovecs(mem, &data, Permissions::Write) else {
                    m.error("guest_memory");
                    return (S_IOERR, 0);
                };
                // SAFETY: the iovecs come from `get_slices` on guest memory
                // that stays mapped while `mem` (a load guard) is held, and
                // `io`'s guards keep the slices' pointers valid for the call.
                // The buffers are marked dirty when `io` drops, before the
                // status byte and the used entry are written.
                let s = io_result(unsafe { disk.read_at(offset, &mut io.iovs) }, "read");
                if s == S_OK {
                    m.read_bytes(len);
                    // len <= max_transfer, far below u32::MAX.
                    (s, u32::try_from(len).unwrap_or(u32::MAX))
                } else {
                    (s, 0)
                }
            }
            Op::Write { offset, len, data } => {
                faults.delay();
                let Some(mut io) = guest_iovecs(mem, &data, Permissions::Read) else {
                    m.error("guest_memory");
                    return (S_IOERR, 0);
                };
                // SAFETY: as for reads; pwritev only reads the buffers.
                let s = io_result(unsafe { disk.write_at(offset, &mut io.iovs) }, "write");
                if s == S_OK {
                    m.written_bytes(len);
                }
                (s, 0)
            }
            Op::Flush => {
                faults.delay();
                (io_result(disk.flush(), "flush"), 0)
            }
            Op::GetId { len, data } => {
                let mut left = &self.shared.id[..len as usize];
                for seg in data {
                    if left.is_empty() {
                        break;
                    }
                    let n = left.len().min(seg.len as usize);
                    if mem.write_slice(&left[..n], GuestAddress(seg.addr)).is_err() {
                        m.error("guest_memory");
                        return (S_IOERR, 0);
                    }
                    left = &left[n..];
                }
                (S_OK, len as u32)
            }
            Op::Discard(ranges) => {
                faults.delay();
                for r in ranges {
                    let s = io_result(
                        disk.discard(
                            r.sector * request::SECTOR,
                            u64::from(r.sectors) * request::SECTOR,
                        ),
                        "discard",
                    );
                    if s != S_OK {
                        return (s, 0);
                    }
                }
                (S_OK, 0)
            }
            Op::WriteZeroes(ranges) => {
                faults.delay();
                for r in ranges {
                    let s = io_result(
                        disk.write_zeroes(
                            r.sector * request::SECTOR,
                            u64::from(r.sectors) * request::SECTOR,
                            r.unmap,
                        ),
                        "write zeroes",
                    );
                    if s != S_OK {
                        return (s, 0);
                    }
                }
                (S_OK, 0)
            }
        }
    }
}

/// Writes the status byte; returns the used length (`written` + 1), or 0
/// when the status cannot be written.
fn write_status(m: &DiskMetrics, mem: &Mem, status_addr: u64, status: u8, written: u32) -> u32 {
    if mem.write_obj(status, GuestAddress(status_addr)).is_err() {
        m.error("guest_memory");
        return 0;
    }
    written.saturating_add(1)
}

fn op_kind(op: &Op) -> BlkOp {
    match op {
        Op::Read { .. } => BlkOp::Read,
        Op::Write { .. } => BlkOp::Write,
        Op::Flush => BlkOp::Flush,
        Op::GetId { .. } => BlkOp::GetId,
        Op::Discard(_) => BlkOp::Discard,
        Op::WriteZeroes(_) => BlkOp::WriteZeroes,
    }
}

/// Guest buffers as iovecs over the mapped guest memory, for system calls
/// that move data straight between the disk and the guest.
///
/// Data the kernel copies into guest memory through raw iovecs bypasses
/// vm-memory, so nothing marks those pages in QEMU's dirty log during a
/// migration: a page sent before a disk read landed in it would arrive
/// stale. Buffers taken for the device to write (`Permissions::Write`) are
/// therefore marked dirty when this drops: after the system call, whatever
/// it returned (a failed or short read may have written part of them), and
/// before the request's status byte and used entry are written.
struct GuestIovecs<'m> {
    iovs: Vec<libc::iovec>,
    _guards: Vec<vm_memory::volatile_memory::PtrGuardMut>,
    /// The slices the device writes into, to mark on drop (empty when it
    /// only reads them).
    written: Vec<VolatileSlice<'m, DirtySlice<'m>>>,
}

impl Drop for GuestIovecs<'_> {
    fn drop(&mut self) {
        for s in &self.written {
            s.bitmap().mark_dirty(0, s.len());
        }
    }
}

/// Turns guest segments into iovecs over the mapped guest memory. `None`
/// when a segment is not entirely inside guest RAM.
fn guest_iovecs<'m>(
    mem: &'m Mem,
    data: &[request::Segment],
    access: Permissions,
) -> Option<GuestIovecs<'m>> {
    let mut io = GuestIovecs {
        iovs: Vec::with_capacity(data.len()),
        _guards: Vec::with_capacity(data.len()),
        written: Vec::new(),
    };
    let device_writes = access == Permissions::Write;
    for seg in data {
        for slice in mem
            .get_slices(GuestAddress(seg.addr), seg.len as usize, access)
            .ok()?
        {
            let slice = slice.ok()?;
            let guard = slice.ptr_guard_mut();
            io.iovs.push(libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: slice.len(),
            });
            io._guards.push(guard);
            if device_writes {
                io.written.push(slice);
            }
        }
    }
    Some(io)
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = DirtyBitmap;
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.shared.params.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.shared.params.queue_size)
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1u64 << VIRTIO_BLK_F_SIZE_MAX)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX)
            | (1u64 << VIRTIO_BLK_F_BLK_SIZE)
            | (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_MQ)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            // Dirty logging for migration: every write into guest memory is
            // marked (vm-memory for rings, status and GET_ID bytes,
            // `GuestIovecs` for data read from the disk).
            | VhostUserVirtioFeatures::LOG_ALL.bits();
        if self.shared.disk.read_only() {
            f |= 1u64 << VIRTIO_BLK_F_RO;
        } else {
            f |= (1u64 << VIRTIO_BLK_F_DISCARD) | (1u64 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // No STATUS (see the module docs) and no INFLIGHT_SHMFD (the
        // framework does not implement it). LOG_SHMFD: QEMU hands over its
        // dirty log (SET_LOG_BASE) so guests on this disk can be saved and
        // migrated. Features acked without LOG_ALL drop the log
        // (`acked_features`), so marking costs nothing again after a
        // migration ends.
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    fn acked_features(&self, features: u64) {
        if let Some(mem) = self.memory() {
            dirty_log::apply_log_all(&mem, features);
        }
    }

    fn reset_device(&self) {
        // After a panic the connection is being dropped: stay stopped.
        if !self.shared.reset_requested.load(Ordering::Acquire) {
            self.shared.needs_reset.store(false, Ordering::Release);
        }
    }

    /// GET_VRING_BASE: the framework has marked the queue not ready (no
    /// more pops) and reads next_avail after this returns. Waiting for the
    /// window to empty makes that base cover only requests whose
    /// completions are published, as the driver expects of a stopped queue.
    ///
    /// The wait is bounded by `stop_timeout`: a request stuck in the disk
    /// must not hang QEMU's `stop` (or a migration's last step) forever.
    /// Past the deadline the device is reset: every window of the
    /// connection is closed (nothing more is published into its rings, so
    /// the stuck request is never completed by this connection), the
    /// connection is shut down and no base is answered. QEMU then takes the
    /// used index as the queue's base ("ring restore failed": last avail
    /// idx := used idx). With in-order publication (see [`super::io`]) that
    /// is exactly the first request not completed, so the next owner
    /// redoes the stuck request and those after it, and nothing is
    /// completed twice. The daemon serves the next connection only after
    /// the stuck request left the disk (`serve_disk` waits for the pool),
    /// so its late write cannot land after the redo on this daemon.
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let Some(w) = usize::try_from(queue_index)
            .ok()
            .and_then(|q| self.shared.windows.get(q))
        else {
            return Ok(());
        };
        let what = format!(
            "{}: stopping queue {queue_index}",
            self.shared.disk.path().display()
        );
        let deadline = Instant::now() + self.shared.params.stop_timeout;
        if w.wait_idle_until(&what, Duration::from_secs(10), deadline) {
            // Nothing of this queue is in the disk: the queue no longer
            // holds it, and once every queue of this connection is stopped
            // another connection may take the disk over (the handover
            // point, see [`super::handover`]).
            let _w = w.lock();
            if let Some(c) = self.shared.claimed.get(queue_index as usize) {
                c.store(false, Ordering::Release);
            }
            self.shared
                .ownership
                .stopped(self.shared.conn_id, queue_index as usize);
            return Ok(());
        }
        let running = w.lock().running();
        self.shared.metrics.error("stop_timeout");
        self.shared.metrics.resets.inc();
        error!(
            "{what}: {running} request(s) still in the disk at the stop deadline ({:?}); \
             resetting the device (the next connection redoes them)",
            self.shared.params.stop_timeout
        );
        self.disconnect();
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("queue {queue_index}: requests still in the disk at the stop deadline"),
        ))
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
        let mut slot = self
            .shared
            .mem
            .write()
            .map_err(|_| io::Error::other("memory lock poisoned"))?;
        *slot = Some(mem);
        drop(slot);
        // QEMU's vhost start begins with SET_MEM_TABLE: the device starts
        // here, and takes the disk if it may (see [`super::handover`]).
        // Refused, the message still succeeds: each queue claims again
        // before it runs a request, and fails the request if refused.
        let what = format!("{}", self.shared.disk.path().display());
        if let Claim::Refused { owner } = self.shared.ownership.start(self.shared.conn_id, &what) {
            warn!(
                "{what}: connection {} started while connection {owner} runs the disk; its requests fail until it may take the disk",
                self.shared.conn_id
            );
        }
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread per queue: a busy queue never waits for another.
        (0..self.shared.params.num_queues)
            .map(|q| 1u64 << q)
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        crate::sandbox::enter(crate::sandbox::Class::QueueWorker);
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        if self.shared.needs_reset.load(Ordering::Acquire) {
            return Ok(());
        }
        self.shared.metrics.kick(thread_id);
        let _busy = self.shared.params.liveness.get(thread_id).map(|b| b.busy());
        let vring = vrings.get(usize::from(device_event)).ok_or_else(|| {
            io::Error::other(format!(
                "event {device_event} names no queue of worker {thread_id}"
            ))
        })?;
        let Some(mem) = self.memory() else {
            return Err(io::Error::other("kick before SET_MEM_TABLE"));
        };
        // An owned snapshot: requests handed to the pool keep the memory
        // they point into mapped until they finish.
        let mem = mem.into_inner();
        // `device_event` indexes this worker's own vrings (always 0 here);
        // the queue number is the worker's: one queue per thread
        // (queues_per_thread).
        let queue = thread_id;
        if self
            .shared
            .started
            .get(queue)
            .is_some_and(|s| !s.swap(true, Ordering::AcqRel))
        {
            self.log_start(queue, vring, &mem);
        }
        let event_idx = self.shared.event_idx.load(Ordering::Acquire);
        let run = || -> io::Result<()> {
            if event_idx {
                // Process with notifications off, poll briefly, re-enable,
                // and go again if the driver added requests in between
                // (enable_notification returns true then): no lost wake-up.
                loop {
                    vring
                        .disable_notification()
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    self.process_queue(queue, vring, &mem)?;
                    // A disconnect (stop or reset) leaves requests in the
                    // ring on purpose: the next connection redoes them.
                    if self.disconnecting() {
                        break;
                    }
                    if self.poll_for_work(vring, &mem) {
                        continue;
                    }
                    if !vring
                        .enable_notification()
                        .map_err(|e| io::Error::other(e.to_string()))?
                    {
                        break;
                    }
                }
                Ok(())
            } else {
                loop {
                    self.process_queue(queue, vring, &mem)?;
                    if self.disconnecting() || !self.poll_for_work(vring, &mem) {
                        break Ok(());
                    }
                }
            }
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(r) => r,
            Err(_) => {
                self.reset_after_panic("worker_panic", &format!("queue worker {thread_id}"));
                Ok(())
            }
        }
    }
}
