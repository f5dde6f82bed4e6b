//! The Debian archives a build reads from: which mirror (flag, definition,
//! or this machine's apt sources), fetching and verifying `InRelease`
//! against the keys in `images/keys/`, fetching the `Packages` indices that
//! `InRelease` vouches for, and resolving the definition into a [`Lock`].
//!
//! Owns the chain of trust from the archive key to each `.deb` hash; the
//! hashes it returns are what [`crate::fetch`] checks downloads against.

use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use cairn_debian::index::PackageIndex;
use cairn_debian::release::{self, Keyring, Release};
use cairn_debian::resolve::{self, Request, ResolveOptions};
use cairn_debian::sources;

use crate::definition::Definition;
use crate::fetch::{self, Cache};
use crate::lock::{self, Lock, LockedPackage};

/// One archive (a suite on a mirror).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// `main`, `updates` or `security`: the name the lock records.
    pub name: String,
    /// Base URL, e.g. `http://mirror.example/debian`.
    pub base: String,
    /// Suite as it appears under `dists/`, e.g. `bookworm-security`.
    pub suite: String,
}

/// Where packages come from for this build.
#[derive(Debug, Clone)]
pub struct Mirrors {
    pub archives: Vec<Archive>,
    /// How the main mirror was chosen, for the log.
    pub chosen_by: String,
}

impl Mirrors {
    pub fn base_of(&self, archive: &str) -> Option<&str> {
        self.archives
            .iter()
            .find(|a| a.name == archive)
            .map(|a| a.base.as_str())
    }
}

fn trim(u: &str) -> String {
    u.trim_end_matches('/').to_string()
}

/// Choose mirrors: `--mirror`, else the definition's `mirror`, else the
/// machine's apt sources under `root` (`/` in production). Updates and
/// security suites come from the apt sources when they list them.
pub fn choose_mirrors(flag: Option<&str>, def: &Definition, root: &Path) -> Result<Mirrors> {
    let system = sources::read_system_sources(root).with_context(|| {
        format!(
            "reading apt sources under {}",
            root.join("etc/apt").display()
        )
    })?;
    let sys = sources::choose_mirror(&system, &def.suite);
    let (main, chosen_by) = if let Some(m) = flag {
        // cairn fetches over HTTP only (apt's file:, cdrom: and mirror+
        // methods are not spoken; the definition's mirror is checked when it
        // is loaded, apt entries of other kinds are skipped): say so here
        // rather than fail later inside the HTTP client
        if !(m.starts_with("http://") || m.starts_with("https://")) {
            bail!(
                "the main archive's mirror {:?} (from --mirror) is not an http:// or https:// \
                 URL: cairn fetches packages over HTTP; pass --mirror http://... (a local \
                 mirror can be served by any web server)",
                trim(m)
            );
        }
        (trim(m), "--mirror".to_string())
    } else if let Some(m) = &def.mirror {
        (trim(m), "the definition's mirror".to_string())
    } else if let Some(c) = &sys {
        (trim(&c.main), "this machine's apt sources".to_string())
    } else {
        bail!(
            "no Debian mirror for suite {}: pass --mirror URL, set `mirror:` in the definition, \
             or add a deb source for {} to /etc/apt/sources.list.d/",
            def.suite,
            def.suite
        );
    };
    let mut archives = vec![Archive {
        name: "main".into(),
        base: main.clone(),
        suite: def.suite.clone(),
    }];
    if let Some(c) = &sys {
        if let Some((uri, suite)) = &c.updates {
            // the updates suite lives on the main mirror when one was given
            let base = if chosen_by.starts_with("this machine") {
                trim(uri)
            } else {
                main.clone()
            };
            archives.push(Archive {
                name: "updates".into(),
                base,
                suite: suite.clone(),
            });
        }
    }
    let security = match (
        &def.security_mirror,
        sys.as_ref().and_then(|c| c.security.clone()),
    ) {
        (Some(m), sys_sec) => Some((
            trim(m),
            sys_sec
                .map(|s| s.1)
                .unwrap_or_else(|| format!("{}-security", def.suite)),
        )),
        (None, Some((uri, suite))) => Some((trim(&uri), suite)),
        (None, None) => None,
    };
    if let Some((base, suite)) = security {
        archives.push(Archive {
            name: "security".into(),
            base,
            suite,
        });
    }
    Ok(Mirrors {
        archives,
        chosen_by,
    })
}

/// Load every `*.asc` key under `dir`.
pub fn load_keyring(dir: &Path) -> Result<Keyring> {
    let mut keys = Vec::new();
    let rd = std::fs::read_dir(dir)
        .with_context(|| format!("reading archive keys from {}", dir.display()))?;
    let mut paths: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.extension().is_some_and(|e| e == "asc") {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            keys.push((p.display().to_string(), text));
        }
    }
    if keys.is_empty() {
        bail!(
            "no archive keys (*.asc) in {}: the Debian archive keys are needed to verify InRelease",
            dir.display()
        );
    }
    Keyring::from_armored(&keys)
        .with_context(|| format!("loading archive keys from {}", dir.display()))
}

fn decompress(path: &str, data: &[u8]) -> Result<String> {
    let mut out = String::new();
    if path.ends_with(".xz") {
        liblzma::read::XzDecoder::new(data).read_to_string(&mut out)
    } else if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(data).read_to_string(&mut out)
    } else {
        out = String::from_utf8(data.to_vec()).context("index is not UTF-8")?;
        Ok(out.len())
    }
    .with_context(|| format!("decompressing {path}"))?;
    Ok(out)
}

/// Fetch and verify one archive's InRelease and its Packages indices for
/// `components`, adding them to `index` with origin `origin`.
fn load_archive(
    client: &fetch::Client,
    cache: &Cache,
    keyring: &Keyring,
    archive: &Archive,
    def: &Definition,
    origin: usize,
    index: &mut PackageIndex,
) -> Result<Release> {
    let (components, arch) = (&def.components, def.architecture.as_str());
    let url = format!("{}/dists/{}/InRelease", archive.base, archive.suite);
    let data = fetch::get_bytes(client, &url)
        .with_context(|| format!("fetching the {} archive's InRelease", archive.name))?;
    let rel = release::verify_inrelease(&data, keyring, &url, SystemTime::now())
        .with_context(|| format!("verifying {url}"))?;
    for comp in components {
        let mut done = false;
        for ext in [".xz", ".gz", ""] {
            let path = format!("{comp}/binary-{arch}/Packages{ext}");
            let Some(entry) = rel.files.get(&path) else {
                continue;
            };
            let text = match cache.get_verified(&entry.sha256, &path)? {
                Some(p) => std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
                None => {
                    let by_hash = format!("{comp}/binary-{arch}/by-hash/SHA256/{}", entry.sha256);
                    let rel_path = if rel.acquire_by_hash {
                        by_hash
                    } else {
                        path.clone()
                    };
                    let u = format!("{}/dists/{}/{}", archive.base, archive.suite, rel_path);
                    let body = match fetch::get_bytes(client, &u) {
                        Err(fetch::FetchError::NotFound { .. }) if rel.acquire_by_hash => {
                            let u = format!("{}/dists/{}/{}", archive.base, archive.suite, path);
                            fetch::get_bytes(client, &u)?
                        }
                        r => r?,
                    };
                    rel.check(&path, &body).with_context(|| {
                        format!("checking {path} of {} against its InRelease", archive.suite)
                    })?;
                    cache.put(&entry.sha256, &body)?;
                    body
                }
            };
            let label = format!("{}/{}", archive.suite, path);
            let text = decompress(&label, &text)?;
            let n = index
                .add_packages_file(&text, origin, &label)
                .with_context(|| format!("parsing {label}"))?;
            tracing::info!(archive = %archive.name, index = %label, packages = n, "loaded index");
            done = true;
            break;
        }
        if !done {
            bail!(
                "{}/dists/{}/InRelease lists no Packages index for {comp}/binary-{arch}",
                archive.base,
                archive.suite
            );
        }
    }
    Ok(rel)
}

/// Resolve `def` against the archives and produce a lock.
pub fn resolve_lock(
    def: &Definition,
    mirrors: &Mirrors,
    keys_dir: &Path,
    cache: &Cache,
    retry: fetch::Retry,
) -> Result<Lock> {
    let keyring = load_keyring(keys_dir)?;
    let client = fetch::Client::new(retry);
    let mut index = PackageIndex::new();
    let mut epoch = 0;
    for (origin, a) in mirrors.archives.iter().enumerate() {
        let rel = load_archive(&client, cache, &keyring, a, def, origin, &mut index)?;
        if let Some(d) = rel
            .date_time()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        {
            epoch = epoch.max(d.as_secs());
        }
    }
    let wanted_by = "the definition's packages".to_string();
    let mut roots: Vec<Request> = def
        .packages
        .iter()
        .map(|p| Request {
            name: p.clone(),
            constraint: None,
            wanted_by: wanted_by.clone(),
        })
        .collect();
    roots.push(Request {
        name: def.kernel.clone(),
        constraint: None,
        wanted_by: "the definition's kernel".into(),
    });
    let opts = ResolveOptions {
        architectures: vec![def.architecture.clone(), "all".into()],
        include_essential: true,
        include_recommends: false,
    };
    let res = resolve::resolve(&index, &roots, &opts)?;
    let mut packages: Vec<LockedPackage> = res
        .packages
        .iter()
        .map(|r| {
            let p = index.get(r.id);
            LockedPackage {
                name: p.name.clone(),
                version: p.version.to_string(),
                architecture: p.architecture.clone(),
                archive: mirrors.archives[p.origin].name.clone(),
                filename: p.filename.clone(),
                size: p.size,
                sha256: p.sha256.clone(),
            }
        })
        .collect();
    let excluded: Vec<&String> = def.exclude.iter().collect();
    if let Some(p) = packages.iter().find(|p| excluded.contains(&&p.name)) {
        bail!("package {} is excluded by the definition but is required (see its reverse dependencies)", p.name);
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Lock {
        format: lock::FORMAT,
        suite: def.suite.clone(),
        requested: lock::requested(def),
        source_date_epoch: epoch,
        packages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> Definition {
        crate::definition::parse(
            "t.yaml",
            "name: t\nversion: 1\nsuite: bookworm\nkernel: k\n",
        )
        .unwrap()
    }

    fn root_with(sources: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/apt/sources.list.d")).unwrap();
        std::fs::write(
            d.path().join("etc/apt/sources.list.d/debian.sources"),
            sources,
        )
        .unwrap();
        d
    }

    const SYS: &str = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn mirrors_from_system_sources() {
        let root = root_with(SYS);
        let m = choose_mirrors(None, &def(), root.path()).unwrap();
        assert_eq!(m.chosen_by, "this machine's apt sources");
        assert_eq!(
            m.archives,
            [
                Archive {
                    name: "main".into(),
                    base: "http://mirror.example/debian".into(),
                    suite: "bookworm".into()
                },
                Archive {
                    name: "updates".into(),
                    base: "http://mirror.example/debian".into(),
                    suite: "bookworm-updates".into()
                },
                Archive {
                    name: "security".into(),
                    base: "http://security.example/debian-security".into(),
                    suite: "bookworm-security".into()
                },
            ]
        );
    }

    #[test]
    fn flag_beats_definition_beats_system() {
        let root = root_with(SYS);
        let mut d = def();
        d.mirror = Some("http://def.example/debian/".into());
        let m = choose_mirrors(None, &d, root.path()).unwrap();
        assert_eq!(m.archives[0].base, "http://def.example/debian");
        assert_eq!(
            m.archives[1].base, "http://def.example/debian",
            "updates follow the chosen mirror"
        );
        let m = choose_mirrors(Some("http://flag.example/debian"), &d, root.path()).unwrap();
        assert_eq!(m.archives[0].base, "http://flag.example/debian");
        assert_eq!(m.chosen_by, "--mirror");
    }

    #[test]
    fn mirrors_other_than_http_are_refused_naming_where_they_came_from() {
        let root = root_with(
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: trixie\nComponents: main\n",
        );
        let e = choose_mirrors(Some("file:///mnt/cdrom/"), &def(), root.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("main archive's mirror \"file:///mnt/cdrom\" (from --mirror)"),
            "{e}"
        );
        // an http mirror is fine
        let m = choose_mirrors(Some("http://127.0.0.1:9/debian"), &def(), root.path()).unwrap();
        assert_eq!(m.base_of("main"), Some("http://127.0.0.1:9/debian"));
    }

    #[test]
    fn no_mirror_anywhere_is_a_clear_error() {
        let root = root_with(
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: trixie\nComponents: main\n",
        );
        let e = choose_mirrors(None, &def(), root.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no Debian mirror for suite bookworm") && e.contains("--mirror"),
            "{e}"
        );
    }
}
