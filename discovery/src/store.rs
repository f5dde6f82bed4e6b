//! Persistence of discovery tokens behind the `Store` trait, and its local-file backend
//! (one JSON file per token, replaced atomically).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::v2::TokenRecord;

/// Why the store could not read or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed; `what` names it ("writing", "renaming", ...).
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process (another `cairn serve`) has the state directory.
    #[error("state directory {}: in use by another process (lock {} is held); two servers must not share it", dir.display(), lock.display())]
    Locked { dir: PathBuf, lock: PathBuf },
    /// An etcd endpoint refused or failed a request (`endpoint` empty when none was reached).
    #[error("etcd store {endpoint}: {message}")]
    Etcd { endpoint: String, message: String },
    /// A stored record is not what this version writes.
    #[error("{}: not a discovery token record: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
}

/// Where tokens live. [`crate::Discovery`] reads everything once at start and writes a token's
/// whole record through `save` after each change, before answering the request.
///
/// DESIGN.md: "local files by default, etcd when one server is not enough". [`FileStore`] is the
/// local backend; [`crate::EtcdStore`] keeps each record under one etcd key. Either way one
/// server serves a store at a time: records are read once at start.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Every record kept.
    fn load(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Durably replaces (or adds) one token's record; returns once it would survive a crash.
    fn save(&self, record: &TokenRecord) -> Result<(), StoreError>;
}

/// The store a `--store` value names: `etcd://HOST:PORT[,...][/PREFIX]` is an
/// [`crate::EtcdStore`], anything else a state directory for a [`FileStore`].
pub fn store_from_spec(spec: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if spec.starts_with("etcd://") {
        Ok(std::sync::Arc::new(crate::EtcdStore::from_url(spec)?))
    } else {
        Ok(std::sync::Arc::new(FileStore::open(Path::new(spec))?))
    }
}

/// Records as `STATE_DIR/tokens/<token>.json`, each written to a temporary file in the same
/// directory, fsynced and renamed over the old one (then the directory is fsynced).
///
/// The store holds an exclusive `flock` on `STATE_DIR/lock` for its lifetime, so a second server
/// on the same directory is refused instead of silently diverging.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    _lock: fs::File,
}

impl FileStore {
    /// Uses (and creates) `state_dir/tokens`.
    pub fn open(state_dir: &Path) -> Result<FileStore, StoreError> {
        let dir = state_dir.join("tokens");
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        let lock_path = state_dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::Io {
                what: "opening",
                path: lock_path.clone(),
                source,
            })?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(StoreError::Locked {
                    dir: state_dir.to_path_buf(),
                    lock: lock_path,
                })
            }
            Err(e) => {
                return Err(StoreError::Io {
                    what: "locking",
                    path: lock_path,
                    source: e.into(),
                })
            }
        }
        Ok(FileStore { dir, _lock: lock })
    }

    /// The directory holding the token files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn is_token(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Store for FileStore {
    fn load(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { what, path, source }
        };
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("reading", &self.dir))? {
            let entry = entry.map_err(io("reading", &self.dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                // Temporary files of an interrupted write; the rename never happened.
                continue;
            };
            let text = fs::read_to_string(&path).map_err(io("reading", &path))?;
            let rec: TokenRecord =
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            if !is_token(stem) || rec.token != stem || rec.format != 1 {
                return Err(StoreError::Corrupt {
                    path,
                    message: format!(
                        "expected format 1 and token {stem:?} (32 lowercase hex digits), found format {} and token {:?}",
                        rec.format, rec.token
                    ),
                });
            }
            out.push(rec);
        }
        Ok(out)
    }

    fn save(&self, record: &TokenRecord) -> Result<(), StoreError> {
        let path = self.dir.join(format!("{}.json", record.token));
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { what, path, source }
        };
        let bytes = serde_json::to_vec(record).expect("records serialize");
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)
            .map_err(io("creating a temporary file in", &self.dir))?;
        tmp.write_all(&bytes).map_err(io("writing", tmp.path()))?;
        tmp.as_file()
            .sync_all()
            .map_err(io("syncing", tmp.path()))?;
        tmp.persist(&path).map_err(|e| StoreError::Io {
            what: "renaming a temporary file to",
            path: path.clone(),
            source: e.error,
        })?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", &self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let err = FileStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another process"), "{err}");
        let rec = TokenRecord::new("0123456789abcdef0123456789abcdef", 3, Some("g".into()), 4);
        store.save(&rec).unwrap();
        store.save(&rec).unwrap();
        fs::write(store.dir().join(".tmp-leftover"), b"{").unwrap();
        assert_eq!(store.load().unwrap(), vec![rec.clone()]);
        let names: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        fs::write(
            store.dir().join("ffffffffffffffffffffffffffffffff.json"),
            b"{\"format\":1}",
        )
        .unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.contains("ffffffffffffffffffffffffffffffff.json: not a discovery token record"),
            "{err}"
        );
        let mut other = rec.clone();
        other.token = "ffffffffffffffffffffffffffffffff".into();
        store.save(&other).unwrap();
        fs::rename(
            store.dir().join("ffffffffffffffffffffffffffffffff.json"),
            store.dir().join("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.json"),
        )
        .unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("expected format 1 and token \"eeee"), "{err}");
        drop(store);
        FileStore::open(dir.path()).expect("the lock goes with the store");
    }
}
