//! The registry's key layout in etcd: one prefix (fleet's `etcd_key_prefix`,
//! cairn's default `/cairn/fleet/`) and under it one folder per kind of
//! record, so that each reader reads or watches exactly the span it needs.
//!
//! ```text
//! PREFIX machines/ID            MachineRecord     on the agent's lease
//! PREFIX units/NAME             UnitRecord        no lease (fleetctl owns it)
//! PREFIX schedule/ID/NAME       ScheduleEntry     written by the leader engine only, fenced
//! PREFIX states/ID/NAME         UnitStateReport   on the agent's lease
//! PREFIX engine/leader          the engine election key, on the leader's lease
//! PREFIX drained/ID             DrainMark         written by the leader engine only, fenced
//! PREFIX settled/ID             SettledMark       on the agent's lease
//! ```
//!
//! An agent watches `schedule/ID/` and nothing else; a dead machine's
//! presence and unit states go with its one lease. `drained/ID` says that
//! machine ID, which holds the cluster's reboot lock, runs nothing fleet
//! moves any more; `cairn-update` waits for it before rebooting.
//! `settled/ID` is the agent's word that every removal from its schedule
//! up to a revision is carried out (the units stopped and unloaded, their
//! reports gone): the engine needs it before a drain mark, because a unit
//! started a moment ago may not be reported yet. The names
//! `cairn-update` reads (the prefix, `engine/leader`, `machines/`,
//! `drained/`) come from `cairn_formats::reboot_lock::fleet`, which the
//! updater shares without linking fleet.

use cairn_formats::reboot_lock::fleet as shared;

use thiserror::Error;

/// cairn's default key prefix. (fleet's was `/_coreos.com/fleet/`, holding
/// etcd v2 records cairn does not read.)
pub const DEFAULT_PREFIX: &str = shared::DEFAULT_PREFIX;

/// The longest machine ID accepted.
pub const MAX_MACHINE_ID: usize = 64;

/// A machine ID or key prefix that cannot be used in a key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("machine ID {0:?}: expected 1 to 64 characters of A-Z a-z 0-9 - _ .")]
    MachineId(String),
    #[error(
        "etcd key prefix {0:?}: expected an absolute path that ends in '/', like /cairn/fleet/"
    )]
    Prefix(String),
}

/// Checks a machine ID: it becomes a path element of keys, so no `/`, no
/// empty or dot-only names, nothing outside a plain alphabet.
pub fn check_machine_id(id: &str) -> Result<(), KeyError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_MACHINE_ID
        && id.chars().any(|c| c != '.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::MachineId(id.to_string()))
    }
}

/// The key layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Keys {
        Keys {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

impl Keys {
    /// The layout under `prefix` (absolute, ending in `/`).
    pub fn new(prefix: &str) -> Result<Keys, KeyError> {
        let ok = prefix.starts_with('/')
            && prefix.ends_with('/')
            && !prefix.contains("//")
            && prefix.chars().all(|c| !c.is_control() && c != ' ');
        if !ok {
            return Err(KeyError::Prefix(prefix.to_string()));
        }
        Ok(Keys {
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn machines(&self) -> String {
        shared::machines_key(&self.prefix)
    }

    pub fn machine(&self, id: &str) -> String {
        format!("{}machines/{id}", self.prefix)
    }

    pub fn units(&self) -> String {
        format!("{}units/", self.prefix)
    }

    pub fn unit(&self, name: &str) -> String {
        format!("{}units/{name}", self.prefix)
    }

    pub fn schedule(&self) -> String {
        format!("{}schedule/", self.prefix)
    }

    /// The span one agent watches.
    pub fn schedule_of(&self, machine: &str) -> String {
        format!("{}schedule/{machine}/", self.prefix)
    }

    pub fn schedule_entry(&self, machine: &str, unit: &str) -> String {
        format!("{}schedule/{machine}/{unit}", self.prefix)
    }

    pub fn states(&self) -> String {
        format!("{}states/", self.prefix)
    }

    pub fn states_of(&self, machine: &str) -> String {
        format!("{}states/{machine}/", self.prefix)
    }

    pub fn state(&self, machine: &str, unit: &str) -> String {
        format!("{}states/{machine}/{unit}", self.prefix)
    }

    /// The engine's election key.
    pub fn leader(&self) -> String {
        shared::leader_key(&self.prefix)
    }

    /// The drain marks' folder.
    pub fn drained(&self) -> String {
        shared::drained_prefix(&self.prefix)
    }

    /// Machine `id`'s drain mark.
    pub fn drained_of(&self, id: &str) -> String {
        shared::drained_key(&self.prefix, id)
    }

    /// Machine `id`'s agent's settled mark.
    pub fn settled_of(&self, id: &str) -> String {
        format!("{}settled/{id}", self.prefix)
    }

    /// Splits `schedule/ID/NAME` or `states/ID/NAME` (with the prefix) into
    /// the machine and unit; `None` for any other key.
    pub fn split_machine_unit<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?;
        let rest = rest
            .strip_prefix("schedule/")
            .or_else(|| rest.strip_prefix("states/"))?;
        let (m, u) = rest.split_once('/')?;
        (!m.is_empty() && !u.is_empty() && !u.contains('/')).then_some((m, u))
    }

    /// The last element of a `machines/ID` or `units/NAME` key.
    pub fn last<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(&self.prefix)?;
        let (_, name) = rest.split_once('/')?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::default();
        assert_eq!(k.machine("m1"), "/cairn/fleet/machines/m1");
        assert_eq!(k.unit("a.service"), "/cairn/fleet/units/a.service");
        assert_eq!(k.schedule_of("m1"), "/cairn/fleet/schedule/m1/");
        assert_eq!(
            k.schedule_entry("m1", "a.service"),
            "/cairn/fleet/schedule/m1/a.service"
        );
        assert_eq!(
            k.state("m1", "a.service"),
            "/cairn/fleet/states/m1/a.service"
        );
        assert_eq!(k.leader(), "/cairn/fleet/engine/leader");
        assert_eq!(k.drained_of("m1"), "/cairn/fleet/drained/m1");
        assert_eq!(k.last("/cairn/fleet/drained/m1"), Some("m1"));
        assert_eq!(k.settled_of("m1"), "/cairn/fleet/settled/m1");
        assert_eq!(
            k.split_machine_unit("/cairn/fleet/schedule/m1/a.service"),
            Some(("m1", "a.service"))
        );
        assert_eq!(
            k.split_machine_unit("/cairn/fleet/states/m1/a.service"),
            Some(("m1", "a.service"))
        );
        assert_eq!(k.split_machine_unit("/cairn/fleet/units/a.service"), None);
        assert_eq!(k.split_machine_unit("/cairn/fleet/schedule/m1/"), None);
        assert_eq!(k.split_machine_unit("/other/schedule/m1/a"), None);
        assert_eq!(k.last("/cairn/fleet/units/a.service"), Some("a.service"));
        assert_eq!(k.last("/cairn/fleet/machines/m1"), Some("m1"));
        assert_eq!(k.last("/cairn/fleet/machines/"), None);
    }

    #[test]
    fn refusals() {
        for bad in ["", "a/b", ".", "..", "a b", "ü", &"x".repeat(65)] {
            assert!(check_machine_id(bad).is_err(), "{bad:?}");
        }
        for good in ["m1", "0123456789abcdef0123456789abcdef", "node-1.eu_2"] {
            check_machine_id(good).unwrap();
        }
        for bad in ["", "cairn/", "/cairn", "/a//b/", "/a b/"] {
            assert!(Keys::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Keys::new("/x/").unwrap().units(), "/x/units/");
        assert_eq!(
            Keys::new("cairn").unwrap_err().to_string(),
            "etcd key prefix \"cairn\": expected an absolute path that ends in '/', like /cairn/fleet/"
        );
    }
}
