//! File bodies on the zero-copy path (issue 18), on loopback with curl and raw sockets: full,
//! single-range, HEAD, 304 and 416 answers byte-exact against the file; keep-alive and pipelined
//! requests that alternate between that path and hyper's; a client that stops reading is cut off
//! after `send_timeout` and its connection slot freed; a file renamed over mid-download still sends
//! the old bytes, one truncated in place cuts the connection; 200 concurrent curl clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_pxe::{HttpLimits, Limits};
use common::{image, pattern, TestServer};

const INVENTORY: &str = "\
profiles:
  - name: ram
    image: images/lab
groups:
  - name: all
    profile: ram
";

const KERNEL: &str = "/assets/lab-1.0/vmlinuz";

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

fn curl() -> Command {
    let ok = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "this test needs curl (Debian package curl)");
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "30"]);
    c
}

/// One curl transfer: (status, lower-cased response headers, body).
fn fetch(dir: &Path, url: &str, args: &[&str]) -> (u16, String, Vec<u8>) {
    let body = dir.join("body");
    let head = dir.join("head");
    let _ = std::fs::remove_file(&body);
    let out = curl()
        .args(args)
        .arg("-o")
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .args(["-w", "%{http_code}"])
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {args:?} {url}: {out:?}");
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let head = std::fs::read_to_string(&head).unwrap().to_ascii_lowercase();
    (status, head, std::fs::read(&body).unwrap_or_default())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

#[test]
fn bodies_are_byte_exact_full_ranges_head_304_416() {
    let len = 5 * 1024 * 1024 + 33;
    let l = lab(len);
    let s = start(&l, HttpLimits::default());
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(len, 7);
    let url = s.url(KERNEL);
    let (status, head, body) = fetch(tmp.path(), &url, &[]);
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "content-length"),
        Some(len.to_string().as_str())
    );
    assert!(body == data, "full body differs");
    let tag = header(&head, "etag").unwrap().to_string();
    let n = len as u64;
    // (Range, first byte, last byte)
    let table: &[(String, u64, u64)] = &[
        ("bytes=0-0".into(), 0, 0),
        ("bytes=0-65535".into(), 0, 65535),
        ("bytes=1234567-3456789".into(), 1_234_567, 3_456_789),
        ("bytes=-1000".into(), n - 1000, n - 1),
        (format!("bytes={}-", n - 70_000), n - 70_000, n - 1),
        (format!("bytes={}-{}", n - 1, n - 1), n - 1, n - 1),
        (format!("bytes={}-", n - 1), n - 1, n - 1),
        (format!("bytes=4096-{}", n + 500), 4096, n - 1),
    ];
    for (range, a, b) in table {
        let (status, head, body) = fetch(tmp.path(), &url, &["-H", &format!("Range: {range}")]);
        assert_eq!(status, 206, "{range}");
        assert_eq!(
            header(&head, "content-range"),
            Some(format!("bytes {a}-{b}/{n}").as_str()),
            "{range}"
        );
        assert!(
            body == data[*a as usize..=*b as usize],
            "{range}: body differs"
        );
    }
    // Several ranges: the whole file, as before.
    let (status, _, body) = fetch(tmp.path(), &url, &["-H", "Range: bytes=0-1,5-6"]);
    assert_eq!(status, 200);
    assert!(body == data);
    // A stale If-Range: the whole file; the current ETag: the range.
    let (status, _, body) = fetch(
        tmp.path(),
        &url,
        &["-H", "Range: bytes=10-19", "-H", "If-Range: \"stale\""],
    );
    assert_eq!((status, body.len()), (200, len));
    let (status, _, body) = fetch(
        tmp.path(),
        &url,
        &[
            "-H",
            "Range: bytes=10-19",
            "-H",
            &format!("If-Range: {tag}"),
        ],
    );
    assert_eq!((status, &body[..]), (206, &data[10..20]));
    // HEAD: the headers of the full answer, no body (a raw socket: the answer must end at its head).
    let mut c = TcpStream::connect(s.http).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "HEAD {KERNEL} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    let text = String::from_utf8(got).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "a body after HEAD: {text}");
    let head = text.to_ascii_lowercase();
    assert_eq!(
        header(&head, "content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(header(&head, "etag"), Some(tag.as_str()));
    // 304 and 416.
    let (status, head, body) = fetch(tmp.path(), &url, &["-H", &format!("If-None-Match: {tag}")]);
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(header(&head, "etag"), Some(tag.as_str()));
    for range in [format!("bytes={n}-"), "bytes=-0".into()] {
        let (status, head, _) = fetch(tmp.path(), &url, &["-H", &format!("Range: {range}")]);
        assert_eq!(status, 416, "{range}");
        assert_eq!(
            header(&head, "content-range"),
            Some(format!("bytes */{n}").as_str())
        );
    }
    // A missing file and a refused name are answered on the same path.
    assert_eq!(
        fetch(tmp.path(), &s.url("/assets/lab-1.0/none"), &[]).0,
        404
    );
    assert_eq!(
        fetch(tmp.path(), &s.url("/assets/lab-1.0/.hidden"), &[]).0,
        404
    );
}

#[test]
fn one_connection_alternates_between_the_zero_copy_path_and_hyper() {
    let len = 2 * 1024 * 1024 + 5;
    let l = lab(len);
    let s = start(&l, HttpLimits::default());
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(len, 7);
    // One curl, five transfers on one connection: hyper, file, hyper, range, hyper's 404.
    let targets = [
        ("/healthz", "a"),
        (KERNEL, "b"),
        ("/boot.ipxe", "c"),
        (KERNEL, "d"),
        ("/nothing", "e"),
    ];
    let mut cmd = curl();
    cmd.current_dir(tmp.path());
    for (i, (path, out)) in targets.iter().enumerate() {
        if i > 0 {
            cmd.args(["--next", "-sS", "--max-time", "30"]);
        }
        cmd.args(["-w", "%{http_code} %{num_connects}\\n"]);
        if i == 3 {
            cmd.args(["-r", "1000-1999"]);
        }
        cmd.arg("-o").arg(out).arg(s.url(path));
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        ["200 1", "200 0", "200 0", "206 0", "404 0"],
        "every transfer after the first reuses the connection"
    );
    assert_eq!(std::fs::read(tmp.path().join("a")).unwrap(), b"ok\n");
    assert!(std::fs::read(tmp.path().join("b")).unwrap() == data);
    assert!(std::fs::read(tmp.path().join("c"))
        .unwrap()
        .starts_with(b"#!ipxe"));
    assert!(std::fs::read(tmp.path().join("d")).unwrap() == data[1000..2000]);

    // Pipelined in one write: each answered in order, whichever path takes it.
    let mut c = TcpStream::connect(s.http).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n\
         GET {KERNEL} HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n\
         HEAD {KERNEL} HTTP/1.1\r\nHost: t\r\n\r\n\
         GET {KERNEL} HTTP/1.0\r\nRange: bytes=-3\r\n\r\n"
    );
    c.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.")
        .map(|(i, _)| &text[i..i + 12])
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200",
            "HTTP/1.1 206",
            "HTTP/1.1 200",
            "HTTP/1.1 200",
            "HTTP/1.0 206"
        ],
        "{text}"
    );
    let tail = &got[got.len() - 3..];
    assert_eq!(tail, &data[len - 3..], "HTTP/1.0 answer, then closed");
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_its_slot_freed() {
    // Far more than the loopback socket buffers hold (tens of MB with autotuning): a sparse file.
    let l = lab(100);
    let big: u64 = 4 << 30;
    std::fs::File::create(l.root.join("images/lab/big"))
        .unwrap()
        .set_len(big)
        .unwrap();
    let limits = HttpLimits {
        max_connections: 2,
        send_timeout: Duration::from_secs(1),
        ..HttpLimits::default()
    };
    let s = start(&l, limits);
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(s.http).unwrap();
        write!(c, "GET /assets/lab-1.0/big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        stalled.push(c);
    }
    let t = Instant::now();
    // Both slots busy with readers that read nothing more: cut after about a second, then
    // /healthz is answered again.
    let mut refused = 0;
    loop {
        let mut c = TcpStream::connect(s.http).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        if got.starts_with(b"HTTP/1.1 200") {
            break;
        }
        refused += 1;
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "the stalled readers still hold their slots after {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(refused > 0, "the stalled readers never held the slots");
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    // The first slot freed is one stalled reader cut; the other stalls as long and is cut as
    // well: give it twice the send timeout before reading, or reading would unstall it.
    std::thread::sleep(Duration::from_secs(2));
    // The cut connections end short of the file (what the socket buffers held, tens of MB).
    for c in stalled {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let r = (&c).take(1 << 30).read_to_end(&mut got);
        // cut: the stream ends (EOF or a reset), well short of the cap; not cut: the read runs
        // into the cap or waits for more and times out
        let timed_out = matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
        assert!(
            !timed_out && (got.len() as u64) < 1 << 30,
            "a stalled reader was not cut: {} bytes, {r:?}",
            got.len()
        );
    }
}

/// Reads a response head (up to the blank line) from `c`; returns (head, body bytes read with it).
fn read_head(c: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = got.split_off(i + 4);
            return (String::from_utf8(got).unwrap(), body);
        }
    }
}

#[test]
fn a_file_renamed_over_mid_download_still_sends_the_old_bytes() {
    let len = 48 << 20;
    let l = lab(len);
    let s = start(&l, HttpLimits::default());
    let old = pattern(len, 7);
    let path = l.root.join("images/lab/vmlinuz");
    let mut c = TcpStream::connect(s.http).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(c, "GET {KERNEL} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (head, mut body) = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The socket buffers hold a few MB: most of the file is still to be sent.
    let new = pattern(len, 99);
    let tmp = path.with_file_name("vmlinuz.new");
    std::fs::write(&tmp, &new).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let mut rest = vec![0u8; len - body.len()];
    c.read_exact(&mut rest).unwrap();
    body.extend_from_slice(&rest);
    assert!(body == old, "the download mixed the old and the new file");
    // The next request sees the new file under a new ETag.
    let r = common::get(&s.url(KERNEL), &[]);
    assert!(r.body == new);
    let tag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .to_string();
    assert_ne!(r.header("etag"), Some(tag.as_str()));

    // Truncated in place mid-download: the connection is cut short, never padded or hung.
    let mut c = TcpStream::connect(s.http).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(c, "GET {KERNEL} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (head, mut body) = read_head(&mut c);
    assert!(head.contains(&format!("content-length: {len}")), "{head}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let t = Instant::now();
    let _ = c.read_to_end(&mut body);
    assert!(body.len() < len, "{} bytes", body.len());
    assert!(t.elapsed() < Duration::from_secs(10));
    // Up to the new end: the file's bytes. Past it, bytes that were already queued in the socket
    // (sendfile queues page-cache pages, not copies) are the file's or the zeros the truncation
    // left; the connection is cut either way, short of the length it announced.
    let cut = 1 << 20;
    assert!(body.len() >= cut.min(body.len()));
    assert!(body[..cut.min(body.len())] == new[..cut.min(body.len())]);
    assert!(
        body.iter()
            .zip(&new)
            .skip(cut)
            .all(|(a, b)| a == b || *a == 0),
        "past the truncation: neither the file's bytes nor zeros"
    );
}

#[test]
fn two_hundred_concurrent_curl_clients_get_byte_exact_bodies() {
    let len = 512 * 1024 + 77;
    let l = lab(len);
    let s = start(&l, HttpLimits::default());
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(len, 7);
    let initrd = pattern(len / 2 + 3, 11);
    let t = Instant::now();
    let children: Vec<_> = (0..200)
        .map(|i| {
            let mut c = curl();
            c.current_dir(tmp.path())
                .stdout(Stdio::null())
                .arg("-f")
                .arg("-o")
                .arg(format!("k{i}"))
                .arg(s.url(KERNEL))
                .args(["--next", "-sS", "-f", "--max-time", "30"]);
            if i % 2 == 1 {
                c.args(["-r", "100-"]);
            }
            c.arg("-o")
                .arg(format!("i{i}"))
                .arg(s.url("/assets/lab-1.0/pxe-initrd.img"));
            c.spawn().unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    for i in 0..200 {
        let k = std::fs::read(tmp.path().join(format!("k{i}"))).unwrap();
        let r = std::fs::read(tmp.path().join(format!("i{i}"))).unwrap();
        assert!(k == data, "client {i}: kernel differs");
        let want = if i % 2 == 1 {
            &initrd[100..]
        } else {
            &initrd[..]
        };
        assert!(r == want, "client {i}: initrd differs");
    }
}
