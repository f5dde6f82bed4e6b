//! Crash-safe file writes for the agent's files (the channel's
//! `write_atomic`, fsync of a directory) and the clock. The timestamps of
//! manifests and state are `cairn_formats::channel::timestamp`.

use std::fs::File;
use std::path::Path;

use crate::error::{Result, UpdateError};

/// fsync a directory, so that a rename or unlink inside it is durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(UpdateError::io(dir))
}

/// Writes `data` to `path` atomically (temp file, fsync, rename, fsync of
/// the directory): [`cairn_formats::channel::write_atomic`].
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    Ok(cairn_formats::channel::write_atomic(path, data)?)
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
    fn atomic_write_names_the_path_it_could_not_write() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("missing-dir").join("f");
        let e = write_atomic(&p, b"one").unwrap_err().to_string();
        assert!(e.contains("missing-dir"), "{e}");
    }
}
