//! Transient download failures against a loopback HTTP server that fails
//! the first requests (HTTP 503, 500, 408, 429, a connection dropped
//! without an answer, a body cut short): the agent retries with backoff and
//! resumes a part with Range; a 404, a bad signature and a hash mismatch are
//! final at the first try; when the tries are spent the error says how many
//! were made.

mod common;

use std::fs;

use cairn_formats::channel::keys::SecretKey;
use cairn_updater::agent::Outcome;
use common::*;

const ROOTFS: usize = 3 * (1 << 20) + 999;

fn key() -> SecretKey {
    SecretKey::from_seed([42; 32])
}

struct World {
    _t: tempfile::TempDir,
    server: Server,
    m: Machine,
    bundles: std::path::PathBuf,
}

fn world() -> World {
    let t = tempfile::tempdir().unwrap();
    let server = Server::start();
    let m = Machine::new(
        &t.path().join("machine"),
        &server,
        &key(),
        "1",
        &bytes(1, 2 << 20),
    );
    let bundles = t.path().join("bundles");
    World {
        server,
        m,
        bundles,
        _t: t,
    }
}

fn ranges(s: &Server, file: &str) -> Vec<Option<String>> {
    s.log()
        .into_iter()
        .filter(|x| x.path.ends_with(&format!("/{file}")))
        .map(|x| x.range)
        .collect()
}

#[test]
fn transient_failures_are_retried_and_a_cut_part_resumes_with_range() {
    let w = world();
    let v2 = build(&w.bundles, "default", "2", &key(), ROOTFS);
    w.server.serve(&v2.root);
    w.server.fail(
        "manifest",
        &[Fail::Status(503), Fail::Drop, Fail::Status(500)],
    );
    w.server.fail("manifest.sig", &[Fail::Status(429)]);
    w.server
        .fail("vmlinuz", &[Fail::Status(408), Fail::Status(502)]);
    // the rootfs: dropped, 503, then a body cut after 1 MB, then the rest
    w.server
        .fail("rootfs.squashfs", &[Fail::Drop, Fail::Status(503)]);
    w.server.cut("rootfs.squashfs", 1, 1_000_000);
    match w.m.agent().apply() {
        Ok(Outcome::Staged { version, .. }) => assert_eq!(version, "2"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.server.count("manifest"), 4);
    assert_eq!(w.server.count("manifest.sig"), 2);
    assert_eq!(w.server.count("vmlinuz"), 3);
    assert_eq!(
        ranges(&w.server, "rootfs.squashfs"),
        [None, None, None, Some("bytes=1000000-".into())]
    );
    let n = v2.rootfs.len();
    assert_eq!(sha_prefix(&w.m.slot("b"), n), sha(&v2.rootfs));
    assert_eq!(w.m.agent().state().unwrap().last_failure, None);
}

#[test]
fn a_404_a_bad_signature_and_a_hash_mismatch_are_not_retried() {
    let w = world();
    let m = &w.m;
    let v2 = build(&w.bundles, "default", "2", &key(), ROOTFS);
    w.server.serve(&v2.root);

    // 404 on a part
    w.server.fail("initrd.img", &[Fail::Status(404)]);
    let e = m.agent().apply().unwrap_err().to_string();
    assert!(e.contains("initrd.img: HTTP 404"), "{e}");
    assert!(!e.contains("gave up"), "{e}");
    assert_eq!(w.server.count("initrd.img"), 1, "a 404 is final");

    // 404 on the manifest
    w.server.fail("manifest", &[Fail::Status(404)]);
    let before = w.server.count("manifest");
    let e = m.agent().apply().unwrap_err().to_string();
    assert!(e.contains("manifest: HTTP 404"), "{e}");
    assert_eq!(w.server.count("manifest"), before + 1);

    // a manifest that does not verify: fetched once
    let p = v2.root.join("manifest.json");
    let good = fs::read(&p).unwrap();
    let t = String::from_utf8(good.clone())
        .unwrap()
        .replace("\"stable\"", "\"stable\" ");
    fs::write(&p, t).unwrap();
    let before = w.server.count("manifest");
    let e = m.agent().apply().unwrap_err().to_string();
    assert!(e.contains("does not verify"), "{e}");
    assert_eq!(w.server.count("manifest"), before + 1);
    fs::write(&p, &good).unwrap();

    // a part whose hash does not match: downloaded once, refused (the
    // verified download of the good one, kept from the first run, is
    // removed first)
    let _ = fs::remove_dir_all(m.paths.download_dir());
    let r = v2.root.join("rootfs.squashfs");
    let mut d = read(&r);
    d[ROOTFS / 3] ^= 1;
    fs::remove_file(&r).unwrap(); // a hard link to the build's file
    fs::write(&r, &d).unwrap();
    let before = w.server.count("rootfs.squashfs");
    let e = m.agent().apply().unwrap_err().to_string();
    assert!(e.contains("SHA-256"), "{e}");
    assert_eq!(w.server.count("rootfs.squashfs"), before + 1);
}

#[test]
fn when_the_tries_are_spent_the_error_says_how_many() {
    let w = world();
    let m = &w.m;
    let v2 = build(&w.bundles, "default", "2", &key(), ROOTFS);
    w.server.serve(&v2.root);
    w.server.fail("rootfs.squashfs", &[Fail::Status(503); 6]);
    let e = m.agent().apply().unwrap_err().to_string();
    assert!(
        e.contains("rootfs.squashfs: HTTP 503 (gave up after 5 tries in"),
        "{e}"
    );
    assert_eq!(w.server.count("rootfs.squashfs"), 5);
    let st = m.agent().state().unwrap();
    assert!(
        st.last_failure
            .unwrap()
            .reason
            .contains("gave up after 5 tries"),
        "recorded"
    );

    // a server that drops every connection
    w.server.fail("manifest", &[Fail::Drop; 5]);
    let e = m.agent().apply().unwrap_err().to_string();
    assert!(e.contains("(gave up after 5 tries in"), "{e}");
    assert!(e.contains("/manifest:"), "{e}");

    // nothing listens at all (connection refused)
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    fs::write(
        &m.paths.config,
        format!("REBOOT_STRATEGY=off\nSERVER=http://127.0.0.1:{port}\n"),
    )
    .unwrap();
    let e = m.agent().apply().unwrap_err().to_string();
    assert!(e.contains("(gave up after 5 tries in"), "{e}");
}
