//! cairn-lifecycle: what `cairn serve` knows and decides about each
//! machine over its life, apart from HTTP and iPXE: the install-once rule
//! ([`machine`]), rollout waves with health feedback ([`rollout`]), the
//! server-kept A/B of diskless machines ([`diskless`]) and their
//! persistence ([`store`]: files, or etcd with [`etcd_store`]).
//! [`Lifecycle`] ties them together: the server asks it what to answer a
//! netboot or an update check, and hands it the machines' reports
//! (`cairn_formats::lifecycle`). Every change is saved before the answer
//! goes out.

pub mod diskless;
pub mod etcd_store;
pub mod machine;
pub mod rollout;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cairn_formats::lifecycle::{Event, Report};

pub use diskless::{Choice, Diskless};
pub use etcd_store::EtcdStore;
pub use machine::{InstallAction, Machine, Phase};
pub use rollout::{Candidate, Decision, Plan, Rollout};
pub use store::{FileStore, SetAside, Store, StoreError};

/// Bounds on what the records may grow to.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Machines recorded at most; a new one beyond is refused.
    pub max_machines: usize,
    /// How long a diskless trial may go without a healthy report.
    pub health_bound_secs: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_machines: 100_000,
            health_bound_secs: 600,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// A report from a MAC address that never netbooted from this server.
    #[error("{mac}: no such machine (reports are taken only from machines that netbooted from this server)")]
    UnknownMachine { mac: String },
    #[error("{max} machines recorded: no room for {mac}")]
    Full { mac: String, max: usize },
    #[error("no rollout on channel {channel:?}")]
    NoRollout { channel: String },
    #[error("rollout plan: {0}")]
    Plan(#[from] rollout::PlanError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Lifecycle::apply_plan`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanChange {
    Started,
    Edited,
    Unchanged,
}

/// The records and the store they are kept in.
#[derive(Debug)]
pub struct Lifecycle {
    store: Arc<dyn Store>,
    limits: Limits,
    machines: BTreeMap<String, Machine>,
    rollouts: BTreeMap<String, Rollout>,
}

impl Lifecycle {
    /// Reads every record of `store`; the records that did not read are
    /// returned (set aside, for the caller to log). Rollout records from
    /// before memberships moved to the machines' records give theirs to
    /// the machines (a member that is no machine on record is dropped) and
    /// are written again without them, machines first; memberships that
    /// are no current rollout's are ignored (dropped at the machine's next
    /// save), and each rollout's counts are made again from the
    /// memberships, so a crash between a machine's save and its rollout's
    /// leaves nothing miscounted.
    pub fn open(
        store: Arc<dyn Store>,
        limits: Limits,
    ) -> Result<(Lifecycle, Vec<SetAside>), StoreError> {
        let loaded = store.load()?;
        let mut machines: BTreeMap<String, Machine> = loaded
            .machines
            .into_iter()
            .map(|m| (m.mac.clone(), m))
            .collect();
        let mut rollouts: BTreeMap<String, Rollout> = loaded
            .rollouts
            .into_iter()
            .map(|r| (r.plan.channel.clone(), r))
            .collect();
        let mut migrated = BTreeSet::new();
        let mut rewrite = BTreeSet::new();
        for (channel, r) in &mut rollouts {
            if r.legacy_members.is_empty() {
                continue;
            }
            rewrite.insert(channel.clone());
            for (mac, member) in r.take_legacy_members() {
                if let Some(m) = machines.get_mut(&mac) {
                    m.rollouts.insert(channel.clone(), member);
                    migrated.insert(mac);
                }
            }
        }
        for m in machines.values_mut() {
            m.drop_stale_memberships(|channel| rollouts.get(channel));
        }
        for (channel, r) in &mut rollouts {
            let before = r.counts.clone();
            r.recount_all(
                machines
                    .values()
                    .filter_map(|m| Some((m.mac.as_str(), m.rollouts.get(channel)?))),
            );
            if r.counts != before {
                rewrite.insert(channel.clone());
            }
        }
        for mac in &migrated {
            store.save_machine(&machines[mac])?;
        }
        for channel in &rewrite {
            store.save_rollout(&rollouts[channel])?;
        }
        Ok((
            Lifecycle {
                store,
                limits,
                machines,
                rollouts,
            },
            loaded.set_aside,
        ))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn machine(&self, mac: &str) -> Option<&Machine> {
        self.machines.get(mac)
    }

    pub fn machines(&self) -> impl Iterator<Item = &Machine> {
        self.machines.values()
    }

    pub fn rollout(&self, channel: &str) -> Option<&Rollout> {
        self.rollouts.get(channel)
    }

    pub fn rollouts(&self) -> impl Iterator<Item = &Rollout> {
        self.rollouts.values()
    }

    /// The record of a machine that netbooted, made on its first netboot.
    fn netbooted(&mut self, mac: &str, now: i64) -> Result<&mut Machine, LifecycleError> {
        if !self.machines.contains_key(mac) && self.machines.len() >= self.limits.max_machines {
            return Err(LifecycleError::Full {
                mac: mac.to_owned(),
                max: self.limits.max_machines,
            });
        }
        let m = self
            .machines
            .entry(mac.to_owned())
            .or_insert_with(|| Machine::new(mac, now));
        m.last_seen = now;
        Ok(m)
    }

    /// Saves `mac`'s record, without the memberships that are no current
    /// rollout's.
    fn save(&mut self, mac: &str) -> Result<(), StoreError> {
        let rollouts = &self.rollouts;
        match self.machines.get_mut(mac) {
            Some(m) => {
                m.drop_stale_memberships(|channel| rollouts.get(channel));
                self.store.save_machine(m)
            }
            None => Ok(()),
        }
    }

    /// A netboot under a profile that boots the network image as it is
    /// (no install, no diskless A/B): only recorded.
    pub fn seen(&mut self, mac: &str, now: i64) -> Result<(), LifecycleError> {
        let new = !self.machines.contains_key(mac);
        self.netbooted(mac, now)?;
        if new {
            self.save(mac)?;
        }
        Ok(())
    }

    /// A netboot under a profile that installs to disk.
    pub fn install_boot(&mut self, mac: &str, now: i64) -> Result<InstallAction, LifecycleError> {
        let action = self.netbooted(mac, now)?.on_install_boot(now);
        self.save(mac)?;
        Ok(action)
    }

    /// A netboot of a diskless machine the server wants on `wanted`.
    pub fn diskless_boot(
        &mut self,
        mac: &str,
        wanted: &str,
        now: i64,
    ) -> Result<Choice, LifecycleError> {
        let bound = self.limits.health_bound_secs;
        let m = self.netbooted(mac, now)?;
        let choice = m.diskless.choose(wanted, now, bound);
        let line = match &choice {
            Choice::Wanted {
                version,
                trial: true,
            } => format!("diskless: serving {version} (a trial until it reports healthy)"),
            Choice::Wanted { .. } => String::new(),
            Choice::Previous { version, reason } => {
                format!("diskless: serving {version}, not {wanted}: {reason}")
            }
        };
        if !line.is_empty() {
            m.note(now, line);
        }
        self.save(mac)?;
        Ok(choice)
    }

    /// The last version that reported healthy on diskless machine `mac`:
    /// what a failed trial falls back to.
    pub fn diskless_good(&self, mac: &str) -> Option<String> {
        self.machines.get(mac)?.diskless.good.clone()
    }

    /// A machine's report. `group` is the inventory group that matches the
    /// machine (for rollout waves by group). Returns the rollout pause the
    /// report caused, if any, for the caller to log.
    pub fn report(
        &mut self,
        report: &Report,
        group: Option<&str>,
        now: i64,
    ) -> Result<Option<rollout::Pause>, LifecycleError> {
        let m =
            self.machines
                .get_mut(&report.mac)
                .ok_or_else(|| LifecycleError::UnknownMachine {
                    mac: report.mac.clone(),
                })?;
        m.apply(report, now);
        m.diskless.report(&report.event, now);
        let verdict = match &report.event {
            Event::Healthy { version } => Some((version, Ok(()))),
            Event::Unhealthy { version, reason }
            | Event::RolledBack {
                version, reason, ..
            } => Some((version, Err(reason.clone()))),
            _ => None,
        };
        let seed = m
            .machine_id
            .as_deref()
            .map(cairn_formats::channel::rollout::machine_seed);
        let mut pause = None;
        let mut changed = Vec::new();
        if let (Some((version, verdict)), Some(seed)) = (verdict, seed) {
            let c = Candidate {
                mac: &report.mac,
                seed,
                group,
            };
            for (channel, r) in &mut self.rollouts {
                if r.plan.version != *version {
                    continue;
                }
                let before = r.clone();
                let mut member = m.rollouts.remove(channel);
                if let Some(p) = r.record(&c, &mut member, version, verdict.clone(), now) {
                    pause = Some(p.clone());
                }
                if let Some(member) = member {
                    m.rollouts.insert(channel.clone(), member);
                }
                if *r != before {
                    changed.push(channel.clone());
                }
            }
        }
        // the machine first: at load, the counts are made from the machines
        self.save(&report.mac)?;
        for channel in changed {
            self.store.save_rollout(&self.rollouts[&channel])?;
        }
        Ok(pause)
    }

    /// Whether the rollout on `channel` offers its version to this machine
    /// now (`None`: no rollout on that channel, the newest bundle is
    /// offered as before).
    pub fn offer(
        &mut self,
        channel: &str,
        c: &Candidate<'_>,
        now: i64,
    ) -> Result<Option<Decision>, LifecycleError> {
        let Some(r) = self.rollouts.get_mut(channel) else {
            return Ok(None);
        };
        let before = r.clone();
        let d = match self.machines.get_mut(c.mac) {
            Some(m) => {
                let mut member = m.rollouts.get(channel).cloned();
                let d = r.decide(c, &mut member, now);
                match member {
                    Some(member) if m.rollouts.get(channel) != Some(&member) => {
                        m.rollouts.insert(channel.to_owned(), member);
                        self.store.save_machine(m)?;
                    }
                    _ => {}
                }
                d
            }
            // a machine with no record (it never netbooted from this
            // server) is answered as a newcomer every time, and counted
            // nowhere: memberships are kept in machines' records only
            None => {
                r.advance(now);
                r.clone().decide(c, &mut None, now)
            }
        };
        if *r != before {
            self.store.save_rollout(r)?;
        }
        Ok(Some(d))
    }

    /// Starts (or replaces) the rollout of `plan.channel`.
    pub fn start_rollout(&mut self, plan: Plan, now: i64) -> Result<&Rollout, LifecycleError> {
        // a rollout started again in the same second must not take the
        // memberships of the one it replaces for its own (Member::of)
        let now = match self.rollouts.get(&plan.channel) {
            Some(old) if old.started >= now => old.started + 1,
            _ => now,
        };
        let r = Rollout::start(plan, now)?;
        self.store.save_rollout(&r)?;
        let channel = r.plan.channel.clone();
        self.rollouts.insert(channel.clone(), r);
        Ok(&self.rollouts[&channel])
    }

    /// The inventory's plan for `plan.channel`, applied at load and at
    /// every reload: a rollout of another version (or none yet) is started
    /// afresh; the same plan again changes nothing; the same version with
    /// edited waves keeps what happened so far (opened waves, counts,
    /// memberships, a pause), minus what refers to waves that no longer
    /// exist (their members' memberships are dropped and saved).
    /// Returns what was done, for the log.
    pub fn apply_plan(&mut self, plan: Plan, now: i64) -> Result<PlanChange, LifecycleError> {
        plan.check()?;
        match self.rollouts.get_mut(&plan.channel) {
            Some(r) if r.plan == plan => Ok(PlanChange::Unchanged),
            Some(r) if r.plan.version == plan.version => {
                r.edit(plan);
                // the members of waves that are gone leave the machines'
                // records now (were the plan to get those waves back, they
                // would count again, uncounted)
                let channel = r.plan.channel.clone();
                for m in self.machines.values_mut() {
                    if m.rollouts.get(&channel).is_some_and(|x| {
                        x.version == r.plan.version && x.started == r.started && !x.of(r)
                    }) {
                        m.rollouts.remove(&channel);
                        self.store.save_machine(m)?;
                    }
                }
                self.store.save_rollout(r)?;
                Ok(PlanChange::Edited)
            }
            _ => {
                self.start_rollout(plan, now)?;
                Ok(PlanChange::Started)
            }
        }
    }

    /// Operator: resume a paused rollout.
    pub fn resume_rollout(&mut self, channel: &str, now: i64) -> Result<(), LifecycleError> {
        let r = self
            .rollouts
            .get_mut(channel)
            .ok_or_else(|| LifecycleError::NoRollout {
                channel: channel.to_owned(),
            })?;
        r.resume(now);
        self.store.save_rollout(r)?;
        Ok(())
    }

    /// Operator: install this machine again at its next netboot.
    pub fn reinstall(
        &mut self,
        mac: &str,
        allow_overwrite: bool,
        now: i64,
    ) -> Result<(), LifecycleError> {
        self.netbooted(mac, now)?.reinstall(allow_overwrite, now);
        self.save(mac)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_formats::lifecycle::BootSource;
    use rollout::{Members, WavePlan};

    fn id(i: u8) -> String {
        format!("{:032x}", u128::from(i) + 0xabc0)
    }

    fn rep(mac: &str, i: u8, event: Event) -> Report {
        Report {
            mac: mac.into(),
            machine_id: Some(id(i)),
            event,
        }
    }

    fn open(dir: &std::path::Path) -> Lifecycle {
        let store = Arc::new(FileStore::open(dir).unwrap());
        Lifecycle::open(store, Limits::default()).unwrap().0
    }

    #[test]
    fn inventory_plans_start_keep_or_edit_a_rollout() {
        let t = tempfile::tempdir().unwrap();
        let mut l = open(t.path());
        let plan = |version: &str, waves: usize| Plan {
            channel: "lab".into(),
            version: version.into(),
            waves: (0..waves)
                .map(|i| WavePlan {
                    name: format!("w{i}"),
                    members: Members::Percent(100),
                    soak_secs: 0,
                })
                .collect(),
            max_failures: 0,
        };
        assert_eq!(l.apply_plan(plan("2", 2), 1).unwrap(), PlanChange::Started);
        l.seen("m:0", 1).unwrap();
        let member = |l: &Lifecycle| {
            l.machine("m:0")
                .unwrap()
                .member_of(l.rollout("lab").unwrap())
                .cloned()
        };
        let c = Candidate {
            mac: "m:0",
            seed: 1,
            group: None,
        };
        assert_eq!(
            l.offer("lab", &c, 2).unwrap(),
            Some(Decision::Offer { wave: 0 })
        );
        // the same plan at a reload: the member is kept
        assert_eq!(
            l.apply_plan(plan("2", 2), 3).unwrap(),
            PlanChange::Unchanged
        );
        assert!(member(&l).is_some());
        // edited waves of the same version: kept too
        assert_eq!(l.apply_plan(plan("2", 3), 4).unwrap(), PlanChange::Edited);
        assert_eq!(l.rollout("lab").unwrap().plan.waves.len(), 3);
        assert_eq!(member(&l).unwrap().wave, 0);
        assert_eq!(l.rollout("lab").unwrap().status()[0].offered, 1);
        // a new version starts afresh
        assert_eq!(l.apply_plan(plan("3", 1), 5).unwrap(), PlanChange::Started);
        assert!(member(&l).is_none());
        assert_eq!(l.rollout("lab").unwrap().status()[0].offered, 0);
        // a bad plan is refused and changes nothing
        assert!(l.apply_plan(plan("4", 0), 6).is_err());
        assert_eq!(l.rollout("lab").unwrap().plan.version, "3");
        drop(l);
        assert_eq!(open(t.path()).rollout("lab").unwrap().plan.version, "3");
    }

    #[test]
    fn four_machines_two_waves_the_canary_fails_and_the_rest_never_get_it() {
        let t = tempfile::tempdir().unwrap();
        let mut l = open(t.path());
        let macs = ["m:0", "m:1", "m:2", "m:3"];
        let group = |i: usize| if i == 0 { "canary" } else { "web" };
        for (i, mac) in macs.iter().enumerate() {
            l.seen(mac, 0).unwrap();
            l.report(
                &rep(
                    mac,
                    i as u8,
                    Event::Booted {
                        image: "t".into(),
                        version: "1.0.0".into(),
                        source: BootSource::A,
                    },
                ),
                Some(group(i)),
                1,
            )
            .unwrap();
        }
        l.start_rollout(two_waves(0), 10).unwrap();
        let cand = |i: usize, ids: &[String]| Candidate {
            mac: macs[i],
            seed: cairn_formats::channel::rollout::machine_seed(&ids[i]),
            group: Some(group(i)),
        };
        let ids: Vec<String> = (0..4).map(|i| id(i as u8)).collect();
        assert_eq!(
            l.offer("lab", &cand(0, &ids), 20).unwrap(),
            Some(Decision::Offer { wave: 0 })
        );
        assert!(matches!(
            l.offer("lab", &cand(1, &ids), 20).unwrap(),
            Some(Decision::Hold { .. })
        ));
        assert_eq!(l.offer("other", &cand(1, &ids), 20).unwrap(), None);
        let pause = l
            .report(
                &rep(
                    macs[0],
                    0,
                    Event::RolledBack {
                        version: "2.0.0".into(),
                        to_version: "1.0.0".into(),
                        reason: "cairn-broken.service failed".into(),
                    },
                ),
                Some("canary"),
                100,
            )
            .unwrap()
            .expect("the rollout pauses");
        assert!(pause.reason.contains("wave canary failed 2.0.0 (m:0)"));
        for i in 1..4 {
            let d = l.offer("lab", &cand(i, &ids), 10_000).unwrap().unwrap();
            assert!(
                matches!(&d, Decision::Hold { reason } if reason.contains("paused")),
                "{d:?}"
            );
        }
        // after a restart of the server: the same records, still paused
        drop(l);
        let mut l = open(t.path());
        assert!(l.rollout("lab").unwrap().paused.is_some());
        assert!(matches!(
            l.offer("lab", &cand(2, &ids), 20_000).unwrap(),
            Some(Decision::Hold { .. })
        ));
        let m = l.machine("m:0").unwrap();
        assert!(m
            .history
            .iter()
            .any(|h| h.what.contains("rolled back to 1.0.0")));
    }

    #[test]
    fn reports_only_from_machines_that_netbooted_and_bounded_in_count() {
        let t = tempfile::tempdir().unwrap();
        let store = Arc::new(FileStore::open(t.path()).unwrap());
        let (mut l, _) = Lifecycle::open(
            store,
            Limits {
                max_machines: 2,
                ..Limits::default()
            },
        )
        .unwrap();
        let e = l
            .report(
                &rep(
                    "52:54:00:00:00:09",
                    1,
                    Event::Healthy {
                        version: "1".into(),
                    },
                ),
                None,
                0,
            )
            .unwrap_err();
        assert!(e.to_string().contains("no such machine"), "{e}");
        l.seen("a", 0).unwrap();
        l.seen("b", 0).unwrap();
        l.seen("a", 1).unwrap();
        assert!(matches!(l.seen("c", 2), Err(LifecycleError::Full { .. })));
        assert!(matches!(
            l.install_boot("c", 2),
            Err(LifecycleError::Full { .. })
        ));
    }

    #[test]
    fn install_once_across_a_server_restart() {
        let t = tempfile::tempdir().unwrap();
        let mut l = open(t.path());
        assert!(matches!(
            l.install_boot("m:1", 0).unwrap(),
            InstallAction::Install { attempt: 1, .. }
        ));
        l.report(
            &rep(
                "m:1",
                1,
                Event::InstallFinished {
                    disk: "/dev/vda".into(),
                    image: "t".into(),
                    version: "1.0.0".into(),
                },
            ),
            None,
            50,
        )
        .unwrap();
        drop(l);
        let mut l = open(t.path());
        assert_eq!(l.install_boot("m:1", 60).unwrap(), InstallAction::LocalDisk);
        assert_eq!(
            l.machine("m:1").unwrap().machine_id.as_deref(),
            Some(id(1).as_str())
        );
    }

    #[test]
    fn a_diskless_machine_goes_back_after_a_failed_image() {
        let t = tempfile::tempdir().unwrap();
        let mut l = open(t.path());
        assert_eq!(l.diskless_boot("d:1", "1.0", 0).unwrap().version(), "1.0");
        l.report(
            &rep(
                "d:1",
                1,
                Event::Healthy {
                    version: "1.0".into(),
                },
            ),
            None,
            30,
        )
        .unwrap();
        assert_eq!(l.diskless_boot("d:1", "2.0", 100).unwrap().version(), "2.0");
        l.report(
            &rep(
                "d:1",
                1,
                Event::Unhealthy {
                    version: "2.0".into(),
                    reason: "etcd did not answer".into(),
                },
            ),
            None,
            200,
        )
        .unwrap();
        drop(l);
        let mut l = open(t.path());
        let c = l.diskless_boot("d:1", "2.0", 260).unwrap();
        assert_eq!(
            c,
            Choice::Previous {
                version: "1.0".into(),
                reason: "2.0 failed here: health gate failed: etcd did not answer".into()
            }
        );
        let m = l.machine("d:1").unwrap();
        assert!(m
            .history
            .back()
            .unwrap()
            .what
            .contains("serving 1.0, not 2.0"));
    }

    fn two_waves(max_failures: u32) -> Plan {
        Plan {
            channel: "lab".into(),
            version: "2.0.0".into(),
            waves: vec![
                WavePlan {
                    name: "canary".into(),
                    members: Members::Groups(vec!["canary".into()]),
                    soak_secs: 300,
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

    #[test]
    fn a_rollout_record_from_before_gives_its_members_to_the_machines() {
        let t = tempfile::tempdir().unwrap();
        {
            let s = FileStore::open(t.path()).unwrap();
            for mac in ["m:0", "m:1", "m:2"] {
                s.save_machine(&Machine::new(mac, 1)).unwrap();
            }
        }
        // as a server before per-machine memberships wrote it
        let file = t.path().join("lifecycle/rollouts/lab.json");
        std::fs::write(
            &file,
            r#"{
  "plan": {"channel": "lab", "version": "2.0.0", "max_failures": 0, "waves": [
    {"name": "canary", "members": {"groups": ["canary"]}, "soak_secs": 300},
    {"name": "rest", "members": {"percent": 100}, "soak_secs": 0}]},
  "started": 10,
  "opened": [10],
  "paused": {"at": 50, "wave": 0, "reason": "1 machine(s) of wave canary failed 2.0.0 (m:0), more than the 0 allowed"},
  "resumed": null,
  "members": {
    "m:0": {"wave": 0, "outcome": {"outcome": "failed", "at": 50, "reason": "cairn-app.service failed"}},
    "m:1": {"wave": 0, "outcome": {"outcome": "offered", "at": 20}},
    "m:9": {"wave": 0, "outcome": {"outcome": "healthy", "at": 30}}
  }
}"#,
        )
        .unwrap();
        // read without the store (explain): already as the server will see it
        let p = store::peek(t.path(), "m:0").unwrap();
        assert!(p.unreadable.is_empty(), "{:?}", p.unreadable);
        let m = p.machine.unwrap();
        assert!(matches!(
            m.member_of(&p.rollouts[0]).unwrap().outcome,
            rollout::Outcome::Failed { .. }
        ));
        assert!(std::fs::read_to_string(&file).unwrap().contains("\"m:1\""));
        for round in 0..2 {
            let mut l = open(t.path());
            let r = l.rollout("lab").unwrap();
            // paused until the resume of round 0
            assert_eq!(r.paused.is_some(), round == 0);
            assert!(r.legacy_members.is_empty());
            let s = r.status();
            // m:9 netbooted nowhere: no record to keep it in
            assert_eq!((s[0].offered, s[0].healthy, s[0].failures), (2, 0, 1));
            assert_eq!(
                s[0].failed,
                [("m:0".to_string(), "cairn-app.service failed".to_string())]
            );
            let on_disk = std::fs::read_to_string(&file).unwrap();
            assert!(
                !on_disk.contains("m:1") && !on_disk.contains("m:9"),
                "{round}: {on_disk}"
            );
            assert!(
                std::fs::read_to_string(t.path().join("lifecycle/machines/m-1.json"))
                    .unwrap()
                    .contains("\"rollouts\"")
            );
            // the failed machine is still held; after a resume the offered one keeps its wave
            let cand = |mac| Candidate {
                mac,
                seed: 1,
                group: Some("web"),
            };
            assert!(matches!(
                l.offer("lab", &cand("m:0"), 100).unwrap(),
                Some(Decision::Hold { reason }) if reason.contains("failed on this machine")
            ));
            if round == 0 {
                l.resume_rollout("lab", 100).unwrap();
                assert_eq!(
                    l.offer("lab", &cand("m:1"), 100).unwrap(),
                    Some(Decision::Offer { wave: 0 })
                );
            }
        }
    }

    /// A store that counts what it is asked to write.
    #[derive(Debug)]
    struct Counting {
        files: FileStore,
        rollout_writes: std::sync::Mutex<Vec<usize>>,
    }

    impl Store for Counting {
        fn load(&self) -> Result<store::Loaded, StoreError> {
            self.files.load()
        }
        fn save_machine(&self, m: &Machine) -> Result<(), StoreError> {
            self.files.save_machine(m)
        }
        fn remove_machine(&self, mac: &str) -> Result<(), StoreError> {
            self.files.remove_machine(mac)
        }
        fn save_rollout(&self, r: &Rollout) -> Result<(), StoreError> {
            let n = serde_json::to_vec_pretty(r).unwrap().len();
            self.rollout_writes.lock().unwrap().push(n);
            self.files.save_rollout(r)
        }
        fn remove_rollout(&self, channel: &str) -> Result<(), StoreError> {
            self.files.remove_rollout(channel)
        }
    }

    #[test]
    fn a_report_writes_the_rollout_only_when_it_changed_and_it_stays_small() {
        let t = tempfile::tempdir().unwrap();
        let store = Arc::new(Counting {
            files: FileStore::open(t.path()).unwrap(),
            rollout_writes: Default::default(),
        });
        let (mut l, _) = Lifecycle::open(store.clone(), Limits::default()).unwrap();
        let mut plan = two_waves(1000);
        plan.waves.remove(0);
        l.apply_plan(plan, 0).unwrap();
        let writes = || store.rollout_writes.lock().unwrap().clone();
        let macs: Vec<String> = (0..300).map(|i| format!("m:{i}")).collect();
        for (i, mac) in macs.iter().enumerate() {
            l.seen(mac, 1).unwrap();
            let healthy = Event::Healthy {
                version: "2.0.0".into(),
            };
            let before = writes().len();
            l.report(&rep(mac, i as u8, healthy.clone()), None, 2)
                .unwrap();
            assert_eq!(writes().len(), before + 1, "{mac}: counted");
            // the same verdict again, a boot, another version: the rollout is as it was
            l.report(&rep(mac, i as u8, healthy), None, 3).unwrap();
            l.report(
                &rep(
                    mac,
                    i as u8,
                    Event::Healthy {
                        version: "1.0.0".into(),
                    },
                ),
                None,
                3,
            )
            .unwrap();
            assert_eq!(writes().len(), before + 1, "{mac}: written again");
        }
        let w = writes();
        // the rollout's record is the same size for 1 machine as for 300
        // (the counters' digits aside)
        assert!(w.iter().max().unwrap() - w[1] < 16, "{w:?}");
        assert!(*w.iter().max().unwrap() < 2048, "{w:?}");
        let s = l.rollout("lab").unwrap().status();
        assert_eq!((s[0].offered, s[0].healthy), (300, 300));
        drop(l);
        drop(store);
        let l = open(t.path());
        assert_eq!(l.rollout("lab").unwrap().status()[0].healthy, 300);
        assert!(l
            .machines()
            .all(|m| m.member_of(l.rollout("lab").unwrap()).is_some()));
    }

    #[test]
    fn counts_are_made_from_the_machines_at_load_and_edits_drop_members_of_lost_waves() {
        let t = tempfile::tempdir().unwrap();
        let mut l = open(t.path());
        let mut plan = two_waves(5);
        plan.waves[0].soak_secs = 0;
        l.apply_plan(plan.clone(), 0).unwrap();
        for (mac, group) in [("m:a", "canary"), ("m:b", "web"), ("m:c", "web")] {
            l.seen(mac, 0).unwrap();
            let c = Candidate {
                mac,
                seed: 1,
                group: Some(group),
            };
            assert!(matches!(
                l.offer("lab", &c, 1).unwrap(),
                Some(Decision::Offer { .. })
            ));
        }
        let stale = l.rollout("lab").unwrap().clone();
        l.report(
            &rep(
                "m:b",
                2,
                Event::Unhealthy {
                    version: "2.0.0".into(),
                    reason: "x".into(),
                },
            ),
            Some("web"),
            2,
        )
        .unwrap();
        // a crash after the machine's save, before its rollout's
        l.store.save_rollout(&stale).unwrap();
        drop(l);
        let mut l = open(t.path());
        let s = l.rollout("lab").unwrap().status();
        assert_eq!((s[0].offered, s[1].offered, s[1].failures), (1, 2, 1));
        // the plan loses its second wave: its members leave the machines' records
        let mut one = plan.clone();
        one.waves.truncate(1);
        assert_eq!(l.apply_plan(one, 3).unwrap(), PlanChange::Edited);
        assert!(l.machine("m:b").unwrap().rollouts.is_empty());
        assert!(!l.machine("m:a").unwrap().rollouts.is_empty());
        drop(l);
        let peeked = store::peek(t.path(), "m:b").unwrap();
        assert!(peeked.machine.unwrap().rollouts.is_empty());
        // and gets it back: they are newcomers, nothing counted twice
        let mut l = open(t.path());
        assert_eq!(l.apply_plan(plan, 4).unwrap(), PlanChange::Edited);
        let s = l.rollout("lab").unwrap().status();
        assert_eq!((s[0].offered, s[1].offered), (1, 0));
        let c = Candidate {
            mac: "m:b",
            seed: 1,
            group: Some("web"),
        };
        assert_eq!(
            l.offer("lab", &c, 5).unwrap(),
            Some(Decision::Offer { wave: 1 })
        );
        assert_eq!(l.rollout("lab").unwrap().status()[1].offered, 1);
        // a new version: the memberships of the old one are ignored, and
        // dropped at the machine's next save
        let mut v3 = two_waves(0);
        v3.version = "3.0.0".into();
        l.apply_plan(v3, 6).unwrap();
        assert_eq!(l.rollout("lab").unwrap().status()[0].offered, 0);
        assert_eq!(l.machine("m:a").unwrap().rollouts.len(), 1);
        l.seen("m:a", 7).unwrap();
        l.install_boot("m:a", 7).unwrap();
        assert!(l.machine("m:a").unwrap().rollouts.is_empty());
    }
}
