//! The registry: fleet's records in etcd v3 under one prefix ([`keys`]),
//! read and written with the guards each writer needs. fleetctl creates
//! units only where none exists and changes desired states by
//! compare-and-swap; agents keep their presence and unit states on their
//! own lease; the leader engine writes the schedule (and the drain marks
//! of reboot-lock holders) in transactions fenced by its leadership, so a
//! deposed engine cannot write.

pub mod keys;

use cairn_etcd::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, Leader, Op, PutOptions, Txn,
};
use cairn_formats::reboot_lock;
use cairn_formats::reboot_lock::fleet::DrainMark;
use thiserror::Error;

use crate::model::{
    MachineRecord, RecordError, ScheduleEntry, SettledMark, UnitRecord, UnitStateReport,
};
use crate::unit::JobState;
pub use keys::{check_machine_id, KeyError, Keys, DEFAULT_PREFIX};

/// The largest unit text the registry takes. etcd refuses requests over
/// 1.5 MiB by default, and a schedule entry carries the text again.
pub const MAX_UNIT_TEXT: usize = 256 << 10;

/// Ops per transaction: etcd's default `--max-txn-ops` is 128.
const MAX_TXN_OPS: usize = 100;

/// Bytes of values per transaction, below etcd's default 1.5 MiB request
/// limit with room for keys and JSON.
const MAX_TXN_BYTES: usize = 1 << 20;

/// Keys per page when reading a span.
const PAGE: i64 = 1000;

/// What the registry could not do.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error(transparent)]
    Etcd(#[from] cairn_etcd::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("unit {unit}: its text is {size} bytes, more than the {max} the registry takes")]
    TooLarge {
        unit: String,
        size: usize,
        max: usize,
    },
    /// A fenced write found the leadership gone.
    #[error("the engine lost its leadership; nothing more was written")]
    NotLeader,
    /// A record that does not read.
    #[error("{key}: {error}")]
    Unreadable { key: String, error: String },
    /// A compare-and-swap lost: the record changed (or went) meanwhile.
    #[error("{key} changed while it was being updated")]
    Conflict { key: String },
}

/// A record that did not read; readers skip it and say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    pub key: String,
    pub error: String,
}

/// Records of one kind as read at one revision, with the ones that did not
/// read.
#[derive(Debug, Clone)]
pub struct Records<T> {
    pub records: Vec<T>,
    pub bad: Vec<BadRecord>,
    pub revision: i64,
}

/// A unit record with the revision it was read at (for compare-and-swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub record: T,
    pub mod_revision: i64,
}

/// What the engine reads: machines, units and the schedule, all at one
/// revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub revision: i64,
    pub machines: Vec<MachineRecord>,
    pub units: Vec<UnitRecord>,
    pub schedule: Vec<ScheduleEntry>,
    pub bad: Vec<BadRecord>,
}

/// One change the engine makes to the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleChange {
    /// Write (create or replace) an entry.
    Put(ScheduleEntry),
    /// Remove a unit from a machine.
    Delete { machine: String, unit: String },
    /// Mark a reboot-lock holder drained (`drained/ID`).
    Drained(DrainMark),
    /// Remove a machine's drain mark (it no longer holds the lock).
    Undrained { machine: String },
}

/// fleet's records in one etcd.
#[derive(Debug, Clone)]
pub struct Registry {
    etcd: Client,
    keys: Keys,
}

impl Registry {
    pub fn new(etcd: Client, keys: Keys) -> Registry {
        Registry { etcd, keys }
    }

    pub fn etcd(&self) -> &Client {
        &self.etcd
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Every key under `prefix` at one revision (`revision` 0: the newest),
    /// read in pages; returns them with the revision read.
    pub async fn range(
        &self,
        prefix: &str,
        revision: i64,
    ) -> Result<(Vec<KeyValue>, i64), RegistryError> {
        let end = cairn_etcd::prefix_end(prefix.as_bytes());
        let mut out = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        let mut rev = revision;
        loop {
            let mut opts = GetOptions::new().range_end(end.clone()).limit(PAGE);
            if rev != 0 {
                opts = opts.revision(rev);
            }
            let r = self.etcd.get(&from, opts).await?;
            if rev == 0 {
                rev = r.header.revision;
            }
            let more = r.more;
            if let Some(last) = r.kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            let n = r.kvs.len();
            out.extend(r.kvs);
            if !more || n == 0 {
                return Ok((out, rev));
            }
        }
    }

    async fn read<T>(
        &self,
        prefix: &str,
        revision: i64,
        parse: impl Fn(&str) -> Result<T, RecordError>,
    ) -> Result<Records<T>, RegistryError> {
        let (kvs, revision) = self.range(prefix, revision).await?;
        Ok(parse_all(kvs, revision, parse))
    }

    pub async fn machines(&self) -> Result<Records<MachineRecord>, RegistryError> {
        self.read(&self.keys.machines(), 0, MachineRecord::from_json)
            .await
    }

    pub async fn units(&self) -> Result<Records<UnitRecord>, RegistryError> {
        self.read(&self.keys.units(), 0, UnitRecord::from_json)
            .await
    }

    pub async fn states(&self) -> Result<Records<UnitStateReport>, RegistryError> {
        self.read(&self.keys.states(), 0, UnitStateReport::from_json)
            .await
    }

    pub async fn schedule(&self) -> Result<Records<ScheduleEntry>, RegistryError> {
        self.read(&self.keys.schedule(), 0, ScheduleEntry::from_json)
            .await
    }

    /// One machine's schedule, and the revision to watch it from (+1).
    pub async fn schedule_of(
        &self,
        machine: &str,
    ) -> Result<Records<ScheduleEntry>, RegistryError> {
        check_machine_id(machine)?;
        self.read(&self.keys.schedule_of(machine), 0, ScheduleEntry::from_json)
            .await
    }

    /// Machines, units and schedule at one revision.
    pub async fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        let machines = self.machines().await?;
        let rev = machines.revision;
        let units = self
            .read(&self.keys.units(), rev, UnitRecord::from_json)
            .await?;
        let schedule = self
            .read(&self.keys.schedule(), rev, ScheduleEntry::from_json)
            .await?;
        let mut bad = machines.bad;
        bad.extend(units.bad);
        bad.extend(schedule.bad);
        Ok(Snapshot {
            revision: rev,
            machines: machines.records,
            units: units.records,
            schedule: schedule.records,
            bad,
        })
    }

    /// One unit with its revision; `None` when there is none.
    pub async fn unit(&self, name: &str) -> Result<Option<Versioned<UnitRecord>>, RegistryError> {
        let r = self
            .etcd
            .get(self.keys.unit(name), GetOptions::new())
            .await?;
        let Some(kv) = r.kvs.into_iter().next() else {
            return Ok(None);
        };
        match UnitRecord::from_json(&kv.value_str()) {
            Ok(record) => Ok(Some(Versioned {
                record,
                mod_revision: kv.mod_revision,
            })),
            Err(e) => Err(RegistryError::Unreadable {
                key: kv.key_str().into_owned(),
                error: e.to_string(),
            }),
        }
    }

    /// Stores a unit unless one of that name exists (as `fleetctl submit`);
    /// returns the one that exists, if any, untouched.
    pub async fn create_unit(
        &self,
        unit: &UnitRecord,
    ) -> Result<Option<UnitRecord>, RegistryError> {
        check_size(unit)?;
        let key = self.keys.unit(&unit.name);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([Op::put(key.clone(), unit.to_json(), PutOptions::new())])
            .or_else([Op::get(key, GetOptions::new())]);
        let r = self.etcd.txn(txn).await?;
        if r.succeeded {
            return Ok(None);
        }
        let existing = r
            .responses
            .iter()
            .filter_map(|o| o.as_get())
            .find_map(|g| g.kvs.first())
            .map(|kv| UnitRecord::from_json(&kv.value_str()));
        match existing {
            Some(Ok(u)) => Ok(Some(u)),
            // unreadable or gone between compare and read (not possible in
            // one txn): report it as a conflict on the key
            _ => Err(RegistryError::Conflict {
                key: self.keys.unit(&unit.name),
            }),
        }
    }

    /// Sets a unit's desired state if it is still at `mod_revision`.
    pub async fn set_desired_state(
        &self,
        unit: &Versioned<UnitRecord>,
        state: JobState,
    ) -> Result<(), RegistryError> {
        let key = self.keys.unit(&unit.record.name);
        let mut record = unit.record.clone();
        record.desired_state = state;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                unit.mod_revision,
            )])
            .and_then([Op::put(key.clone(), record.to_json(), PutOptions::new())]);
        if self.etcd.txn(txn).await?.succeeded {
            Ok(())
        } else {
            Err(RegistryError::Conflict { key })
        }
    }

    /// Removes a unit (as `fleetctl destroy`); true when it was there. The
    /// engine takes it off its machine.
    pub async fn destroy_unit(&self, name: &str) -> Result<bool, RegistryError> {
        let r = self
            .etcd
            .delete(self.keys.unit(name), DeleteOptions::new())
            .await?;
        Ok(r.deleted > 0)
    }

    /// Writes the machine's presence on its lease.
    pub async fn announce(&self, machine: &MachineRecord, lease: i64) -> Result<(), RegistryError> {
        check_machine_id(&machine.id)?;
        self.etcd
            .put(
                self.keys.machine(&machine.id),
                machine.to_json(),
                PutOptions::new().lease(lease),
            )
            .await?;
        Ok(())
    }

    /// Writes a unit state report on the agent's lease.
    pub async fn report(&self, report: &UnitStateReport, lease: i64) -> Result<(), RegistryError> {
        check_machine_id(&report.machine)?;
        self.etcd
            .put(
                self.keys.state(&report.machine, &report.unit),
                report.to_json(),
                PutOptions::new().lease(lease),
            )
            .await?;
        Ok(())
    }

    /// Writes the agent's settled mark on its lease.
    pub async fn settle(
        &self,
        machine: &str,
        mark: SettledMark,
        lease: i64,
    ) -> Result<(), RegistryError> {
        check_machine_id(machine)?;
        self.etcd
            .put(
                self.keys.settled_of(machine),
                mark.to_json(),
                PutOptions::new().lease(lease),
            )
            .await?;
        Ok(())
    }

    /// Machine `machine`'s settled mark now: `None` when there is none,
    /// an error when it does not read.
    pub async fn settled_of(&self, machine: &str) -> Result<Option<SettledMark>, RegistryError> {
        check_machine_id(machine)?;
        let key = self.keys.settled_of(machine);
        let r = self.etcd.get(key.clone(), GetOptions::new()).await?;
        match r.kvs.first() {
            None => Ok(None),
            Some(kv) => SettledMark::from_json(&kv.value_str())
                .map(Some)
                .map_err(|e| RegistryError::Unreadable {
                    key,
                    error: e.to_string(),
                }),
        }
    }

    /// Removes a unit state report (the agent unloaded the unit).
    pub async fn clear_report(&self, machine: &str, unit: &str) -> Result<(), RegistryError> {
        check_machine_id(machine)?;
        self.etcd
            .delete(self.keys.state(machine, unit), DeleteOptions::new())
            .await?;
        Ok(())
    }

    /// Applies schedule changes as the engine led by `leader`: in
    /// transactions of at most 100 ops and 1 MiB, each fenced by the
    /// leadership. Stops at the first fence that fails
    /// ([`RegistryError::NotLeader`]); the changes before it stand (each
    /// was made by the leader while it led). Returns the revision of the
    /// last write.
    pub async fn apply(
        &self,
        leader: &Leader,
        changes: &[ScheduleChange],
    ) -> Result<i64, RegistryError> {
        let mut rev = 0;
        for chunk in chunks(changes) {
            let ops = chunk
                .iter()
                .map(|c| self.op(c))
                .collect::<Result<Vec<_>, _>>()?;
            let r = self
                .etcd
                .txn(leader.fenced(Txn::new()).and_then(ops))
                .await?;
            if !r.succeeded {
                return Err(RegistryError::NotLeader);
            }
            rev = r.header.revision;
        }
        Ok(rev)
    }

    fn op(&self, change: &ScheduleChange) -> Result<Op, RegistryError> {
        Ok(match change {
            ScheduleChange::Put(e) => {
                check_machine_id(&e.machine)?;
                Op::put(
                    self.keys.schedule_entry(&e.machine, &e.unit),
                    e.to_json(),
                    PutOptions::new(),
                )
            }
            ScheduleChange::Delete { machine, unit } => {
                check_machine_id(machine)?;
                Op::delete(
                    self.keys.schedule_entry(machine, unit),
                    DeleteOptions::new(),
                )
            }
            ScheduleChange::Drained(mark) => {
                check_machine_id(&mark.machine)?;
                Op::put(
                    self.keys.drained_of(&mark.machine),
                    serde_json::to_string(mark).expect("plain data"),
                    PutOptions::new(),
                )
            }
            ScheduleChange::Undrained { machine } => {
                check_machine_id(machine)?;
                Op::delete(self.keys.drained_of(machine), DeleteOptions::new())
            }
        })
    }
}

/// What the engine reads besides the registry's records: who leads and
/// the cluster's reboot lock. (Added for the engine; the functions above
/// are shared.)
impl Registry {
    /// Who holds the engine's election key at `revision` (0: now).
    pub async fn leader_at(&self, revision: i64) -> Result<Option<Leader>, RegistryError> {
        let mut opts = GetOptions::new();
        if revision != 0 {
            opts = opts.revision(revision);
        }
        let r = self.etcd.get(self.keys.leader(), opts).await?;
        Ok(r.kvs.into_iter().next().map(|kv| Leader {
            key: kv.key,
            value: kv.value,
            lease: kv.lease,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        }))
    }

    /// The reboot lock (locksmith's semaphore, `cairn_formats::reboot_lock`,
    /// outside the registry's prefix) at `revision` (0: now): `None` when
    /// the key does not exist, [`RegistryError::Unreadable`] when it holds
    /// something else.
    pub async fn reboot_lock(
        &self,
        revision: i64,
    ) -> Result<Option<reboot_lock::Semaphore>, RegistryError> {
        Ok(self
            .reboot_lock_versioned(revision)
            .await?
            .map(|v| v.record))
    }

    /// [`Registry::reboot_lock`] with the key's `mod_revision` (what drain
    /// marks carry).
    pub async fn reboot_lock_versioned(
        &self,
        revision: i64,
    ) -> Result<Option<Versioned<reboot_lock::Semaphore>>, RegistryError> {
        let mut opts = GetOptions::new();
        if revision != 0 {
            opts = opts.revision(revision);
        }
        let r = self.etcd.get(reboot_lock::LOCK_KEY, opts).await?;
        let Some(kv) = r.kvs.into_iter().next() else {
            return Ok(None);
        };
        parse_reboot_lock(&kv.value)
            .map(|record| {
                Some(Versioned {
                    record,
                    mod_revision: kv.mod_revision,
                })
            })
            .map_err(|error| RegistryError::Unreadable {
                key: reboot_lock::LOCK_KEY.to_string(),
                error,
            })
    }

    /// The drain marks at `revision` (0: now), by machine; a mark that
    /// does not read (or names another machine than its key) is left out
    /// with its key in the second list.
    pub async fn drain_marks(
        &self,
        revision: i64,
    ) -> Result<(Vec<DrainMark>, Vec<BadRecord>), RegistryError> {
        let (kvs, _) = self.range(&self.keys.drained(), revision).await?;
        let mut marks = Vec::new();
        let mut bad = Vec::new();
        for kv in kvs {
            let key = kv.key_str().into_owned();
            match serde_json::from_slice::<DrainMark>(&kv.value) {
                Ok(m) if self.keys.last(&key) == Some(m.machine.as_str()) => marks.push(m),
                Ok(m) => bad.push(BadRecord {
                    key,
                    error: format!("the drain mark names machine {:?}", m.machine),
                }),
                Err(e) => bad.push(BadRecord {
                    key,
                    error: format!("bad drain mark: {e}"),
                }),
            }
        }
        Ok((marks, bad))
    }

    /// The unit state reports of one machine, now.
    pub async fn states_of(
        &self,
        machine: &str,
    ) -> Result<Records<UnitStateReport>, RegistryError> {
        check_machine_id(machine)?;
        self.read(&self.keys.states_of(machine), 0, UnitStateReport::from_json)
            .await
    }
}

/// Reads the reboot lock's value (locksmith's JSON).
pub fn parse_reboot_lock(value: &[u8]) -> Result<reboot_lock::Semaphore, String> {
    serde_json::from_slice(value).map_err(|e| format!("not a reboot lock semaphore: {e}"))
}

/// How many range requests [`Registry::range`] makes for a span of `keys`
/// keys (pages of 1000; one for an empty span): for request counters.
pub fn range_requests(keys: usize) -> u64 {
    keys.div_ceil(PAGE as usize).max(1) as u64
}

/// How many transactions [`Registry::apply`] makes for `changes` when
/// every fence holds: for request counters.
pub fn transactions(changes: &[ScheduleChange]) -> u64 {
    chunks(changes).len() as u64
}

fn check_size(unit: &UnitRecord) -> Result<(), RegistryError> {
    if unit.contents.len() > MAX_UNIT_TEXT {
        return Err(RegistryError::TooLarge {
            unit: unit.name.clone(),
            size: unit.contents.len(),
            max: MAX_UNIT_TEXT,
        });
    }
    Ok(())
}

fn change_size(c: &ScheduleChange) -> usize {
    match c {
        ScheduleChange::Put(e) => e.contents.len() + 256,
        _ => 128,
    }
}

/// Splits changes into transactions of at most [`MAX_TXN_OPS`] ops and
/// about [`MAX_TXN_BYTES`] bytes (one change always fits).
fn chunks(changes: &[ScheduleChange]) -> Vec<&[ScheduleChange]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, c) in changes.iter().enumerate() {
        let size = change_size(c);
        if i > start && (i - start >= MAX_TXN_OPS || bytes + size > MAX_TXN_BYTES) {
            out.push(&changes[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < changes.len() {
        out.push(&changes[start..]);
    }
    out
}

fn parse_all<T>(
    kvs: Vec<KeyValue>,
    revision: i64,
    parse: impl Fn(&str) -> Result<T, RecordError>,
) -> Records<T> {
    let mut records = Vec::with_capacity(kvs.len());
    let mut bad = Vec::new();
    for kv in kvs {
        match parse(&kv.value_str()) {
            Ok(r) => records.push(r),
            Err(e) => bad.push(BadRecord {
                key: kv.key_str().into_owned(),
                error: e.to_string(),
            }),
        }
    }
    Records {
        records,
        bad,
        revision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(unit: &str, size: usize) -> ScheduleChange {
        let r = UnitRecord::submit(
            unit,
            format!(
                "[Service]\n{}ExecStart=/bin/true\n",
                "# padding\n".repeat(size / 10)
            ),
            JobState::Launched,
        )
        .unwrap();
        ScheduleChange::Put(ScheduleEntry::new(&r, "m1"))
    }

    #[test]
    fn transactions_are_cut_by_count_and_bytes() {
        let small: Vec<ScheduleChange> = (0..250)
            .map(|i| put(&format!("u{i}.service"), 10))
            .collect();
        let c = chunks(&small);
        assert_eq!(
            c.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        let big: Vec<ScheduleChange> = (0..9)
            .map(|i| put(&format!("u{i}.service"), 200 << 10))
            .collect();
        let c = chunks(&big);
        assert_eq!(c.iter().map(|c| c.len()).collect::<Vec<_>>(), [5, 4]);
        // one change larger than the byte budget still goes, alone
        let huge = vec![put("a.service", 2 << 20), put("b.service", 10)];
        assert_eq!(chunks(&huge).len(), 2);
        assert!(chunks(&[]).is_empty());
    }

    #[test]
    fn bad_records_are_kept_aside() {
        let good = MachineRecord {
            id: "m1".into(),
            public_ip: "127.0.0.1".into(),
            metadata: Default::default(),
            version: "1".into(),
        };
        let kvs = vec![
            KeyValue {
                key: b"/cairn/fleet/machines/m1".to_vec(),
                value: good.to_json().into_bytes(),
                ..Default::default()
            },
            KeyValue {
                key: b"/cairn/fleet/machines/m2".to_vec(),
                value: b"{not json".to_vec(),
                ..Default::default()
            },
        ];
        let r = parse_all(kvs, 7, MachineRecord::from_json);
        assert_eq!(r.records, [good]);
        assert_eq!(r.revision, 7);
        assert_eq!(r.bad.len(), 1);
        assert_eq!(r.bad[0].key, "/cairn/fleet/machines/m2");
        assert!(
            r.bad[0].error.starts_with("bad machine record"),
            "{}",
            r.bad[0].error
        );
    }
}
