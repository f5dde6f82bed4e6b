//! Boot Loader Specification entries on the ESP as the agent sees them:
//! file names with boot counters (`cairn-2+3.conf`, `cairn-2+2-1.conf`,
//! blessed `cairn-2.conf`), which slot an entry boots (`cairn.slot=` in its
//! `options`), removing a slot's entries and writing a new one crash-safely
//! (temp, fsync, rename, fsync the directory). The entry text itself is
//! `cairn_disk::bls_entry`, the same writer `cairn build` uses.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Result, UpdateError};
use crate::fsutil::fsync_dir;
use crate::slot::{slot_from_cmdline, Slot};
use cairn_formats::verity::Verity;

/// Directory of the entries inside the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";

/// An entry file name split into its id and boot counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    /// The name without counter and `.conf` (`cairn-2`).
    pub stem: String,
    /// Tries left (`+3`), when counting.
    pub tries_left: Option<u32>,
    /// Tries done (`-1`), when any.
    pub tries_done: Option<u32>,
}

impl EntryName {
    /// Parses `STEM[+LEFT[-DONE]].conf`; `None` for other files.
    pub fn parse(file_name: &str) -> Option<EntryName> {
        let base = file_name.strip_suffix(".conf")?;
        if base.is_empty() || base.starts_with('.') {
            return None;
        }
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        if let Some((stem, counter)) = base.rsplit_once('+') {
            let (left, done) = match counter.split_once('-') {
                Some((l, d)) => (l, Some(d)),
                None => (counter, None),
            };
            if !stem.is_empty() && digits(left) && done.is_none_or(digits) {
                return Some(EntryName {
                    stem: stem.to_string(),
                    tries_left: left.parse().ok(),
                    tries_done: done.and_then(|d| d.parse().ok()),
                });
            }
        }
        Some(EntryName {
            stem: base.to_string(),
            tries_left: None,
            tries_done: None,
        })
    }

    pub fn file_name(&self) -> String {
        match (self.tries_left, self.tries_done) {
            (Some(l), Some(d)) => format!("{}+{l}-{d}.conf", self.stem),
            (Some(l), None) => format!("{}+{l}.conf", self.stem),
            _ => format!("{}.conf", self.stem),
        }
    }

    /// Blessed (no counter): chosen like any entry, never counted down.
    pub fn is_blessed(&self) -> bool {
        self.tries_left.is_none()
    }

    /// Tries exhausted: systemd-boot sorts it last ("bad").
    pub fn is_bad(&self) -> bool {
        self.tries_left == Some(0)
    }
}

/// The file name of a new entry for `version`, with `tries` boot tries:
/// `cairn-<version>+<tries>.conf` (the same sanitising as `cairn build`).
pub fn new_entry_name(version: &str, tries: u32) -> String {
    cairn_disk::entry_file_name(version, Some(tries))
}

/// One entry found on the ESP.
#[derive(Debug, Clone)]
pub struct EntryFile {
    pub path: PathBuf,
    pub name: EntryName,
    pub text: String,
}

impl EntryFile {
    /// The value of a key (`options`, `version`, `linux`, ...); `options`
    /// lines are joined with spaces as the specification says.
    pub fn get(&self, key: &str) -> Option<String> {
        let vals: Vec<&str> = self
            .text
            .lines()
            .filter_map(|l| {
                let l = l.trim_start();
                let (k, v) = l.split_once(|c: char| c.is_ascii_whitespace())?;
                (k == key).then_some(v.trim())
            })
            .collect();
        if vals.is_empty() {
            None
        } else if key == "options" {
            Some(vals.join(" "))
        } else {
            vals.last().map(|s| s.to_string())
        }
    }

    /// The slot its `options` boot.
    pub fn slot(&self) -> Option<Slot> {
        self.get("options").and_then(|o| slot_from_cmdline(&o))
    }

    pub fn file_name(&self) -> String {
        self.name.file_name()
    }
}

/// Every `*.conf` entry under `ESP/loader/entries`, sorted by file name.
pub fn list(esp: &Path) -> Result<Vec<EntryFile>> {
    let dir = esp.join(ENTRIES_DIR);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(UpdateError::Io {
                path: dir,
                source: e,
            })
        }
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(UpdateError::io(&dir))?;
        let fname = e.file_name().to_string_lossy().into_owned();
        let Some(name) = EntryName::parse(&fname) else {
            continue;
        };
        let path = e.path();
        if !path.is_file() {
            continue;
        }
        let text = fs::read_to_string(&path).map_err(UpdateError::io(&path))?;
        out.push(EntryFile { path, name, text });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The entries that boot `slot`.
pub fn for_slot(esp: &Path, slot: Slot) -> Result<Vec<EntryFile>> {
    Ok(list(esp)?
        .into_iter()
        .filter(|e| e.slot() == Some(slot))
        .collect())
}

/// Removes every entry that boots `slot` (durably: the directory is
/// fsynced). Returns what was removed. Entries of the other slot are never
/// touched.
pub fn remove_slot_entries(esp: &Path, slot: Slot) -> Result<Vec<EntryFile>> {
    let gone = for_slot(esp, slot)?;
    for e in &gone {
        fs::remove_file(&e.path).map_err(UpdateError::io(&e.path))?;
    }
    if !gone.is_empty() {
        fsync_dir(&esp.join(ENTRIES_DIR))?;
    }
    Ok(gone)
}

/// Writes `ESP/loader/entries/<file_name>`: a temp file that systemd-boot
/// ignores (not `*.conf`), fsync, rename, fsync of the directory.
pub fn write_entry(esp: &Path, file_name: &str, text: &str) -> Result<PathBuf> {
    let dir = esp.join(ENTRIES_DIR);
    fs::create_dir_all(&dir).map_err(UpdateError::io(&dir))?;
    let path = dir.join(file_name);
    crate::fsutil::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// The options of a new slot's entry: the running entry's `options` with
/// `cairn.slot=` set to `slot` ([`options_for_slot`]), every
/// `cairn.verity=` of the running slot removed, and the new image's own
/// right after `cairn.slot=` when it has a hash tree.
pub fn options_for_image(options: &str, slot: Slot, verity: Option<&Verity>) -> String {
    let prefix = format!("{}=", cairn_formats::cmdline::VERITY);
    let kept: Vec<&str> = options
        .split_whitespace()
        .filter(|w| !w.starts_with(&prefix))
        .collect();
    let with_slot = options_for_slot(&kept.join(" "), slot);
    let Some(v) = verity else {
        return with_slot;
    };
    let mut words: Vec<String> = with_slot.split_whitespace().map(str::to_string).collect();
    let at = words
        .iter()
        .rposition(|w| w.starts_with("cairn.slot="))
        .map_or(0, |i| i + 1);
    words.insert(at, v.to_cmdline_word());
    words.join(" ")
}

/// `options` with `cairn.slot=` set to `slot` (replacing every
/// occurrence in place, or appended when there is none).
pub fn options_for_slot(options: &str, slot: Slot) -> String {
    let mut seen = false;
    let mut words: Vec<String> = options
        .split_whitespace()
        .map(|w| {
            if w.starts_with("cairn.slot=") {
                seen = true;
                format!("cairn.slot={}", slot.letter())
            } else {
                w.to_string()
            }
        })
        .collect();
    if !seen {
        words.insert(0, format!("cairn.slot={}", slot.letter()));
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_counters() {
        let cases = [
            ("cairn-2+3.conf", Some(("cairn-2", Some(3), None))),
            ("cairn-2+2-1.conf", Some(("cairn-2", Some(2), Some(1)))),
            ("cairn-2+0-3.conf", Some(("cairn-2", Some(0), Some(3)))),
            ("cairn-2.conf", Some(("cairn-2", None, None))),
            (
                "cairn-1.0~rc1+3.conf",
                Some(("cairn-1.0~rc1", Some(3), None)),
            ),
            // not counters: the '+' stays in the id
            ("cairn-2+x.conf", Some(("cairn-2+x", None, None))),
            ("cairn-2+3-.conf", Some(("cairn-2+3-", None, None))),
            ("+3.conf", Some(("+3", None, None))),
            ("cairn-2+3.conf.tmp", None),
            (".cairn-2+3.conf.tmp", None),
            ("loader.conf.x", None),
        ];
        for (f, want) in cases {
            let got = EntryName::parse(f);
            let got = got
                .as_ref()
                .map(|n| (n.stem.as_str(), n.tries_left, n.tries_done));
            assert_eq!(got, want, "{f}");
            if let Some(n) = EntryName::parse(f) {
                assert_eq!(n.file_name(), f, "round trip of {f}");
            }
        }
        assert_eq!(new_entry_name("2", 3), "cairn-2+3.conf");
        assert_eq!(new_entry_name("2.1~rc1", 3), "cairn-2.1~rc1+3.conf");
        // a version with '+' cannot be misread as a counter
        assert_eq!(new_entry_name("2+3", 3), "cairn-2_3+3.conf");
        assert!(EntryName::parse("cairn-2.conf").unwrap().is_blessed());
        assert!(EntryName::parse("cairn-2+0-3.conf").unwrap().is_bad());
        assert!(!EntryName::parse("cairn-2+1-2.conf").unwrap().is_bad());
    }

    #[test]
    fn options_swap() {
        assert_eq!(
            options_for_slot(
                "cairn.slot=a console=tty0 console=ttyS0,115200 panic=10",
                Slot::B
            ),
            "cairn.slot=b console=tty0 console=ttyS0,115200 panic=10"
        );
        assert_eq!(options_for_slot("quiet", Slot::A), "cairn.slot=a quiet");
        assert_eq!(
            options_for_slot("cairn.slot=a x cairn.slot=a", Slot::B),
            "cairn.slot=b x cairn.slot=b"
        );
    }

    #[test]
    fn options_carry_the_new_images_root_hash_only() {
        let v = Verity {
            root_hash: [0xab; 32],
            salt: [1; 32],
            data_blocks: 9,
        };
        let word = v.to_cmdline_word();
        let old = format!("cairn.verity={}:{}:5", "cd".repeat(32), "02".repeat(32));
        let running = format!("cairn.slot=a {old} console=ttyS0 quiet");
        assert_eq!(
            options_for_image(&running, Slot::B, Some(&v)),
            format!("cairn.slot=b {word} console=ttyS0 quiet")
        );
        // an image without a tree: the running slot's hash must not stay
        assert_eq!(
            options_for_image(&running, Slot::B, None),
            "cairn.slot=b console=ttyS0 quiet"
        );
        // no verity before (an older image): added after cairn.slot=
        assert_eq!(
            options_for_image("console=ttyS0 cairn.slot=a", Slot::B, Some(&v)),
            format!("console=ttyS0 cairn.slot=b {word}")
        );
        assert_eq!(
            options_for_image("quiet", Slot::A, Some(&v)),
            format!("cairn.slot=a {word} quiet")
        );
    }

    #[test]
    fn listing_removing_writing() {
        let t = tempfile::tempdir().unwrap();
        let esp = t.path();
        let d = esp.join(ENTRIES_DIR);
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("cairn-1.conf"),
            "title x\nversion 1\noptions cairn.slot=a quiet\n",
        )
        .unwrap();
        fs::write(
            d.join("cairn-0.9+0-3.conf"),
            "version 0.9\noptions  cairn.slot=b\n",
        )
        .unwrap();
        fs::write(d.join("other.conf"), "title other\nlinux /x\n").unwrap();
        fs::write(d.join("notes.txt"), "options cairn.slot=b\n").unwrap();
        let all = list(esp).unwrap();
        assert_eq!(all.len(), 3);
        let a = for_slot(esp, Slot::A).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].get("options").unwrap(), "cairn.slot=a quiet");
        assert_eq!(a[0].get("version").unwrap(), "1");
        let gone = remove_slot_entries(esp, Slot::B).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].file_name(), "cairn-0.9+0-3.conf");
        assert!(d.join("cairn-1.conf").exists());
        assert!(d.join("other.conf").exists());
        assert!(d.join("notes.txt").exists());
        write_entry(esp, "cairn-2+3.conf", "version 2\noptions cairn.slot=b\n").unwrap();
        assert_eq!(for_slot(esp, Slot::B).unwrap()[0].name.tries_left, Some(3));
        assert!(!fs::read_dir(&d).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }
}
