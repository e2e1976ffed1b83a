//! A lint of Windows kernel driver images (`.sys`, PE32+): what the loader
//! and code integrity require, checked here because no Windows machine
//! loads our drivers in the test command.
//!
//! - x86-64 image, native subsystem (`IMAGE_SUBSYSTEM_NATIVE`);
//! - the optional header's checksum is set and correct (the kernel loader
//!   refuses a driver whose checksum is wrong);
//! - `FORCE_INTEGRITY` (`/INTEGRITYCHECK`: signature enforced), `NX_COMPAT`
//!   and `DYNAMIC_BASE`;
//! - no section both writable and executable;
//! - the entry point is the exported `DriverEntry`;
//! - every import comes from an allow-listed kernel module and names a
//!   function on that module's curated export list
//!   (`pv-windows/exports/<module>.txt`); none by ordinal; no delay-load
//!   imports (a kernel image cannot have them).
//!
//! [`lint`] returns every finding, so a test can assert that a given fault
//! is caught and named.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use object::pe::{
    ImageNtHeaders64, IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE,
    IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY, IMAGE_DLLCHARACTERISTICS_NX_COMPAT,
    IMAGE_FILE_MACHINE_AMD64, IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_WRITE, IMAGE_SUBSYSTEM_NATIVE,
};
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, Import, PeFile64};
use object::LittleEndian as LE;

/// Kernel modules a driver may import from (the keys of the export lists).
pub const ALLOWED_MODULES: [&str; 4] = ["ntoskrnl.exe", "hal.dll", "ndis.sys", "storport.sys"];

/// One thing wrong with an image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Finding {
    /// Not a PE32+ image the parser understands.
    Unparsable(String),
    /// Not an x86-64 image.
    Machine(u16),
    /// Not the native subsystem.
    Subsystem(u16),
    /// The header checksum is zero or not the image's.
    Checksum {
        /// In the header.
        header: u32,
        /// Computed over the file.
        computed: u32,
    },
    /// A required DLL characteristic is missing (its name).
    MissingCharacteristic(&'static str),
    /// A section is writable and executable.
    WritableExecutable(String),
    /// The entry point is not the exported `DriverEntry`.
    EntryPoint,
    /// An import from a module that is not allow-listed.
    Module(String),
    /// An import not on the module's export list.
    Function {
        /// Module.
        module: String,
        /// Function.
        name: String,
    },
    /// An import by ordinal.
    Ordinal {
        /// Module.
        module: String,
        /// Ordinal.
        ordinal: u16,
    },
    /// The image has delay-load imports.
    DelayLoad,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The curated export lists: module name → function names, read from
/// `dir/<module>.txt` (one name per line; `#` starts a comment).
pub fn read_export_lists(dir: &Path) -> std::io::Result<BTreeMap<String, BTreeSet<String>>> {
    let mut out = BTreeMap::new();
    for module in ALLOWED_MODULES {
        let text = std::fs::read_to_string(dir.join(format!("{module}.txt")))?;
        let names = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        out.insert(module.to_owned(), names);
    }
    Ok(out)
}

/// Byte offset of the optional header's `CheckSum` field.
pub fn checksum_offset(image: &[u8]) -> Option<usize> {
    let e_lfanew = u32::from_le_bytes(image.get(0x3c..0x40)?.try_into().ok()?) as usize;
    // "PE\0\0", the 20-byte file header, then CheckSum at 64 in the
    // optional header (PE32 and PE32+ alike).
    let off = e_lfanew.checked_add(4 + 20 + 64)?;
    (off + 4 <= image.len()).then_some(off)
}

/// The PE checksum (`CheckSumMappedFile`'s algorithm): the 16-bit
/// one's-complement-style sum of the file with the checksum field taken as
/// zero, folded, plus the file length.
pub fn pe_checksum(image: &[u8]) -> Option<u32> {
    let field = checksum_offset(image)?;
    let mut sum: u64 = 0;
    for (i, chunk) in image.chunks(2).enumerate() {
        let off = i * 2;
        if off >= field && off < field + 4 {
            continue;
        }
        let word = u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u64::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    Some((sum as u32).wrapping_add(image.len() as u32))
}

/// Write the correct checksum into `image` (for tests that change bytes
/// and want only their own fault reported).
pub fn fix_checksum(image: &mut [u8]) {
    if let (Some(off), Some(sum)) = (checksum_offset(image), pe_checksum(image)) {
        image[off..off + 4].copy_from_slice(&sum.to_le_bytes());
    }
}

/// Lint `image` against the export lists; empty means clean.
pub fn lint(image: &[u8], exports: &BTreeMap<String, BTreeSet<String>>) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Err(e) = lint_into(image, exports, &mut out) {
        out.push(Finding::Unparsable(e.to_string()));
    }
    out.sort();
    out
}

fn lint_into(
    image: &[u8],
    exports: &BTreeMap<String, BTreeSet<String>>,
    out: &mut Vec<Finding>,
) -> object::read::Result<()> {
    let file = PeFile64::parse(image)?;
    let nt = file.nt_headers();
    let machine = nt.file_header().machine.get(LE);
    if machine != IMAGE_FILE_MACHINE_AMD64 {
        out.push(Finding::Machine(machine));
    }
    let opt = nt.optional_header();
    if opt.subsystem() != IMAGE_SUBSYSTEM_NATIVE {
        out.push(Finding::Subsystem(opt.subsystem()));
    }
    let header = opt.check_sum();
    let computed = pe_checksum(image).unwrap_or(0);
    if header == 0 || header != computed {
        out.push(Finding::Checksum { header, computed });
    }
    let dll = opt.dll_characteristics();
    for (bit, name) in [
        (IMAGE_DLLCHARACTERISTICS_FORCE_INTEGRITY, "FORCE_INTEGRITY"),
        (IMAGE_DLLCHARACTERISTICS_NX_COMPAT, "NX_COMPAT"),
        (IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE, "DYNAMIC_BASE"),
    ] {
        if dll & bit == 0 {
            out.push(Finding::MissingCharacteristic(name));
        }
    }
    for s in file.section_table().iter() {
        let c = s.characteristics.get(LE);
        if c & IMAGE_SCN_MEM_WRITE != 0 && c & IMAGE_SCN_MEM_EXECUTE != 0 {
            out.push(Finding::WritableExecutable(
                String::from_utf8_lossy(s.raw_name()).into_owned(),
            ));
        }
    }
    let entry = opt.address_of_entry_point();
    let entry_ok = exported(&file, image, "DriverEntry") == Some(entry);
    if entry == 0 || !entry_ok {
        out.push(Finding::EntryPoint);
    }
    if let Some(dir) = file
        .data_directories()
        .delay_load_import_table(image, &file.section_table())?
    {
        if dir.descriptors()?.next()?.is_some() {
            out.push(Finding::DelayLoad);
        }
    }
    let Some(table) = file.import_table()? else {
        return Ok(());
    };
    let mut descs = table.descriptors()?;
    while let Some(d) = descs.next()? {
        let module = String::from_utf8_lossy(table.name(d.name.get(LE))?).to_ascii_lowercase();
        let Some(allowed) = exports.get(&module) else {
            out.push(Finding::Module(module));
            continue;
        };
        let first = match d.original_first_thunk.get(LE) {
            0 => d.first_thunk.get(LE),
            t => t,
        };
        let mut thunks = table.thunks(first)?;
        while let Some(t) = thunks.next::<ImageNtHeaders64>()? {
            match table.import::<ImageNtHeaders64>(t)? {
                Import::Name(_, name) => {
                    let name = String::from_utf8_lossy(name).into_owned();
                    if !allowed.contains(&name) {
                        out.push(Finding::Function {
                            module: module.clone(),
                            name,
                        });
                    }
                }
                Import::Ordinal(ordinal) => out.push(Finding::Ordinal {
                    module: module.clone(),
                    ordinal,
                }),
            }
        }
    }
    Ok(())
}

/// The RVA of the function `image` exports as `name`. Read by hand: lld
/// may place the export directory at an odd address, which `object`'s
/// aligned reader refuses.
fn exported(file: &PeFile64<'_>, image: &[u8], name: &str) -> Option<u32> {
    let sections = file.section_table();
    let at = |rva: u32| sections.pe_data_at(image, rva);
    let u32_at =
        |rva: u32| -> Option<u32> { Some(u32::from_le_bytes(at(rva)?.get(..4)?.try_into().ok()?)) };
    let dir = file
        .data_directories()
        .get(object::pe::IMAGE_DIRECTORY_ENTRY_EXPORT)?
        .virtual_address
        .get(LE);
    if dir == 0 {
        return None;
    }
    let names = u32_at(dir + 0x18)?;
    let functions = u32_at(dir + 0x1C)?;
    let name_rvas = u32_at(dir + 0x20)?;
    let ordinals = u32_at(dir + 0x24)?;
    for i in 0..names.min(65_536) {
        let n = at(u32_at(name_rvas + 4 * i)?)?;
        let n = &n[..n.iter().position(|&b| b == 0)?];
        if n == name.as_bytes() {
            let o = at(ordinals + 2 * i)?.get(..2)?;
            let o = u32::from(u16::from_le_bytes([o[0], o[1]]));
            return u32_at(functions + 4 * o);
        }
    }
    None
}

/// The imports of `image` as (module, function) pairs, for reports.
pub fn imports(image: &[u8]) -> object::read::Result<Vec<(String, String)>> {
    let file = PeFile64::parse(image)?;
    let mut v = Vec::new();
    let Some(table) = file.import_table()? else {
        return Ok(v);
    };
    let mut descs = table.descriptors()?;
    while let Some(d) = descs.next()? {
        let module = String::from_utf8_lossy(table.name(d.name.get(LE))?).into_owned();
        let mut thunks = table.thunks(d.original_first_thunk.get(LE))?;
        while let Some(t) = thunks.next::<ImageNtHeaders64>()? {
            if let Import::Name(_, n) = table.import::<ImageNtHeaders64>(t)? {
                v.push((module.clone(), String::from_utf8_lossy(n).into_owned()));
            }
        }
    }
    Ok(v)
}
