//! Resource limits of the discovery service (issue 15, item 5) over loopback HTTP: value size, keys
//! and bytes per token, tokens per client address and in total, expiry of unused and idle tokens,
//! and a store in which a change costs about its own size.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_discovery::{Discovery, Limits};
use common::{call, client_from, Answer, HttpClient, MemStore, TestServer};
use hyper::{Method, StatusCode};

async fn server() -> (Discovery, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = Discovery::open(dir.path(), None).unwrap();
    let addr = common::serve(d.clone(), 0).await;
    (d, format!("http://{addr}/discovery"), dir)
}

fn key(token: &str, rel: &str) -> String {
    if rel.is_empty() {
        format!("/_etcd/registry/{token}")
    } else {
        format!("/_etcd/registry/{token}/{rel}")
    }
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// An etcd v2 error body with its status, code, message and cause, and the index in both places.
fn assert_error(a: &Answer, status: u16, code: u64, message: &str, cause: &str) {
    assert_eq!(a.status.as_u16(), status, "{}", a.body);
    assert_eq!(a.headers["content-type"], "application/json");
    assert!(a.body.ends_with('\n'), "{:?}", a.body);
    let v = a.json();
    assert_eq!(v["errorCode"], code, "{}", a.body);
    assert_eq!(v["message"], message, "{}", a.body);
    assert_eq!(v["cause"], cause, "{}", a.body);
    assert_eq!(v["index"], a.index(), "{}", a.body);
}

async fn put(c: &HttpClient, base: &str, token: &str, id: &str, value: &str) -> Answer {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("value", value)
        .finish();
    call(c, Method::PUT, &format!("{base}/{token}/{id}"), Some(&body)).await
}

fn members(a: &Answer) -> usize {
    a.json()["node"]["nodes"].as_array().map_or(0, |n| n.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_or_key_over_the_limit_is_invalid_field_209() {
    let (d, base, _dir) = server().await;
    let c = common::client();
    let token = d.create(3).unwrap();
    let a = put(&c, &base, &token, "m1", &"v".repeat(4096)).await;
    assert_eq!(a.status, StatusCode::CREATED, "4096 bytes are fine");
    let a = put(&c, &base, &token, "m2", &"v".repeat(4097)).await;
    assert_error(
        &a,
        400,
        209,
        "Invalid field",
        "value of 4097 bytes: the discovery service keeps values of at most 4096 bytes",
    );
    let a = put(&c, &base, &token, "m1", &"w".repeat(60_000)).await;
    assert_eq!(a.json()["errorCode"], 209, "replacing too");
    let long = "k".repeat(513);
    let a = put(&c, &base, &token, &long, "v").await;
    assert_error(
        &a,
        400,
        209,
        "Invalid field",
        "key of 513 bytes: the discovery service keeps keys of at most 512 bytes",
    );
    let a = call(&c, Method::GET, &format!("{base}/{token}"), None).await;
    assert_eq!(members(&a), 1);
    assert_eq!(a.json()["node"]["nodes"][0]["value"], "v".repeat(4096));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_per_token_are_bound_by_its_size_with_error_103() {
    let (d, base, _dir) = server().await;
    let c = common::client();
    let token = d.create(1).unwrap();
    // A token for one member holds 2 x 1 + 32 = 34 keys.
    for i in 0..34 {
        let a = put(
            &c,
            &base,
            &token,
            &format!("m{i:02}"),
            "e=http://127.0.0.1:2380",
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED, "m{i:02}: {}", a.body);
    }
    let a = put(&c, &base, &token, "m34", "e=http://127.0.0.1:2380").await;
    assert_error(
        &a,
        400,
        103,
        "Reached the max number of peers in the cluster",
        &format!(
            "{}: a token for 1 members holds at most 34 keys",
            key(&token, "")
        ),
    );
    // Existing keys still change; a delete makes room.
    let a = put(&c, &base, &token, "m00", "e=http://127.0.0.1:2381").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = call(&c, Method::DELETE, &format!("{base}/{token}/m01"), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = put(&c, &base, &token, "m34", "e=http://127.0.0.1:2380").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_per_token_are_bounded_with_error_103() {
    let (d, base, _dir) = server().await;
    let c = common::client();
    let token = d.create(100).unwrap();
    // 128 KiB of keys and values: 32 values of 4000 bytes (and their 3-byte keys) fit, a 33rd not.
    let value = "v".repeat(4000);
    for i in 0..32 {
        let a = put(&c, &base, &token, &format!("m{i:02}"), &value).await;
        assert_eq!(a.status, StatusCode::CREATED, "m{i:02}: {}", a.body);
    }
    let a = put(&c, &base, &token, "m32", &value).await;
    assert_error(
        &a,
        400,
        103,
        "Reached the max number of peers in the cluster",
        &format!(
            "{}: a token holds at most 131072 bytes of keys and values",
            key(&token, "")
        ),
    );
    // What is left (131072 - 22 bytes of `_config/size` = 100 - 32 x 4003) fills up but for a byte;
    // then growing a value by two bytes is refused the same way, by one is fine.
    let left = 131_072 - 22 - 32 * 4003;
    let a = put(&c, &base, &token, "f", &"x".repeat(left - 2)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let a = put(&c, &base, &token, "m00", &"w".repeat(4002)).await;
    assert_eq!(a.json()["errorCode"], 103, "{}", a.body);
    let a = put(&c, &base, &token, "m00", &"w".repeat(4001)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = call(&c, Method::GET, &format!("{base}/{token}"), None).await;
    assert_eq!(members(&a), 33);
}

async fn new_token(c: &HttpClient, base: &str) -> Answer {
    call(c, Method::GET, &format!("{base}/new?size=3"), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_client_address_and_in_total_are_capped() {
    // In memory: 256 tokens without 256 fsyncs.
    let d = Discovery::with_store(Arc::new(MemStore::default()), None).unwrap();
    let addr = common::serve(d.clone(), 0).await;
    let base = format!("http://{addr}/discovery");
    // 16 per address.
    let first = client_from(loopback(2));
    for i in 0..16 {
        let a = new_token(&first, &base).await;
        assert_eq!(a.status, StatusCode::OK, "token {i}: {}", a.body);
    }
    let a = new_token(&first, &base).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert_eq!(
        a.body,
        "Unable to generate token: 127.0.0.2 has 16 discovery tokens already (the most one address may have); unused ones expire after 7 days\n"
    );
    a.index();
    // Other addresses go on, up to 256 tokens in all.
    for last in 3..18 {
        let c = client_from(loopback(last));
        for _ in 0..16 {
            let a = new_token(&c, &base).await;
            assert_eq!(a.status, StatusCode::OK, "127.0.0.{last}: {}", a.body);
        }
    }
    let a = new_token(&client_from(loopback(18)), &base).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(
        a.body,
        "Unable to generate token: the discovery service holds 256 tokens already (the most it keeps); unused ones expire after 7 days\n"
    );
    // The operator's tokens are not refused: inventory groups, and the Rust API.
    d.ensure_group_token("etcd-lab", 3).unwrap();
    d.create(3).unwrap();
}

fn token_files(state: &Path, token: &str) -> Vec<PathBuf> {
    std::fs::read_dir(state.join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(token))
        .collect()
}

#[test]
fn unused_and_idle_tokens_expire_and_are_gone_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let limits = Limits {
        unused_token_ttl: Duration::from_secs(1),
        idle_token_ttl: Duration::from_secs(6),
        ..Limits::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = common::client();
    let s = TestServer::start_with(dir.path(), port, Duration::from_secs(5), limits.clone());
    let base = s.base();
    let group = s.discovery.ensure_group_token("etcd-lab", 3).unwrap();
    let used = s.discovery.create(3).unwrap();
    let a = rt.block_on(put(&c, &base, &used, "m1", "e1=http://127.0.0.1:2380"));
    assert_eq!(a.status, StatusCode::CREATED);
    let registered = std::time::Instant::now();
    // Made last: it holds the highest index, which must not be reused after it is gone.
    let unused = s.discovery.create(3).unwrap();
    let index = s.discovery.index();
    std::thread::sleep(Duration::from_millis(1300));

    for (method, url) in [
        (Method::GET, format!("{base}/{unused}")),
        (Method::GET, format!("{base}/{unused}/_config/size")),
        (Method::GET, format!("{base}/{unused}?wait=true")),
        (Method::PUT, format!("{base}/{unused}/m1?value=x")),
    ] {
        let a = rt.block_on(call(&c, method.clone(), &url, None));
        assert_error(&a, 404, 100, "Key not found", &key(&unused, ""));
        assert_eq!(a.index(), index, "{method} {url}");
    }
    assert!(s.discovery.token(&unused).is_none());
    for token in [&used, &group] {
        let a = rt.block_on(call(&c, Method::GET, &format!("{base}/{token}"), None));
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    assert_eq!(token_files(dir.path(), &unused).len(), 1, "not swept yet");
    assert_eq!(s.discovery.sweep_expired().unwrap(), 1);
    assert!(
        token_files(dir.path(), &unused).is_empty(),
        "its file is gone"
    );
    s.stop();

    let s = TestServer::start_with(dir.path(), port, Duration::from_secs(5), limits);
    // A new client: the old one's idle connection was to the stopped server.
    let c = common::client();
    assert_eq!(s.discovery.index(), index, "indexes never go back");
    assert!(s.discovery.token(&unused).is_none());
    assert!(
        s.discovery.token(&used).is_some() || registered.elapsed() >= Duration::from_secs(6),
        "a used token lasts 6 s after its last change"
    );
    // The used token goes 6 s after its last change; the group's token stays.
    if let Some(left) =
        (registered + Duration::from_millis(6300)).checked_duration_since(std::time::Instant::now())
    {
        std::thread::sleep(left);
    }
    let a = rt.block_on(call(&c, Method::GET, &format!("{base}/{used}"), None));
    assert_error(&a, 404, 100, "Key not found", &key(&used, ""));
    let a = rt.block_on(call(&c, Method::GET, &format!("{base}/{group}"), None));
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // /new sweeps too.
    let a = rt.block_on(new_token(&c, &base));
    assert_eq!(a.status, StatusCode::OK);
    assert!(token_files(dir.path(), &used).is_empty());
    assert_eq!(token_files(dir.path(), &group).len(), 1);
}

#[test]
fn a_put_costs_the_store_about_its_own_size() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = common::client();
    let s = TestServer::start(dir.path(), port, Duration::from_secs(5));
    let base = s.base();
    let token = s.discovery.create(3).unwrap();
    let files = token_files(dir.path(), &token);
    assert_eq!(files.len(), 1);
    let file = &files[0];
    let size = || std::fs::metadata(file).unwrap().len();
    // A new key, then new values of it (etcd's history keeps the previous value with each
    // change; the store does not write it again): each grows the file by the value and a little.
    for (i, value) in ["v", "w", "x"].iter().enumerate() {
        let before = size();
        let a = rt.block_on(put(&c, &base, &token, "m1", &value.repeat(2000)));
        assert!(a.status.is_success(), "{}", a.body);
        let grown = size() - before;
        assert!(
            (2000..2300).contains(&grown),
            "PUT {i} of 2000 bytes grew the store by {grown} bytes"
        );
    }
    // Many more: the file stays bounded (compacted) and a restart sees the same token.
    for i in 0..60 {
        let a = rt.block_on(put(
            &c,
            &base,
            &token,
            &format!("k{}", i % 7),
            &"y".repeat(2000),
        ));
        assert!(a.status.is_success(), "{}", a.body);
    }
    assert!(size() < 400_000, "{} bytes", size());
    let before = rt.block_on(call(&c, Method::GET, &format!("{base}/{token}"), None));
    let record = s.discovery.token(&token).unwrap();
    s.stop();
    let s = TestServer::start(dir.path(), port, Duration::from_secs(5));
    // A new client: the old one's idle connection was to the stopped server.
    let c = common::client();
    assert_eq!(s.discovery.token(&token).unwrap(), record);
    let after = rt.block_on(call(&c, Method::GET, &format!("{base}/{token}"), None));
    assert_eq!(after.body, before.body);
}
