//! The [`Guest`] type: one QEMU guest running one scenario.

use std::fmt;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::guest_bins;
use crate::initramfs::Initramfs;
use crate::kernel::{Kernel, KernelChoice};
use crate::modules::ModuleIndex;
use crate::process::ChildGuard;
use crate::HarnessError;

/// Where busybox-static installs its binary on Debian.
const BUSYBOX: &str = "/bin/busybox";
/// How long QEMU may take to exit after the scenario's end marker.
const POWEROFF_GRACE: Duration = Duration::from_secs(60);

/// CPU accelerator for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation (`-accel tcg -cpu max`): works everywhere here.
    Tcg,
    /// Hardware virtualisation (`-accel kvm -cpu host`), where it works.
    Kvm,
}

impl Accel {
    /// `PVTEST_ACCEL=kvm` selects KVM; anything else (or unset) TCG.
    pub fn from_env() -> Self {
        match std::env::var("PVTEST_ACCEL").as_deref() {
            Ok("kvm") => Self::Kvm,
            _ => Self::Tcg,
        }
    }
}

/// How a scenario ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The scenario script exited 0 and the guest reported it.
    Passed,
    /// The scenario script (or guest init) reported a non-zero exit status.
    Failed { exit_code: i32 },
    /// The hard timeout expired; QEMU was killed.
    TimedOut { after: Duration },
    /// QEMU exited without the guest reporting a result (kernel panic,
    /// QEMU error, guest powered off early).
    NoResult { qemu_status: Option<ExitStatus> },
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Passed => f.write_str("passed"),
            Self::Failed { exit_code } => {
                write!(f, "failed: scenario exited with status {exit_code}")
            }
            Self::TimedOut { after } => {
                write!(f, "timed out after {} s; QEMU killed", after.as_secs())
            }
            Self::NoResult {
                qemu_status: Some(st),
            } => write!(
                f,
                "no result: QEMU exited ({st}) before the scenario reported"
            ),
            Self::NoResult { qemu_status: None } => {
                f.write_str("no result: QEMU exited before the scenario reported")
            }
        }
    }
}

/// The result of a finished guest.
#[derive(Debug)]
pub struct Outcome {
    /// Scenario name.
    pub name: String,
    /// How it ended.
    pub verdict: Verdict,
    /// Everything the guest printed on its serial console.
    pub console: String,
    /// The kept console log (set whenever the scenario did not pass).
    pub log_path: Option<PathBuf>,
    /// From QEMU's start to the scenario script starting in the guest.
    pub boot_to_scenario: Option<Duration>,
    /// From QEMU's start to its exit (or kill).
    pub elapsed: Duration,
}

impl Outcome {
    /// True when the scenario passed.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Passed
    }

    /// Panics with the verdict, the log path and the console's last lines
    /// unless the scenario passed.
    #[track_caller]
    pub fn expect_pass(&self) -> &Self {
        if !self.passed() {
            panic!("{}", self.failure_report());
        }
        self
    }

    /// A human report of a non-passing outcome.
    pub fn failure_report(&self) -> String {
        let tail: Vec<&str> = self.console.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "guest scenario '{}' {}\nfull console log: {}\n--- last console lines ---\n{}\n---",
            self.name,
            self.verdict,
            self.log_path
                .as_ref()
                .map_or_else(|| "(not kept)".to_owned(), |p| p.display().to_string()),
            tail.join("\n")
        )
    }

    /// True when the console holds `needle` (for checks on scenario output).
    pub fn console_has(&self, needle: &str) -> bool {
        self.console.contains(needle)
    }
}

/// Builder for a [`Guest`]. Every method consumes and returns the builder so
/// a test reads like its scenario.
#[derive(Debug, Clone)]
pub struct GuestBuilder {
    name: String,
    memory_mib: u32,
    cpus: u32,
    accel: Accel,
    timeout: Duration,
    modules: Vec<String>,
    binaries: Vec<String>,
    files: Vec<(String, u32, Vec<u8>)>,
    script: String,
    qemu_args: Vec<String>,
    shared_memory: bool,
    qmp: bool,
    next_dev: u32,
    cmdline: Vec<String>,
    echo: bool,
    kernel: KernelChoice,
    incoming: Option<Incoming>,
}

/// What a restored guest takes over from the guest that was saved: its
/// initramfs (QEMU loads it again before the saved RAM replaces it) and its
/// console markers (the scenario's end marker is in that RAM), and where
/// the saved state is.
#[derive(Debug, Clone)]
struct Incoming {
    initramfs: Vec<u8>,
    begin_marker: String,
    end_marker: String,
    /// QEMU's `-incoming` argument.
    uri: String,
}

/// A running guest. Dropping it kills QEMU.
#[derive(Debug)]
pub struct Guest {
    name: String,
    qemu: ChildGuard,
    lines: Receiver<String>,
    console: String,
    log_path: PathBuf,
    begin_marker: String,
    end_marker: String,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
    boot_to_scenario: Option<Duration>,
    qmp_socket: Option<PathBuf>,
    initrd: PathBuf,
    command_line: Vec<String>,
    _workdir: tempfile::TempDir,
}

impl Guest {
    /// Starts describing a guest for the scenario `name`.
    pub fn builder(name: &str) -> GuestBuilder {
        GuestBuilder {
            name: name.to_owned(),
            memory_mib: 512,
            cpus: 1,
            accel: Accel::from_env(),
            timeout: Duration::from_secs(300),
            modules: Vec::new(),
            binaries: Vec::new(),
            files: Vec::new(),
            script: String::new(),
            qemu_args: Vec::new(),
            shared_memory: false,
            qmp: false,
            next_dev: 0,
            cmdline: Vec::new(),
            echo: std::env::var_os("PVTEST_ECHO").is_some(),
            kernel: KernelChoice::Current,
            incoming: None,
        }
    }

    /// QEMU's process id (for reading its memory figures, for example).
    pub fn qemu_pid(&self) -> Option<u32> {
        self.qemu.id()
    }

    /// QEMU's command line (program first), for starting this same
    /// machine again from a saved state (e.g. a daemon's restore command:
    /// the initramfs it names lives as long as this `Guest`).
    pub fn command_line(&self) -> &[String] {
        &self.command_line
    }

    /// Path of the QMP socket when the builder asked for one.
    pub fn qmp_socket(&self) -> Option<&Path> {
        self.qmp_socket.as_deref()
    }

    /// The console as consumed so far (by [`Guest::wait_for_console`] or
    /// [`Guest::drain_console`]).
    pub fn console(&self) -> &str {
        &self.console
    }

    /// Takes every console line that has arrived, without waiting, and
    /// returns the whole console so far.
    pub fn drain_console(&mut self) -> &str {
        while let Ok(line) = self.lines.try_recv() {
            self.push_line(&line);
        }
        &self.console
    }

    /// Waits until a console line contains `needle`; returns that line.
    /// Fails when QEMU exits, the guest's hard deadline passes, or `timeout`
    /// expires first.
    pub fn wait_for_console(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        if let Some(line) = self.console.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_owned());
        }
        let until = (Instant::now() + timeout).min(self.deadline);
        loop {
            let now = Instant::now();
            if now >= until {
                return Err(HarnessError::Setup(format!(
                    "'{needle}' did not appear on the console of '{}' in time (log: {})",
                    self.name,
                    self.log_path.display()
                )));
            }
            match self.lines.recv_timeout(until - now) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.push_line(&line);
                    if hit {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(HarnessError::Setup(format!(
                        "QEMU of '{}' exited before '{needle}' appeared (log: {})",
                        self.name,
                        self.log_path.display()
                    )))
                }
            }
        }
    }

    fn push_line(&mut self, line: &str) {
        if self.boot_to_scenario.is_none() && line.contains(&self.begin_marker) {
            self.boot_to_scenario = Some(self.started.elapsed());
        }
        self.console.push_str(line);
        self.console.push('\n');
    }

    /// Waits for the scenario's result and QEMU's exit (or the timeout), and
    /// returns the outcome. QEMU is always gone when this returns.
    pub fn wait(mut self) -> Outcome {
        let mut verdict = None;
        let mut marker_at = None;
        loop {
            let now = Instant::now();
            if let Some(code) = verdict_from(&self.console, &self.end_marker) {
                if verdict.is_none() {
                    verdict = Some(code);
                    marker_at = Some(now);
                }
            }
            let limit = match marker_at {
                Some(t) => (t + POWEROFF_GRACE).min(self.deadline.max(t + Duration::from_secs(5))),
                None => self.deadline,
            };
            if now >= limit {
                break;
            }
            match self.lines.recv_timeout(limit - now) {
                Ok(line) => self.push_line(&line),
                Err(RecvTimeoutError::Timeout) => {}
                // The console closes when QEMU exits.
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let qemu_status = match self.qemu.wait_timeout(Duration::from_secs(5)) {
            Ok(Some(st)) => Some(st),
            _ => self.qemu.kill(),
        };
        let verdict = match verdict {
            Some(0) => Verdict::Passed,
            Some(code) => Verdict::Failed { exit_code: code },
            None if Instant::now() >= self.deadline => Verdict::TimedOut {
                after: self.timeout,
            },
            None => Verdict::NoResult { qemu_status },
        };
        let keep = verdict != Verdict::Passed || std::env::var_os("PVTEST_KEEP_LOGS").is_some();
        let log_path = if keep {
            Some(self.log_path.clone())
        } else {
            let _ = fs::remove_file(&self.log_path);
            None
        };
        Outcome {
            name: self.name.clone(),
            verdict,
            console: std::mem::take(&mut self.console),
            log_path,
            boot_to_scenario: self.boot_to_scenario,
            elapsed: self.started.elapsed(),
        }
    }
}

/// Finds `<end_marker> rc=<n>` in the console and returns n.
fn verdict_from(console: &str, end_marker: &str) -> Option<i32> {
    let at = console.find(end_marker)?;
    let rest = &console[at + end_marker.len()..];
    let rest = rest.strip_prefix(" rc=")?;
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// Extra `virtio-net-pci` properties a vhost-user NIC needs here:
/// `,vectors=0` (INTx) when `qemu-system-x86_64` is older than 8.0 or its
/// version cannot be read, else none (MSI-X).
///
/// QEMU 7.2 without KVM segfaults once the guest unmasks a queue's MSI-X
/// vector: `vhost_net_start` turns `use_guest_notifier_mask` off for
/// vhost-user, but `virtio_pci_set_guest_notifiers` still installs the
/// MSI-X vector notifiers (it checks only the class's
/// `guest_notifier_mask`), and the unmask path then takes the irqfd branch
/// and dereferences `vector_irqfd`, which only KVM allocates. QEMU 8.0
/// checks both (the "virtio-pci: add support for configure interrupt"
/// change). No device property or feature bit avoids it.
pub fn vhost_user_net_nic_opts() -> &'static str {
    static OPTS: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    OPTS.get_or_init(|| {
        let major = Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| qemu_major(&String::from_utf8_lossy(&o.stdout)));
        match major {
            Some(m) if m >= 8 => "",
            _ => ",vectors=0",
        }
    })
}

/// The major version in `qemu-system-x86_64 --version` output
/// ("QEMU emulator version 7.2.22 (Debian ...)").
fn qemu_major(version: &str) -> Option<u32> {
    version
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn unique_suffix() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_007
    )
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl GuestBuilder {
    /// Guest RAM in MiB (default 512).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs (default 1).
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n.max(1);
        self
    }

    /// Accelerator (default TCG, or `PVTEST_ACCEL`).
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }

    /// Which guest kernel to boot (default: the host suite's, 6.1).
    pub fn kernel(mut self, choice: KernelChoice) -> Self {
        self.kernel = choice;
        self
    }

    /// Hard timeout for the whole guest run (default 300 s). QEMU is killed
    /// when it expires.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// A kernel module to load before the scenario (dependencies follow).
    pub fn module(mut self, name: &str) -> Self {
        self.modules.push(name.to_owned());
        self
    }

    /// Kernel modules to load before the scenario (dependencies follow).
    pub fn modules<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, names: I) -> Self {
        self.modules
            .extend(names.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// One of our static guest binaries, installed as `/usr/bin/<name>`.
    pub fn binary(mut self, name: &str) -> Self {
        self.binaries.push(name.to_owned());
        self
    }

    /// An extra file in the initramfs.
    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        self.files.push((path.to_owned(), mode, data.to_vec()));
        self
    }

    /// The scenario: a busybox `sh -e` script. Its exit status is the
    /// scenario's result.
    pub fn script(mut self, script: &str) -> Self {
        self.script = script.to_owned();
        self
    }

    /// Copy every console line to stderr as it arrives (default: only when
    /// `PVTEST_ECHO` is set).
    pub fn echo_console(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }

    /// Extra kernel command-line words.
    pub fn kernel_arg(mut self, arg: &str) -> Self {
        self.cmdline.push(arg.to_owned());
        self
    }

    /// Raw QEMU arguments (devices, netdevs, objects).
    pub fn qemu_args<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, args: I) -> Self {
        self.qemu_args
            .extend(args.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// Guest RAM from a shared memfd, as vhost-user backends need.
    pub fn shared_memory(mut self) -> Self {
        self.shared_memory = true;
        self
    }

    /// A QMP socket (see [`Guest::qmp_socket`]).
    pub fn qmp(mut self) -> Self {
        self.qmp = true;
        self
    }

    /// Instead of booting, restore `saved`'s scenario from `state`, a file
    /// its QEMU wrote with QMP `migrate` to `exec:cat > FILE` (QEMU runs
    /// with `-incoming exec:cat FILE` and the guest continues where it was
    /// saved). The builder must describe the same machine as `saved`'s (the
    /// same devices, in the same order: build both from one builder).
    /// `saved`'s QEMU should have quit; the new guest's console and
    /// outcome are the rest of `saved`'s scenario.
    pub fn restore(self, saved: &Guest, state: &Path) -> Result<Self, HarnessError> {
        // exec: runs through /bin/sh -c; the path is quoted for it.
        let state = state.display().to_string().replace('\'', r"'\''");
        self.incoming_from(saved, format!("exec:cat '{state}'"))
    }

    /// Instead of booting, be the destination of a live migration of
    /// `source` (same machine, same devices in the same order): QEMU starts
    /// with `-incoming URI` (e.g. `unix:/path/to/socket`, on which it
    /// listens) and runs the guest once `source`'s QEMU has migrated it
    /// there (QMP `migrate` with the same URI). The console and outcome are
    /// the rest of `source`'s scenario.
    pub fn migrate_from(self, source: &Guest, uri: &str) -> Result<Self, HarnessError> {
        self.incoming_from(source, uri.to_owned())
    }

    fn incoming_from(mut self, saved: &Guest, uri: String) -> Result<Self, HarnessError> {
        let initramfs = fs::read(&saved.initrd)
            .map_err(|e| HarnessError::io(format!("read {}", saved.initrd.display()), e))?;
        self.incoming = Some(Incoming {
            initramfs,
            begin_marker: saved.begin_marker.clone(),
            end_marker: saved.end_marker.clone(),
            uri,
        });
        Ok(self)
    }

    fn dev_id(&mut self, kind: &str) -> String {
        self.next_dev += 1;
        format!("{kind}{}", self.next_dev)
    }

    /// QEMU's own virtio-blk (PCI) on a raw image file. Guest disks appear
    /// as `/dev/vda`, `/dev/vdb`, ... in the order added.
    pub fn virtio_blk_disk(mut self, image: &Path) -> Self {
        let id = self.dev_id("disk");
        self.qemu_args.extend([
            "-drive".to_owned(),
            format!(
                "file={},format=raw,if=none,id={id},cache=writeback,aio=threads",
                image.display()
            ),
            "-device".to_owned(),
            format!("virtio-blk-pci,drive={id},serial=pvtest-{id}"),
        ]);
        self
    }

    /// QEMU's own virtio-net (PCI) on a hub with no other port: the device is
    /// there, no traffic leaves the guest.
    pub fn virtio_net_isolated(mut self, mac: &str) -> Self {
        let id = self.dev_id("net");
        self.qemu_args.extend([
            "-netdev".to_owned(),
            format!("hubport,id={id},hubid={}", self.next_dev),
            "-device".to_owned(),
            format!("virtio-net-pci,netdev={id},mac={mac}"),
        ]);
        self
    }

    /// QEMU's own virtio-balloon (PCI).
    pub fn virtio_balloon(mut self) -> Self {
        let id = self.dev_id("balloon");
        self.qemu_args
            .extend(["-device".to_owned(), format!("virtio-balloon-pci,id={id}")]);
        self
    }

    /// A vhost-user-blk device served by a backend listening on `socket`.
    /// Implies shared guest memory.
    pub fn vhost_user_blk(self, socket: &Path, num_queues: u32) -> Self {
        self.vhost_user_blk_chardev(socket, num_queues, "")
    }

    /// Like [`GuestBuilder::vhost_user_blk`], with QEMU reconnecting to the
    /// socket every second when the backend goes away (`reconnect=1`).
    pub fn vhost_user_blk_reconnecting(self, socket: &Path, num_queues: u32) -> Self {
        self.vhost_user_blk_chardev(socket, num_queues, ",reconnect=1")
    }

    fn vhost_user_blk_chardev(mut self, socket: &Path, num_queues: u32, opts: &str) -> Self {
        let id = self.dev_id("vub");
        self.shared_memory = true;
        self.qemu_args.extend([
            "-chardev".to_owned(),
            format!("socket,id={id},path={}{opts}", socket.display()),
            "-device".to_owned(),
            format!("vhost-user-blk-pci,chardev={id},num-queues={num_queues}"),
        ]);
        self
    }

    /// A virtio-net NIC on a vhost-user-net backend (our switch) listening
    /// on `socket`, with MAC `mac`. Implies shared guest memory. On QEMU
    /// before 8.0 INTx only (`vectors=0`, see [`vhost_user_net_nic_opts`]).
    pub fn vhost_user_net(self, socket: &Path, mac: &str) -> Self {
        self.vhost_user_net_with(socket, mac, "")
    }

    /// [`GuestBuilder::vhost_user_net`] with extra `virtio-net-pci`
    /// properties, `props` starting with a comma (such as
    /// `,csum=off,host_tso4=off` to mask features the backend offers).
    pub fn vhost_user_net_with(mut self, socket: &Path, mac: &str, props: &str) -> Self {
        let id = self.dev_id("vun");
        self.shared_memory = true;
        self.qemu_args.extend([
            "-chardev".to_owned(),
            format!("socket,id={id}c,path={}", socket.display()),
            "-netdev".to_owned(),
            format!("vhost-user,id={id},chardev={id}c"),
            "-device".to_owned(),
            format!(
                "virtio-net-pci,netdev={id},mac={mac}{}{props}",
                vhost_user_net_nic_opts()
            ),
        ]);
        self
    }

    /// QEMU's own virtio-net on a `-netdev stream` unix socket: `listen`
    /// true makes this guest the server (start it first), false connects
    /// to a server already listening at `socket`. Two guests joined this
    /// way form QEMU's built-in point-to-point network.
    pub fn virtio_net_stream(mut self, socket: &Path, listen: bool, mac: &str) -> Self {
        let id = self.dev_id("nst");
        self.qemu_args.extend([
            "-netdev".to_owned(),
            format!(
                "stream,id={id},server={},addr.type=unix,addr.path={}",
                if listen { "on" } else { "off" },
                socket.display()
            ),
            "-device".to_owned(),
            format!("virtio-net-pci,netdev={id},mac={mac}"),
        ]);
        self
    }

    fn init_script(&self, order: &[String], begin: &str, end: &str) -> String {
        let mut s = String::from(
            "#!/bin/busybox sh\n\
             /bin/busybox --install -s /bin\n\
             export PATH=/usr/bin:/bin\n\
             mkdir -p /proc /sys /dev /tmp /run /mnt\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sysfs /sys\n\
             mount -t devtmpfs devtmpfs /dev\n\
             mount -t tmpfs tmpfs /tmp\n\
             mount -t tmpfs tmpfs /run\n\
             ip link set lo up 2>/dev/null\n\
             finish() { echo; echo \"",
        );
        s.push_str(end);
        s.push_str(" rc=$1\"; sync; ");
        s.push_str(self.kernel.power_off_command());
        s.push_str(
            "; sleep 60; }\n\
             for m in $(cat /etc/pvtest/modules); do\n\
             \x20 insmod /lib/modules/pvtest/$m.ko || { echo \"pvtest: insmod $m failed\"; finish 120; }\n\
             done\n\
             echo \"",
        );
        s.push_str(begin);
        s.push_str(
            "\"\n\
             cd /tmp\n\
             /bin/sh -e /scenario.sh\n\
             finish $?\n",
        );
        let _ = order;
        s
    }

    fn build_initramfs(
        &self,
        kernel: &Kernel,
        begin: &str,
        end: &str,
    ) -> Result<(Vec<u8>, Vec<String>), HarnessError> {
        let index = ModuleIndex::load(&kernel.modules_dir)?;
        let order = index.load_order(&self.modules)?;
        let mut fs = Initramfs::new();
        if !Path::new(BUSYBOX).exists() {
            return Err(HarnessError::Setup(format!(
                "{BUSYBOX} missing: install busybox-static (apt-get install busybox-static)"
            )));
        }
        fs.host_file("/bin/busybox", 0o755, Path::new(BUSYBOX))?;
        fs.symlink("/bin/sh", "busybox")?;
        for d in [
            "proc",
            "sys",
            "dev",
            "tmp",
            "run",
            "mnt",
            "root",
            "etc/pvtest",
        ] {
            fs.dir(d)?;
        }
        for m in &order {
            let src = index
                .path(m)
                .ok_or_else(|| HarnessError::Setup(format!("kernel module {m} not found")))?;
            fs.host_file(&format!("/lib/modules/pvtest/{m}.ko"), 0o644, src)?;
        }
        fs.file("/etc/pvtest/modules", 0o644, order.join("\n").as_bytes())?;
        for bin in &self.binaries {
            fs.host_file(
                &format!("/usr/bin/{bin}"),
                0o755,
                &guest_bins::path_of(bin)?,
            )?;
        }
        for (path, mode, data) in &self.files {
            fs.file(path, *mode, data)?;
        }
        fs.file("/scenario.sh", 0o755, self.script.as_bytes())?;
        fs.file(
            "/init",
            0o755,
            self.init_script(&order, begin, end).as_bytes(),
        )?;
        Ok((fs.finish()?, order))
    }

    /// Builds the initramfs and boots the guest.
    pub fn start(self) -> Result<Guest, HarnessError> {
        let kernel = self.kernel.resolve()?;
        let suffix = unique_suffix();
        let workdir = tempfile::Builder::new()
            .prefix(&format!("pvtest-{}-", sanitize(&self.name)))
            .tempdir()
            .map_err(|e| HarnessError::io("create guest work dir".into(), e))?;
        let (begin, end, image) = match &self.incoming {
            Some(i) => (
                i.begin_marker.clone(),
                i.end_marker.clone(),
                i.initramfs.clone(),
            ),
            None => {
                let begin = format!("PVTEST-{suffix}-BEGIN");
                let end = format!("PVTEST-{suffix}-END");
                let (image, _order) = self.build_initramfs(&kernel, &begin, &end)?;
                (begin, end, image)
            }
        };
        let initrd = workdir.path().join("initramfs.cpio");
        fs::write(&initrd, image)
            .map_err(|e| HarnessError::io(format!("write {}", initrd.display()), e))?;

        let log_dir = guest_bins::target_dir().join("pvtest-logs");
        fs::create_dir_all(&log_dir)
            .map_err(|e| HarnessError::io(format!("create {}", log_dir.display()), e))?;
        let log_path = log_dir.join(format!("{}-{suffix}.log", sanitize(&self.name)));

        let mut cmd = Command::new("qemu-system-x86_64");
        match self.accel {
            Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", self.kernel.tcg_cpu()]),
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        };
        let mem = format!("{}M", self.memory_mib);
        cmd.args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .args([
            "-serial",
            "stdio",
            "-m",
            &mem,
            "-smp",
            &self.cpus.to_string(),
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd);
        let mut append = vec![
            "console=ttyS0,115200",
            "panic=-1",
            "oops=panic",
            "loglevel=4",
            "rdinit=/init",
            // Under TCG on a loaded host the boot-time IO-APIC timer check
            // can miss its ticks and panic ("IO-APIC + timer doesn't
            // work"); the check proves nothing about the devices we test.
            "no_timer_check",
        ];
        append.extend(self.cmdline.iter().map(String::as_str));
        cmd.arg("-append").arg(append.join(" "));
        if self.shared_memory {
            cmd.args([
                "-object",
                &format!("memory-backend-memfd,id=pvmem,size={mem},share=on"),
                "-numa",
                "node,memdev=pvmem",
            ]);
        }
        let qmp_socket = if self.qmp {
            let p = workdir.path().join("qmp.sock");
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", p.display()));
            Some(p)
        } else {
            None
        };
        if let Some(i) = &self.incoming {
            cmd.arg("-incoming").arg(&i.uri);
        }
        cmd.args(&self.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let mut log = File::create(&log_path)
            .map_err(|e| HarnessError::io(format!("create {}", log_path.display()), e))?;
        let _ = writeln!(
            log,
            "# pvtest '{}': kernel {} ({})\n# {cmd:?}",
            self.name, kernel.release, kernel.package_version
        );
        let command_line: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let started = Instant::now();
        let mut qemu = ChildGuard::spawn("qemu-system-x86_64", &mut cmd).map_err(|e| match e {
            HarnessError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => HarnessError::Setup(
                "qemu-system-x86_64 missing: install qemu-system-x86 (apt-get install qemu-system-x86)".into(),
            ),
            other => other,
        })?;
        let (tx, rx) = mpsc::channel();
        let child = qemu
            .child_mut()
            .ok_or_else(|| HarnessError::Setup("QEMU vanished".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| HarnessError::Setup("no QEMU stdout".into()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| HarnessError::Setup("no QEMU stderr".into()))?;
        let echo = self.echo;
        let log = std::sync::Arc::new(std::sync::Mutex::new(log));
        for (stream, prefix) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(stderr), "[qemu stderr] "),
        ] {
            let tx = tx.clone();
            let log = log.clone();
            let name = self.name.clone();
            std::thread::Builder::new()
                .name(format!("console-{name}"))
                .spawn(move || {
                    let mut reader = BufReader::new(stream);
                    let mut buf = Vec::new();
                    // Bytes, not UTF-8 lines: a guest may print anything.
                    while reader
                        .read_until(b'\n', &mut buf)
                        .map(|n| n > 0)
                        .unwrap_or(false)
                    {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_owned();
                        let line = format!("{prefix}{line}");
                        if let Ok(mut f) = log.lock() {
                            let _ = writeln!(f, "{line}");
                        }
                        if echo {
                            eprintln!("[{name}] {line}");
                        }
                        if tx.send(line).is_err() {
                            break;
                        }
                        buf.clear();
                    }
                })
                .map_err(|e| HarnessError::io("spawn console reader".into(), e))?;
        }
        drop(tx);
        Ok(Guest {
            name: self.name,
            qemu,
            lines: rx,
            console: String::new(),
            log_path,
            begin_marker: begin,
            end_marker: end,
            started,
            deadline: started + self.timeout,
            timeout: self.timeout,
            boot_to_scenario: None,
            qmp_socket,
            initrd,
            command_line,
            _workdir: workdir,
        })
    }

    /// Boots the guest and waits for its outcome.
    pub fn run(self) -> Result<Outcome, HarnessError> {
        Ok(self.start()?.wait())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_marker_carries_the_exit_status() {
        assert_eq!(
            verdict_from("x\nPVTEST-1-END rc=0\n", "PVTEST-1-END"),
            Some(0)
        );
        assert_eq!(
            verdict_from("PVTEST-1-END rc=17\r\n", "PVTEST-1-END"),
            Some(17)
        );
        assert_eq!(verdict_from("PVTEST-1-END rc=\n", "PVTEST-1-END"), None);
        assert_eq!(verdict_from("PVTEST-2-END rc=0\n", "PVTEST-1-END"), None);
    }

    #[test]
    fn qemu_major_version_is_read() {
        let v = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n\
                 Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n";
        assert_eq!(qemu_major(v), Some(7));
        assert_eq!(
            qemu_major("QEMU emulator version 10.0.2 (Debian)"),
            Some(10)
        );
        assert_eq!(qemu_major("no version here"), None);
        assert_eq!(qemu_major(""), None);
    }
}
