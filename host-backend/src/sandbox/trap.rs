//! The SIGSYS handler of `--seccomp=trap`: one line naming the forbidden
//! syscall and the thread that made it, then the process exits.
//!
//! It runs inside the filtered thread, in a signal handler: it allocates
//! nothing, takes no lock and makes two syscalls every table allows
//! (`write`, `exit_group`). The thread's name and class are copied into a
//! thread-local buffer when the thread enters its sandbox, so the handler
//! only reads memory.

use std::cell::Cell;
use std::io;

use super::Class;

/// The exit status after a violation: 128 + SIGSYS, as a shell reports a
/// process killed by the signal.
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// `si_code` of a SIGSYS sent by seccomp.
const SYS_SECCOMP: i32 = 1;

#[derive(Clone, Copy)]
struct Who {
    name: [u8; 16],
    len: usize,
    class: &'static str,
}

thread_local! {
    static WHO: Cell<Who> = const {
        Cell::new(Who { name: [0; 16], len: 0, class: "?" })
    };
}

/// Remembers the calling thread's name (its first 16 bytes) and class for
/// the handler.
pub(super) fn name_thread(name: &str, class: Class) {
    let mut who = Who {
        name: [0; 16],
        len: name.len().min(16),
        class: class.name(),
    };
    who.name[..who.len].copy_from_slice(&name.as_bytes()[..who.len]);
    WHO.with(|w| w.set(who));
}

/// Installs the handler for the whole process.
pub(super) fn install() -> io::Result<()> {
    // SAFETY: all-zero bytes are a valid sigaction (no flags, empty
    // mask, no handler); the fields are set below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: sa_mask is a valid sigset_t we own.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    // SAFETY: `act` is initialised; the handler has the three-argument
    // signature SA_SIGINFO asks for and lives as long as the process.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A small formatter into a stack buffer (no allocation in the handler).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The line the handler writes, for the thread `who` (`tid`). A thread
/// that did not enter a sandbox itself runs its parent's filter: it is
/// named by its tid only.
fn message(syscall: i32, arch: u32, who: Who, tid: i64) -> Line {
    let mut l = Line {
        buf: [0; 256],
        len: 0,
    };
    if who.len == 0 {
        l.push(b"pvbackend: seccomp: thread tid ");
        l.num(tid.unsigned_abs());
        l.push(b" (no class of its own: its parent's filter) made forbidden syscall ");
    } else {
        l.push(b"pvbackend: seccomp: thread '");
        l.push(&who.name[..who.len]);
        l.push(b"' (tid ");
        l.num(tid.unsigned_abs());
        l.push(b", class ");
        l.push(who.class.as_bytes());
        l.push(b") made forbidden syscall ");
    }
    l.num(u64::from(syscall.unsigned_abs()));
    l.push(b" (arch 0x");
    for shift in (0..8).rev() {
        l.push(&[b"0123456789abcdef"[((arch >> (shift * 4)) & 0xf) as usize]]);
    }
    l.push(b"); exiting with status ");
    l.num(EXIT_STATUS as u64);
    l.push(b" for the supervisor to restart the daemon\n");
    l
}

extern "C" fn handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO
    // handler.
    let code = unsafe { (*info).si_code };
    // For SIGSYS its union holds `_sigsys { void *call_addr; int syscall;
    // unsigned arch; }` at `sigsys_offset()`, inside the 128-byte
    // siginfo_t.
    let base = info
        .cast::<u8>()
        .wrapping_add(sigsys_offset() + std::mem::size_of::<usize>());
    // SAFETY: `base` and `base + 4` point inside the kernel's siginfo_t
    // (see above); read_unaligned needs no alignment.
    let syscall = unsafe { base.cast::<i32>().read_unaligned() };
    // SAFETY: as above.
    let arch = unsafe { base.wrapping_add(4).cast::<u32>().read_unaligned() };
    if code == SYS_SECCOMP {
        let who = WHO.with(Cell::get);
        // SAFETY: gettid takes no arguments (allowed by every table).
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let l = message(syscall, arch, who, tid);
        // SAFETY: writes our own initialised stack buffer to stderr.
        unsafe { libc::write(2, l.buf.as_ptr().cast(), l.len) };
    }
    // SAFETY: ends the process at once (no destructors: we are in a
    // signal handler, other threads may hold any lock).
    unsafe { libc::_exit(EXIT_STATUS) };
}

/// Where the `_sigsys` member of siginfo_t's union starts: after si_signo,
/// si_errno and si_code (three ints), aligned for a pointer.
const fn sigsys_offset() -> usize {
    let ints = 3 * std::mem::size_of::<i32>();
    let align = std::mem::align_of::<*const u8>();
    ints.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_thread_class_and_syscall() {
        let mut who = Who {
            name: [0; 16],
            len: 0,
            class: "queue-worker",
        };
        who.name[..12].copy_from_slice(b"vring_worker");
        who.len = 12;
        let l = message(41, 0xc000_003e, who, 4242);
        let s = std::str::from_utf8(&l.buf[..l.len]).expect("utf8");
        assert_eq!(
            s,
            "pvbackend: seccomp: thread 'vring_worker' (tid 4242, class queue-worker) made forbidden syscall 41 (arch 0xc000003e); exiting with status 159 for the supervisor to restart the daemon\n"
        );
        let l = message(
            46,
            0xc000_003e,
            Who {
                name: [0; 16],
                len: 0,
                class: "?",
            },
            7,
        );
        let s = std::str::from_utf8(&l.buf[..l.len]).expect("utf8");
        assert!(
            s.starts_with("pvbackend: seccomp: thread tid 7 (no class of its own: its parent's filter) made forbidden syscall 46 "),
            "{s}"
        );
    }

    #[test]
    fn sigsys_fields_follow_the_three_ints() {
        // Linux's layout on 64-bit targets: the union at 16, syscall at 24.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(sigsys_offset(), 16);
    }
}
