//! The `fleetd` binary as a user runs it, in separate processes against a
//! real etcd 3.4 on 127.0.0.1, on simulated systemd (`--systemd=sim`, a
//! documented mode of the binary): two fleetd processes of two agents
//! each, both standing for the engine. Units submitted through the
//! registry (as fleetctl does) run; `Conflicts` spreads template
//! instances; killing the process (SIGKILL: a machine powered off) that
//! runs a unit moves the unit to a machine of the other process once the
//! dead agents' leases expire, with a new engine elected if the leader
//! died; the leader's process frozen (SIGSTOP) past its lease is replaced
//! and, woken, writes nothing (no unit on two machines at any revision of
//! the schedule); SIGTERM purges the process's machines at once. Bad
//! settings are refused with the variable or flag named.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_etcd::Client;
use cairn_fleet::model::UnitRecord;
use cairn_fleet::registry::{Keys, Registry};
use cairn_fleet::unit::JobState;
use cairn_testkit::Etcd;

const FLEETD: &str = env!("CARGO_BIN_EXE_fleetd");

struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(dir: &std::path::Path, etcd: &Etcd, id: &str, extra: &[&str]) -> Daemon {
        let log = dir.join(format!("fleetd-{id}.log"));
        let conf = dir.join("empty.conf");
        std::fs::write(&conf, "").unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(FLEETD)
            .args(["--systemd=sim", "--sim-agents=2"])
            .args((!extra.iter().any(|a| a.starts_with("--agent-ttl"))).then_some("--agent-ttl=3s"))
            .args(["--machine-id", id, "--public-ip", "127.0.0.1"])
            .args(["--etcd-servers", &etcd.client_url])
            .args(["--engine-reconcile-interval", "1"])
            .arg("--config")
            .arg(&conf)
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("FLEET_METADATA")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "fleetd ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn registry(etcd: &Etcd) -> Registry {
    Registry::new(
        Client::new([etcd.client_url.as_str()]).unwrap(),
        Keys::default(),
    )
}

/// unit -> (machine, active/sub) from the agents' reports.
async fn running(r: &Registry) -> BTreeMap<String, (String, String)> {
    r.states()
        .await
        .unwrap()
        .records
        .into_iter()
        .map(|s| (s.unit, (s.machine, format!("{}/{}", s.active, s.sub))))
        .collect()
}

async fn wait_for<F>(
    r: &Registry,
    what: &str,
    limit: Duration,
    ok: F,
) -> BTreeMap<String, (String, String)>
where
    F: Fn(&BTreeMap<String, (String, String)>) -> bool,
{
    let t = Instant::now();
    loop {
        let now = running(r).await;
        if ok(&now) {
            return now;
        }
        assert!(t.elapsed() < limit, "{what} not within {limit:?}: {now:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_machines_units_move_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), "fleetd");
    let mut a = Daemon::start(dir.path(), &etcd, "a", &["--metadata", "rack=a"]);
    let mut b = Daemon::start(dir.path(), &etcd, "b", &["--metadata", "rack=b"]);
    let r = registry(&etcd);
    let t = Instant::now();
    loop {
        let m = r.machines().await.unwrap().records;
        if m.len() == 4 {
            let ids: Vec<&str> = m.iter().map(|m| m.id.as_str()).collect();
            assert_eq!(ids, ["a-0001", "a-0002", "b-0001", "b-0002"]);
            assert_eq!(m[2].metadata.get("rack").map(String::as_str), Some("b"));
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{m:?}\n{}\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // as fleetctl start: the unit with desired state launched
    let myapp =
        "[Service]\nExecStart=/bin/sh -c 'while true; do echo Hello World; sleep 1; done'\n";
    r.create_unit(&UnitRecord::submit("myapp.service", myapp, JobState::Launched).unwrap())
        .await
        .unwrap();
    let web = "[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nConflicts=web@*.service\n";
    for i in 1..=3 {
        r.create_unit(
            &UnitRecord::submit(&format!("web@{i}.service"), web, JobState::Launched).unwrap(),
        )
        .await
        .unwrap();
    }
    let now = wait_for(&r, "4 units running", Duration::from_secs(20), |s| {
        s.len() == 4 && s.values().all(|(_, st)| st == "active/running")
    })
    .await;
    let webs: std::collections::BTreeSet<&String> = now
        .iter()
        .filter(|(u, _)| u.starts_with("web@"))
        .map(|(_, (m, _))| m)
        .collect();
    assert_eq!(webs.len(), 3, "Conflicts put two on one machine: {now:?}");

    // power off the process whose machine runs myapp
    let host = now["myapp.service"].0.clone();
    let (dead, alive) = if host.starts_with("a-") {
        (&mut a, "b-")
    } else {
        (&mut b, "a-")
    };
    let killed = Instant::now();
    dead.kill();
    let after = wait_for(&r, "myapp moved", Duration::from_secs(40), |s| {
        s.get("myapp.service")
            .is_some_and(|(m, st)| m.starts_with(alive) && st == "active/running")
    })
    .await;
    let moved = killed.elapsed();
    eprintln!(
        "myapp moved from {host} to {} in {moved:.1?}",
        after["myapp.service"].0
    );
    // two machines left: two web instances run, on different machines;
    // the third waits for a machine (Conflicts are never broken)
    let after = wait_for(&r, "web on the survivors", Duration::from_secs(20), |s| {
        s.iter()
            .filter(|(u, (m, st))| {
                u.starts_with("web@") && m.starts_with(alive) && st == "active/running"
            })
            .count()
            == 2
    })
    .await;
    let webs: Vec<&String> = after
        .iter()
        .filter(|(u, _)| u.starts_with("web@"))
        .map(|(_, (m, _))| m)
        .collect();
    assert_eq!(webs.len(), 2, "{after:?}");
    assert_ne!(webs[0], webs[1]);
    let schedule = r.schedule().await.unwrap().records;
    assert!(
        schedule.iter().all(|e| e.machine.starts_with(alive)),
        "{schedule:?}"
    );
}

/// Sends `sig` to the daemon.
fn signal(d: &Daemon, sig: rustix::process::Signal) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(d.child.id() as i32).unwrap(),
        sig,
    )
    .unwrap();
}

/// The leader engine frozen (SIGSTOP) past its 10 s lease, with its
/// agents: the other process's engine takes over and moves the frozen
/// machines' units to its own; when the old leader wakes (SIGCONT) with
/// its stale view and timers due, its fenced writes fail and it follows.
/// A watch of the whole schedule checks every revision: no non-global
/// unit on two machines, and no Conflicts pair on one, ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_and_writes_nothing_when_it_wakes() {
    use cairn_etcd::{EventKind, WatchOptions, WatchUpdate};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), "fleetd-frozen");
    let mut a = Daemon::start(dir.path(), &etcd, "a", &[]);
    let r = registry(&etcd);
    // a leads alone first (b starts once a was elected)
    let t = Instant::now();
    while r.leader_at(0).await.unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", a.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut b = Daemon::start(dir.path(), &etcd, "b", &[]);
    let first = r.leader_at(0).await.unwrap().unwrap();
    assert!(first.value.starts_with(b"a"), "{:?}", first.value);
    let web = "[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nConflicts=web@*.service\n";
    for i in 1..=3 {
        r.create_unit(
            &UnitRecord::submit(&format!("web@{i}.service"), web, JobState::Launched).unwrap(),
        )
        .await
        .unwrap();
    }
    for i in 1..=5 {
        r.create_unit(
            &UnitRecord::submit(
                &format!("u{i}.service"),
                "[Service]\nExecStart=/bin/sleep 1000\n",
                JobState::Launched,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    }
    wait_for(&r, "8 units running", Duration::from_secs(20), |s| {
        s.len() == 8 && s.values().all(|(_, st)| st == "active/running")
    })
    .await;

    // every revision of the schedule from here on
    let sched = r.schedule().await.unwrap();
    let mut w = r
        .etcd()
        .watch(
            r.keys().schedule(),
            WatchOptions::new()
                .prefix()
                .start_revision(sched.revision + 1),
        )
        .await
        .unwrap();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let checker = {
        let (keys, v) = (r.keys().clone(), violations.clone());
        let mut on: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for e in sched.records {
            on.entry(e.unit).or_default().insert(e.machine);
        }
        tokio::spawn(async move {
            while let Some(Ok(u)) = w.next().await {
                let WatchUpdate::Events { events, .. } = u else {
                    continue;
                };
                let mut i = 0;
                while i < events.len() {
                    let rev = events[i].kv.mod_revision;
                    while i < events.len() && events[i].kv.mod_revision == rev {
                        let key = events[i].kv.key_str();
                        let (m, unit) = keys.split_machine_unit(&key).unwrap();
                        let ms = on.entry(unit.to_string()).or_default();
                        if events[i].kind == EventKind::Delete {
                            ms.remove(m);
                        } else {
                            ms.insert(m.to_string());
                        }
                        i += 1;
                    }
                    let mut webs_on: BTreeMap<&String, usize> = BTreeMap::new();
                    for (unit, ms) in &on {
                        if ms.len() > 1 {
                            v.lock()
                                .unwrap()
                                .push(format!("revision {rev}: {unit} on {ms:?}"));
                        }
                        if unit.starts_with("web@") {
                            for m in ms {
                                *webs_on.entry(m).or_default() += 1;
                            }
                        }
                    }
                    if webs_on.values().any(|n| *n > 1) {
                        v.lock()
                            .unwrap()
                            .push(format!("revision {rev}: Conflicts broken: {on:?}"));
                    }
                }
            }
        })
    };

    // freeze the leader's process: its engine and both its agents
    signal(&a, rustix::process::Signal::STOP);
    let frozen = Instant::now();
    let t = Instant::now();
    loop {
        let l = r.leader_at(0).await.unwrap();
        if l.as_ref().is_some_and(|l| l.value.starts_with(b"b")) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("b's engine leads {:.1?} after a froze", frozen.elapsed());
    // b's machines take every unit they can (web@ one each: two of three)
    wait_for(&r, "units on b's machines", Duration::from_secs(20), |s| {
        s.iter()
            .filter(|(_, (m, st))| m.starts_with("b-") && st == "active/running")
            .count()
            == 7
    })
    .await;
    let before_wake = r.schedule().await.unwrap().records;
    // a wakes: a stale view, a lost lease, timers due
    signal(&a, rustix::process::Signal::CONT);
    let woke = Instant::now();
    let t = Instant::now();
    while !a.log().contains("no longer leader") {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", a.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "a noticed it was deposed {:.1?} after waking",
        woke.elapsed()
    );
    // its machines come back (new leases); b still leads; the cluster
    // settles with every unit on one machine and running
    wait_for(&r, "settled", Duration::from_secs(30), |s| {
        s.len() == 8 && s.values().all(|(_, st)| st == "active/running")
    })
    .await;
    let leader = r.leader_at(0).await.unwrap().unwrap();
    assert!(leader.value.starts_with(b"b"), "{:?}", leader.value);
    let after = r.schedule().await.unwrap().records;
    for e in &before_wake {
        assert!(
            after
                .iter()
                .any(|x| x.unit == e.unit && x.machine == e.machine),
            "{} moved off {} when a woke",
            e.unit,
            e.machine
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    checker.abort();
    let v = violations.lock().unwrap().clone();
    assert!(v.is_empty(), "{v:?}\n{}", a.log());
    a.kill();
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_purges_the_machines_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::single(dir.path(), "fleetd-term");
    let mut a = Daemon::start(dir.path(), &etcd, "solo", &["--agent-ttl=60s"]);
    let r = registry(&etcd);
    r.create_unit(
        &UnitRecord::submit(
            "hello.service",
            "[Service]\nExecStart=/bin/true\n",
            JobState::Launched,
        )
        .unwrap(),
    )
    .await
    .unwrap();
    wait_for(&r, "hello running", Duration::from_secs(20), |s| {
        s.len() == 1
    })
    .await;
    let t = Instant::now();
    let status = a.terminate();
    assert!(status.success(), "{status:?}\n{}", a.log());
    // with a 60 s TTL, presence and reports went by the purge, not expiry
    assert!(r.machines().await.unwrap().records.is_empty());
    assert!(running(&r).await.is_empty());
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(a.log().contains("SIGTERM: stopping"), "{}", a.log());
}

#[test]
fn bad_settings_are_refused_naming_where_they_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.conf");
    std::fs::write(&empty, "").unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let o = Command::new(FLEETD)
            .args(args)
            .arg("--config")
            .arg(&empty)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[], &[("FLEET_AGENT_TTL", "soon")]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        "fleetd: error: environment variable FLEET_AGENT_TTL: agent_ttl: expected a duration such as 30s, 1m30s or 500ms, got \"soon\""
    );
    let (code, err) = run(&["--metadata", "role"], &[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        "fleetd: error: flag --metadata: metadata: metadata \"role\" is not key=value"
    );
    let conf = dir.path().join("fleet.conf");
    std::fs::write(&conf, "# mine\nagent_tl=10s\n").unwrap();
    let o = Command::new(FLEETD)
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err.trim(),
        format!(
            "fleetd: error: {}:2: unknown option \"agent_tl\" (did you mean \"agent_ttl\"?)",
            conf.display()
        )
    );
    let (code, err) = run(&["--systemd=dbus", "--sim-agents=3", "--machine-id=x"], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("sim_agents 3 needs --systemd=sim"), "{err}");
    let (code, err) = run(
        &["--etcd-certfile=/c.pem", "--machine-id=x", "--systemd=sim"],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("need etcd_cafile too"), "{err}");
}
