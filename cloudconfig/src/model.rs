//! The typed cloud-config model: what a user-data file is and what a cloud-config says, field for field as coreos-cloudinit's config package.

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;

/// What a user-data file is.
// One value per boot, matched by callers: no Box, so that `UserData::CloudConfig(c)` patterns stay plain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum UserData {
    /// First line is `#cloud-config` (trailing white space allowed).
    CloudConfig(CloudConfig),
    /// First line starts with `#!`: the whole text, to be run as a script.
    Script(String),
    /// A JSON Ignition config (`ignitionVersion` or `ignition.version`); coreos-cloudinit leaves these alone.
    Ignition(String),
    /// Zero bytes.
    Empty,
}

/// A user-data file that could not be parsed: the YAML is malformed, or the header is neither `#cloud-config` nor `#!`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line of the problem.
    pub line: usize,
    /// What is wrong, in coreos-cloudinit's (libyaml's) words where it has them.
    pub message: String,
}

/// A parsed `#cloud-config` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CloudConfig {
    pub hostname: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub users: Vec<User>,
    pub write_files: Vec<WriteFile>,
    /// `"localhost"` is the only value coreos-cloudinit acts on.
    pub manage_etc_hosts: Option<String>,
    pub coreos: Coreos,
}

/// One entry of `users`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct User {
    pub name: String,
    pub passwd: Option<String>,
    pub gecos: Option<String>,
    pub homedir: Option<String>,
    pub no_create_home: bool,
    pub primary_group: Option<String>,
    pub groups: Vec<String>,
    pub no_user_group: bool,
    pub system: bool,
    pub no_log_init: bool,
    pub shell: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
}

/// One entry of `write_files`. `content` is as written (still encoded); see [`WriteFile::decoded_content`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WriteFile {
    pub path: String,
    pub content: String,
    pub owner: Option<String>,
    /// Octal text as written: "0644", "644", "0755".
    pub permissions: Option<String>,
    /// base64, b64, gz, gzip, gz+base64, gzip+base64, gz+b64, gzip+b64.
    pub encoding: Option<String>,
}

/// `content` could not be decoded with the file's `encoding`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("unsupported encoding {0:?} (expected base64, b64, gz, gzip, gz+base64, gzip+base64, gz+b64 or gzip+b64)")]
    UnsupportedEncoding(String),
    #[error("content is not valid base64: {0}")]
    Base64(String),
    #[error("content is not valid gzip: {0}")]
    Gzip(String),
    #[error("gzip content decompresses to more than {limit} bytes (the most cairn accepts)")]
    TooLarge { limit: u64 },
}

/// `permissions` is not an octal file mode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("permissions {text:?} is not an octal file mode (expected e.g. \"0644\" or \"755\")")]
pub struct ModeError {
    pub text: String,
}

impl WriteFile {
    /// The bytes to write: `content` decoded according to `encoding`.
    pub fn decoded_content(&self) -> Result<Vec<u8>, DecodeError> {
        crate::decode::decode_content(&self.content, self.encoding.as_deref().unwrap_or(""))
    }

    /// The file mode from `permissions`, parsed as octal like coreos-cloudinit (`"0644"`, `"644"` -> 0o644).
    /// `None` when `permissions` is absent or empty (coreos-cloudinit then uses 0644).
    pub fn mode(&self) -> Result<Option<u32>, ModeError> {
        match self.permissions.as_deref() {
            None | Some("") => Ok(None),
            Some(text) => crate::decode::parse_mode(text).map(Some),
        }
    }
}

/// The `coreos` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Coreos {
    pub units: Vec<Unit>,
    /// Keys normalised to coreos-cloudinit's snake_case names ("advertise_client_urls"); only keys it knows.
    /// Values as coreos-cloudinit would print them (`true`, `5`, text).
    pub etcd2: BTreeMap<String, String>,
    /// Legacy `coreos.etcd`.
    pub etcd: BTreeMap<String, String>,
    pub fleet: BTreeMap<String, String>,
    pub flannel: BTreeMap<String, String>,
    pub locksmith: BTreeMap<String, String>,
    pub update: Update,
    pub oem: BTreeMap<String, String>,
}

/// `coreos.update`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Update {
    /// etcd-lock, reboot or off.
    pub reboot_strategy: Option<String>,
    pub group: Option<String>,
    pub server: Option<String>,
}

/// The systemctl commands a unit's `command:` may ask for.
pub const UNIT_COMMANDS: [&str; 7] = [
    "start",
    "stop",
    "restart",
    "reload",
    "try-restart",
    "reload-or-restart",
    "reload-or-try-restart",
];

/// One entry of `coreos.units`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Unit {
    pub name: String,
    pub runtime: bool,
    pub enable: bool,
    pub content: Option<String>,
    /// start, stop, restart, reload, try-restart, reload-or-restart, reload-or-try-restart.
    pub command: Option<String>,
    pub mask: bool,
    pub drop_ins: Vec<DropIn>,
}

impl Unit {
    /// A systemd-networkd unit (`.network`, `.netdev`, `.link`): written under /etc/systemd/network, not /etc/systemd/system.
    pub fn is_network_unit(&self) -> bool {
        matches!(
            std::path::Path::new(&self.name)
                .extension()
                .and_then(|e| e.to_str()),
            Some("network" | "netdev" | "link")
        )
    }
}

/// One entry of a unit's `drop_ins`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DropIn {
    pub name: String,
    pub content: String,
}
