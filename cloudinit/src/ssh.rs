//! SSH authorized keys: our keys kept in `~/.ssh/authorized_keys.d/cairn-cloudinit` and merged into `~/.ssh/authorized_keys` (as CoreOS's update-ssh-keys did).

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::fsutil::{Accounts, Written};
use crate::safefs::{self, Dir};

/// The name of our fragment in `~/.ssh/authorized_keys.d/`.
pub const FRAGMENT: &str = "cairn-cloudinit";

fn key_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty())
}

/// The fragment's text for `keys` (one per line, trimmed, duplicates dropped).
pub fn fragment(keys: &[String]) -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for k in keys.iter().flat_map(|k| key_lines(k)) {
        if !seen.contains(&k) {
            seen.push(k);
            out.push_str(k);
            out.push('\n');
        }
    }
    out
}

/// The new authorized_keys: every line of `existing` that did not come
/// from our `previous` fragment (keys added by hand or by other tools,
/// comments), then our keys not already there. Running it again with the
/// same keys gives the same text; changing our keys replaces only ours.
pub fn merge(existing: &str, previous: &str, ours: &str) -> String {
    let prev: Vec<&str> = key_lines(previous).collect();
    let new: Vec<&str> = key_lines(ours).collect();
    let mut out = String::new();
    let mut kept: Vec<&str> = Vec::new();
    for line in existing.lines() {
        let t = line.trim();
        if t.is_empty() || (prev.contains(&t) && !new.contains(&t)) {
            continue;
        }
        if !t.starts_with('#') {
            if kept.contains(&t) {
                continue;
            }
            kept.push(t);
        }
        out.push_str(line);
        out.push('\n');
    }
    for k in new {
        if !kept.contains(&k) {
            kept.push(k);
            out.push_str(k);
            out.push('\n');
        }
    }
    out
}

/// The most an authorized_keys file (or our fragment) may hold.
pub const MAX_KEYS_FILE: u64 = 4 << 20;

/// The text of a file in a directory the user owns, read as root: refused
/// when it is a symlink, not a regular file, a hard link (another name of a
/// file elsewhere, `/etc/shadow` say) or owned by someone other than the
/// user or root; empty when missing.
fn read_users_file(dir: &Dir, name: &str, uid: u32) -> Result<String> {
    let path = dir.join(name);
    let Some((file, st)) = dir.open_regular(name)? else {
        return Ok(String::new());
    };
    let why = if st.st_nlink != 1 {
        Some(format!("has {} hard links", st.st_nlink))
    } else if st.st_uid != uid && st.st_uid != 0 {
        Some(format!("owned by uid {}, not the user", st.st_uid))
    } else {
        None
    };
    if let Some(why) = why {
        tracing::warn!("refusing {path}: {why}");
        bail!("refusing {path}: {why}");
    }
    let bytes = safefs::read_limited(file, &st, MAX_KEYS_FILE, &path)?;
    String::from_utf8(bytes).with_context(|| format!("{path}: not UTF-8 text"))
}

/// `name` in the user's `dir`, made if missing, as a 0700 directory owned
/// by the user: opened without following a symlink, then fchown and fchmod
/// on that descriptor, so a link the user put there changes nothing else.
fn private_dir(dir: &Dir, name: &str, uid: u32, gid: u32) -> Result<Dir> {
    let (d, _) = dir.subdir_nofollow(name, Some(0o700))?;
    let owner = d.stat()?.st_uid;
    if owner != uid && owner != 0 {
        let why = format!("owned by uid {owner}, not the user ({uid}) nor root");
        tracing::warn!("refusing {}: {why}", d.path());
        bail!("refusing {}: {why}", d.path());
    }
    d.set_owner_mode(uid, gid, 0o700)?;
    Ok(d)
}

/// Authorizes `keys` for `user` of `root`: the fragment, then the merged
/// authorized_keys, both 0600 in 0700 directories owned by the user.
/// Nothing is done through a symlink the user may have made: `~/.ssh`,
/// `~/.ssh/authorized_keys.d` or one of the two files being a link (or a
/// hard link) is refused with an error naming it.
pub fn authorize(root: &Path, accounts: &Accounts, user: &str, keys: &[String]) -> Result<Written> {
    let entry = accounts.user(user).with_context(|| {
        format!("authorizing SSH keys: no user {user:?} in the root's /etc/passwd")
    })?;
    let (uid, gid) = (entry.uid, entry.gid);
    let (parent, name) = safefs::open_parent(root, &entry.home, true, true)
        .with_context(|| format!("home directory of {user}"))?;
    let (home, created) = parent.subdir_nofollow(&name, Some(0o755))?;
    if created {
        home.set_owner_mode(uid, gid, 0o755)?;
    }
    let ssh = private_dir(&home, ".ssh", uid, gid)?;
    let dropdir = private_dir(&ssh, "authorized_keys.d", uid, gid)?;
    let previous = read_users_file(&dropdir, FRAGMENT, uid)?;
    let existing = read_users_file(&ssh, "authorized_keys", uid)?;
    let ours = fragment(keys);
    let merged = merge(&existing, &previous, &ours);
    let a = dropdir.write(FRAGMENT, ours.as_bytes(), 0o600, Some((uid, gid)))?;
    let b = ssh.write(
        "authorized_keys",
        merged.as_bytes(),
        0o600,
        Some((uid, gid)),
    )?;
    Ok(if a == Written::Changed || b == Written::Changed {
        Written::Changed
    } else {
        Written::Unchanged
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn merge_table() {
        // (existing authorized_keys, previous fragment, new fragment, expected)
        let cases: &[(&str, &str, &str, &str)] = &[
            ("", "", "ssh-ed25519 A ours\n", "ssh-ed25519 A ours\n"),
            // keys added by hand stay, ours follow
            (
                "# mine\nssh-rsa H hand\n",
                "",
                "ssh-ed25519 A ours\n",
                "# mine\nssh-rsa H hand\nssh-ed25519 A ours\n",
            ),
            // ours replaced: the old one goes, the hand key stays
            (
                "ssh-rsa H hand\nssh-ed25519 A ours\n",
                "ssh-ed25519 A ours\n",
                "ssh-ed25519 B new\n",
                "ssh-rsa H hand\nssh-ed25519 B new\n",
            ),
            // the same again: unchanged
            (
                "ssh-rsa H hand\nssh-ed25519 B new\n",
                "ssh-ed25519 B new\n",
                "ssh-ed25519 B new\n",
                "ssh-rsa H hand\nssh-ed25519 B new\n",
            ),
            // a key both by hand and ours appears once
            (
                "ssh-rsa H hand\n",
                "",
                "ssh-rsa H hand\n",
                "ssh-rsa H hand\n",
            ),
            // our keys removed from the config: removed from the file
            (
                "ssh-rsa H hand\nssh-ed25519 B new\n",
                "ssh-ed25519 B new\n",
                "",
                "ssh-rsa H hand\n",
            ),
        ];
        for (existing, prev, new, want) in cases {
            assert_eq!(
                merge(existing, prev, new),
                *want,
                "existing {existing:?} prev {prev:?} new {new:?}"
            );
        }
    }

    #[test]
    fn fragment_trims_and_dedups() {
        let keys = vec![
            "  ssh-ed25519 A x \n".to_string(),
            "ssh-ed25519 A x".to_string(),
            "ssh-rsa B y".to_string(),
        ];
        assert_eq!(fragment(&keys), "ssh-ed25519 A x\nssh-rsa B y\n");
    }

    use crate::testutil::{self, Machine, GID, UID};

    fn authorize_on(m: &Machine, user: &str) -> Result<Written> {
        let accounts = Accounts::load(&m.root).unwrap();
        authorize(
            &m.root,
            &accounts,
            user,
            &["ssh-ed25519 A ours".to_string()],
        )
    }

    /// `authorize` fails naming `shown`, and nothing outside the root changed.
    fn assert_refused(m: &Machine, user: &str, shown: &str) {
        let before = m.outside_snapshot();
        let res = authorize_on(m, user);
        assert_eq!(m.outside_snapshot(), before, "something outside changed");
        assert!(!m.secret_leaked(), "the secret was copied under the root");
        let msg = format!("{:#}", res.expect_err("refused"));
        assert!(msg.contains(&format!("refusing {shown}")), "{msg}");
    }

    #[test]
    fn ssh_dir_symlinked_elsewhere_is_refused() {
        if !testutil::is_root() {
            eprintln!("skipping: needs root to play the user");
            return;
        }
        let m = Machine::new();
        m.user_symlink(&m.outside, "/home/core/.ssh");
        assert_refused(&m, "core", "/home/core/.ssh");
        // a relative link and a link to a directory under the root: the same
        let m = Machine::new();
        fs::create_dir_all(m.at("/etc/ssh")).unwrap();
        m.user_symlink(Path::new("../../etc/ssh"), "/home/core/.ssh");
        let before = testutil::snapshot(&m.at("/etc"));
        assert_refused(&m, "core", "/home/core/.ssh");
        assert_eq!(testutil::snapshot(&m.at("/etc")), before);
    }

    #[test]
    fn drop_in_dir_symlinked_elsewhere_is_refused() {
        if !testutil::is_root() {
            eprintln!("skipping: needs root to play the user");
            return;
        }
        let m = Machine::new();
        m.user_dir("/home/core/.ssh");
        m.user_symlink(&m.outside, "/home/core/.ssh/authorized_keys.d");
        assert_refused(&m, "core", "/home/core/.ssh/authorized_keys.d");
    }

    #[test]
    fn authorized_keys_symlinked_elsewhere_is_refused() {
        if !testutil::is_root() {
            eprintln!("skipping: needs root to play the user");
            return;
        }
        let m = Machine::new();
        m.user_dir("/home/core/.ssh");
        m.user_symlink(&m.outside.join("shadow"), "/home/core/.ssh/authorized_keys");
        assert_refused(&m, "core", "/home/core/.ssh/authorized_keys");
        // our fragment as a link: the same
        let m = Machine::new();
        m.user_dir("/home/core/.ssh/authorized_keys.d");
        m.user_symlink(
            &m.outside.join("shadow"),
            "/home/core/.ssh/authorized_keys.d/cairn-cloudinit",
        );
        assert_refused(
            &m,
            "core",
            "/home/core/.ssh/authorized_keys.d/cairn-cloudinit",
        );
    }

    #[test]
    fn authorized_keys_hard_linked_elsewhere_is_refused() {
        if !testutil::is_root() {
            eprintln!("skipping: needs root to play the user");
            return;
        }
        let m = Machine::new();
        m.user_dir("/home/core/.ssh");
        let ak = m.at("/home/core/.ssh/authorized_keys");
        fs::hard_link(m.outside.join("shadow"), &ak).unwrap();
        let before = m.outside_snapshot();
        let res = authorize_on(&m, "core");
        assert_eq!(m.outside_snapshot(), before);
        // still the same file (not a user-owned copy of the secret)
        assert_eq!(
            fs::metadata(&ak).unwrap().ino(),
            fs::metadata(m.outside.join("shadow")).unwrap().ino()
        );
        let e = res.expect_err("refused");
        assert!(
            format!("{e:#}").contains("refusing /home/core/.ssh/authorized_keys: has 2 hard links"),
            "{e:#}"
        );
    }

    #[test]
    fn a_home_inside_another_users_home_is_not_followed() {
        if !testutil::is_root() {
            eprintln!("skipping: needs root to play the user");
            return;
        }
        // core owns /home/core, so core decides what /home/core/u2 is
        let m = Machine::new();
        m.user_symlink(&m.outside, "/home/core/u2");
        assert_refused(&m, "u2", "/home/core/u2");
    }

    #[test]
    fn keys_of_a_user_with_a_real_ssh_dir_are_written_as_the_user() {
        if !testutil::is_root() {
            eprintln!("skipping: needs root to play the user");
            return;
        }
        let m = Machine::new();
        m.user_dir("/home/core/.ssh");
        fs::write(m.at("/home/core/.ssh/authorized_keys"), "ssh-rsa H hand\n").unwrap();
        std::os::unix::fs::chown(
            m.at("/home/core/.ssh/authorized_keys"),
            Some(UID),
            Some(GID),
        )
        .unwrap();
        assert_eq!(authorize_on(&m, "core").unwrap(), Written::Changed);
        assert_eq!(
            fs::read_to_string(m.at("/home/core/.ssh/authorized_keys")).unwrap(),
            "ssh-rsa H hand\nssh-ed25519 A ours\n"
        );
        for (p, mode) in [
            ("/home/core/.ssh", 0o700),
            ("/home/core/.ssh/authorized_keys.d", 0o700),
            ("/home/core/.ssh/authorized_keys", 0o600),
            ("/home/core/.ssh/authorized_keys.d/cairn-cloudinit", 0o600),
        ] {
            let md = fs::symlink_metadata(m.at(p)).unwrap();
            assert_eq!(
                (md.uid(), md.gid(), md.mode() & 0o7777),
                (UID, GID, mode),
                "{p}"
            );
        }
        // a missing home is made, owned by the user
        fs::remove_dir_all(m.at("/home/core")).unwrap();
        authorize_on(&m, "core").unwrap();
        let md = fs::metadata(m.at("/home/core")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (UID, GID, 0o755));
    }

    #[test]
    fn authorize_writes_fragment_and_merged_file_with_modes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let me = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let accounts = Accounts::parse(
            &format!("core:x:{}:{}::/home/core:/bin/sh\n", me.0, me.1),
            "",
        );
        let home = root.join("home/core");
        fs::create_dir_all(home.join(".ssh")).unwrap();
        fs::write(home.join(".ssh/authorized_keys"), "ssh-rsa H hand\n").unwrap();
        let keys = vec!["ssh-ed25519 A ours".to_string()];
        assert_eq!(
            authorize(root, &accounts, "core", &keys).unwrap(),
            Written::Changed
        );
        assert_eq!(
            fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap(),
            "ssh-rsa H hand\nssh-ed25519 A ours\n"
        );
        assert_eq!(
            fs::read_to_string(home.join(".ssh/authorized_keys.d/cairn-cloudinit")).unwrap(),
            "ssh-ed25519 A ours\n"
        );
        for (p, mode) in [
            (".ssh", 0o700),
            (".ssh/authorized_keys.d", 0o700),
            (".ssh/authorized_keys", 0o600),
            (".ssh/authorized_keys.d/cairn-cloudinit", 0o600),
        ] {
            let m = fs::metadata(home.join(p)).unwrap();
            assert_eq!(m.mode() & 0o7777, mode, "{p}");
            assert_eq!((m.uid(), m.gid()), me, "{p}");
        }
        assert_eq!(
            authorize(root, &accounts, "core", &keys).unwrap(),
            Written::Unchanged
        );
        let keys2 = vec!["ssh-ed25519 B new".to_string()];
        authorize(root, &accounts, "core", &keys2).unwrap();
        assert_eq!(
            fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap(),
            "ssh-rsa H hand\nssh-ed25519 B new\n"
        );
        assert!(authorize(root, &accounts, "nobody", &keys).is_err());
    }
}
