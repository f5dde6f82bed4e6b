//! `Packages` indices: binary package paragraphs parsed into typed records,
//! gathered from several suites (for example `bookworm`, `bookworm-updates`
//! and `bookworm-security`) into one [`PackageIndex`] that answers "which
//! versions of this name exist, newest first" and "who provides this virtual
//! name".
//!
//! Owns the meaning of the `Packages` fields cairn uses. It neither fetches
//! nor verifies the file (that is [`crate::release`]'s job and the caller's)
//! and keeps every architecture it is given: filtering by architecture is the
//! resolver's option ([`crate::resolve::ResolveOptions`]).

use std::collections::HashMap;
use std::num::ParseIntError;

use crate::deb822::{self, Paragraph};
use crate::relation::{self, AltGroup, RelationError};
use crate::version::{Version, VersionError};

/// Index of a package in its [`PackageIndex`] (stable once added).
pub type PackageId = usize;

/// The `Priority` field. Ordered so that `Required` is the highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    #[default]
    Unknown,
    Extra,
    Optional,
    Standard,
    Important,
    Required,
}

impl Priority {
    /// Reads a `Priority` value; anything unrecognised is `Unknown`.
    pub fn parse(value: &str) -> Self {
        match value.trim() {
            "required" => Priority::Required,
            "important" => Priority::Important,
            "standard" => Priority::Standard,
            "optional" => Priority::Optional,
            "extra" => Priority::Extra,
            _ => Priority::Unknown,
        }
    }
}

/// One binary package paragraph of a `Packages` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryPackage {
    pub name: String,
    pub version: Version,
    pub architecture: String,
    /// `Essential: yes`.
    pub essential: bool,
    pub priority: Priority,
    pub section: Option<String>,
    /// The `Source` field as written (it may carry a version in parentheses).
    pub source: Option<String>,
    pub multi_arch: Option<String>,
    pub depends: Vec<AltGroup>,
    pub pre_depends: Vec<AltGroup>,
    pub recommends: Vec<AltGroup>,
    /// One relation per group (alternatives are not allowed here).
    pub conflicts: Vec<AltGroup>,
    /// One relation per group (alternatives are not allowed here).
    pub breaks: Vec<AltGroup>,
    pub provides: Vec<(String, Option<Version>)>,
    /// Path of the `.deb` relative to the mirror root.
    pub filename: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the `.deb`.
    pub sha256: String,
    /// `Installed-Size`, in KiB.
    pub installed_size: Option<u64>,
    /// Which index (suite) it came from, as given by the caller.
    pub origin: usize,
    /// Line of the paragraph's first field in its `Packages` file.
    pub line: usize,
}

impl BinaryPackage {
    /// `name version` (`name version [arch]` is left to callers that care).
    pub fn name_version(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

/// What is wrong with the value of one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error(transparent)]
    Relation(#[from] RelationError),
    #[error("{value:?} is not a number: {source}")]
    Number {
        value: String,
        #[source]
        source: ParseIntError,
    },
    #[error("{value:?} is not a SHA-256 (64 hexadecimal digits)")]
    Sha256 { value: String },
    #[error("{value:?} is not a valid {what}")]
    Invalid { value: String, what: &'static str },
}

/// Why a `Packages` file could not be added. Every variant names the file
/// (its label) and the line; paragraph errors also name the package and the
/// field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("{label}:{line}: {message}")]
    Syntax {
        label: String,
        line: usize,
        message: String,
    },
    #[error("{label}:{line}: {} has no {field} field", describe(.package))]
    MissingField {
        label: String,
        line: usize,
        /// The package name, when the paragraph has one.
        package: Option<String>,
        field: &'static str,
    },
    #[error("{label}:{line}: package {package:?}, field {field}: {source}")]
    BadField {
        label: String,
        line: usize,
        package: String,
        field: &'static str,
        #[source]
        source: Box<FieldError>,
    },
}

fn describe(package: &Option<String>) -> String {
    match package {
        Some(p) => format!("package {p:?}"),
        None => "paragraph".to_string(),
    }
}

/// Binary packages from one or more `Packages` files.
#[derive(Debug, Clone, Default)]
pub struct PackageIndex {
    packages: Vec<BinaryPackage>,
    /// Name -> ids, newest version first (ties: lower origin, then file order).
    by_name: HashMap<String, Vec<PackageId>>,
    /// Virtual (provided) name -> ids of the packages providing it, in the
    /// order they were added.
    providers: HashMap<String, Vec<PackageId>>,
}

impl PackageIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a whole `Packages` file and adds its packages, all tagged with
    /// `origin`. `label` (e.g. `bookworm/main/binary-amd64/Packages`) names
    /// the file in errors. Returns the number of packages added. On error
    /// nothing is added.
    pub fn add_packages_file(
        &mut self,
        text: &str,
        origin: usize,
        label: &str,
    ) -> Result<usize, IndexError> {
        let parsed = parse_packages(text, origin, label)?;
        let count = parsed.len();
        for pkg in parsed {
            self.insert(pkg);
        }
        self.sort_versions();
        Ok(count)
    }

    /// Adds one already-built package (for callers and tests that build
    /// packages by hand). Returns its id.
    pub fn add_package(&mut self, pkg: BinaryPackage) -> PackageId {
        let id = self.insert(pkg);
        self.sort_versions();
        id
    }

    fn insert(&mut self, pkg: BinaryPackage) -> PackageId {
        let id = self.packages.len();
        match self.by_name.get_mut(pkg.name.as_str()) {
            Some(ids) => ids.push(id),
            None => {
                self.by_name.insert(pkg.name.clone(), vec![id]);
            }
        }
        for (provided, _) in &pkg.provides {
            match self.providers.get_mut(provided.as_str()) {
                // A package listing the same name twice provides it once.
                Some(ids) if ids.last() == Some(&id) => {}
                Some(ids) => ids.push(id),
                None => {
                    self.providers.insert(provided.clone(), vec![id]);
                }
            }
        }
        self.packages.push(pkg);
        id
    }

    fn sort_versions(&mut self) {
        let packages = &self.packages;
        for ids in self.by_name.values_mut() {
            if ids.len() > 1 {
                ids.sort_by(|&a, &b| {
                    let (pa, pb) = (&packages[a], &packages[b]);
                    pb.version
                        .cmp(&pa.version)
                        .then(pa.origin.cmp(&pb.origin))
                        .then(a.cmp(&b))
                });
            }
        }
    }

    /// The package with this id. Panics if the id did not come from this index.
    pub fn get(&self, id: PackageId) -> &BinaryPackage {
        &self.packages[id]
    }

    /// Ids of every package called `name` (all architectures), newest first.
    pub fn versions(&self, name: &str) -> &[PackageId] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }

    /// Ids of every package whose `Provides` names `name`.
    pub fn providers(&self, name: &str) -> &[PackageId] {
        self.providers.get(name).map_or(&[], Vec::as_slice)
    }

    /// The first package called `name` at exactly `version` (any architecture,
    /// lowest origin first).
    pub fn find(&self, name: &str, version: &Version) -> Option<PackageId> {
        self.versions(name)
            .iter()
            .copied()
            .find(|&id| self.packages[id].version == *version)
    }

    /// Every real package name (unordered), e.g. for "did you mean" hints.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.by_name.keys().map(String::as_str)
    }

    /// Every name that some package provides (unordered).
    pub fn virtual_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.providers.keys().map(String::as_str)
    }

    /// Every package with its id, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = (PackageId, &BinaryPackage)> + '_ {
        self.packages.iter().enumerate()
    }

    /// Number of packages (all versions, all architectures).
    pub fn len(&self) -> usize {
        self.packages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }
}

/// Files larger than this are parsed by several threads (small in unit
/// tests, so that they exercise the parallel path cheaply).
const PARALLEL_THRESHOLD: usize = if cfg!(test) { 64 << 10 } else { 4 << 20 };

/// Parses every paragraph of a `Packages` file, in file order. Large files
/// are cut at paragraph boundaries and the parts parsed on several threads;
/// the result (and the error reported: the first in file order) is the same
/// as a sequential parse.
fn parse_packages(
    text: &str,
    origin: usize,
    label: &str,
) -> Result<Vec<BinaryPackage>, IndexError> {
    let threads = if text.len() < PARALLEL_THRESHOLD {
        1
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
    };
    if threads == 1 {
        return parse_part(text, origin, label).0;
    }
    // Cut points just after an empty line ("\n\n"), near equal sizes.
    let mut parts = Vec::with_capacity(threads);
    let mut start = 0;
    for i in 1..threads {
        let target = (text.len() * i / threads).max(start);
        let Some(found) = text[target..].find("\n\n") else {
            break;
        };
        let cut = target + found + 2;
        parts.push(&text[start..cut]);
        start = cut;
    }
    parts.push(&text[start..]);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .map(|part| scope.spawn(move || parse_part(part, origin, label)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("Packages parser thread panicked"))
            .collect()
    });
    let mut out = Vec::new();
    let mut offset = 0;
    for (result, lines) in results {
        let mut packages = result.map_err(|e| e.shifted(offset))?;
        for p in &mut packages {
            p.line += offset;
        }
        out.append(&mut packages);
        offset += lines;
    }
    Ok(out)
}

/// Parses one part of a file with line numbers counted from its start;
/// also returns how many lines the part has.
fn parse_part(
    text: &str,
    origin: usize,
    label: &str,
) -> (Result<Vec<BinaryPackage>, IndexError>, usize) {
    let lines = text.bytes().filter(|&b| b == b'\n').count();
    // One paragraph at a time: a full `Packages` file is tens of MB, and
    // holding every field of every paragraph at once costs ten times that.
    let mut parsed = Vec::new();
    for (first_line, chunk) in paragraph_chunks(text) {
        let syntax = |e: deb822::SyntaxError| IndexError::Syntax {
            label: label.to_string(),
            line: e.line + first_line - 1,
            message: e.message,
        };
        let paragraphs = match deb822::parse(chunk) {
            Ok(ps) => ps,
            Err(e) => return (Err(syntax(e)), lines),
        };
        for mut p in paragraphs {
            p.line += first_line - 1;
            for f in &mut p.fields {
                f.line += first_line - 1;
            }
            match parse_paragraph(&p, origin, label) {
                Ok(pkg) => parsed.push(pkg),
                Err(e) => return (Err(e), lines),
            }
        }
    }
    (Ok(parsed), lines)
}

impl IndexError {
    /// The same error `by` lines further down.
    fn shifted(mut self, by: usize) -> Self {
        match &mut self {
            IndexError::Syntax { line, .. }
            | IndexError::MissingField { line, .. }
            | IndexError::BadField { line, .. } => *line += by,
        }
        self
    }
}

/// Splits `text` at blank lines (the deb822 paragraph separator) into
/// chunks, each with the 1-based line number it starts on.
fn paragraph_chunks(text: &str) -> impl Iterator<Item = (usize, &str)> + '_ {
    let mut rest = text;
    let mut line = 1;
    std::iter::from_fn(move || {
        // Skip blank lines.
        loop {
            if rest.is_empty() {
                return None;
            }
            let end = rest.find('\n').map_or(rest.len(), |i| i + 1);
            if !rest[..end].trim().is_empty() {
                break;
            }
            rest = &rest[end..];
            line += 1;
        }
        let start_line = line;
        let mut len = 0;
        while len < rest.len() {
            let end = rest[len..].find('\n').map_or(rest.len(), |i| len + i + 1);
            if rest[len..end].trim().is_empty() {
                break;
            }
            len = end;
            line += 1;
        }
        let chunk = &rest[..len];
        rest = &rest[len..];
        Some((start_line, chunk))
    })
}

/// Parses one paragraph; errors carry the label, the line of the offending
/// field (or of the paragraph when a field is missing), package and field.
fn parse_paragraph(p: &Paragraph, origin: usize, label: &str) -> Result<BinaryPackage, IndexError> {
    let package = p.get("Package");
    let missing = |field: &'static str| IndexError::MissingField {
        label: label.to_string(),
        line: p.line,
        package: package.map(str::to_string),
        field,
    };
    let name = package.ok_or_else(|| missing("Package"))?;
    let bad = |field: &'static str, source: FieldError| IndexError::BadField {
        label: label.to_string(),
        line: p.field(field).map_or(p.line, |f| f.line),
        package: name.to_string(),
        field,
        source: Box::new(source),
    };
    if !relation::valid_package_name(name) {
        return Err(bad(
            "Package",
            FieldError::Invalid {
                value: name.to_string(),
                what: "package name",
            },
        ));
    }
    let required = |field: &'static str| p.get(field).ok_or_else(|| missing(field));
    let number = |field: &'static str, value: &str| {
        value.parse::<u64>().map_err(|source| {
            bad(
                field,
                FieldError::Number {
                    value: value.to_string(),
                    source,
                },
            )
        })
    };
    let relations = |field: &'static str, single: bool| -> Result<Vec<AltGroup>, IndexError> {
        match p.get(field) {
            None => Ok(Vec::new()),
            Some(v) if single => {
                relation::parse_single_relations(v).map_err(|e| bad(field, e.into()))
            }
            Some(v) => relation::parse_relations(v).map_err(|e| bad(field, e.into())),
        }
    };

    let version = required("Version")?
        .parse::<Version>()
        .map_err(|e| bad("Version", e.into()))?;
    let architecture = required("Architecture")?.to_string();
    let filename = required("Filename")?.to_string();
    let size = number("Size", required("Size")?)?;
    let sha256 = required("SHA256")?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(
            "SHA256",
            FieldError::Sha256 {
                value: sha256.to_string(),
            },
        ));
    }
    let installed_size = p
        .get("Installed-Size")
        .map(|v| number("Installed-Size", v))
        .transpose()?;
    let essential = match p.get("Essential") {
        None | Some("no") => false,
        Some("yes") => true,
        Some(other) => {
            return Err(bad(
                "Essential",
                FieldError::Invalid {
                    value: other.to_string(),
                    what: "Essential value (yes or no)",
                },
            ))
        }
    };
    let provides = match p.get("Provides") {
        None => Vec::new(),
        Some(v) => relation::parse_provides(v).map_err(|e| bad("Provides", e.into()))?,
    };
    Ok(BinaryPackage {
        name: name.to_string(),
        version,
        architecture,
        essential,
        priority: p.get("Priority").map_or(Priority::Unknown, Priority::parse),
        section: p.get("Section").map(str::to_string),
        source: p.get("Source").map(str::to_string),
        multi_arch: p.get("Multi-Arch").map(str::to_string),
        depends: relations("Depends", false)?,
        pre_depends: relations("Pre-Depends", false)?,
        recommends: relations("Recommends", false)?,
        conflicts: relations("Conflicts", true)?,
        breaks: relations("Breaks", true)?,
        provides,
        filename,
        size,
        sha256: sha256.to_ascii_lowercase(),
        installed_size,
        origin,
        line: p.line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn para(name: &str, version: &str, extra: &str) -> String {
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}Filename: pool/main/{name}_{version}.deb\nSize: 100\nSHA256: {SHA}\n\n"
        )
    }

    #[test]
    fn parses_all_fields() {
        let text = "Package: libfoo1\nSource: foo (1.2-1)\nVersion: 1.2-1+b1\nInstalled-Size: 42\nMaintainer: X <x@example.org>\nArchitecture: amd64\nMulti-Arch: same\nEssential: yes\nPriority: required\nSection: libs\nPre-Depends: libc6 (>= 2.34)\nDepends: libbar | libbaz (>= 2),\n libqux:any\nRecommends: foo-data\nConflicts: libfoo0 (<< 1.0)\nBreaks: oldfoo, other (<= 3)\nProvides: foo-abi (= 1), libfoo\nDescription: the foo library\nFilename: pool/main/f/foo/libfoo1_1.2-1+b1_amd64.deb\nSize: 1234\nSHA256: 0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef\n";
        let mut idx = PackageIndex::new();
        assert_eq!(idx.add_packages_file(text, 3, "test/Packages").unwrap(), 1);
        let p = idx.get(0);
        assert_eq!(p.name, "libfoo1");
        assert_eq!(p.version.to_string(), "1.2-1+b1");
        assert_eq!(p.architecture, "amd64");
        assert!(p.essential);
        assert_eq!(p.priority, Priority::Required);
        assert_eq!(p.section.as_deref(), Some("libs"));
        assert_eq!(p.source.as_deref(), Some("foo (1.2-1)"));
        assert_eq!(p.multi_arch.as_deref(), Some("same"));
        assert_eq!(p.pre_depends.len(), 1);
        assert_eq!(p.depends.len(), 2);
        assert_eq!(p.depends[0].len(), 2);
        assert_eq!(p.depends[1][0].name, "libqux");
        assert_eq!(p.recommends[0][0].name, "foo-data");
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.breaks.len(), 2);
        assert_eq!(p.provides.len(), 2);
        assert_eq!(p.provides[0].1, Some("1".parse().unwrap()));
        assert_eq!(p.filename, "pool/main/f/foo/libfoo1_1.2-1+b1_amd64.deb");
        assert_eq!(p.size, 1234);
        assert_eq!(p.sha256, SHA);
        assert_eq!(p.installed_size, Some(42));
        assert_eq!((p.origin, p.line), (3, 1));
        assert_eq!(idx.providers("foo-abi"), &[0]);
        assert_eq!(idx.providers("libfoo"), &[0]);
        assert!(idx.providers("libfoo1").is_empty());
    }

    #[test]
    fn versions_newest_first_across_origins() {
        let main = [para("a", "1.0-1", ""), para("b", "2.0", "")].concat();
        let security = [para("a", "1.0-1+deb12u1", "")].concat();
        let updates = [para("a", "1.0-1~bpo1", ""), para("a", "1.0-1", "")].concat();
        let mut idx = PackageIndex::new();
        idx.add_packages_file(&security, 1, "security").unwrap();
        idx.add_packages_file(&main, 0, "main").unwrap();
        idx.add_packages_file(&updates, 2, "updates").unwrap();
        assert_eq!(idx.len(), 5);
        let got: Vec<(String, usize)> = idx
            .versions("a")
            .iter()
            .map(|&id| (idx.get(id).version.to_string(), idx.get(id).origin))
            .collect();
        assert_eq!(
            got,
            vec![
                ("1.0-1+deb12u1".to_string(), 1),
                ("1.0-1".to_string(), 0),
                ("1.0-1".to_string(), 2),
                ("1.0-1~bpo1".to_string(), 2),
            ]
        );
        assert!(idx.versions("zz").is_empty());
        let mut names: Vec<&str> = idx.names().collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(idx.find("a", &"1.0-1".parse().unwrap()), Some(1));
    }

    #[test]
    fn missing_fields_name_label_line_package_and_field() {
        let text = format!(
            "{}Package: broken\nVersion: 1.0\nArchitecture: all\nFilename: pool/x.deb\nSHA256: {SHA}\n",
            para("ok", "1.0", "")
        );
        let mut idx = PackageIndex::new();
        let e = idx
            .add_packages_file(&text, 0, "bookworm/main/binary-amd64/Packages")
            .unwrap_err();
        assert_eq!(
            e,
            IndexError::MissingField {
                label: "bookworm/main/binary-amd64/Packages".into(),
                line: 8,
                package: Some("broken".into()),
                field: "Size",
            }
        );
        assert_eq!(
            e.to_string(),
            "bookworm/main/binary-amd64/Packages:8: package \"broken\" has no Size field"
        );
        // Nothing was added.
        assert!(idx.is_empty());

        let e = idx.add_packages_file("Version: 1.0\n", 0, "P").unwrap_err();
        assert_eq!(e.to_string(), "P:1: paragraph has no Package field");
        for field in ["Version", "Architecture", "Filename", "SHA256"] {
            let text = para("x", "1.0", "")
                .lines()
                .filter(|l| !l.starts_with(&format!("{field}:")))
                .collect::<Vec<_>>()
                .join("\n");
            match idx.add_packages_file(&text, 0, "P").unwrap_err() {
                IndexError::MissingField { field: f, .. } => assert_eq!(f, field),
                other => panic!("{field}: {other}"),
            }
        }
    }

    fn bad_field(e: &IndexError) -> (&'static str, usize, &FieldError) {
        match e {
            IndexError::BadField {
                field,
                line,
                source,
                ..
            } => (field, *line, source),
            other => panic!("not a field error: {other:?}"),
        }
    }

    #[test]
    fn bad_fields_name_the_field_line() {
        let mut idx = PackageIndex::new();
        let text = format!(
            "{}{}",
            para("good", "1.0", ""),
            para("bad", "1.0", "Depends: libc6 (>= 2.3\n")
        );
        let e = idx.add_packages_file(&text, 0, "P").unwrap_err();
        let (field, line, source) = bad_field(&e);
        assert_eq!((field, line), ("Depends", 11));
        assert!(
            matches!(source, FieldError::Relation(RelationError::Unclosed { .. })),
            "{e:?}"
        );
        assert!(matches!(&e, IndexError::BadField { package, .. } if package == "bad"));
        assert!(
            e.to_string()
                .starts_with("P:11: package \"bad\", field Depends: "),
            "{e}"
        );

        let e = idx
            .add_packages_file(&para("v", "1.0_beta", ""), 0, "P")
            .unwrap_err();
        let (field, line, source) = bad_field(&e);
        assert_eq!((field, line), ("Version", 2));
        assert!(matches!(source, FieldError::Version(_)), "{e:?}");

        let e = idx
            .add_packages_file(
                &para("s", "1", "").replace("Size: 100", "Size: many"),
                0,
                "P",
            )
            .unwrap_err();
        let (field, line, source) = bad_field(&e);
        assert_eq!((field, line), ("Size", 5));
        assert!(matches!(source, FieldError::Number { .. }), "{e:?}");

        let e = idx
            .add_packages_file(&para("h", "1", "").replace(SHA, "abc"), 0, "P")
            .unwrap_err();
        let (field, line, source) = bad_field(&e);
        assert_eq!((field, line), ("SHA256", 6));
        assert!(matches!(source, FieldError::Sha256 { .. }), "{e:?}");

        let e = idx
            .add_packages_file(&para("c", "1", "Conflicts: a | b\n"), 0, "P")
            .unwrap_err();
        assert!(
            matches!(
                e,
                IndexError::BadField {
                    field: "Conflicts",
                    ..
                }
            ),
            "{e:?}"
        );

        let e = idx
            .add_packages_file(&para("p", "1", "Provides: a (>= 1)\n"), 0, "P")
            .unwrap_err();
        assert!(
            matches!(
                e,
                IndexError::BadField {
                    field: "Provides",
                    ..
                }
            ),
            "{e:?}"
        );

        let e = idx
            .add_packages_file(&para("e", "1", "Essential: maybe\n"), 0, "P")
            .unwrap_err();
        assert!(
            matches!(
                e,
                IndexError::BadField {
                    field: "Essential",
                    ..
                }
            ),
            "{e:?}"
        );

        let e = idx.add_packages_file(" x\n", 0, "P").unwrap_err();
        assert!(matches!(e, IndexError::Syntax { line: 1, .. }), "{e:?}");
        // A continuation line makes the name invalid rather than a syntax error.
        let e = idx
            .add_packages_file("Package: x\n bad\n", 0, "P")
            .unwrap_err();
        assert!(
            matches!(
                e,
                IndexError::BadField {
                    field: "Package",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = idx
            .add_packages_file("Package: a\nno colon\n", 0, "P")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "P:2: expected `Field: value`, found \"no colon\""
        );
        assert!(idx.is_empty());
    }

    #[test]
    fn line_numbers_survive_blank_lines_and_comments() {
        // Paragraphs are parsed one at a time; lines must still count from
        // the top of the file.
        let text = format!(
            "# comment\n\n\n{}\n  \n\r\n{}",
            para("first", "1.0", ""),
            para("second", "2.0", "Depends: x (>>)\n")
        );
        let mut idx = PackageIndex::new();
        let e = idx.add_packages_file(&text, 0, "P").unwrap_err();
        // The reference: line numbers from parsing the whole text at once.
        let whole = deb822::parse(&text).unwrap();
        let depends_line = whole[1].field("Depends").unwrap().line;
        assert_eq!((whole[0].line, whole[1].line, depends_line), (4, 14, 17));
        let (field, line, _) = bad_field(&e);
        assert_eq!((field, line), ("Depends", 17));
        let ok = text.replace("x (>>)", "x (>> 1)");
        idx.add_packages_file(&ok, 0, "P").unwrap();
        assert_eq!(idx.get(idx.versions("second")[0]).line, 14);
        assert_eq!(idx.get(idx.versions("first")[0]).line, 4);
        let e = idx
            .add_packages_file(&format!("{ok}\n\nPackage: z\nnot a field\n"), 0, "P")
            .unwrap_err();
        assert_eq!(
            e,
            IndexError::Syntax {
                label: "P".into(),
                line: 25,
                message: "expected `Field: value`, found \"not a field\"".into(),
            }
        );
    }

    #[test]
    fn large_files_parse_in_parts_with_the_same_result() {
        // Above the threshold the file is cut into parts parsed on threads;
        // order, line numbers and the error reported must not change.
        let mut text = String::new();
        let mut n = 0;
        while text.len() <= PARALLEL_THRESHOLD + PARALLEL_THRESHOLD / 2 {
            text += &para(
                &format!("pkg{n}"),
                "1.0",
                "Description: filler filler filler\n",
            );
            n += 1;
        }
        let mut idx = PackageIndex::new();
        assert_eq!(idx.add_packages_file(&text, 0, "big").unwrap(), n);
        let whole = deb822::parse(&text).unwrap();
        for (id, p) in idx.iter() {
            assert_eq!(p.name, format!("pkg{id}"));
            assert_eq!(p.line, whole[id].line);
        }
        // Errors near the start and the end: the first one is reported.
        let late = n - 3;
        let broken = text
            .replace(
                &format!("Package: pkg{late}\nVersion: 1.0"),
                &format!("Package: pkg{late}\nVersion: x"),
            )
            .replace("Package: pkg5\nVersion: 1.0", "Package: pkg5\nVersion: y");
        let e = PackageIndex::new()
            .add_packages_file(&broken, 0, "big")
            .unwrap_err();
        let (field, line, _) = bad_field(&e);
        assert_eq!((field, line), ("Version", whole[5].line + 1));
        let broken = text.replace(
            &format!("Package: pkg{late}\nVersion: 1.0"),
            &format!("Package: pkg{late}\nVersion: x"),
        );
        let e = PackageIndex::new()
            .add_packages_file(&broken, 0, "big")
            .unwrap_err();
        let (field, line, _) = bad_field(&e);
        assert_eq!((field, line), ("Version", whole[late].line + 1));
        let broken = text.replace(
            &format!("Package: pkg{late}\n"),
            &format!("Package: pkg{late}\nbad line\n"),
        );
        let e = PackageIndex::new()
            .add_packages_file(&broken, 0, "big")
            .unwrap_err();
        assert!(
            matches!(e, IndexError::Syntax { line, .. } if line == whole[late].line + 1),
            "{e:?}"
        );
    }

    #[test]
    fn priority_orders_required_highest() {
        let mut ps = [
            Priority::parse("optional"),
            Priority::parse("required"),
            Priority::parse("bogus"),
            Priority::parse("important"),
            Priority::parse("extra"),
            Priority::parse("standard"),
        ];
        ps.sort_by(|a, b| b.cmp(a));
        assert_eq!(
            ps,
            [
                Priority::Required,
                Priority::Important,
                Priority::Standard,
                Priority::Optional,
                Priority::Extra,
                Priority::Unknown
            ]
        );
    }
}
