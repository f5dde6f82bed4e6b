//! A/B for diskless machines, kept by the server: a diskless machine has
//! no inactive slot, so the server remembers the last image version that
//! reported healthy on it and treats a new one as a trial. The trial
//! passes when the machine reports healthy; it fails when the machine
//! reports the health gate failed, or netboots again without having
//! reported healthy (it crashed, hung and was reset, or never came up).
//! A failed version is not served to that machine again; it gets the last
//! good one, and the record says why.

use std::collections::BTreeMap;

use cairn_formats::lifecycle::Event;
use serde::{Deserialize, Serialize};

/// Versions remembered as bad per machine (the oldest is forgotten).
pub const MAX_BAD: usize = 16;
/// A netboot this soon after the trial's was served is the same boot
/// (iPXE asking again for its script), not a failed trial.
pub const SAME_BOOT_SECS: i64 = 20;

/// A version being tried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trial {
    pub version: String,
    /// When it was served.
    pub since: i64,
}

/// A version that failed here, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bad {
    pub reason: String,
    pub at: i64,
}

/// The server's A/B record of one diskless machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Diskless {
    /// The last version that reported healthy here.
    #[serde(default)]
    pub good: Option<String>,
    #[serde(default)]
    pub trial: Option<Trial>,
    #[serde(default)]
    pub bad: BTreeMap<String, Bad>,
}

/// Which image a diskless machine boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The version wanted; `trial` when it has not been healthy here yet.
    Wanted { version: String, trial: bool },
    /// The last good version instead of the wanted one, and why.
    Previous { version: String, reason: String },
}

impl Choice {
    /// The version to serve.
    pub fn version(&self) -> &str {
        match self {
            Choice::Wanted { version, .. } | Choice::Previous { version, .. } => version,
        }
    }
}

impl Diskless {
    fn mark_bad(&mut self, version: &str, reason: String, at: i64) {
        self.bad.insert(version.to_owned(), Bad { reason, at });
        while self.bad.len() > MAX_BAD {
            let oldest = self
                .bad
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(v, _)| v.clone())
                .expect("not empty");
            self.bad.remove(&oldest);
        }
    }

    /// A netboot at `now` while the server wants the machine on `wanted`:
    /// which version it boots. `health_bound_secs` is how long a trial may
    /// go without a healthy report (only for the reason's wording: any
    /// netboot during a trial ends it).
    pub fn choose(&mut self, wanted: &str, now: i64, health_bound_secs: i64) -> Choice {
        if let Some(t) = self.trial.clone() {
            if now - t.since < SAME_BOOT_SECS && t.version == wanted {
                return Choice::Wanted {
                    version: t.version,
                    trial: true,
                };
            }
            self.trial = None;
            let reason = if now - t.since > health_bound_secs {
                format!(
                    "no healthy report within {health_bound_secs} s of being served (netbooted again after {} s)",
                    now - t.since
                )
            } else {
                format!(
                    "netbooted again {} s after being served, without reporting healthy",
                    now - t.since
                )
            };
            self.mark_bad(&t.version, reason, now);
        }
        if self.good.as_deref() == Some(wanted) {
            return Choice::Wanted {
                version: wanted.to_owned(),
                trial: false,
            };
        }
        if let Some(bad) = self.bad.get(wanted) {
            if let Some(good) = &self.good {
                return Choice::Previous {
                    version: good.clone(),
                    reason: format!("{wanted} failed here: {}", bad.reason),
                };
            }
            // nothing known good: the wanted version is all there is
        }
        self.trial = Some(Trial {
            version: wanted.to_owned(),
            since: now,
        });
        Choice::Wanted {
            version: wanted.to_owned(),
            trial: true,
        }
    }

    /// A report from the machine: a healthy trial becomes the good version;
    /// a failed one is remembered as bad.
    pub fn report(&mut self, event: &Event, now: i64) {
        match event {
            Event::Healthy { version }
                if self.trial.as_ref().is_some_and(|t| &t.version == version)
                    || self.good.is_none() =>
            {
                self.trial = None;
                self.bad.remove(version);
                self.good = Some(version.clone());
            }
            Event::Unhealthy { version, reason }
            | Event::RolledBack {
                version, reason, ..
            } => {
                if self.trial.as_ref().is_some_and(|t| &t.version == version) {
                    self.trial = None;
                }
                if self.good.as_deref() != Some(version) {
                    self.mark_bad(version, format!("health gate failed: {reason}"), now);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(v: &str) -> Event {
        Event::Healthy { version: v.into() }
    }

    #[test]
    fn a_new_image_is_a_trial_until_healthy() {
        let mut d = Diskless::default();
        assert_eq!(
            d.choose("1.0", 0, 600),
            Choice::Wanted {
                version: "1.0".into(),
                trial: true
            }
        );
        // iPXE asking again for its script during the same boot
        assert_eq!(d.choose("1.0", 5, 600).version(), "1.0");
        d.report(&healthy("1.0"), 60);
        assert_eq!(d.good.as_deref(), Some("1.0"));
        assert_eq!(
            d.choose("1.0", 1000, 600),
            Choice::Wanted {
                version: "1.0".into(),
                trial: false
            }
        );
        assert_eq!(
            d.choose("2.0", 2000, 600),
            Choice::Wanted {
                version: "2.0".into(),
                trial: true
            }
        );
        d.report(&healthy("2.0"), 2100);
        assert_eq!(d.good.as_deref(), Some("2.0"));
        assert!(d.trial.is_none() && d.bad.is_empty());
    }

    #[test]
    fn a_failed_health_gate_sends_the_machine_back_on_its_next_boot() {
        let mut d = Diskless::default();
        d.choose("1.0", 0, 600);
        d.report(&healthy("1.0"), 10);
        d.choose("2.0", 100, 600);
        d.report(
            &Event::Unhealthy {
                version: "2.0".into(),
                reason: "cairn-broken.service failed".into(),
            },
            200,
        );
        assert_eq!(
            d.choose("2.0", 230, 600),
            Choice::Previous {
                version: "1.0".into(),
                reason: "2.0 failed here: health gate failed: cairn-broken.service failed".into()
            }
        );
        // and it stays there while 2.0 is wanted
        assert_eq!(d.choose("2.0", 5000, 600).version(), "1.0");
        // a fixed 2.0.1 is tried
        assert_eq!(
            d.choose("2.0.1", 6000, 600),
            Choice::Wanted {
                version: "2.0.1".into(),
                trial: true
            }
        );
    }

    #[test]
    fn a_machine_that_netboots_again_without_a_report_failed_its_trial() {
        let mut d = Diskless::default();
        d.choose("1.0", 0, 600);
        d.report(&healthy("1.0"), 10);
        d.choose("2.0", 100, 600);
        // the image never came up: the machine reset and netbooted
        let Choice::Previous { version, reason } = d.choose("2.0", 190, 600) else {
            panic!()
        };
        assert_eq!(version, "1.0");
        assert!(
            reason.contains("netbooted again 90 s after being served"),
            "{reason}"
        );
        // past the bound, the reason says so
        d.choose("3.0", 1000, 600);
        let Choice::Previous { reason, .. } = d.choose("3.0", 2000, 600) else {
            panic!()
        };
        assert!(
            reason.contains("no healthy report within 600 s"),
            "{reason}"
        );
    }

    #[test]
    fn with_nothing_known_good_the_wanted_image_is_served() {
        let mut d = Diskless::default();
        d.choose("1.0", 0, 600);
        // failed, and nothing else to give
        assert_eq!(d.choose("1.0", 100, 600).version(), "1.0");
        assert!(d.bad.contains_key("1.0"));
        // healthy at last: good, no longer bad
        d.report(&healthy("1.0"), 150);
        assert_eq!(d.good.as_deref(), Some("1.0"));
        assert!(d.bad.is_empty());
    }

    #[test]
    fn bad_versions_are_bounded() {
        let mut d = Diskless::default();
        for i in 0..100 {
            d.report(
                &Event::Unhealthy {
                    version: format!("v{i}"),
                    reason: "x".into(),
                },
                i,
            );
        }
        assert_eq!(d.bad.len(), MAX_BAD);
        assert!(d.bad.contains_key("v99") && !d.bad.contains_key("v0"));
    }
}
