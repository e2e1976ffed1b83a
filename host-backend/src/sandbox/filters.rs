//! The syscall allow-lists, one table per thread class.
//!
//! Each table lists what a thread of its class does itself; a class that
//! starts threads also carries the tables of the classes it starts
//! (`Class::starts`), because a thread inherits its parent's filter and
//! both filters then apply (the kernel takes the strictest answer). Every
//! thread also gets `BASE`: what any Rust thread does (allocate, lock,
//! sleep, log, exit) and what the SIGSYS handler needs to report and exit.
//!
//! To extend: add the syscall to the table of the class whose thread makes
//! it, with a comment saying what for. An ioctl is allowed per request
//! number (`Rule::Ioctl`): add the number to the class's ioctl list.
//! Numbers are `libc::SYS_*`, so the tables build for every architecture
//! the crate does; the few syscalls only x86_64 has (`open`, `poll`, ...)
//! sit in `#[cfg]`'d tables, their generic twins (`openat`, `ppoll`) are
//! listed everywhere.

use super::Class;

/// One allowed syscall.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rule {
    /// Any arguments.
    Any(libc::c_long),
    /// `ioctl(fd, REQUEST, ...)` with REQUEST one of these.
    Ioctl(&'static [u64]),
    /// `openat` for reading only: no write access, no creation, no
    /// truncation.
    OpenReadOnly,
}

use Rule::{Any, Ioctl, OpenReadOnly};

/// `ioctl` requests of a TAP with virtio-net headers: create/attach it,
/// read its flags and features, set its offloads and header size (what
/// the uplink and the network offload work need).
pub(crate) const TAP_IOCTLS: &[u64] = &[
    0x4004_54ca, // TUNSETIFF
    0x8004_54d2, // TUNGETIFF
    0x8004_54cf, // TUNGETFEATURES
    0x4004_54d0, // TUNSETOFFLOAD
    0x4004_54d8, // TUNSETVNETHDRSZ
    0x8004_54d7, // TUNGETVNETHDRSZ
    0x4004_54c9, // TUNSETNOCSUM
    0x5421,      // FIONBIO (set_nonblocking)
];

/// `ioctl` requests on a disk: discard and write-zeroes on a block device.
pub(crate) const DISK_IOCTLS: &[u64] = &[
    0x1277,      // BLKDISCARD
    0x127f,      // BLKZEROOUT
    0x8008_1272, // BLKGETSIZE64 (size of a block device, at open)
    0x1268,      // BLKSSZGET (logical sector size, at open)
    0x127b,      // BLKPBSZGET (physical sector size, at open)
];

/// `ioctl` requests on sockets and terminals: `set_nonblocking` (std uses
/// FIONBIO), close-on-exec, the terminal check of the logger.
pub(crate) const SOCKET_IOCTLS: &[u64] = &[
    0x5421, // FIONBIO
    0x5451, // FIOCLEX
    0x5401, // TCGETS (isatty)
];

/// Every thread: memory, locks, time, logging, thread exit, the SIGSYS
/// handler (write, exit_group), and the privilege drop's per-thread id
/// change (glibc runs setresuid/setresgid/setgroups on every thread; the
/// rules of [`super::Ids`] narrow them to the configured ids).
pub(crate) const BASE: &[Rule] = &[
    Any(libc::SYS_read),              // eventfds, sockets, files
    Any(libc::SYS_write),             // log lines, eventfd kicks, sockets
    Any(libc::SYS_writev),            // log lines (buffered stderr)
    Any(libc::SYS_close),             // every fd a thread owns
    Any(libc::SYS_futex),             // Mutex, Condvar, park, join
    Any(libc::SYS_sched_yield),       // spin loops
    Any(libc::SYS_nanosleep),         // thread::sleep
    Any(libc::SYS_clock_nanosleep),   // thread::sleep (newer libc)
    Any(libc::SYS_clock_gettime),     // Instant::now without the vDSO
    Any(libc::SYS_gettimeofday),      // SystemTime (log timestamps)
    Any(libc::SYS_gettid),            // logging, thread ids
    Any(libc::SYS_getpid),            // sd_notify, logging
    Any(libc::SYS_rt_sigreturn),      // return from any signal handler
    Any(libc::SYS_rt_sigprocmask),    // thread start/exit, setxid
    Any(libc::SYS_sigaltstack),       // std's stack-overflow handler per thread
    Any(libc::SYS_mmap),              // allocator, thread stacks
    Any(libc::SYS_munmap),            // allocator, thread stacks
    Any(libc::SYS_mremap),            // allocator (realloc of big blocks)
    Any(libc::SYS_mprotect),          // allocator, stack guard pages
    Any(libc::SYS_madvise),           // allocator, thread exit (MADV_DONTNEED)
    Any(libc::SYS_brk),               // allocator
    Any(libc::SYS_exit),              // thread exit
    Any(libc::SYS_exit_group),        // process exit (and the SIGSYS handler)
    Any(libc::SYS_restart_syscall),   // a syscall interrupted by a signal
    Any(libc::SYS_getrandom),         // HashMap seeds
    Any(libc::SYS_rseq),              // glibc per-thread registration
    Any(libc::SYS_sched_getaffinity), // available_parallelism
    Any(libc::SYS_tgkill),            // setxid broadcast, raise
    Any(libc::SYS_fcntl),             // fd flags (nonblocking, cloexec)
    Any(libc::SYS_fstat),             // std metadata on open fds
    Any(libc::SYS_statx),             // std metadata
    Any(libc::SYS_newfstatat),        // std metadata
    Any(libc::SYS_lseek),             // std files
    Any(libc::SYS_ppoll),             // poll (generic twin)
    OpenReadOnly,                     // a panic's backtrace (RUST_BACKTRACE) reads the binary
    Any(libc::SYS_getcwd),            // a panic's backtrace resolves the binary's path
];

/// Starting threads (a class that starts others).
const SPAWN: &[Rule] = &[
    Any(libc::SYS_clone),                  // thread::spawn (older glibc)
    Any(libc::SYS_clone3),                 // thread::spawn
    Any(libc::SYS_set_robust_list),        // a new thread registers its locks
    Any(libc::SYS_prctl),                  // PR_SET_NAME, no_new_privs of a new thread
    Any(libc::SYS_seccomp),                // a new thread installs its own filter
    Any(libc::SYS_landlock_restrict_self), // a new thread takes on Landlock
];

/// The main/control thread after start-up: the main loop, SIGHUP reloads
/// (read the config, open new images, bind new sockets, start disk
/// threads), sockets of outgoing connections (socket/connect: disk
/// mirroring's NBD client), sd_notify, and the stop (flush, unlink).
const MAIN: &[Rule] = &[
    Any(libc::SYS_openat),       // config file, new images
    Any(libc::SYS_fstatfs),      // image file system (O_DIRECT check)
    Any(libc::SYS_fsync),        // flush disks at stop
    Any(libc::SYS_fdatasync),    // flush disks at stop
    Any(libc::SYS_socket),       // new vhost-user listeners, NBD clients, sd_notify
    Any(libc::SYS_connect),      // NBD clients, sd_notify
    Any(libc::SYS_bind),         // new vhost-user listeners
    Any(libc::SYS_listen),       // new vhost-user listeners
    Any(libc::SYS_getsockname),  // listener address
    Any(libc::SYS_setsockopt),   // socket options
    Any(libc::SYS_getsockopt),   // socket options
    Any(libc::SYS_sendto),       // sd_notify datagrams
    Any(libc::SYS_sendmsg),      // sd_notify datagrams
    Any(libc::SYS_recvfrom),     // NBD replies
    Any(libc::SYS_shutdown),     // closing connections at stop
    Any(libc::SYS_unlinkat),     // stale and removed sockets
    Any(libc::SYS_fchmodat),     // socket_mode
    Any(libc::SYS_fchownat),     // socket_owner/socket_group
    Any(libc::SYS_fchmod),       // socket_mode on an fd
    Any(libc::SYS_fchown),       // socket_owner on an fd
    Any(libc::SYS_umask),        // socket creation mode
    Any(libc::SYS_getuid),       // user lookups
    Any(libc::SYS_getgid),       // user lookups
    Any(libc::SYS_geteuid),      // user lookups
    Any(libc::SYS_getdents64),   // directory reads
    Any(libc::SYS_readlinkat),   // path canonicalisation
    Any(libc::SYS_pread64),      // file reads
    Any(libc::SYS_rt_sigaction), // signal handlers
    Ioctl(SOCKET_IOCTLS),
    Ioctl(DISK_IOCTLS),
    Ioctl(TAP_IOCTLS),
];

/// A vhost-user connection thread (a disk's or switch port's server, and
/// the framework's protocol thread it starts): accept QEMU, take its
/// messages and fds, map guest memory, start the queue workers, relay a
/// switch port's second connection.
const CONNECTION: &[Rule] = &[
    Any(libc::SYS_accept4),       // QEMU connects
    Any(libc::SYS_accept),        // QEMU connects
    Any(libc::SYS_recvmsg),       // vhost-user messages with fds
    Any(libc::SYS_sendmsg),       // vhost-user replies
    Any(libc::SYS_recvfrom),      // vhost-user payloads
    Any(libc::SYS_sendto),        // vhost-user replies
    Any(libc::SYS_socketpair),    // the switch port's inner connection
    Any(libc::SYS_socket),        // the switch port's inner vhost-user socket
    Any(libc::SYS_bind),          // the switch port's inner vhost-user socket
    Any(libc::SYS_listen),        // the switch port's inner vhost-user socket
    Any(libc::SYS_connect),       // the switch port's inner vhost-user socket
    Any(libc::SYS_unlinkat),      // the inner socket's file
    Any(libc::SYS_shutdown),      // end a connection
    Any(libc::SYS_epoll_create1), // the framework's event loops
    Any(libc::SYS_epoll_ctl),     // the framework's event loops
    Any(libc::SYS_epoll_pwait),   // the framework's event loops
    Any(libc::SYS_eventfd2),      // exit events of the queue workers
    Any(libc::SYS_dup),           // cloned connections
    Any(libc::SYS_dup3),          // cloned connections
    Any(libc::SYS_getsockopt),    // socket errors
    Any(libc::SYS_setsockopt),    // socket options
    Any(libc::SYS_fstatfs),       // memory region backing
    Ioctl(SOCKET_IOCTLS),
];

/// Disk I/O: what a queue worker (`io=sync`, `hybrid`) and an I/O pool
/// thread do to a disk, and the reset after a panic in either.
const DISK_IO: &[Rule] = &[
    Any(libc::SYS_preadv2),   // disk reads (glibc's preadv)
    Any(libc::SYS_pwritev2),  // disk writes (glibc's pwritev)
    Any(libc::SYS_preadv),    // disk reads
    Any(libc::SYS_pwritev),   // disk writes
    Any(libc::SYS_pread64),   // disk reads
    Any(libc::SYS_pwrite64),  // disk writes
    Any(libc::SYS_fsync),     // flush
    Any(libc::SYS_fdatasync), // flush
    Any(libc::SYS_fallocate), // discard, write-zeroes on files
    Any(libc::SYS_shutdown),  // a reset after a panic drops the connection
    Ioctl(DISK_IOCTLS),
];

/// A queue worker (the framework's `vring_worker`), besides
/// [`DISK_IO`]: wait for kicks, switch frames, signal the guest.
const QUEUE_WORKER: &[Rule] = &[
    Any(libc::SYS_epoll_pwait), // wait for kicks
    Any(libc::SYS_epoll_ctl),   // the framework's event loop
    Any(libc::SYS_readv),       // frames from a TAP
    Any(libc::SYS_sendto),      // frames to sockets
    Any(libc::SYS_sendmsg),     // frames to sockets
    Ioctl(TAP_IOCTLS),
];

/// The switch's uplink thread: frames to and from the TAP.
const SWITCH: &[Rule] = &[
    Any(libc::SYS_readv), // frames from the TAP
    Ioctl(TAP_IOCTLS),    // offloads, header size
];

/// A client of unix or TCP sockets (QMP): connect, timeouts, the peer's
/// pid, requests and replies, close.
const SOCKET_CLIENT: &[Rule] = &[
    Any(libc::SYS_socket),     // connections
    Any(libc::SYS_connect),    // connections
    Any(libc::SYS_setsockopt), // timeouts
    Any(libc::SYS_getsockopt), // SO_PEERCRED: the guest's QEMU pid; errors
    Any(libc::SYS_recvfrom),   // replies
    Any(libc::SYS_sendto),     // requests
    Any(libc::SYS_sendmsg),    // QMP getfd: a state file's fd to QEMU
    Any(libc::SYS_recvmsg),    // replies
    Any(libc::SYS_shutdown),   // closing
    Ioctl(SOCKET_IOCTLS),
];

/// A server of stream sockets, besides [`SOCKET_CLIENT`]: accept.
const SOCKET_SERVER: &[Rule] = &[
    Any(libc::SYS_accept4), // clients connect
    Any(libc::SYS_accept),  // clients connect
];

/// The balloon manager, besides [`SOCKET_CLIENT`] (QMP): /proc/meminfo
/// and the watched socket directory.
const BALLOON: &[Rule] = &[
    Any(libc::SYS_openat),     // /proc/meminfo, host_available_file, watched dir
    Any(libc::SYS_getdents64), // the watched directory
];

/// The metrics endpoint, besides [`SOCKET_SERVER`] and
/// [`SOCKET_CLIENT`]: the HTTP library's address look-ups and reads.
const METRICS: &[Rule] = &[
    Any(libc::SYS_getsockname), // addresses
    Any(libc::SYS_getpeername), // addresses
    Any(libc::SYS_readv),       // requests
];

/// The guests' control socket and QMP multiplexer (the lifecycle
/// commands), besides [`SOCKET_SERVER`] and [`SOCKET_CLIENT`]: signal and
/// reap QEMUs, write state and logs.
const GUESTS: &[Rule] = &[
    Any(libc::SYS_openat),    // state files, logs
    Any(libc::SYS_unlinkat),  // state files
    Any(libc::SYS_renameat),  // state files
    Any(libc::SYS_mkdirat),   // state directory
    Any(libc::SYS_fsync),     // a saved state and its directory
    Any(libc::SYS_fdatasync), // a saved state
    Any(libc::SYS_kill),      // signal a QEMU
    Any(libc::SYS_wait4),     // reap a restore command
    Any(libc::SYS_waitid),    // reap a restore command
];

/// The liveness watchdog: sd_notify pings.
const LIVENESS: &[Rule] = &[
    Any(libc::SYS_socket),  // sd_notify datagram socket
    Any(libc::SYS_connect), // sd_notify
    Any(libc::SYS_sendto),  // sd_notify
    Any(libc::SYS_sendmsg), // sd_notify
];

/// Syscalls x86_64 keeps beside their generic twins (older glibc and
/// std paths use them), for every thread.
#[cfg(target_arch = "x86_64")]
const LEGACY: &[Rule] = &[
    Any(libc::SYS_poll),       // listener readiness, proxy, TAP
    Any(libc::SYS_epoll_wait), // the framework's event loops
    Any(libc::SYS_stat),       // metadata
    Any(libc::SYS_lstat),      // metadata
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[Rule] = &[];

/// x86_64's path syscalls (glibc's `unlink`, `rename`, `mkdir` use them),
/// for the classes that create and remove files.
#[cfg(target_arch = "x86_64")]
const LEGACY_FILES: &[Rule] = &[
    Any(libc::SYS_open),     // files
    Any(libc::SYS_unlink),   // sockets, state files
    Any(libc::SYS_rename),   // state files
    Any(libc::SYS_mkdir),    // state directory
    Any(libc::SYS_readlink), // paths
    Any(libc::SYS_access),   // paths
    Any(libc::SYS_chmod),    // socket modes
    Any(libc::SYS_chown),    // socket owners
];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY_FILES: &[Rule] = &[];

impl Class {
    /// The tables of this class's own threads.
    fn own(self) -> &'static [&'static [Rule]] {
        match self {
            Class::Main => &[MAIN],
            Class::Connection => &[CONNECTION],
            Class::QueueWorker => &[QUEUE_WORKER, DISK_IO],
            Class::Io => &[DISK_IO],
            Class::Switch => &[SWITCH],
            Class::Balloon => &[BALLOON, SOCKET_CLIENT],
            Class::Metrics => &[METRICS, SOCKET_SERVER, SOCKET_CLIENT],
            Class::Guests => &[GUESTS, SOCKET_SERVER, SOCKET_CLIENT],
            Class::Liveness => &[LIVENESS],
        }
    }

    /// The classes of the threads a thread of this class starts after its
    /// filter is on: the main thread's reloads start disk servers and
    /// I/O pools; a connection thread starts the framework's protocol
    /// thread (its own class) and queue workers; the balloon manager and
    /// the guests' threads start QMP readers (guests class).
    pub(crate) fn starts(self) -> &'static [Class] {
        match self {
            Class::Main => &[
                Class::Connection,
                Class::Io,
                Class::QueueWorker,
                Class::Liveness,
            ],
            Class::Connection => &[Class::QueueWorker],
            Class::Balloon => &[Class::Guests],
            Class::Metrics | Class::Guests => &[],
            Class::QueueWorker | Class::Io | Class::Switch | Class::Liveness => &[],
        }
    }

    /// Every rule a thread of this class needs: [`BASE`], its own table,
    /// thread starts when it starts threads (the Metrics endpoint's HTTP
    /// library and the guests' commands start their own), and the
    /// tables of the classes it starts.
    pub(crate) fn rules(self) -> Vec<Rule> {
        let mut out: Vec<Rule> = BASE.iter().chain(LEGACY).copied().collect();
        for table in self.own() {
            out.extend_from_slice(table);
        }
        if matches!(self, Class::Main | Class::Connection | Class::Guests) {
            out.extend_from_slice(LEGACY_FILES);
        }
        if !self.starts().is_empty() || matches!(self, Class::Metrics | Class::Guests) {
            out.extend_from_slice(SPAWN);
        }
        for c in self.starts() {
            out.extend(c.rules());
        }
        out
    }
}
