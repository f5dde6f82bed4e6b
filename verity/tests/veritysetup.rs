//! The tree against Debian's `veritysetup` (package `cryptsetup-bin`), the
//! independent checker: for images of one block, one level, three levels
//! and a size that is no multiple of the block, `veritysetup format` with
//! the same salt and UUID writes the same bytes and the same root hash,
//! and `veritysetup verify` accepts what `append_tree` wrote (and refuses
//! it after one flipped byte).

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_verity::{append_tree, derive_salt, derive_uuid, uuid_string, Verity};

fn veritysetup() -> Option<PathBuf> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join("veritysetup");
        if p.exists() {
            return Some(p);
        }
    }
    eprintln!(
        "SKIPPED: veritysetup is not installed (apt-get install cryptsetup-bin; .ci/run installs it)"
    );
    None
}

/// Deterministic, not very compressible bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running veritysetup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// `veritysetup format` on a copy padded as cairn pads it; returns its
/// file and root hash.
fn reference(dir: &Path, bytes: &[u8], v: &Verity, vs: &Path) -> (PathBuf, String) {
    let p = dir.join("reference.img");
    let mut padded = bytes.to_vec();
    padded.resize(bytes.len().next_multiple_of(4096), 0);
    std::fs::write(&p, &padded).unwrap();
    let text = run(Command::new(vs)
        .arg("format")
        .arg(&p)
        .arg(&p)
        .arg(format!("--hash-offset={}", v.hash_offset()))
        .arg(format!("--data-blocks={}", v.data_blocks))
        .arg("--format=1")
        .arg("--hash=sha256")
        .arg("--data-block-size=4096")
        .arg("--hash-block-size=4096")
        .arg(format!("--salt={}", v.salt_hex()))
        .arg(format!("--uuid={}", uuid_string(&derive_uuid(&v.salt)))));
    let root = text
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap_or_else(|| panic!("no root hash in: {text}"))
        .trim()
        .to_string();
    (p, root)
}

fn check(len: usize, seed: u64, levels: usize) {
    let Some(vs) = veritysetup() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(len, seed);
    let ours = dir.path().join("rootfs.squashfs");
    std::fs::write(&ours, &bytes).unwrap();
    let salt = derive_salt(&seed.to_le_bytes());
    let v = append_tree(&ours, &salt).unwrap();
    assert_eq!(v.data_blocks, len.div_ceil(4096) as u64);
    assert_eq!(
        cairn_verity::TreeLayout::new(v.data_blocks).levels(),
        levels
    );

    let (theirs, root) = reference(dir.path(), &bytes, &v, &vs);
    assert_eq!(v.root_hash_hex(), root, "root hash of {len} bytes");
    let a = std::fs::read(&ours).unwrap();
    let b = std::fs::read(&theirs).unwrap();
    assert_eq!(a.len(), b.len(), "file sizes for {len} bytes");
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("{len} bytes: first difference from veritysetup's file at byte {i}");
    }

    let verify = |root: &str| {
        Command::new(&vs)
            .arg("verify")
            .arg(&ours)
            .arg(&ours)
            .arg(root)
            .arg(format!("--hash-offset={}", v.hash_offset()))
            .output()
            .unwrap()
    };
    let out = verify(&v.root_hash_hex());
    assert!(
        out.status.success(),
        "veritysetup verify refused our tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // one flipped byte in the middle of the data: both refuse
    let f = std::fs::OpenOptions::new().write(true).open(&ours).unwrap();
    let mid = (len / 2) as u64;
    std::os::unix::fs::FileExt::write_all_at(&f, &[bytes[len / 2] ^ 1], mid).unwrap();
    assert!(!verify(&v.root_hash_hex()).status.success());
    let e = cairn_verity::verify(&ours, &v).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("data block {} ", mid / 4096)),
        "{e}"
    );
}

#[test]
fn one_block() {
    check(4096, 1, 0);
}

#[test]
fn one_level() {
    check(100 * 4096, 2, 1);
}

#[test]
fn two_levels_at_the_edge() {
    check(129 * 4096, 5, 2);
}

#[test]
fn three_levels() {
    // more than 128 * 128 blocks
    check((128 * 128 + 3) * 4096, 3, 3);
}

#[test]
fn size_not_a_multiple_of_the_block() {
    check(77 * 4096 + 1234, 4, 1);
}
