//! HTTP for the agent (blocking ureq): small GETs for the manifest and its
//! signature, and part downloads into `DIR/<sha256>.part` that resume with
//! `Range: bytes=N-` after a cut, are checked against the manifest's size
//! and SHA-256, and only then renamed to `DIR/<sha256>`. Transient failures
//! (DNS, refused or reset connections, timeouts, HTTP 5xx, 408, 429) are
//! retried with a growing delay ([`Retry`], the builder's policy); a 404, a
//! wrong size or hash, or a bad signature never are.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::bundle::hash_file;
use crate::error::{Result, UpdateError};
use crate::manifest::Part;

/// Largest manifest or signature accepted.
const SMALL_LIMIT: u64 = 1 << 20;

/// An error a [`Retry`] loop can judge and wrap: the agent's
/// [`UpdateError`] and the builder's download errors.
pub trait Transient: Sized + std::fmt::Display {
    /// A failure that may pass by itself (DNS, refused or reset
    /// connections, timeouts, HTTP 5xx, 408, 429).
    fn is_transient(&self) -> bool;
    /// The error to report after the last of `tries` tries, `secs` seconds
    /// after the first: it must say how many tries were made.
    fn gave_up(self, tries: u32, secs: u64) -> Self;
}

impl Transient for UpdateError {
    fn is_transient(&self) -> bool {
        UpdateError::is_transient(self)
    }

    fn gave_up(self, tries: u32, secs: u64) -> Self {
        UpdateError::GaveUp {
            tries,
            secs,
            last: Box::new(self),
        }
    }
}

/// How transient failures are retried, by the agent and by `cairn build`:
/// `tries` attempts in all, waiting `first_delay` after the first failure
/// and twice as long after each following one, at most `max_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub tries: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Retry {
    /// 5 tries over about 15 s (1, 2, 4, 8 s between them).
    fn default() -> Self {
        Retry {
            tries: 5,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(16),
        }
    }
}

impl Retry {
    /// `retries` more tries after the first one (`cairn build --retries`).
    pub fn with_retries(retries: u32) -> Retry {
        Retry {
            tries: retries.saturating_add(1),
            ..Retry::default()
        }
    }

    /// Runs `attempt` until it succeeds, fails for good
    /// ([`Transient::is_transient`] is false), or the tries are spent; the
    /// last error then says how many tries were made
    /// ([`Transient::gave_up`]).
    pub fn run<T, E: Transient>(
        &self,
        mut attempt: impl FnMut() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let start = Instant::now();
        let tries = self.tries.max(1);
        let mut delay = self.first_delay;
        let mut n = 1;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && n < tries => {
                    tracing::warn!("{e}; try {} of {tries} in {delay:.0?}", n + 1);
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(self.max_delay);
                    n += 1;
                }
                Err(e) if e.is_transient() && tries > 1 => {
                    return Err(e.gave_up(n, start.elapsed().as_secs()))
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The HTTP client the agent uses.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .user_agent(concat!("cairn-update/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

fn net(url: &str, e: impl std::fmt::Display) -> UpdateError {
    UpdateError::Network {
        url: url.to_string(),
        message: e.to_string(),
    }
}

/// GET a small document (manifest, signature), with extra headers,
/// retrying transient failures.
pub fn get_small(
    http: &ureq::Agent,
    retry: &Retry,
    url: &str,
    headers: &[(&str, String)],
) -> Result<Vec<u8>> {
    retry.run(|| get_small_once(http, url, headers))
}

fn get_small_once(http: &ureq::Agent, url: &str, headers: &[(&str, String)]) -> Result<Vec<u8>> {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.call().map_err(|e| net(url, e))?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(UpdateError::HttpStatus {
            url: url.into(),
            status,
        });
    }
    resp.into_body()
        .with_config()
        .limit(SMALL_LIMIT)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => UpdateError::Refused(format!(
                "{url}: larger than {SMALL_LIMIT} bytes, too large for a manifest or signature"
            )),
            e => net(url, e),
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
) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(UpdateError::io(dir))?;
    let (partial, done) = part_paths(dir, part);
    if done.exists() {
        let (sha, size) = hash_file(&done)?;
        if sha == part.sha256 && size == part.size {
            return Ok(done);
        }
        fs::remove_file(&done).map_err(UpdateError::io(&done))?;
    }
    retry.run(|| fetch_once(http, url, &partial, part.size))?;
    let (sha, size) = hash_file(&partial)?;
    if size != part.size || sha != part.sha256 {
        let _ = fs::remove_file(&partial);
        return Err(if size != part.size {
            UpdateError::SizeMismatch {
                what: format!("downloaded {}", part.path),
                expected: part.size,
                got: size,
            }
        } else {
            UpdateError::HashMismatch {
                what: format!("downloaded {}", part.path),
                expected: part.sha256.clone(),
                got: sha,
            }
        });
    }
    fs::rename(&partial, &done).map_err(UpdateError::io(&done))?;
    crate::fsutil::fsync_dir(dir)?;
    Ok(done)
}

/// One request: appends to `partial` from where it ends.
fn fetch_once(http: &ureq::Agent, url: &str, partial: &Path, size: u64) -> Result<()> {
    let mut have = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    if have > size {
        fs::remove_file(partial).map_err(UpdateError::io(partial))?;
        have = 0;
    }
    if have == size {
        return Ok(());
    }
    let mut req = http.get(url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| net(url, e))?;
    let status = resp.status().as_u16();
    let append = match status {
        206 if have > 0 => {
            let start = resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split_once('-'))
                .and_then(|(s, _)| s.parse::<u64>().ok());
            if start != Some(have) {
                return Err(UpdateError::Refused(format!(
                    "{url}: asked for bytes from {have}, the server sent Content-Range {start:?}"
                )));
            }
            true
        }
        200 => false,
        416 => {
            // our partial file is not a prefix of theirs: start over
            fs::remove_file(partial).map_err(UpdateError::io(partial))?;
            return Err(net(url, "HTTP 416 for a resumed download; starting over"));
        }
        status => {
            return Err(UpdateError::HttpStatus {
                url: url.into(),
                status,
            })
        }
    };
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(partial)
        .map_err(UpdateError::io(partial))?;
    let mut body = resp.into_body();
    let mut reader = body.with_config().limit(size + 1).reader();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = if append { have } else { 0 };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                // keep what arrived for the next attempt
                let _ = out.sync_data();
                return Err(net(url, e));
            }
        };
        got += n as u64;
        if got > size {
            drop(out);
            let _ = fs::remove_file(partial);
            return Err(UpdateError::SizeMismatch {
                what: url.to_string(),
                expected: size,
                got,
            });
        }
        out.write_all(&buf[..n]).map_err(UpdateError::io(partial))?;
    }
    out.sync_data().map_err(UpdateError::io(partial))?;
    if got < size {
        return Err(net(
            url,
            format!("connection ended after {got} of {size} bytes"),
        ));
    }
    Ok(())
}

/// SHA-256 of a byte slice as hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn quick(tries: u32) -> Retry {
        Retry {
            tries,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        }
    }

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
            UpdateError::BadSignature { key_id: "k".into() },
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

    #[test]
    fn retry_counts_its_tries() {
        // succeeds at the third try
        let n = Cell::new(0);
        let r = quick(5).run(|| {
            n.set(n.get() + 1);
            if n.get() < 3 {
                Err(status(503))
            } else {
                Ok(n.get())
            }
        });
        assert_eq!(r.unwrap(), 3);
        // spent: the error says how many
        let n = Cell::new(0);
        let e = quick(4)
            .run(|| -> Result<()> {
                n.set(n.get() + 1);
                Err(status(503))
            })
            .unwrap_err();
        assert_eq!(n.get(), 4);
        assert!(
            e.to_string()
                .starts_with("http://x/p: HTTP 503 (gave up after 4 tries in "),
            "{e}"
        );
        // final errors are not retried
        let n = Cell::new(0);
        let e = quick(4)
            .run(|| -> Result<()> {
                n.set(n.get() + 1);
                Err(status(404))
            })
            .unwrap_err();
        assert_eq!(n.get(), 1);
        assert_eq!(e.to_string(), "http://x/p: HTTP 404");
        // one try: no "gave up"
        let e = quick(1).run(|| -> Result<()> { Err(status(503)) });
        assert_eq!(e.unwrap_err().to_string(), "http://x/p: HTTP 503");
    }
}
