//! The agent's HTTP, on cairn-fetch: its client settings, small GETs for
//! the manifest and its signature, and part downloads into
//! `DIR/<sha256>.part` that resume with `Range: bytes=N-` after a cut, are
//! checked against the manifest's size and SHA-256, and only then renamed
//! to `DIR/<sha256>`. Transient failures (DNS, refused or reset
//! connections, timeouts, HTTP 5xx, 408, 429) are retried with a growing
//! delay ([`Retry`], `cairn build`'s policy too); a 404, a wrong size or
//! hash, or a bad signature never are. cairn-fetch's errors become
//! [`UpdateError`]s here.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_formats::channel::manifest::Part;

use crate::error::{Result, UpdateError};

/// The retry policy of the agent's downloads (cairn-fetch's; [`Agent`]
/// holds one).
///
/// [`Agent`]: crate::agent::Agent
pub use cairn_fetch::Retry;

/// Largest manifest or signature accepted.
const SMALL_LIMIT: u64 = 1 << 20;

impl From<cairn_fetch::Error> for UpdateError {
    fn from(e: cairn_fetch::Error) -> UpdateError {
        use cairn_fetch::Error as E;
        match e {
            E::Status { url, status } => UpdateError::HttpStatus { url, status },
            E::Network { url, message } => UpdateError::Network { url, message },
            E::Resume { url, message } => UpdateError::Network {
                url,
                message: format!("{message}; starting over"),
            },
            E::SizeMismatch { url, expected, got } => UpdateError::SizeMismatch {
                what: url,
                expected,
                got,
            },
            E::HashMismatch {
                url,
                expected,
                actual,
            } => UpdateError::HashMismatch {
                what: url,
                expected,
                got: actual,
            },
            E::Io { path, source } => UpdateError::Io { path, source },
            E::GaveUp { tries, secs, last } => UpdateError::GaveUp {
                tries,
                secs,
                last: Box::new((*last).into()),
            },
            e @ (E::Request { .. } | E::TooLarge { .. }) => UpdateError::Refused(e.to_string()),
        }
    }
}

/// The HTTP client the agent uses.
pub fn http_agent() -> ureq::Agent {
    cairn_fetch::agent(
        concat!("cairn-update/", env!("CARGO_PKG_VERSION")),
        cairn_fetch::Timeouts {
            connect: Some(Duration::from_secs(15)),
            recv_response: Some(Duration::from_secs(30)),
            recv_body: Some(Duration::from_secs(120)),
            ..Default::default()
        },
    )
}

/// GET a small document (manifest, signature), with extra headers,
/// retrying transient failures.
pub fn get_small(
    http: &ureq::Agent,
    retry: &Retry,
    url: &str,
    headers: &[(&str, String)],
) -> Result<Vec<u8>> {
    cairn_fetch::get(http, retry, url, headers, SMALL_LIMIT).map_err(|e| match e {
        cairn_fetch::Error::TooLarge { url, limit } => UpdateError::Refused(format!(
            "{url}: larger than {limit} bytes, too large for a manifest or signature"
        )),
        e => e.into(),
    })
}

/// Where a part's download lives.
pub fn part_paths(dir: &Path, part: &Part) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{}.part", part.sha256)),
        dir.join(&part.sha256),
    )
}

/// Bytes of `part` still to download into `dir`.
pub fn remaining(dir: &Path, part: &Part) -> u64 {
    let (partial, done) = part_paths(dir, part);
    if done.exists() {
        return 0;
    }
    let have = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    part.size.saturating_sub(have)
}

/// Downloads `part` from `url` into `dir` (resuming a `.part` file, also
/// between the tries of a transient failure) and returns the verified
/// file. A complete file whose hash does not match is deleted (the next
/// run starts over) and refused, without a retry.
pub fn download_part(
    http: &ureq::Agent,
    retry: &Retry,
    url: &str,
    dir: &Path,
    part: &Part,
    headers: &[(&str, String)],
) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(UpdateError::io(dir))?;
    let (partial, done) = part_paths(dir, part);
    if done.exists() {
        let (sha, size) = cairn_fetch::sha256_file(&done)?;
        if sha == part.sha256 && size == part.size {
            return Ok(done);
        }
        fs::remove_file(&done).map_err(UpdateError::io(&done))?;
    }
    let what = || format!("downloaded {}", part.path);
    cairn_fetch::download(
        http,
        retry,
        &cairn_fetch::Resumable {
            url,
            partial: &partial,
            dest: &done,
            size: part.size,
            sha256: &part.sha256,
            headers,
        },
        &mut |_| {},
    )
    .map_err(|e| match e {
        cairn_fetch::Error::HashMismatch {
            expected, actual, ..
        } => UpdateError::HashMismatch {
            what: what(),
            expected,
            got: actual,
        },
        e => e.into(),
    })?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_formats::channel::ChannelError;

    fn status(status: u16) -> UpdateError {
        UpdateError::HttpStatus {
            url: "http://x/p".into(),
            status,
        }
    }

    #[test]
    fn what_is_transient() {
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(status(s).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 416] {
            assert!(!status(s).is_transient(), "{s}");
        }
        assert!(UpdateError::Network {
            url: "u".into(),
            message: "connection reset".into()
        }
        .is_transient());
        for e in [
            UpdateError::Channel(ChannelError::BadSignature { key_id: "k".into() }),
            UpdateError::HashMismatch {
                what: "w".into(),
                expected: "a".into(),
                got: "b".into(),
            },
            UpdateError::SizeMismatch {
                what: "w".into(),
                expected: 1,
                got: 2,
            },
        ] {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
