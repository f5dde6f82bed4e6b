//! Downloads and the content-addressed cache: every `.deb` is stored under
//! its SHA-256 and trusted only after its hash matched; a partial download
//! is kept as `*.part`, resumed with a Range request and hashed in full
//! before it is renamed into place.
//!
//! Owns the cache, parallelism and progress bars for downloads; HTTP,
//! retries of transient failures, resumption and verification are
//! cairn-fetch's (the agent's too). Does not know what the hashes mean:
//! callers pass the expected ones.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: not found on the mirror (HTTP 404)")]
    NotFound { url: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    #[error(
        "{label}: downloaded {url} has SHA-256 {actual}, expected {expected}; the file was deleted"
    )]
    HashMismatch {
        label: String,
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{label}: cached file {path} has SHA-256 {actual}, expected {expected}: it was tampered with or damaged, so it was deleted; run the build again to download it anew")]
    CacheCorrupt {
        label: String,
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{last} (gave up after {tries} tries in {secs} s)")]
    GaveUp {
        tries: u32,
        secs: u64,
        last: Box<FetchError>,
    },
    /// Any other final failure of a download (a malformed URL, a body
    /// larger than allowed, more bytes than the index says).
    #[error(transparent)]
    Http(cairn_fetch::Error),
}

/// The retry policy of `cairn build`'s downloads: cairn-fetch's, which the
/// agent uses too, so both retry the same failures the same way.
pub use cairn_fetch::Retry;

impl FetchError {
    /// cairn-fetch's error for the download of `label` (the package name;
    /// `None` for index files, which have no hash check there).
    fn from_fetch(e: cairn_fetch::Error, label: Option<&str>) -> FetchError {
        use cairn_fetch::Error as E;
        match e {
            E::Status { url, status: 404 } => FetchError::NotFound { url },
            E::Status { url, status } => FetchError::Status { url, status },
            E::Network { url, message } => FetchError::Network { url, message },
            E::Resume { url, message } => FetchError::Network {
                url,
                message: format!("{message}; starting over"),
            },
            E::HashMismatch {
                url,
                expected,
                actual,
            } => FetchError::HashMismatch {
                label: label.unwrap_or(&url).to_string(),
                url,
                expected,
                actual,
            },
            E::Io { path, source } => FetchError::Io {
                path: path.display().to_string(),
                source,
            },
            E::GaveUp { tries, secs, last } => FetchError::GaveUp {
                tries,
                secs,
                last: Box::new(FetchError::from_fetch(*last, label)),
            },
            e => FetchError::Http(e),
        }
    }
}

impl From<cairn_fetch::Error> for FetchError {
    fn from(e: cairn_fetch::Error) -> FetchError {
        FetchError::from_fetch(e, None)
    }
}

/// The HTTP agent and the retry policy every download uses.
#[derive(Debug, Clone)]
pub struct Client {
    pub agent: ureq::Agent,
    pub retry: Retry,
}

impl Client {
    pub fn new(retry: Retry) -> Client {
        Client {
            agent: agent(),
            retry,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One file to fetch.
#[derive(Debug, Clone)]
pub struct Download {
    pub url: String,
    pub sha256: String,
    pub size: u64,
    /// What the file is, for messages (the package name).
    pub label: String,
}

/// The content-addressed cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("cairn");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/cairn")
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    Ok(cairn_fetch::sha256_file(path)?.0)
}

impl Cache {
    pub fn open(root: &Path) -> Result<Cache, FetchError> {
        for sub in ["sha256", "partial"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cache of compressed squashfs blocks ([`crate::blockcache`]).
    pub fn blocks_dir(&self) -> PathBuf {
        self.root.join("blocks")
    }

    /// Where a build keeps its scratch file of file bodies (unlinked as
    /// soon as it is made; see [`crate::blob::Spill`]).
    pub fn scratch_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where a blob with this hash lives (whether or not it is there).
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(&sha256[..2]).join(sha256)
    }

    fn part_path(&self, sha256: &str) -> PathBuf {
        self.root.join("partial").join(format!("{sha256}.part"))
    }

    /// The cached file for `sha256`, re-hashed before it is trusted. A file
    /// whose hash does not match is deleted and reported.
    pub fn get_verified(&self, sha256: &str, label: &str) -> Result<Option<PathBuf>, FetchError> {
        let p = self.blob_path(sha256);
        if !p.exists() {
            return Ok(None);
        }
        let actual = sha256_file(&p)?;
        if actual != sha256 {
            let _ = fs::remove_file(&p);
            return Err(FetchError::CacheCorrupt {
                label: label.to_string(),
                path: p.display().to_string(),
                expected: sha256.to_string(),
                actual,
            });
        }
        Ok(Some(p))
    }

    /// Store bytes already verified by the caller (e.g. an index checked
    /// against InRelease) under their hash.
    pub fn put(&self, sha256: &str, data: &[u8]) -> Result<PathBuf, FetchError> {
        let p = self.blob_path(sha256);
        let dir = p.parent().expect("blob has a parent");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tmp = self.part_path(&format!("{sha256}.put"));
        fs::write(&tmp, data).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &p).map_err(io_err(&p))?;
        Ok(p)
    }
}

/// The HTTP client of `cairn build`.
pub fn agent() -> ureq::Agent {
    cairn_fetch::agent(
        concat!("cairn/", env!("CARGO_PKG_VERSION")),
        cairn_fetch::Timeouts {
            connect: Some(Duration::from_secs(15)),
            recv_body: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    )
}

/// GET a (small) URL into memory, retrying transient failures.
pub fn get_bytes(client: &Client, url: &str) -> Result<Vec<u8>, FetchError> {
    Ok(cairn_fetch::get(
        &client.agent,
        &client.retry,
        url,
        &[],
        1 << 30,
    )?)
}

/// Fetch one file into the cache, resuming a partial download (also
/// between the tries of a transient failure). The file is moved into place
/// only when its SHA-256 matches.
pub fn fetch_one(
    client: &Client,
    cache: &Cache,
    d: &Download,
    bar: &ProgressBar,
) -> Result<PathBuf, FetchError> {
    if let Some(p) = cache.get_verified(&d.sha256, &d.label)? {
        bar.inc(d.size);
        return Ok(p);
    }
    let dest = cache.blob_path(&d.sha256);
    // the bar counts the bytes of this file once, a resumed part included
    let mut counted = 0;
    cairn_fetch::download(
        &client.agent,
        &client.retry,
        &cairn_fetch::Resumable {
            url: &d.url,
            partial: &cache.part_path(&d.sha256),
            dest: &dest,
            size: d.size,
            sha256: &d.sha256,
            headers: &[],
        },
        &mut |n| {
            if n > counted {
                bar.inc(n - counted);
                counted = n;
            }
        },
    )
    .map_err(|e| FetchError::from_fetch(e, Some(&d.label)))?;
    Ok(dest)
}

/// Fetch every download with `jobs` parallel workers; results in input
/// order. The first error (after its retries) stops handing out new work
/// and is returned.
pub fn fetch_all(
    cache: &Cache,
    downloads: &[Download],
    jobs: usize,
    retry: Retry,
    progress: &MultiProgress,
) -> Result<Vec<PathBuf>, FetchError> {
    let total: u64 = downloads.iter().map(|d| d.size).sum();
    let bar = crate::progress::bytes_bar(progress, total, "fetch");
    let client = Client::new(retry);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<PathBuf, FetchError>>>> =
        Mutex::new((0..downloads.len()).map(|_| None).collect());
    let failed = std::sync::atomic::AtomicBool::new(false);
    let cached = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = downloads.get(i) else { break };
                bar.set_message(d.label.clone());
                if cache.blob_path(&d.sha256).exists() {
                    cached.fetch_add(1, Ordering::Relaxed);
                }
                let r = fetch_one(&client, cache, d, &bar);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                results.lock().expect("no poisoning")[i] = Some(r);
            });
        }
    });
    let cached = cached.into_inner();
    crate::progress::finish(
        progress,
        &bar,
        Some(format!(
            "{} packages, {:.1} MiB ({} from the cache)",
            downloads.len(),
            total as f64 / 1048576.0,
            cached
        )),
    );
    let mut out = Vec::with_capacity(downloads.len());
    for r in results.into_inner().expect("no poisoning") {
        match r {
            Some(Ok(p)) => out.push(p),
            Some(Err(e)) => return Err(e),
            None => {} // not started because another download failed
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_testkit::{Reply, StaticHttp};
    use sha2::{Digest, Sha256};
    use std::net::TcpListener;

    fn sha(d: &[u8]) -> String {
        hex::encode(Sha256::digest(d))
    }

    #[test]
    fn fetches_verifies_caches_and_resumes() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let srv = StaticHttp::with_faults(vec![
            ("/pool/a.deb", body.clone(), vec![]),
            ("/pool/bad.deb", b"evil".to_vec(), vec![]),
        ]);
        let base = srv.url();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = Download {
            url: format!("{base}/pool/a.deb"),
            sha256: sha(&body),
            size: body.len() as u64,
            label: "a".into(),
        };
        // an interrupted earlier download left the first 1000 bytes
        fs::write(cache.part_path(&d.sha256), &body[..1000]).unwrap();
        let mp = MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
        let got = fetch_all(&cache, std::slice::from_ref(&d), 2, Retry::default(), &mp).unwrap();
        assert_eq!(fs::read(&got[0]).unwrap(), body);
        assert!(!cache.part_path(&d.sha256).exists());
        // warm cache: a second fetch needs no server
        let offline = Download {
            url: "http://127.0.0.1:1/nowhere".into(),
            ..d.clone()
        };
        assert_eq!(
            fetch_all(&cache, &[offline], 1, Retry::default(), &mp).unwrap()[0],
            got[0]
        );

        // wrong bytes from the mirror: refused and not kept
        let bad = Download {
            url: format!("{base}/pool/bad.deb"),
            sha256: sha(b"good"),
            size: 4,
            label: "bad".into(),
        };
        let e =
            fetch_all(&cache, std::slice::from_ref(&bad), 1, Retry::default(), &mp).unwrap_err();
        assert!(matches!(e, FetchError::HashMismatch { .. }), "{e}");
        assert!(e.to_string().contains("bad: downloaded"), "{e}");
        assert!(!cache.blob_path(&bad.sha256).exists());
        assert!(!cache.part_path(&bad.sha256).exists());

        // missing on the mirror
        let gone = Download {
            url: format!("{base}/pool/gone.deb"),
            ..bad
        };
        let e = fetch_all(&cache, &[gone], 1, Retry::default(), &mp).unwrap_err();
        assert!(matches!(e, FetchError::NotFound { .. }), "{e}");
    }

    fn quick(tries: u32) -> Retry {
        Retry {
            tries,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
        }
    }

    #[test]
    fn transient_failures_are_retried_and_a_cut_download_resumes() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let srv = StaticHttp::with_faults(vec![
            (
                "/pool/a.deb",
                body.clone(),
                vec![Reply::Status(503), Reply::Drop, Reply::Cut(150_000)],
            ),
            (
                "/dists/InRelease",
                b"signed".to_vec(),
                vec![Reply::Status(502), Reply::Drop],
            ),
        ]);
        let base = srv.url();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = Download {
            url: format!("{base}/pool/a.deb"),
            sha256: sha(&body),
            size: body.len() as u64,
            label: "a".into(),
        };
        let mp = MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
        let got = fetch_all(&cache, std::slice::from_ref(&d), 2, quick(5), &mp).unwrap();
        assert_eq!(fs::read(&got[0]).unwrap(), body);
        // 503, reset, half the body, then the other half by Range
        assert_eq!(
            srv.ranges("/pool/a.deb"),
            vec![None, None, None, Some(body.len() / 2)]
        );
        let client = Client::new(quick(3));
        let got = get_bytes(&client, &format!("{base}/dists/InRelease")).unwrap();
        assert_eq!(got, b"signed");
        assert_eq!(srv.ranges("/dists/InRelease").len(), 3);
    }

    #[test]
    fn the_last_try_says_how_many_were_made() {
        let srv = StaticHttp::with_faults(vec![(
            "/pool/busy.deb",
            b"x".to_vec(),
            vec![Reply::Status(503); 10],
        )]);
        let base = srv.url();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = Download {
            url: format!("{base}/pool/busy.deb"),
            sha256: sha(b"x"),
            size: 1,
            label: "busy".into(),
        };
        let mp = MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
        let e = fetch_all(&cache, std::slice::from_ref(&d), 1, quick(3), &mp).unwrap_err();
        assert!(matches!(e, FetchError::GaveUp { tries: 3, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("/pool/busy.deb: HTTP 503") && msg.contains("gave up after 3 tries"),
            "{msg}"
        );
        assert_eq!(srv.ranges("/pool/busy.deb").len(), 3);
        assert!(!cache.blob_path(&d.sha256).exists());

        // nobody listening: connection refused, tried as often
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/dists/InRelease", closed.local_addr().unwrap());
        drop(closed);
        let e = get_bytes(&Client::new(quick(2)), &url).unwrap_err();
        assert!(matches!(e, FetchError::GaveUp { tries: 2, .. }), "{e:?}");
        assert!(e.to_string().contains("gave up after 2 tries"), "{e}");
    }

    #[test]
    fn a_404_or_a_wrong_hash_is_not_retried() {
        let srv = StaticHttp::with_faults(vec![("/pool/bad.deb", b"evil".to_vec(), vec![])]);
        let base = srv.url();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let mp = MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());
        let bad = Download {
            url: format!("{base}/pool/bad.deb"),
            sha256: sha(b"good"),
            size: 4,
            label: "bad".into(),
        };
        let e = fetch_all(&cache, std::slice::from_ref(&bad), 1, quick(5), &mp).unwrap_err();
        assert!(matches!(e, FetchError::HashMismatch { .. }), "{e:?}");
        assert_eq!(srv.ranges("/pool/bad.deb").len(), 1);
        let gone = Download {
            url: format!("{base}/pool/gone.deb"),
            ..bad
        };
        let e = fetch_all(&cache, &[gone], 1, quick(5), &mp).unwrap_err();
        assert!(matches!(e, FetchError::NotFound { .. }), "{e:?}");
        assert_eq!(srv.ranges("/pool/gone.deb").len(), 1);
    }

    #[test]
    fn tampered_cache_entry_is_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let h = sha(b"hello");
        let p = cache.put(&h, b"hello").unwrap();
        assert_eq!(cache.get_verified(&h, "x").unwrap(), Some(p.clone()));
        fs::write(&p, b"hellO").unwrap();
        let e = cache.get_verified(&h, "pkg").unwrap_err();
        assert!(e.to_string().contains("pkg: cached file"), "{e}");
        assert!(!p.exists());
    }
}
