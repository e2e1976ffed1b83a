//! Serving disks: one thread per disk accepts QEMU's connection on the
//! disk's vhost-user socket, serves it until QEMU goes away, then waits for
//! the next connection (QEMU's `reconnect=` option), until asked to stop.
//!
//! Stopping (SIGTERM/SIGINT): no new connections are accepted, connected
//! devices are disconnected (their reorder windows closed first, so no
//! completion is published after the socket goes: QEMU's `reconnect=`
//! resubmits whatever was unpublished to the next daemon), the I/O pools
//! finish the requests they hold, every disk is flushed, sockets are
//! removed. A deadline bounds the whole stop; the daemon never hangs on it.
//!
//! The same path serves a device reset after a panic (see
//! [`crate::blk::io`]): the connection ends, the pool drains, and the disk
//! waits for QEMU's next connection while the other disks carry on.
//!
//! The balloon manager ([`crate::balloon`]), when configured, runs on its
//! own thread and stops with the rest.

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

use crate::blk::{BlkBackend, BlkParams, Disk, DiskError, IoMode, IoPool};
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
    /// The disk's I/O threads, shared by its successive connections.
    pool: Arc<IoPool>,
    /// The backend of the connection being served, if any.
    conn: Mutex<Option<BlkBackend>>,
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
            server.pool.clone(),
        );
        let mut daemon = match VhostUserDaemon::new(
            format!("vub-{}", server.name),
            backend.clone(),
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
        if let Some(h) = daemon.shutdown_handle() {
            backend.attach(h);
        }
        if let Ok(mut slot) = server.conn.lock() {
            *slot = Some(backend.clone());
        }
        // A stop requested between the check above and the backend being
        // published must still end this connection.
        if stop.load(Ordering::Acquire) {
            backend.disconnect();
        }
        match daemon.wait() {
            Ok(()) => info!("disk '{}': frontend disconnected", server.name),
            Err(e) => warn!("disk '{}': connection ended: {e}", server.name),
        }
        if let Ok(mut slot) = server.conn.lock() {
            *slot = None;
        }
        // Nothing more is published into the rings of a connection that is
        // gone (QEMU rewinds them to the used index on reconnect).
        backend.disconnect();
        // Dropping the daemon stops and joins its queue workers; each
        // finishes the request in hand first.
        drop(daemon);
        // The pool finishes the requests it holds before the next
        // connection may resubmit them: a stale write must not land after
        // a newer one.
        backend.wait_idle();
    }
}

/// Runs the daemon until `stop` becomes true, then stops within the
/// configured deadline. Returns an error only for start-up problems.
pub fn run(config: &Config, stop: Arc<AtomicBool>) -> Result<(), DaemonError> {
    config.validate()?;
    let faults = crate::blk::fault::Faults::get();
    if faults.armed() {
        warn!("TEST FAULT INJECTION ARMED (PVBACKEND_FAULT_*): {faults:?}");
    }
    let mut registry = Registry::default();
    let families = BlkFamilies::register(&mut registry);
    let balloon_metrics = Arc::new(crate::balloon::metrics::BalloonMetrics::register(
        &mut registry,
    ));
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
    let balloon = if config.balloon.serves() {
        Some(
            crate::balloon::spawn(config.balloon.clone(), balloon_metrics, stop.clone())
                .map_err(DaemonError::Thread)?,
        )
    } else {
        None
    };
    info!(
        "ready: {} disk(s), {} net port(s), balloon manager {}",
        threads.len(),
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
    for (server, _) in &threads {
        if let Some(b) = server.conn.lock().ok().and_then(|s| s.clone()) {
            b.disconnect();
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
    if let Some(b) = balloon {
        // The manager checks `stop` every 100 ms; a QMP command in hand is
        // bounded by its timeout.
        while !b.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if b.is_finished() {
            let _ = b.join();
        } else {
            warn!("balloon manager still busy at the deadline; leaving it");
        }
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
    let metrics = families.disk(&d.display_name(), d.num_queues);
    let threads = match d.io_mode {
        IoMode::Sync => 0,
        IoMode::Pool | IoMode::Hybrid => usize::from(d.io_threads),
    };
    let pool = IoPool::new(&name, threads, metrics.clone()).map_err(DaemonError::Thread)?;
    info!(
        "disk '{name}': io mode {}, {threads} I/O thread(s)",
        d.io_mode.name()
    );
    let server = DiskServer {
        name,
        socket: d.socket.clone(),
        disk: Arc::new(disk),
        params: BlkParams {
            num_queues: d.num_queues,
            queue_size: d.queue_size,
            serial: d.serial(),
            poll_us: d.poll_us,
            io_mode: d.io_mode,
        },
        metrics,
        pool: Arc::new(pool),
        conn: Mutex::new(None),
    };
    Ok((Arc::new(server), listener))
}
