//! [`StaticHttp`]: an HTTP/1.1 server of fixed files on 127.0.0.1 for tests
//! (a mirror, a cloud-config URL, a flaky download): `Range: bytes=N-`
//! (206 with `Content-Range`, 416 past the end), `HEAD`, 404 for anything
//! else, a log of every request (path, range, headers), and per path a
//! list of faults ([`Reply`]) that its first requests get instead of the
//! file.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// How one request is answered instead of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Close the connection without a word (a reset).
    Drop,
    /// This status, empty body.
    Status(u16),
    /// The right head, then only this many bytes of the body, then close.
    Cut(usize),
    /// The whole file with 200, whatever the Range asked.
    IgnoreRange,
    /// 206 with the whole file, saying `Content-Range: bytes 0-...`.
    WrongRange,
}

/// One request: path, `Range` start, headers (lowercase names).
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub range: Option<usize>,
    pub headers: Vec<(String, String)>,
}

struct File {
    path: String,
    body: Vec<u8>,
    faults: Vec<Reply>,
}

/// A server of `path -> body` on loopback; one thread, one connection at a
/// time, `Connection: close`. It runs until the test process ends.
pub struct StaticHttp {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Request>>>,
}

impl StaticHttp {
    /// Serves `files`, keyed by absolute path (`/good`, `/debian/dists/...`).
    pub fn start<P: Into<String>, B: Into<Vec<u8>>>(
        files: impl IntoIterator<Item = (P, B)>,
    ) -> StaticHttp {
        Self::with_faults(files.into_iter().map(|(p, b)| (p, b, Vec::new())))
    }

    /// Serves `(path, body, faults)`: the n-th request for a path gets its
    /// n-th fault, and the file once they are spent.
    pub fn with_faults<P: Into<String>, B: Into<Vec<u8>>>(
        files: impl IntoIterator<Item = (P, B, Vec<Reply>)>,
    ) -> StaticHttp {
        let files: Vec<File> = files
            .into_iter()
            .map(|(p, b, faults)| File {
                path: p.into(),
                body: b.into(),
                faults,
            })
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                answer(conn, &files, &seen);
            }
        });
        StaticHttp { addr, log }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of `path` (`/a` -> `http://127.0.0.1:PORT/a`).
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url())
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Vec<Request>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The paths asked for so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.log().iter().map(|r| r.path.clone()).collect()
    }

    /// The `Range` starts of the requests for `path`, in order.
    pub fn ranges(&self, path: &str) -> Vec<Option<usize>> {
        self.log()
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.range)
            .collect()
    }

    /// Header `name` (lowercase) of the last request for `path`.
    pub fn header(&self, path: &str, name: &str) -> Option<String> {
        let log = self.log();
        let r = log.iter().rev().find(|r| r.path == path)?;
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn head(status: &str, extra: &str, len: usize) -> String {
    format!("HTTP/1.1 {status}\r\n{extra}Content-Length: {len}\r\nConnection: close\r\n\r\n")
}

fn answer(mut conn: TcpStream, files: &[File], seen: &Mutex<Vec<Request>>) {
    let Ok(clone) = conn.try_clone() else { return };
    let mut reader = BufReader::new(clone);
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut words = first.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("/").to_string();
    let mut req = Request {
        path: path.clone(),
        range: None,
        headers: Vec::new(),
    };
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "range" {
                req.range = v
                    .strip_prefix("bytes=")
                    .and_then(|v| v.trim_end_matches('-').parse().ok());
            }
            req.headers.push((k, v));
        }
    }
    let range = req.range;
    let n = {
        let mut log = seen.lock().unwrap_or_else(|p| p.into_inner());
        log.push(req);
        log.iter().filter(|r| r.path == path).count()
    };
    let Some(file) = files.iter().find(|f| f.path == path) else {
        let _ = conn.write_all(head("404 Not Found", "", 0).as_bytes());
        return;
    };
    let body = &file.body;
    let total = body.len();
    let (status, extra, part) = match range {
        Some(st) if st >= total => {
            let extra = format!("Content-Range: bytes */{total}\r\n");
            let _ = conn.write_all(head("416 Range Not Satisfiable", &extra, 0).as_bytes());
            return;
        }
        Some(st) => (
            "206 Partial Content",
            format!("Content-Range: bytes {st}-{}/{total}\r\n", total - 1),
            &body[st..],
        ),
        None => ("200 OK", String::new(), &body[..]),
    };
    let send = |conn: &mut TcpStream, h: String, data: &[u8]| {
        let _ = conn.write_all(h.as_bytes());
        if method != "HEAD" {
            let _ = conn.write_all(data);
        }
    };
    match file.faults.get(n - 1) {
        Some(Reply::Drop) => drop(conn),
        Some(Reply::Status(code)) => send(&mut conn, head(&format!("{code} Oops"), "", 0), &[]),
        Some(Reply::Cut(k)) => send(
            &mut conn,
            head(status, &extra, part.len()),
            &part[..(*k).min(part.len())],
        ),
        Some(Reply::IgnoreRange) => send(&mut conn, head("200 OK", "", total), body),
        Some(Reply::WrongRange) => {
            let extra = format!(
                "Content-Range: bytes 0-{}/{total}\r\n",
                total.saturating_sub(1)
            );
            send(&mut conn, head("206 Partial Content", &extra, total), body)
        }
        None => send(&mut conn, head(status, &extra, part.len()), part),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(url: &str, path: &str, extra: &str) -> String {
        let addr = url.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn serves_files_ranges_and_404_and_logs_paths() {
        let srv = StaticHttp::start([("/a", "hello"), ("/b", "")]);
        let r = get(&srv.url(), "/a", "");
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nhello"),
            "{r}"
        );
        let r = get(&srv.url(), "/a", "Range: bytes=2-\r\n");
        assert!(
            r.starts_with("HTTP/1.1 206")
                && r.contains("Content-Range: bytes 2-4/5")
                && r.ends_with("\r\n\r\nllo"),
            "{r}"
        );
        let r = get(&srv.url(), "/a", "Range: bytes=5-\r\n");
        assert!(r.starts_with("HTTP/1.1 416"), "{r}");
        assert!(get(&srv.url(), "/nope", "").starts_with("HTTP/1.1 404"));
        assert_eq!(srv.requests(), ["/a", "/a", "/a", "/nope"]);
        assert_eq!(srv.ranges("/a"), [None, Some(2), Some(5)]);
    }

    #[test]
    fn faults_come_first_then_the_file() {
        let srv = StaticHttp::with_faults([(
            "/f",
            "0123456789",
            vec![Reply::Status(503), Reply::Drop, Reply::Cut(4)],
        )]);
        assert!(get(&srv.url(), "/f", "X-A: 1\r\n").starts_with("HTTP/1.1 503"));
        assert_eq!(get(&srv.url(), "/f", ""), "");
        let r = get(&srv.url(), "/f", "");
        assert!(
            r.contains("Content-Length: 10") && r.ends_with("0123"),
            "{r}"
        );
        assert!(get(&srv.url(), "/f", "").ends_with("0123456789"));
        assert_eq!(srv.header("/f", "x-a"), None, "the last request had none");
        assert_eq!(srv.ranges("/f").len(), 4);
    }
}
