//! Fakes of the xenstore side for tests and fuzzers (`test-utils`).
//!
//! - [`ring_pair`]: a heap ring page with both ends attached, guest end as a
//!   [`RingTransport`], server end as a [`FakeXenstored`] thread, event
//!   channels as latched condvars.
//! - [`ScriptedTransport`]: a transport that replays fixed daemon bytes (in
//!   chunks) and records what the client sent, for hostile-reply tests and
//!   the fuzz target.
//!
//! The fake daemon is deliberately small: a flat map, no permissions, no
//! transaction isolation (commits can be told to fail with EAGAIN), watches
//! with the initial fire and firing on writes/removes at or below the path.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use core::time::Duration;
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;

use super::client::{RingEvents, RingTransport, Transport, TransportError};
use super::ring::{Side, XenstoreRing, SERVER_FEATURE_ERROR, SERVER_FEATURE_RECONNECTION};
use super::wire::{self, reply, FrameDecoder, Message, MsgType};

/// A page-sized, page-aligned heap allocation shared by the two ends.
#[derive(Debug)]
pub struct HeapPage {
    ptr: NonNull<u8>,
}

// SAFETY: the page is only accessed through `XenstoreRing` (atomics and
// volatile byte copies) from whichever thread holds an end.
unsafe impl Send for HeapPage {}
// SAFETY: as above; `HeapPage` itself never reads or writes the memory.
unsafe impl Sync for HeapPage {}

const PAGE: usize = 4096;

impl HeapPage {
    fn layout() -> std::alloc::Layout {
        // 4096 is a power of two and non-zero: this cannot fail.
        std::alloc::Layout::from_size_align(PAGE, PAGE)
            .unwrap_or(std::alloc::Layout::new::<[u64; 512]>())
    }

    /// A zeroed page.
    pub fn new() -> Self {
        let layout = Self::layout();
        // SAFETY: the layout has non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        HeapPage { ptr }
    }

    /// The page's address.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }
}

impl Default for HeapPage {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HeapPage {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout()) };
    }
}

/// A latched one-way event: `notify` sets it, `wait` consumes it.
#[derive(Debug, Default)]
pub struct Latch {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Latch {
    /// Sets the latch and wakes the waiter.
    pub fn notify(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *p = true;
        self.cv.notify_all();
    }

    /// Waits for the latch up to `timeout`, consuming it.
    pub fn wait(&self, timeout: Duration) -> bool {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (mut p, _) = self
            .cv
            .wait_timeout_while(p, timeout, |p| !*p)
            .unwrap_or_else(|e| e.into_inner());
        let was = *p;
        *p = false;
        was
    }
}

/// One end's event channel: notifies the peer's latch, waits on its own.
/// Holds the page so it outlives the ring that points into it.
#[derive(Debug, Clone)]
pub struct LatchEvents {
    mine: Arc<Latch>,
    peer: Arc<Latch>,
    _page: Arc<HeapPage>,
    default_timeout: Duration,
}

impl RingEvents for LatchEvents {
    fn notify(&mut self) {
        self.peer.notify();
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.mine.wait(timeout.unwrap_or(self.default_timeout)) {
            Ok(())
        } else {
            Err(TransportError::TimedOut)
        }
    }
}

/// The guest end handed out by [`ring_pair`].
pub type GuestRing = RingTransport<LatchEvents>;

/// Builds a ring page with indices starting at `start` (use something
/// near `u32::MAX` to exercise wraparound), returns the guest transport and
/// a running fake daemon on the other end.
pub fn ring_pair(start: u32) -> (GuestRing, FakeXenstored) {
    let page = Arc::new(HeapPage::new());
    // SAFETY: the page is 4096 bytes, page-aligned, zeroed, and kept alive
    // by the `Arc` held in both ends' `LatchEvents`; each side is attached
    // exactly once, and the server is attached before the guest uses it.
    let guest = unsafe {
        XenstoreRing::init(
            page.ptr(),
            Side::Guest,
            start,
            SERVER_FEATURE_RECONNECTION | SERVER_FEATURE_ERROR,
        )
    };
    // SAFETY: as above (server side, attached once).
    let server = unsafe { XenstoreRing::attach(page.ptr(), Side::Server) };
    let to_guest = Arc::new(Latch::default());
    let to_server = Arc::new(Latch::default());
    let guest_events = LatchEvents {
        mine: to_guest.clone(),
        peer: to_server.clone(),
        _page: page.clone(),
        default_timeout: Duration::from_secs(30),
    };
    let server_events = LatchEvents {
        mine: to_server,
        peer: to_guest,
        _page: page,
        default_timeout: Duration::from_millis(50),
    };
    let fake = FakeXenstored::spawn(server, server_events);
    (RingTransport::new(guest, guest_events), fake)
}

/// Shared state of the fake daemon, inspectable by tests.
#[derive(Debug, Default)]
pub struct FakeState {
    /// The store (path to value).
    pub nodes: BTreeMap<String, Vec<u8>>,
    /// Registered watches (path, token).
    pub watches: Vec<(String, String)>,
    /// Requests handled, by type number.
    pub requests: BTreeMap<u32, u32>,
    /// Paths written by [`FakeXenstored::poke`] whose watches have not
    /// fired yet.
    pub pokes: Vec<String>,
}

/// A fake xenstore daemon serving the server end of a ring in a thread.
#[derive(Debug)]
pub struct FakeXenstored {
    state: Arc<Mutex<FakeState>>,
    fail_commits: Arc<AtomicU32>,
    ring_error: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    events: LatchEvents,
    thread: Option<JoinHandle<()>>,
}

impl FakeXenstored {
    fn spawn(ring: XenstoreRing, events: LatchEvents) -> Self {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let fail_commits = Arc::new(AtomicU32::new(0));
        let ring_error = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = Server {
            ring,
            events: events.clone(),
            state: state.clone(),
            fail_commits: fail_commits.clone(),
            ring_error: ring_error.clone(),
            stop: stop.clone(),
            decoder: FrameDecoder::new(),
            out: VecDeque::new(),
            next_tx: 1,
        };
        let thread = std::thread::Builder::new()
            .name("fake-xenstored".into())
            .spawn(move || server.run())
            .ok();
        FakeXenstored {
            state,
            fail_commits,
            ring_error,
            stop,
            events,
            thread,
        }
    }

    /// The next `n` commits fail with EAGAIN.
    pub fn fail_next_commits(&self, n: u32) {
        self.fail_commits.store(n, Ordering::SeqCst);
    }

    /// The daemon declares the guest faulty: it sets the ring page's
    /// `error` field to `code` and stops serving.
    pub fn fail_ring(&self, code: u32) {
        self.ring_error.store(code, Ordering::SeqCst);
        self.events.mine.notify();
    }

    /// Runs `f` on the store (e.g. to change a node "from another domain";
    /// watches do not fire for such changes, use [`FakeXenstored::poke`]).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    /// Writes a node as another client would, firing matching watches.
    pub fn poke(&self, path: &str, value: &[u8]) {
        self.with_state(|s| {
            s.nodes.insert(String::from(path), value.to_vec());
            // The server thread fires watches for pokes it finds queued.
            s.pokes.push(String::from(path));
        });
        self.events.mine.notify();
    }
}

impl Drop for FakeXenstored {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.events.mine.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Server {
    ring: XenstoreRing,
    events: LatchEvents,
    state: Arc<Mutex<FakeState>>,
    fail_commits: Arc<AtomicU32>,
    ring_error: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    decoder: FrameDecoder,
    out: VecDeque<u8>,
    next_tx: u32,
}

fn watch_matches(watch: &str, path: &str) -> bool {
    path == watch || (path.starts_with(watch) && path.as_bytes().get(watch.len()) == Some(&b'/'))
}

impl Server {
    fn run(&mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let code = self.ring_error.load(Ordering::SeqCst);
            if code != 0 {
                self.ring.set_error(code);
                self.events.notify();
                let _ = self.events.wait(Some(Duration::from_millis(50)));
                continue;
            }
            if self.ring.serve_reconnect() {
                // A fresh connection: drop partial input, queued output and
                // (this fake keeps them globally) all watches.
                self.decoder = FrameDecoder::new();
                self.out.clear();
                self.state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .watches
                    .clear();
                self.events.notify();
            }
            let mut buf = [0u8; 1024];
            let mut progressed = false;
            match self.ring.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    progressed = true;
                    self.decoder.feed(&buf[..n]);
                    self.events.notify();
                }
                Err(_) => return, // hostile guest: stop serving
            }
            loop {
                match self.decoder.next_message() {
                    Ok(Some(m)) => self.handle(m),
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            self.fire_pokes();
            if !self.out.is_empty() {
                let (a, b) = self.out.as_slices();
                let chunk = if a.is_empty() { b } else { a };
                match self.ring.write(chunk) {
                    Ok(0) => {}
                    Ok(n) => {
                        progressed = true;
                        self.out.drain(..n);
                        self.events.notify();
                    }
                    Err(_) => return,
                }
            }
            if !progressed {
                let _ = self.events.wait(Some(Duration::from_millis(50)));
            }
        }
    }

    fn fire_pokes(&mut self) {
        let pokes: Vec<String> =
            core::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).pokes);
        for p in pokes {
            self.fire(&p);
        }
    }

    fn send(&mut self, ty: MsgType, req_id: u32, tx_id: u32, payload: &[u8]) {
        if let Ok(f) = wire::frame(ty, req_id, tx_id, &[payload]) {
            self.out.extend(f);
        }
    }

    fn fire(&mut self, path: &str) {
        let watches = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watches
            .clone();
        for (w, t) in watches {
            if watch_matches(&w, path) {
                let mut p = Vec::from(path.as_bytes());
                p.push(0);
                p.extend_from_slice(t.as_bytes());
                p.push(0);
                self.send(MsgType::WatchEvent, 0, 0, &p);
            }
        }
    }

    fn handle(&mut self, m: Message) {
        let fields: Vec<&[u8]> = m.payload.split(|b| *b == 0).collect();
        let first = core::str::from_utf8(fields.first().copied().unwrap_or(b"")).unwrap_or("");
        let first = String::from(first);
        let mut fire = None;
        let result: Result<Vec<u8>, &str> = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            *s.requests.entry(m.ty as u32).or_default() += 1;
            match m.ty {
                MsgType::Read => s.nodes.get(&first).cloned().ok_or("ENOENT"),
                MsgType::Write => {
                    let value = m.payload.get(first.len() + 1..).unwrap_or(b"").to_vec();
                    s.nodes.insert(first.clone(), value);
                    fire = Some(first.clone());
                    Ok(b"OK\0".to_vec())
                }
                MsgType::Mkdir => {
                    s.nodes.entry(first.clone()).or_default();
                    fire = Some(first.clone());
                    Ok(b"OK\0".to_vec())
                }
                MsgType::Rm => {
                    let gone: Vec<String> = s
                        .nodes
                        .keys()
                        .filter(|k| watch_matches(&first, k))
                        .cloned()
                        .collect();
                    for k in &gone {
                        s.nodes.remove(k);
                    }
                    fire = Some(first.clone());
                    Ok(b"OK\0".to_vec())
                }
                MsgType::Directory => {
                    let prefix = if first == "/" {
                        String::from("/")
                    } else {
                        alloc::format!("{first}/")
                    };
                    let mut names: Vec<&str> = s
                        .nodes
                        .keys()
                        .filter_map(|k| k.strip_prefix(prefix.as_str()))
                        .filter_map(|rest| rest.split('/').next())
                        .filter(|n| !n.is_empty())
                        .collect();
                    names.dedup();
                    let mut out = Vec::new();
                    for n in names {
                        out.extend_from_slice(n.as_bytes());
                        out.push(0);
                    }
                    Ok(out)
                }
                MsgType::GetPerms => Ok(b"n0\0".to_vec()),
                MsgType::SetPerms => Ok(b"OK\0".to_vec()),
                MsgType::Watch => {
                    let token =
                        core::str::from_utf8(fields.get(1).copied().unwrap_or(b"")).unwrap_or("");
                    s.watches.push((first.clone(), String::from(token)));
                    Ok(b"OK\0".to_vec())
                }
                MsgType::Unwatch => {
                    let token =
                        core::str::from_utf8(fields.get(1).copied().unwrap_or(b"")).unwrap_or("");
                    let before = s.watches.len();
                    s.watches.retain(|(p, t)| !(p == &first && t == token));
                    if s.watches.len() == before {
                        Err("ENOENT")
                    } else {
                        Ok(b"OK\0".to_vec())
                    }
                }
                MsgType::TransactionStart => {
                    let id = self.next_tx;
                    self.next_tx += 1;
                    Ok(alloc::format!("{id}\0").into_bytes())
                }
                MsgType::TransactionEnd => {
                    let commit = first == "T";
                    if commit
                        && self
                            .fail_commits
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                    {
                        Err("EAGAIN")
                    } else {
                        Ok(b"OK\0".to_vec())
                    }
                }
                _ => Err("ENOSYS"),
            }
        };
        match result {
            Ok(p) => self.send(m.ty, m.req_id, m.tx_id, &p),
            Err(e) => {
                let mut p = Vec::from(e.as_bytes());
                p.push(0);
                self.send(MsgType::Error, m.req_id, m.tx_id, &p);
            }
        }
        if m.ty == MsgType::Watch {
            // Initial fire, after the reply (as xenstored does).
            let token = core::str::from_utf8(fields.get(1).copied().unwrap_or(b"")).unwrap_or("");
            let mut p = Vec::from(first.as_bytes());
            p.push(0);
            p.extend_from_slice(token.as_bytes());
            p.push(0);
            self.send(MsgType::WatchEvent, 0, 0, &p);
        }
        if let Some(path) = fire {
            self.fire(&path);
        }
    }
}

/// A transport that plays back fixed daemon output in chunks and records
/// what the client sent. When the script runs out, `recv` reports the
/// connection closed (so a client under test can never hang).
#[derive(Debug, Default)]
pub struct ScriptedTransport {
    chunks: VecDeque<Vec<u8>>,
    /// Everything the client sent.
    pub sent: Vec<u8>,
}

impl ScriptedTransport {
    /// Plays `bytes` back in chunks of the given sizes (cycled; a size of
    /// 0 is treated as 1).
    pub fn new(bytes: &[u8], chunk_sizes: &[usize]) -> Self {
        let mut chunks = VecDeque::new();
        let mut off = 0;
        let mut i = 0;
        while off < bytes.len() {
            let sz = chunk_sizes
                .get(i % chunk_sizes.len().max(1))
                .copied()
                .unwrap_or(bytes.len())
                .max(1);
            let end = (off + sz).min(bytes.len());
            chunks.push_back(bytes[off..end].to_vec());
            off = end;
            i += 1;
        }
        ScriptedTransport {
            chunks,
            sent: Vec::new(),
        }
    }

    /// Request ids of the frames the client sent so far.
    pub fn sent_req_ids(&self) -> Vec<u32> {
        let mut d = FrameDecoder::new();
        d.feed(&self.sent);
        let mut ids = Vec::new();
        while let Ok(Some(m)) = d.next_message() {
            ids.push(m.req_id);
        }
        ids
    }
}

impl Transport for ScriptedTransport {
    fn send(&mut self, frame: &[u8], _timeout: Option<Duration>) -> Result<(), TransportError> {
        self.sent.extend_from_slice(frame);
        Ok(())
    }

    fn recv(
        &mut self,
        buf: &mut [u8],
        _timeout: Option<Duration>,
    ) -> Result<usize, TransportError> {
        let Some(mut chunk) = self.chunks.pop_front() else {
            return Err(TransportError::Closed);
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        if n < chunk.len() {
            chunk.drain(..n);
            self.chunks.push_front(chunk);
        }
        Ok(n)
    }
}

/// Decodes everything in `bytes` as daemon output the way the client does,
/// including every reply decoder on every payload. For the fuzz target:
/// must never panic whatever the input.
pub fn decode_all(bytes: &[u8], chunk: usize) -> usize {
    let mut d = FrameDecoder::new();
    let mut count = 0;
    for piece in bytes.chunks(chunk.max(1)) {
        d.feed(piece);
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    count += 1;
                    let p = &m.payload;
                    let _ = reply::ok(p);
                    let _ = reply::directory(p);
                    let _ = reply::directory_part(p);
                    let _ = reply::perms(p);
                    let _ = reply::transaction_id(p);
                    let _ = reply::string(p);
                    let _ = reply::boolean(p);
                    let _ = reply::watch_event(p);
                    let _ = wire::XsErrno::from_payload(p);
                    let _ = super::state::XenbusState::parse(p);
                }
                Ok(None) => break,
                Err(_) => return count,
            }
        }
    }
    count
}
