//! The simulated systemd behind `fleetd --systemd=sim`: a documented mode
//! of the real agent for running hundreds of agents on one machine without
//! VMs (the scale benchmark, integration tests). Everything above the
//! [`UnitManager`] trait is the real agent; only the service manager is
//! imagined: unit files are kept in memory, `start` makes a unit
//! `activating`/`start` and, after [`SimOptions::start_delay`],
//! `active`/`running`; `stop` makes it `deactivating`/`stop` and, after
//! [`SimOptions::stop_delay`], `inactive`/`dead` (with no delay, at once).
//! A later start or stop replaces a pending one, as systemd's `replace`
//! jobs do. Changes are published on the same watch channel as the D-Bus
//! backend's.
//!
//! Cost: one map entry per unit and a tokio timer per pending delayed
//! transition; no thread, no task per unit at rest, so a thousand managers
//! with ten units each fit in one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::{check_unit_name, SystemdError, UnitManager, UnitState, UnitStates};

/// How the simulated units behave.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Time from `start` to `active`/`running` (zero: at once).
    pub start_delay: Duration,
    /// Time from `stop` to `inactive`/`dead` (zero: at once).
    pub stop_delay: Duration,
}

/// The simulated service manager (see the module documentation).
#[derive(Debug, Clone)]
pub struct SimUnitManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: SimOptions,
    units: Mutex<HashMap<String, SimUnit>>,
    states: watch::Sender<UnitStates>,
}

#[derive(Debug)]
struct SimUnit {
    contents: String,
    /// Bumped by every start and stop: a delayed transition only lands if
    /// no later job replaced it.
    job: u64,
}

impl SimUnitManager {
    pub fn new(options: SimOptions) -> SimUnitManager {
        SimUnitManager {
            inner: Arc::new(Inner {
                options,
                units: Mutex::new(HashMap::new()),
                states: watch::Sender::new(UnitStates::new()),
            }),
        }
    }

    /// The text a unit was loaded with (what the D-Bus backend's file
    /// holds).
    pub fn contents(&self, name: &str) -> Option<String> {
        self.inner.lock().get(name).map(|u| u.contents.clone())
    }

    /// Simulates the unit's process dying: `failed`/`failed`, as systemd
    /// reports a service whose main process exited with an error. Returns
    /// `false` for an unmanaged unit.
    pub fn crash(&self, name: &str) -> bool {
        let mut units = self.inner.lock();
        let Some(unit) = units.get_mut(name) else {
            return false;
        };
        unit.job += 1;
        self.inner
            .set(name, UnitState::new("loaded", "failed", "failed"));
        true
    }

    fn managed<'a>(
        units: &'a mut MutexGuard<'_, HashMap<String, SimUnit>>,
        name: &str,
    ) -> Result<&'a mut SimUnit, SystemdError> {
        check_unit_name(name)?;
        units.get_mut(name).ok_or_else(|| SystemdError::NotManaged {
            unit: name.to_string(),
        })
    }

    /// Starts a job on `name` unless `noop` says its state needs none:
    /// `pending` at once and, after `delay`, `done` unless a later job
    /// replaced it.
    fn job(
        &self,
        name: &str,
        noop: fn(&str) -> bool,
        pending: UnitState,
        done: UnitState,
        delay: Duration,
    ) -> Result<(), SystemdError> {
        let mut units = self.inner.lock();
        let unit = Self::managed(&mut units, name)?;
        if self
            .inner
            .state(name)
            .is_some_and(|s| noop(&s.active_state))
        {
            return Ok(());
        }
        unit.job += 1;
        if delay.is_zero() {
            self.inner.set(name, done);
            return Ok(());
        }
        let job = unit.job;
        self.inner.set(name, pending);
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(inner) = weak.upgrade() else { return };
            let units = inner.lock();
            if units.get(&name).is_some_and(|u| u.job == job) {
                inner.set(&name, done);
            }
        });
        Ok(())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, SimUnit>> {
        // A panic while holding the lock leaves plain data behind; go on.
        self.units.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `name`'s new state (callers hold the units lock, so
    /// publications are in the order of the changes).
    fn set(&self, name: &str, state: UnitState) {
        self.states.send_if_modified(|states| {
            if states.get(name) == Some(&state) {
                return false;
            }
            states.insert(name.to_string(), state);
            true
        });
    }

    fn state(&self, name: &str) -> Option<UnitState> {
        self.states.borrow().get(name).cloned()
    }
}

impl UnitManager for SimUnitManager {
    async fn load(&self, name: &str, contents: &str) -> Result<(), SystemdError> {
        check_unit_name(name)?;
        let mut units = self.inner.lock();
        match units.get_mut(name) {
            Some(unit) => unit.contents = contents.to_string(),
            None => {
                units.insert(
                    name.to_string(),
                    SimUnit {
                        contents: contents.to_string(),
                        job: 0,
                    },
                );
                self.inner.set(name, UnitState::loaded_inactive());
            }
        }
        Ok(())
    }

    async fn unload(&self, name: &str) -> Result<(), SystemdError> {
        check_unit_name(name)?;
        let running = match self.inner.state(name) {
            None => return Ok(()),
            Some(state) => !state.is_stopped(),
        };
        if running {
            let mut rx = self.subscribe();
            self.stop(name).await?;
            // Wait for the stop to land (or for a concurrent unload).
            let _ = rx
                .wait_for(|s| s.get(name).is_none_or(UnitState::is_stopped))
                .await;
        }
        let mut units = self.inner.lock();
        if units.remove(name).is_some() {
            self.inner.states.send_modify(|s| {
                s.remove(name);
            });
        }
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), SystemdError> {
        // Already up or coming up: systemd's start is a no-op too.
        self.job(
            name,
            |active| matches!(active, "active" | "activating"),
            UnitState::new("loaded", "activating", "start"),
            UnitState::new("loaded", "active", "running"),
            self.inner.options.start_delay,
        )
    }

    async fn stop(&self, name: &str) -> Result<(), SystemdError> {
        // Nothing to stop: systemd finishes the job at once, leaving a
        // failed unit failed.
        self.job(
            name,
            |active| matches!(active, "inactive" | "deactivating" | "failed"),
            UnitState::new("loaded", "deactivating", "stop"),
            UnitState::new("loaded", "inactive", "dead"),
            self.inner.options.stop_delay,
        )
    }

    fn states(&self) -> UnitStates {
        self.inner.states.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<UnitStates> {
        self.inner.states.subscribe()
    }
}
