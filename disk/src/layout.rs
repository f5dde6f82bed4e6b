//! Partition layout: the sizes a user chooses ([`Layout`]) and the math that
//! turns them into LBAs (1 MiB aligned, in the fixed order ESP, cairn-a,
//! cairn-b, cairn-state), with errors that name the field or partition that
//! does not fit. Nothing here touches a file.

use crate::error::DiskError;

/// Logical sector size of the images this crate writes.
pub const SECTOR_SIZE: u64 = 512;
/// Partition start alignment (and the ESP's start).
pub const ALIGNMENT: u64 = 1 << 20;
/// GPT partition entries in each table.
pub const GPT_ENTRIES: u64 = 128;
/// Sectors used by one partition entry array (128 entries of 128 bytes).
const GPT_ARRAY_SECTORS: u64 = GPT_ENTRIES * 128 / SECTOR_SIZE;
/// Sectors reserved at the end of the disk: backup entry array + header.
const GPT_BACKUP_SECTORS: u64 = GPT_ARRAY_SECTORS + 1;

pub use cairn_formats::partitions::{
    ESP_LABEL, SLOT_A_LABEL, SLOT_B_LABEL, STATE_LABEL, STATE_NEW_MARK,
};

/// Smallest ESP that can hold a FAT32 file system (at least 65525
/// clusters of 512 bytes, plus the FATs).
pub const MIN_ESP_SIZE: u64 = 33 << 20;

/// What a partition is for; decides its GPT type GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartKind {
    Esp,
    Root,
    State,
}

impl PartKind {
    pub(crate) fn gpt_type(self) -> gpt::partition_types::Type {
        match self {
            PartKind::Esp => gpt::partition_types::EFI,
            PartKind::Root => gpt::partition_types::LINUX_ROOT_X64,
            PartKind::State => gpt::partition_types::LINUX_FS,
        }
    }
}

/// Sizes of the disk and its partitions, in bytes. Partition sizes are
/// rounded up to whole 512-byte sectors; every partition starts on a 1 MiB
/// boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Size of the whole image (default 4 GiB).
    pub disk_size: u64,
    /// EFI system partition (default 256 MiB, at least [`MIN_ESP_SIZE`]).
    pub esp_size: u64,
    /// Each of the two root slots (default 1 GiB).
    pub slot_size: u64,
    /// Initial size of `cairn-state` (default 64 MiB); `/init` grows it to
    /// the end of the disk on first boot.
    pub state_size: u64,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            disk_size: 4 << 30,
            esp_size: 256 << 20,
            slot_size: 1 << 30,
            state_size: 64 << 20,
        }
    }
}

/// One partition of the plan, before GUIDs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Planned {
    pub number: u32,
    pub name: &'static str,
    pub kind: PartKind,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
}

impl Planned {
    pub(crate) fn offset(&self) -> u64 {
        self.first_lba * SECTOR_SIZE
    }

    pub(crate) fn size(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR_SIZE
    }
}

fn align_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

impl Layout {
    /// Checks that the partitions fit the disk; the error names the field
    /// or partition at fault and the disk size that would do.
    pub fn validate(&self) -> Result<(), DiskError> {
        self.plan().map(|_| ())
    }

    /// The smallest disk that holds the ESP, both slots and the state
    /// partition with this layout's sizes (whatever `disk_size` says).
    pub fn required_disk_size(&self) -> u64 {
        let (end, _) = self.place();
        // Keep the backup GPT and round to a whole MiB.
        align_up(
            end * SECTOR_SIZE + GPT_BACKUP_SECTORS * SECTOR_SIZE,
            ALIGNMENT,
        )
    }

    /// Places the partitions from LBA 2048 on, ignoring the disk size;
    /// returns the first LBA after the last partition.
    fn place(&self) -> (u64, [Planned; 4]) {
        let spec = [
            (ESP_LABEL, PartKind::Esp, self.esp_size),
            (SLOT_A_LABEL, PartKind::Root, self.slot_size),
            (SLOT_B_LABEL, PartKind::Root, self.slot_size),
            (STATE_LABEL, PartKind::State, self.state_size),
        ];
        let align = ALIGNMENT / SECTOR_SIZE;
        let mut cursor = align;
        let parts = std::array::from_fn(|i| {
            let (name, kind, size) = spec[i];
            let first_lba = align_up(cursor, align);
            let sectors = size.div_ceil(SECTOR_SIZE).max(1);
            let last_lba = first_lba + sectors - 1;
            cursor = last_lba + 1;
            Planned {
                number: i as u32 + 1,
                name,
                kind,
                first_lba,
                last_lba,
            }
        });
        (cursor, parts)
    }

    pub(crate) fn plan(&self) -> Result<[Planned; 4], DiskError> {
        let fields = [
            ("disk_size", self.disk_size),
            ("esp_size", self.esp_size),
            ("slot_size", self.slot_size),
            ("state_size", self.state_size),
        ];
        for (field, value) in fields {
            if value == 0 {
                return Err(DiskError::InvalidSize {
                    field,
                    value,
                    reason: "must not be zero".into(),
                });
            }
            // Keeps every LBA computation far from u64 overflow.
            if value > 1 << 50 {
                return Err(DiskError::InvalidSize {
                    field,
                    value,
                    reason: "is larger than 1 PiB".into(),
                });
            }
        }
        if self.disk_size % SECTOR_SIZE != 0 {
            return Err(DiskError::InvalidSize {
                field: "disk_size",
                value: self.disk_size,
                reason: format!("is not a whole number of {SECTOR_SIZE}-byte sectors"),
            });
        }
        if self.esp_size < MIN_ESP_SIZE {
            return Err(DiskError::InvalidSize {
                field: "esp_size",
                value: self.esp_size,
                reason: format!(
                    "is too small for FAT32 (65525 clusters or more): at least {MIN_ESP_SIZE} bytes"
                ),
            });
        }
        let total_lbas = self.disk_size / SECTOR_SIZE;
        let last_usable = total_lbas.saturating_sub(GPT_BACKUP_SECTORS + 1);
        let (_, parts) = self.place();
        for p in &parts {
            if p.last_lba > last_usable {
                return Err(DiskError::DoesNotFit {
                    partition: p.name,
                    offset: p.offset(),
                    size: p.size(),
                    disk_size: self.disk_size,
                    required: self.required_disk_size(),
                });
            }
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn default_layout() {
        let p = Layout::default().plan().unwrap();
        let names: Vec<_> = p.iter().map(|p| (p.number, p.name)).collect();
        assert_eq!(
            names,
            [
                (1, "ESP"),
                (2, "cairn-a"),
                (3, "cairn-b"),
                (4, "cairn-state")
            ]
        );
        assert_eq!(p[0].offset(), MIB);
        assert_eq!(p[0].size(), 256 * MIB);
        assert_eq!(p[1].offset(), 257 * MIB);
        assert_eq!(p[1].size(), 1 << 30);
        assert_eq!(p[2].offset(), 257 * MIB + (1 << 30));
        assert_eq!(p[3].offset(), 257 * MIB + (2 << 30));
        assert_eq!(p[3].size(), 64 * MIB);
        for w in p.windows(2) {
            assert!(w[0].last_lba < w[1].first_lba);
        }
        for q in &p {
            assert_eq!(q.offset() % MIB, 0, "{} not aligned", q.name);
        }
        assert_eq!(p[0].kind, PartKind::Esp);
        assert_eq!(p[1].kind, PartKind::Root);
        assert_eq!(p[3].kind, PartKind::State);
    }

    #[test]
    fn odd_sizes_round_to_sectors_and_realign() {
        let l = Layout {
            disk_size: 2 << 30,
            esp_size: 100 * MIB + 1,
            slot_size: 300 * MIB + 513,
            state_size: 1000,
        };
        let p = l.plan().unwrap();
        assert_eq!(p[0].size(), 100 * MIB + 512);
        assert_eq!(p[1].offset(), 102 * MIB);
        assert_eq!(p[1].size(), 300 * MIB + 1024);
        assert_eq!(p[2].offset(), 403 * MIB);
        assert_eq!(p[3].size(), 1024);
        assert_eq!(p[3].offset(), 704 * MIB);
    }

    #[test]
    fn exact_fit_and_one_sector_short() {
        let mut l = Layout {
            disk_size: 0,
            esp_size: 64 * MIB,
            slot_size: 128 * MIB,
            state_size: 16 * MIB,
        };
        // 1 + 64 + 128 + 128 + 16 MiB of partitions, then 33 sectors of
        // backup GPT.
        let end = 337 * MIB;
        l.disk_size = end + 33 * 512;
        let p = l.plan().unwrap();
        assert_eq!(p[3].last_lba, l.disk_size / 512 - 34);
        assert_eq!(l.required_disk_size(), 338 * MIB);
        l.disk_size -= 512;
        match l.plan().unwrap_err() {
            DiskError::DoesNotFit {
                partition,
                required,
                ..
            } => {
                assert_eq!(partition, "cairn-state");
                assert_eq!(required, 338 * MIB);
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn errors_name_the_partition_that_does_not_fit() {
        let l = Layout {
            disk_size: 1 << 30,
            ..Layout::default()
        };
        let e = l.validate().unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                DiskError::DoesNotFit {
                    partition: "cairn-a",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("cairn-a") && msg.contains("1073741824"),
            "{msg}"
        );
        let l = Layout {
            disk_size: (258 << 20) + (2 << 30),
            ..Layout::default()
        };
        let e = l.validate().unwrap_err();
        assert!(
            matches!(
                e,
                DiskError::DoesNotFit {
                    partition: "cairn-state",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (
                Layout {
                    slot_size: 0,
                    ..Layout::default()
                },
                "slot_size",
            ),
            (
                Layout {
                    disk_size: (4 << 30) + 1,
                    ..Layout::default()
                },
                "disk_size",
            ),
            (
                Layout {
                    esp_size: 32 * MIB,
                    ..Layout::default()
                },
                "esp_size",
            ),
            (
                Layout {
                    state_size: 1 << 60,
                    ..Layout::default()
                },
                "state_size",
            ),
        ];
        for (l, field) in cases {
            match l.validate().unwrap_err() {
                DiskError::InvalidSize { field: f, .. } => assert_eq!(f, field),
                e => panic!("{field}: {e}"),
            }
        }
        let msg = Layout {
            esp_size: MIB,
            ..Layout::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(msg.contains("esp_size") && msg.contains("FAT32"), "{msg}");
    }
}
