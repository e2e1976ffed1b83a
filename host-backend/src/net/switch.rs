//! The switch's forwarding logic, free of I/O: a MAC table with aging and a
//! per-port cap, the forwarding decision, and a token-bucket rate limiter.
//! Time is passed in, so tests and the fuzzer control it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::frame::{dst_mac, is_group, src_mac, Mac};

/// Most MAC addresses learned per port: a guest inventing source addresses
/// cannot grow the table without bound or evict other ports' entries.
pub const MAX_MACS_PER_PORT: usize = 256;

/// What happened to the table when a frame's source was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Already known on this port (its age was refreshed), or not learnable
    /// (a group address, or the port's cap is reached).
    Nothing,
    /// A new entry.
    New,
    /// The address moved here from another port.
    Moved { from: usize },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: usize,
    seen: Instant,
}

/// MAC address → port, with aging.
#[derive(Debug)]
pub struct MacTable {
    entries: HashMap<Mac, Entry>,
    per_port: HashMap<usize, usize>,
    aging: Duration,
    last_sweep: Option<Instant>,
}

impl MacTable {
    pub fn new(aging: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            per_port: HashMap::new(),
            aging,
            last_sweep: None,
        }
    }

    /// Learns `mac` on `port` at `now`.
    pub fn learn(&mut self, mac: Mac, port: usize, now: Instant) -> Learned {
        if is_group(&mac) {
            return Learned::Nothing;
        }
        match self.entries.get_mut(&mac) {
            Some(e) if e.port == port => {
                e.seen = now;
                Learned::Nothing
            }
            Some(e) => {
                let from = e.port;
                if self.per_port.get(&port).copied().unwrap_or(0) >= MAX_MACS_PER_PORT {
                    return Learned::Nothing;
                }
                e.port = port;
                e.seen = now;
                self.dec(from);
                *self.per_port.entry(port).or_insert(0) += 1;
                Learned::Moved { from }
            }
            None => {
                let n = self.per_port.entry(port).or_insert(0);
                if *n >= MAX_MACS_PER_PORT {
                    return Learned::Nothing;
                }
                *n += 1;
                self.entries.insert(mac, Entry { port, seen: now });
                Learned::New
            }
        }
    }

    fn dec(&mut self, port: usize) {
        if let Some(n) = self.per_port.get_mut(&port) {
            *n = n.saturating_sub(1);
        }
    }

    /// The port `mac` was last seen on, unless that entry has aged out.
    pub fn lookup(&self, mac: &Mac, now: Instant) -> Option<usize> {
        self.entries
            .get(mac)
            .filter(|e| now.saturating_duration_since(e.seen) <= self.aging)
            .map(|e| e.port)
    }

    /// Removes aged entries (at most once a second); returns them.
    pub fn sweep(&mut self, now: Instant) -> Vec<(Mac, usize)> {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return Vec::new();
        }
        self.last_sweep = Some(now);
        let aging = self.aging;
        let old: Vec<(Mac, usize)> = self
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.seen) > aging)
            .map(|(m, e)| (*m, e.port))
            .collect();
        for (m, p) in &old {
            self.entries.remove(m);
            self.dec(*p);
        }
        old
    }

    /// Forgets every address learned on `port` (its guest went away or was
    /// reset); returns them.
    pub fn forget_port(&mut self, port: usize) -> Vec<Mac> {
        let gone: Vec<Mac> = self
            .entries
            .iter()
            .filter(|(_, e)| e.port == port)
            .map(|(m, _)| *m)
            .collect();
        for m in &gone {
            self.entries.remove(m);
        }
        self.per_port.remove(&port);
        gone
    }

    /// Entries learned on `port`.
    pub fn count(&self, port: usize) -> usize {
        self.per_port.get(&port).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// To one port.
    Unicast(usize),
    /// To every port but the ingress one (broadcast, multicast, unknown
    /// unicast).
    Flood,
    /// Nowhere: the destination lives behind the ingress port.
    SamePort,
}

/// Learns the source of `frame` (at least 14 bytes) on `ingress` and
/// decides where it goes.
pub fn decide(
    table: &mut MacTable,
    ingress: usize,
    frame: &[u8],
    now: Instant,
) -> (Decision, Learned) {
    let learned = src_mac(frame).map_or(Learned::Nothing, |s| table.learn(s, ingress, now));
    let Some(dst) = dst_mac(frame) else {
        return (Decision::Flood, learned);
    };
    if is_group(&dst) {
        return (Decision::Flood, learned);
    }
    let d = match table.lookup(&dst, now) {
        Some(p) if p == ingress => Decision::SamePort,
        Some(p) => Decision::Unicast(p),
        None => Decision::Flood,
    };
    (d, learned)
}

/// A token bucket over bytes: `rate` bytes per second, `burst` bytes deep.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket for `mbps` megabits per second (10^6 bits), full at `now`.
    /// The burst is 10 ms of traffic, at least 64 KiB (so one maximal frame
    /// and a TCP window's start always pass).
    pub fn new_mbps(mbps: u32, now: Instant) -> Self {
        let rate = f64::from(mbps) * 1e6 / 8.0;
        let burst = (rate / 100.0).max(65536.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `bytes` tokens if there are enough.
    pub fn admit(&mut self, bytes: usize, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        let need = bytes as f64;
        if self.tokens >= need {
            self.tokens -= need;
            true
        } else {
            false
        }
    }
}

/// A CPU budget for polling: at most [`PollBudget::SHARE_PERCENT`] of
/// every [`PollBudget::PERIOD`] spent spinning. A guest that streams
/// frames just slower than the window could otherwise keep a switch thread
/// spinning all the time, and on a small host that CPU is taken from the
/// TCG vCPUs the polling is meant to serve.
#[derive(Debug, Clone, Default)]
pub struct PollBudget {
    start: Option<Instant>,
    spent: Duration,
}

impl PollBudget {
    /// Accounting period.
    pub const PERIOD: Duration = Duration::from_millis(100);
    /// Share of each period one port may spend polling.
    pub const SHARE_PERCENT: u32 = 10;

    /// How long a window asked for as `window` may spin at `now`: the
    /// rest of this period's allowance, at most `window` (zero when spent).
    pub fn grant(&mut self, window: Duration, now: Instant) -> Duration {
        let fresh = self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= Self::PERIOD);
        if fresh {
            self.start = Some(now);
            self.spent = Duration::ZERO;
        }
        let allowed = Self::PERIOD * Self::SHARE_PERCENT / 100;
        allowed.saturating_sub(self.spent).min(window)
    }

    /// Records `spun` spent polling.
    pub fn spend(&mut self, spun: Duration) {
        self.spent = self.spent.saturating_add(spun);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f
    }

    const A: Mac = [0x52, 0x54, 0, 0, 0, 1];
    const B: Mac = [0x52, 0x54, 0, 0, 0, 2];
    const BCAST: Mac = [0xff; 6];

    #[test]
    fn learns_floods_and_forwards() {
        let t0 = Instant::now();
        let mut t = MacTable::new(Duration::from_secs(300));
        // A broadcasts (ARP): flooded, A learned on port 0.
        assert_eq!(
            decide(&mut t, 0, &frame(BCAST, A), t0),
            (Decision::Flood, Learned::New)
        );
        // B answers A: unicast to port 0, B learned on port 1.
        assert_eq!(
            decide(&mut t, 1, &frame(A, B), t0),
            (Decision::Unicast(0), Learned::New)
        );
        assert_eq!(
            decide(&mut t, 0, &frame(B, A), t0),
            (Decision::Unicast(1), Learned::Nothing)
        );
        // Unknown unicast floods; a frame to a MAC behind the ingress port
        // goes nowhere.
        assert_eq!(
            decide(&mut t, 0, &frame([2, 0, 0, 0, 0, 9], A), t0).0,
            Decision::Flood
        );
        assert_eq!(decide(&mut t, 0, &frame(A, A), t0).0, Decision::SamePort);
        // A group source address is never learned.
        assert_eq!(decide(&mut t, 2, &frame(A, BCAST), t0).1, Learned::Nothing);
        // A moves to port 2.
        assert_eq!(
            decide(&mut t, 2, &frame(B, A), t0).1,
            Learned::Moved { from: 0 }
        );
        assert_eq!((t.count(0), t.count(1), t.count(2)), (0, 1, 1));
    }

    #[test]
    fn entries_age_out() {
        let t0 = Instant::now();
        let mut t = MacTable::new(Duration::from_secs(10));
        t.learn(A, 0, t0);
        assert_eq!(t.lookup(&A, t0 + Duration::from_secs(10)), Some(0));
        assert_eq!(t.lookup(&A, t0 + Duration::from_secs(11)), None);
        assert_eq!(t.sweep(t0 + Duration::from_secs(11)), vec![(A, 0)]);
        assert!(t.is_empty() && t.count(0) == 0);
    }

    #[test]
    fn a_port_cannot_fill_the_table() {
        let t0 = Instant::now();
        let mut t = MacTable::new(Duration::from_secs(10));
        for i in 0..1000u32 {
            let b = i.to_be_bytes();
            t.learn([2, 0, b[0], b[1], b[2], b[3]], 0, t0);
        }
        assert_eq!(t.count(0), MAX_MACS_PER_PORT);
        assert_eq!(t.learn(B, 1, t0), Learned::New);
        assert_eq!(t.forget_port(0).len(), MAX_MACS_PER_PORT);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn poll_budget_caps_the_share() {
        let t0 = Instant::now();
        let w = Duration::from_micros(50);
        let mut b = PollBudget::default();
        let allowed = PollBudget::PERIOD * PollBudget::SHARE_PERCENT / 100;
        let mut spun = Duration::ZERO;
        loop {
            let g = b.grant(w, t0 + spun);
            if g.is_zero() {
                break;
            }
            assert!(g <= w);
            b.spend(g);
            spun += g;
        }
        assert_eq!(spun, allowed);
        // A new period grants a full window again.
        assert_eq!(b.grant(w, t0 + PollBudget::PERIOD), w);
    }

    #[test]
    fn token_bucket_limits_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new_mbps(8, t0); // 1 MB/s, 64 KiB burst
        let mut sent = 0;
        while b.admit(1000, t0) {
            sent += 1000;
        }
        assert_eq!(sent, 65000);
        // 10 ms later: 10 kB more.
        let t1 = t0 + Duration::from_millis(10);
        let mut more = 0;
        while b.admit(1000, t1) {
            more += 1000;
        }
        assert_eq!(more, 10_000);
    }
}
