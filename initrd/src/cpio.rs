//! Deterministic newc (`070701`) cpio writer, the format the kernel unpacks
//! an initramfs from. It owns the byte layout of the archive and nothing
//! else: which files go in is the builder's business, compression too (the
//! output is plain cpio; wrap the sink in a zstd/xz/gzip encoder).
//!
//! Determinism: entries are collected and written by [`CpioWriter::finish`]
//! in byte order of their paths, whatever order they were added in. Since a
//! path sorts before every path it is a prefix of, parents always precede
//! their children. Missing parent directories are added automatically
//! (mode 0755, owner 0:0); a directory added explicitly keeps the attributes
//! it was given, even when added after its children. Inode numbers are
//! assigned sequentially from 1 in output order, every entry carries the
//! same mtime (SOURCE_DATE_EPOCH), directories have nlink = 2 + number of
//! subdirectories, everything else nlink = 1 (no hard links: the kernel
//! would otherwise try to link entries sharing an inode number).
//!
//! Because entries are sorted at the end, file contents are kept in memory
//! until [`CpioWriter::finish`]; an initramfs is small enough for that. A
//! large file (the root squashfs of a network-boot initramfs) is added by
//! path instead ([`CpioWriter::add_file_from`]) and copied from disk while
//! the archive is written, so it costs no memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Type bits of `st_mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// The newc magic.
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Size of a newc header: magic plus 13 eight-digit hex fields.
pub const HEADER_LEN: usize = 110;
/// The archive is padded with zeros to a multiple of this, as cpio(1) does.
pub const BLOCK: u64 = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    /// A file whose contents are copied from `path` at [`CpioWriter::finish`];
    /// `len` is its size when it was added, and must still be then.
    FileAt {
        path: PathBuf,
        len: u64,
    },
    Symlink(String),
    CharDevice {
        major: u32,
        minor: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    /// Permission bits only (type bits are added from `kind`).
    perm: u32,
    uid: u32,
    gid: u32,
    /// True when the directory was created implicitly as a parent.
    implicit: bool,
}

/// Writes a newc cpio archive to `W`. See the module documentation for the
/// ordering and determinism rules.
pub struct CpioWriter<W: Write> {
    out: W,
    mtime: u32,
    entries: BTreeMap<String, Entry>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Normalises an archive path: strips leading `/` and `./`, drops `.` and
/// empty components, rejects `..` and the root itself.
fn normalize(path: &str) -> io::Result<String> {
    let mut parts = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(invalid(format!("cpio path {path:?} contains `..`"))),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(invalid(format!(
            "cpio path {path:?} names the archive root"
        )));
    }
    let joined = parts.join("/");
    if joined.contains('\0') {
        return Err(invalid(format!("cpio path {path:?} contains a NUL byte")));
    }
    Ok(joined)
}

impl<W: Write> CpioWriter<W> {
    /// A writer whose entries all get `mtime` (seconds since the epoch;
    /// pass SOURCE_DATE_EPOCH for reproducible output).
    pub fn new(out: W, mtime: u32) -> Self {
        CpioWriter {
            out,
            mtime,
            entries: BTreeMap::new(),
        }
    }

    /// Adds a directory. `mode` is the permission bits (`0o755`); type bits,
    /// if any, are ignored. Adding an existing directory again with the same
    /// attributes is a no-op; adding it with other attributes replaces a
    /// directory that was only created implicitly as a parent, and is an
    /// error otherwise.
    pub fn add_dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
        let path = normalize(path)?;
        let entry = Entry {
            kind: Kind::Dir,
            perm: mode & 0o7777,
            uid,
            gid,
            implicit: false,
        };
        if let Some(existing) = self.entries.get(&path) {
            let same = existing.kind == Kind::Dir
                && existing.perm == entry.perm
                && existing.uid == uid
                && existing.gid == gid;
            if !(same || existing.kind == Kind::Dir && existing.implicit) {
                return Err(invalid(format!("cpio path {path:?} added twice")));
            }
        }
        self.add_parents(&path)?;
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Adds a regular file with contents `data`. `mode` is the permission
    /// bits (`0o755` for executables).
    pub fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        data: &[u8],
    ) -> io::Result<()> {
        self.insert_leaf(path, Kind::File(data.to_vec()), mode & 0o7777, uid, gid)
    }

    /// [`CpioWriter::add_file`] taking ownership of the contents, which
    /// saves a copy of large files (the root squashfs of a network-boot
    /// initramfs).
    pub fn add_file_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        data: Vec<u8>,
    ) -> io::Result<()> {
        self.insert_leaf(path, Kind::File(data), mode & 0o7777, uid, gid)
    }

    /// Adds a regular file whose contents are the file `source` on disk,
    /// read while [`CpioWriter::finish`] writes the archive: the contents
    /// are never held in memory. `source` must not change in between; a
    /// size that changed is an error then.
    pub fn add_file_from(
        &mut self,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        source: &Path,
    ) -> io::Result<()> {
        let len = std::fs::metadata(source)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?
            .len();
        if len > u64::from(u32::MAX) {
            return Err(invalid(format!(
                "cpio entry {path:?} ({}) is larger than 4 GiB",
                source.display()
            )));
        }
        let kind = Kind::FileAt {
            path: source.to_owned(),
            len,
        };
        self.insert_leaf(path, kind, mode & 0o7777, uid, gid)
    }

    /// Adds a symbolic link `path` -> `target` (owner 0:0, mode 0777).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        if target.is_empty() || target.contains('\0') {
            return Err(invalid(format!(
                "symlink {path:?} has an invalid target {target:?}"
            )));
        }
        self.insert_leaf(path, Kind::Symlink(target.to_owned()), 0o777, 0, 0)
    }

    /// Adds a character device node (owner 0:0), e.g.
    /// `add_char_device("dev/console", 0o600, 5, 1)`.
    pub fn add_char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.insert_leaf(path, Kind::CharDevice { major, minor }, mode & 0o7777, 0, 0)
    }

    fn insert_leaf(
        &mut self,
        path: &str,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<()> {
        let path = normalize(path)?;
        if self.entries.contains_key(&path) {
            return Err(invalid(format!("cpio path {path:?} added twice")));
        }
        self.add_parents(&path)?;
        self.entries.insert(
            path,
            Entry {
                kind,
                perm,
                uid,
                gid,
                implicit: false,
            },
        );
        Ok(())
    }

    /// Makes sure every ancestor of `path` exists as a directory.
    fn add_parents(&mut self, path: &str) -> io::Result<()> {
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let parent = &path[..end + pos];
            match self.entries.get(parent) {
                Some(e) if e.kind == Kind::Dir => {}
                Some(_) => {
                    return Err(invalid(format!(
                        "cpio path {path:?} needs {parent:?} to be a directory, but it is not"
                    )))
                }
                None => {
                    self.entries.insert(
                        parent.to_owned(),
                        Entry {
                            kind: Kind::Dir,
                            perm: 0o755,
                            uid: 0,
                            gid: 0,
                            implicit: true,
                        },
                    );
                }
            }
            end += pos + 1;
        }
        Ok(())
    }

    /// Writes all entries, the `TRAILER!!!` record and zero padding up to a
    /// multiple of 512 bytes; returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        // nlink of a directory: 2 + its direct subdirectories.
        let mut subdirs: BTreeMap<&str, u32> = BTreeMap::new();
        for (path, e) in &self.entries {
            if e.kind == Kind::Dir {
                if let Some((parent, _)) = path.rsplit_once('/') {
                    *subdirs.entry(parent).or_default() += 1;
                }
            }
        }
        let mut offset: u64 = 0;
        for (ino, (path, e)) in (1u32..).zip(&self.entries) {
            let (mode, nlink, body, rdev): (u32, u32, Body<'_>, (u32, u32)) = match &e.kind {
                Kind::Dir => (
                    S_IFDIR | e.perm,
                    2 + subdirs.get(path.as_str()).copied().unwrap_or(0),
                    Body::Bytes(&[]),
                    (0, 0),
                ),
                Kind::File(d) => (S_IFREG | e.perm, 1, Body::Bytes(d), (0, 0)),
                Kind::FileAt { path, len } => (S_IFREG | e.perm, 1, Body::Path(path, *len), (0, 0)),
                Kind::Symlink(t) => (S_IFLNK | e.perm, 1, Body::Bytes(t.as_bytes()), (0, 0)),
                Kind::CharDevice { major, minor } => {
                    (S_IFCHR | e.perm, 1, Body::Bytes(&[]), (*major, *minor))
                }
            };
            let h = Header {
                ino,
                mode,
                uid: e.uid,
                gid: e.gid,
                nlink,
                mtime: self.mtime,
                filesize: u32::try_from(body.len())
                    .map_err(|_| invalid(format!("cpio entry {path:?} is larger than 4 GiB")))?,
                rdev_major: rdev.0,
                rdev_minor: rdev.1,
            };
            offset += write_entry(&mut self.out, &h, path, body)?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0,
            filesize: 0,
            rdev_major: 0,
            rdev_minor: 0,
        };
        offset += write_entry(&mut self.out, &trailer, "TRAILER!!!", Body::Bytes(&[]))?;
        let pad = (BLOCK - offset % BLOCK) % BLOCK;
        self.out.write_all(&vec![0u8; pad as usize])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

fn pad4(n: u64) -> u64 {
    (4 - n % 4) % 4
}

/// The contents of one entry: in memory, or a file of known size on disk.
enum Body<'a> {
    Bytes(&'a [u8]),
    Path(&'a Path, u64),
}

impl Body<'_> {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::Path(_, len) => *len,
        }
    }

    /// Copies the contents to `out`: exactly [`Body::len`] bytes, or an
    /// error naming the file if it changed size since it was added.
    fn write_to<W: Write>(&self, out: &mut W) -> io::Result<()> {
        match self {
            Body::Bytes(b) => out.write_all(b),
            Body::Path(p, len) => {
                let named =
                    |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
                let f = File::open(p).map_err(named)?;
                let copied = io::copy(&mut f.take(*len), out).map_err(named)?;
                let now = std::fs::metadata(p).map_err(named)?.len();
                if copied != *len || now != *len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} changed size while the cpio archive was written: {len} bytes when added, {now} now",
                            p.display()
                        ),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Writes one header + name + data with newc alignment; returns bytes written.
fn write_entry<W: Write>(out: &mut W, h: &Header, name: &str, data: Body<'_>) -> io::Result<u64> {
    let namesize = name.len() as u32 + 1;
    let header = format!(
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        h.ino,
        h.mode,
        h.uid,
        h.gid,
        h.nlink,
        h.mtime,
        h.filesize,
        0, // devmajor of the filesystem the entry came from: none
        0, // devminor
        h.rdev_major,
        h.rdev_minor,
        namesize,
        0, // check: unused by newc (only by crc format)
    );
    debug_assert_eq!(header.len(), HEADER_LEN);
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let head = HEADER_LEN as u64 + u64::from(namesize);
    let p1 = pad4(head);
    out.write_all(&[0u8; 3][..p1 as usize])?;
    data.write_to(out)?;
    let p2 = pad4(data.len());
    out.write_all(&[0u8; 3][..p2 as usize])?;
    Ok(head + p1 + data.len() + p2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::process::{Command, Stdio};

    const EPOCH: u32 = 1_700_000_000;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new(), EPOCH);
        // Deliberately out of order: the writer sorts and adds parents.
        w.add_file("/init", 0o755, 0, 0, b"#!/bin/sh\necho hi\n")
            .unwrap();
        w.add_file(
            "lib/modules/6.1.0-1-amd64/kernel/fs/squashfs/squashfs.ko",
            0o644,
            0,
            0,
            &[0xAB; 1001],
        )
        .unwrap();
        w.add_symlink("lib64", "lib").unwrap();
        w.add_dir("etc", 0o750, 1, 2).unwrap();
        w.add_file("etc/empty", 0o600, 1000, 1000, b"").unwrap();
        w.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        w.add_dir("run", 0o755, 0, 0).unwrap();
        w.finish().unwrap()
    }

    /// Minimal independent parse of the header fields (hex) for byte checks.
    fn field(h: &[u8], i: usize) -> u32 {
        let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap();
        u32::from_str_radix(s, 16).unwrap()
    }

    #[test]
    fn header_bytes() {
        let mut w = CpioWriter::new(Vec::new(), 0x6553_f100);
        w.add_file("init", 0o755, 0, 0, b"abc").unwrap();
        let a = w.finish().unwrap();
        let expect_header = b"070701\
00000001\
000081ed\
00000000\
00000000\
00000001\
6553f100\
00000003\
00000000\
00000000\
00000000\
00000000\
00000005\
00000000";
        assert_eq!(&a[..HEADER_LEN], &expect_header[..]);
        // name "init\0" (5 bytes): 110 + 5 = 115, padded to 116.
        assert_eq!(&a[110..116], b"init\0\0");
        // data "abc" + 1 pad byte.
        assert_eq!(&a[116..120], b"abc\0");
        // Trailer follows at a 4-byte boundary.
        assert_eq!(&a[120..126], NEWC_MAGIC);
        assert_eq!(field(&a[120..], 0), 0);
        assert_eq!(field(&a[120..], 11), 11);
        assert_eq!(&a[230..241], b"TRAILER!!!\0");
        assert_eq!(a.len() % BLOCK as usize, 0);
        assert!(a[244..].iter().all(|&b| b == 0));
    }

    #[test]
    fn order_inodes_nlink_alignment() {
        let a = sample();
        let mut pos = 0;
        let mut names = Vec::new();
        let mut inos = Vec::new();
        loop {
            assert_eq!(pos % 4, 0, "header not 4-byte aligned");
            let h = &a[pos..pos + HEADER_LEN];
            assert_eq!(&h[..6], NEWC_MAGIC);
            let namesize = field(h, 11) as usize;
            let filesize = field(h, 6) as usize;
            let name =
                std::str::from_utf8(&a[pos + HEADER_LEN..pos + HEADER_LEN + namesize - 1]).unwrap();
            assert_eq!(a[pos + HEADER_LEN + namesize - 1], 0);
            if name == "TRAILER!!!" {
                break;
            }
            assert_eq!(field(h, 5), EPOCH, "mtime of {name}");
            let mode = field(h, 1);
            let nlink = field(h, 4);
            match name {
                // lib has one subdirectory (modules); the root entries none.
                "lib" => assert_eq!(nlink, 3),
                "lib/modules"
                | "lib/modules/6.1.0-1-amd64"
                | "lib/modules/6.1.0-1-amd64/kernel"
                | "lib/modules/6.1.0-1-amd64/kernel/fs" => assert_eq!(nlink, 3),
                "etc" | "run" | "dev" | "lib/modules/6.1.0-1-amd64/kernel/fs/squashfs" => {
                    assert_eq!(nlink, 2)
                }
                _ => assert_eq!(nlink, 1, "{name}"),
            }
            if name == "dev/console" {
                assert_eq!(mode, 0o020_600);
                assert_eq!((field(h, 9), field(h, 10)), (5, 1));
            }
            if name == "etc" {
                assert_eq!((mode, field(h, 2), field(h, 3)), (0o040_750, 1, 2));
            }
            names.push(name.to_owned());
            inos.push(field(h, 0));
            let data_start = pos + HEADER_LEN + namesize;
            let data_start = data_start + (4 - data_start % 4) % 4;
            pos = data_start + filesize;
            pos += (4 - pos % 4) % 4;
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(inos, (1..=names.len() as u32).collect::<Vec<_>>());
        assert!(names.contains(&"lib/modules/6.1.0-1-amd64/kernel/fs".to_owned()));
    }

    #[test]
    fn deterministic_regardless_of_insertion_order() {
        let mut w1 = CpioWriter::new(Vec::new(), 7);
        w1.add_file("a/b/c", 0o644, 0, 0, b"1").unwrap();
        w1.add_dir("a", 0o700, 0, 0).unwrap();
        w1.add_symlink("z", "a/b/c").unwrap();
        let mut w2 = CpioWriter::new(Vec::new(), 7);
        w2.add_symlink("z", "a/b/c").unwrap();
        w2.add_dir("a", 0o700, 0, 0).unwrap();
        w2.add_file_owned("a/b/c", 0o644, 0, 0, b"1".to_vec())
            .unwrap();
        assert_eq!(w1.finish().unwrap(), w2.finish().unwrap());
    }

    #[test]
    fn a_file_added_by_path_gives_the_same_bytes_as_one_added_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        // sizes around the 4-byte padding and a copy buffer's edge
        for len in [0usize, 1, 3, 4, 5, 8191, 8192, 65_537] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let src = dir.path().join(format!("f{len}"));
            std::fs::write(&src, &data).unwrap();
            let mut a = CpioWriter::new(Vec::new(), 9);
            a.add_file("z/root.img", 0o444, 0, 0, &data).unwrap();
            a.add_file("a", 0o644, 0, 0, b"x").unwrap();
            let mut b = CpioWriter::new(Vec::new(), 9);
            b.add_file_from("z/root.img", 0o444, 0, 0, &src).unwrap();
            b.add_file("a", 0o644, 0, 0, b"x").unwrap();
            assert_eq!(a.finish().unwrap(), b.finish().unwrap(), "{len} bytes");
        }
    }

    #[test]
    fn a_file_added_by_path_that_changes_size_or_vanishes_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("root.img");
        std::fs::write(&src, b"0123456789").unwrap();
        let mut w = CpioWriter::new(Vec::new(), 0);
        w.add_file_from("root.img", 0o444, 0, 0, &src).unwrap();
        std::fs::write(&src, b"0123").unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("root.img") && e.contains("changed size"), "{e}");

        let mut w = CpioWriter::new(Vec::new(), 0);
        w.add_file_from("root.img", 0o444, 0, 0, &src).unwrap();
        std::fs::write(&src, b"0123456789abcdef").unwrap();
        assert!(w.finish().is_err(), "grew: the archive would lie");

        let mut w = CpioWriter::new(Vec::new(), 0);
        w.add_file_from("root.img", 0o444, 0, 0, &src).unwrap();
        std::fs::remove_file(&src).unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("root.img"), "{e}");
        let e = CpioWriter::new(Vec::new(), 0)
            .add_file_from("x", 0o444, 0, 0, &src)
            .unwrap_err()
            .to_string();
        assert!(e.contains("root.img"), "names the missing file: {e}");
    }

    #[test]
    fn rejects_bad_paths_and_duplicates() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        assert!(w.add_file("../x", 0o644, 0, 0, b"").is_err());
        assert!(w.add_file("/", 0o644, 0, 0, b"").is_err());
        w.add_file("f", 0o644, 0, 0, b"").unwrap();
        assert!(w.add_file("f", 0o644, 0, 0, b"").is_err());
        assert!(
            w.add_file("f/g", 0o644, 0, 0, b"").is_err(),
            "parent is a file"
        );
        w.add_dir("d", 0o755, 0, 0).unwrap();
        w.add_dir("d", 0o755, 0, 0).unwrap();
        assert!(w.add_dir("d", 0o700, 0, 0).is_err());
        assert!(w.add_symlink("s", "").is_err());
    }

    fn run(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {cmd:?} (install the `cpio` package): {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Extracts with GNU cpio (independent reader) and compares the tree.
    #[test]
    fn gnu_cpio_extracts_it() {
        let a = sample();
        let dir = tempfile::tempdir().unwrap();
        run(
            Command::new("cpio")
                .args([
                    "-i",
                    "--make-directories",
                    "--preserve-modification-time",
                    "--no-absolute-filenames",
                    "--quiet",
                ])
                .current_dir(dir.path()),
            &a,
        );
        let p = |s: &str| dir.path().join(s);
        assert_eq!(std::fs::read(p("init")).unwrap(), b"#!/bin/sh\necho hi\n");
        let md = std::fs::metadata(p("init")).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o755);
        assert_eq!(md.mtime(), i64::from(EPOCH));
        let ko = std::fs::read(p(
            "lib/modules/6.1.0-1-amd64/kernel/fs/squashfs/squashfs.ko",
        ))
        .unwrap();
        assert_eq!(ko, vec![0xAB; 1001]);
        assert_eq!(std::fs::read_link(p("lib64")).unwrap(), Path::new("lib"));
        assert_eq!(std::fs::read(p("etc/empty")).unwrap(), b"");
        let etc = std::fs::metadata(p("etc")).unwrap();
        assert!(etc.is_dir());
        assert_eq!(etc.permissions().mode() & 0o7777, 0o750);
        assert!(std::fs::metadata(p("run")).unwrap().is_dir());
        if rustix::process::geteuid().is_root() {
            // Only root gets owners restored and device nodes created.
            assert_eq!((etc.uid(), etc.gid()), (1, 2));
            let md = std::fs::metadata(p("etc/empty")).unwrap();
            assert_eq!((md.uid(), md.gid()), (1000, 1000));
            if let Ok(con) = std::fs::symlink_metadata(p("dev/console")) {
                assert!(con.file_type().is_char_device());
                assert_eq!(con.rdev(), libc::makedev(5, 1));
            }
        }
    }

    /// `cpio -tv` listing: names, modes, link counts, owners, sizes.
    #[test]
    fn gnu_cpio_lists_it() {
        let a = sample();
        let out = run(
            Command::new("cpio").args(["-t", "-v", "--quiet", "--numeric-uid-gid"]),
            &a,
        );
        let listing = String::from_utf8(out).unwrap();
        let lines: Vec<Vec<&str>> = listing
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        // The name is the last field, or the one before "->" for symlinks
        // (device lines have "major, minor" where the size is).
        fn name_of<'a>(f: &[&'a str]) -> &'a str {
            match f.iter().position(|&x| x == "->") {
                Some(i) => f[i - 1],
                None => f[f.len() - 1],
            }
        }
        let find = |name: &str| {
            lines
                .iter()
                .find(|f| name_of(f) == name)
                .unwrap_or_else(|| panic!("{name} not in listing:\n{listing}"))
                .clone()
        };
        // perms nlink uid gid size month day year name
        assert_eq!(find("init")[..5], ["-rwxr-xr-x", "1", "0", "0", "18"]);
        assert_eq!(find("init")[7], "2023");
        assert_eq!(find("etc")[..4], ["drwxr-x---", "2", "1", "2"]);
        assert_eq!(find("lib")[..2], ["drwxr-xr-x", "3"]);
        assert_eq!(
            find("dev/console")[..6],
            ["crw-------", "1", "0", "0", "5,", "1"]
        );
        let link = find("lib64");
        assert_eq!(link[0], "lrwxrwxrwx");
        assert_eq!(link[link.len() - 2..], ["->", "lib"]);
        let names: Vec<&str> = lines.iter().map(|f| name_of(f)).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "etc",
                "etc/empty",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1.0-1-amd64",
                "lib/modules/6.1.0-1-amd64/kernel",
                "lib/modules/6.1.0-1-amd64/kernel/fs",
                "lib/modules/6.1.0-1-amd64/kernel/fs/squashfs",
                "lib/modules/6.1.0-1-amd64/kernel/fs/squashfs/squashfs.ko",
                "lib64",
                "run",
            ]
        );
    }
}
