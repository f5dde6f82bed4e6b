//! Update channels through the real server: two signed bundles of one image on channel `lab` (the
//! profile's v1 and v2 from the inventory's `updates:` list); `/update/v1/lab/manifest` is v2's and
//! verifies against the signing key as newer than v1; parts resume with Range; nothing the manifest
//! does not list is served; a broken bundle refuses the inventory naming the file.

use std::path::Path;

use cairn_formats::channel::{
    keygen, verify, write_bundle, BundleInput, Expect, SecretKey, TrustedKeys,
};

mod common;
use common::{get, image, pattern, TestServer};

fn sign(dir: &Path, version: &str, key: &SecretKey) {
    std::fs::write(dir.join("rootfs.squashfs"), pattern(300_000, 3)).unwrap();
    std::fs::write(dir.join("initrd.img"), pattern(1000, 5)).unwrap();
    write_bundle(
        dir,
        &BundleInput {
            name: "img",
            version,
            channel: "lab",
            rootfs: &dir.join("rootfs.squashfs"),
            kernel: &dir.join("vmlinuz"),
            initrd: &dir.join("initrd.img"),
            created: 1_790_000_000,
            validity_secs: 3600 * 24 * 365 * 20,
            verity: None,
        },
        key,
    )
    .unwrap();
}

#[test]
fn channel_offers_the_newest_signed_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(&dir.path().join("keys")).unwrap();
    let key = SecretKey::load(&keys.secret).unwrap();
    let v1 = image(dir.path(), "v1", "1", 10);
    let v2 = image(dir.path(), "v2", "2", 20);
    // the manifest.json of the fixture image folders names the image "v1"/"v2"; rewrite to one name
    for (d, v) in [(&v1, "1"), (&v2, "2")] {
        std::fs::write(
            d.join("manifest.json"),
            serde_json::to_string(&cairn_formats::image_dir::Manifest::named("img", v)).unwrap(),
        )
        .unwrap();
        sign(d, v, &key);
    }
    let config = dir.path().join("inv.yaml");
    std::fs::write(
        &config,
        "profiles:\n  - name: p\n    image: v1\ngroups:\n  - name: g\n    profile: p\nupdates:\n  - v2\n",
    )
    .unwrap();
    let server = TestServer::start(&config, false, dir.path());
    let base = format!("http://{}/update/v1", server.http);

    let manifest = get(&format!("{base}/lab/manifest"), &[]);
    assert_eq!(manifest.status, 200, "{}", manifest.text());
    assert_eq!(
        manifest.body,
        std::fs::read(v2.join("update/manifest.json")).unwrap()
    );
    let sig = get(&format!("{base}/lab/manifest.sig"), &[]);
    assert_eq!(sig.status, 200);
    let trusted = TrustedKeys::load(&keys.public).unwrap();
    let m = verify(
        &manifest.body,
        &sig.body,
        &trusted,
        &Expect {
            name: "img",
            running_version: "1",
            channel: Some("lab"),
            now: 1_790_000_100,
        },
    )
    .expect("what the server offers verifies as newer than v1");
    assert_eq!(m.version, "2");

    // every part, whole and resumed from the middle
    for part in &m.parts {
        let whole = get(&format!("{base}/lab/{}", part.path), &[]);
        assert_eq!(whole.status, 200, "{}", part.path);
        assert_eq!(whole.body.len() as u64, part.size);
        let tail = get(
            &format!("{base}/lab/{}", part.path),
            &[("Range", &format!("bytes={}-", part.size / 2))],
        );
        assert_eq!(tail.status, 206, "{}", part.path);
        assert_eq!(tail.body, whole.body[(part.size / 2) as usize..]);
    }

    let none = get(&format!("{base}/beta/manifest"), &[]);
    assert_eq!(none.status, 404);
    assert!(none.text().contains("channels: lab"), "{}", none.text());
    for bad in [
        "manifest.json.tmp",
        "..%2Fmanifest.json",
        "%2E%2E",
        "pxe-initrd.img",
    ] {
        let r = get(&format!("{base}/lab/{bad}"), &[]);
        assert_eq!(r.status, 404, "{bad}: {}", r.text());
    }
    drop(server);

    // a part cut short: the inventory is refused, naming the file
    let rootfs = v2.join("update/rootfs.squashfs");
    let full = std::fs::read(&rootfs).unwrap();
    std::fs::remove_file(&rootfs).unwrap(); // may be a hard link to the image's file
    std::fs::write(&rootfs, &full[..1000]).unwrap();
    let err = TestServer::try_start(&config, false, dir.path(), None)
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("updates[0]") && msg.contains("rootfs.squashfs") && msg.contains("1000 bytes"),
        "{msg}"
    );
}
