//! Image definitions (`images/*.yaml`): the schema, loading with errors that
//! name file, line and key, and the checks that serde cannot express.
//!
//! Owns nothing but the meaning of the YAML; resolving, fetching and
//! assembling live elsewhere.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// A whole image definition.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Image name: lowercase letters, digits, `-`; used in file names and os-release ID.
    pub name: String,
    /// Image version, compared as systemd-boot compares versions.
    pub version: String,
    /// Debian suite (codename), e.g. `bookworm`.
    pub suite: String,
    /// Archive components.
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Debian mirror base URL; else `--mirror` or the machine's apt sources decide.
    #[serde(default)]
    pub mirror: Option<String>,
    /// Security mirror base URL; else from the machine's apt sources when it has one.
    #[serde(default)]
    pub security_mirror: Option<String>,
    /// Architecture (only amd64 is built and booted today).
    #[serde(default = "default_arch")]
    pub architecture: String,
    /// Kernel package, e.g. `linux-image-amd64`.
    pub kernel: String,
    /// Packages to install (their dependencies and the Essential set come along).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Packages that must not be installed even though something pulls them in
    /// through an alternative.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub units: Units,
    #[serde(default)]
    pub groups: Vec<Group>,
    #[serde(default)]
    pub users: Vec<User>,
    /// Directory of extra files copied over the tree, relative to the definition.
    #[serde(default)]
    pub overlay: Option<PathBuf>,
    /// Glob patterns (absolute paths) removed from the tree after assembly.
    #[serde(default)]
    pub drop: Vec<String>,
    #[serde(default)]
    pub disk: DiskDef,
    #[serde(default)]
    pub initrd: InitrdDef,
    /// Extra kernel command line for the boot entries.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// dm-verity for the root image (default on): `cairn build` appends a
    /// hash tree to `rootfs.squashfs` and every boot entry carries
    /// `cairn.verity=`, so `/init` opens the slot through the kernel's
    /// `verity` target. `false` leaves the bare squashfs (debugging, a
    /// kernel without dm-verity).
    #[serde(default = "default_true")]
    pub verity: bool,
    /// Container images made from files of the tree and preloaded into
    /// Docker at boot (no registry, no network).
    #[serde(default)]
    pub container_images: Vec<ContainerImage>,
    /// A/B updates: the channel `cairn build --sign` makes bundles for and
    /// the public keys the image trusts.
    #[serde(default)]
    pub update: Option<UpdateDef>,
}

/// The `update:` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpdateDef {
    /// Channel of the bundles `cairn build --sign` writes (default
    /// [`DEFAULT_CHANNEL`]; `--channel` overrides).
    #[serde(default)]
    pub channel: Option<String>,
    /// Public key files (`update.pub` from `cairn keygen`), relative to the
    /// definition: copied to `/usr/lib/cairn/update-keys/<file name>`, the
    /// image's trust roots for update manifests.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
}

/// The channel when neither `--channel` nor `update.channel` names one.
pub const DEFAULT_CHANNEL: &str = "stable";

/// Where an image carries its trusted update keys (the agent's default).
pub const UPDATE_KEYS_DIR: &str = "usr/lib/cairn/update-keys";

/// A public key file of `update.keys`, read and checked at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateKey {
    /// File name in the image (`<name>.pub`).
    pub name: String,
    /// The file, resolved against the definition's directory.
    pub path: PathBuf,
    /// Its bytes, copied as they are.
    pub data: Vec<u8>,
    /// Ids of the keys it holds.
    pub key_ids: Vec<String>,
}

/// A container image built from files of the image tree.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContainerImage {
    /// `NAME:TAG`, as `docker run` will know it.
    pub name: String,
    /// Path in the container -> path in the image tree.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, String>,
    /// Symlinks in the container: path -> target.
    #[serde(default)]
    pub links: std::collections::BTreeMap<String, String>,
    /// The default command.
    #[serde(default)]
    pub cmd: Vec<String>,
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}

fn default_arch() -> String {
    "amd64".into()
}

fn default_true() -> bool {
    true
}

/// systemd units to enable, disable or mask beyond Debian's presets.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Units {
    #[serde(default)]
    pub enable: Vec<String>,
    #[serde(default)]
    pub disable: Vec<String>,
    #[serde(default)]
    pub mask: Vec<String>,
    /// The default target (`multi-user.target` unless set).
    #[serde(default)]
    pub default_target: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub gid: Option<u32>,
    /// A system group (gid allocated below 1000).
    #[serde(default = "yes")]
    pub system: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gecos: Option<String>,
    #[serde(default)]
    pub home: Option<String>,
    #[serde(default)]
    pub shell: Option<String>,
    /// Supplementary groups; each must exist (from packages or `groups:`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// `nopasswd` writes `/etc/sudoers.d/<name>` with `NOPASSWD: ALL`.
    #[serde(default)]
    pub sudo: Option<Sudo>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Sudo {
    /// Passwordless sudo for every command.
    Nopasswd,
    /// sudo with the user's password.
    Password,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskDef {
    #[serde(default = "d_disk")]
    pub size: Size,
    #[serde(default = "d_esp")]
    pub esp: Size,
    #[serde(default = "d_slot")]
    pub slot: Size,
    #[serde(default = "d_state")]
    pub state: Size,
    /// Seconds systemd-boot shows its menu (`timeout` in loader.conf); 0:
    /// no menu unless a key is held while it starts.
    #[serde(default = "d_menu_timeout")]
    pub menu_timeout: u32,
}

/// The longest menu timeout a definition may set (seconds).
pub const MAX_MENU_TIMEOUT: u32 = 600;

fn d_menu_timeout() -> u32 {
    cairn_disk::DEFAULT_MENU_TIMEOUT
}

fn d_disk() -> Size {
    Size(4 << 30)
}
fn d_esp() -> Size {
    Size(256 << 20)
}
fn d_slot() -> Size {
    Size(1 << 30)
}
fn d_state() -> Size {
    Size(64 << 20)
}

impl Default for DiskDef {
    fn default() -> Self {
        DiskDef {
            size: d_disk(),
            esp: d_esp(),
            slot: d_slot(),
            state: d_state(),
            menu_timeout: d_menu_timeout(),
        }
    }
}

/// What goes into the initrd beyond `/init`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InitrdDef {
    /// Kernel modules to carry (plus their dependencies) in addition to the defaults.
    #[serde(default)]
    pub modules: Vec<String>,
}

/// A byte size written as `4GiB`, `256MiB`, `512K`, `1G` or a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit such as 4GiB or 256MiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "KB" | "kB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            u => {
                return Err(format!(
                    "invalid size unit {u:?} in {s:?}: expected KiB, MiB, GiB, TiB (or K, M, G, T)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => Size::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, m) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if n >= m && n % m == 0 {
                return write!(f, "{}{unit}", n / m);
            }
        }
        write!(f, "{n}")
    }
}

/// A definition that failed to load, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// `FILE:LINE:COLUMN: key: ...` (schema) or `FILE:LINE: key: ...`
    /// (a later check).
    #[error(transparent)]
    Yaml(#[from] cairn_yaml::Error),
}

/// A loaded definition and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub def: Definition,
    pub path: PathBuf,
    pub text: String,
    /// `update.keys`, read and parsed.
    pub update_keys: Vec<UpdateKey>,
}

impl Loaded {
    /// The directory holding the definition (overlay paths are relative to it).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// `images/default.yaml` -> `images/default.lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.path.with_extension("lock")
    }

    /// The overlay directory, resolved against the definition's directory.
    pub fn overlay_dir(&self) -> Option<PathBuf> {
        self.def.overlay.as_ref().map(|o| self.dir().join(o))
    }

    /// The channel of update bundles: `update.channel`, else [`DEFAULT_CHANNEL`].
    pub fn channel(&self) -> &str {
        self.def
            .update
            .as_ref()
            .and_then(|u| u.channel.as_deref())
            .unwrap_or(DEFAULT_CHANNEL)
    }
}

/// A channel name as update manifests allow it (the channel format's own
/// rule): letters, digits, `.`, `_`, `-`, `~`, not starting with `.`, at
/// most 128 bytes.
pub fn is_channel_name(s: &str) -> bool {
    cairn_formats::channel::manifest::safe_name(s)
}

/// Parse definition text (`path` is only used in messages).
pub fn parse(path: &str, text: &str) -> Result<Definition, DefinitionError> {
    Ok(parse_doc(path, text)?.value)
}

/// The definition with where each key is written, checked.
fn parse_doc(path: &str, text: &str) -> Result<Doc, DefinitionError> {
    let doc = cairn_yaml::from_str::<Definition>(path, text)?;
    validate(&doc)?;
    Ok(doc)
}

type Doc = cairn_yaml::Document<Definition>;

/// A finding about `key` (a path as serde names it: `users[2].uid`) after
/// deserialisation, at the line where the key is written.
fn invalid(doc: &Doc, key: &str, message: String) -> DefinitionError {
    doc.invalid(key, message).into()
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
}

fn validate(doc: &Doc) -> Result<(), DefinitionError> {
    let d = &doc.value;
    if !is_name(&d.name) {
        return Err(invalid(
            doc,
            "name",
            format!(
                "{:?} is not a valid image name: expected lowercase letters, digits and '-'",
                d.name
            ),
        ));
    }
    if d.version.is_empty()
        || !d
            .version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_~^+".contains(c))
    {
        return Err(invalid(
            doc,
            "version",
            format!(
                "{:?} is not a valid version: expected letters, digits and . - _ ~ ^ +",
                d.version
            ),
        ));
    }
    if d.architecture != "amd64" {
        return Err(invalid(
            doc,
            "architecture",
            format!("{:?} is not supported: expected amd64", d.architecture),
        ));
    }
    for m in [&d.mirror, &d.security_mirror].into_iter().flatten() {
        if !(m.starts_with("http://") || m.starts_with("https://")) {
            return Err(invalid(
                doc,
                "mirror",
                format!("{m:?} is not an http:// or https:// URL"),
            ));
        }
    }
    for (i, p) in d.packages.iter().enumerate() {
        if p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        {
            return Err(invalid(
                doc,
                &format!("packages[{i}]"),
                format!("{p:?} is not a Debian package name"),
            ));
        }
    }
    for (i, p) in d.drop.iter().enumerate() {
        if !p.starts_with('/') {
            return Err(invalid(
                doc,
                &format!("drop[{i}]"),
                format!("{p:?} must be an absolute path pattern"),
            ));
        }
        if let Err(e) = globset::Glob::new(p) {
            return Err(invalid(
                doc,
                &format!("drop[{i}]"),
                format!("{p:?} is not a valid glob: {e}"),
            ));
        }
    }
    for (field, list) in [
        ("enable", &d.units.enable),
        ("disable", &d.units.disable),
        ("mask", &d.units.mask),
    ] {
        for (i, u) in list.iter().enumerate() {
            let ok = [
                ".service",
                ".socket",
                ".timer",
                ".target",
                ".path",
                ".mount",
                ".automount",
                ".swap",
                ".slice",
            ]
            .iter()
            .any(|s| u.ends_with(s));
            if !ok {
                return Err(invalid(doc, &format!("units.{field}[{i}]"), format!("{u:?} is not a unit name: expected a suffix such as .service, .socket, .timer or .target")));
            }
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, u) in d.users.iter().enumerate() {
        if !names.insert(&u.name) {
            return Err(invalid(
                doc,
                &format!("users[{i}].name"),
                format!("user {:?} is defined twice", u.name),
            ));
        }
        if u.uid == Some(0) {
            return Err(invalid(
                doc,
                &format!("users[{i}].uid"),
                "uid 0 is root's; pick another".into(),
            ));
        }
    }
    if let Some(u) = &d.update {
        if let Some(c) = &u.channel {
            if !is_channel_name(c) {
                return Err(invalid(doc, "update.channel",
                    format!("{c:?} is not a channel name: expected at most 128 letters, digits, '.', '_', '-', '~' (not starting with '.')"),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, k) in u.keys.iter().enumerate() {
            let shown = k.display().to_string();
            let name = k.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(name) = name.filter(|n| n.ends_with(".pub") && n.len() > 4) else {
                return Err(invalid(doc, &format!("update.keys[{i}]"),
                    format!("{shown:?} is not a public key file: expected a path ending in .pub (cairn keygen writes update.pub)"),
                ));
            };
            if !seen.insert(name.clone()) {
                return Err(invalid(doc, &format!("update.keys[{i}]"),
                    format!("a second key file named {name}: the image keeps them side by side in /{UPDATE_KEYS_DIR}, so file names must differ"),
                ));
            }
        }
    }
    if let Some(c) = &d.cmdline {
        if cairn_formats::cmdline::split_words(c)
            .iter()
            .any(|w| w.split('=').next() == Some(cairn_formats::cmdline::VERITY))
        {
            return Err(invalid(
                doc,
                "cmdline",
                format!(
                    "{}= is written by cairn build from the image's hash tree; remove it (verity: false turns verity off)",
                    cairn_formats::cmdline::VERITY
                ),
            ));
        }
    }
    if d.disk.menu_timeout > MAX_MENU_TIMEOUT {
        return Err(invalid(
            doc,
            "disk.menu_timeout",
            format!(
                "{} seconds: expected 0 (no menu unless a key is held) to {MAX_MENU_TIMEOUT}",
                d.disk.menu_timeout
            ),
        ));
    }
    let min = 8 << 20;
    if d.disk.esp.0 < 64 << 20 {
        return Err(invalid(
            doc,
            "disk.esp",
            format!(
                "{} is too small for a FAT32 ESP: expected at least 64MiB",
                d.disk.esp
            ),
        ));
    }
    if d.disk.slot.0 < min || d.disk.state.0 < min {
        return Err(invalid(
            doc,
            "disk",
            "slot and state must be at least 8MiB".into(),
        ));
    }
    let need = d.disk.esp.0 + 2 * d.disk.slot.0 + d.disk.state.0 + (2 << 20);
    if d.disk.size.0 < need {
        return Err(invalid(
            doc,
            "disk.size",
            format!(
                "{} cannot hold the ESP, two slots and the state partition: expected at least {}",
                d.disk.size,
                Size(need.div_ceil(1 << 20) << 20)
            ),
        ));
    }
    Ok(())
}

/// Load and check a definition file.
pub fn load(path: &Path) -> Result<Loaded, DefinitionError> {
    let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let doc = parse_doc(&path.display().to_string(), &text)?;
    if let Some(o) = &doc.value.overlay {
        let dir = path.parent().unwrap_or(Path::new(".")).join(o);
        if !dir.is_dir() {
            return Err(invalid(
                &doc,
                "overlay",
                format!("{} is not a directory", dir.display()),
            ));
        }
    }
    let update_keys = load_update_keys(path, &doc)?;
    Ok(Loaded {
        def: doc.value,
        path: path.to_path_buf(),
        text,
        update_keys,
    })
}

/// Reads and parses every file of `update.keys`: each must hold at least
/// one cairn public key (`cairn-ed25519 <base64>`), never a secret key.
fn load_update_keys(path: &Path, doc: &Doc) -> Result<Vec<UpdateKey>, DefinitionError> {
    let Some(u) = &doc.value.update else {
        return Ok(Vec::new());
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, k) in u.keys.iter().enumerate() {
        let file = dir.join(k);
        let err = |message: String| invalid(doc, &format!("update.keys[{i}]"), message);
        let data = std::fs::read(&file)
            .map_err(|e| err(format!("reading the update key {}: {e}", file.display())))?;
        let key_text = String::from_utf8(data.clone()).map_err(|_| {
            err(format!(
                "{}: not a cairn public key file (not text)",
                file.display()
            ))
        })?;
        let trusted = cairn_formats::channel::TrustedKeys::parse(&key_text, &file)
            .map_err(|e| err(format!("not a cairn public key file: {e}")))?;
        if trusted.is_empty() {
            return Err(err(format!(
                "{}: no \"cairn-ed25519 <base64>\" line: not a cairn public key file",
                file.display()
            )));
        }
        out.push(UpdateKey {
            name: file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: file,
            data,
            key_ids: trusted.ids(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "name: t\nversion: 1.0\nsuite: bookworm\nkernel: linux-image-amd64\n";

    #[test]
    fn minimal_definition_gets_defaults() {
        let d = parse("t.yaml", MIN).unwrap();
        assert_eq!(d.components, ["main"]);
        assert_eq!(d.disk.size, Size(4 << 30));
        assert_eq!(d.disk.esp, Size(256 << 20));
        assert!(d.packages.is_empty());
    }

    #[test]
    fn verity_is_on_by_default_and_its_word_is_the_builds() {
        assert!(parse("t.yaml", MIN).unwrap().verity);
        assert!(
            !parse("t.yaml", &format!("{MIN}verity: false\n"))
                .unwrap()
                .verity
        );
        let text = format!("{MIN}cmdline: \"quiet cairn.verity=ab:cd:1\"\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(
            e.contains("cmdline") && e.contains("cairn.verity= is written by cairn build"),
            "{e}"
        );
        assert!(parse("t.yaml", &format!("{MIN}cmdline: \"cairn.verityx=1\"\n")).is_ok());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = format!("{MIN}pakages:\n  - systemd\n");
        let e = parse("images/x.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("images/x.yaml:5:"), "{e}");
        assert!(e.contains("unknown field `pakages`"), "{e}");
        assert!(e.contains("expected one of"), "{e}");
    }

    #[test]
    fn nested_unknown_key_names_the_path() {
        let text = format!("{MIN}users:\n  - name: core\n    shel: /bin/bash\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:7:"), "{e}");
        assert!(e.contains("users[0]"), "{e}");
        assert!(e.contains("unknown field `shel`"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let text = format!("{MIN}packages: systemd\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(e.contains("x.yaml:5:"), "{e}");
        assert!(e.contains("packages: invalid type"), "{e}");
    }

    #[test]
    fn missing_required_key() {
        let e = parse("x.yaml", "name: t\nversion: 1\nsuite: bookworm\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `kernel`"), "{e}");
    }

    #[test]
    fn sizes_parse_and_errors_name_the_key() {
        assert_eq!(Size::parse("4GiB").unwrap(), Size(4 << 30));
        assert_eq!(Size::parse("256M").unwrap(), Size(256 << 20));
        assert_eq!(Size::parse("1000").unwrap(), Size(1000));
        assert!(Size::parse("4 parsecs").is_err());
        assert_eq!(Size(256 << 20).to_string(), "256MiB");
        let text = format!("{MIN}disk:\n  size: 4 parsecs\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(
            e.contains("x.yaml:6:") && e.contains("disk.size") && e.contains("parsecs"),
            "{e}"
        );
        let text = format!("{MIN}disk:\n  size: 1GiB\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(e.contains("x.yaml:6: disk.size: 1GiB cannot hold"), "{e}");
    }

    #[test]
    fn the_menu_timeout_defaults_to_3_s_and_is_bounded() {
        let d = parse("x.yaml", MIN).unwrap();
        assert_eq!(d.disk.menu_timeout, 3);
        let d = parse("x.yaml", &format!("{MIN}disk:\n  menu_timeout: 0\n")).unwrap();
        assert_eq!(d.disk.menu_timeout, 0);
        let text = format!("{MIN}disk:\n  state: 64MiB\n  menu_timeout: 601\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(
            e.contains("x.yaml:7: disk.menu_timeout: 601 seconds: expected 0"),
            "{e}"
        );
        let text = format!("{MIN}disk:\n  menu_timeout: -1\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(e.contains("x.yaml:6:") && e.contains("menu_timeout"), "{e}");
    }

    #[test]
    fn findings_point_at_the_key_not_at_a_name_alike() {
        // the first `uid:` and a `- Bad` in a comment come before the one at fault
        let text = format!(
            "{MIN}# packages: [ok]\nusers:\n  - {{name: a, uid: 1000}}\n  - name: b\n    groups: [uid]\n    uid: 0\n"
        );
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:10: users[1].uid: uid 0"), "{e}");
        let text = format!("{MIN}units: {{enable: [a.service], mask: [docker.service, docker]}}\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:5: units.mask[1]:"), "{e}");
    }

    #[test]
    fn bad_values_point_at_their_line() {
        let text = format!("{MIN}packages:\n  - systemd\n  - Bad_Name\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:7: packages[1]:"), "{e}");
        let text = format!("{MIN}units:\n  enable: [docker]\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(
            e.contains("x.yaml:6:") && e.contains("not a unit name"),
            "{e}"
        );
        let text = format!("{MIN}drop:\n  - usr/share/doc\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(
            e.contains("x.yaml:6: drop[0]") && e.contains("absolute"),
            "{e}"
        );
        let e = parse("x.yaml", &MIN.replace("name: t", "name: Bad"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.yaml:1: name:"), "{e}");
    }

    #[test]
    fn users_and_sudo() {
        let text = format!(
            "{MIN}users:\n  - name: core\n    groups: [docker, sudo]\n    sudo: nopasswd\n"
        );
        let d = parse("x.yaml", &text).unwrap();
        assert_eq!(d.users[0].sudo, Some(Sudo::Nopasswd));
        let text = format!("{MIN}users:\n  - name: core\n    sudo: always\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(e.contains("unknown variant `always`"), "{e}");
    }

    #[test]
    fn update_section_parses_and_errors_name_file_line_key() {
        let text = format!("{MIN}update:\n  channel: lab\n  keys: [keys/update.pub]\n");
        let d = parse("x.yaml", &text).unwrap();
        let u = d.update.unwrap();
        assert_eq!(u.channel.as_deref(), Some("lab"));
        assert_eq!(u.keys, [PathBuf::from("keys/update.pub")]);
        let text = format!("{MIN}update:\n  chanel: lab\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:6:"), "{e}");
        assert!(e.contains("update.chanel: unknown field `chanel`"), "{e}");
        let text = format!("{MIN}update:\n  channel: .hidden\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:6: update.channel:"), "{e}");
        // the channel format's limit, not only its characters: refused here,
        // not when the bundle is written
        let text = format!("{MIN}update:\n  channel: {}\n", "c".repeat(129));
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(e.contains("at most 128"), "{e}");
        assert!(parse(
            "x.yaml",
            &format!("{MIN}update:\n  channel: {}\n", "c".repeat(128))
        )
        .is_ok());
        let text = format!("{MIN}update:\n  keys:\n    - keys/update.key\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(
            e.starts_with("x.yaml:7: update.keys[0]:") && e.contains(".pub"),
            "{e}"
        );
        let text = format!("{MIN}update:\n  keys: [a/k.pub, b/k.pub]\n");
        let e = parse("x.yaml", &text).unwrap_err().to_string();
        assert!(e.contains("update.keys[1]") && e.contains("k.pub"), "{e}");
    }

    #[test]
    fn update_keys_are_read_and_checked_at_load() {
        let t = tempfile::tempdir().unwrap();
        let keys = t.path().join("keys");
        let pair = cairn_formats::channel::keygen(&keys).unwrap();
        let def = t.path().join("img.yaml");
        std::fs::write(
            &def,
            format!("{MIN}update:\n  channel: lab\n  keys: [keys/update.pub]\n"),
        )
        .unwrap();
        let l = load(&def).unwrap();
        assert_eq!(l.channel(), "lab");
        assert_eq!(l.update_keys.len(), 1);
        assert_eq!(l.update_keys[0].name, "update.pub");
        assert_eq!(
            l.update_keys[0].key_ids.as_slice(),
            std::slice::from_ref(&pair.key_id)
        );
        assert_eq!(l.update_keys[0].data, std::fs::read(&pair.public).unwrap());
        // a secret key renamed .pub, garbage, an empty file, a missing file
        for (content, why) in [
            (std::fs::read_to_string(&pair.secret).unwrap(), "secret key"),
            ("ssh-ed25519 AAAAC3Nz me@host\n".to_string(), "ssh-ed25519"),
            ("# nothing\n".to_string(), "no \"cairn-ed25519"),
        ] {
            std::fs::write(keys.join("bad.pub"), &content).unwrap();
            std::fs::write(&def, format!("{MIN}update:\n  keys:\n    - keys/bad.pub\n")).unwrap();
            let e = load(&def).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{}:7: update.keys[0]:", def.display())),
                "{e}"
            );
            assert!(e.contains("bad.pub") && e.contains(why), "{e}");
        }
        std::fs::write(&def, format!("{MIN}update:\n  keys: [keys/none.pub]\n")).unwrap();
        let e = load(&def).unwrap_err().to_string();
        assert!(e.contains("none.pub") && e.contains("reading"), "{e}");
        // no update section: no keys, the default channel
        std::fs::write(&def, MIN).unwrap();
        let l = load(&def).unwrap();
        assert!(l.update_keys.is_empty());
        assert_eq!(l.channel(), DEFAULT_CHANNEL);
    }

    #[test]
    fn the_shipped_definitions_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 1);
    }
}
