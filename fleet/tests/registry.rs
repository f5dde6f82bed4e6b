//! The registry against a real etcd 3.4 (Debian's etcd-server) on
//! 127.0.0.1: submit only where no unit exists, desired states by
//! compare-and-swap (a lost race is reported, not overwritten), presence
//! and state reports gone with the agent's lease in one step, schedule
//! writes fenced by the engine's leadership (a deposed leader writes
//! nothing), large writes cut into transactions etcd accepts, reads paged
//! at one revision, and bad records set aside rather than failing a read.

use std::time::Duration;

use cairn_etcd::{Campaign, Client, Config, Leader, PutOptions};
use cairn_fleet::model::{MachineRecord, ScheduleEntry, UnitRecord, UnitStateReport};
use cairn_fleet::registry::{Keys, Registry, RegistryError, ScheduleChange, MAX_UNIT_TEXT};
use cairn_fleet::unit::JobState;
use cairn_testkit::Etcd;

fn registry(etcd: &Etcd) -> Registry {
    let c = Client::with_config(
        [etcd.client_url.as_str()],
        Config {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            ..Config::default()
        },
    )
    .unwrap();
    Registry::new(c, Keys::new("/test/fleet/").unwrap())
}

fn unit(name: &str, state: JobState) -> UnitRecord {
    UnitRecord::submit(
        name,
        format!("[Service]\nExecStart=/bin/sleep 1000\n# {name}\n"),
        state,
    )
    .unwrap()
}

fn machine(id: &str) -> MachineRecord {
    MachineRecord {
        id: id.into(),
        public_ip: "127.0.0.1".into(),
        metadata: Default::default(),
        version: "test".into(),
    }
}

async fn lead(r: &Registry) -> Leader {
    let lease = r.etcd().grant(30).await.unwrap().id;
    match r
        .etcd()
        .campaign(r.keys().leader(), "engine-test", lease)
        .await
        .unwrap()
    {
        Campaign::Elected(l) => l,
        Campaign::Follower(l) => panic!("not elected: {l:?}"),
    }
}

#[tokio::test]
async fn units_are_created_once_and_changed_by_compare_and_swap() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), "reg-units");
    let r = registry(&etcd);
    let a = unit("a.service", JobState::Inactive);
    assert_eq!(r.create_unit(&a).await.unwrap(), None);
    // a second submit of other text finds the first, untouched
    let other = UnitRecord::submit(
        "a.service",
        "[Service]\nExecStart=/bin/false\n",
        JobState::Launched,
    )
    .unwrap();
    assert_eq!(r.create_unit(&other).await.unwrap(), Some(a.clone()));
    let v = r.unit("a.service").await.unwrap().unwrap();
    assert_eq!(v.record, a);
    // two writers from the same read: exactly one wins
    r.set_desired_state(&v, JobState::Launched).await.unwrap();
    let lost = r.set_desired_state(&v, JobState::Loaded).await.unwrap_err();
    assert!(matches!(lost, RegistryError::Conflict { .. }), "{lost}");
    assert_eq!(
        lost.to_string(),
        "/test/fleet/units/a.service changed while it was being updated"
    );
    let now = r.unit("a.service").await.unwrap().unwrap();
    assert_eq!(now.record.desired_state, JobState::Launched);
    assert!(r.destroy_unit("a.service").await.unwrap());
    assert!(!r.destroy_unit("a.service").await.unwrap());
    assert_eq!(r.unit("a.service").await.unwrap(), None);
    // too large for the registry: refused before any request
    let big = UnitRecord::submit(
        "big.service",
        format!(
            "[Service]\nExecStart=/bin/true\n{}",
            "# padding padding padding\n".repeat(MAX_UNIT_TEXT / 26 + 1)
        ),
        JobState::Inactive,
    )
    .unwrap();
    let e = r.create_unit(&big).await.unwrap_err().to_string();
    assert!(e.starts_with("unit big.service: its text is "), "{e}");
}

#[tokio::test]
async fn presence_and_states_go_with_the_agents_lease_in_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), "reg-lease");
    let r = registry(&etcd);
    let lease = r.etcd().grant(60).await.unwrap().id;
    r.announce(&machine("m1"), lease).await.unwrap();
    let other = r.etcd().grant(60).await.unwrap().id;
    r.announce(&machine("m2"), other).await.unwrap();
    let a = unit("a.service", JobState::Launched);
    for u in ["a.service", "b.service"] {
        r.report(
            &UnitStateReport {
                unit: u.into(),
                load: "loaded".into(),
                active: "active".into(),
                sub: "running".into(),
                machine: "m1".into(),
                hash: a.hash,
            },
            lease,
        )
        .await
        .unwrap();
    }
    assert_eq!(r.machines().await.unwrap().records.len(), 2);
    assert_eq!(r.states().await.unwrap().records.len(), 2);
    r.clear_report("m1", "b.service").await.unwrap();
    assert_eq!(r.states().await.unwrap().records.len(), 1);
    // the agent dies: its lease goes, and with it everything it said
    r.etcd().revoke(lease).await.unwrap();
    let machines = r.machines().await.unwrap();
    assert_eq!(machines.records, [machine("m2")]);
    assert!(r.states().await.unwrap().records.is_empty());
    // a machine ID that would escape its key is refused before any request
    let e = r.announce(&machine("../units/x"), other).await.unwrap_err();
    assert!(matches!(e, RegistryError::Key(_)), "{e}");
}

#[tokio::test]
async fn schedule_writes_are_fenced_by_the_leadership() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), "reg-fence");
    let r = registry(&etcd);
    let leader = lead(&r).await;
    let a = unit("a.service", JobState::Launched);
    let put = |m: &str| ScheduleChange::Put(ScheduleEntry::new(&a, m));
    r.apply(&leader, &[put("m1")]).await.unwrap();
    let s = r.schedule_of("m1").await.unwrap();
    assert_eq!(s.records, [ScheduleEntry::new(&a, "m1")]);
    assert!(r.schedule_of("m2").await.unwrap().records.is_empty());
    // the leader's lease ends; another engine is elected; the old leader,
    // not knowing yet, writes nothing
    r.etcd().revoke(leader.lease).await.unwrap();
    let new = lead(&r).await;
    assert_ne!(new.create_revision, leader.create_revision);
    let e = r
        .apply(
            &leader,
            &[
                ScheduleChange::Delete {
                    machine: "m1".into(),
                    unit: "a.service".into(),
                },
                put("m2"),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::NotLeader), "{e}");
    assert_eq!(r.schedule().await.unwrap().records.len(), 1);
    // the new leader moves it
    r.apply(
        &new,
        &[
            ScheduleChange::Delete {
                machine: "m1".into(),
                unit: "a.service".into(),
            },
            put("m2"),
        ],
    )
    .await
    .unwrap();
    let all = r.schedule().await.unwrap().records;
    assert_eq!(all, [ScheduleEntry::new(&a, "m2")]);
}

#[tokio::test]
async fn thousands_of_changes_are_cut_into_transactions_and_read_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), "reg-many");
    let r = registry(&etcd);
    let leader = lead(&r).await;
    // 2,500 entries: 25 transactions under etcd's default 128 ops, and
    // three pages on read
    let units: Vec<UnitRecord> = (0..2500)
        .map(|i| unit(&format!("u{i:04}.service"), JobState::Launched))
        .collect();
    let changes: Vec<ScheduleChange> = units
        .iter()
        .enumerate()
        .map(|(i, u)| ScheduleChange::Put(ScheduleEntry::new(u, &format!("m{}", i % 7))))
        .collect();
    let rev = r.apply(&leader, &changes).await.unwrap();
    assert!(rev > 0);
    let all = r.schedule().await.unwrap();
    assert_eq!(all.records.len(), 2500);
    assert!(all.bad.is_empty());
    assert!(all.revision >= rev);
    let mine = r.schedule_of("m3").await.unwrap().records;
    assert_eq!(mine.len(), 357);
    assert!(mine.iter().all(|e| e.machine == "m3"));
    // entries of ~200 KiB: cut by bytes under etcd's 1.5 MiB request limit
    let fat = UnitRecord::submit(
        "fat.service",
        format!(
            "[Service]\nExecStart=/bin/true\n{}",
            "# padding padding padding\n".repeat(200 << 10 >> 5)
        ),
        JobState::Launched,
    )
    .unwrap();
    let fat_changes: Vec<ScheduleChange> = (0..12)
        .map(|i| ScheduleChange::Put(ScheduleEntry::new(&fat, &format!("f{i}"))))
        .collect();
    r.apply(&leader, &fat_changes).await.unwrap();
    assert_eq!(r.schedule().await.unwrap().records.len(), 2512);
}

#[tokio::test]
async fn bad_records_are_set_aside_and_the_rest_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), "reg-bad");
    let r = registry(&etcd);
    let good = unit("good.service", JobState::Launched);
    r.create_unit(&good).await.unwrap();
    // hostile writers with etcd access: not JSON, a hash that lies, a
    // schedule entry whose text does not match its hash
    let e = r.etcd();
    e.put(
        "/test/fleet/units/junk.service",
        "{not json",
        PutOptions::new(),
    )
    .await
    .unwrap();
    let mut liar = unit("liar.service", JobState::Launched);
    liar.contents.push_str("ExecStartPre=/bin/evil\n");
    e.put(
        "/test/fleet/units/liar.service",
        liar.to_json(),
        PutOptions::new(),
    )
    .await
    .unwrap();
    let mut entry = ScheduleEntry::new(&good, "m1");
    entry.contents.push_str("ExecStartPre=/bin/evil\n");
    e.put(
        "/test/fleet/schedule/m1/good.service",
        entry.to_json(),
        PutOptions::new(),
    )
    .await
    .unwrap();
    let snap = r.snapshot().await.unwrap();
    assert_eq!(snap.units, [good]);
    assert!(snap.schedule.is_empty());
    let keys: Vec<&str> = snap.bad.iter().map(|b| b.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/test/fleet/units/junk.service",
            "/test/fleet/units/liar.service",
            "/test/fleet/schedule/m1/good.service"
        ]
    );
    assert!(
        snap.bad[1].error.contains("does not match its contents"),
        "{:?}",
        snap.bad[1]
    );
    let e = r.unit("junk.service").await.unwrap_err().to_string();
    assert!(
        e.starts_with("/test/fleet/units/junk.service: bad unit record"),
        "{e}"
    );
}
