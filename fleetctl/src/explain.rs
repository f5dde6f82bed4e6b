//! `fleetctl explain UNIT`: why a unit is on its machine, or why no
//! machine takes it, machine by machine, computed from one snapshot of
//! the registry with the scheduler the engine runs.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use cairn_fleet::schedule::{schedule, Cluster, Verdict};

use crate::view::{check_machine, warn_bad};
use crate::{unit_name, Ctx};

pub async fn explain(ctx: &Ctx, arg: &str) -> Result<u8> {
    let name = unit_name(arg).context("Error explaining unit")?;
    let snap = ctx
        .reg
        .snapshot()
        .await
        .with_context(|| format!("Error explaining unit {name}: reading the registry"))?;
    warn_bad(&snap.bad);
    let mut cluster = Cluster::default();
    for m in &snap.machines {
        match check_machine(m) {
            Ok(()) => cluster.machines.push(m.machine()),
            Err(e) => eprintln!("WARNING: skipping machine: {e}"),
        }
    }
    for u in &snap.units {
        match u.sched_unit() {
            Ok(s) => cluster.units.push(s),
            Err(e) => eprintln!("WARNING: skipping unit {}: {e}", u.name),
        }
    }
    let mut assignments = BTreeMap::new();
    for e in &snap.schedule {
        assignments
            .entry(e.unit.clone())
            .or_insert(e.machine.clone());
    }
    cluster.assignments = assignments;
    let plan = schedule(&cluster);
    let x = plan.explain(name.as_str());
    println!("{x}");
    Ok(if x.verdict == Verdict::Unknown { 1 } else { 0 })
}
