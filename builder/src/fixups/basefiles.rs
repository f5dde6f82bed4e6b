//! The `basefiles` fixup: the files and links the Essential (and a few
//! other) packages' postinsts create because no package ships them, plus the
//! image's identity. Each piece is its own function:
//!
//! * [`os_release`]: `usr/lib/os-release` naming cairn, `etc/os-release` link, `etc/issue`;
//! * [`base_files`]: base-files' postinst: `/root` dotfiles, `/etc/profile`,
//!   `/etc/motd`, standard directories, `var/run -> /run`,
//!   `var/lock -> /run/lock`, `var/spool/mail`, `/usr/local`, log files;
//! * [`nsswitch`]: libc-bin's `/etc/nsswitch.conf`;
//! * [`shells`]: `/etc/shells` as debianutils' `update-shells` writes it;
//! * [`machine_id`]: empty `/etc/machine-id` (systemd fills it on first
//!   boot), dbus' `var/lib/dbus/machine-id` link, no `/etc/hostname`;
//! * [`first_boot`]: `/etc/locale.conf` and `/etc/localtime` (UTC), so that
//!   `systemd-firstboot.service`, which runs on that first boot, has
//!   nothing to ask on the console;
//! * [`network_files`]: `/etc/fstab` (a comment: `/init` mounts everything),
//!   netbase's `/etc/hosts` and `/etc/networks`, systemd-resolved's
//!   `/etc/resolv.conf` link;
//! * [`small_files`]: kmod's `/etc/modules`, login's subuid/subgid/faillog,
//!   libpam-modules' `/etc/environment` and `opasswd`, libwrap0's
//!   `hosts.allow`/`hosts.deny`;
//! * [`library_path_check`]: warns about `ld.so.conf.d` directories outside
//!   glibc's built-in search path (there is no `ld.so.cache`).
//!
//! Files that already exist (from a package or the overlay) are kept,
//! except os-release, which always names the image.

use super::users;
use super::{exists, put_dir, put_file, put_symlink, Context, FixupError, Report};
use crate::tree::{Node, Tree};

const NAME: &str = "basefiles";

fn copy_if_absent(tree: &mut Tree, from: &str, to: &str, mode: u32) -> Result<bool, FixupError> {
    if exists(tree, to) {
        return Ok(false);
    }
    let Some(data) = tree.read(from).map(std::borrow::Cow::into_owned) else {
        return Ok(false);
    };
    put_file(tree, NAME, to, data, mode, (0, 0))?;
    Ok(true)
}

fn write_if_absent(
    tree: &mut Tree,
    path: &str,
    data: &str,
    mode: u32,
    owner: (u32, u32),
) -> Result<bool, FixupError> {
    if exists(tree, path) {
        return Ok(false);
    }
    put_file(tree, NAME, path, data, mode, owner)?;
    Ok(true)
}

/// Quote an os-release value when it needs it.
fn osr_value(v: &str) -> String {
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        v.to_string()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// `usr/lib/os-release` naming the image; `etc/os-release` links to it.
pub fn os_release(tree: &mut Tree, ctx: &Context<'_>) -> Result<(), FixupError> {
    let d = ctx.def;
    let debian = tree.read_text("usr/lib/os-release").and_then(|t| {
        t.lines().find_map(|l| {
            l.strip_prefix("VERSION_ID=")
                .map(|v| v.trim_matches('"').to_string())
        })
    });
    let mut text = String::new();
    let mut kv = |k: &str, v: &str| text.push_str(&format!("{k}={}\n", osr_value(v)));
    kv("PRETTY_NAME", &format!("cairn {} ({})", d.version, d.suite));
    kv("NAME", "cairn");
    kv("VERSION_ID", &d.version);
    kv("VERSION", &format!("{} ({})", d.version, d.suite));
    kv("VERSION_CODENAME", &d.suite);
    kv("ID", "cairn");
    kv("ID_LIKE", "debian");
    kv("IMAGE_ID", &d.name);
    kv("IMAGE_VERSION", &d.version);
    if let Some(v) = debian {
        kv("DEBIAN_VERSION_ID", &v);
    }
    put_file(tree, NAME, "usr/lib/os-release", text, 0o644, (0, 0))?;
    put_symlink(tree, NAME, "etc/os-release", "../usr/lib/os-release")?;
    // agetty fills in the host name (\n), the line (\l) and the first
    // configured interface's IPv4 address (\4), redrawn when it changes
    let issue = format!("cairn {} ({}) \\n \\l \\4\n\n", d.version, d.name);
    put_file(tree, NAME, "etc/issue", issue, 0o644, (0, 0))?;
    put_file(
        tree,
        NAME,
        "etc/issue.net",
        format!("cairn {}\n", d.version),
        0o644,
        (0, 0),
    )?;
    Ok(())
}

/// Replace a directory that base-files ships with a symlink, as its
/// postinst's `migrate_directory` does; the directory must be empty.
fn migrate_directory(tree: &mut Tree, dir: &str, target: &str) -> Result<bool, FixupError> {
    match tree.get(dir).map(|e| &e.node) {
        Some(Node::Symlink(_)) => return Ok(false),
        Some(Node::Dir) => {
            if let Some((child, _)) = tree.children(dir).next() {
                return Err(FixupError::invalid(
                    NAME,
                    dir,
                    format!("cannot become a link to {target}: {child} is in it (a package ships files there)"),
                ));
            }
            tree.remove_all(dir);
        }
        _ => {}
    }
    put_symlink(tree, NAME, dir, target)?;
    Ok(true)
}

/// What base-files' postinst does on a fresh install.
pub fn base_files(tree: &mut Tree, _ctx: &Context<'_>) -> Result<usize, FixupError> {
    let mut n = 0;
    if !tree.contains("usr/share/base-files/dot.profile") {
        return Ok(0);
    }
    n += usize::from(copy_if_absent(
        tree,
        "usr/share/base-files/dot.profile",
        "root/.profile",
        0o644,
    )?);
    n += usize::from(copy_if_absent(
        tree,
        "usr/share/base-files/dot.bashrc",
        "root/.bashrc",
        0o644,
    )?);
    n += usize::from(copy_if_absent(
        tree,
        "usr/share/base-files/profile",
        "etc/profile",
        0o644,
    )?);
    n += usize::from(copy_if_absent(
        tree,
        "usr/share/base-files/motd",
        "etc/motd",
        0o644,
    )?);
    put_dir(tree, NAME, "root", 0o700, (0, 0))?;
    for d in ["mnt", "srv", "opt", "etc/opt", "var/opt", "media"] {
        if !exists(tree, d) {
            put_dir(tree, NAME, d, 0o755, (0, 0))?;
            n += 1;
        }
    }
    let mail_gid = users::group_gid(tree, "mail").unwrap_or(8);
    if !exists(tree, "var/mail") {
        put_dir(tree, NAME, "var/mail", 0o2775, (0, mail_gid))?;
        n += 1;
    }
    if !matches!(
        tree.get("var/spool/mail").map(|e| &e.node),
        Some(Node::Symlink(_))
    ) {
        migrate_directory(tree, "var/spool/mail", "../mail")?;
        n += 1;
    }
    n += usize::from(migrate_directory(tree, "var/run", "/run")?);
    n += usize::from(migrate_directory(tree, "var/lock", "/run/lock")?);
    for d in [
        "",
        "/share",
        "/share/man",
        "/bin",
        "/games",
        "/lib",
        "/include",
        "/sbin",
        "/src",
        "/etc",
    ] {
        let p = format!("usr/local{d}");
        if !exists(tree, &p) {
            put_dir(tree, NAME, &p, 0o755, (0, 0))?;
            n += 1;
        }
    }
    put_symlink(tree, NAME, "usr/local/man", "share/man")?;
    let utmp = users::group_gid(tree, "utmp").unwrap_or(43);
    for (f, mode) in [
        ("var/log/wtmp", 0o664),
        ("var/log/btmp", 0o660),
        ("var/log/lastlog", 0o664),
    ] {
        n += usize::from(write_if_absent(tree, f, "", mode, (0, utmp))?);
    }
    Ok(n)
}

/// `/etc/nsswitch.conf` from libc-bin's default (base-files' in older releases).
pub fn nsswitch(tree: &mut Tree) -> Result<bool, FixupError> {
    for from in [
        "usr/share/libc-bin/nsswitch.conf",
        "usr/share/base-files/nsswitch.conf",
    ] {
        if tree.contains(from) {
            return copy_if_absent(tree, from, "etc/nsswitch.conf", 0o644);
        }
    }
    Ok(false)
}

/// `/etc/shells` as `update-shells` writes it: the template
/// `usr/share/debianutils/shells` then every `shells.d` file (sorted), each
/// shell followed by its real path when a directory on the way is a link
/// (`/bin/bash` and `/usr/bin/bash` on merged /usr).
pub fn shells(tree: &mut Tree) -> Result<usize, FixupError> {
    let Some(template) = tree.read_text("usr/share/debianutils/shells") else {
        return Ok(0);
    };
    let mut sources = vec![template.clone()];
    let mut files: Vec<String> = tree
        .children("usr/share/debianutils/shells.d")
        .map(|(k, _)| k.clone())
        .collect();
    files.sort();
    sources.extend(files.iter().filter_map(|f| tree.read_text(f)));
    let mut pkg_shells: Vec<String> = Vec::new();
    for s in &sources {
        for line in s.lines() {
            let shell = line.split('#').next().unwrap_or("");
            if shell.is_empty() {
                continue;
            }
            pkg_shells.push(shell.to_string());
            let (dir, base) = shell.rsplit_once('/').unwrap_or(("", shell));
            let real_dir = tree.resolve(dir).map(|d| format!("/{d}"));
            if let Some(rd) = real_dir {
                let real = format!("{}/{base}", rd.trim_end_matches('/'));
                if real != shell {
                    pkg_shells.push(real);
                }
            }
        }
    }
    // Start from /etc/shells if it exists (the template otherwise): keep its
    // comments and entries, then add the packaged shells not yet listed.
    let source = tree.read_text("etc/shells").unwrap_or(template);
    let mut out = String::new();
    let mut listed: Vec<String> = Vec::new();
    for line in source.lines() {
        let shell = line.split('#').next().unwrap_or("").to_string();
        if shell.is_empty() || !listed.contains(&shell) {
            out.push_str(line);
            out.push('\n');
            listed.push(shell);
        }
    }
    for s in pkg_shells {
        if !listed.contains(&s) {
            out.push_str(&s);
            out.push('\n');
            listed.push(s);
        }
    }
    let n = listed.iter().filter(|s| !s.is_empty()).count();
    put_file(tree, NAME, "etc/shells", out, 0o644, (0, 0))?;
    Ok(n)
}

/// Empty `/etc/machine-id` (systemd writes one on first boot: every machine
/// gets its own), dbus' link to it, and no baked `/etc/hostname`.
pub fn machine_id(tree: &mut Tree, ctx: &Context<'_>) -> Result<(), FixupError> {
    put_file(tree, NAME, "etc/machine-id", "", 0o444, (0, 0))?;
    if ctx.packages.iter().any(|p| p.name.starts_with("dbus")) || exists(tree, "var/lib/dbus") {
        tree.remove_all("var/lib/dbus/machine-id");
        put_symlink(tree, NAME, "var/lib/dbus/machine-id", "/etc/machine-id")?;
    }
    tree.remove_all("etc/hostname");
    Ok(())
}

/// An empty machine-id makes the first boot a systemd "first boot", and
/// `systemd-firstboot.service` then prompts on the console for a locale and
/// a time zone that are not configured (Debian's own units do). Configure
/// both: `C.UTF-8` (built into glibc) and UTC. `/etc/localtime` points at
/// `Etc/UTC` even without tzdata: glibc reads a missing zone file as UTC.
pub fn first_boot(tree: &mut Tree) -> Result<usize, FixupError> {
    let mut n = usize::from(write_if_absent(
        tree,
        "etc/locale.conf",
        "LANG=C.UTF-8\n",
        0o644,
        (0, 0),
    )?);
    if !exists(tree, "etc/localtime") {
        put_symlink(tree, NAME, "etc/localtime", "/usr/share/zoneinfo/Etc/UTC")?;
        n += 1;
    }
    Ok(n)
}

/// `/etc/fstab`, netbase's `/etc/hosts` and `/etc/networks`, and the
/// resolv.conf link systemd-resolved's postinst makes.
pub fn network_files(tree: &mut Tree, ctx: &Context<'_>) -> Result<(), FixupError> {
    write_if_absent(
        tree,
        "etc/fstab",
        "# cairn: the root image, /var, /home, /root and the /etc overlay are\n# mounted by /init before systemd starts; list extra mounts here.\n",
        0o644,
        (0, 0),
    )?;
    write_if_absent(
        tree,
        "etc/hosts",
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
        0o644,
        (0, 0),
    )?;
    if ctx.has_package("netbase") {
        write_if_absent(
            tree,
            "etc/networks",
            "default\t\t0.0.0.0\nloopback\t127.0.0.0\nlink-local\t169.254.0.0\n",
            0o644,
            (0, 0),
        )?;
    }
    if ctx.has_package("systemd-resolved")
        || exists(tree, "usr/lib/systemd/system/systemd-resolved.service")
    {
        tree.remove_all("etc/resolv.conf");
        put_symlink(
            tree,
            NAME,
            "etc/resolv.conf",
            "../run/systemd/resolve/stub-resolv.conf",
        )?;
    }
    Ok(())
}

/// Small files other postinsts create with `touch` or a here-document.
pub fn small_files(tree: &mut Tree, ctx: &Context<'_>) -> Result<usize, FixupError> {
    let mut n = 0;
    if ctx.has_package("kmod") {
        n += usize::from(write_if_absent(
            tree,
            "etc/modules",
            "# /etc/modules: kernel modules to load at boot time.\n#\n# This file contains the names of kernel modules that should be loaded\n# at boot time, one per line. Lines beginning with \"#\" are ignored.\n# Parameters can be specified after the module name.\n\n",
            0o644,
            (0, 0),
        )?);
    }
    if ctx.has_package("login") {
        n += usize::from(write_if_absent(tree, "etc/subuid", "", 0o644, (0, 0))?);
        n += usize::from(write_if_absent(tree, "etc/subgid", "", 0o644, (0, 0))?);
        n += usize::from(write_if_absent(tree, "var/log/faillog", "", 0o644, (0, 0))?);
    }
    if ctx.has_package("libpam-modules") {
        n += usize::from(write_if_absent(
            tree,
            "etc/security/opasswd",
            "",
            0o600,
            (0, 0),
        )?);
        n += usize::from(write_if_absent(tree, "etc/environment", "", 0o644, (0, 0))?);
    }
    if ctx.has_package("libwrap0") {
        n += usize::from(write_if_absent(tree, "etc/hosts.allow", "", 0o644, (0, 0))?);
        n += usize::from(write_if_absent(tree, "etc/hosts.deny", "", 0o644, (0, 0))?);
    }
    Ok(n)
}

/// Directories glibc searches without a cache.
const SYSTEM_LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
];

/// The image has no `ld.so.cache`: glibc's built-in path covers Debian's
/// multiarch directories. Return the `ld.so.conf.d` directories outside it
/// that hold libraries (they would need a cache), warning about each.
pub fn library_path_check(tree: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    let confs: Vec<String> = tree
        .children("etc/ld.so.conf.d")
        .map(|(k, _)| k.clone())
        .collect();
    for c in confs {
        for line in tree.read_text(&c).unwrap_or_default().lines() {
            let dir = line.trim();
            if dir.is_empty() || dir.starts_with('#') || dir.starts_with("include") {
                continue;
            }
            let Some(real) = tree.resolve(dir) else {
                continue;
            };
            if SYSTEM_LIB_DIRS
                .iter()
                .any(|s| tree.resolve(s).as_deref() == Some(real.as_str()))
            {
                continue;
            }
            let has_libs = tree.children(&real).any(|(k, _)| k.contains(".so"));
            if has_libs {
                tracing::warn!(
                    conf = c,
                    dir,
                    "libraries outside glibc's default path and there is no ld.so.cache"
                );
                out.push(dir.to_string());
            }
        }
    }
    out
}

pub fn apply(tree: &mut Tree, ctx: &Context<'_>) -> Result<Report, FixupError> {
    os_release(tree, ctx)?;
    let created = base_files(tree, ctx)?;
    let ns = nsswitch(tree)?;
    let nshells = shells(tree)?;
    machine_id(tree, ctx)?;
    let fb = first_boot(tree)?;
    network_files(tree, ctx)?;
    let small = small_files(tree, ctx)?;
    let odd = library_path_check(tree);
    tracing::info!(
        created,
        nsswitch = ns,
        shells = nshells,
        small,
        "base files"
    );
    let mut summary = format!(
        "os-release for {} {}, {created} base-files paths, {nshells} shells, {small} small files, {fb} first-boot files, empty machine-id",
        ctx.def.name, ctx.def.version
    );
    if !odd.is_empty() {
        summary.push_str(&format!(", warning: no ld.so.cache for {}", odd.join(" ")));
    }
    Ok(Report::new(NAME, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixups::testutil::*;
    use crate::tree::Entry;

    #[test]
    fn os_release_names_the_image() {
        let mut t = Tree::new_merged_usr();
        file(
            &mut t,
            "usr/lib/os-release",
            "ID=debian\nVERSION_ID=\"12\"\n",
        );
        link(&mut t, "etc/os-release", "../usr/lib/os-release");
        let d = def("");
        os_release(&mut t, &ctx(&d, &[])).unwrap();
        let o = t.read_text("etc/os-release").unwrap();
        for l in [
            "NAME=cairn\n",
            "ID=cairn\n",
            "ID_LIKE=debian\n",
            "VERSION_ID=1.2.3\n",
            "IMAGE_ID=testimg\n",
            "IMAGE_VERSION=1.2.3\n",
            "VERSION_CODENAME=bookworm\n",
            "PRETTY_NAME=\"cairn 1.2.3 (bookworm)\"\n",
            "DEBIAN_VERSION_ID=12\n",
        ] {
            assert!(o.contains(l), "{l} not in {o}");
        }
        assert_eq!(
            target(&t, "etc/os-release").as_deref(),
            Some("../usr/lib/os-release")
        );
    }

    #[test]
    fn base_files_postinst_effects() {
        let mut t = Tree::new_merged_usr();
        file(&mut t, "usr/share/base-files/dot.profile", "profile\n");
        file(&mut t, "usr/share/base-files/dot.bashrc", "bashrc\n");
        file(&mut t, "usr/share/base-files/profile", "etc profile\n");
        file(&mut t, "usr/share/base-files/motd", "motd\n");
        file(&mut t, "etc/group", "root:x:0:\nmail:x:8:\nutmp:x:43:\n");
        t.insert("var/run", Entry::dir(0o755, &"test".into()))
            .unwrap();
        t.insert("var/lock", Entry::dir(0o1777, &"test".into()))
            .unwrap();
        file(&mut t, "etc/motd", "mine\n");
        let d = def("");
        base_files(&mut t, &ctx(&d, &[])).unwrap();
        assert_eq!(t.read_text("root/.profile").unwrap(), "profile\n");
        assert_eq!(t.read_text("root/.bashrc").unwrap(), "bashrc\n");
        assert_eq!(t.get("root").unwrap().mode, 0o700);
        assert_eq!(t.read_text("etc/motd").unwrap(), "mine\n");
        assert_eq!(target(&t, "var/run").as_deref(), Some("/run"));
        assert_eq!(target(&t, "var/lock").as_deref(), Some("/run/lock"));
        assert_eq!(target(&t, "var/spool/mail").as_deref(), Some("../mail"));
        let m = t.get("var/mail").unwrap();
        assert_eq!((m.mode, m.gid), (0o2775, 8));
        let w = t.get("var/log/btmp").unwrap();
        assert_eq!((w.mode, w.gid), (0o660, 43));
        assert_eq!(target(&t, "usr/local/man").as_deref(), Some("share/man"));
        assert!(t.get("usr/local/sbin").unwrap().is_dir());
        // a package shipping a file into var/run is an error naming it
        let mut t2 = Tree::new_merged_usr();
        file(&mut t2, "usr/share/base-files/dot.profile", "p");
        file(&mut t2, "var/run/x.pid", "");
        let e = base_files(&mut t2, &ctx(&d, &[])).unwrap_err().to_string();
        assert!(e.contains("var/run") && e.contains("x.pid"), "{e}");
    }

    #[test]
    fn shells_like_update_shells() {
        let mut t = Tree::new_merged_usr();
        file(
            &mut t,
            "usr/share/debianutils/shells",
            "# /etc/shells: valid login shells\n/bin/sh\n",
        );
        file(&mut t, "usr/share/debianutils/shells.d/dash", "/bin/dash\n");
        file(
            &mut t,
            "usr/share/debianutils/shells.d/bash",
            "/bin/bash\n/bin/rbash\n",
        );
        let n = shells(&mut t).unwrap();
        assert_eq!(
            t.read_text("etc/shells").unwrap(),
            "# /etc/shells: valid login shells\n/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n/bin/rbash\n/usr/bin/rbash\n/bin/dash\n/usr/bin/dash\n"
        );
        assert_eq!(n, 8);
    }

    #[test]
    fn machine_id_network_and_small_files() {
        let mut t = Tree::new_merged_usr();
        file(&mut t, "etc/hostname", "builder\n");
        file(&mut t, "etc/resolv.conf", "nameserver 10.0.0.1\n");
        file(
            &mut t,
            "usr/share/libc-bin/nsswitch.conf",
            "passwd: files\n",
        );
        let d = def("");
        let pkgs = [
            pkg("dbus", &[]),
            pkg("systemd-resolved", &[]),
            pkg("netbase", &[]),
            pkg("kmod", &[]),
            pkg("libpam-modules", &[]),
            pkg("login", &[]),
        ];
        let c = ctx(&d, &pkgs);
        machine_id(&mut t, &c).unwrap();
        network_files(&mut t, &c).unwrap();
        assert_eq!(small_files(&mut t, &c).unwrap(), 6);
        assert!(nsswitch(&mut t).unwrap());
        let m = t.get("etc/machine-id").unwrap();
        assert_eq!(
            (m.mode, t.read("etc/machine-id").unwrap().len()),
            (0o444, 0)
        );
        assert_eq!(
            target(&t, "var/lib/dbus/machine-id").as_deref(),
            Some("/etc/machine-id")
        );
        assert!(!t.contains("etc/hostname"));
        assert_eq!(
            target(&t, "etc/resolv.conf").as_deref(),
            Some("../run/systemd/resolve/stub-resolv.conf")
        );
        assert!(t
            .read_text("etc/hosts")
            .unwrap()
            .starts_with("127.0.0.1\tlocalhost\n"));
        assert!(t
            .read_text("etc/fstab")
            .unwrap()
            .lines()
            .all(|l| l.starts_with('#')));
        assert_eq!(t.get("etc/security/opasswd").unwrap().mode, 0o600);
        assert!(t
            .read_text("etc/modules")
            .unwrap()
            .starts_with("# /etc/modules"));
        assert_eq!(t.read_text("etc/nsswitch.conf").unwrap(), "passwd: files\n");
        assert_eq!(first_boot(&mut t).unwrap(), 2);
        assert_eq!(t.read_text("etc/locale.conf").unwrap(), "LANG=C.UTF-8\n");
        assert_eq!(
            target(&t, "etc/localtime").as_deref(),
            Some("/usr/share/zoneinfo/Etc/UTC")
        );
        assert_eq!(first_boot(&mut t).unwrap(), 0, "kept when present");
    }

    #[test]
    fn library_dirs_outside_the_default_path_are_reported() {
        let mut t = Tree::new_merged_usr();
        file(
            &mut t,
            "etc/ld.so.conf.d/x86_64-linux-gnu.conf",
            "# Multiarch\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n",
        );
        file(&mut t, "etc/ld.so.conf.d/odd.conf", "/opt/odd/lib\n");
        file(&mut t, "usr/lib/x86_64-linux-gnu/libc.so.6", "");
        assert!(library_path_check(&t).is_empty());
        file(&mut t, "opt/odd/lib/libodd.so.1", "");
        assert_eq!(library_path_check(&t), ["/opt/odd/lib"]);
    }
}
