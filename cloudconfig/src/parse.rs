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
        let v = &entry.value;
        let text = match (field.ty, &v.value) {
            (Ty::Str, _) if is_stringish(v) => v.string(),
            (Ty::Bool, Value::Bool(b)) => Some(b.to_string()),
            (Ty::Int, Value::Int(i)) => Some(i.to_string()),
            (Ty::Float, Value::Int(i)) => Some(go_float(*i as f64)),
            (Ty::Float, Value::Float(f)) => Some(go_float(*f)),
            _ => None,
        };
        // A repeated key: the last usable one wins, as goyaml decodes (a value of the wrong type leaves the field alone).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(text: &str) -> CloudConfig {
        match parse_user_data(text) {
            Ok(UserData::CloudConfig(c)) => c,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn kinds_of_user_data() {
        assert_eq!(parse_user_data(""), Ok(UserData::Empty));
        assert_eq!(
            parse_user_data("#!/bin/sh\necho hi\n"),
            Ok(UserData::Script("#!/bin/sh\necho hi\n".into()))
        );
        let ign = r#"{"ignition":{"version":"2.1.0"}}"#;
        assert_eq!(parse_user_data(ign), Ok(UserData::Ignition(ign.into())));
        assert_eq!(
            parse_user_data("#cloud-config"),
            Ok(UserData::CloudConfig(CloudConfig::default()))
        );
        assert_eq!(
            parse_user_data("#cloud-config \t\n"),
            Ok(UserData::CloudConfig(CloudConfig::default()))
        );
        assert_eq!(
            parse_user_data("hostname: x\n"),
            Err(ParseError {
                line: 1,
                message: BAD_HEADER.into()
            })
        );
        assert_eq!(
            parse_user_data("#cloud-config\nhostname: x\n  bad: indent\n"),
            Err(ParseError {
                line: 3,
                message: "mapping values are not allowed in this context".into()
            })
        );
        assert_eq!(
            parse_user_data("#cloud-config\na:\na")
                .unwrap_err()
                .to_string(),
            "line 3: could not find expected ':'"
        );
    }

    #[test]
    fn full_model() {
        let c = cc(r#"#cloud-config
hostname: core-01
manage-etc-hosts: localhost
ssh_authorized_keys:
  - ssh-ed25519 AAAA one
  - {not: a key}
users:
  - name: elroy
    passwd: $6$hash
    gecos: Elroy Jetson
    homedir: /home/elroy
    no-create-home: yes
    primary-group: users
    groups: [sudo, docker]
    no_user_group: on
    system: false
    no_log_init: true
    shell: /bin/bash
    ssh-authorized-keys: [ssh-rsa BBBB]
  - not a user
write_files:
  - path: /etc/motd
    content: |
      hello
    owner: root:root
    permissions: 0644
  - path: /etc/bin
    encoding: gzip
    content: !!binary H4sIAOC3tVQAA8tIzcnJ5wIAIDA6NgYAAAA=
coreos:
  units:
    - name: etcd2.service
      command: start
      enable: yes
      runtime: no
      mask: off
      drop-ins:
        - name: 50-x.conf
          content: "[Service]\n"
    - name: 10-eth.network
      content: "[Match]\n"
  etcd2:
    name: n1
    listen-client-urls: http://0.0.0.0:2379
    debug: true
    heartbeat_interval: 0x64
    proxy: off
    bogus: ignored
    election_timeout: notanumber
  etcd:
    addr: $public_ipv4:4001
    cluster_remove_delay: 5
  fleet:
    public-ip: 10.0.0.1
    engine_reconcile_interval: 0.5
    metadata: region=us
  flannel:
    interface: eth0
  locksmith:
    window-start: Thu 04:00
  update:
    reboot-strategy: off
    group: stable
    server: http://127.0.0.1/update
  oem:
    id: qemu
    version-id: 1.0
"#);
        assert_eq!(c.hostname.as_deref(), Some("core-01"));
        assert_eq!(c.manage_etc_hosts.as_deref(), Some("localhost"));
        assert_eq!(c.ssh_authorized_keys, vec!["ssh-ed25519 AAAA one"]);
        assert_eq!(c.users.len(), 1);
        let u = &c.users[0];
        assert_eq!(
            u,
            &User {
                name: "elroy".into(),
                passwd: Some("$6$hash".into()),
                gecos: Some("Elroy Jetson".into()),
                homedir: Some("/home/elroy".into()),
                no_create_home: true,
                primary_group: Some("users".into()),
                groups: vec!["sudo".into(), "docker".into()],
                no_user_group: true,
                system: false,
                no_log_init: true,
                shell: Some("/bin/bash".into()),
                ssh_authorized_keys: vec!["ssh-rsa BBBB".into()],
            }
        );
        assert_eq!(c.write_files.len(), 2);
        let motd = &c.write_files[0];
        assert_eq!(
            (motd.path.as_str(), motd.content.as_str()),
            ("/etc/motd", "hello\n")
        );
        assert_eq!(motd.permissions.as_deref(), Some("0644"));
        assert_eq!(motd.mode(), Ok(Some(0o644)));
        assert_eq!(motd.owner.as_deref(), Some("root:root"));
        let bin = &c.write_files[1];
        // !!binary gzip bytes are not UTF-8: kept as base64 text with the encoding widened to gzip+base64.
        assert_eq!(bin.encoding.as_deref(), Some("gzip+base64"));
        assert_eq!(bin.decoded_content().unwrap(), b"hello\n");
        let units = &c.coreos.units;
        assert_eq!(units.len(), 2);
        assert_eq!(
            units[0],
            Unit {
                name: "etcd2.service".into(),
                runtime: false,
                enable: true,
                content: None,
                command: Some("start".into()),
                mask: false,
                drop_ins: vec![DropIn {
                    name: "50-x.conf".into(),
                    content: "[Service]\n".into()
                }],
            }
        );
        assert!(!units[0].is_network_unit());
        assert!(units[1].is_network_unit());
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            c.coreos.etcd2,
            m(&[
                ("name", "n1"),
                ("listen_client_urls", "http://0.0.0.0:2379"),
                ("debug", "true"),
                ("heartbeat_interval", "100"),
                ("proxy", "off"),
            ])
        );
        assert_eq!(
            c.coreos.etcd,
            m(&[("addr", "$public_ipv4:4001"), ("cluster_remove_delay", "5")])
        );
        assert_eq!(
            c.coreos.fleet,
            m(&[
                ("public_ip", "10.0.0.1"),
                ("engine_reconcile_interval", "0.5"),
                ("metadata", "region=us")
            ])
        );
        assert_eq!(c.coreos.flannel, m(&[("interface", "eth0")]));
        assert_eq!(c.coreos.locksmith, m(&[("window_start", "Thu 04:00")]));
        assert_eq!(
            c.coreos.update,
            Update {
                reboot_strategy: Some("off".into()),
                group: Some("stable".into()),
                server: Some("http://127.0.0.1/update".into()),
            }
        );
        assert_eq!(c.coreos.oem, m(&[("id", "qemu"), ("version_id", "1.0")]));
        assert_eq!(
            crate::environment("etcd2", &c.coreos.etcd2),
            vec![
                ("ETCD_DEBUG".to_string(), "true".to_string()),
                ("ETCD_HEARTBEAT_INTERVAL".into(), "100".into()),
                (
                    "ETCD_LISTEN_CLIENT_URLS".into(),
                    "http://0.0.0.0:2379".into()
                ),
                ("ETCD_NAME".into(), "n1".into()),
                ("ETCD_PROXY".into(), "off".into()),
            ]
        );
    }

    #[test]
    fn dashes_and_underscores_are_the_same_key() {
        let a = cc("#cloud-config\nwrite-files:\n  - path: /a\ncoreos:\n  units:\n    - name: x\n      drop-ins:\n        - name: d\n");
        let b = cc("#cloud-config\nwrite_files:\n  - path: /a\ncoreos:\n  units:\n    - name: x\n      drop_ins:\n        - name: d\n");
        assert_eq!(a, b);
        assert_eq!(a.write_files[0].path, "/a");
        assert_eq!(a.coreos.units[0].drop_ins[0].name, "d");
    }

    #[test]
    fn wrong_types_are_left_out_as_coreos_cloudinit_does() {
        let c = cc("#cloud-config\nhostname: [a]\nusers: bad\ncoreos:\n  units:\n    - name: 42\n      enable: \"true\"\n  etcd2: nope\n");
        assert_eq!(c.hostname, None);
        assert!(c.users.is_empty());
        assert_eq!(c.coreos.units[0].name, "42");
        assert!(!c.coreos.units[0].enable);
        assert!(c.coreos.etcd2.is_empty());
    }

    #[test]
    fn repeated_keys_last_wins() {
        let c = cc("#cloud-config\nhostname: a\nhostname: b\ncoreos:\n  etcd2:\n    name: x\n    name: y\n");
        assert_eq!(c.hostname.as_deref(), Some("b"));
        assert_eq!(c.coreos.etcd2.get("name").map(String::as_str), Some("y"));
    }

    #[test]
    fn go_float_formatting() {
        for (f, s) in [
            (0.5, "0.5"),
            (5.0, "5"),
            (1e21, "1e+21"),
            (0.00001, "1e-05"),
            (-2.25, "-2.25"),
            (0.0, "0"),
        ] {
            assert_eq!(go_float(f), s);
        }
    }
}
