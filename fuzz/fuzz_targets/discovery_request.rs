//! Fuzz target: what a peer sends the etcd discovery service: a sequence of HTTP requests (method, key
//! path, query string, urlencoded form body) through `cairn_discovery::router`, on a fresh service per
//! input with one group token and an in-memory store.
//!
//! Input: one request per line, `METHOD TARGET` or `METHOD TARGET BODY`; a body is sent as
//! `application/x-www-form-urlencoded`, and `@` in TARGET stands for the group's token
//! (`PUT /@/_config/size?value=3`, `GET /@?recursive=true`, `PUT /@/m1 value=http://a:2380`).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, Uri};
use cairn_discovery::v2::{Event, TokenRecord};
use cairn_discovery::{Discovery, Store, StoreError};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// Most requests read from one input.
const MAX_REQUESTS: usize = 16;

/// Keeps nothing: the fuzzer exercises the protocol, not the disk.
#[derive(Debug)]
struct NoStore;

impl Store for NoStore {
    fn load(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn save(&self, _: &TokenRecord) -> Result<(), StoreError> {
        Ok(())
    }
    fn append(&self, _: &TokenRecord, _: &[Event]) -> Result<(), StoreError> {
        Ok(())
    }
    fn remove(&self, _: &str, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let d = Discovery::with_store(Arc::new(NoStore), None)
        .unwrap()
        .with_wait_timeout(Duration::from_millis(1));
    let token = d.ensure_group_token("fuzz", 3).unwrap();
    // Waits end at once: a long poll that finds nothing answers empty instead of holding the input.
    d.close_waits();
    let app = cairn_discovery::router::<()>(d.clone());

    runtime().block_on(async {
        let mut last_index = 0u64;
        for line in text.lines().take(MAX_REQUESTS) {
            let mut words = line.splitn(3, ' ');
            let (Some(method), Some(target)) = (words.next(), words.next()) else {
                continue;
            };
            let body = words.next();
            let Ok(method) = Method::from_bytes(method.as_bytes()) else {
                continue;
            };
            let Ok(uri) = target.replace('@', &token).parse::<Uri>() else {
                continue;
            };
            let mut req = Request::builder()
                .method(method.clone())
                .uri(uri)
                .header(header::HOST, "192.0.2.1:8080");
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            }
            let req = req
                .body(Body::from(body.unwrap_or("").as_bytes().to_vec()))
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            assert!(
                status.is_success() || status.is_client_error(),
                "{method} {target}: {status}"
            );
            let index: u64 = resp
                .headers()
                .get("x-etcd-index")
                .expect("every answer has X-Etcd-Index")
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                index >= last_index,
                "{method} {target}: X-Etcd-Index went back from {last_index} to {index}"
            );
            last_index = index;
            let json = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|c| c == "application/json");
            let bytes = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
                .await
                .expect("an answer's body comes")
                .unwrap()
                .to_bytes();
            if json && !bytes.is_empty() {
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_else(|e| {
                    panic!("{method} {target}: body is not JSON ({e}): {bytes:?}")
                });
            }
        }
    });
});
