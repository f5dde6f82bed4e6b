//! The error type of the library: every reason an update is refused or
//! fails, as variants a caller (the agent, `cairn build`) can branch on.

use std::path::PathBuf;

/// Why a key, manifest, bundle or update step was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    KeyFile {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("manifest: {0}")]
    Malformed(String),
    #[error("signature: {0}")]
    BadSignatureFile(String),
    #[error("manifest signature does not verify with key {key_id}")]
    BadSignature { key_id: String },
    #[error("manifest is signed by key {key_id}, which is not among the trusted keys ({trusted})")]
    UnknownKey { key_id: String, trusted: String },
    #[error("manifest expired at {expires} (now {now})")]
    Expired { expires: String, now: String },
    #[error(
        "manifest was created at {created}, after now ({now}): the clock or the manifest is wrong"
    )]
    NotYetValid { created: String, now: String },
    #[error("manifest is for image {got:?}, this machine runs {expected:?}")]
    WrongName { expected: String, got: String },
    #[error("manifest is for channel {got:?}, this machine follows {expected:?}")]
    WrongChannel { expected: String, got: String },
    #[error("version {offered} is not newer than the running {running}")]
    NotNewer { offered: String, running: String },
    #[error("version {version} rolled back on this machine ({at}: {reason}); it is not installed again: waiting for a newer one")]
    Denied {
        version: String,
        at: String,
        reason: String,
    },
    #[error("version {offered} is older than {newest}, which this machine accepted at {at}: a replayed or withdrawn manifest is not installed; waiting for a version newer than {newest}")]
    Replayed {
        offered: String,
        newest: String,
        at: String,
    },
    #[error("{what}: SHA-256 {got}, manifest says {expected}")]
    HashMismatch {
        what: String,
        expected: String,
        got: String,
    },
    #[error("{what}: {got} bytes, manifest says {expected}")]
    SizeMismatch {
        what: String,
        expected: u64,
        got: u64,
    },
    #[error("not enough space on {where_}: {need} bytes needed, {have} available")]
    NoSpace {
        where_: String,
        need: u64,
        have: u64,
    },
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    #[error("{url}: HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{last} (gave up after {tries} tries in {secs} s)")]
    GaveUp {
        tries: u32,
        secs: u64,
        last: Box<UpdateError>,
    },
    #[error("{0}")]
    Refused(String),
    #[error("state: {0}")]
    Transition(String),
}

impl UpdateError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> UpdateError {
        let path = path.into();
        move |source| UpdateError::Io { path, source }
    }

    /// A failure that may pass by itself (DNS, refused or reset
    /// connections, timeouts, a server's 5xx, 408 or 429), as the builder
    /// retries them. A 404, a bad signature, a wrong hash or size or a
    /// local I/O error is final.
    pub fn is_transient(&self) -> bool {
        match self {
            UpdateError::Network { .. } => true,
            UpdateError::HttpStatus { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }
}

/// Result with [`UpdateError`].
pub type Result<T, E = UpdateError> = std::result::Result<T, E>;
