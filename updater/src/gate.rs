//! The health gate a new slot passes before `boot-complete.target`: the
//! checks of [`crate::health`], retried until they pass, one fails for
//! good, or the time is up; then the update state moves on (healthy: the
//! strategy's `after_healthy`; unhealthy on a trial boot: the entry is
//! marked bad so systemd-boot falls back to the old slot).

use std::process::Command;
use std::time::Duration;

use crate::agent::Agent;
use crate::error::Result;
use crate::health::{self, HealthOptions};
use crate::state::{self, Event, Phase};
use crate::strategy::{Facts, RebootStrategy};

/// How the gate ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every check passed; the running slot is good.
    Healthy,
    /// Checks failed, but no update was on trial: reported, the boot goes on
    /// (failing it would only reboot into the same slot).
    UnhealthyNoTrial(String),
    /// Checks failed on a trial boot: the update is rolled back.
    Failed(String),
}

/// Options of one gate run.
pub struct Gate<'a> {
    pub timeout: Duration,
    /// Do not run `systemd-bless-boot bad` (tests).
    pub no_bless: bool,
    pub strategy: &'a dyn RebootStrategy,
    pub facts: Facts<'a>,
}

impl Gate<'_> {
    /// Runs the checks on the running system of `agent` and records the
    /// verdict in its state file.
    pub fn run(&self, agent: &Agent) -> Result<Verdict> {
        let (running, st) = agent.observe_boot()?;
        let on_trial = matches!(st.phase, Phase::Trial { .. });
        let o = HealthOptions::default();
        let p = &agent.paths;
        // a check that cannot even run is a problem, not a reason to fail
        // outside a trial
        let problems = health::retry(self.timeout, Duration::from_secs(5), || {
            health::check_once(&o, &p.cmdline, &p.efivars, &p.esp)
        });
        let sf = p.state_file();
        if problems.is_empty() {
            let s = state::transition(
                &sf,
                Event::HealthPassed {
                    running: running.slot,
                },
            )?;
            println!(
                "healthy: slot {} ({}); update state {}",
                running.slot,
                running.version,
                s.phase.name()
            );
            self.strategy.after_healthy(&self.facts);
            return Ok(Verdict::Healthy);
        }
        let reason = problems.join("; ");
        if !on_trial {
            tracing::warn!("unhealthy, but no update is on trial: {reason}");
            return Ok(Verdict::UnhealthyNoTrial(reason));
        }
        tracing::error!("health gate failed on slot {}: {reason}", running.slot);
        state::transition(
            &sf,
            Event::HealthFailed {
                running: running.slot,
                reason: reason.clone(),
            },
        )?;
        if !self.no_bless {
            let bless = "/usr/lib/systemd/systemd-bless-boot";
            match Command::new(bless).arg("bad").status() {
                Ok(s) if s.success() => tracing::info!("entry marked bad ({bless} bad)"),
                Ok(s) => tracing::error!("{bless} bad: {s}"),
                Err(e) => tracing::error!("{bless}: {e}"),
            }
        }
        Ok(Verdict::Failed(reason))
    }
}
