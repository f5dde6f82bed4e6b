//! The simulated systemd (`fleetd --systemd=sim`) behind the agent's
//! `UnitManager` trait: states, delays, replaced jobs, unload, refusals,
//! change reports, and a thousand managers in one process.

use std::time::{Duration, Instant};

use cairn_fleet::systemd::{
    changes, Backend, DbusOptions, SimOptions, SimUnitManager, StateChange, SystemdError,
    SystemdMode, UnitManager, UnitState, UnitStates,
};
use tokio::sync::watch;

const UNIT: &str = "[Service]\nExecStart=/bin/sleep 30\n";

fn running() -> UnitState {
    UnitState::new("loaded", "active", "running")
}

fn sim(start_ms: u64, stop_ms: u64) -> SimUnitManager {
    SimUnitManager::new(SimOptions {
        start_delay: Duration::from_millis(start_ms),
        stop_delay: Duration::from_millis(stop_ms),
    })
}

/// Waits (at most 5 s) until `name` is in `state` (`None`: gone).
async fn wait_for(rx: &mut watch::Receiver<UnitStates>, name: &str, state: Option<&UnitState>) {
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|s| s.get(name) == state),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} never became {state:?}"))
    .unwrap();
}

#[tokio::test]
async fn load_start_stop_unload_without_delays() {
    let m = sim(0, 0);
    let mut rx = m.subscribe();
    m.load("a.service", UNIT).await.unwrap();
    assert_eq!(m.states()["a.service"], UnitState::loaded_inactive());
    assert_eq!(m.contents("a.service").as_deref(), Some(UNIT));
    m.start("a.service").await.unwrap();
    assert_eq!(m.states()["a.service"], running());
    wait_for(&mut rx, "a.service", Some(&running())).await;
    m.stop("a.service").await.unwrap();
    assert_eq!(m.states()["a.service"], UnitState::loaded_inactive());
    m.unload("a.service").await.unwrap();
    assert!(m.states().is_empty());
    wait_for(&mut rx, "a.service", None).await;
}

#[tokio::test]
async fn start_and_stop_take_their_delays() {
    let m = sim(150, 100);
    m.load("a.service", UNIT).await.unwrap();
    let t = Instant::now();
    m.start("a.service").await.unwrap();
    assert_eq!(
        m.states()["a.service"],
        UnitState::new("loaded", "activating", "start")
    );
    let mut rx = m.subscribe();
    wait_for(&mut rx, "a.service", Some(&running())).await;
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );

    // Starting a running unit is a no-op, as in systemd.
    m.start("a.service").await.unwrap();
    assert_eq!(m.states()["a.service"], running());

    let t = Instant::now();
    m.stop("a.service").await.unwrap();
    assert_eq!(
        m.states()["a.service"],
        UnitState::new("loaded", "deactivating", "stop")
    );
    wait_for(&mut rx, "a.service", Some(&UnitState::loaded_inactive())).await;
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_stop_replaces_a_pending_start() {
    let m = sim(200, 0);
    m.load("a.service", UNIT).await.unwrap();
    let mut rx = m.subscribe();
    m.start("a.service").await.unwrap();
    m.stop("a.service").await.unwrap();
    assert_eq!(m.states()["a.service"], UnitState::loaded_inactive());
    rx.mark_unchanged();
    // The start's timer fires and must not bring the unit up.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(m.states()["a.service"], UnitState::loaded_inactive());
    assert!(!rx.has_changed().unwrap());
}

#[tokio::test]
async fn unload_stops_a_running_unit_first() {
    let m = sim(0, 100);
    m.load("a.service", UNIT).await.unwrap();
    m.start("a.service").await.unwrap();
    let mut rx = m.subscribe();
    let mut seen = Vec::new();
    let watcher = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let s = rx.borrow_and_update().get("a.service").cloned();
            seen.push(s.clone());
            if s.is_none() {
                break;
            }
        }
        seen
    });
    let t = Instant::now();
    m.unload("a.service").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(m.states().is_empty());
    assert!(m.contents("a.service").is_none());
    let seen = watcher.await.unwrap();
    assert_eq!(
        seen,
        vec![
            Some(UnitState::new("loaded", "deactivating", "stop")),
            Some(UnitState::loaded_inactive()),
            None
        ]
    );
}

#[tokio::test]
async fn loads_and_unloads_are_idempotent() {
    let m = sim(0, 0);
    m.load("a.service", UNIT).await.unwrap();
    m.start("a.service").await.unwrap();
    // New text: the unit keeps running (as after a daemon-reload).
    m.load("a.service", "[Service]\nExecStart=/bin/true\n")
        .await
        .unwrap();
    assert_eq!(m.states()["a.service"], running());
    assert_eq!(
        m.contents("a.service").as_deref(),
        Some("[Service]\nExecStart=/bin/true\n")
    );
    m.unload("b.service").await.unwrap();
    m.unload("a.service").await.unwrap();
    m.unload("a.service").await.unwrap();
    assert!(m.states().is_empty());
}

#[tokio::test]
async fn only_managed_units_and_valid_names() {
    let m = sim(0, 0);
    for verb in ["start", "stop"] {
        let e = match verb {
            "start" => m.start("sshd.service").await,
            _ => m.stop("sshd.service").await,
        }
        .unwrap_err();
        assert!(matches!(e, SystemdError::NotManaged { .. }), "{e}");
        assert!(e.to_string().contains("sshd.service"), "{e}");
    }
    for bad in ["../x.service", "a/b.service", ".x.service", "", "x"] {
        let e = m.load(bad, UNIT).await.unwrap_err();
        assert!(matches!(e, SystemdError::BadName { .. }), "{bad:?}: {e}");
        assert!(m.start(bad).await.is_err());
        assert!(m.unload(bad).await.is_err());
    }
    assert!(m.states().is_empty());
}

#[tokio::test]
async fn crashes_are_reported_and_a_start_recovers() {
    let m = sim(0, 0);
    m.load("a.service", UNIT).await.unwrap();
    m.start("a.service").await.unwrap();
    let mut rx = m.subscribe();
    assert!(m.crash("a.service"));
    assert!(!m.crash("b.service"));
    let failed = UnitState::new("loaded", "failed", "failed");
    wait_for(&mut rx, "a.service", Some(&failed)).await;
    // Stopping a failed unit leaves it failed, as systemd does.
    m.stop("a.service").await.unwrap();
    assert_eq!(m.states()["a.service"], failed);
    m.start("a.service").await.unwrap();
    assert_eq!(m.states()["a.service"], running());
}

#[tokio::test]
async fn a_subscriber_reconstructs_every_change_with_changes() {
    let m = sim(0, 0);
    let mut rx = m.subscribe();
    let mut seen = UnitStates::new();
    let mut log: Vec<StateChange> = Vec::new();
    for i in 0..5 {
        m.load(&format!("u{i}.service"), UNIT).await.unwrap();
    }
    m.start("u1.service").await.unwrap();
    m.unload("u4.service").await.unwrap();
    // One wake-up covers all of it.
    rx.changed().await.unwrap();
    let now = rx.borrow_and_update().clone();
    log.extend(changes(&seen, &now));
    seen = now;
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(seen.len(), 4);
    assert_eq!(seen["u1.service"], running());
    assert!(!rx.has_changed().unwrap());
}

/// The agent sees one trait whatever `--systemd` says.
async fn drive(m: &impl UnitManager, names: &[String]) {
    let units: Vec<(String, String)> = names.iter().map(|n| (n.clone(), UNIT.into())).collect();
    for r in m.load_all(&units).await {
        r.unwrap();
    }
    for n in names {
        m.start(n).await.unwrap();
    }
}

#[tokio::test]
async fn backend_in_sim_mode() {
    let b = Backend::open(
        "sim".parse::<SystemdMode>().unwrap(),
        DbusOptions::default(),
        SimOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(b.mode(), SystemdMode::Sim);
    let names: Vec<String> = (0..3).map(|i| format!("web@{i}.service")).collect();
    drive(&b, &names).await;
    assert!(b.states().values().all(|s| *s == running()));
    assert_eq!(b.states().len(), 3);
}

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A thousand agents' systemds with ten units each in one process: the
/// scale benchmark's shape. No thread per unit, no task per idle unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_managers_in_one_process() {
    let before = threads();
    let t = Instant::now();
    let managers: Vec<SimUnitManager> = (0..1000).map(|_| sim(20, 0)).collect();
    let mut waits = Vec::new();
    for (i, m) in managers.iter().enumerate() {
        let names: Vec<String> = (0..10).map(|u| format!("m{i}-u{u}.service")).collect();
        drive(m, &names).await;
        let mut rx = m.subscribe();
        waits.push(tokio::spawn(async move {
            rx.wait_for(|s| s.len() == 10 && s.values().all(|st| st.is_active()))
                .await
                .map(|_| ())
        }));
    }
    for w in waits {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("all units running")
            .unwrap()
            .unwrap();
    }
    let elapsed = t.elapsed();
    let total: usize = managers.iter().map(|m| m.states().len()).sum();
    assert_eq!(total, 10_000);
    let added = threads().saturating_sub(before);
    eprintln!("10,000 simulated units running in {elapsed:?}; {added} threads added");
    assert!(added <= 4, "{added} threads added");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
}
