//! Serving disks: one thread per disk accepts QEMU's connections on the
//! disk's vhost-user socket, each served by a thread of its own until QEMU
//! goes away, until asked to stop. A second connection is accepted while
//! one is served (a live migration's destination on this host, see
//! [`super::handover`] for who may run requests then); a connection that
//! ended drains its requests before the next one is accepted (QEMU's
//! `reconnect=` option resubmits them).
//!
//! Stopping (SIGTERM/SIGINT): no new connections are accepted, connected
//! devices are disconnected (their reorder windows closed first, so no
//! completion is published after the socket goes: QEMU's `reconnect=`
//! resubmits whatever was unpublished to the next daemon), the I/O pools
//! finish the requests they hold, every disk is flushed, sockets are
//! removed. A deadline bounds the whole stop; the daemon never hangs on it.
//!
//! The same path serves a device reset after a panic (see
//! [`super::io`]): the connection ends, the pool drains, and the disk
//! waits for QEMU's next connection while the other disks carry on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use prometheus_client::registry::Registry;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::config::DiskConfig;
use super::fault::Faults;
use super::handover::Ownership;
use super::metrics::{BlkFamilies, DiskMetrics};
use super::{BlkBackend, BlkParams, Disk, DiskError, IoMode, IoPool};
use crate::listener::{self, ListenError};
use crate::worker;

/// Why the disks could not be served.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    #[error("disk '{name}': {source}")]
    Disk {
        name: String,
        #[source]
        source: DiskError,
    },
    #[error("disk '{name}': {source}")]
    Listen {
        name: String,
        #[source]
        source: ListenError,
    },
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
    /// The backends of the connections being served (at most
    /// [`MAX_CONNECTIONS`]), by connection number.
    conns: Mutex<Vec<(u64, BlkBackend)>>,
    /// Which connection may run requests (see [`super::handover`]).
    ownership: Arc<Ownership>,
    /// Connections that ended and whose requests are still in the pool.
    draining: AtomicUsize,
    /// The table it was started from (a reload compares against it).
    config: DiskConfig,
    /// A reload removed it: the thread ends as on stop (only while no
    /// frontend is connected).
    retire: AtomicBool,
}

/// Connections served at once per disk: the owner and one claimant (the
/// destination of a live migration on this host, see [`super::handover`]).
/// A third waits in the socket's backlog until one of them ends.
pub const MAX_CONNECTIONS: usize = 2;

impl DiskServer {
    /// Ends the connections being served, if any (stop, or a reset after a
    /// panic of the disk's thread).
    fn disconnect(&self) {
        let conns: Vec<BlkBackend> = self
            .conns
            .lock()
            .map(|c| c.iter().map(|(_, b)| b.clone()).collect())
            .unwrap_or_default();
        for b in conns {
            b.disconnect();
        }
    }

    fn connected(&self) -> bool {
        self.conns.lock().map_or(true, |c| !c.is_empty())
    }
}

/// Serves one connection until it ends, then drains it (see the module
/// docs) and gives up its hold on the disk.
fn serve_connection(
    server: &DiskServer,
    id: u64,
    backend: BlkBackend,
    mut daemon: VhostUserDaemon<BlkBackend>,
) {
    match daemon.wait() {
        Ok(()) => info!(
            "disk '{}': frontend disconnected (connection {id})",
            server.name
        ),
        Err(e) => warn!("disk '{}': connection {id} ended: {e}", server.name),
    }
    server.draining.fetch_add(1, Ordering::AcqRel);
    server.ownership.ended(id);
    if let Ok(mut conns) = server.conns.lock() {
        conns.retain(|(c, _)| *c != id);
    }
    // Nothing more is published into the rings of a connection that is
    // gone (QEMU rewinds them to the used index on reconnect).
    backend.disconnect();
    // Dropping the daemon stops and joins its queue workers; each
    // finishes the request in hand first.
    drop(daemon);
    // The pool finishes the requests it holds before another connection
    // may run requests (rule 2 of `handover`): a stale write must not land
    // after a newer one.
    backend.wait_idle();
    server.ownership.released(id);
    server.draining.fetch_sub(1, Ordering::AcqRel);
}

fn serve_disk(server: Arc<DiskServer>, mut listener: Listener, stop: Arc<AtomicBool>, wedge: bool) {
    crate::sandbox::enter(crate::sandbox::Class::Connection);
    // Busy while it works between waits; idle while it waits for a
    // connection (the queue workers mark themselves).
    let beat = crate::liveness::Liveness::global().register(format!("disk-{}", server.name));
    let started = Instant::now();
    info!(
        "disk '{}': serving {} on {}",
        server.name,
        server.disk.path().display(),
        server.socket.display()
    );
    let mut next_id = 0u64;
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Acquire) && !server.retire.load(Ordering::Acquire) {
        if wedge {
            let _busy = beat.busy();
            Faults::get().wedge_if_due(started);
        }
        threads.retain(|h| !h.is_finished());
        if !listener::readable(&listener, Duration::from_millis(200)) {
            continue;
        }
        if server.draining.load(Ordering::Acquire) > 0 {
            // An ended connection's requests are still in the disk: the
            // next connection is accepted once they are done (QEMU's
            // reconnect resubmits them; they must not race the old ones).
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let connected = server.conns.lock().map_or(MAX_CONNECTIONS, |c| c.len());
        if connected >= MAX_CONNECTIONS {
            // Another one waits in the socket's backlog until one of the
            // two goes (as every connection did before handovers).
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let busy = beat.busy();
        next_id += 1;
        let id = next_id;
        let backend = BlkBackend::new(
            server.disk.clone(),
            server.params.clone(),
            server.metrics.clone(),
            server.pool.clone(),
            id,
            server.ownership.clone(),
        );
        let mut daemon = match VhostUserDaemon::new(
            format!("vub-{}-{id}", server.name),
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
        match connected {
            0 => info!("disk '{}': frontend connected (connection {id})", server.name),
            _ => info!(
                "disk '{}': frontend connected (connection {id}) while another is served (a handover: it runs requests once the current owner has stopped)",
                server.name
            ),
        }
        if let Some(h) = daemon.shutdown_handle() {
            backend.attach(h);
        }
        if let Ok(mut conns) = server.conns.lock() {
            conns.push((id, backend.clone()));
        }
        // A stop requested between the check above and the backend being
        // published must still end this connection.
        if stop.load(Ordering::Acquire) {
            backend.disconnect();
        }
        let s = server.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("disk-{}-c{id}", server.name))
            .spawn(move || serve_connection(&s, id, backend, daemon));
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                // The closure, and with it the daemon, is dropped: the
                // connection is closed; it must not count as served.
                error!(
                    "disk '{}': cannot start a thread for connection {id}: {e}",
                    server.name
                );
                if let Ok(mut conns) = server.conns.lock() {
                    conns.retain(|(c, _)| *c != id);
                }
                server.ownership.released(id);
            }
        }
        drop(busy);
    }
    // Stopping: `BlkService::stop` disconnected every connection; each
    // thread drains its requests.
    for h in threads {
        let _ = h.join();
    }
}

/// The disks being served: one thread per disk.
pub struct BlkService {
    disks: Vec<(Arc<DiskServer>, JoinHandle<()>)>,
    families: BlkFamilies,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for BlkService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkService")
            .field("disks", &self.disks.len())
            .finish()
    }
}

impl BlkService {
    /// Registers the block metrics, opens every disk, binds its socket and
    /// starts its thread.
    pub fn start(
        disks: &[DiskConfig],
        registry: &mut Registry,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, BlkError> {
        let faults = Faults::get();
        if faults.armed() {
            warn!("TEST FAULT INJECTION ARMED (PVBACKEND_FAULT_*): {faults:?}");
        }
        let families = BlkFamilies::register(registry);
        let mut servers = Vec::new();
        for d in disks {
            servers.push(open_disk(d, &families)?);
        }
        let mut service = Self {
            disks: Vec::new(),
            families,
            stop,
        };
        for (i, (server, listener)) in servers.into_iter().enumerate() {
            service.spawn(server, listener, i == 0)?;
        }
        Ok(service)
    }

    fn spawn(
        &mut self,
        server: Arc<DiskServer>,
        listener: Listener,
        wedge: bool,
    ) -> Result<(), BlkError> {
        let stop = self.stop.clone();
        let (s, r) = (server.clone(), server.clone());
        let handle = worker::spawn_with_reset(
            format!("disk-{}", server.name),
            move || r.disconnect(),
            move || serve_disk(s, listener, stop, wedge),
        )
        .map_err(BlkError::Thread)?;
        self.disks.push((server, handle));
        Ok(())
    }

    /// Brings the served disks to `wanted` (a configuration reload), never
    /// touching a disk whose table did not change: a disk whose socket is
    /// new is opened and served; a disk no longer wanted is removed unless
    /// a frontend is connected to it (refused, logged: its guest would
    /// lose its disk); a disk whose table changed keeps running as it was
    /// (logged: the change needs a restart). Every decision is logged;
    /// returns the disks refused or failed, to report.
    pub fn reload(&mut self, wanted: &[DiskConfig]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut kept = Vec::new();
        for (server, handle) in std::mem::take(&mut self.disks) {
            match wanted.iter().find(|d| d.socket == server.socket) {
                Some(d) if *d == server.config => kept.push((server, handle)),
                Some(_) => {
                    let msg = format!(
                        "disk '{}': changed settings are not applied to a running disk; restart the daemon to apply them",
                        server.name
                    );
                    warn!("reload: {msg}");
                    problems.push(msg);
                    kept.push((server, handle));
                }
                None if server.connected() => {
                    let msg = format!(
                        "disk '{}' not removed: a frontend is connected to {}; shut its guest down (or detach the disk) and reload again",
                        server.name,
                        server.socket.display()
                    );
                    warn!("reload: {msg}");
                    problems.push(msg);
                    kept.push((server, handle));
                }
                None => {
                    server.retire.store(true, Ordering::Release);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    if !worker::join_until(handle, deadline) {
                        warn!(
                            "reload: disk '{}': thread still busy; leaving it",
                            server.name
                        );
                    }
                    if let Err(e) = server.disk.flush() {
                        error!("disk '{}': final flush failed: {e}", server.name);
                    }
                    info!("reload: disk '{}' removed", server.name);
                }
            }
        }
        self.disks = kept;
        for d in wanted {
            if self.disks.iter().any(|(s, _)| s.socket == d.socket) {
                continue;
            }
            let added = open_disk(d, &self.families).and_then(|(server, listener)| {
                let name = server.name.clone();
                self.spawn(server, listener, false).map(|()| name)
            });
            match added {
                Ok(name) => info!("reload: disk '{name}' added on {}", d.socket.display()),
                Err(e) => {
                    let msg = format!("{e}: not added");
                    error!("reload: {msg}");
                    problems.push(msg);
                }
            }
        }
        problems
    }

    /// Disks served.
    pub fn disk_count(&self) -> usize {
        self.disks.len()
    }

    /// Disconnects every frontend (the `stop` flag must already be set),
    /// waits for the threads until `deadline`, flushes every disk, removes
    /// the sockets.
    pub fn stop(self, deadline: Instant) {
        for (server, _) in &self.disks {
            server.disconnect();
        }
        for (server, handle) in self.disks {
            if !worker::join_until(handle, deadline) {
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
    }
}

fn open_disk(
    d: &DiskConfig,
    families: &BlkFamilies,
) -> Result<(Arc<DiskServer>, Listener), BlkError> {
    let name = d.display_name();
    let disk = Disk::open(&d.path, d.read_only).map_err(|source| BlkError::Disk {
        name: name.clone(),
        source,
    })?;
    let listener =
        listener::bind_with(&d.socket, &d.socket_access()).map_err(|source| BlkError::Listen {
            name: name.clone(),
            source,
        })?;
    let metrics = families.guest_disk(&d.display_name(), d.guest.as_deref(), d.num_queues);
    let threads = match d.io_mode {
        IoMode::Sync => 0,
        IoMode::Pool | IoMode::Hybrid => usize::from(d.io_threads),
    };
    let pool = IoPool::new(&name, threads, metrics.clone()).map_err(BlkError::Thread)?;
    info!(
        "disk '{name}': io mode {}, {threads} I/O thread(s)",
        d.io_mode.name()
    );
    let liveness = (0..d.num_queues)
        .map(|q| crate::liveness::Liveness::global().register(format!("disk-{name} queue {q}")))
        .collect();
    let server = DiskServer {
        name,
        socket: d.socket.clone(),
        disk: Arc::new(disk),
        params: BlkParams {
            num_queues: d.num_queues,
            queue_size: d.queue_size,
            serial: d.serial(),
            liveness,
            poll_us: d.poll_us,
            io_mode: d.io_mode,
            stop_timeout: Duration::from_millis(u64::from(d.stop_timeout_ms)),
        },
        metrics,
        pool: Arc::new(pool),
        conns: Mutex::new(Vec::new()),
        ownership: Arc::new(Ownership::default()),
        draining: AtomicUsize::new(0),
        config: d.clone(),
        retire: AtomicBool::new(false),
    };
    Ok((Arc::new(server), listener))
}
