//! The privilege drop (`[daemon] user`, `group`) and Landlock
//! (`[daemon] landlock`).
//!
//! The daemon starts as root (or with the capabilities its unit grants),
//! opens every image, binds every socket and sets their owners, then
//! [`drop_to`] switches every thread to the configured user and group:
//! the saved and effective ids too, so nothing can switch back, and a
//! non-root uid clears every capability (effective, permitted,
//! inheritable, ambient). It then checks `/proc/self/status` and refuses
//! to go on if any effective capability is left.
//!
//! After the drop a reload can add only disks whose image and socket
//! directory the user can open and write.
//!
//! Landlock: each thread, as it enters its sandbox, restricts its file
//! access to the configured images, the socket directories, the config
//! file, the balloon manager's and guests' paths and `/proc` (what the
//! daemon opens after start). A kernel without Landlock is logged and the
//! daemon runs without it. Test-only: `PVBACKEND_FAULT_LANDLOCK_OPEN=PATH`
//! makes the main thread try to open PATH once it is sandboxed and log
//! the result.

use std::path::PathBuf;

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr,
    RulesetStatus, ABI,
};
use log::{info, warn};
use nix::unistd::{Gid, Group, Uid, User};

use super::Ids;

/// Why the privilege drop failed (the daemon stops: running as root when
/// asked not to is not an option).
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("[daemon] user {0:?}: no such user")]
    NoUser(String),
    #[error("[daemon] group {0:?}: no such group")]
    NoGroup(String),
    #[error("cannot look up {what}: {source}")]
    Lookup {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot switch to uid {uid} gid {gid}: {step}: {source}")]
    Switch {
        uid: u32,
        gid: u32,
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("capabilities left after the switch to uid {uid}: CapEff {cap_eff}")]
    CapsLeft { uid: u32, cap_eff: String },
    #[error("cannot read /proc/self/status: {0}")]
    Status(#[source] std::io::Error),
    #[error("landlock: {0}")]
    Landlock(String),
}

/// The uid and gid of `user` (and of `group` when given, else the
/// user's primary group).
pub fn resolve(user: &str, group: Option<&str>) -> Result<Ids, PrivilegeError> {
    let u = User::from_name(user)
        .map_err(|source| PrivilegeError::Lookup {
            what: format!("user {user:?}"),
            source,
        })?
        .ok_or_else(|| PrivilegeError::NoUser(user.to_owned()))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|source| PrivilegeError::Lookup {
                    what: format!("group {g:?}"),
                    source,
                })?
                .ok_or_else(|| PrivilegeError::NoGroup(g.to_owned()))?
                .gid
        }
        None => u.gid,
    };
    Ok(Ids {
        uid: u.uid.as_raw(),
        gid: gid.as_raw(),
    })
}

/// Switches every thread of the process to `ids` (groups first: after the
/// uid change there is no right to change them) and checks that no
/// effective capability is left.
pub fn drop_to(ids: Ids) -> Result<(), PrivilegeError> {
    let (uid, gid) = (Uid::from_raw(ids.uid), Gid::from_raw(ids.gid));
    let fail = |step| {
        move |source| PrivilegeError::Switch {
            uid: ids.uid,
            gid: ids.gid,
            step,
            source,
        }
    };
    nix::unistd::setgroups(&[gid]).map_err(fail("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(fail("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(fail("setresuid"))?;
    let status = std::fs::read_to_string("/proc/self/status").map_err(PrivilegeError::Status)?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or("?")
        .to_owned();
    if ids.uid != 0 && !cap_eff.trim_start_matches('0').is_empty() {
        return Err(PrivilegeError::CapsLeft {
            uid: ids.uid,
            cap_eff,
        });
    }
    info!(
        "privileges dropped: uid {} gid {}, effective capabilities {cap_eff}",
        ids.uid, ids.gid
    );
    Ok(())
}

/// The Landlock ruleset every thread takes on (a created ruleset, cloned
/// per thread: Landlock restricts the calling thread only).
#[derive(Debug)]
pub struct Landlock {
    ruleset: RulesetCreated,
}

/// The ABI the rules are written for; older kernels enforce what they can
/// (best effort), a kernel without Landlock enforces nothing (logged).
const LANDLOCK_ABI: ABI = ABI::V3;

impl Landlock {
    /// A ruleset handling every file access: all of it beneath each path
    /// of `rw`, reading beneath each of `ro`. Paths that do not exist are
    /// left out (nobody can open them; a reload that needs one is
    /// refused, logged). `None` when the kernel has no Landlock (logged).
    pub fn new(rw: &[PathBuf], ro: &[PathBuf]) -> Result<Option<Self>, PrivilegeError> {
        if landlock_abi() == 0 {
            warn!(
                "landlock: this kernel does not support it; running without filesystem restriction"
            );
            return Ok(None);
        }
        let err = |e: landlock::RulesetError| PrivilegeError::Landlock(e.to_string());
        let existing = |paths: &[PathBuf]| -> Vec<PathBuf> {
            paths.iter().filter(|p| p.exists()).cloned().collect()
        };
        let (rw, ro) = (existing(rw), existing(ro));
        let all = AccessFs::from_all(LANDLOCK_ABI);
        let ruleset = Ruleset::default()
            .handle_access(all)
            .map_err(err)?
            .create()
            .map_err(err)?
            .add_rules(path_beneath_rules(&rw, all))
            .map_err(err)?
            .add_rules(path_beneath_rules(&ro, AccessFs::from_read(LANDLOCK_ABI)))
            .map_err(err)?;
        let show = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        info!(
            "landlock: file access restricted to {} (read-only: {})",
            show(&rw),
            show(&ro)
        );
        Ok(Some(Self { ruleset }))
    }

    /// Restricts the calling thread.
    pub(super) fn restrict_thread(&self) -> Result<(), PrivilegeError> {
        let rs = self
            .ruleset
            .try_clone()
            .map_err(|e| PrivilegeError::Landlock(e.to_string()))?;
        let st = rs
            .restrict_self()
            .map_err(|e| PrivilegeError::Landlock(e.to_string()))?;
        if st.ruleset == RulesetStatus::NotEnforced {
            return Err(PrivilegeError::Landlock("not enforced".into()));
        }
        Ok(())
    }
}

/// The kernel's Landlock ABI version (0: none).
fn landlock_abi() -> i64 {
    // LANDLOCK_CREATE_RULESET_VERSION: asks the version, creates nothing.
    const VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag
    // the syscall reads no memory and returns a number or -1.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            VERSION,
        )
    };
    v.max(0)
}

/// Test-only (`PVBACKEND_FAULT_LANDLOCK_OPEN=PATH[:PATH...]`): tries to
/// open each PATH from the sandboxed main thread and logs what happened.
pub fn fault_open_probe() {
    let Some(list) = std::env::var_os("PVBACKEND_FAULT_LANDLOCK_OPEN") else {
        return;
    };
    for path in std::env::split_paths(&list) {
        if path.as_os_str().is_empty() {
            continue;
        }
        match std::fs::File::open(&path) {
            Ok(_) => warn!("fault injection: opened {} (allowed)", path.display()),
            Err(e) => warn!("fault injection: open {} refused: {e}", path.display()),
        }
    }
}
