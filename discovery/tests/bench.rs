//! Latency of the discovery server on loopback (ignored; run by `discovery/bench/latency.sh`):
//! 1000 registrations from 100 concurrent clients, and 1000 concurrent long-polls woken by changes.

mod common;

use std::time::{Duration, Instant};

use cairn_discovery::Discovery;
use common::{call, finish, start};
use hyper::{Method, StatusCode};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn report(what: &str, v: &mut [Duration]) {
    let p50 = pct(v, 0.50);
    let p99 = pct(v, 0.99);
    let max = *v.iter().max().unwrap();
    println!(
        "{what}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run discovery/bench/latency.sh"]
async fn bench_registrations_and_long_polls() {
    let dir = tempfile::tempdir().unwrap();
    let d = Discovery::open(dir.path(), None).unwrap();
    let addr = common::serve(d.clone(), 0).await;
    let base = format!("http://{addr}/discovery");
    println!(
        "state dir {} (file store: fsync per change)",
        dir.path().display()
    );

    // One client alone: what a single etcd sees.
    let token = d.create(100).unwrap();
    let c = common::client();
    let mut solo = Vec::new();
    for m in 0..100 {
        let s = Instant::now();
        let a = call(
            &c,
            Method::PUT,
            &format!("{base}/{token}/{m:016x}?prevExist=false"),
            Some("value=e%3Dhttp%3A%2F%2Fx"),
        )
        .await;
        solo.push(s.elapsed());
        assert_eq!(a.status, StatusCode::CREATED);
    }
    report("100 registrations, one client after the other", &mut solo);

    // 1000 registrations: 100 clients, each registering 10 members of its own token.
    let tokens: Vec<String> = (0..100).map(|_| d.create(10).unwrap()).collect();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (n, token) in tokens.iter().enumerate() {
        let c = common::client();
        let base = base.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for m in 0..10 {
                let url = format!("{base}/{token}/{n:04x}{m:012x}?prevExist=false");
                let s = Instant::now();
                let a = call(
                    &c,
                    Method::PUT,
                    &url,
                    Some("value=e%3Dhttp%3A%2F%2F127.0.0.1%3A2380"),
                )
                .await;
                lat.push(s.elapsed());
                assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let total = t.elapsed();
    report("1000 registrations (100 concurrent clients)", &mut lat);
    println!(
        "  total {:.2} s, {:.0} registrations/s",
        total.as_secs_f64(),
        1000.0 / total.as_secs_f64()
    );

    // 1000 concurrent long-polls: 10 on each of 100 fresh tokens; one registration per token wakes its 10.
    let tokens: Vec<String> = (0..100).map(|_| d.create(3).unwrap()).collect();
    let c = common::client();
    let since = d.index() + 1;
    let mut waits = Vec::new();
    let t = Instant::now();
    for token in &tokens {
        for _ in 0..10 {
            let url = format!("{base}/{token}?wait=true&recursive=true&waitIndex={since}");
            let c = c.clone();
            waits.push(tokio::spawn(async move {
                let head = start(&c, Method::GET, &url, None).await;
                let headed = Instant::now();
                let a = finish(head).await;
                (headed, Instant::now(), a)
            }));
        }
    }
    // All 1000 are waiting once the server has 1000 open waits; give the headers time to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let setup = t.elapsed();
    let mut sent = std::collections::HashMap::new();
    for token in &tokens {
        sent.insert(token.clone(), Instant::now());
        let a = call(
            &c,
            Method::PUT,
            &format!("{base}/{token}/m?prevExist=false"),
            Some("value=a%3Dhttp%3A%2F%2Fx"),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED);
    }
    let mut wake = Vec::new();
    let mut head_lat = Vec::new();
    for w in waits {
        let (headed, done, a) = w.await.unwrap();
        let v = a.json();
        let token = v["node"]["key"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(3)
            .unwrap()
            .to_string();
        wake.push(done - sent[&token]);
        head_lat.push(headed - t);
    }
    report(
        "1000 concurrent long-polls: change -> wait answered",
        &mut wake,
    );
    println!(
        "  (1000 waits opened in {:.2} s including a 2 s pause)",
        setup.as_secs_f64()
    );

    // Fan-out: 1000 waits on one token, one change.
    let token = d.create(3).unwrap();
    let since = d.index() + 1;
    let mut waits = Vec::new();
    for _ in 0..1000 {
        let url = format!("{base}/{token}?wait=true&recursive=true&waitIndex={since}");
        let c = c.clone();
        waits.push(tokio::spawn(async move {
            let head = start(&c, Method::GET, &url, None).await;
            finish(head).await;
            Instant::now()
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = Instant::now();
    call(
        &c,
        Method::PUT,
        &format!("{base}/{token}/m?prevExist=false"),
        Some("value=a%3Dhttp%3A%2F%2Fx"),
    )
    .await;
    let mut fan = Vec::new();
    for w in waits {
        fan.push(w.await.unwrap() - s);
    }
    report(
        "1000 long-polls on one token, one change: change -> wait answered",
        &mut fan,
    );
}
