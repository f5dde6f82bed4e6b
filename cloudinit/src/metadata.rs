//! Instance metadata ([`Metadata`]: hostname, SSH keys, addresses) and the OpenStack config drive's `openstack/latest/meta_data.json`, whose `public_keys` and `hostname` coreos-cloudinit merged into the cloud-config, read bounded and checked before anything of it is used; the checks ([`check_hostname_field`], [`check_key`]) are shared with the metadata services of [`crate::cloud`].
//!
//! The file is OpenStack's format, not ours: fields this agent does not use
//! (`uuid`, `name`, `availability_zone`, `files`, ...) are ignored rather
//! than refused. What is used is checked strictly: `public_keys` must be an
//! object of strings, each key one line; `hostname` a string that passes
//! the same rules as a cloud-config hostname. One bad field refuses the
//! whole file, so a drive never half-applies its metadata.

use std::io::Read;
use std::path::Path;

use cairn_cloudconfig::check_hostname;

use crate::addrs::MachineAddresses;

/// The metadata file inside a config drive.
pub use cairn_formats::config_drive::META_DATA as CONFIG_DRIVE_META_DATA;
/// The most a meta_data.json may hold (keys and a hostname fit many times over).
pub const MAX_META_DATA: u64 = 64 * 1024;

/// What this agent takes from the metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// `hostname`, used only when the cloud-config sets none.
    pub hostname: Option<String>,
    /// `public_keys` as (name, key), sorted by name; each key one trimmed
    /// line, added to `core`'s authorized keys.
    pub public_keys: Vec<(String, String)>,
    /// Addresses for `$private_ipv4` & co, from a metadata service (a
    /// config drive's meta_data.json gives none); they win over the
    /// detected ones.
    pub addresses: MachineAddresses,
}

/// Checks a hostname from metadata (`field` names it in the reason):
/// trimmed, no control character, and the rules of a cloud-config
/// hostname. `Ok(None)` when it is empty.
pub fn check_hostname_field(field: &str, raw: &str) -> Result<Option<String>, String> {
    let h = raw.trim();
    if h.is_empty() {
        return Ok(None);
    }
    check_hostname(h).map_err(|why| format!("{field} {h:?}: {why}"))?;
    Ok(Some(h.to_string()))
}

/// Checks an SSH public key from metadata (`field` names it in the
/// reason): trimmed (clouds end keys with a newline), not empty, one line
/// (a line break would smuggle a second key or options into
/// `authorized_keys`).
pub fn check_key(field: &str, raw: &str) -> Result<String, String> {
    let key = raw.trim();
    if key.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if key.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "{field} has a line break or control character: a key must be one line"
        ));
    }
    Ok(key.to_string())
}

/// A metadata file that cannot be used; names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct MetadataError {
    pub path: String,
    pub reason: String,
}

/// Reads and checks the metadata file at `path`; `Ok(None)` when there is
/// none. A file over [`MAX_META_DATA`] is refused without being read whole.
pub fn read(path: &Path) -> Result<Option<Metadata>, MetadataError> {
    let shown = path.display().to_string();
    let err = |reason: String| MetadataError {
        path: shown.clone(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("reading: {e}"))),
    };
    let mut bytes = Vec::new();
    file.take(MAX_META_DATA + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("reading: {e}")))?;
    parse(&bytes, &shown).map(Some)
}

/// Parses and checks the text of a meta_data.json; `shown` names it in
/// errors.
pub fn parse(bytes: &[u8], shown: &str) -> Result<Metadata, MetadataError> {
    let err = |reason: String| MetadataError {
        path: shown.to_string(),
        reason,
    };
    if bytes.len() as u64 > MAX_META_DATA {
        return Err(err(format!(
            "larger than {MAX_META_DATA} bytes, the most a meta_data.json may be"
        )));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let serde_json::Value::Object(top) = value else {
        return Err(err("not a JSON object".into()));
    };
    let mut md = Metadata::default();
    match top.get("hostname") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(h)) => {
            md.hostname = check_hostname_field("hostname", h).map_err(err)?;
        }
        Some(_) => return Err(err("hostname is not a string".into())),
    }
    match top.get("public_keys") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Object(keys)) => {
            for (name, key) in keys {
                let serde_json::Value::String(key) = key else {
                    return Err(err(format!("public_keys.{name} is not a string")));
                };
                // Nova writes each key with a trailing newline
                let key = check_key(&format!("public_keys.{name}"), key).map_err(err)?;
                md.public_keys.push((name.clone(), key));
            }
        }
        Some(_) => {
            return Err(err(
                "public_keys is not a JSON object (key name -> key)".into()
            ))
        }
    }
    md.public_keys.sort();
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMetadataKey000000000000000000000000000001 a@b";

    #[test]
    fn openstack_metadata_gives_keys_and_hostname() {
        let text = format!(
            r#"{{"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "availability_zone": "nova",
                "hostname": "vm1.novalocal", "name": "vm1", "launch_index": 0,
                "public_keys": {{"zz": "{KEY} z\n", "mykey": "{KEY}\n"}},
                "meta": {{"role": "web"}}, "files": []}}"#
        );
        let md = parse(text.as_bytes(), "m.json").unwrap();
        assert_eq!(md.hostname.as_deref(), Some("vm1.novalocal"));
        assert_eq!(
            md.public_keys,
            [
                ("mykey".to_string(), KEY.to_string()),
                ("zz".to_string(), format!("{KEY} z"))
            ]
        );
        // nothing of ours in it is nothing to apply
        assert_eq!(parse(b"{}", "m").unwrap(), Metadata::default());
        assert_eq!(
            parse(br#"{"hostname": "", "public_keys": null}"#, "m").unwrap(),
            Metadata::default()
        );
    }

    #[test]
    fn hostile_metadata_is_refused_naming_the_file() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"public_keys": ["ssh-ed25519 AAAA"]}"#,
                "public_keys is not a JSON object",
            ),
            (
                r#"{"public_keys": "ssh-ed25519 AAAA"}"#,
                "public_keys is not a JSON object",
            ),
            (
                r#"{"public_keys": {"k": 5}}"#,
                "public_keys.k is not a string",
            ),
            (
                r#"{"public_keys": {"k": "  \n"}}"#,
                "public_keys.k is empty",
            ),
            (
                r#"{"public_keys": {"k": "ssh-ed25519 AAAA a\nssh-rsa BBBB evil"}}"#,
                "public_keys.k has a line break",
            ),
            (
                r#"{"public_keys": {"k": "ssh-ed25519 AAAA a\rcommand=\"x\" ssh-rsa B"}}"#,
                "a key must be one line",
            ),
            (r#"{"hostname": 7}"#, "hostname is not a string"),
            (r#"{"hostname": "a b"}"#, "hostname \"a b\""),
            (r#"{"hostname": "-x"}"#, "hostname \"-x\""),
            (r#"["hostname"]"#, "not a JSON object"),
            (r#"{"hostname": "#, "not valid JSON"),
        ];
        for (text, want) in cases {
            let e = parse(text.as_bytes(), "/cd/openstack/latest/meta_data.json").unwrap_err();
            assert_eq!(e.path, "/cd/openstack/latest/meta_data.json");
            assert!(
                e.to_string()
                    .starts_with("/cd/openstack/latest/meta_data.json: "),
                "{e}"
            );
            assert!(e.reason.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn read_is_bounded_and_absent_is_none() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("meta_data.json");
        assert_eq!(read(&p).unwrap(), None);
        let mut big = String::from(r#"{"meta": ""#);
        big.push_str(&"x".repeat(MAX_META_DATA as usize));
        big.push_str(r#""}"#);
        std::fs::write(&p, &big).unwrap();
        let e = read(&p).unwrap_err();
        assert_eq!(e.path, p.display().to_string());
        assert!(e.reason.contains("larger than 65536 bytes"), "{e}");
        std::fs::write(&p, format!(r#"{{"public_keys": {{"k": "{KEY}"}}}}"#)).unwrap();
        assert_eq!(read(&p).unwrap().unwrap().public_keys.len(), 1);
    }
}
