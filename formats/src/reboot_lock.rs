//! The cluster-wide reboot lock, as locksmith kept it in etcd: one key
//! ([`LOCK_KEY`]) holding a counting semaphore
//! `{"semaphore": FREE, "max": MAX, "holders": [ID, ...]}` ([`Semaphore`]).
//!
//! Who uses it: `cairn-update` (`REBOOT_STRATEGY=etcd-lock`) takes a slot
//! before it reboots into an update and gives it back once the new slot is
//! healthy; fleet's engine drains a machine that holds a slot (schedules
//! nothing onto it and moves its units off), and says when that is done
//! ([`fleet`]: the drain mark `cairn-update` waits for before it reboots).
//! Behind the `serde` feature.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The etcd key locksmith used (no leading slash), so operators find it
/// where they always did.
pub const LOCK_KEY: &str = "coreos.com/updateengine/rebootlock/semaphore";

/// The semaphore as stored (locksmith's JSON, field for field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    /// Free slots.
    pub semaphore: u32,
    /// Slots in all.
    pub max: u32,
    /// Who holds a slot (machine ids).
    pub holders: Vec<String>,
}

/// Every slot is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub max: u32,
    pub holders: Vec<String>,
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the reboot lock is full ({max} of {max} held by {})",
            self.holders.join(", "),
            max = self.max
        )
    }
}

impl std::error::Error for Busy {}

impl Semaphore {
    /// A lock with `max` free slots and no holders (what a missing key
    /// stands for).
    pub fn new(max: u32) -> Semaphore {
        Semaphore {
            semaphore: max,
            max,
            holders: Vec::new(),
        }
    }

    /// Whether `id` holds a slot.
    pub fn holds(&self, id: &str) -> bool {
        self.holders.iter().any(|h| h == id)
    }

    /// Takes a slot for `id`: true when taken now, false when `id` held
    /// one already (unchanged); [`Busy`] when no slot is free.
    pub fn lock(&mut self, id: &str) -> Result<bool, Busy> {
        if self.holds(id) {
            return Ok(false);
        }
        if self.semaphore == 0 {
            return Err(Busy {
                max: self.max,
                holders: self.holders.clone(),
            });
        }
        self.semaphore -= 1;
        self.holders.push(id.to_string());
        Ok(true)
    }

    /// Gives `id`'s slot back (holding none: unchanged, false).
    pub fn unlock(&mut self, id: &str) -> bool {
        let before = self.holders.len();
        self.holders.retain(|h| h != id);
        if self.holders.len() == before {
            return false;
        }
        self.semaphore = (self.semaphore + 1).min(self.max);
        true
    }

    /// Changes the number of slots, keeping the holders (free slots may
    /// reach 0). The caller refuses 0 slots.
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
        self.semaphore = max.saturating_sub(self.holders.len() as u32);
    }
}

/// fleet's side of the lock: the few keys of fleet's registry that
/// `cairn-update` reads, so that it need not link fleet. fleet's
/// `registry::keys` builds its layout from these.
///
/// ```text
/// PREFIX engine/leader     the engine election key: fleet runs on this cluster
/// PREFIX machines/ID       a fleet agent's presence
/// PREFIX drained/ID        DrainMark: ID holds the reboot lock and runs nothing fleet moves
/// ```
///
/// The leader engine writes `drained/ID` (fenced by its leadership, no
/// lease) once a lock holder has no non-global unit scheduled and its
/// agent reports none of them running any more, and deletes it when ID no
/// longer holds the lock. The mark carries the lock key's `mod_revision`
/// the engine judged by; it is written again whenever the lock key
/// changes, so a holder that took its slot at revision R waits for a mark
/// with `lock_revision >= R` ([`DrainMark::covers`]) and is never fooled
/// by a mark left from an earlier hold.
pub mod fleet {
    use serde::{Deserialize, Serialize};

    /// cairn's default fleet key prefix (fleet's `etcd_key_prefix`).
    pub const DEFAULT_PREFIX: &str = "/cairn/fleet/";
    /// The engine's election key, under the prefix.
    pub const LEADER: &str = "engine/leader";
    /// Machine presence records, under the prefix.
    pub const MACHINES: &str = "machines/";
    /// Drain marks, under the prefix.
    pub const DRAINED: &str = "drained/";

    /// `PREFIX engine/leader`.
    pub fn leader_key(prefix: &str) -> String {
        format!("{prefix}{LEADER}")
    }

    /// `PREFIX machines/`.
    pub fn machines_key(prefix: &str) -> String {
        format!("{prefix}{MACHINES}")
    }

    /// `PREFIX drained/`.
    pub fn drained_prefix(prefix: &str) -> String {
        format!("{prefix}{DRAINED}")
    }

    /// `PREFIX drained/ID`.
    pub fn drained_key(prefix: &str, machine: &str) -> String {
        format!("{prefix}{DRAINED}{machine}")
    }

    /// The value of `drained/ID`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DrainMark {
        /// The machine drained (the key's last element).
        pub machine: String,
        /// The reboot lock key's `mod_revision` at which the engine found
        /// the machine holding the lock and drained.
        pub lock_revision: i64,
    }

    impl DrainMark {
        /// Whether the mark speaks for a hold of the lock that began at
        /// `revision` (the lock key's revision after the holder's write).
        pub fn covers(&self, revision: i64) -> bool {
            self.lock_revision >= revision
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semaphore_rules_and_json() {
        let mut s = Semaphore::new(2);
        assert!(s.lock("a").unwrap());
        assert!(
            !s.lock("a").unwrap(),
            "a second lock by the holder changes nothing"
        );
        assert!(s.lock("b").unwrap());
        assert!(s.holds("b") && !s.holds("c"));
        let busy = s.lock("c").unwrap_err();
        assert_eq!(busy.holders, ["a", "b"]);
        assert_eq!(
            busy.to_string(),
            "the reboot lock is full (2 of 2 held by a, b)"
        );
        assert!(s.unlock("a"));
        assert!(!s.unlock("a"));
        s.set_max(1);
        assert_eq!(s.semaphore, 0);
        // locksmith's JSON
        let json = r#"{"semaphore":0,"max":1,"holders":["b"]}"#;
        assert_eq!(serde_json::to_string(&s).unwrap(), json);
        assert_eq!(serde_json::from_str::<Semaphore>(json).unwrap(), s);
        assert_eq!(LOCK_KEY, "coreos.com/updateengine/rebootlock/semaphore");
    }

    #[test]
    fn fleet_keys_and_the_drain_mark() {
        use fleet::*;
        assert_eq!(leader_key(DEFAULT_PREFIX), "/cairn/fleet/engine/leader");
        assert_eq!(machines_key("/x/"), "/x/machines/");
        assert_eq!(drained_prefix("/x/"), "/x/drained/");
        assert_eq!(drained_key(DEFAULT_PREFIX, "m1"), "/cairn/fleet/drained/m1");
        let m = DrainMark {
            machine: "m1".into(),
            lock_revision: 7,
        };
        assert!(m.covers(7) && m.covers(3) && !m.covers(8));
        let json = r#"{"machine":"m1","lock_revision":7}"#;
        assert_eq!(serde_json::to_string(&m).unwrap(), json);
        assert_eq!(serde_json::from_str::<DrainMark>(json).unwrap(), m);
    }
}
