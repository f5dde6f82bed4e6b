//! The validator: `coreos-cloudinit -validate`'s rules and wording (YAML syntax, unknown keys, types, allowed values,
//! content encodings, read-only /usr, etcd discovery URL, write_files under coreos), each finding with its 1-based line.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::decode;
use crate::parse::{classify, Header, BAD_HEADER};
use crate::schema::{self, Field, Ty};
use crate::yaml::{self, Kind as YKind, Node, Value};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Error => "error",
            Kind::Warning => "warning",
            Kind::Info => "info",
        })
    }
}

/// One problem found in a user-data file. Serialises as `{"kind":"error","message":"...","line":3}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub message: String,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Finding {
    /// coreos-cloudinit's form: `line 3: error: invalid value lol`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.kind, self.message)
    }
}

/// All findings for one file, ordered by line (rule order within a line). Serialises as a JSON array of findings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// Any finding of kind error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.kind == Kind::Error)
    }

    /// No finding at all.
    pub fn is_empty(&self) -> bool {
        self.findings.is_empty()
    }

    fn push(&mut self, kind: Kind, line: usize, message: impl Into<String>) {
        self.findings.push(Finding {
            kind,
            message: message.into(),
            line,
        });
    }
}

/// One line per finding: `FILE:LINE: KIND: MESSAGE` (each line ends with a newline; empty for an empty report).
pub fn format_findings(file_name: &str, report: &Report) -> String {
    report
        .findings
        .iter()
        .map(|f| format!("{file_name}:{}: {}: {}\n", f.line, f.kind, f.message))
        .collect()
}

/// Validate user-data like `coreos-cloudinit -validate`. Empty input, scripts (`#!`) and Ignition configs have no findings;
/// anything else that is not a `#cloud-config` is an error at line 1.
pub fn validate(text: &str) -> Report {
    let mut report = Report::default();
    match classify(text) {
        Header::Empty | Header::Script | Header::Ignition => {}
        Header::Unknown => report.push(Kind::Error, 1, BAD_HEADER),
        Header::CloudConfig => match yaml::parse(text) {
            Err(e) => report.push(Kind::Error, e.line, e.message),
            Ok(root) => {
                check_discovery_url(&root, &mut report);
                check_encoding(&root, &mut report);
                check_structure(&root, &mut report);
                check_validity(&root, &mut report);
                check_write_files(&root, &mut report);
                check_write_files_under_coreos(&root, &mut report);
                report.findings.sort_by_key(|f| f.line);
            }
        },
    }
    report
}

fn entry_value<'n>(node: &'n Node, key: &str) -> Option<(usize, &'n Node)> {
    node.get(key).map(|e| (e.line, &e.value))
}

fn seq_items<'n>(node: Option<(usize, &'n Node)>) -> &'n [Node] {
    match node.map(|(_, n)| &n.value) {
        Some(Value::Seq(items)) => items,
        _ => &[],
    }
}

/// The etcd discovery URL must be an absolute URI (Go's url.ParseRequestURI). coreos-cloudinit checks `coreos.etcd`;
/// `coreos.etcd2` is checked the same way.
fn check_discovery_url(root: &Node, report: &mut Report) {
    let Some((_, coreos)) = entry_value(root, "coreos") else {
        return;
    };
    for section in ["etcd", "etcd2"] {
        let Some((_, etcd)) = entry_value(coreos, section) else {
            continue;
        };
        let Some((line, url)) = entry_value(etcd, "discovery") else {
            continue;
        };
        let Some(text) = url.string() else {
            continue;
        };
        if !is_request_uri(&text) {
            report.push(Kind::Warning, line, "discovery URL is not valid");
        }
    }
}

/// Content must decode with its declared encoding.
fn check_encoding(root: &Node, report: &mut Report) {
    for file in seq_items(entry_value(root, "write_files")) {
        let Some((enc_line, enc)) = entry_value(file, "encoding") else {
            continue;
        };
        let Some(encoding) = enc.string() else {
            continue;
        };
        let (line, content) = match entry_value(file, "content") {
            Some((line, c)) => (line, c.string_bytes()),
            None => (enc_line, Some(Vec::new())),
        };
        let ok = content.is_some_and(|c| decode::decode_bytes(&c, &encoding).is_ok());
        if !ok {
            report.push(
                Kind::Error,
                line,
                format!("content cannot be decoded as {encoding:?}"),
            );
        }
    }
}

fn compatible(kind: YKind, ty: Ty) -> bool {
    match ty {
        Ty::Str => matches!(
            kind,
            YKind::String | YKind::Int | YKind::Float | YKind::Bool
        ),
        Ty::Struct(_) => kind == YKind::Map,
        Ty::Float => matches!(kind, YKind::Float | YKind::Int),
        Ty::Int => kind == YKind::Int,
        Ty::Bool => kind == YKind::Bool,
        Ty::StrSlice | Ty::StructSlice(_) => kind == YKind::Slice,
    }
}

/// Unknown keys, deprecated keys and values of the wrong type (warnings).
fn check_structure(root: &Node, report: &mut Report) {
    if root.kind() != YKind::Map {
        report.push(
            Kind::Warning,
            root.line,
            "incorrect type for the document (want struct)",
        );
        return;
    }
    structure(root, "", root.line, Ty::Struct(schema::CLOUD_CONFIG), report);
}

fn structure(node: &Node, name: &str, line: usize, ty: Ty, report: &mut Report) {
    if !compatible(node.kind(), ty) {
        report.push(
            Kind::Warning,
            line,
            format!("incorrect type for {name:?} (want {})", ty.human()),
        );
        return;
    }
    match (ty, &node.value) {
        (Ty::Struct(fields), Value::Map(entries)) => {
            for entry in entries {
                match schema::field(fields, &entry.key) {
                    Some(field) => {
                        if let Some(why) = field.deprecated {
                            report.push(
                                Kind::Warning,
                                entry.line,
                                format!("deprecated key {:?} ({why})", entry.key),
                            );
                        }
                        structure(&entry.value, &entry.key, entry.line, field.ty, report);
                    }
                    None => report.push(
                        Kind::Warning,
                        entry.line,
                        format!("unrecognized key {:?}", entry.key),
                    ),
                }
            }
        }
        (Ty::StrSlice | Ty::StructSlice(_), Value::Seq(items)) => {
            let elem = match ty {
                Ty::StructSlice(fields) => Ty::Struct(fields),
                _ => Ty::Str,
            };
            for (i, item) in items.iter().enumerate() {
                structure(item, &format!("{name}[{i}]"), item.line, elem, report);
            }
        }
        _ => {}
    }
}

static VALID: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    let mut out = Vec::new();
    let mut add = |fields: &'static [Field]| {
        for f in fields {
            if let Some(re) = f.valid {
                out.push((re, Regex::new(re).expect("schema regex compiles")));
            }
        }
    };
    add(schema::ETCD2);
    add(schema::LOCKSMITH);
    add(schema::UPDATE);
    add(schema::UNIT);
    add(schema::FILE);
    out
});

fn regex_for(pattern: &str) -> &'static Regex {
    &VALID
        .iter()
        .find(|(p, _)| *p == pattern)
        .expect("every valid pattern of the schema is compiled")
        .1
}

/// Values outside a key's allowed set (errors).
fn check_validity(root: &Node, report: &mut Report) {
    validity(root, 0, None, Ty::Struct(schema::CLOUD_CONFIG), report);
}

fn validity(node: &Node, line: usize, field: Option<&Field>, ty: Ty, report: &mut Report) {
    if let Some(pattern) = field.and_then(|f| f.valid) {
        if compatible(node.kind(), ty) {
            if let Some(text) = node.string().filter(|t| !t.is_empty()) {
                if !regex_for(pattern).is_match(&text) {
                    report.push(Kind::Error, line, format!("invalid value {text}"));
                }
            }
        }
    }
    match (ty, &node.value) {
        (Ty::Struct(fields), Value::Map(entries)) => {
            for entry in entries {
                if let Some(f) = schema::field(fields, &entry.key) {
                    validity(&entry.value, entry.line, Some(f), f.ty, report);
                }
            }
        }
        (Ty::StructSlice(fields), Value::Seq(items)) => {
            for item in items {
                validity(item, item.line, None, Ty::Struct(fields), report);
            }
        }
        _ => {}
    }
}

/// Files cannot be written under /usr, which is read-only on this OS.
fn check_write_files(root: &Node, report: &mut Report) {
    for file in seq_items(entry_value(root, "write_files")) {
        let Some((line, path)) = entry_value(file, "path") else {
            continue;
        };
        let Some(path) = path.string() else {
            continue;
        };
        let dir = go_dir(&path);
        if dir == "/usr" || dir.starts_with("/usr/") {
            report.push(
                Kind::Error,
                line,
                "file cannot be written to a read-only filesystem",
            );
        }
    }
}

/// `coreos.write_files` is a common mistake (info).
fn check_write_files_under_coreos(root: &Node, report: &mut Report) {
    if let Some((_, coreos)) = entry_value(root, "coreos") {
        if let Some((line, v)) = entry_value(coreos, "write_files") {
            if v.kind() != YKind::Invalid {
                report.push(Kind::Info, line, "write_files doesn't belong under coreos");
            }
        }
    }
}

/// Go's `path.Dir`: everything up to the last slash, cleaned.
pub(crate) fn go_dir(path: &str) -> String {
    let dir = match path.rfind('/') {
        Some(i) => &path[..=i],
        None => "",
    };
    go_clean(dir)
}

/// Go's `path.Clean`.
pub(crate) fn go_clean(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Go's `url.ParseRequestURI` succeeds: an absolute URI (`scheme:...`) or an absolute path, with a well-formed
/// authority (bracketed IPv6 closed, numeric port) and valid `%` escapes.
pub(crate) fn is_request_uri(raw: &str) -> bool {
    if raw.is_empty() || raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return false;
    }
    if raw == "*" {
        return true;
    }
    let (scheme, rest) = match split_scheme(raw) {
        Ok(v) => v,
        Err(()) => return false,
    };
    let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
    if !rest.starts_with('/') {
        return !scheme.is_empty();
    }
    let mut path = rest;
    if !scheme.is_empty() && rest.starts_with("//") {
        let after = &rest[2..];
        let (authority, p) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        if !valid_authority(authority) {
            return false;
        }
        path = p;
    }
    valid_escapes(path)
}

fn split_scheme(raw: &str) -> Result<(&str, &str), ()> {
    for (i, c) in raw.char_indices() {
        match c {
            'a'..='z' | 'A'..='Z' => {}
            '0'..='9' | '+' | '-' | '.' if i > 0 => {}
            ':' if i == 0 => return Err(()),
            ':' => return Ok((&raw[..i], &raw[i + 1..])),
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

fn valid_authority(authority: &str) -> bool {
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(inner) = host.strip_prefix('[') {
        let Some(end) = inner.find(']') else {
            return false;
        };
        return valid_port(&inner[end + 1..]) && valid_escapes(&inner[..end]);
    }
    let port = host.rfind(':').map_or("", |i| &host[i..]);
    valid_port(port) && valid_escapes(host)
}

fn valid_port(port: &str) -> bool {
    port.is_empty() || port.strip_prefix(':').is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
}

fn valid_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() {
                return false;
            }
            if !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}
