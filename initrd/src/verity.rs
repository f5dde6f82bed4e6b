//! What `/init` does about a verified root that fails: the count of
//! unfinished boots kept on the state partition, the decision taken from
//! it ([`plan`]), and marking the booted systemd-boot entry bad the way
//! boot counting does (`NAME+0-N.conf`), so that the loader picks the other
//! slot's entry.
//!
//! The rule (`docs/architecture.md`, "Boot"): on a disk boot with
//! `cairn.verity=`, before the root is opened, `/init` adds one to the
//! count of boots of this slot's entry that never reached
//! `boot-complete.target` ([`COUNT_FILE`] on the state partition; a unit
//! `/init` leaves in `/run/systemd/system` removes the file once that
//! target is reached). A boot that finds the count already at
//! `cairn.tries` (default 3) marks the entry bad and reboots, if another
//! entry that is not bad exists; otherwise it opens the root with
//! corruption reported as EIO instead of a restart, so the machine comes
//! up as far as its intact blocks allow instead of rebooting forever. The
//! kernel's restarts on corruption (`restart_on_corruption`) are thus
//! bounded by `cairn.tries` per entry.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::dm::OnCorruption;

/// Where the count lives, relative to the mounted state partition.
pub const COUNT_FILE: &str = "cairn-init/unfinished-boots";

/// The runtime unit that clears the count once `boot-complete.target` is
/// reached (written by `/init` into `/run/systemd/system`).
pub const CLEAR_UNIT: &str = "cairn-boot-complete.service";

/// The count as stored: which slot and entry it is about, and how many of
/// their boots started without completing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub slot: String,
    /// The loader's entry id (`LoaderEntrySelected`), or `-` without one.
    pub entry: String,
    pub boots: u32,
}

impl Count {
    /// One line: `SLOT ENTRY BOOTS`.
    pub fn to_line(&self) -> String {
        format!("{} {} {}\n", self.slot, self.entry, self.boots)
    }

    /// Parses [`Count::to_line`]; `None` for anything else (a torn or
    /// foreign file counts as no earlier boot).
    pub fn parse(text: &str) -> Option<Count> {
        let mut it = text.split_whitespace();
        let (Some(slot), Some(entry), Some(boots), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return None;
        };
        Some(Count {
            slot: slot.to_owned(),
            entry: entry.to_owned(),
            boots: boots.parse().ok()?,
        })
    }

    /// The unfinished boots before this one of `slot`/`entry` (0 when the
    /// stored count is about another slot or entry).
    pub fn earlier(stored: Option<&Count>, slot: &str, entry: &str) -> u32 {
        match stored {
            Some(c) if c.slot == slot && c.entry.eq_ignore_ascii_case(entry) => c.boots,
            _ => 0,
        }
    }
}

/// What `/init` does with a verified root before opening it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Open it; a corrupt block restarts the machine or fails the read.
    Open(OnCorruption),
    /// Mark the booted entry bad and reboot into the other slot.
    MarkBad,
}

/// The decision: `earlier` unfinished boots of this entry, `tries` allowed,
/// whether the count can be kept at all (a state partition) and whether
/// another entry that is not bad exists (and the booted one is known).
pub fn plan(earlier: u32, tries: u32, can_count: bool, can_fall_back: bool) -> Plan {
    if !can_count {
        // restarts nobody counts would loop: report corruption as EIO
        return Plan::Open(OnCorruption::Eio);
    }
    if earlier < tries {
        Plan::Open(OnCorruption::Restart)
    } else if can_fall_back {
        Plan::MarkBad
    } else {
        Plan::Open(OnCorruption::Eio)
    }
}

/// A boot entry file name split as systemd-boot's boot counting sees it:
/// `STEM[+LEFT[-DONE]].conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    pub stem: String,
    pub left: Option<u32>,
    pub done: Option<u32>,
}

impl EntryName {
    pub fn parse(file: &str) -> Option<EntryName> {
        let base = file.strip_suffix(".conf")?;
        if let Some((stem, counter)) = base.rsplit_once('+') {
            let (left, done) = match counter.split_once('-') {
                Some((l, d)) => (l, Some(d)),
                None => (counter, None),
            };
            let num = |s: &str| {
                (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| s.parse().ok())
                    .flatten()
            };
            if let Some(l) = num(left) {
                match done.map(num) {
                    None => {
                        return Some(EntryName {
                            stem: stem.to_owned(),
                            left: Some(l),
                            done: None,
                        })
                    }
                    Some(Some(d)) => {
                        return Some(EntryName {
                            stem: stem.to_owned(),
                            left: Some(l),
                            done: Some(d),
                        })
                    }
                    Some(None) => {}
                }
            }
        }
        Some(EntryName {
            stem: base.to_owned(),
            left: None,
            done: None,
        })
    }

    /// Whether boot counting considers it bad (no tries left).
    pub fn is_bad(&self) -> bool {
        self.left == Some(0)
    }

    /// The name systemd-bless-boot's `bad` gives it: no tries left, the
    /// tries done so far kept (at least `boots`).
    pub fn bad_name(&self, boots: u32) -> String {
        let done = self.left.unwrap_or(0) + self.done.unwrap_or(0);
        format!("{}+0-{}.conf", self.stem, done.max(boots))
    }
}

/// The stem of a loader entry id (`LoaderEntrySelected`: the file name,
/// with or without `.conf` and the counter), lower-cased.
pub fn id_stem(id: &str) -> String {
    let id = id.to_ascii_lowercase();
    let with_conf = if id.ends_with(".conf") {
        id
    } else {
        format!("{id}.conf")
    };
    EntryName::parse(&with_conf)
        .map(|n| n.stem)
        .unwrap_or_default()
}

/// Given the file names in `loader/entries/` and the booted entry's id:
/// the booted entry's file, and whether another entry that is not bad
/// exists.
pub fn find_booted(files: &[String], id: &str) -> (Option<String>, bool) {
    let want = id_stem(id);
    let mut booted = None;
    let mut other = false;
    for f in files {
        let Some(n) = EntryName::parse(&f.to_ascii_lowercase()) else {
            continue;
        };
        if n.stem == want {
            booted = Some(f.clone());
        } else if !n.is_bad() {
            other = true;
        }
    }
    (booted, other)
}

/// Decodes an EFI string variable as efivarfs shows it: 4 bytes of
/// attributes, then UTF-16LE up to a NUL.
pub fn parse_efi_string(raw: &[u8]) -> Option<String> {
    let data = raw.get(4..)?;
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok().filter(|s| !s.is_empty())
}

/// systemd-boot's variable naming the entry it booted.
pub const LOADER_ENTRY_SELECTED: &str = "LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Reads the count under the mounted state `state`.
pub fn read_count(state: &Path) -> Option<Count> {
    fs::read_to_string(state.join(COUNT_FILE))
        .ok()
        .and_then(|t| Count::parse(&t))
}

/// Writes the count durably (temporary file, fsync, rename, fsync of the
/// directory): it must survive the kernel restarting a moment later.
pub fn write_count(state: &Path, c: &Count) -> io::Result<()> {
    let path = state.join(COUNT_FILE);
    let dir = path.parent().unwrap_or(state);
    fs::create_dir_all(dir)?;
    let tmp = dir.join(".unfinished-boots.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(c.to_line().as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()
}

/// Lists `loader/entries/*.conf` of the ESP mounted at `esp`.
pub fn entry_files(esp: &Path) -> io::Result<Vec<String>> {
    let mut out: Vec<String> = fs::read_dir(esp.join("loader/entries"))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.to_ascii_lowercase().ends_with(".conf"))
        .collect();
    out.sort();
    Ok(out)
}

/// Renames entry `file` of the ESP mounted at `esp` to its bad name and
/// makes that durable. Returns the new name.
pub fn mark_bad(esp: &Path, file: &str, boots: u32) -> io::Result<String> {
    let dir = esp.join("loader/entries");
    let name = EntryName::parse(file)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a .conf entry"))?;
    let new = name.bad_name(boots);
    fs::rename(dir.join(file), dir.join(&new))?;
    File::open(&dir)?.sync_all()?;
    rustix::fs::syncfs(File::open(esp)?).map_err(io::Error::from)?;
    Ok(new)
}

/// The unit that removes the count once `boot-complete.target` is reached
/// (pulled in by `multi-user.target`; on a boot without a try counter
/// nothing else pulls that target in, so this unit does). Without default
/// dependencies, as `systemd-bless-boot.service`: a target orders itself
/// after the units it wants unless they opt out, and `multi-user.target`
/// after `boot-complete.target` would be a cycle (the health gate runs
/// after `multi-user.target`).
pub fn clear_unit(state: &str) -> String {
    format!(
        "# Written by cairn's /init (cairn_initrd::verity): this boot of a verified\n\
         # root reached boot-complete.target, so it is no longer an unfinished one.\n\
         [Unit]\n\
         Description=cairn: clear the count of unfinished boots\n\
         DefaultDependencies=no\n\
         Requires=boot-complete.target\n\
         After=boot-complete.target\n\
         Conflicts=shutdown.target\n\
         Before=shutdown.target\n\
         RequiresMountsFor={state}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/bin/rm -f {state}/{COUNT_FILE}\n\
         ExecStart=/bin/sync -f {state}\n"
    )
}

/// Writes [`clear_unit`] into `<run>/systemd/system` with a
/// `multi-user.target.wants` link.
pub fn install_clear_unit(run: &Path, state: &str) -> io::Result<PathBuf> {
    let dir = run.join("systemd/system");
    let wants = dir.join("multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    let unit = dir.join(CLEAR_UNIT);
    fs::write(&unit, clear_unit(state))?;
    let link = wants.join(CLEAR_UNIT);
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("../{CLEAR_UNIT}"), &link)?;
    Ok(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        use OnCorruption::*;
        assert_eq!(plan(0, 3, true, true), Plan::Open(Restart));
        assert_eq!(plan(2, 3, true, false), Plan::Open(Restart));
        assert_eq!(plan(3, 3, true, true), Plan::MarkBad);
        assert_eq!(plan(1, 1, true, true), Plan::MarkBad);
        // nowhere to go: no more restarts, corruption fails reads
        assert_eq!(plan(3, 3, true, false), Plan::Open(Eio));
        // nothing counts restarts: never restart
        assert_eq!(plan(0, 3, false, true), Plan::Open(Eio));
    }

    #[test]
    fn counts() {
        let c = Count {
            slot: "cairn-a".into(),
            entry: "cairn-1.0.0.conf".into(),
            boots: 2,
        };
        assert_eq!(c.to_line(), "cairn-a cairn-1.0.0.conf 2\n");
        assert_eq!(Count::parse(&c.to_line()), Some(c.clone()));
        assert_eq!(Count::parse("cairn-a x"), None);
        assert_eq!(Count::parse("cairn-a x y"), None);
        assert_eq!(Count::parse(""), None);
        assert_eq!(Count::earlier(Some(&c), "cairn-a", "CAIRN-1.0.0.conf"), 2);
        assert_eq!(Count::earlier(Some(&c), "cairn-b", "cairn-1.0.0.conf"), 0);
        assert_eq!(Count::earlier(Some(&c), "cairn-a", "cairn-2.0.0.conf"), 0);
        assert_eq!(Count::earlier(None, "cairn-a", "-"), 0);

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_count(dir.path()), None);
        write_count(dir.path(), &c).unwrap();
        assert_eq!(read_count(dir.path()), Some(c));
    }

    #[test]
    fn entry_names_as_boot_counting_sees_them() {
        let n = EntryName::parse("cairn-1.0.0+3-1.conf").unwrap();
        assert_eq!(
            (n.stem.as_str(), n.left, n.done),
            ("cairn-1.0.0", Some(3), Some(1))
        );
        assert_eq!(n.bad_name(1), "cairn-1.0.0+0-4.conf");
        let n = EntryName::parse("cairn-1.0.0.conf").unwrap();
        assert_eq!((n.left, n.done), (None, None));
        assert_eq!(n.bad_name(3), "cairn-1.0.0+0-3.conf");
        let n = EntryName::parse("cairn-1.0.0+2.conf").unwrap();
        assert_eq!(n.bad_name(1), "cairn-1.0.0+0-2.conf");
        assert!(EntryName::parse("x+0-5.conf").unwrap().is_bad());
        // a '+' that is no counter stays in the stem
        assert_eq!(EntryName::parse("a+b.conf").unwrap().stem, "a+b");
        assert_eq!(EntryName::parse("a+1-x.conf").unwrap().stem, "a+1-x");
        assert_eq!(EntryName::parse("a.txt"), None);

        assert_eq!(id_stem("cairn-1.0.0.conf"), "cairn-1.0.0");
        assert_eq!(id_stem("Cairn-1.0.0+2-1.conf"), "cairn-1.0.0");
        assert_eq!(id_stem("cairn-1.0.0"), "cairn-1.0.0");

        let files = vec![
            "cairn-1.0.0.conf".to_owned(),
            "cairn-2.0.0+0-3.conf".to_owned(),
        ];
        assert_eq!(
            find_booted(&files, "cairn-1.0.0.conf"),
            (Some("cairn-1.0.0.conf".to_owned()), false)
        );
        let files = vec![
            "cairn-1.0.0.conf".to_owned(),
            "cairn-2.0.0+1-2.conf".to_owned(),
        ];
        assert_eq!(
            find_booted(&files, "cairn-2.0.0"),
            (Some("cairn-2.0.0+1-2.conf".to_owned()), true)
        );
        assert_eq!(find_booted(&files, "other"), (None, true));
    }

    #[test]
    fn marking_bad_renames_durably() {
        let dir = tempfile::tempdir().unwrap();
        let entries = dir.path().join("loader/entries");
        fs::create_dir_all(&entries).unwrap();
        fs::write(entries.join("cairn-1.0.0.conf"), "title x\n").unwrap();
        fs::write(entries.join("cairn-0.9.0.conf"), "title y\n").unwrap();
        let new = mark_bad(dir.path(), "cairn-1.0.0.conf", 1).unwrap();
        assert_eq!(new, "cairn-1.0.0+0-1.conf");
        assert_eq!(
            entry_files(dir.path()).unwrap(),
            ["cairn-0.9.0.conf", "cairn-1.0.0+0-1.conf"]
        );
    }

    #[test]
    fn efi_strings_and_the_unit() {
        let mut raw = vec![6, 0, 0, 0];
        for u in "cairn-1.0.0.conf".encode_utf16().chain([0]) {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(parse_efi_string(&raw).as_deref(), Some("cairn-1.0.0.conf"));
        assert_eq!(parse_efi_string(&[6, 0, 0, 0, 0, 0]), None);

        let dir = tempfile::tempdir().unwrap();
        let unit = install_clear_unit(dir.path(), "/run/cairn/state").unwrap();
        let text = fs::read_to_string(unit).unwrap();
        assert!(text.contains("ExecStart=/bin/rm -f /run/cairn/state/cairn-init/unfinished-boots"));
        assert!(text.contains("After=boot-complete.target"));
        assert!(text.contains("DefaultDependencies=no"));
        let link = dir
            .path()
            .join("systemd/system/multi-user.target.wants")
            .join(CLEAR_UNIT);
        assert!(link.exists());
        // twice is fine
        install_clear_unit(dir.path(), "/run/cairn/state").unwrap();
    }
}
