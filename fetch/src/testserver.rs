//! A loopback HTTP/1.1 server for this crate's tests: fixed files, with
//! `Range: bytes=N-` (206 and `Content-Range`, 416 past the end), whose
//! first answers per path can be faults; it logs every request.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Retry;

/// How one request is answered instead of the file.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    /// close the connection without a word (a reset)
    Drop,
    /// this status, empty body
    Status(u16),
    /// the right head, then only this many bytes of the body, then close
    Cut(usize),
    /// the whole file with 200, whatever the Range asked
    IgnoreRange,
    /// 206 with the whole file, saying `Content-Range: bytes 0-...`
    WrongRange,
}

/// One request: path, `Range` start, headers (lowercase names).
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub range: Option<usize>,
    pub headers: Vec<(String, String)>,
}

pub struct Server {
    base: String,
    log: Arc<Mutex<Vec<Request>>>,
}

/// A retry policy with short waits.
pub fn quick(tries: u32) -> Retry {
    Retry {
        tries,
        first_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    }
}

impl Server {
    /// Serves `(path, body, faults)`: the n-th request for a path gets the
    /// n-th fault, and the file once they are spent.
    pub fn start(files: Vec<(&'static str, Vec<u8>, Vec<Reply>)>) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::<Request>::new()));
        let seen = log.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    continue;
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut req = Request {
                    path: path.clone(),
                    range: None,
                    headers: Vec::new(),
                };
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).is_err() || l.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':') {
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
                    let mut log = seen.lock().unwrap();
                    log.push(req);
                    log.iter().filter(|r| r.path == path).count()
                };
                let Some((_, body, faults)) = files.iter().find(|(p, _, _)| *p == path) else {
                    let _ = write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    continue;
                };
                let total = body.len();
                let head = |status: &str, extra: String, len: usize| {
                    format!("HTTP/1.1 {status}\r\n{extra}Content-Length: {len}\r\nConnection: close\r\n\r\n")
                };
                let (status, extra, part) = match range {
                    Some(st) if st >= total => {
                        let _ = write!(
                            s,
                            "{}",
                            head(
                                "416 Range Not Satisfiable",
                                format!("Content-Range: bytes */{total}\r\n"),
                                0
                            )
                        );
                        continue;
                    }
                    Some(st) => (
                        "206 Partial Content",
                        format!("Content-Range: bytes {st}-{}/{total}\r\n", total - 1),
                        &body[st..],
                    ),
                    None => ("200 OK", String::new(), &body[..]),
                };
                match faults.get(n - 1) {
                    Some(Reply::Drop) => drop(s),
                    Some(Reply::Status(code)) => {
                        let _ = write!(s, "{}", head(&format!("{code} Oops"), String::new(), 0));
                    }
                    Some(Reply::Cut(k)) => {
                        let _ = write!(s, "{}", head(status, extra, part.len()));
                        let _ = s.write_all(&part[..*k]);
                    }
                    Some(Reply::IgnoreRange) => {
                        let _ = write!(s, "{}", head("200 OK", String::new(), total));
                        let _ = s.write_all(body);
                    }
                    Some(Reply::WrongRange) => {
                        let extra = format!("Content-Range: bytes 0-{}/{total}\r\n", total - 1);
                        let _ = write!(s, "{}", head("206 Partial Content", extra, total));
                        let _ = s.write_all(body);
                    }
                    None => {
                        let _ = write!(s, "{}", head(status, extra, part.len()));
                        let _ = s.write_all(part);
                    }
                }
            }
        });
        Server { base, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The `Range` starts of the requests for `path`, in order.
    pub fn ranges(&self, path: &str) -> Vec<Option<usize>> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.range)
            .collect()
    }

    /// Header `name` of the last request for `path`.
    pub fn header(&self, path: &str, name: &str) -> Option<String> {
        let log = self.log.lock().unwrap();
        let r = log.iter().rev().find(|r| r.path == path)?;
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}
