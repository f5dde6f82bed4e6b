//! The scheduler as a pure function: from machines, units and the current
//! schedule to the decisions (place unit U on machine M, unschedule U from
//! M) that fleet's engine would make, honouring every `[X-Fleet]` option,
//! least-loaded and deterministic, stable for units whose machine still
//! suits them; and `explain`, which says why a unit is where it is or why
//! no machine takes it.
//!
//! One call of [`schedule`] does what fleet's engine reached over several
//! reconcile rounds:
//!
//! 1. Units whose machine is gone, whose desired state is inactive, that
//!    are templates or global, or that left the registry are unscheduled.
//! 2. Global units are put on every machine that passes their
//!    `MachineMetadata` and has no unit they conflict with (in either
//!    direction; a unit already there wins over a global unit, as in
//!    fleet's agents).
//! 3. Every scheduled unit is checked against its machine again, peers
//!    before followers; a unit whose machine no longer suits it is
//!    unscheduled. The others stay where they are (stability).
//! 4. Units without a machine are placed, MachineOf peers before their
//!    followers, each on the least-loaded machine that can take it (fewest
//!    units, global ones included; ties by machine ID). A unit placed where
//!    a unit it `Replaces` is pushes that unit (and its followers) off,
//!    and they are placed again elsewhere.
//! 5. Units that found no machine are tried again when something left a
//!    machine after they failed, or the global units moved, until nothing
//!    changes.

mod explain;
mod index;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

pub use explain::{Explanation, MachineNote, Note, Verdict};

use crate::unit::{JobState, Requirements, Unit};
use index::{DepthError, Index, Kind};
use state::State;

/// A machine of the cluster as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub id: String,
    pub public_ip: String,
    pub metadata: BTreeMap<String, String>,
}

impl Machine {
    pub fn new(id: impl Into<String>) -> Machine {
        Machine {
            id: id.into(),
            public_ip: String::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// Adds a metadata pair (builder style).
    pub fn with(mut self, key: &str, value: &str) -> Machine {
        self.metadata.insert(key.to_string(), value.to_string());
        self
    }

    /// The first 8 characters of the ID (fleetctl's short ID, which
    /// `MachineID` also accepts, as fleet's did).
    pub fn short_id(&self) -> &str {
        match self.id.char_indices().nth(8) {
            Some((i, _)) => &self.id[..i],
            None => &self.id,
        }
    }
}

/// A unit as the scheduler sees it: its name, its `[X-Fleet]`
/// requirements (specifiers expanded) and its desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedUnit {
    pub name: String,
    pub requirements: Requirements,
    pub desired: JobState,
}

impl SchedUnit {
    pub fn new(
        name: impl Into<String>,
        requirements: Requirements,
        desired: JobState,
    ) -> SchedUnit {
        SchedUnit {
            name: name.into(),
            requirements,
            desired,
        }
    }

    pub fn from_unit(unit: &Unit, desired: JobState) -> SchedUnit {
        SchedUnit::new(unit.name.to_string(), unit.requirements.clone(), desired)
    }
}

/// One snapshot of the cluster: machines, units, and the current schedule
/// (unit name -> machine ID).
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub machines: Vec<Machine>,
    pub units: Vec<SchedUnit>,
    pub assignments: BTreeMap<String, String>,
}

/// A change to the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take the unit off the machine.
    Unschedule {
        unit: String,
        machine: String,
        reason: Reason,
    },
    /// Put the unit on the machine.
    Place { unit: String, machine: String },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Unschedule {
                unit,
                machine,
                reason,
            } => write!(f, "unschedule {unit} from {machine}: {reason}"),
            Decision::Place { unit, machine } => write!(f, "place {unit} on {machine}"),
        }
    }
}

/// Why a unit leaves its machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Its desired state is inactive.
    TargetInactive,
    /// It is a template; only instances run.
    Template,
    /// It is global: the agents run it where it fits, unscheduled.
    Global,
    /// It is no longer in the registry.
    UnitGone,
    /// Its machine left the cluster.
    MachineGone,
    /// The machine no longer suits it (the first reason, rendered).
    Excluded(String),
    /// A unit placed on the machine replaces it.
    ReplacedBy(String),
    /// Its MachineOf peer left the machine.
    PeerMoved(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::TargetInactive => f.write_str("target state inactive"),
            Reason::Template => f.write_str("templates are not scheduled"),
            Reason::Global => f.write_str("global units are not scheduled to one machine"),
            Reason::UnitGone => f.write_str("unit no longer exists"),
            Reason::MachineGone => f.write_str("machine went away"),
            Reason::Excluded(why) => write!(f, "machine no longer suits it: {why}"),
            Reason::ReplacedBy(other) => write!(f, "replaced by {other}"),
            Reason::PeerMoved(peer) => write!(f, "MachineOf peer {peer} left the machine"),
        }
    }
}

/// Why a unit that wants a machine has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unplaced {
    NoMachines,
    NoCandidate,
    Static(DepthError),
    MoveLimit,
}

/// How often one unit may be placed in one call before the scheduler
/// gives up on it (a bound on Replaces chains pushing units around).
const MOVE_LIMIT: u32 = 8;
/// How many rounds of retrying unplaced units one call makes at most.
const RETRY_ROUNDS: u32 = 8;

/// The result of [`schedule`]: the decisions, the schedule they lead to,
/// and explanations.
pub struct Plan<'a> {
    ix: Index<'a>,
    st: State,
    /// Per unit: its machine before this call (normal units).
    initial: Vec<Option<u32>>,
    /// Per unit: whether it was moved, and the first reason.
    reason: Vec<Option<Reason>>,
    unplaced: BTreeMap<u32, Unplaced>,
    decisions: Vec<Decision>,
}

/// Schedules `cluster`: see the module documentation for the rules.
/// Deterministic: the same snapshot (in any order) gives the same plan.
pub fn schedule(cluster: &Cluster) -> Plan<'_> {
    let ix = Index::new(cluster);
    let st = State::new(&ix);
    let n = ix.units.len();
    let mut plan = Plan {
        initial: vec![None; n],
        reason: vec![None; n],
        unplaced: BTreeMap::new(),
        decisions: Vec::new(),
        ix,
        st,
    };
    plan.run(cluster);
    plan
}

impl<'a> Plan<'a> {
    fn run(&mut self, cluster: &'a Cluster) {
        let n = self.ix.units.len() as u32;
        // 1. What stays on the books.
        let mut leaving: Vec<Decision> = Vec::new();
        for (unit, machine) in &cluster.assignments {
            let Some(&u) = self.ix.unit_ix.get(unit.as_str()) else {
                leaving.push(Decision::Unschedule {
                    unit: unit.clone(),
                    machine: machine.clone(),
                    reason: Reason::UnitGone,
                });
                continue;
            };
            let reason = match self.ix.kind[u as usize] {
                Kind::Template => Some(Reason::Template),
                Kind::Global => Some(Reason::Global),
                Kind::Normal if !self.ix.want[u as usize] => Some(Reason::TargetInactive),
                Kind::Normal => None,
            };
            let m = self.ix.machine_ix.get(machine.as_str()).copied();
            match (reason, m) {
                (Some(reason), _) => self.reason[u as usize] = Some(reason),
                (None, None) => self.reason[u as usize] = Some(Reason::MachineGone),
                (None, Some(m)) => {
                    self.initial[u as usize] = Some(m);
                    self.st.add(&self.ix, u, m);
                }
            }
        }
        // 2. Global units.
        let _ = self.place_globals();
        // 3. Check what is scheduled, peers before followers.
        let key = |ix: &Index<'_>, u: u32| (*ix.depth[u as usize].as_ref().unwrap_or(&u32::MAX), u);
        let mut queue: BTreeSet<(u32, u32)> = (0..n)
            .filter(|&u| self.st.assign[u as usize].is_some())
            .map(|u| key(&self.ix, u))
            .collect();
        let mut to_place: BTreeSet<(u32, u32)> = BTreeSet::new();
        while let Some((_, u)) = queue.pop_first() {
            let Some(m) = self.st.assign[u as usize] else {
                continue;
            };
            self.st.remove(&self.ix, u, m);
            let mut why = Vec::new();
            if self.st.check(&self.ix, u, m, Some(&mut why)) {
                self.st.add(&self.ix, u, m);
            } else {
                let text = explain::render(&self.ix, &self.st, u, m, &why[0]);
                self.reason[u as usize].get_or_insert(Reason::Excluded(text));
                to_place.insert(key(&self.ix, u));
                // Its followers there must be checked (again, if they
                // came first): they will find it gone.
                for &f in &self.ix.followers[u as usize] {
                    if self.st.assign[f as usize] == Some(m) {
                        let peer = self.ix.name(u).to_string();
                        self.reason[f as usize].get_or_insert(Reason::PeerMoved(peer));
                        queue.insert(key(&self.ix, f));
                    }
                }
            }
        }
        // 4. and 5. Place, retry.
        for u in 0..n {
            let ui = u as usize;
            if self.ix.kind[ui] == Kind::Normal && self.ix.want[ui] && self.st.assign[ui].is_none()
            {
                to_place.insert(key(&self.ix, u));
            }
        }
        let mut placements = vec![0u32; n as usize];
        let mut epoch = 0u64;
        let mut failed_at: BTreeMap<u32, u64> = BTreeMap::new();
        for _round in 0..RETRY_ROUNDS {
            while let Some((_, u)) = to_place.pop_first() {
                let ui = u as usize;
                if let Err(e) = &self.ix.depth[ui] {
                    self.unplaced.insert(u, Unplaced::Static(e.clone()));
                    continue;
                }
                if placements[ui] >= MOVE_LIMIT {
                    self.unplaced.insert(u, Unplaced::MoveLimit);
                    continue;
                }
                let Some(m) = self.st.choose(&self.ix, u) else {
                    let why = if self.ix.machines.is_empty() {
                        Unplaced::NoMachines
                    } else {
                        Unplaced::NoCandidate
                    };
                    self.unplaced.insert(u, why);
                    failed_at.insert(u, epoch);
                    continue;
                };
                self.st.add(&self.ix, u, m);
                placements[ui] += 1;
                self.unplaced.remove(&u);
                failed_at.remove(&u);
                // Followers that found no machine before it was placed may
                // now follow it.
                for &f in &self.ix.followers[ui] {
                    if failed_at.remove(&f).is_some() {
                        to_place.insert(key(&self.ix, f));
                    }
                }
                // Push off what it replaces, with their followers.
                let kicked: Vec<u32> = self.ix.replaces[ui]
                    .iter()
                    .map(|&(v, _)| v)
                    .filter(|&v| self.st.assign[v as usize] == Some(m))
                    .collect();
                for v in kicked {
                    let reason = Reason::ReplacedBy(self.ix.name(u).to_string());
                    epoch += 1;
                    self.evict(v, m, reason, &mut to_place, &key);
                }
            }
            // Global units may fit where units left (and leave where a
            // global unit before them by name now fits: their followers
            // there follow); units that failed before something left are
            // worth another try.
            let (changed, lost) = self.place_globals();
            if changed {
                epoch += 1;
            }
            for (g, m) in lost {
                for f in self.ix.followers[g as usize].clone() {
                    let reason = Reason::PeerMoved(self.ix.name(g).to_string());
                    self.evict(f, m, reason, &mut to_place, &key);
                }
            }
            let retry: Vec<u32> = failed_at
                .iter()
                .filter(|&(_, &at)| at < epoch)
                .map(|(&u, _)| u)
                .collect();
            if retry.is_empty() && to_place.is_empty() {
                break;
            }
            for u in retry {
                failed_at.remove(&u);
                to_place.insert(key(&self.ix, u));
            }
        }
        // The decisions: what differs between before and after.
        let mut unschedule = leaving;
        let mut place = Vec::new();
        for (unit, machine) in &cluster.assignments {
            let Some(&u) = self.ix.unit_ix.get(unit.as_str()) else {
                continue;
            };
            let now = self.st.assign[u as usize].map(|m| self.ix.mid(m));
            if now == Some(machine.as_str()) {
                continue;
            }
            let reason = self.reason[u as usize]
                .clone()
                .unwrap_or(Reason::MachineGone);
            unschedule.push(Decision::Unschedule {
                unit: unit.clone(),
                machine: machine.clone(),
                reason,
            });
        }
        for u in 0..n {
            let Some(m) = self.st.assign[u as usize] else {
                continue;
            };
            let name = self.ix.name(u);
            if cluster.assignments.get(name).map(String::as_str) != Some(self.ix.mid(m)) {
                place.push(Decision::Place {
                    unit: name.to_string(),
                    machine: self.ix.mid(m).to_string(),
                });
            }
        }
        unschedule.extend(place);
        self.decisions = unschedule;
    }

    /// Takes `v` off `m`, and with it every unit following it there.
    fn evict(
        &mut self,
        v: u32,
        m: u32,
        reason: Reason,
        to_place: &mut BTreeSet<(u32, u32)>,
        key: &dyn Fn(&Index<'_>, u32) -> (u32, u32),
    ) {
        let mut stack = vec![(v, reason)];
        while let Some((x, reason)) = stack.pop() {
            if self.st.assign[x as usize] != Some(m) {
                continue;
            }
            self.st.remove(&self.ix, x, m);
            self.reason[x as usize].get_or_insert(reason);
            to_place.insert(key(&self.ix, x));
            for &f in &self.ix.followers[x as usize] {
                stack.push((f, Reason::PeerMoved(self.ix.name(x).to_string())));
            }
        }
    }

    /// Puts every global unit on every machine that can take it, in name
    /// order; returns whether anything changed, and where a global unit
    /// is no longer.
    fn place_globals(&mut self) -> (bool, Vec<(u32, u32)>) {
        let globals: Vec<u32> = (0..self.ix.units.len() as u32)
            .filter(|&u| self.ix.kind[u as usize] == Kind::Global)
            .collect();
        if globals.is_empty() {
            return (false, Vec::new());
        }
        let before: Vec<Vec<u32>> = globals
            .iter()
            .map(|&g| self.st.global_on[g as usize].clone())
            .collect();
        for &g in &globals {
            for m in self.st.global_on[g as usize].clone() {
                self.st.remove(&self.ix, g, m);
            }
        }
        for &g in &globals {
            if !self.ix.want[g as usize] {
                continue;
            }
            for m in 0..self.ix.machines.len() as u32 {
                if self.st.check(&self.ix, g, m, None) {
                    self.st.add(&self.ix, g, m);
                }
            }
        }
        let mut changed = false;
        let mut lost = Vec::new();
        for (&g, b) in globals.iter().zip(before) {
            let now = &self.st.global_on[g as usize];
            if *now != b {
                changed = true;
                lost.extend(
                    b.iter()
                        .filter(|m| now.binary_search(m).is_err())
                        .map(|&m| (g, m)),
                );
            }
        }
        (changed, lost)
    }

    /// The decisions, unschedulings first (so that a machine never holds
    /// two units that exclude each other in between), each group in unit
    /// order.
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    /// The machine a (non-global) unit is on after the plan.
    pub fn machine_of(&self, unit: &str) -> Option<&'a str> {
        let u = *self.ix.unit_ix.get(unit)?;
        self.st.assign[u as usize].map(|m| self.ix.mid(m))
    }

    /// The schedule after the plan: unit -> machine, for every scheduled
    /// (non-global) unit.
    pub fn assignments(&self) -> BTreeMap<String, String> {
        self.st
            .assign
            .iter()
            .enumerate()
            .filter_map(|(u, m)| {
                m.map(|m| {
                    (
                        self.ix.name(u as u32).to_string(),
                        self.ix.mid(m).to_string(),
                    )
                })
            })
            .collect()
    }

    /// The machines a global unit runs on (ascending by ID).
    pub fn global_machines(&self, unit: &str) -> Vec<&'a str> {
        let Some(&u) = self.ix.unit_ix.get(unit) else {
            return Vec::new();
        };
        self.st.global_on[u as usize]
            .iter()
            .map(|&m| self.ix.mid(m))
            .collect()
    }

    /// The units on a machine after the plan (global ones included), in
    /// name order.
    pub fn units_on(&self, machine: &str) -> Vec<&'a str> {
        let Some(&m) = self.ix.machine_ix.get(machine) else {
            return Vec::new();
        };
        let mut v: Vec<u32> = self.st.on[m as usize].clone();
        v.sort_unstable();
        v.into_iter().map(|u| self.ix.name(u)).collect()
    }

    /// The number of units on a machine after the plan (fleet's load).
    pub fn load(&self, machine: &str) -> usize {
        self.ix
            .machine_ix
            .get(machine)
            .map_or(0, |&m| self.st.load[m as usize] as usize)
    }

    /// The units that want a machine and have none, with a short reason;
    /// [`Plan::explain`] says more.
    pub fn unplaced(&self) -> Vec<(&'a str, String)> {
        self.unplaced
            .iter()
            .map(|(&u, why)| {
                (
                    self.ix.name(u),
                    explain::summary(&self.ix, &self.st, u, why),
                )
            })
            .collect()
    }

    /// Why `unit` is where it is, or why it is nowhere: a verdict and,
    /// for every machine, what excludes it (see [`Explanation`]).
    pub fn explain(&self, unit: &str) -> Explanation {
        explain::explain(self, unit)
    }
}

impl fmt::Debug for Plan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("decisions", &self.decisions)
            .field("assignments", &self.assignments())
            .finish()
    }
}
