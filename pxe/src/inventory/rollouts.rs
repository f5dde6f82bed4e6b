//! The inventory's `rollouts:` section: per update channel, which version
//! goes out in which waves (a share of machines or named groups, each open
//! at least its soak time), and how many failed machines a wave may have
//! before the rollout pauses; checked against the channels and groups the
//! inventory offers, and turned into `cairn_lifecycle` plans.

use std::collections::{BTreeMap, BTreeSet};

use cairn_lifecycle::rollout::{Members, WavePlan};
use cairn_lifecycle::Plan;
use serde::Deserialize;

use super::checker::Checker;
use super::{Group, InventoryError};
use crate::updates::Channel;

/// Waves in one rollout at most.
pub const MAX_WAVES: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    channel: String,
    version: String,
    #[serde(default)]
    max_failures: u32,
    waves: Vec<RawWave>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWave {
    name: String,
    #[serde(default)]
    percent: Option<u8>,
    #[serde(default)]
    groups: Option<Vec<String>>,
    /// `90s`, `10m`, `1h`, `2d` (humantime), or a number of seconds.
    #[serde(default)]
    soak: Option<serde_json::Value>,
}

fn soak_secs(v: &serde_json::Value) -> Result<u64, String> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| {
            format!("{n}: expected a whole number of seconds or a duration like 10m")
        }),
        serde_json::Value::String(s) => humantime::parse_duration(s.trim())
            .map(|d| d.as_secs())
            .map_err(|e| format!("{s:?}: {e} (expected a duration like 90s, 10m, 1h, 2d)")),
        other => Err(format!(
            "{other}: expected a duration like 10m or a number of seconds"
        )),
    }
}

/// Checks the section: each channel at most once and offered, each version
/// one of the channel's bundles, each wave either `percent` or `groups`
/// (of groups that exist), the plan's own rules.
pub(super) fn check(
    cx: &Checker<'_>,
    raw: Vec<RawRollout>,
    bundles: &BTreeMap<String, Vec<Channel>>,
    groups: &[Group],
) -> Result<Vec<Plan>, InventoryError> {
    let mut seen = BTreeSet::new();
    let names: BTreeSet<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    let mut plans = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let bad = |key: &str, m: String| cx.invalid("rollouts", i, key, m);
        let Some(versions) = bundles.get(&r.channel) else {
            let known: Vec<&str> = bundles.keys().map(String::as_str).collect();
            return Err(bad(
                "channel",
                format!(
                    "{:?}: no image folder of the inventory offers this channel (channels: {})",
                    r.channel,
                    if known.is_empty() {
                        "none: build images with --sign".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        if !seen.insert(r.channel.clone()) {
            return Err(bad(
                "channel",
                format!("{:?}: a second rollout of this channel", r.channel),
            ));
        }
        if !versions.iter().any(|b| b.version == r.version) {
            let offered: Vec<&str> = versions.iter().map(|b| b.version.as_str()).collect();
            return Err(bad(
                "version",
                format!(
                    "{:?}: channel {:?} offers no such version (offered: {})",
                    r.version,
                    r.channel,
                    offered.join(", ")
                ),
            ));
        }
        if r.waves.len() > MAX_WAVES {
            return Err(bad(
                "waves",
                format!("{} waves: at most {MAX_WAVES}", r.waves.len()),
            ));
        }
        let mut waves = Vec::with_capacity(r.waves.len());
        for (j, w) in r.waves.into_iter().enumerate() {
            let key = |k: &str| {
                if k.is_empty() {
                    format!("waves[{j}]")
                } else {
                    format!("waves[{j}].{k}")
                }
            };
            let members = match (w.percent, w.groups) {
                (Some(p), None) => Members::Percent(p),
                (None, Some(g)) => {
                    if let Some(unknown) = g.iter().find(|n| !names.contains(n.as_str())) {
                        return Err(bad(
                            &key("groups"),
                            format!("{unknown:?}: no such group in this inventory"),
                        ));
                    }
                    Members::Groups(g)
                }
                _ => {
                    return Err(bad(
                        &key(""),
                        "expected exactly one of percent (a share of the machines, cumulative) or groups (inventory group names)".into(),
                    ))
                }
            };
            let soak_secs = match &w.soak {
                None => 0,
                Some(v) => soak_secs(v).map_err(|m| bad(&key("soak"), m))?,
            };
            waves.push(WavePlan {
                name: w.name,
                members,
                soak_secs,
            });
        }
        let plan = Plan {
            channel: r.channel,
            version: r.version,
            waves,
            max_failures: r.max_failures,
        };
        if let Err(e) = plan.check() {
            return Err(bad(&format!("waves[{}]", e.wave), e.message));
        }
        plans.push(plan);
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soak_durations() {
        assert_eq!(soak_secs(&serde_json::json!(90)).unwrap(), 90);
        assert_eq!(soak_secs(&serde_json::json!("10m")).unwrap(), 600);
        assert_eq!(soak_secs(&serde_json::json!("1h 30m")).unwrap(), 5400);
        assert!(soak_secs(&serde_json::json!("soon"))
            .unwrap_err()
            .contains("like 90s"));
        assert!(soak_secs(&serde_json::json!(-1)).is_err());
        assert!(soak_secs(&serde_json::json!([1])).is_err());
    }
}
