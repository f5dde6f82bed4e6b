//! Finding block devices the way `/init` needs to, without udev: parsing
//! the `uevent` files under `/sys/class/block/*` (which carry `DEVNAME=`,
//! `PARTN=` and the GPT label as `PARTNAME=`), telling which disk a
//! partition belongs to, and polling until a wanted partition and its
//! `/dev` node (created by devtmpfs) exist. The sysfs and /dev roots are
//! parameters so the logic is tested on a fake tree.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often [`wait_for`] rescans sysfs.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The fields of a block device's `uevent` file that `/init` uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uevent {
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// Node name below /dev, e.g. `vda2` or `nvme0n1p2`.
    pub devname: Option<String>,
    /// `disk` or `partition`.
    pub devtype: Option<String>,
    /// 1-based partition number.
    pub partn: Option<u32>,
    /// GPT partition label.
    pub partname: Option<String>,
}

/// Parses the `KEY=value` lines of a uevent file; unknown keys are ignored.
pub fn parse_uevent(text: &str) -> Uevent {
    let mut u = Uevent::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "MAJOR" => u.major = v.parse().ok(),
            "MINOR" => u.minor = v.parse().ok(),
            "DEVNAME" => u.devname = Some(v.to_owned()),
            "DEVTYPE" => u.devtype = Some(v.to_owned()),
            "PARTN" => u.partn = v.parse().ok(),
            "PARTNAME" => u.partname = Some(v.to_owned()),
            _ => {}
        }
    }
    u
}

/// A block device seen in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    /// Name of the entry in /sys/class/block.
    pub name: String,
    pub uevent: Uevent,
    /// For a partition: the sysfs name of its disk.
    pub disk: Option<String>,
}

impl BlockDev {
    /// The device node, `<dev_root>/<DEVNAME>`.
    pub fn node(&self, dev_root: &Path) -> PathBuf {
        dev_root.join(self.uevent.devname.as_deref().unwrap_or(&self.name))
    }

    pub fn is_partition(&self) -> bool {
        self.uevent.devtype.as_deref() == Some("partition") || self.uevent.partn.is_some()
    }
}

/// Lists `<class_block>/*` (normally `/sys/class/block`), sorted by name.
/// Entries that vanish or cannot be read are skipped.
pub fn scan(class_block: &Path) -> Vec<BlockDev> {
    let Ok(rd) = std::fs::read_dir(class_block) else {
        return Vec::new();
    };
    let mut out: Vec<BlockDev> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let text = std::fs::read_to_string(e.path().join("uevent")).ok()?;
            let uevent = parse_uevent(&text);
            // /sys/class/block/vda2 -> ../../devices/.../block/vda/vda2: a
            // partition's directory sits inside its disk's.
            let disk = if uevent.devtype.as_deref() == Some("partition") || uevent.partn.is_some() {
                std::fs::read_link(e.path())
                    .ok()
                    .and_then(|l| Some(l.parent()?.file_name()?.to_str()?.to_owned()))
            } else {
                None
            };
            Some(BlockDev { name, uevent, disk })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want<'a> {
    /// A partition with this GPT label, on any disk (the first by name).
    Label(&'a str),
    /// A partition with this GPT label on the given disk.
    LabelOnDisk(&'a str, &'a str),
    /// Partition number N of the given disk.
    Number(&'a str, u32),
}

impl Want<'_> {
    pub fn matches(&self, d: &BlockDev) -> bool {
        if !d.is_partition() {
            return false;
        }
        match *self {
            Want::Label(l) => d.uevent.partname.as_deref() == Some(l),
            Want::LabelOnDisk(l, disk) => {
                d.uevent.partname.as_deref() == Some(l) && d.disk.as_deref() == Some(disk)
            }
            Want::Number(disk, n) => d.uevent.partn == Some(n) && d.disk.as_deref() == Some(disk),
        }
    }
}

/// The first device matching `want` whose node exists under `dev_root`.
pub fn find(class_block: &Path, dev_root: &Path, want: &Want<'_>) -> Option<BlockDev> {
    scan(class_block)
        .into_iter()
        .find(|d| want.matches(d) && d.node(dev_root).exists())
}

/// Polls [`find`] every [`POLL_INTERVAL`] until it succeeds or `timeout`
/// has passed (it always looks at least once). `tick` runs before each
/// look (`/init` loads drivers for newly appeared devices there).
pub fn wait_for(
    class_block: &Path,
    dev_root: &Path,
    want: &Want<'_>,
    timeout: Duration,
    tick: &mut dyn FnMut(),
) -> Option<BlockDev> {
    let start = Instant::now();
    loop {
        tick();
        if let Some(d) = find(class_block, dev_root, want) {
            return Some(d);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A fake /sys and /dev for the tests of this module and of `bootdisk`.
#[cfg(test)]
pub(crate) mod fake {
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    /// Builds a fake /sys (devices tree + class/block symlinks) and /dev.
    pub(crate) struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        pub(crate) fn new() -> Fake {
            let f = Fake {
                dir: tempfile::tempdir().unwrap(),
            };
            fs::create_dir_all(f.class()).unwrap();
            fs::create_dir_all(f.dev()).unwrap();
            f
        }
        pub(crate) fn class(&self) -> PathBuf {
            self.dir.path().join("sys/class/block")
        }
        pub(crate) fn dev(&self) -> PathBuf {
            self.dir.path().join("dev")
        }
        /// Adds a disk and its partitions `(n, label)`; `nodes` says whether
        /// devtmpfs has created the /dev nodes yet.
        pub(crate) fn disk(&self, disk: &str, sep: &str, parts: &[(u32, &str)], nodes: bool) {
            let base = format!("devices/pci0000:00/0000:00:04.0/block/{disk}");
            let d = self.dir.path().join("sys").join(&base);
            fs::create_dir_all(&d).unwrap();
            fs::write(
                d.join("uevent"),
                format!("MAJOR=254\nMINOR=0\nDEVNAME={disk}\nDEVTYPE=disk\n"),
            )
            .unwrap();
            symlink(format!("../../{base}"), self.class().join(disk)).unwrap();
            if nodes {
                fs::write(self.dev().join(disk), b"").unwrap();
            }
            for (n, label) in parts {
                let name = format!("{disk}{sep}{n}");
                let p = d.join(&name);
                fs::create_dir_all(&p).unwrap();
                fs::write(
                    p.join("uevent"),
                    format!("MAJOR=254\nMINOR={n}\nDEVNAME={name}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={label}\n"),
                )
                .unwrap();
                symlink(format!("../../{base}/{name}"), self.class().join(&name)).unwrap();
                if nodes {
                    fs::write(self.dev().join(&name), b"").unwrap();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Fake;
    use super::*;
    use std::fs;

    const VDA2: &str = "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=2\nPARTNAME=cairn-a\n";

    #[test]
    fn parses_partition_uevent() {
        let u = parse_uevent(VDA2);
        assert_eq!(
            u,
            Uevent {
                major: Some(254),
                minor: Some(2),
                devname: Some("vda2".into()),
                devtype: Some("partition".into()),
                partn: Some(2),
                partname: Some("cairn-a".into()),
            }
        );
        let disk = parse_uevent("MAJOR=259\nMINOR=0\nDEVNAME=nvme0n1\nDEVTYPE=disk\nDISKSEQ=1\n");
        assert_eq!(disk.devtype.as_deref(), Some("disk"));
        assert_eq!(disk.partn, None);
        assert_eq!(parse_uevent("garbage\nPARTN=x\n"), Uevent::default());
    }

    #[test]
    fn finds_by_label_disk_and_number() {
        let f = Fake::new();
        f.disk(
            "vda",
            "",
            &[
                (1, "ESP"),
                (2, "cairn-a"),
                (3, "cairn-b"),
                (4, "cairn-state"),
            ],
            true,
        );
        f.disk("nvme0n1", "p", &[(1, "cairn-state"), (2, "data")], true);
        let devs = scan(&f.class());
        assert_eq!(devs.len(), 8);
        let a = find(&f.class(), &f.dev(), &Want::Label("cairn-a")).unwrap();
        assert_eq!(a.name, "vda2");
        assert_eq!(a.disk.as_deref(), Some("vda"));
        assert_eq!(a.node(&f.dev()), f.dev().join("vda2"));
        // Label on a specific disk: the slot's disk, not the NVMe one.
        let s = find(
            &f.class(),
            &f.dev(),
            &Want::LabelOnDisk("cairn-state", "vda"),
        )
        .unwrap();
        assert_eq!(s.name, "vda4");
        let s = find(
            &f.class(),
            &f.dev(),
            &Want::LabelOnDisk("cairn-state", "nvme0n1"),
        )
        .unwrap();
        assert_eq!(s.name, "nvme0n1p1");
        let n = find(&f.class(), &f.dev(), &Want::Number("nvme0n1", 2)).unwrap();
        assert_eq!(n.uevent.partname.as_deref(), Some("data"));
        // Disks themselves never match.
        assert!(find(&f.class(), &f.dev(), &Want::Label("vda")).is_none());
        assert!(find(&f.class(), &f.dev(), &Want::Label("cairn-c")).is_none());
    }

    #[test]
    fn waits_for_device_node_and_times_out() {
        let f = Fake::new();
        f.disk("sda", "", &[(1, "cairn-b")], false);
        // Present in sysfs, but devtmpfs has not made /dev/sda1 yet.
        let start = Instant::now();
        let mut ticks = 0;
        assert!(wait_for(
            &f.class(),
            &f.dev(),
            &Want::Label("cairn-b"),
            Duration::from_millis(100),
            &mut || ticks += 1,
        )
        .is_none());
        assert!(ticks >= 2, "tick runs on every poll");
        assert!(start.elapsed() >= Duration::from_millis(100));
        // The node appears while we wait.
        let dev = f.dev();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(60));
            fs::write(dev.join("sda1"), b"").unwrap();
        });
        let d = wait_for(
            &f.class(),
            &f.dev(),
            &Want::Label("cairn-b"),
            Duration::from_secs(5),
            &mut || {},
        )
        .unwrap();
        t.join().unwrap();
        assert_eq!(d.name, "sda1");
    }
}
