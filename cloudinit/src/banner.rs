//! The console's "ready" line: once the boot is done, `cairn-ready.service`
//! runs `cairn-cloudinit --ready`, which prints one line that tells the
//! person at the console what they need: the image and version, the slot it
//! runs from, the machine's addresses and how to get in (which users have
//! an SSH key, or that none has one yet). Gathering reads only: os-release,
//! the kernel command line, the interfaces, and the metadata (never the
//! contents, never through a symlink) of users' `~/.ssh` key files.

use std::net::IpAddr;
use std::path::Path;

use crate::cmdline::split;

/// What the line says, gathered from the running system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `IMAGE_ID` of os-release (e.g. `cairn-default`), else `NAME`.
    pub image: String,
    /// `IMAGE_VERSION`, else `VERSION_ID`.
    pub version: String,
    /// `a`/`b` from `cairn.slot=`, `diskless` for `cairn.root=ram`, else empty.
    pub slot: String,
    /// `(interface, address)`, loopback and link-local left out.
    pub addresses: Vec<(String, IpAddr)>,
    /// Users whose `~/.ssh/authorized_keys` (or `authorized_keys.d/`) has
    /// something in it, sorted.
    pub key_users: Vec<String>,
}

/// The value of `key` in an os-release text (quotes removed).
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        Some(v.replace("\\\"", "\"").replace("\\\\", "\\"))
    })
}

/// `a`, `b`, `diskless` or empty, from a kernel command line.
pub fn slot_from_cmdline(cmdline: &str) -> String {
    let mut slot = String::new();
    for w in split(cmdline) {
        match w.split_once('=') {
            Some(("cairn.root", "ram")) => return "diskless".into(),
            Some(("cairn.slot", s)) => slot = s.to_owned(),
            _ => {}
        }
    }
    slot
}

/// The one line, without a newline.
pub fn line(f: &Facts) -> String {
    let mut out = format!("{} {} ready", f.image, f.version);
    let mut parts = Vec::new();
    if !f.slot.is_empty() {
        parts.push(match f.slot.as_str() {
            "diskless" => "diskless".to_owned(),
            s => format!("slot {s}"),
        });
    }
    if f.addresses.is_empty() {
        parts.push("no network address".to_owned());
    } else {
        let mut by_iface: Vec<(String, Vec<String>)> = Vec::new();
        for (iface, a) in &f.addresses {
            match by_iface.iter_mut().find(|(i, _)| i == iface) {
                Some((_, v)) => v.push(a.to_string()),
                None => by_iface.push((iface.clone(), vec![a.to_string()])),
            }
        }
        for (iface, addrs) in by_iface {
            parts.push(format!("{iface} {}", addrs.join(" ")));
        }
    }
    if !parts.is_empty() {
        out.push_str(": ");
        out.push_str(&parts.join(", "));
    }
    let first_v4 = f.addresses.iter().find(|(_, a)| a.is_ipv4());
    let first = first_v4.or(f.addresses.first()).map(|(_, a)| *a);
    match (f.key_users.as_slice(), first) {
        ([], _) => out.push_str(
            "; no SSH key is set for any user: give one with cloud-config ssh_authorized_keys",
        ),
        ([user, ..], Some(a)) => {
            let host = match a {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            out.push_str(&format!("; log in: ssh {user}@{host}"));
        }
        ([user, ..], None) => out.push_str(&format!("; SSH keys are set for {user}")),
    }
    out
}

/// Users under `home` (normally `/home`, plus `/root` as `root`) whose
/// authorized keys are not empty. Symlinks are never followed: a user's
/// `~/.ssh` that is a link does not count.
pub fn users_with_keys(home: &Path, root_home: &Path) -> Vec<String> {
    let mut users = Vec::new();
    if let Ok(rd) = std::fs::read_dir(home) {
        for e in rd.flatten() {
            if has_keys(&e.path()) {
                users.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    users.sort();
    if has_keys(root_home) {
        users.push("root".into());
    }
    users
}

fn has_keys(home: &Path) -> bool {
    let real_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let ssh = home.join(".ssh");
    if !real_dir(home) || !real_dir(&ssh) {
        return false;
    }
    let non_empty_file =
        |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0);
    if non_empty_file(&ssh.join("authorized_keys")) {
        return true;
    }
    let d = ssh.join("authorized_keys.d");
    real_dir(&d)
        && std::fs::read_dir(&d)
            .map(|rd| rd.flatten().any(|e| non_empty_file(&e.path())))
            .unwrap_or(false)
}

/// Gathers the facts from the running system.
pub fn gather() -> Facts {
    let osr = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let pick = |a: &str, b: &str, dflt: &str| {
        os_release_value(&osr, a)
            .or_else(|| os_release_value(&osr, b))
            .unwrap_or_else(|| dflt.to_owned())
    };
    let usable = |a: &IpAddr| match a {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    };
    let addresses = crate::addrs::interface_addresses()
        .into_iter()
        .filter(|(n, a)| n != "lo" && usable(a))
        .collect();
    Facts {
        image: pick("IMAGE_ID", "NAME", "cairn"),
        version: pick("IMAGE_VERSION", "VERSION_ID", "?"),
        slot: slot_from_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default()),
        addresses,
        key_users: users_with_keys(Path::new("/home"), Path::new("/root")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn reads_os_release() {
        let t = "NAME=cairn\nIMAGE_ID=\"cairn-default\"\nIMAGE_VERSION='1.2.3'\nPRETTY_NAME=\"a \\\"b\\\"\"\n";
        assert_eq!(os_release_value(t, "NAME").unwrap(), "cairn");
        assert_eq!(os_release_value(t, "IMAGE_ID").unwrap(), "cairn-default");
        assert_eq!(os_release_value(t, "IMAGE_VERSION").unwrap(), "1.2.3");
        assert_eq!(os_release_value(t, "PRETTY_NAME").unwrap(), "a \"b\"");
        assert_eq!(os_release_value(t, "ID"), None);
    }

    #[test]
    fn slot_words() {
        assert_eq!(
            slot_from_cmdline("initrd=x cairn.slot=b console=ttyS0"),
            "b"
        );
        assert_eq!(
            slot_from_cmdline("cairn.root=ram cairn.state=tmpfs"),
            "diskless"
        );
        assert_eq!(slot_from_cmdline("quiet"), "");
    }

    #[test]
    fn the_line() {
        let mut f = Facts {
            image: "cairn-default".into(),
            version: "0.1.0".into(),
            slot: "a".into(),
            addresses: vec![
                ("ens3".into(), "10.0.2.15".parse().unwrap()),
                ("ens3".into(), "fec0::5054:ff:fe12:3456".parse().unwrap()),
                ("ens4".into(), "192.168.1.7".parse().unwrap()),
            ],
            key_users: vec!["core".into()],
        };
        assert_eq!(
            line(&f),
            "cairn-default 0.1.0 ready: slot a, ens3 10.0.2.15 fec0::5054:ff:fe12:3456, ens4 192.168.1.7; log in: ssh core@10.0.2.15"
        );
        f.key_users.clear();
        f.slot = "diskless".into();
        f.addresses.retain(|(_, a)| a.is_ipv6());
        assert_eq!(
            line(&f),
            "cairn-default 0.1.0 ready: diskless, ens3 fec0::5054:ff:fe12:3456; no SSH key is set for any user: give one with cloud-config ssh_authorized_keys"
        );
        f.key_users = vec!["core".into()];
        assert!(line(&f).ends_with("; log in: ssh core@[fec0::5054:ff:fe12:3456]"));
        f.addresses.clear();
        f.slot.clear();
        assert_eq!(
            line(&f),
            "cairn-default 0.1.0 ready: no network address; SSH keys are set for core"
        );
    }

    #[test]
    fn key_users_never_through_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        let mk = |user: &str, file: &str, content: &str| {
            let p = home.join(user).join(".ssh").join(file);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        };
        mk("core", "authorized_keys", "ssh-ed25519 AAAA core\n");
        mk("empty", "authorized_keys", "");
        mk("dee", "authorized_keys.d/cairn", "ssh-ed25519 AAAA dee\n");
        // a user whose ~/.ssh is a link to somebody else's keys
        fs::create_dir_all(home.join("mallory")).unwrap();
        std::os::unix::fs::symlink(home.join("core/.ssh"), home.join("mallory/.ssh")).unwrap();
        // and one whose authorized_keys is a link
        fs::create_dir_all(home.join("eve/.ssh")).unwrap();
        std::os::unix::fs::symlink(
            home.join("core/.ssh/authorized_keys"),
            home.join("eve/.ssh/authorized_keys"),
        )
        .unwrap();
        let root = d.path().join("root");
        assert_eq!(users_with_keys(&home, &root), ["core", "dee"]);
        fs::create_dir_all(root.join(".ssh")).unwrap();
        fs::write(root.join(".ssh/authorized_keys"), "ssh-ed25519 AAAA r\n").unwrap();
        assert_eq!(users_with_keys(&home, &root), ["core", "dee", "root"]);
    }
}
