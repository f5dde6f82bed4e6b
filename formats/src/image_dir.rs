//! The image folder `cairn build -o OUT` writes and `cairn serve`,
//! `cairn vm`, `cairn inspect` and the update tools read, and the disk
//! image formats `cairn build --format` can add to it ([`DiskFormat`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

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
/// `disk.raw` as a compressed qcow2 image (`--format qcow2`).
pub const DISK_QCOW2: &str = "disk.qcow2";
/// `disk.raw` as a streamOptimized VMDK (`--format vmdk`).
pub const DISK_VMDK: &str = "disk.vmdk";
/// An OVF appliance around `disk.vmdk` (`--format ova`): a tar of
/// [`OVA_DESCRIPTOR`], its manifest and the VMDK.
pub const OVA: &str = "disk.ova";
/// The OVF descriptor inside [`OVA`]; the VMDK inside is [`DISK_VMDK`].
pub const OVA_DESCRIPTOR: &str = "disk.ovf";
/// The manifest (SHA-256 of the descriptor and the VMDK) inside [`OVA`].
pub const OVA_MANIFEST: &str = "disk.mf";
/// A Vagrant box for the libvirt provider (`--format vagrant-libvirt`): a
/// tar of [`VAGRANT_METADATA`], [`VAGRANTFILE`] and [`VAGRANT_BOX_IMAGE`].
pub const VAGRANT_BOX: &str = "disk.box";
/// The box's `metadata.json` (provider, format, virtual size in GiB).
pub const VAGRANT_METADATA: &str = "metadata.json";
/// The box's `Vagrantfile`: the settings a cairn machine needs.
pub const VAGRANTFILE: &str = "Vagrantfile";
/// The disk inside [`VAGRANT_BOX`]: `disk.raw` as qcow2 (the bytes of
/// [`DISK_QCOW2`]).
pub const VAGRANT_BOX_IMAGE: &str = "box.img";
/// What was built: packages, artifacts with their hashes.
pub const MANIFEST: &str = "manifest.json";
/// iPXE's network-boot programs taken from the definition's `ipxe` package.
pub const IPXE_DIR: &str = "ipxe";
/// The signed update bundle, when the build was signed.
pub const UPDATE_DIR: &str = "update";

/// The path of the root image inside `pxe-initrd.img`'s root.
pub const RAM_ROOT_IMAGE: &str = ROOTFS;

/// A format of the machine's disk image in the folder. `Raw` is always
/// there (the others are made from it, `cairn vm` and `cairn inspect` read
/// it); the others when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiskFormat {
    /// [`DISK`]: GPT, sparse.
    Raw,
    /// [`DISK_QCOW2`]: KVM, OpenStack, libvirt.
    Qcow2,
    /// [`DISK_VMDK`]: VMware (ESXi, Workstation, Fusion), VirtualBox.
    Vmdk,
    /// [`OVA`]: an importable appliance for VMware and VirtualBox.
    Ova,
    /// [`VAGRANT_BOX`]: a box for Vagrant's libvirt provider.
    VagrantLibvirt,
}

impl DiskFormat {
    /// Every format, in the order the folder's manifest lists them.
    pub const ALL: [DiskFormat; 5] = [
        DiskFormat::Raw,
        DiskFormat::Qcow2,
        DiskFormat::Vmdk,
        DiskFormat::Ova,
        DiskFormat::VagrantLibvirt,
    ];

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Ova => "ova",
            DiskFormat::VagrantLibvirt => "vagrant-libvirt",
        }
    }

    /// Its file in the image folder.
    pub fn file_name(self) -> &'static str {
        match self {
            DiskFormat::Raw => DISK,
            DiskFormat::Qcow2 => DISK_QCOW2,
            DiskFormat::Vmdk => DISK_VMDK,
            DiskFormat::Ova => OVA,
            DiskFormat::VagrantLibvirt => VAGRANT_BOX,
        }
    }

    /// The format whose file this is.
    pub fn of_file(name: &str) -> Option<DiskFormat> {
        DiskFormat::ALL.into_iter().find(|f| f.file_name() == name)
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no [`DiskFormat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDiskFormat(pub String);

impl fmt::Display for UnknownDiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown disk format {:?}: expected ", self.0)?;
        for (i, d) in DiskFormat::ALL.iter().enumerate() {
            let sep = match i {
                0 => "",
                i if i + 1 == DiskFormat::ALL.len() => " or ",
                _ => ", ",
            };
            write!(f, "{sep}{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownDiskFormat {}

impl FromStr for DiskFormat {
    type Err = UnknownDiskFormat;

    /// The name `--format` takes, in any case.
    fn from_str(s: &str) -> Result<DiskFormat, UnknownDiskFormat> {
        DiskFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownDiskFormat(s.to_owned()))
    }
}

/// `manifest.json`'s `verity`.
#[cfg(feature = "serde")]
pub use crate::verity::VerityRecord;

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
    /// The dm-verity tree appended to `rootfs.squashfs` (absent when the
    /// definition says `verity: false`, and in manifests of older builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<VerityRecord>,
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
            verity: None,
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

    /// The disk image in `format` (`disk.raw`, `disk.qcow2`, ...).
    pub fn disk_as(&self, format: DiskFormat) -> PathBuf {
        self.0.join(format.file_name())
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
        assert_eq!(
            d.disk_as(DiskFormat::Ova),
            Path::new("out/default/disk.ova")
        );
        assert_eq!(d.disk_as(DiskFormat::Raw), d.disk());
    }

    #[test]
    fn disk_formats_parse_by_name_and_name_their_files() {
        for f in DiskFormat::ALL {
            assert_eq!(f.name().parse::<DiskFormat>(), Ok(f));
            assert_eq!(DiskFormat::of_file(f.file_name()), Some(f));
        }
        assert_eq!(" QCOW2 ".parse::<DiskFormat>(), Ok(DiskFormat::Qcow2));
        assert_eq!(DiskFormat::of_file("rootfs.squashfs"), None);
        assert_eq!(
            "Vagrant-Libvirt".parse::<DiskFormat>(),
            Ok(DiskFormat::VagrantLibvirt)
        );
        assert_eq!(DiskFormat::VagrantLibvirt.file_name(), "disk.box");
        let err = "qcow3".parse::<DiskFormat>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown disk format \"qcow3\": expected raw, qcow2, vmdk, ova or vagrant-libvirt"
        );
    }
}
