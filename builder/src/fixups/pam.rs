//! The `pam` fixup: `/etc/pam.d/common-{auth,account,password,session,
//! session-noninteractive}` exactly as `pam-auth-update --package --force`
//! writes them on a fresh install (libpam-runtime's postinst), from the
//! profiles in `/usr/share/pam-configs` and the templates in
//! `/usr/share/pam`. Without these files login, sshd and sudo fail PAM.
//!
//! Existing `common-*` files (an overlay's) are kept. The state files
//! pam-auth-update keeps under `/var/lib/pam` are not written: nothing on
//! an image without a package manager reruns it.

use std::collections::{BTreeMap, BTreeSet};

use super::{put_file, Context, FixupError, Report};
use crate::tree::Tree;

const NAME: &str = "pam";
const TYPES: &[&str] = &[
    "auth",
    "account",
    "password",
    "session",
    "session-noninteractive",
];

/// One `/usr/share/pam-configs` profile: its fields by name.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub fields: BTreeMap<String, String>,
    pub conflicts: BTreeSet<String>,
    pub disabled: bool,
}

impl Profile {
    fn get(&self, k: &str) -> Option<&str> {
        self.fields.get(k).map(String::as_str)
    }

    fn priority(&self) -> i64 {
        self.get("Priority")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Parse a profile as pam-auth-update's `parse_pam_profile` does.
pub fn parse_profile(text: &str) -> Profile {
    let mut p = Profile::default();
    let mut field = String::new();
    for line in text.lines() {
        let header = line.split_once(':').filter(|(k, v)| {
            !k.is_empty()
                && !k.contains(char::is_whitespace)
                && (v.is_empty() || v.starts_with(char::is_whitespace))
        });
        match header {
            Some((k, v)) => {
                field = k.strip_suffix("-Final").unwrap_or(k).to_string();
                let v = v.trim_start().to_string();
                if field == "Conflicts" {
                    p.conflicts
                        .extend(v.split(", ").map(|s| s.trim().to_string()));
                } else {
                    p.fields.insert(field.clone(), v);
                }
            }
            None => {
                let l = line.trim();
                let e = p.fields.entry(field.clone()).or_default();
                if !l.is_empty() {
                    e.push('\n');
                    e.push_str(l);
                }
                if e.contains("pam_tally") {
                    p.disabled = true;
                }
                *e = e.trim_start_matches(['\n', ' ', '\t']).to_string();
            }
        }
    }
    if !p.fields.contains_key("Session-Interactive-Only") {
        for (from, to) in [
            ("Session-Type", "Session-noninteractive-Type"),
            ("Session", "Session-noninteractive"),
            ("Session-Initial", "Session-noninteractive-Initial"),
        ] {
            if let Some(v) = p.fields.get(from).cloned() {
                p.fields.insert(to.into(), v);
            }
        }
    }
    p
}

/// Profiles enabled on a fresh install: those with `Default: yes`, sorted
/// by priority then name (both descending), minus conflicts.
pub fn enabled(profiles: &BTreeMap<String, Profile>) -> Vec<String> {
    let mut v: Vec<String> = profiles
        .iter()
        .filter(|(_, p)| p.get("Default").map(str::trim) == Some("yes"))
        .map(|(n, _)| n.clone())
        .collect();
    v.sort_by(|a, b| {
        profiles[b]
            .priority()
            .cmp(&profiles[a].priority())
            .then(b.cmp(a))
    });
    let mut out = v.clone();
    for elem in &v {
        let Some(p) = profiles.get(elem) else {
            continue;
        };
        if !out.contains(elem) {
            continue;
        }
        out.retain(|c| !p.conflicts.contains(c));
    }
    out
}

fn ucfirst(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn lines_for<'a>(p: &'a Profile, uctype: &str, pos: usize) -> &'a str {
    if pos == 0 {
        if let Some(v) = p
            .get(&format!("{uctype}-Initial"))
            .filter(|v| !v.is_empty() && *v != "0")
        {
            return v;
        }
    }
    p.get(uctype).unwrap_or("")
}

/// `merge_one_line` without a diff: `end` in the control becomes the jump
/// count; options re-joined with single spaces.
fn merge_one_line(line: &str, count: usize) -> String {
    let (control, rest) = if line.starts_with('[') {
        match line.find(']') {
            Some(i) => line.split_at(i + 1),
            None => line.split_at(0),
        }
    } else {
        let i = line.find(char::is_whitespace).unwrap_or(line.len());
        line.split_at(i)
    };
    let ws_len = rest.len() - rest.trim_start().len();
    let (ws, after) = rest.split_at(ws_len);
    let module_len = after.find(char::is_whitespace).unwrap_or(after.len());
    let (module, opts) = after.split_at(module_len);
    let modline = format!("{control}{ws}{module}").replace("end", &count.to_string());
    let opts: Vec<&str> = opts.split_whitespace().collect();
    format!("{modline} {}\n", opts.join(" "))
}

/// Render one `common-<type>` from its template.
pub fn render(
    template: &str,
    kind: &str,
    profiles: &BTreeMap<String, Profile>,
    enabled: &[String],
) -> Result<String, String> {
    let uctype = ucfirst(kind);
    let prefix = kind.trim_end_matches("-noninteractive");
    let mut out = String::new();
    let mut state = 0;
    for line in template.split_inclusive('\n') {
        if state == 1 {
            if line.starts_with("# here's the fallback if no module succeeds") {
                out.push_str(line);
                state += 1;
            }
            continue;
        }
        if state == 3 {
            if line.starts_with("# end of pam-auth-update config") {
                out.push_str(line);
                state += 1;
            }
            continue;
        }
        out.push_str(line);
        let (pattern, val) = match state {
            0 => (
                "# here are the per-package modules (the \"Primary\" block)",
                "Primary",
            ),
            2 => (
                "# and here are more per-package modules (the \"Additional\" block)",
                "Additional",
            ),
            _ => continue,
        };
        if !line.starts_with(pattern) {
            continue;
        }
        let mods: Vec<&Profile> = enabled
            .iter()
            .filter_map(|m| profiles.get(m))
            .filter(|p| p.get(&format!("{uctype}-Type")).map(str::trim) == Some(val))
            .collect();
        let mut count: usize = mods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                lines_for(p, &uctype, i)
                    .split('\n')
                    .filter(|l| !l.is_empty())
                    .count()
            })
            .sum();
        if val == "Additional" {
            count = count.saturating_sub(1);
        }
        if val == "Primary" && count == 0 {
            out.push_str(&format!("{prefix}\t[default=1]\t\t\tpam_permit.so\n"));
        }
        for (i, p) in mods.iter().enumerate() {
            for l in lines_for(p, &uctype, i)
                .split('\n')
                .filter(|l| !l.is_empty())
            {
                out.push_str(&format!("{prefix}\t{}", merge_one_line(l, count)));
                count = count.saturating_sub(1);
            }
        }
        state += 1;
    }
    if state < 4 {
        return Err(format!(
            "template is missing pam-auth-update markers (reached state {state})"
        ));
    }
    Ok(out)
}

pub fn apply(tree: &mut Tree, _ctx: &Context<'_>) -> Result<Report, FixupError> {
    let mut profiles = BTreeMap::new();
    for (path, _) in tree.children("usr/share/pam-configs") {
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.ends_with('~') || (name.starts_with('#') && name.ends_with('#')) {
            continue;
        }
        let p = parse_profile(&tree.read_text(path).unwrap_or_default());
        if !p.disabled {
            profiles.insert(name.to_string(), p);
        }
    }
    if profiles.is_empty() {
        return Ok(Report::new(
            NAME,
            "no PAM profiles (libpam-runtime not installed)",
        ));
    }
    let on = enabled(&profiles);
    let mut written = 0;
    for kind in TYPES {
        let target = format!("etc/pam.d/common-{kind}");
        if tree.contains(&target) {
            tracing::debug!(path = target, "kept existing PAM configuration");
            continue;
        }
        let tpath = format!("usr/share/pam/common-{kind}");
        let Some(template) = tree.read_text(&tpath) else {
            return Err(FixupError::invalid(
                NAME,
                tpath,
                "pam-auth-update template missing",
            ));
        };
        let text = render(&template, kind, &profiles, &on)
            .map_err(|m| FixupError::invalid(NAME, tpath.clone(), m))?;
        put_file(tree, NAME, &target, text, 0o644, (0, 0))?;
        written += 1;
    }
    tracing::info!(profiles = ?on, written, "pam-auth-update");
    Ok(Report::new(
        NAME,
        format!("{written} common-* files from profiles {}", on.join(", ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixups::testutil::*;

    const UNIX: &str = "Name: Unix authentication\nDefault: yes\nPriority: 256\nAuth-Type: Primary\nAuth:\n\t[success=end default=ignore]\tpam_unix.so nullok try_first_pass\nAuth-Initial:\n\t[success=end default=ignore]\tpam_unix.so nullok\nAccount-Type: Primary\nAccount:\n\t[success=end new_authtok_reqd=done default=ignore]\tpam_unix.so\nAccount-Initial:\n\t[success=end new_authtok_reqd=done default=ignore]\tpam_unix.so\nSession-Type: Additional\nSession:\n\trequired\tpam_unix.so\nSession-Initial:\n\trequired\tpam_unix.so\nPassword-Type: Primary\nPassword:\n\t[success=end default=ignore]\tpam_unix.so obscure use_authtok try_first_pass yescrypt\nPassword-Initial:\n\t[success=end default=ignore]\tpam_unix.so obscure yescrypt\n";
    const SYSTEMD: &str = "Name: Register user sessions in the systemd control group hierarchy\nDefault: yes\nPriority: 0\nSession-Interactive-Only: yes\nSession-Type: Additional\nSession:\n\toptional\tpam_systemd.so\n";
    const CAP: &str = "Name: Inheritable Capabilities Management\nDefault: yes\nPriority: 0\nAuth-Type: Additional\nAuth-Final:\n\toptional\t\t\tpam_cap.so\n";
    const MKHOME: &str = "Name: Create home directory on login\nDefault: no\nPriority: 0\nSession-Type: Additional\nSession-Final:\n\toptional\t\t\tpam_mkhomedir.so\n";

    fn template(kind: &str) -> String {
        let t = kind.trim_end_matches("-noninteractive");
        format!("#\n# /etc/pam.d/common-{kind}\n#\n\n# here are the per-package modules (the \"Primary\" block)\n${t}_primary\n# here's the fallback if no module succeeds\n{t}\trequisite\t\t\tpam_deny.so\n# prime the stack with a positive return value if there isn't one already;\n{t}\trequired\t\t\tpam_permit.so\n# and here are more per-package modules (the \"Additional\" block)\n${t}_additional\n# end of pam-auth-update config\n")
    }

    /// The bodies (non-comment lines) as a Debian bookworm host with the
    /// unix, systemd, capability and mkhomedir profiles has them.
    fn body(t: &str) -> Vec<&str> {
        t.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect()
    }

    #[test]
    fn renders_like_pam_auth_update() {
        let mut t = Tree::new_merged_usr();
        for (n, p) in [
            ("unix", UNIX),
            ("systemd", SYSTEMD),
            ("capability", CAP),
            ("mkhomedir", MKHOME),
        ] {
            file(&mut t, &format!("usr/share/pam-configs/{n}"), p);
        }
        for k in TYPES {
            file(&mut t, &format!("usr/share/pam/common-{k}"), &template(k));
        }
        let d = def("");
        let r = apply(&mut t, &ctx(&d, &[])).unwrap();
        assert_eq!(
            r.summary,
            "5 common-* files from profiles unix, systemd, capability"
        );
        let auth = t.read_text("etc/pam.d/common-auth").unwrap();
        assert_eq!(
            body(&auth),
            [
                "auth\t[success=1 default=ignore]\tpam_unix.so nullok",
                "auth\trequisite\t\t\tpam_deny.so",
                "auth\trequired\t\t\tpam_permit.so",
                "auth\toptional\t\t\tpam_cap.so ",
            ]
        );
        assert!(auth.contains("# end of pam-auth-update config\n"));
        let acct = t.read_text("etc/pam.d/common-account").unwrap();
        assert_eq!(
            body(&acct)[0],
            "account\t[success=1 new_authtok_reqd=done default=ignore]\tpam_unix.so "
        );
        let sess = t.read_text("etc/pam.d/common-session").unwrap();
        assert_eq!(
            body(&sess),
            [
                "session\t[default=1]\t\t\tpam_permit.so",
                "session\trequisite\t\t\tpam_deny.so",
                "session\trequired\t\t\tpam_permit.so",
                "session\trequired\tpam_unix.so ",
                "session\toptional\tpam_systemd.so ",
            ]
        );
        let nonint = t
            .read_text("etc/pam.d/common-session-noninteractive")
            .unwrap();
        assert!(!nonint.contains("pam_systemd"), "{nonint}");
        assert!(nonint.contains("session\trequired\tpam_unix.so \n"));
        let pw = t.read_text("etc/pam.d/common-password").unwrap();
        assert!(
            pw.contains("password\t[success=1 default=ignore]\tpam_unix.so obscure yescrypt\n"),
            "{pw}"
        );
    }

    #[test]
    fn jump_counts_span_several_primary_modules() {
        let mut profiles = BTreeMap::new();
        profiles.insert("unix".to_string(), parse_profile(UNIX));
        profiles.insert(
            "sss".to_string(),
            parse_profile("Name: sss\nDefault: yes\nPriority: 128\nAuth-Type: Primary\nAuth:\n\t[success=end new_authtok_reqd=done default=ignore]\tpam_sss.so use_first_pass\n"),
        );
        let on = enabled(&profiles);
        assert_eq!(on, ["unix", "sss"]);
        let out = render(&template("auth"), "auth", &profiles, &on).unwrap();
        assert!(
            out.contains("auth\t[success=2 default=ignore]\tpam_unix.so nullok\n"),
            "{out}"
        );
        assert!(out.contains("auth\t[success=1 new_authtok_reqd=done default=ignore]\tpam_sss.so use_first_pass\n"), "{out}");
    }

    #[test]
    fn existing_files_are_kept_and_missing_profiles_are_a_no_op() {
        let d = def("");
        let mut t = Tree::new_merged_usr();
        let r = apply(&mut t, &ctx(&d, &[])).unwrap();
        assert!(r.summary.starts_with("no PAM profiles"));
        file(&mut t, "usr/share/pam-configs/unix", UNIX);
        for k in TYPES {
            file(&mut t, &format!("usr/share/pam/common-{k}"), &template(k));
        }
        file(&mut t, "etc/pam.d/common-auth", "mine\n");
        apply(&mut t, &ctx(&d, &[])).unwrap();
        assert_eq!(t.read_text("etc/pam.d/common-auth").unwrap(), "mine\n");
        assert!(t.contains("etc/pam.d/common-account"));
    }
}
