//! One `GET /metrics` from a running daemon, with timeouts and a size cap:
//! whatever answers on the address (nothing, another server, a slow one)
//! ends in a typed error, never a hang or a panic.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest body read: a daemon with hundreds of disks writes a few MiB.
pub const MAX_BODY: u64 = 32 << 20;

/// Why a scrape failed, each a one-line message naming the address.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("{addr}: not a host:port address")]
    BadAddress { addr: String },
    #[error(
        "no pvbackend daemon answers on {addr} ({source}); is it running with --metrics {addr}?"
    )]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: {what}: {source}")]
    Io {
        addr: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: the answer is not HTTP")]
    NotHttp { addr: String },
    #[error("{addr}: HTTP status {status} for /metrics")]
    Status { addr: String, status: String },
    #[error("{addr}: the answer is over {MAX_BODY} bytes")]
    TooLarge { addr: String },
    #[error("{addr}: the metrics are not UTF-8 text")]
    NotText { addr: String },
}

/// Fetches the endpoint's text.
pub fn fetch(addr: &str, timeout: Duration) -> Result<String, ScrapeError> {
    let sock = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ScrapeError::BadAddress {
            addr: addr.to_owned(),
        })?;
    let io = |what: &'static str| {
        move |source| ScrapeError::Io {
            addr: addr.to_owned(),
            what,
            source,
        }
    };
    let mut s =
        TcpStream::connect_timeout(&sock, timeout).map_err(|source| ScrapeError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    s.set_read_timeout(Some(timeout)).map_err(io("socket"))?;
    s.set_write_timeout(Some(timeout)).map_err(io("socket"))?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )
    .map_err(io("sending the request"))?;
    let mut raw = Vec::new();
    s.take(MAX_BODY + 64 * 1024)
        .read_to_end(&mut raw)
        .map_err(io("reading the answer"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ScrapeError::NotHttp {
            addr: addr.to_owned(),
        })?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| ScrapeError::NotHttp {
        addr: addr.to_owned(),
    })?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/")) {
        return Err(ScrapeError::NotHttp {
            addr: addr.to_owned(),
        });
    }
    let status = parts.next().unwrap_or_default();
    if status != "200" {
        return Err(ScrapeError::Status {
            addr: addr.to_owned(),
            status: status.chars().take(16).collect(),
        });
    }
    let body = &raw[split + 4..];
    if body.len() as u64 > MAX_BODY {
        return Err(ScrapeError::TooLarge {
            addr: addr.to_owned(),
        });
    }
    String::from_utf8(body.to_vec()).map_err(|_| ScrapeError::NotText {
        addr: addr.to_owned(),
    })
}
