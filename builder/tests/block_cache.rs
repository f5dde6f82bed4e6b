//! Integration test: the squashfs block cache gives the same image as a
//! clean build. Real packages of `images/default.lock` (from the shared
//! package cache, fetched from this machine's mirror when missing) are
//! unpacked into trees the way `cairn build` does (bodies spilled to a
//! scratch file); an image made after a build where one package was
//! different (so only that package's blocks are new) and one made from a
//! cache with damaged entries must both be byte for byte the clean one.

use std::path::{Path, PathBuf};

use cairn_builder::blockcache::BlockCache;
use cairn_builder::fetch::{self, Cache, Download};
use cairn_builder::lock::Lock;
use cairn_builder::squashfs::{self, Options};
use cairn_builder::tree::Tree;
use indicatif::{MultiProgress, ProgressDrawTarget};
use sha2::{Digest, Sha256};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn package_cache() -> PathBuf {
    std::env::var_os("CAIRN_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(fetch::default_cache_dir)
}

fn hidden() -> MultiProgress {
    MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
}

/// The locked packages named `names`, as a lock of their own.
fn subset(lock: &Lock, names: &[&str]) -> Lock {
    let mut l = lock.clone();
    l.packages.retain(|p| names.contains(&p.name.as_str()));
    assert_eq!(l.packages.len(), names.len(), "{names:?} in the lock");
    l
}

/// The `.deb` files of `lock`, from the package cache or the mirror.
fn debs(lock: &Lock, cache: &Cache) -> Vec<PathBuf> {
    let loaded = cairn_builder::definition::load(&repo_root().join("images/default.yaml")).unwrap();
    let mirrors = cairn_builder::repo::choose_mirrors(None, &loaded.def, Path::new("/")).unwrap();
    let downloads: Vec<Download> = lock
        .packages
        .iter()
        .map(|p| Download {
            url: format!("{}/{}", mirrors.base_of(&p.archive).unwrap(), p.filename),
            sha256: p.sha256.clone(),
            size: p.size,
            label: p.name.clone(),
        })
        .collect();
    fetch::fetch_all(cache, &downloads, 4, Default::default(), &hidden()).unwrap()
}

fn tree_of(lock: &Lock, cache: &Cache, scratch: &Path) -> Tree {
    let debs = debs(lock, cache);
    let (tree, _) = cairn_builder::pipeline::assemble(lock, &debs, scratch, &hidden()).unwrap();
    tree
}

fn sha256_of(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

const COMMON: &[&str] = &[
    "libc6",
    "bash",
    "coreutils",
    "systemd",
    "etcd-server",
    "openssh-server",
];

#[test]
fn incremental_and_damaged_cache_builds_equal_the_clean_build() {
    let lock = Lock::read(&repo_root().join("images/default.lock")).unwrap();
    let cache = Cache::open(&package_cache()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let scratch = work.path().join("tmp");
    let opts = Options {
        mtime: 1_700_000_000,
        zstd_level: 3,
        ..Default::default()
    };
    let mut with_sudo: Vec<&str> = COMMON.to_vec();
    with_sudo.push("sudo");
    let mut with_less: Vec<&str> = COMMON.to_vec();
    with_less.push("less");
    let tree = tree_of(&subset(&lock, &with_sudo), &cache, &scratch);
    assert!(
        tree.iter().any(|(_, e)| matches!(&e.node,
            cairn_builder::tree::Node::File(b) if b.is_spilled())),
        "large bodies are in the scratch file"
    );

    // clean: no cache at all
    let clean = work.path().join("clean.squashfs");
    let r = squashfs::write(&tree, &clean, opts).unwrap();
    assert!(r.compressed > 100, "{r:?}");
    let want = sha256_of(&clean);

    // the previous build had `less` where this one has `sudo`
    let blocks = work.path().join("blocks");
    let bc = BlockCache::open(&blocks, opts.settings()).unwrap();
    let before = tree_of(&subset(&lock, &with_less), &cache, &scratch);
    let prev = squashfs::write_cached(&before, &work.path().join("prev"), opts, &bc).unwrap();
    drop(before);
    let incr = work.path().join("incremental.squashfs");
    let r = squashfs::write_cached(&tree, &incr, opts, &bc).unwrap();
    assert_eq!(sha256_of(&incr), want, "incremental build differs: {r:?}");
    // only what changed was compressed: sudo's blocks and the fragment
    // blocks after the first changed path
    assert!(r.compressed > 0, "{r:?}");
    assert!(
        r.compressed * 4 < r.blocks,
        "{r:?} after a build of {prev:?}"
    );
    assert_eq!(r.cache.corrupt, 0);

    // a warm cache: nothing to compress
    let r = squashfs::write_cached(&tree, &incr, opts, &bc).unwrap();
    assert_eq!(sha256_of(&incr), want);
    assert_eq!(r.compressed, 0, "{r:?}");

    // damage one entry in three (a flipped bit); the image is still right
    let dir = blocks.join(opts.settings().dir_name());
    let mut damaged = 0;
    for (i, f) in walk(&dir).into_iter().enumerate() {
        if i % 3 == 0 {
            let mut raw = std::fs::read(&f).unwrap();
            let n = raw.len();
            raw[n - 1 - (i % (n - 40))] ^= 0x04;
            std::fs::write(&f, raw).unwrap();
            damaged += 1;
        }
    }
    let r = squashfs::write_cached(&tree, &incr, opts, &bc).unwrap();
    assert_eq!(sha256_of(&incr), want, "{r:?}");
    assert!(r.cache.corrupt > 0, "{r:?}");
    assert!(r.cache.corrupt <= damaged, "{r:?} of {damaged}");
    assert!(r.compressed >= r.cache.corrupt, "{r:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}
