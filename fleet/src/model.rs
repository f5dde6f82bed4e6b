//! The JSON records the registry keeps in etcd (units, machines, schedule
//! entries, unit state reports), strict about unknown fields since cairn
//! owns the format, with the checks a reader makes on them; and machine
//! metadata as fleet's `metadata` setting wrote it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::schedule::{Machine, SchedUnit};
use crate::unit::{JobState, Unit, UnitError, UnitHash};

/// A record that could not be read or does not hold together.
#[derive(Debug, Error)]
pub enum RecordError {
    #[error("bad {what} record: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Unit(#[from] UnitError),
    #[error("unit {name}: stored hash {stored} does not match its contents ({computed})")]
    HashMismatch {
        name: String,
        stored: UnitHash,
        computed: UnitHash,
    },
}

/// A submitted unit: its name, its text as submitted (byte for byte), the
/// hash of that text as fleet computed it, and the desired state fleetctl
/// set. Instances carry their template's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitRecord {
    pub name: String,
    pub contents: String,
    pub hash: UnitHash,
    pub desired_state: JobState,
}

impl UnitRecord {
    /// The record of a checked unit.
    pub fn new(unit: &Unit, desired_state: JobState) -> UnitRecord {
        UnitRecord {
            name: unit.name.to_string(),
            contents: unit.file.text().to_string(),
            hash: unit.hash(),
            desired_state,
        }
    }

    /// Checks `contents` as fleetctl submit does and makes the record.
    pub fn submit(
        name: &str,
        contents: impl Into<String>,
        desired_state: JobState,
    ) -> Result<UnitRecord, UnitError> {
        Ok(UnitRecord::new(
            &Unit::parse(name, contents)?,
            desired_state,
        ))
    }

    /// The unit, parsed again; its hash must be the stored one.
    pub fn unit(&self) -> Result<Unit, RecordError> {
        checked_unit(&self.name, &self.contents, self.hash)
    }

    /// What the scheduler needs of it.
    pub fn sched_unit(&self) -> Result<SchedUnit, RecordError> {
        Ok(SchedUnit::from_unit(&self.unit()?, self.desired_state))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }

    /// Reads a record and checks it holds together (name, contents, hash).
    pub fn from_json(s: &str) -> Result<UnitRecord, RecordError> {
        let r: UnitRecord = from_json("unit", s)?;
        r.unit()?;
        Ok(r)
    }
}

/// A machine's presence: what `fleetctl list-machines` shows and the
/// scheduler reads. `version` is the fleetd version the machine runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineRecord {
    pub id: String,
    pub public_ip: String,
    pub metadata: BTreeMap<String, String>,
    pub version: String,
}

impl MachineRecord {
    /// The scheduler's view.
    pub fn machine(&self) -> Machine {
        Machine {
            id: self.id.clone(),
            public_ip: self.public_ip.clone(),
            metadata: self.metadata.clone(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }

    pub fn from_json(s: &str) -> Result<MachineRecord, RecordError> {
        from_json("machine", s)
    }
}

/// One line of the schedule: this unit goes on this machine, in this
/// desired state (`loaded` or `launched`), with this text. The entry
/// carries the unit's text and hash so that an agent needs nothing but its
/// own schedule prefix: it never reads or watches the unit list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleEntry {
    pub unit: String,
    pub machine: String,
    pub desired_state: JobState,
    pub hash: UnitHash,
    pub contents: String,
}

impl ScheduleEntry {
    /// The entry that puts `unit` on `machine`.
    pub fn new(unit: &UnitRecord, machine: &str) -> ScheduleEntry {
        ScheduleEntry {
            unit: unit.name.clone(),
            machine: machine.to_string(),
            desired_state: unit.desired_state,
            hash: unit.hash,
            contents: unit.contents.clone(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }

    /// Reads an entry and checks its text against its hash.
    pub fn from_json(s: &str) -> Result<ScheduleEntry, RecordError> {
        let e: ScheduleEntry = from_json("schedule", s)?;
        e.unit()?;
        Ok(e)
    }

    /// The unit, parsed again; its hash must be the stored one.
    pub fn unit(&self) -> Result<Unit, RecordError> {
        checked_unit(&self.unit, &self.contents, self.hash)
    }
}

/// What an agent reports about a unit it runs: systemd's LOAD, ACTIVE and
/// SUB (as `systemctl list-units` shows them, passed on untouched as
/// fleet did), the machine, and the hash of the unit text it loaded (so a
/// stale report is told from a current one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitStateReport {
    pub unit: String,
    pub load: String,
    pub active: String,
    pub sub: String,
    pub machine: String,
    pub hash: UnitHash,
}

impl UnitStateReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }

    pub fn from_json(s: &str) -> Result<UnitStateReport, RecordError> {
        from_json("unit state", s)
    }
}

/// An agent's word (`settled/ID`, on its lease) that every removal from
/// its schedule up to `revision` (the etcd revision of the deletion) is
/// carried out: the units stopped and unloaded, their reports deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettledMark {
    pub revision: i64,
}

impl SettledMark {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }

    pub fn from_json(s: &str) -> Result<SettledMark, RecordError> {
        from_json("settled mark", s)
    }
}

/// `contents` parsed as unit `name`, refused unless it hashes to `stored`.
fn checked_unit(name: &str, contents: &str, stored: UnitHash) -> Result<Unit, RecordError> {
    let unit = Unit::parse(name, contents)?;
    let computed = unit.hash();
    if computed != stored {
        return Err(RecordError::HashMismatch {
            name: name.to_string(),
            stored,
            computed,
        });
    }
    Ok(unit)
}

fn from_json<T: for<'de> Deserialize<'de>>(what: &'static str, s: &str) -> Result<T, RecordError> {
    serde_json::from_str(s).map_err(|source| RecordError::Json { what, source })
}

/// Machine metadata that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetadataError {
    #[error("metadata {0:?} is not key=value")]
    NotKeyValue(String),
    #[error("metadata key {0:?} given twice")]
    Twice(String),
}

/// Reads machine metadata as fleet's `metadata` setting (and cloud-config's
/// `coreos.fleet.metadata`) wrote it: `key=value` pairs separated by
/// commas, spaces around each trimmed (`"role=worker, region=eu"`). fleet
/// skipped a pair without `=` and let a repeated key win; both are refused.
pub fn parse_metadata(s: &str) -> Result<BTreeMap<String, String>, MetadataError> {
    let mut out = BTreeMap::new();
    if s.trim().is_empty() {
        return Ok(out);
    }
    for pair in s.split(',') {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(MetadataError::NotKeyValue(pair.trim().to_string()));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(MetadataError::NotKeyValue(pair.trim().to_string()));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(MetadataError::Twice(k.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "[Service]\nExecStart=/bin/sleep 100\n";

    #[test]
    fn unit_record_round_trip() {
        let r = UnitRecord::submit("hello.service", HELLO, JobState::Launched).unwrap();
        let json = r.to_json();
        assert_eq!(
            json,
            r#"{"name":"hello.service","contents":"[Service]\nExecStart=/bin/sleep 100\n","hash":"1c6fb6f3684bafb0c173d8b8b957ceff031180c1","desired_state":"launched"}"#
        );
        assert_eq!(UnitRecord::from_json(&json).unwrap(), r);
        let s = r.sched_unit().unwrap();
        assert_eq!(s.name, "hello.service");
        assert_eq!(s.desired, JobState::Launched);
    }

    #[test]
    fn unit_record_refusals() {
        let good = UnitRecord::submit("hello.service", HELLO, JobState::Inactive).unwrap();
        // Unknown fields.
        let extra = good
            .to_json()
            .replace("{\"name\"", "{\"owner\":\"x\",\"name\"");
        let e = UnitRecord::from_json(&extra).unwrap_err().to_string();
        assert!(
            e.starts_with("bad unit record: unknown field `owner`"),
            "{e}"
        );
        // A hash that does not match the text.
        let mut bad = good.clone();
        bad.contents.push_str("User=nobody\n");
        let e = UnitRecord::from_json(&bad.to_json())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("unit hello.service: stored hash 1c6fb6f3684bafb0c173d8b8b957ceff031180c1 does not match its contents"), "{e}");
        // A bad state, a bad hash, a bad unit.
        let e = UnitRecord::from_json(&good.to_json().replace("inactive", "running")).unwrap_err();
        assert!(e.to_string().contains("unknown variant `running`"), "{e}");
        let e = UnitRecord::from_json(&good.to_json().replace("1c6fb6f", "zzzzzzz")).unwrap_err();
        assert!(e.to_string().contains("is not a unit hash"), "{e}");
        let e = UnitRecord::submit(
            "hello.service",
            "[X-Fleet]\nGlobal=perhaps\n",
            JobState::Inactive,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("hello.service: line 2: [X-Fleet] Global:"),
            "{e}"
        );
    }

    #[test]
    fn machine_record() {
        let m = MachineRecord {
            id: "0123456789abcdef0123456789abcdef".into(),
            public_ip: "10.0.0.1".into(),
            metadata: parse_metadata("role=web, region=eu").unwrap(),
            version: "0.1.0".into(),
        };
        let json = m.to_json();
        assert_eq!(
            json,
            r#"{"id":"0123456789abcdef0123456789abcdef","public_ip":"10.0.0.1","metadata":{"region":"eu","role":"web"},"version":"0.1.0"}"#
        );
        assert_eq!(MachineRecord::from_json(&json).unwrap(), m);
        assert_eq!(m.machine().short_id(), "01234567");
        assert!(MachineRecord::from_json(r#"{"id":"x"}"#).is_err());
        assert!(MachineRecord::from_json(&json.replace("}", r#","extra":1}"#)).is_err());
    }

    #[test]
    fn schedule_and_state_records() {
        let u = UnitRecord::submit("web@1.service", HELLO, JobState::Launched).unwrap();
        let e = ScheduleEntry::new(&u, "m1");
        assert_eq!(
            e.to_json(),
            r#"{"unit":"web@1.service","machine":"m1","desired_state":"launched","hash":"1c6fb6f3684bafb0c173d8b8b957ceff031180c1","contents":"[Service]\nExecStart=/bin/sleep 100\n"}"#
        );
        assert_eq!(ScheduleEntry::from_json(&e.to_json()).unwrap(), e);
        let extra = e.to_json().replace("{\"unit\"", "{\"when\":1,\"unit\"");
        assert!(ScheduleEntry::from_json(&extra).is_err());
        let s = UnitStateReport {
            unit: "hello.service".into(),
            load: "loaded".into(),
            active: "active".into(),
            sub: "running".into(),
            machine: "m1".into(),
            hash: "1c6fb6f3684bafb0c173d8b8b957ceff031180c1".parse().unwrap(),
        };
        assert_eq!(UnitStateReport::from_json(&s.to_json()).unwrap(), s);
        assert!(UnitStateReport::from_json(&s.to_json().replace("\"sub\"", "\"Sub\"")).is_err());
    }

    #[test]
    fn metadata_setting() {
        let table: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("  ", &[]),
            (
                "role=worker,region=eu",
                &[("region", "eu"), ("role", "worker")],
            ),
            (
                " role = worker , region=eu ",
                &[("region", "eu"), ("role", "worker")],
            ),
            ("a=b=c", &[("a", "b=c")]),
            ("a=", &[("a", "")]),
        ];
        for (s, want) in table {
            let got = parse_metadata(s).unwrap();
            let want: BTreeMap<String, String> = want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, want, "{s:?}");
        }
        assert_eq!(
            parse_metadata("role=web,oops").unwrap_err().to_string(),
            "metadata \"oops\" is not key=value"
        );
        assert_eq!(
            parse_metadata("=x").unwrap_err(),
            MetadataError::NotKeyValue("=x".into())
        );
        assert_eq!(
            parse_metadata("a=1,a=2").unwrap_err().to_string(),
            "metadata key \"a\" given twice"
        );
    }
}
