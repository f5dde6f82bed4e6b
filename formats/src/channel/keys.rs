//! ed25519 key files for update signing: `keygen` (what `cairn keygen`
//! calls), the secret key file `update.key`, the public key file
//! `update.pub` and the set of trusted public keys an image carries.
//!
//! Formats (text, one key per line, `#` comments and blank lines ignored):
//!
//! ```text
//! update.pub:  cairn-ed25519 <base64 of the 32-byte public key> [comment]
//! update.key:  cairn-ed25519-secret <base64 of the 32-byte seed>
//! ```
//!
//! A key's id is the first 8 bytes of SHA-256 over the 32 public key bytes,
//! as 16 lowercase hex digits; the signature file names it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::error::{ChannelError, Result};
use super::files::write_atomic;

/// First word of a public key line.
pub const PUBLIC_TAG: &str = "cairn-ed25519";
/// First word of a secret key line.
pub const SECRET_TAG: &str = "cairn-ed25519-secret";
/// File names `keygen` writes.
pub const SECRET_FILE: &str = "update.key";
pub const PUBLIC_FILE: &str = "update.pub";

/// The id of a public key: 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// A signing key read from `update.key`.
pub struct SecretKey {
    pub(crate) key: SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.id())
    }
}

impl SecretKey {
    /// A new random key (from the OS random source).
    pub fn generate() -> Result<SecretKey> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| ChannelError::NoRandom(e.to_string()))?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey {
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn id(&self) -> String {
        key_id(&self.public())
    }

    /// The text of `update.key`.
    pub fn to_text(&self) -> String {
        format!(
            "# cairn update signing key {}: keep it secret\n{SECRET_TAG} {}\n",
            self.id(),
            B64.encode(self.key.to_bytes())
        )
    }

    /// Reads `update.key`.
    pub fn load(path: &Path) -> Result<SecretKey> {
        let text = fs::read_to_string(path).map_err(ChannelError::io(path))?;
        Self::parse(&text, path)
    }

    /// Parses the text of a secret key file (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<SecretKey> {
        let mut found = None;
        for (n, line) in lines(text) {
            let err = |why: String| ChannelError::KeyFile {
                path: path.to_path_buf(),
                line: n,
                why,
            };
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some(SECRET_TAG), Some(b64)) if found.is_none() => {
                    let seed: [u8; 32] = B64
                        .decode(b64)
                        .ok()
                        .and_then(|v| v.try_into().ok())
                        .ok_or_else(|| {
                            err("expected the base64 of 32 bytes after cairn-ed25519-secret".into())
                        })?;
                    found = Some(SecretKey::from_seed(seed));
                }
                (Some(SECRET_TAG), _) if found.is_some() => {
                    return Err(err("a second key: one key per file".into()))
                }
                (Some(w), _) => {
                    return Err(err(format!(
                        "expected \"{SECRET_TAG} <base64>\", found {w:?}{}",
                        if w == PUBLIC_TAG {
                            " (this is a public key file)"
                        } else {
                            ""
                        }
                    )))
                }
                (None, _) => {}
            }
        }
        found.ok_or_else(|| ChannelError::KeyFile {
            path: path.to_path_buf(),
            line: 0,
            why: format!("no \"{SECRET_TAG}\" line"),
        })
    }
}

/// The text of a public key file line.
pub fn public_key_text(key: &VerifyingKey, comment: &str) -> String {
    let c = comment.trim();
    if c.is_empty() {
        format!("{PUBLIC_TAG} {}\n", B64.encode(key.as_bytes()))
    } else {
        format!("{PUBLIC_TAG} {} {c}\n", B64.encode(key.as_bytes()))
    }
}

/// Non-comment, non-blank lines with their 1-based numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// What `keygen` wrote.
#[derive(Debug, Clone)]
pub struct KeyPairFiles {
    pub secret: PathBuf,
    pub public: PathBuf,
    pub key_id: String,
}

/// `cairn keygen --out DIR`: creates DIR if needed and writes a new key
/// pair as `update.key` (mode 0600, never overwritten) and `update.pub`.
pub fn keygen(dir: &Path) -> Result<KeyPairFiles> {
    fs::create_dir_all(dir).map_err(ChannelError::io(dir))?;
    let secret = dir.join(SECRET_FILE);
    let public = dir.join(PUBLIC_FILE);
    for p in [&secret, &public] {
        if p.exists() {
            return Err(ChannelError::KeyExists { path: p.clone() });
        }
    }
    let key = SecretKey::generate()?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .map_err(ChannelError::io(&secret))?;
    f.write_all(key.to_text().as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(ChannelError::io(&secret))?;
    let id = key.id();
    write_atomic(
        &public,
        public_key_text(&key.public(), &format!("cairn update key {id}")).as_bytes(),
    )?;
    Ok(KeyPairFiles {
        secret,
        public,
        key_id: id,
    })
}

/// The public keys an agent trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
}

impl TrustedKeys {
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        TrustedKeys { keys }
    }

    /// Parses public key file text (any number of `cairn-ed25519` lines).
    pub fn parse(text: &str, path: &Path) -> Result<TrustedKeys> {
        let mut keys = Vec::new();
        for (n, line) in lines(text) {
            let err = |why: String| ChannelError::KeyFile {
                path: path.to_path_buf(),
                line: n,
                why,
            };
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some(PUBLIC_TAG), Some(b64)) => {
                    let bytes: [u8; 32] = B64
                        .decode(b64)
                        .ok()
                        .and_then(|v| v.try_into().ok())
                        .ok_or_else(|| {
                            err(format!(
                                "expected the base64 of 32 bytes after {PUBLIC_TAG}"
                            ))
                        })?;
                    let k = VerifyingKey::from_bytes(&bytes)
                        .map_err(|_| err("not a valid ed25519 public key".into()))?;
                    keys.push(k);
                }
                (Some(SECRET_TAG), _) => {
                    return Err(err(
                        "this is a secret key: only public keys (update.pub) belong here".into(),
                    ))
                }
                (Some(w), _) => {
                    return Err(err(format!(
                        "expected \"{PUBLIC_TAG} <base64> [comment]\", found {w:?}"
                    )))
                }
                (None, _) => {}
            }
        }
        Ok(TrustedKeys { keys })
    }

    /// Reads a public key file, or every `*.pub` file of a directory.
    pub fn load(path: &Path) -> Result<TrustedKeys> {
        let mut out = TrustedKeys::default();
        if path.is_dir() {
            let mut files: Vec<PathBuf> = fs::read_dir(path)
                .map_err(ChannelError::io(path))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "pub"))
                .collect();
            files.sort();
            for f in files {
                let text = fs::read_to_string(&f).map_err(ChannelError::io(&f))?;
                out.keys.extend(Self::parse(&text, &f)?.keys);
            }
        } else {
            let text = fs::read_to_string(path).map_err(ChannelError::io(path))?;
            out = Self::parse(&text, path)?;
        }
        Ok(out)
    }

    pub fn find(&self, id: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|k| key_id(k) == id)
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(key_id).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keygen_writes_a_usable_pair_once() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("keys");
        let files = keygen(&dir).unwrap();
        let mode = fs::metadata(&files.secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let secret = SecretKey::load(&files.secret).unwrap();
        let trusted = TrustedKeys::load(&files.public).unwrap();
        assert_eq!(trusted.ids(), vec![secret.id()]);
        assert_eq!(files.key_id, secret.id());
        assert_eq!(files.key_id.len(), 16);
        // the directory form finds *.pub files
        assert_eq!(TrustedKeys::load(&dir).unwrap().ids(), vec![secret.id()]);
        // never overwritten
        let e = keygen(&dir).unwrap_err().to_string();
        assert!(e.contains("refusing to overwrite"), "{e}");
        // two pairs are different
        let other = keygen(&t.path().join("k2")).unwrap();
        assert_ne!(other.key_id, files.key_id);
    }

    #[test]
    fn bad_key_files_name_the_line() {
        let p = Path::new("keys/update.pub");
        let e = TrustedKeys::parse("# c\n\ncairn-ed25519 AAAA\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("keys/update.pub:3: expected the base64 of 32 bytes"),
            "{e}"
        );
        let k = SecretKey::from_seed([7; 32]);
        let e = TrustedKeys::parse(&k.to_text(), p).unwrap_err().to_string();
        assert!(e.contains(":2: this is a secret key"), "{e}");
        let e = SecretKey::parse(&public_key_text(&k.public(), "x"), Path::new("k"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("k:1:") && e.contains("public key file"), "{e}");
        let e = SecretKey::parse("", Path::new("k"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no \"cairn-ed25519-secret\" line"), "{e}");
        let e = TrustedKeys::parse("ssh-ed25519 AAAA x\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains(":1: expected \"cairn-ed25519"), "{e}");
    }

    #[test]
    fn text_round_trip() {
        let k = SecretKey::from_seed([9; 32]);
        let back = SecretKey::parse(&k.to_text(), Path::new("k")).unwrap();
        assert_eq!(back.id(), k.id());
        let pubs = format!(
            "{}{}",
            public_key_text(&k.public(), ""),
            public_key_text(&SecretKey::from_seed([1; 32]).public(), "second")
        );
        let t = TrustedKeys::parse(&pubs, Path::new("p")).unwrap();
        assert_eq!(t.ids().len(), 2);
        assert!(t.find(&k.id()).is_some());
        assert!(t.find("0000000000000000").is_none());
    }
}
