//! Integration test (no QEMU): `cairn keygen`, then `cairn build --sign`
//! of `images/test.yaml` with an `update:` section, through the real CLI
//! and pipeline. Checks that the bundle verifies against the public key,
//! that its parts are the build's artifacts, that the image carries the
//! trust root, the agent, its enabled units and `systemd-bless-boot`, that
//! a build without `--sign` removes the bundle and that bad keys in a
//! definition are refused naming the file. One real build; the others are
//! up-to-date checks. The package cache is shared with the other tests.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use backhand::{FilesystemReader, InnerNode};
use sha2::{Digest, Sha256};

mod common;
use common::{images_copy, test_cache};

/// A fixed `created` for the bundle (and the image's timestamps).
const EPOCH: i64 = 1_800_000_000;

fn cairn(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        .output()
        .expect("running cairn");
    eprintln!(
        "$ cairn {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn ok(args: &[&str]) -> String {
    let o = cairn(args);
    assert!(
        o.status.success(),
        "cairn {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let o = cairn(args);
    assert!(!o.status.success(), "cairn {args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

enum Kind {
    File(Vec<u8>),
    Link(String),
    Dir,
    Other,
}

/// Every path of a squashfs with its kind, mode and (small files) content.
fn read_image(path: &Path) -> BTreeMap<String, (Kind, u16)> {
    let fs = FilesystemReader::from_reader(BufReader::new(File::open(path).unwrap())).unwrap();
    let mut out = BTreeMap::new();
    for n in fs.files() {
        let kind = match &n.inner {
            InnerNode::File(f) => {
                let mut buf = Vec::new();
                if f.file_len() < 16 << 20 {
                    fs.file(f).reader().read_to_end(&mut buf).unwrap();
                }
                Kind::File(buf)
            }
            InnerNode::Symlink(s) => Kind::Link(s.link.display().to_string()),
            InnerNode::Dir(_) => Kind::Dir,
            _ => Kind::Other,
        };
        out.insert(
            n.fullpath.display().to_string(),
            (kind, n.header.permissions),
        );
    }
    out
}

fn file<'a>(img: &'a BTreeMap<String, (Kind, u16)>, p: &str) -> (&'a [u8], u16) {
    match img.get(p) {
        Some((Kind::File(d), mode)) => (d, *mode),
        _ => panic!("{p} is not a file in the image"),
    }
}

fn link<'a>(img: &'a BTreeMap<String, (Kind, u16)>, p: &str) -> &'a str {
    match img.get(p) {
        Some((Kind::Link(t), _)) => t,
        _ => panic!("{p} is not a symlink in the image"),
    }
}

fn sha256(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn signed_build_writes_a_verifiable_bundle_and_an_image_that_trusts_its_key() {
    let work = images_copy();
    let images = work.path().join("images");
    let keys = work.path().join("keys");
    let out = work.path().join("out");
    let cache = test_cache();
    let (keys_s, out_s, cache_s) = (
        keys.display().to_string(),
        out.display().to_string(),
        cache.display().to_string(),
    );

    // --- cairn keygen
    let said = ok(&["keygen", "--out", &keys_s]);
    let (secret, public) = (keys.join("update.key"), keys.join("update.pub"));
    assert!(
        said.contains("update.key") && said.contains("update.pub"),
        "{said}"
    );
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "update.key must be private");
    let before = std::fs::read(&secret).unwrap();
    let e = fails(&["keygen", "--out", &keys_s]);
    assert!(
        e.contains(&secret.display().to_string()) && e.contains("exists"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        before,
        "keygen overwrote a key"
    );
    let trusted = cairn_formats::channel::TrustedKeys::load(&public).unwrap();
    let key_id = trusted.ids()[0].clone();

    // --- the definition: images/test.yaml with an update section
    std::fs::copy(&public, images.join("update.pub")).unwrap();
    let base = std::fs::read_to_string(images.join("test.yaml")).unwrap();
    let def = images.join("upd.yaml");
    let def_s = def.display().to_string();
    let with_keys = |keys: &str| format!("{base}\nupdate:\n  channel: lab\n  keys: [{keys}]\n");
    let build_args = |extra: &[&'static str]| {
        let mut v: Vec<String> = [
            "build",
            &def_s,
            "-o",
            &out_s,
            "--cache",
            &cache_s,
            "--zstd-level",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&'static str], sign: bool| {
        let mut v = build_args(extra);
        if sign {
            v.extend(["--sign".to_string(), secret.display().to_string()]);
        }
        v
    };

    // --- bad trust roots are refused before anything is built, naming the file
    std::fs::copy(&secret, images.join("oops.pub")).unwrap();
    std::fs::write(images.join("junk.pub"), "cairn-ed25519 not-base64!\n").unwrap();
    for (name, why) in [
        ("oops.pub", "secret key"),
        ("junk.pub", "base64"),
        ("missing.pub", "reading"),
    ] {
        std::fs::write(&def, with_keys(name)).unwrap();
        let v = run(&["--update-lock"], true);
        let e = fails(&refs(&v));
        assert!(
            e.contains(&format!("{def_s}:")) && e.contains("update.keys[0]"),
            "{e}"
        );
        assert!(e.contains(name) && e.contains(why), "{e}");
        assert!(
            !out.exists(),
            "a refused definition wrote {}",
            out.display()
        );
    }
    // a wrong signing key file is refused before the build too
    std::fs::write(&def, with_keys("update.pub")).unwrap();
    let mut v = build_args(&["--update-lock"]);
    v.extend(["--sign".into(), public.display().to_string()]);
    let e = fails(&refs(&v));
    assert!(
        e.contains("update.pub") && e.contains("public key file"),
        "{e}"
    );
    // --channel without --sign makes no sense
    let mut v = build_args(&[]);
    v.extend(["--channel".into(), "beta".into()]);
    let e = fails(&refs(&v));
    assert!(e.contains("--sign"), "{e}");

    // --- the one real build, signed, valid for 2 days
    let t0 = std::time::Instant::now();
    let said = ok(&refs(&run(&["--update-lock", "--valid-for", "2d"], true)));
    eprintln!("signed build took {:.0?}", t0.elapsed());
    assert!(
        said.contains("wrote update bundle") && said.contains(&key_id),
        "{said}"
    );
    let bundle = out.join("update");
    let manifest_bytes = std::fs::read(bundle.join("manifest.json")).unwrap();
    let sig = std::fs::read(bundle.join("manifest.sig")).unwrap();

    // the bundle verifies with the public key, for this image and channel
    let expect = cairn_formats::channel::Expect {
        name: "cairn-test",
        running_version: "0.0.1",
        channel: Some("lab"),
        now: EPOCH + 60,
    };
    let m = cairn_formats::channel::verify(&manifest_bytes, &sig, &trusted, &expect)
        .unwrap_or_else(|e| panic!("the bundle does not verify: {e}"));
    assert_eq!(
        (m.name.as_str(), m.version.as_str()),
        ("cairn-test", "0.1.0")
    );
    assert_eq!(m.channel, "lab");
    assert_eq!(m.created, "2027-01-15T08:00:00Z");
    assert_eq!(m.expires_secs(), EPOCH + 2 * 86400);
    // ... and with no other key, nor after it expires, nor on another channel
    let other = cairn_formats::channel::TrustedKeys::new(vec![
        cairn_formats::channel::SecretKey::from_seed([9; 32]).public(),
    ]);
    let e = cairn_formats::channel::verify(&manifest_bytes, &sig, &other, &expect).unwrap_err();
    assert!(e.to_string().contains("not among the trusted keys"), "{e}");
    let late = cairn_formats::channel::Expect {
        now: EPOCH + 2 * 86400,
        ..expect.clone()
    };
    assert!(cairn_formats::channel::verify(&manifest_bytes, &sig, &trusted, &late).is_err());
    let beta = cairn_formats::channel::Expect {
        channel: Some("beta"),
        ..expect.clone()
    };
    assert!(cairn_formats::channel::verify(&manifest_bytes, &sig, &trusted, &beta).is_err());

    // its parts are the build's artifacts, byte for byte
    let build_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let artifact = |name: &str| {
        build_manifest["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in the build manifest"))
            .clone()
    };
    for (kind, name) in [
        (cairn_formats::channel::PartKind::Rootfs, "rootfs.squashfs"),
        (cairn_formats::channel::PartKind::Kernel, "vmlinuz"),
        (cairn_formats::channel::PartKind::Initrd, "initrd.img"),
    ] {
        let p = m.part(kind);
        let a = artifact(name);
        assert_eq!(p.path, name);
        assert_eq!(p.sha256, a["sha256"].as_str().unwrap(), "{name}");
        assert_eq!(p.size, a["size"].as_u64().unwrap(), "{name}");
        assert_eq!(sha256(&bundle.join(name)), p.sha256, "update/{name}");
        assert_eq!(sha256(&out.join(name)), p.sha256, "{name}");
    }

    // --- what the image carries
    let img = read_image(&out.join("rootfs.squashfs"));
    let (k, mode) = file(&img, "/usr/lib/cairn/update-keys/update.pub");
    assert_eq!(k, std::fs::read(&public).unwrap().as_slice());
    assert_eq!(mode, 0o644);
    let in_folder: Vec<_> = img
        .keys()
        .filter(|p| p.starts_with("/usr/lib/cairn/update-keys/"))
        .collect();
    assert_eq!(in_folder.len(), 1, "{in_folder:?}");
    let (bin, mode) = file(&img, "/usr/bin/cairn-update");
    assert_eq!(&bin[..4], b"\x7fELF");
    assert_eq!(mode, 0o755);
    for u in [
        "cairn-update.service",
        "cairn-update.timer",
        "cairn-health.service",
        "systemd-bless-boot.service",
    ] {
        file(&img, &format!("/usr/lib/systemd/system/{u}"));
    }
    assert_eq!(
        link(
            &img,
            "/etc/systemd/system/timers.target.wants/cairn-update.timer"
        ),
        "/usr/lib/systemd/system/cairn-update.timer"
    );
    assert_eq!(
        link(
            &img,
            "/etc/systemd/system/boot-complete.target.requires/cairn-health.service"
        ),
        "/usr/lib/systemd/system/cairn-health.service"
    );
    let (_, mode) = file(&img, "/usr/lib/systemd/systemd-bless-boot");
    assert_eq!(mode & 0o111, 0o111);
    file(
        &img,
        "/usr/lib/systemd/system-generators/systemd-bless-boot-generator",
    );
    // the agent compares the manifest's name and version with these
    let os = String::from_utf8_lossy(file(&img, "/usr/lib/os-release").0).into_owned();
    assert!(
        os.contains("IMAGE_ID=cairn-test") && os.contains("IMAGE_VERSION=0.1.0"),
        "{os}"
    );

    // --- without --sign: the output is current, but its bundle goes
    let said = ok(&refs(&run(&[], false)));
    assert!(said.contains("up to date"), "{said}");
    assert!(
        !bundle.exists(),
        "a build without --sign left {}",
        bundle.display()
    );
    // --- signed again (still current): the same bytes, signature included
    let said = ok(&refs(&run(&["--valid-for", "2d"], true)));
    assert!(
        said.contains("up to date") && said.contains("wrote update bundle"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(bundle.join("manifest.json")).unwrap(),
        manifest_bytes
    );
    assert_eq!(std::fs::read(bundle.join("manifest.sig")).unwrap(), sig);
}
