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
