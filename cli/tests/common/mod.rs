//! Helpers shared by the builder's integration tests: where the repository
//! and the shared package cache are, a scratch copy of `images/`, and the
//! build options the tests use.

#![allow(dead_code)] // each test binary uses its own subset

pub mod lan;
pub mod transcript;
pub mod updates;
pub mod verity;

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_builder::pipeline::BuildOptions;
use indicatif::{MultiProgress, ProgressDrawTarget};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The package cache the tests build from: `CAIRN_TEST_CACHE`, else the
/// user's own cairn cache (`$XDG_CACHE_HOME/cairn`), outside the clone so a
/// new clone on the same machine downloads nothing again. Entries are
/// content-addressed and re-hashed before use, so sharing it is safe.
pub fn test_cache() -> PathBuf {
    std::env::var_os("CAIRN_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(cairn_builder::fetch::default_cache_dir)
}

/// Where built test images are kept between runs: `CAIRN_TEST_IMAGES`,
/// else `test-images/` in the package cache.
pub fn images_root() -> PathBuf {
    std::env::var_os("CAIRN_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| test_cache().join("test-images"))
}

/// Copy `images/` into a temp dir, without its lock files, so that tests
/// resolve against the mirror as it is today and never touch the
/// repository's locks.
pub fn images_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(repo_root().join("images"))
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    for e in std::fs::read_dir(tmp.path().join("images")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "lock") {
            std::fs::remove_file(&p).unwrap();
        }
    }
    tmp
}

/// Build options for `def` into `out`: the shared cache, fast compression,
/// no progress bars.
pub fn opts(def: &Path, out: &Path, update_lock: bool) -> BuildOptions {
    BuildOptions {
        definition: def.to_path_buf(),
        out: out.to_path_buf(),
        mirror: None,
        cache: Some(test_cache()),
        update_lock,
        jobs: 8,
        zstd_level: 3,
        sources_root: PathBuf::from("/"),
        keys: None,
        progress: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
        force: false,
        retry: Default::default(),
    }
}

/// `images/test.yaml`: the small image (systemd, sshd, etcd installed but
/// not enabled, the QEMU guest agent; no Docker) the tests boot to prove
/// the machinery. Resolved afresh and built once per set of inputs (see
/// [`cached_build`]).
pub fn test_image() -> PathBuf {
    image("test")
}

/// `images/default.yaml`, the image users build, for the tests where its
/// payload (Docker, etcd enabled) is the point.
pub fn default_image() -> PathBuf {
    image("default")
}

/// `images/NAME.yaml`, resolved afresh against the mirror in a copy of
/// `images/` and built through [`cached_build`].
pub fn image(name: &str) -> PathBuf {
    let work = images_copy();
    cached_build(&work.path().join(format!("images/{name}.yaml")), name, None)
}

/// Holds an exclusive `flock` on a file until dropped.
struct FileLock(std::fs::File);

impl FileLock {
    fn take(path: &Path) -> FileLock {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
        FileLock(f)
    }
}

/// How many built versions of one image the cache keeps.
const KEEP_PER_IMAGE: usize = 2;

/// The output folder of `def` from the cache of built test images
/// ([`images_root`]), built there first if needed; signed with `sign` when
/// given (re-signed when the bundle is older than a day).
///
/// The folder is named by the build's input fingerprint
/// ([`cairn_builder::pipeline::fingerprint`]: definition, freshly resolved
/// lock, overlay, update keys, cairn's own sources, compression), so a hit
/// is the image these inputs build, never an older one; a folder appears
/// under its name only once its build has finished (built aside, then
/// renamed). Builds are serialised by a lock file, so concurrent test runs
/// build an image once. The newest [`KEEP_PER_IMAGE`] folders per image
/// are kept.
pub fn cached_build(
    def: &Path,
    name: &str,
    sign: Option<&cairn_builder::pipeline::SignOptions>,
) -> PathBuf {
    let root = images_root();
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
    let _lock = FileLock::take(&root.join(".lock"));
    let staging = root.join(format!(".{name}.building"));
    let t0 = std::time::Instant::now();
    let fp = cairn_builder::pipeline::fingerprint(&opts(def, &staging, true))
        .unwrap_or_else(|e| panic!("resolving {}: {e:#}", def.display()));
    let dir = root.join(format!("{name}-{}", &fp[..16]));
    let resign = |dir: &Path| match std::fs::metadata(dir.join("update/manifest")) {
        Ok(m) => m
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age > std::time::Duration::from_secs(86400)),
        Err(_) => true,
    };
    if !dir.join("manifest.json").is_file() {
        let _ = std::fs::remove_dir_all(&staging);
        cairn_builder::pipeline::build_signed(&opts(def, &staging, false), sign)
            .unwrap_or_else(|e| panic!("building {}: {e:#}", def.display()));
        std::fs::rename(&staging, &dir)
            .unwrap_or_else(|e| panic!("renaming {} to {}: {e}", staging.display(), dir.display()));
        eprintln!(
            "image {name} built in {:.0?}: {}",
            t0.elapsed(),
            dir.display()
        );
    } else if sign.is_some() && resign(&dir) {
        cairn_builder::pipeline::build_signed(&opts(def, &dir, false), sign)
            .unwrap_or_else(|e| panic!("signing {}: {e:#}", dir.display()));
        eprintln!("image {name} re-signed: {}", dir.display());
    } else {
        eprintln!("image {name} from the cache: {}", dir.display());
    }
    // mark it used, then keep the newest few of this image
    let _ = std::fs::File::open(dir.join("manifest.json"))
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    let mut versions: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.strip_prefix(name)
                        .and_then(|r| r.strip_prefix('-'))
                        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                })
                .filter_map(|e| {
                    let t = std::fs::metadata(e.path().join("manifest.json"))
                        .and_then(|m| m.modified())
                        .ok()?;
                    Some((t, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    for (_, old) in versions.into_iter().skip(KEEP_PER_IMAGE) {
        if old != dir {
            let _ = std::fs::remove_dir_all(&old);
        }
    }
    dir
}

/// Runs a shell command in a QEMU guest through its guest agent
/// ([`cairn_qemu::Vm::sh`]); panics with its output unless it succeeds.
/// Returns its standard output.
pub fn guest_sh(vm: &mut cairn_qemu::Vm, script: &str, timeout: std::time::Duration) -> String {
    vm.sh(script, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits (up to `secs` seconds) until `cairn-cloudinit.service` has run, successfully or not.
pub fn wait_cloudinit(vm: &mut cairn_qemu::Vm, secs: u32) {
    guest_sh(
        vm,
        &format!(
            "for i in $(seq {secs}); do s=$(systemctl show -P ActiveState cairn-cloudinit.service); \
             [ \"$s\" = active ] || [ \"$s\" = failed ] && exit 0; sleep 1; done; exit 1"
        ),
        std::time::Duration::from_secs(u64::from(secs) + 30),
    );
}

/// Waits until systemd has finished starting up and asserts it says `running` (the failed units
/// are in the message otherwise).
pub fn assert_running(vm: &mut cairn_qemu::Vm, timeout: std::time::Duration) {
    let state = vm
        .guest_exec(&["systemctl", "is-system-running", "--wait"], timeout)
        .expect("systemctl is-system-running");
    let failed = guest_sh(
        vm,
        "systemctl --failed --no-legend --plain",
        std::time::Duration::from_secs(60),
    );
    assert_eq!(
        state.stdout_str().trim(),
        "running",
        "failed units: {failed}"
    );
}
