//! `etcd-lock`: take a slot of the cluster reboot lock (locksmith's
//! semaphore in etcd, [`crate::lock`]) before rebooting, inside the reboot
//! window when one is set; give it back once the new slot is healthy. While
//! the slots are all held, or etcd does not answer (another member
//! rebooting), ask again every `poll`, as locksmithd did. Once the slot is
//! taken, on a cluster that runs fleet, wait for fleet to drain the
//! machine ([`super::drain`], `DRAIN_TIMEOUT`) before saying reboot.

use std::time::Duration;

use super::drain::{wait_for_drain, DRAIN_POLL};
use super::{by_the_clock, Decision, Facts, RebootStrategy};
use crate::lock::RebootLock;

pub struct EtcdLock {
    lock: RebootLock,
    /// The holder's name: the machine id.
    id: String,
    poll: Duration,
    drain_poll: Duration,
}

impl EtcdLock {
    /// The lock in the etcd at `endpoint` (`LOCKSMITHD_ENDPOINT`), held
    /// as `id`.
    pub fn new(endpoint: &str, id: String, poll: Duration) -> EtcdLock {
        EtcdLock {
            lock: RebootLock::new(endpoint),
            id,
            poll,
            drain_poll: DRAIN_POLL,
        }
    }

    /// Looks for fleet's drain mark this often (1 s by default).
    pub fn drain_poll(mut self, poll: Duration) -> EtcdLock {
        self.drain_poll = poll;
        self
    }
}

impl RebootStrategy for EtcdLock {
    fn name(&self) -> &'static str {
        "etcd-lock"
    }

    /// Waits for a slot; gives up (not now) once the window closes
    /// meanwhile, for the next timer run to try again. With the slot,
    /// waits for fleet's drain (bounded; a timeout reboots anyway).
    fn before_reboot(&self, cx: &Facts<'_>) -> Decision {
        let id = &self.id;
        let mut last = String::new();
        loop {
            if let Decision::NotNow(why) = by_the_clock(cx) {
                return Decision::NotNow(why);
            }
            match self.lock.take(id) {
                Ok((s, revision)) => {
                    println!(
                        "took a slot of the cluster reboot lock as {id} (holders: {})",
                        s.holders.join(", ")
                    );
                    let c = cx.config;
                    let waited = wait_for_drain(
                        &self.lock,
                        &c.fleet_prefix,
                        id,
                        revision,
                        c.drain_timeout,
                        self.drain_poll,
                    );
                    println!("{}", waited.message(id));
                    return Decision::Reboot;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last {
                        println!("waiting for the cluster reboot lock: {msg}");
                        last = msg;
                    }
                }
            }
            std::thread::sleep(self.poll);
        }
    }

    /// The slot taken before the reboot goes back.
    fn after_healthy(&self, _cx: &Facts<'_>) {
        let id = &self.id;
        match self.lock.unlock(id) {
            Ok(true) => println!("released the cluster reboot lock ({id})"),
            Ok(false) => {}
            Err(e) => tracing::warn!("releasing the cluster reboot lock: {e}"),
        }
    }
}
