//! Reading a GPT and growing its last partition to the end of the disk, as
//! `/init` does on first boot for `cairn-state` once the image has been
//! written to a disk larger than the image. It owns the on-disk GPT format
//! (headers, entry array, CRC32, protective MBR size) and works on any
//! `Read + Write + Seek` device, so it is tested on in-memory disks; telling
//! the kernel about the new size (BLKPG) is the caller's job.
//!
//! Growing rewrites, in a crash-safe order: the backup entry array and the
//! backup header at the disk's last LBA, the protective MBR's size, the
//! primary entry array and the primary header, and finally zeroes the old
//! backup header that now lies inside the grown partition. Until the primary
//! header is written the old table stays valid.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// The EFI System Partition type GUID (C12A7328-F81F-11D2-BA4B-00A0C93EC93B)
/// in its on-disk (mixed-endian) byte order.
pub const ESP_TYPE: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// End alignment of a grown partition, in bytes.
pub const GROW_ALIGN: u64 = 1 << 20;

/// Why a GPT could not be read or grown.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("no GPT signature at LBA 1")]
    NoSignature,
    #[error("GPT header CRC mismatch")]
    HeaderCrc,
    #[error("GPT partition entry array CRC mismatch")]
    EntriesCrc,
    #[error("unsupported GPT: {0}")]
    Unsupported(&'static str),
    #[error("partition {0} is not in the GPT")]
    NoSuchPartition(u32),
    #[error("partition {0} is not the last one on the disk")]
    NotLast(u32),
    #[error("the disk ({disk_sectors} sectors) is smaller than the GPT expects (last usable LBA {last_usable})")]
    DiskTooSmall { disk_sectors: u64, last_usable: u64 },
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number (as in `/dev/vda2`, `PARTN=` in uevents).
    pub number: u32,
    pub type_guid: [u8; 16],
    pub unique_guid: [u8; 16],
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub name: String,
}

impl Partition {
    pub fn is_esp(&self) -> bool {
        self.type_guid == ESP_TYPE
    }
}

/// A primary GPT as read from a device.
#[derive(Debug, Clone)]
pub struct Gpt {
    sector: u64,
    /// The primary header sector (only `header_size` bytes are covered by the CRC).
    header: Vec<u8>,
    entries: Vec<u8>,
}

/// What [`grow_last_partition`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub first_lba: u64,
    pub old_last_lba: u64,
    pub new_last_lba: u64,
}

/// CRC-32 (IEEE 802.3, reflected), as used by GPT.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn read_at<D: Read + Seek>(dev: &mut D, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    dev.seek(SeekFrom::Start(offset))?;
    dev.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_at<D: Write + Seek>(dev: &mut D, offset: u64, data: &[u8]) -> io::Result<()> {
    dev.seek(SeekFrom::Start(offset))?;
    dev.write_all(data)
}

impl Gpt {
    /// Reads and checks the primary GPT (signature, header and entry CRCs).
    pub fn read<D: Read + Seek>(dev: &mut D, sector: u64) -> Result<Gpt, GptError> {
        if !(512..=65536).contains(&sector) || !sector.is_power_of_two() {
            return Err(GptError::Unsupported("logical sector size"));
        }
        let header = read_at(dev, sector, sector as usize)?;
        if &header[..8] != SIGNATURE {
            return Err(GptError::NoSignature);
        }
        let hsize = u32_at(&header, 12) as usize;
        if !(92..=sector as usize).contains(&hsize) {
            return Err(GptError::Unsupported("header size"));
        }
        let mut check = header[..hsize].to_vec();
        put_u32(&mut check, 16, 0);
        if crc32(&check) != u32_at(&header, 16) {
            return Err(GptError::HeaderCrc);
        }
        let count = u32_at(&header, 80) as usize;
        let esize = u32_at(&header, 84) as usize;
        if esize < 128 || esize % 8 != 0 || count == 0 || count * esize > 1 << 20 {
            return Err(GptError::Unsupported("partition entry array geometry"));
        }
        let entries = read_at(dev, u64_at(&header, 72) * sector, count * esize)?;
        if crc32(&entries) != u32_at(&header, 88) {
            return Err(GptError::EntriesCrc);
        }
        Ok(Gpt {
            sector,
            header,
            entries,
        })
    }

    /// The logical sector size the table was read with.
    pub fn sector_size(&self) -> u64 {
        self.sector
    }

    fn entry_size(&self) -> usize {
        u32_at(&self.header, 84) as usize
    }

    /// Last LBA the header says is usable.
    pub fn last_usable_lba(&self) -> u64 {
        u64_at(&self.header, 48)
    }

    /// LBA of the backup header according to the primary.
    pub fn alternate_lba(&self) -> u64 {
        u64_at(&self.header, 32)
    }

    /// The used entries, in table order.
    pub fn partitions(&self) -> Vec<Partition> {
        self.entries
            .chunks_exact(self.entry_size())
            .enumerate()
            .filter(|(_, e)| e[..16].iter().any(|&b| b != 0))
            .map(|(i, e)| {
                let units: Vec<u16> = e[56..128]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|&u| u != 0)
                    .collect();
                Partition {
                    number: i as u32 + 1,
                    type_guid: e[..16].try_into().expect("16 bytes"),
                    unique_guid: e[16..32].try_into().expect("16 bytes"),
                    first_lba: u64_at(e, 32),
                    last_lba: u64_at(e, 40),
                    name: String::from_utf16_lossy(&units),
                }
            })
            .collect()
    }

    /// The first partition with this label.
    pub fn find_by_name(&self, name: &str) -> Option<Partition> {
        self.partitions().into_iter().find(|p| p.name == name)
    }
}

/// Grows partition `number` (which must end after every other partition)
/// to the end of a disk of `disk_bytes` bytes, its end aligned down to
/// [`GROW_ALIGN`], and moves the backup GPT to the disk's last LBA.
/// Returns `None` when nothing needed to change (already grown). The
/// caller flushes the device and tells the kernel (BLKPG).
pub fn grow_last_partition<D: Read + Write + Seek>(
    dev: &mut D,
    sector: u64,
    disk_bytes: u64,
    number: u32,
) -> Result<Option<Grown>, GptError> {
    let gpt = Gpt::read(dev, sector)?;
    let parts = gpt.partitions();
    let part = parts
        .iter()
        .find(|p| p.number == number)
        .ok_or(GptError::NoSuchPartition(number))?
        .clone();
    if parts
        .iter()
        .any(|p| p.number != number && p.last_lba >= part.first_lba)
    {
        return Err(GptError::NotLast(number));
    }
    let Gpt {
        mut header,
        mut entries,
        ..
    } = gpt;
    let hsize = u32_at(&header, 12) as usize;
    let esize = u32_at(&header, 84) as usize;
    let disk_sectors = disk_bytes / sector;
    let entry_sectors = (entries.len() as u64).div_ceil(sector);
    let old_alternate = u64_at(&header, 32);
    let old_last_usable = u64_at(&header, 48);
    // Backup: entries in the sectors just before the last LBA, header in it.
    let last_lba = disk_sectors.saturating_sub(1);
    let new_last_usable = last_lba.saturating_sub(entry_sectors + 1);
    if disk_sectors < entry_sectors + 3 || new_last_usable < old_last_usable.min(part.last_lba) {
        return Err(GptError::DiskTooSmall {
            disk_sectors,
            last_usable: old_last_usable,
        });
    }
    let align = (GROW_ALIGN / sector).max(1);
    let aligned_end = ((new_last_usable + 1) / align * align).saturating_sub(1);
    let new_end = aligned_end.max(part.last_lba);
    if new_end == part.last_lba && old_alternate == last_lba && old_last_usable == new_last_usable {
        return Ok(None);
    }

    let idx = (number as usize - 1) * esize;
    put_u64(&mut entries, idx + 40, new_end);
    let entries_crc = crc32(&entries);

    let seal = |h: &mut Vec<u8>, my: u64, alt: u64, entries_lba: u64| {
        put_u64(h, 24, my);
        put_u64(h, 32, alt);
        put_u64(h, 48, new_last_usable);
        put_u64(h, 72, entries_lba);
        put_u32(h, 88, entries_crc);
        put_u32(h, 16, 0);
        let crc = crc32(&h[..hsize]);
        put_u32(h, 16, crc);
    };
    let primary_entries_lba = u64_at(&header, 72);
    let backup_entries_lba = last_lba - entry_sectors;
    let mut backup = header.clone();
    seal(&mut backup, last_lba, 1, backup_entries_lba);
    seal(&mut header, 1, last_lba, primary_entries_lba);

    // Entry arrays are written padded to whole sectors.
    let mut padded = entries.clone();
    padded.resize((entry_sectors * sector) as usize, 0);
    write_at(dev, backup_entries_lba * sector, &padded)?;
    write_at(dev, last_lba * sector, &backup)?;

    // Protective MBR: a 0xEE partition covering the whole disk (capped).
    let mut mbr = read_at(dev, 0, 512)?;
    if mbr[510..512] == [0x55, 0xAA] && mbr[446 + 4] == 0xEE {
        let size = u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX);
        put_u32(&mut mbr, 446 + 12, size);
        write_at(dev, 0, &mbr)?;
    }

    write_at(dev, primary_entries_lba * sector, &padded)?;
    write_at(dev, sector, &header)?;

    // The old backup header now lies inside the grown partition (or is
    // garbage): make sure nothing mistakes it for a GPT.
    if old_alternate != last_lba && old_alternate > 1 && old_alternate < last_lba {
        write_at(dev, old_alternate * sector, &vec![0u8; sector as usize])?;
    }
    dev.flush()?;
    Ok(Some(Grown {
        first_lba: part.first_lba,
        old_last_lba: part.last_lba,
        new_last_lba: new_end,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    /// A disk image laid out like cairn's, made by an independent GPT writer
    /// (the `gpt` crate): ESP, cairn-a, cairn-b, cairn-state (last).
    fn image(total: u64, lb: gpt::disk::LogicalBlockSize) -> Vec<u8> {
        let sector: u64 = lb.into();
        let mut dev = Cursor::new(vec![0u8; total as usize]);
        let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total / sector - 1).unwrap());
        mbr.overwrite_lba0(&mut dev).unwrap();
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(lb)
            .create_from_device(dev, None)
            .unwrap();
        disk.add_partition("ESP", 8 * MIB, gpt::partition_types::EFI, 0, None)
            .unwrap();
        disk.add_partition("cairn-a", 8 * MIB, gpt::partition_types::LINUX_FS, 0, None)
            .unwrap();
        disk.add_partition("cairn-b", 8 * MIB, gpt::partition_types::LINUX_FS, 0, None)
            .unwrap();
        disk.add_partition(
            "cairn-state",
            4 * MIB,
            gpt::partition_types::LINUX_FS,
            0,
            None,
        )
        .unwrap();
        disk.write().unwrap().into_inner()
    }

    fn reopen(img: Vec<u8>, lb: gpt::disk::LogicalBlockSize) -> gpt::GptDisk<Cursor<Vec<u8>>> {
        gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(lb)
            .only_valid_headers(true)
            .open_from_device(Cursor::new(img))
            .unwrap()
    }

    #[test]
    fn crc32_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn reads_what_an_independent_writer_wrote() {
        let img = image(64 * MIB, gpt::disk::LogicalBlockSize::Lb512);
        let g = Gpt::read(&mut Cursor::new(&img), 512).unwrap();
        let parts = g.partitions();
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ESP", "cairn-a", "cairn-b", "cairn-state"]);
        assert!(parts[0].is_esp());
        assert!(!parts[1].is_esp());
        assert_eq!(g.find_by_name("cairn-state").unwrap().number, 4);
        assert_eq!(g.alternate_lba(), 64 * MIB / 512 - 1);
        assert_eq!(g.sector_size(), 512);
        // Corruption is detected.
        let mut bad = img.clone();
        bad[512 + 40] ^= 1;
        assert!(matches!(
            Gpt::read(&mut Cursor::new(&bad), 512),
            Err(GptError::HeaderCrc)
        ));
        let mut bad = img.clone();
        bad[1024 + 60] ^= 1;
        assert!(matches!(
            Gpt::read(&mut Cursor::new(&bad), 512),
            Err(GptError::EntriesCrc)
        ));
        assert!(matches!(
            Gpt::read(&mut Cursor::new(vec![0u8; 8192]), 512),
            Err(GptError::NoSignature)
        ));
    }

    fn grow_case(lb: gpt::disk::LogicalBlockSize) {
        let sector: u64 = lb.into();
        // The image is 64 MiB; it was "written" to a 200 MiB disk.
        let mut img = image(64 * MIB, lb);
        let before = Gpt::read(&mut Cursor::new(&img), sector)
            .unwrap()
            .partitions();
        let old_backup = 64 * MIB / sector - 1;
        img.resize(200 * MIB as usize, 0);
        let total = img.len() as u64;
        let mut dev = Cursor::new(img);
        let grown = grow_last_partition(&mut dev, sector, total, 4)
            .unwrap()
            .unwrap();
        let img = dev.into_inner();
        let last_lba = total / sector - 1;
        assert_eq!(grown.first_lba, before[3].first_lba);
        assert_eq!(grown.old_last_lba, before[3].last_lba);
        assert_eq!(
            (grown.new_last_lba + 1) * sector % MIB,
            0,
            "end aligned to 1 MiB"
        );
        assert!(grown.new_last_lba <= last_lba - 33 * 512 / sector);
        assert!((grown.new_last_lba + 1) * sector > total - 2 * MIB);
        // The old backup header is gone.
        assert!(img[(old_backup * sector) as usize..][..8]
            .iter()
            .all(|&b| b == 0));
        // Read back with the gpt crate, demanding both headers valid.
        let disk = reopen(img.clone(), lb);
        let p = disk.primary_header().unwrap();
        let b = disk.backup_header().unwrap();
        assert_eq!(p.backup_lba, last_lba);
        assert_eq!(b.current_lba, last_lba);
        assert_eq!(b.backup_lba, 1);
        assert_eq!(p.last_usable, b.last_usable);
        let parts = disk.partitions();
        assert_eq!(parts[&4].last_lba, grown.new_last_lba);
        assert_eq!(parts[&4].name, "cairn-state");
        for (i, old) in before.iter().enumerate().take(3) {
            let n = i as u32 + 1;
            assert_eq!(
                (parts[&n].first_lba, parts[&n].last_lba),
                (old.first_lba, old.last_lba)
            );
        }
        // Protective MBR covers the disk.
        assert_eq!(u32_at(&img, 446 + 12) as u64, total / sector - 1);
        // Growing again changes nothing.
        let mut dev = Cursor::new(img);
        assert_eq!(
            grow_last_partition(&mut dev, sector, total, 4).unwrap(),
            None
        );
    }

    #[test]
    fn grow_512() {
        grow_case(gpt::disk::LogicalBlockSize::Lb512);
    }

    #[test]
    fn grow_4096() {
        grow_case(gpt::disk::LogicalBlockSize::Lb4096);
    }

    #[test]
    fn grow_refuses_wrong_partitions() {
        let img = image(64 * MIB, gpt::disk::LogicalBlockSize::Lb512);
        let total = 128 * MIB;
        let mut big = img.clone();
        big.resize(total as usize, 0);
        let mut dev = Cursor::new(big);
        assert!(matches!(
            grow_last_partition(&mut dev, 512, total, 2),
            Err(GptError::NotLast(2))
        ));
        assert!(matches!(
            grow_last_partition(&mut dev, 512, total, 9),
            Err(GptError::NoSuchPartition(9))
        ));
        // Unchanged by the refusals.
        assert_eq!(&dev.get_ref()[..img.len()], &img[..]);
        // A disk smaller than the table is refused.
        let mut small = Cursor::new(img[..(20 * MIB) as usize].to_vec());
        assert!(matches!(
            grow_last_partition(&mut small, 512, 20 * MIB, 4),
            Err(GptError::DiskTooSmall { .. })
        ));
    }

    /// util-linux's sfdisk (package `fdisk`) agrees with the grown table.
    #[test]
    fn sfdisk_verifies_grown_table() {
        let mut img = image(64 * MIB, gpt::disk::LogicalBlockSize::Lb512);
        img.resize(300 * MIB as usize, 0);
        let total = img.len() as u64;
        let mut dev = Cursor::new(img);
        let grown = grow_last_partition(&mut dev, 512, total, 4)
            .unwrap()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, dev.into_inner()).unwrap();
        let out = Command::new("sfdisk")
            .arg("--verify")
            .arg(&path)
            .output()
            .expect("running sfdisk (install the `fdisk` package)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("No errors detected"), "{text}");
        let out = Command::new("sfdisk")
            .arg("--dump")
            .arg(&path)
            .output()
            .unwrap();
        let dump = String::from_utf8(out.stdout).unwrap();
        let size = grown.new_last_lba - grown.first_lba + 1;
        let line = dump
            .lines()
            .find(|l| l.contains("name=\"cairn-state\""))
            .unwrap_or_else(|| panic!("{dump}"));
        assert!(line.contains(&format!("size={size:>12},")), "{line}");
        assert!(
            dump.contains(&format!("last-lba: {}", total / 512 - 34)),
            "{dump}"
        );
    }
}
