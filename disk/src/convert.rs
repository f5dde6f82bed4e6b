//! `convert` holds what the image converters ([`crate::qcow2`],
//! [`crate::vmdk`]) share: opening and checking the raw image, finding the
//! parts of it that may hold data (`SEEK_DATA`/`SEEK_HOLE`), and the
//! two-batch pipeline that reads 64 KiB units in guest order, encodes them
//! in parallel (rayon) and hands them to the format's writer in guest
//! order, so the output's bytes never depend on the number of threads.
//! Units that read as all zero are skipped before they are encoded.
//!
//! Memory stays bounded whatever the image's size: two batches of
//! [`BATCH`] units (one encoded while the other is written and refilled)
//! and their encoded forms.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

/// Bytes per unit of conversion: qcow2's cluster, VMDK's grain.
pub(crate) const UNIT_SIZE: u64 = 64 << 10;
const UNIT: usize = UNIT_SIZE as usize;
/// Units read and encoded at a time (8 MiB; two batches are in flight).
const BATCH: usize = 128;
pub(crate) const SECTOR: u64 = 512;

/// Why a raw image could not be converted to qcow2 or VMDK. Each names
/// the file involved.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// An I/O error on the raw image or the image being written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "reading raw image".
        action: String,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// The input is a directory, device, ...
    #[error("raw image {path}: expected a regular file")]
    NotAFile {
        /// The input.
        path: PathBuf,
    },

    /// Disk images are whole sectors.
    #[error("raw image {path} is {size} bytes: expected a multiple of 512 (whole sectors)")]
    Unaligned {
        /// The input.
        path: PathBuf,
        /// Its size.
        size: u64,
    },

    /// Larger than the output format can address.
    #[error("raw image {path} is {size} bytes: expected at most {max} bytes")]
    TooLarge {
        /// The input.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The largest size the format holds.
        max: u64,
    },

    /// The raw image is empty and the format has no empty disks (a VMDK
    /// header with capacity 0 means "descriptor file" to readers).
    #[error("raw image {path} is empty: a {format} image cannot describe an empty disk")]
    Empty {
        /// The input.
        path: PathBuf,
        /// `VMDK`.
        format: &'static str,
    },

    /// The output grew past what the format's offsets can address (VMDK:
    /// 32-bit sector numbers, 2 TiB).
    #[error("{path}: the {format} image would be larger than {max} bytes, which its tables cannot address")]
    OutputTooLarge {
        /// The output.
        path: PathBuf,
        /// `qcow2`, `VMDK`.
        format: &'static str,
        /// The largest file the format addresses.
        max: u64,
    },

    /// The raw image got shorter while it was read.
    #[error("raw image {path} shrank while it was converted: expected {size} bytes")]
    Shrank {
        /// The input.
        path: PathBuf,
        /// Its size when the conversion started.
        size: u64,
    },

    /// The output path is the input file.
    #[error("{path} is both the raw image and the {format} image being written")]
    InputIsOutput {
        /// The file.
        path: PathBuf,
        /// `qcow2`, `VMDK`.
        format: &'static str,
    },

    /// The deflate library failed (not expected to happen).
    #[error("raw image {path}: deflating the 64 KiB at byte {offset}: {reason}")]
    Deflate {
        /// The input.
        path: PathBuf,
        /// Guest byte offset of the unit.
        offset: u64,
        /// What the library reported.
        reason: String,
    },
}

impl ConvertError {
    pub(crate) fn io(action: impl Into<String>, path: &Path, source: io::Error) -> Self {
        ConvertError::Io {
            action: action.into(),
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The raw image being converted.
pub(crate) struct Raw<'a> {
    pub file: File,
    pub path: &'a Path,
    /// Its size when it was opened: the guest disk's size.
    pub size: u64,
}

impl<'a> Raw<'a> {
    /// Opens `raw` to be converted into the `format` image `out`: a regular
    /// file of whole sectors, at most `max` bytes, not `out` itself.
    pub fn open(
        raw: &'a Path,
        out: &Path,
        format: &'static str,
        max: u64,
    ) -> Result<Raw<'a>, ConvertError> {
        let file = File::open(raw).map_err(|e| ConvertError::io("opening raw image", raw, e))?;
        let meta = file
            .metadata()
            .map_err(|e| ConvertError::io("reading metadata of raw image", raw, e))?;
        if !meta.is_file() {
            return Err(ConvertError::NotAFile {
                path: raw.to_path_buf(),
            });
        }
        let size = meta.len();
        if size % SECTOR != 0 {
            return Err(ConvertError::Unaligned {
                path: raw.to_path_buf(),
                size,
            });
        }
        if size > max {
            return Err(ConvertError::TooLarge {
                path: raw.to_path_buf(),
                size,
                max,
            });
        }
        // Creating the output truncates it: refuse if it is the input.
        if let Ok(m) = std::fs::metadata(out) {
            if (m.dev(), m.ino()) == (meta.dev(), meta.ino()) {
                return Err(ConvertError::InputIsOutput {
                    path: out.to_path_buf(),
                    format,
                });
            }
        }
        Ok(Raw {
            file,
            path: raw,
            size,
        })
    }
}

/// Creates (truncates) the output file.
pub(crate) fn create(out: &Path, format: &'static str) -> Result<File, ConvertError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(|e| ConvertError::io(format!("creating {format} image"), out, e))
}

/// Reads every unit of `raw` that is not all zero, in guest order, has
/// `encode` turn it into a `T` (in parallel; `init` makes each thread's
/// scratch state; it gets the unit's index, guest offset / 64 KiB, and
/// bytes) and gives it to `store` with the unit's index and bytes. The
/// part of the last unit past the end of the disk reads as zero. `encode` reports failure as text, turned
/// into [`ConvertError::Deflate`] naming the unit.
pub(crate) fn run<St, T, Init, Enc, Store>(
    raw: &Raw<'_>,
    init: Init,
    encode: Enc,
    mut store: Store,
) -> Result<(), ConvertError>
where
    T: Send,
    Init: Fn() -> St + Sync + Send,
    Enc: Fn(&mut St, u64, &[u8]) -> Result<T, String> + Sync + Send,
    Store: FnMut(u64, &[u8], T) -> Result<(), ConvertError> + Send,
{
    let mut candidates = DataUnits {
        file: &raw.file,
        size: raw.size,
        next: 0,
        end: 0,
    };
    // A pipeline of two batches: while one is encoded (by the other
    // threads), the current thread writes the one before and reads the
    // next into its buffer.
    let mut current = Batch::new();
    let mut other = Batch::new();
    current.fill(raw, &mut candidates)?;
    let mut encoded: Option<Vec<Option<T>>> = None;
    loop {
        let to_store = encoded.take();
        let (io, done) = rayon::join(
            || {
                if let Some(units) = to_store {
                    for (slot, (&unit, enc)) in other.units.iter().zip(units).enumerate() {
                        if let Some(enc) = enc {
                            store(unit, other.unit(slot), enc)?;
                        }
                    }
                }
                other.fill(raw, &mut candidates)
            },
            || current.encode(raw, &init, &encode),
        );
        io?;
        let done = done?;
        std::mem::swap(&mut current, &mut other);
        if other.units.is_empty() {
            return Ok(());
        }
        encoded = Some(done);
    }
}

/// Up to [`BATCH`] units that may hold data, read.
struct Batch {
    /// Their indices, ascending.
    units: Vec<u64>,
    /// Their contents, one unit each.
    buf: Vec<u8>,
}

impl Batch {
    fn new() -> Self {
        Batch {
            units: Vec::with_capacity(BATCH),
            buf: vec![0; BATCH * UNIT],
        }
    }

    fn unit(&self, slot: usize) -> &[u8] {
        &self.buf[slot * UNIT..][..UNIT]
    }

    /// Reads the next units `candidates` gives (none at the end).
    fn fill(&mut self, raw: &Raw<'_>, candidates: &mut DataUnits<'_>) -> Result<(), ConvertError> {
        self.units.clear();
        while self.units.len() < BATCH {
            match candidates
                .next()
                .map_err(|e| ConvertError::io("finding the data of raw image", raw.path, e))?
            {
                Some(c) => self.units.push(c),
                None => break,
            }
        }
        read_batch(raw, &self.units, &mut self.buf)
    }

    /// Encodes each unit that is not all zero, in parallel.
    fn encode<St, T, Init, Enc>(
        &self,
        raw: &Raw<'_>,
        init: &Init,
        encode: &Enc,
    ) -> Result<Vec<Option<T>>, ConvertError>
    where
        T: Send,
        Init: Fn() -> St + Sync + Send,
        Enc: Fn(&mut St, u64, &[u8]) -> Result<T, String> + Sync + Send,
    {
        self.buf[..self.units.len() * UNIT]
            .par_chunks(UNIT)
            .enumerate()
            .map_init(init, |state, (i, data)| {
                if is_zero(data) {
                    Ok(None)
                } else {
                    encode(state, self.units[i], data)
                        .map(Some)
                        .map_err(|reason| (i, reason))
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|(i, reason)| ConvertError::Deflate {
                path: raw.path.to_path_buf(),
                offset: self.units[i] * UNIT_SIZE,
                reason,
            })
    }
}

/// The units that may hold data, ascending: those overlapping the raw
/// file's data extents, or all of them where the file system cannot tell
/// holes from data.
struct DataUnits<'a> {
    file: &'a File,
    size: u64,
    /// The next unit to return.
    next: u64,
    /// End (exclusive) of the units of the current data extent.
    end: u64,
}

impl DataUnits<'_> {
    fn next(&mut self) -> io::Result<Option<u64>> {
        loop {
            if self.next < self.end {
                self.next += 1;
                return Ok(Some(self.next - 1));
            }
            let from = self.next * UNIT_SIZE;
            match next_extent(self.file, from, self.size)? {
                None => return Ok(None),
                Some((start, end)) => {
                    self.next = self.next.max(start / UNIT_SIZE);
                    self.end = end.div_ceil(UNIT_SIZE);
                }
            }
        }
    }
}

/// The first data extent at or after byte `from`: `[start, end)`.
fn next_extent(file: &File, from: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    use rustix::io::Errno;
    if from >= size {
        return Ok(None);
    }
    let start = match seek(file, SeekFrom::Data(from)) {
        Ok(start) => start,
        // No data after `from`.
        Err(Errno::NXIO) => return Ok(None),
        // No SEEK_DATA here: everything is data.
        Err(Errno::INVAL | Errno::OPNOTSUPP) => return Ok(Some((from, size))),
        Err(e) => return Err(e.into()),
    };
    if start >= size {
        return Ok(None);
    }
    let end = seek(file, SeekFrom::Hole(start))?;
    Ok(Some((start, end.min(size))))
}

/// Reads the units `batch` (ascending) into consecutive units of `buf`,
/// one read per run of adjacent units; the part of the last unit past the
/// end of the disk reads as zero.
fn read_batch(raw: &Raw<'_>, batch: &[u64], buf: &mut [u8]) -> Result<(), ConvertError> {
    let mut k = 0;
    while k < batch.len() {
        let mut n = 1;
        while k + n < batch.len() && batch[k + n] == batch[k] + n as u64 {
            n += 1;
        }
        let offset = batch[k] * UNIT_SIZE;
        let len = (n as u64 * UNIT_SIZE).min(raw.size - offset) as usize;
        let run = &mut buf[k * UNIT..(k + n) * UNIT];
        raw.file
            .read_exact_at(&mut run[..len], offset)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ConvertError::Shrank {
                    path: raw.path.to_path_buf(),
                    size: raw.size,
                },
                _ => ConvertError::io("reading raw image", raw.path, e),
            })?;
        run[len..].fill(0);
        k += n;
    }
    Ok(())
}

fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_come_in_guest_order_and_zero_units_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.raw");
        let f = File::create(&path).unwrap();
        // 300 units (past two batches), data in units 0, 5, 130 (written
        // zeros there: read, found zero, skipped), 200, 299 (partial: the
        // disk ends 512 bytes into it).
        f.set_len(299 * UNIT_SIZE + 512).unwrap();
        f.write_all_at(b"a", 0).unwrap();
        f.write_all_at(b"b", 5 * UNIT_SIZE + 7).unwrap();
        f.write_all_at(&[0; 100], 130 * UNIT_SIZE).unwrap();
        f.write_all_at(b"c", 200 * UNIT_SIZE).unwrap();
        f.write_all_at(b"d", 299 * UNIT_SIZE + 511).unwrap();
        drop(f);
        let out = dir.path().join("out");
        let raw = Raw::open(&path, &out, "test", u64::MAX).unwrap();
        let mut seen = Vec::new();
        run(
            &raw,
            || (),
            |(), _, data: &[u8]| Ok(data.iter().find(|&&b| b != 0).copied().unwrap()),
            |unit, data, first| {
                assert_eq!(data.len(), UNIT);
                seen.push((unit, first));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            seen,
            [(0, b'a'), (5, b'b'), (200, b'c'), (299, b'd')],
            "{seen:?}"
        );
    }

    #[test]
    fn encode_failures_name_the_unit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.raw");
        let f = File::create(&path).unwrap();
        f.set_len(4 * UNIT_SIZE).unwrap();
        f.write_all_at(b"x", 3 * UNIT_SIZE).unwrap();
        drop(f);
        let raw = Raw::open(&path, &dir.path().join("o"), "test", u64::MAX).unwrap();
        let err = run(
            &raw,
            || (),
            |(), _, _: &[u8]| Err::<(), _>("broken".to_string()),
            |_, _, ()| Ok(()),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConvertError::Deflate { offset, .. } if *offset == 3 * UNIT_SIZE),
            "{err:?}"
        );
    }
}
