//! Recognising what the state partition holds: an ext2/3/4 file system (by
//! its superblock magic), the "never formatted" mark the disk image starts
//! it with, or neither. `/init` formats only the second: a partition with
//! neither (a damaged superblock, a foreign file system) may hold a
//! machine's data and is left alone.

use std::io::{self, Read, Seek, SeekFrom};

/// Byte offset of the superblock.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Offset of `s_magic` inside the superblock.
pub const MAGIC_OFFSET: u64 = 56;
/// `s_magic` (little-endian on disk).
pub const MAGIC: u16 = 0xEF53;

/// The first bytes of a state partition that was never formatted: written
/// by the disk image (`cairn_disk::STATE_NEW_MARK`, the same bytes), erased
/// by `/init` once the partition is formatted.
pub use cairn_formats::partitions::STATE_NEW_MARK;

/// What a state partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateContent {
    /// An ext2/3/4 superblock: mount it.
    Ext4,
    /// The never-formatted mark and no superblock: format it.
    New,
    /// Neither: not ours to format.
    Unknown,
}

/// Reads what `dev` holds (the superblock magic wins over the mark).
pub fn state_content<R: Read + Seek>(dev: &mut R) -> io::Result<StateContent> {
    if has_ext4_magic(dev)? {
        return Ok(StateContent::Ext4);
    }
    let mut m = [0u8; STATE_NEW_MARK.len()];
    dev.seek(SeekFrom::Start(0))?;
    match dev.read_exact(&mut m) {
        Ok(()) if &m == STATE_NEW_MARK => Ok(StateContent::New),
        Ok(()) => Ok(StateContent::Unknown),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(StateContent::Unknown),
        Err(e) => Err(e),
    }
}

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

    #[test]
    fn state_content_needs_the_mark_to_be_new() {
        let mut img = vec![0u8; 4096];
        // zeros (a wiped or damaged start) are not ours to format
        assert_eq!(
            state_content(&mut Cursor::new(&img)).unwrap(),
            StateContent::Unknown
        );
        img[..32].copy_from_slice(STATE_NEW_MARK);
        assert_eq!(
            state_content(&mut Cursor::new(&img)).unwrap(),
            StateContent::New
        );
        // one byte off is not the mark
        img[3] ^= 1;
        assert_eq!(
            state_content(&mut Cursor::new(&img)).unwrap(),
            StateContent::Unknown
        );
        img[3] ^= 1;
        // a superblock wins over a mark left behind
        img[1080] = 0x53;
        img[1081] = 0xEF;
        assert_eq!(
            state_content(&mut Cursor::new(&img)).unwrap(),
            StateContent::Ext4
        );
        assert_eq!(
            state_content(&mut Cursor::new(&img[..10])).unwrap(),
            StateContent::Unknown
        );
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
