//! dm-verity in the update flow, on files: the new slot's entry carries the
//! signed root hash (`cairn.verity=`) and the slot passes Debian's
//! `veritysetup verify`; a slot changed after its write and read-back is
//! refused by the tree check and gets no entry; a signed manifest whose
//! root hash is not the one of the image's tree is refused before the
//! slot is written.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use cairn_formats::channel::keys::SecretKey;
use cairn_formats::channel::manifest::{sign, Manifest};
use cairn_updater::agent::Outcome;
use cairn_updater::{Slot, UpdateError};
use common::*;

const ROOTFS: usize = 3 * (1 << 20) + 12_345;

fn key() -> SecretKey {
    SecretKey::from_seed([42; 32])
}

fn machine(t: &Path, server: &Server) -> Machine {
    Machine::new(&t.join("machine"), server, &key(), "1", &bytes(1, 2 << 20))
}

#[test]
fn the_new_entry_names_the_signed_root_hash() {
    let t = tempfile::tempdir().unwrap();
    let server = Server::start();
    let m = machine(t.path(), &server);
    let (b, v) = build_with(
        &t.path().join("bundles"),
        "default",
        "2",
        &key(),
        ROOTFS,
        true,
    );
    let v = v.unwrap();
    server.serve(&b.root);
    let out = m.agent().apply().unwrap();
    assert!(
        matches!(&out, Outcome::Staged { slot: Slot::B, .. }),
        "{out:?}"
    );
    let entry = m.entry_text("cairn-2+3.conf");
    assert!(
        entry.contains(&format!(
            "\noptions cairn.slot=b {} console=tty0",
            v.to_cmdline_word()
        )),
        "{entry}"
    );
    assert_eq!(sha_prefix(&m.slot("b"), b.rootfs.len()), sha(&b.rootfs));
    // the independent checker agrees with the slot as written
    if Path::new("/usr/sbin/veritysetup").exists() {
        let out = Command::new("/usr/sbin/veritysetup")
            .arg("verify")
            .arg(m.slot("b"))
            .arg(m.slot("b"))
            .arg(v.root_hash_hex())
            .arg(format!("--hash-offset={}", v.hash_offset()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("SKIPPED the veritysetup check: install cryptsetup-bin");
    }
}

/// Flips one byte in the middle of slot b's data area.
fn tamper(device: &Path) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .unwrap();
    let mut b = [0u8];
    let at = (ROOTFS / 2) as u64;
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
}

#[test]
fn a_slot_changed_after_its_read_back_is_refused_and_gets_no_entry() {
    let t = tempfile::tempdir().unwrap();
    let server = Server::start();
    let m = machine(t.path(), &server);
    let (b, _) = build_with(
        &t.path().join("bundles"),
        "default",
        "2",
        &key(),
        ROOTFS,
        true,
    );
    server.serve(&b.root);
    let mut agent = m.agent();
    agent.after_slot_write = Some(tamper);
    let e = agent.apply().unwrap_err();
    assert!(matches!(e, UpdateError::Verity { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("slot b") && text.contains(&format!("data block {} ", ROOTFS / 2 / 4096)),
        "{text}"
    );
    assert_eq!(m.entries(), ["cairn-1.conf"], "no entry for slot b");
    let st = m.agent().state().unwrap();
    assert!(
        format!("{st:?}").contains("does not match"),
        "the refusal is recorded: {st:?}"
    );
}

#[test]
fn a_manifest_whose_root_hash_is_not_the_trees_is_refused_before_the_write() {
    let t = tempfile::tempdir().unwrap();
    let server = Server::start();
    let m = machine(t.path(), &server);
    let (b, _) = build_with(
        &t.path().join("bundles"),
        "default",
        "2",
        &key(),
        ROOTFS,
        true,
    );
    // the same image, signed with another root hash
    let mp = b.root.join("manifest.json");
    let mut man = Manifest::parse(&fs::read(&mp).unwrap()).unwrap();
    man.verity.as_mut().unwrap().root_hash = "ee".repeat(32);
    let bytes = man.to_bytes();
    fs::write(&mp, &bytes).unwrap();
    fs::write(b.root.join("manifest.sig"), sign(&bytes, &key())).unwrap();
    server.serve(&b.root);
    let slot_b = read(&m.slot("b"));
    let e = m.agent().apply().unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, UpdateError::Verity { .. }) && text.contains("the manifest's root hash eeee"),
        "{text}"
    );
    assert_eq!(read(&m.slot("b")), slot_b, "slot b is not written");
    assert_eq!(m.entries(), ["cairn-1.conf"]);
}

#[test]
fn an_image_without_a_tree_drops_the_running_slots_hash() {
    let t = tempfile::tempdir().unwrap();
    let server = Server::start();
    let m = machine(t.path(), &server);
    // the running entry carries its own slot's hash
    let e1 = m.paths.esp.join("loader/entries/cairn-1.conf");
    let old = format!("cairn.verity={}:{}:512", "cd".repeat(32), "02".repeat(32));
    let text = fs::read_to_string(&e1)
        .unwrap()
        .replace("cairn.slot=a ", &format!("cairn.slot=a {old} "));
    fs::write(&e1, text).unwrap();
    let (b, _) = build_with(
        &t.path().join("bundles"),
        "default",
        "2",
        &key(),
        ROOTFS,
        false,
    );
    server.serve(&b.root);
    m.agent().apply().unwrap();
    let entry = m.entry_text("cairn-2+3.conf");
    assert!(!entry.contains("cairn.verity"), "{entry}");
    assert!(
        entry.contains("options cairn.slot=b console=tty0"),
        "{entry}"
    );
}
