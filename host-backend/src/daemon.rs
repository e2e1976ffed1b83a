//! The daemon: starts every configured device (disks, [`crate::blk`]; the
//! switch, [`crate::net`]; the balloon manager, [`crate::balloon`]) and the
//! metrics endpoint ([`crate::metrics_server`]), runs until asked to stop,
//! then stops them all within one deadline
//! (`shutdown_timeout_secs`): the daemon never hangs on a stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use prometheus_client::registry::Registry;

use crate::blk::BlkService;
use crate::config::{Config, ConfigError};
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
}

/// Runs the daemon until `stop` becomes true, then stops within the
/// configured deadline. Returns an error only for start-up problems.
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), DaemonError> {
    config.validate()?;
    let mut registry = Registry::default();
    let blk = BlkService::start(&config.disks, &mut registry, stop.clone())?;
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
    info!(
        "ready: {} disk(s), {} net port(s), balloon manager {}",
        blk.disk_count(),
        net.as_ref().map_or(0, crate::net::NetService::port_count),
        if balloon.is_some() { "on" } else { "off" }
    );
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
    }
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
    info!("stopped");
    Ok(())
}
