//! `cairn build` end to end: definition -> lock -> verified `.deb` files ->
//! tree -> fixups -> `rootfs.squashfs` + `manifest.json`, and with
//! `--sign` the signed update bundle `OUT/update/` (see `cairn_formats::channel::bundle`).
//!
//! Owns the order of the steps, progress reporting and the output folder;
//! each step's logic lives in its own module.

use cairn_formats::image_dir::DiskFormat;
use cairn_formats::{channel, image_dir};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::MultiProgress;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::artifacts;
use crate::debfile::{self, InstalledPackage};
use crate::definition::{self, Loaded};
use crate::disk_formats::{self, Appliance, Formats};
use crate::fetch::{self, Cache, Download};
use crate::fixups;
use crate::lock::Lock;
use crate::progress::{bar, finish, spinner};
use crate::repo::{self, Mirrors};
use crate::squashfs;
use crate::tree::Tree;

/// Everything `cairn build` takes from its command line.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub definition: PathBuf,
    pub out: PathBuf,
    pub mirror: Option<String>,
    pub cache: Option<PathBuf>,
    pub update_lock: bool,
    pub jobs: usize,
    pub zstd_level: u32,
    /// Root of the filesystem whose apt sources pick the mirror (`/`).
    pub sources_root: PathBuf,
    /// Where the Debian archive keys are; default `<definition dir>/keys`.
    pub keys: Option<PathBuf>,
    pub progress: MultiProgress,
    /// Rebuild even when the output folder is current.
    pub force: bool,
    /// How downloads from the mirror retry transient failures.
    pub retry: fetch::Retry,
}

/// `cairn build --sign KEY [--channel NAME] [--valid-for DURATION]`: the
/// update bundle written into `OUT/update/` after the artifacts.
#[derive(Debug, Clone)]
pub struct SignOptions {
    /// The secret key file (`update.key` from `cairn keygen`).
    pub key: PathBuf,
    /// The bundle's channel; default the definition's `update.channel`,
    /// else `stable`.
    pub channel: Option<String>,
    /// How long the manifest stays valid after `created`.
    pub valid_for: std::time::Duration,
}

/// `--valid-for` when not given: 30 days.
pub const DEFAULT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(30 * 86400);

/// The update bundle's folder under the output.
pub const BUNDLE_DIR: &str = channel::BUNDLE_DIR;

/// `manifest.json` and its parts: the image folder's contract.
pub use cairn_formats::image_dir::{Artifact, Manifest, ManifestPackage};

/// What a build did, for the summary line and for tests.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    pub manifest: Manifest,
    pub out: PathBuf,
    pub lock_path: PathBuf,
    pub lock_written: bool,
    pub tree_entries: usize,
    pub tree_bytes: u64,
    pub fixups: Vec<fixups::Report>,
    /// The output was already current: nothing was rebuilt.
    pub up_to_date: bool,
    /// The signed update bundle, when the build was asked to sign.
    pub bundle: Option<channel::Bundle>,
    /// Disk image files (`disk.qcow2`, ...) this run made, also when the
    /// rest of the folder was current.
    pub formats_made: Vec<String>,
}

/// The lock to build from: the existing one when it still matches the
/// definition (and `--update-lock` was not given), else a fresh resolution.
fn lock_for(
    loaded: &Loaded,
    mirrors: &Mirrors,
    opts: &BuildOptions,
    cache: &Cache,
) -> Result<(Lock, bool)> {
    let path = loaded.lock_path();
    if path.exists() && !opts.update_lock {
        let lock = Lock::read(&path)?;
        lock.check_matches(&path, &loaded.def)?;
        tracing::info!(lock = %path.display(), packages = lock.packages.len(), "using lock");
        return Ok((lock, false));
    }
    let keys = opts
        .keys
        .clone()
        .unwrap_or_else(|| loaded.dir().join("keys"));
    let sp = spinner(
        &opts.progress,
        "resolve",
        &format!("{} from {}", loaded.def.suite, mirrors.chosen_by),
    );
    let lock = repo::resolve_lock(&loaded.def, mirrors, &keys, cache, opts.retry)
        .with_context(|| format!("resolving the packages of {}", loaded.path.display()))?;
    finish(
        &opts.progress,
        &sp,
        Some(format!("{} packages", lock.packages.len())),
    );
    lock.write(&path)?;
    tracing::info!(lock = %path.display(), packages = lock.packages.len(), "wrote lock");
    Ok((lock, true))
}

/// Writes `OUT/manifest.json` aside and renames it into place.
fn write_manifest(out: &Path, manifest: &Manifest) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest)? + "\n";
    write_artifact(out, image_dir::MANIFEST, text.as_bytes())
}

fn write_artifact(out: &Path, name: &str, data: &[u8]) -> Result<()> {
    let p = out.join(name);
    let tmp = out.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::rename(&tmp, &p))
        .with_context(|| format!("writing {}", p.display()))
}

/// The manifest entry of the file `p`: its name, SHA-256 and size.
pub(crate) fn sha256_and_size(p: &Path) -> Result<Artifact> {
    Ok(Artifact {
        name: p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        sha256: fetch::sha256_file(p)?,
        size: std::fs::metadata(p)
            .with_context(|| format!("reading {}", p.display()))?
            .len(),
    })
}

fn hash_dir(h: &mut Sha256, root: &Path, dir: &Path) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let meta =
            std::fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
        let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        h.update(format!(
            "{rel}\0{:o}\0",
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions())
        ));
        if meta.is_dir() {
            hash_dir(h, root, &p)?;
        } else if meta.file_type().is_symlink() {
            h.update(std::fs::read_link(&p)?.as_os_str().as_encoded_bytes());
        } else {
            h.update(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?);
        }
    }
    Ok(())
}

/// The fingerprint of a build's inputs; see [`Manifest::inputs`].
fn inputs_fingerprint(loaded: &Loaded, opts: &BuildOptions, epoch: u64) -> Result<String> {
    let mut h = Sha256::new();
    h.update(loaded.text.as_bytes());
    let lock = loaded.lock_path();
    h.update(std::fs::read(&lock).with_context(|| format!("reading {}", lock.display()))?);
    if let Some(o) = loaded.overlay_dir() {
        hash_dir(&mut h, &o, &o)?;
    }
    for k in &loaded.update_keys {
        h.update(format!("update-key {}\0", k.name));
        h.update(&k.data);
    }
    // the code that turns these inputs into bytes (see build.rs)
    h.update(env!("CAIRN_SOURCE_HASH"));
    h.update(format!("zstd={} epoch={epoch}", opts.zstd_level));
    Ok(hex::encode(h.finalize()))
}

/// `SOURCE_DATE_EPOCH` from the environment, else the lock's (the newest
/// archive's `Date`).
fn source_date_epoch(lock: &Lock) -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(lock.source_date_epoch)
}

/// The fingerprint `build` keys its output on (`manifest.json`'s
/// `inputs`): the definition, the lock (resolved or re-resolved first, as
/// `build` would), the overlay, the update keys, cairn's own sources and
/// the compression settings. Builds with equal fingerprints write the same
/// bytes, so it can name a cache of built images.
pub fn fingerprint(opts: &BuildOptions) -> Result<String> {
    let loaded = definition::load(&opts.definition)?;
    let cache_dir = opts.cache.clone().unwrap_or_else(fetch::default_cache_dir);
    let cache = Cache::open(&cache_dir)
        .with_context(|| format!("opening the cache at {}", cache_dir.display()))?;
    let mirrors = repo::choose_mirrors(opts.mirror.as_deref(), &loaded.def, &opts.sources_root)?;
    let (lock, _) = lock_for(&loaded, &mirrors, opts, &cache)?;
    inputs_fingerprint(&loaded, opts, source_date_epoch(&lock))
}

/// Is this manifest entry one of the disk formats made from `disk.raw`
/// (`disk.qcow2`, `disk.vmdk`, `disk.ova`, `disk.box`)?
fn is_derived_format(a: &Artifact) -> bool {
    DiskFormat::of_file(&a.name).is_some_and(|f| f != DiskFormat::Raw)
}

/// The manifest of `out` if it was built from `inputs` and its artifacts
/// are intact (the disk formats made from `disk.raw` are checked, and
/// made again if need be, by [`disk_formats::write`]).
fn current_output(out: &Path, inputs: &str) -> Option<Manifest> {
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(out.join(image_dir::MANIFEST)).ok()?).ok()?;
    if m.inputs != inputs {
        return None;
    }
    for a in m.artifacts.iter().filter(|a| !is_derived_format(a)) {
        let p = out.join(&a.name);
        if std::fs::metadata(&p).ok()?.len() != a.size || fetch::sha256_file(&p).ok()? != a.sha256 {
            return None;
        }
    }
    Some(m)
}

/// Unpack every package into a fresh merged-/usr tree. Decompression runs
/// in parallel, file bodies above a few KiB going to a scratch file in
/// `scratch`; insertion is sequential in lock order so the result does not
/// depend on timing.
pub fn assemble(
    lock: &Lock,
    debs: &[PathBuf],
    scratch: &Path,
    mp: &MultiProgress,
) -> Result<(Tree, Vec<InstalledPackage>)> {
    let spill = crate::blob::Spill::new_in(scratch)
        .with_context(|| format!("making a scratch file in {}", scratch.display()))?;
    let b = bar(mp, lock.packages.len() as u64, "unpack");
    let staged: Vec<_> = lock
        .packages
        .par_iter()
        .zip(debs.par_iter())
        .map(|(p, path)| {
            let s = debfile::stage_deb(&p.name, path, Some(&spill))
                .with_context(|| format!("reading {}", path.display()))?;
            b.inc(1);
            Ok::<_, anyhow::Error>(s)
        })
        .collect::<Result<_>>()?;
    finish(mp, &b, None);
    tracing::info!(spilled = spill.len(), "file bodies in the scratch file");
    let mut tree = Tree::new_merged_usr();
    let mut installed = Vec::with_capacity(staged.len());
    for (p, s) in lock.packages.iter().zip(staged) {
        let mut control_files = s.control_files;
        let control = control_files.remove("control").unwrap_or_default();
        let files = debfile::insert_staged(s.data, &mut tree)?;
        installed.push(InstalledPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            architecture: p.architecture.clone(),
            control,
            control_files,
            files,
        });
    }
    Ok((tree, installed))
}

/// The signing key, channel and validity of a `--sign` build, checked
/// before anything is built.
struct Signer {
    key: channel::SecretKey,
    channel: String,
    validity_secs: i64,
}

impl Signer {
    fn new(sign: &SignOptions, loaded: &Loaded) -> Result<Signer> {
        let key = channel::SecretKey::load(&sign.key)
            .with_context(|| format!("reading the update signing key {}", sign.key.display()))?;
        let channel = sign
            .channel
            .clone()
            .unwrap_or_else(|| loaded.channel().to_string());
        if !definition::is_channel_name(&channel) {
            bail!("--channel {channel:?} is not a channel name: expected at most 128 letters, digits, '.', '_', '-', '~' (not starting with '.')");
        }
        let validity_secs = i64::try_from(sign.valid_for.as_secs()).unwrap_or(i64::MAX);
        if validity_secs <= 0 {
            bail!("--valid-for must be at least one second");
        }
        Ok(Signer {
            key,
            channel,
            validity_secs,
        })
    }
}

/// `created` of a bundle: SOURCE_DATE_EPOCH when set, else now.
fn bundle_created() -> Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?}: expected seconds since the epoch")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)),
    }
}

/// Removes `OUT/update/`, so that a bundle never sits beside artifacts it
/// was not made from.
fn remove_bundle(out: &Path) -> Result<()> {
    let dir = out.join(BUNDLE_DIR);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {
            tracing::info!(dir = %dir.display(), "removed the previous update bundle");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            Err(e).with_context(|| format!("removing the stale update bundle {}", dir.display()))
        }
    }
}

/// Writes `OUT/update/` when signing, else removes a previous one.
fn finish_bundle(
    opts: &BuildOptions,
    manifest: &Manifest,
    signer: Option<&Signer>,
) -> Result<Option<channel::Bundle>> {
    let Some(s) = signer else {
        remove_bundle(&opts.out)?;
        return Ok(None);
    };
    let sp = spinner(
        &opts.progress,
        "bundle",
        &format!(
            "{} {} for channel {}",
            manifest.name, manifest.version, s.channel
        ),
    );
    let out = &opts.out;
    let bundle = channel::write_bundle(
        out,
        &channel::BundleInput {
            name: &manifest.name,
            version: &manifest.version,
            channel: &s.channel,
            rootfs: &out.join(image_dir::ROOTFS),
            kernel: &out.join(image_dir::KERNEL),
            initrd: &out.join(image_dir::INITRD),
            created: bundle_created()?,
            validity_secs: s.validity_secs,
            verity: manifest
                .verity
                .as_ref()
                .map(|r| r.to_verity())
                .transpose()
                .context("the verity parameters in manifest.json")?,
        },
        &s.key,
    )
    .with_context(|| {
        format!(
            "writing the update bundle {}",
            out.join(BUNDLE_DIR).display()
        )
    })?;
    finish(&opts.progress, &sp, None);
    tracing::info!(
        dir = %bundle.dir.display(),
        version = %bundle.manifest.version,
        channel = %bundle.manifest.channel,
        key = %bundle.key_id,
        expires = %bundle.manifest.expires,
        "wrote signed update bundle"
    );
    Ok(Some(bundle))
}

/// Run `cairn build` (no update bundle; a previous `OUT/update/` is removed).
pub fn build(opts: &BuildOptions) -> Result<BuildSummary> {
    build_signed(opts, None)
}

/// Run `cairn build`, and with `sign` write the signed update bundle
/// `OUT/update/` after the artifacts (also when the output was current).
/// The disk image is `disk.raw` only; see [`build_with`].
pub fn build_signed(opts: &BuildOptions, sign: Option<&SignOptions>) -> Result<BuildSummary> {
    build_with(opts, &Formats::default(), sign)
}

/// The disk formats of an output folder that is otherwise current: made
/// where missing or damaged, removed where not asked for; the manifest is
/// rewritten when its list changed.
fn refresh_formats(
    opts: &BuildOptions,
    formats: &Formats,
    manifest: &mut Manifest,
) -> Result<Vec<String>> {
    let have: Vec<Artifact> = manifest
        .artifacts
        .iter()
        .filter(|a| is_derived_format(a))
        .cloned()
        .collect();
    let written = disk_formats::write(
        &opts.out,
        formats,
        &have,
        &Appliance {
            name: &manifest.name,
            version: &manifest.version,
            mtime: manifest.source_date_epoch,
        },
        &opts.progress,
    )?;
    if written.artifacts != have {
        let mut artifacts: Vec<Artifact> = Vec::new();
        for a in manifest.artifacts.drain(..) {
            if is_derived_format(&a) {
                continue;
            }
            let after = a.name == image_dir::DISK;
            artifacts.push(a);
            if after {
                artifacts.extend(written.artifacts.iter().cloned());
            }
        }
        manifest.artifacts = artifacts;
        write_manifest(&opts.out, manifest)?;
    }
    Ok(written.made)
}

/// Run `cairn build` writing the disk image in `formats` (`--format`;
/// `disk.raw` always), and with `sign` the signed update bundle.
pub fn build_with(
    opts: &BuildOptions,
    formats: &Formats,
    sign: Option<&SignOptions>,
) -> Result<BuildSummary> {
    let t0 = Instant::now();
    let loaded = definition::load(&opts.definition)?;
    let def = &loaded.def;
    let signer = sign.map(|s| Signer::new(s, &loaded)).transpose()?;
    let cache_dir = opts.cache.clone().unwrap_or_else(fetch::default_cache_dir);
    let cache = Cache::open(&cache_dir)
        .with_context(|| format!("opening the cache at {}", cache_dir.display()))?;
    let mirrors = repo::choose_mirrors(opts.mirror.as_deref(), def, &opts.sources_root)?;
    tracing::info!(mirror = %mirrors.archives[0].base, chosen_by = %mirrors.chosen_by, "mirror");
    let (lock, lock_written) = lock_for(&loaded, &mirrors, opts, &cache)?;

    let epoch = source_date_epoch(&lock);
    let inputs = inputs_fingerprint(&loaded, opts, epoch)?;
    if !opts.force {
        if let Some(mut manifest) = current_output(&opts.out, &inputs) {
            tracing::info!(out = %opts.out.display(), "output is up to date");
            let formats_made = refresh_formats(opts, formats, &mut manifest)?;
            let bundle = finish_bundle(opts, &manifest, signer.as_ref())?;
            return Ok(BuildSummary {
                formats_made,
                bundle,
                manifest,
                out: opts.out.clone(),
                lock_path: loaded.lock_path(),
                lock_written,
                tree_entries: 0,
                tree_bytes: 0,
                fixups: Vec::new(),
                up_to_date: true,
            });
        }
    }

    let downloads: Vec<Download> = lock
        .packages
        .iter()
        .map(|p| {
            let base = mirrors.base_of(&p.archive).with_context(|| {
                format!(
                    "{} in {} comes from the {} archive, which this machine's apt sources do not name; \
                     pass --mirror or run with --update-lock",
                    p.name,
                    loaded.lock_path().display(),
                    p.archive
                )
            })?;
            Ok(Download {
                url: format!("{base}/{}", p.filename),
                sha256: p.sha256.clone(),
                size: p.size,
                label: format!("{} {}", p.name, p.version),
            })
        })
        .collect::<Result<_>>()?;
    let debs = match fetch::fetch_all(&cache, &downloads, opts.jobs, opts.retry, &opts.progress) {
        Err(fetch::FetchError::NotFound { url }) => {
            let pkg = downloads
                .iter()
                .find(|d| d.url == url)
                .map(|d| d.label.clone())
                .unwrap_or_default();
            bail!(
                "{pkg} from {} is gone from the mirror ({url} answers 404): mirrors drop superseded versions; \
                 run with --update-lock to re-resolve",
                loaded.lock_path().display()
            );
        }
        r => r.context("fetching packages")?,
    };
    tracing::info!(packages = debs.len(), "packages verified");

    let (mut tree, installed) = assemble(&lock, &debs, &cache.scratch_dir(), &opts.progress)?;
    let overlay = loaded.overlay_dir();
    let ctx = fixups::Context {
        def,
        packages: &installed,
        source_date_epoch: epoch,
        overlay: overlay.as_deref(),
        update_keys: &loaded.update_keys,
    };
    let reports = fixups::apply_all(&mut tree, &ctx).context("applying fixups")?;
    for r in &reports {
        tracing::info!(fixup = r.name, "{}", r.summary);
    }

    crate::containers::add_all(&mut tree, &def.container_images, epoch)
        .context("making the preloaded container images")?;
    let kernel = artifacts::take_kernel(&mut tree)?;
    let ipxe = artifacts::take_ipxe(&mut tree)?;
    artifacts::ensure_mount_points(&mut tree)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    // the artifacts change below: an old bundle must not outlive them
    remove_bundle(&opts.out)?;
    let ipxe_dir = opts.out.join(image_dir::IPXE_DIR);
    if ipxe.is_empty() {
        let _ = std::fs::remove_dir_all(&ipxe_dir);
    } else {
        std::fs::create_dir_all(&ipxe_dir)
            .with_context(|| format!("creating {}", ipxe_dir.display()))?;
        for (name, data) in &ipxe {
            write_artifact(&ipxe_dir, name, data)?;
        }
    }
    let rootfs = opts.out.join(image_dir::ROOTFS);
    let tmp = opts.out.join(".rootfs.squashfs.tmp");
    let mtime = u32::try_from(epoch).unwrap_or(u32::MAX);
    // The initramfs needs only the tree: it is made beside the squashfs,
    // whose serial pass (backhand's writer) leaves a core free.
    let (squashed, initrd) = std::thread::scope(|s| {
        let initrd = s.spawn(|| -> Result<Vec<u8>> {
            let sp = spinner(
                &opts.progress,
                "initrd",
                &format!("kernel {}", kernel.release),
            );
            let cpio = artifacts::initramfs_cpio(&tree, &kernel, def, mtime)?;
            let initrd = artifacts::compress(&cpio)?;
            write_artifact(&opts.out, image_dir::KERNEL, &kernel.image)?;
            write_artifact(&opts.out, image_dir::INITRD, &initrd)?;
            finish(&opts.progress, &sp, None);
            Ok(initrd)
        });
        let sp = spinner(
            &opts.progress,
            "squashfs",
            &format!("{} entries", tree.len()),
        );
        let squashed = squashfs::write_in_cache(
            &tree,
            &tmp,
            squashfs::Options {
                mtime,
                zstd_level: opts.zstd_level,
                ..Default::default()
            },
            &cache.blocks_dir(),
        )
        .map(|_| {
            let size = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
            finish(
                &opts.progress,
                &sp,
                Some(format!(
                    "{} entries -> rootfs.squashfs, {:.1} MiB",
                    tree.len(),
                    size as f64 / 1048576.0
                )),
            );
        });
        let initrd = initrd.join().expect("the initramfs thread does not panic");
        (squashed, initrd)
    });
    squashed?;
    let initrd = initrd?;
    // the dm-verity tree after the squashfs, in the same file (see
    // cairn_formats::verity); its salt derives from the build's inputs, so
    // the same inputs give the same bytes
    let verity = if def.verity {
        let sp = spinner(&opts.progress, "verity", "hash tree");
        let t = Instant::now();
        let v = cairn_verity::append_tree(&tmp, &cairn_verity::derive_salt(inputs.as_bytes()))
            .context("appending the dm-verity hash tree to the root image")?;
        tracing::info!(
            root_hash = %v.root_hash_hex(),
            data_blocks = v.data_blocks,
            seconds = t.elapsed().as_secs_f64(),
            "verity tree appended"
        );
        finish(
            &opts.progress,
            &sp,
            Some(format!("root hash {}", v.root_hash_hex())),
        );
        Some(v)
    } else {
        None
    };
    std::fs::rename(&tmp, &rootfs)
        .with_context(|| format!("moving the image to {}", rootfs.display()))?;
    let root_art = sha256_and_size(&rootfs)?;

    // Two independent writers, one per core: the network-boot initramfs
    // (which holds rootfs.squashfs) and the disk, each hashed for the
    // manifest as soon as it is written (the disk's 4 GiB, holes hashed as
    // zeros, takes longest).
    let disk = opts.out.join(image_dir::DISK);
    let pxe = opts.out.join(image_dir::PXE_INITRD);
    let (pxe_art, disk_art) = std::thread::scope(|s| {
        let pxe_art = s.spawn(|| -> Result<Artifact> {
            let sp = spinner(&opts.progress, "netboot", image_dir::PXE_INITRD);
            artifacts::write_pxe_initramfs(&pxe, &initrd, &rootfs, mtime)?;
            let a = sha256_and_size(&pxe)?;
            finish(&opts.progress, &sp, None);
            Ok(a)
        });
        let disk_art = (|| -> Result<Artifact> {
            let sp = spinner(
                &opts.progress,
                "disk",
                &format!("{} GPT, ESP + A/B", def.disk.size),
            );
            let _ = std::fs::remove_file(&disk);
            let report = artifacts::write_disk(
                &disk,
                &tree,
                def,
                &kernel.image,
                &initrd,
                &rootfs,
                &root_art.sha256,
                verity.as_ref(),
                epoch,
            )?;
            tracing::info!(
                size = report.size,
                allocated = report.allocated_bytes,
                "wrote disk.raw"
            );
            let a = sha256_and_size(&disk)?;
            finish(&opts.progress, &sp, None);
            Ok(a)
        })();
        let pxe_art = pxe_art
            .join()
            .expect("the pxe-initrd thread does not panic");
        (pxe_art, disk_art)
    });
    let disk_art = disk_art?;
    let pxe_art = pxe_art?;
    let written = disk_formats::write(
        &opts.out,
        formats,
        &[],
        &Appliance {
            name: &def.name,
            version: &def.version,
            mtime: epoch,
        },
        &opts.progress,
    )?;

    let manifest = Manifest {
        name: def.name.clone(),
        version: def.version.clone(),
        suite: def.suite.clone(),
        source_date_epoch: epoch,
        builder: concat!("cairn ", env!("CARGO_PKG_VERSION")).into(),
        inputs,
        packages: lock
            .packages
            .iter()
            .map(|p| ManifestPackage {
                name: p.name.clone(),
                version: p.version.clone(),
                architecture: p.architecture.clone(),
                sha256: p.sha256.clone(),
            })
            .collect(),
        kernel_release: kernel.release.clone(),
        artifacts: vec![
            root_art,
            sha256_and_size(&opts.out.join(image_dir::KERNEL))?,
            sha256_and_size(&opts.out.join(image_dir::INITRD))?,
            pxe_art,
            disk_art,
        ],
        verity: verity.as_ref().map(image_dir::VerityRecord::from),
    };
    let mut manifest = manifest;
    manifest.artifacts.extend(written.artifacts);
    for (name, _) in &ipxe {
        let mut a = sha256_and_size(&ipxe_dir.join(name))?;
        a.name = format!("ipxe/{name}");
        manifest.artifacts.push(a);
    }
    write_manifest(&opts.out, &manifest)?;
    let bundle = finish_bundle(opts, &manifest, signer.as_ref())?;
    tracing::info!(seconds = t0.elapsed().as_secs_f64(), "build done");
    Ok(BuildSummary {
        formats_made: written.made,
        bundle,
        manifest,
        out: opts.out.clone(),
        lock_path: loaded.lock_path(),
        lock_written,
        tree_entries: tree.len(),
        tree_bytes: tree.content_bytes(),
        fixups: reports,
        up_to_date: false,
    })
}
