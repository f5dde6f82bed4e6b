//! The key-value API: [`Client::get`], [`Client::put`], [`Client::delete`], [`Client::txn`] and
//! [`Client::compact`], their options and answers. Keys and values are bytes; every answer
//! carries the [`ResponseHeader`] with the store's revision.

use serde::{Deserialize, Serialize};

use crate::client::{Retry, SMALL_LIMIT};
use crate::wire::{de_b64, de_i64, de_list, de_u64, is_false, is_zero, ser_b64, ser_i64};
use crate::{Client, Error};

/// The header of every answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ResponseHeader {
    #[serde(default, deserialize_with = "de_u64")]
    pub cluster_id: u64,
    #[serde(default, deserialize_with = "de_u64")]
    pub member_id: u64,
    /// The store's revision when the request was served (after it, for a write).
    #[serde(default, deserialize_with = "de_i64")]
    pub revision: i64,
    #[serde(default, deserialize_with = "de_u64")]
    pub raft_term: u64,
}

/// One key as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KeyValue {
    #[serde(default, deserialize_with = "de_b64")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "de_b64")]
    pub value: Vec<u8>,
    /// The revision that created the key (since its last deletion).
    #[serde(default, deserialize_with = "de_i64")]
    pub create_revision: i64,
    /// The revision of its last change.
    #[serde(default, deserialize_with = "de_i64")]
    pub mod_revision: i64,
    /// Changes since creation (1 after the first put; 0 for a deletion event).
    #[serde(default, deserialize_with = "de_i64")]
    pub version: i64,
    /// The lease the key is attached to (0: none).
    #[serde(default, deserialize_with = "de_i64")]
    pub lease: i64,
}

impl KeyValue {
    /// The key as text (lossy).
    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }

    /// The value as text (lossy).
    pub fn value_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

/// The end of the range holding every key that starts with `prefix` (etcd's `--prefix`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // empty, or only 0xff bytes: to the end of the key space
    vec![0]
}

/// Which keys a get or a delete covers besides `key` itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Span {
    #[default]
    Key,
    Prefix,
    To(Vec<u8>),
}

impl Span {
    fn end(&self, key: &[u8]) -> Vec<u8> {
        match self {
            Span::Key => Vec::new(),
            Span::Prefix => prefix_end(key),
            Span::To(end) => end.clone(),
        }
    }
}

/// How to read: one key (the default), a prefix or a range; a limit, a past revision.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    span: Span,
    limit: i64,
    revision: i64,
    keys_only: bool,
    count_only: bool,
    serializable: bool,
}

impl GetOptions {
    /// One key, at the newest revision.
    pub fn new() -> GetOptions {
        GetOptions::default()
    }

    /// Every key starting with the key given.
    pub fn prefix(mut self) -> GetOptions {
        self.span = Span::Prefix;
        self
    }

    /// Keys from the key given up to `end` (exclusive; `[0]`: to the end).
    pub fn range_end(mut self, end: impl Into<Vec<u8>>) -> GetOptions {
        self.span = Span::To(end.into());
        self
    }

    /// At most `n` keys (in key order); [`GetResponse::more`] says whether there were more.
    pub fn limit(mut self, n: i64) -> GetOptions {
        self.limit = n;
        self
    }

    /// As the store was at `revision` (it must not be compacted).
    pub fn revision(mut self, revision: i64) -> GetOptions {
        self.revision = revision;
        self
    }

    /// Keys without their values.
    pub fn keys_only(mut self) -> GetOptions {
        self.keys_only = true;
        self
    }

    /// Only the count.
    pub fn count_only(mut self) -> GetOptions {
        self.count_only = true;
        self
    }

    /// From the member asked, without a round through the leader (may be stale).
    pub fn serializable(mut self) -> GetOptions {
        self.serializable = true;
        self
    }

    fn request(&self, key: &[u8]) -> RangeRequest {
        RangeRequest {
            key: key.to_vec(),
            range_end: self.span.end(key),
            limit: self.limit,
            revision: self.revision,
            keys_only: self.keys_only,
            count_only: self.count_only,
            serializable: self.serializable,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct RangeRequest {
    #[serde(serialize_with = "ser_b64")]
    key: Vec<u8>,
    #[serde(serialize_with = "ser_b64", skip_serializing_if = "Vec::is_empty")]
    range_end: Vec<u8>,
    #[serde(serialize_with = "ser_i64", skip_serializing_if = "is_zero")]
    limit: i64,
    #[serde(serialize_with = "ser_i64", skip_serializing_if = "is_zero")]
    revision: i64,
    #[serde(skip_serializing_if = "is_false")]
    keys_only: bool,
    #[serde(skip_serializing_if = "is_false")]
    count_only: bool,
    #[serde(skip_serializing_if = "is_false")]
    serializable: bool,
}

/// What a get found.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GetResponse {
    #[serde(default)]
    pub header: ResponseHeader,
    #[serde(default, deserialize_with = "de_list")]
    pub kvs: Vec<KeyValue>,
    /// More keys matched than the limit let through.
    #[serde(default)]
    pub more: bool,
    /// How many keys matched (all of them, whatever the limit).
    #[serde(default, deserialize_with = "de_i64")]
    pub count: i64,
}

impl GetResponse {
    /// The first key found (the one key, for a single-key get).
    pub fn first(&self) -> Option<&KeyValue> {
        self.kvs.first()
    }
}

/// How to write: on a lease, returning the previous value.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    lease: i64,
    prev_kv: bool,
}

impl PutOptions {
    pub fn new() -> PutOptions {
        PutOptions::default()
    }

    /// Attach the key to lease `id`: it goes when the lease goes.
    pub fn lease(mut self, id: i64) -> PutOptions {
        self.lease = id;
        self
    }

    /// Return the key as it was before.
    pub fn prev_kv(mut self) -> PutOptions {
        self.prev_kv = true;
        self
    }
}

#[derive(Debug, Clone, Serialize)]
struct PutRequest {
    #[serde(serialize_with = "ser_b64")]
    key: Vec<u8>,
    #[serde(serialize_with = "ser_b64")]
    value: Vec<u8>,
    #[serde(serialize_with = "ser_i64", skip_serializing_if = "is_zero")]
    lease: i64,
    #[serde(skip_serializing_if = "is_false")]
    prev_kv: bool,
}

/// What a put did.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PutResponse {
    #[serde(default)]
    pub header: ResponseHeader,
    /// The key before the put (with [`PutOptions::prev_kv`], when it existed).
    #[serde(default)]
    pub prev_kv: Option<KeyValue>,
}

/// How to delete: one key (the default), a prefix or a range; returning what was deleted.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    span: Span,
    prev_kv: bool,
}

impl DeleteOptions {
    pub fn new() -> DeleteOptions {
        DeleteOptions::default()
    }

    /// Every key starting with the key given.
    pub fn prefix(mut self) -> DeleteOptions {
        self.span = Span::Prefix;
        self
    }

    /// Keys from the key given up to `end` (exclusive).
    pub fn range_end(mut self, end: impl Into<Vec<u8>>) -> DeleteOptions {
        self.span = Span::To(end.into());
        self
    }

    /// Return the deleted keys.
    pub fn prev_kv(mut self) -> DeleteOptions {
        self.prev_kv = true;
        self
    }
}

#[derive(Debug, Clone, Serialize)]
struct DeleteRequest {
    #[serde(serialize_with = "ser_b64")]
    key: Vec<u8>,
    #[serde(serialize_with = "ser_b64", skip_serializing_if = "Vec::is_empty")]
    range_end: Vec<u8>,
    #[serde(skip_serializing_if = "is_false")]
    prev_kv: bool,
}

/// What a delete did.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeleteResponse {
    #[serde(default)]
    pub header: ResponseHeader,
    /// How many keys went.
    #[serde(default, deserialize_with = "de_i64")]
    pub deleted: i64,
    /// The keys as they were (with [`DeleteOptions::prev_kv`]).
    #[serde(default, deserialize_with = "de_list")]
    pub prev_kvs: Vec<KeyValue>,
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompareOp {
    Equal,
    Greater,
    Less,
    NotEqual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Target {
    Version,
    Create,
    Mod,
    Value,
    Lease,
}

/// One condition of a [`Txn`]: a key's value, version, create or mod revision, or lease against
/// a constant. A key that does not exist has version, revisions and lease 0.
#[derive(Debug, Clone, Serialize)]
pub struct Compare {
    #[serde(serialize_with = "ser_b64")]
    key: Vec<u8>,
    #[serde(serialize_with = "ser_b64", skip_serializing_if = "Vec::is_empty")]
    range_end: Vec<u8>,
    target: Target,
    result: CompareOp,
    #[serde(
        serialize_with = "ser_opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    version: Option<i64>,
    #[serde(
        serialize_with = "ser_opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    create_revision: Option<i64>,
    #[serde(
        serialize_with = "ser_opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    mod_revision: Option<i64>,
    #[serde(
        serialize_with = "ser_opt_b64",
        skip_serializing_if = "Option::is_none"
    )]
    value: Option<Vec<u8>>,
    #[serde(
        serialize_with = "ser_opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    lease: Option<i64>,
}

fn ser_opt_i64<S: serde::Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    ser_i64(&v.unwrap_or_default(), s)
}

fn ser_opt_b64<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    ser_b64(v.as_deref().unwrap_or_default(), s)
}

impl Compare {
    fn new(key: impl Into<Vec<u8>>, target: Target, op: CompareOp) -> Compare {
        Compare {
            key: key.into(),
            range_end: Vec::new(),
            target,
            result: op,
            version: None,
            create_revision: None,
            mod_revision: None,
            value: None,
            lease: None,
        }
    }

    /// The key's value compared with `value` (bytewise).
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Compare {
        Compare {
            value: Some(value.into()),
            ..Compare::new(key, Target::Value, op)
        }
    }

    /// The key's version (0: the key does not exist).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Compare {
        Compare {
            version: Some(version),
            ..Compare::new(key, Target::Version, op)
        }
    }

    /// The key's create revision (0: the key does not exist).
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Compare {
        Compare {
            create_revision: Some(revision),
            ..Compare::new(key, Target::Create, op)
        }
    }

    /// The key's mod revision.
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Compare {
        Compare {
            mod_revision: Some(revision),
            ..Compare::new(key, Target::Mod, op)
        }
    }

    /// The key's lease (0: none).
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Compare {
        Compare {
            lease: Some(lease),
            ..Compare::new(key, Target::Lease, op)
        }
    }

    /// Compare every key starting with the key given (each must satisfy it).
    pub fn with_prefix(mut self) -> Compare {
        self.range_end = prefix_end(&self.key);
        self
    }
}

/// One operation of a [`Txn`]: [`Op::get`], [`Op::put`] or [`Op::delete`].
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Op(OpKind);

#[derive(Debug, Clone, Serialize)]
enum OpKind {
    #[serde(rename = "request_range")]
    Get(RangeRequest),
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_delete_range")]
    Delete(DeleteRequest),
}

impl Op {
    /// A read; its answer is an [`OpResponse::Get`].
    pub fn get(key: impl Into<Vec<u8>>, opts: GetOptions) -> Op {
        Op(OpKind::Get(opts.request(&key.into())))
    }

    /// A write; its answer is an [`OpResponse::Put`].
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, opts: PutOptions) -> Op {
        Op(OpKind::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            lease: opts.lease,
            prev_kv: opts.prev_kv,
        }))
    }

    /// A deletion; its answer is an [`OpResponse::Delete`].
    pub fn delete(key: impl Into<Vec<u8>>, opts: DeleteOptions) -> Op {
        let key = key.into();
        Op(OpKind::Delete(DeleteRequest {
            range_end: opts.span.end(&key),
            key,
            prev_kv: opts.prev_kv,
        }))
    }
}

/// A transaction: if every compare holds, the `success` ops run, else the `failure` ops; all at
/// one revision.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Txn {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    compare: Vec<Compare>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    success: Vec<Op>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds conditions (all must hold).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Txn {
        self.compare.extend(compares);
        self
    }

    /// Ops to run when every condition holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.success.extend(ops);
        self
    }

    /// Ops to run otherwise.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.failure.extend(ops);
        self
    }
}

/// What a txn did.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TxnResponse {
    #[serde(default)]
    pub header: ResponseHeader,
    /// Whether every compare held (and the `success` ops ran).
    #[serde(default)]
    pub succeeded: bool,
    /// One answer per op that ran, in order.
    #[serde(default, deserialize_with = "de_list")]
    pub responses: Vec<OpResponse>,
}

/// The answer to one op of a txn.
#[derive(Debug, Clone, Deserialize)]
pub enum OpResponse {
    #[serde(rename = "response_range")]
    Get(GetResponse),
    #[serde(rename = "response_put")]
    Put(PutResponse),
    #[serde(rename = "response_delete_range")]
    Delete(DeleteResponse),
}

impl OpResponse {
    /// The get's answer, if this was a get.
    pub fn as_get(&self) -> Option<&GetResponse> {
        match self {
            OpResponse::Get(g) => Some(g),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct CompactRequest {
    #[serde(serialize_with = "ser_i64")]
    revision: i64,
    #[serde(skip_serializing_if = "is_false")]
    physical: bool,
}

#[derive(Deserialize)]
struct HeaderOnly {
    #[serde(default)]
    header: ResponseHeader,
}

impl Client {
    /// Reads `key` (or the span `opts` gives). Sent again on the next endpoint after a
    /// transient failure.
    pub async fn get(&self, key: impl AsRef<[u8]>, opts: GetOptions) -> Result<GetResponse, Error> {
        let req = opts.request(key.as_ref());
        let limit = self.config().max_response;
        self.call("/v3/kv/range", &req, Retry::Idempotent, limit)
            .await
    }

    /// Writes `key`. After a broken connection the error is returned, not retried: etcd may
    /// have applied it.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        opts: PutOptions,
    ) -> Result<PutResponse, Error> {
        let req = PutRequest {
            key: key.into(),
            value: value.into(),
            lease: opts.lease,
            prev_kv: opts.prev_kv,
        };
        let limit = self.config().max_response;
        self.call("/v3/kv/put", &req, Retry::OnlyUnsent, limit)
            .await
    }

    /// Deletes `key` (or the span `opts` gives).
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        opts: DeleteOptions,
    ) -> Result<DeleteResponse, Error> {
        let key = key.into();
        let req = DeleteRequest {
            range_end: opts.span.end(&key),
            key,
            prev_kv: opts.prev_kv,
        };
        let limit = self.config().max_response;
        self.call("/v3/kv/deleterange", &req, Retry::OnlyUnsent, limit)
            .await
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        let limit = self.config().max_response;
        self.call("/v3/kv/txn", &txn, Retry::OnlyUnsent, limit)
            .await
    }

    /// Drops the history before `revision` (watches and gets at older revisions then fail);
    /// returns the header.
    pub async fn compact(&self, revision: i64) -> Result<ResponseHeader, Error> {
        let req = CompactRequest {
            revision,
            physical: false,
        };
        let r: HeaderOnly = self
            .call("/v3/kv/compaction", &req, Retry::OnlyUnsent, SMALL_LIMIT)
            .await?;
        Ok(r.header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
        assert_eq!(prefix_end(b""), [0]);
    }

    #[test]
    fn requests_as_the_gateway_reads_them() {
        let j = |v: &dyn erased::Ser| v.json();
        let get = GetOptions::new()
            .prefix()
            .limit(10)
            .keys_only()
            .revision(7)
            .request(b"foo");
        assert_eq!(
            j(&get),
            r#"{"key":"Zm9v","range_end":"Zm9w","limit":"10","revision":"7","keys_only":true}"#
        );
        assert_eq!(j(&GetOptions::new().request(b"foo")), r#"{"key":"Zm9v"}"#);
        let txn = Txn::new()
            .when([
                Compare::create_revision("k", CompareOp::Equal, 0),
                Compare::value("k", CompareOp::NotEqual, "v"),
                Compare::lease("p", CompareOp::Greater, 5).with_prefix(),
            ])
            .and_then([Op::put("k", "v", PutOptions::new().lease(9))])
            .or_else([
                Op::get("k", GetOptions::new()),
                Op::delete("k", DeleteOptions::new().prev_kv()),
            ]);
        assert_eq!(
            j(&txn),
            concat!(
                r#"{"compare":[{"key":"aw==","target":"CREATE","result":"EQUAL","create_revision":"0"},"#,
                r#"{"key":"aw==","target":"VALUE","result":"NOT_EQUAL","value":"dg=="},"#,
                r#"{"key":"cA==","range_end":"cQ==","target":"LEASE","result":"GREATER","lease":"5"}],"#,
                r#""success":[{"request_put":{"key":"aw==","value":"dg==","lease":"9"}}],"#,
                r#""failure":[{"request_range":{"key":"aw=="}},"#,
                r#"{"request_delete_range":{"key":"aw==","prev_kv":true}}]}"#
            )
        );
    }

    #[test]
    fn answers_as_the_gateway_writes_them() {
        let t: TxnResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"3","raft_term":"2"},"responses":[{"response_range":{"header":{"revision":"3"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmF6"}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert!(!t.succeeded);
        assert_eq!(t.header.revision, 3);
        assert_eq!(t.header.cluster_id, 15118495548433857066);
        let g = t.responses[0].as_get().unwrap();
        let kv = g.first().unwrap();
        assert_eq!((kv.key_str(), kv.value_str()), ("foo".into(), "baz".into()));
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        let d: DeleteResponse =
            serde_json::from_str(r#"{"header":{"revision":"4"},"deleted":"1","prev_kvs":null}"#)
                .unwrap();
        assert_eq!((d.deleted, d.prev_kvs.len()), (1, 0));
    }

    /// Serialising any request type to a string in tests.
    mod erased {
        pub trait Ser {
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> String {
                serde_json::to_string(self).unwrap()
            }
        }
    }
}
