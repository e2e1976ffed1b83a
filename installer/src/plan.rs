//! A change as a list of steps, applied in order and undone in reverse
//! when one fails, so every `pv-install` change is applied fully or not
//! at all. `--dry-run` prints the same list and applies nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pv_linux::pci::PciAddress;

use crate::error::{Error, Result};
use crate::sysfs::Sysfs;
use crate::units::Units;

/// One step of a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Replace the config file (`old` is what undo writes back; `None`:
    /// the file did not exist).
    WriteConfig {
        /// The file.
        path: PathBuf,
        /// Its text before.
        old: Option<String>,
        /// Its text after.
        new: String,
    },
    /// `systemctl start UNIT`.
    Start(String),
    /// `systemctl stop UNIT`.
    Stop(String),
    /// Wait until the runtime holds `address` (its `driver_override`
    /// set), or fail when `unit` failed or `timeout` passed.
    AwaitClaim {
        /// The function.
        address: PciAddress,
        /// The runtime's unit.
        unit: String,
        /// How long.
        timeout: Duration,
    },
    /// Give the function back to its kernel driver.
    HandBack(PciAddress),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WriteConfig { path, old, new } => {
                write!(f, "write {}", path.display())?;
                let old = old.as_deref().unwrap_or("");
                for d in diff_lines(old, new) {
                    write!(f, "\n    {d}")?;
                }
                Ok(())
            }
            Self::Start(u) => write!(f, "systemctl start {u}"),
            Self::Stop(u) => write!(f, "systemctl stop {u}"),
            Self::AwaitClaim { address, unit, .. } => {
                write!(f, "wait until {unit} holds {address}")
            }
            Self::HandBack(a) => write!(
                f,
                "hand {a} back to its kernel driver (clear driver_override, probe)"
            ),
        }
    }
}

/// The lines removed ("- ") and added ("+ ") from `old` to `new`, by a
/// longest-common-subsequence walk (config files are small).
fn diff_lines(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // lcs[i][j]: common lines of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

/// What applying a plan needs.
#[derive(Debug)]
pub struct Env<'a, U: Units> {
    /// The system's devices.
    pub sysfs: &'a Sysfs,
    /// Its service manager.
    pub units: &'a mut U,
}

fn write_atomic(path: &std::path::Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    }
    let tmp = path.with_extension("toml.pv-install-tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}

fn run<U: Units>(step: &Step, env: &mut Env<'_, U>) -> Result<()> {
    match step {
        Step::WriteConfig { path, new, .. } => write_atomic(path, new),
        Step::Start(u) => env.units.start(u),
        Step::Stop(u) => env.units.stop(u),
        Step::AwaitClaim {
            address,
            unit,
            timeout,
        } => {
            let end = Instant::now() + *timeout;
            loop {
                let f = env.sysfs.function(*address)?;
                if f.as_ref().is_some_and(|f| f.claimed_by_us()) {
                    return Ok(());
                }
                let state = env.units.state(unit);
                if state == "failed" || state == "inactive" || Instant::now() >= end {
                    return Err(Error::Systemctl {
                        args: format!("start {unit}"),
                        detail: format!(
                            "the runtime did not take {address} (unit {state}); see: journalctl -u {unit}"
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Step::HandBack(a) => env.sysfs.hand_back(*a),
    }
}

fn undo<U: Units>(step: &Step, env: &mut Env<'_, U>) -> Result<()> {
    match step {
        Step::WriteConfig { path, old, .. } => match old {
            Some(t) => write_atomic(path, t),
            None => std::fs::remove_file(path).map_err(|e| Error::io("remove", path, e)),
        },
        Step::Start(u) => env.units.stop(u),
        Step::Stop(u) => env.units.start(u),
        // Waiting changed nothing; a function handed back is the state a
        // stopped runtime leaves anyway.
        Step::AwaitClaim { .. } | Step::HandBack(_) => Ok(()),
    }
}

/// Applies `steps` in order; on the first failure undoes the ones done,
/// newest first, and says whether that worked.
pub fn apply<U: Units>(steps: &[Step], env: &mut Env<'_, U>) -> Result<()> {
    for (i, step) in steps.iter().enumerate() {
        if let Err(failed) = run(step, env) {
            // The failed step may have half-happened (a unit started but
            // never took the device): undo it too.
            for done in steps[..=i].iter().rev() {
                if let Err(u) = undo(done, env) {
                    if done == step {
                        continue;
                    }
                    return Err(Error::RollbackFailed {
                        failed: Box::new(failed),
                        undo: Box::new(u),
                    });
                }
            }
            return Err(Error::RolledBack {
                failed: Box::new(failed),
            });
        }
    }
    Ok(())
}
