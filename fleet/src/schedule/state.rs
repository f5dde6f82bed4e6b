//! The scheduler's working state: which units are on which machine, with
//! the counters that make a placement check cheap (per machine, how many
//! present units match each Conflicts glob and how many carry it), the
//! machines ordered by load (all of them, and per metadata group), and the
//! placement check itself, fast or with every reason for explain.

use std::collections::{BTreeSet, HashMap};

use super::index::{Index, Kind, Peer};

/// Why a machine cannot take a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Excl {
    /// `MachineID` names another machine.
    MachineId,
    /// `MachineMetadata` does not match.
    Metadata,
    /// `MachineOf` names a unit fleet does not know.
    PeerUnknown(String),
    /// `MachineOf` names a unit that is not on this machine.
    PeerAway(u32),
    /// One of the unit's Conflicts globs matches a unit there.
    ConflictMine { pattern: u32, other: u32 },
    /// A unit there has a Conflicts glob matching this unit.
    ConflictTheirs { other: u32, pattern: u32 },
    /// A unit there replaces this unit.
    ReplacedBy { other: u32 },
}

pub(crate) struct State {
    /// Per normal unit: its machine.
    pub assign: Vec<Option<u32>>,
    /// Per global unit: the machines it is on, ascending.
    pub global_on: Vec<Vec<u32>>,
    /// Per machine: the units on it (normal and global).
    pub on: Vec<Vec<u32>>,
    /// Per machine: Conflicts pattern -> units there whose name it matches.
    hit: Vec<HashMap<u32, u32>>,
    /// Per machine: Conflicts pattern -> units there that carry it.
    carry: Vec<HashMap<u32, u32>>,
    /// Per pattern: machines where `hit` is non-zero.
    hit_machines: Vec<u32>,
    /// Per pattern: machines where `carry` is non-zero.
    carry_machines: Vec<u32>,
    /// Per machine: units on it.
    pub load: Vec<u32>,
    /// (load, machine), least loaded first, ties by machine ID.
    order: BTreeSet<(u32, u32)>,
    /// The same per metadata group, for the machines of the group.
    group_order: Vec<BTreeSet<(u32, u32)>>,
}

impl State {
    pub fn new(ix: &Index<'_>) -> State {
        let m = ix.machines.len();
        let n = ix.units.len();
        let mut group_order = vec![BTreeSet::new(); ix.group_ok.len()];
        for (mi, groups) in ix.machine_groups.iter().enumerate() {
            for &g in groups {
                group_order[g as usize].insert((0, mi as u32));
            }
        }
        State {
            assign: vec![None; n],
            global_on: vec![Vec::new(); n],
            on: vec![Vec::new(); m],
            hit: vec![HashMap::new(); m],
            carry: vec![HashMap::new(); m],
            hit_machines: vec![0; ix.patterns.len()],
            carry_machines: vec![0; ix.patterns.len()],
            load: vec![0; m],
            order: (0..m as u32).map(|mi| (0, mi)).collect(),
            group_order,
        }
    }

    fn set_load(&mut self, ix: &Index<'_>, m: u32, load: u32) {
        let old = self.load[m as usize];
        self.order.remove(&(old, m));
        self.order.insert((load, m));
        for &g in &ix.machine_groups[m as usize] {
            let set = &mut self.group_order[g as usize];
            set.remove(&(old, m));
            set.insert((load, m));
        }
        self.load[m as usize] = load;
    }

    /// Puts `u` on `m`.
    pub fn add(&mut self, ix: &Index<'_>, u: u32, m: u32) {
        let mu = m as usize;
        self.on[mu].push(u);
        self.set_load(ix, m, self.load[mu] + 1);
        for &p in &ix.matched_by[u as usize] {
            let c = self.hit[mu].entry(p).or_insert(0);
            *c += 1;
            if *c == 1 {
                self.hit_machines[p as usize] += 1;
            }
        }
        for &p in &ix.conf[u as usize] {
            let c = self.carry[mu].entry(p).or_insert(0);
            *c += 1;
            if *c == 1 {
                self.carry_machines[p as usize] += 1;
            }
        }
        if ix.kind[u as usize] == Kind::Global {
            let list = &mut self.global_on[u as usize];
            let at = list.partition_point(|&x| x < m);
            list.insert(at, m);
        } else {
            self.assign[u as usize] = Some(m);
        }
    }

    /// Takes `u` off `m`.
    pub fn remove(&mut self, ix: &Index<'_>, u: u32, m: u32) {
        let mu = m as usize;
        let Some(at) = self.on[mu].iter().position(|&x| x == u) else {
            return;
        };
        self.on[mu].swap_remove(at);
        self.set_load(ix, m, self.load[mu] - 1);
        for &p in &ix.matched_by[u as usize] {
            if let Some(c) = self.hit[mu].get_mut(&p) {
                *c -= 1;
                if *c == 0 {
                    self.hit[mu].remove(&p);
                    self.hit_machines[p as usize] -= 1;
                }
            }
        }
        for &p in &ix.conf[u as usize] {
            if let Some(c) = self.carry[mu].get_mut(&p) {
                *c -= 1;
                if *c == 0 {
                    self.carry[mu].remove(&p);
                    self.carry_machines[p as usize] -= 1;
                }
            }
        }
        if ix.kind[u as usize] == Kind::Global {
            self.global_on[u as usize].retain(|&x| x != m);
        } else {
            self.assign[u as usize] = None;
        }
    }

    /// Whether unit `p` is on machine `m`.
    pub fn present(&self, ix: &Index<'_>, p: u32, m: u32) -> bool {
        match ix.kind[p as usize] {
            Kind::Global => self.global_on[p as usize].binary_search(&m).is_ok(),
            _ => self.assign[p as usize] == Some(m),
        }
    }

    /// Whether `m` can take `u` (which must not be on `m`). With `out`,
    /// every reason against it is collected; without, the first one ends
    /// the check.
    pub fn check(&self, ix: &Index<'_>, u: u32, m: u32, mut out: Option<&mut Vec<Excl>>) -> bool {
        let ui = u as usize;
        let mu = m as usize;
        let mut ok = true;
        macro_rules! fail {
            ($e:expr) => {{
                match out.as_deref_mut() {
                    Some(v) => {
                        v.push($e);
                        ok = false;
                    }
                    None => return false,
                }
            }};
        }
        if let Some(c) = &ix.machine_id[ui] {
            if !c.contains(&m) {
                fail!(Excl::MachineId);
            }
        }
        if let Some(g) = ix.group[ui] {
            if !ix.group_ok[g as usize][mu] {
                fail!(Excl::Metadata);
            }
        }
        for p in &ix.peers[ui] {
            match p {
                Peer::Unknown(name) => fail!(Excl::PeerUnknown(name.clone())),
                Peer::Unit(p) => {
                    if !self.present(ix, *p, m) {
                        fail!(Excl::PeerAway(*p));
                    }
                }
            }
        }
        let hit = &self.hit[mu];
        for &p in &ix.conf[ui] {
            if hit.get(&p).is_some_and(|&c| c > 0) {
                let other = if out.is_some() {
                    self.on[mu]
                        .iter()
                        .copied()
                        .filter(|&x| x != u && ix.matched_by[x as usize].contains(&p))
                        .min()
                        .unwrap_or(u)
                } else {
                    u
                };
                fail!(Excl::ConflictMine { pattern: p, other });
            }
        }
        let carry = &self.carry[mu];
        for &p in &ix.matched_by[ui] {
            if carry.get(&p).is_some_and(|&c| c > 0) {
                let other = if out.is_some() {
                    self.on[mu]
                        .iter()
                        .copied()
                        .filter(|&x| x != u && ix.conf[x as usize].contains(&p))
                        .min()
                        .unwrap_or(u)
                } else {
                    u
                };
                fail!(Excl::ConflictTheirs { other, pattern: p });
            }
        }
        for &(x, _) in &ix.replaced_by[ui] {
            if self.assign[x as usize] == Some(m) {
                fail!(Excl::ReplacedBy { other: x });
            }
        }
        ok
    }

    /// A quick "no machine at all": one of the unit's globs matches a unit
    /// on every machine, or a glob matching it is carried on every machine.
    fn saturated(&self, ix: &Index<'_>, u: u32) -> bool {
        let all = ix.machines.len() as u32;
        ix.conf[u as usize]
            .iter()
            .any(|&p| self.hit_machines[p as usize] == all)
            || ix.matched_by[u as usize]
                .iter()
                .any(|&p| self.carry_machines[p as usize] == all)
    }

    /// The machine fleet's least-loaded rule picks for `u` (which is on no
    /// machine): among the machines that can take it, the one with the
    /// fewest units, ties broken by machine ID.
    pub fn choose(&self, ix: &Index<'_>, u: u32) -> Option<u32> {
        let ui = u as usize;
        if ix.machines.is_empty() {
            return None;
        }
        let best_of = |cands: &mut dyn Iterator<Item = u32>| {
            cands
                .filter(|&m| self.check(ix, u, m, None))
                .min_by_key(|&m| (self.load[m as usize], m))
        };
        if let Some(first) = ix.peers[ui].first() {
            // Only the machines holding the first peer can qualify.
            let Peer::Unit(p) = first else { return None };
            return match ix.kind[*p as usize] {
                Kind::Global => best_of(&mut self.global_on[*p as usize].iter().copied()),
                _ => best_of(&mut self.assign[*p as usize].into_iter()),
            };
        }
        if let Some(c) = &ix.machine_id[ui] {
            return best_of(&mut c.iter().copied());
        }
        if self.saturated(ix, u) {
            return None;
        }
        let set = match ix.group[ui] {
            Some(g) => &self.group_order[g as usize],
            None => &self.order,
        };
        set.iter()
            .map(|&(_, m)| m)
            .find(|&m| self.check(ix, u, m, None))
    }
}
