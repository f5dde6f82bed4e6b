//! Helpers shared by the QEMU tests: firmware and iPXE files from Debian
//! packages, and process checks.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A file a test needs from a Debian package; a clear failure if absent.
pub fn package_file(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "{path} is missing: install the Debian package `{package}` (apt-get install {package})"
    );
    p
}

/// iPXE as a bzImage (`-kernel`), from the Debian package `ipxe`.
pub fn ipxe_lkrn() -> PathBuf {
    package_file("/usr/lib/ipxe/ipxe.lkrn", "ipxe")
}

/// iPXE as a hybrid ISO: boots as a raw disk under SeaBIOS (isolinux) and
/// OVMF (its EFI image), from the Debian package `ipxe`.
pub fn ipxe_iso() -> PathBuf {
    package_file("/usr/lib/ipxe/ipxe.iso", "ipxe")
}

/// True while a process with this pid exists (zombies included).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Pids of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// Runs `f`, returning its result and how long it took (printed).
pub fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let r = f();
    eprintln!("{what}: {:.1}s", start.elapsed().as_secs_f64());
    r
}

pub const SECS: fn(u64) -> Duration = Duration::from_secs;
