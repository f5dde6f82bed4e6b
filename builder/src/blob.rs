//! File bodies of the root tree: small ones held in memory, larger ones
//! spilled once to a scratch file and read back by extent when needed, so
//! that the builder's memory does not grow with the size of the image.
//!
//! A [`Spill`] is one unlinked temporary file (it vanishes with the last
//! handle, even after a crash) that extraction appends to from several
//! threads: each body reserves its extent under a short lock and is then
//! written with positioned writes. A [`Blob`] is a cheap handle (an `Arc`)
//! on either kind of body; hard links share one `Blob`.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Bodies at most this long stay in memory: most files of a Debian system
/// are small, and reading them back one by one would cost more than they
/// weigh.
pub const SPILL_THRESHOLD: u64 = 16 * 1024;

/// An append-only scratch file for file bodies.
pub struct Spill {
    file: File,
    next: Mutex<u64>,
}

impl fmt::Debug for Spill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spill")
            .field(
                "bytes",
                &*self.next.lock().unwrap_or_else(|e| e.into_inner()),
            )
            .finish()
    }
}

impl Spill {
    /// A scratch file in `dir` (created if missing), unlinked at once.
    pub fn new_in(dir: &Path) -> io::Result<Arc<Spill>> {
        std::fs::create_dir_all(dir)?;
        Ok(Arc::new(Spill {
            file: tempfile::tempfile_in(dir)?,
            next: Mutex::new(0),
        }))
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        *self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cut the scratch file short, as a full disk or a damaged scratch
    /// file would leave it: reads of the bodies past `len` then fail.
    #[cfg(test)]
    pub(crate) fn truncate_for_test(&self, len: u64) {
        self.file.set_len(len).unwrap();
    }

    /// Copy exactly `len` bytes from `r` to a new extent; returns its offset.
    fn append(&self, r: &mut dyn Read, len: u64) -> io::Result<u64> {
        let offset = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let o = *next;
            *next += len;
            o
        };
        let mut buf = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(buf.len() as u64) as usize;
            r.read_exact(&mut buf[..want])?;
            self.file.write_all_at(&buf[..want], offset + done)?;
            done += want as u64;
        }
        Ok(offset)
    }
}

enum Body {
    Mem(Vec<u8>),
    Spilled {
        spill: Arc<Spill>,
        offset: u64,
        len: u64,
    },
}

/// A regular file's content. Cloning shares it (that is how hard links are
/// kept); [`Blob::id`] tells shared bodies apart from equal ones.
#[derive(Clone)]
pub struct Blob(Arc<Body>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Body::Mem(d) => write!(f, "Blob({} bytes in memory)", d.len()),
            Body::Spilled { offset, len, .. } => {
                write!(f, "Blob({len} bytes spilled at {offset})")
            }
        }
    }
}

/// Two blobs are equal when their contents are (shared ones trivially).
impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.len() == other.len() && self.bytes() == other.bytes())
    }
}

impl Eq for Blob {}

impl From<Vec<u8>> for Blob {
    fn from(d: Vec<u8>) -> Blob {
        Blob(Arc::new(Body::Mem(d)))
    }
}

impl Blob {
    /// A body held in memory.
    pub fn new(data: impl Into<Vec<u8>>) -> Blob {
        Blob::from(data.into())
    }

    /// Read exactly `len` bytes from `r`: into memory when small or when
    /// there is no scratch file, else into `spill`.
    pub fn read_from(r: &mut dyn Read, len: u64, spill: Option<&Arc<Spill>>) -> io::Result<Blob> {
        match spill {
            Some(spill) if len > SPILL_THRESHOLD => {
                let offset = spill.append(r, len)?;
                Ok(Blob(Arc::new(Body::Spilled {
                    spill: spill.clone(),
                    offset,
                    len,
                })))
            }
            _ => {
                let mut d = Vec::with_capacity(len as usize);
                r.take(len).read_to_end(&mut d)?;
                if d.len() as u64 != len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file body ends after {} of {len} bytes", d.len()),
                    ));
                }
                Ok(Blob::from(d))
            }
        }
    }

    pub fn len(&self) -> u64 {
        match &*self.0 {
            Body::Mem(d) => d.len() as u64,
            Body::Spilled { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the body lives in the scratch file.
    pub fn is_spilled(&self) -> bool {
        matches!(&*self.0, Body::Spilled { .. })
    }

    /// Identity of the shared body: equal for hard links, distinct for
    /// separately made bodies even when their bytes are equal.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// The whole content: borrowed when in memory, read back otherwise.
    pub fn try_bytes(&self) -> io::Result<Cow<'_, [u8]>> {
        match &*self.0 {
            Body::Mem(d) => Ok(Cow::Borrowed(d.as_slice())),
            Body::Spilled { len, .. } => {
                let mut d = vec![0u8; *len as usize];
                self.read_exact_at(&mut d, 0)?;
                Ok(Cow::Owned(d))
            }
        }
    }

    /// [`Blob::try_bytes`] for callers that cannot go on without the
    /// content: the scratch file is the builder's own, and failing to read
    /// it back is as fatal as running out of memory.
    pub fn bytes(&self) -> Cow<'_, [u8]> {
        match self.try_bytes() {
            Ok(b) => b,
            Err(e) => panic!("reading a file body back from the build's scratch file: {e}"),
        }
    }

    /// Fill `buf` from `offset` within the body.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past a file body"))?;
        match &*self.0 {
            Body::Mem(d) => {
                buf.copy_from_slice(&d[offset as usize..end as usize]);
                Ok(())
            }
            Body::Spilled {
                spill, offset: at, ..
            } => spill.file.read_exact_at(buf, at + offset),
        }
    }

    /// A reader over the content that does not copy it up front.
    pub fn reader(&self) -> BlobReader {
        BlobReader {
            blob: self.clone(),
            pos: 0,
        }
    }
}

/// Reads a [`Blob`] from its start; see [`Blob::reader`].
pub struct BlobReader {
    blob: Blob,
    pos: u64,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.blob.len() - self.pos).min(buf.len() as u64) as usize;
        self.blob.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bodies_stay_in_memory_large_ones_spill() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::new_in(dir.path()).unwrap();
        let small = Blob::read_from(&mut &b"hello"[..], 5, Some(&spill)).unwrap();
        assert!(!small.is_spilled());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let big = Blob::read_from(&mut &data[..], data.len() as u64, Some(&spill)).unwrap();
        let big2 = Blob::read_from(&mut &data[..], data.len() as u64, Some(&spill)).unwrap();
        assert!(big.is_spilled());
        assert_eq!(spill.len(), 2 * data.len() as u64);
        assert_eq!(big.bytes(), &data[..]);
        assert_eq!(big2.bytes(), &data[..]);
        let mut back = Vec::new();
        big.reader().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        let mut mid = [0u8; 10];
        big.read_exact_at(&mut mid, 1000).unwrap();
        assert_eq!(mid, data[1000..1010]);
        assert!(big.read_exact_at(&mut mid, data.len() as u64 - 5).is_err());
        // equality by content, identity by sharing
        assert_eq!(big, big2);
        assert_ne!(big.id(), big2.id());
        assert_eq!(big.clone().id(), big.id());
        // the scratch file is already unlinked
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn short_input_is_an_error() {
        assert!(Blob::read_from(&mut &b"abc"[..], 4, None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::new_in(dir.path()).unwrap();
        assert!(Blob::read_from(&mut &[0u8; 100][..], 100_000, Some(&spill)).is_err());
    }
}
