//! One QMP connection per guest, shared by everyone in the daemon.
//!
//! QEMU's QMP monitor serves one client at a time, so the daemon owns the
//! only connection to each guest and multiplexes it: a reader thread per
//! connection routes each reply to the caller waiting on its `id` and
//! copies every asynchronous event to each subscriber. The balloon
//! manager, the lifecycle commands (`pvbackend guests shutdown|restore`)
//! and the `guests list` table all go through a [`QmpMux`] taken from the
//! daemon's [`Registry`].
//!
//! What it refuses: lines longer than [`MAX_LINE`] (the connection is
//! closed), replies that are not JSON objects (skipped and logged), and
//! waiting past a command's timeout (the late reply is dropped when it
//! arrives: ids are never reused, so a timed-out command cannot desync the
//! stream for the next caller, unlike a single-client session).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::balloon::qmp::{parse_message, Message, QmpError, MAX_LINE};

/// Events buffered per subscriber; a subscriber that falls further behind
/// loses the newest (it is told nothing: events are hints, state is always
/// re-read with a command).
const EVENT_QUEUE: usize = 256;

type Reply = Result<Value, (String, String)>;

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: Mutex<UnixStream>,
    pending: Mutex<HashMap<u64, Sender<Reply>>>,
    subscribers: Mutex<Vec<SyncSender<(String, Value)>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    peer_pid: Option<u32>,
}

/// A shared, multiplexed QMP connection. Clones share the connection;
/// when the last clone is dropped the connection is closed (QEMU's
/// monitor is then free for the next client).
#[derive(Debug, Clone)]
pub struct QmpMux {
    inner: Arc<Inner>,
    _closer: Arc<Closer>,
}

/// Shuts the socket down when the last [`QmpMux`] goes: the reader thread
/// holds only `Inner`, so without this it would keep QEMU's one monitor
/// connection open forever.
#[derive(Debug)]
struct Closer(Arc<Inner>);

impl Drop for Closer {
    fn drop(&mut self) {
        if let Ok(w) = self.0.writer.lock() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The pid of the process at the other end of a unix socket
/// (`SO_PEERCRED`), None when the kernel does not say.
pub fn peer_pid(stream: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live unix socket owned by `stream`; `cred` and
    // `len` are valid for writes of `size_of::<ucred>()` bytes, which is
    // what `len` says, and the kernel writes at most that much.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// Reads one QMP line (newline excluded) within `deadline` (None: wait
/// forever). Ok(None) is a clean end of stream.
fn read_line(
    reader: &mut BufReader<UnixStream>,
    deadline: Option<Instant>,
) -> Result<Option<Vec<u8>>, QmpError> {
    let mut line = Vec::new();
    loop {
        let wait = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Err(QmpError::Timeout {
                        command: "greeting".into(),
                        timeout: Duration::ZERO,
                    });
                }
                Some((d - now).max(Duration::from_millis(1)))
            }
            None => None,
        };
        reader
            .get_ref()
            .set_read_timeout(wait)
            .map_err(QmpError::Io)?;
        let room = (MAX_LINE + 1).saturating_sub(line.len()) as u64;
        match reader.by_ref().take(room).read_until(b'\n', &mut line) {
            Ok(0) if line.len() > MAX_LINE => {
                return Err(QmpError::Malformed(format!(
                    "line longer than {MAX_LINE} bytes"
                )))
            }
            Ok(0) => return Ok(None),
            Ok(_) if line.ends_with(b"\n") => {
                if line.trim_ascii().is_empty() {
                    line.clear();
                    continue;
                }
                line.pop();
                return Ok(Some(line));
            }
            Ok(_) => {
                if line.len() > MAX_LINE {
                    return Err(QmpError::Malformed(format!(
                        "line longer than {MAX_LINE} bytes"
                    )));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(QmpError::Io(e)),
        }
    }
}

/// A failed connection attempt: the error, and the peer's pid when the
/// socket connected (a QEMU that accepts but never greets still has one).
#[derive(Debug)]
pub struct ConnectError {
    pub error: QmpError,
    pub peer_pid: Option<u32>,
}

impl QmpMux {
    /// Connects to `path`, reads the greeting and negotiates capabilities
    /// within `timeout`, then starts the reader thread.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ConnectError> {
        let stream = UnixStream::connect(path).map_err(|source| ConnectError {
            error: QmpError::Connect {
                path: path.to_owned(),
                source,
            },
            peer_pid: None,
        })?;
        let pid = peer_pid(&stream);
        let fail = |error| ConnectError {
            error,
            peer_pid: pid,
        };
        let deadline = Instant::now() + timeout;
        let mut writer = stream.try_clone().map_err(|e| fail(QmpError::Io(e)))?;
        writer
            .set_write_timeout(Some(timeout))
            .map_err(|e| fail(QmpError::Io(e)))?;
        let mut reader = BufReader::new(stream);
        let timed_out = |e: QmpError| match e {
            QmpError::Timeout { .. } => QmpError::Timeout {
                command: "greeting".into(),
                timeout,
            },
            other => other,
        };
        loop {
            let line = read_line(&mut reader, Some(deadline))
                .map_err(|e| fail(timed_out(e)))?
                .ok_or_else(|| fail(QmpError::Closed))?;
            match parse_message(&line).map_err(fail)? {
                Message::Greeting(_) => break,
                Message::Event { .. } => {}
                other => return Err(fail(QmpError::Greeting(format!("{other:?}")))),
            }
        }
        writer
            .write_all(b"{\"execute\": \"qmp_capabilities\", \"id\": 0}\n")
            .map_err(|e| fail(QmpError::Io(e)))?;
        loop {
            let line = read_line(&mut reader, Some(deadline))
                .map_err(|e| {
                    fail(match e {
                        QmpError::Timeout { .. } => QmpError::Timeout {
                            command: "qmp_capabilities".into(),
                            timeout,
                        },
                        other => other,
                    })
                })?
                .ok_or_else(|| fail(QmpError::Closed))?;
            match parse_message(&line).map_err(fail)? {
                Message::Return { .. } => break,
                Message::Error { class, desc, .. } => {
                    return Err(fail(QmpError::Command {
                        command: "qmp_capabilities".into(),
                        class,
                        desc,
                    }))
                }
                _ => {}
            }
        }
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            pending: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            peer_pid: pid,
        });
        let r = inner.clone();
        std::thread::Builder::new()
            .name("qmp-reader".into())
            .spawn(move || reader_loop(&r, reader))
            .map_err(|e| fail(QmpError::Io(e)))?;
        Ok(Self {
            _closer: Arc::new(Closer(inner.clone())),
            inner,
        })
    }

    /// The socket this connection is on.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// QEMU's pid, from the socket's peer credentials.
    pub fn peer_pid(&self) -> Option<u32> {
        self.inner.peer_pid
    }

    /// True once QEMU closed the connection (it exited) or the stream broke.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Receives every event from now on: (name, data).
    pub fn subscribe(&self) -> Receiver<(String, Value)> {
        let (tx, rx) = mpsc::sync_channel(EVENT_QUEUE);
        if let Ok(mut s) = self.inner.subscribers.lock() {
            s.push(tx);
        }
        rx
    }

    /// Runs `command` and waits up to `timeout` for its reply.
    pub fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_inner(command, arguments, None, timeout)
    }

    /// Runs `command` with `fd` passed along (SCM_RIGHTS), as `getfd` and
    /// `add-fd` need. The caller keeps its own `fd`.
    pub fn execute_with_fd(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: RawFd,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_inner(command, arguments, Some(fd), timeout)
    }

    fn execute_inner(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<RawFd>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        if self.is_closed() {
            return Err(QmpError::Closed);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = Map::new();
        msg.insert("execute".into(), json!(command));
        if let Some(a) = arguments {
            msg.insert("arguments".into(), a);
        }
        msg.insert("id".into(), json!(id));
        let mut text = Value::Object(msg).to_string();
        text.push('\n');
        let (tx, rx) = mpsc::channel();
        self.lock_pending().insert(id, tx);
        let sent = self.send(text.as_bytes(), fd);
        if let Err(e) = sent {
            self.lock_pending().remove(&id);
            // A stream that failed a write is dead: say so now, not when
            // the reader thread gets to its end of file, so the next
            // `Registry::get` connects afresh instead of handing it out.
            self.inner.closed.store(true, Ordering::Release);
            if let Ok(w) = self.inner.writer.lock() {
                let _ = w.shutdown(std::net::Shutdown::Both);
            }
            return Err(e);
        }
        let r = rx.recv_timeout(timeout);
        self.lock_pending().remove(&id);
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err((class, desc))) => Err(QmpError::Command {
                command: command.to_owned(),
                class,
                desc,
            }),
            Err(RecvTimeoutError::Timeout) => Err(QmpError::Timeout {
                command: command.to_owned(),
                timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(QmpError::Closed),
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Sender<Reply>>> {
        // A poisoned map is still a valid map: a panicking caller cannot
        // leave it half-updated (insert/remove are single operations).
        self.inner
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn send(&self, bytes: &[u8], fd: Option<RawFd>) -> Result<(), QmpError> {
        let mut w = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let io = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                QmpError::Closed
            } else {
                QmpError::Io(e)
            }
        };
        let mut done = 0;
        if let Some(fd) = fd {
            // The fd travels with the first bytes of the command: QEMU
            // attaches it to the monitor before it parses the line.
            done = w
                .send_with_fd(bytes, fd)
                .map_err(|e| io(std::io::Error::from_raw_os_error(e.errno())))?;
        }
        w.write_all(&bytes[done..]).map_err(io)
    }
}

fn reader_loop(inner: &Inner, mut reader: BufReader<UnixStream>) {
    crate::sandbox::enter(crate::sandbox::Class::Guests);
    loop {
        let line = match read_line(&mut reader, None) {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                log::warn!("qmp {}: {e}; closing", inner.path.display());
                break;
            }
        };
        match parse_message(&line) {
            Ok(Message::Return { id, value }) => deliver(inner, id.as_ref(), Ok(value)),
            Ok(Message::Error { id, class, desc }) => {
                deliver(inner, id.as_ref(), Err((class, desc)));
            }
            Ok(Message::Event { name, data }) => {
                if let Ok(mut subs) = inner.subscribers.lock() {
                    subs.retain(|s| match s.try_send((name.clone(), data.clone())) {
                        Ok(()) | Err(TrySendError::Full(_)) => true,
                        Err(TrySendError::Disconnected(_)) => false,
                    });
                }
            }
            Ok(Message::Greeting(_)) => {}
            Err(e) => log::warn!("qmp {}: {e}", inner.path.display()),
        }
    }
    inner.closed.store(true, Ordering::Release);
    // Every waiter sees its sender dropped: `Closed`.
    if let Ok(mut p) = inner.pending.lock() {
        p.clear();
    }
    if let Ok(mut s) = inner.subscribers.lock() {
        s.clear();
    }
}

fn deliver(inner: &Inner, id: Option<&Value>, reply: Reply) {
    let Some(id) = id.and_then(Value::as_u64) else {
        return;
    };
    let tx = inner.pending.lock().ok().and_then(|mut p| p.remove(&id));
    if let Some(tx) = tx {
        let _ = tx.send(reply);
    }
}

/// Every guest's connection, by socket path: the one place the daemon
/// connects to QMP. A connection that closed is replaced by a new one on
/// the next [`Registry::get`].
#[derive(Debug, Default)]
pub struct Registry {
    slots: Mutex<HashMap<PathBuf, Arc<Mutex<Option<QmpMux>>>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The live connection to `path`, connecting (within `timeout`) when
    /// there is none. Connecting to one guest never waits on another's.
    pub fn get(&self, path: &Path, timeout: Duration) -> Result<QmpMux, ConnectError> {
        let slot = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            slots.entry(path.to_owned()).or_default().clone()
        };
        let mut slot = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(m) = slot.as_ref().filter(|m| !m.is_closed()) {
            return Ok(m.clone());
        }
        let m = QmpMux::connect(path, timeout)?;
        *slot = Some(m.clone());
        Ok(m)
    }

    /// The live connection to `path` if there is one, without connecting.
    pub fn existing(&self, path: &Path) -> Option<QmpMux> {
        let slot = self.slots.lock().ok()?.get(path)?.clone();
        let m = slot.lock().ok()?.clone();
        m.filter(|m| !m.is_closed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU that accepts exactly one client (as QEMU's monitor
    /// serves one at a time), echoes each command's id with its name, and
    /// sends an event before every reply.
    fn one_client_qemu(path: &Path) -> std::thread::JoinHandle<usize> {
        let listener = UnixListener::bind(path).expect("bind");
        std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            drop(listener);
            let mut w = s.try_clone().expect("clone");
            let _ = w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n");
            let mut n = 0;
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).expect("json");
                n += 1;
                let cmd = v["execute"].as_str().unwrap_or("").to_owned();
                if cmd == "silent" {
                    continue;
                }
                let ev = json!({"event": "TICK", "data": {"n": n}});
                let r = json!({"return": {"cmd": cmd}, "id": v["id"]});
                if w.write_all(format!("{ev}\n{r}\n").as_bytes()).is_err() {
                    break;
                }
            }
            n
        })
    }

    /// Several threads share one connection; every caller gets its own
    /// reply, events reach every subscriber, a silent command times out
    /// without desynchronising the others, and QEMU going away closes it.
    #[test]
    fn many_callers_share_one_connection() {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("q.sock");
        let qemu = one_client_qemu(&sock);
        let reg = Arc::new(Registry::new());
        let m = reg.get(&sock, Duration::from_secs(10)).expect("connect");
        assert_eq!(m.peer_pid(), Some(std::process::id()));
        let events = m.subscribe();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let reg = reg.clone();
                let sock = sock.clone();
                std::thread::spawn(move || {
                    // Same registry, same socket: the same connection (the
                    // fake would refuse a second client).
                    let m = reg.get(&sock, Duration::from_secs(10)).expect("shared");
                    for i in 0..25 {
                        let name = format!("cmd-{t}-{i}");
                        let r = m
                            .execute(&name, None, Duration::from_secs(10))
                            .expect("reply");
                        assert_eq!(r["cmd"], json!(name));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let e = m
            .execute("silent", None, Duration::from_millis(200))
            .expect_err("no reply");
        assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
        let r = m
            .execute("after", None, Duration::from_secs(10))
            .expect("still in sync");
        assert_eq!(r["cmd"], json!("after"));
        let got: Vec<_> = events.try_iter().collect();
        assert!(got.len() >= 100 && got.iter().all(|(n, _)| n == "TICK"));
        // The test's fd rides along with a command; QEMU (here the fake)
        // sees an ordinary command line.
        let f = std::fs::File::open("/dev/null").expect("null");
        let r = m
            .execute_with_fd(
                "getfd",
                Some(json!({"fdname": "x"})),
                std::os::fd::AsRawFd::as_raw_fd(&f),
                Duration::from_secs(10),
            )
            .expect("getfd");
        assert_eq!(r["cmd"], json!("getfd"));
        drop(m);
        // Dropping every handle leaves the registry's: QEMU still has one
        // client. Close it from QEMU's side by ending the fake.
        let inner = reg.existing(&sock).expect("still connected");
        inner
            .inner
            .writer
            .lock()
            .expect("writer")
            .shutdown(std::net::Shutdown::Both)
            .expect("shutdown");
        let n = qemu.join().expect("qemu");
        assert_eq!(
            n,
            1 + 100 + 2 + 1,
            "capabilities, 100 commands, silent+after, getfd"
        );
        let t0 = Instant::now();
        while !inner.is_closed() {
            assert!(t0.elapsed() < Duration::from_secs(10), "not closed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(matches!(
            inner.execute("x", None, Duration::from_secs(1)),
            Err(QmpError::Closed)
        ));
        assert!(reg.existing(&sock).is_none());
        let e = reg
            .get(&sock, Duration::from_secs(1))
            .expect_err("nobody listens now");
        assert!(matches!(e.error, QmpError::Connect { .. }), "{:?}", e.error);
    }

    /// QEMU's monitor serves one client at a time: when the daemon drops
    /// its last handle to a guest the connection must close, or the next
    /// client (a new registry, a tool) waits forever for its greeting.
    #[test]
    fn dropping_the_last_handle_frees_the_monitor() {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("q.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let qemu = std::thread::spawn(move || {
            for _ in 0..2 {
                let (s, _) = listener.accept().expect("accept");
                let mut w = s.try_clone().expect("clone");
                let _ = w.write_all(b"{\"QMP\": {}}\n");
                // Serve this client until it goes, as QEMU does.
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    let v: Value = serde_json::from_str(&line).expect("json");
                    let r = json!({"return": {}, "id": v["id"]});
                    if w.write_all(format!("{r}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            }
        });
        let first = Registry::new();
        let m = first.get(&sock, Duration::from_secs(10)).expect("first");
        m.execute("x", None, Duration::from_secs(10))
            .expect("reply");
        drop(m);
        drop(first);
        let second = Registry::new();
        let m = second
            .get(&sock, Duration::from_secs(10))
            .expect("the monitor is free again");
        m.execute("y", None, Duration::from_secs(10))
            .expect("reply");
        drop((m, second));
        qemu.join().expect("qemu");
    }

    /// A QEMU that accepts but never greets (stopped, or hung): the
    /// connection attempt ends at its timeout, and names the peer's pid.
    #[test]
    fn a_peer_that_never_greets_times_out_with_its_pid() {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("q.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let e = QmpMux::connect(&sock, Duration::from_millis(300)).expect_err("no greeting");
        assert!(matches!(e.error, QmpError::Timeout { .. }), "{:?}", e.error);
        assert_eq!(e.peer_pid, Some(std::process::id()));
        drop(listener);
    }
}
