//! The QMP (QEMU Machine Protocol) wire format and its errors; the
//! daemon's one connection per guest that speaks it is
//! [`crate::guests::mux`].
//!
//! QMP is line-delimited JSON on a unix socket: QEMU greets (`{"QMP": ...}`),
//! the client leaves negotiation mode with `qmp_capabilities`, then sends
//! commands (`{"execute": ..., "arguments": ..., "id": N}`) and reads
//! replies (`{"return": ...}` or `{"error": {"class", "desc"}}`, echoing the
//! id). Asynchronous events (`{"event": ..., "data": ..., "timestamp": ...}`)
//! may arrive between a command and its reply at any time.
//!
//! What it refuses: lines longer than [`MAX_LINE`] (QEMU never sends such a
//! thing; a peer that does is cut off) and messages that are not JSON
//! objects of one of QMP's four shapes.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use super::*;

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
