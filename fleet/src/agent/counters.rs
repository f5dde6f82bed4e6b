//! What an agent did, counted: every etcd request it made (apart from the
//! lease keeper's refreshes, which are one per third of the TTL), and what
//! it asked of the service manager. The scale benchmark reads these to
//! show that etcd load does not grow with the cluster's unit count.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared with the agent's task ([`Agent::counters`]).
///
/// [`Agent::counters`]: super::Agent::counters
#[derive(Debug, Default)]
pub struct AgentCounters {
    pub(crate) lease_grants: AtomicU64,
    pub(crate) lease_checks: AtomicU64,
    pub(crate) leases_lost: AtomicU64,
    pub(crate) announces: AtomicU64,
    pub(crate) report_puts: AtomicU64,
    pub(crate) report_deletes: AtomicU64,
    pub(crate) report_failures: AtomicU64,
    pub(crate) settle_puts: AtomicU64,
    pub(crate) schedule_reads: AtomicU64,
    pub(crate) watches_created: AtomicU64,
    pub(crate) watches_recreated: AtomicU64,
    pub(crate) watch_reconnects: AtomicU64,
    pub(crate) entries_refused: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) starts: AtomicU64,
    pub(crate) stops: AtomicU64,
    pub(crate) unloads: AtomicU64,
    pub(crate) unit_errors: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Leases granted (one, plus one per lease etcd forgot).
    pub lease_grants: u64,
    /// Keep-alives sent to find out whether a lease given up for lost
    /// during an outage still exists.
    pub lease_checks: u64,
    /// Leases given up for lost (expired, revoked, or not refreshed in
    /// time).
    pub leases_lost: u64,
    /// Presence records written.
    pub announces: u64,
    /// Unit state reports written.
    pub report_puts: u64,
    /// Unit state reports deleted.
    pub report_deletes: u64,
    /// Report writes or deletes that failed (retried).
    pub report_failures: u64,
    /// Settled marks written (one after each batch of removals from the
    /// schedule is carried out).
    pub settle_puts: u64,
    /// Reads of the machine's schedule (one at start, one after each
    /// watch that could not resume).
    pub schedule_reads: u64,
    /// Schedule watches created (one at start, one per re-read).
    pub watches_created: u64,
    /// Watches given up (compacted, ended by an error) and read again.
    pub watches_recreated: u64,
    /// Times the watch lost its connection and resumed by itself.
    pub watch_reconnects: u64,
    /// Schedule keys or entries refused (hostile or broken).
    pub entries_refused: u64,
    pub loads: u64,
    pub starts: u64,
    pub stops: u64,
    pub unloads: u64,
    /// Service manager calls that failed (retried with back-off).
    pub unit_errors: u64,
}

impl AgentStats {
    /// etcd requests made, the lease keeper's refreshes left out (a
    /// watch counts once, when created).
    pub fn etcd_requests(&self) -> u64 {
        self.lease_grants
            + self.lease_checks
            + self.announces
            + self.report_puts
            + self.report_deletes
            + self.settle_puts
            + self.schedule_reads
            + self.watches_created
    }
}

impl AgentCounters {
    pub fn get(&self) -> AgentStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AgentStats {
            lease_grants: g(&self.lease_grants),
            lease_checks: g(&self.lease_checks),
            leases_lost: g(&self.leases_lost),
            announces: g(&self.announces),
            report_puts: g(&self.report_puts),
            report_deletes: g(&self.report_deletes),
            report_failures: g(&self.report_failures),
            settle_puts: g(&self.settle_puts),
            schedule_reads: g(&self.schedule_reads),
            watches_created: g(&self.watches_created),
            watches_recreated: g(&self.watches_recreated),
            watch_reconnects: g(&self.watch_reconnects),
            entries_refused: g(&self.entries_refused),
            loads: g(&self.loads),
            starts: g(&self.starts),
            stops: g(&self.stops),
            unloads: g(&self.unloads),
            unit_errors: g(&self.unit_errors),
        }
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
