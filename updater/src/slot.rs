//! The A/B root slots: naming (`a`/`b`, GPT labels `cairn-a`/`cairn-b`),
//! which one runs (`cairn.slot=` on the kernel command line) and where a
//! slot's partition is (by GPT label through sysfs `PARTNAME=`).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Result, UpdateError};

pub use cairn_formats::Slot;

/// The slot a kernel command line names (`cairn.slot=`; the last one
/// wins, as in `/init`).
pub fn slot_from_cmdline(cmdline: &str) -> Option<Slot> {
    cairn_formats::cmdline::slot(cmdline)
}

/// The running slot from a `/proc/cmdline`-like file.
pub fn running_slot(cmdline_path: &Path) -> Result<Slot> {
    let text = fs::read_to_string(cmdline_path).map_err(UpdateError::io(cmdline_path))?;
    slot_from_cmdline(&text).ok_or_else(|| {
        UpdateError::Refused(format!(
            "{}: no cairn.slot=a|b: this system did not boot from a slot (network boot?), nothing to update",
            cmdline_path.display()
        ))
    })
}

/// The block device whose GPT partition label is `label`: reads
/// `SYS/class/block/*/uevent` for `PARTNAME=label` and returns
/// `/dev/<DEVNAME>`. More than one match is an error (two cairn disks).
///
/// With `on_disk` (the sysfs name of the disk the running root came from,
/// see [`root_disk`]) only that disk's partitions count, so another disk
/// carrying the same labels (a USB stick, a second cairn disk) is neither
/// written nor a reason to refuse.
pub fn find_partition(
    sys_class_block: &Path,
    label: &str,
    on_disk: Option<&str>,
) -> Result<PathBuf> {
    let mut found = Vec::new();
    let rd = fs::read_dir(sys_class_block).map_err(UpdateError::io(sys_class_block))?;
    for e in rd.flatten() {
        if let Some(disk) = on_disk {
            if disk_of(&e.path()).as_deref() != Some(disk) {
                continue;
            }
        }
        let uevent = e.path().join("uevent");
        let Ok(text) = fs::read_to_string(&uevent) else {
            continue;
        };
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
        };
        if get("PARTNAME") == Some(label) {
            let dev = get("DEVNAME")
                .map(str::to_string)
                .unwrap_or_else(|| e.file_name().to_string_lossy().into_owned());
            found.push(PathBuf::from("/dev").join(dev));
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(UpdateError::Refused(format!(
            "no partition labelled {label} under {}",
            sys_class_block.display()
        ))),
        _ => Err(UpdateError::Refused(format!(
            "several partitions labelled {label}: {}",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The disk (sysfs name) of a partition's `/sys/class/block/NAME` entry:
/// the link points into its disk's directory
/// (`../../devices/.../block/vda/vda2`).
fn disk_of(class_entry: &Path) -> Option<String> {
    let l = fs::read_link(class_entry).ok()?;
    let parent = l.parent()?.file_name()?.to_str()?;
    (parent != "block").then(|| parent.to_owned())
}

/// The disk (sysfs name) holding the block device mounted on `/`, from the
/// text of `/proc/self/mountinfo` (the last mount on `/`, as the kernel
/// lists them in order) and `/sys/dev/block/MAJOR:MINOR`. `None` for a root
/// that is not a partition (network boot: a loop device).
pub fn root_disk(mountinfo: &str, sys_dev_block: &Path) -> Option<String> {
    let dev = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&"/"))
                .then(|| f.get(2).copied())
                .flatten()
        })
        .next_back()?;
    disk_of(&sys_dev_block.join(dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_from_cmdlines() {
        assert_eq!(
            slot_from_cmdline("cairn.slot=a console=ttyS0 panic=10\n"),
            Some(Slot::A)
        );
        assert_eq!(
            slot_from_cmdline("cairn.slot=a cairn.slot=b"),
            Some(Slot::B)
        );
        assert_eq!(slot_from_cmdline("cairn.root=ram"), None);
        assert_eq!(slot_from_cmdline("cairn.slot=c"), None);
        assert_eq!(slot_from_cmdline("\"cairn.slot=b\" x"), Some(Slot::B));
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.label(), "cairn-b");
    }

    #[test]
    fn partitions_by_label() {
        let t = tempfile::tempdir().unwrap();
        let mk = |name: &str, text: &str| {
            let d = t.path().join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("uevent"), text).unwrap();
        };
        mk("vda", "MAJOR=252\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n");
        mk(
            "vda2",
            "MAJOR=252\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=cairn-a\n",
        );
        mk(
            "vda3",
            "DEVNAME=vda3\nDEVTYPE=partition\nPARTNAME=cairn-b\n",
        );
        mk("vda30", "DEVNAME=vda30\nPARTNAME=cairn-bb\n");
        assert_eq!(
            find_partition(t.path(), "cairn-b", None).unwrap(),
            PathBuf::from("/dev/vda3")
        );
        let e = find_partition(t.path(), "cairn-state", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no partition labelled cairn-state"), "{e}");
        mk("sdb3", "DEVNAME=sdb3\nPARTNAME=cairn-b\n");
        let e = find_partition(t.path(), "cairn-b", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/sdb3, /dev/vda3"), "{e}");
    }

    /// A sysfs as the kernel lays it out: `class/block/*` and
    /// `dev/block/MAJ:MIN` are links into `devices/.../block/DISK/PART`.
    #[test]
    fn only_the_root_disk_counts() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        fs::create_dir_all(sys.join("class/block")).unwrap();
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        let mut minor = 0;
        for (disk, parts) in [
            ("sda", ["cairn-a", "cairn-b"]),
            ("vda", ["cairn-a", "cairn-b"]),
        ] {
            for (i, label) in parts.iter().enumerate() {
                let part = format!("{disk}{}", i + 2);
                let rel = format!("devices/pci0000:00/block/{disk}/{part}");
                fs::create_dir_all(sys.join(&rel)).unwrap();
                fs::write(
                    sys.join(&rel).join("uevent"),
                    format!("DEVNAME={part}\nDEVTYPE=partition\nPARTNAME={label}\n"),
                )
                .unwrap();
                std::os::unix::fs::symlink(
                    format!("../../{rel}"),
                    sys.join("class/block").join(&part),
                )
                .unwrap();
                minor += 1;
                std::os::unix::fs::symlink(
                    format!("../../{rel}"),
                    sys.join("dev/block").join(format!("254:{minor}")),
                )
                .unwrap();
            }
        }
        // vda2 is 254:3; an overlay mounted on / later (/etc's is not on /)
        let mountinfo = "22 1 0:21 / / rw - tmpfs rootfs rw\n\
                         25 1 254:3 / / ro,relatime - squashfs /dev/vda2 ro\n\
                         30 25 0:25 / /proc rw - proc proc rw\n";
        let disk = root_disk(mountinfo, &sys.join("dev/block"));
        assert_eq!(disk.as_deref(), Some("vda"));
        assert_eq!(
            find_partition(&sys.join("class/block"), "cairn-b", disk.as_deref()).unwrap(),
            PathBuf::from("/dev/vda3")
        );
        // without knowing the disk, two are refused
        assert!(find_partition(&sys.join("class/block"), "cairn-b", None).is_err());
        // a root that is no partition (network boot's loop device)
        assert_eq!(
            root_disk(
                "25 1 7:0 / / ro - squashfs /dev/loop0 ro\n",
                &sys.join("dev/block")
            ),
            None
        );
        assert_eq!(root_disk("", &sys.join("dev/block")), None);
    }
}
