//! Integration test (no QEMU): `cairn build` when the mirror cannot be
//! reached. The small test image's output folder (from the cache of built
//! test images) is copied as the previous output; a rebuild with other
//! settings from the same lock, with a package cache that holds one of the
//! packages, and with `--mirror` pointing at a loopback port nobody listens
//! on, fails after its retries, says how many tries were made and of which
//! package, and leaves the previous output and the cache as they were.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use cairn_builder::fetch::{Cache, Retry};
use cairn_builder::lock::Lock;
use cairn_builder::pipeline::build;

mod common;
use common::{cached_build, images_copy, opts, test_cache};

/// Every file below `dir`: size, mtime and (for small files) contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                let data = if m.len() < 1 << 20 {
                    std::fs::read(e.path()).unwrap()
                } else {
                    Vec::new()
                };
                out.insert(e.path(), (m.len(), m.modified().unwrap(), data));
            }
        }
    }
    out
}

#[test]
fn an_unreachable_mirror_fails_after_the_retries_and_changes_nothing() {
    let imgs = images_copy();
    let def = imgs.path().join("images/test.yaml");
    // resolves the lock next to `def`; the output folder of that lock
    let built = cached_build(&def, "test", None);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let st = Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(&built)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());

    // a package cache holding one package of the lock
    let lock = Lock::read(&def.with_extension("lock")).unwrap();
    let kept = &lock.packages[0];
    let shared = Cache::open(&test_cache()).unwrap();
    let cache_dir = work.path().join("cache");
    let cache = Cache::open(&cache_dir).unwrap();
    let blob = shared
        .get_verified(&kept.sha256, &kept.name)
        .unwrap()
        .expect("the test image's packages are in the shared cache");
    cache
        .put(&kept.sha256, &std::fs::read(blob).unwrap())
        .unwrap();

    let before_out = snapshot(&out);
    let before_cache = snapshot(&cache_dir);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mirror = format!("http://{}/debian", closed.local_addr().unwrap());
    drop(closed);
    let mut o = opts(&def, &out, false);
    o.mirror = Some(mirror.clone());
    o.cache = Some(cache_dir.clone());
    o.zstd_level = 4; // another output than the one in `out`, so it is not current
    o.retry = Retry {
        tries: 3,
        first_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(100),
    };
    let e = build(&o).expect_err("a build without its mirror");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("gave up after 3 tries") && msg.contains(&mirror),
        "{msg}"
    );
    assert!(msg.contains("fetching packages"), "{msg}");

    assert_eq!(
        snapshot(&out),
        before_out,
        "the previous output was changed"
    );
    let after_cache = snapshot(&cache_dir);
    assert_eq!(after_cache, before_cache, "the cache was changed");
    assert!(cache
        .get_verified(&kept.sha256, &kept.name)
        .unwrap()
        .is_some());
}
