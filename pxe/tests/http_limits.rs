//! HTTP limits on loopback (issue 15 item 4): a slowly sent request head and an idle keep-alive are
//! closed after their timeouts, connections beyond the cap evict idle ones so `/healthz` still answers
//! (503 only when every connection is busy), and a FIFO in an image folder is refused at once.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_pxe::{HttpLimits, Limits};
use common::{image, TestServer};

const INVENTORY: &str = "\
profiles:
  - name: ram
    image: images/lab
groups:
  - name: all
    profile: ram
";

struct Lab {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

fn lab(kernel_len: usize) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    image(&root.join("images"), "lab", "1.0", kernel_len);
    let config = root.join("inventory.yaml");
    std::fs::write(&config, INVENTORY).unwrap();
    Lab {
        _dir: dir,
        root,
        config,
    }
}

fn start(l: &Lab, http: HttpLimits) -> TestServer {
    TestServer::try_start_with(
        &l.config,
        false,
        &l.root.join("none"),
        None,
        Limits {
            http,
            ..Limits::default()
        },
    )
    .unwrap()
}

/// Reads until the server closes (Ok) or `limit` passes (Err); returns what came and how long it took.
fn until_closed(s: &mut TcpStream, limit: Duration) -> Result<(Vec<u8>, Duration), Vec<u8>> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Ok((got, start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Ok((got, start.elapsed())),
        }
    }
    Err(got)
}

/// GET `path` on a fresh connection, within `limit`: (status, body).
fn get_within(addr: SocketAddr, path: &str, limit: Duration) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, limit).unwrap();
    s.set_write_timeout(Some(limit)).unwrap();
    // A refused connection may be closed before the request is out: its answer still counts.
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    let (got, _) = until_closed(&mut s, limit).unwrap_or_else(|g| {
        panic!(
            "GET {path}: no complete answer within {limit:?} (got {:?})",
            String::from_utf8_lossy(&g)
        )
    });
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |b| b.1).to_string();
    (status, body)
}

fn quick() -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(800),
        send_timeout: Duration::from_secs(30),
        ..HttpLimits::default()
    }
}

#[test]
fn a_slowly_sent_head_is_closed_after_the_header_timeout() {
    let l = lab(100);
    let s = start(&l, quick());
    let mut c = TcpStream::connect(s.http).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    // Keep trickling header bytes: activity must not extend the head's deadline.
    let start = Instant::now();
    let mut closed = false;
    for i in 0..40 {
        if c.write_all(format!("X-{i}: a\r\n").as_bytes()).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 64];
        let r = c.read(&mut b);
        c.set_nonblocking(false).unwrap();
        if matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
        {
            closed = true;
            break;
        }
    }
    let took = start.elapsed();
    assert!(
        closed,
        "a trickled head kept the connection open for {took:?}"
    );
    assert!(
        took < Duration::from_millis(1800),
        "closed only after {took:?}"
    );
    assert_eq!(
        get_within(s.http, "/healthz", Duration::from_secs(5)).1,
        "ok\n"
    );
}

#[test]
fn an_idle_keep_alive_is_closed_after_the_idle_timeout() {
    let l = lab(100);
    let s = start(&l, quick());
    let mut c = TcpStream::connect(s.http).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (got, took) = until_closed(&mut c, Duration::from_secs(5)).expect("closed when idle");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("ok\n"),
        "{text}"
    );
    assert!(
        took >= Duration::from_millis(600),
        "closed too early: {took:?}"
    );
    // A connection that never sends a byte goes the same way.
    let mut silent = TcpStream::connect(s.http).unwrap();
    let (_, took) = until_closed(&mut silent, Duration::from_secs(5)).expect("silent closed");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn beyond_the_cap_idle_connections_make_room_and_healthz_answers() {
    let l = lab(100);
    let limits = HttpLimits {
        max_connections: 8,
        // Long: only the cap can close these.
        header_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        ..HttpLimits::default()
    };
    let s = start(&l, limits);
    let mut held = Vec::new();
    for i in 0..40 {
        let mut c = TcpStream::connect(s.http).unwrap();
        if i % 2 == 0 {
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
                .unwrap();
        }
        held.push(c);
    }
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(
            get_within(s.http, "/healthz", Duration::from_secs(5)),
            (200, "ok\n".to_string())
        );
        assert!(t.elapsed() < Duration::from_secs(2));
    }
    // The first ones were closed to make room; the server holds no more than its cap.
    let closed = held
        .iter_mut()
        .take(30)
        .map(|c| until_closed(c, Duration::from_millis(300)).is_ok())
        .filter(|closed| *closed)
        .count();
    assert_eq!(closed, 30, "connections beyond the cap were kept");
}

#[test]
fn when_every_connection_is_busy_a_new_one_gets_503_until_one_frees() {
    // Responses nobody reads: 16 MB kernels fill the socket buffers and stay in flight.
    let l = lab(16 << 20);
    let limits = HttpLimits {
        max_connections: 2,
        send_timeout: Duration::from_secs(60),
        ..HttpLimits::default()
    };
    let s = start(&l, limits);
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(s.http).unwrap();
        c.write_all(b"GET /assets/lab-1.0/vmlinuz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        busy.push(c);
    }
    let (status, body) = get_within(s.http, "/healthz", Duration::from_secs(5));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many connections"), "{body}");
    drop(busy);
    let t = Instant::now();
    loop {
        let (status, _) = get_within(s.http, "/healthz", Duration::from_secs(5));
        if status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "slots never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_fifo_in_an_image_folder_is_refused_at_once() {
    let l = lab(100);
    let fifo = l.root.join("images/lab/pipe");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo (coreutils)");
    assert!(ok.success());
    let s = start(&l, HttpLimits::default());
    // More requests than runtime workers: none may block one.
    for _ in 0..4 {
        let t = Instant::now();
        let (status, _) = get_within(s.http, "/assets/lab-1.0/pipe", Duration::from_secs(5));
        assert_eq!(status, 404);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    assert_eq!(
        get_within(s.http, "/healthz", Duration::from_secs(5)).1,
        "ok\n"
    );
}
