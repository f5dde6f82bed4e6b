//! The engine against a real etcd 3.4 on 127.0.0.1 (testkit's `Etcd`);
//! machines and units are written straight through the `Registry` as the
//! agents and fleetctl would.
//!
//! Covered: least-loaded placement of launched units; Conflicts spreading
//! (and a fourth web@ unschedulable, explained); MachineOf and
//! MachineMetadata; Global on every matching machine and on one that
//! joins; Replaces; desired state changes rewrite the entry, inactive and
//! destroy remove it; a machine whose lease is revoked loses its units to
//! the others; two engines (one leads; shutdown and a killed leader: the
//! other takes over within a bound; a watch checks every revision of the
//! schedule for a unit on two machines); a deposed leader's fenced write
//! refused; the reboot lock drains its holder (its drain mark written
//! once nothing but its global unit is scheduled there and no report says
//! otherwise) and releasing it makes the machine schedulable again (the
//! mark removed); etcd restarted under the engine (nothing
//! unscheduled, the engine goes on); a unit record that does not read is
//! skipped; and at rest the engine makes no request (its counters and
//! etcd's own).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_etcd::{Campaign, Client, EventKind, LeaseKeeper, PutOptions, WatchOptions, WatchUpdate};
use cairn_fleet::engine::{ClusterView, Counters, Engine, EngineOptions, Metrics, Role, DRAINED};
use cairn_fleet::model::{MachineRecord, ScheduleEntry, SettledMark, UnitRecord};
use cairn_fleet::registry::{Keys, Registry, RegistryError, ScheduleChange};
use cairn_fleet::schedule::Verdict;
use cairn_fleet::unit::JobState;
use cairn_formats::reboot_lock::fleet::DrainMark;
use cairn_formats::reboot_lock::{Semaphore, LOCK_KEY};
use cairn_testkit::Etcd;
use common::client;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const SLEEP: &str = "[Service]\nExecStart=/bin/sleep 1000\n";
/// A bound for anything the engine does after a change.
const SOON: Duration = Duration::from_secs(10);

/// One etcd and a registry on it.
struct Setup {
    dir: tempfile::TempDir,
    etcd: Etcd,
    registry: Registry,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let etcd = Etcd::single(dir.path(), name);
        let registry = Registry::new(client(&etcd.client_url), Keys::default());
        Setup {
            dir,
            etcd,
            registry,
        }
    }

    fn etcd(&self) -> &Client {
        self.registry.etcd()
    }

    /// A machine present on a lease of its own (gone when the keeper is
    /// dropped and the lease expires, or at once when revoked).
    async fn machine(&self, id: &str, metadata: &[(&str, &str)]) -> LeaseKeeper {
        let keeper = self.etcd().grant_kept(10).await.unwrap();
        let record = MachineRecord {
            id: id.into(),
            public_ip: "127.0.0.1".into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            version: "test".into(),
        };
        self.registry.announce(&record, keeper.id()).await.unwrap();
        keeper
    }

    async fn unit(&self, name: &str, text: &str, state: JobState) {
        let r = UnitRecord::submit(name, text, state).unwrap();
        assert!(self.registry.create_unit(&r).await.unwrap().is_none());
    }

    async fn set_state(&self, name: &str, state: JobState) {
        let u = self.registry.unit(name).await.unwrap().unwrap();
        self.registry.set_desired_state(&u, state).await.unwrap();
    }

    /// The stored schedule: unit -> machines.
    async fn schedule(&self) -> Sched {
        let r = self.registry.schedule().await.unwrap();
        assert!(r.bad.is_empty(), "{:?}", r.bad);
        let mut s = Sched::new();
        for e in r.records {
            s.entry(e.unit).or_default().insert(e.machine);
        }
        s
    }

    /// Waits until the schedule satisfies `ok`; panics with it after
    /// `limit`.
    async fn wait(&self, what: &str, limit: Duration, ok: impl Fn(&Sched) -> bool) -> Sched {
        let t = Instant::now();
        loop {
            let s = self.schedule().await;
            if ok(&s) {
                return s;
            }
            assert!(t.elapsed() < limit, "{what}: not within {limit:?}: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn entry(&self, unit: &str) -> Option<ScheduleEntry> {
        let r = self.registry.schedule().await.unwrap();
        r.records.into_iter().find(|e| e.unit == unit)
    }

    async fn set_lock(&self, holders: &[&str]) {
        let mut sem = Semaphore::new(2);
        for h in holders {
            sem.lock(h).unwrap();
        }
        self.etcd()
            .put(
                LOCK_KEY,
                serde_json::to_string(&sem).unwrap(),
                PutOptions::new(),
            )
            .await
            .unwrap();
    }

    /// Waits until machine `id`'s drain mark is there (`present`) or gone.
    async fn wait_mark(&self, id: &str, present: bool) -> Option<DrainMark> {
        let t = Instant::now();
        loop {
            let r = self
                .etcd()
                .get(self.registry.keys().drained_of(id), Default::default())
                .await
                .unwrap();
            let mark = r
                .kvs
                .first()
                .map(|kv| serde_json::from_slice(&kv.value).unwrap());
            if mark.is_some() == present {
                return mark;
            }
            assert!(t.elapsed() < SOON, "drain mark of {id}: {mark:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn start(&self, name: &str) -> Running {
        self.start_with(options(name))
    }

    fn start_with(&self, opts: EngineOptions) -> Running {
        let name = opts.name.clone();
        let engine = Engine::new(self.registry.clone(), opts);
        let metrics = engine.metrics();
        let role = engine.role();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            engine
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap()
        });
        Running {
            name,
            task,
            stop: Some(stop),
            metrics,
            role,
        }
    }

    /// etcd's count of requests started, all methods but lease
    /// keep-alives (what etcd itself saw).
    fn etcd_requests(&self) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.etcd.client_port())).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body.lines()
            .filter(|l| l.starts_with("grpc_server_started_total{"))
            .filter(|l| !l.contains("grpc_method=\"LeaseKeepAlive\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Kills etcd and starts it again on the same URLs and data.
    fn restart_etcd(&mut self) {
        self.etcd.restart(self.dir.path());
    }
}

type Sched = BTreeMap<String, BTreeSet<String>>;

fn options(name: &str) -> EngineOptions {
    let mut o = EngineOptions::new(name);
    o.reconcile_interval = Duration::from_millis(300);
    o.lease_ttl = Duration::from_secs(3);
    o.debounce = Duration::from_millis(50);
    o.retry = Duration::from_millis(200);
    o
}

/// A running engine.
struct Running {
    name: String,
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
    metrics: Arc<Metrics>,
    role: watch::Receiver<Role>,
}

impl Running {
    fn leads(&self) -> bool {
        matches!(*self.role.borrow(), Role::Leader { .. })
    }

    fn counters(&self) -> Counters {
        self.metrics.get()
    }

    /// Waits until it leads.
    async fn until_leader(&mut self, limit: Duration) {
        let r = tokio::time::timeout(
            limit,
            self.role.wait_for(|r| matches!(r, Role::Leader { .. })),
        )
        .await
        .map(|r| r.map(|_| ()));
        if r.is_err() {
            panic!("not leader within {limit:?}: {:?}", *self.role.borrow());
        }
    }

    /// Shuts it down (it revokes its lease) and waits for it.
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(SOON, &mut self.task)
            .await
            .expect("the engine stops")
            .unwrap();
    }

    /// Kills it: the task is aborted, nothing is cleaned up (its lease
    /// expires after its TTL).
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Runs a test body within a bound.
async fn bounded(limit: Duration, body: impl Future<Output = ()>) {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("the test took more than {limit:?}"));
}

fn on(s: &Sched, unit: &str) -> Vec<String> {
    s.get(unit)
        .map(|m| m.iter().cloned().collect())
        .unwrap_or_default()
}

fn load(s: &Sched) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for ms in s.values() {
        for m in ms {
            *out.entry(m.clone()).or_default() += 1;
        }
    }
    out
}

/// Watches the whole schedule from the start and checks every revision:
/// no non-global unit on two machines at once; counts deletions.
struct Checker {
    violations: Arc<Mutex<Vec<String>>>,
    deletions: Arc<Mutex<u64>>,
    task: JoinHandle<()>,
}

impl Checker {
    async fn start(reg: &Registry, globals: &[&str]) -> Checker {
        let keys = reg.keys().clone();
        let first = reg.schedule().await.unwrap();
        let mut w = reg
            .etcd()
            .watch(
                keys.schedule(),
                WatchOptions::new()
                    .prefix()
                    .start_revision(first.revision + 1),
            )
            .await
            .unwrap();
        let globals: BTreeSet<String> = globals.iter().map(|g| g.to_string()).collect();
        let violations = Arc::new(Mutex::new(Vec::new()));
        let deletions = Arc::new(Mutex::new(0));
        let (v, d) = (violations.clone(), deletions.clone());
        let mut sched = Sched::new();
        for e in first.records {
            sched.entry(e.unit).or_default().insert(e.machine);
        }
        let task = tokio::spawn(async move {
            while let Some(u) = w.next().await {
                let events = match u {
                    Ok(WatchUpdate::Events { events, .. }) => events,
                    Ok(WatchUpdate::Reconnecting { .. } | WatchUpdate::Progress { .. }) => continue,
                    other => {
                        v.lock()
                            .unwrap()
                            .push(format!("the checker's watch: {other:?}"));
                        return;
                    }
                };
                let mut i = 0;
                while i < events.len() {
                    let rev = events[i].kv.mod_revision;
                    while i < events.len() && events[i].kv.mod_revision == rev {
                        let e = &events[i];
                        let key = e.kv.key_str();
                        let (m, unit) = keys.split_machine_unit(&key).unwrap();
                        let ms = sched.entry(unit.to_string()).or_default();
                        if e.kind == EventKind::Delete {
                            *d.lock().unwrap() += 1;
                            ms.remove(m);
                        } else {
                            ms.insert(m.to_string());
                        }
                        i += 1;
                    }
                    for (unit, ms) in &sched {
                        if ms.len() > 1 && !globals.contains(unit) {
                            v.lock()
                                .unwrap()
                                .push(format!("revision {rev}: {unit} on {ms:?}"));
                        }
                    }
                }
            }
        });
        Checker {
            violations,
            deletions,
            task,
        }
    }

    fn assert_clean(&self) {
        let v = self.violations.lock().unwrap();
        assert!(v.is_empty(), "{v:?}");
    }

    fn deletions(&self) -> u64 {
        *self.deletions.lock().unwrap()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launched_units_go_to_the_least_loaded_machines() {
    bounded(Duration::from_secs(60), async {
        let s = Setup::new("least");
        let _m: Vec<LeaseKeeper> =
            futures_util::future::join_all(["m1", "m2", "m3"].map(|m| s.machine(m, &[]))).await;
        for i in 1..=6 {
            s.unit(&format!("u{i}.service"), SLEEP, JobState::Launched)
                .await;
        }
        s.unit("off.service", SLEEP, JobState::Inactive).await;
        s.unit("t@.service", SLEEP, JobState::Inactive).await;
        let e = s.start("e1");
        let sched = s.wait("6 units placed", SOON, |s| s.len() == 6).await;
        assert_eq!(
            load(&sched),
            BTreeMap::from([("m1".into(), 2), ("m2".into(), 2), ("m3".into(), 2)])
        );
        assert!(!sched.contains_key("off.service"));
        // Ties go by machine ID, in unit order: u1 m1, u2 m2, u3 m3, u4 m1...
        assert_eq!(on(&sched, "u1.service"), ["m1"]);
        assert_eq!(on(&sched, "u4.service"), ["m1"]);
        let entry = s.entry("u1.service").await.unwrap();
        assert_eq!(entry.desired_state, JobState::Launched);
        assert_eq!(entry.contents, SLEEP);
        // A new unit goes to the least-loaded machine: m4 joins empty.
        let _m4 = s.machine("m4", &[]).await;
        s.unit("u7.service", SLEEP, JobState::Launched).await;
        let sched = s
            .wait("u7 placed", SOON, |s| s.contains_key("u7.service"))
            .await;
        assert_eq!(on(&sched, "u7.service"), ["m4"]);
        e.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_spread_and_a_fourth_is_unschedulable() {
    bounded(Duration::from_secs(60), async {
        let s = Setup::new("conflicts");
        let _m: Vec<LeaseKeeper> =
            futures_util::future::join_all(["m1", "m2", "m3"].map(|m| s.machine(m, &[]))).await;
        let web = "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nConflicts=web@*.service\n";
        for i in 1..=4 {
            s.unit(&format!("web@{i}.service"), web, JobState::Launched)
                .await;
        }
        let e = s.start("e1");
        let sched = s.wait("3 web units", SOON, |s| s.len() == 3).await;
        let machines: BTreeSet<String> = sched.values().flatten().cloned().collect();
        assert_eq!(machines.len(), 3, "{sched:?}");
        assert!(!sched.contains_key("web@4.service"), "{sched:?}");
        let view = ClusterView::read(&s.registry).await.unwrap();
        let ex = view.explain("web@4.service");
        assert!(matches!(ex.verdict, Verdict::Unplaced(_)), "{ex}");
        assert!(ex.to_string().contains("Conflicts"), "{ex}");
        assert!(view.changes().is_empty(), "the engine's plan is stored");
        e.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_of_and_machine_metadata() {
    bounded(Duration::from_secs(60), async {
        let s = Setup::new("machineof");
        let _a = s.machine("m1", &[("role", "web")]).await;
        let _b = s.machine("m2", &[("role", "db")]).await;
        let _c = s.machine("m3", &[("role", "web")]).await;
        s.unit(
            "db.service",
            "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nMachineMetadata=role=db\n",
            JobState::Launched,
        )
        .await;
        s.unit(
            "backup.service",
            "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nMachineOf=db.service\n",
            JobState::Launched,
        )
        .await;
        s.unit(
            "web.service",
            "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nMachineMetadata=role=web\n",
            JobState::Launched,
        )
        .await;
        let e = s.start("e1");
        let sched = s.wait("3 units", SOON, |s| s.len() == 3).await;
        assert_eq!(on(&sched, "db.service"), ["m2"]);
        assert_eq!(on(&sched, "backup.service"), ["m2"]);
        assert_eq!(on(&sched, "web.service"), ["m1"]);
        e.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_units_on_every_matching_machine_and_on_one_that_joins() {
    bounded(Duration::from_secs(60), async {
        let s = Setup::new("global");
        let _a = s.machine("m1", &[("role", "web")]).await;
        let _b = s.machine("m2", &[("role", "db")]).await;
        let _c = s.machine("m3", &[("role", "web")]).await;
        s.unit(
            "log.service",
            "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nGlobal=true\n",
            JobState::Launched,
        )
        .await;
        s.unit(
            "proxy.service",
            "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nGlobal=true\nMachineMetadata=role=web\n",
            JobState::Loaded,
        )
        .await;
        let e = s.start("e1");
        let sched = s
            .wait("globals", SOON, |s| on(s, "log.service").len() == 3 && on(s, "proxy.service").len() == 2)
            .await;
        assert_eq!(on(&sched, "proxy.service"), ["m1", "m3"]);
        let _d = s.machine("m4", &[("role", "web")]).await;
        let sched = s
            .wait("a machine joins", SOON, |s| on(s, "proxy.service").len() == 3)
            .await;
        assert_eq!(on(&sched, "log.service"), ["m1", "m2", "m3", "m4"]);
        assert_eq!(on(&sched, "proxy.service"), ["m1", "m3", "m4"]);
        // Stopping a global unit (inactive) takes it off everywhere.
        s.set_state("proxy.service", JobState::Inactive).await;
        s.wait("proxy gone", SOON, |s| !s.contains_key("proxy.service"))
            .await;
        e.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaces_pushes_a_unit_off_its_machine() {
    bounded(Duration::from_secs(60), async {
        let s = Setup::new("replaces");
        let _a = s.machine("m1", &[("disk", "ssd")]).await;
        let _b = s.machine("m2", &[]).await;
        s.unit("old.service", SLEEP, JobState::Launched).await;
        let e = s.start("e1");
        let sched = s.wait("old placed", SOON, |s| s.len() == 1).await;
        assert_eq!(on(&sched, "old.service"), ["m1"]);
        s.unit(
            "new.service",
            "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nMachineMetadata=disk=ssd\nReplaces=old.service\n",
            JobState::Launched,
        )
        .await;
        let sched = s.wait("new placed", SOON, |s| s.len() == 2).await;
        assert_eq!(on(&sched, "new.service"), ["m1"]);
        assert_eq!(on(&sched, "old.service"), ["m2"]);
        e.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_changes_rewrite_the_entry_and_destroy_removes_it() {
    bounded(Duration::from_secs(60), async {
        let s = Setup::new("states");
        let _a = s.machine("m1", &[]).await;
        let _b = s.machine("m2", &[]).await;
        s.unit("a.service", SLEEP, JobState::Launched).await;
        let e = s.start("e1");
        let sched = s.wait("a placed", SOON, |s| s.len() == 1).await;
        let m = on(&sched, "a.service");
        for state in [JobState::Loaded, JobState::Launched, JobState::Loaded] {
            s.set_state("a.service", state).await;
            let t = Instant::now();
            while s.entry("a.service").await.map(|e| e.desired_state) != Some(state) {
                assert!(t.elapsed() < SOON, "entry not {state:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Same machine.
            assert_eq!(on(&s.schedule().await, "a.service"), m);
        }
        s.set_state("a.service", JobState::Inactive).await;
        s.wait("unloaded", SOON, |s| s.is_empty()).await;
        s.set_state("a.service", JobState::Launched).await;
        s.wait("started again", SOON, |s| s.len() == 1).await;
        assert!(s.registry.destroy_unit("a.service").await.unwrap());
        s.wait("destroyed", SOON, |s| s.is_empty()).await;
        e.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_whose_lease_goes_loses_its_units() {
    bounded(Duration::from_secs(60), async {
        let s = Setup::new("dead");
        let a = s.machine("m1", &[]).await;
        let _b = s.machine("m2", &[]).await;
        let _c = s.machine("m3", &[]).await;
        for i in 1..=6 {
            s.unit(&format!("u{i}.service"), SLEEP, JobState::Launched)
                .await;
        }
        let e = s.start("e1");
        s.wait("placed", SOON, |s| s.len() == 6).await;
        let checker = Checker::start(&s.registry, &[]).await;
        a.revoke().await.unwrap();
        let sched = s
            .wait("m1's units moved", SOON, |s| {
                s.len() == 6 && !load(s).contains_key("m1")
            })
            .await;
        assert_eq!(
            load(&sched),
            BTreeMap::from([("m2".into(), 3), ("m3".into(), 3)])
        );
        checker.assert_clean();
        e.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_one_leads_and_the_other_takes_over() {
    bounded(Duration::from_secs(90), async {
        let s = Setup::new("two");
        let _m: Vec<LeaseKeeper> =
            futures_util::future::join_all(["m1", "m2", "m3"].map(|m| s.machine(m, &[]))).await;
        s.unit(
            "g.service",
            "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nGlobal=true\n",
            JobState::Launched,
        )
        .await;
        let checker = Checker::start(&s.registry, &["g.service"]).await;
        let mut a = s.start("engine-a");
        let mut b = s.start("engine-b");
        // Exactly one leads, the other follows it.
        let t = Instant::now();
        while !(a.leads() ^ b.leads())
            || !matches!(
                (&*a.role.borrow(), &*b.role.borrow()),
                (Role::Leader { .. }, Role::Follower { .. })
                    | (Role::Follower { .. }, Role::Leader { .. })
            )
        {
            assert!(
                t.elapsed() < SOON,
                "{:?} {:?}",
                *a.role.borrow(),
                *b.role.borrow()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if b.leads() {
            std::mem::swap(&mut a, &mut b);
        }
        let leader = s.registry.leader_at(0).await.unwrap().unwrap();
        assert_eq!(leader.value, a.name.as_bytes());
        assert_eq!(
            *b.role.borrow(),
            Role::Follower {
                leader: a.name.clone()
            }
        );
        for i in 1..=6 {
            s.unit(&format!("u{i}.service"), SLEEP, JobState::Launched)
                .await;
        }
        s.wait("placed", SOON, |s| s.len() == 7).await;
        assert_eq!(b.counters().txns, 0, "the follower wrote nothing");
        assert_eq!(b.counters().full_reads, 0, "the follower read nothing");

        // The leader shuts down: the follower takes over at once.
        a.shutdown().await;
        let t = Instant::now();
        b.until_leader(Duration::from_secs(2)).await;
        eprintln!("takeover after a shutdown: {:?}", t.elapsed());
        s.unit("u7.service", SLEEP, JobState::Launched).await;
        s.wait("placed by the new leader", SOON, |s| s.len() == 8)
            .await;

        // A third engine follows; the leader is killed (its lease runs
        // out): the third takes over within the TTL and a little.
        let mut c = s.start("engine-c");
        tokio::time::timeout(
            SOON,
            c.role.wait_for(|r| matches!(r, Role::Follower { .. })),
        )
        .await
        .unwrap()
        .unwrap();
        b.kill().await;
        let t = Instant::now();
        c.until_leader(Duration::from_secs(3 + 3)).await;
        eprintln!("takeover after a kill: {:?}", t.elapsed());
        s.unit("u8.service", SLEEP, JobState::Launched).await;
        let sched = s.wait("placed by the third", SOON, |s| s.len() == 9).await;
        assert_eq!(on(&sched, "g.service"), ["m1", "m2", "m3"]);
        for (u, ms) in &sched {
            assert!(u == "g.service" || ms.len() == 1, "{u}: {ms:?}");
        }
        checker.assert_clean();
        c.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_fenced_write_is_refused() {
    bounded(Duration::from_secs(60), async {
        let s = Setup::new("deposed");
        let _m = s.machine("m1", &[]).await;
        // An old leadership, then its lease gone.
        let lease = s.etcd().grant(5).await.unwrap();
        let Campaign::Elected(old) = s
            .etcd()
            .campaign(s.registry.keys().leader(), "old", lease.id)
            .await
            .unwrap()
        else {
            panic!("not elected")
        };
        s.etcd().revoke(lease.id).await.unwrap();
        let mut e = s.start("e1");
        e.until_leader(SOON).await;
        let r = UnitRecord::submit("x.service", SLEEP, JobState::Launched).unwrap();
        let before = s
            .etcd()
            .get("/", cairn_etcd::GetOptions::new().prefix())
            .await
            .unwrap();
        let err = s
            .registry
            .apply(&old, &[ScheduleChange::Put(ScheduleEntry::new(&r, "m1"))])
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::NotLeader), "{err}");
        assert!(s.schedule().await.is_empty());
        let after = s
            .etcd()
            .get("/", cairn_etcd::GetOptions::new().prefix())
            .await
            .unwrap();
        assert_eq!(
            after.header.revision, before.header.revision,
            "nothing written"
        );
        e.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reboot_lock_drains_its_holder() {
    bounded(Duration::from_secs(60), async {
        let s = Setup::new("drain");
        let m: Vec<LeaseKeeper> =
            futures_util::future::join_all(["m1", "m2", "m3"].map(|m| s.machine(m, &[]))).await;
        s.unit(
            "g.service",
            "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nGlobal=true\n",
            JobState::Launched,
        )
        .await;
        for i in 1..=6 {
            s.unit(&format!("u{i}.service"), SLEEP, JobState::Launched)
                .await;
        }
        let e = s.start("e1");
        let sched = s.wait("placed", SOON, |s| s.len() == 7).await;
        assert_eq!(load(&sched)["m2"], 3);
        let checker = Checker::start(&s.registry, &["g.service"]).await;
        s.set_lock(&["m2"]).await;
        let sched = s
            .wait("m2 drained", SOON, |s| {
                s.iter()
                    .all(|(u, ms)| u == "g.service" || !ms.contains("m2"))
            })
            .await;
        // Its global unit stays; the others went elsewhere.
        assert_eq!(on(&sched, "g.service"), ["m1", "m2", "m3"]);
        // No agent reports anything running there, but m2's agent has not
        // said it carried out the removals: no mark yet.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(s.wait_mark("m2", false).await.is_none());
        // A settled mark that does not read (or a hostile one) counts as
        // none, and the registry says which key.
        s.etcd()
            .put(
                s.registry.keys().settled_of("m2"),
                "{\"revision\": \"all\"}",
                PutOptions::new().lease(m[1].id()),
            )
            .await
            .unwrap();
        let bad = s.registry.settled_of("m2").await.unwrap_err();
        assert!(bad.to_string().contains("settled/m2"), "{bad}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(s.wait_mark("m2", false).await.is_none());
        // It says so (settled up to now): the drain mark, for the lock as
        // it is now.
        let now = s
            .etcd()
            .get("/", Default::default())
            .await
            .unwrap()
            .header
            .revision;
        s.registry
            .settle("m2", SettledMark { revision: now }, m[1].id())
            .await
            .unwrap();
        let lock_rev = s
            .registry
            .reboot_lock_versioned(0)
            .await
            .unwrap()
            .unwrap()
            .mod_revision;
        let mark = s.wait_mark("m2", true).await.unwrap();
        assert_eq!(
            (mark.machine.as_str(), mark.lock_revision),
            ("m2", lock_rev)
        );
        assert_eq!(
            load(&sched),
            BTreeMap::from([("m1".into(), 4), ("m2".into(), 1), ("m3".into(), 4)])
        );
        // Nothing new goes there either, least loaded as it is.
        s.unit("u7.service", SLEEP, JobState::Launched).await;
        let sched = s.wait("u7", SOON, |s| s.len() == 8).await;
        assert_ne!(on(&sched, "u7.service"), ["m2"]);
        let view = ClusterView::read(&s.registry).await.unwrap();
        assert_eq!(view.drained().iter().collect::<Vec<_>>(), ["m2"]);
        let ex = view.explain("u2.service");
        assert!(ex.to_string().contains(DRAINED), "{ex}");
        assert!(view.changes().is_empty());
        // Released: the machine takes units again, and its mark goes.
        s.set_lock(&[]).await;
        assert!(s.wait_mark("m2", false).await.is_none());
        s.unit("u8.service", SLEEP, JobState::Launched).await;
        let sched = s.wait("u8", SOON, |s| s.len() == 9).await;
        assert_eq!(on(&sched, "u8.service"), ["m2"]);
        checker.assert_clean();
        e.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarted_under_the_engine_unschedules_nothing() {
    bounded(Duration::from_secs(90), async {
        let mut s = Setup::new("restart");
        let _m: Vec<LeaseKeeper> =
            futures_util::future::join_all(["m1", "m2", "m3"].map(|m| s.machine(m, &[]))).await;
        for i in 1..=6 {
            s.unit(&format!("u{i}.service"), SLEEP, JobState::Launched)
                .await;
        }
        let mut opts = options("e1");
        opts.lease_ttl = Duration::from_secs(10);
        let mut e = s.start_with(opts);
        let before = s.wait("placed", SOON, |s| s.len() == 6).await;
        let checker = Checker::start(&s.registry, &[]).await;
        e.until_leader(SOON).await;
        s.restart_etcd();
        // The engine goes on: a new unit is placed, nothing else moved.
        s.unit("u7.service", SLEEP, JobState::Launched).await;
        let after = s
            .wait("u7 placed", Duration::from_secs(20), |s| s.len() == 7)
            .await;
        for (u, ms) in &before {
            assert_eq!(after.get(u), Some(ms), "{u} moved");
        }
        assert_eq!(checker.deletions(), 0, "something was unscheduled");
        checker.assert_clean();
        assert!(e.leads());
        let c = e.counters();
        eprintln!("after the restart: {c:?}");
        assert_eq!(c.elected, 1, "the leadership lasted");
        assert_eq!(c.full_reads, 1, "the watches resumed; nothing read again");
        e.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_record_that_does_not_read_is_skipped() {
    bounded(Duration::from_secs(60), async {
        let s = Setup::new("bad");
        let _m = s.machine("m1", &[]).await;
        let keys = s.registry.keys().clone();
        s.etcd()
            .put(keys.unit("bad.service"), "{not json", PutOptions::new())
            .await
            .unwrap();
        s.unit("good.service", SLEEP, JobState::Launched).await;
        let e = s.start("e1");
        let sched = s.wait("good placed", SOON, |s| s.len() == 1).await;
        assert_eq!(on(&sched, "good.service"), ["m1"]);
        // One that turns bad later is frozen where it is; one written
        // good after is placed.
        s.etcd()
            .put(keys.unit("good.service"), "{\"name\":1}", PutOptions::new())
            .await
            .unwrap();
        s.unit("late.service", SLEEP, JobState::Launched).await;
        let sched = s.wait("late placed", SOON, |s| s.len() == 2).await;
        assert_eq!(on(&sched, "good.service"), ["m1"]);
        assert!(!sched.contains_key("bad.service"));
        e.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_rest_the_engine_makes_no_request() {
    bounded(Duration::from_secs(60), async {
        let s = Setup::new("rest");
        let _m: Vec<LeaseKeeper> =
            futures_util::future::join_all(["m1", "m2", "m3"].map(|m| s.machine(m, &[]))).await;
        for i in 1..=30 {
            s.unit(&format!("u{i}.service"), SLEEP, JobState::Launched)
                .await;
        }
        let mut e = s.start("e1");
        e.until_leader(SOON).await;
        s.wait("placed", SOON, |s| s.len() == 30).await;
        // Settled: the last write seen and a plan after it.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let c1 = e.counters();
        let etcd1 = s.etcd_requests();
        tokio::time::sleep(Duration::from_millis(300 * 5)).await;
        let c2 = e.counters();
        let etcd2 = s.etcd_requests();
        eprintln!("settled: {c1:?}\nafter 5 intervals: {c2:?}");
        assert_eq!(c2.requests(), c1.requests(), "{c1:?} -> {c2:?}");
        assert!(c2.plans >= c1.plans + 3, "it kept reconciling from memory");
        assert_eq!(etcd2, etcd1, "etcd saw requests at rest");
        assert_eq!(c2.full_reads, 1);
        // A burst of starts makes few plans and few transactions.
        let p = c2.plans;
        let units: Vec<UnitRecord> = (1..=200)
            .map(|i| {
                UnitRecord::submit(&format!("b{i}.service"), SLEEP, JobState::Launched).unwrap()
            })
            .collect();
        futures_util::future::join_all(units.iter().map(|u| s.registry.create_unit(u))).await;
        s.wait("burst placed", SOON, |s| s.len() == 230).await;
        let c3 = e.counters();
        eprintln!("after 200 starts: {c3:?}");
        assert!(c3.plans - p < 60, "{} plans for 200 starts", c3.plans - p);
        assert_eq!(c3.full_reads, 1);
        e.shutdown().await;
    })
    .await;
}
