//! A persistent, content-addressed cache of compressed squashfs blocks, so
//! that a rebuild compresses only the blocks it has not compressed before
//! (after one package changed: that package's blocks).
//!
//! Layout: `CACHE/blocks/SETTINGS/xx/KEY`, where `SETTINGS` names the
//! compression settings (`zstd-15-131072`: algorithm, level, block size)
//! and `KEY` is the SHA-256 of the uncompressed block. An entry is
//! `CAIRNBK1`, the key, then the compressed bytes. [`BlockCache::get`]
//! decompresses the entry and checks that the result hashes to the key; an
//! entry that fails (bit rot, truncation, another block's bytes) is deleted
//! and reported as missing, so the caller compresses the block again: a
//! damaged cache costs time, never a wrong image. Having checked an entry
//! once, a build reads it again with [`BlockCache::get_exact`], which only
//! compares the compressed bytes' SHA-256 with the one noted at the check.
//! Entries are written to a temporary name and renamed into place, so a
//! concurrent build sees a whole entry or none.
//!
//! Bounded: a hit refreshes the entry's mtime, and [`prune`] deletes the
//! least recently used entries (oldest mtime first) until the cache is
//! under its cap ([`cap_from_env`]: `CAIRN_BLOCK_CACHE_MAX`, default
//! [`DEFAULT_CAP`]). Deleting `CACHE/blocks` by hand is always safe.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"CAIRNBK1";
const HEADER: usize = MAGIC.len() + 32;

/// The cap when `CAIRN_BLOCK_CACHE_MAX` is not set: room for the blocks of
/// several images of the default's size (221 MiB of blocks each).
pub const DEFAULT_CAP: u64 = 2 << 30;

/// The environment variable that sets the cap (`4G`, `512M`, bytes; `0`
/// keeps nothing between builds).
pub const CAP_ENV: &str = "CAIRN_BLOCK_CACHE_MAX";

/// The compression settings a compressed block depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub algorithm: &'static str,
    pub level: i32,
    pub block_size: u32,
}

impl Settings {
    /// The name of the directory holding blocks made with these settings.
    pub fn dir_name(&self) -> String {
        format!("{}-{}-{}", self.algorithm, self.level, self.block_size)
    }
}

/// The SHA-256 of an uncompressed block.
pub type Key = [u8; 32];

pub fn key_of(block: &[u8]) -> Key {
    Sha256::digest(block).into()
}

/// Counters of one build's use of the cache.
#[derive(Debug, Default)]
pub struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stored: AtomicU64,
    pub corrupt: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries read and verified.
    pub hits: u64,
    /// Lookups that found nothing (or a damaged entry).
    pub misses: u64,
    /// Entries written.
    pub stored: u64,
    /// Entries that failed verification (deleted).
    pub corrupt: u64,
}

#[derive(Debug)]
enum Root {
    Persistent(PathBuf),
    /// A temporary directory removed when the last handle goes.
    Scratch(tempfile::TempDir),
}

/// A handle on the block cache for one set of compression settings.
/// Cloning shares the counters.
#[derive(Debug, Clone)]
pub struct BlockCache {
    root: Arc<Root>,
    dir: PathBuf,
    settings: Settings,
    counters: Arc<Counters>,
}

impl BlockCache {
    /// The cache under `root` (normally `CACHE/blocks`), created if missing.
    pub fn open(root: &Path, settings: Settings) -> io::Result<BlockCache> {
        let dir = root.join(settings.dir_name());
        std::fs::create_dir_all(&dir)?;
        Ok(BlockCache {
            root: Arc::new(Root::Persistent(root.to_path_buf())),
            dir,
            settings,
            counters: Arc::default(),
        })
    }

    /// A cache that lives only as long as its handles (for a build without
    /// a package cache, and for tests): blocks still go to disk, not memory.
    pub fn scratch(settings: Settings) -> io::Result<BlockCache> {
        let t = tempfile::Builder::new().prefix("cairn-blocks-").tempdir()?;
        let dir = t.path().join(settings.dir_name());
        std::fs::create_dir_all(&dir)?;
        Ok(BlockCache {
            root: Arc::new(Root::Scratch(t)),
            dir,
            settings,
            counters: Arc::default(),
        })
    }

    /// The directory under which all settings' blocks live.
    pub fn root(&self) -> &Path {
        match &*self.root {
            Root::Persistent(p) => p,
            Root::Scratch(t) => t.path(),
        }
    }

    /// Where the entry for `key` lives.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    pub fn path_of(&self, key: &Key) -> PathBuf {
        let h = hex::encode(key);
        self.dir.join(&h[..2]).join(h)
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stored: c.stored.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
        }
    }

    fn read_entry(&self, key: &Key) -> Option<(PathBuf, Vec<u8>)> {
        let path = self.path_of(key);
        let read = || -> io::Result<Vec<u8>> {
            let mut f = File::open(&path)?;
            let mut raw = Vec::with_capacity(f.metadata().map_or(0, |m| m.len() as usize));
            f.read_to_end(&mut raw)?;
            // the least-recently-used order of pruning; failing to note a
            // use is harmless
            let _ = f.set_modified(SystemTime::now());
            Ok(raw)
        };
        match read() {
            Ok(raw) => Some((path, raw)),
            Err(_) => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn damaged(&self, path: &Path) {
        tracing::warn!(entry = %path.display(), "damaged block cache entry: deleted, compressing the block again");
        let _ = std::fs::remove_file(path);
        self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// The compressed block for `key`, verified by decompressing it and
    /// hashing the result; `None` when absent or damaged (a damaged entry
    /// is deleted).
    pub fn get(&self, key: &Key) -> Option<Vec<u8>> {
        let (path, mut raw) = self.read_entry(key)?;
        let ok = raw.len() >= HEADER
            && &raw[..MAGIC.len()] == MAGIC
            && raw[MAGIC.len()..HEADER] == key[..]
            && zstd::bulk::decompress(&raw[HEADER..], self.settings.block_size as usize)
                .is_ok_and(|d| key_of(&d) == *key);
        if !ok {
            self.damaged(&path);
            return None;
        }
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        raw.drain(..HEADER);
        Some(raw)
    }

    /// The compressed block for `key` if its SHA-256 is `compressed_sha256`
    /// (noted when [`BlockCache::get`] or [`BlockCache::put`] checked or
    /// made it); `None` otherwise.
    pub fn get_exact(&self, key: &Key, compressed_sha256: &[u8; 32]) -> Option<Vec<u8>> {
        let (path, mut raw) = self.read_entry(key)?;
        if raw.len() < HEADER || Sha256::digest(&raw[HEADER..])[..] != compressed_sha256[..] {
            self.damaged(&path);
            return None;
        }
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        raw.drain(..HEADER);
        Some(raw)
    }

    /// Store `compressed` as the entry for `key` (atomically: a temporary
    /// file renamed into place).
    pub fn put(&self, key: &Key, compressed: &[u8]) -> io::Result<()> {
        let path = self.path_of(key);
        let dir = path.parent().expect("entries live in a fan-out directory");
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
        tmp.write_all(MAGIC)?;
        tmp.write_all(key)?;
        tmp.write_all(compressed)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        self.counters.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The cap from `CAIRN_BLOCK_CACHE_MAX` (`2G`, `512M`, `64K` or bytes),
/// else [`DEFAULT_CAP`].
pub fn cap_from_env() -> u64 {
    std::env::var(CAP_ENV)
        .ok()
        .and_then(|v| parse_size(&v))
        .unwrap_or(DEFAULT_CAP)
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// What [`prune`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Entries and bytes kept.
    pub entries: u64,
    pub bytes: u64,
    /// Entries and bytes deleted.
    pub removed: u64,
    pub removed_bytes: u64,
}

/// Delete the least recently used entries under `root` (every settings
/// directory) until at most `cap` bytes remain; temporary files older than
/// an hour (a build that died mid-write) go too.
pub fn prune(root: &Path, cap: u64) -> io::Result<PruneReport> {
    let mut entries: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    let stale = SystemTime::now() - Duration::from_secs(3600);
    let Ok(settings) = std::fs::read_dir(root) else {
        return Ok(PruneReport::default());
    };
    for s in settings.flatten() {
        let Ok(fans) = std::fs::read_dir(s.path()) else {
            continue;
        };
        for fan in fans.flatten() {
            let Ok(files) = std::fs::read_dir(fan.path()) else {
                continue;
            };
            for f in files.flatten() {
                let Ok(m) = f.metadata() else { continue };
                let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                if f.file_name().to_string_lossy().starts_with(".tmp-") {
                    if mtime < stale {
                        let _ = std::fs::remove_file(f.path());
                    }
                    continue;
                }
                entries.push((mtime, m.len(), f.path()));
            }
        }
    }
    let mut report = PruneReport {
        entries: entries.len() as u64,
        bytes: entries.iter().map(|e| e.1).sum(),
        ..Default::default()
    };
    if report.bytes <= cap {
        return Ok(report);
    }
    entries.sort();
    for (_, len, path) in entries {
        if report.bytes <= cap {
            break;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        report.bytes -= len;
        report.entries -= 1;
        report.removed += 1;
        report.removed_bytes += len;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Settings = Settings {
        algorithm: "zstd",
        level: 3,
        block_size: 4096,
    };

    fn z(b: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(b, 3).unwrap()
    }

    #[test]
    fn put_get_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let c = BlockCache::open(dir.path(), S).unwrap();
        let block = b"block block block block".repeat(20);
        let k = key_of(&block);
        assert_eq!(c.get(&k), None);
        c.put(&k, &z(&block)).unwrap();
        assert_eq!(c.get(&k), Some(z(&block)));
        let sha: [u8; 32] = Sha256::digest(z(&block)).into();
        assert_eq!(c.get_exact(&k, &sha), Some(z(&block)));
        assert!(c.path_of(&k).starts_with(dir.path().join("zstd-3-4096")));
        // flip one byte of the compressed part: detected, deleted
        let p = c.path_of(&k);
        let mut raw = std::fs::read(&p).unwrap();
        let n = raw.len();
        raw[n - 3] ^= 1;
        std::fs::write(&p, &raw).unwrap();
        assert_eq!(c.get(&k), None);
        assert!(!p.exists());
        // a truncated entry too
        c.put(&k, &z(&block)).unwrap();
        std::fs::write(&p, &b"CAIRNBK1"[..]).unwrap();
        assert_eq!(c.get(&k), None);
        // another block's valid entry under this key, header rewritten
        let other = b"other".repeat(50);
        c.put(&k, &z(&other)).unwrap();
        assert_eq!(c.get(&k), None);
        // get_exact compares with what was checked before
        c.put(&k, &z(&other)).unwrap();
        assert_eq!(c.get_exact(&k, &sha), None);
        assert_eq!(
            c.stats(),
            Stats {
                hits: 2,
                misses: 5,
                stored: 4,
                corrupt: 4
            }
        );
    }

    #[test]
    fn prune_drops_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let c = BlockCache::open(dir.path(), S).unwrap();
        let blocks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 100]).collect();
        let keys: Vec<Key> = blocks.iter().map(|b| key_of(b)).collect();
        for (i, k) in keys.iter().enumerate() {
            c.put(k, &z(&blocks[i])).unwrap();
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
            File::options()
                .write(true)
                .open(c.path_of(k))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        // using the oldest makes it the newest
        assert!(c.get(&keys[0]).is_some());
        let entry = (HEADER + z(&blocks[0]).len()) as u64;
        let r = prune(dir.path(), 2 * entry).unwrap();
        assert_eq!((r.removed, r.entries, r.bytes), (2, 2, 2 * entry));
        assert!(c.path_of(&keys[0]).exists());
        assert!(!c.path_of(&keys[1]).exists());
        assert!(!c.path_of(&keys[2]).exists());
        assert!(c.path_of(&keys[3]).exists());
        assert_eq!(prune(dir.path(), 0).unwrap().entries, 0);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("x"), None);
    }
}
