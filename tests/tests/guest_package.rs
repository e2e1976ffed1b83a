//! The guest package, `pvdrivers-guest` (issue 16): the runtimes, the
//! per-device template units, pv-install, the config, modules-load.d and
//! the hugepage reservation, built with `cargo deb` and `cargo
//! generate-rpm` from the installer crate's metadata and checked as
//! archives; then the .deb installed on a real Debian 12 system booted as
//! a guest ([`pvtest::rootfs`]) whose data disk is a vhost-user-blk device
//! served by pvbackend.
//!
//! Three boots of one system (a qcow2 overlay of the cached image;
//! scenarios in `tests/fixtures/guest_package/`):
//! 1. the kernel's virtio_blk serves the data disk (a filesystem is made
//!    on it); `dpkg -i`; pv-install refuses a non-root caller, the root
//!    disk and an unknown device, its dry run changes nothing;
//!    `pv-install enable blk ADDR`: pvblkd serves the disk as /dev/nbd0
//!    (Debian 12's 6.1 kernel has no ublk_drv), the data is intact;
//! 2. after the reboot pvblkd serves it from boot; a file is written
//!    through it; `pv-install disable` gives it back to virtio_blk;
//!    enabled again, `apt-get purge` hands it back and leaves nothing;
//! 3. after the next reboot virtio_blk owns it from boot, every file
//!    intact.
//!
//! The .rpm is only read (`rpm -qlp`, `rpm -qp --scripts`): installing it
//! needs a Fedora or Rocky guest, which this suite does not have.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use pvtest::package;
use pvtest::peers::PvBackend;
use pvtest::rootfs::Boot;

/// The runtimes the package ships from other crates than the installer's.
const BUILT: &[&str] = &[
    "pv-blk-linux",
    "pv-net-linux",
    "pv-balloon-linux",
    "installer",
];

fn workspace() -> PathBuf {
    pvtest::guest_bins::workspace_root()
}

fn built() {
    static BUILT_ONCE: OnceLock<()> = OnceLock::new();
    BUILT_ONCE.get_or_init(|| package::build_release(BUILT).expect("release build"));
}

fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        built();
        package::cargo_deb("installer", true).expect("cargo deb")
    })
}

/// What the package installs, with modes (both formats).
const FILES: &[(&str, &str)] = &[
    ("/usr/sbin/pvblkd", "-rwxr-xr-x"),
    ("/usr/sbin/pvnetd", "-rwxr-xr-x"),
    ("/usr/sbin/pvballoond", "-rwxr-xr-x"),
    ("/usr/sbin/pv-install", "-rwxr-xr-x"),
    ("/usr/bin/pvio", "-rwxr-xr-x"),
    ("/usr/lib/systemd/system/pvblkd@.service", "-rw-r--r--"),
    ("/usr/lib/systemd/system/pvnetd@.service", "-rw-r--r--"),
    ("/usr/lib/systemd/system/pvballoond@.service", "-rw-r--r--"),
    (
        "/usr/lib/systemd/system/pvdrivers-guest.service",
        "-rw-r--r--",
    ),
    ("/etc/pvdrivers/guest.toml", "-rw-r--r--"),
    ("/usr/lib/modules-load.d/pvdrivers-guest.conf", "-rw-r--r--"),
    ("/usr/lib/sysctl.d/60-pvdrivers-guest.conf", "-rw-r--r--"),
];

#[test]
fn the_deb_holds_runtimes_units_config_and_scripts() {
    let deb = deb();
    let contents = package::query("dpkg-deb", &["-c"], deb).expect("dpkg-deb -c");
    for (path, mode) in FILES {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(&format!(".{path}"))),
            "{path} ({mode}) missing:\n{contents}"
        );
    }
    let info = package::query("dpkg-deb", &["-I"], deb).expect("dpkg-deb -I");
    assert!(info.contains("Package: pvdrivers-guest"), "{info}");
    let ctl = package::deb_control(deb).expect("dpkg-deb -e");
    let read = |n: &str| std::fs::read_to_string(ctl.path().join(n)).unwrap_or_default();
    assert_eq!(read("conffiles").trim(), "/etc/pvdrivers/guest.toml");
    assert!(
        read("postinst").contains("deb-systemd-helper enable pvdrivers-guest.service"),
        "{}",
        read("postinst")
    );
    let prerm = read("prerm");
    assert!(
        prerm
            .lines()
            .any(|l| l.trim() == "/usr/sbin/pv-install release-all"),
        "prerm does not hand the devices back:\n{prerm}"
    );
    let modules = std::fs::read_to_string(workspace().join("installer/modules-load.conf"))
        .expect("modules-load.conf");
    for m in ["nbd", "uio_pci_generic", "tun"] {
        assert!(modules.lines().any(|l| l == m), "{m} not loaded at boot");
    }
    let unit = std::fs::read_to_string(workspace().join("pv-blk/linux/systemd/pvblkd@.service"))
        .expect("unit");
    assert!(unit
        .lines()
        .any(|l| l == "ExecStart=/usr/sbin/pvblkd --pci %I"));
}

#[test]
fn the_rpm_holds_the_same_files_and_scriptlets() {
    built();
    let rpm = package::cargo_generate_rpm("installer").expect("cargo generate-rpm");
    let list = package::query("rpm", &["-qlp"], &rpm).expect("rpm -qlp");
    for (path, _) in FILES {
        assert!(list.lines().any(|l| l == *path), "{path} missing:\n{list}");
    }
    // The config is %config(noreplace): upgrades keep local edits.
    let flags = package::query(
        "rpm",
        &["-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\\n]"],
        &rpm,
    )
    .expect("rpm --qf");
    let config: Vec<&str> = flags.lines().filter(|l| l.starts_with('c')).collect();
    assert_eq!(config, vec!["cn /etc/pvdrivers/guest.toml"], "{flags}");
    let scripts = package::query("rpm", &["-qp", "--scripts"], &rpm).expect("rpm --scripts");
    assert!(scripts.contains("postinstall scriptlet"), "{scripts}");
    assert!(
        scripts.contains("systemctl enable pvdrivers-guest.service"),
        "{scripts}"
    );
    let preun = scripts
        .split("preuninstall scriptlet")
        .nth(1)
        .unwrap_or_default();
    assert!(
        preun.contains("/usr/sbin/pv-install release-all"),
        "%preun does not hand the devices back:\n{scripts}"
    );
    let _ = std::fs::remove_file(&rpm);
}

#[test]
fn installed_in_a_debian_12_guest_enable_reboot_disable_purge() {
    let deb = std::fs::read(deb()).expect("read .deb");
    let fs = pvtest::rootfs::debian12().expect("Debian 12 root filesystem");
    let logs = workspace().join("target/pvtest-logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("data.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(256 << 20))
        .expect("data image");
    let overlay = dir.path().join("root.qcow2");
    fs.overlay(&overlay).expect("overlay");
    let socket = dir.path().join("data.sock");
    let boot = Boot {
        overlay: Some(overlay),
        shared_memory: true,
        qemu_args: vec![
            "-chardev".into(),
            format!("socket,id=vub,path={}", socket.display()),
            "-device".into(),
            // At slot 0x10: QEMU creates `-device`s before `-drive if=virtio`,
            // so without an address this disk would take the root disk's slot.
            "vhost-user-blk-pci,chardev=vub,num-queues=1,addr=0x10".into(),
        ],
    };
    let fixtures = workspace().join("tests/fixtures/guest_package");
    let read = |n: &str| std::fs::read(fixtures.join(n)).expect("fixture");
    let common = read("common.sh");
    let steps: [(&str, &[&str]); 3] = [
        (
            "boot1.sh",
            &[
                "STEP: kernel serves the data disk",
                "STEP: installed: modules loaded, hugepages reserved",
                "STEP: refused: non-root, the root disk, an unknown device; dry run changed nothing",
                "STEP: enabled: pvblkd@",
            ],
        ),
        (
            "boot2.sh",
            &[
                "STEP: after reboot: pvblkd@",
                "STEP: disabled: the kernel's virtio_blk serves the disk again, data intact",
                "STEP: purged: every device handed back, nothing left",
            ],
        ),
        ("boot3.sh", &["STEP: after purge and reboot: virtio_blk owns"]),
    ];
    let mut total = Duration::ZERO;
    for (script, expected) in steps {
        // A backend per boot: each boot is a new QEMU, a new frontend.
        let backend = PvBackend::start(
            &[format!(
                "path={},socket={},serial=pv-data",
                image.display(),
                socket.display()
            )],
            &[],
            &dir.path().join("backend.log"),
        )
        .expect("pvbackend");
        let run = read(script);
        let mut files: Vec<(&str, &[u8])> = vec![("run.sh", &run), ("common.sh", &common)];
        if script == "boot1.sh" {
            files.push(("pvdrivers-guest.deb", &deb));
        }
        let console = logs.join(format!("guest_package-{script}.log"));
        let outcome = fs
            .run_with(&boot, &files, Duration::from_secs(900), &console)
            .expect("boot");
        drop(backend);
        total += outcome.elapsed;
        eprintln!(
            "guest_package {script}: boot and scenario took {:.0} s",
            outcome.elapsed.as_secs_f64()
        );
        assert!(
            outcome.exit_code == Some(0),
            "{script} failed (exit {:?}); console {}:\n{}",
            outcome.exit_code,
            outcome.console_log.display(),
            outcome.output
        );
        for step in expected {
            assert!(
                outcome.output.contains(step),
                "{script}: {step:?} not reached:\n{}",
                outcome.output
            );
        }
    }
    eprintln!(
        "guest_package: three boots took {:.0} s",
        total.as_secs_f64()
    );
}
