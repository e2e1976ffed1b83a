//! Serving the switch: one thread per guest port accepts QEMU's connection
//! on the port's socket and serves it until QEMU goes away (then waits for
//! the next), and one thread reads the uplink TAP when there is one.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use prometheus_client::registry::Registry;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::config::{NetPortConfig, SwitchConfig};
use super::device::NetBackend;
use super::frame::{self, DropReason};
use super::metrics::NetFamilies;
use super::port::{lock, Attachment, Port, Switch};
use super::proxy;
use super::tap::{Tap, TapError};
use crate::listener::{self, ListenError};
use crate::worker;

/// Why the switch could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("net port '{name}': {source}")]
    Listen {
        name: String,
        #[source]
        source: ListenError,
    },
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot start thread: {0}")]
    Thread(#[source] std::io::Error),
}

struct PortServer {
    port: Arc<Port>,
    socket: PathBuf,
    conn: Mutex<Option<vhost_user_backend::ShutdownHandle>>,
}

/// The running switch.
pub struct NetService {
    switch: Arc<Switch>,
    ports: Vec<(Arc<PortServer>, JoinHandle<()>)>,
    uplink: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for NetService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetService")
            .field("switch", &self.switch)
            .finish()
    }
}

/// Accepts QEMU's connection and hands the backend its own end of a relay
/// (see [`proxy`]): returns (QEMU's stream, the backend's stream).
fn connect_backend(
    port: &Port,
    listener: &Listener,
    daemon: &mut VhostUserDaemon<NetBackend>,
) -> Result<(UnixStream, UnixStream), String> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let qemu = listener
        .accept()
        .map_err(|e| format!("accept: {e}"))?
        .ok_or_else(|| "accept: the connection went away".to_owned())?;
    let private = std::env::temp_dir().join(format!(
        "pvbackend-{}-{}.sock",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&private);
    let inner =
        UnixListener::bind(&private).map_err(|e| format!("bind {}: {e}", private.display()))?;
    let path = private.to_string_lossy().into_owned();
    let started = daemon.start_client(&path);
    let accepted = started
        .map_err(|e| format!("backend connect: {e}"))
        .and_then(|()| inner.accept().map_err(|e| format!("backend accept: {e}")));
    let _ = std::fs::remove_file(&private);
    let (backend, _) = accepted?;
    log::debug!("net port '{}': relay up", port.name);
    Ok((qemu, backend))
}

fn serve_port(
    switch: Arc<Switch>,
    server: Arc<PortServer>,
    listener: Listener,
    stop: Arc<AtomicBool>,
) {
    crate::sandbox::enter(crate::sandbox::Class::Connection);
    let port = server.port.clone();
    info!(
        "net port '{}': listening on {}",
        port.name,
        server.socket.display()
    );
    while !stop.load(Ordering::Acquire) {
        if !listener::readable(&listener, Duration::from_millis(200)) {
            continue;
        }
        let backend = NetBackend::new(switch.clone(), port.clone());
        let mut daemon = match VhostUserDaemon::new(
            format!("vun-{}", port.name),
            backend,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        ) {
            Ok(d) => d,
            Err(e) => {
                error!("net port '{}': cannot create device: {e}", port.name);
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let (qemu, inner) = match connect_backend(&port, &listener, &mut daemon) {
            Ok(s) => s,
            Err(e) => {
                warn!("net port '{}': connection failed to start: {e}", port.name);
                continue;
            }
        };
        port.metrics.connections.inc();
        info!("net port '{}': frontend connected", port.name);
        *lock(&server.conn) = daemon.shutdown_handle();
        if let Err(e) = proxy::relay(&qemu, &inner, &stop) {
            warn!("net port '{}': relay: {e}", port.name);
        }
        match daemon.wait() {
            Ok(()) => info!("net port '{}': frontend disconnected", port.name),
            Err(e) => warn!("net port '{}': connection ended: {e}", port.name),
        }
        *lock(&server.conn) = None;
        drop(daemon);
        port.detach();
        switch.forget(port.id);
    }
}

/// After a panic of a port's thread: the port is left as a disconnect
/// leaves it (connection shut down, detached, its MACs forgotten).
fn reset_port(switch: &Switch, server: &PortServer) {
    if let Some(h) = lock(&server.conn).take() {
        h.shutdown();
    }
    server.port.detach();
    switch.forget(server.port.id);
}

fn serve_uplink(switch: Arc<Switch>, id: usize, stop: Arc<AtomicBool>) {
    crate::sandbox::enter(crate::sandbox::Class::Switch);
    let Some(port) = switch.port(id).cloned() else {
        return;
    };
    let Attachment::Uplink(tap) = &port.attachment else {
        return;
    };
    info!("uplink '{}' attached as port {id}", tap.name());
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Acquire) {
        match tap.read_timeout(&mut buf, Duration::from_millis(200)) {
            Ok(0) => {}
            Ok(n) => {
                let f = &buf[..n];
                if f.len() < frame::ETH_HLEN {
                    port.metrics.dropped(DropReason::Runt);
                } else if f.len() > usize::from(port.mtu) + frame::FRAME_OVERHEAD {
                    port.metrics.dropped(DropReason::Oversized);
                } else {
                    switch.ingress(id, f);
                    switch.signal_due();
                }
            }
            Err(e) => {
                port.metrics.dropped(DropReason::Uplink);
                warn!("uplink '{}': read: {e}", tap.name());
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

impl NetService {
    /// Binds every port's socket, opens the uplink, registers the metrics
    /// and starts the threads. `None` when no port is configured.
    pub fn start(
        ports: &[NetPortConfig],
        switch_cfg: &SwitchConfig,
        registry: &mut Registry,
        stop: Arc<AtomicBool>,
    ) -> Result<Option<Self>, NetError> {
        if ports.is_empty() {
            return Ok(None);
        }
        let families = NetFamilies::register(registry);
        let mut listeners = Vec::new();
        let mut all = Vec::new();
        for (id, p) in ports.iter().enumerate() {
            let name = p.display_name();
            listeners.push(listener::bind_with(&p.socket, &p.socket_access()).map_err(
                |source| NetError::Listen {
                    name: name.clone(),
                    source,
                },
            )?);
            all.push(Arc::new(Port::new(
                id,
                name.clone(),
                p.mtu,
                p.mac(),
                p.rate_mbps,
                p.poll_us,
                families.guest_port(&name, p.guest.as_deref()),
                Attachment::Guest,
            )));
        }
        let uplink_id = match &switch_cfg.uplink_tap {
            Some(name) => {
                let tap = Tap::open(name)?;
                let id = all.len();
                all.push(Arc::new(Port::new(
                    id,
                    format!("uplink:{name}"),
                    all.iter().map(|p| p.mtu).max().unwrap_or(1500),
                    None,
                    None,
                    0,
                    families.port(&format!("uplink:{name}")),
                    Attachment::Uplink(tap),
                )));
                Some(id)
            }
            None => None,
        };
        let switch = Arc::new(Switch::new(
            switch_cfg.name.clone().unwrap_or_else(|| "switch0".into()),
            all.clone(),
            Duration::from_secs(switch_cfg.mac_aging_secs),
        ));
        let mut threads = Vec::new();
        for ((listener, cfg), port) in listeners.into_iter().zip(ports).zip(&all) {
            let server = Arc::new(PortServer {
                port: port.clone(),
                socket: cfg.socket.clone(),
                conn: Mutex::new(None),
            });
            let (sw, s, st) = (switch.clone(), server.clone(), stop.clone());
            let (rsw, rs) = (switch.clone(), server.clone());
            let h = worker::spawn_with_reset(
                format!("net-{}", port.name),
                move || reset_port(&rsw, &rs),
                move || serve_port(sw, s, listener, st),
            )
            .map_err(NetError::Thread)?;
            threads.push((server, h));
        }
        let uplink = match uplink_id {
            Some(id) => {
                let (sw, st) = (switch.clone(), stop.clone());
                Some(
                    worker::spawn("net-uplink".into(), move || serve_uplink(sw, id, st))
                        .map_err(NetError::Thread)?,
                )
            }
            None => None,
        };
        Ok(Some(Self {
            switch,
            ports: threads,
            uplink,
        }))
    }

    /// Guest ports served.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Disconnects every guest (the `stop` flag must already be set),
    /// waits for the threads until `deadline`, removes the sockets.
    pub fn stop(self, deadline: Instant) {
        for (server, _) in &self.ports {
            if let Some(h) = lock(&server.conn).clone() {
                h.shutdown();
            }
        }
        for (server, handle) in self.ports {
            if !worker::join_until(handle, deadline) {
                warn!(
                    "net port '{}': still busy at the deadline; leaving it",
                    server.port.name
                );
            }
            let _ = std::fs::remove_file(&server.socket);
        }
        if let Some(h) = self.uplink {
            worker::join_until(h, deadline);
        }
    }
}
