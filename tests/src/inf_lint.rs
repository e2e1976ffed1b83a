//! A lint for our driver INF files, and `DriverVer` stamping.
//!
//! `infverif` and `inf2cat` exist only on Windows; this checks here the
//! faults that stop a package from installing or make it install the wrong
//! thing: required sections and `[Version]` keys, `%strkey%` substitutions
//! that name no `[Strings]` entry, sections referenced but not defined,
//! hardware IDs other than the ones the driver accepts, a malformed
//! `DriverVer`, a service added twice, and files the package does not
//! carry. It reads the subset of the INF syntax our INFs use (sections,
//! `key = value, value` lines, bare lines, `;` comments, quoted strings,
//! `\` line continuation) and is not a replacement for `infverif`, which the
//! Windows CI runs (docs/WINDOWS.md).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// One line of a section: `key = f1, f2` or a bare `f1, f2`. Fields are as
/// written (quotes removed, `%strkey%` not yet substituted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the file.
    pub number: usize,
    pub key: Option<String>,
    pub fields: Vec<String>,
}

/// A section and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub lines: Vec<Line>,
}

/// A parsed INF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inf {
    pub sections: Vec<Section>,
}

/// Text the parser cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct ParseError {
    pub line: usize,
    pub what: &'static str,
}

/// What the lint found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A section defined twice (Windows merges them: a likely mistake).
    DuplicateSection(String),
    /// A section every driver INF needs is missing.
    MissingSection(String),
    /// A required key is missing from a section.
    MissingKey { section: String, key: String },
    /// A key has a value it must not have.
    BadValue {
        section: String,
        key: String,
        value: String,
        want: &'static str,
    },
    /// `%name%` used in `section` with no `[Strings]` entry.
    UndefinedString { section: String, name: String },
    /// `from` references a section that is not defined.
    UndefinedSection { from: String, name: String },
    /// `DriverVer` is not `mm/dd/yyyy,w.x.y.z` with a real date.
    DriverVer(String),
    /// A models line names a hardware ID the driver does not accept.
    UnexpectedHardwareId(String),
    /// A hardware ID the driver accepts is not in any models section.
    MissingHardwareId(String),
    /// One service name in more than one `AddService` directive.
    DuplicateService(String),
    /// A file copied or used as a service binary is not in
    /// `[SourceDisksFiles]`.
    FileNotInSourceDisks(String),
    /// A `[SourceDisksFiles]` entry names a disk `[SourceDisksNames]` does
    /// not define.
    UnknownDisk { file: String, disk: String },
    /// A `[SourceDisksFiles]` entry is not in the package folder.
    FileNotInPackage(String),
    /// A CopyFiles section with no `[DestinationDirs]` entry and no
    /// `DefaultDestDir`.
    NoDestination(String),
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// The class GUIDs of the setup classes our drivers use.
const CLASS_GUIDS: [(&str, &str); 3] = [
    ("System", "{4d36e97d-e325-11ce-bfc1-08002be10318}"),
    ("SCSIAdapter", "{4d36e97b-e325-11ce-bfc1-08002be10318}"),
    ("Net", "{4d36e972-e325-11ce-bfc1-08002be10318}"),
];

/// Split at the first `c` outside double quotes.
fn split_unquoted(s: &str, c: char) -> Option<(&str, &str)> {
    let mut quoted = false;
    for (i, ch) in s.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            ch if ch == c && !quoted => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// Split a value into comma-separated fields, unquoting quoted ones
/// (`""` inside quotes is one `"`).
fn fields(value: &str, line: usize) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = value.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_owned()),
            ch => cur.push(ch),
        }
    }
    if quoted {
        return Err(ParseError {
            line,
            what: "unterminated quoted string",
        });
    }
    out.push(cur.trim().to_owned());
    Ok(out)
}

impl Inf {
    /// Parse INF text.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut sections: Vec<Section> = Vec::new();
        let mut pending = String::new();
        let mut pending_start = 0;
        for (i, raw) in text.lines().enumerate() {
            let number = i + 1;
            let content = split_unquoted(raw, ';').map_or(raw, |(c, _)| c).trim_end();
            if pending.is_empty() {
                pending_start = number;
            }
            if let Some(head) = content.strip_suffix('\\') {
                pending.push_str(head);
                continue;
            }
            pending.push_str(content);
            let logical = std::mem::take(&mut pending);
            let logical = logical.trim();
            if logical.is_empty() {
                continue;
            }
            let line = pending_start;
            if let Some(rest) = logical.strip_prefix('[') {
                let name = rest.strip_suffix(']').ok_or(ParseError {
                    line,
                    what: "section header without ']'",
                })?;
                sections.push(Section {
                    name: name.trim().to_owned(),
                    lines: Vec::new(),
                });
                continue;
            }
            let section = sections.last_mut().ok_or(ParseError {
                line,
                what: "text before the first section",
            })?;
            let (key, value) = match split_unquoted(logical, '=') {
                Some((k, v)) => (Some(k.trim().to_owned()), v),
                None => (None, logical),
            };
            section.lines.push(Line {
                number: line,
                key,
                fields: fields(value, line)?,
            });
        }
        Ok(Self { sections })
    }

    /// The first section named `name` (case-insensitive, as Windows).
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// The fields of `key` in `section`, first occurrence.
    pub fn raw(&self, section: &str, key: &str) -> Option<&[String]> {
        self.section(section)?
            .lines
            .iter()
            .find(|l| {
                l.key
                    .as_deref()
                    .is_some_and(|k| k.eq_ignore_ascii_case(key))
            })
            .map(|l| &l.fields[..])
    }

    /// `[Strings]`, keys lower-cased.
    pub fn strings(&self) -> BTreeMap<String, String> {
        self.section("Strings")
            .map(|s| {
                s.lines
                    .iter()
                    .filter_map(|l| {
                        let k = l.key.as_ref()?.to_ascii_lowercase();
                        Some((k, l.fields.join(",")))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `s` with every `%strkey%` replaced from `[Strings]`; `%%` is `%`
    /// and a number (`%13%`, a DIRID) stays as written. Err names the
    /// first undefined key.
    pub fn expand(&self, s: &str) -> Result<String, String> {
        let strings = self.strings();
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find('%') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let Some(end) = after.find('%') else {
                return Err(after.to_owned());
            };
            let name = &after[..end];
            if name.is_empty() {
                out.push('%');
            } else if name.bytes().all(|b| b.is_ascii_digit()) {
                out.push('%');
                out.push_str(name);
                out.push('%');
            } else {
                match strings.get(&name.to_ascii_lowercase()) {
                    Some(v) => out.push_str(v),
                    None => return Err(name.to_owned()),
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The value of `key` in `section` as one string, substituted.
    pub fn value(&self, section: &str, key: &str) -> Option<String> {
        let raw = self.raw(section, key)?.join(",");
        self.expand(&raw).ok()
    }

    /// The install section a models line names, as Windows picks it for an
    /// x64 package: `name.NTamd64`, else `name.NT`, else `name`.
    fn install_section(&self, name: &str) -> Option<&Section> {
        [
            format!("{name}.NTamd64"),
            format!("{name}.NT"),
            name.to_owned(),
        ]
        .iter()
        .find_map(|n| self.section(n))
    }

    /// Every hardware and compatible ID of the models sections, as written
    /// (upper-cased).
    pub fn hardware_ids(&self) -> BTreeSet<String> {
        self.models()
            .flat_map(|(_, s)| s.lines.iter())
            .flat_map(|l| l.fields.iter().skip(1))
            .filter(|id| !id.is_empty())
            .map(|id| id.to_ascii_uppercase())
            .collect()
    }

    /// (manufacturer line, models section) pairs that exist.
    fn models(&self) -> impl Iterator<Item = (&Line, &Section)> + '_ {
        self.section("Manufacturer")
            .into_iter()
            .flat_map(|m| m.lines.iter())
            .flat_map(move |l| {
                model_names(l)
                    .into_iter()
                    .filter_map(move |n| Some((l, self.section(&n)?)))
            })
    }
}

/// The models section names a `[Manufacturer]` line refers to:
/// `name.decoration` for each decoration, or `name` when there is none.
fn model_names(l: &Line) -> Vec<String> {
    let Some(base) = l.fields.first() else {
        return Vec::new();
    };
    let decorations: Vec<_> = l.fields[1..].iter().filter(|d| !d.is_empty()).collect();
    if decorations.is_empty() {
        vec![base.clone()]
    } else {
        decorations.iter().map(|d| format!("{base}.{d}")).collect()
    }
}

/// Whether `s` is `mm/dd/yyyy,w.x.y.z` with a real calendar date and four
/// 16-bit version parts (what stampinf writes and Windows ranks by).
pub fn driver_ver_ok(s: &str) -> bool {
    let Some((date, version)) = s.split_once(',') else {
        return false;
    };
    let date: Vec<&str> = date.trim().split('/').collect();
    let [m, d, y] = date[..] else {
        return false;
    };
    if m.len() != 2 || d.len() != 2 || y.len() != 4 {
        return false;
    }
    let (Ok(m), Ok(d), Ok(y)) = (m.parse::<u32>(), d.parse::<u32>(), y.parse::<u32>()) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    let parts: Vec<&str> = version.trim().split('.').collect();
    (1980..=9999).contains(&y)
        && (1..=days).contains(&d)
        && parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
        })
}

/// Lint `inf` for a package that must match exactly `hardware_ids` (as
/// `PCI\VEN_xxxx&DEV_xxxx`, any case) and whose folder is `package` (every
/// `[SourceDisksFiles]` entry must be in it).
pub fn lint(inf: &Inf, hardware_ids: &[String], package: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    let missing_key = |section: &str, key: &str| Finding::MissingKey {
        section: section.into(),
        key: key.into(),
    };

    // Sections defined twice.
    let mut seen = BTreeSet::new();
    for s in &inf.sections {
        if !seen.insert(s.name.to_ascii_lowercase()) {
            out.push(Finding::DuplicateSection(s.name.clone()));
        }
    }
    for s in [
        "Version",
        "Manufacturer",
        "SourceDisksNames",
        "SourceDisksFiles",
        "DestinationDirs",
        "Strings",
    ] {
        if inf.section(s).is_none() {
            out.push(Finding::MissingSection(s.into()));
        }
    }

    // Every %strkey% outside [Strings] is defined.
    for s in inf
        .sections
        .iter()
        .filter(|s| !s.name.to_ascii_lowercase().starts_with("strings"))
    {
        for l in &s.lines {
            for f in l.key.iter().chain(&l.fields) {
                if let Err(name) = inf.expand(f) {
                    out.push(Finding::UndefinedString {
                        section: s.name.clone(),
                        name,
                    });
                }
            }
        }
    }

    // [Version].
    let bad = |key: &str, value: &str, want| Finding::BadValue {
        section: "Version".into(),
        key: key.into(),
        value: value.into(),
        want,
    };
    for key in [
        "Signature",
        "Class",
        "ClassGuid",
        "Provider",
        "CatalogFile",
        "DriverVer",
        "PnpLockdown",
    ] {
        let Some(v) = inf.value("Version", key) else {
            if inf.section("Version").is_some() {
                out.push(missing_key("Version", key));
            }
            continue;
        };
        match key {
            "Signature" if !v.eq_ignore_ascii_case("$WINDOWS NT$") => {
                out.push(bad(key, &v, "\"$WINDOWS NT$\""))
            }
            "Class" if !CLASS_GUIDS.iter().any(|(c, _)| c.eq_ignore_ascii_case(&v)) => {
                out.push(bad(key, &v, "a setup class our drivers use"))
            }
            "ClassGuid" => {
                let class = inf.value("Version", "Class").unwrap_or_default();
                let want = CLASS_GUIDS
                    .iter()
                    .find(|(c, _)| c.eq_ignore_ascii_case(&class))
                    .map(|(_, g)| *g);
                if want.is_some_and(|g| !g.eq_ignore_ascii_case(&v)) {
                    out.push(bad(key, &v, "the class's GUID"));
                }
            }
            "Provider" | "CatalogFile" if v.is_empty() => out.push(bad(key, &v, "a value")),
            "CatalogFile" if !v.to_ascii_lowercase().ends_with(".cat") => {
                out.push(bad(key, &v, "a .cat file name"))
            }
            "DriverVer" if !driver_ver_ok(&v) => out.push(Finding::DriverVer(v)),
            "PnpLockdown" if v != "1" => out.push(bad(key, &v, "1")),
            _ => {}
        }
    }

    // [SourceDisksNames] / [SourceDisksFiles] (undecorated or .amd64).
    let keys_of = |name: &str| -> BTreeSet<String> {
        [name.to_owned(), format!("{name}.amd64")]
            .iter()
            .filter_map(|n| inf.section(n))
            .flat_map(|s| s.lines.iter())
            .filter_map(|l| l.key.as_ref().map(|k| k.to_ascii_lowercase()))
            .collect()
    };
    let disks = keys_of("SourceDisksNames");
    let files = keys_of("SourceDisksFiles");
    for name in [
        "SourceDisksFiles".to_owned(),
        "SourceDisksFiles.amd64".into(),
    ] {
        for l in inf.section(&name).iter().flat_map(|s| s.lines.iter()) {
            let Some(file) = &l.key else { continue };
            let disk = l.fields.first().cloned().unwrap_or_default();
            if !disks.contains(&disk.to_ascii_lowercase()) {
                out.push(Finding::UnknownDisk {
                    file: file.clone(),
                    disk,
                });
            }
            if !package.join(file).is_file() {
                out.push(Finding::FileNotInPackage(file.clone()));
            }
        }
    }
    let dest = keys_of("DestinationDirs");

    // [Manufacturer] → models → install sections.
    let mut install = Vec::new();
    for l in inf
        .section("Manufacturer")
        .iter()
        .flat_map(|s| s.lines.iter())
    {
        if !l.fields[1..]
            .iter()
            .any(|d| d.to_ascii_lowercase().starts_with("ntamd64"))
        {
            out.push(Finding::BadValue {
                section: "Manufacturer".into(),
                key: l.key.clone().unwrap_or_default(),
                value: l.fields.join(","),
                want: "an NTamd64 decoration",
            });
        }
        for n in model_names(l) {
            match inf.section(&n) {
                None => out.push(Finding::UndefinedSection {
                    from: "Manufacturer".into(),
                    name: n,
                }),
                Some(models) => {
                    for m in &models.lines {
                        let Some(target) = m.fields.first() else {
                            continue;
                        };
                        match inf.install_section(target) {
                            Some(s) => install.push(s),
                            None => out.push(Finding::UndefinedSection {
                                from: models.name.clone(),
                                name: target.clone(),
                            }),
                        }
                    }
                }
            }
        }
    }

    // Hardware IDs: exactly the driver's.
    let want: BTreeSet<String> = hardware_ids
        .iter()
        .map(|s| s.to_ascii_uppercase())
        .collect();
    let have = inf.hardware_ids();
    out.extend(
        have.difference(&want)
            .map(|id| Finding::UnexpectedHardwareId(id.clone())),
    );
    out.extend(
        want.difference(&have)
            .map(|id| Finding::MissingHardwareId(id.clone())),
    );

    // Install sections: CopyFiles, AddReg, and their .Services.
    let mut services = BTreeMap::<String, usize>::new();
    let mut done = BTreeSet::new();
    for s in install {
        if !done.insert(s.name.to_ascii_lowercase()) {
            continue;
        }
        for l in &s.lines {
            let key = l.key.as_deref().unwrap_or_default().to_ascii_lowercase();
            for f in l.fields.iter().filter(|f| !f.is_empty()) {
                match key.as_str() {
                    "copyfiles" => {
                        if let Some(file) = f.strip_prefix('@') {
                            if !files.contains(&file.to_ascii_lowercase()) {
                                out.push(Finding::FileNotInSourceDisks(file.into()));
                            }
                            continue;
                        }
                        let Some(cf) = inf.section(f) else {
                            out.push(Finding::UndefinedSection {
                                from: s.name.clone(),
                                name: f.clone(),
                            });
                            continue;
                        };
                        if !dest.contains(&f.to_ascii_lowercase())
                            && !dest.contains("defaultdestdir")
                        {
                            out.push(Finding::NoDestination(f.clone()));
                        }
                        for file in cf.lines.iter().filter_map(|c| c.fields.first()) {
                            if !files.contains(&file.to_ascii_lowercase()) {
                                out.push(Finding::FileNotInSourceDisks(file.clone()));
                            }
                        }
                    }
                    "addreg" | "delreg" | "addproperty" | "delfiles" | "renfiles"
                        if inf.section(f).is_none() =>
                    {
                        out.push(Finding::UndefinedSection {
                            from: s.name.clone(),
                            name: f.clone(),
                        });
                    }
                    _ => {}
                }
            }
        }
        let svc_name = format!("{}.Services", s.name);
        let Some(svc) = inf.section(&svc_name) else {
            out.push(Finding::MissingSection(svc_name));
            continue;
        };
        for l in svc.lines.iter().filter(|l| {
            l.key
                .as_deref()
                .is_some_and(|k| k.eq_ignore_ascii_case("AddService"))
        }) {
            let name = l.fields.first().cloned().unwrap_or_default();
            *services.entry(name.to_ascii_lowercase()).or_default() += 1;
            let Some(target) = l.fields.get(2).filter(|t| !t.is_empty()) else {
                out.push(missing_key(&svc.name, "AddService service-install-section"));
                continue;
            };
            let Some(t) = inf.section(target) else {
                out.push(Finding::UndefinedSection {
                    from: svc.name.clone(),
                    name: target.clone(),
                });
                continue;
            };
            lint_service(inf, &t.name, &files, &mut out);
        }
    }
    out.extend(
        services
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(name, _)| Finding::DuplicateService(name)),
    );
    out
}

/// A service-install section: a kernel driver with a start type, an error
/// control and a binary from the package.
fn lint_service(inf: &Inf, section: &str, files: &BTreeSet<String>, out: &mut Vec<Finding>) {
    let bad = |key: &str, value: String, want| Finding::BadValue {
        section: section.into(),
        key: key.into(),
        value,
        want,
    };
    let number = |v: &str| {
        v.strip_prefix("0x")
            .or_else(|| v.strip_prefix("0X"))
            .map_or_else(
                || v.parse::<u32>().ok(),
                |h| u32::from_str_radix(h, 16).ok(),
            )
    };
    for (key, allowed, want) in [
        ("ServiceType", 1..=1, "1 (SERVICE_KERNEL_DRIVER)"),
        ("StartType", 0..=4, "0..=4"),
        ("ErrorControl", 0..=3, "0..=3"),
    ] {
        match inf.value(section, key) {
            None => out.push(Finding::MissingKey {
                section: section.into(),
                key: key.into(),
            }),
            Some(v) if !number(&v).is_some_and(|n| allowed.contains(&n)) => {
                out.push(bad(key, v, want))
            }
            Some(_) => {}
        }
    }
    match inf.value(section, "ServiceBinary") {
        None => out.push(Finding::MissingKey {
            section: section.into(),
            key: "ServiceBinary".into(),
        }),
        Some(v) => {
            let file = ["%13%\\", "%12%\\"]
                .iter()
                .find_map(|p| v.strip_prefix(p).map(str::to_owned));
            match file {
                None => out.push(bad(
                    "ServiceBinary",
                    v,
                    "%13%\\<file> (driver store) or %12%\\<file>",
                )),
                Some(f) if !files.contains(&f.to_ascii_lowercase()) => {
                    out.push(Finding::FileNotInSourceDisks(f))
                }
                Some(_) => {}
            }
        }
    }
}

/// `text` with `[Version]`'s `DriverVer` set to `mm/dd/yyyy,version` (what
/// `stampinf -d <date> -v <version>` does; a line is added when there is
/// none). `date` is (year, month, day).
pub fn stamp(text: &str, (y, m, d): (u32, u32, u32), version: &str) -> String {
    let stamped = format!("DriverVer   = {m:02}/{d:02}/{y:04},{version}");
    let mut out = Vec::new();
    let mut in_version = false;
    let mut done = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            if in_version && !done {
                out.push(stamped.clone());
                done = true;
            }
            in_version = t.to_ascii_lowercase().starts_with("[version]");
        } else if in_version
            && !done
            && split_unquoted(t, '=')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("DriverVer"))
        {
            out.push(stamped.clone());
            done = true;
            continue;
        }
        out.push(line.to_owned());
    }
    if in_version && !done {
        out.push(stamped);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// `major.minor.patch` of a crate version as a four-part driver version
/// (`major.minor.patch.0`); None if a part is not a 16-bit number.
pub fn driver_version(crate_version: &str) -> Option<String> {
    let core = crate_version.split(['-', '+']).next()?;
    let parts: Vec<u16> = core
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [a, b, c] = parts[..] else { return None };
    Some(format!("{a}.{b}.{c}.0"))
}

/// Today's UTC date as (year, month, day), as stampinf's `-d *` would use
/// (local date there). The civil-from-days conversion is Howard Hinnant's
/// (public domain): one function does not warrant a date crate.
pub fn today_utc() -> (u32, u32, u32) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0))
}

fn civil_from_days(days: i64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        u32::try_from(y).unwrap_or(0),
        u32::try_from(m).unwrap_or(0),
        u32::try_from(d).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_comments_quotes_and_continuations() {
        let inf = Inf::parse(
            "; head\n[Version]\nSignature = \"$WINDOWS NT$\" ; c\n\n[A]\nk = \"x;y\", \"a \"\"q\"\"\", b\\\n , c\nbare.sys\n",
        )
        .expect("parse");
        assert_eq!(inf.sections.len(), 2);
        assert_eq!(
            inf.value("version", "signature").as_deref(),
            Some("$WINDOWS NT$")
        );
        let a = inf.section("a").expect("[A]");
        assert_eq!(a.lines[0].fields, ["x;y", "a \"q\"", "b", "c"]);
        assert_eq!(a.lines[1].key, None);
        assert_eq!(a.lines[1].fields, ["bare.sys"]);
        assert_eq!(
            Inf::parse("x = 1\n"),
            Err(ParseError {
                line: 1,
                what: "text before the first section"
            })
        );
        assert!(Inf::parse("[A]\nk = \"open\n").is_err());
        assert!(Inf::parse("[A\n").is_err());
    }

    #[test]
    fn expands_strings_and_keeps_dirids() {
        let inf = Inf::parse("[Strings]\nName = \"pv\"\n").expect("parse");
        assert_eq!(
            inf.expand("%NAME% 100%% %13%\\a.sys"),
            Ok("pv 100% %13%\\a.sys".into())
        );
        assert_eq!(inf.expand("%Other%"), Err("Other".into()));
        assert_eq!(inf.expand("%open"), Err("open".into()));
    }

    #[test]
    fn driver_ver_and_stamping() {
        assert!(driver_ver_ok("12/07/2026,0.1.0.0"));
        assert!(driver_ver_ok("02/29/2024, 1.2.3.65535"));
        for bad in [
            "",
            "12/07/2026",
            "2026/12/07,1.0.0.0",
            "13/01/2026,1.0.0.0",
            "02/29/2025,1.0.0.0",
            "12/7/2026,1.0.0.0",
            "12/07/2026,1.0.0",
            "12/07/2026,1.0.0.65536",
            "12/07/2026,1.0.-1.0",
        ] {
            assert!(!driver_ver_ok(bad), "{bad}");
        }
        let text = "[Version]\nSignature = \"$WINDOWS NT$\"\nDriverVer =\n[Strings]\n";
        let s = stamp(text, (2026, 12, 7), "0.1.0.0");
        let inf = Inf::parse(&s).expect("parse");
        assert_eq!(
            inf.value("Version", "DriverVer").as_deref(),
            Some("12/07/2026,0.1.0.0")
        );
        // Added when absent, and only once.
        let s = stamp("[Version]\n[Strings]\n", (2026, 1, 2), "1.2.3.0");
        assert_eq!(s.matches("DriverVer").count(), 1);
        assert!(s.contains("DriverVer   = 01/02/2026,1.2.3.0"));
        assert_eq!(driver_version("0.1.0").as_deref(), Some("0.1.0.0"));
        assert_eq!(driver_version("2.3.4-rc.1").as_deref(), Some("2.3.4.0"));
        assert_eq!(driver_version("1.70000.0"), None);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_429), (2025, 12, 7));
    }
}
