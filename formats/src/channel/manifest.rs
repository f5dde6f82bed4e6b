//! The signed update manifest: its JSON model, the detached signature file
//! (`manifest.sig`) and `verify`, the one gate every downloaded manifest
//! passes (signature by a trusted key over the exact bytes, validity
//! period, image name, channel, strictly newer version).
//!
//! Why a detached signature rather than an envelope: `manifest.json` stays
//! a plain JSON file that `cairn serve`, operators and tests read as-is;
//! the signature covers exactly the bytes on disk and on the wire, with no
//! base64 layer to unwrap and no temptation to re-serialise. The cost is
//! a second request; a manifest/signature pair from two different builds
//! simply fails to verify and the next check retries.
//!
//! `manifest.sig` is one line: `ed25519 <key-id> <base64 signature>`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, Verifier};
use serde::{Deserialize, Serialize};

use super::error::{ChannelError, Result};
use super::keys::{key_id, SecretKey, TrustedKeys};
use super::timestamp::{parse_rfc3339, rfc3339};
use super::version;
use crate::image_dir;

/// The manifest format this crate writes and accepts.
pub const FORMAT: u32 = 1;

/// What a part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum PartKind {
    /// The root squashfs, written raw into the inactive slot.
    Rootfs,
    /// The kernel, written to `ESP/cairn/<version>/vmlinuz`.
    Kernel,
    /// The initrd, written to `ESP/cairn/<version>/initrd.img`.
    Initrd,
}

impl PartKind {
    pub const ALL: [PartKind; 3] = [PartKind::Rootfs, PartKind::Kernel, PartKind::Initrd];

    pub fn as_str(self) -> &'static str {
        match self {
            PartKind::Rootfs => "rootfs",
            PartKind::Kernel => "kernel",
            PartKind::Initrd => "initrd",
        }
    }

    /// The file name of the part in a bundle (and on the ESP for the
    /// kernel and initrd, matching what `cairn build` writes there): the
    /// image folder's names.
    pub fn file_name(self) -> &'static str {
        match self {
            PartKind::Rootfs => image_dir::ROOTFS,
            PartKind::Kernel => image_dir::KERNEL,
            PartKind::Initrd => image_dir::INITRD,
        }
    }
}

/// One file of an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub kind: PartKind,
    /// Relative to the manifest's URL: a plain file name.
    pub path: String,
    pub size: u64,
    /// 64 lowercase hex digits.
    pub sha256: String,
}

/// The update manifest (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Image name (os-release `IMAGE_ID`).
    pub name: String,
    /// Image version (os-release `IMAGE_VERSION`), ordered like
    /// systemd-boot orders entries.
    pub version: String,
    pub channel: String,
    /// RFC 3339 UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub created: String,
    pub expires: String,
    pub parts: Vec<Part>,
    /// The dm-verity parameters of the rootfs part's hash tree: the agent
    /// writes them into the new slot's boot entry (`cairn.verity=`) and
    /// checks the slot against them after writing it. Signed with the rest
    /// of the manifest's bytes. Absent for images built with
    /// `verity: false`; agents older than this field refuse manifests
    /// that carry it (`deny_unknown_fields`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<crate::verity::VerityRecord>,
}

fn bad(why: impl Into<String>) -> ChannelError {
    ChannelError::Malformed(why.into())
}

/// Whether a version is one `cairn build` accepts (letters, digits and
/// `. - _ ~ ^ +`) and is safe as an ESP folder name.
pub fn safe_version(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 128
        && s.bytes().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'~' | b'^' | b'+')
        })
}

/// Whether a name is safe as a path component: letters, digits, `.`,
/// `_`, `-`, `~`, not starting with `.` (image and channel names, part
/// file names).
pub fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 128
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'~'))
}

impl Manifest {
    /// Parses and checks the JSON (shape, field values); no signature.
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let m: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let inner = e.inner();
            bad(format!(
                "line {}, column {}: {}: {inner}",
                inner.line(),
                inner.column(),
                e.path()
            ))
        })?;
        m.check()?;
        Ok(m)
    }

    /// The field rules serde cannot express.
    pub fn check(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(bad(format!(
                "format: {} is not supported (this agent reads format {FORMAT})",
                self.format
            )));
        }
        if !safe_version(&self.version) {
            return Err(bad(format!(
                "version: {:?}: expected letters, digits, '.', '_', '-', '~', '^', '+' (not starting with '.')",
                self.version
            )));
        }
        for (k, v) in [("name", &self.name), ("channel", &self.channel)] {
            if !safe_name(v) {
                return Err(bad(format!(
                    "{k}: {v:?}: expected letters, digits, '.', '_', '-', '~' (not starting with '.')"
                )));
            }
        }
        let created = parse_rfc3339(&self.created).ok_or_else(|| {
            bad(format!(
                "created: {:?}: expected YYYY-MM-DDTHH:MM:SSZ",
                self.created
            ))
        })?;
        let expires = parse_rfc3339(&self.expires).ok_or_else(|| {
            bad(format!(
                "expires: {:?}: expected YYYY-MM-DDTHH:MM:SSZ",
                self.expires
            ))
        })?;
        if expires <= created {
            return Err(bad("expires: not after created"));
        }
        for (i, p) in self.parts.iter().enumerate() {
            if !safe_name(&p.path) {
                return Err(bad(format!(
                    "parts[{i}].path: {:?}: expected a plain file name",
                    p.path
                )));
            }
            if p.sha256.len() != 64
                || !p
                    .sha256
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            {
                return Err(bad(format!(
                    "parts[{i}].sha256: expected 64 lowercase hex digits"
                )));
            }
        }
        for kind in PartKind::ALL {
            let n = self.parts.iter().filter(|p| p.kind == kind).count();
            if n != 1 {
                return Err(bad(format!(
                    "parts: {n} parts of kind {}, expected exactly one",
                    kind.as_str()
                )));
            }
        }
        if let Some(r) = &self.verity {
            let v = r.to_verity().map_err(|e| bad(format!("verity: {e}")))?;
            let root = self.part(PartKind::Rootfs);
            // the data area and the superblock's block lie inside the
            // part (the agent's read-back checks the tree itself)
            if v.hash_offset() + crate::verity::BLOCK_SIZE > root.size {
                return Err(bad(format!(
                    "verity: hash_offset {} leaves no room for the superblock in the {}-byte rootfs part",
                    r.hash_offset, root.size
                )));
            }
        }
        Ok(())
    }

    /// The verity parameters, checked by [`Manifest::check`].
    pub fn verity(&self) -> Option<crate::verity::Verity> {
        self.verity.as_ref().and_then(|r| r.to_verity().ok())
    }

    pub fn part(&self, kind: PartKind) -> &Part {
        // check() guarantees exactly one of each kind
        self.parts
            .iter()
            .find(|p| p.kind == kind)
            .expect("a checked manifest has every part kind")
    }

    pub fn created_secs(&self) -> i64 {
        parse_rfc3339(&self.created).unwrap_or(0)
    }

    pub fn expires_secs(&self) -> i64 {
        parse_rfc3339(&self.expires).unwrap_or(0)
    }

    /// The canonical bytes `write_bundle` signs: pretty JSON + newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        v.push(b'\n');
        v
    }
}

/// Signs `bytes` (the exact file content), giving `manifest.sig`'s text.
pub fn sign(bytes: &[u8], key: &SecretKey) -> String {
    let sig = key.key.sign(bytes);
    format!("ed25519 {} {}\n", key.id(), B64.encode(sig.to_bytes()))
}

/// A parsed `manifest.sig`.
#[derive(Debug, Clone)]
pub struct DetachedSignature {
    pub key_id: String,
    pub signature: Signature,
}

impl DetachedSignature {
    pub fn parse(text: &[u8]) -> Result<DetachedSignature> {
        let text = std::str::from_utf8(text)
            .map_err(|_| ChannelError::BadSignatureFile("not UTF-8 text".into()))?;
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["ed25519", id, b64] => {
                let bytes: [u8; 64] = B64
                    .decode(b64)
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| {
                        ChannelError::BadSignatureFile(
                            "expected the base64 of a 64-byte ed25519 signature".into(),
                        )
                    })?;
                Ok(DetachedSignature {
                    key_id: id.to_string(),
                    signature: Signature::from_bytes(&bytes),
                })
            }
            _ => Err(ChannelError::BadSignatureFile(
                "expected one line \"ed25519 <key-id> <base64 signature>\"".into(),
            )),
        }
    }
}

/// What the running system expects of a manifest.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// The running image's name.
    pub name: &'a str,
    /// The running version: the manifest must be strictly newer.
    pub running_version: &'a str,
    /// The channel followed, when the caller cares.
    pub channel: Option<&'a str>,
    /// Now, seconds since the epoch.
    pub now: i64,
}

/// Allowed clock skew for `created` in the future.
const CLOCK_SKEW: i64 = 24 * 3600;

/// Verifies a downloaded manifest: first the signature over the exact
/// `bytes` by a trusted key, only then the content (parse, expiry, name,
/// channel, version). Returns the manifest only if everything holds.
pub fn verify(
    bytes: &[u8],
    sig: &[u8],
    trusted: &TrustedKeys,
    expect: &Expect<'_>,
) -> Result<Manifest> {
    let sig = DetachedSignature::parse(sig)?;
    let key = trusted
        .find(&sig.key_id)
        .ok_or_else(|| ChannelError::UnknownKey {
            key_id: sig.key_id.clone(),
            trusted: trusted.ids().join(", "),
        })?;
    debug_assert_eq!(key_id(key), sig.key_id);
    key.verify(bytes, &sig.signature)
        .map_err(|_| ChannelError::BadSignature {
            key_id: sig.key_id.clone(),
        })?;
    let m = Manifest::parse(bytes)?;
    if expect.now >= m.expires_secs() {
        return Err(ChannelError::Expired {
            expires: m.expires.clone(),
            now: rfc3339(expect.now),
        });
    }
    if m.created_secs() > expect.now + CLOCK_SKEW {
        return Err(ChannelError::NotYetValid {
            created: m.created.clone(),
            now: rfc3339(expect.now),
        });
    }
    if m.name != expect.name {
        return Err(ChannelError::WrongName {
            expected: expect.name.to_string(),
            got: m.name,
        });
    }
    if let Some(c) = expect.channel {
        if m.channel != c {
            return Err(ChannelError::WrongChannel {
                expected: c.to_string(),
                got: m.channel,
            });
        }
    }
    if !version::is_newer(&m.version, expect.running_version) {
        return Err(ChannelError::NotNewer {
            offered: m.version,
            running: expect.running_version.to_string(),
        });
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_208_000; // 2025-11-27T01:46:40Z

    fn manifest(version: &str) -> Manifest {
        let part = |kind: PartKind, size| Part {
            kind,
            path: kind.file_name().into(),
            size,
            sha256: "ab".repeat(32),
        };
        Manifest {
            format: FORMAT,
            name: "default".into(),
            version: version.into(),
            channel: "stable".into(),
            created: rfc3339(NOW - 3600),
            expires: rfc3339(NOW + 30 * 86400),
            parts: vec![
                part(PartKind::Rootfs, 1000),
                part(PartKind::Kernel, 10),
                part(PartKind::Initrd, 20),
            ],
            verity: None,
        }
    }

    fn with_verity(mut m: Manifest) -> Manifest {
        m.parts[0].size = 40960;
        m.verity = Some(crate::verity::VerityRecord {
            root_hash: "cd".repeat(32),
            salt: "01".repeat(32),
            data_blocks: 8,
            hash_offset: 8 * 4096,
        });
        m
    }

    fn expect() -> Expect<'static> {
        Expect {
            name: "default",
            running_version: "1.0",
            channel: Some("stable"),
            now: NOW,
        }
    }

    fn signed(m: &Manifest, key: &SecretKey) -> (Vec<u8>, String) {
        let b = m.to_bytes();
        let s = sign(&b, key);
        (b, s)
    }

    fn key() -> SecretKey {
        SecretKey::from_seed([3; 32])
    }

    fn trusted() -> TrustedKeys {
        TrustedKeys::new(vec![key().public()])
    }

    #[test]
    fn good_manifest_verifies() {
        let m = manifest("1.1");
        let (b, s) = signed(&m, &key());
        assert!(s.starts_with(&format!("ed25519 {} ", key().id())));
        assert_eq!(verify(&b, s.as_bytes(), &trusted(), &expect()).unwrap(), m);
    }

    #[test]
    fn verity_is_optional_signed_and_checked() {
        // without the field, the bytes are what older builds signed
        let (b, _) = signed(&manifest("1.1"), &key());
        assert!(!String::from_utf8(b).unwrap().contains("verity"));
        let m = with_verity(manifest("1.1"));
        let (b, s) = signed(&m, &key());
        let got = verify(&b, s.as_bytes(), &trusted(), &expect()).unwrap();
        assert_eq!(got.verity().unwrap().root_hash, [0xcd; 32]);
        // another root hash is other bytes: the signature no longer holds
        let text = String::from_utf8(b)
            .unwrap()
            .replace(&"cd".repeat(32), &"ce".repeat(32));
        let e = verify(text.as_bytes(), s.as_bytes(), &trusted(), &expect()).unwrap_err();
        assert!(matches!(e, ChannelError::BadSignature { .. }), "{e}");
        // malformed parameters are refused even when signed
        for (change, want) in [
            (
                Box::new(|m: &mut Manifest| m.verity.as_mut().unwrap().hash_offset = 7)
                    as Box<dyn Fn(&mut Manifest)>,
                "not data_blocks * 4096",
            ),
            (
                Box::new(|m: &mut Manifest| m.verity.as_mut().unwrap().root_hash = "x".into()),
                "verity: cairn.verity=",
            ),
            (
                Box::new(|m: &mut Manifest| m.parts[0].size = 8 * 4096),
                "no room for the superblock",
            ),
        ] {
            let mut bad = with_verity(manifest("1.1"));
            change(&mut bad);
            let (b, s) = signed(&bad, &key());
            let e = verify(&b, s.as_bytes(), &trusted(), &expect()).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn tampered_bytes_are_refused() {
        let (b, s) = signed(&manifest("1.1"), &key());
        // flip one byte of the size; still valid JSON
        let text = String::from_utf8(b).unwrap().replace("1000", "1001");
        let e = verify(text.as_bytes(), s.as_bytes(), &trusted(), &expect()).unwrap_err();
        assert!(matches!(e, ChannelError::BadSignature { .. }), "{e}");
        // re-serialised JSON (same content, other whitespace) is not the signed bytes either
        let v: serde_json::Value = serde_json::from_str(&text.replace("1001", "1000")).unwrap();
        let compact = serde_json::to_vec(&v).unwrap();
        let e = verify(&compact, s.as_bytes(), &trusted(), &expect()).unwrap_err();
        assert!(matches!(e, ChannelError::BadSignature { .. }), "{e}");
    }

    #[test]
    fn wrong_and_unknown_keys_are_refused() {
        let m = manifest("1.1");
        let other = SecretKey::from_seed([4; 32]);
        let (b, s) = signed(&m, &other);
        let e = verify(&b, s.as_bytes(), &trusted(), &expect()).unwrap_err();
        assert!(matches!(e, ChannelError::UnknownKey { .. }), "{e}");
        assert!(e.to_string().contains(&other.id()), "{e}");
        // a signature by another key that claims the trusted key's id
        let forged = s.replace(&other.id(), &key().id());
        let e = verify(&b, forged.as_bytes(), &trusted(), &expect()).unwrap_err();
        assert!(matches!(e, ChannelError::BadSignature { .. }), "{e}");
        // no trusted keys at all
        let e = verify(&b, s.as_bytes(), &TrustedKeys::default(), &expect()).unwrap_err();
        assert!(matches!(e, ChannelError::UnknownKey { .. }), "{e}");
        // garbage signature files
        for junk in ["", "ed25519 x", "rsa a b", "ed25519 id AAAA"] {
            let e = verify(&b, junk.as_bytes(), &trusted(), &expect()).unwrap_err();
            assert!(
                matches!(e, ChannelError::BadSignatureFile(_)),
                "{junk}: {e}"
            );
        }
    }

    #[test]
    fn expired_and_future_manifests_are_refused() {
        let mut m = manifest("1.1");
        m.expires = rfc3339(NOW);
        let (b, s) = signed(&m, &key());
        let e = verify(&b, s.as_bytes(), &trusted(), &expect()).unwrap_err();
        assert!(matches!(e, ChannelError::Expired { .. }), "{e}");
        let ok = Expect {
            now: NOW - 1,
            ..expect()
        };
        assert!(verify(&b, s.as_bytes(), &trusted(), &ok).is_ok());
        let mut m = manifest("1.1");
        m.created = rfc3339(NOW + 2 * 86400);
        m.expires = rfc3339(NOW + 3 * 86400);
        let (b, s) = signed(&m, &key());
        let e = verify(&b, s.as_bytes(), &trusted(), &expect()).unwrap_err();
        assert!(matches!(e, ChannelError::NotYetValid { .. }), "{e}");
    }

    #[test]
    fn other_name_channel_and_old_versions_are_refused() {
        let mut m = manifest("1.1");
        m.name = "other".into();
        let (b, s) = signed(&m, &key());
        let e = verify(&b, s.as_bytes(), &trusted(), &expect()).unwrap_err();
        assert!(matches!(e, ChannelError::WrongName { .. }), "{e}");
        let mut m = manifest("1.1");
        m.channel = "beta".into();
        let (b, s) = signed(&m, &key());
        let e = verify(&b, s.as_bytes(), &trusted(), &expect()).unwrap_err();
        assert!(matches!(e, ChannelError::WrongChannel { .. }), "{e}");
        for v in ["1.0", "0.9", "1.0~rc1", "1", "01.0", "1.00"] {
            let (b, s) = signed(&manifest(v), &key());
            let e = verify(&b, s.as_bytes(), &trusted(), &expect()).unwrap_err();
            assert!(matches!(e, ChannelError::NotNewer { .. }), "{v}: {e}");
        }
        // "1.0.1" and "1.0^1" are newer
        for v in ["1.0.1", "1.0^1", "1.0a", "1.0+b1"] {
            let (b, s) = signed(&manifest(v), &key());
            assert!(
                verify(&b, s.as_bytes(), &trusted(), &expect()).is_ok(),
                "{v}"
            );
        }
    }

    #[test]
    fn malformed_manifests_name_the_field() {
        let key = key();
        let cases: Vec<(String, &str)> = vec![
            (r#"{"format":1}"#.into(), "missing field"),
            (
                String::from_utf8(manifest("2").to_bytes())
                    .unwrap()
                    .replace("\"format\": 1,", "\"format\": 1, \"extra\": true,"),
                "unknown field `extra`",
            ),
            (
                String::from_utf8(manifest("2").to_bytes())
                    .unwrap()
                    .replace("\"rootfs.squashfs\"", "\"../etc/passwd\""),
                "parts[0].path",
            ),
            (
                String::from_utf8(manifest("2").to_bytes())
                    .unwrap()
                    .replace("\"kind\": \"initrd\"", "\"kind\": \"kernel\""),
                "2 parts of kind kernel",
            ),
            (
                String::from_utf8(manifest("2").to_bytes())
                    .unwrap()
                    .replace("\"kind\": \"initrd\"", "\"kind\": \"firmware\""),
                "parts[2].kind",
            ),
            (
                String::from_utf8(manifest("2").to_bytes())
                    .unwrap()
                    .replace(&"ab".repeat(32), "AB"),
                "64 lowercase hex",
            ),
            (
                String::from_utf8(manifest("2").to_bytes())
                    .unwrap()
                    .replace("\"version\": \"2\"", "\"version\": \"2/../x\""),
                "version: \"2/../x\"",
            ),
            (
                String::from_utf8(manifest("2").to_bytes())
                    .unwrap()
                    .replace("\"format\": 1", "\"format\": 2"),
                "format: 2 is not supported",
            ),
        ];
        for (text, want) in cases {
            let s = sign(text.as_bytes(), &key);
            let e = verify(text.as_bytes(), s.as_bytes(), &trusted(), &expect())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "want {want:?} in {e}");
        }
    }
}
