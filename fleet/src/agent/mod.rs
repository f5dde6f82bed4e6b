//! The agent: one per machine (`fleetd` runs it beside the engine). It
//! makes the machine's service manager ([`UnitManager`]) run what the
//! schedule puts on this machine, and reports how the units are.
//!
//! * **Presence on one lease.** The agent grants one lease of
//!   [`AgentOptions::ttl`] (fleet's `agent_ttl`, 30 s) and keeps it alive
//!   with a [`LeaseKeeper`]; the machine record (`machines/ID`) and every
//!   unit state report (`states/ID/NAME`) are written on it, so a dead
//!   machine's presence and states go in one step when it expires. When
//!   the keeper says the lease is lost, the agent asks etcd whether the
//!   lease still exists (an etcd restart renews leases) and keeps it if
//!   so; otherwise it grants a new one, announces again and writes every
//!   report again. Either way, **units are never stopped because etcd is
//!   unreachable** (fleet stopped them on an etcd blip).
//! * **Only its own prefix.** It reads `schedule/ID/` once and watches it
//!   from the revision after that read; nothing else is read or watched,
//!   so the etcd load of an agent does not grow with the cluster's units
//!   or machines. Each entry carries the unit's text and hash. After a
//!   compaction (or a watch that ended with an error) it reads the prefix
//!   again and reconciles against what it loaded.
//! * **Units.** Per unit, one step at a time (load, then start or stop;
//!   a new text for a started unit: unload, load, start; a deleted entry:
//!   unload, which stops), many units at once up to
//!   [`AgentOptions::parallel`], loads batched
//!   ([`UnitManager::load_all`]: one daemon-reload for many). A failed
//!   step is retried with back-off. Units the backend already manages at
//!   start (D-Bus: found in `/run/fleet/units`) that the schedule does not
//!   hold are unloaded, but only once the schedule was read.
//! * **Hostile entries** (a key that is not one plain unit name under
//!   `schedule/ID/`, bad JSON, a hash that does not match the text, an
//!   entry naming another unit or machine) are refused with a warning and
//!   touch nothing: a unit already there under that name stays as it is.
//! * **Reports.** The agent follows the backend's states
//!   ([`UnitManager::subscribe`], [`changes`]) and writes a
//!   [`UnitStateReport`] per changed unit, coalesced: changes are
//!   gathered for [`AgentOptions::report_interval`] and the latest state
//!   of each unit is written once; a report equal to the one written is
//!   not written again; an unloaded unit's report is deleted. A write
//!   that failed (it may have landed) or was made on an older lease
//!   generation leaves the key unknown: the unit's next report is written
//!   whatever the agent last wrote, so a report put late cannot outlive
//!   the unit's unloading. With nothing
//!   changing the agent makes no etcd request but the lease's keep-alive.
//! * **Settled.** Once every unit removed from the schedule up to revision
//!   R is stopped and unloaded and its report deleted, the agent writes
//!   `settled/ID` = R on its lease ([`SettledMark`]). A drain needs it: a
//!   unit started a moment before it moved may not have been reported
//!   yet, and its missing report must not read as "stopped".
//! * **Cheap.** One task per agent (plus the lease keeper's and the
//!   watch's), no thread: `fleetd --systemd=sim` runs a thousand in one
//!   process. [`AgentCounters`] counts every etcd request it makes.

mod backoff;
mod counters;
mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_etcd::{Event, EventKind, KeyValue, LeaseKeeper, LeaseLost, LeaseStatus, Watch};
use cairn_etcd::{WatchOptions, WatchUpdate};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, FuturesUnordered, StreamExt};
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::model::{MachineRecord, ScheduleEntry, SettledMark, UnitStateReport};
use crate::registry::{check_machine_id, KeyError, Registry, RegistryError};
use crate::systemd::{changes, SystemdError, UnitManager, UnitStates};
use crate::unit::UnitHash;
use backoff::Backoff;
use counters::bump;
pub use counters::{AgentCounters, AgentStats};
use plan::{Applied, EntryError, Step};

/// fleet's default `agent_ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// How long state changes are gathered before they are written.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_millis(500);

/// Units worked on at once.
pub const DEFAULT_PARALLEL: usize = 16;

/// What an agent is and how it behaves.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// This machine: its ID names the agent's keys.
    pub machine: MachineRecord,
    /// The lease's TTL (whole seconds, rounded up): how long after the
    /// agent dies (or loses etcd) its presence and states go.
    pub ttl: Duration,
    /// State changes are gathered this long, then the latest state of
    /// each changed unit is written (at most one write per unit per
    /// interval).
    pub report_interval: Duration,
    /// Units worked on at once (loads, starts, stops, unloads).
    pub parallel: usize,
    /// Back-off between etcd retries: from this...
    pub retry_min: Duration,
    /// ...doubling up to this (with jitter).
    pub retry_max: Duration,
    /// The longest wait before a failed unit step is tried again (from
    /// 1 s, doubling).
    pub unit_retry_max: Duration,
    /// On shutdown, stop and unload every unit before revoking the lease,
    /// as fleet's agent purged its units when fleetd stopped. Without it
    /// the units keep running (and the engine, seeing the machine gone,
    /// schedules them elsewhere).
    pub purge_on_shutdown: bool,
    /// The most a shutdown waits for unit calls (then the lease is revoked
    /// regardless).
    pub shutdown_timeout: Duration,
}

impl AgentOptions {
    /// fleet's defaults for `machine`.
    pub fn new(machine: MachineRecord) -> AgentOptions {
        AgentOptions {
            machine,
            ttl: DEFAULT_TTL,
            report_interval: DEFAULT_REPORT_INTERVAL,
            parallel: DEFAULT_PARALLEL,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            unit_retry_max: Duration::from_secs(60),
            purge_on_shutdown: true,
            shutdown_timeout: Duration::from_secs(60),
        }
    }
}

/// Options an agent cannot run with.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("agent: {0}")]
    MachineId(#[from] KeyError),
    #[error("agent TTL {0:?}: expected 1 s to 1 day")]
    Ttl(Duration),
    #[error("agent: at least one unit must be worked on at a time (parallel is 0)")]
    Parallel,
}

/// One machine's agent; [`Agent::run`] runs it until shutdown.
pub struct Agent<M: UnitManager> {
    registry: Registry,
    manager: Arc<M>,
    options: AgentOptions,
    counters: Arc<AgentCounters>,
}

impl<M: UnitManager> Agent<M> {
    /// An agent for `options.machine`, reaching etcd through `registry`
    /// and the service manager through `manager`.
    pub fn new(
        registry: Registry,
        manager: Arc<M>,
        options: AgentOptions,
    ) -> Result<Agent<M>, AgentError> {
        check_machine_id(&options.machine.id)?;
        if options.ttl < Duration::from_secs(1) || options.ttl > Duration::from_secs(86400) {
            return Err(AgentError::Ttl(options.ttl));
        }
        if options.parallel == 0 {
            return Err(AgentError::Parallel);
        }
        Ok(Agent {
            registry,
            manager,
            options,
            counters: Arc::default(),
        })
    }

    /// The agent's counters (live; [`AgentCounters::get`] reads them).
    pub fn counters(&self) -> Arc<AgentCounters> {
        self.counters.clone()
    }

    pub fn machine_id(&self) -> &str {
        &self.options.machine.id
    }

    /// Runs until `shutdown` completes, retrying etcd for ever meanwhile;
    /// then (with [`AgentOptions::purge_on_shutdown`]) stops and unloads
    /// the units and revokes the lease, so that presence and states go at
    /// once.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let id = &self.options.machine.id;
        let span = tracing::info_span!("agent", machine = %&id[..id.len().min(8)]);
        Core::new(self).run(shutdown).instrument(span).await
    }
}

/// One finished service manager call.
struct Done {
    name: String,
    step: Step,
    /// The hash of the text loaded (for loads).
    hash: Option<UnitHash>,
    result: Result<(), SystemdError>,
}

/// The schedule as read, and the watch from the revision after.
struct Synced {
    kvs: Vec<KeyValue>,
    revision: i64,
    watch: Watch,
}

/// A settled mark written on one lease generation.
struct Settled {
    generation: u64,
    revision: i64,
    result: Result<(), RegistryError>,
}

/// A lease announced on.
struct Acquired {
    keeper: LeaseKeeper,
    /// The lease given up for lost was still alive and is kept.
    reused: bool,
}

type Written = (String, Option<UnitStateReport>, Result<(), RegistryError>);

/// Report writes made on one lease generation.
struct Flushed {
    generation: u64,
    results: Vec<Written>,
}

/// A failed unit step waiting for its next try (`at`: `None` once due).
struct Retry {
    attempts: u32,
    at: Option<Instant>,
}

/// The agent's running state; everything happens in one task.
struct Core<M: UnitManager> {
    registry: Registry,
    manager: Arc<M>,
    options: AgentOptions,
    counters: Arc<AgentCounters>,
    me: String,

    // presence
    lease: Option<LeaseKeeper>,
    /// Bumped at every lease change: reports written on an older one are
    /// not counted as written.
    generation: u64,
    acquiring: Option<BoxFuture<'static, Acquired>>,

    // the schedule
    schedule: BTreeMap<String, ScheduleEntry>,
    /// Names under which a refused entry sits: nothing is done to them.
    held: BTreeSet<String>,
    /// The schedule was read once: stale units may go.
    synced: bool,
    watch: Option<Watch>,
    syncing: Option<BoxFuture<'static, Synced>>,
    resync_at: Option<Instant>,
    resync_backoff: Backoff,

    // units
    applied: HashMap<String, Applied>,
    dirty: BTreeSet<String>,
    busy: HashSet<String>,
    ops: FuturesUnordered<BoxFuture<'static, Vec<Done>>>,
    retry: HashMap<String, Retry>,

    // reports
    states_rx: watch::Receiver<UnitStates>,
    states_open: bool,
    states: UnitStates,
    pending: BTreeSet<String>,
    pending_since: Option<Instant>,
    written: HashMap<String, UnitStateReport>,
    /// Units whose key may hold something else than `written` says: a
    /// write failed (it may have landed all the same) or was made on an
    /// older lease generation. Their next report is written whatever
    /// `written` says, a deletion included.
    unsure: BTreeSet<String>,
    flushing: Option<BoxFuture<'static, Flushed>>,
    flush_not_before: Option<Instant>,
    flush_backoff: Backoff,
    flush_failing: bool,

    // settled
    /// The revision of the latest removal from the schedule.
    removed_upto: i64,
    /// The revision the settled mark holds (0: none written on this lease).
    settled_written: i64,
    settling: Option<BoxFuture<'static, Settled>>,
    settle_not_before: Option<Instant>,
}

impl<M: UnitManager> Core<M> {
    fn new(agent: Agent<M>) -> Core<M> {
        let Agent {
            registry,
            manager,
            options,
            counters,
        } = agent;
        let me = options.machine.id.clone();
        let mut states_rx = manager.subscribe();
        let states = states_rx.borrow_and_update().clone();
        let backoff = || Backoff::new(options.retry_min, options.retry_max, &me);
        Core {
            resync_backoff: backoff(),
            flush_backoff: backoff(),
            registry,
            manager,
            counters,
            lease: None,
            generation: 0,
            acquiring: None,
            schedule: BTreeMap::new(),
            held: BTreeSet::new(),
            synced: false,
            watch: None,
            syncing: None,
            resync_at: None,
            applied: HashMap::new(),
            dirty: BTreeSet::new(),
            busy: HashSet::new(),
            ops: FuturesUnordered::new(),
            retry: HashMap::new(),
            states_rx,
            states_open: true,
            states,
            pending: BTreeSet::new(),
            pending_since: None,
            written: HashMap::new(),
            unsure: BTreeSet::new(),
            flushing: None,
            flush_not_before: None,
            flush_failing: false,
            removed_upto: 0,
            settled_written: 0,
            settling: None,
            settle_not_before: None,
            me,
            options,
        }
    }

    async fn run(mut self, shutdown: impl Future<Output = ()>) {
        info!(
            "agent of machine {} starting ({} units already managed)",
            self.me,
            self.states.len()
        );
        let mut shutdown = std::pin::pin!(shutdown);
        self.start_acquire(None);
        self.start_sync();
        loop {
            self.dispatch();
            self.start_settle();
            let flush_at = self.flush_deadline();
            let retry_at = self.retry.values().filter_map(|r| r.at).min();
            // not biased: every branch gets its turn, none can starve another
            tokio::select! {
                () = &mut shutdown => break,
                why = lease_lost(&mut self.lease) => self.on_lease_lost(why),
                a = take(&mut self.acquiring) => self.on_acquired(a),
                s = take(&mut self.syncing) => self.on_synced(s),
                u = next_update(&mut self.watch) => self.on_watch(u),
                () = sleep_opt(self.resync_at) => {
                    self.resync_at = None;
                    self.start_sync();
                }
                Some(done) = self.ops.next(), if !self.ops.is_empty() => self.on_done(done),
                r = self.states_rx.changed(), if self.states_open => match r {
                    Ok(()) => self.on_states(),
                    Err(_) => self.states_open = false,
                },
                f = take(&mut self.flushing) => self.on_flushed(f),
                s = take(&mut self.settling) => self.on_settled(s),
                () = sleep_opt(self.settle_not_before) => self.settle_not_before = None,
                () = sleep_opt(flush_at) => self.start_flush(),
                () = sleep_opt(retry_at) => self.on_retry_due(),
            }
        }
        self.shut_down().await
    }

    // ---- presence ----

    fn start_acquire(&mut self, prev: Option<i64>) {
        let ttl = self.options.ttl.as_millis().div_ceil(1000) as i64;
        self.acquiring = Some(Box::pin(acquire(
            self.registry.clone(),
            self.options.machine.clone(),
            ttl,
            prev,
            self.counters.clone(),
            Backoff::new(self.options.retry_min, self.options.retry_max, &self.me),
        )));
    }

    fn on_lease_lost(&mut self, why: LeaseLost) {
        bump(&self.counters.leases_lost);
        let old = self.lease.take().map(|k| k.id()).unwrap_or_default();
        self.generation += 1;
        let prev = match &why {
            LeaseLost::NotFound => {
                // etcd deleted everything on it
                self.written.clear();
                self.settled_written = 0;
                warn!("lease {old:x} is gone: announcing again on a new one; units keep running");
                None
            }
            LeaseLost::Expired(e) => {
                warn!(
                    "lease {old:x} not refreshed in time ({e}): presence may be gone; units keep \
                     running while etcd is retried"
                );
                Some(old)
            }
        };
        self.start_acquire(prev);
    }

    fn on_acquired(&mut self, a: Acquired) {
        self.generation += 1;
        if a.reused {
            info!("lease {:x} still alive: present again", a.keeper.id());
        } else {
            self.written.clear();
            self.settled_written = 0;
            info!("present on lease {:x}", a.keeper.id());
        }
        self.lease = Some(a.keeper);
        // write every report (again) now
        let names: Vec<String> = self
            .applied
            .keys()
            .chain(self.written.keys())
            .chain(self.unsure.iter())
            .cloned()
            .collect();
        self.pending.extend(names);
        if !self.pending.is_empty() {
            let now = Instant::now();
            self.pending_since = Some(now.checked_sub(self.options.report_interval).unwrap_or(now));
        }
        self.flush_not_before = None;
        self.flush_backoff.reset();
    }

    // ---- the schedule ----

    fn start_sync(&mut self) {
        if self.syncing.is_some() {
            return;
        }
        self.watch = None;
        self.syncing = Some(Box::pin(sync(
            self.registry.clone(),
            self.me.clone(),
            self.counters.clone(),
            Backoff::new(self.options.retry_min, self.options.retry_max, &self.me),
        )));
    }

    fn on_synced(&mut self, s: Synced) {
        self.apply_snapshot(&s.kvs, s.revision);
        self.watch = Some(s.watch);
    }

    fn on_watch(&mut self, update: Option<Result<WatchUpdate, cairn_etcd::Error>>) {
        let error = match update {
            Some(Ok(WatchUpdate::Events { events, .. })) => {
                self.resync_backoff.reset();
                for e in events {
                    self.apply_event(e);
                }
                return;
            }
            Some(Ok(WatchUpdate::Progress { .. })) => return,
            Some(Ok(WatchUpdate::Reconnecting {
                error,
                resume_revision,
            })) => {
                bump(&self.counters.watch_reconnects);
                debug!("schedule watch reconnecting from revision {resume_revision}: {error}");
                return;
            }
            Some(Ok(WatchUpdate::Compacted { compact_revision })) => {
                bump(&self.counters.watches_recreated);
                info!(
                    "schedule history compacted at revision {compact_revision}: reading the \
                     schedule again"
                );
                self.watch = None;
                self.start_sync();
                return;
            }
            Some(Err(e)) => e.to_string(),
            None => "it ended".to_string(),
        };
        bump(&self.counters.watches_recreated);
        let wait = self.resync_backoff.next();
        warn!("schedule watch failed ({error}): reading the schedule again in {wait:?}");
        self.watch = None;
        self.resync_at = Some(Instant::now() + wait);
    }

    fn refuse(counters: &AgentCounters, error: &EntryError, held: &mut BTreeSet<String>) {
        bump(&counters.entries_refused);
        warn!("schedule entry refused, nothing done: {error}");
        if let Some(name) = error.held_name() {
            held.insert(name.to_string());
        }
    }

    /// Takes the schedule as read: reconciles every unit that changed
    /// (and, the first time, every unit the backend manages).
    fn apply_snapshot(&mut self, kvs: &[KeyValue], revision: i64) {
        let mut fresh = BTreeMap::new();
        let mut held = BTreeSet::new();
        for kv in kvs {
            match plan::check_entry(self.registry.keys(), &self.me, &kv.key_str(), &kv.value) {
                Ok(e) => {
                    fresh.insert(e.unit.clone(), e);
                }
                Err(e) => Self::refuse(&self.counters, &e, &mut held),
            }
        }
        // a refused entry leaves what was there as it was
        for name in &held {
            if let Some(old) = self.schedule.get(name) {
                fresh.entry(name.clone()).or_insert_with(|| old.clone());
            }
        }
        let mut touched: BTreeSet<String> =
            self.held.symmetric_difference(&held).cloned().collect();
        for name in self.schedule.keys().chain(fresh.keys()) {
            if self.schedule.get(name) != fresh.get(name) {
                touched.insert(name.clone());
            }
        }
        // a removal (at some revision up to the read's): settle up to it;
        // so does the first read, when the backend may hold stale units
        if !self.synced || self.schedule.keys().any(|n| !fresh.contains_key(n)) {
            self.removed_upto = self.removed_upto.max(revision);
        }
        for name in touched {
            self.retry.remove(&name);
            self.dirty.insert(name);
        }
        self.schedule = fresh;
        self.held = held;
        if !self.synced {
            self.synced = true;
            info!(
                "schedule read: {} units here, {} managed already",
                self.schedule.len(),
                self.states.len()
            );
            self.dirty.extend(self.states.keys().cloned());
        }
    }

    fn apply_event(&mut self, event: Event) {
        let key = event.kv.key_str().into_owned();
        let keys = self.registry.keys();
        match event.kind {
            EventKind::Put => match plan::check_entry(keys, &self.me, &key, &event.kv.value) {
                Ok(e) => {
                    let name = e.unit.clone();
                    let was_held = self.held.remove(&name);
                    if self.schedule.get(&name) != Some(&e) || was_held {
                        self.schedule.insert(name.clone(), e);
                        self.retry.remove(&name);
                        self.dirty.insert(name);
                    }
                }
                Err(e) => Self::refuse(&self.counters, &e, &mut self.held),
            },
            EventKind::Delete => match plan::unit_of(keys, &self.me, &key) {
                Ok(name) => {
                    let name = name.to_string();
                    let was_held = self.held.remove(&name);
                    if self.schedule.remove(&name).is_some() || was_held {
                        self.retry.remove(&name);
                        self.dirty.insert(name);
                        self.removed_upto = self.removed_upto.max(event.kv.mod_revision);
                    }
                }
                Err(e) => debug!("deletion ignored: {e}"),
            },
        }
    }

    // ---- units ----

    /// Starts the next step of every unit that needs one, up to
    /// `parallel` at a time; loads go together.
    fn dispatch(&mut self) {
        let mut loads: Vec<(String, String)> = Vec::new();
        let mut hashes: Vec<UnitHash> = Vec::new();
        while self.busy.len() + loads.len() < self.options.parallel {
            let Some(name) = self.dirty.pop_first() else {
                break;
            };
            // a unit in the works is looked at again when its step ends,
            // a failed one when its retry is due
            if self.busy.contains(&name) || self.retry.get(&name).is_some_and(|r| r.at.is_some()) {
                continue;
            }
            let desired = self.schedule.get(&name);
            // the backend's states as they are now (`self.states` is what
            // was reported, and may be behind)
            let present = self.states_rx.borrow().contains_key(&name);
            let step = plan::next_step(
                desired,
                self.applied.get(&name),
                present,
                self.synced && !self.held.contains(&name),
            );
            match (step, desired) {
                (None, _) => {}
                (Some(Step::Load), Some(e)) => {
                    hashes.push(e.hash);
                    let contents = e.contents.clone();
                    loads.push((name, contents));
                }
                (Some(Step::Load), None) => unreachable!("a load without an entry"),
                (Some(step), _) => self.spawn_step(name, step),
            }
        }
        if loads.is_empty() {
            return;
        }
        for (name, _) in &loads {
            self.busy.insert(name.clone());
        }
        let manager = self.manager.clone();
        self.ops.push(Box::pin(async move {
            let results = manager.load_all(&loads).await;
            loads
                .into_iter()
                .zip(hashes)
                .zip(results)
                .map(|(((name, _), hash), result)| Done {
                    name,
                    step: Step::Load,
                    hash: Some(hash),
                    result,
                })
                .collect()
        }));
    }

    fn spawn_step(&mut self, name: String, step: Step) {
        self.busy.insert(name.clone());
        let manager = self.manager.clone();
        self.ops.push(Box::pin(async move {
            let result = match step {
                Step::Start => manager.start(&name).await,
                Step::Stop => manager.stop(&name).await,
                Step::Unload | Step::Load => manager.unload(&name).await,
            };
            vec![Done {
                name,
                step,
                hash: None,
                result,
            }]
        }));
    }

    fn on_done(&mut self, done: Vec<Done>) {
        for d in done {
            self.busy.remove(&d.name);
            // an unload that leaves the unit managed would be tried again
            // at once, for ever: count it as failed (and back off)
            let result = match d.result {
                Ok(())
                    if d.step == Step::Unload && self.states_rx.borrow().contains_key(&d.name) =>
                {
                    Err("the unit is still managed after unloading it".to_string())
                }
                r => r.map_err(|e| e.to_string()),
            };
            match result {
                Ok(()) => {
                    self.retry.remove(&d.name);
                    self.step_done(&d.name, d.step, d.hash);
                }
                Err(e) => {
                    bump(&self.counters.unit_errors);
                    let attempts = self.retry.get(&d.name).map_or(0, |r| r.attempts) + 1;
                    let wait = (Duration::from_secs(1) * (1 << (attempts - 1).min(10)))
                        .min(self.options.unit_retry_max);
                    warn!(
                        "{} {} failed (trying again in {wait:?}): {e}",
                        d.step.verb(),
                        d.name
                    );
                    self.retry.insert(
                        d.name.clone(),
                        Retry {
                            attempts,
                            at: Some(Instant::now() + wait),
                        },
                    );
                }
            }
            self.dirty.insert(d.name);
        }
    }

    fn step_done(&mut self, name: &str, step: Step, hash: Option<UnitHash>) {
        match step {
            Step::Load => {
                bump(&self.counters.loads);
                let launched = self.states_rx.borrow().get(name).is_some_and(plan::is_up);
                let hash = hash.expect("loads carry their hash");
                info!("loaded {name} ({hash})");
                self.applied
                    .insert(name.to_string(), Applied { hash, launched });
                self.mark_report(name);
            }
            Step::Start => {
                bump(&self.counters.starts);
                info!("started {name}");
                if let Some(a) = self.applied.get_mut(name) {
                    a.launched = true;
                }
            }
            Step::Stop => {
                bump(&self.counters.stops);
                info!("stopped {name}");
                if let Some(a) = self.applied.get_mut(name) {
                    a.launched = false;
                }
            }
            Step::Unload => {
                bump(&self.counters.unloads);
                info!("unloaded {name}");
                self.applied.remove(name);
                self.mark_report(name);
            }
        }
    }

    fn on_retry_due(&mut self) {
        let now = Instant::now();
        for (name, r) in &mut self.retry {
            if r.at.is_some_and(|at| at <= now) {
                r.at = None;
                self.dirty.insert(name.clone());
            }
        }
    }

    // ---- reports ----

    fn on_states(&mut self) {
        let new = self.states_rx.borrow_and_update().clone();
        for c in changes(&self.states, &new) {
            if c.state.is_none() && self.applied.remove(&c.name).is_some() {
                // gone from the backend behind the agent's back: load it again
                self.dirty.insert(c.name.clone());
            }
            self.mark_report(&c.name);
        }
        self.states = new;
    }

    fn mark_report(&mut self, name: &str) {
        if !self.pending.contains(name) {
            self.pending.insert(name.to_string());
        }
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// What etcd should say about `name`: its state, for a unit the agent
    /// loaded and the backend manages; otherwise nothing.
    fn report_for(&self, name: &str) -> Option<UnitStateReport> {
        let applied = self.applied.get(name)?;
        let state = self.states.get(name)?;
        Some(UnitStateReport {
            unit: name.to_string(),
            load: state.load_state.clone(),
            active: state.active_state.clone(),
            sub: state.sub_state.clone(),
            machine: self.me.clone(),
            hash: applied.hash,
        })
    }

    fn flush_deadline(&self) -> Option<Instant> {
        if self.lease.is_none() || self.flushing.is_some() || self.pending.is_empty() {
            return None;
        }
        let at = self.pending_since? + self.options.report_interval;
        Some(self.flush_not_before.map_or(at, |nb| at.max(nb)))
    }

    fn start_flush(&mut self) {
        self.pending_since = None;
        let Some(lease) = self.lease.as_ref().map(LeaseKeeper::id) else {
            return;
        };
        let mut writes = Vec::new();
        for name in std::mem::take(&mut self.pending) {
            let want = self.report_for(&name);
            if self.unsure.contains(&name) || want.as_ref() != self.written.get(&name) {
                writes.push((name, want));
            }
        }
        if writes.is_empty() {
            return;
        }
        self.flushing = Some(Box::pin(flush(
            self.registry.clone(),
            self.me.clone(),
            lease,
            self.generation,
            writes,
            self.counters.clone(),
            self.options.parallel,
        )));
    }

    fn on_flushed(&mut self, f: Flushed) {
        if f.generation != self.generation {
            // written on a lease that is no longer this agent's (or the
            // same one, kept): what the key holds is not known
            for (name, _, _) in f.results {
                self.unsure.insert(name.clone());
                self.mark_report(&name);
            }
            return;
        }
        let mut failed = None;
        for (name, want, result) in f.results {
            match result {
                Ok(()) => {
                    self.unsure.remove(&name);
                    match want {
                        Some(report) => {
                            self.written.insert(name, report);
                        }
                        None => {
                            self.written.remove(&name);
                        }
                    }
                }
                Err(e) => {
                    bump(&self.counters.report_failures);
                    failed = Some(e);
                    // it may have landed: write (or delete) it again
                    self.unsure.insert(name.clone());
                    self.mark_report(&name);
                }
            }
        }
        match failed {
            Some(e) => {
                let wait = self.flush_backoff.next();
                if !self.flush_failing {
                    warn!("writing unit state reports failed ({e}): retrying");
                }
                debug!("writing unit state reports: {e}; next try in {wait:?}");
                self.flush_failing = true;
                self.flush_not_before = Some(Instant::now() + wait);
            }
            None => {
                if self.flush_failing {
                    info!("unit state reports written again");
                }
                self.flush_failing = false;
                self.flush_backoff.reset();
                self.flush_not_before = None;
            }
        }
    }

    // ---- settled ----

    /// Writes the settled mark when a removal is carried out: every unit
    /// the agent has loaded or is working on is in the schedule, and every
    /// report is written (so the removed units' reports are gone).
    fn start_settle(&mut self) {
        if self.removed_upto <= self.settled_written
            || self.settling.is_some()
            || self.settle_not_before.is_some()
            || !self.synced
            || self.flushing.is_some()
            || !self.pending.is_empty()
            || !self.unsure.is_empty()
        {
            return;
        }
        let Some(lease) = self.lease.as_ref().map(LeaseKeeper::id) else {
            return;
        };
        let scheduled = |n: &String| self.schedule.contains_key(n) || self.held.contains(n);
        if !self.applied.keys().all(scheduled)
            || !self.busy.iter().all(scheduled)
            || !self.states_rx.borrow().keys().all(scheduled)
        {
            return;
        }
        let (registry, me) = (self.registry.clone(), self.me.clone());
        let (generation, revision) = (self.generation, self.removed_upto);
        bump(&self.counters.settle_puts);
        self.settling = Some(Box::pin(async move {
            let result = registry.settle(&me, SettledMark { revision }, lease).await;
            Settled {
                generation,
                revision,
                result,
            }
        }));
    }

    fn on_settled(&mut self, s: Settled) {
        match s.result {
            Ok(()) if s.generation == self.generation => {
                debug!("settled up to revision {}", s.revision);
                self.settled_written = self.settled_written.max(s.revision);
            }
            // on a lease no longer this agent's: write it again
            Ok(()) => {}
            Err(e) => {
                bump(&self.counters.report_failures);
                let wait = self.flush_backoff.next();
                debug!("writing the settled mark: {e}; next try in {wait:?}");
                self.settle_not_before = Some(Instant::now() + wait);
            }
        }
    }

    // ---- shutdown ----

    async fn shut_down(mut self) {
        self.watch = None;
        self.syncing = None;
        self.acquiring = None;
        self.flushing = None;
        self.settling = None;
        let deadline = Instant::now() + self.options.shutdown_timeout;
        // calls under way finish (a load cut in the middle helps no one)
        let ops = std::mem::take(&mut self.ops);
        if tokio::time::timeout_at(deadline, ops.collect::<Vec<_>>())
            .await
            .is_err()
        {
            warn!("unit calls still under way at shutdown: left");
        }
        if self.options.purge_on_shutdown {
            let names: Vec<String> = self.manager.states().into_keys().collect();
            info!("stopping and unloading {} units", names.len());
            let manager = &self.manager;
            let work = stream::iter(names)
                .map(|name| async move {
                    let r = manager.unload(&name).await;
                    (name, r)
                })
                .buffer_unordered(self.options.parallel)
                .collect::<Vec<_>>();
            match tokio::time::timeout_at(deadline, work).await {
                Ok(results) => {
                    for (name, r) in results {
                        if let Err(e) = r {
                            warn!("unloading {name} at shutdown: {e}");
                        }
                    }
                }
                Err(_) => warn!("units still stopping at the shutdown timeout: left"),
            }
        }
        if let Some(keeper) = self.lease.take() {
            let id = keeper.id();
            match tokio::time::timeout(Duration::from_secs(5), keeper.revoke()).await {
                Ok(Ok(())) => info!("lease {id:x} revoked: presence and states gone"),
                Ok(Err(e)) => warn!("revoking lease {id:x}: {e}; it expires by itself"),
                Err(_) => warn!("revoking lease {id:x}: no answer; it expires by itself"),
            }
        }
    }
}

fn not_found(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Etcd(e) if e.is_not_found())
}

/// Gets a lease and announces on it: keeps `prev` if etcd still knows it,
/// else grants a new one. Retries until it works.
async fn acquire(
    registry: Registry,
    machine: MachineRecord,
    ttl: i64,
    mut prev: Option<i64>,
    counters: Arc<AgentCounters>,
    mut backoff: Backoff,
) -> Acquired {
    let etcd = registry.etcd().clone();
    let mut logged = false;
    let mut fail = |what: String, e: &dyn std::fmt::Display| {
        if !logged {
            warn!("{what}: {e}; retrying");
            logged = true;
        } else {
            debug!("{what}: {e}");
        }
    };
    loop {
        let (keeper, reused) = match prev {
            Some(id) => {
                bump(&counters.lease_checks);
                match etcd.keep_alive(id).await {
                    Ok(k) => (k, true),
                    Err(e) if e.is_not_found() => {
                        info!("lease {id:x} expired: granting a new one");
                        prev = None;
                        continue;
                    }
                    Err(e) => {
                        fail(format!("checking lease {id:x}"), &e);
                        tokio::time::sleep(backoff.next()).await;
                        continue;
                    }
                }
            }
            None => {
                bump(&counters.lease_grants);
                match etcd.grant_kept(ttl).await {
                    Ok(k) => (k, false),
                    Err(e) => {
                        fail("granting a lease".into(), &e);
                        tokio::time::sleep(backoff.next()).await;
                        continue;
                    }
                }
            }
        };
        loop {
            bump(&counters.announces);
            match registry.announce(&machine, keeper.id()).await {
                Ok(()) => return Acquired { keeper, reused },
                Err(e) => {
                    fail(format!("announcing on lease {:x}", keeper.id()), &e);
                    if not_found(&e) || matches!(keeper.status(), LeaseStatus::Lost(_)) {
                        break;
                    }
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
        prev = None;
    }
}

/// Reads this machine's schedule and watches it from the revision after
/// the read. Retries until both worked.
async fn sync(
    registry: Registry,
    me: String,
    counters: Arc<AgentCounters>,
    mut backoff: Backoff,
) -> Synced {
    let prefix = registry.keys().schedule_of(&me);
    let mut logged = false;
    loop {
        bump(&counters.schedule_reads);
        let (kvs, revision) = match registry.range(&prefix, 0).await {
            Ok(r) => r,
            Err(e) => {
                if !std::mem::replace(&mut logged, true) {
                    warn!("reading the schedule: {e}; retrying");
                }
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        loop {
            bump(&counters.watches_created);
            let opts = WatchOptions::new().prefix().start_revision(revision + 1);
            match registry.etcd().watch(prefix.clone(), opts).await {
                Ok(watch) => {
                    return Synced {
                        kvs,
                        revision,
                        watch,
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut logged, true) {
                        warn!("watching the schedule: {e}; retrying");
                    }
                    tokio::time::sleep(backoff.next()).await;
                    if !e.is_transient() {
                        // read again (the revision may be compacted)
                        break;
                    }
                }
            }
        }
    }
}

/// Writes (or deletes) reports, `parallel` at a time.
async fn flush(
    registry: Registry,
    me: String,
    lease: i64,
    generation: u64,
    writes: Vec<(String, Option<UnitStateReport>)>,
    counters: Arc<AgentCounters>,
    parallel: usize,
) -> Flushed {
    let (registry, me, counters) = (&registry, &me, &counters);
    let results = stream::iter(writes)
        .map(|(name, want)| async move {
            let r = match &want {
                Some(report) => {
                    bump(&counters.report_puts);
                    registry.report(report, lease).await
                }
                None => {
                    bump(&counters.report_deletes);
                    registry.clear_report(me, &name).await
                }
            };
            (name, want, r)
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    Flushed {
        generation,
        results,
    }
}

/// Runs the future in `slot` to its end (then empties the slot); never
/// ends for an empty slot.
async fn take<T>(slot: &mut Option<BoxFuture<'static, T>>) -> T {
    match slot {
        Some(f) => {
            let v = f.await;
            *slot = None;
            v
        }
        None => std::future::pending().await,
    }
}

async fn lease_lost(lease: &mut Option<LeaseKeeper>) -> LeaseLost {
    match lease {
        Some(k) => k.lost().await,
        None => std::future::pending().await,
    }
}

async fn next_update(watch: &mut Option<Watch>) -> Option<Result<WatchUpdate, cairn_etcd::Error>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
