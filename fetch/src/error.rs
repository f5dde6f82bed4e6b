//! Why a GET or a download failed ([`Error`]), and which of those failures
//! may pass by themselves.

use std::path::{Path, PathBuf};

use crate::retry::{transient_status, Transient};

/// Why a GET or a download failed. [`Error::Network`], [`Error::Resume`]
/// and the statuses of [`transient_status`] are transient (retried by the
/// functions of this crate); the rest are final.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with another status than the one asked for (a
    /// 2xx, or 206 for a resumed download).
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    /// No complete answer: DNS, a refused, reset or timed-out connection,
    /// a body cut short. Transient.
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    /// A resumed download could not go on (HTTP 416, or a 206 that does not
    /// start where the partial file ends): the partial file was deleted,
    /// and the next try starts from the beginning. Transient.
    #[error("{url}: {message}; starting over")]
    Resume { url: String, message: String },
    /// A request that trying again cannot fix: a malformed URL, too many
    /// redirects, an https-only refusal, a bad proxy setting.
    #[error("{url}: {message}")]
    Request { url: String, message: String },
    /// The body of a [`get`](crate::get) is larger than the caller accepts.
    #[error("{url}: larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    /// A download brought more bytes than expected (the partial file was
    /// deleted), or was complete with another size.
    #[error("{url}: {got} bytes, expected {expected}")]
    SizeMismatch {
        url: String,
        expected: u64,
        got: u64,
    },
    /// A complete download has another SHA-256 than expected; it was
    /// deleted.
    #[error("{url}: SHA-256 {actual}, expected {expected}")]
    HashMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The tries of a [`Retry`](crate::Retry) were spent; `last` is the
    /// last try's error.
    #[error("{last} (gave up after {tries} tries in {secs} s)")]
    GaveUp {
        tries: u32,
        secs: u64,
        last: Box<Error>,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failure that may pass by itself; see [`Error`].
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Network { .. } | Error::Resume { .. } => true,
            Error::Status { status, .. } => transient_status(*status),
            _ => false,
        }
    }

    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn network(url: &str, message: impl std::fmt::Display) -> Error {
        Error::Network {
            url: url.to_string(),
            message: message.to_string(),
        }
    }

    /// A failed call or body read of ureq: a request that cannot succeed is
    /// final ([`Error::Request`], [`Error::TooLarge`]); anything else is a
    /// network failure.
    pub(crate) fn from_ureq(url: &str, e: ureq::Error) -> Error {
        use ureq::Error as E;
        match e {
            E::BodyExceedsLimit(limit) => Error::TooLarge {
                url: url.to_string(),
                limit,
            },
            E::BadUri(_)
            | E::Http(_)
            | E::InvalidProxyUrl
            | E::RequireHttpsOnly(_)
            | E::TooManyRedirects
            | E::RedirectFailed => Error::Request {
                url: url.to_string(),
                message: e.to_string(),
            },
            e => Error::network(url, e),
        }
    }
}

impl Transient for Error {
    fn is_transient(&self) -> bool {
        Error::is_transient(self)
    }

    fn gave_up(self, tries: u32, secs: u64) -> Self {
        Error::GaveUp {
            tries,
            secs,
            last: Box::new(self),
        }
    }
}
