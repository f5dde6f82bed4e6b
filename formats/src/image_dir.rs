//! The image folder `cairn build -o OUT` writes and `cairn serve`,
//! `cairn vm`, `cairn inspect` and the update tools read.

use std::path::{Path, PathBuf};

/// The root image (squashfs, zstd), also what a slot partition holds.
pub const ROOTFS: &str = "rootfs.squashfs";
/// The kernel.
pub const KERNEL: &str = "vmlinuz";
/// The initramfs (`/init`, modules, mke2fs).
pub const INITRD: &str = "initrd.img";
/// The initramfs followed by the root image, for network boot
/// (`cairn.root=ram`); `/init` finds the image as `/rootfs.squashfs`.
pub const PXE_INITRD: &str = "pxe-initrd.img";
/// The GPT disk image (ESP, slots, state).
pub const DISK: &str = "disk.raw";
/// What was built: packages, artifacts with their hashes.
pub const MANIFEST: &str = "manifest.json";
/// iPXE's network-boot programs taken from the definition's `ipxe` package.
pub const IPXE_DIR: &str = "ipxe";
/// The signed update bundle, when the build was signed.
pub const UPDATE_DIR: &str = "update";

/// The path of the root image inside `pxe-initrd.img`'s root.
pub const RAM_ROOT_IMAGE: &str = ROOTFS;

/// One artifact in `manifest.json`.
#[cfg(feature = "serde")]
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Artifact {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

/// One package in `manifest.json`.
#[cfg(feature = "serde")]
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ManifestPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
}

/// `manifest.json`: what an image folder holds and what it was made from.
/// Written by `cairn build`, read by `cairn serve` (name and version name
/// the image in URLs), `cairn inspect` and the tests.
#[cfg(feature = "serde")]
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub suite: String,
    pub source_date_epoch: u64,
    pub builder: String,
    /// SHA-256 over everything the build read (definition, lock, overlay,
    /// options) and the builder's own sources: equal inputs mean the
    /// output is current.
    pub inputs: String,
    /// `uname -r` of the image's kernel.
    pub kernel_release: String,
    pub packages: Vec<ManifestPackage>,
    pub artifacts: Vec<Artifact>,
}

#[cfg(feature = "serde")]
impl Manifest {
    /// A manifest that names an image and nothing else (test fixtures,
    /// hand-made image folders).
    pub fn named(name: &str, version: &str) -> Manifest {
        Manifest {
            name: name.to_owned(),
            version: version.to_owned(),
            suite: String::new(),
            source_date_epoch: 0,
            builder: String::new(),
            inputs: String::new(),
            kernel_release: String::new(),
            packages: Vec::new(),
            artifacts: Vec::new(),
        }
    }
}

/// An image folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDir(PathBuf);

impl ImageDir {
    pub fn new(dir: impl Into<PathBuf>) -> ImageDir {
        ImageDir(dir.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn rootfs(&self) -> PathBuf {
        self.0.join(ROOTFS)
    }

    pub fn kernel(&self) -> PathBuf {
        self.0.join(KERNEL)
    }

    pub fn initrd(&self) -> PathBuf {
        self.0.join(INITRD)
    }

    pub fn pxe_initrd(&self) -> PathBuf {
        self.0.join(PXE_INITRD)
    }

    pub fn disk(&self) -> PathBuf {
        self.0.join(DISK)
    }

    pub fn manifest(&self) -> PathBuf {
        self.0.join(MANIFEST)
    }

    pub fn ipxe_dir(&self) -> PathBuf {
        self.0.join(IPXE_DIR)
    }

    pub fn update_dir(&self) -> PathBuf {
        self.0.join(UPDATE_DIR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let d = ImageDir::new("out/default");
        assert_eq!(d.disk(), Path::new("out/default/disk.raw"));
        assert_eq!(d.pxe_initrd(), Path::new("out/default/pxe-initrd.img"));
        assert_eq!(d.ipxe_dir(), Path::new("out/default/ipxe"));
        assert_eq!(d.path(), Path::new("out/default"));
    }
}
