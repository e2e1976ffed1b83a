//! The metrics endpoint: the daemon's Prometheus/OpenMetrics text endpoint
//! (`GET /metrics`), serving one registry that every device registers its
//! families in. The series are documented where they are defined:
//! [`crate::blk::metrics`], [`crate::net::metrics`],
//! [`crate::balloon::metrics`].

use std::sync::Arc;

use prometheus_client::registry::Registry;

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
        let server =
            tiny_http::Server::http(addr).map_err(|e| format!("metrics endpoint {addr}: {e}"))?;
        let bound = server.server_addr().to_string();
        let server = Arc::new(server);
        let s = server.clone();
        let thread = crate::worker::spawn("metrics".into(), move || {
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
