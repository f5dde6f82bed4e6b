//! `qcow2` owns the qcow2 output format: it converts a raw disk image (the
//! `disk.raw` [`crate::write_disk`] writes) into a qcow2 version 3 image,
//! compressed like `qemu-img convert -c -O qcow2` would, for KVM and
//! OpenStack Glance users, without running qemu-img.
//!
//! What the image holds (see qemu's `docs/interop/qcow2.txt`):
//!
//! - 64 KiB clusters, 16-bit refcounts (refcount order 4), no backing file,
//!   no encryption, no snapshots, no feature bits set, compression type 0
//!   (zlib: raw deflate streams without zlib header, which qemu inflates
//!   with a 4 KiB window, so they are compressed with that window);
//! - guest clusters that read as all zero are not stored (unallocated);
//!   the raw file's holes are skipped with `SEEK_DATA`/`SEEK_HOLE` without
//!   being read, and the clusters it does hold are checked for zeros;
//! - every other cluster is deflated (level 6, zlib's default, as qemu)
//!   and stored byte-packed after the previous compressed cluster, as
//!   qemu-img does; a cluster that does not shrink is stored as is, or
//!   every cluster when [`Options::compress`] is off.
//!
//! Layout, all in one pass over the raw file: cluster 0 is the header
//! (header length 112, then the feature-name table extension qemu writes
//! and the end-of-extensions marker); then the data, in guest order, each
//! L2 table (one cluster, mapping 512 MiB of the guest) written right
//! after the data it maps; then the L1 table, the refcount table and the
//! refcount blocks. Every cluster's refcount is the number of references
//! to it: 1 for metadata and plain data clusters, the number of
//! compressed clusters whose sectors it holds for compressed data.
//!
//! The bytes depend only on the raw file's contents (and the deflate code
//! in `Cargo.lock`): no timestamps, clusters are compressed independently
//! (in parallel with rayon, written in guest order), and where the raw
//! file has holes does not matter. Memory stays bounded: two batches of
//! 8 MiB of input (one deflated while the other is written and refilled)
//! and their compressed forms, one L2 table, the L1 table (8 bytes per
//! 512 MiB of guest) and the refcounts (2 bytes per output cluster).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::convert::{self, Raw, SECTOR};

/// Bytes per cluster (the guest's and the host file's allocation unit).
pub const CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
/// The deflate level of compressed clusters (qemu's `Z_DEFAULT_COMPRESSION`).
pub const DEFLATE_LEVEL: u32 = 6;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: usize = CLUSTER_SIZE as usize;
/// Entries of an L2 table (8 bytes each, one cluster).
const L2_ENTRIES: u64 = CLUSTER_SIZE / 8;
const REFCOUNT_ORDER: u32 = 4;
/// 16-bit refcounts in a one-cluster refcount block.
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER_SIZE * 8 / (1 << REFCOUNT_ORDER);
/// The v3 header up to and including `compression_type`, padded to 8.
const HEADER_LENGTH: u32 = 112;
/// qemu refuses L1 tables larger than 32 MiB.
const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;
/// qemu inflates compressed clusters with a 4 KiB window (`inflateInit2`
/// with -12): matches must not reach further back.
const DEFLATE_WINDOW_BITS: u8 = 12;

const MAGIC: &[u8; 4] = b"QFI\xfb";
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// L1/L2 entry bit: the cluster's refcount is exactly one.
const OFLAG_COPIED: u64 = 1 << 63;
/// L2 entry bit: a compressed cluster.
const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Where a compressed cluster descriptor's sector count starts (x in the
/// spec: 62 - (cluster_bits - 8)); the host offset is below it.
const CSIZE_SHIFT: u32 = 62 - (CLUSTER_BITS - 8);

/// The feature-name table qemu writes (type, bit, name): lets older tools
/// name a feature they do not know. No feature bit is set in our images.
const FEATURE_NAMES: [(u8, u8, &str); 8] = [
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
];

/// How to write the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Deflate every data cluster that shrinks (qemu-img's `-c`); off,
    /// every cluster that is not all zero is stored as is.
    pub compress: bool,
}

impl Default for Options {
    /// Compressed.
    fn default() -> Self {
        Options { compress: true }
    }
}

/// What [`write()`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The guest disk's size: the raw image's size.
    pub virtual_size: u64,
    /// Size of the qcow2 file in bytes.
    pub file_size: u64,
    /// Guest clusters stored (those not all zero).
    pub data_clusters: u64,
    /// Of those, the ones stored deflated.
    pub compressed_clusters: u64,
    /// Guest clusters left unallocated because they read as zero.
    pub zero_clusters: u64,
}

/// Why a raw image could not be converted (the error of both converters).
pub use crate::convert::ConvertError as Qcow2Error;

/// Converts the raw disk image `raw` into the qcow2 image `out` (replacing
/// any file there; removed again on failure). The same raw contents and
/// options give the same bytes.
pub fn write(raw: &Path, out: &Path, opts: &Options) -> Result<Report, Qcow2Error> {
    let started = Instant::now();
    let max = MAX_L1_ENTRIES * L2_ENTRIES * CLUSTER_SIZE;
    let input = Raw::open(raw, out, "qcow2", max)?;
    let file = convert::create(out, "qcow2")?;
    match write_image(&input, file, out, opts) {
        Ok(report) => {
            tracing::info!(
                path = %out.display(),
                virtual_size = report.virtual_size,
                file_size = report.file_size,
                data_clusters = report.data_clusters,
                compressed_clusters = report.compressed_clusters,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "qcow2 image written"
            );
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_file(out);
            Err(e)
        }
    }
}

/// How one guest cluster that is not all zero is stored.
enum Encoded {
    /// As is.
    Plain,
    /// Deflated.
    Deflated(Vec<u8>),
}

fn write_image(
    input: &Raw<'_>,
    file: File,
    out: &Path,
    opts: &Options,
) -> Result<Report, Qcow2Error> {
    let size = input.size;
    let guest_clusters = size.div_ceil(CLUSTER_SIZE);
    let l1_entries = guest_clusters.div_ceil(L2_ENTRIES);
    let mut w = Writer {
        out: BufWriter::with_capacity(1 << 20, file),
        path: out,
        pos: 0,
        refcounts: Vec::new(),
    };
    // The header is written last, when the tables' places are known.
    w.table(&[0; HEADER_LENGTH as usize])?;

    let mut map = Mapping {
        l1: vec![0u64; l1_entries as usize],
        l2: None,
        data_clusters: 0,
        compressed_clusters: 0,
    };
    let compress = opts.compress;
    convert::run(
        input,
        || {
            let z = Compress::new_with_window_bits(
                Compression::new(DEFLATE_LEVEL),
                false,
                DEFLATE_WINDOW_BITS,
            );
            (z, vec![0u8; CLUSTER])
        },
        |(z, scratch), _, data| {
            if compress {
                deflate(z, scratch, data)
            } else {
                Ok(Encoded::Plain)
            }
        },
        |guest, data, enc| map.store(&mut w, guest, data, enc),
    )?;
    flush_l2(&mut w, &mut map.l1, map.l2.take())?;

    let l1_offset = if map.l1.is_empty() {
        0
    } else {
        w.table(&be_bytes(&map.l1))?
    };

    // The refcount structures count themselves: find the smallest table
    // and number of blocks that cover every cluster, theirs included.
    w.pad()?;
    let first = w.pos / CLUSTER_SIZE;
    debug_assert_eq!(
        w.refcounts.len() as u64,
        first,
        "every cluster so far counted"
    );
    let (mut table_clusters, mut blocks) = (1, 1);
    loop {
        let b = (first + table_clusters + blocks).div_ceil(REFCOUNTS_PER_BLOCK);
        let t = (b * 8).div_ceil(CLUSTER_SIZE);
        if (t, b) == (table_clusters, blocks) {
            break;
        }
        (table_clusters, blocks) = (t, b);
    }
    let clusters = first + table_clusters + blocks;
    w.refcounts.resize(clusters as usize, 1);
    let refcount_table: Vec<u64> = (0..blocks)
        .map(|i| (first + table_clusters + i) * CLUSTER_SIZE)
        .collect();
    let refcount_table_offset = w.pos;
    w.put(&be_bytes(&refcount_table))?;
    w.pad()?;
    for block in w.refcounts.clone().chunks(REFCOUNTS_PER_BLOCK as usize) {
        let bytes: Vec<u8> = block.iter().flat_map(|r| r.to_be_bytes()).collect();
        w.put(&bytes)?;
        w.pad()?;
    }
    debug_assert_eq!(w.pos, clusters * CLUSTER_SIZE);

    let file_size = w.pos;
    let file = w
        .out
        .into_inner()
        .map_err(|e| Qcow2Error::io("writing qcow2 image", out, e.into_error()))?;
    let header = header(
        size,
        l1_entries as u32,
        l1_offset,
        refcount_table_offset,
        table_clusters as u32,
    );
    file.write_all_at(&header, 0)
        .map_err(|e| Qcow2Error::io("writing the header of qcow2 image", out, e))?;
    Ok(Report {
        virtual_size: size,
        file_size,
        data_clusters: map.data_clusters,
        compressed_clusters: map.compressed_clusters,
        zero_clusters: guest_clusters - map.data_clusters,
    })
}

/// The guest-to-host mapping built while the data is written.
struct Mapping {
    l1: Vec<u64>,
    /// The L2 table being filled: its L1 index and entries.
    l2: Option<(u64, Vec<u64>)>,
    data_clusters: u64,
    compressed_clusters: u64,
}

impl Mapping {
    /// Writes guest cluster `guest` as `enc` says and maps it; writes each
    /// L2 table once the data it maps is written (clusters come in guest
    /// order).
    fn store(
        &mut self,
        w: &mut Writer<'_>,
        guest: u64,
        data: &[u8],
        enc: Encoded,
    ) -> Result<(), Qcow2Error> {
        let l1_index = guest / L2_ENTRIES;
        if self.l2.as_ref().is_some_and(|(i, _)| *i != l1_index) {
            flush_l2(w, &mut self.l1, self.l2.take())?;
        }
        let entry = match enc {
            Encoded::Plain => w.table(data)? | OFLAG_COPIED,
            Encoded::Deflated(bytes) => {
                self.compressed_clusters += 1;
                w.compressed(&bytes)?
            }
        };
        self.data_clusters += 1;
        let (_, table) = self
            .l2
            .get_or_insert_with(|| (l1_index, vec![0; L2_ENTRIES as usize]));
        table[(guest % L2_ENTRIES) as usize] = entry;
        Ok(())
    }
}

/// Writes the L2 table `l2` (if any) and points its L1 entry at it.
fn flush_l2(
    w: &mut Writer<'_>,
    l1: &mut [u64],
    l2: Option<(u64, Vec<u64>)>,
) -> Result<(), Qcow2Error> {
    if let Some((index, table)) = l2 {
        l1[index as usize] = w.table(&be_bytes(&table))? | OFLAG_COPIED;
    }
    Ok(())
}

fn be_bytes(entries: &[u64]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_be_bytes()).collect()
}

/// The header cluster's contents: the v3 header, the feature-name table,
/// the end of the extensions.
fn header(
    size: u64,
    l1_entries: u32,
    l1_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(1024);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&3u32.to_be_bytes()); // version
    h.extend_from_slice(&0u64.to_be_bytes()); // backing_file_offset
    h.extend_from_slice(&0u32.to_be_bytes()); // backing_file_size
    h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
    h.extend_from_slice(&l1_entries.to_be_bytes());
    h.extend_from_slice(&l1_offset.to_be_bytes());
    h.extend_from_slice(&refcount_table_offset.to_be_bytes());
    h.extend_from_slice(&refcount_table_clusters.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
    h.extend_from_slice(&0u64.to_be_bytes()); // incompatible_features
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible_features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear_features
    h.extend_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    h.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
    h.push(0); // compression_type: zlib
    h.resize(HEADER_LENGTH as usize, 0);

    h.extend_from_slice(&EXT_FEATURE_NAMES.to_be_bytes());
    h.extend_from_slice(&(FEATURE_NAMES.len() as u32 * 48).to_be_bytes());
    for (kind, bit, name) in FEATURE_NAMES {
        let mut entry = [0u8; 48];
        entry[0] = kind;
        entry[1] = bit;
        entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
        h.extend_from_slice(&entry);
    }
    h.extend_from_slice(&[0; 8]); // end of the header extensions
    h
}

/// The qcow2 file, written front to back, and the refcount of each of its
/// clusters so far.
struct Writer<'a> {
    out: BufWriter<File>,
    path: &'a Path,
    /// Bytes written.
    pos: u64,
    refcounts: Vec<u16>,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Qcow2Error> {
        self.out
            .write_all(bytes)
            .map_err(|e| Qcow2Error::io("writing qcow2 image", self.path, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Zero-fills up to the next cluster boundary.
    fn pad(&mut self) -> Result<(), Qcow2Error> {
        let gap = self.pos.next_multiple_of(CLUSTER_SIZE) - self.pos;
        self.put(&[0; CLUSTER][..gap as usize])
    }

    fn add_ref(&mut self, cluster: u64) {
        let i = cluster as usize;
        if self.refcounts.len() <= i {
            self.refcounts.resize(i + 1, 0);
        }
        self.refcounts[i] += 1;
    }

    /// Writes `bytes` from the next cluster boundary on, zero-filled to a
    /// whole number of clusters, each referenced once. Returns the offset.
    fn table(&mut self, bytes: &[u8]) -> Result<u64, Qcow2Error> {
        self.pad()?;
        let offset = self.pos;
        self.put(bytes)?;
        self.pad()?;
        for cluster in offset / CLUSTER_SIZE..self.pos / CLUSTER_SIZE {
            self.add_ref(cluster);
        }
        Ok(offset)
    }

    /// Appends a deflated cluster right after the previous bytes and
    /// returns its L2 entry. The entry gives the sectors it occupies; each
    /// cluster those sectors touch gains a reference (as `qemu-img check`
    /// counts them).
    fn compressed(&mut self, bytes: &[u8]) -> Result<u64, Qcow2Error> {
        if self.refcounts.get((self.pos / CLUSTER_SIZE) as usize) == Some(&u16::MAX) {
            // Unreachable in practice (each deflated cluster takes dozens
            // of bytes): the shared cluster's refcount would overflow.
            self.pad()?;
        }
        let offset = self.pos;
        let last = offset + bytes.len() as u64 - 1;
        for cluster in offset / CLUSTER_SIZE..=last / CLUSTER_SIZE {
            self.add_ref(cluster);
        }
        self.put(bytes)?;
        let extra_sectors = last / SECTOR - offset / SECTOR;
        Ok(OFLAG_COMPRESSED | extra_sectors << CSIZE_SHIFT | offset)
    }
}

/// Deflates one cluster; keeps it plain unless that takes fewer bytes
/// than the cluster (qemu's rule).
fn deflate(z: &mut Compress, scratch: &mut [u8], data: &[u8]) -> Result<Encoded, String> {
    z.reset();
    match z.compress(data, &mut scratch[..CLUSTER - 1], FlushCompress::Finish) {
        Ok(Status::StreamEnd) => Ok(Encoded::Deflated(
            scratch[..z.total_out() as usize].to_vec(),
        )),
        // Ran out of room: it does not shrink.
        Ok(Status::Ok | Status::BufError) => Ok(Encoded::Plain),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_sit_where_the_spec_puts_them() {
        let h = header(4 << 30, 8, 0x50000, 0x60000, 1);
        assert_eq!(&h[0..4], b"QFI\xfb");
        let u32_at = |o: usize| u32::from_be_bytes(h[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(4), 3);
        assert_eq!(u32_at(20), 16);
        assert_eq!(u64_at(24), 4 << 30);
        assert_eq!(u32_at(36), 8);
        assert_eq!(u64_at(40), 0x50000);
        assert_eq!(u64_at(48), 0x60000);
        assert_eq!(u32_at(56), 1);
        assert_eq!(u32_at(96), 4);
        assert_eq!(u32_at(100), 112);
        assert_eq!(u32_at(112), EXT_FEATURE_NAMES);
        assert_eq!(u32_at(116), 8 * 48);
        assert_eq!(&h[112 + 8 + 2..][..9], b"dirty bit");
        assert_eq!(h.len(), 112 + 8 + 8 * 48 + 8);
        assert_eq!(&h[h.len() - 8..], &[0; 8]);
    }

    #[test]
    fn compressed_entry_counts_extra_sectors_and_shared_clusters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut w = Writer {
            out: BufWriter::new(File::create(&path).unwrap()),
            path: &path,
            pos: 0,
            refcounts: Vec::new(),
        };
        w.table(&[1]).unwrap();
        // 600 bytes from the start of cluster 1: two sectors.
        let e = w.compressed(&[7; 600]).unwrap();
        assert_eq!(e, OFLAG_COMPRESSED | 1 << CSIZE_SHIFT | CLUSTER_SIZE);
        // Straddles clusters 1 and 2.
        let e = w.compressed(&[7; CLUSTER - 500]).unwrap();
        let offset = CLUSTER_SIZE + 600;
        let last = offset + CLUSTER_SIZE - 500 - 1;
        assert_eq!(
            e,
            OFLAG_COMPRESSED | (last / 512 - offset / 512) << CSIZE_SHIFT | offset
        );
        assert_eq!(w.refcounts, [1, 2, 1]);
        assert_eq!(w.table(&[2]).unwrap(), 3 * CLUSTER_SIZE);
        assert_eq!(w.refcounts, [1, 2, 1, 1]);
    }

    #[test]
    fn deflate_keeps_what_does_not_shrink_plain() {
        let mut z = Compress::new_with_window_bits(Compression::new(6), false, 12);
        let mut scratch = vec![0u8; CLUSTER];
        let text: Vec<u8> = b"cairn ".iter().copied().cycle().take(CLUSTER).collect();
        assert!(matches!(
            deflate(&mut z, &mut scratch, &text),
            Ok(Encoded::Deflated(d)) if d.len() < 1000
        ));
        let mut x = 1u64;
        let noise: Vec<u8> = (0..CLUSTER)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(matches!(
            deflate(&mut z, &mut scratch, &noise),
            Ok(Encoded::Plain)
        ));
        // The state was reset: the same input deflates the same way again.
        let (Ok(Encoded::Deflated(a)), Ok(Encoded::Deflated(b))) = (
            deflate(&mut z, &mut scratch, &text),
            deflate(&mut z, &mut scratch, &text),
        ) else {
            panic!()
        };
        assert_eq!(a, b);
    }
}
