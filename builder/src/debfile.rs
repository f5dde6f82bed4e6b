//! Reading `.deb` files in pure Rust: the `ar` container, `control.tar.*`
//! (control paragraph and maintainer scripts, kept as data for the fixups,
//! never run) and `data.tar.*` unpacked into a [`Tree`], streamed from the
//! package file with large bodies spilled ([`stage_deb`]).
//!
//! Owns decompression (xz, zstd, gzip, none) and the mapping from tar
//! entries to tree entries (modes, owners, setuid bits, symlinks, hard
//! links). Does not decide what happens after unpacking.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::path::Path;
use std::sync::Arc;

use crate::blob::{Blob, Spill};
use crate::tree::{Entry, Node, Tree, TreeError};

/// What the fixups need to know about an unpacked package.
#[derive(Debug, Clone)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The `DEBIAN/control` paragraph as text.
    pub control: String,
    /// Maintainer scripts and other control members by name
    /// (`postinst`, `preinst`, `conffiles`, `triggers`...), as text.
    pub control_files: BTreeMap<String, String>,
    /// Canonical tree paths this package shipped (after merged-/usr).
    pub files: Vec<String>,
}

impl InstalledPackage {
    pub fn postinst(&self) -> Option<&str> {
        self.control_files.get("postinst").map(String::as_str)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{package}: not a Debian package: {reason}")]
    Format { package: String, reason: String },
    #[error("{package}: reading {member}: {source}")]
    Io {
        package: String,
        member: String,
        source: std::io::Error,
    },
    #[error("{package}: {member}: unsupported compression (expected .xz, .zst, .gz or none)")]
    Compression { package: String, member: String },
    #[error("{package}: {source}")]
    Tree { package: String, source: TreeError },
}

/// The members of a `.deb`, decompressed.
pub struct DebMembers {
    pub control_tar: Vec<u8>,
    pub data_tar: Vec<u8>,
}

fn decompress(package: &str, member: &str, raw: Vec<u8>) -> Result<Vec<u8>, DebError> {
    let io = |source| DebError::Io {
        package: package.to_string(),
        member: member.to_string(),
        source,
    };
    let mut out = Vec::with_capacity(raw.len() * 4);
    if member.ends_with(".xz") {
        liblzma::read::XzDecoder::new(Cursor::new(raw))
            .read_to_end(&mut out)
            .map_err(io)?;
    } else if member.ends_with(".zst") {
        zstd::stream::read::Decoder::new(Cursor::new(raw))
            .map_err(io)?
            .read_to_end(&mut out)
            .map_err(io)?;
    } else if member.ends_with(".gz") {
        flate2::read::GzDecoder::new(Cursor::new(raw))
            .read_to_end(&mut out)
            .map_err(io)?;
    } else if member.ends_with(".tar") {
        return Ok(raw);
    } else {
        return Err(DebError::Compression {
            package: package.to_string(),
            member: member.to_string(),
        });
    }
    Ok(out)
}

/// Split a `.deb` (`package` is its name for messages) into its control and
/// data archives.
pub fn read_members(package: &str, deb: &[u8]) -> Result<DebMembers, DebError> {
    let mut ar = ar::Archive::new(Cursor::new(deb));
    let mut control = None;
    let mut data = None;
    let mut version_ok = false;
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.map_err(|e| DebError::Format {
            package: package.to_string(),
            reason: format!("bad ar archive: {e}"),
        })?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_string();
        let mut raw = Vec::new();
        entry.read_to_end(&mut raw).map_err(|source| DebError::Io {
            package: package.to_string(),
            member: name.clone(),
            source,
        })?;
        if name == "debian-binary" {
            version_ok = raw.starts_with(b"2.");
        } else if name.starts_with("control.tar") {
            control = Some(decompress(package, &name, raw)?);
        } else if name.starts_with("data.tar") {
            data = Some(decompress(package, &name, raw)?);
        }
    }
    if !version_ok {
        return Err(DebError::Format {
            package: package.to_string(),
            reason: "missing or unsupported debian-binary member (expected 2.x)".into(),
        });
    }
    match (control, data) {
        (Some(control_tar), Some(data_tar)) => Ok(DebMembers {
            control_tar,
            data_tar,
        }),
        _ => Err(DebError::Format {
            package: package.to_string(),
            reason: "control.tar or data.tar member missing".into(),
        }),
    }
}

/// Read the control archive: the `control` paragraph and every other member.
pub fn read_control(
    package: &str,
    control_tar: &[u8],
) -> Result<BTreeMap<String, String>, DebError> {
    let mut out = BTreeMap::new();
    let mut tar = tar::Archive::new(Cursor::new(control_tar));
    let io = |source| DebError::Io {
        package: package.to_string(),
        member: "control.tar".into(),
        source,
    };
    for e in tar.entries().map_err(io)? {
        let mut e = e.map_err(io)?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = e.path().map_err(io)?.to_string_lossy().into_owned();
        let name = path.trim_start_matches("./").to_string();
        let mut s = Vec::new();
        e.read_to_end(&mut s).map_err(io)?;
        out.insert(name, String::from_utf8_lossy(&s).into_owned());
    }
    Ok(out)
}

/// One member of a data archive, read but not yet in the tree.
#[derive(Debug)]
struct StagedItem {
    raw_path: String,
    mode: u32,
    uid: u32,
    gid: u32,
    kind: StagedKind,
}

#[derive(Debug)]
enum StagedKind {
    Node(Node),
    /// A hard link to an earlier member (its tar path as written).
    Link(String),
}

/// A package's data archive read ahead of insertion: the members' metadata
/// in memory, file bodies in memory when small and in the build's scratch
/// file otherwise ([`Blob`]). Reading (decompression) can run in parallel;
/// [`insert_staged`] then puts packages into the tree in lock order.
#[derive(Debug)]
pub struct StagedData {
    package: String,
    items: Vec<StagedItem>,
}

/// A `.deb` read from disk: its control members and its staged data.
#[derive(Debug)]
pub struct StagedDeb {
    /// Every control member by name (`control`, `postinst`...), as text.
    pub control_files: BTreeMap<String, String>,
    pub data: StagedData,
}

/// A streaming decompressor for archive member `member`.
fn decoder<'a>(
    package: &str,
    member: &str,
    r: impl Read + 'a,
) -> Result<Box<dyn Read + 'a>, DebError> {
    Ok(if member.ends_with(".xz") {
        Box::new(liblzma::read::XzDecoder::new(r))
    } else if member.ends_with(".zst") {
        Box::new(
            zstd::stream::read::Decoder::new(r).map_err(|source| DebError::Io {
                package: package.to_string(),
                member: member.to_string(),
                source,
            })?,
        )
    } else if member.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(r))
    } else if member.ends_with(".tar") {
        Box::new(r)
    } else {
        return Err(DebError::Compression {
            package: package.to_string(),
            member: member.to_string(),
        });
    })
}

/// Read the `.deb` at `path` without holding its decompressed data archive
/// in memory: file bodies larger than [`crate::blob::SPILL_THRESHOLD`] go
/// to `spill` as the archive streams by.
pub fn stage_deb(
    package: &str,
    path: &Path,
    spill: Option<&Arc<Spill>>,
) -> Result<StagedDeb, DebError> {
    let io = |member: &str| {
        let member = member.to_string();
        move |source| DebError::Io {
            package: package.to_string(),
            member,
            source,
        }
    };
    let f = File::open(path).map_err(io("the package file"))?;
    let mut ar = ar::Archive::new(BufReader::with_capacity(1 << 16, f));
    let mut version_ok = false;
    let mut control = None;
    let mut data = None;
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.map_err(|e| DebError::Format {
            package: package.to_string(),
            reason: format!("bad ar archive: {e}"),
        })?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_string();
        if name == "debian-binary" {
            let mut raw = Vec::new();
            entry.read_to_end(&mut raw).map_err(io(&name))?;
            version_ok = raw.starts_with(b"2.");
        } else if name.starts_with("control.tar") {
            let mut tar = Vec::new();
            decoder(package, &name, &mut entry)?
                .read_to_end(&mut tar)
                .map_err(io(&name))?;
            control = Some(read_control(package, &tar)?);
        } else if name.starts_with("data.tar") {
            let mut d = decoder(package, &name, &mut entry)?;
            data = Some(stage_data(package, &mut d, spill)?);
        }
    }
    if !version_ok {
        return Err(DebError::Format {
            package: package.to_string(),
            reason: "missing or unsupported debian-binary member (expected 2.x)".into(),
        });
    }
    match (control, data) {
        (Some(control_files), Some(data)) => Ok(StagedDeb {
            control_files,
            data,
        }),
        _ => Err(DebError::Format {
            package: package.to_string(),
            reason: "control.tar or data.tar member missing".into(),
        }),
    }
}

/// Read a (decompressed) data archive; see [`StagedData`].
pub fn stage_data(
    package: &str,
    data_tar: &mut dyn Read,
    spill: Option<&Arc<Spill>>,
) -> Result<StagedData, DebError> {
    let io = |source| DebError::Io {
        package: package.to_string(),
        member: "data.tar".into(),
        source,
    };
    let mut items = Vec::new();
    let mut tar = tar::Archive::new(data_tar);
    for e in tar.entries().map_err(io)? {
        let mut e = e.map_err(io)?;
        let header = e.header().clone();
        let raw_path = e.path().map_err(io)?.to_string_lossy().into_owned();
        let mode = header.mode().map_err(io)? & 0o7777;
        let uid = header.uid().map_err(io)? as u32;
        let gid = header.gid().map_err(io)? as u32;
        let link_name = |e: &tar::Entry<'_, _>| {
            e.link_name()
                .map(|t| {
                    t.map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .map_err(io)
        };
        let kind = match header.entry_type() {
            tar::EntryType::Directory => StagedKind::Node(Node::Dir),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = e.size();
                StagedKind::Node(Node::File(
                    Blob::read_from(&mut e, size, spill).map_err(io)?,
                ))
            }
            tar::EntryType::Symlink => StagedKind::Node(Node::Symlink(link_name(&e)?)),
            tar::EntryType::Link => StagedKind::Link(link_name(&e)?),
            tar::EntryType::Char => StagedKind::Node(Node::CharDevice(
                header.device_major().ok().flatten().unwrap_or(0),
                header.device_minor().ok().flatten().unwrap_or(0),
            )),
            tar::EntryType::Fifo => StagedKind::Node(Node::Fifo),
            other => {
                tracing::debug!(package, path = raw_path, kind = ?other, "skipping tar entry");
                continue;
            }
        };
        items.push(StagedItem {
            raw_path,
            mode,
            uid,
            gid,
            kind,
        });
    }
    Ok(StagedData {
        package: package.to_string(),
        items,
    })
}

/// Put a staged data archive into `tree`. Returns the canonical paths
/// written.
pub fn insert_staged(data: StagedData, tree: &mut Tree) -> Result<Vec<String>, DebError> {
    let package = data.package.as_str();
    let origin: Arc<str> = Arc::from(package);
    let terr = |source| DebError::Tree {
        package: package.to_string(),
        source,
    };
    let mut files = Vec::new();
    // tar path -> canonical tree path, for hard links that name earlier members.
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for it in data.items {
        let node = match it.kind {
            StagedKind::Node(n) => n,
            StagedKind::Link(target) => {
                let key = crate::tree::normalize(&target).unwrap_or_default();
                let canon = written.get(&key).cloned().ok_or_else(|| DebError::Format {
                    package: package.to_string(),
                    reason: format!(
                        "hard link {} points at {target}, which the archive has not shipped before it",
                        it.raw_path
                    ),
                })?;
                match tree.get(&canon) {
                    Some(existing) => existing.node.clone(),
                    None => {
                        return Err(DebError::Format {
                            package: package.to_string(),
                            reason: format!("hard link target {target} vanished"),
                        })
                    }
                }
            }
        };
        let is_dir = matches!(node, Node::Dir);
        let entry = Entry {
            node,
            mode: it.mode,
            uid: it.uid,
            gid: it.gid,
            origin: origin.clone(),
        };
        let canon = tree.insert(&it.raw_path, entry).map_err(terr)?;
        if let Some(key) = crate::tree::normalize(&it.raw_path) {
            written.insert(key, canon.clone());
        }
        if !is_dir && !canon.is_empty() {
            files.push(canon);
        }
    }
    Ok(files)
}

/// Unpack a data archive held in memory into `tree`. Returns the canonical
/// paths written.
pub fn unpack_data(
    package: &str,
    data_tar: &[u8],
    tree: &mut Tree,
) -> Result<Vec<String>, DebError> {
    insert_staged(stage_data(package, &mut Cursor::new(data_tar), None)?, tree)
}

/// Unpack a whole `.deb` into `tree`.
pub fn install(package: &str, deb: &[u8], tree: &mut Tree) -> Result<InstalledPackage, DebError> {
    let members = read_members(package, deb)?;
    let mut control_files = read_control(package, &members.control_tar)?;
    let control = control_files
        .remove("control")
        .ok_or_else(|| DebError::Format {
            package: package.to_string(),
            reason: "control.tar has no control file".into(),
        })?;
    let para = cairn_debian::deb822::parse(&control)
        .ok()
        .and_then(|mut v| {
            if v.is_empty() {
                None
            } else {
                Some(v.remove(0))
            }
        })
        .ok_or_else(|| DebError::Format {
            package: package.to_string(),
            reason: "unreadable control paragraph".into(),
        })?;
    let files = unpack_data(package, &members.data_tar, tree)?;
    Ok(InstalledPackage {
        name: para.get("Package").unwrap_or(package).to_string(),
        version: para.get("Version").unwrap_or("").to_string(),
        architecture: para.get("Architecture").unwrap_or("").to_string(),
        control,
        control_files,
        files,
    })
}

/// Build a `.deb` in memory: used by tests (here and in other modules) to
/// exercise extraction on packages they make themselves.
pub mod testing {
    use std::io::Write;

    /// One member of a test package's data archive.
    pub enum Item<'a> {
        Dir(&'a str, u32),
        File(&'a str, u32, &'a [u8]),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    fn tar_of(items: &[Item<'_>], owner: (u64, u64)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for it in items {
            let mut h = tar::Header::new_gnu();
            h.set_uid(owner.0);
            h.set_gid(owner.1);
            h.set_mtime(1_700_000_000);
            match it {
                Item::Dir(p, m) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*m);
                    h.set_size(0);
                    b.append_data(&mut h, p, std::io::empty()).unwrap();
                }
                Item::File(p, m, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*m);
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, p, *d).unwrap();
                }
                Item::Symlink(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
                Item::Hardlink(p, t) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o644);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// A `.deb` named `name` with `control` text, extra control members and
    /// data items; `compression` is "xz", "zst", "gz" or "" for the data tar.
    pub fn make_deb(
        name: &str,
        scripts: &[(&str, &str)],
        items: &[Item<'_>],
        compression: &str,
    ) -> Vec<u8> {
        let control = format!(
            "Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: t <t@example.org>\nDescription: test\n"
        );
        let mut citems = vec![Item::File("./control", 0o644, control.as_bytes())];
        for (n, s) in scripts {
            citems.push(Item::File(n, 0o755, s.as_bytes()));
        }
        let ctar = tar_of(&citems, (0, 0));
        let dtar = tar_of(items, (0, 0));
        let (dname, ddata) = match compression {
            "xz" => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(&dtar).unwrap();
                ("data.tar.xz", e.finish().unwrap())
            }
            "zst" => ("data.tar.zst", zstd::encode_all(&dtar[..], 1).unwrap()),
            "gz" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&dtar).unwrap();
                ("data.tar.gz", e.finish().unwrap())
            }
            _ => ("data.tar", dtar),
        };
        let mut out = Vec::new();
        {
            let mut a = ar::Builder::new(&mut out);
            let mut add = |n: &str, d: &[u8]| {
                let h = ar::Header::new(n.as_bytes().to_vec(), d.len() as u64);
                a.append(&h, d).unwrap();
            };
            add("debian-binary", b"2.0\n");
            add("control.tar", &ctar);
            add(dname, &ddata);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{make_deb, Item};
    use super::*;

    fn sample(compression: &str) -> Vec<u8> {
        make_deb(
            "hello",
            &[(
                "postinst",
                "#!/bin/sh\nupdate-alternatives --install /usr/bin/x x /usr/bin/y 10\n",
            )],
            &[
                Item::Dir("./", 0o755),
                Item::Dir("./bin/", 0o755),
                Item::File("./bin/hello", 0o4755, b"#!/bin/sh\necho hi\n"),
                Item::Dir("./usr/", 0o755),
                Item::Dir("./usr/share/", 0o755),
                Item::Dir("./usr/share/hello/", 0o700),
                Item::File("./usr/share/hello/data", 0o644, b"data"),
                Item::Hardlink("./usr/share/hello/data2", "./usr/share/hello/data"),
                Item::Symlink("./usr/bin/hi", "hello"),
            ],
            compression,
        )
    }

    #[test]
    fn unpacks_every_compression() {
        for c in ["xz", "zst", "gz", ""] {
            let mut t = Tree::new_merged_usr();
            let p = install("hello", &sample(c), &mut t).unwrap();
            assert_eq!(p.name, "hello");
            assert_eq!(p.version, "1.0-1");
            assert!(p.postinst().unwrap().contains("update-alternatives"));
            let e = t.get("usr/bin/hello").unwrap();
            assert_eq!(e.mode, 0o4755, "setuid kept ({c})");
            assert_eq!(&*t.read("bin/hello").unwrap(), b"#!/bin/sh\necho hi\n");
            assert_eq!(t.get("usr/share/hello").unwrap().mode, 0o700);
            assert_eq!(&*t.read("usr/bin/hi").unwrap(), b"#!/bin/sh\necho hi\n");
            assert_eq!(&*t.get("usr/bin/hello").unwrap().origin, "hello");
            // hard link shares content
            match (
                &t.get("usr/share/hello/data").unwrap().node,
                &t.get("usr/share/hello/data2").unwrap().node,
            ) {
                (Node::File(a), Node::File(b)) => assert_eq!(a.id(), b.id()),
                other => panic!("{other:?}"),
            }
            assert_eq!(
                p.files,
                [
                    "usr/bin/hello",
                    "usr/share/hello/data",
                    "usr/share/hello/data2",
                    "usr/bin/hi"
                ]
            );
        }
    }

    #[test]
    fn rejects_non_debs() {
        let e = install("junk", b"not an ar archive at all", &mut Tree::new()).unwrap_err();
        assert!(e.to_string().starts_with("junk: "), "{e}");
        let mut bad = sample("xz");
        let n = bad.len();
        bad[n - 100] ^= 0xff; // corrupt the xz stream
        let e = install("hello", &bad, &mut Tree::new_merged_usr()).unwrap_err();
        assert!(e.to_string().contains("hello"), "{e}");
    }
}
