//! Settings sections turned into files: etcd2/etcd, fleet, flannel and locksmith as `20-cloudinit.conf` runtime drop-ins with `Environment=` lines, and coreos.update plus the locksmith reboot window as /etc/cairn/update.conf.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use cairn_cloudconfig::{environment, Coreos};

use crate::envfile;
use crate::fsutil::{self, Written};
use crate::units::{self, UnitSpec};

/// The drop-in file name coreos-cloudinit used.
pub const DROPIN: &str = "20-cloudinit.conf";

/// Where the update settings go (read by the updater).
pub const UPDATE_CONF: &str = "/etc/cairn/update.conf";

/// Quotes a value for `Environment="K=V"`: backslash and double quote
/// escaped, `%` doubled (systemd would expand it as a specifier).
pub fn quote_env(key: &str, value: &str) -> String {
    let mut s = String::with_capacity(key.len() + value.len() + 4);
    s.push_str("Environment=\"");
    s.push_str(key);
    s.push('=');
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '%' => s.push_str("%%"),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// A `[Service]` drop-in with one `Environment=` per variable; empty when
/// there is none (no drop-in then, as coreos-cloudinit).
pub fn dropin_content(vars: &[(String, String)]) -> String {
    if vars.is_empty() {
        return String::new();
    }
    let mut out = String::from("[Service]\n");
    for (k, v) in vars {
        out.push_str(&quote_env(k, v));
        out.push('\n');
    }
    out
}

/// A settings section and the unit it configures in this image.
pub struct Section<'a> {
    pub section: &'static str,
    pub unit: &'static str,
    pub map: &'a BTreeMap<String, String>,
}

/// The sections of `coreos` that make drop-ins. etcd2 and the legacy etcd
/// both configure Debian's `etcd.service` (which has `Alias=etcd2.service`);
/// given both, etcd2's lines come last and win.
pub fn sections(c: &Coreos) -> Vec<Section<'_>> {
    vec![
        Section {
            section: "etcd",
            unit: "etcd.service",
            map: &c.etcd,
        },
        Section {
            section: "etcd2",
            unit: "etcd.service",
            map: &c.etcd2,
        },
        Section {
            section: "fleet",
            unit: "fleet.service",
            map: &c.fleet,
        },
        Section {
            section: "flannel",
            unit: "flanneld.service",
            map: &c.flannel,
        },
        Section {
            section: "locksmith",
            unit: "locksmithd.service",
            map: &c.locksmith,
        },
    ]
}

/// The runtime units with `20-cloudinit.conf` drop-ins for the settings
/// sections (one per service), and a log line for each service the root
/// does not have.
pub fn settings_units(root: &Path, c: &Coreos) -> Vec<UnitSpec> {
    let mut per_unit: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for s in sections(c) {
        let vars = environment(s.section, s.map);
        if vars.is_empty() {
            continue;
        }
        if s.section == "etcd" && !c.etcd2.is_empty() {
            tracing::warn!("coreos.etcd and coreos.etcd2 both given: both configure etcd.service, etcd2's values win");
        }
        if !order.contains(&s.unit) {
            order.push(s.unit);
        }
        per_unit.entry(s.unit).or_default().extend(vars);
    }
    order
        .into_iter()
        .map(|unit| {
            if !units::unit_exists(root, unit) {
                tracing::warn!("{unit}: not in this image, settings written to its drop-in but nothing will run them");
            }
            UnitSpec {
                name: unit.to_string(),
                runtime: true,
                drop_ins: vec![(DROPIN.to_string(), dropin_content(&per_unit[unit]))],
                ..Default::default()
            }
        })
        .collect()
}

/// The KEY=value pairs of update.conf: REBOOT_STRATEGY, GROUP, SERVER from
/// coreos.update, REBOOT_WINDOW_START, REBOOT_WINDOW_LENGTH and
/// LOCKSMITHD_ENDPOINT (the reboot lock's etcd) from coreos.locksmith.
pub fn update_vars(c: &Coreos) -> Vec<(String, String)> {
    let u = &c.update;
    let mut vars: Vec<(String, String)> = [
        ("REBOOT_STRATEGY", &u.reboot_strategy),
        ("GROUP", &u.group),
        ("SERVER", &u.server),
    ]
    .into_iter()
    .filter_map(|(k, v)| {
        v.as_deref()
            .filter(|v| !v.is_empty())
            .map(|v| (k.to_string(), v.to_string()))
    })
    .collect();
    vars.extend(
        environment("locksmith", &c.locksmith)
            .into_iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "REBOOT_WINDOW_START" | "REBOOT_WINDOW_LENGTH" | "LOCKSMITHD_ENDPOINT"
                )
            }),
    );
    vars
}

/// Merges the update settings into `root`/etc/cairn/update.conf (other
/// lines kept), atomically; nothing when no setting is given.
pub fn write_update_conf(root: &Path, c: &Coreos) -> Result<Option<Written>> {
    let vars = update_vars(c);
    if vars.is_empty() {
        return Ok(None);
    }
    let old = fsutil::read_or_empty(root, UPDATE_CONF)
        .with_context(|| format!("reading {UPDATE_CONF}"))?;
    let new = envfile::merge(&old, &vars);
    fsutil::write_atomic(root, UPDATE_CONF, new.as_bytes(), 0o644, None)
        .with_context(|| format!("writing {UPDATE_CONF}"))
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn etcd2_dropin_content() {
        let c = Coreos {
            etcd2: map(&[
                ("name", "node1"),
                ("advertise_client_urls", "http://10.0.2.15:2379"),
                ("initial_cluster", "node1=http://10.0.2.15:2380"),
                ("listen_client_urls", "http://0.0.0.0:2379"),
            ]),
            ..Default::default()
        };
        let t = tempfile::tempdir().unwrap();
        let u = settings_units(t.path(), &c);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].name, "etcd.service");
        assert!(u[0].runtime);
        assert_eq!(u[0].drop_ins[0].0, "20-cloudinit.conf");
        let text = &u[0].drop_ins[0].1;
        assert!(text.starts_with("[Service]\n"), "{text}");
        for line in [
            "Environment=\"ETCD_NAME=node1\"",
            "Environment=\"ETCD_ADVERTISE_CLIENT_URLS=http://10.0.2.15:2379\"",
            "Environment=\"ETCD_INITIAL_CLUSTER=node1=http://10.0.2.15:2380\"",
            "Environment=\"ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379\"",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert_eq!(text.lines().count(), 5);
    }

    #[test]
    fn legacy_etcd_and_etcd2_share_etcd_service_and_etcd2_wins() {
        let c = Coreos {
            etcd: map(&[("name", "old")]),
            etcd2: map(&[("name", "new")]),
            fleet: map(&[("metadata", "region=x")]),
            ..Default::default()
        };
        let t = tempfile::tempdir().unwrap();
        let u = settings_units(t.path(), &c);
        let names: Vec<_> = u.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["etcd.service", "fleet.service"]);
        let text = &u[0].drop_ins[0].1;
        let old = text.find("ETCD_NAME=old").unwrap();
        let new = text.find("ETCD_NAME=new").unwrap();
        assert!(old < new, "{text}");
        assert_eq!(
            u[1].drop_ins[0].1,
            "[Service]\nEnvironment=\"FLEET_METADATA=region=x\"\n"
        );
    }

    #[test]
    fn env_quoting() {
        assert_eq!(quote_env("A", "x y"), "Environment=\"A=x y\"");
        assert_eq!(
            quote_env("A", r#"a"b\c%d"#),
            r#"Environment="A=a\"b\\c%%d""#
        );
        assert_eq!(dropin_content(&[]), "");
    }

    #[test]
    fn update_conf_written_and_merged() {
        let t = tempfile::tempdir().unwrap();
        let c = Coreos {
            update: cairn_cloudconfig::Update {
                reboot_strategy: Some("etcd-lock".into()),
                group: Some("beta".into()),
                server: Some("http://u.example.invalid/v1".into()),
            },
            locksmith: map(&[("window_start", "Sun 1:00"), ("window_length", "2h")]),
            ..Default::default()
        };
        let p = t.path().join("etc/cairn/update.conf");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "# operator\nREBOOT_STRATEGY=reboot\nOTHER=1\n").unwrap();
        assert_eq!(
            write_update_conf(t.path(), &c).unwrap(),
            Some(Written::Changed)
        );
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "# operator\nREBOOT_STRATEGY=etcd-lock\nOTHER=1\nGROUP=beta\nSERVER=http://u.example.invalid/v1\nREBOOT_WINDOW_START=Sun 1:00\nREBOOT_WINDOW_LENGTH=2h\n"
        );
        assert_eq!(
            write_update_conf(t.path(), &c).unwrap(),
            Some(Written::Unchanged)
        );
        assert_eq!(
            write_update_conf(t.path(), &Coreos::default()).unwrap(),
            None
        );
        // coreos.locksmith.endpoint: the reboot lock's etcd, for cairn-update
        let c = Coreos {
            locksmith: map(&[("endpoint", "http://10.0.0.1:2379")]),
            ..Default::default()
        };
        assert_eq!(
            update_vars(&c),
            [(
                "LOCKSMITHD_ENDPOINT".to_string(),
                "http://10.0.0.1:2379".to_string()
            )]
        );
    }
}
