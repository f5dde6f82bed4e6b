//! Environment variable names for the settings sections (etcd2, etcd, fleet, flannel, locksmith, update), as coreos-cloudinit's `env:"..."` struct tags.

use std::collections::BTreeMap;

use crate::schema::{self, Ty};

/// The environment variables coreos-cloudinit would write for one settings section, in the order of its struct fields.
///
/// `section` is the cloud-config section name: `"etcd2"`, `"etcd"`, `"fleet"`, `"flannel"`, `"locksmith"` or `"update"`
/// (the prefixes `"ETCD_"`, `"FLEET_"`, `"FLANNELD_"`, `"LOCKSMITHD_"` are accepted too and mean etcd2, fleet, flannel, locksmith).
/// Keys are the normalised snake_case names of [`crate::Coreos`]'s maps; keys the section does not have are skipped,
/// and so are zero values (`""`, `false`, `0`), which coreos-cloudinit leaves out.
/// Exact names are kept, quirks included: legacy etcd `snapshot_count` is `ETCD_SNAPSHOTCOUNT`, flannel `interface` is
/// `FLANNELD_IFACE`, locksmith `window_start` is `REBOOT_WINDOW_START`, update `reboot_strategy` is `REBOOT_STRATEGY`.
/// For any other `section` string the result is empty.
pub fn environment(section: &str, map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let section = match section {
        "ETCD_" => "etcd2",
        "FLEET_" => "fleet",
        "FLANNELD_" => "flannel",
        "LOCKSMITHD_" => "locksmith",
        other => other,
    };
    let Some(fields) = schema::coreos_section(section) else {
        return Vec::new();
    };
    fields
        .iter()
        .filter_map(|f| {
            let env = f.env?;
            let value = map.get(f.name)?;
            if is_zero(f.ty, value) {
                return None;
            }
            Some((env.to_string(), value.clone()))
        })
        .collect()
}

fn is_zero(ty: Ty, value: &str) -> bool {
    match ty {
        Ty::Bool => value == "false",
        Ty::Int | Ty::Float => value.parse::<f64>().map(|v| v == 0.0).unwrap_or(false),
        _ => value.is_empty(),
    }
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

    fn env(section: &str, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        environment(section, &map(pairs))
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_as_coreos_cloudinit_tags() {
        let cases: &[(&str, &str, &str)] = &[
            ("etcd2", "discovery", "ETCD_DISCOVERY"),
            (
                "etcd2",
                "advertise_client_urls",
                "ETCD_ADVERTISE_CLIENT_URLS",
            ),
            ("etcd2", "snapshot_count", "ETCD_SNAPSHOT_COUNT"),
            ("etcd2", "peer_trusted_ca_file", "ETCD_PEER_TRUSTED_CA_FILE"),
            ("etcd", "snapshot_count", "ETCD_SNAPSHOTCOUNT"),
            ("etcd", "peer_addr", "ETCD_PEER_ADDR"),
            ("etcd", "cors", "ETCD_CORS"),
            ("fleet", "public_ip", "FLEET_PUBLIC_IP"),
            ("fleet", "etcd_servers", "FLEET_ETCD_SERVERS"),
            ("flannel", "interface", "FLANNELD_IFACE"),
            ("flannel", "etcd_endpoints", "FLANNELD_ETCD_ENDPOINTS"),
            ("locksmith", "endpoint", "LOCKSMITHD_ENDPOINT"),
            ("locksmith", "group", "LOCKSMITHD_GROUP"),
            ("locksmith", "window_start", "REBOOT_WINDOW_START"),
            ("locksmith", "window_length", "REBOOT_WINDOW_LENGTH"),
            ("update", "reboot_strategy", "REBOOT_STRATEGY"),
            ("update", "group", "GROUP"),
            ("update", "server", "SERVER"),
            ("ETCD_", "name", "ETCD_NAME"),
            ("FLEET_", "metadata", "FLEET_METADATA"),
            ("FLANNELD_", "ip_masq", "FLANNELD_IP_MASQ"),
            ("LOCKSMITHD_", "etcd_cafile", "LOCKSMITHD_ETCD_CAFILE"),
        ];
        for (section, key, var) in cases {
            assert_eq!(
                env(section, &[(key, "v")]),
                pairs(&[(var, "v")]),
                "{section}.{key}"
            );
        }
    }

    #[test]
    fn field_order_unknown_keys_and_zero_values() {
        assert_eq!(
            env(
                "etcd2",
                &[
                    ("name", "n1"),
                    ("advertise_client_urls", "http://a:2379"),
                    ("debug", "false"),
                    ("heartbeat_interval", "0"),
                    ("proxy", ""),
                    ("not_a_key", "x"),
                    ("client_cert_auth", "true"),
                ]
            ),
            pairs(&[
                ("ETCD_ADVERTISE_CLIENT_URLS", "http://a:2379"),
                ("ETCD_CLIENT_CERT_AUTH", "true"),
                ("ETCD_NAME", "n1"),
            ])
        );
        assert!(env("oem", &[("id", "x")]).is_empty());
        assert!(env("nonsense", &[("name", "x")]).is_empty());
        assert_eq!(
            env("fleet", &[("engine_reconcile_interval", "0.5")]),
            pairs(&[("FLEET_ENGINE_RECONCILE_INTERVAL", "0.5")])
        );
    }

    #[test]
    fn every_env_field_is_reachable() {
        for section in ["etcd", "etcd2", "fleet", "flannel", "locksmith", "update"] {
            let fields = schema::coreos_section(section).unwrap();
            let all: BTreeMap<String, String> = fields
                .iter()
                .map(|f| (f.name.to_string(), "1".to_string()))
                .collect();
            let vars = environment(section, &all);
            assert_eq!(vars.len(), fields.len(), "{section}");
            assert!(fields.iter().all(|f| f.env.is_some()), "{section}");
        }
    }
}
