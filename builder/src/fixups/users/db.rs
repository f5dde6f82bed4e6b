//! The account database: `/etc/passwd`, `group`, `shadow`, `gshadow` read
//! from and written to the tree, and system id allocation.

use std::collections::{BTreeMap, BTreeSet};

use super::super::FixupError;
use super::*;
use crate::tree::Tree;

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
    pub(super) shadow: BTreeMap<String, String>,
    /// name -> (password, admins) of gshadow; members come from the group.
    pub(super) gshadow: BTreeMap<String, (String, String)>,
    pub(super) reserved_uids: BTreeSet<u32>,
    pub(super) reserved_gids: BTreeSet<u32>,
    /// Days since the epoch written as "last password change".
    pub(super) day: u64,
}

pub(super) fn parse_err(path: &str, line: usize, what: &str) -> FixupError {
    FixupError::invalid(NAME, path, format!("line {line}: malformed {what} entry"))
}

impl Db {
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub(super) fn group_mut(&mut self, name: &str) -> Option<&mut Group> {
        self.groups.iter_mut().find(|g| g.name == name)
    }

    pub(super) fn uid_free(&self, id: u32) -> bool {
        !self.reserved_uids.contains(&id) && !self.users.iter().any(|u| u.uid == id)
    }

    pub(super) fn gid_free(&self, id: u32) -> bool {
        !self.reserved_gids.contains(&id) && !self.groups.iter().any(|g| g.gid == id)
    }

    /// The highest system id at most 999 free as a uid and as a gid.
    pub(super) fn alloc_system(&self, what: &str) -> Result<u32, FixupError> {
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
    pub(super) fn alloc_regular(&self) -> u32 {
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
    pub(super) fn add_user(&mut self, user: User, shadow: String) -> bool {
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
    pub(super) fn add_system_user_with_group(
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
    pub(super) fn add_system_user_in_group(
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
