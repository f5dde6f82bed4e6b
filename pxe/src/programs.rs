//! The iPXE programs at the TFTP root (`undionly.kpxe`, `ipxe.efi`, ...): resolved once at start and on
//! every reload, first from the `ipxe/` folder of each profile's image (written and hashed by `cairn
//! build`), then from the operator's `--ipxe-dir`.
//!
//! Trust: names from the network are only ever compared with [`IPXE_FILES`]; they never become paths.
//! The operator's `--ipxe-dir` is trusted: its entries are canonicalised here, so Debian's
//! `/usr/lib/ipxe/ipxe.efi -> /boot/ipxe.efi` works. An image folder is held to the asset rule: a file
//! of its `ipxe/` that resolves outside that folder is skipped (logged), as `assets/` refuses it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::assets::{self, AssetError};
use crate::inventory::Inventory;

/// The iPXE binaries served at the TFTP root when an image folder or the iPXE directory has them.
pub const IPXE_FILES: [&str; 4] = ["undionly.kpxe", "undionly.kkpxe", "ipxe.efi", "snponly.efi"];

/// Where a program comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The `ipxe/` folder of this image (key `NAME-VERSION`).
    Image(String),
    /// The operator's iPXE directory (`--ipxe-dir`).
    IpxeDir,
}

/// One resolved program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Canonical path of the file (no symlinks left).
    pub path: PathBuf,
    /// Where it was found.
    pub source: Source,
}

/// The programs on offer, by TFTP name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Programs {
    files: BTreeMap<&'static str, Program>,
}

/// A regular file at `path` (following symlinks): its canonical path.
fn regular(path: &Path) -> Option<PathBuf> {
    let c = path.canonicalize().ok()?;
    std::fs::metadata(&c).ok()?.is_file().then_some(c)
}

impl Programs {
    /// Resolves every name of [`IPXE_FILES`]: the image folders of the inventory's profiles in profile
    /// order, then `ipxe_dir` (canonical or not; None: no such directory).
    pub fn resolve(inv: &Inventory, ipxe_dir: Option<&Path>) -> Programs {
        let mut files = BTreeMap::new();
        let mut image_keys: Vec<&str> = Vec::new();
        for p in &inv.profiles {
            if !image_keys.contains(&p.image.as_str()) {
                image_keys.push(&p.image);
            }
        }
        for name in IPXE_FILES {
            let from_image = image_keys.iter().find_map(|key| {
                let img = inv.images.get(*key)?;
                let dir = img.dir.join("ipxe");
                // The folder itself must be a real directory of the image folder, not a link out.
                if dir.canonicalize().ok()? != dir {
                    tracing::warn!(
                        "{}: not a directory inside the image folder; its iPXE programs are not served",
                        dir.display()
                    );
                    return None;
                }
                match assets::resolve_in(&dir, name) {
                    Ok(path) => Some(Program {
                        path,
                        source: Source::Image((*key).to_string()),
                    }),
                    Err(AssetError::Refused(m)) => {
                        tracing::warn!("{}: {m}; not served", dir.join(name).display());
                        None
                    }
                    Err(AssetError::NotFound(_)) => None,
                }
            });
            let found = from_image.or_else(|| {
                regular(&ipxe_dir?.join(name)).map(|path| Program {
                    path,
                    source: Source::IpxeDir,
                })
            });
            if let Some(p) = found {
                files.insert(name, p);
            }
        }
        Programs { files }
    }

    /// The program served as `name`, if any (`name` must be one of [`IPXE_FILES`]).
    pub fn get(&self, name: &str) -> Option<&Program> {
        self.files.get(name)
    }

    /// Opens the program `name` without blocking on odd files and without following a link that
    /// appeared since it was resolved.
    pub fn open(&self, name: &str) -> Result<File, AssetError> {
        let p = self
            .get(name)
            .ok_or_else(|| AssetError::NotFound(format!("no iPXE program {name:?}")))?;
        assets::open_regular(&p.path).map_err(|e| match e {
            AssetError::NotFound(m) => AssetError::NotFound(format!("{name}: {m}")),
            other => other,
        })
    }

    /// `name (source)` of each program, for the start-up log.
    pub fn describe(&self) -> String {
        if self.files.is_empty() {
            return "none".to_string();
        }
        self.files
            .iter()
            .map(|(n, p)| match &p.source {
                Source::Image(k) => format!("{n} (image {k})"),
                Source::IpxeDir => format!("{n} ({})", p.path.display()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
