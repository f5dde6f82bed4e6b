//! Reading a disk image back: [`inspect`] gathers the GPT, the ESP's file
//! tree and its systemd-boot configuration into a [`DiskInfo`], whose
//! `Display` is what `cairn inspect disk.raw` prints. Read-only: the image
//! is opened without write access.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::DiskError;
use crate::esp::{self, EspInfo};
use crate::table::{self, PartitionInfo};
use crate::Uuid;

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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
