//! The etcd v2 keys model of one discovery token: nodes, events, errors and the event history,
//! with the semantics of etcd 3.4's v2 store (`etcdserver/api/v2store`, `v2error`).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Where discovery.etcd.io keeps tokens in its etcd; keys and error causes carry this prefix.
pub const KEY_PREFIX: &str = "/_etcd/registry";
/// Events kept per token for `waitIndex` (etcd keeps 1000 for the whole store).
pub const HISTORY_CAPACITY: usize = 1000;
/// Bytes of keys and values (node and previous node) the events of a token's history hold at most;
/// older events are dropped beyond it as beyond [`HISTORY_CAPACITY`] (1000 registrations of a
/// typical etcd member take about 110 KB). Fixed, so that a replayed log keeps the same history.
pub const HISTORY_MAX_BYTES: usize = 256 * 1024;
/// Size of a token's `_config/size`: at least 1, at most this.
pub const MAX_CLUSTER_SIZE: u32 = 1000;
/// Nodes a token of the largest size may hold (registrations and directories per [`max_keys`],
/// plus the token's directory, `_config` and `_config/size`).
pub const MAX_NODES_PER_TOKEN: usize = max_keys(MAX_CLUSTER_SIZE) + 3;
/// Longest key accepted below a token, in bytes (etcd member ids are 16 hex digits); longer is
/// refused with error 209.
pub const MAX_KEY_BYTES: usize = 512;

/// Keys (registrations and directories, hidden ones included) a token made for `size` members
/// holds at most: twice its size and 32 more, room for members that lose the registration race
/// and register past `size` (see the README); more is refused with error 103.
pub const fn max_keys(size: u32) -> usize {
    2 * size as usize + 32
}

/// What one token may hold; checked by [`TokenRecord::put`] before anything changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLimits {
    /// Longest value, in bytes (error 209 beyond).
    pub max_value_bytes: usize,
    /// Bytes of keys and values all of the token's nodes hold together (error 103 beyond).
    pub max_token_bytes: usize,
}

impl Default for TokenLimits {
    fn default() -> TokenLimits {
        TokenLimits {
            max_value_bytes: crate::DEFAULT_MAX_VALUE_BYTES,
            max_token_bytes: crate::DEFAULT_MAX_TOKEN_BYTES,
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// etcd v2 error codes used here (`v2error/error.go`).
pub mod code {
    pub const KEY_NOT_FOUND: u32 = 100;
    pub const TEST_FAILED: u32 = 101;
    pub const NOT_FILE: u32 = 102;
    pub const NO_MORE_PEER: u32 = 103;
    pub const NOT_DIR: u32 = 104;
    pub const NODE_EXIST: u32 = 105;
    pub const ROOT_RONLY: u32 = 107;
    pub const DIR_NOT_EMPTY: u32 = 108;
    pub const PREV_VALUE_REQUIRED: u32 = 201;
    pub const TTL_NAN: u32 = 202;
    pub const INDEX_NAN: u32 = 203;
    pub const INVALID_FIELD: u32 = 209;
    pub const INVALID_FORM: u32 = 210;
    pub const RAFT_INTERNAL: u32 = 300;
    pub const EVENT_INDEX_CLEARED: u32 = 401;
}

/// An etcd v2 error as the keys API returns it: `{"errorCode":..,"message":..,"cause":..,"index":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V2Error {
    #[serde(rename = "errorCode")]
    pub code: u32,
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cause: String,
    pub index: u64,
}

impl V2Error {
    pub fn new(code: u32, cause: impl Into<String>, index: u64) -> V2Error {
        V2Error {
            code,
            message: message(code).to_string(),
            cause: cause.into(),
            index,
        }
    }

    /// The HTTP status etcd answers this error with (`Error.StatusCode`).
    pub fn status(&self) -> u16 {
        match self.code {
            code::KEY_NOT_FOUND => 404,
            code::NOT_FILE | code::DIR_NOT_EMPTY => 403,
            110 => 401,
            code::TEST_FAILED | code::NODE_EXIST => 412,
            300 | 301 => 500,
            _ => 400,
        }
    }
}

impl std::fmt::Display for V2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.cause)
    }
}

/// etcd's message for an error code.
pub fn message(code: u32) -> &'static str {
    match code {
        100 => "Key not found",
        101 => "Compare failed",
        102 => "Not a file",
        103 => "Reached the max number of peers in the cluster",
        104 => "Not a directory",
        105 => "Key already exists",
        106 => "The prefix of given key is a keyword in etcd",
        107 => "Root is read only",
        108 => "Directory not empty",
        110 => "The request requires user authentication",
        200 => "Value is Required in POST form",
        201 => "PrevValue is Required in POST form",
        202 => "The given TTL in POST form is not a number",
        203 => "The given index in POST form is not a number",
        209 => "Invalid field",
        210 => "Invalid POST form",
        300 => "Raft Internal Error",
        301 => "During Leader Election",
        400 => "watcher is cleared due to etcd recovery",
        401 => "The event in requested index is outdated and cleared",
        _ => "Client Internal Error",
    }
}

/// A node as the v2 API shows it (`NodeExtern`): empty fields are left out as etcd's `omitempty` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeJson {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub dir: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeJson>,
    pub modified_index: u64,
    pub created_index: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A change (or a read) as the v2 API reports it: `action`, `node`, `prevNode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub action: String,
    pub node: NodeJson,
    #[serde(rename = "prevNode", default, skip_serializing_if = "Option::is_none")]
    pub prev_node: Option<NodeJson>,
}

impl Event {
    /// The index of the change (`node.modifiedIndex`).
    pub fn index(&self) -> u64 {
        self.node.modified_index
    }

    /// Whether etcd answers this change with 201 Created.
    pub fn is_created(&self) -> bool {
        self.action == "create" || (self.action == "set" && self.prev_node.is_none())
    }
}

/// One stored node of a token; the key is its path relative to the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredNode {
    pub dir: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub created_index: u64,
    pub modified_index: u64,
}

/// Everything kept about one discovery token: what a [`crate::Store`] persists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Record format version (1).
    pub format: u32,
    /// 32 lowercase hex digits.
    pub token: String,
    /// The inventory group this token was made for (`Discovery::ensure_group_token`).
    #[serde(default)]
    pub group: Option<String>,
    /// The highest index this token's changes used.
    pub last_index: u64,
    /// Events with an index up to this one were dropped from `history` (waits before it get error 401).
    #[serde(default)]
    pub cleared_through: u64,
    /// Nodes by path relative to the token: `""` is the token's directory, `_config/size` its size.
    pub nodes: BTreeMap<String, StoredNode>,
    /// The last [`HISTORY_CAPACITY`] changes (at most [`HISTORY_MAX_BYTES`]), oldest first.
    pub history: VecDeque<Event>,
    /// When the token was made, in milliseconds since the Unix epoch (0 in records written before
    /// this was kept: the service counts those from when it loaded them).
    #[serde(default)]
    pub created_ms: u64,
    /// When the token last changed (creation, or the last committed change), milliseconds since the
    /// Unix epoch (0 as for `created_ms`).
    #[serde(default)]
    pub changed_ms: u64,
    /// The address that asked for the token (`/new`), counted by the per-client token limit.
    #[serde(default)]
    pub client: Option<std::net::IpAddr>,
}

/// What a PUT asks for (the form fields etcd's `parseKeyRequest` reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutRequest {
    pub value: String,
    pub dir: bool,
    pub prev_exist: Option<bool>,
    pub prev_value: Option<String>,
    pub prev_index: u64,
}

/// What a DELETE asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteRequest {
    pub dir: bool,
    pub recursive: bool,
    pub prev_value: Option<String>,
    pub prev_index: u64,
}

fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(p, _)| p)
}

fn base(rel: &str) -> &str {
    rel.rsplit_once('/').map_or(rel, |(_, b)| b)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Hidden as etcd hides it: a name starting with `_`.
fn hidden(name: &str) -> bool {
    name.starts_with('_')
}

/// The full key of `rel` under `token`: `/_etcd/registry/<token>[/<rel>]`.
pub fn full_key(token: &str, rel: &str) -> String {
    if rel.is_empty() {
        format!("{KEY_PREFIX}/{token}")
    } else {
        format!("{KEY_PREFIX}/{token}/{rel}")
    }
}

/// Whether writes to `rel` are refused: the token's directory and its `_config`.
fn read_only(rel: &str) -> bool {
    rel.is_empty() || rel == "_config" || rel.starts_with("_config/")
}

impl TokenRecord {
    /// A new token of `size` members created at `index`: the token directory, `_config` and
    /// `_config/size` all get that index, as etcd's `Create` of `<token>/_config/size` gives them.
    pub fn new(token: &str, size: u32, group: Option<String>, index: u64) -> TokenRecord {
        let dir = |i| StoredNode {
            dir: true,
            value: None,
            created_index: i,
            modified_index: i,
        };
        let mut nodes = BTreeMap::new();
        nodes.insert(String::new(), dir(index));
        nodes.insert("_config".to_string(), dir(index));
        nodes.insert(
            "_config/size".to_string(),
            StoredNode {
                dir: false,
                value: Some(size.to_string()),
                created_index: index,
                modified_index: index,
            },
        );
        let now = now_ms();
        let mut rec = TokenRecord {
            format: 1,
            token: token.to_string(),
            group,
            last_index: index,
            cleared_through: 0,
            nodes,
            history: VecDeque::new(),
            created_ms: now,
            changed_ms: now,
            client: None,
        };
        let ev = Event {
            action: "create".into(),
            node: rec.repr("_config/size", false, false, false),
            prev_node: None,
        };
        rec.push_history(ev);
        rec
    }

    /// The size written at creation (`_config/size`).
    pub fn size(&self) -> Option<u32> {
        self.nodes
            .get("_config/size")
            .and_then(|n| n.value.as_deref())
            .and_then(|v| v.parse().ok())
    }

    /// Registered members (visible children of the token) as (id, value), by creation index.
    pub fn members(&self) -> Vec<(String, String)> {
        let mut kids: Vec<(&String, &StoredNode)> = self
            .nodes
            .iter()
            .filter(|(k, n)| !k.is_empty() && !k.contains('/') && !hidden(k) && !n.dir)
            .collect();
        kids.sort_by_key(|(k, n)| (n.created_index, (*k).clone()));
        kids.into_iter()
            .map(|(k, n)| (k.clone(), n.value.clone().unwrap_or_default()))
            .collect()
    }

    fn key(&self, rel: &str) -> String {
        full_key(&self.token, rel)
    }

    /// Whether anything was written below the token since it was made (a registration, even if
    /// deleted since).
    pub fn used(&self) -> bool {
        self.nodes
            .get("")
            .is_some_and(|root| self.last_index > root.created_index)
    }

    /// Bytes of keys and values of the token's nodes (what [`TokenLimits::max_token_bytes`] bounds).
    pub fn data_bytes(&self) -> usize {
        self.nodes
            .iter()
            .map(|(k, n)| k.len() + n.value.as_ref().map_or(0, String::len))
            .sum()
    }

    /// Registrations and directories below the token, hidden ones included (what [`max_keys`] bounds).
    pub fn key_count(&self) -> usize {
        self.nodes
            .keys()
            .filter(|k| !k.is_empty() && !read_only(k))
            .count()
    }

    /// Appends a change to the history, dropping the oldest beyond [`HISTORY_CAPACITY`] events or
    /// [`HISTORY_MAX_BYTES`].
    pub fn push_history(&mut self, ev: Event) {
        self.last_index = self.last_index.max(ev.index());
        self.history.push_back(ev);
        let mut bytes: usize = self.history.iter().map(event_bytes).sum();
        while self.history.len() > HISTORY_CAPACITY || bytes > HISTORY_MAX_BYTES {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            bytes -= event_bytes(&old);
            self.cleared_through = self.cleared_through.max(old.index());
        }
    }

    /// Applies a change read back from a log (see [`crate::FileStore`]): `logged` is the event the
    /// change produced, without `prevNode`, which is rebuilt from the state before it. Produces the
    /// same nodes and history as the change did.
    pub fn replay(&mut self, mut logged: Event, at_ms: u64) -> Result<(), String> {
        let root = self.key("");
        let rel = logged
            .node
            .key
            .strip_prefix(&root)
            .and_then(|r| r.strip_prefix('/'))
            .filter(|r| !r.is_empty())
            .ok_or_else(|| format!("key {:?} is not below {root}", logged.node.key))?
            .to_string();
        let before = self
            .nodes
            .contains_key(&rel)
            .then(|| self.repr(&rel, false, false, false));
        let n = &logged.node;
        let prev = match logged.action.as_str() {
            "create" | "set" => {
                if logged.action == "create" && before.is_some() {
                    return Err(format!("create of {rel:?}, which exists"));
                }
                let mut cur = String::new();
                for comp in parent(&rel).split('/').filter(|c| !c.is_empty()) {
                    let p = join(&cur, comp);
                    self.nodes.entry(p.clone()).or_insert(StoredNode {
                        dir: true,
                        value: None,
                        created_index: n.modified_index,
                        modified_index: n.modified_index,
                    });
                    cur = p;
                }
                before
            }
            "update" | "compareAndSwap" => {
                if before.is_none() {
                    return Err(format!(
                        "{} of {rel:?}, which does not exist",
                        logged.action
                    ));
                }
                before
            }
            "delete" | "compareAndDelete" => {
                if before.is_none() {
                    return Err(format!(
                        "{} of {rel:?}, which does not exist",
                        logged.action
                    ));
                }
                let under = format!("{rel}/");
                self.nodes
                    .retain(|k, _| *k != rel && !k.starts_with(&under));
                before
            }
            other => return Err(format!("unknown action {other:?}")),
        };
        if !matches!(logged.action.as_str(), "delete" | "compareAndDelete") {
            self.nodes.insert(
                rel,
                StoredNode {
                    dir: n.dir,
                    value: (!n.dir).then(|| n.value.clone().unwrap_or_default()),
                    created_index: n.created_index,
                    modified_index: n.modified_index,
                },
            );
        }
        logged.prev_node = prev;
        self.push_history(logged);
        self.changed_ms = at_ms;
        Ok(())
    }

    fn children(&self, rel: &str) -> Vec<(&String, &StoredNode)> {
        let prefix = if rel.is_empty() {
            String::new()
        } else {
            format!("{rel}/")
        };
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| {
                !k.is_empty() && k.len() > prefix.len() && !k[prefix.len()..].contains('/')
            })
            .collect()
    }

    /// The external form of a stored node. `list` lists a directory's visible children (as `Get`
    /// does, one level unless `recursive`); without it a directory shows no children (`Repr`).
    fn repr(&self, rel: &str, list: bool, recursive: bool, sorted: bool) -> NodeJson {
        let n = &self.nodes[rel];
        let mut out = NodeJson {
            key: self.key(rel),
            value: None,
            dir: n.dir,
            nodes: Vec::new(),
            modified_index: n.modified_index,
            created_index: n.created_index,
        };
        if !n.dir {
            out.value = Some(n.value.clone().unwrap_or_default());
            return out;
        }
        if !list {
            return out;
        }
        let mut kids: Vec<(&String, &StoredNode)> = self
            .children(rel)
            .into_iter()
            .filter(|(k, _)| !hidden(base(k)))
            .collect();
        if sorted {
            kids.sort_by(|a, b| a.0.cmp(b.0));
        } else {
            // etcd lists in map order; creation order is what the discovery client sorts by anyway.
            kids.sort_by_key(|(k, n)| (n.created_index, (*k).clone()));
        }
        out.nodes = kids
            .into_iter()
            .map(|(k, _)| self.repr(k, recursive, recursive, sorted))
            .collect();
        out
    }

    /// Walks to `rel` as etcd's `internalGet`: 104 through a file, 100 at the first missing component.
    fn walk(&self, rel: &str, current: u64) -> Result<&StoredNode, V2Error> {
        let mut cur = String::new();
        if !rel.is_empty() {
            for comp in rel.split('/') {
                if !self.nodes[&cur].dir {
                    return Err(V2Error::new(code::NOT_DIR, self.key(&cur), current));
                }
                let next = join(&cur, comp);
                if !self.nodes.contains_key(&next) {
                    return Err(V2Error::new(code::KEY_NOT_FOUND, self.key(&next), current));
                }
                cur = next;
            }
        }
        Ok(&self.nodes[&cur])
    }

    /// `GET <token>/<rel>`.
    pub fn get(
        &self,
        rel: &str,
        recursive: bool,
        sorted: bool,
        current: u64,
    ) -> Result<Event, V2Error> {
        self.walk(rel, current)?;
        Ok(Event {
            action: "get".into(),
            node: self.repr(rel, true, recursive, sorted),
            prev_node: None,
        })
    }

    /// How many directories above `rel` are missing (etcd's `checkDir` walk); 104 when one is a file.
    /// Changes nothing.
    fn missing_parents(&self, rel: &str, current: u64) -> Result<usize, V2Error> {
        let mut cur = String::new();
        let mut missing = 0;
        for comp in parent(rel).split('/').filter(|c| !c.is_empty()) {
            let p = join(&cur, comp);
            match self.nodes.get(&p) {
                Some(n) if n.dir => {}
                Some(_) => return Err(V2Error::new(code::NOT_DIR, self.key(&p), current)),
                None => missing += 1,
            }
            cur = p;
        }
        Ok(missing)
    }

    /// Refuses a change that would leave the token with more than its share of keys or bytes:
    /// `new_keys` nodes added, `bytes` = bytes of keys and values after the change.
    fn check_room(
        &self,
        new_keys: usize,
        bytes: usize,
        limits: &TokenLimits,
        current: u64,
    ) -> Result<(), V2Error> {
        let size = self.size().unwrap_or(MAX_CLUSTER_SIZE);
        if new_keys > 0 && self.key_count() + new_keys > max_keys(size) {
            return Err(V2Error::new(
                code::NO_MORE_PEER,
                format!(
                    "{}: a token for {size} members holds at most {} keys",
                    self.key(""),
                    max_keys(size)
                ),
                current,
            ));
        }
        if bytes > limits.max_token_bytes {
            return Err(V2Error::new(
                code::NO_MORE_PEER,
                format!(
                    "{}: a token holds at most {} bytes of keys and values",
                    self.key(""),
                    limits.max_token_bytes
                ),
                current,
            ));
        }
        Ok(())
    }

    /// Creates the missing directories above `rel` (etcd's `checkDir` walk); 104 when one is a file.
    fn make_parents(&mut self, rel: &str, next: u64, current: u64) -> Result<(), V2Error> {
        let dir = parent(rel);
        let mut cur = String::new();
        if dir.is_empty() {
            return Ok(());
        }
        for comp in dir.split('/') {
            let p = join(&cur, comp);
            match self.nodes.get(&p) {
                Some(n) if n.dir => {}
                Some(_) => return Err(V2Error::new(code::NOT_DIR, self.key(&p), current)),
                None => {
                    self.nodes.insert(
                        p.clone(),
                        StoredNode {
                            dir: true,
                            value: None,
                            created_index: next,
                            modified_index: next,
                        },
                    );
                }
            }
            cur = p;
        }
        Ok(())
    }

    fn compare(&self, n: &StoredNode, prev_value: Option<&str>, prev_index: u64) -> Option<String> {
        let value = n.value.clone().unwrap_or_default();
        let index_ok = prev_index == 0 || n.modified_index == prev_index;
        let value_ok = prev_value.is_none_or(|p| p == value);
        match (value_ok, index_ok) {
            (true, true) => None,
            (true, false) => Some(format!("[{prev_index} != {}]", n.modified_index)),
            (false, true) => Some(format!("[{} != {value}]", prev_value.unwrap_or_default())),
            (false, false) => Some(format!(
                "[{} != {value}] [{prev_index} != {}]",
                prev_value.unwrap_or_default(),
                n.modified_index
            )),
        }
    }

    /// `PUT <token>/<rel>` as etcd's v2 apply maps it: `prevExist=false` creates, `prevExist=true`
    /// updates, `prevValue`/`prevIndex` compare-and-swap, otherwise set. `current` is the store's
    /// index; the change gets `current + 1`. A value or key over the limits is error 209, a token
    /// full (keys per [`max_keys`], bytes per `limits`) error 103. A refused change changes nothing.
    pub fn put(
        &mut self,
        rel: &str,
        req: &PutRequest,
        current: u64,
        limits: &TokenLimits,
    ) -> Result<Event, V2Error> {
        let next = current + 1;
        if read_only(rel) {
            return Err(V2Error::new(code::ROOT_RONLY, self.key(rel), current));
        }
        if req.value.len() > limits.max_value_bytes {
            return Err(V2Error::new(
                code::INVALID_FIELD,
                format!(
                    "value of {} bytes: the discovery service keeps values of at most {} bytes",
                    req.value.len(),
                    limits.max_value_bytes
                ),
                current,
            ));
        }
        if rel.len() > MAX_KEY_BYTES {
            return Err(V2Error::new(
                code::INVALID_FIELD,
                format!(
                    "key of {} bytes: the discovery service keeps keys of at most {MAX_KEY_BYTES} bytes",
                    rel.len()
                ),
                current,
            ));
        }
        let cas = req.prev_index > 0 || req.prev_value.is_some();
        match (req.prev_exist, cas) {
            (Some(false), _) => self.create(rel, req, next, current, false, limits),
            (Some(true), false) => self.update(rel, req, next, current, limits),
            (_, true) => self.compare_and_swap(rel, req, next, current, limits),
            (None, false) => self.create(rel, req, next, current, true, limits),
        }
    }

    /// Bytes of keys and values once `rel`'s value is `value` (its key counted if it is new).
    fn bytes_with(&self, rel: &str, value: &str) -> usize {
        let old = match self.nodes.get(rel) {
            Some(n) => rel.len() + n.value.as_ref().map_or(0, String::len),
            None => 0,
        };
        self.data_bytes() - old + rel.len() + value.len()
    }

    fn create(
        &mut self,
        rel: &str,
        req: &PutRequest,
        next: u64,
        current: u64,
        replace: bool,
        limits: &TokenLimits,
    ) -> Result<Event, V2Error> {
        let missing = self.missing_parents(rel, current)?;
        let value = if req.dir { "" } else { req.value.as_str() };
        let mut prev = None;
        if let Some(n) = self.nodes.get(rel) {
            if !replace {
                return Err(V2Error::new(code::NODE_EXIST, self.key(rel), current));
            }
            if n.dir {
                return Err(V2Error::new(code::NOT_FILE, self.key(rel), current));
            }
            prev = Some(self.repr(rel, false, false, false));
            self.check_room(0, self.bytes_with(rel, value), limits, current)?;
        } else {
            let mut bytes = self.bytes_with(rel, value);
            let mut cur = String::new();
            for comp in parent(rel).split('/').filter(|c| !c.is_empty()) {
                cur = join(&cur, comp);
                if !self.nodes.contains_key(&cur) {
                    bytes += cur.len();
                }
            }
            self.check_room(missing + 1, bytes, limits, current)?;
        }
        self.make_parents(rel, next, current)?;
        self.nodes.insert(
            rel.to_string(),
            StoredNode {
                dir: req.dir,
                value: (!req.dir).then(|| req.value.clone()),
                created_index: next,
                modified_index: next,
            },
        );
        Ok(Event {
            action: if replace { "set" } else { "create" }.into(),
            node: self.repr(rel, false, false, false),
            prev_node: prev,
        })
    }

    fn update(
        &mut self,
        rel: &str,
        req: &PutRequest,
        next: u64,
        current: u64,
        limits: &TokenLimits,
    ) -> Result<Event, V2Error> {
        let n = self.walk(rel, current)?.clone();
        if n.dir && !req.value.is_empty() {
            return Err(V2Error::new(code::NOT_FILE, self.key(rel), current));
        }
        if !n.dir {
            self.check_room(0, self.bytes_with(rel, &req.value), limits, current)?;
        }
        let prev = self.repr(rel, false, false, false);
        let node = self.nodes.get_mut(rel).expect("walked");
        node.modified_index = next;
        if !node.dir {
            node.value = Some(req.value.clone());
        }
        Ok(Event {
            action: "update".into(),
            node: self.repr(rel, false, false, false),
            prev_node: Some(prev),
        })
    }

    fn compare_and_swap(
        &mut self,
        rel: &str,
        req: &PutRequest,
        next: u64,
        current: u64,
        limits: &TokenLimits,
    ) -> Result<Event, V2Error> {
        let n = self.walk(rel, current)?.clone();
        if n.dir {
            return Err(V2Error::new(code::NOT_FILE, self.key(rel), current));
        }
        if let Some(cause) = self.compare(&n, req.prev_value.as_deref(), req.prev_index) {
            return Err(V2Error::new(code::TEST_FAILED, cause, current));
        }
        self.check_room(0, self.bytes_with(rel, &req.value), limits, current)?;
        let prev = self.repr(rel, false, false, false);
        let node = self.nodes.get_mut(rel).expect("walked");
        node.modified_index = next;
        node.value = Some(req.value.clone());
        Ok(Event {
            action: "compareAndSwap".into(),
            node: self.repr(rel, false, false, false),
            prev_node: Some(prev),
        })
    }

    /// `DELETE <token>/<rel>`: compare-and-delete with `prevValue`/`prevIndex`, else delete
    /// (`dir=true` for an empty directory, `recursive=true` for any).
    pub fn delete(
        &mut self,
        rel: &str,
        req: &DeleteRequest,
        current: u64,
    ) -> Result<Event, V2Error> {
        let next = current + 1;
        if read_only(rel) {
            return Err(V2Error::new(code::ROOT_RONLY, self.key(rel), current));
        }
        let n = self.walk(rel, current)?.clone();
        let prev = self.repr(rel, false, false, false);
        let action = if req.prev_index > 0 || req.prev_value.is_some() {
            if n.dir {
                return Err(V2Error::new(code::NOT_FILE, self.key(rel), current));
            }
            if let Some(cause) = self.compare(&n, req.prev_value.as_deref(), req.prev_index) {
                return Err(V2Error::new(code::TEST_FAILED, cause, current));
            }
            "compareAndDelete"
        } else {
            if n.dir {
                if !(req.dir || req.recursive) {
                    return Err(V2Error::new(code::NOT_FILE, self.key(rel), current));
                }
                if !req.recursive && !self.children(rel).is_empty() {
                    return Err(V2Error::new(code::DIR_NOT_EMPTY, self.key(rel), current));
                }
            }
            "delete"
        };
        let under = format!("{rel}/");
        self.nodes.retain(|k, _| k != rel && !k.starts_with(&under));
        Ok(Event {
            action: action.into(),
            node: NodeJson {
                key: self.key(rel),
                value: None,
                dir: n.dir,
                nodes: Vec::new(),
                modified_index: next,
                created_index: n.created_index,
            },
            prev_node: Some(prev),
        })
    }

    /// The first kept change at or after `since` that a watch of `key` sees, as etcd's
    /// `EventHistory.scan` finds it (hidden keys included, as there); 401 when `since` was dropped.
    pub fn scan(
        &self,
        key: &str,
        recursive: bool,
        since: u64,
        current: u64,
    ) -> Result<Option<&Event>, V2Error> {
        if since <= self.cleared_through {
            return Err(V2Error::new(
                code::EVENT_INDEX_CLEARED,
                format!(
                    "the requested history has been cleared [{}/{since}]",
                    self.cleared_through + 1
                ),
                current,
            ));
        }
        Ok(self
            .history
            .iter()
            .filter(|e| e.index() >= since)
            .find(|e| history_match(key, recursive, e)))
    }
}

/// Bytes of keys and values an event holds (what [`HISTORY_MAX_BYTES`] bounds).
fn event_bytes(e: &Event) -> usize {
    let node = |n: &NodeJson| n.key.len() + n.value.as_ref().map_or(0, String::len);
    node(&e.node) + e.prev_node.as_ref().map_or(0, node)
}

fn under(key: &str, prefix: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    key.len() > p.len() && key.starts_with(p) && key.as_bytes()[p.len()] == b'/'
}

fn history_match(key: &str, recursive: bool, e: &Event) -> bool {
    let k = &e.node.key;
    k == key
        || (recursive && under(k, key))
        || (matches!(e.action.as_str(), "delete" | "expire")
            && e.prev_node
                .as_ref()
                .is_some_and(|p| p.dir && (key == p.key || under(key, &p.key))))
}

/// Whether a watch on `key` that is already waiting is told about `e` (etcd's `notifyWatchers`):
/// the key itself; with `recursive`, keys below it unless a hidden (`_`) component lies between;
/// and anything under a directory that was deleted.
pub fn live_match(key: &str, recursive: bool, e: &Event) -> bool {
    let k = &e.node.key;
    if k == key {
        return true;
    }
    if recursive && under(k, key) {
        let rest = &k[key.trim_end_matches('/').len()..];
        return !rest.contains("/_");
    }
    e.action == "delete" && e.prev_node.as_ref().is_some_and(|p| p.dir) && under(key, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123456789abcdef";

    fn put(
        rec: &mut TokenRecord,
        rel: &str,
        req: PutRequest,
        cur: &mut u64,
    ) -> Result<Event, V2Error> {
        let ev = rec.put(rel, &req, *cur, &TokenLimits::default())?;
        *cur = ev.index();
        rec.push_history(ev.clone());
        Ok(ev)
    }

    fn create(value: &str) -> PutRequest {
        PutRequest {
            value: value.into(),
            prev_exist: Some(false),
            ..PutRequest::default()
        }
    }

    #[test]
    fn new_token_has_size_and_hides_config() {
        let rec = TokenRecord::new(T, 3, None, 7);
        assert_eq!(rec.size(), Some(3));
        let ev = rec.get("", false, false, 7).unwrap();
        assert!(ev.node.dir);
        assert!(ev.node.nodes.is_empty());
        assert_eq!(ev.node.key, format!("/_etcd/registry/{T}"));
        assert_eq!((ev.node.created_index, ev.node.modified_index), (7, 7));
        let size = rec.get("_config/size", false, false, 7).unwrap();
        assert_eq!(size.node.value.as_deref(), Some("3"));
        assert_eq!(size.node.key, format!("/_etcd/registry/{T}/_config/size"));
    }

    #[test]
    fn create_twice_is_node_exist_and_listing_is_by_creation() {
        let mut rec = TokenRecord::new(T, 3, None, 1);
        let mut cur = 1;
        put(&mut rec, "b", create("b=http://b"), &mut cur).unwrap();
        put(&mut rec, "a", create("a=http://a"), &mut cur).unwrap();
        let err = put(&mut rec, "b", create("x"), &mut cur).unwrap_err();
        assert_eq!((err.code, err.status(), err.index), (105, 412, 3));
        assert_eq!(err.cause, format!("/_etcd/registry/{T}/b"));
        let ev = rec.get("", false, false, cur).unwrap();
        let keys: Vec<_> = ev
            .node
            .nodes
            .iter()
            .map(|n| base(&n.key).to_string())
            .collect();
        assert_eq!(keys, ["b", "a"]);
        let ev = rec.get("", false, true, cur).unwrap();
        let keys: Vec<_> = ev
            .node
            .nodes
            .iter()
            .map(|n| base(&n.key).to_string())
            .collect();
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn errors_match_etcd() {
        let mut rec = TokenRecord::new(T, 3, None, 1);
        let mut cur = 1;
        let e = rec.get("nope", false, false, cur).unwrap_err();
        assert_eq!((e.code, e.status()), (100, 404));
        put(&mut rec, "f", create("v"), &mut cur).unwrap();
        let e = rec.get("f/x", false, false, cur).unwrap_err();
        assert_eq!(
            (e.code, e.status(), e.cause.as_str()),
            (104, 400, &*format!("/_etcd/registry/{T}/f"))
        );
        let e = put(&mut rec, "f/x", create("v"), &mut cur).unwrap_err();
        assert_eq!(e.code, 104);
        put(
            &mut rec,
            "d",
            PutRequest {
                dir: true,
                prev_exist: Some(false),
                ..Default::default()
            },
            &mut cur,
        )
        .unwrap();
        let e = put(
            &mut rec,
            "d",
            PutRequest {
                value: "v".into(),
                ..Default::default()
            },
            &mut cur,
        )
        .unwrap_err();
        assert_eq!((e.code, e.status()), (102, 403));
        let e = put(
            &mut rec,
            "f",
            PutRequest {
                value: "n".into(),
                prev_value: Some("old".into()),
                ..Default::default()
            },
            &mut cur,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.status(), e.cause.as_str()),
            (101, 412, "[old != v]")
        );
        let e = put(
            &mut rec,
            "f",
            PutRequest {
                value: "n".into(),
                prev_index: 99,
                prev_value: Some("old".into()),
                ..Default::default()
            },
            &mut cur,
        )
        .unwrap_err();
        assert_eq!(e.cause, "[old != v] [99 != 2]");
        let e = put(
            &mut rec,
            "_config/size",
            PutRequest {
                value: "5".into(),
                ..Default::default()
            },
            &mut cur,
        )
        .unwrap_err();
        assert_eq!((e.code, e.status()), (107, 400));
        put(&mut rec, "d/x", create("1"), &mut cur).unwrap();
        let e = rec.delete("d", &DeleteRequest::default(), cur).unwrap_err();
        assert_eq!(e.code, 102);
        let e = rec
            .delete(
                "d",
                &DeleteRequest {
                    dir: true,
                    ..Default::default()
                },
                cur,
            )
            .unwrap_err();
        assert_eq!((e.code, e.status()), (108, 403));
        let ev = rec
            .delete(
                "d",
                &DeleteRequest {
                    recursive: true,
                    ..Default::default()
                },
                cur,
            )
            .unwrap();
        assert!(ev.node.dir && ev.prev_node.as_ref().unwrap().dir);
        assert!(!rec.nodes.contains_key("d/x"));
    }

    #[test]
    fn set_update_cas() {
        let mut rec = TokenRecord::new(T, 3, None, 1);
        let mut cur = 1;
        let ev = put(
            &mut rec,
            "k",
            PutRequest {
                value: "1".into(),
                ..Default::default()
            },
            &mut cur,
        )
        .unwrap();
        assert!(ev.is_created() && ev.action == "set");
        let ev = put(
            &mut rec,
            "k",
            PutRequest {
                value: "2".into(),
                ..Default::default()
            },
            &mut cur,
        )
        .unwrap();
        assert!(!ev.is_created());
        assert_eq!(ev.prev_node.unwrap().value.as_deref(), Some("1"));
        let ev = put(
            &mut rec,
            "k",
            PutRequest {
                value: "3".into(),
                prev_exist: Some(true),
                ..Default::default()
            },
            &mut cur,
        )
        .unwrap();
        assert_eq!(ev.action, "update");
        assert_eq!(
            ev.node.created_index, 3,
            "set replaces the node, update keeps it"
        );
        let ev = put(
            &mut rec,
            "k",
            PutRequest {
                value: "4".into(),
                prev_value: Some("3".into()),
                ..Default::default()
            },
            &mut cur,
        )
        .unwrap();
        assert_eq!(
            (ev.action.as_str(), ev.node.modified_index),
            ("compareAndSwap", 5)
        );
        let e = put(
            &mut rec,
            "missing",
            PutRequest {
                value: "4".into(),
                prev_exist: Some(true),
                ..Default::default()
            },
            &mut cur,
        )
        .unwrap_err();
        assert_eq!(e.code, 100);
    }

    #[test]
    fn history_scan_and_clearing() {
        let mut rec = TokenRecord::new(T, 3, None, 1);
        let mut cur = 1;
        for i in 0..(HISTORY_CAPACITY + 5) {
            put(
                &mut rec,
                "k",
                PutRequest {
                    value: i.to_string(),
                    ..Default::default()
                },
                &mut cur,
            )
            .unwrap();
        }
        assert_eq!(rec.history.len(), HISTORY_CAPACITY);
        let root = full_key(T, "");
        let e = rec.scan(&root, true, 3, cur).unwrap_err();
        assert_eq!((e.code, e.status()), (401, 400));
        let found = rec.scan(&root, true, cur, cur).unwrap().unwrap();
        assert_eq!(found.index(), cur);
        assert!(rec.scan(&root, true, cur + 1, cur).unwrap().is_none());
        assert!(rec.scan(&root, false, cur, cur).unwrap().is_none());
    }

    #[test]
    fn live_match_hides_hidden_below_the_watch() {
        let mk = |key: &str, action: &str| Event {
            action: action.into(),
            node: NodeJson {
                key: key.into(),
                value: None,
                dir: false,
                nodes: vec![],
                modified_index: 1,
                created_index: 1,
            },
            prev_node: None,
        };
        assert!(live_match("/a", true, &mk("/a/b", "create")));
        assert!(!live_match("/a", false, &mk("/a/b", "create")));
        assert!(!live_match("/a", true, &mk("/a/_config/size", "create")));
        assert!(live_match(
            "/a/_config/size",
            false,
            &mk("/a/_config/size", "set")
        ));
        assert!(!live_match("/a", true, &mk("/ab", "create")));
        assert!(history_match("/a", true, &mk("/a/_config/size", "create")));
    }

    fn set(value: &str) -> PutRequest {
        PutRequest {
            value: value.into(),
            ..PutRequest::default()
        }
    }

    #[test]
    fn replaying_the_logged_events_rebuilds_the_record_exactly() {
        let mut live = TokenRecord::new(T, 3, Some("g".into()), 1);
        let mut replayed = live.clone();
        let mut cur = 1;
        let mut log: Vec<Event> = Vec::new();
        let mut apply = |live: &mut TokenRecord, r: Result<Event, V2Error>, cur: &mut u64| {
            if let Ok(ev) = r {
                *cur = ev.index();
                live.push_history(ev.clone());
                live.changed_ms = *cur * 10;
                log.push(Event {
                    prev_node: None,
                    ..ev
                });
            }
        };
        let lim = TokenLimits::default();
        let dir = PutRequest {
            dir: true,
            ..PutRequest::default()
        };
        let del = |recursive| DeleteRequest {
            recursive,
            ..DeleteRequest::default()
        };
        for (rel, req) in [
            ("a", create("1")),
            ("b", set("2")),
            ("b", set("3")),
            ("d/e/f", create("deep")),
            ("d/e/f", create("again")),
            ("x", dir.clone()),
            ("x/y", set("in x")),
            (
                "a",
                PutRequest {
                    value: "4".into(),
                    prev_exist: Some(true),
                    ..PutRequest::default()
                },
            ),
            (
                "x",
                PutRequest {
                    dir: true,
                    prev_exist: Some(true),
                    ..PutRequest::default()
                },
            ),
            (
                "b",
                PutRequest {
                    value: "5".into(),
                    prev_value: Some("3".into()),
                    ..PutRequest::default()
                },
            ),
            (
                "b",
                PutRequest {
                    value: "6".into(),
                    prev_value: Some("wrong".into()),
                    ..PutRequest::default()
                },
            ),
            ("a/under-a-file", create("no")),
        ] {
            let r = live.put(rel, &req, cur, &lim);
            apply(&mut live, r, &mut cur);
        }
        for (rel, req) in [
            ("d", del(true)),
            ("x/y", del(false)),
            (
                "b",
                DeleteRequest {
                    prev_value: Some("5".into()),
                    ..DeleteRequest::default()
                },
            ),
            ("missing", del(false)),
        ] {
            let r = live.delete(rel, &req, cur);
            apply(&mut live, r, &mut cur);
        }
        assert_eq!(log.len(), 12, "{log:#?}");
        for ev in log {
            let t = ev.index() * 10;
            replayed.replay(ev, t).unwrap();
        }
        assert_eq!(replayed, live);
        // A log that does not fit the record is refused, not half applied.
        let before = replayed.clone();
        let bad = Event {
            action: "update".into(),
            node: live.repr("a", false, false, false),
            prev_node: None,
        };
        let mut gone = bad.clone();
        gone.node.key = full_key(T, "nobody");
        assert!(replayed.replay(gone, 1).is_err());
        let mut outside = bad;
        outside.node.key = "/_etcd/registry/other/a".into();
        assert!(replayed.replay(outside, 1).is_err());
        assert_eq!(replayed, before);
    }

    #[test]
    fn values_keys_and_bytes_are_limited_and_a_refused_change_changes_nothing() {
        let lim = TokenLimits {
            max_value_bytes: 100,
            max_token_bytes: 1000,
        };
        let mut rec = TokenRecord::new(T, 1, None, 1);
        let mut cur = 1;
        let e = rec
            .put("k", &create(&"v".repeat(101)), cur, &lim)
            .unwrap_err();
        assert_eq!((e.code, e.status(), e.index), (209, 400, 1));
        assert!(e.cause.contains("value of 101 bytes"), "{}", e.cause);
        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        let e = rec.put(&long_key, &create("v"), cur, &lim).unwrap_err();
        assert_eq!(e.code, 209);
        // max_keys(1) = 34 keys; 9 of 100 bytes reach the byte limit first.
        let mut put = |rec: &mut TokenRecord, rel: &str, req: PutRequest| {
            let r = rec.put(rel, &req, cur, &lim);
            if let Ok(ev) = &r {
                cur = ev.index();
                rec.push_history(ev.clone());
            }
            r
        };
        for i in 0..9 {
            put(&mut rec, &format!("m{i}"), create(&"v".repeat(100))).unwrap();
        }
        assert_eq!(rec.data_bytes(), 20 + 9 * 102);
        let before = rec.clone();
        let e = put(&mut rec, "m9", create(&"v".repeat(100))).unwrap_err();
        assert_eq!((e.code, e.status()), (103, 400));
        assert!(e.cause.contains("at most 1000 bytes"), "{}", e.cause);
        // Growing a value past the limit: set, update and compare-and-swap alike.
        let grow = "v".repeat(100 + 1000 - before.data_bytes() + 1);
        let e = put(&mut rec, "m0", set(&grow[..100])).map(|_| ());
        assert!(e.is_ok(), "same size is fine");
        let lim2 = TokenLimits {
            max_value_bytes: 4096,
            ..lim
        };
        for req in [
            set(&grow),
            PutRequest {
                value: grow.clone(),
                prev_exist: Some(true),
                ..PutRequest::default()
            },
            PutRequest {
                value: grow.clone(),
                prev_value: Some("v".repeat(100)),
                ..PutRequest::default()
            },
        ] {
            let e = rec.put("m0", &req, cur, &lim2).unwrap_err();
            assert_eq!(e.code, 103, "{req:?}");
        }
        // Directories made on the way count too (the key and value alone would just fit), and a
        // refusal leaves none of them behind.
        let snapshot = rec.clone();
        let fits = "v".repeat(1000 - rec.data_bytes() - "a/b/c".len());
        let e = rec.put("a/b/c", &create(&fits), cur, &lim).unwrap_err();
        assert_eq!(e.code, 103);
        assert_eq!(rec, snapshot);
        // A delete makes room again.
        rec.delete("m1", &DeleteRequest::default(), cur).unwrap();
        rec.put("a/b", &create("v"), cur + 1, &lim).unwrap();

        // Keys: a token for one member holds 34.
        let mut rec = TokenRecord::new(T, 1, None, 1);
        let big = TokenLimits::default();
        let mut cur = 1;
        for i in 0..max_keys(1) {
            let ev = rec.put(&format!("m{i}"), &create("v"), cur, &big).unwrap();
            cur = ev.index();
        }
        assert_eq!(rec.key_count(), 34);
        let e = rec.put("one-more", &create("v"), cur, &big).unwrap_err();
        assert_eq!((e.code, e.status()), (103, 400));
        assert_eq!(
            e.message, "Reached the max number of peers in the cluster",
            "etcd's message"
        );
        assert!(
            e.cause
                .contains("a token for 1 members holds at most 34 keys"),
            "{}",
            e.cause
        );
        // Changing an existing key is fine at the limit.
        rec.put("m0", &set("w"), cur, &big).unwrap();
    }

    #[test]
    fn history_is_bounded_in_bytes() {
        let mut rec = TokenRecord::new(T, 3, None, 1);
        let mut cur = 1;
        let value = "v".repeat(4000);
        for _ in 0..100 {
            put(&mut rec, "k", set(&value), &mut cur).unwrap();
        }
        let bytes: usize = rec.history.iter().map(event_bytes).sum();
        assert!(bytes <= HISTORY_MAX_BYTES, "{bytes}");
        assert!(rec.history.len() < 40, "{}", rec.history.len());
        assert_eq!(rec.history.back().unwrap().index(), cur);
        let e = rec.scan(&full_key(T, ""), true, 2, cur).unwrap_err();
        assert_eq!(e.code, 401);
    }
}
