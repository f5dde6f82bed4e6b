//! The validator: `coreos-cloudinit -validate`'s rules and wording (YAML syntax, unknown keys, types, allowed values,
//! content encodings, read-only /usr, etcd discovery URL, write_files under coreos), each finding with its 1-based line.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::decode;
use crate::names::{self, NameError};
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
                check_names(&root, &mut report);
                report.findings.sort_by_key(|f| f.line);
            }
        },
    }
    report
}

fn entry_value<'n>(node: &'n Node, key: &str) -> Option<(usize, &'n Node)> {
    node.get(key).map(|e| (e.line, &e.value))
}

fn seq_items(node: Option<(usize, &Node)>) -> &[Node] {
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
    structure(
        root,
        "",
        root.line,
        Ty::Struct(schema::CLOUD_CONFIG),
        report,
    );
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
    add(schema::FLEET);
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

/// The hostname and the user and group names (errors): what reaches
/// /etc/hostname, /etc/hosts, `useradd` and `usermod` must be a name, never
/// an option or a line break (not a coreos-cloudinit rule: cairn's own).
/// `$private_ipv4`-style variables in the hostname stand for a label here;
/// the agent checks the substituted name again.
fn check_names(root: &Node, report: &mut Report) {
    let mut check =
        |field: &str, line: usize, node: &Node, rule: fn(&str) -> Result<(), NameError>| {
            if !compatible(node.kind(), Ty::Str) {
                return; // a type warning already
            }
            let Some(text) = node.string().filter(|t| !t.is_empty()) else {
                return;
            };
            let checked = if field == "hostname" {
                crate::substitute::VARIABLES
                    .iter()
                    .fold(text.clone(), |t, v| t.replace(v, "0"))
            } else {
                text.clone()
            };
            if let Err(why) = rule(&checked) {
                report.push(Kind::Error, line, name_finding(field, &text, &why));
            }
        };
    if let Some((line, h)) = entry_value(root, "hostname") {
        check("hostname", line, h, names::check_hostname);
    }
    for (i, user) in seq_items(entry_value(root, "users")).iter().enumerate() {
        if let Some((line, n)) = entry_value(user, "name") {
            check(
                &format!("users[{i}].name"),
                line,
                n,
                names::check_account_name,
            );
        }
        if let Some((line, g)) = entry_value(user, "primary_group") {
            check(
                &format!("users[{i}].primary_group"),
                line,
                g,
                names::check_group,
            );
        }
        for (j, g) in seq_items(entry_value(user, "groups")).iter().enumerate() {
            check(
                &format!("users[{i}].groups[{j}]"),
                g.line,
                g,
                names::check_group,
            );
        }
    }
}

/// The message of a refused name: `invalid value "-x" for "users[0].name": starts with '-'`.
pub(crate) fn name_finding(field: &str, text: &str, why: &NameError) -> String {
    format!("invalid value {text:?} for {field:?}: {why}")
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
    port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Validate `#cloud-config\n` + `body` and compare with `want`, whose lines count from the body's first line
    /// (as in coreos-cloudinit's own tests, which have no header line): the header shifts each by one.
    fn check(body: &str, want: &[(Kind, &str, usize)]) {
        let report = validate(&format!("#cloud-config\n{body}"));
        let got: Vec<(Kind, &str, usize)> = report
            .findings
            .iter()
            .map(|f| (f.kind, f.message.as_str(), f.line - 1))
            .collect();
        assert_eq!(got, want, "findings for {body:?}");
    }

    use Kind::{Error as E, Info as I, Warning as W};

    #[test]
    fn header_kinds() {
        assert!(validate("").is_empty());
        assert!(validate("#!/bin/bash\necho hey").is_empty());
        assert!(validate(r#"{"ignitionVersion":1}"#).is_empty());
        assert!(validate(r#"{"ignition":{"version":"2.0.0"}}"#).is_empty());
        assert!(validate("#cloud-config").is_empty());
        assert!(validate("#cloud-config  \r\nhostname: a").is_empty());
        for bad in [
            "{}",
            " ",
            "#cloud-config-x\n",
            "hostname: a\n#cloud-config",
            r#"{"ignitionVersion":"1"}"#,
        ] {
            let r = validate(bad);
            assert_eq!(
                r.findings,
                vec![Finding {
                    kind: E,
                    message: BAD_HEADER.into(),
                    line: 1
                }],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn yaml_syntax_errors_carry_their_line() {
        check(
            "\t",
            &[(E, "found character that cannot start any token", 1)],
        );
        check(
            "hostname: a\n\t# note",
            &[(E, "found character that cannot start any token", 2)],
        );
        check("a:\na", &[(E, "could not find expected ':'", 2)]);
        check("#hello\na:\na", &[(E, "could not find expected ':'", 3)]);
        check(
            "a: `b",
            &[(E, "found character that cannot start any token", 1)],
        );
        check(
            "hostname: a\noem:\n  id: @@OEM_ID@@\n",
            &[(E, "found character that cannot start any token", 3)],
        );
        check(
            "a: b\n c: d",
            &[(E, "mapping values are not allowed in this context", 2)],
        );
        check(
            "coreos:\n  etcd2:\n    name: {{NAME}}\n",
            &[(
                E,
                "invalid map key: a mapping key must be a scalar, not a collection",
                3,
            )],
        );
    }

    #[test]
    fn permissions_and_strategy_as_goyaml_reads_them() {
        check("write_files:\n  - permissions: 0744", &[]);
        check("write_files:\n  - permissions: '0744'", &[]);
        check("write_files:\n  - permissions: 744", &[]);
        check("write_files:\n  - permissions: '744'", &[]);
        check(
            "write_files:\n  - permissions: 0744a",
            &[(E, "invalid value 0744a", 2)],
        );
        check(
            "write_files:\n  - permissions: 077777",
            &[(E, "invalid value 077777", 2)],
        );
        check("coreos:\n  update:\n    reboot-strategy: off", &[]);
        check("coreos:\n  update:\n    reboot-strategy: \"off\"", &[]);
        check(
            "coreos:\n  update:\n    reboot-strategy: false",
            &[(E, "invalid value false", 3)],
        );
        check(
            "coreos:\n  update:\n    reboot-strategy: best-effort",
            &[(E, "invalid value best-effort", 3)],
        );
        check(
            "coreos:\n  update:\n    reboot-strategy: ${strategy}",
            &[(E, "invalid value ${strategy}", 3)],
        );
    }

    #[test]
    fn discovery_url() {
        check("coreos:\n  etcd2:\n    discovery: https://discovery.example/00000000000000000000000000000000", &[]);
        check(
            "coreos:\n  etcd2:\n    discovery: http://custom.domain/mytoken",
            &[],
        );
        check(
            "coreos:\n  etcd2:\n    discovery: /relative/is/a/request/uri",
            &[],
        );
        check(
            "coreos:\n  etcd2:\n    discovery: disco",
            &[(W, "discovery URL is not valid", 3)],
        );
        check(
            "coreos:\n  etcd2:\n    discovery: ${url}",
            &[(W, "discovery URL is not valid", 3)],
        );
        check(
            "coreos:\n  etcd2:\n    discovery: \"http://[::1/x\"",
            &[(W, "discovery URL is not valid", 3)],
        );
        check(
            "coreos:\n  etcd2:\n    discovery: http://host:port/x",
            &[(W, "discovery URL is not valid", 3)],
        );
        check(
            "coreos:\n  etcd2:\n    discovery: http://host/%zz",
            &[(W, "discovery URL is not valid", 3)],
        );
        check(
            "coreos:\n  etcd2:\n    discovery: \":nope\"",
            &[(W, "discovery URL is not valid", 3)],
        );
        check(
            "coreos:\n  etcd:\n    discovery: disco",
            &[
                (
                    W,
                    "deprecated key \"etcd\" (etcd 0.4 options; cairn runs etcd 3, configure it with etcd2)",
                    2,
                ),
                (W, "discovery URL is not valid", 3),
            ],
        );
    }

    #[test]
    fn encodings() {
        let gz = "H4sIAOC3tVQAA8tIzcnJ5wIAIDA6NgYAAAA=";
        check(
            "write_files:\n  - encoding: base64\n    content: aGVsbG8K",
            &[],
        );
        check("write_files:\n  - content: !!binary aGVsbG8K", &[]);
        check(
            "write_files:\n  - encoding: base64\n    content: !!binary aGVsbG8K",
            &[(E, "content cannot be decoded as \"base64\"", 3)],
        );
        check(
            "write_files:\n  - encoding: base64\n    content: !!binary YUdWc2JHOEsK",
            &[],
        );
        check(
            &format!("write_files:\n  - encoding: gzip\n    content: !!binary {gz}"),
            &[],
        );
        for enc in ["gz+base64", "gzip+base64", "gz+b64", "gzip+b64"] {
            check(
                &format!("write_files:\n  - encoding: {enc}\n    content: {gz}"),
                &[],
            );
        }
        check(
            "write_files:\n  - encoding: custom\n    content: hello",
            &[
                (E, "invalid value custom", 2),
                (E, "content cannot be decoded as \"custom\"", 3),
            ],
        );
        check(
            "write_files:\n  - encoding: b64\n    content: \"not base64!\"",
            &[(E, "content cannot be decoded as \"b64\"", 3)],
        );
        check(
            "write_files:\n  - encoding: gz\n    content: plain text",
            &[(E, "content cannot be decoded as \"gz\"", 3)],
        );
        check(
            "write_files:\n  - path: /x\n    encoding: gzip",
            &[(E, "content cannot be decoded as \"gzip\"", 3)],
        );
    }

    #[test]
    fn structure() {
        check("test:", &[(W, "unrecognized key \"test\"", 1)]);
        check("foo-bar: 1", &[(W, "unrecognized key \"foo_bar\"", 1)]);
        check(
            "coreos:\n  flannel:\n    bad:",
            &[(W, "unrecognized key \"bad\"", 3)],
        );
        check("coreos:\n  flannel:\n    interface: good", &[]);
        check(
            "coreos:\n  etcd:\n    proxy: hi",
            &[
                (
                    W,
                    "deprecated key \"etcd\" (etcd 0.4 options; cairn runs etcd 3, configure it with etcd2)",
                    2,
                ),
                (
                    W,
                    "deprecated key \"proxy\" (etcd2 options no longer work for etcd)",
                    3,
                ),
            ],
        );
        check(
            "coreos:\n  units:\n    - hello\n    - goodbye",
            &[
                (W, "incorrect type for \"units[0]\" (want struct)", 3),
                (W, "incorrect type for \"units[1]\" (want struct)", 4),
            ],
        );
        check("coreos:\n  units:\n    - enable: true", &[]);
        for v in ["4", "bad", "\n        bad:", "\n      - bad", "\"true\""] {
            check(
                &format!("coreos:\n  units:\n    - enable: {v}"),
                &[(W, "incorrect type for \"enable\" (want bool)", 3)],
            );
        }
        for v in ["true", "4", "host", "4.5", "'quoted'"] {
            check(&format!("hostname: {v}"), &[]);
        }
        check(
            "hostname:\n  name:",
            &[(W, "incorrect type for \"hostname\" (want string)", 1)],
        );
        check(
            "hostname:\n  - name",
            &[(W, "incorrect type for \"hostname\" (want string)", 1)],
        );
        check(
            "hostname:",
            &[(W, "incorrect type for \"hostname\" (want string)", 1)],
        );
        for v in ["true", "4", "hello", "\n  - hello"] {
            check(
                &format!("coreos: {v}"),
                &[(W, "incorrect type for \"coreos\" (want struct)", 1)],
            );
        }
        for v in ["true", "4", "key", "\n  key: value"] {
            check(
                &format!("ssh_authorized_keys: {v}"),
                &[(
                    W,
                    "incorrect type for \"ssh_authorized_keys\" (want []string)",
                    1,
                )],
            );
        }
        check("ssh_authorized_keys:\n  - key", &[]);
        check(
            "ssh_authorized_keys:\n  - key: value",
            &[(
                W,
                "incorrect type for \"ssh_authorized_keys[0]\" (want string)",
                2,
            )],
        );
        for v in ["true", "4", "bad", "bad:"] {
            check(
                &format!("users:\n  {v}"),
                &[(W, "incorrect type for \"users\" (want []struct)", 1)],
            );
        }
        check("users:\n  - name: good", &[]);
        for v in ["true", "4", "bad", "- bad"] {
            check(
                &format!("users:\n  - {v}"),
                &[(W, "incorrect type for \"users[0]\" (want struct)", 2)],
            );
        }
        check(
            "users:\n  - name: hi\n  - true",
            &[(W, "incorrect type for \"users[1]\" (want struct)", 3)],
        );
        check(
            "coreos:\n  fleet:\n    verbosity: 2\n    metadata: \"role=web, region=eu\"\n    public-ip: 10.0.0.7\n    agent_ttl: 1m30s\n    etcd_servers: http://127.0.0.1:2379,http://10.0.0.1:2379/\n    etcd_key_prefix: /cairn/fleet/\n    engine_reconcile_interval: 0.5\n    etcd_servers: https://10.0.0.1:2379\n    etcd_cafile: /etc/ssl/etcd/ca.pem",
            &[],
        );
        check(
            "coreos:\n  fleet:\n    verbosity: 3\n    metadata: role\n    public_ip: somewhere\n    agent-ttl: 30\n    etcd_servers: ftp://10.0.0.1:2379\n    etcd_key_prefix: cairn\n    etcd_cafile: ca.pem\n    etcd_password: secret",
            &[
                (E, "invalid value 3", 3),
                (E, "invalid value role", 4),
                (E, "invalid value somewhere", 5),
                (E, "invalid value 30", 6),
                (E, "invalid value ftp://10.0.0.1:2379", 7),
                (E, "invalid value cairn", 8),
                (E, "invalid value ca.pem", 9),
                (W, "deprecated key \"etcd_password\" (cairn's fleetd does not support etcd passwords (use TLS client certificates): fleet.service refuses to start with them)", 10),
            ],
        );
        check(
            "coreos:\n  locksmith:\n    group: x\n  etcd2:\n    snapshot-count: 1.5\n    heartbeat-interval: 100",
            &[
                (W, "incorrect type for \"snapshot_count\" (want int)", 5),
            ],
        );
        check(
            "users:\n  - name: core\n    coreos-ssh-import-github: someone",
            &[(W, "deprecated key \"coreos_ssh_import_github\" (trying to fetch from a remote endpoint introduces too many intermittent errors)", 3)],
        );
        check(
            "- a\n- b",
            &[(W, "incorrect type for the document (want struct)", 1)],
        );
    }

    #[test]
    fn yaml11_booleans_for_bool_fields_and_text_for_string_fields() {
        for v in ["yes", "no", "on", "off", "y", "n", "True", "FALSE"] {
            check(&format!("coreos:\n  units:\n    - name: a.service\n      mask: {v}\n      runtime: {v}\n      enable: {v}"), &[]);
        }
        check("coreos:\n  etcd2:\n    proxy: on \n", &[]);
        check("coreos:\n  etcd2:\n    proxy: readonly", &[]);
        check(
            "coreos:\n  etcd2:\n    proxy: yes",
            &[(E, "invalid value yes", 3)],
        );
    }

    #[test]
    fn validity() {
        check("hostname: test", &[]);
        check(
            "coreos:\n  units:\n    - command: start\n    - name: stop",
            &[],
        );
        check(
            "coreos:\n  units:\n    - command: lol",
            &[(E, "invalid value lol", 3)],
        );
        check("coreos:\n  units:\n    - command: \"\"", &[]);
        for cmd in crate::UNIT_COMMANDS {
            check(&format!("coreos:\n  units:\n    - command: {cmd}"), &[]);
        }
        check(
            "coreos:\n  update:\n    reboot_strategy: always",
            &[(E, "invalid value always", 3)],
        );
        for s in ["etcd-lock", "reboot", "off"] {
            check(
                &format!("coreos:\n  update:\n    reboot_strategy: {s}"),
                &[],
            );
        }
        check("unknown: hi", &[(W, "unrecognized key \"unknown\"", 1)]);
        check(
            "coreos:\n  locksmith:\n    window-start: Thu 04:00\n    window-length: 1h30m",
            &[],
        );
        check(
            "coreos:\n  locksmith:\n    window-start: 23:59\n    window-length: 1h",
            &[],
        );
        check(
            "coreos:\n  locksmith:\n    window-start: Someday 04:00\n    window-length: 1 hour",
            &[
                (E, "invalid value Someday 04:00", 3),
                (E, "invalid value 1 hour", 4),
            ],
        );
        check("write_files:\n  - encoding: gzip+base64\n    content: H4sIAOC3tVQAA8tIzcnJ5wIAIDA6NgYAAAA=", &[]);
    }

    #[test]
    fn write_files_paths() {
        check("write_files:\n  - path: /valid", &[]);
        check("write_files:\n  - path: /tmp/usr/valid", &[]);
        check("write_files:\n  - path: /usrlocal/valid", &[]);
        check(
            "write_files:\n  - path: /usr/invalid",
            &[(E, "file cannot be written to a read-only filesystem", 2)],
        );
        check(
            "write_files:\n  - path: /usr/share/a/b",
            &[(E, "file cannot be written to a read-only filesystem", 2)],
        );
        check(
            "write-files:\n  - path: /tmp/../usr/invalid",
            &[(E, "file cannot be written to a read-only filesystem", 2)],
        );
        check(
            "write_files:\n  - path: /etc/a\n  - path: /usr/b",
            &[(E, "file cannot be written to a read-only filesystem", 3)],
        );
    }

    #[test]
    fn hostnames_and_account_names() {
        check("hostname: node-1.example.com", &[]);
        check("hostname: node-$private_ipv4", &[]);
        check(
            "hostname: --help",
            &[(
                E,
                r#"invalid value "--help" for "hostname": starts with '-'"#,
                1,
            )],
        );
        check(
            "hostname: \"a\\n127.0.0.1 evil\"",
            &[(
                E,
                r#"invalid value "a\n127.0.0.1 evil" for "hostname": character '\n' is not allowed"#,
                1,
            )],
        );
        check(
            "hostname: a_b",
            &[(
                E,
                r#"invalid value "a_b" for "hostname": character '_' is not allowed"#,
                1,
            )],
        );
        check(
            "users:\n  - name: core\n    primary_group: 500\n    groups: [sudo, docker, 999]",
            &[],
        );
        check(
            "users:\n  - name: core\n  - name: -oops\n    primary_group: --root=/x\n    groups:\n      - sudo\n      - \"a,b\"",
            &[
                (E, r#"invalid value "-oops" for "users[1].name": starts with '-'"#, 3),
                (
                    E,
                    r#"invalid value "--root=/x" for "users[1].primary_group": starts with '-'"#,
                    4,
                ),
                (
                    E,
                    r#"invalid value "a,b" for "users[1].groups[1]": character ',' is not allowed"#,
                    7,
                ),
            ],
        );
        // a wrong type is a warning only, not also a name error
        check(
            "hostname:\n  - a",
            &[(W, "incorrect type for \"hostname\" (want string)", 1)],
        );
    }

    #[test]
    fn alias_bombs_are_an_error_at_the_alias() {
        let bomb = crate::yaml::tests::billion_laughs();
        let report = validate(&bomb);
        assert_eq!(
            format_findings("bomb.yaml", &report),
            "bomb.yaml:7: error: excessive aliasing: aliases expand to more than 100000 nodes (an alias bomb?)\n"
        );
        let e = crate::parse_user_data(&bomb).unwrap_err();
        assert_eq!(e.line, 7);
        assert!(e.message.starts_with("excessive aliasing"), "{e:?}");
        check(
            "base: &u\n  name: core\nusers:\n  - *u\n",
            &[(W, "unrecognized key \"base\"", 1)],
        );
    }

    #[test]
    fn write_files_under_coreos() {
        check("write_files:\n  - path: /hi", &[]);
        for key in ["write_files", "write-files"] {
            check(
                &format!("coreos:\n  {key}:\n    - path: /hi"),
                &[
                    (W, "unrecognized key \"write_files\"", 2),
                    (I, "write_files doesn't belong under coreos", 2),
                ],
            );
        }
    }

    #[test]
    fn findings_are_ordered_by_line() {
        check(
            "zzz: 1\ncoreos:\n  units:\n    - command: lol\naaa: 2",
            &[
                (W, "unrecognized key \"zzz\"", 1),
                (E, "invalid value lol", 4),
                (W, "unrecognized key \"aaa\"", 5),
            ],
        );
    }

    #[test]
    fn go_path_helpers() {
        for (path, dir) in [
            ("/usr/invalid", "/usr"),
            ("/tmp/../usr/invalid", "/usr"),
            ("/usr", "/"),
            ("relative/x", "relative"),
            ("x", "."),
            ("//a//b/", "/a/b"),
        ] {
            assert_eq!(go_dir(path), dir, "{path}");
        }
    }

    #[test]
    fn report_json_and_text() {
        let report = validate("#cloud-config\ncoreos:\n  units:\n    - command: lol\nfoo: 1\n");
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"[{"kind":"error","message":"invalid value lol","line":4},{"kind":"warning","message":"unrecognized key \"foo\"","line":5}]"#
        );
        assert_eq!(
            format_findings("user-data", &report),
            "user-data:4: error: invalid value lol\nuser-data:5: warning: unrecognized key \"foo\"\n"
        );
        assert_eq!(
            report.findings[0].to_string(),
            "line 4: error: invalid value lol"
        );
        assert!(report.has_errors());
        assert!(!report.is_empty());
        assert_eq!(serde_json::to_string(&Report::default()).unwrap(), "[]");
        assert_eq!(format_findings("f", &Report::default()), "");
        let info_only = validate("#cloud-config\ncoreos:\n  write_files: []\n");
        assert!(!info_only.has_errors());
        assert_eq!(
            serde_json::to_value(&info_only.findings[1]).unwrap()["kind"],
            "info"
        );
    }
}
