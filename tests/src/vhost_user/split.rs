//! The driver side of a virtio split virtqueue (virtio 1.2 §2.7), laid out
//! in [`GuestRam`]: descriptor table, available ring (ours to write) and
//! used ring (the device's to write).
//!
//! What it trusts: nothing the device writes. It keeps its own record of
//! every chain it published (the descriptor indices it owns and how many
//! bytes the device may write into it) and never reads descriptors back.
//! Each used-ring entry is copied out once and checked: the used index may
//! not run ahead of what is outstanding, the id must name a chain that is in
//! flight, and the length may not exceed the chain's writable bytes. The
//! first violation breaks the queue ([`QueueError::is_peer_fault`]).
//!
//! What it refuses to check: what the chains say. [`SplitQueue::add`] writes
//! whatever descriptors it is given (any address, length, flags, `next`,
//! including loops and indices outside the table): that is how the tests
//! play a malicious guest.
//!
//! Notifications (§2.7.7, §2.7.10): with `VIRTIO_RING_F_EVENT_IDX` the
//! driver kicks only when the device's `avail_event` lies in the range of
//! entries just published, and asks for an interrupt by writing
//! `used_event`; without it, it kicks unless the device set
//! `VRING_USED_F_NO_NOTIFY` and never suppresses interrupts.

use std::sync::atomic::{fence, Ordering};

use super::ram::{GuestRam, RamError};

/// This descriptor continues in `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// The device writes this buffer (otherwise it reads it).
pub const VRING_DESC_F_WRITE: u16 = 2;
/// The buffer is a table of descriptors.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// Used-ring flag: the device does not want kicks.
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// Size of one descriptor.
pub const DESC_SIZE: u64 = 16;

/// A descriptor exactly as it is stored in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Descriptor {
    /// The 16 little-endian bytes of the descriptor.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// Writes a descriptor table (for indirect descriptors, or garbage) at `addr`.
pub fn write_table(ram: &GuestRam, addr: u64, table: &[Descriptor]) -> Result<(), RamError> {
    let bytes: Vec<u8> = table.iter().flat_map(|d| d.to_bytes()).collect();
    ram.write(addr, &bytes)
}

/// Where a descriptor of a chain given to [`SplitQueue::add`] continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The chain ends here (no `NEXT` flag, unless the flags say so).
    End,
    /// The descriptor at this position of the same chain (a loop when it
    /// points backwards). Sets `NEXT`.
    Chain(usize),
    /// This raw table index, whatever it is (out of range, or another
    /// chain's descriptor). Sets `NEXT`.
    Raw(u16),
}

/// One descriptor of a chain for [`SplitQueue::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainDesc {
    pub addr: u64,
    pub len: u32,
    /// Flags as written, `NEXT` added when `next` is not [`Next::End`].
    pub flags: u16,
    pub next: Next,
}

impl ChainDesc {
    /// A buffer the device reads.
    pub fn readable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            flags: 0,
            next: Next::End,
        }
    }

    /// A buffer the device writes.
    pub fn writable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            flags: VRING_DESC_F_WRITE,
            next: Next::End,
        }
    }

    /// An indirect descriptor pointing at a table of `entries` descriptors.
    pub fn indirect(table: u64, entries: u32) -> Self {
        Self {
            addr: table,
            len: entries.saturating_mul(DESC_SIZE as u32),
            flags: VRING_DESC_F_INDIRECT,
            next: Next::End,
        }
    }

    /// The same descriptor continuing at `next`.
    pub fn then(mut self, next: Next) -> Self {
        self.next = next;
        self
    }
}

/// Builds a well-formed chain: each descriptor continues with the next one.
pub fn linked(descs: &[ChainDesc]) -> Vec<ChainDesc> {
    let n = descs.len();
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let next = if i + 1 < n {
                Next::Chain(i + 1)
            } else {
                Next::End
            };
            d.then(next)
        })
        .collect()
}

/// Where the rings of a queue of `size` entries live in guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl QueueLayout {
    /// Lays the rings out from `base` (4 KiB aligned): table, available
    /// ring, then the used ring on the next 4 KiB boundary.
    pub fn at(base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + DESC_SIZE * n;
        let used = align_up(avail + 6 + 2 * n, 4096);
        Self {
            size,
            desc,
            avail,
            used,
        }
    }

    /// Bytes from `base` to the end of the used ring, rounded to 4 KiB.
    pub fn bytes(size: u16) -> u64 {
        let l = Self::at(0, size);
        align_up(l.used + 6 + 8 * u64::from(size), 4096)
    }

    fn avail_ring(&self, slot: u16) -> u64 {
        self.avail + 4 + 2 * u64::from(slot % self.size)
    }

    fn used_event(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    fn used_elem(&self, slot: u16) -> u64 {
        self.used + 4 + 8 * u64::from(slot % self.size)
    }

    fn avail_event(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size)
    }
}

/// What went wrong on a queue. The doc comment of each variant is its message.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The driver has too few free descriptors (or ring slots) for the chain.
    #[error("queue full: {needed} descriptors needed, {free} free")]
    Full { needed: usize, free: usize },
    /// The driver asked for an empty chain.
    #[error("empty chain")]
    EmptyChain,
    /// A ring access fell outside guest RAM (a layout bug of ours).
    #[error(transparent)]
    Ram(#[from] RamError),
    /// The device published more used entries than requests are in flight.
    #[error(
        "device moved used.idx from {last_used} to {used_idx} with {in_flight} requests in flight"
    )]
    UsedIndexRunaway {
        last_used: u16,
        used_idx: u16,
        in_flight: usize,
    },
    /// The device completed a descriptor id that is not the head of an in-flight chain.
    #[error("device completed id {id}, which is not an in-flight chain head")]
    UnknownId { id: u32 },
    /// The device claims to have written more bytes than the chain's writable buffers hold.
    #[error("device reports {len} bytes written into chain {id}, which has {max} writable bytes")]
    UsedLenTooLong { id: u16, len: u32, max: u32 },
    /// An earlier device fault broke this queue.
    #[error("queue broken by an earlier device fault")]
    Broken,
}

impl QueueError {
    /// True when the device (the other side) broke the protocol.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Self::UsedIndexRunaway { .. }
                | Self::UnknownId { .. }
                | Self::UsedLenTooLong { .. }
                | Self::Broken
        )
    }
}

/// One validated used-ring entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head of the chain.
    pub head: u16,
    /// Bytes the device says it wrote.
    pub len: u32,
    /// The cookie given to [`SplitQueue::add`].
    pub cookie: u64,
}

#[derive(Debug)]
struct Chain {
    descs: Vec<u16>,
    max_len: u32,
    cookie: u64,
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue {
    layout: QueueLayout,
    event_idx: bool,
    free: Vec<u16>,
    /// Chains in flight, by head index.
    chains: Vec<Option<Chain>>,
    in_flight: usize,
    /// Heads published that name no descriptor (never completed).
    bogus: usize,
    /// Next available-ring index to fill (private until published).
    next_avail: u16,
    /// Available index last stored for the device.
    published: u16,
    /// Next used-ring index to read.
    last_used: u16,
    broken: bool,
}

impl SplitQueue {
    /// Sets up an empty queue: zeroes its rings in guest RAM.
    pub fn new(ram: &GuestRam, layout: QueueLayout, event_idx: bool) -> Result<Self, QueueError> {
        let bytes = QueueLayout::bytes(layout.size);
        ram.fill(layout.desc, bytes as usize, 0)?;
        Ok(Self {
            layout,
            event_idx,
            // Popped from the back: hand out low indices first.
            free: (0..layout.size).rev().collect(),
            chains: (0..layout.size).map(|_| None).collect(),
            in_flight: 0,
            bogus: 0,
            next_avail: 0,
            published: 0,
            last_used: 0,
            broken: false,
        })
    }

    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    pub fn size(&self) -> u16 {
        self.layout.size
    }

    /// Chains added and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Adds a chain to the available ring (published by [`Self::publish`]).
    /// `max_used_len` bounds the used length the device may report for it;
    /// `cookie` comes back with its [`Used`] entry. Returns the head index.
    pub fn add(
        &mut self,
        ram: &GuestRam,
        chain: &[ChainDesc],
        max_used_len: u32,
        cookie: u64,
    ) -> Result<u16, QueueError> {
        if self.broken {
            return Err(QueueError::Broken);
        }
        if chain.is_empty() {
            return Err(QueueError::EmptyChain);
        }
        let slots = usize::from(self.layout.size) - self.in_flight - self.bogus;
        if chain.len() > self.free.len() || slots == 0 {
            return Err(QueueError::Full {
                needed: chain.len(),
                free: self.free.len().min(slots),
            });
        }
        let at = self.free.len() - chain.len();
        let idx: Vec<u16> = self.free.split_off(at).into_iter().rev().collect();
        for (i, d) in chain.iter().enumerate() {
            let (flags, next) = match d.next {
                Next::End => (d.flags, 0),
                // A position outside the chain is the caller's bug; it
                // becomes an out-of-table index, which is still a valid test.
                Next::Chain(p) => (
                    d.flags | VRING_DESC_F_NEXT,
                    idx.get(p).copied().unwrap_or(u16::MAX),
                ),
                Next::Raw(n) => (d.flags | VRING_DESC_F_NEXT, n),
            };
            let desc = Descriptor {
                addr: d.addr,
                len: d.len,
                flags,
                next,
            };
            let at = self.layout.desc + DESC_SIZE * u64::from(idx[i]);
            if let Err(e) = ram.write(at, &desc.to_bytes()) {
                self.free.extend(idx.iter().rev());
                return Err(e.into());
            }
        }
        let head = idx[0];
        ram.store_u16(
            self.layout.avail_ring(self.next_avail),
            head,
            Ordering::Relaxed,
        )?;
        self.next_avail = self.next_avail.wrapping_add(1);
        self.chains[usize::from(head)] = Some(Chain {
            descs: idx,
            max_len: max_used_len,
            cookie,
        });
        self.in_flight += 1;
        Ok(head)
    }

    /// Puts `head` in the available ring without any descriptor behind it
    /// (for heads outside the table: `head >= size`). The device can never
    /// complete it validly; it permanently takes one ring slot.
    pub fn add_bogus_head(&mut self, ram: &GuestRam, head: u16) -> Result<(), QueueError> {
        assert!(
            head >= self.layout.size,
            "bogus heads must lie outside the table"
        );
        if usize::from(self.layout.size) - self.in_flight - self.bogus == 0 {
            return Err(QueueError::Full { needed: 1, free: 0 });
        }
        ram.store_u16(
            self.layout.avail_ring(self.next_avail),
            head,
            Ordering::Relaxed,
        )?;
        self.next_avail = self.next_avail.wrapping_add(1);
        self.bogus += 1;
        Ok(())
    }

    /// Makes everything added visible to the device. Returns whether the
    /// device must be kicked.
    pub fn publish(&mut self, ram: &GuestRam) -> Result<bool, QueueError> {
        let (old, new) = (self.published, self.next_avail);
        if old == new {
            return Ok(false);
        }
        // Release: the device, after loading avail.idx with acquire, must
        // see the descriptors and ring entries written before it.
        ram.store_u16(self.layout.avail + 2, new, Ordering::Release)?;
        self.published = new;
        // Full fence: our avail.idx store must be visible before we read
        // the device's avail_event / flags; the device updates those and
        // then re-reads avail.idx behind its own full fence, so one of us
        // sees the other (no lost kick).
        fence(Ordering::SeqCst);
        if self.event_idx {
            let event = ram.load_u16(self.layout.avail_event(), Ordering::Relaxed)?;
            Ok(new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags = ram.load_u16(self.layout.used, Ordering::Relaxed)?;
            Ok(flags & VRING_USED_F_NO_NOTIFY == 0)
        }
    }

    /// Takes the next used entry, validated, or `None` when there is none.
    pub fn pop_used(&mut self, ram: &GuestRam) -> Result<Option<Used>, QueueError> {
        if self.broken {
            return Err(QueueError::Broken);
        }
        // Acquire: the used element and the buffers the device wrote are
        // visible once we see its used.idx store (a release on its side).
        let used_idx = ram.load_u16(self.layout.used + 2, Ordering::Acquire)?;
        if used_idx == self.last_used {
            return Ok(None);
        }
        if usize::from(used_idx.wrapping_sub(self.last_used)) > self.in_flight {
            self.broken = true;
            return Err(QueueError::UsedIndexRunaway {
                last_used: self.last_used,
                used_idx,
                in_flight: self.in_flight,
            });
        }
        let mut elem = [0u8; 8];
        ram.read_into(self.layout.used_elem(self.last_used), &mut elem)?;
        let id = u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]);
        let len = u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]);
        let chain = u16::try_from(id)
            .ok()
            .and_then(|h| self.chains.get_mut(usize::from(h)))
            .and_then(Option::take);
        let Some(chain) = chain else {
            self.broken = true;
            return Err(QueueError::UnknownId { id });
        };
        // id < size, checked by the lookup above.
        let head = id as u16;
        if len > chain.max_len {
            self.broken = true;
            return Err(QueueError::UsedLenTooLong {
                id: head,
                len,
                max: chain.max_len,
            });
        }
        self.last_used = self.last_used.wrapping_add(1);
        self.in_flight -= 1;
        self.free.extend(chain.descs.iter().rev());
        Ok(Some(Used {
            head,
            len,
            cookie: chain.cookie,
        }))
    }

    /// Asks the device for an interrupt at the next used entry. Returns
    /// true when entries arrived meanwhile (pop them instead of sleeping).
    pub fn enable_interrupts(&mut self, ram: &GuestRam) -> Result<bool, QueueError> {
        if self.event_idx {
            ram.store_u16(self.layout.used_event(), self.last_used, Ordering::Relaxed)?;
        }
        // Full fence: used_event must be visible to the device before we
        // re-read used.idx; the device publishes used.idx and then reads
        // used_event behind its own full fence, so one of us sees the other.
        fence(Ordering::SeqCst);
        let used_idx = ram.load_u16(self.layout.used + 2, Ordering::Acquire)?;
        Ok(used_idx != self.last_used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost_user::ram::RAM_BASE;

    /// Plays the device: completes `head` with `len` into the used ring.
    fn device_complete(ram: &GuestRam, l: &QueueLayout, id: u32, len: u32) {
        let idx = ram.load_u16(l.used + 2, Ordering::Acquire).expect("idx");
        let mut e = id.to_le_bytes().to_vec();
        e.extend_from_slice(&len.to_le_bytes());
        ram.write(l.used_elem(idx), &e).expect("elem");
        ram.store_u16(l.used + 2, idx.wrapping_add(1), Ordering::Release)
            .expect("store");
    }

    fn setup(event_idx: bool) -> (GuestRam, SplitQueue) {
        let ram = GuestRam::new(1 << 20).expect("ram");
        let q = SplitQueue::new(&ram, QueueLayout::at(RAM_BASE, 8), event_idx).expect("queue");
        (ram, q)
    }

    #[test]
    fn chains_are_written_linked_and_completed() {
        let (ram, mut q) = setup(false);
        let l = q.layout();
        let chain = linked(&[
            ChainDesc::readable(RAM_BASE + 0x8000, 16),
            ChainDesc::writable(RAM_BASE + 0x9000, 513),
        ]);
        let head = q.add(&ram, &chain, 513, 7).expect("add");
        assert!(q.publish(&ram).expect("publish"), "kick without NO_NOTIFY");
        assert_eq!(
            ram.load_u16(l.avail + 2, Ordering::Acquire).expect("idx"),
            1
        );
        let d0 = ram.read(l.desc + 16 * u64::from(head), 16).expect("d0");
        let next = u16::from_le_bytes([d0[14], d0[15]]);
        assert_eq!(u16::from_le_bytes([d0[12], d0[13]]), VRING_DESC_F_NEXT);
        let d1 = ram.read(l.desc + 16 * u64::from(next), 16).expect("d1");
        assert_eq!(u16::from_le_bytes([d1[12], d1[13]]), VRING_DESC_F_WRITE);
        assert_eq!(q.pop_used(&ram).expect("none"), None);
        device_complete(&ram, &l, u32::from(head), 513);
        assert_eq!(
            q.pop_used(&ram).expect("used"),
            Some(Used {
                head,
                len: 513,
                cookie: 7
            })
        );
        assert_eq!(q.free_descriptors(), 8);
    }

    #[test]
    fn device_faults_are_caught() {
        // Unknown id.
        let (ram, mut q) = setup(false);
        let l = q.layout();
        q.add(&ram, &[ChainDesc::writable(RAM_BASE + 0x8000, 1)], 1, 0)
            .expect("add");
        q.publish(&ram).expect("publish");
        device_complete(&ram, &l, 5, 1);
        assert!(matches!(
            q.pop_used(&ram),
            Err(QueueError::UnknownId { id: 5 })
        ));
        assert!(matches!(q.pop_used(&ram), Err(QueueError::Broken)));
        // Too long.
        let (ram, mut q) = setup(false);
        let h = q
            .add(&ram, &[ChainDesc::writable(RAM_BASE + 0x8000, 1)], 1, 0)
            .expect("add");
        device_complete(&ram, &l, u32::from(h), 2);
        assert!(matches!(
            q.pop_used(&ram),
            Err(QueueError::UsedLenTooLong { len: 2, .. })
        ));
        // Runaway index, and a second completion of the same id.
        let (ram, mut q) = setup(false);
        let h = q
            .add(&ram, &[ChainDesc::writable(RAM_BASE + 0x8000, 1)], 1, 0)
            .expect("add");
        ram.store_u16(l.used + 2, 3, Ordering::Release)
            .expect("idx");
        assert!(matches!(
            q.pop_used(&ram),
            Err(QueueError::UsedIndexRunaway { .. })
        ));
        let (ram, mut q) = setup(false);
        q.add(&ram, &[ChainDesc::writable(RAM_BASE + 0x8000, 1)], 1, 0)
            .expect("add");
        q.add(&ram, &[ChainDesc::writable(RAM_BASE + 0x8000, 1)], 1, 0)
            .expect("add");
        device_complete(&ram, &l, u32::from(h), 1);
        device_complete(&ram, &l, u32::from(h), 1);
        assert!(q.pop_used(&ram).expect("first").is_some());
        assert!(matches!(
            q.pop_used(&ram),
            Err(QueueError::UnknownId { .. })
        ));
    }

    #[test]
    fn event_idx_kicks_only_when_the_device_asked() {
        let (ram, mut q) = setup(true);
        let l = q.layout();
        // Device wants a kick when entry 0 is published.
        q.add(&ram, &[ChainDesc::writable(RAM_BASE + 0x8000, 1)], 1, 0)
            .expect("add");
        assert!(q.publish(&ram).expect("publish"));
        // Device still says 0: publishing entry 1 needs no kick.
        q.add(&ram, &[ChainDesc::writable(RAM_BASE + 0x8000, 1)], 1, 0)
            .expect("add");
        assert!(!q.publish(&ram).expect("publish"));
        // Device asks for entry 2.
        ram.store_u16(l.avail_event(), 2, Ordering::Release)
            .expect("event");
        q.add(&ram, &[ChainDesc::writable(RAM_BASE + 0x8000, 1)], 1, 0)
            .expect("add");
        assert!(q.publish(&ram).expect("publish"));
        // used_event follows what we consumed.
        assert!(!q.enable_interrupts(&ram).expect("enable"));
        assert_eq!(
            ram.load_u16(l.used_event(), Ordering::Acquire).expect("ue"),
            0
        );
    }

    #[test]
    fn full_queue_and_loops() {
        let (ram, mut q) = setup(false);
        let l = q.layout();
        let looped = [
            ChainDesc::readable(RAM_BASE + 0x8000, 16).then(Next::Chain(1)),
            ChainDesc::writable(RAM_BASE + 0x9000, 1).then(Next::Chain(0)),
        ];
        let head = q.add(&ram, &looped, 1, 0).expect("add");
        let d1 = ram.read(l.desc + 16 * u64::from(head + 1), 16).expect("d1");
        assert_eq!(u16::from_le_bytes([d1[14], d1[15]]), head);
        let nine: Vec<ChainDesc> = (0..9).map(|_| ChainDesc::writable(RAM_BASE, 1)).collect();
        assert!(matches!(
            q.add(&ram, &nine, 9, 0),
            Err(QueueError::Full { needed: 9, .. })
        ));
    }
}
