//! Rollout waves with health feedback: a channel's new version goes to
//! machines wave by wave (a share of machine seeds, or named inventory
//! groups), each wave open at least its soak time before the next opens;
//! every machine's health verdict for the version is counted against its
//! wave, and the rollout pauses by itself, saying why, when a wave's
//! failures pass the plan's threshold. Paused, no new machine is offered
//! the version until an operator resumes it.

use std::collections::BTreeMap;

use cairn_formats::channel::rollout::SEEDS;
use serde::{Deserialize, Serialize};

/// Which machines a wave holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Members {
    /// Machines whose rollout seed is below this share of all seeds
    /// (cumulative: a later wave's percent includes the earlier ones').
    Percent(u8),
    /// Machines matched by any of these inventory groups.
    Groups(Vec<String>),
}

/// One wave of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WavePlan {
    pub name: String,
    pub members: Members,
    /// The least time this wave is open before the next one opens.
    pub soak_secs: u64,
}

/// A rollout plan: which version of which channel, in which waves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub channel: String,
    pub version: String,
    pub waves: Vec<WavePlan>,
    /// Failed machines a wave may have before the rollout pauses.
    #[serde(default)]
    pub max_failures: u32,
}

/// Why a plan was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("waves[{wave}]: {message}")]
pub struct PlanError {
    pub wave: usize,
    pub message: String,
}

impl Plan {
    /// The plan's rules: at least one wave, unique names, percents at most
    /// 100 and not decreasing, group lists not empty.
    pub fn check(&self) -> Result<(), PlanError> {
        if self.waves.is_empty() {
            return Err(PlanError {
                wave: 0,
                message: "a rollout needs at least one wave".into(),
            });
        }
        let mut last_percent = 0u8;
        for (i, w) in self.waves.iter().enumerate() {
            let err = |message: String| PlanError { wave: i, message };
            if w.name.is_empty() {
                return Err(err("name: empty".into()));
            }
            if self.waves[..i].iter().any(|o| o.name == w.name) {
                return Err(err(format!("name: a second wave named {:?}", w.name)));
            }
            match &w.members {
                Members::Percent(p) if *p > 100 => {
                    return Err(err(format!("percent: {p} is over 100")))
                }
                Members::Percent(p) if *p < last_percent => {
                    return Err(err(format!(
                        "percent: {p} is less than an earlier wave's {last_percent} (percents are cumulative)"
                    )))
                }
                Members::Percent(p) => last_percent = *p,
                Members::Groups(g) if g.is_empty() => {
                    return Err(err("groups: empty".into()))
                }
                Members::Groups(_) => {}
            }
        }
        Ok(())
    }
}

/// A machine as a rollout sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub mac: &'a str,
    /// `cairn_formats::channel::rollout::machine_seed` of its machine id.
    pub seed: u32,
    /// The inventory group that matched it, if any.
    pub group: Option<&'a str>,
}

/// What one machine did with the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Outcome {
    /// Offered, no verdict yet.
    Offered {
        at: i64,
    },
    Healthy {
        at: i64,
    },
    Failed {
        at: i64,
        reason: String,
    },
}

/// One machine's record in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub wave: usize,
    pub outcome: Outcome,
}

/// Why a rollout is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pause {
    pub at: i64,
    pub wave: usize,
    pub reason: String,
}

/// Whether a machine gets the version now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Offer the rollout's version (`wave` is the machine's).
    Offer { wave: usize },
    /// Keep the machine on what it has, and why.
    Hold { reason: String },
}

/// A rollout in progress: the plan, when each wave opened, each machine's
/// outcome, and a pause if there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub plan: Plan,
    pub started: i64,
    /// When each opened wave opened (the first at `started`).
    pub opened: Vec<i64>,
    #[serde(default)]
    pub paused: Option<Pause>,
    /// When an operator last resumed it (no wave opens earlier).
    #[serde(default)]
    pub resumed: Option<i64>,
    #[serde(default)]
    pub members: BTreeMap<String, Member>,
}

/// A wave's counts, for the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaveStatus {
    pub name: String,
    /// When it opened, or when it will open at the earliest (`None`: after
    /// an earlier wave that has not opened, or paused).
    pub opens: Option<i64>,
    pub open: bool,
    pub offered: usize,
    pub healthy: usize,
    pub failed: Vec<(String, String)>,
}

impl Rollout {
    /// Starts `plan` at `now` (its first wave opens at once).
    pub fn start(plan: Plan, now: i64) -> Result<Rollout, PlanError> {
        plan.check()?;
        Ok(Rollout {
            plan,
            started: now,
            opened: vec![now],
            paused: None,
            resumed: None,
            members: BTreeMap::new(),
        })
    }

    /// The wave a machine belongs to: the first whose members include it.
    pub fn wave_of(&self, c: &Candidate<'_>) -> Option<usize> {
        self.plan.waves.iter().position(|w| match &w.members {
            Members::Percent(p) => c.seed < u32::from(*p) * SEEDS / 100,
            Members::Groups(g) => c.group.is_some_and(|name| g.iter().any(|x| x == name)),
        })
    }

    /// When wave `i + 1` may open, if wave `i` is open.
    fn next_opening(&self, i: usize) -> Option<i64> {
        let soak = i64::try_from(self.plan.waves[i].soak_secs).unwrap_or(i64::MAX);
        let at = self.opened.get(i)?.saturating_add(soak);
        Some(at.max(self.resumed.unwrap_or(i64::MIN)))
    }

    /// Opens the waves whose time has come (none while paused).
    pub fn advance(&mut self, now: i64) {
        while self.paused.is_none() && self.opened.len() < self.plan.waves.len() {
            let i = self.opened.len() - 1;
            match self.next_opening(i) {
                Some(at) if at <= now => self.opened.push(at),
                _ => break,
            }
        }
    }

    /// Whether `c` gets the version now; an offer is recorded.
    pub fn decide(&mut self, c: &Candidate<'_>, now: i64) -> Decision {
        self.advance(now);
        let v = &self.plan.version;
        if let Some(m) = self.members.get(c.mac) {
            // a machine that has its verdict keeps it; one that was
            // offered the version and has no verdict yet is held while
            // the rollout is paused, like a machine that was not offered
            match &m.outcome {
                Outcome::Failed { reason, .. } => {
                    return Decision::Hold {
                        reason: format!("{v} failed on this machine: {reason}"),
                    }
                }
                Outcome::Healthy { .. } => return Decision::Offer { wave: m.wave },
                Outcome::Offered { .. } if self.paused.is_none() => {
                    return Decision::Offer { wave: m.wave }
                }
                Outcome::Offered { .. } => {}
            }
        }
        let Some(wave) = self.wave_of(c) else {
            return Decision::Hold {
                reason: format!("in no wave of the {v} rollout"),
            };
        };
        if let Some(p) = &self.paused {
            return Decision::Hold {
                reason: format!("the {v} rollout is paused: {}", p.reason),
            };
        }
        if wave >= self.opened.len() {
            let name = &self.plan.waves[wave].name;
            return Decision::Hold {
                reason: match self.next_opening(self.opened.len() - 1) {
                    Some(at) if self.opened.len() == wave => {
                        format!("wave {name} of the {v} rollout opens at {at}")
                    }
                    _ => format!("wave {name} of the {v} rollout is not open yet"),
                },
            };
        }
        self.members.insert(
            c.mac.to_owned(),
            Member {
                wave,
                outcome: Outcome::Offered { at: now },
            },
        );
        Decision::Offer { wave }
    }

    /// A machine's verdict on `version` (`Err(reason)`: the health gate
    /// failed or it rolled back). Verdicts on other versions are not this
    /// rollout's; a machine that reports without having been offered (it
    /// got the version elsewhere) is counted in its wave all the same.
    /// Returns the pause this verdict caused, if any.
    pub fn record(
        &mut self,
        c: &Candidate<'_>,
        version: &str,
        verdict: Result<(), String>,
        now: i64,
    ) -> Option<&Pause> {
        if version != self.plan.version {
            return None;
        }
        let wave = match self.members.get(c.mac) {
            Some(m) => m.wave,
            None => self.wave_of(c).unwrap_or(self.opened.len() - 1),
        };
        let outcome = match verdict {
            Ok(()) => Outcome::Healthy { at: now },
            Err(reason) => Outcome::Failed { at: now, reason },
        };
        self.members
            .insert(c.mac.to_owned(), Member { wave, outcome });
        if self.paused.is_some() {
            return None;
        }
        let failed: Vec<&str> = self
            .members
            .iter()
            .filter(|(_, m)| m.wave == wave && matches!(m.outcome, Outcome::Failed { .. }))
            .map(|(mac, _)| mac.as_str())
            .collect();
        if failed.len() as u64 > u64::from(self.plan.max_failures) {
            self.paused = Some(Pause {
                at: now,
                wave,
                reason: format!(
                    "{} machine(s) of wave {} failed {} ({}), more than the {} allowed",
                    failed.len(),
                    self.plan.waves[wave].name,
                    self.plan.version,
                    failed.join(", "),
                    self.plan.max_failures
                ),
            });
            return self.paused.as_ref();
        }
        None
    }

    /// Operator: resume a paused rollout; the next wave opens no earlier
    /// than now (its soak counts from here).
    pub fn resume(&mut self, now: i64) {
        self.paused = None;
        self.resumed = Some(now);
    }

    /// Per wave: open or when it opens, and the machines' outcomes.
    pub fn status(&self) -> Vec<WaveStatus> {
        self.plan
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let of_wave = self.members.iter().filter(|(_, m)| m.wave == i);
                let opens = match self.opened.get(i) {
                    Some(t) => Some(*t),
                    None if i == self.opened.len() && self.paused.is_none() => {
                        self.next_opening(i - 1)
                    }
                    None => None,
                };
                WaveStatus {
                    name: w.name.clone(),
                    opens,
                    open: i < self.opened.len(),
                    offered: of_wave.clone().count(),
                    healthy: of_wave
                        .clone()
                        .filter(|(_, m)| matches!(m.outcome, Outcome::Healthy { .. }))
                        .count(),
                    failed: of_wave
                        .filter_map(|(mac, m)| match &m.outcome {
                            Outcome::Failed { reason, .. } => Some((mac.clone(), reason.clone())),
                            _ => None,
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(max_failures: u32) -> Plan {
        Plan {
            channel: "lab".into(),
            version: "2.0.0".into(),
            waves: vec![
                WavePlan {
                    name: "canary".into(),
                    members: Members::Groups(vec!["canary".into()]),
                    soak_secs: 600,
                },
                WavePlan {
                    name: "rest".into(),
                    members: Members::Percent(100),
                    soak_secs: 0,
                },
            ],
            max_failures,
        }
    }

    fn c<'a>(mac: &'a str, group: Option<&'a str>) -> Candidate<'a> {
        Candidate {
            mac,
            seed: 7,
            group,
        }
    }

    #[test]
    fn plans_are_checked() {
        let mut p = plan(0);
        p.check().unwrap();
        p.waves[1].members = Members::Percent(101);
        assert_eq!(
            p.check().unwrap_err().to_string(),
            "waves[1]: percent: 101 is over 100"
        );
        p.waves[1].members = Members::Groups(vec![]);
        assert!(p.check().unwrap_err().to_string().contains("groups: empty"));
        p.waves[1].name = "canary".into();
        assert!(p.check().unwrap_err().to_string().contains("second wave"));
        p.waves.clear();
        assert!(Rollout::start(p, 0).is_err());
        let pct = Plan {
            waves: vec![
                WavePlan {
                    name: "a".into(),
                    members: Members::Percent(50),
                    soak_secs: 0,
                },
                WavePlan {
                    name: "b".into(),
                    members: Members::Percent(10),
                    soak_secs: 0,
                },
            ],
            ..plan(0)
        };
        assert!(pct.check().unwrap_err().to_string().contains("cumulative"));
    }

    #[test]
    fn waves_open_after_their_soak() {
        let mut r = Rollout::start(plan(0), 1000).unwrap();
        assert_eq!(
            r.decide(&c("m1", Some("canary")), 1000),
            Decision::Offer { wave: 0 }
        );
        let Decision::Hold { reason } = r.decide(&c("m2", Some("web")), 1000) else {
            panic!()
        };
        assert_eq!(reason, "wave rest of the 2.0.0 rollout opens at 1600");
        assert!(r
            .record(&c("m1", Some("canary")), "2.0.0", Ok(()), 1200)
            .is_none());
        assert_eq!(
            r.decide(&c("m2", Some("web")), 1599),
            Decision::Hold {
                reason: "wave rest of the 2.0.0 rollout opens at 1600".into()
            }
        );
        assert_eq!(
            r.decide(&c("m2", Some("web")), 1600),
            Decision::Offer { wave: 1 }
        );
        let s = r.status();
        assert_eq!((s[0].offered, s[0].healthy, s[1].offered), (1, 1, 1));
        assert_eq!((s[0].opens, s[1].opens), (Some(1000), Some(1600)));
        // a machine in no wave
        let mut only_canary = plan(0);
        only_canary.waves.truncate(1);
        let mut r = Rollout::start(only_canary, 0).unwrap();
        assert!(matches!(
            r.decide(&c("m9", Some("web")), 10_000),
            Decision::Hold { reason } if reason.contains("in no wave")
        ));
    }

    #[test]
    fn a_failure_in_the_first_wave_pauses_the_rollout_and_the_second_never_gets_it() {
        let mut r = Rollout::start(plan(0), 0).unwrap();
        assert_eq!(
            r.decide(&c("m1", Some("canary")), 0),
            Decision::Offer { wave: 0 }
        );
        let p = r
            .record(
                &c("m1", Some("canary")),
                "2.0.0",
                Err("cairn-broken.service failed".into()),
                100,
            )
            .cloned()
            .expect("paused");
        assert_eq!(
            p.reason,
            "1 machine(s) of wave canary failed 2.0.0 (m1), more than the 0 allowed"
        );
        // long after the soak: the second wave stays closed
        for mac in ["m2", "m3", "m4"] {
            let Decision::Hold { reason } = r.decide(&c(mac, Some("web")), 100_000) else {
                panic!()
            };
            assert!(
                reason.starts_with("the 2.0.0 rollout is paused: 1 machine(s)"),
                "{reason}"
            );
        }
        // the failed machine is not offered it again either
        assert!(matches!(
            r.decide(&c("m1", Some("canary")), 100_000),
            Decision::Hold { reason } if reason.contains("failed on this machine")
        ));
        let s = r.status();
        assert!(!s[1].open && s[1].opens.is_none());
        assert_eq!(
            s[0].failed,
            [("m1".to_string(), "cairn-broken.service failed".to_string())]
        );
        // the operator resumes: the next wave's soak counts from then
        r.resume(200_000);
        assert_eq!(
            r.decide(&c("m2", Some("web")), 200_000),
            Decision::Offer { wave: 1 }
        );
    }

    #[test]
    fn failures_up_to_the_threshold_do_not_pause() {
        let mut p = plan(1);
        p.waves[0].members = Members::Percent(100);
        let mut r = Rollout::start(p, 0).unwrap();
        for m in ["a", "b", "c"] {
            r.decide(&c(m, None), 0);
        }
        assert!(r
            .record(&c("a", None), "2.0.0", Err("x".into()), 1)
            .is_none());
        // a verdict on another version is not this rollout's
        assert!(r
            .record(&c("b", None), "1.0.0", Err("x".into()), 1)
            .is_none());
        assert!(r
            .record(&c("b", None), "2.0.0", Err("y".into()), 2)
            .is_some());
        assert!(r.paused.is_some());
    }

    #[test]
    fn percent_waves_follow_the_seed() {
        let p = Plan {
            waves: vec![
                WavePlan {
                    name: "tenth".into(),
                    members: Members::Percent(10),
                    soak_secs: 60,
                },
                WavePlan {
                    name: "all".into(),
                    members: Members::Percent(100),
                    soak_secs: 0,
                },
            ],
            ..plan(0)
        };
        let r = Rollout::start(p, 0).unwrap();
        let at = |seed| {
            r.wave_of(&Candidate {
                mac: "x",
                seed,
                group: None,
            })
        };
        assert_eq!(at(0), Some(0));
        assert_eq!(at(SEEDS / 10 - 1), Some(0));
        assert_eq!(at(SEEDS / 10 + 1), Some(1));
        assert_eq!(at(SEEDS - 1), Some(1));
    }

    #[test]
    fn a_rollout_survives_json() {
        let mut r = Rollout::start(plan(0), 5).unwrap();
        r.decide(&c("m1", Some("canary")), 5);
        r.record(&c("m1", Some("canary")), "2.0.0", Err("x".into()), 6);
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Rollout>(&j).unwrap(), r);
    }
}
