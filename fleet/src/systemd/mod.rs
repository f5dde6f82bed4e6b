//! The agent's systemd side: one trait, [`UnitManager`], for what the agent
//! asks of the machine's service manager (load a unit file, start it, stop
//! it, unload it, and tell me how my units are), with two backends:
//!
//! * [`dbus::DbusUnitManager`]: the real one. It talks to systemd
//!   (`org.freedesktop.systemd1` on the system bus) with `zbus`, the way
//!   fleet did with go-systemd (write the file into `/run/fleet/units/`,
//!   `LinkUnitFiles` as a runtime link, `Reload`, `StartUnit`/`StopUnit` in
//!   `replace` mode, `DisableUnitFiles` + `ResetFailedUnit` on unload), but
//!   takes unit states from systemd's signals (`PropertiesChanged` on the
//!   managed units' objects, `JobRemoved`, `UnitNew`, `UnitRemoved`,
//!   `Reloading` from the manager) instead of asking for every unit every
//!   second as fleet's `UnitStateGenerator` did. Reloads are batched: the
//!   loads that arrive while a daemon-reload runs share the next one.
//! * [`sim::SimUnitManager`]: `fleetd --systemd=sim`, a documented mode of
//!   the real binary for scale tests without VMs: units kept in memory,
//!   started and stopped after optional delays, changes reported on the
//!   same channel. A thousand of them run in one process.
//!
//! Both only touch the units they manage: a unit loaded through them (or,
//! for D-Bus, found in the units directory when the agent starts). Starting
//! or stopping anything else (`sshd.service`) is refused.
//!
//! # How the D-Bus backend is proven
//!
//! * `fleet/tests/systemd_dbus.rs` runs the whole path against the machine's
//!   own systemd when the test can reach it (root, systemd as PID 1, the
//!   system bus owning `org.freedesktop.systemd1`): a `fleet-test-*.service`
//!   running `/bin/sleep 30` is loaded, started, seen active/running through
//!   the signals, stopped, unloaded, and its file is gone. Where there is no
//!   systemd (CI's machines run a process supervisor as PID 1, not systemd)
//!   it says so and skips.
//! * The same file runs the same sequence against a stand-in systemd served
//!   on a private `dbus-daemon` (the Manager methods and signals with
//!   systemd's signatures), which proves the D-Bus calls, the signal
//!   handling, the batched reloads, the unload order and the refusal of
//!   shadowed units on any machine with `dbus-daemon`.
//! * The file system side (the units directory, planted symlinks, hostile
//!   names) is tested everywhere (`fleet/tests/systemd_security.rs`).
//! * The QEMU fleet test (a cairn cluster with `fleet.service` from
//!   cloud-config) proves it against the image's real systemd.

pub mod dbus;
mod dir;
mod reload;
pub mod sim;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;

use crate::unit::UnitName;

pub use dbus::{DbusOptions, DbusUnitManager};
pub use dir::{UnitsDir, MAX_UNIT_FILE};
pub use sim::{SimOptions, SimUnitManager};

/// Where fleet wrote its unit files, and where this agent writes them.
pub const DEFAULT_UNITS_DIR: &str = "/run/fleet/units";

/// A unit's state as systemd reports it: fleet's `UnitState` (`LOAD`,
/// `ACTIVE`, `SUB` in `fleetctl list-units`). The values are systemd's
/// words, kept as strings because systemd adds new ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitState {
    /// `loaded`, `not-found`, `bad-setting`, `error`, `masked`, ...
    pub load_state: String,
    /// `active`, `reloading`, `inactive`, `failed`, `activating`,
    /// `deactivating`, ...
    pub active_state: String,
    /// The unit type's own state: `running`, `dead`, `exited`, `start`, ...
    pub sub_state: String,
}

impl UnitState {
    pub fn new(load: &str, active: &str, sub: &str) -> UnitState {
        UnitState {
            load_state: load.to_string(),
            active_state: active.to_string(),
            sub_state: sub.to_string(),
        }
    }

    /// `loaded`/`inactive`/`dead`: a loaded unit that does not run.
    pub fn loaded_inactive() -> UnitState {
        UnitState::new("loaded", "inactive", "dead")
    }

    /// Whether systemd considers the unit up (`active`, or `reloading`).
    pub fn is_active(&self) -> bool {
        matches!(self.active_state.as_str(), "active" | "reloading")
    }

    /// Whether the unit has nothing left to stop (`inactive` or `failed`).
    pub fn is_stopped(&self) -> bool {
        matches!(self.active_state.as_str(), "inactive" | "failed")
    }
}

impl fmt::Display for UnitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.load_state, self.active_state, self.sub_state
        )
    }
}

/// The states of the units a manager manages, by unit name.
pub type UnitStates = BTreeMap<String, UnitState>;

/// One unit's change between two [`UnitStates`]: its new state, or `None`
/// when it is no longer managed (fleet's heartbeat without a state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub name: String,
    pub state: Option<UnitState>,
}

/// What changed from `old` to `new`, in name order. A subscriber keeps the
/// states it last saw and calls this after each wake-up: one wake-up may
/// cover many changes (a watch channel keeps only the latest value).
pub fn changes(old: &UnitStates, new: &UnitStates) -> Vec<StateChange> {
    let mut out = Vec::new();
    for (name, state) in new {
        if old.get(name) != Some(state) {
            out.push(StateChange {
                name: name.clone(),
                state: Some(state.clone()),
            });
        }
    }
    for name in old.keys() {
        if !new.contains_key(name) {
            out.push(StateChange {
                name: name.clone(),
                state: None,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A D-Bus failure as the errors carry it: shared, because one batched
/// daemon-reload fails for every load waiting on it.
pub type DbusError = Arc<zbus::Error>;

/// Why the agent's systemd side refused or failed. Every variant names the
/// unit (or the directory) and, for D-Bus, the method that failed.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum SystemdError {
    #[error("unit name {name:?} refused: {reason}")]
    BadName { name: String, reason: String },
    #[error("{unit}: not a unit this agent manages (load it first)")]
    NotManaged { unit: String },
    #[error("units directory {}: {reason}", path.display())]
    UnsafeDir { path: PathBuf, reason: String },
    #[error("units directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{unit}: {what} {}: {source}", path.display())]
    File {
        unit: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{unit}: D-Bus {call} failed: {source}")]
    Call {
        unit: String,
        call: &'static str,
        #[source]
        source: DbusError,
    },
    #[error("D-Bus {call} failed: {source}")]
    Bus {
        call: &'static str,
        #[source]
        source: DbusError,
    },
    #[error(
        "{unit}: systemd loads it from {fragment}, not from fleet's {}: a unit of that name \
         where systemd looks first (such as /etc/systemd/system) takes precedence",
        ours.display()
    )]
    Shadowed {
        unit: String,
        fragment: String,
        ours: PathBuf,
    },
    #[error("{unit}: still {state} {waited:?} after StopUnit")]
    StopTimeout {
        unit: String,
        state: UnitState,
        waited: std::time::Duration,
    },
    #[error("{unit}: the task writing or removing its file failed")]
    FileTask { unit: String },
}

impl SystemdError {
    pub(crate) fn call<'a>(
        unit: &'a str,
        call: &'static str,
    ) -> impl FnOnce(zbus::Error) -> Self + 'a {
        move |e| SystemdError::Call {
            unit: unit.to_string(),
            call,
            source: Arc::new(e),
        }
    }

    pub(crate) fn bus(call: &'static str) -> impl FnOnce(zbus::Error) -> Self {
        move |e| SystemdError::Bus {
            call,
            source: Arc::new(e),
        }
    }
}

/// Checks a unit name before anything touches the file system or systemd
/// with it: fleet's naming rules ([`UnitName::parse`]: a known type, only
/// `[A-Za-z0-9:_.@\-\\]`, at most 256 bytes, so never `/` nor a NUL), and
/// no leading `.` (hidden files are this crate's temporary files). A unit
/// name is then always one plain entry of the units directory.
pub fn check_unit_name(name: &str) -> Result<UnitName, SystemdError> {
    let bad = |reason: String| SystemdError::BadName {
        name: name.to_string(),
        reason,
    };
    if name.contains('/') || name == "." || name == ".." {
        return Err(bad("a unit name is one file name, without '/'".into()));
    }
    if name.starts_with('.') {
        return Err(bad("a unit name cannot start with '.'".into()));
    }
    UnitName::parse(name).map_err(|e| bad(e.to_string()))
}

/// What the agent needs from the machine's service manager. Implemented by
/// [`DbusUnitManager`] (systemd) and [`SimUnitManager`] (`--systemd=sim`);
/// [`Backend`] holds either.
///
/// Loading and unloading are idempotent; start and stop only trigger (as
/// fleet's `TriggerStart`/`TriggerStop`): the outcome arrives on
/// [`subscribe`](UnitManager::subscribe). Calls may run concurrently:
/// concurrent [`load`](UnitManager::load)s share daemon-reloads, so an
/// agent loading many units issues them together
/// ([`load_all`](UnitManager::load_all)).
pub trait UnitManager: Send + Sync + 'static {
    /// Writes `contents` as unit `name` (atomically, into the units
    /// directory), links it as a runtime unit and reloads systemd; returns
    /// once systemd knows the unit, with its state in
    /// [`states`](UnitManager::states). Loading the same text again is a
    /// no-op; new text replaces the file (a running unit keeps running with
    /// the old definition until restarted, as with `systemctl daemon-reload`).
    fn load(
        &self,
        name: &str,
        contents: &str,
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// Stops the unit if it runs (and waits for it to stop), unlinks it,
    /// removes its file and reloads systemd. Unloading a unit that is not
    /// managed is a no-op.
    fn unload(&self, name: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// Asks for the unit to start (systemd's `StartUnit`, mode `replace`);
    /// does not wait for it to be up.
    fn start(&self, name: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// Asks for the unit to stop (`StopUnit`, mode `replace`); does not wait.
    fn stop(&self, name: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;

    /// The current state of every managed unit, as last reported by the
    /// service manager (no call is made).
    fn states(&self) -> UnitStates;

    /// A receiver that wakes on every change of [`states`]
    /// (UnitManager::states); use [`changes`] to see what changed. Several
    /// changes in a row may wake it once.
    fn subscribe(&self) -> watch::Receiver<UnitStates>;

    /// Loads several units at once, sharing reloads; one result per unit,
    /// in order.
    fn load_all<'a>(
        &'a self,
        units: &'a [(String, String)],
    ) -> impl Future<Output = Vec<Result<(), SystemdError>>> + Send + 'a {
        futures_util::future::join_all(units.iter().map(|(n, c)| self.load(n, c)))
    }
}

/// How `fleetd` reaches systemd: `--systemd=dbus` (the default) or
/// `--systemd=sim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SystemdMode {
    #[default]
    Dbus,
    Sim,
}

impl FromStr for SystemdMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dbus" => Ok(SystemdMode::Dbus),
            "sim" => Ok(SystemdMode::Sim),
            other => Err(format!("unknown systemd mode {other:?} (valid: dbus, sim)")),
        }
    }
}

impl fmt::Display for SystemdMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SystemdMode::Dbus => "dbus",
            SystemdMode::Sim => "sim",
        })
    }
}

/// The backend `fleetd` chose at start, behind the one trait.
pub enum Backend {
    Dbus(DbusUnitManager),
    Sim(SimUnitManager),
}

impl Backend {
    /// Opens the backend `mode` names: for D-Bus, connects and adopts the
    /// units already in the units directory.
    pub async fn open(
        mode: SystemdMode,
        dbus: DbusOptions,
        sim: SimOptions,
    ) -> Result<Backend, SystemdError> {
        Ok(match mode {
            SystemdMode::Dbus => Backend::Dbus(DbusUnitManager::connect(dbus).await?),
            SystemdMode::Sim => Backend::Sim(SimUnitManager::new(sim)),
        })
    }

    pub fn mode(&self) -> SystemdMode {
        match self {
            Backend::Dbus(_) => SystemdMode::Dbus,
            Backend::Sim(_) => SystemdMode::Sim,
        }
    }
}

impl UnitManager for Backend {
    async fn load(&self, name: &str, contents: &str) -> Result<(), SystemdError> {
        match self {
            Backend::Dbus(m) => m.load(name, contents).await,
            Backend::Sim(m) => m.load(name, contents).await,
        }
    }

    async fn unload(&self, name: &str) -> Result<(), SystemdError> {
        match self {
            Backend::Dbus(m) => m.unload(name).await,
            Backend::Sim(m) => m.unload(name).await,
        }
    }

    async fn start(&self, name: &str) -> Result<(), SystemdError> {
        match self {
            Backend::Dbus(m) => m.start(name).await,
            Backend::Sim(m) => m.start(name).await,
        }
    }

    async fn stop(&self, name: &str) -> Result<(), SystemdError> {
        match self {
            Backend::Dbus(m) => m.stop(name).await,
            Backend::Sim(m) => m.stop(name).await,
        }
    }

    fn states(&self) -> UnitStates {
        match self {
            Backend::Dbus(m) => m.states(),
            Backend::Sim(m) => m.states(),
        }
    }

    fn subscribe(&self) -> watch::Receiver<UnitStates> {
        match self {
            Backend::Dbus(m) => m.subscribe(),
            Backend::Sim(m) => m.subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_use() {
        for ok in ["a.service", "web@1.service", "x:y_z-1\\x2d.timer"] {
            assert!(check_unit_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x.service",
            "a/b.service",
            "/etc/passwd",
            ".hidden.service",
            "..service",
            "a.service\0",
            "a b.service",
            "a.txt",
            "a.service\n",
        ] {
            let e = check_unit_name(bad).unwrap_err();
            assert!(matches!(e, SystemdError::BadName { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn changes_between_states() {
        let mut old = UnitStates::new();
        old.insert("a.service".into(), UnitState::loaded_inactive());
        old.insert("b.service".into(), UnitState::loaded_inactive());
        let mut new = old.clone();
        new.insert(
            "a.service".into(),
            UnitState::new("loaded", "active", "running"),
        );
        new.remove("b.service");
        new.insert("c.service".into(), UnitState::loaded_inactive());
        let c = changes(&old, &new);
        assert_eq!(
            c,
            vec![
                StateChange {
                    name: "a.service".into(),
                    state: Some(UnitState::new("loaded", "active", "running"))
                },
                StateChange {
                    name: "b.service".into(),
                    state: None
                },
                StateChange {
                    name: "c.service".into(),
                    state: Some(UnitState::loaded_inactive())
                },
            ]
        );
        assert!(changes(&new, &new).is_empty());
    }

    #[test]
    fn modes() {
        assert_eq!("sim".parse::<SystemdMode>(), Ok(SystemdMode::Sim));
        assert_eq!("dbus".parse::<SystemdMode>(), Ok(SystemdMode::Dbus));
        assert!("systemctl".parse::<SystemdMode>().is_err());
        assert_eq!(SystemdMode::default().to_string(), "dbus");
    }
}
