//! `pvbackend top`: which guest is loading the host, and on which disk or
//! NIC. The load view, beside `pvbackend guests` (memory only).
//!
//! It reads a running daemon's metrics endpoint ([`crate::metrics_server`])
//! every `--every` seconds and shows, per guest (the `guest` label, see
//! there), the rates over the last interval: disk read/write IOPS and MB/s,
//! p50/p99 latency of the requests completed in the interval (from the
//! histogram's bucket deltas), requests in flight, errors; NIC rx/tx
//! packets and Mbit/s and drops; the balloon's target, actual and the
//! guest's available memory, and how far the balloon moved. A guest whose
//! p99 or drops jumped against the interval before is highlighted (`!` in
//! the text table, `"jumped": true` in JSON).
//!
//! Three outputs: the live full-screen view ([`tui`]: sort by any column,
//! expand a guest into its disks, queues and ports); `--once`, one text
//! table ([`table::render_text`]) after one interval; `--json`, one JSON
//! object per interval ([`rates::Report`]) on its own line.
//!
//! It refuses, with a one-line message and a non-zero exit: no daemon on
//! the address; an answer that is not a pvbackend exposition (validated
//! line by line, [`expo`]); for the live view, no terminal or one too
//! small for the columns.

pub mod expo;
pub mod rates;
pub mod scrape;
pub mod snapshot;
pub mod table;
pub mod tui;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rates::Report;
use snapshot::Snapshot;
use table::SortBy;

/// What `top` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The daemon's metrics address (`host:port`).
    pub metrics: String,
    pub every: Duration,
    pub once: bool,
    pub json: bool,
    pub sort: SortBy,
    /// Per scrape (connect, send, read).
    pub timeout: Duration,
}

/// Why `top` stopped, each a one-line message.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(transparent)]
    Scrape(#[from] scrape::ScrapeError),
    #[error("{addr} answered something that is not pvbackend metrics: {source}")]
    Garbage {
        addr: String,
        #[source]
        source: expo::ExpoError,
    },
    #[error("the live view needs a terminal; use --once or --json")]
    NotATerminal,
    #[error("terminal too small: {width}x{height}, the view needs at least {need_width}x{need_height} (or use --once)")]
    TooSmall {
        width: u16,
        height: u16,
        need_width: u16,
        need_height: u16,
    },
    #[error("terminal: {0}")]
    Terminal(#[source] std::io::Error),
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
}

/// One scrape, parsed, with when it was taken.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub snapshot: Snapshot,
    pub at: Instant,
    pub unix_time: f64,
}

/// Takes one scrape of the daemon.
pub fn take(opts: &Options) -> Result<Scrape, TopError> {
    let text = scrape::fetch(&opts.metrics, opts.timeout)?;
    let at = Instant::now();
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let samples = expo::parse(&text).map_err(|source| TopError::Garbage {
        addr: opts.metrics.clone(),
        source,
    })?;
    Ok(Scrape {
        snapshot: Snapshot::from_samples(&samples),
        at,
        unix_time,
    })
}

/// The report between two scrapes, jumps marked against `previous`, rows
/// sorted.
pub fn report(
    prev: &Scrape,
    cur: &Scrape,
    previous: Option<&Report>,
    sort: SortBy,
    descending: bool,
) -> Report {
    let secs = cur.at.saturating_duration_since(prev.at).as_secs_f64();
    let mut r = rates::compute(&prev.snapshot, &cur.snapshot, secs);
    r.unix_time = cur.unix_time;
    if let Some(p) = previous {
        rates::mark_jumps(&mut r, p);
    }
    table::sort(&mut r.guests, sort, descending);
    r
}

/// Runs `top` as asked.
pub fn run(opts: &Options) -> Result<(), TopError> {
    if !opts.once && !opts.json {
        return tui::run(opts);
    }
    let mut out = std::io::stdout().lock();
    let mut prev = take(opts)?;
    let mut previous: Option<Report> = None;
    loop {
        std::thread::sleep(opts.every);
        let cur = take(opts)?;
        let r = report(
            &prev,
            &cur,
            previous.as_ref(),
            opts.sort,
            opts.sort.descending(),
        );
        let text = if opts.json {
            // Serializing plain structs of numbers and strings cannot fail.
            serde_json::to_string(&r).unwrap_or_default() + "\n"
        } else {
            table::render_text(&r)
        };
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(TopError::Output)?;
        if opts.once {
            return Ok(());
        }
        prev = cur;
        previous = Some(r);
    }
}
