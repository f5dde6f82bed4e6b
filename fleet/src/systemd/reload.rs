//! Batched daemon-reloads: many loads, few reloads. Each caller takes a
//! ticket after its own change (the link) is done; one reload at a time
//! runs, and a reload that starts after a ticket was taken covers it. So
//! the loads that arrive while a reload runs all share the next one: a
//! thousand concurrent loads cost two or three reloads, not a thousand
//! (fleet's agent reloaded once per reconcile pass for the same reason).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Mutex;

/// Coalesces calls of one expensive operation (the reload).
#[derive(Debug)]
pub(crate) struct Coalescer<E> {
    /// Tickets handed out so far.
    issued: AtomicU64,
    /// Held while a reload runs; holds the last ticket a finished reload
    /// covered and its outcome.
    done: Mutex<(u64, Result<(), E>)>,
    /// How many times the operation ran (for tests and logs).
    runs: AtomicU64,
}

impl<E: Clone> Coalescer<E> {
    pub(crate) fn new() -> Self {
        Coalescer {
            issued: AtomicU64::new(0),
            done: Mutex::new((0, Ok(()))),
            runs: AtomicU64::new(0),
        }
    }

    /// Runs `op` unless a run that started after this call began covers it;
    /// returns the outcome of the run that covered it.
    pub(crate) async fn run<F, Fut>(&self, op: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let ticket = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let mut done = self.done.lock().await;
        if done.0 >= ticket {
            return done.1.clone();
        }
        // Every ticket issued until now belongs to a change made before
        // this run starts: this run covers them all.
        let covers = self.issued.load(Ordering::SeqCst);
        self.runs.fetch_add(1, Ordering::Relaxed);
        let outcome = op().await;
        *done = (covers, outcome.clone());
        outcome
    }

    /// How many times the operation ran.
    pub(crate) fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_runs() {
        let c = Arc::new(Coalescer::<String>::new());
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.run(|| async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(())
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // The first caller runs alone; everyone who queued behind it shares
        // the second run (a third at most, for tasks spawned late).
        assert!(c.runs() <= 3, "{} runs", c.runs());
        assert!(c.runs() >= 1);
    }

    #[tokio::test]
    async fn sequential_callers_each_run() {
        let c = Coalescer::<String>::new();
        for _ in 0..3 {
            c.run(|| async { Ok(()) }).await.unwrap();
        }
        assert_eq!(c.runs(), 3);
    }

    #[tokio::test]
    async fn a_failed_run_fails_everyone_it_covered_and_the_next_retries() {
        let c = Arc::new(Coalescer::<String>::new());
        let gate = Arc::new(tokio::sync::Notify::new());
        let first = {
            let (c, gate) = (c.clone(), gate.clone());
            tokio::spawn(async move {
                c.run(|| async move {
                    gate.notified().await;
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(
                    async move { c.run(|| async { Err("reload failed".to_string()) }).await },
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.notify_one();
        first.await.unwrap().unwrap();
        for w in waiters {
            assert_eq!(w.await.unwrap(), Err("reload failed".to_string()));
        }
        assert_eq!(c.runs(), 2);
        c.run(|| async { Ok(()) }).await.unwrap();
        assert_eq!(c.runs(), 3);
    }
}
