//! Downloads and the content-addressed cache: every `.deb` is stored under
//! its SHA-256 and trusted only after its hash matched; a partial download
//! is kept as `*.part`, resumed with a Range request and hashed in full
//! before it is renamed into place.
//!
//! Owns HTTP (ureq), retries of transient failures, parallelism and
//! progress bars for downloads. Does not know what the hashes mean: callers
//! pass the expected ones.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar};
use sha2::{Digest, Sha256};

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
}

/// The retry policy of `cairn build`'s downloads: the agent's
/// (`cairn_updater::fetch::Retry`), so both retry the same failures the
/// same way.
pub use cairn_updater::fetch::Retry;

impl cairn_updater::fetch::Transient for FetchError {
    /// A failure that may pass by itself (DNS, refused or reset
    /// connections, timeouts, a server's 5xx, 408 or 429), as apt retries
    /// them. A 404, a wrong hash or a local I/O error is final.
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Network { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }

    fn gave_up(self, tries: u32, secs: u64) -> Self {
        FetchError::GaveUp {
            tries,
            secs,
            last: Box::new(self),
        }
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
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
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

/// An HTTP client with the settings cairn uses everywhere.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

fn net_err(url: &str, e: ureq::Error) -> FetchError {
    FetchError::Network {
        url: url.to_string(),
        message: e.to_string(),
    }
}

/// GET a (small) URL into memory, retrying transient failures.
pub fn get_bytes(client: &Client, url: &str) -> Result<Vec<u8>, FetchError> {
    client.retry.run(|| get_bytes_once(&client.agent, url))
}

fn get_bytes_once(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, FetchError> {
    let resp = agent.get(url).call().map_err(|e| net_err(url, e))?;
    match resp.status().as_u16() {
        200 => {}
        404 => return Err(FetchError::NotFound { url: url.into() }),
        status => {
            return Err(FetchError::Status {
                url: url.into(),
                status,
            })
        }
    }
    resp.into_body()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .map_err(|e| net_err(url, e))
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
    let mut first = true;
    client.retry.run(|| {
        let r = fetch_once(&client.agent, cache, d, bar, first);
        first = false;
        r
    })
}

/// One try; `first` says whether bytes of a leftover `.part` still need to
/// be counted on the progress bar (a later try counted them as they came).
fn fetch_once(
    agent: &ureq::Agent,
    cache: &Cache,
    d: &Download,
    bar: &ProgressBar,
    first: bool,
) -> Result<PathBuf, FetchError> {
    let part = cache.part_path(&d.sha256);
    let mut have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if have >= d.size && d.size > 0 {
        // a complete but unverified leftover: check it below from scratch
        have = 0;
        let _ = fs::remove_file(&part);
    }
    let mut req = agent.get(&d.url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| net_err(&d.url, e))?;
    let status = resp.status().as_u16();
    let append = match status {
        206 if have > 0 => true,
        200 => false,
        404 => return Err(FetchError::NotFound { url: d.url.clone() }),
        status => {
            return Err(FetchError::Status {
                url: d.url.clone(),
                status,
            })
        }
    };
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(&part)
        .map_err(io_err(&part))?;
    if append && first {
        bar.inc(have);
    }
    let mut body = resp.into_body();
    let mut reader = body.as_reader();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).map_err(|e| FetchError::Network {
            url: d.url.clone(),
            message: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io_err(&part))?;
        bar.inc(n as u64);
    }
    out.sync_all().map_err(io_err(&part))?;
    drop(out);
    let actual = sha256_file(&part)?;
    if actual != d.sha256 {
        let _ = fs::remove_file(&part);
        return Err(FetchError::HashMismatch {
            label: d.label.clone(),
            url: d.url.clone(),
            expected: d.sha256.clone(),
            actual,
        });
    }
    let dest = cache.blob_path(&d.sha256);
    let dir = dest.parent().expect("blob has a parent");
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::rename(&part, &dest).map_err(io_err(&dest))?;
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
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    fn sha(d: &[u8]) -> String {
        hex::encode(Sha256::digest(d))
    }

    #[test]
    fn fetches_verifies_caches_and_resumes() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (base, _) = flaky(vec![
            ("/pool/a.deb", body.clone(), vec![]),
            ("/pool/bad.deb", b"evil".to_vec(), vec![]),
        ]);
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

    /// How a flaky server answers one request.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        /// close the connection without a word (a reset)
        Drop,
        /// answer with this status
        Status(u16),
        /// announce the whole body, send half, close
        Truncate,
    }

    /// A loopback HTTP server whose paths fail their first requests as
    /// `faults` says, then serve `body` (with `Range: bytes=N-`). Returns
    /// the base URL and the log of (path, range) requests.
    /// Each request's path and `Range` start.
    type Log = std::sync::Arc<Mutex<Vec<(String, Option<usize>)>>>;

    fn flaky(files: Vec<(&'static str, Vec<u8>, Vec<Fault>)>) -> (String, Log) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    continue;
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut range = None;
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).is_err() || l.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = l.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range = v.trim().trim_end_matches('-').parse::<usize>().ok();
                    }
                }
                let n = {
                    let mut log = seen.lock().unwrap();
                    log.push((path.clone(), range));
                    log.iter().filter(|(p, _)| *p == path).count()
                };
                let Some((_, body, faults)) = files.iter().find(|(p, _, _)| *p == path) else {
                    let _ = write!(
                        s,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    continue;
                };
                let body = &body[range.unwrap_or(0)..];
                let status = if range.is_some() {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                match faults.get(n - 1) {
                    Some(Fault::Drop) => drop(s),
                    Some(Fault::Status(code)) => {
                        let _ = write!(s, "HTTP/1.1 {code} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                    Some(Fault::Truncate) => {
                        let _ = write!(
                            s,
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = s.write_all(&body[..body.len() / 2]);
                    }
                    None => {
                        let _ = write!(
                            s,
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = s.write_all(body);
                    }
                }
            }
        });
        (format!("http://{addr}"), log)
    }

    fn quick(tries: u32) -> Retry {
        Retry {
            tries,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
        }
    }

    fn requests(log: &Mutex<Vec<(String, Option<usize>)>>, path: &str) -> Vec<Option<usize>> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, r)| *r)
            .collect()
    }

    #[test]
    fn transient_failures_are_retried_and_a_cut_download_resumes() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let (base, log) = flaky(vec![
            (
                "/pool/a.deb",
                body.clone(),
                vec![Fault::Status(503), Fault::Drop, Fault::Truncate],
            ),
            (
                "/dists/InRelease",
                b"signed".to_vec(),
                vec![Fault::Status(502), Fault::Drop],
            ),
        ]);
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
            requests(&log, "/pool/a.deb"),
            vec![None, None, None, Some(body.len() / 2)]
        );
        let client = Client::new(quick(3));
        let got = get_bytes(&client, &format!("{base}/dists/InRelease")).unwrap();
        assert_eq!(got, b"signed");
        assert_eq!(requests(&log, "/dists/InRelease").len(), 3);
    }

    #[test]
    fn the_last_try_says_how_many_were_made() {
        let (base, log) = flaky(vec![(
            "/pool/busy.deb",
            b"x".to_vec(),
            vec![Fault::Status(503); 10],
        )]);
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
        assert_eq!(requests(&log, "/pool/busy.deb").len(), 3);
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
        let (base, log) = flaky(vec![("/pool/bad.deb", b"evil".to_vec(), vec![])]);
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
        assert_eq!(requests(&log, "/pool/bad.deb").len(), 1);
        let gone = Download {
            url: format!("{base}/pool/gone.deb"),
            ..bad
        };
        let e = fetch_all(&cache, &[gone], 1, quick(5), &mp).unwrap_err();
        assert!(matches!(e, FetchError::NotFound { .. }), "{e:?}");
        assert_eq!(requests(&log, "/pool/gone.deb").len(), 1);
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
