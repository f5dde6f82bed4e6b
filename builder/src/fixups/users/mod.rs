//! The `users` fixup: `/etc/passwd`, `/etc/group`, `/etc/shadow` and
//! `/etc/gshadow`, built the way a Debian install would have built them, in
//! this order:
//!
//! 1. the existing files (an overlay may ship them) or base-passwd's
//!    `passwd.master`/`group.master` (base-passwd's postinst), moved to
//!    shadow form as `shadowconfig on` (pwconv/grpconv) does;
//! 2. the definition's groups with an explicit gid and users' explicit uids,
//!    reserved first so nothing below takes them;
//! 3. every `sysusers.d` entry (`g`, `u`, `m`; what `systemd-sysusers`
//!    does in systemd's and others' postinsts);
//! 4. the users and groups postinst scripts create with `adduser`,
//!    `addgroup`, `useradd`, `groupadd`, `usermod -aG` (read as text);
//! 5. the definition's groups and users: home, shell, supplementary groups,
//!    password `*` (key-only login), sudoers.d, authorized_keys, skeleton
//!    files, subuid/subgid ranges.
//!
//! Dynamic system ids are allocated from 999 downward, free as both uid and
//! gid, in the order above (packages sorted by name): the result depends
//! only on the package set and the definition. Owns nothing but these
//! files, the definition users' homes and `/etc/sudoers.d/<user>`.

mod db;
mod declared;
mod postinst;
mod sysusers;

pub use db::*;
pub use declared::*;
pub use postinst::*;
pub use sysusers::*;

use super::{put_dir, put_file, Context, FixupError, Report};
use crate::tree::Tree;

pub(super) const NAME: &str = "users";
/// Highest and lowest dynamically allocated system id.
pub(super) const SYSTEM_MAX: u32 = 999;
pub(super) const SYSTEM_MIN: u32 = 100;
/// First id for the definition's non-system users and groups.
pub(super) const FIRST_REGULAR: u32 = 1000;
pub(super) const NOGROUP: u32 = 65534;
pub(super) const NOLOGIN: &str = "/usr/sbin/nologin";

pub fn apply(tree: &mut Tree, ctx: &Context<'_>) -> Result<Report, FixupError> {
    let day = ctx.source_date_epoch / 86400;
    let (passwd, group) = match (tree.read_text("etc/passwd"), tree.read_text("etc/group")) {
        (Some(p), Some(g)) => (p, g),
        (p, g) => {
            let master_p = tree.read_text("usr/share/base-passwd/passwd.master");
            let master_g = tree.read_text("usr/share/base-passwd/group.master");
            match (p.or(master_p), g.or(master_g)) {
                (Some(p), Some(g)) => (p, g),
                _ => {
                    return Err(FixupError::invalid(
                        NAME,
                        "usr/share/base-passwd/passwd.master",
                        "neither /etc/passwd nor base-passwd's master files are in the tree (is base-passwd installed?)",
                    ))
                }
            }
        }
    };
    let shadow = tree.read_text("etc/shadow");
    let gshadow = tree.read_text("etc/gshadow");
    let mut db = Db::load(
        &passwd,
        &group,
        shadow.as_deref(),
        gshadow.as_deref(),
        day,
        ("etc/passwd", "etc/group"),
    )?;
    let base = (db.users.len(), db.groups.len());
    reserve_definition(&mut db, ctx.def)?;

    let mut items = Vec::new();
    for (path, text) in sysusers_files(tree) {
        items.extend(parse_sysusers(&path, &text));
    }
    let (su, sg) = apply_sysusers(&mut db, &items)?;
    let ops = postinst_accounts(ctx);
    let (pu, pg, homes) = apply_postinst(&mut db, &ops)?;
    for name in &homes {
        let Some(u) = db.user(name).cloned() else {
            continue;
        };
        let rel = crate::tree::normalize(&u.home).unwrap_or_default();
        let volatile = ["run", "proc", "sys", "dev", "tmp"]
            .iter()
            .any(|p| rel == *p || rel.starts_with(&format!("{p}/")));
        if rel.is_empty() || volatile || super::exists(tree, &rel) {
            continue;
        }
        // adduser --system: SYS_DIR_MODE 0755, owned by the user.
        put_dir(tree, NAME, &rel, 0o755, (u.uid, u.gid))?;
    }
    let (du, dg) = apply_definition(tree, &mut db, ctx.def)?;

    let shadow_gid = db.group("shadow").map(|g| g.gid).unwrap_or(42);
    put_file(tree, NAME, "etc/passwd", db.passwd_text(), 0o644, (0, 0))?;
    put_file(tree, NAME, "etc/group", db.group_text(), 0o644, (0, 0))?;
    put_file(
        tree,
        NAME,
        "etc/shadow",
        db.shadow_text(),
        0o640,
        (0, shadow_gid),
    )?;
    put_file(
        tree,
        NAME,
        "etc/gshadow",
        db.gshadow_text(),
        0o640,
        (0, shadow_gid),
    )?;
    tracing::info!(
        base_users = base.0,
        base_groups = base.1,
        sysusers_users = su,
        sysusers_groups = sg,
        postinst_users = pu,
        postinst_groups = pg,
        definition_users = du,
        definition_groups = dg,
        "accounts written"
    );
    Ok(Report::new(
        NAME,
        format!(
            "{} users, {} groups ({} + {} from sysusers.d, {} + {} from postinsts, {} + {} from the definition)",
            db.users.len(),
            db.groups.len(),
            su,
            sg,
            pu,
            pg,
            du,
            dg
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixups::testutil::*;

    const PASSWD: &str = "root:*:0:0:root:/root:/bin/bash\ndaemon:*:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nnobody:*:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:*:0:\ndaemon:*:1:\nsudo:*:27:\nshadow:*:42:\nnogroup:*:65534:\n";

    fn base_tree() -> Tree {
        let mut t = Tree::new_merged_usr();
        file(&mut t, "usr/share/base-passwd/passwd.master", PASSWD);
        file(&mut t, "usr/share/base-passwd/group.master", GROUP);
        file(&mut t, "usr/bin/bash", "");
        file(&mut t, "etc/skel/.profile", "# profile\n");
        file(&mut t, "etc/sudoers", "root ALL=(ALL:ALL) ALL\n");
        t
    }

    fn line<'a>(text: &'a str, name: &str) -> &'a str {
        text.lines()
            .find(|l| l.split(':').next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    }

    #[test]
    fn base_passwd_goes_to_shadow_form() {
        let mut t = base_tree();
        let d = def("");
        apply(&mut t, &ctx(&d, &[])).unwrap();
        let p = t.read_text("etc/passwd").unwrap();
        assert_eq!(line(&p, "root"), "root:x:0:0:root:/root:/bin/bash");
        let s = t.read_text("etc/shadow").unwrap();
        assert_eq!(line(&s, "root"), "root:*:19675:0:99999:7:::");
        let e = t.get("etc/shadow").unwrap();
        assert_eq!((e.mode, e.uid, e.gid), (0o640, 0, 42));
        let gs = t.read_text("etc/gshadow").unwrap();
        assert_eq!(line(&gs, "sudo"), "sudo:*::");
        assert_eq!(t.get("etc/gshadow").unwrap().gid, 42);
        assert_eq!(
            line(&t.read_text("etc/group").unwrap(), "sudo"),
            "sudo:x:27:"
        );
    }

    #[test]
    fn sysusers_lines_allocate_from_999_down_with_uid_equal_gid() {
        let items = parse_sysusers(
            "x.conf",
            "# c\ng adm 4 -\nu messagebus - \"System Message Bus\"\ng systemd-journal - -\nu systemd-network - \"systemd Network Management\"\nu fixed 300:daemon - /var/lib/fixed /bin/sh\nm systemd-network systemd-journal\nr - 500-900\n",
        );
        assert_eq!(items.len(), 6);
        let mut db = Db::load(PASSWD, GROUP, None, None, 1, ("p", "g")).unwrap();
        let (u, g) = apply_sysusers(&mut db, &items).unwrap();
        assert_eq!((u, g), (3, 4));
        let mb = db.user("messagebus").unwrap();
        assert_eq!(
            (
                mb.uid,
                mb.gid,
                mb.gecos.as_str(),
                mb.home.as_str(),
                mb.shell.as_str()
            ),
            (999, 999, "System Message Bus", "/", NOLOGIN)
        );
        assert_eq!(db.group("systemd-journal").unwrap().gid, 998);
        let net = db.user("systemd-network").unwrap();
        assert_eq!((net.uid, net.gid), (997, 997));
        let fixed = db.user("fixed").unwrap();
        assert_eq!(
            (fixed.uid, fixed.gid, fixed.shell.as_str()),
            (300, 1, "/bin/sh")
        );
        assert_eq!(
            db.group("systemd-journal").unwrap().members,
            ["systemd-network"]
        );
        assert!(db.shadow_text().contains("messagebus:!*:1::::::"));
        assert!(db.gshadow_text().contains("messagebus:!*::"));
    }

    #[test]
    fn postinst_adduser_forms() {
        let etcd = "if ! getent passwd etcd > /dev/null 2>&1 ; then\n    adduser --system --group --disabled-login --disabled-password --home /var/lib/etcd/ etcd\nfi\n";
        let sshd = "setup() {\n\tif ! getent passwd sshd >/dev/null; then\n\t\tadduser --quiet --system --no-create-home --home /run/sshd --shell /usr/sbin/nologin sshd\n\tfi\n}\n";
        let dbus = "MESSAGEUSER=messagebus\nin_sysroot adduser --system \\\n  --quiet \\\n  --home /nonexistent \\\n  --no-create-home \\\n  --disabled-password \\\n  --group \"$MESSAGEUSER\"\n";
        let udev = "addgroup --quiet --system input\naddgroup --quiet --system kvm\n";
        let misc = "groupadd -g 42 shadow || true\nuseradd -r -d /var/lib/foo -s /bin/false -c 'Foo daemon' foo\nusermod -a -G kvm foo\nadduser foo input\n";
        assert_eq!(
            parse_postinst("etcd-server", etcd),
            [PostinstAccount::SystemUser {
                name: "etcd".into(),
                uid: None,
                own_group: true,
                group: None,
                home: Some("/var/lib/etcd/".into()),
                shell: None,
                gecos: None,
                create_home: true
            }]
        );
        let s = parse_postinst("openssh-server", sshd);
        assert!(
            matches!(&s[0], PostinstAccount::SystemUser { name, own_group: false, create_home: false, home: Some(h), .. } if name == "sshd" && h == "/run/sshd")
        );
        let d = parse_postinst("dbus", dbus);
        assert!(
            matches!(&d[0], PostinstAccount::SystemUser { name, own_group: true, .. } if name == "messagebus")
        );
        assert_eq!(parse_postinst("udev", udev).len(), 2);
        let m = parse_postinst("misc", misc);
        assert_eq!(
            m[0],
            PostinstAccount::Group {
                name: "shadow".into(),
                gid: Some(42)
            }
        );
        assert!(
            matches!(&m[1], PostinstAccount::SystemUser { name, own_group: true, gecos: Some(g), shell: Some(s), .. } if name == "foo" && g == "Foo daemon" && s == "/bin/false")
        );
        assert_eq!(
            m[2],
            PostinstAccount::Member {
                user: "foo".into(),
                group: "kvm".into()
            }
        );
        assert_eq!(
            m[3],
            PostinstAccount::Member {
                user: "foo".into(),
                group: "input".into()
            }
        );
    }

    #[test]
    fn postinst_users_and_definition_users_end_to_end() {
        let mut t = base_tree();
        let d = def(
            "groups:\n  - name: docker\n  - name: pinned\n    gid: 4242\nusers:\n  - name: core\n    uid: 500\n    gecos: Core\n    groups: [docker, sudo, kvm]\n    sudo: nopasswd\n    ssh_authorized_keys: [\"ssh-ed25519 AAAA core@x\"]\n  - name: second\n",
        );
        let pkgs = [
            pkg("udev", &[("postinst", "addgroup --quiet --system kvm\n")]),
            pkg("etcd-server", &[("postinst", "adduser --system --group --home /var/lib/etcd/ etcd\n")]),
            pkg("openssh-server", &[("postinst", "adduser --quiet --system --no-create-home --home /run/sshd --shell /usr/sbin/nologin sshd\n")]),
        ];
        let r = apply(&mut t, &ctx(&d, &pkgs)).unwrap();
        assert!(r.summary.contains("users"), "{}", r.summary);
        let p = t.read_text("etc/passwd").unwrap();
        let g = t.read_text("etc/group").unwrap();
        // packages by name: etcd-server, openssh-server, udev
        assert_eq!(
            line(&p, "etcd"),
            "etcd:x:999:999::/var/lib/etcd/:/usr/sbin/nologin"
        );
        assert_eq!(
            line(&p, "sshd"),
            "sshd:x:998:65534::/run/sshd:/usr/sbin/nologin"
        );
        assert_eq!(line(&g, "kvm"), "kvm:x:997:core");
        assert_eq!(line(&g, "docker"), "docker:x:996:core");
        assert_eq!(line(&g, "pinned"), "pinned:x:4242:");
        assert_eq!(line(&g, "sudo"), "sudo:x:27:core");
        assert_eq!(line(&p, "core"), "core:x:500:500:Core:/home/core:/bin/bash");
        assert_eq!(
            line(&p, "second"),
            "second:x:1000:1000::/home/second:/bin/bash"
        );
        assert_eq!(
            line(&t.read_text("etc/shadow").unwrap(), "core"),
            "core:*:19675:0:99999:7:::"
        );
        assert_eq!(
            line(&t.read_text("etc/shadow").unwrap(), "sshd"),
            "sshd:!:19675::::::"
        );
        // etcd's home exists in the image, owned by etcd; sshd's /run one does not.
        let h = t.get("var/lib/etcd").unwrap();
        assert_eq!((h.uid, h.gid, h.mode), (999, 999, 0o755));
        assert!(!t.contains("run/sshd"));
        // home, skel, keys, sudoers
        let home = t.get("home/core").unwrap();
        assert_eq!((home.uid, home.gid, home.mode), (500, 500, 0o700));
        assert_eq!(t.get("home/core/.profile").unwrap().uid, 500);
        let ssh = t.get("home/core/.ssh").unwrap();
        assert_eq!((ssh.mode, ssh.uid), (0o700, 500));
        let ak = t.get("home/core/.ssh/authorized_keys").unwrap();
        assert_eq!((ak.mode, ak.uid, ak.gid), (0o600, 500, 500));
        assert_eq!(
            t.read_text("home/core/.ssh/authorized_keys").unwrap(),
            "ssh-ed25519 AAAA core@x\n"
        );
        let s = t.get("etc/sudoers.d/core").unwrap();
        assert_eq!(s.mode, 0o440);
        assert!(t
            .read_text("etc/sudoers.d/core")
            .unwrap()
            .contains("core ALL=(ALL) NOPASSWD:ALL\n"));
        assert!(!t.contains("etc/sudoers.d/second"));
        assert_eq!(
            t.read_text("etc/subuid").unwrap(),
            "core:100000:65536\nsecond:165536:65536\n"
        );
    }

    #[test]
    fn result_is_stable_across_runs() {
        let d = def("users:\n  - name: core\n");
        let pkgs = [
            pkg("b", &[("postinst", "addgroup --system bee\n")]),
            pkg("a", &[("postinst", "addgroup --system ay\n")]),
        ];
        let mut outs = Vec::new();
        for reversed in [false, true] {
            let mut t = base_tree();
            let mut ps = pkgs.to_vec();
            if reversed {
                ps.reverse();
            }
            apply(&mut t, &ctx(&d, &ps)).unwrap();
            outs.push((
                t.read_text("etc/passwd").unwrap(),
                t.read_text("etc/group").unwrap(),
            ));
        }
        assert_eq!(outs[0], outs[1]);
        assert!(
            outs[0].1.contains("ay:x:999:\nbee:x:998:\n"),
            "{}",
            outs[0].1
        );
    }

    #[test]
    fn missing_group_or_shell_is_an_error_naming_the_user() {
        let mut t = base_tree();
        let d = def("users:\n  - name: core\n    groups: [docker]\n");
        let e = apply(&mut t, &ctx(&d, &[])).unwrap_err().to_string();
        assert!(e.contains("user core") && e.contains("docker"), "{e}");
        let mut t = base_tree();
        let d = def("users:\n  - name: core\n    shell: /bin/zsh\n");
        let e = apply(&mut t, &ctx(&d, &[])).unwrap_err().to_string();
        assert!(e.contains("user core") && e.contains("/bin/zsh"), "{e}");
    }

    #[test]
    fn sudo_without_sudo_package_is_an_error() {
        let mut t = base_tree();
        t.remove_all("etc/sudoers");
        let d = def("users:\n  - name: core\n    sudo: nopasswd\n");
        let e = apply(&mut t, &ctx(&d, &[])).unwrap_err().to_string();
        assert!(e.contains("sudo package"), "{e}");
    }
}
