//! `sysusers.d` files: their parser and how their entries are applied to
//! the account database, as `systemd-sysusers` does.

use std::collections::BTreeMap;

use super::super::FixupError;
use super::*;
use crate::tree::{Node, Tree};

/// One sysusers.d line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysusersItem {
    Group {
        name: String,
        gid: Option<u32>,
    },
    User {
        name: String,
        uid: Option<u32>,
        /// Primary group given as `uid:gid` or `uid:group`.
        group: Option<String>,
        gecos: String,
        home: Option<String>,
        shell: Option<String>,
    },
    Member {
        user: String,
        group: String,
    },
}

/// Split a sysusers.d line into fields, honouring double and single quotes.
pub(super) fn sysusers_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_field = false;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_field = true;
            }
            None if c.is_whitespace() => {
                if in_field {
                    out.push(std::mem::take(&mut cur));
                    in_field = false;
                }
            }
            None => {
                cur.push(c);
                in_field = true;
            }
        }
    }
    if in_field {
        out.push(cur);
    }
    out
}

pub(super) fn dash(s: Option<&String>) -> Option<String> {
    s.filter(|v| v.as_str() != "-" && !v.is_empty()).cloned()
}

/// Parse one sysusers.d file; unsupported lines (`r` ranges, ids given as
/// paths) are skipped with a debug log.
pub fn parse_sysusers(path: &str, text: &str) -> Vec<SysusersItem> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let f = sysusers_fields(l);
        let kind = f[0].trim_end_matches('!');
        let Some(name) = f.get(1).cloned() else {
            continue;
        };
        let id = dash(f.get(2));
        match kind {
            "g" => match id.as_deref().map(str::parse::<u32>) {
                None => out.push(SysusersItem::Group { name, gid: None }),
                Some(Ok(gid)) => out.push(SysusersItem::Group {
                    name,
                    gid: Some(gid),
                }),
                Some(Err(_)) => tracing::debug!(
                    path,
                    line = i + 1,
                    "sysusers: gid from a path is not supported"
                ),
            },
            "u" => {
                let (uid, group) = match id.as_deref() {
                    None => (None, None),
                    Some(s) => {
                        let (u, g) = match s.split_once(':') {
                            Some((u, g)) => (u, Some(g.to_string())),
                            None => (s, None),
                        };
                        match u.parse::<u32>() {
                            Ok(u) => (Some(u), g),
                            Err(_) if u == "-" => (None, g),
                            Err(_) => {
                                tracing::debug!(
                                    path,
                                    line = i + 1,
                                    "sysusers: uid from a path is not supported"
                                );
                                continue;
                            }
                        }
                    }
                };
                out.push(SysusersItem::User {
                    name,
                    uid,
                    group,
                    gecos: dash(f.get(3)).unwrap_or_default(),
                    home: dash(f.get(4)),
                    shell: dash(f.get(5)),
                });
            }
            "m" => {
                if let Some(group) = f.get(2) {
                    out.push(SysusersItem::Member {
                        user: name,
                        group: group.clone(),
                    });
                }
            }
            other => tracing::debug!(
                path,
                line = i + 1,
                kind = other,
                "sysusers: line type not handled"
            ),
        }
    }
    out
}

/// The sysusers.d files of the tree in the order systemd-sysusers reads
/// them: by file name, `etc/sysusers.d` overriding `usr/lib/sysusers.d`; a
/// file masked by a link to /dev/null is skipped.
pub fn sysusers_files(tree: &Tree) -> Vec<(String, String)> {
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for dir in ["usr/lib/sysusers.d", "etc/sysusers.d"] {
        for (path, _) in tree.children(dir) {
            let name = path.rsplit('/').next().unwrap_or(path);
            if name.ends_with(".conf") {
                by_name.insert(name.to_string(), path.clone());
            }
        }
    }
    by_name
        .into_values()
        .filter_map(|p| {
            if matches!(&tree.get(&p)?.node, Node::Symlink(t) if t == "/dev/null") {
                return None;
            }
            Some((p.clone(), tree.read_text(&p)?))
        })
        .collect()
}

/// Apply sysusers items as systemd-sysusers does: groups first (including
/// each `u` line's own group), then users, then memberships.
pub fn apply_sysusers(db: &mut Db, items: &[SysusersItem]) -> Result<(usize, usize), FixupError> {
    let (mut nu, mut ng) = (0, 0);
    for it in items {
        match it {
            SysusersItem::Group { name, gid } => {
                if db.group(name).is_none() {
                    // sysusers only takes a gid free as both a uid and a gid when it allocates.
                    let gid = match gid {
                        Some(g) => Some(*g),
                        None => Some(db.alloc_system(name)?),
                    };
                    ng += usize::from(db.add_group(name, gid, "!*")?);
                }
            }
            SysusersItem::User {
                name,
                uid,
                group: None,
                ..
            } => {
                if db.group(name).is_none() && db.user(name).is_none() {
                    let want = uid.filter(|&u| db.gid_free(u));
                    let gid = match want {
                        Some(g) => g,
                        None => db.alloc_system(name)?,
                    };
                    ng += usize::from(db.add_group(name, Some(gid), "!*")?);
                }
            }
            SysusersItem::Member { user, group } => {
                if db.group(group).is_none() {
                    let gid = db.alloc_system(group)?;
                    ng += usize::from(db.add_group(group, Some(gid), "!*")?);
                }
                let _ = user;
            }
            SysusersItem::User { .. } => {}
        }
    }
    for it in items {
        let SysusersItem::User {
            name,
            uid,
            group,
            gecos,
            home,
            shell,
        } = it
        else {
            continue;
        };
        if db.user(name).is_some() {
            continue;
        }
        let gid = match group {
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => db.group(g).map(|x| x.gid).ok_or_else(|| {
                    FixupError::invalid(
                        NAME,
                        "usr/lib/sysusers.d",
                        format!("user {name}: group {g} does not exist"),
                    )
                })?,
            },
            None => db.group(name).map(|g| g.gid).unwrap_or(NOGROUP),
        };
        let uid = match uid {
            Some(u) if !db.users.iter().any(|x| x.uid == *u) => *u,
            _ if db.uid_free(gid) => gid,
            _ => db.alloc_system(name)?,
        };
        let shell = shell.clone().unwrap_or_else(|| {
            if uid == 0 {
                "/bin/sh".into()
            } else {
                NOLOGIN.into()
            }
        });
        let day = db.day;
        nu += usize::from(db.add_user(
            User {
                name: name.clone(),
                uid,
                gid,
                gecos: gecos.clone(),
                home: home.clone().unwrap_or_else(|| "/".into()),
                shell,
            },
            format!("!*:{day}::::::"),
        ));
    }
    for it in items {
        if let SysusersItem::Member { user, group } = it {
            if db.user(user).is_none() {
                let id = db.alloc_system(user)?;
                let gid = db.group(group).map(|g| g.gid).unwrap_or(NOGROUP);
                let day = db.day;
                nu += usize::from(db.add_user(
                    User {
                        name: user.clone(),
                        uid: id,
                        gid,
                        gecos: String::new(),
                        home: "/".into(),
                        shell: NOLOGIN.into(),
                    },
                    format!("!*:{day}::::::"),
                ));
            }
            db.add_member(user, group);
        }
    }
    Ok((nu, ng))
}
