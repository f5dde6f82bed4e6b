//! The lifecycle records in a real etcd (the `etcd` binary, one member on
//! 127.0.0.1 with free ports): they survive a new server on the same etcd;
//! a second server is refused while the first holds the records, and a
//! server that lost them writes nothing over its successor's; bad and
//! hostile values are set aside, named by their key.

use std::sync::Arc;

use cairn_etcd::{Client, DeleteOptions, GetOptions, PutOptions};
use cairn_formats::lifecycle::{Event, Report};
use cairn_lifecycle::rollout::{Members, WavePlan};
use cairn_lifecycle::{
    Candidate, Decision, EtcdStore, Lifecycle, Limits, Machine, Plan, Store, StoreError,
};
use cairn_testkit::Etcd;

fn spec(etcd: &Etcd, prefix: &str) -> String {
    format!(
        "etcd://{}{prefix}",
        etcd.client_url.trim_start_matches("http://")
    )
}

/// Runs `f` against etcd on a runtime of the test's own.
fn raw<T>(etcd: &Etcd, f: impl AsyncFnOnce(Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = Client::new([etcd.client_url.as_str()]).unwrap();
    rt.block_on(f(c))
}

fn plan() -> Plan {
    Plan {
        channel: "lab".into(),
        version: "2.0.0".into(),
        waves: vec![
            WavePlan {
                name: "canary".into(),
                members: Members::Groups(vec!["canary".into()]),
                soak_secs: 600,
            },
            WavePlan {
                name: "rest".into(),
                members: Members::Percent(100),
                soak_secs: 0,
            },
        ],
        max_failures: 0,
    }
}

fn open(spec: &str, holder: &str) -> Lifecycle {
    let store = Arc::new(EtcdStore::open(spec, holder).unwrap());
    let (l, set_aside) = Lifecycle::open(store, Limits::default()).unwrap();
    assert!(set_aside.is_empty(), "{set_aside:?}");
    l
}

const ID: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn records_survive_a_new_server_and_two_servers_do_not_share_them() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), "lc1");
    let spec = spec(&etcd, "/site");
    let mut l = open(&spec, "server one");
    l.apply_plan(plan(), 10).unwrap();
    for mac in ["52:54:00:00:0d:01", "52:54:00:00:0d:02"] {
        l.seen(mac, 10).unwrap();
    }
    let canary = Candidate {
        mac: "52:54:00:00:0d:01",
        seed: 1,
        group: Some("canary"),
    };
    assert_eq!(
        l.offer("lab", &canary, 20).unwrap(),
        Some(Decision::Offer { wave: 0 })
    );
    let pause = l
        .report(
            &Report {
                mac: canary.mac.into(),
                machine_id: Some(ID.into()),
                event: Event::RolledBack {
                    version: "2.0.0".into(),
                    to_version: "1.0.0".into(),
                    reason: "cairn-app.service failed".into(),
                },
            },
            Some("canary"),
            30,
        )
        .unwrap()
        .expect("paused");
    assert!(
        pause.reason.contains("52:54:00:00:0d:01"),
        "{}",
        pause.reason
    );

    // the keys, as documented
    let keys = raw(&etcd, async |c| {
        c.get("/site/lifecycle/", GetOptions::new().prefix().keys_only())
            .await
            .unwrap()
            .kvs
            .iter()
            .map(|kv| kv.key_str().into_owned())
            .collect::<Vec<_>>()
    });
    assert_eq!(
        keys,
        [
            "/site/lifecycle/lock",
            "/site/lifecycle/machines/52:54:00:00:0d:01",
            "/site/lifecycle/machines/52:54:00:00:0d:02",
            "/site/lifecycle/rollouts/lab",
        ]
    );

    // a second server on the same etcd and prefix is refused, naming the holder
    let e = EtcdStore::open(&spec, "server two").unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("/site/lifecycle/lock") && e.contains("server one"),
        "{e}"
    );
    // another prefix is other records
    drop(open(&spec.replace("/site", "/other"), "server three"));

    // the first stops: the next opens at once and finds everything
    drop(l);
    let mut l = open(&spec, "server two");
    let r = l.rollout("lab").unwrap();
    assert!(r.paused.is_some());
    assert_eq!(r.status()[0].failures, 1);
    let m = l.machine(canary.mac).unwrap();
    assert_eq!(m.machine_id.as_deref(), Some(ID));
    assert!(m.member_of(r).is_some());
    assert!(matches!(
        l.offer("lab", &canary, 40).unwrap(),
        Some(Decision::Hold { reason }) if reason.contains("failed on this machine")
    ));
    drop(l);
}

#[test]
fn a_server_that_lost_the_records_writes_nothing_over_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), "lc2");
    let spec = spec(&etcd, "");
    let one = EtcdStore::open(&spec, "one").unwrap();
    one.save_machine(&Machine::new("52:54:00:00:0d:01", 1))
        .unwrap();
    // etcd forgets the first server's lease (as when it did not hear from
    // it for the TTL): the lock goes with it, and a second server takes it
    let lease = one.lease();
    raw(&etcd, async |c| {
        c.revoke(lease).await.unwrap();
    });
    let two = EtcdStore::open(&spec, "two").unwrap();
    two.save_machine(&Machine::new("52:54:00:00:0d:02", 2))
        .unwrap();
    let e = one
        .save_machine(&Machine::new("52:54:00:00:0d:03", 3))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/cairn/lifecycle/machines/52:54:00:00:0d:03")
            && e.contains("no longer this server's"),
        "{e}"
    );
    assert!(one.remove_machine("52:54:00:00:0d:02").is_err());
    drop(one);
    let l = two.load().unwrap();
    let macs: Vec<&str> = l.machines.iter().map(|m| m.mac.as_str()).collect();
    assert_eq!(macs, ["52:54:00:00:0d:01", "52:54:00:00:0d:02"]);
    // the first's drop let go of nothing of the second's
    let e = EtcdStore::open(&spec, "three").unwrap_err().to_string();
    assert!(e.contains("held by two"), "{e}");
}

#[test]
fn bad_and_hostile_values_are_set_aside_naming_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), "lc3");
    let spec = spec(&etcd, "/x");
    {
        let s = EtcdStore::open(&spec, "writer").unwrap();
        s.save_machine(&Machine::new("52:54:00:00:0d:01", 1))
            .unwrap();
    }
    let good = serde_json::to_vec(&Machine::new("52:54:00:00:0d:09", 1)).unwrap();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "/x/lifecycle/machines/52:54:00:00:0d:02",
            b"{\"mac\": 1".to_vec(),
        ),
        // a record under another machine's key
        ("/x/lifecycle/machines/52:54:00:00:0d:03", good.clone()),
        // a key that is no name
        ("/x/lifecycle/machines/../../etc", good.clone()),
        ("/x/lifecycle/machines/a/b", good),
        // larger than any record
        (
            "/x/lifecycle/machines/52:54:00:00:0d:04",
            vec![b' '; 1_100_000],
        ),
        ("/x/lifecycle/rollouts/lab", b"[]".to_vec()),
        // a key that is not UTF-8 (the byte 0xff)
        ("/x/lifecycle/machines/\u{fffd}", b"{}".to_vec()),
    ];
    raw(&etcd, async |c| {
        for (k, v) in &bad {
            // U+FFFD stands for a byte that is not UTF-8 (as the key is reported)
            let key = match k.strip_suffix('\u{fffd}') {
                Some(k) => [k.as_bytes(), b"\xff"].concat(),
                None => k.as_bytes().to_vec(),
            };
            c.put(key, v.clone(), PutOptions::new()).await.unwrap();
        }
    });
    let store = Arc::new(EtcdStore::open(&spec, "reader").unwrap());
    let (l, set_aside) = Lifecycle::open(store.clone(), Limits::default()).unwrap();
    let macs: Vec<&str> = l.machines().map(|m| m.mac.as_str()).collect();
    assert_eq!(macs, ["52:54:00:00:0d:01"]);
    assert_eq!(set_aside.len(), bad.len(), "{set_aside:?}");
    for (k, _) in &bad {
        let s = set_aside
            .iter()
            .find(|s| s.path.to_str() == Some(*k))
            .unwrap_or_else(|| panic!("{k} not set aside: {set_aside:?}"));
        assert!(
            s.moved_to
                .to_string_lossy()
                .starts_with("/x/lifecycle/corrupt/"),
            "{s:?}"
        );
        assert!(!s.error.is_empty());
    }
    let why = |k: &str| {
        set_aside
            .iter()
            .find(|s| s.path.to_str() == Some(k))
            .unwrap()
            .error
            .clone()
    };
    assert!(why("/x/lifecycle/machines/52:54:00:00:0d:03").contains("52:54:00:00:0d:09"));
    assert!(why("/x/lifecycle/machines/52:54:00:00:0d:04").contains("bytes"));
    assert!(why("/x/lifecycle/machines/../../etc").contains("not a name"));
    // kept for a look, out of the records' way: nothing set aside twice
    let (aside, left) = raw(&etcd, async |c| {
        let aside = c
            .get(
                "/x/lifecycle/corrupt/",
                GetOptions::new().prefix().count_only(),
            )
            .await
            .unwrap()
            .count;
        c.delete("/x/lifecycle/corrupt/", DeleteOptions::new().prefix())
            .await
            .unwrap();
        let left = c
            .get(
                "/x/lifecycle/machines/",
                GetOptions::new().prefix().count_only(),
            )
            .await
            .unwrap()
            .count;
        (aside, left)
    });
    assert_eq!((aside, left), (bad.len() as i64, 1));
    drop(l);
    drop(store);
    let store = Arc::new(EtcdStore::open(&spec, "again").unwrap());
    let (_, set_aside) = Lifecycle::open(store, Limits::default()).unwrap();
    assert!(set_aside.is_empty(), "{set_aside:?}");
}
