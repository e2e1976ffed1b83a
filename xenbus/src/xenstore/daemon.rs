//! The real C `xenstored` (Debian `xen-utils-4.17`) as a test fixture
//! (`xenstored-fixture` feature), and a guest domain's xenstore ring
//! connection to it.
//!
//! `xenstored` needs a hypervisor; `tests/fixtures/xenstored_preload.c`
//! (compiled with `cc`, loaded with `LD_PRELOAD`) stands in for the
//! hypervisor calls it imports, so its real protocol engine serves a unix
//! socket in a private run directory. Guest ring pages are the files
//! `ring-<domid>` of the fixture directory, mapped shared by the daemon on
//! `INTRODUCE` and by the guest's process; the guest kicks the daemon
//! through the FIFO `evtchn-kick`. Missing tools make [`Xenstored::start`]
//! panic naming the package to install: tests never pass silently.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::ptr::NonNull;
use std::string::String;
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;
use std::{format, vec};

use super::client::{Client, RingEvents, RingTransport, TransportError};
use super::ring::{Side, XenstoreRing};
use super::unix::UnixClient;

/// The wait every fixture client uses for a reply.
pub const TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));

/// The C daemon: `$PVXS_XENSTORED`, else the newest
/// `/usr/lib/xen-*/bin/xenstored` (`/usr/sbin/xenstored` is a wrapper that
/// refuses to run without a hypervisor).
pub fn find_xenstored() -> PathBuf {
    if let Some(p) = std::env::var_os("PVXS_XENSTORED") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "PVXS_XENSTORED={} is not a file: install the Debian package xen-utils-4.17 \
             or point PVXS_XENSTORED at the C xenstored",
            p.display()
        );
        return p;
    }
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/xenstored"))
        .filter(|p| p.to_string_lossy().contains("/xen-") && p.is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "the C xenstored was not found (/usr/lib/xen-*/bin/xenstored): \
             install the Debian package xen-utils-4.17 (apt-get install xen-utils-4.17 xenstore-utils), \
             or set PVXS_XENSTORED"
        )
    })
}

/// A `xenstore-utils` C tool (`xenstore-read`, `xenstore-watch`, ...).
pub fn tool(name: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(name);
    assert!(
        p.is_file(),
        "{name} not found: install the Debian package xenstore-utils (apt-get install xenstore-utils)"
    );
    p
}

/// A running `xenstored` with its own run directory; killed on drop (its
/// log printed if the thread is panicking).
#[derive(Debug)]
pub struct Xenstored {
    child: Child,
    dir: PathBuf,
    _tmp: Option<TempDirGuard>,
    socket: PathBuf,
}

/// Removes a directory tree on drop.
#[derive(Debug)]
struct TempDirGuard(PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn private_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    loop {
        let d = base.join(format!(
            "pvxs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        if fs::create_dir(&d).is_ok() {
            return d;
        }
    }
}

impl Xenstored {
    /// Compile the preload fixture and start a daemon in a fresh directory.
    pub fn start() -> Self {
        let dir = private_dir();
        let tmp = TempDirGuard(dir.clone());
        let bin = find_xenstored();
        let so = dir.join("xenstored_preload.so");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/xenstored_preload.c");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-o"])
            .arg(&so)
            .arg(&src)
            .arg("-ldl")
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run cc ({e}): install the Debian package gcc (apt-get install gcc)")
            });
        assert!(
            out.status.success(),
            "compiling {} failed (the Xen headers come from the Debian package libxen-dev):\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(dir.join("xsd_port"), "1\n").expect("xsd_port");
        fs::write(dir.join("xsd_kva"), vec![0u8; 4096]).expect("xsd_kva");
        let kick = dir.join("evtchn-kick");
        let c = CString::new(kick.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let run = dir.join("run");
        fs::create_dir(&run).expect("run dir");
        let log = fs::File::create(dir.join("xenstored.log")).expect("log");
        let child = Command::new(&bin)
            .arg("-N")
            .arg("-F")
            .arg(run.join("xenstored.pid"))
            .arg("-T")
            .arg(dir.join("trace"))
            .env_remove("XENSTORED_PATH")
            .env("XENSTORED_RUNDIR", &run)
            .env("LD_PRELOAD", &so)
            .env("PVXS_FIXTURE_DIR", &dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut d = Xenstored {
            child,
            socket: run.join("socket"),
            dir,
            _tmp: Some(tmp),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if UnixStream::connect(&d.socket).is_ok() {
                break;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("xenstored exited ({status}) before serving:\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "xenstored did not create its socket:\n{}",
                d.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// The daemon's socket (`XENSTORED_PATH` for the C tools).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The fixture directory (guest ring files, the kick FIFO, the log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's log and the tail of its trace.
    pub fn log(&self) -> String {
        let mut s = fs::read_to_string(self.dir.join("xenstored.log")).unwrap_or_default();
        if let Ok(t) = fs::read_to_string(self.dir.join("trace")) {
            let tail: Vec<String> = t
                .lines()
                .rev()
                .take(40)
                .map(|l| l.chars().take(160).collect())
                .collect();
            s.push_str("\n--- trace (last 40 lines, newest first) ---\n");
            s.push_str(&tail.join("\n"));
        }
        s
    }

    /// A dom0 client on the socket.
    pub fn client(&self) -> UnixClient {
        let mut c = UnixClient::connect_unix(&self.socket).expect("connect");
        c.set_timeout(TIMEOUT);
        c
    }

    /// Run a `xenstore-utils` tool against this daemon.
    pub fn cli(&self, name: &str, args: &[&str]) -> Output {
        Command::new(tool(name))
            .args(args)
            .env("XENSTORED_PATH", &self.socket)
            .output()
            .expect("run xenstore tool")
    }

    /// Kill the daemon now (its clients see the connection drop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the daemon still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Introduce domain `domid` as the toolstack does, with a fresh ring
    /// page file the guest then attaches to with [`GuestDomain::attach`].
    pub fn introduce(&self, dom0: &mut UnixClient, domid: u32) {
        fs::write(self.dir.join(format!("ring-{domid}")), vec![0u8; 4096]).expect("ring file");
        dom0.introduce(domid, 0x1000 + u64::from(domid), 10 + domid)
            .expect("introduce");
        assert!(dom0.is_domain_introduced(domid).expect("introduced"));
    }
}

impl Drop for Xenstored {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            std::eprintln!("xenstored log:\n{}", self.log());
        }
    }
}

/// The guest's view of the fixture's event channel: kicks go into the FIFO
/// the fixture hands xenstored as its event fd; waits poll (spurious
/// wake-ups are allowed by the `RingEvents` contract).
#[derive(Debug)]
pub struct FifoEvents {
    kick: fs::File,
    port: u32,
    idle: Duration,
    default_timeout: Duration,
}

impl RingEvents for FifoEvents {
    fn notify(&mut self) {
        use std::io::Write;
        self.idle = Duration::ZERO;
        let _ = self.kick.write_all(&self.port.to_ne_bytes());
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.idle >= timeout.unwrap_or(self.default_timeout) {
            self.idle = Duration::ZERO;
            return Err(TransportError::TimedOut);
        }
        let step = Duration::from_millis(1);
        thread::sleep(step);
        self.idle += step;
        Ok(())
    }
}

/// A shared mapping of a guest's ring page file.
#[derive(Debug)]
struct SharedRing {
    ptr: NonNull<u8>,
}

impl SharedRing {
    fn map(path: &Path) -> io::Result<Self> {
        let f = fs::OpenOptions::new().read(true).write(true).open(path)?;
        use std::os::fd::AsRawFd;
        // SAFETY: mapping one page of a file the fixture created with 4096
        // bytes, shared, at an address the kernel chooses; checked below.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast())
            .map(|ptr| SharedRing { ptr })
            .ok_or_else(|| io::Error::other("null mapping"))
    }
}

impl Drop for SharedRing {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `map`, once; the ring that
        // pointed into it was dropped before (field order in `GuestDomain`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), 4096) };
    }
}

/// Domain `domid`'s xenstore connection over its ring page (possibly from
/// another process than the fixture's).
#[derive(Debug)]
pub struct GuestDomain {
    /// The client; dropped before the ring page it uses.
    pub client: Client<RingTransport<FifoEvents>>,
    _ring: SharedRing,
}

impl GuestDomain {
    /// Attach to the ring of `domid` in fixture directory `dir` (after
    /// [`Xenstored::introduce`]).
    pub fn attach(dir: &Path, domid: u32) -> io::Result<Self> {
        let ring = SharedRing::map(&dir.join(format!("ring-{domid}")))?;
        // SAFETY: the mapping is 4096 bytes, page-aligned, outlives the
        // client (dropped after it: field order), and this is the only
        // guest-side attachment; xenstored is the server side.
        let guest = unsafe { XenstoreRing::attach(ring.ptr, Side::Guest) };
        // Non-blocking: a full FIFO drops the kick (event channels coalesce
        // pending events the same way) instead of stalling the guest.
        use std::os::unix::fs::OpenOptionsExt;
        let kick = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(dir.join("evtchn-kick"))?;
        let mut client = Client::new(RingTransport::new(
            guest,
            FifoEvents {
                kick,
                port: 100 + domid,
                idle: Duration::ZERO,
                default_timeout: Duration::from_secs(30),
            },
        ));
        client.set_timeout(TIMEOUT);
        Ok(GuestDomain {
            client,
            _ring: ring,
        })
    }
}
