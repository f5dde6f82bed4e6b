//! One machine as the server records it: its phase from first sight to
//! running a version (seen, installing, installed, running, refused,
//! failed), the install-once rule that answers a netboot, the last health
//! verdict, its place in each rollout, and a bounded history of what
//! happened.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use cairn_formats::lifecycle::{BootSource, Event, Report};
use serde::{Deserialize, Serialize};

use crate::diskless::Diskless;
use crate::rollout::{Member, Rollout};

/// How many times the installer is served to a machine that never
/// reports a finished install before the server gives up on it.
pub const MAX_INSTALL_ATTEMPTS: u32 = 3;
/// How many history lines a machine keeps.
pub const HISTORY: usize = 32;

/// Where a machine is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Phase {
    /// Netbooted; nothing installed by this server yet.
    Seen,
    /// The installer was served (`attempt` of [`MAX_INSTALL_ATTEMPTS`]);
    /// `disk` once the installer said which.
    Installing {
        attempt: u32,
        #[serde(default)]
        disk: Option<String>,
        since: i64,
    },
    /// The installer wrote the image; the machine boots from its disk.
    Installed {
        disk: String,
        image: String,
        version: String,
        at: i64,
    },
    /// The machine came up and said what it runs.
    Running {
        image: String,
        version: String,
        source: BootSource,
        at: i64,
    },
    /// The installer would not write (a disk with data, no disk that fits):
    /// no install until an operator says so.
    InstallRefused { reason: String, at: i64 },
    /// Installs that did not finish.
    InstallFailed {
        reason: String,
        attempts: u32,
        at: i64,
    },
}

impl Phase {
    /// The phase's name, as the status page and `--explain` print it.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Seen => "seen",
            Phase::Installing { .. } => "installing",
            Phase::Installed { .. } => "installed",
            Phase::Running { .. } => "running",
            Phase::InstallRefused { .. } => "install-refused",
            Phase::InstallFailed { .. } => "install-failed",
        }
    }

    /// One line: the name and what it carries.
    pub fn describe(&self) -> String {
        match self {
            Phase::Seen => "seen".into(),
            Phase::Installing { attempt, disk, .. } => format!(
                "installing (attempt {attempt} of {MAX_INSTALL_ATTEMPTS}{})",
                disk.as_deref()
                    .map(|d| format!(", disk {d}"))
                    .unwrap_or_default()
            ),
            Phase::Installed {
                disk,
                image,
                version,
                ..
            } => format!("installed {image} {version} on {disk}"),
            Phase::Running {
                image,
                version,
                source,
                ..
            } => format!(
                "running {image} {version} from {}",
                match source {
                    BootSource::Ram => "the network".to_string(),
                    s => format!("slot {}", s.as_str()),
                }
            ),
            Phase::InstallRefused { reason, .. } => format!("install refused: {reason}"),
            Phase::InstallFailed {
                reason, attempts, ..
            } => format!("install failed after {attempts} attempt(s): {reason}"),
        }
    }

    /// Whether a disk install by this server is done (the machine boots
    /// from its disk from now on).
    pub fn installed(&self) -> bool {
        match self {
            Phase::Installed { .. } => true,
            Phase::Running { source, .. } => *source != BootSource::Ram,
            _ => false,
        }
    }
}

/// The last health verdict a machine reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub version: String,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub at: i64,
}

/// One line of a machine's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    pub at: i64,
    pub what: String,
}

/// What the server answers a netboot of a machine whose profile installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallAction {
    /// Serve the installer.
    Install { attempt: u32, allow_overwrite: bool },
    /// Boot from the local disk (the install is done).
    LocalDisk,
    /// Neither: say why on the console and boot nothing from the network.
    Refuse { reason: String },
}

/// A machine's rollout memberships by channel: a JSON object in its
/// record, a small vector in memory (most machines are in one rollout; a
/// map's node would be ten times the size of its one entry, for every
/// machine).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Memberships(Vec<(String, Member)>);

impl Memberships {
    pub fn get(&self, channel: &str) -> Option<&Member> {
        self.0.iter().find(|(c, _)| c == channel).map(|(_, m)| m)
    }

    /// Sets the membership of `channel`'s rollout.
    pub fn insert(&mut self, channel: String, m: Member) {
        match self.0.iter_mut().find(|(c, _)| *c == channel) {
            Some((_, old)) => *old = m,
            None => {
                self.0.push((channel, m));
                self.0.sort_by(|a, b| a.0.cmp(&b.0));
            }
        }
    }

    pub fn remove(&mut self, channel: &str) -> Option<Member> {
        let i = self.0.iter().position(|(c, _)| c == channel)?;
        Some(self.0.remove(i).1)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str, &Member) -> bool) {
        self.0.retain(|(c, m)| keep(c, m));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (channel, membership), by channel.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Member)> {
        self.0.iter().map(|(c, m)| (c.as_str(), m))
    }
}

impl fmt::Debug for Memberships {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Memberships {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Memberships {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Memberships, D::Error> {
        let map = BTreeMap::<String, Member>::deserialize(d)?;
        Ok(Memberships(map.into_iter().collect()))
    }
}

/// Everything the server keeps about one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Lower case, colons.
    pub mac: String,
    #[serde(default)]
    pub machine_id: Option<String>,
    pub phase: Phase,
    pub first_seen: i64,
    pub last_seen: i64,
    /// The operator allowed the next install to overwrite a disk that holds
    /// data (cleared once an install finishes).
    #[serde(default)]
    pub allow_overwrite: bool,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub diskless: Diskless,
    #[serde(default)]
    pub history: VecDeque<HistoryEntry>,
    /// Its membership of each rollout, by channel (one that is no longer
    /// a current rollout's is ignored, see [`Member::of`]).
    #[serde(default, skip_serializing_if = "Memberships::is_empty")]
    pub rollouts: Memberships,
}

impl Machine {
    /// A machine seen for the first time at `now`.
    pub fn new(mac: &str, now: i64) -> Machine {
        let mut m = Machine {
            mac: mac.to_owned(),
            machine_id: None,
            phase: Phase::Seen,
            first_seen: now,
            last_seen: now,
            allow_overwrite: false,
            health: None,
            diskless: Diskless::default(),
            history: VecDeque::new(),
            rollouts: Memberships::default(),
        };
        m.note(now, "first seen");
        m
    }

    /// Its membership of `r`, if it has a current one.
    pub fn member_of(&self, r: &Rollout) -> Option<&Member> {
        self.rollouts.get(&r.plan.channel).filter(|m| m.of(r))
    }

    /// Drops the memberships that are no current rollout's (`current`
    /// gives the rollout of a channel); whether any was.
    pub fn drop_stale_memberships<'a>(
        &mut self,
        current: impl Fn(&str) -> Option<&'a Rollout>,
    ) -> bool {
        let before = self.rollouts.len();
        self.rollouts
            .retain(|channel, m| current(channel).is_some_and(|r| m.of(r)));
        self.rollouts.len() != before
    }

    /// Adds a history line, dropping the oldest beyond [`HISTORY`].
    pub fn note(&mut self, at: i64, what: impl Into<String>) {
        self.history.push_back(HistoryEntry {
            at,
            what: what.into(),
        });
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    fn set_phase(&mut self, phase: Phase, now: i64) {
        if phase != self.phase {
            let line = phase.describe();
            self.phase = phase;
            self.note(now, line);
        }
    }

    /// A netboot of this machine under a profile that installs to disk:
    /// the install-once rule. The installer is served until an install is
    /// reported finished, at most [`MAX_INSTALL_ATTEMPTS`] times in a row;
    /// from then on the machine boots from its disk. A refused install is
    /// not retried until [`Machine::reinstall`].
    pub fn on_install_boot(&mut self, now: i64) -> InstallAction {
        self.last_seen = now;
        let attempt = match &self.phase {
            p if p.installed() => return InstallAction::LocalDisk,
            Phase::InstallRefused { reason, .. } => {
                return InstallAction::Refuse {
                    reason: format!(
                        "install refused: {reason} (an operator can allow it: POST /lifecycle/reinstall?mac={}&overwrite=1 to cairn serve)",
                        self.mac
                    ),
                }
            }
            Phase::Installing { attempt, .. } | Phase::InstallFailed { attempts: attempt, .. }
                if *attempt >= MAX_INSTALL_ATTEMPTS =>
            {
                let reason = match &self.phase {
                    Phase::InstallFailed { reason, .. } => reason.clone(),
                    _ => format!(
                        "the installer was started {attempt} times and never reported a finished install"
                    ),
                };
                let attempts = *attempt;
                self.set_phase(
                    Phase::InstallFailed {
                        reason: reason.clone(),
                        attempts,
                        at: now,
                    },
                    now,
                );
                return InstallAction::Refuse {
                    reason: format!(
                        "install failed {attempts} times: {reason} (an operator's POST /lifecycle/reinstall?mac={} to cairn serve tries again)",
                        self.mac
                    ),
                };
            }
            Phase::Installing { attempt, .. } | Phase::InstallFailed { attempts: attempt, .. } => {
                attempt + 1
            }
            _ => 1,
        };
        self.set_phase(
            Phase::Installing {
                attempt,
                disk: None,
                since: now,
            },
            now,
        );
        InstallAction::Install {
            attempt,
            allow_overwrite: self.allow_overwrite,
        }
    }

    /// Operator: install again at the next netboot (`allow_overwrite`: even
    /// over a disk that holds data).
    pub fn reinstall(&mut self, allow_overwrite: bool, now: i64) {
        self.allow_overwrite = allow_overwrite;
        self.phase = Phase::Seen;
        self.note(
            now,
            if allow_overwrite {
                "operator: reinstall, overwriting the disk"
            } else {
                "operator: reinstall"
            },
        );
    }

    /// A report from the machine (already checked by
    /// [`Report::parse`]). The machine's word is recorded as it comes;
    /// the rollout and diskless decisions read [`Machine::health`] and the
    /// event itself.
    pub fn apply(&mut self, report: &Report, now: i64) {
        self.last_seen = now;
        if let Some(id) = &report.machine_id {
            if self.machine_id.as_deref() != Some(id) {
                self.machine_id = Some(id.clone());
            }
        }
        match &report.event {
            Event::InstallStarted { disk } => {
                let attempt = match &self.phase {
                    Phase::Installing { attempt, .. } => *attempt,
                    _ => 1,
                };
                self.set_phase(
                    Phase::Installing {
                        attempt,
                        disk: Some(disk.clone()),
                        since: now,
                    },
                    now,
                );
            }
            Event::InstallFinished {
                disk,
                image,
                version,
            } => {
                self.allow_overwrite = false;
                self.set_phase(
                    Phase::Installed {
                        disk: disk.clone(),
                        image: image.clone(),
                        version: version.clone(),
                        at: now,
                    },
                    now,
                );
            }
            Event::InstallRefused { disk, reason } => {
                let reason = match disk {
                    Some(d) => format!("{d}: {reason}"),
                    None => reason.clone(),
                };
                self.set_phase(Phase::InstallRefused { reason, at: now }, now);
            }
            Event::InstallFailed { reason } => {
                let attempts = match &self.phase {
                    Phase::Installing { attempt, .. } => *attempt,
                    Phase::InstallFailed { attempts, .. } => *attempts,
                    _ => 1,
                };
                self.set_phase(
                    Phase::InstallFailed {
                        reason: reason.clone(),
                        attempts,
                        at: now,
                    },
                    now,
                );
            }
            Event::Booted {
                image,
                version,
                source,
            } => {
                self.set_phase(
                    Phase::Running {
                        image: image.clone(),
                        version: version.clone(),
                        source: *source,
                        at: now,
                    },
                    now,
                );
            }
            Event::Healthy { version } => {
                self.health = Some(Health {
                    version: version.clone(),
                    healthy: true,
                    reason: String::new(),
                    at: now,
                });
                self.note(now, format!("{version}: healthy"));
            }
            Event::Unhealthy { version, reason } => {
                self.health = Some(Health {
                    version: version.clone(),
                    healthy: false,
                    reason: reason.clone(),
                    at: now,
                });
                self.note(now, format!("{version}: health gate failed: {reason}"));
            }
            Event::RolledBack {
                version,
                to_version,
                reason,
            } => {
                self.health = Some(Health {
                    version: version.clone(),
                    healthy: false,
                    reason: reason.clone(),
                    at: now,
                });
                self.note(
                    now,
                    format!("{version}: rolled back to {to_version}: {reason}"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "52:54:00:00:0a:01";

    fn report(event: Event) -> Report {
        Report {
            mac: MAC.into(),
            machine_id: None,
            event,
        }
    }

    fn finished() -> Event {
        Event::InstallFinished {
            disk: "/dev/vda".into(),
            image: "cairn-test".into(),
            version: "1.0.0".into(),
        }
    }

    #[test]
    fn installs_once_then_boots_from_disk() {
        let mut m = Machine::new(MAC, 100);
        assert_eq!(
            m.on_install_boot(100),
            InstallAction::Install {
                attempt: 1,
                allow_overwrite: false
            }
        );
        m.apply(
            &report(Event::InstallStarted {
                disk: "/dev/vda".into(),
            }),
            110,
        );
        assert_eq!(m.phase.name(), "installing");
        m.apply(&report(finished()), 150);
        assert!(m.phase.installed());
        // every later netboot: the local disk, never the installer
        for t in [200, 300, 400] {
            assert_eq!(m.on_install_boot(t), InstallAction::LocalDisk);
        }
        m.apply(
            &report(Event::Booted {
                image: "cairn-test".into(),
                version: "1.0.0".into(),
                source: BootSource::A,
            }),
            220,
        );
        assert_eq!(m.on_install_boot(500), InstallAction::LocalDisk);
        assert_eq!(m.phase.describe(), "running cairn-test 1.0.0 from slot a");
        let h: Vec<&str> = m.history.iter().map(|h| h.what.as_str()).collect();
        assert_eq!(
            h,
            [
                "first seen",
                "installing (attempt 1 of 3)",
                "installing (attempt 1 of 3, disk /dev/vda)",
                "installed cairn-test 1.0.0 on /dev/vda",
                "running cairn-test 1.0.0 from slot a"
            ]
        );
    }

    #[test]
    fn a_refused_install_is_not_retried_until_the_operator_says_so() {
        let mut m = Machine::new(MAC, 0);
        m.on_install_boot(0);
        m.apply(
            &report(Event::InstallRefused {
                disk: Some("/dev/vda".into()),
                reason: "holds a partition table with 2 partitions".into(),
            }),
            5,
        );
        let InstallAction::Refuse { reason } = m.on_install_boot(10) else {
            panic!("{:?}", m.phase)
        };
        assert!(
            reason.contains("/dev/vda: holds a partition table")
                && reason.contains("reinstall?mac=52:54:00:00:0a:01&overwrite=1"),
            "{reason}"
        );
        m.reinstall(true, 20);
        assert_eq!(
            m.on_install_boot(30),
            InstallAction::Install {
                attempt: 1,
                allow_overwrite: true
            }
        );
        m.apply(&report(finished()), 40);
        assert!(!m.allow_overwrite, "the override is for one install");
    }

    #[test]
    fn an_installer_that_never_finishes_is_given_up_after_three_tries() {
        let mut m = Machine::new(MAC, 0);
        for n in 1..=MAX_INSTALL_ATTEMPTS {
            assert_eq!(
                m.on_install_boot(i64::from(n)),
                InstallAction::Install {
                    attempt: n,
                    allow_overwrite: false
                }
            );
        }
        let InstallAction::Refuse { reason } = m.on_install_boot(10) else {
            panic!()
        };
        assert!(reason.contains("started 3 times"), "{reason}");
        assert_eq!(m.phase.name(), "install-failed");
        // and stays refused
        assert!(matches!(
            m.on_install_boot(11),
            InstallAction::Refuse { .. }
        ));
    }

    #[test]
    fn a_reported_failure_is_retried_within_the_bound() {
        let mut m = Machine::new(MAC, 0);
        m.on_install_boot(0);
        m.apply(
            &report(Event::InstallFailed {
                reason: "write error on /dev/vda".into(),
            }),
            1,
        );
        assert_eq!(
            m.on_install_boot(2),
            InstallAction::Install {
                attempt: 2,
                allow_overwrite: false
            }
        );
        m.apply(
            &report(Event::InstallFailed {
                reason: "write error".into(),
            }),
            3,
        );
        m.on_install_boot(4);
        m.apply(
            &report(Event::InstallFailed {
                reason: "write error again".into(),
            }),
            5,
        );
        let InstallAction::Refuse { reason } = m.on_install_boot(6) else {
            panic!("{:?}", m.phase)
        };
        assert!(reason.contains("write error again"), "{reason}");
    }

    #[test]
    fn a_diskless_machine_moving_to_an_install_profile_installs() {
        let mut m = Machine::new(MAC, 0);
        m.apply(
            &report(Event::Booted {
                image: "x".into(),
                version: "1".into(),
                source: BootSource::Ram,
            }),
            1,
        );
        assert!(matches!(
            m.on_install_boot(2),
            InstallAction::Install { attempt: 1, .. }
        ));
    }

    #[test]
    fn health_and_history_are_bounded_records() {
        let mut m = Machine::new(MAC, 0);
        for i in 0..100 {
            m.apply(
                &report(Event::Healthy {
                    version: format!("1.{i}"),
                }),
                i,
            );
        }
        assert_eq!(m.history.len(), HISTORY);
        assert_eq!(m.history.back().unwrap().what, "1.99: healthy");
        m.apply(
            &report(Event::RolledBack {
                version: "2.0".into(),
                to_version: "1.99".into(),
                reason: "cairn-broken.service failed".into(),
            }),
            200,
        );
        let h = m.health.clone().unwrap();
        assert!(!h.healthy && h.version == "2.0" && h.reason.contains("broken"));
        // a record survives JSON
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Machine>(&j).unwrap(), m);
    }
}
