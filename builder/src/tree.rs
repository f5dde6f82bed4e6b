//! The root tree being assembled, held in memory: every path with its kind,
//! content, mode, owner and the package it came from. Large file bodies are
//! not in memory but in the build's scratch file ([`Blob`]).
//!
//! Owns path canonicalisation (merged `/usr`: `/bin/x` is stored as
//! `usr/bin/x`), the rules for what happens when two packages ship the same
//! path, and lookups through directory symlinks. It does not know about
//! packages, fixups or output formats.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::blob::Blob;

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    /// Regular file; hard links share the same [`Blob`].
    File(Blob),
    /// Symbolic link with its target as written.
    Symlink(String),
    /// Character device (major, minor): rare in packages, kept for fidelity.
    CharDevice(u32, u32),
    Fifo,
}

/// One path of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub node: Node,
    /// Permission bits including setuid/setgid/sticky (`0o7777` mask).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Package that shipped the path, or the fixup that made it.
    pub origin: Arc<str>,
}

impl Entry {
    pub fn dir(mode: u32, origin: &Arc<str>) -> Self {
        Entry {
            node: Node::Dir,
            mode,
            uid: 0,
            gid: 0,
            origin: origin.clone(),
        }
    }

    pub fn file(data: impl Into<Vec<u8>>, mode: u32, origin: &Arc<str>) -> Self {
        Entry {
            node: Node::File(Blob::new(data)),
            mode,
            uid: 0,
            gid: 0,
            origin: origin.clone(),
        }
    }

    pub fn symlink(target: impl Into<String>, origin: &Arc<str>) -> Self {
        Entry {
            node: Node::Symlink(target.into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            origin: origin.clone(),
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.node, Node::Dir)
    }
}

/// Top-level directories that merged-/usr folds into `/usr`.
pub const USRMERGE_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// A tree of paths. Keys are relative, normalised (no leading `/`, no `.` or
/// `..`, no trailing `/`); the root itself is `""`.
#[derive(Debug, Clone)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

/// Why a path could not be put into the tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("path {0:?} leaves the root")]
    Escapes(String),
    #[error("{path}: a {existing} from {origin} is in the way of a directory")]
    NotADirectory {
        path: String,
        existing: &'static str,
        origin: String,
    },
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop { path: String },
}

/// Normalise a path as found in a tar archive or a configuration file:
/// strip `./` and `/`, resolve `.` and `..` lexically. Returns `None` for a
/// path that would leave the root.
pub fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Fold a normalised path into merged-/usr form: `bin/ls` -> `usr/bin/ls`.
pub fn usrmerge(path: &str) -> String {
    let first = path.split('/').next().unwrap_or("");
    if USRMERGE_DIRS.contains(&first) {
        format!("usr/{path}")
    } else {
        path.to_string()
    }
}

fn kind_name(n: &Node) -> &'static str {
    match n {
        Node::Dir => "directory",
        Node::File(_) => "file",
        Node::Symlink(_) => "symlink",
        Node::CharDevice(..) => "device",
        Node::Fifo => "fifo",
    }
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// An empty tree holding only the root directory (0755 root:root).
    pub fn new() -> Self {
        let mut entries = BTreeMap::new();
        entries.insert(String::new(), Entry::dir(0o755, &Arc::from("cairn")));
        Tree { entries }
    }

    /// A tree laid out for merged /usr: `usr/{bin,sbin,lib,lib64}` exist and
    /// `/bin`, `/sbin`, `/lib`, `/lib64` are symlinks into them.
    pub fn new_merged_usr() -> Self {
        let mut t = Tree::new();
        let origin: Arc<str> = Arc::from("fixup:usrmerge");
        t.entries.insert("usr".into(), Entry::dir(0o755, &origin));
        for d in ["bin", "sbin", "lib", "lib64"] {
            t.entries
                .insert(format!("usr/{d}"), Entry::dir(0o755, &origin));
            t.entries
                .insert(d.to_string(), Entry::symlink(format!("usr/{d}"), &origin));
        }
        t
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn get_mut(&mut self, path: &str) -> Option<&mut Entry> {
        self.entries.get_mut(path)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() <= 1
    }

    /// Every entry in path order (parents before children).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// Entries directly inside directory `dir` (`""` for the root).
    pub fn children<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a String, &'a Entry)> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let p2 = prefix.clone();
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter(move |(k, _)| {
                let rest = &k[p2.len()..];
                !rest.is_empty() && !rest.contains('/')
            })
    }

    /// Remove `path` and everything below it; returns how many entries went.
    pub fn remove_all(&mut self, path: &str) -> usize {
        let mut n = usize::from(self.entries.remove(path).is_some());
        let prefix = format!("{path}/");
        let below: Vec<String> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.entries.remove(&k);
            n += 1;
        }
        n
    }

    /// Keep only the entries for which `keep` returns true (the root stays).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &Entry) -> bool) {
        self.entries.retain(|k, e| k.is_empty() || keep(k, e));
    }

    /// Follow symlinks in the *parent* components of `path` (as the kernel
    /// would when creating `path`), returning the real location. The last
    /// component is not followed.
    pub fn resolve_parent(&self, path: &str) -> Result<String, TreeError> {
        let mut hops = 0;
        let mut current = path.to_string();
        'restart: loop {
            let parts: Vec<&str> = current.split('/').collect();
            for i in 0..parts.len().saturating_sub(1) {
                let prefix = parts[..=i].join("/");
                if let Some(Entry {
                    node: Node::Symlink(target),
                    ..
                }) = self.entries.get(&prefix)
                {
                    hops += 1;
                    if hops > 40 {
                        return Err(TreeError::SymlinkLoop {
                            path: path.to_string(),
                        });
                    }
                    let base = if target.starts_with('/') {
                        String::new()
                    } else {
                        parts[..i].join("/")
                    };
                    let joined = format!("{base}/{target}/{}", parts[i + 1..].join("/"));
                    current =
                        normalize(&joined).ok_or_else(|| TreeError::Escapes(path.to_string()))?;
                    continue 'restart;
                }
            }
            return Ok(current);
        }
    }

    /// Resolve `path` fully, following a final symlink too. Returns `None`
    /// for a dangling link.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut p = self.resolve_parent(&normalize(path)?).ok()?;
        for _ in 0..40 {
            match self.entries.get(&p) {
                Some(Entry {
                    node: Node::Symlink(target),
                    ..
                }) => {
                    let dir = p.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    let joined = if target.starts_with('/') {
                        target.clone()
                    } else {
                        format!("{dir}/{target}")
                    };
                    p = self.resolve_parent(&normalize(&joined)?).ok()?;
                }
                Some(_) => return Some(p),
                None => return None,
            }
        }
        None
    }

    /// Create the missing parent directories of `path` (0755 root:root).
    fn ensure_parents(&mut self, path: &str, origin: &Arc<str>) -> Result<(), TreeError> {
        let mut idx = 0;
        while let Some(pos) = path[idx..].find('/') {
            let dir = &path[..idx + pos];
            match self.entries.get(dir) {
                None => {
                    self.entries
                        .insert(dir.to_string(), Entry::dir(0o755, origin));
                }
                Some(e) if e.is_dir() => {}
                Some(e) => {
                    return Err(TreeError::NotADirectory {
                        path: dir.to_string(),
                        existing: kind_name(&e.node),
                        origin: e.origin.to_string(),
                    })
                }
            }
            idx += pos + 1;
        }
        Ok(())
    }

    /// Insert an entry at `path` (any form: leading `/`, `./`, unmerged
    /// `/bin`...), creating parents. Returns the canonical path used.
    ///
    /// Rules when the path exists: a directory over a directory keeps the
    /// first one's children and takes the new metadata; anything else
    /// replaces what was there (the later package wins, as dpkg does with
    /// `Replaces`), except that a directory is never replaced by a
    /// non-directory that would orphan its children.
    pub fn insert(&mut self, path: &str, entry: Entry) -> Result<String, TreeError> {
        let norm = normalize(path).ok_or_else(|| TreeError::Escapes(path.to_string()))?;
        if norm.is_empty() {
            // Metadata of the root itself (tar's "./").
            if entry.is_dir() {
                let root = self.entries.get_mut("").expect("root exists");
                root.mode = entry.mode;
            }
            return Ok(norm);
        }
        let merged = usrmerge(&norm);
        // A top-level usrmerge link itself (`./bin` as a dir in an old package)
        // is already provided by the merged layout.
        if merged != norm && !norm.contains('/') && entry.is_dir() {
            return Ok(merged);
        }
        let real = self.resolve_parent(&merged)?;
        self.ensure_parents(&real, &entry.origin)?;
        match self.entries.get_mut(&real) {
            Some(existing) if existing.is_dir() && entry.is_dir() => {
                existing.mode = entry.mode;
                existing.uid = entry.uid;
                existing.gid = entry.gid;
            }
            Some(existing) if existing.is_dir() => {
                let has_children = self.children(&real).next().is_some();
                if has_children {
                    return Err(TreeError::NotADirectory {
                        path: real,
                        existing: kind_name(&entry.node),
                        origin: entry.origin.to_string(),
                    });
                }
                self.entries.insert(real.clone(), entry);
            }
            _ => {
                self.entries.insert(real.clone(), entry);
            }
        }
        Ok(real)
    }

    /// Read a regular file's content (following symlinks): borrowed when
    /// it is in memory, read back when it was spilled.
    pub fn read(&self, path: &str) -> Option<Cow<'_, [u8]>> {
        let p = self.resolve(path)?;
        match &self.entries.get(&p)?.node {
            Node::File(d) => Some(d.bytes()),
            _ => None,
        }
    }

    /// Read a regular file as UTF-8 text (lossy).
    pub fn read_text(&self, path: &str) -> Option<String> {
        self.read(path)
            .map(|d| String::from_utf8_lossy(&d).into_owned())
    }

    /// Write (create or replace) a regular file, 0644 root:root unless it
    /// exists, in which case its mode and owner are kept.
    pub fn write_file(
        &mut self,
        path: &str,
        data: impl Into<Vec<u8>>,
        origin: &Arc<str>,
    ) -> Result<String, TreeError> {
        let norm = normalize(path).ok_or_else(|| TreeError::Escapes(path.to_string()))?;
        let real = self.resolve(&usrmerge(&norm));
        let data = data.into();
        if let Some(real) = real {
            if let Some(e) = self.entries.get_mut(&real) {
                if let Node::File(_) = e.node {
                    e.node = Node::File(Blob::from(data));
                    e.origin = origin.clone();
                    return Ok(real);
                }
            }
        }
        self.insert(path, Entry::file(data, 0o644, origin))
    }

    /// Total bytes of regular-file content (hard links counted once).
    pub fn content_bytes(&self) -> u64 {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .values()
            .filter_map(|e| match &e.node {
                Node::File(d) if seen.insert(d.id()) => Some(d.len()),
                _ => None,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o() -> Arc<str> {
        Arc::from("test")
    }

    #[test]
    fn normalize_strips_and_refuses_escape() {
        assert_eq!(normalize("./usr/bin/").unwrap(), "usr/bin");
        assert_eq!(normalize("/a/./b/../c").unwrap(), "a/c");
        assert_eq!(normalize("./").unwrap(), "");
        assert!(normalize("../etc/passwd").is_none());
        assert!(normalize("a/../../x").is_none());
    }

    #[test]
    fn usrmerge_folds_top_level_dirs() {
        let mut t = Tree::new_merged_usr();
        let p = t
            .insert("./bin/bash", Entry::file(b"x".to_vec(), 0o755, &o()))
            .unwrap();
        assert_eq!(p, "usr/bin/bash");
        let p = t
            .insert(
                "./lib/x86_64-linux-gnu/libc.so.6",
                Entry::file(b"y".to_vec(), 0o644, &o()),
            )
            .unwrap();
        assert_eq!(p, "usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(t.get("bin").unwrap().node, Node::Symlink("usr/bin".into()));
        // `./bin` as a directory in an old package leaves the link alone
        t.insert("./bin", Entry::dir(0o755, &o())).unwrap();
        assert_eq!(t.get("bin").unwrap().node, Node::Symlink("usr/bin".into()));
        assert_eq!(&*t.read("bin/bash").unwrap(), b"x");
        assert_eq!(&*t.read("/usr/bin/bash").unwrap(), b"x");
    }

    #[test]
    fn parents_are_created_and_dirs_merge() {
        let mut t = Tree::new();
        t.insert(
            "etc/ssh/sshd_config",
            Entry::file(b"a".to_vec(), 0o644, &o()),
        )
        .unwrap();
        assert!(t.get("etc").unwrap().is_dir());
        assert!(t.get("etc/ssh").unwrap().is_dir());
        let mut d = Entry::dir(0o700, &o());
        d.uid = 5;
        t.insert("etc/ssh", d).unwrap();
        assert_eq!(t.get("etc/ssh").unwrap().mode, 0o700);
        assert!(t.contains("etc/ssh/sshd_config"));
    }

    #[test]
    fn parent_symlinks_are_followed() {
        let mut t = Tree::new();
        t.insert("usr/lib/real", Entry::dir(0o755, &o())).unwrap();
        t.insert("usr/lib/alias", Entry::symlink("real", &o()))
            .unwrap();
        let p = t
            .insert(
                "usr/lib/alias/file",
                Entry::file(b"z".to_vec(), 0o644, &o()),
            )
            .unwrap();
        assert_eq!(p, "usr/lib/real/file");
        t.insert("etc/abs", Entry::symlink("/usr/lib/real", &o()))
            .unwrap();
        assert_eq!(t.resolve("etc/abs/file").unwrap(), "usr/lib/real/file");
    }

    #[test]
    fn symlink_loops_are_errors() {
        let mut t = Tree::new();
        t.insert("a", Entry::symlink("b", &o())).unwrap();
        t.insert("b", Entry::symlink("a", &o())).unwrap();
        assert!(matches!(
            t.insert("a/x", Entry::file(vec![], 0o644, &o())),
            Err(TreeError::SymlinkLoop { .. })
        ));
        assert!(t.resolve("a").is_none());
    }

    #[test]
    fn file_cannot_replace_populated_dir() {
        let mut t = Tree::new();
        t.insert("d/x", Entry::file(vec![], 0o644, &o())).unwrap();
        let err = t
            .insert("d", Entry::file(vec![], 0o644, &Arc::from("pkg-b")))
            .unwrap_err();
        assert!(err.to_string().contains("pkg-b"), "{err}");
        // but a file over a file replaces it (later package wins)
        t.insert("d/x", Entry::file(b"new".to_vec(), 0o644, &o()))
            .unwrap();
        assert_eq!(&*t.read("d/x").unwrap(), b"new");
    }

    #[test]
    fn children_and_remove_all() {
        let mut t = Tree::new();
        for p in ["a/b/c", "a/b/d", "a/e", "ab"] {
            t.insert(p, Entry::file(vec![], 0o644, &o())).unwrap();
        }
        let kids: Vec<_> = t.children("a").map(|(k, _)| k.as_str()).collect();
        assert_eq!(kids, ["a/b", "a/e"]);
        let top: Vec<_> = t.children("").map(|(k, _)| k.as_str()).collect();
        assert_eq!(top, ["a", "ab"]);
        assert_eq!(t.remove_all("a/b"), 3);
        assert!(t.contains("ab"));
        assert!(!t.contains("a/b/c"));
    }

    #[test]
    fn write_file_keeps_mode_of_existing() {
        let mut t = Tree::new();
        t.insert("etc/shadow", Entry::file(b"old".to_vec(), 0o640, &o()))
            .unwrap();
        t.write_file("/etc/shadow", b"new".to_vec(), &o()).unwrap();
        let e = t.get("etc/shadow").unwrap();
        assert_eq!(e.mode, 0o640);
        assert_eq!(&*t.read("etc/shadow").unwrap(), b"new");
    }

    #[test]
    fn content_bytes_counts_hardlinks_once() {
        let mut t = Tree::new();
        let e = Entry::file(vec![0u8; 100], 0o644, &o());
        t.insert("a", e.clone()).unwrap();
        t.insert("b", e).unwrap();
        t.insert("c", Entry::file(vec![0u8; 10], 0o644, &o()))
            .unwrap();
        assert_eq!(t.content_bytes(), 110);
    }
}
