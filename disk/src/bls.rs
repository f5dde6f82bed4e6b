//! Text the ESP carries for systemd-boot: `loader/loader.conf` and one Boot
//! Loader Specification (type #1) entry per root slot, plus the entry file
//! names, including the boot-counting form (`+3`) that systemd-boot
//! decrements on every try and the health gate renames away once the slot
//! is blessed. Pure string generation: nothing here touches a file.

/// systemd-boot's menu timeout when a definition does not set one (seconds).
pub const DEFAULT_MENU_TIMEOUT: u32 = 3;

/// `loader/loader.conf` with a menu shown for `timeout` seconds (0: no
/// menu, which systemd-boot still shows while a key is held at start). On
/// purpose it has no `default` line: systemd-boot then boots the newest
/// entry that is not marked bad, which is what makes boot-counting
/// rollback work.
pub fn loader_conf(timeout: u32) -> String {
    format!(
        "# Written by cairn. There is deliberately no \"default\" line: a pinned\n\
         # default keeps booting an entry whose tries ran out and defeats\n\
         # boot-counting rollback; without it systemd-boot picks the newest good entry.\n\
         timeout {timeout}\n\
         console-mode keep\n\
         editor no\n"
    )
}

/// One Boot Loader Specification entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// Shown in the menu, e.g. `cairn 1.0.0 (slot A)`.
    pub title: String,
    /// Image version; systemd-boot sorts entries by it.
    pub version: String,
    /// 32 lowercase hex digits, when the image has a fixed machine id.
    pub machine_id: Option<String>,
    /// Path of the kernel in the ESP, e.g. `/cairn/1.0.0/vmlinuz`.
    pub linux: String,
    /// Path of the initrd in the ESP (omitted from the entry when empty).
    pub initrd: String,
    /// Kernel command line (omitted from the entry when empty).
    pub options: String,
    /// Sort key; entries with the same one are ordered by version.
    pub sort_key: Option<String>,
}

/// Values are single-line by definition: a line break inside one would
/// start another key, so it becomes a space.
fn one_line(v: &str) -> String {
    v.trim()
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
}

/// The text of a BLS entry file: `title`, `version`, `machine-id`,
/// `sort-key`, `linux`, `initrd`, `options` lines, absent keys left out.
pub fn bls_entry(e: &BootEntry) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: &str| {
        let v = one_line(value);
        if !v.is_empty() {
            out.push_str(key);
            out.push(' ');
            out.push_str(&v);
            out.push('\n');
        }
    };
    line("title", &e.title);
    line("version", &e.version);
    if let Some(id) = &e.machine_id {
        line("machine-id", id);
    }
    if let Some(k) = &e.sort_key {
        line("sort-key", k);
    }
    line("linux", &e.linux);
    line("initrd", &e.initrd);
    line("options", &e.options);
    out
}

/// File name of an entry under `loader/entries/`: `cairn-<version>.conf`,
/// or `cairn-<version>+<tries>.conf` when boot counting is on. Characters
/// other than ASCII letters, digits, `.`, `_`, `-` and `~` in the version
/// become `_`: a `/` would leave the directory and a `+` would be read as
/// a try counter.
pub fn entry_file_name(version: &str, tries: Option<u32>) -> String {
    let v: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '~') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match tries {
        Some(n) => format!("cairn-{v}+{n}.conf"),
        None => format!("cairn-{v}.conf"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> BootEntry {
        BootEntry {
            title: "cairn 1.0.0 (slot A)".into(),
            version: "1.0.0".into(),
            machine_id: None,
            linux: "/cairn/1.0.0/vmlinuz".into(),
            initrd: "/cairn/1.0.0/initrd".into(),
            options: "cairn.slot=cairn-a console=ttyS0 ro".into(),
            sort_key: Some("cairn".into()),
        }
    }

    #[test]
    fn loader_conf_has_no_default_and_says_why() {
        let c = loader_conf(DEFAULT_MENU_TIMEOUT);
        let keys: Vec<&str> = c
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(keys, ["timeout", "console-mode", "editor"]);
        assert!(!keys.contains(&"default"));
        assert!(c.contains("timeout 3\n"));
        assert!(c.contains("editor no\n"));
        assert!(loader_conf(0).contains("\ntimeout 0\n"));
        assert!(c.contains("console-mode keep\n"));
        assert!(c
            .lines()
            .any(|l| l.starts_with('#') && l.contains("default")));
        assert!(c.ends_with('\n'));
    }

    #[test]
    fn full_entry() {
        let mut e = entry();
        e.machine_id = Some("0123456789abcdef0123456789abcdef".into());
        assert_eq!(
            bls_entry(&e),
            "title cairn 1.0.0 (slot A)\n\
             version 1.0.0\n\
             machine-id 0123456789abcdef0123456789abcdef\n\
             sort-key cairn\n\
             linux /cairn/1.0.0/vmlinuz\n\
             initrd /cairn/1.0.0/initrd\n\
             options cairn.slot=cairn-a console=ttyS0 ro\n"
        );
    }

    #[test]
    fn optional_and_empty_keys_are_left_out() {
        let mut e = entry();
        e.sort_key = None;
        e.options = String::new();
        e.initrd = String::new();
        assert_eq!(
            bls_entry(&e),
            "title cairn 1.0.0 (slot A)\nversion 1.0.0\nlinux /cairn/1.0.0/vmlinuz\n"
        );
    }

    #[test]
    fn values_cannot_inject_keys() {
        let mut e = entry();
        e.options = "quiet\ninit=/bin/sh\r\n".into();
        let text = bls_entry(&e);
        assert!(text.contains("options quiet init=/bin/sh\n"), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("init=")));
    }

    #[test]
    fn file_names() {
        assert_eq!(entry_file_name("1.0.0", None), "cairn-1.0.0.conf");
        assert_eq!(entry_file_name("1.0.0", Some(3)), "cairn-1.0.0+3.conf");
        assert_eq!(entry_file_name("1.0.0", Some(0)), "cairn-1.0.0+0.conf");
        assert_eq!(entry_file_name("1.0+3", None), "cairn-1.0_3.conf");
        assert_eq!(entry_file_name("../x y", Some(1)), "cairn-.._x_y+1.conf");
        assert_eq!(entry_file_name("2.0~rc1", None), "cairn-2.0~rc1.conf");
    }
}
