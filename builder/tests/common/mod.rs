//! Helpers shared by the builder's integration tests: where the repository
//! and the shared package cache are, a scratch copy of `images/`, and the
//! build options the tests use.

#![allow(dead_code)] // each test binary uses its own subset

pub mod lan;
pub mod updates;

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_builder::pipeline::BuildOptions;
use indicatif::{MultiProgress, ProgressDrawTarget};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The package cache shared by test runs (`CAIRN_TEST_CACHE` overrides).
pub fn test_cache() -> PathBuf {
    std::env::var_os("CAIRN_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/cairn-test-cache"))
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
    for lock in ["default.lock", "test.lock"] {
        let _ = std::fs::remove_file(tmp.path().join("images").join(lock));
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
    }
}

/// Build `images/test.yaml` (the default image plus the QEMU guest agent),
/// resolved afresh in a copy of `images/`, into one folder shared by the
/// QEMU test binaries (`target/cairn-test-image`, `CAIRN_TEST_IMAGE`
/// overrides): the first binary builds it, the others find it current and
/// skip the build (cargo runs test binaries one after another).
pub fn test_image() -> PathBuf {
    let out = std::env::var_os("CAIRN_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/cairn-test-image"));
    let work = images_copy();
    let t0 = std::time::Instant::now();
    cairn_builder::pipeline::build(&opts(&work.path().join("images/test.yaml"), &out, true))
        .unwrap_or_else(|e| panic!("building images/test.yaml: {e:#}"));
    eprintln!(
        "test image ready in {:.0?}: {}",
        t0.elapsed(),
        out.display()
    );
    out
}

/// Run a shell command in a QEMU guest through its guest agent; panic with
/// its output unless it succeeds. Returns its standard output.
pub fn guest_sh(vm: &mut cairn_qemu::Vm, script: &str, timeout: std::time::Duration) -> String {
    let out = vm
        .guest_exec(&["/bin/sh", "-c", script], timeout)
        .unwrap_or_else(|e| panic!("running {script:?} in the guest: {e}"));
    let stdout = out.stdout_str();
    assert!(
        out.success(),
        "{script:?} failed ({:?}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
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
