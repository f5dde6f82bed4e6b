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
