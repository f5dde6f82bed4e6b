//! [`Client::status`]: the member's version, database size, leader and raft position
//! (`/v3/maintenance/status`), for health checks and benchmarks.

use serde::Deserialize;

use crate::client::{Retry, SMALL_LIMIT};
use crate::kv::ResponseHeader;
use crate::wire::{de_i64, de_u64};
use crate::{Client, Error};

/// One member's status (the one the request reached).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub header: ResponseHeader,
    /// etcd's version, e.g. `3.4.23`.
    #[serde(default)]
    pub version: String,
    /// Bytes of the database file.
    #[serde(rename = "dbSize", default, deserialize_with = "de_i64")]
    pub db_size: i64,
    /// The leader's member id.
    #[serde(default, deserialize_with = "de_u64")]
    pub leader: u64,
    #[serde(rename = "raftIndex", default, deserialize_with = "de_u64")]
    pub raft_index: u64,
    #[serde(rename = "raftTerm", default, deserialize_with = "de_u64")]
    pub raft_term: u64,
}

impl Client {
    /// The status of the member the request reaches.
    pub async fn status(&self) -> Result<Status, Error> {
        self.call(
            "/v3/maintenance/status",
            &serde_json::json!({}),
            Retry::Idempotent,
            SMALL_LIMIT,
        )
        .await
    }
}
