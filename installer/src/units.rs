//! The service manager as `pv-install` uses it: start, stop, and the
//! state of the per-device units (`pvblkd@0000:00:04.0.service`).

use std::process::Command;

use crate::error::{Error, Result};

/// Start, stop and ask about units.
pub trait Units {
    /// `systemctl start UNIT` (waits for the start job).
    fn start(&mut self, unit: &str) -> Result<()>;
    /// `systemctl stop UNIT`.
    fn stop(&mut self, unit: &str) -> Result<()>;
    /// `systemctl is-active UNIT`: active, inactive, failed, activating...
    fn state(&self, unit: &str) -> String;
}

/// The real `systemctl`.
#[derive(Debug, Default)]
pub struct Systemctl;

fn systemctl(args: &[&str]) -> Result<String> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| Error::Systemctl {
            args: args.join(" "),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Systemctl {
            args: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Units for Systemctl {
    fn start(&mut self, unit: &str) -> Result<()> {
        systemctl(&["start", unit]).map(drop)
    }

    fn stop(&mut self, unit: &str) -> Result<()> {
        systemctl(&["stop", unit]).map(drop)
    }

    fn state(&self, unit: &str) -> String {
        // is-active exits non-zero for every state but active, and still
        // prints it.
        Command::new("systemctl")
            .args(["is-active", unit])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    }
}
