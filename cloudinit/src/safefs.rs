//! Files under the target root reached without following links a user could have planted: every path is walked from the root one component at a time with `openat(O_NOFOLLOW)`, and owners and modes are set on the opened descriptors.
//!
//! The agent runs as root and writes into directories users own (`~/.ssh`,
//! or any `write_files` path). A symlink is followed only when nobody but
//! root could have made it: the link is owned by root and every directory
//! from the root down to it is owned by root and writable by nobody else (no
//! group or other write bit, so not `/tmp`). `/var/run -> /run` is followed;
//! `~/.ssh -> /etc` is refused, logged and reported, and nothing is changed
//! through it. Running as another user (tests), that user counts as root.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{
    fchmod, fchown, fstat, fsync, mkdirat, openat, readlinkat, renameat, statat, symlinkat,
    unlinkat, AtFlags, FileType, Mode, OFlags, Stat, CWD,
};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};
use thiserror::Error;

use crate::fsutil::Written;

/// Most symlinks followed while resolving one path (as the kernel's limit).
pub const MAX_SYMLINKS: usize = 40;

/// Why a file operation under the root failed.
#[derive(Debug, Error)]
pub enum FsError {
    /// The path goes through something the agent must not touch as root.
    #[error("refusing {path}: {why}")]
    Refused { path: String, why: String },
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The path is not one this agent writes (`..`, empty).
    #[error("path {path:?}: {why}")]
    BadPath { path: String, why: &'static str },
}

impl FsError {
    /// Whether the path (or a directory on the way) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    fn refused(path: String, why: String) -> FsError {
        tracing::warn!("refusing {path}: {why}");
        FsError::Refused { path, why }
    }
}

fn io(what: &'static str, path: &str, e: Errno) -> FsError {
    FsError::Io {
        what,
        path: path.to_string(),
        source: e.into(),
    }
}

/// Owners whose files count as root's: root, and the user running the agent.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

fn is_symlink(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Symlink
}

/// The normal components of `path` (absolute or not); `..` is refused.
pub fn components(path: &str) -> Result<Vec<String>, FsError> {
    let mut out = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            Component::ParentDir => {
                return Err(FsError::BadPath {
                    path: path.to_string(),
                    why: "'..' is not allowed",
                })
            }
            Component::Prefix(_) => {
                return Err(FsError::BadPath {
                    path: path.to_string(),
                    why: "not a Unix path",
                })
            }
        }
    }
    Ok(out)
}

/// An open directory under the root, with its path as seen on the target.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: String,
    /// Only root (or the agent's user) can change what it contains.
    trusted: bool,
}

/// One name looked up in a directory.
enum Entry {
    Dir(Dir, bool),
    Symlink(Stat),
    Missing,
    NotDir,
}

impl Dir {
    /// The target root itself (given by the administrator, so trusted).
    pub fn open_root(root: &Path) -> Result<Dir, FsError> {
        let fd = openat(
            CWD,
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("opening root", &root.display().to_string(), e))?;
        Ok(Dir {
            fd,
            path: "/".to_string(),
            trusted: true,
        })
    }

    /// The directory's path on the target ("/home/core/.ssh").
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `name` in this directory, as a path on the target.
    pub fn join(&self, name: &str) -> String {
        if self.path == "/" {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.path)
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// fstat of the directory.
    pub fn stat(&self) -> Result<Stat, FsError> {
        fstat(&self.fd).map_err(|e| io("stat of", &self.path, e))
    }

    fn child(&self, fd: OwnedFd, name: &str) -> Result<Dir, FsError> {
        let path = self.join(name);
        let st = fstat(&fd).map_err(|e| io("stat of", &path, e))?;
        Ok(Dir {
            fd,
            trusted: self.trusted && trusted_owner(st.st_uid) && st.st_mode & 0o022 == 0,
            path,
        })
    }

    /// Looks `name` up without following it; a missing directory is made
    /// with `create` as its mode (exactly, whatever the umask).
    fn entry(&self, name: &str, create: Option<u32>) -> Result<Entry, FsError> {
        let path = self.join(name);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        for _ in 0..8 {
            match openat(&self.fd, name, flags, Mode::empty()) {
                Ok(fd) => return Ok(Entry::Dir(self.child(fd, name)?, false)),
                Err(Errno::NOENT) => {
                    let Some(mode) = create else {
                        return Ok(Entry::Missing);
                    };
                    match mkdirat(&self.fd, name, Mode::from_raw_mode(mode)) {
                        Ok(()) => {}
                        Err(Errno::EXIST) => continue,
                        Err(e) => return Err(io("creating directory", &path, e)),
                    }
                    let fd = openat(&self.fd, name, flags, Mode::empty())
                        .map_err(|e| io("opening the new directory", &path, e))?;
                    fchmod(&fd, Mode::from_raw_mode(mode))
                        .map_err(|e| io("setting the mode of", &path, e))?;
                    return Ok(Entry::Dir(self.child(fd, name)?, true));
                }
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    match statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if is_symlink(&st) => return Ok(Entry::Symlink(st)),
                        Ok(_) => return Ok(Entry::NotDir),
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Err(io("stat of", &path, e)),
                    }
                }
                Err(e) => return Err(io("opening directory", &path, e)),
            }
        }
        Err(io("opening directory", &path, Errno::AGAIN))
    }

    /// The target of symlink `name` (with stat `st`) when only root could
    /// have made it; refused (and logged) otherwise.
    fn trusted_link(&self, name: &str, st: &Stat) -> Result<String, FsError> {
        let path = self.join(name);
        if !self.trusted {
            return Err(FsError::refused(
                path,
                format!(
                    "a symbolic link in {}, which a user other than root can change",
                    self.path
                ),
            ));
        }
        if !trusted_owner(st.st_uid) {
            return Err(FsError::refused(
                path,
                format!("a symbolic link owned by uid {}", st.st_uid),
            ));
        }
        let target =
            readlinkat(&self.fd, name, Vec::new()).map_err(|e| io("reading the link", &path, e))?;
        Ok(target.to_string_lossy().into_owned())
    }

    /// Subdirectory `name`, never through a symlink whoever owns it; made
    /// with `create` as its mode when missing. Returns it and whether it
    /// was made now.
    pub fn subdir_nofollow(&self, name: &str, create: Option<u32>) -> Result<(Dir, bool), FsError> {
        match self.entry(name, create)? {
            Entry::Dir(d, created) => Ok((d, created)),
            Entry::Symlink(_) => Err(FsError::refused(
                self.join(name),
                "a symbolic link where a directory is expected".to_string(),
            )),
            Entry::Missing => Err(io("opening directory", &self.join(name), Errno::NOENT)),
            Entry::NotDir => Err(io("opening directory", &self.join(name), Errno::NOTDIR)),
        }
    }

    /// fchown and fchmod of the directory itself.
    pub fn set_owner_mode(&self, uid: u32, gid: u32, mode: u32) -> Result<(), FsError> {
        fchown(&self.fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| io("chown of", &self.path, e))?;
        fchmod(&self.fd, Mode::from_raw_mode(mode)).map_err(|e| io("chmod of", &self.path, e))
    }

    /// Opens `name` for reading when it is a regular file (not through a
    /// symlink, not a FIFO or device); None when missing.
    pub fn open_regular(&self, name: &str) -> Result<Option<(std::fs::File, Stat)>, FsError> {
        let path = self.join(name);
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => {
                let st = fstat(&fd).map_err(|e| io("stat of", &path, e))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return Err(FsError::refused(path, "not a regular file".to_string()));
                }
                Ok(Some((std::fs::File::from(fd), st)))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::LOOP) => Err(FsError::refused(
                path,
                "a symbolic link where a file is expected".to_string(),
            )),
            Err(e) => Err(io("opening", &path, e)),
        }
    }

    /// The content of regular file `name` (see [`Dir::open_regular`]), at
    /// most `max` bytes; None when missing.
    pub fn read(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, FsError> {
        let Some((file, st)) = self.open_regular(name)? else {
            return Ok(None);
        };
        read_limited(file, &st, max, &self.join(name)).map(Some)
    }

    /// Writes `content` to `name` atomically: a new file made here
    /// (`O_EXCL`, never through a link), owner and mode set on its
    /// descriptor, fsync, `renameat` over `name` (which replaces a symlink
    /// rather than following it), fsync of the directory. An existing
    /// regular file with that content, mode and owner is left alone.
    /// `owner` None: the agent's own ids.
    pub fn write(
        &self,
        name: &str,
        content: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<Written, FsError> {
        let path = self.join(name);
        if self.unchanged(name, content, mode, owner) {
            return Ok(Written::Unchanged);
        }
        let (tmp, fd) = self.create_temp(&path)?;
        let res = (|| {
            let mut file = std::fs::File::from(fd);
            file.write_all(content).map_err(|e| FsError::Io {
                what: "writing the new",
                path: path.clone(),
                source: e,
            })?;
            if let Some((uid, gid)) = owner {
                fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                    .map_err(|e| io("chown of the new", &path, e))?;
            }
            // after chown, which clears set-id bits
            fchmod(&file, Mode::from_raw_mode(mode))
                .map_err(|e| io("chmod of the new", &path, e))?;
            fsync(&file).map_err(|e| io("fsync of the new", &path, e))?;
            renameat(&self.fd, tmp.as_str(), &self.fd, name)
                .map_err(|e| io("renaming into place", &path, e))
        })();
        if let Err(e) = res {
            let _ = unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
            return Err(e);
        }
        let _ = fsync(&self.fd);
        Ok(Written::Changed)
    }

    fn unchanged(&self, name: &str, content: &[u8], mode: u32, owner: Option<(u32, u32)>) -> bool {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let Ok(fd) = openat(&self.fd, name, flags, Mode::empty()) else {
            return false;
        };
        let Ok(st) = fstat(&fd) else {
            return false;
        };
        let owner_ok = owner.is_none_or(|(u, g)| st.st_uid == u && st.st_gid == g);
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || st.st_mode & 0o7777 != mode
            || !owner_ok
            || u64::try_from(st.st_size).ok() != Some(content.len() as u64)
        {
            return false;
        }
        let mut old = Vec::with_capacity(content.len());
        std::fs::File::from(fd)
            .take(content.len() as u64 + 1)
            .read_to_end(&mut old)
            .is_ok_and(|_| old == content)
    }

    /// A new empty file with a name of its own in this directory, mode 0600.
    fn create_temp(&self, path: &str) -> Result<(String, OwnedFd), FsError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let flags = OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::NOCTTY
            | OFlags::CLOEXEC;
        let mut last = Errno::EXIST;
        for _ in 0..32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let tmp = format!(
                ".cairn-cloudinit.{}.{}.{nanos:08x}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            match openat(&self.fd, tmp.as_str(), flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => return Ok((tmp, fd)),
                Err(Errno::EXIST) => last = Errno::EXIST,
                Err(e) => return Err(io("creating a temporary file for", path, e)),
            }
        }
        Err(io("creating a temporary file for", path, last))
    }

    /// Makes `name` a symlink to `target` (unless it already is exactly
    /// that), replacing a file or link there.
    pub fn symlink_force(&self, name: &str, target: &str) -> Result<Written, FsError> {
        let path = self.join(name);
        if readlinkat(&self.fd, name, Vec::new()).is_ok_and(|t| t.as_bytes() == target.as_bytes()) {
            return Ok(Written::Unchanged);
        }
        self.remove(name)?;
        symlinkat(target, &self.fd, name).map_err(|e| io("symlinking", &path, e))?;
        Ok(Written::Changed)
    }

    /// Removes file or link `name` (never what a link points to); nothing
    /// when missing.
    pub fn remove(&self, name: &str) -> Result<(), FsError> {
        match unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io("removing", &self.join(name), e)),
        }
    }
}

/// Reads an opened regular file, refusing one larger than `max` bytes.
pub fn read_limited(
    file: std::fs::File,
    st: &Stat,
    max: u64,
    path: &str,
) -> Result<Vec<u8>, FsError> {
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let too_big = || FsError::refused(path.to_string(), format!("larger than {max} bytes"));
    if size > max {
        return Err(too_big());
    }
    let mut out = Vec::with_capacity(size as usize);
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| FsError::Io {
            what: "reading",
            path: path.to_string(),
            source: e,
        })?;
    if out.len() as u64 > max {
        return Err(too_big());
    }
    Ok(out)
}

/// Walks `queue` from the directories of `stack` (the root first), making
/// missing directories 0755 when `create`; a symlink on the way is followed
/// only when trusted. Returns the stack, the directory reached last.
fn walk(
    mut stack: Vec<Dir>,
    mut queue: VecDeque<String>,
    create: bool,
    links: &mut usize,
) -> Result<Vec<Dir>, FsError> {
    while let Some(name) = queue.pop_front() {
        match name.as_str() {
            "" | "." => continue,
            ".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let top = stack.last().expect("the root stays on the stack");
        match top.entry(&name, create.then_some(0o755))? {
            Entry::Dir(d, _) => stack.push(d),
            Entry::Missing => return Err(io("opening directory", &top.join(&name), Errno::NOENT)),
            Entry::NotDir => return Err(io("opening directory", &top.join(&name), Errno::NOTDIR)),
            Entry::Symlink(st) => {
                let target = top.trusted_link(&name, &st)?;
                let shown = top.join(&name);
                expand(&mut stack, &mut queue, &target, links, &shown)?;
            }
        }
    }
    Ok(stack)
}

/// Puts a followed link's target in front of what is left to walk.
fn expand(
    stack: &mut Vec<Dir>,
    queue: &mut VecDeque<String>,
    target: &str,
    links: &mut usize,
    path: &str,
) -> Result<(), FsError> {
    *links += 1;
    if *links > MAX_SYMLINKS {
        return Err(io("resolving", path, Errno::LOOP));
    }
    if target.starts_with('/') {
        stack.truncate(1);
    }
    for c in target.split('/').rev() {
        queue.push_front(c.to_string());
    }
    Ok(())
}

/// The directory `path` names under `root` (missing ones made 0755 when
/// `create`).
pub fn open_dir(root: &Path, path: &str, create: bool) -> Result<Dir, FsError> {
    let comps = components(path)?;
    let mut links = 0;
    let mut stack = walk(
        vec![Dir::open_root(root)?],
        comps.into(),
        create,
        &mut links,
    )?;
    Ok(stack.pop().expect("the root stays on the stack"))
}

/// The directory holding `path` under `root` (missing ones made 0755 when
/// `create`) and the file's name in it. With `follow_final`, a trusted
/// symlink at `path` itself is resolved too (for reading); otherwise the
/// name is returned as it is (a write replaces a link, never follows it).
pub fn open_parent(
    root: &Path,
    path: &str,
    create: bool,
    follow_final: bool,
) -> Result<(Dir, String), FsError> {
    let mut comps: VecDeque<String> = components(path)?.into();
    let Some(mut name) = comps.pop_back() else {
        return Err(FsError::BadPath {
            path: path.to_string(),
            why: "names no file",
        });
    };
    let mut links = 0;
    let mut stack = walk(vec![Dir::open_root(root)?], comps, create, &mut links)?;
    if follow_final {
        loop {
            let top = stack.last().expect("the root stays on the stack");
            let st = match statat(top.fd(), name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if is_symlink(&st) => st,
                _ => break,
            };
            let target = top.trusted_link(&name, &st)?;
            let shown = top.join(&name);
            let mut queue = VecDeque::new();
            expand(&mut stack, &mut queue, &target, &mut links, &shown)?;
            name = match queue.pop_back() {
                Some(n) if !matches!(n.as_str(), "" | "." | "..") => n,
                _ => {
                    return Err(FsError::Io {
                        what: "resolving",
                        path: shown,
                        source: std::io::Error::from(std::io::ErrorKind::IsADirectory),
                    })
                }
            };
            stack = walk(stack, queue, create, &mut links)?;
        }
    }
    let dir = stack.pop().expect("the root stays on the stack");
    Ok((dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    #[test]
    fn components_refuse_dotdot() {
        assert_eq!(components("/etc/./x").unwrap(), ["etc", "x"]);
        assert!(matches!(
            components("/a/../b"),
            Err(FsError::BadPath { .. })
        ));
        assert!(components("/").unwrap().is_empty());
    }

    #[test]
    fn trusted_links_are_followed_and_paths_are_shown_as_on_the_target() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("run/lock")).unwrap();
        fs::create_dir_all(r.join("var")).unwrap();
        symlink("../run", r.join("var/run")).unwrap();
        symlink("/run/lock", r.join("var/lock")).unwrap();
        let d = open_dir(r, "/var/run/lock", false).unwrap();
        assert_eq!(d.path(), "/run/lock");
        let d = open_dir(r, "/var/lock/x/y", true).unwrap();
        assert_eq!(d.path(), "/run/lock/x/y");
        assert!(r.join("run/lock/x/y").is_dir());
        assert_eq!(
            fs::metadata(r.join("run/lock/x")).unwrap().mode() & 0o7777,
            0o755
        );
        // a final link is resolved for reading, replaced (not followed) for writing
        fs::write(r.join("run/f"), "data").unwrap();
        symlink("../run/f", r.join("var/f")).unwrap();
        let (d, name) = open_parent(r, "/var/f", false, true).unwrap();
        assert_eq!((d.path(), name.as_str()), ("/run", "f"));
        assert_eq!(d.read(&name, 100).unwrap().unwrap(), b"data");
        let (d, name) = open_parent(r, "/var/f", false, false).unwrap();
        assert_eq!((d.path(), name.as_str()), ("/var", "f"));
        // loops end
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        assert!(open_dir(r, "/loop1/x", false).is_err());
        assert!(open_dir(r, "/nope", false).unwrap_err().is_not_found());
    }

    #[test]
    fn links_in_directories_others_can_write_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("tmp")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::set_permissions(r.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        symlink("/etc", r.join("tmp/e")).unwrap();
        let e = open_dir(r, "/tmp/e", false).unwrap_err();
        assert!(
            matches!(&e, FsError::Refused { path, .. } if path == "/tmp/e"),
            "{e}"
        );
        assert!(e.to_string().contains("a user other than root"), "{e}");
    }

    #[test]
    fn write_and_read_refuse_special_files() {
        let t = tempfile::tempdir().unwrap();
        let d = open_dir(t.path(), "/", false).unwrap();
        rustix::fs::mkfifoat(d.fd(), "fifo", Mode::from_raw_mode(0o600)).unwrap();
        let e = d.read("fifo", 10).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        fs::write(t.path().join("big"), vec![b'x'; 11]).unwrap();
        let e = d.read("big", 10).unwrap_err();
        assert!(e.to_string().contains("larger than 10 bytes"), "{e}");
        assert_eq!(d.read("missing", 10).unwrap(), None);
        // a write replaces the FIFO instead of opening it
        assert_eq!(
            d.write("fifo", b"x", 0o644, None).unwrap(),
            Written::Changed
        );
        assert!(fs::metadata(t.path().join("fifo")).unwrap().is_file());
    }
}
