//! The `cleanup` fixup, last: what must not or need not be on the image.
//!
//! 1. [`remove_package_manager`]: dpkg and apt, their state, caches,
//!    configuration, units and timers (`dpkg-db-backup.timer`,
//!    `apt-daily*`), `update-alternatives` (it needs dpkg's database; the
//!    `/etc/alternatives` links stay) and `/usr/share/dpkg` (read only by
//!    dpkg's tools). debconf, `invoke-rc.d`/`update-rc.d` and
//!    `deb-systemd-helper` stay: small, and some admin scripts call them.
//! 2. [`drop_globs`]: the definition's `drop` patterns, matched against
//!    `/`-prefixed canonical paths (`/bin/...` in a pattern means
//!    `/usr/bin/...`; `*` does not cross `/`, `**` does). A pattern that
//!    matches a directory's contents leaves the directory. Logs entries and
//!    bytes per pattern.
//! 3. [`dangling_links`]: enablement links in `etc/systemd/system` and
//!    `/etc/alternatives` links whose target went (and links to those),
//!    then `.wants`-style directories left empty.

use std::collections::HashSet;

use globset::{GlobBuilder, GlobMatcher};

use super::{Context, FixupError, Report};
use crate::tree::{Node, Tree};

const NAME: &str = "cleanup";

/// The package manager's files, as glob patterns on `/`-prefixed paths.
pub const PACKAGE_MANAGER: &[&str] = &[
    "/usr/bin/dpkg",
    "/usr/bin/dpkg-*",
    "/usr/sbin/dpkg-*",
    "/usr/bin/apt",
    "/usr/bin/apt-*",
    "/usr/sbin/update-alternatives",
    "/usr/bin/update-alternatives",
    "/usr/lib/apt",
    "/usr/lib/dpkg",
    "/usr/libexec/dpkg",
    "/usr/share/dpkg",
    "/var/lib/dpkg",
    "/var/lib/apt",
    "/var/cache/apt",
    "/var/log/apt",
    "/var/log/dpkg.log",
    "/var/log/alternatives.log",
    "/etc/apt",
    "/etc/dpkg",
    "/etc/cron.daily/dpkg",
    "/etc/cron.daily/apt-compat",
    "/etc/logrotate.d/dpkg",
    "/etc/logrotate.d/apt",
    "/etc/logrotate.d/alternatives",
    "/usr/lib/systemd/system/dpkg-db-backup.*",
    "/usr/lib/systemd/system/apt-daily*",
];

fn matcher(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    // `/bin/x` in a pattern names `/usr/bin/x` on merged /usr.
    let rel = pattern.trim_start_matches('/');
    let merged = format!("/{}", crate::tree::usrmerge(rel));
    Ok(GlobBuilder::new(&merged)
        .literal_separator(true)
        .build()?
        .compile_matcher())
}

/// Remove every entry matching `pattern` (and what is below it); returns
/// (entries, bytes of file content; hard-linked content counted once).
fn remove_matching(tree: &mut Tree, m: &GlobMatcher) -> (usize, u64) {
    let hits: Vec<String> = tree
        .iter()
        .filter(|(k, _)| !k.is_empty() && m.is_match(format!("/{k}")))
        .map(|(k, _)| k.clone())
        .collect();
    let mut entries = 0;
    let mut bytes = 0u64;
    let mut seen: HashSet<usize> = HashSet::new();
    for k in hits {
        if !tree.contains(&k) {
            continue; // went with a matching parent
        }
        let prefix = format!("{k}/");
        for (p, e) in tree
            .iter()
            .filter(|(p, _)| **p == k || p.starts_with(&prefix))
        {
            if let Node::File(d) = &e.node {
                if seen.insert(d.id()) {
                    bytes += d.len();
                }
            }
            let _ = p;
        }
        entries += tree.remove_all(&k);
    }
    (entries, bytes)
}

/// Remove dpkg and apt; returns (entries, bytes).
pub fn remove_package_manager(tree: &mut Tree) -> Result<(usize, u64), FixupError> {
    let (mut n, mut b) = (0, 0);
    for p in PACKAGE_MANAGER {
        let m = matcher(p).map_err(|e| FixupError::invalid(NAME, *p, e.to_string()))?;
        let (e, by) = remove_matching(tree, &m);
        n += e;
        b += by;
    }
    Ok((n, b))
}

/// Apply the definition's `drop` patterns; returns (pattern, entries, bytes).
pub fn drop_globs(
    tree: &mut Tree,
    patterns: &[String],
) -> Result<Vec<(String, usize, u64)>, FixupError> {
    let mut out = Vec::new();
    for p in patterns {
        let m = matcher(p)
            .map_err(|e| FixupError::invalid(NAME, p.clone(), format!("drop pattern: {e}")))?;
        let (e, b) = remove_matching(tree, &m);
        tracing::info!(pattern = p, entries = e, bytes = b, "dropped");
        out.push((p.clone(), e, b));
    }
    Ok(out)
}

fn is_dangling(tree: &Tree, path: &str) -> bool {
    match tree.get(path).map(|e| &e.node) {
        Some(Node::Symlink(t)) if t == "/dev/null" => false,
        Some(Node::Symlink(_)) => tree.resolve(path).is_none(),
        _ => false,
    }
}

/// Remove dangling enablement and alternatives links; returns how many.
pub fn dangling_links(tree: &mut Tree) -> usize {
    let mut removed = 0;
    // Alternatives whose target went, then links pointing at removed ones.
    let alts: Vec<String> = tree
        .children("etc/alternatives")
        .map(|(k, _)| k.clone())
        .collect();
    let mut gone: HashSet<String> = HashSet::new();
    for a in alts {
        if is_dangling(tree, &a) {
            removed += tree.remove_all(&a);
            gone.insert(format!("/{a}"));
        }
    }
    if !gone.is_empty() {
        let doomed: Vec<String> = tree
            .iter()
            .filter_map(|(k, e)| match &e.node {
                Node::Symlink(t) if gone.contains(t) => Some(k.clone()),
                _ => None,
            })
            .collect();
        for k in doomed {
            removed += tree.remove_all(&k);
        }
    }
    // Unit links.
    let units: Vec<String> = tree
        .iter()
        .filter(|(k, _)| k.starts_with("etc/systemd/system/"))
        .map(|(k, _)| k.clone())
        .collect();
    for k in units {
        if is_dangling(tree, &k) {
            tracing::debug!(link = k, "dangling unit link removed");
            removed += tree.remove_all(&k);
        }
    }
    let empty_dirs: Vec<String> = tree
        .children("etc/systemd/system")
        .filter(|(k, e)| {
            e.is_dir()
                && [".wants", ".requires", ".upholds"]
                    .iter()
                    .any(|s| k.ends_with(s))
        })
        .map(|(k, _)| k.clone())
        .filter(|k| tree.children(k).next().is_none())
        .collect();
    for d in empty_dirs {
        tree.remove_all(&d);
    }
    removed
}

pub fn apply(tree: &mut Tree, ctx: &Context<'_>) -> Result<Report, FixupError> {
    let (pm_entries, pm_bytes) = remove_package_manager(tree)?;
    tracing::info!(
        entries = pm_entries,
        bytes = pm_bytes,
        "package manager removed"
    );
    let dropped = drop_globs(tree, &ctx.def.drop)?;
    let dangling = dangling_links(tree);
    let (de, db) = dropped.iter().fold((0, 0), |a, d| (a.0 + d.1, a.1 + d.2));
    Ok(Report::new(
        NAME,
        format!(
            "package manager: {pm_entries} entries ({} KiB); drop patterns: {de} entries ({} KiB); {dangling} dangling links",
            pm_bytes / 1024,
            db / 1024
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixups::testutil::*;

    #[test]
    fn package_manager_goes_and_the_rest_stays() {
        let mut t = Tree::new_merged_usr();
        for f in [
            "usr/bin/dpkg",
            "usr/bin/dpkg-query",
            "usr/bin/apt-get",
            "usr/bin/update-alternatives",
            "var/lib/dpkg/status",
            "var/lib/dpkg/info/bash.list",
            "etc/dpkg/origins/debian",
            "usr/lib/systemd/system/dpkg-db-backup.timer",
            "usr/bin/dpkgish-not",
            "usr/bin/bash",
            "usr/share/debconf/confmodule",
        ] {
            file(&mut t, f, "12345678");
        }
        let (n, b) = remove_package_manager(&mut t).unwrap();
        assert_eq!(
            n, 12,
            "7 files + var/lib/dpkg/info + var/lib/dpkg + etc/dpkg + etc/dpkg/origins"
        );
        assert_eq!(b, 8 * 8);
        assert!(!t.contains("var/lib/dpkg"));
        assert!(!t.contains("usr/bin/update-alternatives"));
        assert!(t.contains("usr/bin/dpkgish-not"));
        assert!(t.contains("usr/bin/bash"));
        assert!(t.contains("usr/share/debconf/confmodule"));
        assert!(t.contains("var/lib"));
    }

    #[test]
    fn drop_globs_leave_the_directory_and_count_bytes() {
        let mut t = Tree::new_merged_usr();
        file(&mut t, "usr/share/doc/bash/copyright", "0123456789");
        file(&mut t, "usr/share/doc/bash/README", "abc");
        file(&mut t, "usr/share/man/man1/bash.1.gz", "zz");
        file(&mut t, "usr/share/locale/de/LC_MESSAGES/bash.mo", "mo");
        file(&mut t, "usr/share/locale/locale.alias", "keep");
        file(&mut t, "usr/bin/keep", "");
        let r = drop_globs(
            &mut t,
            &[
                "/usr/share/doc/**".into(),
                "/usr/share/locale/*/LC_MESSAGES".into(),
                "/bin/keep".into(),
            ],
        )
        .unwrap();
        assert_eq!(r[0], ("/usr/share/doc/**".to_string(), 3, 13));
        assert_eq!(r[1].1, 2);
        assert_eq!(r[2].1, 1, "/bin/keep means /usr/bin/keep");
        assert!(t.get("usr/share/doc").unwrap().is_dir());
        assert!(!t.contains("usr/share/doc/bash"));
        assert!(t.contains("usr/share/locale/de"));
        assert!(t.contains("usr/share/locale/locale.alias"));
        assert!(t.contains("usr/share/man/man1/bash.1.gz"));
        let e = drop_globs(&mut t, &["/usr/[".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/usr/["), "{e}");
    }

    #[test]
    fn dangling_unit_and_alternative_links_go() {
        let mut t = Tree::new_merged_usr();
        file(&mut t, "usr/lib/systemd/system/ssh.service", "");
        file(&mut t, "usr/bin/mawk", "");
        link(
            &mut t,
            "etc/systemd/system/multi-user.target.wants/ssh.service",
            "/lib/systemd/system/ssh.service",
        );
        link(
            &mut t,
            "etc/systemd/system/timers.target.wants/dpkg-db-backup.timer",
            "/usr/lib/systemd/system/dpkg-db-backup.timer",
        );
        link(&mut t, "etc/systemd/system/bar.service", "/dev/null");
        link(&mut t, "etc/alternatives/awk", "/usr/bin/mawk");
        link(
            &mut t,
            "etc/alternatives/awk.1.gz",
            "/usr/share/man/man1/mawk.1.gz",
        );
        link(
            &mut t,
            "usr/local/share/awk.1.gz",
            "/etc/alternatives/awk.1.gz",
        );
        assert_eq!(dangling_links(&mut t), 3);
        assert!(t.contains("etc/systemd/system/multi-user.target.wants/ssh.service"));
        assert!(!t.contains("etc/systemd/system/timers.target.wants"));
        assert!(t.contains("etc/systemd/system/bar.service"));
        assert!(t.contains("etc/alternatives/awk"));
        assert!(!t.contains("etc/alternatives/awk.1.gz"));
        assert!(!t.contains("usr/local/share/awk.1.gz"));
    }
}
