//! Xenbus device states (`xen/io/xenbus.h`) and a helper for one end of a
//! frontend/backend pair.
//!
//! Each end writes its own `<dir>/state` and watches the peer's. The
//! handshake (PROTOCOLS.md §2, §5): both Initialising; backend publishes
//! features and goes InitWait; frontend reads them, publishes its keys and
//! goes Initialised; backend connects and goes Connected; frontend goes
//! Connected. Closing: the initiator goes Closing, the peer quiesces and goes
//! Closed, the initiator goes Closed. Either end may skip states (a backend
//! can go straight from InitWait to Connected, a peer may be seen only in
//! its final state because the watch fired late), so waits take a predicate
//! ("at least Initialised") rather than an exact state.
//!
//! [`ShutdownWatcher`] is the guest's `control/shutdown` handler: feature
//! advertisement and transactional acknowledgement of toolstack commands.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use super::client::{Client, Error, Transport, DEFAULT_TX_ATTEMPTS};

/// `enum xenbus_state`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XenbusState {
    /// 0: no state written yet (or the node is missing).
    Unknown = 0,
    /// 1: setting up.
    Initialising = 1,
    /// 2: waiting for the peer's details (backend: features published).
    InitWait = 2,
    /// 3: details published (frontend: rings and event channels).
    Initialised = 3,
    /// 4: connected.
    Connected = 4,
    /// 5: closing down.
    Closing = 5,
    /// 6: closed.
    Closed = 6,
    /// 7: reconfiguring.
    Reconfiguring = 7,
    /// 8: reconfigured.
    Reconfigured = 8,
}

impl XenbusState {
    /// The state with this number.
    pub fn from_u32(v: u32) -> Option<Self> {
        use XenbusState::*;
        [
            Unknown,
            Initialising,
            InitWait,
            Initialised,
            Connected,
            Closing,
            Closed,
            Reconfiguring,
            Reconfigured,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    /// Parses a `state` node's value (decimal; a trailing `\0` or newline,
    /// as some tools write, is accepted).
    pub fn parse(value: &[u8]) -> Option<Self> {
        let v = value
            .strip_suffix(b"\0")
            .or_else(|| value.strip_suffix(b"\n"))
            .unwrap_or(value);
        super::wire::parse_u32(v).and_then(Self::from_u32)
    }

    /// True for Closing and Closed: the peer is going away.
    pub fn is_closing(self) -> bool {
        matches!(self, XenbusState::Closing | XenbusState::Closed)
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", *self as u32)
    }
}

/// One end of a xenbus device: its own directory, the peer's, and the watch
/// token it uses for the peer's `state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XenbusEndpoint {
    own: String,
    peer: String,
    token: String,
}

impl XenbusEndpoint {
    /// An endpoint writing under `own_dir` and watching `peer_dir/state`.
    pub fn new(own_dir: &str, peer_dir: &str, token: &str) -> Self {
        XenbusEndpoint {
            own: String::from(own_dir),
            peer: String::from(peer_dir),
            token: String::from(token),
        }
    }

    /// Our directory.
    pub fn own_dir(&self) -> &str {
        &self.own
    }

    /// The peer's directory.
    pub fn peer_dir(&self) -> &str {
        &self.peer
    }

    /// Our watch token.
    pub fn token(&self) -> &str {
        &self.token
    }

    fn peer_state_path(&self) -> String {
        format!("{}/state", self.peer)
    }

    /// Starts watching the peer's `state` (fires once straight away).
    pub fn watch_peer<T: Transport>(&self, c: &mut Client<T>) -> Result<(), Error> {
        c.watch(&self.peer_state_path(), &self.token)
    }

    /// Stops watching the peer's `state`.
    pub fn unwatch_peer<T: Transport>(&self, c: &mut Client<T>) -> Result<(), Error> {
        c.unwatch(&self.peer_state_path(), &self.token)
    }

    /// Writes our `state`.
    pub fn set_state<T: Transport>(
        &self,
        c: &mut Client<T>,
        state: XenbusState,
    ) -> Result<(), Error> {
        c.write(
            &format!("{}/state", self.own),
            format!("{state}").as_bytes(),
        )
    }

    /// Our `state` as the store has it (Unknown if missing).
    pub fn own_state<T: Transport>(&self, c: &mut Client<T>) -> Result<XenbusState, Error> {
        self.read_state(c, &format!("{}/state", self.own))
    }

    /// Publishes `entries` (keys relative to our directory) and then, in the
    /// same transaction, our new `state`, so the peer never sees the state
    /// without the keys. Reruns on EAGAIN.
    pub fn publish<T: Transport>(
        &self,
        c: &mut Client<T>,
        entries: &[(&str, &[u8])],
        state: Option<XenbusState>,
    ) -> Result<(), Error> {
        let own = self.own.clone();
        c.transaction(DEFAULT_TX_ATTEMPTS, |tx| {
            for (k, v) in entries {
                tx.write(&format!("{own}/{k}"), v)?;
            }
            if let Some(s) = state {
                tx.write(&format!("{own}/state"), format!("{s}").as_bytes())?;
            }
            Ok(())
        })
    }

    /// Reads the keys `names` from the peer's directory (missing ones are
    /// `None`) in one transaction, so they are consistent with each other.
    pub fn read_peer<T: Transport>(
        &self,
        c: &mut Client<T>,
        names: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let peer = self.peer.clone();
        c.transaction(DEFAULT_TX_ATTEMPTS, |tx| {
            names
                .iter()
                .map(|n| tx.read_opt(&format!("{peer}/{n}")))
                .collect()
        })
    }

    fn read_state<T: Transport>(
        &self,
        c: &mut Client<T>,
        path: &str,
    ) -> Result<XenbusState, Error> {
        match c.read_opt(path)? {
            None => Ok(XenbusState::Unknown),
            Some(v) => XenbusState::parse(&v).ok_or_else(|| Error::InvalidNode {
                path: String::from(path),
            }),
        }
    }

    /// The peer's `state` (Unknown if it has none yet).
    pub fn peer_state<T: Transport>(&self, c: &mut Client<T>) -> Result<XenbusState, Error> {
        self.read_state(c, &self.peer_state_path())
    }

    /// Waits until the peer's state satisfies `pred`, re-reading it after
    /// every watch event (so spurious and coalesced events are harmless and
    /// skipped states are seen as whatever state the peer is in now).
    /// Requires [`XenbusEndpoint::watch_peer`] first. `timeout` bounds each
    /// wait for an event; a peer that never changes state yields
    /// `Error::Transport(TimedOut)`.
    pub fn wait_peer<T: Transport>(
        &self,
        c: &mut Client<T>,
        timeout: Option<Duration>,
        mut pred: impl FnMut(XenbusState) -> bool,
    ) -> Result<XenbusState, Error> {
        loop {
            let s = self.peer_state(c)?;
            if pred(s) {
                return Ok(s);
            }
            c.next_event_for(&self.token, timeout)?;
        }
    }

    /// Initiates a close: Closing, wait for the peer to be Closed (or gone:
    /// a removed `state` reads as Unknown), then Closed. The caller must
    /// have quiesced its own side before and calls
    /// [`XenbusEndpoint::watch_peer`] first. Returns the peer's final state.
    pub fn close<T: Transport>(
        &self,
        c: &mut Client<T>,
        timeout: Option<Duration>,
    ) -> Result<XenbusState, Error> {
        self.set_state(c, XenbusState::Closing)?;
        let peer = self.wait_peer(c, timeout, |s| {
            matches!(s, XenbusState::Closed | XenbusState::Unknown)
        })?;
        self.set_state(c, XenbusState::Closed)?;
        Ok(peer)
    }

    /// Starts over (after the peer closed, or after a resume): back to
    /// Initialising, with the watch on the peer re-registered (a new store
    /// connection has no watches; `EEXIST` from an old one is fine).
    pub fn restart<T: Transport>(&self, c: &mut Client<T>) -> Result<(), Error> {
        match self.watch_peer(c) {
            Ok(()) | Err(Error::Xenstore(super::wire::XsErrno::Exist)) => {}
            Err(e) => return Err(e),
        }
        self.set_state(c, XenbusState::Initialising)
    }

    /// Waits until the peer reached `state` or anything after it in the
    /// handshake order (so a skipped state does not block us).
    pub fn wait_peer_at_least<T: Transport>(
        &self,
        c: &mut Client<T>,
        state: XenbusState,
        timeout: Option<Duration>,
    ) -> Result<XenbusState, Error> {
        self.wait_peer(c, timeout, |s| s >= state)
    }
}

/// A command the toolstack writes to `control/shutdown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShutdownRequest {
    /// `poweroff`.
    Poweroff,
    /// `reboot`.
    Reboot,
    /// `suspend` (save, migrate): the guest must suspend and later learn
    /// whether it resumed in the same domain (cancelled) or a new one.
    Suspend,
    /// `halt`.
    Halt,
}

impl ShutdownRequest {
    /// The string the toolstack writes.
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownRequest::Poweroff => "poweroff",
            ShutdownRequest::Reboot => "reboot",
            ShutdownRequest::Suspend => "suspend",
            ShutdownRequest::Halt => "halt",
        }
    }

    /// Parses a `control/shutdown` value.
    pub fn parse(value: &[u8]) -> Option<Self> {
        [
            ShutdownRequest::Poweroff,
            ShutdownRequest::Reboot,
            ShutdownRequest::Suspend,
            ShutdownRequest::Halt,
        ]
        .into_iter()
        .find(|r| r.as_str().as_bytes() == value)
    }
}

/// The guest's `control/shutdown` watcher.
///
/// The guest advertises `control/feature-<cmd> = 1` for each command it
/// supports (again after every resume, which starts with a fresh store
/// connection), watches `control/shutdown`, and on each fire reads the
/// command and acknowledges it by writing `""` in the same transaction
/// (rerun on EAGAIN) so that a command written twice is acted on once. It
/// only acknowledges commands it supports; anything else is left in place,
/// so the toolstack sees no acknowledgement instead of a false one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownWatcher {
    control: String,
    token: String,
    supported: Vec<ShutdownRequest>,
}

impl ShutdownWatcher {
    /// A watcher for `<control_dir>/shutdown` (`control` relative to the
    /// guest's home, or an absolute path), handling `supported`.
    pub fn new(control_dir: &str, token: &str, supported: &[ShutdownRequest]) -> Self {
        ShutdownWatcher {
            control: String::from(control_dir),
            token: String::from(token),
            supported: supported.to_vec(),
        }
    }

    fn shutdown_path(&self) -> String {
        format!("{}/shutdown", self.control)
    }

    /// Writes `feature-<cmd> = 1` for every supported command and starts
    /// watching `shutdown` (the watch fires once straight away; call
    /// [`ShutdownWatcher::check`] for it). Call again after a resume.
    pub fn start<T: Transport>(&self, c: &mut Client<T>) -> Result<(), Error> {
        let control = self.control.clone();
        let supported = self.supported.clone();
        c.transaction(DEFAULT_TX_ATTEMPTS, |tx| {
            for r in &supported {
                tx.write(&format!("{control}/feature-{}", r.as_str()), b"1")?;
            }
            Ok(())
        })?;
        c.watch(&self.shutdown_path(), &self.token)
    }

    /// Reads `shutdown` and, if it holds a supported command, clears it in
    /// the same transaction and returns it. `Ok(None)` for an empty or
    /// missing node and for unsupported commands (left unacknowledged).
    pub fn check<T: Transport>(&self, c: &mut Client<T>) -> Result<Option<ShutdownRequest>, Error> {
        let path = self.shutdown_path();
        let supported = self.supported.clone();
        c.transaction(DEFAULT_TX_ATTEMPTS, |tx| {
            let Some(v) = tx.read_opt(&path)? else {
                return Ok(None);
            };
            match ShutdownRequest::parse(&v) {
                Some(r) if supported.contains(&r) => {
                    tx.write(&path, b"")?;
                    Ok(Some(r))
                }
                _ => Ok(None),
            }
        })
    }

    /// Waits for the next fire of the watch (up to `timeout`) and checks
    /// it. Spurious fires give `Ok(None)`.
    pub fn next<T: Transport>(
        &self,
        c: &mut Client<T>,
        timeout: Option<Duration>,
    ) -> Result<Option<ShutdownRequest>, Error> {
        c.next_event_for(&self.token, timeout)?;
        self.check(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_states() {
        assert_eq!(XenbusState::parse(b"4"), Some(XenbusState::Connected));
        assert_eq!(XenbusState::parse(b"6\n"), Some(XenbusState::Closed));
        assert_eq!(XenbusState::parse(b"1\0"), Some(XenbusState::Initialising));
        for bad in [&b""[..], b"9", b"-1", b"x", b"4 ", b"99999999999"] {
            assert_eq!(XenbusState::parse(bad), None);
        }
        assert!(XenbusState::Closing.is_closing());
        assert_eq!(format!("{}", XenbusState::InitWait), "2");
        assert_eq!(
            ShutdownRequest::parse(b"suspend"),
            Some(ShutdownRequest::Suspend)
        );
        assert_eq!(ShutdownRequest::parse(b"suspend\0"), None);
        assert_eq!(ShutdownRequest::parse(b""), None);
    }
}
