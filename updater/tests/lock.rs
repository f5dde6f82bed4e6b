//! The reboot lock against a real etcd 3.4 (Debian's etcd-server) on 127.0.0.1, through the
//! `cairn-update lock` command line: a lock of one slot lets one machine in at a time; twelve
//! machines racing for two slots get exactly two; unlocking (or breaking another machine's slot)
//! lets the next one in; the key holds locksmith's JSON.

use std::process::{Command, Output};

use cairn_testkit::{free_port, Etcd};

fn cli(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn-update"))
        .args(["lock", "--etcd", endpoint])
        .args(args)
        .output()
        .unwrap()
}

fn ok(endpoint: &str, args: &[&str]) -> String {
    let out = cli(endpoint, args);
    assert!(out.status.success(), "cairn-update lock {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn one_machine_at_a_time_through_etcd() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(tmp.path(), "lock");
    let ep = etcd.client_url.clone();

    // a fresh lock: one slot, nobody in
    assert_eq!(ok(&ep, &["status"]), "available: 1/1\nholders: none\n");
    ok(&ep, &["lock", "node-a"]);
    ok(&ep, &["lock", "node-a"]); // taking it again is no change
    let busy = cli(&ep, &["lock", "node-b"]);
    assert!(!busy.status.success());
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(
        err.contains("taking the reboot lock for node-b") && err.contains("held by node-a"),
        "{err}"
    );
    assert_eq!(ok(&ep, &["unlock", "node-a"]), "released node-a\n");
    ok(&ep, &["lock", "node-b"]);
    assert_eq!(ok(&ep, &["status"]), "available: 0/1\nholders: node-b\n");
    // an operator breaks node-b's slot
    assert_eq!(ok(&ep, &["unlock", "node-b"]), "released node-b\n");
    assert_eq!(ok(&ep, &["unlock", "node-b"]), "node-b held no slot\n");

    // twelve machines race for two slots: exactly two get one
    ok(&ep, &["set-max", "2"]);
    let racers: Vec<_> = (0..12)
        .map(|i| {
            let ep = ep.clone();
            std::thread::spawn(move || cli(&ep, &["lock", &format!("racer-{i}")]).status.success())
        })
        .collect();
    let won = racers
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(won, 2);
    let status = ok(&ep, &["status"]);
    assert!(
        status.starts_with("available: 0/2\nholders: racer-"),
        "{status}"
    );
    assert_eq!(status.matches("racer-").count(), 2, "{status}");

    // dead etcd: a clear error naming the endpoint
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = cli(&dead, &["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&dead) && err.contains("reading the reboot lock"),
        "{err}"
    );
}
