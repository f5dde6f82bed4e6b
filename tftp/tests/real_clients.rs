//! Debian's TFTP clients (curl, atftp, tftp-hpa) against the server on 127.0.0.1: byte-exact downloads of
//! small files, exact block multiples, a few MiB and a file of more than 65535 blocks of 512 bytes
//! (block number rollover); traversal attempts fail. A missing tool fails the test naming its Debian package.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_tftp::Config;
use common::{pattern, Harness};

/// Files served: name and size.
const FILES: &[(&str, usize)] = &[
    ("small.txt", 100),
    ("exact.bin", 8 * 512),
    ("exact1468.bin", 3 * 1468),
    ("mid.bin", 3 * 1024 * 1024 + 17),
];
/// More than 65535 blocks of 512 bytes: the block number wraps.
const HUGE: (&str, usize) = ("huge.bin", 65_535 * 512 + 4_096);

use cairn_testkit::require;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    out: PathBuf,
    h: Harness,
}

fn setup(with_huge: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let mut files = FILES.to_vec();
    if with_huge {
        files.push(HUGE);
    }
    for (i, (name, len)) in files.iter().enumerate() {
        std::fs::write(root.join(name), pattern(*len, 100 + i as u64)).unwrap();
    }
    std::fs::write(dir.path().join("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape")).unwrap();
    let config = Config {
        max_blksize: cairn_tftp::MAX_BLKSIZE,
        ..Config::default()
    };
    let h = Harness::dir(&root, config);
    Setup {
        _dir: dir,
        root,
        out,
        h,
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

fn assert_same(got: &Path, want: &Path, what: &str) {
    let g = std::fs::read(got).unwrap_or_else(|e| panic!("{what}: reading {}: {e}", got.display()));
    let w = std::fs::read(want).unwrap();
    assert!(
        g.len() == w.len() && g == w,
        "{what}: {} bytes received, {} expected or content differs",
        g.len(),
        w.len()
    );
}

fn names(with_huge: bool) -> Vec<&'static str> {
    let mut n: Vec<&str> = FILES.iter().map(|f| f.0).collect();
    if with_huge {
        n.push(HUGE.0);
    }
    n
}

fn curl(s: &Setup, name: &str, extra: &[&str], out: &Path) -> Output {
    let url = format!("tftp://{}/{name}", s.h.addr);
    run(Command::new("curl")
        .args(["-sS", "--path-as-is", "--max-time", "120", "-o"])
        .arg(out)
        .args(extra)
        .arg(url))
}

#[test]
fn curl_fetches_files_byte_exact() {
    require("curl", "curl");
    let s = setup(true);
    for extra in [
        &[][..],
        &["--tftp-blksize", "1468"][..],
        &["--tftp-blksize", "8192"][..],
    ] {
        for name in names(extra.is_empty()) {
            let out = s.out.join(format!("curl-{name}"));
            let o = curl(&s, name, extra, &out);
            assert!(
                o.status.success(),
                "curl {extra:?} {name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert_same(&out, &s.root.join(name), &format!("curl {extra:?} {name}"));
        }
    }
}

#[test]
fn curl_traversal_fails() {
    require("curl", "curl");
    let s = setup(false);
    for name in [
        "../secret",
        "a/../../secret",
        "escape",
        "%2Fetc/passwd",
        "/etc/passwd",
    ] {
        let out = s.out.join("leak");
        let o = curl(&s, name, &[], &out);
        // curl exits 68 (file not found) or 69 (access violation) on a TFTP error packet.
        let code = o.status.code();
        assert!(
            matches!(code, Some(68 | 69)),
            "curl {name}: exit {code:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let leaked = std::fs::read(&out).unwrap_or_default();
        assert!(leaked.is_empty(), "curl {name}: got {} bytes", leaked.len());
    }
}

fn atftp(s: &Setup, name: &str, options: &[&str], out: &Path) -> Output {
    let mut cmd = Command::new("atftp");
    for o in options {
        cmd.args(["--option", o]);
    }
    run(cmd
        .args(["--tftp-timeout", "2", "-g", "-r", name, "-l"])
        .arg(out)
        .arg(s.h.addr.ip().to_string())
        .arg(s.h.addr.port().to_string()))
}

#[test]
fn atftp_fetches_files_byte_exact() {
    require("atftp", "atftp");
    let s = setup(true);
    let variants: &[&[&str]] = &[
        &["tsize 0"],
        &["blksize 1468", "tsize 0"],
        &["blksize 1468", "tsize 0", "windowsize 8"],
    ];
    for (i, options) in variants.iter().enumerate() {
        // The huge file with the default 512-byte blocks forces the block number to wrap.
        for name in names(i == 0) {
            let out = s.out.join(format!("atftp-{i}-{name}"));
            let o = atftp(&s, name, options, &out);
            assert!(
                o.status.success(),
                "atftp {options:?} {name}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert_same(
                &out,
                &s.root.join(name),
                &format!("atftp {options:?} {name}"),
            );
        }
    }
}

#[test]
fn atftp_traversal_fails() {
    require("atftp", "atftp");
    let s = setup(false);
    for name in [
        "../secret",
        "/../secret",
        "a/../../secret",
        "escape",
        "/etc/passwd",
    ] {
        let out = s.out.join("leak");
        let o = atftp(&s, name, &["tsize 0"], &out);
        assert!(!o.status.success(), "atftp {name} succeeded");
        let leaked = std::fs::read(&out).unwrap_or_default();
        assert!(
            leaked.is_empty(),
            "atftp {name}: got {} bytes",
            leaked.len()
        );
    }
}

fn tftp_hpa(s: &Setup, name: &str, out: &Path) -> Output {
    run(Command::new("tftp")
        .args(["-m", "octet", "-v"])
        .arg(s.h.addr.ip().to_string())
        .arg(s.h.addr.port().to_string())
        .arg("-c")
        .arg("get")
        .arg(name)
        .arg(out))
}

#[test]
fn tftp_hpa_fetches_files_byte_exact() {
    require("tftp", "tftp-hpa");
    let s = setup(true);
    for name in names(true) {
        let out = s.out.join(format!("hpa-{name}"));
        let o = tftp_hpa(&s, name, &out);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success() && text.contains("Received"),
            "tftp {name}: {text}"
        );
        assert_same(&out, &s.root.join(name), &format!("tftp-hpa {name}"));
    }
}

#[test]
fn tftp_hpa_traversal_fails() {
    require("tftp", "tftp-hpa");
    let s = setup(false);
    for (name, code) in [
        ("../secret", 2),
        ("/../secret", 2),
        ("a/../../secret", 2),
        ("escape", 2),
        ("/etc/passwd", 1),
    ] {
        let out = s.out.join("leak");
        let o = tftp_hpa(&s, name, &out);
        // tftp-hpa exits 0 even on an error packet; it prints the code.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            text.contains(&format!("Error code {code}")),
            "tftp {name}: {text}"
        );
        let leaked = std::fs::read(&out).unwrap_or_default();
        assert!(leaked.is_empty(), "tftp {name}: got {} bytes", leaked.len());
    }
}
