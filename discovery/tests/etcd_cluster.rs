//! Real etcd 3.4 processes (Debian's etcd-server and etcd-client) bootstrap through the discovery
//! service on 127.0.0.1: three form one cluster across a restart of the server, a fourth is turned away.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use cairn_testkit::Etcd;
use common::{free_port, TestServer};

const ETCDCTL: &str = "/usr/bin/etcdctl";

fn require_tools() {
    cairn_testkit::require(cairn_testkit::etcd::ETCD, "etcd-server");
    cairn_testkit::require(ETCDCTL, "etcd-client");
}

fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints, "--command-timeout", "5s"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {ETCDCTL}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn logs(es: &[&Etcd]) -> String {
    es.iter()
        .map(|e| format!("--- {} ---\n{}", e.name, e.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_members(server: &TestServer, token: &str, n: usize, es: &[&Etcd]) {
    let t = Instant::now();
    while server.discovery.token(token).unwrap().members().len() < n {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "fewer than {n} registrations after 60 s\n{}",
            logs(es)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_etcds_form_a_cluster_across_a_server_restart_and_a_fourth_is_turned_away() {
    require_tools();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let port = free_port();
    let server = TestServer::start(&state, port, Duration::from_secs(30));
    let token = server.discovery.create(3).unwrap();
    let url = format!("{}/{token}", server.base());

    let e1 = Etcd::with_discovery(tmp.path(), "e1", &url, &[]);
    let e2 = Etcd::with_discovery(tmp.path(), "e2", &url, &[]);
    wait_members(&server, &token, 2, &[&e1, &e2]);
    // Both now wait (long-poll) for the third; restart the server under them.
    let (mut e1, mut e2) = (e1, e2);
    for e in [&mut e1, &mut e2] {
        assert!(
            e.wait_log(
                "found 2 peer(s), waiting for 1 more",
                Duration::from_secs(30)
            ),
            "{} is not waiting for the third member:\n{}",
            e.name,
            e.log()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = server.discovery.token(&token).unwrap();
    let index_before = server.discovery.index();
    server.stop();
    std::thread::sleep(Duration::from_millis(300));
    // The restarted server ends waits after 1 s with an empty body; etcd's client must ask again.
    let server = TestServer::start(&state, port, Duration::from_secs(1));
    assert_eq!(
        server.discovery.token(&token).unwrap(),
        before,
        "the token survives the restart"
    );
    assert_eq!(server.discovery.index(), index_before);

    // e1 and e2 retry 2 s after losing their wait, then wait again: let such waits time out.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        server.discovery.waits_timed_out() >= 2,
        "e1 and e2 each had a wait end empty: {}",
        server.discovery.waits_timed_out()
    );
    let e3 = Etcd::with_discovery(tmp.path(), "e3", &url, &[]);
    let e3_started = Instant::now();
    wait_members(&server, &token, 3, &[&e1, &e2, &e3]);
    let all = [&e1, &e2, &e3];
    let endpoints = all
        .iter()
        .map(|e| e.client_url.as_str())
        .collect::<Vec<_>>()
        .join(",");

    let t = Instant::now();
    loop {
        let (ok, out) = etcdctl(&endpoints, &["member", "list"]);
        let started = out.lines().filter(|l| l.contains(", started, ")).count();
        if ok && started == 3 {
            eprintln!(
                "three started members {:?} after e3 started",
                e3_started.elapsed()
            );
            for e in all {
                assert!(out.contains(&format!(", started, {}, ", e.name)), "{out}");
            }
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "no cluster of three started members after 90 s: {out}\n{}",
            logs(&all)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for e in [&e1, &e2] {
        // The wait broke with the restart and the client asked again (etcd's retry path).
        assert!(
            e.log()
                .contains("waiting for other nodes: error connecting to"),
            "{}",
            e.log()
        );
    }
    let (ok, out) = etcdctl(&e1.client_url, &["put", "cairn/discovery", "formed"]);
    assert!(ok, "put through e1: {out}");
    let (ok, out) = etcdctl(
        &e3.client_url,
        &["get", "cairn/discovery", "--print-value-only"],
    );
    assert!(ok && out.trim() == "formed", "get through e3: {out}");
    let (ok, out) = etcdctl(&e2.client_url, &["endpoint", "health", "--cluster"]);
    assert!(ok, "cluster health: {out}");

    // A fourth member with the same token: etcd 3.4 checks before registering and stops with
    // "discovery: cluster is full" (with --discovery-fallback=exit) ...
    eprintln!("cluster checked at {:?}", t0.elapsed());
    let mut e4 = Etcd::with_discovery(tmp.path(), "e4", &url, &["--discovery-fallback", "exit"]);
    let status = e4.wait_exit(Duration::from_secs(60));
    let log4 = e4.log();
    assert!(
        status.is_some_and(|s| !s.success()),
        "e4 did not fail: {status:?}\n{log4}"
    );
    assert!(log4.contains("discovery: cluster is full"), "{log4}");
    for l in log4.lines().filter(|l| l.contains("cluster is full")) {
        eprintln!("e4: {l}");
    }
    // ... or, by default (--discovery-fallback=proxy), becomes a proxy.
    eprintln!("e4 turned away at {:?}", t0.elapsed());
    let mut e5 = Etcd::with_discovery(tmp.path(), "e5", &url, &[]);
    assert!(
        e5.wait_log(
            "discovery cluster full, falling back to proxy",
            Duration::from_secs(60)
        ),
        "{}",
        e5.log()
    );
    eprintln!("e5 fell back to proxy at {:?}", t0.elapsed());
    let rec = server.discovery.token(&token).unwrap();
    assert_eq!(
        rec.members().len(),
        3,
        "neither e4 nor e5 registered: {:?}",
        rec.members()
    );
    let (ok, out) = etcdctl(&endpoints, &["member", "list"]);
    assert!(ok && out.lines().count() == 3, "{out}");

    // e1 loses its data and comes back with the same name and peer URL, hence the same member
    // id: its registration is refused with 412 (105), which etcd reports as a duplicate id.
    let (client, peer) = (e1.client_url.clone(), e1.peer_url.clone());
    drop(e1);
    let mut again = Etcd::start_at(
        tmp.path(),
        "e1-again",
        "e1",
        &client,
        &peer,
        &["--discovery", &url],
    );
    let status = again.wait_exit(Duration::from_secs(60));
    let log = again.log();
    assert!(
        status.is_some_and(|s| !s.success()),
        "e1-again did not fail: {status:?}\n{log}"
    );
    assert!(
        log.contains("member \"e1\" has previously registered with discovery service token"),
        "{log}"
    );
    eprintln!("e1 again refused at {:?}", t0.elapsed());
}
