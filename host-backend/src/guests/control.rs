//! The control socket: how `pvbackend guests shutdown|restore|list` (and
//! the systemd unit that runs them) talk to a running daemon.
//!
//! A unix stream socket (default under the runtime directory, see
//! [`super::config::default_control_socket`]; mode `control_mode`, 0600 by
//! default, so only its owner may stop the host's guests). One request
//! per connection: one JSON line in, one JSON line out.
//!
//! ```text
//! -> {"cmd": "shutdown", "deadline_ms": 20000, "save_ms": 9000}   (save_ms optional)
//! <- {"ok": true, "reports": [ {report}, ... ]}
//! -> {"cmd": "restore", "deadline_ms": 60000}
//! -> {"cmd": "list"}
//! <- {"ok": true, "guests": [ {"guest", "status", "pid", "saved_state"}, ... ]}
//! <- {"ok": false, "error": "..."}
//! ```
//!
//! What it refuses: requests longer than 64 KiB or not sent within 10 s,
//! unknown commands, and a second daemon on a socket a live one serves.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{info, warn};
use serde_json::{json, Value};

use super::lifecycle::{Guests, Plan};

const MAX_REQUEST: u64 = 64 << 10;

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: another pvbackend is serving it")]
    InUse { path: PathBuf },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The serving side, on the daemon's `control` thread.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    thread: JoinHandle<()>,
}

impl ControlServer {
    /// Binds `path` with `mode` and serves `guests` until `stop`.
    pub fn start(
        path: &Path,
        mode: u32,
        guests: Arc<Guests>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_owned(),
            source,
        };
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_owned(),
            });
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // A socket left by a daemon that was killed: nobody answers on it.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        // Between bind and chmod the socket has the umask's mode; the
        // daemon's directory (RuntimeDirectoryMode=0750 or tighter) covers
        // that window.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        info!("control socket {} (mode {mode:o})", path.display());
        let thread = crate::worker::spawn("control".into(), move || {
            crate::sandbox::enter(crate::sandbox::Class::Guests);
            while !stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let g = guests.clone();
                        let spawned = std::thread::Builder::new()
                            .name("control-conn".into())
                            .spawn(move || serve(s, &g));
                        if let Err(e) = spawned {
                            warn!("control: cannot start a connection thread: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        warn!("control: accept: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
        .map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            thread,
        })
    }

    /// Stops accepting and removes the socket (a command in hand runs on
    /// to its own deadline on its thread).
    pub fn stop(self) {
        let _ = self.thread.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn ms(v: &Value, key: &str) -> Option<Duration> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(Duration::from_millis)
}

/// Answers one request.
pub fn handle(req: &Value, guests: &Guests) -> Value {
    match req.get("cmd").and_then(Value::as_str) {
        Some("shutdown") => {
            let Some(t) = ms(req, "deadline_ms") else {
                return json!({"ok": false, "error": "shutdown needs deadline_ms"});
            };
            let plan = Plan::new(t, ms(req, "save_ms"));
            info!(
                "guests: shutdown, deadline {:?} (save until {:?}, ACPI until {:?})",
                plan.deadline,
                plan.save,
                plan.deadline.saturating_sub(plan.margin)
            );
            let reports = guests.shutdown(plan);
            for r in &reports {
                info!(
                    "guests: '{}' {} after {} ms{}",
                    r.guest,
                    r.outcome,
                    r.total_ms,
                    r.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
            }
            json!({"ok": true, "reports": reports})
        }
        Some("restore") => {
            let Some(t) = ms(req, "deadline_ms") else {
                return json!({"ok": false, "error": "restore needs deadline_ms"});
            };
            info!("guests: restore, deadline {t:?}");
            json!({"ok": true, "reports": guests.restore(t)})
        }
        Some("list") => json!({"ok": true, "guests": guests.list()}),
        other => json!({"ok": false, "error": format!("unknown command {other:?}")}),
    }
}

fn serve(s: UnixStream, guests: &Guests) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = Vec::new();
    let read = BufReader::new(&s)
        .take(MAX_REQUEST)
        .read_until(b'\n', &mut line);
    let reply = match read {
        Ok(_) if line.ends_with(b"\n") => match serde_json::from_slice::<Value>(&line) {
            Ok(req) => handle(&req, guests),
            Err(e) => json!({"ok": false, "error": format!("request is not JSON: {e}")}),
        },
        Ok(_) => json!({"ok": false, "error": "request too long or not a line"}),
        Err(e) => json!({"ok": false, "error": format!("reading the request: {e}")}),
    };
    let mut w = &s;
    let _ = writeln!(w, "{reply}");
}

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "pvbackend is not running (nothing listens on {path}): start it \
         (systemctl start pvbackend) or point at its socket with --control PATH"
    )]
    NotRunning { path: PathBuf },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pvbackend: {0}")]
    Daemon(String),
    #[error("control socket {path}: bad reply: {reply}")]
    BadReply { path: PathBuf, reply: String },
}

/// Sends `req` to the daemon on `path`, waits up to `timeout`, returns
/// the reply (whose `ok` was true).
pub fn request(path: &Path, req: &Value, timeout: Duration) -> Result<Value, ClientError> {
    let io = |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    let s = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning {
                path: path.to_owned(),
            }
        }
        _ => io(e),
    })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut w = &s;
    writeln!(w, "{req}").map_err(io)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(io)?;
    let v: Value = serde_json::from_str(&line).map_err(|_| ClientError::BadReply {
        path: path.to_owned(),
        reply: line.clone(),
    })?;
    if v["ok"] == json!(true) {
        Ok(v)
    } else {
        Err(ClientError::Daemon(
            v["error"].as_str().unwrap_or("(no reason)").to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guests::config::{GuestEntry, GuestsConfig};
    use crate::guests::mux::Registry;

    #[test]
    fn requests_round_trip_and_a_missing_daemon_names_the_fix() {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("run/control.sock");
        let e =
            request(&sock, &json!({"cmd": "list"}), Duration::from_secs(5)).expect_err("no daemon");
        let msg = e.to_string();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{msg}");
        assert!(
            msg.contains("not running") && msg.contains("--control") && !msg.contains('\n'),
            "{msg}"
        );
        let guest = |name: &str, qmp: &str| GuestEntry {
            name: name.into(),
            qmp: dir.path().join(qmp),
            pid_file: None,
            state_dir: None,
            save_bandwidth_mib: None,
            restore_command: Vec::new(),
        };
        let cfg = GuestsConfig {
            guests: vec![guest("a", "a.qmp"), guest("a", "b.qmp")],
            state_dir: Some(dir.path().to_owned()),
            ..GuestsConfig::default()
        };
        let guests = Arc::new(Guests::new(cfg, Arc::new(Registry::new())));
        let stop = Arc::new(AtomicBool::new(false));
        let server =
            ControlServer::start(&sock, 0o600, guests.clone(), stop.clone()).expect("start");
        let mode = std::fs::metadata(&sock)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            ControlServer::start(&sock, 0o600, guests, stop.clone()),
            Err(ControlError::InUse { .. })
        ));
        let v = request(&sock, &json!({"cmd": "list"}), Duration::from_secs(30)).expect("list");
        assert_eq!(v["guests"].as_array().map(Vec::len), Some(2));
        assert!(v["guests"][0]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("down")));
        // No QEMU behind either socket: the first is not running, the
        // second is refused for its name, and the command still answers.
        let v = request(
            &sock,
            &json!({"cmd": "shutdown", "deadline_ms": 2000}),
            Duration::from_secs(30),
        )
        .expect("shutdown");
        assert_eq!(v["reports"][0]["outcome"], "not_running");
        assert_eq!(v["reports"][1]["outcome"], "refused");
        assert!(v["reports"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("duplicate guest name 'a'")));
        let e = request(&sock, &json!({"cmd": "reboot"}), Duration::from_secs(30))
            .expect_err("unknown");
        assert!(e.to_string().contains("unknown command"), "{e}");
        stop.store(true, Ordering::Release);
        server.stop();
        assert!(!sock.exists());
    }
}
