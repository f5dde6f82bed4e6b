//! Unit files on the local disk, as fleetctl found them for `submit`,
//! `load` and `start`: the argument as a path (`./units/web.service`), or
//! for an instance without a file of its own its template beside it
//! (`./units/web@.service`); read with limits (size, UTF-8, no NUL).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use cairn_fleet::registry::MAX_UNIT_TEXT;
use cairn_fleet::unit::UnitName;

/// Reads a unit file: a regular file of at most [`MAX_UNIT_TEXT`] bytes
/// of UTF-8 text without NUL bytes.
pub fn read_unit_file(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut bytes = Vec::new();
    f.take(MAX_UNIT_TEXT as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > MAX_UNIT_TEXT {
        bail!(
            "{}: {} bytes, more than the {MAX_UNIT_TEXT} a unit may have",
            path.display(),
            meta.len().max(bytes.len() as u64)
        );
    }
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        bail!("{}: a NUL byte at offset {at}", path.display());
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: not UTF-8 text (at byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Whether something exists at `path` (fleet: `os.Stat` not "does not
/// exist"); a symlink to nothing counts, and fails when read.
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The local file for unit `name` given as `arg`: `arg` itself, else for
/// an instance its template in the same folder. `None` when neither
/// exists.
pub fn local_file(arg: &str, name: &UnitName) -> Option<PathBuf> {
    let p = PathBuf::from(arg);
    if exists(&p) {
        return Some(p);
    }
    template_file(arg, name)
}

/// The template file of instance `name` beside `arg`, if it exists.
pub fn template_file(arg: &str, name: &UnitName) -> Option<PathBuf> {
    if !name.is_instance() {
        return None;
    }
    let template = name.template()?;
    let dir = Path::new(arg).parent().unwrap_or(Path::new(""));
    let t = dir.join(template);
    exists(&t).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let d = tempfile::tempdir().unwrap();
        let ok = d.path().join("a.service");
        std::fs::write(&ok, "[Service]\nExecStart=/bin/true\n").unwrap();
        assert!(read_unit_file(&ok).unwrap().starts_with("[Service]"));
        let nul = d.path().join("n.service");
        std::fs::write(&nul, "[Service]\n\0").unwrap();
        let e = read_unit_file(&nul).unwrap_err().to_string();
        assert!(e.ends_with("a NUL byte at offset 10"), "{e}");
        let big = d.path().join("big.service");
        std::fs::write(&big, vec![b'#'; MAX_UNIT_TEXT + 10]).unwrap();
        let e = read_unit_file(&big).unwrap_err().to_string();
        assert!(e.contains("262154 bytes, more than the 262144"), "{e}");
        let bin = d.path().join("bin.service");
        std::fs::write(&bin, b"[Unit]\n\xff").unwrap();
        assert!(read_unit_file(&bin)
            .unwrap_err()
            .to_string()
            .contains("not UTF-8"));
        assert!(read_unit_file(d.path())
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        // an instance finds its template beside it
        std::fs::write(d.path().join("web@.service"), "").unwrap();
        let arg = d.path().join("web@1.service");
        let arg = arg.to_str().unwrap();
        let n = UnitName::parse("web@1.service").unwrap();
        assert_eq!(local_file(arg, &n), Some(d.path().join("web@.service")));
        let n = UnitName::parse("other.service").unwrap();
        assert_eq!(local_file("other.service", &n), None);
    }
}
