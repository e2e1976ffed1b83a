//! The virtio-blk StorPort miniport (`pvblk.sys`, crate
//! `pv-blk-windows-driver`): it cross-builds, passes the PE lint with its
//! `storport.sys` imports on the curated list, runs under speakeasy against
//! a fake virtio-blk device with StorPort played by the harness
//! (`tests/windows/storport_harness.py`), and its driver package (signed
//! `.sys`, stamped `pvblk.inf`) passes the INF lint.
//!
//! Nothing here loads the driver on Windows: see docs/WINDOWS.md, "The
//! StorPort miniport (pvblk.sys)".

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use pvtest::inf_lint::{self, Inf};
use pvtest::pe_lint::{self, Finding};
use pvtest::windows;
use virtio_drivers::transport::DeviceType;

/// (package, image name).
const BLK: (&str, &str) = ("pv-blk-windows-driver", "pvblk.sys");
/// The StorPort module's export list name.
const STORPORT: &str = "storport.sys";

/// The curated export lists (`pe_lint::ALLOWED_MODULES`, storport.sys
/// among them): the modules a StorPort miniport may import from.
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
    let path = windows::build_driver(BLK.0, BLK.1)
        .unwrap_or_else(|e| panic!("{} does not build as a kernel image:\n{e}", BLK.0));
    let image = std::fs::read(&path).expect("read the .sys");
    (path, image)
}

#[test]
fn storport_miniport_cross_builds_and_passes_the_pe_lint() {
    let (_, image) = build();
    let ex = exports();
    let findings = pe_lint::lint(&image, &ex);
    assert!(findings.is_empty(), "pvblk.sys: {findings:?}");
    let imports = pe_lint::imports(&image).expect("imports");
    for f in [
        "StorPortInitialize",
        "StorPortNotification",
        "StorPortGetBusData",
        "StorPortGetDeviceBase",
    ] {
        assert!(
            imports.iter().any(|(m, n)| m == STORPORT && n == f),
            "pvblk.sys does not import {f} from storport.sys: {imports:?}"
        );
    }
    // The storport.sys list is what admits those imports: without it the
    // lint names the module.
    let mut without = ex.clone();
    without.remove(STORPORT);
    assert!(
        pe_lint::lint(&image, &without).contains(&Finding::Module(STORPORT.to_owned())),
        "the lint must refuse storport.sys imports without its list"
    );
    // And an import missing from the list is named.
    let mut short = ex;
    short
        .get_mut(STORPORT)
        .expect("storport list")
        .remove("StorPortGetBusData");
    assert_eq!(
        pe_lint::lint(&image, &short),
        vec![Finding::Function {
            module: STORPORT.to_owned(),
            name: "StorPortGetBusData".to_owned(),
        }]
    );
}

/// The lines the harness prints when each stage's checks all passed.
const STAGES: [&str; 9] = [
    "emulated: INQUIRY, VPD, READ CAPACITY, MODE SENSE, REPORT LUNS, TEST UNIT READY: OK",
    "emulated: READ/WRITE(10/16) read back, interrupt and polled completion: OK",
    "emulated: SYNCHRONIZE CACHE and UNMAP reach the device: OK",
    "emulated: bad CDBs get CHECK CONDITION with the right sense: OK",
    "emulated: HwResetBus resets the device before completing outstanding SRBs: OK",
    "emulated: a garbage used-ring entry resets the device, no crash: OK",
    "emulated: HwAdapterControl stop/restart: OK",
    "emulated: D0 -> D3 -> D0: outstanding I/O drained or retried, data read back: OK",
    "emulated: SRB_EX (CDB16/CDB32/CDB_VAR, PnP, power) decoded and completed: OK",
];

/// The miniport under speakeasy (`tests/windows/storport_harness.py`):
/// DriverEntry → StorPortInitialize (hooked, the HW_INITIALIZATION_DATA
/// captured), HwFindAdapter (config space from a hooked StorPortGetBusData,
/// BAR0 from StorPortGetDeviceBase), HwInitialize and its passive routine,
/// then HwStartIo/HwInterrupt for every SCSI command the class driver
/// sends, HwResetBus with a read outstanding, a garbage used-ring entry,
/// HwAdapterControl stop/restart, a D0 -> D3 -> D0 cycle with I/O
/// outstanding and a device cache the power cut empties (drained, flushed,
/// retried: nothing lost), and SRB_EX requests of every block kind
/// (and two malformed ones), against a fake virtio-blk device with
/// a byte-array disk. Every check the harness makes must pass (it exits 1
/// and prints FAIL lines otherwise) and every stage must report OK.
#[test]
fn storport_miniport_serves_scsi_under_emulation() {
    harness(&[], &STAGES);
}

/// The crash-dump instance (`storport_harness.py <sys> dump`):
/// DriverEntry(NULL, NULL), HwFindAdapter with `DumpMode` and a dump region
/// full of garbage, HwInitialize bringing the device up without a passive
/// routine, then polled-only I/O (write and read back, flush, the GET_ID
/// serial, a garbage used entry and the device reset it causes), with no
/// `ExAllocatePool2` or contiguous allocation once HwFindAdapter was
/// entered.
#[test]
fn storport_miniport_runs_in_crash_dump_mode_without_allocating() {
    harness(
        &["dump"],
        &["emulated: crash-dump mode: NULL DriverEntry, no allocation, polled I/O, reset: OK"],
    );
}

/// Run the harness on a fresh build with `args`; it must pass every check
/// and print every line of `stages`.
fn harness(args: &[&str], stages: &[&str]) {
    let (sys, _) = build();
    let python = windows::speakeasy_python().unwrap_or_else(|e| panic!("speakeasy venv: {e}"));
    let harness = windows::workspace_root().join("tests/windows/storport_harness.py");
    let out = std::process::Command::new(&python)
        .arg(&harness)
        .arg(&sys)
        .args(args)
        .output()
        .expect("run the harness");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stdout.contains("FAIL"),
        "emulated run failed:\n{stdout}\n{stderr}"
    );
    for stage in stages {
        assert!(
            stdout.contains(stage),
            "missing {stage:?}:\n{stdout}\n{stderr}"
        );
    }
}

/// Every hardware ID the miniport accepts: it matches no ID itself, it
/// builds virtio-drivers' `PciTransport` (which refuses a non-virtio
/// function) and refuses one the transport does not call a block device.
fn accepted_blk_ids() -> Vec<String> {
    windows::virtio_hardware_ids(DeviceType::Block)
}

#[test]
fn blk_hardware_ids_are_the_modern_and_transitional_block_device() {
    // virtio 1.2, 4.1.2: modern 0x1040 + device ID 2, transitional 0x1001.
    assert_eq!(
        accepted_blk_ids(),
        ["PCI\\VEN_1AF4&DEV_1001", "PCI\\VEN_1AF4&DEV_1042"]
    );
}

fn crate_version() -> String {
    windows::crate_version("pv-blk/windows/driver/Cargo.toml")
}

/// Builds `target/windows/package/pvblk/` (signed `.sys`, stamped INF) and
/// lints it: the INF passes with the driver's hardware IDs, is a
/// SCSIAdapter-class package installing a boot-start kernel service in the
/// SCSI miniport group from the driver store, carries the crate's version;
/// the folder holds exactly the INF and the `.sys`, which verifies under
/// the test certificate and still passes the PE lint.
#[test]
fn blk_package_is_built_and_its_inf_passes_the_lint() {
    let (sys, _) = build();
    let version =
        inf_lint::driver_version(&crate_version()).expect("the crate version fits a DriverVer");
    let inf_path = windows::workspace_root().join("pv-blk/windows/driver/pvblk.inf");
    let (pkg, cert) = windows::package(
        "pvblk",
        &sys,
        BLK.1,
        &inf_path,
        inf_lint::today_utc(),
        &version,
    )
    .unwrap_or_else(|e| panic!("package: {e}"));
    let text = std::fs::read_to_string(pkg.join("pvblk.inf")).expect("read the stamped INF");
    let inf = Inf::parse(&text).expect("parse the stamped INF");
    let findings = inf_lint::lint(&inf, &accepted_blk_ids(), &pkg);
    assert!(findings.is_empty(), "pvblk.inf: {findings:?}");
    let driver_ver = inf.value("Version", "DriverVer").expect("DriverVer");
    assert!(driver_ver.ends_with(&format!(",{version}")), "{driver_ver}");
    assert_eq!(
        inf.value("Version", "Class").as_deref(),
        Some("SCSIAdapter")
    );
    for (key, want) in [
        ("ServiceType", "1"),
        ("StartType", "0"),
        ("ErrorControl", "1"),
        ("ServiceBinary", "%13%\\pvblk.sys"),
        ("LoadOrderGroup", "SCSI miniport"),
    ] {
        assert_eq!(
            inf.value("PvBlk_Service", key).as_deref(),
            Some(want),
            "{key}"
        );
    }
    assert_eq!(windows::package_files(&pkg), ["pvblk.inf", "pvblk.sys"]);
    let signed = pkg.join("pvblk.sys");
    let report = windows::verify(&signed, &cert).unwrap_or_else(|e| panic!("verify: {e}"));
    assert!(report.contains("Signature verification: ok"), "{report}");
    let image = std::fs::read(&signed).expect("read the packaged .sys");
    let findings = pe_lint::lint(&image, &exports());
    assert!(findings.is_empty(), "packaged pvblk.sys: {findings:?}");
    // A wrong hardware ID is named by the lint (the INF is what is checked).
    let broken = Inf::parse(&text.replace("DEV_1042", "DEV_1043")).expect("parse");
    let f = inf_lint::lint(&broken, &accepted_blk_ids(), &pkg);
    assert!(
        f.iter().any(
            |x| matches!(x, inf_lint::Finding::MissingHardwareId(id) if id.ends_with("DEV_1042"))
        ),
        "{f:?}"
    );
}
