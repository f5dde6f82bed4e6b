//! The machine's disks as the installer sees them (from sysfs and
//! `/dev/disk/by-id`, `/dev/disk/by-path`), the rule that picks one, and
//! what data a disk already holds.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name (`vda`, `sda`, `nvme0n1`).
    pub name: String,
    /// `/dev/NAME`.
    pub dev: PathBuf,
    /// Bytes.
    pub size: u64,
    pub removable: bool,
    /// Names under `/dev/disk/by-id` and `/dev/disk/by-path` that lead here.
    pub by_id: Vec<String>,
    pub by_path: Vec<String>,
}

/// Where sysfs and `/dev` are (tests point them at a folder).
#[derive(Debug, Clone)]
pub struct Roots {
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl Default for Roots {
    fn default() -> Roots {
        Roots {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// Kernel names of block devices that are never install targets.
const NOT_DISKS: &[&str] = &[
    "loop", "ram", "zram", "dm-", "md", "sr", "nbd", "fd", "mtdblock",
];

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

/// `/dev/disk/<kind>/*` links: name of the whole disk they resolve to ->
/// link names. Links to partitions are left out.
fn links(roots: &Roots, kind: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(rd) = fs::read_dir(roots.dev.join("disk").join(kind)) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        let Some(dev) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        out.entry(dev)
            .or_default()
            .push(e.file_name().to_string_lossy().into_owned());
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// Every whole disk that could be an install target: not a loop, RAM,
/// device-mapper, RAID, optical or network device, not read-only, not
/// empty; in name order.
pub fn list(roots: &Roots) -> std::io::Result<Vec<Disk>> {
    let ids = links(roots, "by-id");
    let paths = links(roots, "by-path");
    let mut out = Vec::new();
    for e in fs::read_dir(roots.sys.join("block"))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if NOT_DISKS.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = e.path();
        if read_trim(&dir.join("ro")).as_deref() == Some("1") {
            continue;
        }
        let sectors: u64 = read_trim(&dir.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if sectors == 0 {
            continue;
        }
        out.push(Disk {
            dev: roots.dev.join(&name),
            size: sectors * 512,
            removable: read_trim(&dir.join("removable")).as_deref() == Some("1"),
            by_id: ids.get(&name).cloned().unwrap_or_default(),
            by_path: paths.get(&name).cloned().unwrap_or_default(),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// How the installer picks the disk (a profile's `install.disk`, the
/// kernel command line's `cairn.install.disk=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The first disk (in name order, removable ones left out) that holds
    /// no data.
    FirstEmpty,
    /// `/dev/NAME` or `NAME`.
    Name(String),
    /// `by-id:ID`: the disk `/dev/disk/by-id/ID` leads to.
    ById(String),
    /// `by-path:PATH`: the disk `/dev/disk/by-path/PATH` leads to.
    ByPath(String),
    /// `size:MIN[-MAX]`: the smallest disk of at least MIN bytes (and at
    /// most MAX); sizes with K, M, G or T (powers of 1024).
    Size { min: u64, max: Option<u64> },
}

/// Why a rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("disk rule {rule:?}: {message}; expected first-empty, /dev/NAME, by-id:ID, by-path:PATH or size:MIN[-MAX] (such as size:20G)")]
pub struct RuleError {
    pub rule: String,
    pub message: String,
}

/// `20G` -> bytes (K, M, G, T: powers of 1024; a plain number: bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<u64>().ok()?.checked_mul(mult)
}

impl Rule {
    pub fn parse(s: &str) -> Result<Rule, RuleError> {
        let err = |m: &str| RuleError {
            rule: s.to_owned(),
            message: m.to_owned(),
        };
        let plain = |v: &str| {
            !v.is_empty()
                && !v.contains('/')
                && v != "."
                && v != ".."
                && v.bytes().all(|b| b.is_ascii_graphic())
        };
        if s == "first-empty" {
            return Ok(Rule::FirstEmpty);
        }
        if let Some(v) = s.strip_prefix("by-id:") {
            return plain(v)
                .then(|| Rule::ById(v.to_owned()))
                .ok_or_else(|| err("not a link name"));
        }
        if let Some(v) = s.strip_prefix("by-path:") {
            return plain(v)
                .then(|| Rule::ByPath(v.to_owned()))
                .ok_or_else(|| err("not a link name"));
        }
        if let Some(v) = s.strip_prefix("size:") {
            let (min, max) = match v.split_once('-') {
                Some((a, b)) => (a, Some(b)),
                None => (v, None),
            };
            let min = parse_size(min).ok_or_else(|| err("not a size"))?;
            let max = match max {
                Some(m) => Some(parse_size(m).ok_or_else(|| err("not a size"))?),
                None => None,
            };
            if max.is_some_and(|m| m < min) {
                return Err(err("the maximum is below the minimum"));
            }
            return Ok(Rule::Size { min, max });
        }
        let name = s.strip_prefix("/dev/").unwrap_or(s);
        if plain(name) {
            return Ok(Rule::Name(name.to_owned()));
        }
        Err(err("not a rule"))
    }

    /// The disk the rule picks among `disks`; `holds_data` tells which
    /// hold data (only [`Rule::FirstEmpty`] asks: with `allow_overwrite`
    /// it falls back to the first disk that is not removable).
    pub fn pick<'a>(
        &self,
        disks: &'a [Disk],
        allow_overwrite: bool,
        mut holds_data: impl FnMut(&Disk) -> Option<String>,
    ) -> Result<&'a Disk, String> {
        let mut seen: Vec<String> = Vec::new();
        let found = match self {
            Rule::FirstEmpty => {
                let mut first = None;
                let mut empty = None;
                for d in disks {
                    let data = holds_data(d);
                    seen.push(match (&data, d.removable) {
                        (_, true) => format!("{} ({}, removable)", d.name, human(d.size)),
                        (Some(what), _) => format!("{} ({}, holds {what})", d.name, human(d.size)),
                        (None, _) => format!("{} ({})", d.name, human(d.size)),
                    });
                    if d.removable {
                        continue;
                    }
                    first = first.or(Some(d));
                    if data.is_none() && empty.is_none() {
                        empty = Some(d);
                    }
                }
                empty.or(first.filter(|_| allow_overwrite))
            }
            Rule::Name(n) => disks.iter().find(|d| &d.name == n),
            Rule::ById(id) => disks.iter().find(|d| d.by_id.contains(id)),
            Rule::ByPath(p) => disks.iter().find(|d| d.by_path.contains(p)),
            Rule::Size { min, max } => disks
                .iter()
                .filter(|d| d.size >= *min && max.is_none_or(|m| d.size <= m))
                .min_by_key(|d| (d.size, d.name.clone())),
        };
        found.ok_or_else(|| {
            if seen.is_empty() {
                seen = disks
                    .iter()
                    .map(|d| format!("{} ({})", d.name, human(d.size)))
                    .collect();
            }
            format!(
                "no disk fits the rule {}; disks: {}",
                self.describe(),
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(", ")
                }
            )
        })
    }

    /// The rule as written.
    pub fn describe(&self) -> String {
        match self {
            Rule::FirstEmpty => "first-empty".into(),
            Rule::Name(n) => format!("/dev/{n}"),
            Rule::ById(v) => format!("by-id:{v}"),
            Rule::ByPath(v) => format!("by-path:{v}"),
            Rule::Size { min, max: None } => format!("size:{}", human(*min)),
            Rule::Size { min, max: Some(m) } => format!("size:{}-{}", human(*min), human(*m)),
        }
    }
}

/// Bytes with a binary unit, for messages.
pub fn human(n: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    if n >= 1 << 30 {
        return format!("{:.1}G", n as f64 / (1u64 << 30) as f64);
    }
    format!("{n}")
}

/// Signatures a disk's first bytes may carry: offset, magic, what it is.
const SIGNATURES: &[(usize, &[u8], &str)] = &[
    (512, b"EFI PART", "a GPT partition table"),
    (4096, b"EFI PART", "a GPT partition table (4K sectors)"),
    (0, b"LUKS\xba\xbe", "a LUKS volume"),
    (0, b"XFSB", "an XFS filesystem"),
    (1024 + 56, b"\x53\xef", "an ext2/3/4 filesystem"),
    (65536 + 64, b"_BHRfS_M", "a btrfs filesystem"),
    (512, b"LABELONE", "an LVM physical volume"),
    (4096 - 10, b"SWAPSPACE2", "a swap area"),
    (32769, b"CD001", "an ISO 9660 filesystem"),
    (82, b"FAT32   ", "a FAT32 filesystem"),
    (54, b"FAT1", "a FAT filesystem"),
];

/// What data the device at `path` holds, judged by its first and last
/// MiB: a known signature, a partition table, or any non-zero byte.
/// `None`: both are zeros (a new or wiped disk).
pub fn holds_data(path: &Path) -> std::io::Result<Option<String>> {
    let mut f = fs::File::open(path)?;
    let size = f.seek(SeekFrom::End(0))?;
    let head_len = size.min(1 << 20);
    let mut head = vec![0u8; head_len as usize];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut head)?;
    if let Some(what) = describe_head(&head) {
        return Ok(Some(what));
    }
    let tail_len = size.min(1 << 20);
    let mut tail = vec![0u8; tail_len as usize];
    f.seek(SeekFrom::Start(size - tail_len))?;
    f.read_exact(&mut tail)?;
    if tail.iter().any(|b| *b != 0) {
        return Ok(Some(
            "data in its last MiB (a backup GPT, RAID or other metadata)".into(),
        ));
    }
    Ok(None)
}

/// What the first bytes of a disk say it holds (`None`: all zeros).
pub fn describe_head(head: &[u8]) -> Option<String> {
    for (off, magic, what) in SIGNATURES {
        if head.get(*off..off + magic.len()) == Some(*magic) {
            return Some((*what).to_string());
        }
    }
    if head.get(510..512) == Some(&[0x55, 0xaa]) {
        return Some("an MBR partition table or boot sector".into());
    }
    head.iter()
        .position(|b| *b != 0)
        .map(|at| format!("non-zero data (first at byte {at})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs and /dev: the generator of this test's fixture.
    fn fake(dir: &Path, disks: &[(&str, u64, bool, bool)]) -> Roots {
        let roots = Roots {
            sys: dir.join("sys"),
            dev: dir.join("dev"),
        };
        for (name, size, removable, ro) in disks {
            let d = roots.sys.join("block").join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("size"), format!("{}\n", size / 512)).unwrap();
            fs::write(d.join("removable"), if *removable { "1\n" } else { "0\n" }).unwrap();
            fs::write(d.join("ro"), if *ro { "1\n" } else { "0\n" }).unwrap();
        }
        let by_id = roots.dev.join("disk/by-id");
        let by_path = roots.dev.join("disk/by-path");
        fs::create_dir_all(&by_id).unwrap();
        fs::create_dir_all(&by_path).unwrap();
        std::os::unix::fs::symlink("../../vdb", by_id.join("virtio-data1")).unwrap();
        std::os::unix::fs::symlink("../../vdb1", by_id.join("virtio-data1-part1")).unwrap();
        std::os::unix::fs::symlink("../../vda", by_path.join("pci-0000:00:04.0")).unwrap();
        roots
    }

    #[test]
    fn disks_are_listed_from_sysfs_and_the_links() {
        let t = tempfile::tempdir().unwrap();
        let roots = fake(
            t.path(),
            &[
                ("vda", 20 << 30, false, false),
                ("vdb", 8 << 30, false, false),
                ("sda", 16 << 30, true, false),
                ("sr0", 1 << 30, true, true),
                ("loop0", 1 << 30, false, false),
                ("dm-0", 1 << 30, false, false),
                ("vdc", 1 << 30, false, true),
                ("vdd", 0, false, false),
            ],
        );
        let d = list(&roots).unwrap();
        let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["sda", "vda", "vdb"]);
        assert_eq!(d[1].by_path, ["pci-0000:00:04.0"]);
        assert_eq!(d[2].by_id, ["virtio-data1"]);
        assert_eq!(d[1].size, 20 << 30);
        assert!(d[0].removable);

        let with_data = |d: &Disk| (d.name == "vda").then(|| "a GPT partition table".to_string());
        let pick = |r: &str| {
            Rule::parse(r)
                .unwrap()
                .pick(&d, false, with_data)
                .map(|d| d.name.clone())
        };
        // removable sda skipped, vda holds data
        assert_eq!(pick("first-empty").unwrap(), "vdb");
        assert_eq!(pick("/dev/vda").unwrap(), "vda");
        assert_eq!(pick("vda").unwrap(), "vda");
        assert_eq!(pick("by-id:virtio-data1").unwrap(), "vdb");
        assert_eq!(pick("by-path:pci-0000:00:04.0").unwrap(), "vda");
        assert_eq!(pick("size:10G").unwrap(), "sda");
        assert_eq!(pick("size:1G-10G").unwrap(), "vdb");
        let e = pick("size:100G").unwrap_err();
        assert_eq!(
            e,
            "no disk fits the rule size:100G; disks: sda (16G), vda (20G), vdb (8G)"
        );
        assert!(
            pick("by-id:virtio-data1-part1").is_err(),
            "a partition's link"
        );
    }

    #[test]
    fn rules_are_parsed_or_refused_with_the_grammar() {
        assert_eq!(
            Rule::parse("size:512M-2T").unwrap(),
            Rule::Size {
                min: 512 << 20,
                max: Some(2 << 40)
            }
        );
        for bad in [
            "",
            "by-id:",
            "by-id:../x",
            "size:",
            "size:x",
            "size:2G-1G",
            "/dev/a/b",
            "size:99999999999999999999T",
        ] {
            let e = Rule::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected first-empty"), "{bad}: {e}");
        }
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(human(20 << 30), "20G");
    }

    #[test]
    fn data_on_a_disk_is_named() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("disk");
        let f = fs::File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        assert_eq!(holds_data(&p).unwrap(), None);
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"EFI PART", 512).unwrap();
        assert_eq!(holds_data(&p).unwrap().unwrap(), "a GPT partition table");
        f.write_all_at(&[0; 8], 512).unwrap();
        f.write_all_at(&[0x53, 0xef], 1080).unwrap();
        assert_eq!(holds_data(&p).unwrap().unwrap(), "an ext2/3/4 filesystem");
        f.write_all_at(&[0; 2], 1080).unwrap();
        f.write_all_at(&[1], (8 << 20) - 1).unwrap();
        assert!(holds_data(&p).unwrap().unwrap().contains("last MiB"));
        f.write_all_at(&[0], (8 << 20) - 1).unwrap();
        f.write_all_at(&[7], 12345).unwrap();
        assert_eq!(
            holds_data(&p).unwrap().unwrap(),
            "non-zero data (first at byte 12345)"
        );
        f.write_all_at(&[0], 12345).unwrap();
        f.write_all_at(&[0x55, 0xaa], 510).unwrap();
        assert!(holds_data(&p).unwrap().unwrap().contains("MBR"));
    }
}
