//! The broker: the fabric's stand-in for the hypervisor. It owns every
//! domain's memory and grant table, checks every grant map against the
//! granting domain's grant table exactly as Xen's grant-table code does
//! (type, grantee domid, read-only, in-range frame, atomic pin through
//! `GTF_reading`/`GTF_writing`), and wires event channels between domains.

use core::sync::atomic::{AtomicU32, Ordering};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::vec::Vec;

use super::proto::{self, Err as E, Op};
use super::sys::{self, Mapping};
use crate::platform::{DomId, GrantRef, Port};
use crate::ring::PAGE_SIZE;
use crate::wire::grant::{
    GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_TYPE_MASK, GTF_WRITING,
};

/// Pages of grant table per domain (512 v1 entries each).
pub const GRANT_TABLE_PAGES: usize = 8;
/// Grant entries per domain.
pub const GRANT_ENTRIES: u32 = (GRANT_TABLE_PAGES * PAGE_SIZE / 8) as u32;
/// Largest memory a domain may ask for (1 GiB).
pub const MAX_DOMAIN_PAGES: u32 = 1 << 18;

#[derive(Debug)]
struct Domain {
    mem: Option<OwnedFd>,
    mem_ro: Option<OwnedFd>,
    pages: u32,
    gnttab: Arc<Mapping>,
    /// Live pins per ref: (maps, writable maps).
    pins: BTreeMap<GrantRef, (u32, u32)>,
    next_port: Port,
}

impl Domain {
    /// The 32-bit word holding `flags` (low half) and `domid` (high half)
    /// of entry `gref`, and the `frame` word.
    fn entry(&self, gref: GrantRef) -> Option<(&AtomicU32, &AtomicU32)> {
        self.gnttab.grant_entry(GRANT_ENTRIES, gref)
    }

    /// Pin `gref` for `grantee`, as Xen's `_set_status` does: the entry
    /// must permit access to exactly `grantee`, be writable if asked, and
    /// name a frame of this domain; the pin is a compare-and-swap on the
    /// flags+domid word so a concurrent revoke either wins or fails.
    fn pin(&mut self, gref: GrantRef, grantee: DomId, writable: bool) -> Result<u32, E> {
        let pages = self.pages;
        let (word, frame) = self.entry(gref).ok_or(E::BadRef)?;
        let mut w = word.load(Ordering::Acquire);
        let fr = loop {
            let flags = w as u16;
            let domid = (w >> 16) as u16;
            if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS {
                return Err(E::BadRef);
            }
            if domid != grantee {
                return Err(E::WrongDomain);
            }
            if writable && flags & GTF_READONLY != 0 {
                return Err(E::ReadOnly);
            }
            // Read after the acquire load of the flags that published it.
            let fr = frame.load(Ordering::Acquire);
            if fr >= pages {
                return Err(E::BadRef);
            }
            let set = GTF_READING | if writable { GTF_WRITING } else { 0 };
            match word.compare_exchange(w, w | u32::from(set), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break fr,
                Err(now) => w = now,
            }
        };
        let p = self.pins.entry(gref).or_insert((0, 0));
        p.0 += 1;
        if writable {
            p.1 += 1;
        }
        Ok(fr)
    }

    fn unpin(&mut self, gref: GrantRef, writable: bool) {
        let Some(p) = self.pins.get_mut(&gref) else {
            return;
        };
        p.0 = p.0.saturating_sub(1);
        if writable {
            p.1 = p.1.saturating_sub(1);
        }
        let (maps, writers) = *p;
        let mut clear = 0u16;
        if writers == 0 {
            clear |= GTF_WRITING;
        }
        if maps == 0 {
            clear |= GTF_READING;
            self.pins.remove(&gref);
        }
        if let Some((word, _)) = self.entry(gref) {
            word.fetch_and(!u32::from(clear), Ordering::AcqRel);
        }
    }
}

#[derive(Debug)]
struct MapRec {
    mapper: DomId,
    granter: DomId,
    grefs: Vec<GrantRef>,
    writable: bool,
}

#[derive(Debug)]
struct Channel {
    remote: DomId,
    /// Signalled to wake this end.
    wake_here: Arc<OwnedFd>,
    /// Signalled to wake the other end.
    wake_there: Arc<OwnedFd>,
    /// The other end's port once bound.
    peer: Option<Port>,
}

#[derive(Debug, Default)]
struct State {
    domains: BTreeMap<DomId, Domain>,
    maps: BTreeMap<u32, MapRec>,
    next_handle: u32,
    channels: BTreeMap<(DomId, Port), Channel>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running broker listening on a unix socket; stops (and removes the
/// socket) on drop. Domains that are still connected keep their memory.
#[derive(Debug)]
pub struct Broker {
    path: PathBuf,
    listener: Arc<OwnedFd>,
    acceptor: Option<JoinHandle<()>>,
}

impl Broker {
    /// Listen at `path` and serve domains from a thread per connection.
    pub fn spawn(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let listener = Arc::new(sys::listen(&path)?);
        let state = Arc::new(Mutex::new(State::default()));
        let l = listener.clone();
        let acceptor = thread::Builder::new()
            .name("xen-broker".into())
            .spawn(move || {
                while let Ok(conn) = sys::accept(&l) {
                    let st = state.clone();
                    let _ = thread::Builder::new()
                        .name("xen-broker-dom".into())
                        .spawn(move || serve(&st, conn));
                }
            })?;
        Ok(Self {
            path,
            listener,
            acceptor: Some(acceptor),
        })
    }

    /// The socket domains connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        sys::shutdown(&self.listener);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One domain's connection: a hello naming the domain, then requests until
/// it hangs up; then its maps are released and its channels closed (what
/// Xen does when a domain dies).
fn serve(st: &Mutex<State>, conn: OwnedFd) {
    let Ok((msg, _)) = sys::recv(&conn) else {
        return;
    };
    let words = proto::decode(&msg);
    let me = match hello(st, &words) {
        Ok((me, (reply, fds))) => {
            let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
            if sys::send(&conn, &proto::encode(&reply), &raw).is_err() {
                lock(st).domains.remove(&me);
                return;
            }
            me
        }
        Err(e) => {
            let _ = sys::send(&conn, &proto::encode(&[e as u32]), &[]);
            return;
        }
    };
    loop {
        let Ok((msg, _)) = sys::recv(&conn) else {
            break;
        };
        if msg.is_empty() {
            break;
        }
        let words = proto::decode(&msg);
        let (reply, fds) = match request(st, me, &words) {
            Ok(r) => r,
            Err(e) => (std::vec![e as u32], Vec::new()),
        };
        let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
        if sys::send(&conn, &proto::encode(&reply), &raw).is_err() {
            break;
        }
    }
    goodbye(st, me);
}

type Reply = (Vec<u32>, Vec<Arc<OwnedFd>>);

fn hello(st: &Mutex<State>, w: &[u32]) -> Result<(DomId, Reply), E> {
    let [op, domid, pages] = *w else {
        return Err(E::Invalid);
    };
    if op != Op::Hello as u32 || pages > MAX_DOMAIN_PAGES {
        return Err(E::Invalid);
    }
    let domid = DomId::try_from(domid).map_err(|_| E::Invalid)?;
    let mut s = lock(st);
    if s.domains.contains_key(&domid) {
        return Err(E::Busy);
    }
    let gt = sys::memfd("xen-gnttab", GRANT_TABLE_PAGES).map_err(|_| E::Exhausted)?;
    let gnttab =
        Arc::new(Mapping::shared(&gt, 0, GRANT_TABLE_PAGES, true).map_err(|_| E::Exhausted)?);
    let (mem, mem_ro) = if pages > 0 {
        let m = sys::memfd("xen-domain-memory", pages as usize).map_err(|_| E::Exhausted)?;
        let ro = sys::reopen_read_only(&m).map_err(|_| E::Exhausted)?;
        (Some(m), Some(ro))
    } else {
        (None, None)
    };
    let mut fds = std::vec![Arc::new(gt)];
    if let Some(m) = &mem {
        let dup = m.try_clone().map_err(|_| E::Exhausted)?;
        fds.push(Arc::new(dup));
    }
    s.domains.insert(
        domid,
        Domain {
            mem,
            mem_ro,
            pages,
            gnttab,
            pins: BTreeMap::new(),
            next_port: 1,
        },
    );
    Ok((domid, (std::vec![0, GRANT_ENTRIES], fds)))
}

fn request(st: &Mutex<State>, me: DomId, w: &[u32]) -> Result<Reply, E> {
    let (&op, args) = w.split_first().ok_or(E::Invalid)?;
    let mut s = lock(st);
    match Op::from_u32(op).ok_or(E::Invalid)? {
        Op::Hello => Err(E::Invalid),
        Op::Map => {
            let [granter, writable, ref grefs @ ..] = *args else {
                return Err(E::Invalid);
            };
            let granter = DomId::try_from(granter).map_err(|_| E::Invalid)?;
            let writable = writable != 0;
            if grefs.is_empty() || grefs.len() > proto::MAX_MAP_PAGES {
                return Err(E::Invalid);
            }
            let dom = s.domains.get_mut(&granter).ok_or(E::NoDomain)?;
            let mut frames = Vec::with_capacity(grefs.len());
            for (i, g) in grefs.iter().enumerate() {
                match dom.pin(*g, me, writable) {
                    Ok(f) => frames.push(f),
                    Err(e) => {
                        for done in &grefs[..i] {
                            dom.unpin(*done, writable);
                        }
                        return Err(e);
                    }
                }
            }
            let fd = if writable { &dom.mem } else { &dom.mem_ro };
            let fd = fd
                .as_ref()
                .ok_or(E::BadRef)?
                .try_clone()
                .map_err(|_| E::Exhausted)?;
            let handle = s.next_handle;
            s.next_handle = s.next_handle.wrapping_add(1);
            s.maps.insert(
                handle,
                MapRec {
                    mapper: me,
                    granter,
                    grefs: grefs.to_vec(),
                    writable,
                },
            );
            let mut reply = std::vec![0, handle];
            reply.extend_from_slice(&frames);
            Ok((reply, std::vec![Arc::new(fd)]))
        }
        Op::Unmap => {
            let [handle] = *args else {
                return Err(E::Invalid);
            };
            match s.maps.get(&handle) {
                Some(m) if m.mapper == me => {}
                _ => return Err(E::BadRef),
            }
            if let Some(m) = s.maps.remove(&handle) {
                release(&mut s, &m);
            }
            Ok((std::vec![0], Vec::new()))
        }
        Op::AllocUnbound => {
            let [remote] = *args else {
                return Err(E::Invalid);
            };
            let remote = DomId::try_from(remote).map_err(|_| E::Invalid)?;
            let port = new_port(&mut s, me)?;
            let here = Arc::new(sys::eventfd().map_err(|_| E::Exhausted)?);
            let there = Arc::new(sys::eventfd().map_err(|_| E::Exhausted)?);
            s.channels.insert(
                (me, port),
                Channel {
                    remote,
                    wake_here: here.clone(),
                    wake_there: there.clone(),
                    peer: None,
                },
            );
            Ok((std::vec![0, port], std::vec![here, there]))
        }
        Op::BindInterdomain => {
            let [remote, remote_port] = *args else {
                return Err(E::Invalid);
            };
            let remote = DomId::try_from(remote).map_err(|_| E::Invalid)?;
            // Xen: the remote port must be unbound and allocated for us.
            let (here, there) = match s.channels.get(&(remote, remote_port)) {
                Some(c) if c.remote == me && c.peer.is_none() => {
                    (c.wake_there.clone(), c.wake_here.clone())
                }
                _ => return Err(E::BadRef),
            };
            let port = new_port(&mut s, me)?;
            if let Some(c) = s.channels.get_mut(&(remote, remote_port)) {
                c.peer = Some(port);
            }
            s.channels.insert(
                (me, port),
                Channel {
                    remote,
                    wake_here: here.clone(),
                    wake_there: there.clone(),
                    peer: Some(remote_port),
                },
            );
            // A freshly bound port starts pending.
            sys::eventfd_signal(&here).map_err(|_| E::Exhausted)?;
            Ok((std::vec![0, port], std::vec![here, there]))
        }
        Op::Close => {
            let [port] = *args else {
                return Err(E::Invalid);
            };
            close_port(&mut s, me, port);
            Ok((std::vec![0], Vec::new()))
        }
    }
}

/// The next port number of domain `me`.
fn new_port(s: &mut State, me: DomId) -> Result<Port, E> {
    let dom = s.domains.get_mut(&me).ok_or(E::NoDomain)?;
    let port = dom.next_port;
    dom.next_port = port.checked_add(1).ok_or(E::Exhausted)?;
    Ok(port)
}

fn release(s: &mut State, m: &MapRec) {
    if let Some(dom) = s.domains.get_mut(&m.granter) {
        for g in &m.grefs {
            dom.unpin(*g, m.writable);
        }
    }
}

fn close_port(s: &mut State, me: DomId, port: Port) {
    if let Some(c) = s.channels.remove(&(me, port)) {
        if let Some(peer) = c.peer {
            if let Some(pc) = s.channels.get_mut(&(c.remote, peer)) {
                pc.peer = None;
            }
        }
    }
}

fn goodbye(st: &Mutex<State>, me: DomId) {
    let mut s = lock(st);
    let mine: Vec<u32> = s
        .maps
        .iter()
        .filter(|(_, m)| m.mapper == me)
        .map(|(h, _)| *h)
        .collect();
    for h in mine {
        if let Some(m) = s.maps.remove(&h) {
            release(&mut s, &m);
        }
    }
    let ports: Vec<Port> = s
        .channels
        .keys()
        .filter(|(d, _)| *d == me)
        .map(|(_, p)| *p)
        .collect();
    for p in ports {
        close_port(&mut s, me, p);
    }
    // Maps others hold of this domain's pages keep the memory alive through
    // their own descriptors; the record goes so the domid can be reused.
    s.maps.retain(|_, m| m.granter != me);
    s.domains.remove(&me);
}
