//! The toolstack's part of a vbd, as `xl block-attach`/`xl block-detach`
//! do it (libxl `libxl__device_generic_add`, `libxl__domain_make`): the
//! guest's home, the frontend directory owned by the guest and readable by
//! the backend domain, the backend directory owned by the backend domain and
//! readable by the guest, both in Initialising, each naming the other.

use std::path::Path;
use std::time::{Duration, Instant};

use xenbus::platform::DomId;
use xenbus::xenstore::client::{Client, Transport};
use xenbus::xenstore::wire::{Access, Perm};

use super::XenError;

/// What one virtual block device is.
#[derive(Clone, Debug)]
pub struct VbdSpec<'a> {
    /// The guest (frontend) domain.
    pub domid: DomId,
    /// The device id (`virtual-device`; 51712 is xvda).
    pub devid: u32,
    /// The backend's domain (0: dom0).
    pub backend_domid: DomId,
    /// The disk image.
    pub target: &'a Path,
    /// Read-write (`mode` = `w`) or read-only (`r`).
    pub writable: bool,
}

/// `/local/domain/<domid>/device/vbd/<devid>`.
pub fn frontend_dir(domid: DomId, devid: u32) -> String {
    format!("/local/domain/{domid}/device/vbd/{devid}")
}

/// `/local/domain/<backend>/backend/vbd/<domid>/<devid>`.
pub fn backend_dir(backend: DomId, domid: DomId, devid: u32) -> String {
    format!("/local/domain/{backend}/backend/vbd/{domid}/{devid}")
}

/// Create the guest's home as `libxl__domain_make` does: the home and its
/// `device` directory owned by dom0 and readable by the guest.
pub fn create_domain_home<T: Transport>(c: &mut Client<T>, domid: DomId) -> Result<(), XenError> {
    let home = format!("/local/domain/{domid}");
    let ro = [
        Perm::new(Access::None, 0),
        Perm::new(Access::Read, u32::from(domid)),
    ];
    c.transaction(8, |tx| {
        for d in [home.clone(), format!("{home}/device")] {
            tx.mkdir(&d)?;
            tx.set_perms(&d, &ro)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Write both directories of a vbd in one transaction.
pub fn create_vbd<T: Transport>(c: &mut Client<T>, spec: &VbdSpec<'_>) -> Result<(), XenError> {
    let fe = frontend_dir(spec.domid, spec.devid);
    let be = backend_dir(spec.backend_domid, spec.domid, spec.devid);
    let (dom, bdom) = (u32::from(spec.domid), u32::from(spec.backend_domid));
    let fe_perms = [Perm::new(Access::None, dom), Perm::new(Access::Read, bdom)];
    let be_perms = [Perm::new(Access::None, bdom), Perm::new(Access::Read, dom)];
    let target = spec.target.to_string_lossy().into_owned();
    let devid = spec.devid.to_string();
    let mode: &[u8] = if spec.writable { b"w" } else { b"r" };
    let (dom_s, bdom_s) = (dom.to_string(), bdom.to_string());
    let fe_entries: [(&str, &[u8]); 5] = [
        ("backend", be.as_bytes()),
        ("backend-id", bdom_s.as_bytes()),
        ("state", b"1"),
        ("virtual-device", devid.as_bytes()),
        ("device-type", b"disk"),
    ];
    let be_entries: [(&str, &[u8]); 10] = [
        ("frontend", fe.as_bytes()),
        ("frontend-id", dom_s.as_bytes()),
        ("online", b"1"),
        ("state", b"1"),
        ("params", target.as_bytes()),
        ("mode", mode),
        ("type", b"phy"),
        ("dev", devid.as_bytes()),
        ("removable", b"0"),
        ("device-type", b"disk"),
    ];
    c.transaction(8, |tx| {
        tx.mkdir(&fe)?;
        tx.set_perms(&fe, &fe_perms)?;
        tx.mkdir(&be)?;
        tx.set_perms(&be, &be_perms)?;
        for (k, v) in fe_entries {
            tx.write(&format!("{fe}/{k}"), v)?;
        }
        for (k, v) in be_entries {
            tx.write(&format!("{be}/{k}"), v)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Detach a vbd as `xl block-detach` does: `online` = 0 and state Closing
/// in the backend directory, wait (up to `timeout`) for the backend to
/// reach Closed, then remove both directories. Returns whether the
/// backend closed in time (the directories are removed either way, as
/// libxl does after its timeout).
pub fn destroy_vbd<T: Transport>(
    c: &mut Client<T>,
    domid: DomId,
    devid: u32,
    backend_domid: DomId,
    timeout: Duration,
) -> Result<bool, XenError> {
    let fe = frontend_dir(domid, devid);
    let be = backend_dir(backend_domid, domid, devid);
    let state = format!("{be}/state");
    // A backend already Closed (its frontend went away) is not asked again.
    let closed_now = c.read_opt(&state)?.as_deref() == Some(b"6");
    c.transaction(8, |tx| {
        tx.write(&format!("{be}/online"), b"0")?;
        if closed_now {
            Ok(())
        } else {
            tx.write(&state, b"5")
        }
    })?;
    let token = format!("destroy-{domid}-{devid}");
    c.watch(&state, &token)?;
    let deadline = Instant::now() + timeout;
    let closed = loop {
        if c.read_opt(&state)?.as_deref() == Some(b"6") {
            break true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || c.next_event_for(&token, Some(left)).is_err() {
            break false;
        }
    };
    let _ = c.unwatch(&state, &token);
    c.rm(&be)?;
    c.rm(&fe)?;
    Ok(closed)
}
