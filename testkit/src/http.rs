//! [`StaticHttp`]: an HTTP/1.1 server of fixed files on 127.0.0.1 for tests
//! (a mirror, a cloud-config URL), with `Range: bytes=N-`, 404 for
//! anything else, and a log of the paths asked for.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// A server of `path -> body` on loopback; one thread, one connection at a
/// time, `Connection: close`. It runs until the test process ends.
pub struct StaticHttp {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl StaticHttp {
    /// Serves `files`, keyed by absolute path (`/good`, `/debian/dists/...`).
    pub fn start<P: Into<String>, B: Into<Vec<u8>>>(
        files: impl IntoIterator<Item = (P, B)>,
    ) -> StaticHttp {
        let files: BTreeMap<String, Vec<u8>> = files
            .into_iter()
            .map(|(p, b)| (p.into(), b.into()))
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                answer(conn, &files, &seen);
            }
        });
        StaticHttp { addr, requests }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The paths asked for so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn answer(mut conn: TcpStream, files: &BTreeMap<String, Vec<u8>>, seen: &Mutex<Vec<String>>) {
    let Ok(clone) = conn.try_clone() else { return };
    let mut reader = BufReader::new(clone);
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = v.trim().trim_end_matches('-').parse::<usize>().ok();
        }
    }
    let mut words = first.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(path.clone());
    let _ = match files.get(&path) {
        Some(body) => {
            let (status, body) = match range {
                Some(n) if n <= body.len() => ("206 Partial Content", &body[n..]),
                _ => ("200 OK", &body[..]),
            };
            write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .and_then(|_| {
                if method == "HEAD" {
                    Ok(())
                } else {
                    conn.write_all(body)
                }
            })
        }
        None => write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    };
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
        s.read_to_string(&mut out).unwrap();
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
            r.starts_with("HTTP/1.1 206") && r.ends_with("\r\n\r\nllo"),
            "{r}"
        );
        assert!(get(&srv.url(), "/nope", "").starts_with("HTTP/1.1 404"));
        assert_eq!(srv.requests(), ["/a", "/a", "/nope"]);
    }
}
