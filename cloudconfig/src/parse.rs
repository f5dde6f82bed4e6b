//! `parse_user_data`: what kind of user-data a text is, and the typed [`CloudConfig`] read from the same tree the validator checks.

use std::collections::BTreeMap;

use crate::model::{
    CloudConfig, Coreos, DropIn, ParseError, Unit, Update, User, UserData, WriteFile,
};
use crate::schema::{self, Field, Ty};
use crate::yaml::{self, Kind, Node, Value};

/// The message coreos-cloudinit gives for a file that is neither a cloud-config nor a script.
pub(crate) const BAD_HEADER: &str = r##"must be "#cloud-config" or begin with "#!""##;

/// What the first line (and for Ignition, the whole text) says the user-data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    Empty,
    Script,
    Ignition,
    CloudConfig,
    Unknown,
}

pub(crate) fn classify(text: &str) -> Header {
    if text.is_empty() {
        return Header::Empty;
    }
    let first = text.split('\n').next().unwrap_or("");
    if first.starts_with("#!") {
        Header::Script
    } else if is_ignition(text) {
        Header::Ignition
    } else if first.trim_end() == "#cloud-config" {
        Header::CloudConfig
    } else {
        Header::Unknown
    }
}

/// coreos-cloudinit's IsIgnitionConfig: JSON with an integer `ignitionVersion` or a string `ignition.version`.
fn is_ignition(text: &str) -> bool {
    if !text.trim_start().starts_with('{') {
        return false;
    }
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    let legacy = obj.get("ignitionVersion");
    if legacy.is_some_and(|v| !v.is_null() && !v.is_i64() && !v.is_u64()) {
        return false;
    }
    let version = match obj.get("ignition") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(ign)) => match ign.get("version") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(_)) => Some(()),
            Some(_) => return false,
        },
        Some(_) => return false,
    };
    legacy.is_some_and(|v| !v.is_null()) || version.is_some()
}

/// Parse user-data (after substitution, if any).
///
/// A `#cloud-config` is read like coreos-cloudinit reads it: keys with dashes are the same as with underscores,
/// values of the wrong type are left out (the validator warns about them), string fields get the text as written
/// (`reboot-strategy: off` is "off", `permissions: 0644` is "0644"), booleans follow YAML 1.1 (`yes`, `on`, ...).
/// Only malformed YAML or an unknown header is an error; run [`crate::validate`] for the rest.
pub fn parse_user_data(text: &str) -> Result<UserData, ParseError> {
    match classify(text) {
        Header::Empty => Ok(UserData::Empty),
        Header::Script => Ok(UserData::Script(text.to_string())),
        Header::Ignition => Ok(UserData::Ignition(text.to_string())),
        Header::Unknown => Err(ParseError {
            line: 1,
            message: BAD_HEADER.to_string(),
        }),
        Header::CloudConfig => {
            let root = yaml::parse(text).map_err(|e| ParseError {
                line: e.line,
                message: e.message,
            })?;
            Ok(UserData::CloudConfig(cloud_config(&root)))
        }
    }
}

fn cloud_config(root: &Node) -> CloudConfig {
    CloudConfig {
        hostname: string(root, "hostname"),
        ssh_authorized_keys: strings(root, "ssh_authorized_keys"),
        users: maps(root, "users").map(user).collect(),
        write_files: maps(root, "write_files").map(write_file).collect(),
        manage_etc_hosts: string(root, "manage_etc_hosts"),
        coreos: root
            .get("coreos")
            .filter(|e| e.value.kind() == Kind::Map)
            .map(|e| coreos(&e.value))
            .unwrap_or_default(),
    }
}

fn coreos(node: &Node) -> Coreos {
    let section = |name: &str| {
        let fields = schema::coreos_section(name).expect("known section");
        node.get(name)
            .map(|e| settings(&e.value, fields))
            .unwrap_or_default()
    };
    let update = node
        .get("update")
        .map(|e| Update {
            reboot_strategy: string(&e.value, "reboot_strategy"),
            group: string(&e.value, "group"),
            server: string(&e.value, "server"),
        })
        .unwrap_or_default();
    Coreos {
        units: maps(node, "units").map(unit).collect(),
        etcd2: section("etcd2"),
        etcd: section("etcd"),
        fleet: section("fleet"),
        flannel: section("flannel"),
        locksmith: section("locksmith"),
        update,
        oem: section("oem"),
    }
}

fn user(node: &Node) -> User {
    User {
        name: string(node, "name").unwrap_or_default(),
        passwd: string(node, "passwd"),
        gecos: string(node, "gecos"),
        homedir: string(node, "homedir"),
        no_create_home: boolean(node, "no_create_home"),
        primary_group: string(node, "primary_group"),
        groups: strings(node, "groups"),
        no_user_group: boolean(node, "no_user_group"),
        system: boolean(node, "system"),
        no_log_init: boolean(node, "no_log_init"),
        shell: string(node, "shell"),
        ssh_authorized_keys: strings(node, "ssh_authorized_keys"),
    }
}

fn write_file(node: &Node) -> WriteFile {
    let mut encoding = string(node, "encoding");
    let content = match node.get("content").map(|e| &e.value) {
        // A `!!binary` scalar is already decoded by YAML; keep non-UTF-8 bytes representable by re-encoding them.
        Some(Node {
            value: Value::Binary(bytes),
            text,
            ..
        }) => match String::from_utf8(bytes.clone()) {
            Ok(s) => s,
            Err(_) => {
                encoding = Some(match encoding.as_deref() {
                    None | Some("") => "base64".to_string(),
                    Some("gz" | "gzip") => "gzip+base64".to_string(),
                    Some(other) => other.to_string(),
                });
                text.split_whitespace().collect()
            }
        },
        Some(n) if is_stringish(n) => n.string().unwrap_or_default(),
        _ => String::new(),
    };
    WriteFile {
        path: string(node, "path").unwrap_or_default(),
        content,
        owner: string(node, "owner"),
        permissions: string(node, "permissions"),
        encoding,
    }
}

fn unit(node: &Node) -> Unit {
    Unit {
        name: string(node, "name").unwrap_or_default(),
        runtime: boolean(node, "runtime"),
        enable: boolean(node, "enable"),
        content: string(node, "content"),
        command: string(node, "command"),
        mask: boolean(node, "mask"),
        drop_ins: maps(node, "drop_ins")
            .map(|d| DropIn {
                name: string(d, "name").unwrap_or_default(),
                content: string(d, "content").unwrap_or_default(),
            })
            .collect(),
    }
}

/// A settings section: known keys whose value has a usable type, as coreos-cloudinit would print them.
fn settings(node: &Node, fields: &'static [Field]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Value::Map(entries) = &node.value else {
        return out;
    };
    for entry in entries {
        let Some(field) = schema::field(fields, &entry.key) else {
            continue;
        };
        if out.contains_key(field.name) {
            continue;
        }
        let v = &entry.value;
        let text = match (field.ty, &v.value) {
            (Ty::Str, _) if is_stringish(v) => v.string(),
            (Ty::Bool, Value::Bool(b)) => Some(b.to_string()),
            (Ty::Int, Value::Int(i)) => Some(i.to_string()),
            (Ty::Float, Value::Int(i)) => Some(go_float(*i as f64)),
            (Ty::Float, Value::Float(f)) => Some(go_float(*f)),
            _ => None,
        };
        if let Some(text) = text {
            out.insert(field.name.to_string(), text);
        }
    }
    out
}

/// Go's `%v` of a float64.
pub(crate) fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let abs = f.abs();
    if abs == 0.0 || (1e-4..1e21).contains(&abs) {
        return format!("{f}");
    }
    let s = format!("{f:e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let (sign, digits) = match exp.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exp),
    };
    format!("{mantissa}e{sign}{digits:0>2}")
}

/// A scalar a Go string field accepts (string, number or boolean).
fn is_stringish(n: &Node) -> bool {
    matches!(
        n.kind(),
        Kind::String | Kind::Int | Kind::Float | Kind::Bool
    )
}

fn string(node: &Node, key: &str) -> Option<String> {
    node.get(key)
        .map(|e| &e.value)
        .filter(|v| is_stringish(v))
        .and_then(Node::string)
}

fn boolean(node: &Node, key: &str) -> bool {
    matches!(
        node.get(key).map(|e| &e.value.value),
        Some(Value::Bool(true))
    )
}

fn strings(node: &Node, key: &str) -> Vec<String> {
    match node.get(key).map(|e| &e.value.value) {
        Some(Value::Seq(items)) => items
            .iter()
            .filter(|i| is_stringish(i))
            .filter_map(Node::string)
            .collect(),
        _ => Vec::new(),
    }
}

fn maps<'n>(node: &'n Node, key: &str) -> impl Iterator<Item = &'n Node> {
    let items: &[Node] = match node.get(key).map(|e| &e.value.value) {
        Some(Value::Seq(items)) => items,
        _ => &[],
    };
    items.iter().filter(|i| i.kind() == Kind::Map)
}
