//! A xenstore client over any byte transport: the daemon's unix socket
//! (`std`, `super::unix`) or the guest ring page ([`RingTransport`],
//! `no_std`).
//!
//! One request is outstanding at a time. Replies are matched by `req_id`;
//! `WATCH_EVENT`s may arrive before, between or after replies and are queued
//! for the caller ([`Client::next_event`]). Anything malformed from the
//! daemon, a timeout while a reply is due, or a closed connection poisons
//! the client: every later call fails with [`Error::Poisoned`] instead of
//! risking a reply being matched to the wrong request. Reconnect by making a
//! new client.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use super::ring::{RingError, XenstoreRing, SERVER_FEATURE_ERROR, SERVER_FEATURE_RECONNECTION};
use super::wire::{
    self, reply, request, DecodeError, EncodeError, MsgType, Perm, WatchEvent, XsErrno,
};

/// What went wrong below the xenstore protocol.
#[derive(Debug)]
pub enum TransportError {
    /// The daemon closed the connection.
    Closed,
    /// Nothing arrived within the timeout.
    TimedOut,
    /// The ring page's indices are corrupt (peer fault).
    Ring(RingError),
    /// The daemon set the ring page's `error` field
    /// (`XENSTORE_ERROR_COMM` 1, `_RINGIDX` 2, `_PROTO` 3): it stopped
    /// serving this ring.
    ServerError {
        /// The `error` value.
        code: u32,
    },
    /// An I/O error from the host OS.
    #[cfg(feature = "std")]
    Io(std::io::Error),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Closed => f.write_str("xenstore connection closed by the daemon"),
            TransportError::TimedOut => f.write_str("timed out waiting for xenstore"),
            TransportError::Ring(e) => write!(f, "xenstore ring: {e}"),
            TransportError::ServerError { code } => {
                write!(
                    f,
                    "xenstore daemon reported ring error {code} and stopped serving"
                )
            }
            #[cfg(feature = "std")]
            TransportError::Io(e) => write!(f, "xenstore socket: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<RingError> for TransportError {
    fn from(e: RingError) -> Self {
        TransportError::Ring(e)
    }
}

/// A byte pipe to the xenstore daemon.
pub trait Transport {
    /// Sends all of `frame`, waiting for room up to `timeout` (`None`:
    /// the transport's default).
    fn send(&mut self, frame: &[u8], timeout: Option<Duration>) -> Result<(), TransportError>;
    /// Receives at least one byte into `buf`, waiting up to `timeout`
    /// (`None`: the transport's default). Never returns `Ok(0)`.
    fn recv(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> Result<usize, TransportError>;
}

/// A xenstore operation failed.
#[derive(Debug)]
pub enum Error {
    /// The daemon refused the request with this errno.
    Xenstore(XsErrno),
    /// We refused to send the request (caller fault, nothing was sent).
    Encode(EncodeError),
    /// The daemon sent something malformed (peer fault; client poisoned).
    Protocol(DecodeError),
    /// The connection failed (client poisoned unless waiting for events).
    Transport(TransportError),
    /// An earlier error left the connection out of sync; reconnect.
    Poisoned,
    /// A node the other end controls holds a value that makes no sense
    /// there (e.g. a xenbus `state` that is not a number). Peer fault; the
    /// connection itself is fine.
    InvalidNode {
        /// The node.
        path: String,
    },
    /// A transaction kept conflicting (EAGAIN) for this many attempts.
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
    },
}

impl Error {
    /// The daemon answered with this errno.
    pub fn errno(&self) -> Option<&XsErrno> {
        match self {
            Error::Xenstore(e) => Some(e),
            _ => None,
        }
    }

    /// `ENOENT`.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Xenstore(XsErrno::NoEnt))
    }

    /// `EAGAIN` (rerun the transaction).
    pub fn is_again(&self) -> bool {
        matches!(self, Error::Xenstore(XsErrno::Again))
    }

    /// The other side broke the protocol.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Error::Protocol(_)
                | Error::Transport(TransportError::Ring(_))
                | Error::InvalidNode { .. }
        )
    }

    /// The connection is unusable: make a new client.
    pub fn should_reconnect(&self) -> bool {
        matches!(
            self,
            Error::Protocol(_) | Error::Transport(_) | Error::Poisoned
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Xenstore(e) => e.fmt(f),
            Error::Encode(e) => write!(f, "refused to send request: {e}"),
            Error::Protocol(e) => write!(f, "xenstore protocol violation: {e}"),
            Error::Transport(e) => e.fmt(f),
            Error::Poisoned => f.write_str("xenstore connection unusable after an earlier error"),
            Error::InvalidNode { path } => write!(f, "peer wrote a malformed value at {path}"),
            Error::RetriesExhausted { attempts } => {
                write!(f, "transaction still conflicting after {attempts} attempts")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Transport(e) => Some(e),
            _ => None,
        }
    }
}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Self {
        Error::Encode(e)
    }
}

/// Default bound for [`Client::transaction`] retries.
pub const DEFAULT_TX_ATTEMPTS: u32 = 16;
/// Queued watch events kept before events are coalesced per token.
pub const EVENT_QUEUE_MAX: usize = 1024;

/// A xenstore client. See the module docs.
#[derive(Debug)]
pub struct Client<T> {
    transport: T,
    decoder: wire::FrameDecoder,
    next_req_id: u32,
    events: VecDeque<WatchEvent>,
    poisoned: bool,
    timeout: Option<Duration>,
    events_coalesced: u64,
    events_seen: u64,
}

impl<T: Transport> Client<T> {
    /// A client over `transport`.
    pub fn new(transport: T) -> Self {
        Client {
            transport,
            decoder: wire::FrameDecoder::new(),
            next_req_id: 1,
            events: VecDeque::new(),
            poisoned: false,
            timeout: None,
            events_coalesced: 0,
            events_seen: 0,
        }
    }

    /// Forgets all connection state (partial frames, queued events, the
    /// poisoned flag) after the transport itself was reset, e.g. by
    /// [`RingTransport::reconnect`]. Watches must be registered again.
    pub fn reset(&mut self) {
        self.decoder = wire::FrameDecoder::new();
        self.events.clear();
        self.poisoned = false;
    }

    /// How long to wait for each reply (`None`: the transport's default).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Watch events dropped because the queue was full (metric; see
    /// [`EVENT_QUEUE_MAX`]).
    pub fn events_coalesced(&self) -> u64 {
        self.events_coalesced
    }

    fn alloc_req_id(&mut self) -> u32 {
        let id = self.next_req_id;
        // Skip 0, which the daemon uses for watch events.
        self.next_req_id = self.next_req_id.wrapping_add(1).max(1);
        id
    }

    fn poison<E>(&mut self, e: Error) -> Result<E, Error> {
        self.poisoned = true;
        Err(e)
    }

    /// Queues a watch event. The queue is bounded ([`EVENT_QUEUE_MAX`]):
    /// when full, an event whose token already has one queued is dropped
    /// (watchers must re-read what they watch after any event, since the
    /// daemon may fire spuriously or late, so one queued event per token
    /// loses nothing), otherwise the oldest event makes room. Both count in
    /// [`Client::events_coalesced`].
    fn queue_event(&mut self, ev: WatchEvent) {
        self.events_seen += 1;
        if self.events.len() >= EVENT_QUEUE_MAX {
            self.events_coalesced += 1;
            if self.events.iter().any(|e| e.token == ev.token) {
                return;
            }
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    /// Reads once from the transport and queues what it carried.
    fn pump(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        let mut buf = [0u8; 1024];
        let want = self.decoder.wanted().min(buf.len());
        let n = self.transport.recv(&mut buf[..want], timeout)?;
        self.decoder.feed(&buf[..n]);
        Ok(())
    }

    /// Next complete message from the decoder, watch events queued.
    fn next_non_event(&mut self) -> Result<Option<wire::Message>, Error> {
        loop {
            match self.decoder.next_message() {
                Ok(Some(m)) if m.ty == MsgType::WatchEvent => {
                    match reply::watch_event(&m.payload) {
                        Ok(ev) => self.queue_event(ev),
                        Err(e) => return self.poison(Error::Protocol(e)),
                    }
                }
                Ok(other) => return Ok(other),
                Err(e) => return self.poison(Error::Protocol(e)),
            }
        }
    }

    fn call(&mut self, ty: MsgType, req_id: u32, frame: &[u8]) -> Result<Vec<u8>, Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if let Err(e) = self.transport.send(frame, self.timeout) {
            return self.poison(Error::Transport(e));
        }
        let events_before = self.events_seen;
        loop {
            if self.events_seen.wrapping_sub(events_before) > wire::MAX_EVENTS_PER_REPLY as u64 {
                return self.poison(Error::Protocol(DecodeError::EventFlood));
            }
            if let Some(m) = self.next_non_event()? {
                if m.req_id != req_id {
                    return self.poison(Error::Protocol(DecodeError::UnexpectedReqId {
                        expected: req_id,
                        got: m.req_id,
                    }));
                }
                if m.ty == MsgType::Error {
                    return Err(Error::Xenstore(XsErrno::from_payload(&m.payload)));
                }
                if m.ty != ty {
                    return self.poison(Error::Protocol(DecodeError::UnexpectedReplyType {
                        expected: ty,
                        got: m.ty,
                    }));
                }
                return Ok(m.payload);
            }
            if let Err(e) = self.pump(self.timeout) {
                return self.poison(Error::Transport(e));
            }
        }
    }

    fn checked<R>(&mut self, r: Result<R, DecodeError>) -> Result<R, Error> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => self.poison(Error::Protocol(e)),
        }
    }

    /// Sends a raw request (no path validation; the payload limit still
    /// applies) and returns the reply payload. For operations this type has
    /// no method for, and for tests of the daemon's own checks.
    pub fn request(&mut self, ty: MsgType, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>, Error> {
        let id = self.alloc_req_id();
        let frame = wire::frame(ty, id, tx_id, &[payload])?;
        self.call(ty, id, &frame)
    }

    fn op(
        &mut self,
        ty: MsgType,
        build: impl FnOnce(u32) -> Result<Vec<u8>, EncodeError>,
    ) -> Result<Vec<u8>, Error> {
        let id = self.alloc_req_id();
        let frame = build(id)?;
        self.call(ty, id, &frame)
    }

    pub(crate) fn read_tx(&mut self, tx: u32, path: &str) -> Result<Vec<u8>, Error> {
        let p = self.op(MsgType::Read, |id| request::read(id, tx, path))?;
        Ok(reply::read(&p))
    }

    pub(crate) fn write_tx(&mut self, tx: u32, path: &str, value: &[u8]) -> Result<(), Error> {
        let p = self.op(MsgType::Write, |id| request::write(id, tx, path, value))?;
        self.checked(reply::ok(&p))
    }

    pub(crate) fn mkdir_tx(&mut self, tx: u32, path: &str) -> Result<(), Error> {
        let p = self.op(MsgType::Mkdir, |id| request::mkdir(id, tx, path))?;
        self.checked(reply::ok(&p))
    }

    pub(crate) fn rm_tx(&mut self, tx: u32, path: &str) -> Result<(), Error> {
        let p = self.op(MsgType::Rm, |id| request::rm(id, tx, path))?;
        self.checked(reply::ok(&p))
    }

    pub(crate) fn directory_tx(&mut self, tx: u32, path: &str) -> Result<Vec<String>, Error> {
        match self.op(MsgType::Directory, |id| request::directory(id, tx, path)) {
            Ok(p) => self.checked(reply::directory(&p)),
            // Too many children for one reply: page through them.
            Err(Error::Xenstore(XsErrno::TooBig)) => self.directory_parts(tx, path),
            Err(e) => Err(e),
        }
    }

    fn directory_parts(&mut self, tx: u32, path: &str) -> Result<Vec<String>, Error> {
        // The listing may change between parts (generation changes): start
        // over, a bounded number of times.
        for _ in 0..DEFAULT_TX_ATTEMPTS {
            let mut names = Vec::new();
            let mut offset: u32 = 0;
            let mut generation = None;
            loop {
                let p = self.op(MsgType::DirectoryPart, |id| {
                    request::directory_part(id, tx, path, offset)
                })?;
                let (gen, part, last) = self.checked(reply::directory_part(&p))?;
                if generation.is_some_and(|g| g != gen) {
                    break;
                }
                generation = Some(gen);
                if !last && part.is_empty() {
                    // No progress: the daemon would loop us forever.
                    return self.poison(Error::Protocol(DecodeError::BadDirectoryPart));
                }
                for n in &part {
                    offset = offset.saturating_add(n.len() as u32 + 1);
                }
                names.extend(part);
                if last {
                    return Ok(names);
                }
            }
        }
        Err(Error::RetriesExhausted {
            attempts: DEFAULT_TX_ATTEMPTS,
        })
    }

    pub(crate) fn get_perms_tx(&mut self, tx: u32, path: &str) -> Result<Vec<Perm>, Error> {
        let p = self.op(MsgType::GetPerms, |id| request::get_perms(id, tx, path))?;
        self.checked(reply::perms(&p))
    }

    pub(crate) fn set_perms_tx(
        &mut self,
        tx: u32,
        path: &str,
        perms: &[Perm],
    ) -> Result<(), Error> {
        let p = self.op(MsgType::SetPerms, |id| {
            request::set_perms(id, tx, path, perms)
        })?;
        self.checked(reply::ok(&p))
    }

    /// Reads a node's value.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, Error> {
        self.read_tx(0, path)
    }

    /// Reads a node's value as UTF-8 text.
    pub fn read_string(&mut self, path: &str) -> Result<String, Error> {
        let v = self.read(path)?;
        String::from_utf8(v).map_err(|_| Error::Protocol(DecodeError::NotUtf8))
    }

    /// Reads a node, `Ok(None)` if it does not exist.
    pub fn read_opt(&mut self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.read(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a node's value (creating it and its parents).
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Error> {
        self.write_tx(0, path, value)
    }

    /// Creates a node with an empty value (no error if it exists).
    pub fn mkdir(&mut self, path: &str) -> Result<(), Error> {
        self.mkdir_tx(0, path)
    }

    /// Removes a node and everything below it.
    pub fn rm(&mut self, path: &str) -> Result<(), Error> {
        self.rm_tx(0, path)
    }

    /// Lists a node's children (paging with `DIRECTORY_PART` when the
    /// listing exceeds one reply).
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, Error> {
        self.directory_tx(0, path)
    }

    /// A node's permissions (owner first).
    pub fn get_perms(&mut self, path: &str) -> Result<Vec<Perm>, Error> {
        self.get_perms_tx(0, path)
    }

    /// Sets a node's permissions (owner first).
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), Error> {
        self.set_perms_tx(0, path, perms)
    }

    /// `GET_DOMAIN_PATH`: `/local/domain/<domid>`.
    pub fn get_domain_path(&mut self, domid: u32) -> Result<String, Error> {
        let p = self.op(MsgType::GetDomainPath, |id| {
            request::get_domain_path(id, domid)
        })?;
        self.checked(reply::string(&p))
    }

    /// `INTRODUCE` a domain whose ring page is at `mfn` and whose xenstore
    /// event channel is `port` (privileged).
    pub fn introduce(&mut self, domid: u32, mfn: u64, port: u32) -> Result<(), Error> {
        let p = self.op(MsgType::Introduce, |id| {
            request::introduce(id, domid, mfn, port)
        })?;
        self.checked(reply::ok(&p))
    }

    /// `RELEASE` a domain (privileged).
    pub fn release(&mut self, domid: u32) -> Result<(), Error> {
        let p = self.op(MsgType::Release, |id| request::release(id, domid))?;
        self.checked(reply::ok(&p))
    }

    /// `IS_DOMAIN_INTRODUCED` (privileged).
    pub fn is_domain_introduced(&mut self, domid: u32) -> Result<bool, Error> {
        let p = self.op(MsgType::IsDomainIntroduced, |id| {
            request::is_domain_introduced(id, domid)
        })?;
        self.checked(reply::boolean(&p))
    }

    /// Registers a watch on `path` (and everything below it). The daemon
    /// fires it once straight away; it may also fire spuriously.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), Error> {
        let p = self.op(MsgType::Watch, |id| request::watch(id, path, token))?;
        self.checked(reply::ok(&p))
    }

    /// Removes a watch. Events it queued before are not removed.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), Error> {
        let p = self.op(MsgType::Unwatch, |id| request::unwatch(id, path, token))?;
        self.checked(reply::ok(&p))
    }

    /// Removes all of this connection's watches.
    pub fn reset_watches(&mut self) -> Result<(), Error> {
        let p = self.op(MsgType::ResetWatches, request::reset_watches)?;
        self.checked(reply::ok(&p))
    }

    /// A queued watch event, without waiting.
    pub fn try_next_event(&mut self) -> Option<WatchEvent> {
        self.events.pop_front()
    }

    /// Number of queued watch events.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// The next watch event, waiting up to `timeout` (`None`: the
    /// transport's default) for one. A timeout here leaves the client
    /// usable (no reply was due).
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<WatchEvent, Error> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Ok(ev);
            }
            self.receive_events(timeout)?;
        }
    }

    /// The next watch event carrying `token`, waiting up to `timeout` for
    /// more to arrive. Events for other tokens stay queued, in order.
    pub fn next_event_for(
        &mut self,
        token: &str,
        timeout: Option<Duration>,
    ) -> Result<WatchEvent, Error> {
        loop {
            if let Some(i) = self.events.iter().position(|e| e.token == token) {
                if let Some(ev) = self.events.remove(i) {
                    return Ok(ev);
                }
            }
            self.receive_events(timeout)?;
        }
    }

    /// Reads once from the transport (waiting up to `timeout`) and queues
    /// the watch events that completed.
    fn receive_events(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        match self.pump(timeout) {
            Ok(()) => {}
            Err(TransportError::TimedOut) => {
                return Err(Error::Transport(TransportError::TimedOut))
            }
            Err(e) => return self.poison(Error::Transport(e)),
        }
        if let Some(m) = self.next_non_event()? {
            // No request is outstanding: any reply is out of sync.
            return self.poison(Error::Protocol(DecodeError::UnexpectedReqId {
                expected: 0,
                got: m.req_id,
            }));
        }
        Ok(())
    }

    /// Starts a transaction, returning its id.
    pub fn transaction_start(&mut self) -> Result<u32, Error> {
        let p = self.op(MsgType::TransactionStart, request::transaction_start)?;
        self.checked(reply::transaction_id(&p))
    }

    /// Ends a transaction: commit (`EAGAIN` means rerun it) or abort.
    pub fn transaction_end(&mut self, tx: u32, commit: bool) -> Result<(), Error> {
        let p = self.op(MsgType::TransactionEnd, |id| {
            request::transaction_end(id, tx, commit)
        })?;
        self.checked(reply::ok(&p))
    }

    /// Runs `body` in a transaction and commits it. If the commit (or any
    /// operation inside) fails with `EAGAIN`, the whole of `body` runs again
    /// in a new transaction, at most `max_attempts` times. Any other error
    /// from `body` aborts the transaction and is returned.
    pub fn transaction<R>(
        &mut self,
        max_attempts: u32,
        mut body: impl FnMut(&mut Transaction<'_, T>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        for _ in 0..max_attempts {
            let id = self.transaction_start()?;
            let outcome = body(&mut Transaction { client: self, id });
            match outcome {
                Ok(value) => match self.transaction_end(id, true) {
                    Ok(()) => return Ok(value),
                    Err(e) if e.is_again() => continue,
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    if !self.poisoned {
                        // The daemon may already have dropped the
                        // transaction (ENOENT): nothing else to undo.
                        match self.transaction_end(id, false) {
                            Ok(()) | Err(Error::Xenstore(_)) => {}
                            Err(abort) => return Err(abort),
                        }
                    }
                    if e.is_again() {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(Error::RetriesExhausted {
            attempts: max_attempts,
        })
    }
}

/// Operations inside a transaction started by [`Client::transaction`].
#[derive(Debug)]
pub struct Transaction<'a, T> {
    client: &'a mut Client<T>,
    id: u32,
}

impl<T: Transport> Transaction<'_, T> {
    /// The transaction id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Reads a node.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, Error> {
        self.client.read_tx(self.id, path)
    }

    /// Reads a node, `Ok(None)` if it does not exist.
    pub fn read_opt(&mut self, path: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.read(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a node.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Error> {
        self.client.write_tx(self.id, path, value)
    }

    /// Creates a node.
    pub fn mkdir(&mut self, path: &str) -> Result<(), Error> {
        self.client.mkdir_tx(self.id, path)
    }

    /// Removes a node.
    pub fn rm(&mut self, path: &str) -> Result<(), Error> {
        self.client.rm_tx(self.id, path)
    }

    /// Lists a node's children.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, Error> {
        self.client.directory_tx(self.id, path)
    }

    /// A node's permissions.
    pub fn get_perms(&mut self, path: &str) -> Result<Vec<Perm>, Error> {
        self.client.get_perms_tx(self.id, path)
    }

    /// Sets a node's permissions.
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), Error> {
        self.client.set_perms_tx(self.id, path, perms)
    }
}

/// The event channel side of a ring transport, provided by the platform.
pub trait RingEvents {
    /// Notifies the daemon (we produced or consumed bytes).
    fn notify(&mut self);
    /// Waits until the daemon may have notified us, up to `timeout`.
    /// Spurious returns are fine, but a notification sent after the caller
    /// last looked at the ring must not be lost (event channels latch).
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError>;
}

/// A [`Transport`] over the guest's xenstore ring page.
#[derive(Debug)]
pub struct RingTransport<E> {
    ring: XenstoreRing,
    events: E,
}

impl<E: RingEvents> RingTransport<E> {
    /// A transport over the guest end of `ring`, notified through `events`.
    pub fn new(ring: XenstoreRing, events: E) -> Self {
        RingTransport { ring, events }
    }

    /// The ring.
    pub fn ring(&self) -> &XenstoreRing {
        &self.ring
    }
}

impl<E: RingEvents> RingTransport<E> {
    /// Before sleeping: a daemon that advertises the `error` field may have
    /// stopped serving us because it considers *us* faulty.
    fn server_error(&self) -> Result<(), TransportError> {
        if self.ring.server_features() & SERVER_FEATURE_ERROR != 0 {
            let code = self.ring.error();
            if code != 0 {
                return Err(TransportError::ServerError { code });
            }
        }
        Ok(())
    }
}

impl<E: RingEvents> RingTransport<E> {
    /// Resets the ring with the daemon (`xenstore-ring.txt` reconnection),
    /// waiting up to `timeout` per wake-up. Refused (`Ok(false)`) when the
    /// daemon does not advertise the feature. Afterwards make a new
    /// [`Client`] over this transport (or call [`Client::reset`]): all
    /// watches and transactions are gone and must be re-established.
    pub fn reconnect(&mut self, timeout: Option<Duration>) -> Result<bool, TransportError> {
        if self.ring.server_features() & SERVER_FEATURE_RECONNECTION == 0 {
            return Ok(false);
        }
        self.ring.begin_reconnect();
        self.events.notify();
        while !self.ring.reconnect_done() {
            self.server_error()?;
            self.events.wait(timeout)?;
        }
        Ok(true)
    }
}

impl<E: RingEvents> Transport for RingTransport<E> {
    fn send(&mut self, frame: &[u8], timeout: Option<Duration>) -> Result<(), TransportError> {
        let mut off = 0;
        while off < frame.len() {
            let n = self.ring.write(&frame[off..])?;
            if n > 0 {
                off += n;
                self.events.notify();
            } else {
                self.server_error()?;
                self.events.wait(timeout)?;
            }
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> Result<usize, TransportError> {
        if buf.is_empty() {
            return Err(TransportError::TimedOut);
        }
        loop {
            let n = self.ring.read(buf)?;
            if n > 0 {
                // The daemon may be waiting for room in the response ring.
                self.events.notify();
                return Ok(n);
            }
            self.server_error()?;
            self.events.wait(timeout)?;
        }
    }
}
