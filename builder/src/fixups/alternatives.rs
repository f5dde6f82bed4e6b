//! The `alternatives` fixup: the symlinks `update-alternatives --install`
//! makes in postinst scripts (`/usr/bin/awk -> /etc/alternatives/awk ->
//! /usr/bin/mawk`, `iptables` -> iptables-nft, `pager`, `which`, ...).
//!
//! Every `--install <link> <name> <path> <priority> [--slave <link> <name>
//! <path>]...` of every postinst is read (continuation lines and the
//! script's own simple variables handled); for each name the highest
//! priority whose path is in the tree wins (ties: the smaller path), as
//! update-alternatives' automatic mode does. Slaves whose path is missing
//! get no link (an existing link is removed). A `<link>` that is a real file in the tree is left alone,
//! as update-alternatives does without `--force`. Commands with words the
//! reader cannot know (`$1`, command substitution) keep what can be read
//! and log the rest at debug level. The admin files under
//! `/var/lib/dpkg/alternatives` are not written (no dpkg on the image).

use std::collections::BTreeMap;

use super::shell;
use super::{put_symlink, Context, FixupError, Report};
use crate::tree::{Node, Tree};

const NAME: &str = "alternatives";

/// One `--install` with its slaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub link: String,
    pub name: String,
    pub path: String,
    pub priority: i64,
    /// (link, name, path)
    pub slaves: Vec<(String, String, String)>,
    pub package: String,
}

/// Parse the `update-alternatives --install` calls of one postinst.
pub fn parse_postinst(package: &str, script: &str) -> Vec<Install> {
    let mut out = Vec::new();
    for cmd in shell::find_commands(script, &["update-alternatives"]) {
        let Some(at) = cmd.iter().position(|w| w.as_deref() == Some("--install")) else {
            continue;
        };
        let master: Option<Vec<String>> = cmd
            .get(at + 1..at + 5)
            .and_then(|w| w.iter().cloned().collect());
        let Some(m) = master.filter(|m| m.len() == 4) else {
            tracing::debug!(
                package,
                command = shell::display(&cmd),
                "update-alternatives --install with unknown words skipped"
            );
            continue;
        };
        let Ok(priority) = m[3].parse::<i64>() else {
            tracing::debug!(
                package,
                priority = m[3],
                "update-alternatives priority is not a number"
            );
            continue;
        };
        let mut inst = Install {
            link: m[0].clone(),
            name: m[1].clone(),
            path: m[2].clone(),
            priority,
            slaves: Vec::new(),
            package: package.to_string(),
        };
        let mut i = at + 5;
        while i < cmd.len() {
            match cmd[i].as_deref() {
                Some("--slave") => {
                    let s: Option<Vec<String>> = cmd
                        .get(i + 1..i + 4)
                        .and_then(|w| w.iter().cloned().collect());
                    match s.filter(|s| s.len() == 3) {
                        Some(s) => inst.slaves.push((s[0].clone(), s[1].clone(), s[2].clone())),
                        None => tracing::debug!(
                            package,
                            name = inst.name,
                            "slave with unknown words skipped"
                        ),
                    }
                    i += 4;
                }
                Some(_) => i += 1,
                None => {
                    tracing::debug!(
                        package,
                        name = inst.name,
                        "unknown words after --install (slaves skipped)"
                    );
                    i += 1;
                }
            }
        }
        out.push(inst);
    }
    out
}

/// The winning install for each alternative name among those whose master
/// path is in the tree.
pub fn choose(tree: &Tree, installs: &[Install]) -> BTreeMap<String, Install> {
    let mut best: BTreeMap<String, Install> = BTreeMap::new();
    for inst in installs {
        if tree.resolve(&inst.path).is_none() {
            tracing::debug!(
                name = inst.name,
                path = inst.path,
                "alternative path not in the tree"
            );
            continue;
        }
        let better = match best.get(&inst.name) {
            None => true,
            Some(b) => {
                inst.priority > b.priority || (inst.priority == b.priority && inst.path < b.path)
            }
        };
        if better {
            best.insert(inst.name.clone(), inst.clone());
        }
    }
    best
}

/// Make `link -> /etc/alternatives/name -> path`, unless `link` is a real
/// file. Returns whether the link was made.
fn make(tree: &mut Tree, link: &str, name: &str, path: &str) -> Result<bool, FixupError> {
    let alt = format!("etc/alternatives/{name}");
    let canon_link = crate::tree::usrmerge(&crate::tree::normalize(link).unwrap_or_default());
    let real_link = tree.resolve_parent(&canon_link).unwrap_or(canon_link);
    if let Some(e) = tree.get(&real_link) {
        if !matches!(e.node, Node::Symlink(_)) {
            tracing::debug!(
                link,
                name,
                "not replacing a real file with an alternatives link"
            );
            return Ok(false);
        }
    }
    put_symlink(tree, NAME, &alt, path)?;
    put_symlink(tree, NAME, link, &format!("/etc/alternatives/{name}"))?;
    Ok(true)
}

pub fn apply(tree: &mut Tree, ctx: &Context<'_>) -> Result<Report, FixupError> {
    let installs: Vec<Install> = ctx
        .postinsts()
        .into_iter()
        .flat_map(|(p, s)| parse_postinst(p, s))
        .collect();
    let chosen = choose(tree, &installs);
    let (mut masters, mut slaves) = (0, 0);
    for inst in chosen.values() {
        if !make(tree, &inst.link, &inst.name, &inst.path)? {
            continue;
        }
        masters += 1;
        tracing::debug!(
            name = inst.name,
            path = inst.path,
            priority = inst.priority,
            package = inst.package,
            "alternative"
        );
        for (link, name, path) in &inst.slaves {
            if tree.resolve(path).is_some() {
                slaves += usize::from(make(tree, link, name, path)?);
            } else {
                // update-alternatives removes the links of a slave whose file is missing.
                for l in [link.clone(), format!("/etc/alternatives/{name}")] {
                    let canon =
                        crate::tree::usrmerge(&crate::tree::normalize(&l).unwrap_or_default());
                    if matches!(tree.get(&canon).map(|e| &e.node), Some(Node::Symlink(_))) {
                        tree.remove_all(&canon);
                    }
                }
            }
        }
    }
    let names: Vec<&str> = chosen.keys().map(String::as_str).collect();
    tracing::info!(masters, slaves, "alternatives");
    Ok(Report::new(
        NAME,
        format!(
            "{masters} alternatives ({slaves} slaves): {}",
            names.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixups::testutil::*;

    const MAWK: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = \"configure\" ] ; then\n        update-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5 \\\n            --slave /usr/share/man/man1/awk.1.gz awk.1.gz /usr/share/man/man1/mawk.1.gz \\\n            --slave /usr/bin/nawk nawk /usr/bin/mawk \\\n            --slave /usr/share/man/man1/nawk.1.gz nawk.1.gz /usr/share/man/man1/mawk.1.gz\nfi\n";
    const IPTABLES: &str = "if [ \"$1\" = \"configure\" ]; then\n\tupdate-alternatives \\\n\t  --install /usr/sbin/iptables iptables /usr/sbin/iptables-legacy 10 \\\n\t  --slave /usr/sbin/iptables-restore iptables-restore /usr/sbin/iptables-legacy-restore \\\n\t  --slave /usr/sbin/iptables-save iptables-save /usr/sbin/iptables-legacy-save\n        update-alternatives \\\n          --install /usr/sbin/iptables iptables /usr/sbin/iptables-nft 20 \\\n          --slave /usr/sbin/iptables-restore iptables-restore /usr/sbin/iptables-nft-restore \\\n          --slave /usr/sbin/iptables-save iptables-save /usr/sbin/iptables-nft-save\nfi\n";
    const XZ: &str = "#!/bin/sh\nset -e\n\nslave () {\n\tdir=$1 filename=$2 target=$3\n\techo \"--slave $dir/$filename $filename $dir/$target\"\n}\n\nupdate-alternatives --install /usr/bin/lzma lzma /usr/bin/xz 20 $(\n\tslave /usr/share/man/man1 lzma.1.gz xz.1.gz\n\tslave /usr/bin unlzma unxz\n)\n";
    const PROCPS: &str = "check_alternatives() {\n  BINNAME=\"$1\"\n  BINPATH=\"$2\"\n  if [ -e \"$BINPATH\"/\"$BINNAME\".procps ] ; then\n\tupdate-alternatives --install \"$BINPATH\"/\"$BINNAME\" \"$BINNAME\" \\\n\t    \"$BINPATH\"/\"$BINNAME\".procps 50\n  fi\n}\ncheck_alternatives \"uptime\" \"/usr/bin\" \"1\"\n";
    const PAGER_LESS: &str = "update-alternatives --quiet --install /usr/bin/pager pager \\\n      /usr/bin/less 77 --slave /usr/share/man/man1/pager.1.gz \\\n      pager.1.gz /usr/share/man/man1/less.1.gz\n";
    const PAGER_MORE: &str = "if [ \"$(uname -s)\" = \"Linux\" ]; then\n\tupdate-alternatives --install /usr/bin/pager pager /bin/more 50 \\\n\t\t--slave /usr/share/man/man1/pager.1.gz pager.1.gz \\\n\t\t/usr/share/man/man1/more.1.gz\nfi\n";

    #[test]
    fn parses_real_postinst_forms() {
        let m = parse_postinst("mawk", MAWK);
        assert_eq!(m.len(), 1);
        assert_eq!(
            (
                m[0].link.as_str(),
                m[0].name.as_str(),
                m[0].path.as_str(),
                m[0].priority
            ),
            ("/usr/bin/awk", "awk", "/usr/bin/mawk", 5)
        );
        assert_eq!(
            m[0].slaves[1],
            (
                "/usr/bin/nawk".into(),
                "nawk".into(),
                "/usr/bin/mawk".into()
            )
        );
        let i = parse_postinst("iptables", IPTABLES);
        assert_eq!(i.iter().map(|x| x.priority).collect::<Vec<_>>(), [10, 20]);
        let x = parse_postinst("xz-utils", XZ);
        assert_eq!(
            (x[0].name.as_str(), x[0].path.as_str(), x[0].slaves.len()),
            ("lzma", "/usr/bin/xz", 0)
        );
        assert!(parse_postinst("procps", PROCPS).is_empty());
    }

    #[test]
    fn highest_existing_priority_wins_with_slaves() {
        let mut t = Tree::new_merged_usr();
        for f in [
            "usr/bin/mawk",
            "usr/sbin/iptables-legacy",
            "usr/sbin/iptables-nft",
            "usr/sbin/iptables-nft-save",
            "usr/sbin/iptables-legacy-save",
            "usr/bin/xz",
            "usr/bin/more",
            "usr/bin/less",
        ] {
            file(&mut t, f, "");
        }
        // iptables-nft-restore is missing: its slave gets no link.
        link(&mut t, "usr/sbin/iptables-restore", "stale");
        file(&mut t, "usr/share/man/man1/mawk.1.gz", "");
        let d = def("");
        let pkgs = [
            pkg("mawk", &[("postinst", MAWK)]),
            pkg("iptables", &[("postinst", IPTABLES)]),
            pkg("xz-utils", &[("postinst", XZ)]),
            pkg("less", &[("postinst", PAGER_LESS)]),
            pkg("util-linux", &[("postinst", PAGER_MORE)]),
        ];
        let r = apply(&mut t, &ctx(&d, &pkgs)).unwrap();
        assert_eq!(
            r.summary,
            "4 alternatives (4 slaves): awk, iptables, lzma, pager"
        );
        assert_eq!(
            target(&t, "usr/bin/awk").as_deref(),
            Some("/etc/alternatives/awk")
        );
        assert_eq!(
            target(&t, "etc/alternatives/awk").as_deref(),
            Some("/usr/bin/mawk")
        );
        assert_eq!(
            target(&t, "usr/bin/nawk").as_deref(),
            Some("/etc/alternatives/nawk")
        );
        assert_eq!(
            target(&t, "usr/share/man/man1/awk.1.gz").as_deref(),
            Some("/etc/alternatives/awk.1.gz")
        );
        assert_eq!(
            target(&t, "etc/alternatives/iptables").as_deref(),
            Some("/usr/sbin/iptables-nft")
        );
        assert_eq!(
            t.resolve("usr/sbin/iptables").as_deref(),
            Some("usr/sbin/iptables-nft")
        );
        assert_eq!(
            target(&t, "etc/alternatives/iptables-save").as_deref(),
            Some("/usr/sbin/iptables-nft-save")
        );
        assert!(!t.contains("usr/sbin/iptables-restore"));
        assert_eq!(
            target(&t, "etc/alternatives/lzma").as_deref(),
            Some("/usr/bin/xz")
        );
        assert_eq!(
            target(&t, "etc/alternatives/pager").as_deref(),
            Some("/usr/bin/less")
        );
        assert_eq!(t.resolve("/usr/bin/pager").as_deref(), Some("usr/bin/less"));
    }

    #[test]
    fn real_files_are_not_replaced_and_missing_paths_lose() {
        let mut t = Tree::new_merged_usr();
        file(&mut t, "usr/bin/awk", "a real awk");
        let d = def("");
        let pkgs = [pkg("mawk", &[("postinst", MAWK)])];
        let r = apply(&mut t, &ctx(&d, &pkgs)).unwrap();
        assert!(r.summary.starts_with("0 alternatives"), "{}", r.summary);
        file(&mut t, "usr/bin/mawk", "");
        apply(&mut t, &ctx(&d, &pkgs)).unwrap();
        assert_eq!(t.read_text("usr/bin/awk").unwrap(), "a real awk");
        assert!(!t.contains("etc/alternatives/awk"));
    }
}
