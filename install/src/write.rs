//! Writing an image's data to a disk: each extent of the map fetched from
//! a [`Source`], checked against its SHA-256 before it is written at its
//! offset, the disk flushed, its cached pages dropped, and every extent
//! read back from the disk and hashed again.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_formats::disk_map::{DiskMap, Extent};
use cairn_formats::verity::to_hex;
use sha2::{Digest, Sha256};

use crate::InstallError;

/// Where the image's bytes come from.
pub trait Source {
    /// The bytes of `e` (exactly `e.length`; the caller checks the hash).
    fn fetch(&mut self, e: &Extent) -> Result<Vec<u8>, InstallError>;
}

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub bytes: u64,
    pub extents: usize,
    pub write: Duration,
    pub verify: Duration,
}

/// Progress callback: bytes done of bytes total.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Writes `map`'s data from `source` to the device (or file) `dev`, whose
/// size must hold the image; then reads it back.
pub fn write_image(
    dev: &Path,
    map: &DiskMap,
    source: &mut dyn Source,
    progress: Progress<'_>,
) -> Result<Written, InstallError> {
    let io = |what: &'static str| {
        move |source: std::io::Error| InstallError::Disk {
            what,
            dev: dev.to_path_buf(),
            source,
        }
    };
    // O_EXCL on a block device: refused while anything has it open
    // exclusively (a mounted filesystem, a device-mapper target, swap)
    let mut opts = File::options();
    opts.read(true).write(true);
    if dev.starts_with("/dev") {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
    }
    let f = opts.open(dev).map_err(io("opening"))?;
    let size =
        rustix::fs::seek(&f, rustix::fs::SeekFrom::End(0)).map_err(|e| io("sizing")(e.into()))?;
    if size < map.size {
        return Err(InstallError::TooSmall {
            dev: dev.to_path_buf(),
            size,
            needed: map.size,
        });
    }
    let total = map.data_bytes();
    let t0 = Instant::now();
    let mut done = 0u64;
    for e in &map.extents {
        let data = source.fetch(e)?;
        check(e, &data, "as fetched")?;
        f.write_all_at(&data, e.offset).map_err(io("writing"))?;
        done += e.length;
        progress(done, total);
    }
    f.sync_all().map_err(io("flushing"))?;
    let write = t0.elapsed();
    // read back from the disk, not from the page cache
    let t1 = Instant::now();
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    let mut buf = Vec::new();
    for e in &map.extents {
        buf.resize(e.length as usize, 0);
        f.read_exact_at(&mut buf, e.offset)
            .map_err(io("reading back"))?;
        check(e, &buf, "read back from the disk")?;
    }
    Ok(Written {
        bytes: total,
        extents: map.extents.len(),
        write,
        verify: t1.elapsed(),
    })
}

fn check(e: &Extent, data: &[u8], when: &'static str) -> Result<(), InstallError> {
    let got = to_hex(&Sha256::digest(data));
    if data.len() as u64 != e.length || got != e.sha256 {
        return Err(InstallError::Mismatch {
            offset: e.offset,
            length: e.length,
            when,
            got: format!("{} bytes, sha256 {got}", data.len()),
        });
    }
    Ok(())
}

/// A source reading an image file (tests, and installing from a local
/// image folder).
pub struct FileSource(pub File);

impl Source for FileSource {
    fn fetch(&mut self, e: &Extent) -> Result<Vec<u8>, InstallError> {
        let mut b = vec![0u8; e.length as usize];
        self.0
            .read_exact_at(&mut b, e.offset)
            .map_err(|source| InstallError::Source {
                what: format!("reading bytes {}+{}", e.offset, e.length),
                message: source.to_string(),
            })?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::map_file;

    fn image(dir: &Path) -> (std::path::PathBuf, DiskMap) {
        let p = dir.join("disk.raw");
        let f = File::create(&p).unwrap();
        f.set_len(32 << 20).unwrap();
        f.write_all_at(b"EFI PART....", 512).unwrap();
        f.write_all_at(&vec![9u8; 3 << 20], 4 << 20).unwrap();
        f.write_all_at(b"end", (30 << 20) + 7).unwrap();
        let m = map_file(&File::open(&p).unwrap()).unwrap();
        (p, m)
    }

    #[test]
    fn the_data_lands_where_it_was_and_is_read_back() {
        let t = tempfile::tempdir().unwrap();
        let (img, map) = image(t.path());
        let target = t.path().join("target");
        let f = File::create(&target).unwrap();
        f.set_len(64 << 20).unwrap();
        // old data in a hole of the image stays (the installer does not wipe)
        f.write_all_at(b"old", 20 << 20).unwrap();
        let mut seen = Vec::new();
        let w = write_image(
            &target,
            &map,
            &mut FileSource(File::open(&img).unwrap()),
            &mut |d, t| seen.push((d, t)),
        )
        .unwrap();
        assert_eq!(w.bytes, map.data_bytes());
        assert_eq!(seen.last().unwrap().0, map.data_bytes());
        let a = std::fs::read(&img).unwrap();
        let b = std::fs::read(&target).unwrap();
        assert_eq!(&b[..20 << 20], &a[..20 << 20]);
        assert_eq!(&b[(20 << 20) + 3..32 << 20], &a[(20 << 20) + 3..]);
    }

    #[test]
    fn a_wrong_piece_or_a_small_disk_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (img, map) = image(t.path());
        let small = t.path().join("small");
        File::create(&small).unwrap().set_len(16 << 20).unwrap();
        let e = write_image(
            &small,
            &map,
            &mut FileSource(File::open(&img).unwrap()),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("16777216 bytes, the image needs 33554432"),
            "{e}"
        );

        struct Liar(FileSource);
        impl Source for Liar {
            fn fetch(&mut self, e: &Extent) -> Result<Vec<u8>, InstallError> {
                let mut b = self.0.fetch(e)?;
                b[0] ^= 1;
                Ok(b)
            }
        }
        let target = t.path().join("t");
        File::create(&target).unwrap().set_len(32 << 20).unwrap();
        let e = write_image(
            &target,
            &map,
            &mut Liar(FileSource(File::open(&img).unwrap())),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("as fetched"), "{e}");
        // nothing was written
        assert!(std::fs::read(&target).unwrap().iter().all(|b| *b == 0));
    }
}
