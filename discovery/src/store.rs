//! Persistence of discovery tokens behind the `Store` trait, and its local-file backend: one
//! append-only log per token (a snapshot line, then one line per change), replayed at load and
//! compacted into a new snapshot when it has grown.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::v2::{Event, TokenRecord};

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

/// Where tokens live. [`crate::Discovery`] reads everything once at start, saves a new token's
/// record with `save` and each committed change with `append`, before answering the request.
///
/// DESIGN.md: "local files by default, etcd when one server is not enough". [`FileStore`] is the
/// local backend; [`crate::EtcdStore`] keeps each record under one etcd key. Either way one
/// server serves a store at a time: records are read once at start.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Every record kept.
    fn load(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Durably replaces (or adds) one token's record; returns once it would survive a crash.
    fn save(&self, record: &TokenRecord) -> Result<(), StoreError>;
    /// Durably records `changes`, the events (in order) that turned the token's last saved or
    /// appended state into `record`. The default saves the whole record; [`FileStore`] appends
    /// the changes alone, so that a change costs about its own size.
    fn append(&self, record: &TokenRecord, changes: &[Event]) -> Result<(), StoreError> {
        let _ = changes;
        self.save(record)
    }
    /// Removes a token's record for good (it expired). `index` is the service's index at that
    /// time: the store keeps the highest one it was given ([`Store::index_floor`]) before the
    /// record goes, so that indexes never go back across a restart.
    fn remove(&self, token: &str, index: u64) -> Result<(), StoreError>;
    /// The highest `index` ever passed to [`Store::remove`] (0 when none).
    fn index_floor(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
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

/// Records as `STATE_DIR/tokens/<token>.log`: the first line a snapshot of the token's record
/// (JSON), each later line one committed change (`{"t":<ms>,"event":<event without prevNode>}`),
/// replayed on load ([`TokenRecord::replay`]). A change appends its line and `fdatasync`s, so it
/// costs about its own size; when the lines after the snapshot outgrow the snapshot (and
/// [`COMPACT_MIN_BYTES`]) the next change writes a new snapshot instead: to a temporary file in the
/// same directory, fsynced, renamed over the log, then the directory fsynced. A torn last line (a
/// crash during an append that was never acknowledged) is cut off at load; a failed append is cut
/// off at once. `<token>.json` files of earlier versions (the whole record) are read and replaced
/// by a log on the token's next change. `STATE_DIR/index` keeps the index floor of removed tokens.
///
/// The store holds an exclusive `flock` on `STATE_DIR/lock` for its lifetime, so a second server
/// on the same directory is refused instead of silently diverging.
#[derive(Debug)]
pub struct FileStore {
    state_dir: PathBuf,
    dir: PathBuf,
    _lock: fs::File,
    /// Per token with a log: its length and the length of its snapshot line.
    logs: Mutex<HashMap<String, LogLen>>,
}

/// Lines after the snapshot may grow to this many bytes, or to the snapshot's size if larger,
/// before the log is compacted.
pub const COMPACT_MIN_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy)]
struct LogLen {
    len: u64,
    snapshot: u64,
}

/// One change in a token's log.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLine {
    /// When it was committed, milliseconds since the Unix epoch.
    t: u64,
    event: Event,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

/// Writes `bytes` to `path` atomically and durably (temporary file, fsync, rename; the caller
/// fsyncs the directory).
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary file in", dir))?;
    tmp.write_all(bytes)
        .map_err(io_err("writing", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_err("syncing", tmp.path()))?;
    tmp.persist(path).map_err(|e| StoreError::Io {
        what: "renaming a temporary file to",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
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
        Ok(FileStore {
            state_dir: state_dir.to_path_buf(),
            dir,
            _lock: lock,
            logs: Mutex::new(HashMap::new()),
        })
    }

    /// The directory holding the token files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log of `token`.
    pub fn log_path(&self, token: &str) -> PathBuf {
        self.dir.join(format!("{token}.log"))
    }

    fn logs(&self) -> std::sync::MutexGuard<'_, HashMap<String, LogLen>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index_path(&self) -> PathBuf {
        self.state_dir.join("index")
    }

    /// Reads a log: the snapshot, then each change replayed. A torn last line is cut off.
    fn read_log(&self, stem: &str, path: &Path) -> Result<TokenRecord, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("opening", path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err("reading", path))?;
        let mut lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
        // A last line without its newline was being appended when the server stopped: the change
        // was never acknowledged. Cut it off so that the next append starts on a line of its own.
        let whole = bytes.len() as u64;
        let mut good = whole;
        if lines.last().is_some_and(|l| !l.ends_with(b"\n")) {
            let torn = lines.pop().expect("checked");
            good -= torn.len() as u64;
        }
        let Some(first) = lines.first() else {
            return Err(corrupt("empty log: no snapshot line".into()));
        };
        let mut rec: TokenRecord =
            serde_json::from_slice(first).map_err(|e| corrupt(format!("snapshot line: {e}")))?;
        check_record(stem, &rec, path)?;
        let snapshot = first.len() as u64;
        let n = lines.len();
        for (i, line) in lines.iter().enumerate().skip(1) {
            let parsed = serde_json::from_slice::<LogLine>(line)
                .map_err(|e| e.to_string())
                .and_then(|l| rec.replay(l.event, l.t));
            match parsed {
                Ok(()) => {}
                // A last line that does not parse is torn the same way (cut inside the line).
                Err(_) if i + 1 == n => {
                    good -= line.len() as u64;
                }
                Err(e) => return Err(corrupt(format!("line {}: {e}", i + 1))),
            }
        }
        if good < whole {
            tracing::warn!(path = %path.display(), bytes = whole - good, "discovery store: cutting off a torn last line");
            file.set_len(good).map_err(io_err("truncating", path))?;
            file.sync_all().map_err(io_err("syncing", path))?;
        }
        self.logs().insert(
            stem.to_string(),
            LogLen {
                len: good,
                snapshot,
            },
        );
        Ok(rec)
    }

    /// Appends lines to the log; cuts them off again if that fails.
    fn append_lines(&self, path: &Path, at: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err("opening", path))?;
        let written = file
            .seek(SeekFrom::Start(at))
            .and_then(|_| file.write_all(bytes))
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            if let Err(cut) = file.set_len(at).and_then(|()| file.sync_data()) {
                tracing::error!(path = %path.display(), "discovery store: cutting off a failed append: {cut}");
            }
            return Err(StoreError::Io {
                what: "appending to",
                path: path.to_path_buf(),
                source: e,
            });
        }
        Ok(())
    }
}

fn is_token(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_record(stem: &str, rec: &TokenRecord, path: &Path) -> Result<(), StoreError> {
    if !is_token(stem) || rec.token != stem || rec.format != 1 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "expected format 1 and token {stem:?} (32 lowercase hex digits), found format {} and token {:?}",
                rec.format, rec.token
            ),
        });
    }
    Ok(())
}

impl Store for FileStore {
    fn load(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut logs = Vec::new();
        let mut legacy = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("reading", &self.dir))? {
            let entry = entry.map_err(io_err("reading", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".log") {
                logs.push((stem.to_string(), entry.path()));
            } else if let Some(stem) = name.strip_suffix(".json") {
                legacy.push((stem.to_string(), entry.path()));
            }
            // Anything else: temporary files of an interrupted write; the rename never happened.
        }
        let mut out = Vec::new();
        for (stem, path) in &logs {
            out.push(self.read_log(stem, path)?);
        }
        for (stem, path) in legacy {
            if logs.iter().any(|(s, _)| *s == stem) {
                // The log replaced it; the crash came before the old file was removed.
                continue;
            }
            let text = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
            let rec: TokenRecord =
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            check_record(&stem, &rec, &path)?;
            out.push(rec);
        }
        Ok(out)
    }

    fn save(&self, record: &TokenRecord) -> Result<(), StoreError> {
        let path = self.log_path(&record.token);
        let mut bytes = serde_json::to_vec(record).expect("records serialize");
        bytes.push(b'\n');
        write_atomic(&self.dir, &path, &bytes)?;
        let legacy = self.dir.join(format!("{}.json", record.token));
        match fs::remove_file(&legacy) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &legacy)(e)),
        }
        sync_dir(&self.dir)?;
        let len = bytes.len() as u64;
        self.logs()
            .insert(record.token.clone(), LogLen { len, snapshot: len });
        Ok(())
    }

    fn append(&self, record: &TokenRecord, changes: &[Event]) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        for ev in changes {
            let line = LogLine {
                t: record.changed_ms,
                event: Event {
                    prev_node: None,
                    ..ev.clone()
                },
            };
            serde_json::to_writer(&mut bytes, &line).expect("events serialize");
            bytes.push(b'\n');
        }
        let known = self.logs().get(&record.token).copied();
        let Some(log) = known else {
            // No log yet (a record of an earlier version): start one.
            return self.save(record);
        };
        let after = log.len + bytes.len() as u64;
        if after - log.snapshot > log.snapshot.max(COMPACT_MIN_BYTES) {
            return self.save(record);
        }
        let path = self.log_path(&record.token);
        self.append_lines(&path, log.len, &bytes)?;
        self.logs().insert(
            record.token.clone(),
            LogLen {
                len: after,
                snapshot: log.snapshot,
            },
        );
        Ok(())
    }

    fn remove(&self, token: &str, index: u64) -> Result<(), StoreError> {
        if index > self.index_floor()? {
            let path = self.index_path();
            write_atomic(&self.state_dir, &path, format!("{index}\n").as_bytes())?;
            sync_dir(&self.state_dir)?;
        }
        for path in [self.log_path(token), self.dir.join(format!("{token}.json"))] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &path)(e)),
            }
        }
        sync_dir(&self.dir)?;
        self.logs().remove(token);
        Ok(())
    }

    fn index_floor(&self) -> Result<u64, StoreError> {
        let path = self.index_path();
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|e| StoreError::Corrupt {
                path,
                message: format!("not an index: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
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
        assert!(
            !store
                .dir()
                .join("ffffffffffffffffffffffffffffffff.json")
                .exists(),
            "the log replaces a record of an earlier version"
        );
        fs::rename(
            store.dir().join("ffffffffffffffffffffffffffffffff.log"),
            store.dir().join("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.log"),
        )
        .unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("expected format 1 and token \"eeee"), "{err}");
        drop(store);
        FileStore::open(dir.path()).expect("the lock goes with the store");
    }

    use crate::v2::{PutRequest, TokenLimits};

    const T: &str = "0123456789abcdef0123456789abcdef";

    /// Sets `rel` to `value` as a commit does; returns the event.
    fn change(rec: &mut TokenRecord, rel: &str, value: &str) -> Event {
        let req = PutRequest {
            value: value.into(),
            ..PutRequest::default()
        };
        let ev = rec
            .put(rel, &req, rec.last_index, &TokenLimits::default())
            .unwrap();
        rec.push_history(ev.clone());
        rec.changed_ms += 1;
        ev
    }

    fn len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    #[test]
    fn a_change_appends_a_line_of_about_its_own_size_and_the_log_replays() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let mut rec = TokenRecord::new(T, 3, None, 1);
        store.save(&rec).unwrap();
        let path = store.log_path(T);
        for (value, what) in [('v', "a new key"), ('w', "a new value of that key")] {
            let before = len(&path);
            let ev = change(&mut rec, "m1", &value.to_string().repeat(2000));
            store.append(&rec, &[ev]).unwrap();
            let grown = len(&path) - before;
            assert!(
                (2000..2200).contains(&grown),
                "{what}: the log grew by {grown} bytes for a 2000-byte value"
            );
        }
        // Several changes of one commit go in one append.
        let evs = vec![change(&mut rec, "m2", "x"), change(&mut rec, "m3", "y")];
        store.append(&rec, &evs).unwrap();
        drop(store);
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), vec![rec]);
    }

    #[test]
    fn the_log_is_compacted_when_it_outgrows_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let mut rec = TokenRecord::new(T, 3, None, 1);
        store.save(&rec).unwrap();
        let path = store.log_path(T);
        let mut largest = 0;
        for i in 0..400 {
            let ev = change(&mut rec, &format!("k{}", i % 5), &"v".repeat(1000));
            store.append(&rec, &[ev]).unwrap();
            largest = largest.max(len(&path));
        }
        let snapshot = serde_json::to_vec(&rec).unwrap().len() as u64;
        assert!(
            largest <= 2 * snapshot.max(COMPACT_MIN_BYTES) + 2000,
            "the log reached {largest} bytes (snapshot {snapshot})"
        );
        let lines = fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 350, "never compacted: {lines} lines");
        drop(store);
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), vec![rec]);
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_a_bad_line_before_the_end_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::open(dir.path()).unwrap();
        let mut rec = TokenRecord::new(T, 3, None, 1);
        store.save(&rec).unwrap();
        let ev = change(&mut rec, "m1", "e1=http://127.0.0.1:2380");
        store.append(&rec, &[ev]).unwrap();
        let path = store.log_path(T);
        let good = len(&path);
        for torn in [&b"{\"t\":5,\"event\":{\"act"[..], b"not json at all\n"] {
            fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(torn)
                .unwrap();
            drop(store);
            store = FileStore::open(dir.path()).unwrap();
            assert_eq!(store.load().unwrap(), vec![rec.clone()]);
            assert_eq!(len(&path), good, "cut off");
        }
        // The next change lands on a line of its own.
        let ev = change(&mut rec, "m2", "e2=http://127.0.0.1:2381");
        store.append(&rec, &[ev]).unwrap();
        drop(store);
        let mut store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), vec![rec.clone()]);
        // A line that does not parse with more after it is not a torn write.
        let text = fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[1] = "{\"t\":1,\"event\":42}";
        fs::write(&path, lines.join("\n") + "\n").unwrap();
        drop(store);
        store = FileStore::open(dir.path()).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.contains(".log: not a discovery token record: line 2"),
            "{err}"
        );
    }

    #[test]
    fn records_of_the_earlier_format_are_read_and_replaced_by_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let mut rec = TokenRecord::new(T, 3, Some("g".into()), 1);
        rec.created_ms = 0;
        rec.changed_ms = 0;
        let mut old = serde_json::to_value(&rec).unwrap();
        for k in ["created_ms", "changed_ms", "client"] {
            old.as_object_mut().unwrap().remove(k);
        }
        let legacy = store.dir().join(format!("{T}.json"));
        fs::write(&legacy, old.to_string()).unwrap();
        assert_eq!(store.load().unwrap(), vec![rec.clone()]);
        let ev = change(&mut rec, "m1", "e1=http://127.0.0.1:2380");
        store.append(&rec, &[ev]).unwrap();
        assert!(!legacy.exists());
        assert!(store.log_path(T).exists());
        drop(store);
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), vec![rec]);
    }

    #[test]
    fn removed_tokens_leave_the_highest_index_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.index_floor().unwrap(), 0);
        let rec = TokenRecord::new(T, 3, None, 1);
        store.save(&rec).unwrap();
        store.remove(T, 42).unwrap();
        assert!(!store.log_path(T).exists());
        assert_eq!(store.load().unwrap(), vec![]);
        store
            .remove("ffffffffffffffffffffffffffffffff", 10)
            .unwrap();
        drop(store);
        let store = FileStore::open(dir.path()).unwrap();
        assert_eq!(store.index_floor().unwrap(), 42);
    }
}
