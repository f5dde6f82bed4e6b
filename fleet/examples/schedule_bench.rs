//! Times the scheduler on a large cluster: 1,000 machines and 10,000 units
//! with a mix of every `[X-Fleet]` option, scheduled from nothing, again
//! (nothing to do), after 10% of the machines died, and `explain`.
//!
//! `cargo run --release -p cairn-fleet --example schedule_bench [MACHINES UNITS [MODE]]`
//!
//! MODE `mixed` (the default) is the mix above; `conflicts` makes every
//! unit an instance with `Conflicts=web@*.service` (one per machine, the
//! rest unplaceable); `distinct` gives every unit its own Conflicts glob
//! (10,000 globs in the set).

use std::time::{Duration, Instant};

use cairn_fleet::schedule::{schedule, Cluster, Decision, Machine, SchedUnit};
use cairn_fleet::unit::{JobState, Unit};

fn unit(name: &str, xfleet: &str) -> SchedUnit {
    let text = format!(
        "[Unit]\nDescription={name}\n\n[Service]\nExecStart=/usr/bin/sleep infinity\n\n[X-Fleet]\n{xfleet}"
    );
    let u = Unit::parse(name, text).unwrap_or_else(|e| panic!("{e}"));
    SchedUnit::from_unit(&u, JobState::Launched)
}

fn machine_id(i: usize) -> String {
    // Shaped like /etc/machine-id: 32 hex digits, in no particular order.
    format!(
        "{:016x}{:016x}",
        (i as u64).wrapping_mul(0x9e3779b97f4a7c15),
        i
    )
}

fn build(machines: usize, units: usize, mode: &str) -> Cluster {
    let roles = ["web", "db", "cache", "batch"];
    let regions = ["eu", "us", "ap"];
    let ms: Vec<Machine> = (0..machines)
        .map(|i| {
            Machine::new(machine_id(i))
                .with("role", roles[i % 4])
                .with("region", regions[i % 3])
                .with("disk", if i % 5 == 0 { "hdd" } else { "ssd" })
        })
        .collect();
    let mut us = Vec::with_capacity(units);
    match mode {
        "mixed" => {}
        "conflicts" => {
            for i in 0..units {
                us.push(unit(
                    &format!("web@{i}.service"),
                    "Conflicts=web@*.service\n",
                ));
            }
        }
        "distinct" => {
            for i in 0..units {
                us.push(unit(
                    &format!("u{i}.service"),
                    &format!("Conflicts=u{}*.service\n", i + 1),
                ));
            }
        }
        other => panic!("unknown mode {other}: mixed, conflicts or distinct"),
    }
    if mode != "mixed" {
        return Cluster {
            machines: ms,
            units: us,
            assignments: Default::default(),
        };
    }
    let share = |p: usize| units * p / 1000;
    // 10% instances that must each have a machine to themselves.
    for i in 0..share(100) {
        us.push(unit(
            &format!("web@{i}.service"),
            "Conflicts=web@*.service\n",
        ));
    }
    // 5% groups of five that spread within their group.
    for i in 0..share(50) {
        us.push(unit(
            &format!("cache-{}@{}.service", i / 5, i % 5),
            "Conflicts=%p@*.service\n",
        ));
    }
    // 15% with metadata (AND, OR).
    for i in 0..share(150) {
        let md = match i % 3 {
            0 => "MachineMetadata=role=db\n",
            1 => "MachineMetadata=\"role=web\" \"disk=ssd\"\n",
            _ => {
                "MachineMetadata=region=eu\nMachineMetadata=region=us\nMachineMetadata=role=batch\n"
            }
        };
        us.push(unit(&format!("meta-{i}.service"), md));
    }
    // 2% pinned.
    for i in 0..share(20) {
        us.push(unit(
            &format!("pinned-{i}.service"),
            &format!("MachineID={}\n", machine_id(i * 7 % machines.max(1))),
        ));
    }
    // 1 per 1000 global.
    for i in 0..share(1) {
        let md = if i % 2 == 0 {
            "MachineMetadata=role=web\n"
        } else {
            ""
        };
        us.push(unit(
            &format!("global-{i}.service"),
            &format!("Global=true\n{md}"),
        ));
    }
    // The rest: plain units, every fifth with a sidekick following it,
    // every fiftieth replacing an older plain unit.
    let mut i = 0;
    while us.len() < units {
        us.push(unit(&format!("app-{i}.service"), ""));
        if i % 5 == 0 && us.len() < units {
            us.push(unit(
                &format!("app-{i}-sidekick.service"),
                &format!("MachineOf=app-{i}.service\n"),
            ));
        }
        if i % 50 == 49 && us.len() < units {
            us.push(unit(
                &format!("app-{i}-v2.service"),
                &format!("Replaces=app-{}.service\n", i - 1),
            ));
        }
        i += 1;
    }
    Cluster {
        machines: ms,
        units: us,
        assignments: Default::default(),
    }
}

fn count(ds: &[Decision]) -> (usize, usize) {
    let place = ds
        .iter()
        .filter(|d| matches!(d, Decision::Place { .. }))
        .count();
    (place, ds.len() - place)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |a| a.parse().expect("MACHINES UNITS [MODE]"))
    };
    let machines = num(0, 1000);
    let units = num(1, 10_000);
    let mode = args.get(2).map_or("mixed", String::as_str);

    let t = Instant::now();
    let mut cluster = build(machines, units, mode);
    println!(
        "{mode}: {} machines, {} units: parsing the unit files {}",
        cluster.machines.len(),
        cluster.units.len(),
        ms(t.elapsed())
    );

    for run in 1..=3 {
        let t = Instant::now();
        let plan = schedule(&cluster);
        let first = t.elapsed();
        let (place, unsched) = count(plan.decisions());
        let unplaced = plan.unplaced().len();
        let assigned = plan.assignments();

        let steady = Cluster {
            assignments: assigned.clone(),
            ..cluster.clone()
        };
        let t = Instant::now();
        let again = schedule(&steady);
        let second = t.elapsed();
        assert!(again.decisions().is_empty());

        // 10% of the machines die.
        let mut degraded = steady.clone();
        degraded.machines.retain(|m| {
            let i = u64::from_str_radix(&m.id[16..], 16).unwrap();
            i % 10 != 3
        });
        let t = Instant::now();
        let after = schedule(&degraded);
        let third = t.elapsed();
        let (p3, u3) = count(after.decisions());

        let t = Instant::now();
        let mut lines = 0;
        for u in [
            "web@5.service",
            "app-10-sidekick.service",
            "meta-1.service",
            "global-0.service",
        ] {
            lines += after.explain(u).machines.len();
        }
        let fourth = t.elapsed();

        println!(
            "run {run}: from nothing {} ({place} placed, {unsched} unscheduled, {unplaced} unplaced); \
             again {} (0 decisions); after 10% of machines died {} ({p3} placed, {u3} unscheduled); \
             4 explains {} ({lines} machine lines)",
            ms(first),
            ms(second),
            ms(third),
            ms(fourth)
        );
        if run == 1 {
            cluster.assignments = Default::default();
        }
    }
}
