//! Test helpers: a machine root with a non-root user who plants symlinks, and snapshots that show whether anything outside changed.

#[path = "../tests/support/fake_cloud.rs"]
pub mod fake_cloud;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{chown, lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The planting user's ids (no such user on the test machine is needed).
pub const UID: u32 = 1000;
pub const GID: u32 = 1000;

/// Whether the tests run as root (they need chown to play the user).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A root with /etc/passwd (root, core 1000:1000, u2 with a home inside
/// core's), /home root-owned and /home/core owned by core; and, beside it
/// (not under the root), a directory `outside` owned by root 0755 with a
/// secret 0640 file: what the user aims at.
pub struct Machine {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub outside: PathBuf,
}

impl Machine {
    pub fn new() -> Machine {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/passwd"),
            format!("root:x:0:0:root:/root:/bin/sh\ncore:x:{UID}:{GID}::/home/core:/bin/sh\nu2:x:{}:{GID}::/home/core/u2:/bin/sh\n", UID + 1),
        )
        .unwrap();
        fs::write(
            root.join("etc/group"),
            format!("root:x:0:\ncore:x:{GID}:\n"),
        )
        .unwrap();
        fs::create_dir_all(root.join("home/core")).unwrap();
        fs::set_permissions(root.join("home"), fs::Permissions::from_mode(0o755)).unwrap();
        chown(root.join("home/core"), Some(UID), Some(GID)).unwrap();
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(outside.join("shadow"), "root:SECRET-HASH:19000::::::\n").unwrap();
        fs::set_permissions(outside.join("shadow"), fs::Permissions::from_mode(0o640)).unwrap();
        Machine {
            _tmp: tmp,
            root,
            outside,
        }
    }

    /// `path` under the root.
    pub fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// What the user can do: a directory of theirs.
    pub fn user_dir(&self, path: &str) {
        let p = self.at(path);
        fs::create_dir_all(&p).unwrap();
        chown(&p, Some(UID), Some(GID)).unwrap();
    }

    /// What the user can do: a symlink of theirs at `path` to `target`.
    pub fn user_symlink(&self, target: &Path, path: &str) {
        let p = self.at(path);
        std::os::unix::fs::symlink(target, &p).unwrap();
        lchown(&p, Some(UID), Some(GID)).unwrap();
    }

    /// Every entry of `outside` with its type, owner, mode and content.
    pub fn outside_snapshot(&self) -> BTreeMap<PathBuf, String> {
        snapshot(&self.outside)
    }

    /// Whether any file under the root holds the secret.
    pub fn secret_leaked(&self) -> bool {
        snapshot(&self.root)
            .values()
            .any(|v| v.contains("SECRET-HASH"))
    }
}

/// `dir` and everything under it (links not followed): path -> "kind
/// uid:gid mode content-or-target".
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let what = if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
            "dir".to_string()
        } else if m.file_type().is_symlink() {
            format!("link {}", fs::read_link(&p).unwrap().display())
        } else {
            format!("file {}", String::from_utf8_lossy(&fs::read(&p).unwrap()))
        };
        out.insert(
            p,
            format!("{} {}:{} {:o}", what, m.uid(), m.gid(), m.mode() & 0o7777),
        );
    }
    out
}
