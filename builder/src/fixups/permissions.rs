//! The `permissions` fixup: owners and modes that postinst scripts set on
//! files their package ships, because a `.deb` can only name root-owned
//! files by uid before the owning system group exists:
//!
//! * `dpkg-statoverride --add USER GROUP MODE PATH` (dbus makes
//!   `dbus-daemon-launch-helper` root:messagebus 4754);
//! * `chown`/`chgrp`/`chmod` with a literal path the same package shipped
//!   (openssh-client makes `ssh-agent` group `_ssh`, mode 2755).
//!
//! Paths built from variables the script computes at run time are skipped
//! with a debug log. Runs after `users`, which creates the groups named.

use super::shell;
use super::users;
use super::{Context, FixupError, Report};
use crate::tree::Tree;

const NAME: &str = "permissions";

/// One ownership or mode change read from a postinst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Owner {
        path: String,
        user: Option<String>,
        group: Option<String>,
        statoverride: bool,
    },
    Mode {
        path: String,
        mode: ModeSpec,
        statoverride: bool,
    },
}

/// An octal mode or a symbolic `[ugoa]*[+-][st]` / `[+-]x`-style change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeSpec {
    Octal(u32),
    Symbolic { set: u32, clear: u32 },
}

impl ModeSpec {
    fn parse(s: &str) -> Option<ModeSpec> {
        if !s.is_empty() && s.len() <= 4 && s.chars().all(|c| c.is_digit(8)) {
            return u32::from_str_radix(s, 8).ok().map(ModeSpec::Octal);
        }
        let (mut set, mut clear) = (0u32, 0u32);
        for clause in s.split(',') {
            let op_at = clause.find(['+', '-', '='])?;
            let (who, rest) = clause.split_at(op_at);
            let (op, perms) = rest.split_at(1);
            if op == "=" || !who.chars().all(|c| "ugoa".contains(c)) {
                return None;
            }
            let who = if who.is_empty() { "a" } else { who };
            let mut bits = 0u32;
            for p in perms.chars() {
                for w in who.chars() {
                    let (shift, special) = match w {
                        'u' => (6, 0o4000),
                        'g' => (3, 0o2000),
                        'o' => (0, 0),
                        _ => (9, 0), // 'a': handled below
                    };
                    let targets: &[(u32, u32)] = if shift == 9 {
                        &[(6, 0o4000), (3, 0o2000), (0, 0)]
                    } else {
                        &[(shift, special)]
                    };
                    for &(sh, sp) in targets {
                        bits |= match p {
                            'r' => 4 << sh,
                            'w' => 2 << sh,
                            'x' => 1 << sh,
                            's' => sp,
                            't' => 0o1000,
                            _ => return None,
                        };
                    }
                }
            }
            if op == "+" {
                set |= bits;
            } else {
                clear |= bits;
            }
        }
        Some(ModeSpec::Symbolic { set, clear })
    }

    /// The mode after this change.
    pub fn apply_to(&self, mode: u32) -> u32 {
        match *self {
            ModeSpec::Octal(m) => m,
            ModeSpec::Symbolic { set, clear } => (mode | set) & !clear,
        }
    }
}

/// Changes in one postinst: `dpkg-statoverride --add` for any path, and
/// `chown`/`chgrp`/`chmod` for literal absolute paths.
pub fn parse_postinst(package: &str, script: &str) -> Vec<Change> {
    let mut out = Vec::new();
    for cmd in shell::find_commands(script, &["dpkg-statoverride", "chown", "chgrp", "chmod"]) {
        let Some(words) = cmd.iter().cloned().collect::<Option<Vec<String>>>() else {
            tracing::debug!(
                package,
                command = shell::display(&cmd),
                "permission change on a computed path skipped"
            );
            continue;
        };
        let prog = words[0].rsplit('/').next().unwrap_or("");
        if prog == "dpkg-statoverride" {
            let Some(at) = words.iter().position(|w| w == "--add") else {
                continue;
            };
            let args: Vec<&String> = words[at + 1..]
                .iter()
                .filter(|w| !w.starts_with("--"))
                .collect();
            if let [user, group, mode, path] = args.as_slice() {
                let Some(mode) = u32::from_str_radix(mode, 8).ok() else {
                    continue;
                };
                out.push(Change::Owner {
                    path: path.to_string(),
                    user: Some(user.to_string()),
                    group: Some(group.to_string()),
                    statoverride: true,
                });
                out.push(Change::Mode {
                    path: path.to_string(),
                    mode: ModeSpec::Octal(mode),
                    statoverride: true,
                });
            }
            continue;
        }
        if words.iter().any(|w| w == "-R" || w == "--recursive") {
            tracing::debug!(
                package,
                command = words.join(" "),
                "recursive permission change skipped"
            );
            continue;
        }
        let args: Vec<&String> = words[1..]
            .iter()
            .filter(|w| !w.starts_with('-') || ModeSpec::parse(w).is_some())
            .collect();
        let Some((spec, paths)) = args.split_first() else {
            continue;
        };
        for path in paths.iter().filter(|p| p.starts_with('/')) {
            let path = path.to_string();
            match prog {
                "chmod" => match ModeSpec::parse(spec) {
                    Some(mode) => out.push(Change::Mode {
                        path,
                        mode,
                        statoverride: false,
                    }),
                    None => {
                        tracing::debug!(package, spec = spec.as_str(), "chmod mode not understood")
                    }
                },
                "chgrp" => out.push(Change::Owner {
                    path,
                    user: None,
                    group: Some(spec.to_string()),
                    statoverride: false,
                }),
                _ => {
                    let (u, g) = match spec.split_once([':', '.']) {
                        Some((u, g)) => (Some(u), Some(g)),
                        None => (Some(spec.as_str()), None),
                    };
                    out.push(Change::Owner {
                        path,
                        user: u.filter(|s| !s.is_empty()).map(String::from),
                        group: g.filter(|s| !s.is_empty()).map(String::from),
                        statoverride: false,
                    });
                }
            }
        }
    }
    out
}

fn id_of(tree: &Tree, name: &str, group: bool) -> Option<u32> {
    if let Some(n) = name.strip_prefix('#') {
        return n.parse().ok();
    }
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    if group {
        users::group_gid(tree, name)
    } else {
        users::user_uid(tree, name)
    }
}

pub fn apply(tree: &mut Tree, ctx: &Context<'_>) -> Result<Report, FixupError> {
    let mut applied = 0;
    for pkg in ctx.packages {
        let Some(script) = pkg.postinst() else {
            continue;
        };
        for change in parse_postinst(&pkg.name, script) {
            let (Change::Owner {
                path, statoverride, ..
            }
            | Change::Mode {
                path, statoverride, ..
            }) = &change;
            let statoverride = *statoverride;
            let Some(real) = tree.resolve(path) else {
                tracing::debug!(
                    package = pkg.name,
                    path,
                    "permission change for a path not in the tree"
                );
                continue;
            };
            // chmod/chown only on what this package shipped (not on files
            // the script creates at run time, which the image does not have).
            if !pkg.files.contains(&real) && !statoverride {
                tracing::debug!(
                    package = pkg.name,
                    path,
                    "permission change for a path the package did not ship"
                );
                continue;
            }
            match &change {
                Change::Owner { user, group, .. } => {
                    let uid = match user {
                        Some(u) => Some(id_of(tree, u, false).ok_or_else(|| {
                            FixupError::invalid(
                                NAME,
                                real.clone(),
                                format!("{}: user {u} does not exist", pkg.name),
                            )
                        })?),
                        None => None,
                    };
                    let gid = match group {
                        Some(g) => Some(id_of(tree, g, true).ok_or_else(|| {
                            FixupError::invalid(
                                NAME,
                                real.clone(),
                                format!("{}: group {g} does not exist", pkg.name),
                            )
                        })?),
                        None => None,
                    };
                    if let Some(e) = tree.get_mut(&real) {
                        e.uid = uid.unwrap_or(e.uid);
                        e.gid = gid.unwrap_or(e.gid);
                    }
                }
                Change::Mode { mode, .. } => {
                    if let Some(e) = tree.get_mut(&real) {
                        e.mode = mode.apply_to(e.mode);
                    }
                }
            }
            tracing::debug!(
                package = pkg.name,
                path = real,
                ?change,
                "permission change applied"
            );
            applied += 1;
        }
    }
    Ok(Report::new(
        NAME,
        format!("{applied} owner/mode changes from postinsts"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixups::testutil::*;

    #[test]
    fn parses_statoverride_and_chgrp_chmod() {
        let dbus = "MESSAGEUSER=messagebus\nLAUNCHER=/usr/lib/dbus-1.0/dbus-daemon-launch-helper\nif ! dpkg-statoverride --list \"$LAUNCHER\" >/dev/null; then\n  dpkg-statoverride --update --add root \"$MESSAGEUSER\" 4754 \"$LAUNCHER\"\nfi\n";
        let c = parse_postinst("dbus", dbus);
        assert_eq!(
            c,
            [
                Change::Owner {
                    path: "/usr/lib/dbus-1.0/dbus-daemon-launch-helper".into(),
                    user: Some("root".into()),
                    group: Some("messagebus".into()),
                    statoverride: true,
                },
                Change::Mode {
                    path: "/usr/lib/dbus-1.0/dbus-daemon-launch-helper".into(),
                    mode: ModeSpec::Octal(0o4754),
                    statoverride: true,
                }
            ]
        );
        let ping = "PROGRAM=$(dpkg-divert --truename /bin/ping)\nchmod u-s $PROGRAM\nchown root:root \"$DPKG_ROOT$1\"\n";
        assert!(parse_postinst("iputils-ping", ping).is_empty());
        assert_eq!(ModeSpec::parse("u+s").unwrap().apply_to(0o755), 0o4755);
        assert_eq!(ModeSpec::parse("u-s").unwrap().apply_to(0o4755), 0o755);
        assert_eq!(ModeSpec::parse("a+x").unwrap().apply_to(0o644), 0o755);
        assert_eq!(ModeSpec::parse("go-w").unwrap().apply_to(0o666), 0o644);
    }

    #[test]
    fn applies_to_shipped_files_only_and_resolves_names() {
        let mut t = Tree::new_merged_usr();
        file(
            &mut t,
            "etc/group",
            "root:x:0:\n_ssh:x:998:\nmessagebus:x:997:\n",
        );
        file(&mut t, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
        file(&mut t, "usr/bin/ssh-agent", "elf");
        file(&mut t, "usr/lib/dbus-1.0/dbus-daemon-launch-helper", "elf");
        file(
            &mut t,
            "etc/modules",
            "# created by a heredoc, not shipped\n",
        );
        let mut ssh = pkg(
            "openssh-client",
            &[("postinst", "set_perms() {\n\tif ! getent group _ssh >/dev/null; then\n\t\taddgroup --system --quiet --force-badname _ssh\n\tfi\n\tif ! dpkg-statoverride --list /usr/bin/ssh-agent >/dev/null; then\n\t\tchgrp _ssh /usr/bin/ssh-agent\n\t\tchmod 2755 /usr/bin/ssh-agent\n\tfi\n}\nchmod 600 /etc/modules\n")],
        );
        ssh.files = vec!["usr/bin/ssh-agent".into()];
        let dbus = pkg(
            "dbus",
            &[("postinst", "dpkg-statoverride --update --add root messagebus 4754 /usr/lib/dbus-1.0/dbus-daemon-launch-helper\n")],
        );
        let d = def("");
        let pkgs = [ssh, dbus];
        let r = apply(&mut t, &ctx(&d, &pkgs)).unwrap();
        assert_eq!(r.summary, "4 owner/mode changes from postinsts");
        let a = t.get("usr/bin/ssh-agent").unwrap();
        assert_eq!((a.uid, a.gid, a.mode), (0, 998, 0o2755));
        let h = t.get("usr/lib/dbus-1.0/dbus-daemon-launch-helper").unwrap();
        assert_eq!((h.uid, h.gid, h.mode), (0, 997, 0o4754));
        assert_eq!(t.get("etc/modules").unwrap().mode, 0o644);
    }

    #[test]
    fn unknown_group_is_an_error() {
        let mut t = Tree::new_merged_usr();
        file(&mut t, "etc/group", "root:x:0:\n");
        file(&mut t, "usr/bin/x", "");
        let mut p = pkg("x", &[("postinst", "chgrp nosuch /usr/bin/x\n")]);
        p.files = vec!["usr/bin/x".into()];
        let d = def("");
        let e = apply(&mut t, &ctx(&d, &[p])).unwrap_err().to_string();
        assert!(e.contains("group nosuch") && e.contains("usr/bin/x"), "{e}");
    }
}
