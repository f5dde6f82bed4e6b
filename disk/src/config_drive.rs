//! An OpenStack-style config drive: a small FAT32 image labelled `config-2`
//! holding `openstack/latest/user_data` and/or
//! `openstack/latest/meta_data.json`, the data source `cairn-cloudinit`
//! (like coreos-cloudinit before it) reads at boot. Written in process with
//! `fatfs` (the ESP's writer, so no mkfs or mtools on the host), sparse,
//! every timestamp 1980-01-01 and the volume id derived from the contents,
//! so the same files give the same bytes.

use std::fs::{File, OpenOptions};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::DiskError;
use crate::esp;
use crate::EspSource;

/// The volume label `cairn-cloudinit` looks for, and the files in the
/// drive (user-data, metadata).
pub use cairn_formats::config_drive::{LABEL, META_DATA, USER_DATA};
/// The most the files may hold together.
pub const MAX_CONTENT: u64 = 64 << 20;

/// FAT32 needs ~65k clusters: 36 MiB gives enough 512-byte ones. The file
/// is sparse, so this costs well under a MiB of disk.
const MIN_SIZE: u64 = 36 << 20;
const MIB: u64 = 1 << 20;

/// The image size for `content` bytes of files: room for them twice over
/// on top of the FAT32 minimum, in whole MiB.
fn size_for(content: u64) -> u64 {
    MIN_SIZE + (content * 2).div_ceil(MIB) * MIB
}

/// Writes the config drive `path` (replacing any file there) holding
/// `files`: `/`-separated paths inside the drive (normally [`USER_DATA`]
/// and [`META_DATA`]; parent directories are made) and their contents.
/// On failure the partial image is removed.
pub fn write(path: &Path, files: &[(&str, &[u8])]) -> Result<(), DiskError> {
    let content: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    if content > MAX_CONTENT {
        return Err(DiskError::InvalidSize {
            field: "config drive contents",
            value: content,
            reason: format!("is more than the {MAX_CONTENT} bytes a config drive may hold"),
        });
    }
    let listed: Vec<(String, EspSource<'_>)> = files
        .iter()
        .map(|(p, b)| ((*p).to_string(), EspSource::from(*b)))
        .collect();
    let checked = esp::check_files(&listed)?;
    let mut h = Sha256::new();
    for f in &checked {
        h.update(f.path.as_bytes());
        h.update([0]);
        if let EspSource::Bytes(b) = f.source {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
    }
    let d = h.finalize();
    let volume_id = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    let mut label = [b' '; 11];
    label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());

    let size = size_for(content);
    let image = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| DiskError::io("creating config drive", path, e))?;
    let res = (|image: &File| {
        image
            .set_len(size)
            .map_err(|e| DiskError::io("sizing config drive", path, e))?;
        esp::write_esp(image, path, 0, size, volume_id, label, 0, &checked)?;
        image
            .sync_all()
            .map_err(|e| DiskError::io("writing config drive", path, e))
    })(&image);
    if res.is_err() {
        let _ = std::fs::remove_file(path);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_leave_room_and_fat32_fits() {
        assert_eq!(size_for(0), MIN_SIZE);
        assert_eq!(size_for(1), MIN_SIZE + MIB);
        assert_eq!(size_for(MAX_CONTENT), MIN_SIZE + 2 * MAX_CONTENT);
        for c in [0, 1, 300 << 10, MAX_CONTENT] {
            assert!(esp::cluster_size(size_for(c)).is_some(), "{c}");
        }
    }

    #[test]
    fn the_same_files_give_the_same_bytes_and_too_much_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a.img"), t.path().join("b.img"));
        let files: [(&str, &[u8]); 2] = [(META_DATA, b"{}"), (USER_DATA, b"#cloud-config\n")];
        write(&a, &files).unwrap();
        write(&b, &[files[1], files[0]]).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
        let big = vec![b'x'; MAX_CONTENT as usize + 1];
        let c = t.path().join("c.img");
        let e = write(&c, &[(USER_DATA, &big)]).unwrap_err();
        assert!(e.to_string().contains("config drive contents"), "{e}");
        assert!(!c.exists());
        // a bad path is refused before anything is written
        assert!(write(&c, &[("../x", b"y")]).is_err());
        assert!(!c.exists());
    }
}
