//! `fleetctl explain UNIT`: why a unit is on its machine, or on which
//! machines a global unit runs, or why no machine takes it, with each
//! machine and the options that exclude it, in words.

use std::fmt;

use super::index::{DepthError, Index, Kind, Peer};
use super::state::{Excl, State};
use super::{Plan, Unplaced};

/// Why a unit is where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub unit: String,
    pub verdict: Verdict,
    /// Every machine (by ID), with its load and what it says about the
    /// unit; empty when the unit is not to be scheduled at all.
    pub machines: Vec<MachineNote>,
    /// Anything else worth knowing (ignored circular Replaces, units this
    /// one replaces).
    pub notes: Vec<String>,
}

/// The outcome for the unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No such unit.
    Unknown,
    /// Not to be scheduled (template, desired state inactive).
    NotScheduled(String),
    /// On `machine`: `stayed` when it was there before and still fits;
    /// else placed now, `moved_from` the machine it left and why.
    Placed {
        machine: String,
        stayed: bool,
        moved_from: Option<(String, String)>,
    },
    /// A global unit, running on these machines.
    Global { machines: Vec<String> },
    /// Wants a machine and has none: why.
    Unplaced(String),
}

/// One machine in an explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineNote {
    pub machine: String,
    /// Units on it after the plan (fleet's load).
    pub units: usize,
    pub note: Note,
}

/// What one machine says about the unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The unit is here.
    Here,
    /// The machine could take it (it is elsewhere, or on a machine chosen
    /// before; see the verdict).
    Allowed,
    /// Every reason the machine cannot take it.
    Excluded(Vec<String>),
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = &self.unit;
        match &self.verdict {
            Verdict::Unknown => write!(f, "{u}: no such unit")?,
            Verdict::NotScheduled(why) => write!(f, "{u}: not scheduled: {why}")?,
            Verdict::Placed {
                machine,
                stayed: true,
                ..
            } => write!(
                f,
                "{u}: on {machine}, where it was: that machine still suits it"
            )?,
            Verdict::Placed {
                machine,
                moved_from: Some((from, why)),
                ..
            } => write!(
                f,
                "{u}: on {machine}, moved from {from} ({why}); the least-loaded machine that can take it (fewest units, ties by machine ID)"
            )?,
            Verdict::Placed { machine, .. } => write!(
                f,
                "{u}: on {machine}, the least-loaded machine that can take it (fewest units, ties by machine ID)"
            )?,
            Verdict::Global { machines } => write!(
                f,
                "{u}: global, runs on {} of {} machines (those that pass its MachineMetadata and Conflicts)",
                machines.len(),
                self.machines.len()
            )?,
            Verdict::Unplaced(why) => write!(f, "{u}: cannot be scheduled: {why}")?,
        }
        for m in &self.machines {
            let plural = if m.units == 1 { "" } else { "s" };
            write!(f, "\n  {} ({} unit{plural}): ", m.machine, m.units)?;
            match &m.note {
                Note::Here => f.write_str("here")?,
                Note::Allowed => f.write_str("allowed")?,
                Note::Excluded(why) => f.write_str(&why.join("; "))?,
            }
        }
        for n in &self.notes {
            write!(f, "\n  note: {n}")?;
        }
        Ok(())
    }
}

pub(crate) fn explain(plan: &Plan<'_>, unit: &str) -> Explanation {
    let ix = &plan.ix;
    let st = &plan.st;
    let mut out = Explanation {
        unit: unit.to_string(),
        verdict: Verdict::Unknown,
        machines: Vec::new(),
        notes: Vec::new(),
    };
    let Some(&u) = ix.unit_ix.get(unit) else {
        return out;
    };
    let ui = u as usize;
    match ix.kind[ui] {
        Kind::Template => {
            out.verdict = Verdict::NotScheduled(
                "a template: only its instances (name@instance.type) run".into(),
            );
            return out;
        }
        _ if !ix.want[ui] => {
            out.verdict = Verdict::NotScheduled("desired state inactive".into());
            return out;
        }
        _ => {}
    }
    for &c in &ix.replace_cycle[ui] {
        out.notes.push(format!(
            "Replaces between {unit} and {} ignored: circular replacement",
            ix.name(c)
        ));
    }
    for &(v, p) in &ix.replaces[ui] {
        out.notes.push(format!(
            "replaces {} (Replaces={p}): it cannot share a machine with {unit}",
            ix.name(v)
        ));
    }
    let mut why = Vec::new();
    for m in 0..ix.machines.len() as u32 {
        let present = st.present(ix, u, m);
        let note = if present {
            Note::Here
        } else {
            why.clear();
            if st.check(ix, u, m, Some(&mut why)) {
                Note::Allowed
            } else {
                Note::Excluded(why.iter().map(|e| render(ix, st, u, m, e)).collect())
            }
        };
        out.machines.push(MachineNote {
            machine: ix.mid(m).to_string(),
            units: st.load[m as usize] as usize,
            note,
        });
    }
    out.verdict = if ix.kind[ui] == Kind::Global {
        Verdict::Global {
            machines: st.global_on[ui]
                .iter()
                .map(|&m| ix.mid(m).to_string())
                .collect(),
        }
    } else if let Some(m) = st.assign[ui] {
        let stayed = plan.initial[ui] == Some(m);
        let moved_from = match (&plan.initial[ui], &plan.reason[ui]) {
            (Some(from), Some(why)) if !stayed => {
                Some((ix.mid(*from).to_string(), why.to_string()))
            }
            _ => None,
        };
        Verdict::Placed {
            machine: ix.mid(m).to_string(),
            stayed,
            moved_from,
        }
    } else {
        let why = plan
            .unplaced
            .get(&u)
            .cloned()
            .unwrap_or(Unplaced::NoCandidate);
        Verdict::Unplaced(summary(ix, st, u, &why))
    };
    out
}

/// One line on why a unit has no machine.
pub(crate) fn summary(ix: &Index<'_>, st: &State, u: u32, why: &Unplaced) -> String {
    match why {
        Unplaced::NoMachines => "no machines in the cluster".into(),
        Unplaced::Static(DepthError::Cycle(c)) => format!(
            "MachineOf loop: {}",
            c.iter()
                .map(|&x| ix.name(x))
                .collect::<Vec<_>>()
                .join(" -> ")
        ),
        Unplaced::Static(DepthError::ReplacesPeer(v)) => format!(
            "it replaces {}, which it must share a machine with (MachineOf): it could never stay",
            ix.name(*v)
        ),
        Unplaced::MoveLimit => format!(
            "pushed around by Replaces more than {} times in one round; tried again next round",
            super::MOVE_LIMIT
        ),
        Unplaced::NoCandidate => {
            for p in &ix.peers[u as usize] {
                match p {
                    Peer::Unknown(name) => return format!("MachineOf={name}: no such unit"),
                    Peer::Unit(p) => {
                        if let Some(text) = peer_nowhere(ix, st, *p) {
                            return text;
                        }
                    }
                }
            }
            "no machine can take it".into()
        }
    }
}

/// When a MachineOf peer is on no machine: why, in words.
fn peer_nowhere(ix: &Index<'_>, st: &State, p: u32) -> Option<String> {
    let name = ix.name(p);
    let pi = p as usize;
    let on_none = match ix.kind[pi] {
        Kind::Global => st.global_on[pi].is_empty(),
        _ => st.assign[pi].is_none(),
    };
    if !on_none {
        return None;
    }
    Some(match ix.kind[pi] {
        Kind::Template => format!("MachineOf={name}: a template, never scheduled"),
        _ if !ix.want[pi] => {
            format!("MachineOf={name}: {name} is not scheduled (desired state inactive)")
        }
        _ => format!("MachineOf={name}: {name} is not scheduled"),
    })
}

/// A reason against machine `m`, in words.
pub(crate) fn render(ix: &Index<'_>, st: &State, u: u32, m: u32, e: &Excl) -> String {
    let unit = ix.units[u as usize];
    let machine = ix.machines[m as usize];
    match e {
        Excl::MachineId => format!(
            "MachineID={} names another machine",
            unit.requirements.machine_id.as_deref().unwrap_or("")
        ),
        Excl::Metadata => {
            let mut parts = Vec::new();
            for (k, values) in &unit.requirements.metadata {
                let want = values.iter().cloned().collect::<Vec<_>>().join("|");
                match machine.metadata.get(k) {
                    Some(v) if values.contains(v) => {}
                    Some(v) => {
                        parts.push(format!("MachineMetadata {k}={want}: machine has {k}={v}"))
                    }
                    None => parts.push(format!("MachineMetadata {k}={want}: machine has no {k}")),
                }
            }
            parts.join("; ")
        }
        Excl::PeerUnknown(name) => format!("MachineOf={name}: no such unit"),
        Excl::PeerAway(p) => {
            let name = ix.name(*p);
            if let Some(text) = peer_nowhere(ix, st, *p) {
                return text;
            }
            match ix.kind[*p as usize] {
                Kind::Global => format!("MachineOf={name}: global {name} does not run here"),
                _ => format!(
                    "MachineOf={name}: {name} is on {}",
                    st.assign[*p as usize].map_or("", |x| ix.mid(x))
                ),
            }
        }
        Excl::ConflictMine { pattern, other } => format!(
            "Conflicts {} with {} there",
            ix.patterns[*pattern as usize],
            ix.name(*other)
        ),
        Excl::ConflictTheirs { other, pattern } => format!(
            "{} there has Conflicts={}",
            ix.name(*other),
            ix.patterns[*pattern as usize]
        ),
        Excl::ReplacedBy { other } => {
            let pattern = ix.replaced_by[u as usize]
                .iter()
                .find(|(x, _)| x == other)
                .map_or("", |(_, p)| p);
            format!("{} there replaces it (Replaces={pattern})", ix.name(*other))
        }
    }
}
