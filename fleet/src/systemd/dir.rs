//! The units directory (`/run/fleet/units` by default): where the agent
//! writes unit files for systemd to link. The agent runs as root and
//! systemd reads these files as root, so nothing here may be steered by
//! another user: the directory is reached component by component with
//! `O_NOFOLLOW` from `/` (a symlink anywhere on the path is refused, not
//! followed), every component must belong to root or to us and be writable
//! by nobody else (sticky directories like `/tmp` excepted, for tests), and
//! every file operation is relative to the directory's descriptor
//! (`openat`, `renameat`, `unlinkat`), so a symlink planted inside is
//! replaced or removed, never written through.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{check_unit_name, SystemdError};

/// Mode of the directories this creates and of the unit files it writes
/// (systemd's own `/run/systemd/system` is 0755 with 0644 files).
const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;
/// A unit file larger than this is refused (systemd refuses lines over
/// 1 MiB; a unit of many MiB is a mistake or an attack).
pub const MAX_UNIT_FILE: usize = 4 << 20;

/// Temporary names: `.NAME.PID.N.tmp`, never a valid unit name.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An open, checked units directory.
#[derive(Debug)]
pub struct UnitsDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl UnitsDir {
    /// Opens `path`, creating it and its missing parents (mode 0755, owned
    /// by us). Refused: a relative or non-UTF-8 path, `.`/`..` components, a symlink
    /// anywhere on the path, a component that is not a directory, one owned
    /// by another user than root or us, one that others may write to
    /// (unless sticky, like `/tmp`); and for the directory itself, anything
    /// not owned by us or writable by group or others.
    pub fn open(path: impl Into<PathBuf>) -> Result<UnitsDir, SystemdError> {
        let path = path.into();
        let unsafe_dir = |reason: String| SystemdError::UnsafeDir {
            path: path.clone(),
            reason,
        };
        if !path.is_absolute() {
            return Err(unsafe_dir("the path must be absolute".into()));
        }
        if path.to_str().is_none() {
            // systemd is given the path as a D-Bus string.
            return Err(unsafe_dir("the path must be UTF-8".into()));
        }
        let mut names = Vec::new();
        for c in path.components() {
            match c {
                Component::RootDir => {}
                Component::Normal(n) => names.push(n.to_owned()),
                _ => {
                    return Err(unsafe_dir(
                        "'.' and '..' are not allowed in the path".into(),
                    ))
                }
            }
        }
        let io = |e: Errno| SystemdError::Dir {
            path: path.clone(),
            source: Arc::new(e.into()),
        };
        let me = rustix::process::geteuid().as_raw();
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut fd = rfs::openat(rfs::CWD, "/", dir_flags, Mode::empty()).map_err(io)?;
        let mut so_far = PathBuf::from("/");
        check_component(&so_far, &fd, me, names.is_empty()).map_err(unsafe_dir)?;
        for (i, name) in names.iter().enumerate() {
            so_far.push(name);
            let last = i + 1 == names.len();
            let next = match rfs::openat(&fd, name.as_os_str(), dir_flags, Mode::empty()) {
                Ok(next) => next,
                Err(Errno::NOENT) => {
                    match rfs::mkdirat(&fd, name.as_os_str(), Mode::from_raw_mode(DIR_MODE)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io(e)),
                    }
                    rfs::openat(&fd, name.as_os_str(), dir_flags, Mode::empty())
                        .map_err(|e| refusal(&fd, name.as_os_str(), &so_far, e, unsafe_dir, io))?
                }
                Err(e) => return Err(refusal(&fd, name.as_os_str(), &so_far, e, unsafe_dir, io)),
            };
            check_component(&so_far, &next, me, last).map_err(unsafe_dir)?;
            fd = next;
        }
        Ok(UnitsDir { path, fd })
    }

    /// The directory's path, as given to [`UnitsDir::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of unit `name`'s file (what systemd is asked to link).
    pub fn unit_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes unit `name` atomically: a new temporary file (`O_EXCL`,
    /// `O_NOFOLLOW`, mode 0644) renamed over the name. Whatever was there
    /// (a file, a planted symlink) is replaced, never written through.
    pub fn write(&self, name: &str, contents: &[u8]) -> Result<(), SystemdError> {
        check_unit_name(name)?;
        let err = |what: &'static str, e: std::io::Error| SystemdError::File {
            unit: name.to_string(),
            what,
            path: self.unit_path(name),
            source: Arc::new(e),
        };
        if contents.len() > MAX_UNIT_FILE {
            return Err(err(
                "writing",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} bytes, more than {MAX_UNIT_FILE}", contents.len()),
                ),
            ));
        }
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let (tmp, fd) = loop {
            let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = format!(".{name}.{}.{n}.tmp", std::process::id());
            match rfs::openat(
                &self.fd,
                tmp.as_str(),
                flags,
                Mode::from_raw_mode(FILE_MODE),
            ) {
                Ok(fd) => break (tmp, fd),
                // Something (planted or left over) has that name: take the next.
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(err("creating a temporary file for", e.into())),
            }
        };
        let written = (|| {
            // The umask may have narrowed the mode; systemd needs no more,
            // but `systemctl cat` as a user reads the file like fleet's.
            rfs::fchmod(&fd, Mode::from_raw_mode(FILE_MODE))?;
            let mut file = File::from(fd);
            file.write_all(contents)?;
            file.flush()?;
            rfs::renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
            Ok::<(), std::io::Error>(())
        })();
        if let Err(e) = written {
            let _ = rfs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
            return Err(err("writing", e));
        }
        Ok(())
    }

    /// Removes unit `name`'s file (or whatever entry has its name: a
    /// symlink is removed, not followed). `false` when there was none.
    pub fn remove(&self, name: &str) -> Result<bool, SystemdError> {
        check_unit_name(name)?;
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(SystemdError::File {
                unit: name.to_string(),
                what: "removing",
                path: self.unit_path(name),
                source: Arc::new(e.into()),
            }),
        }
    }

    /// Reads unit `name`'s file: `None` when there is none. Only a regular
    /// file is read (a symlink or a FIFO is refused).
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, SystemdError> {
        check_unit_name(name)?;
        let err = |e: std::io::Error| SystemdError::File {
            unit: name.to_string(),
            what: "reading",
            path: self.unit_path(name),
            source: Arc::new(e),
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rfs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(err(e.into())),
        };
        let st = rfs::fstat(&fd).map_err(|e| err(e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a regular file",
            )));
        }
        let mut buf = Vec::new();
        File::from(fd)
            .take(MAX_UNIT_FILE as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(err)?;
        if buf.len() > MAX_UNIT_FILE {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("more than {MAX_UNIT_FILE} bytes"),
            )));
        }
        Ok(Some(buf))
    }

    /// The units in the directory: regular files with valid unit names, in
    /// name order. Temporary files left by a crash are removed; anything
    /// else (a symlink, a stray file) is left alone and not listed.
    pub fn list(&self) -> Result<Vec<String>, SystemdError> {
        let io = |e: Errno| SystemdError::Dir {
            path: self.path.clone(),
            source: Arc::new(e.into()),
        };
        let mut names = Vec::new();
        let dir = rfs::Dir::read_from(&self.fd).map_err(io)?;
        for entry in dir {
            let entry = entry.map_err(io)?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = rfs::unlinkat(&self.fd, name, AtFlags::empty());
                continue;
            }
            if check_unit_name(name).is_err() {
                continue;
            }
            let st = match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(io(e)),
            };
            if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Why opening `name` under `parent` failed, in words: a symlink or a
/// non-directory is a refusal, anything else an I/O error.
fn refusal(
    parent: &OwnedFd,
    name: &std::ffi::OsStr,
    so_far: &Path,
    e: Errno,
    unsafe_dir: impl Fn(String) -> SystemdError,
    io: impl Fn(Errno) -> SystemdError,
) -> SystemdError {
    if e == Errno::LOOP || e == Errno::NOTDIR {
        let what = match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => "a symlink",
            _ => "not a directory",
        };
        return unsafe_dir(format!(
            "{} is {what}; refusing to follow or replace it",
            so_far.display()
        ));
    }
    io(e)
}

/// The checks on one opened component (see [`UnitsDir::open`]).
fn check_component(path: &Path, fd: &OwnedFd, me: u32, last: bool) -> Result<(), String> {
    let st = rfs::fstat(fd.as_fd()).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = st.st_mode & 0o7777;
    let owner = st.st_uid;
    if last {
        if owner != me {
            return Err(format!(
                "{} belongs to uid {owner}, not to this agent (uid {me})",
                path.display()
            ));
        }
        if mode & 0o022 != 0 {
            return Err(format!(
                "{} is writable by group or others (mode {mode:04o})",
                path.display()
            ));
        }
        return Ok(());
    }
    if owner != 0 && owner != me {
        return Err(format!(
            "{} belongs to uid {owner}, who could replace what lies below it",
            path.display()
        ));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "{} is writable by group or others and not sticky (mode {mode:04o})",
            path.display()
        ));
    }
    Ok(())
}
