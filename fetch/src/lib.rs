//! cairn-fetch: HTTP GETs for cairn's programs (`cairn build`, `cairn-update`,
//! `cairn-cloudinit`), so that they retry, bound and verify alike.
//!
//! * [`Retry`]: how often and how long apart a failure that may pass by
//!   itself is tried again (doubling waits, capped); [`Transient`] says
//!   which failures those are ([`transient_status`] for HTTP statuses).
//! * [`agent`]: the ureq client, with the timeouts a caller picks; it
//!   hands every status to this crate instead of turning it into an error.
//! * [`get`]: a small document into memory, at most a given size.
//! * [`download`]: a file whose size and SHA-256 are known beforehand, into
//!   a `.part` file that resumes with `Range: bytes=N-` after a cut, renamed
//!   into place only once both match.
//!
//! Every failure is an [`Error`] a caller can branch on. What a caller
//! caches, where, and what the hashes mean is the caller's.

mod download;
mod error;
mod http;
mod retry;

/// A retry policy with short waits, for this crate's tests.
#[cfg(test)]
fn quick(tries: u32) -> Retry {
    Retry {
        tries,
        first_delay: std::time::Duration::from_millis(5),
        max_delay: std::time::Duration::from_millis(20),
    }
}

pub use download::{download, sha256_file, Resumable};
pub use error::{Error, Result};
pub use http::{agent, get, get_once, Timeouts};
pub use retry::{transient_status, Retry, Transient};
