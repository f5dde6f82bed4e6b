//! `cairn-disk` writes the bootable disk image (design step 7) and reads
//! one back for `cairn inspect`: a sparse raw file with a protective MBR,
//! primary and backup GPT, and four partitions in a fixed order: `ESP`
//! (FAT32, systemd-boot and the BLS entries), root slots `cairn-a` and
//! `cairn-b` (squashfs images written raw) and `cairn-state` (last, left
//! empty so `/init` can create and grow it). All GUIDs and the FAT volume
//! id derive from the image identity and FAT timestamps from
//! SOURCE_DATE_EPOCH, so the same spec gives a byte-identical image.
//! [`qcow2::write`] converts that raw image to a compressed qcow2 image
//! (for KVM and OpenStack Glance), [`vmdk::write`] to a streamOptimized
//! VMDK (VMware, VirtualBox), just as reproducibly, and [`ova::write`]
//! packs such a VMDK with an OVF descriptor into an `.ova` appliance;
//! [`vagrant::write`] packs a qcow2 image into a Vagrant box for the
//! libvirt provider.
//!
//! This crate owns the disk format only. It does not decide what goes into
//! the ESP (the builder passes files; [`loader_conf`], [`bls_entry`] and
//! [`entry_file_name`] help it write the text), build root images, or touch
//! block devices.

mod bls;
pub mod config_drive;
mod convert;
mod error;
mod esp;
mod fat_fixup;
mod guid;
mod inspect;
mod layout;
pub mod ova;
pub mod qcow2;
mod table;
pub mod vagrant;
pub mod vmdk;

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use bls::{bls_entry, entry_file_name, loader_conf, BootEntry, DEFAULT_MENU_TIMEOUT};
pub use convert::ConvertError;
pub use error::DiskError;
pub use esp::{EspEntry, EspInfo};
pub use guid::{derive_guid, DISK_GUID_NAME};
pub use inspect::{inspect, DiskInfo, EntryVerity, SlotInfo};
pub use layout::{
    Layout, ALIGNMENT, ESP_LABEL, MIN_ESP_SIZE, SECTOR_SIZE, SLOT_A_LABEL, SLOT_B_LABEL,
    STATE_LABEL, STATE_NEW_MARK,
};
pub use table::{type_name, PartitionInfo};
/// The GUID type used throughout the API.
pub use uuid::Uuid;

/// Where the bytes of an ESP file come from.
#[derive(Clone, PartialEq, Eq)]
pub enum EspSource<'a> {
    /// Contents in memory (generated text, small binaries).
    Bytes(Cow<'a, [u8]>),
    /// A host file, read while the ESP is written (kernels, initrds,
    /// systemd-boot).
    File(Cow<'a, Path>),
}

/// Shows the length of in-memory contents, not the bytes (an initrd would
/// fill the screen).
impl std::fmt::Debug for EspSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EspSource::Bytes(b) => write!(f, "Bytes(<{} bytes>)", b.len()),
            EspSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl From<String> for EspSource<'_> {
    fn from(s: String) -> Self {
        EspSource::Bytes(Cow::Owned(s.into_bytes()))
    }
}

impl<'a> From<&'a str> for EspSource<'a> {
    fn from(s: &'a str) -> Self {
        EspSource::Bytes(Cow::Borrowed(s.as_bytes()))
    }
}

impl From<Vec<u8>> for EspSource<'_> {
    fn from(b: Vec<u8>) -> Self {
        EspSource::Bytes(Cow::Owned(b))
    }
}

impl<'a> From<&'a [u8]> for EspSource<'a> {
    fn from(b: &'a [u8]) -> Self {
        EspSource::Bytes(Cow::Borrowed(b))
    }
}

impl<'a> From<&'a Path> for EspSource<'a> {
    fn from(p: &'a Path) -> Self {
        EspSource::File(Cow::Borrowed(p))
    }
}

impl From<PathBuf> for EspSource<'_> {
    fn from(p: PathBuf) -> Self {
        EspSource::File(Cow::Owned(p))
    }
}

/// Everything that decides the bytes of a disk image.
#[derive(Debug, Clone)]
pub struct DiskSpec<'a> {
    /// Disk and partition sizes.
    pub layout: Layout,
    /// E.g. `cairn-default 1.0.0 <sha256 of rootfs>`: the disk GUID, every
    /// partition GUID and the FAT volume id derive from it.
    pub identity: &'a str,
    /// Files of the ESP: `/`-separated path (e.g. `EFI/BOOT/BOOTX64.EFI`;
    /// parent directories are created) and contents. Written sorted by
    /// path, so the order of this list does not matter.
    pub esp_files: Vec<(String, EspSource<'a>)>,
    /// Image written raw at the start of `cairn-a` (a squashfs).
    pub slot_a: Option<&'a Path>,
    /// Image written raw at the start of `cairn-b`.
    pub slot_b: Option<&'a Path>,
    /// SOURCE_DATE_EPOCH: the time stamped on every ESP file and directory.
    pub mtime: u64,
}

impl<'a> DiskSpec<'a> {
    /// The default layout, no files, empty slots, time 0 (stored as FAT's
    /// earliest time, 1980-01-01).
    pub fn new(identity: &'a str) -> Self {
        DiskSpec {
            layout: Layout::default(),
            identity,
            esp_files: Vec::new(),
            slot_a: None,
            slot_b: None,
            mtime: 0,
        }
    }
}

/// What [`write_disk`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReport {
    /// Apparent size of the image in bytes.
    pub size: u64,
    /// Bytes the sparse image really occupies on the host file system.
    pub allocated_bytes: u64,
    /// The partitions, in table order.
    pub partitions: Vec<PartitionInfo>,
}

/// Writes the disk image `path` (replacing any file there) from `spec`.
///
/// Everything is checked before the file is created: layout, slot image
/// sizes, ESP paths. The image is sparse: only the GPT, the FAT structures,
/// the ESP files and the non-zero blocks of the slot images are written.
/// On failure the partial image is removed.
pub fn write_disk(path: &Path, spec: &DiskSpec<'_>) -> Result<DiskReport, DiskError> {
    let started = Instant::now();
    let plan = spec.layout.plan()?;
    let files = esp::check_files(&spec.esp_files)?;
    let slots = [(&plan[1], spec.slot_a), (&plan[2], spec.slot_b)];
    for (part, image) in slots {
        if let Some(image) = image {
            let size = std::fs::metadata(image)
                .map_err(|e| DiskError::io("reading slot image", image, e))?
                .len();
            if size > part.size() {
                return Err(DiskError::SlotTooLarge {
                    partition: part.name,
                    path: image.to_path_buf(),
                    size,
                    capacity: part.size(),
                });
            }
        }
    }
    // Creating the image truncates it: refuse if it is one of the inputs.
    if let Ok(out) = std::fs::metadata(path) {
        let esp_inputs = spec.esp_files.iter().filter_map(|(_, s)| match s {
            EspSource::File(p) => Some(p.as_ref()),
            EspSource::Bytes(_) => None,
        });
        for input in [spec.slot_a, spec.slot_b]
            .into_iter()
            .flatten()
            .chain(esp_inputs)
        {
            if let Ok(m) = std::fs::metadata(input) {
                if (m.dev(), m.ino()) == (out.dev(), out.ino()) {
                    return Err(DiskError::InputIsOutput {
                        path: input.to_path_buf(),
                    });
                }
            }
        }
    }
    let partitions: Vec<PartitionInfo> = plan
        .iter()
        .map(|p| table::info(p, derive_guid(spec.identity, p.name)))
        .collect();

    // Truncate to nothing first: the image then starts as one big hole and
    // whatever is not written below reads as zero and takes no space.
    let image = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| DiskError::io("creating disk image", path, e))?;
    match write_image(&image, path, spec, &plan, &files, &partitions) {
        Ok(allocated_bytes) => {
            tracing::info!(
                path = %path.display(),
                size = spec.layout.disk_size,
                allocated_bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "disk image written"
            );
            Ok(DiskReport {
                size: spec.layout.disk_size,
                allocated_bytes,
                partitions,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

fn write_image(
    image: &File,
    path: &Path,
    spec: &DiskSpec<'_>,
    plan: &[layout::Planned; 4],
    files: &[esp::EspFile<'_, '_>],
    partitions: &[PartitionInfo],
) -> Result<u64, DiskError> {
    image
        .set_len(spec.layout.disk_size)
        .map_err(|e| DiskError::io("sizing disk image", path, e))?;

    table::write_gpt(
        image,
        path,
        spec.layout.disk_size,
        derive_guid(spec.identity, DISK_GUID_NAME),
        partitions,
    )?;
    tracing::debug!("GPT written");

    let esp_part = &plan[0];
    let stats = esp::write_esp(
        image,
        path,
        esp_part.offset(),
        esp_part.size(),
        guid::volume_id(spec.identity),
        *b"ESP        ",
        spec.mtime,
        files,
    )?;
    tracing::debug!(
        files = files.len(),
        cluster_size = stats.cluster_size,
        clusters = stats.clusters,
        free_clusters = stats.free_clusters,
        "ESP written"
    );

    for (part, slot) in [(&plan[1], spec.slot_a), (&plan[2], spec.slot_b)] {
        if let Some(src) = slot {
            let n = copy_sparse(image, path, part, src)?;
            tracing::debug!(partition = part.name, bytes = n, "slot image written");
        }
    }
    // the state partition: the "never formatted" mark, the rest zero
    std::os::unix::fs::FileExt::write_all_at(image, layout::STATE_NEW_MARK, plan[3].offset())
        .map_err(|e| DiskError::io("writing the state partition's mark", path, e))?;
    let meta = image
        .metadata()
        .map_err(|e| DiskError::io("reading metadata of disk image", path, e))?;
    Ok(meta.blocks() * 512)
}

/// Copies `src` to the start of `part`, skipping blocks that are all zero
/// (the image is a fresh sparse file, so they already read as zero).
fn copy_sparse(
    mut image: &File,
    image_path: &Path,
    part: &layout::Planned,
    src: &Path,
) -> Result<u64, DiskError> {
    const BLOCK: usize = 4096;
    let mut input = File::open(src).map_err(|e| DiskError::io("reading slot image", src, e))?;
    let write_err = |e| DiskError::io(format!("writing partition {} of", part.name), image_path, e);
    let mut buf = vec![0u8; 1 << 20];
    let mut done: u64 = 0;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DiskError::io("reading slot image", src, e)),
            }
        }
        if filled == 0 {
            break;
        }
        if done + filled as u64 > part.size() {
            // The file grew after it was measured.
            return Err(DiskError::SlotTooLarge {
                partition: part.name,
                path: src.to_path_buf(),
                size: done + filled as u64,
                capacity: part.size(),
            });
        }
        // Write each run of non-zero blocks with one call.
        let blocks: Vec<&[u8]> = buf[..filled].chunks(BLOCK).collect();
        let mut i = 0;
        while i < blocks.len() {
            if blocks[i].iter().all(|&b| b == 0) {
                i += 1;
                continue;
            }
            let start = i;
            while i < blocks.len() && blocks[i].iter().any(|&b| b != 0) {
                i += 1;
            }
            let from = start * BLOCK;
            let to = (i * BLOCK).min(filled);
            image
                .seek(SeekFrom::Start(part.offset() + done + from as u64))
                .map_err(write_err)?;
            image.write_all(&buf[from..to]).map_err(write_err)?;
        }
        done += filled as u64;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_source_conversions_and_short_debug() {
        let s: EspSource<'_> = "text".into();
        assert_eq!(s, EspSource::Bytes(Cow::Borrowed(b"text")));
        let s: EspSource<'_> = vec![0u8; 5 << 20].into();
        assert_eq!(format!("{s:?}"), "Bytes(<5242880 bytes>)");
        let s: EspSource<'_> = PathBuf::from("/x/vmlinuz").into();
        assert_eq!(format!("{s:?}"), "File(\"/x/vmlinuz\")");
        let s: EspSource<'_> = String::from("a").into();
        assert!(matches!(s, EspSource::Bytes(Cow::Owned(_))));
    }

    #[test]
    fn refuses_to_overwrite_an_input() {
        let dir = tempfile::tempdir().unwrap();
        let slot = dir.path().join("root.squashfs");
        std::fs::write(&slot, b"hsqs").unwrap();
        let mut spec = DiskSpec::new("x");
        spec.slot_b = Some(&slot);
        match write_disk(&slot, &spec) {
            Err(DiskError::InputIsOutput { path }) => assert_eq!(path, slot),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(&slot).unwrap(), b"hsqs");
    }
}
