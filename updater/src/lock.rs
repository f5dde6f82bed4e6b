//! The cluster-wide reboot lock for `REBOOT_STRATEGY=etcd-lock`, as locksmith kept it: one etcd key
//! holding a counting semaphore `{"semaphore": FREE, "max": MAX, "holders": [ID, ...]}`, changed
//! only by compare-and-swap on the key's revision (etcd v3's JSON gateway, `/v3/kv/range` and
//! `/v3/kv/txn`), so two machines can never both take the last slot. A machine takes a slot before
//! it reboots into an update and gives it back once the new slot is healthy; `cairn-update lock`
//! shows and breaks it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;

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

    /// Writes `sem` if the key is still at `revision` (`None`: if it still does not exist).
    fn swap(&self, sem: &Semaphore, revision: Option<&str>) -> Result<bool, LockError> {
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
        Ok(r.succeeded)
    }

    /// Reads, changes and compare-and-swaps until the change lands; returns what was written.
    fn update<T>(
        &self,
        mut change: impl FnMut(&mut Semaphore) -> Result<T, LockError>,
    ) -> Result<(T, Semaphore), LockError> {
        for _ in 0..TRIES {
            let (mut sem, rev) = match self.read()? {
                Some((s, r)) => (s, Some(r)),
                None => (Semaphore::new(self.default_max), None),
            };
            let out = change(&mut sem)?;
            if self.swap(&sem, rev.as_deref())? {
                return Ok((out, sem));
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
        self.update(|s| Ok(s.lock(id)?)).map(|(_, s)| s)
    }

    /// Gives `id`'s slot back; true when it held one.
    pub fn unlock(&self, id: &str) -> Result<bool, LockError> {
        self.update(|s| Ok(s.unlock(id)))
            .map(|(released, _)| released)
    }

    /// Sets the number of slots.
    pub fn set_max(&self, max: u32) -> Result<Semaphore, LockError> {
        self.update(|s| set_max(s, max)).map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semaphore_rules() {
        let mut s = Semaphore::new(2);
        assert!(s.lock("a").unwrap());
        assert!(
            !s.lock("a").unwrap(),
            "a second lock by the holder changes nothing"
        );
        assert!(s.lock("b").unwrap());
        assert_eq!(s.semaphore, 0);
        match s.lock("c").map_err(LockError::from) {
            Err(LockError::Busy { max: 2, holders }) => assert_eq!(holders, ["a", "b"]),
            other => panic!("{other:?}"),
        }
        assert!(s.unlock("a"));
        assert!(!s.unlock("a"));
        assert!(!s.unlock("nobody"));
        assert_eq!((s.semaphore, s.holders.clone()), (1, vec!["b".to_string()]));
        set_max(&mut s, 1).unwrap();
        assert_eq!(s.semaphore, 0);
        assert!(set_max(&mut s, 0).is_err());
        // locksmith's JSON, field for field
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"semaphore":0,"max":1,"holders":["b"]}"#);
    }
}
