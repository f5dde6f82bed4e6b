//! The `units` fixup: systemd unit enablement without running systemctl,
//! in this order:
//!
//! 1. what postinst scripts enable on a fresh install
//!    (`deb-systemd-helper enable`, `systemctl enable`; debhelper blocks
//!    guarded by `deb-systemd-helper debian-installed`, which is false on a
//!    fresh install, are skipped: that is why Debian does not enable
//!    `ssh.socket`);
//! 2. systemd preset files (`usr/lib/systemd/system-preset`,
//!    `etc/systemd/system-preset`): `enable` lines (globs, instance lists),
//!    and `disable` lines other than the catch-all `disable *`;
//! 3. cairn's own units (`cairn-ssh-keygen.service`,
//!    `cairn-ssh-keygen-rsa.service`, the agents');
//! 4. the definition: `units.enable` (an error names a unit that is not in
//!    the tree), `units.disable`, `units.mask` (link to `/dev/null`) and the
//!    default target (`multi-user.target` unless set).
//!
//! Enabling reads the unit's `[Install]` section (`WantedBy=`,
//! `RequiredBy=`, `UpheldBy=`, `Alias=`, `Also=`, `DefaultInstance=`) and
//! makes the links `systemctl enable` makes under `etc/systemd/system`,
//! pointing at the unit file's absolute path.

use std::collections::{BTreeMap, BTreeSet};

use super::shell;
use super::ssh::{KEYGEN_RSA_UNIT, KEYGEN_UNIT};
use super::{put_symlink, Context, FixupError, Report};
use crate::tree::{Node, Tree};

const NAME: &str = "units";

/// `(cairn's unit, the unit it replaces)`: Debian's unit, enabled by a
/// preset, is disabled (not masked: `units.enable` can bring it back).
/// `systemd-boot-update.service` replaces the loader on the ESP, which
/// both slots share, before `sysinit.target` on every boot, a new slot's
/// first one included; `cairn-loader-update.service` runs the same
/// `bootctl update` only once the slot passed the health gate
/// (`boot-complete.target`).
pub const REPLACED_UNITS: &[(&str, &str)] =
    &[("cairn-loader-update.service", "systemd-boot-update.service")];
const ETC: &str = "etc/systemd/system";
/// Where unit files are looked up, in systemd's order.
const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
];

/// A unit's `[Install]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallSection {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub upheld_by: Vec<String>,
    pub alias: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
}

impl InstallSection {
    pub fn is_empty(&self) -> bool {
        self.wanted_by.is_empty()
            && self.required_by.is_empty()
            && self.upheld_by.is_empty()
            && self.alias.is_empty()
            && self.also.is_empty()
    }
}

/// Parse the `[Install]` section of a unit file (continuation lines,
/// comments and empty assignments that reset a list are handled).
pub fn parse_install(text: &str) -> InstallSection {
    let mut s = InstallSection::default();
    let mut in_install = false;
    let mut pending = String::new();
    for raw in text.lines() {
        if let Some(x) = raw.strip_suffix('\\') {
            pending.push_str(x);
            pending.push(' ');
            continue;
        }
        pending.push_str(raw);
        let line = std::mem::take(&mut pending);
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if l.starts_with('[') {
            in_install = l == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        let list = match k {
            "WantedBy" => &mut s.wanted_by,
            "RequiredBy" => &mut s.required_by,
            "UpheldBy" => &mut s.upheld_by,
            "Alias" => &mut s.alias,
            "Also" => &mut s.also,
            "DefaultInstance" => {
                s.default_instance = (!v.is_empty()).then(|| v.to_string());
                continue;
            }
            _ => continue,
        };
        if v.is_empty() {
            list.clear();
        } else {
            list.extend(v.split_whitespace().map(String::from));
        }
    }
    s
}

/// `getty@tty1.service` -> (`getty`, Some(`tty1`), `service`).
fn split_name(name: &str) -> (String, Option<String>, String) {
    let (stem, suffix) = name.rsplit_once('.').unwrap_or((name, ""));
    match stem.split_once('@') {
        Some((p, i)) => (p.to_string(), Some(i.to_string()), suffix.to_string()),
        None => (stem.to_string(), None, suffix.to_string()),
    }
}

fn is_masked(tree: &Tree, name: &str) -> bool {
    matches!(tree.get(&format!("{ETC}/{name}")).map(|e| &e.node), Some(Node::Symlink(t)) if t == "/dev/null")
}

/// The unit file for `name` (a template's file for an instance): its tree
/// path. Alias links shipped in the unit directories are followed.
pub fn find_unit(tree: &Tree, name: &str) -> Option<String> {
    let (prefix, instance, suffix) = split_name(name);
    let mut candidates = vec![name.to_string()];
    if instance.as_deref().is_some_and(|i| !i.is_empty()) {
        candidates.push(format!("{prefix}@.{suffix}"));
    }
    for c in candidates {
        for dir in UNIT_DIRS {
            let p = format!("{dir}/{c}");
            let Some(e) = tree.get(&p) else { continue };
            match &e.node {
                Node::File(_) => return Some(p),
                Node::Symlink(t) if t == "/dev/null" => return None,
                Node::Symlink(_) => {
                    // An alias shipped by the package (or a linked unit file).
                    if let Some(real) = tree.resolve(&p) {
                        if matches!(tree.get(&real).map(|e| &e.node), Some(Node::File(_))) {
                            return Some(real);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    None
}

fn specifiers(s: &str, name: &str) -> String {
    let (prefix, instance, _) = split_name(name);
    let stem = name.rsplit_once('.').map_or(name, |x| x.0);
    let inst = instance.unwrap_or_default();
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('i') | Some('I') => out.push_str(&inst),
            Some('p') | Some('P') => out.push_str(&prefix),
            Some('n') => out.push_str(name),
            Some('N') => out.push_str(stem),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Links made while enabling, for reporting.
#[derive(Debug, Default)]
pub struct Enabler {
    pub links: BTreeSet<String>,
    pub enabled: BTreeSet<String>,
}

/// Why a unit could not be enabled.
#[derive(Debug, PartialEq, Eq)]
pub enum EnableError {
    NotFound,
    Masked,
    TemplateWithoutInstance,
}

impl Enabler {
    fn link(&mut self, tree: &mut Tree, path: &str, target: &str) -> Result<(), FixupError> {
        if let Some(e) = tree.get(path) {
            if e.is_dir() {
                return Err(FixupError::invalid(
                    NAME,
                    path,
                    "a directory is in the way of an enablement link",
                ));
            }
            tree.remove_all(path);
        }
        put_symlink(tree, NAME, path, target)?;
        self.links.insert(path.to_string());
        Ok(())
    }

    /// `systemctl enable name`. Units without an `[Install]` section
    /// (static units) are accepted and change nothing.
    pub fn enable(
        &mut self,
        tree: &mut Tree,
        name: &str,
    ) -> Result<Result<(), EnableError>, FixupError> {
        let mut seen = BTreeSet::new();
        self.enable_inner(tree, name, &mut seen)
    }

    fn enable_inner(
        &mut self,
        tree: &mut Tree,
        name: &str,
        seen: &mut BTreeSet<String>,
    ) -> Result<Result<(), EnableError>, FixupError> {
        if !seen.insert(name.to_string()) {
            return Ok(Ok(()));
        }
        if is_masked(tree, name) {
            return Ok(Err(EnableError::Masked));
        }
        let Some(path) = find_unit(tree, name) else {
            return Ok(Err(EnableError::NotFound));
        };
        let text = tree.read_text(&path).unwrap_or_default();
        let install = parse_install(&text);
        let file_name = path.rsplit('/').next().unwrap_or(&path).to_string();
        let (prefix, instance, suffix) = split_name(name);
        // The name the links get: an instance, or the template's default one.
        let link_name = match instance.as_deref() {
            Some("") | None if file_name.contains("@.") => match &install.default_instance {
                Some(d) => format!("{prefix}@{d}.{suffix}"),
                None if install.is_empty() => return Ok(Ok(())),
                None => return Ok(Err(EnableError::TemplateWithoutInstance)),
            },
            _ => name.to_string(),
        };
        let target = format!("/{path}");
        for (list, dir) in [
            (&install.wanted_by, "wants"),
            (&install.required_by, "requires"),
            (&install.upheld_by, "upholds"),
        ] {
            for t in list {
                let t = specifiers(t, &link_name);
                self.link(tree, &format!("{ETC}/{t}.{dir}/{link_name}"), &target)?;
            }
        }
        for a in &install.alias {
            let mut a = specifiers(a, &link_name);
            // Alias=foo@.service of an instance names the same instance.
            if let (Some(inst), Some((ap, asuf))) =
                (split_name(&link_name).1, a.clone().split_once("@."))
            {
                a = format!("{ap}@{inst}.{asuf}");
            }
            if a != link_name {
                self.link(tree, &format!("{ETC}/{a}"), &target)?;
            }
        }
        if !install.is_empty() {
            self.enabled.insert(link_name.clone());
        }
        for also in install.also.clone() {
            match self.enable_inner(tree, &also, seen)? {
                Ok(()) => {}
                Err(e) => tracing::debug!(unit = name, also, ?e, "Also= unit not enabled"),
            }
        }
        Ok(Ok(()))
    }
}

/// `systemctl disable name`: remove the links under `etc/systemd/system`
/// named after the unit or pointing at it (aliases), and those of its
/// `Also=` units. Returns how many links went.
pub fn disable(tree: &mut Tree, name: &str) -> usize {
    let mut names = vec![name.to_string()];
    if let Some(p) = find_unit(tree, name) {
        names.extend(parse_install(&tree.read_text(&p).unwrap_or_default()).also);
    }
    let mut removed = 0;
    for n in names {
        let (prefix, instance, suffix) = split_name(&n);
        let is_template = instance.as_deref() == Some("");
        let doomed: Vec<String> = tree
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ETC}/")))
            .filter_map(|(k, e)| match &e.node {
                Node::Symlink(t) if t != "/dev/null" => {
                    let base = k.rsplit('/').next().unwrap_or(k);
                    let tbase = t.rsplit('/').next().unwrap_or(t);
                    let instance_of = is_template
                        && base.starts_with(&format!("{prefix}@"))
                        && base.ends_with(&format!(".{suffix}"));
                    (base == n || tbase == n || instance_of).then(|| k.clone())
                }
                _ => None,
            })
            .collect();
        for k in doomed {
            removed += tree.remove_all(&k);
        }
    }
    removed
}

/// `systemctl mask name`.
pub fn mask(tree: &mut Tree, name: &str) -> Result<(), FixupError> {
    let p = format!("{ETC}/{name}");
    tree.remove_all(&p);
    put_symlink(tree, NAME, &p, "/dev/null")?;
    Ok(())
}

/// Units a postinst enables on a fresh install, in script order.
pub fn postinst_enables(package: &str, script: &str) -> Vec<String> {
    // Drop debhelper blocks that only run for units enabled before
    // (`deb-systemd-helper debian-installed`), false on a fresh install.
    let mut kept = String::new();
    let mut block = String::new();
    let mut in_block = false;
    for line in script.lines() {
        if line.starts_with("# Automatically added by dh_installsystemd") {
            in_block = true;
        }
        if in_block {
            block.push_str(line);
            block.push('\n');
            if line.starts_with("# End automatically added section") {
                in_block = false;
                if !block.contains("deb-systemd-helper debian-installed") {
                    kept.push_str(&block);
                }
                block.clear();
            }
        } else {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept.push_str(&block);
    let mut out = Vec::new();
    for cmd in shell::find_commands(&kept, &["deb-systemd-helper", "systemctl"]) {
        let words: Vec<Option<&str>> = cmd.iter().map(|w| w.as_deref()).collect();
        let Some(at) = words.iter().position(|w| *w == Some("enable")) else {
            continue;
        };
        if words[..at]
            .iter()
            .any(|w| matches!(w, Some("--user") | Some("--global")))
        {
            tracing::debug!(
                package,
                command = shell::display(&cmd),
                "user unit enablement skipped"
            );
            continue;
        }
        for w in &words[at + 1..] {
            match w {
                Some(u) if u.starts_with('-') => {}
                Some(u) => out.push(u.to_string()),
                None => tracing::debug!(
                    package,
                    command = shell::display(&cmd),
                    "enable of a computed unit name skipped"
                ),
            }
        }
    }
    out
}

/// One preset rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetRule {
    pub enable: bool,
    pub pattern: String,
    pub instances: Vec<String>,
}

/// Preset rules in systemd's order: files sorted by name (etc overriding
/// usr/lib), lines in file order; the first matching rule wins.
pub fn preset_rules(tree: &Tree) -> Vec<PresetRule> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for dir in ["usr/lib/systemd/system-preset", "etc/systemd/system-preset"] {
        for (k, _) in tree.children(dir) {
            let name = k.rsplit('/').next().unwrap_or(k);
            if name.ends_with(".preset") {
                files.insert(name.to_string(), k.clone());
            }
        }
    }
    let mut rules = Vec::new();
    for path in files.values() {
        for line in tree.read_text(path).unwrap_or_default().lines() {
            let mut w = line.split_whitespace();
            let (Some(verb), Some(pattern)) = (w.next(), w.next()) else {
                continue;
            };
            let enable = match verb {
                "enable" => true,
                "disable" => false,
                _ => continue,
            };
            rules.push(PresetRule {
                enable,
                pattern: pattern.to_string(),
                instances: w.map(String::from).collect(),
            });
        }
    }
    rules
}

/// Every unit file name with an `[Install]` section in the unit directories.
fn installable_units(tree: &Tree) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for dir in UNIT_DIRS {
        for (k, e) in tree.children(dir) {
            if !matches!(e.node, Node::File(_)) {
                continue;
            }
            let name = k.rsplit('/').next().unwrap_or(k);
            if name.contains('.')
                && !parse_install(&tree.read_text(k).unwrap_or_default()).is_empty()
            {
                out.insert(name.to_string());
            }
        }
    }
    out
}

fn glob_match(pattern: &str, name: &str) -> bool {
    globset::Glob::new(pattern)
        .map(|g| g.compile_matcher().is_match(name))
        .unwrap_or(pattern == name)
}

/// Symlinks under `etc/systemd/system` as (link, target), sorted: the
/// enablement state of the tree.
pub fn enablement(tree: &Tree) -> Vec<(String, String)> {
    tree.iter()
        .filter(|(k, _)| k.starts_with(&format!("{ETC}/")))
        .filter_map(|(k, e)| match &e.node {
            Node::Symlink(t) => Some((k.clone(), t.clone())),
            _ => None,
        })
        .collect()
}

pub fn apply(tree: &mut Tree, ctx: &Context<'_>) -> Result<Report, FixupError> {
    let mut en = Enabler::default();
    // 1. postinsts
    let mut from_postinst = 0;
    for (pkg, script) in ctx.postinsts() {
        for unit in postinst_enables(pkg, script) {
            match en.enable(tree, &unit)? {
                Ok(()) => from_postinst += 1,
                Err(e) => tracing::debug!(package = pkg, unit, ?e, "postinst enable skipped"),
            }
        }
    }
    // 2. presets
    let rules = preset_rules(tree);
    let (mut preset_on, mut preset_off) = (0, 0);
    if !rules.is_empty() {
        for unit in installable_units(tree) {
            let Some(rule) = rules.iter().find(|r| glob_match(&r.pattern, &unit)) else {
                continue;
            };
            if rule.enable {
                let names: Vec<String> = if rule.instances.is_empty() {
                    vec![unit.clone()]
                } else {
                    let (p, _, s) = split_name(&unit);
                    rule.instances
                        .iter()
                        .map(|i| format!("{p}@{i}.{s}"))
                        .collect()
                };
                for n in names {
                    if en.enable(tree, &n)?.is_ok() {
                        preset_on += 1;
                    }
                }
            } else if rule.pattern != "*" {
                preset_off += usize::from(disable(tree, &unit) > 0);
            }
        }
    }
    // 3. cairn's units, and the units they replace
    for unit in [KEYGEN_UNIT, KEYGEN_RSA_UNIT]
        .into_iter()
        .chain(super::agents::AGENT_UNITS.iter().copied())
    {
        if find_unit(tree, unit).is_some() {
            if let Err(e) = en.enable(tree, unit)? {
                tracing::warn!(unit, ?e, "not enabled");
            }
        }
    }
    let mut replaced = Vec::new();
    for (ours, theirs) in REPLACED_UNITS {
        if find_unit(tree, ours).is_some() && disable(tree, theirs) > 0 {
            replaced.push(format!("{theirs} (by {ours})"));
        }
    }
    // 4. the definition
    let u = &ctx.def.units;
    for unit in &u.enable {
        match en.enable(tree, unit)? {
            Ok(()) => {}
            Err(EnableError::NotFound) => {
                return Err(FixupError::invalid(
                    NAME,
                    format!("{ETC}/{unit}"),
                    format!(
                        "units.enable: unit {unit} is not in the image (no such file in {})",
                        UNIT_DIRS.join(", ")
                    ),
                ))
            }
            Err(EnableError::Masked) => {
                return Err(FixupError::invalid(
                    NAME,
                    format!("{ETC}/{unit}"),
                    format!("units.enable: unit {unit} is masked"),
                ))
            }
            Err(EnableError::TemplateWithoutInstance) => {
                return Err(FixupError::invalid(
                    NAME,
                    format!("{ETC}/{unit}"),
                    format!(
                    "units.enable: {unit} is a template without DefaultInstance=; name an instance"
                ),
                ))
            }
        }
    }
    let mut disabled = 0;
    for unit in &u.disable {
        disabled += disable(tree, unit);
    }
    for unit in &u.mask {
        mask(tree, unit)?;
    }
    let default = u
        .default_target
        .clone()
        .unwrap_or_else(|| "multi-user.target".into());
    let Some(dt) = find_unit(tree, &default) else {
        return Err(FixupError::invalid(
            NAME,
            format!("{ETC}/default.target"),
            format!("units.default_target: {default} is not in the image"),
        ));
    };
    let dlink = format!("{ETC}/default.target");
    tree.remove_all(&dlink);
    put_symlink(tree, NAME, &dlink, &format!("/{dt}"))?;

    let state = enablement(tree);
    tracing::info!(
        postinst = from_postinst,
        preset_enabled = preset_on,
        preset_disabled = preset_off,
        definition = u.enable.len(),
        disabled,
        masked = u.mask.len(),
        links = state.len(),
        default_target = default,
        "units"
    );
    for (l, t) in &state {
        tracing::debug!(link = l, target = t, "enablement link");
    }
    Ok(Report::new(
        NAME,
        format!(
            "{} links in etc/systemd/system ({from_postinst} enables from postinsts, {preset_on} from presets, {} from the definition, {disabled} links disabled, {} masked), default {default}{}",
            state.len(),
            u.enable.len(),
            u.mask.len(),
            if replaced.is_empty() {
                String::new()
            } else {
                format!("; replaced {}", replaced.join(", "))
            }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixups::testutil::*;

    const U: &str = "usr/lib/systemd/system";

    fn unit(t: &mut Tree, name: &str, install: &str) {
        file(
            t,
            &format!("{U}/{name}"),
            &format!("[Unit]\nDescription={name}\n[Service]\nExecStart=/bin/true\n{install}"),
        );
    }

    fn tree() -> Tree {
        let mut t = Tree::new_merged_usr();
        unit(&mut t, "multi-user.target", "");
        unit(&mut t, "graphical.target", "");
        unit(
            &mut t,
            "ssh.service",
            "[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n",
        );
        unit(&mut t, "ssh.socket", "[Install]\nWantedBy=sockets.target\n");
        unit(
            &mut t,
            "getty@.service",
            "[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
        );
        unit(
            &mut t,
            "systemd-networkd.service",
            "[Install]\nWantedBy=multi-user.target\nAlso=systemd-networkd.socket\nAlias=dbus-org.freedesktop.network1.service\n\n# comment\nAlso=systemd-networkd-wait-online.service\n",
        );
        unit(
            &mut t,
            "systemd-networkd.socket",
            "[Install]\nWantedBy=sockets.target\n",
        );
        unit(
            &mut t,
            "systemd-networkd-wait-online.service",
            "[Install]\nWantedBy=network-online.target\n",
        );
        unit(
            &mut t,
            "etcd.service",
            "[Install]\nWantedBy=multi-user.target\nAlias=etcd2.service\n",
        );
        unit(&mut t, "req.service", "[Install]\nRequiredBy=multi-user.target\nUpheldBy=graphical.target\nWantedBy=\nWantedBy=%p-extra.target\n");
        unit(&mut t, "static.service", "");
        unit(
            &mut t,
            "tpl@.service",
            "[Install]\nWantedBy=multi-user.target\n",
        );
        t
    }

    #[test]
    fn install_section_parsing() {
        let i = parse_install("[Unit]\nWantedBy=nope.target\n[Install]\nWantedBy=a.target \\\n  b.target\nWantedBy=c.target\nRequiredBy=\nAlias=x.service\n");
        assert_eq!(i.wanted_by, ["a.target", "b.target", "c.target"]);
        assert!(i.required_by.is_empty());
        assert_eq!(i.alias, ["x.service"]);
    }

    #[test]
    fn enable_makes_systemctl_links() {
        let mut t = tree();
        let mut en = Enabler::default();
        en.enable(&mut t, "ssh.service").unwrap().unwrap();
        en.enable(&mut t, "getty@tty1.service").unwrap().unwrap();
        en.enable(&mut t, "systemd-networkd.service")
            .unwrap()
            .unwrap();
        en.enable(&mut t, "req.service").unwrap().unwrap();
        en.enable(&mut t, "static.service").unwrap().unwrap();
        assert_eq!(
            en.enable(&mut t, "nope.service").unwrap(),
            Err(EnableError::NotFound)
        );
        assert_eq!(
            en.enable(&mut t, "tpl@.service").unwrap(),
            Err(EnableError::TemplateWithoutInstance)
        );
        let s = |p: &str| target(&t, &format!("{ETC}/{p}"));
        assert_eq!(
            s("multi-user.target.wants/ssh.service").as_deref(),
            Some("/usr/lib/systemd/system/ssh.service")
        );
        assert_eq!(
            s("sshd.service").as_deref(),
            Some("/usr/lib/systemd/system/ssh.service")
        );
        assert_eq!(
            s("getty.target.wants/getty@tty1.service").as_deref(),
            Some("/usr/lib/systemd/system/getty@.service")
        );
        assert_eq!(
            s("sockets.target.wants/systemd-networkd.socket").as_deref(),
            Some("/usr/lib/systemd/system/systemd-networkd.socket")
        );
        assert_eq!(
            s("network-online.target.wants/systemd-networkd-wait-online.service").as_deref(),
            Some("/usr/lib/systemd/system/systemd-networkd-wait-online.service")
        );
        assert!(s("dbus-org.freedesktop.network1.service").is_some());
        assert!(s("multi-user.target.requires/req.service").is_some());
        assert!(s("graphical.target.upholds/req.service").is_some());
        assert!(s("req-extra.target.wants/req.service").is_some());
        assert!(
            !t.contains(&format!("{ETC}/multi-user.target.wants/req.service")),
            "WantedBy= reset the list"
        );
        assert!(!t
            .iter()
            .any(|(k, _)| k.ends_with("/static.service") && k.starts_with(ETC)));
        // the default instance of a template
        let mut en2 = Enabler::default();
        en2.enable(&mut t, "getty@.service").unwrap().unwrap();
        assert!(en2
            .links
            .contains(&format!("{ETC}/getty.target.wants/getty@tty1.service")));
    }

    #[test]
    fn postinst_enables_like_debian_fresh_install() {
        let ssh = "# Automatically added by dh_installsystemd/13.11.4\nif [ \"$1\" = \"configure\" ] ; then\n\tdeb-systemd-helper unmask 'ssh.service' >/dev/null || true\n\tif deb-systemd-helper --quiet was-enabled 'ssh.service'; then\n\t\tdeb-systemd-helper enable 'ssh.service' >/dev/null || true\n\telse\n\t\tdeb-systemd-helper update-state 'ssh.service' >/dev/null || true\n\tfi\nfi\n# End automatically added section\n# Automatically added by dh_installsystemd/13.11.4\nif [ \"$1\" = \"configure\" ] ; then\n\tif deb-systemd-helper debian-installed 'ssh.socket'; then\n\t\tdeb-systemd-helper unmask 'ssh.socket' >/dev/null || true\n\t\tif deb-systemd-helper --quiet was-enabled 'ssh.socket'; then\n\t\t\tdeb-systemd-helper enable 'ssh.socket' >/dev/null || true\n\t\tfi\n\tfi\n\tdeb-systemd-helper update-state 'ssh.socket' >/dev/null || true\nfi\n# End automatically added section\n\t\tsystemctl unmask ssh.service\n\t\tsystemctl disable ssh.service\n";
        assert_eq!(postinst_enables("openssh-server", ssh), ["ssh.service"]);
        let systemd = "if [ -z \"$2\" ]; then\n    systemctl ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} enable getty@tty1.service || true\n    systemctl ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} enable remote-fs.target || true\nfi\nsystemctl --global enable pipewire.socket\n";
        assert_eq!(
            postinst_enables("systemd", systemd),
            ["getty@tty1.service", "remote-fs.target"]
        );
    }

    #[test]
    fn full_apply_with_presets_definition_mask_and_default() {
        let mut t = tree();
        unit(
            &mut t,
            "fstrim.timer",
            "[Install]\nWantedBy=timers.target\n",
        );
        unit(
            &mut t,
            "foo.service",
            "[Install]\nWantedBy=multi-user.target\n",
        );
        unit(
            &mut t,
            "bar.service",
            "[Install]\nWantedBy=multi-user.target\n",
        );
        unit(&mut t, KEYGEN_UNIT, "[Install]\nWantedBy=ssh.service\n");
        unit(&mut t, KEYGEN_RSA_UNIT, "[Install]\nWantedBy=ssh.service\n");
        unit(
            &mut t,
            "systemd-boot-update.service",
            "[Install]\nWantedBy=sysinit.target\n",
        );
        unit(
            &mut t,
            "cairn-loader-update.service",
            "[Install]\nWantedBy=boot-complete.target\n",
        );
        file(
            &mut t,
            "usr/lib/systemd/system-preset/90-x.preset",
            "enable foo.*\ndisable fstrim.timer\nenable getty@.service tty2\nenable systemd-boot-update.service\ndisable *\n",
        );
        let d = def(
            "units:\n  enable: [systemd-networkd.service, etcd.service]\n  disable: [etcd.service]\n  mask: [bar.service]\n  default_target: graphical.target\n",
        );
        let pkgs = [
            pkg(
                "openssh-server",
                &[(
                    "postinst",
                    "deb-systemd-helper enable 'ssh.service' >/dev/null || true\n",
                )],
            ),
            pkg(
                "util-linux",
                &[(
                    "postinst",
                    "deb-systemd-helper enable 'fstrim.timer' >/dev/null || true\n",
                )],
            ),
            pkg(
                "dpkg",
                &[(
                    "postinst",
                    "deb-systemd-helper enable 'dpkg-db-backup.timer' >/dev/null || true\n",
                )],
            ),
        ];
        let r = apply(&mut t, &ctx(&d, &pkgs)).unwrap();
        assert!(
            r.summary.contains("default graphical.target"),
            "{}",
            r.summary
        );
        let s = |p: &str| target(&t, &format!("{ETC}/{p}"));
        assert!(s("multi-user.target.wants/ssh.service").is_some());
        assert!(
            s("timers.target.wants/fstrim.timer").is_none(),
            "preset disable wins over postinst"
        );
        assert!(s("multi-user.target.wants/foo.service").is_some());
        assert!(s("getty.target.wants/getty@tty2.service").is_some());
        assert!(s("multi-user.target.wants/systemd-networkd.service").is_some());
        assert!(s("multi-user.target.wants/etcd.service").is_none());
        assert!(s("etcd2.service").is_none());
        assert_eq!(s("bar.service").as_deref(), Some("/dev/null"));
        assert_eq!(
            s("ssh.service.wants/cairn-ssh-keygen.service").as_deref(),
            Some("/usr/lib/systemd/system/cairn-ssh-keygen.service")
        );
        assert_eq!(
            s("ssh.service.wants/cairn-ssh-keygen-rsa.service").as_deref(),
            Some("/usr/lib/systemd/system/cairn-ssh-keygen-rsa.service")
        );
        assert_eq!(
            s("default.target").as_deref(),
            Some("/usr/lib/systemd/system/graphical.target")
        );
        // Debian's loader update (enabled by the preset) gives way to
        // cairn's, which runs after the health gate
        assert!(
            s("sysinit.target.wants/systemd-boot-update.service").is_none(),
            "{}",
            r.summary
        );
        assert_eq!(
            s("boot-complete.target.wants/cairn-loader-update.service").as_deref(),
            Some("/usr/lib/systemd/system/cairn-loader-update.service")
        );
        assert!(
            r.summary
                .contains("replaced systemd-boot-update.service (by cairn-loader-update.service)"),
            "{}",
            r.summary
        );
        // units that are not in the tree: skipped from postinsts, errors from the definition
        let d = def("units:\n  enable: [docker.service]\n");
        let e = apply(&mut t, &ctx(&d, &[])).unwrap_err().to_string();
        assert!(
            e.contains("docker.service") && e.contains("not in the image"),
            "{e}"
        );
        let d = def("units:\n  enable: [bar.service]\n");
        let e = apply(&mut t, &ctx(&d, &[])).unwrap_err().to_string();
        assert!(e.contains("masked"), "{e}");
    }

    #[test]
    fn default_target_is_multi_user_and_must_exist() {
        let mut t = tree();
        let d = def("");
        apply(&mut t, &ctx(&d, &[])).unwrap();
        assert_eq!(
            target(&t, &format!("{ETC}/default.target")).as_deref(),
            Some("/usr/lib/systemd/system/multi-user.target")
        );
        let d = def("units:\n  default_target: rescue.target\n");
        let e = apply(&mut t, &ctx(&d, &[])).unwrap_err().to_string();
        assert!(e.contains("rescue.target"), "{e}");
    }
}
