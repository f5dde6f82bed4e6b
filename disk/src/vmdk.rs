//! `vmdk` owns the VMware output format: it converts a raw disk image (the
//! `disk.raw` [`crate::write_disk`] writes) into a `streamOptimized` sparse
//! VMDK, the disk format of OVF/OVA appliances (VMware ESXi, Workstation,
//! Fusion; VirtualBox), without running qemu-img or ovftool.
//!
//! What the file holds (VMware's "Virtual Disk Format 5.0", stream-optimized
//! compressed sparse extents; all numbers little-endian, offsets and sizes
//! in 512-byte sectors):
//!
//! - sector 0: the sparse extent header, version 3, flags "valid newline
//!   test", "compressed grains" and "markers", deflate compression, 64 KiB
//!   grains, 512 entries per grain table, and the grain directory's offset
//!   given as "at the end" (`u64::MAX`): the footer has the real one;
//! - sectors 1-20: the embedded descriptor (`createType="streamOptimized"`,
//!   one `SPARSE` extent naming the file, IDE geometry), NUL-padded; its
//!   `CID` is a CRC-32 of the grains, so it changes with the contents but
//!   not from one run to the next;
//! - from sector 128 (`overHead`) on, in guest order, each grain that is not
//!   all zero: a grain marker (the grain's first guest sector as `u64`, the
//!   compressed length as `u32`), then the grain as a zlib stream (RFC 1950,
//!   deflate level 6, as qemu and VMware write them), padded to a sector;
//!   the last grain holds only the bytes before the end of the disk;
//! - after the grains a grain table maps, its marker (type 1, 4 sectors)
//!   and the table (512 `u32` sector offsets of grain markers, 0 for grains
//!   that read as zero). Tables are written on demand: a table whose grains
//!   are all zero is not written and its directory entry is 0;
//! - the grain directory's marker (type 2) and the directory (one `u32`
//!   sector offset per table, 32 MiB of guest each);
//! - the footer's marker (type 3), the footer (the header again, with the
//!   directory's offset), and the end-of-stream marker (a zero sector).
//!
//! One forward pass over the raw file (holes skipped with
//! `SEEK_DATA`/`SEEK_HOLE`, grains compressed in parallel and written in
//! guest order), then the descriptor is written in place. Memory stays
//! bounded: two 8 MiB batches, one grain table, the directory (4 bytes per
//! 32 MiB of guest). The same raw contents give the same bytes under the
//! same file name (the descriptor names the file). An empty raw image is
//! refused: a header with capacity 0 means "descriptor file" to readers.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use crate::convert::{self, Raw, SECTOR, UNIT_SIZE};

/// Bytes per grain (the unit of allocation and compression).
pub const GRAIN_SIZE: u64 = UNIT_SIZE;
/// The zlib level grains are compressed with (zlib's default, as qemu).
pub const DEFLATE_LEVEL: u32 = 6;
/// What qemu-img reports as the image's `create-type`.
pub const CREATE_TYPE: &str = "streamOptimized";

const GRAIN_SECTORS: u64 = GRAIN_SIZE / SECTOR;
/// Grain table entries per table.
const GTES_PER_GT: u64 = 512;
const GT_BYTES: usize = GTES_PER_GT as usize * 4;
const GT_SECTORS: u64 = GT_BYTES as u64 / SECTOR;
/// Guest sectors one grain table maps (32 MiB).
const SECTORS_PER_GT: u64 = GTES_PER_GT * GRAIN_SECTORS;
const DESCRIPTOR_OFFSET: u64 = 1;
/// The descriptor's room (qemu reads 20 sectors).
const DESCRIPTOR_SECTORS: u64 = 20;
/// Where the first grain goes: header and descriptor take one grain.
const OVERHEAD_SECTORS: u64 = GRAIN_SECTORS;

/// `KDMV` on disk.
const MAGIC: u32 = 0x564d_444b;
const VERSION: u32 = 3;
const FLAG_VALID_NEWLINE_TEST: u32 = 1;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const GD_AT_END: u64 = u64::MAX;
const COMPRESSION_DEFLATE: u16 = 1;

const MARKER_END_OF_STREAM: u32 = 0;
const MARKER_GRAIN_TABLE: u32 = 1;
const MARKER_GRAIN_DIRECTORY: u32 = 2;
const MARKER_FOOTER: u32 = 3;
/// A grain marker's header before the compressed bytes: `lba`, `size`.
const GRAIN_MARKER_BYTES: usize = 12;

/// Grain tables and the directory hold 32-bit sector numbers: the file
/// must end below 2 TiB, so the guest can be at most that large too.
const MAX_FILE_SIZE: u64 = (1 << 32) * SECTOR;
/// IDE geometry's cylinder limit.
const MAX_CYLINDERS: u64 = 16383;

/// What [`write()`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The guest disk's size: the raw image's size.
    pub virtual_size: u64,
    /// Size of the VMDK file in bytes.
    pub file_size: u64,
    /// Grains stored (those not all zero), each compressed.
    pub data_grains: u64,
    /// Grains left out because they read as zero.
    pub zero_grains: u64,
    /// Grain tables written (those mapping a stored grain).
    pub grain_tables: u64,
    /// The descriptor's content id.
    pub cid: u32,
}

/// Why a raw image could not be converted (the error of both converters).
pub use crate::convert::ConvertError as VmdkError;

/// Converts the raw disk image `raw` into the streamOptimized VMDK `out`
/// (replacing any file there; removed again on failure). The same raw
/// contents and file name give the same bytes.
pub fn write(raw: &Path, out: &Path) -> Result<Report, VmdkError> {
    let started = Instant::now();
    // Room for the metadata after the last grain is checked as it is written.
    let input = Raw::open(raw, out, "VMDK", MAX_FILE_SIZE - OVERHEAD_SECTORS * SECTOR)?;
    if input.size == 0 {
        return Err(VmdkError::Empty {
            path: raw.to_path_buf(),
            format: "VMDK",
        });
    }
    let file = convert::create(out, "VMDK")?;
    match write_image(&input, file, out) {
        Ok(report) => {
            tracing::info!(
                path = %out.display(),
                virtual_size = report.virtual_size,
                file_size = report.file_size,
                data_grains = report.data_grains,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "VMDK image written"
            );
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_file(out);
            Err(e)
        }
    }
}

fn write_image(input: &Raw<'_>, file: File, out: &Path) -> Result<Report, VmdkError> {
    let capacity = input.size / SECTOR;
    let gt_count = capacity.div_ceil(SECTORS_PER_GT);
    let mut w = Writer {
        out: BufWriter::with_capacity(1 << 20, file),
        path: out,
        pos: 0,
        crc: Crc::new(),
    };
    w.put(&header(capacity, GD_AT_END))?;
    // The descriptor (written last, once the CID is known) and the rest
    // of the first grain.
    w.put(&vec![0; ((OVERHEAD_SECTORS - 1) * SECTOR) as usize])?;

    let mut tables = Tables {
        directory: vec![0; gt_count as usize],
        current: None,
        written: 0,
    };
    let mut data_grains = 0;
    let size = input.size;
    convert::run(
        input,
        || Compress::new(Compression::new(DEFLATE_LEVEL), true),
        |z, grain, data| {
            // The last grain stops at the end of the disk.
            let len = (size - grain * GRAIN_SIZE).min(GRAIN_SIZE) as usize;
            compress(z, &data[..len])
        },
        |grain, _, compressed| {
            let gt = grain / GTES_PER_GT;
            if tables.current.as_ref().is_some_and(|(i, _)| *i != gt) {
                tables.flush(&mut w)?;
            }
            let sector = w.sector()?;
            let mut marker = [0u8; GRAIN_MARKER_BYTES];
            marker[..8].copy_from_slice(&(grain * GRAIN_SECTORS).to_le_bytes());
            marker[8..].copy_from_slice(&(compressed.len() as u32).to_le_bytes());
            w.grain_bytes(&marker)?;
            w.grain_bytes(&compressed)?;
            w.pad()?;
            let (_, table) = tables
                .current
                .get_or_insert_with(|| (gt, vec![0; GTES_PER_GT as usize]));
            table[(grain % GTES_PER_GT) as usize] = sector;
            data_grains += 1;
            Ok(())
        },
    )?;
    tables.flush(&mut w)?;

    let directory: Vec<u8> = tables
        .directory
        .iter()
        .flat_map(|e| e.to_le_bytes())
        .collect();
    let gd_sectors = (directory.len() as u64).div_ceil(SECTOR);
    w.put(&marker(gd_sectors, MARKER_GRAIN_DIRECTORY))?;
    let gd_offset = u64::from(w.sector()?);
    w.put(&directory)?;
    w.pad()?;
    w.put(&marker(1, MARKER_FOOTER))?;
    w.put(&header(capacity, gd_offset))?;
    w.put(&marker(0, MARKER_END_OF_STREAM))?;
    w.sector()?;

    let file_size = w.pos;
    // The content id: the grains as written, and the disk's size.
    let mut crc = w.crc;
    crc.update(&capacity.to_le_bytes());
    let cid = crc.sum();
    let file = w
        .out
        .into_inner()
        .map_err(|e| VmdkError::io("writing VMDK image", out, e.into_error()))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.write_all_at(
        &descriptor(capacity, cid, &name),
        DESCRIPTOR_OFFSET * SECTOR,
    )
    .map_err(|e| VmdkError::io("writing the descriptor of VMDK image", out, e))?;
    Ok(Report {
        virtual_size: input.size,
        file_size,
        data_grains,
        zero_grains: input.size.div_ceil(GRAIN_SIZE) - data_grains,
        grain_tables: tables.written,
        cid,
    })
}

/// The grain directory, filled as grain tables are written, and the
/// table being filled.
struct Tables {
    directory: Vec<u32>,
    /// Its index and entries.
    current: Option<(u64, Vec<u32>)>,
    written: u64,
}

impl Tables {
    /// Writes the current table (if any) after its marker and points the
    /// directory at it.
    fn flush(&mut self, w: &mut Writer<'_>) -> Result<(), VmdkError> {
        if let Some((index, table)) = self.current.take() {
            w.put(&marker(GT_SECTORS, MARKER_GRAIN_TABLE))?;
            self.directory[index as usize] = w.sector()?;
            let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
            w.put(&bytes)?;
            self.written += 1;
        }
        Ok(())
    }
}

/// Compresses one grain into a zlib stream.
fn compress(z: &mut Compress, data: &[u8]) -> Result<Vec<u8>, String> {
    z.reset();
    // zlib's compressBound: incompressible data grows a little.
    let mut out = Vec::with_capacity(data.len() + data.len() / 1000 + 64);
    loop {
        let consumed = z.total_in() as usize;
        match z.compress_vec(&data[consumed..], &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => return Ok(out),
            Ok(Status::Ok | Status::BufError) => out.reserve(4096),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A metadata marker: `val` (the sectors of what follows), `size` 0, the
/// type, padded to a sector.
fn marker(val: u64, kind: u32) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    m[..8].copy_from_slice(&val.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

/// The sparse extent header (also the footer, with the real `gd_offset`).
fn header(capacity: u64, gd_offset: u64) -> [u8; SECTOR as usize] {
    let mut h = [0u8; SECTOR as usize];
    let mut put = |at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &MAGIC.to_le_bytes());
    put(4, &VERSION.to_le_bytes());
    put(
        8,
        &(FLAG_VALID_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS).to_le_bytes(),
    );
    put(12, &capacity.to_le_bytes());
    put(20, &GRAIN_SECTORS.to_le_bytes());
    put(28, &DESCRIPTOR_OFFSET.to_le_bytes());
    put(36, &DESCRIPTOR_SECTORS.to_le_bytes());
    put(44, &(GTES_PER_GT as u32).to_le_bytes());
    put(48, &0u64.to_le_bytes()); // no redundant grain directory
    put(56, &gd_offset.to_le_bytes());
    put(64, &OVERHEAD_SECTORS.to_le_bytes());
    // uncleanShutdown 0, then the newline detection characters
    put(73, b"\n \r\n");
    put(77, &COMPRESSION_DEFLATE.to_le_bytes());
    h
}

/// The embedded descriptor, NUL-padded to its 20 sectors. `name` is the
/// VMDK file's own name (the extent is the file itself).
fn descriptor(capacity: u64, cid: u32, name: &str) -> Vec<u8> {
    // A name that would break the quoted string is made safe.
    let name: String = name
        .chars()
        .map(|c| if c == '"' || c.is_control() { '_' } else { c })
        .collect();
    let cylinders = (capacity / (16 * 63)).min(MAX_CYLINDERS);
    let text = format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"{CREATE_TYPE}\"\n\
         \n\
         # Extent description\n\
         RW {capacity} SPARSE \"{name}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"16\"\n\
         ddb.geometry.sectors = \"63\"\n\
         ddb.adapterType = \"ide\"\n"
    );
    let mut bytes = text.into_bytes();
    // A file name is at most 255 bytes: the text stays far below 10 KiB.
    bytes.resize((DESCRIPTOR_SECTORS * SECTOR) as usize, 0);
    bytes
}

/// The VMDK file, written front to back.
struct Writer<'a> {
    out: BufWriter<File>,
    path: &'a Path,
    /// Bytes written.
    pos: u64,
    /// Over the grain markers and grains (the content id).
    crc: Crc,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), VmdkError> {
        self.out
            .write_all(bytes)
            .map_err(|e| VmdkError::io("writing VMDK image", self.path, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn grain_bytes(&mut self, bytes: &[u8]) -> Result<(), VmdkError> {
        self.crc.update(bytes);
        self.put(bytes)
    }

    /// Zero-fills up to the next sector boundary.
    fn pad(&mut self) -> Result<(), VmdkError> {
        let gap = self.pos.next_multiple_of(SECTOR) - self.pos;
        self.put(&[0; SECTOR as usize][..gap as usize])
    }

    /// The current sector (the writer is at a sector boundary), refused
    /// when 32 bits cannot hold it.
    fn sector(&self) -> Result<u32, VmdkError> {
        debug_assert_eq!(self.pos % SECTOR, 0);
        u32::try_from(self.pos / SECTOR).map_err(|_| VmdkError::OutputTooLarge {
            path: self.path.to_path_buf(),
            format: "VMDK",
            max: MAX_FILE_SIZE,
        })
    }
}

/// Reads the capacity (guest size in bytes) from the header of a VMDK
/// this module wrote, checking that it is one: a streamOptimized sparse
/// extent with compressed grains and markers.
pub fn capacity(path: &Path) -> Result<u64, VmdkError> {
    let f = File::open(path).map_err(|e| VmdkError::io("opening VMDK image", path, e))?;
    let mut h = [0u8; SECTOR as usize];
    f.read_exact_at(&mut h, 0)
        .map_err(|e| VmdkError::io("reading the header of VMDK image", path, e))?;
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap_or_default());
    let flags = FLAG_COMPRESSED | FLAG_MARKERS;
    if u32_at(0) != MAGIC || u32_at(8) & flags != flags {
        return Err(VmdkError::io(
            "reading the header of VMDK image",
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a streamOptimized VMDK (no KDMV magic with compressed grains and markers)",
            ),
        ));
    }
    let sectors = u64::from_le_bytes(h[12..20].try_into().unwrap_or_default());
    Ok(sectors * SECTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_sit_where_the_spec_puts_them() {
        let h = header(8 << 21, GD_AT_END);
        assert_eq!(&h[0..4], b"KDMV");
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(4), 3);
        assert_eq!(u32_at(8), 0x0003_0001);
        assert_eq!(u64_at(12), 8 << 21);
        assert_eq!(u64_at(20), 128);
        assert_eq!(u64_at(28), 1);
        assert_eq!(u64_at(36), 20);
        assert_eq!(u32_at(44), 512);
        assert_eq!(u64_at(48), 0);
        assert_eq!(u64_at(56), u64::MAX);
        assert_eq!(u64_at(64), 128);
        assert_eq!(&h[72..77], b"\0\n \r\n");
        assert_eq!(u16::from_le_bytes([h[77], h[78]]), 1);
        assert!(h[79..].iter().all(|&b| b == 0));
    }

    #[test]
    fn descriptor_names_the_file_and_fits_its_sectors() {
        let d = descriptor(8_388_608, 0xdead_beef, "disk.vmdk");
        assert_eq!(d.len(), 20 * 512);
        let text = std::str::from_utf8(&d[..d.iter().position(|&b| b == 0).unwrap()]).unwrap();
        assert!(text.starts_with("# Disk DescriptorFile\nversion=1\nCID=deadbeef\n"));
        assert!(text.contains("createType=\"streamOptimized\"\n"));
        assert!(text.contains("\nRW 8388608 SPARSE \"disk.vmdk\"\n"));
        assert!(text.contains("ddb.geometry.cylinders = \"8322\"\n"));
        let odd = descriptor(1 << 40, 0, "a\"b\nc.vmdk");
        let odd = String::from_utf8_lossy(&odd);
        assert!(odd.contains("SPARSE \"a_b_c.vmdk\""), "{odd}");
        assert!(odd.contains("cylinders = \"16383\""), "{odd}");
    }

    #[test]
    fn markers_carry_value_and_type() {
        let m = marker(4, MARKER_GRAIN_TABLE);
        assert_eq!(&m[..16], &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert!(marker(0, MARKER_END_OF_STREAM).iter().all(|&b| b == 0));
    }

    #[test]
    fn incompressible_grains_still_compress_to_a_complete_stream() {
        let mut z = Compress::new(Compression::new(DEFLATE_LEVEL), true);
        let mut x = 7u64;
        let noise: Vec<u8> = (0..GRAIN_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let c = compress(&mut z, &noise).unwrap();
        assert!(c.len() > noise.len(), "{}", c.len());
        let mut d = flate2::Decompress::new(true);
        let mut back = Vec::with_capacity(noise.len());
        d.decompress_vec(&c, &mut back, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(back, noise);
        // the state was reset: the same bytes again
        assert_eq!(compress(&mut z, &noise).unwrap(), c);
    }
}
