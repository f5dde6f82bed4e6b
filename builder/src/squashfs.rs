//! Writing the root tree as a squashfs image (zstd) with the `backhand`
//! crate: every entry in path order, timestamps clamped to
//! SOURCE_DATE_EPOCH, so the same tree always gives the same bytes.
//!
//! Owns only the translation from [`Tree`] to squashfs; the tree's content
//! is decided before it gets here.
//!
//! backhand compresses one block after another. To use every core, the
//! full data blocks of every file are compressed beforehand in parallel
//! (rayon) and handed to backhand through a custom [`CompressionAction`]
//! that looks each block up by its SHA-256; fragments and metadata, a small
//! share of the work, are compressed as backhand asks. The bytes are the
//! same as backhand's own zstd path would give (same library, same level).

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::Path;
use std::sync::Arc;

use std::collections::HashMap;
use std::sync::RwLock;

use backhand::compression::{CompressionAction, Compressor, DefaultCompressor};
use backhand::kind::Kind;
use backhand::{BackhandError, FilesystemCompressor, FilesystemWriter, NodeHeader};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::tree::{Node, Tree};

/// Reads a shared file body without copying it.
struct ArcReader {
    data: Arc<Vec<u8>>,
    pos: usize,
}

impl Read for ArcReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// zstd with data blocks compressed ahead of time, in parallel.
struct ParallelZstd {
    blocks: RwLock<HashMap<[u8; 32], Vec<u8>>>,
}

fn block_key(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

impl ParallelZstd {
    /// Compress every full `block_size` block of every file in `tree`.
    fn precompress(&self, tree: &Tree, block_size: usize, level: i32) -> std::io::Result<()> {
        let mut seen = std::collections::HashSet::new();
        let mut blocks: Vec<&[u8]> = Vec::new();
        for (_, e) in tree.iter() {
            if let Node::File(d) = &e.node {
                if !seen.insert(Arc::as_ptr(d)) {
                    continue;
                }
                blocks.extend(d.chunks_exact(block_size));
            }
        }
        let done: Vec<([u8; 32], Vec<u8>)> = blocks
            .par_iter()
            .map_init(
                || zstd::bulk::Compressor::new(level),
                |c, b| {
                    let c = c
                        .as_mut()
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(b.len()));
                    c.compress_to_buffer(b, &mut out)?;
                    Ok((block_key(b), out))
                },
            )
            .collect::<std::io::Result<_>>()?;
        let mut map = self.blocks.write().expect("no poisoning");
        map.extend(done);
        Ok(())
    }
}

impl CompressionAction for ParallelZstd {
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
        if bytes.len() == block_size as usize {
            if let Some(c) = self
                .blocks
                .read()
                .expect("no poisoning")
                .get(&block_key(bytes))
            {
                return Ok(c.clone());
            }
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

/// Write `tree` to `out` as a squashfs 4.0 image. Returns the image size.
pub fn write(tree: &Tree, out: &Path, opts: Options) -> Result<u64, SquashfsError> {
    // backhand wants a `&'static` compressor: one small struct per image is
    // leaked; its block map is emptied once the image is written.
    let comp: &'static ParallelZstd = Box::leak(Box::new(ParallelZstd {
        blocks: RwLock::new(HashMap::new()),
    }));
    comp.precompress(tree, opts.block_size as usize, opts.zstd_level as i32)
        .map_err(|source| SquashfsError::Create {
            path: out.display().to_string(),
            source,
        })?;
    let result = write_with(tree, out, opts, comp);
    comp.blocks.write().expect("no poisoning").clear();
    comp.blocks.write().expect("no poisoning").shrink_to_fit();
    result
}

fn write_with(
    tree: &Tree,
    out: &Path,
    opts: Options,
    comp: &'static ParallelZstd,
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
            Node::File(d) => fs.push_file(
                ArcReader {
                    data: d.clone(),
                    pos: 0,
                },
                &p,
                h,
            ),
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
    use std::io::BufReader;

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
        .unwrap();
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
}
