//! Helpers the disk crate's integration tests share: qemu-img (Debian's
//! `qemu-utils`, required), deterministic test data and a scattered
//! sparse raw image.

#![allow(dead_code)] // each test binary uses its own subset

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
/// The unit of both converters: qcow2's cluster, VMDK's grain.
pub const C: u64 = 64 * KIB;

/// Runs `qemu-img`; panics naming the Debian package when it is missing.
pub fn qemu_img(args: &[&str]) -> std::process::Output {
    match Command::new("qemu-img").args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("qemu-img not found: install the Debian package `qemu-utils`")
        }
        Err(e) => panic!("running qemu-img: {e}"),
    }
}

/// `qemu-img` must succeed; returns stdout.
pub fn qemu_img_ok(args: &[&str]) -> String {
    let o = qemu_img(args);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "qemu-img {args:?} failed ({}):\n{stdout}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

/// Deterministic pseudo-random bytes (xorshift64*): incompressible.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compressible text that does not repeat within 4 KiB (numbered lines),
/// so deflate's matches reach back as far as the window lets them.
pub fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 100);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!("{i:08} the quick brown fox jumps over the lazy cairn\n").as_bytes(),
        );
        i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1) % 100_000_000;
    }
    out.truncate(len);
    out
}

/// Size of the scattered raw image: past one L2 table's 512 MiB, and not
/// a whole number of clusters (the last one is partial).
pub const SCATTERED_SIZE: u64 = 640 * MIB + 5 * 512;

/// A sparse raw image with data in scattered places: the first and the
/// (partial) last cluster, text and noise, explicitly written zeros,
/// a lone byte, a run across the L2 boundary, a half-zero cluster.
pub fn scattered_raw(path: &Path) {
    let f = fs::File::create(path).unwrap();
    f.set_len(SCATTERED_SIZE).unwrap();
    let put = |offset: u64, bytes: &[u8]| f.write_all_at(bytes, offset).unwrap();
    put(0, &text(C as usize));
    put(MIB, &noise(1, MIB as usize));
    put(8 * MIB + 123, &text(2 * MIB as usize));
    // Written zeros: data to SEEK_DATA, skipped by the zero check.
    put(16 * MIB, &vec![0; 4 * MIB as usize]);
    put(20 * MIB + 777, b"x");
    // Text then noise across the first L2 table's end (512 MiB).
    put(512 * MIB - 128 * KIB, &text(128 * KIB as usize));
    put(512 * MIB, &noise(2, 192 * KIB as usize));
    // A cluster half noise, half zero; one whose noise barely does not
    // fit compressed.
    put(600 * MIB, &noise(3, (C / 2) as usize));
    let mut almost = noise(4, C as usize);
    almost[..64].fill(b'a');
    put(601 * MIB, &almost);
    // The last 512 bytes.
    put(SCATTERED_SIZE - 512, &noise(5, 512));
}
