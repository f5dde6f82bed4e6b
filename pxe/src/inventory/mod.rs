//! The inventory (`--config` YAML): profiles, groups, selectors, image folders and cloud-config templates;
//! loading with errors that name file, line and key; selector precedence; template rendering.
//!
//! Owns the meaning of the inventory file only; HTTP, TFTP and the machine table live elsewhere.
//! `schema` is the YAML's shape (read with `cairn_yaml`, whose positions name the line of every
//! finding), `profiles`, `groups` and `templates` check their parts.

mod checker;
mod groups;
mod profiles;
mod rollouts;
mod schema;
mod templates;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::facts::Facts;
use checker::Checker;

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
    /// YAML that does not fit the schema (`FILE:LINE:COLUMN: key: ...`), or
    /// whose meaning is wrong (`FILE:LINE: key: ...`: unknown profile,
    /// ambiguous groups, bad template...).
    #[error(transparent)]
    Yaml(#[from] cairn_yaml::Error),
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
    /// Install the image's `disk.raw` to the machine's disk once (the image booted diskless runs
    /// `cairn-update install`), then boot that disk: the server answers the machine's later
    /// netboots with its local disk (see `cairn_lifecycle`).
    Install,
}

/// A profile's `install:` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallSpec {
    /// The disk rule as `cairn_install::Rule` reads it (checked at load).
    pub disk: String,
    /// Write over a disk that holds data.
    pub overwrite: bool,
}

impl Default for InstallSpec {
    fn default() -> InstallSpec {
        InstallSpec {
            disk: "first-empty".into(),
            overwrite: false,
        }
    }
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
    /// `boot: install`: the installer's settings.
    pub install: Option<InstallSpec>,
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

/// One selector of a group held against a machine's facts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SelectorCheck<'a> {
    /// The selector's key (`mac`, `uuid`, `hostname`, `serial` or a label).
    pub key: &'a str,
    /// The value the group wants (normalised).
    pub want: &'a str,
    /// The machine's value for the key (normalised), if it sent one.
    pub seen: Option<&'a str>,
    /// Whether they are equal.
    pub matched: bool,
}

impl Group {
    /// Every selector of the group against the facts, in key order: the one rule of matching that
    /// [`Group::matches`] (hence [`Inventory::select`]) and `--explain` share.
    pub fn check_selectors<'a>(
        &'a self,
        facts: &'a Facts,
    ) -> impl Iterator<Item = SelectorCheck<'a>> + 'a {
        self.selector.iter().map(|(k, v)| {
            let seen = facts.labels.get(k).map(String::as_str);
            SelectorCheck {
                key: k,
                want: v,
                seen,
                matched: seen == Some(v.as_str()),
            }
        })
    }

    /// True when every selector matches the facts.
    pub fn matches(&self, facts: &Facts) -> bool {
        self.check_selectors(facts).all(|c| c.matched)
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
    /// manifest.json's dm-verity parameters of the root image inside
    /// `pxe-initrd.img`: machine scripts pass them as `cairn.verity=`.
    pub verity: Option<cairn_formats::verity::Verity>,
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
    /// Every bundle of each channel, newest first.
    pub bundles: BTreeMap<String, Vec<crate::updates::Channel>>,
    /// `rollouts:`: versions going out in waves, at most one per channel.
    pub rollouts: Vec<cairn_lifecycle::Plan>,
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
        let doc = cairn_yaml::from_str::<schema::RawInventory>(&path.display().to_string(), text)?;
        let raw = doc.value;
        let cx = Checker::new(path, doc.positions);
        let mut env = templates::environment();
        let p = profiles::check(&cx, raw.profiles, &mut env)?;
        let groups = groups::check(&cx, raw.groups, &p.profiles, &p.names, &env)?;
        groups::check_ambiguity(&cx, &groups)?;
        let bundles = offered_updates(&cx, &raw.updates, p.bundles)?;
        // the `updates:` folders are image folders too: their netboot files are served, and a
        // diskless machine whose profile's image failed there boots its last good one from them
        let mut images = p.images;
        for dir in &raw.updates {
            if let Ok(image) = profiles::read_image(&cx.base.join(dir)) {
                images
                    .entry(format!("{}-{}", image.name, image.version))
                    .or_insert(image);
            }
        }
        let rollouts = rollouts::check(&cx, raw.rollouts, &bundles, &groups)?;
        let channels = bundles
            .iter()
            .filter_map(|(name, list)| list.first().map(|b| (name.clone(), b.clone())))
            .collect();
        let inventory = Inventory {
            path: path.to_path_buf(),
            profiles: p.profiles,
            groups,
            images,
            channels,
            bundles,
            rollouts,
            env,
        };
        templates::check_groups(&cx, &inventory)?;
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
        template.render(templates::template_vars(group, profile, ctx))
    }
}

/// Every bundle per channel (newest first), from the profiles' image folders
/// and the `updates:` folders (each of which must hold a bundle).
fn offered_updates(
    cx: &Checker<'_>,
    updates: &[PathBuf],
    mut bundles: Vec<crate::updates::Channel>,
) -> Result<BTreeMap<String, Vec<crate::updates::Channel>>, InventoryError> {
    for (i, dir) in updates.iter().enumerate() {
        let dir = cx.base.join(dir);
        match crate::updates::read_bundle(&dir) {
            Ok(Some(b)) => bundles.push(b),
            Ok(None) => {
                return Err(cx.invalid(
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
            Err(m) => return Err(cx.invalid("updates", i, "", m)),
        }
    }
    crate::updates::by_channel(bundles).map_err(|m| {
        InventoryError::Yaml(cairn_yaml::Error::Invalid {
            file: cx.shown.clone(),
            line: cx.line("updates"),
            key: "updates".into(),
            message: m,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_formats::image_dir;

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
                "inv.yaml:4:11: profiles[0].boot: unknown variant `disk`, expected one of `ram`, `disk-state`, `install`",
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
            // flow style, and `profile:` written earlier inside a block
            // scalar of the same group: the line of the key itself
            (
                "profiles: [{name: p, image: img}]\ngroups:\n  - {name: a, profile: p, selector: {rack: r1}}\n  - name: h\n    metadata:\n      note: |\n        profile: old\n    profile: q\n",
                "inv.yaml:8: groups[1].profile: no profile named \"q\" (profiles: p)",
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
}
