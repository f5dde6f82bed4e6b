//! Native fixups: what Debian's maintainer scripts would have done, done in
//! Rust on the assembled in-memory tree, limited to what matters on an
//! immutable system (read-only root, `/etc` as an overlay on the state
//! partition, `/var`, `/home` and `/root` populated from the image's copy on
//! first boot).
//!
//! Owns the fixed order in which the fixups run ([`apply_all`]), their
//! shared context, reports and error type. Each fixup lives in its own
//! module as a small named function; `docs/fixups.md` lists them with the
//! Debian script each one replaces. Fixups never run anything from the
//! tree: they read the packages' maintainer scripts as text.

use std::path::Path;
use std::sync::Arc;

use crate::debfile::InstalledPackage;
use crate::definition::{Definition, UpdateKey};
use crate::tree::{Entry, Tree, TreeError};

pub mod agents;
pub mod alternatives;
pub mod basefiles;
pub mod ca;
pub mod cleanup;
pub mod modules;
pub mod overlay;
pub mod pam;
pub mod permissions;
pub mod shell;
pub mod ssh;
pub mod state;
pub mod units;
pub mod users;

/// What every fixup may look at besides the tree.
pub struct Context<'a> {
    pub def: &'a Definition,
    /// Unpacked packages, in installation order.
    pub packages: &'a [InstalledPackage],
    /// Reference time of the build (seconds since the epoch): used where
    /// Debian's tools would write "today" (e.g. shadow's last change day).
    pub source_date_epoch: u64,
    /// The definition's overlay directory, already resolved.
    pub overlay: Option<&'a Path>,
    /// The definition's `update.keys`, read and checked.
    pub update_keys: &'a [UpdateKey],
}

impl Context<'_> {
    pub fn package(&self, name: &str) -> Option<&InstalledPackage> {
        self.packages.iter().find(|p| p.name == name)
    }

    pub fn has_package(&self, name: &str) -> bool {
        self.package(name).is_some()
    }

    /// `(package, postinst text)` for every package that has one, sorted by
    /// package name so that results do not depend on unpack order.
    pub fn postinsts(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = self
            .packages
            .iter()
            .filter_map(|p| p.postinst().map(|s| (p.name.as_str(), s)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }
}

/// What one fixup did, for the build log and manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub name: &'static str,
    pub summary: String,
}

impl Report {
    pub fn new(name: &'static str, summary: impl Into<String>) -> Self {
        Report {
            name,
            summary: summary.into(),
        }
    }
}

/// A fixup that could not do its job, naming the fixup and the path.
#[derive(Debug, thiserror::Error)]
pub enum FixupError {
    #[error("fixup {fixup}: {path}: {source}")]
    Tree {
        fixup: &'static str,
        path: String,
        source: TreeError,
    },
    #[error("fixup {fixup}: {path}: {source}")]
    Io {
        fixup: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("fixup {fixup}: {path}: {message}")]
    Invalid {
        fixup: &'static str,
        path: String,
        message: String,
    },
}

impl FixupError {
    pub fn invalid(
        fixup: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        FixupError::Invalid {
            fixup,
            path: path.into(),
            message: message.into(),
        }
    }

    /// A closure mapping a [`TreeError`] at `path` into this error type.
    pub fn tree(fixup: &'static str, path: &str) -> impl FnOnce(TreeError) -> FixupError {
        let path = path.to_string();
        move |source| FixupError::Tree {
            fixup,
            path,
            source,
        }
    }
}

/// The `origin` recorded on entries a fixup creates: `fixup:<name>`.
pub fn origin(name: &str) -> Arc<str> {
    Arc::from(format!("fixup:{name}"))
}

/// Insert (create or replace) a regular file with explicit mode and owner.
pub(crate) fn put_file(
    tree: &mut Tree,
    fixup: &'static str,
    path: &str,
    data: impl Into<Vec<u8>>,
    mode: u32,
    owner: (u32, u32),
) -> Result<String, FixupError> {
    let mut e = Entry::file(data, mode, &origin(fixup));
    e.uid = owner.0;
    e.gid = owner.1;
    tree.insert(path, e).map_err(FixupError::tree(fixup, path))
}

/// Insert a directory with explicit mode and owner (existing children stay).
pub(crate) fn put_dir(
    tree: &mut Tree,
    fixup: &'static str,
    path: &str,
    mode: u32,
    owner: (u32, u32),
) -> Result<String, FixupError> {
    let mut e = Entry::dir(mode, &origin(fixup));
    e.uid = owner.0;
    e.gid = owner.1;
    tree.insert(path, e).map_err(FixupError::tree(fixup, path))
}

/// Create or replace a symlink.
pub(crate) fn put_symlink(
    tree: &mut Tree,
    fixup: &'static str,
    path: &str,
    target: &str,
) -> Result<String, FixupError> {
    tree.insert(path, Entry::symlink(target, &origin(fixup)))
        .map_err(FixupError::tree(fixup, path))
}

/// Whether `path` exists in the tree as anything (a dangling symlink counts).
pub(crate) fn exists(tree: &Tree, path: &str) -> bool {
    let Some(norm) = crate::tree::normalize(path) else {
        return false;
    };
    let merged = crate::tree::usrmerge(&norm);
    match tree.resolve_parent(&merged) {
        Ok(real) => tree.contains(&real),
        Err(_) => false,
    }
}

/// Run every fixup, in this order:
///
/// 1. `overlay`: the definition's files, first, so the fixups below see them;
/// 2. `users`: passwd, group, shadow, gshadow, sudoers, homes, subuid;
/// 3. `permissions`: `dpkg-statoverride` and `chgrp`/`chmod` of shipped files (needs the groups);
/// 4. `pam`: `/etc/pam.d/common-*` as `pam-auth-update` writes them;
/// 5. `basefiles`: files the Essential packages' postinsts create (os-release, shells, machine-id, ...);
/// 6. `alternatives`: `update-alternatives --install` links;
/// 7. `ca-certificates`: the CA bundle and `/etc/ssl/certs` links;
/// 8. `kernel-modules`: `depmod` (`modules.dep`, `.alias`, their `.bin` indexes, ...);
/// 9. `ssh-host-keys`: no host keys in the image, a unit that makes them on first boot;
/// 10. `units`: enablement symlinks (presets, postinsts, the definition), default target;
/// 11. `state`: tmpfiles.d lines so services find their state directories on an empty `/var`;
/// 12. `cleanup`: the package manager, dangling unit links, the definition's `drop` globs.
pub fn apply_all(tree: &mut Tree, ctx: &Context<'_>) -> Result<Vec<Report>, FixupError> {
    type Fixup = fn(&mut Tree, &Context<'_>) -> Result<Report, FixupError>;
    let fixups: [Fixup; 13] = [
        agents::apply,
        overlay::apply,
        users::apply,
        permissions::apply,
        pam::apply,
        basefiles::apply,
        alternatives::apply,
        ca::apply,
        modules::apply,
        ssh::apply,
        units::apply,
        state::apply,
        cleanup::apply,
    ];
    let mut reports = Vec::with_capacity(fixups.len());
    for f in fixups {
        let r = f(tree, ctx)?;
        tracing::debug!(fixup = r.name, "{}", r.summary);
        reports.push(r);
    }
    Ok(reports)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Small trees and contexts for the fixups' unit tests.
    use std::collections::BTreeMap;

    use super::*;

    pub fn def(extra: &str) -> Definition {
        let text = format!(
            "name: testimg\nversion: 1.2.3\nsuite: bookworm\nkernel: linux-image-amd64\n{extra}"
        );
        crate::definition::parse("test.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn pkg(name: &str, scripts: &[(&str, &str)]) -> InstalledPackage {
        InstalledPackage {
            name: name.to_string(),
            version: "1.0-1".into(),
            architecture: "amd64".into(),
            control: format!("Package: {name}\n"),
            control_files: scripts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            files: Vec::new(),
        }
    }

    pub fn ctx<'a>(def: &'a Definition, packages: &'a [InstalledPackage]) -> Context<'a> {
        Context {
            def,
            packages,
            source_date_epoch: 1_700_000_000,
            overlay: None,
            update_keys: &[],
        }
    }

    pub fn file(tree: &mut Tree, path: &str, data: &str) {
        tree.insert(
            path,
            Entry::file(data.as_bytes().to_vec(), 0o644, &Arc::from("test")),
        )
        .unwrap();
    }

    pub fn link(tree: &mut Tree, path: &str, target: &str) {
        tree.insert(path, Entry::symlink(target, &Arc::from("test")))
            .unwrap();
    }

    pub fn target(tree: &Tree, path: &str) -> Option<String> {
        match &tree.get(path)?.node {
            crate::tree::Node::Symlink(t) => Some(t.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn apply_all_runs_every_fixup_in_order_on_a_small_tree() {
        let d = def("units:\n  enable: [foo.service]\n");
        let mut t = Tree::new_merged_usr();
        file(
            &mut t,
            "usr/share/base-passwd/passwd.master",
            "root:*:0:0:root:/root:/bin/bash\n",
        );
        file(
            &mut t,
            "usr/share/base-passwd/group.master",
            "root:*:0:\nshadow:*:42:\n",
        );
        file(
            &mut t,
            "usr/lib/systemd/system/foo.service",
            "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
        );
        file(
            &mut t,
            "usr/lib/systemd/system/multi-user.target",
            "[Unit]\n",
        );
        file(&mut t, "usr/bin/dpkg", "binary");
        let pkgs = [pkg("base-passwd", &[])];
        let reports = apply_all(&mut t, &ctx(&d, &pkgs)).unwrap();
        let names: Vec<_> = reports.iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            [
                "agents",
                "overlay",
                "users",
                "permissions",
                "pam",
                "basefiles",
                "alternatives",
                "ca-certificates",
                "kernel-modules",
                "ssh-host-keys",
                "units",
                "state",
                "cleanup"
            ]
        );
        assert!(t
            .read_text("etc/passwd")
            .unwrap()
            .starts_with("root:x:0:0:"));
        assert_eq!(
            target(&t, "etc/systemd/system/multi-user.target.wants/foo.service").as_deref(),
            Some("/usr/lib/systemd/system/foo.service")
        );
        assert!(!t.contains("usr/bin/dpkg"));
    }

    #[test]
    fn errors_name_fixup_and_path() {
        let e = FixupError::invalid("users", "etc/passwd", "bad line 3");
        assert_eq!(e.to_string(), "fixup users: etc/passwd: bad line 3");
    }
}
