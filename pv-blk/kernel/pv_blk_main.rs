// SPDX-License-Identifier: GPL-2.0
//! `pv_blk`: the pvdrivers virtio-blk frontend as a Linux blk-mq driver, on
//! the shared `no_std` block core (`pv-blk`), the validated virtqueue
//! (`pv-virtq`) and our virtio-pci transport (`pv-kernel/virtio-pci`),
//! linked into this module as objects of their own (the harness's composite
//! build, tests/src/kernel/extmod.rs).
//!
//! Binding: only the device whose PCI id (`bus << 8 | devfn`) is the
//! `pci_dev_id` parameter; every other disk stays with the C `virtio_pci`.
//! Unbind or `rmmod` removes the disk (blk-mq waits for every request in
//! flight), resets the device, and it can be bound to `virtio-pci` again.
//!
//! Requests: blk-mq's `queue_rq` must not sleep, and the core sits behind a
//! sleeping mutex (it allocates, with `GFP_KERNEL`). So `queue_rq` only
//! appends the request to a spinlocked list and kicks the worker; the
//! worker (a work item, `pv_virtio_pci::Tick`) and the threaded interrupt
//! handler both run `service`: end what the device completed, submit what
//! waits, re-enable interrupts. A full queue keeps the rest waiting until
//! completions free room. The worker also runs every [`TICK_MS`], so a lost
//! interrupt delays requests by one period instead of hanging them.
//!
//! The device is untrusted (the core validates every completion): a device
//! fault resets it; requests it held end with an I/O error, new ones go to
//! the fresh queues; a device that will not come back fails every request.
//!
//! 7.3's Rust block layer sets no queue limits beyond the block sizes; the
//! C half (`pv_blk_rq.c`) sets the rest (a volatile write cache when the
//! device offers FLUSH, so blk-mq sends flushes; discard; write-zeroes; the
//! device's segment limit), reads a request's operation, position and
//! segments, and ends a request with an error.

use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, Ordering};

use alloc::collections::VecDeque;
use kernel::block::mq::{self, gen_disk::GenDisk, Operations, TagSet};
use kernel::device::Core;
use kernel::irq::{self, IrqReturn, ThreadedHandler, ThreadedRegistration};
use kernel::pci::{self, IrqType, IrqTypes};
use kernel::prelude::*;
use kernel::sync::aref::ARef;
use kernel::sync::{Arc, ArcBorrow, Mutex, SpinLock};
use pv_blk::virtio::{VirtioBlk, VirtioBlkConfig};
use pv_blk::{BlkError, BlockFrontend, IoBuf, Op, Token, SECTOR_SIZE};
use pv_virtio_pci::{KernelHal, PciTransport, Tick};
use virtio_drivers::transport::Transport as _;

/// Period of the worker's fallback run.
const TICK_MS: u32 = 250;
/// Most rounds of one `service` call (each: complete, submit, re-arm).
const SERVICE_ROUNDS: usize = 16;
/// Most single-page segments one request may have (blk-mq's default
/// limits keep requests far below: 255 sectors, 128 segments).
const MAX_SEGS: usize = 256;

/// `pv_blk_rq.c`'s operation codes.
const RQ_READ: u32 = 0;
const RQ_WRITE: u32 = 1;
const RQ_FLUSH: u32 = 2;
const RQ_DISCARD: u32 = 3;
const RQ_WRITE_ZEROES: u32 = 4;

/// One data segment of a request (`struct pv_seg`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Seg {
    ptr: *mut u8,
    len: u32,
}

extern "C" {
    // `struct request *` and `struct blk_mq_tag_set *`, as `void *`
    // (their bindgen types hold zero-sized lock keys, not FFI-safe).
    fn pv_rq_op(rq: *mut c_void) -> u32;
    fn pv_rq_sector(rq: *mut c_void) -> u64;
    fn pv_rq_bytes(rq: *mut c_void) -> u32;
    fn pv_rq_segments(rq: *mut c_void, segs: *mut Seg, max: u32) -> u32;
    fn pv_rq_end(rq: *mut c_void, err: i32);
    fn pv_blk_set_limits(
        set: *mut c_void,
        depth: u32,
        write_cache: bool,
        max_discard: u32,
        max_write_zeroes: u32,
        max_segments: u32,
    ) -> i32;
}

type Rq = ARef<mq::Request<PvBlkOps>>;
type Front<'a> = VirtioBlk<KernelHal, PciTransport<'a>>;

fn raw(rq: &Rq) -> *mut c_void {
    // `Request` is `repr(transparent)` over `Opaque<struct request>`.
    core::ptr::from_ref::<mq::Request<PvBlkOps>>(rq).cast_mut().cast()
}

/// Ends `rq` with `err` (a negative errno), or successfully on `Ok`.
fn end(rq: Rq, res: Result<(), Error>) {
    let err = match res {
        Ok(()) => match mq::Request::end_ok(rq) {
            Ok(()) => return,
            // Someone else holds a reference: end it as failed below.
            Err(rq) => return end(rq, Err(EIO)),
        },
        Err(e) => e.to_errno(),
    };
    let p = ARef::into_raw(rq);
    // SAFETY: the request was started by blk-mq's `queue_rq` and handed to
    // us; we give up our reference and end it exactly once (its Rust
    // refcount is reset by the next `queue_rq` of its tag).
    unsafe { pv_rq_end(p.as_ptr().cast(), err) };
}

/// The errno a failed request ends with.
fn errno(e: BlkError) -> Error {
    match e {
        BlkError::Unsupported(_) | BlkError::DeviceUnsupported(_) => EOPNOTSUPP,
        _ => EIO,
    }
}

/// What `queue_rq` shares with the worker: requests handed over, and the
/// worker to kick.
#[pin_data]
struct Queue {
    #[pin]
    pending: SpinLock<KVec<Rq>>,
    /// The worker's `Tick` item (null before it runs and after it stops).
    kick: AtomicPtr<c_void>,
}

impl Queue {
    fn kick(&self) {
        let t = self.kick.load(Ordering::Acquire);
        if !t.is_null() {
            // SAFETY: a non-null value is the live Tick of the driver data,
            // cleared before that Tick is dropped (and the disk, the only
            // caller, is removed before both).
            unsafe { Tick::kick_raw(t) };
        }
    }
}

/// The frontend and the requests it holds, under the mutex.
struct Shared<'a> {
    front: Front<'a>,
    /// Requests in flight, by token slot (`queue * stride + head`).
    inflight: KVec<Option<Rq>>,
    stride: usize,
    /// Taken from `Queue::pending`, not yet accepted by the device.
    waiting: VecDeque<Rq>,
    segs: KVec<Seg>,
    bufs: KVec<IoBuf>,
    /// The device would not come back from a reset: every request fails.
    dead: bool,
}

// SAFETY: the raw pointers inside (queue memory, segment addresses of the
// requests we hold) name memory this value owns or the requests it holds,
// not memory tied to a thread; it is only used under the mutex below.
unsafe impl Send for Shared<'_> {}

fn slot(stride: usize, t: Token) -> usize {
    let raw = t.raw() as usize;
    (raw >> 16) * stride + (raw & 0xffff)
}

impl Shared<'_> {
    /// Ends every completed request; a device fault resets the device.
    /// Returns how many ended.
    fn complete(&mut self) -> usize {
        let Shared {
            front,
            inflight,
            stride,
            ..
        } = self;
        let stride = *stride;
        let mut n = 0;
        let mut finish = |t: Token, r: Result<usize, BlkError>| {
            if let Some(rq) = inflight.get_mut(slot(stride, t)).and_then(Option::take) {
                end(rq, r.map(|_| ()).map_err(errno));
                n += 1;
            }
        };
        if let Err(e) = front.poll_completions(&mut finish) {
            pr_err!("pv_blk: device fault {:?}; resetting\n", e);
            if let Err(e) = front.reset(&mut finish) {
                pr_err!("pv_blk: reset failed {:?}; failing every request\n", e);
                self.dead = true;
            }
        }
        if self.dead {
            for rq in self.inflight.iter_mut().filter_map(Option::take) {
                end(rq, Err(EIO));
            }
        }
        n
    }

    /// Offers `rq` to the device; gives it back when the queue is full.
    fn submit(&mut self, rq: Rq) -> Result<(), Rq> {
        if self.dead {
            end(rq, Err(EIO));
            return Ok(());
        }
        let r = raw(&rq);
        // SAFETY: `r` is a started request we hold.
        let (op, sector, bytes) = unsafe { (pv_rq_op(r), pv_rq_sector(r), pv_rq_bytes(r)) };
        let sectors = bytes / SECTOR_SIZE as u32;
        let op = match op {
            RQ_READ => Op::Read,
            RQ_WRITE => Op::Write,
            RQ_FLUSH => Op::Flush,
            RQ_DISCARD => Op::Discard {
                sectors,
                secure: false,
            },
            RQ_WRITE_ZEROES => Op::WriteZeroes {
                sectors,
                unmap: false,
            },
            _ => {
                end(rq, Err(EOPNOTSUPP));
                return Ok(());
            }
        };
        self.bufs.clear();
        if matches!(op, Op::Read | Op::Write) {
            // SAFETY: `segs` has room for `MAX_SEGS` entries; the C side
            // writes at most that many.
            let n = unsafe { pv_rq_segments(r, self.segs.as_mut_ptr(), MAX_SEGS as u32) } as usize;
            let Some(segs) = self.segs.get(..n) else {
                end(rq, Err(EIO));
                return Ok(());
            };
            // Virtually contiguous in the direct map is physically
            // contiguous: one buffer.
            for s in segs {
                let Some(p) = NonNull::new(s.ptr) else {
                    end(rq, Err(EIO));
                    return Ok(());
                };
                if let Some(last) = self.bufs.last_mut() {
                    if last.ptr.as_ptr().wrapping_add(last.len) == p.as_ptr() {
                        last.len += s.len as usize;
                        continue;
                    }
                }
                if self.bufs.push(IoBuf::new(p, s.len as usize), GFP_KERNEL).is_err() {
                    end(rq, Err(ENOMEM));
                    return Ok(());
                }
            }
        }
        let req = pv_blk::Request {
            op,
            sector,
            buffers: &self.bufs,
        };
        // SAFETY: the buffers are the request's data pages, which blk-mq
        // leaves to the driver until the request ends; we end it only after
        // its token is delivered (`complete`), by a reset, or never
        // submitted (here, on error).
        match unsafe { self.front.submit(&req) } {
            Ok(t) => {
                match self.inflight.get_mut(slot(self.stride, t)) {
                    Some(s) => *s = Some(rq),
                    // A token outside the table is the core's bug: fail
                    // the request rather than lose it (the device still
                    // completes it, into a slot nobody reads).
                    None => end(rq, Err(EIO)),
                }
                Ok(())
            }
            Err(BlkError::QueueFull) => Err(rq),
            Err(e) => {
                end(rq, Err(errno(e)));
                Ok(())
            }
        }
    }

    /// Submits waiting requests in order until the device's queue is full.
    /// Returns how many went in.
    fn submit_waiting(&mut self, queue: &Queue) -> usize {
        let taken = core::mem::take(&mut *queue.pending.lock());
        for rq in taken {
            self.waiting.push_back(rq);
        }
        let mut n = 0;
        while let Some(rq) = self.waiting.pop_front() {
            match self.submit(rq) {
                Ok(()) => n += 1,
                Err(rq) => {
                    self.waiting.push_front(rq);
                    break;
                }
            }
        }
        n
    }
}

#[pin_data]
struct BlkIrq<'a> {
    #[pin]
    shared: Mutex<Shared<'a>>,
    queue: Arc<Queue>,
}

impl BlkIrq<'_> {
    /// Complete, submit, re-arm interrupts; again while the device already
    /// has more (bounded: the worker's next run continues).
    fn service(&self) {
        let mut g = self.shared.lock();
        for _ in 0..SERVICE_ROUNDS {
            let done = g.complete();
            let sent = g.submit_waiting(&self.queue);
            // An error is a fault the next `complete` resets.
            let more = g.front.prepare_wait().unwrap_or(true);
            if !more && done == 0 && sent == 0 {
                break;
            }
        }
    }
}

impl ThreadedHandler for BlkIrq<'_> {
    fn handle_threaded(&self) -> IrqReturn {
        let isr = self.shared.lock().front.transport_mut().ack_interrupt();
        if isr.is_empty() {
            return IrqReturn::None;
        }
        self.service();
        IrqReturn::Handled
    }
}

/// [`Tick`]'s call: `ctx` is the registered [`BlkIrq`].
unsafe extern "C" fn blk_tick(ctx: *const c_void) {
    // SAFETY: `ctx` is the handler inside the pinned `irq` registration of
    // the driver data; the `Tick` holding this call is dropped before it.
    let h = unsafe { &*ctx.cast::<BlkIrq<'_>>() };
    h.service();
}

struct PvBlkOps;

#[vtable]
impl Operations for PvBlkOps {
    type QueueData = Arc<Queue>;

    fn queue_rq(queue: ArcBorrow<'_, Queue>, rq: Rq, _is_last: bool) -> Result {
        // On failure the request is dropped here and blk-mq requeues it
        // (ENOMEM is BLK_STS_RESOURCE).
        queue.pending.lock().push(rq, GFP_ATOMIC)?;
        queue.kick();
        Ok(())
    }

    fn commit_rqs(queue: ArcBorrow<'_, Queue>) {
        queue.kick();
    }

    fn complete(rq: Rq) {
        // Requests are ended by the worker directly, never through
        // `blk_mq_complete_request`.
        end(rq, Ok(()));
    }
}

/// The disk, movable to whichever thread unbinds the driver.
struct Disk {
    _disk: GenDisk<PvBlkOps>,
}

// SAFETY: nothing uses the disk or its tag set through this value but its
// drop (`del_gendisk`, then freeing the tag set), which the block layer
// allows from any thread; requests reach the driver through blk-mq, not
// through this value. (7.3's `TagSet` is not marked `Send`/`Sync`.)
unsafe impl Send for Disk {}

#[pin_data]
struct BlkData<'bound> {
    /// Dropped first: removing the disk waits for every request, which the
    /// worker and the handler below still complete.
    disk: Disk,
    /// Then no worker run.
    tick: Tick,
    /// Then no handler; the frontend (inside) resets the device.
    #[pin]
    irq: ThreadedRegistration<'bound, BlkIrq<'bound>>,
    vectors: Pin<KBox<pci::IrqVectorRegistration<'bound>>>,
    queue: Arc<Queue>,
}

struct PvBlkDriver;

kernel::pci_device_table!(
    PCI_TABLE,
    <PvBlkDriver as pci::Driver>::IdInfo,
    [
        (pci::DeviceId::from_id(pci::Vendor::REDHAT_QUMRANET, 0x1001), ()),
        (pci::DeviceId::from_id(pci::Vendor::REDHAT_QUMRANET, 0x1042), ())
    ]
);

impl pci::Driver for PvBlkDriver {
    type IdInfo = ();
    type Data<'bound> = BlkData<'bound>;
    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        let wanted = module_parameters::pci_dev_id.value();
        try_pin_init!(BlkData {
            vectors: {
                if u32::from(pdev.dev_id()) != wanted {
                    return Err(ENODEV);
                }
                pdev.enable_device_mem()?;
                pdev.set_master();
                KBox::pin(pdev.alloc_irq_vectors(1, 1, IrqTypes::default().with(IrqType::Intx))?, GFP_KERNEL)?
            },
            queue: Arc::pin_init(
                pin_init!(Queue {
                    pending <- kernel::new_spinlock!(KVec::new()),
                    kick: AtomicPtr::new(core::ptr::null_mut()),
                }),
                GFP_KERNEL,
            )?,
            irq <- {
                let transport = PciTransport::new(pdev, c"pv_blk")?;
                let cfg = VirtioBlkConfig::default();
                let front = Front::new(transport, cfg).map_err(|e| {
                    pr_err!("pv_blk: device refused: {:?}\n", e);
                    EIO
                })?;
                // Every queue has at most `queue_size` entries, so a head
                // is below it.
                let stride = usize::from(cfg.queue_size);
                let mut inflight = KVec::new();
                for _ in 0..stride * front.queue_count() {
                    inflight.push(None, GFP_KERNEL)?;
                }
                let segs = KVec::from_elem(
                    Seg {
                        ptr: core::ptr::null_mut(),
                        len: 0,
                    },
                    MAX_SEGS,
                    GFP_KERNEL,
                )?;
                let shared = Shared {
                    front,
                    inflight,
                    stride,
                    waiting: VecDeque::new(),
                    segs,
                    bufs: KVec::with_capacity(MAX_SEGS, GFP_KERNEL)?,
                    dead: false,
                };
                // SAFETY: the registration lives in `vectors`, a pinned box
                // dropped after `irq` (field order), so the request outlives
                // no vector.
                let vectors: &'bound pci::IrqVectorRegistration<'bound> =
                    unsafe { &*core::ptr::from_ref(&**vectors) };
                let request = vectors.index(0)?.into();
                let for_irq = queue.clone();
                // SAFETY: the registration is dropped with the driver data.
                unsafe {
                    ThreadedRegistration::new(
                        request,
                        irq::Flags::SHARED | irq::Flags::ONESHOT,
                        c"pv_blk",
                        try_pin_init!(BlkIrq {
                            shared <- kernel::new_mutex!(shared),
                            queue: for_irq,
                        }? Error),
                    )
                }
            },
            tick: {
                let h: &BlkIrq<'_> = irq.handler();
                // SAFETY: `h` lives in the pinned `irq`, dropped after
                // `tick` (field order); `service` locks what it touches.
                let t = unsafe { Tick::start(blk_tick, core::ptr::from_ref(h).cast(), TICK_MS)? };
                queue.kick.store(t.as_raw(), Ordering::Release);
                t
            },
            disk: {
                let info = irq.handler().shared.lock().front.info();
                let depth = info.queue_depth.clamp(1, 1024);
                let tagset = Arc::pin_init(TagSet::new(1, depth, 1), GFP_KERNEL)?;
                // `TagSet` is its `blk_mq_tag_set` plus a zero-sized marker,
                // so the C struct is at its address (the C side checks the
                // depth and queue count it was made with before using it).
                let set = core::ptr::from_ref::<TagSet<PvBlkOps>>(&*tagset)
                    .cast_mut()
                    .cast::<c_void>();
                let disk = mq::gen_disk::GenDiskBuilder::new()
                    .capacity_sectors(info.capacity_sectors)
                    .logical_block_size(info.block_size)?
                    .physical_block_size(info.block_size)?
                    .rotational(false)
                    .build(fmt!("pvblk0"), tagset, queue.clone())?;
                let f = info.features;
                let max = if info.max_discard_sectors == 0 {
                    u32::MAX >> 9
                } else {
                    info.max_discard_sectors
                };
                // SAFETY: `set` is the live tag set the disk holds (`disk`
                // keeps its `Arc`); probe runs before any other user of
                // the limits.
                kernel::error::to_result(unsafe {
                    pv_blk_set_limits(
                        set,
                        depth,
                        f.flush,
                        if f.discard { max } else { 0 },
                        if f.write_zeroes { max } else { 0 },
                        info.max_segments,
                    )
                })?;
                dev_info!(
                    pdev,
                    "pv_blk: pvblk0: {} sectors of 512 bytes, block size {}, {} queue(s), depth {}, {:?}\n",
                    info.capacity_sectors,
                    info.block_size,
                    info.queues,
                    depth,
                    info.features
                );
                Disk { _disk: disk }
            },
        }? Error)
    }
}

kernel::module_pci_driver! {
    type: PvBlkDriver,
    name: "pv_blk",
    authors: ["pvdrivers"],
    description: "pvdrivers virtio-blk frontend on the shared Rust block core",
    license: "GPL",
    params: {
        pci_dev_id: u32 {
            default: 0xffff_ffff,
            description: "PCI id (bus << 8 | devfn) of the one disk to bind",
        },
    },
}
