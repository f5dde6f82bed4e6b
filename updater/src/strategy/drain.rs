//! `etcd-lock` on a cluster that runs fleet: after taking the reboot lock,
//! wait (at most `DRAIN_TIMEOUT`) until fleet's leader engine has marked
//! this machine drained — its non-global units moved to other machines and
//! reported stopped here by its fleet agent (`drained/ID` under fleet's
//! prefix, `cairn_formats::reboot_lock::fleet`) — so that the reboot takes
//! down nothing fleet could have moved first.
//!
//! * No fleet on the cluster (no engine leader key and no fleet machine
//!   under the prefix): no wait.
//! * The mark must cover this hold of the lock (its `lock_revision` at or
//!   after the revision this machine's lock write landed at), so a mark
//!   left from an earlier hold does not count.
//! * On timeout the machine reboots anyway, saying so: holding the lock
//!   without rebooting would stop every other machine's update, and a
//!   reboot stops `fleetd`, whose agent stops its units and leaves the
//!   cluster at once, after which the engine places them elsewhere (fleet's
//!   failover, what happened before drains existed).

use std::time::{Duration, Instant};

use crate::lock::RebootLock;

/// How often the mark is looked for.
pub const DRAIN_POLL: Duration = Duration::from_secs(1);

/// How a wait for the drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainWait {
    /// `DRAIN_TIMEOUT=0`: not waited for.
    Disabled,
    /// fleet does not run on this cluster.
    NoFleet,
    /// fleet marked the machine drained, after this long.
    Drained { after: Duration },
    /// No mark within the timeout; the last etcd error, if any.
    TimedOut {
        after: Duration,
        last_error: Option<String>,
    },
}

impl DrainWait {
    /// The line the agent prints.
    pub fn message(&self, id: &str) -> String {
        match self {
            DrainWait::Disabled => "not waiting for a fleet drain (DRAIN_TIMEOUT=0)".into(),
            DrainWait::NoFleet => "fleet does not run on this cluster: no drain to wait for".into(),
            DrainWait::Drained { after } => format!(
                "fleet drained {id} (its units moved and stopped) after {:.1} s",
                after.as_secs_f64()
            ),
            DrainWait::TimedOut { after, last_error } => format!(
                "fleet did not mark {id} drained within {} s{}; rebooting anyway (fleetd stops its units as the machine shuts down and the engine places them elsewhere)",
                after.as_secs(),
                last_error
                    .as_ref()
                    .map(|e| format!(" (last etcd error: {e})"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// Waits until fleet marks `id` drained for the hold of the lock written
/// at `since` (see the module documentation), at most `timeout` (plus one
/// etcd request), looking every `poll`.
pub fn wait_for_drain(
    lock: &RebootLock,
    prefix: &str,
    id: &str,
    since: i64,
    timeout: Duration,
    poll: Duration,
) -> DrainWait {
    if timeout.is_zero() {
        return DrainWait::Disabled;
    }
    let start = Instant::now();
    let mut in_use = None;
    let mut last_error = None;
    let mut said = false;
    loop {
        if in_use.is_none() {
            match lock.fleet_in_use(prefix) {
                Ok(false) => return DrainWait::NoFleet,
                Ok(true) => in_use = Some(()),
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        if in_use.is_some() {
            match lock.drain_mark(prefix, id) {
                Ok(Some(m)) if m.covers(since) => {
                    return DrainWait::Drained {
                        after: start.elapsed(),
                    }
                }
                Ok(_) => {
                    if !said {
                        println!(
                            "waiting (at most {} s) for fleet to move {id}'s units off and stop them",
                            timeout.as_secs()
                        );
                        said = true;
                    }
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return DrainWait::TimedOut {
                after: elapsed,
                last_error,
            };
        }
        std::thread::sleep(poll.min(timeout - elapsed));
    }
}
