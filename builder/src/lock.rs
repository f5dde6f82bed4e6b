//! The lock file (`images/NAME.lock`): the exact package set a definition
//! resolved to, reused by every later build until `--update-lock`, so that
//! builds repeat byte for byte and package changes show up in review.
//!
//! Owns the format, reading and writing it, and deciding whether a lock
//! still matches its definition.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::definition::Definition;

/// Bumped when the format changes incompatibly.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Lock format version.
    pub format: u32,
    /// Debian suite the packages came from.
    pub suite: String,
    /// What was asked for, sorted: the definition's packages, its kernel and
    /// `exclude` entries as `!name`. A lock whose `requested` differs from
    /// the definition is stale.
    pub requested: Vec<String>,
    /// SOURCE_DATE_EPOCH for builds from this lock: the `Date` of the newest
    /// `InRelease` it was resolved from.
    pub source_date_epoch: u64,
    pub packages: Vec<LockedPackage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Which archive it comes from: `main` (the suite), `updates` or `security`.
    pub archive: String,
    /// Path below the archive's base URL.
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}; delete it or run with --update-lock")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
    #[error(
        "{path}: lock format {found} is not supported (expected {FORMAT}); run with --update-lock"
    )]
    Format { path: String, found: u32 },
    #[error("{path} is stale: {what}; run with --update-lock to re-resolve")]
    Stale { path: String, what: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// What a definition asks the resolver for, in the lock's `requested` form.
pub fn requested(def: &Definition) -> Vec<String> {
    let mut r: Vec<String> = def
        .packages
        .iter()
        .cloned()
        .chain(std::iter::once(def.kernel.clone()))
        .chain(def.exclude.iter().map(|e| format!("!{e}")))
        .collect();
    r.sort();
    r.dedup();
    r
}

impl Lock {
    pub fn read(path: &Path) -> Result<Lock, LockError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Read {
            path: p.clone(),
            source,
        })?;
        let lock: Lock = serde_norway::from_str(&text).map_err(|e| LockError::Parse {
            path: p.clone(),
            line: e.location().map_or(1, |l| l.line()),
            message: e.to_string(),
        })?;
        if lock.format != FORMAT {
            return Err(LockError::Format {
                path: p,
                found: lock.format,
            });
        }
        Ok(lock)
    }

    /// Check that this lock was made for `def`; say what changed otherwise.
    pub fn check_matches(&self, path: &Path, def: &Definition) -> Result<(), LockError> {
        let stale = |what: String| LockError::Stale {
            path: path.display().to_string(),
            what,
        };
        if self.suite != def.suite {
            return Err(stale(format!(
                "it was resolved for suite {} but the definition says {}",
                self.suite, def.suite
            )));
        }
        let want = requested(def);
        if self.requested != want {
            let added: Vec<_> = want
                .iter()
                .filter(|w| !self.requested.contains(w))
                .collect();
            let removed: Vec<_> = self
                .requested
                .iter()
                .filter(|w| !want.contains(w))
                .collect();
            let mut what =
                String::from("the definition's package list changed since it was written");
            if !added.is_empty() {
                what += &format!(
                    " (added: {})",
                    added
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if !removed.is_empty() {
                what += &format!(
                    " (removed: {})",
                    removed
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            return Err(stale(what));
        }
        Ok(())
    }

    /// Write atomically (temp file + rename), with a header comment.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let p = path.display().to_string();
        let body = serde_norway::to_string(self).expect("lock serialises");
        let text = format!(
            "# cairn lock file: the exact packages this image is built from.\n\
             # Written by `cairn build`; re-resolve with `cairn build --update-lock`.\n{body}"
        );
        let tmp = path.with_extension("lock.tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|source| LockError::Write { path: p, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(pkgs: &[&str]) -> Definition {
        let mut text = String::from(
            "name: t\nversion: 1\nsuite: bookworm\nkernel: linux-image-amd64\npackages:\n",
        );
        for p in pkgs {
            text += &format!("  - {p}\n");
        }
        crate::definition::parse("t.yaml", &text).unwrap()
    }

    fn lock_for(d: &Definition) -> Lock {
        Lock {
            format: FORMAT,
            suite: "bookworm".into(),
            requested: requested(d),
            source_date_epoch: 1_700_000_000,
            packages: vec![LockedPackage {
                name: "bash".into(),
                version: "5.2.15-2+b7".into(),
                architecture: "amd64".into(),
                archive: "main".into(),
                filename: "pool/main/b/bash/bash_5.2.15-2+b7_amd64.deb".into(),
                size: 1,
                sha256: "00".repeat(32),
            }],
        }
    }

    #[test]
    fn round_trip_and_match() {
        let d = def(&["systemd", "bash"]);
        let l = lock_for(&d);
        assert_eq!(l.requested, ["bash", "linux-image-amd64", "systemd"]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.lock");
        l.write(&p).unwrap();
        let back = Lock::read(&p).unwrap();
        assert_eq!(back, l);
        back.check_matches(&p, &d).unwrap();
    }

    #[test]
    fn stale_lock_says_what_changed() {
        let l = lock_for(&def(&["systemd", "bash"]));
        let e = l
            .check_matches(Path::new("images/t.lock"), &def(&["systemd", "sudo"]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("images/t.lock is stale"), "{e}");
        assert!(
            e.contains("added: sudo") && e.contains("removed: bash"),
            "{e}"
        );
        assert!(e.contains("--update-lock"), "{e}");
    }

    #[test]
    fn damaged_lock_names_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.lock");
        std::fs::write(&p, "format: 1\nsuite: bookworm\nrequested: []\nsource_date_epoch: 1\npackages:\n  - name: x\n    colour: red\n").unwrap();
        let e = Lock::read(&p).unwrap_err().to_string();
        assert!(e.contains("t.lock:6") || e.contains("t.lock:7"), "{e}");
        assert!(e.contains("unknown field `colour`"), "{e}");
    }
}
