//! A fake cloud metadata service for tests (std only): an EC2-style
//! instance metadata service with IMDSv2 session tokens, or plain paths as
//! DigitalOcean's metadata API has them, with per-path faults (statuses,
//! redirects, slow, endless and cut bodies) and a log of every request.
//! Used by `cairn-cloudinit`'s unit tests, its integration test and the
//! builder's `cloud_metadata` VM test (which includes this file by path).

#![allow(dead_code)] // each test uses its own part

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The header of the IMDSv2 token request (the token's lifetime).
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The header that carries the token on every other request.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// How one request is answered.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with this body.
    Body(Vec<u8>),
    /// This status, empty body.
    Status(u16),
    /// 302 to this location.
    Redirect(String),
    /// 200 announcing `len` bytes, then one byte every `every`.
    Slow { len: usize, every: Duration },
    /// 200 without a length, bytes until the client hangs up.
    Endless,
    /// Close the connection without an answer.
    Drop,
    /// Read the request, then say nothing for this long.
    Silent(Duration),
    /// 200 with the client's own address (what EC2's `local-ipv4` is).
    PeerIp,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub peer: IpAddr,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    /// (method, path) -> the replies in turn; the last one repeats.
    routes: HashMap<(String, String), Vec<Reply>>,
    served: HashMap<(String, String), usize>,
    log: Vec<Request>,
    /// IMDSv2: the token `PUT /latest/api/token` hands out and every
    /// `GET /latest/...` must carry.
    token: Option<String>,
}

/// The server; it runs until the process ends.
pub struct FakeCloud {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeCloud {
    /// A server on `bind` (`127.0.0.1:0` for any free port). With
    /// `imdsv2_token`, `PUT /latest/api/token` with a TTL header answers
    /// that token (400 without the header) and a `GET /latest/...` without
    /// it gets 401, as EC2 with IMDSv2 required does.
    pub fn start(bind: &str, imdsv2_token: Option<&str>) -> FakeCloud {
        let listener = TcpListener::bind(bind)
            .unwrap_or_else(|e| panic!("binding the fake cloud on {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            token: imdsv2_token.map(String::from),
            ..Default::default()
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        FakeCloud { addr, state }
    }

    /// `http://ADDR:PORT`, no trailing slash.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `method path` with `replies` in turn (the last repeats).
    pub fn route(&self, method: &str, path: &str, replies: Vec<Reply>) -> &Self {
        self.lock()
            .routes
            .insert((method.to_string(), path.to_string()), replies);
        self
    }

    /// `GET path` answers `body`.
    pub fn get(&self, path: &str, body: impl Into<Vec<u8>>) -> &Self {
        self.route("GET", path, vec![Reply::Body(body.into())])
    }

    /// The routes of an EC2 instance: user-data (none: 404), `local-ipv4`
    /// (the client's address), `public-ipv4`, `hostname` and the keys as
    /// `public-keys/` lists them (`N=name`, then `public-keys/N/openssh-key`).
    pub fn ec2_instance(
        &self,
        user_data: Option<&str>,
        hostname: &str,
        public_ipv4: Option<&str>,
        keys: &[&str],
    ) -> &Self {
        if let Some(u) = user_data {
            self.get("/latest/user-data", u);
        }
        self.route("GET", "/latest/meta-data/local-ipv4", vec![Reply::PeerIp]);
        if let Some(p) = public_ipv4 {
            self.get("/latest/meta-data/public-ipv4", p);
        }
        self.get("/latest/meta-data/hostname", hostname);
        self.get("/latest/meta-data/", "hostname\nlocal-ipv4\npublic-keys/\n");
        if !keys.is_empty() {
            let list: String = (0..keys.len()).map(|i| format!("{i}=key{i}\n")).collect();
            self.get(
                "/latest/meta-data/public-keys/",
                list.trim_end().to_string(),
            );
            for (i, k) in keys.iter().enumerate() {
                self.get(
                    &format!("/latest/meta-data/public-keys/{i}/openssh-key"),
                    format!("{k}\n"),
                );
            }
        }
        self
    }

    /// The routes of a droplet: `/metadata/v1.json` and, when given,
    /// `/metadata/v1/user-data`.
    pub fn droplet(&self, json: &str, user_data: Option<&str>) -> &Self {
        self.get("/metadata/v1.json", json);
        if let Some(u) = user_data {
            self.get("/metadata/v1/user-data", u);
        }
        self
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().log.clone()
    }

    /// `METHOD PATH` of every request so far.
    pub fn lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn head(status: u16, extra: &str, len: Option<usize>) -> String {
    let reason = match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Whatever",
    };
    let len = len
        .map(|n| format!("Content-Length: {n}\r\n"))
        .unwrap_or_default();
    format!("HTTP/1.1 {status} {reason}\r\n{extra}{len}Connection: close\r\n\r\n")
}

fn serve(mut conn: TcpStream, state: &Mutex<State>) {
    let peer = match conn.peer_addr() {
        Ok(a) => a.ip(),
        Err(_) => return,
    };
    let Ok(clone) = conn.try_clone() else { return };
    let mut r = BufReader::new(clone);
    let mut first = String::new();
    if r.read_line(&mut first).unwrap_or(0) == 0 {
        return;
    }
    let mut words = first.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap_or(0) == 0 || l.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let req = Request {
        method: method.clone(),
        path: path.clone(),
        headers,
        peer,
    };
    if let Some(n) = req
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        let _ = std::io::copy(&mut (&mut r).take(n), &mut std::io::sink());
    }
    let reply = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.log.push(req.clone());
        let key = (method.clone(), path.clone());
        let routed = st.routes.get(&key).cloned();
        let n = {
            let c = st.served.entry(key).or_insert(0);
            *c += 1;
            *c
        };
        match (routed, &st.token) {
            (Some(replies), _) => replies[(n - 1).min(replies.len() - 1)].clone(),
            (None, Some(t)) if method == "PUT" && path == "/latest/api/token" => {
                match req.header(TTL_HEADER) {
                    Some(_) => Reply::Body(t.clone().into_bytes()),
                    None => Reply::Status(400),
                }
            }
            (None, _) => Reply::Status(404),
        }
    };
    // IMDSv2 required: a GET under /latest/ without the token is refused
    let reply = match &state.lock().unwrap_or_else(|p| p.into_inner()).token {
        Some(t) if method == "GET" && path.starts_with("/latest/") => {
            if req.header(TOKEN_HEADER) == Some(t.as_str()) {
                reply
            } else {
                Reply::Status(401)
            }
        }
        _ => reply,
    };
    let _ = match reply {
        Reply::Body(b) => conn
            .write_all(head(200, "", Some(b.len())).as_bytes())
            .and_then(|()| conn.write_all(&b)),
        Reply::Status(s) => conn.write_all(head(s, "", Some(0)).as_bytes()),
        Reply::Redirect(to) => {
            conn.write_all(head(302, &format!("Location: {to}\r\n"), Some(0)).as_bytes())
        }
        Reply::Slow { len, every } => {
            let mut res = conn.write_all(head(200, "", Some(len)).as_bytes());
            for _ in 0..len {
                if res.is_err() {
                    break;
                }
                std::thread::sleep(every);
                res = conn.write_all(b"x");
            }
            res
        }
        Reply::Endless => {
            let mut res = conn.write_all(head(200, "", None).as_bytes());
            let chunk = vec![b'#'; 64 * 1024];
            while res.is_ok() {
                res = conn.write_all(&chunk);
            }
            Ok(())
        }
        Reply::Drop => Ok(()),
        Reply::Silent(d) => {
            std::thread::sleep(d);
            Ok(())
        }
        Reply::PeerIp => {
            let ip = peer.to_string();
            conn.write_all(head(200, "", Some(ip.len())).as_bytes())
                .and_then(|()| conn.write_all(ip.as_bytes()))
        }
    };
}
