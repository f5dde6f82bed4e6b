//! Archive trust: the OpenPGP keyring of trust roots, verification of a
//! suite's clear-signed `InRelease`, and the `Release` data it vouches for
//! (suite metadata and the SHA-256 + size of every index file).
//!
//! This module owns the chain "trusted key -> InRelease signature -> Release
//! fields -> index file hash". It never reads anything outside the signed
//! text, never fetches, and never decides which keys are trusted: callers
//! hand it the armored trust roots (`images/keys/*.asc`) and the bytes they
//! downloaded. What the index files contain is `index`'s business.
//!
//! Verification follows apt's rules: at least one good signature by a key of
//! the keyring; signatures by unknown keys are ignored; a signature by a
//! known key that does not verify is fatal (the text was altered); a
//! signature that verifies but is worthless (expired or revoked key, weak
//! digest, wrong signature type) only counts against the file when no other
//! signature is good. Then `Valid-Until` must not be in the past and `Date`
//! not in the future.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{self, Signature, SignatureType};
use pgp::types::{Fingerprint, KeyDetails, KeyId, Tag};
use sha2::{Digest, Sha256};

use crate::deb822;

const BEGIN_SIGNED: &str = "-----BEGIN PGP SIGNED MESSAGE-----";

/// Everything that can go wrong between a trust root and an index file.
/// `label` is the caller's name for the file (a path or URL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// An armored key block could not be used as a trust root.
    #[error("{label}: unusable OpenPGP key: {message}")]
    InvalidKey { label: String, message: String },
    /// The data is not an OpenPGP clear-signed message, or carries no
    /// signature at all.
    #[error("{label}: not signed: expected an OpenPGP clear-signed message (`{BEGIN_SIGNED}`) with at least one signature")]
    NotSigned { label: String },
    /// Signed, but by no key of the keyring. `key_ids` are the issuers of the
    /// signatures found (fingerprints when the signature names one).
    #[error(
        "{label}: no signature by a trusted key (signed by: {})",
        display_list(key_ids)
    )]
    NoTrustedSignature { label: String, key_ids: Vec<String> },
    /// A signature by a keyring key that does not verify, or that verifies
    /// but cannot be accepted (`reason` says which).
    #[error("{label}: bad signature by {key}: {reason}")]
    BadSignature {
        label: String,
        key: String,
        reason: String,
    },
    /// The only signatures by keyring keys were made by expired keys.
    #[error("{label}: signed by {key}, which expired on {expired}; update the archive keys")]
    KeyExpired {
        label: String,
        key: String,
        expired: String,
    },
    /// `Valid-Until` is in the past: a stale (possibly replayed) Release.
    #[error("{label}: field Valid-Until: the Release expired on {valid_until}")]
    Expired { label: String, valid_until: String },
    /// `Date` is in the future (clock skew or a forged Release).
    #[error("{label}: field Date: the Release is dated {date}, which is in the future")]
    NotYetValid { label: String, date: String },
    /// The signed text is not a well-formed Release. `line` is 1-based in
    /// the file as given (armor header lines included); `message` names the
    /// field.
    #[error("{label}:{line}: {message}")]
    Malformed {
        label: String,
        line: usize,
        message: String,
    },
    /// The file's SHA-256 differs from the one in the Release.
    #[error("{path}: SHA256 mismatch: the Release lists {expected}, the data has {actual}")]
    HashMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    /// The file's size differs from the one in the Release.
    #[error("{path}: size mismatch: the Release lists {expected} bytes, the data has {actual}")]
    SizeMismatch {
        path: String,
        expected: u64,
        actual: u64,
    },
    /// The path is not in the Release's SHA256 field.
    #[error("{path}: not listed in the SHA256 field of the Release")]
    NotListed { path: String },
}

fn display_list(items: &[String]) -> String {
    if items.is_empty() {
        "no issuer named".to_string()
    } else {
        items.join(", ")
    }
}

// ---------------------------------------------------------------------------
// Keyring

/// What the keyring knows about one signing-capable key (a primary key or a
/// subkey), for messages and for callers that want to show trust roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Label of the armored source the key came from (e.g. its file name).
    pub label: String,
    /// Upper-case hex fingerprint of this key.
    pub fingerprint: String,
    /// Upper-case hex fingerprint of the primary key (same as `fingerprint`
    /// for a primary key).
    pub primary_fingerprint: String,
    /// The primary key's user ids with a valid self-signature.
    pub user_ids: Vec<String>,
    /// Public-key algorithm, e.g. `RSA` or `EdDSALegacy`.
    pub algorithm: String,
    pub created: SystemTime,
    /// When the key (or its primary key) stops being valid, if ever.
    pub expires: Option<SystemTime>,
    /// Revoked by a self-signed revocation (of the key or its primary key).
    pub revoked: bool,
    /// The key's flags allow data signatures.
    pub can_sign: bool,
}

impl KeyInfo {
    pub fn is_subkey(&self) -> bool {
        self.fingerprint != self.primary_fingerprint
    }

    /// The 16-hex-digit long key id (last 8 bytes of a v4 fingerprint).
    pub fn key_id(&self) -> &str {
        &self.fingerprint[self.fingerprint.len().saturating_sub(16)..]
    }
}

impl fmt::Display for KeyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uid = self.user_ids.first().map(String::as_str).unwrap_or("");
        if self.is_subkey() {
            write!(
                f,
                "{} (subkey of {}, \"{uid}\", from {})",
                self.fingerprint, self.primary_fingerprint, self.label
            )
        } else {
            write!(f, "{} (\"{uid}\", from {})", self.fingerprint, self.label)
        }
    }
}

enum Material {
    Primary(packet::PublicKey),
    Subkey(packet::PublicSubkey),
}

impl Material {
    fn verify(&self, sig: &Signature, data: &[u8]) -> pgp::errors::Result<()> {
        match self {
            Material::Primary(k) => sig.verify(k, data),
            Material::Subkey(k) => sig.verify(k, data),
        }
    }
}

struct Entry {
    info: KeyInfo,
    fingerprint: Fingerprint,
    key_id: KeyId,
    material: Material,
}

/// The trust roots: signing-capable primary keys and subkeys whose
/// self-signatures verify, loaded from ASCII-armored public key blocks.
pub struct Keyring {
    entries: Vec<Entry>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.info))
            .finish()
    }
}

impl Keyring {
    /// Load every key of every `(label, armored block)` source. A source may
    /// hold several keys. Third-party certifications are ignored; a key
    /// needs at least one user id with a valid self-signature, and a subkey
    /// counts only with a valid binding signature, the signing flag and a
    /// valid back-signature (as gpg requires).
    pub fn from_armored(sources: &[(String, String)]) -> Result<Keyring, TrustError> {
        if sources.is_empty() {
            return Err(TrustError::InvalidKey {
                label: "keyring".into(),
                message: "no key sources given".into(),
            });
        }
        let mut entries = Vec::new();
        for (label, armored) in sources {
            let invalid = |message: String| TrustError::InvalidKey {
                label: label.clone(),
                message,
            };
            let (keys, _) = SignedPublicKey::from_string_many(armored)
                .map_err(|e| invalid(format!("not an armored public key block: {e}")))?;
            let mut count = 0;
            for key in keys {
                let key = key.map_err(|e| invalid(format!("cannot parse key: {e}")))?;
                load_key(label, &key, &mut entries).map_err(invalid)?;
                count += 1;
            }
            if count == 0 {
                return Err(invalid("no public key in the block".into()));
            }
        }
        Ok(Keyring { entries })
    }

    /// All signing-capable keys and subkeys, in load order.
    pub fn keys(&self) -> impl Iterator<Item = &KeyInfo> {
        self.entries.iter().map(|e| &e.info)
    }

    /// Number of signing-capable keys and subkeys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Look a key up by fingerprint or long key id (hex, any case, optional
    /// `0x`).
    pub fn find(&self, id: &str) -> Option<&KeyInfo> {
        let id = id.trim_start_matches("0x").to_ascii_uppercase();
        if id.len() < 16 {
            return None;
        }
        self.keys()
            .find(|k| k.fingerprint == id || k.key_id() == id)
    }

    /// A human description of `id` (fingerprint or key id): the key's
    /// fingerprint, user id and source when known, else `id` itself.
    pub fn describe(&self, id: &str) -> String {
        self.find(id)
            .map(ToString::to_string)
            .unwrap_or_else(|| id.to_string())
    }

    fn candidates<'a>(&'a self, sig: &Signature) -> Vec<&'a Entry> {
        let fps = sig.issuer_fingerprint();
        let ids = sig.issuer_key_id();
        self.entries
            .iter()
            .filter(|e| {
                fps.iter().any(|f| **f == e.fingerprint) || ids.iter().any(|i| **i == e.key_id)
            })
            .collect()
    }
}

fn fpr_hex(fp: &Fingerprint) -> String {
    format!("{fp:X}")
}

fn secs(t: pgp::types::Timestamp) -> u64 {
    u64::from(t.as_secs())
}

fn to_time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Was `sig` issued by `key` (or names no issuer at all)?
fn issued_by(sig: &Signature, key: &impl KeyDetails) -> bool {
    let fps = sig.issuer_fingerprint();
    let ids = sig.issuer_key_id();
    (fps.is_empty() && ids.is_empty())
        || fps.iter().any(|f| **f == key.fingerprint())
        || ids.iter().any(|i| **i == key.legacy_key_id())
}

fn created(sig: &Signature) -> u64 {
    sig.created().map(secs).unwrap_or(0)
}

/// The newer of two signatures (by creation time).
fn newer<'a>(a: Option<&'a Signature>, b: &'a Signature) -> Option<&'a Signature> {
    match a {
        Some(a) if created(a) > created(b) => Some(a),
        _ => Some(b),
    }
}

fn expiry_secs(base: u64, sig: Option<&Signature>) -> Option<u64> {
    let d = sig?.key_expiration_time()?.as_secs();
    (d != 0).then(|| base + u64::from(d))
}

fn min_expiry(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn flags_allow_signing(sig: Option<&Signature>) -> bool {
    let Some(sig) = sig else { return true };
    let f = sig.key_flags();
    let any =
        f.certify() || f.sign() || f.encrypt_comms() || f.encrypt_storage() || f.authentication();
    // No key flags at all: usable for whatever the algorithm can do.
    !any || f.sign()
}

fn load_key(label: &str, key: &SignedPublicKey, out: &mut Vec<Entry>) -> Result<(), String> {
    let primary = &key.primary_key;
    let pfp = primary.fingerprint();
    let pfpr = fpr_hex(&pfp);
    let pcreated = secs(primary.created_at());

    // User ids with a valid self-certification; the primary one (or the
    // newest) carries the key's flags and expiry.
    let mut user_ids = Vec::new();
    let mut best: Option<&Signature> = None;
    for user in &key.details.users {
        let mut cert: Option<&Signature> = None;
        let mut revoked = false;
        for sig in user.signatures.iter().filter(|s| issued_by(s, primary)) {
            if let Err(e) = sig.verify_certification(primary, Tag::UserId, &user.id) {
                tracing::debug!(
                    "{label}: key {pfpr}: ignoring a self-signature that does not verify: {e}"
                );
                continue;
            }
            match sig.typ() {
                Some(SignatureType::CertRevocation) => revoked = true,
                _ if sig.is_certification() => cert = newer(cert, sig),
                _ => {}
            }
        }
        let Some(cert) = cert.filter(|_| !revoked) else {
            continue;
        };
        user_ids.push(String::from_utf8_lossy(user.id.id()).into_owned());
        best = match best {
            Some(b) if b.is_primary() && !cert.is_primary() => Some(b),
            Some(b) if cert.is_primary() && !b.is_primary() => Some(cert),
            b => newer(b, cert),
        };
    }
    if user_ids.is_empty() {
        return Err(format!(
            "key {pfpr} has no user id with a valid self-signature"
        ));
    }

    let revoked = key
        .details
        .revocation_signatures
        .iter()
        .any(|s| issued_by(s, primary) && s.verify_key(primary).is_ok());
    let mut direct: Option<&Signature> = None;
    for sig in key.details.direct_signatures.iter() {
        if issued_by(sig, primary)
            && sig.key_expiration_time().is_some()
            && sig.verify_key(primary).is_ok()
        {
            direct = newer(direct, sig);
        }
    }
    let pexpires = expiry_secs(pcreated, direct).or_else(|| expiry_secs(pcreated, best));

    let info = |fingerprint: String,
                algorithm: String,
                created: u64,
                expires: Option<u64>,
                revoked: bool,
                can_sign: bool| KeyInfo {
        label: label.to_string(),
        fingerprint,
        primary_fingerprint: pfpr.clone(),
        user_ids: user_ids.clone(),
        algorithm,
        created: to_time(created),
        expires: expires.map(to_time),
        revoked,
        can_sign,
    };

    out.push(Entry {
        info: info(
            pfpr.clone(),
            format!("{:?}", primary.algorithm()),
            pcreated,
            pexpires,
            revoked,
            flags_allow_signing(best),
        ),
        fingerprint: pfp.clone(),
        key_id: primary.legacy_key_id(),
        material: Material::Primary(primary.clone()),
    });

    for sub in &key.public_subkeys {
        let sfpr = fpr_hex(&sub.key.fingerprint());
        let mut binding: Option<&Signature> = None;
        let mut sub_revoked = false;
        for sig in sub.signatures.iter().filter(|s| issued_by(s, primary)) {
            if let Err(e) = sig.verify_subkey_binding(primary, &sub.key) {
                tracing::debug!("{label}: subkey {sfpr}: ignoring a binding signature that does not verify: {e}");
                continue;
            }
            match sig.typ() {
                Some(SignatureType::SubkeyRevocation) => sub_revoked = true,
                Some(SignatureType::SubkeyBinding) => binding = newer(binding, sig),
                _ => {}
            }
        }
        let Some(binding) = binding else {
            tracing::debug!("{label}: subkey {sfpr}: no valid binding signature, ignored");
            continue;
        };
        if !binding.key_flags().sign() {
            continue; // encryption or authentication subkey
        }
        let backsig_ok = binding
            .embedded_signature()
            .is_some_and(|b| b.verify_primary_key_binding(&sub.key, primary).is_ok());
        if !backsig_ok {
            tracing::debug!("{label}: signing subkey {sfpr}: no valid back-signature, ignored");
            continue;
        }
        let screated = secs(sub.key.created_at());
        out.push(Entry {
            info: info(
                sfpr,
                format!("{:?}", sub.key.algorithm()),
                screated,
                min_expiry(pexpires, expiry_secs(screated, Some(binding))),
                revoked || sub_revoked,
                true,
            ),
            fingerprint: sub.key.fingerprint(),
            key_id: sub.key.legacy_key_id(),
            material: Material::Subkey(sub.key.clone()),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Release

/// Size and SHA-256 of one file listed in a Release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// The fields of a suite's Release that cairn uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    pub origin: Option<String>,
    pub label: Option<String>,
    pub suite: Option<String>,
    pub version: Option<String>,
    pub codename: Option<String>,
    /// As written, e.g. `Sat, 11 Jul 2026 10:16:37 UTC`; see [`Release::date_time`].
    pub date: Option<String>,
    pub valid_until: Option<String>,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    /// `Acquire-By-Hash: yes`: index files are also served under
    /// `<dir>/by-hash/SHA256/<hash>` (see [`Release::by_hash_path`]).
    pub acquire_by_hash: bool,
    /// `No-Support-for-Architecture-all: Packages`: `Architecture: all`
    /// packages are only in `binary-all/Packages`, not repeated per arch.
    pub no_support_for_architecture_all: bool,
    /// From the SHA256 field, keyed by path relative to `dists/<suite>/`.
    pub files: BTreeMap<String, FileEntry>,
    /// Fingerprints of the keyring keys that made good signatures over this
    /// Release (empty for [`Release::parse_unverified`]).
    pub signed_by: Vec<String>,
}

impl Release {
    /// Parse Release text WITHOUT any signature check. Only for text that is
    /// already trusted; downloaded data goes through [`verify_inrelease`].
    pub fn parse_unverified(label: &str, text: &str) -> Result<Release, TrustError> {
        Self::parse_at(label, text, 0)
    }

    /// `line_offset`: lines in the file before the first line of `text`.
    fn parse_at(label: &str, text: &str, line_offset: usize) -> Result<Release, TrustError> {
        let malformed = |line: usize, message: String| TrustError::Malformed {
            label: label.to_string(),
            line: line + line_offset,
            message,
        };
        let paragraphs = deb822::parse(text).map_err(|e| malformed(e.line, e.message))?;
        let Some(p) = paragraphs.first() else {
            return Err(malformed(1, "empty Release: no fields".into()));
        };
        if let Some(extra) = paragraphs.get(1) {
            return Err(malformed(
                extra.line,
                "a Release has a single paragraph; found a second one".into(),
            ));
        }

        let single = |name: &str| -> Result<Option<String>, TrustError> {
            match p.field(name) {
                None => Ok(None),
                Some(f) if f.value.contains('\n') => Err(malformed(
                    f.line,
                    format!("field {name}: expected a single-line value"),
                )),
                Some(f) => Ok(Some(f.value.clone())),
            }
        };
        let words = |name: &str| -> Result<Vec<String>, TrustError> {
            Ok(single(name)?
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default())
        };
        let date_field = |name: &str| -> Result<Option<String>, TrustError> {
            let v = single(name)?;
            if let Some(v) = &v {
                if parse_date(v).is_none() {
                    let line = p.field(name).map_or(p.line, |f| f.line);
                    return Err(malformed(
                        line,
                        format!("field {name}: cannot parse date {v:?} (expected e.g. `Sat, 11 Jul 2026 10:16:37 UTC`)"),
                    ));
                }
            }
            Ok(v)
        };

        let acquire_by_hash = match single("Acquire-By-Hash")?.as_deref() {
            None | Some("no") => false,
            Some("yes") => true,
            Some(other) => {
                let line = p.field("Acquire-By-Hash").map_or(p.line, |f| f.line);
                return Err(malformed(
                    line,
                    format!("field Acquire-By-Hash: expected `yes` or `no`, found {other:?}"),
                ));
            }
        };
        let no_all = single("No-Support-for-Architecture-all")?;
        if let Some(v) = no_all.as_deref().filter(|v| *v != "Packages") {
            tracing::debug!(
                "{label}: ignoring unknown No-Support-for-Architecture-all value {v:?}"
            );
        }

        let Some(sha) = p.field("SHA256") else {
            return Err(malformed(
                p.line,
                "no SHA256 field: the Release does not list index hashes".into(),
            ));
        };
        let mut files = BTreeMap::new();
        for (i, entry) in sha.value.split('\n').enumerate() {
            if entry.trim().is_empty() {
                continue;
            }
            let line = sha.line + i;
            let parts: Vec<&str> = entry.split_whitespace().collect();
            let [hash, size, path] = parts[..] else {
                return Err(malformed(
                    line,
                    format!("field SHA256: expected `<sha256> <size> <path>`, found {entry:?}"),
                ));
            };
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(malformed(
                    line,
                    format!("field SHA256: {hash:?} is not a 64-digit hex SHA-256"),
                ));
            }
            let size: u64 = size.parse().map_err(|_| {
                malformed(line, format!("field SHA256: size {size:?} is not a number"))
            })?;
            if path.starts_with('/') || path.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(malformed(
                    line,
                    format!("field SHA256: path {path:?} is not a plain relative path"),
                ));
            }
            let fe = FileEntry {
                size,
                sha256: hash.to_ascii_lowercase(),
            };
            if files.insert(path.to_string(), fe).is_some() {
                return Err(malformed(
                    line,
                    format!("field SHA256: {path} is listed twice"),
                ));
            }
        }

        Ok(Release {
            origin: single("Origin")?,
            label: single("Label")?,
            suite: single("Suite")?,
            version: single("Version")?,
            codename: single("Codename")?,
            date: date_field("Date")?,
            valid_until: date_field("Valid-Until")?,
            architectures: words("Architectures")?,
            components: words("Components")?,
            acquire_by_hash,
            no_support_for_architecture_all: no_all.as_deref() == Some("Packages"),
            files,
            signed_by: Vec::new(),
        })
    }

    /// `Date` as a time (None when absent or unparsable).
    pub fn date_time(&self) -> Option<SystemTime> {
        self.date.as_deref().and_then(parse_date)
    }

    /// `Valid-Until` as a time (None when absent or unparsable).
    pub fn valid_until_time(&self) -> Option<SystemTime> {
        self.valid_until.as_deref().and_then(parse_date)
    }

    /// Check `data`, downloaded as `path` (relative to `dists/<suite>/`,
    /// e.g. `main/binary-amd64/Packages.xz`), against its SHA256 entry.
    pub fn check(&self, path: &str, data: &[u8]) -> Result<(), TrustError> {
        let actual = hex::encode(Sha256::digest(data));
        self.check_digest(path, data.len() as u64, &actual)
    }

    /// Like [`Release::check`], for a size and hex SHA-256 computed while
    /// streaming.
    pub fn check_digest(&self, path: &str, size: u64, sha256: &str) -> Result<(), TrustError> {
        let entry = self.files.get(path).ok_or_else(|| TrustError::NotListed {
            path: path.to_string(),
        })?;
        if entry.size != size {
            return Err(TrustError::SizeMismatch {
                path: path.to_string(),
                expected: entry.size,
                actual: size,
            });
        }
        if !entry.sha256.eq_ignore_ascii_case(sha256) {
            return Err(TrustError::HashMismatch {
                path: path.to_string(),
                expected: entry.sha256.clone(),
                actual: sha256.to_ascii_lowercase(),
            });
        }
        Ok(())
    }

    /// The `by-hash` location of a listed file when the archive offers it
    /// (`Acquire-By-Hash: yes`): `main/binary-amd64/by-hash/SHA256/<hash>`.
    /// Fetching by hash avoids races with a mirror update.
    pub fn by_hash_path(&self, path: &str) -> Option<String> {
        if !self.acquire_by_hash {
            return None;
        }
        let entry = self.files.get(path)?;
        Some(match path.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/by-hash/SHA256/{}", entry.sha256),
            None => format!("by-hash/SHA256/{}", entry.sha256),
        })
    }
}

// ---------------------------------------------------------------------------
// Verification

/// Verify a clear-signed `InRelease` against `keyring` and return the
/// Release parsed from the signed text only. `label` names the file in
/// errors; `now` is the time to judge expiry against (use
/// `SystemTime::now()` outside tests).
pub fn verify_inrelease(
    data: &[u8],
    keyring: &Keyring,
    label: &str,
    now: SystemTime,
) -> Result<Release, TrustError> {
    let text = std::str::from_utf8(data).map_err(|e| TrustError::Malformed {
        label: label.to_string(),
        line: 1 + data[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        message: "not valid UTF-8".into(),
    })?;
    let Some(start) = text.find(BEGIN_SIGNED) else {
        return Err(TrustError::NotSigned {
            label: label.to_string(),
        });
    };
    if start != 0 {
        return Err(TrustError::Malformed {
            label: label.to_string(),
            line: 1,
            message: format!("text before `{BEGIN_SIGNED}` is not covered by the signature"),
        });
    }
    let (msg, _headers) =
        CleartextSignedMessage::from_string(text).map_err(|e| TrustError::Malformed {
            label: label.to_string(),
            line: 1,
            message: format!("invalid OpenPGP clear-signed message: {e}"),
        })?;
    if msg.signatures().is_empty() {
        return Err(TrustError::NotSigned {
            label: label.to_string(),
        });
    }

    // The exact bytes the signatures cover (dash-unescaped, CRLF line ends).
    let signed = msg.signed_text();
    let mut good = Vec::new();
    let mut unknown = Vec::new();
    let mut worthless = Vec::new();
    for sig in msg.signatures() {
        let candidates = keyring.candidates(sig);
        if candidates.is_empty() {
            let issuer = issuer_name(sig);
            tracing::debug!(
                "{label}: ignoring a signature by {issuer}, which is not in the keyring"
            );
            unknown.push(issuer);
            continue;
        }
        let Some(entry) = candidates
            .iter()
            .find(|e| e.material.verify(sig, signed.as_bytes()).is_ok())
        else {
            return Err(TrustError::BadSignature {
                label: label.to_string(),
                key: candidates[0].info.to_string(),
                reason: "the signature does not verify over the signed text (altered or corrupt)"
                    .into(),
            });
        };
        match acceptable(sig, &entry.info, label, now) {
            Ok(()) => {
                tracing::debug!("{label}: good signature by {}", entry.info);
                good.push(entry.info.fingerprint.clone());
            }
            Err(e) => {
                tracing::debug!("{e}");
                worthless.push(e);
            }
        }
    }
    if good.is_empty() {
        return Err(worthless
            .into_iter()
            .next()
            .unwrap_or(TrustError::NoTrustedSignature {
                label: label.to_string(),
                key_ids: unknown,
            }));
    }

    let body = signed.replace("\r\n", "\n");
    let mut release = Release::parse_at(label, &body, header_lines(text))?;
    release.signed_by = good;
    if let (Some(v), Some(t)) = (&release.valid_until, release.valid_until_time()) {
        if now > t {
            return Err(TrustError::Expired {
                label: label.to_string(),
                valid_until: v.clone(),
            });
        }
    }
    if let (Some(d), Some(t)) = (&release.date, release.date_time()) {
        if t > now {
            return Err(TrustError::NotYetValid {
                label: label.to_string(),
                date: d.clone(),
            });
        }
    }
    Ok(release)
}

/// Number of lines before the signed text: the `BEGIN` line, the armor
/// headers and the blank line ending them.
fn header_lines(text: &str) -> usize {
    text.lines()
        .enumerate()
        .skip(1)
        .find(|(_, l)| l.trim().is_empty())
        .map_or(0, |(i, _)| i + 1)
}

fn issuer_name(sig: &Signature) -> String {
    if let Some(fp) = sig.issuer_fingerprint().first() {
        fpr_hex(fp)
    } else if let Some(id) = sig.issuer_key_id().first() {
        id.to_string().to_ascii_uppercase()
    } else {
        "an unnamed issuer".to_string()
    }
}

/// A signature that verified cryptographically: may it be relied upon?
fn acceptable(
    sig: &Signature,
    key: &KeyInfo,
    label: &str,
    now: SystemTime,
) -> Result<(), TrustError> {
    let bad = |reason: String| TrustError::BadSignature {
        label: label.to_string(),
        key: key.to_string(),
        reason,
    };
    match sig.typ() {
        Some(SignatureType::Text | SignatureType::Binary) => {}
        other => return Err(bad(format!("not a document signature (type {other:?})"))),
    }
    if let Some(h) = sig.hash_alg() {
        if matches!(
            h,
            HashAlgorithm::None
                | HashAlgorithm::Md5
                | HashAlgorithm::Sha1
                | HashAlgorithm::Ripemd160
        ) {
            return Err(bad(format!(
                "weak digest algorithm {h} (rejected, as apt does)"
            )));
        }
    }
    if key.revoked {
        return Err(bad("the key is revoked".into()));
    }
    if !key.can_sign {
        return Err(bad("the key's flags do not allow signing".into()));
    }
    let Some(made) = sig.created().map(secs) else {
        return Err(bad("the signature has no creation time".into()));
    };
    if made < unix_secs(key.created) {
        return Err(bad(format!(
            "the signature ({}) predates the key ({})",
            format_date(to_time(made)),
            format_date(key.created)
        )));
    }
    if let Some(exp) = key.expires {
        if now >= exp || made >= unix_secs(exp) {
            return Err(TrustError::KeyExpired {
                label: label.to_string(),
                key: key.to_string(),
                expired: format_date(exp),
            });
        }
    }
    if let Some(d) = sig.signature_expiration_time().map(|d| d.as_secs()) {
        let until = made + u64::from(d);
        if d != 0 && unix_secs(now) >= until {
            return Err(bad(format!(
                "the signature expired on {}",
                format_date(to_time(until))
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Dates (RFC 2822 as written by dak/apt-ftparchive, always in UTC or an offset)

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// Parse an RFC 2822 date as found in Release files, e.g.
/// `Sat, 11 Jul 2026 10:16:37 UTC` (zone `UTC`, `GMT`, `UT`, `Z` or
/// `+hhmm`/`-hhmm`; the weekday is optional and not cross-checked, as apt
/// does). None for anything else or dates before 1970.
pub fn parse_date(s: &str) -> Option<SystemTime> {
    let mut s = s.trim();
    if let Some((wd, rest)) = s.split_once(',') {
        if !WEEKDAYS.iter().any(|w| w.eq_ignore_ascii_case(wd.trim())) {
            return None;
        }
        s = rest;
    }
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [day, month, year, time, zone] = parts[..] else {
        return None;
    };
    let num = |v: &str, max_len: usize| -> Option<u32> {
        (!v.is_empty() && v.len() <= max_len && v.bytes().all(|b| b.is_ascii_digit()))
            .then(|| v.parse().ok())
            .flatten()
    };
    let day = num(day, 2)?;
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u32 + 1;
    let year = i64::from(num(year, 4)?);
    let mut hms = time.split(':');
    let (h, m) = (num(hms.next()?, 2)?, num(hms.next()?, 2)?);
    let sec = match hms.next() {
        Some(v) => num(v, 2)?,
        None => 0,
    };
    if hms.next().is_some() || year < 1970 || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // None for 30 February and the like
    let midnight = chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?
        .and_hms_opt(0, 0, 0)?
        .and_utc()
        .timestamp();
    let offset: i64 = match zone {
        "UTC" | "GMT" | "UT" | "Z" => 0,
        z if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let hh = i64::from(num(&z[1..3], 2)?);
            let mm = i64::from(num(&z[3..5], 2)?);
            let o = hh * 3600 + mm * 60;
            if z.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let t = midnight + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec) - offset;
    u64::try_from(t).ok().map(to_time)
}

/// Format a time like Release files do: `Sat, 11 Jul 2026 10:16:37 UTC`.
pub fn format_date(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%a, %d %b %Y %H:%M:%S UTC")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../tests/fixtures/trust/", $name)).as_slice()
        };
    }

    fn at(date: &str) -> SystemTime {
        parse_date(date).unwrap()
    }

    /// Inside the fixture Release's Date .. Valid-Until window.
    fn fixture_now() -> SystemTime {
        at("Sun, 12 Jul 2026 00:00:00 UTC")
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// trusted.asc + expired.asc; untrusted.asc is deliberately left out.
    fn test_keyring() -> Keyring {
        Keyring::from_armored(&[
            ("trusted.asc".into(), text(fixture!("trusted.asc"))),
            ("expired.asc".into(), text(fixture!("expired.asc"))),
        ])
        .unwrap()
    }

    fn real_keys_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/keys")
    }

    use std::path::{Path, PathBuf};

    /// The project's trust roots, optionally only the files whose name
    /// contains `only`.
    fn real_keyring(only: &str) -> Keyring {
        let mut files: Vec<_> = std::fs::read_dir(real_keys_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "asc"))
            .filter(|p| p.file_name().unwrap().to_str().unwrap().contains(only))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no key matches {only:?}");
        let sources: Vec<(String, String)> = files
            .iter()
            .map(|p| {
                (
                    p.file_name().unwrap().to_str().unwrap().to_string(),
                    std::fs::read_to_string(p).unwrap(),
                )
            })
            .collect();
        Keyring::from_armored(&sources).unwrap()
    }

    fn bookworm_date() -> SystemTime {
        let t = text(fixture!("bookworm-InRelease"));
        let line = t.lines().find(|l| l.starts_with("Date: ")).unwrap();
        at(&line["Date: ".len()..])
    }

    /// gpgv's verdicts recorded by make.sh: file -> (verdict, fingerprints).
    fn gpgv_verdicts(file: &str) -> BTreeMap<String, (String, Vec<String>)> {
        file.lines()
            .map(|l| {
                let mut w = l.split_whitespace();
                let name = w.next().unwrap().to_string();
                let verdict = w.next().unwrap().to_string();
                let mut fprs: Vec<String> = w.map(str::to_string).collect();
                fprs.sort();
                (name, (verdict, fprs))
            })
            .collect()
    }

    fn verdict(r: &Result<Release, TrustError>) -> (String, Vec<String>) {
        let v = match r {
            Ok(rel) => {
                let mut f = rel.signed_by.clone();
                f.sort();
                return ("good".into(), f);
            }
            Err(TrustError::BadSignature { .. }) => "bad",
            Err(TrustError::KeyExpired { .. }) => "key-expired",
            Err(TrustError::NoTrustedSignature { .. }) => "no-trusted",
            Err(TrustError::NotSigned { .. }) => "not-signed",
            Err(e) => panic!("unexpected error {e}"),
        };
        (v.to_string(), Vec::new())
    }

    // --- keyring -----------------------------------------------------------

    #[test]
    fn real_debian_keys_load_with_signing_subkeys() {
        let k = real_keyring("");
        // 4 RSA primaries with one signing subkey each, 2 Ed25519 primaries.
        assert_eq!(k.len(), 10, "{k:?}");
        let sub = k.find("4CB50190207B4758A3F73A796ED0E7B82643E131").unwrap();
        assert!(sub.is_subkey());
        assert_eq!(
            sub.primary_fingerprint,
            "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8"
        );
        assert_eq!(sub.label, "debian-archive-bookworm-automatic.asc");
        assert_eq!(sub.algorithm, "RSA");
        assert_eq!(
            sub.user_ids,
            ["Debian Archive Automatic Signing Key (12/bookworm) <ftpmaster@debian.org>"]
        );
        assert_eq!(
            format_date(sub.expires.unwrap()),
            "Sun, 19 Jan 2031 11:44:21 UTC"
        );
        assert!(sub.can_sign && !sub.revoked);
        let stable = k.find("0xf8d2585b8783d481").unwrap();
        assert!(!stable.is_subkey());
        assert_eq!(stable.algorithm, "EdDSALegacy");
        assert!(k
            .describe("4D64FEC119C2029067D6E791F8D2585B8783D481")
            .contains("Debian Stable Release Key (12/bookworm)"));
        assert_eq!(k.describe("0123456789ABCDEF"), "0123456789ABCDEF");
        assert!(k.find("ABCD").is_none());
    }

    #[test]
    fn fixture_keys_load() {
        let k = test_keyring();
        let infos: Vec<&KeyInfo> = k.keys().collect();
        assert_eq!(infos.len(), 3);
        assert!(!infos[0].is_subkey() && infos[0].algorithm == "EdDSALegacy");
        assert!(infos[1].is_subkey() && infos[1].algorithm == "RSA");
        assert_eq!(
            infos[1].user_ids,
            ["cairn test archive key <trusted@cairn.invalid>"]
        );
        assert_eq!(infos[0].expires, None);
        let expired = infos[2];
        assert_eq!(expired.label, "expired.asc");
        assert_eq!(unix_secs(expired.expires.unwrap()), 1_609_372_800);
    }

    #[test]
    fn keyring_rejects_garbage_and_empty_input() {
        let e = Keyring::from_armored(&[("x.asc".into(), "not a key".into())]).unwrap_err();
        assert!(
            matches!(&e, TrustError::InvalidKey { label, .. } if label == "x.asc"),
            "{e}"
        );
        assert!(e.to_string().starts_with("x.asc: "));
        let e = Keyring::from_armored(&[]).unwrap_err();
        assert!(matches!(e, TrustError::InvalidKey { .. }));
        // A signed message is not a key block.
        let e =
            Keyring::from_armored(&[("m".into(), text(fixture!("InRelease.subkey")))]).unwrap_err();
        assert!(matches!(e, TrustError::InvalidKey { .. }), "{e}");
    }

    // --- the real Debian InRelease -----------------------------------------

    #[test]
    fn real_bookworm_inrelease_verifies_with_rsa_and_ed25519_keys() {
        let data = fixture!("bookworm-InRelease");
        let now = bookworm_date();
        let r = verify_inrelease(data, &real_keyring(""), "bookworm/InRelease", now).unwrap();
        // gpgv (with debian-archive-keyring.gpg) found the same good signers.
        let gpgv = gpgv_verdicts(&text(fixture!("gpgv-verdicts-bookworm.txt")));
        assert_eq!(verdict(&Ok(r.clone())), gpgv["bookworm-InRelease"]);
        assert_eq!(r.signed_by.len(), 3);

        assert_eq!(r.origin.as_deref(), Some("Debian"));
        assert_eq!(r.label.as_deref(), Some("Debian"));
        assert_eq!(r.suite.as_deref(), Some("oldstable"));
        assert_eq!(r.codename.as_deref(), Some("bookworm"));
        assert!(r.version.as_deref().unwrap().starts_with("12."));
        assert_eq!(r.valid_until, None);
        assert!(r.acquire_by_hash && r.no_support_for_architecture_all);
        assert!(r.architectures.iter().any(|a| a == "amd64"));
        assert_eq!(
            r.components,
            ["main", "contrib", "non-free-firmware", "non-free"]
        );
        assert!(r.files.len() > 500, "{}", r.files.len());
        let e = &r.files["main/binary-amd64/Packages.xz"];
        assert_eq!(e.sha256.len(), 64);
        assert!(e.size > 1_000_000);
        assert_eq!(
            r.by_hash_path("main/binary-amd64/Packages.xz").unwrap(),
            format!("main/binary-amd64/by-hash/SHA256/{}", e.sha256)
        );
        // The MD5Sum field is not where the hashes come from.
        assert_eq!(
            r.files["contrib/Contents-all"].sha256.len(),
            64,
            "SHA256 entry, not MD5"
        );
    }

    #[test]
    fn real_bookworm_inrelease_each_signer_alone() {
        let data = fixture!("bookworm-InRelease");
        let now = bookworm_date();
        for (only, fpr) in [
            // RSA-4096 signing subkey of the bookworm automatic key
            (
                "bookworm-automatic",
                "4CB50190207B4758A3F73A796ED0E7B82643E131",
            ),
            // RSA-4096 signing subkey of the trixie automatic key
            (
                "trixie-automatic",
                "B8E5F13176D2A7A75220028078DBA3BC47EF2265",
            ),
            // Ed25519 primary key of the bookworm stable release key
            (
                "bookworm-stable",
                "4D64FEC119C2029067D6E791F8D2585B8783D481",
            ),
        ] {
            let r = verify_inrelease(data, &real_keyring(only), "InRelease", now).unwrap();
            assert_eq!(r.signed_by, [fpr], "{only}");
        }
        // A Debian key that did not sign this file: three unknown signers.
        let e =
            verify_inrelease(data, &real_keyring("trixie-stable"), "InRelease", now).unwrap_err();
        let TrustError::NoTrustedSignature { key_ids, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(key_ids.len(), 3);
        assert!(key_ids.contains(&"4D64FEC119C2029067D6E791F8D2585B8783D481".to_string()));
    }

    #[test]
    fn real_bookworm_inrelease_tampered_is_rejected() {
        let t = text(fixture!("bookworm-InRelease"));
        let needle = "main/binary-amd64/Packages.xz\n";
        // The SHA256 line (the last occurrence) for Packages.xz: change the
        // first hex digit of its hash.
        let pos = t.rfind(needle).unwrap();
        let start = t[..pos].rfind('\n').unwrap() + 2;
        let mut bytes = t.into_bytes();
        bytes[start] = if bytes[start] == b'0' { b'1' } else { b'0' };
        let e =
            verify_inrelease(&bytes, &real_keyring(""), "InRelease", bookworm_date()).unwrap_err();
        let TrustError::BadSignature { label, key, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(label, "InRelease");
        assert!(key.contains("Debian"), "{key}");
    }

    // --- fixtures signed with throwaway keys --------------------------------

    #[test]
    fn fixtures_agree_with_gpgv() {
        let gpgv = gpgv_verdicts(&text(fixture!("gpgv-verdicts.txt")));
        let keyring = test_keyring();
        let files: [(&str, &[u8]); 8] = [
            ("Release", fixture!("Release")),
            ("InRelease.subkey", fixture!("InRelease.subkey")),
            ("InRelease.primary", fixture!("InRelease.primary")),
            ("InRelease.multi", fixture!("InRelease.multi")),
            ("InRelease.untrusted", fixture!("InRelease.untrusted")),
            ("InRelease.tampered", fixture!("InRelease.tampered")),
            ("InRelease.expired-key", fixture!("InRelease.expired-key")),
            ("InRelease.sha1", fixture!("InRelease.sha1")),
        ];
        assert_eq!(gpgv.len(), files.len());
        for (name, data) in files {
            let ours = verdict(&verify_inrelease(data, &keyring, name, fixture_now()));
            assert_eq!(ours, gpgv[name], "{name}");
        }
    }

    #[test]
    fn good_signature_by_subkey_returns_the_signed_release() {
        let k = test_keyring();
        let r = verify_inrelease(fixture!("InRelease.subkey"), &k, "x", fixture_now()).unwrap();
        let subkey = k.keys().nth(1).unwrap();
        assert_eq!(r.signed_by, std::slice::from_ref(&subkey.fingerprint));
        assert_eq!(r.origin.as_deref(), Some("Cairn Test"));
        assert_eq!(r.suite.as_deref(), Some("stable"));
        assert_eq!(r.version.as_deref(), Some("1.0"));
        assert_eq!(r.codename.as_deref(), Some("fixture"));
        assert_eq!(r.date.as_deref(), Some("Sat, 11 Jul 2026 10:16:37 UTC"));
        assert_eq!(
            r.valid_until.as_deref(),
            Some("Sat, 18 Jul 2026 10:16:37 UTC")
        );
        assert_eq!(r.architectures, ["all", "amd64"]);
        assert_eq!(r.components, ["main"]);
        assert!(r.acquire_by_hash && r.no_support_for_architecture_all);
        assert_eq!(r.files.len(), 2);
        // Identical to the plain Release the script signed.
        let mut plain = Release::parse_unverified("Release", &text(fixture!("Release"))).unwrap();
        plain.signed_by = r.signed_by.clone();
        assert_eq!(r, plain);
    }

    #[test]
    fn good_signature_by_primary_key() {
        let k = test_keyring();
        let r = verify_inrelease(fixture!("InRelease.primary"), &k, "x", fixture_now()).unwrap();
        assert_eq!(r.signed_by, [k.keys().next().unwrap().fingerprint.clone()]);
    }

    #[test]
    fn unknown_signer_is_ignored_when_a_trusted_one_signed() {
        let k = test_keyring();
        let r = verify_inrelease(fixture!("InRelease.multi"), &k, "x", fixture_now()).unwrap();
        assert_eq!(r.signed_by.len(), 1);
    }

    #[test]
    fn untrusted_signer_only() {
        let e = verify_inrelease(
            fixture!("InRelease.untrusted"),
            &test_keyring(),
            "dists/x/InRelease",
            fixture_now(),
        )
        .unwrap_err();
        let TrustError::NoTrustedSignature { label, key_ids } = &e else {
            panic!("{e}")
        };
        assert_eq!(label, "dists/x/InRelease");
        assert_eq!(key_ids.len(), 1);
        assert_eq!(key_ids[0].len(), 40);
        // The untrusted key really is the signer.
        let untrusted =
            Keyring::from_armored(&[("u".into(), text(fixture!("untrusted.asc")))]).unwrap();
        assert!(untrusted.find(&key_ids[0]).is_some());
        assert!(e.to_string().contains(&key_ids[0]));
    }

    #[test]
    fn tampered_signed_text_is_a_bad_signature() {
        let e = verify_inrelease(
            fixture!("InRelease.tampered"),
            &test_keyring(),
            "t",
            fixture_now(),
        )
        .unwrap_err();
        assert!(
            matches!(&e, TrustError::BadSignature { label, key, .. } if label == "t" && key.contains("trusted@cairn.invalid")),
            "{e}"
        );
        // Also when an untrusted signature sits next to the good one.
        let multi = text(fixture!("InRelease.multi")).replace("Suite: stable", "Suite: stablf");
        let e =
            verify_inrelease(multi.as_bytes(), &test_keyring(), "t", fixture_now()).unwrap_err();
        assert!(matches!(e, TrustError::BadSignature { .. }), "{e}");
    }

    #[test]
    fn plain_release_is_not_signed() {
        let e =
            verify_inrelease(fixture!("Release"), &test_keyring(), "r", fixture_now()).unwrap_err();
        assert!(
            matches!(&e, TrustError::NotSigned { label } if label == "r"),
            "{e}"
        );
        let e = verify_inrelease(b"", &test_keyring(), "r", fixture_now()).unwrap_err();
        assert!(matches!(e, TrustError::NotSigned { .. }));
    }

    #[test]
    fn expired_key_and_weak_digest() {
        let k = test_keyring();
        let e = verify_inrelease(fixture!("InRelease.expired-key"), &k, "e", fixture_now())
            .unwrap_err();
        let TrustError::KeyExpired { expired, key, .. } = &e else {
            panic!("{e}")
        };
        // make.sh makes this key with a faked clock: 2020-01-01 + 1y (gpg's
        // `--with-colons` expiry 1609372800).
        assert_eq!(expired, "Thu, 31 Dec 2020 00:00:00 UTC");
        assert!(key.contains("expired@cairn.invalid"));
        let e = verify_inrelease(fixture!("InRelease.sha1"), &k, "s", fixture_now()).unwrap_err();
        assert!(
            matches!(&e, TrustError::BadSignature { reason, .. } if reason.contains("SHA1")),
            "{e}"
        );
    }

    #[test]
    fn valid_until_in_the_past_is_expired_and_future_date_not_yet_valid() {
        let k = test_keyring();
        let data = fixture!("InRelease.subkey");
        let e = verify_inrelease(data, &k, "v", at("Sat, 18 Jul 2026 10:16:38 UTC")).unwrap_err();
        assert_eq!(
            e,
            TrustError::Expired {
                label: "v".into(),
                valid_until: "Sat, 18 Jul 2026 10:16:37 UTC".into()
            }
        );
        assert!(e.to_string().contains("Valid-Until"));
        // The last valid second.
        verify_inrelease(data, &k, "v", at("Sat, 18 Jul 2026 10:16:37 UTC")).unwrap();
        let e = verify_inrelease(data, &k, "v", at("Sat, 11 Jul 2026 10:16:36 UTC")).unwrap_err();
        assert!(matches!(e, TrustError::NotYetValid { .. }), "{e}");
    }

    #[test]
    fn nothing_outside_the_signature_is_accepted() {
        let k = test_keyring();
        let good = text(fixture!("InRelease.subkey"));
        let before = format!("Origin: Evil\n\n{good}");
        let e = verify_inrelease(before.as_bytes(), &k, "b", fixture_now()).unwrap_err();
        assert!(matches!(&e, TrustError::Malformed { line: 1, .. }), "{e}");
        let after = format!("{good}SHA256:\n {} 1 evil\n", "0".repeat(64));
        let e = verify_inrelease(after.as_bytes(), &k, "a", fixture_now()).unwrap_err();
        assert!(matches!(e, TrustError::Malformed { .. }), "{e}");
        // An extra armor header line is not signed either.
        let header = good.replacen("Hash: SHA512\n", "Hash: SHA512\nComment: x\n", 1);
        assert!(verify_inrelease(header.as_bytes(), &k, "h", fixture_now()).is_err());
    }

    #[test]
    fn non_utf8_is_malformed_with_its_line() {
        let mut data = fixture!("InRelease.subkey").to_vec();
        let pos = data.windows(7).position(|w| w == b"Origin:").unwrap();
        data[pos] = 0xff;
        let e = verify_inrelease(&data, &test_keyring(), "u", fixture_now()).unwrap_err();
        assert!(matches!(e, TrustError::Malformed { line: 4, .. }), "{e}");
    }

    // --- Release parsing and checks -----------------------------------------

    fn fixture_release() -> Release {
        verify_inrelease(
            fixture!("InRelease.subkey"),
            &test_keyring(),
            "x",
            fixture_now(),
        )
        .unwrap()
    }

    #[test]
    fn check_index_files() {
        let r = fixture_release();
        let packages = fixture!("Packages");
        r.check("main/binary-amd64/Packages", packages).unwrap();
        r.check("main/binary-all/Packages", b"").unwrap();

        let mut wrong = packages.to_vec();
        wrong[0] ^= 1;
        let e = r.check("main/binary-amd64/Packages", &wrong).unwrap_err();
        let TrustError::HashMismatch {
            path,
            expected,
            actual,
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!(path, "main/binary-amd64/Packages");
        assert_eq!(expected, &r.files[path].sha256);
        assert_eq!(actual, &hex::encode(Sha256::digest(&wrong)));

        let e = r
            .check("main/binary-amd64/Packages", &packages[1..])
            .unwrap_err();
        assert_eq!(
            e,
            TrustError::SizeMismatch {
                path: "main/binary-amd64/Packages".into(),
                expected: packages.len() as u64,
                actual: packages.len() as u64 - 1
            }
        );
        let e = r.check("main/binary-arm64/Packages", packages).unwrap_err();
        assert_eq!(
            e,
            TrustError::NotListed {
                path: "main/binary-arm64/Packages".into()
            }
        );
        let digest = hex::encode(Sha256::digest(packages)).to_uppercase();
        r.check_digest("main/binary-amd64/Packages", packages.len() as u64, &digest)
            .unwrap();
        assert_eq!(r.by_hash_path("nope"), None);
    }

    const MINIMAL: &str = "Origin: T\nSuite: s\nSHA256:\n";

    fn malformed(text: &str) -> (usize, String) {
        match Release::parse_unverified("Rel", text).unwrap_err() {
            TrustError::Malformed {
                label,
                line,
                message,
            } => {
                assert_eq!(label, "Rel");
                (line, message)
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn malformed_release_names_line_and_field() {
        let h = "a".repeat(64);
        let ok = format!("{MINIMAL} {h} 12 main/x\n");
        assert_eq!(
            Release::parse_unverified("Rel", &ok).unwrap().files.len(),
            1
        );

        let (line, msg) = malformed(&format!("{MINIMAL} {h} 12 main/x\n {h} 1x main/y\n"));
        assert_eq!(line, 5);
        assert!(msg.contains("SHA256") && msg.contains("1x"), "{msg}");
        let (line, msg) = malformed(&format!("{MINIMAL} abc 12 main/x\n"));
        assert_eq!((line, msg.contains("SHA256")), (4, true));
        let (line, _) = malformed(&format!("{MINIMAL} {h} 12\n"));
        assert_eq!(line, 4);
        let (_, msg) = malformed(&format!("{MINIMAL} {h} 12 main/x\n {h} 12 main/x\n"));
        assert!(msg.contains("twice"));
        let (_, msg) = malformed(&format!("{MINIMAL} {h} 12 ../etc/passwd\n"));
        assert!(msg.contains("relative"));
        let (line, msg) = malformed("Origin: T\nSuite: s\n");
        assert_eq!(line, 1);
        assert!(msg.contains("SHA256"));
        let (line, msg) = malformed(&format!("Date: yesterday\n{MINIMAL}"));
        assert_eq!(line, 1);
        assert!(msg.contains("Date"));
        let (line, msg) = malformed(&format!("{MINIMAL}\nOrigin: again\n"));
        assert_eq!(line, 5);
        assert!(msg.contains("second"));
        let (line, msg) = malformed(&format!("Acquire-By-Hash: maybe\n{MINIMAL}"));
        assert_eq!((line, msg.contains("Acquire-By-Hash")), (1, true));
        let (line, _) = malformed("Origin: T\nbroken line\n");
        assert_eq!(line, 2);
        let (_, msg) = malformed("");
        assert!(msg.contains("empty"));
    }

    #[test]
    fn malformed_lines_count_the_armor_header() {
        let inrelease = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: x\n";
        assert_eq!(header_lines(inrelease), 3);
        // Line 2 of the signed text is line 5 of the file.
        let e = Release::parse_at("f", "Origin: x\nbad\n", header_lines(inrelease)).unwrap_err();
        assert!(matches!(e, TrustError::Malformed { line: 5, .. }), "{e}");
        assert_eq!(e.to_string(), "f:5: expected `Field: value`, found \"bad\"");
    }

    // --- dates ---------------------------------------------------------------

    #[test]
    fn rfc2822_dates() {
        let t = |s: &str| parse_date(s).map(unix_secs);
        assert_eq!(t("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        // gpgv: "Signature made Sat Jul 11 10:17:11 2026 UTC", created 1783765031.
        assert_eq!(t("Sat, 11 Jul 2026 10:17:11 UTC"), Some(1_783_765_031));
        assert_eq!(t("11 Jul 2026 10:17:11 GMT"), Some(1_783_765_031));
        assert_eq!(t("Sat, 11 Jul 2026 12:17:11 +0200"), Some(1_783_765_031));
        assert_eq!(t("Sat, 11 Jul 2026 09:47:11 -0030"), Some(1_783_765_031));
        assert_eq!(t("Sat, 11 Jul 2026 10:17 UTC"), Some(1_783_765_020));
        assert_eq!(t("Thu, 29 Feb 2024 00:00:00 UTC"), Some(1_709_164_800));
        for bad in [
            "Wed, 29 Feb 2023 00:00:00 UTC",
            "Sat, 31 Jun 2026 00:00:00 UTC",
            "Sat, 11 Jul 2026 24:00:00 UTC",
            "Sat, 11 Jul 2026 10:17:11",
            "Sat, 11 Jul 2026 10:17:11 CEST",
            "Xyz, 11 Jul 2026 10:17:11 UTC",
            "Sat, 11 Juli 2026 10:17:11 UTC",
            "Wed, 31 Dec 1969 23:59:59 UTC",
            "2026-07-11T10:17:11Z",
            "",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
        assert_eq!(
            format_date(to_time(1_783_765_031)),
            "Sat, 11 Jul 2026 10:17:11 UTC"
        );
        assert_eq!(format_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 UTC");
        // Round trip across leap years and centuries.
        for secs in (0..5_000_000_000u64).step_by(86_400 * 97 + 3_661) {
            assert_eq!(t(&format_date(to_time(secs))), Some(secs), "{secs}");
        }
    }
}
