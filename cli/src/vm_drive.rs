//! What `cairn vm` hands the guest on a `config-2` config drive: the
//! user's SSH public keys for `core` as OpenStack metadata
//! (`meta_data.json` `public_keys`, so the user's own cloud-config is never
//! rewritten), an optional hostname, and as user-data either the user's
//! cloud-config (validated first) or a generated one that turns on
//! autologin of `core` on the serial console for this boot only (a runtime
//! drop-in: nothing of it is in the image or persists in `/etc`).

use std::path::{Path, PathBuf};

use cairn_disk::config_drive;

/// The generated user-data: `serial-getty@ttyS0.service` restarted with
/// agetty's `--autologin core` (the CoreOS documentation's recipe), as a
/// runtime drop-in under /run.
pub const AUTOLOGIN_USER_DATA: &str = "\
#cloud-config
# written by `cairn vm`: log core in on the serial console, this boot only
coreos:
  units:
    - name: serial-getty@ttyS0.service
      runtime: true
      command: restart
      drop-ins:
        - name: 50-cairn-vm-autologin.conf
          content: |
            [Service]
            ExecStart=
            ExecStart=-/sbin/agetty --autologin core --noclear --keep-baud 115200,57600,38400,9600 - $TERM
";

/// The most a key file may hold (a public key is well under 1 KiB).
const MAX_KEY_FILE: u64 = 64 * 1024;
/// Private keys ssh tries by itself (`~/.ssh/` + these).
const DEFAULT_IDENTITIES: [&str; 6] = [
    "id_rsa",
    "id_ecdsa",
    "id_ecdsa_sk",
    "id_ed25519",
    "id_ed25519_sk",
    "id_dsa",
];

/// Something `cairn vm` refuses before booting; names the file.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SSH key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cloud-config {path}: {reason}")]
    CloudConfig { path: PathBuf, reason: String },
    #[error("hostname {name:?}: {reason}")]
    Hostname { name: String, reason: String },
    #[error(transparent)]
    Disk(#[from] cairn_disk::DiskError),
}

/// One public key line and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey {
    pub file: PathBuf,
    /// The key, one trimmed line (`ssh-ed25519 AAAA... comment`).
    pub line: String,
}

/// Every `~/.ssh/id_*.pub` under `home`, sorted; none when there is no
/// `~/.ssh`.
pub fn default_key_files(home: &Path) -> Vec<PathBuf> {
    let dir = home.join(".ssh");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("id_") && n.ends_with(".pub")
                })
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Whether a line looks like an OpenSSH public key (possibly behind
/// authorized_keys options): some field names a key type.
fn looks_like_key(line: &str) -> bool {
    line.split_whitespace().any(|f| {
        ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-"]
            .iter()
            .any(|t| f.starts_with(t))
    })
}

/// The keys of the files: every non-empty, non-comment line of each (a
/// `.pub` file has one; an authorized_keys-style file may have several).
/// A private key, a file with no key, a line that is no key or a file
/// over 64 KiB is refused, naming the file.
pub fn read_keys(files: &[PathBuf]) -> Result<Vec<SshKey>, DriveError> {
    let mut keys = Vec::new();
    for file in files {
        let bad = |reason: &str| DriveError::Key {
            path: file.clone(),
            reason: reason.to_string(),
        };
        let meta = std::fs::metadata(file).map_err(|source| DriveError::Read {
            path: file.clone(),
            source,
        })?;
        if meta.len() > MAX_KEY_FILE {
            return Err(bad("larger than 64 KiB: not a public key file"));
        }
        let bytes = std::fs::read(file).map_err(|source| DriveError::Read {
            path: file.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text"))?;
        if text.contains("PRIVATE KEY") {
            return Err(bad(
                "a private key: give its public half (the .pub file) instead",
            ));
        }
        let before = keys.len();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if !looks_like_key(line) {
                return Err(bad(&format!(
                    "{line:.40?} is not an OpenSSH public key line"
                )));
            }
            keys.push(SshKey {
                file: file.clone(),
                line: line.to_string(),
            });
        }
        if keys.len() == before {
            return Err(bad("holds no key"));
        }
    }
    Ok(keys)
}

/// `meta_data.json` for the keys and hostname: `public_keys` named after
/// the key files (`id_ed25519`, then `id_ed25519-2`, ...).
pub fn meta_data_json(keys: &[SshKey], hostname: Option<&str>) -> String {
    let mut public_keys = serde_json::Map::new();
    for k in keys {
        let stem = k
            .file
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".pub").to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "key".to_string());
        let mut name = stem.clone();
        let mut i = 1;
        while public_keys.contains_key(&name) {
            i += 1;
            name = format!("{stem}-{i}");
        }
        public_keys.insert(name, serde_json::Value::String(k.line.clone()));
    }
    let mut top = serde_json::Map::new();
    if let Some(h) = hostname {
        top.insert("hostname".into(), serde_json::Value::String(h.to_string()));
    }
    top.insert("public_keys".into(), serde_json::Value::Object(public_keys));
    let mut s = serde_json::to_string_pretty(&serde_json::Value::Object(top))
        .expect("a JSON map serialises");
    s.push('\n');
    s
}

/// Refuses a hostname the agent would refuse.
pub fn check_hostname(name: &str) -> Result<(), DriveError> {
    cairn_cloudconfig::check_hostname(name).map_err(|why| DriveError::Hostname {
        name: name.to_string(),
        reason: why.to_string(),
    })
}

/// The user's cloud-config, read and validated as `cairn validate` does:
/// any error finding refuses it (the findings, `FILE:LINE: error: ...`, in
/// the message). Returns the bytes as given (gzip stays gzip) and the
/// warnings and notes, formatted the same way, for the caller to show.
pub fn read_cloud_config(path: &Path) -> Result<(Vec<u8>, String), DriveError> {
    let bad = |reason: String| DriveError::CloudConfig {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| DriveError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let max = config_drive::MAX_CONTENT / 2;
    if bytes.len() as u64 > max {
        return Err(bad(format!("larger than {max} bytes")));
    }
    let plain = cairn_cloudconfig::decompress_user_data(&bytes)
        .map_err(|e| bad(format!("decompressing gzip user-data: {e}")))?;
    let text = std::str::from_utf8(&plain).map_err(|_| bad("not UTF-8 text".into()))?;
    let report = cairn_cloudconfig::validate(text);
    let shown = path.display().to_string();
    let findings = cairn_cloudconfig::format_findings(&shown, &report);
    if report.has_errors() {
        return Err(bad(format!(
            "the validator found errors, not booting with it:\n{}",
            findings.trim_end()
        )));
    }
    Ok((bytes, findings))
}

/// What goes on the drive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seed {
    pub user_data: Option<Vec<u8>>,
    pub meta_data: Option<String>,
}

impl Seed {
    /// The seed for keys, hostname, the user's cloud-config (which
    /// replaces the generated autologin one) and whether to autologin.
    pub fn new(
        keys: &[SshKey],
        hostname: Option<&str>,
        cloud_config: Option<Vec<u8>>,
        autologin: bool,
    ) -> Seed {
        let meta_data =
            (!keys.is_empty() || hostname.is_some()).then(|| meta_data_json(keys, hostname));
        let user_data =
            cloud_config.or_else(|| autologin.then(|| AUTOLOGIN_USER_DATA.as_bytes().to_vec()));
        Seed {
            user_data,
            meta_data,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.user_data.is_none() && self.meta_data.is_none()
    }

    /// Writes the config drive image `path`.
    pub fn write(&self, path: &Path) -> Result<(), DriveError> {
        let mut files: Vec<(&str, &[u8])> = Vec::new();
        if let Some(u) = &self.user_data {
            files.push((config_drive::USER_DATA, u));
        }
        if let Some(m) = &self.meta_data {
            files.push((config_drive::META_DATA, m.as_bytes()));
        }
        config_drive::write(path, &files)?;
        Ok(())
    }
}

/// The private key to name with `-i` in the ready line: none when one of
/// `key_files` is the public half of a key ssh tries by itself
/// (`~/.ssh/id_ed25519` and the like), else the first one whose private
/// half (the name without `.pub`) exists.
pub fn identity_hint(key_files: &[PathBuf], home: Option<&Path>) -> Option<PathBuf> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let private = |f: &PathBuf| -> Option<PathBuf> {
        let name = f.file_name()?.to_str()?;
        Some(f.with_file_name(name.strip_suffix(".pub")?))
    };
    let defaults: Vec<PathBuf> = home
        .map(|h| {
            DEFAULT_IDENTITIES
                .iter()
                .map(|n| canon(&h.join(".ssh").join(n)))
                .collect()
        })
        .unwrap_or_default();
    let privates: Vec<PathBuf> = key_files.iter().filter_map(private).collect();
    if privates.iter().any(|p| defaults.contains(&canon(p))) {
        return None;
    }
    privates.into_iter().find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyOne0000000000000000000000000000000001 me@host";
    const K2: &str =
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBKeyTwo= me@host";

    #[test]
    fn the_generated_cloud_config_passes_the_validator_and_is_runtime_only() {
        let report = cairn_cloudconfig::validate(AUTOLOGIN_USER_DATA);
        assert!(report.is_empty(), "{report:?}");
        let Ok(cairn_cloudconfig::UserData::CloudConfig(c)) =
            cairn_cloudconfig::parse_user_data(AUTOLOGIN_USER_DATA)
        else {
            panic!("not a cloud-config")
        };
        let u = &c.coreos.units[0];
        assert_eq!(u.name, "serial-getty@ttyS0.service");
        assert!(u.runtime && !u.enable && u.content.is_none());
        assert_eq!(u.command.as_deref(), Some("restart"));
        assert!(u.drop_ins[0].content.contains("--autologin core"));
        assert!(c.hostname.is_none() && c.ssh_authorized_keys.is_empty());
    }

    #[test]
    fn keys_are_read_named_and_refused_with_the_file() {
        let t = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| {
            let p = t.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let a = w("id_ed25519.pub", &format!("{K1}\n"));
        let b = w("several", &format!("# mine\n\n{K1}\n{K2}\n"));
        let keys = read_keys(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[2].line, K2);
        let json: serde_json::Value =
            serde_json::from_str(&meta_data_json(&keys, Some("vm1"))).unwrap();
        assert_eq!(json["hostname"], "vm1");
        assert_eq!(json["public_keys"]["id_ed25519"], K1);
        assert_eq!(json["public_keys"]["several"], K1);
        assert_eq!(json["public_keys"]["several-2"], K2);
        let json: serde_json::Value = serde_json::from_str(&meta_data_json(&keys, None)).unwrap();
        assert!(json.get("hostname").is_none());

        let cases = [
            (
                w(
                    "id_x",
                    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
                ),
                "a private key",
            ),
            (w("empty.pub", "# nothing\n"), "holds no key"),
            (w("junk.pub", "hello world\n"), "not an OpenSSH public key"),
            (w("big.pub", &"x".repeat(70 * 1024)), "larger than 64 KiB"),
        ];
        for (p, want) in cases {
            let e = read_keys(&[a.clone(), p.clone()]).unwrap_err().to_string();
            assert!(e.starts_with(&format!("SSH key {}: ", p.display())), "{e}");
            assert!(e.contains(want), "{e}");
        }
        let e = read_keys(&[t.path().join("absent.pub")]).unwrap_err();
        assert!(e.to_string().contains("absent.pub"), "{e}");
    }

    #[test]
    fn default_keys_and_the_identity_hint() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        assert!(default_key_files(h).is_empty());
        let ssh = h.join(".ssh");
        std::fs::create_dir(&ssh).unwrap();
        for n in [
            "id_rsa.pub",
            "id_ed25519.pub",
            "id_ed25519",
            "known_hosts",
            "other.pub",
        ] {
            std::fs::write(ssh.join(n), K1).unwrap();
        }
        assert_eq!(
            default_key_files(h),
            [ssh.join("id_ed25519.pub"), ssh.join("id_rsa.pub")]
        );
        // a default identity: no hint
        assert_eq!(identity_hint(&default_key_files(h), Some(h)), None);
        // another key with its private half: named
        let elsewhere = tempfile::tempdir().unwrap();
        let k = elsewhere.path().join("vm_key");
        std::fs::write(&k, "private").unwrap();
        std::fs::write(elsewhere.path().join("vm_key.pub"), K1).unwrap();
        assert_eq!(
            identity_hint(&[elsewhere.path().join("vm_key.pub")], Some(h)),
            Some(k.clone())
        );
        assert_eq!(
            identity_hint(&[elsewhere.path().join("vm_key.pub")], None),
            Some(k)
        );
        // no private half (or not a .pub name): nothing to name
        assert_eq!(identity_hint(&[ssh.join("other.pub")], Some(h)), None);
        assert_eq!(identity_hint(&[ssh.join("known_hosts")], Some(h)), None);
    }

    #[test]
    fn cloud_configs_with_errors_are_refused_with_file_and_line() {
        let t = tempfile::tempdir().unwrap();
        let bad = t.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "#cloud-config\nhostname: x\ncoreos:\n  update:\n    reboot-strategy: sometimes\n",
        )
        .unwrap();
        let e = read_cloud_config(&bad).unwrap_err().to_string();
        assert!(e.contains(&format!("{}:5: error: ", bad.display())), "{e}");
        let good = t.path().join("good.yaml");
        std::fs::write(&good, "#cloud-config\nhostname: x\n").unwrap();
        let (bytes, findings) = read_cloud_config(&good).unwrap();
        assert_eq!(bytes, b"#cloud-config\nhostname: x\n");
        assert_eq!(findings, "");
    }

    #[test]
    fn the_seed_follows_the_flags() {
        let keys = vec![SshKey {
            file: "/h/.ssh/id_ed25519.pub".into(),
            line: K1.into(),
        }];
        let s = Seed::new(&keys, None, None, true);
        assert_eq!(s.user_data.as_deref(), Some(AUTOLOGIN_USER_DATA.as_bytes()));
        assert!(s.meta_data.as_deref().unwrap().contains(K1));
        // the user's cloud-config replaces the autologin one, untouched
        let s = Seed::new(&keys, Some("h"), Some(b"#cloud-config\n".to_vec()), true);
        assert_eq!(s.user_data.as_deref(), Some(&b"#cloud-config\n"[..]));
        let s = Seed::new(&[], None, None, false);
        assert!(s.is_empty());
        let s = Seed::new(&[], Some("h"), None, false);
        assert_eq!(s.user_data, None);
        assert!(s.meta_data.unwrap().contains("\"hostname\": \"h\""));
    }
}
