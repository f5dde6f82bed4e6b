//! The agent's pure decisions: whether a schedule key and its value are an
//! entry this agent takes, and what to do next with one unit given what the
//! schedule wants, what the agent did last and what the backend manages.

use thiserror::Error;

use crate::model::{RecordError, ScheduleEntry};
use crate::registry::Keys;
use crate::systemd::{check_unit_name, UnitState};
use crate::unit::{JobState, UnitHash};

/// A schedule key or entry the agent refuses (and touches nothing for).
#[derive(Debug, Error)]
pub(crate) enum EntryError {
    #[error("{key}: not a unit key under this machine's schedule")]
    Key { key: String },
    #[error("{key}: {reason}")]
    Name { key: String, reason: String },
    #[error("{key}: the value is not UTF-8")]
    Utf8 { key: String },
    #[error("{key}: {source}")]
    Record {
        key: String,
        #[source]
        source: RecordError,
    },
    #[error("{key}: the entry names {field} {value:?}, the key {expected:?}")]
    Mismatch {
        key: String,
        field: &'static str,
        value: String,
        expected: String,
    },
    #[error("{key}: desired state inactive in a schedule entry (the engine never writes one)")]
    Inactive { key: String },
}

impl EntryError {
    /// The unit name the key holds, when it is a valid one: the agent keeps
    /// whatever it had under that name (it neither loads nor unloads it).
    pub(crate) fn held_name(&self) -> Option<&str> {
        match self {
            EntryError::Key { .. } | EntryError::Name { .. } => None,
            EntryError::Utf8 { key }
            | EntryError::Record { key, .. }
            | EntryError::Mismatch { key, .. }
            | EntryError::Inactive { key } => key.rsplit('/').next(),
        }
    }
}

/// The unit name of a key under `schedule/ME/`: one plain unit name (no
/// `/`, no `..`, fleet's naming rules).
pub(crate) fn unit_of<'k>(keys: &Keys, me: &str, key: &'k str) -> Result<&'k str, EntryError> {
    let bad_key = || EntryError::Key {
        key: key.to_string(),
    };
    let name = key
        .strip_prefix(keys.schedule_of(me).as_str())
        .ok_or_else(bad_key)?;
    if name.is_empty() || name.contains('/') {
        return Err(bad_key());
    }
    check_unit_name(name).map_err(|e| EntryError::Name {
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    Ok(name)
}

/// Reads the entry at `key`: a valid unit name, a record that holds
/// together (strict JSON, the text parses, its hash is the stored one),
/// naming this unit and this machine, desired loaded or launched.
pub(crate) fn check_entry(
    keys: &Keys,
    me: &str,
    key: &str,
    value: &[u8],
) -> Result<ScheduleEntry, EntryError> {
    let name = unit_of(keys, me, key)?;
    let k = || key.to_string();
    let text = std::str::from_utf8(value).map_err(|_| EntryError::Utf8 { key: k() })?;
    let entry =
        ScheduleEntry::from_json(text).map_err(|source| EntryError::Record { key: k(), source })?;
    if entry.unit != name {
        return Err(EntryError::Mismatch {
            key: k(),
            field: "unit",
            value: entry.unit,
            expected: name.to_string(),
        });
    }
    if entry.machine != me {
        return Err(EntryError::Mismatch {
            key: k(),
            field: "machine",
            value: entry.machine,
            expected: me.to_string(),
        });
    }
    if entry.desired_state == JobState::Inactive {
        return Err(EntryError::Inactive { key: k() });
    }
    Ok(entry)
}

/// What the agent last did to a unit: loaded this text, and started it or
/// not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    pub hash: UnitHash,
    pub launched: bool,
}

/// One step on one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Load,
    Start,
    Stop,
    Unload,
}

impl Step {
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Step::Load => "load",
            Step::Start => "start",
            Step::Stop => "stop",
            Step::Unload => "unload",
        }
    }
}

/// Whether a state counts as started (a failed or stopping unit is not).
pub(crate) fn is_up(state: &UnitState) -> bool {
    matches!(
        state.active_state.as_str(),
        "active" | "activating" | "reloading"
    )
}

/// The next step for one unit, or `None` when it is where it should be.
///
/// * `desired`: its schedule entry (`None`: not scheduled here).
/// * `applied`: what the agent did last.
/// * `present`: the backend manages it (adopted or loaded).
/// * `may_unload_stale`: the schedule was read, and nothing refused is
///   held under this name.
///
/// A new text for a started unit unloads it first (stop, then unload) and
/// loads and starts it again, as fleet did; a new text for a unit not
/// started is loaded over the old one.
pub(crate) fn next_step(
    desired: Option<&ScheduleEntry>,
    applied: Option<&Applied>,
    present: bool,
    may_unload_stale: bool,
) -> Option<Step> {
    match (desired, applied) {
        (None, None) => (present && may_unload_stale).then_some(Step::Unload),
        (None, Some(_)) => may_unload_stale.then_some(Step::Unload),
        (Some(_), None) => Some(Step::Load),
        (Some(e), Some(a)) if a.hash != e.hash => {
            Some(if a.launched { Step::Unload } else { Step::Load })
        }
        (Some(e), Some(a)) => match e.desired_state {
            JobState::Launched if !a.launched => Some(Step::Start),
            JobState::Loaded if a.launched => Some(Step::Stop),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UnitRecord;

    const TEXT: &str = "[Service]\nExecStart=/bin/sleep 100\n";

    fn entry(unit: &str, machine: &str, state: JobState, text: &str) -> ScheduleEntry {
        let r = UnitRecord::submit(unit, text, JobState::Launched).unwrap();
        let mut e = ScheduleEntry::new(&r, machine);
        e.desired_state = state;
        e
    }

    #[test]
    fn entries_are_checked_against_their_key() {
        let k = Keys::default();
        let good = entry("a.service", "m1", JobState::Launched, TEXT);
        let key = k.schedule_entry("m1", "a.service");
        assert_eq!(
            check_entry(&k, "m1", &key, good.to_json().as_bytes()).unwrap(),
            good
        );
        let refuse = |key: &str, value: &str| check_entry(&k, "m1", key, value.as_bytes());
        // keys: another machine, a sub-folder, dot names, bad unit names
        for bad in [
            k.schedule_entry("m10", "a.service"),
            k.schedule_entry("m1", "x/a.service"),
            format!("{}schedule/m1/", k.prefix()),
            k.unit("a.service"),
        ] {
            let e = refuse(&bad, &good.to_json()).unwrap_err();
            assert!(matches!(e, EntryError::Key { .. }), "{bad}: {e}");
            assert_eq!(e.held_name(), None);
        }
        for bad in ["..", ".", ".a.service", "a.txt", "a b.service"] {
            let key = k.schedule_entry("m1", bad);
            let e = refuse(&key, &good.to_json()).unwrap_err();
            assert!(matches!(e, EntryError::Name { .. }), "{bad}: {e}");
            assert_eq!(e.held_name(), None);
        }
        // values
        let e = refuse(&key, "{not json").unwrap_err();
        assert!(e.to_string().contains("bad schedule record"), "{e}");
        assert_eq!(e.held_name(), Some("a.service"));
        let mut forged = good.clone();
        forged.contents.push_str("User=root\n");
        let e = refuse(&key, &forged.to_json()).unwrap_err();
        assert!(e.to_string().contains("does not match its contents"), "{e}");
        let other = entry("b.service", "m1", JobState::Launched, TEXT);
        let e = refuse(&key, &other.to_json()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/cairn/fleet/schedule/m1/a.service: the entry names unit \"b.service\", the key \"a.service\""
        );
        assert_eq!(e.held_name(), Some("a.service"));
        let elsewhere = entry("a.service", "m2", JobState::Launched, TEXT);
        assert!(matches!(
            refuse(&key, &elsewhere.to_json()).unwrap_err(),
            EntryError::Mismatch {
                field: "machine",
                ..
            }
        ));
        let inactive = entry("a.service", "m1", JobState::Inactive, TEXT);
        assert!(matches!(
            refuse(&key, &inactive.to_json()).unwrap_err(),
            EntryError::Inactive { .. }
        ));
        let e = check_entry(&k, "m1", &key, b"\xff\xfe").unwrap_err();
        assert!(matches!(e, EntryError::Utf8 { .. }));
    }

    #[test]
    fn steps() {
        let launched = entry("a.service", "m1", JobState::Launched, TEXT);
        let loaded = entry("a.service", "m1", JobState::Loaded, TEXT);
        let other = entry(
            "a.service",
            "m1",
            JobState::Launched,
            "[Service]\nExecStart=/bin/true\n",
        );
        let up = Applied {
            hash: launched.hash,
            launched: true,
        };
        let down = Applied {
            hash: launched.hash,
            launched: false,
        };
        // nothing scheduled: stale units go, but only once the schedule was read
        assert_eq!(next_step(None, None, false, true), None);
        assert_eq!(next_step(None, None, true, false), None);
        assert_eq!(next_step(None, None, true, true), Some(Step::Unload));
        assert_eq!(next_step(None, Some(&up), true, true), Some(Step::Unload));
        assert_eq!(next_step(None, Some(&up), true, false), None);
        // load, then start or stop
        assert_eq!(
            next_step(Some(&launched), None, true, true),
            Some(Step::Load)
        );
        assert_eq!(
            next_step(Some(&launched), Some(&down), true, true),
            Some(Step::Start)
        );
        assert_eq!(next_step(Some(&launched), Some(&up), true, true), None);
        assert_eq!(
            next_step(Some(&loaded), Some(&up), true, true),
            Some(Step::Stop)
        );
        assert_eq!(next_step(Some(&loaded), Some(&down), true, true), None);
        // a new text: unload a started unit first, load over a stopped one
        assert_eq!(
            next_step(Some(&other), Some(&up), true, true),
            Some(Step::Unload)
        );
        assert_eq!(
            next_step(Some(&other), Some(&down), true, true),
            Some(Step::Load)
        );
    }

    #[test]
    fn up_states() {
        assert!(is_up(&UnitState::new("loaded", "active", "running")));
        assert!(is_up(&UnitState::new("loaded", "activating", "start")));
        assert!(!is_up(&UnitState::new("loaded", "failed", "failed")));
        assert!(!is_up(&UnitState::new("loaded", "deactivating", "stop")));
        assert!(!is_up(&UnitState::loaded_inactive()));
    }
}
