//! Least privilege for the daemon: a seccomp filter per thread class,
//! the drop to an unprivileged user, and Landlock.
//!
//! **Seccomp.** Every thread the daemon starts calls [`enter`] with its
//! class once, first thing; the main thread enters [`Class::Main`] after
//! start-up. The filter is the class's allow-list ([`filters`], one table
//! per class, each syscall commented): a syscall outside it is, by
//! [`Mode`], trapped (default), logged by the kernel and allowed, or the
//! filters are off. A trapped syscall runs the SIGSYS handler
//! (`trap`): it writes one line naming the syscall number, the
//! architecture, the thread and its class to stderr, then the process
//! exits with status 159 (128 + SIGSYS). The supervisor (systemd's
//! `Restart=`) starts the daemon again; QEMU reconnects (`reconnect=`)
//! and redoes what was not acknowledged, as after any crash.
//!
//! A thread's filter is inherited by the threads it starts, and both
//! filters apply; so the table of a class that starts threads includes
//! the tables of the classes it starts (`Class::starts`).
//!
//! Filters are installed only by the daemon ([`init`] sets the mode);
//! library users and unit tests that never call it run unfiltered.
//!
//! What it refuses: a filter for the guests' lifecycle threads while a
//! guest has a `restore_command`: the restored QEMU is a child of that
//! thread and would inherit the filter (seccomp filters survive exec), so
//! those threads run unfiltered and the log says so.
//!
//! **Privilege drop** ([`privilege`]): with `[daemon] user`, once every
//! image is open and every socket bound the daemon switches to that user
//! and group (every thread, so every capability is gone) and, with
//! `landlock = true`, restricts each thread's file access to the images,
//! the socket directories and what the daemon reads at run time.

pub mod filters;
pub mod privilege;
mod trap;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use filters::Rule;

/// What a syscall outside the allow-list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The SIGSYS handler logs it and the process exits (status 159).
    #[default]
    Trap,
    /// The kernel logs it (audit, `dmesg`: `type=1326 ... syscall=N
    /// comm=THREAD`) and lets it run: for finding what a table misses.
    Log,
    /// No filters.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "trap" => Ok(Mode::Trap),
            "log" => Ok(Mode::Log),
            "off" => Ok(Mode::Off),
            other => Err(format!("seccomp mode {other:?} is not trap, log or off")),
        }
    }
}

/// The classes of the daemon's threads, each with its allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// The main thread after start-up (main loop, reloads, stop).
    Main,
    /// A disk's or switch port's server thread and the vhost-user
    /// protocol thread it starts.
    Connection,
    /// A vhost-user queue worker.
    QueueWorker,
    /// A disk's I/O pool thread.
    Io,
    /// The switch's uplink (TAP) thread.
    Switch,
    /// The balloon manager.
    Balloon,
    /// The metrics endpoint.
    Metrics,
    /// The guests' control socket, its connections and QMP readers.
    Guests,
    /// The systemd watchdog.
    Liveness,
}

impl Class {
    /// Every class, for building every filter at start.
    pub const ALL: [Class; 9] = [
        Class::Main,
        Class::Connection,
        Class::QueueWorker,
        Class::Io,
        Class::Switch,
        Class::Balloon,
        Class::Metrics,
        Class::Guests,
        Class::Liveness,
    ];

    /// Its name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Class::Main => "main",
            Class::Connection => "connection",
            Class::QueueWorker => "queue-worker",
            Class::Io => "io",
            Class::Switch => "switch",
            Class::Balloon => "balloon",
            Class::Metrics => "metrics",
            Class::Guests => "guests",
            Class::Liveness => "liveness",
        }
    }
}

/// The ids the privilege drop switches to; the filters allow every
/// thread exactly this switch (glibc makes each thread do it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// Why the sandbox could not be set up (the daemon does not start).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("seccomp filter for {class} threads: {source}")]
    Filter {
        class: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("seccomp: {0}")]
    Install(#[source] seccompiler::Error),
    #[error("seccomp: this architecture has no filter support")]
    Arch,
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
    #[error(transparent)]
    Privilege(#[from] privilege::PrivilegeError),
}

struct State {
    mode: Mode,
    filters: BTreeMap<Class, BpfProgram>,
    /// Classes whose threads run unfiltered, with the reason (logged once
    /// per thread).
    exempt: BTreeMap<Class, &'static str>,
    landlock: Option<privilege::Landlock>,
}

static STATE: OnceLock<State> = OnceLock::new();

thread_local! {
    /// The class this thread entered (each thread enters once).
    static ENTERED: Cell<Option<Class>> = const { Cell::new(None) };
}

/// The daemon's sandbox settings, gathered from the configuration.
#[derive(Debug, Default)]
pub struct Settings {
    pub mode: Mode,
    /// The privilege drop's target, when `[daemon] user` is set.
    pub ids: Option<Ids>,
    /// Classes to leave unfiltered, with the reason.
    pub exempt: Vec<(Class, &'static str)>,
    /// The Landlock rules every thread takes on, when on.
    pub landlock: Option<privilege::Landlock>,
}

/// Builds every class's filter and installs the SIGSYS handler. Called
/// once by the daemon before it starts any thread; a second call changes
/// nothing.
pub fn init(settings: Settings) -> Result<(), SandboxError> {
    if STATE.get().is_some() {
        return Ok(());
    }
    let mut filters = BTreeMap::new();
    if settings.mode != Mode::Off {
        trap::install().map_err(SandboxError::Handler)?;
        for class in Class::ALL {
            filters.insert(class, build(class, settings.mode, settings.ids)?);
        }
    }
    let _ = STATE.set(State {
        mode: settings.mode,
        filters,
        exempt: settings.exempt.into_iter().collect(),
        landlock: settings.landlock,
    });
    Ok(())
}

/// The mode the daemon runs with (`None` before [`init`]).
pub fn mode() -> Option<Mode> {
    STATE.get().map(|s| s.mode)
}

/// Puts the calling thread in its class's sandbox: Landlock (when on),
/// then the seccomp filter. Once per thread: a second call (a queue
/// worker's every event) is a no-op. Before [`init`] (library use, unit
/// tests) it does nothing. A failure is logged and the thread goes on
/// unfiltered: a filter that cannot be installed must not take a disk
/// away from its guest.
pub fn enter(class: Class) {
    if ENTERED.with(|e| e.replace(Some(class))).is_some() {
        return;
    }
    let Some(state) = STATE.get() else {
        return;
    };
    let name = std::thread::current().name().unwrap_or("?").to_owned();
    if let Some(ll) = &state.landlock {
        if let Err(e) = ll.restrict_thread() {
            log::error!("thread '{name}': landlock: {e}; running without it");
        }
    }
    if let Some(why) = state.exempt.get(&class) {
        log::warn!(
            "thread '{name}' ({}): no seccomp filter: {why}",
            class.name()
        );
        return;
    }
    let Some(filter) = state.filters.get(&class) else {
        return;
    };
    trap::name_thread(&name, class);
    if let Err(e) = seccompiler::apply_filter(filter) {
        log::error!("thread '{name}': cannot install its seccomp filter: {e}");
        return;
    }
    log::debug!(
        "thread '{name}': seccomp filter for {} threads on ({:?})",
        class.name(),
        state.mode
    );
}

/// Sets the sandbox up from the configuration, before any thread
/// starts: resolves `[daemon] user`/`group`, builds the Landlock rules
/// (`landlock = true`) and every class's filter. Returns the ids the
/// daemon drops to in [`lock_down`].
pub fn setup(config: &crate::config::Config) -> Result<Option<Ids>, SandboxError> {
    let d = &config.daemon;
    let ids = match &d.user {
        Some(u) => Some(privilege::resolve(u, d.group.as_deref())?),
        None => None,
    };
    let landlock = if d.landlock {
        let (rw, ro) = landlock_paths(config);
        privilege::Landlock::new(&rw, &ro)?
    } else {
        None
    };
    let mut exempt = Vec::new();
    if config
        .guests
        .guests
        .iter()
        .any(|g| !g.restore_command.is_empty())
    {
        exempt.push((
            Class::Guests,
            "a guest has a restore_command, and the QEMU it starts would inherit the filter",
        ));
    }
    init(Settings {
        mode: d.seccomp,
        ids,
        exempt,
        landlock,
    })?;
    if d.seccomp != Mode::Off {
        log::info!(
            "seccomp: per-thread filters on ({:?}; a forbidden syscall {})",
            d.seccomp,
            if d.seccomp == Mode::Trap {
                "ends the daemon"
            } else {
                "is logged by the kernel"
            }
        );
    }
    Ok(ids)
}

/// After start-up (every image open, every socket bound): drops to `ids`
/// when given, then puts the main thread in its sandbox.
pub fn lock_down(ids: Option<Ids>) -> Result<(), SandboxError> {
    if let Some(ids) = ids {
        privilege::drop_to(ids)?;
    }
    enter(Class::Main);
    privilege::fault_open_probe();
    Ok(())
}

/// What the daemon may open after start-up, for Landlock: read and write
/// beneath the images and socket directories (new sockets on reload, the
/// stop's unlink) and the guests' state directories; read beneath the
/// config file, `/proc`, `/etc` (user and group names on reload) and the
/// balloon manager's inputs.
fn landlock_paths(config: &crate::config::Config) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let parent = |p: &Path| p.parent().map(Path::to_path_buf);
    let mut rw: Vec<PathBuf> = Vec::new();
    for d in &config.disks {
        rw.push(d.path.clone());
        rw.extend(parent(&d.socket));
    }
    for p in &config.net_ports {
        rw.extend(parent(&p.socket));
    }
    rw.extend(
        config
            .guests
            .control_socket_path()
            .as_deref()
            .and_then(parent),
    );
    rw.extend(config.guests.state_dir.clone());
    for g in &config.guests.guests {
        rw.extend(g.state_dir.clone());
        rw.extend(parent(&g.qmp));
        rw.extend(g.pid_file.as_deref().and_then(parent));
    }
    let mut ro: Vec<PathBuf> = vec!["/proc".into(), "/etc".into()];
    ro.extend(config.config_path.clone());
    ro.extend(config.balloon.watch_dir.clone());
    ro.extend(config.balloon.host_available_file.clone());
    for g in &config.balloon.guests {
        ro.extend(parent(&g.qmp));
    }
    rw.sort();
    rw.dedup();
    ro.sort();
    ro.dedup();
    (rw, ro)
}

/// A syscall number as seccompiler keys it (`c_long` is 32 bits wide on
/// 32-bit targets).
#[allow(clippy::useless_conversion)]
fn sys(nr: libc::c_long) -> i64 {
    i64::from(nr)
}

/// Compiles `class`'s filter.
fn build(class: Class, mode: Mode, ids: Option<Ids>) -> Result<BpfProgram, SandboxError> {
    let err = |source| SandboxError::Filter {
        class: class.name(),
        source,
    };
    let mut any = BTreeSet::new();
    let mut ioctls = BTreeSet::new();
    let mut open_ro = false;
    for r in class.rules() {
        match r {
            Rule::Any(nr) => {
                any.insert(sys(nr));
            }
            Rule::Ioctl(reqs) => ioctls.extend(reqs.iter().copied()),
            Rule::OpenReadOnly => open_ro = true,
        }
    }
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        any.into_iter().map(|nr| (nr, Vec::new())).collect();
    let eq = |arg: u8, v: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v).map_err(err)
    };
    if !ioctls.is_empty() {
        let per_req = ioctls
            .into_iter()
            .map(|req| SeccompRule::new(vec![eq(1, req)?]).map_err(err))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(sys(libc::SYS_ioctl), per_req);
    }
    // openat(dirfd, path, flags, ...) with no write, create or truncate
    // bit in flags; a table that allows any openat wins.
    if open_ro && !rules.contains_key(&sys(libc::SYS_openat)) {
        let write_bits = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u64;
        rules.insert(
            sys(libc::SYS_openat),
            vec![SeccompRule::new(vec![SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(write_bits),
                0,
            )
            .map_err(err)?])
            .map_err(err)?],
        );
    }
    if let Some(Ids { uid, gid }) = ids {
        let three = |nr: libc::c_long, v: u32| -> Result<(i64, Vec<SeccompRule>), SandboxError> {
            let v = u64::from(v);
            Ok((
                sys(nr),
                vec![SeccompRule::new(vec![eq(0, v)?, eq(1, v)?, eq(2, v)?]).map_err(err)?],
            ))
        };
        let (nr, r) = three(libc::SYS_setresuid, uid)?;
        rules.insert(nr, r);
        let (nr, r) = three(libc::SYS_setresgid, gid)?;
        rules.insert(nr, r);
        // setgroups(1, [gid]): one supplementary group, the daemon's own.
        rules.insert(
            sys(libc::SYS_setgroups),
            vec![SeccompRule::new(vec![eq(0, 1)?]).map_err(err)?],
        );
    }
    let mismatch = match mode {
        Mode::Trap => SeccompAction::Trap,
        Mode::Log | Mode::Off => SeccompAction::Log,
    };
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|_| SandboxError::Arch)?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch).map_err(err)?;
    filter.try_into().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_compiles_in_every_mode() {
        let ids = Some(Ids {
            uid: 65534,
            gid: 65534,
        });
        for class in Class::ALL {
            for mode in [Mode::Trap, Mode::Log] {
                let prog = build(class, mode, ids).expect("filter builds");
                assert!(!prog.is_empty(), "{class:?}");
            }
        }
    }

    #[test]
    fn a_starting_class_allows_what_its_children_need() {
        // A child's filter is stacked on its parent's: whatever the child
        // may do the parent's table must allow too.
        for class in Class::ALL {
            let parent: Vec<_> = class.rules().iter().map(|r| format!("{r:?}")).collect();
            for child in class.starts() {
                for r in child.rules() {
                    assert!(
                        parent.contains(&format!("{r:?}")),
                        "{class:?} starts {child:?} threads but does not allow {r:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!("trap".parse::<Mode>(), Ok(Mode::Trap));
        assert_eq!("log".parse::<Mode>(), Ok(Mode::Log));
        assert_eq!("off".parse::<Mode>(), Ok(Mode::Off));
        assert!("kill".parse::<Mode>().is_err());
    }
}
