//! The partition table: writes the protective MBR and the primary and
//! backup GPT (through the `gpt` crate, GUIDs supplied by the caller) and
//! reads them back. Knows partition numbers, LBAs, names and GUIDs, not
//! what is inside the partitions.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition::Partition;
use gpt::GptConfig;
use uuid::Uuid;

use crate::error::DiskError;
use crate::layout::{Planned, SECTOR_SIZE};

/// A partition as the GPT describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// 1-based GPT entry number (`/dev/vda<number>`).
    pub number: u32,
    /// The GPT partition name, which is what this project calls its label.
    pub name: String,
    /// Partition type GUID.
    pub type_guid: Uuid,
    /// A readable name for the type, e.g. `EFI System`.
    pub type_name: String,
    /// Unique partition GUID (`PARTUUID`).
    pub unique_guid: Uuid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Bytes.
    pub size: u64,
}

impl PartitionInfo {
    /// Byte offset of the partition in the image (with 512-byte sectors).
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR_SIZE
    }
}

/// Readable names of the partition types a cairn disk (or a disk next to
/// it) commonly holds; the rest are "unknown".
pub fn type_name(guid: &Uuid) -> &'static str {
    const NAMES: &[(&str, &str)] = &[
        ("c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "EFI System"),
        (
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
            "Linux root (x86-64)",
        ),
        (
            "b921b045-1df0-41c3-af44-4c6f280d3fae",
            "Linux root (ARM-64)",
        ),
        ("0fc63daf-8483-4772-8e79-3d69d8477de4", "Linux filesystem"),
        (
            "8484680c-9521-48c6-9c11-b0720656f69e",
            "Linux /usr (x86-64)",
        ),
        ("4d21b016-b534-45c2-a9fb-5c16e091fd2d", "Linux /var"),
        ("933ac7e1-2eb4-4f13-b844-0e14e2aef915", "Linux /home"),
        ("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", "Linux swap"),
        (
            "bc13c2ff-59e6-4262-a352-b275fd6f7172",
            "Linux extended boot",
        ),
        ("21686148-6449-6e6f-744e-656564454649", "BIOS boot"),
        (
            "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",
            "Microsoft basic data",
        ),
    ];
    let s = guid.hyphenated().to_string();
    NAMES
        .iter()
        .find(|(g, _)| *g == s)
        .map(|(_, n)| *n)
        .unwrap_or("unknown")
}

pub(crate) fn info(p: &Planned, unique_guid: Uuid) -> PartitionInfo {
    let type_guid = p.kind.gpt_type().guid;
    PartitionInfo {
        number: p.number,
        name: p.name.to_string(),
        type_guid,
        type_name: type_name(&type_guid).to_string(),
        unique_guid,
        first_lba: p.first_lba,
        last_lba: p.last_lba,
        size: p.size(),
    }
}

/// Writes the protective MBR, the primary GPT (LBA 1, entries from LBA 2)
/// and the backup GPT (entries before the header in the last LBA), 128
/// entries each, CRC32s included.
pub(crate) fn write_gpt(
    image: &File,
    image_path: &Path,
    disk_size: u64,
    disk_guid: Uuid,
    parts: &[PartitionInfo],
) -> Result<(), DiskError> {
    let gpt_err = |source| DiskError::Gpt {
        path: image_path.to_path_buf(),
        source,
    };
    let mut disk = GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(image, Some(disk_guid))
        .map_err(gpt_err)?;
    let table: BTreeMap<u32, Partition> = parts
        .iter()
        .map(|p| {
            (
                p.number,
                Partition {
                    part_type_guid: gpt::partition_types::Type::from(p.type_guid),
                    part_guid: p.unique_guid,
                    first_lba: p.first_lba,
                    last_lba: p.last_lba,
                    flags: 0,
                    name: p.name.clone(),
                },
            )
        })
        .collect();
    disk.update_partitions(table).map_err(gpt_err)?;
    let mut image = disk.write().map_err(gpt_err)?;
    // The protective partition covers LBA 1 to the end (capped at what 32
    // bits can say, as the UEFI spec asks for disks over 2 TiB).
    let lbas = disk_size / SECTOR_SIZE;
    let mbr = ProtectiveMBR::with_lb_size(u32::try_from(lbas - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(&mut image)
        .map_err(|e| DiskError::NotADisk {
            path: image_path.to_path_buf(),
            reason: format!("writing the protective MBR: {e}"),
        })?;
    Ok(())
}

/// The GPT of an image as read back.
pub(crate) struct ReadTable {
    pub sector_size: u64,
    pub disk_guid: Uuid,
    pub partitions: Vec<PartitionInfo>,
    pub primary_ok: bool,
    pub backup_ok: bool,
    pub protective_mbr: bool,
}

/// Reads the GPT (512-byte sectors first, then 4096).
pub(crate) fn read_gpt(image: &File, image_path: &Path) -> Result<ReadTable, DiskError> {
    let mut last_err = None;
    for lb in [LogicalBlockSize::Lb512, LogicalBlockSize::Lb4096] {
        let disk = match GptConfig::new()
            .writable(false)
            .logical_block_size(lb)
            .open_from_device(image)
        {
            Ok(d) => d,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        let sector_size = lb.as_u64();
        let partitions = disk
            .partitions()
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(&number, p)| PartitionInfo {
                number,
                name: p.name.clone(),
                type_guid: p.part_type_guid.guid,
                type_name: type_name(&p.part_type_guid.guid).to_string(),
                unique_guid: p.part_guid,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                size: (p.last_lba.saturating_sub(p.first_lba) + 1) * sector_size,
            })
            .collect();
        let protective_mbr = {
            let mut dev = image;
            ProtectiveMBR::from_disk(&mut dev, lb)
                .ok()
                .and_then(|m| m.partition(0))
                .is_some_and(|p| p.os_type == 0xEE)
        };
        return Ok(ReadTable {
            sector_size,
            disk_guid: *disk.guid(),
            partitions,
            primary_ok: disk.primary_header().is_ok(),
            backup_ok: disk.backup_header().is_ok(),
            protective_mbr,
        });
    }
    Err(DiskError::NotADisk {
        path: image_path.to_path_buf(),
        reason: format!(
            "no valid GPT with 512- or 4096-byte sectors: {}",
            last_err.map(|e| e.to_string()).unwrap_or_default()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        assert_eq!(type_name(&gpt::partition_types::EFI.guid), "EFI System");
        assert_eq!(
            type_name(&gpt::partition_types::LINUX_ROOT_X64.guid),
            "Linux root (x86-64)"
        );
        assert_eq!(
            type_name(&gpt::partition_types::LINUX_FS.guid),
            "Linux filesystem"
        );
        assert_eq!(type_name(&Uuid::nil()), "unknown");
    }
}
