//! The columns of `top`, their sort keys, and the plain-text table of
//! `--once`. The live view ([`super::tui`]) shows the same columns.

use std::cmp::Ordering;

use super::rates::{GuestRow, Report};

/// One column: header, the key that sorts by it, width, and its cell.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub key: char,
    /// `--sort` name.
    pub name: &'static str,
    pub header: &'static str,
    pub width: u16,
    value: fn(&GuestRow) -> Option<f64>,
}

fn num(v: f64) -> Option<f64> {
    Some(v)
}

/// Every column, in display order (the guest first).
pub const COLUMNS: [Column; 18] = [
    Column {
        key: 'g',
        name: "guest",
        header: "GUEST",
        width: 16,
        value: |_| None,
    },
    Column {
        key: 'r',
        name: "rd-iops",
        header: "RD/s",
        width: 8,
        value: |g| num(g.read_iops),
    },
    Column {
        key: 'w',
        name: "wr-iops",
        header: "WR/s",
        width: 8,
        value: |g| num(g.write_iops),
    },
    Column {
        key: 'b',
        name: "rd-mbps",
        header: "RD MB/s",
        width: 8,
        value: |g| num(g.read_mbps),
    },
    Column {
        key: 'y',
        name: "wr-mbps",
        header: "WR MB/s",
        width: 8,
        value: |g| num(g.write_mbps),
    },
    Column {
        key: '5',
        name: "p50",
        header: "P50 ms",
        width: 7,
        value: |g| g.p50_ms,
    },
    Column {
        key: '9',
        name: "p99",
        header: "P99 ms",
        width: 7,
        value: |g| g.p99_ms,
    },
    Column {
        key: 'f',
        name: "inflight",
        header: "INFL",
        width: 5,
        value: |g| num(g.inflight),
    },
    Column {
        key: 'e',
        name: "errors",
        header: "ERR",
        width: 5,
        value: |g| num(g.errors),
    },
    Column {
        key: 'x',
        name: "rx-pps",
        header: "RX pps",
        width: 8,
        value: |g| num(g.rx_pps),
    },
    Column {
        key: 't',
        name: "tx-pps",
        header: "TX pps",
        width: 8,
        value: |g| num(g.tx_pps),
    },
    Column {
        key: 'm',
        name: "rx-mbit",
        header: "RX Mb/s",
        width: 8,
        value: |g| num(g.rx_mbitps),
    },
    Column {
        key: 'n',
        name: "tx-mbit",
        header: "TX Mb/s",
        width: 8,
        value: |g| num(g.tx_mbitps),
    },
    Column {
        key: 'd',
        name: "drops",
        header: "DROPS",
        width: 6,
        value: |g| num(g.drops),
    },
    Column {
        key: 'a',
        name: "mem-target",
        header: "TGT MiB",
        width: 8,
        value: |g| g.mem_target_mib,
    },
    Column {
        key: 'c',
        name: "mem-actual",
        header: "ACT MiB",
        width: 8,
        value: |g| g.mem_actual_mib,
    },
    Column {
        key: 'v',
        name: "mem-avail",
        header: "AVL MiB",
        width: 8,
        value: |g| g.mem_available_mib,
    },
    Column {
        key: 'l',
        name: "balloon",
        header: "BAL MiB",
        width: 8,
        value: |g| g.balloon_moved_mib,
    },
];

/// How rows are ordered: by a column, or by total IOPS (`i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Read plus write requests per second.
    Iops,
    /// Index into [`COLUMNS`].
    Column(usize),
}

impl SortBy {
    /// The sort a key selects.
    pub fn from_key(key: char) -> Option<Self> {
        if key == 'i' {
            return Some(Self::Iops);
        }
        COLUMNS.iter().position(|c| c.key == key).map(Self::Column)
    }

    /// The sort a `--sort` name selects.
    pub fn from_name(name: &str) -> Option<Self> {
        if name == "iops" {
            return Some(Self::Iops);
        }
        COLUMNS
            .iter()
            .position(|c| c.name == name)
            .map(Self::Column)
    }

    /// Every `--sort` name.
    pub fn names() -> String {
        std::iter::once("iops")
            .chain(COLUMNS.iter().map(|c| c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The default direction: names ascending, figures descending.
    pub fn descending(self) -> bool {
        self != Self::Column(0)
    }

    fn value(self, g: &GuestRow) -> Option<f64> {
        match self {
            Self::Iops => Some(g.iops()),
            Self::Column(i) => COLUMNS.get(i).and_then(|c| (c.value)(g)),
        }
    }
}

/// Sorts rows by `by` (missing figures last), ties by guest name.
pub fn sort(rows: &mut [GuestRow], by: SortBy, descending: bool) {
    rows.sort_by(|a, b| {
        let ord = if by == SortBy::Column(0) {
            a.guest.cmp(&b.guest)
        } else {
            match (by.value(a), by.value(b)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => return Ordering::Less,
                (None, Some(_)) => return Ordering::Greater,
                (None, None) => Ordering::Equal,
            }
        };
        let ord = if descending { ord.reverse() } else { ord };
        ord.then_with(|| a.guest.cmp(&b.guest))
    });
}

/// A figure in at most `width` characters: more decimals for small values.
pub fn fmt_num(v: Option<f64>, width: usize) -> String {
    let Some(v) = v.filter(|v| v.is_finite()) else {
        return "-".into();
    };
    let a = v.abs();
    let s = if a == 0.0 {
        "0".into()
    } else if a < 10.0 {
        format!("{v:.2}")
    } else if a < 1000.0 {
        format!("{v:.1}")
    } else if a < 1e6 {
        format!("{v:.0}")
    } else {
        format!("{:.1}M", v / 1e6)
    };
    if s.len() > width {
        format!("{:.0e}", v)
    } else {
        s
    }
}

/// The cells of one guest row, in [`COLUMNS`] order.
pub fn cells(g: &GuestRow) -> Vec<String> {
    COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                g.guest.clone()
            } else {
                fmt_num((c.value)(g), usize::from(c.width))
            }
        })
        .collect()
}

/// The device rows under a guest (disks, their queues, ports): a label and
/// cells aligned with [`COLUMNS`] (empty where the device has no figure).
pub fn device_rows(g: &GuestRow) -> Vec<(String, Vec<String>)> {
    let w = |i: usize| usize::from(COLUMNS[i].width);
    let blank = || vec![String::new(); COLUMNS.len()];
    let mut out = Vec::new();
    for d in &g.disks {
        let mut c = blank();
        c[0] = format!(" disk {}", d.disk);
        for (i, v) in [
            (1, Some(d.read_iops)),
            (2, Some(d.write_iops)),
            (3, Some(d.read_mbps)),
            (4, Some(d.write_mbps)),
            (5, d.p50_ms),
            (6, d.p99_ms),
            (7, Some(d.inflight)),
            (8, Some(d.errors)),
        ] {
            c[i] = fmt_num(v, w(i));
        }
        out.push((d.disk.clone(), c));
        for q in g.queues.iter().filter(|q| q.disk == d.disk) {
            let mut c = blank();
            c[0] = format!("  q{} kick/irq", q.queue);
            c[1] = fmt_num(Some(q.kicks_per_sec), w(1));
            c[2] = fmt_num(Some(q.interrupts_per_sec), w(2));
            out.push((format!("{}/q{}", d.disk, q.queue), c));
        }
    }
    for p in &g.ports {
        let mut c = blank();
        c[0] = format!(" port {}", p.port);
        for (i, v) in [
            (9, p.rx_pps),
            (10, p.tx_pps),
            (11, p.rx_mbitps),
            (12, p.tx_mbitps),
            (13, p.drops),
        ] {
            c[i] = fmt_num(Some(v), w(i));
        }
        out.push((p.port.clone(), c));
        if !p.drops_by_reason.is_empty() {
            let mut c = blank();
            c[0] = "  drops: ".to_owned()
                + &p.drops_by_reason
                    .iter()
                    .map(|(r, n)| format!("{r}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ");
            out.push((format!("{}/drops", p.port), c));
        }
    }
    out
}

fn line(cells: &[String], mark: char) -> String {
    let mut s = String::new();
    for (i, (c, col)) in cells.iter().zip(COLUMNS.iter()).enumerate() {
        let w = usize::from(col.width);
        if i == 0 {
            let mut name: String = c.chars().take(w - 1).collect();
            if c.chars().count() > w - 1 {
                name.pop();
                name.push('~');
            }
            s.push(mark);
            s.push_str(&format!("{name:<w$}", w = w - 1));
        } else {
            s.push_str(&format!(" {c:>w$}"));
        }
    }
    s.trim_end().to_owned()
}

/// The header line, each column with its sort key.
pub fn header() -> String {
    let cells: Vec<String> = COLUMNS.iter().map(|c| c.header.to_owned()).collect();
    line(&cells, ' ')
}

/// The sort keys, for the footer and `--help`.
pub fn key_help() -> String {
    std::iter::once("i iops".to_owned())
        .chain(COLUMNS.iter().map(|c| format!("{} {}", c.key, c.name)))
        .collect::<Vec<_>>()
        .join("  ")
}

/// The `--once` table: every guest (`!` marks one that jumped), each
/// followed by its devices.
pub fn render_text(report: &Report) -> String {
    let mut out = format!(
        "pvbackend top: {} guest(s), rates over {:.1} s\n{}\n",
        report.guests.len(),
        report.interval_secs,
        header()
    );
    for g in &report.guests {
        out.push_str(&line(&cells(g), if g.jumped { '!' } else { ' ' }));
        out.push('\n');
        for (_, c) in device_rows(g) {
            out.push_str(&line(&c, ' '));
            out.push('\n');
        }
    }
    out
}

/// Width a terminal needs to show every column.
pub fn min_width() -> u16 {
    COLUMNS.iter().map(|c| c.width + 1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, r: f64, w: f64, p99: Option<f64>) -> GuestRow {
        GuestRow {
            guest: name.into(),
            read_iops: r,
            write_iops: w,
            p99_ms: p99,
            ..GuestRow::default()
        }
    }

    #[test]
    fn sorting_by_iops_name_or_a_column_with_missing_figures_last() {
        let mut rows = vec![
            row("a", 10.0, 0.0, None),
            row("b", 5.0, 50.0, Some(1.0)),
            row("c", 20.0, 0.0, Some(9.0)),
        ];
        sort(&mut rows, SortBy::Iops, true);
        let names = |rows: &[GuestRow]| rows.iter().map(|g| g.guest.clone()).collect::<String>();
        assert_eq!(names(&rows), "bca");
        sort(&mut rows, SortBy::from_key('9').expect("p99"), true);
        assert_eq!(names(&rows), "cba");
        sort(&mut rows, SortBy::from_key('9').expect("p99"), false);
        assert_eq!(names(&rows), "bca", "ascending, still missing last");
        sort(&mut rows, SortBy::from_key('g').expect("guest"), false);
        assert_eq!(names(&rows), "abc");
        assert_eq!(SortBy::from_name("iops"), Some(SortBy::Iops));
        assert_eq!(SortBy::from_name("p99"), SortBy::from_key('9'));
        assert_eq!(SortBy::from_key('?'), None);
    }

    #[test]
    fn every_column_has_its_own_key_and_name() {
        let mut keys: Vec<char> = COLUMNS.iter().map(|c| c.key).collect();
        keys.push('i');
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), n, "duplicate sort key");
        for reserved in ['q', 'j', 'k'] {
            assert!(!keys.contains(&reserved), "{reserved} is a navigation key");
        }
    }

    #[test]
    fn figures_fit_their_columns() {
        assert_eq!(fmt_num(None, 8), "-");
        assert_eq!(fmt_num(Some(0.0), 8), "0");
        assert_eq!(fmt_num(Some(1.234), 8), "1.23");
        assert_eq!(fmt_num(Some(123.45), 8), "123.5");
        assert_eq!(fmt_num(Some(12345.0), 8), "12345");
        assert_eq!(fmt_num(Some(2.5e7), 8), "25.0M");
        assert_eq!(fmt_num(Some(f64::NAN), 8), "-");
        for v in [0.001, 1e3, 9.99e5, 1e12, -5e9] {
            assert!(fmt_num(Some(v), 5).len() <= 8, "{v}");
        }
    }
}
