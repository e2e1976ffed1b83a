//! pv-blk's Xen frontend ([`XenBlkFront`]) as a guest process on the
//! loopback Xen fabric: the domain's memory and grants through the broker
//! ([`LoopbackDomain`]), xenstore over the domain's ring page to the real
//! `xenstored` ([`GuestDomain`]). The xenbus handshake here is the one a
//! Linux blkfront runs; on real Xen only the platform object and the
//! xenstore transport change.
//!
//! [`run_pattern`] is the `pvio`-style check: stamp blocks, write them,
//! flush, read them back and verify every stamp.

use std::path::Path;
use std::ptr::NonNull;
use std::time::Duration;

use pv_blk::frontend::{BlockFrontend, IoBuf, Request, Token};
use pv_blk::pattern;
use pv_blk::xen::{XenBlkConfig, XenBlkFront, PROTOCOL};
use pv_blk::BlkError;
use xenbus::platform::loopback::{FabricError, LoopbackDomain};
use xenbus::platform::{DomId, SharedPages};
use xenbus::ring::PAGE_SIZE;
use xenbus::xenstore::client::{Client, Error as XsError, Transport};
use xenbus::xenstore::daemon::GuestDomain;
use xenbus::xenstore::state::{XenbusEndpoint, XenbusState};

/// Waits for the backend's next state, and for one completion.
const WAIT: Option<Duration> = Some(Duration::from_secs(60));
/// Pages of memory the domain asks the broker for (ring, indirect pages,
/// I/O buffers).
pub const DOMAIN_PAGES: u32 = 2048;

/// What can go wrong in the frontend process.
#[derive(Debug, thiserror::Error)]
pub enum XenFrontError {
    /// The fabric refused or failed.
    #[error("fabric: {0}")]
    Fabric(#[from] FabricError),
    /// Xenstore.
    #[error("xenstore: {0}")]
    Xenstore(#[from] XsError),
    /// The block frontend.
    #[error("block frontend: {0}")]
    Blk(BlkError),
    /// The backend published something unusable.
    #[error("the backend published a bad {0}")]
    Backend(String),
    /// A block read back differs from what was written.
    #[error("block {index}: {why}")]
    Verify {
        /// The block.
        index: u64,
        /// What differs.
        why: String,
    },
    /// Local I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The backend did not answer in time.
    #[error("timed out waiting for the backend")]
    TimedOut,
}

impl From<BlkError> for XenFrontError {
    fn from(e: BlkError) -> Self {
        Self::Blk(e)
    }
}

/// What a pattern run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PatternReport {
    /// Blocks written and verified.
    pub blocks: u64,
    /// Requests completed.
    pub requests: u64,
    /// The ring-page-order used.
    pub ring_page_order: u32,
}

fn num<T: Transport>(c: &mut Client<T>, path: &str) -> Result<Option<u64>, XenFrontError> {
    let Some(v) = c.read_opt(path)? else {
        return Ok(None);
    };
    std::str::from_utf8(&v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| XenFrontError::Backend(path.to_owned()))
}

/// A connected frontend.
pub struct Connected<'p> {
    /// The block frontend.
    pub front: XenBlkFront<&'p LoopbackDomain>,
    /// Our xenbus endpoint.
    pub me: XenbusEndpoint,
}

impl std::fmt::Debug for Connected<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected").field("me", &self.me).finish()
    }
}

/// The first half of the frontend's handshake for vbd `devid` of `domid`:
/// wait for the backend's InitWait, read its features and geometry, build
/// the ring and port, publish them and Initialised. `max_order` caps the
/// ring-page-order we ask for. Finish with [`finish_connect`].
pub fn initialise<'p, T: Transport>(
    c: &mut Client<T>,
    plat: &'p LoopbackDomain,
    domid: DomId,
    devid: u32,
    max_order: u32,
) -> Result<Connected<'p>, XenFrontError> {
    let fe_dir = format!("/local/domain/{domid}/device/vbd/{devid}");
    let be_dir = String::from_utf8(c.read(&format!("{fe_dir}/backend"))?)
        .map_err(|_| XenFrontError::Backend("backend".into()))?;
    let backend_domid = num(c, &format!("{fe_dir}/backend-id"))?
        .and_then(|v| DomId::try_from(v).ok())
        .ok_or_else(|| XenFrontError::Backend("backend-id".into()))?;
    let me = XenbusEndpoint::new(&fe_dir, &be_dir, "blkfront");
    me.watch_peer(c)?;
    let s = me.wait_peer(c, WAIT, |s| s == XenbusState::InitWait || s.is_closing())?;
    if s.is_closing() {
        return Err(XenFrontError::Backend(format!("state {s}")));
    }
    let get = |c: &mut Client<T>, k: &str| num(c, &format!("{be_dir}/{k}"));
    let cfg = XenBlkConfig {
        backend_domid,
        handle: (devid & 0xffff) as u16,
        ring_page_order: get(c, "max-ring-page-order")?
            .unwrap_or(0)
            .min(u64::from(max_order)) as u32,
        sectors: get(c, "sectors")?.ok_or_else(|| XenFrontError::Backend("sectors".into()))?,
        sector_size: get(c, "sector-size")?.unwrap_or(512) as u32,
        info: get(c, "info")?.unwrap_or(0) as u32,
        feature_flush_cache: get(c, "feature-flush-cache")? == Some(1),
        feature_barrier: get(c, "feature-barrier")? == Some(1),
        feature_discard: get(c, "feature-discard")? == Some(1),
        discard_secure: get(c, "discard-secure")? == Some(1),
        max_indirect_segments: get(c, "feature-max-indirect-segments")?.unwrap_or(0) as u32,
    };
    let front = XenBlkFront::new(plat, cfg)?;
    let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
    let refs = front.ring_refs();
    if front.ring_page_order() == 0 {
        keys.push(("ring-ref".into(), refs[0].to_string().into_bytes()));
    } else {
        keys.push((
            "ring-page-order".into(),
            front.ring_page_order().to_string().into_bytes(),
        ));
        for (i, r) in refs.iter().enumerate() {
            keys.push((format!("ring-ref{i}"), r.to_string().into_bytes()));
        }
    }
    keys.push((
        "event-channel".into(),
        front.event_channel().to_string().into_bytes(),
    ));
    keys.push(("protocol".into(), PROTOCOL.as_bytes().to_vec()));
    let entries: Vec<(&str, &[u8])> = keys.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
    me.publish(c, &entries, Some(XenbusState::Initialised))?;
    Ok(Connected { front, me })
}

/// The second half: wait for the backend's Connected, then Connected.
pub fn finish_connect<T: Transport>(
    c: &mut Client<T>,
    conn: &Connected<'_>,
) -> Result<(), XenFrontError> {
    let s = conn
        .me
        .wait_peer(c, WAIT, |s| s == XenbusState::Connected || s.is_closing())?;
    if s != XenbusState::Connected {
        return Err(XenFrontError::Backend(format!("state {s}")));
    }
    conn.me.set_state(c, XenbusState::Connected)?;
    Ok(())
}

/// Both halves of the handshake.
pub fn connect<'p, T: Transport>(
    c: &mut Client<T>,
    plat: &'p LoopbackDomain,
    domid: DomId,
    devid: u32,
    max_order: u32,
) -> Result<Connected<'p>, XenFrontError> {
    let conn = initialise(c, plat, domid, devid, max_order)?;
    finish_connect(c, &conn)?;
    Ok(conn)
}

/// Submit `reqs` and wait for all of them; every one must succeed.
fn run_batch(
    plat: &LoopbackDomain,
    front: &mut XenBlkFront<&LoopbackDomain>,
    reqs: &[Request<'_>],
) -> Result<(), XenFrontError> {
    let mut pending: Vec<Token> = Vec::with_capacity(reqs.len());
    for r in reqs {
        // SAFETY: every buffer is a distinct page range of this domain's
        // memory (allocated by `run_pattern`), untouched by this process
        // until the request's completion is delivered below.
        pending.push(unsafe { front.submit(r) }?);
    }
    let port = front.event_channel();
    let mut failed = None;
    while !pending.is_empty() {
        front.poll_completions(&mut |t, r| {
            pending.retain(|p| *p != t);
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
        })?;
        if pending.is_empty() {
            break;
        }
        if !front.prepare_wait()? && !plat.wait(port, WAIT)? {
            return Err(XenFrontError::TimedOut);
        }
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Stamp `blocks` 4 KiB blocks (seed `seed`) from sector 0, write them in
/// batches of up to `batch`, flush, read them back and verify each.
pub fn run_pattern(
    plat: &LoopbackDomain,
    conn: &mut Connected<'_>,
    blocks: u64,
    seed: u64,
    batch: usize,
) -> Result<PatternReport, XenFrontError> {
    let batch = batch.clamp(1, conn.front.info().queue_depth.max(1) as usize);
    let bufs_ptr = plat
        .alloc_pages(batch)
        .map_err(|e| XenFrontError::Io(std::io::Error::other(e.to_string())))?;
    let buf = |i: usize| -> NonNull<u8> {
        NonNull::new(bufs_ptr.as_ptr().wrapping_add(i * PAGE_SIZE)).unwrap_or(bufs_ptr)
    };
    let slice = |i: usize| -> &mut [u8] {
        // SAFETY: page `i` of the `batch` pages allocated above; only used
        // while no request owns it (between batches).
        unsafe { std::slice::from_raw_parts_mut(buf(i).as_ptr(), PAGE_SIZE) }
    };
    let mut report = PatternReport {
        ring_page_order: conn.front.ring_page_order(),
        ..PatternReport::default()
    };
    let sectors_per_block = (PAGE_SIZE / 512) as u64;
    for pass_write in [true, false] {
        let mut next = 0u64;
        while next < blocks {
            let n = (blocks - next).min(batch as u64) as usize;
            let iobufs: Vec<[IoBuf; 1]> = (0..n).map(|i| [IoBuf::new(buf(i), PAGE_SIZE)]).collect();
            if pass_write {
                for i in 0..n {
                    pattern::stamp(slice(i), seed, next + i as u64)
                        .map_err(|e| XenFrontError::Backend(e.to_string()))?;
                }
            } else {
                for i in 0..n {
                    slice(i).fill(0);
                }
            }
            let reqs: Vec<Request<'_>> = iobufs
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let sector = (next + i as u64) * sectors_per_block;
                    if pass_write {
                        Request::write(sector, b)
                    } else {
                        Request::read(sector, b)
                    }
                })
                .collect();
            run_batch(plat, &mut conn.front, &reqs)?;
            report.requests += n as u64;
            if !pass_write {
                for i in 0..n {
                    pattern::verify(slice(i), seed, next + i as u64).map_err(|e| {
                        XenFrontError::Verify {
                            index: next + i as u64,
                            why: e.to_string(),
                        }
                    })?;
                }
                report.blocks += n as u64;
            }
            next += n as u64;
        }
        if pass_write && conn.front.info().features.flush {
            run_batch(plat, &mut conn.front, &[Request::flush()])?;
            report.requests += 1;
        }
    }
    // SAFETY: every request using these pages has completed (run_batch
    // returns only when all did) and their grants were revoked then.
    unsafe { plat.free_pages(bufs_ptr, batch) };
    Ok(report)
}

/// Join the fabric and xenstore as `domid`, connect vbd `devid`, run the
/// pattern, close. Returns the report.
pub fn run(
    broker: &Path,
    xenstore_dir: &Path,
    domid: DomId,
    devid: u32,
    max_order: u32,
    blocks: u64,
    seed: u64,
) -> Result<PatternReport, XenFrontError> {
    let plat = LoopbackDomain::connect(broker, domid, DOMAIN_PAGES)?;
    let mut guest = GuestDomain::attach(xenstore_dir, u32::from(domid))?;
    let c = &mut guest.client;
    let mut conn = connect(c, &plat, domid, devid, max_order)?;
    let report = run_pattern(&plat, &mut conn, blocks, seed, 32)?;
    let Connected { front, me } = conn;
    // Quiesced (nothing in flight): drop the ring, then close.
    drop(front);
    me.close(c, WAIT)?;
    Ok(report)
}
