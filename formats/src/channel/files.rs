//! Crash-safe writes: temp file, fsync, rename, fsync of the directory;
//! for the files the channel produces (`update.pub`, `manifest.json`,
//! `manifest.sig`) and the agent's own (`cairn_updater::fsutil`).

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::error::{ChannelError, Result};

/// Writes `data` to `path` atomically: a temp file beside it, fsync,
/// rename over `path`, fsync of the directory. A crash leaves either the
/// old file or the new one (plus, at worst, a `.tmp` leftover that the
/// next write replaces).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| ChannelError::NotAFilePath(path.to_path_buf()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut f = File::create(&tmp).map_err(ChannelError::io(&tmp))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(ChannelError::io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(ChannelError::io(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ChannelError::io(dir))
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
