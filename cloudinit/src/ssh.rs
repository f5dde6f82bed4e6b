//! SSH authorized keys: our keys kept in `~/.ssh/authorized_keys.d/cairn-cloudinit` and merged into `~/.ssh/authorized_keys` (as CoreOS's update-ssh-keys did).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::fsutil::{self, Accounts, Written};

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

fn read_or_empty(p: &Path) -> Result<String> {
    match fs::read_to_string(p) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn ensure_private_dir(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fsutil::ensure_dir(dir)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("chown {uid}:{gid} {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.display()))
}

/// Authorizes `keys` for `user` of `root`: the fragment, then the merged
/// authorized_keys, both 0600 in 0700 directories owned by the user.
pub fn authorize(root: &Path, accounts: &Accounts, user: &str, keys: &[String]) -> Result<Written> {
    let entry = accounts.user(user).with_context(|| {
        format!("authorizing SSH keys: no user {user:?} in the root's /etc/passwd")
    })?;
    let (uid, gid) = (entry.uid, entry.gid);
    let home =
        fsutil::under(root, &entry.home).with_context(|| format!("home directory of {user}"))?;
    if !home.is_dir() {
        fsutil::ensure_dir(&home)?;
        std::os::unix::fs::chown(&home, Some(uid), Some(gid))
            .with_context(|| format!("chown {uid}:{gid} {}", home.display()))?;
    }
    let ssh = home.join(".ssh");
    let dropdir = ssh.join("authorized_keys.d");
    ensure_private_dir(&ssh, uid, gid)?;
    ensure_private_dir(&dropdir, uid, gid)?;
    let frag_path = dropdir.join(FRAGMENT);
    let ak_path = ssh.join("authorized_keys");
    let previous = read_or_empty(&frag_path)?;
    let ours = fragment(keys);
    let merged = merge(&read_or_empty(&ak_path)?, &previous, &ours);
    let a = fsutil::write_atomic(&frag_path, ours.as_bytes(), 0o600, Some((uid, gid)))?;
    let b = fsutil::write_atomic(&ak_path, merged.as_bytes(), 0o600, Some((uid, gid)))?;
    Ok(if a == Written::Changed || b == Written::Changed {
        Written::Changed
    } else {
        Written::Unchanged
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
