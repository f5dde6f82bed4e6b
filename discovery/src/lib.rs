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
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

pub use crate::etcd_store::EtcdStore;
pub use crate::http::router;
pub use crate::store::{store_from_spec, FileStore, Store, StoreError};
use crate::v2::{now_ms, DeleteRequest, Event, PutRequest, TokenLimits, TokenRecord, V2Error};

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
    /// The service holds [`Limits::max_tokens`] tokens made through `/new` already.
    #[error("the discovery service holds {limit} tokens already (the most it keeps); unused ones expire after {} days", .unused_ttl.as_secs() / 86400)]
    TooManyTokens { limit: usize, unused_ttl: Duration },
    /// This client address has [`Limits::max_tokens_per_client`] tokens already.
    #[error("{client} has {limit} discovery tokens already (the most one address may have); unused ones expire after {} days", .unused_ttl.as_secs() / 86400)]
    TooManyTokensForClient {
        client: IpAddr,
        limit: usize,
        unused_ttl: Duration,
    },
}

/// Default of [`Limits::max_value_bytes`]: etcd discovery values are a member's peer URLs.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 4096;
/// Default of [`Limits::max_token_bytes`] (a cluster of 1000 typical etcd members takes about 80 KB).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 128 * 1024;
/// Default of [`Limits::max_tokens`].
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Default of [`Limits::max_tokens_per_client`].
pub const DEFAULT_MAX_TOKENS_PER_CLIENT: usize = 16;
/// Default of [`Limits::unused_token_ttl`]: 7 days.
pub const DEFAULT_UNUSED_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default of [`Limits::idle_token_ttl`]: 30 days.
pub const DEFAULT_IDLE_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the service keeps at most, and for how long. Inventory group tokens
/// ([`Discovery::ensure_group_token`]) are made by the operator: they count towards no token limit
/// and never expire; the value and size limits hold for every token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest value a PUT may store, in bytes; longer is 400 with error 209.
    pub max_value_bytes: usize,
    /// Bytes of keys and values one token holds at most; more is 400 with error 103. (Keys per
    /// token are bound by its size: [`v2::max_keys`].)
    pub max_token_bytes: usize,
    /// Tokens (not of a group) kept at once; `/new` beyond it is 503.
    pub max_tokens: usize,
    /// Tokens (not of a group) made through `/new` by one client address that are kept at once;
    /// `/new` beyond it is 429.
    pub max_tokens_per_client: usize,
    /// A token (not of a group) nobody wrote anything to is removed this long after it was made.
    pub unused_token_ttl: Duration,
    /// A token (not of a group) that was written to is removed this long after its last change
    /// (etcd only uses discovery to bootstrap a cluster).
    pub idle_token_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            max_tokens: DEFAULT_MAX_TOKENS,
            max_tokens_per_client: DEFAULT_MAX_TOKENS_PER_CLIENT,
            unused_token_ttl: DEFAULT_UNUSED_TOKEN_TTL,
            idle_token_ttl: DEFAULT_IDLE_TOKEN_TTL,
        }
    }
}

impl Limits {
    /// The limits [`TokenRecord::put`] checks.
    pub fn token_limits(&self) -> TokenLimits {
        TokenLimits {
            max_value_bytes: self.max_value_bytes,
            max_token_bytes: self.max_token_bytes,
        }
    }

    /// Whether `rec` has expired at `now_ms`.
    fn expired(&self, rec: &TokenRecord, now_ms: u64) -> bool {
        if rec.group.is_some() {
            return false;
        }
        let (since, ttl) = if rec.used() {
            (rec.changed_ms, self.idle_token_ttl)
        } else {
            (rec.created_ms, self.unused_token_ttl)
        };
        now_ms.saturating_sub(since) >= ttl.as_millis().min(u128::from(u64::MAX)) as u64
    }
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
    limits: Limits,
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
            // Tokens that expired took their indexes with them; the store remembers the highest.
            index: store.index_floor()?,
            tokens: HashMap::new(),
            groups: HashMap::new(),
        };
        let loaded_ms = now_ms();
        for mut rec in records {
            // Records from before times were kept count from now.
            if rec.created_ms == 0 {
                rec.created_ms = loaded_ms;
            }
            if rec.changed_ms == 0 {
                rec.changed_ms = loaded_ms;
            }
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
                limits: Limits::default(),
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

    /// Changes the limits (call before cloning or serving). Expiry is only ever applied with the
    /// limits set here: nothing is removed at open.
    pub fn with_limits(mut self, limits: Limits) -> Discovery {
        let inner =
            Arc::get_mut(&mut self.inner).expect("with_limits before the Discovery is shared");
        inner.limits = limits;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
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

    /// A copy of a token's record (`None` once it expired).
    pub fn token(&self, token: &str) -> Option<TokenRecord> {
        let st = lock(&self.inner.state);
        self.live(&st, token).map(|e| (*e.record).clone())
    }

    /// The token's entry unless it is unknown or expired (an expired token is removed by the next
    /// [`Discovery::sweep_expired`], but is gone for every request at once).
    fn live<'a>(&self, st: &'a State, token: &str) -> Option<&'a TokenEntry> {
        st.tokens
            .get(token)
            .filter(|e| !self.inner.limits.expired(&e.record, now_ms()))
    }

    /// The token made for `group`, if any.
    pub fn group_token(&self, group: &str) -> Option<String> {
        lock(&self.inner.state).groups.get(group).cloned()
    }

    /// Creates a token for a cluster of `size` members (blocking: it writes the store). For the
    /// operator's code: no token limit applies (the token counts towards them and expires as any
    /// token not of a group); `/new` uses [`Discovery::create_for`].
    pub fn create(&self, size: u64) -> Result<String, DiscoveryError> {
        let size = check_size(size)?;
        let _w = lock(&self.inner.writer);
        self.create_locked(size, None, None)
    }

    /// Creates a token for a cluster of `size` members asked for by `client` (`/new`), within
    /// [`Limits::max_tokens`] and [`Limits::max_tokens_per_client`] (counted over the tokens not of
    /// a group that have not expired; expired ones are removed first). Blocking: it writes the store.
    pub fn create_for(&self, size: u64, client: Option<IpAddr>) -> Result<String, DiscoveryError> {
        let size = check_size(size)?;
        let client = client.map(|ip| ip.to_canonical());
        let _w = lock(&self.inner.writer);
        if let Err(e) = self.sweep_locked() {
            tracing::error!("removing expired discovery tokens: {e}");
        }
        let limits = &self.inner.limits;
        let (total, mine) = {
            let st = lock(&self.inner.state);
            let now = now_ms();
            st.tokens
                .values()
                .filter(|e| e.record.group.is_none() && !limits.expired(&e.record, now))
                .fold((0, 0), |(t, m), e| {
                    let same = client.is_some() && e.record.client == client;
                    (t + 1, m + usize::from(same))
                })
        };
        if let Some(ip) = client {
            if mine >= limits.max_tokens_per_client {
                return Err(DiscoveryError::TooManyTokensForClient {
                    client: ip,
                    limit: limits.max_tokens_per_client,
                    unused_ttl: limits.unused_token_ttl,
                });
            }
        }
        if total >= limits.max_tokens {
            return Err(DiscoveryError::TooManyTokens {
                limit: limits.max_tokens,
                unused_ttl: limits.unused_token_ttl,
            });
        }
        self.create_locked(size, None, client)
    }

    /// Removes the tokens that expired (see [`Limits`]) from memory and from the store; returns how
    /// many. [`Discovery::create_for`] calls it; an embedding server may call it now and then
    /// (blocking: it writes the store). Expired tokens answer 404 before they are removed.
    pub fn sweep_expired(&self) -> Result<usize, DiscoveryError> {
        let _w = lock(&self.inner.writer);
        self.sweep_locked()
    }

    fn sweep_locked(&self) -> Result<usize, DiscoveryError> {
        let (expired, index) = {
            let st = lock(&self.inner.state);
            let now = now_ms();
            let expired: Vec<String> = st
                .tokens
                .iter()
                .filter(|(_, e)| self.inner.limits.expired(&e.record, now))
                .map(|(t, _)| t.clone())
                .collect();
            (expired, st.index)
        };
        for token in &expired {
            self.inner.store.remove(token, index)?;
            let mut st = lock(&self.inner.state);
            if let Some(e) = st.tokens.remove(token) {
                tracing::info!(%token, used = e.record.used(), "discovery token expired and removed");
            }
        }
        Ok(expired.len())
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
            None => self.create_locked(size, Some(group.to_string()), None),
        }
    }

    fn create_locked(
        &self,
        size: u32,
        group: Option<String>,
        client: Option<IpAddr>,
    ) -> Result<String, DiscoveryError> {
        let (token, index) = {
            let st = lock(&self.inner.state);
            let mut token = new_token();
            while st.tokens.contains_key(&token) {
                token = new_token();
            }
            (token, st.index + 1)
        };
        let mut rec = TokenRecord::new(&token, size, group.clone(), index);
        rec.client = client;
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
        tracing::info!(%token, size, index, ?client, "discovery token created");
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
        let e = self
            .live(&st, token)
            .ok_or_else(|| Self::unknown_token(token, st.index))?;
        Ok((e.record.get(rel, recursive, sorted, st.index)?, st.index))
    }

    /// A PUT (blocking: writes the store). Returns the event and the new index.
    pub fn put(&self, token: &str, rel: &str, req: &PutRequest) -> Result<(Event, u64), V2Error> {
        let (rel, req) = (rel.to_string(), req.clone());
        let limits = self.inner.limits.token_limits();
        self.change(token, move |rec, cur| rec.put(&rel, &req, cur, &limits))
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
        let now = now_ms();
        // One copy per token per batch, changed in place: a refused change changes nothing
        // (`TokenRecord::put` and `delete` check everything first), so the next one sees no trace.
        let mut dirty: HashMap<String, (TokenRecord, Vec<Event>)> = HashMap::new();
        let mut results: Vec<(Reply, ChangeResult)> = Vec::new();
        for p in batch {
            if !dirty.contains_key(&p.token) {
                let st = lock(&self.inner.state);
                match self.live(&st, &p.token) {
                    Some(e) => {
                        dirty.insert(p.token.clone(), ((*e.record).clone(), Vec::new()));
                    }
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
            let (rec, events) = dirty.get_mut(&p.token).expect("inserted above");
            let r = (p.op)(rec, current).map(|ev| {
                current = ev.index();
                rec.push_history(ev.clone());
                rec.changed_ms = now;
                events.push(ev.clone());
                (ev, current)
            });
            results.push((
                Reply {
                    token: p.token,
                    done: p.done,
                },
                r,
            ));
        }
        dirty.retain(|_, (_, events)| !events.is_empty());
        let store = &self.inner.store;
        let failed: HashMap<String, String> = std::thread::scope(|s| {
            let handles: Vec<_> = dirty
                .values()
                .map(|(rec, events)| {
                    (
                        rec.token.clone(),
                        s.spawn(move || store.append(rec, events)),
                    )
                })
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
            for (token, (rec, _)) in dirty {
                if failed.contains_key(&token) {
                    continue;
                }
                let entry = st
                    .tokens
                    .get_mut(&token)
                    .expect("tokens are only removed under the writer lock");
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
        let e = self
            .live(&st, token)
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
