//! The cluster-wide reboot lock for `REBOOT_STRATEGY=etcd-lock`, as locksmith kept it: one etcd key
//! holding a counting semaphore `{"semaphore": FREE, "max": MAX, "holders": [ID, ...]}`, changed
//! only by compare-and-swap on the key's revision (etcd v3's JSON gateway, `/v3/kv/range` and
//! `/v3/kv/txn`), so two machines can never both take the last slot. A machine takes a slot before
//! it reboots into an update and gives it back once the new slot is healthy; `cairn-update lock`
//! shows and breaks it. On a cluster that runs fleet it also reads fleet's few keys
//! (`cairn_formats::reboot_lock::fleet`): whether fleet runs, and this machine's drain mark.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;

use cairn_formats::reboot_lock::fleet::{self, DrainMark};
/// The key and the semaphore's JSON live in `cairn-formats` (fleet's engine reads them too).
pub use cairn_formats::reboot_lock::{Semaphore, LOCK_KEY};

/// What the lock refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Every slot is taken.
    #[error("the reboot lock is full ({max} of {max} held by {})", holders.join(", "))]
    Busy { max: u32, holders: Vec<String> },
    /// Talking to etcd failed.
    #[error("etcd at {endpoint}: {why}")]
    Etcd { endpoint: String, why: String },
    /// The key holds something that is not a semaphore.
    #[error("etcd key {LOCK_KEY}: {0}")]
    Corrupt(String),
    /// Another writer won every try.
    #[error("the reboot lock kept changing under us ({0} tries)")]
    Contended(u32),
    /// A bad argument (`max` 0).
    #[error("{0}")]
    Invalid(String),
}

impl From<cairn_formats::reboot_lock::Busy> for LockError {
    fn from(b: cairn_formats::reboot_lock::Busy) -> LockError {
        LockError::Busy {
            max: b.max,
            holders: b.holders,
        }
    }
}

/// Changes the number of slots, keeping the holders; refuses 0.
fn set_max(sem: &mut Semaphore, max: u32) -> Result<(), LockError> {
    if max == 0 {
        return Err(LockError::Invalid(
            "the reboot lock needs at least 1 slot".into(),
        ));
    }
    sem.set_max(max);
    Ok(())
}

/// The lock in one etcd cluster.
pub struct RebootLock {
    endpoint: String,
    http: ureq::Agent,
    /// Slots when the key does not exist yet.
    pub default_max: u32,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Deserialize, Default)]
struct Header {
    /// A decimal string, as the gateway writes 64-bit integers.
    #[serde(default)]
    revision: String,
}

#[derive(Deserialize)]
struct Kv {
    #[serde(default)]
    value: String,
    #[serde(default)]
    mod_revision: String,
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    header: Header,
}

const TRIES: u32 = 20;

impl RebootLock {
    /// `endpoint`: an etcd client URL such as `http://127.0.0.1:2379`.
    pub fn new(endpoint: &str) -> RebootLock {
        RebootLock {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http: crate::fetch::http_agent(),
            default_max: 1,
        }
    }

    fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, LockError> {
        let err = |why: String| LockError::Etcd {
            endpoint: self.endpoint.clone(),
            why,
        };
        let mut resp = self
            .http
            .post(&format!("{}{path}", self.endpoint))
            .header("content-type", "application/json")
            .send(body.to_string().as_bytes())
            .map_err(|e| err(format!("POST {path}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| err(format!("POST {path}: reading the answer: {e}")))?;
        if status != 200 {
            return Err(err(format!("POST {path}: HTTP {status}: {}", text.trim())));
        }
        serde_json::from_str(&text).map_err(|e| err(format!("POST {path}: {e}: {text}")))
    }

    /// The semaphore and its revision (`None`: no key yet).
    fn read(&self) -> Result<Option<(Semaphore, String)>, LockError> {
        let v = self.post(
            "/v3/kv/range",
            serde_json::json!({ "key": B64.encode(LOCK_KEY) }),
        )?;
        let r: RangeResponse =
            serde_json::from_value(v).map_err(|e| LockError::Corrupt(e.to_string()))?;
        let Some(kv) = r.kvs.into_iter().next() else {
            return Ok(None);
        };
        let raw = B64
            .decode(&kv.value)
            .map_err(|e| LockError::Corrupt(format!("value is not base64: {e}")))?;
        let sem: Semaphore = serde_json::from_slice(&raw)
            .map_err(|e| LockError::Corrupt(format!("{e}: {}", String::from_utf8_lossy(&raw))))?;
        Ok(Some((sem, kv.mod_revision)))
    }

    /// Writes `sem` if the key is still at `revision` (`None`: if it still does not exist);
    /// the revision written at, or `None` when the key had changed.
    fn swap(&self, sem: &Semaphore, revision: Option<&str>) -> Result<Option<i64>, LockError> {
        let key = B64.encode(LOCK_KEY);
        let compare = match revision {
            Some(rev) => serde_json::json!({
                "key": key, "target": "MOD", "result": "EQUAL", "mod_revision": rev
            }),
            None => serde_json::json!({
                "key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"
            }),
        };
        let value = B64.encode(serde_json::to_vec(sem).expect("plain struct"));
        let v = self.post(
            "/v3/kv/txn",
            serde_json::json!({
                "compare": [compare],
                "success": [{ "request_put": { "key": key, "value": value } }],
            }),
        )?;
        let r: TxnResponse =
            serde_json::from_value(v).map_err(|e| LockError::Corrupt(e.to_string()))?;
        if !r.succeeded {
            return Ok(None);
        }
        let rev = r.header.revision.parse().map_err(|_| LockError::Etcd {
            endpoint: self.endpoint.clone(),
            why: format!("a txn answer without a revision: {:?}", r.header.revision),
        })?;
        Ok(Some(rev))
    }

    /// Reads, changes and compare-and-swaps until the change lands; returns what was written
    /// and the revision it was written at.
    fn update<T>(
        &self,
        mut change: impl FnMut(&mut Semaphore) -> Result<T, LockError>,
    ) -> Result<(T, Semaphore, i64), LockError> {
        for _ in 0..TRIES {
            let (mut sem, rev) = match self.read()? {
                Some((s, r)) => (s, Some(r)),
                None => (Semaphore::new(self.default_max), None),
            };
            let out = change(&mut sem)?;
            if let Some(written) = self.swap(&sem, rev.as_deref())? {
                return Ok((out, sem, written));
            }
        }
        Err(LockError::Contended(TRIES))
    }

    /// The lock as it is (a fresh one when the key does not exist).
    pub fn status(&self) -> Result<Semaphore, LockError> {
        Ok(self
            .read()?
            .map_or_else(|| Semaphore::new(self.default_max), |(s, _)| s))
    }

    /// Takes a slot for `id`; `Err(Busy)` when none is free. Holding one already is success.
    pub fn lock(&self, id: &str) -> Result<Semaphore, LockError> {
        self.take(id).map(|(s, _)| s)
    }

    /// [`RebootLock::lock`], with the revision the lock key was written at (holding a slot
    /// already writes it again): a drain mark for this hold must cover it.
    pub fn take(&self, id: &str) -> Result<(Semaphore, i64), LockError> {
        self.update(|s| Ok(s.lock(id)?)).map(|(_, s, rev)| (s, rev))
    }

    /// Gives `id`'s slot back; true when it held one.
    pub fn unlock(&self, id: &str) -> Result<bool, LockError> {
        self.update(|s| Ok(s.unlock(id)))
            .map(|(released, _, _)| released)
    }

    /// Sets the number of slots.
    pub fn set_max(&self, max: u32) -> Result<Semaphore, LockError> {
        self.update(|s| set_max(s, max)).map(|(_, s, _)| s)
    }

    /// The value of one key (`None`: no such key).
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, LockError> {
        let v = self.post(
            "/v3/kv/range",
            serde_json::json!({ "key": B64.encode(key) }),
        )?;
        let r: RangeResponse =
            serde_json::from_value(v).map_err(|e| LockError::Corrupt(e.to_string()))?;
        let Some(kv) = r.kvs.into_iter().next() else {
            return Ok(None);
        };
        B64.decode(&kv.value)
            .map(Some)
            .map_err(|e| LockError::Etcd {
                endpoint: self.endpoint.clone(),
                why: format!("{key}: the value is not base64: {e}"),
            })
    }

    /// Whether fleet runs on this cluster, under the key prefix `prefix`: an engine leads, or
    /// at least one fleet agent is present.
    pub fn fleet_in_use(&self, prefix: &str) -> Result<bool, LockError> {
        if self.get(&fleet::leader_key(prefix))?.is_some() {
            return Ok(true);
        }
        let machines = fleet::machines_key(prefix);
        let v = self.post(
            "/v3/kv/range",
            serde_json::json!({
                "key": B64.encode(&machines),
                "range_end": B64.encode(prefix_end(machines.as_bytes())),
                "limit": "1",
                "keys_only": true,
            }),
        )?;
        let r: RangeResponse =
            serde_json::from_value(v).map_err(|e| LockError::Corrupt(e.to_string()))?;
        Ok(!r.kvs.is_empty())
    }

    /// Machine `id`'s drain mark under fleet's prefix `prefix`; `None` when there is none or
    /// it does not read (the engine rewrites or removes such a mark).
    pub fn drain_mark(&self, prefix: &str, id: &str) -> Result<Option<DrainMark>, LockError> {
        let key = fleet::drained_key(prefix, id);
        let Some(raw) = self.get(&key)? else {
            return Ok(None);
        };
        match serde_json::from_slice::<DrainMark>(&raw) {
            Ok(m) if m.machine == id => Ok(Some(m)),
            Ok(m) => {
                tracing::warn!("{key} names machine {:?}; ignored", m.machine);
                Ok(None)
            }
            Err(e) => {
                tracing::warn!("{key} does not read ({e}); ignored");
                Ok(None)
            }
        }
    }
}

/// The first key after every key that starts with `prefix` (etcd's `range_end` for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    // The semaphore's rules and JSON are `cairn_formats::reboot_lock`'s, tested there; these are
    // what this module adds.
    use super::*;

    #[test]
    fn a_full_lock_is_busy_and_zero_slots_are_refused() {
        let mut s = Semaphore::new(1);
        s.lock("a").unwrap();
        match s.lock("b").map_err(LockError::from) {
            Err(e @ LockError::Busy { max: 1, .. }) => {
                assert_eq!(e.to_string(), "the reboot lock is full (1 of 1 held by a)")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(set_max(&mut s, 0), Err(LockError::Invalid(_))));
        set_max(&mut s, 3).unwrap();
        assert_eq!(s.semaphore, 2);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
