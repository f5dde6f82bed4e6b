//! The channel's error type: every reason a key file, a manifest, its
//! signature or a bundle is refused, as variants a caller (the agent,
//! `cairn build`, `cairn serve`) can branch on.

use std::path::PathBuf;

/// Why a key, manifest, signature or bundle was refused or could not be
/// read or written.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A key file line that is not a key of the expected kind.
    #[error("{path}:{line}: {why}")]
    KeyFile {
        path: PathBuf,
        line: usize,
        why: String,
    },
    /// `keygen` never overwrites a key file.
    #[error("{} exists: refusing to overwrite a key", path.display())]
    KeyExists { path: PathBuf },
    #[error("no random numbers for a key: {0}")]
    NoRandom(String),
    /// The manifest's JSON or a field value is wrong (the message names
    /// the field).
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
    /// The manifest is valid but offers no newer version: "up to date".
    #[error("version {offered} is not newer than the running {running}")]
    NotNewer { offered: String, running: String },
    /// `write_bundle` with a validity of zero or less.
    #[error("bundle validity must be positive, got {0} s")]
    BadValidity(i64),
    #[error("{}: not a file path", .0.display())]
    NotAFilePath(PathBuf),
}

impl ChannelError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ChannelError {
        let path = path.into();
        move |source| ChannelError::Io { path, source }
    }
}

/// Result with [`ChannelError`].
pub type Result<T, E = ChannelError> = std::result::Result<T, E>;
