//! `fleetctl explain` against a real etcd: a placed unit (and the option
//! that keeps it off the other machine), a unit no machine takes because
//! of Conflicts (which option excludes which machine), an unknown unit.

mod common;

use common::Fleet;

const M1: &str = "113f16a7b2c94ad3a4d4cd0bf7b5e3a1";
const M2: &str = "85c0c5951a6c4ee1b7d0a4e0c1e9f2d0";

#[test]
fn explain_a_placed_unit() {
    let f = Fleet::new();
    f.machine(M1, "172.17.8.103", "role=web");
    f.machine(M2, "172.17.8.102", "role=db");
    f.write_unit(
        "db.service",
        "[Service]\nExecStart=/bin/db\n\n[X-Fleet]\nMachineMetadata=role=db\n",
    );
    assert_eq!(f.fleetctl(&["start", "--no-block", "db.service"]).code, 0);
    f.schedule("db.service", M2);
    let r = f.fleetctl(&["explain", "db.service"]);
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("db.service: on {M2}, where it was: that machine still suits it"),
        "{r:?}"
    );
    let m1 = lines
        .iter()
        .find(|l| l.contains(M1))
        .expect("a line for M1");
    assert!(m1.contains("MachineMetadata"), "{r:?}");
    assert!(m1.contains("role=web"), "{r:?}");
    assert!(
        lines.iter().any(|l| l.contains(M2) && l.ends_with("here")),
        "{r:?}"
    );
}

#[test]
fn explain_a_unit_no_machine_takes() {
    let f = Fleet::new();
    f.machine(M1, "172.17.8.103", "");
    f.machine(M2, "172.17.8.102", "");
    f.write_unit(
        "web@.service",
        "[Service]\nExecStart=/bin/web %i\n\n[X-Fleet]\nConflicts=web@*.service\n",
    );
    let r = f.fleetctl(&["start", "--no-block", "web@{1..3}.service"]);
    assert_eq!(r.code, 0, "{r:?}");
    f.schedule("web@1.service", M1);
    f.schedule("web@2.service", M2);
    let r = f.fleetctl(&["explain", "web@3"]);
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("web@3.service: cannot be scheduled: "),
        "{r:?}"
    );
    let m1 = lines
        .iter()
        .find(|l| l.contains(M1))
        .expect("a line for M1");
    assert!(
        m1.contains("Conflicts web@*.service with web@1.service there"),
        "{r:?}"
    );
    let m2 = lines
        .iter()
        .find(|l| l.contains(M2))
        .expect("a line for M2");
    assert!(
        m2.contains("Conflicts web@*.service with web@2.service there"),
        "{r:?}"
    );
    let r = f.fleetctl(&["explain", "nope.service"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (1, "nope.service: no such unit\n"),
        "{r:?}"
    );
}
