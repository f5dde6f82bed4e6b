//! Unit files: the text exactly as submitted, its sections and options as
//! fleet's parser (go-systemd's `unit.Deserialize`) read them, fleet's
//! canonical serialisation, and the SHA-1 fleet identified a unit file by.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha1::{Digest, Sha1};
use thiserror::Error;

/// systemd's `LINE_MAX` as go-systemd enforced it: a physical line of this
/// many bytes or more is refused (systemd would cut it silently).
pub const LINE_MAX: usize = 2048;

/// Why a unit file could not be read. Lines count from 1.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("line {line}: line too long ({len} bytes, max {max})", max = LINE_MAX - 1)]
    LineTooLong { line: usize, len: usize },
    #[error("line {line}: unable to find end of section (\"]\")")]
    UnterminatedSection { line: usize },
    #[error("line {line}: found garbage after section name [{section}]: {garbage:?}")]
    GarbageAfterSection {
        line: usize,
        section: String,
        garbage: String,
    },
    #[error("line {line}: empty section name \"[]\"")]
    EmptySection { line: usize },
    #[error("line {line}: {text:?} is not an option (NAME=VALUE), a section header or a comment")]
    NotAnOption { line: usize, text: String },
    #[error("line {line}: option {text:?} appears before any [Section] header")]
    OutsideSection { line: usize, text: String },
    #[error("line {line}: option without a name")]
    EmptyName { line: usize },
}

impl ParseError {
    /// The line the error is about.
    pub fn line(&self) -> usize {
        match self {
            ParseError::LineTooLong { line, .. }
            | ParseError::UnterminatedSection { line }
            | ParseError::GarbageAfterSection { line, .. }
            | ParseError::EmptySection { line }
            | ParseError::NotAnOption { line, .. }
            | ParseError::OutsideSection { line, .. }
            | ParseError::EmptyName { line } => *line,
        }
    }
}

/// One `Name=value` assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitOption {
    /// The section it belongs to, without brackets (`Unit`, `X-Fleet`).
    pub section: String,
    /// The option name, trimmed.
    pub name: String,
    /// The value as go-systemd kept it (and fleet hashed it): trimmed, a
    /// continued value keeps its backslashes and newlines.
    pub raw_value: String,
    /// The line the option starts on.
    pub line: usize,
}

impl UnitOption {
    /// The value as systemd reads it: each backslash-newline continuation
    /// becomes a space.
    pub fn value(&self) -> String {
        if !self.raw_value.contains('\\') {
            return self.raw_value.clone();
        }
        let joined = self.raw_value.replace("\\\n", " ");
        let joined = joined.strip_suffix('\\').unwrap_or(&joined);
        joined.trim().to_string()
    }
}

/// A unit file: the submitted text, kept byte for byte (what `fleetctl cat`
/// shows and what the agent writes to disk), and the options read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    text: String,
    options: Vec<UnitOption>,
}

impl UnitFile {
    /// Reads a unit file the way fleet's parser did: `[Section]` headers,
    /// `Name=value` options (repeated options kept in order), comment lines
    /// starting with `#` or `;` (a comment ending in `\` goes on to the next
    /// line), values continued onto the next line by a trailing `\`, a blank
    /// line ending a continued value. Stricter than fleet where fleet
    /// silently skipped text: an option before the first section and a
    /// line that is no option are refused with their line.
    pub fn parse(text: impl Into<String>) -> Result<UnitFile, ParseError> {
        let text = text.into();
        let options = parse_options(&text)?;
        Ok(UnitFile { text, options })
    }

    /// The text as submitted.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every option, in file order.
    pub fn options(&self) -> &[UnitOption] {
        &self.options
    }

    /// The section names, in the order they first carry an option.
    pub fn sections(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for o in &self.options {
            if !out.contains(&o.section.as_str()) {
                out.push(&o.section);
            }
        }
        out
    }

    /// The options of `section` named `name`, in order.
    pub fn get<'a>(
        &'a self,
        section: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a UnitOption> + 'a {
        self.options
            .iter()
            .filter(move |o| o.section == section && o.name == name)
    }

    /// The options of one section, in order.
    pub fn section<'a>(&'a self, section: &'a str) -> impl Iterator<Item = &'a UnitOption> + 'a {
        self.options.iter().filter(move |o| o.section == section)
    }

    /// The first `Description=` of `[Unit]` (fleet's choice), if any.
    pub fn description(&self) -> Option<String> {
        self.get("Unit", "Description").next().map(|o| o.value())
    }

    /// Whether the unit has an `[Install]` section with options (fleet
    /// enables such units when it loads them).
    pub fn has_install(&self) -> bool {
        self.section("Install").next().is_some()
    }

    /// fleet's canonical text of the unit (go-systemd's `unit.Serialize`):
    /// options grouped by section in the order sections first appear, each
    /// section `[Name]` then `Name=value` lines, sections separated by a
    /// blank line; comments and layout are gone.
    pub fn serialize(&self) -> String {
        let mut out = String::with_capacity(self.text.len());
        let sections = self.sections();
        for (i, section) in sections.iter().enumerate() {
            out.push('[');
            out.push_str(section);
            out.push_str("]\n");
            for o in self.section(section) {
                out.push_str(&o.name);
                out.push('=');
                out.push_str(&o.raw_value);
                out.push('\n');
            }
            if i + 1 < sections.len() {
                out.push('\n');
            }
        }
        out
    }

    /// The unit's hash as fleet computed it: SHA-1 of [`Self::serialize`],
    /// so two files that differ only in comments or layout are the same
    /// unit (fleetctl compares local files and registry units this way).
    pub fn hash(&self) -> UnitHash {
        UnitHash(Sha1::digest(self.serialize().as_bytes()).into())
    }
}

/// The SHA-1 of a unit file's canonical text; shown in full as 40 hex
/// digits, shortened to 7 (`fleetctl list-unit-files`' HASH column).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnitHash(pub [u8; 20]);

impl UnitHash {
    /// The first 7 hex digits, as fleetctl printed without `--full`.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(7);
        s
    }
}

impl fmt::Display for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for UnitHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnitHash({self})")
    }
}

/// A hash that is not 40 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not a unit hash (40 hex digits)")]
pub struct BadHash(pub String);

impl FromStr for UnitHash {
    type Err = BadHash;
    fn from_str(s: &str) -> Result<Self, BadHash> {
        let mut out = [0u8; 20];
        if s.len() != 40 || hex::decode_to_slice(s, &mut out).is_err() {
            return Err(BadHash(s.to_string()));
        }
        Ok(UnitHash(out))
    }
}

impl Serialize for UnitHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for UnitHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The lines of `text` with their 1-based numbers; the newline is not part
/// of a line, a `\r` before it is (as in go-systemd's reader).
fn lines(text: &str) -> Vec<(usize, &str)> {
    let mut out: Vec<(usize, &str)> = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .collect();
    if text.ends_with('\n') {
        // The empty remainder after the last newline is no line.
        out.pop();
    }
    out
}

fn is_comment(c: char) -> bool {
    c == '#' || c == ';'
}

fn parse_options(text: &str) -> Result<Vec<UnitOption>, ParseError> {
    let lines = lines(text);
    for &(line, l) in &lines {
        if l.len() >= LINE_MAX {
            return Err(ParseError::LineTooLong { line, len: l.len() });
        }
    }
    let ends_with_newline = text.ends_with('\n');
    let mut options = Vec::new();
    let mut section: Option<String> = None;
    let mut i = 0;
    while i < lines.len() {
        let (line, raw) = lines[i];
        i += 1;
        let l = raw.trim_start();
        if l.is_empty() {
            continue;
        }
        if let Some(rest) = l.strip_prefix('[') {
            let Some(end) = rest.find(']') else {
                return Err(ParseError::UnterminatedSection { line });
            };
            let name = &rest[..end];
            let garbage = rest[end + 1..].trim();
            if !garbage.is_empty() {
                return Err(ParseError::GarbageAfterSection {
                    line,
                    section: name.to_string(),
                    garbage: garbage.to_string(),
                });
            }
            if name.is_empty() {
                return Err(ParseError::EmptySection { line });
            }
            section = Some(name.to_string());
            continue;
        }
        if l.starts_with(is_comment) {
            // go-systemd: a comment whose line ends in a backslash (after
            // one trailing space is dropped) swallows the next line too.
            let mut cur = raw;
            loop {
                let t = cur.strip_suffix(' ').unwrap_or(cur);
                if !t.ends_with('\\') || i >= lines.len() {
                    break;
                }
                cur = lines[i].1;
                i += 1;
            }
            continue;
        }
        let Some(eq) = l.find('=') else {
            return Err(ParseError::NotAnOption {
                line,
                text: l.to_string(),
            });
        };
        let Some(section) = &section else {
            return Err(ParseError::OutsideSection {
                line,
                text: l.to_string(),
            });
        };
        let name = l[..eq].trim();
        if name.is_empty() {
            return Err(ParseError::EmptyName { line });
        }
        // The value, continued while a line ends in a backslash; a blank
        // line ends it. Continuation lines are kept as they are, joined by
        // newlines, backslashes included (that is what fleet hashed).
        let mut partial = String::new();
        let mut part = &l[eq + 1..];
        let mut last_line_index = i - 1;
        loop {
            if part.trim().is_empty() {
                break;
            }
            partial.push_str(part);
            if !part.ends_with('\\') {
                break;
            }
            let at_eof = last_line_index + 1 >= lines.len() && !ends_with_newline;
            if !at_eof {
                partial.push('\n');
            }
            if i >= lines.len() {
                break;
            }
            part = lines[i].1;
            last_line_index = i;
            i += 1;
        }
        let raw_value = if partial.ends_with('\n') {
            format!("{}\n", partial.trim())
        } else {
            partial.trim().to_string()
        };
        options.push(UnitOption {
            section: section.clone(),
            name: name.to_string(),
            raw_value,
            line,
        });
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Opt = (String, String, String, usize);

    fn opts(text: &str) -> Vec<Opt> {
        UnitFile::parse(text)
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
            .options()
            .iter()
            .map(|o| {
                (
                    o.section.clone(),
                    o.name.clone(),
                    o.raw_value.clone(),
                    o.line,
                )
            })
            .collect()
    }

    fn o(s: &str, n: &str, v: &str, line: usize) -> Opt {
        (s.into(), n.into(), v.into(), line)
    }

    #[test]
    fn hash_matches_fleet() {
        // fleet's own test vector (unit/unit_test.go TestUnitHash).
        let u = UnitFile::parse("[Service]\nExecStart=/bin/sleep 100\n").unwrap();
        assert_eq!(
            u.hash().to_string(),
            "1c6fb6f3684bafb0c173d8b8b957ceff031180c1"
        );
        assert_eq!(u.hash().short(), "1c6fb6f");
        // Comments, blank lines and indentation do not change the unit.
        let v =
            UnitFile::parse("# a comment\n[Service]\n\n  ExecStart = /bin/sleep 100   \n; more\n")
                .unwrap();
        assert_eq!(u.hash(), v.hash());
        assert_ne!(u.text(), v.text());
        // A value change does.
        let w = UnitFile::parse("[Service]\nExecStart=/bin/sleep 101\n").unwrap();
        assert_ne!(u.hash(), w.hash());
        let parsed: UnitHash = "1c6fb6f3684bafb0c173d8b8b957ceff031180c1".parse().unwrap();
        assert_eq!(parsed, u.hash());
        assert!("1c6fb6f".parse::<UnitHash>().is_err());
        assert!("zz6fb6f3684bafb0c173d8b8b957ceff031180c1"
            .parse::<UnitHash>()
            .is_err());
    }

    #[test]
    fn text_is_kept_byte_for_byte() {
        let text = "# hello\r\n[Unit]\r\nDescription=x \r\n\n\n[Service]\nExecStart=/bin/true";
        let u = UnitFile::parse(text).unwrap();
        assert_eq!(u.text(), text);
        assert_eq!(u.description().as_deref(), Some("x"));
    }

    #[test]
    fn options_table() {
        let table: Vec<(&str, Vec<Opt>)> = vec![
            ("", vec![]),
            ("[Unit]\n", vec![]),
            (
                "[Unit]\nDescription=Hello World\n",
                vec![o("Unit", "Description", "Hello World", 2)],
            ),
            // Repeated options are all kept, in order.
            (
                "[Service]\nExecStartPre=/a\nExecStartPre=/b\nExecStart=/c\n",
                vec![
                    o("Service", "ExecStartPre", "/a", 2),
                    o("Service", "ExecStartPre", "/b", 3),
                    o("Service", "ExecStart", "/c", 4),
                ],
            ),
            // Comments with # and ;, also indented; whitespace around = trimmed.
            (
                "#c\n;c\n[Unit]\n  # c\n\t; c\n Description =  x y  \n",
                vec![o("Unit", "Description", "x y", 6)],
            ),
            // Empty value.
            (
                "[Unit]\nDescription=\n",
                vec![o("Unit", "Description", "", 2)],
            ),
            // A value may contain = and #.
            (
                "[X-Fleet]\nMachineMetadata=a=b # not a comment\n",
                vec![o("X-Fleet", "MachineMetadata", "a=b # not a comment", 2)],
            ),
            // Continuation lines keep the backslash and newline.
            (
                "[Service]\nExecStart=/bin/echo \\\n  hello \\\n  world\nUser=x\n",
                vec![
                    o(
                        "Service",
                        "ExecStart",
                        "/bin/echo \\\n  hello \\\n  world",
                        2,
                    ),
                    o("Service", "User", "x", 5),
                ],
            ),
            // A blank line ends a continued value (go-systemd keeps the newline).
            (
                "[Service]\nExecStart=/bin/echo \\\n\nUser=x\n",
                vec![
                    o("Service", "ExecStart", "/bin/echo \\\n", 2),
                    o("Service", "User", "x", 4),
                ],
            ),
            // A continuation at the very end of the file without a newline.
            (
                "[Service]\nExecStart=/bin/echo \\",
                vec![o("Service", "ExecStart", "/bin/echo \\", 2)],
            ),
            // A comment ending in a backslash swallows the next line.
            (
                "[Unit]\n# comment \\\nDescription=hidden\nAfter=x\n",
                vec![o("Unit", "After", "x", 4)],
            ),
            // Sections repeat; options keep their own section.
            (
                "[Unit]\nA=1\n[Service]\nB=2\n[Unit]\nC=3\n",
                vec![
                    o("Unit", "A", "1", 2),
                    o("Service", "B", "2", 4),
                    o("Unit", "C", "3", 6),
                ],
            ),
            // Windows line endings.
            (
                "[Unit]\r\nDescription=x\r\n",
                vec![o("Unit", "Description", "x", 2)],
            ),
        ];
        for (text, want) in table {
            assert_eq!(opts(text), want, "{text:?}");
        }
    }

    #[test]
    fn logical_values() {
        let u = UnitFile::parse("[X-Fleet]\nConflicts=a.service \\\n  b.service\nX=c \\").unwrap();
        let vals: Vec<String> = u.options().iter().map(|o| o.value()).collect();
        assert_eq!(vals, ["a.service    b.service", "c"]);
    }

    #[test]
    fn serialization_is_fleets() {
        let u = UnitFile::parse(
            "# c\n[Unit]\nDescription=d\n\n[Service]\nExecStart=/bin/a \\\n  b\n[Unit]\nAfter=x\n[Empty]\n",
        )
        .unwrap();
        assert_eq!(
            u.serialize(),
            "[Unit]\nDescription=d\nAfter=x\n\n[Service]\nExecStart=/bin/a \\\n  b\n"
        );
        assert_eq!(u.sections(), ["Unit", "Service"]);
        assert_eq!(UnitFile::parse("").unwrap().serialize(), "");
        assert_eq!(
            UnitFile::parse("").unwrap().hash().to_string(),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
    }

    #[test]
    fn refusals_name_the_line() {
        let long = format!("[Unit]\nDescription={}\n", "x".repeat(LINE_MAX));
        let table: &[(&str, &str)] = &[
            ("[Unit\nA=1\n", "line 1: unable to find end of section"),
            (
                "[Unit] x\n",
                "line 1: found garbage after section name [Unit]: \"x\"",
            ),
            ("\n[]\n", "line 2: empty section name"),
            (
                "[Unit]\nDescription\n",
                "line 2: \"Description\" is not an option",
            ),
            (
                "Description=x\n[Unit]\n",
                "line 1: option \"Description=x\" appears before any [Section]",
            ),
            ("[Unit]\n=x\n", "line 2: option without a name"),
            (&long, "line 2: line too long (2060 bytes, max 2047)"),
        ];
        for &(text, want) in table {
            let err = UnitFile::parse(text).expect_err(text);
            assert!(err.to_string().starts_with(want), "{text:?}: {err}");
        }
        // Just under the limit is fine.
        let ok = format!("[Unit]\nD={}\n", "x".repeat(LINE_MAX - 3));
        UnitFile::parse(ok).unwrap();
    }

    #[test]
    fn install_and_sections() {
        let u = UnitFile::parse("[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target\n")
            .unwrap();
        assert!(u.has_install());
        assert_eq!(
            u.get("Install", "WantedBy")
                .map(|o| o.value())
                .collect::<Vec<_>>(),
            ["multi-user.target"]
        );
        let v = UnitFile::parse("[Service]\nExecStart=/x\n[Install]\n").unwrap();
        assert!(!v.has_install());
    }
}
