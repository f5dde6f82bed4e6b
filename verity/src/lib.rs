//! cairn-verity: the dm-verity hash tree of a root image, built and checked
//! in Rust, byte for byte what `veritysetup format` writes (format 1,
//! SHA-256, 4096-byte data and hash blocks, a 32-byte salt).
//!
//! The layout is `cairn_formats::verity`'s: the squashfs zero-padded to a
//! whole block is the data area, the 512-byte verity superblock (the rest
//! of its block zero) follows at `data_blocks * 4096`, and the tree starts
//! one block later, its top level first and level 0 (the hashes of the
//! data blocks) last, as the kernel's `verity` target and veritysetup lay
//! it out. [`append_tree`] turns a squashfs file into such a slot image in
//! place; [`verify`] and [`verify_at`] check a slot (a file, a partition
//! of a disk image, a block device) against trusted parameters, top down
//! as the kernel does, and name the first block that fails.
//!
//! Both read the data area once, front to back, in 4 MiB chunks: one
//! thread reads the next chunk while the others (one per core, at most
//! four) hash the current one, so memory stays at two chunks plus the
//! tree (1/128 of the data). Upper levels are hashed from the tree in
//! memory.
//!
//! Salt and UUID: cairn derives both from a seed ([`derive_salt`],
//! [`derive_uuid`]); `cairn build` uses the build's input fingerprint, so
//! the same inputs give the same tree and different images never share a
//! salt.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use cairn_formats::verity::{Verity, BLOCK_SIZE, DIGEST_LEN};

/// Size of the verity superblock (veritysetup's `struct verity_sb`).
pub const SUPERBLOCK_LEN: usize = 512;
/// The superblock's signature.
pub const SIGNATURE: &[u8; 8] = b"verity\0\0";
/// Digests per hash block (4096 / 32).
pub const HASHES_PER_BLOCK: u64 = BLOCK_SIZE / DIGEST_LEN as u64;

const BS: usize = BLOCK_SIZE as usize;
/// Bytes read (and hashed) per step.
const CHUNK: usize = 4 << 20;

/// Why a tree could not be written or a slot does not match its tree.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: an empty file has no verity tree", path.display())]
    Empty { path: PathBuf },
    #[error("{}: {size} bytes, but the data area and its hash tree need {needed}", path.display())]
    TooShort {
        path: PathBuf,
        size: u64,
        needed: u64,
    },
    #[error("{}: the verity superblock at byte {offset} {problem}", path.display())]
    Superblock {
        path: PathBuf,
        offset: u64,
        problem: String,
    },
    #[error("{}: hash block {block} (level {level}, bytes {}..{}) does not match {}", path.display(), block * BLOCK_SIZE, (block + 1) * BLOCK_SIZE, if *level_above_is_root { "the root hash".to_string() } else { format!("level {}", level + 1) })]
    HashBlock {
        path: PathBuf,
        /// Block number from the start of the slot.
        block: u64,
        level: usize,
        level_above_is_root: bool,
    },
    #[error("{}: data block {block} (bytes {}..{}) does not match the hash tree{}", path.display(), block * BLOCK_SIZE, (block + 1) * BLOCK_SIZE, if *root { " (its hash is the root hash)" } else { "" })]
    DataBlock {
        path: PathBuf,
        /// Block number from the start of the slot.
        block: u64,
        /// The image has one data block, checked against the root hash.
        root: bool,
    },
    #[error("{}: more than {max} data blocks", path.display())]
    TooLarge { path: PathBuf, max: u64 },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VerityError + 'a {
    move |source| VerityError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The salt for an image: SHA-256 of a fixed label and `seed` (cairn
/// build passes the build's input fingerprint).
pub fn derive_salt(seed: &[u8]) -> [u8; DIGEST_LEN] {
    let mut h = Sha256::new();
    h.update(b"cairn-verity salt v1\0");
    h.update(seed);
    h.finalize().into()
}

/// The superblock's UUID for a salt: the first 16 bytes of a SHA-256 of
/// it, marked as an RFC 9562 version 8 (custom) UUID.
pub fn derive_uuid(salt: &[u8; DIGEST_LEN]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"cairn-verity uuid v1\0");
    h.update(salt);
    let d = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as `veritysetup --uuid` takes it.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h = cairn_formats::verity::to_hex(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Where each level of the tree lies, as veritysetup and the kernel place
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeLayout {
    pub data_blocks: u64,
    /// Blocks of each level, level 0 (the data blocks' hashes) first.
    pub level_blocks: Vec<u64>,
}

impl TreeLayout {
    /// The layout for `data_blocks` blocks of data (one block: no level,
    /// the root hash is that block's hash).
    pub fn new(data_blocks: u64) -> TreeLayout {
        let bits = HASHES_PER_BLOCK.trailing_zeros();
        let mut levels = 0u32;
        while bits * levels < 64 && (data_blocks.saturating_sub(1) >> (bits * levels)) != 0 {
            levels += 1;
        }
        let level_blocks = (0..levels)
            .map(|i| {
                let shift = (i + 1) * bits;
                if shift >= 64 {
                    1
                } else {
                    data_blocks.div_ceil(1u64 << shift)
                }
            })
            .collect();
        TreeLayout {
            data_blocks,
            level_blocks,
        }
    }

    /// Number of levels.
    pub fn levels(&self) -> usize {
        self.level_blocks.len()
    }

    /// Blocks in the whole tree.
    pub fn tree_blocks(&self) -> u64 {
        self.level_blocks.iter().sum()
    }

    /// Offset of level `i` from the start of the tree, in blocks (the top
    /// level comes first).
    pub fn level_start(&self, i: usize) -> u64 {
        self.level_blocks[i + 1..].iter().sum()
    }

    /// Size of the slot image: data, superblock block, tree.
    pub fn image_len(&self) -> u64 {
        (self.data_blocks + 1 + self.tree_blocks()) * BLOCK_SIZE
    }
}

/// A decoded verity superblock (format 1 as veritysetup writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub data_blocks: u64,
    pub salt: [u8; DIGEST_LEN],
}

impl Superblock {
    /// The 512 bytes of veritysetup's `struct verity_sb` (little-endian).
    pub fn encode(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[..8].copy_from_slice(SIGNATURE);
        b[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
        b[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: normal
        b[16..32].copy_from_slice(&self.uuid);
        b[32..38].copy_from_slice(b"sha256");
        b[64..68].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[68..72].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        b[80..82].copy_from_slice(&(DIGEST_LEN as u16).to_le_bytes());
        b[88..88 + DIGEST_LEN].copy_from_slice(&self.salt);
        b
    }

    /// Reads a superblock; `Err` says what is not as cairn writes it
    /// (signature, version, hash type, algorithm, block sizes, salt size).
    pub fn decode(b: &[u8]) -> Result<Superblock, String> {
        if b.len() < SUPERBLOCK_LEN {
            return Err("is cut short".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        if &b[..8] != SIGNATURE {
            return Err("has no \"verity\" signature".into());
        }
        if u32_at(8) != 1 || u32_at(12) != 1 {
            return Err(format!(
                "is version {} hash type {}, not 1 and 1",
                u32_at(8),
                u32_at(12)
            ));
        }
        let alg_end = b[32..64].iter().position(|&c| c == 0).unwrap_or(32);
        if &b[32..32 + alg_end] != b"sha256" {
            return Err(format!(
                "names the hash {:?}, not sha256",
                String::from_utf8_lossy(&b[32..32 + alg_end])
            ));
        }
        if u32_at(64) != BLOCK_SIZE as u32 || u32_at(68) != BLOCK_SIZE as u32 {
            return Err(format!(
                "has blocks of {} and {} bytes, not 4096",
                u32_at(64),
                u32_at(68)
            ));
        }
        let salt_size = u16::from_le_bytes([b[80], b[81]]);
        if usize::from(salt_size) != DIGEST_LEN {
            return Err(format!("has a {salt_size}-byte salt, not 32"));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let mut salt = [0u8; DIGEST_LEN];
        salt.copy_from_slice(&b[88..88 + DIGEST_LEN]);
        Ok(Superblock {
            uuid,
            data_blocks: u64::from_le_bytes(b[72..80].try_into().unwrap()),
            salt,
        })
    }
}

/// SHA-256 of `salt || block` (format 1 puts the salt first).
fn salted(prefix: &Sha256, block: &[u8]) -> [u8; DIGEST_LEN] {
    let mut h = prefix.clone();
    h.update(block);
    h.finalize().into()
}

fn salted_prefix(salt: &[u8; DIGEST_LEN]) -> Sha256 {
    let mut h = Sha256::new();
    h.update(salt);
    h
}

/// Hashing threads: one per core, at most four.
fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// Hashes each 4096-byte block of `buf` into `out` (32 bytes a block),
/// split across `threads` scoped threads.
fn hash_chunk(prefix: &Sha256, buf: &[u8], out: &mut [u8], threads: usize) {
    let blocks = buf.len() / BS;
    let per = blocks.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (data, hashes) in buf.chunks(per * BS).zip(out.chunks_mut(per * DIGEST_LEN)) {
            s.spawn(move || {
                for (b, h) in data.chunks(BS).zip(hashes.chunks_mut(DIGEST_LEN)) {
                    h.copy_from_slice(&salted(prefix, b));
                }
            });
        }
    });
}

/// Reads `blocks` blocks of `file` from byte `base` and hands their salted
/// hashes to `sink` in order, `(first block, hashes)` per chunk. The next
/// chunk is read while the current one is hashed.
fn leaf_hashes(
    file: &File,
    path: &Path,
    base: u64,
    blocks: u64,
    salt: &[u8; DIGEST_LEN],
    mut sink: impl FnMut(u64, &[u8]) -> Result<(), VerityError>,
) -> Result<(), VerityError> {
    let prefix = salted_prefix(salt);
    let threads = workers();
    let total = blocks * BLOCK_SIZE;
    let read = |buf: &mut Vec<u8>, at: u64| -> Result<(), VerityError> {
        let n = (total - at).min(CHUNK as u64) as usize;
        buf.resize(n, 0);
        file.read_exact_at(buf, base + at)
            .map_err(io_err("reading the data area of", path))
    };
    let mut cur = Vec::with_capacity(CHUNK);
    let mut next = Vec::with_capacity(CHUNK);
    let mut hashes = vec![0u8; CHUNK / BS * DIGEST_LEN];
    let mut at = 0u64;
    if total > 0 {
        read(&mut cur, 0)?;
    }
    while at < total {
        let next_at = at + cur.len() as u64;
        let out = &mut hashes[..cur.len() / BS * DIGEST_LEN];
        let read_next = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                if next_at < total {
                    read(&mut next, next_at)
                } else {
                    Ok(())
                }
            });
            hash_chunk(&prefix, &cur, out, threads);
            reader.join().expect("the reading thread panicked")
        });
        sink(at / BLOCK_SIZE, out)?;
        read_next?;
        std::mem::swap(&mut cur, &mut next);
        at = next_at;
    }
    Ok(())
}

/// The levels above level 0, each as whole blocks (zero-padded), level 0
/// first, and the root hash.
fn upper_levels(
    level0: Vec<u8>,
    layout: &TreeLayout,
    salt: &[u8; DIGEST_LEN],
) -> (Vec<Vec<u8>>, [u8; DIGEST_LEN]) {
    let prefix = salted_prefix(salt);
    let mut levels: Vec<Vec<u8>> = Vec::with_capacity(layout.levels());
    let mut cur = level0;
    for i in 0..layout.levels() {
        cur.resize((layout.level_blocks[i] * BLOCK_SIZE) as usize, 0);
        let mut up = vec![0u8; cur.len() / BS * DIGEST_LEN];
        hash_chunk(&prefix, &cur, &mut up, workers());
        levels.push(std::mem::replace(&mut cur, up));
    }
    // what remains is one digest: the hash of the top block (or, with no
    // level, of the only data block)
    let mut root = [0u8; DIGEST_LEN];
    root.copy_from_slice(&cur[..DIGEST_LEN]);
    (levels, root)
}

/// The maximum number of data blocks (offsets stay within 63 bits).
const MAX_DATA_BLOCKS: u64 = u64::MAX / BLOCK_SIZE / 2;

/// Turns the squashfs at `path` into a slot image in place: zero-pads it
/// to a whole block, then writes the superblock and the hash tree after
/// it, and returns the parameters. `salt` comes from [`derive_salt`]. A
/// file that already ends in a tree gets a second one over its first:
/// call this once, on the file `mksquashfs`/cairn just wrote.
pub fn append_tree(path: &Path, salt: &[u8; DIGEST_LEN]) -> Result<Verity, VerityError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    let len = file
        .metadata()
        .map_err(io_err("reading the size of", path))?
        .len();
    if len == 0 {
        return Err(VerityError::Empty {
            path: path.to_path_buf(),
        });
    }
    let data_blocks = len.div_ceil(BLOCK_SIZE);
    if data_blocks > MAX_DATA_BLOCKS {
        return Err(VerityError::TooLarge {
            path: path.to_path_buf(),
            max: MAX_DATA_BLOCKS,
        });
    }
    file.set_len(data_blocks * BLOCK_SIZE)
        .map_err(io_err("padding", path))?;
    let layout = TreeLayout::new(data_blocks);
    let mut level0 = Vec::with_capacity((data_blocks as usize) * DIGEST_LEN);
    leaf_hashes(&file, path, 0, data_blocks, salt, |_, h| {
        level0.extend_from_slice(h);
        Ok(())
    })?;
    let (levels, root_hash) = upper_levels(level0, &layout, salt);
    let sb = Superblock {
        uuid: derive_uuid(salt),
        data_blocks,
        salt: *salt,
    };
    let mut sb_block = vec![0u8; BS];
    sb_block[..SUPERBLOCK_LEN].copy_from_slice(&sb.encode());
    let hash_offset = data_blocks * BLOCK_SIZE;
    let w = io_err("writing the hash tree to", path);
    file.write_all_at(&sb_block, hash_offset).map_err(w)?;
    let tree_start = hash_offset + BLOCK_SIZE;
    for (i, level) in levels.iter().enumerate() {
        file.write_all_at(level, tree_start + layout.level_start(i) * BLOCK_SIZE)
            .map_err(io_err("writing the hash tree to", path))?;
    }
    // no fsync: like every artifact of a build, the file is durable when
    // the caller makes it so
    file.set_len(layout.image_len())
        .map_err(io_err("sizing", path))?;
    Ok(Verity {
        root_hash,
        salt: *salt,
        data_blocks,
    })
}

/// Checks the slot image at `path` against `v`; see [`verify_at`].
pub fn verify(path: &Path, v: &Verity) -> Result<(), VerityError> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    verify_at(&file, path, 0, v)
}

/// Checks the slot image that starts at byte `base` of `file` (`path`
/// names it in errors) against trusted parameters `v`, as the kernel
/// would on reads of every block: the superblock must carry `v`'s salt
/// and size, the top hash block must hash to the root hash, every hash
/// block to its entry in the level above, and every data block to its
/// entry in level 0. The error names the first block that fails.
pub fn verify_at(file: &File, path: &Path, base: u64, v: &Verity) -> Result<(), VerityError> {
    let layout = TreeLayout::new(v.data_blocks);
    let size = file
        .metadata()
        .map_err(io_err("reading the size of", path))?
        .len();
    // a block device's metadata says 0: its reads will tell
    if size != 0 && size < base + layout.image_len() {
        return Err(VerityError::TooShort {
            path: path.to_path_buf(),
            size: size.saturating_sub(base),
            needed: layout.image_len(),
        });
    }
    let sb_offset = v.hash_offset();
    let sb = read_superblock(file, path, base, sb_offset)?;
    let sb_problem = |problem: String| VerityError::Superblock {
        path: path.to_path_buf(),
        offset: sb_offset,
        problem,
    };
    if sb.data_blocks != v.data_blocks {
        return Err(sb_problem(format!(
            "says {} data blocks, the trusted parameters {}",
            sb.data_blocks, v.data_blocks
        )));
    }
    if sb.salt != v.salt {
        return Err(sb_problem("holds another salt than the trusted one".into()));
    }
    let prefix = salted_prefix(&v.salt);
    let tree_start = v.hash_start_block();
    let mut tree = vec![0u8; (layout.tree_blocks() * BLOCK_SIZE) as usize];
    file.read_exact_at(&mut tree, base + tree_start * BLOCK_SIZE)
        .map_err(io_err("reading the hash tree of", path))?;
    let level = |i: usize| {
        let s = (layout.level_start(i) * BLOCK_SIZE) as usize;
        &tree[s..s + (layout.level_blocks[i] * BLOCK_SIZE) as usize]
    };
    // top down: each level against the one above, the top against the root
    for i in (0..layout.levels()).rev() {
        let above: &[u8] = if i + 1 == layout.levels() {
            &v.root_hash
        } else {
            level(i + 1)
        };
        for (n, block) in level(i).chunks(BS).enumerate() {
            if salted(&prefix, block)[..] != above[n * DIGEST_LEN..(n + 1) * DIGEST_LEN] {
                return Err(VerityError::HashBlock {
                    path: path.to_path_buf(),
                    block: tree_start + layout.level_start(i) + n as u64,
                    level: i,
                    level_above_is_root: i + 1 == layout.levels(),
                });
            }
        }
    }
    let expected: &[u8] = if layout.levels() == 0 {
        &v.root_hash
    } else {
        level(0)
    };
    leaf_hashes(file, path, base, v.data_blocks, &v.salt, |first, got| {
        let want = &expected[first as usize * DIGEST_LEN..][..got.len()];
        if got != want {
            let n = got
                .chunks(DIGEST_LEN)
                .zip(want.chunks(DIGEST_LEN))
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(VerityError::DataBlock {
                path: path.to_path_buf(),
                block: first + n as u64,
                root: layout.levels() == 0,
            });
        }
        Ok(())
    })
}

fn read_superblock(
    file: &File,
    path: &Path,
    base: u64,
    offset: u64,
) -> Result<Superblock, VerityError> {
    let mut b = [0u8; SUPERBLOCK_LEN];
    file.read_exact_at(&mut b, base + offset)
        .map_err(io_err("reading the verity superblock of", path))?;
    Superblock::decode(&b).map_err(|problem| VerityError::Superblock {
        path: path.to_path_buf(),
        offset,
        problem,
    })
}

/// The parameters a slot image's own tree claims, for `cairn inspect`:
/// the superblock at `data_blocks * 4096` (salt) and the root hash
/// computed from its top hash block (or, for a one-block image, its data
/// block). Reads two or three blocks, not the data area: it says what the
/// slot would be checked against, not that the data matches (that is
/// [`verify_at`]).
pub fn read_root(
    file: &File,
    path: &Path,
    base: u64,
    data_blocks: u64,
) -> Result<Verity, VerityError> {
    let layout = TreeLayout::new(data_blocks);
    let sb = read_superblock(file, path, base, data_blocks * BLOCK_SIZE)?;
    if sb.data_blocks != data_blocks {
        return Err(VerityError::Superblock {
            path: path.to_path_buf(),
            offset: data_blocks * BLOCK_SIZE,
            problem: format!(
                "says {} data blocks, the image {data_blocks}",
                sb.data_blocks
            ),
        });
    }
    let top = if layout.levels() == 0 {
        0
    } else {
        data_blocks + 1
    };
    let mut block = vec![0u8; BS];
    file.read_exact_at(&mut block, base + top * BLOCK_SIZE)
        .map_err(io_err("reading the top hash block of", path))?;
    Ok(Verity {
        root_hash: salted(&salted_prefix(&sb.salt), &block),
        salt: sb.salt,
        data_blocks,
    })
}

/// Blocks of data of a squashfs image whose first bytes are `head` (at
/// least 48): its `bytes_used`, rounded up to a block; `None` when `head`
/// is no squashfs 4 superblock.
pub fn squashfs_data_blocks(head: &[u8]) -> Option<u64> {
    if head.len() < 48 || &head[..4] != b"hsqs" {
        return None;
    }
    let used = u64::from_le_bytes(head[40..48].try_into().ok()?);
    (used > 0).then(|| used.div_ceil(BLOCK_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(TreeLayout::new(1).level_blocks, Vec::<u64>::new());
        assert_eq!(TreeLayout::new(2).level_blocks, vec![1]);
        assert_eq!(TreeLayout::new(128).level_blocks, vec![1]);
        assert_eq!(TreeLayout::new(129).level_blocks, vec![2, 1]);
        assert_eq!(TreeLayout::new(16384).level_blocks, vec![128, 1]);
        assert_eq!(TreeLayout::new(16385).level_blocks, vec![129, 2, 1]);
        let l = TreeLayout::new(16385);
        assert_eq!(l.level_start(2), 0);
        assert_eq!(l.level_start(1), 1);
        assert_eq!(l.level_start(0), 3);
        assert_eq!(l.image_len(), (16385 + 1 + 132) * 4096);
    }

    #[test]
    fn superblock_round_trips_and_refuses_others() {
        let sb = Superblock {
            uuid: derive_uuid(&[7; 32]),
            data_blocks: 99,
            salt: [7; 32],
        };
        let b = sb.encode();
        assert_eq!(Superblock::decode(&b), Ok(sb.clone()));
        let mut bad = b;
        bad[0] = b'x';
        assert!(Superblock::decode(&bad).unwrap_err().contains("signature"));
        let mut bad = b;
        bad[32..38].copy_from_slice(b"sha512");
        assert!(Superblock::decode(&bad).unwrap_err().contains("sha512"));
        let mut bad = b;
        bad[80] = 16;
        assert!(Superblock::decode(&bad).unwrap_err().contains("16-byte"));
    }

    #[test]
    fn derived_values_are_stable() {
        let s = derive_salt(b"inputs");
        assert_eq!(s, derive_salt(b"inputs"));
        assert_ne!(s, derive_salt(b"inputs2"));
        let u = uuid_string(&derive_uuid(&s));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "8", "version 8: {u}");
    }

    fn image(len: usize, seed: u8) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rootfs.squashfs");
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 12) as u8)
            .collect();
        std::fs::write(&p, data).unwrap();
        (dir, p)
    }

    #[test]
    fn append_then_verify_and_each_tampering_is_named() {
        let (_d, p) = image(300 * 4096 + 17, 1);
        let v = append_tree(&p, &[3; 32]).unwrap();
        assert_eq!(v.data_blocks, 301);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            TreeLayout::new(301).image_len()
        );
        verify(&p, &v).unwrap();
        let r = read_root(&File::open(&p).unwrap(), &p, 0, 301).unwrap();
        assert_eq!(r, v);

        let flip = |at: u64| {
            let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
            let mut b = [0u8];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
        };
        // a data block
        flip(200 * 4096 + 5);
        match verify(&p, &v) {
            Err(VerityError::DataBlock { block: 200, .. }) => {}
            other => panic!("{other:?}"),
        }
        flip(200 * 4096 + 5);
        // the padding of the last data block is covered too
        flip(301 * 4096 - 1);
        let e = verify(&p, &v).unwrap_err();
        assert!(
            e.to_string()
                .contains("data block 300 (bytes 1228800..1232896)"),
            "{e}"
        );
        flip(301 * 4096 - 1);
        // level 0 (block 304 of 2 + 1 levels) against level 1
        flip(305 * 4096 + 1);
        match verify(&p, &v) {
            Err(VerityError::HashBlock {
                block: 305,
                level: 0,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        flip(305 * 4096 + 1);
        // the top block against the root
        flip(302 * 4096 + 1);
        let e = verify(&p, &v).unwrap_err();
        assert!(e.to_string().contains("the root hash"), "{e}");
        flip(302 * 4096 + 1);
        // the superblock's salt
        flip(301 * 4096 + 88);
        assert!(matches!(
            verify(&p, &v),
            Err(VerityError::Superblock { .. })
        ));
        flip(301 * 4096 + 88);
        verify(&p, &v).unwrap();
        // another root hash
        let mut w = v;
        w.root_hash[0] ^= 1;
        assert!(matches!(
            verify(&p, &w),
            Err(VerityError::HashBlock { block: 302, .. })
        ));
    }

    #[test]
    fn one_block_image_checks_its_block_against_the_root() {
        let (_d, p) = image(100, 2);
        let v = append_tree(&p, &[4; 32]).unwrap();
        assert_eq!(v.data_blocks, 1);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192);
        verify(&p, &v).unwrap();
        assert_eq!(read_root(&File::open(&p).unwrap(), &p, 0, 1).unwrap(), v);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"!", 50).unwrap();
        match verify(&p, &v) {
            Err(VerityError::DataBlock {
                block: 0,
                root: true,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_and_empty_files() {
        let (_d, p) = image(0, 0);
        assert!(matches!(
            append_tree(&p, &[0; 32]),
            Err(VerityError::Empty { .. })
        ));
        let (_d, p) = image(8192, 0);
        let v = append_tree(&p, &[0; 32]).unwrap();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(8192 + 100).unwrap();
        assert!(matches!(verify(&p, &v), Err(VerityError::TooShort { .. })));
    }

    #[test]
    fn squashfs_size_from_its_superblock() {
        let mut head = vec![0u8; 96];
        head[..4].copy_from_slice(b"hsqs");
        head[40..48].copy_from_slice(&4097u64.to_le_bytes());
        assert_eq!(squashfs_data_blocks(&head), Some(2));
        head[0] = b'x';
        assert_eq!(squashfs_data_blocks(&head), None);
    }
}
