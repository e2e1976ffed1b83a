//! The daemon's threads: every thread it starts for a device (a disk's or
//! a switch port's server, the uplink reader, a disk's I/O threads, the
//! balloon manager, the metrics endpoint) is started here, named, with its
//! panics caught. A panic that escapes a thread's body is logged with the
//! thread's name and handed to the device's reset hook, so one device's
//! bug ends that device's connection, never the daemon: the contract the
//! queue workers' wrapper in [`crate::blk::device`] keeps for the threads
//! the vhost-user framework starts.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::error;

/// Starts `body` on a thread named `name`. A panic in `body` is caught and
/// logged; the thread then ends (its join reports no panic).
pub fn spawn<F>(name: String, body: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    start(name, None, body)
}

/// As [`spawn`], for a thread that serves a device: after a panic in
/// `body`, `reset` runs on the same thread (drop the device's connection,
/// so the frontend reconnects to a clean device).
pub fn spawn_with_reset<F, R>(name: String, reset: R, body: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
    R: FnOnce() + Send + 'static,
{
    start(name, Some(Box::new(reset)), body)
}

/// Waits for the thread until `deadline`: joins it and returns true when it
/// ended, else leaves it running and returns false (a thread blocked in the
/// kernel on a dead device must not hang the daemon's stop).
pub fn join_until(handle: JoinHandle<()>, deadline: Instant) -> bool {
    while !handle.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if handle.is_finished() {
        let _ = handle.join();
        true
    } else {
        false
    }
}

type Reset = Box<dyn FnOnce() + Send>;

fn start<F>(name: String, reset: Option<Reset>, body: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // Whatever the body shared with other threads is either behind
            // a lock (poisoning is handled where it is taken) or handed to
            // the reset hook, whose job is to bring it back to a clean state.
            if catch_unwind(AssertUnwindSafe(body)).is_err() {
                match reset {
                    Some(reset) => {
                        error!("thread '{name}' panicked; resetting its device");
                        reset();
                    }
                    None => error!("thread '{name}' panicked; it has stopped"),
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_panic_resets_the_device_on_the_named_thread() {
        let (tx, rx) = mpsc::channel();
        let h = spawn_with_reset(
            "dev-test".into(),
            move || {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send(name);
            },
            || panic!("deliberate"),
        )
        .expect("spawn");
        assert!(h.join().is_ok(), "the panic does not escape the thread");
        let name = rx.recv_timeout(Duration::from_secs(60)).expect("reset ran");
        assert_eq!(name.as_deref(), Some("dev-test"));
    }

    #[test]
    fn no_reset_without_a_panic() {
        let (tx, rx) = mpsc::channel::<()>();
        let reset = move || {
            let _ = tx.send(());
        };
        let h = spawn_with_reset("dev-ok".into(), reset, || {}).expect("spawn");
        assert!(h.join().is_ok());
        assert!(rx.try_recv().is_err(), "the reset hook ran without a panic");
        let h = spawn("plain".into(), || panic!("deliberate")).expect("spawn");
        assert!(h.join().is_ok(), "the panic does not escape the thread");
    }

    #[test]
    fn join_until_leaves_a_busy_thread_at_the_deadline() {
        let (tx, rx) = mpsc::channel::<()>();
        let busy = spawn("busy".into(), move || {
            let _ = rx.recv();
        })
        .expect("spawn");
        assert!(!join_until(busy, Instant::now()), "still blocked");
        drop(tx);
        let done = spawn("done".into(), || {}).expect("spawn");
        let far = Instant::now() + Duration::from_secs(60);
        assert!(join_until(done, far), "an ended thread is joined");
    }
}
