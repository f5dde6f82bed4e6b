//! The update state machine and its file on the state partition (written
//! atomically). Phases: idle, downloading (the inactive slot is being
//! written and has no entry), staged (its entry is written, waiting for a
//! reboot), trial (booted into it, not yet healthy), committed, rolled
//! back (with the reason). `State::apply` is the only way to change the
//! phase and refuses the transitions that would be unsafe.
//!
//! Two records outlive the phases: the versions that failed on this
//! machine (rolled back; the last [`DENY_LIMIT`] of them), never installed
//! again, and the newest version this machine ever accepted for
//! installation, below which no manifest is taken (a replayed older one).

use std::fs;
use std::path::Path;

use cairn_formats::channel::timestamp::rfc3339;
use cairn_formats::channel::version;
use serde::{Deserialize, Serialize};

use crate::error::{Result, UpdateError};
use crate::fsutil::{now, write_atomic};
use crate::slot::Slot;

/// Where the agent is in an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Idle,
    /// `slot` (the inactive one) is being written with `version`; its
    /// entry has been removed.
    Downloading {
        version: String,
        slot: Slot,
    },
    /// `slot` holds `version` and has a counted entry; `boot_id` is the
    /// boot that staged it (a different boot id means we rebooted).
    Staged {
        version: String,
        slot: Slot,
        boot_id: String,
    },
    /// Booted into `slot`; the health gate has not passed yet. `health`
    /// is the last gate failure, if any.
    Trial {
        version: String,
        slot: Slot,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        health: Option<String>,
    },
    /// `version` in `slot` passed the health gate.
    Committed {
        version: String,
        slot: Slot,
    },
    /// `version` in `slot` was given up; the machine runs the other slot.
    RolledBack {
        version: String,
        slot: Slot,
        reason: String,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Downloading { .. } => "downloading",
            Phase::Staged { .. } => "staged",
            Phase::Trial { .. } => "trial",
            Phase::Committed { .. } => "committed",
            Phase::RolledBack { .. } => "rolled_back",
        }
    }
}

/// A refused or failed update attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub reason: String,
}

/// How many failed versions the deny-list keeps (the oldest go first).
pub const DENY_LIMIT: usize = 64;

/// A version that failed on this machine and is not installed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denied {
    pub version: String,
    /// When it was given up.
    pub at: String,
    pub reason: String,
}

/// The newest version this machine accepted for installation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub version: String,
    pub at: String,
}

/// The state file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(flatten)]
    pub phase: Phase,
    /// When the phase last changed.
    #[serde(default)]
    pub since: String,
    /// The last refused or failed attempt (kept until an update is staged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// Versions that rolled back here, oldest first, at most
    /// [`DENY_LIMIT`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<Denied>,
    /// The newest version ever accepted here (anti-replay floor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_accepted: Option<Accepted>,
    /// The rolled-back version whose rollback the install server was told
    /// of (`cairn-update health` on a machine `cairn serve` installed),
    /// so it is told once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_reported: Option<String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            phase: Phase::Idle,
            since: String::new(),
            last_failure: None,
            denied: Vec::new(),
            newest_accepted: None,
            rollback_reported: None,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start writing `version` into the inactive `slot`.
    Download { version: String, slot: Slot },
    /// An attempt was refused or failed (before or while writing).
    Refused {
        version: Option<String>,
        reason: String,
    },
    /// The slot and its entry are written.
    Staged {
        version: String,
        slot: Slot,
        boot_id: String,
    },
    /// Seen at boot (and by every command): which slot runs, in which
    /// boot, and what the ESP says about the other slot's entry (for the
    /// rollback reason), e.g. "entry cairn-2+0-3.conf: 0 tries left".
    Booted {
        running: Slot,
        boot_id: String,
        entry_note: Option<String>,
    },
    /// The health gate passed on `running`.
    HealthPassed { running: Slot },
    /// The health gate failed on `running`.
    HealthFailed { running: Slot, reason: String },
    /// The install server was told that `version` rolled back.
    RollbackReported { version: String },
}

fn refuse(why: String) -> UpdateError {
    UpdateError::Transition(why)
}

impl State {
    /// The next state after `event`, or the reason the transition is not
    /// allowed. `now` stamps `since`/`at`.
    pub fn apply(&self, event: Event, now: i64) -> Result<State> {
        let mut next = self.clone();
        let stamp = rfc3339(now);
        let phase = match (&self.phase, event) {
            (Phase::RolledBack { version: v, .. }, Event::RollbackReported { version })
                if *v == version =>
            {
                next.rollback_reported = Some(version);
                return Ok(next);
            }
            (_, Event::RollbackReported { .. }) => return Ok(self.clone()),
            (Phase::Trial { slot, .. }, Event::Download { .. }) => {
                return Err(refuse(format!(
                    "slot {slot} is on trial: the other slot is the fallback and is not overwritten until the trial is committed or rolled back"
                )))
            }
            (_, Event::Download { version, slot }) => {
                let newer = next.newest_accepted.as_ref().is_none_or(|a| {
                    version::compare(&version, &a.version).is_gt()
                });
                if newer {
                    next.newest_accepted = Some(Accepted {
                        version: version.clone(),
                        at: stamp.clone(),
                    });
                }
                Phase::Downloading { version, slot }
            }
            (_, Event::Refused { version, reason }) => {
                next.last_failure = Some(Failure {
                    at: stamp.clone(),
                    version,
                    reason,
                });
                match &self.phase {
                    // the slot's entry is gone and its bytes are partial
                    Phase::Downloading { .. } => Phase::Idle,
                    p => p.clone(),
                }
            }
            (
                Phase::Downloading {
                    version: dv,
                    slot: ds,
                },
                Event::Staged {
                    version,
                    slot,
                    boot_id,
                },
            ) if *dv == version && *ds == slot => {
                next.last_failure = None;
                Phase::Staged {
                    version,
                    slot,
                    boot_id,
                }
            }
            (p, Event::Staged { version, slot, .. }) => {
                return Err(refuse(format!(
                    "cannot stage {version} in slot {slot} from phase {} (only the download of that version into that slot can be staged)",
                    p.name()
                )))
            }
            (
                Phase::Staged {
                    version,
                    slot,
                    boot_id: staged_in,
                },
                Event::Booted {
                    running,
                    boot_id,
                    entry_note,
                },
            ) => {
                if *staged_in == boot_id {
                    return Ok(self.clone());
                } else if running == *slot {
                    Phase::Trial {
                        version: version.clone(),
                        slot: *slot,
                        health: None,
                    }
                } else {
                    Phase::RolledBack {
                        version: version.clone(),
                        slot: *slot,
                        reason: format!(
                            "after the reboot slot {running} runs instead of slot {slot}: systemd-boot fell back (version {version} did not boot within its tries or its entry was marked bad){}",
                            entry_note.map(|n| format!("; {n}")).unwrap_or_default()
                        ),
                    }
                }
            }
            (
                Phase::Trial {
                    version,
                    slot,
                    health,
                },
                Event::Booted {
                    running,
                    entry_note,
                    ..
                },
            ) => {
                if running == *slot {
                    return Ok(self.clone());
                }
                let note = entry_note.map(|n| format!("; {n}")).unwrap_or_default();
                Phase::RolledBack {
                    version: version.clone(),
                    slot: *slot,
                    reason: match health {
                        Some(h) => format!("health gate failed on slot {slot}: {h}{note}"),
                        None => format!(
                            "slot {slot} booted but never passed the health gate (hang, crash or reset); slot {running} runs again{note}"
                        ),
                    },
                }
            }
            (_, Event::Booted { .. }) => return Ok(self.clone()),
            (Phase::Trial { version, slot, .. }, Event::HealthPassed { running }) => {
                if running != *slot {
                    return Err(refuse(format!(
                        "health passed on slot {running}, but slot {slot} is on trial"
                    )));
                }
                Phase::Committed {
                    version: version.clone(),
                    slot: *slot,
                }
            }
            (_, Event::HealthPassed { .. }) => return Ok(self.clone()),
            (Phase::Trial { version, slot, .. }, Event::HealthFailed { running, reason })
                if running == *slot =>
            {
                Phase::Trial {
                    version: version.clone(),
                    slot: *slot,
                    health: Some(reason),
                }
            }
            (_, Event::HealthFailed { .. }) => return Ok(self.clone()),
        };
        if let Phase::RolledBack {
            version, reason, ..
        } = &phase
        {
            if !matches!(&self.phase, Phase::RolledBack { version: v, .. } if v == version) {
                next.deny(version, reason, &stamp);
            }
        }
        if phase != self.phase {
            next.since = stamp;
        }
        next.phase = phase;
        Ok(next)
    }

    /// Adds `version` to the deny-list (moving it to the end if it was
    /// there), dropping the oldest entries beyond [`DENY_LIMIT`].
    fn deny(&mut self, version: &str, reason: &str, at: &str) {
        self.denied.retain(|d| d.version != version);
        self.denied.push(Denied {
            version: version.to_string(),
            at: at.to_string(),
            reason: reason.to_string(),
        });
        let excess = self.denied.len().saturating_sub(DENY_LIMIT);
        self.denied.drain(..excess);
    }

    /// Why `version` must not be installed here: it failed on this machine
    /// (the deny-list, or the current rolled-back phase of a state file
    /// written before the deny-list existed).
    pub fn denied(&self, version: &str) -> Option<Denied> {
        if let Some(d) = self.denied.iter().rev().find(|d| d.version == version) {
            return Some(d.clone());
        }
        match &self.phase {
            Phase::RolledBack {
                version: v, reason, ..
            } if v == version => Some(Denied {
                version: v.clone(),
                at: self.since.clone(),
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    /// The newest version accepted here, when `version` is older than it
    /// (a replayed or withdrawn manifest).
    pub fn replayed(&self, version: &str) -> Option<&Accepted> {
        self.newest_accepted
            .as_ref()
            .filter(|a| version::compare(version, &a.version).is_lt())
    }

    /// Reads the state file; a missing file is `Idle`.
    pub fn load(path: &Path) -> Result<State> {
        match fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                UpdateError::Refused(format!(
                    "{}: line {}, column {}: {e}",
                    path.display(),
                    e.line(),
                    e.column()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(UpdateError::Io {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    /// Writes the state file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(d) = path.parent() {
            fs::create_dir_all(d).map_err(UpdateError::io(d))?;
        }
        let mut b = serde_json::to_vec_pretty(self).expect("state serialises");
        b.push(b'\n');
        write_atomic(path, &b)
    }
}

/// Loads, applies `event` and saves (only when something changed).
pub fn transition(path: &Path, event: Event) -> Result<State> {
    let s = State::load(path)?;
    let n = s.apply(event, now())?;
    if n != s {
        n.save(path)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_764_208_000;

    fn st(phase: Phase) -> State {
        State {
            phase,
            ..State::default()
        }
    }

    fn dl(v: &str, s: Slot) -> Event {
        Event::Download {
            version: v.into(),
            slot: s,
        }
    }

    fn staged(v: &str, s: Slot, b: &str) -> Event {
        Event::Staged {
            version: v.into(),
            slot: s,
            boot_id: b.into(),
        }
    }

    fn booted(s: Slot, b: &str) -> Event {
        Event::Booted {
            running: s,
            boot_id: b.into(),
            entry_note: None,
        }
    }

    #[test]
    fn happy_path() {
        let s = State::default();
        let s = s.apply(dl("2", Slot::B), T).unwrap();
        assert_eq!(s.phase.name(), "downloading");
        assert_eq!(s.since, rfc3339(T));
        let s = s.apply(staged("2", Slot::B, "boot1"), T + 1).unwrap();
        assert_eq!(s.phase.name(), "staged");
        // same boot: nothing happens
        assert_eq!(s.apply(booted(Slot::A, "boot1"), T + 2).unwrap(), s);
        let s = s.apply(booted(Slot::B, "boot2"), T + 3).unwrap();
        assert_eq!(
            s.phase,
            Phase::Trial {
                version: "2".into(),
                slot: Slot::B,
                health: None
            }
        );
        // another boot of the same trial (a try) stays in trial
        assert_eq!(s.apply(booted(Slot::B, "boot3"), T + 4).unwrap(), s);
        let s = s
            .apply(Event::HealthPassed { running: Slot::B }, T + 5)
            .unwrap();
        assert_eq!(
            s.phase,
            Phase::Committed {
                version: "2".into(),
                slot: Slot::B
            }
        );
        // committed: boots and health passes change nothing
        assert_eq!(s.apply(booted(Slot::B, "x"), T + 6).unwrap(), s);
        assert_eq!(
            s.apply(Event::HealthPassed { running: Slot::B }, T + 6)
                .unwrap(),
            s
        );
        // and the next update goes back into slot a
        let s = s.apply(dl("3", Slot::A), T + 7).unwrap();
        assert_eq!(s.phase.name(), "downloading");
    }

    #[test]
    fn rollbacks() {
        let s = st(Phase::Staged {
            version: "3".into(),
            slot: Slot::A,
            boot_id: "b1".into(),
        });
        let r = s.apply(booted(Slot::B, "b2"), T).unwrap();
        match &r.phase {
            Phase::RolledBack {
                version,
                slot,
                reason,
            } => {
                assert_eq!((version.as_str(), *slot), ("3", Slot::A));
                assert!(reason.contains("slot b runs instead of slot a"), "{reason}");
            }
            p => panic!("{p:?}"),
        }
        let t = st(Phase::Trial {
            version: "3".into(),
            slot: Slot::A,
            health: None,
        });
        let t = t
            .apply(
                Event::HealthFailed {
                    running: Slot::A,
                    reason: "failed units: etcd.service".into(),
                },
                T,
            )
            .unwrap();
        assert_eq!(t.phase.name(), "trial");
        let r = t.apply(booted(Slot::B, "b3"), T).unwrap();
        match &r.phase {
            Phase::RolledBack { reason, .. } => {
                assert!(
                    reason.contains("health gate failed on slot a: failed units: etcd.service"),
                    "{reason}"
                )
            }
            p => panic!("{p:?}"),
        }
        let t = st(Phase::Trial {
            version: "3".into(),
            slot: Slot::A,
            health: None,
        });
        let r = t.apply(booted(Slot::B, "b3"), T).unwrap();
        assert!(
            matches!(&r.phase, Phase::RolledBack { reason, .. } if reason.contains("never passed"))
        );
        // after a rollback a newer version may be tried again
        assert_eq!(
            r.apply(dl("4", Slot::A), T).unwrap().phase.name(),
            "downloading"
        );
    }

    #[test]
    fn refusals_are_recorded_without_losing_the_phase() {
        let c = st(Phase::Committed {
            version: "2".into(),
            slot: Slot::B,
        });
        let r = c
            .apply(
                Event::Refused {
                    version: Some("3".into()),
                    reason: "bad signature".into(),
                },
                T,
            )
            .unwrap();
        assert_eq!(r.phase, c.phase);
        assert_eq!(r.last_failure.as_ref().unwrap().reason, "bad signature");
        // a refusal while writing leaves the slot without entry: idle
        let d = st(Phase::Downloading {
            version: "3".into(),
            slot: Slot::A,
        });
        let r = d
            .apply(
                Event::Refused {
                    version: Some("3".into()),
                    reason: "hash mismatch".into(),
                },
                T,
            )
            .unwrap();
        assert_eq!(r.phase, Phase::Idle);
        // staging clears the failure
        let s = r
            .apply(dl("3", Slot::A), T)
            .unwrap()
            .apply(staged("3", Slot::A, "b"), T)
            .unwrap();
        assert_eq!(s.last_failure, None);
    }

    #[test]
    fn refused_transitions() {
        // staging without a download, or another version/slot than downloaded
        for (from, ev) in [
            (Phase::Idle, staged("2", Slot::B, "b")),
            (
                Phase::Committed {
                    version: "2".into(),
                    slot: Slot::B,
                },
                staged("2", Slot::B, "b"),
            ),
            (
                Phase::Downloading {
                    version: "2".into(),
                    slot: Slot::B,
                },
                staged("3", Slot::B, "b"),
            ),
            (
                Phase::Downloading {
                    version: "2".into(),
                    slot: Slot::B,
                },
                staged("2", Slot::A, "b"),
            ),
            // overwriting the fallback slot during a trial
            (
                Phase::Trial {
                    version: "2".into(),
                    slot: Slot::B,
                    health: None,
                },
                dl("3", Slot::A),
            ),
            // health of the wrong slot cannot commit a trial
            (
                Phase::Trial {
                    version: "2".into(),
                    slot: Slot::B,
                    health: None,
                },
                Event::HealthPassed { running: Slot::A },
            ),
        ] {
            let e = st(from.clone()).apply(ev.clone(), T).unwrap_err();
            assert!(
                matches!(e, UpdateError::Transition(_)),
                "{from:?} {ev:?}: {e}"
            );
        }
        // health passing outside a trial commits nothing
        for p in [
            Phase::Idle,
            Phase::Staged {
                version: "2".into(),
                slot: Slot::B,
                boot_id: "b".into(),
            },
        ] {
            let s = st(p);
            assert_eq!(
                s.apply(Event::HealthPassed { running: Slot::B }, T)
                    .unwrap(),
                s
            );
        }
    }

    fn rolled_back_from_staged(s: State, v: &str, boot: &str) -> State {
        let s = s
            .apply(dl(v, Slot::B), T)
            .unwrap()
            .apply(staged(v, Slot::B, "b0"), T)
            .unwrap();
        // systemd-boot fell back: slot a runs again
        s.apply(booted(Slot::A, boot), T + 1).unwrap()
    }

    #[test]
    fn a_rolled_back_version_stays_denied_after_later_failures() {
        let s = rolled_back_from_staged(State::default(), "2", "b1");
        assert_eq!(s.phase.name(), "rolled_back");
        assert_eq!(s.denied.len(), 1);
        assert!(s
            .denied("2")
            .unwrap()
            .reason
            .contains("slot a runs instead"));
        // a later attempt at 3 fails while writing: the phase goes back to
        // idle, and 2 is still denied
        let s = s
            .apply(dl("3", Slot::B), T + 2)
            .unwrap()
            .apply(
                Event::Refused {
                    version: Some("3".into()),
                    reason: "hash mismatch".into(),
                },
                T + 3,
            )
            .unwrap();
        assert_eq!(s.phase, Phase::Idle);
        assert!(s.denied("2").is_some());
        assert!(
            s.denied("3").is_none(),
            "a failed download is not a failed version"
        );
        // and the list survives the file
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("state.json");
        s.save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap().denied("2"), s.denied("2"));
        // observing the same rollback again adds nothing
        let again = s.apply(booted(Slot::A, "b9"), T + 4).unwrap();
        assert_eq!(again.denied.len(), 1);
    }

    #[test]
    fn the_deny_list_is_bounded_and_keeps_the_newest() {
        let mut s = State::default();
        for i in 0..(DENY_LIMIT + 10) {
            s = rolled_back_from_staged(s, &format!("{}", i + 2), &format!("boot{i}"));
        }
        assert_eq!(s.denied.len(), DENY_LIMIT);
        assert!(s.denied("2").is_none(), "the oldest went first");
        assert!(s.denied(&format!("{}", DENY_LIMIT + 11)).is_some());
        // the same version failing twice is listed once, as the newest
        let s = rolled_back_from_staged(s, "20", "again");
        assert_eq!(s.denied.len(), DENY_LIMIT);
        assert_eq!(s.denied.last().unwrap().version, "20");
        assert_eq!(s.denied.iter().filter(|d| d.version == "20").count(), 1);
    }

    #[test]
    fn the_newest_accepted_version_only_grows() {
        let s = State::default().apply(dl("3", Slot::B), T).unwrap();
        assert_eq!(s.newest_accepted.as_ref().unwrap().version, "3");
        assert_eq!(s.replayed("2").unwrap().version, "3");
        assert!(s.replayed("3").is_none(), "the same version may resume");
        assert!(s.replayed("4").is_none());
        // an older download (as the old agent would have started) does not
        // lower it
        let s = s.apply(dl("2", Slot::B), T + 1).unwrap();
        assert_eq!(s.newest_accepted.as_ref().unwrap().version, "3");
        let s = s.apply(dl("10", Slot::B), T + 2).unwrap();
        assert_eq!(s.newest_accepted.as_ref().unwrap().version, "10");
    }

    #[test]
    fn a_state_file_of_the_old_agent_still_loads_and_denies_its_rollback() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("state.json");
        fs::write(
            &p,
            r#"{"phase": "rolled_back", "version": "2", "slot": "b", "reason": "why", "since": "2025-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let s = State::load(&p).unwrap();
        assert!(s.denied.is_empty() && s.newest_accepted.is_none());
        let d = s.denied("2").unwrap();
        assert_eq!(
            (d.reason.as_str(), d.at.as_str()),
            ("why", "2025-01-01T00:00:00Z")
        );
    }

    #[test]
    fn file_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("update/state.json");
        assert_eq!(State::load(&p).unwrap(), State::default());
        let s = transition(&p, dl("2", Slot::B)).unwrap();
        assert_eq!(State::load(&p).unwrap(), s);
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"phase\": \"downloading\""), "{text}");
        let s = st(Phase::RolledBack {
            version: "3".into(),
            slot: Slot::A,
            reason: "why".into(),
        });
        s.save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap(), s);
        fs::write(&p, "{\"phase\": \"flying\"}").unwrap();
        let e = State::load(&p).unwrap_err().to_string();
        assert!(e.contains("state.json: line 1"), "{e}");
    }
}
