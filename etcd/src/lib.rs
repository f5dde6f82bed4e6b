//! cairn-etcd: an async etcd v3 client over etcd's JSON gateway (`POST /v3/...`, as etcd 3.4
//! serves it), so cairn builds with a Rust toolchain alone (the gRPC clients need `protoc`).
//!
//! * [`Client`]: several endpoints with failover, a timeout per request, a size limit on every
//!   answer ([`Config`]); typed [`Error`]s with [`Error::is_transient`]. `https://` endpoints
//!   with [`Config::tls`]: a [`Tls`] from PEM files (a CA bundle, optionally a client
//!   certificate and key).
//! * KV: [`Client::get`], [`Client::put`], [`Client::delete`], [`Client::txn`] with
//!   [`Compare`]s and [`Op`]s, [`Client::compact`].
//! * Leases: [`Client::grant`], [`Client::revoke`], [`Client::time_to_live`],
//!   [`Client::keep_alive`] giving a [`LeaseKeeper`] that reports loss.
//! * Watches: [`Client::watch`] giving a [`Watch`] stream that resumes after reconnecting and
//!   reports compaction.
//! * Elections: [`Client::campaign`], [`Client::leader`], fencing with [`Leader::fence`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_etcd::Error> {
//! use cairn_etcd::{Client, GetOptions, PutOptions};
//! let etcd = Client::new(["http://127.0.0.1:2379"])?;
//! etcd.put("/cairn/hello", "world", PutOptions::new()).await?;
//! let r = etcd.get("/cairn/", GetOptions::new().prefix()).await?;
//! println!("{} keys at revision {}", r.kvs.len(), r.header.revision);
//! # Ok(()) }
//! # async fn tls() -> Result<(), cairn_etcd::Error> {
//! use cairn_etcd::{Client, Config, Tls};
//! let tls = Tls::with_client_cert("/etc/ssl/etcd/ca.pem", "/etc/ssl/etcd/client.pem",
//!                                 "/etc/ssl/etcd/client-key.pem")?;
//! let etcd = Client::with_config(["https://10.0.0.1:2379"],
//!                                Config { tls: Some(tls), ..Config::default() })?;
//! # Ok(()) }
//! ```

mod client;
mod election;
mod error;
mod kv;
mod lease;
mod maintenance;
mod tls;
mod watch;
mod wire;

pub use client::{Client, Config};
pub use election::{Campaign, Leader};
pub use error::{code, Error};
pub use kv::{
    prefix_end, Compare, CompareOp, DeleteOptions, DeleteResponse, GetOptions, GetResponse,
    KeyValue, Op, OpResponse, PutOptions, PutResponse, ResponseHeader, Txn, TxnResponse,
};
pub use lease::{KeepAliveResponse, LeaseGrant, LeaseKeeper, LeaseLost, LeaseStatus, TimeToLive};
pub use maintenance::Status;
pub use tls::Tls;
pub use watch::{Event, EventKind, Watch, WatchOptions, WatchUpdate};
