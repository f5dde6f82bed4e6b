//! The `agents` fixup: installs cairn's own on-host programs into the tree,
//! as static binaries built with the `cairn` binary (see `build.rs`) with
//! their systemd units: fleet's `fleetd` and `fleetctl` with
//! `fleet.service` (installed, not enabled), `cairn-cloudinit` (applies the machine's
//! cloud-config at every boot; `cairn-ready.service` prints the console's
//! ready line with it) and `cairn-update` (A/B updates: its timer,
//! service, the health gate before `boot-complete.target`, its diskless
//! counterpart `cairn-report.service` (reports to the `cairn serve` that
//! netbooted the machine), and
//! `cairn-install.service`, which runs `cairn-update install` only on a
//! machine netbooted with `cairn.install=` by a `boot: install` profile), plus the
//! image's trusted update keys in `/usr/lib/cairn/update-keys/` (the
//! definition's `update.keys`; the folder exists, empty, without them). The
//! units fixup enables the units of [`AGENT_UNITS`] by default
//! (`units.disable` in a definition turns one off).
//!
//! Runs first, so that an overlay may replace a unit file.

use std::sync::Arc;

use super::{Context, FixupError, Report};
use crate::definition::UPDATE_KEYS_DIR;
use crate::tree::{Entry, Tree};

const NAME: &str = "agents";

/// The static `cairn-cloudinit` binary.
pub static CLOUDINIT_BINARY: &[u8] = include_bytes!(env!("CAIRN_CLOUDINIT_PATH"));

/// The static `cairn-update` binary (package `cairn-updater`).
pub static UPDATE_BINARY: &[u8] = include_bytes!(env!("CAIRN_UPDATE_PATH"));

/// fleet's daemon (`fleet.service`, installed, not enabled: a machine
/// starts it from cloud-config, as on CoreOS).
pub static FLEETD_BINARY: &[u8] = include_bytes!(env!("CAIRN_FLEETD_PATH"));

/// fleet's client.
pub static FLEETCTL_BINARY: &[u8] = include_bytes!(env!("CAIRN_FLEETCTL_PATH"));

/// cairn's units enabled by default, in the order they are enabled
/// (`cairn-update.service` has no `[Install]`: its timer starts it).
pub const AGENT_UNITS: &[&str] = &[
    "cairn-cloudinit.service",
    "cairn-ready.service",
    "cairn-update.timer",
    "cairn-health.service",
    "cairn-loader-update.service",
    "cairn-report.service",
    "cairn-install.service",
];

/// `(path in the tree, content, mode)` of the programs and units this
/// fixup installs (the update keys come from the definition).
pub fn files() -> Vec<(&'static str, &'static [u8], u32)> {
    vec![
        ("usr/bin/cairn-cloudinit", CLOUDINIT_BINARY, 0o755),
        (
            "usr/lib/systemd/system/cairn-cloudinit.service",
            include_bytes!("../../../cloudinit/units/cairn-cloudinit.service"),
            0o644,
        ),
        (
            "usr/lib/systemd/system/cairn-ready.service",
            include_bytes!("../../../cloudinit/units/cairn-ready.service"),
            0o644,
        ),
        ("usr/bin/cairn-update", UPDATE_BINARY, 0o755),
        (
            "usr/lib/systemd/system/cairn-update.service",
            include_bytes!("../../../updater/units/cairn-update.service"),
            0o644,
        ),
        (
            "usr/lib/systemd/system/cairn-update.timer",
            include_bytes!("../../../updater/units/cairn-update.timer"),
            0o644,
        ),
        (
            "usr/lib/systemd/system/cairn-health.service",
            include_bytes!("../../../updater/units/cairn-health.service"),
            0o644,
        ),
        (
            "usr/lib/systemd/system/cairn-loader-update.service",
            include_bytes!("../../../updater/units/cairn-loader-update.service"),
            0o644,
        ),
        (
            "usr/lib/systemd/system/cairn-report.service",
            include_bytes!("../../../updater/units/cairn-report.service"),
            0o644,
        ),
        (
            "usr/lib/systemd/system/cairn-install.service",
            include_bytes!("../../../updater/units/cairn-install.service"),
            0o644,
        ),
        ("usr/bin/fleetd", FLEETD_BINARY, 0o755),
        ("usr/bin/fleetctl", FLEETCTL_BINARY, 0o755),
        (
            "usr/lib/systemd/system/fleet.service",
            include_bytes!("../../../fleetd/units/fleet.service"),
            0o644,
        ),
    ]
}

pub fn apply(tree: &mut Tree, ctx: &Context<'_>) -> Result<Report, FixupError> {
    let origin: Arc<str> = Arc::from("cairn:agents");
    let files = files();
    for (path, data, mode) in &files {
        tree.insert(path, Entry::file(data.to_vec(), *mode, &origin))
            .map_err(FixupError::tree(NAME, path))?;
    }
    tree.insert(UPDATE_KEYS_DIR, Entry::dir(0o755, &origin))
        .map_err(FixupError::tree(NAME, UPDATE_KEYS_DIR))?;
    let mut ids = Vec::new();
    for k in ctx.update_keys {
        let path = format!("{UPDATE_KEYS_DIR}/{}", k.name);
        tree.insert(&path, Entry::file(k.data.clone(), 0o644, &origin))
            .map_err(FixupError::tree(NAME, &path))?;
        ids.extend(k.key_ids.iter().cloned());
    }
    let binaries: Vec<String> = files
        .iter()
        .filter(|(p, _, _)| p.starts_with("usr/bin/"))
        .map(|(p, d, _)| format!("/{p} ({} KiB)", d.len() / 1024))
        .collect();
    Ok(Report::new(
        NAME,
        format!(
            "installed {}, units {}; trusted update keys: {}",
            binaries.join(", "),
            AGENT_UNITS.join(", "),
            if ids.is_empty() {
                "none (no update.keys in the definition)".to_string()
            } else {
                ids.join(", ")
            }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixups::testutil::{ctx, def};

    fn assert_static(name: &str, bin: &[u8]) {
        assert_eq!(&bin[..4], b"\x7fELF", "{name}");
        // a static binary has no PT_INTERP (3) program header (ELF64, little endian)
        let u16_at = |o: usize| u16::from_le_bytes([bin[o], bin[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(bin[0x20..0x28].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
        assert!(phnum > 0);
        for i in 0..phnum {
            let o = phoff + i * phentsize;
            let p_type = u32::from_le_bytes(bin[o..o + 4].try_into().unwrap());
            assert_ne!(p_type, 3, "{name} has an interpreter: not static");
        }
    }

    #[test]
    fn the_agents_are_static_executables_with_their_units() {
        let f = files();
        let get = |p: &str| f.iter().find(|(q, _, _)| *q == p).unwrap().1;
        assert_static("cairn-cloudinit", get("usr/bin/cairn-cloudinit"));
        assert_static("cairn-update", get("usr/bin/cairn-update"));
        assert_static("fleetd", get("usr/bin/fleetd"));
        assert_static("fleetctl", get("usr/bin/fleetctl"));
        let unit = std::str::from_utf8(get("usr/lib/systemd/system/fleet.service")).unwrap();
        assert!(unit.contains("ExecStart=/usr/bin/fleetd"), "{unit}");
        assert!(!AGENT_UNITS.contains(&"fleet.service"));
        let unit =
            std::str::from_utf8(get("usr/lib/systemd/system/cairn-cloudinit.service")).unwrap();
        assert!(
            unit.contains("ExecStart=/usr/bin/cairn-cloudinit"),
            "{unit}"
        );
        assert!(unit.contains("WantedBy=multi-user.target"), "{unit}");
        let unit = std::str::from_utf8(get("usr/lib/systemd/system/cairn-update.service")).unwrap();
        assert!(
            unit.contains("ExecStart=/usr/bin/cairn-update apply"),
            "{unit}"
        );
        let unit = std::str::from_utf8(get("usr/lib/systemd/system/cairn-health.service")).unwrap();
        assert!(unit.contains("RequiredBy=boot-complete.target"), "{unit}");
        let unit = std::str::from_utf8(get("usr/lib/systemd/system/cairn-report.service")).unwrap();
        assert!(
            unit.contains("ConditionKernelCommandLine=cairn.report\n")
                && unit.contains("ConditionKernelCommandLine=!cairn.slot\n")
                && unit.contains("FailureAction=reboot")
                && unit.contains("WantedBy=multi-user.target"),
            "{unit}"
        );
        let unit =
            std::str::from_utf8(get("usr/lib/systemd/system/cairn-install.service")).unwrap();
        assert!(
            unit.contains("ExecStart=/usr/bin/cairn-update install")
                && unit.contains("ConditionKernelCommandLine=cairn.install\n")
                && unit.contains("StandardOutput=journal+console")
                && unit.contains("WantedBy=multi-user.target")
                && unit.contains("\nAfter=multi-user.target "),
            "{unit}"
        );
        // every enabled-by-default unit is installed here
        for u in AGENT_UNITS {
            assert!(
                f.iter()
                    .any(|(p, _, _)| *p == format!("usr/lib/systemd/system/{u}")),
                "{u} is not installed"
            );
        }
    }

    #[test]
    fn update_keys_land_in_the_trust_folder() {
        let d = def("");
        let key = crate::definition::UpdateKey {
            name: "lab.pub".into(),
            path: "keys/lab.pub".into(),
            data: b"cairn-ed25519 AAAA\n".to_vec(),
            key_ids: vec!["0123456789abcdef".into()],
        };
        let keys = [key];
        let mut c = ctx(&d, &[]);
        c.update_keys = &keys;
        let mut t = Tree::new_merged_usr();
        let r = apply(&mut t, &c).unwrap();
        assert_eq!(
            t.read_text("usr/lib/cairn/update-keys/lab.pub").unwrap(),
            "cairn-ed25519 AAAA\n"
        );
        assert!(r.summary.contains("0123456789abcdef"), "{}", r.summary);
        // without keys the folder is there, empty, and the report says so
        let mut t = Tree::new_merged_usr();
        let r = apply(&mut t, &ctx(&d, &[])).unwrap();
        assert!(t.contains("usr/lib/cairn/update-keys"));
        assert!(r.summary.contains("none"), "{}", r.summary);
    }
}
