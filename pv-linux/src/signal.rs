//! SIGTERM and SIGINT as a flag a runtime's loop checks.
//!
//! [`install`] sets a handler that only stores to an atomic (async-signal
//! safe). Helper threads that sit in blocking kernel calls a signal would
//! abort (the NBD `NBD_DO_IT` ioctl tears the connection down when
//! interrupted) are spawned with [`spawn_blocked`], which runs them with
//! these signals blocked, so the signal always lands on a thread that
//! handles it.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Install the SIGTERM/SIGINT handler (without `SA_RESTART`, so blocking
/// calls return `EINTR` and the loop sees the flag).
pub fn install() -> crate::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: all-zero bytes are a valid sigaction (no flags, empty
        // mask, default handler) for this plain C struct.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        // SAFETY: the handler is an `extern "C" fn(c_int)` that only stores
        // to an atomic (async-signal safe); `sa` is initialised above.
        let rc = unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(crate::Error::last_os("sigaction"));
        }
    }
    Ok(())
}

/// True once SIGTERM or SIGINT arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Ask the loop to stop as if a signal had arrived.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

fn set_mask(how: libc::c_int) {
    // SAFETY: all-zero bytes are a valid (empty) sigset_t.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: `set` is a live, initialised sigset_t.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: changes only this thread's mask; `set` is initialised.
    unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
}

/// Spawn a named thread with SIGTERM and SIGINT blocked.
pub fn spawn_blocked<F, T>(name: &str, f: F) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            set_mask(libc::SIG_BLOCK);
            f()
        })
}
