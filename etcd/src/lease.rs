//! Leases: [`Client::grant`], [`Client::revoke`], [`Client::time_to_live`],
//! [`Client::keep_alive_once`], and [`LeaseKeeper`], a task that keeps one lease alive at a third
//! of its TTL and says through a watch channel when it is lost (etcd no longer knows it, or no
//! refresh was confirmed before it would have expired). The keeper stops when dropped.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{Retry, SMALL_LIMIT};
use crate::kv::ResponseHeader;
use crate::wire::{de_b64_list, de_i64, de_list, ser_i64, StreamLine};
use crate::{Client, Error};

#[derive(Serialize)]
struct GrantRequest {
    #[serde(rename = "TTL", serialize_with = "ser_i64")]
    ttl: i64,
    #[serde(rename = "ID", serialize_with = "ser_i64")]
    id: i64,
}

#[derive(Serialize)]
struct IdRequest {
    #[serde(rename = "ID", serialize_with = "ser_i64")]
    id: i64,
}

#[derive(Serialize)]
struct TtlRequest {
    #[serde(rename = "ID", serialize_with = "ser_i64")]
    id: i64,
    keys: bool,
}

/// A granted lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LeaseGrant {
    #[serde(default)]
    pub header: ResponseHeader,
    #[serde(rename = "ID", default, deserialize_with = "de_i64")]
    pub id: i64,
    /// The TTL etcd chose (at least its minimum, about 2 s with default settings).
    #[serde(rename = "TTL", default, deserialize_with = "de_i64")]
    pub ttl: i64,
    #[serde(default)]
    error: String,
}

/// A keep-alive's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KeepAliveResponse {
    #[serde(default)]
    pub header: ResponseHeader,
    #[serde(rename = "ID", default, deserialize_with = "de_i64")]
    pub id: i64,
    /// The TTL the lease has again; 0 when etcd does not know the lease (expired or revoked).
    #[serde(rename = "TTL", default, deserialize_with = "de_i64")]
    pub ttl: i64,
}

/// A lease's remaining time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TimeToLive {
    #[serde(default)]
    pub header: ResponseHeader,
    #[serde(rename = "ID", default, deserialize_with = "de_i64")]
    pub id: i64,
    /// Seconds left; -1 when the lease does not exist (any more).
    #[serde(rename = "TTL", default, deserialize_with = "de_i64")]
    pub ttl: i64,
    /// The TTL it was granted with.
    #[serde(rename = "grantedTTL", default, deserialize_with = "de_i64")]
    pub granted_ttl: i64,
    /// The keys attached (when asked for).
    #[serde(default, deserialize_with = "de_b64_list")]
    pub keys: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
struct LeasesResponse {
    #[serde(default, deserialize_with = "de_list")]
    leases: Vec<LeaseId>,
}

#[derive(Deserialize)]
struct LeaseId {
    #[serde(rename = "ID", default, deserialize_with = "de_i64")]
    id: i64,
}

impl Client {
    /// Grants a lease of `ttl` seconds (etcd picks the ID).
    pub async fn grant(&self, ttl: i64) -> Result<LeaseGrant, Error> {
        let path = "/v3/lease/grant";
        let (endpoint, bytes) = self
            .post(
                path,
                serde_json::to_vec(&GrantRequest { ttl, id: 0 })
                    .expect("serialises")
                    .into(),
                Retry::OnlyUnsent,
                SMALL_LIMIT,
            )
            .await?;
        let g: LeaseGrant = crate::client::decode(&endpoint, path, &bytes)?;
        if !g.error.is_empty() || g.id == 0 {
            return Err(Error::Etcd {
                endpoint,
                path,
                code: 0,
                message: format!("lease not granted: {}", g.error),
            });
        }
        Ok(g)
    }

    /// Revokes lease `id`: its keys are deleted. A lease that does not exist is
    /// [`Error::is_not_found`].
    pub async fn revoke(&self, id: i64) -> Result<ResponseHeader, Error> {
        #[derive(Deserialize)]
        struct R {
            #[serde(default)]
            header: ResponseHeader,
        }
        let r: R = self
            .call(
                "/v3/lease/revoke",
                &IdRequest { id },
                Retry::OnlyUnsent,
                SMALL_LIMIT,
            )
            .await?;
        Ok(r.header)
    }

    /// How long lease `id` has left, and with `keys` the keys attached to it.
    pub async fn time_to_live(&self, id: i64, keys: bool) -> Result<TimeToLive, Error> {
        let limit = if keys {
            self.config().max_response
        } else {
            SMALL_LIMIT
        };
        self.call(
            "/v3/lease/timetolive",
            &TtlRequest { id, keys },
            Retry::Idempotent,
            limit,
        )
        .await
    }

    /// Every lease etcd holds.
    pub async fn leases(&self) -> Result<Vec<i64>, Error> {
        let r: LeasesResponse = self
            .call(
                "/v3/lease/leases",
                &serde_json::json!({}),
                Retry::Idempotent,
                self.config().max_response,
            )
            .await?;
        Ok(r.leases.into_iter().map(|l| l.id).collect())
    }

    /// Refreshes lease `id` once. The answer's `ttl` is 0 when etcd does not know the lease.
    pub async fn keep_alive_once(&self, id: i64) -> Result<KeepAliveResponse, Error> {
        let path = "/v3/lease/keepalive";
        let (endpoint, bytes) = self
            .post(
                path,
                serde_json::to_vec(&IdRequest { id })
                    .expect("serialises")
                    .into(),
                Retry::Idempotent,
                SMALL_LIMIT,
            )
            .await?;
        // a stream of one message: {"result": {...}} or {"error": {...}}, then a newline
        let line = bytes
            .split(|b| *b == b'\n')
            .find(|l| !l.iter().all(u8::is_ascii_whitespace))
            .unwrap_or_default();
        let msg: StreamLine<KeepAliveResponse> = crate::client::decode(&endpoint, path, line)?;
        match (msg.result, msg.error) {
            (_, Some(e)) => Err(Error::Etcd {
                endpoint,
                path,
                code: e.code(),
                message: e.text(),
            }),
            (Some(r), None) => Ok(r),
            (None, None) => Err(Error::Decode {
                endpoint,
                path,
                reason: "neither result nor error".into(),
            }),
        }
    }

    /// Keeps lease `id` alive until the keeper is dropped: refreshes at a third of its TTL,
    /// retries every half second (within the TTL) when a refresh fails. Fails at once when etcd
    /// does not know the lease.
    pub async fn keep_alive(&self, id: i64) -> Result<LeaseKeeper, Error> {
        let sent = Instant::now();
        let first = self.keep_alive_once(id).await?;
        if first.ttl <= 0 {
            return Err(Error::Etcd {
                endpoint: self.current_endpoint().to_string(),
                path: "/v3/lease/keepalive",
                code: crate::error::code::NOT_FOUND,
                message: format!("lease {id:x} not found"),
            });
        }
        let expires = sent + secs(first.ttl);
        let (tx, rx) = watch::channel(LeaseStatus::Alive {
            ttl: first.ttl,
            expires,
        });
        let task = tokio::spawn(keep(self.clone(), id, first.ttl, expires, tx));
        Ok(LeaseKeeper {
            id,
            status: rx,
            task,
            client: self.clone(),
        })
    }

    /// Grants a lease of `ttl` seconds and keeps it alive.
    pub async fn grant_kept(&self, ttl: i64) -> Result<LeaseKeeper, Error> {
        let g = self.grant(ttl).await?;
        self.keep_alive(g.id).await
    }
}

/// Where a kept lease stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStatus {
    /// The last refresh was confirmed; the lease lives at least until `expires` (measured from
    /// when that refresh was sent).
    Alive { ttl: i64, expires: Instant },
    /// The lease is gone or may be: keys on it are (or will be) deleted. The keeper has stopped.
    Lost(LeaseLost),
}

/// Why a lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseLost {
    /// etcd answered that it does not know the lease (expired or revoked).
    NotFound,
    /// No refresh was confirmed before the lease would have expired (etcd unreachable); the
    /// last error.
    Expired(String),
}

/// Keeps one lease alive in a task; dropping it stops the refreshes (the lease then expires
/// after its TTL, unless [`LeaseKeeper::revoke`] ends it at once).
#[derive(Debug)]
pub struct LeaseKeeper {
    id: i64,
    status: watch::Receiver<LeaseStatus>,
    task: JoinHandle<()>,
    client: Client,
}

impl LeaseKeeper {
    /// The lease.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Where the lease stands now.
    pub fn status(&self) -> LeaseStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change of [`LeaseStatus`] (it does not wake on every
    /// refresh, only on a changed TTL and on loss).
    pub fn subscribe(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// Waits until the lease is lost.
    pub async fn lost(&mut self) -> LeaseLost {
        loop {
            if let LeaseStatus::Lost(why) = &*self.status.borrow_and_update() {
                return why.clone();
            }
            if self.status.changed().await.is_err() {
                // the task ended without saying so (it panicked): treat as lost
                return LeaseLost::Expired("the keep-alive task ended".into());
            }
        }
    }

    /// Stops refreshing and revokes the lease (its keys go at once); a lease already gone is
    /// no error.
    pub async fn revoke(self) -> Result<(), Error> {
        self.task.abort();
        match self.client.revoke(self.id).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn secs(n: i64) -> Duration {
    Duration::from_secs(n.max(0) as u64)
}

/// A third of the TTL, at least 100 ms.
fn interval(ttl: i64) -> Duration {
    (secs(ttl) / 3).max(Duration::from_millis(100))
}

const RETRY: Duration = Duration::from_millis(500);

async fn keep(
    client: Client,
    id: i64,
    mut ttl: i64,
    mut expires: Instant,
    tx: watch::Sender<LeaseStatus>,
) {
    let mut next = Instant::now() + interval(ttl);
    let mut last_error = String::new();
    loop {
        tokio::time::sleep_until(next.min(expires)).await;
        if Instant::now() >= expires {
            let why = if last_error.is_empty() {
                "no refresh confirmed in time".to_string()
            } else {
                last_error
            };
            tracing::warn!("etcd lease {id:x} lost: {why}");
            tx.send_replace(LeaseStatus::Lost(LeaseLost::Expired(why)));
            return;
        }
        let sent = Instant::now();
        // an answer that comes after the lease would have expired proves nothing
        let r = tokio::time::timeout_at(expires, client.keep_alive_once(id)).await;
        match r {
            Ok(Ok(k)) if k.ttl > 0 => {
                let changed = k.ttl != ttl;
                ttl = k.ttl;
                expires = sent + secs(ttl);
                next = sent + interval(ttl);
                last_error.clear();
                tx.send_if_modified(|s| {
                    *s = LeaseStatus::Alive { ttl, expires };
                    changed
                });
            }
            Ok(Ok(_)) => {
                tracing::warn!("etcd lease {id:x} lost: etcd does not know it");
                tx.send_replace(LeaseStatus::Lost(LeaseLost::NotFound));
                return;
            }
            Ok(Err(e)) if e.is_not_found() => {
                tracing::warn!("etcd lease {id:x} lost: {e}");
                tx.send_replace(LeaseStatus::Lost(LeaseLost::NotFound));
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!("refreshing etcd lease {id:x}: {e}");
                last_error = e.to_string();
                next = Instant::now() + RETRY;
            }
            Err(_) => {
                last_error = format!("refresh of lease {id:x} unanswered until its expiry");
                next = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_intervals() {
        assert_eq!(interval(30), Duration::from_secs(10));
        assert_eq!(interval(1).as_millis(), 333);
        assert_eq!(interval(0), Duration::from_millis(100));
        let g: LeaseGrant = serde_json::from_str(
            r#"{"header":{"revision":"2"},"ID":"4111120400353466630","TTL":"5"}"#,
        )
        .unwrap();
        assert_eq!((g.id, g.ttl), (4111120400353466630, 5));
        let t: TimeToLive =
            serde_json::from_str(r#"{"ID":"123","TTL":"-1","keys":["Zm9v"]}"#).unwrap();
        assert_eq!((t.ttl, t.keys), (-1, vec![b"foo".to_vec()]));
    }
}
