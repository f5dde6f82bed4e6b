//! The inventory's groups: names, the profile each names, selectors
//! (normalised), etcd clusters, and the rule that no machine can match two
//! groups with the same weight.

use std::collections::{BTreeMap, BTreeSet};

use super::checker::Checker;
use super::profiles::is_name;
use super::schema::RawGroup;
use super::{Group, InventoryError, Profile, MAX_ETCD_CLUSTER};
use crate::facts::normalise;

/// Checks every group against the profiles (`names`: profile name -> index)
/// and their templates in `env`.
pub(super) fn check(
    cx: &Checker<'_>,
    raw: Vec<RawGroup>,
    profiles: &[Profile],
    profile_names: &BTreeMap<String, usize>,
    env: &minijinja::Environment<'static>,
) -> Result<Vec<Group>, InventoryError> {
    let mut groups: Vec<Group> = Vec::new();
    let mut group_names = BTreeSet::new();
    for (i, g) in raw.into_iter().enumerate() {
        if !is_name(&g.name) {
            return Err(cx.invalid(
                "groups",
                i,
                "name",
                format!(
                    "{:?} is not a valid name: expected letters, digits, '-', '_' or '.'",
                    g.name
                ),
            ));
        }
        if !group_names.insert(g.name.clone()) {
            return Err(cx.invalid(
                "groups",
                i,
                "name",
                format!("a second group named {:?}", g.name),
            ));
        }
        let Some(&profile) = profile_names.get(&g.profile) else {
            let known: Vec<&str> = profile_names.keys().map(String::as_str).collect();
            return Err(cx.invalid(
                "groups",
                i,
                "profile",
                format!(
                    "no profile named {:?} (profiles: {})",
                    g.profile,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        let mut selector = BTreeMap::new();
        for (k, v) in &g.selector {
            let n = normalise(k, v).map_err(|m| cx.invalid("groups", i, "selector", m))?;
            if n.is_empty() {
                return Err(cx.invalid(
                    "groups",
                    i,
                    "selector",
                    format!("selector {k:?} has an empty value"),
                ));
            }
            selector.insert(k.clone(), n);
        }
        let etcd_cluster = match g.etcd_cluster {
            None => None,
            Some(c) => {
                if !(1..=MAX_ETCD_CLUSTER).contains(&c.size) {
                    return Err(cx.invalid(
                        "groups",
                        i,
                        "etcd_cluster",
                        format!(
                            "size {} is out of range: expected 1 to {MAX_ETCD_CLUSTER} members",
                            c.size
                        ),
                    ));
                }
                let used = profiles[profile].cloud_config.as_ref().is_some_and(|t| {
                    env.get_template(t)
                        .is_ok_and(|t| t.undeclared_variables(false).contains("etcd_discovery"))
                });
                if !used {
                    return Err(cx.invalid(
                        "groups",
                        i,
                        "etcd_cluster",
                        format!(
                            "profile {:?}'s cloud_config never uses {{{{ etcd_discovery }}}}: put it in coreos.etcd2.discovery, or the members never find each other",
                            g.profile
                        ),
                    ));
                }
                Some(c.size)
            }
        };
        groups.push(Group {
            name: g.name,
            profile,
            selector,
            metadata: g.metadata,
            line: cx.line(&format!("groups[{i}]")),
            etcd_cluster,
            cloud_config_access: g.cloud_config_access,
        });
    }
    Ok(groups)
}

/// Two groups that one machine could match with the same weight are ambiguous.
pub(super) fn check_ambiguity(cx: &Checker<'_>, groups: &[Group]) -> Result<(), InventoryError> {
    for (i, a) in groups.iter().enumerate() {
        for b in &groups[..i] {
            if a.selector.len() != b.selector.len() {
                continue;
            }
            let compatible = a
                .selector
                .iter()
                .all(|(k, v)| b.selector.get(k).is_none_or(|w| w == v));
            if compatible {
                let what = if a.selector.is_empty() {
                    "both are default groups (empty selector); at most one group may have no selector".to_string()
                } else {
                    format!(
                        "a machine with {} matches both with {} selector(s) each; make one selector more specific or remove one group",
                        describe_union(&a.selector, &b.selector),
                        a.selector.len()
                    )
                };
                return Err(InventoryError::Yaml(cairn_yaml::Error::Invalid {
                    file: cx.shown.clone(),
                    line: a.line,
                    key: format!("groups[{i}].selector"),
                    message: format!(
                        "groups {:?} (line {}) and {:?} (line {}) are ambiguous: {what}",
                        b.name, b.line, a.name, a.line
                    ),
                }));
            }
        }
    }
    Ok(())
}

fn describe_union(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let mut all = a.clone();
    all.extend(b.clone());
    all.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
