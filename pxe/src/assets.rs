//! Files of image folders (`assets/<image>/<file>`) and of the iPXE directory: path-safe resolution,
//! non-blocking opens of regular files only, and HTTP responses with single-range requests, strong
//! ETags, conditional requests; bodies go out with sendfile(2) (a `FileBody` on the response, see
//! `http::sendfile`) or, where hyper writes the response, streamed from the same open file.

use std::fs::File;
use std::os::unix::fs::{FileExt as _, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use bytes::Bytes;

use crate::inventory::Inventory;

/// Why a file cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssetError {
    /// The name is malformed or tries to leave its folder (`..`, absolute, symlink out).
    #[error("refused: {0}")]
    Refused(String),
    /// No such image or file.
    #[error("not found: {0}")]
    NotFound(String),
}

/// Checks that `name` is one plain file name: not empty, no `/`, not `.`/`..`, not hidden, no NUL.
fn plain_name(name: &str) -> Result<(), AssetError> {
    if name.is_empty() {
        return Err(AssetError::NotFound("empty file name".into()));
    }
    if name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(AssetError::Refused(format!(
            "{name:?} is not a plain file name"
        )));
    }
    if name.starts_with('.') {
        return Err(AssetError::NotFound(format!("{name:?}")));
    }
    Ok(())
}

/// The canonical path of `dir/name` where `dir` is canonical, refusing anything whose canonical path is
/// not directly in `dir` (symlinks pointing elsewhere).
pub fn resolve_in(dir: &Path, name: &str) -> Result<PathBuf, AssetError> {
    plain_name(name)?;
    let candidate = dir.join(name);
    let canonical = match candidate.canonicalize() {
        Ok(c) => c,
        Err(_) => return Err(AssetError::NotFound(name.to_string())),
    };
    if canonical.parent() != Some(dir) {
        return Err(AssetError::Refused(format!(
            "{name:?} resolves outside its folder"
        )));
    }
    Ok(canonical)
}

/// Opens `path` (canonical: a link in its last component is refused) for reading without ever
/// blocking: `O_NONBLOCK` keeps a FIFO from waiting for a writer, and anything that is not a regular
/// file (FIFO, device, directory, socket) is refused after `fstat` on the open descriptor.
pub fn open_regular(path: &Path) -> Result<File, AssetError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let shown = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let file = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK does not change reads of a regular file, the only kind served.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => AssetError::Refused(format!("{shown:?} became a symlink")),
            _ => AssetError::NotFound(shown.clone()),
        })?;
    let meta = file
        .metadata()
        .map_err(|_| AssetError::NotFound(shown.clone()))?;
    if !meta.is_file() {
        return Err(AssetError::NotFound(format!("{shown:?} is not a file")));
    }
    Ok(file)
}

/// Opens `dir/name` where `dir` is canonical, refusing anything whose canonical path is not directly in
/// `dir` (symlinks pointing elsewhere) and anything that is not a regular file, without blocking.
pub fn open_in(dir: &Path, name: &str) -> Result<(File, PathBuf), AssetError> {
    let canonical = resolve_in(dir, name)?;
    let file = open_regular(&canonical)?;
    Ok((file, canonical))
}

/// Resolves `IMAGE/FILE` (the part after `assets/`) against the inventory's image folders.
pub fn open_asset(inv: &Inventory, rel: &str) -> Result<(File, PathBuf), AssetError> {
    let mut parts = rel.split('/');
    let (Some(image), Some(file), None) = (parts.next(), parts.next(), parts.next()) else {
        if rel.split('/').any(|p| p == ".." || p == ".") {
            return Err(AssetError::Refused(format!("{rel:?}: '..' is not allowed")));
        }
        return Err(AssetError::NotFound(format!(
            "{rel:?}: expected IMAGE/FILE"
        )));
    };
    plain_name(image)?;
    plain_name(file)?;
    let Some(img) = inv.images.get(image) else {
        return Err(AssetError::NotFound(format!("no image {image:?}")));
    };
    open_in(&img.dir, file)
}

/// The strong validator of a file: size, mtime (ns) and inode.
pub fn etag(meta: &std::fs::Metadata) -> String {
    format!(
        "\"{:x}-{:x}{:08x}-{:x}\"",
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino()
    )
}

/// A parsed `Range` header against a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// Serve everything (no header, a malformed or a multi-range header: RFC 9110 allows ignoring it).
    Full,
    /// Serve bytes `start..=end`.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-`, `bytes=-n` for a representation of `len` bytes.
pub fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    if a.is_empty() {
        let Some(n) = num(b) else {
            return RangeSpec::Full;
        };
        if n == 0 || len == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Part(len.saturating_sub(n), len - 1);
    }
    let Some(start) = num(a) else {
        return RangeSpec::Full;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match num(b) {
            Some(e) if e >= start => e,
            _ => return RangeSpec::Full,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Part(start, end.min(len - 1))
}

fn etag_matches(list: &str, tag: &str) -> bool {
    let weakless = |t: &str| t.trim().trim_start_matches("W/").to_string();
    list.split(',')
        .any(|t| t.trim() == "*" || weakless(t) == weakless(tag))
}

/// The HTTP response for a file: 200, 206, 304 or 416, streamed.
pub async fn file_response(file: File, headers: &HeaderMap) -> Response<Body> {
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let len = meta.len();
    let tag = etag(&meta);
    let modified = meta
        .modified()
        .unwrap_or(UNIX_EPOCH + Duration::from_secs(meta.mtime().max(0) as u64));
    let last_modified = httpdate::fmt_http_date(modified);
    let mut builder = Response::builder()
        .header(header::ETAG, &tag)
        .header(header::LAST_MODIFIED, &last_modified)
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if etag_matches(inm, &tag) {
            return builder
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .expect("static response parts");
        }
    }
    let mut range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(RangeSpec::Full, |v| parse_range(v, len));
    if let Some(ir) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let ir = ir.trim();
        // Only a strong ETag or the exact Last-Modified date keeps the range valid.
        if ir != tag && ir != last_modified {
            range = RangeSpec::Full;
        }
    }
    let (start, count) = match range {
        RangeSpec::Full => {
            builder = builder.status(StatusCode::OK);
            (0, len)
        }
        RangeSpec::Part(s, e) => {
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {s}-{e}/{len}"));
            (s, e - s + 1)
        }
        RangeSpec::Unsatisfiable => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from(format!(
                    "range not satisfiable: the file has {len} bytes\n"
                )))
                .expect("static response parts");
        }
    };
    // The body is read from this descriptor only (the one whose metadata made the ETag): a file
    // renamed over the path meanwhile does not change what this response sends.
    let file = Arc::new(file);
    builder
        .header(header::CONTENT_LENGTH, HeaderValue::from(count))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .extension(FileBody {
            file: file.clone(),
            start,
            len: count,
        })
        .body(streamed(file, start, count))
        .expect("static response parts")
}

/// The body of a 200 or 206 file response as an open file and a byte range: the HTTP listener sends
/// it with sendfile(2) and drops the response's streamed body, which only hyper's path reads.
#[derive(Debug, Clone)]
pub(crate) struct FileBody {
    pub(crate) file: Arc<File>,
    pub(crate) start: u64,
    pub(crate) len: u64,
}

/// Reads per chunk of the streamed body.
const CHUNK: u64 = 256 * 1024;

/// `len` bytes of `file` from `start`, read with `pread` (no shared file offset) off the runtime's
/// workers; a file that ends early ends the body with an error, so the connection is cut rather than
/// a short body passed off as complete.
fn streamed(file: Arc<File>, start: u64, len: u64) -> Body {
    let end = start.saturating_add(len);
    let chunks = futures_util::stream::unfold(Some(start), move |pos| {
        let file = file.clone();
        async move {
            let pos = pos?;
            if pos >= end {
                return None;
            }
            let want = (end - pos).min(CHUNK) as usize;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let mut got = 0;
                while got < want {
                    match file.read_at(&mut buf[got..], pos + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(got);
                Ok(buf)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match read {
                Ok(buf) if !buf.is_empty() => {
                    let next = pos + buf.len() as u64;
                    Some((Ok(Bytes::from(buf)), Some(next)))
                }
                Ok(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file shrank while being served",
                    )),
                    None,
                )),
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    Body::from_stream(chunks)
}

/// A `text/plain` response.
pub fn plain(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(body))
        .expect("static response parts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_table() {
        use RangeSpec::*;
        let table: &[(&str, u64, RangeSpec)] = &[
            ("bytes=0-9", 100, Part(0, 9)),
            ("bytes=10-19", 100, Part(10, 19)),
            ("bytes=90-200", 100, Part(90, 99)),
            ("bytes=95-", 100, Part(95, 99)),
            ("bytes=-10", 100, Part(90, 99)),
            ("bytes=-1000", 100, Part(0, 99)),
            ("bytes=100-", 100, Unsatisfiable),
            ("bytes=-0", 100, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=5-2", 100, Full),
            ("bytes=0-1,5-6", 100, Full),
            ("items=0-1", 100, Full),
            ("bytes=a-b", 100, Full),
            ("bytes=+1-2", 100, Full),
        ];
        for (h, len, want) in table {
            assert_eq!(parse_range(h, *len), *want, "{h} of {len}");
        }
    }

    #[test]
    fn names_are_plain() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let inner = root.join("img");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("ok"), b"1").unwrap();
        std::fs::write(root.join("secret"), b"2").unwrap();
        std::os::unix::fs::symlink("../secret", inner.join("link")).unwrap();
        std::os::unix::fs::symlink("ok", inner.join("alias")).unwrap();
        std::fs::create_dir(inner.join("sub")).unwrap();
        assert!(open_in(&inner, "ok").is_ok());
        assert!(open_in(&inner, "alias").is_ok());
        assert!(matches!(
            open_in(&inner, "link"),
            Err(AssetError::Refused(_))
        ));
        assert!(matches!(open_in(&inner, ".."), Err(AssetError::Refused(_))));
        assert!(matches!(
            open_in(&inner, "../secret"),
            Err(AssetError::Refused(_))
        ));
        assert!(matches!(
            open_in(&inner, "sub"),
            Err(AssetError::NotFound(_))
        ));
        assert!(matches!(
            open_in(&inner, "none"),
            Err(AssetError::NotFound(_))
        ));
    }

    #[test]
    fn etag_lists() {
        assert!(etag_matches("\"a\", \"b\"", "\"b\""));
        assert!(etag_matches("W/\"b\"", "\"b\""));
        assert!(etag_matches("*", "\"b\""));
        assert!(!etag_matches("\"c\"", "\"b\""));
    }
}
