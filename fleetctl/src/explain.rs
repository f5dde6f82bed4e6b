//! `fleetctl explain UNIT`: why a unit is on its machine, or why no
//! machine takes it, machine by machine: the engine's own explanation
//! ([`ClusterView::explain`]) from one snapshot of the registry, which also
//! knows the machines drained for a reboot.

use anyhow::{Context as _, Result};
use cairn_fleet::engine::ClusterView;
use cairn_fleet::schedule::Verdict;

use crate::{unit_name, Ctx};

pub async fn explain(ctx: &Ctx, arg: &str) -> Result<u8> {
    let name = unit_name(arg).context("Error explaining unit")?;
    let view = ClusterView::read(&ctx.reg)
        .await
        .with_context(|| format!("Error explaining unit {name}: reading the registry"))?;
    let x = view.explain(name.as_str());
    println!("{x}");
    Ok(if x.verdict == Verdict::Unknown { 1 } else { 0 })
}
