//! Writing the root tree as a squashfs image (zstd) with the `backhand`
//! crate: every entry in path order, timestamps clamped to
//! SOURCE_DATE_EPOCH, so the same tree always gives the same bytes.
//!
//! Owns only the translation from [`Tree`] to squashfs; the tree's content
//! is decided before it gets here.
//!
//! backhand compresses one block after another. To use every core, the
//! blocks backhand will ask for are compressed by worker threads, one per
//! core, in the order backhand asks for them: every data block of every
//! file (the last, short one too) and the fragment blocks, which are
//! predicted by packing the small files in backhand's order. Compressed
//! blocks go to a [`BlockCache`] on disk (persistent in the package cache,
//! so a rebuild compresses only new blocks; or a scratch one), never into
//! memory. backhand runs at the same time on the caller's thread: its
//! [`CompressionAction`] callback waits until the block it asks for is
//! ready, looks it up in the cache by its SHA-256, and compresses whatever
//! the workers will not bring (metadata, a mispredicted fragment, an entry
//! damaged meanwhile) itself. So backhand's own serial work (reading the
//! files, writing the image) runs beside the compression, not after it.
//! The bytes are the same as backhand's own zstd path would give
//! (same library, same level), whichever way a block was compressed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use backhand::compression::{CompressionAction, Compressor, DefaultCompressor};
use backhand::kind::Kind;
use backhand::{BackhandError, FilesystemCompressor, FilesystemWriter, NodeHeader};
use sha2::{Digest, Sha256};

use crate::blob::Blob;
use crate::blockcache::{key_of, BlockCache, Key, Settings, Stats};
use crate::tree::{Node, Tree};

/// One block backhand will compress: a stretch of one file, or a fragment
/// block made of whole small files.
enum Work {
    Extent { blob: Blob, offset: u64, len: usize },
    Fragment(Vec<Blob>),
}

impl Work {
    fn read(&self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.clear();
        match self {
            Work::Extent { blob, offset, len } => {
                buf.resize(*len, 0);
                blob.read_exact_at(buf, *offset)
            }
            Work::Fragment(parts) => {
                for b in parts {
                    let start = buf.len();
                    buf.resize(start + b.len() as usize, 0);
                    b.read_exact_at(&mut buf[start..], 0)?;
                }
                Ok(())
            }
        }
    }
}

/// The blocks backhand will ask to compress for `tree`, in its order:
/// files by path (backhand orders `Path`s component by component), each
/// file of a block or more as its blocks, smaller files packed into
/// fragment blocks exactly as backhand's data writer packs them. A file
/// body shared by several paths is listed once. All-zero blocks are left
/// out (backhand stores them as holes).
fn plan(tree: &Tree, block_size: usize) -> Vec<Work> {
    let mut files: Vec<(PathBuf, &Blob)> = tree
        .iter()
        .filter_map(|(p, e)| match &e.node {
            Node::File(b) => Some((PathBuf::from(format!("/{p}")), b)),
            _ => None,
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut work = Vec::new();
    let mut seen = HashSet::new();
    let mut frag: Vec<Blob> = Vec::new();
    let mut frag_len = 0usize;
    for (_, b) in files {
        let len = b.len() as usize;
        if len == 0 {
            continue;
        }
        if len < block_size {
            if len + frag_len > block_size {
                work.push(Work::Fragment(std::mem::take(&mut frag)));
                frag_len = 0;
            }
            frag.push(b.clone());
            frag_len += len;
            continue;
        }
        if !seen.insert(b.id()) {
            continue;
        }
        let mut offset = 0;
        while offset < len {
            let n = block_size.min(len - offset);
            work.push(Work::Extent {
                blob: b.clone(),
                offset: offset as u64,
                len: n,
            });
            offset += n;
        }
    }
    if !frag.is_empty() {
        work.push(Work::Fragment(frag));
    }
    work
}

fn zstd_compress(c: &mut zstd::bulk::Compressor<'_>, b: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(b.len()));
    c.compress_to_buffer(b, &mut out)?;
    Ok(out)
}

/// What one image's blocks cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Size of the image in bytes.
    pub size: u64,
    /// Blocks prepared ahead (data and predicted fragments).
    pub blocks: u64,
    /// Of those, compressed now (the rest came from the cache).
    pub compressed: u64,
    /// Blocks backhand asked for that were not prepared (metadata, a
    /// mispredicted fragment, an entry damaged or pruned meanwhile):
    /// compressed in backhand's thread.
    pub serial: u64,
    /// The block cache's own counters.
    pub cache: Stats,
}

/// What the compression workers have done so far, shared with backhand's
/// thread.
#[derive(Default)]
struct Progress {
    /// Each prepared block's key and the SHA-256 of its compressed bytes.
    keys: HashMap<Key, [u8; 32]>,
    /// Every worker has stopped: a key not in `keys` will not come.
    done: bool,
    /// Blocks compressed now (the rest came from the cache).
    compressed: u64,
    /// The first error a worker met.
    error: Option<std::io::Error>,
}

struct Prepared {
    cache: BlockCache,
    level: i32,
    progress: Mutex<Progress>,
    /// Signalled when a block is ready and when the workers are done.
    ready: Condvar,
}

impl Prepared {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the block `key` is prepared (`Some`: the SHA-256 of its
    /// compressed bytes) or the workers are done without it (`None`); an
    /// error when a worker failed (the caller reports that worker's error).
    fn wait_for(&self, key: &Key) -> std::io::Result<Option<[u8; 32]>> {
        let mut p = self.progress();
        loop {
            if let Some(sha) = p.keys.get(key) {
                return Ok(Some(*sha));
            }
            if p.error.is_some() {
                return Err(std::io::Error::other("a compression worker failed"));
            }
            if p.done {
                return Ok(None);
            }
            p = self.ready.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Marks the workers done when the last one stops, however it stops (an
/// error, a panic), so that backhand's thread never waits for a block that
/// will not come.
struct Worker<'a> {
    prepared: &'a Prepared,
    live: &'a AtomicUsize,
}

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.prepared.progress().done = true;
            self.prepared.ready.notify_all();
        }
    }
}

/// zstd whose blocks are compressed by worker threads, one per core, in
/// the order backhand will ask for them, into a block cache; backhand's
/// thread waits for each block it asks for (so its own serial work, reading
/// and writing the image, runs beside the compression instead of after it).
struct CachedZstd {
    prepared: RwLock<Option<Arc<Prepared>>>,
    serial: AtomicU64,
}

impl CachedZstd {
    /// One worker: takes the next block of `work` until there is none (or
    /// `stop` is set), makes sure it is in the cache and publishes its key.
    fn work(work: &[Work], next: &AtomicUsize, stop: &AtomicBool, prepared: &Prepared) {
        let mut zstd = zstd::bulk::Compressor::new(prepared.level);
        let mut buf = Vec::new();
        let mut one = |w: &Work| -> std::io::Result<Option<(Key, [u8; 32], bool)>> {
            w.read(&mut buf)?;
            if buf.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            let key = key_of(&buf);
            let (z, new) = match prepared.cache.get(&key) {
                Some(z) => (z, false),
                None => {
                    let c = zstd
                        .as_mut()
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    let z = zstd_compress(c, &buf)?;
                    prepared.cache.put(&key, &z)?;
                    (z, true)
                }
            };
            Ok(Some((key, Sha256::digest(&z).into(), new)))
        };
        while !stop.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(w) = work.get(i) else { break };
            match one(w) {
                Ok(Some((key, sha, new))) => {
                    let mut p = prepared.progress();
                    p.keys.insert(key, sha);
                    p.compressed += u64::from(new);
                    drop(p);
                    prepared.ready.notify_all();
                }
                Ok(None) => {}
                Err(e) => {
                    prepared.progress().error.get_or_insert(e);
                    stop.store(true, Ordering::Relaxed);
                    prepared.ready.notify_all();
                }
            }
        }
    }
}

impl CompressionAction for CachedZstd {
    type Error = BackhandError;
    type Compressor = Compressor;
    type FilesystemCompressor = FilesystemCompressor;
    type SuperBlock = backhand::SuperBlock;

    fn decompress(
        &self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        c: Compressor,
    ) -> Result<(), BackhandError> {
        DefaultCompressor.decompress(bytes, out, c)
    }

    fn compress(
        &self,
        bytes: &[u8],
        fc: FilesystemCompressor,
        block_size: u32,
    ) -> Result<Vec<u8>, BackhandError> {
        let prepared = self.prepared.read().expect("no poisoning").clone();
        if let Some(p) = prepared {
            let key = key_of(bytes);
            if let Some(sha) = p.wait_for(&key)? {
                if let Some(c) = p.cache.get_exact(&key, &sha) {
                    return Ok(c);
                }
            }
            self.serial.fetch_add(1, Ordering::Relaxed);
            let mut c = zstd::bulk::Compressor::new(p.level)?;
            return Ok(zstd_compress(&mut c, bytes)?);
        }
        DefaultCompressor.compress(bytes, fc, block_size)
    }

    fn compression_options(
        &self,
        superblock: &mut backhand::SuperBlock,
        kind: &Kind,
        fc: FilesystemCompressor,
    ) -> Result<Option<Vec<u8>>, BackhandError> {
        DefaultCompressor.compression_options(superblock, kind, fc)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    #[error("adding /{path} to the squashfs image: {source}")]
    Add {
        path: String,
        source: backhand::BackhandError,
    },
    #[error("writing squashfs image {path}: {source}")]
    Write {
        path: String,
        source: backhand::BackhandError,
    },
    #[error("creating {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
}

/// Options for [`write`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Every inode's mtime and the superblock's time.
    pub mtime: u32,
    /// zstd level (mksquashfs's default for zstd is 15).
    pub zstd_level: u32,
    /// Data block size (128 KiB is mksquashfs's default).
    pub block_size: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mtime: 0,
            zstd_level: 15,
            block_size: 128 * 1024,
        }
    }
}

impl Options {
    /// The settings that compressed blocks depend on (the block cache's key).
    pub fn settings(&self) -> Settings {
        Settings {
            algorithm: "zstd",
            level: self.zstd_level as i32,
            block_size: self.block_size,
        }
    }
}

/// Write `tree` to `out` as a squashfs 4.0 image, with a scratch block
/// cache that is gone afterwards.
pub fn write(tree: &Tree, out: &Path, opts: Options) -> Result<Report, SquashfsError> {
    let cache = BlockCache::scratch(opts.settings()).map_err(|source| SquashfsError::Create {
        path: out.display().to_string(),
        source,
    })?;
    write_cached(tree, out, opts, &cache)
}

/// Write `tree` to `out` with the persistent block cache under
/// `blocks_dir` (`CACHE/blocks`), then prune that cache to its cap
/// ([`crate::blockcache::cap_from_env`]).
pub fn write_in_cache(
    tree: &Tree,
    out: &Path,
    opts: Options,
    blocks_dir: &Path,
) -> Result<Report, SquashfsError> {
    let err = |source| SquashfsError::Create {
        path: blocks_dir.display().to_string(),
        source,
    };
    let cache = BlockCache::open(blocks_dir, opts.settings()).map_err(err)?;
    let t0 = std::time::Instant::now();
    let r = write_cached(tree, out, opts, &cache)?;
    tracing::info!(
        blocks = r.blocks,
        compressed = r.compressed,
        reused = r.blocks - r.compressed,
        serial = r.serial,
        damaged = r.cache.corrupt,
        seconds = t0.elapsed().as_secs_f64(),
        "squashfs blocks"
    );
    let cap = crate::blockcache::cap_from_env();
    match crate::blockcache::prune(blocks_dir, cap) {
        Ok(p) if p.removed > 0 => tracing::info!(
            removed = p.removed,
            removed_bytes = p.removed_bytes,
            kept_bytes = p.bytes,
            cap,
            "pruned the block cache"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(dir = %blocks_dir.display(), "pruning the block cache: {e}"),
    }
    Ok(r)
}

/// Write `tree` to `out` as a squashfs 4.0 image, taking the blocks
/// `cache` already holds and adding the others. `cache` must have been
/// opened with `opts.settings()`.
pub fn write_cached(
    tree: &Tree,
    out: &Path,
    opts: Options,
    cache: &BlockCache,
) -> Result<Report, SquashfsError> {
    let err = |source| SquashfsError::Create {
        path: out.display().to_string(),
        source,
    };
    let before = cache.stats();
    let work = plan(tree, opts.block_size as usize);
    let prepared = Arc::new(Prepared {
        cache: cache.clone(),
        level: opts.zstd_level as i32,
        progress: Mutex::new(Progress::default()),
        ready: Condvar::new(),
    });
    // backhand wants a `&'static` compressor: one small struct per image is
    // leaked; what it holds is let go once the image is written.
    let comp: &'static CachedZstd = Box::leak(Box::new(CachedZstd {
        prepared: RwLock::new(Some(prepared.clone())),
        serial: Default::default(),
    }));
    let workers = rayon::current_num_threads().max(1);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let live = AtomicUsize::new(workers);
    let result = std::thread::scope(|s| {
        for _ in 0..workers {
            let worker = Worker {
                prepared: &prepared,
                live: &live,
            };
            let (work, next, stop) = (&work, &next, &stop);
            s.spawn(move || {
                let worker = worker; // the whole guard moves in, dropped when the worker ends
                CachedZstd::work(work, next, stop, worker.prepared);
            });
        }
        let r = write_with(tree, out, opts, comp);
        // backhand failed: the blocks left are not needed
        stop.store(true, Ordering::Relaxed);
        r
    });
    comp.prepared.write().expect("no poisoning").take();
    let progress = std::mem::take(&mut *prepared.progress());
    if let Some(e) = progress.error {
        return Err(err(e));
    }
    let size = result?;
    let after = cache.stats();
    Ok(Report {
        size,
        blocks: work.len() as u64,
        compressed: progress.compressed,
        serial: comp.serial.load(Ordering::Relaxed),
        cache: Stats {
            hits: after.hits - before.hits,
            misses: after.misses - before.misses,
            stored: after.stored - before.stored,
            corrupt: after.corrupt - before.corrupt,
        },
    })
}

fn write_with(
    tree: &Tree,
    out: &Path,
    opts: Options,
    comp: &'static CachedZstd,
) -> Result<u64, SquashfsError> {
    let mut fs = FilesystemWriter::default();
    fs.set_kind(Kind::new_v4(comp));
    fs.set_time(opts.mtime);
    fs.set_block_size(opts.block_size);
    fs.set_no_duplicate_files(true);
    let zopts = backhand::compression::CompressionOptions::Zstd(backhand::compression::Zstd {
        compression_level: opts.zstd_level,
    });
    fs.set_compressor(
        FilesystemCompressor::new(Compressor::Zstd, Some(zopts)).expect("zstd with zstd options"),
    );
    fs.set_emit_compression_options(true);
    if let Some(root) = tree.get("") {
        fs.set_root_mode(root.mode as u16);
        fs.set_root_uid(root.uid);
        fs.set_root_gid(root.gid);
    }
    for (path, e) in tree.iter() {
        if path.is_empty() {
            continue;
        }
        let h = NodeHeader::new(e.mode as u16, e.uid, e.gid, opts.mtime);
        let p = format!("/{path}");
        let res = match &e.node {
            Node::Dir => fs.push_dir(&p, h),
            Node::File(d) => fs.push_file(d.reader(), &p, h),
            Node::Symlink(t) => fs.push_symlink(t.as_str(), &p, h),
            Node::CharDevice(major, minor) => fs.push_char_device(
                (major << 8) | (minor & 0xff) | ((minor & !0xff) << 12),
                &p,
                h,
            ),
            Node::Fifo => fs.push_fifo(&p, h),
        };
        res.map_err(|source| SquashfsError::Add {
            path: path.clone(),
            source,
        })?;
    }
    let f = File::create(out).map_err(|source| SquashfsError::Create {
        path: out.display().to_string(),
        source,
    })?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let (_, size) = fs.write(&mut w).map_err(|source| SquashfsError::Write {
        path: out.display().to_string(),
        source,
    })?;
    // Deduplication seeks back over a duplicate's data, like mksquashfs, so
    // bytes past the end may be stale: cut the file at the image's end.
    let io = |source| SquashfsError::Create {
        path: out.display().to_string(),
        source,
    };
    let f = w.into_inner().map_err(|e| io(e.into_error()))?;
    f.set_len(size).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Entry;
    use backhand::{FilesystemReader, InnerNode};
    use std::io::{BufReader, Read};

    fn sample() -> Tree {
        let o: Arc<str> = Arc::from("t");
        let mut t = Tree::new_merged_usr();
        let mut su = Entry::file(b"#!/bin/sh\n".to_vec(), 0o4755, &o);
        su.uid = 0;
        t.insert("usr/bin/sudo", su).unwrap();
        let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let shared = Entry::file(big.clone(), 0o644, &o);
        t.insert("usr/share/big", shared.clone()).unwrap();
        t.insert("usr/share/big-link", shared).unwrap();
        let mut d = Entry::dir(0o700, &o);
        d.uid = 107;
        d.gid = 112;
        t.insert("var/lib/etcd", d).unwrap();
        t.insert(
            "etc/os-release",
            Entry::symlink("../usr/lib/os-release", &o),
        )
        .unwrap();
        t
    }

    #[test]
    fn round_trips_through_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("root.squashfs");
        let size = write(
            &sample(),
            &out,
            Options {
                mtime: 1234,
                zstd_level: 3,
                ..Default::default()
            },
        )
        .unwrap()
        .size;
        assert_eq!(size, std::fs::metadata(&out).unwrap().len());
        let r = BufReader::new(File::open(&out).unwrap());
        let fs = FilesystemReader::from_reader(r).unwrap();
        let mut seen = std::collections::BTreeMap::new();
        for node in fs.files() {
            let p = node.fullpath.display().to_string();
            let h = node.header;
            // backhand gives the root inode mtime 0 (still deterministic)
            if p != "/" {
                assert_eq!(h.mtime, 1234, "{p}");
            }
            let kind = match &node.inner {
                InnerNode::File(f) => {
                    let mut buf = Vec::new();
                    fs.file(f).reader().read_to_end(&mut buf).unwrap();
                    format!("file {}", buf.len())
                }
                InnerNode::Symlink(s) => format!("link {}", s.link.display()),
                InnerNode::Dir(_) => "dir".into(),
                _ => "other".into(),
            };
            seen.insert(p, (kind, h.permissions, h.uid, h.gid));
        }
        assert_eq!(seen["/usr/bin/sudo"], ("file 10".into(), 0o4755, 0, 0));
        assert_eq!(seen["/usr/share/big"].0, "file 1200000");
        assert_eq!(seen["/usr/share/big-link"].0, "file 1200000");
        assert_eq!(seen["/var/lib/etcd"], ("dir".into(), 0o700, 107, 112));
        assert_eq!(seen["/bin"].0, "link usr/bin");
        assert_eq!(seen["/etc/os-release"].0, "link ../usr/lib/os-release");
    }

    #[test]
    fn same_tree_same_bytes_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let o = Options {
            mtime: 1,
            zstd_level: 3,
            ..Default::default()
        };
        write(&sample(), &a, o).unwrap();
        write(&sample(), &b, o).unwrap();
        let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
        assert_eq!(a, b);
        // the 1.2 MB file is stored once (hard link / duplicate), compressed
        assert!(a.len() < 1_200_000, "{}", a.len());
    }

    /// A tree with what the planner must predict: many small files (several
    /// fragment blocks), files of one block and a bit (short last blocks),
    /// an all-zero block (a hole), bodies in the scratch file, hard links,
    /// and names whose string order differs from backhand's path order.
    fn varied(spill: &Arc<crate::blob::Spill>) -> Tree {
        let o: Arc<str> = Arc::from("t");
        let mut t = sample();
        let mut x = 7u32;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 24) as u8 % 16
                })
                .collect()
        };
        for i in 0..300 {
            let len = 200 + (i * 997) % 20_000;
            t.insert(
                &format!("usr/lib/small/f{i}"),
                Entry::file(noise(len), 0o644, &o),
            )
            .unwrap();
        }
        for name in ["usr/lib-x/a", "usr/lib/x", "usr/lib.d/y", "usr/libz"] {
            t.insert(name, Entry::file(noise(5000), 0o644, &o)).unwrap();
        }
        let big = noise(3 * 131_072 + 999);
        let blob =
            crate::blob::Blob::read_from(&mut &big[..], big.len() as u64, Some(spill)).unwrap();
        assert!(blob.is_spilled());
        let mut e = Entry::file(Vec::new(), 0o755, &o);
        e.node = Node::File(blob);
        t.insert("usr/bin/spilled", e.clone()).unwrap();
        t.insert("usr/bin/spilled-link", e).unwrap();
        let mut holey = vec![0u8; 131_072];
        holey.extend(noise(131_072 + 17));
        t.insert("var/holey", Entry::file(holey, 0o644, &o))
            .unwrap();
        t
    }

    fn plain(tree: &Tree, out: &Path, opts: Options) {
        let comp: &'static CachedZstd = Box::leak(Box::new(CachedZstd {
            prepared: RwLock::new(None),
            serial: Default::default(),
        }));
        write_with(tree, out, opts, comp).unwrap();
    }

    #[test]
    fn cached_blocks_give_backhands_own_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let spill = crate::blob::Spill::new_in(dir.path()).unwrap();
        let tree = varied(&spill);
        let o = Options {
            mtime: 1,
            zstd_level: 3,
            ..Default::default()
        };
        let reference = dir.path().join("plain");
        plain(&tree, &reference, o);
        let reference = std::fs::read(reference).unwrap();
        let cache = BlockCache::open(&dir.path().join("blocks"), o.settings()).unwrap();
        let out = dir.path().join("img");
        let cold = write_cached(&tree, &out, o, &cache).unwrap();
        assert!(std::fs::read(&out).unwrap() == reference, "cold cache");
        // every block compressed once (equal blocks share one entry)
        assert_eq!(cold.compressed, cold.cache.stored, "{cold:?}");
        assert!(cold.compressed + 2 >= cold.blocks, "{cold:?}");
        assert!(cold.blocks > 10, "{cold:?}");
        // the prediction was right: only metadata was left to backhand's thread
        assert!(cold.serial <= 4, "{cold:?}");
        let warm = write_cached(&tree, &out, o, &cache).unwrap();
        assert!(std::fs::read(&out).unwrap() == reference, "warm cache");
        assert_eq!(warm.compressed, 0, "{warm:?}");
        assert_eq!(warm.serial, cold.serial, "{warm:?}");
        assert_eq!(warm.cache.corrupt, 0);
    }

    /// A body that cannot be read (the scratch file cut short) fails the
    /// image with the read error: the workers stop, and backhand's thread,
    /// which may be waiting for one of their blocks, does not wait forever.
    #[test]
    fn a_worker_read_error_fails_the_image_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let spill = crate::blob::Spill::new_in(dir.path()).unwrap();
        let tree = varied(&spill);
        spill.truncate_for_test(1000);
        let o = Options {
            mtime: 1,
            zstd_level: 3,
            ..Default::default()
        };
        let cache = BlockCache::open(&dir.path().join("blocks"), o.settings()).unwrap();
        let out = dir.path().join("img");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = write_cached(&tree, &out, o, &cache).map(|r| r.size);
            tx.send(r.map_err(|e| e.to_string())).unwrap();
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("write_cached returned");
        let e = r.expect_err("an unreadable body is an error");
        assert!(e.contains("fill whole buffer"), "{e}");
    }

    #[test]
    fn damaged_cache_entries_are_detected_and_the_image_stays_right() {
        let dir = tempfile::tempdir().unwrap();
        let spill = crate::blob::Spill::new_in(dir.path()).unwrap();
        let tree = varied(&spill);
        let o = Options {
            mtime: 1,
            zstd_level: 3,
            ..Default::default()
        };
        let blocks = dir.path().join("blocks");
        let cache = BlockCache::open(&blocks, o.settings()).unwrap();
        let out = dir.path().join("img");
        write_cached(&tree, &out, o, &cache).unwrap();
        let reference = std::fs::read(&out).unwrap();
        // damage every entry a different way: a flipped bit, a truncation,
        // another block's valid-looking bytes under this key's name
        let mut entries: Vec<PathBuf> = Vec::new();
        for fan in std::fs::read_dir(blocks.join(o.settings().dir_name())).unwrap() {
            for f in std::fs::read_dir(fan.unwrap().path()).unwrap() {
                entries.push(f.unwrap().path());
            }
        }
        entries.sort();
        let n = entries.len();
        let first = std::fs::read(&entries[0]).unwrap();
        for (i, p) in entries.iter().enumerate().skip(1) {
            let mut raw = std::fs::read(p).unwrap();
            match i % 4 {
                0 => {
                    let l = raw.len();
                    raw[l / 2 + 20] ^= 0x10;
                }
                1 => raw.truncate(raw.len() / 2),
                2 => raw = first.clone(),
                _ => {
                    // well formed, this entry's key, another block's bytes
                    let key = hex::decode(p.file_name().unwrap().to_str().unwrap()).unwrap();
                    raw = first.clone();
                    raw[8..40].copy_from_slice(&key);
                }
            }
            std::fs::write(p, raw).unwrap();
        }
        let r = write_cached(&tree, &out, o, &cache).unwrap();
        assert!(std::fs::read(&out).unwrap() == reference);
        assert_eq!(r.cache.corrupt as usize, n - 1, "{r:?}");
        assert_eq!(r.compressed as usize, n - 1, "{r:?}");
    }
}
