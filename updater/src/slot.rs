//! The A/B root slots: naming (`a`/`b`, GPT labels `cairn-a`/`cairn-b`),
//! which one runs (`cairn.slot=` on the kernel command line) and where a
//! slot's partition is (by GPT label through sysfs `PARTNAME=`).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, UpdateError};

/// A root slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// The value of `cairn.slot=`.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The GPT partition label.
    pub fn label(self) -> &'static str {
        match self {
            Slot::A => "cairn-a",
            Slot::B => "cairn-b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `a`, `b` (also `cairn-a`, `cairn-b`).
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" | "cairn-a" => Some(Slot::A),
            "b" | "cairn-b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.letter())
    }
}

/// The slot a kernel command line names (`cairn.slot=`; the last one
/// wins, as in `/init`).
pub fn slot_from_cmdline(cmdline: &str) -> Option<Slot> {
    cairn_initrd::cmdline::split_words(cmdline)
        .iter()
        .filter_map(|w| w.strip_prefix("cairn.slot="))
        .next_back()
        .and_then(Slot::parse)
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
pub fn find_partition(sys_class_block: &Path, label: &str) -> Result<PathBuf> {
    let mut found = Vec::new();
    let rd = fs::read_dir(sys_class_block).map_err(UpdateError::io(sys_class_block))?;
    for e in rd.flatten() {
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
            find_partition(t.path(), "cairn-b").unwrap(),
            PathBuf::from("/dev/vda3")
        );
        let e = find_partition(t.path(), "cairn-state")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no partition labelled cairn-state"), "{e}");
        mk("sdb3", "DEVNAME=sdb3\nPARTNAME=cairn-b\n");
        let e = find_partition(t.path(), "cairn-b").unwrap_err().to_string();
        assert!(e.contains("/dev/sdb3, /dev/vda3"), "{e}");
    }
}
