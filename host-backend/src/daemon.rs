//! The daemon: starts every configured device (disks, [`crate::blk`]; the
//! switch, [`crate::net`]; the balloon manager, [`crate::balloon`]) and the
//! metrics endpoint ([`crate::metrics_server`]), runs until asked to stop,
//! then stops them all within one deadline
//! (`shutdown_timeout_secs`): the daemon never hangs on a stop.
//!
//! Under systemd (`Type=notify`, see `host-backend/systemd/pvbackend.service`)
//! it tells the service manager over `$NOTIFY_SOCKET` ([`sd_notify`]):
//! `READY=1` once every configured socket listens (devices bind their
//! sockets before their start returns) and the metrics endpoint is up;
//! `STOPPING=1` when asked to stop. When the unit sets `WatchdogSec=`, a
//! watchdog thread sends `WATCHDOG=1` every half period while no device
//! thread is stalled ([`crate::liveness`]: busy longer than
//! `stall_timeout_secs`); a wedged thread stops the pings for good (with a
//! `STATUS=` line naming it), so systemd restarts the daemon. Without a
//! notify socket all of this is a no-op.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use prometheus_client::registry::Registry;
use sd_notify::NotifyState;

use crate::blk::BlkService;
use crate::config::{Config, ConfigError};
use crate::liveness::Liveness;
use crate::metrics_server::MetricsServer;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Blk(#[from] crate::blk::BlkError),
    #[error("{0}")]
    Metrics(String),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error(transparent)]
    Control(#[from] crate::guests::control::ControlError),
    #[error("cannot start thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
}

/// Runs the daemon until `stop` becomes true, then stops within the
/// configured deadline. Returns an error only for start-up problems.
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), DaemonError> {
    run_with_reload(config, stop, &AtomicBool::new(false), &|| {
        Err("no configuration to reload".into())
    })
}

/// As [`run`]; each time `reload` becomes true (SIGHUP, the unit's
/// `ExecReload=`) it takes a new configuration from `load` and applies
/// what can change without touching running devices: disks are added and
/// removed ([`BlkService::reload`]: a disk in use is never removed). A
/// configuration that does not load or validate changes nothing. Other
/// changes (switch ports, metrics address, balloon manager) are logged as
/// needing a restart.
pub fn run_with_reload(
    config: &Config,
    stop: Arc<AtomicBool>,
    reload: &AtomicBool,
    load: &dyn Fn() -> Result<Config, String>,
) -> Result<(), DaemonError> {
    config.validate()?;
    let ids = crate::sandbox::setup(config)?;
    let mut registry = Registry::default();
    let mut blk = BlkService::start(&config.disks, &mut registry, stop.clone())?;
    let balloon_metrics = Arc::new(crate::balloon::metrics::BalloonMetrics::register(
        &mut registry,
    ));
    let net = crate::net::NetService::start(
        &config.net_ports,
        &config.switch,
        &mut registry,
        stop.clone(),
    )?;
    let metrics = match &config.daemon.metrics_listen {
        Some(addr) => {
            let m = MetricsServer::start(addr, Arc::new(registry)).map_err(DaemonError::Metrics)?;
            info!("metrics on http://{}/metrics", m.addr());
            Some(m)
        }
        None => None,
    };
    // The one QMP connection per guest, shared by everything that talks
    // to guests.
    let registry = Arc::new(crate::guests::mux::Registry::new());
    let balloon = if config.balloon.serves() {
        Some(
            crate::balloon::spawn(
                config.balloon.clone(),
                balloon_metrics,
                registry.clone(),
                stop.clone(),
            )
            .map_err(DaemonError::Thread)?,
        )
    } else {
        None
    };
    let control = match config.guests.control_socket_path() {
        Some(path) => {
            let mode = config.guests.mode().map_err(ConfigError::Guests)?;
            let guests = Arc::new(crate::guests::Guests::new(
                config.guests.clone(),
                registry.clone(),
            ));
            Some(crate::guests::control::ControlServer::start(
                &path,
                mode,
                guests,
                stop.clone(),
            )?)
        }
        None => None,
    };
    let summary = format!(
        "{} disk(s), {} net port(s), balloon manager {}",
        blk.disk_count(),
        net.as_ref().map_or(0, crate::net::NetService::port_count),
        if balloon.is_some() { "on" } else { "off" }
    );
    crate::sandbox::lock_down(ids)?;
    info!("ready: {summary}");
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("serving {summary}")),
    ]);
    let watchdog = match watchdog_period() {
        Some(period) => {
            let stall = Duration::from_secs(config.daemon.stall_timeout_secs);
            info!(
                "systemd watchdog: pinging every {} ms while no thread is busy over {} s",
                period.as_millis(),
                stall.as_secs()
            );
            let st = stop.clone();
            Some(
                crate::worker::spawn("watchdog".into(), move || {
                    crate::sandbox::enter(crate::sandbox::Class::Liveness);
                    run_watchdog(Liveness::global(), period, stall, &st);
                })
                .map_err(DaemonError::Thread)?,
            )
        }
        None => None,
    };
    let mut current = config.clone();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        if reload.swap(false, Ordering::AcqRel) {
            notify(&[NotifyState::Reloading]);
            apply_reload(&mut blk, &mut current, load);
            notify(&[NotifyState::Ready]);
        }
    }
    notify(&[NotifyState::Stopping]);
    let deadline = Instant::now() + Duration::from_secs(config.daemon.shutdown_timeout_secs);
    info!(
        "stopping (deadline {} s)",
        config.daemon.shutdown_timeout_secs
    );
    blk.stop(deadline);
    if let Some(n) = net {
        n.stop(deadline);
    }
    if let Some(b) = balloon {
        // The manager checks `stop` every 100 ms; a QMP command in hand is
        // bounded by its timeout.
        if !crate::worker::join_until(b, deadline) {
            warn!("balloon manager still busy at the deadline; leaving it");
        }
    }
    if let Some(c) = control {
        c.stop();
    }
    if let Some(m) = metrics {
        m.stop();
    }
    if let Some(w) = watchdog {
        // It checks `stop` every 100 ms.
        let _ = crate::worker::join_until(w, deadline);
    }
    info!("stopped");
    Ok(())
}

/// One reload: load and validate, then apply what a reload applies.
fn apply_reload(
    blk: &mut BlkService,
    current: &mut Config,
    load: &dyn Fn() -> Result<Config, String>,
) {
    info!("reload: reading the configuration");
    let new = match load().and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string())) {
        Ok(c) => c,
        Err(e) => {
            error!("reload: {e}; nothing changed");
            return;
        }
    };
    let problems = blk.reload(&new.disks);
    if new.net_ports != current.net_ports {
        warn!("reload: switch ports changed; they are applied at the next restart");
    }
    if new.daemon.metrics_listen != current.daemon.metrics_listen {
        warn!("reload: metrics_listen changed; it is applied at the next restart");
    }
    info!(
        "reload: done, {} disk(s) served, {} problem(s)",
        blk.disk_count(),
        problems.len()
    );
    current.disks = new.disks;
}

/// Sends `states` to the service manager, if there is one.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!("cannot notify systemd: {e}");
    }
}

/// Half the unit's `WatchdogSec=`, when systemd asks this process for pings.
fn watchdog_period() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
        .then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Pings every `period` while no thread of `liveness` is busy over `stall`,
/// until `stop`. Once a thread has stalled it never pings again: a wedged
/// thread does not come back, and systemd restarting the daemon is the cure.
fn run_watchdog(liveness: &Liveness, period: Duration, stall: Duration, stop: &AtomicBool) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if Instant::now() < next {
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(100)));
            continue;
        }
        next += period;
        if let Some(s) = liveness.stalled(stall) {
            error!("{s} (limit {} s): stopping the systemd watchdog pings so systemd restarts the daemon", stall.as_secs());
            notify(&[NotifyState::Status(&format!("stalled: {s}"))]);
            return;
        }
        notify(&[NotifyState::Watchdog]);
    }
}
