//! cairn-etcd against a real etcd 3.4 (Debian's etcd-server) on 127.0.0.1: the KV round trip
//! with every option, transactions with every compare, a compare-and-swap race that exactly one
//! task wins, elections and fencing, lease expiry and keep-alive (and its loss reported),
//! watches in order, across a restart of the member (same data dir) and across the loss of one
//! member of three (and a member left without a leader ends its watches and refuses requests),
//! compaction surfaced, and failover past a dead endpoint.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_etcd::{
    code, Campaign, Client, Compare, CompareOp, Config, DeleteOptions, Error, EventKind,
    GetOptions, LeaseLost, LeaseStatus, Op, OpResponse, PutOptions, Txn, Watch, WatchOptions,
    WatchUpdate,
};
use cairn_testkit::{free_port, Etcd};

fn client(urls: &[&str]) -> Client {
    Client::with_config(
        urls.iter().copied(),
        Config {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            ..Config::default()
        },
    )
    .unwrap()
}

fn single(dir: &Path, name: &str) -> (Etcd, Client) {
    let etcd = Etcd::single(dir, name);
    let c = client(&[&etcd.client_url]);
    (etcd, c)
}

/// Polls `f` every 100 ms until it is true; false after `limit`.
async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while t.elapsed() < limit {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The next update within `limit` (panics otherwise), skipping reconnection notes.
async fn next_update(w: &mut Watch, limit: Duration) -> WatchUpdate {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let u = next_any(w, left).await;
        if !matches!(u, WatchUpdate::Reconnecting { .. }) {
            return u;
        }
    }
}

/// The next update of any kind within `limit`.
async fn next_any(w: &mut Watch, limit: Duration) -> WatchUpdate {
    tokio::time::timeout(limit, w.next())
        .await
        .unwrap_or_else(|_| panic!("no watch update within {limit:?}"))
        .expect("the watch ended")
        .expect("a watch error")
}

/// Collects `n` events (kind, key, value, mod revision) within `limit`.
async fn events(w: &mut Watch, n: usize, limit: Duration) -> Vec<(EventKind, String, String, i64)> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_update(w, left).await {
            WatchUpdate::Events { events, .. } => {
                for e in events {
                    out.push((
                        e.kind,
                        e.kv.key_str().into_owned(),
                        e.kv.value_str().into_owned(),
                        e.mod_revision(),
                    ));
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_round_trip_with_every_option() {
    let tmp = tempfile::tempdir().unwrap();
    let (_etcd, c) = single(tmp.path(), "kv");

    let st = c.status().await.unwrap();
    assert!(st.version.starts_with("3."), "{st:?}");
    assert_ne!(st.leader, 0);

    // absent key
    let r = c.get("/kv/none", GetOptions::new()).await.unwrap();
    assert!(r.kvs.is_empty() && r.count == 0 && r.header.revision >= 1);

    let p1 = c.put("/kv/a", "1", PutOptions::new()).await.unwrap();
    let p2 = c
        .put("/kv/a", "2", PutOptions::new().prev_kv())
        .await
        .unwrap();
    assert_eq!(p2.header.revision, p1.header.revision + 1);
    let prev = p2.prev_kv.unwrap();
    assert_eq!((prev.value_str(), prev.version), ("1".into(), 1));
    // binary keys and values, an empty value
    let bin_key = b"/kv/b\x00\xff".to_vec();
    c.put(bin_key.clone(), vec![0u8, 159, 146, 150], PutOptions::new())
        .await
        .unwrap();
    c.put("/kv/c", "", PutOptions::new()).await.unwrap();
    c.put("/kw/outside", "x", PutOptions::new()).await.unwrap();

    let one = c.get("/kv/a", GetOptions::new()).await.unwrap();
    let kv = one.first().unwrap();
    assert_eq!((kv.value_str(), kv.version), ("2".into(), 2));
    assert_eq!(kv.create_revision, p1.header.revision);
    assert_eq!(kv.mod_revision, p2.header.revision);
    let b = c.get(&bin_key, GetOptions::new()).await.unwrap();
    assert_eq!(b.first().unwrap().value, [0u8, 159, 146, 150]);

    let all = c.get("/kv/", GetOptions::new().prefix()).await.unwrap();
    let keys: Vec<_> = all.kvs.iter().map(|k| k.key.clone()).collect();
    assert_eq!(
        keys,
        [b"/kv/a".to_vec(), bin_key.clone(), b"/kv/c".to_vec()]
    );
    assert_eq!(all.count, 3);
    assert!(!all.more);
    assert_eq!(all.kvs[2].value, b"");

    let limited = c
        .get("/kv/", GetOptions::new().prefix().limit(2))
        .await
        .unwrap();
    assert_eq!(
        (limited.kvs.len(), limited.more, limited.count),
        (2, true, 3)
    );
    let keys_only = c
        .get("/kv/", GetOptions::new().prefix().keys_only())
        .await
        .unwrap();
    assert!(keys_only.kvs.iter().all(|k| k.value.is_empty()));
    assert_eq!(keys_only.kvs.len(), 3);
    let counted = c
        .get("/kv/", GetOptions::new().prefix().count_only())
        .await
        .unwrap();
    assert_eq!((counted.kvs.len(), counted.count), (0, 3));
    let ranged = c
        .get("/kv/a", GetOptions::new().range_end("/kv/c"))
        .await
        .unwrap();
    assert_eq!(ranged.kvs.len(), 2);
    let serial = c
        .get("/kv/a", GetOptions::new().serializable())
        .await
        .unwrap();
    assert_eq!(serial.kvs.len(), 1);

    // the past
    let old = c
        .get("/kv/a", GetOptions::new().revision(p1.header.revision))
        .await
        .unwrap();
    assert_eq!(old.first().unwrap().value_str(), "1");

    // deletes
    let d = c
        .delete("/kv/a", DeleteOptions::new().prev_kv())
        .await
        .unwrap();
    assert_eq!(d.deleted, 1);
    assert_eq!(d.prev_kvs[0].value_str(), "2");
    let d = c
        .delete("/kv/", DeleteOptions::new().prefix())
        .await
        .unwrap();
    assert_eq!((d.deleted, d.prev_kvs.len()), (2, 0));
    assert_eq!(
        c.get("/kv/", GetOptions::new().prefix())
            .await
            .unwrap()
            .count,
        0
    );
    assert_eq!(
        c.get("/kw/", GetOptions::new().prefix())
            .await
            .unwrap()
            .count,
        1
    );

    // compaction: the past before it is gone, with etcd's error
    let now = c.put("/kv/z", "z", PutOptions::new()).await.unwrap();
    c.compact(now.header.revision).await.unwrap();
    let e = c
        .get("/kv/a", GetOptions::new().revision(p1.header.revision))
        .await
        .unwrap_err();
    assert_eq!(e.grpc_code(), Some(code::OUT_OF_RANGE), "{e}");
    assert!(!e.is_transient());
    assert!(e.to_string().contains("compacted"), "{e}");

    // a put on a lease that does not exist
    let e = c
        .put("/kv/l", "x", PutOptions::new().lease(12345))
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("lease not found"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_with_every_compare() {
    let tmp = tempfile::tempdir().unwrap();
    let (_etcd, c) = single(tmp.path(), "txn");
    let lease = c.grant(60).await.unwrap().id;
    let p = c
        .put("/t/k", "v1", PutOptions::new().lease(lease))
        .await
        .unwrap();
    let rev = p.header.revision;
    c.put("/t/k", "v2", PutOptions::new().lease(lease))
        .await
        .unwrap();

    use CompareOp::*;
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::value("/t/k", Equal, "v2"), true),
        (Compare::value("/t/k", Equal, "v1"), false),
        (Compare::value("/t/k", Greater, "v1"), true),
        (Compare::value("/t/k", NotEqual, "v2"), false),
        (Compare::version("/t/k", Equal, 2), true),
        (Compare::version("/t/k", Less, 2), false),
        (Compare::version("/t/none", Equal, 0), true),
        (Compare::create_revision("/t/k", Equal, rev), true),
        (Compare::create_revision("/t/k", Equal, 0), false),
        (Compare::create_revision("/t/none", Equal, 0), true),
        (Compare::mod_revision("/t/k", Equal, rev + 1), true),
        (Compare::mod_revision("/t/k", Less, rev + 1), false),
        (Compare::lease("/t/k", Equal, lease), true),
        (Compare::lease("/t/k", Equal, 0), false),
        (Compare::version("/t/", Greater, 0).with_prefix(), true),
    ];
    for (i, (cmp, want)) in cases.into_iter().enumerate() {
        let desc = format!("{cmp:?}");
        let r = c
            .txn(
                Txn::new()
                    .when([cmp])
                    .and_then([Op::get("/t/k", GetOptions::new())])
                    .or_else([
                        Op::put(format!("/t/fail{i}"), "x", PutOptions::new()),
                        Op::delete(format!("/t/none{i}"), DeleteOptions::new()),
                    ]),
            )
            .await
            .unwrap();
        assert_eq!(r.succeeded, want, "{desc}");
        if want {
            assert!(matches!(&r.responses[..], [OpResponse::Get(g)] if g.kvs[0].value == b"v2"));
        } else {
            assert!(matches!(
                &r.responses[..],
                [OpResponse::Put(_), OpResponse::Delete(d)] if d.deleted == 0
            ));
        }
    }
    // several ops in one revision
    let before = c
        .get("/t/k", GetOptions::new())
        .await
        .unwrap()
        .header
        .revision;
    let r = c
        .txn(Txn::new().and_then([
            Op::put("/t/x", "1", PutOptions::new()),
            Op::put("/t/y", "2", PutOptions::new().prev_kv()),
            Op::get("/t/", GetOptions::new().prefix().keys_only()),
        ]))
        .await
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(r.header.revision, before + 1);
    let listed = r.responses[2].as_get().unwrap();
    let keys: Vec<_> = listed
        .kvs
        .iter()
        .map(|k| k.key_str().into_owned())
        .collect();
    assert!(
        keys.contains(&"/t/x".into()) && keys.contains(&"/t/y".into()),
        "{keys:?}"
    );
    assert_eq!(
        keys.len(),
        1 + 6 + 2,
        "/t/k, six /t/fail*, /t/x, /t/y: {keys:?}"
    );
    // etcd refuses two writes to one key in a txn, as an invalid argument
    let e = c
        .txn(Txn::new().and_then([
            Op::put("/t/x", "1", PutOptions::new()),
            Op::put("/t/x", "2", PutOptions::new()),
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.grpc_code(), Some(code::INVALID_ARGUMENT), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_race_has_exactly_one_winner() {
    let tmp = tempfile::tempdir().unwrap();
    let (_etcd, c) = single(tmp.path(), "cas");

    // 32 tasks create the same key: exactly one succeeds
    let mut tasks = Vec::new();
    for i in 0..32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let r = c
                .txn(
                    Txn::new()
                        .when([Compare::create_revision("/race/k", CompareOp::Equal, 0)])
                        .and_then([Op::put("/race/k", format!("task-{i}"), PutOptions::new())]),
                )
                .await
                .unwrap();
            (i, r.succeeded)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, won) = t.await.unwrap();
        if won {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let v = c.get("/race/k", GetOptions::new()).await.unwrap();
    assert_eq!(
        v.first().unwrap().value_str(),
        format!("task-{}", winners[0])
    );

    // 16 tasks add 10 each to a counter by read + compare-and-swap on mod_revision
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..10 {
                let mut done = false;
                for _ in 0..1000 {
                    let cur = c.get("/race/n", GetOptions::new()).await.unwrap();
                    let (n, rev) = cur.first().map_or((0, 0), |kv| {
                        (kv.value_str().parse::<u64>().unwrap(), kv.mod_revision)
                    });
                    let r = c
                        .txn(
                            Txn::new()
                                .when([Compare::mod_revision("/race/n", CompareOp::Equal, rev)])
                                .and_then([Op::put(
                                    "/race/n",
                                    (n + 1).to_string(),
                                    PutOptions::new(),
                                )]),
                        )
                        .await
                        .unwrap();
                    if r.succeeded {
                        done = true;
                        break;
                    }
                    conflicts += 1;
                }
                assert!(done, "a task lost 1000 times in a row");
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let n = c.get("/race/n", GetOptions::new()).await.unwrap();
    assert_eq!(
        n.first().unwrap().value_str(),
        "160",
        "{conflicts} conflicts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_and_fencing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_etcd, c) = single(tmp.path(), "elect");
    let la = c.grant(60).await.unwrap().id;
    let lb = c.grant(60).await.unwrap().id;
    assert!(c.leader("/engine").await.unwrap().is_none());

    let Campaign::Elected(a) = c.campaign("/engine", "a", la).await.unwrap() else {
        panic!("a should lead")
    };
    let Campaign::Follower(seen) = c.campaign("/engine", "b", lb).await.unwrap() else {
        panic!("b should follow")
    };
    assert_eq!(seen, a);
    assert_eq!((seen.value.as_slice(), seen.lease), (&b"a"[..], la));
    // campaigning again on the same lease keeps the same leadership
    assert_eq!(
        c.campaign("/engine", "a", la).await.unwrap(),
        Campaign::Elected(a.clone())
    );
    assert_eq!(c.leader("/engine").await.unwrap(), Some(a.clone()));

    // a's fenced write lands while it leads
    let w = a.fenced(Txn::new().and_then([Op::put("/sched/u1", "m1", PutOptions::new())]));
    assert!(c.txn(w).await.unwrap().succeeded);

    // a's lease goes: the key goes, b takes over with a new create revision
    c.revoke(la).await.unwrap();
    assert!(c.leader("/engine").await.unwrap().is_none());
    let Campaign::Elected(b) = c.campaign("/engine", "b", lb).await.unwrap() else {
        panic!("b should lead now")
    };
    assert!(b.create_revision > a.create_revision);
    // a, deposed without noticing, cannot write any more, nor resign b's leadership
    let w = a.fenced(Txn::new().and_then([Op::put("/sched/u1", "m2", PutOptions::new())]));
    assert!(!c.txn(w).await.unwrap().succeeded);
    assert!(!c.resign(&a).await.unwrap());
    assert_eq!(
        c.get("/sched/u1", GetOptions::new())
            .await
            .unwrap()
            .first()
            .unwrap()
            .value_str(),
        "m1"
    );
    assert!(c.resign(&b).await.unwrap());
    assert!(c.leader("/engine").await.unwrap().is_none());

    // many candidates at once: one leader
    let mut tasks = Vec::new();
    for i in 0..12 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let lease = c.grant(60).await.unwrap().id;
            matches!(
                c.campaign("/engine2", format!("n{i}"), lease)
                    .await
                    .unwrap(),
                Campaign::Elected(_)
            )
        }));
    }
    let mut elected = 0;
    for t in tasks {
        elected += usize::from(t.await.unwrap());
    }
    assert_eq!(elected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_deletes_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (_etcd, c) = single(tmp.path(), "expiry");
    let g = c.grant(2).await.unwrap();
    assert!(g.ttl >= 2, "{g:?}");
    let t = Instant::now();
    c.put("/l/a", "1", PutOptions::new().lease(g.id))
        .await
        .unwrap();
    c.put("/l/b", "2", PutOptions::new().lease(g.id))
        .await
        .unwrap();
    let ttl = c.time_to_live(g.id, true).await.unwrap();
    assert!(ttl.ttl > 0 && ttl.ttl <= g.ttl, "{ttl:?}");
    assert_eq!(ttl.granted_ttl, g.ttl);
    let mut keys = ttl.keys.clone();
    keys.sort(); // etcd lists them in no particular order
    assert_eq!(keys, [b"/l/a".to_vec(), b"/l/b".to_vec()]);
    assert!(c.leases().await.unwrap().contains(&g.id));

    let gone = eventually(Duration::from_secs(15), || async {
        c.get("/l/", GetOptions::new().prefix())
            .await
            .unwrap()
            .count
            == 0
    })
    .await;
    assert!(gone, "keys outlived their lease");
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(c.time_to_live(g.id, false).await.unwrap().ttl, -1);
    let e = c.revoke(g.id).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(c.keep_alive_once(g.id).await.unwrap().ttl, 0);
    let e = c.keep_alive(g.id).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_keeps_keys_and_reports_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut etcd, c) = single(tmp.path(), "keep");

    let mut kept = c.grant_kept(2).await.unwrap();
    c.put("/k/kept", "1", PutOptions::new().lease(kept.id()))
        .await
        .unwrap();
    let dropped = c.grant_kept(2).await.unwrap();
    c.put("/k/dropped", "1", PutOptions::new().lease(dropped.id()))
        .await
        .unwrap();
    drop(dropped);

    // three TTLs later the kept key is there, the other is gone
    tokio::time::sleep(Duration::from_secs(6)).await;
    let r = c.get("/k/", GetOptions::new().prefix()).await.unwrap();
    let keys: Vec<_> = r.kvs.iter().map(|k| k.key_str().into_owned()).collect();
    assert_eq!(keys, ["/k/kept"]);
    assert!(matches!(kept.status(), LeaseStatus::Alive { ttl: 2, .. }));

    // someone else revokes it: the keeper says so within a refresh interval
    let mut rx = kept.subscribe();
    c.revoke(kept.id()).await.unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(3), kept.lost())
        .await
        .expect("loss not reported within 3 s");
    assert_eq!(lost, LeaseLost::NotFound);
    assert_eq!(
        *rx.borrow_and_update(),
        LeaseStatus::Lost(LeaseLost::NotFound)
    );

    // revoke through the keeper: the key goes at once
    let k2 = c.grant_kept(30).await.unwrap();
    c.put("/k/k2", "1", PutOptions::new().lease(k2.id()))
        .await
        .unwrap();
    k2.revoke().await.unwrap();
    assert_eq!(c.get("/k/k2", GetOptions::new()).await.unwrap().count, 0);

    // etcd gone: no refresh can be confirmed, the keeper gives the lease up when it would expire
    let mut k3 = c.grant_kept(2).await.unwrap();
    let LeaseStatus::Alive { expires, .. } = k3.status() else {
        panic!("{:?}", k3.status())
    };
    etcd.kill();
    let why = tokio::time::timeout(Duration::from_secs(5), k3.lost())
        .await
        .expect("expiry not reported within 5 s");
    let now = tokio::time::Instant::now();
    assert!(
        now >= expires,
        "reported before the lease could have expired"
    );
    assert!(
        now - expires < Duration::from_secs(1),
        "{:?} late",
        now - expires
    );
    match why {
        LeaseLost::Expired(e) => assert!(e.contains("cannot connect"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_changes_in_order_with_prev_kv() {
    let tmp = tempfile::tempdir().unwrap();
    let (_etcd, c) = single(tmp.path(), "watch");
    c.put("/w/before", "0", PutOptions::new()).await.unwrap();
    let mut w = c
        .watch("/w/", WatchOptions::new().prefix().prev_kv())
        .await
        .unwrap();
    c.put("/w/a", "1", PutOptions::new()).await.unwrap();
    c.put("/w/b", "2", PutOptions::new()).await.unwrap();
    c.put("/w/a", "3", PutOptions::new()).await.unwrap();
    c.put("/x/outside", "-", PutOptions::new()).await.unwrap();
    c.delete("/w/a", DeleteOptions::new()).await.unwrap();
    c.delete("/w/", DeleteOptions::new().prefix())
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut prevs = Vec::new();
    while seen.len() < 6 {
        match next_update(&mut w, Duration::from_secs(10)).await {
            WatchUpdate::Events { events, header } => {
                for e in events {
                    assert!(header.revision >= e.mod_revision());
                    prevs.push(e.prev_kv.as_ref().map(|p| p.value_str().into_owned()));
                    seen.push((
                        e.kind,
                        e.kv.key_str().into_owned(),
                        e.kv.value_str().into_owned(),
                    ));
                }
            }
            other => panic!("{other:?}"),
        }
    }
    use EventKind::*;
    let want = [
        (Put, "/w/a", "1"),
        (Put, "/w/b", "2"),
        (Put, "/w/a", "3"),
        (Delete, "/w/a", ""),
        (Delete, "/w/b", ""),
        (Delete, "/w/before", ""),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(k, key, v)| (*k, key.to_string(), v.to_string()))
        .collect();
    assert_eq!(seen, want);
    let prevs: Vec<_> = prevs.iter().map(|p| p.as_deref()).collect();
    assert_eq!(
        prevs,
        [None, None, Some("1"), Some("3"), Some("2"), Some("0")]
    );

    // a watch from a past revision replays history; a single-key watch sees only its key
    let first = c
        .get("/w/none", GetOptions::new())
        .await
        .unwrap()
        .header
        .revision;
    let mut k = c
        .watch("/w/b", WatchOptions::new().start_revision(1))
        .await
        .unwrap();
    let got = events(&mut k, 2, Duration::from_secs(10)).await;
    assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), [Put, Delete]);
    assert!(got[1].3 <= first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_the_member_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut etcd, c) = single(tmp.path(), "restart");
    let mut w = c.watch("/r/", WatchOptions::new().prefix()).await.unwrap();
    // a lease kept across the restart: etcd renews leases when it comes back
    let kept = c.grant_kept(10).await.unwrap();
    c.put("/lease/kept", "1", PutOptions::new().lease(kept.id()))
        .await
        .unwrap();
    for i in 0..5 {
        c.put(format!("/r/{i}"), format!("v{i}"), PutOptions::new())
            .await
            .unwrap();
    }
    let got = events(&mut w, 5, Duration::from_secs(10)).await;
    let last_before = got[4].3;

    etcd.restart(tmp.path());
    // the watch noticed, and says where it resumes
    match next_any(&mut w, Duration::from_secs(10)).await {
        WatchUpdate::Reconnecting {
            resume_revision,
            error,
        } => {
            assert_eq!(resume_revision, last_before + 1);
            assert!(error.is_transient(), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // writes right after the restart, before the watch is back: replayed from history
    let mut revs = Vec::new();
    for i in 5..10 {
        let p = c
            .put(format!("/r/{i}"), format!("v{i}"), PutOptions::new())
            .await
            .unwrap();
        revs.push(p.header.revision);
    }
    let got2 = events(&mut w, 5, Duration::from_secs(30)).await;
    let keys: Vec<_> = got2.iter().map(|e| e.1.clone()).collect();
    assert_eq!(keys, ["/r/5", "/r/6", "/r/7", "/r/8", "/r/9"]);
    assert_eq!(got2.iter().map(|e| e.3).collect::<Vec<_>>(), revs);
    assert!(got2[0].3 > last_before);
    // nothing repeated, nothing more
    assert!(
        tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match w.next().await {
                    Some(Ok(WatchUpdate::Reconnecting { .. })) => continue,
                    other => return other,
                }
            }
        })
        .await
        .is_err(),
        "an extra update"
    );
    // the kept lease survived
    assert!(matches!(kept.status(), LeaseStatus::Alive { .. }));
    assert_eq!(
        c.get("/lease/kept", GetOptions::new()).await.unwrap().count,
        1
    );
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_is_an_explicit_event() {
    let tmp = tempfile::tempdir().unwrap();
    let (_etcd, c) = single(tmp.path(), "compact");
    for i in 0..5 {
        c.put("/c/k", i.to_string(), PutOptions::new())
            .await
            .unwrap();
    }
    let now = c
        .get("/c/k", GetOptions::new())
        .await
        .unwrap()
        .header
        .revision;
    c.compact(now).await.unwrap();
    let mut w = c
        .watch("/c/", WatchOptions::new().prefix().start_revision(2))
        .await
        .unwrap();
    match next_update(&mut w, Duration::from_secs(10)).await {
        WatchUpdate::Compacted { compact_revision } => assert_eq!(compact_revision, now),
        other => panic!("{other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .is_none(),
        "the watch goes on after compaction"
    );
    // the caller lists again and watches from there
    let list = c.get("/c/", GetOptions::new().prefix()).await.unwrap();
    let mut w = c
        .watch(
            "/c/",
            WatchOptions::new()
                .prefix()
                .start_revision(list.header.revision + 1),
        )
        .await
        .unwrap();
    c.put("/c/k", "after", PutOptions::new()).await.unwrap();
    let got = events(&mut w, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].2, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_past_a_dead_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(tmp.path(), "failover");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let c = client(&[&dead, &etcd.client_url]);
    assert_eq!(c.current_endpoint(), dead);
    c.put("/f/k", "v", PutOptions::new()).await.unwrap();
    assert_eq!(c.current_endpoint(), etcd.client_url);
    assert_eq!(c.get("/f/k", GetOptions::new()).await.unwrap().count, 1);

    // every endpoint dead: a connection error naming the last one, quickly
    let c = client(&[&dead, &format!("http://127.0.0.1:{}", free_port())]);
    let t = Instant::now();
    let e = c.get("/f/k", GetOptions::new()).await.unwrap_err();
    assert!(
        matches!(e, Error::Connect { .. }) && e.is_transient(),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    let e = c.watch("/f/", WatchOptions::new()).await.unwrap_err();
    assert!(e.is_connect(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_one_dies_requests_and_watches_move_on() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["m0", "m1", "m2"];
    let urls: Vec<(String, String)> = names
        .iter()
        .map(|_| {
            (
                format!("http://127.0.0.1:{}", free_port()),
                format!("http://127.0.0.1:{}", free_port()),
            )
        })
        .collect();
    let cluster = names
        .iter()
        .zip(&urls)
        .map(|(n, (_, peer))| format!("{n}={peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<Etcd> = names
        .iter()
        .zip(&urls)
        .map(|(n, (client, peer))| {
            Etcd::start_at(
                tmp.path(),
                n,
                n,
                client,
                peer,
                &[
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-token",
                    "t3",
                ],
            )
        })
        .collect();
    for m in &mut members {
        m.wait_healthy(Duration::from_secs(60));
    }
    let eps: Vec<&str> = urls.iter().map(|(c, _)| c.as_str()).collect();
    let c = client(&eps);
    let mut w = c.watch("/m/", WatchOptions::new().prefix()).await.unwrap();
    c.put("/m/1", "a", PutOptions::new()).await.unwrap();
    assert_eq!(
        events(&mut w, 1, Duration::from_secs(10)).await[0].1,
        "/m/1"
    );
    assert_eq!(c.current_endpoint(), eps[0]);

    // the member everything talks to dies
    members[0].kill();
    let put = {
        let mut r = None;
        for _ in 0..50 {
            match c.put("/m/2", "b", PutOptions::new()).await {
                Ok(p) => {
                    r = Some(p);
                    break;
                }
                Err(e) => {
                    assert!(e.is_transient(), "{e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        r.expect("no put through the two live members")
    };
    assert_ne!(c.current_endpoint(), eps[0]);
    let got = events(&mut w, 1, Duration::from_secs(30)).await;
    assert_eq!((got[0].1.as_str(), got[0].3), ("/m/2", put.header.revision));
    let keys: BTreeSet<_> = c
        .get("/m/", GetOptions::new().prefix())
        .await
        .unwrap()
        .kvs
        .iter()
        .map(|k| k.key_str().into_owned())
        .collect();
    assert_eq!(keys.len(), 2);

    // a watch on m1 alone; then m2 dies too: m1 has no quorum, hence no leader, and ends the
    // watch rather than leaving it silent, and refuses requests at once
    let solo = client(&[eps[1]]);
    let mut w1 = solo
        .watch("/m/", WatchOptions::new().prefix())
        .await
        .unwrap();
    members[2].kill();
    let t = Instant::now();
    let note = tokio::time::timeout(Duration::from_secs(30), w1.next())
        .await
        .expect("a watch on a member without a leader stayed silent for 30 s")
        .unwrap()
        .unwrap();
    let WatchUpdate::Reconnecting { error, .. } = note else {
        panic!("{note:?}")
    };
    eprintln!(
        "watch on a leaderless member ended after {:?}: {error}",
        t.elapsed()
    );
    assert!(error.is_transient(), "{error}");
    let e = solo
        .get("/m/", GetOptions::new().prefix().serializable())
        .await
        .unwrap_err();
    assert_eq!(e.grpc_code(), Some(code::UNAVAILABLE), "{e}");
    assert!(e.to_string().contains("no leader"), "{e}");
    drop(members);
}
