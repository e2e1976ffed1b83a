//! One vbd: the backend half of the xenbus handshake, the ring, the request
//! loop on a [`Disk`], and the close.
//!
//! Handshake (backend side, `xen/io/blkif.h`): publish features and
//! InitWait; wait for the frontend's Initialised (or Connected); read
//! `ring-page-order`, `ring-ref`/`ring-refN`, `event-channel`, `protocol`;
//! map the ring, bind the port; publish `sectors`, `sector-size`, `info`
//! and Connected in one transaction. The device serves until the frontend
//! closes, the toolstack sets `online` = 0, or the frontend breaks the ring
//! protocol; then it unmaps, unbinds and goes Closed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use xenbus::platform::loopback::LoopbackDomain;
use xenbus::platform::{DomId, EventChannels, GrantMapper, GrantRef, Port};
use xenbus::ring::{BackRing, RingRegion, MAX_RING_PAGE_ORDER, PAGE_SIZE};
use xenbus::wire::blkif::{BlkifRequest, BlkifResponse, RSP_EOPNOTSUPP, RSP_ERROR, RSP_OKAY};
use xenbus::xenstore::client::{Client, Transport};
use xenbus::xenstore::state::{XenbusEndpoint, XenbusState};
use zerocopy::FromZeros;

use super::request::{self, BlkOp, BlkRequest, Geometry, Segment, SECTOR};
use super::XenError;
use crate::blk::disk::Disk;

/// How long one wait for the frontend's next state may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often an idle device looks at xenstore (frontend closing, `online`).
const IDLE_CHECK: Duration = Duration::from_millis(50);

/// Waiting for an event channel: the part of the platform the
/// [`EventChannels`] trait leaves to each platform.
pub trait EventWait {
    /// Wait up to `timeout` for `port`; true if it fired.
    fn wait_port(&self, port: Port, timeout: Duration) -> Result<bool, XenError>;
}

impl EventWait for LoopbackDomain {
    fn wait_port(&self, port: Port, timeout: Duration) -> Result<bool, XenError> {
        self.wait(port, Some(timeout))
            .map_err(|e| XenError::Io(std::io::Error::other(e)))
    }
}

/// Counters of one device (what the metrics will export).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VbdStats {
    /// Requests answered OKAY.
    pub ok: u64,
    /// Requests answered ERROR or EOPNOTSUPP because the frontend sent a
    /// bad request (each is logged).
    pub refused: u64,
    /// Requests that failed on the disk or on a grant map.
    pub failed: u64,
}

/// How a device's life ended.
#[derive(Debug, PartialEq, Eq)]
pub enum VbdEnd {
    /// The frontend closed (Closing/Closed) or vanished.
    FrontendClosed,
    /// The toolstack set `online` = 0 (or asked for Closing).
    Offline,
    /// The daemon is stopping.
    Stopped,
}

/// One vbd's backend.
#[derive(Debug)]
pub struct Vbd {
    be_dir: String,
    fe_dir: String,
    fe_domid: DomId,
    disk: Disk,
    geo: Geometry,
    /// Counters.
    pub stats: VbdStats,
}

fn toolstack_key<T: Transport>(
    c: &mut Client<T>,
    dir: &str,
    key: &str,
) -> Result<String, XenError> {
    let v = c
        .read_opt(&format!("{dir}/{key}"))?
        .ok_or_else(|| XenError::Toolstack {
            key: key.into(),
            why: "missing".into(),
        })?;
    String::from_utf8(v).map_err(|_| XenError::Toolstack {
        key: key.into(),
        why: "not UTF-8".into(),
    })
}

fn frontend_num<T: Transport>(
    c: &mut Client<T>,
    dir: &str,
    key: &str,
) -> Result<Option<u32>, XenError> {
    let Some(v) = c.read_opt(&format!("{dir}/{key}"))? else {
        return Ok(None);
    };
    std::str::from_utf8(&v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| XenError::Frontend {
            key: key.into(),
            why: format!("not a number: {:?}", String::from_utf8_lossy(&v)),
        })
}

/// The ring and port while connected.
struct Connection<'p, P: GrantMapper + EventChannels> {
    plat: &'p P,
    ring_ptr: std::ptr::NonNull<u8>,
    pages: usize,
    port: Port,
}

impl<P: GrantMapper + EventChannels> Drop for Connection<'_, P> {
    fn drop(&mut self) {
        self.plat.close(self.port);
        // SAFETY: `ring_ptr` is the mapping of `pages` pages made in
        // `connect`; the ring that borrowed it was dropped first (it lives
        // in a narrower scope than this value).
        unsafe { self.plat.unmap(self.ring_ptr, self.pages) };
    }
}

impl Vbd {
    /// Open the device the toolstack described in `be_dir`.
    pub fn open<T: Transport>(c: &mut Client<T>, be_dir: &str) -> Result<Self, XenError> {
        let fe_dir = toolstack_key(c, be_dir, "frontend")?;
        let fe_domid: DomId = toolstack_key(c, be_dir, "frontend-id")?
            .parse()
            .map_err(|_| XenError::Toolstack {
                key: "frontend-id".into(),
                why: "not a domid".into(),
            })?;
        let params = PathBuf::from(toolstack_key(c, be_dir, "params")?);
        let writable = toolstack_key(c, be_dir, "mode")? == "w";
        let disk = Disk::open(&params, !writable).map_err(|e| XenError::Disk(e.to_string()))?;
        let geo = Geometry {
            sectors: disk.size() / SECTOR,
            read_only: disk.read_only(),
            discard: !disk.read_only(),
        };
        Ok(Self {
            be_dir: be_dir.into(),
            fe_dir,
            fe_domid,
            disk,
            geo,
            stats: VbdStats::default(),
        })
    }

    /// Run handshakes and serve until the device ends. A frontend that
    /// closes and comes back (Initialising) is served again.
    pub fn run<T: Transport, P: GrantMapper + EventChannels + EventWait>(
        &mut self,
        c: &mut Client<T>,
        plat: &P,
        stop: &AtomicBool,
    ) -> Result<VbdEnd, XenError> {
        let me = XenbusEndpoint::new(&self.be_dir, &self.fe_dir, &format!("be:{}", self.be_dir));
        me.watch_peer(c)?;
        loop {
            let end = self.one_connection(c, plat, &me, stop);
            // Whatever happened, the frontend sees us Closed.
            me.set_state(c, XenbusState::Closed)?;
            match end {
                Ok(VbdEnd::FrontendClosed) => {}
                Ok(other) => return Ok(other),
                Err(e) if e.is_peer_fault() => {
                    log::error!("xen vbd {}: {e}; disconnected", self.be_dir);
                }
                Err(e) => return Err(e),
            }
            // Wait for the frontend to start over (or the device to go).
            let s = me.wait_peer(c, Some(HANDSHAKE_TIMEOUT), |s| {
                matches!(s, XenbusState::Initialising | XenbusState::Unknown)
            })?;
            if s == XenbusState::Unknown || self.offline(c)? {
                return Ok(VbdEnd::FrontendClosed);
            }
        }
    }

    fn offline<T: Transport>(&self, c: &mut Client<T>) -> Result<bool, XenError> {
        let online = c.read_opt(&format!("{}/online", self.be_dir))?;
        Ok(online.as_deref() != Some(b"1"))
    }

    fn one_connection<T: Transport, P: GrantMapper + EventChannels + EventWait>(
        &mut self,
        c: &mut Client<T>,
        plat: &P,
        me: &XenbusEndpoint,
        stop: &AtomicBool,
    ) -> Result<VbdEnd, XenError> {
        let order = MAX_RING_PAGE_ORDER.to_string();
        let sectors = self.geo.sectors.to_string();
        let info: &[u8] = if self.geo.read_only { b"4" } else { b"0" };
        // The geometry goes out with the features too (as QEMU's xen-block
        // does): a frontend may size itself before Connected.
        me.publish(
            c,
            &[
                ("sectors", sectors.as_bytes()),
                ("sector-size", b"512"),
                ("info", info),
                ("feature-flush-cache", b"1"),
                (
                    "feature-discard",
                    if self.geo.discard { b"1" } else { b"0" },
                ),
                ("discard-granularity", b"4096"),
                ("discard-alignment", b"0"),
                ("max-ring-page-order", order.as_bytes()),
            ],
            Some(XenbusState::InitWait),
        )?;
        let s = me.wait_peer(c, Some(HANDSHAKE_TIMEOUT), |s| {
            matches!(s, XenbusState::Initialised | XenbusState::Connected) || s.is_closing()
        })?;
        if s.is_closing() {
            return Ok(VbdEnd::FrontendClosed);
        }
        let conn = self.connect(c, plat)?;
        // SAFETY: the mapping is `pages` whole pages, valid until `conn`
        // drops (after the ring, declared later in this scope); the
        // frontend writes it concurrently, which the ring's atomics expect.
        let region = unsafe { RingRegion::new(conn.ring_ptr, conn.pages * PAGE_SIZE) }
            .map_err(XenError::Ring)?;
        let mut ring: BackRing<'_, BlkifRequest, BlkifResponse> =
            BackRing::attach(region, 0).map_err(XenError::Ring)?;
        me.publish(
            c,
            &[
                ("sectors", sectors.as_bytes()),
                ("sector-size", b"512"),
                ("physical-sector-size", b"512"),
                ("info", info),
            ],
            Some(XenbusState::Connected),
        )?;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(VbdEnd::Stopped);
            }
            self.drain(&mut ring, plat, conn.port)?;
            if !plat.wait_port(conn.port, IDLE_CHECK)? {
                if me.peer_state(c)?.is_closing() || me.peer_state(c)? == XenbusState::Unknown {
                    return Ok(VbdEnd::FrontendClosed);
                }
                if self.offline(c)? {
                    return Ok(VbdEnd::Offline);
                }
            }
        }
    }

    /// Map the ring and bind the port the frontend published.
    fn connect<'p, T: Transport, P: GrantMapper + EventChannels>(
        &self,
        c: &mut Client<T>,
        plat: &'p P,
    ) -> Result<Connection<'p, P>, XenError> {
        let fe = &self.fe_dir;
        if let Some(p) = c.read_opt(&format!("{fe}/protocol"))? {
            if p != b"x86_64-abi" {
                return Err(XenError::Frontend {
                    key: "protocol".into(),
                    why: format!("{:?} is not offered", String::from_utf8_lossy(&p)),
                });
            }
        }
        let order = frontend_num(c, fe, "ring-page-order")?.unwrap_or(0);
        if order > MAX_RING_PAGE_ORDER {
            return Err(XenError::Frontend {
                key: "ring-page-order".into(),
                why: format!("{order} is above the {MAX_RING_PAGE_ORDER} offered"),
            });
        }
        let pages = 1usize << order;
        let mut grefs: Vec<GrantRef> = Vec::with_capacity(pages);
        if order == 0 && c.read_opt(&format!("{fe}/ring-ref0"))?.is_none() {
            grefs.push(
                frontend_num(c, fe, "ring-ref")?.ok_or_else(|| XenError::Frontend {
                    key: "ring-ref".into(),
                    why: "missing".into(),
                })?,
            );
        } else {
            for i in 0..pages {
                let key = format!("ring-ref{i}");
                grefs.push(frontend_num(c, fe, &key)?.ok_or(XenError::Frontend {
                    key,
                    why: "missing".into(),
                })?);
            }
        }
        let evtchn = frontend_num(c, fe, "event-channel")?.ok_or_else(|| XenError::Frontend {
            key: "event-channel".into(),
            why: "missing".into(),
        })?;
        let ring_ptr = plat.map(self.fe_domid, &grefs, true)?;
        let port = match plat.bind_interdomain(self.fe_domid, evtchn) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: just mapped above, nothing uses it yet.
                unsafe { plat.unmap(ring_ptr, pages) };
                return Err(e.into());
            }
        };
        Ok(Connection {
            plat,
            ring_ptr,
            pages,
            port,
        })
    }

    /// Answer every request on the ring, then sleep-check (final check).
    fn drain<P: GrantMapper + EventChannels>(
        &mut self,
        ring: &mut BackRing<'_, BlkifRequest, BlkifResponse>,
        plat: &P,
        port: Port,
    ) -> Result<(), XenError> {
        loop {
            while let Some(raw) = ring.consume_request().map_err(XenError::Ring)? {
                let rsp = self.handle(&raw, plat);
                ring.push_response(&rsp).map_err(XenError::Ring)?;
            }
            if ring
                .push_responses_and_check_notify()
                .map_err(XenError::Ring)?
            {
                plat.notify(port)?;
            }
            if !ring.final_check_for_requests().map_err(XenError::Ring)? {
                return Ok(());
            }
        }
    }

    /// Answer one request (a copy of the slot, read once by the ring).
    fn handle<P: GrantMapper>(&mut self, raw: &BlkifRequest, plat: &P) -> BlkifResponse {
        let mut rsp = BlkifResponse::new_zeroed();
        rsp.id = raw.id;
        rsp.operation = raw.operation;
        rsp.status = match request::parse(raw, &self.geo) {
            Err(e) => {
                log::warn!("xen vbd {}: refused request: {e}", self.be_dir);
                self.stats.refused += 1;
                if e.not_supported() {
                    RSP_EOPNOTSUPP
                } else {
                    RSP_ERROR
                }
            }
            Ok(req) => match self.execute(&req, plat) {
                Ok(()) => {
                    self.stats.ok += 1;
                    RSP_OKAY
                }
                Err(e) => {
                    log::warn!("xen vbd {}: request {} failed: {e}", self.be_dir, req.id);
                    self.stats.failed += 1;
                    RSP_ERROR
                }
            },
        };
        rsp
    }

    fn execute<P: GrantMapper>(&self, req: &BlkRequest, plat: &P) -> Result<(), XenError> {
        match &req.op {
            BlkOp::Flush => Ok(self.disk.flush()?),
            BlkOp::Discard {
                sector, sectors, ..
            } => Ok(self.disk.discard(sector * SECTOR, sectors * SECTOR)?),
            BlkOp::Read { sector, segs } => self.transfer(plat, *sector, segs, false),
            BlkOp::Write { sector, segs } => self.transfer(plat, *sector, segs, true),
        }
    }

    /// Map the request's pages (writable for a read into them), move the
    /// data, unmap.
    fn transfer<P: GrantMapper>(
        &self,
        plat: &P,
        sector: u64,
        segs: &[Segment],
        write: bool,
    ) -> Result<(), XenError> {
        let grefs: Vec<GrantRef> = segs.iter().map(|s| s.gref).collect();
        let base = plat.map(self.fe_domid, &grefs, !write)?;
        let mut iovs: Vec<libc::iovec> = segs
            .iter()
            .enumerate()
            .map(|(i, s)| libc::iovec {
                iov_base: base
                    .as_ptr()
                    .wrapping_add(i * PAGE_SIZE + s.offset())
                    .cast(),
                iov_len: s.len(),
            })
            .collect();
        let offset = sector * SECTOR;
        let r = if write {
            // SAFETY: each iovec lies inside page `i` of the mapping (offset
            // + length <= 4096, validated by `parse`), which stays mapped
            // until the unmap below; the frontend may change the data
            // concurrently, which only changes the bytes written.
            unsafe { self.disk.write_at(offset, &mut iovs) }
        } else {
            // SAFETY: as above, and the mapping is writable (asked for
            // `!write` = true).
            unsafe { self.disk.read_at(offset, &mut iovs) }
        };
        // SAFETY: `base` is the mapping of `grefs.len()` pages made above;
        // the iovecs pointing into it are not used after this.
        unsafe { plat.unmap(base, grefs.len()) };
        Ok(r?)
    }
}
