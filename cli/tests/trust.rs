//! Integration tests of the chain of trust against the real archive: a
//! loopback "mirror" serves the real, signed `InRelease` of the suite next
//! to a tampered `Packages` index, or a tampered `InRelease`; each must be
//! refused with a clear message and nothing kept in the cache. A tampered
//! `.deb` in the cache is refused by a real build.

use std::path::{Path, PathBuf};

use cairn_builder::fetch::Cache;
use cairn_builder::repo::{self, Archive, Mirrors};
use cairn_debian::sources;
use cairn_testkit::StaticHttp;

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

/// Serves `files` (path below `/debian/` -> body) on loopback; everything
/// else is 404. Returns the base URL and the server (its request log).
fn serve(files: Vec<(String, Vec<u8>)>) -> (String, StaticHttp) {
    let srv = StaticHttp::start(files.into_iter().map(|(p, b)| (format!("/debian/{p}"), b)));
    (format!("{}/debian", srv.url()), srv)
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
    assert!(log.requests().iter().any(|p| p.ends_with("InRelease")));
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
