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
//! Nothing here loads a driver: that needs Windows (docs/WINDOWS.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use pvtest::pe_lint::{self, Finding};
use pvtest::windows;

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

/// The driver under speakeasy (`tests/windows/balloon_harness.py`):
/// DriverEntry, AddDevice, IRP_MN_START_DEVICE with resource lists and an
/// IRP_MN_READ_CONFIG answer, then its worker thread against a fake
/// virtio-balloon function (MMIO BAR, virtqueues in emulated memory): the
/// host asks for 300 pages, asks for stats, then shrinks to 100. The
/// harness checks the frame numbers the device received are pages the
/// driver allocated with MmAllocatePagesForMdlEx, that exactly the
/// deflated ones were freed, `actual`, and the kernel figures in the stats;
/// then IRP_MN_REMOVE_DEVICE must reset the device, free every page still
/// in the balloon, unmap the BAR and detach and delete the FDO.
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
    assert!(
        out.status.success()
            && stdout.contains("emulated: start, inflate 300, stats, deflate to 100: OK")
            && stdout.contains("emulated: remove gives every page back: OK"),
        "emulated run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
