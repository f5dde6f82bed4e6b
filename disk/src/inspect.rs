//! Reading a disk image back: [`inspect`] gathers the GPT, the ESP's file
//! tree and its systemd-boot configuration, and what each root slot holds
//! (squashfs size, the dm-verity tree after it and the root hash it
//! gives) into a [`DiskInfo`], whose `Display` is what `cairn inspect
//! disk.raw` prints: also whether each boot entry's `cairn.verity=` is the
//! root hash of its slot's tree. Read-only: the image is opened without
//! write access.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::DiskError;
use crate::esp::{self, EspInfo};
use crate::table::{self, PartitionInfo};
use crate::Uuid;
use cairn_formats::verity::Verity;
use cairn_formats::Slot;

/// Everything `inspect` reads from a disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// The file inspected.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes it occupies on the host (it is usually sparse).
    pub allocated_bytes: u64,
    /// Logical sector size the GPT was found with.
    pub sector_size: u64,
    /// The disk GUID from the GPT header.
    pub disk_guid: Uuid,
    /// LBA 0 holds a protective MBR (type 0xEE).
    pub protective_mbr: bool,
    /// The primary GPT header and its entry array check out (CRC32s).
    pub primary_gpt_ok: bool,
    /// The backup GPT header (last LBA) and its entry array check out.
    pub backup_gpt_ok: bool,
    /// Used GPT entries, by number.
    pub partitions: Vec<PartitionInfo>,
    /// The first EFI system partition's contents, if there is one.
    pub esp: Option<EspInfo>,
    /// The root slots (`cairn-a`, `cairn-b`) found, in table order.
    pub slots: Vec<SlotInfo>,
}

/// What a root slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// The slot (`a`, `b`).
    pub slot: Slot,
    /// Its GPT partition number.
    pub partition: u32,
    /// The squashfs superblock's `bytes_used`; `None` when the slot does not
    /// start with a squashfs (empty, or never written).
    pub squashfs_bytes: Option<u64>,
    /// The dm-verity tree after the squashfs: the parameters its
    /// superblock and top hash block give (the root hash a boot entry must
    /// name), or why there is none that reads. `None` without a squashfs.
    /// This reads the tree's top, not the data: it is not a check of the
    /// data against the tree.
    pub verity: Option<Result<Verity, String>>,
}

impl DiskInfo {
    /// The slot's information, if the disk has that slot.
    pub fn slot(&self, s: Slot) -> Option<&SlotInfo> {
        self.slots.iter().find(|i| i.slot == s)
    }

    /// Each boot entry with the slot its `options` boot and its
    /// `cairn.verity=` (when valid), in file-name order.
    pub fn entry_verity(&self) -> Vec<EntryVerity> {
        let Some(esp) = &self.esp else {
            return Vec::new();
        };
        esp.boot_entries
            .iter()
            .map(|(name, text)| {
                let options: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.trim_start().strip_prefix("options"))
                    .filter(|rest| rest.starts_with(|c: char| c.is_ascii_whitespace()))
                    .map(str::trim)
                    .collect();
                let options = options.join(" ");
                EntryVerity {
                    name: name.clone(),
                    slot: cairn_formats::cmdline::slot(&options),
                    verity: cairn_formats::cmdline::verity(&options)
                        .map(|r| r.map_err(|e| e.to_string())),
                }
            })
            .collect()
    }
}

/// A boot entry's slot and root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryVerity {
    /// The file name under `loader/entries/`.
    pub name: String,
    /// `cairn.slot=`.
    pub slot: Option<Slot>,
    /// `cairn.verity=`: `None` without one, `Err` when it does not parse.
    pub verity: Option<Result<Verity, String>>,
}

impl EntryVerity {
    /// How the entry's `cairn.verity=` compares with its slot's tree, in
    /// words: `matches slot a's tree`, `DIFFERS from ...`, `no cairn.verity=`.
    pub fn verdict(&self, disk: &DiskInfo) -> String {
        let Some(slot) = self.slot else {
            return "boots no slot (no cairn.slot=)".into();
        };
        let tree = disk.slot(slot).and_then(|s| s.verity.clone());
        match (&self.verity, tree) {
            (None, Some(Ok(_))) => {
                format!("no cairn.verity=: slot {slot} is mounted without verification")
            }
            (None, _) => "no cairn.verity=".into(),
            (Some(Err(e)), _) => format!("INVALID {e}"),
            (Some(Ok(v)), Some(Ok(t))) if *v == t => format!("matches slot {slot}'s tree"),
            (Some(Ok(v)), Some(Ok(t))) => format!(
                "DIFFERS from slot {slot}'s tree (entry {}, tree {}): this entry will not boot",
                short(&v.to_cmdline_value()),
                short(&t.to_cmdline_value())
            ),
            (Some(Ok(_)), Some(Err(e))) => {
                format!("slot {slot} has no readable tree ({e}): this entry will not boot")
            }
            (Some(Ok(_)), None) => {
                format!("slot {slot} holds no squashfs: this entry will not boot")
            }
        }
    }
}

/// The first 16 hex digits of a root hash and what follows the salt.
fn short(value: &str) -> String {
    let mut it = value.split(':');
    let root = it.next().unwrap_or_default();
    let _salt = it.next();
    let blocks = it.next().unwrap_or_default();
    format!("{}... ({blocks} blocks)", &root[..root.len().min(16)])
}

/// Reads the squashfs and verity tree of a slot partition.
fn read_slot(image: &File, path: &Path, p: &PartitionInfo, sector: u64) -> SlotInfo {
    use std::os::unix::fs::FileExt;
    let slot = if p.name == crate::SLOT_A_LABEL {
        Slot::A
    } else {
        Slot::B
    };
    let base = p.first_lba * sector;
    let mut head = [0u8; 96];
    let squashfs = image
        .read_exact_at(&mut head, base)
        .ok()
        .and_then(|()| cairn_verity::squashfs_data_blocks(&head))
        .filter(|blocks| blocks * cairn_verity::BLOCK_SIZE <= p.size)
        .map(|blocks| (u64::from_le_bytes(head[40..48].try_into().unwrap()), blocks));
    let verity = squashfs.map(|(_, blocks)| {
        cairn_verity::read_root(image, path, base, blocks).map_err(|e| match e {
            cairn_verity::VerityError::Superblock { problem, .. } => {
                format!("the block after the squashfs {problem}")
            }
            other => other.to_string(),
        })
    });
    SlotInfo {
        slot,
        partition: p.number,
        squashfs_bytes: squashfs.map(|(used, _)| used),
        verity,
    }
}

/// Reads the GPT and the ESP of the image at `path`.
pub fn inspect(path: &Path) -> Result<DiskInfo, DiskError> {
    let image = File::open(path).map_err(|e| DiskError::io("opening disk image", path, e))?;
    let meta = image
        .metadata()
        .map_err(|e| DiskError::io("reading metadata of disk image", path, e))?;
    let t = table::read_gpt(&image, path)?;
    let esp_type = gpt::partition_types::EFI.guid;
    let esp = match t.partitions.iter().find(|p| p.type_guid == esp_type) {
        Some(p) => {
            let offset = p.first_lba * t.sector_size;
            if offset + p.size > meta.len() {
                return Err(DiskError::NotADisk {
                    path: path.to_path_buf(),
                    reason: format!(
                        "partition {} ({}) ends past the end of the {}-byte file",
                        p.number,
                        p.name,
                        meta.len()
                    ),
                });
            }
            Some(esp::read_esp(&image, path, p.number, offset, p.size)?)
        }
        None => None,
    };
    let slots = t
        .partitions
        .iter()
        .filter(|p| p.name == crate::SLOT_A_LABEL || p.name == crate::SLOT_B_LABEL)
        .filter(|p| p.first_lba * t.sector_size + p.size <= meta.len())
        .map(|p| read_slot(&image, path, p, t.sector_size))
        .collect();
    Ok(DiskInfo {
        path: path.to_path_buf(),
        size: meta.len(),
        allocated_bytes: std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
        sector_size: t.sector_size,
        disk_guid: t.disk_guid,
        protective_mbr: t.protective_mbr,
        primary_gpt_ok: t.primary_ok,
        backup_gpt_ok: t.backup_ok,
        partitions: t.partitions,
        esp,
        slots,
    })
}

/// `1.5 GiB`, `256 MiB`, `12.3 KiB`, `17 B`.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scale = 1u64;
    while unit + 1 < UNITS.len() && bytes >= scale * 1024 {
        scale *= 1024;
        unit += 1;
    }
    if bytes % scale == 0 {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

fn ok(b: bool) -> &'static str {
    if b {
        "ok"
    } else {
        "INVALID"
    }
}

/// Writes rows as left-aligned columns (right-aligned where `right[i]`),
/// two spaces apart, each line indented by two spaces.
fn table(f: &mut fmt::Formatter<'_>, rows: &[Vec<String>], right: &[bool]) -> fmt::Result {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(" ");
        for (c, cell) in r.iter().enumerate() {
            line.push_str("  ");
            let last = c + 1 == r.len();
            if right.get(c).copied().unwrap_or(false) {
                line.push_str(&format!("{cell:>w$}", w = widths[c]));
            } else if last {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}", w = widths[c]));
            }
        }
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

impl fmt::Display for DiskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} ({} bytes, {} allocated), GPT with {}-byte sectors",
            self.path.display(),
            human(self.size),
            self.size,
            human(self.allocated_bytes),
            self.sector_size
        )?;
        writeln!(f, "  disk GUID       {}", self.disk_guid.hyphenated())?;
        writeln!(
            f,
            "  protective MBR  {}; primary GPT {}; backup GPT {}",
            if self.protective_mbr {
                "yes"
            } else {
                "MISSING"
            },
            ok(self.primary_gpt_ok),
            ok(self.backup_gpt_ok)
        )?;
        writeln!(f)?;
        writeln!(f, "Partitions:")?;
        let mut rows = vec![vec![
            "#".to_string(),
            "Name".into(),
            "First LBA".into(),
            "Last LBA".into(),
            "Size".into(),
            "Type".into(),
        ]];
        for p in &self.partitions {
            rows.push(vec![
                p.number.to_string(),
                p.name.clone(),
                p.first_lba.to_string(),
                p.last_lba.to_string(),
                human(p.size),
                p.type_name.clone(),
            ]);
        }
        table(f, &rows, &[true, false, true, true, true, false])?;
        writeln!(f)?;
        let mut rows = vec![vec![
            "#".to_string(),
            "Type GUID".into(),
            "Unique GUID".into(),
        ]];
        for p in &self.partitions {
            rows.push(vec![
                p.number.to_string(),
                p.type_guid.hyphenated().to_string().to_uppercase(),
                p.unique_guid.hyphenated().to_string(),
            ]);
        }
        table(f, &rows, &[true, false, false])?;

        let Some(esp) = &self.esp else {
            writeln!(f)?;
            return writeln!(f, "No EFI system partition.");
        };
        writeln!(f)?;
        writeln!(
            f,
            "ESP (partition {}): {}, label \"{}\", volume id {:04X}-{:04X}, {} clusters of {} bytes, {} free",
            esp.partition,
            esp.fat_type,
            esp.volume_label.trim_end(),
            esp.volume_id >> 16,
            esp.volume_id & 0xffff,
            esp.clusters,
            esp.cluster_size,
            human(u64::from(esp.free_clusters) * u64::from(esp.cluster_size)),
        )?;
        let mut rows = Vec::new();
        for e in &esp.entries {
            if e.is_dir {
                rows.push(vec![String::new(), format!("{}/", e.path)]);
            } else {
                rows.push(vec![human(e.size), e.path.clone()]);
            }
        }
        if rows.is_empty() {
            writeln!(f, "  (empty)")?;
        } else {
            table(f, &rows, &[true, false])?;
        }
        let mut texts: Vec<(String, &str)> = Vec::new();
        if let Some(c) = &esp.loader_conf {
            texts.push(("loader/loader.conf".into(), c));
        }
        for (name, text) in &esp.boot_entries {
            texts.push((format!("loader/entries/{name}"), text));
        }
        for (name, text) in texts {
            writeln!(f)?;
            writeln!(f, "{name}:")?;
            for l in text.lines() {
                writeln!(f, "  | {l}")?;
            }
        }
        self.fmt_slots(f)
    }
}

impl DiskInfo {
    /// The `Slots:` and `Root hashes of the boot entries:` sections.
    fn fmt_slots(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.slots.is_empty() {
            return Ok(());
        }
        writeln!(f)?;
        writeln!(f, "Slots:")?;
        for s in &self.slots {
            let what = match (s.squashfs_bytes, &s.verity) {
                (None, _) => "no squashfs (empty)".to_string(),
                (Some(n), None) => format!("squashfs {}", human(n)),
                (Some(n), Some(Err(e))) => {
                    format!("squashfs {}, no dm-verity tree ({e})", human(n))
                }
                (Some(n), Some(Ok(v))) => format!(
                    "squashfs {}, dm-verity tree at byte {}\n      root hash {}\n      salt      {}, {} data blocks",
                    human(n),
                    v.hash_offset(),
                    v.root_hash_hex(),
                    v.salt_hex(),
                    v.data_blocks
                ),
            };
            writeln!(f, "  {} (partition {}): {what}", s.slot, s.partition)?;
        }
        let entries = self.entry_verity();
        if !entries.is_empty() {
            writeln!(f)?;
            writeln!(f, "Root hashes of the boot entries:")?;
            for e in &entries {
                writeln!(f, "  {}: {}", e.name, e.verdict(self))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bls_entry, write_disk, BootEntry, DiskSpec, EspSource};

    /// A file that starts like a squashfs of `used` bytes, with a tree.
    fn slot_image(dir: &Path, name: &str, used: u64, seed: u8) -> (PathBuf, Verity) {
        let p = dir.join(name);
        let mut data: Vec<u8> = (0..used).map(|i| (i as u8) ^ seed).collect();
        data[..4].copy_from_slice(b"hsqs");
        data[40..48].copy_from_slice(&used.to_le_bytes());
        std::fs::write(&p, data).unwrap();
        let v = cairn_verity::append_tree(&p, &[seed; 32]).unwrap();
        (p, v)
    }

    fn entry(v: &str, slot: char, verity: Option<&Verity>) -> String {
        bls_entry(&BootEntry {
            title: format!("x {v}"),
            version: v.into(),
            machine_id: None,
            linux: format!("/cairn/{v}/vmlinuz"),
            initrd: format!("/cairn/{v}/initrd.img"),
            options: format!(
                "cairn.slot={slot} {}console=ttyS0",
                verity
                    .map(|v| v.to_cmdline_word() + " ")
                    .unwrap_or_default()
            ),
            sort_key: None,
        })
    }

    #[test]
    fn slots_and_entries_root_hashes() {
        let t = tempfile::tempdir().unwrap();
        let (a, va) = slot_image(t.path(), "a", 300_000, 1);
        let (b, vb) = slot_image(t.path(), "b", 5_000, 2);
        let mut spec = DiskSpec::new("test");
        spec.slot_a = Some(&a);
        spec.slot_b = Some(&b);
        let mut other = vb;
        other.root_hash[0] ^= 1;
        spec.esp_files = vec![
            (
                "loader/entries/x-1.conf".into(),
                EspSource::from(entry("1", 'a', Some(&va))),
            ),
            (
                "loader/entries/x-2+3.conf".into(),
                EspSource::from(entry("2", 'b', Some(&other))),
            ),
            (
                "loader/entries/x-0.conf".into(),
                EspSource::from(entry("0", 'a', None)),
            ),
        ];
        let disk = t.path().join("disk.raw");
        write_disk(&disk, &spec).unwrap();
        let info = inspect(&disk).unwrap();
        assert_eq!(info.slots.len(), 2);
        assert_eq!(info.slot(Slot::A).unwrap().squashfs_bytes, Some(300_000));
        assert_eq!(info.slot(Slot::A).unwrap().verity, Some(Ok(va)));
        assert_eq!(info.slot(Slot::B).unwrap().verity, Some(Ok(vb)));
        let verdicts: Vec<(String, String)> = info
            .entry_verity()
            .iter()
            .map(|e| (e.name.clone(), e.verdict(&info)))
            .collect();
        assert_eq!(verdicts[0].0, "x-0.conf");
        assert!(
            verdicts[0].1.contains("without verification"),
            "{verdicts:?}"
        );
        assert_eq!(verdicts[1].1, "matches slot a's tree");
        assert!(
            verdicts[2].1.starts_with("DIFFERS from slot b's tree"),
            "{verdicts:?}"
        );
        let text = info.to_string();
        assert!(
            text.contains(&format!("root hash {}", va.root_hash_hex())),
            "{text}"
        );
        assert!(text.contains("x-1.conf: matches slot a's tree"), "{text}");

        // an empty slot b, and a squashfs without a tree in slot a
        let bare = t.path().join("bare");
        std::fs::write(&bare, &std::fs::read(&a).unwrap()[..300_000]).unwrap();
        let mut spec = DiskSpec::new("test2");
        spec.slot_a = Some(&bare);
        write_disk(&disk, &spec).unwrap();
        let info = inspect(&disk).unwrap();
        assert_eq!(info.slot(Slot::B).unwrap().squashfs_bytes, None);
        let e = info
            .slot(Slot::A)
            .unwrap()
            .verity
            .clone()
            .unwrap()
            .unwrap_err();
        assert!(e.contains("no \"verity\" signature"), "{e}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(17), "17 B");
        assert_eq!(human(1024), "1 KiB");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(256 << 20), "256 MiB");
        assert_eq!(human(4 << 30), "4 GiB");
        assert_eq!(human((1 << 30) + (1 << 29)), "1.5 GiB");
    }
}
