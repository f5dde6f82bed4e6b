//! The etcd backend of the lifecycle records' [`Store`]: one key per
//! machine (`PREFIX/lifecycle/machines/MAC`) and per rollout
//! (`PREFIX/lifecycle/rollouts/CHANNEL`) in an etcd v3 cluster, through
//! `cairn-etcd`'s client; a lock key held on a lease so that two servers do
//! not share the records, every write fenced on that lease; values that do
//! not read moved to `PREFIX/lifecycle/corrupt/...` and reported.
//!
//! The [`Store`] trait is synchronous (the records are changed under a
//! lock, each change saved before the answer goes out); the client is
//! async, so the store runs it on a runtime of its own (one thread) and a
//! call waits for its answer: the caller may be on another runtime's
//! worker, where blocking on a channel is allowed and a nested `block_on`
//! is not.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use cairn_etcd::{
    Client, Compare, CompareOp, Config, DeleteOptions, GetOptions, LeaseKeeper, Op, PutOptions, Txn,
};

use crate::machine::Machine;
use crate::rollout::Rollout;
use crate::store::{check_key, Loaded, SetAside, Store, StoreError};

/// How long the lock outlives a server that stopped without letting go
/// (it crashed or lost etcd): a new server can take over after that.
pub const LOCK_TTL_SECS: i64 = 10;
/// A record larger than this is set aside rather than read (a machine's
/// record is about 1 KB, a rollout's under 8 KB).
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Keys read per range request at load.
const PAGE: i64 = 500;

fn etcd_err(what: impl Into<String>) -> impl FnOnce(cairn_etcd::Error) -> StoreError {
    let what = what.into();
    move |e| StoreError::Etcd {
        what,
        message: e.to_string(),
    }
}

/// A key and its value, as etcd has them.
type RawKv = (Vec<u8>, Vec<u8>);

/// The records under `PREFIX/lifecycle/` in etcd, held by this server
/// alone while it runs.
pub struct EtcdStore {
    /// `PREFIX/lifecycle` (no trailing '/').
    root: String,
    client: Client,
    rt: Option<tokio::runtime::Runtime>,
    lock: Option<LeaseKeeper>,
    lease: i64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("root", &self.root)
            .field("endpoints", &self.client.endpoints())
            .field("lease", &format_args!("{:x}", self.lease))
            .finish()
    }
}

/// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (as `cairn serve
/// --store` takes it): the client URLs and the prefix (default `/cairn`).
pub fn parse_spec(spec: &str) -> Result<(Vec<String>, String), StoreError> {
    let bad = |m: &str| StoreError::Etcd {
        what: format!("store {spec:?}"),
        message: format!("{m} (expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX])"),
    };
    let rest = spec
        .strip_prefix("etcd://")
        .ok_or_else(|| bad("not an etcd:// URL"))?;
    let (hosts, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/cairn"),
    };
    if hosts.is_empty() || hosts.split(',').any(|h| h.is_empty() || !h.contains(':')) {
        return Err(bad("every endpoint needs HOST:PORT"));
    }
    let prefix = prefix.trim_end_matches('/');
    Ok((
        hosts.split(',').map(|h| format!("http://{h}")).collect(),
        if prefix.is_empty() { "/cairn" } else { prefix }.to_string(),
    ))
}

impl EtcdStore {
    /// Opens the records of `spec` (see [`parse_spec`]): takes the lock
    /// `PREFIX/lifecycle/lock` on a lease of [`LOCK_TTL_SECS`] kept alive
    /// while the store lives. A lock another server holds is refused
    /// ([`StoreError::Locked`], naming it).
    pub fn open(spec: &str, holder: &str) -> Result<EtcdStore, StoreError> {
        let (endpoints, prefix) = parse_spec(spec)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lifecycle-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Etcd {
                what: "starting the etcd client's runtime".into(),
                message: e.to_string(),
            })?;
        let client = Client::with_config(
            endpoints.iter(),
            Config {
                connect_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(10),
                ..Config::default()
            },
        )
        .map_err(etcd_err(format!("store {spec:?}")))?;
        let mut s = EtcdStore {
            root: format!("{prefix}/lifecycle"),
            client,
            rt: Some(rt),
            lock: None,
            lease: 0,
        };
        s.take_lock(holder)?;
        Ok(s)
    }

    /// `PREFIX/lifecycle`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The lease the lock (and every write's fence) is on.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    fn lock_key(&self) -> String {
        format!("{}/lock", self.root)
    }

    /// Runs `f` on the store's runtime and waits for it.
    fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the store")
            .spawn(async move {
                let _ = tx.send(f.await);
            });
        rx.recv().expect("the etcd client's task answers")
    }

    fn take_lock(&mut self, holder: &str) -> Result<(), StoreError> {
        let c = self.client.clone();
        let key = self.lock_key();
        let holder = holder.to_owned();
        let what = format!("taking the lock {key}");
        let r = self.run(async move {
            let keeper = c.grant_kept(LOCK_TTL_SECS).await?;
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([Op::put(
                    key.clone(),
                    holder,
                    PutOptions::new().lease(keeper.id()),
                )])
                .or_else([Op::get(key.clone(), GetOptions::new())]);
            let t = c.txn(txn).await?;
            Ok::<_, cairn_etcd::Error>((keeper, t))
        });
        let (keeper, t) = r.map_err(etcd_err(what))?;
        if !t.succeeded {
            let held_by = t
                .responses
                .first()
                .and_then(|r| r.as_get())
                .and_then(|g| g.first())
                .map(|kv| kv.value_str().into_owned())
                .unwrap_or_default();
            let _ = self.run(keeper.revoke());
            return Err(StoreError::Locked {
                dir: PathBuf::from(&self.root),
                lock: PathBuf::from(format!("{} (held by {held_by})", self.lock_key())),
            });
        }
        self.lease = keeper.id();
        self.lock = Some(keeper);
        Ok(())
    }

    /// A write, done only while the lock is still this store's (its key on
    /// this store's lease): a server that lost its lock (etcd did not hear
    /// from it for the TTL, and another took the records) writes nothing.
    fn fenced(&self, what: String, op: Op) -> Result<(), StoreError> {
        let c = self.client.clone();
        let txn = Txn::new()
            .when([Compare::lease(
                self.lock_key(),
                CompareOp::Equal,
                self.lease,
            )])
            .and_then([op]);
        let t = self.run(async move { c.txn(txn).await });
        let t = t.map_err(etcd_err(what.clone()))?;
        if !t.succeeded {
            return Err(StoreError::Etcd {
                what,
                message: format!(
                    "the lock {} is no longer this server's (lease {:x} lost): not written",
                    self.lock_key(),
                    self.lease
                ),
            });
        }
        Ok(())
    }

    fn put(&self, key: String, value: Vec<u8>) -> Result<(), StoreError> {
        self.fenced(
            format!("writing {key}"),
            Op::put(key, value, PutOptions::new()),
        )
    }

    fn delete(&self, key: String) -> Result<(), StoreError> {
        self.fenced(
            format!("removing {key}"),
            Op::delete(key, DeleteOptions::new()),
        )
    }

    /// Every (key, value) under `dir/`, in pages.
    fn range(&self, dir: &str) -> Result<Vec<RawKv>, StoreError> {
        let start = format!("{dir}/");
        let end = cairn_etcd::prefix_end(start.as_bytes());
        let mut from = start.clone().into_bytes();
        let mut out = Vec::new();
        loop {
            let c = self.client.clone();
            let (k, e) = (from.clone(), end.clone());
            let page = self
                .run(async move { c.get(k, GetOptions::new().range_end(e).limit(PAGE)).await })
                .map_err(etcd_err(format!("reading {start}")))?;
            for kv in &page.kvs {
                out.push((kv.key.clone(), kv.value.clone()));
            }
            match page.kvs.last() {
                Some(last) if page.more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Reads the records of `dir`; one that does not read (not JSON of the
    /// record, too large, a key that is no name, a record naming another
    /// key) is moved to `PREFIX/lifecycle/corrupt/...` and reported.
    fn read_dir<T: serde::de::DeserializeOwned>(
        &self,
        sub: &str,
        name_of: impl Fn(&T) -> &str,
        set_aside: &mut Vec<SetAside>,
    ) -> Result<Vec<T>, StoreError> {
        let dir = format!("{}/{sub}", self.root);
        let mut out = Vec::new();
        for (raw_key, value) in self.range(&dir)? {
            let key = String::from_utf8_lossy(&raw_key).into_owned();
            let name = String::from_utf8_lossy(&raw_key[dir.len() + 1..]).into_owned();
            let name = name.as_str();
            let read = if value.len() > MAX_RECORD_BYTES {
                Err(format!(
                    "{} bytes, more than a record's {MAX_RECORD_BYTES}",
                    value.len()
                ))
            } else if let Err(e) = check_key(name) {
                Err(e.to_string())
            } else {
                serde_json::from_slice::<T>(&value)
                    .map_err(|e| e.to_string())
                    .and_then(|r| {
                        if name_of(&r) == name {
                            Ok(r)
                        } else {
                            Err(format!(
                                "the record is {:?}'s, not the key's {name:?}",
                                name_of(&r)
                            ))
                        }
                    })
            };
            match read {
                Ok(r) => out.push(r),
                Err(error) => {
                    let moved_to =
                        format!("{}/corrupt/{sub}/{}", self.root, name.replace('/', "%2F"));
                    let c = self.client.clone();
                    let txn = Txn::new()
                        .when([Compare::lease(
                            self.lock_key(),
                            CompareOp::Equal,
                            self.lease,
                        )])
                        .and_then([
                            Op::put(moved_to.clone(), value, PutOptions::new()),
                            Op::delete(raw_key, DeleteOptions::new()),
                        ]);
                    let t = self
                        .run(async move { c.txn(txn).await })
                        .map_err(etcd_err(format!("setting aside {key}")))?;
                    if !t.succeeded {
                        return Err(StoreError::Etcd {
                            what: format!("setting aside {key}"),
                            message: "the lock is no longer this server's".into(),
                        });
                    }
                    set_aside.push(SetAside {
                        path: PathBuf::from(key),
                        moved_to: PathBuf::from(moved_to),
                        error,
                    });
                }
            }
        }
        Ok(out)
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let mut set_aside = Vec::new();
        let machines = self.read_dir("machines", |m: &Machine| &m.mac, &mut set_aside)?;
        let rollouts = self.read_dir("rollouts", |r: &Rollout| &r.plan.channel, &mut set_aside)?;
        Ok(Loaded {
            machines,
            rollouts,
            set_aside,
        })
    }

    fn save_machine(&self, m: &Machine) -> Result<(), StoreError> {
        check_key(&m.mac)?;
        self.put(
            format!("{}/machines/{}", self.root, m.mac),
            serde_json::to_vec(m).expect("a record serialises"),
        )
    }

    fn remove_machine(&self, mac: &str) -> Result<(), StoreError> {
        check_key(mac)?;
        self.delete(format!("{}/machines/{mac}", self.root))
    }

    fn save_rollout(&self, r: &Rollout) -> Result<(), StoreError> {
        check_key(&r.plan.channel)?;
        self.put(
            format!("{}/rollouts/{}", self.root, r.plan.channel),
            serde_json::to_vec(r).expect("a record serialises"),
        )
    }

    fn remove_rollout(&self, channel: &str) -> Result<(), StoreError> {
        check_key(channel)?;
        self.delete(format!("{}/rollouts/{channel}", self.root))
    }
}

impl Drop for EtcdStore {
    /// Lets go of the lock at once (a successor need not wait out the
    /// lease), then stops the runtime without blocking.
    fn drop(&mut self) {
        if let Some(keeper) = self.lock.take() {
            let _ = self.run(async move {
                tokio::time::timeout(Duration::from_secs(2), keeper.revoke()).await
            });
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            parse_spec("etcd://127.0.0.1:2379").unwrap(),
            (
                vec!["http://127.0.0.1:2379".to_string()],
                "/cairn".to_string()
            )
        );
        assert_eq!(
            parse_spec("etcd://a:1,b:2/site/x/").unwrap(),
            (
                vec!["http://a:1".to_string(), "http://b:2".to_string()],
                "/site/x".to_string()
            )
        );
        for bad in ["http://a:1", "etcd://", "etcd://a", "etcd://a:1,,b:2"] {
            let e = parse_spec(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
