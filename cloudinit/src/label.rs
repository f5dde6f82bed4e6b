//! Finds the block device whose file system carries a given label by reading the labels of the file systems a config drive is made with (ISO 9660 with its Joliet name, FAT12/16/32, ext2/3/4) straight from their superblocks: a few small reads per device instead of running `blkid` (whose start and all-types probe cost 0.7 s of CPU under TCG on every boot without a config drive).
//!
//! The agent runs before udev has seen every device, so it cannot wait for
//! `/dev/disk/by-label`; it walks `/sys/class/block` (every disk and
//! partition the kernel knows) and opens `/dev/NAME` read-only and
//! non-blocking (so that a CD-ROM drive opens without a disc), and, as
//! blkid does, does not read a CD-ROM drive that has no disc (the read
//! would only fail, with I/O errors on the console). What it reads is bounded: at most 16 ISO 9660 volume
//! descriptors and one FAT root directory cluster of at most 64 KiB.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A file system recognised on a device: its kind (a `mount -t` name) and
/// the labels it carries (ISO 9660 has two: the primary volume
/// descriptor's and Joliet's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    pub fstype: &'static str,
    pub labels: Vec<String>,
}

/// The first device under `sys_block` (`/sys/class/block`), in name
/// order, whose file system carries one of `labels`, as
/// `(dev_dir/NAME, what was found)`. Devices that cannot be opened or read
/// (an empty CD-ROM drive, a vanished partition) are skipped.
pub fn find(sys_block: &Path, dev_dir: &Path, labels: &[&str]) -> Option<(PathBuf, Probed)> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        // a size of 0 sectors: an unbound loop device, an empty tray
        let sectors = std::fs::read_to_string(sys_block.join(&name).join("size"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if sectors == Some(0) {
            continue;
        }
        let dev = dev_dir.join(&name);
        let probed = match probe_path(&dev) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!("reading {}: {e}", dev.display());
                continue;
            }
        };
        if probed.labels.iter().any(|l| labels.contains(&l.as_str())) {
            return Some((dev, probed));
        }
    }
    None
}

/// Opens `dev` read-only and non-blocking and probes it; a CD-ROM drive
/// without a disc is not read (see [`empty_cdrom`]).
pub fn probe_path(dev: &Path) -> io::Result<Option<Probed>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(dev)?;
    if empty_cdrom(&f) {
        tracing::debug!("{}: a CD-ROM drive without a disc", dev.display());
        return Ok(None);
    }
    probe(&f)
}

// <linux/cdrom.h>
const CDROM_DRIVE_STATUS: u32 = 0x5326;
const CDROM_GET_CAPABILITY: u32 = 0x5331;
const CDSL_CURRENT: libc::c_int = libc::c_int::MAX;
const CDS_NO_DISC: libc::c_int = 1;
const CDS_TRAY_OPEN: libc::c_int = 2;

/// Whether `dev` is a CD-ROM drive with no disc in it or its tray open:
/// reading one fails and fills the console with the kernel's I/O errors
/// (blkid checks the same way before it reads). Any other device, or a
/// file, answers the capability request with an error: not a CD-ROM.
fn empty_cdrom(dev: &File) -> bool {
    use std::os::fd::AsRawFd;
    let fd = dev.as_raw_fd();
    // SAFETY: `fd` is open for the duration of both calls, and neither
    // request takes a pointer: CDROM_GET_CAPABILITY ignores its argument
    // and CDROM_DRIVE_STATUS takes a slot number by value.
    unsafe {
        libc::ioctl(fd, CDROM_GET_CAPABILITY as _, 0) >= 0
            && matches!(
                libc::ioctl(fd, CDROM_DRIVE_STATUS as _, CDSL_CURRENT),
                CDS_NO_DISC | CDS_TRAY_OPEN
            )
    }
}

/// What file system `dev` holds, of those a config drive is made with;
/// `None` for anything else (or nothing).
pub fn probe(dev: &File) -> io::Result<Option<Probed>> {
    if let Some(p) = iso9660(dev)? {
        return Ok(Some(p));
    }
    if let Some(p) = ext(dev)? {
        return Ok(Some(p));
    }
    fat(dev)
}

/// Reads `len` bytes at `offset`; `None` when the device is shorter.
fn read_at(dev: &File, offset: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; len];
    match dev.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// A label field: trailing spaces and NULs cut; `None` when empty or not
/// UTF-8.
fn text(bytes: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(bytes).ok()?;
    let s = s.trim_end_matches([' ', '\0']);
    (!s.is_empty()).then(|| s.to_string())
}

const ISO_SECTOR: u64 = 2048;
/// Volume descriptors start at sector 16; a set ends with type 255.
const ISO_FIRST_DESCRIPTOR: u64 = 16;
const ISO_MAX_DESCRIPTORS: u64 = 16;

fn iso9660(dev: &File) -> io::Result<Option<Probed>> {
    let mut primary = None;
    let mut joliet = None;
    for i in 0..ISO_MAX_DESCRIPTORS {
        let Some(d) = read_at(dev, (ISO_FIRST_DESCRIPTOR + i) * ISO_SECTOR, 2048)? else {
            break;
        };
        if &d[1..6] != b"CD001" || d[6] != 1 {
            break;
        }
        match d[0] {
            1 if primary.is_none() => primary = Some(text(&d[40..72])),
            // a supplementary descriptor with one of the UCS-2 escape
            // sequences is Joliet's
            2 if joliet.is_none() && matches!(&d[88..91], b"%/@" | b"%/C" | b"%/E") => {
                let units: Vec<u16> = d[40..72]
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                joliet = Some(
                    String::from_utf16(&units)
                        .ok()
                        .and_then(|s| text(s.as_bytes())),
                );
            }
            255 => break,
            _ => {}
        }
    }
    let Some(primary) = primary else {
        return Ok(None);
    };
    let mut labels: Vec<String> = joliet.flatten().into_iter().collect();
    if let Some(p) = primary {
        if !labels.contains(&p) {
            labels.push(p);
        }
    }
    Ok(Some(Probed {
        fstype: "iso9660",
        labels,
    }))
}

const EXT_SUPERBLOCK: u64 = 1024;
const EXT_MAGIC: u16 = 0xEF53;

fn ext(dev: &File) -> io::Result<Option<Probed>> {
    let Some(sb) = read_at(dev, EXT_SUPERBLOCK, 136)? else {
        return Ok(None);
    };
    if u16::from_le_bytes([sb[56], sb[57]]) != EXT_MAGIC {
        return Ok(None);
    }
    Ok(Some(Probed {
        // the ext4 driver mounts ext2 and ext3 as well
        fstype: "ext4",
        labels: text(&sb[120..136]).into_iter().collect(),
    }))
}

/// The most of a FAT root directory read for its volume label entry (the
/// label is normally its first entry).
const FAT_MAX_ROOT: usize = 64 * 1024;
const FAT_ATTR_VOLUME_ID: u8 = 0x08;
const FAT_ATTR_LONG_NAME: u8 = 0x0F;
const FAT_NO_NAME: &str = "NO NAME";

fn fat(dev: &File) -> io::Result<Option<Probed>> {
    let Some(bs) = read_at(dev, 0, 512)? else {
        return Ok(None);
    };
    let u16_at = |o: usize| u16::from_le_bytes([bs[o], bs[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]);
    let bytes_per_sector = u16_at(11) as u64;
    let sectors_per_cluster = bs[13] as u64;
    let reserved = u16_at(14) as u64;
    let fats = bs[16] as u64;
    let root_entries = u16_at(17) as u64;
    let media = bs[21];
    let fat_size16 = u16_at(22) as u64;
    if bs[510..512] != [0x55, 0xAA]
        || !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        || !sectors_per_cluster.is_power_of_two()
        || reserved == 0
        || fats == 0
        || !(media == 0xF0 || media >= 0xF8)
    {
        return Ok(None);
    }
    let fat32 = fat_size16 == 0;
    // the boot sector's label, behind the extended boot signature
    let (sig_at, label_at) = if fat32 { (66, 71) } else { (38, 43) };
    let boot_label = (bs[sig_at] == 0x29)
        .then(|| text(&bs[label_at..label_at + 11]))
        .flatten()
        .filter(|l| l != FAT_NO_NAME);
    // the root directory's volume label entry, which wins (as blkid has it)
    let (root_offset, root_len) = if fat32 {
        let fat_size = u32_at(36) as u64;
        let root_cluster = (u32_at(44) as u64).max(2);
        let first_data = reserved + fats * fat_size;
        (
            (first_data + (root_cluster - 2) * sectors_per_cluster) * bytes_per_sector,
            sectors_per_cluster * bytes_per_sector,
        )
    } else {
        (
            (reserved + fats * fat_size16) * bytes_per_sector,
            root_entries * 32,
        )
    };
    let root_len = (root_len as usize).min(FAT_MAX_ROOT);
    let mut root_label = None;
    if let Some(root) = read_at(dev, root_offset, root_len)? {
        for e in root.chunks_exact(32) {
            match e[0] {
                0x00 => break,
                0xE5 => continue,
                _ => {}
            }
            let attr = e[11];
            if attr != FAT_ATTR_LONG_NAME && attr & FAT_ATTR_VOLUME_ID != 0 {
                root_label = text(&e[0..11]);
                break;
            }
        }
    }
    Ok(Some(Probed {
        fstype: "vfat",
        labels: root_label.or(boot_label).into_iter().collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(bytes: &[(u64, &[u8])], len: u64) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        for (off, b) in bytes {
            f.as_file().write_all_at(b, *off).unwrap();
        }
        f.flush().unwrap();
        f
    }

    fn probed(f: &tempfile::NamedTempFile) -> Option<Probed> {
        probe(f.as_file()).unwrap()
    }

    fn padded(s: &str, len: usize, pad: u8) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.resize(len, pad);
        v
    }

    fn iso_descriptor(kind: u8, label: &[u8], escape: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; 2048];
        d[0] = kind;
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        d[40..40 + label.len()].copy_from_slice(label);
        d[88..88 + escape.len()].copy_from_slice(escape);
        d
    }

    #[test]
    fn iso9660_primary_and_joliet_labels() {
        let pvd = iso_descriptor(1, &padded("CONFIG_2", 32, b' '), b"");
        let joliet: Vec<u8> = "config-2"
            .encode_utf16()
            .chain(std::iter::repeat_n(0x20, 8))
            .flat_map(|u| u.to_be_bytes())
            .collect();
        let svd = iso_descriptor(2, &joliet, b"%/E");
        let end = iso_descriptor(255, b"", b"");
        let f = image(
            &[(16 * 2048, &pvd), (17 * 2048, &svd), (18 * 2048, &end)],
            64 * 1024,
        );
        assert_eq!(
            probed(&f),
            Some(Probed {
                fstype: "iso9660",
                labels: vec!["config-2".into(), "CONFIG_2".into()]
            })
        );
        // a supplementary descriptor without Joliet's escape is not Joliet
        let svd = iso_descriptor(2, &joliet, b"");
        let f = image(
            &[(16 * 2048, &pvd), (17 * 2048, &svd), (18 * 2048, &end)],
            64 * 1024,
        );
        assert_eq!(probed(&f).unwrap().labels, vec!["CONFIG_2".to_string()]);
    }

    #[test]
    fn ext_label_and_magic() {
        let mut sb = vec![0u8; 136];
        sb[56..58].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        sb[120..128].copy_from_slice(b"config-2");
        let f = image(&[(1024, &sb)], 8192);
        assert_eq!(
            probed(&f),
            Some(Probed {
                fstype: "ext4",
                labels: vec!["config-2".into()]
            })
        );
        sb[56] = 0;
        let f = image(&[(1024, &sb)], 8192);
        assert_eq!(probed(&f), None);
    }

    /// A FAT16 boot sector: 512-byte sectors, 1 reserved, 2 FATs of 4
    /// sectors, 32 root entries.
    fn fat16_boot(label: &str) -> Vec<u8> {
        let mut bs = vec![0u8; 512];
        bs[11..13].copy_from_slice(&512u16.to_le_bytes());
        bs[13] = 4;
        bs[14..16].copy_from_slice(&1u16.to_le_bytes());
        bs[16] = 2;
        bs[17..19].copy_from_slice(&32u16.to_le_bytes());
        bs[21] = 0xF8;
        bs[22..24].copy_from_slice(&4u16.to_le_bytes());
        bs[38] = 0x29;
        bs[43..54].copy_from_slice(&padded(label, 11, b' '));
        bs[510] = 0x55;
        bs[511] = 0xAA;
        bs
    }

    fn dir_entry(name: &str, attr: u8) -> Vec<u8> {
        let mut e = padded(name, 11, b' ');
        e.resize(32, 0);
        e[11] = attr;
        e
    }

    #[test]
    fn fat_root_directory_label_wins_over_the_boot_sector() {
        let root = (1 + 2 * 4) * 512;
        let mut entries = dir_entry("OLD", FAT_ATTR_VOLUME_ID);
        entries[0] = 0xE5; // deleted: skipped
        entries.extend(dir_entry("LFN", FAT_ATTR_LONG_NAME));
        entries.extend(dir_entry("config-2", FAT_ATTR_VOLUME_ID));
        let f = image(&[(0, &fat16_boot("NO NAME")), (root, &entries)], 64 * 1024);
        assert_eq!(
            probed(&f),
            Some(Probed {
                fstype: "vfat",
                labels: vec!["config-2".into()]
            })
        );
        // no entry: the boot sector's label; "NO NAME" is none
        let f = image(&[(0, &fat16_boot("CONFIG-2"))], 64 * 1024);
        assert_eq!(probed(&f).unwrap().labels, vec!["CONFIG-2".to_string()]);
        let f = image(&[(0, &fat16_boot("NO NAME"))], 64 * 1024);
        assert!(probed(&f).unwrap().labels.is_empty());
    }

    #[test]
    fn not_a_file_system_or_too_short() {
        assert_eq!(probed(&image(&[], 64 * 1024)), None);
        assert_eq!(probed(&image(&[], 100)), None);
        // a boot signature alone (an MBR) is not FAT
        let f = image(&[(510, &[0x55, 0xAA])], 64 * 1024);
        assert_eq!(probed(&f), None);
    }

    #[test]
    fn hostile_fat_geometry_reads_at_most_the_bound_and_never_past_the_end() {
        // FAT32 with the largest clusters (128 x 4096 bytes = 512 KiB) and
        // its root cluster near the top of the u32 range: the offset lies
        // far past the device's end, which is no label, not an error
        let mut bs = fat16_boot("NO NAME");
        bs[11..13].copy_from_slice(&4096u16.to_le_bytes());
        bs[13] = 128;
        bs[14..16].copy_from_slice(&u16::MAX.to_le_bytes());
        bs[16] = u8::MAX;
        bs[22..24].copy_from_slice(&0u16.to_le_bytes());
        bs[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        bs[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        let f = image(&[(0, &bs)], 64 * 1024);
        assert_eq!(
            probed(&f),
            Some(Probed {
                fstype: "vfat",
                labels: vec![]
            })
        );
        // a root directory of 65535 entries (2 MiB) right after the boot
        // sector: only the first 64 KiB are read, so a label entry past
        // them is not seen
        let mut bs = fat16_boot("NO NAME");
        bs[16] = 1;
        bs[17..19].copy_from_slice(&u16::MAX.to_le_bytes());
        bs[22..24].copy_from_slice(&1u16.to_le_bytes());
        let root = 2 * 512;
        let mut entries = vec![0x20u8; FAT_MAX_ROOT]; // used, not labels
        entries.extend(dir_entry("config-2", FAT_ATTR_VOLUME_ID));
        let f = image(&[(0, &bs), (root, &entries)], 4 << 20);
        assert!(probed(&f).unwrap().labels.is_empty());
        // the same label inside the bound is seen
        let f = image(
            &[(0, &bs), (root, &dir_entry("config-2", FAT_ATTR_VOLUME_ID))],
            4 << 20,
        );
        assert_eq!(probed(&f).unwrap().labels, ["config-2"]);
    }

    #[test]
    fn find_walks_the_devices_in_order_and_skips_empty_ones() {
        let t = tempfile::tempdir().unwrap();
        let (sys, dev) = (t.path().join("sys"), t.path().join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        let mut sb = vec![0u8; 136];
        sb[56..58].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        sb[120..128].copy_from_slice(b"config-2");
        for (name, sectors, content) in [
            ("loop0", "0", true),   // size 0: never opened
            ("sr0", "2048", false), // no such node: skipped
            ("vda1", "16", false),  // nothing on it
            ("vdb", "16", true),
            ("vdc", "16", true), // a second match: the first one wins
        ] {
            std::fs::create_dir_all(sys.join(name)).unwrap();
            std::fs::write(sys.join(name).join("size"), sectors).unwrap();
            if name == "sr0" {
                continue;
            }
            let f = File::create(dev.join(name)).unwrap();
            f.set_len(8192).unwrap();
            if content {
                f.write_all_at(&sb, 1024).unwrap();
            }
        }
        let (path, p) = find(&sys, &dev, &["config-2", "CONFIG-2"]).unwrap();
        assert_eq!(path, dev.join("vdb"));
        assert_eq!(p.fstype, "ext4");
        assert!(find(&sys, &dev, &["other"]).is_none());
        assert!(find(&t.path().join("nothing"), &dev, &["config-2"]).is_none());
    }
}
