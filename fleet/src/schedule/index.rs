//! The scheduler's read-only index of one cluster snapshot: machines and
//! units by number, Conflicts globs compiled once into one set and matched
//! once per unit name, MachineOf peers and their depth, the Replaces graph
//! (cycles cut), MachineID candidates and MachineMetadata groups.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Cluster, Machine, SchedUnit};
use crate::unit::{Glob, GlobIndex, UnitName};

/// What kind of unit the scheduler sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Placed on one machine by the scheduler.
    Normal,
    /// `Global=true`: on every machine that passes its metadata and
    /// conflicts.
    Global,
    /// `name@.type`: never scheduled.
    Template,
}

/// A MachineOf peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Peer {
    Unit(u32),
    Unknown(String),
}

/// Why a unit cannot be ordered among the MachineOf chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DepthError {
    /// The chain loops (names in order, the first repeated at the end).
    Cycle(Vec<u32>),
    /// The unit replaces a unit it must share a machine with (a MachineOf
    /// peer, or a peer's peer): placing it would push away what it follows.
    ReplacesPeer(u32),
}

pub(crate) struct Index<'a> {
    pub machines: Vec<&'a Machine>,
    pub units: Vec<&'a SchedUnit>,
    pub unit_ix: HashMap<&'a str, u32>,
    pub machine_ix: HashMap<&'a str, u32>,
    pub kind: Vec<Kind>,
    /// The unit wants a machine (desired loaded or launched, not a template).
    pub want: Vec<bool>,
    /// Distinct Conflicts globs.
    pub patterns: Vec<&'a str>,
    /// Per unit: its own Conflicts, as pattern numbers.
    pub conf: Vec<Vec<u32>>,
    /// Per unit: the Conflicts patterns its name matches.
    pub matched_by: Vec<Vec<u32>>,
    /// Per unit: MachineOf peers.
    pub peers: Vec<Vec<Peer>>,
    /// Per unit: units whose MachineOf names it.
    pub followers: Vec<Vec<u32>>,
    /// Per unit: its place in the MachineOf chains (0: follows nobody).
    pub depth: Vec<Result<u32, DepthError>>,
    /// Per unit: the normal units it replaces, with the pattern that
    /// matched (Replaces edges inside a cycle are dropped, as fleet
    /// ignored circular replacement).
    pub replaces: Vec<Vec<(u32, &'a str)>>,
    /// Per unit: the normal units that replace it.
    pub replaced_by: Vec<Vec<(u32, &'a str)>>,
    /// Per unit: units whose Replaces with it were ignored as circular.
    pub replace_cycle: Vec<Vec<u32>>,
    /// Per unit with MachineID: the machines it names (full or short ID).
    pub machine_id: Vec<Option<Vec<u32>>>,
    /// Per unit with MachineMetadata: its group.
    pub group: Vec<Option<u32>>,
    /// Per group: which machines pass (indexed by machine).
    pub group_ok: Vec<Vec<bool>>,
    /// Per machine: the groups it passes.
    pub machine_groups: Vec<Vec<u32>>,
}

impl<'a> Index<'a> {
    pub fn new(cluster: &'a Cluster) -> Index<'a> {
        let mut machines: Vec<&Machine> = cluster.machines.iter().collect();
        machines.sort_by(|a, b| a.id.cmp(&b.id));
        machines.dedup_by(|a, b| a.id == b.id);
        let mut units: Vec<&SchedUnit> = cluster.units.iter().collect();
        units.sort_by(|a, b| a.name.cmp(&b.name));
        units.dedup_by(|a, b| a.name == b.name);
        let n = units.len();

        let machine_ix: HashMap<&str, u32> = machines
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.as_str(), i as u32))
            .collect();
        let unit_ix: HashMap<&str, u32> = units
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i as u32))
            .collect();

        let kind: Vec<Kind> = units
            .iter()
            .map(|u| {
                if UnitName::parse(&u.name).is_ok_and(|n| n.is_template()) {
                    Kind::Template
                } else if u.requirements.global {
                    Kind::Global
                } else {
                    Kind::Normal
                }
            })
            .collect();
        let want: Vec<bool> = units
            .iter()
            .zip(&kind)
            .map(|(u, k)| *k != Kind::Template && u.desired.wants_machine())
            .collect();

        // Conflicts: every distinct glob once, in one index matched once
        // per name.
        let mut pattern_ix: HashMap<&str, u32> = HashMap::new();
        let mut patterns: Vec<&str> = Vec::new();
        let mut conf = vec![Vec::new(); n];
        let mut globs = GlobIndex::new();
        for (ui, u) in units.iter().enumerate() {
            if kind[ui] == Kind::Template {
                continue;
            }
            for p in &u.requirements.conflicts {
                let pi = match pattern_ix.get(p.as_str()) {
                    Some(&pi) => pi,
                    None => {
                        let Ok(glob) = Glob::new(p) else { continue };
                        let pi = globs.push(glob);
                        patterns.push(p.as_str());
                        pattern_ix.insert(p.as_str(), pi);
                        pi
                    }
                };
                if !conf[ui].contains(&pi) {
                    conf[ui].push(pi);
                }
            }
        }
        let mut matched_by = vec![Vec::new(); n];
        if !globs.is_empty() {
            for (ui, u) in units.iter().enumerate() {
                matched_by[ui] = globs.matches(&u.name);
            }
        }

        // MachineOf.
        let mut peers = vec![Vec::new(); n];
        let mut followers = vec![Vec::new(); n];
        for (ui, u) in units.iter().enumerate() {
            if kind[ui] != Kind::Normal {
                continue;
            }
            for p in &u.requirements.machine_of {
                match unit_ix.get(p.as_str()) {
                    Some(&pi) => {
                        peers[ui].push(Peer::Unit(pi));
                        followers[pi as usize].push(ui as u32);
                    }
                    None => peers[ui].push(Peer::Unknown(p.clone())),
                }
            }
        }
        let mut depth = depths(&peers, &kind);

        // Replaces between normal units, cycles cut.
        let (replaces, replaced_by, replace_cycle) = replace_graph(&units, &kind);
        // A unit replacing one of the units it follows could never stay.
        for u in 0..n {
            if replaces[u].is_empty() || peers[u].is_empty() || depth[u].is_err() {
                continue;
            }
            let mut seen = vec![u as u32];
            let mut todo = vec![u as u32];
            while let Some(x) = todo.pop() {
                for p in &peers[x as usize] {
                    if let Peer::Unit(p) = p {
                        if kind[*p as usize] == Kind::Normal && !seen.contains(p) {
                            seen.push(*p);
                            todo.push(*p);
                        }
                    }
                }
            }
            if let Some(&(v, _)) = replaces[u].iter().find(|(v, _)| seen[1..].contains(v)) {
                depth[u] = Err(DepthError::ReplacesPeer(v));
            }
        }

        // MachineID: full ID or the 8-character short ID fleetctl shows.
        let mut by_short: HashMap<&str, Vec<u32>> = HashMap::new();
        for (mi, m) in machines.iter().enumerate() {
            by_short.entry(m.short_id()).or_default().push(mi as u32);
        }
        let machine_id: Vec<Option<Vec<u32>>> = units
            .iter()
            .map(|u| {
                u.requirements.machine_id.as_ref().map(|id| {
                    let mut c: Vec<u32> =
                        machine_ix.get(id.as_str()).copied().into_iter().collect();
                    for &mi in by_short.get(id.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                        if !c.contains(&mi) {
                            c.push(mi);
                        }
                    }
                    c.sort_unstable();
                    c
                })
            })
            .collect();

        // MachineMetadata groups: units asking the same thing share one.
        type Req = BTreeMap<String, BTreeSet<String>>;
        let mut group_of: HashMap<&Req, u32> = HashMap::new();
        let mut group_ok: Vec<Vec<bool>> = Vec::new();
        let mut machine_groups = vec![Vec::new(); machines.len()];
        let group: Vec<Option<u32>> = units
            .iter()
            .map(|u| {
                let md = &u.requirements.metadata;
                if md.is_empty() {
                    return None;
                }
                Some(*group_of.entry(md).or_insert_with(|| {
                    let g = group_ok.len() as u32;
                    let ok: Vec<bool> = machines
                        .iter()
                        .map(|m| u.requirements.metadata_matches(&m.metadata))
                        .collect();
                    for (mi, pass) in ok.iter().enumerate() {
                        if *pass {
                            machine_groups[mi].push(g);
                        }
                    }
                    group_ok.push(ok);
                    g
                }))
            })
            .collect();

        Index {
            machines,
            units,
            unit_ix,
            machine_ix,
            kind,
            want,
            patterns,
            conf,
            matched_by,
            peers,
            followers,
            depth,
            replaces,
            replaced_by,
            replace_cycle,
            machine_id,
            group,
            group_ok,
            machine_groups,
        }
    }

    pub fn name(&self, u: u32) -> &'a str {
        &self.units[u as usize].name
    }

    pub fn mid(&self, m: u32) -> &'a str {
        &self.machines[m as usize].id
    }
}

/// Each unit's depth in the MachineOf chains: 0 without peers (or with
/// only global peers), else one more than its deepest normal peer. A loop
/// is an error for every unit on it and every unit following one.
fn depths(peers: &[Vec<Peer>], kind: &[Kind]) -> Vec<Result<u32, DepthError>> {
    let n = peers.len();
    let mut depth: Vec<Option<Result<u32, DepthError>>> = vec![None; n];
    let mut on_stack = vec![false; n];
    for start in 0..n {
        if depth[start].is_some() {
            continue;
        }
        // Iterative DFS: (unit, next peer to look at).
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        on_stack[start] = true;
        while let Some(&mut (u, ref mut next)) = stack.last_mut() {
            let ps = &peers[u];
            if *next < ps.len() {
                let p = &ps[*next];
                *next += 1;
                let Peer::Unit(p) = p else { continue };
                let p = *p as usize;
                if kind[p] != Kind::Normal || depth[p].is_some() {
                    continue;
                }
                if on_stack[p] {
                    // A loop: from p's place on the stack to u, back to p.
                    let from = stack.iter().position(|(x, _)| *x == p).unwrap_or(0);
                    let mut cycle: Vec<u32> =
                        stack[from..].iter().map(|(x, _)| *x as u32).collect();
                    cycle.push(p as u32);
                    for (x, _) in &stack[from..] {
                        depth[*x] = Some(Err(DepthError::Cycle(cycle.clone())));
                    }
                    continue;
                }
                on_stack[p] = true;
                stack.push((p, 0));
                continue;
            }
            stack.pop();
            on_stack[u] = false;
            if depth[u].is_some() {
                continue;
            }
            let mut d: Result<u32, DepthError> = Ok(0);
            for p in ps {
                let Peer::Unit(p) = p else { continue };
                let p = *p as usize;
                if kind[p] != Kind::Normal {
                    continue;
                }
                match depth[p].clone() {
                    Some(Ok(pd)) => {
                        if let Ok(dd) = &mut d {
                            *dd = (*dd).max(pd + 1);
                        }
                    }
                    Some(Err(e)) => d = Err(e),
                    None => {}
                }
            }
            depth[u] = Some(d);
        }
    }
    depth.into_iter().map(|d| d.unwrap_or(Ok(0))).collect()
}

type Edges<'a> = Vec<Vec<(u32, &'a str)>>;

/// The Replaces edges between normal units (u replaces v when one of u's
/// globs matches v's name), with the edges inside a strongly connected
/// component dropped: fleet ignored circular replacement, and its docs
/// forbid it.
fn replace_graph<'a>(
    units: &[&'a SchedUnit],
    kind: &[Kind],
) -> (Edges<'a>, Edges<'a>, Vec<Vec<u32>>) {
    let n = units.len();
    let mut out: Edges<'a> = vec![Vec::new(); n];
    let mut pattern_ix: HashMap<&str, u32> = HashMap::new();
    let mut owners: Vec<Vec<u32>> = Vec::new();
    let mut patterns: Vec<&'a str> = Vec::new();
    let mut globs = GlobIndex::new();
    for (ui, u) in units.iter().enumerate() {
        if kind[ui] != Kind::Normal {
            continue;
        }
        for p in &u.requirements.replaces {
            let pi = match pattern_ix.get(p.as_str()) {
                Some(&pi) => pi,
                None => {
                    let Ok(glob) = Glob::new(p) else { continue };
                    let pi = globs.push(glob);
                    owners.push(Vec::new());
                    patterns.push(p.as_str());
                    pattern_ix.insert(p.as_str(), pi);
                    pi
                }
            };
            owners[pi as usize].push(ui as u32);
        }
    }
    if owners.is_empty() {
        return (out, vec![Vec::new(); n], vec![Vec::new(); n]);
    }
    for (vi, v) in units.iter().enumerate() {
        if kind[vi] != Kind::Normal {
            continue;
        }
        for pi in globs.matches(&v.name) {
            for &ui in &owners[pi as usize] {
                if ui as usize != vi && !out[ui as usize].iter().any(|(x, _)| *x == vi as u32) {
                    out[ui as usize].push((vi as u32, patterns[pi as usize]));
                }
            }
        }
    }
    let comp = scc(&out);
    let mut cycle = vec![Vec::new(); n];
    for (u, edges) in out.iter_mut().enumerate() {
        edges.retain(|(v, _)| {
            let same = comp[u] == comp[*v as usize];
            if same {
                cycle[u].push(*v);
                cycle[*v as usize].push(u as u32);
            }
            !same
        });
        edges.sort_unstable();
    }
    for c in &mut cycle {
        c.sort_unstable();
        c.dedup();
    }
    let mut rev: Edges<'a> = vec![Vec::new(); n];
    for (u, edges) in out.iter().enumerate() {
        for &(v, p) in edges {
            rev[v as usize].push((u as u32, p));
        }
    }
    (out, rev, cycle)
}

/// Strongly connected components (Tarjan, iterative): a component number
/// per node.
fn scc(edges: &[Vec<(u32, &str)>]) -> Vec<u32> {
    let n = edges.len();
    const NONE: u32 = u32::MAX;
    let mut index = vec![NONE; n];
    let mut low = vec![0u32; n];
    let mut on = vec![false; n];
    let mut comp = vec![NONE; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut next_index = 0u32;
    let mut next_comp = 0u32;
    for s in 0..n {
        if index[s] != NONE {
            continue;
        }
        let mut call: Vec<(usize, usize)> = vec![(s, 0)];
        index[s] = next_index;
        low[s] = next_index;
        next_index += 1;
        stack.push(s as u32);
        on[s] = true;
        while let Some(&mut (v, ref mut i)) = call.last_mut() {
            if *i < edges[v].len() {
                let w = edges[v][*i].0 as usize;
                *i += 1;
                if index[w] == NONE {
                    index[w] = next_index;
                    low[w] = next_index;
                    next_index += 1;
                    stack.push(w as u32);
                    on[w] = true;
                    call.push((w, 0));
                } else if on[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            call.pop();
            if let Some(&(parent, _)) = call.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                while let Some(w) = stack.pop() {
                    on[w as usize] = false;
                    comp[w as usize] = next_comp;
                    if w as usize == v {
                        break;
                    }
                }
                next_comp += 1;
            }
        }
    }
    comp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scc_finds_loops() {
        let e = |v: &[u32]| v.iter().map(|&x| (x, "")).collect::<Vec<_>>();
        // 0 -> 1 -> 2 -> 0, 2 -> 3, 4 alone
        let edges = vec![e(&[1]), e(&[2]), e(&[0, 3]), e(&[]), e(&[])];
        let c = scc(&edges);
        assert_eq!(c[0], c[1]);
        assert_eq!(c[1], c[2]);
        assert_ne!(c[2], c[3]);
        assert_ne!(c[3], c[4]);
    }

    #[test]
    fn depth_chains_and_loops() {
        let k = vec![Kind::Normal; 5];
        let p = |v: &[u32]| v.iter().map(|&x| Peer::Unit(x)).collect::<Vec<_>>();
        // 1 follows 0, 2 follows 1; 3 <-> 4 loop
        let peers = vec![p(&[]), p(&[0]), p(&[1]), p(&[4]), p(&[3])];
        let d = depths(&peers, &k);
        assert_eq!(d[0], Ok(0));
        assert_eq!(d[1], Ok(1));
        assert_eq!(d[2], Ok(2));
        assert!(matches!(d[3], Err(DepthError::Cycle(_))));
        assert!(matches!(d[4], Err(DepthError::Cycle(_))));
    }
}
