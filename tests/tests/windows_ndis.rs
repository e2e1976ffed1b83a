//! The NDIS miniport (`pvnet.sys`, crate `pv-net-windows-driver`)
//! cross-builds, passes the PE lint with its `ndis.sys` imports on the
//! curated list, and test-signs.
//!
//! The build, lint and signing helpers are `pvtest::windows` and
//! `pvtest::pe_lint` (shared with the balloon's tests); this file adds the
//! network driver's own checks. Nothing here loads a driver: that needs
//! Windows (docs/WINDOWS.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use pvtest::inf_lint::{self, Inf};
use pvtest::pe_lint;
use pvtest::windows;
use virtio_drivers::transport::DeviceType;

const NET: (&str, &str) = ("pv-net-windows-driver", "pvnet.sys");

fn exports() -> BTreeMap<String, BTreeSet<String>> {
    pe_lint::read_export_lists(&windows::workspace_root().join("pv-windows/exports"))
        .expect("read pv-windows/exports/*.txt")
}

fn build() -> (PathBuf, Vec<u8>) {
    let missing = windows::missing_tools();
    assert!(
        missing.is_empty(),
        "missing {missing:?}: install rustc-web cargo-web rust-web-src lld-22 osslsigncode openssl (./dev.sh setup does)"
    );
    let path = match windows::build_driver(NET.0, NET.1) {
        Ok(p) => p,
        Err(e) => panic!("{} does not build as a kernel image:\n{e}", NET.0),
    };
    let image = std::fs::read(&path).expect("read the .sys");
    (path, image)
}

/// The miniport links, passes the lint, and imports the NDIS entry points
/// its handlers need from `ndis.sys` (not from a stub or another module).
#[test]
fn ndis_miniport_cross_builds_and_passes_the_pe_lint() {
    let (_, image) = build();
    let findings = pe_lint::lint(&image, &exports());
    assert!(findings.is_empty(), "pvnet.sys: {findings:?}");
    let imports = pe_lint::imports(&image).expect("imports");
    for f in [
        "NdisMRegisterMiniportDriver",
        "NdisMSetMiniportAttributes",
        "NdisMGetBusData",
        "NdisMMapIoSpace",
        "NdisMIndicateReceiveNetBufferLists",
        "NdisMSendNetBufferListsComplete",
        "NdisAllocateNetBufferAndNetBufferList",
        "NdisMRegisterInterruptEx",
        "NdisMDeregisterInterruptEx",
    ] {
        assert!(
            imports.iter().any(|(m, n)| m == "ndis.sys" && n == f),
            "pvnet.sys does not import {f} from ndis.sys: {imports:?}"
        );
    }
    assert!(
        imports
            .iter()
            .any(|(m, n)| m == "ntoskrnl.exe" && n == "ExAllocatePool2"),
        "pvnet.sys does not use the kernel allocator: {imports:?}"
    );
    // Receive and transmit complete from the interrupt's DPC: no polling
    // timer is linked in as well.
    assert!(
        !imports.iter().any(|(_, n)| n.contains("TimerObject")),
        "pvnet.sys still imports an NDIS timer: {imports:?}"
    );
}

/// An import missing from `ndis.sys.txt` is caught (the list is what the
/// lint trusts; a name dropped from it must fail the image): the receive
/// indication, and the interrupt registration pair.
#[test]
fn an_ndis_import_off_the_list_is_caught() {
    let (_, image) = build();
    for name in [
        "NdisMIndicateReceiveNetBufferLists",
        "NdisMRegisterInterruptEx",
        "NdisMDeregisterInterruptEx",
    ] {
        let mut lists = exports();
        let ndis = lists.get_mut("ndis.sys").expect("ndis.sys list");
        assert!(ndis.remove(name), "{name} is not on the list");
        let findings = pe_lint::lint(&image, &lists);
        assert!(
            findings.iter().any(|f| format!("{f:?}").contains(name)),
            "{name}: {findings:?}"
        );
    }
}

/// The image test-signs and verifies under a throw-away certificate.
#[test]
fn ndis_miniport_is_test_signed_and_the_signature_verifies() {
    let (sys, _) = build();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = windows::test_certificate(dir.path()).expect("certificate");
    let signed = dir.path().join("pvnet.sys");
    windows::sign(&sys, &signed, &cert, &key).expect("sign");
    let report = windows::verify(&signed, &cert).expect("verify");
    assert!(report.contains("Signature verification: ok"), "{report}");
    let image = std::fs::read(&signed).expect("read signed");
    let findings = pe_lint::lint(&image, &exports());
    assert!(findings.is_empty(), "signed pvnet.sys: {findings:?}");
}

/// `tests/windows/ndis_harness.py` runs `pvnet.sys` under speakeasy
/// against a fake virtio-net PCI function (MMIO BAR, virtqueues in
/// emulated memory): DriverEntry registers the miniport; InitializeEx
/// brings the device up and sets the attributes; OIDs are answered;
/// frames sent reach the device byte-exact and their NBLs complete;
/// frames the device injects raise its (line) interrupt and are indicated
/// from the DPC the ISR asks for, byte-exact, filtered by the packet
/// filter, and not before; the ISR claims nothing when the ISR status is
/// zero (another device on a shared line) or all-ones; link changes and offload changes are indicated; Pause pends while NBLs are lent and completes on their
/// return, sends while paused fail with NDIS_STATUS_PAUSED; a garbage
/// used-ring entry resets the device without a crash and receive works
/// after it; Halt resets the device, then deregisters the interrupt,
/// unmaps the BAR and frees the NBLs, MDLs and pool. Each step prints its own OK line.
#[test]
fn ndis_miniport_sends_receives_and_answers_oids_under_emulation() {
    let (sys, _) = build();
    let python = windows::speakeasy_python().unwrap_or_else(|e| panic!("speakeasy venv: {e}"));
    let harness = windows::workspace_root().join("tests/windows/ndis_harness.py");
    let out = std::process::Command::new(&python)
        .arg(&harness)
        .arg(&sys)
        .output()
        .expect("run the harness");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let steps = [
        "emulated: DriverEntry registers the miniport: OK",
        "emulated: InitializeEx brings the device up and registers the adapter: OK",
        "emulated: OIDs answered: OK",
        "emulated: SendNetBufferLists frames reach the device byte-exact: OK",
        "emulated: the ISR refuses interrupts that are not ours (shared line): OK",
        "emulated: injected frames arrive as indications, filtered: OK",
        "emulated: link changes indicated: OK",
        "emulated: Pause/Restart: OK",
        "emulated: a garbage used entry resets the device, no crash: OK",
        "emulated: Halt resets the device and frees everything: OK",
    ];
    let missing: Vec<&str> = steps
        .iter()
        .copied()
        .filter(|s| !stdout.contains(s))
        .collect();
    assert!(
        out.status.success() && missing.is_empty(),
        "emulated run failed (missing {missing:?}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every hardware ID the miniport accepts: it does not match IDs itself;
/// InitializeEx builds virtio-drivers' `PciTransport`, and the pv-net core
/// refuses a device the transport does not call a network device. So the
/// list is every device ID that transport's decoding calls "network".
fn accepted_net_ids() -> Vec<String> {
    windows::virtio_hardware_ids(DeviceType::Network)
}

#[test]
fn net_hardware_ids_are_the_modern_and_transitional_nic() {
    // Pinned to the virtio spec (4.1.2: 0x1040 + device ID 1, transitional
    // 0x1000) so a change in virtio-drivers' decoding is seen here.
    assert_eq!(
        accepted_net_ids(),
        ["PCI\\VEN_1AF4&DEV_1000", "PCI\\VEN_1AF4&DEV_1041"]
    );
}

/// The driver crate's version, as `cargo` reads it.
fn net_crate_version() -> String {
    windows::crate_version("pv-net/windows/driver/Cargo.toml")
}

/// Builds `target/windows/package/pvnet/` (the `.sys` signed under a
/// throw-away certificate kept outside the package, the INF stamped) and
/// lints it: the INF passes with the transport's hardware IDs, is a Net
/// class INF with the NDIS keywords, installs the service as a
/// demand-start kernel driver run from the driver store; the folder holds
/// exactly the INF and the `.sys`, which verifies and passes the PE lint.
/// (Not `pvtest::windows::package`: that shares one certificate folder
/// with the balloon's package test, and the two run in parallel.)
#[test]
fn net_package_is_built_and_its_inf_passes_the_lint() {
    let (sys, _) = build();
    let version =
        inf_lint::driver_version(&net_crate_version()).expect("the crate version fits a DriverVer");
    let pkg = windows::target_dir().join("package/pvnet");
    let _ = std::fs::remove_dir_all(&pkg);
    std::fs::create_dir_all(&pkg).expect("create the package folder");
    let keys = tempfile::tempdir().expect("tempdir");
    let (cert, key) = windows::test_certificate(keys.path()).expect("certificate");
    windows::sign(&sys, &pkg.join(NET.1), &cert, &key).expect("sign");
    let src = std::fs::read_to_string(windows::workspace_root().join("pv-net/windows/pvnet.inf"))
        .expect("read pvnet.inf");
    let text = inf_lint::stamp(&src, inf_lint::today_utc(), &version);
    std::fs::write(pkg.join("pvnet.inf"), &text).expect("write the stamped INF");

    let inf = Inf::parse(&text).expect("parse the stamped INF");
    let findings = inf_lint::lint(&inf, &accepted_net_ids(), &pkg);
    assert!(findings.is_empty(), "pvnet.inf: {findings:?}");
    let unstamped = Inf::parse(&src).expect("parse the source INF");
    assert!(
        !inf_lint::lint(&unstamped, &accepted_net_ids(), &pkg).is_empty(),
        "the unstamped INF must fail the lint"
    );
    assert_eq!(inf.value("Version", "Class").as_deref(), Some("Net"));
    for (key, want) in [
        ("ServiceType", "1"),
        ("StartType", "3"),
        ("ErrorControl", "1"),
        ("ServiceBinary", "%13%\\pvnet.sys"),
    ] {
        assert_eq!(
            inf.value("PvNet_Service", key).as_deref(),
            Some(want),
            "{key}"
        );
    }
    assert_eq!(
        inf.value("PvNet_Install.NT", "Characteristics").as_deref(),
        Some("0x4")
    );
    let reg = inf.section("PvNet_Reg").expect("PvNet_Reg");
    let reg_text = format!("{reg:?}");
    for kw in [
        "*IfType",
        "*MediaType",
        "*PhysicalMediaType",
        "UpperRange",
        "LowerRange",
    ] {
        assert!(reg_text.contains(kw), "PvNet_Reg lacks {kw}: {reg_text}");
    }

    let mut files: Vec<String> = std::fs::read_dir(&pkg)
        .expect("read the package folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["pvnet.inf", "pvnet.sys"]);
    let signed = pkg.join("pvnet.sys");
    let report = windows::verify(&signed, &cert).unwrap_or_else(|e| panic!("verify: {e}"));
    assert!(report.contains("Signature verification: ok"), "{report}");
    let image = std::fs::read(&signed).expect("read the packaged .sys");
    let findings = pe_lint::lint(&image, &exports());
    assert!(findings.is_empty(), "packaged pvnet.sys: {findings:?}");
}
