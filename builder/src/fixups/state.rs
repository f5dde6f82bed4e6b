//! The `state` fixup: services must find their state directories on an
//! empty `/var` (a fresh or wiped state partition, or a diskless boot), not
//! only in the copy the image seeds `/var` with on first boot.
//!
//! Writes `usr/lib/tmpfiles.d/cairn-state.conf` with a `d` line (mode and
//! owner) for:
//!
//! * the homes under `/var` of system users that postinsts create
//!   (`adduser --system --home /var/lib/etcd etcd`: etcd.service runs as
//!   `User=etcd` with its data in `/var/lib/etcd/default` and has no
//!   `StateDirectory=`, so nothing else would make `/var/lib/etcd`);
//! * directories under `/var` postinsts make with `mkdir` (etcd's
//!   `mkdir -m 700 /var/lib/etcd`, systemd's `/var/log/journal`, which
//!   turns on the persistent journal), with the mode a `chmod` or `-m`
//!   gives and the owner a `chown` gives (else the user whose home it is,
//!   else root).
//!
//! Paths that a package's tmpfiles.d already creates (`d`, `D`, `v`, `q`,
//! `Q` lines) are left to it. The same directories are also put in the tree
//! with that mode and owner, so the first-boot copy is right too.

use std::collections::BTreeMap;

use super::permissions::{self, Change};
use super::shell;
use super::users::{self, PostinstAccount};
use super::{put_dir, put_file, Context, FixupError, Report};
use crate::tree::Tree;

const NAME: &str = "state";
pub const CONF: &str = "usr/lib/tmpfiles.d/cairn-state.conf";

/// One directory to create: mode, user, group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    pub mode: u32,
    pub user: String,
    pub group: String,
}

fn under_var(p: &str) -> Option<String> {
    let n = crate::tree::normalize(p)?;
    (n.starts_with("var/") && n.len() > 4).then(|| format!("/{n}"))
}

/// `mkdir [-p] [-m MODE] PATH...` with literal paths under /var.
fn mkdirs(package: &str, script: &str) -> Vec<(String, Option<u32>)> {
    let mut out = Vec::new();
    for cmd in shell::find_commands(script, &["mkdir", "install"]) {
        let words: Vec<Option<&str>> = cmd.iter().map(|w| w.as_deref()).collect();
        if words[0] == Some("install") && !words.contains(&Some("-d")) {
            continue;
        }
        let mut mode = None;
        let mut i = 1;
        while i < words.len() {
            match words[i] {
                Some("-m") | Some("--mode") => {
                    mode = words
                        .get(i + 1)
                        .copied()
                        .flatten()
                        .and_then(|m| u32::from_str_radix(m, 8).ok());
                    i += 1;
                }
                Some(w) if w.starts_with("--mode=") => mode = u32::from_str_radix(&w[7..], 8).ok(),
                Some(w) if w.starts_with('-') => {}
                Some(w) => {
                    if let Some(p) = under_var(w) {
                        out.push((p, mode));
                    }
                }
                None => tracing::debug!(
                    package,
                    command = shell::display(&cmd),
                    "mkdir of a computed path skipped"
                ),
            }
            i += 1;
        }
    }
    out
}

/// Paths some tmpfiles.d file of the tree already creates.
fn tmpfiles_created(tree: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["usr/lib/tmpfiles.d", "etc/tmpfiles.d"] {
        for (k, _) in tree.children(dir) {
            if k == CONF {
                continue;
            }
            for line in tree.read_text(k).unwrap_or_default().lines() {
                let mut w = line.split_whitespace();
                let (Some(t), Some(p)) = (w.next(), w.next()) else {
                    continue;
                };
                if ["d", "D", "v", "q", "Q"]
                    .contains(&t.trim_end_matches(['!', '-', '=', '~', '^']))
                {
                    out.push(p.trim_end_matches('/').to_string());
                }
            }
        }
    }
    out
}

/// The state directories the image's postinsts would have made.
pub fn state_dirs(tree: &Tree, ctx: &Context<'_>) -> BTreeMap<String, StateDir> {
    let users = users::read_users(tree);
    let group_name = |gid: u32| {
        tree.read_text("etc/group")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() == 4 && f[2].parse() == Ok(gid)).then(|| f[0].to_string())
            })
            .unwrap_or_else(|| "root".into())
    };
    let mut dirs: BTreeMap<String, StateDir> = BTreeMap::new();
    // Homes of postinst-created system users.
    for (_, acct) in users::postinst_accounts(ctx) {
        let PostinstAccount::SystemUser { name, .. } = &acct else {
            continue;
        };
        let Some(home) = acct.home().and_then(|h| under_var(&h)) else {
            continue;
        };
        let Some(u) = users.iter().find(|u| &u.name == name) else {
            continue;
        };
        dirs.insert(
            home,
            StateDir {
                mode: 0o755,
                user: u.name.clone(),
                group: group_name(u.gid),
            },
        );
    }
    for (pkg, script) in ctx.postinsts() {
        for (path, mode) in mkdirs(pkg, script) {
            let owner = users
                .iter()
                .find(|u| under_var(&u.home).as_deref() == Some(path.as_str()));
            let e = dirs.entry(path).or_insert_with(|| StateDir {
                mode: 0o755,
                user: owner.map_or("root".into(), |u| u.name.clone()),
                group: owner.map_or("root".into(), |u| group_name(u.gid)),
            });
            if let Some(m) = mode {
                e.mode = m;
            }
        }
        // chmod/chown of those directories in the same script.
        for change in permissions::parse_postinst(pkg, script) {
            match change {
                Change::Mode { path, mode, .. } => {
                    if let Some(e) = under_var(&path).and_then(|p| dirs.get_mut(&p)) {
                        e.mode = mode.apply_to(e.mode);
                    }
                }
                Change::Owner {
                    path, user, group, ..
                } => {
                    if let Some(e) = under_var(&path).and_then(|p| dirs.get_mut(&p)) {
                        if let Some(u) = user {
                            e.user = u;
                        }
                        if let Some(g) = group {
                            e.group = g;
                        }
                    }
                }
            }
        }
    }
    // systemd's postinst makes /var/log/journal; its tmpfiles only adjust it (z).
    if let Some(j) = dirs.get_mut("/var/log/journal") {
        if j.user == "root"
            && j.group == "root"
            && users::group_gid(tree, "systemd-journal").is_some()
        {
            j.mode = 0o2755;
            j.group = "systemd-journal".into();
        }
    }
    let handled = tmpfiles_created(tree);
    dirs.retain(|p, _| !handled.contains(p));
    dirs
}

pub fn apply(tree: &mut Tree, ctx: &Context<'_>) -> Result<Report, FixupError> {
    let dirs = state_dirs(tree, ctx);
    if dirs.is_empty() {
        tree.remove_all(CONF);
        return Ok(Report::new(NAME, "no state directories"));
    }
    let mut conf = String::from("# cairn: state directories Debian's postinsts create, so that services\n# find them on an empty /var. Type Path Mode User Group Age\n");
    for (path, d) in &dirs {
        conf.push_str(&format!(
            "d {path} {:04o} {} {} -\n",
            d.mode, d.user, d.group
        ));
        let uid = users::user_uid(tree, &d.user).unwrap_or(0);
        let gid = users::group_gid(tree, &d.group).unwrap_or(0);
        put_dir(tree, NAME, path.trim_start_matches('/'), d.mode, (uid, gid))?;
    }
    put_file(tree, NAME, CONF, conf, 0o644, (0, 0))?;
    let list: Vec<&str> = dirs.keys().map(String::as_str).collect();
    tracing::info!(dirs = ?list, "state directories");
    Ok(Report::new(
        NAME,
        format!("{} state directories: {}", dirs.len(), list.join(" ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixups::testutil::*;

    const ETCD: &str = "case \"$1\" in\n    configure)\n        if ! getent passwd etcd > /dev/null 2>&1 ; then\n            adduser --system --group --disabled-login --disabled-password --home /var/lib/etcd/ etcd\n        fi\n        mkdir -p -m 700 /var/lib/etcd\n        chmod 700 /var/lib/etcd/\n    ;;\nesac\n";

    #[test]
    fn etcd_dbus_and_journal() {
        let mut t = Tree::new_merged_usr();
        file(&mut t, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\netcd:x:999:999::/var/lib/etcd/:/usr/sbin/nologin\nsshd:x:998:65534::/run/sshd:/usr/sbin/nologin\n");
        file(
            &mut t,
            "etc/group",
            "root:x:0:\netcd:x:999:\nsystemd-journal:x:998:\nnogroup:x:65534:\n",
        );
        file(
            &mut t,
            "usr/lib/tmpfiles.d/dbus.conf",
            "d /var/lib/dbus 0755 - - -\nL /var/lib/dbus/machine-id - - - - /etc/machine-id\n",
        );
        let d = def("");
        let pkgs = [
            pkg("etcd-server", &[("postinst", ETCD)]),
            pkg("openssh-server", &[("postinst", "adduser --quiet --system --no-create-home --home /run/sshd --shell /usr/sbin/nologin sshd\n")]),
            pkg("dbus-daemon", &[("postinst", "if [ \"$1\" = configure ]; then\n    mkdir -p /var/lib/dbus\n    dbus-uuidgen --ensure\nfi\n")]),
            pkg("systemd", &[("postinst", "if dpkg --compare-versions \"$2\" lt \"244.1-2~\"; then\n    mkdir -p \"$DPKG_ROOT/var/log/journal\"\nfi\n")]),
        ];
        let r = apply(&mut t, &ctx(&d, &pkgs)).unwrap();
        assert_eq!(
            r.summary,
            "2 state directories: /var/lib/etcd /var/log/journal"
        );
        assert_eq!(
            t.read_text(CONF)
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            [
                "d /var/lib/etcd 0700 etcd etcd -",
                "d /var/log/journal 2755 root systemd-journal -"
            ]
        );
        let e = t.get("var/lib/etcd").unwrap();
        assert_eq!((e.mode, e.uid, e.gid), (0o700, 999, 999));
        let j = t.get("var/log/journal").unwrap();
        assert_eq!((j.mode, j.gid), (0o2755, 998));
    }

    #[test]
    fn nothing_to_do_writes_nothing() {
        let mut t = Tree::new_merged_usr();
        let d = def("");
        let r = apply(&mut t, &ctx(&d, &[])).unwrap();
        assert_eq!(r.summary, "no state directories");
        assert!(!t.contains(CONF));
    }
}
