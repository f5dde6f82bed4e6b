//! Recognising an ext2/3/4 file system by its superblock magic, which is how
//! `/init` decides on first boot that the state partition still has to be
//! formatted. Only the magic is checked: anything else (zeros, garbage left
//! by the image) counts as "no file system".

use std::io::{self, Read, Seek, SeekFrom};

/// Byte offset of the superblock.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Offset of `s_magic` inside the superblock.
pub const MAGIC_OFFSET: u64 = 56;
/// `s_magic` (little-endian on disk).
pub const MAGIC: u16 = 0xEF53;

/// True when the device or image starts with an ext2/3/4 superblock.
/// A device too short to hold one has none.
pub fn has_ext4_magic<R: Read + Seek>(dev: &mut R) -> io::Result<bool> {
    let mut m = [0u8; 2];
    dev.seek(SeekFrom::Start(SUPERBLOCK_OFFSET + MAGIC_OFFSET))?;
    match dev.read_exact(&mut m) {
        Ok(()) => Ok(u16::from_le_bytes(m) == MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::Command;

    #[test]
    fn synthetic() {
        let mut img = vec![0u8; 4096];
        assert!(!has_ext4_magic(&mut Cursor::new(&img)).unwrap());
        img[1080] = 0x53;
        img[1081] = 0xEF;
        assert!(has_ext4_magic(&mut Cursor::new(&img)).unwrap());
        // Big-endian bytes are not the magic.
        img[1080] = 0xEF;
        img[1081] = 0x53;
        assert!(!has_ext4_magic(&mut Cursor::new(&img)).unwrap());
        assert!(!has_ext4_magic(&mut Cursor::new(&img[..1000])).unwrap());
    }

    /// A file system made by the real mke2fs (package e2fsprogs) is recognised.
    #[test]
    fn real_mke2fs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.img");
        std::fs::write(&path, vec![0u8; 8 << 20]).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        assert!(!has_ext4_magic(&mut f).unwrap());
        let mke2fs = ["/sbin/mke2fs", "/usr/sbin/mke2fs"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("mke2fs (package e2fsprogs)");
        let out = Command::new(mke2fs)
            .args(["-q", "-t", "ext4", "-L", "cairn-state", "-F"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut f = std::fs::File::open(&path).unwrap();
        assert!(has_ext4_magic(&mut f).unwrap());
    }
}
