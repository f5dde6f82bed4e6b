//! apt source lists: the one-line `sources.list` format, deb822 `*.sources`
//! files, reading a system's configured lists the way apt does, and picking
//! the mirror (plus `-updates` and `-security`) to build a suite from.
//!
//! This module owns only what the lists say. It does not fetch anything,
//! does not read `Signed-By` key files (cairn trusts `images/keys/`, see
//! `release`) and knows nothing about what a suite contains.

use std::fs;
use std::path::{Path, PathBuf};

use crate::deb822;

/// One source: a deb822 stanza, or one line of a one-line list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// `deb` and/or `deb-src`.
    pub types: Vec<String>,
    /// Archive base URIs as written (e.g. `http://mirror.example/debian`).
    pub uris: Vec<String>,
    /// Suites or codenames (`bookworm`, `bookworm-updates`, ...); a suite
    /// ending in `/` is an exact path (flat repository).
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// `Architectures:` / `[arch=...]`; empty means apt's default.
    pub architectures: Vec<String>,
    /// False for a deb822 stanza with `Enabled: no`.
    pub enabled: bool,
    /// `Signed-By:` / `[signed-by=...]` as written: key file paths or
    /// fingerprints, or an embedded armored key block.
    pub signed_by: Option<String>,
    /// The file the entry came from, as given to the parser.
    pub file: String,
    /// 1-based line where the entry starts.
    pub line: usize,
}

/// Errors name the file, the line and (when there is one) the field.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    /// Not valid list syntax (deb822 syntax, a malformed one-line entry).
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    /// A required deb822 field is absent from an enabled stanza.
    #[error("{file}:{line}: missing field {field}")]
    MissingField {
        file: String,
        line: usize,
        field: String,
    },
    /// A field (or one-line option) has a value apt would reject.
    #[error("{file}:{line}: field {field}: {message}")]
    InvalidField {
        file: String,
        line: usize,
        field: String,
        message: String,
    },
    /// A list file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const KNOWN_TYPES: [&str; 2] = ["deb", "deb-src"];

fn is_flat(suite: &str) -> bool {
    suite.ends_with('/')
}

/// apt's boolean words (`StringToBool`).
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "with" | "on" | "enable" | "1" => Some(true),
        "no" | "false" | "without" | "off" | "disable" | "0" => Some(false),
        _ => None,
    }
}

/// Parse a deb822 `*.sources` file. Unknown fields are ignored, as apt does;
/// a stanza with `Enabled: no` is returned with `enabled: false` and is not
/// checked further (apt skips it before looking at other fields).
pub fn parse_deb822_sources(file: &str, text: &str) -> Result<Vec<SourceEntry>, SourcesError> {
    let paragraphs = deb822::parse(text).map_err(|e| SourcesError::Syntax {
        file: file.to_string(),
        line: e.line,
        message: e.message,
    })?;
    let mut out = Vec::new();
    for p in &paragraphs {
        let invalid = |field: &str, message: String| SourcesError::InvalidField {
            file: file.to_string(),
            line: p.field(field).map_or(p.line, |f| f.line),
            field: field.to_string(),
            message,
        };
        let words = |field: &str| -> Vec<String> {
            p.get(field)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let enabled = match p.get("Enabled") {
            None => true,
            Some(v) => parse_bool(v.trim())
                .ok_or_else(|| invalid("Enabled", format!("expected yes or no, found {v:?}")))?,
        };
        let entry = SourceEntry {
            types: words("Types"),
            uris: words("URIs"),
            suites: words("Suites"),
            components: words("Components"),
            architectures: words("Architectures"),
            enabled,
            signed_by: p
                .get("Signed-By")
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty()),
            file: file.to_string(),
            line: p.line,
        };
        if enabled {
            for (field, values) in [
                ("Types", &entry.types),
                ("URIs", &entry.uris),
                ("Suites", &entry.suites),
            ] {
                if values.is_empty() {
                    return Err(SourcesError::MissingField {
                        file: file.to_string(),
                        line: p.line,
                        field: field.to_string(),
                    });
                }
            }
            if let Some(t) = entry
                .types
                .iter()
                .find(|t| !KNOWN_TYPES.contains(&t.as_str()))
            {
                return Err(invalid(
                    "Types",
                    format!("type {t:?} is not known (expected deb or deb-src)"),
                ));
            }
            let flat = entry.suites.iter().filter(|s| is_flat(s)).count();
            if flat == 0 && entry.components.is_empty() {
                return Err(SourcesError::MissingField {
                    file: file.to_string(),
                    line: p.line,
                    field: "Components".into(),
                });
            }
            if flat > 0 && flat < entry.suites.len() {
                return Err(invalid(
                    "Suites",
                    "exact paths (ending in `/`) and suite names cannot be mixed".into(),
                ));
            }
            if flat > 0 && !entry.components.is_empty() {
                return Err(invalid(
                    "Components",
                    "must be absent when Suites is an exact path (ending in `/`)".into(),
                ));
            }
        }
        out.push(entry);
    }
    Ok(out)
}

/// Parse a one-line list (`sources.list`, `*.list`):
/// `deb [arch=amd64 signed-by=/x.gpg] http://mirror.example/debian bookworm main`.
/// `#` starts a comment anywhere on a line, as in apt. Every entry is
/// enabled (a disabled line is a commented-out line).
pub fn parse_one_line_list(file: &str, text: &str) -> Result<Vec<SourceEntry>, SourcesError> {
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let syntax = |message: String| SourcesError::Syntax {
            file: file.to_string(),
            line: line_no,
            message,
        };
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (typ, mut rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        if !KNOWN_TYPES.contains(&typ) {
            return Err(syntax(format!(
                "type {typ:?} is not known (expected deb or deb-src)"
            )));
        }
        rest = rest.trim_start();
        let mut architectures = Vec::new();
        let mut signed_by = None;
        if let Some(after) = rest.strip_prefix('[') {
            let Some((options, after)) = after.split_once(']') else {
                return Err(syntax("unterminated `[ options ]`".into()));
            };
            rest = after;
            for opt in options.split_whitespace() {
                let Some((key, value)) = opt.split_once('=') else {
                    return Err(syntax(format!(
                        "option {opt:?} is not of the form key=value"
                    )));
                };
                let (key, op) = match key.strip_suffix(['+', '-']) {
                    Some(k) => (k, &key[k.len()..]),
                    None => (key, ""),
                };
                match key {
                    "arch" => {
                        let values = value.split(',').filter(|v| !v.is_empty());
                        match op {
                            "" => architectures = values.map(str::to_string).collect(),
                            "+" => architectures.extend(values.map(str::to_string)),
                            _ => {
                                let removed: Vec<&str> = values.collect();
                                architectures.retain(|a| !removed.contains(&a.as_str()));
                            }
                        }
                    }
                    "signed-by" if !value.is_empty() => signed_by = Some(value.to_string()),
                    "signed-by" => {
                        return Err(SourcesError::InvalidField {
                            file: file.to_string(),
                            line: line_no,
                            field: "signed-by".into(),
                            message: "empty value".into(),
                        })
                    }
                    other => tracing::debug!("{file}:{line_no}: ignoring option {other}"),
                }
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            return Err(syntax(format!(
                "expected `{typ} [options] URI SUITE [COMPONENT...]`, found {line:?}"
            )));
        };
        let components: Vec<String> = words.map(str::to_string).collect();
        if is_flat(suite) && !components.is_empty() {
            return Err(syntax(format!(
                "exact path {suite:?} (ending in `/`) cannot be followed by components"
            )));
        }
        if !is_flat(suite) && components.is_empty() {
            return Err(syntax(format!("suite {suite:?} has no components")));
        }
        out.push(SourceEntry {
            types: vec![typ.to_string()],
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components,
            architectures,
            enabled: true,
            signed_by,
            file: file.to_string(),
            line: line_no,
        });
    }
    Ok(out)
}

/// apt reads only files whose names are made of these characters.
fn apt_accepts_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn read_text(path: &Path) -> Result<String, SourcesError> {
    fs::read_to_string(path).map_err(|source| SourcesError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Read the lists apt would read under `root` (`/` in production):
/// `etc/apt/sources.list`, then `etc/apt/sources.list.d/*.list` and
/// `*.sources` in file-name order. Other names (`.disabled-by-farm`,
/// `.save`, `~` backups, invalid characters) are skipped, as apt does.
/// Missing files and directories are not errors.
pub fn read_system_sources(root: &Path) -> Result<Vec<SourceEntry>, SourcesError> {
    let etc = root.join("etc/apt");
    let mut out = Vec::new();

    let main = etc.join("sources.list");
    if main.is_file() {
        out.extend(parse_one_line_list(
            &main.display().to_string(),
            &read_text(&main)?,
        )?);
    }

    let dir = etc.join("sources.list.d");
    let listing = match fs::read_dir(&dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => return Err(SourcesError::Io { path: dir, source }),
    };
    let mut names = Vec::new();
    for item in listing {
        let item = item.map_err(|source| SourcesError::Io {
            path: dir.clone(),
            source,
        })?;
        match item.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(name) => tracing::debug!(
                "{}: skipping {name:?}: not a UTF-8 file name",
                dir.display()
            ),
        }
    }
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let deb822 = name.ends_with(".sources");
        if !(deb822 || name.ends_with(".list")) || !apt_accepts_name(&name) {
            tracing::debug!(
                "{}: skipping: apt only reads *.list and *.sources",
                path.display()
            );
            continue;
        }
        if !path.is_file() {
            tracing::debug!("{}: skipping: not a regular file", path.display());
            continue;
        }
        let text = read_text(&path)?;
        let label = path.display().to_string();
        out.extend(if deb822 {
            parse_deb822_sources(&label, &text)?
        } else {
            parse_one_line_list(&label, &text)?
        });
    }
    Ok(out)
}

/// Where to fetch a suite from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorChoice {
    /// Base URI of the main archive (no trailing `/`), serving `dists/<suite>`.
    pub main: String,
    /// Base URI and suite name of `<suite>-updates`, when configured.
    pub updates: Option<(String, String)>,
    /// Base URI and suite name of `<suite>-security` (or the pre-bullseye
    /// `<suite>/updates`), when configured.
    pub security: Option<(String, String)>,
}

fn fetchable(entry: &SourceEntry, uri: &str) -> bool {
    let lower = uri.to_ascii_lowercase();
    let ok = lower.starts_with("http://") || lower.starts_with("https://");
    if !ok {
        tracing::debug!(
            "{}:{}: skipping URI {uri}: cairn fetches only http:// and https:// archives",
            entry.file,
            entry.line
        );
    }
    ok
}

/// The first (URI, suite) of an enabled `deb` entry whose suite satisfies
/// `wanted`, in list order.
fn find(entries: &[SourceEntry], wanted: impl Fn(&str) -> bool) -> Option<(String, String)> {
    for e in entries {
        if !e.enabled || !e.types.iter().any(|t| t == "deb") {
            continue;
        }
        let Some(suite) = e.suites.iter().find(|s| wanted(s)) else {
            continue;
        };
        if let Some(uri) = e.uris.iter().find(|u| fetchable(e, u)) {
            return Some((uri.trim_end_matches('/').to_string(), suite.clone()));
        }
    }
    None
}

/// Pick the mirror for `suite` from configured sources: the first enabled
/// `deb` entry listing `suite` gives `main`; `<suite>-updates` and
/// `<suite>-security` (or `<suite>/updates`) come from any enabled `deb`
/// entry. Only http(s) URIs count. None when no entry provides `suite`.
pub fn choose_mirror(entries: &[SourceEntry], suite: &str) -> Option<MirrorChoice> {
    let (main, _) = find(entries, |s| s == suite)?;
    let updates_suite = format!("{suite}-updates");
    let security_suites = [format!("{suite}-security"), format!("{suite}/updates")];
    Some(MirrorChoice {
        main,
        updates: find(entries, |s| s == updates_suite),
        security: find(entries, |s| security_suites.iter().any(|w| w == s)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's /etc/apt/sources.list.d/debian.sources, host replaced.
    const MACHINE: &str = "\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.example/archive/debian-security/20250520T000000Z
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    fn entry(types: &[&str], uris: &[&str], suites: &[&str], enabled: bool) -> SourceEntry {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect();
        SourceEntry {
            types: v(types),
            uris: v(uris),
            suites: v(suites),
            components: vec!["main".into()],
            architectures: vec![],
            enabled,
            signed_by: None,
            file: "test.sources".into(),
            line: 1,
        }
    }

    #[test]
    fn machine_layout() {
        let es = parse_deb822_sources("debian.sources", MACHINE).unwrap();
        assert_eq!(es.len(), 2);
        assert_eq!(es[0].types, ["deb"]);
        assert_eq!(es[0].uris, ["http://mirror.example/debian"]);
        assert_eq!(es[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(es[0].components, ["main"]);
        assert!(es[0].enabled);
        assert_eq!(
            es[0].signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        assert_eq!((es[0].file.as_str(), es[0].line), ("debian.sources", 1));
        assert_eq!(es[1].line, 8);
        assert_eq!(
            choose_mirror(&es, "bookworm"),
            Some(MirrorChoice {
                main: "http://mirror.example/debian".into(),
                updates: Some((
                    "http://mirror.example/debian".into(),
                    "bookworm-updates".into()
                )),
                security: Some((
                    "http://mirror.example/debian-security".into(),
                    "bookworm-security".into()
                )),
            })
        );
        assert_eq!(choose_mirror(&es, "trixie"), None);
    }

    #[test]
    fn deb822_fields_multiple_values_and_disabled_stanzas() {
        let text = "\
# A comment before the first stanza
X-Repolib-Name: ignored, as apt ignores unknown fields
Types: deb deb-src
URIs: mirror+file:/etc/apt/mirrors.txt https://mirror.example/debian/
Suites: trixie
 trixie-updates
Components: main contrib
Architectures: amd64 arm64
Enabled: yes
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mDMEZ...
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://old.example/debian
Enabled: no

Types: deb
URIs: http://flat.example/repo
Suites: ./
";
        let es = parse_deb822_sources("x.sources", text).unwrap();
        assert_eq!(es.len(), 3);
        let a = &es[0];
        assert_eq!(a.line, 2);
        assert_eq!(a.types, ["deb", "deb-src"]);
        assert_eq!(a.uris.len(), 2);
        assert_eq!(a.suites, ["trixie", "trixie-updates"]);
        assert_eq!(a.components, ["main", "contrib"]);
        assert_eq!(a.architectures, ["amd64", "arm64"]);
        let key = a.signed_by.as_deref().unwrap();
        assert!(
            key.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ"),
            "{key:?}"
        );
        // Disabled: kept, not validated (no Suites), not chosen.
        assert!(!es[1].enabled);
        assert!(es[1].suites.is_empty());
        assert_eq!(es[1].line, 16);
        assert!(es[2].components.is_empty() && es[2].suites == ["./"]);

        let m = choose_mirror(&es, "trixie").unwrap();
        // mirror+file: is skipped; the https URI loses its trailing slash.
        assert_eq!(m.main, "https://mirror.example/debian");
        assert_eq!(
            m.updates,
            Some((
                "https://mirror.example/debian".into(),
                "trixie-updates".into()
            ))
        );
        assert_eq!(m.security, None);
    }

    fn deb822_err(text: &str) -> SourcesError {
        parse_deb822_sources("e.sources", text).unwrap_err()
    }

    #[test]
    fn deb822_errors_name_file_line_and_field() {
        let e = deb822_err("Types: deb\nSuites: x\nComponents: main\n\nTypes: deb\nSuites: y\n");
        assert!(
            matches!(&e, SourcesError::MissingField { file, line: 1, field } if file == "e.sources" && field == "URIs"),
            "{e}"
        );
        assert_eq!(e.to_string(), "e.sources:1: missing field URIs");
        let e = deb822_err("\n\nTypes: deb\nURIs: http://m.example/d\nSuites: x\n");
        assert!(
            matches!(&e, SourcesError::MissingField { line: 3, field, .. } if field == "Components"),
            "{e}"
        );
        let e = deb822_err("Types: rpm\nURIs: u\nSuites: x\nComponents: c\n");
        assert!(
            matches!(&e, SourcesError::InvalidField { line: 1, field, .. } if field == "Types"),
            "{e}"
        );
        let e = deb822_err("Types: deb\nURIs: u\nSuites: x\nComponents: c\nEnabled: maybe\n");
        assert!(
            matches!(&e, SourcesError::InvalidField { line: 5, field, .. } if field == "Enabled"),
            "{e}"
        );
        let e = deb822_err("Types: deb\nURIs: u\nSuites: ./\nComponents: c\n");
        assert!(
            matches!(&e, SourcesError::InvalidField { line: 4, field, .. } if field == "Components"),
            "{e}"
        );
        let e = deb822_err("Types: deb\nURIs: u\nSuites: ./ x\nComponents: c\n");
        assert!(
            matches!(&e, SourcesError::InvalidField { line: 3, field, .. } if field == "Suites"),
            "{e}"
        );
        let e = deb822_err("Types: deb\nthis is not a field\n");
        assert!(matches!(&e, SourcesError::Syntax { line: 2, .. }), "{e}");
        assert!(e.to_string().starts_with("e.sources:2: "));
        // A disabled stanza is not validated.
        let disabled = parse_deb822_sources("d", "Types: rpm\nEnabled: no\n").unwrap();
        assert!(!disabled[0].enabled);
    }

    #[test]
    fn one_line_format() {
        let text = "\
# deb cdrom:[Debian GNU/Linux 12]/ bookworm main
deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.example/debian bookworm main contrib # trailing comment
deb-src http://mirror.example/debian bookworm main

deb [ arch=amd64 arch+=i386 arch-=amd64 trusted=yes ] https://mirror.example/debian-security bookworm-security main
deb file:/srv/repo ./
\tdeb http://mirror.example/debian bookworm-updates main
";
        let es = parse_one_line_list("sources.list", text).unwrap();
        assert_eq!(es.len(), 5);
        let a = &es[0];
        assert_eq!(a.line, 2);
        assert_eq!(a.types, ["deb"]);
        assert_eq!(a.uris, ["http://mirror.example/debian"]);
        assert_eq!(a.suites, ["bookworm"]);
        assert_eq!(a.components, ["main", "contrib"]);
        assert_eq!(a.architectures, ["amd64", "arm64"]);
        assert_eq!(a.signed_by.as_deref(), Some("/usr/share/keyrings/k.gpg"));
        assert!(a.enabled);
        assert_eq!((es[1].types[0].as_str(), es[1].line), ("deb-src", 3));
        assert_eq!(es[2].architectures, ["i386"]);
        assert_eq!(es[2].line, 5);
        assert_eq!(es[3].suites, ["./"]);
        assert!(es[3].components.is_empty());
        assert_eq!(es[4].line, 7);

        let m = choose_mirror(&es, "bookworm").unwrap();
        assert_eq!(m.main, "http://mirror.example/debian");
        assert_eq!(
            m.security,
            Some((
                "https://mirror.example/debian-security".into(),
                "bookworm-security".into()
            ))
        );
        assert_eq!(m.updates.unwrap().1, "bookworm-updates");
    }

    #[test]
    fn one_line_errors() {
        let err = |t: &str| parse_one_line_list("l.list", t).unwrap_err();
        for (text, line, needle) in [
            ("\nrpm http://m.example/x y z\n", 2, "not known"),
            ("deb http://m.example/x\n", 1, "URI SUITE"),
            (
                "deb [arch=amd64 http://m.example/x bookworm main\n",
                1,
                "unterminated",
            ),
            (
                "deb [arch] http://m.example/x bookworm main\n",
                1,
                "key=value",
            ),
            ("deb http://m.example/x bookworm\n", 1, "no components"),
            ("deb http://m.example/x ./ main\n", 1, "exact path"),
        ] {
            let e = err(text);
            assert!(
                matches!(&e, SourcesError::Syntax { file, line: l, message }
                    if file == "l.list" && *l == line && message.contains(needle)),
                "{text:?}: {e}"
            );
        }
        let e = err("deb [signed-by=] http://m.example/x b main\n");
        assert!(matches!(&e, SourcesError::InvalidField { field, .. } if field == "signed-by"));
    }

    #[test]
    fn choose_mirror_rules() {
        let only_security = parse_deb822_sources(
            "security.sources",
            "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n",
        )
        .unwrap();
        assert_eq!(choose_mirror(&only_security, "bookworm"), None);

        let es = vec![
            entry(
                &["deb"],
                &["http://disabled.example/d"],
                &["bookworm"],
                false,
            ),
            entry(&["deb-src"], &["http://src.example/d"], &["bookworm"], true),
            entry(
                &["deb"],
                &["cdrom:[Debian]/", "file:/media"],
                &["bookworm"],
                true,
            ),
            entry(
                &["deb"],
                &["http://old.example/sec/"],
                &["bookworm/updates"],
                true,
            ),
            entry(
                &["deb"],
                &["HTTPS://main.example/debian"],
                &["bookworm"],
                true,
            ),
            entry(
                &["deb"],
                &["http://second.example/debian"],
                &["bookworm"],
                true,
            ),
            entry(
                &["deb"],
                &["http://new.example/sec"],
                &["bookworm-security"],
                true,
            ),
        ];
        let m = choose_mirror(&es, "bookworm").unwrap();
        assert_eq!(m.main, "HTTPS://main.example/debian");
        assert_eq!(m.updates, None);
        // The first entry in list order wins, old `/updates` form included.
        assert_eq!(
            m.security,
            Some(("http://old.example/sec".into(), "bookworm/updates".into()))
        );
        // Only a non-http main: nothing usable.
        assert_eq!(choose_mirror(&es[..3], "bookworm"), None);
    }

    /// A scratch root under the system temp dir, removed on drop.
    struct Root(PathBuf);

    impl Root {
        fn new(name: &str) -> Root {
            let p =
                std::env::temp_dir().join(format!("cairn-sources-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Root(p)
        }

        fn write(&self, rel: &str, text: &str) {
            let p = self.0.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn read_system_sources_like_apt() {
        let root = Root::new("system");
        let d = "etc/apt/sources.list.d";
        root.write(
            "etc/apt/sources.list",
            "# main list\ndeb http://one.example/debian bookworm main\n",
        );
        root.write(&format!("{d}/b.sources"), MACHINE);
        root.write(
            &format!("{d}/a.list"),
            "deb http://two.example/debian bookworm main\n",
        );
        // Names apt skips: other extensions, backups, invalid characters.
        let bad = "deb http://never.example/d bookworm main\n";
        root.write(&format!("{d}/google-cloud-sdk.list.disabled-by-farm"), bad);
        root.write(
            &format!("{d}/nodesource.sources.disabled-by-farm"),
            "garbage",
        );
        root.write(&format!("{d}/backup.list~"), bad);
        root.write(&format!("{d}/with space.list"), bad);
        root.write(&format!("{d}/notes.txt"), bad);
        fs::create_dir_all(root.0.join(format!("{d}/dir.list"))).unwrap();

        let es = read_system_sources(&root.0).unwrap();
        let summary: Vec<(String, String, usize)> = es
            .iter()
            .map(|e| {
                let file = Path::new(&e.file).file_name().unwrap().to_str().unwrap();
                (file.to_string(), e.uris[0].clone(), e.line)
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("sources.list".into(), "http://one.example/debian".into(), 2),
                ("a.list".into(), "http://two.example/debian".into(), 1),
                ("b.sources".into(), "http://mirror.example/debian".into(), 1),
                (
                    "b.sources".into(),
                    "http://mirror.example/debian-security".into(),
                    8
                ),
            ]
        );
        assert!(es[0].file.starts_with(root.0.to_str().unwrap()));
        let m = choose_mirror(&es, "bookworm").unwrap();
        assert_eq!(m.main, "http://one.example/debian");
        assert_eq!(
            m.security.unwrap().0,
            "http://mirror.example/debian-security"
        );

        // Errors name the file.
        root.write(&format!("{d}/c.list"), "deb http://x.example/d\n");
        let e = read_system_sources(&root.0).unwrap_err();
        assert!(e.to_string().ends_with("c.list:1: expected `deb [options] URI SUITE [COMPONENT...]`, found \"deb http://x.example/d\""), "{e}");
    }

    #[test]
    fn read_system_sources_empty_root() {
        let root = Root::new("empty");
        assert!(read_system_sources(&root.0).unwrap().is_empty());
        root.write(
            "etc/apt/sources.list.d/only.sources",
            "Types: deb\nURIs: http://m.example/d\nSuites: s\nComponents: main\n",
        );
        assert_eq!(read_system_sources(&root.0).unwrap().len(), 1);
        root.write("etc/apt/sources.list.d/bin.list", "");
        fs::write(root.0.join("etc/apt/sources.list.d/bin.list"), [0xff, 0xfe]).unwrap();
        let e = read_system_sources(&root.0).unwrap_err();
        assert!(
            matches!(&e, SourcesError::Io { path, .. } if path.ends_with("bin.list")),
            "{e}"
        );
    }
}
