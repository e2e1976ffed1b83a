//! The memory-balance policy, in the spirit of oVirt MoM's balloon rules: a
//! pure function from the host's free memory and each guest's sample to new
//! balloon targets. No I/O here, so every rule is unit-tested.
//!
//! All figures are MiB. Per round:
//! 1. A guest whose current size is outside its `[min, max]` is put back
//!    inside at once (operator limits are not subject to the step).
//! 2. Each guest with statistics is classed: **pressured** when its
//!    available memory is below `pressure_pct` % of its size or it took
//!    more than `major_faults_per_round` major faults since the last round;
//!    **idle** when available is above `idle_pct` % and it took no major
//!    fault; otherwise neutral. A guest without statistics is left alone.
//! 3. The host mode follows its available memory: **shortage** below
//!    `host_low_mib`: idle guests give back up to `step_mib` each (never
//!    below min, never eating into the part of their available memory below
//!    `idle_pct` %), and only what was taken this round is handed to
//!    pressured guests (memory moves, the host total never grows);
//!    **normal**: pressured guests grow by up to `step_mib` each from the
//!    host's memory above `host_low_mib`; **plenty** above `host_high_mib`:
//!    as normal, then every other guest below max grows back by up to
//!    `step_mib` from the memory above `host_high_mib`.
//! 4. Changes smaller than `noise_floor_mib` are not made.
//!
//! Pressured guests are served most-pressured first (lowest available
//! ratio), so a scarce budget goes where it is needed most.

/// Policy knobs (the `[balloon]` config table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub host_low_mib: u64,
    pub host_high_mib: u64,
    pub step_mib: u64,
    pub noise_floor_mib: u64,
    pub pressure_pct: u64,
    pub idle_pct: u64,
    pub major_faults_per_round: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            host_low_mib: 1024,
            host_high_mib: 4096,
            step_mib: 128,
            noise_floor_mib: 16,
            pressure_pct: 20,
            idle_pct: 40,
            major_faults_per_round: 100,
        }
    }
}

/// The host's state this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostInput {
    pub available_mib: u64,
}

/// One guest's state this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInput {
    pub name: String,
    /// The size the guest is at or heading to (the last target set, else
    /// its actual size).
    pub current_mib: u64,
    pub min_mib: u64,
    pub max_mib: u64,
    /// Available memory from the guest's statistics, if it reports any.
    pub available_mib: Option<u64>,
    /// Major faults since the previous round, if known.
    pub major_faults_delta: Option<u64>,
}

/// Why a target changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Below its configured minimum: raised to it.
    BelowMin,
    /// Above its configured maximum: lowered to it.
    AboveMax,
    /// Idle guest during a host shortage: memory taken back.
    Reclaim,
    /// Guest under memory pressure: memory given.
    Pressure,
    /// Host has plenty: memory given back toward the maximum.
    GiveBack,
}

impl Reason {
    /// A stable snake_case name (logs and metrics).
    pub fn name(self) -> &'static str {
        match self {
            Self::BelowMin => "below_min",
            Self::AboveMax => "above_max",
            Self::Reclaim => "reclaim",
            Self::Pressure => "pressure",
            Self::GiveBack => "give_back",
        }
    }
}

/// A new target for one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub name: String,
    pub from_mib: u64,
    pub to_mib: u64,
    pub reason: Reason,
}

/// The host's mode this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMode {
    Shortage,
    Normal,
    Plenty,
}

/// Classifies the host.
pub fn host_mode(cfg: &PolicyConfig, host: HostInput) -> HostMode {
    if host.available_mib < cfg.host_low_mib {
        HostMode::Shortage
    } else if host.available_mib > cfg.host_high_mib {
        HostMode::Plenty
    } else {
        HostMode::Normal
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Pressured,
    Idle,
    Neutral,
}

fn class(cfg: &PolicyConfig, g: &GuestInput) -> Class {
    let Some(avail) = g.available_mib else {
        return Class::Neutral;
    };
    let faults = g.major_faults_delta.unwrap_or(0);
    let cur = u128::from(g.current_mib);
    let avail = u128::from(avail);
    if avail * 100 < cur * u128::from(cfg.pressure_pct) || faults > cfg.major_faults_per_round {
        Class::Pressured
    } else if avail * 100 > cur * u128::from(cfg.idle_pct) && faults == 0 {
        Class::Idle
    } else {
        Class::Neutral
    }
}

/// Computes this round's new targets. Guests not listed keep theirs.
pub fn decide(cfg: &PolicyConfig, host: HostInput, guests: &[GuestInput]) -> Vec<Decision> {
    let mut out = Vec::new();
    let mode = host_mode(cfg, host);
    // Guests inside their limits take part in balancing.
    let mut inside: Vec<&GuestInput> = Vec::new();
    for g in guests {
        // A min above max is a configuration mistake; max wins (memory
        // must never be promised beyond what the operator allowed).
        let min = g.min_mib.min(g.max_mib);
        if g.current_mib > g.max_mib {
            out.push(decision(g, g.max_mib, Reason::AboveMax));
        } else if g.current_mib < min {
            out.push(decision(g, min, Reason::BelowMin));
        } else {
            inside.push(g);
        }
    }
    let mut pressured: Vec<&GuestInput> = inside
        .iter()
        .copied()
        .filter(|g| class(cfg, g) == Class::Pressured)
        .collect();
    // Most pressured first: lowest available/current ratio (cross-multiplied).
    pressured.sort_by(|a, b| {
        let ra = u128::from(a.available_mib.unwrap_or(0)) * u128::from(b.current_mib.max(1));
        let rb = u128::from(b.available_mib.unwrap_or(0)) * u128::from(a.current_mib.max(1));
        ra.cmp(&rb).then_with(|| a.name.cmp(&b.name))
    });
    let mut budget = match mode {
        HostMode::Shortage => {
            let mut taken = 0u64;
            for g in inside.iter().filter(|g| class(cfg, g) == Class::Idle) {
                let min = g.min_mib.min(g.max_mib);
                let avail = g.available_mib.unwrap_or(0);
                let keep = g.current_mib.saturating_mul(cfg.idle_pct) / 100;
                let give = cfg
                    .step_mib
                    .min(g.current_mib.saturating_sub(min))
                    .min(avail.saturating_sub(keep));
                if give >= cfg.noise_floor_mib.max(1) {
                    out.push(decision(g, g.current_mib - give, Reason::Reclaim));
                    taken = taken.saturating_add(give);
                }
            }
            taken
        }
        HostMode::Normal | HostMode::Plenty => host.available_mib.saturating_sub(cfg.host_low_mib),
    };
    for g in &pressured {
        let grant = cfg
            .step_mib
            .min(g.max_mib.saturating_sub(g.current_mib))
            .min(budget);
        if grant >= cfg.noise_floor_mib.max(1) {
            out.push(decision(g, g.current_mib + grant, Reason::Pressure));
            budget -= grant;
        }
    }
    if mode == HostMode::Plenty {
        let given: u64 = out
            .iter()
            .filter(|d| d.reason == Reason::Pressure)
            .map(|d| d.to_mib - d.from_mib)
            .sum();
        let mut spare = host
            .available_mib
            .saturating_sub(cfg.host_high_mib)
            .saturating_sub(given);
        for g in inside.iter().filter(|g| class(cfg, g) != Class::Pressured) {
            let grant = cfg
                .step_mib
                .min(g.max_mib.saturating_sub(g.current_mib))
                .min(spare);
            if grant >= cfg.noise_floor_mib.max(1) {
                out.push(decision(g, g.current_mib + grant, Reason::GiveBack));
                spare -= grant;
            }
        }
    }
    out
}

fn decision(g: &GuestInput, to: u64, reason: Reason) -> Decision {
    Decision {
        name: g.name.clone(),
        from_mib: g.current_mib,
        to_mib: to,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            host_low_mib: 1000,
            host_high_mib: 4000,
            step_mib: 64,
            noise_floor_mib: 16,
            pressure_pct: 20,
            idle_pct: 40,
            major_faults_per_round: 50,
        }
    }

    fn guest(name: &str, cur: u64, avail: Option<u64>, faults: u64) -> GuestInput {
        GuestInput {
            name: name.into(),
            current_mib: cur,
            min_mib: 256,
            max_mib: 1024,
            available_mib: avail,
            major_faults_delta: Some(faults),
        }
    }

    fn host(mib: u64) -> HostInput {
        HostInput { available_mib: mib }
    }

    #[test]
    fn shortage_moves_memory_from_idle_to_pressured() {
        let gs = [
            guest("idle", 800, Some(600), 0),
            guest("busy", 500, Some(50), 0),
        ];
        let d = decide(&cfg(), host(500), &gs);
        assert_eq!(
            d,
            vec![
                Decision {
                    name: "idle".into(),
                    from_mib: 800,
                    to_mib: 736,
                    reason: Reason::Reclaim
                },
                Decision {
                    name: "busy".into(),
                    from_mib: 500,
                    to_mib: 564,
                    reason: Reason::Pressure
                },
            ]
        );
    }

    #[test]
    fn shortage_never_grows_the_total_and_respects_min() {
        // The idle guest can only give 20 MiB before its minimum; the busy
        // one gets exactly that.
        let gs = [
            guest("idle", 276, Some(250), 0),
            guest("busy", 500, Some(10), 0),
        ];
        let d = decide(&cfg(), host(10), &gs);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].to_mib, d[0].reason), (256, Reason::Reclaim));
        assert_eq!((d[1].to_mib, d[1].reason), (520, Reason::Pressure));
        // At min: nothing to take, nothing to give.
        let gs = [
            guest("idle", 256, Some(250), 0),
            guest("busy", 500, Some(10), 0),
        ];
        assert!(decide(&cfg(), host(10), &gs).is_empty());
    }

    #[test]
    fn reclaim_keeps_an_idle_guest_idle_and_skips_noise() {
        // Available 420 of 1000: 400 must stay, only 20 may go.
        let g = guest("g", 1000, Some(420), 0);
        let d = decide(&cfg(), host(0), std::slice::from_ref(&g));
        assert_eq!(d[0].to_mib, 980);
        // 10 MiB spare is below the noise floor: no change.
        let g = guest("g", 1000, Some(410), 0);
        assert!(decide(&cfg(), host(0), &[g]).is_empty());
    }

    #[test]
    fn faults_mean_pressure_and_block_idleness() {
        let gs = [guest("faulty", 500, Some(400), 51)];
        let d = decide(&cfg(), host(2000), &gs);
        assert_eq!((d[0].to_mib, d[0].reason), (564, Reason::Pressure));
        // Some faults but under the limit: neither idle nor pressured.
        let gs = [guest("warm", 500, Some(400), 3)];
        assert!(decide(&cfg(), host(0), &gs).is_empty());
    }

    #[test]
    fn normal_mode_grows_only_pressured_guests_within_host_budget() {
        let gs = [
            guest("idle", 800, Some(600), 0),
            guest("a", 500, Some(10), 0),
            guest("b", 500, Some(90), 0),
        ];
        // 40 MiB above the low threshold: the most pressured guest gets it.
        let d = decide(&cfg(), host(1040), &gs);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].name.as_str(), d[0].to_mib), ("a", 540));
        let d = decide(&cfg(), host(3000), &gs);
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|x| x.reason == Reason::Pressure));
    }

    #[test]
    fn plenty_gives_back_up_to_max() {
        let gs = [
            guest("idle", 1000, Some(900), 0),
            guest("nostats", 300, None, 0),
        ];
        let d = decide(&cfg(), host(10_000), &gs);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].to_mib, d[0].reason), (1024, Reason::GiveBack));
        assert_eq!((d[1].to_mib, d[1].reason), (364, Reason::GiveBack));
        // Only 30 MiB above the high threshold: one guest, 30 MiB.
        let d = decide(&cfg(), host(4030), &gs);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].to_mib - d[0].from_mib, 24);
    }

    #[test]
    fn limits_are_enforced_at_once_and_without_stats() {
        let mut g = guest("big", 4096, None, 0);
        let d = decide(&cfg(), host(2000), std::slice::from_ref(&g));
        assert_eq!((d[0].to_mib, d[0].reason), (1024, Reason::AboveMax));
        g.current_mib = 100;
        let d = decide(&cfg(), host(2000), std::slice::from_ref(&g));
        assert_eq!((d[0].to_mib, d[0].reason), (256, Reason::BelowMin));
        // min above max: max wins.
        g.min_mib = 2048;
        g.current_mib = 1024;
        assert!(decide(&cfg(), host(2000), &[g]).is_empty());
    }

    #[test]
    fn no_stats_no_balancing_and_extreme_values_do_not_overflow() {
        let gs = [guest("quiet", 500, None, 0)];
        assert!(decide(&cfg(), host(0), &gs).is_empty());
        let gs = [
            GuestInput {
                name: "x".into(),
                current_mib: u64::MAX,
                min_mib: 0,
                max_mib: u64::MAX,
                available_mib: Some(u64::MAX),
                major_faults_delta: Some(u64::MAX),
            },
            GuestInput {
                name: "y".into(),
                current_mib: 0,
                min_mib: 0,
                max_mib: u64::MAX,
                available_mib: Some(0),
                major_faults_delta: None,
            },
        ];
        for h in [0, 2000, u64::MAX] {
            for d in decide(&cfg(), host(h), &gs) {
                assert!(d.to_mib.abs_diff(d.from_mib) <= 64, "{d:?}");
            }
        }
    }
}
