//! Downloads of files whose size and SHA-256 are known beforehand
//! ([`download`]): into a partial file that survives a cut and resumes with
//! `Range: bytes=N-` (also between the tries of a transient failure),
//! never longer than the expected size, moved into place only when size and
//! SHA-256 match; and the streamed SHA-256 of a file ([`sha256_file`]).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::retry::Retry;

/// One file to download.
#[derive(Debug, Clone, Copy)]
pub struct Resumable<'a> {
    pub url: &'a str,
    /// Where the bytes go while they arrive; what is there already (a cut
    /// download) is resumed. Must be on the file system of `dest`.
    pub partial: &'a Path,
    /// Where the file goes once verified (replaced if there).
    pub dest: &'a Path,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: &'a str,
    /// Extra request headers (name, value), sent with every try.
    pub headers: &'a [(&'a str, String)],
}

/// Downloads `d.url` into `d.partial` (its directory made if missing) and renames it to `d.dest` once its
/// size and SHA-256 match (then fsyncs the directory of `d.dest`).
///
/// A partial file is resumed with `Range: bytes=N-`; a 206 must start
/// there (`Content-Range`), else, as after a 416, the partial file is
/// deleted and the next try starts over ([`Error::Resume`], transient). A
/// partial file that is already complete is only verified. Transient
/// failures are retried per `retry`, each try going on from where the last
/// one stopped. More bytes than `d.size` ([`Error::SizeMismatch`]) or a
/// wrong SHA-256 ([`Error::HashMismatch`]) are final, and the partial
/// file is deleted, so a later call starts over.
///
/// `progress` is told, as they arrive, how many bytes of the file are in
/// the partial file (what a try resumes counts; after a restart the count
/// goes down again).
pub fn download(
    http: &ureq::Agent,
    retry: &Retry,
    d: &Resumable<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    if let Some(dir) = d.partial.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    retry.run(|| fetch_once(http, d, progress))?;
    let (sha, size) = sha256_file(d.partial)?;
    if size != d.size || sha != d.sha256 {
        let _ = fs::remove_file(d.partial);
        return Err(if size != d.size {
            Error::SizeMismatch {
                url: d.url.to_string(),
                expected: d.size,
                got: size,
            }
        } else {
            Error::HashMismatch {
                url: d.url.to_string(),
                expected: d.sha256.to_string(),
                actual: sha,
            }
        });
    }
    let dir = d.dest.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir {
        fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    fs::rename(d.partial, d.dest).map_err(Error::io(d.dest))?;
    let dir = dir.unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(Error::io(dir))
}

/// One request: appends to the partial file from where it ends (or starts
/// it anew on a 200), until it holds `d.size` bytes.
fn fetch_once(http: &ureq::Agent, d: &Resumable<'_>, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let (url, partial, size) = (d.url, d.partial, d.size);
    let mut have = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    if have > size {
        fs::remove_file(partial).map_err(Error::io(partial))?;
        have = 0;
    }
    if have == size {
        progress(have);
        return Ok(());
    }
    let mut req = http.get(url);
    for (name, value) in d.headers {
        req = req.header(*name, value);
    }
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| Error::from_ureq(url, e))?;
    let status = resp.status().as_u16();
    let restart = |message: String| -> Error {
        let _ = fs::remove_file(partial);
        Error::Resume {
            url: url.to_string(),
            message,
        }
    };
    let append = match status {
        206 if have > 0 => {
            let start = resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split_once('-'))
                .and_then(|(s, _)| s.parse::<u64>().ok());
            if start != Some(have) {
                return Err(restart(format!(
                    "asked for bytes from {have}, the server sent Content-Range {start:?}"
                )));
            }
            true
        }
        200 => false,
        // the partial file is not a prefix of the server's
        416 if have > 0 => return Err(restart("HTTP 416 for a resumed download".to_string())),
        status => {
            return Err(Error::Status {
                url: url.into(),
                status,
            })
        }
    };
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(partial)
        .map_err(Error::io(partial))?;
    let mut got = if append { have } else { 0 };
    progress(got);
    let mut body = resp.into_body();
    let mut reader = body.with_config().limit(size - got + 1).reader();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                // keep what arrived for the next try
                let _ = out.sync_data();
                return Err(Error::network(url, e));
            }
        };
        got += n as u64;
        if got > size {
            drop(out);
            let _ = fs::remove_file(partial);
            return Err(Error::SizeMismatch {
                url: url.to_string(),
                expected: size,
                got,
            });
        }
        out.write_all(&buf[..n]).map_err(Error::io(partial))?;
        progress(got);
    }
    out.sync_data().map_err(Error::io(partial))?;
    if got < size {
        return Err(Error::network(
            url,
            format!("connection ended after {got} of {size} bytes"),
        ));
    }
    Ok(())
}

/// The SHA-256 (lowercase hex) and size of a file, streamed. The holes of
/// a sparse file (a 4 GiB `disk.raw` is mostly holes) are hashed as the
/// zeros they read as, without reading them (`SEEK_DATA`/`SEEK_HOLE`;
/// where those are not supported every byte is read).
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(Error::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    let mut sparse = true;
    'file: loop {
        let mut read_to = u64::MAX;
        if sparse {
            match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) {
                Ok(data) => {
                    hash_zeros(&mut h, &mut buf, data - pos);
                    pos = data;
                    read_to =
                        rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(pos)).unwrap_or(u64::MAX);
                    // back to the data's start for the reads below
                    rustix::fs::seek(&f, rustix::fs::SeekFrom::Start(pos))
                        .map_err(|e| Error::io(path)(e.into()))?;
                }
                // no data after pos: the rest of the file is a hole
                Err(rustix::io::Errno::NXIO) => {
                    let end = rustix::fs::seek(&f, rustix::fs::SeekFrom::End(0))
                        .map_err(|e| Error::io(path)(e.into()))?;
                    hash_zeros(&mut h, &mut buf, end.saturating_sub(pos));
                    pos = end.max(pos);
                    break;
                }
                Err(_) => sparse = false,
            }
        }
        while pos < read_to {
            let want = usize::try_from(read_to - pos).map_or(buf.len(), |r| r.min(buf.len()));
            let n = f.read(&mut buf[..want]).map_err(Error::io(path))?;
            if n == 0 {
                break 'file;
            }
            h.update(&buf[..n]);
            pos += n as u64;
        }
    }
    Ok((hex::encode(h.finalize()), pos))
}

/// Feeds `n` zero bytes to `h`, using `buf` (zeroed here) as the source.
fn hash_zeros(h: &mut Sha256, buf: &mut [u8], mut n: u64) {
    if n == 0 {
        return;
    }
    buf.fill(0);
    while n > 0 {
        let k = usize::try_from(n).map_or(buf.len(), |n| n.min(buf.len()));
        h.update(&buf[..k]);
        n -= k as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quick;
    use crate::Timeouts;
    use cairn_testkit::{Reply, StaticHttp as Server};

    fn body(n: u32) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    fn sha(d: &[u8]) -> String {
        hex::encode(Sha256::digest(d))
    }

    struct Case {
        _t: tempfile::TempDir,
        partial: std::path::PathBuf,
        dest: std::path::PathBuf,
        url: String,
        size: u64,
        sha256: String,
    }

    impl Case {
        fn new(s: &Server, path: &str, want: &[u8]) -> Case {
            let t = tempfile::tempdir().unwrap();
            Case {
                partial: t.path().join("partial/x.part"),
                dest: t.path().join("done/x"),
                url: s.at(path),
                size: want.len() as u64,
                sha256: sha(want),
                _t: t,
            }
        }

        fn partial(&self, data: &[u8]) {
            fs::create_dir_all(self.partial.parent().unwrap()).unwrap();
            fs::write(&self.partial, data).unwrap();
        }

        /// Runs the download; returns the progress reports too.
        fn run(&self, tries: u32) -> (Result<()>, Vec<u64>) {
            let http = crate::agent("t", Timeouts::default());
            let mut seen = Vec::new();
            let r = download(
                &http,
                &quick(tries),
                &Resumable {
                    url: &self.url,
                    partial: &self.partial,
                    dest: &self.dest,
                    size: self.size,
                    sha256: &self.sha256,
                    headers: &[],
                },
                &mut |n| seen.push(n),
            );
            (r, seen)
        }
    }

    #[test]
    fn transient_failures_are_retried_and_a_cut_download_resumes() {
        let b = body(300_000);
        let s = Server::with_faults(vec![(
            "/f",
            b.clone(),
            vec![Reply::Status(503), Reply::Drop, Reply::Cut(100_000)],
        )]);
        let c = Case::new(&s, "/f", &b);
        let (r, seen) = c.run(5);
        r.unwrap();
        assert_eq!(fs::read(&c.dest).unwrap(), b);
        assert!(!c.partial.exists());
        // 503, reset, a third of the body, then the rest by Range
        assert_eq!(s.ranges("/f"), vec![None, None, None, Some(100_000)]);
        assert_eq!(seen.first(), Some(&0));
        assert_eq!(seen.last(), Some(&300_000));
        assert!(seen.contains(&100_000));
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    }

    #[test]
    fn a_partial_file_is_resumed_and_counted() {
        let b = body(200_000);
        let s = Server::with_faults(vec![("/f", b.clone(), vec![])]);
        let c = Case::new(&s, "/f", &b);
        c.partial(&b[..1000]);
        let (r, seen) = c.run(1);
        r.unwrap();
        assert_eq!(fs::read(&c.dest).unwrap(), b);
        assert_eq!(s.ranges("/f"), vec![Some(1000)]);
        assert_eq!(seen.first(), Some(&1000));

        // a complete partial file is only verified
        let c = Case::new(&s, "/f", &b);
        c.partial(&b);
        let (r, seen) = c.run(1);
        r.unwrap();
        assert_eq!(fs::read(&c.dest).unwrap(), b);
        assert_eq!(s.ranges("/f").len(), 1, "no request");
        assert_eq!(seen, vec![200_000]);
    }

    #[test]
    fn a_server_that_ignores_or_misplaces_the_range_starts_over() {
        let b = body(50_000);
        let s = Server::with_faults(vec![
            ("/ignore", b.clone(), vec![Reply::IgnoreRange]),
            ("/wrong", b.clone(), vec![Reply::WrongRange; 2]),
            ("/416", b.clone(), vec![Reply::Status(416); 2]),
        ]);
        // 200 to a Range: the partial file is written anew in the same try
        let c = Case::new(&s, "/ignore", &b);
        c.partial(&b[..10]);
        c.run(1).0.unwrap();
        assert_eq!(fs::read(&c.dest).unwrap(), b);
        assert_eq!(s.ranges("/ignore"), vec![Some(10)]);

        // 206 from another offset, or 416: deleted, the next try starts over
        for path in ["/wrong", "/416"] {
            let c = Case::new(&s, path, &b);
            c.partial(&b[..10]);
            let (r, _) = c.run(1);
            let e = r.unwrap_err();
            assert!(matches!(e, Error::Resume { .. }), "{e:?}");
            assert!(e.to_string().ends_with("; starting over"), "{e}");
            assert!(!c.partial.exists(), "{path}");
            c.partial(&b[..10]);
            c.run(2).0.unwrap();
            assert_eq!(fs::read(&c.dest).unwrap(), b);
        }
        assert_eq!(s.ranges("/wrong"), vec![Some(10), Some(10), None]);
        assert_eq!(s.ranges("/416"), vec![Some(10), Some(10), None]);
    }

    #[test]
    fn too_many_bytes_a_wrong_hash_or_a_404_are_final() {
        let b = body(10_000);
        let s = Server::with_faults(vec![
            ("/long", b.clone(), vec![]),
            ("/evil", b"evil".to_vec(), vec![]),
        ]);
        let c = Case::new(&s, "/long", &b[..9_000]);
        let e = c.run(5).0.unwrap_err();
        assert!(
            matches!(e, Error::SizeMismatch { expected: 9_000, got, .. } if got > 9_000),
            "{e:?}"
        );
        assert!(!c.partial.exists() && !c.dest.exists());
        assert_eq!(s.ranges("/long").len(), 1);

        let c = Case::new(&s, "/evil", b"good");
        let e = c.run(5).0.unwrap_err();
        assert!(matches!(e, Error::HashMismatch { .. }), "{e:?}");
        assert!(e.to_string().contains("/evil: SHA-256 "), "{e}");
        assert!(!c.partial.exists() && !c.dest.exists());
        assert_eq!(s.ranges("/evil").len(), 1);

        // a complete partial file with the wrong hash: deleted, refused
        let c = Case::new(&s, "/evil", b"good");
        c.partial(b"gold");
        let e = c.run(5).0.unwrap_err();
        assert!(matches!(e, Error::HashMismatch { .. }), "{e:?}");
        assert!(!c.partial.exists());
        assert_eq!(s.ranges("/evil").len(), 1, "no request");

        let c = Case::new(&s, "/gone", b"x");
        let e = c.run(5).0.unwrap_err();
        assert!(matches!(e, Error::Status { status: 404, .. }), "{e:?}");
        assert_eq!(s.ranges("/gone").len(), 1);
    }

    #[test]
    fn sha256_and_size_of_a_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        fs::write(&p, b"hello").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            (
                "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".to_string(),
                5
            )
        );
        let e = sha256_file(&t.path().join("nope")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
    }

    #[test]
    fn sparse_files_hash_as_the_bytes_they_read_as() {
        use std::io::{Seek, SeekFrom};
        let t = tempfile::tempdir().unwrap();
        // hole, data, hole, data across a buffer's edge, trailing hole;
        // a leading-data file; an all-hole file; an empty one
        let layouts: [&[(u64, &[u8])]; 4] = [
            &[(5 << 20, b"middle"), ((9 << 20) - 3, b"edge-of-a-megabyte")],
            &[(0, b"start"), (3 << 20, b"x")],
            &[],
            &[],
        ];
        let lens = [12 << 20, 4 << 20, 7 << 20, 0];
        for (i, (layout, len)) in layouts.iter().zip(lens).enumerate() {
            let p = t.path().join(format!("sparse-{i}"));
            let mut f = File::create(&p).unwrap();
            f.set_len(len).unwrap();
            for (at, bytes) in *layout {
                f.seek(SeekFrom::Start(*at)).unwrap();
                f.write_all(bytes).unwrap();
            }
            drop(f);
            let all = fs::read(&p).unwrap();
            let want = (hex::encode(Sha256::digest(&all)), all.len() as u64);
            assert_eq!(sha256_file(&p).unwrap(), want, "layout {i}");
        }
    }
}
