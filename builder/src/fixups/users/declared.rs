//! The image definition's users and groups: reserved ids, homes, shells,
//! supplementary groups, sudoers.d, authorized keys, skeleton files,
//! subordinate id ranges.

use super::super::{put_dir, put_file, FixupError};
use super::*;
use crate::definition::{self, Sudo};
use crate::tree::{Entry, Tree};

/// Reserve the definition's explicit ids and create its groups that have one.
pub(super) fn reserve_definition(
    db: &mut Db,
    def: &definition::Definition,
) -> Result<(), FixupError> {
    for g in &def.groups {
        if let Some(gid) = g.gid {
            if db.group(&g.name).is_none() {
                if !db.gid_free(gid) {
                    return Err(FixupError::invalid(
                        NAME,
                        "etc/group",
                        format!("group {}: gid {gid} is already taken", g.name),
                    ));
                }
                db.add_group(&g.name, Some(gid), "!")?;
            }
        }
    }
    for u in &def.users {
        if let Some(uid) = u.uid {
            db.reserved_uids.insert(uid);
            db.reserved_gids.insert(uid);
        }
    }
    Ok(())
}

pub(super) fn sudoers_file_name(user: &str) -> String {
    // sudo skips files in sudoers.d whose names contain '.' or end with '~'.
    user.replace(['.', '~'], "_")
}

/// Copy `etc/skel` into `home`, owned by `owner`.
pub(super) fn copy_skel(
    tree: &mut Tree,
    home: &str,
    owner: (u32, u32),
) -> Result<usize, FixupError> {
    let skel: Vec<(String, Entry)> = tree
        .iter()
        .filter(|(k, _)| k.starts_with("etc/skel/"))
        .map(|(k, e)| (k["etc/skel/".len()..].to_string(), e.clone()))
        .collect();
    let o = super::super::origin(NAME);
    let mut n = 0;
    for (rel, mut e) in skel {
        let dest = format!("{home}/{rel}");
        if super::super::exists(tree, &dest) {
            continue;
        }
        e.uid = owner.0;
        e.gid = owner.1;
        e.origin = o.clone();
        tree.insert(&dest, e)
            .map_err(FixupError::tree(NAME, &dest))?;
        n += 1;
    }
    Ok(n)
}

/// Create the definition's groups (those without a gid) and users, with
/// homes, sudoers.d files and authorized keys.
pub fn apply_definition(
    tree: &mut Tree,
    db: &mut Db,
    def: &definition::Definition,
) -> Result<(usize, usize), FixupError> {
    let (mut nu, mut ng) = (0, 0);
    for g in &def.groups {
        if db.group(&g.name).is_some() {
            if let Some(want) = g.gid {
                let have = db.group(&g.name).map(|x| x.gid);
                if have != Some(want) {
                    return Err(FixupError::invalid(
                        NAME,
                        "etc/group",
                        format!(
                            "group {}: wanted gid {want} but a package created it as {}",
                            g.name,
                            have.unwrap_or(0)
                        ),
                    ));
                }
            }
            continue;
        }
        let gid = if g.system {
            db.alloc_system(&g.name)?
        } else {
            db.alloc_regular()
        };
        ng += usize::from(db.add_group(&g.name, Some(gid), "!")?);
    }
    let mut next_sub: u64 = 100_000;
    let mut subuid = tree.read_text("etc/subuid").unwrap_or_default();
    for l in subuid.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if let (Some(s), Some(c)) = (
            f.get(1).and_then(|v| v.parse::<u64>().ok()),
            f.get(2).and_then(|v| v.parse::<u64>().ok()),
        ) {
            next_sub = next_sub.max(s + c);
        }
    }
    let mut subgid = tree.read_text("etc/subgid").unwrap_or_default();
    for u in &def.users {
        for g in &u.groups {
            if db.group(g).is_none() {
                return Err(FixupError::invalid(
                    NAME,
                    "etc/group",
                    format!("user {}: supplementary group {g} does not exist (add it under groups: or install the package that creates it)", u.name),
                ));
            }
        }
        if db.user(&u.name).is_some() {
            return Err(FixupError::invalid(
                NAME,
                "etc/passwd",
                format!("user {}: a package already created this user", u.name),
            ));
        }
        let shell = match &u.shell {
            Some(s) => s.clone(),
            None if tree.resolve("usr/bin/bash").is_some() => "/bin/bash".into(),
            None => "/bin/sh".into(),
        };
        if tree.resolve(&shell).is_none() {
            return Err(FixupError::invalid(
                NAME,
                "etc/passwd",
                format!("user {}: shell {shell} is not in the image", u.name),
            ));
        }
        let uid = match u.uid {
            Some(uid) => {
                db.reserved_uids.remove(&uid);
                db.reserved_gids.remove(&uid);
                if db.users.iter().any(|x| x.uid == uid) {
                    return Err(FixupError::invalid(
                        NAME,
                        "etc/passwd",
                        format!("user {}: uid {uid} is already taken", u.name),
                    ));
                }
                uid
            }
            None => db.alloc_regular(),
        };
        // USERGROUPS=yes: a group named after the user, gid = uid when free.
        let gid = match db.group(&u.name) {
            Some(g) => g.gid,
            None => {
                let gid = if db.gid_free(uid) {
                    uid
                } else {
                    db.alloc_regular()
                };
                db.add_group(&u.name, Some(gid), "!")?;
                ng += 1;
                gid
            }
        };
        let home = u
            .home
            .clone()
            .unwrap_or_else(|| format!("/home/{}", u.name));
        let day = db.day;
        db.add_user(
            User {
                name: u.name.clone(),
                uid,
                gid,
                gecos: u.gecos.clone().unwrap_or_default(),
                home: home.clone(),
                shell,
            },
            // `*`: no password can match, yet the account is not locked, so
            // key-only ssh login works.
            format!("*:{day}:0:99999:7:::"),
        );
        nu += 1;
        for g in &u.groups {
            db.add_member(&u.name, g);
        }
        // Home, skeleton, ssh keys.
        let owner = (uid, gid);
        let home_rel = home.trim_start_matches('/').to_string();
        put_dir(tree, NAME, &home_rel, 0o700, owner)?;
        copy_skel(tree, &home_rel, owner)?;
        if !u.ssh_authorized_keys.is_empty() {
            put_dir(tree, NAME, &format!("{home_rel}/.ssh"), 0o700, owner)?;
            let mut keys = u.ssh_authorized_keys.join("\n");
            keys.push('\n');
            put_file(
                tree,
                NAME,
                &format!("{home_rel}/.ssh/authorized_keys"),
                keys,
                0o600,
                owner,
            )?;
        }
        if let Some(sudo) = u.sudo {
            if !super::super::exists(tree, "etc/sudoers") {
                return Err(FixupError::invalid(
                    NAME,
                    "etc/sudoers",
                    format!(
                        "user {}: sudo is requested but the sudo package is not installed",
                        u.name
                    ),
                ));
            }
            let rule = match sudo {
                Sudo::Nopasswd => format!("{} ALL=(ALL) NOPASSWD:ALL\n", u.name),
                Sudo::Password => format!("{} ALL=(ALL:ALL) ALL\n", u.name),
            };
            put_file(
                tree,
                NAME,
                &format!("etc/sudoers.d/{}", sudoers_file_name(&u.name)),
                format!("# cairn: from the image definition\n{rule}"),
                0o440,
                (0, 0),
            )?;
        }
        // useradd gives regular users a subordinate id range (rootless containers).
        subuid.push_str(&format!("{}:{next_sub}:65536\n", u.name));
        subgid.push_str(&format!("{}:{next_sub}:65536\n", u.name));
        next_sub += 65536;
    }
    if !def.users.is_empty() {
        put_file(tree, NAME, "etc/subuid", subuid, 0o644, (0, 0))?;
        put_file(tree, NAME, "etc/subgid", subgid, 0o644, (0, 0))?;
    }
    Ok((nu, ng))
}
