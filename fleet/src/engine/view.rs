//! The engine's in-memory model of the cluster ([`ClusterView`]): the
//! machines, the units, the schedule as stored and the machines drained
//! for a reboot; built from one [`Snapshot`] and kept current from watch
//! events. From it come the schedule changes the leader writes, the drain
//! marks it writes for reboot-lock holders, and the explanations
//! `fleetctl explain` shows, by the same code.

use std::collections::{BTreeMap, BTreeSet};

use cairn_etcd::{Event, EventKind};
use cairn_formats::reboot_lock::fleet::DrainMark;
use cairn_formats::reboot_lock::Semaphore;
use tracing::warn;

use crate::model::{MachineRecord, ScheduleEntry, UnitRecord, UnitStateReport};
use crate::registry::{Keys, Registry, RegistryError, ScheduleChange, Snapshot};
use crate::schedule::{
    schedule, Cluster, Explanation, Machine, MachineNote, Note, Plan, SchedUnit, Verdict,
};
use crate::unit::JobState;

/// Why a drained machine takes nothing.
pub const DRAINED: &str = "drained for a reboot (it holds the reboot lock)";

/// A unit as the view keeps it: the record, what the scheduler needs of
/// it, and whether it is a template.
#[derive(Debug, Clone)]
struct ViewUnit {
    record: UnitRecord,
    sched: SchedUnit,
    template: bool,
}

impl ViewUnit {
    fn read(name: &str, value: &str) -> Result<ViewUnit, String> {
        let record = UnitRecord::from_json(value).map_err(|e| e.to_string())?;
        if record.name != name {
            return Err(format!(
                "the record names {:?}, not the unit of its key",
                record.name
            ));
        }
        ViewUnit::from_record(record)
    }

    fn from_record(record: UnitRecord) -> Result<ViewUnit, String> {
        let unit = record.unit().map_err(|e| e.to_string())?;
        Ok(ViewUnit {
            sched: SchedUnit::from_unit(&unit, record.desired_state),
            template: unit.name.is_template(),
            record,
        })
    }

    fn global(&self) -> bool {
        self.sched.requirements.global
    }
}

/// The cluster as the engine sees it; see the module documentation.
///
/// Records that do not read are skipped with a warning: a machine whose
/// record does not read stays a machine (its previous record, else no
/// metadata), since only the deletion of its key takes it away; a unit
/// whose record does not read is frozen (its schedule entries are left as
/// they are, and it takes no part in placement) until it reads again or
/// is removed; a schedule entry that does not read is rewritten or
/// removed.
#[derive(Debug, Clone)]
pub struct ClusterView {
    keys: Keys,
    revision: i64,
    machines: BTreeMap<String, Machine>,
    units: BTreeMap<String, ViewUnit>,
    frozen: BTreeSet<String>,
    /// unit -> machine -> entry (`None`: there, but unreadable).
    schedule: BTreeMap<String, BTreeMap<String, Option<ScheduleEntry>>>,
    drained: BTreeSet<String>,
    /// The reboot lock key's `mod_revision` (0: not known or no key).
    lock_revision: i64,
    /// The stored drain marks: machine -> the lock revision in the mark
    /// (`None`: there, but unreadable).
    marks: BTreeMap<String, Option<i64>>,
    /// The revision of the engine's last write: schedule events up to it
    /// are its own, already in the view.
    own_revision: i64,
    /// machine -> the revision of the latest removal from its schedule
    /// this view saw (its own writes and watched deletions).
    removed_at: BTreeMap<String, i64>,
}

impl ClusterView {
    /// The view of `snapshot` (records under `keys`) with the reboot lock
    /// `lock` (its holders are drained).
    pub fn new(keys: &Keys, snapshot: &Snapshot, lock: Option<&Semaphore>) -> ClusterView {
        let mut v = ClusterView {
            keys: keys.clone(),
            revision: snapshot.revision,
            machines: BTreeMap::new(),
            units: BTreeMap::new(),
            frozen: BTreeSet::new(),
            schedule: BTreeMap::new(),
            drained: BTreeSet::new(),
            lock_revision: 0,
            marks: BTreeMap::new(),
            own_revision: 0,
            removed_at: BTreeMap::new(),
        };
        for m in &snapshot.machines {
            v.machines.insert(m.id.clone(), m.machine());
        }
        for u in &snapshot.units {
            match ViewUnit::from_record(u.clone()) {
                Ok(vu) => {
                    v.units.insert(u.name.clone(), vu);
                }
                Err(e) => {
                    warn!(unit = %u.name, "skipping a unit record: {e}");
                    v.frozen.insert(u.name.clone());
                }
            }
        }
        for e in &snapshot.schedule {
            v.schedule
                .entry(e.unit.clone())
                .or_default()
                .insert(e.machine.clone(), Some(e.clone()));
        }
        for bad in &snapshot.bad {
            warn!(key = %bad.key, "skipping a record that does not read: {}", bad.error);
            if let Some((m, u)) = keys.split_machine_unit(&bad.key) {
                if bad.key.starts_with(&keys.schedule()) {
                    v.schedule
                        .entry(u.to_string())
                        .or_default()
                        .insert(m.to_string(), None);
                }
            } else if let Some(name) = keys.last(&bad.key) {
                if bad.key.starts_with(&keys.machines()) {
                    v.machines.insert(name.to_string(), Machine::new(name));
                } else if bad.key.starts_with(&keys.units()) {
                    v.frozen.insert(name.to_string());
                }
            }
        }
        v.set_lock(lock, 0);
        v
    }

    /// The stored drain marks (read at the snapshot's revision) and the
    /// lock key's `mod_revision` there; marks that did not read are listed
    /// by key in `bad`, to be rewritten or removed.
    pub(crate) fn set_drain_state(
        &mut self,
        lock_revision: i64,
        marks: &[DrainMark],
        bad: &[crate::registry::BadRecord],
    ) {
        self.lock_revision = lock_revision;
        self.marks = marks
            .iter()
            .map(|m| (m.machine.clone(), Some(m.lock_revision)))
            .collect();
        for b in bad {
            warn!(key = %b.key, "a drain mark that does not read: {}", b.error);
            if let Some(m) = self.keys.last(&b.key) {
                self.marks.entry(m.to_string()).or_insert(None);
            }
        }
    }

    /// Reads the registry and the reboot lock (for `fleetctl explain`);
    /// a reboot lock that does not read drains nothing (with a warning).
    pub async fn read(registry: &Registry) -> Result<ClusterView, RegistryError> {
        let snapshot = registry.snapshot().await?;
        let (lock, _) = read_lock(registry, snapshot.revision).await?;
        Ok(ClusterView::new(registry.keys(), &snapshot, lock.as_ref()))
    }

    /// The revision the view is current to (the latest event taken in).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The machines holding the reboot lock.
    pub fn drained(&self) -> &BTreeSet<String> {
        &self.drained
    }

    /// The machines present (drained ones included).
    pub fn machines(&self) -> impl Iterator<Item = &Machine> {
        self.machines.values()
    }

    /// The stored schedule: (unit, machine) pairs, by unit.
    pub fn schedule(&self) -> impl Iterator<Item = (&str, &str)> {
        self.schedule
            .iter()
            .flat_map(|(u, ms)| ms.keys().map(move |m| (u.as_str(), m.as_str())))
    }

    /// What the scheduler is given: the machines that are not drained, the
    /// units that read, and where each (non-global) unit is now.
    pub fn cluster(&self) -> Cluster {
        let present = |m: &str| self.machines.contains_key(m) && !self.drained.contains(m);
        let mut assignments = BTreeMap::new();
        for (unit, ms) in &self.schedule {
            let Some(u) = self.units.get(unit) else {
                continue;
            };
            if u.global() {
                continue;
            }
            // One entry per unit; should there be more, keep the one on a
            // machine that can still hold it (the others are removed).
            let m = ms.keys().find(|m| present(m)).or_else(|| ms.keys().next());
            if let Some(m) = m {
                assignments.insert(unit.clone(), m.clone());
            }
        }
        Cluster {
            machines: self
                .machines
                .values()
                .filter(|m| !self.drained.contains(&m.id))
                .cloned()
                .collect(),
            units: self.units.values().map(|u| u.sched.clone()).collect(),
            assignments,
        }
    }

    /// Plans and returns the changes that turn the stored schedule into
    /// the plan's: deletions first (so that a machine never holds two
    /// units that exclude each other in between), then puts.
    pub fn changes(&self) -> Vec<ScheduleChange> {
        let cluster = self.cluster();
        let plan = schedule(&cluster);
        self.diff(&plan)
    }

    /// The entries the plan wants: (unit, machine) -> the unit.
    fn desired<'s>(&'s self, plan: &Plan<'_>) -> BTreeMap<(&'s str, String), &'s UnitRecord> {
        let mut want = BTreeMap::new();
        for (unit, machine) in plan.assignments() {
            if let Some((name, u)) = self.units.get_key_value(&unit) {
                want.insert((name.as_str(), machine), &u.record);
            }
        }
        for (name, u) in &self.units {
            if !u.global() || u.template || u.record.desired_state == JobState::Inactive {
                continue;
            }
            for m in plan.global_machines(name) {
                want.insert((name.as_str(), m.to_string()), &u.record);
            }
            // A drained machine keeps the global units it has (they run
            // until it reboots, and are there when it is back) but gets no
            // new ones.
            for m in self.schedule.get(name).into_iter().flat_map(|ms| ms.keys()) {
                if self.drained.contains(m) && self.machines.contains_key(m) {
                    want.insert((name.as_str(), m.clone()), &u.record);
                }
            }
        }
        want
    }

    fn diff(&self, plan: &Plan<'_>) -> Vec<ScheduleChange> {
        let want = self.desired(plan);
        let mut out = Vec::new();
        for (unit, ms) in &self.schedule {
            if self.frozen.contains(unit) {
                continue;
            }
            for m in ms.keys() {
                if !want.contains_key(&(unit.as_str(), m.clone())) {
                    out.push(ScheduleChange::Delete {
                        machine: m.clone(),
                        unit: unit.clone(),
                    });
                }
            }
        }
        for ((unit, m), record) in want {
            let entry = ScheduleEntry::new(record, &m);
            let stored = self.schedule.get(unit).and_then(|ms| ms.get(&m));
            if stored != Some(&Some(entry.clone())) {
                out.push(ScheduleChange::Put(entry));
            }
        }
        out
    }

    /// Why `unit` is where it is, or nowhere (`fleetctl explain`): the
    /// scheduler's explanation, with drained machines said as such.
    pub fn explain(&self, unit: &str) -> Explanation {
        let cluster = self.cluster();
        let plan = schedule(&cluster);
        let mut ex = plan.explain(unit);
        if self.frozen.contains(unit) {
            ex.notes.push(
                "its record in the registry does not read: its schedule entries are kept as they are".into(),
            );
        }
        if self.drained.is_empty() {
            return ex;
        }
        let want = self.desired(&plan);
        let stored: Vec<&String> = self
            .schedule
            .get(unit)
            .into_iter()
            .flat_map(|ms| ms.keys())
            .collect();
        match &mut ex.verdict {
            Verdict::Placed {
                machine,
                moved_from,
                ..
            } => {
                if let Some(from) = stored
                    .iter()
                    .find(|m| self.drained.contains(m.as_str()) && m.as_str() != machine.as_str())
                {
                    *moved_from = Some(((*from).clone(), DRAINED.to_string()));
                }
            }
            Verdict::Global { machines } => {
                for m in &stored {
                    if self.drained.contains(m.as_str()) && want.contains_key(&(unit, (*m).clone()))
                    {
                        machines.push((*m).clone());
                    }
                }
                machines.sort();
            }
            _ => {}
        }
        if !ex.machines.is_empty() {
            for d in &self.drained {
                if !self.machines.contains_key(d) {
                    continue;
                }
                let units = want.keys().filter(|(_, m)| m == d).count();
                let note = if want.contains_key(&(unit, d.clone())) {
                    Note::Here
                } else {
                    Note::Excluded(vec![DRAINED.to_string()])
                };
                ex.machines.push(MachineNote {
                    machine: d.clone(),
                    units,
                    note,
                });
            }
            ex.machines.sort_by(|a, b| a.machine.cmp(&b.machine));
        }
        ex
    }

    /// Sets the reboot lock's holders as the drained machines, and the
    /// lock key's `mod_revision` (for drain marks); true when the holders
    /// changed, or the revision did while someone holds the lock (their
    /// marks are due again).
    pub(crate) fn set_lock(&mut self, lock: Option<&Semaphore>, revision: i64) -> bool {
        let drained: BTreeSet<String> = lock
            .map(|s| s.holders.iter().cloned().collect())
            .unwrap_or_default();
        let moved = revision != self.lock_revision && !drained.is_empty();
        self.lock_revision = revision;
        if drained == self.drained {
            return moved;
        }
        self.drained = drained;
        true
    }

    /// Drain marks of machines that no longer hold the lock (or that do
    /// not read while their machine does not hold it): to be removed.
    pub fn stale_marks(&self) -> Vec<String> {
        self.marks
            .keys()
            .filter(|m| !self.drained.contains(*m))
            .cloned()
            .collect()
    }

    /// Lock holders whose drain may be complete: no mark for the lock's
    /// current revision yet, and no unit scheduled on them but global
    /// ones (a unit whose record does not read counts as not global).
    /// Whether their agents stopped what was moved is
    /// [`ClusterView::drain_done`]'s question.
    pub fn drain_candidates(&self) -> Vec<String> {
        if self.lock_revision == 0 {
            return Vec::new();
        }
        self.drained
            .iter()
            .filter(|m| {
                !matches!(self.marks.get(*m), Some(Some(r)) if *r >= self.lock_revision)
                    && self.blocking_entries(m).is_empty()
            })
            .cloned()
            .collect()
    }

    /// The units scheduled on `machine` that a drain must move first.
    fn blocking_entries(&self, machine: &str) -> Vec<&str> {
        self.schedule
            .iter()
            .filter(|(u, ms)| {
                ms.contains_key(machine) && !self.units.get(*u).is_some_and(|u| u.global())
            })
            .map(|(u, _)| u.as_str())
            .collect()
    }

    /// Whether `machine`'s agent has stopped every unit the drain moved,
    /// by its reports (`states/ID/` as read now; `unreadable` reports that
    /// did not read): every report is of a stopped unit (`inactive` or
    /// `failed`) or of a global unit scheduled there; and by its settled
    /// mark (`settled`, the revision in `settled/ID`): it covers the
    /// latest removal from the machine's schedule made since the lock was
    /// taken, so a unit whose report was never written (it started a
    /// moment before it moved) is known stopped too. The mark to write,
    /// or what is still awaited, for the log.
    pub fn drain_done(
        &self,
        machine: &str,
        reports: &[UnitStateReport],
        unreadable: usize,
        settled: Option<i64>,
    ) -> Result<DrainMark, String> {
        let global_here = |unit: &str| {
            self.units.get(unit).is_some_and(|u| u.global())
                && self
                    .schedule
                    .get(unit)
                    .is_some_and(|ms| ms.contains_key(machine))
        };
        let running: Vec<String> = reports
            .iter()
            .filter(|r| !matches!(r.active.as_str(), "inactive" | "failed"))
            .filter(|r| !global_here(&r.unit))
            .map(|r| format!("{} ({}/{})", r.unit, r.active, r.sub))
            .collect();
        if !running.is_empty() {
            return Err(format!("still running: {}", running.join(", ")));
        }
        if unreadable > 0 {
            return Err(format!("{unreadable} unit state report(s) do not read"));
        }
        let settled = settled.unwrap_or(0);
        match self.removed_at.get(machine) {
            Some(&removed) if removed > self.lock_revision && settled < removed => {
                return Err(format!(
                    "its agent has not settled the removals of revision {removed} yet (settled \
                     up to {settled})"
                ));
            }
            _ => {}
        }
        Ok(DrainMark {
            machine: machine.to_string(),
            lock_revision: self.lock_revision,
        })
    }

    /// Takes in one event of the registry's machines/, units/ or
    /// schedule/; true when the view changed.
    pub(crate) fn apply_event(&mut self, ev: &Event) -> bool {
        let rev = ev.mod_revision();
        self.revision = self.revision.max(rev);
        let key = ev.kv.key_str();
        let put = ev.kind == EventKind::Put;
        let value = ev.kv.value_str();
        if key.starts_with(&self.keys.schedule()) {
            if rev <= self.own_revision {
                return false; // the engine's own write, already in
            }
            let Some((m, u)) = self.keys.split_machine_unit(&key) else {
                return false;
            };
            let ms = self.schedule.entry(u.to_string()).or_default();
            if put {
                let entry = match ScheduleEntry::from_json(&value) {
                    Ok(e) if e.unit == u && e.machine == m => Some(e),
                    Ok(_) => {
                        warn!(%key, "a schedule entry for another unit or machine than its key's");
                        None
                    }
                    Err(e) => {
                        warn!(%key, "a schedule entry that does not read: {e}");
                        None
                    }
                };
                ms.insert(m.to_string(), entry);
            } else {
                ms.remove(m);
                if ms.is_empty() {
                    self.schedule.remove(u);
                }
                self.removed(m, rev);
            }
            return true;
        }
        let Some(name) = self.keys.last(&key) else {
            return false;
        };
        if key.starts_with(&self.keys.machines()) {
            if !put {
                return self.machines.remove(name).is_some();
            }
            let machine = match MachineRecord::from_json(&value) {
                Ok(r) if r.id == name => r.machine(),
                other => {
                    let why = match other {
                        Ok(r) => format!("the record names machine {:?}", r.id),
                        Err(e) => e.to_string(),
                    };
                    warn!(%key, "a machine record that does not read ({why}); the machine stays");
                    self.machines
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| Machine::new(name))
                }
            };
            let old = self.machines.insert(name.to_string(), machine.clone());
            return old.as_ref() != Some(&machine);
        }
        if key.starts_with(&self.keys.units()) {
            if !put {
                let was = self.units.remove(name).is_some();
                return self.frozen.remove(name) || was;
            }
            match ViewUnit::read(name, &value) {
                Ok(u) => {
                    self.frozen.remove(name);
                    self.units.insert(name.to_string(), u);
                }
                Err(e) => {
                    warn!(%key, "skipping a unit record: {e}; its schedule entries stay as they are");
                    self.units.remove(name);
                    self.frozen.insert(name.to_string());
                }
            }
            return true;
        }
        false
    }

    fn removed(&mut self, machine: &str, revision: i64) {
        let r = self.removed_at.entry(machine.to_string()).or_default();
        *r = (*r).max(revision);
    }

    /// Takes in the engine's own changes, written at `revision`.
    pub(crate) fn applied(&mut self, changes: &[ScheduleChange], revision: i64) {
        self.own_revision = self.own_revision.max(revision);
        self.revision = self.revision.max(revision);
        for c in changes {
            match c {
                ScheduleChange::Put(e) => {
                    self.schedule
                        .entry(e.unit.clone())
                        .or_default()
                        .insert(e.machine.clone(), Some(e.clone()));
                }
                ScheduleChange::Delete { machine, unit } => {
                    if let Some(ms) = self.schedule.get_mut(unit) {
                        ms.remove(machine);
                        if ms.is_empty() {
                            self.schedule.remove(unit);
                        }
                    }
                    self.removed(machine, revision);
                }
                ScheduleChange::Drained(mark) => {
                    self.marks
                        .insert(mark.machine.clone(), Some(mark.lock_revision));
                }
                ScheduleChange::Undrained { machine } => {
                    self.marks.remove(machine);
                }
            }
        }
    }
}

/// `fleetctl explain UNIT` from a snapshot (records under `keys`) and the
/// reboot lock: what the leader's plan says of the unit, drained machines
/// included. (`ClusterView::read(&registry).await?.explain(unit)` reads
/// both.)
pub fn explain(
    keys: &Keys,
    snapshot: &Snapshot,
    lock: Option<&Semaphore>,
    unit: &str,
) -> Explanation {
    ClusterView::new(keys, snapshot, lock).explain(unit)
}

/// The reboot lock at `revision` and its key's `mod_revision` (0: no
/// key); one that does not read drains nothing.
pub(crate) async fn read_lock(
    registry: &Registry,
    revision: i64,
) -> Result<(Option<Semaphore>, i64), RegistryError> {
    match registry.reboot_lock_versioned(revision).await {
        Ok(Some(v)) => Ok((Some(v.record), v.mod_revision)),
        Ok(None) => Ok((None, 0)),
        Err(RegistryError::Unreadable { key, error }) => {
            warn!(%key, "the reboot lock does not read ({error}); draining no machine");
            Ok((None, 0))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::BadRecord;
    use cairn_etcd::KeyValue;

    const SLEEP: &str = "[Service]\nExecStart=/bin/sleep 1000\n";
    const GLOBAL: &str = "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nGlobal=true\n";

    fn machine(id: &str) -> MachineRecord {
        MachineRecord {
            id: id.into(),
            public_ip: String::new(),
            metadata: BTreeMap::new(),
            version: "t".into(),
        }
    }

    fn unit(name: &str, text: &str, state: JobState) -> UnitRecord {
        UnitRecord::submit(name, text, state).unwrap()
    }

    fn snapshot(
        machines: &[&str],
        units: &[UnitRecord],
        schedule: &[(&str, &str)],
        bad: &[(&str, &str)],
    ) -> Snapshot {
        Snapshot {
            revision: 10,
            machines: machines.iter().map(|m| machine(m)).collect(),
            units: units.to_vec(),
            schedule: schedule
                .iter()
                .map(|(u, m)| {
                    let r = units.iter().find(|r| r.name == *u).unwrap();
                    ScheduleEntry::new(r, m)
                })
                .collect(),
            bad: bad
                .iter()
                .map(|(k, e)| BadRecord {
                    key: k.to_string(),
                    error: e.to_string(),
                })
                .collect(),
        }
    }

    fn lock(holders: &[&str]) -> Semaphore {
        let mut s = Semaphore::new(3);
        for h in holders {
            s.lock(h).unwrap();
        }
        s
    }

    fn show(changes: &[ScheduleChange]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                ScheduleChange::Put(e) => {
                    format!("put {} {} {}", e.unit, e.machine, e.desired_state.as_str())
                }
                ScheduleChange::Delete { machine, unit } => format!("delete {unit} {machine}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn changes_from_nothing_and_a_fixed_point() {
        let units = [
            unit("a.service", SLEEP, JobState::Launched),
            unit("b.service", SLEEP, JobState::Loaded),
            unit("g.service", GLOBAL, JobState::Launched),
            unit("off.service", SLEEP, JobState::Inactive),
        ];
        let keys = Keys::default();
        let v = ClusterView::new(&keys, &snapshot(&["m1", "m2"], &units, &[], &[]), None);
        assert_eq!(
            show(&v.changes()),
            [
                "put a.service m1 launched",
                "put b.service m2 loaded",
                "put g.service m1 launched",
                "put g.service m2 launched",
            ]
        );
        let mut v2 = v.clone();
        v2.applied(&v.changes(), 11);
        assert!(v2.changes().is_empty());
        // Its own write coming back through the watch changes nothing.
        let ev = Event {
            kind: EventKind::Put,
            kv: cairn_etcd::KeyValue {
                key: keys.schedule_entry("m1", "a.service").into_bytes(),
                value: ScheduleEntry::new(&units[0], "m1").to_json().into_bytes(),
                mod_revision: 11,
                ..Default::default()
            },
            prev_kv: None,
        };
        assert!(!v2.apply_event(&ev));
    }

    #[test]
    fn a_state_change_rewrites_and_stale_entries_go() {
        let a = unit("a.service", SLEEP, JobState::Launched);
        let gone = unit("gone.service", SLEEP, JobState::Launched);
        let keys = Keys::default();
        // a is stored launched on m1 and on m2 (twice, as no leader would
        // write it); gone.service left the registry.
        let mut s = snapshot(
            &["m1", "m2"],
            &[a.clone(), gone.clone()],
            &[
                ("a.service", "m1"),
                ("a.service", "m2"),
                ("gone.service", "m2"),
            ],
            &[],
        );
        s.units.retain(|u| u.name != "gone.service");
        s.units[0].desired_state = JobState::Loaded;
        let v = ClusterView::new(&keys, &s, None);
        assert_eq!(
            show(&v.changes()),
            [
                "delete a.service m2",
                "delete gone.service m2",
                "put a.service m1 loaded"
            ]
        );
    }

    #[test]
    fn drained_machines_lose_their_units_but_keep_their_globals() {
        let units = [
            unit("a.service", SLEEP, JobState::Launched),
            unit("b.service", SLEEP, JobState::Launched),
            unit("g.service", GLOBAL, JobState::Launched),
        ];
        let keys = Keys::default();
        let s = snapshot(
            &["m1", "m2"],
            &units,
            &[
                ("a.service", "m1"),
                ("b.service", "m2"),
                ("g.service", "m1"),
                ("g.service", "m2"),
            ],
            &[],
        );
        let v = ClusterView::new(&keys, &s, Some(&lock(&["m2"])));
        assert_eq!(
            show(&v.changes()),
            ["delete b.service m2", "put b.service m1 launched"]
        );
        let ex = v.explain("b.service");
        assert_eq!(
            ex.verdict,
            Verdict::Placed {
                machine: "m1".into(),
                stayed: false,
                moved_from: Some(("m2".into(), DRAINED.into())),
            }
        );
        let m2 = ex.machines.iter().find(|m| m.machine == "m2").unwrap();
        assert_eq!(m2.note, Note::Excluded(vec![DRAINED.into()]));
        let ex = v.explain("g.service");
        assert_eq!(
            ex.verdict,
            Verdict::Global {
                machines: vec!["m1".into(), "m2".into()]
            }
        );
        // A drained machine gets no new global unit.
        let new_g = unit("h.service", GLOBAL, JobState::Launched);
        let mut all = units.to_vec();
        all.push(new_g);
        let s = snapshot(&["m1", "m2"], &all, &[], &[]);
        let v = ClusterView::new(&keys, &s, Some(&lock(&["m2"])));
        let puts = show(&v.changes());
        assert!(puts.iter().all(|p| !p.ends_with("m2 launched")), "{puts:?}");
        // The same through the free function, for fleetctl.
        let ex = explain(&keys, &s, Some(&lock(&["m2"])), "h.service");
        assert_eq!(
            ex.verdict,
            Verdict::Global {
                machines: vec!["m1".into()]
            }
        );
    }

    fn report(unit: &str, machine: &str, active: &str) -> UnitStateReport {
        UnitStateReport {
            unit: unit.into(),
            load: "loaded".into(),
            active: active.into(),
            sub: "x".into(),
            machine: machine.into(),
            hash: self::unit(unit, SLEEP, JobState::Launched).hash,
        }
    }

    #[test]
    fn a_drain_is_done_when_only_globals_are_scheduled_and_nothing_else_runs() {
        let units = [
            unit("a.service", SLEEP, JobState::Launched),
            unit("g.service", GLOBAL, JobState::Launched),
        ];
        let keys = Keys::default();
        let s = snapshot(
            &["m1", "m2"],
            &units,
            &[
                ("a.service", "m2"),
                ("g.service", "m1"),
                ("g.service", "m2"),
            ],
            &[],
        );
        let mut v = ClusterView::new(&keys, &s, None);
        assert!(v.drain_candidates().is_empty(), "no holder");
        let mark = |m: &str, r: i64| DrainMark {
            machine: m.into(),
            lock_revision: r,
        };
        // m2 takes the lock at revision 20 (m9, no fleet machine, holds a
        // slot too); a mark of m3 from an earlier hold is stale.
        v.set_drain_state(5, &[mark("m3", 5)], &[]);
        assert!(v.set_lock(Some(&lock(&["m2", "m9"])), 20));
        assert_eq!(v.stale_marks(), ["m3"]);
        // a is still scheduled there: m2 is not a candidate; m9 is.
        assert_eq!(v.drain_candidates(), ["m9"]);
        assert_eq!(v.drain_done("m9", &[], 0, None), Ok(mark("m9", 20)));
        let changes = v.changes();
        assert_eq!(
            show(&changes),
            ["delete a.service m2", "put a.service m1 launched"]
        );
        v.applied(&changes, 21);
        assert_eq!(v.drain_candidates(), ["m2", "m9"]);
        // The agent has not stopped a yet: not done; the global may run.
        let running = [
            report("a.service", "m2", "deactivating"),
            report("g.service", "m2", "active"),
        ];
        let why = v.drain_done("m2", &running, 0, Some(21)).unwrap_err();
        assert!(why.contains("a.service (deactivating/x)"), "{why}");
        assert!(!why.contains("g.service"), "{why}");
        let stopped = [
            report("a.service", "m2", "inactive"),
            report("g.service", "m2", "active"),
        ];
        assert_eq!(
            v.drain_done("m2", &stopped, 0, Some(21)),
            Ok(mark("m2", 20))
        );
        assert!(
            v.drain_done("m2", &stopped, 1, Some(21)).is_err(),
            "unreadable"
        );
        // No report of a at all (it started a moment before it moved and
        // was never reported): done only once the agent settled the
        // removal at 21; a settled mark from before it does not count.
        let unreported = [report("g.service", "m2", "active")];
        for settled in [None, Some(5), Some(20)] {
            let why = v.drain_done("m2", &unreported, 0, settled).unwrap_err();
            assert!(why.contains("revision 21"), "{why}");
        }
        assert_eq!(
            v.drain_done("m2", &unreported, 0, Some(21)),
            Ok(mark("m2", 20))
        );
        // A removal another engine made (seen as a watched deletion) counts
        // the same way.
        let mut w = ClusterView::new(&keys, &s, None);
        assert!(w.set_lock(Some(&lock(&["m2"])), 20));
        let gone = Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: keys.schedule_entry("m2", "a.service").into_bytes(),
                mod_revision: 25,
                ..KeyValue::default()
            },
            prev_kv: None,
        };
        assert!(w.apply_event(&gone));
        assert!(w.drain_done("m2", &unreported, 0, Some(21)).is_err());
        assert!(w.drain_done("m2", &unreported, 0, Some(25)).is_ok());
        v.applied(
            &[
                ScheduleChange::Drained(mark("m2", 20)),
                ScheduleChange::Undrained {
                    machine: "m3".into(),
                },
            ],
            22,
        );
        assert_eq!(v.drain_candidates(), ["m9"]);
        assert!(v.stale_marks().is_empty());
        // The lock changes (m9 leaves): m2's mark is due again.
        assert!(v.set_lock(Some(&lock(&["m2"])), 30));
        assert_eq!(v.drain_candidates(), ["m2"]);
        // Released: its mark is stale.
        assert!(v.set_lock(None, 31));
        assert_eq!(v.stale_marks(), ["m2"]);
        assert!(v.drain_candidates().is_empty());
    }

    #[test]
    fn unreadable_records() {
        let a = unit("a.service", SLEEP, JobState::Launched);
        let keys = Keys::default();
        let s = snapshot(
            &["m1"],
            std::slice::from_ref(&a),
            &[("a.service", "m1")],
            &[
                ("/cairn/fleet/units/frozen.service", "bad unit record"),
                ("/cairn/fleet/machines/m2", "bad machine record"),
                (
                    "/cairn/fleet/schedule/m1/junk.service",
                    "bad schedule record",
                ),
            ],
        );
        let mut v = ClusterView::new(&keys, &s, None);
        // m2 stays a machine; junk goes; frozen's entries would stay.
        assert_eq!(v.machines().count(), 2);
        assert_eq!(show(&v.changes()), ["delete junk.service m1"]);
        let frozen = Event {
            kind: EventKind::Put,
            kv: cairn_etcd::KeyValue {
                key: keys.schedule_entry("m1", "frozen.service").into_bytes(),
                value: b"{}".to_vec(),
                mod_revision: 12,
                ..Default::default()
            },
            prev_kv: None,
        };
        assert!(v.apply_event(&frozen));
        assert_eq!(show(&v.changes()), ["delete junk.service m1"]);
        assert!(v
            .explain("frozen.service")
            .notes
            .iter()
            .any(|n| n.contains("does not read")));
        // a turns unreadable: frozen where it is.
        let bad = Event {
            kind: EventKind::Put,
            kv: cairn_etcd::KeyValue {
                key: keys.unit("a.service").into_bytes(),
                value: b"{not json".to_vec(),
                mod_revision: 13,
                ..Default::default()
            },
            prev_kv: None,
        };
        assert!(v.apply_event(&bad));
        assert_eq!(show(&v.changes()), ["delete junk.service m1"]);
        // A machine's key deleted: gone.
        let gone = Event {
            kind: EventKind::Delete,
            kv: cairn_etcd::KeyValue {
                key: keys.machine("m2").into_bytes(),
                mod_revision: 14,
                ..Default::default()
            },
            prev_kv: None,
        };
        assert!(v.apply_event(&gone));
        assert_eq!(v.machines().count(), 1);
    }
}
