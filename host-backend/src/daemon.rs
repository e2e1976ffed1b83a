//! Serving disks: one thread per disk accepts QEMU's connection on the
//! disk's vhost-user socket, serves it until QEMU goes away, then waits for
//! the next connection (QEMU's `reconnect=` option), until asked to stop.
//!
//! Stopping (SIGTERM/SIGINT): no new connections are accepted, connected
//! devices are disconnected once their workers finish the request in hand,
//! every disk is flushed, sockets are removed. A deadline bounds the whole
//! stop; the daemon never hangs on it.

use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::blk::{BlkBackend, BlkParams, Disk, DiskError};
use crate::config::{Config, ConfigError, DiskConfig};
use crate::metrics::{BlkFamilies, DiskMetrics, MetricsServer};
use prometheus_client::registry::Registry;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("disk '{name}': {source}")]
    Disk {
        name: String,
        #[source]
        source: DiskError,
    },
    #[error("disk '{name}': socket {path} is in use by another process")]
    SocketInUse { name: String, path: PathBuf },
    #[error("disk '{name}': cannot listen on {path}: {message}")]
    Listen {
        name: String,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Metrics(String),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("cannot start thread: {0}")]
    Thread(#[source] std::io::Error),
}

struct DiskServer {
    name: String,
    socket: PathBuf,
    disk: Arc<Disk>,
    params: BlkParams,
    metrics: Arc<DiskMetrics>,
    /// Shutdown handle of the connection being served, if any.
    conn: Mutex<Option<vhost_user_backend::ShutdownHandle>>,
}

fn bind(name: &str, path: &Path) -> Result<Listener, DaemonError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(DaemonError::SocketInUse {
                name: name.to_owned(),
                path: path.to_owned(),
            });
        }
        // A stale socket from a previous run (killed before cleaning up).
        let _ = std::fs::remove_file(path);
    }
    Listener::new(path, false).map_err(|e| DaemonError::Listen {
        name: name.to_owned(),
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Waits up to `timeout` for the listener to have a pending connection.
fn readable(listener: &Listener, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll(2) on one pollfd that lives on this stack frame for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

fn serve_disk(server: Arc<DiskServer>, mut listener: Listener, stop: Arc<AtomicBool>) {
    info!(
        "disk '{}': serving {} on {}",
        server.name,
        server.disk.path().display(),
        server.socket.display()
    );
    while !stop.load(Ordering::Acquire) {
        if !readable(&listener, Duration::from_millis(200)) {
            continue;
        }
        let backend = BlkBackend::new(
            server.disk.clone(),
            server.params.clone(),
            server.metrics.clone(),
        );
        let mut daemon = match VhostUserDaemon::new(
            format!("vub-{}", server.name),
            backend,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        ) {
            Ok(d) => d,
            Err(e) => {
                error!("disk '{}': cannot create device: {e}", server.name);
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if let Err(e) = daemon.start(&mut listener) {
            warn!("disk '{}': connection failed to start: {e}", server.name);
            continue;
        }
        server.metrics.connections.inc();
        info!("disk '{}': frontend connected", server.name);
        if let Ok(mut slot) = server.conn.lock() {
            *slot = daemon.shutdown_handle();
        }
        // A stop requested between the check above and the handle being
        // published must still end this connection.
        if stop.load(Ordering::Acquire) {
            daemon.request_shutdown();
        }
        match daemon.wait() {
            Ok(()) => info!("disk '{}': frontend disconnected", server.name),
            Err(e) => warn!("disk '{}': connection ended: {e}", server.name),
        }
        if let Ok(mut slot) = server.conn.lock() {
            *slot = None;
        }
        // Dropping the daemon stops and joins its queue workers; each
        // finishes the request in hand first.
        drop(daemon);
    }
}

/// Runs the daemon until `stop` becomes true, then stops within the
/// configured deadline. Returns an error only for start-up problems.
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), DaemonError> {
    config.validate()?;
    let mut registry = Registry::default();
    let families = BlkFamilies::register(&mut registry);
    let mut servers = Vec::new();
    for d in &config.disks {
        servers.push(open_disk(d, &families)?);
    }
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
    let mut threads: Vec<(Arc<DiskServer>, JoinHandle<()>)> = Vec::new();
    for (server, listener) in servers {
        let stop = stop.clone();
        let s = server.clone();
        let handle = std::thread::Builder::new()
            .name(format!("disk-{}", server.name))
            .spawn(move || serve_disk(s, listener, stop))
            .map_err(DaemonError::Thread)?;
        threads.push((server, handle));
    }
    info!(
        "ready: {} disk(s), {} net port(s)",
        threads.len(),
        net.as_ref().map_or(0, crate::net::NetService::port_count)
    );
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(config.daemon.shutdown_timeout_secs);
    info!(
        "stopping (deadline {} s)",
        config.daemon.shutdown_timeout_secs
    );
    for (server, _) in &threads {
        if let Some(h) = server.conn.lock().ok().and_then(|s| s.clone()) {
            h.shutdown();
        }
    }
    for (server, handle) in threads {
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if handle.is_finished() {
            let _ = handle.join();
        } else {
            warn!(
                "disk '{}': still busy at the deadline; leaving it",
                server.name
            );
        }
        if let Err(e) = server.disk.flush() {
            error!("disk '{}': final flush failed: {e}", server.name);
        }
        let _ = std::fs::remove_file(&server.socket);
    }
    if let Some(n) = net {
        n.stop(deadline);
    }
    if let Some(m) = metrics {
        m.stop();
    }
    info!("stopped");
    Ok(())
}

fn open_disk(
    d: &DiskConfig,
    families: &BlkFamilies,
) -> Result<(Arc<DiskServer>, Listener), DaemonError> {
    let name = d.display_name();
    let disk = Disk::open(&d.path, d.read_only).map_err(|source| DaemonError::Disk {
        name: name.clone(),
        source,
    })?;
    let listener = bind(&name, &d.socket)?;
    let server = DiskServer {
        name,
        socket: d.socket.clone(),
        disk: Arc::new(disk),
        params: BlkParams {
            num_queues: d.num_queues,
            queue_size: d.queue_size,
            serial: d.serial(),
            poll_us: d.poll_us,
        },
        metrics: families.disk(&d.display_name(), d.num_queues),
        conn: Mutex::new(None),
    };
    Ok((Arc::new(server), listener))
}
