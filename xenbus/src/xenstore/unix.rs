//! The xenstore daemon's unix socket (`std`): what dom0 tools and host-side
//! backends use (`XENSTORED_PATH`, else `/var/run/xenstored/socket`).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::{Client, Transport, TransportError};

/// Default wait for a reply: generous, so a loaded machine does not fail a
/// request, but a dead daemon does not hang the caller forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the daemon's socket is: `$XENSTORED_PATH`, else
/// `$XENSTORED_RUNDIR/socket`, else `/var/run/xenstored/socket` (the same
/// order as libxenstore).
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("XENSTORED_PATH") {
        return PathBuf::from(p);
    }
    let dir = std::env::var_os("XENSTORED_RUNDIR")
        .map_or_else(|| PathBuf::from("/var/run/xenstored"), PathBuf::from);
    dir.join("socket")
}

/// A [`Transport`] over a connected unix stream.
#[derive(Debug)]
pub struct UnixTransport {
    stream: UnixStream,
    default_timeout: Duration,
}

impl UnixTransport {
    /// Connects to the socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(UnixTransport {
            stream: UnixStream::connect(path)?,
            default_timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: UnixStream) -> Self {
        UnixTransport {
            stream,
            default_timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the wait used when a call passes no timeout.
    pub fn set_default_timeout(&mut self, timeout: Duration) {
        self.default_timeout = timeout;
    }

    /// The underlying stream (e.g. to shut it down in a test).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

fn map_io(e: io::Error) -> TransportError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TransportError::TimedOut,
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::NotConnected => TransportError::Closed,
        _ => TransportError::Io(e),
    }
}

impl Transport for UnixTransport {
    fn send(&mut self, frame: &[u8], timeout: Option<Duration>) -> Result<(), TransportError> {
        let t = timeout
            .unwrap_or(self.default_timeout)
            .max(Duration::from_millis(1));
        self.stream
            .set_write_timeout(Some(t))
            .map_err(TransportError::Io)?;
        self.stream.write_all(frame).map_err(map_io)
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Option<Duration>) -> Result<usize, TransportError> {
        if buf.is_empty() {
            return Err(TransportError::TimedOut);
        }
        // A zero timeout means "block forever" to the OS: clamp it.
        let t = timeout
            .unwrap_or(self.default_timeout)
            .max(Duration::from_millis(1));
        self.stream
            .set_read_timeout(Some(t))
            .map_err(TransportError::Io)?;
        loop {
            return match self.stream.read(buf) {
                Ok(0) => Err(TransportError::Closed),
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(map_io(e)),
            };
        }
    }
}

/// A client over the daemon's unix socket.
pub type UnixClient = Client<UnixTransport>;

impl Client<UnixTransport> {
    /// Connects to the daemon's socket at `path`.
    pub fn connect_unix(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Client::new(UnixTransport::connect(path)?))
    }

    /// Connects to [`default_socket_path`].
    pub fn connect_default() -> io::Result<Self> {
        Self::connect_unix(default_socket_path())
    }
}
