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

use std::collections::{BTreeMap, BTreeSet};

use super::shell;
use super::{put_dir, put_file, Context, FixupError, Report};
use crate::definition::{self, Sudo};
use crate::tree::{Entry, Node, Tree};

const NAME: &str = "users";
/// Highest and lowest dynamically allocated system id.
const SYSTEM_MAX: u32 = 999;
const SYSTEM_MIN: u32 = 100;
/// First id for the definition's non-system users and groups.
const FIRST_REGULAR: u32 = 1000;
const NOGROUP: u32 = 65534;
const NOLOGIN: &str = "/usr/sbin/nologin";

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

/// One `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The account database being built.
#[derive(Debug, Default)]
pub struct Db {
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    /// name -> shadow fields after the name (`hash:lastchg:min:max:warn:inactive:expire:reserved`).
    shadow: BTreeMap<String, String>,
    /// name -> (password, admins) of gshadow; members come from the group.
    gshadow: BTreeMap<String, (String, String)>,
    reserved_uids: BTreeSet<u32>,
    reserved_gids: BTreeSet<u32>,
    /// Days since the epoch written as "last password change".
    day: u64,
}

fn parse_err(path: &str, line: usize, what: &str) -> FixupError {
    FixupError::invalid(NAME, path, format!("line {line}: malformed {what} entry"))
}

impl Db {
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    fn group_mut(&mut self, name: &str) -> Option<&mut Group> {
        self.groups.iter_mut().find(|g| g.name == name)
    }

    fn uid_free(&self, id: u32) -> bool {
        !self.reserved_uids.contains(&id) && !self.users.iter().any(|u| u.uid == id)
    }

    fn gid_free(&self, id: u32) -> bool {
        !self.reserved_gids.contains(&id) && !self.groups.iter().any(|g| g.gid == id)
    }

    /// The highest system id at most 999 free as a uid and as a gid.
    fn alloc_system(&self, what: &str) -> Result<u32, FixupError> {
        (SYSTEM_MIN..=SYSTEM_MAX)
            .rev()
            .find(|&id| self.uid_free(id) && self.gid_free(id))
            .ok_or_else(|| {
                FixupError::invalid(
                    NAME,
                    "etc/passwd",
                    format!("no free system id left for {what}"),
                )
            })
    }

    /// The lowest id from 1000 free as a uid and a gid.
    fn alloc_regular(&self) -> u32 {
        (FIRST_REGULAR..NOGROUP)
            .find(|&id| self.uid_free(id) && self.gid_free(id))
            .unwrap_or(NOGROUP - 1)
    }

    /// Parse `/etc/passwd`-format text. Password fields other than `x` move
    /// to shadow (as pwconv does); `shadow` is existing `/etc/shadow` text.
    pub fn load(
        passwd: &str,
        group: &str,
        shadow: Option<&str>,
        gshadow: Option<&str>,
        day: u64,
        paths: (&str, &str),
    ) -> Result<Db, FixupError> {
        let mut db = Db {
            day,
            ..Db::default()
        };
        let mut existing_shadow: BTreeMap<String, String> = BTreeMap::new();
        for l in shadow
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            if let Some((n, rest)) = l.split_once(':') {
                existing_shadow.insert(n.to_string(), rest.to_string());
            }
        }
        let mut existing_gshadow: BTreeMap<String, (String, String)> = BTreeMap::new();
        for l in gshadow
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 3 {
                existing_gshadow.insert(f[0].to_string(), (f[1].to_string(), f[2].to_string()));
            }
        }
        for (i, l) in passwd.lines().enumerate() {
            if l.trim().is_empty() || l.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = l.split(':').collect();
            if f.len() != 7 {
                return Err(parse_err(paths.0, i + 1, "passwd"));
            }
            let uid = f[2]
                .parse()
                .map_err(|_| parse_err(paths.0, i + 1, "passwd"))?;
            let gid = f[3]
                .parse()
                .map_err(|_| parse_err(paths.0, i + 1, "passwd"))?;
            let sh = match existing_shadow.remove(f[0]) {
                Some(s) if f[1] == "x" => s,
                // pwconv: the hash moves to shadow with Debian's login.defs ageing.
                _ => format!(
                    "{}:{day}:0:99999:7:::",
                    if f[1] == "x" { "*" } else { f[1] }
                ),
            };
            db.shadow.insert(f[0].to_string(), sh);
            db.users.push(User {
                name: f[0].into(),
                uid,
                gid,
                gecos: f[4].into(),
                home: f[5].into(),
                shell: f[6].into(),
            });
        }
        for (i, l) in group.lines().enumerate() {
            if l.trim().is_empty() || l.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = l.split(':').collect();
            if f.len() != 4 {
                return Err(parse_err(paths.1, i + 1, "group"));
            }
            let gid = f[2]
                .parse()
                .map_err(|_| parse_err(paths.1, i + 1, "group"))?;
            let gs = match existing_gshadow.remove(f[0]) {
                Some(g) if f[1] == "x" => g,
                _ => (
                    if f[1] == "x" { "*" } else { f[1] }.to_string(),
                    String::new(),
                ),
            };
            db.gshadow.insert(f[0].to_string(), gs);
            db.groups.push(Group {
                name: f[0].into(),
                gid,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            });
        }
        Ok(db)
    }

    /// Add a group unless one with that name exists. `gid` None allocates a
    /// system id. `gshadow_pw` is what its creator writes (`!` groupadd, `!*` sysusers).
    pub fn add_group(
        &mut self,
        name: &str,
        gid: Option<u32>,
        gshadow_pw: &str,
    ) -> Result<bool, FixupError> {
        if self.group(name).is_some() {
            return Ok(false);
        }
        let gid = match gid {
            Some(g) if !self.groups.iter().any(|x| x.gid == g) => g,
            Some(g) => {
                tracing::debug!(group = name, gid = g, "gid taken, allocating another");
                self.alloc_system(name)?
            }
            None => self.alloc_system(name)?,
        };
        self.groups.push(Group {
            name: name.into(),
            gid,
            members: Vec::new(),
        });
        self.gshadow
            .insert(name.into(), (gshadow_pw.into(), String::new()));
        Ok(true)
    }

    /// Add a user unless one with that name exists; `shadow` is its shadow
    /// line after the name.
    fn add_user(&mut self, user: User, shadow: String) -> bool {
        if self.user(&user.name).is_some() {
            return false;
        }
        self.shadow.insert(user.name.clone(), shadow);
        self.users.push(user);
        true
    }

    /// Add `user` to the member list of `group` (both must exist).
    pub fn add_member(&mut self, user: &str, group: &str) -> bool {
        match self.group_mut(group) {
            Some(g) if !g.members.iter().any(|m| m == user) => {
                g.members.push(user.to_string());
                true
            }
            _ => false,
        }
    }

    /// A system user with its own group (`useradd -r -U`, `adduser --system
    /// --group`, sysusers `u name -`): uid == gid when possible; password
    /// and group password locked (`!`), as adduser does.
    fn add_system_user_with_group(
        &mut self,
        name: &str,
        uid: Option<u32>,
        gecos: &str,
        home: &str,
        shell: &str,
    ) -> Result<bool, FixupError> {
        let (shadow_pw, gshadow_pw) = ("!", "!");
        if self.user(name).is_some() {
            return Ok(false);
        }
        let gid = match self.group(name) {
            Some(g) => g.gid,
            None => {
                let want = uid.filter(|&u| self.gid_free(u));
                self.add_group(
                    name,
                    Some(want.map_or_else(|| self.alloc_system(name), Ok)?),
                    gshadow_pw,
                )?;
                self.group(name).map(|g| g.gid).unwrap_or(NOGROUP)
            }
        };
        let uid = match uid {
            Some(u) if self.uid_free(u) || !self.users.iter().any(|x| x.uid == u) => u,
            _ if self.uid_free(gid) => gid,
            _ => self.alloc_system(name)?,
        };
        let day = self.day;
        Ok(self.add_user(
            User {
                name: name.into(),
                uid,
                gid,
                gecos: gecos.into(),
                home: home.into(),
                shell: shell.into(),
            },
            format!("{shadow_pw}:{day}::::::"),
        ))
    }

    /// A system user in an existing group (`adduser --system` without
    /// `--group` goes to nogroup).
    fn add_system_user_in_group(
        &mut self,
        name: &str,
        uid: Option<u32>,
        gid: u32,
        gecos: &str,
        home: &str,
        shell: &str,
    ) -> Result<bool, FixupError> {
        if self.user(name).is_some() {
            return Ok(false);
        }
        let uid = match uid {
            Some(u) if !self.users.iter().any(|x| x.uid == u) => u,
            _ => (SYSTEM_MIN..=SYSTEM_MAX)
                .rev()
                .find(|&id| self.uid_free(id) && self.gid_free(id))
                .or_else(|| {
                    (SYSTEM_MIN..=SYSTEM_MAX)
                        .rev()
                        .find(|&id| self.uid_free(id))
                })
                .ok_or_else(|| {
                    FixupError::invalid(NAME, "etc/passwd", format!("no free uid for {name}"))
                })?,
        };
        let day = self.day;
        Ok(self.add_user(
            User {
                name: name.into(),
                uid,
                gid,
                gecos: gecos.into(),
                home: home.into(),
                shell: shell.into(),
            },
            format!("!:{day}::::::"),
        ))
    }

    pub fn passwd_text(&self) -> String {
        self.users
            .iter()
            .map(|u| {
                format!(
                    "{}:x:{}:{}:{}:{}:{}\n",
                    u.name, u.uid, u.gid, u.gecos, u.home, u.shell
                )
            })
            .collect()
    }

    pub fn group_text(&self) -> String {
        self.groups
            .iter()
            .map(|g| format!("{}:x:{}:{}\n", g.name, g.gid, g.members.join(",")))
            .collect()
    }

    pub fn shadow_text(&self) -> String {
        self.users
            .iter()
            .map(|u| {
                let rest = self
                    .shadow
                    .get(&u.name)
                    .cloned()
                    .unwrap_or_else(|| format!("!:{}::::::", self.day));
                format!("{}:{rest}\n", u.name)
            })
            .collect()
    }

    pub fn gshadow_text(&self) -> String {
        self.groups
            .iter()
            .map(|g| {
                let (pw, admins) = self
                    .gshadow
                    .get(&g.name)
                    .cloned()
                    .unwrap_or_else(|| ("!".into(), String::new()));
                format!("{}:{pw}:{admins}:{}\n", g.name, g.members.join(","))
            })
            .collect()
    }
}

/// Read `/etc/passwd` of a tree (for other fixups: owners of state dirs).
pub fn read_users(tree: &Tree) -> Vec<User> {
    let text = tree.read_text("etc/passwd").unwrap_or_default();
    let group = tree.read_text("etc/group").unwrap_or_default();
    Db::load(&text, &group, None, None, 0, ("etc/passwd", "etc/group"))
        .map(|db| db.users)
        .unwrap_or_default()
}

/// `(uid, gid)` of user `name` and gid of group `group` from the tree's files.
pub fn lookup(tree: &Tree, user: &str, group: &str) -> Option<(u32, u32)> {
    let text = tree.read_text("etc/passwd").unwrap_or_default();
    let gtext = tree.read_text("etc/group").unwrap_or_default();
    let db = Db::load(&text, &gtext, None, None, 0, ("etc/passwd", "etc/group")).ok()?;
    let uid = db.user(user)?.uid;
    let gid = db.group(group)?.gid;
    Some((uid, gid))
}

/// The gid of group `name` in the tree's `/etc/group`.
pub fn group_gid(tree: &Tree, name: &str) -> Option<u32> {
    let gtext = tree.read_text("etc/group")?;
    gtext.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() == 4 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// The uid of user `name` in the tree's `/etc/passwd`.
pub fn user_uid(tree: &Tree, name: &str) -> Option<u32> {
    let text = tree.read_text("etc/passwd")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() == 7 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

// ---------------------------------------------------------------- sysusers.d

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
fn sysusers_fields(line: &str) -> Vec<String> {
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

fn dash(s: Option<&String>) -> Option<String> {
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

// ---------------------------------------------------------------- postinsts

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

fn opt_value<'a>(words: &'a [String], i: &mut usize, long: &str) -> Option<&'a str> {
    let w = &words[*i];
    if let Some(v) = w.strip_prefix(&format!("{long}=")) {
        return Some(v);
    }
    *i += 1;
    words.get(*i).map(String::as_str)
}

/// `adduser`/`addgroup` (Debian's adduser 3.x) arguments.
fn parse_adduser(cmd0: &str, words: &[String]) -> Option<PostinstAccount> {
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
fn parse_shadow_utils(cmd0: &str, words: &[String]) -> Vec<PostinstAccount> {
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
fn apply_postinst(
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

// ---------------------------------------------------------------- definition

/// Reserve the definition's explicit ids and create its groups that have one.
fn reserve_definition(db: &mut Db, def: &definition::Definition) -> Result<(), FixupError> {
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

fn sudoers_file_name(user: &str) -> String {
    // sudo skips files in sudoers.d whose names contain '.' or end with '~'.
    user.replace(['.', '~'], "_")
}

/// Copy `etc/skel` into `home`, owned by `owner`.
fn copy_skel(tree: &mut Tree, home: &str, owner: (u32, u32)) -> Result<usize, FixupError> {
    let skel: Vec<(String, Entry)> = tree
        .iter()
        .filter(|(k, _)| k.starts_with("etc/skel/"))
        .map(|(k, e)| (k["etc/skel/".len()..].to_string(), e.clone()))
        .collect();
    let o = super::origin(NAME);
    let mut n = 0;
    for (rel, mut e) in skel {
        let dest = format!("{home}/{rel}");
        if super::exists(tree, &dest) {
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
            if !super::exists(tree, "etc/sudoers") {
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
