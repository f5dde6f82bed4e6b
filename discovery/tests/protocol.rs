//! The discovery HTTP protocol as etcd 3.4's discovery client and discovery.etcd.io define it,
//! exercised over loopback HTTP: tokens, v2 reads, registrations, deletes, waits, error bodies.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_discovery::Discovery;
use common::{call, finish, start, Answer, MemStore, TestServer};
use hyper::{Method, StatusCode};
use serde_json::json;

async fn server() -> (Discovery, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = Discovery::open(dir.path(), None)
        .unwrap()
        .with_wait_timeout(Duration::from_secs(20));
    let addr = common::serve(d.clone(), 0).await;
    (d, format!("http://{addr}/discovery"), dir)
}

fn token_of(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

fn key(token: &str, rel: &str) -> String {
    if rel.is_empty() {
        format!("/_etcd/registry/{token}")
    } else {
        format!("/_etcd/registry/{token}/{rel}")
    }
}

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

async fn register(
    c: &common::HttpClient,
    base: &str,
    token: &str,
    id: &str,
    value: &str,
) -> Answer {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("value", value)
        .finish();
    call(
        c,
        Method::PUT,
        &format!("{base}/{token}/{id}?prevExist=false"),
        Some(&body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_makes_tokens_with_a_size_and_a_url() {
    let (d, base, _dir) = server().await;
    let c = common::client();
    let a = call(&c, Method::GET, &format!("{base}/new"), None).await;
    assert_eq!(a.status, StatusCode::OK);
    a.index();
    let token = token_of(&a.body);
    assert_eq!(
        a.body,
        format!("{base}/{token}"),
        "URL from the Host header and the mount point"
    );
    assert!(
        token.len() == 32
            && token
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let s = call(
        &c,
        Method::GET,
        &format!("{base}/{token}/_config/size"),
        None,
    )
    .await;
    assert_eq!(s.status, StatusCode::OK);
    let idx = s.index();
    assert_eq!(
        s.json(),
        json!({"action":"get","node":{"key":key(&token,"_config/size"),"value":"3","modifiedIndex":idx,"createdIndex":idx}})
    );
    assert_eq!(d.token(&token).unwrap().size(), Some(3));

    // POST with a form body, and GET with a query.
    let a = call(&c, Method::POST, &format!("{base}/new"), Some("size=5")).await;
    assert_eq!(d.token(&token_of(&a.body)).unwrap().size(), Some(5));
    let a = call(&c, Method::GET, &format!("{base}/new?size=1"), None).await;
    let t1 = token_of(&a.body);
    assert_eq!(d.token(&t1).unwrap().size(), Some(1));
    assert_ne!(t1, token);
    assert!(a.index() > idx, "the index grows with each token");
    for bad in ["abc", "0", "-1", "1001", "3.0"] {
        let a = call(&c, Method::GET, &format!("{base}/new?size={bad}"), None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "size={bad}");
        assert!(
            a.body
                .contains("size: expected a whole number from 1 to 1000"),
            "{}",
            a.body
        );
        a.index();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_uses_the_public_base_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let d = Discovery::open(dir.path(), Some("http://10.0.0.1:8080/discovery/")).unwrap();
    let addr = common::serve(d.clone(), 0).await;
    let c = common::client();
    let a = call(
        &c,
        Method::GET,
        &format!("http://{addr}/discovery/new?size=3"),
        None,
    )
    .await;
    let token = token_of(&a.body);
    assert_eq!(a.body, format!("http://10.0.0.1:8080/discovery/{token}"));
    assert_eq!(d.url(&token).unwrap(), a.body);
    let other = tempfile::tempdir().unwrap();
    for bad in [
        "10.0.0.1/discovery",
        "http://",
        "http:///x",
        "http://h/d?x=1",
    ] {
        let e = Discovery::open(other.path(), Some(bad))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("discovery public URL {bad:?}")),
            "{e}"
        );
    }
    let e = Discovery::open(dir.path(), None).unwrap_err().to_string();
    assert!(e.contains("in use by another process"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_listed_by_creation_with_config_hidden() {
    let (d, base, _dir) = server().await;
    let c = common::client();
    let token = d.create(3).unwrap();
    let created = d.index();
    let a = call(&c, Method::GET, &format!("{base}/{token}"), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.index(), created);
    assert_eq!(
        a.json(),
        json!({"action":"get","node":{"key":key(&token,""),"dir":true,"modifiedIndex":created,"createdIndex":created}})
    );
    let mut expect = Vec::new();
    for (id, name) in [
        ("8e9e05c52164694d", "b"),
        ("1c1d2f3e4a5b6c7d", "a"),
        ("ffffffffffffff01", "c"),
    ] {
        let value = format!("{name}=http://127.0.0.1:2380");
        let r = register(&c, &base, &token, id, &value).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let i = r.index();
        assert_eq!(
            r.json(),
            json!({"action":"create","node":{"key":key(&token,id),"value":value,"modifiedIndex":i,"createdIndex":i}})
        );
        expect.push(json!({"key":key(&token,id),"value":value,"modifiedIndex":i,"createdIndex":i}));
    }
    let a = call(
        &c,
        Method::GET,
        &format!("{base}/{token}?recursive=false&sorted=false&quorum=false"),
        None,
    )
    .await;
    assert_eq!(
        a.json(),
        json!({"action":"get","node":{"key":key(&token,""),"dir":true,"nodes":expect,"modifiedIndex":created,"createdIndex":created}})
    );
    assert_eq!(a.index(), d.index());
    // sorted=true orders by key, as etcd does.
    let a = call(
        &c,
        Method::GET,
        &format!("{base}/{token}?sorted=true"),
        None,
    )
    .await;
    let ids: Vec<_> = a.json()["node"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            n["key"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        ids,
        ["1c1d2f3e4a5b6c7d", "8e9e05c52164694d", "ffffffffffffff01"]
    );
    // Trailing slash and HEAD work as on etcd.
    let a = call(&c, Method::GET, &format!("{base}/{token}/"), None).await;
    assert_eq!(a.json()["node"]["nodes"].as_array().unwrap().len(), 3);
    let a = call(&c, Method::HEAD, &format!("{base}/{token}"), None).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, ""));
    a.index();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_registering_twice_gets_412_and_a_full_cluster_lists_extra_members_last() {
    let (d, base, _dir) = server().await;
    let c = common::client();
    let token = d.create(3).unwrap();
    let r = register(&c, &base, &token, "a1", "e1=http://127.0.0.1:1").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let idx = r.index();
    let dup = register(&c, &base, &token, "a1", "e1=http://127.0.0.1:1").await;
    assert_error(&dup, 412, 105, "Key already exists", &key(&token, "a1"));
    assert_eq!(dup.index(), idx);
    assert_eq!(
        dup.body,
        format!("{{\"errorCode\":105,\"message\":\"Key already exists\",\"cause\":\"{}\",\"index\":{idx}}}\n", key(&token, "a1"))
    );
    register(&c, &base, &token, "a2", "e2=http://127.0.0.1:2").await;
    register(&c, &base, &token, "a3", "e3=http://127.0.0.1:3").await;
    // A fourth registration is stored, as on etcd: the discovery client finds itself past `size`
    // in creation order and stops with "discovery: cluster is full" (or falls back to proxy);
    // members that came first still see exactly `size` members.
    let r = register(&c, &base, &token, "a4", "e4=http://127.0.0.1:4").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let a = call(&c, Method::GET, &format!("{base}/{token}"), None).await;
    let ids: Vec<_> = a.json()["node"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            n["key"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["a1", "a2", "a3", "a4"]);
    // The same member id re-registering after the cluster is full is still 412.
    let dup = register(&c, &base, &token, "a2", "e2=http://127.0.0.1:2").await;
    assert_error(&dup, 412, 105, "Key already exists", &key(&token, "a2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_etcd_codes_statuses_and_causes() {
    let (d, base, _dir) = server().await;
    let c = common::client();
    let token = d.create(3).unwrap();
    let unknown = "00000000000000000000000000000000";
    let a = call(
        &c,
        Method::GET,
        &format!("{base}/{unknown}/_config/size"),
        None,
    )
    .await;
    assert_error(&a, 404, 100, "Key not found", &key(unknown, ""));
    let a = call(&c, Method::GET, &format!("{base}/{token}/nobody"), None).await;
    assert_error(&a, 404, 100, "Key not found", &key(&token, "nobody"));
    register(&c, &base, &token, "m", "e1=http://127.0.0.1:1").await;
    let a = call(&c, Method::GET, &format!("{base}/{token}/m/x"), None).await;
    assert_error(&a, 400, 104, "Not a directory", &key(&token, "m"));
    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/m/x?prevExist=false"),
        Some("value=v"),
    )
    .await;
    assert_error(&a, 400, 104, "Not a directory", &key(&token, "m"));
    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/m?prevValue=old"),
        Some("value=new"),
    )
    .await;
    assert_error(
        &a,
        412,
        101,
        "Compare failed",
        "[old != e1=http://127.0.0.1:1]",
    );
    let a = call(&c, Method::PUT, &format!("{base}/{token}/d?dir=true"), None).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.json()["node"]["dir"], true);
    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/d"),
        Some("value=v"),
    )
    .await;
    assert_error(&a, 403, 102, "Not a file", &key(&token, "d"));
    call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/d/x"),
        Some("value=v"),
    )
    .await;
    let a = call(
        &c,
        Method::DELETE,
        &format!("{base}/{token}/d?dir=true"),
        None,
    )
    .await;
    assert_error(&a, 403, 108, "Directory not empty", &key(&token, "d"));
    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/_config/size"),
        Some("value=9"),
    )
    .await;
    assert_error(
        &a,
        400,
        107,
        "Root is read only",
        &key(&token, "_config/size"),
    );
    let a = call(&c, Method::DELETE, &format!("{base}/{token}"), None).await;
    assert_error(&a, 400, 107, "Root is read only", &key(&token, ""));
    let a = call(
        &c,
        Method::GET,
        &format!("{base}/{token}?wait=true&waitIndex=x"),
        None,
    )
    .await;
    assert_error(
        &a,
        400,
        203,
        "The given index in POST form is not a number",
        "invalid value for \"waitIndex\"",
    );
    let a = call(
        &c,
        Method::GET,
        &format!("{base}/{token}?recursive=maybe"),
        None,
    )
    .await;
    assert_error(
        &a,
        400,
        209,
        "Invalid field",
        "invalid value for \"recursive\"",
    );
    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/m?wait=true"),
        Some("value=v"),
    )
    .await;
    assert_error(
        &a,
        400,
        209,
        "Invalid field",
        "\"wait\" can only be used with GET requests",
    );
    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/m?prevExist=perhaps"),
        Some("value=v"),
    )
    .await;
    assert_error(&a, 400, 209, "Invalid field", "invalid value for prevExist");
    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/m?prevValue="),
        Some("value=v"),
    )
    .await;
    assert_error(
        &a,
        400,
        201,
        "PrevValue is Required in POST form",
        "\"prevValue\" cannot be empty",
    );
    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/m"),
        Some("value=v&ttl=ten"),
    )
    .await;
    assert_error(
        &a,
        400,
        202,
        "The given TTL in POST form is not a number",
        "invalid value for \"ttl\"",
    );
    let a = call(
        &c,
        Method::GET,
        &format!("{base}/{token}/../{unknown}"),
        None,
    )
    .await;
    assert_error(
        &a,
        400,
        210,
        "Invalid POST form",
        "key must not contain \"..\" components",
    );
    let a = call(
        &c,
        Method::GET,
        &format!("{base}/{unknown}?wait=true"),
        None,
    )
    .await;
    assert_error(&a, 404, 100, "Key not found", &key(unknown, ""));
    let a = call(
        &c,
        Method::POST,
        &format!("{base}/{token}"),
        Some("value=x"),
    )
    .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers["allow"], "GET, HEAD, PUT, DELETE");
    a.index();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_set_update_and_compare_and_swap() {
    let (d, base, _dir) = server().await;
    let c = common::client();
    let token = d.create(3).unwrap();
    let r = register(&c, &base, &token, "m", "e1=http://127.0.0.1:1").await;
    let ci = r.index();
    let a = call(&c, Method::DELETE, &format!("{base}/{token}/m"), None).await;
    assert_eq!(a.status, StatusCode::OK);
    let di = a.index();
    assert_eq!(di, ci + 1);
    assert_eq!(
        a.json(),
        json!({"action":"delete","node":{"key":key(&token,"m"),"modifiedIndex":di,"createdIndex":ci},
               "prevNode":{"key":key(&token,"m"),"value":"e1=http://127.0.0.1:1","modifiedIndex":ci,"createdIndex":ci}})
    );
    let a = call(&c, Method::DELETE, &format!("{base}/{token}/m"), None).await;
    assert_error(&a, 404, 100, "Key not found", &key(&token, "m"));
    // The member may register again after its registration was removed.
    let r = register(&c, &base, &token, "m", "e1=http://127.0.0.1:1").await;
    assert_eq!(r.status, StatusCode::CREATED);

    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/k"),
        Some("value=1"),
    )
    .await;
    assert_eq!(
        (a.status, a.json()["action"].as_str()),
        (StatusCode::CREATED, Some("set"))
    );
    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/k"),
        Some("value=2"),
    )
    .await;
    assert_eq!(
        (a.status, a.json()["prevNode"]["value"].as_str()),
        (StatusCode::OK, Some("1"))
    );
    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/k?prevExist=true"),
        Some("value=3"),
    )
    .await;
    assert_eq!(a.json()["action"], "update");
    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/k?prevValue=3"),
        Some("value=4"),
    )
    .await;
    assert_eq!(
        (
            a.json()["action"].as_str(),
            a.json()["node"]["value"].as_str()
        ),
        (Some("compareAndSwap"), Some("4"))
    );
    let mi = a.index();
    let a = call(
        &c,
        Method::DELETE,
        &format!("{base}/{token}/k?prevIndex={}", mi - 1),
        None,
    )
    .await;
    assert_error(
        &a,
        412,
        101,
        "Compare failed",
        &format!("[{} != {mi}]", mi - 1),
    );
    let a = call(
        &c,
        Method::DELETE,
        &format!("{base}/{token}/k?prevIndex={mi}"),
        None,
    )
    .await;
    assert_eq!(a.json()["action"], "compareAndDelete");
    let a = call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/missing?prevExist=true"),
        Some("value=1"),
    )
    .await;
    assert_error(&a, 404, 100, "Key not found", &key(&token, "missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_return_past_changes_from_wait_index() {
    let (d, base, _dir) = server().await;
    let c = common::client();
    let token = d.create(3).unwrap();
    let i0 = d.index();
    let i1 = register(&c, &base, &token, "a", "e1=http://127.0.0.1:1")
        .await
        .index();
    let i2 = register(&c, &base, &token, "b", "e2=http://127.0.0.1:2")
        .await
        .index();
    let now = d.index();
    // From 1: the token's first change, the creation of `_config/size` (etcd's history scan does
    // not hide `_` keys; the discovery client always waits from after its GET).
    for (wait_index, expect) in [(i1, i1), (i2, i2), (1, i0)] {
        let a = call(
            &c,
            Method::GET,
            &format!("{base}/{token}?wait=true&waitIndex={wait_index}&recursive=true"),
            None,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.index(),
            now,
            "X-Etcd-Index is the index when the wait began"
        );
        let v = a.json();
        assert_eq!(v["action"], "create");
        assert_eq!(
            v["node"]["modifiedIndex"], expect,
            "waitIndex={wait_index}: {v}"
        );
        assert!(a.body.ends_with('\n'));
    }
    // createSelf's watch: the member's own key, from its creation index.
    let a = call(
        &c,
        Method::GET,
        &format!("{base}/{token}/b?wait=true&waitIndex={i2}&recursive=false"),
        None,
    )
    .await;
    assert_eq!(a.json()["node"]["key"], key(&token, "b"));
    // A waitIndex before the token was made finds its first change, `_config/size` (history
    // includes hidden keys, as etcd's scan does).
    let a = call(
        &c,
        Method::GET,
        &format!("{base}/{token}/_config/size?wait=true&waitIndex=1"),
        None,
    )
    .await;
    assert_eq!(a.json()["node"]["value"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_sends_headers_at_once_and_the_change_when_it_happens() {
    let (d, base, _dir) = server().await;
    let c = common::client();
    let token = d.create(3).unwrap();
    let now = d.index();
    let url = format!(
        "{base}/{token}?wait=true&waitIndex={}&recursive=true",
        now + 1
    );
    let head = tokio::time::timeout(Duration::from_secs(5), start(&c, Method::GET, &url, None))
        .await
        .expect("headers arrive before any change");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["x-etcd-index"], now.to_string().as_str());
    // A non-recursive wait on the directory is not told about a new child.
    let flat = tokio::spawn({
        let c = c.clone();
        let url = format!("{base}/{token}?wait=true&waitIndex={}", now + 1);
        async move {
            tokio::time::timeout(
                Duration::from_millis(1500),
                call(&c, Method::GET, &url, None),
            )
            .await
        }
    });
    let body = tokio::spawn(finish(head));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!body.is_finished(), "the wait answered before any change");
    let r = register(&c, &base, &token, "m", "e1=http://127.0.0.1:1").await;
    let a = tokio::time::timeout(Duration::from_secs(5), body)
        .await
        .expect("the change ends the wait")
        .unwrap();
    let i = r.index();
    assert_eq!(
        a.json(),
        json!({"action":"create","node":{"key":key(&token,"m"),"value":"e1=http://127.0.0.1:1","modifiedIndex":i,"createdIndex":i}})
    );
    assert!(
        flat.await.unwrap().is_err(),
        "a non-recursive wait on the token fired for a child"
    );

    // A wait on a key sees its deletion with prevNode.
    let url = format!("{base}/{token}/m?wait=true");
    let head = start(&c, Method::GET, &url, None).await;
    let body = tokio::spawn(finish(head));
    tokio::time::sleep(Duration::from_millis(100)).await;
    call(&c, Method::DELETE, &format!("{base}/{token}/m"), None).await;
    let a = body.await.unwrap();
    let v = a.json();
    assert_eq!(
        (v["action"].as_str(), v["prevNode"]["value"].as_str()),
        (Some("delete"), Some("e1=http://127.0.0.1:1"))
    );

    // Many waiters on one token all get the change.
    let now = d.index();
    let mut waits = Vec::new();
    for _ in 0..50 {
        let head = start(
            &c,
            Method::GET,
            &format!(
                "{base}/{token}?wait=true&recursive=true&waitIndex={}",
                now + 1
            ),
            None,
        )
        .await;
        waits.push(tokio::spawn(finish(head)));
    }
    let i = register(&c, &base, &token, "n", "e2=http://127.0.0.1:2")
        .await
        .index();
    for w in waits {
        assert_eq!(w.await.unwrap().json()["node"]["modifiedIndex"], i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_times_out_ends_with_an_empty_body() {
    let dir = tempfile::tempdir().unwrap();
    let d = Discovery::open(dir.path(), None)
        .unwrap()
        .with_wait_timeout(Duration::from_millis(300));
    let addr = common::serve(d.clone(), 0).await;
    let token = d.create(3).unwrap();
    let c = common::client();
    let a = call(
        &c,
        Method::GET,
        &format!("http://{addr}/discovery/{token}?wait=true&recursive=true"),
        None,
    )
    .await;
    // etcd's client treats an empty 200 as "ask again" (ErrEmptyBody).
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, ""));
    assert_eq!(a.index(), d.index());
    assert_eq!(d.waits_timed_out(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_index_older_than_the_history_is_error_401() {
    let d = Discovery::with_store(Arc::new(MemStore::default()), None).unwrap();
    let addr = common::serve(d.clone(), 0).await;
    let base = format!("http://{addr}/discovery");
    let token = d.create(3).unwrap();
    let first = d.index();
    let req = cairn_discovery::v2::PutRequest {
        value: "v".into(),
        ..Default::default()
    };
    for _ in 0..(cairn_discovery::v2::HISTORY_CAPACITY + 1) {
        d.put(&token, "k", &req).unwrap();
    }
    let c = common::client();
    let a = call(
        &c,
        Method::GET,
        &format!("{base}/{token}?wait=true&recursive=true&waitIndex={first}"),
        None,
    )
    .await;
    assert_error(
        &a,
        400,
        401,
        "The event in requested index is outdated and cleared",
        &format!(
            "the requested history has been cleared [{}/{first}]",
            first + 2
        ),
    );
    let a = call(
        &c,
        Method::GET,
        &format!(
            "{base}/{token}?wait=true&recursive=true&waitIndex={}",
            first + 2
        ),
        None,
    )
    .await;
    assert_eq!(a.json()["node"]["modifiedIndex"], first + 2);
}

#[test]
fn tokens_registrations_groups_and_the_index_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let s = TestServer::start(dir.path(), port, Duration::from_secs(5));
    let token = s.discovery.create(3).unwrap();
    let group = s.discovery.ensure_group_token("etcd-lab", 3).unwrap();
    assert_eq!(
        s.discovery.ensure_group_token("etcd-lab", 3).unwrap(),
        group
    );
    assert_ne!(group, token);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = s.base();
    let c = common::client();
    let reg = rt.block_on(register(&c, &base, &token, "m1", "e1=http://127.0.0.1:1"));
    let before = rt.block_on(call(&c, Method::GET, &format!("{base}/{token}"), None));
    let index = s.discovery.index();
    s.stop();

    let s = TestServer::start(dir.path(), port, Duration::from_secs(5));
    // A new client: the old one's idle connection was to the stopped server.
    let c = common::client();
    assert_eq!(s.discovery.index(), index);
    let after = rt.block_on(call(&c, Method::GET, &format!("{base}/{token}"), None));
    assert_eq!(after.body, before.body);
    assert_eq!(after.index(), before.index());
    let dup = rt.block_on(register(&c, &base, &token, "m1", "e1=http://127.0.0.1:1"));
    assert_error(&dup, 412, 105, "Key already exists", &key(&token, "m1"));
    // A wait from before the restart still finds the registration in the kept history.
    let a = rt.block_on(call(
        &c,
        Method::GET,
        &format!(
            "{base}/{token}?wait=true&recursive=true&waitIndex={}",
            reg.index()
        ),
        None,
    ));
    assert_eq!(a.json()["node"]["key"], key(&token, "m1"));
    let r = rt.block_on(register(&c, &base, &token, "m2", "e2=http://127.0.0.1:2"));
    assert_eq!(r.index(), index + 1, "the index goes on from where it was");
    assert_eq!(
        s.discovery.ensure_group_token("etcd-lab", 3).unwrap(),
        group
    );
    assert_eq!(s.discovery.group_token("etcd-lab").unwrap(), group);
    let err = s
        .discovery
        .ensure_group_token("etcd-lab", 5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("group \"etcd-lab\" has discovery token")
            && err.contains("cluster of 3, not 5"),
        "{err}"
    );
    assert!(s.discovery.create(0).is_err());
    drop(s);
    let files = std::fs::read_dir(dir.path().join("tokens"))
        .unwrap()
        .count();
    assert_eq!(files, 2, "one file per token, no temporary files left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_lets_a_graceful_shutdown_finish() {
    let dir = tempfile::tempdir().unwrap();
    let d = Discovery::open(dir.path(), None).unwrap();
    let token = d.create(3).unwrap();
    let listener = common::listen(0).await;
    let addr = listener.local_addr().unwrap();
    let app: axum::Router =
        axum::Router::new().nest("/discovery", cairn_discovery::router(d.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    let c = common::client();
    let url = format!("http://{addr}/discovery/{token}?wait=true&recursive=true");
    let head = start(&c, Method::GET, &url, None).await;
    let body = tokio::spawn(finish(head));
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !server.is_finished(),
        "graceful shutdown waits for the long poll"
    );
    d.close_waits();
    let a = tokio::time::timeout(Duration::from_secs(5), body)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, ""));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops once the waits are closed")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_get_distinct_indexes_and_one_winner_per_id() {
    let (d, base, _dir) = server().await;
    let token = d.create(40).unwrap();
    let other = d.create(3).unwrap();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (base, token, other) = (base.clone(), token.clone(), other.clone());
        tasks.push(tokio::spawn(async move {
            let c = common::client();
            let (t, id) = match i % 3 {
                0 => (token, format!("m{i}")),
                1 => (token, "same".to_string()),
                _ => (other, format!("o{i}")),
            };
            (
                i,
                register(&c, &base, &t, &id, &format!("n{i}=http://127.0.0.1:{i}")).await,
            )
        }));
    }
    let mut created = Vec::new();
    let mut dup = 0;
    for t in tasks {
        let (i, a) = t.await.unwrap();
        match a.status {
            StatusCode::CREATED => created.push(a.json()["node"]["createdIndex"].as_u64().unwrap()),
            StatusCode::PRECONDITION_FAILED => {
                assert_eq!(i % 3, 1, "{}", a.body);
                dup += 1;
            }
            s => panic!("{s}: {}", a.body),
        }
    }
    assert_eq!((created.len(), dup), (41, 19));
    created.sort();
    created.dedup();
    assert_eq!(created.len(), 41, "indexes are unique");
    assert_eq!(*created.last().unwrap(), d.index());
    let c = common::client();
    let a = call(&c, Method::GET, &format!("{base}/{token}"), None).await;
    let idx: Vec<u64> = a.json()["node"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["createdIndex"].as_u64().unwrap())
        .collect();
    assert_eq!(idx.len(), 21);
    assert!(idx.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(d.token(&other).unwrap().members().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_x_etcd_index() {
    let (d, base, _dir) = server().await;
    let c = common::client();
    d.create(3).unwrap();
    for (m, url) in [
        (Method::PUT, format!("{base}/new")),
        (Method::DELETE, format!("{base}/new")),
        (Method::GET, base.clone()),
        (Method::PATCH, format!("{base}/x")),
    ] {
        let a = call(&c, m.clone(), &url, None).await;
        assert!(a.status.is_client_error(), "{m} {url}: {}", a.status);
        assert_eq!(a.index(), d.index(), "{m} {url}");
    }
}
