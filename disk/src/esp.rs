//! The EFI system partition: formats FAT32 in place inside the image
//! (through `fatfs` on a `fscommon::StreamSlice` of the image file), writes
//! the ESP files with fixed timestamps, and reads the tree back for
//! `inspect`. Owns the FAT geometry choice (cluster size), ESP path rules
//! and the fixed-time provider; knows nothing about GPT.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use fatfs::{Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time};
use fscommon::StreamSlice;

use crate::error::DiskError;
use crate::layout::SECTOR_SIZE;
use crate::EspSource;

/// FAT32 needs at least this many clusters (fewer and every reader,
/// firmware included, treats the volume as FAT16).
const FAT32_MIN_CLUSTERS: u64 = 65525;
/// Largest FAT file.
const FAT_MAX_FILE: u64 = u32::MAX as u64;
/// Largest text file `inspect` reads out of `loader/`.
const MAX_TEXT: u64 = 1 << 20;

/// The cluster size for a FAT32 volume of `size` bytes: the largest of
/// 4096, 2048, 1024 and 512 bytes that still leaves comfortably more than
/// 65525 clusters (256 MiB gives 2048-byte clusters, ~131k of them).
pub(crate) fn cluster_size(size: u64) -> Option<u32> {
    // fatfs reserves 8 sectors; each cluster costs its bytes plus two
    // 4-byte FAT entries. A margin absorbs the rounding of the FAT size.
    let usable = size.saturating_sub(8 * SECTOR_SIZE);
    [4096u32, 2048, 1024, 512]
        .into_iter()
        .find(|&c| usable / (u64::from(c) + 8) >= FAT32_MIN_CLUSTERS + 64)
}

// fatfs 0.3 wants a `&'static dyn TimeProvider`, but the time is per
// image (SOURCE_DATE_EPOCH). The static provider reads it from a
// thread-local that `FixedTime::set` installs for the duration of one ESP
// write; fatfs is synchronous, so every call lands on the writing thread.
thread_local! {
    static NOW: Cell<DateTime> = const { Cell::new(DOS_EPOCH) };
}

const DOS_EPOCH: DateTime = DateTime {
    date: Date {
        year: 1980,
        month: 1,
        day: 1,
    },
    time: Time {
        hour: 0,
        min: 0,
        sec: 0,
        millis: 0,
    },
};

#[derive(Debug)]
struct FixedTime;

static FIXED_TIME: FixedTime = FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        NOW.with(|n| n.get().date)
    }
    fn get_current_date_time(&self) -> DateTime {
        NOW.with(|n| n.get())
    }
}

/// Restores the previous thread-local time when dropped.
struct TimeGuard(DateTime);

impl FixedTime {
    fn set(t: DateTime) -> TimeGuard {
        TimeGuard(NOW.with(|n| n.replace(t)))
    }
}

impl Drop for TimeGuard {
    fn drop(&mut self) {
        NOW.with(|n| n.set(self.0));
    }
}

/// SOURCE_DATE_EPOCH (UTC seconds) as a FAT timestamp, clamped to what FAT
/// can store (1980-01-01 to 2107-12-31). FAT keeps 2-second steps in the
/// main field and the odd second in the create-time fine field.
pub(crate) fn fat_time(epoch: u64) -> DateTime {
    const MIN: u64 = 315_532_800; // 1980-01-01T00:00:00Z
    const MAX: u64 = 4_354_819_199; // 2107-12-31T23:59:59Z
    let t = epoch.clamp(MIN, MAX);
    let at = chrono::DateTime::from_timestamp(t as i64, 0)
        .expect("1980..2107 is in chrono's range")
        .naive_utc();
    use chrono::{Datelike, Timelike};
    DateTime {
        date: Date {
            year: at.year() as u16,
            month: at.month() as u16,
            day: at.day() as u16,
        },
        time: Time {
            hour: at.hour() as u16,
            min: at.minute() as u16,
            sec: at.second() as u16,
            millis: 0,
        },
    }
}

/// One ESP file after its path was checked.
pub(crate) struct EspFile<'s, 'a> {
    /// Components joined by `/`, no leading slash.
    pub path: String,
    pub source: &'s EspSource<'a>,
    pub size: u64,
}

/// Checks and normalises the ESP file list: relative `/`-separated paths
/// (a leading `/` is dropped), no empty, `.` or `..` components, no
/// characters FAT forbids, no duplicates (FAT ignores case, so neither do
/// we), no file where a directory is needed; file sources must exist and
/// fit FAT's 4 GiB limit. Returns the files sorted by path so the image
/// does not depend on the order the caller listed them in.
pub(crate) fn check_files<'s, 'a>(
    files: &'s [(String, EspSource<'a>)],
) -> Result<Vec<EspFile<'s, 'a>>, DiskError> {
    let bad = |path: &str, reason: &str| DiskError::EspPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let mut by_key: BTreeMap<String, EspFile<'s, 'a>> = BTreeMap::new();
    for (raw, source) in files {
        let trimmed = raw.strip_prefix('/').unwrap_or(raw);
        if trimmed.is_empty() {
            return Err(bad(raw, "empty path"));
        }
        for c in trimmed.split('/') {
            if c.is_empty() || c == "." || c == ".." {
                return Err(bad(raw, "empty, \".\" or \"..\" path component"));
            }
            if c.len() > 255 {
                return Err(bad(raw, "a component is longer than 255 characters"));
            }
            if c.chars().any(|ch| {
                ch.is_control() || matches!(ch, '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
            }) {
                return Err(bad(
                    raw,
                    "contains a character FAT does not allow (control, \\ : * ? \" < > |)",
                ));
            }
            if c.chars().any(|ch| u32::from(ch) > 0xffff) {
                return Err(bad(
                    raw,
                    "contains a character outside the Basic Multilingual Plane",
                ));
            }
            if c.ends_with('.') || c.ends_with(' ') {
                return Err(bad(raw, "a component ends with a dot or a space"));
            }
        }
        let size = match source {
            EspSource::Bytes(b) => b.len() as u64,
            EspSource::File(p) => std::fs::metadata(p)
                .map_err(|e| DiskError::io("reading ESP source file", p.as_ref(), e))?
                .len(),
        };
        if size > FAT_MAX_FILE {
            return Err(bad(
                raw,
                &format!("{size} bytes is over FAT's 4 GiB file size limit"),
            ));
        }
        let key = trimmed.to_lowercase();
        if by_key.contains_key(&key) {
            return Err(bad(raw, "listed twice (FAT file names ignore case)"));
        }
        by_key.insert(
            key,
            EspFile {
                path: trimmed.to_string(),
                source,
                size,
            },
        );
    }
    // A file that is also a parent directory of another file.
    for key in by_key.keys() {
        let mut prefix = key.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if let Some(f) = by_key.get(parent) {
                return Err(bad(
                    &f.path,
                    &format!("is a file but {key} needs it to be a directory"),
                ));
            }
            prefix = parent;
        }
    }
    let mut out: Vec<_> = by_key.into_values().collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Facts about a freshly written ESP.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EspStats {
    pub cluster_size: u32,
    pub clusters: u32,
    pub free_clusters: u32,
}

/// Formats FAT32 over `[offset, offset + size)` of `image` with volume
/// label `label` (`ESP` for the ESP; also used for a config drive) and
/// writes `files` into it, every timestamp `mtime`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_esp(
    image: &File,
    image_path: &Path,
    offset: u64,
    size: u64,
    volume_id: u32,
    label: [u8; 11],
    mtime: u64,
    files: &[EspFile<'_, '_>],
) -> Result<EspStats, DiskError> {
    let fat_err = |path: &str| {
        let path = path.to_string();
        move |source: io::Error| DiskError::Fat {
            image: image_path.to_path_buf(),
            path,
            source,
        }
    };
    let cluster = cluster_size(size).ok_or_else(|| DiskError::InvalidSize {
        field: "esp_size",
        value: size,
        reason: "is too small for FAT32".into(),
    })?;
    let sectors = u32::try_from(size / SECTOR_SIZE).map_err(|_| DiskError::InvalidSize {
        field: "esp_size",
        value: size,
        reason: "is too large for FAT32 (2^32 sectors)".into(),
    })?;
    let slice = || StreamSlice::new(image, offset, offset + size).map_err(fat_err("/"));

    let opts = FormatVolumeOptions::new()
        .fat_type(FatType::Fat32)
        .bytes_per_sector(SECTOR_SIZE as u16)
        .bytes_per_cluster(cluster)
        .total_sectors(sectors)
        .fats(2)
        .volume_id(volume_id)
        .volume_label(label);
    fatfs::format_volume(slice()?, opts).map_err(fat_err("/"))?;
    // fatfs leaves "hidden sectors" (the partition's start LBA, which DOS
    // style boot code and some tools read) at 0: set it in the boot sector
    // and its backup (sector 6), as mkfs.fat does for a partition.
    let hidden = u32::try_from(offset / SECTOR_SIZE)
        .unwrap_or(0)
        .to_le_bytes();
    for sector in [0, 6] {
        write_at(image, offset + sector * SECTOR_SIZE + 0x1c, &hidden)
            .map_err(fat_err("/ (boot sector)"))?;
    }

    let _time = FixedTime::set(fat_time(mtime));
    let fs = FileSystem::new(slice()?, FsOptions::new().time_provider(&FIXED_TIME))
        .map_err(fat_err("/"))?;
    if fs.fat_type() != FatType::Fat32 {
        return Err(DiskError::InvalidSize {
            field: "esp_size",
            value: size,
            reason: format!("gave {:?} instead of FAT32", fs.fat_type()),
        });
    }
    let needed: u64 = files.iter().map(|f| f.size).sum();
    let full = |path: &str, e: io::Error| {
        // fatfs 0.3 says "No space left" with ErrorKind::Other.
        if e.to_string().contains("No space") || e.kind() == io::ErrorKind::StorageFull {
            DiskError::EspFull {
                path: path.to_string(),
                esp_size: size,
                needed,
            }
        } else {
            fat_err(path)(e)
        }
    };
    let root = fs.root_dir();
    let mut made = std::collections::BTreeSet::new();
    for f in files {
        let mut at = 0;
        while let Some(i) = f.path[at..].find('/') {
            let dir = &f.path[..at + i];
            if made.insert(dir.to_lowercase()) {
                root.create_dir(dir).map_err(|e| full(dir, e))?;
            }
            at += i + 1;
        }
        let mut out = root.create_file(&f.path).map_err(|e| full(&f.path, e))?;
        match f.source {
            EspSource::Bytes(b) => out.write_all(b).map_err(|e| full(&f.path, e))?,
            EspSource::File(p) => {
                let mut src = File::open(p)
                    .map_err(|e| DiskError::io("reading ESP source file", p.as_ref(), e))?;
                copy_into(&mut src, &mut out, p, |e| full(&f.path, e))?;
            }
        }
        out.flush().map_err(|e| full(&f.path, e))?;
    }
    // Counting free clusters now fills in FSInfo (otherwise "unknown"),
    // which fsck.fat would otherwise offer to fix.
    let stats = fs.stats().map_err(fat_err("/"))?;
    let result = EspStats {
        cluster_size: stats.cluster_size(),
        clusters: stats.total_clusters(),
        free_clusters: stats.free_clusters(),
    };
    drop(root);
    fs.unmount().map_err(fat_err("/"))?;
    let fixed = crate::fat_fixup::fix_dot_entries(&mut slice()?).map_err(fat_err("/"))?;
    tracing::debug!(directories = fixed, "repaired fatfs 0.3 dot entries");
    if u64::from(result.clusters) < FAT32_MIN_CLUSTERS {
        return Err(DiskError::InvalidSize {
            field: "esp_size",
            value: size,
            reason: format!("gives only {} FAT32 clusters", result.clusters),
        });
    }
    Ok(result)
}

/// Copies a host file into a FAT file; read errors name the host file,
/// write errors go through `on_write`.
fn copy_into(
    src: &mut File,
    dst: &mut impl Write,
    src_path: &Path,
    on_write: impl Fn(io::Error) -> DiskError,
) -> Result<(), DiskError> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DiskError::io("reading ESP source file", src_path, e)),
        };
        dst.write_all(&buf[..n]).map_err(&on_write)?;
    }
}

fn write_at(mut f: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)
}

/// A file or directory in the ESP, as `inspect` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspEntry {
    /// `/`-separated path from the ESP root, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub path: String,
    /// Bytes (0 for directories).
    pub size: u64,
    /// A directory rather than a file.
    pub is_dir: bool,
}

/// What `inspect` finds in the EFI system partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspInfo {
    /// GPT partition number of the ESP.
    pub partition: u32,
    /// `FAT12`, `FAT16` or `FAT32`.
    pub fat_type: String,
    /// The label in the boot sector, e.g. `ESP`.
    pub volume_label: String,
    /// The volume serial number (what Linux shows as the ESP's UUID).
    pub volume_id: u32,
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Data clusters.
    pub clusters: u32,
    /// Free data clusters.
    pub free_clusters: u32,
    /// Every file and directory, sorted by path.
    pub entries: Vec<EspEntry>,
    /// The text of `loader/loader.conf`, if present.
    pub loader_conf: Option<String>,
    /// `(file name, text)` of every `loader/entries/*.conf`, sorted by name.
    pub boot_entries: Vec<(String, String)>,
}

/// Reads the FAT file system at `[offset, offset + size)` of `image`.
pub(crate) fn read_esp(
    image: &File,
    image_path: &Path,
    partition: u32,
    offset: u64,
    size: u64,
) -> Result<EspInfo, DiskError> {
    let fat_err = |path: &str| {
        let path = path.to_string();
        move |source: io::Error| DiskError::Fat {
            image: image_path.to_path_buf(),
            path,
            source,
        }
    };
    let slice = StreamSlice::new(image, offset, offset + size).map_err(fat_err("/"))?;
    let fs = FileSystem::new(slice, FsOptions::new()).map_err(fat_err("/"))?;
    let stats = fs.stats().map_err(fat_err("/"))?;
    let mut entries = Vec::new();
    let mut stack = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = stack.pop() {
        for e in dir.iter() {
            let e = e.map_err(fat_err(if prefix.is_empty() { "/" } else { &prefix }))?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if e.is_dir() {
                entries.push(EspEntry {
                    path: path.clone(),
                    size: 0,
                    is_dir: true,
                });
                stack.push((path, e.to_dir()));
            } else {
                entries.push(EspEntry {
                    path,
                    size: e.len(),
                    is_dir: false,
                });
            }
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));

    let root = fs.root_dir();
    let read_text = |path: &str| -> Result<Option<String>, DiskError> {
        let mut f = match root.open_file(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(fat_err(path)(e)),
        };
        let mut buf = Vec::new();
        Read::by_ref(&mut f)
            .take(MAX_TEXT)
            .read_to_end(&mut buf)
            .map_err(fat_err(path))?;
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    };
    let loader_conf = read_text("loader/loader.conf")?;
    let mut boot_entries = Vec::new();
    for e in &entries {
        let lower = e.path.to_lowercase();
        if let Some(name) = lower.strip_prefix("loader/entries/") {
            if !e.is_dir && !name.contains('/') && name.ends_with(".conf") {
                let text = read_text(&e.path)?.unwrap_or_default();
                let name = e.path["loader/entries/".len()..].to_string();
                boot_entries.push((name, text));
            }
        }
    }
    let fat_type = match fs.fat_type() {
        FatType::Fat12 => "FAT12",
        FatType::Fat16 => "FAT16",
        FatType::Fat32 => "FAT32",
    };
    Ok(EspInfo {
        partition,
        fat_type: fat_type.to_string(),
        volume_label: fs.volume_label(),
        volume_id: fs.volume_id(),
        cluster_size: stats.cluster_size(),
        clusters: stats.total_clusters(),
        free_clusters: stats.free_clusters(),
        entries,
        loader_conf,
        boot_entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn cluster_sizes() {
        assert_eq!(cluster_size(256 << 20), Some(2048));
        assert_eq!(cluster_size(512 << 20), Some(4096));
        assert_eq!(cluster_size(64 << 20), Some(512));
        assert_eq!(cluster_size(100 << 20), Some(1024));
        assert_eq!(cluster_size(crate::layout::MIN_ESP_SIZE), Some(512));
        assert_eq!(cluster_size(32 << 20), None);
    }

    #[test]
    fn fat_times() {
        let t = fat_time(1_700_000_000); // 2023-11-14T22:13:20Z
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        let t = fat_time(951_782_400); // 2000-02-29T00:00:00Z
        assert_eq!((t.date.year, t.date.month, t.date.day), (2000, 2, 29));
        assert_eq!(fat_time(0), DOS_EPOCH);
        let t = fat_time(u64::MAX);
        assert_eq!((t.date.year, t.date.month, t.date.day), (2107, 12, 31));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (23, 59, 59));
    }

    #[test]
    fn time_guard_restores() {
        {
            let _g = FixedTime::set(fat_time(1_700_000_000));
            use fatfs::TimeProvider;
            assert_eq!(FIXED_TIME.get_current_date().year, 2023);
        }
        assert_eq!(NOW.with(|n| n.get()), DOS_EPOCH);
    }

    fn files(paths: &[&str]) -> Vec<(String, EspSource<'static>)> {
        paths
            .iter()
            .map(|p| (p.to_string(), EspSource::Bytes(Cow::Borrowed(b"x"))))
            .collect()
    }

    #[test]
    fn paths_are_normalised_and_sorted() {
        let f = files(&["/loader/loader.conf", "EFI/BOOT/BOOTX64.EFI", "a"]);
        let c = check_files(&f).unwrap();
        let p: Vec<_> = c.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(p, ["EFI/BOOT/BOOTX64.EFI", "a", "loader/loader.conf"]);
    }

    #[test]
    fn bad_paths_are_named() {
        for (list, culprit) in [
            (&["a//b"][..], "a//b"),
            (&["../x"], "../x"),
            (&[""], ""),
            (&["a/./b"], "a/./b"),
            (&["x:y"], "x:y"),
            (&["EFI/a", "efi/A"], "efi/A"),
            (&["EFI", "EFI/BOOT/x"], "EFI"),
            (&["dir./x"], "dir./x"),
            (&["EFI/\u{1F600}.efi"], "EFI/\u{1F600}.efi"),
        ] {
            match check_files(&files(list)) {
                Err(DiskError::EspPath { path, .. }) => assert_eq!(path, culprit, "{list:?}"),
                Err(e) => panic!("{list:?}: {e}"),
                Ok(_) => panic!("{list:?} accepted"),
            }
        }
        let missing = vec![(
            "x".to_string(),
            EspSource::File(Cow::Borrowed(Path::new("/nonexistent/cairn-esp-src"))),
        )];
        let e = check_files(&missing).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/cairn-esp-src"), "{e}");
    }
}
