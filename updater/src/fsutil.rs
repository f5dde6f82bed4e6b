//! Crash-safe file writes for the agent's files (temp file, fsync,
//! rename, fsync of the directory) and the clock. The timestamps of
//! manifests and state are `cairn_formats::channel::timestamp`.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{Result, UpdateError};

/// fsync a directory, so that a rename or unlink inside it is durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(UpdateError::io(dir))
}

/// Writes `data` to `path` atomically: a temp file beside it, fsync,
/// rename over `path`, fsync of the directory. A crash leaves either the
/// old file or the new one (plus, at worst, a `.tmp` leftover that the
/// next write replaces).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| UpdateError::Refused(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut f = File::create(&tmp).map_err(UpdateError::io(&tmp))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(UpdateError::io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(UpdateError::io(path))?;
    fsync_dir(dir)
}

/// Now, in seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }
}
