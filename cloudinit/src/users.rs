//! users: created with Debian's useradd (`--root` under a prefix), password hash of existing users set with usermod -p; names checked with the validator's rules and passed after `--`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use cairn_cloudconfig::{check_account_name, check_group, User};

use crate::fsutil::Accounts;

/// The useradd arguments for a new user, as coreos-cloudinit built them
/// (without its quoting of the GECOS field), the name after `--` so that it
/// is never read as an option.
pub fn useradd_args(u: &User) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |s: &str| a.push(s.to_string());
    push("--password");
    push(u.passwd.as_deref().filter(|p| !p.is_empty()).unwrap_or("*"));
    if let Some(g) = u.gecos.as_deref().filter(|s| !s.is_empty()) {
        push("--comment");
        push(g);
    }
    if let Some(h) = u.homedir.as_deref().filter(|s| !s.is_empty()) {
        push("--home-dir");
        push(h);
    }
    push(if u.no_create_home {
        "--no-create-home"
    } else {
        "--create-home"
    });
    if let Some(g) = u.primary_group.as_deref().filter(|s| !s.is_empty()) {
        push("--gid");
        push(g);
    }
    if !u.groups.is_empty() {
        push("--groups");
        push(&u.groups.join(","));
    }
    if u.no_user_group {
        push("--no-user-group");
    }
    if u.system {
        push("--system");
    }
    if u.no_log_init {
        push("--no-log-init");
    }
    if let Some(s) = u.shell.as_deref().filter(|s| !s.is_empty()) {
        push("--shell");
        push(s);
    }
    push("--");
    a.push(u.name.clone());
    a
}

/// The usermod arguments that set the password hash of `name`.
pub fn usermod_password_args(hash: &str, name: &str) -> Vec<String> {
    ["-p", hash, "--", name].map(String::from).to_vec()
}

/// Refuses a user whose name or groups the validator would refuse
/// (checked again here: [`ensure_user`] may be called without it).
pub fn check_names(u: &User) -> Result<()> {
    check_account_name(&u.name)
        .map_err(|why| anyhow::anyhow!("user name {:?} refused: {why}", u.name))?;
    for g in u
        .primary_group
        .iter()
        .filter(|g| !g.is_empty())
        .chain(&u.groups)
    {
        check_group(g)
            .map_err(|why| anyhow::anyhow!("user {}: group {g:?} refused: {why}", u.name))?;
    }
    Ok(())
}

fn shadow_hash(root: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(root.join("etc/shadow")).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(name)).then(|| f.next().unwrap_or("").to_string())
    })
}

fn tool(name: &str, root: &Path) -> Command {
    let mut c = Command::new(name);
    if root != Path::new("/") {
        c.arg("--root").arg(root);
    }
    c
}

fn run(mut c: Command) -> Result<()> {
    let shown = format!("{c:?}");
    let out = c
        .output()
        .with_context(|| format!("running {shown} (Debian package passwd)"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates `u` in `root` when missing; an existing user only gets its
/// password hash (when given and different), as coreos-cloudinit.
/// Returns whether anything changed.
pub fn ensure_user(root: &Path, accounts: &Accounts, u: &User) -> Result<bool> {
    if u.name.is_empty() {
        bail!("user without a name");
    }
    check_names(u)?;
    if accounts.user(&u.name).is_some() {
        tracing::info!("user {}: exists, creation-time fields ignored", u.name);
        if let Some(hash) = u.passwd.as_deref().filter(|p| !p.is_empty()) {
            if shadow_hash(root, &u.name).as_deref() != Some(hash) {
                let mut c = tool("usermod", root);
                c.args(usermod_password_args(hash, &u.name));
                run(c).with_context(|| format!("setting the password of {}", u.name))?;
                tracing::info!("user {}: password set", u.name);
                return Ok(true);
            }
        }
        return Ok(false);
    }
    let mut c = tool("useradd", root);
    c.args(useradd_args(u));
    run(c).with_context(|| format!("creating user {}", u.name))?;
    tracing::info!("user {}: created", u.name);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_options_never_reach_useradd_or_usermod() {
        assert_eq!(
            usermod_password_args("$6$x$y", "core"),
            ["-p", "$6$x$y", "--", "core"]
        );
        let t = tempfile::tempdir().unwrap();
        let accounts = Accounts::parse("root:x:0:0::/root:/bin/sh\n", "");
        let cases: &[(User, &str)] = &[
            (
                User {
                    name: "-oops".into(),
                    ..Default::default()
                },
                r#"user name "-oops" refused: starts with '-'"#,
            ),
            (
                User {
                    name: "--root=/".into(),
                    ..Default::default()
                },
                r#"user name "--root=/" refused: starts with '-'"#,
            ),
            (
                User {
                    name: "a:b".into(),
                    ..Default::default()
                },
                r#"user name "a:b" refused: character ':' is not allowed"#,
            ),
            (
                User {
                    name: "ok".into(),
                    groups: vec!["sudo".into(), "root,wheel".into()],
                    ..Default::default()
                },
                r#"user ok: group "root,wheel" refused: character ',' is not allowed"#,
            ),
            (
                User {
                    name: "ok".into(),
                    primary_group: Some("-g0".into()),
                    ..Default::default()
                },
                r#"user ok: group "-g0" refused: starts with '-'"#,
            ),
        ];
        for (u, want) in cases {
            let e = ensure_user(t.path(), &accounts, u).unwrap_err();
            assert_eq!(format!("{e:#}"), *want);
        }
        // nothing was made
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn useradd_args_table() {
        let minimal = User {
            name: "a".into(),
            ..Default::default()
        };
        assert_eq!(
            useradd_args(&minimal),
            ["--password", "*", "--create-home", "--", "a"]
        );
        let full = User {
            name: "b".into(),
            passwd: Some("$6$x$y".into()),
            gecos: Some("B User".into()),
            homedir: Some("/srv/b".into()),
            no_create_home: true,
            primary_group: Some("users".into()),
            groups: vec!["sudo".into(), "docker".into()],
            no_user_group: true,
            system: true,
            no_log_init: true,
            shell: Some("/bin/sh".into()),
            ssh_authorized_keys: vec![],
        };
        assert_eq!(
            useradd_args(&full),
            [
                "--password",
                "$6$x$y",
                "--comment",
                "B User",
                "--home-dir",
                "/srv/b",
                "--no-create-home",
                "--gid",
                "users",
                "--groups",
                "sudo,docker",
                "--no-user-group",
                "--system",
                "--no-log-init",
                "--shell",
                "/bin/sh",
                "--",
                "b"
            ]
        );
    }
}
