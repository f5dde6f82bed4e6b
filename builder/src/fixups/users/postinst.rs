//! Accounts that packages' postinst scripts create (`adduser`, `addgroup`,
//! `useradd`, `groupadd`, `usermod -aG`), read as text and applied.

use super::super::shell;
use super::super::{Context, FixupError};
use super::*;

/// An account operation found in a maintainer script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostinstAccount {
    SystemUser {
        name: String,
        uid: Option<u32>,
        /// Own group (`--group`, `useradd -U` / default), else this group or
        /// nogroup.
        own_group: bool,
        group: Option<String>,
        home: Option<String>,
        shell: Option<String>,
        gecos: Option<String>,
        create_home: bool,
    },
    Group {
        name: String,
        gid: Option<u32>,
    },
    Member {
        user: String,
        group: String,
    },
}

impl PostinstAccount {
    /// The home a system user ends up with (adduser's and useradd's defaults).
    pub fn home(&self) -> Option<String> {
        match self {
            PostinstAccount::SystemUser { home, .. } => {
                Some(home.clone().unwrap_or_else(|| "/nonexistent".into()))
            }
            _ => None,
        }
    }
}

pub(super) fn opt_value<'a>(words: &'a [String], i: &mut usize, long: &str) -> Option<&'a str> {
    let w = &words[*i];
    if let Some(v) = w.strip_prefix(&format!("{long}=")) {
        return Some(v);
    }
    *i += 1;
    words.get(*i).map(String::as_str)
}

/// `adduser`/`addgroup` (Debian's adduser 3.x) arguments.
pub(super) fn parse_adduser(cmd0: &str, words: &[String]) -> Option<PostinstAccount> {
    let (mut system, mut group, mut create_home) = (false, false, true);
    let (mut home, mut shell, mut gecos, mut ingroup) = (None, None, None, None);
    let (mut uid, mut gid) = (None, None);
    let mut pos = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        let key = w.split('=').next().unwrap_or(w);
        match key {
            "--system" => system = true,
            "--group" => group = true,
            "--no-create-home" => create_home = false,
            "--home" => home = opt_value(words, &mut i, "--home").map(String::from),
            "--shell" => shell = opt_value(words, &mut i, "--shell").map(String::from),
            "--gecos" | "--comment" => gecos = opt_value(words, &mut i, key).map(String::from),
            "--ingroup" => ingroup = opt_value(words, &mut i, "--ingroup").map(String::from),
            "--uid" => uid = opt_value(words, &mut i, "--uid").and_then(|v| v.parse().ok()),
            "--gid" => gid = opt_value(words, &mut i, "--gid").and_then(|v| v.parse().ok()),
            "--firstuid" | "--lastuid" | "--firstgid" | "--lastgid" | "--conf" | "--key"
            | "--extrausers" => {
                if !w.contains('=') {
                    i += 1;
                }
            }
            _ if w.starts_with('-') => {}
            _ => pos.push(w.to_string()),
        }
        i += 1;
    }
    let addgroup = cmd0 == "addgroup" || (group && !system);
    match (addgroup, pos.as_slice()) {
        (true, [name]) => Some(PostinstAccount::Group {
            name: name.clone(),
            gid,
        }),
        (true, [user, grp]) | (false, [user, grp]) if !system || addgroup => {
            Some(PostinstAccount::Member {
                user: user.clone(),
                group: grp.clone(),
            })
        }
        (false, [name]) if system => Some(PostinstAccount::SystemUser {
            name: name.clone(),
            uid,
            own_group: group,
            group: ingroup.or_else(|| gid.map(|g: u32| g.to_string())),
            home,
            shell,
            gecos,
            create_home,
        }),
        _ => None,
    }
}

/// `useradd`/`groupadd`/`usermod -aG` (shadow-utils) arguments.
pub(super) fn parse_shadow_utils(cmd0: &str, words: &[String]) -> Vec<PostinstAccount> {
    let mut out = Vec::new();
    let (mut home, mut shell, mut gecos, mut group, mut groups) = (None, None, None, None, None);
    let (mut id, mut create_home, mut own_group, mut append) = (None, false, true, false);
    let mut pos = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        let key = w.split('=').next().unwrap_or(w);
        let val = |i: &mut usize| opt_value(words, i, key).map(String::from);
        match key {
            "-d" | "--home-dir" | "--home" => home = val(&mut i),
            "-s" | "--shell" => shell = val(&mut i),
            "-c" | "--comment" => gecos = val(&mut i),
            "-g" | "--gid" => {
                group = val(&mut i);
                own_group = false;
            }
            "-G" | "--groups" => groups = val(&mut i),
            "-aG" => {
                append = true;
                groups = val(&mut i);
            }
            "-u" | "--uid" => id = val(&mut i).and_then(|v| v.parse::<u32>().ok()),
            "-K" | "--key" | "-p" | "--password" | "-e" | "-f" | "-k" | "-R" | "--root" | "-P"
            | "--prefix" => {
                val(&mut i);
            }
            "-m" | "--create-home" => create_home = true,
            "-N" | "--no-user-group" => own_group = false,
            "-a" | "--append" => append = true,
            _ if w.starts_with('-') => {}
            _ => pos.push(w.to_string()),
        }
        i += 1;
    }
    let Some(name) = pos.last().cloned() else {
        return out;
    };
    match cmd0 {
        "groupadd" => {
            // -g for groupadd is the numeric gid.
            out.push(PostinstAccount::Group {
                name,
                gid: group.and_then(|g| g.parse().ok()),
            });
        }
        "useradd" => {
            let no_own = !own_group;
            out.push(PostinstAccount::SystemUser {
                name: name.clone(),
                uid: id,
                own_group: own_group && group.is_none(),
                group: if no_own {
                    Some(group.unwrap_or_else(|| "users".into()))
                } else {
                    None
                },
                home: Some(home.unwrap_or_else(|| format!("/home/{name}"))),
                shell: Some(shell.unwrap_or_else(|| "/bin/sh".into())),
                gecos,
                create_home,
            });
            for g in groups.iter().flat_map(|g| g.split(',')) {
                out.push(PostinstAccount::Member {
                    user: name.clone(),
                    group: g.to_string(),
                });
            }
        }
        "usermod" if append => {
            for g in groups.iter().flat_map(|g| g.split(',')) {
                out.push(PostinstAccount::Member {
                    user: name.clone(),
                    group: g.to_string(),
                });
            }
        }
        _ => {}
    }
    out
}

/// Account operations in one postinst, in script order.
pub fn parse_postinst(package: &str, script: &str) -> Vec<PostinstAccount> {
    let mut out = Vec::new();
    for cmd in shell::find_commands(
        script,
        &["adduser", "addgroup", "useradd", "groupadd", "usermod"],
    ) {
        let Some(words) = cmd.iter().cloned().collect::<Option<Vec<String>>>() else {
            tracing::debug!(
                package,
                command = shell::display(&cmd),
                "account command with unknown words skipped"
            );
            continue;
        };
        let cmd0 = words[0].rsplit('/').next().unwrap_or("").to_string();
        let parsed = match cmd0.as_str() {
            "adduser" | "addgroup" => parse_adduser(&cmd0, &words[1..]).into_iter().collect(),
            _ => parse_shadow_utils(&cmd0, &words[1..]),
        };
        if parsed.is_empty() {
            tracing::debug!(
                package,
                command = words.join(" "),
                "account command not understood"
            );
        }
        out.extend(parsed);
    }
    out
}

/// Every account operation of every postinst (packages by name).
pub fn postinst_accounts(ctx: &Context<'_>) -> Vec<(String, PostinstAccount)> {
    ctx.postinsts()
        .into_iter()
        .flat_map(|(p, s)| {
            parse_postinst(p, s)
                .into_iter()
                .map(move |a| (p.to_string(), a))
        })
        .collect()
}

/// Apply postinst account operations; returns (users, groups) added and the
/// system users whose home should be created.
pub(super) fn apply_postinst(
    db: &mut Db,
    ops: &[(String, PostinstAccount)],
) -> Result<(usize, usize, Vec<String>), FixupError> {
    let (mut nu, mut ng) = (0, 0);
    let mut homes = Vec::new();
    for (pkg, op) in ops {
        match op {
            PostinstAccount::Group { name, gid } => {
                let gid = match gid {
                    Some(g) => Some(*g),
                    None if db.group(name).is_none() => Some(db.alloc_system(name)?),
                    None => None,
                };
                ng += usize::from(db.add_group(name, gid, "!")?);
            }
            PostinstAccount::SystemUser {
                name,
                uid,
                own_group,
                group,
                home,
                shell,
                gecos,
                create_home,
            } => {
                if db.user(name).is_some() {
                    continue;
                }
                let home_s = home.clone().unwrap_or_else(|| "/nonexistent".into());
                let shell_s = shell.clone().unwrap_or_else(|| NOLOGIN.into());
                let gecos_s = gecos.clone().unwrap_or_default();
                let had_group = db.group(name).is_some();
                let added = if *own_group {
                    db.add_system_user_with_group(name, *uid, &gecos_s, &home_s, &shell_s)?
                } else {
                    let gid = match group {
                        None => NOGROUP,
                        Some(g) => match g.parse::<u32>() {
                            Ok(n) => n,
                            Err(_) => db.group(g).map(|x| x.gid).ok_or_else(|| {
                                FixupError::invalid(
                                    NAME,
                                    format!("var/lib/dpkg/info/{pkg}.postinst"),
                                    format!("user {name}: group {g} does not exist"),
                                )
                            })?,
                        },
                    };
                    db.add_system_user_in_group(name, *uid, gid, &gecos_s, &home_s, &shell_s)?
                };
                nu += usize::from(added);
                ng += usize::from(*own_group && !had_group && db.group(name).is_some());
                if added && *create_home && !home_s.starts_with("/nonexistent") {
                    homes.push(name.clone());
                }
            }
            PostinstAccount::Member { user, group } => {
                if db.user(user).is_none() || db.group(group).is_none() {
                    tracing::debug!(
                        package = pkg,
                        user,
                        group,
                        "membership for a missing user or group skipped"
                    );
                    continue;
                }
                db.add_member(user, group);
            }
        }
    }
    Ok((nu, ng, homes))
}
