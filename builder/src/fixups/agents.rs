//! The `agents` fixup: installs cairn's own on-host programs into the tree,
//! as static binaries built with the `cairn` binary (see `build.rs`) with
//! their systemd units: `cairn-cloudinit` (applies the machine's
//! cloud-config at every boot). The units fixup enables them by default
//! (`units.disable` in a definition turns one off).
//!
//! Runs first, so that an overlay may replace a unit file.

use std::sync::Arc;

use super::{Context, FixupError, Report};
use crate::tree::{Entry, Tree};

const NAME: &str = "agents";

/// The static `cairn-cloudinit` binary.
pub static CLOUDINIT_BINARY: &[u8] = include_bytes!(env!("CAIRN_CLOUDINIT_PATH"));

/// cairn's units enabled by default, in the order they are enabled.
pub const AGENT_UNITS: &[&str] = &["cairn-cloudinit.service"];

/// `(path in the tree, content, mode)` of everything this fixup installs.
pub fn files() -> Vec<(&'static str, &'static [u8], u32)> {
    vec![
        ("usr/bin/cairn-cloudinit", CLOUDINIT_BINARY, 0o755),
        (
            "usr/lib/systemd/system/cairn-cloudinit.service",
            include_bytes!("../../../cloudinit/units/cairn-cloudinit.service"),
            0o644,
        ),
    ]
}

pub fn apply(tree: &mut Tree, _ctx: &Context<'_>) -> Result<Report, FixupError> {
    let origin: Arc<str> = Arc::from("cairn:agents");
    let files = files();
    for (path, data, mode) in &files {
        tree.insert(path, Entry::file(data.to_vec(), *mode, &origin))
            .map_err(FixupError::tree(NAME, path))?;
    }
    Ok(Report::new(
        NAME,
        format!(
            "installed {} ({} KiB) and {}",
            files[0].0,
            files[0].1.len() / 1024,
            AGENT_UNITS.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_is_a_static_executable_with_its_unit() {
        let f = files();
        let bin = f[0].1;
        assert_eq!(&bin[..4], b"\x7fELF");
        // a static binary has no PT_INTERP (3) program header (ELF64, little endian)
        let u16_at = |o: usize| u16::from_le_bytes([bin[o], bin[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(bin[0x20..0x28].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
        assert!(phnum > 0);
        for i in 0..phnum {
            let o = phoff + i * phentsize;
            let p_type = u32::from_le_bytes(bin[o..o + 4].try_into().unwrap());
            assert_ne!(p_type, 3, "cairn-cloudinit has an interpreter: not static");
        }
        let unit = std::str::from_utf8(f[1].1).unwrap();
        assert!(
            unit.contains("ExecStart=/usr/bin/cairn-cloudinit"),
            "{unit}"
        );
        assert!(unit.contains("WantedBy=multi-user.target"), "{unit}");
    }
}
