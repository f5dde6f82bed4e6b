//! `vagrant` owns the Vagrant box output format for the libvirt provider
//! (vagrant-libvirt's box format version 1): a POSIX ustar archive, not
//! compressed (the qcow2 inside already is; Vagrant unpacks with bsdtar,
//! which reads a plain tar as well as a gzipped one), holding
//!
//! 1. `metadata.json`: `{"provider":"libvirt","format":"qcow2","virtual_size":N}`,
//!    N the guest disk's size in GiB, rounded up;
//! 2. `Vagrantfile`: what a cairn machine needs from Vagrant ([`vagrantfile`]):
//!    UEFI firmware (the disk boots systemd-boot and carries no BIOS boot
//!    code), the `core` user for SSH, no synced folder;
//! 3. `box.img`: the qcow2 image ([`crate::qcow2::write`]), streamed into
//!    the archive from its file.
//!
//! Every member has mode 0644, owner 0:0 and the given mtime
//! (SOURCE_DATE_EPOCH), so the same qcow2 gives the same bytes.

use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cairn_formats::image_dir::{VAGRANTFILE, VAGRANT_BOX_IMAGE, VAGRANT_METADATA};

/// The firmware the box's Vagrantfile names: Debian's (and Ubuntu's)
/// `ovmf` package's OVMF as one file, code and variables together, which
/// libvirt loads as a ROM (`-bios`): no NVRAM file per machine to manage.
pub const OVMF_ROM: &str = "/usr/share/ovmf/OVMF.fd";

/// What [`write()`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Size of the `.box` file in bytes.
    pub file_size: u64,
    /// The guest disk's size in bytes (the qcow2's virtual size).
    pub virtual_size: u64,
    /// `virtual_size` in GiB, rounded up, as `metadata.json` gives it.
    pub virtual_size_gib: u64,
}

/// Why a box could not be written. Each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum VagrantError {
    /// An I/O error on the qcow2 image or the box.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "reading qcow2 image".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// The input is not a qcow2 image.
    #[error("{path} is not a qcow2 image (no QFI\\xfb magic)")]
    NotQcow2 {
        /// The file.
        path: PathBuf,
    },

    /// The output path is the qcow2 image.
    #[error("{path} is both the qcow2 image and the box being written")]
    InputIsOutput {
        /// The file.
        path: PathBuf,
    },
}

impl VagrantError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        VagrantError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The guest size a qcow2 header gives (bytes 24..32, big-endian).
pub fn qcow2_virtual_size(path: &Path) -> Result<u64, VagrantError> {
    let mut header = [0u8; 32];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => VagrantError::NotQcow2 {
                path: path.to_path_buf(),
            },
            _ => VagrantError::io("reading qcow2 image", path, e),
        })?;
    if &header[..4] != b"QFI\xfb" {
        return Err(VagrantError::NotQcow2 {
            path: path.to_path_buf(),
        });
    }
    Ok(u64::from_be_bytes(
        header[24..32].try_into().expect("8 bytes"),
    ))
}

/// `metadata.json` of a box whose disk holds `virtual_size` bytes.
pub fn metadata_json(virtual_size: u64) -> String {
    format!(
        "{{\"provider\":\"libvirt\",\"format\":\"qcow2\",\"virtual_size\":{}}}\n",
        gib_rounded_up(virtual_size)
    )
}

fn gib_rounded_up(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 30)
}

/// The box's Vagrantfile. Vagrant merges it under the user's own, so
/// every setting here can be overridden there.
pub fn vagrantfile() -> String {
    format!(
        r#"# Written by cairn build: what a cairn machine needs under Vagrant's
# libvirt provider. Your own Vagrantfile overrides any of it.
Vagrant.configure("2") do |config|
  # cairn images log in as `core`; there is no `vagrant` user, and no key
  # or password in the image. Give core your key with a config-2 drive
  # (cairn's docs/usage.md, "Vagrant") and set config.ssh.private_key_path
  # to its private half: Vagrant's insecure key is never accepted.
  config.ssh.username = "core"
  config.ssh.insert_key = false
  # The root file system is read-only and has neither rsync nor an NFS
  # client: no synced folder.
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |libvirt|
    # UEFI only: the disk boots systemd-boot and carries no BIOS boot code.
    # OVMF as a ROM, from Debian's or Ubuntu's ovmf package; elsewhere name
    # your distribution's OVMF image here.
    libvirt.loader = "{OVMF_ROM}"
    libvirt.disk_bus = "virtio"
    libvirt.memory = 2048
    libvirt.cpus = 2
  end
end
"#
    )
}

/// Writes the box `out` (replacing any file there; removed again on
/// failure) around the qcow2 image `qcow2`, with members dated `mtime`
/// (seconds since the epoch).
pub fn write(qcow2: &Path, out: &Path, mtime: u64) -> Result<Report, VagrantError> {
    let virtual_size = qcow2_virtual_size(qcow2)?;
    let meta =
        std::fs::metadata(qcow2).map_err(|e| VagrantError::io("reading qcow2 image", qcow2, e))?;
    if let Ok(m) = std::fs::metadata(out) {
        if (m.dev(), m.ino()) == (meta.dev(), meta.ino()) {
            return Err(VagrantError::InputIsOutput {
                path: out.to_path_buf(),
            });
        }
    }
    match write_archive(qcow2, out, mtime, virtual_size) {
        Ok(report) => {
            tracing::info!(
                path = %out.display(),
                file_size = report.file_size,
                virtual_size,
                "Vagrant box written"
            );
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_file(out);
            Err(e)
        }
    }
}

fn write_archive(
    qcow2: &Path,
    out: &Path,
    mtime: u64,
    virtual_size: u64,
) -> Result<Report, VagrantError> {
    let metadata = metadata_json(virtual_size);
    let vagrantfile = vagrantfile();
    let mut input =
        File::open(qcow2).map_err(|e| VagrantError::io("opening qcow2 image", qcow2, e))?;
    let size = input
        .metadata()
        .map_err(|e| VagrantError::io("reading qcow2 image", qcow2, e))?
        .len();

    let file = File::create(out).map_err(|e| VagrantError::io("creating box", out, e))?;
    let write_err = |e| VagrantError::io("writing box", out, e);
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
    let member = crate::ova::member;
    tar.append(
        &member(VAGRANT_METADATA, metadata.len() as u64, mtime),
        metadata.as_bytes(),
    )
    .map_err(write_err)?;
    tar.append(
        &member(VAGRANTFILE, vagrantfile.len() as u64, mtime),
        vagrantfile.as_bytes(),
    )
    .map_err(write_err)?;
    if !crate::ova::append_sized(&mut tar, VAGRANT_BOX_IMAGE, size, mtime, &mut input)
        .map_err(write_err)?
    {
        return Err(VagrantError::io(
            "reading qcow2 image",
            qcow2,
            crate::ova::shrank(),
        ));
    }
    let file = crate::ova::finish(tar).map_err(write_err)?;
    let file_size = file
        .metadata()
        .map_err(|e| VagrantError::io("reading metadata of box", out, e))?
        .len();
    Ok(Report {
        file_size,
        virtual_size,
        virtual_size_gib: gib_rounded_up(virtual_size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_qcow2(dir: &Path, virtual_size: u64, extra: usize) -> PathBuf {
        let mut h = vec![0u8; 72 + extra];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[24..32].copy_from_slice(&virtual_size.to_be_bytes());
        let p = dir.join("disk.qcow2");
        std::fs::write(&p, &h).unwrap();
        p
    }

    #[test]
    fn metadata_rounds_the_size_up_to_whole_gib() {
        assert_eq!(
            metadata_json(4 << 30),
            "{\"provider\":\"libvirt\",\"format\":\"qcow2\",\"virtual_size\":4}\n"
        );
        assert!(metadata_json((4 << 30) + 512).contains("\"virtual_size\":5}"));
        assert!(metadata_json(1).contains("\"virtual_size\":1}"));
    }

    #[test]
    fn the_vagrantfile_sets_uefi_core_and_no_synced_folder() {
        let v = vagrantfile();
        for want in [
            "Vagrant.configure(\"2\") do |config|",
            "config.ssh.username = \"core\"",
            "config.vm.synced_folder \".\", \"/vagrant\", disabled: true",
            "config.vm.provider :libvirt do |libvirt|",
            "libvirt.loader = \"/usr/share/ovmf/OVMF.fd\"",
        ] {
            assert!(v.contains(want), "{want} missing:\n{v}");
        }
        // every block opened is closed
        assert_eq!(v.matches(" do |").count(), v.matches("\nend\n").count() + 1);
    }

    #[test]
    fn the_box_holds_metadata_vagrantfile_and_the_image_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let q = fake_qcow2(dir.path(), 3 << 30, 1000);
        let out = dir.path().join("disk.box");
        let r = write(&q, &out, 1_700_000_000).unwrap();
        assert_eq!((r.virtual_size, r.virtual_size_gib), (3 << 30, 3));
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(r.file_size, bytes.len() as u64);
        let mut a = tar::Archive::new(&bytes[..]);
        let mut names = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert_eq!(
                (h.mode().unwrap(), h.mtime().unwrap()),
                (0o644, 1_700_000_000)
            );
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            match name.as_str() {
                "metadata.json" => assert_eq!(data, metadata_json(3 << 30).as_bytes()),
                "Vagrantfile" => assert_eq!(data, vagrantfile().as_bytes()),
                "box.img" => assert_eq!(data, std::fs::read(&q).unwrap()),
                other => panic!("unexpected member {other}"),
            }
            names.push(name);
        }
        assert_eq!(names, ["metadata.json", "Vagrantfile", "box.img"]);
        // the same bytes again
        let again = dir.path().join("again.box");
        write(&q, &again, 1_700_000_000).unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), bytes);
    }

    #[test]
    fn not_a_qcow2_and_input_as_output_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        let out = dir.path().join("disk.box");
        let e = write(&raw, &out, 0).unwrap_err();
        assert!(matches!(e, VagrantError::NotQcow2 { .. }), "{e}");
        assert!(!out.exists(), "nothing left behind");
        let q = fake_qcow2(dir.path(), 1 << 30, 0);
        let e = write(&q, &q, 0).unwrap_err();
        assert!(matches!(e, VagrantError::InputIsOutput { .. }), "{e}");
        assert!(q.exists());
    }
}
