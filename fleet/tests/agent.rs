//! The agent against a real etcd 3.4 on 127.0.0.1 (testkit's `Etcd`), with
//! the simulated systemd (`SimUnitManager`) as its backend; the test
//! writes schedule entries as the engine would (`Registry::apply`, fenced
//! by a leadership it campaigned for).
//!
//! Covered: an entry loaded, started and reported; launched -> loaded
//! stops it; a new hash reloads; a deletion stops, unloads and removes the
//! report (and an entry stopped, then deleted: the report stays gone); presence on one lease, gone with it in one revision (shutdown,
//! revoke); an etcd killed and restarted (units keep running, reports
//! resume); a lease that expired during an outage (a new one, everything
//! written again, units untouched); stale units unloaded only after the
//! schedule was read; hostile entries refused; nothing read or watched
//! outside the agent's own prefix, and no request at rest (etcd's own
//! request counters); a compaction during an outage (read again); 200
//! agents in one process.
//!
//! Outages of etcd that keep it running (so that leases really expire)
//! go through a TCP proxy of the test's own that can be cut.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_etcd::{
    Campaign, Client, EventKind, GetOptions, Leader, LeaseKeeper, PutOptions, Watch, WatchOptions,
    WatchUpdate,
};
use cairn_fleet::agent::{Agent, AgentCounters, AgentOptions, AgentStats};
use cairn_fleet::model::{MachineRecord, ScheduleEntry, UnitRecord, UnitStateReport};
use cairn_fleet::registry::{Keys, Registry, ScheduleChange};
use cairn_fleet::systemd::{SimOptions, SimUnitManager, UnitManager, UnitState};
use cairn_fleet::unit::JobState;
use cairn_testkit::Etcd;
use common::client;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const V1: &str = "[Service]\nExecStart=/bin/sleep 1000\n";
const V2: &str = "[Service]\nExecStart=/bin/sleep 2000\n";

/// With `AGENT_TEST_LOG=1`, the agents' logs on stderr (a minimal
/// subscriber: the crate has no tracing-subscriber).
fn log() {
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    struct Stderr(Instant);
    struct Line(String);
    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            use std::fmt::Write as _;
            if field.name() == "message" {
                let _ = write!(self.0, " {value:?}");
            } else {
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
    }
    impl Subscriber for Stderr {
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            m.target().starts_with("cairn")
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            let mut line = Line(String::new());
            e.record(&mut line);
            eprintln!(
                "{:>8.3} {:5} {}:{}",
                self.0.elapsed().as_secs_f64(),
                e.metadata().level(),
                e.metadata().target(),
                line.0
            );
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
    if std::env::var_os("AGENT_TEST_LOG").is_some() {
        let _ = tracing::subscriber::set_global_default(Stderr(Instant::now()));
    }
}

/// One etcd, a client of the test's own and an engine's leadership.
struct Cluster {
    dir: tempfile::TempDir,
    etcd: Etcd,
    client: Client,
    registry: Registry,
    leader: Leader,
    _engine: LeaseKeeper,
}

async fn cluster(name: &str) -> Cluster {
    log();
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), name);
    let client = client(&etcd.client_url);
    let registry = Registry::new(client.clone(), Keys::default());
    let engine = client.grant_kept(60).await.unwrap();
    let leader = match client
        .campaign(registry.keys().leader(), "test-engine", engine.id())
        .await
        .unwrap()
    {
        Campaign::Elected(l) => l,
        other => panic!("{other:?}"),
    };
    Cluster {
        dir,
        etcd,
        client,
        registry,
        leader,
        _engine: engine,
    }
}

impl Cluster {
    /// A registry for an agent, reaching etcd at `url`.
    fn registry_at(&self, url: &str) -> Registry {
        Registry::new(client(url), Keys::default())
    }

    async fn schedule(&self, entries: &[ScheduleEntry]) {
        let changes: Vec<ScheduleChange> =
            entries.iter().cloned().map(ScheduleChange::Put).collect();
        self.registry.apply(&self.leader, &changes).await.unwrap();
    }

    async fn unschedule(&self, machine: &str, unit: &str) {
        let change = ScheduleChange::Delete {
            machine: machine.into(),
            unit: unit.into(),
        };
        self.registry.apply(&self.leader, &[change]).await.unwrap();
    }

    /// A key's value and lease.
    async fn get(&self, key: &str) -> Option<(String, i64)> {
        let r = self.client.get(key, GetOptions::new()).await.unwrap();
        r.kvs
            .into_iter()
            .next()
            .map(|kv| (kv.value_str().into_owned(), kv.lease))
    }

    async fn presence(&self, machine: &str) -> Option<(MachineRecord, i64)> {
        let (v, lease) = self.get(&self.registry.keys().machine(machine)).await?;
        Some((MachineRecord::from_json(&v).unwrap(), lease))
    }

    async fn report(&self, machine: &str, unit: &str) -> Option<(UnitStateReport, i64)> {
        let (v, lease) = self.get(&self.registry.keys().state(machine, unit)).await?;
        Some((UnitStateReport::from_json(&v).unwrap(), lease))
    }

    /// Waits until the report of `unit` says `active/sub` with the hash of
    /// `text`; returns it with its lease.
    async fn wait_report(
        &self,
        machine: &str,
        unit: &str,
        active: &str,
        sub: &str,
        text: &str,
    ) -> (UnitStateReport, i64) {
        let hash = record(unit, text).hash;
        let t = Instant::now();
        loop {
            let last = self.report(machine, unit).await;
            if let Some((r, lease)) = &last {
                if r.active == active && r.sub == sub && r.hash == hash && r.load == "loaded" {
                    return (r.clone(), *lease);
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{unit} on {machine}: never {active}/{sub} {hash}: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_no_report(&self, machine: &str, unit: &str) {
        assert!(
            eventually(Duration::from_secs(20), || async {
                self.report(machine, unit).await.is_none()
            })
            .await,
            "{unit} on {machine}: still reported"
        );
    }

    /// Kills etcd and starts it again on the same URLs and data after
    /// `down`.
    async fn restart_etcd(&mut self, down: Duration) {
        self.etcd.kill();
        tokio::time::sleep(down).await;
        self.etcd.restart(self.dir.path());
    }

    /// etcd's count of requests started, all methods but lease keep-alives
    /// (what etcd itself saw, through its JSON gateway).
    fn requests_but_keepalives(&self) -> u64 {
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
}

fn record(unit: &str, text: &str) -> UnitRecord {
    UnitRecord::submit(unit, text, JobState::Launched).unwrap()
}

fn entry(unit: &str, machine: &str, state: JobState, text: &str) -> ScheduleEntry {
    let mut e = ScheduleEntry::new(&record(unit, text), machine);
    e.desired_state = state;
    e
}

fn machine(id: &str) -> MachineRecord {
    MachineRecord {
        id: id.into(),
        public_ip: "10.0.0.1".into(),
        metadata: [("role".to_string(), "test".to_string())].into(),
        version: "test".into(),
    }
}

fn options(id: &str) -> AgentOptions {
    let mut o = AgentOptions::new(machine(id));
    o.ttl = Duration::from_secs(5);
    o.report_interval = Duration::from_millis(100);
    o.retry_max = Duration::from_secs(1);
    o
}

fn sim() -> SimUnitManager {
    SimUnitManager::new(SimOptions {
        start_delay: Duration::from_millis(50),
        stop_delay: Duration::from_millis(50),
    })
}

fn running() -> UnitState {
    UnitState::new("loaded", "active", "running")
}

/// An agent running in a task.
struct Running {
    counters: Arc<AgentCounters>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    fn start(registry: Registry, sim: &SimUnitManager, options: AgentOptions) -> Running {
        let agent = Agent::new(registry, Arc::new(sim.clone()), options).unwrap();
        let counters = agent.counters();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(async move {
            let _ = rx.await;
        }));
        Running {
            counters,
            stop: Some(tx),
            task,
        }
    }

    fn stats(&self) -> AgentStats {
        self.counters.get()
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the agent did not stop")
            .unwrap();
    }
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

/// Records every state other than active/running that `units` take
/// after this is called (they must be running by then).
struct Monitor {
    seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Monitor {
    fn start(sim: &SimUnitManager, units: &[&str]) -> Monitor {
        let mut rx = sim.subscribe();
        let units: Vec<String> = units.iter().map(|u| u.to_string()).collect();
        for u in &units {
            assert_eq!(rx.borrow().get(u), Some(&running()), "{u}");
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = seen.clone();
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let states = rx.borrow_and_update().clone();
                for u in &units {
                    if states.get(u) != Some(&running()) {
                        out.lock()
                            .unwrap()
                            .push(format!("{u}: {:?}", states.get(u)));
                    }
                }
            }
        });
        Monitor { seen, task }
    }

    /// Everything seen that was not running.
    fn finish(self) -> Vec<String> {
        self.task.abort();
        self.seen.lock().unwrap().clone()
    }
}

/// A TCP proxy to etcd that the test can cut: while down it drops every
/// connection, open or new, so etcd looks unreachable to whoever goes
/// through it, while it keeps running (and expiring leases).
struct Proxy {
    url: String,
    up: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let up = Arc::new(watch::Sender::new(true));
        let up2 = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                if !*up2.borrow() {
                    continue;
                }
                let mut down = up2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut etcd) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut sock, &mut etcd) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { url, up, task }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The next events under a watch (kind, key, revision), skipping notes,
/// until `n` were seen.
async fn events(w: &mut Watch, n: usize) -> Vec<(EventKind, String, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let u = tokio::time::timeout(Duration::from_secs(20), w.next())
            .await
            .expect("no watch event")
            .expect("watch ended")
            .expect("watch error");
        if let WatchUpdate::Events { events, .. } = u {
            for e in events {
                out.push((e.kind, e.kv.key_str().into_owned(), e.kv.mod_revision));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_loaded_started_stopped_reloaded_and_removed() {
    let c = cluster("lifecycle").await;
    let sim = sim();
    let agent = Running::start(c.registry.clone(), &sim, options("m1"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            c.presence("m1").await.is_some()
        })
        .await
    );
    let (m, lease) = c.presence("m1").await.unwrap();
    assert_eq!(m, machine("m1"));
    assert_ne!(lease, 0);

    // an entry: loaded, started, reported with the hash of its text
    c.schedule(&[entry("a.service", "m1", JobState::Launched, V1)])
        .await;
    let (r, report_lease) = c
        .wait_report("m1", "a.service", "active", "running", V1)
        .await;
    assert_eq!(r.machine, "m1");
    assert_eq!(report_lease, lease, "reports go on the presence lease");
    assert_eq!(sim.contents("a.service").as_deref(), Some(V1));

    // launched -> loaded: stopped, still loaded
    c.schedule(&[entry("a.service", "m1", JobState::Loaded, V1)])
        .await;
    c.wait_report("m1", "a.service", "inactive", "dead", V1)
        .await;
    assert_eq!(
        sim.states()["a.service"],
        UnitState::new("loaded", "inactive", "dead")
    );
    c.schedule(&[entry("a.service", "m1", JobState::Launched, V1)])
        .await;
    c.wait_report("m1", "a.service", "active", "running", V1)
        .await;

    // a new text: stopped, unloaded, loaded and started again
    c.schedule(&[entry("a.service", "m1", JobState::Launched, V2)])
        .await;
    c.wait_report("m1", "a.service", "active", "running", V2)
        .await;
    assert_eq!(sim.contents("a.service").as_deref(), Some(V2));
    let s = agent.stats();
    assert_eq!(
        (s.loads, s.starts, s.stops, s.unloads),
        (2, 3, 1, 1),
        "{s:?}"
    );

    // deleted: stopped, unloaded, the report gone
    c.unschedule("m1", "a.service").await;
    c.wait_no_report("m1", "a.service").await;
    assert!(sim.states().is_empty(), "{:?}", sim.states());
    assert_eq!(agent.stats().unloads, 2);
    let s = agent.stats();
    assert_eq!((s.schedule_reads, s.watches_created), (1, 1), "{s:?}");
    assert_eq!(s.entries_refused, 0);

    agent.shutdown().await;
    assert!(c.presence("m1").await.is_none());
}

/// `fleetctl stop` then `fleetctl unload`: the engine makes the entry
/// `loaded` (the unit stops), then deletes it. The unit is unloaded and its
/// report deleted, and nothing writes it again: the key stays gone over
/// many report intervals and the agent makes no request at rest. (The
/// agent of 5f891c6 unloaded the stopped unit again and again on its stale
/// view of the backend's states, and never wrote the deletion.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_stopped_then_deleted_leaves_no_report() {
    let c = cluster("stopped-deleted").await;
    let sim = sim();
    let agent = Running::start(c.registry.clone(), &sim, options("m1"));
    c.schedule(&[
        entry("a.service", "m1", JobState::Launched, V1),
        entry("b.service", "m1", JobState::Launched, V1),
    ])
    .await;
    c.wait_report("m1", "a.service", "active", "running", V1)
        .await;
    c.wait_report("m1", "b.service", "active", "running", V1)
        .await;

    // stop: loaded inactive dead, reported
    c.schedule(&[entry("a.service", "m1", JobState::Loaded, V1)])
        .await;
    c.wait_report("m1", "a.service", "inactive", "dead", V1)
        .await;
    // unload: the entry deleted
    c.unschedule("m1", "a.service").await;
    c.wait_no_report("m1", "a.service").await;
    assert!(
        !sim.states().contains_key("a.service"),
        "{:?}",
        sim.states()
    );

    // and it stays gone: ten report intervals, no more unloads, no write
    let before = agent.stats();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(c.report("m1", "a.service").await.is_none());
    let after = agent.stats();
    assert_eq!(after.unloads, 1, "{after:?}");
    assert_eq!(
        (after.report_puts, after.report_deletes, after.unit_errors),
        (before.report_puts, before.report_deletes, 0),
        "{after:?}"
    );
    assert_eq!(after.report_deletes, 1, "{after:?}");
    // the other unit is untouched and still reported
    c.wait_report("m1", "b.service", "active", "running", V1)
        .await;
    assert_eq!(sim.states()["b.service"], running());

    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_states_go_with_the_lease_in_one_step() {
    let c = cluster("presence").await;
    let sim = sim();
    c.schedule(&[entry("a.service", "m1", JobState::Launched, V1)])
        .await;
    let agent = Running::start(c.registry.clone(), &sim, options("m1"));
    let (_, first) = c
        .wait_report("m1", "a.service", "active", "running", V1)
        .await;
    assert_eq!(c.presence("m1").await.unwrap().1, first);
    let monitor = Monitor::start(&sim, &["a.service"]);

    // someone revokes the agent's lease: presence and state go in one
    // revision; the agent comes back on a new lease with both
    let keys = c.registry.keys();
    let mut w = c
        .client
        .watch(keys.prefix(), WatchOptions::new().prefix())
        .await
        .unwrap();
    c.client.revoke(first).await.unwrap();
    let gone = events(&mut w, 2).await;
    assert!(gone.iter().all(|e| e.0 == EventKind::Delete), "{gone:?}");
    assert_eq!(gone[0].2, gone[1].2, "deleted in one revision: {gone:?}");
    let deleted: Vec<&str> = gone.iter().map(|e| e.1.as_str()).collect();
    assert!(deleted.contains(&keys.machine("m1").as_str()), "{gone:?}");
    assert!(
        deleted.contains(&keys.state("m1", "a.service").as_str()),
        "{gone:?}"
    );
    let (_, second) = c
        .wait_report("m1", "a.service", "active", "running", V1)
        .await;
    assert_ne!(second, first);
    assert_eq!(c.presence("m1").await.unwrap().1, second);
    let s = agent.stats();
    assert_eq!((s.lease_grants, s.leases_lost), (2, 1), "{s:?}");
    assert_eq!((s.stops, s.unloads), (0, 0), "{s:?}");
    assert_eq!(monitor.finish(), Vec::<String>::new());

    // shutdown: units stopped and unloaded (fleet's purge), then the lease
    // revoked: presence and state gone in one revision
    let mut w = c
        .client
        .watch(keys.prefix(), WatchOptions::new().prefix())
        .await
        .unwrap();
    agent.shutdown().await;
    let gone = events(&mut w, 2).await;
    assert!(gone.iter().all(|e| e.0 == EventKind::Delete), "{gone:?}");
    assert_eq!(gone[0].2, gone[1].2, "deleted in one revision: {gone:?}");
    assert!(c.presence("m1").await.is_none());
    assert!(c.report("m1", "a.service").await.is_none());
    assert!(sim.states().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_purge_leaves_units_running() {
    let c = cluster("nopurge").await;
    let sim = sim();
    c.schedule(&[entry("a.service", "m1", JobState::Launched, V1)])
        .await;
    let mut o = options("m1");
    o.purge_on_shutdown = false;
    let agent = Running::start(c.registry.clone(), &sim, o);
    c.wait_report("m1", "a.service", "active", "running", V1)
        .await;
    agent.shutdown().await;
    assert!(c.presence("m1").await.is_none());
    assert!(c.report("m1", "a.service").await.is_none());
    assert_eq!(sim.states()["a.service"], running());

    // a new agent adopts it: loaded again (a no-op), not restarted
    let agent = Running::start(c.registry.clone(), &sim, options("m1"));
    c.wait_report("m1", "a.service", "active", "running", V1)
        .await;
    let s = agent.stats();
    assert_eq!((s.loads, s.starts, s.stops), (1, 0, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_keeps_units_running_and_reports_resume() {
    let mut c = cluster("restart").await;
    let sim = sim();
    c.schedule(&[
        entry("a.service", "m1", JobState::Launched, V1),
        entry("b.service", "m1", JobState::Launched, V1),
    ])
    .await;
    let mut o = options("m1");
    o.ttl = Duration::from_secs(3);
    let agent = Running::start(c.registry_at(&c.etcd.client_url), &sim, o);
    c.wait_report("m1", "a.service", "active", "running", V1)
        .await;
    c.wait_report("m1", "b.service", "active", "running", V1)
        .await;
    let monitor = Monitor::start(&sim, &["a.service"]);

    // etcd gone for longer than the agent's TTL; meanwhile b crashes
    let t = Instant::now();
    c.etcd.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sim.crash("b.service"));
    c.restart_etcd(Duration::from_secs(3)).await;
    eprintln!("etcd was down {:?}", t.elapsed());

    // the crash is reported, a stays running, a new entry is picked up
    c.wait_report("m1", "b.service", "failed", "failed", V1)
        .await;
    c.wait_report("m1", "a.service", "active", "running", V1)
        .await;
    c.schedule(&[entry("c.service", "m1", JobState::Launched, V1)])
        .await;
    c.wait_report("m1", "c.service", "active", "running", V1)
        .await;
    assert!(c.presence("m1").await.is_some());
    let s = agent.stats();
    eprintln!("{s:?}");
    assert_eq!((s.stops, s.unloads), (0, 0), "{s:?}");
    // given up for lost while etcd was away, found alive after its restart
    // (etcd renews leases when it comes back) and kept
    assert!(s.leases_lost >= 1 && s.lease_checks >= 1, "{s:?}");
    assert_eq!(s.lease_grants, 1, "{s:?}");
    assert!(s.watch_reconnects >= 1, "{s:?}");
    assert_eq!(monitor.finish(), Vec::<String>::new());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expired_during_an_outage_gives_a_new_lease_and_units_keep_running() {
    let c = cluster("expiry").await;
    let proxy = Proxy::start(c.etcd.client_port()).await;
    let sim = sim();
    c.schedule(&[
        entry("a.service", "m1", JobState::Launched, V1),
        entry("b.service", "m1", JobState::Loaded, V1),
    ])
    .await;
    let mut o = options("m1");
    o.ttl = Duration::from_secs(3);
    let agent = Running::start(c.registry_at(&proxy.url), &sim, o);
    let (_, first) = c
        .wait_report("m1", "a.service", "active", "running", V1)
        .await;
    c.wait_report("m1", "b.service", "inactive", "dead", V1)
        .await;
    let monitor = Monitor::start(&sim, &["a.service"]);

    // cut off: etcd expires the lease and deletes presence and states
    proxy.set(false);
    assert!(
        eventually(Duration::from_secs(10), || async {
            c.presence("m1").await.is_none()
        })
        .await,
        "the lease never expired"
    );
    assert!(c.report("m1", "a.service").await.is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set(true);

    // back: a new lease, presence and every report written again
    let (_, second) = c
        .wait_report("m1", "a.service", "active", "running", V1)
        .await;
    c.wait_report("m1", "b.service", "inactive", "dead", V1)
        .await;
    assert_ne!(first, second);
    assert_eq!(c.presence("m1").await.unwrap().1, second);
    let s = agent.stats();
    eprintln!("{s:?}");
    assert_eq!(s.lease_grants, 2, "{s:?}");
    assert!(s.leases_lost >= 1 && s.lease_checks >= 1, "{s:?}");
    assert_eq!((s.stops, s.unloads), (0, 0), "{s:?}");
    assert_eq!(monitor.finish(), Vec::<String>::new());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_units_are_unloaded_only_once_the_schedule_was_read() {
    let c = cluster("stale").await;
    let proxy = Proxy::start(c.etcd.client_port()).await;
    // what an earlier agent left behind: one unit still scheduled, one not
    let sim = sim();
    for u in ["keep.service", "stale.service"] {
        sim.load(u, V1).await.unwrap();
        sim.start(u).await.unwrap();
    }
    c.schedule(&[entry("keep.service", "m1", JobState::Launched, V1)])
        .await;
    eventually(Duration::from_secs(2), || async {
        sim.states().values().all(|s| *s == running())
    })
    .await;

    // etcd unreachable at start: nothing is touched
    proxy.set(false);
    let agent = Running::start(c.registry_at(&proxy.url), &sim, options("m1"));
    let monitor = Monitor::start(&sim, &["keep.service", "stale.service"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(monitor.finish(), Vec::<String>::new());
    let s = agent.stats();
    assert_eq!((s.loads, s.stops, s.unloads), (0, 0, 0), "{s:?}");
    assert!(s.schedule_reads >= 1);

    // reachable: the stale unit goes, the scheduled one is adopted as it runs
    let monitor = Monitor::start(&sim, &["keep.service"]);
    proxy.set(true);
    assert!(
        eventually(Duration::from_secs(20), || async {
            !sim.states().contains_key("stale.service")
        })
        .await
    );
    c.wait_report("m1", "keep.service", "active", "running", V1)
        .await;
    assert!(c.report("m1", "stale.service").await.is_none());
    let s = agent.stats();
    assert_eq!((s.starts, s.stops, s.unloads), (0, 0, 1), "{s:?}");
    assert_eq!(monitor.finish(), Vec::<String>::new());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_entries_are_refused_and_touch_nothing() {
    let c = cluster("hostile").await;
    let keys = c.registry.keys().clone();
    let sim = sim();
    // a unit left from before under a name whose entry is garbage
    sim.load("held.service", V1).await.unwrap();
    sim.start("held.service").await.unwrap();
    let put = |key: String, value: Vec<u8>| {
        let client = c.client.clone();
        async move {
            client.put(key, value, PutOptions::new()).await.unwrap();
        }
    };
    put(
        keys.schedule_entry("m1", "held.service"),
        b"{not json".to_vec(),
    )
    .await;
    c.schedule(&[entry("good.service", "m1", JobState::Launched, V1)])
        .await;
    let agent = Running::start(c.registry.clone(), &sim, options("m1"));
    let (good, _) = c
        .wait_report("m1", "good.service", "active", "running", V1)
        .await;
    eventually(Duration::from_secs(5), || async {
        sim.states().get("held.service") == Some(&running())
    })
    .await;
    assert_eq!(agent.stats().entries_refused, 1);
    let monitor = Monitor::start(&sim, &["good.service", "held.service"]);

    // written by hand into the prefix, while the agent watches
    let valid = |unit: &str, machine: &str| entry(unit, machine, JobState::Launched, V1);
    let mut forged = valid("good.service", "m1");
    forged.contents = V2.into();
    let prefix = keys.schedule_of("m1");
    let hostile: Vec<(String, Vec<u8>)> = vec![
        // a hash that does not match the text, over a running unit
        (
            keys.schedule_entry("m1", "good.service"),
            forged.to_json().into(),
        ),
        (
            keys.schedule_entry("m1", "good.service"),
            b"\xff\xfe".to_vec(),
        ),
        (
            format!("{prefix}a/b.service"),
            valid("b.service", "m1").to_json().into(),
        ),
        (
            format!("{prefix}.."),
            valid("x.service", "m1").to_json().into(),
        ),
        (
            format!("{prefix}../m2/x.service"),
            valid("x.service", "m1").to_json().into(),
        ),
        (
            keys.schedule_entry("m1", "x.service"),
            valid("y.service", "m1").to_json().into(),
        ),
        (
            keys.schedule_entry("m1", "z.service"),
            valid("z.service", "m2").to_json().into(),
        ),
        (
            keys.schedule_entry("m1", "i.service"),
            entry("i.service", "m1", JobState::Inactive, V1)
                .to_json()
                .into(),
        ),
        (keys.schedule_entry("m1", "held.service"), b"[]".to_vec()),
    ];
    let n = hostile.len() as u64;
    for (k, v) in hostile {
        put(k, v).await;
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            agent.stats().entries_refused == 1 + n
        })
        .await,
        "{:?}",
        agent.stats()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let names: Vec<String> = sim.states().into_keys().collect();
    assert_eq!(names, ["good.service", "held.service"]);
    assert_eq!(sim.contents("good.service").as_deref(), Some(V1));
    assert_eq!(c.report("m1", "good.service").await.unwrap().0, good);
    let s = agent.stats();
    assert_eq!(
        (s.loads, s.starts, s.stops, s.unloads),
        (1, 1, 0, 0),
        "{s:?}"
    );
    assert_eq!(monitor.finish(), Vec::<String>::new());

    // a valid entry again: taken (the same, so nothing to do); the garbage
    // key deleted: the unit under it is not scheduled, so it goes
    c.schedule(&[entry("good.service", "m1", JobState::Launched, V1)])
        .await;
    c.client
        .delete(
            keys.schedule_entry("m1", "held.service"),
            Default::default(),
        )
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            !sim.states().contains_key("held.service")
        })
        .await
    );
    let s = agent.stats();
    assert_eq!((s.loads, s.starts, s.unloads), (1, 1, 1), "{s:?}");
    assert_eq!(sim.states()["good.service"], running());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_its_own_prefix_and_no_request_at_rest() {
    let c = cluster("prefix").await;
    let keys = c.registry.keys().clone();
    let sim = sim();
    // records the agent must not read or act on: other machines'
    // schedules (m10 shares m1's first characters), units, states
    let other = |unit: &str, m: &str| entry(unit, m, JobState::Launched, V1);
    c.schedule(&[
        other("x.service", "m10"),
        other("y.service", "m2"),
        other("a.service", "m1"),
    ])
    .await;
    c.registry
        .create_unit(&record("z.service", V1))
        .await
        .unwrap();
    c.client
        .put(keys.schedule(), "junk", PutOptions::new())
        .await
        .unwrap();
    let agent = Running::start(c.registry.clone(), &sim, options("m1"));
    c.wait_report("m1", "a.service", "active", "running", V1)
        .await;
    c.schedule(&[other("w.service", "m10")]).await;
    c.client
        .put(
            keys.state("m10", "w.service"),
            "not a report",
            PutOptions::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let names: Vec<String> = sim.states().into_keys().collect();
    assert_eq!(names, ["a.service"]);
    let s = agent.stats();
    assert_eq!((s.schedule_reads, s.watches_created), (1, 1), "{s:?}");
    assert_eq!(s.entries_refused, 0, "it saw nothing of the others");

    // at rest: no request from the agent but keep-alives, as etcd counts
    let before = (agent.stats(), c.requests_but_keepalives());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = (agent.stats(), c.requests_but_keepalives());
    assert_eq!(before, after);
    assert_eq!(after.0.etcd_requests(), before.0.etcd_requests());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_watch_reads_the_schedule_again() {
    let c = cluster("compact").await;
    let proxy = Proxy::start(c.etcd.client_port()).await;
    let sim = sim();
    c.schedule(&[entry("a.service", "m1", JobState::Launched, V1)])
        .await;
    let agent = Running::start(c.registry_at(&proxy.url), &sim, options("m1"));
    c.wait_report("m1", "a.service", "active", "running", V1)
        .await;

    // while the agent is cut off: a goes, b comes, the history is compacted
    proxy.set(false);
    c.unschedule("m1", "a.service").await;
    c.schedule(&[entry("b.service", "m1", JobState::Launched, V1)])
        .await;
    let rev = c
        .client
        .get("/", GetOptions::new())
        .await
        .unwrap()
        .header
        .revision;
    c.client.compact(rev).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set(true);

    c.wait_report("m1", "b.service", "active", "running", V1)
        .await;
    c.wait_no_report("m1", "a.service").await;
    let names: Vec<String> = sim.states().into_keys().collect();
    assert_eq!(names, ["b.service"]);
    let s = agent.stats();
    assert!(s.watches_recreated >= 1, "{s:?}");
    assert_eq!(s.schedule_reads, s.watches_created, "{s:?}");
    assert!(s.schedule_reads >= 2, "{s:?}");
    agent.shutdown().await;
}

fn proc_status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sim_agents_in_one_process() {
    const AGENTS: usize = 200;
    const UNITS: usize = 2;
    let t0 = Instant::now();
    let c = cluster("many").await;
    let shared = c.registry_at(&c.etcd.client_url);
    let (threads0, rss0) = (proc_status("Threads:"), proc_status("VmRSS:"));
    let mut sims = Vec::new();
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let sim = SimUnitManager::new(SimOptions {
            start_delay: Duration::from_millis(50),
            stop_delay: Duration::ZERO,
        });
        let mut o = options(&format!("m{i:03}"));
        o.ttl = Duration::from_secs(10);
        o.report_interval = Duration::from_millis(200);
        agents.push(Running::start(shared.clone(), &sim, o));
        sims.push(sim);
    }
    let present = eventually(Duration::from_secs(30), || async {
        c.registry.machines().await.unwrap().records.len() == AGENTS
    })
    .await;
    assert!(present, "not every agent announced");
    let t_present = t0.elapsed();

    let t1 = Instant::now();
    let entries: Vec<ScheduleEntry> = (0..AGENTS)
        .flat_map(|i| {
            (0..UNITS).map(move |u| {
                entry(
                    &format!("u{u}-{i}.service"),
                    &format!("m{i:03}"),
                    JobState::Launched,
                    V1,
                )
            })
        })
        .collect();
    c.schedule(&entries).await;
    loop {
        let states = c.registry.states().await.unwrap();
        let up = states
            .records
            .iter()
            .filter(|r| r.active == "active" && r.sub == "running")
            .count();
        if up == AGENTS * UNITS {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "{up} of {} units reported running",
            AGENTS * UNITS
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let t_running = t1.elapsed();
    let (threads1, rss1) = (proc_status("Threads:"), proc_status("VmRSS:"));
    for s in &sims {
        assert_eq!(s.states().len(), UNITS);
    }

    // at rest: nothing but keep-alives
    let sum = |agents: &[Running]| {
        agents
            .iter()
            .map(|a| a.stats().etcd_requests())
            .sum::<u64>()
    };
    let before = (sum(&agents), c.requests_but_keepalives());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = (sum(&agents), c.requests_but_keepalives());
    assert_eq!(before, after, "requests at rest");
    let mut total = AgentStats::default();
    for a in &agents {
        let s = a.stats();
        assert_eq!((s.schedule_reads, s.watches_created), (1, 1), "{s:?}");
        total.report_puts += s.report_puts;
        total.lease_grants += s.lease_grants;
    }

    let t2 = Instant::now();
    futures_util::future::join_all(agents.into_iter().map(Running::shutdown)).await;
    assert!(c.registry.machines().await.unwrap().records.is_empty());
    assert!(c.registry.states().await.unwrap().records.is_empty());
    let t_down = t2.elapsed();
    eprintln!(
        "{AGENTS} agents: present after {t_present:?}, {} units running after {t_running:?}, \
         down in {t_down:?}; {} report writes, {} leases; threads {threads0} -> {threads1}, \
         RSS {rss0} -> {rss1} kB ({} kB per agent); total {:?}",
        AGENTS * UNITS,
        total.report_puts,
        total.lease_grants,
        rss1.saturating_sub(rss0) / AGENTS as u64,
        t0.elapsed()
    );
    assert!(
        threads1 < threads0 + 16,
        "threads grew from {threads0} to {threads1}"
    );
    assert!(t_running < Duration::from_secs(30));
    // loaded, activating, running: coalesced into about one write per unit
    assert!(
        total.report_puts <= (AGENTS * UNITS * 5 / 4) as u64,
        "{} report writes for {} units",
        total.report_puts,
        AGENTS * UNITS
    );
}
