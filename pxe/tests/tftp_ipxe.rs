//! The iPXE programs over TFTP (issue 19 item 1): from the image folder's `ipxe/` first, then
//! `--ipxe-dir` laid out as Debian's `/usr/lib/ipxe` (symlinks into another directory, followed because
//! the operator chose it), byte-exact through curl; names from the network still cannot leave.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{image, pattern, TestServer};

const INVENTORY: &str = "\
profiles:
  - name: ram
    image: images/lab
groups:
  - name: all
    profile: ram
";

/// Fetches `tftp://addr/path` with curl exactly as written (no dot-segment clean-up).
fn fetch(s: &TestServer, path: &str) -> Result<Vec<u8>, String> {
    let out = Command::new("curl")
        .args(["-sS", "--path-as-is", "--max-time", "20"])
        .arg(format!("tftp://{}/{path}", s.tftp.unwrap()))
        .output()
        .expect("this test needs curl with TFTP support (Debian package curl)");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

struct Lab {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    image(&root.join("images"), "lab", "1.0", 1000);
    let config = root.join("inventory.yaml");
    std::fs::write(&config, INVENTORY).unwrap();
    Lab {
        _dir: dir,
        root,
        config,
    }
}

/// A replica of Debian's layout: `lib/ipxe/ipxe.efi -> ROOT/boot/ipxe.efi` (absolute, another
/// directory), a relative link into a subdirectory, the other programs as plain files.
fn debian_layout(root: &Path) -> PathBuf {
    let lib = root.join("usr/lib/ipxe");
    std::fs::create_dir_all(lib.join("qemu")).unwrap();
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/ipxe.efi"), pattern(70_000, 21)).unwrap();
    std::os::unix::fs::symlink(root.join("boot/ipxe.efi"), lib.join("ipxe.efi")).unwrap();
    std::fs::write(lib.join("undionly.kpxe"), pattern(30_000, 22)).unwrap();
    std::fs::write(lib.join("qemu/snp.efi"), pattern(50_000, 23)).unwrap();
    std::os::unix::fs::symlink("qemu/snp.efi", lib.join("snponly.efi")).unwrap();
    lib
}

#[test]
fn debian_style_ipxe_dir_serves_all_three_programs_byte_exact() {
    let l = lab();
    let ipxe = debian_layout(&l.root);
    let s = TestServer::start(&l.config, true, &ipxe);
    for (name, want) in [
        ("undionly.kpxe", pattern(30_000, 22)),
        ("ipxe.efi", pattern(70_000, 21)),
        ("snponly.efi", pattern(50_000, 23)),
    ] {
        let got = fetch(&s, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == want, "{name}: {} bytes, not the file", got.len());
    }
}

#[test]
fn the_real_usr_lib_ipxe_when_installed() {
    let real = Path::new("/usr/lib/ipxe");
    if !real.join("ipxe.efi").exists() {
        eprintln!("skipped: /usr/lib/ipxe/ipxe.efi absent (Debian package ipxe)");
        return;
    }
    let l = lab();
    let s = TestServer::start(&l.config, true, real);
    for name in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
        let want = std::fs::read(real.join(name)).unwrap();
        let got = fetch(&s, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == want, "{name}: {} bytes, not the file", got.len());
    }
}

#[test]
fn the_image_folders_programs_come_first_and_cannot_point_outside() {
    let l = lab();
    let ipxe = debian_layout(&l.root);
    let own = l.root.join("images/lab/ipxe");
    std::fs::create_dir(&own).unwrap();
    std::fs::write(own.join("undionly.kpxe"), pattern(12_345, 31)).unwrap();
    // Planted: a link out of the image folder is not served from there.
    std::fs::write(l.root.join("secret"), b"TOP SECRET").unwrap();
    std::os::unix::fs::symlink(l.root.join("secret"), own.join("ipxe.efi")).unwrap();
    std::os::unix::fs::symlink("../../../secret", own.join("snponly.efi")).unwrap();
    let s = TestServer::start(&l.config, true, &ipxe);
    assert!(fetch(&s, "undionly.kpxe").unwrap() == pattern(12_345, 31));
    assert!(fetch(&s, "ipxe.efi").unwrap() == pattern(70_000, 21));
    assert!(fetch(&s, "snponly.efi").unwrap() == pattern(50_000, 23));
    drop(s);
    // Without an iPXE directory the planted links give nothing.
    let s = TestServer::start(&l.config, true, &l.root.join("no-such-dir"));
    assert!(fetch(&s, "undionly.kpxe").unwrap() == pattern(12_345, 31));
    for name in ["ipxe.efi", "snponly.efi"] {
        assert!(fetch(&s, name).is_err(), "{name} was served");
    }
}

#[test]
fn names_from_the_network_still_cannot_leave() {
    let l = lab();
    let ipxe = debian_layout(&l.root);
    std::fs::write(l.root.join("secret"), b"TOP SECRET").unwrap();
    std::os::unix::fs::symlink(l.root.join("secret"), l.root.join("images/lab/escape")).unwrap();
    std::os::unix::fs::symlink("../../secret", l.root.join("images/lab/escape2")).unwrap();
    let s = TestServer::start(&l.config, true, &ipxe);
    let secret_abs = l.root.join("secret").display().to_string();
    let boot_abs = l.root.join("boot/ipxe.efi").display().to_string();
    for bad in [
        "../secret",
        "../../secret",
        "./ipxe.efi/../../secret",
        "../boot/ipxe.efi",
        "qemu/snp.efi",
        "/etc/passwd",
        secret_abs.as_str(),
        boot_abs.as_str(),
        "assets/lab-1.0/escape",
        "assets/lab-1.0/escape2",
        "assets/lab-1.0/../../secret",
        "assets/../secret",
        "ipxe.efi/..",
        "82540em.rom",
    ] {
        let r = fetch(&s, bad);
        assert!(r.is_err(), "{bad:?} was served: {:?}", r.map(|b| b.len()));
    }
}
