//! A real Debian 12 system for package tests: a root filesystem made once
//! with `mmdebstrap` from Debian's packages (systemd as PID 1, the Debian
//! cloud kernel and its initramfs inside), cached as an ext4 image under
//! the cache root ([`crate::cache`]), and booted under QEMU with a
//! scenario.
//!
//! The image boots from QEMU's first virtio disk (opened `snapshot=on`, so
//! the cached image never changes) with its own kernel and initramfs,
//! console on the serial port. At the end of boot `pvtest-run.service`
//! (files in `tests/src/rootfs/`) unpacks the scenario from the second
//! virtio disk, a tar stream holding `run.sh` and its files, runs it with
//! `sh -e`, prints its exit status between per-run nonce markers and
//! powers off. No network device unless the test adds one ([`Boot`]).
//! [`Boot::overlay`] keeps what a boot wrote for the next one (a reboot).
//!
//! Bump [`ROOTFS_VERSION`] when the package list or the files in
//! `tests/src/rootfs/` change: the cache is keyed by it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::ChildGuard;
use crate::HarnessError;

/// The cache key of the image (see the module docs).
pub const ROOTFS_VERSION: &str = "bookworm-v1";

/// Debian packages beyond `--variant=minbase`.
pub const PACKAGES: &str =
    "systemd-sysv,udev,dbus,linux-image-cloud-amd64,initramfs-tools,kmod,procps";

/// The cached system: its ext4 image and the kernel and initramfs to boot.
#[derive(Debug, Clone)]
pub struct Rootfs {
    pub image: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

fn run(what: &str, cmd: &mut Command) -> Result<(), HarnessError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::io(format!("{what} ({cmd:?})"), e))?;
    if !out.status.success() {
        return Err(HarnessError::Setup(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// The cached Debian 12 system, built on first use (needs root and
/// `mmdebstrap`, which `./dev.sh setup` installs; a few minutes).
pub fn debian12() -> Result<Rootfs, HarnessError> {
    let dir = crate::cache::root()?.join(format!("rootfs-{ROOTFS_VERSION}"));
    let _lock = crate::cache::DirLock::acquire(&dir)?;
    let fs = Rootfs {
        image: dir.join("rootfs.ext4"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    if fs.image.exists() && fs.kernel.exists() && fs.initrd.exists() {
        return Ok(fs);
    }
    let files = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rootfs");
    let tree = dir.join("tree.tmp");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)
            .map_err(|e| HarnessError::io(format!("remove {}", tree.display()), e))?;
    }
    run(
        "mmdebstrap (is it installed? ./dev.sh setup)",
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--mode=root", "--quiet"])
            .arg(format!("--include={PACKAGES}"))
            .arg(format!(
                "--customize-hook=sh {} \"$1\"",
                files.join("customize.sh").display()
            ))
            .arg("bookworm")
            .arg(&tree),
    )?;
    for (link, to) in [("vmlinuz", &fs.kernel), ("initrd.img", &fs.initrd)] {
        let from = tree.join(link);
        let tmp = to.with_extension("tmp");
        std::fs::copy(&from, &tmp)
            .map_err(|e| HarnessError::io(format!("copy {}", from.display()), e))?;
        std::fs::rename(&tmp, to)
            .map_err(|e| HarnessError::io(format!("rename {}", tmp.display()), e))?;
    }
    let tmp = dir.join("rootfs.ext4.tmp");
    let _ = std::fs::remove_file(&tmp);
    run(
        "mkfs.ext4 -d",
        Command::new("mkfs.ext4")
            .args(["-q", "-L", "pvroot", "-d"])
            .arg(&tree)
            .arg(&tmp)
            .arg("3G"),
    )?;
    std::fs::rename(&tmp, &fs.image)
        .map_err(|e| HarnessError::io(format!("rename {}", tmp.display()), e))?;
    let _ = std::fs::remove_dir_all(&tree);
    Ok(fs)
}

/// How to boot the system beyond the defaults of [`Rootfs::run`].
#[derive(Debug, Default, Clone)]
pub struct Boot {
    /// Boot from this qcow2 overlay of the cached image (made by
    /// [`Rootfs::overlay`]) instead of a throw-away snapshot: what one boot
    /// writes, the next boot of the same overlay sees (a reboot).
    pub overlay: Option<PathBuf>,
    /// Guest RAM from a shared memfd, as vhost-user devices need.
    pub shared_memory: bool,
    /// More QEMU arguments (devices). Give each PCI device an explicit
    /// `addr=` above 0x3: QEMU creates `-device`s before `-drive
    /// if=virtio` disks, so a device without one takes slot 2 and the root
    /// disk stops being /dev/vda.
    pub qemu_args: Vec<String>,
}

/// Guest RAM of the system, MiB.
const MEM_MIB: u32 = 1024;

/// What a boot with a scenario gave.
#[derive(Debug)]
pub struct SystemOutcome {
    /// The scenario's exit status, when it reported one.
    pub exit_code: Option<i32>,
    /// The scenario's output (between the markers), or the whole console
    /// when it never ended.
    pub output: String,
    pub console_log: PathBuf,
    pub elapsed: Duration,
}

impl Rootfs {
    /// Boots the system with `files` (name, contents; `run.sh` is the
    /// scenario) and waits up to `timeout` for the scenario's result and
    /// the power-off. The console is kept at `console_log`.
    pub fn run(
        &self,
        files: &[(&str, &[u8])],
        timeout: Duration,
        console_log: &Path,
    ) -> Result<SystemOutcome, HarnessError> {
        self.run_with(&Boot::default(), files, timeout, console_log)
    }

    /// Makes a qcow2 overlay of the cached image at `path`, for
    /// [`Boot::overlay`]: several boots of one system.
    pub fn overlay(&self, path: &Path) -> Result<(), HarnessError> {
        run(
            "qemu-img create (overlay)",
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&self.image)
                .arg(path),
        )
    }

    /// [`Rootfs::run`] booted as `boot` says.
    pub fn run_with(
        &self,
        boot: &Boot,
        files: &[(&str, &[u8])],
        timeout: Duration,
        console_log: &Path,
    ) -> Result<SystemOutcome, HarnessError> {
        let work = tempfile::tempdir().map_err(|e| HarnessError::io("tempdir".into(), e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let nonce = format!("{:x}-{nanos:x}", std::process::id());
        let content = work.path().join("scenario");
        std::fs::create_dir(&content).map_err(|e| HarnessError::io("mkdir".into(), e))?;
        std::fs::write(content.join("nonce"), &nonce)
            .map_err(|e| HarnessError::io("nonce".into(), e))?;
        for (name, data) in files {
            std::fs::write(content.join(name), data)
                .map_err(|e| HarnessError::io(format!("write {name}"), e))?;
        }
        let tar = work.path().join("scenario.tar");
        run(
            "tar",
            Command::new("tar")
                .arg("-cf")
                .arg(&tar)
                .arg("-C")
                .arg(&content)
                .arg("."),
        )?;
        let _ = std::fs::remove_file(console_log);
        let mut qemu = Command::new("qemu-system-x86_64");
        let mem = format!("{MEM_MIB}M");
        qemu.args(["-accel", "tcg", "-cpu", "max", "-m", &mem, "-smp", "2"])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            // No login prompt on the console: agetty's vhangup() on ttyS0
            // would hang up the scenario, whose output goes there.
            .args([
                "-append",
                "root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=1 \
                 systemd.mask=serial-getty@ttyS0.service",
            ])
            .arg("-drive")
            .arg(match &boot.overlay {
                Some(o) => format!("file={},format=qcow2,if=virtio", o.display()),
                None => format!(
                    "file={},format=raw,if=virtio,snapshot=on",
                    self.image.display()
                ),
            })
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                tar.display()
            ))
            .arg("-chardev")
            .arg(format!("file,id=con,path={}", console_log.display()))
            .args(["-serial", "chardev:con"]);
        if boot.shared_memory {
            qemu.args([
                "-object",
                &format!("memory-backend-memfd,id=pvmem,size={mem},share=on"),
                "-numa",
                "node,memdev=pvmem",
            ]);
        }
        qemu.args(&boot.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let start = Instant::now();
        let mut guard = ChildGuard::spawn("qemu (debian 12)", &mut qemu)?;
        let end_marker = format!("PVTEST-END-{nonce} rc=");
        let exited = guard.wait_timeout(timeout)?;
        let elapsed = start.elapsed();
        drop(guard);
        let console = std::fs::read_to_string(console_log).unwrap_or_default();
        let begin = format!("PVTEST-BEGIN-{nonce}");
        let exit_code = console.lines().find_map(|l| {
            l.find(&end_marker)
                .and_then(|i| l[i + end_marker.len()..].trim().parse::<i32>().ok())
        });
        let output = match (console.find(&begin), console.find(&end_marker)) {
            (Some(b), Some(e)) if b < e => console[b + begin.len()..e].to_owned(),
            _ => console.clone(),
        };
        if exited.is_none() && exit_code.is_none() {
            return Ok(SystemOutcome {
                exit_code: None,
                output: format!("(timed out after {timeout:?})\n{output}"),
                console_log: console_log.to_owned(),
                elapsed,
            });
        }
        Ok(SystemOutcome {
            exit_code,
            output,
            console_log: console_log.to_owned(),
            elapsed,
        })
    }
}
