//! Rollout waves with health feedback: a channel's new version goes to
//! machines wave by wave (a share of machine seeds, or named inventory
//! groups), each wave open at least its soak time before the next opens;
//! every machine's health verdict for the version is counted against its
//! wave, and the rollout pauses by itself, saying why, when a wave's
//! failures pass the plan's threshold. Paused, no new machine is offered
//! the version until an operator resumes it. Each machine's membership
//! ([`Member`]) is kept in its own record (`Machine::rollouts`); the
//! rollout keeps per-wave counters and a bounded list of failed machines,
//! so its record stays the same size whatever the fleet's.

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

/// One machine's place in a rollout, kept in the machine's record (under
/// the rollout's channel): which rollout (its version and start, so a
/// rollout started afresh does not inherit it), the machine's wave and
/// what it did with the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub version: String,
    /// The rollout's `started`.
    pub started: i64,
    pub wave: usize,
    pub outcome: Outcome,
}

impl Member {
    /// Whether this membership is one of `r`'s: the same version and start,
    /// and a wave the plan still has (a membership that is not is ignored,
    /// and dropped from the machine's record at its next save).
    pub fn of(&self, r: &Rollout) -> bool {
        self.version == r.plan.version
            && self.started == r.started
            && self.wave < r.plan.waves.len()
    }
}

/// A member as rollout records before per-machine memberships kept them
/// (`members` in the rollout's own record); read only, to migrate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyMember {
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

/// Failed machines a wave names (in its record, the status page and a
/// pause's reason); the others are counted.
pub const FAILED_NAMED: usize = 32;

/// One failed machine of a wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub mac: String,
    pub reason: String,
    pub at: i64,
}

/// A wave's members, counted: every machine offered the version or that
/// reported on it (`offered`), of which `healthy` and `failed`; the first
/// [`FAILED_NAMED`] failed machines by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaveCount {
    pub offered: u64,
    pub healthy: u64,
    pub failed: u64,
    #[serde(default)]
    pub failures: Vec<Failure>,
}

impl WaveCount {
    fn add(&mut self, mac: &str, o: &Outcome) {
        self.offered += 1;
        match o {
            Outcome::Offered { .. } => {}
            Outcome::Healthy { .. } => self.healthy += 1,
            Outcome::Failed { at, reason } => {
                self.failed += 1;
                if self.failures.len() < FAILED_NAMED {
                    self.failures.push(Failure {
                        mac: mac.to_owned(),
                        reason: reason.clone(),
                        at: *at,
                    });
                }
            }
        }
    }

    fn remove(&mut self, mac: &str, o: &Outcome) {
        self.offered = self.offered.saturating_sub(1);
        match o {
            Outcome::Offered { .. } => {}
            Outcome::Healthy { .. } => self.healthy = self.healthy.saturating_sub(1),
            Outcome::Failed { .. } => {
                self.failed = self.failed.saturating_sub(1);
                self.failures.retain(|f| f.mac != mac);
            }
        }
    }
}

/// A rollout in progress: the plan, when each wave opened, each wave's
/// counts, and a pause if there is one.
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
    /// Per wave of the plan.
    #[serde(default)]
    pub counts: Vec<WaveCount>,
    /// Each machine's membership, as records written before memberships
    /// moved to the machines' records held them: read, never written;
    /// [`Rollout::take_legacy_members`] empties it at load.
    #[serde(default, rename = "members", skip_serializing)]
    pub legacy_members: BTreeMap<String, LegacyMember>,
}

/// A wave's counts, for the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaveStatus {
    pub name: String,
    /// When it opened, or when it will open at the earliest (`None`: after
    /// an earlier wave that has not opened, or paused).
    pub opens: Option<i64>,
    pub open: bool,
    pub offered: u64,
    pub healthy: u64,
    /// Failed machines in all.
    pub failures: u64,
    /// The first [`FAILED_NAMED`] of them: (MAC, reason).
    pub failed: Vec<(String, String)>,
}

impl Rollout {
    /// Starts `plan` at `now` (its first wave opens at once).
    pub fn start(plan: Plan, now: i64) -> Result<Rollout, PlanError> {
        plan.check()?;
        Ok(Rollout {
            counts: vec![WaveCount::default(); plan.waves.len()],
            plan,
            started: now,
            opened: vec![now],
            paused: None,
            resumed: None,
            legacy_members: BTreeMap::new(),
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

    fn count_mut(&mut self, wave: usize) -> &mut WaveCount {
        if self.counts.len() <= wave {
            let n = self.plan.waves.len().max(wave + 1);
            self.counts.resize(n, WaveCount::default());
        }
        &mut self.counts[wave]
    }

    /// Moves `mac`'s membership from `old` (counted already, or `None`) to
    /// `new`, in the counts.
    fn recount(&mut self, mac: &str, old: Option<&Member>, new: &Member) {
        if let Some(o) = old {
            self.count_mut(o.wave).remove(mac, &o.outcome);
        }
        self.count_mut(new.wave).add(mac, &new.outcome);
    }

    /// The counts made again from every membership of this rollout
    /// (`(mac, member)`, memberships of other rollouts skipped): at load,
    /// so counts and memberships agree whatever was saved last. The named
    /// failures are the earliest.
    pub fn recount_all<'a>(&mut self, members: impl IntoIterator<Item = (&'a str, &'a Member)>) {
        self.counts = vec![WaveCount::default(); self.plan.waves.len()];
        let mut failed: Vec<(i64, &str, &Member)> = Vec::new();
        for (mac, m) in members {
            if !m.of(self) {
                continue;
            }
            match &m.outcome {
                Outcome::Failed { at, .. } => failed.push((*at, mac, m)),
                o => self.counts[m.wave].add(mac, o),
            }
        }
        failed.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (_, mac, m) in failed {
            self.counts[m.wave].add(mac, &m.outcome);
        }
    }

    /// Empties the members a record from before per-machine memberships
    /// held, and returns them as memberships of this rollout (waves the
    /// plan no longer has dropped).
    pub fn take_legacy_members(&mut self) -> Vec<(String, Member)> {
        let waves = self.plan.waves.len();
        std::mem::take(&mut self.legacy_members)
            .into_iter()
            .filter(|(_, m)| m.wave < waves)
            .map(|(mac, m)| {
                (
                    mac,
                    Member {
                        version: self.plan.version.clone(),
                        started: self.started,
                        wave: m.wave,
                        outcome: m.outcome,
                    },
                )
            })
            .collect()
    }

    /// Whether `c` gets the version now. `member` is the machine's
    /// membership of this rollout (see [`Member::of`]; anything else is
    /// taken as none); an offer to a machine not yet a member makes it one
    /// and is counted.
    pub fn decide(&mut self, c: &Candidate<'_>, member: &mut Option<Member>, now: i64) -> Decision {
        self.advance(now);
        let v = &self.plan.version;
        let current = member.as_ref().filter(|m| m.of(self));
        if let Some(m) = current {
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
        // not a member (an offered member is offered above unless paused,
        // and paused returns above)
        let new = Member {
            version: v.clone(),
            started: self.started,
            wave,
            outcome: Outcome::Offered { at: now },
        };
        self.recount(c.mac, None, &new);
        *member = Some(new);
        Decision::Offer { wave }
    }

    /// A machine's verdict on `version` (`Err(reason)`: the health gate
    /// failed or it rolled back). `member` is the machine's membership (as
    /// for [`Rollout::decide`]), updated. Verdicts on other versions are
    /// not this rollout's; a machine that reports without having been
    /// offered (it got the version elsewhere) is counted in its wave all
    /// the same. Returns the pause this verdict caused, if any.
    pub fn record(
        &mut self,
        c: &Candidate<'_>,
        member: &mut Option<Member>,
        version: &str,
        verdict: Result<(), String>,
        now: i64,
    ) -> Option<&Pause> {
        if version != self.plan.version {
            return None;
        }
        let old = member.take().filter(|m| m.of(self));
        let wave = match &old {
            Some(m) => m.wave,
            None => self.wave_of(c).unwrap_or(self.opened.len() - 1),
        };
        let outcome = match verdict {
            Ok(()) => Outcome::Healthy { at: now },
            Err(reason) => Outcome::Failed { at: now, reason },
        };
        let new = Member {
            version: version.to_owned(),
            started: self.started,
            wave,
            outcome,
        };
        self.recount(c.mac, old.as_ref(), &new);
        *member = Some(new);
        if self.paused.is_some() {
            return None;
        }
        let count = &self.counts[wave];
        if count.failed > u64::from(self.plan.max_failures) {
            let mut named: Vec<&str> = count.failures.iter().map(|f| f.mac.as_str()).collect();
            let unnamed = count.failed.saturating_sub(named.len() as u64);
            let more = format!("{unnamed} more");
            if unnamed > 0 {
                named.push(&more);
            }
            self.paused = Some(Pause {
                at: now,
                wave,
                reason: format!(
                    "{} machine(s) of wave {} failed {} ({}), more than the {} allowed",
                    count.failed,
                    self.plan.waves[wave].name,
                    self.plan.version,
                    named.join(", "),
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

    /// The same version with an edited plan: what happened so far is kept
    /// (opened waves, counts, a pause) minus what refers to waves that no
    /// longer exist. Memberships of those waves are no longer
    /// [`Member::of`] this rollout.
    pub fn edit(&mut self, plan: Plan) {
        let waves = plan.waves.len();
        self.plan = plan;
        self.opened.truncate(waves);
        self.counts.resize(waves, WaveCount::default());
        if self.paused.as_ref().is_some_and(|p| p.wave >= waves) {
            self.paused = None;
        }
    }

    /// Per wave: open or when it opens, and the machines' outcomes.
    pub fn status(&self) -> Vec<WaveStatus> {
        self.plan
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let count = self.counts.get(i).cloned().unwrap_or_default();
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
                    offered: count.offered,
                    healthy: count.healthy,
                    failures: count.failed,
                    failed: count
                        .failures
                        .into_iter()
                        .map(|f| (f.mac, f.reason))
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

    /// A rollout and its machines' memberships (their records' part).
    struct Fleet {
        r: Rollout,
        members: BTreeMap<String, Option<Member>>,
    }

    fn fleet(r: Rollout) -> Fleet {
        Fleet {
            r,
            members: BTreeMap::new(),
        }
    }

    impl std::ops::Deref for Fleet {
        type Target = Rollout;
        fn deref(&self) -> &Rollout {
            &self.r
        }
    }

    impl std::ops::DerefMut for Fleet {
        fn deref_mut(&mut self) -> &mut Rollout {
            &mut self.r
        }
    }

    impl Fleet {
        fn decide(&mut self, c: &Candidate<'_>, now: i64) -> Decision {
            let m = self.members.entry(c.mac.to_owned()).or_default();
            self.r.decide(c, m, now)
        }

        fn record(
            &mut self,
            c: &Candidate<'_>,
            version: &str,
            verdict: Result<(), String>,
            now: i64,
        ) -> Option<&Pause> {
            let m = self.members.entry(c.mac.to_owned()).or_default();
            self.r.record(c, m, version, verdict, now)
        }

        /// The counts as made again from the memberships.
        fn recounted(&self) -> Vec<WaveCount> {
            let mut r = self.r.clone();
            r.recount_all(
                self.members
                    .iter()
                    .filter_map(|(mac, m)| Some((mac.as_str(), m.as_ref()?))),
            );
            r.counts
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
        let mut r = fleet(Rollout::start(plan(0), 1000).unwrap());
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
        let mut r = fleet(Rollout::start(only_canary, 0).unwrap());
        assert!(matches!(
            r.decide(&c("m9", Some("web")), 10_000),
            Decision::Hold { reason } if reason.contains("in no wave")
        ));
    }

    #[test]
    fn a_failure_in_the_first_wave_pauses_the_rollout_and_the_second_never_gets_it() {
        let mut r = fleet(Rollout::start(plan(0), 0).unwrap());
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
        let mut r = fleet(Rollout::start(p, 0).unwrap());
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
        let mut r = fleet(Rollout::start(plan(0), 5).unwrap());
        r.decide(&c("m1", Some("canary")), 5);
        r.decide(&c("m2", Some("canary")), 5);
        r.record(&c("m2", Some("canary")), "2.0.0", Ok(()), 6);
        r.record(&c("m1", Some("canary")), "2.0.0", Err("x".into()), 6);
        let j = serde_json::to_string(&r.r).unwrap();
        assert_eq!(serde_json::from_str::<Rollout>(&j).unwrap(), r.r);
        // a healthy machine is counted, not named
        assert!(!j.contains("m2"), "{j}");
        assert_eq!(r.recounted(), r.counts);
    }

    #[test]
    fn counts_follow_verdicts_and_name_a_bounded_number_of_failures() {
        let mut p = plan(40);
        p.waves[0].members = Members::Percent(100);
        let mut r = fleet(Rollout::start(p, 0).unwrap());
        let macs: Vec<String> = (0..100).map(|i| format!("m{i:03}")).collect();
        for m in &macs {
            assert_eq!(r.decide(&c(m, None), 0), Decision::Offer { wave: 0 });
        }
        // a machine asking again is not counted twice
        r.decide(&c("m000", None), 1);
        assert_eq!((r.counts[0].offered, r.counts[0].failed), (100, 0));
        // healthy, then failed: it moves from one count to the other
        r.record(&c("m000", None), "2.0.0", Ok(()), 2);
        assert_eq!(r.counts[0].healthy, 1);
        r.record(&c("m000", None), "2.0.0", Err("late".into()), 3);
        assert_eq!((r.counts[0].healthy, r.counts[0].failed), (0, 1));
        r.record(&c("m000", None), "2.0.0", Ok(()), 4);
        assert_eq!((r.counts[0].healthy, r.counts[0].failed), (1, 0));
        assert!(r.counts[0].failures.is_empty());
        let mut pause = None;
        for (i, m) in macs[1..=41].iter().enumerate() {
            if let Some(p) = r.record(&c(m, None), "2.0.0", Err(format!("e{i}")), 10 + i as i64) {
                pause = Some((i, p.clone()));
            }
        }
        // the 41st failure pauses: 32 named, 9 counted
        let (i, p) = pause.expect("paused");
        assert_eq!(i, 40);
        assert!(
            p.reason
                .starts_with("41 machine(s) of wave canary failed 2.0.0 (m001, m002,"),
            "{}",
            p.reason
        );
        assert!(
            p.reason.contains("m032, 9 more), more than the 40 allowed"),
            "{}",
            p.reason
        );
        let s = r.status();
        assert_eq!((s[0].offered, s[0].healthy, s[0].failures), (100, 1, 41));
        assert_eq!(s[0].failed.len(), FAILED_NAMED);
        assert_eq!(r.recounted(), r.counts);
        // the record stays small whatever the fleet
        assert!(serde_json::to_vec(&r.r).unwrap().len() < 4096);
    }

    #[test]
    fn a_rollout_started_afresh_or_edited_does_not_count_old_memberships() {
        let mut r = fleet(Rollout::start(plan(0), 0).unwrap());
        r.decide(&c("m1", Some("canary")), 0);
        r.record(&c("m1", Some("canary")), "2.0.0", Err("x".into()), 1);
        let old = r.members["m1"].clone();
        // the same version started again: the machine is a newcomer
        let mut again = Rollout::start(plan(0), 50).unwrap();
        assert!(!old.as_ref().unwrap().of(&again));
        let mut m = old.clone();
        assert_eq!(
            again.decide(&c("m1", Some("canary")), &mut m, 50),
            Decision::Offer { wave: 0 }
        );
        assert_eq!(again.counts[0].offered, 1);
        assert!(m.unwrap().of(&again));
        // an edit that drops a machine's wave: not counted, not held by it
        r.resume(100);
        assert_eq!(
            r.decide(&c("m2", Some("web")), 700),
            Decision::Offer { wave: 1 }
        );
        assert_eq!(r.counts[1].offered, 1);
        let mut one = plan(0);
        one.waves.truncate(1);
        r.r.edit(one);
        assert_eq!(r.counts.len(), 1);
        assert!(r.members["m1"].as_ref().unwrap().of(&r.r));
        assert!(!r.members["m2"].as_ref().unwrap().of(&r.r));
        assert!(matches!(
            r.decide(&c("m2", Some("web")), 800),
            Decision::Hold { reason } if reason.contains("in no wave")
        ));
        assert_eq!(r.recounted(), r.counts);
    }

    #[test]
    fn a_record_with_members_from_before_reads_and_gives_them_up() {
        let j = r#"{"plan":{"channel":"lab","version":"2.0.0","waves":[
            {"name":"canary","members":{"groups":["canary"]},"soak_secs":600},
            {"name":"rest","members":{"percent":100},"soak_secs":0}],"max_failures":0},
          "started":5,"opened":[5],
          "paused":{"at":9,"wave":0,"reason":"1 machine(s) of wave canary failed 2.0.0 (m1), more than the 0 allowed"},
          "members":{"m1":{"wave":0,"outcome":{"outcome":"failed","at":9,"reason":"x"}},
                     "m2":{"wave":0,"outcome":{"outcome":"offered","at":6}},
                     "m9":{"wave":7,"outcome":{"outcome":"healthy","at":6}}}}"#;
        let mut r: Rollout = serde_json::from_str(j).unwrap();
        let members = r.take_legacy_members();
        assert!(r.legacy_members.is_empty());
        assert_eq!(members.len(), 2, "the wave the plan has not is dropped");
        assert!(members.iter().all(|(_, m)| m.of(&r)));
        r.recount_all(members.iter().map(|(mac, m)| (mac.as_str(), m)));
        let s = r.status();
        assert_eq!((s[0].offered, s[0].failures), (2, 1));
        assert_eq!(s[0].failed, [("m1".to_string(), "x".to_string())]);
        // written again: counted, and only the failed machine named
        let written = serde_json::to_string(&r).unwrap();
        assert!(
            written.contains("\"m1\"") && !written.contains("\"m2\""),
            "{written}"
        );
    }
}
