//! The `ssh-host-keys` fixup, for images with openssh-server:
//!
//! * `/etc/ssh/sshd_config` from `/usr/share/openssh/sshd_config` when
//!   absent (the postinst installs it with ucf; debconf's defaults change
//!   nothing in it);
//! * no host keys in the image: every `etc/ssh/ssh_host_*` is removed, since
//!   all machines booting one image would otherwise share them;
//! * `cairn-ssh-keygen.service` runs `ssh-keygen -A` before `ssh.service`
//!   when the keys are missing, so each machine makes its own on first boot
//!   (they persist in the `/etc` overlay). The `units` fixup enables it
//!   (`ssh.service.wants/`).

use super::{put_file, Context, FixupError, Report};
use crate::tree::Tree;

const NAME: &str = "ssh-host-keys";
pub const KEYGEN_UNIT: &str = "cairn-ssh-keygen.service";

const KEYGEN: &str = "# cairn: host keys are not in the image; make this machine's on first boot.
[Unit]
Description=Generate SSH host keys
Documentation=man:ssh-keygen(1)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
WantedBy=ssh.service
";

/// Whether the tree has the OpenSSH server.
pub fn has_sshd(tree: &Tree) -> bool {
    tree.resolve("usr/sbin/sshd").is_some()
}

pub fn apply(tree: &mut Tree, _ctx: &Context<'_>) -> Result<Report, FixupError> {
    if !has_sshd(tree) {
        return Ok(Report::new(NAME, "no openssh-server"));
    }
    let mut config = false;
    if !tree.contains("etc/ssh/sshd_config") {
        if let Some(c) = tree
            .read("usr/share/openssh/sshd_config")
            .map(std::borrow::Cow::into_owned)
        {
            put_file(tree, NAME, "etc/ssh/sshd_config", c, 0o644, (0, 0))?;
            config = true;
        }
    }
    let keys: Vec<String> = tree
        .children("etc/ssh")
        .filter(|(k, _)| k["etc/ssh/".len()..].starts_with("ssh_host_"))
        .map(|(k, _)| k.clone())
        .collect();
    for k in &keys {
        tree.remove_all(k);
    }
    put_file(
        tree,
        NAME,
        &format!("usr/lib/systemd/system/{KEYGEN_UNIT}"),
        KEYGEN,
        0o644,
        (0, 0),
    )?;
    tracing::info!(removed = keys.len(), sshd_config = config, "ssh host keys");
    Ok(Report::new(
        NAME,
        format!(
            "{} host keys removed, {KEYGEN_UNIT} added{}",
            keys.len(),
            if config {
                ", sshd_config installed"
            } else {
                ""
            }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixups::testutil::*;

    #[test]
    fn keys_removed_unit_and_config_added() {
        let mut t = Tree::new_merged_usr();
        file(&mut t, "usr/sbin/sshd", "elf");
        file(
            &mut t,
            "usr/share/openssh/sshd_config",
            "Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\n",
        );
        file(&mut t, "etc/ssh/ssh_host_ed25519_key", "secret");
        file(&mut t, "etc/ssh/ssh_host_ed25519_key.pub", "pub");
        file(&mut t, "etc/ssh/moduli", "m");
        let d = def("");
        let r = apply(&mut t, &ctx(&d, &[])).unwrap();
        assert_eq!(
            r.summary,
            "2 host keys removed, cairn-ssh-keygen.service added, sshd_config installed"
        );
        assert!(!t.contains("etc/ssh/ssh_host_ed25519_key"));
        assert!(!t.contains("etc/ssh/ssh_host_ed25519_key.pub"));
        assert!(t.contains("etc/ssh/moduli"));
        assert!(t
            .read_text("etc/ssh/sshd_config")
            .unwrap()
            .contains("UsePAM yes"));
        let unit = t
            .read_text("usr/lib/systemd/system/cairn-ssh-keygen.service")
            .unwrap();
        for l in [
            "Before=ssh.service",
            "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key",
            "ExecStart=/usr/bin/ssh-keygen -A",
            "WantedBy=ssh.service",
        ] {
            assert!(unit.lines().any(|x| x == l), "{l}");
        }
        // an existing config is kept
        file(&mut t, "etc/ssh/sshd_config", "mine\n");
        apply(&mut t, &ctx(&d, &[])).unwrap();
        assert_eq!(t.read_text("etc/ssh/sshd_config").unwrap(), "mine\n");
    }

    #[test]
    fn nothing_without_sshd() {
        let mut t = Tree::new_merged_usr();
        let d = def("");
        assert_eq!(
            apply(&mut t, &ctx(&d, &[])).unwrap().summary,
            "no openssh-server"
        );
        assert!(!t.contains("usr/lib/systemd/system/cairn-ssh-keygen.service"));
    }
}
