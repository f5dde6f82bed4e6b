//! The inventory (`--config` YAML): profiles, groups, selectors, image folders and cloud-config templates;
//! loading with errors that name file, line and key; selector precedence; template rendering.
//!
//! Owns the meaning of the inventory file only; HTTP, TFTP and the machine table live elsewhere.

use cairn_formats::image_dir;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::facts::{normalise, Facts};

/// The well-known selector keys (any other key is a label matched against query parameters).
pub const WELL_KNOWN_SELECTORS: [&str; 4] = ["mac", "uuid", "hostname", "serial"];

/// Why an inventory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file (or a file it names) could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// YAML that does not fit the schema.
    #[error("{path}:{line}:{column}: {key}{message}")]
    Syntax {
        /// The inventory file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// `groups[1].selector: ` or empty.
        key: String,
        /// What serde said.
        message: String,
    },
    /// Well-formed YAML with a meaning that is wrong (unknown profile, ambiguous groups, bad template...).
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        /// The file the problem is in.
        path: String,
        /// 1-based line.
        line: usize,
        /// Key path, e.g. `groups[2].profile`.
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

/// How a profile boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMode {
    /// Diskless: `pxe-initrd.img` (root image inside), `cairn.root=ram`, state on tmpfs.
    #[default]
    Ram,
    /// Root from the network as with `ram`, state on the local partition labelled `state_label`
    /// (`cairn.state=label:cairn-state`).
    DiskState,
}

/// How iPXE fetches the kernel and initrd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `http://PUBLIC/assets/...` (default; fast, resumable).
    #[default]
    Http,
    /// `tftp://HOST:PORT/assets/...` (for networks where only TFTP reaches the machines).
    Tftp,
}

/// Who may fetch a group's rendered cloud-config (`/cloud-config`, `/cloud`) and its `/metadata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloudConfigAccess {
    /// Any host that names a machine of the group (its MAC, UUID or labels).
    #[default]
    Any,
    /// Only the address that netbooted that machine from this server: the address that last fetched
    /// its iPXE script (`/ipxe?mac=...`), within [`crate::status::BOOT_SESSION`] and since the server
    /// started. For netbooted machines only: one that booted from disk has no such boot.
    BootedIp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    profiles: Vec<RawProfile>,
    #[serde(default)]
    groups: Vec<RawGroup>,
    /// More image folders whose signed bundles are offered as updates.
    #[serde(default)]
    updates: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    image: PathBuf,
    #[serde(default)]
    boot: BootMode,
    #[serde(default)]
    state_label: Option<String>,
    #[serde(default, deserialize_with = "string_or_list")]
    kernel_args: Vec<String>,
    #[serde(default)]
    cloud_config: Option<PathBuf>,
    #[serde(default)]
    transport: Transport,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    profile: String,
    #[serde(default, deserialize_with = "scalar_map")]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    metadata: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    etcd_cluster: Option<RawEtcdCluster>,
    #[serde(default)]
    cloud_config_access: CloudConfigAccess,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcdCluster {
    size: u32,
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

/// A profile: what to boot.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Unique name.
    pub name: String,
    /// Key of the image folder in [`Inventory::images`] (`NAME-VERSION` from its manifest).
    pub image: String,
    /// Boot mode.
    pub boot: BootMode,
    /// GPT label of the state partition (`disk-state` mode).
    pub state_label: String,
    /// Extra kernel arguments.
    pub kernel_args: Vec<String>,
    /// Template name (its path as written in the inventory), if any.
    pub cloud_config: Option<String>,
    /// Kernel/initrd transport.
    pub transport: Transport,
}

impl Profile {
    /// The initrd file this profile boots.
    pub fn initrd_file(&self) -> &'static str {
        "pxe-initrd.img"
    }

    /// The kernel arguments cairn adds, then the profile's own.
    pub fn cmdline_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("initrd={}", self.initrd_file()),
            "cairn.root=ram".to_string(),
        ];
        if self.boot == BootMode::DiskState {
            args.push(format!("cairn.state=label:{}", self.state_label));
        }
        args.extend(self.kernel_args.iter().cloned());
        args
    }
}

/// A group: which machines get which profile, with metadata for templates.
#[derive(Debug, Clone)]
pub struct Group {
    /// Unique name.
    pub name: String,
    /// Index into [`Inventory::profiles`].
    pub profile: usize,
    /// Normalised selector (empty: the default group).
    pub selector: BTreeMap<String, String>,
    /// Metadata for templates and `/metadata`.
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Line of the group in the inventory file.
    pub line: usize,
    /// `etcd_cluster: {size: N}`: the group's machines bootstrap one etcd
    /// cluster of N members through a discovery token `cairn serve` keeps
    /// for the group (`{{ etcd_discovery }}` in the template).
    pub etcd_cluster: Option<u32>,
    /// Who may fetch the group's cloud-config and metadata.
    pub cloud_config_access: CloudConfigAccess,
}

impl Group {
    /// True when every selector matches the facts.
    pub fn matches(&self, facts: &Facts) -> bool {
        self.selector
            .iter()
            .all(|(k, v)| facts.labels.get(k) == Some(v))
    }
}

/// An image folder (output of `cairn build`).
#[derive(Debug, Clone)]
pub struct Image {
    /// Canonical path of the folder.
    pub dir: PathBuf,
    /// `name` from manifest.json.
    pub name: String,
    /// `version` from manifest.json.
    pub version: String,
}

/// A loaded, checked inventory.
pub struct Inventory {
    /// The inventory file.
    pub path: PathBuf,
    /// Profiles in file order.
    pub profiles: Vec<Profile>,
    /// Groups in file order.
    pub groups: Vec<Group>,
    /// Image folders by key (`NAME-VERSION`).
    pub images: BTreeMap<String, Image>,
    /// Update channels on offer (newest bundle per channel), by channel name.
    pub channels: BTreeMap<String, crate::updates::Channel>,
    env: minijinja::Environment<'static>,
}

impl fmt::Debug for Inventory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inventory")
            .field("path", &self.path)
            .field("profiles", &self.profiles)
            .field("groups", &self.groups)
            .field("images", &self.images)
            .finish_non_exhaustive()
    }
}

/// Everything a template can see besides the group's metadata.
#[derive(Debug, Clone, Default)]
pub struct RenderContext {
    /// The request's facts.
    pub facts: Facts,
    /// The client's IP address.
    pub ip: String,
    /// Base URL machines reach this server at (no trailing `/`).
    pub public_url: String,
    /// The group's etcd discovery URL (groups with `etcd_cluster` only).
    pub etcd_discovery: Option<String>,
}

/// Largest `etcd_cluster.size` (as the discovery service allows).
pub const MAX_ETCD_CLUSTER: u32 = cairn_discovery::v2::MAX_CLUSTER_SIZE;

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

impl Inventory {
    /// Reads and checks an inventory file: schema, names, image folders, selector ambiguity, and every
    /// group's cloud-config rendered with placeholder facts and validated.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Inventory::parse(path, &text)
    }

    /// Like [`Inventory::load`] with the text given (`path` names the file in messages and anchors
    /// relative paths).
    pub fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
        let shown = path.display().to_string();
        let de = serde_norway::Deserializer::from_str(text);
        let raw: RawInventory = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let loc = inner.location();
            let mut message = inner.to_string();
            if let Some(i) = message.find(" at line ") {
                message.truncate(i);
            }
            // serde_norway prefixes the path of the map it was in ("profiles[0]: unknown field"); the
            // full key path is printed already.
            if let Some((head, rest)) = message.split_once(": ") {
                if !head.contains(' ') && key.starts_with(head) {
                    message = rest.to_string();
                }
            }
            InventoryError::Syntax {
                path: shown.clone(),
                line: loc.as_ref().map_or(1, |l| l.line()),
                column: loc.as_ref().map_or(1, |l| l.column()),
                key: if key.is_empty() || key == "." {
                    String::new()
                } else {
                    format!("{key}: ")
                },
                message,
            }
        })?;
        let lines = Lines::new(text);
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |section: &str, i: usize, key: &str, message: String| {
            let line = lines.key_line(section, i, key);
            let key = if key.is_empty() {
                format!("{section}[{i}]")
            } else {
                format!("{section}[{i}].{key}")
            };
            InventoryError::Invalid {
                path: shown.clone(),
                line,
                key,
                message,
            }
        };

        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);

        let mut images: BTreeMap<String, Image> = BTreeMap::new();
        let mut bundles = Vec::new();
        let mut profiles = Vec::new();
        let mut profile_names = BTreeMap::new();
        for (i, p) in raw.profiles.into_iter().enumerate() {
            if !is_name(&p.name) {
                return Err(invalid(
                    "profiles",
                    i,
                    "name",
                    format!(
                        "{:?} is not a valid name: expected letters, digits, '-', '_' or '.'",
                        p.name
                    ),
                ));
            }
            if profile_names.insert(p.name.clone(), i).is_some() {
                return Err(invalid(
                    "profiles",
                    i,
                    "name",
                    format!("a second profile named {:?}", p.name),
                ));
            }
            let dir = base.join(&p.image);
            let image = read_image(&dir).map_err(|m| invalid("profiles", i, "image", m))?;
            let key = format!("{}-{}", image.name, image.version);
            if let Some(other) = images.get(&key) {
                if other.dir != image.dir {
                    return Err(invalid(
                        "profiles",
                        i,
                        "image",
                        format!(
                            "{} and {} are both image {key}: one name and version must be one folder",
                            other.dir.display(),
                            image.dir.display()
                        ),
                    ));
                }
            }
            match crate::updates::read_bundle(&image.dir) {
                Ok(Some(b)) => bundles.push(b),
                Ok(None) => {}
                Err(m) => {
                    return Err(invalid(
                        "profiles",
                        i,
                        "image",
                        format!("update bundle: {m}"),
                    ))
                }
            }
            images.insert(key.clone(), image);
            let cloud_config = match &p.cloud_config {
                None => None,
                Some(t) => {
                    let name = t.display().to_string();
                    if env.get_template(&name).is_err() {
                        let file = base.join(t);
                        let source = std::fs::read_to_string(&file).map_err(|e| {
                            invalid(
                                "profiles",
                                i,
                                "cloud_config",
                                format!("reading {}: {e}", file.display()),
                            )
                        })?;
                        env.add_template_owned(name.clone(), source).map_err(|e| {
                            InventoryError::Invalid {
                                path: file.display().to_string(),
                                line: e.line().unwrap_or(1),
                                key: format!("profiles[{i}].cloud_config"),
                                message: format!("template syntax: {}", template_message(&e)),
                            }
                        })?;
                    }
                    Some(name)
                }
            };
            let state_label = p.state_label.unwrap_or_else(|| "cairn-state".into());
            if state_label.is_empty() || state_label.contains(char::is_whitespace) {
                return Err(invalid(
                    "profiles",
                    i,
                    "state_label",
                    format!("{state_label:?} is not a partition label: expected no spaces"),
                ));
            }
            if let Some(bad) = p
                .kernel_args
                .iter()
                .find(|a| a.is_empty() || a.contains(char::is_whitespace))
            {
                return Err(invalid(
                    "profiles",
                    i,
                    "kernel_args",
                    format!("{bad:?}: each kernel argument must be one word without spaces"),
                ));
            }
            profiles.push(Profile {
                name: p.name,
                image: key,
                boot: p.boot,
                state_label,
                kernel_args: p.kernel_args,
                cloud_config,
                transport: p.transport,
            });
        }

        let mut groups: Vec<Group> = Vec::new();
        let mut group_names = BTreeSet::new();
        for (i, g) in raw.groups.into_iter().enumerate() {
            if !is_name(&g.name) {
                return Err(invalid(
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
                return Err(invalid(
                    "groups",
                    i,
                    "name",
                    format!("a second group named {:?}", g.name),
                ));
            }
            let Some(&profile) = profile_names.get(&g.profile) else {
                let known: Vec<&str> = profile_names.keys().map(String::as_str).collect();
                return Err(invalid(
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
                let n = normalise(k, v).map_err(|m| invalid("groups", i, "selector", m))?;
                if n.is_empty() {
                    return Err(invalid(
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
                        return Err(invalid(
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
                        return Err(invalid(
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
                line: lines.item_line("groups", i),
                etcd_cluster,
                cloud_config_access: g.cloud_config_access,
            });
        }

        // Two groups that one machine could match with the same weight are ambiguous.
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
                    return Err(InventoryError::Invalid {
                        path: shown.clone(),
                        line: a.line,
                        key: format!("groups[{i}].selector"),
                        message: format!(
                            "groups {:?} (line {}) and {:?} (line {}) are ambiguous: {what}",
                            b.name, b.line, a.name, a.line
                        ),
                    });
                }
            }
        }

        for (i, dir) in raw.updates.iter().enumerate() {
            let dir = base.join(dir);
            match crate::updates::read_bundle(&dir) {
                Ok(Some(b)) => bundles.push(b),
                Ok(None) => {
                    return Err(invalid(
                        "updates",
                        i,
                        "",
                        format!(
                            "{} has no update bundle (expected {}/update/manifest.json: build it with --sign)",
                            dir.display(),
                            dir.display()
                        ),
                    ))
                }
                Err(m) => return Err(invalid("updates", i, "", m)),
            }
        }
        let channels = crate::updates::newest(bundles).map_err(|m| InventoryError::Invalid {
            path: shown.clone(),
            line: lines.section("updates").map_or(1, |l| l + 1),
            key: "updates".into(),
            message: m,
        })?;

        let inventory = Inventory {
            path: path.to_path_buf(),
            profiles,
            groups,
            images,
            channels,
            env,
        };

        // Every group's cloud-config must render and validate with placeholder facts.
        for (i, g) in inventory.groups.iter().enumerate() {
            let profile = &inventory.profiles[g.profile];
            let Some(template) = &profile.cloud_config else {
                continue;
            };
            let template_path = base.join(template).display().to_string();
            let text = inventory
                .render_cloud_config(g, &placeholder_context(g))
                .map_err(|e| InventoryError::Invalid {
                    path: template_path.clone(),
                    line: e.line().unwrap_or(1),
                    key: format!("groups[{i}] ({})", g.name),
                    message: format!(
                        "cloud-config template of profile {:?} does not render for group {:?} (line {} of {shown}): {}",
                        profile.name,
                        g.name,
                        g.line,
                        template_message(&e)
                    ),
                })?;
            let report = cairn_cloudconfig::validate(&text);
            if report.has_errors() {
                let findings: Vec<String> = report
                    .findings
                    .iter()
                    .filter(|f| f.kind == cairn_cloudconfig::Kind::Error)
                    .map(|f| format!("line {}: {}", f.line, f.message))
                    .collect();
                return Err(InventoryError::Invalid {
                    path: template_path,
                    line: report
                        .findings
                        .iter()
                        .find(|f| f.kind == cairn_cloudconfig::Kind::Error)
                        .map_or(1, |f| f.line),
                    key: format!("groups[{i}] ({})", g.name),
                    message: format!(
                        "rendered cloud-config for group {:?} (line {} of {shown}) is invalid (lines of the rendered text, placeholder facts): {}",
                        g.name,
                        g.line,
                        findings.join("; ")
                    ),
                });
            }
        }
        Ok(inventory)
    }

    /// The group for these facts: the matching group with the most selectors (the default group when no
    /// other matches). Load-time checks make the winner unique.
    pub fn select(&self, facts: &Facts) -> Option<&Group> {
        self.groups
            .iter()
            .filter(|g| g.matches(facts))
            .max_by_key(|g| g.selector.len())
    }

    /// The profile of a group.
    pub fn profile_of(&self, group: &Group) -> &Profile {
        &self.profiles[group.profile]
    }

    /// Renders the group's cloud-config for a request. Errors when the profile has no template or the
    /// template fails (undefined variable, filter error).
    pub fn render_cloud_config(
        &self,
        group: &Group,
        ctx: &RenderContext,
    ) -> Result<String, minijinja::Error> {
        let profile = self.profile_of(group);
        let Some(name) = &profile.cloud_config else {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::TemplateNotFound,
                format!("profile {:?} has no cloud_config", profile.name),
            ));
        };
        let template = self.env.get_template(name)?;
        template.render(template_vars(group, profile, ctx))
    }
}

/// The variables a template sees.
fn template_vars(group: &Group, profile: &Profile, ctx: &RenderContext) -> minijinja::Value {
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

fn template_message(e: &minijinja::Error) -> String {
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

fn describe_union(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let mut all = a.clone();
    all.extend(b.clone());
    all.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn read_image(dir: &Path) -> Result<Image, String> {
    let canonical = dir
        .canonicalize()
        .map_err(|e| format!("image folder {}: {e}", dir.display()))?;
    let manifest = canonical.join(image_dir::MANIFEST);
    let text = std::fs::read_to_string(&manifest).map_err(|e| {
        format!(
            "{}: {e} (expected an output folder of `cairn build`)",
            manifest.display()
        )
    })?;
    let m: image_dir::Manifest = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: {e} (expected the manifest.json of `cairn build`)",
            manifest.display()
        )
    })?;
    if !is_name(&m.name) || !is_name(&m.version) {
        return Err(format!(
            "{}: name {:?} / version {:?} are not usable in URLs",
            manifest.display(),
            m.name,
            m.version
        ));
    }
    for f in [image_dir::KERNEL, image_dir::PXE_INITRD] {
        if !canonical.join(f).is_file() {
            return Err(format!(
                "{} has no {f} (expected an output folder of `cairn build`)",
                canonical.display()
            ));
        }
    }
    Ok(Image {
        dir: canonical,
        name: m.name,
        version: m.version,
    })
}

/// Line lookup for block-style YAML: where each item of a top-level list starts and where its keys are.
struct Lines<'a> {
    lines: Vec<&'a str>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        Lines {
            lines: text.lines().collect(),
        }
    }

    /// 0-based index of the top-level `section:` line.
    fn section(&self, section: &str) -> Option<usize> {
        let head = format!("{section}:");
        self.lines.iter().position(|l| l.starts_with(&head))
    }

    /// 0-based line indices of the items of a top-level list.
    fn items(&self, section: &str) -> Vec<usize> {
        let Some(start) = self.section(section) else {
            return Vec::new();
        };
        let mut indent = None;
        let mut out = Vec::new();
        for (n, l) in self.lines.iter().enumerate().skip(start + 1) {
            let t = l.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let ind = l.len() - t.len();
            if ind == 0 && !t.starts_with('-') {
                break;
            }
            if t.starts_with("- ") || t == "-" {
                match indent {
                    None => {
                        indent = Some(ind);
                        out.push(n);
                    }
                    Some(i) if i == ind => out.push(n),
                    _ => {}
                }
            }
        }
        out
    }

    /// 1-based line of item `i` of `section` (the section's line when unknown).
    fn item_line(&self, section: &str, i: usize) -> usize {
        self.items(section)
            .get(i)
            .map(|n| n + 1)
            .or_else(|| self.section(section).map(|n| n + 1))
            .unwrap_or(1)
    }

    /// 1-based line of `key:` inside item `i` of `section` (the item's line when not found).
    fn key_line(&self, section: &str, i: usize, key: &str) -> usize {
        let items = self.items(section);
        let Some(&start) = items.get(i) else {
            return self.item_line(section, i);
        };
        let end = items.get(i + 1).copied().unwrap_or(self.lines.len());
        let head = format!("{key}:");
        (start..end)
            .find(|&n| {
                self.lines[n]
                    .trim_start()
                    .trim_start_matches("- ")
                    .starts_with(&head)
            })
            .unwrap_or(start)
            + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, name: &str) -> PathBuf {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("manifest.json"),
            serde_json::to_string(&image_dir::Manifest::named(name, "1.0")).unwrap(),
        )
        .unwrap();
        std::fs::write(d.join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(d.join("pxe-initrd.img"), b"initrd").unwrap();
        d
    }

    fn load(dir: &Path, yaml: &str) -> Result<Inventory, InventoryError> {
        let p = dir.join("inv.yaml");
        std::fs::write(&p, yaml).unwrap();
        Inventory::load(&p)
    }

    fn with_groups(groups: &str) -> String {
        format!("profiles:\n  - name: p\n    image: img\ngroups:\n{groups}")
    }

    #[test]
    fn selector_precedence_table() {
        let dir = tempfile::tempdir().unwrap();
        image(dir.path(), "img");
        let inv = load(
            dir.path(),
            &with_groups(
                "  - name: default\n    profile: p\n\
                 \x20 - name: rack1\n    profile: p\n    selector: {rack: r1}\n\
                 \x20 - name: rack1-node\n    profile: p\n    selector: {rack: r1, mac: \"52-54-00-00-00-01\"}\n\
                 \x20 - name: by-uuid\n    profile: p\n    selector: {uuid: 0A-B, rack: r9}\n",
            ),
        )
        .unwrap();
        let table: &[(&str, Option<&str>)] = &[
            ("", Some("default")),
            ("mac=52:54:00:00:00:01", Some("default")),
            ("rack=r1", Some("rack1")),
            ("rack=r2", Some("default")),
            ("rack=r1&mac=52:54:00:00:00:01", Some("rack1-node")),
            ("rack=r1&mac=52-54-00-00-00-01", Some("rack1-node")),
            (
                "rack=r1&mac=52%3A54%3A00%3A00%3A00%3A01",
                Some("rack1-node"),
            ),
            ("rack=r1&mac=52:54:00:00:00:02", Some("rack1")),
            ("uuid=0a-b", Some("default")),
            ("uuid=0a-b&rack=r9", Some("by-uuid")),
            ("uuid=0A-B&rack=r9&mac=52:54:00:00:00:01", Some("by-uuid")),
        ];
        for (query, want) in table {
            let got = inv
                .select(&Facts::from_query(query))
                .map(|g| g.name.as_str());
            assert_eq!(got, *want, "query {query:?}");
        }
        // Without a default group, an unknown machine matches nothing.
        let inv = load(
            dir.path(),
            &with_groups("  - name: one\n    profile: p\n    selector: {mac: 52:54:00:00:00:01}\n"),
        )
        .unwrap();
        assert!(inv
            .select(&Facts::from_query("mac=52:54:00:00:00:02"))
            .is_none());
    }

    #[test]
    fn ambiguity_table() {
        let dir = tempfile::tempdir().unwrap();
        image(dir.path(), "img");
        // (groups, error fragment or None when the inventory is fine)
        let table: &[(&str, Option<&str>)] = &[
            (
                "  - name: a\n    profile: p\n  - name: b\n    profile: p\n",
                Some("inv.yaml:7: groups[1].selector: groups \"a\" (line 5) and \"b\" (line 7) are ambiguous: both are default groups"),
            ),
            (
                "  - name: a\n    profile: p\n    selector: {mac: 52:54:00:00:00:01}\n  - name: b\n    profile: p\n    selector: {hostname: n1}\n",
                Some("groups \"a\" (line 5) and \"b\" (line 8) are ambiguous: a machine with hostname=n1, mac=52:54:00:00:00:01 matches both"),
            ),
            (
                "  - name: a\n    profile: p\n    selector: {mac: 52:54:00:00:00:01}\n  - name: b\n    profile: p\n    selector: {mac: 52-54-00-00-00-01}\n",
                Some("are ambiguous"),
            ),
            (
                "  - name: a\n    profile: p\n    selector: {mac: 52:54:00:00:00:01}\n  - name: b\n    profile: p\n    selector: {mac: 52:54:00:00:00:02}\n",
                None,
            ),
            (
                "  - name: a\n    profile: p\n    selector: {rack: r1, row: x}\n  - name: b\n    profile: p\n    selector: {rack: r2, row: x}\n",
                None,
            ),
            (
                "  - name: a\n    profile: p\n    selector: {rack: r1}\n  - name: b\n    profile: p\n    selector: {rack: r1, row: x}\n",
                None,
            ),
        ];
        for (groups, want) in table {
            let r = load(dir.path(), &with_groups(groups));
            match (r, want) {
                (Ok(_), None) => {}
                (Err(e), Some(frag)) => {
                    assert!(e.to_string().contains(frag), "{e}\nwanted {frag}")
                }
                (Ok(_), Some(frag)) => panic!("loaded, wanted error {frag}\n{groups}"),
                (Err(e), None) => panic!("{e}\n{groups}"),
            }
        }
    }

    #[test]
    fn inventory_errors_name_file_line_key() {
        let dir = tempfile::tempdir().unwrap();
        image(dir.path(), "img");
        let table: &[(&str, &str)] = &[
            (
                "profiles:\n  - name: p\n    image: img\n    kernel: x\n",
                "inv.yaml:4:5: profiles[0].kernel: unknown field `kernel`, expected one of `name`, `image`",
            ),
            (
                "profiles:\n  - name: p\n    image: img\n    boot: disk\n",
                "inv.yaml:4:11: profiles[0].boot: unknown variant `disk`, expected `ram` or `disk-state`",
            ),
            (
                "profiles:\n  - name: p\n    image: img\n    transport: ftp\n",
                "profiles[0].transport: unknown variant `ftp`",
            ),
            (
                "profiles:\n  - name: p\n    image: nowhere\n",
                "inv.yaml:3: profiles[0].image: image folder",
            ),
            (
                "profiles:\n  - name: p\n    image: img\ngroups:\n  - name: g\n    profile: q\n",
                "inv.yaml:6: groups[0].profile: no profile named \"q\" (profiles: p)",
            ),
            (
                "profiles:\n  - name: p\n    image: img\ngroups:\n  - name: g\n    profile: p\n    selector:\n      mac: 52:54:00\n",
                "inv.yaml:7: groups[0].selector: \"52:54:00\" is not a MAC address",
            ),
            (
                "profiles:\n  - name: p\n    image: img\ngroups:\n  - name: g\n    profile: p\n    selector:\n      rack: [1]\n",
                "groups[0].selector: selector \"rack\": expected a string",
            ),
            (
                "profiles:\n  - name: p\n    image: img\n  - name: p\n    image: img\n",
                "inv.yaml:4: profiles[1].name: a second profile named \"p\"",
            ),
            (
                "profiles:\n  - name: p\n    image: img\n    cloud_config: missing.j2\n",
                "inv.yaml:4: profiles[0].cloud_config: reading",
            ),
            ("groups: 3\n", "inv.yaml:1:9: groups: invalid type"),
        ];
        for (yaml, want) in table {
            let e = load(dir.path(), yaml).unwrap_err().to_string();
            assert!(e.contains(want), "{e}\nwanted {want}");
        }
    }

    #[test]
    fn templates_render_metadata_and_facts() {
        let dir = tempfile::tempdir().unwrap();
        image(dir.path(), "img");
        std::fs::write(
            dir.path().join("t.j2"),
            "#cloud-config\nhostname: {{ metadata.name }}\nwrite_files:\n  - path: /etc/facts\n    content: \"{{ mac }} {{ uuid }} {{ serial }} {{ ip }} {{ public_url }} {{ request.query.rack }} {{ metadata.nested.k }} {{ group }} {{ profile }}\"\n",
        )
        .unwrap();
        let inv = load(
            dir.path(),
            "profiles:\n  - name: p\n    image: img\n    cloud_config: t.j2\ngroups:\n  - name: g\n    profile: p\n    selector: {rack: r1}\n    metadata:\n      name: node-a\n      nested: {k: 42}\n",
        )
        .unwrap();
        let ctx = RenderContext {
            facts: Facts::from_query("mac=52-54-00-00-00-0A&uuid=AB-C1&serial=S1&rack=r1"),
            ip: "10.0.0.5".into(),
            public_url: "http://boot:8080".into(),
            etcd_discovery: None,
        };
        let g = inv.select(&ctx.facts).unwrap();
        let out = inv.render_cloud_config(g, &ctx).unwrap();
        assert_eq!(
            out,
            "#cloud-config\nhostname: node-a\nwrite_files:\n  - path: /etc/facts\n    content: \"52:54:00:00:00:0a ab-c1 S1 10.0.0.5 http://boot:8080 r1 42 g p\"\n"
        );
    }

    #[test]
    fn bad_templates_refuse_load() {
        let dir = tempfile::tempdir().unwrap();
        image(dir.path(), "img");
        let inv = |template: &str| {
            std::fs::write(dir.path().join("t.j2"), template).unwrap();
            load(
                dir.path(),
                "profiles:\n  - name: p\n    image: img\n    cloud_config: t.j2\ngroups:\n  - name: g\n    profile: p\n    metadata: {name: a}\n",
            )
        };
        assert!(inv("#cloud-config\nhostname: {{ metadata.name }}\n").is_ok());
        let table: &[(&str, &str)] = &[
            // syntax error: template file and line
            ("#cloud-config\n\nhostname: {{ metadata.name \n", "t.j2:3: profiles[0].cloud_config: template syntax"),
            // undefined metadata key: cannot render
            ("#cloud-config\nhostname: {{ metadata.nope }}\n", "t.j2:2: groups[0] (g): cloud-config template of profile \"p\" does not render for group \"g\" (line 6 of"),
            // renders, but invalid cloud-config
            ("#cloud-config\nhostname: {{ metadata.name }}\ncoreos:\n  units:\n    - name: a.service\n      command: lol\n", "groups[0] (g): rendered cloud-config for group \"g\" (line 6 of"),
            ("hostname: x\n", "is invalid"),
        ];
        for (t, want) in table {
            let e = inv(t).unwrap_err().to_string();
            assert!(e.contains(want), "{e}\nwanted {want}");
        }
    }

    #[test]
    fn etcd_cluster_groups() {
        let dir = tempfile::tempdir().unwrap();
        image(dir.path(), "img");
        let inv = |template: &str, size: &str| {
            std::fs::write(dir.path().join("t.j2"), template).unwrap();
            load(
                dir.path(),
                &format!("profiles:\n  - name: p\n    image: img\n    cloud_config: t.j2\ngroups:\n  - name: g\n    profile: p\n    etcd_cluster: {size}\n"),
            )
        };
        let uses = "#cloud-config\ncoreos:\n  etcd2:\n    discovery: {{ etcd_discovery }}\n";
        let good = inv(uses, "{size: 3}").unwrap();
        assert_eq!(good.groups[0].etcd_cluster, Some(3));
        let ctx = RenderContext {
            etcd_discovery: Some("http://boot:8080/discovery/abc".into()),
            ..RenderContext::default()
        };
        let out = good.render_cloud_config(&good.groups[0], &ctx).unwrap();
        assert!(
            out.contains("discovery: http://boot:8080/discovery/abc"),
            "{out}"
        );
        let table: &[(&str, &str, &str)] = &[
            (uses, "{size: 0}", "inv.yaml:8: groups[0].etcd_cluster: size 0 is out of range: expected 1 to 1000"),
            (uses, "{size: 1001}", "size 1001 is out of range"),
            (uses, "{size: 3, extra: 1}", "unknown field `extra`"),
            (uses, "{size: three}", "groups[0].etcd_cluster.size"),
            ("#cloud-config\nhostname: a\n", "{size: 3}", "inv.yaml:8: groups[0].etcd_cluster: profile \"p\"'s cloud_config never uses {{ etcd_discovery }}"),
        ];
        for (t, size, want) in table {
            let e = inv(t, size).unwrap_err().to_string();
            assert!(e.contains(want), "{e}\nwanted {want}");
        }
        // a template that uses the URL for a group without etcd_cluster cannot render
        std::fs::write(dir.path().join("t.j2"), uses).unwrap();
        let e = load(
            dir.path(),
            "profiles:\n  - name: p\n    image: img\n    cloud_config: t.j2\ngroups:\n  - name: g\n    profile: p\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not render for group \"g\""), "{e}");
    }

    #[test]
    fn cloud_config_access_per_group() {
        let dir = tempfile::tempdir().unwrap();
        image(dir.path(), "img");
        let inv = load(
            dir.path(),
            &with_groups(
                "  - name: open\n    profile: p\n\
                 \x20 - name: closed\n    profile: p\n    selector: {mac: 52:54:00:00:00:01}\n    cloud_config_access: booted-ip\n\
                 \x20 - name: explicit\n    profile: p\n    selector: {mac: 52:54:00:00:00:02}\n    cloud_config_access: any\n",
            ),
        )
        .unwrap();
        let access: Vec<CloudConfigAccess> =
            inv.groups.iter().map(|g| g.cloud_config_access).collect();
        assert_eq!(
            access,
            [
                CloudConfigAccess::Any,
                CloudConfigAccess::BootedIp,
                CloudConfigAccess::Any
            ]
        );
        let e = load(
            dir.path(),
            &with_groups("  - name: g\n    profile: p\n    cloud_config_access: booted\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("inv.yaml:7:26: groups[0].cloud_config_access: unknown variant `booted`, expected `any` or `booted-ip`"),
            "{e}"
        );
        let e = load(
            dir.path(),
            "profiles:\n  - name: p\n    image: img\n    cloud_config_access: booted-ip\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("inv.yaml:4:5: profiles[0].cloud_config_access: unknown field"),
            "a group setting, not a profile's: {e}"
        );
    }

    #[test]
    fn lines_of_items() {
        let text = "profiles:\n  - name: a\n    image: x\n\n  - name: b\n    image: y\ngroups:\n- name: g\n  profile: a\n";
        let l = Lines::new(text);
        assert_eq!(l.items("profiles"), vec![1, 4]);
        assert_eq!(l.key_line("profiles", 1, "image"), 6);
        assert_eq!(l.item_line("groups", 0), 8);
        assert_eq!(l.key_line("groups", 0, "profile"), 9);
    }
}
