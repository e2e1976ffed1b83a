//! `pvbackend xen blkback`: watch `/local/domain/<self>/backend/vbd` and
//! run one named device thread per `<domid>/<devid>` directory the
//! toolstack creates; a device's panic ends that device, not the daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use xenbus::platform::loopback::LoopbackDomain;
use xenbus::platform::DomId;
use xenbus::xenstore::unix::UnixClient;

use super::device::{Vbd, VbdEnd};
use super::XenError;

/// Where the backend finds its peers.
#[derive(Clone, Debug)]
pub struct BlkbackOptions {
    /// The xenstored socket.
    pub xenstore: PathBuf,
    /// The loopback fabric's broker socket.
    pub broker: PathBuf,
    /// Our domain (0 for dom0).
    pub domid: DomId,
}

fn connect(xs: &Path) -> Result<UnixClient, XenError> {
    let mut c = UnixClient::connect_unix(xs)?;
    c.set_timeout(Some(Duration::from_secs(30)));
    Ok(c)
}

/// Serve until `stop` is set.
pub fn run(opts: &BlkbackOptions, stop: &Arc<AtomicBool>) -> Result<(), XenError> {
    let plat = Arc::new(
        LoopbackDomain::connect(&opts.broker, opts.domid, 0)
            .map_err(|e| XenError::Io(std::io::Error::other(e)))?,
    );
    let mut c = connect(&opts.xenstore)?;
    let root = format!("/local/domain/{}/backend/vbd", opts.domid);
    c.watch(&root, "blkback")?;
    let mut devices: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
    log::info!("xen blkback: watching {root}");
    while !stop.load(Ordering::Relaxed) {
        for domid in c.directory(&root).unwrap_or_default() {
            for devid in c.directory(&format!("{root}/{domid}")).unwrap_or_default() {
                let dir = format!("{root}/{domid}/{devid}");
                if devices.get(&dir).is_some_and(|h| !h.is_finished()) {
                    continue;
                }
                // A finished device whose directory is still there and
                // online is not restarted: it ended for a reason (logged).
                if devices.contains_key(&dir) {
                    continue;
                }
                let (xs, plat, stop, d) = (
                    opts.xenstore.clone(),
                    plat.clone(),
                    stop.clone(),
                    dir.clone(),
                );
                let h = thread::Builder::new()
                    .name(format!("xen-vbd-{domid}-{devid}"))
                    .spawn(move || serve_device(&xs, &plat, &d, &stop))?;
                devices.insert(dir, h);
            }
        }
        // Wake on any change under the root, or re-check at intervals.
        let _ = c.next_event_for("blkback", Some(Duration::from_millis(500)));
        devices.retain(|dir, h| !(h.is_finished() && c.read_opt(dir).ok().flatten().is_none()));
    }
    for (_, h) in devices {
        let _ = h.join();
    }
    Ok(())
}

fn serve_device(xs: &Path, plat: &LoopbackDomain, dir: &str, stop: &AtomicBool) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> Result<VbdEnd, XenError> {
            let mut c = connect(xs)?;
            let mut vbd = Vbd::open(&mut c, dir)?;
            let end = vbd.run(&mut c, plat, stop);
            log::info!("xen vbd {dir}: {:?} after {:?}", end, vbd.stats);
            end
        },
    ));
    match r {
        Ok(Ok(end)) => log::info!("xen vbd {dir}: ended ({end:?})"),
        Ok(Err(e)) => log::error!("xen vbd {dir}: {e}"),
        Err(_) => log::error!("xen vbd {dir}: the device thread panicked; device stopped"),
    }
}
