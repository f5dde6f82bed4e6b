//! The inventory file's schema as serde reads it (`deny_unknown_fields`
//! everywhere); `cairn_yaml` reads it and names file, line, column and key
//! of what does not fit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::{BootMode, CloudConfigAccess, Transport};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInventory {
    #[serde(default)]
    pub(super) profiles: Vec<RawProfile>,
    #[serde(default)]
    pub(super) groups: Vec<RawGroup>,
    /// More image folders whose signed bundles are offered as updates.
    #[serde(default)]
    pub(super) updates: Vec<PathBuf>,
    /// Update channels' versions going out in waves.
    #[serde(default)]
    pub(super) rollouts: Vec<super::rollouts::RawRollout>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    pub(super) name: String,
    pub(super) image: PathBuf,
    #[serde(default)]
    pub(super) boot: BootMode,
    #[serde(default)]
    pub(super) state_label: Option<String>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub(super) kernel_args: Vec<String>,
    #[serde(default)]
    pub(super) cloud_config: Option<PathBuf>,
    #[serde(default)]
    pub(super) transport: Transport,
    /// `boot: install` only: how the installer picks and treats the disk.
    #[serde(default)]
    pub(super) install: Option<RawInstall>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstall {
    /// `first-empty` (default), `/dev/NAME`, `by-id:ID`, `by-path:PATH`, `size:MIN[-MAX]`.
    #[serde(default)]
    pub(super) disk: Option<String>,
    /// Write over a disk that holds data.
    #[serde(default)]
    pub(super) overwrite: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    pub(super) name: String,
    pub(super) profile: String,
    #[serde(default, deserialize_with = "scalar_map")]
    pub(super) selector: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) metadata: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub(super) etcd_cluster: Option<RawEtcdCluster>,
    #[serde(default)]
    pub(super) cloud_config_access: CloudConfigAccess,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcdCluster {
    pub(super) size: u32,
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(
        match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a string or a list of strings (kernel arguments)")
        })? {
            OneOrMany::One(s) => s.split_whitespace().map(String::from).collect(),
            OneOrMany::Many(v) => v,
        },
    )
}

fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: BTreeMap<String, serde_json::Value> = BTreeMap::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "selector {k:?}: expected a string, number or boolean, found {other}"
                    )))
                }
            };
            Ok((k, s))
        })
        .collect()
}
