//! etcd discovery service for `cairn serve`: tokens (`/new?size=N`), the part of the etcd v2 keys
//! API that `etcd --discovery=URL` (etcd 3.4) uses, long-poll waits, and persistence of tokens.
//!
//! Mount [`router`] at `/discovery` and give groups tokens with [`Discovery::ensure_group_token`]:
//!
//! ```no_run
//! # fn demo() -> Result<(), cairn_discovery::DiscoveryError> {
//! use axum::Router;
//! #[derive(Clone)]
//! struct AppState;
//! let d = cairn_discovery::Discovery::open(
//!     "/var/lib/cairn/discovery",
//!     Some("http://10.0.0.1:8080/discovery"),
//! )?;
//! let app: Router = Router::<AppState>::new()
//!     .nest("/discovery", cairn_discovery::router(d.clone()))
//!     .with_state(AppState);
//! let token = d.ensure_group_token("etcd-lab", 3)?; // blocking: use spawn_blocking in async code
//! assert_eq!(d.url(&token).unwrap(), format!("http://10.0.0.1:8080/discovery/{token}"));
//! // When stopping: end the long polls, then shut the HTTP server down gracefully.
//! d.close_waits();
//! # Ok(()) }
//! ```

mod etcd_store;
mod http;
pub mod store;
pub mod v2;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

pub use crate::etcd_store::EtcdStore;
pub use crate::http::router;
pub use crate::store::{store_from_spec, FileStore, Store, StoreError};
use crate::v2::{DeleteRequest, Event, PutRequest, TokenRecord, V2Error};

/// What the discovery service refuses or fails at (the Rust API; HTTP answers v2 errors).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Reading or writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A cluster size out of range.
    #[error("cluster size must be from 1 to {}, got {got}", v2::MAX_CLUSTER_SIZE)]
    InvalidSize { got: u64 },
    /// The public base URL is not an http(s) URL.
    #[error("discovery public URL {url:?}: {reason}")]
    InvalidPublicBase { url: String, reason: &'static str },
    /// A group already has a token made for another size.
    #[error("group {group:?} has discovery token {token} for a cluster of {existing}, not {requested}; a token bootstraps one cluster of a fixed size: keep the size or name a new group")]
    GroupSizeMismatch {
        group: String,
        token: String,
        existing: u32,
        requested: u32,
    },
    /// The store's records contradict each other.
    #[error("discovery store: {0}")]
    Inconsistent(String),
}

/// How long a `wait=true` request is held before it is answered with an empty body (which the
/// etcd client answers by asking again).
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(300);

struct TokenEntry {
    record: Arc<TokenRecord>,
    /// The index of the token's last change; waiters wake on it.
    changed: watch::Sender<u64>,
}

struct State {
    /// The store's index: the highest index ever handed out, across all tokens.
    index: u64,
    tokens: HashMap<String, TokenEntry>,
    groups: HashMap<String, String>,
}

struct Inner {
    store: Arc<dyn Store>,
    public_base: Option<String>,
    wait_timeout: Duration,
    /// Set by [`Discovery::close_waits`]: pending and new waits end at once.
    closing: watch::Sender<bool>,
    state: Mutex<State>,
    /// Serialises commits (and token creation): indexes assigned, records saved, then published.
    writer: Mutex<()>,
    /// Changes waiting for the next commit.
    queue: Mutex<Vec<Pending>>,
    /// Waits answered empty because nothing happened within `wait_timeout`.
    waits_timed_out: std::sync::atomic::AtomicU64,
}

/// A change's outcome: the event and the index after it, or the v2 error.
type ChangeResult = Result<(Event, u64), V2Error>;
type ChangeOp = Box<dyn FnOnce(&mut TokenRecord, u64) -> Result<Event, V2Error> + Send>;

/// A change waiting for the next commit.
struct Pending {
    token: String,
    op: ChangeOp,
    done: std::sync::mpsc::Sender<ChangeResult>,
}

/// Where a committed change's outcome goes.
struct Reply {
    token: String,
    done: std::sync::mpsc::Sender<ChangeResult>,
}

/// The discovery service: cheap to clone, all clones share one state.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("store", &self.inner.store)
            .field("public_base", &self.inner.public_base)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `BASE/TOKEN` with one slash between.
pub fn token_url(base: &str, token: &str) -> String {
    format!("{}/{token}", base.trim_end_matches('/'))
}

fn new_token() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the operating system's random source works");
    hex::encode(b)
}

fn check_size(size: u64) -> Result<u32, DiscoveryError> {
    if (1..=u64::from(v2::MAX_CLUSTER_SIZE)).contains(&size) {
        Ok(size as u32)
    } else {
        Err(DiscoveryError::InvalidSize { got: size })
    }
}

impl Discovery {
    /// Opens (creating) the file store under `state_dir` (`state_dir/tokens/*.json`).
    /// `public_base` is the URL of the discovery root as machines reach it, e.g.
    /// `http://10.0.0.1:8080/discovery`; without it, URLs are built from each request's Host header.
    pub fn open(
        state_dir: impl AsRef<Path>,
        public_base: Option<&str>,
    ) -> Result<Discovery, DiscoveryError> {
        let store = FileStore::open(state_dir.as_ref())?;
        Discovery::with_store(Arc::new(store), public_base)
    }

    /// Opens on any [`Store`].
    pub fn with_store(
        store: Arc<dyn Store>,
        public_base: Option<&str>,
    ) -> Result<Discovery, DiscoveryError> {
        let public_base = match public_base {
            None => None,
            Some(u) => {
                let rest = u
                    .strip_prefix("http://")
                    .or_else(|| u.strip_prefix("https://"))
                    .ok_or(DiscoveryError::InvalidPublicBase {
                        url: u.to_string(),
                        reason: "expected http://HOST[:PORT]/PATH or https://...",
                    })?;
                if rest.is_empty() || rest.starts_with('/') || u.contains(['?', '#', ' ']) {
                    return Err(DiscoveryError::InvalidPublicBase {
                        url: u.to_string(),
                        reason: "expected a host after the scheme and no query, fragment or spaces",
                    });
                }
                Some(u.trim_end_matches('/').to_string())
            }
        };
        let records = store.load()?;
        let mut state = State {
            index: 0,
            tokens: HashMap::new(),
            groups: HashMap::new(),
        };
        for rec in records {
            state.index = state.index.max(rec.last_index);
            if let Some(g) = &rec.group {
                if let Some(other) = state.groups.insert(g.clone(), rec.token.clone()) {
                    return Err(DiscoveryError::Inconsistent(format!(
                        "tokens {other} and {} both belong to group {g:?}",
                        rec.token
                    )));
                }
            }
            let (changed, _) = watch::channel(rec.last_index);
            state.tokens.insert(
                rec.token.clone(),
                TokenEntry {
                    record: Arc::new(rec),
                    changed,
                },
            );
        }
        tracing::info!(tokens = state.tokens.len(), index = state.index, store = ?store, "discovery store loaded");
        Ok(Discovery {
            inner: Arc::new(Inner {
                store,
                public_base,
                wait_timeout: DEFAULT_WAIT_TIMEOUT,
                closing: watch::channel(false).0,
                state: Mutex::new(state),
                writer: Mutex::new(()),
                queue: Mutex::new(Vec::new()),
                waits_timed_out: Default::default(),
            }),
        })
    }

    /// Changes how long a wait is held before an empty answer (call before cloning or serving).
    pub fn with_wait_timeout(mut self, timeout: Duration) -> Discovery {
        let inner = Arc::get_mut(&mut self.inner)
            .expect("with_wait_timeout before the Discovery is shared");
        inner.wait_timeout = timeout;
        self
    }

    /// The configured public base URL (no trailing slash).
    pub fn public_base(&self) -> Option<&str> {
        self.inner.public_base.as_deref()
    }

    /// The token's URL under the public base, or `None` when none was configured.
    pub fn url(&self, token: &str) -> Option<String> {
        self.public_base().map(|b| token_url(b, token))
    }

    /// The store's current index (`X-Etcd-Index`).
    pub fn index(&self) -> u64 {
        lock(&self.inner.state).index
    }

    /// A copy of a token's record.
    pub fn token(&self, token: &str) -> Option<TokenRecord> {
        lock(&self.inner.state)
            .tokens
            .get(token)
            .map(|e| (*e.record).clone())
    }

    /// The token made for `group`, if any.
    pub fn group_token(&self, group: &str) -> Option<String> {
        lock(&self.inner.state).groups.get(group).cloned()
    }

    /// Creates a token for a cluster of `size` members (blocking: it writes the store).
    pub fn create(&self, size: u64) -> Result<String, DiscoveryError> {
        let size = check_size(size)?;
        let _w = lock(&self.inner.writer);
        self.create_locked(size, None)
    }

    /// The token of inventory group `group`, created for `size` members on first call and kept
    /// (also across restarts); the same size later returns the same token, another size is
    /// [`DiscoveryError::GroupSizeMismatch`]. Blocking: it may write the store.
    pub fn ensure_group_token(&self, group: &str, size: u64) -> Result<String, DiscoveryError> {
        let size = check_size(size)?;
        let _w = lock(&self.inner.writer);
        let existing = {
            let st = lock(&self.inner.state);
            st.groups.get(group).map(|t| {
                (
                    t.clone(),
                    st.tokens.get(t).and_then(|e| e.record.size()).unwrap_or(0),
                )
            })
        };
        match existing {
            Some((token, s)) if s == size => Ok(token),
            Some((token, s)) => Err(DiscoveryError::GroupSizeMismatch {
                group: group.to_string(),
                token,
                existing: s,
                requested: size,
            }),
            None => self.create_locked(size, Some(group.to_string())),
        }
    }

    fn create_locked(&self, size: u32, group: Option<String>) -> Result<String, DiscoveryError> {
        let (token, index) = {
            let st = lock(&self.inner.state);
            let mut token = new_token();
            while st.tokens.contains_key(&token) {
                token = new_token();
            }
            (token, st.index + 1)
        };
        let rec = TokenRecord::new(&token, size, group.clone(), index);
        self.inner.store.save(&rec)?;
        let mut st = lock(&self.inner.state);
        st.index = index;
        if let Some(g) = group {
            st.groups.insert(g, token.clone());
        }
        let (changed, _) = watch::channel(index);
        st.tokens.insert(
            token.clone(),
            TokenEntry {
                record: Arc::new(rec),
                changed,
            },
        );
        tracing::info!(%token, size, index, "discovery token created");
        Ok(token)
    }

    fn unknown_token(token: &str, index: u64) -> V2Error {
        V2Error::new(v2::code::KEY_NOT_FOUND, v2::full_key(token, ""), index)
    }

    /// A read: the event and the store index.
    pub fn get(
        &self,
        token: &str,
        rel: &str,
        recursive: bool,
        sorted: bool,
    ) -> Result<(Event, u64), V2Error> {
        let st = lock(&self.inner.state);
        let e = st
            .tokens
            .get(token)
            .ok_or_else(|| Self::unknown_token(token, st.index))?;
        Ok((e.record.get(rel, recursive, sorted, st.index)?, st.index))
    }

    /// A PUT (blocking: writes the store). Returns the event and the new index.
    pub fn put(&self, token: &str, rel: &str, req: &PutRequest) -> Result<(Event, u64), V2Error> {
        let (rel, req) = (rel.to_string(), req.clone());
        self.change(token, move |rec, cur| rec.put(&rel, &req, cur))
    }

    /// A DELETE (blocking: writes the store).
    pub fn delete(
        &self,
        token: &str,
        rel: &str,
        req: &DeleteRequest,
    ) -> Result<(Event, u64), V2Error> {
        let (rel, req) = (rel.to_string(), req.clone());
        self.change(token, move |rec, cur| rec.delete(&rel, &req, cur))
    }

    /// Applies one change. Changes arriving while another batch is being saved are committed
    /// together by whichever caller takes the writer lock next: applied in arrival order (each
    /// gets the next index), the touched records saved in parallel (one save per token), then
    /// all published at once, so readers never see a later index before an earlier one.
    fn change(
        &self,
        token: &str,
        f: impl FnOnce(&mut TokenRecord, u64) -> Result<Event, V2Error> + Send + 'static,
    ) -> Result<(Event, u64), V2Error> {
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&self.inner.queue).push(Pending {
            token: token.to_string(),
            op: Box::new(f),
            done: tx,
        });
        let _w = lock(&self.inner.writer);
        if let Ok(r) = rx.try_recv() {
            return r;
        }
        let batch = std::mem::take(&mut *lock(&self.inner.queue));
        self.commit(batch);
        rx.try_recv()
            .expect("a batch answers every change it took, ours included")
    }

    fn commit(&self, batch: Vec<Pending>) {
        let mut current = lock(&self.inner.state).index;
        let mut dirty: HashMap<String, TokenRecord> = HashMap::new();
        let mut results: Vec<(Reply, ChangeResult)> = Vec::new();
        for p in batch {
            let rec = match dirty.get(&p.token) {
                Some(r) => r.clone(),
                None => {
                    let st = lock(&self.inner.state);
                    match st.tokens.get(&p.token) {
                        Some(e) => (*e.record).clone(),
                        None => {
                            let err = Self::unknown_token(&p.token, current);
                            results.push((
                                Reply {
                                    token: p.token,
                                    done: p.done,
                                },
                                Err(err),
                            ));
                            continue;
                        }
                    }
                }
            };
            // Each change works on its own copy: a refused one leaves nothing behind.
            let mut scratch = rec;
            let r = (p.op)(&mut scratch, current).map(|ev| {
                current = ev.index();
                scratch.push_history(ev.clone());
                (ev, current)
            });
            if r.is_ok() {
                dirty.insert(p.token.clone(), scratch);
            }
            results.push((
                Reply {
                    token: p.token,
                    done: p.done,
                },
                r,
            ));
        }
        let store = &self.inner.store;
        let failed: HashMap<String, String> = std::thread::scope(|s| {
            let handles: Vec<_> = dirty
                .values()
                .map(|rec| (rec.token.clone(), s.spawn(move || store.save(rec))))
                .collect();
            handles
                .into_iter()
                .filter_map(|(t, h)| match h.join().expect("store saves do not panic") {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::error!(token = %t, "discovery store: {e}");
                        Some((t, format!("discovery store: {e}")))
                    }
                })
                .collect()
        });
        let before = {
            let mut st = lock(&self.inner.state);
            let before = st.index;
            for (token, rec) in dirty {
                if failed.contains_key(&token) {
                    continue;
                }
                let entry = st.tokens.get_mut(&token).expect("tokens are never removed");
                let last = rec.last_index;
                entry.record = Arc::new(rec);
                entry.changed.send_replace(last);
            }
            // Indexes of changes whose save failed are skipped, never handed out twice.
            st.index = st.index.max(current);
            before
        };
        for (p, r) in results {
            let r = match (r, failed.get(&p.token)) {
                (Ok(_), Some(msg)) => {
                    Err(V2Error::new(v2::code::RAFT_INTERNAL, msg.clone(), before))
                }
                (r, _) => r,
            };
            if let Ok((ev, index)) = &r {
                tracing::info!(token = %p.token, action = %ev.action, key = %ev.node.key, index, "discovery change");
            }
            let _ = p.done.send(r);
        }
    }

    /// Starts a wait on `rel` (`wait=true`): a change already in the history at or after `since`
    /// (0: the next one) is returned at once; otherwise a [`Waiter`] for the next matching change.
    pub fn watch(
        &self,
        token: &str,
        rel: &str,
        recursive: bool,
        since: u64,
    ) -> Result<Waiter, V2Error> {
        let st = lock(&self.inner.state);
        let e = st
            .tokens
            .get(token)
            .ok_or_else(|| Self::unknown_token(token, st.index))?;
        let since = if since == 0 { st.index + 1 } else { since };
        let key = v2::full_key(token, rel);
        let found = e.record.scan(&key, recursive, since, st.index)?.cloned();
        Ok(Waiter {
            discovery: self.clone(),
            token: token.to_string(),
            key,
            recursive,
            since,
            // The token's changes are published in index order; later ones are checked live.
            seen: e.record.last_index,
            start_index: st.index,
            found,
            rx: e.changed.subscribe(),
        })
    }

    /// How long a wait is held.
    pub fn wait_timeout(&self) -> Duration {
        self.inner.wait_timeout
    }

    /// Ends every pending wait with an empty answer (etcd's client asks again), and every later
    /// one at once: call it when the server stops, or a graceful shutdown waits for the long polls.
    pub fn close_waits(&self) {
        self.inner.closing.send_replace(true);
    }

    /// The change a waiter is waiting for; `None` after the wait timeout or [`Discovery::close_waits`].
    pub async fn wait_event(&self, waiter: Waiter) -> Option<Event> {
        let mut closing = self.inner.closing.subscribe();
        tokio::select! {
            ev = tokio::time::timeout(self.inner.wait_timeout, waiter.next()) => {
                if ev.is_err() {
                    self.inner.waits_timed_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                ev.ok()
            }
            _ = closing.wait_for(|c| *c) => None,
        }
    }

    /// How many waits were answered empty after the wait timeout (since open).
    pub fn waits_timed_out(&self) -> u64 {
        self.inner
            .waits_timed_out
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A pending `wait=true` request.
pub struct Waiter {
    discovery: Discovery,
    token: String,
    key: String,
    recursive: bool,
    since: u64,
    seen: u64,
    start_index: u64,
    found: Option<Event>,
    rx: watch::Receiver<u64>,
}

impl Waiter {
    /// The store index when the wait began (the `X-Etcd-Index` of the answer).
    pub fn start_index(&self) -> u64 {
        self.start_index
    }

    /// The first matching change (at once if it was in the history).
    pub async fn next(mut self) -> Event {
        if let Some(ev) = self.found.take() {
            return ev;
        }
        loop {
            if self.rx.changed().await.is_err() {
                // The token's sender lives as long as the Discovery; never reached while serving.
                std::future::pending::<()>().await;
            }
            let st = lock(&self.discovery.inner.state);
            let Some(entry) = st.tokens.get(&self.token) else {
                continue;
            };
            let rec = &entry.record;
            let hit = rec
                .history
                .iter()
                .filter(|e| e.index() > self.seen && e.index() >= self.since)
                .find(|e| v2::live_match(&self.key, self.recursive, e));
            if let Some(ev) = hit {
                return ev.clone();
            }
            self.seen = rec.last_index;
        }
    }
}
