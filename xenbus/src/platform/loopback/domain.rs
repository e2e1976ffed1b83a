//! One domain's end of the fabric: its memory and grant table (shared with
//! the broker), and the platform traits on top.

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU32, Ordering};
use core::time::Duration;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::vec::Vec;

use super::proto::{self, Err as BrokerErr, Op};
use super::sys::{self, Mapping};
use crate::platform::{
    DomId, EventChannels, GrantMapper, GrantRef, GrantTable, PlatformError, Port, SharedPages,
};
use crate::ring::PAGE_SIZE;
use crate::wire::grant::{
    GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_WRITING, NR_RESERVED_ENTRIES,
};

/// What a fabric operation can fail with.
#[derive(Debug)]
pub enum FabricError {
    /// The socket or a system call failed.
    Io(io::Error),
    /// The broker refused the request.
    Refused(BrokerErr),
    /// The broker answered something this end does not understand.
    Protocol,
}

impl fmt::Display for FabricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "fabric I/O: {e}"),
            Self::Refused(e) => write!(f, "the broker refused: {e:?}"),
            Self::Protocol => f.write_str("the broker's reply is malformed"),
        }
    }
}

impl std::error::Error for FabricError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for FabricError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<FabricError> for PlatformError {
    fn from(e: FabricError) -> Self {
        match e {
            FabricError::Refused(BrokerErr::Exhausted) => PlatformError::Exhausted,
            FabricError::Refused(BrokerErr::Invalid) => PlatformError::Os(libc::EINVAL),
            FabricError::Refused(_) => PlatformError::BadPeerReference,
            FabricError::Io(e) => PlatformError::Os(e.raw_os_error().unwrap_or(libc::EIO)),
            FabricError::Protocol => PlatformError::Os(libc::EPROTO),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct Grants {
    next: GrantRef,
    free: Vec<GrantRef>,
}

#[derive(Debug)]
struct Mapped {
    handle: u32,
    map: Mapping,
}

#[derive(Debug)]
struct PortEnd {
    wake_here: OwnedFd,
    wake_there: OwnedFd,
}

/// A domain on the loopback fabric, implementing every platform trait:
/// [`SharedPages`] hands out pages of the domain's own memory (the only
/// memory it can grant), [`GrantTable`] writes v1 entries in the grant table
/// the broker reads, [`GrantMapper`] asks the broker to check and pin a
/// peer's grants, and [`EventChannels`] are eventfds.
#[derive(Debug)]
pub struct LoopbackDomain {
    domid: DomId,
    sock: Mutex<OwnedFd>,
    gnttab: Mapping,
    entries: u32,
    mem: Option<Mapping>,
    /// Page allocation map of `mem`.
    used: Mutex<Vec<bool>>,
    grants: Mutex<Grants>,
    maps: Mutex<BTreeMap<usize, Mapped>>,
    ports: Mutex<BTreeMap<Port, Arc<PortEnd>>>,
}

impl LoopbackDomain {
    /// Join the fabric at `broker` as domain `domid` with `pages` pages of
    /// memory (grantable; 0 for a domain that only maps).
    pub fn connect(
        broker: impl AsRef<Path>,
        domid: DomId,
        pages: u32,
    ) -> Result<Self, FabricError> {
        let sock = sys::connect(broker.as_ref())?;
        sys::send(
            &sock,
            &proto::encode(&[Op::Hello as u32, u32::from(domid), pages]),
            &[],
        )?;
        let (reply, mut fds) = sys::recv(&sock)?;
        let words = proto::decode(&reply);
        let entries = match *words.as_slice() {
            [0, entries] => entries,
            [e] => return Err(FabricError::Refused(BrokerErr::from_u32(e))),
            _ => return Err(FabricError::Protocol),
        };
        let want = if pages > 0 { 2 } else { 1 };
        if fds.len() != want || entries < NR_RESERVED_ENTRIES {
            return Err(FabricError::Protocol);
        }
        let mem_fd = if pages > 0 { fds.pop() } else { None };
        let gt_fd = fds.pop().ok_or(FabricError::Protocol)?;
        let gt_pages = (entries as usize * 8).div_ceil(PAGE_SIZE);
        let gnttab = Mapping::shared(&gt_fd, 0, gt_pages, true)?;
        let mem = match mem_fd {
            Some(fd) => Some(Mapping::shared(&fd, 0, pages as usize, true)?),
            None => None,
        };
        Ok(Self {
            domid,
            sock: Mutex::new(sock),
            gnttab,
            entries,
            mem,
            used: Mutex::new(std::vec![false; pages as usize]),
            grants: Mutex::new(Grants {
                next: NR_RESERVED_ENTRIES,
                free: Vec::new(),
            }),
            maps: Mutex::new(BTreeMap::new()),
            ports: Mutex::new(BTreeMap::new()),
        })
    }

    /// This domain's id.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    fn call(&self, words: &[u32]) -> Result<(Vec<u32>, Vec<OwnedFd>), FabricError> {
        let sock = lock(&self.sock);
        sys::send(&sock, &proto::encode(words), &[])?;
        let (reply, fds) = sys::recv(&sock)?;
        if reply.is_empty() {
            return Err(FabricError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let mut w = proto::decode(&reply);
        match w.first().copied() {
            Some(0) => {
                w.remove(0);
                Ok((w, fds))
            }
            Some(e) => Err(FabricError::Refused(BrokerErr::from_u32(e))),
            None => Err(FabricError::Protocol),
        }
    }

    /// The flags+domid word and the frame word of grant entry `gref`.
    fn entry(&self, gref: GrantRef) -> Option<(&AtomicU32, &AtomicU32)> {
        self.gnttab.grant_entry(self.entries, gref)
    }

    /// Map `grefs` of domain `granter`, with the broker's exact refusal on
    /// failure (the [`GrantMapper`] impl maps it to a [`PlatformError`]).
    pub fn map_grants(
        &self,
        granter: DomId,
        grefs: &[GrantRef],
        writable: bool,
    ) -> Result<NonNull<u8>, FabricError> {
        let mut req = Vec::with_capacity(grefs.len() + 3);
        req.extend([Op::Map as u32, u32::from(granter), u32::from(writable)]);
        req.extend_from_slice(grefs);
        let (w, mut fds) = self.call(&req)?;
        let (&handle, frames) = w.split_first().ok_or(FabricError::Protocol)?;
        let fd = match (fds.pop(), frames.len() == grefs.len()) {
            (Some(fd), true) => fd,
            _ => {
                let _ = self.call(&[Op::Unmap as u32, handle]);
                return Err(FabricError::Protocol);
            }
        };
        let placed = Mapping::reserve(grefs.len()).and_then(|m| {
            for (i, f) in frames.iter().enumerate() {
                m.place(i, &fd, *f as usize, writable)?;
            }
            Ok(m)
        });
        let map = match placed {
            Ok(m) => m,
            Err(e) => {
                let _ = self.call(&[Op::Unmap as u32, handle]);
                return Err(e.into());
            }
        };
        let ptr = map.ptr();
        lock(&self.maps).insert(ptr.as_ptr() as usize, Mapped { handle, map });
        Ok(ptr)
    }

    /// Ask the kernel to make a mapping from [`Self::map_grants`] writable.
    /// Fails for a read-only map: the broker handed out a read-only
    /// descriptor, so not even `mprotect` can write through it.
    pub fn try_make_writable(&self, mapping: NonNull<u8>) -> Result<(), FabricError> {
        let maps = lock(&self.maps);
        let m = maps
            .get(&(mapping.as_ptr() as usize))
            .ok_or(FabricError::Refused(BrokerErr::BadRef))?;
        Ok(m.map.make_writable()?)
    }

    /// Wait up to `timeout` (forever if `None`) for an event on `port`;
    /// returns whether one came. Pending events are consumed.
    pub fn wait(&self, port: Port, timeout: Option<Duration>) -> Result<bool, FabricError> {
        let end = lock(&self.ports)
            .get(&port)
            .cloned()
            .ok_or(FabricError::Refused(BrokerErr::BadRef))?;
        Ok(sys::eventfd_wait(&end.wake_here, timeout)?)
    }

    /// The descriptor that becomes readable when `port` fires (for poll or
    /// epoll); read its 8-byte counter to consume, or use [`Self::wait`].
    pub fn event_fd(&self, port: Port) -> Option<RawFd> {
        lock(&self.ports)
            .get(&port)
            .map(|e| e.wake_here.as_raw_fd())
    }

    fn port_from(&self, w: &[u32], mut fds: Vec<OwnedFd>) -> Result<Port, FabricError> {
        let (Some(&port), Some(there), Some(here)) = (w.first(), fds.pop(), fds.pop()) else {
            return Err(FabricError::Protocol);
        };
        lock(&self.ports).insert(
            port,
            Arc::new(PortEnd {
                wake_here: here,
                wake_there: there,
            }),
        );
        Ok(port)
    }
}

// SAFETY: pages come from this domain's memory mapping, which lives as long
// as `self`; the allocation map hands each page to one caller at a time and
// pages are zeroed before they are handed out again.
unsafe impl SharedPages for LoopbackDomain {
    fn alloc_pages(&self, count: usize) -> Result<NonNull<u8>, PlatformError> {
        let mem = self.mem.as_ref().ok_or(PlatformError::Exhausted)?;
        let count = count.max(1);
        let mut used = lock(&self.used);
        let mut run = 0;
        let mut first = None;
        for (i, u) in used.iter().enumerate() {
            run = if *u { 0 } else { run + 1 };
            if run == count {
                first = Some(i + 1 - count);
                break;
            }
        }
        let first = first.ok_or(PlatformError::Exhausted)?;
        for u in &mut used[first..first + count] {
            *u = true;
        }
        let p = mem.ptr().as_ptr().wrapping_add(first * PAGE_SIZE);
        // SAFETY: the pages `first..first + count` lie inside the mapping
        // (found in the allocation map of its pages) and were just reserved
        // for this caller, so nobody else in this process uses them.
        unsafe { core::ptr::write_bytes(p, 0, count * PAGE_SIZE) };
        NonNull::new(p).ok_or(PlatformError::Exhausted)
    }

    unsafe fn free_pages(&self, pages: NonNull<u8>, count: usize) {
        let Some(mem) = self.mem.as_ref() else { return };
        let off = (pages.as_ptr() as usize).wrapping_sub(mem.ptr().as_ptr() as usize);
        let first = off / PAGE_SIZE;
        let mut used = lock(&self.used);
        if let Some(s) = used.get_mut(first..first + count.max(1)) {
            s.fill(false);
        }
    }
}

// SAFETY: a grant writes the frame, then the flags+domid word with release
// order, into the table the broker checks on every map; `end_access`
// compare-and-swaps the flags to zero only while the broker has neither
// `GTF_reading` nor `GTF_writing` set, so no map outlives a revoke.
unsafe impl GrantTable for LoopbackDomain {
    fn grant(
        &self,
        domid: DomId,
        page: NonNull<u8>,
        readonly: bool,
    ) -> Result<GrantRef, PlatformError> {
        let mem = self.mem.as_ref().ok_or(PlatformError::Os(libc::EFAULT))?;
        let off = (page.as_ptr() as usize).wrapping_sub(mem.ptr().as_ptr() as usize);
        if !off.is_multiple_of(PAGE_SIZE) || off >= mem.len() {
            // Only this domain's own memory can be granted.
            return Err(PlatformError::Os(libc::EFAULT));
        }
        let frame = (off / PAGE_SIZE) as u32;
        let gref = {
            let mut g = lock(&self.grants);
            match g.free.pop() {
                Some(r) => r,
                None if g.next < self.entries => {
                    g.next += 1;
                    g.next - 1
                }
                None => return Err(PlatformError::Exhausted),
            }
        };
        let (word, fr) = self.entry(gref).ok_or(PlatformError::Exhausted)?;
        fr.store(frame, Ordering::Relaxed);
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        // Release: the broker, having read these flags with acquire, sees
        // the frame stored above.
        word.store(
            u32::from(flags) | (u32::from(domid) << 16),
            Ordering::Release,
        );
        Ok(gref)
    }

    unsafe fn end_access(&self, gref: GrantRef) -> Result<(), PlatformError> {
        let (word, _) = self.entry(gref).ok_or(PlatformError::Os(libc::EINVAL))?;
        let mut w = word.load(Ordering::Acquire);
        loop {
            if (w as u16) & (GTF_READING | GTF_WRITING) != 0 {
                return Err(PlatformError::GrantInUse);
            }
            match word.compare_exchange(w, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        lock(&self.grants).free.push(gref);
        Ok(())
    }
}

// SAFETY: `map` returns a mapping this value owns (pages in `grefs` order,
// writable only if asked and only if the broker handed a writable
// descriptor), kept until `unmap`; the peer can write the pages but cannot
// unmap them from this process.
unsafe impl GrantMapper for LoopbackDomain {
    fn map(
        &self,
        domid: DomId,
        grefs: &[GrantRef],
        writable: bool,
    ) -> Result<NonNull<u8>, PlatformError> {
        self.map_grants(domid, grefs, writable).map_err(Into::into)
    }

    unsafe fn unmap(&self, mapping: NonNull<u8>, _pages: usize) {
        let m = lock(&self.maps).remove(&(mapping.as_ptr() as usize));
        if let Some(m) = m {
            let handle = m.handle;
            // Unmap here before the broker unpins, so the granter can never
            // revoke a page this process can still reach.
            drop(m.map);
            if let Err(e) = self.call(&[Op::Unmap as u32, handle]) {
                log::error!("fabric: unmap of handle {handle} failed: {e}");
            }
        }
    }
}

// SAFETY: `notify` issues a sequentially consistent fence and then a write
// system call on the peer's eventfd, so the peer woken by it sees every
// earlier write; an eventfd counter keeps a notification until it is read.
unsafe impl EventChannels for LoopbackDomain {
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, PlatformError> {
        let (w, fds) = self.call(&[Op::AllocUnbound as u32, u32::from(remote)])?;
        Ok(self.port_from(&w, fds)?)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, PlatformError> {
        let (w, fds) = self.call(&[Op::BindInterdomain as u32, u32::from(remote), remote_port])?;
        Ok(self.port_from(&w, fds)?)
    }

    fn notify(&self, port: Port) -> Result<(), PlatformError> {
        let end = lock(&self.ports)
            .get(&port)
            .cloned()
            .ok_or(PlatformError::BadPeerReference)?;
        fence(Ordering::SeqCst);
        sys::eventfd_signal(&end.wake_there).map_err(|e| FabricError::Io(e).into())
    }

    fn close(&self, port: Port) {
        if lock(&self.ports).remove(&port).is_some() {
            let _ = self.call(&[Op::Close as u32, port]);
        }
    }
}
