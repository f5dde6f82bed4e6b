//! Cloud-config templates (minijinja, undefined variables are errors): the
//! environment, the variables a template sees, and the load-time check that
//! every group's template renders with placeholder facts into a valid
//! cloud-config.

use std::collections::BTreeMap;

use super::checker::Checker;
use super::{Group, Inventory, InventoryError, Profile, RenderContext};
use crate::facts::Facts;

/// The template environment: undefined variables are errors, a trailing
/// newline stays.
pub(super) fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

/// Every group's cloud-config must render and validate with placeholder facts.
pub(super) fn check_groups(cx: &Checker<'_>, inventory: &Inventory) -> Result<(), InventoryError> {
    for (i, g) in inventory.groups.iter().enumerate() {
        let profile = &inventory.profiles[g.profile];
        let Some(template) = &profile.cloud_config else {
            continue;
        };
        let template_path = cx.base.join(template).display().to_string();
        let text = inventory
            .render_cloud_config(g, &placeholder_context(g))
            .map_err(|e| InventoryError::Yaml(cairn_yaml::Error::Invalid {
                file: template_path.clone(),
                line: e.line().unwrap_or(1),
                key: format!("groups[{i}] ({})", g.name),
                message: format!(
                    "cloud-config template of profile {:?} does not render for group {:?} (line {} of {}): {}",
                    profile.name,
                    g.name,
                    g.line,
                    cx.shown,
                    template_message(&e)
                ),
            }))?;
        let report = cairn_cloudconfig::validate(&text);
        if report.has_errors() {
            let findings: Vec<String> = report
                .findings
                .iter()
                .filter(|f| f.kind == cairn_cloudconfig::Kind::Error)
                .map(|f| format!("line {}: {}", f.line, f.message))
                .collect();
            return Err(InventoryError::Yaml(cairn_yaml::Error::Invalid {
                file: template_path,
                line: report
                    .findings
                    .iter()
                    .find(|f| f.kind == cairn_cloudconfig::Kind::Error)
                    .map_or(1, |f| f.line),
                key: format!("groups[{i}] ({})", g.name),
                message: format!(
                    "rendered cloud-config for group {:?} (line {} of {}) is invalid (lines of the rendered text, placeholder facts): {}",
                    g.name,
                    g.line,
                    cx.shown,
                    findings.join("; ")
                ),
            }));
        }
    }
    Ok(())
}

/// Placeholder facts for load-time checks, completed by each group's selector values.
fn placeholder_context(group: &Group) -> RenderContext {
    let mut labels: BTreeMap<String, String> = [
        ("mac", "52:54:00:00:00:00"),
        ("uuid", "00000000-0000-0000-0000-000000000000"),
        ("hostname", "placeholder"),
        ("serial", "placeholder"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    labels.extend(group.selector.clone());
    RenderContext {
        facts: Facts {
            labels,
            raw_query: String::new(),
            bad_mac: None,
            rejected: BTreeMap::new(),
        },
        ip: "127.0.0.1".into(),
        public_url: "http://127.0.0.1:8080".into(),
        etcd_discovery: group
            .etcd_cluster
            .map(|_| format!("http://127.0.0.1:8080/discovery/{}", "0".repeat(32))),
    }
}

/// The variables a template sees.
pub(super) fn template_vars(
    group: &Group,
    profile: &Profile,
    ctx: &RenderContext,
) -> minijinja::Value {
    let f = &ctx.facts;
    let query: BTreeMap<&str, &str> = f
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    minijinja::context! {
        metadata => minijinja::Value::from_serialize(&group.metadata),
        mac => f.get("mac"),
        uuid => f.get("uuid"),
        hostname => f.get("hostname"),
        serial => f.get("serial"),
        ip => &ctx.ip,
        public_url => &ctx.public_url,
        group => &group.name,
        profile => &profile.name,
        request => minijinja::context! { query => query, raw_query => &f.raw_query },
        ..match &ctx.etcd_discovery {
            Some(url) => minijinja::context! { etcd_discovery => url },
            None => minijinja::context! {},
        }
    }
}

pub(super) fn template_message(e: &minijinja::Error) -> String {
    let mut m = e.to_string();
    // minijinja appends "(in NAME:LINE)"; the file and line are printed up front already.
    if let Some(i) = m.rfind(" (in ") {
        m.truncate(i);
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        m.push_str(&format!(": {s}"));
        source = s.source();
    }
    m
}
