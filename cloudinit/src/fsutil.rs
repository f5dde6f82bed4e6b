//! Files under the target root: path joining, owner lookup in the root's /etc/passwd and /etc/group, atomic writes that never follow a user's symlink (on [`safefs`]).

use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::safefs;

/// `path` (absolute or not) placed under `root`; `..` is refused so that a
/// config cannot write outside the root.
pub fn under(root: &Path, path: &str) -> Result<PathBuf> {
    let mut out = root.to_path_buf();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => bail!("path {path:?}: '..' is not allowed"),
            Component::Prefix(_) => bail!("path {path:?}: not a Unix path"),
        }
    }
    if out == root {
        bail!("path {path:?}: names no file");
    }
    Ok(out)
}

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// The users and groups of a root, read from its /etc/passwd and /etc/group
/// (not NSS: under `--root` the host's database would be the wrong one).
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    pub users: Vec<PasswdEntry>,
    pub groups: Vec<(String, u32)>,
}

impl Accounts {
    pub fn parse(passwd: &str, group: &str) -> Accounts {
        let users = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 7).then_some(())?;
                Some(PasswdEntry {
                    name: f[0].to_string(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    home: f[5].to_string(),
                })
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3).then_some(())?;
                Some((f[0].to_string(), f[2].parse().ok()?))
            })
            .collect();
        Accounts { users, groups }
    }

    /// Reads `root`/etc/passwd and `root`/etc/group (missing files: empty).
    pub fn load(root: &Path) -> Result<Accounts> {
        let read = |p: &str| -> Result<String> {
            let path = root.join(p);
            match fs::read_to_string(&path) {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
            }
        };
        Ok(Accounts::parse(&read("etc/passwd")?, &read("etc/group")?))
    }

    pub fn user(&self, name: &str) -> Option<&PasswdEntry> {
        self.users.iter().find(|u| u.name == name)
    }

    fn uid(&self, spec: &str) -> Option<(u32, u32)> {
        if let Some(u) = self.user(spec) {
            return Some((u.uid, u.gid));
        }
        let uid: u32 = spec.parse().ok()?;
        let gid = self
            .users
            .iter()
            .find(|u| u.uid == uid)
            .map_or(uid, |u| u.gid);
        Some((uid, gid))
    }

    fn gid(&self, spec: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|(n, _)| n == spec)
            .map(|(_, g)| *g)
            .or_else(|| spec.parse().ok())
    }

    /// `user`, `user:group`, `user.group`, `:group` or numeric ids, as
    /// chown(1) takes them. A user alone gets its primary group.
    pub fn resolve_owner(&self, owner: &str) -> Result<(u32, u32)> {
        let (u, g) = match owner.split_once(':').or_else(|| {
            // "user.group" only when "user.group" is not itself a user name
            if self.user(owner).is_none() {
                owner.split_once('.')
            } else {
                None
            }
        }) {
            Some((u, g)) => (u, Some(g)),
            None => (owner, None),
        };
        let (uid, primary) = if u.is_empty() {
            (0, 0)
        } else {
            self.uid(u).with_context(|| {
                format!("owner {owner:?}: no user {u:?} in the root's /etc/passwd")
            })?
        };
        let gid = match g {
            None | Some("") => primary,
            Some(g) => self.gid(g).with_context(|| {
                format!("owner {owner:?}: no group {g:?} in the root's /etc/group")
            })?,
        };
        Ok((uid, gid))
    }
}

/// Creates directory `path` under `root` and its missing parents with mode
/// 0755, without following a symlink a user could have made (see
/// [`safefs`]).
pub fn ensure_dir(root: &Path, path: &str) -> Result<()> {
    safefs::open_dir(root, path, true)?;
    Ok(())
}

/// Whether a write changed the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Changed,
    Unchanged,
}

/// Writes `content` to `path` under `root` atomically: a temporary file in
/// the same directory, owner and mode set on it, fsync, rename over `path`,
/// fsync of the directory. Parent directories are created 0755. When `path`
/// already is a regular file with that content, mode and owner nothing is
/// touched (so that a second run leaves the tree, times included, as it
/// was). `owner` None means root:root... unless not running as root, then
/// the caller's ids (the file is simply not chowned). The directories are
/// reached without following a symlink a user could have made, and a
/// symlink at `path` itself is replaced, not followed (see [`safefs`]).
pub fn write_atomic(
    root: &Path,
    path: &str,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<Written> {
    let (dir, name) = safefs::open_parent(root, path, true, false)?;
    Ok(dir.write(&name, content, mode, owner)?)
}

/// Replaces whatever is at `path` under `root` by a symlink to `target`
/// (unless it already is exactly that).
pub fn symlink_force(root: &Path, path: &str, target: &str) -> Result<Written> {
    let (dir, name) = safefs::open_parent(root, path, true, false)?;
    Ok(dir.symlink_force(&name, target)?)
}

/// Removes the file or link `path` under `root` (nothing when missing).
pub fn remove_file(root: &Path, path: &str) -> Result<()> {
    match safefs::open_parent(root, path, false, false) {
        Ok((dir, name)) => Ok(dir.remove(&name)?),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The most a configuration file the agent merges into may hold.
pub const MAX_READ: u64 = 16 << 20;

/// The text of regular file `path` under `root` (symlinks followed only
/// when trusted, see [`safefs`]); empty when it or its directory is
/// missing.
pub fn read_or_empty(root: &Path, path: &str) -> Result<String> {
    let bytes = match safefs::open_parent(root, path, false, true) {
        Ok((dir, name)) => dir.read(&name, MAX_READ)?.unwrap_or_default(),
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    String::from_utf8(bytes).with_context(|| format!("{path}: not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\ncore:x:500:500:Core:/home/core:/bin/bash\nweb.admin:x:600:33::/srv:/bin/sh\nbroken line\n";
    const GROUP: &str = "root:x:0:\nwww-data:x:33:\ncore:x:500:\ndocker:x:999:core\n";

    #[test]
    fn owners_resolve_from_the_roots_files() {
        let a = Accounts::parse(PASSWD, GROUP);
        let cases: &[(&str, Option<(u32, u32)>)] = &[
            ("core", Some((500, 500))),
            ("core:core", Some((500, 500))),
            ("core:docker", Some((500, 999))),
            ("core.docker", Some((500, 999))),
            ("web.admin", Some((600, 33))),
            ("root:www-data", Some((0, 33))),
            ("1234:55", Some((1234, 55))),
            ("500", Some((500, 500))),
            (":docker", Some((0, 999))),
            ("core:", Some((500, 500))),
            ("nobody", None),
            ("core:nogroup", None),
        ];
        for (spec, want) in cases {
            assert_eq!(a.resolve_owner(spec).ok(), *want, "owner {spec:?}");
        }
        assert_eq!(a.user("core").unwrap().home, "/home/core");
    }

    #[test]
    fn under_refuses_escapes() {
        let r = Path::new("/tmp/r");
        assert_eq!(under(r, "/etc/x").unwrap(), Path::new("/tmp/r/etc/x"));
        assert_eq!(under(r, "etc/./x").unwrap(), Path::new("/tmp/r/etc/x"));
        assert!(under(r, "/etc/../../x").is_err());
        assert!(under(r, "/").is_err());
    }

    #[test]
    fn atomic_write_sets_mode_owner_and_parents_and_is_idempotent() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let p = t.path().join("a/b/c.conf");
        let me = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        assert_eq!(
            write_atomic(r, "/a/b/c.conf", b"one\n", 0o640, Some(me)).unwrap(),
            Written::Changed
        );
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!((m.uid(), m.gid()), me);
        assert_eq!(
            fs::metadata(t.path().join("a/b")).unwrap().mode() & 0o7777,
            0o755
        );
        let ino = m.ino();
        assert_eq!(
            write_atomic(r, "a/b/c.conf", b"one\n", 0o640, Some(me)).unwrap(),
            Written::Unchanged
        );
        assert_eq!(
            fs::metadata(&p).unwrap().ino(),
            ino,
            "unchanged file not replaced"
        );
        // new content: replaced by rename (new inode), no temp file left
        assert_eq!(
            write_atomic(r, "/a/b/c.conf", b"two\n", 0o600, None).unwrap(),
            Written::Changed
        );
        assert_eq!(fs::read(&p).unwrap(), b"two\n");
        assert_ne!(fs::metadata(&p).unwrap().ino(), ino);
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        let names: Vec<_> = fs::read_dir(t.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("c.conf")]);
    }

    #[test]
    fn atomic_write_chowns_when_root() {
        if !rustix::process::getuid().is_root() {
            eprintln!("skipping the chown check: not root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        write_atomic(t.path(), "/f", b"x", 0o4755, Some((1234, 4321))).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 4321, 0o4755));
    }

    #[test]
    fn symlink_force_replaces_a_file() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let p = t.path().join("d/x.service");
        write_atomic(r, "/d/x.service", b"[Unit]\n", 0o644, None).unwrap();
        assert_eq!(
            symlink_force(r, "/d/x.service", "/dev/null").unwrap(),
            Written::Changed
        );
        assert_eq!(fs::read_link(&p).unwrap(), Path::new("/dev/null"));
        assert_eq!(
            symlink_force(r, "/d/x.service", "/dev/null").unwrap(),
            Written::Unchanged
        );
        remove_file(r, "/d/x.service").unwrap();
        assert!(fs::symlink_metadata(&p).is_err());
        remove_file(r, "/d/x.service").unwrap();
        remove_file(r, "/nodir/x.service").unwrap();
    }
}
