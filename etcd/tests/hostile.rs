//! cairn-etcd against peers that misbehave: a tiny HTTP server of the test's own on 127.0.0.1
//! sends an endless body, a declared size past the limit, a watch line that never ends, garbage
//! JSON, etcd's error JSON, a response a byte at a time (slow loris), or nothing at all. Every
//! case ends with a clear error within the configured bounds; nothing waits for ever.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cairn_etcd::{Client, Config, Error, GetOptions, PutOptions, WatchOptions, WatchUpdate};

const MIB: usize = 1 << 20;

/// A server on 127.0.0.1 answering every connection with `answer` (after reading the request);
/// counts connections. Threads end when the client goes away or after 30 s.
struct Hostile {
    url: String,
    connections: Arc<AtomicUsize>,
}

fn hostile(answer: fn(&mut TcpStream)) -> Hostile {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                if read_request(&mut s) {
                    answer(&mut s);
                }
            });
        }
    });
    Hostile { url, connections }
}

/// Reads one request (headers and a Content-Length body).
fn read_request(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return false;
        }
        match s.read(&mut b) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
    true
}

fn chunk(s: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    write!(s, "{:x}\r\n", data.len())?;
    s.write_all(data)?;
    s.write_all(b"\r\n")
}

const CHUNKED_200: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
const CREATED: &[u8] = b"{\"result\":{\"header\":{\"revision\":\"5\"},\"created\":true}}\n";

/// 64 KiB chunks for ever (at most 1 GiB, or until the client leaves).
fn endless_body(s: &mut TcpStream) {
    if s.write_all(CHUNKED_200).is_err() {
        return;
    }
    let block = vec![b'x'; 64 * 1024];
    for _ in 0..16 * 1024 {
        if chunk(s, &block).is_err() {
            return;
        }
    }
}

fn huge_declared(s: &mut TcpStream) {
    let _ = s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n{",
    );
    thread::sleep(Duration::from_secs(5));
}

fn garbage(s: &mut TcpStream) {
    let body = b"{\"header\": {\"revision\": \"7\"}, \"kvs\": [{\"key\": \"%%%\"}]";
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(body);
}

fn etcd_unavailable(s: &mut TcpStream) {
    let body = br#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#;
    let _ = write!(
        s,
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(body);
}

fn html_error(s: &mut TcpStream) {
    let body = b"<html><body>\x1b[31mproxy error</body></html>";
    let _ = write!(
        s,
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(body);
}

/// Headers, then one byte of a 1000-byte body every 200 ms.
fn slow_loris(s: &mut TcpStream) {
    if s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
    )
    .is_err()
    {
        return;
    }
    for _ in 0..1000 {
        if s.write_all(b" ").is_err() {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Reads the request and answers nothing.
fn silent(_: &mut TcpStream) {
    thread::sleep(Duration::from_secs(30));
}

/// A watch whose second line never ends (at most 1 GiB).
fn watch_huge_line(s: &mut TcpStream) {
    if s.write_all(CHUNKED_200).is_err() || chunk(s, CREATED).is_err() {
        return;
    }
    let mut block = b"{\"result\":{\"events\":[{\"kv\":{\"key\":\"".to_vec();
    block.resize(64 * 1024, b'A');
    if chunk(s, &block).is_err() {
        return;
    }
    let block = vec![b'A'; 64 * 1024];
    for _ in 0..16 * 1024 {
        if chunk(s, &block).is_err() {
            return;
        }
    }
}

fn watch_garbage(s: &mut TcpStream) {
    let _ = s.write_all(CHUNKED_200);
    let _ = chunk(s, CREATED);
    let _ = chunk(s, b"{\"result\":{\"events\":[{\"kv\":{\"key\":12}}]}}\n");
    thread::sleep(Duration::from_secs(5));
}

/// A watch line started, then a byte every 200 ms.
fn watch_slow_loris(s: &mut TcpStream) {
    if s.write_all(CHUNKED_200).is_err() || chunk(s, CREATED).is_err() {
        return;
    }
    for _ in 0..1000 {
        if chunk(s, b" ").is_err() || chunk(s, b"{").is_err() {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// A watch line of 4 MiB (an event with a 3 MiB value) in 1 KiB pieces, then quiet.
fn watch_big_line_in_small_pieces(s: &mut TcpStream) {
    use base64::Engine as _;
    if s.write_all(CHUNKED_200).is_err() || chunk(s, CREATED).is_err() {
        return;
    }
    let value = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 3 * MIB]);
    let line = format!(
        "{{\"result\":{{\"header\":{{\"revision\":\"9\"}},\"events\":[{{\"kv\":{{\"key\":\"aw==\",\"mod_revision\":\"9\",\"value\":\"{value}\"}}}}]}}}}\n"
    );
    for piece in line.as_bytes().chunks(1024) {
        if chunk(s, piece).is_err() {
            return;
        }
    }
    thread::sleep(Duration::from_secs(10));
}

/// Headers and nothing more.
fn watch_silent_start(s: &mut TcpStream) {
    let _ = s.write_all(CHUNKED_200);
    thread::sleep(Duration::from_secs(30));
}

/// A watch that etcd cancels at once (e.g. a future revision).
fn watch_canceled(s: &mut TcpStream) {
    let _ = s.write_all(CHUNKED_200);
    let _ = chunk(s, CREATED);
    let _ = chunk(
        s,
        b"{\"result\":{\"header\":{\"revision\":\"5\"},\"canceled\":true,\"cancel_reason\":\"mvcc: required revision is a future revision\"}}\n",
    );
    thread::sleep(Duration::from_secs(5));
}

/// The stream's own error object.
fn watch_stream_error(s: &mut TcpStream) {
    let _ = s.write_all(CHUNKED_200);
    let _ = chunk(s, CREATED);
    let _ = chunk(
        s,
        b"{\"error\":{\"grpc_code\":7,\"http_code\":403,\"message\":\"permission denied\",\"http_status\":\"Forbidden\"}}\n",
    );
    thread::sleep(Duration::from_secs(5));
}

fn client(url: &str) -> Client {
    Client::with_config(
        [url],
        Config {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            max_response: MIB,
            max_watch_line: MIB,
            ..Config::default()
        },
    )
    .unwrap()
}

/// Runs `f`, which must finish within `limit`.
async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let r = tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("still running after {limit:?}"));
    (r, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_is_cut_at_the_limit() {
    let h = hostile(endless_body);
    let c = client(&h.url);
    let (r, took) = within(Duration::from_secs(5), c.get("k", GetOptions::new())).await;
    let e = r.unwrap_err();
    assert!(
        matches!(e, Error::TooLarge { limit, .. } if limit == MIB),
        "{e}"
    );
    assert!(!e.is_transient());
    assert!(
        e.to_string().contains("/v3/kv/range") && e.to_string().contains(&h.url),
        "{e}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");

    let h = hostile(huge_declared);
    let c = client(&h.url);
    let (r, took) = within(Duration::from_secs(5), c.get("k", GetOptions::new())).await;
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_error_answers_are_named() {
    let h = hostile(garbage);
    let c = client(&h.url);
    let e = c.get("k", GetOptions::new()).await.unwrap_err();
    assert!(matches!(e, Error::Decode { .. }), "{e}");
    assert!(e.to_string().contains("undecodable answer"), "{e}");

    let h = hostile(etcd_unavailable);
    let c = client(&h.url);
    let e = c.put("k", "v", PutOptions::new()).await.unwrap_err();
    assert!(
        matches!(&e, Error::Etcd { code: 14, message, .. } if message == "etcdserver: no leader"),
        "{e}"
    );
    assert!(e.is_transient());

    let h = hostile(html_error);
    let c = client(&h.url);
    let e = c.get("k", GetOptions::new()).await.unwrap_err();
    match &e {
        Error::Http { status, body, .. } => {
            assert_eq!(*status, 502);
            assert!(
                body.contains("proxy error") && !body.contains('\x1b'),
                "{body}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(e.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_peers_time_out() {
    let h = hostile(slow_loris);
    let c = client(&h.url);
    let (r, took) = within(Duration::from_secs(5), c.get("k", GetOptions::new())).await;
    let e = r.unwrap_err();
    assert!(
        matches!(e, Error::Timeout { after, .. } if after == Duration::from_secs(1)),
        "{e}"
    );
    assert!(e.is_transient());
    assert!(took < Duration::from_millis(1500), "{took:?}");

    let h = hostile(silent);
    let c = client(&h.url);
    let (r, took) = within(Duration::from_secs(5), c.status()).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // a watch whose start never comes
    let h = hostile(watch_silent_start);
    let c = client(&h.url);
    let (r, took) = within(Duration::from_secs(5), c.watch("k", WatchOptions::new())).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // a reads-only request to a silent peer moves on to the next endpoint; a write does not
    let good = hostile(garbage);
    let c = Client::with_config(
        [h.url.as_str(), good.url.as_str()],
        Config {
            request_timeout: Duration::from_secs(1),
            ..Config::default()
        },
    )
    .unwrap();
    let e = c.get("k", GetOptions::new()).await.unwrap_err();
    assert!(
        matches!(e, Error::Decode { .. }),
        "the read reached the second: {e}"
    );
    assert_eq!(c.current_endpoint(), good.url);
    let c = Client::with_config(
        [h.url.as_str(), good.url.as_str()],
        Config {
            request_timeout: Duration::from_secs(1),
            ..Config::default()
        },
    )
    .unwrap();
    let e = c.put("k", "v", PutOptions::new()).await.unwrap_err();
    assert!(
        matches!(&e, Error::Timeout { endpoint, .. } if *endpoint == h.url),
        "a write that may have landed is not sent again: {e}"
    );
    // but the next request starts at the other endpoint
    assert_eq!(c.current_endpoint(), good.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_watch_streams_end_with_an_error() {
    // a line past the limit: an error, the watch ends
    let h = hostile(watch_huge_line);
    let c = client(&h.url);
    let mut w = c.watch("k", WatchOptions::new()).await.unwrap();
    let (r, took) = within(Duration::from_secs(5), w.next()).await;
    let e = r.unwrap().unwrap_err();
    assert!(
        matches!(e, Error::TooLarge { limit, .. } if limit == MIB),
        "{e}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(w.next().await.is_none());
    assert_eq!(h.connections.load(Ordering::SeqCst), 1);

    // garbage: an error, the watch ends
    let h = hostile(watch_garbage);
    let c = client(&h.url);
    let mut w = c.watch("k", WatchOptions::new()).await.unwrap();
    let (r, _) = within(Duration::from_secs(5), w.next()).await;
    let e = r.unwrap().unwrap_err();
    assert!(matches!(e, Error::Decode { .. }), "{e}");
    assert!(w.next().await.is_none());

    // canceled by the server: the reason
    let h = hostile(watch_canceled);
    let c = client(&h.url);
    let e = c.watch("k", WatchOptions::new()).await.unwrap();
    let mut w = e;
    let (r, _) = within(Duration::from_secs(5), w.next()).await;
    let e = r.unwrap().unwrap_err();
    assert!(
        matches!(&e, Error::WatchCanceled { reason, .. } if reason.contains("future revision")),
        "{e}"
    );

    // the stream's own error object (a permanent one)
    let h = hostile(watch_stream_error);
    let c = client(&h.url);
    let mut w = c.watch("k", WatchOptions::new()).await.unwrap();
    let (r, _) = within(Duration::from_secs(5), w.next()).await;
    let e = r.unwrap().unwrap_err();
    assert!(
        matches!(&e, Error::Etcd { code: 7, message, .. } if message == "permission denied"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_watch_line_in_small_pieces_is_read_in_linear_time() {
    let h = hostile(watch_big_line_in_small_pieces);
    let c = Client::with_config(
        [h.url.as_str()],
        Config {
            request_timeout: Duration::from_secs(5),
            max_watch_line: 8 * MIB,
            ..Config::default()
        },
    )
    .unwrap();
    let mut w = c.watch("k", WatchOptions::new()).await.unwrap();
    let (r, took) = within(Duration::from_secs(10), w.next()).await;
    match r.unwrap().unwrap() {
        WatchUpdate::Events { events, header } => {
            assert_eq!(header.revision, 9);
            assert_eq!(events[0].kv.value.len(), 3 * MIB);
            assert_eq!(events[0].mod_revision(), 9);
        }
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_watch_is_timed_out_and_retried_with_backoff() {
    let h = hostile(watch_slow_loris);
    let c = client(&h.url);
    let mut w = c.watch("k", WatchOptions::new()).await.unwrap();
    // each connection: a line started, never finished within the 1 s timeout
    let t = Instant::now();
    let mut notes = 0;
    while notes < 3 {
        let (r, _) = within(Duration::from_secs(10), w.next()).await;
        match r.unwrap().unwrap() {
            WatchUpdate::Reconnecting {
                error,
                resume_revision,
            } => {
                assert!(matches!(error, Error::Timeout { .. }), "{error}");
                assert_eq!(resume_revision, 6, "after the created revision 5");
                notes += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // dropping the watch stops the task: no new connections after
    drop(w);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = h.connections.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.connections.load(Ordering::SeqCst), n);
}
