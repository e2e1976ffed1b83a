//! The host package, `pvdrivers-host` (issue 16): built with `cargo deb`
//! from host-backend's `[package.metadata.deb]`, checked as an archive,
//! then installed on a real Debian 12 system booted under QEMU with
//! systemd as PID 1 ([`pvtest::rootfs`]).
//!
//! On that system (`tests/fixtures/host_package/run.sh`): `dpkg -i` brings
//! the service to active (running) with its metrics answering; a disk
//! with a socket group and mode is served; `check-config` names the line
//! at fault; `systemctl kill -s KILL` is followed by systemd's restart
//! and the metrics answer again; the test-only wedge fault
//! (`PVBACKEND_FAULT_WEDGE_MS`, set in a drop-in) stops the watchdog
//! pings and systemd restarts the daemon; `systemctl reload` adds a disk
//! without restarting the daemon; `apt-get purge` leaves nothing
//! but the images under /var/lib/pvdrivers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Builds the .deb once per test process ([`pvtest::package::cargo_deb`]).
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| pvtest::package::cargo_deb("host-backend", false).expect("cargo deb"))
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    pvtest::package::query("dpkg-deb", args, deb).expect("dpkg-deb")
}

#[test]
fn the_deb_holds_the_daemon_unit_conffile_and_scripts() {
    let deb = deb();
    let contents = dpkg_deb(&["-c"], deb);
    for (path, mode) in [
        ("./usr/sbin/pvbackend", "-rwxr-xr-x"),
        ("./etc/pvdrivers/pvbackend.toml", "-rw-r--r--"),
        ("./usr/lib/systemd/system/pvbackend.service", "-rw-r--r--"),
        (
            "./usr/lib/systemd/system/pvbackend-guests.service",
            "-rw-r--r--",
        ),
        ("./usr/share/doc/pvdrivers-host/README.md", "-rw-r--r--"),
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "{path} ({mode}) missing:\n{contents}"
        );
    }
    let info = dpkg_deb(&["-I"], deb);
    assert!(info.contains("Package: pvdrivers-host"), "{info}");
    assert!(info.contains("Depends: libc6"), "{info}");
    let ctl = pvtest::package::deb_control(deb).expect("dpkg-deb -e");
    let read = |n: &str| std::fs::read_to_string(ctl.path().join(n)).unwrap_or_default();
    assert_eq!(read("conffiles").trim(), "/etc/pvdrivers/pvbackend.toml");
    let postinst = read("postinst");
    assert!(
        postinst.contains("/usr/sbin/pvbackend check-config /etc/pvdrivers/pvbackend.toml"),
        "postinst does not check the config:\n{postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-helper enable pvbackend.service"),
        "postinst does not enable the unit:\n{postinst}"
    );
    let postrm = read("postrm");
    assert!(postrm.contains("purge"), "{postrm}");
    assert!(
        !postrm
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("/var/lib")),
        "postrm touches user data:\n{postrm}"
    );
}

#[test]
fn the_packaged_unit_is_notify_watchdog_and_sandboxed() {
    let unit = std::fs::read_to_string(workspace().join("host-backend/systemd/pvbackend.service"))
        .expect("unit");
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "RuntimeDirectory=pvdrivers",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ExecStart=/usr/sbin/pvbackend --config /etc/pvdrivers/pvbackend.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
    assert!(unit.lines().any(|l| l.starts_with("ReadWritePaths=")));
    assert!(unit
        .lines()
        .any(|l| l.starts_with("CapabilityBoundingSet=CAP_")));
    if Path::new("/usr/bin/systemd-analyze").exists() {
        // Only the unit's own file: dependencies on units this machine
        // lacks are not errors of ours.
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(workspace().join("host-backend/systemd/pvbackend.service"))
            .output()
            .expect("systemd-analyze");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains("Unknown key") && !text.contains("Failed to parse"),
            "systemd-analyze verify:\n{text}"
        );
    }
}

#[test]
fn installed_on_debian_12_with_systemd() {
    let deb = std::fs::read(deb()).expect("read .deb");
    let fs = pvtest::rootfs::debian12().expect("Debian 12 root filesystem");
    let logs = workspace().join("target/pvtest-logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let console = logs.join("host_package-debian12.log");
    let script =
        std::fs::read(workspace().join("tests/fixtures/host_package/run.sh")).expect("scenario");
    let outcome = fs
        .run(
            &[("run.sh", &script), ("pvdrivers-host.deb", &deb)],
            Duration::from_secs(1500),
            &console,
        )
        .expect("boot");
    eprintln!(
        "debian 12 system: boot, install and scenario took {:.0} s",
        outcome.elapsed.as_secs_f64()
    );
    assert!(
        outcome.exit_code == Some(0) && outcome.output.contains("ALL-STEPS-PASSED"),
        "scenario failed (exit {:?}); console {}:\n{}",
        outcome.exit_code,
        outcome.console_log.display(),
        outcome.output
    );
    for step in [
        "STEP: installed: active (running), metrics answer",
        "STEP: restarted after SIGKILL",
        "STEP: watchdog restarted the wedged daemon",
        "STEP: reloaded: d1 added, d0 and the process untouched",
        "STEP: purged: nothing left but the images",
    ] {
        assert!(outcome.output.contains(step), "{step} not reached");
    }
}
