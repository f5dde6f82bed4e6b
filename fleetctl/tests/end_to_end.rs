//! The tour end to end: a real etcd, the real engine and three
//! agents on simulated systemd in this process, and the fleetctl binary:
//! list-machines, submit, start (blocking until the agents report the
//! units active), Conflicts spreading `web@{1..3}` and refusing a fourth
//! (explained), list-units, list-unit-files, stop, unload, destroy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_etcd::Client;
use cairn_fleet::agent::{Agent, AgentOptions};
use cairn_fleet::engine::{Engine, EngineOptions};
use cairn_fleet::model::MachineRecord;
use cairn_fleet::registry::{Keys, Registry};
use cairn_fleet::systemd::{SimOptions, SimUnitManager};
use common::Fleet;

const MYAPP: &str = "[Unit]\nDescription=MyApp\n\n[Service]\nExecStart=/usr/bin/myapp\n";
const WEB: &str = "[Unit]\nDescription=Web %i\n\n[Service]\nExecStart=/usr/bin/web\n\n[X-Fleet]\nConflicts=web@*.service\n";

/// etcd, the engine and three agents (m1, m2, m3 at 10.0.0.1-3) running
/// in `rt` until `stop` says so.
fn cluster() -> (
    Fleet,
    tokio::runtime::Runtime,
    tokio::sync::watch::Sender<bool>,
) {
    let f = Fleet::with_leader_key("/test/not-the-engine");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = f.etcd.client_url.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    rt.block_on(async {
        let reg = || Registry::new(Client::new([url.as_str()]).unwrap(), Keys::default());
        let mut o = EngineOptions::new("engine-1");
        o.reconcile_interval = Duration::from_millis(300);
        o.lease_ttl = Duration::from_secs(3);
        o.debounce = Duration::from_millis(50);
        o.retry = Duration::from_millis(200);
        let engine = Engine::new(reg(), o);
        let mut s = stopped.clone();
        tokio::spawn(async move {
            let _ = engine
                .run(async move {
                    let _ = s.changed().await;
                })
                .await;
        });
        for i in 1..=3 {
            let m = MachineRecord {
                id: format!("m{i}aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
                public_ip: format!("10.0.0.{i}"),
                metadata: Default::default(),
                version: "0.1.0".into(),
            };
            let mut o = AgentOptions::new(m);
            o.ttl = Duration::from_secs(5);
            o.report_interval = Duration::from_millis(100);
            o.purge_on_shutdown = false;
            let sim = SimUnitManager::new(SimOptions {
                start_delay: Duration::from_millis(100),
                stop_delay: Duration::from_millis(100),
            });
            let agent = Agent::new(reg(), Arc::new(sim), o).unwrap();
            let mut s = stopped.clone();
            tokio::spawn(agent.run(async move {
                let _ = s.changed().await;
            }));
        }
    });
    // the agents announce themselves
    let mut machines = String::new();
    for _ in 0..50 {
        machines = f.fleetctl(&["list-machines", "--no-legend"]).stdout;
        if machines.lines().count() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        machines,
        "m1aaaaaa...\t10.0.0.1\t-\nm2aaaaaa...\t10.0.0.2\t-\nm3aaaaaa...\t10.0.0.3\t-\n"
    );
    (f, rt, stop)
}

#[test]
fn the_tour_with_the_real_engine_and_agents() {
    let (f, rt, stop) = cluster();

    f.write_unit("myapp.service", MYAPP);
    f.write_unit("web@.service", WEB);
    let r = f.fleetctl(&["submit", "myapp.service"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", ""),
        "{r:?}"
    );
    let r = f.fleetctl(&["start", "--block-attempts=10", "myapp.service"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .starts_with("Unit myapp.service launched on m1aaaaaa.../10.0.0.1"),
        "{r:?}"
    );
    let r = f.fleetctl(&["start", "--block-attempts=10", "web@{1..3}.service"]);
    assert_eq!(r.code, 0, "{r:?}");
    let mut on: Vec<&str> = r
        .stdout
        .lines()
        .map(|l| l.rsplit('/').next().unwrap())
        .collect();
    on.sort();
    assert_eq!(on, ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "{r:?}");
    let r = f.fleetctl(&["start", "--block-attempts=1", "web@4.service"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        "Error waiting for unit states, exit status: timed out waiting for unit web@4.service to report state launched\n"
    );
    let r = f.fleetctl(&["explain", "web@4.service"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with("web@4.service: cannot be scheduled"),
        "{r:?}"
    );
    assert_eq!(
        r.stdout
            .matches("Conflicts web@*.service with web@")
            .count(),
        3,
        "{r:?}"
    );

    let r = f.fleetctl(&["list-units", "--no-legend", "--fields=unit,active,sub"]);
    assert_eq!(
        r.stdout,
        "myapp.service\tactive\trunning\nweb@1.service\tactive\trunning\n\
         web@2.service\tactive\trunning\nweb@3.service\tactive\trunning\n",
        "{r:?}"
    );
    let r = f.fleetctl(&[
        "list-unit-files",
        "--no-legend",
        "--fields=unit,dstate,state",
    ]);
    assert_eq!(
        r.stdout,
        "myapp.service\tlaunched\tlaunched\nweb@1.service\tlaunched\tlaunched\n\
         web@2.service\tlaunched\tlaunched\nweb@3.service\tlaunched\tlaunched\n\
         web@4.service\tlaunched\tinactive\n",
        "{r:?}"
    );
    let r = f.fleetctl(&["cat", "web@2.service"]);
    assert_eq!(r.stdout, WEB);

    let r = f.fleetctl(&["stop", "--block-attempts=10", "myapp.service"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .starts_with("Unit myapp.service loaded on m1aaaaaa.../10.0.0.1"),
        "{r:?}"
    );
    stop.send(true).unwrap();
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// Unload and destroy end to end: a stopped unit unloaded (its schedule
/// entry deleted, the agent's report with it), a destroyed one freeing
/// its machine for the unit Conflicts kept out.
#[test]
fn unload_and_destroy_with_the_real_engine_and_agents() {
    let (f, rt, stop) = cluster();
    f.write_unit("myapp.service", MYAPP);
    f.write_unit("web@.service", WEB);
    // web@4 is kept out by Conflicts: the wait gives up on it
    let r = f.fleetctl(&[
        "start",
        "--block-attempts=3",
        "myapp.service",
        "web@{1..4}.service",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("waiting for unit web@4.service"), "{r:?}");
    let r = f.fleetctl(&["stop", "--block-attempts=10", "myapp.service"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = f.fleetctl(&["unload", "--block-attempts=10", "myapp.service"]);
    let states = f.rt.block_on(f.reg.states()).unwrap().records;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Unit myapp.service inactive\n"),
        "{r:?}\nreports: {states:?}"
    );
    // web@4 now finds the freed machine
    let r = f.fleetctl(&["destroy", "web@1.service"]);
    assert_eq!(r.stdout, "Destroyed web@1.service\n", "{r:?}");
    // web@4 is desired launched already: `start` skips it (as fleet's
    // does) and the engine places it by itself
    let r = f.fleetctl(&["start", "--block-attempts=10", "web@4.service"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");
    let want = "web@2.service\tactive\nweb@3.service\tactive\nweb@4.service\tactive\n";
    let mut r = f.fleetctl(&["list-units", "--no-legend", "--fields=unit,active"]);
    for _ in 0..100 {
        if r.stdout == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        r = f.fleetctl(&["list-units", "--no-legend", "--fields=unit,active"]);
    }
    assert_eq!(r.stdout, want, "{r:?}");
    // and it stays there: unload/destroy left no report behind
    let r = f.fleetctl(&["list-units", "--no-legend", "--fields=unit"]);
    assert_eq!(
        r.stdout, "web@2.service\nweb@3.service\nweb@4.service\n",
        "{r:?}"
    );

    stop.send(true).unwrap();
    rt.shutdown_timeout(Duration::from_secs(5));
}
