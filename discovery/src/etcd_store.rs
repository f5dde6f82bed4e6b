//! The etcd backend of the `Store` trait: each token's record as one key in an etcd v3 cluster,
//! spoken through etcd's JSON gateway (`/v3/kv/range`, `/v3/kv/put`, `/v3/kv/deleterange`) over
//! plain HTTP. A change rewrites the token's record (bounded by the token limits); the index floor of
//! removed tokens is `PREFIX/index`.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;

use crate::store::{Store, StoreError};
use crate::v2::TokenRecord;

/// Records under `PREFIX/tokens/<token>` in etcd; written with a put that etcd acknowledges only
/// once a majority of its members have it on disk.
#[derive(Debug)]
pub struct EtcdStore {
    endpoints: Vec<String>,
    prefix: String,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<Kv>,
    #[serde(default)]
    more: bool,
}

#[derive(Deserialize)]
struct Kv {
    key: String,
    #[serde(default)]
    value: String,
}

fn bad(what: impl Into<String>) -> StoreError {
    StoreError::Etcd {
        endpoint: String::new(),
        message: what.into(),
    }
}

impl EtcdStore {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` (prefix default `/cairn/discovery`).
    pub fn from_url(url: &str) -> Result<EtcdStore, StoreError> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            bad(format!(
                "store URL {url:?}: expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"
            ))
        })?;
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/cairn/discovery"),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .collect();
        if endpoints.is_empty() || hosts.split(',').any(|h| !h.contains(':')) {
            return Err(bad(format!(
                "store URL {url:?}: expected HOST:PORT after etcd://"
            )));
        }
        Ok(EtcdStore::new(endpoints, prefix))
    }

    /// Talks to `endpoints` (`http://HOST:PORT`, tried in order) and keeps records under `prefix`.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> EtcdStore {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .new_agent();
        EtcdStore {
            endpoints,
            prefix: prefix.trim_end_matches('/').to_string(),
            agent,
        }
    }

    fn tokens_prefix(&self) -> String {
        format!("{}/tokens/", self.prefix)
    }

    fn index_key(&self) -> String {
        format!("{}/index", self.prefix)
    }

    /// POSTs `body` to `path` on the first endpoint that answers 200.
    fn call(&self, path: &str, body: &serde_json::Value) -> Result<String, StoreError> {
        let mut last = None;
        for ep in &self.endpoints {
            let url = format!("{ep}{path}");
            let r = self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .send(body.to_string());
            match r {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let text = resp
                        .body_mut()
                        .with_config()
                        .limit(256 << 20)
                        .read_to_string()
                        .unwrap_or_default();
                    if status == 200 {
                        return Ok(text);
                    }
                    last = Some(StoreError::Etcd {
                        endpoint: url,
                        message: format!("HTTP {status}: {}", text.trim()),
                    });
                }
                Err(e) => {
                    last = Some(StoreError::Etcd {
                        endpoint: url,
                        message: e.to_string(),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| bad("no etcd endpoints")))
    }
}

/// The smallest key after every key starting with `prefix` (etcd's `range_end` for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let prefix = self.tokens_prefix();
        let mut start = prefix.as_bytes().to_vec();
        let end = prefix_end(prefix.as_bytes());
        let mut out = Vec::new();
        loop {
            let body = serde_json::json!({
                "key": B64.encode(&start),
                "range_end": B64.encode(&end),
                "limit": 500,
            });
            let text = self.call("/v3/kv/range", &body)?;
            let resp: RangeResponse = serde_json::from_str(&text)
                .map_err(|e| bad(format!("etcd range answer is not what etcd 3.4 sends: {e}")))?;
            let mut last_key = None;
            for kv in resp.kvs {
                let key = B64
                    .decode(&kv.key)
                    .map_err(|e| bad(format!("etcd key not base64: {e}")))?;
                let name = String::from_utf8_lossy(&key).into_owned();
                let value = B64
                    .decode(&kv.value)
                    .map_err(|e| bad(format!("{name}: value not base64: {e}")))?;
                let rec: TokenRecord =
                    serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                        path: name.clone().into(),
                        message: e.to_string(),
                    })?;
                if name.strip_prefix(&prefix) != Some(rec.token.as_str()) || rec.format != 1 {
                    return Err(StoreError::Corrupt {
                        path: name.into(),
                        message: format!("holds token {:?} format {}", rec.token, rec.format),
                    });
                }
                out.push(rec);
                last_key = Some(key);
            }
            match (resp.more, last_key) {
                (true, Some(mut k)) => {
                    k.push(0);
                    start = k;
                }
                _ => break,
            }
        }
        Ok(out)
    }

    fn save(&self, record: &TokenRecord) -> Result<(), StoreError> {
        let key = format!("{}{}", self.tokens_prefix(), record.token);
        let value = serde_json::to_vec(record).expect("records serialize");
        let body = serde_json::json!({"key": B64.encode(key), "value": B64.encode(value)});
        self.call("/v3/kv/put", &body).map(|_| ())
    }

    fn remove(&self, token: &str, index: u64) -> Result<(), StoreError> {
        if index > self.index_floor()? {
            let body = serde_json::json!({
                "key": B64.encode(self.index_key()),
                "value": B64.encode(index.to_string()),
            });
            self.call("/v3/kv/put", &body)?;
        }
        let key = format!("{}{token}", self.tokens_prefix());
        let body = serde_json::json!({"key": B64.encode(key)});
        self.call("/v3/kv/deleterange", &body).map(|_| ())
    }

    fn index_floor(&self) -> Result<u64, StoreError> {
        let body = serde_json::json!({"key": B64.encode(self.index_key())});
        let text = self.call("/v3/kv/range", &body)?;
        let resp: RangeResponse = serde_json::from_str(&text)
            .map_err(|e| bad(format!("etcd range answer is not what etcd 3.4 sends: {e}")))?;
        let Some(kv) = resp.kvs.first() else {
            return Ok(0);
        };
        let value = B64
            .decode(&kv.value)
            .map_err(|e| bad(format!("{}: value not base64: {e}", self.index_key())))?;
        String::from_utf8_lossy(&value)
            .trim()
            .parse()
            .map_err(|e| bad(format!("{}: not an index: {e}", self.index_key())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_prefix_end() {
        let s = EtcdStore::from_url("etcd://10.0.0.1:2379,10.0.0.2:2379/lab").unwrap();
        assert_eq!(
            s.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(s.tokens_prefix(), "/lab/tokens/");
        let s = EtcdStore::from_url("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(s.tokens_prefix(), "/cairn/discovery/tokens/");
        assert!(EtcdStore::from_url("http://127.0.0.1:2379").is_err());
        assert!(EtcdStore::from_url("etcd://localhost/x").is_err());
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
    }
}
