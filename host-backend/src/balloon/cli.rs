//! `pvbackend guests`: a live table of every managed guest's memory.
//!
//! It reads the running daemon's metrics endpoint, which the manager fills
//! through the daemon's one QMP connection per guest
//! ([`crate::guests::mux`]): every figure, for every guest, in one request.

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One row of the table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub guest: String,
    pub target: Option<f64>,
    pub actual: Option<f64>,
    pub free: Option<f64>,
    pub available: Option<f64>,
    pub major_faults: Option<f64>,
    pub last_update: Option<f64>,
    pub connected: Option<f64>,
}

/// Label (name, value) pairs of one series.
pub type Labels = Vec<(String, String)>;

/// Splits one exposition line into (series name, labels, value).
pub fn parse_series(line: &str) -> Option<(&str, Labels, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, mut rest) = match head.split_once('{') {
        Some((n, r)) => (n, r),
        None => return Some((head, Vec::new(), value)),
    };
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches(',');
        if rest.starts_with('}') || rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once("=\"")?;
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => val.push('\n'),
                    Some((_, o)) => val.push(o),
                    None => return None,
                },
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                o => val.push(o),
            }
        }
        labels.push((key.to_owned(), val));
        rest = after.get(end?..)?;
    }
    Some((name, labels, value))
}

/// Builds the table's rows from the endpoint's text, sorted by guest.
pub fn rows(metrics_text: &str) -> Vec<Row> {
    let mut rows: std::collections::BTreeMap<String, Row> = Default::default();
    for line in metrics_text.lines() {
        let Some((name, labels, value)) = parse_series(line) else {
            continue;
        };
        let Some(field) = name.strip_prefix("pvbackend_balloon_") else {
            continue;
        };
        let Some(guest) = labels
            .iter()
            .find(|(k, _)| k == "guest")
            .map(|(_, v)| v.clone())
        else {
            continue;
        };
        if guest.is_empty() {
            continue;
        }
        let row = rows.entry(guest.clone()).or_insert_with(|| Row {
            guest,
            ..Row::default()
        });
        let slot = match field {
            "target_bytes" => &mut row.target,
            "actual_bytes" => &mut row.actual,
            "guest_free_bytes" => &mut row.free,
            "guest_available_bytes" => &mut row.available,
            "guest_major_faults" => &mut row.major_faults,
            "stats_last_update_seconds" => &mut row.last_update,
            "connected" => &mut row.connected,
            _ => continue,
        };
        *slot = Some(value);
    }
    rows.into_values().collect()
}

fn mib(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |b| format!("{:.0}", b / 1_048_576.0))
}

/// Renders the table; `now` is Unix seconds (for the stats' age).
pub fn render(rows: &[Row], now: f64) -> String {
    let mut out = format!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>5}\n",
        "GUEST",
        "TARGET MiB",
        "ACTUAL MiB",
        "FREE MiB",
        "AVAIL MiB",
        "MAJ FAULT",
        "STATS AGE",
        "QMP"
    );
    for r in rows {
        let age = match r.last_update {
            Some(t) if t > 0.0 => format!("{:.0}s", (now - t).max(0.0)),
            _ => "never".into(),
        };
        let conn = match r.connected {
            Some(c) if c > 0.0 => "up",
            _ => "down",
        };
        out.push_str(&format!(
            "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>5}\n",
            r.guest,
            mib(r.target),
            mib(r.actual),
            mib(r.free),
            mib(r.available),
            r.major_faults
                .map_or_else(|| "-".into(), |v| format!("{v:.0}")),
            age,
            conn
        ));
    }
    if rows.is_empty() {
        out.push_str("(no guests: is the balloon manager enabled?)\n");
    }
    out
}

/// `GET /metrics` from `addr` (host:port), body only.
pub fn fetch(addr: &str, timeout: Duration) -> Result<String, String> {
    use std::net::ToSocketAddrs;
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("metrics address {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("metrics address {addr}: no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, timeout).map_err(|e| {
        format!("cannot connect to {addr}: {e} (is pvbackend running with --metrics {addr}?)")
    })?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{addr}: {e}"))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut text = String::new();
    s.take(64 << 20)
        .read_to_string(&mut text)
        .map_err(|e| format!("{addr}: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP reply"))?;
    if !head.lines().next().is_some_and(|l| l.contains(" 200")) {
        return Err(format!(
            "{addr}: {}",
            head.lines().next().unwrap_or("no status line")
        ));
    }
    Ok(body.to_owned())
}

/// Runs the command: one snapshot (`once`), or a refresh every `every`
/// until interrupted; an error ends it (endpoint unreachable).
pub fn run(addr: &str, every: Duration, once: bool) -> Result<(), String> {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    loop {
        let text = fetch(addr, Duration::from_secs(10))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let table = render(&rows(&text), now);
        let mut out = std::io::stdout().lock();
        if tty && !once {
            // Clear the screen and home the cursor: a live view.
            let _ = write!(out, "\x1b[2J\x1b[H");
        }
        let _ = write!(out, "{table}");
        let _ = out.flush();
        if once {
            return Ok(());
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balloon::device::GuestStats;
    use crate::balloon::metrics::{BalloonMetrics, G};
    use prometheus_client::registry::Registry;
    use std::sync::Arc;

    #[test]
    fn table_from_a_live_endpoint() {
        let mut registry = Registry::default();
        let m = BalloonMetrics::register(&mut registry);
        m.set("vm \"1\"", G::Target, 256 << 20);
        m.set("vm \"1\"", G::Actual, 300 << 20);
        m.set("vm \"1\"", G::Connected, 1);
        m.stats(
            "vm \"1\"",
            &GuestStats {
                free: Some(100 << 20),
                available: Some(150 << 20),
                major_faults: Some(7),
                last_update: 1000,
                ..GuestStats::default()
            },
        );
        m.set("vm2", G::Actual, 1 << 30);
        m.error("", "host_meminfo");
        let server = crate::metrics_server::MetricsServer::start("127.0.0.1:0", Arc::new(registry))
            .expect("server");
        let text = fetch(server.addr(), Duration::from_secs(10)).expect("fetch");
        server.stop();
        let r = rows(&text);
        assert_eq!(r.len(), 2, "{r:?}\n{text}");
        assert_eq!(r[0].guest, "vm \"1\"");
        assert_eq!(r[0].target, Some(f64::from(256u32 << 20)));
        assert_eq!(r[0].major_faults, Some(7.0));
        let table = render(&r, 1010.0);
        let line = table.lines().nth(1).expect("row");
        for needle in ["vm \"1\"", "256", "300", "100", "150", "7", "10s", "up"] {
            assert!(line.contains(needle), "{needle} in {line}");
        }
        let line2 = table.lines().nth(2).expect("row 2");
        assert!(line2.contains("1024") && line2.contains("never") && line2.contains("down"));
        assert!(render(&[], 0.0).contains("no guests"));
        assert!(fetch("127.0.0.1:1", Duration::from_secs(2)).is_err());
    }

    #[test]
    fn series_parser_handles_escapes_and_junk() {
        let (n, l, v) = parse_series(r#"a_b{guest="x\"y\\z",k="v"} 3.5"#).expect("parse");
        assert_eq!((n, v), ("a_b", 3.5));
        assert_eq!(l[0], ("guest".into(), "x\"y\\z".into()));
        assert_eq!(l[1], ("k".into(), "v".into()));
        assert_eq!(parse_series("plain 1").map(|p| p.2), Some(1.0));
        for junk in ["# HELP x", "x{guest=\"open 1", "x 1 2 z", "", "x{a=\"b\\"] {
            let _ = parse_series(junk);
        }
        assert!(parse_series("x nope").is_none());
    }
}
