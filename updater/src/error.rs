//! The agent's error type: every reason an update is refused or fails,
//! as variants a caller (`cairn-update`'s commands, the tests) can branch
//! on. A refused key, manifest or signature is the channel's own
//! [`ChannelError`], wrapped as [`UpdateError::Channel`].

use std::path::PathBuf;

use cairn_formats::channel::ChannelError;

/// Why an update step was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of `update.conf` that does not parse.
    #[error("{path}:{line}: {why}")]
    KeyFile {
        path: PathBuf,
        line: usize,
        why: String,
    },
    /// The trusted keys, the manifest or its signature were refused
    /// (`ChannelError::NotNewer`: the channel offers nothing newer).
    #[error(transparent)]
    Channel(#[from] ChannelError),
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
    /// The dm-verity check of a root image failed: the downloaded part
    /// against the signed manifest's root hash (the manifest disagrees
    /// with the tree), or the slot read back after its write.
    #[error("{what}: {source}")]
    Verity {
        what: String,
        #[source]
        source: cairn_verity::VerityError,
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
    /// connections, timeouts, a server's 5xx, 408 or 429:
    /// [`cairn_fetch::transient_status`]), as every cairn download retries
    /// them. A 404, a bad signature, a wrong hash or size or a local I/O
    /// error is final.
    pub fn is_transient(&self) -> bool {
        match self {
            UpdateError::Network { .. } => true,
            UpdateError::HttpStatus { status, .. } => cairn_fetch::transient_status(*status),
            _ => false,
        }
    }
}

/// Result with [`UpdateError`].
pub type Result<T, E = UpdateError> = std::result::Result<T, E>;
