//! Engine and agents together against a real etcd 3.4 on 127.0.0.1
//! (testkit's `Etcd`): three machines, each a real `Agent` on the
//! simulated systemd (`SimUnitManager`, with a stop that takes a while),
//! one real `Engine`, and `cairn-update`'s real `etcd-lock` code path
//! (`EtcdLock::before_reboot`, the library function the agent calls before
//! it reboots).
//!
//! Covered: an update on a fleet machine takes the reboot lock and returns
//! only once the machine's non-global units are scheduled elsewhere *and*
//! stopped there by its agent (the simulated stop takes 1.5 s; the global
//! unit keeps running); releasing the lock removes the drain mark, and a
//! second hold waits for a new one; a drain that cannot finish (a unit
//! reported running by a machine with no agent) makes the wait end at
//! `DRAIN_TIMEOUT`; no fleet on the cluster: no wait; etcd killed and
//! restarted under the engine and the agents: no unit stopped, none moved.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_etcd::PutOptions;
use cairn_fleet::agent::{Agent, AgentOptions};
use cairn_fleet::engine::{Engine, EngineOptions, Role};
use cairn_fleet::model::{MachineRecord, UnitRecord, UnitStateReport};
use cairn_fleet::registry::{Keys, Registry};
use cairn_fleet::systemd::{SimOptions, SimUnitManager, UnitManager};
use cairn_fleet::unit::JobState;
use cairn_formats::reboot_lock::fleet::DrainMark;
use cairn_testkit::Etcd;
use cairn_updater::lock::RebootLock;
use cairn_updater::strategy::{
    wait_for_drain, Decision, DrainWait, EtcdLock, Facts, RebootStrategy,
};
use common::client;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SLEEP: &str = "[Service]\nExecStart=/bin/sleep 1000\n";
const GLOBAL: &str = "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nGlobal=true\n";
const SOON: Duration = Duration::from_secs(15);
/// How long a simulated unit takes to stop.
const STOP: Duration = Duration::from_millis(1500);

/// One etcd, an engine and agents on simulated systemd.
struct Fleet {
    dir: tempfile::TempDir,
    etcd: Etcd,
    registry: Registry,
    managers: BTreeMap<String, Arc<SimUnitManager>>,
    tasks: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
    engine_role: Option<tokio::sync::watch::Receiver<Role>>,
}

impl Fleet {
    fn new(name: &str) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let etcd = Etcd::single(dir.path(), name);
        let registry = Registry::new(client(&etcd.client_url), Keys::default());
        Fleet {
            dir,
            etcd,
            registry,
            managers: BTreeMap::new(),
            tasks: Vec::new(),
            engine_role: None,
        }
    }

    fn agent(&mut self, id: &str) {
        self.agent_reporting(id, Duration::from_millis(100));
    }

    /// An agent that gathers state changes for `report_interval` before
    /// writing them.
    fn agent_reporting(&mut self, id: &str, report_interval: Duration) {
        let manager = Arc::new(SimUnitManager::new(SimOptions {
            start_delay: Duration::ZERO,
            stop_delay: STOP,
        }));
        let mut opts = AgentOptions::new(MachineRecord {
            id: id.into(),
            public_ip: "127.0.0.1".into(),
            metadata: BTreeMap::new(),
            version: "test".into(),
        });
        opts.ttl = Duration::from_secs(10);
        opts.report_interval = report_interval;
        let agent = Agent::new(self.registry.clone(), manager.clone(), opts).unwrap();
        self.managers.insert(id.into(), manager);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(async {
            let _ = stopped.await;
        }));
        self.tasks.push((stop, task));
    }

    fn engine(&mut self) {
        let mut o = EngineOptions::new("engine");
        o.reconcile_interval = Duration::from_millis(300);
        o.lease_ttl = Duration::from_secs(10);
        o.debounce = Duration::from_millis(50);
        o.retry = Duration::from_millis(200);
        let engine = Engine::new(self.registry.clone(), o);
        self.engine_role = Some(engine.role());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            engine
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap()
        });
        self.tasks.push((stop, task));
    }

    async fn unit(&self, name: &str, text: &str) {
        let r = UnitRecord::submit(name, text, JobState::Launched).unwrap();
        assert!(self.registry.create_unit(&r).await.unwrap().is_none());
    }

    /// What runs where, as the simulated systemds say: machine -> units
    /// active.
    fn running(&self) -> BTreeMap<String, Vec<String>> {
        self.managers
            .iter()
            .map(|(m, sim)| {
                let up = sim
                    .states()
                    .into_iter()
                    .filter(|(_, s)| !s.is_stopped())
                    .map(|(u, _)| u)
                    .collect();
                (m.clone(), up)
            })
            .collect()
    }

    /// Waits until `ok(running)`.
    async fn wait_running(
        &self,
        what: &str,
        ok: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
    ) -> BTreeMap<String, Vec<String>> {
        let t = Instant::now();
        loop {
            let r = self.running();
            if ok(&r) {
                return r;
            }
            assert!(t.elapsed() < SOON, "{what}: not within {SOON:?}: {r:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn mark(&self, id: &str) -> Option<DrainMark> {
        let r = self
            .registry
            .etcd()
            .get(self.registry.keys().drained_of(id), Default::default())
            .await
            .unwrap();
        r.kvs
            .first()
            .map(|kv| serde_json::from_slice(&kv.value).unwrap())
    }

    async fn shutdown(self) {
        for (stop, task) in self.tasks {
            let _ = stop.send(());
            tokio::time::timeout(SOON, task).await.unwrap().unwrap();
        }
    }
}

fn update_conf(text: &str) -> cairn_updater::Config {
    cairn_updater::Config::parse(
        &format!("REBOOT_STRATEGY=etcd-lock\n{text}"),
        Path::new("update.conf"),
    )
    .unwrap()
}

fn now() -> i64 {
    1_764_208_000
}

/// `cairn-update`'s etcd-lock before its reboot, on a thread (it blocks),
/// as machine `id`: the decision and how long it took.
async fn before_reboot(url: &str, id: &str, conf: &str) -> (Decision, Duration) {
    let (url, id, conf) = (url.to_string(), id.to_string(), conf.to_string());
    tokio::task::spawn_blocking(move || {
        let c = update_conf(&conf);
        let s = EtcdLock::new(&url, id, Duration::from_millis(200))
            .drain_poll(Duration::from_millis(100));
        let t = Instant::now();
        let d = s.before_reboot(&Facts { config: &c, now });
        (d, t.elapsed())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_waits_until_its_units_moved_and_stopped() {
    let mut f = Fleet::new("drain");
    // Reports gathered for 2 s: when the lock is taken, m2's units run but
    // none is reported yet. A missing report must not read as "stopped"
    // (it did: the drain was marked done at once, CI run of stop 24).
    for m in ["m1", "m2", "m3"] {
        f.agent_reporting(m, Duration::from_secs(2));
    }
    f.engine();
    f.unit("g.service", GLOBAL).await;
    for i in 1..=6 {
        f.unit(&format!("u{i}.service"), SLEEP).await;
    }
    let before = f
        .wait_running("all running", |r| {
            r.values().map(|u| u.len()).sum::<usize>() == 6 + 3
        })
        .await;
    let on_m2: Vec<String> = before["m2"]
        .iter()
        .filter(|u| *u != "g.service")
        .cloned()
        .collect();
    assert_eq!(on_m2.len(), 2, "{before:?}");
    assert!(f.mark("m2").await.is_none());

    // m2's cairn-update takes the lock; a monitor of m2's systemd records
    // when its last moved unit stopped.
    let m2 = f.managers["m2"].clone();
    let stopped_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let monitor = {
        let (m2, stopped_at, on_m2) = (m2.clone(), stopped_at.clone(), on_m2.clone());
        tokio::spawn(async move {
            loop {
                let s = m2.states();
                if on_m2
                    .iter()
                    .all(|u| s.get(u).is_none_or(|s| s.is_stopped()))
                {
                    *stopped_at.lock().unwrap() = Some(Instant::now());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let (decision, took) = before_reboot(&f.etcd.client_url, "m2", "DRAIN_TIMEOUT=30s\n").await;
    let returned = Instant::now();
    assert_eq!(decision, Decision::Reboot);
    eprintln!("etcd-lock with a fleet drain took {took:?}");
    // It returned only once m2 had stopped every unit that moved...
    let states = m2.states();
    for u in &on_m2 {
        assert!(
            states.get(u).is_none_or(|s| s.is_stopped()),
            "{u} still {:?} on m2 when the update went ahead",
            states.get(u)
        );
    }
    tokio::time::timeout(Duration::from_secs(1), monitor)
        .await
        .unwrap()
        .unwrap();
    assert!(stopped_at.lock().unwrap().unwrap() <= returned);
    // ...which took the simulated stop's time, not just a schedule write.
    assert!(
        took >= STOP,
        "returned after {took:?}, before a stop could end"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The global unit still runs there; the others run elsewhere.
    assert_eq!(f.running()["m2"], ["g.service"]);
    let after = f
        .wait_running("moved units running elsewhere", |r| {
            on_m2
                .iter()
                .all(|u| r["m1"].contains(u) || r["m3"].contains(u))
        })
        .await;
    assert_eq!(after.values().map(|u| u.len()).sum::<usize>(), 6 + 3);
    let mark = f.mark("m2").await.expect("m2 marked drained");
    let lock = RebootLock::new(&f.etcd.client_url);
    assert!(lock.status().unwrap().holds("m2"));

    // The health gate gives the lock back: the mark goes.
    assert!(lock.unlock("m2").unwrap());
    let t = Instant::now();
    while f.mark("m2").await.is_some() {
        assert!(t.elapsed() < SOON, "the mark stayed after the release");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A second update on m2 (nothing to move now) gets a new mark, for
    // the new hold of the lock.
    let (decision, took) = before_reboot(&f.etcd.client_url, "m2", "DRAIN_TIMEOUT=30s\n").await;
    assert_eq!(decision, Decision::Reboot);
    let second = f.mark("m2").await.expect("marked again");
    assert!(
        second.lock_revision > mark.lock_revision,
        "{second:?} {mark:?}"
    );
    eprintln!("a second hold, nothing to move: {took:?}");
    lock.unlock("m2").unwrap();
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_cannot_finish_ends_at_the_timeout() {
    let mut f = Fleet::new("stuck");
    f.agent("m1");
    f.engine();
    // m2 is present but its "agent" is the test: it reports a unit running
    // and never stops it.
    let keeper = f.registry.etcd().grant_kept(30).await.unwrap();
    let m2 = MachineRecord {
        id: "m2".into(),
        public_ip: "127.0.0.1".into(),
        metadata: BTreeMap::new(),
        version: "test".into(),
    };
    f.registry.announce(&m2, keeper.id()).await.unwrap();
    let stuck = UnitRecord::submit("stuck.service", SLEEP, JobState::Launched).unwrap();
    let report = UnitStateReport {
        unit: "stuck.service".into(),
        load: "loaded".into(),
        active: "active".into(),
        sub: "running".into(),
        machine: "m2".into(),
        hash: stuck.hash,
    };
    f.registry.report(&report, keeper.id()).await.unwrap();
    let (decision, took) = before_reboot(&f.etcd.client_url, "m2", "DRAIN_TIMEOUT=2s\n").await;
    eprintln!("a stuck drain: {took:?}");
    assert_eq!(decision, Decision::Reboot, "a timeout reboots anyway");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(f.mark("m2").await.is_none());
    // The library's answer says so.
    let lock = RebootLock::new(&f.etcd.client_url);
    let (_, rev) = lock.take("m2").unwrap();
    let url = f.etcd.client_url.clone();
    let waited = tokio::task::spawn_blocking(move || {
        let lock = RebootLock::new(&url);
        wait_for_drain(
            &lock,
            "/cairn/fleet/",
            "m2",
            rev,
            Duration::from_millis(500),
            Duration::from_millis(100),
        )
    })
    .await
    .unwrap();
    assert!(matches!(waited, DrainWait::TimedOut { .. }), "{waited:?}");
    assert!(waited.message("m2").contains("rebooting anyway"));
    // The report goes (the machine stops it): the drain completes.
    f.registry
        .clear_report("m2", "stuck.service")
        .await
        .unwrap();
    let t = Instant::now();
    while f.mark("m2").await.is_none() {
        assert!(t.elapsed() < SOON, "no mark once nothing ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(keeper);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fleet_on_the_cluster_no_wait() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), "nofleet");
    let (decision, took) = before_reboot(&etcd.client_url, "m1", "DRAIN_TIMEOUT=5m\n").await;
    assert_eq!(decision, Decision::Reboot);
    assert!(took < Duration::from_secs(2), "{took:?}");
    let url = etcd.client_url.clone();
    let (none, off) = tokio::task::spawn_blocking(move || {
        let lock = RebootLock::new(&url);
        let w = |t| {
            wait_for_drain(
                &lock,
                "/cairn/fleet/",
                "m1",
                1,
                t,
                Duration::from_millis(100),
            )
        };
        (w(Duration::from_secs(300)), w(Duration::ZERO))
    })
    .await
    .unwrap();
    assert_eq!(none, DrainWait::NoFleet);
    assert_eq!(off, DrainWait::Disabled);
    // A fleet under another prefix is not this one's.
    let c = client(&etcd.client_url);
    c.put("/other/engine/leader", "x", PutOptions::new())
        .await
        .unwrap();
    let url = etcd.client_url.clone();
    let w = tokio::task::spawn_blocking(move || {
        let lock = RebootLock::new(&url);
        let other = wait_for_drain(
            &lock,
            "/cairn/fleet/",
            "m1",
            1,
            Duration::from_secs(5),
            Duration::from_millis(100),
        );
        let mine = wait_for_drain(
            &lock,
            "/other/",
            "m1",
            1,
            Duration::from_millis(300),
            Duration::from_millis(100),
        );
        (other, mine)
    })
    .await
    .unwrap();
    assert_eq!(w.0, DrainWait::NoFleet);
    assert!(matches!(w.1, DrainWait::TimedOut { .. }), "{:?}", w.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarted_under_engine_and_agents_stops_no_unit() {
    let mut f = Fleet::new("restart");
    for m in ["m1", "m2", "m3"] {
        f.agent(m);
    }
    f.engine();
    for i in 1..=6 {
        f.unit(&format!("u{i}.service"), SLEEP).await;
    }
    let before = f
        .wait_running("all running", |r| {
            r.values().map(|u| u.len()).sum::<usize>() == 6
        })
        .await;
    // A monitor of every simulated systemd: any unit seen stopping.
    let stops: Arc<Mutex<Vec<String>>> = Arc::default();
    let monitors: Vec<JoinHandle<()>> = f
        .managers
        .iter()
        .map(|(m, sim)| {
            let (m, mut rx, stops) = (m.clone(), sim.subscribe(), stops.clone());
            let watched = before[m.as_str()].clone();
            tokio::spawn(async move {
                loop {
                    for u in &watched {
                        match rx.borrow_and_update().get(u) {
                            Some(s) if s.is_active() => {}
                            other => stops.lock().unwrap().push(format!("{u} on {m}: {other:?}")),
                        }
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    f.etcd.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    f.etcd.restart(f.dir.path());
    // The cluster goes on: a new unit runs; nothing stopped or moved.
    f.unit("u7.service", SLEEP).await;
    let after = f
        .wait_running("u7 running", |r| {
            r.values().map(|u| u.len()).sum::<usize>() == 7
        })
        .await;
    for (m, units) in &before {
        for u in units {
            assert!(after[m].contains(u), "{u} left {m}: {after:?}");
        }
    }
    for m in monitors {
        m.abort();
    }
    let stops = stops.lock().unwrap().clone();
    assert!(stops.is_empty(), "units stopped: {stops:?}");
    assert!(matches!(
        *f.engine_role.as_ref().unwrap().borrow(),
        Role::Leader { .. }
    ));
    f.shutdown().await;
}
