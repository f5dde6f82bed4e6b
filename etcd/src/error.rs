//! [`Error`]: everything a call to etcd can end with, each naming the endpoint and the gateway path
//! it happened at, and [`Error::is_transient`], the line between "try again" and "give up".

use std::path::PathBuf;
use std::time::Duration;

/// gRPC status codes etcd answers with (in the gateway's `"code"` field).
pub mod code {
    /// An argument etcd refuses (a bad key, a txn with duplicate keys, a future revision).
    pub const INVALID_ARGUMENT: i32 = 3;
    /// The request outlived its deadline inside etcd.
    pub const DEADLINE_EXCEEDED: i32 = 4;
    /// The thing asked for does not exist (a lease).
    pub const NOT_FOUND: i32 = 5;
    /// Too many requests, or a quota.
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    /// A precondition failed (e.g. a revision older than the compaction).
    pub const FAILED_PRECONDITION: i32 = 9;
    /// The range asked for is gone (`mvcc: required revision has been compacted`).
    pub const OUT_OF_RANGE: i32 = 11;
    /// No leader, leader changed, request timed out inside etcd.
    pub const UNAVAILABLE: i32 = 14;
}

/// What a call to etcd failed with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `Client::new` was given no endpoint.
    #[error("no etcd endpoint given")]
    NoEndpoints,
    /// An endpoint that is not `http://HOST:PORT` (or `https://HOST:PORT` with
    /// [`Config::tls`](crate::Config::tls)), or endpoints mixing the two.
    #[error("etcd endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    /// A PEM file of a [`Tls`](crate::Tls) setting is missing, unreadable or holds nothing
    /// usable; `what` is `"CA file"`, `"client certificate file"` or `"client key file"`.
    #[error("etcd TLS {what} {}: {reason}", path.display())]
    TlsFile {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    /// [`Tls`](crate::Tls) files that do not go together (a certificate without its key, a key
    /// that is not the certificate's).
    #[error("etcd TLS: {reason}")]
    TlsConfig { reason: String },
    /// No TCP connection (refused, unreachable, connect timeout); nothing was sent.
    #[error("etcd at {endpoint}: cannot connect: {reason}")]
    Connect { endpoint: String, reason: String },
    /// The TLS handshake failed, or the server refused the client's certificate right after
    /// it: a certificate that does not verify (wrong CA, wrong name, expired), no or a refused
    /// client certificate, a peer that does not speak TLS. Nothing was applied; not transient
    /// (it is a matter of configuration), but [`Error::is_connect`], so a request still moves on
    /// to the next endpoint.
    #[error("etcd at {endpoint}: TLS failed: {reason}")]
    Tls { endpoint: String, reason: String },
    /// The connection broke after the request was (perhaps) sent.
    #[error("etcd at {endpoint}{path}: connection failed: {reason}")]
    Transport {
        endpoint: String,
        path: &'static str,
        reason: String,
    },
    /// No complete answer within the limit.
    #[error("etcd at {endpoint}{path}: no complete answer within {after:?}")]
    Timeout {
        endpoint: String,
        path: &'static str,
        after: Duration,
    },
    /// A status other than 200 without etcd's error JSON.
    #[error("etcd at {endpoint}{path}: HTTP {status}: {body}")]
    Http {
        endpoint: String,
        path: &'static str,
        status: u16,
        body: String,
    },
    /// etcd's own error (`{"error": ..., "code": ..., "message": ...}`), e.g. code 5 for a lease
    /// that does not exist.
    #[error("etcd at {endpoint}{path}: {message} (gRPC code {code})")]
    Etcd {
        endpoint: String,
        path: &'static str,
        code: i32,
        message: String,
    },
    /// An answer that is not what the gateway sends.
    #[error("etcd at {endpoint}{path}: undecodable answer: {reason}")]
    Decode {
        endpoint: String,
        path: &'static str,
        reason: String,
    },
    /// An answer (or one line of a watch stream) past the configured limit.
    #[error("etcd at {endpoint}{path}: answer larger than the limit of {limit} bytes")]
    TooLarge {
        endpoint: String,
        path: &'static str,
        limit: usize,
    },
    /// etcd ended a watch for a reason other than compaction.
    #[error("etcd at {endpoint}: watch canceled: {reason}")]
    WatchCanceled { endpoint: String, reason: String },
}

impl Error {
    /// True when the same request may succeed later or on another member: no connection, a
    /// broken connection, a timeout, HTTP 429/502/503/504, or etcd's Unavailable,
    /// DeadlineExceeded and ResourceExhausted. A transient error on a write does not say whether
    /// the write happened.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Transport { .. } | Error::Timeout { .. } => true,
            Error::Http { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            Error::Etcd { code: c, .. } => matches!(
                *c,
                code::UNAVAILABLE | code::DEADLINE_EXCEEDED | code::RESOURCE_EXHAUSTED
            ),
            _ => false,
        }
    }

    /// True when nothing reached the endpoint, or the endpoint refused the connection before
    /// it read the request (TLS), so it is safe to send anything again, anywhere.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::Tls { .. })
    }

    /// etcd's gRPC code, for [`Error::Etcd`].
    pub fn grpc_code(&self) -> Option<i32> {
        match self {
            Error::Etcd { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for etcd's "not found" (a lease that does not exist or has expired).
    pub fn is_not_found(&self) -> bool {
        self.grpc_code() == Some(code::NOT_FOUND)
    }

    /// The endpoint the error happened at, when there was one.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Error::NoEndpoints | Error::TlsFile { .. } | Error::TlsConfig { .. } => None,
            Error::BadEndpoint { endpoint, .. }
            | Error::Connect { endpoint, .. }
            | Error::Tls { endpoint, .. }
            | Error::Transport { endpoint, .. }
            | Error::Timeout { endpoint, .. }
            | Error::Http { endpoint, .. }
            | Error::Etcd { endpoint, .. }
            | Error::Decode { endpoint, .. }
            | Error::TooLarge { endpoint, .. }
            | Error::WatchCanceled { endpoint, .. } => Some(endpoint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_or_final() {
        let ep = || "http://127.0.0.1:1".to_string();
        let etcd = |c| Error::Etcd {
            endpoint: ep(),
            path: "/v3/kv/put",
            code: c,
            message: "m".into(),
        };
        let http = |s| Error::Http {
            endpoint: ep(),
            path: "/v3/kv/put",
            status: s,
            body: String::new(),
        };
        assert!(etcd(code::UNAVAILABLE).is_transient());
        assert!(!etcd(code::NOT_FOUND).is_transient());
        assert!(etcd(code::NOT_FOUND).is_not_found());
        assert!(!etcd(code::INVALID_ARGUMENT).is_transient());
        assert!(http(503).is_transient() && http(429).is_transient());
        assert!(!http(404).is_transient() && !http(500).is_transient());
        let c = Error::Connect {
            endpoint: ep(),
            reason: "refused".into(),
        };
        assert!(c.is_transient() && c.is_connect());
        assert_eq!(c.endpoint(), Some("http://127.0.0.1:1"));
        assert_eq!(
            c.to_string(),
            "etcd at http://127.0.0.1:1: cannot connect: refused"
        );
        let tls = Error::Tls {
            endpoint: "https://127.0.0.1:1".into(),
            reason: "invalid peer certificate: UnknownIssuer".into(),
        };
        assert!(!tls.is_transient() && tls.is_connect());
        let big = Error::TooLarge {
            endpoint: ep(),
            path: "/v3/kv/range",
            limit: 10,
        };
        assert!(!big.is_transient());
        assert_eq!(
            big.to_string(),
            "etcd at http://127.0.0.1:1/v3/kv/range: answer larger than the limit of 10 bytes"
        );
        // small enough to pass around in Results
        assert!(std::mem::size_of::<Error>() <= 96);
    }
}
