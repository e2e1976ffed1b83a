//! A synchronous QMP (QEMU Machine Protocol) client for the balloon manager.
//!
//! QMP is line-delimited JSON on a unix socket: QEMU greets (`{"QMP": ...}`),
//! the client leaves negotiation mode with `qmp_capabilities`, then sends
//! commands (`{"execute": ..., "arguments": ..., "id": N}`) and reads
//! replies (`{"return": ...}` or `{"error": {"class", "desc"}}`, echoing the
//! id). Asynchronous events (`{"event": ..., "data": ..., "timestamp": ...}`)
//! may arrive between a command and its reply at any time; they are queued
//! for [`QmpClient::take_events`].
//!
//! What it refuses: lines longer than [`MAX_LINE`] (QEMU never sends such a
//! thing; a peer that does is cut off), replies that are not JSON objects,
//! and waiting past the per-command timeout. A reply whose id is not the
//! one awaited (left over from a command that timed out) is skipped. QEMU's
//! QMP monitor serves one client at a time: while the manager is connected
//! nobody else can use that socket (give QEMU a second `-qmp` for tools).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

/// The longest QMP line accepted (QEMU's replies here are a few KiB).
pub const MAX_LINE: usize = 1 << 20;

/// QMP failures. [`QmpError::should_reconnect`] tells the caller whether the
/// connection is still usable.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected (QEMU not running, wrong path).
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("QMP socket I/O: {0}")]
    Io(#[source] std::io::Error),
    /// QEMU closed the connection (it exited, or another client took over).
    #[error("QMP connection closed by QEMU")]
    Closed,
    /// No reply within the timeout.
    #[error("no QMP reply to '{command}' within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    /// QEMU sent a line that is not a JSON object, or is too long.
    #[error("QMP peer sent a malformed message: {0}")]
    Malformed(String),
    /// The first message was not a QMP greeting.
    #[error("QMP peer did not greet: {0}")]
    Greeting(String),
    /// QEMU answered the command with an error (the command was wrong for
    /// this VM, e.g. no balloon device).
    #[error("QMP '{command}' failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    /// A reply of the wrong shape for its command.
    #[error("QMP '{command}': unexpected reply: {reply}")]
    Unexpected { command: String, reply: String },
}

impl QmpError {
    /// True when the connection must be dropped and made again (the stream
    /// may be desynchronised or gone); false for an error QEMU reported on a
    /// healthy connection.
    pub fn should_reconnect(&self) -> bool {
        !matches!(self, Self::Command { .. } | Self::Unexpected { .. })
    }

    /// A stable snake_case name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Io(_) => "io",
            Self::Closed => "closed",
            Self::Timeout { .. } => "timeout",
            Self::Malformed(_) => "malformed",
            Self::Greeting(_) => "greeting",
            Self::Command { .. } => "command",
            Self::Unexpected { .. } => "unexpected",
        }
    }
}

/// One QMP message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `{"QMP": {...}}`, the greeting.
    Greeting(Value),
    /// `{"return": value, "id"?: id}`.
    Return { id: Option<Value>, value: Value },
    /// `{"error": {"class", "desc"}, "id"?: id}`.
    Error {
        id: Option<Value>,
        class: String,
        desc: String,
    },
    /// `{"event": name, "data"?: {...}, "timestamp"?: {...}}`.
    Event { name: String, data: Value },
}

/// Parses one QMP line. Never panics, whatever the bytes.
pub fn parse_message(line: &[u8]) -> Result<Message, QmpError> {
    let v: Value =
        serde_json::from_slice(line).map_err(|e| QmpError::Malformed(format!("not JSON ({e})")))?;
    let Value::Object(mut obj) = v else {
        return Err(QmpError::Malformed("not a JSON object".into()));
    };
    let id = obj.remove("id");
    if let Some(g) = obj.remove("QMP") {
        return Ok(Message::Greeting(g));
    }
    if let Some(value) = obj.remove("return") {
        return Ok(Message::Return { id, value });
    }
    if let Some(err) = obj.remove("error") {
        let field = |k: &str| {
            err.get(k)
                .and_then(Value::as_str)
                .unwrap_or("(missing)")
                .to_owned()
        };
        return Ok(Message::Error {
            id,
            class: field("class"),
            desc: field("desc"),
        });
    }
    if let Some(Value::String(name)) = obj.remove("event") {
        let data = obj.remove("data").unwrap_or(Value::Null);
        return Ok(Message::Event { name, data });
    }
    Err(QmpError::Malformed(format!(
        "object with none of QMP/return/error/event: keys {:?}",
        obj.keys().collect::<Vec<_>>()
    )))
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct QmpClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
    timeout: Duration,
    next_id: u64,
    events: VecDeque<(String, Value)>,
}

/// Events kept at most while nobody takes them (older ones are dropped).
const MAX_QUEUED_EVENTS: usize = 256;

impl QmpClient {
    /// Connects to `path`, reads the greeting and negotiates capabilities.
    /// `timeout` bounds every later command as well.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let writer = stream.try_clone().map_err(QmpError::Io)?;
        writer
            .set_write_timeout(Some(timeout))
            .map_err(QmpError::Io)?;
        let mut c = Self {
            reader: BufReader::new(stream),
            writer,
            path: path.to_owned(),
            timeout,
            next_id: 1,
            events: VecDeque::new(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            match c.read_message(deadline, "greeting")? {
                Message::Greeting(_) => break,
                Message::Event { name, data } => c.queue_event(name, data),
                other => return Err(QmpError::Greeting(format!("{other:?}"))),
            }
        }
        c.execute("qmp_capabilities", None)?;
        Ok(c)
    }

    /// The socket this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn queue_event(&mut self, name: String, data: Value) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back((name, data));
    }

    /// Takes the asynchronous events received so far (name, data).
    pub fn take_events(&mut self) -> Vec<(String, Value)> {
        self.events.drain(..).collect()
    }

    fn read_message(&mut self, deadline: Instant, command: &str) -> Result<Message, QmpError> {
        let mut line = Vec::new();
        loop {
            let now = Instant::now();
            if now >= deadline && self.reader.buffer().is_empty() {
                return Err(QmpError::Timeout {
                    command: command.to_owned(),
                    timeout: self.timeout,
                });
            }
            let wait = deadline
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            self.reader
                .get_ref()
                .set_read_timeout(Some(wait))
                .map_err(QmpError::Io)?;
            let room = (MAX_LINE + 1).saturating_sub(line.len()) as u64;
            match (&mut self.reader).take(room).read_until(b'\n', &mut line) {
                Ok(0) if line.len() > MAX_LINE => {
                    return Err(QmpError::Malformed(format!(
                        "line longer than {MAX_LINE} bytes"
                    )))
                }
                Ok(0) => return Err(QmpError::Closed),
                Ok(_) if line.ends_with(b"\n") => {
                    let text = line.trim_ascii();
                    if text.is_empty() {
                        line.clear();
                        continue;
                    }
                    return parse_message(text);
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
                    ) =>
                {
                    // A partial line stays in `line`; the deadline check
                    // above ends the wait.
                    if Instant::now() >= deadline {
                        return Err(QmpError::Timeout {
                            command: command.to_owned(),
                            timeout: self.timeout,
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(QmpError::Io(e)),
            }
        }
    }

    /// Runs `command` (with `arguments` when given) and returns its
    /// `return` value. Events read meanwhile are queued.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = Map::new();
        msg.insert("execute".into(), json!(command));
        if let Some(a) = arguments {
            msg.insert("arguments".into(), a);
        }
        msg.insert("id".into(), json!(id));
        let mut text = Value::Object(msg).to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                QmpError::Closed
            } else {
                QmpError::Io(e)
            }
        })?;
        let deadline = Instant::now() + self.timeout;
        let ours = |rid: &Option<Value>| rid.as_ref().and_then(Value::as_u64) == Some(id);
        loop {
            match self.read_message(deadline, command)? {
                Message::Event { name, data } => self.queue_event(name, data),
                Message::Return { id: rid, value } if ours(&rid) => return Ok(value),
                Message::Error {
                    id: rid,
                    class,
                    desc,
                } if ours(&rid) => {
                    return Err(QmpError::Command {
                        command: command.to_owned(),
                        class,
                        desc,
                    })
                }
                // A reply to an earlier command that timed out, or a
                // greeting out of turn: not ours, skip it.
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A scripted QMP server: answers each command line with the replies
    /// `respond` returns (as raw lines, so tests can send anything).
    pub(crate) fn fake_qemu<F>(path: &Path, mut respond: F) -> std::thread::JoinHandle<()>
    where
        F: FnMut(&Value) -> Vec<String> + Send + 'static,
    {
        let listener = UnixListener::bind(path).expect("bind");
        std::thread::spawn(move || {
            let Ok((s, _)) = listener.accept() else {
                return;
            };
            let mut w = s.try_clone().expect("clone");
            let _ = w.write_all(
                b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7, \"minor\": 2, \"micro\": 0}}, \"capabilities\": []}}\n",
            );
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line).expect("client sends JSON");
                for r in respond(&v) {
                    if w.write_all(format!("{r}\n").as_bytes()).is_err() {
                        return;
                    }
                }
            }
        })
    }

    fn ret(v: &Value, value: Value) -> String {
        json!({"return": value, "id": v["id"]}).to_string()
    }

    #[test]
    fn events_interleaved_with_replies_are_queued() {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("q.sock");
        let server = fake_qemu(&sock, |v| {
            match v["execute"].as_str() {
            Some("qmp_capabilities") => vec![ret(v, json!({}))],
            Some("query-balloon") => vec![
                r#"{"event": "BALLOON_CHANGE", "data": {"actual": 268435456}, "timestamp": {"seconds": 1, "microseconds": 2}}"#.into(),
                // a stale reply to some other id is skipped
                json!({"return": {"actual": 1}, "id": 999}).to_string(),
                ret(v, json!({"actual": 536870912u64})),
            ],
            Some("balloon") => vec![json!({"error": {"class": "GenericError", "desc": "no balloon"}, "id": v["id"]}).to_string()],
            _ => vec![],
        }
        });
        let mut c = QmpClient::connect(&sock, Duration::from_secs(10)).expect("connect");
        let r = c.execute("query-balloon", None).expect("query");
        assert_eq!(r["actual"].as_u64(), Some(536_870_912));
        let ev = c.take_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, "BALLOON_CHANGE");
        assert_eq!(ev[0].1["actual"].as_u64(), Some(268_435_456));
        let e = c
            .execute("balloon", Some(json!({"value": 1})))
            .expect_err("error reply");
        assert!(!e.should_reconnect(), "{e}");
        assert!(e.to_string().contains("no balloon"), "{e}");
        drop(c);
        server.join().expect("server");
    }

    #[test]
    fn silent_peer_times_out_and_closed_peer_is_reported() {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("q.sock");
        let server = fake_qemu(&sock, |v| match v["execute"].as_str() {
            Some("qmp_capabilities") => vec![ret(v, json!({}))],
            Some("query-status") => vec![],
            _ => vec!["garbage".into()],
        });
        let mut c = QmpClient::connect(&sock, Duration::from_millis(300)).expect("connect");
        let e = c.execute("query-status", None).expect_err("timeout");
        assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
        assert!(e.should_reconnect());
        let e = c.execute("other", None).expect_err("garbage");
        assert!(matches!(e, QmpError::Malformed(_)), "{e}");
        drop(c);
        server.join().expect("server");

        let sock2 = dir.path().join("q2.sock");
        let listener = UnixListener::bind(&sock2).expect("bind");
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            drop(s);
        });
        let e = QmpClient::connect(&sock2, Duration::from_secs(5)).expect_err("closed");
        assert!(matches!(e, QmpError::Closed | QmpError::Io(_)), "{e}");
        t.join().expect("thread");
        let e = QmpClient::connect(&dir.path().join("none"), Duration::from_secs(1))
            .expect_err("no socket");
        assert!(matches!(e, QmpError::Connect { .. }));
    }

    #[test]
    fn parser_classifies_every_shape() {
        assert!(matches!(
            parse_message(br#"{"QMP": {}}"#),
            Ok(Message::Greeting(_))
        ));
        assert!(matches!(
            parse_message(br#"{"return": {}, "id": 3}"#),
            Ok(Message::Return { id: Some(_), .. })
        ));
        assert!(matches!(
            parse_message(br#"{"error": {"class": "X"}}"#),
            Ok(Message::Error { .. })
        ));
        assert!(matches!(
            parse_message(br#"{"event": "STOP"}"#),
            Ok(Message::Event { .. })
        ));
        for bad in [&b"[1]"[..], b"{}", b"{\"event\": 1}", b"\xff", b""] {
            assert!(parse_message(bad).is_err(), "{bad:?}");
        }
    }
}
