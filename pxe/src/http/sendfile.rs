//! The zero-copy path for file bodies (issue 18): GET and HEAD of `/assets/...` and `/update/v1/...`
//! are parsed here, answered by the same router as every other request, and a file response's body
//! goes from the open file to the socket with sendfile(2), in non-blocking calls whose waits for the
//! client are the ones the watchdog times (`send_timeout`).

use std::fs::File;
use std::io;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version,
};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Conn;

/// Headers in one request head, as hyper's default.
const MAX_HEADERS: usize = 100;

/// Bytes of one sendfile(2) call at most (nginx's default `sendfile_max_chunk`; a non-blocking socket
/// takes what fits in its buffer anyway), so one fast client cannot hold a worker for long.
const SENDFILE_CHUNK: usize = 2 << 20;

/// A request head read off the connection.
#[derive(Debug)]
pub(super) struct Head {
    /// Bytes of the head, blank line included.
    pub(super) len: usize,
    pub(super) method: Method,
    pub(super) target: String,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    /// The client lets the connection stay open after the response (HTTP/1.1 without
    /// `Connection: close`, HTTP/1.0 with `Connection: keep-alive`).
    pub(super) keep_alive: bool,
    /// A body follows (`Content-Length` other than 0, `Transfer-Encoding`), or the request asks for
    /// something only hyper does (`Expect`, `Upgrade`).
    pub(super) special: bool,
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub(super) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A head this module can read into an `http` request.
    Complete(Head),
    /// Something else (malformed, too many headers, not convertible): hyper answers it.
    Other,
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Parses the request head at the start of `buf`.
pub(super) fn parse(buf: &[u8]) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Other;
        };
        headers.append(name, value);
    }
    let keep_alive = if version == Version::HTTP_11 {
        !has_token(&headers, header::CONNECTION, "close")
    } else {
        has_token(&headers, header::CONNECTION, "keep-alive")
            && !has_token(&headers, header::CONNECTION, "close")
    };
    let body = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .any(|v| v.as_bytes() != b"0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    let special =
        body || headers.contains_key(header::EXPECT) || headers.contains_key(header::UPGRADE);
    Parsed::Complete(Head {
        len,
        method,
        target: path.to_string(),
        version,
        headers,
        keep_alive,
        special,
    })
}

impl Head {
    /// Whether this path answers the request: GET or HEAD of a file, nothing hyper alone handles.
    pub(super) fn zero_copy(&self) -> bool {
        (self.method == Method::GET || self.method == Method::HEAD)
            && !self.special
            && (self.target.starts_with("/assets/") || self.target.starts_with("/update/v1/"))
    }

    /// The request for the router (no body), or None when the target is not a valid URI.
    pub(super) fn request(&self, peer: SocketAddr) -> Option<Request<Body>> {
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(self.target.as_str())
            .version(self.version)
            .extension(ConnectInfo(peer))
            .body(Body::empty())
            .ok()?;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
}

/// The status line and headers of a response, as hyper would write them: the request's HTTP
/// version, `content-length` (none for 1xx, 204, 304), `date` if the handler set none, and
/// `connection` saying what happens next.
pub(super) fn response_head(
    status: StatusCode,
    headers: &HeaderMap,
    version: Version,
    body_len: Option<u64>,
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let v = if version == Version::HTTP_11 {
        "HTTP/1.1"
    } else {
        "HTTP/1.0"
    };
    out.extend_from_slice(
        format!(
            "{v} {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && body_len.is_some())
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if let (Some(n), false) = (body_len, bodiless) {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match (keep_alive, version == Version::HTTP_11) {
        (false, _) => out.extend_from_slice(b"connection: close\r\n"),
        (true, false) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        (true, true) => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes `data` to the non-blocking socket, telling the watchdog while the client reads nothing.
pub(super) async fn write_all(stream: &TcpStream, conn: &Conn, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.wrote();
                data = &data[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.write_blocked();
                stream.writable().await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `len` bytes of `file` from `start` to the socket with sendfile(2): the kernel moves the
/// page-cache pages to the socket, nothing is copied through this process. Each call takes what
/// the socket buffer has room for; when it is full the task waits for the socket to be writable,
/// and the watchdog cuts a client that reads nothing for `send_timeout`. The explicit offset leaves
/// the descriptor's own offset alone. A file that ends early (truncated in place) is an error:
/// the caller closes the connection rather than send fewer bytes than the `content-length` said.
pub(super) async fn send_file(
    stream: &TcpStream,
    conn: &Conn,
    file: &File,
    start: u64,
    len: u64,
) -> io::Result<()> {
    let end = start
        .checked_add(len)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut offset = start;
    while offset < end {
        let want = usize::try_from(end - offset)
            .unwrap_or(usize::MAX)
            .min(SENDFILE_CHUNK);
        let sent = stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, file, Some(&mut offset), want).map_err(io::Error::from)
        });
        match sent {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while being served",
                ))
            }
            Ok(_) => {
                conn.wrote();
                // A client that always has room must not keep this worker from the other tasks.
                tokio::task::consume_budget().await;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.write_blocked();
                stream.writable().await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        match parse(raw.as_bytes()) {
            Parsed::Complete(h) => h,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn which_requests_take_the_zero_copy_path() {
        let h = head("GET /assets/a-1/vmlinuz HTTP/1.1\r\nHost: x\r\n\r\nGET /");
        assert!(h.zero_copy() && h.keep_alive);
        assert_eq!(
            h.len,
            "GET /assets/a-1/vmlinuz HTTP/1.1\r\nHost: x\r\n\r\n".len()
        );
        assert!(head("HEAD /update/v1/c/manifest.json HTTP/1.0\r\n\r\n").zero_copy());
        assert!(!head("HEAD /update/v1/c/m HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET /assets/a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!head("GET /assets/a HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        for other in [
            "GET /boot.ipxe HTTP/1.1\r\n\r\n",
            "POST /assets/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /assets/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /assets/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /assets/a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /assets/a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert!(!head(other).zero_copy(), "{other:?}");
        }
        assert!(head("GET /assets/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n").zero_copy());
        assert!(matches!(
            parse(b"GET /assets/a HTTP/1.1\r\nHo"),
            Parsed::Partial
        ));
        assert!(matches!(parse(b"GET /a b c\r\n\r\n"), Parsed::Other));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        assert!(matches!(
            parse(format!("GET /assets/a HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Parsed::Other
        ));
    }

    #[test]
    fn response_heads() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(99u64));
        h.insert(header::ETAG, HeaderValue::from_static("\"t\""));
        let out = response_head(StatusCode::OK, &h, Version::HTTP_11, Some(5), true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\netag: \"t\"\r\ncontent-length: 5\r\ndate: "));
        assert!(text.ends_with(" GMT\r\n\r\n") && !text.contains("connection"));
        let text = String::from_utf8(response_head(
            StatusCode::NOT_MODIFIED,
            &h,
            Version::HTTP_10,
            Some(0),
            true,
        ))
        .unwrap();
        assert!(text.starts_with("HTTP/1.0 304 Not Modified\r\n"));
        assert!(!text.contains("content-length") && text.contains("connection: keep-alive\r\n"));
        // HEAD: the handler's length stands.
        let text = String::from_utf8(response_head(
            StatusCode::OK,
            &h,
            Version::HTTP_11,
            None,
            false,
        ))
        .unwrap();
        assert!(text.contains("content-length: 99\r\n") && text.contains("connection: close\r\n"));
    }
}
