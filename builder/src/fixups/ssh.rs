//! The `ssh-host-keys` fixup, for images with openssh-server:
//!
//! * `/etc/ssh/sshd_config` from `/usr/share/openssh/sshd_config` when
//!   absent (the postinst installs it with ucf; debconf's defaults change
//!   nothing in it);
//! * no host keys in the image: every `etc/ssh/ssh_host_*` is removed, since
//!   all machines booting one image would otherwise share them;
//! * each machine makes its own keys on first boot (they persist in the
//!   `/etc` overlay), in two units the `units` fixup enables
//!   (`ssh.service.wants/`):
//!   - `cairn-ssh-keygen.service` makes the Ed25519 and ECDSA keys that are
//!     missing, before `ssh.service` (milliseconds of CPU, even under TCG);
//!   - `cairn-ssh-keygen-rsa.service` makes the RSA key (`ssh-keygen -A`,
//!     seconds of CPU: ~7 s under TCG) after those, NOT before
//!     `ssh.service`, at idle CPU priority; sshd offers it from its next
//!     start (the next boot). It does not reload sshd: sshd re-executes
//!     on SIGHUP and closes its listening socket meanwhile, which reset
//!     the SSH connections being opened at that moment
//!     (`kex_exchange_identification: read: Connection reset by peer`,
//!     seen in CI) on every machine's first boot. It is `Type=exec`: its
//!     start job ends when the program starts, so neither
//!     `multi-user.target` nor `systemctl is-system-running --wait` waits
//!     for the key. It says on the console when the key is made.

use super::{put_file, Context, FixupError, Report};
use crate::tree::Tree;

const NAME: &str = "ssh-host-keys";
pub const KEYGEN_UNIT: &str = "cairn-ssh-keygen.service";

pub const KEYGEN_RSA_UNIT: &str = "cairn-ssh-keygen-rsa.service";

/// The fast keys, each made when missing or empty, before sshd starts,
/// and synced: a machine powered off right after its first boot must not
/// keep empty key files (ext4 writes data late), which sshd refuses for
/// good. Empty files from such a power cut are replaced on the next boot
/// (the conditions are `ConditionFileNotEmpty`, not mere existence).
const KEYGEN: &str = "# cairn: host keys are not in the image; make this machine's on first boot.
# Ed25519 and ECDSA here, before sshd; RSA (slow) in cairn-ssh-keygen-rsa.service.
[Unit]
Description=Generate SSH host keys (Ed25519, ECDSA)
Documentation=man:ssh-keygen(1)
Before=ssh.service
ConditionFileNotEmpty=|!/etc/ssh/ssh_host_ed25519_key
ConditionFileNotEmpty=|!/etc/ssh/ssh_host_ed25519_key.pub
ConditionFileNotEmpty=|!/etc/ssh/ssh_host_ecdsa_key
ConditionFileNotEmpty=|!/etc/ssh/ssh_host_ecdsa_key.pub

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for t in ed25519 ecdsa; do f=/etc/ssh/ssh_host_$${t}_key; [ -s $$f ] && [ -s $$f.pub ] && continue; rm -f $$f $$f.pub; /usr/bin/ssh-keygen -q -t $$t -N \"\" -f $$f || exit 1; done; sync /etc/ssh/ssh_host_*'
RemainAfterExit=yes

[Install]
WantedBy=ssh.service
";

/// What the RSA key unit says on the console when the key is made.
pub const KEYGEN_RSA_DONE: &str =
    "cairn: SSH RSA host key made; sshd offers it from its next start";

/// The RSA key: seconds of CPU under emulation, so off the way to
/// multi-user; sshd offers it from its next start, never reloaded.
const KEYGEN_RSA: &str = "# cairn: the RSA host key costs seconds of CPU (more under emulation), so sshd
# starts with the Ed25519 and ECDSA keys and offers this one from its next start.
# sshd is not reloaded: it re-executes on SIGHUP and closes its listening socket
# meanwhile, which resets the connections being opened at that moment.
[Unit]
Description=Generate the SSH RSA host key (offered from sshd's next start)
Documentation=man:ssh-keygen(1)
After=cairn-ssh-keygen.service
ConditionFileNotEmpty=|!/etc/ssh/ssh_host_rsa_key
ConditionFileNotEmpty=|!/etc/ssh/ssh_host_rsa_key.pub

[Service]
Type=exec
Nice=19
CPUSchedulingPolicy=idle
IOSchedulingClass=idle
ExecStart=/bin/sh -c 'f=/etc/ssh/ssh_host_rsa_key; [ -s $$f ] && [ -s $$f.pub ] || rm -f $$f $$f.pub; /usr/bin/ssh-keygen -A && sync /etc/ssh/ssh_host_* && echo \"cairn: SSH RSA host key made; sshd offers it from its next start\"'
StandardOutput=journal+console
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
    for (unit, text) in [(KEYGEN_UNIT, KEYGEN), (KEYGEN_RSA_UNIT, KEYGEN_RSA)] {
        put_file(
            tree,
            NAME,
            &format!("usr/lib/systemd/system/{unit}"),
            text,
            0o644,
            (0, 0),
        )?;
    }
    tracing::info!(removed = keys.len(), sshd_config = config, "ssh host keys");
    Ok(Report::new(
        NAME,
        format!(
            "{} host keys removed, {KEYGEN_UNIT} and {KEYGEN_RSA_UNIT} added{}",
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
            "2 host keys removed, cairn-ssh-keygen.service and cairn-ssh-keygen-rsa.service added, sshd_config installed"
        );
        assert!(!t.contains("etc/ssh/ssh_host_ed25519_key"));
        assert!(!t.contains("etc/ssh/ssh_host_ed25519_key.pub"));
        assert!(t.contains("etc/ssh/moduli"));
        assert!(t
            .read_text("etc/ssh/sshd_config")
            .unwrap()
            .contains("UsePAM yes"));
        // the fast keys before sshd, when either is missing
        let unit = t
            .read_text("usr/lib/systemd/system/cairn-ssh-keygen.service")
            .unwrap();
        for l in [
            "Before=ssh.service",
            "ConditionFileNotEmpty=|!/etc/ssh/ssh_host_ed25519_key",
            "ConditionFileNotEmpty=|!/etc/ssh/ssh_host_ecdsa_key.pub",
            "Type=oneshot",
            "WantedBy=ssh.service",
        ] {
            assert!(unit.lines().any(|x| x == l), "{l}");
        }
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        assert!(!exec.contains("-A") && !exec.contains("rsa"), "{exec}");
        // RSA: wanted by sshd but not before it; a start job that ends at
        // exec (multi-user and is-system-running do not wait); sshd never
        // reloaded (that reset the connections being opened)
        let rsa = t
            .read_text("usr/lib/systemd/system/cairn-ssh-keygen-rsa.service")
            .unwrap();
        for l in [
            "After=cairn-ssh-keygen.service",
            "ConditionFileNotEmpty=|!/etc/ssh/ssh_host_rsa_key",
            "Type=exec",
            "CPUSchedulingPolicy=idle",
            "WantedBy=ssh.service",
        ] {
            assert!(rsa.lines().any(|x| x == l), "{l}");
        }
        assert!(!rsa.lines().any(|l| l.starts_with("Before=")), "{rsa}");
        let exec = rsa
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        assert!(exec.contains("/usr/bin/ssh-keygen -A && sync "), "{exec}");
        assert!(
            !exec.contains("reload") && !exec.contains("restart"),
            "{exec}"
        );
        assert!(
            exec.contains(&format!("echo \"{KEYGEN_RSA_DONE}\"")),
            "{exec}"
        );
        assert!(rsa.lines().any(|l| l == "StandardOutput=journal+console"));
        // an existing config is kept
        file(&mut t, "etc/ssh/sshd_config", "mine\n");
        apply(&mut t, &ctx(&d, &[])).unwrap();
        assert_eq!(t.read_text("etc/ssh/sshd_config").unwrap(), "mine\n");
    }

    /// The `sh -c` script of a unit's ExecStart as sh gets it (systemd's
    /// `$$` is `$`), with /etc/ssh moved to `dir` and ssh-keygen taken
    /// from PATH.
    fn script(unit: &str, dir: &std::path::Path) -> String {
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart=/bin/sh -c '"))
            .unwrap()
            .strip_suffix('\'')
            .unwrap();
        exec.replace("$$", "$")
            .replace("/etc/ssh", &dir.display().to_string())
            .replace("/usr/bin/ssh-keygen", "ssh-keygen")
    }

    fn host_keys(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The fast unit's script run for real (where this machine has
    /// ssh-keygen): Ed25519 and ECDSA made, no RSA; a second run keeps
    /// them; a truncated key is made again.
    #[test]
    fn fast_keygen_script_makes_ed25519_and_ecdsa_only() {
        if std::process::Command::new("ssh-keygen")
            .arg("-?")
            .output()
            .is_err()
        {
            eprintln!("no ssh-keygen here; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sh = script(KEYGEN, dir.path());
        let run = || {
            let st = std::process::Command::new("sh")
                .args(["-c", &sh])
                .stdin(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "{sh}");
        };
        run();
        assert_eq!(
            host_keys(dir.path()),
            [
                "ssh_host_ecdsa_key",
                "ssh_host_ecdsa_key.pub",
                "ssh_host_ed25519_key",
                "ssh_host_ed25519_key.pub"
            ]
        );
        let ed = std::fs::read(dir.path().join("ssh_host_ed25519_key.pub")).unwrap();
        let ec = std::fs::read(dir.path().join("ssh_host_ecdsa_key.pub")).unwrap();
        assert!(ed.starts_with(b"ssh-ed25519 ") && ec.starts_with(b"ecdsa-sha2-"));
        run();
        assert_eq!(
            std::fs::read(dir.path().join("ssh_host_ed25519_key.pub")).unwrap(),
            ed
        );
        std::fs::write(dir.path().join("ssh_host_ecdsa_key"), "").unwrap();
        run();
        let ec2 = std::fs::read(dir.path().join("ssh_host_ecdsa_key.pub")).unwrap();
        assert!(ec2.starts_with(b"ecdsa-sha2-") && ec2 != ec);
        assert_eq!(
            std::fs::read(dir.path().join("ssh_host_ed25519_key.pub")).unwrap(),
            ed
        );
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
