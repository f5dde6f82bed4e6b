//! The engine: one leader among the `fleetd`s, elected through etcd,
//! turns units and machines into the schedule each agent follows.
//!
//! * **Election**: each engine holds a lease kept alive by a
//!   [`LeaseKeeper`] and campaigns on the registry's `engine/leader` key.
//!   A follower watches that key and campaigns again when it is deleted
//!   (the leader resigned, or its lease expired); it does not poll.
//! * **Fencing**: the leader writes the schedule only through
//!   [`Registry::apply`], each transaction guarded by its leadership; when
//!   a fence fails ([`RegistryError::NotLeader`]), the lease is lost or the
//!   key changes hands, it stops writing at once and campaigns again.
//! * **Watch-driven model**: once elected, the leader reads the registry
//!   once ([`Registry::snapshot`], with the leader key and the reboot lock
//!   at the same revision) into a [`ClusterView`], then keeps it current
//!   from watches starting at the snapshot's revision + 1 (machines/ and
//!   schedule/ in one span, units/, the leader key, the reboot lock).
//!   It plans after changes (debounced, so a burst of `fleetctl start`s
//!   makes few plans) and every reconcile interval, from memory. It reads
//!   the registry again only on election, when a watch was compacted or
//!   ended with an error. A machine is gone only when its `machines/ID`
//!   key is deleted (its lease expired), never because a request failed.
//! * **Drain**: machines holding the cluster's reboot lock
//!   (`cairn_formats::reboot_lock`) take nothing, and their units move off
//!   as if the machines were gone; the global units they run stay (see
//!   [`ClusterView`]). Once a holder has only global units scheduled and
//!   its agent reports every other unit stopped (`states/ID/`, read only
//!   while such a drain is pending), the leader writes its drain mark
//!   `drained/ID` (fenced, carrying the lock key's revision), which
//!   `cairn-update` waits for before it reboots; the mark goes when the
//!   machine no longer holds the lock.
//!
//! [`ClusterView::explain`] is what `fleetctl explain` shows, computed by
//! the same code as the leader's plans. [`Metrics`] count every request.

mod metrics;
mod view;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_etcd::{
    prefix_end, Campaign, Leader, LeaseKeeper, LeaseLost, LeaseStatus, Watch, WatchOptions,
    WatchUpdate,
};
use cairn_formats::reboot_lock::LOCK_KEY;
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::registry::{self, parse_reboot_lock, Registry, RegistryError, ScheduleChange};
pub use metrics::{Counters, Metrics};
pub use view::{explain, ClusterView, DRAINED};

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// What the engine writes as the leader value (its machine ID, or a
    /// name); shown by followers.
    pub name: String,
    /// How often the leader plans from memory when nothing happens
    /// (fleet's `engine_reconcile_interval`, 2 s).
    pub reconcile_interval: Duration,
    /// The leadership lease's TTL (whole seconds, at least 1): how long a
    /// dead leader holds the others back. 10 s.
    pub lease_ttl: Duration,
    /// How long the leader waits after a change for more before it plans.
    /// 100 ms.
    pub debounce: Duration,
    /// The pause before trying again after etcd failed a request. 1 s.
    pub retry: Duration,
}

impl EngineOptions {
    /// The defaults, with `name` as the leader value.
    pub fn new(name: impl Into<String>) -> EngineOptions {
        EngineOptions {
            name: name.into(),
            reconcile_interval: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(10),
            debounce: Duration::from_millis(100),
            retry: Duration::from_secs(1),
        }
    }
}

/// What the engine cannot start with.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("engine options: {0}")]
    Options(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Where an engine stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not yet elected nor following (no lease, or etcd unreachable).
    Candidate,
    /// Another engine leads: its leader value.
    Follower { leader: String },
    /// This engine leads; the revision that created its leader key (its
    /// fencing token).
    Leader { create_revision: i64 },
    /// Stopped.
    Stopped,
}

/// One engine; see the module documentation.
#[derive(Debug)]
pub struct Engine {
    registry: Registry,
    opts: EngineOptions,
    metrics: Arc<Metrics>,
    role: watch::Sender<Role>,
}

/// How a phase ended.
enum End {
    Shutdown,
    LeaseLost(LeaseLost),
    /// The leadership went (fence failed, key gone) or the leader key
    /// was deleted: campaign again on the same lease.
    Campaign,
}

impl Engine {
    pub fn new(registry: Registry, opts: EngineOptions) -> Engine {
        Engine {
            registry,
            opts,
            metrics: Arc::default(),
            role: watch::Sender::new(Role::Candidate),
        }
    }

    /// The engine's counters (shared; they keep counting while it runs).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Its role, as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// Runs until `shutdown` completes: campaigns, follows or leads, and
    /// gets over etcd's failures by itself (they are logged). At shutdown
    /// it revokes its lease, so that a follower takes over at once.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), EngineError> {
        let ttl = self.opts.lease_ttl.as_secs();
        if ttl == 0 {
            return Err(EngineError::Options(
                "the lease TTL must be at least 1 s".into(),
            ));
        }
        if self.opts.reconcile_interval.is_zero() {
            return Err(EngineError::Options(
                "the reconcile interval must not be 0".into(),
            ));
        }
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let granted = tokio::select! {
                _ = &mut shutdown => break,
                g = self.registry.etcd().grant_kept(ttl as i64) => g,
            };
            metrics::add(&self.metrics.lease_grants, 1);
            let keeper = match granted {
                Ok(k) => k,
                Err(e) => {
                    warn!("engine: granting a lease: {e}");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = sleep(self.opts.retry) => continue,
                    }
                }
            };
            debug!(
                lease = format!("{:x}", keeper.id()),
                "engine: lease granted"
            );
            match self.with_lease(&keeper, &mut shutdown).await {
                End::Shutdown => {
                    metrics::add(&self.metrics.lease_revokes, 1);
                    match tokio::time::timeout(self.opts.lease_ttl, keeper.revoke()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => warn!("engine: revoking its lease at shutdown: {e}"),
                        Err(_) => warn!("engine: revoking its lease at shutdown: timed out"),
                    }
                    break;
                }
                End::LeaseLost(why) => {
                    warn!("engine: lease lost ({why:?}); campaigning again on a new one");
                }
                // (with_lease campaigns again by itself)
                End::Campaign => {}
            }
            self.role.send_replace(Role::Candidate);
        }
        self.role.send_replace(Role::Stopped);
        info!("engine: stopped");
        Ok(())
    }

    /// Campaigns, follows and leads on one lease until it is lost or the
    /// engine is shut down.
    async fn with_lease(
        &self,
        keeper: &LeaseKeeper,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> End {
        let lease = keeper.id();
        let mut status = keeper.subscribe();
        loop {
            let campaign = tokio::select! {
                _ = &mut *shutdown => return End::Shutdown,
                why = lost(&mut status) => return End::LeaseLost(why),
                c = self.registry.etcd().campaign(self.registry.keys().leader(), self.opts.name.clone(), lease) => c,
            };
            metrics::add(&self.metrics.campaigns, 1);
            let end = match campaign {
                Err(e) => {
                    warn!("engine: campaigning: {e}");
                    self.role.send_replace(Role::Candidate);
                    tokio::select! {
                        _ = &mut *shutdown => return End::Shutdown,
                        why = lost(&mut status) => return End::LeaseLost(why),
                        _ = sleep(self.opts.retry) => continue,
                    }
                }
                Ok(Campaign::Elected(leader)) => {
                    info!(
                        name = %self.opts.name,
                        token = leader.create_revision,
                        "engine: elected leader"
                    );
                    metrics::add(&self.metrics.elected, 1);
                    self.role.send_replace(Role::Leader {
                        create_revision: leader.create_revision,
                    });
                    let end = self.lead(&leader, &mut status, shutdown).await;
                    if !matches!(end, End::Shutdown) {
                        metrics::add(&self.metrics.deposed, 1);
                        warn!("engine: no longer leader; writing nothing more");
                    }
                    end
                }
                Ok(Campaign::Follower(leader)) => {
                    let name = String::from_utf8_lossy(&leader.value).into_owned();
                    debug!(leader = %name, "engine: following");
                    self.role.send_replace(Role::Follower { leader: name });
                    self.follow(&leader, &mut status, shutdown).await
                }
            };
            match end {
                End::Campaign => {
                    self.role.send_replace(Role::Candidate);
                    continue;
                }
                other => return other,
            }
        }
    }

    /// Waits until `leader`'s key is deleted (then campaigns again),
    /// watching it: no polling.
    async fn follow(
        &self,
        leader: &Leader,
        status: &mut watch::Receiver<LeaseStatus>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> End {
        let key = self.registry.keys().leader();
        // Watch from now, then look once: a deletion before the watch
        // began is seen by the look, one after it by the watch.
        let opened = tokio::select! {
            _ = &mut *shutdown => return End::Shutdown,
            why = lost(status) => return End::LeaseLost(why),
            w = self.registry.etcd().watch(key, WatchOptions::new()) => w,
        };
        metrics::add(&self.metrics.watches, 1);
        let mut w = match opened {
            Ok(w) => w,
            Err(e) => {
                warn!("engine: watching the leader key: {e}");
                return self.pause(status, shutdown).await;
            }
        };
        let now = tokio::select! {
            _ = &mut *shutdown => return End::Shutdown,
            why = lost(status) => return End::LeaseLost(why),
            l = self.registry.leader_at(0) => l,
        };
        metrics::add(&self.metrics.reads, 1);
        match now {
            Ok(Some(l)) if l.create_revision == leader.create_revision => {}
            Ok(_) => return End::Campaign,
            Err(e) => {
                warn!("engine: reading the leader key: {e}");
                return self.pause(status, shutdown).await;
            }
        }
        loop {
            let update = tokio::select! {
                _ = &mut *shutdown => return End::Shutdown,
                why = lost(status) => return End::LeaseLost(why),
                u = w.next() => u,
            };
            match update {
                Some(Ok(WatchUpdate::Events { events, .. })) => {
                    metrics::add(&self.metrics.events, events.len() as u64);
                    if events
                        .iter()
                        .any(|e| e.kind == cairn_etcd::EventKind::Delete)
                    {
                        info!("engine: the leader went; campaigning");
                        return End::Campaign;
                    }
                }
                Some(Ok(WatchUpdate::Reconnecting { error, .. })) => {
                    debug!("engine: the leader watch reconnects: {error}");
                }
                Some(Ok(WatchUpdate::Progress { .. })) => {}
                Some(Ok(WatchUpdate::Compacted { .. })) => return End::Campaign,
                Some(Err(e)) => {
                    warn!("engine: the leader watch failed: {e}");
                    return self.pause(status, shutdown).await;
                }
                None => return self.pause(status, shutdown).await,
            }
        }
    }

    /// Waits the retry pause, then campaigns again.
    async fn pause(
        &self,
        status: &mut watch::Receiver<LeaseStatus>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> End {
        tokio::select! {
            _ = &mut *shutdown => End::Shutdown,
            why = lost(status) => End::LeaseLost(why),
            _ = sleep(self.opts.retry) => End::Campaign,
        }
    }

    /// Leads until the leadership or the lease is lost or the engine shut
    /// down.
    async fn lead(
        &self,
        leader: &Leader,
        status: &mut watch::Receiver<LeaseStatus>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> End {
        loop {
            // One full read, and the watches from just after it.
            let synced = tokio::select! {
                _ = &mut *shutdown => return End::Shutdown,
                why = lost(status) => return End::LeaseLost(why),
                s = self.sync(leader) => s,
            };
            let (mut view, mut watches) = match synced {
                Ok(Some(s)) => s,
                Ok(None) => {
                    warn!("engine: the leader key is no longer this engine's");
                    return End::Campaign;
                }
                Err(e) => {
                    warn!("engine: reading the registry: {e}");
                    tokio::select! {
                        _ = &mut *shutdown => return End::Shutdown,
                        why = lost(status) => return End::LeaseLost(why),
                        _ = sleep(self.opts.retry) => continue,
                    }
                }
            };
            info!(
                revision = view.revision(),
                machines = view.machines().count(),
                drained = view.drained().len(),
                "engine: registry read; watching it"
            );
            match self
                .steady(leader, &mut view, &mut watches, status, shutdown)
                .await
            {
                Steady::End(end) => return end,
                Steady::Resync => {
                    info!("engine: reading the registry again");
                }
            }
        }
    }

    /// Reads the registry, the leader key and the reboot lock at one
    /// revision and opens the watches after it; `None` when the leader
    /// key is not this leadership's any more.
    async fn sync(&self, leader: &Leader) -> Result<Option<(ClusterView, Watches)>, RegistryError> {
        let keys = self.registry.keys();
        let snapshot = self.registry.snapshot().await?;
        metrics::add(&self.metrics.full_reads, 1);
        let pages = |prefix: &str, n: usize| {
            n + snapshot
                .bad
                .iter()
                .filter(|b| b.key.starts_with(prefix))
                .count()
        };
        metrics::add(
            &self.metrics.reads,
            registry::range_requests(pages(&keys.machines(), snapshot.machines.len()))
                + registry::range_requests(pages(&keys.units(), snapshot.units.len()))
                + registry::range_requests(pages(&keys.schedule(), snapshot.schedule.len())),
        );
        let rev = snapshot.revision;
        metrics::add(&self.metrics.reads, 2);
        let now = self.registry.leader_at(rev).await?;
        if now.map(|l| l.create_revision) != Some(leader.create_revision) {
            return Ok(None);
        }
        let (lock, lock_revision) = view::read_lock(&self.registry, rev).await?;
        let mut view = ClusterView::new(keys, &snapshot, lock.as_ref());
        let (marks, bad_marks) = self.registry.drain_marks(rev).await?;
        metrics::add(
            &self.metrics.reads,
            registry::range_requests(marks.len() + bad_marks.len()),
        );
        view.set_drain_state(lock_revision, &marks, &bad_marks);
        for bad in &snapshot.bad {
            debug!(key = %bad.key, "skipped: {}", bad.error);
        }
        let etcd = self.registry.etcd();
        let from = WatchOptions::new().start_revision(rev + 1);
        let open = |w| {
            metrics::add(&self.metrics.watches, 1);
            w
        };
        let spans = open(
            etcd.watch(
                keys.machines(),
                from.clone()
                    .range_end(prefix_end(keys.schedule().as_bytes())),
            )
            .await?,
        );
        let units = open(etcd.watch(keys.units(), from.clone().prefix()).await?);
        let leader_w = open(etcd.watch(keys.leader(), from.clone()).await?);
        let lock_w = open(etcd.watch(LOCK_KEY, from).await?);
        Ok(Some((
            view,
            Watches {
                spans,
                units,
                leader: leader_w,
                lock: lock_w,
            },
        )))
    }

    /// The leader's steady state: watch events into the view, plans after
    /// them (debounced) and every reconcile interval, from memory.
    async fn steady(
        &self,
        leader: &Leader,
        view: &mut ClusterView,
        w: &mut Watches,
        status: &mut watch::Receiver<LeaseStatus>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Steady {
        let mut tick = tokio::time::interval(self.opts.reconcile_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // (The first tick, at once, plans after the read.)
        let mut due: Option<Instant> = None;
        let far = || Instant::now() + Duration::from_secs(86400);
        loop {
            let what = tokio::select! {
                _ = &mut *shutdown => return Steady::End(End::Shutdown),
                why = lost(status) => return Steady::End(End::LeaseLost(why)),
                u = w.spans.next() => Source::Registry(u),
                u = w.units.next() => Source::Registry(u),
                u = w.leader.next() => Source::Leader(u),
                u = w.lock.next() => Source::Lock(u),
                _ = sleep_until(due.unwrap_or_else(far)), if due.is_some() => Source::Plan,
                _ = tick.tick() => Source::Plan,
            };
            let update = match what {
                Source::Plan => {
                    due = None;
                    match self.reconcile(leader, view).await {
                        Ok(()) => {}
                        Err(RegistryError::NotLeader) => {
                            return Steady::End(End::Campaign);
                        }
                        Err(e) => {
                            warn!("engine: writing the schedule: {e}; trying again");
                            due = Some(Instant::now() + self.opts.retry);
                        }
                    }
                    continue;
                }
                Source::Registry(u) | Source::Leader(u) | Source::Lock(u)
                    if !matches!(u, Some(Ok(WatchUpdate::Events { .. }))) =>
                {
                    match u {
                        Some(Ok(WatchUpdate::Reconnecting {
                            error,
                            resume_revision,
                        })) => {
                            debug!(resume_revision, "engine: a watch reconnects: {error}");
                            continue;
                        }
                        Some(Ok(WatchUpdate::Progress { .. })) => continue,
                        Some(Ok(WatchUpdate::Compacted { compact_revision })) => {
                            warn!(compact_revision, "engine: a watch fell behind compaction");
                        }
                        Some(Err(e)) => warn!("engine: a watch failed: {e}"),
                        _ => warn!("engine: a watch ended"),
                    }
                    return Steady::Resync;
                }
                other => other,
            };
            let changed = match update {
                Source::Registry(Some(Ok(WatchUpdate::Events { events, .. }))) => {
                    metrics::add(&self.metrics.events, events.len() as u64);
                    let mut changed = false;
                    for e in &events {
                        changed |= view.apply_event(e);
                    }
                    changed
                }
                Source::Leader(Some(Ok(WatchUpdate::Events { events, .. }))) => {
                    metrics::add(&self.metrics.events, events.len() as u64);
                    let ours = events.iter().all(|e| {
                        e.kind == cairn_etcd::EventKind::Put
                            && e.kv.create_revision == leader.create_revision
                    });
                    if !ours {
                        return Steady::End(End::Campaign);
                    }
                    false
                }
                Source::Lock(Some(Ok(WatchUpdate::Events { events, .. }))) => {
                    metrics::add(&self.metrics.events, events.len() as u64);
                    let mut changed = false;
                    for e in &events {
                        let lock = match e.kind {
                            cairn_etcd::EventKind::Delete => None,
                            cairn_etcd::EventKind::Put => match parse_reboot_lock(&e.kv.value) {
                                Ok(s) => Some(s),
                                Err(error) => {
                                    warn!("engine: the reboot lock does not read ({error}); drained machines unchanged");
                                    continue;
                                }
                            },
                        };
                        if view.set_lock(lock.as_ref(), e.kv.mod_revision) {
                            info!(drained = ?view.drained(), "engine: the reboot lock changed");
                            changed = true;
                        }
                    }
                    changed
                }
                _ => unreachable!("handled above"),
            };
            if changed && due.is_none() {
                due = Some(Instant::now() + self.opts.debounce);
            }
        }
    }

    /// Plans from the view and writes the changes, fenced; then the drain
    /// marks.
    async fn reconcile(
        &self,
        leader: &Leader,
        view: &mut ClusterView,
    ) -> Result<(), RegistryError> {
        metrics::add(&self.metrics.plans, 1);
        let changes = view.changes();
        if !changes.is_empty() {
            self.write(leader, view, &changes, "engine: schedule written")
                .await?;
        }
        self.drain_marks(leader, view).await
    }

    /// Removes the drain marks of machines that no longer hold the reboot
    /// lock and writes those of holders whose drain is complete: nothing
    /// but global units scheduled there (the plan just written saw to
    /// that) and every other unit reported stopped by the machine's agent.
    /// Reads `states/ID/` of such holders only, so a drain in progress
    /// costs one range request per holder per plan, and none otherwise.
    async fn drain_marks(
        &self,
        leader: &Leader,
        view: &mut ClusterView,
    ) -> Result<(), RegistryError> {
        let mut changes: Vec<ScheduleChange> = view
            .stale_marks()
            .into_iter()
            .map(|machine| ScheduleChange::Undrained { machine })
            .collect();
        for machine in view.drain_candidates() {
            let reports = self.registry.states_of(&machine).await?;
            metrics::add(
                &self.metrics.reads,
                registry::range_requests(reports.records.len() + reports.bad.len()),
            );
            let settled = match self.registry.settled_of(&machine).await {
                Ok(mark) => mark.map(|m| m.revision),
                Err(RegistryError::Unreadable { key, error }) => {
                    warn!(%machine, %key, "engine: a settled mark that does not read: {error}");
                    None
                }
                Err(e) => return Err(e),
            };
            metrics::add(&self.metrics.reads, 1);
            match view.drain_done(&machine, &reports.records, reports.bad.len(), settled) {
                Ok(mark) => {
                    info!(%machine, lock_revision = mark.lock_revision, "engine: drained for a reboot");
                    changes.push(ScheduleChange::Drained(mark));
                }
                Err(why) => debug!(%machine, "engine: draining for a reboot: {why}"),
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        self.write(leader, view, &changes, "engine: drain marks written")
            .await
    }

    /// Writes `changes` fenced and takes them into the view.
    async fn write(
        &self,
        leader: &Leader,
        view: &mut ClusterView,
        changes: &[ScheduleChange],
        what: &'static str,
    ) -> Result<(), RegistryError> {
        let t = std::time::Instant::now();
        let txns = registry::transactions(changes);
        match self.registry.apply(leader, changes).await {
            Ok(rev) => {
                metrics::add(&self.metrics.txns, txns);
                metrics::add(&self.metrics.changes, changes.len() as u64);
                info!(
                    changes = changes.len(),
                    txns,
                    revision = rev,
                    took_ms = t.elapsed().as_millis() as u64,
                    "{what}"
                );
                view.applied(changes, rev);
                Ok(())
            }
            Err(e) => {
                // What did land comes back through the watch.
                metrics::add(&self.metrics.txns, 1);
                metrics::add(&self.metrics.apply_failures, 1);
                Err(e)
            }
        }
    }
}

/// The leader's watches.
struct Watches {
    spans: Watch,
    units: Watch,
    leader: Watch,
    lock: Watch,
}

enum Source {
    Registry(Option<Result<WatchUpdate, cairn_etcd::Error>>),
    Leader(Option<Result<WatchUpdate, cairn_etcd::Error>>),
    Lock(Option<Result<WatchUpdate, cairn_etcd::Error>>),
    Plan,
}

enum Steady {
    End(End),
    Resync,
}

/// Waits until the lease is reported lost.
async fn lost(status: &mut watch::Receiver<LeaseStatus>) -> LeaseLost {
    loop {
        if let LeaseStatus::Lost(why) = &*status.borrow_and_update() {
            return why.clone();
        }
        if status.changed().await.is_err() {
            return LeaseLost::Expired("the keep-alive task ended".into());
        }
    }
}
