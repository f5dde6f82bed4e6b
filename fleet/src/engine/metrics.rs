//! Counters of what the engine asked of etcd and did, for the scale
//! benchmark and for tests that prove the steady state reads nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// The engine's counters, shared with whoever holds
/// [`Engine::metrics`](super::Engine::metrics); read them with
/// [`Metrics::get`]. Lease keep-alives (the [`cairn_etcd::LeaseKeeper`]'s
/// own requests) are not counted.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) lease_grants: AtomicU64,
    pub(crate) lease_revokes: AtomicU64,
    pub(crate) campaigns: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) full_reads: AtomicU64,
    pub(crate) watches: AtomicU64,
    pub(crate) txns: AtomicU64,
    pub(crate) changes: AtomicU64,
    pub(crate) apply_failures: AtomicU64,
    pub(crate) plans: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) elected: AtomicU64,
    pub(crate) deposed: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Leases granted (one per engine start and per lease lost).
    pub lease_grants: u64,
    /// Leases revoked (at shutdown).
    pub lease_revokes: u64,
    /// Election transactions.
    pub campaigns: u64,
    /// Range requests: pages of full reads, and single reads of the
    /// leader key and the reboot lock.
    pub reads: u64,
    /// Full reads of the registry (machines, units, schedule): on
    /// election and after a watch was compacted or failed.
    pub full_reads: u64,
    /// Watches opened.
    pub watches: u64,
    /// Schedule transactions (fenced) sent; at least one per failed apply.
    pub txns: u64,
    /// Schedule changes written (puts and deletes).
    pub changes: u64,
    /// Applies that failed (etcd error or fence).
    pub apply_failures: u64,
    /// Plans computed (scheduler runs).
    pub plans: u64,
    /// Watch events taken in.
    pub events: u64,
    /// Times this engine became leader.
    pub elected: u64,
    /// Times it lost the leadership (lease lost, fence failed, key gone).
    pub deposed: u64,
}

impl Counters {
    /// Every request made to etcd (keep-alives aside).
    pub fn requests(&self) -> u64 {
        self.lease_grants
            + self.lease_revokes
            + self.campaigns
            + self.reads
            + self.watches
            + self.txns
    }
}

impl Metrics {
    pub fn get(&self) -> Counters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            lease_grants: g(&self.lease_grants),
            lease_revokes: g(&self.lease_revokes),
            campaigns: g(&self.campaigns),
            reads: g(&self.reads),
            full_reads: g(&self.full_reads),
            watches: g(&self.watches),
            txns: g(&self.txns),
            changes: g(&self.changes),
            apply_failures: g(&self.apply_failures),
            plans: g(&self.plans),
            events: g(&self.events),
            elected: g(&self.elected),
            deposed: g(&self.deposed),
        }
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
