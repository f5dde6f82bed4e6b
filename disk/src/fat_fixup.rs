//! A repair pass over a FAT32 volume that `fatfs` 0.3 has just written,
//! for the one way its output is malformed: `Dir::create_dir` writes a
//! long-file-name (LFN) entry in front of the `.` and `..` entries of every
//! new directory, so slots 0 and 1 are not `.` and `..` as FAT requires,
//! and `..` of a top-level directory points at the root's cluster instead
//! of 0. `fsck.fat` reports both (upstream rust-fatfs issue #117, fixed on
//! its unreleased master by pull requests #99 and #100; no release on
//! crates.io carries the fix). Firmware tends not to care; fsck does.
//!
//! The pass walks every directory from the root and, where the first four
//! slots are exactly [LFN, `.`, LFN, `..`], moves the rest of the directory
//! up two slots; it sets `..` to cluster 0 under the root. Directories
//! already in the right shape are left alone, so the pass is a no-op on a
//! fixed fatfs and can be deleted with the upgrade. It reads only the boot
//! sector, the first FAT and directory clusters; it owns nothing else.

use std::io::{self, Read, Seek, SeekFrom, Write};

const ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0f;
const ATTR_DIR: u8 = 0x10;
const ATTR_VOLUME: u8 = 0x08;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";
/// A directory nesting deeper than this is certainly a loop.
const MAX_DEPTH: usize = 64;
/// Limits the clusters followed in one chain (a loop guard).
const MAX_DIR_CLUSTERS: usize = 1 << 16;

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

struct Geometry {
    cluster_bytes: u64,
    fat_offset: u64,
    data_offset: u64,
    root_cluster: u32,
    clusters: u32,
}

impl Geometry {
    fn read<V: Read + Seek>(vol: &mut V) -> io::Result<Self> {
        let mut bs = [0u8; 512];
        vol.seek(SeekFrom::Start(0))?;
        vol.read_exact(&mut bs)?;
        let u16_at = |o: usize| u64::from(u16::from_le_bytes([bs[o], bs[o + 1]]));
        let u32_at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]);
        let sector = u16_at(11);
        let spc = u64::from(bs[13]);
        let reserved = u16_at(14);
        let fats = u64::from(bs[16]);
        let spf = u64::from(u32_at(36));
        let total = u64::from(u32_at(32));
        if sector < 512 || spc == 0 || spf == 0 || u16_at(22) != 0 {
            return Err(bad("not a FAT32 boot sector"));
        }
        let data_sectors = total.saturating_sub(reserved + fats * spf);
        Ok(Geometry {
            cluster_bytes: sector * spc,
            fat_offset: reserved * sector,
            data_offset: (reserved + fats * spf) * sector,
            root_cluster: u32_at(44),
            clusters: (data_sectors / spc) as u32,
        })
    }

    fn valid(&self, c: u32) -> bool {
        c >= 2 && c < self.clusters + 2
    }

    fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset + u64::from(c - 2) * self.cluster_bytes
    }

    fn chain<V: Read + Seek>(&self, vol: &mut V, first: u32) -> io::Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut c = first;
        while self.valid(c) {
            if out.len() >= MAX_DIR_CLUSTERS {
                return Err(bad("directory cluster chain loops"));
            }
            out.push(c);
            let mut e = [0u8; 4];
            vol.seek(SeekFrom::Start(self.fat_offset + u64::from(c) * 4))?;
            vol.read_exact(&mut e)?;
            c = u32::from_le_bytes(e) & 0x0fff_ffff;
        }
        Ok(out)
    }
}

fn first_cluster(e: &[u8]) -> u32 {
    u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
        | u32::from(u16::from_le_bytes([e[26], e[27]]))
}

fn set_first_cluster(e: &mut [u8], c: u32) {
    e[20..22].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(c as u16).to_le_bytes());
}

/// Repairs the directories of the FAT32 volume `vol` (positioned anywhere;
/// offsets are relative to its start). Returns how many directories were
/// changed.
pub(crate) fn fix_dot_entries<V: Read + Write + Seek>(vol: &mut V) -> io::Result<usize> {
    let g = Geometry::read(vol)?;
    let mut fixed = 0;
    // (directory's first cluster, its parent's cluster as ".." must say it)
    let mut stack = vec![(g.root_cluster, None::<u32>, 0usize)];
    while let Some((dir, parent, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(bad("directories nest too deep (a loop?)"));
        }
        let chain = g.chain(vol, dir)?;
        let mut data = vec![0u8; chain.len() * g.cluster_bytes as usize];
        for (i, &c) in chain.iter().enumerate() {
            vol.seek(SeekFrom::Start(g.cluster_offset(c)))?;
            let at = i * g.cluster_bytes as usize;
            vol.read_exact(&mut data[at..at + g.cluster_bytes as usize])?;
        }
        let mut changed = false;
        if let Some(parent) = parent {
            let slot = |i: usize| &data[i * ENTRY..(i + 1) * ENTRY];
            if data.len() >= 4 * ENTRY
                && slot(0)[11] == ATTR_LFN
                && &slot(1)[..11] == DOT
                && slot(2)[11] == ATTR_LFN
                && &slot(3)[..11] == DOTDOT
            {
                // Drop the two LFN entries: shift everything after them.
                let mut shifted = Vec::with_capacity(data.len());
                shifted.extend_from_slice(&data[ENTRY..2 * ENTRY]);
                shifted.extend_from_slice(&data[3 * ENTRY..]);
                shifted.resize(data.len(), 0);
                data = shifted;
                changed = true;
            }
            if data.len() >= 2 * ENTRY && &data[ENTRY..ENTRY + 11] == DOTDOT {
                let dotdot = &mut data[ENTRY..2 * ENTRY];
                if first_cluster(dotdot) != parent {
                    set_first_cluster(dotdot, parent);
                    changed = true;
                }
            }
        }
        for e in data.chunks(ENTRY) {
            match e[0] {
                0x00 => break,
                0xe5 => continue,
                _ => {}
            }
            let attr = e[11];
            if attr == ATTR_LFN || attr & ATTR_VOLUME != 0 || attr & ATTR_DIR == 0 || e[0] == b'.' {
                continue;
            }
            let child = first_cluster(e);
            if g.valid(child) {
                // ".." of a directory in the root says 0, not the root's
                // cluster.
                let parent_ref = if parent.is_none() { 0 } else { dir };
                stack.push((child, Some(parent_ref), depth + 1));
            }
        }
        if changed {
            for (i, &c) in chain.iter().enumerate() {
                vol.seek(SeekFrom::Start(g.cluster_offset(c)))?;
                let at = i * g.cluster_bytes as usize;
                vol.write_all(&data[at..at + g.cluster_bytes as usize])?;
            }
            fixed += 1;
        }
    }
    vol.flush()?;
    Ok(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn volume() -> Cursor<Vec<u8>> {
        let mut v = Cursor::new(vec![0u8; 34 << 20]);
        fatfs::format_volume(
            &mut v,
            fatfs::FormatVolumeOptions::new()
                .fat_type(fatfs::FatType::Fat32)
                .bytes_per_cluster(512),
        )
        .unwrap();
        v.set_position(0);
        v
    }

    fn dir_entries(v: &mut Cursor<Vec<u8>>, path: &str) -> Vec<String> {
        v.set_position(0);
        let fs = fatfs::FileSystem::new(v, fatfs::FsOptions::new()).unwrap();
        let names = fs
            .root_dir()
            .open_dir(path)
            .unwrap()
            .iter()
            .map(|e| e.unwrap().file_name())
            .collect();
        names
    }

    #[test]
    fn repairs_fatfs_directories_and_keeps_their_contents() {
        let mut v = volume();
        {
            let fs = fatfs::FileSystem::new(&mut v, fatfs::FsOptions::new()).unwrap();
            {
                let root = fs.root_dir();
                root.create_dir("top").unwrap();
                root.create_dir("top/inner").unwrap();
                // Enough entries to spill the directory into a second cluster.
                for i in 0..20 {
                    root.create_file(&format!("top/a-long-file-name-{i}.txt"))
                        .unwrap();
                }
            }
            fs.unmount().unwrap();
        }
        let before = dir_entries(&mut v, "top");
        assert_eq!(before.len(), 2 + 1 + 20);
        let g = Geometry::read(&mut v).unwrap();

        assert_eq!(fix_dot_entries(&mut v).unwrap(), 2);
        // A second pass finds nothing to do.
        assert_eq!(fix_dot_entries(&mut v).unwrap(), 0);
        assert_eq!(dir_entries(&mut v, "top"), before);
        assert_eq!(dir_entries(&mut v, "top/inner"), [".", ".."]);

        // Slots 0 and 1 of "top" are "." (itself) and ".." (0: the root).
        let raw = v.get_ref();
        let root = g.cluster_offset(g.root_cluster) as usize;
        let top_entry = (0..16)
            .map(|i| &raw[root + i * 32..root + (i + 1) * 32])
            .find(|e| e[11] & ATTR_DIR != 0 && e[11] != ATTR_LFN)
            .unwrap();
        let top = first_cluster(top_entry);
        let at = g.cluster_offset(top) as usize;
        assert_eq!(&raw[at..at + 11], DOT);
        assert_eq!(first_cluster(&raw[at..at + 32]), top);
        assert_eq!(&raw[at + 32..at + 43], DOTDOT);
        assert_eq!(first_cluster(&raw[at + 32..at + 64]), 0);
    }
}
