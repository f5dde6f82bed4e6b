//! Making the data map of an image file (`cairn_formats::disk_map`): the
//! runs the filesystem holds as data (`SEEK_DATA`/`SEEK_HOLE`), less the
//! 64 KiB chunks inside them that are zeros anyway, cut into pieces of at
//! most `MAX_EXTENT` bytes, each with its SHA-256. `cairn serve` serves
//! it; the installer copies what it lists.

use std::fs::File;
use std::io;

use rustix::fs::SeekFrom;
use std::os::unix::fs::FileExt;

use cairn_formats::disk_map::{DiskMap, Extent, MAX_EXTENT};
use cairn_formats::verity::to_hex;
use sha2::{Digest, Sha256};

/// Zero detection granularity (bytes).
pub const CHUNK: u64 = 64 << 10;

/// The next data offset at or after `from`, `None` when only a hole follows.
fn seek_data(file: &File, from: u64) -> io::Result<Option<u64>> {
    match rustix::fs::seek(file, SeekFrom::Data(from)) {
        Ok(at) => Ok(Some(at)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        // a filesystem without SEEK_DATA: everything is data
        Err(rustix::io::Errno::INVAL) => Ok(Some(from)),
        Err(e) => Err(e.into()),
    }
}

/// The next hole at or after `from` (the file's end counts as one).
fn seek_hole(file: &File, from: u64, size: u64) -> io::Result<u64> {
    match rustix::fs::seek(file, SeekFrom::Hole(from)) {
        Ok(at) => Ok(at.min(size)),
        Err(rustix::io::Errno::INVAL) => Ok(size),
        Err(e) => Err(e.into()),
    }
}

/// Closes the piece being hashed, if any.
fn close(cur: &mut Option<(u64, Sha256)>, end: u64, out: &mut Vec<Extent>) {
    if let Some((start, h)) = cur.take() {
        out.push(Extent {
            offset: start,
            length: end - start,
            sha256: to_hex(&h.finalize()),
        });
    }
}

/// The map of `file`.
pub fn map_file(file: &File) -> io::Result<DiskMap> {
    let size = file.metadata()?.len();
    let mut extents = Vec::new();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0u64;
    while pos < size {
        let Some(start) = seek_data(file, pos)?.filter(|s| *s < size) else {
            break;
        };
        let end = seek_hole(file, start, size)?;
        let mut cur: Option<(u64, Sha256)> = None;
        let mut off = start;
        while off < end {
            // chunks aligned to CHUNK, so that the same bytes give the same map
            let n = (CHUNK - off % CHUNK).min(end - off);
            let b = &mut buf[..n as usize];
            file.read_exact_at(b, off)?;
            if b.iter().all(|x| *x == 0) {
                close(&mut cur, off, &mut extents);
            } else {
                if cur.as_ref().is_some_and(|(s, _)| off + n - s > MAX_EXTENT) {
                    close(&mut cur, off, &mut extents);
                }
                cur.get_or_insert_with(|| (off, Sha256::new()))
                    .1
                    .update(&*b);
            }
            off += n;
        }
        close(&mut cur, end, &mut extents);
        pos = end.max(start + 1);
    }
    let map = DiskMap { size, extents };
    map.check()
        .map_err(|e| io::Error::other(format!("made a bad map: {e}")))?;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_zeros_are_left_out_and_runs_are_cut() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("disk.raw");
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.set_len(64 << 20).unwrap();
        // data at 0 (one block), written zeros at 1 MiB, 20 MiB of data at 8 MiB
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.write_all_at(&vec![0u8; 1 << 20], 1 << 20).unwrap();
        let big: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
        f.write_all_at(&big, 8 << 20).unwrap();
        f.sync_all().unwrap();
        let m = map_file(&f).unwrap();
        assert_eq!(m.size, 64 << 20);
        let spans: Vec<(u64, u64)> = m.extents.iter().map(|e| (e.offset, e.length)).collect();
        assert_eq!(
            spans,
            [(0, 4096), (8 << 20, MAX_EXTENT), (24 << 20, 4 << 20)],
            "{spans:?}"
        );
        assert_eq!(m.data_bytes(), 4096 + (20 << 20));
        // each hash is the bytes'
        let mut b = vec![0u8; 4 << 20];
        f.read_exact_at(&mut b, 24 << 20).unwrap();
        assert_eq!(m.extents[2].sha256, to_hex(&Sha256::digest(&b)));
        // the same file, the same map
        assert_eq!(map_file(&f).unwrap(), m);
    }

    #[test]
    fn an_empty_or_all_hole_file_has_no_extents() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("e");
        let f = File::create(&p).unwrap();
        assert!(map_file(&File::open(&p).unwrap())
            .unwrap()
            .extents
            .is_empty());
        f.set_len(10 << 20).unwrap();
        let m = map_file(&File::open(&p).unwrap()).unwrap();
        assert_eq!((m.size, m.extents.len()), (10 << 20, 0));
    }
}
