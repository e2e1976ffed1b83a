//! The metrics endpoint: the daemon's Prometheus/OpenMetrics text endpoint
//! (`GET /metrics`), serving one registry that every device registers its
//! families in. The series are documented where they are defined:
//! [`crate::blk::metrics`], [`crate::net::metrics`],
//! [`crate::balloon::metrics`].
//!
//! ## The guest label
//!
//! A disk or a switch port may name the guest it belongs to (`guest = "vm1"`
//! in its table, `guest=vm1` in its `--disk`/`--net-port` spec). Every
//! series of that device then carries a `guest` label, last, so that
//! everything one guest uses is grouped with one selector
//! (`{guest="vm1"}`). A device without a guest has no such label (its
//! series are unchanged). The balloon manager's per-guest series carry the
//! `guest` label too: the guest's balloon name is its identity, so a disk
//! that names `guest = "vm1"` lines up with `[[balloon.guest]] name = "vm1"`.
//! `pvbackend top` groups by it; a device without a guest shows as a row of
//! its own, named after the device.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::registry::Registry;

/// The optional `guest` label of a device's series (see the module docs):
/// encoded as `guest="..."` when set, not at all when not. Flattened into
/// each device's label sets with `#[prometheus(flatten)]`.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct GuestLabel(pub Option<String>);

impl GuestLabel {
    pub fn new(guest: Option<&str>) -> Self {
        Self(guest.map(str::to_owned))
    }
}

/// What is wrong with a device's `guest` name, if anything: it must be 1 to
/// 64 characters of letters, digits, `.`, `_`, `-` and `:` (it is a label
/// value and a column in `pvbackend top`; quotes and control characters
/// would only confuse both).
pub fn guest_name_problem(guest: Option<&str>) -> Option<String> {
    let g = guest?;
    let ok = !g.is_empty()
        && g.len() <= 64
        && g.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    (!ok).then(|| format!("guest {g:?} is not 1 to 64 letters, digits, '.', '_', '-' or ':'"))
}

impl EncodeLabelSet for GuestLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(g) => EncodeLabel::encode(&("guest", g.as_str()), encoder.encode_label()),
            None => Ok(()),
        }
    }
}

/// Renders the registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// The HTTP endpoint, served on its own thread until [`MetricsServer::stop`].
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: String,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsServer {
    /// Listens on `addr` (e.g. `127.0.0.1:9977`, port 0 for any) and serves
    /// `GET /metrics` from `registry`.
    pub fn start(addr: &str, registry: Arc<Registry>) -> Result<Self, String> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("metrics endpoint {addr}: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("metrics endpoint {addr}: {e}"))?
            .to_string();
        // The HTTP library starts its own threads (acceptor, connections):
        // it is built on the metrics thread, inside its sandbox, so they
        // inherit the filter.
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = crate::worker::spawn("metrics".into(), move || {
            crate::sandbox::enter(crate::sandbox::Class::Metrics);
            let s = match tiny_http::Server::from_listener(listener, None) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(Ok(s.clone()));
            for req in s.incoming_requests() {
                let resp = if req.url() == "/metrics" {
                    let body = render(&registry);
                    let header = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
                    );
                    let mut r = tiny_http::Response::from_string(body);
                    if let Ok(h) = header {
                        r = r.with_header(h);
                    }
                    r
                } else {
                    tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                };
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| format!("metrics thread: {e}"))?;
        let server = rx
            .recv()
            .map_err(|_| "metrics thread ended at start".to_owned())?
            .map_err(|e| format!("metrics endpoint {addr}: {e}"))?;
        Ok(Self {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Stops serving and joins the thread.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
