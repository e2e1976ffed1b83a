//! The unix socket a device serves on: one per disk or switch port, bound
//! once at start-up and polled by the device's server thread, so the thread
//! can see a stop request between connections.

use std::os::unix::fs::PermissionsExt;
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
    #[error("socket {path}: {message}")]
    Access { path: PathBuf, message: String },
}

/// Who may connect to a device's socket: its owner, group and mode, set
/// right after the bind (before the daemon reports ready). Unset fields
/// keep what the bind gave (the daemon's user and group, mode from its
/// umask). An unprivileged QEMU (libvirt's `libvirt-qemu` user) needs
/// `socket_group` (e.g. `kvm`, or `libvirt-qemu`) and `socket_mode = "0660"`,
/// or `socket_owner = "libvirt-qemu"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketAccess {
    pub owner: Option<String>,
    pub group: Option<String>,
    /// Octal, e.g. `"0660"`.
    pub mode: Option<String>,
}

/// A [`SocketAccess`] with names resolved to ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolvedAccess {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
}

impl SocketAccess {
    /// Resolves the user and group names (numeric ids are taken as they
    /// are) and parses the mode; the message names the field at fault.
    pub fn resolve(&self) -> Result<ResolvedAccess, String> {
        let uid = match &self.owner {
            None => None,
            Some(o) => Some(match o.parse::<u32>() {
                Ok(id) => id,
                Err(_) => nix::unistd::User::from_name(o)
                    .map_err(|e| format!("socket_owner '{o}': {e}"))?
                    .ok_or_else(|| format!("socket_owner '{o}': no such user"))?
                    .uid
                    .as_raw(),
            }),
        };
        let gid = match &self.group {
            None => None,
            Some(g) => Some(match g.parse::<u32>() {
                Ok(id) => id,
                Err(_) => nix::unistd::Group::from_name(g)
                    .map_err(|e| format!("socket_group '{g}': {e}"))?
                    .ok_or_else(|| format!("socket_group '{g}': no such group"))?
                    .gid
                    .as_raw(),
            }),
        };
        let mode = match &self.mode {
            None => None,
            Some(m) => Some(
                u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|&v| v <= 0o777)
                    .ok_or_else(|| {
                        format!("socket_mode '{m}' is not an octal mode such as \"0660\"")
                    })?,
            ),
        };
        Ok(ResolvedAccess { uid, gid, mode })
    }

    /// Applies the access to the socket file at `path`.
    pub fn apply(&self, path: &Path) -> Result<(), ListenError> {
        let err = |message: String| ListenError::Access {
            path: path.to_owned(),
            message,
        };
        let r = self.resolve().map_err(err)?;
        if r.uid.is_some() || r.gid.is_some() {
            std::os::unix::fs::chown(path, r.uid, r.gid).map_err(|e| err(format!("chown: {e}")))?;
        }
        if let Some(mode) = r.mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| err(format!("chmod {mode:o}: {e}")))?;
        }
        Ok(())
    }
}

/// [`bind`], then sets the socket's owner, group and mode.
pub fn bind_with(path: &Path, access: &SocketAccess) -> Result<Listener, ListenError> {
    let listener = bind(path)?;
    // On error the listener drops and removes its socket file.
    access.apply(path)?;
    Ok(listener)
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
    fn access_sets_group_and_mode_and_names_bad_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dev.sock");
        // Our own group, by number: allowed for any user.
        let gid = nix::unistd::getgid().as_raw();
        let access = SocketAccess {
            owner: None,
            group: Some(gid.to_string()),
            mode: Some("0660".into()),
        };
        let l = bind_with(&path, &access).expect("bind");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), gid);
        drop(l);
        let bad = |a: SocketAccess| a.resolve().expect_err("refused");
        let e = bad(SocketAccess {
            mode: Some("rw-rw----".into()),
            ..SocketAccess::default()
        });
        assert!(e.contains("socket_mode"), "{e}");
        assert!(bad(SocketAccess {
            mode: Some("1777".into()),
            ..SocketAccess::default()
        })
        .contains("socket_mode"));
        let e = bad(SocketAccess {
            owner: Some("no-such-user-pvdrivers".into()),
            ..SocketAccess::default()
        });
        assert!(
            e.contains("socket_owner") && e.contains("no such user"),
            "{e}"
        );
        let e = bad(SocketAccess {
            group: Some("no-such-group-pvdrivers".into()),
            ..SocketAccess::default()
        });
        assert!(
            e.contains("socket_group") && e.contains("no such group"),
            "{e}"
        );
        assert_eq!(
            SocketAccess::default().resolve().expect("nothing to set"),
            ResolvedAccess::default()
        );
    }

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
