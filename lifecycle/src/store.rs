//! Persistence of the lifecycle records behind the `Store` trait, and its
//! local-file backend: one JSON file per machine and per rollout, each
//! replaced atomically (temp file, fsync, rename, fsync of the directory).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::machine::Machine;
use crate::rollout::Rollout;

/// Why the store could not read or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lifecycle state {}: in use by another process (lock {} is held); two servers must not share it", dir.display(), lock.display())]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error(
        "{key:?}: not a name the store keeps (expected letters, digits, '.', '_', '-' and ':')"
    )]
    BadKey { key: String },
    /// etcd did not do what was asked (see `etcd_store`).
    #[error("etcd: {what}: {message}")]
    Etcd { what: String, message: String },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The record files of a folder (`*.json`, not hidden), sorted.
fn records_in(d: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut names: Vec<PathBuf> = fs::read_dir(d)
        .map_err(io("reading", d))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    names.sort();
    Ok(names)
}

fn read_record<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, String> {
    fs::read(p)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<T>(&b).map_err(|e| e.to_string()))
}

/// One machine's record and every rollout, as [`FileStore`] keeps them
/// under a state directory, read without the store: no lock taken (a
/// running server holds it), nothing created, renamed or written. Records
/// that do not read are named in `unreadable`.
#[derive(Debug, Default)]
pub struct Peek {
    pub machine: Option<Machine>,
    pub rollouts: Vec<Rollout>,
    pub unreadable: Vec<String>,
}

/// Reads `STATE_DIR/lifecycle/` for `mac` (see [`Peek`]); a missing
/// folder is no records.
pub fn peek(state_dir: &Path, mac: &str) -> Result<Peek, StoreError> {
    let dir = state_dir.join("lifecycle");
    let mut out = Peek::default();
    let file = dir
        .join("machines")
        .join(format!("{}.json", file_key(mac)?));
    match fs::metadata(&file) {
        Ok(_) => match read_record::<Machine>(&file) {
            Ok(m) => out.machine = Some(m),
            Err(e) => out.unreadable.push(format!("{}: {e}", file.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", &file)(e)),
    }
    let rollouts = dir.join("rollouts");
    if !rollouts.exists() {
        return Ok(out);
    }
    for p in records_in(&rollouts)? {
        match read_record::<Rollout>(&p) {
            Ok(mut r) if !r.legacy_members.is_empty() => {
                // a record from before memberships moved to the machines:
                // as the server will read it (nothing written here)
                let members = r.take_legacy_members();
                r.recount_all(members.iter().map(|(mac, m)| (mac.as_str(), m)));
                if let Some(m) = out.machine.as_mut() {
                    if let Some((_, member)) = members.into_iter().find(|(x, _)| *x == m.mac) {
                        m.rollouts.insert(r.plan.channel.clone(), member);
                    }
                }
                out.rollouts.push(r)
            }
            Ok(r) => out.rollouts.push(r),
            Err(e) => out.unreadable.push(format!("{}: {e}", p.display())),
        }
    }
    Ok(out)
}

/// A record that did not read, set aside rather than lost or fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub path: PathBuf,
    pub moved_to: PathBuf,
    pub error: String,
}

/// What was read at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub machines: Vec<Machine>,
    pub rollouts: Vec<Rollout>,
    pub set_aside: Vec<SetAside>,
}

/// Where the lifecycle records live. Read once at start; each change is
/// saved before the request that caused it is answered.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    fn load(&self) -> Result<Loaded, StoreError>;
    fn save_machine(&self, m: &Machine) -> Result<(), StoreError>;
    fn remove_machine(&self, mac: &str) -> Result<(), StoreError>;
    fn save_rollout(&self, r: &Rollout) -> Result<(), StoreError>;
    fn remove_rollout(&self, channel: &str) -> Result<(), StoreError>;
}

/// `STATE_DIR/lifecycle/machines/<mac with '-'>.json` and
/// `STATE_DIR/lifecycle/rollouts/<channel>.json`; an exclusive `flock` on
/// `STATE_DIR/lifecycle/lock` for the store's life. A file that does not
/// read is renamed to `<name>.corrupt` and reported in
/// [`Loaded::set_aside`].
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    _lock: File,
}

fn file_key(key: &str) -> Result<String, StoreError> {
    check_key(key)?;
    Ok(key.replace(':', "-"))
}

/// A record's name (a MAC, a channel) as a store may use it in a path or
/// key: 1 to 128 of letters, digits, '.', '_', '-' and ':', not starting
/// with '.'.
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty()
        || key.len() > 128
        || key.starts_with('.')
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
    {
        return Err(StoreError::BadKey {
            key: key.to_owned(),
        });
    }
    Ok(())
}

impl FileStore {
    /// Opens (creating) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<FileStore, StoreError> {
        let dir = state_dir.join("lifecycle");
        for sub in ["machines", "rollouts"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io("creating", &d))?;
        }
        let lock_path = dir.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("opening", &lock_path))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(StoreError::Locked {
                    dir,
                    lock: lock_path,
                })
            }
            Err(e) => return Err(io("locking", &lock_path)(e.into())),
        }
        Ok(FileStore { dir, _lock: lock })
    }

    /// The folder the records are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write(&self, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        cairn_formats::channel::write_atomic(path, data).map_err(|e| StoreError::Io {
            what: "writing",
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    fn remove(&self, path: &Path) -> Result<(), StoreError> {
        match fs::remove_file(path) {
            Ok(()) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("syncing", dir))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", path)(e)),
        }
    }

    fn read_dir<T: serde::de::DeserializeOwned>(
        &self,
        sub: &str,
        set_aside: &mut Vec<SetAside>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for p in records_in(&self.dir.join(sub))? {
            match read_record::<T>(&p) {
                Ok(v) => out.push(v),
                Err(error) => {
                    let moved_to = p.with_extension("json.corrupt");
                    fs::rename(&p, &moved_to).map_err(io("setting aside", &p))?;
                    set_aside.push(SetAside {
                        path: p,
                        moved_to,
                        error,
                    });
                }
            }
        }
        Ok(out)
    }
}

impl Store for FileStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let mut set_aside = Vec::new();
        let machines = self.read_dir("machines", &mut set_aside)?;
        let rollouts = self.read_dir("rollouts", &mut set_aside)?;
        Ok(Loaded {
            machines,
            rollouts,
            set_aside,
        })
    }

    fn save_machine(&self, m: &Machine) -> Result<(), StoreError> {
        let p = self
            .dir
            .join("machines")
            .join(format!("{}.json", file_key(&m.mac)?));
        self.write(
            &p,
            &serde_json::to_vec_pretty(m).expect("a record serialises"),
        )
    }

    fn remove_machine(&self, mac: &str) -> Result<(), StoreError> {
        let p = self
            .dir
            .join("machines")
            .join(format!("{}.json", file_key(mac)?));
        self.remove(&p)
    }

    fn save_rollout(&self, r: &Rollout) -> Result<(), StoreError> {
        let p = self
            .dir
            .join("rollouts")
            .join(format!("{}.json", file_key(&r.plan.channel)?));
        self.write(
            &p,
            &serde_json::to_vec_pretty(r).expect("a record serialises"),
        )
    }

    fn remove_rollout(&self, channel: &str) -> Result<(), StoreError> {
        let p = self
            .dir
            .join("rollouts")
            .join(format!("{}.json", file_key(channel)?));
        self.remove(&p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Members, Plan, WavePlan};

    fn rollout() -> Rollout {
        Rollout::start(
            Plan {
                channel: "lab".into(),
                version: "2.0.0".into(),
                waves: vec![WavePlan {
                    name: "all".into(),
                    members: Members::Percent(100),
                    soak_secs: 0,
                }],
                max_failures: 0,
            },
            7,
        )
        .unwrap()
    }

    #[test]
    fn peek_reads_beside_a_running_store_and_changes_nothing() {
        let t = tempfile::tempdir().unwrap();
        assert!(peek(t.path(), "52:54:00:00:0a:01")
            .unwrap()
            .machine
            .is_none());
        let s = FileStore::open(t.path()).unwrap();
        s.save_machine(&Machine::new("52:54:00:00:0a:01", 1))
            .unwrap();
        s.save_rollout(&rollout()).unwrap();
        let bad = s.dir().join("rollouts/broken.json");
        fs::write(&bad, b"{").unwrap();
        // the store's lock is held: peek needs none
        let p = peek(t.path(), "52:54:00:00:0a:01").unwrap();
        assert_eq!(p.machine.unwrap().mac, "52:54:00:00:0a:01");
        assert_eq!(p.rollouts.len(), 1);
        assert_eq!(p.unreadable.len(), 1, "{:?}", p.unreadable);
        assert!(p.unreadable[0].contains("broken.json"));
        assert!(bad.exists(), "nothing set aside");
        assert!(peek(t.path(), "52:54:00:00:0a:02")
            .unwrap()
            .machine
            .is_none());
        assert!(peek(t.path(), "../x").is_err());
    }

    #[test]
    fn records_survive_a_restart_and_bad_ones_are_set_aside() {
        let t = tempfile::tempdir().unwrap();
        {
            let s = FileStore::open(t.path()).unwrap();
            let mut m = Machine::new("52:54:00:00:0a:01", 1);
            m.on_install_boot(2);
            s.save_machine(&m).unwrap();
            s.save_machine(&Machine::new("52:54:00:00:0a:02", 3))
                .unwrap();
            s.save_rollout(&rollout()).unwrap();
            // a second server on the same folder is refused
            let e = FileStore::open(t.path()).unwrap_err().to_string();
            assert!(e.contains("in use by another process"), "{e}");
            s.remove_machine("52:54:00:00:0a:02").unwrap();
            s.remove_machine("52:54:00:00:0a:09").unwrap();
        }
        let bad = t.path().join("lifecycle/machines/52-54-00-00-0a-03.json");
        fs::write(&bad, b"{\"mac\": 1").unwrap();
        let s = FileStore::open(t.path()).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.machines.len(), 1);
        assert_eq!(l.machines[0].phase.name(), "installing");
        assert_eq!(l.rollouts, [rollout()]);
        assert_eq!(l.set_aside.len(), 1);
        assert_eq!(l.set_aside[0].path, bad);
        assert!(l.set_aside[0].moved_to.exists() && !bad.exists());
        // nothing but the records and the lock
        let names: Vec<String> = fs::read_dir(s.dir().join("machines"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn keys_cannot_leave_the_folder() {
        let t = tempfile::tempdir().unwrap();
        let s = FileStore::open(t.path()).unwrap();
        for key in ["../x", "", ".hidden", "a/b", &"x".repeat(200)] {
            assert!(
                matches!(s.remove_machine(key), Err(StoreError::BadKey { .. })),
                "{key}"
            );
        }
    }
}
