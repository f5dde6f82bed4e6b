//! `disk_formats` is the output step of `cairn build --format
//! raw,qcow2,vmdk,ova,vagrant-libvirt`: which disk images the output folder
//! holds beside `disk.raw`, and making them from it with `cairn-disk`
//! (`qcow2::write`, `vmdk::write`, `ova::write`, `vagrant::write`), each
//! written aside and renamed into place. The formats are a function of
//! `disk.raw` (and, for the OVA and the Vagrant box, of the image's name,
//! version and SOURCE_DATE_EPOCH), so a folder that is otherwise current
//! gets the missing ones made and the ones no longer asked for removed,
//! without a rebuild.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_formats::image_dir::{self, DiskFormat};
use indicatif::MultiProgress;

use crate::pipeline::{sha256_and_size, Artifact};
use crate::progress::{finish, spinner};

/// `--format LIST`: the disk image formats of the output folder, in
/// [`DiskFormat::ALL`]'s order; `raw` is always among them (the others
/// are made from it, and `cairn vm` and `cairn inspect` read it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formats(Vec<DiskFormat>);

impl Formats {
    /// These formats and `raw`.
    pub fn new(formats: impl IntoIterator<Item = DiskFormat>) -> Formats {
        let mut v: Vec<DiskFormat> = formats.into_iter().collect();
        v.push(DiskFormat::Raw);
        v.sort();
        v.dedup();
        Formats(v)
    }

    /// A comma-separated list of format names (`qcow2,ova`); an unknown or
    /// empty name is an error listing the valid ones.
    pub fn parse(list: &str) -> Result<Formats, String> {
        let mut v = Vec::new();
        for name in list.split(',') {
            if name.trim().is_empty() {
                return Err(format!(
                    "{list:?}: an empty format name: expected a comma-separated list of {}",
                    names()
                ));
            }
            v.push(name.parse::<DiskFormat>().map_err(|e| e.to_string())?);
        }
        Ok(Formats::new(v))
    }

    pub fn contains(&self, f: DiskFormat) -> bool {
        self.0.contains(&f)
    }

    pub fn iter(&self) -> impl Iterator<Item = DiskFormat> + '_ {
        self.0.iter().copied()
    }
}

impl Default for Formats {
    /// `raw` only.
    fn default() -> Self {
        Formats::new([])
    }
}

impl fmt::Display for Formats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|d| d.name()).collect();
        f.write_str(&names.join(","))
    }
}

fn names() -> String {
    let v: Vec<&str> = DiskFormat::ALL.iter().map(|d| d.name()).collect();
    v.join(", ")
}

/// What the OVA's descriptor and the archives' members need from the image.
#[derive(Debug, Clone)]
pub struct Appliance<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// SOURCE_DATE_EPOCH: the members' mtime (OVA, Vagrant box).
    pub mtime: u64,
}

/// What [`write`] left in the folder.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// The manifest entries of the formats beside `disk.raw`, in
    /// [`DiskFormat::ALL`]'s order.
    pub artifacts: Vec<Artifact>,
    /// The files made by this call (the others were there and intact).
    pub made: Vec<String>,
}

/// Makes, from `OUT/disk.raw`, every format of `formats` but raw that
/// `have` (manifest entries of an earlier build of the same `disk.raw`)
/// does not list with a file of that size and SHA-256, and removes the
/// format files not asked for. Each file is written into `OUT/.formats/`
/// and renamed into place, so a failed or interrupted build leaves no
/// partial file under a real name.
pub fn write(
    out: &Path,
    formats: &Formats,
    have: &[Artifact],
    appliance: &Appliance<'_>,
    progress: &MultiProgress,
) -> Result<Written> {
    let staging = out.join(".formats");
    remove_dir(&staging)?;
    let result = write_staged(out, &staging, formats, have, appliance, progress);
    let cleanup = remove_dir(&staging);
    let written = result?;
    cleanup?;
    for f in DiskFormat::ALL {
        if f != DiskFormat::Raw && !formats.contains(f) && remove_file(&out.join(f.file_name()))? {
            tracing::info!(
                file = f.file_name(),
                "removed: --format does not ask for it"
            );
        }
    }
    Ok(written)
}

fn write_staged(
    out: &Path,
    staging: &Path,
    formats: &Formats,
    have: &[Artifact],
    appliance: &Appliance<'_>,
    progress: &MultiProgress,
) -> Result<Written> {
    std::fs::create_dir(staging).with_context(|| format!("creating {}", staging.display()))?;
    let raw = out.join(image_dir::DISK);
    let mut written = Written::default();
    // An OVA without `vmdk` asked for packs a VMDK made here for it; a
    // Vagrant box without `qcow2` a qcow2 image.
    let mut vmdk_for_ova: Option<PathBuf> = None;
    let mut qcow2_for_box: Option<PathBuf> = None;
    for f in formats.iter().filter(|&f| f != DiskFormat::Raw) {
        let name = f.file_name();
        let dest = out.join(name);
        if let Some(a) = have.iter().find(|a| a.name == name) {
            if intact(&dest, a) {
                tracing::info!(file = name, "kept: made from this disk.raw");
                written.artifacts.push(a.clone());
                continue;
            }
        }
        let staged = staging.join(name);
        let sp = spinner(
            progress,
            f.name(),
            &format!("{} -> {name}", image_dir::DISK),
        );
        match f {
            DiskFormat::Raw => unreachable!("filtered out above"),
            DiskFormat::Qcow2 => {
                cairn_disk::qcow2::write(&raw, &staged, &Default::default())
                    .with_context(|| format!("writing {}", dest.display()))?;
            }
            DiskFormat::Vmdk => {
                cairn_disk::vmdk::write(&raw, &staged)
                    .with_context(|| format!("writing {}", dest.display()))?;
            }
            DiskFormat::Ova => {
                let vmdk = if formats.contains(DiskFormat::Vmdk) {
                    out.join(image_dir::DISK_VMDK)
                } else {
                    // named as in the appliance: the descriptor says so
                    let dir = staging.join("vmdk");
                    std::fs::create_dir(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    let p = dir.join(image_dir::DISK_VMDK);
                    cairn_disk::vmdk::write(&raw, &p)
                        .with_context(|| format!("writing the VMDK for {}", dest.display()))?;
                    vmdk_for_ova = Some(p.clone());
                    p
                };
                let machine = cairn_disk::ova::Machine::new(appliance.name, appliance.version);
                cairn_disk::ova::write(&vmdk, &staged, &machine, appliance.mtime)
                    .with_context(|| format!("writing {}", dest.display()))?;
            }
            DiskFormat::VagrantLibvirt => {
                // `qcow2` comes first in the order: made or kept above
                let qcow2 = if formats.contains(DiskFormat::Qcow2) {
                    out.join(image_dir::DISK_QCOW2)
                } else {
                    let dir = staging.join("qcow2");
                    std::fs::create_dir(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    let p = dir.join(image_dir::DISK_QCOW2);
                    cairn_disk::qcow2::write(&raw, &p, &Default::default()).with_context(|| {
                        format!("writing the qcow2 image for {}", dest.display())
                    })?;
                    qcow2_for_box = Some(p.clone());
                    p
                };
                cairn_disk::vagrant::write(&qcow2, &staged, appliance.mtime)
                    .with_context(|| format!("writing {}", dest.display()))?;
            }
        }
        std::fs::rename(&staged, &dest)
            .with_context(|| format!("moving {} to {}", staged.display(), dest.display()))?;
        let a = sha256_and_size(&dest)?;
        finish(
            progress,
            &sp,
            Some(format!("{name}, {:.1} MiB", a.size as f64 / 1048576.0)),
        );
        tracing::info!(file = name, size = a.size, "wrote");
        written.made.push(name.to_owned());
        written.artifacts.push(a);
    }
    for p in [vmdk_for_ova, qcow2_for_box].into_iter().flatten() {
        remove_file(&p)?;
    }
    Ok(written)
}

/// The file is there with the size and SHA-256 its manifest entry gives.
fn intact(path: &Path, a: &Artifact) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() == a.size)
        && crate::fetch::sha256_file(path).is_ok_and(|h| h == a.sha256)
}

/// Removes `p` if it is there; true if it was.
fn remove_file(p: &Path) -> Result<bool> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

fn remove_dir(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_in_order_with_raw_always_there() {
        let f = Formats::parse("ova,qcow2").unwrap();
        assert_eq!(f.to_string(), "raw,qcow2,ova");
        assert!(f.contains(DiskFormat::Raw) && !f.contains(DiskFormat::Vmdk));
        assert_eq!(Formats::parse("raw").unwrap(), Formats::default());
        assert_eq!(
            Formats::parse("vmdk, VMDK,raw").unwrap().to_string(),
            "raw,vmdk"
        );
        assert_eq!(Formats::default().to_string(), "raw");
        assert_eq!(
            Formats::parse("vagrant-libvirt,qcow2").unwrap().to_string(),
            "raw,qcow2,vagrant-libvirt"
        );
    }

    #[test]
    fn bad_names_are_refused_with_the_valid_ones() {
        let e = Formats::parse("qcow2,vdi").unwrap_err();
        assert_eq!(
            e,
            "unknown disk format \"vdi\": expected raw, qcow2, vmdk, ova or vagrant-libvirt"
        );
        let e = Formats::parse("qcow2,").unwrap_err();
        assert!(
            e.contains("empty format name") && e.contains("raw, qcow2, vmdk, ova, vagrant-libvirt"),
            "{e}"
        );
        assert!(Formats::parse("").is_err());
    }
}
