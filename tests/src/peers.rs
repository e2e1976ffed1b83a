//! Reference peers the tests and benchmarks run our code against.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::ChildGuard;
use crate::HarnessError;

/// Waits until `path` exists (a unix socket a daemon creates), or fails
/// when the daemon exits or the timeout passes.
pub fn wait_for_socket(
    daemon: &mut ChildGuard,
    path: &Path,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if let Some(st) = daemon.try_wait()? {
            return Err(HarnessError::Setup(format!(
                "daemon exited ({st}) before creating {}",
                path.display()
            )));
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Setup(format!(
                "{} did not appear within {:?}",
                path.display(),
                timeout
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// QEMU's reference vhost-user-blk backend, `qemu-storage-daemon`, serving
/// one raw image on a unix socket. Killed on drop.
#[derive(Debug)]
pub struct QemuStorageDaemon {
    guard: ChildGuard,
    socket: PathBuf,
}

impl QemuStorageDaemon {
    /// Starts the daemon exporting `image` (raw, writable) with
    /// `num_queues` queues on `socket`, and waits for the socket.
    pub fn start(image: &Path, socket: &Path, num_queues: u32) -> Result<Self, HarnessError> {
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={},cache.direct=off,aio=threads",
                image.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},writable=on,num-queues={num_queues}",
                socket.display()
            ))
            .stdin(Stdio::null());
        let mut guard = ChildGuard::spawn("qemu-storage-daemon", &mut cmd).map_err(|e| match e {
            HarnessError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => HarnessError::Setup(
                "qemu-storage-daemon missing: install qemu-system-common (comes with qemu-system-x86)".into(),
            ),
            other => other,
        })?;
        wait_for_socket(&mut guard, socket, Duration::from_secs(30))?;
        Ok(Self {
            guard,
            socket: socket.to_owned(),
        })
    }

    /// The vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.guard.id()
    }
}

/// Our own backend daemon, `pvbackend`, as a child process (release build).
/// Killed on drop; [`PvBackend::stop`] stops it the graceful way.
#[derive(Debug)]
pub struct PvBackend {
    guard: ChildGuard,
    sockets: Vec<PathBuf>,
    log: PathBuf,
}

impl PvBackend {
    /// Starts `pvbackend` with `--disk` specs (see `pvbackend --help`) and
    /// extra arguments, appending its log to `log`, and waits until it is
    /// ready (every socket listening).
    pub fn start(
        disk_specs: &[String],
        extra_args: &[&str],
        log: &Path,
    ) -> Result<Self, HarnessError> {
        Self::start_with(disk_specs, &[], extra_args, log)
    }

    /// A switch with one port per name in `names`, port `n` on `n.sock` in
    /// `dir` (log `dir/backend.log`, info level, metrics on an ephemeral
    /// port): the set-up of the multi-guest network tests. Returns the
    /// sockets in the order of `names`.
    pub fn switch(dir: &Path, names: &[&str]) -> Result<(Self, Vec<PathBuf>), HarnessError> {
        let sockets: Vec<PathBuf> = names
            .iter()
            .map(|n| dir.join(format!("{n}.sock")))
            .collect();
        let specs: Vec<String> = names
            .iter()
            .zip(&sockets)
            .map(|(n, s)| format!("socket={},name={n}", s.display()))
            .collect();
        let backend = Self::start_with(
            &[],
            &specs,
            &["--log-level", "info", "--metrics", "127.0.0.1:0"],
            &dir.join("backend.log"),
        )?;
        Ok((backend, sockets))
    }

    /// [`PvBackend::switch`] with two ports, `a` and `b`.
    pub fn two_port_switch(dir: &Path) -> Result<(Self, PathBuf, PathBuf), HarnessError> {
        let (backend, sockets) = Self::switch(dir, &["a", "b"])?;
        let [a, b]: [PathBuf; 2] = sockets
            .try_into()
            .map_err(|_| HarnessError::Setup("two ports asked, other count made".into()))?;
        Ok((backend, a, b))
    }

    /// Like [`PvBackend::start`], with switch ports (`--net-port` specs)
    /// as well as disks.
    pub fn start_with(
        disk_specs: &[String],
        net_specs: &[String],
        extra_args: &[&str],
        log: &Path,
    ) -> Result<Self, HarnessError> {
        let bin = crate::guest_bins::host_path_of("pvbackend")?;
        let mut cmd = Command::new(&bin);
        for spec in disk_specs {
            cmd.arg("--disk").arg(spec);
        }
        for spec in net_specs {
            cmd.arg("--net-port").arg(spec);
        }
        // Appended, so a restarted daemon's log follows its predecessor's.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| HarnessError::io(format!("open {}", log.display()), e))?;
        let before = out.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let err = out
            .try_clone()
            .map_err(|e| HarnessError::io("clone log".into(), e))?;
        cmd.args(extra_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut guard = ChildGuard::spawn("pvbackend", &mut cmd)?;
        let sockets: Vec<PathBuf> = disk_specs
            .iter()
            .chain(net_specs)
            .filter_map(|s| {
                s.split(',')
                    .find_map(|kv| kv.strip_prefix("socket="))
                    .map(PathBuf::from)
            })
            .collect();
        // The daemon logs "ready:" once every socket listens; a stale socket
        // file left by a killed predecessor exists before that, so waiting
        // for the file alone is not enough.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.get(before..).is_some_and(|t| t.contains(" ready: ")) {
                break;
            }
            if let Some(st) = guard.try_wait()? {
                return Err(HarnessError::Setup(format!(
                    "pvbackend exited ({st}) before it was ready; log {}:\n{text}",
                    log.display()
                )));
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Setup(format!(
                    "pvbackend not ready within 60 s; log {}:\n{text}",
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            guard,
            sockets,
            log: log.to_owned(),
        })
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.guard.id()
    }

    /// The metrics endpoint's address, when the daemon was started with
    /// `--metrics` (read from its log).
    pub fn metrics_addr(&self) -> Option<String> {
        let log = self.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("metrics on http://"))?;
        let rest = line.split("metrics on http://").nth(1)?;
        rest.split('/').next().map(str::to_owned)
    }

    /// Fetches `GET /metrics` (Prometheus text) from the daemon.
    pub fn fetch_metrics(&self) -> Result<String, HarnessError> {
        use std::io::{Read, Write};
        let addr = self
            .metrics_addr()
            .ok_or_else(|| HarnessError::Setup("pvbackend was started without --metrics".into()))?;
        let mut s = std::net::TcpStream::connect(&addr)
            .map_err(|e| HarnessError::io(format!("connect {addr}"), e))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| HarnessError::io("timeout".into(), e))?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: pvtest\r\n\r\n")
            .map_err(|e| HarnessError::io("send".into(), e))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| HarnessError::io("read metrics".into(), e))?;
        Ok(out)
    }

    /// The value of one series (exact name and labels as rendered), if present.
    pub fn metric(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }

    /// What is wrong with `disk`'s error counters in the scrape `text`
    /// (empty when it counted no error): a preset series (`io`,
    /// `worker_panic`, `io_panic`, present at 0 from the start) that is
    /// missing, so a renamed series fails the check instead of passing it,
    /// or any `pvbackend_blk_errors_total` series of the disk above 0.
    pub fn blk_error_problems(text: &str, disk: &str) -> Vec<String> {
        let prefix = format!("pvbackend_blk_errors_total{{disk=\"{disk}\",kind=");
        let mut problems: Vec<String> = ["io", "worker_panic", "io_panic"]
            .iter()
            .map(|kind| format!("{prefix}\"{kind}\"}}"))
            .filter(|s| Self::metric(text, s) != Some(0.0))
            .map(|s| format!("{s} is not there at 0"))
            .collect();
        problems.extend(
            text.lines()
                .filter(|l| l.starts_with(&prefix))
                .filter(|l| {
                    l.rsplit(' ')
                        .next()
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        != Some(0.0)
                })
                .map(str::to_owned),
        );
        problems
    }

    /// Waits for `line` on `guest`'s console; panics with the console and
    /// this daemon's log when it does not come within `timeout`.
    pub fn expect_console(&self, guest: &mut crate::Guest, line: &str, timeout: Duration) {
        if let Err(e) = guest.wait_for_console(line, timeout) {
            panic!(
                "{e}\n{}\n--- backend log ---\n{}",
                guest.drain_console(),
                self.log()
            );
        }
    }

    /// Panics with the guest's failure report and this daemon's log
    /// unless the guest's scenario passed.
    pub fn expect_guest_pass(&self, out: &crate::Outcome) {
        if !out.passed() {
            panic!(
                "{}\n--- backend log ---\n{}",
                out.failure_report(),
                self.log()
            );
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and panics unless the daemon exits 0 within a minute (its
    /// disks flushed).
    pub fn stop_cleanly(self) {
        let status = self
            .stop(Duration::from_secs(60))
            .expect("signal")
            .expect("backend exits after SIGTERM");
        assert!(status.success(), "backend exit status {status}");
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn stop(
        mut self,
        timeout: Duration,
    ) -> Result<Option<std::process::ExitStatus>, HarnessError> {
        self.guard.signal(libc::SIGTERM)?;
        let st = self.guard.wait_timeout(timeout)?;
        let _ = &self.sockets;
        Ok(st)
    }

    /// Waits up to `timeout` for the daemon to exit on its own (a crash
    /// test); `None` if it is still running.
    pub fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<std::process::ExitStatus>, HarnessError> {
        self.guard.wait_timeout(timeout)
    }

    /// SIGKILL, no cleanup (for crash tests).
    pub fn kill(mut self) {
        self.guard.kill();
    }
}

/// Checks that every `block`-byte block of `image` holds `seed`'s stamp
/// (`pv_blk::pattern`), panicking at the first that does not.
pub fn verify_image(image: &Path, block: usize, seed: u64) {
    let data = std::fs::read(image).expect("read image");
    for (i, b) in data.chunks(block).enumerate() {
        if let Err(e) = pv_blk::pattern::verify(b, seed, i as u64) {
            panic!("{} block {i}: {e:?}", image.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PvBackend;

    const PRESET: &str = "pvbackend_blk_errors_total{disk=\"d\",kind=\"io\"} 0\n\
        pvbackend_blk_errors_total{disk=\"d\",kind=\"worker_panic\"} 0\n\
        pvbackend_blk_errors_total{disk=\"d\",kind=\"io_panic\"} 0\n";

    #[test]
    fn no_blk_errors_needs_the_series_present_at_zero() {
        assert!(PvBackend::blk_error_problems(PRESET, "d").is_empty());
        // A renamed family: the preset series are missing.
        let renamed = PRESET.replace("errors_total", "failures_total");
        assert_eq!(PvBackend::blk_error_problems(&renamed, "d").len(), 3);
        // Another disk's series do not count for this one.
        assert_eq!(PvBackend::blk_error_problems(PRESET, "e").len(), 3);
        // Any error of the disk, preset kind or not.
        let io = PRESET.replace("kind=\"io\"} 0", "kind=\"io\"} 2");
        assert_eq!(PvBackend::blk_error_problems(&io, "d").len(), 2);
        let guest =
            format!("{PRESET}pvbackend_blk_errors_total{{disk=\"d\",kind=\"short_header\"}} 1\n");
        assert_eq!(
            PvBackend::blk_error_problems(&guest, "d"),
            ["pvbackend_blk_errors_total{disk=\"d\",kind=\"short_header\"} 1"]
        );
    }
}
