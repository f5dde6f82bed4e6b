//! The etcd backend of the store against a real etcd 3.4 (Debian's etcd-server) on 127.0.0.1:
//! tokens and registrations written through one service are found by the next; a dead etcd is a 500.

mod common;

use std::time::{Duration, Instant};

use cairn_discovery::{store_from_spec, Discovery};
use cairn_testkit::Etcd;
use common::call;
use hyper::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_live_in_etcd_and_survive_a_new_service() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(tmp.path(), "store");
    let port = etcd.client_port();
    let spec = format!("etcd://127.0.0.1:{port}/cairn-test");
    let t = Instant::now();
    loop {
        match store_from_spec(&spec).unwrap().load() {
            Ok(v) => {
                assert!(v.is_empty());
                break;
            }
            Err(e) => {
                let log = etcd.log();
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "etcd not ready: {e}\n{log}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    let d = tokio::task::spawn_blocking({
        let spec = spec.clone();
        move || Discovery::with_store(store_from_spec(&spec).unwrap(), None).unwrap()
    })
    .await
    .unwrap();
    let addr = common::serve(d.clone(), 0).await;
    let base = format!("http://{addr}/discovery");
    let c = common::client();
    let a = call(&c, Method::GET, &format!("{base}/new?size=3"), None).await;
    let token = a.body.rsplit('/').next().unwrap().to_string();
    let url = format!("{base}/{token}/m1?prevExist=false");
    let r = call(
        &c,
        Method::PUT,
        &url,
        Some("value=e1%3Dhttp%3A%2F%2F127.0.0.1%3A1"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let d2 = d.clone();
    let group = tokio::task::spawn_blocking(move || d2.ensure_group_token("lab", 3).unwrap())
        .await
        .unwrap();
    let listing = call(&c, Method::GET, &format!("{base}/{token}"), None).await;
    let index = d.index();

    // A second service on the same etcd prefix sees everything.
    let spec2 = spec.clone();
    let e = tokio::task::spawn_blocking(move || {
        Discovery::with_store(store_from_spec(&spec2).unwrap(), None).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(e.index(), index);
    assert_eq!(e.token(&token), d.token(&token));
    assert_eq!(e.group_token("lab"), Some(group));
    let addr2 = common::serve(e.clone(), 0).await;
    let base2 = format!("http://{addr2}/discovery");
    let again = call(&c, Method::GET, &format!("{base2}/{token}"), None).await;
    assert_eq!(again.body, listing.body);
    let dup = call(
        &c,
        Method::PUT,
        &format!("{base2}/{token}/m1?prevExist=false"),
        Some("value=x"),
    )
    .await;
    assert_eq!(dup.status, StatusCode::PRECONDITION_FAILED);

    // With etcd gone, a change is a 500 (300 Raft Internal Error), which etcd's client retries.
    drop(etcd);
    let r = call(
        &c,
        Method::PUT,
        &format!("{base2}/{token}/m2?prevExist=false"),
        Some("value=y"),
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    let v = r.json();
    assert_eq!(v["errorCode"], 300);
    assert!(
        v["cause"]
            .as_str()
            .unwrap()
            .contains("etcd store http://127.0.0.1:"),
        "{v}"
    );
    assert!(
        e.token(&token).unwrap().members().len() == 1,
        "a failed save changes nothing"
    );
}
