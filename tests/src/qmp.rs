//! A minimal QMP (QEMU Machine Protocol) client for tests: connect, leave
//! capabilities negotiation, run commands, skip asynchronous events.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::HarnessError;

/// A QMP connection.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Asynchronous events received while waiting for replies.
    pub events: Vec<Value>,
}

fn qmp_err(what: &str, e: std::io::Error) -> HarnessError {
    HarnessError::io(format!("QMP {what}"), e)
}

impl Qmp {
    /// Connects (retrying until `timeout`: QEMU creates the socket while
    /// starting) and negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, HarnessError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(qmp_err(&format!("connect {}", path.display()), e))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| qmp_err("timeout", e))?;
        let writer = stream.try_clone().map_err(|e| qmp_err("clone", e))?;
        let mut qmp = Self {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(HarnessError::Setup(format!(
                "QMP greeting expected, got {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, HarnessError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| qmp_err("read", e))?;
        if n == 0 {
            return Err(HarnessError::Setup("QMP connection closed".into()));
        }
        serde_json::from_str(&line)
            .map_err(|e| HarnessError::Setup(format!("QMP sent bad JSON ({e}): {line}")))
    }

    /// Runs `command` with `arguments` and returns its `return` value; a QMP
    /// `error` reply becomes an error.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, HarnessError> {
        let msg = json!({ "execute": command, "arguments": arguments });
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| qmp_err("write", e))?;
        loop {
            let reply = self.read_message()?;
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(HarnessError::Setup(format!("QMP {command} failed: {err}")));
            }
            return Err(HarnessError::Setup(format!(
                "QMP {command}: unexpected reply {reply}"
            )));
        }
    }

    /// Polls `query-migrate` until the migration (outgoing, or incoming in
    /// a QEMU started with `-incoming`) has completed, and returns its last
    /// answer. A failed or cancelled migration, or one still running at
    /// `timeout`, is an error naming `what`.
    pub fn wait_for_migration(
        &mut self,
        what: &str,
        timeout: Duration,
    ) -> Result<Value, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.execute("query-migrate", json!({}))?;
            match info["status"].as_str() {
                Some("completed") => return Ok(info),
                Some("failed") | Some("cancelled") => {
                    return Err(HarnessError::Setup(format!(
                        "{what}: migration did not complete: {info}"
                    )))
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Setup(format!("{what} still running: {info}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
