//! The unix socket a device serves on: one per disk or switch port, bound
//! once at start-up and polled by the device's server thread, so the thread
//! can see a stop request between connections.

use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vhost::vhost_user::Listener;

/// Why a device's socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process accepts connections on it (a second daemon).
    #[error("socket {path} is in use by another process")]
    InUse { path: PathBuf },
    #[error("cannot listen on {path}: {message}")]
    Bind { path: PathBuf, message: String },
}

/// Binds `path`. A socket file nobody listens on (left by a daemon killed
/// before it cleaned up) is replaced; a live one is refused. The returned
/// listener removes its socket file when dropped.
pub fn bind(path: &Path) -> Result<Listener, ListenError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ListenError::InUse {
                path: path.to_owned(),
            });
        }
        // A stale socket from a previous run (killed before cleaning up).
        let _ = std::fs::remove_file(path);
    }
    Listener::new(path, false).map_err(|e| ListenError::Bind {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Waits up to `timeout` for the listener to have a pending connection.
pub fn readable(listener: &impl AsRawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll(2) on one pollfd that lives on this stack frame for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_socket_is_refused_stale_one_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dev.sock");
        let live = bind(&path).expect("bind");
        assert!(!readable(&live, Duration::ZERO), "nothing pending yet");
        // The in-use check connects: that connection is now pending.
        assert!(matches!(bind(&path), Err(ListenError::InUse { .. })));
        assert!(readable(&live, Duration::from_secs(10)));
        drop(live);
        assert!(!path.exists(), "the listener removes its socket file");
        // A socket file nobody listens on, as a killed daemon leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        assert!(path.exists());
        let again = bind(&path).expect("a stale socket is replaced");
        assert!(!readable(&again, Duration::ZERO));
    }
}
