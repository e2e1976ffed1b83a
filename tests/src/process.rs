//! Child processes that can never outlive the test: QEMU and helper daemons.
//!
//! Each child gets `PR_SET_PDEATHSIG = SIGKILL` (killed if the spawning
//! thread dies, even by SIGKILL from a test runner's timeout) and is killed
//! and reaped when its guard drops (including during a panic's unwinding).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::HarnessError;

/// A child process killed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `cmd`, tied to the lifetime of the calling thread and the guard.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self, HarnessError> {
        fn tie_to_parent() -> std::io::Result<()> {
            // SAFETY: prctl(2) with PR_SET_PDEATHSIG takes a signal number
            // and no pointers; it is async-signal-safe.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: getppid(2) has no arguments and cannot fail. Checked
            // because the parent may have died before prctl took effect.
            if unsafe { libc::getppid() } == 1 {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        }
        // SAFETY: the pre_exec hook runs between fork and exec in the child,
        // where only async-signal-safe calls are allowed; `tie_to_parent`
        // makes two system calls (prctl, getppid), allocates nothing and
        // touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(tie_to_parent);
        }
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawn {name} ({cmd:?})"), e))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    /// Process id.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Access to the child (for its pipes).
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Non-blocking exit check.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, HarnessError> {
        match self.child.as_mut() {
            Some(c) => c
                .try_wait()
                .map_err(|e| HarnessError::io(format!("wait for {}", self.name), e)),
            None => Ok(None),
        }
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`, `libc::SIGKILL`) to the child.
    pub fn signal(&self, sig: i32) -> Result<(), HarnessError> {
        let Some(pid) = self.id() else { return Ok(()) };
        let pid = libc::pid_t::try_from(pid)
            .map_err(|_| HarnessError::Setup(format!("pid {pid} out of range")))?;
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet (the
        // Child is still held, so the pid cannot have been recycled).
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(HarnessError::io(
                format!("signal {} to {}", sig, self.name),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Kills (SIGKILL) and reaps the child now.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` in `/proc/<pid>/status`),
/// or None when the process or the field is gone.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
